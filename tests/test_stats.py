"""Streaming per-band statistics (eochips.dataset.stats) against plain numpy on the pooled values.

Every expected value is computed here from the concatenated arrays with np.percentile,
np.mean, np.std, min and max. Integer bands of 1-2 bytes must match numpy exactly; float
bands (and int32/uint32) must be within the documented bound: for the q-th percentile
interpolated between the sorted neighbours x[i], x[i+1] with weight g,
|estimate - np.percentile| <= (2**-9 + 2**-23) * ((1 - g) |x[i]| + g |x[i+1]|) + 2**-126
(one histogram bin of the float32 bit pattern, one float32 ulp, float32 subnormals binned as 0).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from eochips.errors import RecipeError
from eochips.dataset.stats import FLOAT_REL_ERROR, BandStatistics, RunningStats

QS = [0, 1.5, 2, 25, 33.3, 50, 98.5, 100]
KEYS = ["0", "1.5", "2", "25", "33.3", "50", "98.5", "100"]
BOUND_REL = 2.0**-9 + 2.0**-23  # the module docstring's bound, restated independently
BOUND_ABS = 2.0**-126


def _feed(acc, chunks, nodata):
    for c in chunks:
        acc.add(c, nodata)
    return acc


def _kept(chunks, nodata):
    """The pooled values numpy should see: nodata and (for floats) non-finite removed."""
    v = np.concatenate([c.ravel() for c in chunks])
    keep = np.ones(v.shape, bool)
    if v.dtype.kind == "f":
        keep &= np.isfinite(v)
    if nodata is not None and not np.isnan(nodata):
        keep &= v != nodata
    return v[keep]


def _assert_within_bound(got: float, values64: np.ndarray, q: float) -> None:
    xs = np.sort(values64)
    n = xs.size
    v = (n - 1) * (q / 100)
    i = int(np.floor(v))
    j, g = min(i + 1, n - 1), v - i
    bound = BOUND_REL * ((1 - g) * abs(xs[i]) + g * abs(xs[j])) + BOUND_ABS
    want = np.percentile(values64, q)
    assert abs(got - want) <= bound, f"q={q}: got {got!r}, numpy {want!r}, bound {bound!r}"


# -- exact path: integers of 1 or 2 bytes ---------------------------------------------------


def _int_chunks(dtype, nodata, seed):
    """Six chips of different shapes; about 10 % nodata where there is a fill value."""
    rng = np.random.default_rng(seed)
    lo, hi = {"uint8": (0, 256), "int8": (-127, 128), "int16": (-500, 4001), "uint16": (1, 10001)}[dtype]
    chunks = []
    for shape in [(32, 32), (64, 48), (1, 500), (17, 3, 5), (128, 128), (7,)]:
        c = rng.integers(lo, hi, size=shape).astype(dtype)
        if nodata is not None:
            c[rng.random(shape) < 0.1] = nodata
        chunks.append(c)
    return chunks


INT_CASES = [("uint8", None), ("int8", -128), ("int16", -9999), ("uint16", 0)]


@pytest.mark.parametrize(("dtype", "nodata"), INT_CASES)
def test_integer_stats_equal_numpy_exactly(dtype, nodata):
    chunks = _int_chunks(dtype, nodata, seed=1)
    pooled = _kept(chunks, nodata)
    total = sum(c.size for c in chunks)
    assert pooled.size == total if nodata is None else 0 < pooled.size < total  # the fill really occurs
    res = _feed(RunningStats(dtype), chunks, nodata).result(QS)
    assert res["count"] == pooled.size
    assert res["mean"] == pytest.approx(np.mean(pooled), rel=1e-12)
    assert res["std"] == pytest.approx(np.std(pooled), rel=1e-12)
    assert res["minimum"] == float(pooled.min()) and res["maximum"] == float(pooled.max())
    assert list(res["percentiles"]) == KEYS
    for key, q in zip(KEYS, QS):
        assert res["percentiles"][key] == float(np.percentile(pooled, q)), key
    assert res["nonfinite"] == 0 and res["exact"] is True


def test_int16_dem_with_negative_values_default_percentiles():
    rng = np.random.default_rng(2)
    chunks = [rng.normal(200, 400, size=(64, 64)).round().clip(-430, 4000).astype(np.int16) for _ in range(5)]
    for c in chunks:
        c[:3, :] = -9999
    pooled = _kept(chunks, -9999)
    assert pooled.min() < 0
    res = _feed(RunningStats("int16"), chunks, -9999).result()
    assert res["percentiles"] == {"1.5": float(np.percentile(pooled, 1.5)), "98.5": float(np.percentile(pooled, 98.5))}
    assert res["percentiles"]["1.5"] < 0
    assert res["count"] == 5 * 61 * 64


def test_small_sparse_sets_match_numpy_bit_for_bit():
    """Few, distinct values: neighbours differ, so numpy's two-sided lerp rounding shows."""
    rng = np.random.default_rng(14)
    for _ in range(100):
        values = rng.integers(0, 65536, size=int(rng.integers(1, 200))).astype(np.uint16)
        acc = RunningStats("uint16")
        acc.add(values)
        got = acc.result(QS + [66.7, 90.1])["percentiles"]
        assert list(got.values()) == [float(np.percentile(values, q)) for q in QS + [66.7, 90.1]]


