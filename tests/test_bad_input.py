"""The bad-input catalogue: each case gets one clear line naming the field or file and what
would be valid, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import rasterio
import yaml

from conftest import LABEL_ORIGIN, UNKNOWN_CODE, crop_recipe, needs_shared, run_cli
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
    "unknown key": (*_set(**{"grid.chipsize": 32}), "recipe field 'grid.chipsize': unknown key; valid keys: chip_size"),
    "wrong type": (*_set(**{"grid.chip_size": "big"}), "recipe field 'grid.chip_size': Input should be a valid integer"),
    "chip size zero": (*_set(**{"grid.chip_size": 0}), "recipe field 'grid.chip_size': Input should be greater than 0"),
    "chip size negative": (*_set(**{"grid.chip_size": -32}), "recipe field 'grid.chip_size': Input should be greater than 0"),
    "chip larger than grid": (*_set(**{"grid.chip_size": 500}), "500 px is larger than the grid (224 x 192 px)"),
    "missing field": (*_set(bands=None), "recipe field 'bands': Input should be a valid list"),
    "empty band list": (*_set(bands=[]), "recipe field 'bands': List should have at least 1 item"),
    "unknown band": (*_set(bands=["blue", "nir77"]), "band 'nir77' is not in profile 'hls-s30'"),
    "unknown profile": (*_set(profile="hls-s31"), "unknown profile 'hls-s31'"),
    "unknown strategy": (*_set(**{"selection.strategy": "best"}), "unknown strategy 'best'; valid: all, first-middle-last, least-cloudy"),
    "bad auth value": (*_set(**{"search.auth": "password"}), "recipe field 'search.auth': Input should be 'none', 'earthdata' or 'planetary-computer'"),
    "reversed dates": (*_set(**{"search.datetime": "2021-07-31/2021-06-01"}), "start '2021-07-31' is after end '2021-06-01'"),
    "not a date": (*_set(**{"search.datetime": "2021-13-45/2021-14-01"}), "'2021-13-45' is not an ISO 8601 date"),
    "cloud min above max": (*_set(**{"search.cloud_cover": {"min": 50, "max": 10}}), "min (50.0) must not exceed max (10.0)"),
    "bad id regex": (*_set(**{"search.id_pattern": "T30(UVB"}), "recipe field 'search.id_pattern': not a valid regular expression"),
    "aoi not geojson": (*_set(aoi={"geometry": {"type": "Polygon", "coordinates": "nope"}}), "aoi.geometry is not valid GeoJSON"),
    "aoi wrong geojson type": (*_set(aoi={"geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}), "type 'LineString' is not Polygon"),
    "aoi empty": (*_set(aoi={"geometry": {"type": "Polygon", "coordinates": []}}), "aoi is empty"),
    "aoi self-intersecting": (*_set(aoi={"geometry": BOWTIE}), "aoi geometry is not valid (Self-intersection"),
    "aoi across antimeridian": (*_set(aoi={"geometry": ANTIMERIDIAN}), "crosses the antimeridian"),
    "bbox across antimeridian": (*_set(aoi={"bbox": [179.5, -17, -179.5, -16]}), "a bbox crossing the antimeridian must be split"),
    "aoi projected without crs": (*_set(aoi={"bbox": [460860, 5616420, 467580, 5622180]}), "outside lon/lat range; if they are projected, set aoi.crs"),
    "aoi two sources": (*_set(aoi={"bbox": [0, 0, 1, 1], "path": "x.geojson"}), "give exactly one of bbox, geometry, path"),
    "aoi file missing": (*_set(aoi={"path": "/nonexistent/aoi.geojson"}), "aoi.path '/nonexistent/aoi.geojson' does not exist"),
    "grid without source": (*_set(grid={"chip_size": 32}), "give label_raster, or both crs and resolution"),
    "grid crs unknown": (*_set(grid={"crs": "EPSG:99999", "resolution": 30, "chip_size": 32}), "'EPSG:99999' is not a CRS"),
    "label raster missing": (*_set(**{"grid.label_raster": "/nonexistent/cdl.tif"}), "label raster '/nonexistent/cdl.tif' cannot be opened"),
    "reclass table unknown": (*_set(**{"labels.reclass": "cdl-99"}), "labels.reclass: unknown table 'cdl-99'; built-in: cdl-13"),
    "vector labels incomplete": (*_set(labels={"vector": "x.gpkg"}), "vector labels need class_field and classes"),
    "strict unknown label code": (*_set(**{"labels.strict": True}), f"labels: code(s) [{UNKNOWN_CODE}] are not in the reclass table 'cdl-13'"),
    "no chip inside aoi": (*_set(aoi={"bbox": [LABEL_ORIGIN[0] + 10, LABEL_ORIGIN[1] - 500, LABEL_ORIGIN[0] + 500, LABEL_ORIGIN[1] - 10], "crs": "EPSG:32630"}), "no 32 px chip of the target grid lies inside the AOI"),
    "search finds nothing": (*_set(**{"search.datetime": "2019-01-01/2019-02-01"}), "search found no scenes in"),
    "unknown collection": (*_set(**{"search.collections": ["HLSS30_9.9"]}), "search.collections: ['HLSS30_9.9'] not in"),
    "static catalog missing": (*_set(**{"search.catalog": "/nonexistent/items.json"}), "static catalog '/nonexistent/items.json' does not exist"),
    "catalog not a stac api": ("api", None, "is not a reachable STAC API"),
    "asset 404": ("asset", "missing", "HTTP response code: 404"),
    "corrupt tiff": ("asset", "corrupt", "not a valid GeoTIFF"),
    "truncated tiff": ("asset", "truncated", "not a valid GeoTIFF"),
    "raster without crs": ("asset", "no-crs", "has no CRS; give the raster a CRS"),
    "all-nodata scene": ("asset", "all-nodata", "holds only nodata (-9999)"),
    "label raster without crs": ("label", "no-crs", "has no CRS; give it one"),
    "label raster elsewhere": ("label", "elsewhere", "does not overlap the AOI"),
    "output is a file": ("output", "file", "exists and is not a folder"),
    "output not writable": ("output", "/proc/eochips-out", "is not writable"),
    "disk full": ("env", {"EOCHIPS_FAILPOINT": "writer:write"}, "no space left on device while writing plan/chips.parquet"),
    "set without value": ("args", ["--set", "grid.chip_size"], "--set 'grid.chip_size': expected KEY=VALUE"),
    "unknown recipe name": ("recipe", "no-such-recipe", "unknown recipe 'no-such-recipe'"),
    "recipe file missing": ("recipe", "/nonexistent/recipe.yaml", "recipe file '/nonexistent/recipe.yaml' does not exist"),
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
    elif how in ("no-crs", "all-nodata"):
        with rasterio.open(src) as ds:
            arr, prof = ds.read(), ds.profile
        prof.update(driver="GTiff")
        if how == "no-crs":
            prof.pop("crs")
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
            cur = data
            *head, last = k.split(".")
            for h in head:
                cur = cur[h]
            cur[last] = v
    elif kind == "api":
        data["search"]["catalog"] = cog_server.url + "/not-a-stac-api"
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
                data["search"]["catalog"] = str(cat)
                data["reading"] = {"max_retries": 1}
                return _check(case, data, out, tmp_path, message, args, env, None)
        cat = tmp_path / "items.json"
        cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        data["search"]["catalog"] = str(cat)
        data["reading"] = {"max_retries": 1}
    elif kind == "label":
        data["grid"]["label_raster"] = str(_label(payload, cdl_raster, tmp_path / "label.tif"))
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
    assert proc.stderr.startswith("error: ")
    if before is not None:
        assert out.read_bytes() == before
    elif str(out).startswith(str(tmp_path)):
        assert not out.exists(), f"{case}: {sorted(p.name for p in out.rglob('*'))}"


def test_catalogue_size():
    assert len(CASES) >= 30


def test_dry_run_prints_and_writes_nothing(catalog, cdl_raster, tmp_path):
    root, _ = catalog
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(crop_recipe(str(root / "items.json"), cdl_raster)))
    out = tmp_path / "out"
    proc = run_cli("plan", str(recipe), "-o", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "chips in AOI" in proc.stdout and "42" in proc.stdout and "estimated bytes to read" in proc.stdout
    assert proc.stdout.count("HLS.S30.T30UVB") == 4
    assert not out.exists()


def test_schema_and_recipes_commands():
    proc = run_cli("schema")
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Recipe" and "grid" in schema["properties"]
    proc = run_cli("recipes")
    assert "hls-crop-classification" in proc.stdout and "demo" in proc.stdout
    proc = run_cli("recipes", "show", "hls-crop-classification")
    assert yaml.safe_load(proc.stdout)["search"]["collections"] == ["HLSS30_2.0"]
