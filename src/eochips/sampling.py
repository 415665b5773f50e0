"""Which units (chips) of a dataset are kept, decided before any imagery is read.

Samplers
--------
``all``
    Every unit, :func:`all_units`.
``random-n``
    ``n`` distinct units drawn uniformly, :func:`random_n`.
``class-balance``
    The class-balanced draw of seed 001, :func:`class_balance`: chips rich in classes, with
    even class shares, are preferred.

Source of the class-balance rule: seed 001, ClarkCGA
multi-temporal-crop-classification-training-data @82cca1a, chip sampling script. Per chip
(a 224 x 224 window of a USDA Cropland Data Layer raster reclassified to 13 classes 1..13,
0 = no data) it counts the pixels of classes 1..13 (class 0 is not a column), computes::

    weight = 1 - (max(counts) - min(counts)) / sum(counts)   # over the 13 columns, zeros included
    if count_nonzero(counts) < 8: weight = weight - 1        # "chips with fewer than 8 classes are punished"
    if weight < 0: weight = 0

normalises the weights to sum 1, draws 100,000,000 chip ids with replacement with
``numpy.random.choice(p=weight)`` (unseeded), counts the draws per chip, sorts the chips by
that count descending and keeps the first 5000.

Ours differs in three stated ways: the per-chip draw counts come from one seeded
multinomial draw (``np.random.default_rng(seed).multinomial(draws, p)``: the same
distribution as counting ``draws`` independent ``choice`` draws, in O(n_units) instead of
O(draws)); ties in the count are broken by the original unit order (lower index first); a
chip with ``sum(counts) == 0`` (all no data) gets weight 0 instead of a division by zero.

Call convention of the registry
-------------------------------
Every entry of :data:`SAMPLERS` is called with keyword arguments only::

    keep = get_sampler(kind)(counts=counts, n_units=n_units, **params)

``counts`` is the ``(n_units, n_classes)`` per-unit class-count array (required by
``class-balance``, ignored otherwise and may be ``None``); ``n_units`` is the number of
units (may be ``None`` when ``counts`` is given; must equal ``len(counts)`` when both are).
``params`` are the sampler's own parameters (``n``, ``seed``, ``min_classes``, ``draws``);
an unknown one raises :class:`~eochips.errors.RecipeError`. The result is always an int64
``(n_kept,)`` array of unit indices in ascending order.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import numpy as np

from .errors import RecipeError

DEFAULT_DRAWS = 100_000_000  # seed 001's number of choice() draws
DEFAULT_MIN_CLASSES = 8  # seed 001: "chips with fewer than 8 classes are punished"
DEFAULT_SEED = 42


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise RecipeError naming ``name`` and the valid range."""
    valid = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < minimum or (maximum is not None and value > maximum):
        raise RecipeError(f"sampling.{name}: {value!r} is not valid; expected an integer {valid}")
    return int(value)


