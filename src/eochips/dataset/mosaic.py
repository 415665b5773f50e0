"""The ``mosaic`` finalizer: one mosaic per AOI assembled from the tile builder's parts
(reference pipeline 3, azavea/cloud-buster @fe6c339; the parts' contract:
:class:`eochips.config.models.MosaicLayout`).

For a recipe with a ``mosaic`` layout it writes, at the dataset root (``name`` =
``MosaicLayout.name`` with ``{recipe}`` = the recipe's name):

===================================  ===========================================================
file                                 content
===================================  ===========================================================
``{name}-cloudless.tif``             the primary mosaic: the source's bands, dtype and nodata
``{name}-cloudy.tif``                the backstop mosaic (same bands)
``{name}-source.tif``                uint16 ``cloudless_index``, ``cloudy_index`` (the pick
                                     number of ``sources.csv``; 0 = none)[, ``clear_count``];
                                     no nodata
``sources.csv``                      ``number,scene_id,role,datetime,score,cloud_cover,remaining_m2``:
                                     the greedy picks of ``plan.selection_log[source]``
``quicklooks/{name}-cloudless.png``  RGB (2-98 % stretch per band), nodata transparent
``quicklooks/{name}-source.png``     the two index bands in categorical colours, with a legend
===================================  ===========================================================

Each mosaic is the kept units' parts ``tiles/{unit}-{product}.tif`` placed on the units' common
grid by a VRT written here (the parts in unit order; a tile that is not kept, dropped or
failed, is a hole: nodata for the image products, 0 for the index bands), converted by GDAL's
COG driver: 512 px tiles, the recipe's ``output.compress`` / ``level`` (predictor 2 for
integers, 3 for floats), overviews halving down to :data:`MIN_OVERVIEW_PX` with ``NEAREST``
for every product. Nearest as the seed's merge (it warps every scene with nearest,
``../shared/specs/recipes.md`` section 3): each overview pixel of an image is a real observation
of one scene, the same pixel the index overview names. GDAL streams the VRT through its block
cache (:data:`CACHE_MB`, :data:`GDAL_LIMITS`), so memory does not grow with the AOI; the
quicklooks read an overview.

The files are rebuilt on every finalize, written under a temporary name and renamed (the
:class:`~eochips.writers.OutputStore`), and are byte-identical for the same parts (the COG
driver writes no timestamp; the VRT lists the parts in a fixed order). For object storage the
parts are fetched one by one to a local staging folder first.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import OutputError
from ..writers import OutputStore
from . import Context, register

PRODUCTS = ("cloudless", "cloudy", "source")
INDEX_BANDS = ("cloudless_index", "cloudy_index")
CLEAR_BAND = "clear_count"
SOURCES_CSV = "sources.csv"
CSV_COLUMNS = ("number", "scene_id", "role", "datetime", "score", "cloud_cover", "remaining_m2")
BLOCK_PX = 512
MIN_OVERVIEW_PX = 128
"""Overviews halve the mosaic until its longer side is at most this (at least one level when larger)."""
QUICKLOOK_PX = 1024
"""Longer side of a quicklook's image, pixels (the full mosaic when smaller)."""
CACHE_MB = 8
"""GDAL's block cache while assembling (``GDAL_CACHEMAX``; see :data:`GDAL_LIMITS`)."""
GDAL_LIMITS = {"GDAL_MAX_DATASET_POOL_SIZE": 32, "GDAL_SWATH_SIZE": 4 << 20, "GDAL_OVR_CHUNK_MAX_SIZE": 1 << 20}
"""GDAL settings that, with :data:`CACHE_MB`, keep the assembly's memory flat as the AOI grows:
at most 32 parts open at once (each open part holds its decompression buffers), 4 MiB copy
swaths and 1 MiB overview chunks (GDAL's defaults grow with the mosaic's width). Measured
(one mosaic of 4 uint16 bands from 512 px parts, process peak RSS, 125 MiB before): 239 /
236 / 274 MiB for 36 / 144 / 576 parts (3072 / 6144 / 12288 px square); with GDAL's
defaults 192 / 361 / 427 MiB, with a 64 MiB cache 315 / 408 / 551 MiB (about twice as fast).
They change no output byte."""
LEGEND_MAX = 30
"""Picks named in the source quicklook's legend (the rest summarised in one line)."""

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64"}


