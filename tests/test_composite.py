"""Compositors (eochips.composite) against independent references.

The references here never call the code under test: small arrays are checked against
per-pixel python loops that apply the validity rule literally (and, for the hand-built
case, against values written out by hand); the real Sentinel-2 test uses plain numpy
formulations (argmax over a validity stack, np.nanmedian then np.rint).
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import pytest

from conftest import REAL, needs_shared
from eochips.composite import (COMPOSITES, MAX_INDEXED_SCENES, MAX_SCENES, Composite, FirstValid, LaterOnTop, Median,
                               composite, get_compositor)
from eochips.errors import RecipeError

NAN = float("nan")


# --------------------------------------------------------------------------------------
# Independent references: per-pixel python loops

def pixel_valid(image, nodata, masked, y, x) -> bool:
    """The validity rule, literally: not masked, and no band is nodata (NaN-aware; NaN is
    never valid in a float band)."""
    if masked is not None and masked[y][x]:
        return False
    for b in range(len(nodata)):
        v = image[b][y][x]
        if isinstance(v, (float, np.floating)) and math.isnan(v):
            return False
        if not math.isnan(nodata[b]) and v == nodata[b]:
            return False
    return True


def loop_composite(kind, images, nodata, masks, dtype):
    """``(image, index, count)`` by explicit loops over pixels and scenes."""
    bands, h, w = images[0].shape
    masks = masks if masks is not None else [None] * len(images)
    image = np.zeros((bands, h, w), dtype)
    index = np.zeros((h, w), np.int16)
    count = np.zeros((h, w), np.uint16)
    for y in range(h):
        for x in range(w):
            ok = [i for i in range(len(images)) if pixel_valid(images[i], nodata, masks[i], y, x)]
            count[y, x] = len(ok)
            index[y, x] = -1 if not ok else (ok[0] if kind == "first-valid" else ok[-1])
            for b in range(bands):
                if not ok:
                    image[b, y, x] = nodata[b]
                elif kind == "median":
                    vals = sorted(float(images[i][b, y, x]) for i in ok)
                    k = len(vals)
                    m = vals[k // 2] if k % 2 else (vals[k // 2 - 1] + vals[k // 2]) / 2
                    # python's round() is round-half-to-even, like np.rint
                    image[b, y, x] = round(m) if np.dtype(dtype).kind in "ui" else m
                else:
                    image[b, y, x] = images[index[y, x]][b, y, x]
    return image, index, count


def assert_same_image(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # NaN == NaN for assert_array_equal


# --------------------------------------------------------------------------------------
# Hand-built uint16 case (fill 0): every interesting pixel written out

def hand_case():
    """2 bands, 3 scenes, 2 x 3 pixels; fill 0.

    pixel (0, 0): scene 0 has nodata in band 1 only -> whole pixel invalid there; scenes 1, 2 valid
    pixel (0, 1): scene 1 masked; scenes 0, 2 valid
    pixel (0, 2): valid only in the last scene
    pixel (1, 0): valid nowhere (each scene has a 0 in some band)
    pixel (1, 1): all three valid
    pixel (1, 2): scenes 0 and 1 valid (even count: median ties), scene 2 masked
    """
    s0 = np.array([[[10, 20, 0], [0, 11, 2]],
                   [[0, 21, 0], [5, 12, 3]]], np.uint16)
    s1 = np.array([[[30, 40, 0], [7, 13, 3]],
                   [[31, 41, 0], [0, 14, 4]]], np.uint16)
    s2 = np.array([[[50, 60, 70], [0, 15, 9]],
                   [[51, 61, 71], [0, 16, 9]]], np.uint16)
    m1 = np.array([[False, True, False], [False, False, False]])
    m2 = np.array([[False, False, False], [False, False, True]])
    return [s0, s1, s2], [None, m1, m2]


def test_first_valid_hand_values():
    images, masks = hand_case()
    acc = FirstValid(images[0].shape, np.uint16, [0, 0], index=True)
    for image, masked in zip(images, masks):
        acc.add(image, masked)
    r = acc.result()
    # (0,0): scene 0 invalid (band 1 is 0) so both bands come from scene 1, not band 0 from scene 0
    assert r.image[:, 0, 0].tolist() == [30, 31] and r.index[0, 0] == 1
    assert r.image[:, 0, 1].tolist() == [20, 21] and r.index[0, 1] == 0
    assert r.image[:, 0, 2].tolist() == [70, 71] and r.index[0, 2] == 2  # valid only in the last scene
    assert r.image[:, 1, 0].tolist() == [0, 0] and r.index[1, 0] == -1  # valid nowhere -> nodata
    assert r.count.tolist() == [[2, 2, 1], [0, 3, 2]]
    assert r.index.dtype == np.int16 and r.count.dtype == np.uint16 and r.image.dtype == np.uint16


def test_later_on_top_hand_values():
    images, masks = hand_case()
    acc = LaterOnTop(images[0].shape, np.uint16, [0, 0], index=True)
    for image, masked in zip(images, masks):
        acc.add(image, masked)
    r = acc.result()
    assert r.index.tolist() == [[2, 2, 2], [-1, 2, 1]]
    assert r.image[:, 1, 2].tolist() == [3, 4]  # scene 2 is masked there: scene 1 stays on top
    assert r.image[:, 1, 0].tolist() == [0, 0]


def test_median_hand_values():
    images, masks = hand_case()
    acc = Median(images[0].shape, np.uint16, [0, 0])
    for image, masked in zip(images, masks):
        acc.add(image, masked)
    r = acc.result()
    assert r.index is None
    # (1,2): band 0 median of {2, 3} = 2.5 -> 2 (half to even); band 1 of {3, 4} = 3.5 -> 4
    assert r.image[:, 1, 2].tolist() == [2, 4]
    assert r.image[:, 1, 1].tolist() == [13, 14]  # odd count: the middle value
    assert r.image[:, 0, 0].tolist() == [40, 41]  # (30+50)/2, (31+51)/2: scene 0 excluded whole
    assert r.image[:, 1, 0].tolist() == [0, 0]


# --------------------------------------------------------------------------------------
# Random small stacks against the loops, for every compositor and dtype

CASES = {
    # name: (dtype, nodata per band, value generator)
    "uint16-fill0": (np.uint16, [0, 0, 0], lambda rng, shape: rng.integers(0, 6, shape)),
    "int16-fill-9999": (np.int16, [-9999, -9999], lambda rng, shape: np.where(rng.random(shape) < 0.2, -9999,
                                                                               rng.integers(-3, 4, shape))),
    "float32-nan": (np.float32, [NAN, NAN], lambda rng, shape: np.where(rng.random(shape) < 0.2, np.nan,
                                                                         rng.integers(-8, 9, shape) / 4)),
    # a numeric float fill: -9999 is nodata and NaN is still never valid
    "float32-mixed": (np.float32, [NAN, -9999.0], lambda rng, shape: np.select(
        [rng.random(shape) < 0.15, rng.random(shape) < 0.15], [np.nan, -9999.0], rng.integers(0, 9, shape) / 4)),
}


@pytest.mark.parametrize("kind", sorted(COMPOSITES))
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n_scenes", [1, 4, 5])
def test_matches_pixel_loop(kind, case, n_scenes):
    dtype, nodata, gen = CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{kind} {case} {n_scenes}".encode()))
    shape = (len(nodata), 5, 6)
    images = [gen(rng, shape).astype(dtype) for _ in range(n_scenes)]
    for image in images:  # pixel (0, 0) is nodata in the last band of every scene
        image[-1, 0, 0] = nodata[-1]
    masks = [rng.random(shape[1:]) < 0.25 if i % 2 else None for i in range(n_scenes)]
    exp_image, exp_index, exp_count = loop_composite(kind, images, nodata, masks, dtype)
    assert (exp_count == 0).any() and (exp_count > 0).any()  # the case exercises both

    acc = get_compositor(kind)(shape, dtype, nodata, index=kind != "median")
    for image, masked in zip(images, masks):
        acc.add(image, masked)
    r = acc.result()
    assert isinstance(r, Composite)
    assert_same_image(r.image, exp_image)
    np.testing.assert_array_equal(r.count, exp_count)
    assert r.count.dtype == np.uint16
    if kind == "median":
        assert r.index is None
    else:
        assert r.index.dtype == np.int16
        np.testing.assert_array_equal(r.index, exp_index)


@pytest.mark.parametrize("kind", sorted(COMPOSITES))
def test_composite_wrapper_matches_loop(kind):
    images, masks = hand_case()
    exp_image, exp_index, exp_count = loop_composite(kind, images, [0, 0], masks, np.uint16)
    r = composite(iter(images), kind, "uint16", [0, 0], masks=masks, index=kind != "median")
    assert_same_image(r.image, exp_image)
    np.testing.assert_array_equal(r.count, exp_count)
    if kind != "median":
        np.testing.assert_array_equal(r.index, exp_index)


def test_index_false_gives_none_and_same_image():
    images, masks = hand_case()
    exp_image, _, _ = loop_composite("first-valid", images, [0, 0], masks, np.uint16)
    r = composite(images, "first-valid", np.uint16, [0, 0], masks=masks)
    assert r.index is None
    assert_same_image(r.image, exp_image)


def test_no_scene_added_is_all_nodata():
    r = FirstValid((2, 2, 2), np.int16, [-9999, 7], index=True).result()
    assert r.image[0].tolist() == [[-9999, -9999], [-9999, -9999]] and r.image[1].tolist() == [[7, 7], [7, 7]]
    assert r.index.tolist() == [[-1, -1], [-1, -1]] and r.count.tolist() == [[0, 0], [0, 0]]
    m = Median((1, 1, 2), np.float32, [NAN]).result()
    assert np.isnan(m.image).all() and m.count.tolist() == [[0, 0]]


def test_median_keeps_a_copy_of_a_reused_buffer():
    buf = np.array([[[1, 8]]], np.uint16)
    acc = Median(buf.shape, np.uint16, [0])
    acc.add(buf)
    buf[...] = [[[3, 8]]]  # caller reuses its read buffer for the next scene
    acc.add(buf)
    assert acc.result().image.tolist() == [[[2, 8]]]  # median of {1, 3} and {8, 8}


def test_result_is_a_snapshot():
    acc = LaterOnTop((1, 1, 1), np.uint16, [0])
    acc.add(np.array([[[5]]], np.uint16))
    first = acc.result()
    acc.add(np.array([[[9]]], np.uint16))
    assert first.image.tolist() == [[[5]]] and first.count.tolist() == [[1]]
    assert acc.result().image.tolist() == [[[9]]] and acc.result().count.tolist() == [[2]]


def test_priority_order_is_checked_for_painters_not_median():
    a = np.array([[[5]]], np.uint16)
    acc = FirstValid((1, 1, 1), np.uint16, [0])
    acc.add(a, priority=0)
    acc.add(a, priority=0)
    acc.add(a)  # no priority: nothing to check
    acc.add(a, priority=1)
    with pytest.raises(RecipeError, match=r"priority 0 after 1; add scenes in non-decreasing priority order"):
        acc.add(a, priority=0)
    assert acc.n_scenes == 4 and acc.result().count.tolist() == [[4]]  # the rejected add did not count
    with pytest.raises(RecipeError, match=r"priority must be an int or None; got 1.5"):
        LaterOnTop((1, 1, 1), np.uint16, [0]).add(a, priority=1.5)
    med = Median((1, 1, 1), np.uint16, [0])
    med.add(a, priority=3)
    med.add(a, priority=1)  # the median does not depend on add order
    assert med.result().count.tolist() == [[2]]


# --------------------------------------------------------------------------------------
# Real Sentinel-2 L2A pixels

S2_DIR = REAL / "s2l2a_multitemporal_exeter"
S2_DATES = ["exe_2024-08-01_12-21-19.tif", "exe_2024-08-16_12-21-11.tif", "exe_2024-08-26_12-21-11.tif"]
SCL_MASKED = [3, 8, 9, 10]  # cloud shadow, cloud medium / high probability, thin cirrus


@needs_shared
def test_real_sentinel2_three_dates():
    import rasterio

    images, masks = [], []
    for name in S2_DATES:
        with rasterio.open(S2_DIR / name) as ds:
            assert ds.count == 5 and ds.dtypes[0] == "uint16" and ds.nodata == 0
            images.append(ds.read([1, 2, 3, 4]))  # B02, B03, B04, B08
            # SCL was bilinear-resampled in this file: codes in {3, 8, 9, 10} are masked, as written
            masks.append(np.isin(ds.read(5), SCL_MASKED))
    stack = np.stack(images)  # (scene, band, y, x)
    valid = (stack != 0).all(axis=1) & ~np.stack(masks)  # (scene, y, x)
    anyv = valid.any(axis=0)
    n = len(images)

    first = np.where(anyv, valid.argmax(axis=0), -1)
    last = np.where(anyv, n - 1 - valid[::-1].argmax(axis=0), -1)

    def pick(src):
        out = np.take_along_axis(stack, np.maximum(src, 0)[None, None], axis=0)[0]
        return np.where(anyv, out, 0).astype(np.uint16)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        med = np.nanmedian(np.where(valid[:, None], stack.astype(np.float64), np.nan), axis=0)
    exp_median = np.where(anyv, np.rint(med), 0).astype(np.uint16)
    exp_count = valid.sum(axis=0)

    # the data exercise every case: no valid date, an even count, and first != last
    assert set(np.unique(exp_count)) == {0, 1, 2, 3}
    assert (first != last).any()

    for kind, exp_image, exp_index in [("first-valid", pick(first), first), ("later-on-top", pick(last), last),
                                       ("median", exp_median, None)]:
        acc = get_compositor(kind)(stack.shape[1:], np.uint16, [0, 0, 0, 0], index=exp_index is not None)
        for image, masked in zip(images, masks):
            acc.add(image, masked)
        r = acc.result()
        assert_same_image(r.image, exp_image)
        np.testing.assert_array_equal(r.count, exp_count)
        if exp_index is not None:
            np.testing.assert_array_equal(r.index, exp_index)


# --------------------------------------------------------------------------------------
# Bad inputs

def test_unknown_compositor_lists_valid_names():
    with pytest.raises(RecipeError, match=r"unknown composite 'mean'; valid: 'first-valid', 'later-on-top', 'median'"):
        get_compositor("mean")
    with pytest.raises(RecipeError, match=r"unknown composite 'mean'"):
        composite([np.zeros((1, 1, 1), np.uint16)], "mean", np.uint16, [0])


@pytest.mark.parametrize("kind", sorted(COMPOSITES))
def test_bad_constructor_arguments(kind):
    cls = COMPOSITES[kind]
    with pytest.raises(RecipeError, match=r"nodata has 1 values for 2 bands"):
        cls((2, 3, 3), np.uint16, [0])
    with pytest.raises(RecipeError, match=r"nodata\[1\] is NaN but dtype int16 is an integer type"):
        cls((2, 3, 3), np.int16, [0, NAN])
    with pytest.raises(RecipeError, match=r"nodata\[0\] = -9999 is not representable in uint16; "
                                          r"valid: an integer in 0\.\.65535"):
        cls((1, 3, 3), np.uint16, [-9999])
    with pytest.raises(RecipeError, match=r"nodata\[0\] = 0\.5 is not representable in uint8"):
        cls((1, 3, 3), np.uint8, [0.5])
    with pytest.raises(RecipeError, match=r"nodata must be a sequence"):
        cls((1, 3, 3), np.uint16, 0)
    with pytest.raises(RecipeError, match=r"shape must be \(band, y, x\), three positive ints; got \(3, 3\)"):
        cls((3, 3), np.uint16, [0, 0, 0])
    with pytest.raises(RecipeError, match=r"dtype 'bool' is not supported"):
        cls((1, 3, 3), "bool", [0])
    with pytest.raises(RecipeError, match=r"overflows float16"):
        cls((1, 3, 3), np.float16, [1e6])


@pytest.mark.parametrize("kind", sorted(COMPOSITES))
def test_bad_add_arguments_leave_accumulator_unchanged(kind):
    acc = COMPOSITES[kind]((2, 3, 4), np.uint16, [0, 0])
    with pytest.raises(RecipeError, match=r"image shape \(2, 4, 3\) does not match the expected "
                                          r"\(band, y, x\) = \(2, 3, 4\)"):
        acc.add(np.ones((2, 4, 3), np.uint16))
    with pytest.raises(RecipeError, match=r"image dtype int16 does not match the expected dtype uint16"):
        acc.add(np.ones((2, 3, 4), np.int16))
    with pytest.raises(RecipeError, match=r"masked must be a bool \(y, x\) = \(3, 4\) array; got uint8 \(3, 4\)"):
        acc.add(np.ones((2, 3, 4), np.uint16), np.zeros((3, 4), np.uint8))
    with pytest.raises(RecipeError, match=r"masked must be a bool .* got bool \(4, 3\)"):
        acc.add(np.ones((2, 3, 4), np.uint16), np.zeros((4, 3), bool))
    assert acc.n_scenes == 0 and acc.result().count.sum() == 0


def test_median_refuses_index():
    with pytest.raises(RecipeError, match=r"median: index=True is not supported"):
        Median((1, 2, 2), np.uint16, [0], index=True)


def test_composite_wrapper_errors():
    with pytest.raises(RecipeError, match=r"needs at least one image; got none"):
        composite([], "median", np.uint16, [0])
    one = np.ones((1, 2, 2), np.uint16)
    with pytest.raises(RecipeError, match=r"masks has fewer entries than images"):
        composite([one, one], "first-valid", np.uint16, [0], masks=[None])
    with pytest.raises(RecipeError, match=r"masks has more entries than the 1 images"):
        composite([one], "first-valid", np.uint16, [0], masks=[None, None])


def test_index_scene_limit():
    a = np.ones((1, 1, 1), np.uint16)
    acc = FirstValid((1, 1, 1), np.uint16, [0], index=True)
    for _ in range(MAX_INDEXED_SCENES):
        acc.add(a)
    with pytest.raises(RecipeError, match=r"at most 32767 scenes per group with index=True .* scene 32768"):
        acc.add(a)
    r = acc.result()
    assert r.index.tolist() == [[0]] and r.count.tolist() == [[32767]]
    # without index the limit is the uint16 count, and the last scene still lands on top
    acc = LaterOnTop((1, 1, 1), np.uint16, [0])
    for i in range(MAX_SCENES):
        acc.add(np.full((1, 1, 1), i % 60000 + 1, np.uint16))
    with pytest.raises(RecipeError, match=r"at most 65535 scenes per group \(count is uint16\); scene 65536"):
        acc.add(a)
    r = acc.result()
    assert r.count.tolist() == [[65535]] and r.image.tolist() == [[[(MAX_SCENES - 1) % 60000 + 1]]]