def test_int16_wide_gap_is_the_float64_percentile():
    """numpy subtracts neighbours in int16 and overflows for gaps > 32767; we follow the
    float64 definition (np.percentile of the values as float64)."""
    values = np.array([-30000, -30000, 30000, 30000], dtype=np.int16)
    acc = RunningStats("int16")
    acc.add(values)
    res = acc.result([50, 40])
    assert res["percentiles"] == {"50": 0.0, "40": float(np.percentile(values.astype(np.float64), 40))}
    assert res["percentiles"]["40"] == pytest.approx(-18000.0, rel=1e-12)  # v = 1.2: -30000 + 0.2 * 60000


@pytest.mark.parametrize(("dtype", "nodata"), INT_CASES)
def test_integer_merge_equals_one_accumulator(dtype, nodata):
    chunks = _int_chunks(dtype, nodata, seed=3)
    pooled = _kept(chunks, nodata)
    a = _feed(RunningStats(dtype), chunks[:2], nodata)
    b = _feed(RunningStats(dtype), chunks[2:], nodata)
    a.merge(b)
    merged = a.result(QS)
    assert merged["count"] == pooled.size
    assert merged["mean"] == pytest.approx(np.mean(pooled), rel=1e-12)
    assert merged["std"] == pytest.approx(np.std(pooled), rel=1e-12)
    assert [merged["percentiles"][k] for k in KEYS] == [float(np.percentile(pooled, q)) for q in QS]
    assert merged == _feed(RunningStats(dtype), chunks, nodata).result(QS)
    assert b.result()["count"] == _kept(chunks[2:], nodata).size  # other is unchanged


def test_narrower_integer_values_are_accepted():
    rng = np.random.default_rng(4)
    values = rng.integers(0, 256, size=1000).astype(np.uint8)
    acc = RunningStats("int16")
    acc.add(values)
    res = acc.result([50])
    assert res["percentiles"]["50"] == float(np.percentile(values, 50))
    assert res["mean"] == pytest.approx(np.mean(values), rel=1e-12)


def test_integer_nodata_the_dtype_cannot_hold_excludes_nothing():
    values = np.array([0, 1, 2, 65535], dtype=np.uint16)
    for nodata in (-9999, 0.5, float("nan"), 70000):
        acc = RunningStats("uint16")
        acc.add(values, nodata)
        assert acc.result()["count"] == 4, nodata
    acc = RunningStats("uint16")
    acc.add(values, 65535.0)  # an integral float is a fill value
    assert acc.result()["maximum"] == 2.0


# -- float path --------------------------------------------------------------------------


