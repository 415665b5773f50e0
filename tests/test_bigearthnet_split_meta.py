"""BigEarthNet v2's tile-ring split and metadata table (issue 13, items 3 and 4).

- The tile-ring split over a real full Sentinel-2 tile (34SGA, decimated 10x) as one scene grid:
  every 1200 m patch's part against an independent shapely computation (boxes from the formula,
  not buffers), the parts' areas 1/2, 1/4, 1/4, the patch shares close to them.
- The country of a patch: the real BigEarthNet patch on T29UPU -> Ireland; patches at sea -> the
  nearest country of an independent geopandas distance computation.
- ``metadata.parquet`` / ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` of a recipe run:
  columns and types, sorted, the SCL flags (a unit with snow pixels, one with cloud and shadow pixels,
  one clear), null s1_name without an S1 source, identical bytes after a second finalize.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
import shapely
from shapely.geometry import box, mapping

from conftest import REAL, needs_shared, run_cli, write_recipe
from realdata import footprint, proj_fields, write_cog

TILE_34SGA = REAL / "s2l2a_native_scl_34SGA"
BEN = REAL / "bigearthnet_patch_29UPU"
BEN_STEM = "S2A_MSIL2A_20170617T113321_36_85"
COUNTRIES = REAL / "naturalearth_lowres" / "naturalearth_lowres.shp"


def _read_index(out):
    import geopandas as gpd

    return gpd.read_parquet(out / "index.parquet").set_index("unit_id")


def _run(tmp_path, data: dict):
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, _read_index(out)


# --------------------------------------------------------------------------------------
# the tile-ring split on a real full tile

def _tile_34sga_item(tmp_path) -> tuple[dict, tuple]:
    """The real 34SGA item with its B04, B08 and SCL hrefs rewritten to the local (decimated) files
    and their projection fields to the files' own grids (100 m, 200 m)."""
    item = json.loads((TILE_34SGA / "item.json").read_text())
    assets = {}
    for key in ("B04", "B08", "SCL"):
        with rasterio.open(TILE_34SGA / f"{key}.tif") as ds:
            assets[key] = {"href": str(TILE_34SGA / f"{key}.tif"), "type": "image/tiff; application=geotiff",
                           **proj_fields(ds.crs, ds.transform, ds.shape)}
            if key == "B04":
                bounds = tuple(ds.bounds)
    item["assets"] = assets
    item["collection"] = "sentinel-2-l2a"
    item["properties"]["s2:processing_baseline"] = "02.14"  # N0214 in its product id: no DN offset
    return item, bounds


