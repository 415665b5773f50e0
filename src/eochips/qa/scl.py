"""Sentinel-2 L2A Scene Classification (SCL) decoding."""

from __future__ import annotations

import numpy as np

from .masks import MaskSet, clean

SCL_CLASSES: dict[int, str] = {
    0: "no_data", 1: "saturated_defective", 2: "dark_area", 3: "cloud_shadow", 4: "vegetation", 5: "bare_soil",
    6: "water", 7: "unclassified", 8: "cloud_medium", 9: "cloud_high", 10: "thin_cirrus", 11: "snow_ice",
}
"""Sentinel-2 L2A Scene Classification (ESA Sen2Cor product specification, SCL band, 20 m)."""


def scl_masks(scl: np.ndarray, cloud_classes=(8, 9, 10), shadow_classes=(3,), nodata_classes=(0,),
              snow_classes=(11,)) -> MaskSet:
    """Mask set of a Sentinel-2 L2A SCL array (read at 20 m, resampled with nearest).

    Defaults: cloud = 8 medium probability, 9 high probability, 10 thin cirrus; shadow = 3;
    snow = 11; nodata = 0. Cloud-buster's L2A option also masks 1 (saturated/defective): pass
    ``nodata_classes=(0, 1)``.
    """
    s = np.asarray(scl)
    return clean(np.isin(s, cloud_classes), np.isin(s, shadow_classes), np.isin(s, snow_classes), np.isin(s, nodata_classes))