def _check_counts(counts: object) -> np.ndarray:
    """Return ``counts`` as a 2-D int64 array, or raise RecipeError naming ``counts``."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise RecipeError(
            f"sampling.counts: shape {arr.shape} is not valid; expected (n_units, n_classes) with n_classes >= 1"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise RecipeError(f"sampling.counts: dtype {arr.dtype} is not valid; expected integer pixel counts")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise RecipeError(f"sampling.counts: minimum {arr.min()} is not valid; pixel counts must be >= 0")
    return arr


def class_balance_weights(counts: np.ndarray, min_classes: int = DEFAULT_MIN_CLASSES) -> np.ndarray:
    """Seed 001's unnormalised class-balance weight of every unit.

    ``w = 1 - (max - min) / sum`` over the ``n_classes`` columns of a row (absent classes
    count as 0); ``w -= 1`` when fewer than ``min_classes`` columns are non-zero; ``w < 0``
    becomes 0; a row with ``sum == 0`` gets 0. Source: ClarkCGA
    multi-temporal-crop-classification-training-data @82cca1a (see the module docstring).

    Because ``min == 0`` whenever a class is absent, ``1 - max / sum < 1`` for such a row, so
    the "punishment" always clips to 0: a unit with fewer than ``min_classes`` classes has
    weight 0 and is never kept by :func:`class_balance`.

    Parameters
    ----------
    counts : ndarray, integer, shape (n_units, n_classes)
        Pixel counts of classes 1..K per unit; class 0 (no data) is excluded by the caller.
    min_classes : int
        Fewest classes present (non-zero columns) for an unpunished unit; 8 in the seed.

    Returns
    -------
    ndarray, float64, shape (n_units,)
        Weights in [0, 1] (dimensionless), not normalised.

    Raises
    ------
    RecipeError
        ``counts`` not 2-D, not integer or negative; ``min_classes`` not in 1..n_classes.
    """
    c = _check_counts(counts)
    min_classes = _check_int("min_classes", min_classes, 1, c.shape[1])
    # A sum-0 row divides 0 by 1 instead: 1 - 0 = 1, then punished (0 classes < min_classes) to 0.
    weights = 1.0 - (c.max(axis=1) - c.min(axis=1)) / np.maximum(c.sum(axis=1), 1)
    weights = np.where(np.count_nonzero(c, axis=1) < min_classes, weights - 1.0, weights)
    return np.where(weights > 0, weights, 0.0)


def class_balance(counts: np.ndarray, n: int, *, min_classes: int = DEFAULT_MIN_CLASSES,
                  seed: int = DEFAULT_SEED, draws: int = DEFAULT_DRAWS) -> np.ndarray:
    """Keep ``n`` units by seed 001's class-balanced draw, reproducibly.

    ``p = w / sum(w)`` with ``w`` from :func:`class_balance_weights`; the draw counts are
    ``np.random.default_rng(seed).multinomial(draws, p)``; units are ordered by (count
    descending, original index ascending) and the first ``n`` with count > 0 are kept.
    Source: ClarkCGA multi-temporal-crop-classification-training-data @82cca1a (which
    counts ``draws`` unseeded ``numpy.random.choice`` draws and keeps 5000); the multinomial
    and the tie break are ours (module docstring).

    Fewer than ``n`` units are returned when fewer than ``n`` units receive a draw: always
    when fewer than ``n`` have a positive weight (zero-weight units are never kept, none
    at all when every weight is 0), and possibly when ``draws`` is small.

    Parameters
    ----------
    counts : ndarray, integer, shape (n_units, n_classes)
        Pixel counts of classes 1..K per unit (class 0 excluded).
    n : int
        Most units to keep, > 0 (5000 in the seed).
    min_classes : int
        See :func:`class_balance_weights`.
    seed : int
        Seed of ``np.random.default_rng``, >= 0.
    draws : int
        Number of draws with replacement, > 0 (100,000,000 in the seed).

    Returns
    -------
    ndarray, int64, shape (n_kept,), n_kept <= n
        Indices of the kept units, ascending.

    Raises
    ------
    RecipeError
        Bad ``counts``, ``n``, ``min_classes``, ``seed`` or ``draws`` (the message names it).
    """
    weights = class_balance_weights(counts, min_classes)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    draws = _check_int("draws", draws, 1)
    total = weights.sum()
    if total == 0:
        return np.empty(0, dtype=np.int64)
    hits = np.random.default_rng(seed).multinomial(draws, weights / total)
    order = np.lexsort((np.arange(hits.size), -hits))  # last key is primary: count descending
    keep = order[hits[order] > 0][:n]
    return np.sort(keep).astype(np.int64)


def random_n(n_units: int, n: int, *, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Keep ``min(n, n_units)`` distinct units drawn uniformly at random.

    ``np.random.default_rng(seed).choice(n_units, size=min(n, n_units), replace=False)``,
    sorted.

    Parameters
    ----------
    n_units : int
        Number of units, >= 0.
    n : int
        Units to keep, > 0; all units are kept when ``n >= n_units``.
    seed : int
        Seed of ``np.random.default_rng``, >= 0.

    Returns
    -------
    ndarray, int64, shape (min(n, n_units),)
        Distinct indices in ``[0, n_units)``, ascending.

    Raises
    ------
    RecipeError
        Bad ``n_units``, ``n`` or ``seed`` (the message names it).
    """
    n_units = _check_int("n_units", n_units, 0)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    picked = np.random.default_rng(seed).choice(n_units, size=min(n, n_units), replace=False)
    return np.sort(picked).astype(np.int64)


