"""The leak check: per pair of split parts, the units that touch or lie near a unit of the other part.

Two kept units of different parts *leak* when their footprints touch or overlap, or lie closer
than the leak distance ``d`` (:func:`eochips.dataset.splits.leak_distance`: the spatial-blocks
``buffer_m``; 0 for ``random`` and ``tile-ring``, so there only touching counts). A gap of exactly
``d`` is not a leak (a buffer of ``d`` asks for at least ``d`` between parts). Neighbouring chips
share edges, so a random split of a contiguous grid leaks almost everywhere (the issue's finding:
22 of the demo's 22 validation chips touch a train chip).

Footprints are the units' boxes in their grid's CRS (metres). Units of grids in different CRSs
(scene grids of several UTM zones) are compared in the CRS of the held-out unit, the others
reprojected into it with densified edges (:func:`eochips.geo.reproject_geometry`): distances there
are the true ones to the projection's scale error (a few parts in 10,000 near a UTM zone), so a
pair at a distance within that error of ``d`` may be counted either way.

The counts (``summary["split"]["leaks"]``) are per pair ``"A/B"`` (A before B in train, validation,
test): the number of units of B (the held-out part) within the leak distance of some unit of A;
``summary["split"]["leak_detail"]`` adds the units of A near B and the number of leaking pairs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .splits import PARTS, footprints

PAIRS = tuple((a, b) for i, a in enumerate(PARTS) for b in PARTS[i + 1:])
"""The part pairs, ``("train", "validation"), ("train", "test"), ("validation", "test")``."""


def near_in_crs(geoms: list, src: str, dst: str, region, distance: float) -> list[tuple[int, Any]]:
    """``(i, geometry in dst)`` for the geometries ``geoms`` (CRS ``src``, WKT) that may lie within
    ``distance`` metres of ``region`` (a shapely geometry in ``dst``): those in ``dst`` itself all;
    from another CRS, those whose lon/lat bounds come within a generous margin (3 x the distance
    plus 0.05 degrees, widened by 1 / cos(latitude)) of the region's, reprojected (densified edges;
    :func:`eochips.geo.reproject_geometry`) into ``dst``. The lon/lat prefilter keeps a geometry on
    the other side of the globe from being projected far outside its CRS's domain."""
    import shapely

    from ..geo import reproject_geometry

    if not geoms:
        return []
    if src == dst:
        return list(enumerate(geoms))
    ll = reproject_geometry(np.array(geoms, dtype=object), src, "EPSG:4326")
    rx0, ry0, rx1, ry1 = shapely.bounds(reproject_geometry(region, dst, "EPSG:4326"))
    lat = min(max(abs(ry0), abs(ry1)), 85.0)
    pad_y = 3 * distance / 111_320 + 0.05
    pad_x = pad_y / math.cos(math.radians(lat))
    b = shapely.bounds(ll)
    near = (b[:, 2] >= rx0 - pad_x) & (b[:, 0] <= rx1 + pad_x) & (b[:, 3] >= ry0 - pad_y) & (b[:, 1] <= ry1 + pad_y)
    idx = np.flatnonzero(near)
    if not len(idx):
        return []
    moved = reproject_geometry(np.array([geoms[i] for i in idx], dtype=object), src, dst)
    return [(int(i), g) for i, g in zip(idx, moved) if np.isfinite(shapely.bounds(g)).all()]


def near_pairs(plan, held: list[str], others: list[str], distance: float) -> list[tuple[str, str]]:
    """The pairs ``(h, o)`` of units of ``held`` and ``others`` (ids of ``plan``'s units) whose
    footprints intersect (touching included) or lie closer than ``distance`` metres.

    Compared in each held unit's grid CRS with a shapely STRtree over the other units' footprints
    (those of another CRS reprojected into it).

    Returns
    -------
    list of (str, str)
        Sorted pairs.
    """
    import shapely

    if not held or not others:
        return []
    hf, of = footprints(plan, held), footprints(plan, others)
    out: list[tuple[str, str]] = []
    for name in sorted(set(hf.crs)):
        mine = hf.where(name)
        geoms = hf.boxes[mine]
        region = shapely.box(*shapely.total_bounds(geoms))
        ids, theirs = [], []
        for src in sorted(set(of.crs)):
            pos = of.where(src)
            for i, g in near_in_crs(list(of.boxes[pos]), of.wkt[src], hf.wkt[name], region, distance):
                ids.append(others[pos[i]])
                theirs.append(g)
        if not theirs:
            continue
        theirs_arr = np.array(theirs, dtype=object)
        hi, oi = shapely.STRtree(theirs_arr).query(geoms, predicate="dwithin", distance=distance)
        if not len(hi):
            continue
        a, b = geoms[hi], theirs_arr[oi]
        hit = shapely.intersects(a, b) | (shapely.distance(a, b) < distance)
        out.extend((held[mine[i]], ids[j]) for i, j in zip(hi[hit], oi[hit]))
    return sorted(out)


def leak_report(plan, parts: dict[str, list[str]], distance: float) -> dict[str, Any]:
    """The leak check of a split (module docstring).

    Parameters
    ----------
    plan : eochips.plan.Plan
    parts : dict
        ``{"train": ids, "validation": ids, "test": ids}`` (kept units; excluded ones left out).
    distance : float
        The leak distance (metres, >= 0).

    Returns
    -------
    dict
        ``{"leaks": {"train/validation": n, "train/test": n, "validation/test": n},
        "leak_detail": {pair: {"held_out": n, "near": n, "pairs": n}}, "leak_distance_m": d}``: for each
        pair A/B, ``held_out`` (= ``leaks``) the units of B near a unit of A, ``near`` the units of A
        near a unit of B, ``pairs`` the leaking (A, B) unit pairs.
    """
    leaks: dict[str, int] = {}
    detail: dict[str, dict[str, int]] = {}
    for a, b in PAIRS:
        pairs = near_pairs(plan, parts.get(b, []), parts.get(a, []), distance)
        key = f"{a}/{b}"
        leaks[key] = len({h for h, _ in pairs})
        detail[key] = {"held_out": leaks[key], "near": len({o for _, o in pairs}), "pairs": len(pairs)}
    return {"leaks": leaks, "leak_detail": detail, "leak_distance_m": float(distance)}
