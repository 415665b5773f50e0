"""The BigEarthNet recipe (reference pipeline 4, kai-tub/bigearthnet-pipeline): patches on each
tile's own grid, their names, the nodata drop, on real Sentinel-2 L2A tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import REAL, needs_shared, run_cli, write_recipe
from realdata import proj_fields

T34SGA = REAL / "s2l2a_native_scl_34SGA"
PRODUCT_34SGA = "S2A_MSIL2A_20200318T085701_N0214_R007_T34SGA"  # sentinel:product_id without its _<timestamp>


def _tile_34sga_catalog(dst: Path) -> Path:
    """The real 34SGA item (Earth Search v0) with its B04, B08 and SCL assets pointing at the
    real decimated files (100 m bands, 200 m SCL) and their true ``proj:*`` fields."""
    item = json.loads((T34SGA / "item.json").read_text())
    assets = {}
    for key in ("B04", "B08", "SCL"):
        with rasterio.open(T34SGA / f"{key}.tif") as ds:
            assets[key] = {**item["assets"][key], "href": str(T34SGA / f"{key}.tif"),
                           **proj_fields(ds.crs, ds.transform, ds.shape)}
            assets[key].pop("proj:epsg", None)
    item["assets"] = assets
    item["links"] = []
    item["collection"] = "sentinel-s2-l2a-cogs"
    cat = dst / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    return cat


def _tile_recipe(cat: Path, **extra) -> dict:
    """The BigEarthNet recipe's tile rules on the decimated tile: a scene grid at the finest band's
    100 m, 1200 m patches (12 px of the bands, 6 px of SCL) over the whole grid, the per-band layout."""
    from shapely.geometry import box, mapping

    data = {
        "version": 2, "name": "ben-34sga",
        "aoi": {"geometry": mapping(box(24.0, 31.9, 24.1, 32.0))},  # inside the tile: it only chooses the scene
        "sources": {"s2": {
            "search": {"catalog": str(cat), "collections": ["sentinel-s2-l2a-cogs"]},
            "profile": "sentinel-2-l2a-pc",
            "bands": [{"name": "B04", "asset": "B04", "resolution": 100}, {"name": "B08", "asset": "B08", "resolution": 100}],
            "resampling": "nearest",
            "selection": {"kind": "all", "coverage_thresholds": [0.0001]},
        }},
        "grid": {"kind": "scene", "source": "s2"},
        "units": {"kind": "chip", "size_m": 1200, "resolution_groups": True, "extent": "grid",
                  "id": "{product}_{col:02d}_{row:02d}", "warn_above": 10000},
        "masks": {"sources": [{"kind": "scl", "source": "s2", "cloud_classes": [8, 9, 10], "shadow_classes": [3],
                               "snow_classes": [11], "nodata_classes": [0]}]},
        "filters": [{"kind": "nodata", "max_pixels": 0}],
        "output": {"layout": {"kind": "per-band", "name": "{unit}_{band}.tif", "path": "patches/{product}/{unit}", "labels": None}},
        "dataset": {"finalizers": ["index", "summary", "manifest"], "max_drop_fraction": 1},
        "engine": {"batch_chips": 512},
    }
    data.update(extra)
    return data


# the built block: 16 x 25 patches across the tile's real no-data edge (rows 40-55, columns 16-40)
ROWS, COLS = range(40, 56), range(16, 41)


def _block_aoi(tr) -> dict:
    x0, y0 = tr.c + 1200 * COLS[0], tr.f - 1200 * ROWS[0]
    return {"bbox": [x0, y0 - 1200 * len(ROWS), x0 + 1200 * len(COLS), y0], "crs": "EPSG:32634"}


@pytest.fixture(scope="module")
def tile_34sga(tmp_path_factory):
    """The whole tile planned (every 1200 m patch of the grid), and one block of it built."""
    import geopandas as gpd

    tmp = tmp_path_factory.mktemp("ben34sga")
    cat = _tile_34sga_catalog(tmp)
    proc = run_cli("plan", str(write_recipe(tmp / "whole.yaml", _tile_recipe(cat))), "-o", str(tmp / "whole"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = gpd.read_parquet(tmp / "whole" / "plan" / "units.parquet")
    with rasterio.open(T34SGA / "B04.tif") as ds:
        tr = ds.transform
    block = _tile_recipe(cat, aoi=_block_aoi(tr))
    block["units"] = {**block["units"], "extent": "aoi"}
    out = tmp / "out"
    proc = run_cli("run", str(write_recipe(tmp / "r.yaml", block)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return planned, out, gpd.read_parquet(out / "index.parquet").set_index("unit_id")


@needs_shared
def test_tile_patches_counts_names_and_nodata_drop(tile_34sga):
    """91 x 91 patches of 1200 m per 109,800 m tile (the last 6 px column and row dropped); the
    name is the product id + ``_{x:02d}_{y:02d}`` (x west to east, y north to south); a patch with
    any fill pixel in any band is dropped. Reference: numpy over the real band rasters."""
    planned, out, idx = tile_34sga
    with rasterio.open(T34SGA / "B04.tif") as b4, rasterio.open(T34SGA / "B08.tif") as b8:
        a4, a8, tr = b4.read(1), b8.read(1), b4.transform
    assert a4.shape == (1098, 1098) and tr.a == 100
    assert len(planned) == 91 * 91
    assert sorted(planned.unit_id) == sorted(f"{PRODUCT_34SGA}_{c:02d}_{r:02d}" for r in range(91) for c in range(91))
    # the ranks: x = column (west to east), y = row (north to south) of the patch's top-left corner
    for _, row in planned.sample(60, random_state=0).iterrows():
        x, y = int(row.unit_id[-5:-3]), int(row.unit_id[-2:])
        a, _, c, _, e, f = row["transform"]
        assert (a, e) == (100, -100) and (c, f) == (tr.c + 1200 * x, tr.f - 1200 * y)
    n = 91 * 12
    fill = ((a4[:n, :n] == 0) | (a8[:n, :n] == 0)).reshape(91, 12, 91, 12).any(axis=(1, 3))  # (row, col)
    want = {f"{PRODUCT_34SGA}_{c:02d}_{r:02d}": ("dropped" if fill[r, c] else "kept") for r in ROWS for c in COLS}
    assert dict(idx.status) == want
    assert set(idx[idx.status == "dropped"].reason_code) == {"nodata"}
    assert 0.2 < fill[ROWS[0]:ROWS[-1] + 1, COLS[0]:COLS[-1] + 1].mean() < 0.8  # the block straddles the edge
    # the per-band files of a kept patch: 12 x 12 px, the source pixels, under patches/{product}/{patch}/
    kept = sorted(u for u, s in want.items() if s == "kept")
    for uid in kept[:: max(1, len(kept) // 25)]:
        x, y = int(uid[-5:-3]), int(uid[-2:])
        for band, src in (("B04", a4), ("B08", a8)):
            with rasterio.open(out / "patches" / PRODUCT_34SGA / uid / f"{uid}_{band}.tif") as ds:
                assert ds.shape == (12, 12) and ds.dtypes[0] == "uint16" and ds.res == (100, 100)
                np.testing.assert_array_equal(ds.read(1), src[12 * y:12 * y + 12, 12 * x:12 * x + 12])


@needs_shared
@pytest.mark.parametrize("file", ["pystacclient__earthsearch_v1_sentinel-2-l2a_extracted.json",
                                  "stacgeoparquet__sentinel-2-l2a-pc.json"])
def test_product_name_of_real_items(file):
    """The patch-name stem of real Earth Search v1 and Planetary Computer items: ``s2:product_uri``
    without its trailing ``_<YYYYMMDDTHHMMSS>.SAFE`` (BigEarthNet v2's patch names); an item
    without it keeps its id."""
    import re

    from eochips.geo import product_name

    doc = json.loads((REAL / "stac_items" / file).read_text())
    feats = doc["features"] if isinstance(doc, dict) else doc
    for it in feats:
        uri = it["properties"]["s2:product_uri"]
        got = product_name(it["id"], it["properties"])
        assert got == uri[: -len("_20250731T143919.SAFE")] and got + uri[len(got):] == uri
        assert re.fullmatch(r"S2[ABC]_MSIL2A_\d{8}T\d{6}_N\d{4}_R\d{3}_T\d{2}[A-Z]{3}", got)
    assert product_name("S2A_29UPU_20170617_0_L2A", {}) == "S2A_29UPU_20170617_0_L2A"
    assert product_name("x", {"s2:product_uri": "not-a-product"}) == "x"
