"""Streaming, float-safe per-band statistics, and the ``stats`` finalizer (``stats.json`` version 2).

``stats.json`` (:func:`dataset_stats`; contract of issue 14): per chip channel in chip order
(:mod:`eochips.dataset.channels`) arrays of mean, population std, exact minimum / maximum,
count and the ``dataset.percentiles``, of the stored values (raw DN, scene DN offsets
harmonised, below), ready for ``torchvision.transforms.Normalize(mean, std)``; the same pooled
per band over steps (seed 001's rule); the class table (:func:`class_table`) and weights.

The finaliser reads the chip files of a dataset one at a time (tens of thousands of them)
and needs, per output band, pooled over every chip and every date: count, mean, population
std, exact minimum and maximum, and percentiles, with nodata pixels left out. Memory must not
grow with the number of chips, and partial results from parallel workers must combine.

Design
------
:class:`RunningStats` accumulates one band. It keeps a fixed-size histogram and a few
scalars, never the pixels, so it is one pass, fixed memory, picklable (for Dask workers) and
mergeable. Which histogram depends on the band's dtype:

* **Exact path** -- integers of 1 or 2 bytes (``uint8``, ``int8``, ``uint16``, ``int16``): a
  histogram with one bin per possible value (65536 bins, ``np.bincount`` with an offset of
  32768 for signed types; 512 KiB). Count, mean, std, min, max and every percentile follow
  exactly from it: mean and variance are computed with Python integers, so they are the
  correctly rounded float64 values, and percentiles equal numpy's default ('linear') percentile
  of the pooled values.
* **Float path** -- everything else (``float32``, ``float64``, ``int32``, ``uint32``,
  ``int64``...): count, mean and M2 (sum of squared deviations) per :meth:`RunningStats.add`
  call, combined with the parallel formula of Chan, Golub & LeVeque (1979), on values shifted
  by the first value seen (their 1983 recommendation, so a large offset such as 1e8 +- 1e-3
  does not cost precision in the merges); exact min/max;
  and a 262144-bin histogram over the float32 bit pattern (2 MiB). Each value, as float32, is
  mapped to the unsigned 32-bit key that sorts like the value (flip the sign bit of positives,
  all bits of negatives: the "radix sort of floats" trick, M. Herf, *Radix Tricks*, 2001); the
  bin is the key's top 18 bits (sign, 8 exponent bits, 9 mantissa bits). A percentile is
  interpolated inside the bins that hold its ranks, clamped to the exact min/max.

Percentile definition
---------------------
numpy's default, ``method='linear'`` (Hyndman & Fan 1996, definition 7): with the ``n`` pooled
values sorted as ``x[0] <= ... <= x[n-1]``, ``v = (n - 1) * q / 100``, ``i = floor(v)``,
``g = v - i``, the ``q``-th percentile is ``lerp(x[i], x[min(i + 1, n - 1)], g)`` with numpy's
``_lerp`` (``a + (b - a) * g``, or ``b - (b - a) * (1 - g)`` when ``g >= 0.5``), evaluated in
float64. On the exact path the result is bit-for-bit ``np.percentile(x.astype(np.float64), q)``,
which is also ``np.percentile(x, q)`` except where numpy computes ``b - a`` in the integer
dtype and it overflows (int16 neighbours more than 32767 apart; numpy then returns garbage).

Float-path error bound
----------------------
A bin of float32 values of magnitude in ``[2**e, 2**(e+1))`` is ``2**(e-9)`` wide, so every
order statistic is estimated to within ``2**-9`` of its magnitude, plus the float32 rounding
of the value (half a float32 ulp, ``2**-24`` relative; with the bin taken at the rounded value
the sum stays below ``2**-9 + 2**-23``). The interpolated percentile between neighbours
``x[i]``, ``x[i+1]`` is therefore off by at most::

    (2**-9 + 2**-23) * ((1 - g) * |x[i]| + g * |x[i+1]|)  +  2**-126

which is ``(2**-9 + 2**-23) * |p|`` when the two neighbours have the same sign (always, unless
the percentile falls in a gap that spans zero), and never more than ``(2**-9 + 2**-23) *
max(|x[i]|, |x[i+1]|)``. The ``2**-126`` absolute term (~1.2e-38) is there because float32
subnormals are binned as zero; in exchange the zero bin holds only zeros and is exact, so data
with many exact zeros (sea-level DEM, dark water) get percentiles of exactly 0, not 1e-41.
-0.0 counts as 0.0. The bound assumes values within the
float32 range (``|x| <= 3.4e38``); larger float64 values go to the outermost finite bin and are
only clamped to the exact min/max. A constant band is exact.

Mean and std are exact to float64 rounding on both paths. Count, min, max, ``nonfinite``,
the histogram, and so the percentiles, are independent of the order in which values are added
or merged; mean and std agree to float64 rounding (Chan's update is not associative bit for bit).

Harmonised DN offsets
---------------------
A file's declared offset may include its scene's DN offset (Sentinel-2 L2A from processing
baseline 04.00 on: DN = 10000 * reflectance + 1000, declared as ``offset = -0.1`` with scale
1e-4; :func:`eochips.writers.layouts._offsets`). Pooling raw DN of scenes on both sides of
such a change would mix two scales. :meth:`RunningStats.add` therefore takes a ``shift`` in DN
(``(file offset - base offset) / scale``, :func:`eochips.dataset.channels.dn_shift`) that is
added to every kept value, so all values pool on the DN scale of the profile's base offset
(physical = DN * scale + base offset). On the exact path the shift must be an integer: the
values added with each shift keep their own 65536-bin histogram, and results come from their
sum laid out on the shifted axis, so everything stays exact (memory: 512 KiB per distinct
shift, usually one or two). On the float path the shift is added in float64 before anything
is accumulated.

Exclusions
----------
Pixels equal to ``nodata`` are excluded (GDAL's rule: for a float band the nodata value is
compared after conversion to the band's dtype; a NaN nodata excludes NaNs). For float bands,
NaN and +-inf are always excluded; those that are not nodata are counted in ``nonfinite``.

:class:`BandStatistics` holds one :class:`RunningStats` per band name; the finaliser adds the
same band of every date under one name, so dates are pooled.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import RecipeError

__all__ = ["RunningStats", "BandStatistics", "DEFAULT_PERCENTILES", "FLOAT_REL_ERROR", "STATS_VERSION", "class_weights",
           "multilabel_stats", "class_table", "dataset_stats"]

DEFAULT_PERCENTILES = (1.5, 98.5)
#: Relative error bound of a float-path percentile: one bin (2**-9) plus float32 rounding.
FLOAT_REL_ERROR = 2.0**-9 + 2.0**-23

_EXACT_BINS = 1 << 16  # one bin per value of a 1- or 2-byte integer
_SIGNED_OFFSET = 1 << 15  # int16 -32768 -> bin 0
_KEY_SHIFT = 14  # 32-bit key -> top 18 bits: sign, 8 exponent bits, 9 mantissa bits
_FLOAT_BINS = 1 << (32 - _KEY_SHIFT)  # 262144
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126, the smallest normal float32
_SIGN = np.uint32(0x80000000)
_ZERO_BIN = 0x80000000 >> _KEY_SHIFT  # the bin of +0.0 (and, flushed, of every subnormal)


def _float32_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of finite ``values`` as float32 (Herf 2001).

    Parameters
    ----------
    values : numpy.ndarray
        1-d, any real dtype, finite values only.

    Returns
    -------
    numpy.ndarray
        uint32, same shape; ``a < b`` implies ``key(a) <= key(b)``. Float64 values beyond the
        float32 range are clipped to it first; subnormals and -0.0 become +0.0, so the zero
        bin holds zeros only.
    """
    if values.dtype.kind == "f" and values.dtype.itemsize > 4:
        values = np.clip(values, -_F32_MAX, _F32_MAX)
    x = values.astype(np.float32)
    bits = np.where(np.abs(x) < _F32_TINY, np.float32(0.0), x).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _bin_edge(bins: np.ndarray) -> np.ndarray:
    """The smallest float32 value of each float-path bin, as float64 (inverse of the key map).

    ``_bin_edge(b + 1)`` is the supremum of bin ``b``. Finite values lie in bins below
    ``0x3FE00`` (the bin of +inf, whose edge is +inf), so ``b + 1`` keys fit in 32 bits.
    """
    keys = (bins.astype(np.uint64) << _KEY_SHIFT).astype(np.uint32)
    bits = np.where(keys & _SIGN, keys ^ _SIGN, ~keys)
    return bits.view(np.float32).astype(np.float64)


