"""Scene selection: a small registry of strategies.

A strategy takes the candidate scenes of one chip (each with its spatial coverage of that
chip or tile, in percent) and the recipe's ``selection`` section, and returns the scenes of
each time step in order, or raises :class:`SelectionFailed` with the reason the chip gets no
scenes. Add one with ``@register("name")``; an unknown name fails with the list of
registered ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .config import SelectionConfig
from .errors import RecipeError
from .search import Scene


@dataclass(frozen=True)
class Candidate:
    """A scene and its coverage (percent, 0..100) of the chip or tile being selected for."""

    scene: Scene
    coverage: float


class SelectionFailed(Exception):
    """No acceptable scene set for this chip; ``str(exc)`` is the reason recorded in the index."""


Strategy = Callable[[Sequence[Candidate], SelectionConfig], list[Scene]]
STRATEGIES: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    """Register a selection strategy under ``name``."""

    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return deco


def get_strategy(name: str) -> Strategy:
    """Look up a strategy.

    Raises
    ------
    RecipeError
        Unknown name (the message lists the registered strategies).
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise RecipeError(
            f"recipe field 'selection.strategy': unknown strategy {name!r}; valid: {', '.join(sorted(STRATEGIES))}"
        ) from None


def _by_date(cands: Sequence[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (c.scene.datetime, c.scene.id))


@register("first-middle-last")
def first_middle_last(cands: Sequence[Candidate], cfg: SelectionConfig) -> list[Scene]:
    """Seed 001's rule (ClarkCGA multi-temporal-crop-classification-training-data @82cca1a).

    Try coverage thresholds in order (default 100, 90, ..., 50 %); at the first threshold
    where at least ``min_scenes`` (3) scenes have coverage >= threshold, keep those, sort
    them by date and take indices ``0, n // 2, -1`` (the code's n//2, the later middle for
    even n). Fewer than ``min_scenes`` at every threshold: the chip is dropped.
    """
    for thr in cfg.coverage_thresholds:
        kept = _by_date([c for c in cands if c.coverage >= thr - 1e-9])
        if len(kept) >= cfg.min_scenes:
            n = len(kept)
            return [kept[0].scene, kept[n // 2].scene, kept[-1].scene]
    return _fail(cands, cfg)


@register("least-cloudy")
def least_cloudy(cands: Sequence[Candidate], cfg: SelectionConfig) -> list[Scene]:
    """The ``n_scenes`` least cloudy scenes among those at the first coverage threshold that
    has at least ``n_scenes`` of them; ties broken by date then id. Returned in date order."""
    for thr in cfg.coverage_thresholds:
        kept = [c for c in cands if c.coverage >= thr - 1e-9]
        if len(kept) >= cfg.n_scenes:
            kept.sort(key=lambda c: (c.scene.cloud_cover if c.scene.cloud_cover is not None else 101.0, c.scene.datetime, c.scene.id))
            return [c.scene for c in _by_date(kept[: cfg.n_scenes])]
    return _fail(cands, cfg, need=cfg.n_scenes)


@register("all")
def all_scenes(cands: Sequence[Candidate], cfg: SelectionConfig) -> list[Scene]:
    """Every scene whose coverage reaches the last (lowest) threshold, in date order."""
    kept = _by_date([c for c in cands if c.coverage >= cfg.coverage_thresholds[-1] - 1e-9])
    if not kept:
        return _fail(cands, cfg, need=1)
    return [c.scene for c in kept]


def _fail(cands: Sequence[Candidate], cfg: SelectionConfig, need: int | None = None) -> list[Scene]:
    need = need or cfg.min_scenes
    low = cfg.coverage_thresholds[-1]
    have = sum(c.coverage >= low - 1e-9 for c in cands)
    raise SelectionFailed(f"selection: {have} scene(s) cover >= {low:g}%, need {need}")


def seeded_by_date(cands: Sequence[Candidate], thresholds: Sequence[float], min_scenes: int, n: int,
                   seed: int, key: str) -> list[Scene]:
    """Seed 000's cloud-mask scene choice, made explicit and reproducible.

    The coverage fallback of seed 001 (first threshold with at least ``min_scenes`` scenes),
    then, of those sorted by (date, id), ``n`` chosen with ``random.Random(f"{seed}:{key}")``
    (``key``: the tile, so every chip of a tile gets the same masks, as in the seed), returned
    in date order. (The seed took the first 6 in API order.)

    Raises
    ------
    SelectionFailed
        Fewer than ``min_scenes`` at every threshold.
    """
    import random

    for thr in thresholds:
        kept = _by_date([c for c in cands if c.coverage >= thr - 1e-9])
        if len(kept) >= min_scenes:
            idx = sorted(random.Random(f"{seed}:{key}").sample(range(len(kept)), n))
            return [kept[i].scene for i in idx]
    low = thresholds[-1]
    have = sum(c.coverage >= low - 1e-9 for c in cands)
    raise SelectionFailed(f"cloud masks: {have} cloudy scene(s) cover >= {low:g}%, need {min_scenes}")
