"""Dataset splits: each ``dataset.split.kind`` names a function of the registry :data:`SPLITS`
that cuts the kept unit ids into train / validation / test lists.

=============  ===================================================================================
kind           rule
=============  ===================================================================================
``random``     seed 001: sort the ids, shuffle with ``random.Random(seed)``, the first
               ``int(train_fraction * n)`` train, the rest validation; no test part
``tile-ring``  BigEarthNet v2 (kai-tub/bigearthnet-pipeline, ``migrations/V1_2__sentinel2_tables.sql``,
               ``insert_new_tile_border_split``): by the position of the unit's centroid in its
               scene grid's tile of side ``s = tile_size_m``; the outer ring (half the tile's area)
               is train, the inner square's ring validation (a quarter), its core test (a quarter);
               :func:`tile_ring_parts`
=============  ===================================================================================
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from ..errors import RecipeError
from ..registry import Registry

SPLITS = Registry("split")


@dataclass(frozen=True)
class SplitIds:
    """The three id lists of a split (each sorted as the split made it; ``test`` may be empty)."""

    train: list[str]
    validation: list[str]
    test: list[str]




def split_ids(ids: list[str], seed: int = 42, train_fraction: float = 0.8) -> tuple[list[str], list[str]]:
    """Seed 001's split: sort, shuffle with ``random.Random(seed)``, cut at ``int(f * n)``.

    Returns
    -------
    (train, validation)
        Two lists of ids, in the shuffled order.
    """
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    k = int(train_fraction * len(order))
    return order[:k], order[k:]


@SPLITS.register("random")
def _random(ids: list[str], cfg, plan) -> SplitIds:
    train, val = split_ids(ids, cfg.seed, cfg.train_fraction)
    return SplitIds(train, val, [])


def tile_square(bounds: tuple[float, float, float, float], s: float):
    """The tile square of side ``s`` of a scene grid with bounding box ``bounds`` (minx, miny,
    maxx, maxy in the grid's CRS, metres).

    Anchored at the grid's top-left corner (``minx, maxy``): a Sentinel-2 tile's origin, from which
    the patches' column and row ranks are counted. A grid of exactly ``s`` on a side (every
    Sentinel-2 L1C/L2A tile: 109,800 m) is its own square; a smaller or larger grid (a cut scene)
    keeps the square of the tile it would start, so a unit's part does not depend on the cut.

    Returns
    -------
    shapely.Polygon
    """
    import shapely

    minx, _, _, maxy = bounds
    return shapely.box(minx, maxy - s, minx + s, maxy)


def tile_ring_parts(tile, s: float) -> dict[str, Any]:
    """The three parts of a tile square (BigEarthNet v2's tile-border split).

    ``inner`` = the tile buffered by ``-s (2 - sqrt 2) / 4``; ``train`` = tile minus inner;
    ``test`` = inner buffered by ``-s (sqrt 2 - 1) / 4``; ``validation`` = inner minus test. The
    inner square has side ``s / sqrt 2`` (half the area), the test square ``s / 2`` (a quarter):
    train 1/2, validation 1/4, test 1/4 of the tile. Buffers use ``join_style="mitre"``; an
    inward buffer of a square is the same square with any join style (the pipeline uses PostGIS
    ``st_buffer``'s default, round), mitre only keeps the corners exact in floating point.

    Parameters
    ----------
    tile : shapely.Polygon
        The tile square (:func:`tile_square`), CRS units (metres).
    s : float
        Its side (metres).

    Returns
    -------
    dict
        ``{"train": Polygon, "validation": Polygon, "test": Polygon, "inner": Polygon}``.
    """
    inner = tile.buffer(-s * (2 - math.sqrt(2)) / 4, join_style="mitre")
    test = inner.buffer(-s * (math.sqrt(2) - 1) / 4, join_style="mitre")
    return {"train": tile.difference(inner), "validation": inner.difference(test), "test": test, "inner": inner}


def part_of(point, parts: dict[str, Any]) -> str:
    """The part (``train`` / ``validation`` / ``test``) holding a point (a unit's centroid).

    The rule: ``test`` when the test square covers the point (boundary included), else
    ``validation`` when the inner square covers it, else ``train`` (the outer ring, and any point
    outside the tile square). The pipeline's ``st_intersects`` would put a point on a shared
    boundary in two parts; here the inner part wins. The boundaries lie at irrational offsets of
    ``s``, so a 1200 m patch's centroid (a multiple of 600 m from the tile corner) is never on one
    with ``s = 109,800``.
    """
    if parts["test"].covers(point):
        return "test"
    if parts["inner"].covers(point):
        return "validation"
    return "train"


@SPLITS.register("tile-ring")
def _tile_ring(ids: list[str], cfg, plan) -> SplitIds:
    """Split by each unit's centroid in its scene grid's tile (:func:`tile_ring_parts`, :func:`part_of`).

    Raises
    ------
    RecipeError
        The recipe's grid is not a scene grid (``grid.kind: scene``): a tile-ring split needs each
        unit's tile.
    """
    import shapely

    if plan.recipe.grid.kind != "scene":
        raise RecipeError(f"dataset.split: a tile-ring split needs a scene grid (grid.kind: scene, one grid per tile); "
                          f"the grid is {plan.recipe.grid.kind!r}; use dataset.split.kind: random")
    s = float(cfg.tile_size_m)
    by_id = {up.id: up for up in plan.units}
    parts: dict[int, dict[str, Any]] = {}
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for uid in sorted(ids):
        up = by_id[uid]
        gi = up.unit.grid
        if gi not in parts:
            parts[gi] = tile_ring_parts(tile_square(tuple(plan.grids[gi].gbox.boundingbox[:4]), s), s)
        minx, miny, maxx, maxy = up.unit.gbox.boundingbox[:4]
        out[part_of(shapely.Point((minx + maxx) / 2, (miny + maxy) / 2), parts[gi])].append(uid)
    return SplitIds(out["train"], out["validation"], out["test"])


def has_test_part(cfg) -> bool:
    """True when the split ``cfg`` (``dataset.split``) has a test part (``tile-ring``; ``random`` has none)."""
    return cfg.kind != "random"


def make_split(ids: list[str], cfg, plan) -> SplitIds:
    """The split ``cfg`` (``dataset.split``) of the kept ids ``ids`` of ``plan``."""
    return SPLITS.lookup(cfg.kind)(ids, cfg, plan)
