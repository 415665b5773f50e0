"""The bad-input catalogue: each case gets one clear line naming the field or file and what
would be valid, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from conftest import LABEL_ORIGIN, UNKNOWN_CODE, crop_recipe, crop_recipe_v1, needs_shared, run_cli
from eochips.config import set_dotted
from servers import RangeServer

pytestmark = needs_shared

BOWTIE = {"type": "Polygon", "coordinates": [[[-3.5, 50.7], [-3.4, 50.8], [-3.4, 50.7], [-3.5, 50.8], [-3.5, 50.7]]]}
ANTIMERIDIAN = {"type": "Polygon", "coordinates": [[[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]]]}
FIRST = "HLS.S30.T30UVB.2021159T112708.v2.0"  # the earliest scene: the plan probes its assets


def _set(**kv):
    return ("set", kv)


# (kind, payload, message) - kinds: set (recipe keys), text (recipe YAML), asset (first scene's B02 replaced),
# label (label raster replaced), args (CLI arguments), output (output location), env (failpoint)
CASES = {
    "malformed yaml": ("text", "name: x\naoi: [1, 2\n", "is not valid YAML at line 3"),
    "top level not a mapping": ("text", "- name\n- aoi\n", "recipe: expected a mapping at the top level, got list"),
    "unsafe yaml tag": ("text", "name: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    "unknown version": (*_set(version=3), "recipe field 'version': 3 is not a recipe version this eochips reads (1 or 2)"),
    "unknown key": (*_set(**{"units.sise": 32}), "recipe field 'units.sise': unknown key; valid keys: extent, id, kind, max_units, min_aoi_fraction"),
    "unknown key in a source": (*_set(**{"sources.hls.band": ["blue"]}), "recipe field 'sources.hls.band': unknown key; valid keys: bands, composite"),
    "wrong type": (*_set(**{"units.size": "big"}), "recipe field 'units.size': Input should be a valid integer"),
    "chip size zero": (*_set(**{"units.size": 0}), "recipe field 'units.size': Input should be greater than 0"),
    "chip size negative": (*_set(**{"units.size": -32}), "recipe field 'units.size': Input should be greater than 0"),
    "both sizes": (*_set(**{"units.size_m": 960}), "recipe field 'units': give exactly one of size (pixels) or size_m (metres)"),
    "chip larger than grid": (*_set(**{"units.size": 500}), "recipe field 'units.size': 500 px is larger than the grid (224 x 192 px)"),
    "size in metres not whole pixels": (*_set(**{"units.size": None, "units.size_m": 1000}), "1000 m is not a whole number of 30 m pixels"),
    "bad unit id template": (*_set(**{"units.id": "chip_{row}"}), "recipe field 'units.id': template 'chip_{row}' must contain {col}, {row}"),
    "unknown unit id field": (*_set(**{"units.id": "{rows}_{col}"}), "uses unknown field(s) ['rows']; valid: col, date, grid, n, product, row, tile"),
    "no sources": (*_set(sources={}), "recipe field 'sources': Dictionary should have at least 1 item"),
    "bands not a list": (*_set(**{"sources.hls.bands": "blue"}), "recipe field 'sources.hls.bands': Input should be a valid list"),
    "repeated band": (*_set(**{"sources.hls.bands": ["blue", "blue"]}), "recipe field 'sources.hls.bands': band name(s) ['blue'] repeated"),
    "unknown band": (*_set(**{"sources.hls.bands": ["blue", "nir77"]}), "band 'nir77' is not in profile 'hls-s30'"),
    "unknown profile": (*_set(**{"sources.hls.profile": "hls-s31"}), "unknown profile 'hls-s31'"),
    "unknown selection kind": (*_set(**{"sources.hls.selection.kind": "best"}), "recipe field 'sources.hls.selection.kind': unknown kind 'best'; valid: all, first-middle-last, greedy-coverage, intersecting, least-cloudy, least-cloudy-per-year, nearest-in-time, seeded-by-date"),
    "first-middle-last of 2": (*_set(**{"sources.hls.selection.min_scenes": 2}), "recipe field 'sources.hls.selection.min_scenes': Input should be greater than or equal to 3"),
    "bad auth value": (*_set(**{"sources.hls.search.auth": "password"}), "recipe field 'sources.hls.search.auth': Input should be 'none', 'earthdata' or 'planetary-computer'"),
    "reversed dates": (*_set(**{"sources.hls.search.datetime": "2021-07-31/2021-06-01"}), "start '2021-07-31' is after end '2021-06-01'"),
    "not a date": (*_set(**{"sources.hls.search.datetime": "2021-13-45/2021-14-01"}), "'2021-13-45' is not an ISO 8601 date"),
    "cloud min above max": (*_set(**{"sources.hls.search.cloud_cover": {"min": 50, "max": 10}}), "min (50.0) must not exceed max (10.0)"),
    "bad cql2 filter": (*_set(**{"sources.hls.search.filter": "eo:cloud_cover <<= 5"}), "recipe field 'sources.hls.search.filter': not a valid CQL2 expression (at 1:17"),
    "bad sortby": (*_set(**{"sources.hls.search.sortby": ["date desc"]}), "sort field 'date desc' is not [+|-]name"),
    "bad id regex": (*_set(**{"sources.hls.search.id_pattern": "T30(UVB"}), "recipe field 'sources.hls.search.id_pattern': not a valid regular expression"),
    "aoi not geojson": (*_set(aoi={"geometry": {"type": "Polygon", "coordinates": "nope"}}), "aoi.geometry is not valid GeoJSON"),
    "aoi wrong geojson type": (*_set(aoi={"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}), "type 'LineString' is not Polygon"),
    "aoi empty": (*_set(aoi={"geometry": {"type": "Polygon", "coordinates": []}}), "aoi is empty"),
    "aoi self-intersecting": (*_set(aoi={"geometry": BOWTIE}), "aoi geometry is not valid (Self-intersection"),
    "aoi across antimeridian": (*_set(aoi={"geometry": ANTIMERIDIAN}), "crosses the antimeridian"),
    "bbox across antimeridian": (*_set(aoi={"bbox": [179.5, -17, -179.5, -16]}), "a bbox crossing the antimeridian must be split"),
    "aoi projected without crs": (*_set(aoi={"bbox": [460860, 5616420, 467580, 5622180]}), "outside lon/lat range; if they are projected, set aoi.crs"),
    "aoi two sources": (*_set(aoi={"bbox": [0, 0, 1, 1], "path": "x.geojson"}), "give exactly one of bbox, geometry, path"),
    "aoi file missing": (*_set(aoi={"path": "/nonexistent/aoi.geojson"}), "aoi.path '/nonexistent/aoi.geojson' does not exist"),
    "unknown grid kind": (*_set(**{"grid.kind": "mgrs"}), "recipe field 'grid.kind': unknown kind 'mgrs'; valid: crs, label-raster, scene"),
    "crs grid without resolution": (*_set(grid={"kind": "crs", "crs": "EPSG:32630"}), "recipe field 'grid.resolution': required but missing"),
    "grid crs unknown": (*_set(grid={"kind": "crs", "crs": "EPSG:99999", "resolution": 30}, labels=None, filters=[]), "'EPSG:99999' is not a CRS"),
    "labels without a source": (*_set(grid={"kind": "crs", "crs": "EPSG:32630", "resolution": 30}), "labels: give labels.raster or labels.vector (the grid is not a label raster)"),
    "scene grid of an unknown source": (*_set(grid={"kind": "scene", "source": "s2"}), "recipe field 'grid.source': unknown source 's2'; sources: hls"),
    "label raster missing": (*_set(**{"grid.path": "/nonexistent/cdl.tif"}), "label raster '/nonexistent/cdl.tif' cannot be opened"),
    "reclass table unknown": (*_set(**{"labels.reclass": "cdl-99"}), "labels.reclass: unknown table 'cdl-99'; built-in: cdl-13"),
    "vector labels incomplete": (*_set(labels={"vector": "x.gpkg"}), "vector labels need class_field and classes"),
    "strict unknown label code": (*_set(**{"labels.strict": True}), f"labels: code(s) [{UNKNOWN_CODE}] are not in the reclass table 'cdl-13'"),
    "unknown filter kind": (*_set(**{"filters.1.kind": "clouds"}), "recipe field 'filters.1.kind': unknown kind 'clouds'; valid: fmask-bad-pct, label-fraction, mask-fraction, nan, nodata, value"),
    "filter of an unknown source": (*_set(**{"filters.2.source": "hlss"}), "recipe field 'filters.2.source': unknown source 'hlss'; sources: hls"),
    "filter of an unknown band": (*_set(**{"filters.1": {"kind": "value", "band": "hls.B02", "equals": 0}}), "recipe field 'filters.1.band': source 'hls' has no band 'B02'; its bands: blue, green, red, nir"),
    "label filter both limits": (*_set(**{"filters.0.max_fraction": 0.5}), "recipe field 'filters.0': give exactly one of max_pixels or max_fraction"),
    "mask-fraction without masks": (*_set(**{"filters.2": {"kind": "mask-fraction", "max": 0.2}}), "recipe field 'filters.2': a mask-fraction filter needs masks.sources"),
    "unknown mask kind": (*_set(masks=[{"kind": "fmaskk"}]), "recipe field 'masks.sources.0.kind': unknown kind 'fmaskk'; valid: bqa, cloud-probability, fmask, onnx, qa-pixel, s2cloudless, scl"),
    "mask kind the profile has not": (*_set(masks=[{"kind": "scl", "source": "hls"}]), "recipe field 'masks.sources.0.kind': 'scl' needs a source whose QA is 'scl'; source 'hls' (profile 'hls-s30') has QA 'fmask'"),
    "unknown sampling kind": (*_set(sampling={"kind": "top"}), "recipe field 'sampling.kind': unknown kind 'top'; valid: all, class-balance, random-n"),
    "sampling without n": (*_set(sampling={"kind": "random-n"}), "recipe field 'sampling.n': required but missing"),
    "unknown layout kind": (*_set(**{"output.layout": {"kind": "zarr"}}), "recipe field 'output.layout.0.kind': unknown kind 'zarr'; valid: mosaic, per-band, seed-000-cmask, seed-001, stack"),
    "narrowing cast": (*_set(**{"output.layout": {"kind": "stack", "dtype": "uint8"}}), "dtype uint8 cannot hold band(s) ['blue', 'green', 'red', 'nir'] (int16) without clipping or rounding"),
    "nodata outside dtype": (*_set(**{"sources.hls.bands": [{"name": "blue", "nodata": -32769}]}), "sources.hls.bands.0 (blue): nodata -32769 does not fit dtype int16 (-32768..32767)"),
    "dtype that would clip": (*_set(**{"sources.hls.bands": [{"name": "blue", "dtype": "uint8", "nodata": 255}]}), "band 'blue' (asset 'B02'): the asset is int16 but the band is kept as uint8: values would be clipped"),
    "unknown finalizer": (*_set(**{"dataset.finalizers": ["index", "bogus"]}), "recipe field 'dataset.finalizers': unknown finalizer(s) ['bogus']; valid: index, split"),
    "no chip inside aoi": (*_set(aoi={"bbox": [LABEL_ORIGIN[0] + 10, LABEL_ORIGIN[1] - 500, LABEL_ORIGIN[0] + 500, LABEL_ORIGIN[1] - 10], "crs": "EPSG:32630"}), "no 32 px unit of the grid lies inside the AOI"),
    "search finds nothing": (*_set(**{"sources.hls.search.datetime": "2019-01-01/2019-02-01"}), "search found no scenes in"),
    "unknown collection": (*_set(**{"sources.hls.search.collections": ["HLSS30_9.9"]}), "search.collections: ['HLSS30_9.9'] not in"),
    "static catalog missing": (*_set(**{"sources.hls.search.catalog": "/nonexistent/items.json"}), "static catalog '/nonexistent/items.json' does not exist"),
    "catalog not a stac api": ("api", None, "is not a reachable STAC API"),
    "asset 404": ("asset", "missing", "HTTP response code: 404"),
    "corrupt tiff": ("asset", "corrupt", "not a valid GeoTIFF"),
    "truncated tiff": ("asset", "truncated", "not a valid GeoTIFF"),
    "raster without crs": ("asset", "no-crs", "has no CRS; give the raster a CRS"),
    "all-nodata scene": ("asset", "all-nodata", "holds only nodata (-9999)"),
    "multi-band asset without an index": ("asset", "multi-band", "the asset has 2 bands; say which one with bands[].index"),
    "label raster without crs": ("label", "no-crs", "has no CRS; give it one"),
    "label raster elsewhere": ("label", "elsewhere", "does not overlap the AOI"),
    "output is a file": ("output", "file", "exists and is not a folder"),
    "output not writable": ("output", "/proc/eochips-out", "is not writable"),
    "disk full": ("env", {"EOCHIPS_FAILPOINT": "writer:write"}, "no space left on device while writing plan/units.parquet"),
    "set without value": ("args", ["--set", "units.size"], "--set 'units.size': expected KEY=VALUE"),
    "set past a list's end": ("args", ["--set", "filters.7.kind=nodata"], "--set 'filters.7.kind': index 7 is outside the list of 3 item(s)"),
    "unknown recipe name": ("recipe", "no-such-recipe", "unknown recipe 'no-such-recipe'"),
    "recipe file missing": ("recipe", "/nonexistent/recipe.yaml", "recipe file '/nonexistent/recipe.yaml' does not exist"),
}

# Version-1 recipes (eochips 0.1's keys) go through the upgrader; their messages still name the
# version-1 field as the user wrote it.
CASES_V1 = {
    "unknown key": ({"grid.chipsize": 32}, "recipe field 'grid.chipsize': unknown key; valid keys: chip_size"),
    "wrong type": ({"grid.chip_size": "big"}, "recipe field 'grid.chip_size': Input should be a valid integer"),
    "chip size zero": ({"grid.chip_size": 0}, "recipe field 'grid.chip_size': Input should be greater than 0"),
    "chip larger than grid": ({"grid.chip_size": 500}, "500 px is larger than the grid (224 x 192 px)"),
    "missing field": ({"bands": None}, "recipe field 'bands': Input should be a valid list"),
    "empty band list": ({"bands": []}, "recipe field 'bands': List should have at least 1 item"),
    "unknown band": ({"bands": ["blue", "nir77"]}, "band 'nir77' is not in profile 'hls-s30'"),
    "unknown profile": ({"profile": "hls-s31"}, "unknown profile 'hls-s31'"),
    "unknown strategy": ({"selection.strategy": "best"}, "recipe field 'selection.strategy': unknown strategy 'best'; valid: all, first-middle-last, least-cloudy"),
    "bad auth value": ({"search.auth": "password"}, "recipe field 'search.auth': Input should be 'none', 'earthdata' or 'planetary-computer'"),
    "reversed dates": ({"search.datetime": "2021-07-31/2021-06-01"}, "recipe field 'search.datetime': start '2021-07-31' is after end '2021-06-01'"),
    "cloud min above max": ({"search.cloud_cover": {"min": 50, "max": 10}}, "recipe field 'search.cloud_cover': min (50.0) must not exceed max (10.0)"),
    "bad id regex": ({"search.id_pattern": "T30(UVB"}, "recipe field 'search.id_pattern': not a valid regular expression"),
    "grid without source": ({"grid": {"chip_size": 32}}, "recipe field 'grid': give label_raster, or both crs and resolution"),
    "unknown qa key": ({"qa.max_bad": 5}, "recipe field 'qa.max_bad': unknown key; valid keys: bad_fmask_bits, dilation"),
    "vector labels incomplete": ({"labels": {"vector": "x.gpkg"}}, "recipe field 'labels': vector labels need class_field and classes"),
    "cloud masks more than scenes": ({"cloud_masks": {"n_scenes": 7, "min_scenes": 6}}, "recipe field 'cloud_masks': n_scenes (7) cannot exceed min_scenes (6)"),
    "strict unknown label code": ({"labels.strict": True}, f"labels: code(s) [{UNKNOWN_CODE}] are not in the reclass table 'cdl-13'"),
}


@pytest.fixture(scope="module")
def catalog(hls_dir, tmp_path_factory):
    """A static ItemCollection of the real Exeter granules (local paths) and its folder."""
    d, items = hls_dir
    root = tmp_path_factory.mktemp("badcat")
    shutil.copytree(d, root / "assets")
    feats = json.loads(json.dumps(items))
    for it in feats:
        for a in it["assets"].values():
            a["href"] = str(root / "assets" / a["href"])
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return root, feats


def _break_asset(how: str, src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    if how == "corrupt":
        dst.write_bytes(b"this is not a GeoTIFF at all " * 100)
    elif how == "truncated":
        dst.write_bytes(data[: len(data) // 3])
    elif how in ("no-crs", "all-nodata", "multi-band"):
        with rasterio.open(src) as ds:
            arr, prof = ds.read(), ds.profile
        prof.update(driver="GTiff")
        if how == "no-crs":
            prof.pop("crs")
        elif how == "multi-band":
            arr, prof["count"] = np.concatenate([arr, arr]), 2
        else:
            arr[:] = -9999
        with rasterio.open(dst, "w", **prof) as out:
            out.write(arr)
    return dst


def _label(how: str, cdl: Path, dst: Path) -> Path:
    with rasterio.open(cdl) as ds:
        arr, prof = ds.read(), ds.profile
    if how == "no-crs":
        prof.pop("crs")
    else:  # the same raster 1000 km east
        t = prof["transform"]
        prof["transform"] = rasterio.Affine(t.a, 0, t.c + 1_000_000, 0, t.e, t.f)
    with rasterio.open(dst, "w", **prof) as out:
        out.write(arr)
    return dst


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, catalog, cdl_raster, tmp_path, cog_server):
    kind, payload, message = CASES[case]
    root, feats = catalog
    data = crop_recipe(str(root / "items.json"), cdl_raster)
    out = tmp_path / "out"
    args, env, recipe_arg = [], {}, None
    if kind == "set":
        for k, v in payload.items():
            data = set_dotted(data, k, v)
    elif kind == "api":
        data["sources"]["hls"]["search"]["catalog"] = cog_server.url + "/not-a-stac-api"
    elif kind == "asset":
        feats = json.loads(json.dumps(feats))
        first = next(f for f in feats if f["id"] == FIRST)
        src = Path(first["assets"]["B02"]["href"])
        bad = tmp_path / f"{FIRST}.B02.tif"
        first["assets"]["B02"]["href"] = str(bad if payload == "missing" else _break_asset(payload, src, bad))
        if payload == "missing":
            with RangeServer(tmp_path) as srv:  # served over HTTP: a real 404
                first["assets"]["B02"]["href"] = f"{srv.url}/{bad.name}"
                cat = tmp_path / "items.json"
                cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
                data["sources"]["hls"]["search"]["catalog"] = str(cat)
                data["reading"] = {"max_retries": 1}
                return _check(case, data, out, tmp_path, message, args, env, None)
        cat = tmp_path / "items.json"
        cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        data["sources"]["hls"]["search"]["catalog"] = str(cat)
        data["reading"] = {"max_retries": 1}
    elif kind == "label":
        data["grid"]["path"] = str(_label(payload, cdl_raster, tmp_path / "label.tif"))
    elif kind == "output":
        if payload == "file":
            out = tmp_path / "taken"
            out.write_text("x")
        else:
            out = Path(payload)
    elif kind == "env":
        env = payload
    elif kind == "args":
        args = payload
    elif kind == "recipe":
        recipe_arg = payload
    text = payload if kind == "text" else yaml.safe_dump(data)
    return _check(case, text, out, tmp_path, message, args, env, recipe_arg)


def _check(case, data_or_text, out, tmp_path, message, args, env, recipe_arg):
    text = data_or_text if isinstance(data_or_text, str) else yaml.safe_dump(data_or_text)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    before = out.read_bytes() if out.is_file() else None
    proc = run_cli("run", recipe_arg or str(recipe), "-o", str(out), "--no-progress", *args, env=env, timeout=300)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-1500:])
    assert message in err, (case, err)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("note: ")]  # a version-1 recipe's one note
    assert lines[0].startswith("error: ") and len(proc.stderr.splitlines()) - len(lines) <= 1, proc.stderr
    if before is not None:
        assert out.read_bytes() == before
    elif str(out).startswith(str(tmp_path)):
        assert not out.exists(), f"{case}: {sorted(p.name for p in out.rglob('*'))}"


@pytest.mark.parametrize("case", list(CASES_V1))
def test_bad_input_version_1(case, catalog, cdl_raster, tmp_path):
    """The same kind of mistakes in a version-1 recipe: one line naming the version-1 field."""
    overrides, message = CASES_V1[case]
    root, _ = catalog
    data = crop_recipe_v1(str(root / "items.json"), cdl_raster)
    for k, v in overrides.items():
        data = set_dotted(data, k, v)
    _check(case, data, tmp_path / "out", tmp_path, message, [], {}, None)


def test_version_1_recipe_runs_with_one_note(catalog, cdl_raster, tmp_path):
    """A valid version-1 recipe builds through the upgrader and says so once, on one line."""
    root, _ = catalog
    recipe = tmp_path / "v1.yaml"
    recipe.write_text(yaml.safe_dump(crop_recipe_v1(str(root / "items.json"), cdl_raster)))
    proc = run_cli("plan", str(recipe), "-o", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "is version 1: read through the v1 -> v2 upgrader" in notes[0]
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr


def test_dry_run_prints_and_writes_nothing(catalog, cdl_raster, tmp_path):
    root, _ = catalog
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(crop_recipe(str(root / "items.json"), cdl_raster)))
    out = tmp_path / "out"
    proc = run_cli("plan", str(recipe), "-o", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "units in AOI" in proc.stdout and "42" in proc.stdout and "estimated bytes to read" in proc.stdout
    assert proc.stdout.count("HLS.S30.T30UVB") == 4
    assert not out.exists()


def test_schema_and_recipes_commands():
    proc = run_cli("schema")
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Recipe" and {"grid", "sources", "units", "filters"} <= set(schema["properties"])
    proc = run_cli("recipes")
    assert "hls-crop-classification" in proc.stdout and "demo" in proc.stdout
    proc = run_cli("recipes", "show", "hls-crop-classification")
    assert yaml.safe_load(proc.stdout)["sources"]["hls"]["search"]["collections"] == ["HLSS30_2.0"]
