"""Sentinel-2 L2A end to end on real pixels: 5 dates over Exeter in three CRSs (EPSG:27700, UTM
30N, a local LAEA), SCL masks, on a ``scene`` grid (the EPSG:27700 scene's own grid) and on a
``crs`` grid (EPSG:3035, 20 m). Every chip is checked against an independent rasterio
reprojection of each asset onto the chip's grid (bilinear within 1 DN and >= 99 % equal, SCL
with nearest exactly), the grid scene's own date against its raw pixels (no resampling at all),
and the SCL mask fractions against numpy on the reference SCL."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.warp import Resampling, reproject
from shapely.geometry import shape

from conftest import needs_shared, run_cli, write_recipe
from realdata import S2_BANDS, build_s2_exeter, write_catalog

pytestmark = needs_shared
NAMES = ["blue", "green", "red", "nir"]
CHIP = 32


@pytest.fixture(scope="module")
def s2(tmp_path_factory):
    d = tmp_path_factory.mktemp("s2")
    items = build_s2_exeter(d / "assets")
    cat = write_catalog(d / "items.json", items, d / "assets")
    common = shapely.intersection_all([shape(it["geometry"]) for it in items])
    return d, items, cat, common


def _recipe(cat, aoi, grid: dict, sources: dict, name: str) -> dict:
    return {
        "version": 2, "name": name,
        "aoi": {"geometry": shapely.geometry.mapping(aoi)},
        "sources": sources, "grid": grid, "units": {"kind": "chip", "size": CHIP},
        "masks": {"sources": [{"kind": "scl", "source": "s2"}]},
        "filters": [{"kind": "nodata", "sources": ["s2"], "max_pixels": 0}],
        "output": {"layout": {"kind": "seed-001", "source": "s2"}},
        "engine": {"workers": 2},
    }


def _s2_source(cat, **search) -> dict:
    return {"search": {"catalog": str(cat), "collections": ["sentinel-2-l2a"], **search}, "profile": "sentinel-2-l2a-pc",
            "bands": NAMES, "selection": {"kind": "all", "per": "unit", "coverage_thresholds": [100]}}


def _reference(path, crs, tr, resampling, nodata=0):
    with rasterio.open(path) as src:
        dst = np.full((CHIP, CHIP), nodata, src.dtypes[0])
        reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs=crs, resampling=resampling,
                  src_nodata=nodata, dst_nodata=nodata)
    return dst


def _check_chips(out, d, items, grid_crs):
    idx = gpd.read_parquet(out / "index.parquet").set_index("unit_id")
    by_id = {it["id"]: it for it in items}
    kept = idx[idx.status == "kept"]
    assert len(kept) >= 4
    assert (idx["crs"] == grid_crs).all()
    n_scl_cloud = 0
    for uid, row in kept.iterrows():
        a, b, c, dd, e, f = row["transform"]
        tr = Affine(a, b, c, dd, e, f)
        with rasterio.open(out / "chips" / f"{uid}_merged.tif") as ds:
            got = ds.read()
            assert ds.transform == tr and ds.nodata == 0 and ds.dtypes[0] == "uint16"
            crs = ds.crs
            dates = [x.split("@")[1] for x in ds.descriptions[::4]]
            assert list(ds.descriptions[:4]) == [f"{n}@{dates[0]}" for n in NAMES]
            assert ds.offsets[0] == pytest.approx(-0.1) and ds.scales[0] == pytest.approx(1e-4)  # baseline >= 04.00
        with rasterio.open(out / "chips" / f"{uid}_Fmask.tif") as ds:
            scl_got = ds.read()
        scene_ids = [s["id"] for s in row.scenes if s["source"] == "s2"]
        assert len(scene_ids) == 5 and dates == sorted(dates)
        fractions = list(row.mask_fractions)
        for t, sid in enumerate(scene_ids):
            it = by_id[sid]
            for bi, band in enumerate(S2_BANDS[:4]):
                ref = _reference(d / "assets" / it["assets"][band]["href"], crs, tr, Resampling.bilinear)
                g = got[t * 4 + bi]
                assert np.abs(g.astype(int) - ref.astype(int)).max() <= 1, (uid, sid, band)
                assert np.mean(g == ref) >= 0.99
            scl = _reference(d / "assets" / it["assets"]["SCL"]["href"], crs, tr, Resampling.nearest)
            np.testing.assert_array_equal(scl_got[t], scl)
            cloud = np.isin(scl, (8, 9, 10)).sum() / scl.size
            shadow = (scl == 3).sum() / scl.size
            fr = [x for x in fractions if x["step"] == t and x["source"] == "s2"][0]
            assert fr["cloud"] == pytest.approx(cloud, abs=1e-6) and fr["shadow"] == pytest.approx(shadow, abs=1e-6)
            n_scl_cloud += int(cloud > 0)
    assert n_scl_cloud > 0  # the real scenes have clouds in some chips: the masks are exercised
    return kept


def test_scene_grid_is_the_grid_scenes_own(s2, tmp_path):
    d, items, cat, common = s2
    aoi = common.buffer(-0.01)
    sources = {"grid": _s2_source(cat, filter="id LIKE '%EPSG27700'"), "s2": _s2_source(cat)}
    sources["grid"]["selection"] = {"kind": "least-cloudy", "per": "unit", "coverage_thresholds": [100], "n_scenes": 1}
    sources["grid"]["bands"] = ["blue"]
    data = _recipe(cat, aoi, {"kind": "scene", "source": "grid"}, sources, "s2-scene-grid")
    data["output"]["layout"] = [{"kind": "seed-001", "source": "s2"}]
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = _check_chips(out, d, items, "EPSG:27700")
    # the grid is the EPSG:27700 scene's own: its date's chips are its raw pixels, untouched
    grid_item = next(it for it in items if it["id"].endswith("EPSG27700"))
    with rasterio.open(d / "assets" / grid_item["assets"]["B02"]["href"]) as src:
        raw, src_tr = src.read(1), src.transform
    for uid, row in kept.iterrows():
        assert uid.startswith(grid_item["id"] + "_")  # unit ids name their grid: {grid}_{col}_{row}
        col, r = (~src_tr) @ (row["transform"][2], row["transform"][5])
        col, r = int(round(col)), int(round(r))
        assert (col % CHIP, r % CHIP) == (0, 0)  # on the scene's own pixel edges, in whole chips
        t = [s["id"] for s in row.scenes if s["source"] == "s2"].index(grid_item["id"])
        with rasterio.open(tmp_path / "out" / "chips" / f"{uid}_merged.tif") as ds:
            np.testing.assert_array_equal(ds.read(t * 4 + 1), raw[r:r + CHIP, col:col + CHIP])
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert [g["name"] for g in plan["grids"]] == [grid_item["id"]]


def test_crs_grid_across_three_source_crss(s2, tmp_path):
    d, items, cat, common = s2
    aoi = common.buffer(-0.01)
    data = _recipe(cat, aoi, {"kind": "crs", "crs": "EPSG:3035", "resolution": 20}, {"s2": _s2_source(cat)}, "s2-crs-grid")
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = _check_chips(out, d, items, "EPSG:3035")
    crss = set()
    for it in items:
        a = it["assets"]["B02"]
        crss.add(a.get("proj:code") or "local")
    assert crss == {"EPSG:27700", "EPSG:32630", "local"}  # three source CRSs read onto one grid
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["bands"]) == NAMES and stats["chips"] == int(0.8 * len(kept))
