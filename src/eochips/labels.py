"""Labels on the chip grid: a label raster with a reclass table, or rasterised polygons.

Built-in reclass tables
-----------------------
``cdl-13``: USDA Cropland Data Layer codes -> the 13 classes of seed 001 (ClarkCGA
multi-temporal-crop-classification-training-data @82cca1a; table in ``specs/recipes.md``).
Code 0 is CDL's "no data" and maps to class 0. A code missing from the table maps to
``labels.unknown_class`` and is counted (the seed raised ``KeyError``); in strict mode it is an
error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np

from .errors import LabelError


def _codes(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


_CDL13_SPEC = {
    1: "37, 152, 176", 2: "141-143", 3: "1", 4: "5", 5: "190, 195", 6: "121-124, 131", 7: "111", 8: "24",
    9: "36", 10: "61", 11: "2", 12: "4",
    13: "3, 6, 10-14, 21-23, 25-35, 38, 39, 41-60, 62-72, 74-77, 81-83, 87, 88, 92, 112, 204-250, 254",
}
CDL_13: dict[int, int] = {code: cls for cls, spec in _CDL13_SPEC.items() for code in _codes(spec)}
CDL_13[0] = 0
CDL_13_NAMES = {
    0: "No Data", 1: "Natural Vegetation", 2: "Forest", 3: "Corn", 4: "Soybeans", 5: "Wetlands",
    6: "Developed/Barren", 7: "Open Water", 8: "Winter Wheat", 9: "Alfalfa", 10: "Fallow/Idle Cropland",
    11: "Cotton", 12: "Sorghum", 13: "Other",
}
# Colours of the CDL legend for the class's main crop (RGBA), class 0 transparent black.
CDL_13_COLORS = {
    0: (0, 0, 0, 0), 1: (233, 255, 190, 255), 2: (147, 204, 147, 255), 3: (255, 211, 0, 255),
    4: (38, 112, 0, 255), 5: (128, 179, 179, 255), 6: (156, 156, 156, 255), 7: (77, 112, 163, 255),
    8: (168, 112, 0, 255), 9: (255, 168, 227, 255), 10: (191, 191, 122, 255), 11: (255, 38, 38, 255),
    12: (255, 158, 10, 255), 13: (0, 175, 75, 255),
}
RECLASS_TABLES = {"cdl-13": CDL_13}


def default_colormap(n_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """A colour per class id 0..n (tab20 colours; 0 transparent)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    out = {0: (0, 0, 0, 0)}
    for i in range(1, n_classes + 1):
        r, g, b, _ = cmap((i - 1) % 20)
        out[i] = (int(r * 255), int(g * 255), int(b * 255), 255)
    return out


@dataclass(frozen=True)
class Reclass:
    """A lookup table from source codes to classes.

    Attributes
    ----------
    table
        Source code -> class id.
    unknown_class
        Class of codes missing from ``table``.
    strict
        Raise instead of mapping unknown codes.
    """

    table: Mapping[int, int]
    unknown_class: int = 0
    strict: bool = False
    _lut: np.ndarray = field(init=False, repr=False, compare=False)
    _known: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = max(max(self.table, default=0) + 1, 256)
        lut = np.full(size, self.unknown_class, dtype=np.uint8)
        known = np.zeros(size, dtype=bool)
        for k, v in self.table.items():
            lut[k] = v
            known[k] = True
        object.__setattr__(self, "_lut", lut)
        object.__setattr__(self, "_known", known)

    def apply(self, codes: np.ndarray, where: str = "labels") -> tuple[np.ndarray, dict[int, int]]:
        """Map ``(y, x)`` integer codes to uint8 classes.

        Returns
        -------
        classes : ndarray, uint8, same shape
        unknown : dict
            Unknown source code -> pixel count.

        Raises
        ------
        LabelError
            In strict mode, when a code is missing from the table.
        """
        c = np.asarray(codes).astype(np.int64)
        inside = (c >= 0) & (c < self._lut.size)
        idx = np.where(inside, c, 0)
        out = np.where(inside, self._lut[idx], self.unknown_class).astype(np.uint8)
        unknown_mask = ~inside | ~self._known[idx]
        unknown: dict[int, int] = {}
        if unknown_mask.any():
            vals, cnts = np.unique(c[unknown_mask], return_counts=True)
            unknown = {int(v): int(n) for v, n in zip(vals, cnts)}
            if self.strict:
                raise LabelError(
                    f"{where}: label code(s) {sorted(unknown)} are not in the reclass table "
                    f"(set labels.strict: false to map them to class {self.unknown_class})"
                )
        return out, unknown


def make_reclass(spec: str | Mapping[int, int] | None, unknown_class: int = 0, strict: bool = False) -> Reclass | None:
    """Build a :class:`Reclass` from a built-in table name or a mapping.

    Raises
    ------
    LabelError
        Unknown table name.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in RECLASS_TABLES:
            raise LabelError(f"labels.reclass: unknown table {spec!r}; built-in: {', '.join(RECLASS_TABLES)}")
        spec = RECLASS_TABLES[spec]
    return Reclass({int(k): int(v) for k, v in spec.items()}, unknown_class, strict)


@lru_cache(maxsize=8)
def _vector_frame(path: str, crs_wkt: str, class_field: str):
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise LabelError(f"labels.vector {path!r} could not be read: {exc}") from None
    if class_field not in gdf.columns:
        raise LabelError(f"labels.class_field {class_field!r} is not a column of {path!r}; columns: {list(gdf.columns)}")
    if gdf.crs is None:
        raise LabelError(f"labels.vector {path!r} has no CRS")
    return gdf.to_crs(crs_wkt)


def rasterize_vector(path: str, class_field: str, classes: Mapping[str, int], crs: str,
                     transform: tuple, shape: tuple[int, int]) -> np.ndarray:
    """Burn polygons onto a chip grid.

    Pixel-centre rule (``all_touched=False``); later features are drawn over earlier ones;
    pixels covered by no polygon, or by a polygon whose class value is not in ``classes``,
    stay 0.

    Returns
    -------
    ndarray
        ``(y, x)`` uint8 class ids.
    """
    from affine import Affine
    from rasterio.features import rasterize

    gdf = _vector_frame(path, crs, class_field)
    a = Affine(*transform)
    x0, y0 = a @ (0, 0)
    x1, y1 = a @ (shape[1], shape[0])
    sub = gdf.cx[min(x0, x1):max(x0, x1), min(y0, y1):max(y0, y1)]
    shapes = [(g, classes[str(v)]) for g, v in zip(sub.geometry, sub[class_field]) if str(v) in classes and g is not None]
    if not shapes:
        return np.zeros(shape, dtype=np.uint8)
    return rasterize(shapes, out_shape=shape, transform=a, fill=0, dtype="uint8", all_touched=False)
