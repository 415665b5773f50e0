"""The built-in selection strategies (each the ``kind`` of a config model in
:mod:`eochips.config.models`)."""

from __future__ import annotations

from . import Pick, SceneGroup, SelectionContext, SelectionFailed, by_date, coverage_fallback, covering, one_each, register


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
