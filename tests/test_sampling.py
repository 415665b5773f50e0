"""Unit sampling (eochips.sampling) against independent numpy / plain-python oracles.

The class-balance oracle is seed 001's rule (ClarkCGA
multi-temporal-crop-classification-training-data @82cca1a, chip sampling script), typed
again here as a literal per-chip loop; the CDL -> 13 class table is typed again too, so
nothing below the raster read depends on eochips.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from eochips.errors import RecipeError
from eochips.sampling import (
    SAMPLERS,
    all_units,
    class_balance,
    class_balance_weights,
    get_sampler,
    random_n,
)

# CDL code -> class (1..13); 0 = no data. Typed independently of eochips.labels.
CDL13_SPEC = {
    1: [37, 152, 176], 2: [141, 142, 143], 3: [1], 4: [5], 5: [190, 195],
    6: [121, 122, 123, 124, 131], 7: [111], 8: [24], 9: [36], 10: [61], 11: [2], 12: [4],
    13: [3, 6, *range(10, 15), *range(21, 24), *range(25, 36), 38, 39, *range(41, 61), *range(62, 73),
         *range(74, 78), 81, 82, 83, 87, 88, 92, 112, *range(204, 251), 254],
}
CDL_TO_CLASS = {code: cls for cls, codes in CDL13_SPEC.items() for code in codes}
N_CLASSES = 13

# Real CDL codes covering all 13 classes (13 -> 3 Durum Wheat, 222 Squash).
CODES = [37, 176, 141, 142, 1, 5, 190, 121, 131, 111, 24, 36, 61, 2, 4, 3, 222]
SIZE, BLOCK, CHIP = 256, 8, 32  # px; 8 x 8 chips of 4 x 4 blocks
BPC = CHIP // BLOCK  # blocks per chip side
# Chips (row, col) made poor on purpose, as lists of the 16 block codes of the chip.
POOR_CHIPS = {
    (0, 0): [1] * 10 + [5] * 6,  # 2 codes
    (0, 1): [24] * 16,  # all one code
    (0, 2): [0] * 16,  # all no data: sum(counts) == 0
    (0, 3): [37, 141, 1, 5, 190, 121] + [24] * 10,  # exactly 7 classes: below the rule
    (0, 4): [37, 141, 1, 5, 190, 121, 111] + [24] * 9,  # exactly 8 classes: at the rule
    (0, 5): [0] * 6 + [37, 141, 142, 1, 5, 190, 121, 111, 36, 61],  # 9 classes and some no data
}


def seed_weight(counts) -> float:
    """Seed 001's chip weight, literally (plus weight 0 for an all-no-data chip)."""
    counts = [int(v) for v in counts]
    if sum(counts) == 0:
        return 0.0
    weight = 1 - (max(counts) - min(counts)) / sum(counts)
    if sum(1 for v in counts if v != 0) < 8:  # "chips with fewer than 8 classes are punished"
        weight = weight - 1
    if weight < 0:
        weight = 0
    return float(weight)


def expected_keep(weights: np.ndarray, n: int, seed: int, draws: int, tie_low_index_first: bool = True) -> set[int]:
    """Top-n units of the seeded multinomial draw counts, ties by original index."""
    p = weights / weights.sum()
    hits = np.random.default_rng(seed).multinomial(draws, p)
    tie = 1 if tie_low_index_first else -1
    ranked = sorted(range(hits.size), key=lambda i: (-hits[i], tie * i))
    return set([i for i in ranked if hits[i] > 0][:n])