def _lerp(a: np.ndarray, b: np.ndarray, g: np.ndarray) -> np.ndarray:
    """numpy's ``_lerp`` (``numpy/lib/_function_base_impl.py``), in float64."""
    d = b - a
    return np.where(g >= 0.5, b - d * (1 - g), a + d * g)


def _check_percentiles(percentiles: Sequence[float]) -> list[float]:
    """Validate percentiles (numbers in [0, 100], as ``np.percentile``); raise RecipeError."""
    if (isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, (Sequence, np.ndarray))
            or np.ndim(percentiles) != 1):
        raise RecipeError(f"percentiles {percentiles!r}: expected a sequence of numbers in [0, 100]")
    out = []
    for p in percentiles:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= float(p) <= 100:
            raise RecipeError(f"percentile {p!r}: expected a number in [0, 100]")
        out.append(float(p))
    return out


def _percentile_key(p: float) -> str:
    """Result key of a percentile: shortest repr, no trailing '.0' (1.5 -> '1.5', 50 -> '50')."""
    s = repr(p)
    return s[:-2] if s.endswith(".0") else s


class RunningStats:
    """Streaming count, mean, population std, min, max and percentiles of one band.

    Parameters
    ----------
    dtype : str or numpy.dtype
        The dtype of the band in the files (``'uint8'``, ``'int16'``, ``'uint16'``,
        ``'int32'``, ``'uint32'``, ``'float32'``, ``'float64'``...; any integer or float).
        Integers of 1 or 2 bytes take the exact path, all others the float path (module
        docstring).

    Attributes
    ----------
    dtype : numpy.dtype
        The accumulator's dtype.
    exact : bool
        True on the exact path: percentiles are exact.

    Raises
    ------
    RecipeError
        ``dtype`` is not a numpy dtype, or not an integer or float dtype.
    """

    def __init__(self, dtype: str | np.dtype):
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise RecipeError(f"dtype {dtype!r} is not a numpy dtype; expected e.g. 'uint16' or 'float32'") from None
        if self.dtype.kind not in "iuf":
            raise RecipeError(f"dtype {self.dtype}: expected an integer or float dtype (e.g. 'uint16', 'float32')")
        self.exact = self.dtype.kind in "iu" and self.dtype.itemsize <= 2
        self._offset = _SIGNED_OFFSET if self.dtype.kind == "i" else 0
        self._hist = np.zeros(_EXACT_BINS if self.exact else _FLOAT_BINS, dtype=np.int64)
        self._shifted: dict[int, np.ndarray] = {}  # exact path: {DN shift: histogram of the raw values}
        self._nonfinite = 0
        # float path only: Chan et al.'s (count, mean, M2) of values - _shift, exact extremes
        self._count = 0
        self._shift = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self._min: Any = None
        self._max: Any = None

    def __repr__(self) -> str:
        return f"RunningStats({str(self.dtype)!r})"

    # -- accumulating -------------------------------------------------------------------

    def add(self, values: np.ndarray, nodata: float | None = None, shift: float = 0) -> None:
        """Add the pixels of one chip (or one date of one chip).

        Parameters
        ----------
        values : numpy.ndarray
            Any shape; a dtype that converts to the accumulator's without loss (numpy "safe"
            casting: ``uint8`` into ``int16`` is fine, ``float32`` into ``int16`` is not).
            Units are the band's (DN, m, dB...); nothing is rescaled.
        nodata : float or None
            Pixels equal to it are excluded (compared in the band's dtype; a value the integer
            dtype cannot hold matches nothing). NaN excludes NaNs. For float bands NaN and
            +-inf are always excluded, and counted in ``nonfinite`` unless they are nodata.
        shift : float
            Added to every kept value (after the nodata test on the raw values), in the band's
            units: the DN offset that puts this file on the profile's base DN scale (module
            docstring, "Harmonised DN offsets"). An integer on the exact path.

        Raises
        ------
        RecipeError
            ``values`` would lose values when converted to the accumulator's dtype (the message
            names both dtypes), ``nodata`` is not a real number, or ``shift`` is not a finite
            number (an integer on the exact path).
        """
        values = np.asarray(values)
        if not np.can_cast(values.dtype, self.dtype, casting="safe"):
            raise RecipeError(f"values of dtype {values.dtype} cannot be added to a {self.dtype} accumulator "
                              f"without losing values; expected a dtype that converts safely to {self.dtype}")
        if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, numbers.Real)):
            raise RecipeError(f"nodata {nodata!r}: expected a number, NaN or None")
        shift = self._check_shift(shift)
        values = values.astype(self.dtype, copy=False).ravel()
        values = values[self._keep(values, nodata)]
        if values.size == 0:
            return
        if self.exact:
            hist = self._hist if shift == 0 else self._shifted.setdefault(int(shift), np.zeros(_EXACT_BINS, np.int64))
            hist += np.bincount(values.astype(np.int64) + self._offset, minlength=_EXACT_BINS)
            return
        if shift:
            values = values.astype(np.float64) + shift
        shift = self._shift if self._count else float(values[0])
        x = values.astype(np.float64) - shift
        mean = float(x.mean())
        self._combine(x.size, shift, mean, float(np.square(x - mean).sum()), values.min(), values.max())
        self._hist += np.bincount(_float32_keys(values) >> _KEY_SHIFT, minlength=_FLOAT_BINS)

    def _check_shift(self, shift: float) -> float:
        """``shift`` as an int (exact path) or float; raise RecipeError for anything else."""
        if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not math.isfinite(float(shift)):
            raise RecipeError(f"shift {shift!r}: expected a finite number of DN")
        if self.exact:
            if not float(shift).is_integer():
                raise RecipeError(f"shift {shift!r}: a {self.dtype} band is shifted by whole DN only; "
                                  f"expected an integer (round the DN offset)")
            return int(shift)
        return float(shift)

    def _keep(self, values: np.ndarray, nodata: float | None) -> np.ndarray:
        """Boolean mask of the pixels to keep; counts the excluded non-finite ones."""
        if self.dtype.kind in "iu":
            if nodata is None or not float(nodata).is_integer():
                return np.ones(values.shape, dtype=bool)
            info = np.iinfo(self.dtype)
            if not info.min <= int(nodata) <= info.max:
                return np.ones(values.shape, dtype=bool)
            return values != self.dtype.type(int(nodata))
        finite = np.isfinite(values)
        if nodata is None:
            is_nodata = np.zeros(values.shape, dtype=bool)
        elif math.isnan(nodata):
            is_nodata = np.isnan(values)
        else:
            with np.errstate(over="ignore"):  # 1e39 as float32 is inf, as GDAL would compare it
                is_nodata = values == self.dtype.type(nodata)
        self._nonfinite += int(np.count_nonzero(~finite & ~is_nodata))
        return finite & ~is_nodata

    def _combine(self, n: int, shift: float, mean: float, m2: float, lo: Any, hi: Any) -> None:
        """Fold (count, mean - shift, M2, min, max) of other values into the float-path moments.

        Chan, Golub & LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
        sample variances", eq. 2.1: ``M2 = M2a + M2b + d**2 * na * nb / n``, ``d = mb - ma``;
        means are kept relative to a shift (Chan, Golub & LeVeque 1983, "Algorithms for computing
        the sample variance: analysis and recommendations", section 3).
        """
        if n == 0:
            return
        if self._count == 0:
            self._count, self._shift, self._mean, self._m2, self._min, self._max = n, shift, mean, m2, lo, hi
            return
        mean += shift - self._shift  # relative to our shift; exact when the shifts are close
        total = self._count + n
        delta = mean - self._mean
        self._mean += delta * n / total
        self._m2 += m2 + delta * delta * (self._count * n / total)
        self._count = total
        self._min, self._max = min(self._min, lo), max(self._max, hi)

    def merge(self, other: RunningStats) -> None:
        """Add everything ``other`` has seen (``other`` is unchanged).

        Parameters
        ----------
        other : RunningStats
            An accumulator of the same dtype, e.g. from a parallel worker.

        Raises
        ------
        RecipeError
            ``other`` is not a RunningStats, or its dtype differs (both named).
        """
        if not isinstance(other, RunningStats):
            raise RecipeError(f"cannot merge {type(other).__name__} into RunningStats; expected a RunningStats")
        if other.dtype != self.dtype:
            raise RecipeError(f"cannot merge a {other.dtype} accumulator into a {self.dtype} one; "
                              f"expected dtype {self.dtype}")
        self._hist += other._hist
        for k, h in other._shifted.items():
            self._shifted.setdefault(k, np.zeros(_EXACT_BINS, np.int64))
            self._shifted[k] += h
        self._nonfinite += other._nonfinite
        self._combine(other._count, other._shift, other._mean, other._m2, other._min, other._max)

    # -- results --------------------------------------------------------------------------

    def _exact_hist(self) -> tuple[np.ndarray, int]:
        """Exact path: the histogram of every value added, shifts applied, and its offset
        (bin ``j`` holds the value ``j - offset``)."""
        if not self._shifted:
            return self._hist, self._offset
        lo, hi = min(0, *self._shifted), max(0, *self._shifted)
        out = np.zeros(_EXACT_BINS + hi - lo, dtype=np.int64)
        for s, h in ((0, self._hist), *self._shifted.items()):
            out[s - lo: s - lo + _EXACT_BINS] += h
        return out, self._offset - lo

    def _moments(self) -> tuple[int, float, float, float, float]:
        """count, mean, population std, min, max (zeros when nothing was kept)."""
        if not self.exact:
            n = self._count
            return n, self._shift + self._mean, math.sqrt(self._m2 / n) if n else 0.0, self._min, self._max
        hist, offset = self._exact_hist()
        bins = np.flatnonzero(hist)
        if bins.size == 0:
            return 0, 0.0, 0.0, 0.0, 0.0
        counts = hist[bins].tolist()
        vals = (bins - offset).tolist()
        n = sum(counts)
        s1 = sum(c * v for c, v in zip(counts, vals))
        s2 = sum(c * v * v for c, v in zip(counts, vals))
        # Python ints are exact; int / int is correctly rounded
        return n, s1 / n, math.sqrt((n * s2 - s1 * s1) / (n * n)), vals[0], vals[-1]

    def _order_statistics(self, ranks: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """The values ``x[k]`` of 0-based ``ranks`` of the sorted pooled values, as float64.

        Exact on the exact path; on the float path the ``c`` values of the bin holding rank
        ``k`` are taken as evenly spread over the bin clamped to ``[lo, hi]`` (the exact min
        and max), the j-th at ``j / (c - 1)`` of it, a lone value at the bin's middle; ranks 0
        and ``n - 1`` are the exact min and max; the zero bin is exactly zero.
        """
        if self.exact:
            hist, offset = self._exact_hist()
            bins = np.searchsorted(np.cumsum(hist), ranks, side="right")
            return (bins - offset).astype(np.float64)
        cum = np.cumsum(self._hist)
        bins = np.searchsorted(cum, ranks, side="right")
        c = self._hist[bins]
        j = ranks - (cum[bins] - c)
        left = np.maximum(_bin_edge(bins), lo)
        right = np.where(bins == _ZERO_BIN, 0.0, np.minimum(_bin_edge(bins + 1), hi))
        t = np.where(c > 1, j / np.maximum(c - 1, 1), 0.5)
        x = np.clip(left + t * (right - left), lo, hi)
        return np.where(ranks == 0, lo, np.where(ranks == cum[-1] - 1, hi, x))

    def result(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, Any]:
        """The statistics of every value added so far.

        Parameters
        ----------
        percentiles : sequence of float
            In [0, 100]; numpy's 'linear' definition (module docstring).

        Returns
        -------
        dict
            ``count`` (int, pixels kept), ``mean``, ``std`` (population, ddof=0), ``minimum``,
            ``maximum`` (floats in the band's units, None when count is 0), ``percentiles``
            (``{"1.5": float, ...}``, keys the shortest repr of each percentile without a
            trailing ``.0``, values None when count is 0), ``nonfinite`` (int, NaN/inf pixels
            excluded that were not nodata), ``exact`` (bool, True on the exact path, where
            percentiles are exact; float-path percentiles are within the documented bound).

        Raises
        ------
        RecipeError
            A percentile is not a number in [0, 100].
        """
        qs = _check_percentiles(percentiles)
        n, mean, std, lo, hi = self._moments()
        out: dict[str, Any] = {"count": n, "mean": None, "std": None, "minimum": None, "maximum": None,
                               "percentiles": {_percentile_key(q): None for q in qs},
                               "nonfinite": self._nonfinite, "exact": self.exact}
        if n == 0:
            return out
        lo, hi = float(lo), float(hi)
        out.update(mean=float(mean), std=float(std), minimum=lo, maximum=hi)
        if qs:
            v = (n - 1) * (np.asarray(qs, dtype=np.float64) / 100)  # numpy's virtual index
            i = np.minimum(np.floor(v), n - 1)
            x = self._order_statistics(np.concatenate([i, np.minimum(i + 1, n - 1)]).astype(np.int64), lo, hi)
            p = _lerp(x[: len(qs)], x[len(qs):], v - i)
            out["percentiles"] = {_percentile_key(q): float(val) for q, val in zip(qs, p)}
        return out


class BandStatistics:
    """One :class:`RunningStats` per band name, in the order names were first added.

    The dtype of a band is that of its first values. Adding the same band of several dates
    under one name pools the dates.
    """

    def __init__(self) -> None:
        self._bands: dict[str, RunningStats] = {}

    def __repr__(self) -> str:
        return f"BandStatistics({', '.join(f'{k}: {v.dtype}' for k, v in self._bands.items())})"

    def __getitem__(self, name: str) -> RunningStats:
        """The accumulator of band ``name`` (KeyError if nothing was added under it)."""
        return self._bands[name]

    def add(self, name: str, values: np.ndarray, nodata: float | None = None, shift: float = 0) -> None:
        """Add pixels of band ``name``; see :meth:`RunningStats.add` (``shift``: DN offset).

        Raises
        ------
        RecipeError
            ``values`` has a different dtype from earlier values of ``name`` (both named), or
            :meth:`RunningStats.add` / :class:`RunningStats` refuse them.
        """
        values = np.asarray(values)
        acc = self._bands.get(name)
        if acc is None:
            acc = RunningStats(values.dtype)
            acc.add(values, nodata, shift)
            self._bands[name] = acc
            return
        if values.dtype != acc.dtype:
            raise RecipeError(f"band {name!r}: values of dtype {values.dtype}, but earlier values were "
                              f"{acc.dtype}; expected {acc.dtype}")
        acc.add(values, nodata, shift)

    def merge(self, other: BandStatistics) -> None:
        """Add everything ``other`` has seen; its new names go last, in its order.

        All-or-nothing: a dtype conflict raises before anything is merged.

        Raises
        ------
        RecipeError
            ``other`` is not a BandStatistics, or a band has different dtypes in the two.
        """
        if not isinstance(other, BandStatistics):
            raise RecipeError(f"cannot merge {type(other).__name__} into BandStatistics; expected a BandStatistics")
        for name, acc in other._bands.items():
            mine = self._bands.get(name)
            if mine is not None and mine.dtype != acc.dtype:
                raise RecipeError(f"band {name!r}: cannot merge dtype {acc.dtype} into {mine.dtype}; "
                                  f"expected {mine.dtype}")
        for name, acc in other._bands.items():
            self._bands.setdefault(name, RunningStats(acc.dtype)).merge(acc)

    def result(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[str, dict[str, Any]]:
        """``{band name: RunningStats.result(percentiles)}`` in first-added order.

        Raises
        ------
        RecipeError
            A percentile is not a number in [0, 100].
        """
        _check_percentiles(percentiles)
        return {name: acc.result(percentiles) for name, acc in self._bands.items()}


# -- the "stats" finalizer: stats.json version 2 -------------------------------------------

STATS_VERSION = 2

NOTE = ("statistics of the stored values of the {on} chips, nodata excluded: raw DN for integer bands "
        "(physical = DN * scale + offset, per channel in 'channels'); a file whose offset carries its scene's DN "
        "offset (Sentinel-2 processing baseline 04.00) is first shifted onto the profile's base offset, so every "
        "chip pools on one DN scale (scene DN offsets harmonised). mean/std/minimum/maximum/count/percentiles are "
        "per channel in chip order (torchvision.transforms.Normalize(mean, std) on the stored values); "
        "percentiles are numpy's 'linear' percentiles of dataset.percentiles, minimum/maximum exact; band_stats "
        "and bands pool each band over its steps (seed 001's rule), in band_order")


def class_weights(hist: dict[int, int], n_classes: int) -> list[float]:
    """Balanced class weights for a loss, indexed by class id.

    sklearn's ``compute_class_weight("balanced")`` rule ``N / (K * n_c)`` over the ``K``
    classes present (class 0, the background, excluded), normalised to sum 1.

    Parameters
    ----------
    hist : dict
        ``{class id: pixels}``.
    n_classes : int
        The largest class id; the list has ``n_classes + 1`` entries.

    Returns
    -------
    list of float
        Weight per class id 0..n_classes: 0 for class 0 and for absent classes.
    """
    present = {c: n for c, n in hist.items() if c != 0 and n > 0}
    w = [0.0] * (n_classes + 1)
    if not present:
        return w
    total, k = sum(present.values()), len(present)
    raw = {c: total / (k * n) for c, n in present.items()}
    s = sum(raw.values())
    for c, v in raw.items():
        if c <= n_classes:
            w[c] = v / s
    return w


def multilabel_stats(hists: list[dict], table: str) -> dict[str, Any]:
    """Class statistics of a multi-label table (``labels.table``, e.g. ``clc-19``) over units' code
    histograms (``stats.json`` keeps the pixels per code as ``code_pixels``): ``class_weights`` and
    ``class_pixels`` keyed by class name (UNLABELED codes and the
    fill left out; the weights are the balanced ones of :func:`class_weights` over the names' pixels)
    and ``label_units`` (units holding each name: the multi-label frequency), names in table order."""
    from ..labels.tables import MULTI_LABEL_TABLES

    names_of, _ = MULTI_LABEL_TABLES[table]
    order = list(dict.fromkeys(names_of.values()))
    pixels = dict.fromkeys(order, 0)
    units = dict.fromkeys(order, 0)
    for h in hists:
        present = set()
        for c, n in h.items():
            name = names_of.get(int(c))
            if name is not None and int(n):
                pixels[name] += int(n)
                present.add(name)
        for name in present:
            units[name] += 1
    w = class_weights({i + 1: pixels[nm] for i, nm in enumerate(order)}, len(order))
    return {"class_weights": {nm: w[i + 1] for i, nm in enumerate(order)}, "class_pixels": pixels, "label_units": units}


def _hex(rgba: tuple[int, ...] | None) -> str | None:
    return None if rgba is None else "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def class_table(recipe, hist: dict[int, int]) -> list[dict[str, Any]] | None:
    """``stats.json`` ``classes``: one entry per class id 0..max of a class map.

    Each entry: ``id``, ``name`` (:func:`eochips.plan.class_names`; ``"class {id}"`` when the
    recipe names none), ``colour`` (``#rrggbb`` of the label file's colour table, which has no
    alpha; None without one), ``pixels`` (over ``hist``), ``weight`` (:func:`class_weights`) and
    ``background`` (True for class 0: pixels without a label, nodata of the class map, weight 0).
    For a multi-label code table (``labels.table``) one entry per class name of the table
    (``id`` 1.., ``codes``: the codes it groups, ``units``: units holding it), no colours.
    None without labels.
    """
    from ..labels.tables import MULTI_LABEL_TABLES
    from ..plan import class_names, label_spec

    lab = recipe.labels
    if lab is None:
        return None
    if lab.table:
        names_of, _ = MULTI_LABEL_TABLES[lab.table]
        ml = multilabel_stats([hist], lab.table)
        order = list(ml["class_pixels"])
        return [{"id": i + 1, "name": nm, "codes": sorted(c for c, n in names_of.items() if n == nm), "colour": None,
                 "pixels": ml["class_pixels"][nm], "weight": ml["class_weights"][nm], "background": False}
                for i, nm in enumerate(order)]
    names = class_names(recipe)
    cmap = dict(label_spec(recipe).colormap)
    n = max([*names, *hist, 0])
    w = class_weights(hist, n)
    return [{"id": i, "name": names.get(i, f"class {i}"), "colour": _hex(cmap.get(i)), "pixels": int(hist.get(i, 0)),
             "weight": w[i], "background": i == 0} for i in range(n + 1)]


def _arrays(results: list[dict[str, Any]], qs: list[float]) -> dict[str, Any]:
    """Per-accumulator results as arrays: mean, std, minimum, maximum, count, percentiles."""
    keys = [_percentile_key(q) for q in qs]
    out: dict[str, Any] = {k: [r[k] for r in results] for k in ("mean", "std", "minimum", "maximum", "count")}
    out["percentiles"] = {k: [r["percentiles"][k] for r in results] for k in keys}
    return out


def dataset_stats(ctx) -> dict[str, Any]:
    """The ``stats.json`` (version 2) of a dataset (contract in :mod:`eochips.dataset`).

    One pass over the image files of the ``dataset.stats_on`` units (``train`` or ``all`` kept),
    one :class:`RunningStats` per chip channel (:mod:`eochips.dataset.channels`; each file band
    shifted onto its profile's base DN offset), pooled per band by merging the channels of the
    band. Class pixels are the units' ``label_hist`` (the class maps' counts when built).

    Raises
    ------
    OutputError
        Two chips have different channels (order, names, dtypes, nodata, scale or offset: one
        array of means cannot describe both; both units named), an image file does not decode,
        or a file's offset is not whole DN from its profile's (:func:`~eochips.dataset.channels.dn_shift`).
    """
    from ..errors import OutputError
    from . import image_files
    from .channels import base_offsets, chip_channels, dn_shift, read_file, same_layout

    r = ctx.plan.recipe
    ids = ctx.train if r.dataset.stats_on == "train" else ctx.kept
    qs = _check_percentiles(r.dataset.percentiles)
    bases = base_offsets(ctx.plan)
    accs: list[RunningStats] = []
    layout: list | None = None
    first = None
    hist: dict[int, int] = {}
    for cid in ids:
        rec = ctx.records[cid]
        bands = []
        for rel in image_files(rec):
            arr, fbs = read_file(ctx.store, rel)
            for i, fb in enumerate(fbs):
                pos = len(bands)
                bands.append(fb)
                if layout is None:
                    accs.append(RunningStats(fb.dtype))
                if pos >= len(accs) or np.dtype(fb.dtype) != accs[pos].dtype:
                    continue  # not the first chip's channels: refused below
                shift = dn_shift(fb.offset, bases.get(fb.band, fb.offset), fb.scale, fb.dtype, f"file {rel} band {i + 1} ({fb.band})")
                accs[pos].add(arr[i], fb.nodata, shift)
        chans, _ = chip_channels(bands, bases)
        if layout is None:
            layout, first = chans, cid
        elif not same_layout(layout, chans):
            show = lambda cs: ", ".join(f"{c.name} {c.dtype} x{c.scale:g}{c.offset:+g}" for c in cs)  # noqa: E731
            raise OutputError(f"unit {cid}'s image files hold channels [{show(chans)}] but unit {first}'s hold "
                              f"[{show(layout)}]; stats.json needs one channel order for every chip: rebuild the "
                              f"odd unit(s) or give the recipe one layout")
        for c, n in rec["metrics"].get("label_hist", {}).items():
            hist[int(c)] = hist.get(int(c), 0) + int(n)
    layout = layout or []
    per_channel = [a.result(qs) for a in accs]
    band_order = list(dict.fromkeys(c.band for c in layout))
    pooled: dict[str, RunningStats] = {}
    for c, a in zip(layout, accs):
        pooled.setdefault(c.band, RunningStats(a.dtype)).merge(a)
    per_band = [pooled[b].result(qs) for b in band_order]
    stats: dict[str, Any] = {
        "version": STATS_VERSION, "computed_on": r.dataset.stats_on, "chips": len(ids), "values": "stored",
        "note": NOTE.format(on="training" if r.dataset.stats_on == "train" else "kept"),
        "channels": [{**c.as_json(), "exact": res["exact"]} for c, res in zip(layout, per_channel)],
        **_arrays(per_channel, qs),
        "band_order": band_order,
        "band_stats": _arrays(per_band, qs),
        "bands": {b: {k: res[k] for k in ("mean", "std", "minimum", "maximum", "count", "percentiles", "exact")}
                  for b, res in zip(band_order, per_band) if res["count"]},
        "classes": class_table(r, hist),
    }
    if r.labels is None:
        stats.update(class_weights=None, class_pixels={})
    elif r.labels.table:  # codes (CLC) with a multi-label table: weights per class name
        stats["code_pixels"] = {str(k): v for k, v in sorted(hist.items())}
        stats.update(multilabel_stats([ctx.records[c]["metrics"].get("label_hist", {}) for c in ids], r.labels.table))
    else:
        names = [c["id"] for c in stats["classes"]]
        stats.update(class_weights=class_weights(hist, max(names, default=0)),
                     class_pixels={str(k): v for k, v in sorted(hist.items())})
    return stats


from . import register  # noqa: E402 - eochips.dataset imports this module after defining it


@register("stats")
def _stats(ctx) -> None:
    """``stats.json`` (:func:`dataset_stats`); sets ``ctx.stats`` for the finalizers after it."""
    ctx.stats = dataset_stats(ctx)
    ctx.store.write_text("stats.json", json.dumps(ctx.stats, indent=2))
