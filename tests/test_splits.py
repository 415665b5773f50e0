"""Splits and the leak check (issue 14 item 2): the demo (108 real Landsat chips of 32 px at 30 m)
and the crop recipe (real HLS over Exeter, pgstac API) built with the random split and with
spatial blocks, plus two grids in neighbouring UTM zones; every expected value is computed here
from the chip files' bounds (rasterio; the units' boxes in their UTM CRS), shapely and the recipe's
grid origin, with the documented block rule written out again, not read back from eochips.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import shapely

from conftest import FMASK_RULE, LABEL_ORIGIN, REPO, crop_recipe, run_cli, write_recipe

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
needs_sample = pytest.mark.skipif(not (SAMPLE / "catalog.json").is_file(), reason=f"no sample at {SAMPLE}; run `make demo`")
DEMO_ENV = {"EOCHIPS_SAMPLE_DIR": str(SAMPLE)}
DEMO_ORIGIN = (737535.0, -2795205.0)  # demo.yaml's grid.origin
CHIP_M = 32 * 30.0
PAIRS = (("train", "validation"), ("train", "test"), ("validation", "test"))
BLOCKS = {"kind": "spatial-blocks", "block_size_m": 2880, "buffer_m": 960, "seed": 4,
          "train_fraction": 0.5, "validation_fraction": 0.25, "test_fraction": 0.25}


def _run(out: Path, *args: str, env: dict | None = None):
    proc = run_cli("run", *args, "-o", str(out), "--no-progress", "--workers", "1", "--set", "engine.processes=false", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _index(out: Path):
    import geopandas as gpd

    idx = gpd.read_parquet(out / "index.parquet")
    return idx[idx.status == "kept"].reset_index(drop=True)


def _split(idx) -> dict[str, str | None]:
    """``{unit id: split}`` of the kept rows; a null split (read as NaN or None) as None."""
    return {u: v if isinstance(v, str) else None for u, v in zip(idx.unit_id, idx["split"])}


def _boxes(out: Path, idx, epsg: int = 32621) -> dict[str, shapely.Polygon]:
    """Each kept unit's box in its CRS: the bounds of its chip file (rasterio), all in EPSG ``epsg``."""
    import rasterio

    boxes = {}
    for uid in idx.unit_id:
        with rasterio.open(out / "chips" / f"{uid}_merged.tif") as ds:
            boxes[uid] = shapely.box(*ds.bounds)
            assert ds.crs.to_epsg() == epsg
    return boxes


def _near(a: shapely.Polygon, b: shapely.Polygon, d: float) -> bool:
    """The leak rule, written out: touching / overlapping, or closer than d."""
    return a.intersects(b) or a.distance(b) < d


def _leaks(boxes: dict, split: dict[str, str], d: float) -> dict[str, int]:
    """Per pair A/B, the units of B near some unit of A (brute force over all pairs)."""
    out = {}
    for pa, pb in PAIRS:
        held = [u for u, s in split.items() if s == pb]
        other = [u for u, s in split.items() if s == pa]
        out[f"{pa}/{pb}"] = sum(1 for h in held if any(_near(boxes[h], boxes[o], d) for o in other))
    return out


