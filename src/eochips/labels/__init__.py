"""Labels on a unit's grid: a label raster with a reclass table, or rasterised polygons.

A code missing from the reclass table maps to ``labels.unknown_class`` and is counted (seed 001
raised ``KeyError``); in strict mode it is an error. Vector labels are read once per grid and
process with a bounding-box filter (pyogrio) and indexed with an STRtree, so each unit
rasterises only the polygons that touch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np

from ..errors import LabelError
from .tables import CDL_13, CDL_13_COLORS, CDL_13_NAMES, RECLASS_TABLES, default_colormap

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


@dataclass(frozen=True)
class LabelSpec:
    """Where a unit's labels come from: a raster (+ reclass) or polygons, and the class map's colours."""

    raster: str | None = None
    reclass: Reclass | None = None
    vector: str | None = None
    class_field: str | None = None
    classes: tuple[tuple[str, int], ...] = ()
    colormap: tuple[tuple[int, tuple[int, int, int, int]], ...] = ()
    nodata_class: int = 0


class _VectorIndex:
    """The polygons of a vector file that touch one grid, in the grid's CRS, with an STRtree."""

    def __init__(self, path: str, class_field: str, classes: Mapping[str, int], crs_wkt: str,
                 bounds: tuple[float, float, float, float]):
        import pyogrio
        import shapely
        from pyproj import CRS

        from ..geo import reproject_geometry

        try:
            info = pyogrio.read_info(path)
        except Exception as exc:
            raise LabelError(f"labels.vector {path!r} could not be read: {exc}") from None
        if info.get("crs") is None:
            raise LabelError(f"labels.vector {path!r} has no CRS")
        fields = list(info.get("fields", []))
        if class_field not in fields:
            raise LabelError(f"labels.class_field {class_field!r} is not a field of {path!r}; fields: {fields}")
        file_crs = CRS.from_user_input(info["crs"])
        bbox = reproject_geometry(shapely.box(*bounds), crs_wkt, file_crs).bounds
        try:
            df = pyogrio.read_dataframe(path, columns=[class_field], bbox=bbox)
        except Exception as exc:
            raise LabelError(f"labels.vector {path!r} could not be read: {exc}") from None
        geoms = df.geometry.to_crs(crs_wkt).values if len(df) else np.array([], dtype=object)
        values = [classes.get(str(v)) for v in df[class_field]] if len(df) else []
        keep = [i for i, (g, v) in enumerate(zip(geoms, values)) if v is not None and g is not None and not g.is_empty]
        self.geoms = np.asarray([geoms[i] for i in keep], dtype=object)
        self.values = np.asarray([values[i] for i in keep], dtype=np.int64)
        self.tree = shapely.STRtree(self.geoms)

    def burn(self, transform, shape: tuple[int, int], dtype: str = "uint8") -> np.ndarray:
        """The polygons over one unit, burnt in file order (later over earlier)."""
        import shapely
        from affine import Affine
        from rasterio.features import rasterize

        a = Affine(*tuple(transform)[:6])
        x0, y0 = a @ (0, 0)
        x1, y1 = a @ (shape[1], shape[0])
        idx = np.sort(self.tree.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))))
        if idx.size == 0:
            return np.zeros(shape, dtype=dtype)
        return rasterize(zip(self.geoms[idx], self.values[idx].tolist()), out_shape=shape, transform=a, fill=0, dtype=dtype,
                         all_touched=False)


@lru_cache(maxsize=8)
def vector_index(path: str, class_field: str, classes: tuple[tuple[str, int], ...], crs_wkt: str,
                 bounds: tuple[float, float, float, float]) -> _VectorIndex:
    """The polygons of ``path`` touching ``bounds`` (in ``crs_wkt``), read once per grid and process."""
    return _VectorIndex(path, class_field, dict(classes), crs_wkt, bounds)


def rasterize_vector(path: str, class_field: str, classes: Mapping[str, int], crs: str, transform: tuple,
                     shape: tuple[int, int], grid_bounds: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Burn polygons onto a unit grid.

    Pixel-centre rule (``all_touched=False``); later features are drawn over earlier ones;
    pixels covered by no polygon, or by a polygon whose class value is not in ``classes``,
    stay 0. ``grid_bounds`` (the whole grid's bounds in ``crs``) lets every unit of a grid share
    one bounding-box read; by default the unit's own bounds are read.

    Returns
    -------
    ndarray
        ``(y, x)`` uint8 class ids.

    Raises
    ------
    LabelError
        The file cannot be read, has no CRS, or lacks ``class_field``.
    """
    from affine import Affine

    if grid_bounds is None:
        a = Affine(*tuple(transform)[:6])
        x0, y0 = a @ (0, 0)
        x1, y1 = a @ (shape[1], shape[0])
        grid_bounds = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    idx = vector_index(path, class_field, tuple(sorted(classes.items())), str(crs), tuple(grid_bounds))
    return idx.burn(transform, shape)