@needs_shared
def test_tile_ring_split_on_a_full_tile(tmp_path):
    """34SGA (real S2 L2A, the whole 109,800 m tile at 100 m) as one scene grid, 1200 m patches
    (12 px) over the whole grid: each patch's split is the part of an independent computation
    (the inner square s/sqrt2 and the test square s/2 as boxes centred in the tile) holding its
    centroid; the parts of eochips.dataset.splits have the areas 1/2, 1/4, 1/4 of the tile; the
    patch shares are within the centroid discretisation of those (see below)."""
    from eochips.dataset.splits import tile_ring_parts, tile_square

    item, (x0, y0, x1, y1) = _tile_34sga_item(tmp_path)
    s = 109800.0
    assert (x1 - x0, y1 - y0) == (s, s)
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    data = {
        "version": 2, "name": "tile-ring", "aoi": {"geometry": item["geometry"]},
        "sources": {"s2": {"search": {"catalog": str(cat), "collections": ["sentinel-2-l2a"]}, "profile": "sentinel-2-l2a-pc",
                           "bands": ["red"], "resampling": "nearest",
                           "selection": {"kind": "all", "coverage_thresholds": [1]}}},
        "grid": {"kind": "scene", "source": "s2", "resolution": 100},
        "units": {"kind": "chip", "size_m": 1200, "resolution_groups": True, "extent": "grid", "id": "T34SGA_{col:02d}_{row:02d}"},
        "output": {"layout": {"kind": "per-band", "name": "{unit}_{band}.tif", "path": "patches/{unit}"}},
        "engine": {"workers": 1},
        "dataset": {"split": {"kind": "tile-ring"}, "finalizers": ["index", "split", "summary", "manifest"]},
    }
    # the split needs only the plan: every 1200 m patch of the tile, none built (8,281 of them)
    proc = run_cli("plan", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from eochips.dataset.splits import SPLITS
    from eochips.plan import load_plan
    from eochips.writers.store import OutputStore

    plan = load_plan(OutputStore(tmp_path / "out"))
    n = 91 * 91  # 109,800 / 1200 = 91.5: the last, incomplete column and row are not units
    assert len(plan.units) == n
    ids = [up.id for up in plan.units]
    got = SPLITS["tile-ring"](ids, plan.recipe.dataset.split, plan)
    split = {**{u: "train" for u in got.train}, **{u: "validation" for u in got.validation}, **{u: "test" for u in got.test}}
    assert len(split) == n
    import pandas as pd

    idx = pd.DataFrame({"split": [split[u] for u in ids], "transform": [list(tuple(up.unit.gbox.affine)[:6]) for up in plan.units]},
                       index=ids)

    # independent parts: squares centred in the tile, of side s/sqrt(2) (inner) and s/2 (test)
    cx, cy = x0 + s / 2, y0 + s / 2
    inner = box(cx - s / (2 * math.sqrt(2)), cy - s / (2 * math.sqrt(2)), cx + s / (2 * math.sqrt(2)), cy + s / (2 * math.sqrt(2)))
    test = box(cx - s / 4, cy - s / 4, cx + s / 4, cy + s / 4)
    want = {}
    for uid, t in zip(idx.index, idx["transform"]):
        c = shapely.Point(t[2] + 600, t[5] - 600)  # the patch's centre: top-left corner + half of 1200 m
        want[uid] = "test" if test.contains(c) else "validation" if inner.contains(c) else "train"
    assert idx.split.to_dict() == want

    # the parts' areas (the code's buffers) and their equality with the independent squares
    parts = tile_ring_parts(tile_square((x0, y0, x1, y1), s), s)
    tile_area = s * s
    for name, frac in (("train", 0.5), ("validation", 0.25), ("test", 0.25)):
        assert parts[name].area == pytest.approx(frac * tile_area, rel=1e-9), name
    assert parts["test"].symmetric_difference(test).area < 1e-3 and parts["inner"].symmetric_difference(inner).area < 1e-3

    # patch shares: a square of side L holds L^2/p^2 lattice centroids (pitch p = 1200 m) give or
    # take its perimeter in patches, 4 L / p; the uncovered 600 m strip east and south (91.5 patches
    # per side) lies in the train ring, so the shares are of the 91 x 91 patches
    counts = idx.split.value_counts().to_dict()
    shares = {k: v / n for k, v in counts.items()}
    for name, side in (("test", s / 2), ("inner", s / math.sqrt(2))):
        got = counts["test"] + (counts["validation"] if name == "inner" else 0)
        assert abs(got - side**2 / 1200**2) <= 4 * side / 1200, (name, got)
    covered = (91 * 1200) ** 2 / tile_area
    assert shares["train"] == pytest.approx(1 - 0.5 / covered, abs=4 * (s / math.sqrt(2)) / 1200 / n)
    assert shares["validation"] == pytest.approx(0.25 / covered, abs=8 * (s / math.sqrt(2)) / 1200 / n)
    assert shares["test"] == pytest.approx(0.25 / covered, abs=4 * (s / 2) / 1200 / n)
    print("tile-ring patch shares (train / validation / test):", {k: round(v, 4) for k, v in shares.items()}, counts)



def test_tile_ring_needs_a_scene_grid(tmp_path):
    """A tile-ring split on a CRS grid is refused at recipe load, naming the field."""
    from eochips.config import parse_recipe
    from eochips.errors import RecipeError

    data = {
        "version": 2, "name": "x", "aoi": {"bbox": [0, 0, 0.1, 0.1]},
        "sources": {"s2": {"search": {"catalog": "items.json", "collections": ["c"]}, "profile": "sentinel-2-l2a-pc", "bands": ["red"]}},
        "grid": {"kind": "crs", "crs": "EPSG:32631", "resolution": 10}, "units": {"kind": "chip", "size": 64},
        "dataset": {"split": {"kind": "tile-ring"}},
    }
    with pytest.raises(RecipeError, match=r"dataset.split.*tile-ring split needs a scene grid.*'crs'"):
        parse_recipe(data)


# --------------------------------------------------------------------------------------
# countries

def _independent_nearest(poly, crs: str) -> str:
    """Nearest Natural Earth country of a polygon by geopandas distances in ``crs`` (no clipping,
    no spatial index), over the countries of the same hemisphere half (the rest is > 5,000 km away
    and does not reproject to a UTM zone)."""
    import geopandas as gpd

    df = gpd.read_file(COUNTRIES)
    lon = gpd.GeoSeries([poly], crs=crs).to_crs("EPSG:4326").iloc[0].centroid.x
    b = df.geometry.bounds
    df = df[(b.minx < lon + 60) & (b.maxx > lon - 60)]
    d = df.to_crs(crs).distance(poly)
    return df.loc[d.idxmin(), "name"]


@needs_shared
def test_country_of_a_patch_on_land_and_at_sea():
    """The real BigEarthNet patch on T29UPU (EPSG:32629) lies in Ireland; patches at sea (west of
    Ireland, in the Irish Sea, north of Scotland, in the Bay of Biscay) take the country of an
    independent geopandas distance computation, and a patch on land the country it lies in."""
    from eochips.dataset.bigearthnet import load_countries, nearest_countries

    with rasterio.open(BEN / f"{BEN_STEM}_B02.tif") as ds:
        crs = ds.crs.to_wkt()
        patch = box(*ds.bounds)
    countries = load_countries(str(COUNTRIES))
    assert nearest_countries(np.array([patch], dtype=object), crs, countries) == ["Ireland"]

    from eochips.geo import reproject_geometry

    sea = {"atlantic": (-12.0, 53.0), "irish sea": (-5.2, 53.6), "north of scotland": (-4.0, 59.5), "biscay": (-5.0, 45.5),
           "london (land)": (-0.1, 51.5)}
    polys = []
    for lon, lat in sea.values():
        c = reproject_geometry(shapely.Point(lon, lat), "EPSG:4326", crs)
        polys.append(box(c.x - 600, c.y - 600, c.x + 600, c.y + 600))
    got = nearest_countries(np.array(polys, dtype=object), crs, countries)
    want = [_independent_nearest(p, crs) for p in polys]
    assert got == want
    assert got[-1] == "United Kingdom" and got[0] == "Ireland"
    print("nearest countries:", dict(zip(sea, got)))


def test_country_field_is_checked(tmp_path):
    """A country_field the file lacks fails naming the field and the file's fields."""
    from eochips.dataset.bigearthnet import load_countries
    from eochips.errors import OutputError

    if not COUNTRIES.exists():
        pytest.skip("needs ../shared")
    with pytest.raises(OutputError, match=r"country_field: .* has no field 'NAME_LONG'; its fields: .*name"):
        load_countries(str(COUNTRIES), "NAME_LONG")


# --------------------------------------------------------------------------------------
# the metadata parquet of a recipe run

def _three_unit_scene(tmp_path) -> tuple[dict, object, object]:
    """One S2 item of three 1200 m units side by side on the real BigEarthNet patch's grid (its real
    B02 and B8A pixels, the patch repeated east: derived), and a written SCL COG at 20 m: unit 0
    holds 5 snow pixels (class 11), unit 1 three cloud (8, 9) and two shadow (3) pixels, unit 2 none
    (vegetation, 4)."""
    assets = {}
    with rasterio.open(BEN / f"{BEN_STEM}_B02.tif") as ds:
        b02, crs, tr = ds.read(1), ds.crs, ds.transform
    with rasterio.open(BEN / f"{BEN_STEM}_B8A.tif") as ds:
        b8a, tr20 = ds.read(1), ds.transform
    write_cog(tmp_path / "B02.tif", np.tile(b02, (1, 3)), crs, tr, "uint16", 0)
    write_cog(tmp_path / "B8A.tif", np.tile(b8a, (1, 3)), crs, tr20, "uint16", 0)
    scl = np.full((60, 180), 4, np.uint8)
    scl[10, 10:15] = 11  # unit 0: snow
    scl[20, 70:73] = [8, 9, 8]  # unit 1: cloud
    scl[30, 80:82] = 3  # unit 1: cloud shadow
    write_cog(tmp_path / "SCL.tif", scl, crs, tr20, "uint8", 0)
    for key, shape, t in (("B02", (120, 360), tr), ("B8A", (60, 180), tr20), ("SCL", (60, 180), tr20)):
        assets[key] = {"href": str(tmp_path / f"{key}.tif"), **proj_fields(crs, t, shape)}
    foot = footprint(np.ones((120, 360), bool), crs, tr)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2A_MSIL2A_20170617T113321_R080_T29UPU", "collection": "sentinel-2-l2a",
            "geometry": mapping(foot), "bbox": list(foot.bounds), "links": [], "assets": assets,
            "properties": {"datetime": "2017-06-17T11:33:21Z", "s2:processing_baseline": "02.05", "s2:mgrs_tile": "29UPU",
                           "eochips:derived_from": f"BigEarthNet v1 patch {BEN_STEM} (B02, B8A) repeated 3x east; SCL written"}}
    return item, crs, tr


