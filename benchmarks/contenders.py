"""The other contenders of the benchmark, each run as its own process by ``run.py``:

- ``seed``: seed 001's method. Per granule, download every asset file whole, reproject each
  whole band onto the label grid (the CDL window under the granule, like rioxarray's
  ``reproject_match`` onto the clipped CDL), then cut, filter and write each chip.
- ``odc``: ``odc.stac.load`` of the chips' extent (per granule) onto the label grid, then cut,
  filter and write each chip.
- ``limit``: the read+warp floor: rasterio ``WarpedVRT`` windowed reads of exactly the chip
  windows of the 18 reflectance bands, source datasets opened once per thread and reused; no
  QA, labels or writing.

``python contenders.py NAME WORKLOAD_JSON DENSITY NET OUTDIR [GRANULES]`` (only the first
GRANULES granules' chips) prints one JSON line:
``{"chips": .., "kept": .., "seconds": ..}``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from rasterio.windows import Window

from eochips.labels import CDL_13
from eochips.reading import DEFAULT_GDAL_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workload  # noqa: E402

BAD_BITS = 0b00011011  # Fmask bits 0 cirrus, 1 cloud, 3 shadow, 4 snow/ice (seed 001)
THREADS = 16  # odc-stac's load pool, as eochips' reading.threads default
LIMIT_THREADS = 16  # the limit hides latency with many threads (one dataset per asset and thread)
_LUT = np.zeros(256, np.uint8)
for _code, _cls in CDL_13.items():
    _LUT[_code] = _cls


class Workload:
    def __init__(self, path: str, density: str, net: str, granules: int | None = None):
        m = json.loads(Path(path).read_text())
        self.m = m
        self.chips = [tuple(c) for c in m["chips"][density] if granules is None or c[0] < granules]
        self.net = net
        self.url = m["urls"][net]
        self.grid_t = Affine(*m["grid"]["transform"])
        self.crs = m["grid"]["crs"]
        self.size = m["chip"]
        self.dates, self.assets, self.refl = m["dates"], m["assets"], m["reflectance"]

    def granules(self) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for k, r, c in self.chips:
            out.setdefault(k, []).append((r, c))
        return out

    def href(self, k: int, date: str, asset: str) -> str:
        return f"{self.url}/g{k:02d}/{date}/{asset}.tif"

    def chip_transform(self, r: int, c: int) -> Affine:
        return self.grid_t * Affine.translation(c * self.size, r * self.size)


def bad_pct(fmask: np.ndarray) -> float:
    """Seed 001's QA score (largest share of one bad Fmask byte value, percent)."""
    bad = ((fmask & BAD_BITS) > 0) & (fmask != 255)
    if not bad.any():
        return 0.0
    return float(np.bincount(fmask[bad]).max()) * 100.0 / fmask.size


def finish_chip(w: Workload, out: Path, labels_ds, r: int, c: int, image: np.ndarray, fmask: np.ndarray) -> bool:
    """Seed 001's filter and files for one chip: ``image`` ``(time, band, y, x)`` int16, ``fmask``
    ``(time, y, x)`` uint8. Returns True when the chip is kept (files written)."""
    if (image == -9999).any() or max(bad_pct(f) for f in fmask) >= 5:
        return False
    codes = labels_ds.read(1, window=Window(c * w.size, r * w.size, w.size, w.size))
    if (codes == 0).any():
        return False
    cid = f"chip_{r:03d}_{c:03d}"
    prof = dict(driver="GTiff", width=w.size, height=w.size, crs=w.crs, transform=w.chip_transform(r, c), compress="deflate")
    with rasterio.open(out / f"{cid}_merged.tif", "w", count=image.shape[0] * image.shape[1], dtype="int16", nodata=-9999, **prof) as ds:
        ds.write(image.reshape(-1, w.size, w.size))
    with rasterio.open(out / f"{cid}.mask.tif", "w", count=1, dtype="uint8", **prof) as ds:
        ds.write(_LUT[codes], 1)
    with rasterio.open(out / f"{cid}_Fmask.tif", "w", count=fmask.shape[0], dtype="uint8", **prof) as ds:
        ds.write(fmask)
    return True


def _granule_window(w: Workload, k: int) -> tuple[Affine, int, int]:
    """The label-grid window under granule ``k``'s whole footprint (seed 001 clips the CDL to the tile)."""
    from rasterio.warp import transform_bounds

    x0, y0 = w.m["granules"][str(k)]["origin"]
    side = workload.SIZE * workload.RES
    b = transform_bounds(f"EPSG:{workload.EPSG}", w.crs, x0, y0 - side, x0 + side, y0, densify_pts=21)
    inv = ~w.grid_t
    c0, r0 = (int(np.floor(v)) for v in inv * (b[0], b[3]))
    c1, r1 = (int(np.ceil(v)) for v in inv * (b[2], b[1]))
    return w.grid_t * Affine.translation(c0, r0), r1 - r0, c1 - c0


