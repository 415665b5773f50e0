"""Recipe version 2 loading (eochips.config.loading): path fields found by their type and made
absolute, ``--set`` keys (``set_dotted``), ``${VAR}`` expansion, the one-line error messages,
and the round trip of every built-in recipe.

Nothing here reads imagery: recipes are validated in process with ``parse_recipe`` /
``load_recipe``; the expected keys, kinds and messages are typed out again below.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from conftest import crop_recipe, write_recipe
from eochips.config import builtin_recipes, canonical, load_recipe, parse_recipe, set_dotted
from eochips.config.loading import path_fields
from eochips.config.models import Recipe
from eochips.errors import RecipeError

CATALOG = "catalog/items.json"  # relative on purpose: parse_recipe never opens it
CDL = Path("/data/cdl_exeter.tif")


def base(**overrides) -> dict:
    """The built-in crop recipe on the Exeter setup (v2 mapping); no file is opened."""
    return crop_recipe(CATALOG, CDL, **overrides)


def message(data: dict) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data, base_dir=Path("/recipes"))
    return str(info.value)


# --------------------------------------------------------------------------------------
# path fields


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A recipe folder and a different working directory (the one pytest runs in is neither)."""
    rec, cwd = tmp_path / "recipes", tmp_path / "elsewhere"
    rec.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return rec.resolve(), cwd.resolve()


def _with_every_path_field() -> dict:
    data = base()
    data["aoi"] = {"path": "aoi/area.geojson"}
    data["grid"] = {"kind": "label-raster", "path": "labels/cdl.tif"}
    data["labels"]["raster"] = "labels/cdl_2021.tif"
    hls = data["sources"]["hls"]
    hls["search"]["catalog"] = "stac/items.json"
    data["sources"]["s3copy"] = dict(hls, search=dict(hls["search"], catalog="s3://bucket/stac/items.json"))
    data["sources"]["api"] = dict(hls, search=dict(hls["search"], catalog="https://example.org/stac/v1"))
    data["sources"]["parquet"] = dict(hls, search=dict(hls["search"], catalog="../shared/items.parquet"))
    data["filters"][1]["sources"] = ["hls"]
    data["filters"][2]["source"] = "hls"
    return data


def test_path_fields_are_found_by_type():
    data = _with_every_path_field()
    got = {k: m.url_ok for k, m in path_fields(Recipe, data)}
    assert got == {
        "aoi.path": False, "grid.path": False, "labels.raster": False,
        "sources.hls.search.catalog": True, "sources.s3copy.search.catalog": True,
        "sources.api.search.catalog": True, "sources.parquet.search.catalog": True,
    }
    vector = dict(data, labels={"vector": "polygons.gpkg", "class_field": "c", "classes": {"a": 1}})
    keys = {k for k, _ in path_fields(Recipe, vector)}
    assert "labels.vector" in keys and "labels.raster" not in keys
    # a crs grid has no path field; names, reclass tables and band names are never paths
    crs = dict(data, grid={"kind": "crs", "crs": "EPSG:32630", "resolution": 30})
    assert "grid.path" not in {k for k, _ in path_fields(Recipe, crs)}


def test_relative_paths_resolve_against_the_recipe_folder(folders):
    rec, cwd = folders
    recipe = load_recipe(write_recipe(rec / "crop.yaml", _with_every_path_field()))
    assert recipe.aoi.path == str(rec / "aoi" / "area.geojson")
    assert recipe.grid.path == str(rec / "labels" / "cdl.tif")
    assert recipe.labels.raster == str(rec / "labels" / "cdl_2021.tif")
    assert recipe.sources["hls"].search.catalog == str(rec / "stac" / "items.json")
    assert recipe.sources["parquet"].search.catalog == str(rec.parent / "shared" / "items.parquet")  # '..' resolved
    # URLs are left alone
    assert recipe.sources["s3copy"].search.catalog == "s3://bucket/stac/items.json"
    assert recipe.sources["api"].search.catalog == "https://example.org/stac/v1"
    # not a path field: unchanged
    assert recipe.labels.reclass == "cdl-13" and recipe.name == "hls-crop-classification"
    assert not any(str(cwd) in v for v in (recipe.aoi.path, recipe.grid.path, recipe.labels.raster))


