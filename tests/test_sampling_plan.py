"""Seed 001's class-balance chip sampling through the plan (eochips.plan: label pre-scan ->
sampling), on a CDL-coded label raster over the real Exeter HLS scenes.

The expected units are computed here without eochips: the label raster is read back with
rasterio, reclassified with the CDL -> 13 table typed again, the seed's weight rule is typed
again, and the kept units are the top n of ``np.random.default_rng(seed).multinomial(draws, p)``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from conftest import LABEL_ORIGIN, LABEL_SHAPE, crop_recipe, needs_shared
from eochips.config import parse_recipe
from eochips.plan import make_plan

pytestmark = needs_shared

# CDL code -> class 1..13 (0 = no data), typed from the seed's table (specs/recipes.md).
CDL13_SPEC = {
    1: [37, 152, 176], 2: [141, 142, 143], 3: [1], 4: [5], 5: [190, 195],
    6: [121, 122, 123, 124, 131], 7: [111], 8: [24], 9: [36], 10: [61], 11: [2], 12: [4],
    13: [3, 6, *range(10, 15), *range(21, 24), *range(25, 36), 38, 39, *range(41, 61), *range(62, 73),
         *range(74, 78), 81, 82, 83, 87, 88, 92, 112, *range(204, 251), 254],
}
N_CLASSES = 13
# Real CDL codes of all 13 classes (13: 3 Durum Wheat, 222 Squash).
CODES = [37, 176, 141, 142, 1, 5, 190, 121, 131, 111, 24, 36, 61, 2, 4, 3, 222]
CHIP, BLOCK = 32, 4
BPC = CHIP // BLOCK  # 8 x 8 blocks per chip
ROWS, COLS = LABEL_SHAPE[0] // CHIP, LABEL_SHAPE[1] // CHIP  # 6 x 7 chips
# chips made class-poor on purpose (their 64 block codes), and chips holding CDL 0 (no data)
POOR = {
    (0, 0): [1] * 64,  # one class
    (1, 2): [1, 5] * 32,  # two classes
    (2, 5): ([37, 141, 1, 5, 190, 121, 111] * 10)[:64],  # exactly 7 classes: below the rule
    (4, 4): ([37, 141, 1, 5, 190, 121, 111, 24] * 8),  # exactly 8 classes, even shares: 1 - (128 - 0) / 1024
}
NODATA_CHIPS = [(1, 4), (3, 0), (5, 6)]  # one block of CDL 0 in an otherwise rich chip
N, MIN_CLASSES, SEED, DRAWS = 10, 8, 7, 100_000


def seed_weight(counts) -> float:
    """Seed 001's weight of one chip, literally (0 for a chip without any class pixel)."""
    counts = [int(v) for v in counts]
    if sum(counts) == 0:
        return 0.0
    weight = 1 - (max(counts) - min(counts)) / sum(counts)
    if sum(1 for v in counts if v != 0) < MIN_CLASSES:
        weight = weight - 1
    return max(float(weight), 0.0)


def top_n(weights: np.ndarray, n: int, seed: int, draws: int) -> list[int]:
    hits = np.random.default_rng(seed).multinomial(draws, weights / weights.sum())
    ranked = sorted(range(hits.size), key=lambda i: (-hits[i], i))
    return sorted(i for i in ranked[:n] if hits[i] > 0)




@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """Write the label raster; read it back chip by chip: ids, 13-class counts, CDL-0 chips."""
    rng = np.random.default_rng(2024)
    blocks = np.zeros((ROWS * BPC, COLS * BPC), dtype=np.uint8)
    for r in range(ROWS):
        for c in range(COLS):
            if (r, c) in POOR:
                codes = np.array(POOR[(r, c)], dtype=np.uint8)
            else:  # a random palette of 6..17 codes: chips on both sides of the 8-class rule
                palette = rng.choice(CODES, size=rng.integers(6, len(CODES) + 1), replace=False)
                codes = rng.choice(palette, size=BPC * BPC).astype(np.uint8)
            if (r, c) in NODATA_CHIPS:
                codes[rng.integers(BPC * BPC)] = 0
            blocks[r * BPC:(r + 1) * BPC, c * BPC:(c + 1) * BPC] = codes.reshape(BPC, BPC)
    raster = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=np.uint8))
    path = tmp_path_factory.mktemp("samplabels") / "cdl_blocks.tif"
    with rasterio.open(path, "w", driver="GTiff", width=LABEL_SHAPE[1], height=LABEL_SHAPE[0], count=1, dtype="uint8",
                       crs="EPSG:32630", transform=Affine(30, 0, LABEL_ORIGIN[0], 0, -30, LABEL_ORIGIN[1]), nodata=0) as ds:
        ds.write(raster, 1)

    lut = np.zeros(256, dtype=np.uint8)
    for cls, codes in CDL13_SPEC.items():
        lut[codes] = cls
    ids, counts, nodata = [], [], []
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32630 and src.res == (30.0, 30.0) and src.shape == LABEL_SHAPE
        for r in range(ROWS):  # (row, col) order
            for c in range(COLS):
                chip = lut[src.read(1, window=Window(c * CHIP, r * CHIP, CHIP, CHIP))]
                ids.append(f"chip_{r:03d}_{c:03d}")
                counts.append([int((chip == k).sum()) for k in range(1, N_CLASSES + 1)])
                nodata.append(bool((chip == 0).any()))
    return path, ids, np.array(counts, dtype=np.int64), np.array(nodata)


def _plan(local_catalog, labels, sampling: dict):
    path = labels[0]
    data = crop_recipe(str(local_catalog), path, sampling=sampling)
    return make_plan(parse_recipe(data), probe=True)


