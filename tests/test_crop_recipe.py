"""The hls-crop-classification recipe end to end: pgstac STAC API on 127.0.0.1, real HLS S30
scenes over Exeter served by a Range-capable HTTP server, a CDL-coded label raster.

Every expected value is computed independently here (rasterio.warp.reproject, numpy), not
read back from eochips.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject

from conftest import FMASK_RULE, build_recipe, crop_recipe, run_cli, write_recipe
from conftest import CDL_NODATA_CHIP, HLS_BANDS, LABEL_ORIGIN, LABEL_SHAPE, UNKNOWN_CODE

CHIP = 32
BAD_BITS = 0b11011  # cirrus, cloud, shadow, snow/ice
NAMES = ["blue", "green", "red", "nir"]  # the recipe's band names of HLS_BANDS


def cdl13() -> dict[int, int]:
    """The CDL -> 13 table, typed out again from specs/recipes.md (independent of eochips)."""
    spec = {1: [37, 152, 176], 2: [141, 142, 143], 3: [1], 4: [5], 5: [190, 195], 6: [121, 122, 123, 124, 131],
            7: [111], 8: [24], 9: [36], 10: [61], 11: [2], 12: [4],
            13: [3, 6, *range(10, 15), *range(21, 24), *range(25, 36), 38, 39, *range(41, 61), *range(62, 73),
                 *range(74, 78), 81, 82, 83, 87, 88, 92, 112, *range(204, 251), 254]}
    return {code: cls for cls, codes in spec.items() for code in codes} | {0: 0}


@pytest.fixture(scope="module")
def crop_run(stac_api, cdl_raster, tmp_path_factory):
    data = crop_recipe(stac_api, cdl_raster)
    out, proc = build_recipe(tmp_path_factory.mktemp("crop"), data)
    return out, proc, data


def _index(out: Path):
    import geopandas as gpd

    return gpd.read_parquet(out / "index.parquet").set_index("unit_id")


def test_selected_dates_and_summary(crop_run):
    out, proc, _ = crop_run
    summary = json.loads((out / "summary.json").read_text())
    # 4 real dates, all covering every chip: first, middle (n//2 = 2) and last
    assert summary["scenes"] == 4
    assert summary["selected_dates"] == ["2021-06-08", "2021-06-23", "2021-07-18"]
    idx = _index(out)
    kept = idx[idx.status == "kept"]
    assert len(kept) > 0
    for scenes in kept.scenes:
        assert [f"{s['datetime']:%Y-%m-%d}" for s in scenes] == ["2021-06-08", "2021-06-23", "2021-07-18"]
    assert summary["unknown_label_codes"] == {str(UNKNOWN_CODE): 9}
    assert "kept" in proc.stdout and str(summary["kept"]) in proc.stdout


def test_chip_ids_and_grid(crop_run, cdl_raster):
    out, _, _ = crop_run
    idx = _index(out)
    expected = {f"chip_{r:03d}_{c:03d}" for r in range(LABEL_SHAPE[0] // CHIP) for c in range(LABEL_SHAPE[1] // CHIP)}
    assert set(idx.index) == expected  # 6 x 7 = 42 chips, ids from grid position
    with rasterio.open(out / "chips" / f"{idx[idx.status == 'kept'].index[0]}_merged.tif") as ds:
        r, c = (int(v) for v in ds.name.split("chip_")[1].split("_")[:2])
        assert ds.transform == Affine(30, 0, LABEL_ORIGIN[0] + c * CHIP * 30, 0, -30, LABEL_ORIGIN[1] - r * CHIP * 30)
        assert ds.crs.to_epsg() == 32630


def test_band_order_and_encoding(crop_run):
    out, _, _ = crop_run
    kept = _index(out).query("status == 'kept'")
    with rasterio.open(out / "chips" / f"{kept.index[0]}_merged.tif") as ds:
        assert ds.count == 12  # 4 bands x 3 dates
        assert ds.dtypes[0] == "int16" and ds.nodata == -9999
        assert ds.descriptions == tuple(f"{b}@{d}" for d in ("2021-06-08", "2021-06-23", "2021-07-18") for b in NAMES)
        assert ds.scales[0] == pytest.approx(1e-4)
        assert ds.profile["compress"] == "deflate" and ds.block_shapes[0] == (CHIP, CHIP)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(out / "chips" / f"{kept.index[0]}_Fmask.tif") as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8"
    with rasterio.open(out / "chips" / f"{kept.index[0]}.mask.tif") as ds:
        assert ds.count == 1 and ds.dtypes[0] == "uint8" and ds.colormap(1)[3] == (255, 211, 0, 255)


def _expected(hls_dir, crop_run, chip_id):
    """Independent per-chip computation: reproject, QA score, nodata, labels."""
    out, _, _ = crop_run
    d, items = hls_dir
    r, c = (int(v) for v in chip_id.split("_")[1:])
    tr = Affine(30, 0, LABEL_ORIGIN[0] + c * CHIP * 30, 0, -30, LABEL_ORIGIN[1] - r * CHIP * 30)
    by_date = {it["properties"]["datetime"][:10]: it for it in items}
    imgs, fmasks = [], []
    for date in ("2021-06-08", "2021-06-23", "2021-07-18"):
        gid = by_date[date]["id"]
        for b in HLS_BANDS:
            with rasterio.open(d / f"{gid}.{b}.tif") as src:
                dst = np.full((CHIP, CHIP), -9999, np.int16)
                reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs="EPSG:32630",
                          resampling=Resampling.bilinear, src_nodata=-9999, dst_nodata=-9999)
                imgs.append(dst)
        with rasterio.open(d / f"{gid}.Fmask.tif") as src:
            dst = np.full((CHIP, CHIP), 255, np.uint8)
            reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs="EPSG:32630",
                      resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
            fmasks.append(dst)
    img = np.stack(imgs)
    nodata = int((img == -9999).any(axis=0).sum())
    bad = []
    for fm in fmasks:
        vals = fm[((fm.astype(int) & BAD_BITS) != 0) & (fm != 255)]
        bad.append(0.0 if vals.size == 0 else np.unique(vals, return_counts=True)[1].max() * 100.0 / fm.size)
    return img, np.stack(fmasks), nodata, bad


def test_filter_drops_exactly_the_rule_breakers(crop_run, hls_dir):
    out, _, _ = crop_run
    idx = _index(out)
    n_nodata = n_qa = 0
    for cid, row in idx.iterrows():
        r, c = (int(v) for v in cid.split("_")[1:])
        if (r, c) == CDL_NODATA_CHIP:
            assert row.status == "dropped" and row.reason_code == "label-fraction" and row.reason.startswith("label-fraction:")
            continue
        _, _, nodata, bad = _expected(hls_dir, crop_run, cid)
        if nodata > 0:
            want, n_nodata = ("dropped", "nodata"), n_nodata + 1
        elif max(bad) >= 5:
            want, n_qa = ("dropped", "fmask-bad-pct"), n_qa + 1
        else:
            want = ("kept", "")
        assert (row.status, row.reason_code) == want, (cid, row.reason, nodata, bad)
        assert row.nodata_pixels == nodata
        np.testing.assert_allclose(row.bad_qa_pct, bad, atol=1e-6)
    # the real data exercises every rule
    assert n_nodata > 0 and n_qa > 0 and (idx.status == "kept").sum() > 0


def test_pixels_match_independent_reprojection(crop_run, hls_dir, cdl_raster):
    out, _, _ = crop_run
    kept = _index(out).query("status == 'kept'")
    table = cdl13()
    for cid in kept.index:
        img, fm, _, _ = _expected(hls_dir, crop_run, cid)
        with rasterio.open(out / "chips" / f"{cid}_merged.tif") as ds:
            got = ds.read()
        # bilinear: eochips warps a window, the reference the whole band, onto the same chip grid;
        # stated tolerance 1 DN (GDAL's approximate transformer, 0.125 px, is evaluated on the
        # same destination grid in both), and at least 99 % of values identical
        assert np.abs(got.astype(int) - img.astype(int)).max() <= 1
        assert np.mean(got == img) >= 0.99
        with rasterio.open(out / "chips" / f"{cid}_Fmask.tif") as ds:
            np.testing.assert_array_equal(ds.read(), fm)  # nearest: exact
        r, c = (int(v) for v in cid.split("_")[1:])
        with rasterio.open(cdl_raster) as src:
            codes = src.read(1, window=((r * CHIP, (r + 1) * CHIP), (c * CHIP, (c + 1) * CHIP)))
        want = np.vectorize(lambda v: table.get(int(v), 13))(codes).astype(np.uint8)
        with rasterio.open(out / "chips" / f"{cid}.mask.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), want)


@pytest.fixture(scope="module")
def relaxed_run(stac_api, cdl_raster, tmp_path_factory):
    """The same recipe with the Fmask rule switched off (max_bad_pct 100), so that most chips
    are kept and the split / statistics / weights are checked on dozens of chips."""
    tmp = tmp_path_factory.mktemp("relaxed")
    out = tmp / "out"
    proc = run_cli("run", str(write_recipe(tmp / "r.yaml", crop_recipe(stac_api, cdl_raster, **{FMASK_RULE: 100}))),
                   "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("which", ["seed_rules", "relaxed_qa"])
def test_split_stats_weights_manifest(which, crop_run, request):
    out = crop_run[0] if which == "seed_rules" else request.getfixturevalue("relaxed_run")
    idx = _index(out)
    if which == "relaxed_qa":
        assert (idx.status == "kept").sum() >= 25
    kept = sorted(idx.index[idx.status == "kept"])
    order = list(kept)
    random.Random(42).shuffle(order)
    k = int(0.8 * len(order))
    read_ids = lambda name: [r["ids"] for r in csv.DictReader(open(out / name))]  # noqa: E731
    assert read_ids("train_ids.csv") == order[:k]
    assert read_ids("val_ids.csv") == order[k:]
    assert set(idx.split.dropna()) <= {"train", "validation"}

    stats = json.loads((out / "stats.json").read_text())
    pooled = {b: [] for b in NAMES}
    counts = np.zeros(14, dtype=np.int64)
    for cid in order[:k]:
        with rasterio.open(out / "chips" / f"{cid}_merged.tif") as ds:
            a = ds.read()
        for i in range(a.shape[0]):
            v = a[i].ravel()
            pooled[NAMES[i % 4]].append(v[v != -9999])
        with rasterio.open(out / "chips" / f"{cid}.mask.tif") as ds:
            counts += np.bincount(ds.read(1).ravel(), minlength=14)
    assert list(stats["bands"]) == NAMES  # in the chips' band order
    for b in NAMES:
        v = np.concatenate(pooled[b]).astype(np.float64)
        s = stats["bands"][b]
        assert s["mean"] == pytest.approx(v.mean(), rel=1e-9)
        assert s["std"] == pytest.approx(v.std(), rel=1e-9)
        assert s["percentiles"]["1.5"] == pytest.approx(np.percentile(v, 1.5))
        assert s["percentiles"]["98.5"] == pytest.approx(np.percentile(v, 98.5))
        assert "min" not in s and "max" not in s  # percentiles are named as percentiles (stats.json v2)
    present = [c for c in range(1, 14) if counts[c] > 0]
    n = counts[present].sum()
    w = np.zeros(14)
    for c in present:
        w[c] = n / (len(present) * counts[c])
    w /= w.sum()
    np.testing.assert_allclose(stats["class_weights"], w, rtol=1e-9)
    assert stats["class_weights"][0] == 0

    lines = (out / "checksums.sha256").read_text().splitlines()
    paths = [ln.split("  ", 1)[1] for ln in lines]
    assert paths == sorted(paths)
    assert "state.sqlite" not in paths and "checksums.sha256" not in paths and not any(p.startswith("state/") for p in paths)
    assert "index.parquet" in paths and "class_distribution_train.png" in paths
    for ln in lines:
        digest, rel = ln.split("  ", 1)
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # left out of the manifest: itself, the state (SQLite, completion markers) and the run settings
    assert {p for p in set(on_disk) - set(paths) if not p.startswith("state/units/")} <= {
        "checksums.sha256", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "plan/run.json"}


def test_rerun_skips_done_chips(crop_run):
    out, _, data = crop_run
    before = (out / "checksums.sha256").read_text()
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "build", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["ran"] == 0 and s["skipped_done"] == s["kept"] + s["dropped"].get("nodata", 0) + s["dropped"].get("fmask-bad-pct", 0)
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "finalize", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0
    assert (out / "checksums.sha256").read_text() == before