def test_vector_labels_resolve_against_the_recipe_folder(folders):
    rec, _ = folders
    data = base(labels={"vector": "labels/fields.gpkg", "class_field": "crop", "classes": {"corn": 3}})
    data["grid"] = {"kind": "crs", "crs": "EPSG:32630", "resolution": 30}
    data["filters"] = data["filters"][1:]
    data["sampling"] = {"kind": "all"}
    recipe = load_recipe(write_recipe(rec / "vector.yaml", data))
    assert recipe.labels.vector == str(rec / "labels" / "fields.gpkg")
    assert recipe.labels.raster is None


def test_absolute_paths_are_kept(folders):
    rec, _ = folders
    data = _with_every_path_field()
    data["grid"]["path"] = "/abs/cdl.tif"
    recipe = load_recipe(write_recipe(rec / "crop.yaml", data))
    assert recipe.grid.path == "/abs/cdl.tif"


def test_set_values_resolve_against_the_working_directory(folders):
    rec, cwd = folders
    path = write_recipe(rec / "crop.yaml", _with_every_path_field())
    recipe = load_recipe(path, {"grid.path": "mine/cdl.tif", "sources.hls.search.catalog": "mine/items.json",
                                "aoi": {"path": "mine/aoi.gpkg"}})
    assert recipe.grid.path == str(cwd / "mine" / "cdl.tif")
    assert recipe.sources["hls"].search.catalog == str(cwd / "mine" / "items.json")
    assert recipe.aoi.path == str(cwd / "mine" / "aoi.gpkg")  # a whole section given with --set
    # the fields not overridden still resolve against the recipe's folder
    assert recipe.labels.raster == str(rec / "labels" / "cdl_2021.tif")
    assert recipe.sources["parquet"].search.catalog == str(rec.parent / "shared" / "items.parquet")
    # a URL given with --set is left alone too
    recipe = load_recipe(path, {"sources.hls.search.catalog": "s3://b/items.json"})
    assert recipe.sources["hls"].search.catalog == "s3://b/items.json"


def test_builtin_recipe_paths_resolve_against_the_working_directory(folders, monkeypatch):
    _, cwd = folders
    monkeypatch.delenv("CDL_RASTER", raising=False)
    monkeypatch.delenv("EOCHIPS_SAMPLE_DIR", raising=False)
    crop = load_recipe("hls-crop-classification")
    assert crop.grid.path == str(cwd / "2022_30m_cdls.tif")
    assert crop.sources["hls"].search.catalog == "https://cmr.earthdata.nasa.gov/stac/LPCLOUD"
    demo = load_recipe("demo")
    assert demo.sources["landsat"].search.catalog == str(cwd / "sample-data" / "catalog.json")
    assert demo.labels.vector == str(cwd / "sample-data" / "labels" / "land_cover.gpkg")
    # and through ${VAR}: the expanded value is resolved the same way
    monkeypatch.setenv("EOCHIPS_SAMPLE_DIR", "build/sample")
    demo = load_recipe("demo")
    assert demo.sources["landsat"].search.catalog == str(cwd / "build" / "sample" / "catalog.json")


# --------------------------------------------------------------------------------------
# set_dotted


def test_set_dotted_indexes_lists():
    data = base(masks={"sources": [{"kind": "fmask"}, {"kind": "scl"}]})
    got = set_dotted(data, "masks.sources.0.kind", "bqa")
    assert [m["kind"] for m in got["masks"]["sources"]] == ["bqa", "scl"]
    assert [m["kind"] for m in data["masks"]["sources"]] == ["fmask", "scl"]  # a copy: the input is unchanged
    got = set_dotted(data, "filters.-1.max_pixels", 7)
    assert got["filters"][-1] == {"kind": "fmask-bad-pct", "source": "hls", "bits": ["cirrus", "cloud", "shadow", "snow_ice"],
                                  "max_pct": 5, "max_pixels": 7}
    assert got["filters"][:2] == data["filters"][:2]
    assert set_dotted(data, "filters.1.max_pixels", 3)["filters"][1] == {"kind": "nodata", "max_pixels": 3}
    assert set_dotted({}, "a.b.c", 1) == {"a": {"b": {"c": 1}}}  # intermediate mappings are created
    assert set_dotted({"a": None}, "a.b", 2) == {"a": {"b": 2}}


