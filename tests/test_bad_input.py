"""Bad input: one clear line naming the field or file, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import LABEL_ORIGIN, LABEL_SHAPE, UNKNOWN_CODE, needs_shared

pytestmark = needs_shared


@pytest.fixture(scope="module")
def base(hls_dir, cdl_raster, tmp_path_factory):
    """A valid crop recipe over a static ItemCollection of the real Exeter granules (local files)."""
    d, items = hls_dir
    cat = tmp_path_factory.mktemp("cat") / "items.json"
    local = json.loads(json.dumps(items))
    for it in local:
        for a in it["assets"].values():
            a["href"] = str(d / a["href"])
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": local}))
    x0, y0 = LABEL_ORIGIN
    return {
        "name": "bad-input-base",
        "aoi": {"bbox": [x0, y0 - LABEL_SHAPE[0] * 30, x0 + LABEL_SHAPE[1] * 30, y0], "crs": "EPSG:32630"},
        "search": {"catalog": str(cat), "collections": ["HLSS30_2.0"], "datetime": "2021-06-01/2021-07-31"},
        "profile": "hls-s30", "bands": ["blue", "green", "red", "nir"],
        "grid": {"label_raster": str(cdl_raster), "chip_size": 32},
        "labels": {"reclass": "cdl-13"},
    }


def _run(tmp_path, text: str):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "run", str(recipe), "-o", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    return proc, out


def _set(d: dict, dotted: str, value):
    cur = d
    *head, last = dotted.split(".")
    for k in head:
        cur = cur.setdefault(k, {})
    if value is _DELETE:
        cur.pop(last, None)
    else:
        cur[last] = value


_DELETE = object()
BOWTIE = {"type": "Polygon", "coordinates": [[[-3.5, 50.7], [-3.4, 50.8], [-3.4, 50.7], [-3.5, 50.8], [-3.5, 50.7]]]}

CASES = {
    "unknown key": ("grid.chipsize", 32, "recipe field 'grid.chipsize': unknown key; valid keys: chip_size"),
    "wrong type": ("grid.chip_size", "big", "recipe field 'grid.chip_size': Input should be a valid integer"),
    "chip size <= 0": ("grid.chip_size", 0, "recipe field 'grid.chip_size': Input should be greater than 0"),
    "chip larger than grid": ("grid.chip_size", 500, "500 px is larger than the grid (224 x 192 px)"),
    "reversed dates": ("search.datetime", "2021-07-31/2021-06-01", "recipe field 'search.datetime': start '2021-07-31' is after end"),
    "missing field": ("bands", _DELETE, "recipe field 'bands': required but missing"),
    "unknown band": ("bands", ["blue", "nir77"], "band 'nir77' is not in profile 'hls-s30'"),
    "unknown profile": ("profile", "hls-s31", "unknown profile 'hls-s31'"),
    "unknown strategy": ("selection.strategy", "best", "unknown strategy 'best'; valid: all, first-middle-last, least-cloudy"),
    "invalid aoi geojson": ("aoi", {"geometry": {"type": "Polygon", "coordinates": "nope"}}, "aoi.geometry is not valid GeoJSON"),
    "self-intersecting aoi": ("aoi", {"geometry": BOWTIE}, "aoi geometry is not valid (Self-intersection"),
    "projected aoi without crs": ("aoi", {"bbox": [460860, 5616420, 467580, 5622180]}, "outside lon/lat range; if they are projected, set aoi.crs"),
    "search finds nothing": ("search.datetime", "2019-01-01/2019-02-01", "search found no scenes in"),
    "label raster missing": ("grid.label_raster", "/nonexistent/cdl.tif", "label raster '/nonexistent/cdl.tif' cannot be opened"),
    "strict unknown code": ("labels.strict", True, f"labels: code(s) [{UNKNOWN_CODE}] are not in the reclass table 'cdl-13'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_recipe_values(case, base, tmp_path):
    key, value, message = CASES[case]
    data = json.loads(json.dumps(base))
    _set(data, key, value)
    proc, out = _run(tmp_path, yaml.safe_dump(data))
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    assert not out.exists()


def test_malformed_yaml(tmp_path):
    proc, out = _run(tmp_path, "name: x\naoi: [1, 2\n")
    assert proc.returncode == 2 and "is not valid YAML at line" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_unknown_recipe_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "run", "no-such-recipe", "-o", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown recipe 'no-such-recipe'" in proc.stderr and "hls-crop-classification" in proc.stderr


def test_output_is_a_file(base, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(base))
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "plan", str(recipe), "-o", str(target)], capture_output=True, text=True)
    assert proc.returncode == 2 and "exists and is not a folder" in proc.stderr
    assert target.read_text() == "x"


def test_dry_run_prints_and_writes_nothing(base, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "plan", str(recipe), "-o", str(out), "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "chips in AOI" in proc.stdout and "42" in proc.stdout and "estimated bytes to read" in proc.stdout
    assert proc.stdout.count("HLS.S30.T30UVB") == 4
    assert not out.exists()


def test_schema_and_recipes_commands():
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "schema"], capture_output=True, text=True)
    schema = json.loads(proc.stdout)
    assert schema["title"] == "Recipe" and "grid" in schema["properties"]
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "recipes"], capture_output=True, text=True)
    assert "hls-crop-classification" in proc.stdout and "demo" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "recipes", "show", "hls-crop-classification"], capture_output=True, text=True)
    assert yaml.safe_load(proc.stdout)["search"]["collections"] == ["HLSS30_2.0"]
