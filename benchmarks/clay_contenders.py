"""The Clay datacube benchmark's contenders (other than ``eochips run``), each run as its own
process by ``clay.py``:

- ``seed``: the seed's method (Clay-foundation/model ``scripts/pipeline/datacube.py`` +
  ``tile.py``): ``stackstac.stack`` of the S2 item (10 bands + SCL, 10 m, uint16, fill 0), of the
  S1 items (``vh``, ``vv``) and of the DEM items onto the S2 scene's EPSG and bounds (float32,
  NaN), nearest resampling, ``stackstac.mosaic`` over time for S1 and DEM, every part computed
  whole (dask's threaded scheduler, 2 threads), then 512 px chips in row-major order, the
  seed's filters (any B02 == 0; any NaN in vv, vh, dem; >= 30 % of SCL in {0, 1, 3, 8, 9, 10}),
  and one 13-band float32 GeoTIFF per kept chip (DEFLATE, band descriptions, tag ``date``;
  the seed writes it with rioxarray's ``to_raster``, which is a rasterio write).
- ``limit``: the read floor: rasterio windowed reads of exactly the chip windows of every
  asset (S2 bands at their native resolution; S1 and DEM warped onto the chip's 10 m grid with
  nearest through a ``WarpedVRT``), one dataset handle per asset (its decoded-block cache
  would serve the chips that share a block, but GDAL's multi-range window reads over HTTP fetch
  the tiles again: about 2.6x the touched tiles), 4 threads; no filters, no writes.

``python clay_contenders.py NAME WORKLOAD_JSON OUTDIR`` prints one JSON line
``{"chips": .., "kept": .., "seconds": ..}``.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

TILE_SIZE = 512
SCL_BAD = [0, 1, 3, 8, 9, 10]
BAD_MAX = 0.3
S2_ASSETS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12", "SCL"]
LIMIT_THREADS = 4
LIMIT_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
                  "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES", "GDAL_CACHEMAX": 512 << 20, "VSI_CACHE": "FALSE"}


def _items(path: str) -> list[dict]:
    """The items as plain dicts: pystac >= 1.12 migrates ``proj:epsg`` to ``proj:code`` when it
    loads an item, and stackstac 0.5.1 only reads ``proj:epsg`` (it then asks for ``epsg=``)."""
    return json.loads(Path(path).read_text())["features"]


def seed_keep(tile) -> bool:
    """The seed's ``filter_clouds_nodata`` on one ``(band, y, x)`` DataArray chip."""
    if int(tile.sel(band="B02").isin([0]).sum()):
        return False
    for band in ("vv", "vh", "dem"):
        if int(np.isnan(tile.sel(band=band)).sum()):
            return False
    bad = int(tile.sel(band="SCL").isin(SCL_BAD).sum())
    return bad / (TILE_SIZE * TILE_SIZE) < BAD_MAX


