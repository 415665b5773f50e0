"""CORINE vector labels (issue 13 item 2): CLC codes burnt as a uint16 reference map, the clc-19
multi-labels, the UNLABELED share filter.

The imagery is the real BigEarthNet v1 patch of tile T29UPU (``../shared/data/real/
bigearthnet_patch_29UPU``, EPSG:32629, 120 px at 10 m); no real CORINE extract is available, so
the test writes a CLC-coded GeoPackage in EPSG:3035 over it (text ``Code_18`` as in CLC 2018).
References are independent of eochips: geopandas/pyproj for the transform to UTM and
``rasterio.features.rasterize`` for the burn; ``bigearthnet-common`` (kai-tub, BigEarthNet's
own tables) for the 19-class names.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REAL, needs_shared

PATCH = REAL / "bigearthnet_patch_29UPU"
STEM = "S2A_MSIL2A_20170617T113321_36_85"
UNLABELED = [122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999]


def _patch_grid():
    import rasterio

    with rasterio.open(PATCH / f"{STEM}_B02.tif") as ds:
        return ds.crs.to_wkt(), tuple(ds.transform)[:6], ds.shape, tuple(ds.bounds)


def _write_clc(path: Path, bounds_utm) -> "object":
    """A CLC-like GeoPackage in EPSG:3035 over the patch: 211 (west, with a hole that nothing
    covers), 231 (east, drawn over 211 where they overlap), a 122 road strip last, and a 311
    polygon 50 km away (outside the grid). Returns the GeoDataFrame written."""
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    to3035 = Transformer.from_crs("EPSG:32629", "EPSG:3035", always_xy=True)
    left, bottom, right, top = bounds_utm

    def poly(coords_utm, holes=()):  # vertices given in UTM, stored in EPSG:3035 (as CLC is)
        xs, ys = to3035.transform(*zip(*coords_utm))
        hs = [list(zip(*to3035.transform(*zip(*h)))) for h in holes]
        return shapely.Polygon(list(zip(xs, ys)), hs)

    m = 300.0
    mid = left + 653.0
    west = poly([(left - m, bottom - m), (mid + 40, bottom - m), (mid - 37, top + m), (left - m, top + m)],
                holes=[[(left + 203, bottom + 311), (left + 341, bottom + 318), (left + 322, bottom + 437), (left + 215, bottom + 452)]])
    east = poly([(mid - 20, bottom - m), (right + m, bottom - m), (right + m, top + m), (mid - 95, top + m)])
    road = poly([(left - m, top - 417), (right + m, top - 455), (right + m, top - 487), (left - m, top - 446)])
    far = poly([(left + 50_000, bottom), (left + 51_000, bottom), (left + 51_000, top), (left + 50_000, top)])
    gdf = gpd.GeoDataFrame({"Code_18": ["211", "231", "122", "311"], "ID": ["EU_1", "EU_2", "EU_3", "EU_4"]},
                           geometry=[west, east, road, far], crs="EPSG:3035")
    gdf.to_file(path, driver="GPKG", layer="U2018_CLC2018_V2020_20u1")
    return gdf


def _spec(path, **kw):
    """The label spec a recipe's labels section gives (the plan's own :func:`label_spec`)."""
    from eochips.config.models import LabelsConfig
    from eochips.plan import label_spec

    cfg = LabelsConfig(vector=str(path), class_field="Code_18", burn="value", fill=999, table="clc-19", **kw)
    return label_spec(SimpleNamespace(labels=cfg, grid=SimpleNamespace(kind="scene", path=None), filters=[]))


@needs_shared
def test_reference_map_of_the_real_patch_equals_rasterio(tmp_path):
    """The BigEarthNet patch built through the unit code path (``chips.process_batch``: labels,
    metrics, filters, per-band layout): its ``{patch}_reference_map.tif`` is uint16 CLC codes,
    999 where no polygon lies, DEFLATE + predictor 2 with no colour table, equal pixel for pixel
    to rasterio.features.rasterize of the polygons transformed to UTM by geopandas (file order,
    later over earlier, pixel centres); ``label_names`` = ['Arable land', 'Pastures']."""
    import geopandas as gpd
    import rasterio
    from affine import Affine
    from rasterio.features import rasterize

    from eochips.chips import LayerRead, SceneRead, StepRead, UnitTask, process_batch
    from eochips.config.models import LabelFractionFilter, PerBandLayout
    from eochips.profiles import BandSpec

    crs, tr, shape, bounds = _patch_grid()
    gpkg = tmp_path / "clc.gpkg"
    _write_clc(gpkg, bounds)
    spec = _spec(gpkg)
    assert spec.dtype == "uint16" and spec.fill == 999 and spec.colormap == ()

    b02 = str(PATCH / f"{STEM}_B02.tif")
    step = StepRead((SceneRead(STEM, "2017-06-17T11:33:21+00:00", "primary", (("B02", b02),)),))
    layer = LayerRead("s2", (BandSpec("B02", "B02", 1, "uint16", None, 0.0001, 0.0, 10, "nearest"),), None, (step,))
    ben = LabelFractionFilter(kind="label-fraction", classes=UNLABELED, max_fraction=0.25, strict=True)
    task = UnitTask(unit_id=STEM, key=(0, 0, 0), crs=crs, transform=tr, shape=shape, layers=(layer,), out=str(tmp_path / "out"),
                    labels=spec, label_bounds=bounds, filters=(ben,),
                    layouts=(PerBandLayout(kind="per-band", path="patches/{unit}", labels="{unit}_reference_map.tif"),))
    (res,) = process_batch([task])
    assert res.status == "kept", res.reason
    ref_rel = f"patches/{STEM}/{STEM}_reference_map.tif"
    assert ref_rel in res.files and f"patches/{STEM}/{STEM}_B02.tif" in res.files

    with rasterio.open(tmp_path / "out" / ref_rel) as ds:
        got = ds.read(1)
        assert ds.dtypes == ("uint16",) and ds.shape == (120, 120) and ds.crs.to_epsg() == 32629
        assert tuple(ds.transform)[:6] == tr
        assert ds.compression.name == "deflate"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        with pytest.raises(ValueError):
            ds.colormap(1)

    utm = gpd.read_file(gpkg).to_crs(crs)  # independent: geopandas/pyproj, then GDAL's burn via rasterio
    want = rasterize(zip(utm.geometry, utm["Code_18"].astype(int)), out_shape=shape, transform=Affine(*tr), fill=999,
                     dtype="uint16", all_touched=False)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    codes, counts = np.unique(want, return_counts=True)
    hist = dict(zip(codes.tolist(), counts.tolist()))
    assert set(hist) == {122, 211, 231, 999} and hist[999] > 50 and hist[122] > 200  # the hole, the road
    assert res.metrics["label_hist"] == hist
    assert res.metrics["label_names"] == ["Arable land", "Pastures"]
    assert res.metrics["label_class_pixels"] == hist[122] + hist[999]  # UNLABELED share < 25 %: kept

    # the same polygons as CLC numbers (an integer field) burn the same map
    num = gpd.read_file(gpkg)
    num["Code_18"] = num["Code_18"].astype(int)
    num.to_file(tmp_path / "clc_int.gpkg", driver="GPKG")
    from eochips.chips import read_labels
    from dataclasses import replace

    same, _ = read_labels(replace(task, labels=_spec(tmp_path / "clc_int.gpkg")))
    np.testing.assert_array_equal(same, want)


@needs_shared
def test_uint8_class_map_unchanged_by_value_mode(tmp_path):
    """``burn: classes`` keeps its uint8 map with colours: the same polygons, classes 211 -> 1,
    231 -> 2, 122 -> 3, 311 -> 4, equal rasterio.features.rasterize of the class ids (fill 0)."""
    import geopandas as gpd
    from affine import Affine
    from rasterio.features import rasterize

    from eochips.config.models import LabelsConfig
    from eochips.labels import rasterize_vector
    from eochips.plan import label_spec

    crs, tr, shape, bounds = _patch_grid()
    gpkg = tmp_path / "clc.gpkg"
    _write_clc(gpkg, bounds)
    classes = {"211": 1, "231": 2, "122": 3, "311": 4}
    cfg = LabelsConfig(vector=str(gpkg), class_field="Code_18", classes=classes)
    spec = label_spec(SimpleNamespace(labels=cfg, grid=SimpleNamespace(kind="scene", path=None), filters=[]))
    assert spec.dtype == "uint8" and spec.fill == 0 and len(spec.colormap) == 5
    assert repr(spec).count("burn") == 0  # new fields stay out of the fingerprint unless set
    got = rasterize_vector(str(gpkg), "Code_18", classes, crs, tr, shape, bounds)
    utm = gpd.read_file(gpkg).to_crs(crs)
    want = rasterize(zip(utm.geometry, utm["Code_18"].map(classes)), out_shape=shape, transform=Affine(*tr), fill=0,
                     dtype="uint8")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_clc19_table_matches_bigearthnet_common():
    """Every CLC level-3 code of bigearthnet-common's ``CLC_LV3_TO_CLC_CODE`` has, in our clc-19
    table, the name ``OLD2NEW_LABELS_DICT[its level-3 name]`` (None or absent: UNLABELED); the table
    knows no other code but 999 (uncovered, UNLABELED); the 19 names are BigEarthNet v2's."""
    from bigearthnet_common.constants import CLC_LV3_TO_CLC_CODE, OLD2NEW_LABELS_DICT

    from eochips.labels.tables import CLC_19, CLC_19_NAMES, CLC_19_UNLABELED, label_names

    missing = sorted(n for n in CLC_LV3_TO_CLC_CODE if n not in OLD2NEW_LABELS_DICT)
    assert missing == ["Glaciers and perpetual snow"]  # 335: not one of BigEarthNet v1's 43 classes, so no v2 class
    theirs = {int(code): OLD2NEW_LABELS_DICT.get(name) for name, code in CLC_LV3_TO_CLC_CODE.items()}
    assert len(theirs) == 44
    ours = {c: CLC_19.get(c) for c in theirs}
    assert ours == theirs
    assert {c for c, n in theirs.items() if n is None} | {999} == set(CLC_19_UNLABELED)
    assert set(CLC_19) == {c for c, n in theirs.items() if n is not None}
    assert sorted(CLC_19_NAMES) == sorted({n for n in theirs.values() if n is not None}) and len(CLC_19_NAMES) == 19
    assert label_names({211: 5, 212: 1, 231: 3, 122: 40, 999: 10, 311: 0}) == ["Arable land", "Pastures"]
    assert label_names({999: 14400}) == []


