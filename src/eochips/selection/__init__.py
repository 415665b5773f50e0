"""Scene selection: a registry of strategies over geometry.

For each unit (or each tile, or the whole AOI for a scene grid) and each source, a strategy
gets a :class:`SelectionContext` and returns the unit's time steps as scene groups
(:data:`SceneGroup`: one or more :class:`Pick` s, composited into one step), or raises
:class:`SelectionFailed` with the reason the unit gets no scenes.

The context holds the unit's area in an equal-area CRS (m^2), the candidate scenes with their
coverage of that area (percent) and footprints, the picks already made for the unit by other
sources (for strategies relative to another source), a seeded random generator per unit key
(the tile id or the unit id) and the source's selection config. The coverage fallback (first threshold with
enough scenes, seed 001) is one shared loop, :func:`coverage_fallback`, with a stated float
tolerance :data:`COVERAGE_TOL`.

Add a strategy with ``@register("name")`` next to a config model of ``kind: name`` in
:mod:`eochips.config.models`; an unknown name fails with the list of registered ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from shapely.geometry.base import BaseGeometry

from ..registry import Registry
from ..search import Scene

COVERAGE_TOL = 1e-6
"""Percent points of slack when comparing a coverage with a threshold: 99.99999999961 % counts
as 100 % (coverages are ratios of reprojected polygon areas, exact only to float rounding)."""


@dataclass(frozen=True)
class Candidate:
    """A scene that may be chosen for a unit.

    Attributes
    ----------
    scene
        The scene.
    coverage
        Percent (0..100) of the unit's area the scene covers (the item's own tile coverage
        attribute when its profile names one, e.g. HLS SPATIAL_COVERAGE).
    footprint
        The scene footprint in the equal-area CRS (or None when not computed).
    """

    scene: Scene
    coverage: float
    footprint: BaseGeometry | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Pick:
    """A chosen scene and its role in its group: ``primary``, or ``backstop`` (greedy-coverage's
    hole fillers, not cloud-masked, below every primary scene)."""

    scene: Scene
    role: str = "primary"


SceneGroup = tuple[Pick, ...]
"""The scenes of one time step of a unit, in compositing priority order."""


@dataclass(frozen=True)
class SelectionContext:
    """What a strategy knows about one unit (see the module docstring).

    Attributes
    ----------
    key
        Seed key of the unit: the tile id (``per: tile``) or the unit id.
    area
        The unit (tile, AOI) in the equal-area CRS; ``area.area`` is in m^2.
    candidates
        The candidate scenes, coverage > 0, in (datetime, id) order.
    config
        The source's ``selection`` section.
    picks
        Groups already chosen for this unit by other sources, by source name.
    source
        The source being selected for.
    accept
        For the grid source of a scene grid: ``accept(scene) -> (ok, detail)`` runs the
        selections of the sources matched to this one (``nearest-in-time``) for a candidate
        scene; ``ok`` False means no match (``detail["reason"]`` says why). None elsewhere.
    notes
        Where a strategy records what it tried (the match report); a fresh dict per call.
    seed
        The job's seed (the AOI row of a tile list, else 0).
    """

    key: str
    area: BaseGeometry | None
    candidates: Sequence[Candidate]
    config: Any
    picks: Mapping[str, Sequence[SceneGroup]] = field(default_factory=dict)
    source: str = ""
    accept: Callable[[Scene], tuple[bool, dict]] | None = field(default=None, compare=False, repr=False)
    notes: dict = field(default_factory=dict, compare=False, repr=False)
    seed: int = 0

    def rng(self, seed: int) -> random.Random:
        """A random generator seeded by ``seed`` and the unit's key: the same draw for every unit
        of a tile (``per: tile``), a different one per tile, whatever the processing order."""
        return random.Random(f"{seed}:{self.key}")


class SelectionFailed(Exception):
    """No acceptable scene set for this unit; ``str(exc)`` is the reason recorded in the index."""


Strategy = Callable[[SelectionContext], list[SceneGroup]]
STRATEGIES = Registry("selection")
register = STRATEGIES.register
get_strategy = STRATEGIES.lookup


def by_date(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates sorted by (datetime, id)."""
    return sorted(cands, key=lambda c: (c.scene.datetime, c.scene.id))


def covering(cands: Sequence[Candidate], threshold: float) -> list[Candidate]:
    """Candidates whose coverage reaches ``threshold`` percent (with :data:`COVERAGE_TOL`), by date."""
    return by_date([c for c in cands if c.coverage >= threshold - COVERAGE_TOL])


def coverage_fallback(ctx: SelectionContext, need: int, what: str = "selection") -> list[Candidate]:
    """Seed 001's fallback: the scenes covering the first threshold (``coverage_thresholds``, in
    order) at which at least ``need`` scenes do, in date order.

    Raises
    ------
    SelectionFailed
        Fewer than ``need`` scenes at every threshold; the message names the lowest threshold.
    """
    thresholds = ctx.config.coverage_thresholds
    for thr in thresholds:
        kept = covering(ctx.candidates, thr)
        if len(kept) >= need:
            return kept
    low = thresholds[-1]
    have = len(covering(ctx.candidates, low))
    raise SelectionFailed(f"{what}: {have} scene(s) cover >= {low:g}%, need {need}")


def one_each(cands: Sequence[Candidate]) -> list[SceneGroup]:
    """One single-scene time step per candidate, in the given order."""
    return [(Pick(c.scene),) for c in cands]


from . import strategies  # noqa: E402,F401  - registers the built-in strategies

__all__ = ["Candidate", "Pick", "SceneGroup", "SelectionContext", "SelectionFailed", "STRATEGIES", "register",
           "get_strategy", "coverage_fallback", "covering", "by_date", "one_each", "COVERAGE_TOL"]
