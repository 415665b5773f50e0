"""Dataset splits: each ``dataset.split.kind`` names a function of the registry :data:`SPLITS`
that cuts the kept unit ids into train / validation / test lists (and, for spatial blocks, the
units a buffer leaves out).

==================  ==============================================================================
kind                rule
==================  ==============================================================================
``random``          seed 001: sort the ids, shuffle with ``random.Random(seed)``, the first
                    ``int(train_fraction * n)`` train, the last ``int(test_fraction * n)`` test
                    (``test_fraction: 0``, the default: no test part, seed 001's split unchanged),
                    the rest validation
``tile-ring``       BigEarthNet v2 (kai-tub/bigearthnet-pipeline, ``migrations/V1_2__sentinel2_tables.sql``,
                    ``insert_new_tile_border_split``): by the position of the unit's centroid in its
                    scene grid's tile of side ``s = tile_size_m``; the outer ring (half the tile's area)
                    is train, the inner square's ring validation (a quarter), its core test (a quarter);
                    :func:`tile_ring_parts`
``spatial-blocks``  square blocks of side ``B = block_size_m`` anchored at the top-left corner of the
                    unit's grid, in the grid's CRS (metres; a geographic CRS is refused); a unit
                    belongs to the block holding its centroid; the blocks' keys, sorted, are shuffled
                    with ``random.Random(seed)`` and cut at ``round(f_train * n)`` and
                    ``round((f_train + f_validation) * n)`` blocks (rounding half up); a unit whose
                    footprint touches a block of another part or lies closer than ``buffer_m`` to one
                    is excluded (:attr:`SplitIds.excluded`); :func:`spatial_blocks`
==================  ==============================================================================

Leaks (:mod:`eochips.dataset.leaks`): two units of different parts leak when their footprints
touch (or overlap) or lie closer than the leak distance (the split's ``buffer_m``; 0 for the other
kinds). ``B`` must be a whole multiple of each unit's width and height (:func:`check_blocks`), and
units start at the grid's corner plus whole units, so every unit lies inside its block. A kept unit
``U`` of part P is then at least ``buffer_m`` (and, with 0, a positive distance) from every block of
another part, hence from every unit of another part (each inside such a block): spatial blocks
have 0 leaks by construction. Blocks of grids in another CRS are compared after reprojection
(densified edges) into the unit's CRS, so there the rule holds to the reprojection's precision.
This is the block cross-validation of Roberts et al. 2017 (Ecography 40:913, "Cross-validation
strategies for data with temporal, spatial, hierarchical, or phylogenetic structure"), with the
buffer applied around every block of another part.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError
from ..registry import Registry

SPLITS = Registry("split")


PARTS = ("train", "validation", "test")
"""The parts of a split, in order (a pair ``A/B`` of :mod:`eochips.dataset.leaks` has A before B)."""


@dataclass(frozen=True)
class SplitIds:
    """The id lists of a split (each in the order the split made it; ``test`` may be empty).

    Attributes
    ----------
    train, validation, test
        Kept unit ids of each part.
    excluded
        Kept unit ids in no part (a spatial-blocks buffer); their index ``split`` is null.
    """

    train: list[str]
    validation: list[str]
    test: list[str]
    excluded: list[str] = field(default_factory=list)


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
    """Seed 001's split (:func:`split_ids`), with the last ``int(test_fraction * n)`` of the shuffled
    order as the test part (none when ``test_fraction`` is 0: the lists are seed 001's)."""
    train, rest = split_ids(ids, cfg.seed, cfg.train_fraction)
    n_test = int(cfg.test_fraction * len(ids))
    if n_test == 0:
        return SplitIds(train, rest, [])
    return SplitIds(train, rest[:-n_test], rest[-n_test:])


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
    """True when the split ``cfg`` (``dataset.split``) has a test part: ``tile-ring`` always,
    ``random`` and ``spatial-blocks`` when their ``test_fraction`` is above 0."""
    return cfg.kind == "tile-ring" or getattr(cfg, "test_fraction", 0) > 0


# --------------------------------------------------------------------------------------
# spatial blocks

BlockKey = tuple[str, float, float, int, int]
"""A block: ``(crs, x0, y0, row, col)``; ``crs`` as the index writes it (``EPSG:n`` or WKT), ``(x0, y0)``
the grid's top-left corner (the blocks' anchor), ``row`` counted down and ``col`` right from it."""


def crs_name(crs) -> str:
    """``EPSG:n`` for a CRS with an EPSG code, else its WKT (the index's ``crs`` column)."""
    return f"EPSG:{crs.epsg}" if crs.epsg else crs.to_wkt()


@dataclass(frozen=True)
class Footprints:
    """Units' footprints, made once for the split and the leak check (:func:`footprints`).

    Attributes
    ----------
    ids : list of str
        The unit ids, in the order given.
    crs : list of str
        Each unit's grid CRS (:func:`crs_name`).
    boxes : numpy.ndarray
        ``(n,)`` object array of shapely Polygons: each unit's box in its grid's CRS (metres).
    origin : numpy.ndarray
        ``(n, 2)`` float64: the top-left corner ``(x0, y0)`` of each unit's grid.
    wkt : dict
        CRS name -> its WKT.
    """

    ids: list[str]
    crs: list[str]
    boxes: Any
    origin: Any
    wkt: dict[str, str]

    def where(self, name: str) -> list[int]:
        """Positions of the units in CRS ``name``."""
        return [i for i, c in enumerate(self.crs) if c == name]


def footprints(plan, ids: list[str]) -> Footprints:
    """The footprints of the units ``ids`` of ``plan``: the box of each unit's GeoBox from its affine
    and shape (equal to ``unit.polygon`` for a north-up grid), made with one vectorised
    ``shapely.box``; CRS names computed once per grid."""
    import numpy as np
    import shapely

    by_id = {up.id: up for up in plan.units}
    names = {gi: crs_name(g.gbox.crs) for gi, g in enumerate(plan.grids)}
    wkt = {names[gi]: g.gbox.crs.to_wkt() for gi, g in enumerate(plan.grids)}
    ext = np.empty((len(ids), 4))
    origin = np.empty((len(ids), 2))
    crs = []
    for i, uid in enumerate(ids):
        u = by_id[uid].unit
        a, (h, w) = u.gbox.affine, u.gbox.shape
        ext[i] = (a.c, a.f, a.c + w * a.a + h * a.b, a.f + w * a.d + h * a.e)
        ga = plan.grids[u.grid].gbox.affine
        origin[i] = (ga.c, ga.f)
        crs.append(names[u.grid])
    boxes = shapely.box(np.minimum(ext[:, 0], ext[:, 2]), np.minimum(ext[:, 1], ext[:, 3]),
                        np.maximum(ext[:, 0], ext[:, 2]), np.maximum(ext[:, 1], ext[:, 3])) if len(ids) else np.array([], dtype=object)
    return Footprints(list(ids), crs, boxes, origin, wkt)


def check_blocks(cfg, plan, ids: list[str]) -> None:
    """Refuse a spatial-blocks split that cannot hold its rule on the units ``ids`` of ``plan``.

    Raises
    ------
    RecipeError
        A unit's grid has a geographic CRS or one not in metres, or is rotated (the blocks are
        squares in metres of the grid's CRS); ``dataset.split.block_size_m`` is not a whole
        multiple (>= 1) of a unit's width or height in metres (a unit would straddle blocks: no
        0-leak guarantee). The message names the field, the value and valid ones.
    """
    by_id = {up.id: up for up in plan.units}
    seen: set[tuple[int, float, float]] = set()
    b = float(cfg.block_size_m)
    for uid in ids:
        up = by_id[uid]
        g = plan.grids[up.unit.grid].gbox
        a = up.unit.gbox.affine
        key = (up.unit.grid, abs(a.a) * up.unit.gbox.shape[1], abs(a.e) * up.unit.gbox.shape[0])
        if key in seen:
            continue
        seen.add(key)
        crs = g.crs
        if crs.geographic or tuple(crs.units) != ("metre", "metre"):
            raise RecipeError(f"recipe field 'dataset.split.kind': spatial-blocks needs a projected grid CRS in metres; grid {up.unit.grid} "
                              f"is {crs_name(crs)} ({', '.join(crs.units)}); set grid.crs to a UTM or equal-area CRS "
                              f"or use dataset.split.kind: random")
        if g.affine.b or g.affine.d:
            raise RecipeError(f"recipe field 'dataset.split.kind': spatial-blocks needs a north-up grid; grid {up.unit.grid} is rotated "
                              f"({tuple(g.affine)[:6]}); use dataset.split.kind: random")
        for side in sorted({key[1], key[2]}):
            k = b / side
            if k < 1 - 1e-9 or abs(k - round(k)) > 1e-6:
                raise RecipeError(f"recipe field 'dataset.split.block_size_m': {b:g} m is not a whole multiple of the "
                                  f"units' size ({side:g} m, unit {uid}): a unit would straddle two blocks; use a "
                                  f"multiple of {side:g} m, e.g. {', '.join(f'{side * i:g}' for i in (2, 4, 8))} m")


def blocks_of(fp: Footprints, b: float) -> list[BlockKey]:
    """The block (side ``b`` metres, anchored at the unit's grid corner) holding each unit's centroid."""
    import numpy as np
    import shapely

    if not fp.ids:
        return []
    bb = shapely.bounds(fp.boxes)
    cx, cy = (bb[:, 0] + bb[:, 2]) / 2, (bb[:, 1] + bb[:, 3]) / 2
    rows = np.floor((fp.origin[:, 1] - cy) / b).astype(int)
    cols = np.floor((cx - fp.origin[:, 0]) / b).astype(int)
    return [(c, float(x0), float(y0), int(r), int(k)) for c, (x0, y0), r, k in zip(fp.crs, fp.origin, rows, cols)]


def block_polygon(key: BlockKey, b: float):
    """The square of block ``key`` (side ``b``) in its CRS, a shapely Polygon."""
    import shapely

    _, x0, y0, row, col = key
    return shapely.box(x0 + col * b, y0 - (row + 1) * b, x0 + (col + 1) * b, y0 - row * b)


def assign_blocks(keys: set[BlockKey], seed: int, fractions: tuple[float, float, float]) -> dict[BlockKey, str]:
    """The part of each block: ``sorted(keys)`` shuffled with ``random.Random(seed)``; the first
    ``floor(f_train * n + 0.5)`` train, up to ``floor((f_train + f_validation) * n + 0.5)``
    validation, the rest test. Independent of the units' order; a new seed gives a new draw."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n = len(order)
    k1 = int(math.floor(fractions[0] * n + 0.5))
    k2 = n if fractions[2] == 0 else int(math.floor((fractions[0] + fractions[1]) * n + 0.5))
    return {k: ("train" if i < k1 else "validation" if i < k2 else "test") for i, k in enumerate(order)}


def near_other_part(fp: Footprints, part: list[str], blocks: dict[BlockKey, str], b: float, distance: float) -> list[str]:
    """The ids of ``fp`` (unit ``i`` in part ``part[i]``) whose footprint touches (or overlaps) a
    block of another part (``blocks``: block -> part) or lies closer than ``distance`` metres to one.

    Computed in each unit's grid CRS with a shapely STRtree over the blocks; blocks in another CRS
    are reprojected into it (:func:`eochips.dataset.leaks.near_in_crs`).

    Returns
    -------
    list of str
        The ids, sorted.
    """
    import numpy as np
    import shapely

    from .leaks import near_in_crs

    by_crs: dict[str, list[BlockKey]] = {}
    for k in sorted(blocks):
        by_crs.setdefault(k[0], []).append(k)
    out: set[str] = set()
    for name in sorted(set(fp.crs)):
        mine = fp.where(name)
        geoms = fp.boxes[mine]
        region = shapely.box(*shapely.total_bounds(geoms))
        keys, polys = [], []
        for src, ks in sorted(by_crs.items()):
            for i, g in near_in_crs([block_polygon(k, b) for k in ks], fp.wkt[src], fp.wkt[name], region, distance):
                keys.append(ks[i])
                polys.append(g)
        arr = np.array(polys, dtype=object)
        ui, bi = shapely.STRtree(arr).query(geoms, predicate="dwithin", distance=distance)
        if not len(ui):
            continue
        other = np.array([blocks[keys[j]] != part[mine[i]] for i, j in zip(ui, bi)], dtype=bool)
        hit = other & (shapely.intersects(geoms[ui], arr[bi]) | (shapely.distance(geoms[ui], arr[bi]) < distance))
        out.update(fp.ids[mine[i]] for i in ui[hit])
    return sorted(out)


@SPLITS.register("spatial-blocks")
def spatial_blocks(ids: list[str], cfg, plan) -> SplitIds:
    """Split by blocks of ``cfg.block_size_m`` with a buffer of ``cfg.buffer_m`` (module docstring).

    Parameters
    ----------
    ids : list of str
        The kept unit ids.
    cfg : eochips.config.models.SpatialBlocksSplit
    plan : eochips.plan.Plan

    Returns
    -------
    SplitIds
        Each part's ids in the order of ``ids``; ``excluded`` the units within the buffer of a block of
        another part (sorted).

    Raises
    ------
    RecipeError
        :func:`check_blocks`.
    """
    import numpy as np
    import shapely

    check_blocks(cfg, plan, ids)
    b = float(cfg.block_size_m)
    fp = footprints(plan, ids)
    block = blocks_of(fp, b)
    parts = assign_blocks(set(block), cfg.seed, cfg.fractions)
    part = [parts[k] for k in block]
    squares = np.array([block_polygon(k, b) for k in block], dtype=object)
    outside = np.flatnonzero(~shapely.covers(squares, fp.boxes)) if ids else []
    if len(outside):  # the guarantee's premise (check_blocks makes it true on a grid's own lattice)
        raise RecipeError(f"recipe field 'dataset.split.block_size_m': unit {ids[outside[0]]} straddles two blocks of "
                          f"{b:g} m (its grid's units do not start at whole units from the grid's corner); use a block "
                          f"size that is a whole multiple of the units' size or dataset.split.kind: random")
    excluded = set(near_other_part(fp, part, parts, b, float(cfg.buffer_m)))
    out = {p: [u for u, q in zip(ids, part) if q == p and u not in excluded] for p in PARTS}
    return SplitIds(out["train"], out["validation"], out["test"], sorted(excluded))


def leak_distance(cfg) -> float:
    """The leak check's distance of split ``cfg`` (metres): its ``buffer_m`` (spatial blocks), else 0 (touching)."""
    return float(getattr(cfg, "buffer_m", 0.0))


def make_split(ids: list[str], cfg, plan) -> SplitIds:
    """The split ``cfg`` (``dataset.split``) of the kept ids ``ids`` of ``plan``."""
    return SPLITS.lookup(cfg.kind)(ids, cfg, plan)


def split_section(ctx) -> dict[str, Any]:
    """``summary["split"]`` of a finalisation context: ``kind``, units per part (``test`` 0 without a
    test part), ``excluded``, the leak check (:func:`eochips.dataset.leaks.leak_report`: ``leaks``,
    ``leak_detail``, ``leak_distance_m``), the split's ``settings`` and, for spatial blocks, ``blocks``
    (the blocks holding a kept unit drawn for each part, before the buffer)."""
    from .leaks import leak_report

    cfg = ctx.plan.recipe.dataset.split
    parts = {"train": ctx.train, "validation": ctx.val, "test": ctx.test}
    out: dict[str, Any] = {"kind": cfg.kind, **{p: len(v) for p, v in parts.items()}, "excluded": len(ctx.excluded),
                           "settings": cfg.model_dump(exclude={"kind"})}
    if cfg.kind == "spatial-blocks":
        out["settings"]["validation_fraction"] = round(cfg.fractions[1], 12)
        b = float(cfg.block_size_m)
        drawn = assign_blocks(set(blocks_of(footprints(ctx.plan, ctx.kept), b)), cfg.seed, cfg.fractions)
        out["blocks"] = {p: sum(1 for v in drawn.values() if v == p) for p in PARTS}  # the draw, before the buffer
    out.update(leak_report(ctx.plan, parts, leak_distance(cfg)))
    return out


def write_split(ctx) -> None:
    """The ``split`` finalizer: ``train_ids.csv`` / ``val_ids.csv`` (column ``ids``), ``test_ids.csv``
    when the split has a test part (:func:`has_test_part`), and ``ctx.summary["split"]``
    (:func:`split_section`). Excluded units are in no file (their index ``split`` is null)."""
    ctx.store.write_text("train_ids.csv", "ids\n" + "".join(f"{c}\n" for c in ctx.train))
    ctx.store.write_text("val_ids.csv", "ids\n" + "".join(f"{c}\n" for c in ctx.val))
    if has_test_part(ctx.plan.recipe.dataset.split):
        ctx.store.write_text("test_ids.csv", "ids\n" + "".join(f"{c}\n" for c in ctx.test))
    ctx.summary["split"] = split_section(ctx)