def all_units(n_units: int) -> np.ndarray:
    """Keep every unit.

    Parameters
    ----------
    n_units : int
        Number of units, >= 0.

    Returns
    -------
    ndarray, int64, shape (n_units,)
        ``0 .. n_units - 1``.

    Raises
    ------
    RecipeError
        ``n_units`` is not an integer >= 0.
    """
    return np.arange(_check_int("n_units", n_units, 0), dtype=np.int64)


def _resolve_n_units(counts: np.ndarray | None, n_units: int | None) -> int:
    """``n_units``, or ``len(counts)`` when it is None; RecipeError if they disagree or both are None."""
    if counts is None:
        if n_units is None:
            raise RecipeError("sampling.n_units: None is not valid without counts; "
                              "give n_units (an integer >= 0) or counts")
        return n_units
    rows = _check_counts(counts).shape[0]
    if n_units is not None and n_units != rows:
        raise RecipeError(f"sampling.n_units: {n_units!r} does not match counts, which has {rows} rows")
    return rows


def _entry(name: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register-side wrapper: an unknown or missing parameter of sampler ``name`` raises
    RecipeError listing the accepted ones (instead of Python's TypeError)."""

    def wrap(entry: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        params = inspect.signature(entry).parameters
        required = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty]

        @functools.wraps(entry)
        def call(**kwargs: object) -> np.ndarray:
            unknown = sorted(set(kwargs) - set(params))
            missing = [p for p in required if p not in kwargs]
            if unknown or missing:
                problem = f"unknown parameter(s) {unknown}" if unknown else f"missing parameter(s) {missing}"
                raise RecipeError(f"sampling ({name}): {problem}; accepted: {', '.join(params)}")
            return entry(**kwargs)

        return call

    return wrap


@_entry("all")
def _all_entry(*, counts: np.ndarray | None = None, n_units: int | None = None) -> np.ndarray:
    return all_units(_resolve_n_units(counts, n_units))


@_entry("random-n")
def _random_n_entry(*, n: int, seed: int = DEFAULT_SEED, counts: np.ndarray | None = None,
                    n_units: int | None = None) -> np.ndarray:
    return random_n(_resolve_n_units(counts, n_units), n, seed=seed)


@_entry("class-balance")
def _class_balance_entry(*, n: int, counts: np.ndarray | None = None, n_units: int | None = None,
                         min_classes: int = DEFAULT_MIN_CLASSES, seed: int = DEFAULT_SEED,
                         draws: int = DEFAULT_DRAWS) -> np.ndarray:
    if counts is None:
        raise RecipeError("sampling (class-balance): counts is required, the (n_units, n_classes) class-count array")
    _resolve_n_units(counts, n_units)
    return class_balance(counts, n, min_classes=min_classes, seed=seed, draws=draws)


SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "all": _all_entry,
    "class-balance": _class_balance_entry,
    "random-n": _random_n_entry,
}
"""Sampler name -> callable; call convention in the module docstring."""


def get_sampler(name: str) -> Callable[..., np.ndarray]:
    """The registry entry called ``name``.

    Returns
    -------
    callable
        Called as ``f(counts=..., n_units=..., **params)`` (module docstring); returns int64
        ``(n_kept,)`` ascending unit indices.

    Raises
    ------
    RecipeError
        ``name`` is not a key of :data:`SAMPLERS`; the message lists the valid names.
    """
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise RecipeError(f"sampling.kind: unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}") from None