@pytest.fixture(scope="module")
def cdl_chips(tmp_path_factory):
    """Write the CDL raster, read it back chip by chip; return (counts, independent weights)."""
    rng = np.random.default_rng(20240601)
    blocks = np.zeros((SIZE // BLOCK, SIZE // BLOCK), dtype=np.uint8)
    for r in range(SIZE // CHIP):
        for c in range(SIZE // CHIP):
            if (r, c) in POOR_CHIPS:
                codes = np.array(POOR_CHIPS[(r, c)], dtype=np.uint8)
            else:  # a random palette of 2..14 codes per chip: chips on both sides of the rule
                palette = rng.choice(CODES, size=rng.integers(2, 15), replace=False)
                codes = rng.choice(palette, size=BPC * BPC)
            blocks[r * BPC:(r + 1) * BPC, c * BPC:(c + 1) * BPC] = codes.reshape(BPC, BPC)
    raster = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=np.uint8))

    path = tmp_path_factory.mktemp("cdl") / "cdl.tif"
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8", crs="EPSG:5070",
                   transform=from_origin(-2_000_000.0, 2_000_000.0, 30.0, 30.0), nodata=0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(raster, 1)

    lut = np.zeros(256, dtype=np.uint8)
    for code, cls in CDL_TO_CLASS.items():
        lut[code] = cls
    counts, weights = [], []
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 5070 and src.res == (30.0, 30.0)
        for r in range(SIZE // CHIP):
            for c in range(SIZE // CHIP):
                chip = lut[src.read(1, window=Window(c * CHIP, r * CHIP, CHIP, CHIP))]
                row = [int((chip == k).sum()) for k in range(1, N_CLASSES + 1)]  # class 0 is not a column
                counts.append(row)
                weights.append(seed_weight(row))
    return np.array(counts, dtype=np.int64), np.array(weights)


def test_weights_match_the_seed_rule_on_a_cdl_raster(cdl_chips):
    counts, weights = cdl_chips
    assert counts.shape == (64, 13)
    n_present = (counts > 0).sum(axis=1)
    assert (n_present >= 8).sum() >= 10 and (n_present < 8).sum() >= 10  # both sides of the rule
    assert np.unique(np.nonzero(counts)[1]).size >= 10  # >= 10 of the 13 classes occur

    got = class_balance_weights(counts)
    assert got.dtype == np.float64 and got.shape == (64,)
    np.testing.assert_allclose(got, weights, rtol=0, atol=1e-12)

    chip = {rc: rc[0] * 8 + rc[1] for rc in POOR_CHIPS}
    assert weights[chip[(0, 0)]] == weights[chip[(0, 1)]] == weights[chip[(0, 2)]] == 0
    assert [n_present[chip[rc]] for rc in [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]] == [2, 1, 0, 7, 8, 9]
    assert weights[chip[(0, 3)]] == 0 and weights[chip[(0, 4)]] > 0  # 7 vs 8 classes
    assert counts[chip[(0, 5)]].sum() == CHIP * CHIP - 6 * BLOCK * BLOCK  # no data not counted


def test_weights_hand_computed():
    counts = np.array([
        [64] * 13,  # even shares of all classes: 1 - 0 / 832
        [3, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # 8 classes: 1 - 3 / 10
        [3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # 7 classes: 1 - 3 / 9 - 1 < 0 -> 0
        [0] * 13,  # no data only
    ])
    np.testing.assert_allclose(class_balance_weights(counts), [1.0, 0.7, 0.0, 0.0], rtol=0, atol=1e-12)
    # min_classes moves the rule: with 7 the third row is no longer punished
    np.testing.assert_allclose(class_balance_weights(counts, min_classes=7), [1.0, 0.7, 1 - 3 / 9, 0.0],
                               rtol=0, atol=1e-12)


def test_class_balance_keeps_the_top_n_of_the_multinomial_draw(cdl_chips):
    counts, weights = cdl_chips
    positive = set(np.flatnonzero(weights > 0).tolist())
    assert len(positive) > 5
    for seed in (0, 42, 7):  # default draws (1e8); the same seed gives the same set as the oracle
        got = class_balance(counts, 5, seed=seed)
        assert got.dtype == np.int64 and np.all(np.diff(got) > 0)
        assert set(got.tolist()) == expected_keep(weights, 5, seed, 100_000_000)
        assert set(got.tolist()) <= positive


def test_class_balance_tie_break_is_lower_index_first(cdl_chips):
    counts, weights = cdl_chips
    seed, draws = 3, 40
    hits = np.random.default_rng(seed).multinomial(draws, weights / weights.sum())
    ranked = np.sort(hits[hits > 0])[::-1]
    n = next(k for k in range(1, ranked.size) if ranked[k - 1] == ranked[k])  # a tie at the cut
    expected = expected_keep(weights, n, seed, draws)
    assert expected != expected_keep(weights, n, seed, draws, tie_low_index_first=False)
    assert set(class_balance(counts, n, seed=seed, draws=draws).tolist()) == expected


def test_class_balance_never_keeps_zero_weight_units(cdl_chips):
    counts, weights = cdl_chips
    zero = set(np.flatnonzero(weights == 0).tolist())
    assert zero
    for seed in range(20):
        got = set(class_balance(counts, 64, seed=seed, draws=1_000).tolist())
        assert got and not got & zero
        assert got == expected_keep(weights, 64, seed, 1_000)


def test_class_balance_many_draws_keeps_the_largest_weights():
    # Rows of 13 classes of 100 px, class 1 inflated by 20 k px: weight 1 - 20k / (1300 + 20k),
    # well separated (>= 1 % apart, noise ~0.03 % at 1e8 draws); plus two zero-weight rows.
    order = [5, 2, 8, 0, 7, 3, 9, 1, 6, 4]
    counts = [[100 + 20 * k] + [100] * 12 for k in order]
    counts += [[500, 500] + [0] * 11, [0] * 13]
    counts = np.array(counts)
    weights = np.array([seed_weight(row) for row in counts])
    n = 4
    by_weight = np.argsort(-weights, kind="stable")
    assert weights[by_weight[n - 1]] - weights[by_weight[n]] > 0.01
    got = class_balance(counts, n, seed=11, draws=100_000_000)
    assert set(got.tolist()) == set(by_weight[:n].tolist()) == {3, 7, 1, 5}


def test_class_balance_n_above_positive_units_keeps_exactly_them(cdl_chips):
    counts, weights = cdl_chips
    positive = np.flatnonzero(weights > 0)
    for n in (positive.size, positive.size + 1, 1000):
        np.testing.assert_array_equal(class_balance(counts, n), positive)


def test_class_balance_all_zero_weights_keeps_nothing():
    counts = np.array([[10, 5] + [0] * 11, [0] * 13])
    assert class_balance(counts, 3).size == 0


def test_class_balance_seed_changes_the_set_with_few_draws(cdl_chips):
    counts, weights = cdl_chips
    sets = []
    for seed in range(10):
        got = set(class_balance(counts, 5, seed=seed, draws=30).tolist())
        assert got == expected_keep(weights, 5, seed, 30)
        sets.append(frozenset(got))
    assert len(set(sets)) > 1


@pytest.mark.parametrize("n_units, n, seed", [(100, 10, 42), (100, 10, 0), (7, 20, 5), (1, 1, 9), (0, 3, 1)])
def test_random_n(n_units, n, seed):
    got = random_n(n_units, n, seed=seed)
    expected = np.sort(np.random.default_rng(seed).choice(n_units, size=min(n, n_units), replace=False))
    np.testing.assert_array_equal(got, expected)
    assert got.size == min(n, n_units) and np.unique(got).size == got.size
    assert np.all(np.diff(got) > 0) and np.all((got >= 0) & (got < n_units))


def test_random_n_seed_matters():
    assert len({tuple(random_n(1000, 10, seed=s).tolist()) for s in range(5)}) == 5


def test_all_units():
    np.testing.assert_array_equal(all_units(5), [0, 1, 2, 3, 4])
    assert all_units(0).size == 0


def test_registry_call_convention(cdl_chips):
    counts, weights = cdl_chips
    assert set(SAMPLERS) == {"all", "class-balance", "random-n"}
    np.testing.assert_array_equal(get_sampler("all")(counts=counts, n_units=64), np.arange(64))
    np.testing.assert_array_equal(get_sampler("all")(counts=None, n_units=3), [0, 1, 2])
    got = get_sampler("class-balance")(counts=counts, n_units=64, n=5, seed=3, draws=1_000)
    assert set(got.tolist()) == expected_keep(weights, 5, 3, 1_000)
    got = get_sampler("random-n")(counts=counts, n_units=None, n=5, seed=8)
    np.testing.assert_array_equal(got, np.sort(np.random.default_rng(8).choice(64, size=5, replace=False)))


GOOD = np.array([[64] * 13, [64, 64] + [0] * 11])


@pytest.mark.parametrize("call, match", [
    (lambda: class_balance(GOOD, 0), r"sampling\.n: 0 .*>= 1"),
    (lambda: class_balance(GOOD, 2.5), r"sampling\.n: 2\.5 "),
    (lambda: class_balance(GOOD, 2, draws=0), r"sampling\.draws: 0 .*>= 1"),
    (lambda: class_balance(GOOD, 2, seed=-1), r"sampling\.seed: -1 "),
    (lambda: class_balance(GOOD, 2, min_classes=0), r"sampling\.min_classes: 0 .*between 1 and 13"),
    (lambda: class_balance_weights(GOOD, min_classes=14), r"sampling\.min_classes: 14 .*between 1 and 13"),
    (lambda: class_balance_weights(GOOD[0]), r"sampling\.counts: shape \(13,\)"),
    (lambda: class_balance_weights(-GOOD), r"sampling\.counts: minimum -64"),
    (lambda: class_balance_weights(GOOD.astype(float)), r"sampling\.counts: dtype float64"),
    (lambda: random_n(10, 0), r"sampling\.n: 0 "),
    (lambda: random_n(-1, 3), r"sampling\.n_units: -1 "),
    (lambda: all_units(-2), r"sampling\.n_units: -2 "),
    (lambda: get_sampler("all")(counts=GOOD, n_units=3), r"sampling\.n_units: 3 does not match.*2 rows"),
    (lambda: get_sampler("all")(n_units=3, n=2), r"unknown parameter\(s\) \['n'\]; accepted: counts, n_units"),
    (lambda: get_sampler("random-n")(n_units=3), r"missing parameter\(s\) \['n'\]"),
    (lambda: get_sampler("class-balance")(n_units=2, n=1), r"counts is required"),
])
def test_bad_parameters_raise_recipe_error(call, match):
    with pytest.raises(RecipeError, match=match):
        call()


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(RecipeError, match=r"'stratified'.*valid: all, class-balance, random-n"):
        get_sampler("stratified")
    assert issubclass(RecipeError, ValueError)
