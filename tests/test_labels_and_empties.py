"""Label vectors are validated and no dataset is silently empty (issue 10, items 11 and 12).

Bad input (``CASES``): exit 2, the first line ``error: <message>``, no traceback, nothing
written. Suspect datasets (``test_suspect_*``): exit 3 with one ``error:`` line naming the cause.
Vector labels are written with geopandas into ``tmp_path`` over the real HLS Exeter grid.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml

from conftest import FMASK_RULE, LABEL_ORIGIN, LABEL_SHAPE, crop_recipe, crop_recipe_v1, needs_shared, run_cli
from eochips.config import set_dotted

pytestmark = needs_shared

X0, Y0 = LABEL_ORIGIN
ROWS, COLS = LABEL_SHAPE
UTM = "EPSG:32630"


@pytest.fixture(scope="module")
def catalog(hls_dir, tmp_path_factory) -> Path:
    """A static ItemCollection of the real Exeter granules (absolute local hrefs)."""
    d, items = hls_dir
    feats = json.loads(json.dumps(items))
    for it in feats:
        for a in it["assets"].values():
            a["href"] = str(d / a["href"])
    path = tmp_path_factory.mktemp("lecat") / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def _items(catalog: Path, tmp_path: Path, edit) -> str:
    """A copy of the catalog with ``edit(item)`` applied to every item."""
    feats = json.loads(catalog.read_text())["features"]
    for it in feats:
        edit(it)
    out = tmp_path / "items-edited.json"
    out.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return str(out)


def vector_recipe(catalog: Path, cdl: Path, vector: Path | str, classes=None, **overrides) -> dict:
    """The crop recipe on a ``crs`` grid (EPSG:32630, 30 m, the CDL raster's origin) labelled by
    polygons of ``vector`` (field ``crop``); no filters, so every unit is built."""
    data = crop_recipe(str(catalog), cdl)
    data["grid"] = {"kind": "crs", "crs": UTM, "resolution": 30, "origin": [X0, Y0]}
    data["labels"] = {"vector": str(vector), "class_field": "crop", "classes": classes or {"corn": 3, "wheat": 8}}
    data["filters"] = []
    for k, v in overrides.items():
        data = set_dotted(data, k, v)
    return data


def _box(c0, r0, c1, r1):
    """A box in grid pixels (col, row) -> EPSG:32630 metres."""
    return shapely.box(X0 + 30 * c0, Y0 - 30 * r1, X0 + 30 * c1, Y0 - 30 * r0)


def write_vector(path: Path, values: list, geoms: list | None = None, crs: str = UTM) -> Path:
    geoms = geoms if geoms is not None else [_box(10 + 40 * i, 10, 30 + 40 * i, 60) for i in range(len(values))]
    gpd.GeoDataFrame({"crop": values}, geometry=geoms, crs=crs).to_file(path)
    return path


def _vector(values, geoms=None, crs=UTM, classes=None, **overrides):
    return ("vector", (values, geoms, crs, classes, overrides))


def _zero_raster(cdl: Path, dst: Path) -> Path:
    with rasterio.open(cdl) as ds:
        prof = ds.profile
    with rasterio.open(dst, "w", **prof) as out:
        out.write(np.zeros((1, prof["height"], prof["width"]), dtype=prof["dtype"]))
    return dst


# (kind, payload, message): vector (values, geometries, CRS, classes, overrides), empty (an empty layer),
# set (crop recipe keys), zero-raster, items (an edit of every catalog item), v1 (version-1 keys)
CASES = {
    # item 11: label vectors
    "empty layer": ("empty", None, "has no features (an empty layer)"),
    "value missing from classes": (*_vector(["corn", "barley"]), "feature FID 2 has crop = 'barley', which is not in labels.classes (corn, wheat)"),
    "null class value": (*_vector(["corn", None]), "feature FID 2 has crop = null (no value), which is not in labels.classes"),
    "class id above the uint8 range": (*_vector(["corn"], classes={"corn": 300}), "labels.classes: class id 300 (for 'corn') does not fit the uint8 class map (0..255)"),
    "negative class id": (*_vector(["corn"], classes={"corn": -1}), "labels.classes: class id -1 (for 'corn') does not fit the uint8 class map"),
    "class field missing": (*_vector(["corn"], **{"labels.class_field": "type"}), "labels.class_field 'type' is not a field of"),
    "layer coordinates in another CRS": (*_vector(["corn"], crs="EPSG:4326"), "no feature lies over the grid (layer extent ["),
    "layer in another UTM zone": (*_vector(["corn"], crs="EPSG:32631"), "in EPSG:32631, grid extent ["),
    "polygons all of class 0": (*_vector(["corn"], classes={"corn": 0}), "gives no unit any class: every label pixel of the 42 unit(s) is 0"),
    "label raster all zero": ("zero-raster", None, "gives no unit any class: every label pixel of the 42 unit(s) is 0"),
    "reclass class id above 255": ("set", {"labels.reclass": {1: 300, 5: 4}}, "labels.reclass: class id 300 (for 'code 1') does not fit the uint8 class map (0..255)"),
    "reclass negative code": ("set", {"labels.reclass": {-1: 3}}, "labels.reclass: source code(s) [-1] are negative"),
    # item 12: setups that would give an empty or silently thinned dataset
    "item CRS disagrees with the file": ("items", "epsg", "asset 'B02': the file's CRS (Lambert Azimuthal Equal Area) is not the item's (EPSG:32631"),
    "asset proj:transform disagrees with the file": ("items", "transform", "asset 'B02': the file's transform ["),
    "coverage threshold above 100": ("set", {"sources.hls.selection.coverage_thresholds": [1000]}, "recipe field 'sources.hls.selection.coverage_thresholds': thresholds must be in (0, 100], got [1000.0]"),
    "coverage threshold zero": ("set", {"sources.hls.selection.coverage_thresholds": [100, 0]}, "thresholds must be in (0, 100], got [100.0, 0.0]"),
    "version-1 coverage threshold above 100": ("v1", {"selection.coverage_thresholds": [1000]}, "recipe field 'selection.coverage_thresholds': thresholds must be in (0, 100]"),
    "one-unit AOI: 0 training units": ("set", {"aoi": {"bbox": [X0, Y0 - 960, X0 + 960, Y0], "crs": UTM}}, "recipe field 'dataset.split.train_fraction': 1 unit(s) planned and train_fraction 0.8 gives int(0.8 x 1) = 0 training units"),
    "max drop fraction above 1": ("set", {"dataset.max_drop_fraction": 1.5}, "recipe field 'dataset.max_drop_fraction': Input should be less than or equal to 1"),
    # item 15: a hard cap on the plan's size
    "more units than units.max_units": ("set", {"units.max_units": 10}, "recipe field 'units.max_units': the AOI holds up to 42 units, more than max_units (10)"),
}


def _edit_item(how: str):
    def edit(it):
        if how == "epsg":
            it["properties"]["proj:epsg"] = 32631  # the files are in the granules' own LAEA CRS
        else:
            with rasterio.open(it["assets"]["B02"]["href"]) as ds:
                t = ds.transform
            it["assets"]["B02"]["proj:transform"] = [t.a, t.b, t.c + 1000, t.d, t.e, t.f]
    return edit


@pytest.mark.parametrize("case", list(CASES))
def test_bad_labels_and_setups(case, catalog, cdl_raster, tmp_path):
    kind, payload, message = CASES[case]
    if kind == "vector":
        values, geoms, crs, classes, overrides = payload
        vec = write_vector(tmp_path / "labels.gpkg", values, geoms, crs)
        data = vector_recipe(catalog, cdl_raster, vec, classes, **overrides)
    elif kind == "empty":
        vec = write_vector(tmp_path / "labels.gpkg", [], [])
        data = vector_recipe(catalog, cdl_raster, vec)
    elif kind == "zero-raster":
        data = crop_recipe(str(catalog), cdl_raster, **{"grid.path": str(_zero_raster(cdl_raster, tmp_path / "zero.tif"))})
    elif kind == "items":
        data = crop_recipe(_items(catalog, tmp_path, _edit_item(payload)), cdl_raster)
    elif kind == "v1":
        data = crop_recipe_v1(str(catalog), cdl_raster)
        for k, v in payload.items():
            data = set_dotted(data, k, v)
    else:
        data = crop_recipe(str(catalog), cdl_raster)
        for k, v in payload.items():
            data = set_dotted(data, k, v)
    check_bad(case, data, tmp_path, message)


def check_bad(case, data, tmp_path, message, cmd=("run",)):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    proc = run_cli(*cmd, str(recipe), "-o", str(out), "--no-progress", timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("note: ")]  # a version-1 recipe's one note
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[0].startswith("error: ") and len(lines) == 1, proc.stderr
    assert message in " ".join(lines[0].split()), (case, lines[0])
    assert not out.exists(), f"{case}: {sorted(p.name for p in out.rglob('*'))}"


# --------------------------------------------------------------------------------------
# item 11: invalid polygons are repaired by the stated rule, and the pixels prove it

def _bowtie_and_reference():
    """A bowtie (self-intersecting) of class 3 and its two triangles built by hand: the
    diagonals A-B and C-D of the rectangle [L, R] x [Bm, T] cross at its centre M."""
    L, R, T, Bm = X0 + 301, X0 + 3007, Y0 - 296, Y0 - 3004
    bowtie = shapely.Polygon([(L, T), (R, Bm), (R, T), (L, Bm)])
    m = ((L + R) / 2, (T + Bm) / 2)
    triangles = [shapely.Polygon([(L, T), m, (L, Bm)]), shapely.Polygon([(R, T), m, (R, Bm)])]
    return bowtie, triangles


def _shell_with_stray_hole():
    """A square shell (pixels cols 120..170, rows 20..70) whose hole sticks out of it to the
    right (cols 150..200, rows 40..90): invalid. The rule keeps the shell minus the hole."""
    shell = [(120.3, 20.3), (170.3, 20.3), (170.3, 70.3), (120.3, 70.3)]
    hole = [(150.3, 40.3), (200.3, 40.3), (200.3, 90.3), (150.3, 90.3)]
    to_m = lambda pts: [(X0 + 30 * c, Y0 - 30 * r) for c, r in pts]  # noqa: E731
    return shapely.Polygon(to_m(shell), [to_m(hole)]), (120.3, 20.3, 170.3, 70.3), (150.3, 40.3, 200.3, 90.3)


def _mosaic(out: Path) -> np.ndarray:
    """The class maps of every unit put back on the 192 x 224 grid."""
    full = np.full((ROWS, COLS), 255, dtype=np.uint8)
    for f in sorted((out / "chips").glob("*.mask.tif")):
        _, r, c = f.name.split(".")[0].split("_")
        with rasterio.open(f) as ds:
            full[int(r) * 32:(int(r) + 1) * 32, int(c) * 32:(int(c) + 1) * 32] = ds.read(1)
    return full


def test_invalid_polygons_are_repaired_by_the_stated_rule(catalog, cdl_raster, tmp_path):
    bowtie, triangles = _bowtie_and_reference()
    stray, shell, hole = _shell_with_stray_hole()
    assert not bowtie.is_valid and not stray.is_valid
    vec = write_vector(tmp_path / "labels.gpkg", ["corn", "wheat"], [bowtie, stray])
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(vector_recipe(catalog, cdl_raster, vec)))
    out = tmp_path / "out"
    proc = run_cli("run", str(rec), "-o", str(out), "--no-progress", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and f"labels.vector '{vec}': repaired 2 invalid polygon(s) (FID 1, 2) with shapely.make_valid" in notes[0]
    assert "Traceback" not in proc.stderr
    got = _mosaic(out)
    assert (got != 255).all()  # every unit was written
    # the reference, by hand: pixel centres inside either triangle (class 3); inside the shell
    # and outside the hole (class 8, drawn later); every other pixel 0
    cols, rows = np.meshgrid(np.arange(COLS) + 0.5, np.arange(ROWS) + 0.5)
    xs, ys = X0 + 30 * cols, Y0 - 30 * rows
    want = np.zeros((ROWS, COLS), dtype=np.uint8)
    want[shapely.contains_xy(shapely.MultiPolygon(triangles), xs, ys)] = 3
    inside = lambda b: (cols > b[0]) & (cols < b[2]) & (rows > b[1]) & (rows < b[3])  # noqa: E731
    want[inside(shell) & ~inside(hole)] = 8
    assert int((want == 3).sum()) > 3000 and int((want == 8).sum()) == 50 * 50 - 20 * 30
    assert np.array_equal(got, want), int((got != want).sum())
    # GDAL's even-odd fill of the raw polygon paints the stray half of the hole too: the repair matters
    from rasterio.features import rasterize

    raw = rasterize([(stray, 8)], out_shape=(ROWS, COLS), transform=rasterio.Affine(30, 0, X0, 0, -30, Y0), fill=0)
    assert int((raw == 8).sum()) != int((want == 8).sum())


# --------------------------------------------------------------------------------------
# item 12: finalize on a planned folder; suspect datasets exit 3

def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_finalize_a_folder_that_was_only_planned(catalog, cdl_raster, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(crop_recipe(str(catalog), cdl_raster)))
    out = tmp_path / "out"
    assert run_cli("plan", str(rec), "-o", str(out)).returncode == 0
    before = _tree(out)
    proc = run_cli("finalize", str(out))
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: nothing was built in ") and "run `eochips build " in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert _tree(out) == before  # nothing written or changed (no state, no index)


def _far_recipe(catalog, cdl, **overrides) -> dict:
    """A crs grid over a 24 km square around the 7 km Exeter granules: 576 of 625 units have no scene."""
    data = crop_recipe(str(catalog), cdl)
    data["grid"] = {"kind": "crs", "crs": UTM, "resolution": 30}
    data["labels"], data["filters"] = None, [{"kind": "nodata", "max_pixels": 0}]
    data["aoi"] = {"bbox": [X0 - 9000, Y0 - 15000, X0 + 15000, Y0 + 9000], "crs": UTM}
    for k, v in overrides.items():
        data = set_dotted(data, k, v)
    return data


def test_suspect_nearly_every_unit_dropped_for_a_setup_reason(catalog, cdl_raster, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(_far_recipe(catalog, cdl_raster)))
    out = tmp_path / "out"
    proc = run_cli("run", str(rec), "-o", str(out), "--no-progress", "--workers", "1")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert any("576 of 625 units (92 %) were dropped for 'selection', more than dataset.max_drop_fraction (0.9)" in " ".join(e.split())
               for e in errors), proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped"]["selection"] == 576 and any("'selection'" in p for p in summary["problems"])


def test_suspect_drops_accepted_with_max_drop_fraction_1(catalog, cdl_raster, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(_far_recipe(catalog, cdl_raster, **{"dataset.max_drop_fraction": 1})))
    proc = run_cli("run", str(rec), "-o", str(tmp_path / "out"), "--no-progress", "--workers", "1")
    assert "'selection'" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode in (0, 3) and (proc.returncode == 0 or "split: 0 training units" in proc.stderr), proc.stderr


def test_suspect_zero_training_units_after_the_build(catalog, cdl_raster, tmp_path):
    """Two units planned (int(0.8 x 2) = 1 passes the plan check); the top one holds the scenes'
    fill row and is dropped, so the one kept unit goes to validation: 0 training units, stats over 0."""
    data = crop_recipe(str(catalog), cdl_raster, aoi={"bbox": [X0, Y0 - 1920, X0 + 960, Y0], "crs": UTM},
                       **{FMASK_RULE: 100})
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    proc = run_cli("run", str(rec), "-o", str(out), "--no-progress", "--workers", "1")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [" ".join(ln.split()) for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and errors[0].startswith("error: split: 0 training units of 1 kept (train_fraction 0.8"), proc.stderr
    assert json.loads((out / "stats.json").read_text())["chips"] == 0


def test_dataset_problems_rules():
    """Which drop reasons count (setup) and which do not (clouds, sampling), on summaries."""
    from eochips.config import load_recipe
    from eochips.dataset.checks import dataset_problems

    r = load_recipe("hls-crop-classification")
    base = {"kept": 5, "train": 4, "validation": 1}
    nodata = dataset_problems({**base, "units_total": 100, "dropped": {"nodata": 95}}, r)
    assert len(nodata) == 1 and nodata[0].startswith("95 of 100 units (95 %) were dropped for 'nodata'") and "fill pixels" in nodata[0]
    assert dataset_problems({**base, "units_total": 100, "dropped": {"fmask-bad-pct": 95}}, r) == []  # clouds are data
    assert dataset_problems({**base, "units_total": 100, "dropped": {"nodata": 90}}, r) == []  # 90 % is not above 0.9
    # 900 units not drawn by sampling are not in the denominator: 95 of the 100 drawn were nodata
    drawn = dataset_problems({**base, "units_total": 1000, "dropped": {"sampling": 900, "nodata": 95}}, r)
    assert len(drawn) == 1 and drawn[0].startswith("95 of 100 units")


# --------------------------------------------------------------------------------------
# item 15: a warning above units.warn_above; units.parquet streamed in batches

def test_warning_above_units_warn_above(catalog, cdl_raster, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(crop_recipe(str(catalog), cdl_raster)))
    proc = run_cli("plan", str(rec), "-o", str(tmp_path / "out"), "--dry-run", "--set", "units.warn_above=41")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "the plan holds 42 units (more than units.warn_above = 41)" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    proc = run_cli("plan", str(rec), "-o", str(tmp_path / "out"), "--dry-run", "--set", "units.warn_above=42")
    assert proc.returncode == 0 and "warning:" not in proc.stderr, proc.stderr


def test_plan_size_guards_are_not_part_of_the_dataset(catalog, cdl_raster, tmp_path):
    """units.warn_above / max_units cannot change an output byte: changing them over an existing
    plan is not "a different recipe"; changing a real field still is."""
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(crop_recipe(str(catalog), cdl_raster)))
    out = tmp_path / "out"
    assert run_cli("plan", str(rec), "-o", str(out)).returncode == 0
    proc = run_cli("plan", str(rec), "-o", str(out), "--set", "units.warn_above=1000", "--set", "units.max_units=5000")
    assert proc.returncode == 0 and "different recipe" not in proc.stderr, proc.stderr
    proc = run_cli("plan", str(rec), "-o", str(out), "--set", "units.size=16")
    assert proc.returncode == 2 and "built from a different recipe (units.size: 32 -> 16)" in " ".join(proc.stderr.split()), proc.stderr


def test_units_parquet_streamed_in_batches_equals_one_frame(catalog, cdl_raster, tmp_path):
    """Batches of 5 units (9 row groups) give the rows of the whole plan in one frame."""
    import pyarrow.parquet as pq

    from eochips.config import parse_recipe
    from eochips.plan import _units_frame, load_plan, make_plan, write_plan, write_units
    from eochips.writers import OutputStore

    plan = make_plan(parse_recipe(crop_recipe(str(catalog), cdl_raster)), probe=False)
    store = OutputStore(tmp_path / "out")
    store.ensure()
    write_plan(plan, store)
    write_units(plan, store, "plan/units-5.parquet", batch=5)
    assert pq.ParquetFile(tmp_path / "out" / "plan" / "units-5.parquet").num_row_groups == 9
    whole = _units_frame(plan, plan.units)
    for name in ("units.parquet", "units-5.parquet"):
        got = gpd.read_parquet(tmp_path / "out" / "plan" / name)
        assert len(got) == len(plan.units) == 42 and got.crs == whole.crs
        for col in ("unit_id", "grid", "row", "col", "tile", "status", "reason_code", "reason", "label_info"):
            assert got[col].tolist() == whole[col].tolist(), col
        assert all(list(a) == list(b) for a, b in zip(got["transform"], whole["transform"]))
        assert [list(p) for p in got["picks"]] == [list(p) for p in whole["picks"]]
        assert got.geometry.geom_equals_exact(whole.geometry, 0).all()
    back = load_plan(store)
    assert [(u.id, u.key, tuple(u.unit.gbox.affine), u.status) for u in back.units] == \
           [(u.id, u.key, tuple(u.unit.gbox.affine), u.status) for u in plan.units]
    shutil.rmtree(tmp_path / "out")