@pytest.mark.parametrize("key, expected", [
    ("filters.3.kind", "--set 'filters.3.kind': index 3 is outside the list of 3 item(s)"),
    ("filters.-4.max_pixels", "--set 'filters.-4.max_pixels': index -4 is outside the list of 3 item(s)"),
    ("filters.last.kind", "--set 'filters.last.kind': 'last' indexes a list; use a number (0 is the first item)"),
    ("sources.hls.bands.blue", "--set 'sources.hls.bands.blue': 'blue' indexes a list; use a number (0 is the first item)"),
    ("name.first", "--set 'name.first': cannot set 'first' inside a str"),
])
def test_set_dotted_errors_name_the_key(key, expected):
    with pytest.raises(RecipeError) as info:
        set_dotted(base(), key, 1)
    assert str(info.value) == expected


def test_set_overrides_reach_the_recipe(tmp_path):
    path = write_recipe(tmp_path / "crop.yaml", base())
    r = load_recipe(path, {"units.size": 64, "filters.-1.max_pct": 50, "filters.0.classes": [0, 13]})
    assert r.units.size == 64 and r.filters[2].max_pct == 50 and r.filters[0].classes == [0, 13]
    with pytest.raises(RecipeError, match=r"^--set 'filters\.5\.kind': index 5 is outside the list of 3 item\(s\)$"):
        load_recipe(path, {"filters.5.kind": "nodata"})


# --------------------------------------------------------------------------------------
# ${VAR}


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("EOCHIPS_T_NAME", "exeter-crops")
    monkeypatch.setenv("EOCHIPS_T_COLL", "HLSS30_2.0")
    monkeypatch.delenv("EOCHIPS_T_UNSET", raising=False)
    data = base()
    data["name"] = "${EOCHIPS_T_NAME}"
    data["description"] = "from ${EOCHIPS_T_UNSET:-a default} and [${EOCHIPS_T_UNSET:-}] in ${EOCHIPS_T_NAME}"
    data["sources"]["hls"]["search"]["collections"] = ["${EOCHIPS_T_COLL}", "${EOCHIPS_T_UNSET:-HLSL30_2.0}"]
    data["grid"]["path"] = "/data/${EOCHIPS_T_UNSET:-cdl}/${EOCHIPS_T_NAME}.tif"
    data["sources"]["hls"]["search"]["catalog"] = "/cat/$EOCHIPS_T_NAME/{EOCHIPS_T_NAME}.json"  # not ${...}: kept
    r = load_recipe(write_recipe(tmp_path / "r.yaml", data))
    assert r.name == "exeter-crops"
    assert r.description == "from a default and [] in exeter-crops"
    assert r.sources["hls"].search.collections == ["HLSS30_2.0", "HLSL30_2.0"]
    assert r.grid.path == "/data/cdl/exeter-crops.tif"
    assert r.sources["hls"].search.catalog == "/cat/$EOCHIPS_T_NAME/{EOCHIPS_T_NAME}.json"
    # a --set value is expanded too (overrides come before the expansion)
    r = load_recipe(tmp_path / "r.yaml", {"description": "${EOCHIPS_T_COLL:-x}"})
    assert r.description == "HLSS30_2.0"


def test_env_default_applies_to_an_empty_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("EOCHIPS_T_EMPTY", "")
    data = base()
    data["description"] = "${EOCHIPS_T_EMPTY:-fallback}"
    r = load_recipe(write_recipe(tmp_path / "r.yaml", data))
    assert r.description == "fallback"


# --------------------------------------------------------------------------------------
# error messages

def _two_sources(data: dict) -> dict:
    s2 = dict(data["sources"]["hls"], profile="sentinel-2-l2a-pc", bands=["blue", "red"])
    return dict(data, sources={"hls": data["sources"]["hls"], "s2": s2})


# The valid kinds of each tagged variant, typed again from the models' docstrings.
KINDS = {
    "selection": "all, first-middle-last, greedy-coverage, intersecting, least-cloudy, least-cloudy-per-year, nearest-in-time, seeded-by-date",
    "grid": "crs, label-raster, scene",
    "units": "chip, tile",
    "sampling": "all, class-balance, random-n",
    "masks": "bqa, cloud-probability, fmask, onnx, qa-pixel, s2cloudless, scl",
    "filters": "fmask-bad-pct, label-fraction, mask-fraction, nan, nodata, value",
    "layouts": "mosaic, per-band, seed-000-cmask, seed-001, stack",
}

