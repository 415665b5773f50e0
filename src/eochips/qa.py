"""QA decoding and QA-based chip rules.

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


# --------------------------------------------------------------------------------------
# mask sets: per-pixel cloud / shadow / snow / nodata on the chip grid, from any source

SCL_CLASSES: dict[int, str] = {
    0: "no_data", 1: "saturated_defective", 2: "dark_area", 3: "cloud_shadow", 4: "vegetation", 5: "bare_soil",
    6: "water", 7: "unclassified", 8: "cloud_medium", 9: "cloud_high", 10: "thin_cirrus", 11: "snow_ice",
}
"""Sentinel-2 L2A Scene Classification (ESA Sen2Cor product specification, SCL band, 20 m)."""


@dataclass(frozen=True)
class MaskSet:
    """Boolean ``(y, x)`` masks on one grid. ``nodata`` is kept apart: a nodata pixel is
    never cloud, shadow or snow (the seeds counted Fmask fill as cloud; eochips does not)."""

    cloud: np.ndarray
    shadow: np.ndarray
    snow: np.ndarray
    nodata: np.ndarray

    def fractions(self) -> dict[str, float]:
        """Fraction (0..1) of all the grid's pixels in each mask."""
        n = self.nodata.size
        return {k: float(getattr(self, k).sum()) / n for k in ("cloud", "shadow", "snow", "nodata")}

    def classes(self) -> np.ndarray:
        """One ``(y, x)`` uint8 class array: 0 clear, 1 cloud, 2 shadow, 3 snow, 255 nodata
        (cloud wins over shadow over snow)."""
        out = np.zeros(self.nodata.shape, np.uint8)
        out[self.snow] = 3
        out[self.shadow] = 2
        out[self.cloud] = 1
        out[self.nodata] = 255
        return out


def _clean(cloud, shadow, snow, nodata) -> MaskSet:
    keep = ~nodata
    return MaskSet(cloud & keep, shadow & keep, snow & keep, nodata)


def fmask_masks(fmask: np.ndarray, cloud_bits=("cloud",), shadow_bits=("shadow",), fill: int = FMASK_FILL) -> MaskSet:
    """Mask set of an HLS v2.0 Fmask array (bits chosen by the recipe; fill 255 is nodata)."""
    f = np.asarray(fmask)
    return _clean(fmask_bad_mask(f, list(cloud_bits), fill), fmask_bad_mask(f, list(shadow_bits), fill),
                  fmask_bad_mask(f, ["snow_ice"], fill), f == fill)


def scl_masks(scl: np.ndarray, cloud_classes=(8, 9, 10), shadow_classes=(3,), nodata_classes=(0,),
              snow_classes=(11,)) -> MaskSet:
    """Mask set of a Sentinel-2 L2A SCL array (read at 20 m, resampled with nearest).

    Defaults: cloud = 8 medium probability, 9 high probability, 10 thin cirrus; shadow = 3;
    snow = 11; nodata = 0. Cloud-buster's L2A option also masks 1 (saturated/defective): pass
    ``nodata_classes=(0, 1)``.
    """
    s = np.asarray(scl)
    return _clean(np.isin(s, cloud_classes), np.isin(s, shadow_classes), np.isin(s, snow_classes), np.isin(s, nodata_classes))


def union(*sets: MaskSet) -> MaskSet:
    """Pixel-wise union of mask sets on the same grid (nodata too)."""
    nd = np.logical_or.reduce([m.nodata for m in sets])
    return _clean(np.logical_or.reduce([m.cloud for m in sets]), np.logical_or.reduce([m.shadow for m in sets]),
                  np.logical_or.reduce([m.snow for m in sets]), nd)


def dilate(masks: MaskSet, pixels: int) -> MaskSet:
    """Grow cloud and shadow by ``pixels`` (a square of side 2n+1, as cloud-buster's 11 x 11
    kernel is n = 5); nodata and snow are not grown."""
    if pixels <= 0:
        return masks
    from scipy.ndimage import binary_dilation

    k = np.ones((2 * pixels + 1, 2 * pixels + 1), bool)
    return _clean(binary_dilation(masks.cloud, k), binary_dilation(masks.shadow, k), masks.snow, masks.nodata)