def test_label_fraction_on_uint16_codes():
    """The BigEarthNet rule (UNLABELED codes incl. 999, max_fraction 0.25, strict) on uint16
    maps: exactly 25 % UNLABELED is dropped, one pixel less is kept; codes above 255 count (a
    uint8 cast would have lost 999 and 423)."""
    from eochips.config.models import LabelFractionFilter
    from eochips.filters import label_fraction_check

    rule = LabelFractionFilter(kind="label-fraction", classes=UNLABELED, max_fraction=0.25, strict=True)
    m = np.full((120, 120), 211, np.uint16)
    flat = m.reshape(-1)
    flat[:3000] = 999
    flat[3000:3500] = 423
    flat[3500:3600] = 122  # 3600 of 14400 = 25 %
    measured, reason = label_fraction_check(rule, m)
    assert measured == {"label_class_pixels": 3600}
    assert reason is not None and reason.code == "label-fraction" and ">= 0.25" in reason.message
    flat[3599] = 231
    measured, reason = label_fraction_check(rule, m)
    assert measured == {"label_class_pixels": 3599} and reason is None
    # 999 - 768 = 231 and 423 - 256 = 167: the codes a uint8 map would have held instead
    assert label_fraction_check(rule, m.astype(np.uint8))[0] == {"label_class_pixels": 99}  # only the 122s