def _labels_file(tmp_path, crs, tr) -> str:
    """A CLC-coded vector file over the three units: 211 (arable) on the west half, 231 (pastures) east."""
    import geopandas as gpd

    x0, y0 = tr.c, tr.f
    west = box(x0, y0 - 1200, x0 + 1800, y0)
    east = box(x0 + 1800, y0 - 1200, x0 + 3600, y0)
    path = tmp_path / "clc.gpkg"
    gpd.GeoDataFrame({"Code_18": ["211", "231"]}, geometry=[west, east], crs=crs).to_file(path)
    return str(path)


@needs_shared
def test_metadata_parquet_of_a_run(tmp_path):
    """A recipe with the bigearthnet finalizer over three units: metadata.parquet holds the clear
    unit, the flagged file the snow unit and the cloud/shadow unit (flags from the SCL pixels),
    with exactly BigEarthNet v2's columns and types, sorted by patch_id, the country Ireland,
    s1_name and s2v1_name null (no S1 source; the one patch the s2v1 CSV names has its name), the
    labels of each unit's classes; a second finalize writes byte-identical files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, idx = _run(tmp_path, _ben_recipe(tmp_path))
    assert sorted(idx.index) == ["T29UPU_00_00", "T29UPU_01_00", "T29UPU_02_00"] and set(idx.status) == {"kept"}
    clear = pq.read_table(out / "metadata.parquet")
    flagged = pq.read_table(out / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    want_schema = pa.schema([("patch_id", pa.string()), ("labels", pa.list_(pa.string())), ("split", pa.string()),
                             ("country", pa.string()), ("s1_name", pa.string()), ("s2v1_name", pa.string()),
                             ("contains_seasonal_snow", pa.bool_()), ("contains_cloud_or_shadow", pa.bool_())])
    for t in (clear, flagged):
        assert t.schema.remove_metadata().equals(want_schema), t.schema
        assert t.column("patch_id").to_pylist() == sorted(t.column("patch_id").to_pylist())
    rows = {r["patch_id"]: r for r in flagged.to_pylist()}
    assert list(rows) == ["T29UPU_00_00", "T29UPU_01_00"]
    assert (rows["T29UPU_00_00"]["contains_seasonal_snow"], rows["T29UPU_00_00"]["contains_cloud_or_shadow"]) == (True, False)
    assert (rows["T29UPU_01_00"]["contains_seasonal_snow"], rows["T29UPU_01_00"]["contains_cloud_or_shadow"]) == (False, True)
    (c,) = clear.to_pylist()
    assert c["patch_id"] == "T29UPU_02_00" and not c["contains_seasonal_snow"] and not c["contains_cloud_or_shadow"]
    assert c["s2v1_name"] == "S2A_MSIL2A_20170617T113321_38_85"
    everything = [*rows.values(), c]
    assert all(r["country"] == "Ireland" and r["s1_name"] is None for r in everything)
    assert all(r["s2v1_name"] is None for r in rows.values())
    assert {r["patch_id"]: r["split"] for r in everything} == idx.split.to_dict()
    # labels: the west unit arable, the middle one both (the border at 1800 m), the east one pastures
    assert {r["patch_id"]: r["labels"] for r in everything} == {
        "T29UPU_00_00": ["Arable land"], "T29UPU_01_00": ["Arable land", "Pastures"], "T29UPU_02_00": ["Pastures"]}
    # the SCL counts behind the flags: 5 snow pixels of 20 m = 20 of 10 m in unit 0 of 120 x 120
    fr = {u: list(v) for u, v in idx.mask_fractions.items()}
    assert fr["T29UPU_00_00"][0]["snow"] == round(20 / 14400, 6) and fr["T29UPU_01_00"][0]["cloud"] == round(12 / 14400, 6)

    before = {n: (out / n).read_bytes() for n in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet")}
    proc = run_cli("finalize", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {n: (out / n).read_bytes() for n in before} == before
    md = pq.ParquetFile(out / "metadata.parquet").metadata
    assert md.row_group(0).column(0).compression == "ZSTD"


S1_ID = "S1A_IW_GRDH_1SDV_20170618T063958_20170618T064023_017063_01C7E5_rtc"


@needs_shared
def test_metadata_s1_name_is_the_paired_s1_scene(tmp_path):
    """With ``s1_source`` (an S1 source matched to the S2 scene with nearest-in-time; its pixels are
    the real B02 patch scaled to float: derived), every patch's s1_name is that S1 item's id."""
    import pyarrow.parquet as pq

    out, idx = _run(tmp_path, _ben_recipe(tmp_path, s1=True))
    assert set(idx.status) == {"kept"} and all([s["id"] for s in v if s["source"] == "s1"] == [S1_ID] for v in idx["scenes"])
    names = [r["s1_name"] for n in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
             for r in pq.read_table(out / n).to_pylist()]
    assert names == [S1_ID] * 3


def _ben_recipe(tmp_path, s1: bool = False) -> dict:
    """The recipe of the metadata tests over :func:`_three_unit_scene` (with ``s1``: an S1 source too)."""
    item, crs, tr = _three_unit_scene(tmp_path)
    items = [item]
    if s1:
        with rasterio.open(BEN / f"{BEN_STEM}_B02.tif") as ds:
            vv = np.tile(ds.read(1), (1, 3)).astype(np.float32) * np.float32(1e-4)
        write_cog(tmp_path / "vv.tif", vv, crs, tr, "float32", None)
        items.append({**item, "id": S1_ID, "collection": "sentinel-1-rtc",
                      "assets": {"vv": {"href": str(tmp_path / "vv.tif"), **proj_fields(crs, tr, vv.shape)}},
                      "properties": {"datetime": "2017-06-18T06:39:58Z", "sat:orbit_state": "descending",
                                     "eochips:derived_from": f"BigEarthNet v1 patch {BEN_STEM} B02 x 1e-4 repeated 3x east"}})
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    (tmp_path / "s2v1.csv").write_text("patch_id,s2v1_name\nT29UPU_02_00,S2A_MSIL2A_20170617T113321_38_85\n")
    data = {
        "version": 2, "name": "ben-meta", "aoi": {"geometry": item["geometry"]},
        "sources": {"s2": {"search": {"catalog": str(cat), "collections": ["sentinel-2-l2a"]}, "profile": "sentinel-2-l2a-pc",
                           "bands": ["blue", "nir08"], "resampling": "nearest",
                           "selection": {"kind": "all", "coverage_thresholds": [1]}}},
        "grid": {"kind": "scene", "source": "s2", "resolution": 10},
        "units": {"kind": "chip", "size_m": 1200, "resolution_groups": True, "extent": "grid", "id": "T29UPU_{col:02d}_{row:02d}"},
        "masks": {"sources": [{"kind": "scl", "source": "s2", "cloud_classes": [8, 9, 10], "shadow_classes": [3],
                               "snow_classes": [11], "nodata_classes": [0]}]},
        "labels": {"vector": _labels_file(tmp_path, crs, tr), "class_field": "Code_18", "classes": {"211": 1, "231": 2},
                   "class_names": {1: "Arable land", 2: "Pastures"}},
        "output": {"layout": {"kind": "per-band", "name": "{unit}_{band}.tif", "path": "patches/{unit}"}},
        "engine": {"workers": 1},
        "dataset": {"split": {"kind": "tile-ring"}, "stats_on": "all",
                    "metadata": {"countries": str(COUNTRIES), "s2v1": str(tmp_path / "s2v1.csv")},
                    "finalizers": ["index", "split", "stats", "bigearthnet", "summary", "manifest"]},
    }
    if s1:
        data["sources"]["s1"] = {"search": {"catalog": str(cat), "collections": ["sentinel-1-rtc"]}, "profile": "sentinel-1-rtc",
                                 "bands": ["vv"], "selection": {"kind": "nearest-in-time", "relative_to": "s2"}}
        data["dataset"]["metadata"]["s1_source"] = "s1"
    return data


def test_bigearthnet_finalizer_needs_its_inputs():
    """Recipe load names what the bigearthnet finalizer lacks: dataset.metadata, a scene grid,
    labels, an scl mask, a known s1_source."""
    from eochips.config import parse_recipe
    from eochips.errors import RecipeError

    base = {
        "version": 2, "name": "x", "aoi": {"bbox": [0, 0, 0.1, 0.1]},
        "sources": {"s2": {"search": {"catalog": "items.json", "collections": ["c"]}, "profile": "sentinel-2-l2a-pc", "bands": ["red"]}},
        "grid": {"kind": "scene", "source": "s2", "resolution": 10}, "units": {"kind": "chip", "size_m": 1200},
        "masks": {"sources": [{"kind": "scl", "source": "s2"}]},
        "labels": {"vector": "clc.gpkg", "class_field": "Code_18", "classes": {"211": 1}},
        "dataset": {"metadata": {"countries": "ne.shp"}, "finalizers": ["index", "bigearthnet", "manifest"]},
    }

    def bad(pattern: str, **changes):
        d = json.loads(json.dumps(base))
        for k, v in changes.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v
        with pytest.raises(RecipeError, match=pattern):
            parse_recipe(d)

    parse_recipe(base)
    bad(r"recipe field .dataset.metadata.: the bigearthnet finalizer needs dataset.metadata",
        dataset={"finalizers": ["index", "bigearthnet", "manifest"]})
    bad(r"recipe field .dataset.metadata.: the bigearthnet finalizer needs a scene grid", grid={"kind": "crs", "crs": "EPSG:32629", "resolution": 10})
    bad(r"recipe field .dataset.metadata.: the bigearthnet finalizer needs a labels section", labels=None)
    bad(r"recipe field .dataset.metadata.: the bigearthnet finalizer needs an scl mask", masks=None)
    bad(r"recipe field .dataset.metadata.s1_source.: unknown source 's1'",
        dataset={"metadata": {"countries": "ne.shp", "s1_source": "s1"}, "finalizers": ["index", "bigearthnet", "manifest"]})


def test_flag_thresholds_and_label_names_rule():
    """A flag is true when the fraction is > its threshold (equal is not enough); cloud and shadow
    add up; the build's label_names win over the label histogram; the round-join buffer of the
    pipeline (PostGIS st_buffer's default) gives the same squares as the mitre buffers used."""
    from eochips.config.models import MetadataConfig
    from eochips.dataset.bigearthnet import flags, label_list
    from eochips.dataset.splits import tile_ring_parts

    cfg = MetadataConfig(countries="ne.shp", snow_min_fraction=0.001, cloud_min_fraction=0.001)
    m = {"mask_fractions": [{"source": "s2", "step": 0, "cloud": 0.0006, "shadow": 0.0005, "snow": 0.001, "nodata": 0.0},
                            {"source": "s1", "step": 0, "cloud": 0.5, "shadow": 0.0, "snow": 0.5, "nodata": 0.0}]}
    assert flags(m, "s2", cfg, "u") == (False, True)
    assert flags(m, "s2", MetadataConfig(countries="ne.shp"), "u") == (True, True)
    names = {0: "unlabelled", 1: "Arable land", 2: "Pastures"}
    assert label_list({"label_names": ["Pastures", "Marine waters"], "label_hist": {1: 4}}, names, 0) == ["Marine waters", "Pastures"]
    assert label_list({"label_hist": {0: 3, 2: 4, 1: 1}}, names, 0) == ["Arable land", "Pastures"]
    s = 109800.0
    tile = box(0, 0, s, s)
    parts = tile_ring_parts(tile, s)
    round_inner = tile.buffer(-s * (2 - math.sqrt(2)) / 4)
    round_test = round_inner.buffer(-s * (math.sqrt(2) - 1) / 4)
    assert parts["inner"].symmetric_difference(round_inner).area == 0 and parts["test"].symmetric_difference(round_test).area == 0


@needs_shared
def test_unreadable_metadata_inputs_stop_the_run_before_the_build(tmp_path):
    """A countries file without the country field, or an s2v1 CSV without its columns: 'eochips run'
    exits 2 with one line naming the field, before any unit is built."""
    data = _ben_recipe(tmp_path)
    data["dataset"]["metadata"]["country_field"] = "NAME_EN"
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "dataset.metadata.country_field" in proc.stderr and "has no field 'NAME_EN'" in proc.stderr
    assert not (out / "state").exists() and not list(out.glob("patches/*"))
    data = _ben_recipe(tmp_path)
    (tmp_path / "s2v1.csv").write_text("patch,name\nT29UPU_02_00,x\n")
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(tmp_path / "out2"), "--no-progress")
    assert proc.returncode == 2 and "dataset.metadata.s2v1" in proc.stderr and "patch_id,s2v1_name" in proc.stderr, proc.stderr[-2000:]
