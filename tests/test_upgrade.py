"""The version-1 -> version-2 upgrader (eochips.config.upgrade): every built-in recipe that
eochips 0.1 shipped (``tests/fixtures/v1``) loads with one upgrade note per process, has the
version-2 shape, equals the matching version-2 built-in recipe except for the stated
differences, prints as version-2 YAML with ``eochips upgrade``, and, end to end, builds
engine v1's pixels (``tests/fixtures/pixels-v1.json``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import crop_recipe_v1, derived_cloudy_items, needs_shared, run_cli, write_recipe
from eochips.config import RecipeUpgradeWarning, canonical, load_recipe, parse_recipe
from eochips.config import loading

FIXTURES = Path(__file__).parent / "fixtures"
V1_DIR = FIXTURES / "v1"
V1_NAMES = ["demo", "hls-crop-classification", "hls-gap-filling"]
sys.path.insert(0, str(FIXTURES))
from record_pixels import hash_chips  # noqa: E402

PIXELS_V1 = json.loads((FIXTURES / "pixels-v1.json").read_text())
NOTE = "is version 1: read through the v1 -> v2 upgrader; `eochips upgrade RECIPE` prints it as version 2"
# version-2 source names of the upgrade, per built-in recipe: {name in the v2 built-in: name in the upgrade}
RENAMES = {"demo": {"landsat": "main"}, "hls-crop-classification": {"hls": "main"},
           "hls-gap-filling": {"hls": "main", "cloudy": "cloud_masks"}}


@pytest.fixture
def fresh_note(monkeypatch):
    """A process that has not said "version 1" yet (loading.py says it once per process)."""
    monkeypatch.setattr(loading, "_warned", False)


@pytest.fixture
def fixed_env(monkeypatch, tmp_path):
    """The ${VAR}s of the built-in recipes set to absolute paths, so v1 and v2 resolve alike."""
    env = {"CDL_RASTER": str(tmp_path / "cdl_2022.tif"), "EOCHIPS_SAMPLE_DIR": str(tmp_path / "sample")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _load_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeUpgradeWarning)
        return load_recipe(path)


def _load_quietly_dict(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeUpgradeWarning)
        return parse_recipe(data, base_dir=V1_DIR)


# --------------------------------------------------------------------------------------
# the note


def test_one_upgrade_warning_per_process(fresh_note, fixed_env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipes = [load_recipe(V1_DIR / f"{n}.yaml") for n in V1_NAMES]
        load_recipe(V1_DIR / "demo.yaml")
    notes = [w for w in caught if issubclass(w.category, RecipeUpgradeWarning)]
    assert len(notes) == 1
    assert str(notes[0].message).startswith("recipe 'demo' " + NOTE)
    assert issubclass(RecipeUpgradeWarning, FutureWarning)
    assert [r.version for r in recipes] == [2, 2, 2]
    assert [r.name for r in recipes] == V1_NAMES


def test_version_2_recipes_say_nothing(fresh_note, fixed_env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in V1_NAMES:
            load_recipe(n)
    assert not [w for w in caught if issubclass(w.category, RecipeUpgradeWarning)]
    assert loading._warned is False  # the next version-1 recipe still gets its note
    with pytest.warns(RecipeUpgradeWarning, match="recipe 'hls-gap-filling' is version 1"):
        load_recipe(V1_DIR / "hls-gap-filling.yaml")


def test_version_1_mapping_without_version_key(fresh_note, fixed_env):
    data = yaml.safe_load((V1_DIR / "hls-crop-classification.yaml").read_text())
    assert "version" not in data
    with pytest.warns(RecipeUpgradeWarning):
        r1 = parse_recipe(data, base_dir=V1_DIR)
    r2 = _load_quietly(V1_DIR / "hls-crop-classification.yaml")
    assert r1 == r2 and r1.version == 2
    assert _load_quietly_dict(dict(data, version=1)) == r1


# --------------------------------------------------------------------------------------
# the shape of the upgrade

EXPECTED_SHAPE = {
    "demo": {"sources": ["main"], "grid": "crs", "units": ("chip", 32), "filters": ["nodata"], "layouts": ["seed-001"],
             "selection": {"main": ("least-cloudy", "unit")}},
    "hls-crop-classification": {"sources": ["main"], "grid": "label-raster", "units": ("chip", 224),
                                "filters": ["label-fraction", "nodata", "fmask-bad-pct"], "layouts": ["seed-001"],
                                "selection": {"main": ("first-middle-last", "tile")}},
    "hls-gap-filling": {"sources": ["main", "cloud_masks"], "grid": "label-raster", "units": ("chip", 224),
                        "filters": ["label-fraction", "nodata", "fmask-bad-pct"], "layouts": ["seed-001", "seed-000-cmask"],
                        "selection": {"main": ("first-middle-last", "tile"), "cloud_masks": ("seeded-by-date", "tile")}},
}


@pytest.mark.parametrize("name", V1_NAMES)
def test_upgrade_has_the_version_2_shape(name, fixed_env):
    r = _load_quietly(V1_DIR / f"{name}.yaml")
    want = EXPECTED_SHAPE[name]
    assert r.version == 2 and r.name == name
    assert list(r.sources) == want["sources"]
    assert r.grid.kind == want["grid"]
    assert (r.units.kind, r.units.size, r.units.size_m) == (*want["units"], None)
    assert [f.kind for f in r.filters] == want["filters"]
    assert [lay.kind for lay in r.output.layout] == want["layouts"]
    assert {s: (c.selection.kind, c.selection.per) for s, c in r.sources.items()} == want["selection"]
    assert r.sampling.kind == "all"  # version 1 had no chip sampling
    if name == "demo":
        assert r.grid.crs == "EPSG:32621" and r.grid.resolution == 30 and r.grid.origin == (737535, -2795205)
        assert r.sources["main"].selection.n_scenes == 1 and r.sources["main"].selection.coverage_thresholds == [100]
        assert r.labels.vector == str(Path(fixed_env["EOCHIPS_SAMPLE_DIR"]) / "labels" / "land_cover.gpkg")
    else:
        assert r.grid.path == fixed_env["CDL_RASTER"]
        lf, nd, fm = r.filters
        assert (lf.classes, lf.max_pixels, lf.max_fraction) == ([0], 0, None)  # labels.max_nodata_pixels: 0
        assert (nd.sources, nd.max_pixels) == (["main"], 0)
        assert (fm.source, fm.bits, fm.max_pct) == ("main", ["cirrus", "cloud", "shadow", "snow_ice"], 5)
        assert r.output.layout[0].source == "main" and r.output.layout[0].write_qa is True
    if name == "hls-gap-filling":
        cm = r.sources["cloud_masks"]
        assert cm.bands == [] and cm.profile == "hls-s30"
        assert (cm.search.cloud_cover.min, cm.search.cloud_cover.max) == (30, 80)
        assert cm.search.datetime == r.sources["main"].search.datetime == "2022-03-01/2022-09-30"  # v1: search's
        sel = cm.selection
        assert (sel.min_scenes, sel.n_scenes, sel.seed, sel.coverage_thresholds) == (6, 6, 42, [100, 90, 80, 70, 60, 50])
        lay = r.output.layout[1]
        assert (lay.source, lay.bits, lay.tracker) == ("cloud_masks", ["cloud"], "fmask_tracker.csv")


def _rename(doc: dict, names: dict[str, str]) -> dict:
    """A canonical v2 recipe with its sources renamed, references included."""
    doc = json.loads(json.dumps(doc))
    doc["sources"] = {names.get(k, k): v for k, v in doc["sources"].items()}
    ren = lambda s: names.get(s, s) if isinstance(s, str) else s  # noqa: E731
    for item in doc["filters"] + doc["output"]["layout"] + doc["masks"]["sources"] + [doc["grid"]]:
        if "source" in item:
            item["source"] = ren(item["source"])
        if item.get("sources"):
            item["sources"] = [ren(s) for s in item["sources"]]
    return doc


def _diff(a, b, key="") -> dict[str, tuple]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = {}
        for k in sorted(set(a) | set(b), key=str):
            out.update(_diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{key}.{k}" if key else str(k)))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = {}
        for i, (x, y) in enumerate(zip(a, b)):
            out.update(_diff(x, y, f"{key}.{i}"))
        return out
    return {} if a == b else {key: (a, b)}


# Where the upgrade of a v1 built-in differs from the v2 built-in (after the source renames):
# (upgrade, v2 built-in) per dotted key. Every other field is equal.
SEED_SAMPLING = {"kind": "class-balance", "n": 5000, "min_classes": 8, "seed": 42, "draws": 100_000_000}
EXPECTED_DIFFERENCES = {
    "demo": {
        # v1 named the source of the nodata rule and the layout; v2's built-in leaves them to the only source
        "filters.0.sources": (["main"], None),
        "output.layout.0.source": ("main", None),
    },
    "hls-crop-classification": {
        "sampling": ({"kind": "all"}, SEED_SAMPLING),  # the seed's class-balance sampling, which v1 lacked
        "filters.1.sources": (["main"], None),  # the only source, named by the upgrader
    },
    "hls-gap-filling": {
        "sampling": ({"kind": "all"}, SEED_SAMPLING),
    },
}


@pytest.mark.parametrize("name", V1_NAMES)
def test_upgrade_equals_the_version_2_builtin(name, fixed_env):
    up = json.loads(json.dumps(canonical(_load_quietly(V1_DIR / f"{name}.yaml"))))  # tuples as lists, like _rename's
    v2 = _rename(canonical(load_recipe(name)), RENAMES[name])
    diff = _diff(up, v2)
    # sampling is compared whole
    for k in [k for k in diff if k.startswith("sampling.")]:
        del diff[k]
    if up["sampling"] != v2["sampling"]:
        diff["sampling"] = (up["sampling"], v2["sampling"])
    assert diff == EXPECTED_DIFFERENCES[name]
    # the stated differences mean the same thing when there is one source
    if name != "hls-gap-filling":
        assert len(up["sources"]) == 1


def test_upgrade_of_every_version_1_rule():
    """A version-1 recipe with every rule: filters come out in version 1's order."""
    data = crop_recipe_v1("/cat/items.json", Path("/data/cdl.tif"))
    data["labels"]["min_labelled_fraction"] = 0.75
    data["qa"].update(masks=[{"kind": "fmask", "cloud_bits": ["cloud", "cirrus"]}], max_cloud_fraction=0.2,
                      max_shadow_fraction=0.1, dilation=2, max_nodata_pixels=3, max_bad_pct=40)
    data["selection"] = {"strategy": "least-cloudy", "unit": "chip", "n_scenes": 2, "coverage_thresholds": [90]}
    data["reading"] = {"resampling": "cubic", "band_resampling": {"red": "nearest"}, "threads": 4}
    r = _load_quietly_dict(data)
    assert [(f.kind, getattr(f, "layer", None)) for f in r.filters] == [
        ("label-fraction", None), ("label-fraction", None), ("nodata", None), ("fmask-bad-pct", None),
        ("mask-fraction", "cloud"), ("mask-fraction", "shadow")]
    lf1, lf2, nd, fm, mc, ms = r.filters
    assert (lf1.classes, lf1.max_pixels) == ([0], 0)
    # v1 kept a chip unless 1 - n / 1024 < 0.75: at most 256 no-data pixels on a 32 px chip
    assert lf2.classes == [0] and lf2.max_pixels == 256 and lf2.max_fraction is None
    assert nd.max_pixels == 3 and fm.max_pct == 40 and (mc.max, ms.max) == (0.2, 0.1)
    assert [(m.kind, m.cloud_bits, m.source) for m in r.masks.sources] == [("fmask", ["cloud", "cirrus"], "main")]
    assert r.masks.dilation == 2
    sel = r.sources["main"].selection
    assert (sel.kind, sel.per, sel.n_scenes, sel.coverage_thresholds) == ("least-cloudy", "unit", 2, [90])
    src = r.sources["main"]
    assert src.resampling == "cubic" and r.reading.threads == 4
    assert [b if isinstance(b, str) else (b.name, b.resampling) for b in src.bands] == ["blue", "green", ("red", "nearest"), "nir"]