# --------------------------------------------------------------------------------------
# the layout and the grid

def mosaic_layout(recipe) -> Any | None:
    """The recipe's :class:`~eochips.config.models.MosaicLayout`, or None for a chip recipe."""
    return next((lay for lay in recipe.output.layout if lay.kind == "mosaic"), None)


def mosaic_source(recipe, layout) -> str:
    """The source the mosaic is built from: ``layout.source``, else the recipe's first source."""
    return layout.source or next(iter(recipe.sources))


def mosaic_name(recipe, layout) -> str:
    """The mosaics' file-name stem: ``layout.name`` formatted with ``recipe`` = the recipe's name."""
    from ..writers.store import safe_name

    return layout.name.format(recipe=safe_name(recipe.name))


def part_name(unit_id: str, product: str) -> str:
    """``tiles/{unit}-{product}.tif``: where the tile builder writes a unit's part."""
    return f"tiles/{unit_id}-{product}.tif"


def mosaic_files(name: str) -> dict[str, str]:
    """Product -> the mosaic's relative path (``{name}-{product}.tif``)."""
    return {p: f"{name}-{p}.tif" for p in PRODUCTS}


@dataclass(frozen=True)
class MosaicGrid:
    """The mosaic's pixel grid: the bounding box of every unit of the plan on their one grid.

    Attributes
    ----------
    crs
        WKT of the grid's CRS.
    transform
        Affine of the mosaic's top-left pixel (the grid's affine shifted to the first unit).
    width, height
        Size in pixels.
    size
        A unit's side in pixels.
    row0, col0
        The first unit row and column (units ``(row, col)`` start at pixel
        ``((row - row0) * size, (col - col0) * size)``).
    """

    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    size: int
    row0: int
    col0: int

    @classmethod
    def of_plan(cls, plan) -> "MosaicGrid":
        """The grid of ``plan``'s units (all of them: planned and dropped, so holes keep their place).

        Raises
        ------
        OutputError
            The plan has no unit, or units on more than one grid, or units of different sizes.
        """
        from affine import Affine

        units = [u.unit for u in plan.units]
        if not units:
            raise OutputError("the plan has no unit to mosaic; enlarge the AOI")
        grids = sorted({u.grid for u in units})
        sizes = sorted({u.gbox.shape[0] for u in units} | {u.gbox.shape[1] for u in units})
        if len(grids) != 1 or len(sizes) != 1:
            raise OutputError(f"a mosaic needs its tiles on one grid of one tile size; the plan has {len(grids)} grid(s) "
                              f"and tile sizes {sizes}; use grid: {{kind: crs, ...}} and units: {{kind: tile, size: N}}")
        g = plan.grids[grids[0]].gbox
        n = sizes[0]
        r0, r1 = min(u.row for u in units), max(u.row for u in units)
        c0, c1 = min(u.col for u in units), max(u.col for u in units)
        a = Affine(*tuple(g.affine)[:6]) * Affine.translation(c0 * n, r0 * n)
        return cls(g.crs.to_wkt(), tuple(a)[:6], (c1 - c0 + 1) * n, (r1 - r0 + 1) * n, n, r0, c0)

    def offset(self, row: int, col: int) -> tuple[int, int]:
        """``(x, y)`` pixel offset of unit ``(row, col)`` in the mosaic."""
        return (col - self.col0) * self.size, (row - self.row0) * self.size