S2CLOUDLESS_BANDS = ["B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2_L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def s2cloudless_masks(reflectance: np.ndarray, *, threshold: float = 0.4, average_over: int = 4, dilation_size: int = 2,
                      all_bands: bool = False, nodata: np.ndarray | None = None) -> tuple[np.ndarray, MaskSet]:
    """Cloud probability and mask from s2cloudless (Sentinel Hub; the LightGBM model inside its wheel).

    Parameters
    ----------
    reflectance
        ``(band, y, x)`` Sentinel-2 **L1C** top-of-atmosphere reflectance, float, 0..1 (DN / 10000),
        in the order of :data:`S2CLOUDLESS_BANDS` (10 bands) or, with ``all_bands``, of
        :data:`S2_L1C_BANDS` (13 bands), on one grid (s2cloudless was trained at 160 m; 10-60 m work).
    threshold, average_over, dilation_size
        s2cloudless's parameters (cloud-buster uses 0.4, 4, 1).
    nodata
        ``(y, x)`` bool, pixels without data.

    Returns
    -------
    prob : ndarray
        ``(y, x)`` float32 cloud probability.
    masks : MaskSet
        Cloud from s2cloudless; shadow and snow empty.
    """
    from s2cloudless import S2PixelCloudDetector

    det = S2PixelCloudDetector(threshold=threshold, average_over=average_over, dilation_size=dilation_size, all_bands=all_bands)
    x = np.moveaxis(np.asarray(reflectance, dtype=np.float32), 0, -1)[None]
    prob = det.get_cloud_probability_maps(x)[0].astype(np.float32)
    cloud = det.get_mask_from_prob(prob[None])[0].astype(bool)
    nd = np.zeros(prob.shape, bool) if nodata is None else np.asarray(nodata, bool)
    empty = np.zeros(prob.shape, bool)
    return prob, _clean(cloud, empty, empty, nd)


def onnx_masks(reflectance: np.ndarray, band_order: list[str], *, model: str = "ukis-csmask", product_level: str = "l1c",
               nodata_value: float | None = None, classes: dict[int, str] | None = None,
               mean: list[float] | None = None, std: list[float] | None = None) -> MaskSet:
    """Cloud and shadow masks from an ONNX segmentation model run with onnxruntime.

    Parameters
    ----------
    reflectance
        ``(band, y, x)`` reflectance, float32, 0..1, bands named by ``band_order`` (common
        names: blue, green, red, nir, swir16, swir22). Best at about 30 m.
    model
        ``"ukis-csmask"``: the DLR UKIS cloud/shadow models inside the ukis-csmask wheel (4-band
        or 6-band, L1C or L2A, 0 clear / 1 cloud / 2 shadow; run by ukis-csmask itself).
        Otherwise a path to a ``.onnx`` file taking ``(1, bands, y, x)`` normalised by ``mean``
        / ``std`` and giving ``(1, classes, y, x)`` scores; ``classes`` maps output class ids to
        ``"cloud"`` / ``"shadow"`` / ``"snow"``.
    """
    img = np.asarray(reflectance, dtype=np.float32)
    nd = np.zeros(img.shape[1:], bool) if nodata_value is None else np.all(img == nodata_value, axis=0)
    if model == "ukis-csmask":
        import warnings as _w

        from ukis_csmask.mask import CSmask

        with _w.catch_warnings():
            _w.simplefilter("ignore", UserWarning)  # "smaller than the internal tiling size"
            csm = CSmask(np.moveaxis(img, 0, -1).copy(), band_order=band_order, product_level=product_level,
                         nodata_value=nodata_value)
        cls = csm.csm[..., 0]
        return _clean(cls == 1, cls == 2, np.zeros_like(nd), nd)
    import onnxruntime

    sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = img.copy()
    if mean is not None and std is not None:
        x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    scores = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]
    cls = scores.argmax(axis=0)
    names = classes or {1: "cloud", 2: "shadow"}
    pick = {k: np.isin(cls, [c for c, n in names.items() if n == k]) for k in ("cloud", "shadow", "snow")}
    return _clean(pick["cloud"], pick["shadow"], pick["snow"], nd)
