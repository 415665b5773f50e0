"""AOI, target grid and chip tiling.

The target grid is a CRS, an affine transform and a shape (odc-geo's ``GeoBox``, kept here
as a tiny frozen dataclass so tasks stay plain data). Chips are non-overlapping
``chip_size x chip_size`` windows of that grid; chip ``(row, col)`` covers grid pixels
``[row*N, (row+1)*N) x [col*N, (col+1)*N)`` and is named ``chip_{row:03d}_{col:03d}``
(seed 001's id, a function of the grid only, never of processing order).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from .config import AOIConfig, GridConfig
from .errors import AOIError, LabelError, RecipeError


# --------------------------------------------------------------------------------------
# AOI

def load_aoi(cfg: AOIConfig) -> tuple[BaseGeometry, CRS]:
    """Return the AOI geometry and its CRS.

    Raises
    ------
    AOIError
        Not valid GeoJSON, empty, self-intersecting, a projected bbox without ``crs``, or an
        unreadable file.
    """
    try:
        crs = CRS.from_user_input(cfg.crs)
    except Exception:
        raise AOIError(f"aoi.crs {cfg.crs!r} is not a CRS pyproj understands (e.g. 'EPSG:4326')") from None
    if cfg.bbox is not None:
        geom = box(*cfg.bbox)
    elif cfg.geometry is not None:
        geom = _geojson_geometry(cfg.geometry, "aoi.geometry")
    else:
        geom, file_crs = _read_vector_union(cfg.path)
        if file_crs is not None:
            crs = file_crs
    if geom.is_empty:
        raise AOIError("aoi is empty; give a polygon or bbox with an area")
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        raise AOIError(f"aoi geometry is not valid ({reason}); fix it, e.g. with shapely.make_valid")
    if geom.area == 0:
        raise AOIError("aoi has zero area; give a polygon or bbox with an area")
    if crs.is_geographic:
        minx, miny, maxx, maxy = geom.bounds
        if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
            raise AOIError(
                f"aoi coordinates {tuple(round(v, 3) for v in geom.bounds)} are outside lon/lat range; "
                f"if they are projected, set aoi.crs (now {cfg.crs})"
            )
        if maxx - minx > 180:
            raise AOIError(
                f"aoi spans {maxx - minx:.1f} degrees of longitude: it crosses the antimeridian (or is wider than a "
                f"hemisphere); split it at 180 degrees into a MultiPolygon, or give it in a projected aoi.crs"
            )
    return geom, crs


def _geojson_geometry(obj: dict, where: str) -> BaseGeometry:
    try:
        kind = obj.get("type")
        if kind == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in obj["features"]]
            if not geoms:
                raise ValueError("no features")
            return shapely.union_all(geoms)
        if kind == "Feature":
            return shape(obj["geometry"])
        if kind not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"type {kind!r} is not Polygon, MultiPolygon, Feature or FeatureCollection")
        return shape(obj)
    except Exception as exc:
        raise AOIError(f"{where} is not valid GeoJSON: {exc}") from None


def _read_vector_union(path: str | None) -> tuple[BaseGeometry, CRS | None]:
    p = Path(str(path))
    if not p.is_file():
        raise AOIError(f"aoi.path {str(p)!r} does not exist")
    if p.suffix.lower() in (".json", ".geojson"):
        try:
            return _geojson_geometry(json.loads(p.read_text()), f"aoi.path {str(p)!r}"), None
        except json.JSONDecodeError as exc:
            raise AOIError(f"aoi.path {str(p)!r} is not valid JSON: {exc}") from None
    import geopandas as gpd

    try:
        gdf = gpd.read_file(p)
    except Exception as exc:
        raise AOIError(f"aoi.path {str(p)!r} could not be read: {exc}") from None
    if gdf.empty:
        raise AOIError(f"aoi.path {str(p)!r} has no features")
    return shapely.union_all(gdf.geometry.values), (CRS.from_user_input(gdf.crs) if gdf.crs else None)


def reproject_geometry(geom: BaseGeometry, src: CRS | str, dst: CRS | str) -> BaseGeometry:
    """Reproject a shapely geometry (always_xy axis order), densifying edges first."""
    src, dst = CRS.from_user_input(src), CRS.from_user_input(dst)
    if src == dst:
        return geom
    dense = shapely.segmentize(geom, max_segment_length=_densify_step(geom))
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _densify_step(geom: BaseGeometry) -> float:
    minx, miny, maxx, maxy = geom.bounds
    return max(maxx - minx, maxy - miny) / 32 or 1.0


# --------------------------------------------------------------------------------------
# grid and chips

@dataclass(frozen=True)
class TargetGrid:
    """A georeferenced pixel grid.

    Attributes
    ----------
    crs
        CRS as WKT or ``EPSG:n``.
    transform
        Affine coefficients ``(a, b, c, d, e, f)`` (GDAL order a=xres, c=x0, e=-yres, f=y0).
    width, height
        Grid size in pixels.
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def resolution(self) -> float:
        return abs(self.transform[0])


@dataclass(frozen=True)
class Chip:
    """One chip: a ``size x size`` window of the target grid.

    Attributes
    ----------
    row, col
        Chip position in the grid (units of chips).
    crs, transform
        The chip's own GeoBox: its top-left pixel is grid pixel ``(row*size, col*size)``.
    size
        Side in pixels.
    """

    row: int
    col: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    size: int

    @property
    def id(self) -> str:
        return chip_id(self.row, self.col)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a = Affine(*self.transform)
        x0, y0 = a @ (0, 0)
        x1, y1 = a @ (self.size, self.size)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def polygon(self) -> BaseGeometry:
        return box(*self.bounds)