def run_seed(w: Workload, out: Path) -> int:
    kept = 0
    with rasterio.Env(**DEFAULT_GDAL_ENV), rasterio.open(w.m["labels"]) as labels:
        for k, chips in sorted(w.granules().items()):
            tmp = Path(tempfile.mkdtemp(prefix=f"seed-g{k:02d}-", dir=out))
            try:
                for d in w.dates:  # download the whole granule
                    for a in w.assets:
                        with urllib.request.urlopen(w.href(k, d, a)) as resp, open(tmp / f"{d}_{a}.tif", "wb") as f:
                            shutil.copyfileobj(resp, f, 1 << 22)
                t, h, wd = _granule_window(w, k)
                image = np.empty((len(w.dates), len(w.refl), h, wd), np.int16)
                fmask = np.empty((len(w.dates), h, wd), np.uint8)
                for i, d in enumerate(w.dates):  # reproject each whole band onto the label grid
                    for a in w.assets:
                        with rasterio.open(tmp / f"{d}_{a}.tif") as ds:
                            src = ds.read(1)
                            fm = a == "Fmask"
                            dst = fmask[i] if fm else image[i, w.refl.index(a)]
                            reproject(src, dst, src_transform=ds.transform, src_crs=ds.crs, src_nodata=ds.nodata,
                                      dst_transform=t, dst_crs=w.crs, dst_nodata=ds.nodata,
                                      resampling=Resampling.nearest if fm else Resampling.bilinear)
                        del src
                inv = ~t
                for r, c in chips:  # clip each chip
                    cc, rr = (int(round(v)) for v in inv * (w.grid_t * (c * w.size, r * w.size)))
                    sl = (slice(rr, rr + w.size), slice(cc, cc + w.size))
                    kept += finish_chip(w, out, labels, r, c, image[(slice(None), slice(None)) + sl].copy(),
                                        fmask[(slice(None),) + sl].copy())
                del image, fmask
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return kept


def run_odc(w: Workload, out: Path) -> int:
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox

    odc.stac.configure_rio(cloud_defaults=True, GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="YES", GDAL_CACHEMAX=128 << 20)
    cat = json.loads((Path(w.m["root"]) / f"items-{w.net}.json").read_text())
    by_id = {f["id"]: f for f in cat["features"]}
    kept = 0
    with rasterio.Env(**DEFAULT_GDAL_ENV), rasterio.open(w.m["labels"]) as labels:
        for k, chips in sorted(w.granules().items()):
            items = [pystac.Item.from_dict(by_id[i]) for i in w.m["granules"][str(k)]["items"]]
            rows, cols = [r for r, _ in chips], [c for _, c in chips]
            r0, c0 = min(rows), min(cols)
            h, wd = (max(rows) - r0 + 1) * w.size, (max(cols) - c0 + 1) * w.size
            gbox = GeoBox((h, wd), w.chip_transform(r0, c0), w.crs)
            ds = odc.stac.load(items, bands=w.assets, geobox=gbox, resampling={"Fmask": "nearest", "*": "bilinear"},
                               groupby="id", pool=THREADS, progress=None)
            ds = ds.sortby("time")
            img = np.stack([ds[a].values for a in w.refl], axis=1)  # (time, band, y, x)
            fm = ds["Fmask"].values
            for r, c in chips:
                y, x = (r - r0) * w.size, (c - c0) * w.size
                sl = (slice(y, y + w.size), slice(x, x + w.size))
                kept += finish_chip(w, out, labels, r, c, img[(slice(None), slice(None)) + sl].copy(), fm[(slice(None),) + sl].copy())
    return kept


_local = threading.local()


def run_limit(w: Workload, out: Path) -> int:
    """Read+warp only. Work items are (granule, date, band); each thread keeps its datasets open."""
    jobs = [(k, d, a, chips) for k, chips in sorted(w.granules().items()) for d in w.dates for a in w.refl]

    def one(job):
        k, d, a, chips = job
        cache = getattr(_local, "ds", None)
        if cache is None:
            cache = _local.ds = {}
        total = 0
        with rasterio.Env(**DEFAULT_GDAL_ENV):
            href = w.href(k, d, a)
            src = cache.get(href) or cache.setdefault(href, rasterio.open(href))
            for r, c in chips:
                with WarpedVRT(src, crs=w.crs, transform=w.chip_transform(r, c), width=w.size, height=w.size,
                               resampling=Resampling.bilinear, src_nodata=-9999, nodata=-9999) as vrt:
                    total += int(vrt.read(1)[0, 0])
        return total

    with ThreadPoolExecutor(LIMIT_THREADS) as pool:
        list(pool.map(one, jobs))
    return 0


def main(argv: list[str]) -> None:
    name, wl, density, net, out, *rest = argv
    w = Workload(wl, density, net, int(rest[0]) if rest else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kept = {"seed": run_seed, "odc": run_odc, "limit": run_limit}[name](w, out)
    print(json.dumps({"chips": len(w.chips), "kept": kept, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main(sys.argv[1:])