def test_config_errors_name_the_field(tmp_path):
    """Bad combinations are refused with the field named and what is valid."""
    from pydantic import ValidationError

    from eochips.config.models import LabelsConfig

    v = tmp_path / "clc.gpkg"
    v.write_bytes(b"")
    base = {"vector": str(v), "class_field": "Code_18"}
    cases = [
        ({"burn": "value", "dtype": "uint8"}, "labels.dtype: uint8 cannot hold burn: value"),
        ({"burn": "value", "fill": 70000}, "less than or equal to 65535"),
        ({"classes": {"211": 1}, "fill": 999}, "labels.fill 999 does not fit the uint8 class map"),
        ({"burn": "value", "fill": 0, "table": "clc-19"}, "labels.fill 0 is not a code of labels.table 'clc-19'"),
        ({"classes": {"211": 1}, "table": "clc-19"}, "needs burn: value"),
        ({}, "need class_field and classes"),
        ({"burn": "value", "class_field": None}, "burn: value need class_field"),
        ({"table": "clc-43", "burn": "value"}, "clc-19"),
    ]
    for extra, msg in cases:
        with pytest.raises(ValidationError, match=msg):
            LabelsConfig(**{**base, **extra})
    with pytest.raises(ValidationError, match="needs labels.vector"):
        LabelsConfig(burn="value")
    with pytest.raises(ValidationError, match="labels.fill is the class of pixels no polygon covers; it needs labels.vector"):
        LabelsConfig(raster=str(v), fill=3)
    with pytest.raises(ValidationError, match="labels.dtype: uint16 is for vector labels"):
        LabelsConfig(raster=str(v), dtype="uint16")
    ok = LabelsConfig(**base, burn="value", fill=999, table="clc-19")
    assert (ok.class_dtype, ok.fill_class) == ("uint16", 999)
    assert (LabelsConfig(**base, classes={"a": 1}).class_dtype, LabelsConfig(**base, classes={"a": 1}).fill_class) == ("uint8", 0)


