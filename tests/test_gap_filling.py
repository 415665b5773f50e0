"""The hls-gap-filling recipe (seed 000) end to end against the pgstac STAC API: image chips as
in the crop recipe, plus 6 seeded cloudy scenes per tile and their binary Fmask cloud masks."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject

from conftest import LABEL_ORIGIN, TILE, derived_cloudy_items, gap_recipe, needs_shared, run_cli, write_recipe

pytestmark = needs_shared


@pytest.fixture(scope="module")
def gap_run(stac_api, cdl_raster, tmp_path_factory):
    data = gap_recipe(stac_api, cdl_raster)
    tmp = tmp_path_factory.mktemp("gap")
    out = tmp / "out"
    proc = run_cli("run", str(write_recipe(tmp / "gap.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _expected_choice(items):
    cloudy = [it for it in items + derived_cloudy_items(items) if 30 <= it["properties"]["eo:cloud_cover"] <= 80]
    cloudy.sort(key=lambda it: (it["properties"]["datetime"], it["id"]))
    assert len(cloudy) == 8
    idx = sorted(random.Random(f"42:{TILE}").sample(range(len(cloudy)), 6))
    return [cloudy[i] for i in idx]


def test_six_seeded_scenes_and_mask_files(gap_run, hls_dir):
    import geopandas as gpd

    d, items = hls_dir
    chosen = _expected_choice(items)
    idx = gpd.read_parquet(gap_run / "index.parquet").set_index("unit_id")
    kept = idx[idx.status == "kept"]
    assert len(kept) >= 25
    for cid, row in kept.iterrows():
        cloudy = [s["id"] for s in row.scenes if s["source"] == "cloudy"]
        assert cloudy == [it["id"] for it in chosen]
        assert [s["id"] for s in row.scenes if s["source"] == "hls"] == [
            it["id"] for it in sorted(items, key=lambda i: i["properties"]["datetime"]) if it["properties"]["datetime"][:10] in
            ("2021-06-08", "2021-06-23", "2021-07-18")]
        r, c = (int(v) for v in cid.split("_")[1:])
        tr = Affine(30, 0, LABEL_ORIGIN[0] + c * 32 * 30, 0, -30, LABEL_ORIGIN[1] - r * 32 * 30)
        for i, it in enumerate(chosen):
            fm = np.full((32, 32), 255, np.uint8)
            with rasterio.open(d / it["assets"]["Fmask"]["href"]) as src:
                reproject(rasterio.band(src, 1), fm, dst_transform=tr, dst_crs="EPSG:32630",
                          resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
            want = np.where(fm == 255, 255, (fm >> 1) & 1).astype(np.uint8)
            with rasterio.open(gap_run / "chips" / f"{cid}_{i}_cmask.tif") as ds:
                got = ds.read(1)
                assert ds.dtypes[0] == "uint8" and ds.nodata == 255
            np.testing.assert_array_equal(got, want)
        assert not (gap_run / "chips" / f"{cid}_6_cmask.tif").exists()
    dropped = idx[idx.status != "kept"]
    assert not any((gap_run / "chips" / f"{cid}_0_cmask.tif").exists() for cid in dropped.index)


def test_tracker_values(gap_run):
    import geopandas as gpd

    rows = list(csv.DictReader(open(gap_run / "fmask_tracker.csv")))
    assert list(rows[0]) == ["fmask_name", "cloud_pct"]
    kept = gpd.read_parquet(gap_run / "index.parquet").query("status == 'kept'")
    assert len(rows) == 6 * len(kept)
    for row in rows:
        with rasterio.open(gap_run / "chips" / row["fmask_name"]) as ds:
            m = ds.read(1)
        assert float(row["cloud_pct"]) == pytest.approx((m == 1).sum() / m.size, abs=1e-6)
        assert 0 <= float(row["cloud_pct"]) <= 1
    assert any(float(r["cloud_pct"]) > 0.3 for r in rows)  # the real cloudy scenes are cloudy
    s = json.loads((gap_run / "summary.json").read_text())
    assert s["recipe"] == "hls-gap-filling"
