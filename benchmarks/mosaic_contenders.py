"""The cloud-free mosaic benchmark's contenders (other than ``eochips run``), each run as its own
process by ``mosaic.py``. All make the same first-valid mosaic of the same picks (``PICKS_JSON``:
eochips' ``selection_log`` picks, or :func:`greedy` when eochips did not run) on the same output
grid (``mosaic_workload.output_grid``: EPSG:32630, 20 m, the AOI box):

- ``seed``: the seed's method (azavea/cloud-buster @fe6c339, ``../shared/specs/recipes.md`` 3):
  per pick, in pick order, the whole scene is read (B02, B03, B04, B08 and, for a primary pick,
  SCL), masked (primary picks: SCL in {0, 1, 3, 8, 9, 10}, dilated with an 11 x 11 square;
  valid = not masked and B02 != 0; backstop picks: valid = B02 != 0), written as a masked
  GeoTIFF (the four bands, 0 where not valid, and a fifth band holding the pick number where
  valid), ``gdalwarp``-ed whole to the output CRS and resolution (``-r near -tap``), then the
  warped files are merged in pick order with ``rasterio.merge.merge(method="first")`` over the
  AOI box: primary picks into ``cloudless.tif``, backstop picks into ``cloudy.tif``; band 5 of
  each merge is the source index (``source.tif``: ``cloudless_index``, ``cloudy_index``).
- ``odc``: ``odc.stac.load`` of the picked items (``groupby="id"``, nearest, 4 threads) onto the
  output grid grown by a 5 px halo (so the dilation sees clouds just outside the AOI, as the
  seed's whole-scene masks do), then the same masks and a first-valid reduction in pick order in
  numpy, the halo cut off.
- ``limit``: the pure read+warp floor: for every pick, every band it needs (SCL too for a primary
  pick) read through a rasterio ``WarpedVRT`` onto the output grid (nearest), 4 threads; nothing
  else (no masks, no composite, no writes).

``python mosaic_contenders.py NAME WORKLOAD_JSON SCALE PICKS_JSON OUTDIR`` prints one JSON line
``{"pixels": .., "seconds": ..}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mosaic_workload as mw  # noqa: E402

SCL_MASKED = (0, 1, 3, 8, 9, 10)
KERNEL = 11
HALO = KERNEL // 2
THREADS = 4
OUTSIDE = 255  # odc's SCL fill outside a scene
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES", "GDAL_CACHEMAX": 256 << 20, "VSI_CACHE": "FALSE"}


# --------------------------------------------------------------------------------------
# the picks (when eochips' plan is not there)

def greedy(items: list[dict], aoi_utm, coverage_count: int = 3, max_uncovered_m2: float = 6.15e6,
           backstop: bool = True, max_selections: int | None = None) -> list[dict]:
    """The greedy multi-coverage selection of issue 12 (``../shared/specs/recipes.md`` 3), simply:
    ``items`` in search order (eo:cloud_cover <= 20, newest first), areas in EPSG:6933 m^2;
    score = area(footprint & remaining copy) * (1 - cloud / 100), the first best (scene, copy)
    pair in (scene, copy) order wins; stop at summed remaining <= ``max_uncovered_m2``, no
    candidates, best score <= 0 or ``max_selections`` picks; then the backstop stage against one
    AOI copy. Returns ``[{"number", "scene_id", "role", "score", "copy", "remaining_m2"}]``."""
    import shapely
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True)
    to_ea = lambda g: shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))  # noqa: E731
    aoi = to_ea(mw.to4326(aoi_utm))
    cands = [(it["id"], to_ea(shapely.geometry.shape(it["geometry"])), it["properties"]["eo:cloud_cover"]) for it in items]
    picks: list[dict] = []

    def stage(copies: list, role: str) -> None:
        while cands and (max_selections is None or len(picks) < max_selections):
            if role == "primary" and sum(c.area for c in copies) <= max_uncovered_m2:
                return
            best = None
            for i, (sid, fp, cc) in enumerate(cands):
                for k, c in enumerate(copies):
                    s = fp.intersection(c).area * (1 - cc / 100)
                    if best is None or s > best[0]:
                        best = (s, i, k)
            if best is None or best[0] <= 0:
                return
            s, i, k = best
            sid, fp, _ = cands.pop(i)
            copies[k] = copies[k].difference(fp)
            picks.append({"number": len(picks) + 1, "scene_id": sid, "role": role, "score": s,
                          "copy": k if role == "primary" else None, "remaining_m2": sum(c.area for c in copies)})

    stage([aoi] * coverage_count, "primary")
    if backstop:
        stage([aoi], "backstop")
    return picks


# --------------------------------------------------------------------------------------
# masks

def valid_mask(b02: np.ndarray, scl: np.ndarray | None) -> np.ndarray:
    """``(y, x)`` bool: valid pixels of one scene: B02 != 0 and (with ``scl``, a primary pick) SCL
    not in ``SCL_MASKED`` after an 11 x 11 dilation (outside the array counts as not masked)."""
    from scipy import ndimage

    ok = b02 != 0
    if scl is not None:
        bad = np.isin(scl, SCL_MASKED)
        ok &= ~ndimage.maximum_filter(bad, size=KERNEL, mode="constant", cval=False)
    return ok


def _grid(m: dict, scale: int) -> tuple[Affine, int, int]:
    return mw.output_grid(scale)


def _write(path: Path, arr: np.ndarray, t: Affine, names: list[str], nodata: int | None) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype.name, crs=mw.CRS, transform=t, nodata=nodata, tiled=True, compress="deflate") as ds:
        ds.write(arr)
        ds.descriptions = tuple(names)


def _scene(m: dict, sid: str) -> dict:
    return next(s for s in m["scenes"] if s["id"] == sid)


# --------------------------------------------------------------------------------------
# contenders

def run_seed(m: dict, scale: int, picks: list[dict], out: Path) -> None:
    t, h, w = _grid(m, scale)
    bounds = (t.c, t.f + h * t.e, t.c + w * t.a, t.f)
    scratch = out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    warped: dict[str, list[Path]] = {"primary": [], "backstop": []}
    with rasterio.Env(**GDAL_ENV):
        for p in picks:
            s = _scene(m, p["scene_id"])
            primary = p["role"] == "primary"
            with rasterio.open(s["href"]["B02"]) as ds:
                profile = ds.profile
            bands = []
            for b in m["bands"]:
                with rasterio.open(s["href"][b]) as ds:
                    bands.append(ds.read(1))
            scl = None
            if primary:
                with rasterio.open(s["href"]["SCL"]) as ds:
                    scl = ds.read(1)
            ok = valid_mask(bands[0], scl)
            del scl
            arr = np.stack(bands + [np.full(ok.shape, p["number"], np.uint16)])
            del bands
            arr[:, ~ok] = 0
            masked = scratch / f"{p['number']:02d}-masked.tif"
            with rasterio.open(masked, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                               dtype="uint16", crs=profile["crs"], transform=profile["transform"], nodata=0, tiled=True) as ds:
                ds.write(arr)
            del arr, ok
            dst = scratch / f"{p['number']:02d}-warped.tif"
            subprocess.run(["gdalwarp", "-q", "-overwrite", "-r", "near", "-t_srs", mw.CRS, "-tr", str(mw.RES), str(mw.RES),
                            "-tap", "-srcnodata", "0", "-dstnodata", "0", "-co", "TILED=YES", str(masked), str(dst)], check=True)
            masked.unlink()
            warped[p["role"]].append(dst)
    from rasterio.merge import merge

    index = {}
    for role, name in (("primary", "cloudless"), ("backstop", "cloudy")):
        if not warped[role]:
            index[role] = np.zeros((h, w), np.uint16)
            continue
        mosaic, mt = merge([str(f) for f in warped[role]], bounds=bounds, res=mw.RES, nodata=0, method="first")
        assert mosaic.shape[1:] == (h, w) and mt.almost_equals(t), (mosaic.shape, mt, t)
        _write(out / f"{name}.tif", mosaic[:4], t, m["bands"], 0)
        index[role] = mosaic[4]
    _write(out / "source.tif", np.stack([index["primary"], index["backstop"]]), t, ["cloudless_index", "cloudy_index"], None)
    for fs in warped.values():
        for f in fs:
            f.unlink()


def run_odc(m: dict, scale: int, picks: list[dict], out: Path) -> None:
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox

    t, h, w = _grid(m, scale)
    tg = t * Affine.translation(-HALO, -HALO)
    gbox = GeoBox((h + 2 * HALO, w + 2 * HALO), tg, mw.CRS)
    feats = {f["id"]: f for f in json.loads(Path(m["catalog"]).read_text())["features"]}
    items = [pystac.Item.from_dict(feats[p["scene_id"]]) for p in picks]
    bands = list(m["bands"]) + ["SCL"]
    # fill 0 for the bands; SCL outside a scene's frame 255 (not a class), so that, as in the seed's
    # whole-scene masks, the dilation does not grow into a scene from beyond its edge
    cfg = {"sentinel-2-l2a": {"assets": {**{b: {"data_type": "uint16", "nodata": 0} for b in m["bands"]},
                                         "SCL": {"data_type": "uint8", "nodata": OUTSIDE}}}}
    ds = odc.stac.load(items, bands=bands, groupby="id", geobox=gbox, resampling="nearest", pool=THREADS, stac_cfg=cfg,
                       preserve_original_order=True)
    times = [np.datetime64(it.properties["datetime"].rstrip("Z")) for it in [pystac.Item.from_dict(feats[p["scene_id"]]) for p in picks]]
    order = [int(np.nonzero(ds.time.values == tv)[0][0]) for tv in times]  # the pick's slice (distinct datetimes)
    res = {}
    for role, name in (("primary", "cloudless"), ("backstop", "cloudy")):
        mosaic = np.zeros((len(m["bands"]), h, w), np.uint16)
        index = np.zeros((h, w), np.uint16)
        for p, k in zip(picks, order):
            if p["role"] != role:
                continue
            b02 = ds["B02"].values[k]
            scl = None
            if role == "primary":
                # odc fills both the scene's own no-data (SCL 0 in the file) and the outside of its
                # frame with the configured 255: inside the frame it is class 0 again
                scl = ds["SCL"].values[k].copy()
                scl[(scl == OUTSIDE) & _inside_frame(feats[p["scene_id"]], tg, gbox.shape)] = 0
            ok = valid_mask(b02, scl)[HALO:-HALO, HALO:-HALO]
            take = ok & (index == 0)
            for j, b in enumerate(m["bands"]):
                mosaic[j][take] = ds[b].values[k][HALO:-HALO, HALO:-HALO][take]
            index[take] = p["number"]
        if any(p["role"] == role for p in picks):
            _write(out / f"{name}.tif", mosaic, t, m["bands"], 0)
        res[role] = index
    _write(out / "source.tif", np.stack([res["primary"], res["backstop"]]), t, ["cloudless_index", "cloudy_index"], None)


def _inside_frame(item: dict, t: Affine, shape: tuple[int, int]) -> np.ndarray:
    """``shape`` bool on grid ``t``: pixel centres inside the raster frame of ``item``'s SCL asset
    (its ``proj:transform`` and ``proj:shape``)."""
    a = item["assets"]["SCL"]
    st = Affine(*a["proj:transform"][:6])
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = t * (cols + 0.5, rows + 0.5)
    c, r = ~st * (x, y)
    return (c >= 0) & (r >= 0) & (c < a["proj:shape"][1]) & (r < a["proj:shape"][0])


def run_limit(m: dict, scale: int, picks: list[dict], out: Path) -> None:
    t, h, w = _grid(m, scale)
    jobs = [(_scene(m, p["scene_id"])["href"][b]) for p in picks
            for b in list(m["bands"]) + (["SCL"] if p["role"] == "primary" else [])]

    def one(href: str) -> int:
        with rasterio.Env(**GDAL_ENV), rasterio.open(href) as src, \
                WarpedVRT(src, crs=mw.CRS, transform=t, width=w, height=h, resampling=Resampling.nearest, nodata=0) as vrt:
            return int(vrt.read(1)[0, 0])

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, jobs))


def main(argv: list[str]) -> None:
    name, wl, scale, picks_json, out = argv
    m = json.loads(Path(wl).read_text())
    picks = json.loads(Path(picks_json).read_text())["picks"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    {"seed": run_seed, "odc": run_odc, "limit": run_limit}[name](m, int(scale), picks, out)
    _, h, w = mw.output_grid(int(scale))
    print(json.dumps({"pixels": h * w, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv[1:])