@needs_shared
@pytest.mark.parametrize("codes, msg", [
    (["211", "2x1"], "feature FID 2 has Code_18 = '2x1', not a whole number"),
    (["211", "70000"], "feature FID 2 has Code_18 = '70000', outside 0..65535"),
    (["211", "21.5"], "not a whole number"),
    (["211", None], "FID 2 has Code_18 = null"),
    (["211", "990"], "feature FID 2 has Code_18 = '990', not a code of labels.table 'clc-19'"),
])
def test_bad_codes_name_the_feature(tmp_path, codes, msg):
    """burn: value refuses a value it cannot burn, naming the feature's FID and value."""
    import geopandas as gpd
    import shapely

    from eochips.errors import LabelError
    from eochips.labels import rasterize_vector

    crs, tr, shape, bounds = _patch_grid()
    box = shapely.box(*bounds)
    path = tmp_path / "bad.gpkg"
    gpd.GeoDataFrame({"Code_18": codes}, geometry=[box, box.buffer(-100)], crs=crs).to_crs("EPSG:3035").to_file(path)
    with pytest.raises(LabelError, match=msg):
        rasterize_vector(str(path), "Code_18", {}, crs, tr, shape, bounds, burn="value", dtype="uint16", fill=999,
                         table="clc-19")


@needs_shared
def test_row_bands_equal_units_burnt_alone(tmp_path):
    """Units cut from their row's band (one rasterisation per row of units, large polygons cut to
    the band) equal each unit rasterised on its own by rasterio from the whole polygons: a 3 x 4
    grid of 40 px units over the patch's polygons and a 900-vertex one."""
    import geopandas as gpd
    from affine import Affine
    from rasterio.features import rasterize

    from eochips.labels import rasterize_vector

    import pandas as pd
    import shapely

    crs, tr, _, bounds = _patch_grid()
    gpkg = tmp_path / "clc.gpkg"
    gdf = _write_clc(gpkg, bounds)
    # a wavy 900-vertex forest over several units and rows (cut to each band before burning), last
    t = np.linspace(0, 2 * np.pi, 900, endpoint=False)
    r = 380 * (1 + 0.2 * np.sin(7 * t))
    cx, cy = bounds[0] + 610.0, bounds[3] - 590.0
    forest = gpd.GeoSeries([shapely.Polygon(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]))], crs=crs).to_crs(3035)
    gdf = pd.concat([gdf, gpd.GeoDataFrame({"Code_18": ["311"], "ID": ["EU_5"]}, geometry=forest.values, crs="EPSG:3035")])
    gpkg = tmp_path / "clc_forest.gpkg"
    gdf.to_file(gpkg, driver="GPKG")
    utm = gpd.read_file(gpkg).to_crs(crs)
    assert shapely.get_num_coordinates(utm.geometry.values[-1]) > 64 and len(utm) == 5
    n = 40
    grid_bounds = (bounds[0], bounds[3] - 3 * n * 10, bounds[0] + 4 * n * 10, bounds[3])
    seen: set[int] = set()
    for r in range(3):
        for c in range(4):
            t = (10.0, 0.0, bounds[0] + c * n * 10, 0.0, -10.0, bounds[3] - r * n * 10)
            got = rasterize_vector(str(gpkg), "Code_18", {}, crs, t, (n, n), grid_bounds, burn="value", dtype="uint16",
                                   fill=999)
            want = rasterize(zip(utm.geometry, utm["Code_18"].astype(int)), out_shape=(n, n), transform=Affine(*t),
                             fill=999, dtype="uint16")
            np.testing.assert_array_equal(got, want, err_msg=f"unit row {r} col {c}")
            seen |= set(np.unique(got).tolist())
    assert seen == {122, 211, 231, 311, 999}


