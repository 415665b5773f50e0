"""Version 1 -> version 2, on validated data (Raster Vision's upgrader pattern, one step per version).

A version-1 recipe had one source (``search`` + ``profile`` + ``bands`` + ``selection``), a grid
fixed before the search (``grid.label_raster`` or ``grid.crs`` + ``resolution``), fixed rules
(label pre-scan, nodata, Fmask QA, cloud and shadow fractions) and seed 001's files, plus seed
000's ``cloud_masks`` as a special section. In version 2 the same recipe is:

- ``sources.main`` (and ``sources.cloud_masks`` for seed 000's cloudy scenes, selection
  ``seeded-by-date``, written by the ``seed-000-cmask`` layout);
- ``grid`` of kind ``label-raster`` or ``crs``; ``units`` of kind ``chip``;
- ``filters`` in v1's order: label no-data and labelled fraction (checked at plan time, as v1
  did), nodata, Fmask bad-pct (when the profile's QA is Fmask), cloud and shadow fractions;
- ``output.layout`` ``seed-001`` (+ ``seed-000-cmask``).

The pixels a version-1 recipe produces are unchanged (``tests/test_pixels_unchanged.py``).
"""

from __future__ import annotations

from typing import Any

from .v1 import RecipeV1

MAIN = "main"
_MASK_FIELDS = {
    "fmask": {"cloud_bits", "shadow_bits"},
    "scl": {"cloud_classes", "shadow_classes"},
    "s2cloudless": {"bands", "scale", "working_resolution", "threshold", "average_over", "dilation_size"},
    "onnx": {"model", "bands", "band_order", "scale", "working_resolution", "product_level"},
}
CLOUDY = "cloud_masks"


def _profile(v1: RecipeV1) -> tuple[Any, str]:
    """The version-2 profile entry and the QA decoder kind of a version-1 profile."""
    if isinstance(v1.profile, str):
        from ..profiles import PROFILES

        p = PROFILES.get(v1.profile)
        return v1.profile, (p.qa.kind if p is not None and p.qa is not None else "none")
    p = v1.profile
    out: dict[str, Any] = {"name": p.name, "bands": dict(p.bands), "dtype": p.dtype, "nodata": p.nodata,
                           "scale": p.scale, "offset": p.offset}
    if p.tile_pattern:
        out["tile_pattern"] = p.tile_pattern
    if p.qa_asset and p.qa_kind != "none":
        out["qa"] = {"asset": p.qa_asset, "kind": p.qa_kind, "dtype": "uint8", "nodata": p.qa_nodata}
    return out, p.qa_kind if p.qa_asset else "none"


def _max_unlabelled(min_labelled: float, size: int) -> int:
    """The most no-data label pixels a ``size``-pixel chip may hold under v1's rule, which kept a
    chip unless ``1 - n / size < min_labelled`` (in floating point: ``1 - 0.8`` is not 0.2)."""
    n = max(0, min(size, int((1.0 - min_labelled) * size) + 2))
    while n > 0 and 1.0 - n / size < min_labelled:
        n -= 1
    return n if not (1.0 - n / size < min_labelled) else -1


