"""Cloud masks from models: s2cloudless (LightGBM in its wheel) and ONNX segmentation models (ukis-csmask or a user file)."""

from __future__ import annotations

import numpy as np

from .masks import MaskSet, clean

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
    return prob, clean(cloud, empty, empty, nd)


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
        return clean(cls == 1, cls == 2, np.zeros_like(nd), nd)
    import onnxruntime

    sess = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = img.copy()
    if mean is not None and std is not None:
        x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    scores = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]
    cls = scores.argmax(axis=0)
    names = classes or {1: "cloud", 2: "shadow"}
    pick = {k: np.isin(cls, [c for c, n in names.items() if n == k]) for k in ("cloud", "shadow", "snow")}
    return clean(pick["cloud"], pick["shadow"], pick["snow"], nd)
