"""Unit filters: an ordered registry of rules, each giving a typed reason code.

A filter measures (the measure goes to the unit's metrics, hence the index, for every unit)
and judges: ``None`` keeps the unit, a :class:`Reason` drops it. The recipe's filters run in
order and the first :class:`Reason` is recorded; every filter still measures.

======================  ===========================================================================
code                    rule (source)
======================  ===========================================================================
``nodata``              fill pixels in any band of any step > ``max_pixels`` (seed 001's NA rule,
                        counting the real fill: HLS -9999; the seed counted -1000 and never fired)
``nan``                 NaN pixels in the given float bands > ``max_pixels`` (Clay: any vv/vh/dem NaN)
``value``               pixels of one band equal to a value > ``max_pixels`` (Clay: any B02 == 0)
``fmask-bad-pct``       seed 001: per step, the largest share held by one bad Fmask value; keep if < max
``mask-fraction``       the worst step's cloud / shadow / snow / nodata fraction > ``max`` (Clay: >= 30 % SCL)
``label-fraction``      pixels of the given label classes above a count or share (seed 001: CDL 0; BEN:
                        UNLABELED >= 25 %); evaluated at plan time when no imagery filter precedes it
======================  ===========================================================================

Reasons not made by filters: ``selection`` (no acceptable scenes), ``sampling`` (not drawn),
``io`` (a read or write failed: the unit is ``failed``, not dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .registry import Registry

REASON_CODES = ("nodata", "nan", "value", "fmask-bad-pct", "mask-fraction", "label-fraction", "selection", "sampling", "io")


@dataclass(frozen=True)
class Reason:
    """Why a unit is dropped: a typed ``code`` (:data:`REASON_CODES`) and a message for people."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


Filter = Callable[[Any, Any], tuple[dict[str, Any], "Reason | None"]]
FILTERS = Registry("filter")
register = FILTERS.register
get_filter = FILTERS.lookup


def apply_filters(filters, data) -> Reason | None:
    """Measure every filter on ``data`` (a :class:`~eochips.chips.UnitData`), record the measures
    in ``data.metrics`` and return the first :class:`Reason`, in recipe order (None: keep)."""
    first = None
    for cfg in filters:
        measured, reason = get_filter(cfg.kind)(cfg, data)
        data.metrics.update(measured)
        if reason is not None and first is None:
            first = reason
    return first


def _date(data, source: str, t: int) -> str:
    return data.task.layer(source).steps[t].date


def _band(data, ref: str):
    source, _, name = ref.rpartition(".")
    lay = data.layers[source or next(iter(data.layers))]
    bi = [b.name for b in lay.read.bands].index(name)
    return lay.read.bands[bi], lay.bands[bi]


@register("nodata")
def nodata(cfg, data) -> tuple[dict, Reason | None]:
    """Pixels (of the unit grid) that are fill in any band of any time step of ``cfg.sources``."""
    from .chips import nodata_mask

    sources = cfg.sources or list(data.layers)
    bad = None
    for s in sources:
        lay = data.layers[s]
        for spec, arr in zip(lay.read.bands, lay.bands):
            m = nodata_mask(arr, spec.nodata).any(axis=0)
            if bad is None:
                bad = m
            elif m.shape == bad.shape:
                bad |= m
            else:  # resolution groups: count on the finer grid the band's fill spreads over
                bad = bad | _upsample_to(m, bad.shape) if m.size < bad.size else _upsample_to(bad, m.shape) | m
    n = int(bad.sum()) if bad is not None else 0
    reason = Reason("nodata", f"{n} fill pixels > {cfg.max_pixels}") if n > cfg.max_pixels else None
    return {"nodata_pixels": n}, reason


def _upsample_to(mask: np.ndarray, shape) -> np.ndarray:
    from .qa import upsample

    return upsample(mask, shape)


@register("nan")
def nan(cfg, data) -> tuple[dict, Reason | None]:
    """NaN pixels in ``cfg.bands`` (default: every float band), any time step."""
    refs = cfg.bands or [f"{s}.{b.name}" for s, lay in data.layers.items() for b in lay.read.bands
                         if np.dtype(b.dtype).kind == "f"]
    worst, where = 0, ""
    for ref in refs:
        _, arr = _band(data, ref)
        n = int(np.isnan(arr).any(axis=0).sum()) if np.issubdtype(arr.dtype, np.floating) else 0
        if n > worst:
            worst, where = n, ref
    reason = Reason("nan", f"{worst} NaN pixels in {where} > {cfg.max_pixels}") if worst > cfg.max_pixels else None
    return {"nan_pixels": worst}, reason


