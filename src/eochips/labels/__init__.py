"""Labels on a unit's grid: a label raster with a reclass table, or rasterised polygons.

A code missing from the reclass table maps to ``labels.unknown_class`` and is counted (seed 001
raised ``KeyError``); in strict mode it is an error. Vector labels are read once per grid and
process with a bounding-box filter (pyogrio) and indexed with an STRtree, so each unit
rasterises only the polygons that touch it.

Vector labels burn class ids (``labels.burn: classes``, a uint8 map by default) or the class
field's integer value itself (``burn: value``: CORINE codes into a uint16 map, BigEarthNet v2's
reference maps, kai-tub/bigearthnet-pipeline); pixels no polygon covers get ``labels.fill``.
``labels.table: clc-19`` gives each unit its BigEarthNet v2 multi-labels
(:func:`~eochips.labels.tables.label_names`). At CORINE scale (10^4-10^5 polygons per
109,800 m tile, millions in the file) the read is vectorised and each row of units is burnt
as one band (:class:`_VectorIndex`); ``benchmarks/corine_labels.py`` measures it.

Vector labels are checked, never guessed: an empty layer, a feature whose class value is not in
``labels.classes`` (named by FID and value), a ``burn: value`` value that is null, not whole,
out of the map's range or (with a table) not a code of the table, and a class id the class map
cannot hold (:func:`check_class_ids`; it would saturate or wrap) are errors; invalid polygons
are repaired by one stated rule (:func:`repair`, ``shapely.make_valid`` "structure"), which the
plan reports in one ``note:`` line naming the file and how many features it repaired.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np

from ..errors import LabelError
from .tables import (CDL_13, CDL_13_COLORS, CDL_13_NAMES, CLC_19, CLC_19_NAMES, CLC_19_UNLABELED, MULTI_LABEL_TABLES,
                     RECLASS_TABLES, default_colormap, label_names, table_codes)

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


@dataclass(frozen=True, repr=False)
class LabelSpec:
    """Where a unit's labels come from: a raster (+ reclass) or polygons, and the class map's colours.

    ``burn`` (vector labels): ``classes`` burns the class id of a polygon's ``class_field``
    value, ``value`` the value itself (an integer: the CORINE code). ``dtype`` is the class
    map's (``uint8`` or ``uint16``), ``fill`` the class of pixels no polygon covers, ``table``
    a multi-label table (:data:`~eochips.labels.tables.MULTI_LABEL_TABLES`) or None, ``names``
    the class names ``(id, name)`` a uint8 class map declares as its category names.
    """

    raster: str | None = None
    reclass: Reclass | None = None
    vector: str | None = None
    class_field: str | None = None
    classes: tuple[tuple[str, int], ...] = ()
    colormap: tuple[tuple[int, tuple[int, int, int, int]], ...] = ()
    nodata_class: int = 0
    burn: str = "classes"
    dtype: str = "uint8"
    fill: int = 0
    table: str | None = None
    names: tuple[tuple[int, str], ...] = ()

    def __repr__(self) -> str:
        # the fields added for CORINE labels appear only when set, so existing recipes keep their fingerprints
        names = ["raster", "reclass", "vector", "class_field", "classes", "colormap", "nodata_class"]
        extra = {"burn": "classes", "dtype": "uint8", "fill": 0, "table": None, "names": ()}
        names += [k for k, d in extra.items() if getattr(self, k) != d]
        return f"LabelSpec({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"


class LabelNote(UserWarning):
    """A label source was used after a stated repair (the CLI prints it as one ``note:`` line)."""


CLASS_MAP_DTYPE = np.uint8
"""The dtype of class maps by default (class ids 0..255); ``labels.dtype: uint16`` widens it."""


def check_class_ids(classes: Mapping, where: str, dtype: str = "uint8") -> None:
    """Refuse class ids the class map (``dtype``, default uint8) cannot hold (they would wrap or saturate).

    Raises
    ------
    LabelError
        Naming the field, the key and the id, e.g. ``labels.classes: 'corn' -> 300``.
    """
    hi = int(np.iinfo(np.dtype(dtype)).max)
    for key, cid in classes.items():
        if not 0 <= int(cid) <= hi:
            raise LabelError(f"{where}: class id {cid} (for {key!r}) does not fit the {np.dtype(dtype).name} "
                             f"class map (0..{hi}); use class ids 0..{hi}" + (" or labels.dtype: uint16" if hi == 255 else ""))


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


def _class_keys(values) -> np.ndarray:
    """The ``labels.classes`` keys of attribute values (a pandas Series): their text (a whole
    float as an integer, as a nullable integer column reads); None for a null. Vectorised."""
    import pandas as pd

    keys = np.full(len(values), None, dtype=object)
    null = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values.dtype):
        v = values.to_numpy(dtype=float, na_value=np.nan)
        whole = ~null & (v == np.floor(v))
        keys[whole] = v[whole].astype(np.int64).astype(str).astype(object)
        rest = ~null & ~whole
        keys[rest] = [str(x) for x in v[rest]]
    else:
        keys[~null] = values[~null].astype(str).to_numpy(dtype=object)
    return keys


def _burn_values(values, fids: np.ndarray, path: str, class_field: str, dtype: str) -> np.ndarray:
    """``burn: value``: each feature's attribute as an integer code (text like CORINE's ``"211"``,
    or a number); int64. Raises :class:`LabelError` naming the first feature (FID) whose value is
    null, not a whole number or outside the class map's range (0..255 / 0..65535)."""
    import pandas as pd

    hi = int(np.iinfo(np.dtype(dtype)).max)
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        num = values.to_numpy(dtype=float, na_value=np.nan)
    else:
        num = pd.to_numeric(values.astype("string").str.strip(), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    ok = np.isfinite(num) & (num == np.floor(num)) & (num >= 0) & (num <= hi)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        v = values.iloc[i]
        shown = "null (no value)" if pd.isna(v) else repr(v)
        why = "not a whole number" if not (np.isfinite(num[i]) and num[i] == np.floor(num[i])) else f"outside 0..{hi}"
        raise LabelError(f"labels.vector {path!r}: feature FID {int(fids[i])} has {class_field} = {shown}, {why}; "
                         f"labels.burn: value burns the attribute's integer value into the {dtype} class map (0..{hi})"
                         f"{' (use labels.dtype: uint16)' if hi == 255 else ''} ({int((~ok).sum())} such feature(s))")
    return num.astype(np.int64)


def _read_features(path: str, class_field: str, bbox: tuple[float, float, float, float]):
    """The features of ``path`` whose bounding box meets ``bbox`` (file CRS), in file order:
    ``(fids int64, values pandas Series, geometries object array, file CRS)``. One Arrow read
    (pyogrio, GDAL's spatial index) and a vectorised WKB decode. A bbox read comes in the spatial
    index's order (a GeoPackage's R-tree), not the file's: the features are sorted by FID, so
    later polygons are burnt over earlier ones as in the file."""
    import pyogrio
    import shapely

    try:
        meta, table = pyogrio.read_arrow(path, columns=[class_field], bbox=bbox, return_fids=True)
    except Exception as exc:
        raise LabelError(f"labels.vector {path!r} could not be read: {exc}") from None
    geom_col = meta.get("geometry_name") or "wkb_geometry"
    if geom_col not in table.column_names:
        geom_col = table.column_names[-1]
    fid_col = meta.get("fid_column") or "OGC_FID"
    if fid_col not in table.column_names:
        fid_col = table.column_names[0]
    fids = table.column(fid_col).to_numpy().astype(np.int64)
    order = np.argsort(fids, kind="stable")
    if (order != np.arange(len(order))).any():
        table, fids = table.take(order), fids[order]
    values = table.column(class_field).to_pandas()
    geoms = shapely.from_wkb(table.column(geom_col).to_numpy(zero_copy_only=False))
    return fids, values, np.asarray(geoms, dtype=object)


class _VectorIndex:
    """The polygons of a vector file that touch one grid, in the grid's CRS, with an STRtree.

    Checks on reading (each a :class:`LabelError` naming the file): the file opens, has a
    CRS, holds ``class_field`` and at least one feature, and every feature over the grid has
    a class value listed in ``classes`` (``burn: classes``) or an integer value the class map
    holds (``burn: value``; with a ``table``, a code of the table); the error names its FID and
    value. Invalid polygons are repaired (:func:`repair`); ``repaired`` lists their FIDs.

    Built to hold at CORINE scale (a 109,800 m tile of CLC 2018: 10^4-10^5 polygons of a file
    of millions): one bounding-box read per grid (GDAL's spatial index), every step vectorised
    over the features (WKB decode, class lookup, validity, reprojection: one pyproj call for all
    vertices), Python loops only over invalid polygons. ``benchmarks/corine_labels.py`` measures it.

    Attributes
    ----------
    geoms : ndarray of shapely geometries, in the grid's CRS, file order
    values : ndarray, int64, the value burnt per geometry
    tree : shapely.STRtree over ``geoms``
    """

    def __init__(self, path: str, class_field: str, classes: Mapping[str, int], crs_wkt: str,
                 bounds: tuple[float, float, float, float], burn: str = "classes", dtype: str = "uint8",
                 table: str | None = None):
        import pyogrio
        import shapely
        from pyproj import CRS

        from ..geo import _transformer, reproject_geometry

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
        self.repaired: tuple[int, ...] = ()
        self.bounds = tuple(bounds)
        self._bands: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        try:  # the grid's outline densified, then its bounds in the file CRS
            bbox = reproject_geometry(shapely.box(*bounds), crs_wkt, file_crs).bounds
        except Exception:  # noqa: BLE001 - the grid lies outside the file CRS's area of use
            bbox = None
        if bbox is None or not all(np.isfinite(bbox)):
            self._empty()
            return
        fids, raw, geoms = _read_features(path, class_field, tuple(bbox))
        if not len(fids):
            self._empty()
            return
        if burn == "value":
            values = _burn_values(raw, fids, path, class_field, dtype)
            if table is not None:
                from .tables import table_codes

                known = np.fromiter(table_codes(table), dtype=np.int64)
                bad = ~np.isin(values, known)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise LabelError(f"labels.vector {path!r}: feature FID {int(fids[i])} has {class_field} = {raw.iloc[i]!r}, "
                                     f"not a code of labels.table {table!r} ({int(bad.sum())} such feature(s)); "
                                     f"give codes of the table or drop labels.table")
        else:
            keys = _class_keys(raw)
            lut = dict(classes)
            mapped = np.fromiter((lut.get(k, -1) if k is not None else -1 for k in keys), dtype=np.int64, count=len(keys))
            bad = mapped < 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                shown = "null (no value)" if keys[i] is None else repr(raw.iloc[i])
                raise LabelError(f"labels.vector {path!r}: feature FID {int(fids[i])} has {class_field} = {shown}, which is not in "
                                 f"labels.classes ({', '.join(sorted(classes))}); add it (class 0 leaves its polygons unlabelled)")
            values = mapped
        geoms, bad = repair(geoms)
        self.repaired = tuple(int(f) for f in fids[bad])
        tr = _transformer(file_crs.to_wkt(), crs_wkt)
        if tr is not None:  # every vertex of every polygon in one pyproj call (as GeoSeries.to_crs)
            geoms = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        self.geoms = np.asarray(geoms[keep], dtype=object)
        self.values = values[keep]
        self.tree = shapely.STRtree(self.geoms)

    def _empty(self) -> None:
        import shapely

        self.geoms, self.values = np.array([], dtype=object), np.array([], dtype=np.int64)
        self.tree = shapely.STRtree(self.geoms)

    BAND_PX = 12000
    """The widest band of a unit row rasterised at once (pixels; see :meth:`burn`)."""

    def burn(self, transform, shape: tuple[int, int], dtype: str = "uint8", fill: int = 0) -> np.ndarray:
        """The polygons over one unit, burnt in file order (later over earlier); ``fill`` elsewhere.

        A unit of a north-up grid is cut from its row's band: the unit's rows across the whole
        grid (at most :attr:`BAND_PX` wide, in segments that are whole units), rasterised once
        and kept for the row's other units. Rasterising is cheap per pixel and costly per polygon
        (its vertices pass through Python to GDAL), so a polygon is handed over once per row of
        units instead of once per unit. The band is on the unit's own pixel grid, so each pixel
        is decided by the same pixel-centre rule as a rasterisation of the unit alone.
        """
        from affine import Affine

        a = Affine(*tuple(transform)[:6])
        h, w = shape
        band = self._band_of(a, shape)
        if band is None:
            return self._rasterize(a, shape, dtype, fill)
        band_tr, band_shape, off = band
        key = (tuple(band_tr)[:6], band_shape, str(dtype), int(fill))
        with self._lock:
            arr = self._bands.get(key)
            if arr is None:
                arr = self._rasterize(band_tr, band_shape, dtype, fill)
                self._bands[key] = arr
                while len(self._bands) > 4:
                    self._bands.popitem(last=False)
            else:
                self._bands.move_to_end(key)
        return arr[:, off:off + w].copy()

    def _band_of(self, a, shape: tuple[int, int]):
        """``(transform, shape, column offset)`` of the band holding a unit, or None (not north-up,
        no grid bounds, or the unit straddles two band segments)."""
        import math

        from affine import Affine

        h, w = shape
        if self.bounds is None or a.b != 0 or a.d != 0 or a.a <= 0 or a.e >= 0:
            return None
        res = a.a
        start = min(0, math.floor((self.bounds[0] - a.c) / res + 1e-6))  # grid's west edge, in unit pixels
        end = max(w, math.ceil((self.bounds[2] - a.c) / res - 1e-6))
        off = -start  # unit's first column in the band
        seg_w = w * max(1, self.BAND_PX // w)
        seg = off // seg_w
        if off + w > (seg + 1) * seg_w:
            return None
        c0 = seg * seg_w
        width = min(seg_w, end - start - c0)
        return Affine(res, 0.0, a.c + (start + c0) * res, 0.0, a.e, a.f), (h, width), off - c0

    CLIP_VERTICES = 64
    """Polygons with more vertices than this that reach past a band are clipped to it first."""

    def _rasterize(self, a, shape: tuple[int, int], dtype: str, fill: int) -> np.ndarray:
        """Burn the polygons meeting the ``shape`` raster at ``a`` (file order, pixel centres).

        A large polygon (over :attr:`CLIP_VERTICES` vertices) reaching past the raster is first
        cut to the raster's extent grown by one pixel (``shapely.clip_by_rect``), so only its
        vertices near the raster pass to GDAL. Pixel centres lie at least 1.5 pixels inside that
        rectangle, where the cut polygon covers exactly what the whole one covers (the new edges
        run along the rectangle; a polygonal result is required, else the whole one is burnt).
        """
        import shapely
        from rasterio.features import rasterize

        x0, y0 = a @ (0, 0)
        x1, y1 = a @ (shape[1], shape[0])
        lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        idx = np.sort(self.tree.query(shapely.box(lo_x, lo_y, hi_x, hi_y)))
        if idx.size == 0:
            return np.full(shape, fill, dtype=dtype)
        geoms, values = self.geoms[idx], self.values[idx]
        big = np.flatnonzero(shapely.get_num_coordinates(geoms) > self.CLIP_VERTICES)
        if big.size:
            px, py = abs(a.a), abs(a.e)
            rect = (lo_x - px, lo_y - py, hi_x + px, hi_y + py)
            b = shapely.bounds(geoms[big])
            big = big[(b[:, 0] < rect[0]) | (b[:, 1] < rect[1]) | (b[:, 2] > rect[2]) | (b[:, 3] > rect[3])]
        if big.size:
            cut = shapely.clip_by_rect(geoms[big], *rect)
            ok = np.isin(shapely.get_type_id(cut), (3, 6))  # Polygon, MultiPolygon
            geoms = geoms.copy()
            geoms[big[ok]] = cut[ok]
            keep = ~shapely.is_empty(geoms)  # cut away entirely: it covered no pixel centre
            geoms, values = geoms[keep], values[keep]
            if not len(geoms):
                return np.full(shape, fill, dtype=dtype)
        return rasterize(zip(geoms, values.tolist()), out_shape=shape, transform=a, fill=fill, dtype=dtype,
                         all_touched=False)


def vector_index(path: str, class_field: str, classes: tuple[tuple[str, int], ...], crs_wkt: str,
                 bounds: tuple[float, float, float, float], burn: str = "classes", dtype: str = "uint8",
                 table: str | None = None) -> _VectorIndex:
    """The polygons of ``path`` touching ``bounds`` (in ``crs_wkt``), read once per grid and process.

    Two grids are kept (units are built in grid order): a 109,800 m tile of CORINE holds some
    10^5 polygons, one or two hundred MB in memory (``benchmarks/corine_labels.py``). Positional
    and keyword calls share the cache."""
    return _vector_index(str(path), class_field, tuple(classes), str(crs_wkt), tuple(float(v) for v in bounds), burn,
                         str(dtype), table)


@lru_cache(maxsize=2)
def _vector_index(path, class_field, classes, crs_wkt, bounds, burn, dtype, table) -> _VectorIndex:
    return _VectorIndex(path, class_field, dict(classes), crs_wkt, bounds, burn, dtype, table)


def release_vector_indexes() -> None:
    """Drop this process's cached vector indexes (the plan's, once its label pre-scan is done:
    at CORINE scale a tile's index is hundreds of MB, and the build's workers read their own) and
    hand the freed heap back to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    import ctypes
    import gc

    _vector_index.cache_clear()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rasterize_vector(path: str, class_field: str, classes: Mapping[str, int], crs: str, transform: tuple,
                     shape: tuple[int, int], grid_bounds: tuple[float, float, float, float] | None = None, *,
                     burn: str = "classes", dtype: str = "uint8", fill: int = 0, table: str | None = None) -> np.ndarray:
    """Burn polygons onto a unit grid.

    Pixel-centre rule (``all_touched=False``); later features are drawn over earlier ones;
    pixels covered by no polygon get ``fill``; invalid polygons are repaired first
    (:func:`repair`). ``grid_bounds`` (the whole grid's bounds in ``crs``) lets every unit of a
    grid share one bounding-box read; by default the unit's own bounds are read.

    Parameters
    ----------
    burn
        ``classes``: the class id ``classes[value]`` of each polygon's ``class_field`` value;
        ``value``: the value itself as an integer (BigEarthNet v2: the CORINE code).
    dtype, fill
        The class map's dtype (``uint8`` / ``uint16``) and the class of uncovered pixels.
    table
        With ``burn: value``, a multi-label table whose codes every polygon must have.

    Returns
    -------
    ndarray
        ``(y, x)`` class ids (or codes) of ``dtype``.

    Raises
    ------
    LabelError
        The file cannot be read, has no CRS, lacks ``class_field``, has no feature, or a
        feature over the grid has a class value missing from ``classes`` (``value``: a value
        that is null, not a whole number, outside the dtype's range or not in ``table``).
    """
    from affine import Affine

    if grid_bounds is None:
        a = Affine(*tuple(transform)[:6])
        x0, y0 = a @ (0, 0)
        x1, y1 = a @ (shape[1], shape[0])
        grid_bounds = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    idx = vector_index(path, class_field, tuple(sorted(classes.items())), str(crs), tuple(grid_bounds), burn, dtype, table)
    return idx.burn(transform, shape, dtype, fill)