def run_seed(m: dict, out: Path) -> int:
    import dask
    import stackstac
    import xarray as xr

    dask.config.set(scheduler="threads", num_workers=2)
    # stackstac 0.5.1 with numpy 2 refuses `fill_value=0` for uint16 and `rescale=True` for any
    # 32-bit dtype (numpy.can_cast on Python scalars): a NumPy scalar fill and rescale=False, the
    # items having no scale/offset anyway, give the seed's values
    s2 = _items(m["catalogs"]["s2"])
    s1 = _items(m["catalogs"]["s1"])
    dem = _items(m["catalogs"]["dem"])
    da_s2 = stackstac.stack(items=s2, assets=S2_ASSETS, resolution=10, dtype=np.uint16, fill_value=np.uint16(0),
                            resampling=Resampling.nearest, rescale=False)
    da_s1 = stackstac.stack(items=s1, assets=["vh", "vv"], epsg=int(da_s2.epsg), bounds=da_s2.spec.bounds,
                            resolution=10, dtype=np.float32, fill_value=np.float32(np.nan), resampling=Resampling.nearest,
                            rescale=False)
    da_dem = stackstac.stack(items=dem, epsg=int(da_s2.epsg), bounds=da_s2.spec.bounds, resolution=10,
                             dtype=np.float32, fill_value=np.float32(np.nan), resampling=Resampling.nearest,
                            rescale=False)
    epsg = int(da_s2.epsg)
    da_s1 = stackstac.mosaic(da_s1, dim="time")
    da_s1 = da_s1.drop_vars([v for v in da_s1.coords if v not in da_s1.dims])
    da_s2 = da_s2.drop_vars([v for v in da_s2.coords if v not in da_s2.dims]).squeeze()
    del da_s2.coords["time"]
    da_dem = stackstac.mosaic(da_dem, dim="time").assign_coords({"band": ["dem"]})
    da_dem = da_dem.drop_vars([v for v in da_dem.coords if v not in da_dem.dims])
    parts = [p.compute() for p in (da_s2, da_s1, da_dem)]
    date = m["date"]
    x, y = parts[0].x.values, parts[0].y.values
    res = float(x[1] - x[0])
    ny, nx = y.size // TILE_SIZE, x.size // TILE_SIZE
    counter = kept = 0
    for yi in range(ny):
        for xi in range(nx):
            ys, xs = yi * TILE_SIZE, xi * TILE_SIZE
            tile = xr.concat([p[:, ys:ys + TILE_SIZE, xs:xs + TILE_SIZE] for p in parts], dim="band")
            counter += 1
            if not seed_keep(tile):
                continue
            tile = tile.drop_sel(band="SCL")
            names = [str(b) for b in tile.band.values]
            # stackstac's x/y coordinates are the pixels' top-left corners (xy_coords="topleft")
            t = Affine(res, 0, float(tile.x.values[0]), 0, -res, float(tile.y.values[0]))
            name = out / f"claytile_{m['tile']}_{date.replace('-', '')}_v02_{counter:04d}.tif"
            arr = tile.values.astype(np.float32)
            with rasterio.open(name, "w", driver="GTiff", width=TILE_SIZE, height=TILE_SIZE, count=arr.shape[0],
                               dtype="float32", crs=f"EPSG:{epsg}", transform=t, compress="deflate") as ds:
                ds.write(arr)
                ds.descriptions = tuple(names)
                ds.update_tags(date=date)
            kept += 1
    return kept


def chip_transform(m: dict, r: int, c: int) -> Affine:
    return Affine(*m["transform"]) * Affine.translation(c, r)


def run_limit(m: dict, out: Path) -> int:
    crs = f"EPSG:{m['epsg']}"
    size = m["chip"]

    def one(asset: dict) -> int:
        total = 0
        with rasterio.Env(**LIMIT_GDAL_ENV), rasterio.open(asset["href"]) as src:
            if asset["kind"].startswith("s2"):
                f = 1 if asset["kind"] == "s2_10m" else 2
                for r, c in m["chips"]:
                    a = src.read(1, window=Window(c // f, r // f, size // f, size // f))
                    total += int(a[0, 0])
                return total
            sb = src.bounds
            for r, c in m["chips"]:
                t = chip_transform(m, r, c)
                # skip chips wholly outside the source (their bounds in the source CRS)
                x0, y1 = t * (0, 0)
                x1, y0 = t * (size, size)
                bl, bb, br, bt = rasterio.warp.transform_bounds(crs, src.crs, x0, y0, x1, y1, densify_pts=9)
                if br <= sb.left or bl >= sb.right or bt <= sb.bottom or bb >= sb.top:
                    continue
                with WarpedVRT(src, crs=crs, transform=t, width=size, height=size, resampling=Resampling.nearest,
                               nodata=float("nan")) as vrt:
                    a = vrt.read(1)
                total += int(np.isnan(a).sum())
        return total

    import rasterio.warp  # noqa: F401

    assets = sorted(m["assets"].values(), key=lambda a: (a["kind"] != "s2_10m", a["kind"]))
    with ThreadPoolExecutor(LIMIT_THREADS) as pool:
        list(pool.map(one, assets))
    return 0


def main(argv: list[str]) -> None:
    name, wl, out = argv
    m = json.loads(Path(wl).read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kept = {"seed": run_seed, "limit": run_limit}[name](m, out)
    print(json.dumps({"chips": len(m["chips"]), "kept": kept, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv[1:])
