"""HLS v2.0 Fmask decoding and seed 001's QA rule.

HLS v2.0 Fmask (HLS user guide v2.0, table 9; one uint8 per pixel, fill 255):

=====  ==========================================
bit    meaning
=====  ==========================================
0      cirrus (reserved in v2.0, not used)
1      cloud
2      adjacent to cloud / shadow
3      cloud shadow
4      snow / ice
5      water
6-7    aerosol level: 00 climatology, 01 low, 10 moderate, 11 high
=====  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .masks import MaskSet, clean

FMASK_BITS: dict[str, int] = {"cirrus": 0, "cloud": 1, "adjacent": 2, "shadow": 3, "snow_ice": 4, "water": 5}
FMASK_FILL = 255
AEROSOL_LEVELS = ("climatology", "low", "moderate", "high")


@dataclass(frozen=True)
class FmaskLayers:
    """Decoded Fmask, every array ``(y, x)`` bool except ``aerosol`` (uint8 0..3).

    ``valid`` is False on fill (255); every other layer is False there too.
    """

    valid: np.ndarray
    cirrus: np.ndarray
    cloud: np.ndarray
    adjacent: np.ndarray
    shadow: np.ndarray
    snow_ice: np.ndarray
    water: np.ndarray
    aerosol: np.ndarray


def decode_fmask(fmask: np.ndarray, fill: int = FMASK_FILL) -> FmaskLayers:
    """Split an HLS v2.0 Fmask array into its bit layers.

    Parameters
    ----------
    fmask
        ``(y, x)`` integer array (uint8 as stored; wider ints accepted).
    fill
        Fill value (255 in HLS v2.0); fill pixels are invalid in every layer.
    """
    f = np.asarray(fmask)
    valid = f != fill
    v = np.where(valid, f, 0).astype(np.uint8)

    def bit(n: int) -> np.ndarray:
        return ((v >> n) & 1).astype(bool) & valid

    return FmaskLayers(valid, bit(0), bit(1), bit(2), bit(3), bit(4), bit(5), ((v >> 6) & 3).astype(np.uint8))


def fmask_bad_mask(fmask: np.ndarray, bad_bits: list[str], fill: int = FMASK_FILL) -> np.ndarray:
    """``(y, x)`` bool: pixels with any of ``bad_bits`` set (fill excluded)."""
    m = 0
    for name in bad_bits:
        m |= 1 << FMASK_BITS[name]
    f = np.asarray(fmask)
    return ((f.astype(np.int64) & m) != 0) & (f != fill)


def fmask_bad_pct(fmask: np.ndarray, bad_bits: list[str], fill: int = FMASK_FILL) -> float:
    """Seed 001's per-date QA score, in percent of the chip's pixels.

    The largest share held by any *single* distinct Fmask byte value among the bad pixels
    (``bad_bits`` set). ClarkCGA multi-temporal-crop-classification-training-data @82cca1a:
    ``np.unique`` over the bad Fmask values, max count / pixel count * 100.

    Parameters
    ----------
    fmask
        ``(y, x)`` uint8 Fmask of one date on the chip grid.
    """
    f = np.asarray(fmask)
    bad = fmask_bad_mask(f, bad_bits, fill)
    if not bad.any():
        return 0.0
    counts = np.bincount(f[bad].astype(np.int64).ravel())
    return float(counts.max()) * 100.0 / f.size


def fmask_masks(fmask: np.ndarray, cloud_bits=("cloud",), shadow_bits=("shadow",), fill: int = FMASK_FILL) -> MaskSet:
    """Mask set of an HLS v2.0 Fmask array (bits chosen by the recipe; fill 255 is nodata)."""
    f = np.asarray(fmask)
    return clean(fmask_bad_mask(f, list(cloud_bits), fill), fmask_bad_mask(f, list(shadow_bits), fill),
                  fmask_bad_mask(f, ["snow_ice"], fill), f == fill)