def _expected_blocks(boxes: dict, origin: tuple[float, float], cfg: dict) -> tuple[dict[str, str], set[str]]:
    """The spatial-blocks rule of the recipe docs, written out again: (part of each unit by its
    centroid's block, the units touching or within buffer_m of another part's block)."""
    b = cfg["block_size_m"]
    x0, y0 = origin
    block = {}
    for u, box in boxes.items():
        cx, cy = box.centroid.x, box.centroid.y
        block[u] = (int((y0 - cy) // b), int((cx - x0) // b))
    keys = sorted(set(block.values()))
    random.Random(cfg["seed"]).shuffle(keys)
    n = len(keys)
    k1 = int(np.floor(cfg["train_fraction"] * n + 0.5))
    k2 = int(np.floor((cfg["train_fraction"] + cfg["validation_fraction"]) * n + 0.5)) if cfg["test_fraction"] else n
    part_of_block = {k: "train" if i < k1 else "validation" if i < k2 else "test" for i, k in enumerate(keys)}
    squares = {k: shapely.box(x0 + k[1] * b, y0 - (k[0] + 1) * b, x0 + (k[1] + 1) * b, y0 - k[0] * b) for k in keys}
    part = {u: part_of_block[block[u]] for u in boxes}
    excluded = {u for u, box in boxes.items()
                if any(part_of_block[k] != part[u] and _near(box, sq, cfg["buffer_m"]) for k, sq in squares.items())}
    return part, excluded


def _ids(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert lines[0] == "ids"
    return lines[1:]


# --------------------------------------------------------------------------------------
# the demo

@pytest.fixture(scope="module")
def demo_random(tmp_path_factory):
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}")
    return _run(tmp_path_factory.mktemp("demo") / "random", "demo", env=DEMO_ENV)


@pytest.fixture(scope="module")
def demo_blocks(tmp_path_factory):
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}")
    sets = [a for k, v in BLOCKS.items() for a in ("--set", f"dataset.split.{k}={v}")]
    return _run(tmp_path_factory.mktemp("demo") / "blocks", "demo", *sets, env=DEMO_ENV)


@needs_sample
def test_demo_random_split_is_seed_001_and_leaks(demo_random):
    out = demo_random
    idx = _index(out)
    ids = sorted(idx.unit_id)
    assert len(ids) == 108
    order = sorted(ids)
    random.Random(42).shuffle(order)  # seed 001's split, typed out again
    assert _ids(out / "train_ids.csv") == order[:86] and _ids(out / "val_ids.csv") == order[86:]
    assert not (out / "test_ids.csv").exists()
    split = _split(idx)
    boxes = _boxes(out, idx)
    want = _leaks(boxes, split, 0.0)
    assert want == {"train/validation": 22, "train/test": 0, "validation/test": 0}  # all 22 validation chips touch a train chip
    s = json.loads((out / "summary.json").read_text())["split"]
    assert s["kind"] == "random" and (s["train"], s["validation"], s["test"], s["excluded"]) == (86, 22, 0, 0)
    assert s["leaks"] == want and s["leak_distance_m"] == 0.0
    pairs = [(v, t) for v in boxes if split[v] == "validation" for t in boxes if split[t] == "train" and boxes[v].intersects(boxes[t])]
    assert s["leak_detail"]["train/validation"] == {"held_out": 22, "near": len({t for _, t in pairs}), "pairs": len(pairs)}


@needs_sample
def test_demo_spatial_blocks_zero_leaks_and_excluded(demo_blocks):
    out = demo_blocks
    idx = _index(out)
    boxes = _boxes(out, idx)
    part, excluded = _expected_blocks(boxes, DEMO_ORIGIN, BLOCKS)
    split = _split(idx)
    assert len(boxes) == 108 and 0 < len(excluded) < 108
    assert {u for u, s in split.items() if s is None} == excluded  # excluded: kept, split null
    assert all(split[u] == part[u] for u in boxes if u not in excluded)
    kept_split = {u: s for u, s in split.items() if s is not None}
    assert {s for s in kept_split.values()} == {"train", "validation", "test"}
    for pa, pb in PAIRS:  # 0 leaks, checked on every pair of units: at least buffer_m apart, never touching
        for a in (u for u, s in kept_split.items() if s == pa):
            for b in (u for u, s in kept_split.items() if s == pb):
                assert not boxes[a].intersects(boxes[b]) and boxes[a].distance(boxes[b]) >= BLOCKS["buffer_m"]
    # a gap of exactly buffer_m (one chip) is allowed: only the units touching another part's block go
    assert excluded == {u for u, box in boxes.items() if any(box.touches(boxes[v]) and part[v] != part[u] for v in boxes)}
    s = json.loads((out / "summary.json").read_text())["split"]
    assert s["kind"] == "spatial-blocks" and s["excluded"] == len(excluded) == 54
    assert s["leaks"] == {"train/validation": 0, "train/test": 0, "validation/test": 0} and s["leak_distance_m"] == 960.0
    assert {p: s[p] for p in ("train", "validation", "test")} == {p: sum(1 for v in kept_split.values() if v == p)
                                                                  for p in ("train", "validation", "test")}
    assert s["blocks"] == {"train": 6, "validation": 3, "test": 3}  # 2 x 6 blocks of 3 x 3 chips, cut 0.5 / 0.25 / 0.25
    for name, p in (("train_ids.csv", "train"), ("val_ids.csv", "validation"), ("test_ids.csv", "test")):
        assert sorted(_ids(out / name)) == sorted(u for u, v in kept_split.items() if v == p)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["chips"] == s["train"]  # statistics over the train part only, excluded units left out
    # the same split once more from the finalizer: byte-identical files
    before = {n: (out / n).read_bytes() for n in ("summary.json", "train_ids.csv", "val_ids.csv", "test_ids.csv", "index.parquet")}
    proc = run_cli("finalize", str(out), env=DEMO_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {n: (out / n).read_bytes() for n in before} == before


@needs_sample
def test_seeded_draw(demo_blocks, demo_random):
    """The block draw is reproducible, independent of the units' order and changes with the seed;
    random test_fraction carves the test part off seed 001's validation part."""
    from eochips.config.models import RandomSplit, SpatialBlocksSplit
    from eochips.dataset import make_split
    from eochips.dataset.leaks import leak_report
    from eochips.dataset.splits import leak_distance
    from eochips.plan import load_plan
    from eochips.writers import OutputStore

    plan = load_plan(OutputStore(demo_blocks))
    ids = sorted(u.id for u in plan.units)
    cfg = SpatialBlocksSplit(**BLOCKS)
    a = make_split(ids, cfg, plan)
    b = make_split(list(reversed(ids)), cfg, plan)
    idx = _index(demo_blocks)
    split = _split(idx)
    assert {p: sorted(getattr(a, p)) for p in ("train", "validation", "test")} == \
        {p: sorted(getattr(b, p)) for p in ("train", "validation", "test")} == \
        {p: sorted(u for u, s in split.items() if s == p) for p in ("train", "validation", "test")}
    assert a.excluded == b.excluded == sorted(u for u, s in split.items() if s is None)
    boxes = _boxes(demo_blocks, idx)
    for change in ({"seed": 8}, {"seed": 7, "buffer_m": 1000}):  # another draw; a buffer wider than a chip
        other = make_split(ids, cfg.model_copy(update=change), plan)
        assert sorted(other.train) != sorted(a.train)
        want_part, want_excl = _expected_blocks(boxes, DEMO_ORIGIN, {**BLOCKS, **change})
        assert set(other.excluded) == want_excl and all(want_part[u] == p for p in ("train", "validation", "test")
                                                        for u in getattr(other, p))
        rep = leak_report(plan, {"train": other.train, "validation": other.validation, "test": other.test},
                          leak_distance(cfg.model_copy(update=change)))
        assert rep["leaks"] == {"train/validation": 0, "train/test": 0, "validation/test": 0}
    # buffer 0 with blocks of 1 chip: every unit touching another part's block goes; still 0 leaks
    one = SpatialBlocksSplit(kind="spatial-blocks", block_size_m=CHIP_M, buffer_m=0, seed=3)
    s1 = make_split(ids, one, plan)
    part1, excl1 = _expected_blocks(boxes, DEMO_ORIGIN, {**one.model_dump(), "validation_fraction": one.fractions[1]})
    assert set(s1.excluded) == excl1 and s1.test == []
    assert leak_report(plan, {"train": s1.train, "validation": s1.validation, "test": []}, 0.0)["leaks"]["train/validation"] == 0
    # random with a test part: train unchanged, test = the last int(0.1 * 108) = 10 of seed 001's validation
    base = make_split(ids, RandomSplit(), plan)
    t = make_split(ids, RandomSplit(test_fraction=0.1), plan)
    assert t.train == base.train and t.validation + t.test == base.validation and len(t.test) == 10
    rnd = {**{u: "train" for u in t.train}, **{u: "validation" for u in t.validation}, **{u: "test" for u in t.test}}
    assert leak_report(plan, {"train": t.train, "validation": t.validation, "test": t.test}, 0.0)["leaks"] == _leaks(boxes, rnd, 0.0)


@needs_sample
@pytest.mark.parametrize("sets, field", [
    ({"block_size_m": 500}, "dataset.split.block_size_m"),    # smaller than a chip (960 m): refused at plan time
    ({"buffer_m": -10}, "dataset.split.buffer_m"),
    ({"validation_fraction": 0.3}, "dataset.split"),          # 0.5 + 0.3 + 0.25 != 1
], ids=["block<chip", "negative-buffer", "fractions-sum"])
def test_bad_split_config(tmp_path, sets, field):
    cfg = {**BLOCKS, **sets}
    args = [a for k, v in cfg.items() for a in ("--set", f"dataset.split.{k}={v}")]
    out = tmp_path / "out"
    proc = run_cli("run", "demo", *args, "-o", str(out), "--no-progress", env=DEMO_ENV)
    assert proc.returncode == 2, proc.stderr
    err = " ".join(proc.stderr.split())
    assert err.startswith(f"error: recipe field '{field}'") and "Traceback" not in proc.stderr, err
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    if "block_size_m" in sets:
        assert "500 m is not a whole multiple of the units' size (960 m" in err


@needs_sample
def test_bad_split_config_direct(demo_blocks):
    """The same checks without a CLI run each: a block of 1.5 chips, a zero block, fractions."""
    from pydantic import ValidationError

    from eochips.config.models import RandomSplit, SpatialBlocksSplit
    from eochips.dataset import make_split
    from eochips.errors import RecipeError
    from eochips.plan import load_plan
    from eochips.writers import OutputStore

    plan = load_plan(OutputStore(demo_blocks))
    ids = sorted(u.id for u in plan.units)
    with pytest.raises(RecipeError, match=r"^recipe field 'dataset.split.block_size_m': 1440 m is not a whole multiple "
                                          r"of the units' size \(960 m"):
        make_split(ids, SpatialBlocksSplit(kind="spatial-blocks", block_size_m=1440), plan)
    for bad, where in (({"block_size_m": 0}, "block_size_m"), ({"block_size_m": 960, "train_fraction": 0.9, "test_fraction": 0.1},
                                                                 "test_fraction"),
                       ({"block_size_m": 960, "validation_fraction": 0.1}, "sum to 1")):
        with pytest.raises(ValidationError, match=where):
            SpatialBlocksSplit(kind="spatial-blocks", **bad)
    with pytest.raises(ValidationError, match="train_fraction 0.8 \\+ test_fraction 0.2 must be < 1"):
        RandomSplit(test_fraction=0.2)


@needs_sample
def test_geographic_grid_refused(tmp_path):
    out = tmp_path / "out"
    args = ["--set", "dataset.split.kind=spatial-blocks", "--set", "dataset.split.block_size_m=1920",
            "--set", "grid.crs=EPSG:4326", "--set", "grid.resolution=0.0003", "--set", "grid.origin=[-54.63, -25.26]",
            "--set", "aoi.bbox=[-54.63, -25.40, -54.59, -25.26]", "--set", "aoi.crs=EPSG:4326"]
    proc = run_cli("run", "demo", *args, "-o", str(out), "--no-progress", env=DEMO_ENV)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: recipe field 'dataset.split.kind': spatial-blocks needs a projected grid CRS in metres")
    assert "EPSG:4326" in proc.stderr and not out.exists()


# --------------------------------------------------------------------------------------
# the crop recipe (real HLS over Exeter, pgstac)

CROP_BLOCKS = {"kind": "spatial-blocks", "block_size_m": 1920, "buffer_m": 0, "seed": 1, "train_fraction": 0.6,
               "validation_fraction": 0.4, "test_fraction": 0}


@pytest.fixture(scope="module")
def crop_blocks(stac_api, cdl_raster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crop")
    # any Fmask share (the default 3 dates drop all but 3 chips for clouds): the units the nodata rule keeps
    data = crop_recipe(stac_api, cdl_raster, **{"dataset.split": CROP_BLOCKS, FMASK_RULE: 100, "engine.processes": False})
    out = tmp / "out"
    proc = run_cli("run", str(write_recipe(tmp / "crop.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_crop_spatial_blocks_and_random_leaks(crop_blocks):
    from eochips.config.models import RandomSplit
    from eochips.dataset import make_split
    from eochips.dataset.leaks import leak_report
    from eochips.plan import load_plan
    from eochips.writers import OutputStore

    out = crop_blocks
    idx = _index(out)
    boxes = _boxes(out, idx, 32630)
    assert len(boxes) > 20
    part, excluded = _expected_blocks(boxes, LABEL_ORIGIN, CROP_BLOCKS)
    split = _split(idx)
    assert {u for u, s in split.items() if s is None} == excluded and 0 < len(excluded) < len(boxes)
    assert all(split[u] == part[u] for u in boxes if u not in excluded)
    kept_split = {u: s for u, s in split.items() if s is not None}
    assert _leaks(boxes, kept_split, 0.0) == {"train/validation": 0, "train/test": 0, "validation/test": 0}
    s = json.loads((out / "summary.json").read_text())["split"]
    assert s["excluded"] == len(excluded) and s["leaks"] == {"train/validation": 0, "train/test": 0, "validation/test": 0}
    assert s["validation"] > 0 and s["train"] > 0 and s["test"] == 0 and not (out / "test_ids.csv").exists()
    # the random split of the same kept units: its real leak count
    plan = load_plan(OutputStore(out))
    kept = sorted(boxes)
    r = make_split(kept, RandomSplit(), plan)
    rnd = {**{u: "train" for u in r.train}, **{u: "validation" for u in r.validation}}
    want = _leaks(boxes, rnd, 0.0)
    assert want["train/validation"] == len(r.validation)  # every validation chip touches a train chip here too
    assert leak_report(plan, {"train": r.train, "validation": r.validation, "test": []}, 0.0)["leaks"] == want


# --------------------------------------------------------------------------------------
# two UTM zones (scene grids of neighbouring zones): compared after reprojection

def _two_zone_plan():
    """Two 10 x 10 grids of 32 px x 30 m units at 0 deg E, 50 deg N (the zones' common meridian), one
    in UTM 30N, one in UTM 31N 5 units further east (half of it over the first), as a plan's
    ``units`` and ``grids``."""
    from types import SimpleNamespace

    from affine import Affine
    from odc.geo.geobox import GeoBox

    from eochips.geo import Unit
    from eochips.plan import UnitPlan

    grids, units = [], []
    for gi, (epsg, x0, y0) in enumerate(((32630, 710400.0, 5548800.0), (32631, 285120.0, 5548800.0))):
        crs = f"EPSG:{epsg}"
        grids.append(SimpleNamespace(gbox=GeoBox((320, 320), Affine(30, 0, x0, 0, -30, y0), crs)))
        for r in range(10):
            for c in range(10):
                gb = GeoBox((32, 32), Affine(30, 0, x0 + c * CHIP_M, 0, -30, y0 - r * CHIP_M), crs)
                units.append(UnitPlan(Unit(gi, r, c, gb), f"{'ab'[gi]}_{r}_{c}"))
    return SimpleNamespace(units=units, grids=grids)


def _in_utm30(plan) -> dict[str, shapely.Geometry]:
    import shapely.geometry

    """Every unit's footprint in EPSG:32630 (edges cut to 30 m by shapely, then rasterio.warp.transform_geom)."""
    from rasterio.warp import transform_geom

    out = {}
    for up in plan.units:
        box = shapely.box(*up.unit.gbox.boundingbox[:4])
        crs = plan.grids[up.unit.grid].gbox.crs
        out[up.id] = box if crs.epsg == 32630 else shapely.geometry.shape(
            transform_geom(f"EPSG:{crs.epsg}", "EPSG:32630", shapely.geometry.mapping(shapely.segmentize(box, 30.0))))
    return out


def test_leaks_and_blocks_across_utm_zones():
    from eochips.config.models import SpatialBlocksSplit
    from eochips.dataset import make_split
    from eochips.dataset.leaks import leak_report

    plan = _two_zone_plan()
    geo = _in_utm30(plan)
    a = [u.id for u in plan.units if u.id.startswith("a")]
    b = [u.id for u in plan.units if u.id.startswith("b")]
    rep = leak_report(plan, {"train": a, "validation": b, "test": []}, 0.0)
    want = sum(1 for v in b if any(geo[v].intersects(geo[t]) for t in a))
    assert 0 < want < len(b) and rep["leaks"]["train/validation"] == want
    cfg = SpatialBlocksSplit(kind="spatial-blocks", block_size_m=2880, buffer_m=500, seed=7, train_fraction=0.5)
    s = make_split(sorted(a + b), cfg, plan)
    assert {u[0] for u in s.train} == {u[0] for u in s.validation} == {"a", "b"} and s.excluded  # both zones in both parts
    assert leak_report(plan, {"train": s.train, "validation": s.validation, "test": []}, 500.0)["leaks"]["train/validation"] == 0
    # independently: every train / validation pair is >= 500 m apart in UTM 30N (to 1 m: two reprojections)
    gaps = [geo[t].distance(geo[v]) for t in s.train for v in s.validation]
    assert min(gaps) > 499.0