def _with_fill(rng, chunk, nodata, n_inf):
    """Set ~8 % of ``chunk`` to ``nodata`` (NaN if None) and ``n_inf`` pixels to +-inf."""
    chunk = chunk.copy()
    flat = chunk.reshape(-1)
    flat[rng.random(flat.size) < 0.08] = np.nan if nodata is None else nodata
    idx = rng.choice(flat.size, size=n_inf, replace=False)
    flat[idx] = np.where(np.arange(n_inf) % 2 == 0, np.inf, -np.inf)
    return chunk


def _dem(rng, shape):  # metres, -50..4000
    return rng.uniform(-50, 4000, size=shape)


def _backscatter(rng, shape):  # linear sigma0, lognormal in 1e-4..1
    return np.clip(np.exp(rng.normal(np.log(0.03), 1.5, size=shape)), 1e-4, 1)


def _reflectance(rng, shape):  # 0..1 with exact zeros
    v = rng.uniform(0, 1, size=shape)
    v[rng.random(shape) < 0.05] = 0.0
    return v


def _signed_decades(rng, shape):  # +-1e-30..1e30
    return rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-30, 30, size=shape)


def _bimodal(rng, shape):  # two clusters with a wide gap between them
    return np.where(rng.random(shape) < 0.5, rng.uniform(1, 1.001, shape), rng.uniform(1000, 1001, shape))


FLOAT_CASES = [
    ("float32", _dem, float("nan")),
    ("float32", _backscatter, None),  # NaNs without a declared nodata: counted as nonfinite
    ("float32", _bimodal, float("nan")),
    ("float64", _reflectance, -9999.0),
    ("float64", _signed_decades, float("nan")),
    ("float64", _dem, None),
]


def _float_chunks(dtype, make, nodata, seed):
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (32, 100), (5, 7), (128, 96), (1, 1000)]
    return [_with_fill(rng, make(rng, s).astype(dtype), nodata, n_inf=k) for s, k in zip(shapes, [3, 0, 2, 4, 1])]


def _nonfinite_expected(chunks, nodata):
    v = np.concatenate([c.ravel() for c in chunks])
    bad = ~np.isfinite(v)
    if nodata is not None and np.isnan(nodata):
        bad &= ~np.isnan(v)
    return int(bad.sum())