@register("value")
def value(cfg, data) -> tuple[dict, Reason | None]:
    """Pixels of ``cfg.band`` equal to ``cfg.equals`` in any time step."""
    _, arr = _band(data, cfg.band)
    n = int((arr == cfg.equals).any(axis=0).sum())
    reason = Reason("value", f"{n} pixels of {cfg.band} == {cfg.equals:g} > {cfg.max_pixels}") if n > cfg.max_pixels else None
    return {"value_pixels": n}, reason


@register("fmask-bad-pct")
def fmask_bad_pct(cfg, data) -> tuple[dict, Reason | None]:
    """Seed 001's QA score per time step (:func:`eochips.qa.fmask_bad_pct`); keep if every step < max_pct."""
    from .qa import FMASK_FILL
    from .qa import fmask_bad_pct as score

    source = cfg.source or next(iter(data.layers))
    lay = data.layers[source]
    fill = int(lay.read.qa.nodata) if lay.read.qa.nodata is not None else FMASK_FILL
    pcts = [round(score(lay.qa[t], list(cfg.bits), fill), 6) for t in range(lay.qa.shape[0])]
    worst = max(pcts) if pcts else 0.0
    reason = None
    if worst >= cfg.max_pct:
        t = pcts.index(worst)
        reason = Reason("fmask-bad-pct", f"bad_pct {worst:.2f} >= {cfg.max_pct:g} on {_date(data, source, t)}")
    return {"bad_qa_pct": pcts}, reason


@register("mask-fraction")
def mask_fraction(cfg, data) -> tuple[dict, Reason | None]:
    """The worst time step's fraction (0..1 of the unit's pixels) of a mask layer."""
    source = cfg.source or next(iter(data.layers))
    parts = cfg.layer.split("+")
    fr = []
    for ms in data.layers[source].masks:
        union = np.zeros(ms.nodata.shape, bool)
        for part in parts:  # a pixel in two layers counts once
            union |= getattr(ms, part)
        fr.append(float(union.sum()) / union.size)
    worst = max(fr) if fr else 0.0
    reason = None
    if worst >= cfg.max if cfg.strict else worst > cfg.max:
        t = fr.index(worst)
        op = ">=" if cfg.strict else ">"
        reason = Reason("mask-fraction", f"{cfg.layer} fraction {worst:.3f} {op} {cfg.max:g} on {_date(data, source, t)}")
    return {}, reason


def label_fraction_check(cfg, labels: np.ndarray) -> tuple[dict, Reason | None]:
    """The ``label-fraction`` rule on a ``(y, x)`` class map (used at plan time and at build time).

    ``labels`` is uint8 class ids or uint16 codes (``labels.dtype: uint16``, e.g. CORINE codes
    with 999 uncovered); ``cfg.classes`` are compared as integers (int64), so codes above 255
    count. The share is of all the unit's pixels; ``strict``: drop at or above ``max_fraction``
    (BigEarthNet v2 keeps a patch only if its UNLABELED share is < 25 %).
    """
    n = int(np.isin(labels, np.asarray(cfg.classes, dtype=np.int64)).sum())
    frac = n / labels.size
    classes = ",".join(str(c) for c in cfg.classes)
    reason = None
    if cfg.max_pixels is not None and n > cfg.max_pixels:
        reason = Reason("label-fraction", f"{n} pixels of class {classes} > {cfg.max_pixels}")
    elif cfg.max_fraction is not None and (frac >= cfg.max_fraction if cfg.strict else frac > cfg.max_fraction):
        op = ">=" if cfg.strict else ">"
        reason = Reason("label-fraction", f"class {classes} fraction {frac:.3f} {op} {cfg.max_fraction:g}")
    return {"label_class_pixels": n}, reason


@register("label-fraction")
def label_fraction(cfg, data) -> tuple[dict, Reason | None]:
    """Pixels of label classes ``cfg.classes`` in the unit's class map."""
    return label_fraction_check(cfg, data.labels)


def plan_time_filters(filters) -> int:
    """How many leading filters need only labels (evaluated at plan time, before any imagery read)."""
    n = 0
    for f in filters:
        if f.kind != "label-fraction":
            break
        n += 1
    return n
