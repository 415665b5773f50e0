"""Labels on a unit's grid: a label raster with a reclass table, or rasterised polygons.

A code missing from the reclass table maps to ``labels.unknown_class`` and is counted (seed 001
raised ``KeyError``); in strict mode it is an error. Vector labels are read once per grid and
process with a bounding-box filter (pyogrio) and indexed with an STRtree, so each unit
rasterises only the polygons that touch it.

Vector labels are checked, never guessed: an empty layer, a feature whose class value is not in
``labels.classes`` (named by FID and value) and a class id the uint8 class map cannot hold
(:func:`check_class_ids`; it would saturate to 255) are errors; invalid polygons are repaired
by one stated rule (:func:`repair`, ``shapely.make_valid`` "structure"), which the plan reports
in one ``note:`` line naming the file and how many features it repaired.
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
        Unknown table name; a class id above 255 (the uint8 class map) or a negative code.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in RECLASS_TABLES:
            raise LabelError(f"labels.reclass: unknown table {spec!r}; built-in: {', '.join(RECLASS_TABLES)}")
        spec = RECLASS_TABLES[spec]
    check_class_ids({f"code {k}": v for k, v in spec.items()}, "labels.reclass")
    negative = sorted(int(k) for k in spec if int(k) < 0)
    if negative:
        raise LabelError(f"labels.reclass: source code(s) {negative} are negative; a reclass table maps codes 0 and up")
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


class LabelNote(UserWarning):
    """A label source was used after a stated repair (the CLI prints it as one ``note:`` line)."""


CLASS_MAP_DTYPE = np.uint8
"""The dtype of every class map eochips writes (class ids 0..255)."""


def check_class_ids(classes: Mapping, where: str) -> None:
    """Refuse class ids the uint8 class map cannot hold (they would saturate to 255).

    Raises
    ------
    LabelError
        Naming the field, the key and the id, e.g. ``labels.classes: 'corn' -> 300``.
    """
    hi = int(np.iinfo(CLASS_MAP_DTYPE).max)
    for key, cid in classes.items():
        if not 0 <= int(cid) <= hi:
            raise LabelError(f"{where}: class id {cid} (for {key!r}) does not fit the {np.dtype(CLASS_MAP_DTYPE).name} "
                             f"class map (0..{hi}); use class ids 0..{hi}")


def repair(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repair invalid polygons with the stated rule; return ``(geoms, repaired mask)``.

    The rule: ``shapely.make_valid(g, method="structure", keep_collapsed=False)``, keeping its
    polygonal parts. A polygon then covers what its shell rings enclose minus its holes (a
    self-intersecting "bowtie" becomes its two triangles), overlapping parts of a multipolygon
    are merged, and parts that collapse to lines or points are dropped (they cover no pixel
    centre). Valid geometries are left unchanged.
    """
    import shapely

    bad = ~shapely.is_valid(geoms) & ~shapely.is_missing(geoms)
    if not bad.any():
        return geoms, bad
    out = geoms.copy()
    for i in np.flatnonzero(bad):
        fixed = shapely.make_valid(geoms[i], method="structure", keep_collapsed=False)
        parts = [p for p in shapely.get_parts(fixed) if p.geom_type in ("Polygon", "MultiPolygon") and not p.is_empty]
        out[i] = shapely.union_all(parts) if parts else shapely.Polygon()
    return out, bad


def _class_key(v) -> str | None:
    """The ``labels.classes`` key of an attribute value: its text (a whole float as an integer,
    as a nullable integer column reads); None for a null."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


class _VectorIndex:
    """The polygons of a vector file that touch one grid, in the grid's CRS, with an STRtree.

    Checks on reading (each a :class:`LabelError` naming the file): the file opens, has a
    CRS, holds ``class_field`` and at least one feature, and every feature over the grid has
    a class value listed in ``classes`` (the error names its FID and value). Invalid polygons
    are repaired (:func:`repair`); ``repaired`` lists their FIDs.
    """

    def __init__(self, path: str, class_field: str, classes: Mapping[str, int], crs_wkt: str,
                 bounds: tuple[float, float, float, float]):
        import geopandas as gpd
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
        if info.get("features") == 0:
            raise LabelError(f"labels.vector {path!r} has no features (an empty layer); give a file with label polygons")
        file_crs = CRS.from_user_input(info["crs"])
        self.file_crs = file_crs.to_string()
        self.layer_bounds = tuple(info.get("total_bounds") or ())
        try:
            bbox = reproject_geometry(shapely.box(*bounds), crs_wkt, file_crs).bounds
        except Exception:  # noqa: BLE001 - the grid lies outside the file CRS's area of use
            bbox = None
        if bbox is None or not all(np.isfinite(bbox)):
            df = None
        else:
            try:
                df = pyogrio.read_dataframe(path, columns=[class_field], bbox=bbox, fid_as_index=True)
            except Exception as exc:
                raise LabelError(f"labels.vector {path!r} could not be read: {exc}") from None
        if df is None or not len(df):
            self.geoms, self.values = np.array([], dtype=object), np.array([], dtype=np.int64)
            self.repaired: tuple[int, ...] = ()
            self.tree = shapely.STRtree(self.geoms)
            return
        keys = [_class_key(v) for v in df[class_field]]
        for fid, v, k in zip(df.index, df[class_field], keys):
            if k is None or k not in classes:
                shown = "null (no value)" if k is None else repr(v)
                raise LabelError(f"labels.vector {path!r}: feature FID {fid} has {class_field} = {shown}, which is not in "
                                 f"labels.classes ({', '.join(sorted(classes))}); add it (class 0 leaves its polygons unlabelled)")
        geoms, bad = repair(np.asarray(df.geometry.values, dtype=object))
        self.repaired = tuple(int(f) for f in df.index[bad])
        geoms = np.asarray(gpd.GeoSeries(geoms, crs=df.crs).to_crs(crs_wkt).values, dtype=object)
        values = [classes[k] for k in keys]
        keep = [i for i, g in enumerate(geoms) if g is not None and not g.is_empty]
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
    pixels covered by no polygon stay 0; invalid polygons are repaired first (:func:`repair`). ``grid_bounds`` (the whole grid's bounds in ``crs``) lets every unit of a grid share
    one bounding-box read; by default the unit's own bounds are read.

    Returns
    -------
    ndarray
        ``(y, x)`` uint8 class ids.

    Raises
    ------
    LabelError
        The file cannot be read, has no CRS, lacks ``class_field``, has no feature, or a
        feature over the grid has a class value missing from ``classes``.
    """
    from affine import Affine

    if grid_bounds is None:
        a = Affine(*tuple(transform)[:6])
        x0, y0 = a @ (0, 0)
        x1, y1 = a @ (shape[1], shape[0])
        grid_bounds = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    idx = vector_index(path, class_field, tuple(sorted(classes.items())), str(crs), tuple(grid_bounds))
    return idx.burn(transform, shape)