@pytest.mark.parametrize(("dtype", "make", "nodata"), FLOAT_CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_float_stats_within_bound_of_numpy(dtype, make, nodata):
    chunks = _float_chunks(dtype, make, nodata, seed=5)
    pooled = _kept(chunks, nodata)
    x64 = pooled.astype(np.float64)
    res = _feed(RunningStats(dtype), chunks, nodata).result(QS)
    assert res["count"] == pooled.size
    assert res["mean"] == pytest.approx(np.mean(x64), rel=1e-9)
    assert res["std"] == pytest.approx(np.std(x64), rel=1e-9)
    assert res["minimum"] == float(pooled.min()) and res["maximum"] == float(pooled.max())
    for key, q in zip(KEYS, QS):
        _assert_within_bound(res["percentiles"][key], x64, q)
    assert res["nonfinite"] == _nonfinite_expected(chunks, nodata) > 0
    assert res["exact"] is False


def test_float_percentiles_are_not_exact_but_close():
    """The bound above is met with room, yet the float path is a histogram estimate."""
    rng = np.random.default_rng(6)
    values = rng.lognormal(0, 2, size=20000).astype(np.float32)
    acc = RunningStats("float32")
    acc.add(values)
    got = acc.result([1.5, 50, 98.5])["percentiles"]
    want = np.percentile(values.astype(np.float64), [1.5, 50, 98.5])
    rel = np.abs(np.array(list(got.values())) - want) / want
    assert np.all(rel <= 2.0**-9) and np.any(rel > 0)


@pytest.mark.parametrize(("dtype", "make", "nodata"), FLOAT_CASES[:4], ids=lambda x: getattr(x, "__name__", str(x)))
def test_float_merge_equals_one_accumulator(dtype, make, nodata):
    chunks = _float_chunks(dtype, make, nodata, seed=7)
    x64 = _kept(chunks, nodata).astype(np.float64)
    a = _feed(RunningStats(dtype), chunks[:3], nodata)
    b = _feed(RunningStats(dtype), chunks[3:], nodata)
    a.merge(b)
    merged = a.result(QS)
    assert merged["count"] == x64.size
    assert merged["mean"] == pytest.approx(np.mean(x64), rel=1e-9)
    assert merged["std"] == pytest.approx(np.std(x64), rel=1e-9)
    for key, q in zip(KEYS, QS):
        _assert_within_bound(merged["percentiles"][key], x64, q)
    assert merged["nonfinite"] == _nonfinite_expected(chunks, nodata)
    single = _feed(RunningStats(dtype), chunks, nodata).result(QS)
    for field in ("count", "minimum", "maximum", "percentiles", "nonfinite"):
        assert merged[field] == single[field], field  # histogram and extremes are order-free
    assert merged["mean"] == pytest.approx(single["mean"], rel=1e-12)
    assert merged["std"] == pytest.approx(single["std"], rel=1e-12)


def test_large_offset_small_spread_keeps_precision():
    """sqrt(E[x^2] - E[x]^2) is 100 % wrong here; the shifted Chan update is not."""
    rng = np.random.default_rng(8)
    chunks = [1e8 + rng.normal(0, 1e-3, size=5000) for _ in range(10)]
    x = np.concatenate(chunks)
    halves = [_feed(RunningStats("float64"), chunks[:5], None), _feed(RunningStats("float64"), chunks[5:], None)]
    halves[0].merge(halves[1])
    res = halves[0].result([50])
    assert res["std"] == pytest.approx(np.std(x), rel=1e-9)
    assert res["mean"] == pytest.approx(np.mean(x), rel=1e-15)
    _assert_within_bound(res["percentiles"]["50"], x, 50)


@pytest.mark.parametrize(("dtype", "nodata"), [("int32", -(2**31)), ("uint32", 0)])
def test_32bit_integers_take_the_float_path(dtype, nodata):
    rng = np.random.default_rng(9)
    info = np.iinfo(dtype)
    chunks = []
    for shape in [(64, 64), (10, 33), (200,)]:
        c = rng.integers(info.min + 1, info.max, size=shape, dtype=dtype, endpoint=True)
        c[rng.random(shape) < 0.1] = nodata
        chunks.append(c)
    pooled = _kept(chunks, nodata)
    x64 = pooled.astype(np.float64)
    res = _feed(RunningStats(dtype), chunks, nodata).result(QS)
    assert res["count"] == pooled.size
    assert res["mean"] == pytest.approx(np.mean(x64), rel=1e-9)
    assert res["std"] == pytest.approx(np.std(x64), rel=1e-9)
    assert res["minimum"] == float(pooled.min()) and res["maximum"] == float(pooled.max())
    for key, q in zip(KEYS, QS):
        _assert_within_bound(res["percentiles"][key], x64, q)
    assert res["exact"] is False and res["nonfinite"] == 0


def test_nonfinite_counts_what_is_not_nodata():
    values = np.concatenate([np.full(10, np.nan), np.full(3, np.inf), np.full(2, -np.inf),
                             np.full(5, -9999.0), np.arange(30.0)]).astype(np.float32)
    # nodata -> (count, nonfinite), derived by hand from the 10 NaN, 3 +inf, 2 -inf, 5 fill, 30 finite
    expected = {"nan": (35, 5), None: (35, 15), -9999.0: (30, 15), "inf": (35, 12)}
    for nodata, (count, nonfinite) in expected.items():
        nd = {"nan": float("nan"), "inf": float("inf")}.get(nodata, nodata)
        acc = RunningStats("float32")
        acc.add(values, nd)
        res = acc.result()
        assert (res["count"], res["nonfinite"]) == (count, nonfinite), nodata
        assert res["minimum"] == (0.0 if nodata == -9999.0 else -9999.0)


def test_float32_nodata_compared_in_float32():
    values = np.array([0.1, 0.2, 0.3], dtype=np.float32)  # GDAL stores nodata 0.1 as a double
    acc = RunningStats("float32")
    acc.add(values, 0.1)
    assert acc.result()["count"] == 2


# -- edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint16", "float32", "int32"])
def test_empty_input_gives_count_zero(dtype):
    acc = RunningStats(dtype)
    want = {"count": 0, "mean": None, "std": None, "minimum": None, "maximum": None,
            "percentiles": {"1.5": None, "98.5": None}, "nonfinite": 0, "exact": dtype == "uint16"}
    assert acc.result() == want
    acc.add(np.zeros((0, 5), dtype=dtype))
    acc.add(np.zeros((4, 4), dtype=dtype), nodata=0)  # all nodata
    assert acc.result() == want
    if dtype == "float32":
        acc.add(np.full(3, np.nan, dtype=np.float32))  # NaN without nodata: counted, not kept
        assert acc.result() == {**want, "nonfinite": 3}


@pytest.mark.parametrize(("dtype", "value"), [("float32", 273.15), ("float64", -1234.5678), ("int16", -5),
                                              ("int32", 123456789)])
def test_constant_arrays(dtype, value):
    chunks = [np.full(shape, value, dtype=dtype) for shape in [(16, 16), (3, 7), (100,)]]
    pooled = np.concatenate([c.ravel() for c in chunks])
    res = _feed(RunningStats(dtype), chunks, None).result(QS)
    v = float(pooled[0])
    assert res["minimum"] == res["maximum"] == v
    assert all(res["percentiles"][k] == v for k in KEYS)
    assert res["mean"] == pytest.approx(np.mean(pooled.astype(np.float64)), rel=1e-12)
    assert res["std"] == pytest.approx(0.0, abs=1e-12 * abs(v))


def test_zero_and_negative_zero_pool_together():
    values = np.array([-0.0, 0.0, -0.0, 1.0], dtype=np.float32)
    acc = RunningStats("float32")
    acc.add(values)
    res = acc.result([0, 50, 100])
    assert res["percentiles"] == {"0": 0.0, "50": 0.0, "100": 1.0}


def test_many_exact_zeros_give_exact_zero_percentiles():
    rng = np.random.default_rng(13)
    values = np.where(rng.random(10000) < 0.3, 0.0, rng.uniform(0, 1, 10000)).astype(np.float32)
    values[:4] = [1e-40, -1e-41, 2e-39, -0.0]  # subnormals are binned as zero (within 2**-126)
    x64 = values.astype(np.float64)
    acc = RunningStats("float32")
    acc.add(values)
    res = acc.result([1.5, 25, 50])
    assert res["percentiles"]["1.5"] == 0.0 and res["percentiles"]["25"] == 0.0
    assert res["minimum"] == float(np.float32(-1e-41))
    _assert_within_bound(res["percentiles"]["50"], x64, 50)


def test_memory_does_not_grow_and_state_pickles():
    """Forty 256x256 float32 chips (10 MB of pixels) leave the state size unchanged."""
    rng = np.random.default_rng(10)
    acc = RunningStats("float32")
    acc.add(rng.uniform(0, 1, size=(256, 256)).astype(np.float32))
    size_one = len(pickle.dumps(acc))
    chunks = [rng.uniform(0, 1, size=(256, 256)).astype(np.float32) for _ in range(39)]
    _feed(acc, chunks, None)
    blob = pickle.dumps(acc)
    assert abs(len(blob) - size_one) < 256 and len(blob) < 2.1 * 2**20
    assert pickle.loads(blob).result()["count"] == 40 * 256 * 256


def test_documented_bound_constant():
    assert FLOAT_REL_ERROR == BOUND_REL


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(("acc_dtype", "values_dtype"), [("int16", "float32"), ("uint16", "int16"),
                                                        ("float32", "float64"), ("uint8", "uint16"),
                                                        ("int32", "float32")])
def test_lossy_dtype_raises_naming_both(acc_dtype, values_dtype):
    acc = RunningStats(acc_dtype)
    with pytest.raises(RecipeError, match=rf"{values_dtype}.*{acc_dtype}"):
        acc.add(np.ones(4, dtype=values_dtype))
    assert acc.result()["count"] == 0


@pytest.mark.parametrize("dtype", ["complex64", "bool", "U3", "not-a-dtype"])
def test_unsupported_dtype_raises(dtype):
    with pytest.raises(RecipeError, match="dtype"):
        RunningStats(dtype)


@pytest.mark.parametrize("bad", [[101], [-1], [float("nan")], "1.5", [True], 50])
def test_bad_percentiles_raise(bad):
    acc = RunningStats("uint8")
    acc.add(np.arange(10, dtype=np.uint8))
    with pytest.raises(RecipeError, match="percentile"):
        acc.result(bad)


def test_bad_nodata_raises():
    with pytest.raises(RecipeError, match="nodata 'x'"):
        RunningStats("float32").add(np.ones(3, np.float32), nodata="x")


def test_merge_requires_same_dtype():
    a, b = RunningStats("uint16"), RunningStats("int16")
    with pytest.raises(RecipeError, match="int16.*uint16"):
        a.merge(b)
    with pytest.raises(RecipeError, match="dict"):
        a.merge({})


# -- BandStatistics ----------------------------------------------------------------------------


def test_band_statistics_pools_dates_and_keeps_order():
    rng = np.random.default_rng(11)
    dates = {b: [rng.integers(0, 10000, size=(32, 32)).astype(np.uint16) for _ in range(3)] for b in ["B08", "B04"]}
    for arrays in dates.values():
        for a in arrays:
            a[0, :] = 0  # fill row
    bs = BandStatistics()
    for t in range(3):  # time-major, as in the merged chip file
        for band in ["B08", "B04"]:
            bs.add(band, dates[band][t], nodata=0)
    res = bs.result([1.5, 98.5])
    assert list(res) == ["B08", "B04"]
    for band, arrays in dates.items():
        pooled = _kept(arrays, 0)
        assert res[band]["count"] == pooled.size
        assert res[band]["percentiles"] == {"1.5": float(np.percentile(pooled, 1.5)),
                                            "98.5": float(np.percentile(pooled, 98.5))}
        assert res[band]["mean"] == pytest.approx(np.mean(pooled), rel=1e-12)


def test_band_statistics_merge_appends_new_names():
    rng = np.random.default_rng(12)
    b02, b03a, b03b, b04 = (rng.integers(0, 3000, size=500).astype(np.int16) for _ in range(4))
    w1, w2 = BandStatistics(), BandStatistics()
    w1.add("B02", b02)
    w1.add("B03", b03a)
    w2.add("B04", b04)
    w2.add("B03", b03b)
    w1.merge(w2)
    res = w1.result([50])
    assert list(res) == ["B02", "B03", "B04"]
    b03 = np.concatenate([b03a, b03b])
    assert res["B03"]["count"] == 1000
    assert res["B03"]["percentiles"]["50"] == float(np.percentile(b03, 50))
    assert res["B04"]["maximum"] == float(b04.max())


def test_band_statistics_dtype_conflicts_raise():
    bs = BandStatistics()
    bs.add("B04", np.ones(4, np.uint16))
    with pytest.raises(RecipeError, match=r"'B04'.*int16.*uint16"):
        bs.add("B04", np.ones(4, np.int16))
    other = BandStatistics()
    other.add("B01", np.ones(3, np.uint16))
    other.add("B04", np.ones(3, np.float32))
    with pytest.raises(RecipeError, match=r"'B04'.*float32.*uint16"):
        bs.merge(other)
    res = bs.result()  # all-or-nothing: B01 was not merged either
    assert list(res) == ["B04"] and res["B04"]["count"] == 4
    with pytest.raises(RecipeError, match="dtype"):
        bs.add("B05", np.ones(3, np.complex64))
    assert list(bs.result()) == ["B04"]
