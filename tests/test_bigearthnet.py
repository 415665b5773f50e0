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
        "dataset": {"split": {"kind": "tile-ring"}, "stats_on": "all", "finalizers": ["index", "split", "summary", "manifest"],
                    "max_drop_fraction": 1},
        "engine": {"batch_chips": 512},
    }
    data.update(extra)
    return data


# the built block: 16 x 25 patches across the tile's real no-data edge (rows 0-15, columns 20-44)
ROWS, COLS = range(0, 16), range(20, 45)


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
    # the tile-ring split of the kept patches (independent: the squares of side s/sqrt2 and s/2 centred in the tile)
    import math

    from shapely.geometry import Point, box

    s, cx, cy = 109800.0, tr.c + 54900, tr.f - 54900
    inner, test = (box(cx - h, cy - h, cx + h, cy + h) for h in (s / (2 * math.sqrt(2)), s / 4))
    kept = sorted(u for u, st in want.items() if st == "kept")
    part = {}
    for u in kept:
        x, y = int(u[-5:-3]), int(u[-2:])
        c = Point(tr.c + 1200 * x + 600, tr.f - 1200 * y - 600)
        part[u] = "test" if test.contains(c) else "validation" if inner.contains(c) else "train"
    assert idx.loc[kept, "split"].to_dict() == part and set(part.values()) == {"train", "validation"}
    for name, p in (("train_ids.csv", "train"), ("val_ids.csv", "validation"), ("test_ids.csv", "test")):
        assert (out / name).read_text().splitlines() == ["ids", *sorted(u for u in kept if part[u] == p)]
    # the SCL over a patch: 6 x 6 px at 200 m, read with nearest onto its 12 x 12 px: the same class shares
    with rasterio.open(T34SGA / "SCL.tif") as ds:
        scl = ds.read(1)
    for u in kept:
        x, y = int(u[-5:-3]), int(u[-2:])
        block = scl[6 * y:6 * y + 6, 6 * x:6 * x + 6]
        f = idx.loc[u, "mask_fractions"][0]
        want = (np.isin(block, [8, 9, 10]).mean(), np.isin(block, [3]).mean(), np.isin(block, [11]).mean())
        assert (f["cloud"], f["shadow"], f["snow"]) == pytest.approx(want, abs=1e-6)  # fractions kept to 6 decimals
    fracs = [idx.loc[u, "mask_fractions"][0]["cloud"] for u in kept]
    assert any(0 < v < 1 for v in fracs)  # the real tile is 90 % cloudy: some kept patches are partly cloudy
    # the per-band files of a kept patch: 12 x 12 px, the source pixels, under patches/{product}/{patch}/
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


# --------------------------------------------------------------------------------------
# the whole recipe on the real BigEarthNet v1 patch

BEN = REAL / "bigearthnet_patch_29UPU"
BEN_STEM = "S2A_MSIL2A_20170617T113321_36_85"
BEN_PRODUCT_URI = "S2A_MSIL2A_20170617T113321_N0205_R080_T29UPU_20170617T113319.SAFE"  # the item's s2:product_uri (made up: the v1 patch keeps only the sensing time)
BEN_ASSETS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
              "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22"}


def _ben_item(dst: Path) -> tuple[dict, object, object]:
    """One Earth Search style item over the real patch: its 12 bands as COG assets (real pixels),
    an SCL asset (20 m, class 4 vegetation; derived: the v1 patch has no SCL) and the patch as footprint."""
    from shapely.geometry import box, mapping

    from eochips.geo import reproject_geometry
    from realdata import write_cog

    assets = {}
    for band, key in BEN_ASSETS.items():
        with rasterio.open(BEN / f"{BEN_STEM}_{band}.tif") as ds:
            arr, crs, tr = ds.read(1), ds.crs, ds.transform
        write_cog(dst / f"{band}.tif", arr, crs, tr, "uint16", 0)
        assets[key] = {"href": f"{band}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       **proj_fields(crs, tr, arr.shape)}
        if band == "B02":
            crs10, tr10 = crs, tr
    tr20 = rasterio.Affine(20, 0, tr10.c, 0, -20, tr10.f)
    write_cog(dst / "SCL.tif", np.full((60, 60), 4, np.uint8), crs10, tr20, "uint8", 0)
    assets["scl"] = {"href": "SCL.tif", **proj_fields(crs10, tr20, (60, 60))}
    patch = box(tr10.c, tr10.f - 1200, tr10.c + 1200, tr10.f)
    foot = reproject_geometry(patch, crs10.to_wkt(), "EPSG:4326")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2A_29UPU_20170617_0_L2A", "collection": "sentinel-2-l2a",
            "geometry": mapping(foot), "bbox": list(foot.bounds),
            "properties": {"datetime": "2017-06-17T11:33:21Z", "eo:cloud_cover": 0.0, "s2:product_uri": BEN_PRODUCT_URI,
                           "grid:code": "MGRS-29UPU", "s2:processing_baseline": "02.05",
                           "eochips:derived_from": "scl: constant class 4 (the BigEarthNet v1 patch has no SCL)"},
            "links": [], "assets": assets}
    return item, crs10, tr10