def overview_count(width: int, height: int, min_px: int = MIN_OVERVIEW_PX) -> int:
    """Overview levels (factors 2, 4, ...) until the longer side is at most ``min_px``."""
    side, k = max(width, height), 0
    while side > min_px:
        side = -(-side // 2)
        k += 1
    return k


# --------------------------------------------------------------------------------------
# assembly: parts -> VRT -> COG

@dataclass(frozen=True)
class Part:
    """One unit's part on local disk, and where it goes in the mosaic (pixel offsets)."""

    path: str
    xoff: int
    yoff: int


def _fmt(v: float) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else (str(int(v)) if float(v).is_integer() else repr(float(v)))


def build_vrt(parts: Sequence[Part], grid: MosaicGrid, dtype: str, count: int, nodata: float | None,
              descriptions: Sequence[str], scales: Sequence[float] | None = None,
              offsets: Sequence[float] | None = None) -> str:
    """The XML of a GDAL VRT placing ``parts`` (each ``grid.size`` px square) on ``grid``.

    Parameters
    ----------
    parts
        The parts in a fixed order (the unit order): the same parts give the same text.
    dtype, count, nodata
        The parts' numpy dtype name, band count and declared nodata (None: none; areas without
        a part read as 0).
    descriptions, scales, offsets
        Per band: description, scale and offset written into the mosaic.
    """
    from affine import Affine

    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = grid.crs
    a = Affine(*grid.transform)
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (a.c, a.a, a.b, a.f, a.d, a.e))
    gtype = _GDAL_TYPES[dtype]
    n = grid.size
    for b in range(1, count + 1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=gtype, band=str(b))
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = _fmt(nodata)
        ET.SubElement(band, "Description").text = descriptions[b - 1]
        if offsets is not None:
            ET.SubElement(band, "Offset").text = repr(float(offsets[b - 1]))
        if scales is not None:
            ET.SubElement(band, "Scale").text = repr(float(scales[b - 1]))
        for p in parts:
            src = ET.SubElement(band, "SimpleSource")
            ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = p.path
            ET.SubElement(src, "SourceBand").text = str(b)
            ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(n), ySize=str(n))
            ET.SubElement(src, "DstRect", xOff=str(p.xoff), yOff=str(p.yoff), xSize=str(n), ySize=str(n))
    return ET.tostring(root, encoding="unicode")


def cog_options(dtype: str, width: int, height: int, compress: str = "deflate", level: int = 6) -> dict[str, Any]:
    """Creation options of GDAL's COG driver for a mosaic (see the module docstring)."""
    k = overview_count(width, height)
    opts: dict[str, Any] = {"BLOCKSIZE": BLOCK_PX, "BIGTIFF": "IF_SAFER", "STATISTICS": "NO", "NUM_THREADS": "ALL_CPUS",
                            "OVERVIEW_RESAMPLING": "NEAREST"}
    opts.update({"OVERVIEWS": "IGNORE_EXISTING", "OVERVIEW_COUNT": k} if k else {"OVERVIEWS": "NONE"})
    if compress != "none":
        opts["COMPRESS"] = compress.upper()
        if compress in ("deflate", "zstd"):
            opts["LEVEL"] = level
        opts["PREDICTOR"] = "STANDARD" if np.issubdtype(np.dtype(dtype), np.integer) else "FLOATING_POINT"
    else:
        opts["COMPRESS"] = "NONE"
    return opts