def upgrade_v1(v1: RecipeV1) -> dict[str, Any]:
    """The version-2 mapping of a validated version-1 recipe (see the module docstring)."""
    profile, qa_kind = _profile(v1)
    per = "tile" if v1.selection.unit == "tile" else "unit"
    sel: dict[str, Any] = {"kind": v1.selection.strategy, "per": per,
                           "coverage_thresholds": list(v1.selection.coverage_thresholds)}
    if v1.selection.strategy == "first-middle-last":
        sel["min_scenes"] = v1.selection.min_scenes
    elif v1.selection.strategy == "least-cloudy":
        sel["n_scenes"] = v1.selection.n_scenes
    bands: list[Any] = []
    for b in v1.bands:
        rs = v1.reading.band_resampling.get(b)
        bands.append({"name": b, "resampling": rs} if rs else b)
    search = v1.search.model_dump(exclude_defaults=True)
    sources: dict[str, Any] = {MAIN: {"search": search, "profile": profile, "bands": bands, "selection": sel,
                                      "resampling": v1.reading.resampling}}
    layouts: list[dict[str, Any]] = [{"kind": "seed-001", "source": MAIN, "write_qa": v1.output.write_qa}]
    if v1.cloud_masks is not None:
        cm = v1.cloud_masks
        cloudy = dict(search, cloud_cover=cm.cloud_cover.model_dump(exclude_none=True))
        if cm.datetime:
            cloudy["datetime"] = cm.datetime
        sources[CLOUDY] = {"search": cloudy, "profile": profile, "bands": [],
                           "selection": {"kind": "seeded-by-date", "per": per, "coverage_thresholds": list(cm.coverage_thresholds),
                                         "min_scenes": cm.min_scenes, "n_scenes": cm.n_scenes, "seed": cm.seed}}
        layouts.append({"kind": "seed-000-cmask", "source": CLOUDY, "bits": list(cm.bits), "tracker": cm.tracker})

    g = v1.grid
    grid: dict[str, Any] = ({"kind": "label-raster", "path": g.label_raster} if g.label_raster else
                            {"kind": "crs", "crs": g.crs, "resolution": g.resolution,
                             **({"origin": list(g.origin)} if g.origin else {})})
    filters: list[dict[str, Any]] = []
    labels = None
    if v1.labels is not None:
        lab = v1.labels
        labels = lab.model_dump(exclude={"max_nodata_pixels", "min_labelled_fraction"}, exclude_none=True)
        if lab.max_nodata_pixels is not None:
            filters.append({"kind": "label-fraction", "classes": [lab.nodata_class], "max_pixels": lab.max_nodata_pixels})
        if lab.min_labelled_fraction > 0:
            filters.append({"kind": "label-fraction", "classes": [lab.nodata_class],
                            "max_pixels": _max_unlabelled(lab.min_labelled_fraction, v1.grid.chip_size ** 2)})
    qa = v1.qa
    filters.append({"kind": "nodata", "sources": [MAIN], "max_pixels": qa.max_nodata_pixels})
    if qa_kind == "fmask":
        filters.append({"kind": "fmask-bad-pct", "source": MAIN, "bits": list(qa.bad_fmask_bits), "max_pct": qa.max_bad_pct})
    if qa.max_cloud_fraction is not None and qa.masks:
        filters.append({"kind": "mask-fraction", "source": MAIN, "layer": "cloud", "max": qa.max_cloud_fraction})
    if qa.max_shadow_fraction is not None and qa.masks:
        filters.append({"kind": "mask-fraction", "source": MAIN, "layer": "shadow", "max": qa.max_shadow_fraction})
    masks = [dict(m.model_dump(include=_MASK_FIELDS[m.kind]), kind=m.kind, source=MAIN) for m in qa.masks]
    out: dict[str, Any] = {
        "version": 2, "name": v1.name, "description": v1.description, "aoi": v1.aoi.model_dump(exclude_none=True),
        "sources": sources, "grid": grid,
        "units": {"kind": "chip", "size": g.chip_size, "min_aoi_fraction": g.min_aoi_fraction},
        "masks": {"sources": masks, "dilation": qa.dilation, "quicklook": qa.quicklook},
        "filters": filters,
        "output": {"layout": layouts, "compress": v1.output.compress, "level": v1.output.level},
        "dataset": {"split": {"kind": "random", **v1.dataset.split.model_dump()}, "stats_on": v1.dataset.stats_on,
                    "percentiles": list(v1.dataset.percentiles)},
        "reading": v1.reading.model_dump(include={"threads", "max_retries", "http_timeout", "gdal_cachemax_mb"}),
        "engine": v1.engine.model_dump(),
    }
    if labels is not None:
        out["labels"] = labels
    return out