def _v1_keeps(n_nodata: int, size: int, min_labelled: float) -> bool:
    """Version 1's rule (eochips 0.1 plan._scan_labels), typed again."""
    labelled = 1.0 - n_nodata / size
    return not labelled < min_labelled


def _upgraded_keeps(chip: int, min_labelled: float, counts) -> list[bool]:
    from eochips.filters import label_fraction_check

    data = crop_recipe_v1("/cat/items.json", Path("/data/cdl.tif"), **{"grid.chip_size": chip})
    data["labels"].update(min_labelled_fraction=min_labelled, max_nodata_pixels=None)
    (rule,) = [f for f in _load_quietly_dict(data).filters if f.kind == "label-fraction"]
    out = []
    for n in counts:
        classes = np.full(chip * chip, 3, dtype=np.uint8)
        classes[:n] = 0
        out.append(label_fraction_check(rule, classes.reshape(chip, chip))[1] is None)
    return out


def test_min_labelled_fraction_keeps_what_version_1_kept():
    size = 32 * 32
    for m in (0.5, 0.75, 0.8, 0.9):
        assert _upgraded_keeps(32, m, range(size + 1)) == [_v1_keeps(n, size, m) for n in range(size + 1)], m


def test_min_labelled_fraction_boundary_on_a_100_px_chip():
    size = 100 * 100
    counts = range(1900, 2101)
    assert _upgraded_keeps(100, 0.8, counts) == [_v1_keeps(n, size, 0.8) for n in counts]