def check_parts(paths: Sequence[tuple[str, str, Any]], grid: MosaicGrid) -> tuple[str, int, float | None, tuple, tuple]:
    """Check every part's header against its unit and the others; return the parts' common
    ``(dtype, count, nodata, scales, offsets)``.

    Parameters
    ----------
    paths
        ``(relative name, local path, unit GeoBox)`` per part.

    Raises
    ------
    OutputError
        A part whose CRS, transform or size differs from its unit's, or whose dtype, band count
        or nodata differs from the first part's (named).
    """
    import rasterio
    from rasterio.crs import CRS

    want_crs = CRS.from_wkt(grid.crs)
    first = None
    for rel, path, gbox in paths:
        with rasterio.open(path) as ds:
            facts = (ds.dtypes[0], ds.count, ds.nodata, tuple(ds.scales), tuple(ds.offsets))
            problem = None
            if ds.crs != want_crs:
                problem = f"CRS {ds.crs} is not the grid's"
            elif (ds.height, ds.width) != tuple(gbox.shape):
                problem = f"size {ds.width} x {ds.height} px is not the tile's {gbox.shape[1]} x {gbox.shape[0]}"
            elif not ds.transform.almost_equals(gbox.affine, precision=1e-6 * abs(gbox.affine.a)):
                problem = f"transform {tuple(ds.transform)[:6]} is not the tile's {tuple(gbox.affine)[:6]}"
            elif len(set(ds.dtypes)) != 1:
                problem = f"bands of dtypes {sorted(set(ds.dtypes))}"
            elif first is not None and (facts[:2] != first[:2] or not _same_nodata(facts[2], first[2])):
                problem = f"dtype/bands/nodata {facts[:3]} differ from the first part's {first[:3]}"
        if problem:
            raise OutputError(f"mosaic part {rel}: {problem}; the tile builder wrote it for another grid or recipe: "
                              f"rebuild it (delete it and run 'eochips build' again)")
        first = first or facts
    return first


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def write_mosaic(store: OutputStore, rel: str, parts: Sequence[Part], grid: MosaicGrid, dtype: str, count: int,
                 nodata: float | None, descriptions: Sequence[str], *, scales=None, offsets=None,
                 compress: str = "deflate", level: int = 6, keep_local: Path | None = None) -> str:
    """Assemble ``parts`` into the COG ``rel`` of ``store`` (atomically); return its sha256.

    GDAL streams the VRT of :func:`build_vrt` into the COG driver (:func:`cog_options`) under
    ``GDAL_CACHEMAX`` = :data:`CACHE_MB` and :data:`GDAL_LIMITS`; nothing is read into numpy here. With ``keep_local``
    a copy of the finished COG is left there (the quicklooks read it; for object storage the
    published file is remote).

    Raises
    ------
    OutputError
        GDAL cannot write the file (disk full: the message says so).
    """
    import rasterio
    import rasterio.shutil
    from rasterio._err import CPLE_BaseError

    from ..writers.cog import _check_room, _no_room
    from ..writers.store import _disk_full_hint, sha256_file

    staged = store.staging_file(rel)
    vrt = staged.with_name(staged.name + ".vrt")
    _check_room(staged, grid.width * grid.height * count * np.dtype(dtype).itemsize // 2, rel)
    try:
        vrt.write_text(build_vrt(parts, grid, dtype, count, nodata, descriptions, scales, offsets))
        with rasterio.Env(GDAL_CACHEMAX=CACHE_MB << 20, GDAL_PAM_ENABLED="NO", **GDAL_LIMITS):  # rasterio: bytes
            rasterio.shutil.copy(str(vrt), str(staged), driver="COG",
                                 **cog_options(dtype, grid.width, grid.height, compress, level))
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        digest = sha256_file(staged)
        if keep_local is not None:
            shutil.copyfile(staged, keep_local)
    except (rasterio.errors.RasterioIOError, CPLE_BaseError) as exc:
        staged.unlink(missing_ok=True)
        if _no_room(staged, str(exc)):
            raise _disk_full_hint(OSError(28, "No space left on device"), rel) from None
        raise OutputError(f"cannot write the mosaic {rel}: {exc}") from None
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise _disk_full_hint(exc, rel) from None
    finally:
        vrt.unlink(missing_ok=True)
    store.publish(staged, rel)
    return digest


def assemble_mosaic(store: OutputStore, units: Sequence[tuple[str, int, int, Any, dict[str, str]]], grid: MosaicGrid,
                    name: str, bands: Sequence[str], *, clear_count: bool = False, compress: str = "deflate",
                    level: int = 6, local_dir: Path, empty: tuple[str, float | None] = ("uint16", 0)) -> dict[str, str]:
    """Assemble the kept units' parts into the three mosaics of ``name``; return ``{path: sha256}``.

    Parameters
    ----------
    store
        The dataset's store (local, or object storage: the parts are fetched to ``local_dir``).
    units
        ``(unit id, row, col, GeoBox, files)`` of each kept unit, ``files`` = the unit's
        recorded ``{path: sha256}``; sorted here by ``(row, col)``.
    grid
        The mosaic's grid (:meth:`MosaicGrid.of_plan`).
    name
        File-name stem (:func:`mosaic_name`).
    bands
        The image bands' names (descriptions of the cloudless / cloudy mosaics).
    clear_count
        The source parts hold a third band ``clear_count``.
    local_dir
        A local scratch folder (object storage: the fetched parts and a copy of each mosaic,
        :func:`local_mosaic`).
    empty
        ``(dtype, nodata)`` of the image mosaics when no unit is kept (all nodata).

    Raises
    ------
    OutputError
        A kept unit has no recorded part (named); a part does not fit its unit
        (:func:`check_parts`); a mosaic cannot be written.
    """
    files = mosaic_files(name)
    index_desc = [*INDEX_BANDS, *([CLEAR_BAND] if clear_count else [])]
    ordered = sorted(units, key=lambda u: (u[1], u[2], u[0]))
    for uid, _, _, _, recorded in ordered:  # every part is checked before any mosaic is written
        for product in PRODUCTS:
            if part_name(uid, product) not in recorded:
                raise OutputError(f"kept tile {uid} has no part {part_name(uid, product)} in the state; rebuild it "
                                  f"(eochips build) or check that the recipe's layout is the mosaic's")
    plans = {}
    for product in PRODUCTS:
        located = [(part_name(uid, product), _local_part(store, part_name(uid, product), local_dir), gbox, grid.offset(row, col))
                   for uid, row, col, gbox, _ in ordered]
        if located:
            dtype, count, nodata, scales, offsets = check_parts([(r, p, g) for r, p, g, _ in located], grid)
        else:  # nothing kept: an empty mosaic of the source's bands
            dtype, count, nodata, scales, offsets = ("uint16", len(index_desc), None, None, None) if product == "source" \
                else (empty[0], len(bands), empty[1], None, None)
        desc = index_desc if product == "source" else list(bands)
        if count != len(desc):
            raise OutputError(f"mosaic parts tiles/*-{product}.tif hold {count} band(s), expected {len(desc)} ({', '.join(desc)}); "
                              f"rebuild the tiles of this recipe")
        if product == "source":
            nodata = None  # 0 = no pick, a value (the contract), not missing data
        scl = scales if scales and any(s != 1 for s in scales) else None
        off = offsets if offsets and any(o != 0 for o in offsets) else None
        plans[product] = ([Part(str(p), x, y) for _, p, _, (x, y) in located], dtype, count, nodata, desc, scl, off)
    written: dict[str, str] = {}
    for product, (parts, dtype, count, nodata, desc, scl, off) in plans.items():
        rel = files[product]
        written[rel] = write_mosaic(store, rel, parts, grid, dtype, count, nodata, desc, scales=scl, offsets=off,
                                    compress=compress, level=level,
                                    keep_local=None if store.is_local else local_dir / Path(rel).name)
    return written


def local_mosaic(store: OutputStore, rel: str, local_dir: Path) -> Path:
    """A local path of the mosaic ``rel`` just written: the file itself in a local store, else
    the copy :func:`assemble_mosaic` left in ``local_dir``."""
    return store.local_path(rel) if store.is_local else local_dir / Path(rel).name


def _local_part(store: OutputStore, rel: str, local_dir: Path) -> Path:
    if store.is_local:
        return store.local_path(rel)
    dst = local_dir / "parts" / Path(rel).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(store.read_bytes(rel))  # one part in memory at a time
    return dst


# --------------------------------------------------------------------------------------
# sources.csv

def sources_rows(log: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``sources.csv`` (:data:`CSV_COLUMNS`) from a source's selection log, by pick number."""
    return [{c: p.get(c) for c in CSV_COLUMNS} for p in sorted(log.get("picks") or [], key=lambda p: p["number"])]


def sources_csv(log: dict[str, Any]) -> str:
    """``sources.csv``'s text: header :data:`CSV_COLUMNS`, one line per pick; empty fields for None."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in sources_rows(log):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# quicklooks

def _overview_read(path: str | os.PathLike, indexes: list[int], max_px: int) -> tuple[np.ndarray, tuple]:
    """``(band, y, x)`` pixels of ``indexes`` at most ``max_px`` on the longer side, read with
    nearest from the closest overview (bounded memory), and the bands' nodata."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as ds:
        f = max(1.0, max(ds.width, ds.height) / max_px)
        shape = (len(indexes), max(1, round(ds.height / f)), max(1, round(ds.width / f)))
        arr = ds.read(indexes, out_shape=shape, resampling=Resampling.nearest)
        return arr, tuple(ds.nodatavals[i - 1] for i in indexes)


def _png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def stretch(band: np.ndarray, valid: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> np.ndarray:
    """uint8 of ``band`` (``(y, x)``) stretched linearly from its ``lo`` to ``hi`` percentile over
    ``valid`` (bool ``(y, x)``) to 0..255, clipped; 0 where nothing is valid."""
    if not valid.any():
        return np.zeros(band.shape, np.uint8)
    p_lo, p_hi = np.percentile(band[valid].astype(np.float64), [lo, hi])
    scaled = (band.astype(np.float64) - p_lo) / max(p_hi - p_lo, 1e-12)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def rgb_quicklook(path: str | os.PathLike, indexes: list[int], max_px: int | None = None) -> bytes:
    """PNG (RGBA) of the three bands ``indexes`` (1-based) of a mosaic, read from an overview
    (:func:`_overview_read`), each stretched 2-98 % (:func:`stretch`); pixels where all three
    are nodata (or NaN) are transparent. ``max_px``: default :data:`QUICKLOOK_PX`."""
    arr, nodatas = _overview_read(path, indexes, max_px or QUICKLOOK_PX)
    empty = np.ones(arr.shape[1:], bool)
    for b, nd in zip(arr, nodatas):
        missing = np.isnan(b) if np.issubdtype(b.dtype, np.floating) else np.zeros(b.shape, bool)
        if nd is not None and not math.isnan(nd):
            missing |= b == nd
        empty &= missing
    valid = ~empty
    rgba = np.zeros(arr.shape[1:] + (4,), np.uint8)
    for i in range(3):
        rgba[..., i] = np.where(valid, stretch(arr[i], valid), 0)
    rgba[..., 3] = np.where(valid, 255, 0)
    return _png(rgba)


def pick_colours(n: int) -> np.ndarray:
    """``(n + 1, 4)`` RGBA float colours: index 0 white, pick ``k`` matplotlib's ``tab20`` colour ``(k - 1) % 20``."""
    from matplotlib import colormaps

    tab = colormaps["tab20"]
    return np.array([(1.0, 1.0, 1.0, 1.0)] + [tab((k - 1) % 20) for k in range(1, n + 1)])


def source_quicklook(path: str | os.PathLike, picks: Sequence[dict[str, Any]], max_px: int | None = None) -> bytes:
    """PNG of the source mosaic's ``cloudless_index`` and ``cloudy_index`` side by side, pick
    ``k`` in colour :func:`pick_colours` ``[k]``, 0 (none) white, with a legend ``k: scene id (role)``
    of the picks that appear (at most :data:`LEGEND_MAX`). Read from an overview; drawn with
    matplotlib's object API on an Agg canvas (no pyplot state: safe beside other threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    arr, _ = _overview_read(path, [1, 2], max_px or QUICKLOOK_PX // 2)
    n = max([int(arr.max()) if arr.size else 0, *(int(p["number"]) for p in picks)])
    colours = pick_colours(n)
    cmap = ListedColormap(colours)
    h, w = arr.shape[1:]
    dpi = 100
    panel = 4.0
    fig = Figure(figsize=(2 * panel + 3.2, panel * max(h / w, 0.35) + 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, title in enumerate(("cloudless_index (primary)", "cloudy_index (backstop)")):
        ax = fig.add_axes((0.01 + i * panel / (2 * panel + 3.2), 0.02, 0.95 * panel / (2 * panel + 3.2), 0.88))
        ax.imshow(arr[i], cmap=cmap, vmin=-0.5, vmax=n + 0.5, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set(np.unique(arr).tolist()) - {0})
    names = {int(p["number"]): f"{p['scene_id']} ({p['role']})" for p in picks}
    handles = [Patch(facecolor=colours[k], edgecolor="0.3", label=f"{k}: {names.get(k, '?')}") for k in present[:LEGEND_MAX]]
    if len(present) > LEGEND_MAX:
        handles.append(Patch(facecolor="white", edgecolor="white", label=f"... {len(present) - LEGEND_MAX} more (sources.csv)"))
    handles.append(Patch(facecolor="white", edgecolor="0.3", label="0: none"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.02 + 2 * panel / (2 * panel + 3.2), 0.5),
               fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})  # tight: long scene ids stay whole
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# the summary's mosaic section

def _add(total: dict[str, int], counts: dict[str, Any]) -> None:
    for k, v in counts.items():
        total[str(k)] = total.get(str(k), 0) + int(v)


def _shares(counts: dict[str, int], total: int) -> dict[str, float]:
    return {k: round(counts[k] / total, 6) if total else 0.0 for k in sorted(counts, key=int)}


def mosaic_summary(plan, records: dict[str, dict[str, Any]], kept: Iterable[str]) -> dict[str, Any]:
    """The summary's ``mosaic`` section (empty dict for a recipe without a mosaic layout).

    Keys: ``source``, ``aoi_area_m2``; ``remaining_primary_m2`` / ``_pct`` and
    ``remaining_backstop_m2`` / ``_pct`` (the selection's uncovered area after each stage, m^2,
    summed over the stage's AOI copies, and % of those copies' area: ``coverage_count`` x the
    AOI for the primary stage, the AOI for the backstop, from ``plan.selection_log[source]``); ``picks`` (count per role);
    ``aoi_pixels`` (the kept tiles' pixels inside the AOI); ``pixel_share`` ``{"cloudless":
    {"0": share, "1": ...}, "cloudy": {...}}`` (share of ``aoi_pixels`` from each pick number,
    "0" = empty) summed from the kept units' ``metrics["mosaic_pixels"]``; ``empty_share``
    (cloudless alone: its "0") and ``empty_filled_share`` (cloudless filled by cloudy: from
    ``mosaic_pixels["filled"]["0"]`` when every kept unit has it, else None); ``tiles_missing``
    (planned tiles not kept: their pixels are holes and not counted).
    """
    layout = mosaic_layout(plan.recipe)
    if layout is None:
        return {}
    src = mosaic_source(plan.recipe, layout)
    log = (getattr(plan, "selection_log", None) or {}).get(src) or {}
    aoi = log.get("aoi_area_m2")

    def pct(v, copies: int = 1):  # of the stage's target: coverage_count AOI copies (primary), one (backstop)
        return round(100.0 * v / (aoi * copies), 6) if v is not None and aoi else None

    kept = list(kept)
    counts: dict[str, dict[str, int]] = {"cloudless": {}, "cloudy": {}, "filled": {}}
    filled_everywhere = bool(kept)
    for uid in kept:
        mp = (records[uid].get("metrics") or {}).get("mosaic_pixels") or {}
        for product in ("cloudless", "cloudy"):
            _add(counts[product], mp.get(product) or {})
        if "filled" in mp:
            _add(counts["filled"], mp["filled"])
        else:
            filled_everywhere = False
    total = sum(counts["cloudless"].values())
    rp, rb = log.get("remaining_primary_m2"), log.get("remaining_backstop_m2")
    roles = Counter(p.get("role") for p in log.get("picks") or [])
    return {
        "source": src, "aoi_area_m2": aoi,
        "remaining_primary_m2": rp, "remaining_primary_pct": pct(rp, int(log.get("coverage_count") or 1)),
        "remaining_backstop_m2": rb, "remaining_backstop_pct": pct(rb),
        "picks": {"primary": roles.get("primary", 0), "backstop": roles.get("backstop", 0)},
        "aoi_pixels": total,
        "pixel_share": {p: _shares(counts[p], total) for p in ("cloudless", "cloudy")},
        "empty_share": round(counts["cloudless"].get("0", 0) / total, 6) if total else None,
        "empty_filled_share": round(counts["filled"].get("0", 0) / total, 6) if total and filled_everywhere else None,
        "tiles_missing": sum(1 for u in plan.units if u.status == "planned") - len(kept),
    }


# --------------------------------------------------------------------------------------
# the finalizer

@register("mosaic")
def _mosaic(ctx: Context) -> None:
    """Assemble the mosaics, ``sources.csv`` and the quicklooks (module docstring); a no-op for a
    recipe without a mosaic layout (so the default finalizer list serves chip recipes too).

    Raises
    ------
    OutputError
        The plan has no selection log of the mosaic's source (``plan.selection_log``); a part
        is missing or does not fit (:func:`assemble_mosaic`); a file cannot be written.
    """
    import tempfile

    plan = ctx.plan
    r = plan.recipe
    layout = mosaic_layout(r)
    if layout is None:
        return
    src = mosaic_source(r, layout)
    name = mosaic_name(r, layout)
    specs = plan.sources[src].bands
    bands = [b.name for b in specs]
    grid = MosaicGrid.of_plan(plan)
    by_id = {u.id: u for u in plan.units}
    units = [(uid, by_id[uid].unit.row, by_id[uid].unit.col, by_id[uid].unit.gbox, ctx.records[uid]["files"]) for uid in ctx.kept]
    log = (getattr(plan, "selection_log", None) or {}).get(src)
    if not log:
        raise OutputError(f"the plan in {ctx.store.location!r} has no selection log of source {src!r} (the greedy picks "
                          f"that sources.csv and the source index name); plan again with this eochips version "
                          f"(eochips run RECIPE -o {ctx.store.location} --overwrite)")
    scratch = ctx.store.staging if not ctx.store.is_local else None
    with tempfile.TemporaryDirectory(prefix="eochips-mosaic-", dir=scratch) as tmp:
        local = Path(tmp)
        written = assemble_mosaic(ctx.store, units, grid, name, bands, clear_count=layout.clear_count,
                                  compress=r.output.compress, level=r.output.level, local_dir=local,
                                  empty=(specs[0].dtype, specs[0].nodata))
        files = mosaic_files(name)
        rgb = [bands.index(b) + 1 for b in layout.quicklook] if layout.quicklook else [1, 2, 3] if len(bands) >= 3 else [1, 1, 1]
        ql = {f"quicklooks/{name}-cloudless.png": rgb_quicklook(local_mosaic(ctx.store, files["cloudless"], local), rgb),
              f"quicklooks/{name}-source.png": source_quicklook(local_mosaic(ctx.store, files["source"], local),
                                                                log.get("picks") or [])}
    ctx.store.write_text(SOURCES_CSV, sources_csv(log))
    for rel, png in ql.items():
        ctx.store.write_bytes(rel, png)
    ctx.hashes.update(written)