def chip_id(row: int, col: int) -> str:
    """Seed 001's chip id ``chip_{row:03d}_{col:03d}``."""
    return f"chip_{row:03d}_{col:03d}"


def make_grid(cfg: GridConfig, aoi: BaseGeometry, aoi_crs: CRS) -> TargetGrid:
    """Build the target grid of a recipe.

    With ``label_raster`` the grid *is* the raster's grid. Otherwise the grid has ``crs`` and
    ``resolution``, its origin at ``origin`` (or the AOI's top-left corner snapped outwards to
    the resolution) and is just large enough to hold the AOI.

    Raises
    ------
    LabelError
        The label raster cannot be opened, has no CRS, or does not overlap the AOI.
    RecipeError
        ``grid.crs`` is not a CRS, or the chip size exceeds the grid.
    """
    if cfg.label_raster:
        import rasterio

        try:
            with rasterio.open(cfg.label_raster) as ds:
                if ds.crs is None:
                    raise LabelError(f"label raster {cfg.label_raster!r} has no CRS; give it one (gdal_edit.py -a_srs)")
                if ds.transform.b != 0 or ds.transform.d != 0:
                    raise LabelError(f"label raster {cfg.label_raster!r} is rotated; eochips needs a north-up grid")
                grid = TargetGrid(ds.crs.to_wkt(), tuple(ds.transform)[:6], ds.width, ds.height)
        except rasterio.errors.RasterioIOError as exc:
            raise LabelError(f"label raster {cfg.label_raster!r} cannot be opened: {exc}") from None
        aoi_g = reproject_geometry(aoi, aoi_crs, grid.crs)
        gb = box(*_grid_bounds(grid))
        if not aoi_g.intersects(gb):
            raise LabelError(
                f"label raster {cfg.label_raster!r} (bounds {tuple(round(v) for v in gb.bounds)}) does not overlap the AOI"
            )
    else:
        try:
            crs = CRS.from_user_input(cfg.crs)
        except Exception:
            raise RecipeError(f"recipe field 'grid.crs': {cfg.crs!r} is not a CRS (e.g. 'EPSG:5070')") from None
        res = float(cfg.resolution)
        aoi_g = reproject_geometry(aoi, aoi_crs, crs)
        minx, miny, maxx, maxy = aoi_g.bounds
        if cfg.origin is not None:
            ox, oy = cfg.origin
        else:
            ox, oy = math.floor(minx / res) * res, math.ceil(maxy / res) * res
        if minx < ox - 1e-6 or maxy > oy + 1e-6:
            raise RecipeError(f"recipe field 'grid.origin': {cfg.origin} must be at or above-left of the AOI's top-left ({minx}, {maxy})")
        width = max(1, math.ceil((maxx - ox) / res - 1e-9))
        height = max(1, math.ceil((oy - miny) / res - 1e-9))
        grid = TargetGrid(crs.to_wkt(), (res, 0.0, ox, 0.0, -res, oy), width, height)
    if cfg.chip_size > min(grid.width, grid.height):
        raise RecipeError(
            f"recipe field 'grid.chip_size': {cfg.chip_size} px is larger than the grid ({grid.width} x {grid.height} px)"
        )
    return grid


def _grid_bounds(grid: TargetGrid) -> tuple[float, float, float, float]:
    a = grid.affine
    x0, y0 = a @ (0, 0)
    x1, y1 = a @ (grid.width, grid.height)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def tile_chips(grid: TargetGrid, chip_size: int, aoi_grid: BaseGeometry, min_fraction: float = 1.0) -> list[Chip]:
    """All chips of ``grid`` whose area inside ``aoi_grid`` is at least ``min_fraction``.

    Parameters
    ----------
    grid
        The target grid.
    chip_size
        Chip side in pixels; the grid's remainder rows/columns are not chipped.
    aoi_grid
        The AOI in the grid's CRS.
    min_fraction
        1.0 keeps chips fully inside the AOI (to 1e-9 of their area).

    Returns
    -------
    list of Chip
        Sorted by (row, col).
    """
    a = grid.affine
    n_rows, n_cols = grid.height // chip_size, grid.width // chip_size
    inv = ~a
    minx, miny, maxx, maxy = aoi_grid.bounds
    cs = [inv @ (x, y) for x in (minx, maxx) for y in (miny, maxy)]
    c0 = max(0, int(math.floor(min(c[0] for c in cs) / chip_size)))
    c1 = min(n_cols - 1, int(math.floor(max(c[0] for c in cs) / chip_size)))
    r0 = max(0, int(math.floor(min(c[1] for c in cs) / chip_size)))
    r1 = min(n_rows - 1, int(math.floor(max(c[1] for c in cs) / chip_size)))
    chips = [
        Chip(r, c, grid.crs, tuple(a @ Affine.translation(c * chip_size, r * chip_size))[:6], chip_size)
        for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)
    ]
    if not chips:
        return []
    polys = np.array([ch.polygon for ch in chips], dtype=object)
    shapely.prepare(aoi_grid)
    frac = shapely.area(shapely.intersection(polys, aoi_grid)) / shapely.area(polys)
    return [ch for ch, f in zip(chips, frac) if f >= min_fraction - 1e-9]