def test_the_label_raster_is_as_intended(labels):
    _, ids, counts, nodata = labels
    assert len(ids) == ROWS * COLS == 42
    assert np.unique(np.nonzero(counts)[1]).size >= 10  # >= 10 of the 13 classes occur
    n_present = (counts > 0).sum(axis=1)
    assert list(np.flatnonzero(nodata)) == [r * COLS + c for r, c in NODATA_CHIPS]
    live = ~nodata
    weights = np.array([seed_weight(row) for row in counts])
    assert (weights[live] > 0).sum() > 2 * N  # enough candidates for the draw to matter
    assert (weights[live] == 0).sum() >= 4  # ... and class-poor chips that it never keeps
    assert [n_present[r * COLS + c] for r, c in POOR] == [1, 2, 7, 8]
    assert weights[4 * COLS + 4] == 1 - 128 / 1024  # the 5 absent classes make min() 0
    assert all(weights[r * COLS + c] > 0 for r, c in NODATA_CHIPS)  # drawn if they were (wrongly) sampled


def test_class_balance_keeps_the_top_n_of_the_seeded_draw(local_catalog, labels):
    _, ids, counts, nodata = labels
    plan = _plan(local_catalog, labels, {"kind": "class-balance", "n": N, "min_classes": MIN_CLASSES, "seed": SEED, "draws": DRAWS})
    assert [u.id for u in plan.units] == ids  # units in (row, col) order
    by_id = {u.id: u for u in plan.units}

    # the leading label-fraction filter drops the chips holding CDL 0, before sampling
    dropped_labels = sorted(u.id for u in plan.units if u.code == "label-fraction")
    assert dropped_labels == [ids[i] for i in np.flatnonzero(nodata)]
    live = [i for i in range(len(ids)) if not nodata[i]]
    weights = np.array([seed_weight(counts[i]) for i in live])
    expected = {ids[live[j]] for j in top_n(weights, N, SEED, DRAWS)}
    assert len(expected) == N and all(weights[live.index(ids.index(i))] > 0 for i in expected)

    planned = {u.id for u in plan.units if u.status == "planned"}
    assert planned == expected
    sampled_out = {u.id for u in plan.units if u.code == "sampling"}
    assert sampled_out == {ids[i] for i in live} - expected
    assert all(by_id[i].status == "dropped" and by_id[i].reason.startswith("sampling: ") for i in sampled_out)
    assert {u.code for u in plan.units} == {"", "label-fraction", "sampling"}
    assert plan.summary()["units_dropped_in_plan"] == {"label-fraction": len(NODATA_CHIPS), "sampling": len(live) - N}

    # the plan's label counts are the ones read back here (class 0 not a column)
    for i in live:
        got = by_id[ids[i]].label_info["class_pixels"]
        assert [got.get(k, 0) for k in range(1, N_CLASSES + 1)] == counts[i].tolist() and 0 not in got
    # every kept unit got its three dates
    assert all(len(by_id[i].groups["hls"]) == 3 for i in expected)

    # the test can tell: drawing among all 42 chips (the dropped ones too) would keep another set
    all_w = np.array([seed_weight(row) for row in counts])
    assert {ids[i] for i in top_n(all_w, N, SEED, DRAWS)} != expected


def test_class_balance_keeps_only_positive_weights(local_catalog, labels):
    _, ids, counts, nodata = labels
    plan = _plan(local_catalog, labels, {"kind": "class-balance", "n": 1000, "seed": 1, "draws": DRAWS})
    positive = {ids[i] for i in range(len(ids)) if not nodata[i] and seed_weight(counts[i]) > 0}
    assert {u.id for u in plan.units if u.status == "planned"} == positive
    assert {u.id for u in plan.units if u.code == "sampling"} == {
        ids[i] for i in range(len(ids)) if not nodata[i]} - positive


def test_class_balance_seed_changes_the_draw(local_catalog, labels):
    _, ids, counts, nodata = labels
    live = [i for i in range(len(ids)) if not nodata[i]]
    weights = np.array([seed_weight(counts[i]) for i in live])
    sets = []
    for seed in (0, 1):
        plan = _plan(local_catalog, labels, {"kind": "class-balance", "n": 3, "seed": seed, "draws": 50})
        got = {u.id for u in plan.units if u.status == "planned"}
        assert got == {ids[live[j]] for j in top_n(weights, 3, seed, 50)}
        sets.append(got)
    assert sets[0] != sets[1]


def test_random_n_through_the_plan(local_catalog, labels):
    _, ids, _, nodata = labels
    live = [ids[i] for i in range(len(ids)) if not nodata[i]]
    plan = _plan(local_catalog, labels, {"kind": "random-n", "n": 5, "seed": 3})
    expected = {live[j] for j in np.random.default_rng(3).choice(len(live), size=5, replace=False)}
    assert {u.id for u in plan.units if u.status == "planned"} == expected
    assert {u.id for u in plan.units if u.code == "sampling"} == set(live) - expected
    assert sorted(u.id for u in plan.units if u.code == "label-fraction") == [ids[i] for i in np.flatnonzero(nodata)]
    # n above the live units keeps them all
    plan = _plan(local_catalog, labels, {"kind": "random-n", "n": 100, "seed": 3})
    assert [u.id for u in plan.units if u.status == "planned"] == live


def test_all_keeps_every_unit_the_labels_allow(local_catalog, labels):
    _, ids, _, nodata = labels
    plan = _plan(local_catalog, labels, {"kind": "all"})
    assert [u.id for u in plan.units if u.status == "planned"] == [ids[i] for i in range(len(ids)) if not nodata[i]]
    assert not any(u.code == "sampling" for u in plan.units)