# --------------------------------------------------------------------------------------
# paths of a version-1 recipe


def test_version_1_paths_resolve_like_version_2(tmp_path, monkeypatch):
    rec, cwd = tmp_path / "rec", tmp_path / "cwd"
    rec.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data = crop_recipe_v1("stac/items.json", Path("cdl.tif"))
    data["labels"]["raster"] = "labels/cdl_2021.tif"
    data["aoi"] = {"path": "aoi.geojson"}
    path = write_recipe(rec / "v1.yaml", data)
    r = _load_quietly(path)
    assert r.grid.path == str(rec.resolve() / "cdl.tif")
    assert r.labels.raster == str(rec.resolve() / "labels" / "cdl_2021.tif")
    assert r.aoi.path == str(rec.resolve() / "aoi.geojson")
    assert r.sources["main"].search.catalog == str(rec.resolve() / "stac" / "items.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeUpgradeWarning)
        r = load_recipe(path, {"grid.label_raster": "mine.tif", "search.catalog": "my.json", "labels.raster": "l.tif"})
    assert r.grid.path == str(cwd.resolve() / "mine.tif")
    assert r.sources["main"].search.catalog == str(cwd.resolve() / "my.json")
    assert r.labels.raster == str(cwd.resolve() / "l.tif")


def test_version_1_set_catalog_reaches_the_cloud_masks_source(tmp_path, monkeypatch):
    rec, cwd = tmp_path / "rec", tmp_path / "cwd"
    rec.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = write_recipe(rec / "gap.yaml", yaml.safe_load((V1_DIR / "hls-gap-filling.yaml").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeUpgradeWarning)
        r = load_recipe(path, {"search.catalog": "items.json"})
    want = str(cwd.resolve() / "items.json")
    assert {s: c.search.catalog for s, c in r.sources.items()} == {"main": want, "cloud_masks": want}


# --------------------------------------------------------------------------------------
# eochips upgrade


@pytest.mark.parametrize("name", V1_NAMES)
def test_cli_upgrade_prints_version_2(name, fixed_env, tmp_path):
    path = V1_DIR / f"{name}.yaml"
    proc = run_cli("upgrade", str(path), env=fixed_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (f"note: recipe {name!r} {NOTE} (version 1 support ends in eochips 1.0)")
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["version"] == 2
    upgraded = _load_quietly(path)
    assert parse_recipe(doc) == upgraded
    # the printed file is itself a version-2 recipe that loads without a note
    printed = tmp_path / "v2.yaml"
    printed.write_text(proc.stdout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = load_recipe(printed)
    assert again == upgraded and not [w for w in caught if issubclass(w.category, RecipeUpgradeWarning)]


def test_cli_upgrade_of_a_version_2_recipe_says_nothing(fixed_env):
    proc = run_cli("upgrade", "hls-gap-filling", env=fixed_env, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert parse_recipe(yaml.safe_load(proc.stdout)) == load_recipe("hls-gap-filling")


# --------------------------------------------------------------------------------------
# end to end: engine v1's pixels




def _run_and_compare(data: dict, case: str, tmp_path: Path) -> None:
    assert "version" not in data and "search" in data  # a version-1 mapping
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "v1.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("note: ")] == [
        f"note: recipe {data['name']!r} {NOTE} (version 1 support ends in eochips 1.0)"]
    got, want = hash_chips(out), PIXELS_V1[case]
    assert sorted(got) == sorted(want)  # the same chips kept, the same files
    assert [f for f in want if got[f] != want[f]] == []
    assert len(want) > 80


@needs_shared
def test_version_1_crop_recipe_builds_engine_v1_pixels(local_catalog, cdl_raster, tmp_path):
    data = crop_recipe_v1(str(local_catalog), cdl_raster, **{"qa.max_bad_pct": 100})
    _run_and_compare(data, "crop_relaxed_qa", tmp_path)


@needs_shared
def test_version_1_gap_filling_recipe_builds_engine_v1_pixels(local_catalog, cdl_raster, tmp_path):
    builtin = yaml.safe_load((V1_DIR / "hls-gap-filling.yaml").read_text())
    data = crop_recipe_v1(str(local_catalog), cdl_raster, **{"qa.max_bad_pct": 100})
    data["name"] = builtin["name"]
    data["cloud_masks"] = dict(builtin["cloud_masks"], datetime="2021-06-01/2021-09-30")
    assert data["qa"]["max_bad_pct"] == 100
    _run_and_compare(data, "gap_filling", tmp_path)
