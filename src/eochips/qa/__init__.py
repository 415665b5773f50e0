"""QA layers and cloud masks: decoders of the products' QA assets, mask models, and the
registry the recipe's ``masks.sources`` kinds resolve to.

=====================  ===============================  =================================================
kind                   reads                            rule (source)
=====================  ===============================  =================================================
``fmask``              the source's QA asset (uint8)    HLS v2.0 Fmask bits (HLS user guide v2.0, table 9)
``scl``                the source's QA asset (uint8)    Sentinel-2 L2A SCL classes (ESA Sen2Cor spec)
``qa-pixel``           the source's QA asset (uint16)   Landsat C2 QA_PIXEL bits (USGS LSDS-1619)
``bqa``                the source's QA asset (uint16)   Landsat 8 C1 BQA bits (USGS C1 QA band page)
``s2cloudless``        ``bands`` at working resolution  s2cloudless (Sentinel Hub), L1C reflectance
``onnx``               ``bands`` at working resolution  ukis-csmask or a user ``.onnx`` model
``cloud-probability``  its ``asset`` (CLD), nearest     > ``threshold`` percent (cloud-buster: 40)
=====================  ===============================  =================================================

Decoders take the QA of one time step on the unit grid (read with nearest) and return a
:class:`MaskSet`; models take ``(band, y, x)`` reflectance 0..1 at their working resolution.
Per source and time step the masks are combined by union (:func:`union`) and grown by
``masks.dilation`` pixels (:func:`dilate`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .fmask import AEROSOL_LEVELS, FMASK_BITS, FMASK_FILL, FmaskLayers, decode_fmask, fmask_bad_mask, fmask_bad_pct, fmask_masks
from .landsat import bqa_masks, decode_bqa, decode_qa_pixel, qa_pixel_masks
from .masks import MaskSet, clean, dilate, union
from .models import S2_L1C_BANDS, S2CLOUDLESS_BANDS, onnx_masks, s2cloudless_masks
from .scl import SCL_CLASSES, scl_masks

_clean = clean  # the name of eochips 0.1


def _fill(nodata: float | None, default: int) -> int:
    return default if nodata is None else int(nodata)


QA_DECODERS: dict[str, Callable[[Any, np.ndarray, float | None], MaskSet]] = {
    "fmask": lambda cfg, qa, nd: fmask_masks(qa, cfg.cloud_bits, cfg.shadow_bits, _fill(nd, FMASK_FILL)),
    "scl": lambda cfg, qa, nd: scl_masks(qa, cfg.cloud_classes, cfg.shadow_classes, cfg.nodata_classes, cfg.snow_classes),
    "qa-pixel": lambda cfg, qa, nd: qa_pixel_masks(qa, cloud=tuple(cfg.cloud), shadow=tuple(cfg.shadow), snow=tuple(cfg.snow)),
    "bqa": lambda cfg, qa, nd: bqa_masks(qa, min_confidence=cfg.min_confidence, cirrus=cfg.cirrus),
}
"""Mask kinds that decode a source's QA asset: ``(config, qa (y, x), qa nodata) -> MaskSet``."""


def _s2cloudless(cfg, refl: np.ndarray, nodata: np.ndarray) -> MaskSet:
    return s2cloudless_masks(refl, threshold=cfg.threshold, average_over=cfg.average_over, dilation_size=cfg.dilation_size,
                             all_bands=len(cfg.bands) == 13, nodata=nodata)[1]


def _onnx(cfg, refl: np.ndarray, nodata: np.ndarray) -> MaskSet:
    m = onnx_masks(refl, list(cfg.band_order), model=cfg.model, product_level=cfg.product_level, nodata_value=0.0)
    return clean(m.cloud, m.shadow, m.snow, m.nodata | nodata)


def _cloud_probability(cfg, prob: np.ndarray, nodata: np.ndarray) -> MaskSet:
    cloud = prob[0] > cfg.threshold  # CLD 0 is "0 % probability", not fill
    none = np.zeros(cloud.shape, bool)
    return MaskSet(cloud, none, none.copy(), none.copy())


MODEL_MASKS: dict[str, Callable[[Any, np.ndarray, np.ndarray], MaskSet]] = {
    "s2cloudless": _s2cloudless, "onnx": _onnx, "cloud-probability": _cloud_probability}
"""Mask kinds that run a model on bands of their own:
``(config, reflectance (band, y, x) float32 0..1, nodata (y, x) bool) -> MaskSet``."""

MASK_KINDS = tuple(sorted({*QA_DECODERS, *MODEL_MASKS}))


def upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``(y, x)`` array to ``shape`` (pixel centres), for a mask
    made at a model's working resolution."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(int), w - 1)
    return mask[np.ix_(rows, cols)]


__all__ = [
    "MaskSet", "clean", "union", "dilate", "upsample", "QA_DECODERS", "MODEL_MASKS", "MASK_KINDS",
    "FMASK_BITS", "FMASK_FILL", "AEROSOL_LEVELS", "FmaskLayers", "decode_fmask", "fmask_bad_mask", "fmask_bad_pct",
    "fmask_masks", "SCL_CLASSES", "scl_masks", "decode_qa_pixel", "qa_pixel_masks", "decode_bqa", "bqa_masks",
    "S2CLOUDLESS_BANDS", "S2_L1C_BANDS", "s2cloudless_masks", "onnx_masks",
]