ERRORS = {
    # unknown key inside a tagged variant: that variant's keys
    "unknown key, chip units": ({"units.sise": 32},
        "recipe field 'units.sise': unknown key; valid keys: extent, id, kind, max_units, min_aoi_fraction, resolution_groups, size, size_m, warn_above"),
    "unknown key, tile units": ({"units": {"kind": "tile", "size": 32, "overlap": 4}},
        "recipe field 'units.overlap': unknown key; valid keys: extent, id, kind, max_units, min_aoi_fraction, resolution_groups, size, size_m, warn_above"),
    "key of another selection kind": ({"sources.hls.selection.n_scenes": 3},
        "recipe field 'sources.hls.selection.n_scenes': unknown key; valid keys: coverage_thresholds, kind, min_scenes, per"),
    "unknown key, least-cloudy": ({"sources.hls.selection": {"kind": "least-cloudy", "min_scenes": 3}},
        "recipe field 'sources.hls.selection.min_scenes': unknown key; valid keys: coverage_thresholds, kind, n_scenes, per"),
    "key of another grid kind": ({"grid": {"kind": "crs", "crs": "EPSG:32630", "resolution": 30, "path": "cdl.tif"}},
        "recipe field 'grid.path': unknown key; valid keys: crs, kind, origin, resolution"),
    "unknown key, sampling": ({"sampling": {"kind": "class-balance", "n": 10, "draw": 5}},
        "recipe field 'sampling.draw': unknown key; valid keys: draws, kind, min_classes, n, seed"),
    "unknown key, first filter": ({"filters.0.max_pixel": 1},
        "recipe field 'filters.0.max_pixel': unknown key; valid keys: classes, kind, max_fraction, max_pixels, strict"),
    "unknown key, second filter": ({"filters.1.source": "hls"},
        "recipe field 'filters.1.source': unknown key; valid keys: kind, max_pixels, sources"),
    "unknown key, mask": ({"masks": {"sources": [{"kind": "fmask", "cloud_bit": ["cloud"]}]}},
        "recipe field 'masks.sources.0.cloud_bit': unknown key; valid keys: cloud_bits, kind, shadow_bits, source"),
    "unknown key, second mask": ({"masks": {"sources": [{"kind": "fmask"}, {"kind": "scl", "cloud_class": [8]}]}},
        "recipe field 'masks.sources.1.cloud_class': unknown key; valid keys: cloud_classes, kind, nodata_classes, "
        "shadow_classes, snow_classes, source"),
    "unknown key, layout": ({"output.layout": [{"kind": "seed-001", "sourc": "hls"}]},
        "recipe field 'output.layout.0.sourc': unknown key; valid keys: kind, source, write_qa"),
    "unknown key, split": ({"dataset.split.seeds": 1},
        "recipe field 'dataset.split.seeds': unknown key; valid keys: kind, seed, test_fraction, train_fraction"),
    "unknown key, search": ({"sources.hls.search.catalogue": "x.json"},
        "recipe field 'sources.hls.search.catalogue': unknown key; valid keys: auth, auth_hosts, catalog, cloud_cover, collections, "
        "date_pattern, datetime, filter, id_pattern, max_items, max_retries, page_size, sortby"),
    "unknown key, band spec": ({"sources.hls.bands": [{"name": "blue", "resampl": "nearest"}]},
        "recipe field 'sources.hls.bands.0.resampl': unknown key; valid keys: asset, dtype, index, name, nodata, offset, "
        "resampling, resolution, scale"),
    "unknown top-level key": ({"filter": []},
        "recipe field 'filter': unknown key; valid keys: aoi, dataset, description, engine, filters, grid, labels, masks, "
        "name, output, reading, sampling, sources, units, version"),
    # unknown kind: the valid kinds
    "unknown selection kind": ({"sources.hls.selection.kind": "best"},
        f"recipe field 'sources.hls.selection.kind': unknown kind 'best'; valid: {KINDS['selection']}"),
    "unknown grid kind": ({"grid.kind": "mgrs"}, f"recipe field 'grid.kind': unknown kind 'mgrs'; valid: {KINDS['grid']}"),
    "unknown units kind": ({"units.kind": "patch"}, f"recipe field 'units.kind': unknown kind 'patch'; valid: {KINDS['units']}"),
    "unknown sampling kind": ({"sampling": {"kind": "stratified", "n": 3}},
        f"recipe field 'sampling.kind': unknown kind 'stratified'; valid: {KINDS['sampling']}"),
    "unknown mask kind": ({"masks": {"sources": [{"kind": "fmaskk"}]}},
        f"recipe field 'masks.sources.0.kind': unknown kind 'fmaskk'; valid: {KINDS['masks']}"),
    "unknown filter kind": ({"filters.2.kind": "clouds"},
        f"recipe field 'filters.2.kind': unknown kind 'clouds'; valid: {KINDS['filters']}"),
    "unknown layout kind": ({"output.layout": [{"kind": "zarr"}]},
        f"recipe field 'output.layout.0.kind': unknown kind 'zarr'; valid: {KINDS['layouts']}"),
    "unknown split kind": ({"dataset.split.kind": "spatial"},
        "recipe field 'dataset.split.kind': unknown kind 'spatial'; valid: random, spatial-blocks, tile-ring"),
    "missing kind": ({"sources.hls.selection": {"min_scenes": 3}}, "recipe field 'sources.hls.selection': needs a 'kind'"),
    # missing required fields
    "missing grid path": ({"grid": {"kind": "label-raster"}}, "recipe field 'grid.path': required but missing"),
    "missing crs resolution": ({"grid": {"kind": "crs", "crs": "EPSG:32630"}}, "recipe field 'grid.resolution': required but missing"),
    "missing sampling n": ({"sampling": {"kind": "random-n"}}, "recipe field 'sampling.n': required but missing"),
    "missing search": ({"sources.hls.search": None}, "recipe field 'sources.hls.search': Input should be a valid dictionary "
                       "or instance of SearchConfig"),
    "missing collections": ({"sources.hls.search": {"catalog": "x.json"}},
        "recipe field 'sources.hls.search.collections': required but missing"),
    "missing value filter band": ({"filters.1": {"kind": "value", "equals": 0}}, "recipe field 'filters.1.band': required but missing"),
    # wrong types
    "size not an integer": ({"units.size": "big"},
        "recipe field 'units.size': Input should be a valid integer, unable to parse string as an integer (got 'big')"),
    "size with a fraction": ({"units.size": 32.5},
        "recipe field 'units.size': Input should be a valid integer, got a number with a fractional part (got 32.5)"),
    "bands not a list": ({"sources.hls.bands": "blue"}, "recipe field 'sources.hls.bands': Input should be a valid list (got 'blue')"),
    "max_pct not a number": ({"filters.2.max_pct": "five"},
        "recipe field 'filters.2.max_pct': Input should be a valid number, unable to parse string as a number (got 'five')"),
    "bad fmask bit": ({"filters.2.bits": ["cloud", "clouds"]},
        "recipe field 'filters.2.bits.1': Input should be 'cirrus', 'cloud', 'adjacent', 'shadow', 'snow_ice' or 'water' "
        "(got 'clouds')"),
    "bad resampling": ({"sources.hls.resampling": "bicubic"},
        "recipe field 'sources.hls.resampling': Input should be 'nearest', 'bilinear', 'cubic', 'cubic_spline', 'lanczos', "
        "'average' or 'mode' (got 'bicubic')"),
    # cross-references
    "filter of an unknown source": ({"filters.2.source": "hlss"}, "recipe field 'filters.2.source': unknown source 'hlss'; sources: hls"),
    "nodata filter of an unknown source": ({"filters.1.sources": ["hls", "s2"]},
        "recipe field 'filters.1.sources': unknown source 's2'; sources: hls"),
    "scene grid of an unknown source": ({"grid": {"kind": "scene", "source": "s2"}},
        "recipe field 'grid.source': unknown source 's2'; sources: hls"),
    "mask of an unknown source": ({"masks": {"sources": [{"kind": "fmask", "source": "landsat"}]}},
        "recipe field 'masks.sources.0.source': unknown source 'landsat'; sources: hls"),
    "layout of an unknown source": ({"output.layout": [{"kind": "seed-001", "source": "hsl"}]},
        "recipe field 'output.layout.0.source': unknown source 'hsl'; sources: hls"),
    "stack of an unknown source": ({"output.layout": [{"kind": "seed-001"}, {"kind": "stack", "sources": ["hls", "x"]}]},
        "recipe field 'output.layout.1.source': unknown source 'x'; sources: hls"),
    "value filter of an unknown band": ({"filters.1": {"kind": "value", "band": "hls.B02", "equals": 0}},
        "recipe field 'filters.1.band': source 'hls' has no band 'B02'; its bands: blue, green, red, nir"),
    "value filter, band without source": ({"filters.1": {"kind": "value", "band": "nir08", "equals": 0}},
        "recipe field 'filters.1.band': source 'hls' has no band 'nir08'; its bands: blue, green, red, nir"),
    "nan filter of an unknown source": ({"filters.1": {"kind": "nan", "bands": ["s1.vv"]}},
        "recipe field 'filters.1.bands': unknown source 's1'; sources: hls"),
    # names
    "source name starting with a digit": ({"sources": lambda d: {"9x": d["sources"]["hls"]}},
        "recipe field 'sources': source name '9x' must start with a letter and hold only letters, digits, _ and -"),
    "duplicate band names": ({"sources.hls.bands": ["blue", "red", "blue", "red", "nir"]},
        "recipe field 'sources.hls.bands': band name(s) ['blue', 'red'] repeated; name each output band once"),
    "duplicate band names, spec and name": ({"sources.hls.bands": ["blue", {"name": "blue", "asset": "B03"}]},
        "recipe field 'sources.hls.bands': band name(s) ['blue'] repeated; name each output band once"),
    "bad band name": ({"sources.hls.bands": [{"name": "1blue"}]},
        "recipe field 'sources.hls.bands.0.name': String should match pattern '^[A-Za-z][A-Za-z0-9_-]*$' (got '1blue')"),
    # CQL2
    "bad cql2 filter": ({"sources.hls.search.filter": "eo:cloud_cover <<= 5"},
        "recipe field 'sources.hls.search.filter': not a valid CQL2 expression (at 1:17: expected GEOMETRY, Identifier, "
        "Negative, UnaryNot, True, False, Null, DECIMAL, Double, SingleQuotedString, ExpressionInParentheses, or Array) "
        "(got 'eo:cloud_cover <<= 5')"),
    # unit-id templates
    "unit id without col": ({"units.id": "chip_{row}"},
        "recipe field 'units.id': template 'chip_{row}' must contain {col}, {row} (names must be unique) (got 'chip_{row}')"),
    "unit id with an unknown field": ({"units.id": "{rows}_{col}"},
        "recipe field 'units.id': template '{rows}_{col}' uses unknown field(s) ['rows']; valid: col, date, grid, n, product, row, tile "
        "(got '{rows}_{col}')"),
    "unit id with a slash": ({"units.id": "{tile}/{row}_{col}"},
        "recipe field 'units.id': template '{tile}/{row}_{col}' must not contain '/' (got '{tile}/{row}_{col}')"),
    "unit id not a format string": ({"units.id": "{row}_{col"},
        "recipe field 'units.id': template '{row}_{col' is not a valid format string: expected '}' before end of string "
        "(got '{row}_{col')"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_message(case):
    overrides, expected = ERRORS[case]
    data = base()
    for k, v in overrides.items():
        data = set_dotted(data, k, v(data) if callable(v) else v)
    got = message(data)
    assert got == expected
    assert "\n" not in got


def test_two_sources_need_a_source_named():
    data = _two_sources(base())
    data["filters"][2].pop("source")
    assert message(data) == "recipe field 'filters.2.source': give the source (one of hls, s2)"
    data = _two_sources(base())
    data["masks"] = {"sources": [{"kind": "fmask", "source": "s3"}]}
    assert message(data) == "recipe field 'masks.sources.0.source': unknown source 's3'; sources: hls, s2"
    data = _two_sources(base(**{"filters.1": {"kind": "value", "band": "s2.nir", "equals": 0}}))
    assert message(data) == "recipe field 'filters.1.band': source 's2' has no band 'nir'; its bands: blue, red"


# The shorthand forms (masks: a plain list of sources; output.layout: one mapping) are accepted
# (test_bad_input's kind errors use them), but errors inside their items lose the path.
SHORTHAND = {
    "mask list, unknown key": ({"masks": [{"kind": "fmask", "cloud_bit": ["cloud"]}]},
        "recipe field 'masks.sources.0.cloud_bit': unknown key; valid keys: cloud_bits, kind, shadow_bits, source"),
    "one layout, unknown key": ({"output.layout": {"kind": "seed-001", "sourc": "hls"}},
        "recipe field 'output.layout.0.sourc': unknown key; valid keys: kind, source, write_qa"),
    "one layout, wrong type": ({"output.layout": {"kind": "seed-001", "write_qa": "maybe"}},
        "recipe field 'output.layout.0.write_qa': Input should be a valid boolean, unable to interpret input (got 'maybe')"),
}


def test_shorthand_forms_validate():
    r = parse_recipe(base(masks=[{"kind": "fmask"}], **{"output.layout": {"kind": "seed-001", "source": "hls"}}))
    assert [m.kind for m in r.masks.sources] == ["fmask"] and [lay.kind for lay in r.output.layout] == ["seed-001"]
    assert message(base(masks=[{"kind": "fmaskk"}])) == f"recipe field 'masks.sources.0.kind': unknown kind 'fmaskk'; valid: {KINDS['masks']}"


@pytest.mark.parametrize("case", list(SHORTHAND))
def test_error_message_in_shorthand_forms(case):
    overrides, expected = SHORTHAND[case]
    assert message(base(**overrides)) == expected


def test_more_problems_are_counted():
    data = base(**{"units.size": "big", "sources.hls.search.page_size": 0})
    got = message(data)
    assert got.endswith(" (+1 more)") and got.startswith("recipe field '")
    assert message(base(**{"units.size": 0})) == "recipe field 'units.size': Input should be greater than 0 (got 0)"


def test_model_kinds_match_the_registries():
    """Each tagged variant's kinds are the names registered with its implementation."""
    from eochips.config import models as m
    from eochips.dataset import FINALIZERS, SPLITS
    from eochips.filters import FILTERS
    from eochips.qa import MASK_KINDS
    from eochips.sampling import SAMPLERS
    from eochips.selection import STRATEGIES
    from eochips.writers.layouts import LAYOUTS

    def kinds(union) -> set[str]:
        inner = typing.get_args(union)[0]  # Annotated[Union[...], Field(discriminator)]
        members = typing.get_args(inner) or (inner,)  # a one-member Union is the member itself
        return {typing.get_args(mm.model_fields["kind"].annotation)[0] for mm in members}

    pairs = {"selection": (m.Selection, STRATEGIES), "sampling": (m.Sampling, SAMPLERS), "masks": (m.MaskSource, MASK_KINDS),
             "filters": (m.Filter, FILTERS), "layouts": (m.Layout, LAYOUTS)}
    for name, (union, registry) in pairs.items():
        assert kinds(union) == set(registry) == set(KINDS[name].split(", ")), name
    assert kinds(m.Split) == set(SPLITS) == {"random", "tile-ring", "spatial-blocks"}
    assert set(m.FINALIZERS) == set(FINALIZERS) == {"index", "split", "stats", "plots", "tables", "mosaic", "stac", "summary",
                                                    "card", "report", "manifest", "bigearthnet", "archive"}
    assert m.DatasetConfig().finalizers == list(m.DEFAULT_FINALIZERS) == ["index", "split", "stats", "plots", "tables", "stac", "mosaic",
                                                                          "summary", "card", "report", "manifest"]


# --------------------------------------------------------------------------------------
# built-in recipes


@pytest.mark.parametrize("name", ["demo", "hls-crop-classification", "hls-gap-filling"])
def test_builtin_recipe_round_trips(name, tmp_path, monkeypatch):
    assert name in builtin_recipes()
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(name)
    assert recipe.version == 2 and recipe.name == name
    again = parse_recipe(canonical(recipe))
    assert again == recipe
    assert canonical(again) == canonical(recipe)
    # and through YAML text (what `eochips upgrade` prints), from another folder
    text = yaml.safe_dump(canonical(recipe), sort_keys=False)
    monkeypatch.chdir(tmp_path.parent)
    assert parse_recipe(yaml.safe_load(text)) == recipe


def test_builtin_recipe_list():
    assert builtin_recipes() == ["bigearthnet", "clay-datacube", "cloud-free-mosaic", "demo", "hls-crop-classification", "hls-gap-filling"]