def _clc_vector(path: Path, crs, tr) -> "object":
    """A CLC-coded GeoPackage in EPSG:3035 over the patch (the real class table, made-up polygons):
    211 (arable) west, 231 (pastures) east, an uncovered hole and a small 122 (UNLABELED) polygon."""
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    x0, y1 = tr.c, tr.f
    west = Polygon([(x0 - 50, y1 + 50), (x0 + 655, y1 + 50), (x0 + 540, y1 - 1250), (x0 - 50, y1 - 1250)])
    east = box(x0 + 500, y1 - 1250, x0 + 1250, y1 + 50).difference(west)
    hole = box(x0 + 100, y1 - 300, x0 + 230, y1 - 170)
    road = box(x0 + 800, y1 - 1000, x0 + 1000, y1 - 960)
    gdf = gpd.GeoDataFrame({"Code_18": ["211", "231", "122"], "Area_Ha": [0.0, 0.0, 0.0]},
                           geometry=[west.difference(hole), east.difference(road), road], crs=crs)
    gdf.to_crs("EPSG:3035").to_file(path, driver="GPKG", layer="U2018_CLC2018_V2020_20u1")
    return gdf.to_crs("EPSG:3035")


@pytest.fixture(scope="module")
def ben_run(tmp_path_factory):
    from servers import RangeServer

    tmp = tmp_path_factory.mktemp("ben")
    (tmp / "cogs").mkdir()
    item, crs, tr = _ben_item(tmp / "cogs")
    clc = _clc_vector(tmp / "clc.gpkg", crs, tr)
    with RangeServer(tmp / "cogs") as srv:
        for a in item["assets"].values():
            a["href"] = f"{srv.url}/{a['href']}"
        (tmp / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
        from eochips.config import canonical, load_recipe

        data = canonical(load_recipe("bigearthnet"))
        data["aoi"] = {"geometry": item["geometry"]}
        data["sources"]["s2"]["search"] = {"catalog": str(tmp / "items.json"), "collections": ["sentinel-2-l2a"]}
        data["labels"]["vector"] = str(tmp / "clc.gpkg")
        data["dataset"]["metadata"]["countries"] = str(REAL / "naturalearth_lowres" / "naturalearth_lowres.shp")
        data["dataset"]["max_drop_fraction"] = 1
        runs = []
        for k in (1, 2):
            out = tmp / f"out{k}"
            proc = run_cli("run", str(write_recipe(tmp / "r.yaml", data)), "-o", str(out), "--no-progress")
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs.append(out)
    return runs, clc, crs, tr


@needs_shared
def test_real_patch_end_to_end(ben_run):
    """The built-in ``bigearthnet`` recipe over the real v1 patch served over HTTP: one patch named
    from the product id, 12 band files at 120/60/20 px equal to the source pixels, a uint16 reference
    map equal to an independent ``rasterio.features.rasterize`` (999 uncovered), the multi-labels, Ireland."""
    import geopandas as gpd
    import pyarrow.parquet as pq
    from rasterio.features import rasterize

    (out, _), clc, crs, tr = ben_run
    patch = "S2A_MSIL2A_20170617T113321_N0205_R080_T29UPU_00_00"
    folder = out / "patches" / "S2A_MSIL2A_20170617T113321_N0205_R080_T29UPU" / patch
    idx = gpd.read_parquet(out / "index.parquet").set_index("unit_id")
    assert list(idx.index) == [patch] and idx.loc[patch, "status"] == "kept"
    sizes = {10: 120, 20: 60, 60: 20}
    for band in BEN_ASSETS:
        with rasterio.open(BEN / f"{BEN_STEM}_{band}.tif") as src, rasterio.open(folder / f"{patch}_{band}.tif") as ds:
            assert ds.dtypes[0] == "uint16" and ds.shape == (sizes[int(src.res[0])],) * 2 == src.shape
            assert ds.crs == src.crs and ds.transform == src.transform
            np.testing.assert_array_equal(ds.read(1), src.read(1))
    with rasterio.open(folder / f"{patch}_reference_map.tif") as ds:
        ref = ds.read(1)
        assert ds.dtypes[0] == "uint16" and ds.shape == (120, 120) and ds.transform == tr
        assert ds.profile["compress"].lower() == "deflate" and ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
    local = clc.to_crs(crs)
    want = rasterize(zip(local.geometry, local.Code_18.astype(int)), out_shape=(120, 120), transform=tr, fill=999,
                     dtype="uint16", all_touched=False)
    np.testing.assert_array_equal(ref, want)
    assert set(np.unique(ref)) == {122, 211, 231, 999}
    rows = pq.read_table(out / "metadata.parquet").to_pylist()
    assert rows == [{"patch_id": patch, "labels": ["Arable land", "Pastures"], "split": "train", "country": "Ireland",
                     "s1_name": None, "s2v1_name": None, "contains_seasonal_snow": False, "contains_cloud_or_shadow": False}]
    assert pq.read_table(out / "metadata_for_patches_with_snow_cloud_or_shadow.parquet").num_rows == 0


@needs_shared
def test_two_runs_give_the_same_archive(ben_run):
    """Two runs of the recipe: byte-identical archives and the same manifest hash."""
    import hashlib

    (a, b), *_ = ben_run
    arch = sorted((a / "archive").glob("*.tar.zst"))
    assert [p.name for p in arch] == ["bigearthnet.tar.zst"]
    assert (a / "archive" / "bigearthnet.tar.zst").read_bytes() == (b / "archive" / "bigearthnet.tar.zst").read_bytes()
    assert hashlib.sha256((a / "checksums.sha256").read_bytes()).hexdigest() == \
        hashlib.sha256((b / "checksums.sha256").read_bytes()).hexdigest()


@needs_shared
def test_stats_of_a_multilabel_table(ben_run):
    """With ``labels.table: clc-19`` the class statistics are per class name (not per CLC code up to
    999): pixels, patches holding the name, balanced weights over the names present."""
    from rasterio.features import rasterize

    (out, _), clc, crs, tr = ben_run
    stats = json.loads((out / "stats.json").read_text())
    local = clc.to_crs(crs)
    ref = rasterize(zip(local.geometry, local.Code_18.astype(int)), out_shape=(120, 120), transform=tr, fill=999, dtype="uint16")
    codes = {str(c): int((ref == c).sum()) for c in np.unique(ref)}
    assert stats["code_pixels"] == codes
    assert len(stats["class_pixels"]) == 19 and stats["class_pixels"]["Arable land"] == codes["211"]
    assert stats["class_pixels"]["Pastures"] == codes["231"] and sum(stats["class_pixels"].values()) == codes["211"] + codes["231"]
    assert stats["label_units"]["Arable land"] == stats["label_units"]["Pastures"] == 1 and sum(stats["label_units"].values()) == 2
    total, k = codes["211"] + codes["231"], 2
    raw = {n: total / (k * codes[c]) for n, c in (("Arable land", "211"), ("Pastures", "231"))}
    for n, v in raw.items():
        assert stats["class_weights"][n] == pytest.approx(v / sum(raw.values()), rel=1e-12)
    assert sum(stats["class_weights"].values()) == pytest.approx(1)


def test_label_strips_cover_the_grid_and_burn_as_the_whole_grid(tmp_path):
    """Vector labels are read per strip of LABEL_STRIP_ROWS unit rows (bounded memory at CORINE
    scale): every unit lies in its strip, the strips of a grid tile it, and a unit burnt from its
    strip's polygons equals the unit burnt from the whole grid's (random overlapping polygons; an
    independent rasterio.features.rasterize of all of them in file order)."""
    import geopandas as gpd
    import shapely
    from odc.geo.geobox import GeoBox
    from rasterio.features import rasterize

    from eochips.geo import Grid, tile_units
    from eochips.labels import rasterize_vector, release_vector_indexes
    from eochips.plan import LABEL_STRIP_ROWS, _label_strip

    gbox = GeoBox((40 * 12, 7 * 12), rasterio.Affine(100, 0, 500000, 0, -100, 5000000), "EPSG:32630")
    grid = Grid(0, "g", gbox)
    units = tile_units(grid, 12, shapely.box(*gbox.boundingbox[:4]))
    assert len(units) == 40 * 7
    strips = {}
    for u in units:
        s = _label_strip(grid, u)
        assert shapely.box(*s).covers(shapely.box(*u.gbox.boundingbox[:4]))
        strips.setdefault(s, []).append(u)
    assert len(strips) == -(-40 // LABEL_STRIP_ROWS)
    assert shapely.union_all([shapely.box(*s) for s in strips]).equals(shapely.box(*gbox.boundingbox[:4]))
    assert sum(shapely.box(*s).area for s in strips) == pytest.approx(shapely.box(*gbox.boundingbox[:4]).area)
    rng = np.random.default_rng(3)
    x0, y0, x1, y1 = gbox.boundingbox[:4]
    polys, codes = [], []
    for _ in range(300):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        polys.append(shapely.Point(cx, cy).buffer(rng.uniform(300, 9000), quad_segs=6))
        codes.append(str(rng.choice([111, 211, 231, 311, 512])))
    gdf = gpd.GeoDataFrame({"Code_18": codes}, geometry=polys, crs="EPSG:32630")
    gdf.to_file(tmp_path / "clc.gpkg", driver="GPKG")
    kw = dict(burn="value", dtype="uint16", fill=999, table="clc-19")
    for s, us in list(strips.items())[:3]:
        for u in us[::5]:
            tr, shape = tuple(u.gbox.affine)[:6], tuple(u.gbox.shape)
            got = rasterize_vector(str(tmp_path / "clc.gpkg"), "Code_18", {}, gbox.crs.to_wkt(), tr, shape, s, **kw)
            want = rasterize(zip(gdf.geometry, gdf.Code_18.astype(int)), out_shape=shape, transform=rasterio.Affine(*tr),
                             fill=999, dtype="uint16")
            np.testing.assert_array_equal(got, want)
    release_vector_indexes()