@needs_shared
def test_plan_time_label_fraction_on_codes(tmp_path):
    """The plan's label pre-scan (``plan._scan_labels``, a leading label-fraction filter) on
    uint16 codes: 36 units of 20 px over the patch; a unit is dropped exactly when its
    UNLABELED share (122 road + 999 hole, from an independent rasterio burn) is >= 10 %; its
    ``label_info`` holds the codes' pixel counts and the fill (999) count."""
    import geopandas as gpd
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from rasterio.features import rasterize

    from eochips.config.models import LabelFractionFilter, LabelsConfig, ReadingConfig
    from eochips.geo import Grid, Unit
    from eochips.plan import UnitPlan, _scan_labels, label_spec

    crs, tr, shape, bounds = _patch_grid()
    gpkg = tmp_path / "clc.gpkg"
    _write_clc(gpkg, bounds)
    rule = LabelFractionFilter(kind="label-fraction", classes=UNLABELED, max_fraction=0.10, strict=True)
    recipe = SimpleNamespace(labels=LabelsConfig(vector=str(gpkg), class_field="Code_18", burn="value", fill=999, table="clc-19"),
                             grid=SimpleNamespace(kind="scene", path=None), filters=[rule], reading=ReadingConfig())
    spec = label_spec(recipe)
    grid = Grid(0, STEM, GeoBox(shape, Affine(*tr), crs))
    n = 20
    units = [UnitPlan(Unit(0, r, c, GeoBox((n, n), Affine(*tr) * Affine.translation(c * n, r * n), crs)), f"u{r}{c}")
             for r in range(6) for c in range(6)]
    _scan_labels(recipe, spec, units, [grid])
    utm = gpd.read_file(gpkg).to_crs(crs)
    want = rasterize(zip(utm.geometry, utm["Code_18"].astype(int)), out_shape=shape, transform=Affine(*tr), fill=999, dtype="uint16")
    dropped = 0
    for up in units:
        block = want[up.unit.row * n:(up.unit.row + 1) * n, up.unit.col * n:(up.unit.col + 1) * n]
        codes, counts = np.unique(block, return_counts=True)
        assert up.label_info["class_pixels"] == dict(zip(codes.tolist(), counts.tolist()))
        assert up.label_info["label_nodata_pixels"] == int((block == 999).sum())
        frac = np.isin(block, UNLABELED).mean()
        assert (up.status == "dropped") == (frac >= 0.10), (up.id, frac)
        dropped += up.status == "dropped"
        assert up.code in ("", "label-fraction")
    assert 0 < dropped < len(units)


def test_label_fraction_classes_must_fit_the_class_map(tmp_path):
    """A label-fraction class the class map cannot hold (999 on a uint8 map) would never match
    (a filter that silently keeps everything): the plan refuses it, naming the filter."""
    from eochips.config.models import LabelFractionFilter, LabelsConfig
    from eochips.errors import LabelError
    from eochips.plan import label_spec

    v = tmp_path / "clc.gpkg"
    v.write_bytes(b"")
    rule = LabelFractionFilter(kind="label-fraction", classes=[0, 999], max_fraction=0.25)
    grid = SimpleNamespace(kind="scene", path=None)
    cfg = LabelsConfig(vector=str(v), class_field="Code_18", classes={"211": 1})
    with pytest.raises(LabelError, match=r"filters\[1\] \(label-fraction\): class\(es\) \[999\] do not fit the uint8 class map"):
        label_spec(SimpleNamespace(labels=cfg, grid=grid, filters=[SimpleNamespace(kind="nodata"), rule]))
    wide = LabelsConfig(vector=str(v), class_field="Code_18", burn="value", fill=999, table="clc-19")
    assert label_spec(SimpleNamespace(labels=wide, grid=grid, filters=[rule])).dtype == "uint16"
