"""The built-in selection strategies (each the ``kind`` of a config model in
:mod:`eochips.config.models`)."""

from __future__ import annotations

from typing import Sequence

from . import (Candidate, Pick, SceneGroup, SelectionContext, SelectionFailed, by_date, coverage_fallback,
               covering, one_each, register)


@register("first-middle-last")
def first_middle_last(ctx: SelectionContext) -> list[SceneGroup]:
    """Seed 001's rule (ClarkCGA multi-temporal-crop-classification-training-data @82cca1a).

    At the first coverage threshold (default 100, 90, ..., 50 %) where at least ``min_scenes``
    scenes (>= 3) have coverage >= threshold, sort them by date and take indices
    ``0, n // 2, -1`` (the code's n//2: the later middle for even n). Since n >= 3 the three
    dates are distinct scenes. Fewer at every threshold: the unit is dropped.
    """
    kept = coverage_fallback(ctx, ctx.config.min_scenes)
    n = len(kept)
    return one_each([kept[0], kept[n // 2], kept[-1]])


@register("least-cloudy")
def least_cloudy(ctx: SelectionContext) -> list[SceneGroup]:
    """The ``n_scenes`` least cloudy scenes (``eo:cloud_cover``; unknown counts as 101) at the
    first coverage threshold with at least that many, ties by date then id; in date order."""
    n = ctx.config.n_scenes
    kept = coverage_fallback(ctx, n)
    kept.sort(key=lambda c: (c.scene.cloud_cover if c.scene.cloud_cover is not None else 101.0, c.scene.datetime, c.scene.id))
    return one_each(by_date(kept[:n]))


@register("seeded-by-date")
def seeded_by_date(ctx: SelectionContext) -> list[SceneGroup]:
    """Seed 000's cloud-mask scene choice (ClarkCGA cloud-gap-filling-td @8130cd3), made
    explicit and reproducible: the coverage fallback with ``min_scenes``, then ``n_scenes`` of
    those (sorted by date, id) drawn with ``random.Random(f"{seed}:{key}")`` (``key``: the tile,
    so every unit of a tile gets the same scenes, as in the seed), in date order. (The seed
    took the first 6 in API order.)"""
    cfg = ctx.config
    kept = coverage_fallback(ctx, cfg.min_scenes)
    idx = sorted(ctx.rng(cfg.seed).sample(range(len(kept)), cfg.n_scenes))
    return one_each([kept[i] for i in idx])


@register("all")
def all_scenes(ctx: SelectionContext) -> list[SceneGroup]:
    """Every scene whose coverage reaches the last (lowest) threshold, one time step each, in date order."""
    kept = covering(ctx.candidates, ctx.config.coverage_thresholds[-1])
    if not kept:
        raise SelectionFailed(f"selection: no scene covers >= {ctx.config.coverage_thresholds[-1]:g}% of the unit")
    return one_each(kept)


@register("intersecting")
def intersecting(ctx: SelectionContext) -> list[SceneGroup]:
    """Every scene whose footprint intersects the unit, as ONE time step whose scenes are
    composited in date order (DEM tiles; swaths that together cover the unit)."""
    kept = by_date([c for c in ctx.candidates if c.coverage > 0])
    if not kept:
        raise SelectionFailed("selection: no scene intersects the unit")
    return [tuple(Pick(c.scene) for c in kept)]


def _cloud(c: Candidate) -> float:
    return c.scene.cloud_cover if c.scene.cloud_cover is not None else 101.0


@register("least-cloudy-per-year")
def least_cloudy_per_year(ctx: SelectionContext) -> list[SceneGroup]:
    """Clay's Sentinel-2 choice (Clay-foundation/model scripts/pipeline/datacube.py @8b83005).

    The years ``years[0]..years[1]`` are shuffled with ``random.Random(seed)`` (``seed``: the
    config's, else the job's: the AOI row), exactly as the seed's ``random.seed(index);
    random.shuffle(date_ranges)`` orders 2017..2023. Per year, the candidates dated in that
    year (UTC) whose footprint holds the area's centroid (``contains: centroid``; the seed's
    ``s_intersects`` with ``aoi.centroid``) or touches the area (``any``), sorted by
    ``eo:cloud_cover`` ascending (unknown last; ties by date, id), are tried in that order, at
    most ``attempts`` of them: the first that ``ctx.accept`` takes (every source matched to
    this one found its scenes) is the year's scene. A year without one is skipped. Stops after
    ``n_years`` years are matched; one single-scene group per matched year, in year order.

    ``ctx.notes["years"]`` gets one entry per year tried: ``year``, ``s2_candidates`` (how many),
    ``s2_tried`` (ids, in order), ``s2_chosen`` (id or None), ``matched``, ``reason`` and the
    accepting detail of each try (``tries``).

    Raises
    ------
    SelectionFailed
        No year matched.
    """
    import random

    cfg = ctx.config
    years = list(range(cfg.years[0], cfg.years[1] + 1))
    random.Random(cfg.seed if cfg.seed is not None else ctx.seed).shuffle(years)
    centroid = ctx.area.centroid if ctx.area is not None else None
    report = ctx.notes.setdefault("years", [])
    groups: list[SceneGroup] = []
    for year in years:
        if len(groups) == cfg.n_years:
            break
        cands = [c for c in ctx.candidates if c.scene.datetime.year == year]
        if cfg.contains == "centroid" and centroid is not None:
            cands = [c for c in cands if c.footprint is None or c.footprint.covers(centroid)]
        cands.sort(key=lambda c: (_cloud(c), c.scene.datetime, c.scene.id))
        entry = {"year": year, "s2_candidates": len(cands), "s2_tried": [], "s2_chosen": None, "matched": False,
                 "reason": "", "tries": []}
        report.append(entry)
        for c in cands[:cfg.attempts]:
            entry["s2_tried"].append(c.scene.id)
            ok, detail = ctx.accept(c.scene) if ctx.accept is not None else (True, {})
            entry["tries"].append({"scene": c.scene.id, "cloud_cover": c.scene.cloud_cover, **detail})
            if ok:
                entry.update(s2_chosen=c.scene.id, matched=True, reason="")
                groups.append((Pick(c.scene),))
                break
        else:
            if not cands:
                entry["reason"] = f"no scene of {year} passes the search and holds the AOI's centroid" if cfg.contains == "centroid" \
                    else f"no scene of {year} passes the search and touches the AOI"
            else:
                last = entry["tries"][-1].get("reason", "not accepted")
                entry["reason"] = f"none of the {len(entry['s2_tried'])} least cloudy scene(s) tried had a match (last: {last})"
    if not groups:
        tried = ", ".join(str(e["year"]) for e in report) or "none"
        raise SelectionFailed(f"least-cloudy-per-year: no year matched (years tried: {tried})")
    return groups


def _calendar_window(ref, days: int):
    """The seed's window ``(ref - days).date() .. (ref + days).date()``, whole days, inclusive
    (datacube.py get_surrounding_days, sent as a CQL2 date interval)."""
    from datetime import datetime, time, timedelta, timezone

    lo = datetime.combine((ref - timedelta(days=days)).date(), time.min, timezone.utc)
    hi = datetime.combine((ref + timedelta(days=days)).date(), time.max, timezone.utc)
    return lo, hi


@register("nearest-in-time")
def nearest_in_time(ctx: SelectionContext) -> list[SceneGroup]:
    """Clay's Sentinel-1 match (datacube.py ``search_sentinel1`` @8b83005), with its bug fixed.

    For each time step of source ``relative_to`` in ``ctx.picks`` (its first scene is the
    reference): the candidates dated within +-``window_days`` calendar days of the reference
    (UTC), sorted by the area they overlap (descending; ties by time distance, then id); the
    ``same`` properties (``sat:orbit_state``) of the first fix which others may join; those are
    added in that order until their union covers ``cover`` percent of the area. The seed
    set the covered area to each new scene's footprint instead of adding it, so it could stop
    early or take scenes it did not need: here the union is kept. The step's scenes are
    composited in date order (later on top with ``composite: later-on-top``).

    ``ctx.notes["match"]`` gets, per reference step: ``reference``, ``candidates`` (in the
    window), ``chosen`` (ids), ``coverage`` (percent of the area the union covers), ``same``
    (the fixed property values), ``reason``.

    Raises
    ------
    SelectionFailed
        A reference step without any candidate in its window (the unit, or the reference scene,
        has no match), or no reference scene at all.
    """
    import shapely

    cfg = ctx.config
    refs = ctx.picks.get(cfg.relative_to) or []
    if not refs:
        raise SelectionFailed(f"nearest-in-time: source {cfg.relative_to!r} has no scene to match")
    area = ctx.area
    total = area.area if area is not None else 0.0
    notes = ctx.notes.setdefault("match", [])
    groups: list[SceneGroup] = []
    for grp in refs:
        ref = grp[0].scene
        lo, hi = _calendar_window(ref.datetime, cfg.window_days)
        inside = [c for c in ctx.candidates if lo <= c.scene.datetime <= hi]
        note = {"reference": ref.id, "candidates": len(inside), "chosen": [], "coverage": 0.0, "same": {}, "reason": ""}
        notes.append(note)
        if not inside:
            note["reason"] = f"no scene within +-{cfg.window_days} days of {ref.datetime:%Y-%m-%d}"
            raise SelectionFailed(f"nearest-in-time: {note['reason']} (reference {ref.id})")

        def overlap(c: Candidate) -> float:
            return c.coverage * total / 100.0

        inside.sort(key=lambda c: (-overlap(c), abs((c.scene.datetime - ref.datetime).total_seconds()), c.scene.id))
        fixed = {k: inside[0].scene.properties.get(k) for k in cfg.same}
        note["same"] = fixed
        union = None
        chosen: list[Candidate] = []
        for c in inside:
            if any(c.scene.properties.get(k) != v for k, v in fixed.items()):
                continue
            if union is not None and area is not None and _coverage(union, area, total) >= cfg.cover:
                break
            chosen.append(c)
            if c.footprint is not None:
                union = c.footprint if union is None else shapely.union(union, c.footprint)
        cov = _coverage(union, area, total) if union is not None and area is not None else 0.0
        note.update(chosen=[c.scene.id for c in chosen], coverage=round(min(cov, 100.0), 6))
        if cov < cfg.cover:
            note["reason"] = f"the union of the {len(chosen)} scene(s) covers {cov:.2f}% of the area"
        groups.append(tuple(Pick(c.scene) for c in sorted(chosen, key=lambda c: (c.scene.datetime, c.scene.id))))
    return groups


def _coverage(union, area, total: float) -> float:
    """Percent of ``area`` (of area ``total``) that ``union`` covers."""
    import shapely

    return 100.0 * shapely.intersection(union, area).area / total if total > 0 else 0.0


def seed_order(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates in cloud-buster's search order, newest first: datetime descending, then id
    ascending (the stated stable order that breaks score ties in :func:`greedy_coverage`)."""
    by_id = sorted(cands, key=lambda c: c.scene.id)
    return sorted(by_id, key=lambda c: c.scene.datetime, reverse=True)  # stable: ids stay ascending within a datetime


def _clear_fraction(c: Candidate) -> float:
    """``1 - eo:cloud_cover / 100``; an unknown cloud cover counts as 100 % (fraction 0)."""
    return 0.0 if c.scene.cloud_cover is None else 1.0 - float(c.scene.cloud_cover) / 100.0


def _greedy_stage(pool: list[Candidate], copies: list, clear: dict[str, float], max_uncovered: float,
                  limit: int | None) -> tuple[list[tuple[Candidate, int, float, float]], str]:
    """One stage of :func:`greedy_coverage`: picks ``(candidate, copy, score, remaining after)``
    and the stop reason. ``pool`` (in seed order) and ``copies`` are consumed in place."""
    import shapely

    # score[i][j] of pool[i] against copy j; a copy's column is recomputed only when that copy shrinks,
    # and a pair once at 0 stays at 0 (remaining areas only shrink)
    scores = [[shapely.intersection(c.footprint, cp).area * clear[c.scene.id] for cp in copies] for c in pool]
    picks: list[tuple[Candidate, int, float, float]] = []
    while True:
        remaining = sum(cp.area for cp in copies)
        if remaining <= max_uncovered:
            return picks, "covered"
        if limit is not None and len(picks) == limit:
            return picks, "max_selections"
        if not pool:
            return picks, "no_candidates"
        best, bi, bj = 0.0, -1, -1
        for i, row in enumerate(scores):
            for j, s in enumerate(row):
                if s > best:  # strict: ties go to the first (scene order, copy index)
                    best, bi, bj = s, i, j
        if bi < 0:
            return picks, "no_score"
        c = pool.pop(bi)
        scores.pop(bi)
        copies[bj] = shapely.difference(copies[bj], c.footprint)
        for i, cand in enumerate(pool):
            if scores[i][bj] > 0:
                scores[i][bj] = shapely.intersection(cand.footprint, copies[bj]).area * clear[cand.scene.id]
        picks.append((c, bj, best, sum(cp.area for cp in copies)))


@register("greedy-coverage")
def greedy_coverage(ctx: SelectionContext) -> list[SceneGroup]:
    """cloud-buster's greedy multi-coverage choice (azavea/cloud-buster @fe6c339,
    ``cloudbuster/filter.py`` ``filter_response``), over ``ctx.area``: the AOI union in the
    equal-area CRS (areas in m^2), footprints ``Candidate.footprint`` in the same CRS.

    Order: the candidates in the seed's search order, newest first (datetime descending, then
    id ascending: :func:`seed_order`). Score of (scene, copy) = area(footprint ∩ remaining copy)
    x (1 - eo:cloud_cover / 100); an unknown cloud cover counts as 100 % (score 0: such a scene
    is never picked, where the seed would fail on it).

    Primary stage: ``coverage_count`` copies of the area. Repeat: stop when the summed remaining
    area is <= ``max_uncovered_m2`` (``covered``), after exactly ``max_selections`` picks
    (``max_selections``; the seed allowed one more), when no scene is left (``no_candidates``),
    or when the best score is <= 0 (``no_score``); else pick the pair of highest score (ties: the
    first in (scene order, copy index) order, as the seed's strict ``>`` scan), subtract the
    footprint from that copy only, remove the scene. Backstop stage (``backstop``): the same
    against ONE fresh copy of the area with the scenes left, the same stop rules on that copy's
    area; ``max_selections`` counts primary picks only (the seed counted both stages together,
    so a full primary stage left no backstop). Returns ONE time step: the primary picks then the
    backstop ones (role ``backstop``), each in pick order.

    ``ctx.notes`` gets the selection log: ``aoi_area_m2``, ``coverage_count``,
    ``max_uncovered_m2``, ``candidates`` (how many), ``picks`` (per pick: ``number`` 1-based
    over both stages, ``scene_id``, ``datetime`` (ISO 8601 UTC), ``role``, ``score`` (m^2),
    ``copy`` (0-based; None for backstop), ``cloud_cover``, ``remaining_m2``: the stage's summed
    remaining area after the pick), ``remaining_primary_m2``, ``remaining_backstop_m2`` (None
    without the stage), ``stop_primary``, ``stop_backstop`` (a stop reason above, or
    ``disabled``).

    Raises
    ------
    SelectionFailed
        No primary pick at all (no scene intersects the area, or every score is 0).
    """
    from ..geo import EQUAL_AREA, reproject_geometry

    cfg, area = ctx.config, ctx.area
    if area is None:
        raise SelectionFailed("greedy-coverage: no area to cover")
    pool = []
    for c in seed_order(ctx.candidates):
        if c.footprint is None:
            c = Candidate(c.scene, c.coverage, reproject_geometry(c.scene.geometry, "EPSG:4326", EQUAL_AREA))
        pool.append(c)
    clear = {c.scene.id: _clear_fraction(c) for c in pool}
    notes = ctx.notes
    notes.update(aoi_area_m2=area.area, coverage_count=cfg.coverage_count, max_uncovered_m2=cfg.max_uncovered_m2,
                 candidates=len(pool), picks=[], remaining_primary_m2=None, remaining_backstop_m2=None,
                 stop_primary=None, stop_backstop="disabled")
    copies = [area] * cfg.coverage_count
    primary, notes["stop_primary"] = _greedy_stage(pool, copies, clear, cfg.max_uncovered_m2, cfg.max_selections)
    notes["remaining_primary_m2"] = sum(cp.area for cp in copies)
    if not primary:
        raise SelectionFailed(_no_pick_reason(notes["stop_primary"], pool, notes["aoi_area_m2"], cfg))
    backstop: list = []
    if cfg.backstop:
        one = [area]
        backstop, notes["stop_backstop"] = _greedy_stage(pool, one, clear, cfg.max_uncovered_m2, None)
        notes["remaining_backstop_m2"] = one[0].area
    for role, stage in (("primary", primary), ("backstop", backstop)):
        for c, j, score, rem in stage:
            notes["picks"].append({"number": len(notes["picks"]) + 1, "scene_id": c.scene.id,
                                   "datetime": c.scene.datetime.isoformat().replace("+00:00", "Z"), "role": role,
                                   "score": score, "copy": j if role == "primary" else None,
                                   "cloud_cover": c.scene.cloud_cover, "remaining_m2": rem})
    return [tuple(Pick(c.scene) for c, *_ in primary) + tuple(Pick(c.scene, "backstop") for c, *_ in backstop)]


def _no_pick_reason(stop: str, pool: list[Candidate], aoi_m2: float, cfg) -> str:
    """Why the primary stage of :func:`greedy_coverage` picked nothing."""
    if stop == "covered":
        return (f"greedy-coverage: the AOI ({aoi_m2:.6g} m^2 x coverage_count {cfg.coverage_count}) is already within "
                f"max_uncovered_m2 ({cfg.max_uncovered_m2:g} m^2); nothing to pick")
    if not pool:
        return "greedy-coverage: no scene intersects the AOI"
    unknown = sum(1 for c in pool if c.scene.cloud_cover is None)
    why = f" ({unknown} of them without eo:cloud_cover, which counts as 100 %)" if unknown else ""
    return f"greedy-coverage: none of the {len(pool)} scene(s) over the AOI scores above 0{why}"
