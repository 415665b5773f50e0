"""Cloud-Optimized GeoTIFFs, written atomically through an :class:`~eochips.writers.store.OutputStore`.

Output is deterministic: the same arrays give byte-identical files (GDAL's COG driver writes
no timestamps).
"""

from __future__ import annotations

import errno
import shutil
from typing import Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError

from ..errors import OutputError
from .store import OutputStore, _disk_full_hint, sha256_file


ROOM_MARGIN = 64 << 10


def _check_room(staged, nbytes: int, rel: str) -> None:
    """Stop before GDAL writes into a disk without room for this file (uncompressed size) and one
    more like it being written beside it: GDAL reports a full disk with libtiff lines on stderr
    and an untyped error, the store with one clean :class:`OutputError`."""
    need = 2 * (nbytes + ROOM_MARGIN)
    try:
        free = shutil.disk_usage(staged.parent).free
    except OSError:
        return
    if free < need:
        raise _disk_full_hint(OSError(errno.ENOSPC, "No space left on device"), rel)


def _no_room(staged, message: str) -> bool:
    if "No space left" in message or "disk space" in message:
        return True
    try:
        return shutil.disk_usage(staged.parent).free < ROOM_MARGIN
    except OSError:
        return False


def write_cog(
    store: OutputStore,
    rel: str,
    array: np.ndarray,
    crs: str,
    transform: tuple,
    *,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
    tags: Mapping[str, str] | None = None,
    compress: str = "deflate",
    level: int = 6,
    blocksize: int = 256,
) -> str:
    """Write a ``(band, y, x)`` array as a COG at ``rel`` in ``store``, atomically; return its sha256.

    Parameters
    ----------
    store, rel
        Output location and the file's relative path.
    array
        ``(band, y, x)`` (or ``(y, x)``) array; its dtype is kept (no silent float conversion).
    crs, transform
        CRS (WKT / ``EPSG:n``) and affine coefficients ``(a, b, c, d, e, f)`` of the array's grid.
    nodata
        Declared fill value (None: none declared).
    descriptions, scales, offsets
        Per band: description (e.g. ``"B02@2022-06-01"``), scale and offset to physical units.
    colormap
        Class id -> RGBA, single-band uint8 only.
    compress, level
        ``deflate`` (predictor 2 for integers, 3 for floats), ``lzw``, ``zstd`` or ``none``.
    blocksize
        Tile size in pixels (capped at the image size rounded up to 16).

    Raises
    ------
    OutputError
        The file cannot be written (disk full, permissions).
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    count, height, width = arr.shape
    blocksize = min(blocksize, 16 * -(-max(height, width) // 16))
    opts: dict = {"BLOCKSIZE": blocksize, "OVERVIEWS": "NONE", "BIGTIFF": "IF_SAFER"}
    if compress != "none":
        opts["COMPRESS"] = compress.upper()
        if compress in ("deflate", "zstd"):
            opts["LEVEL"] = level
        opts["PREDICTOR"] = "2" if np.issubdtype(arr.dtype, np.integer) else "3"
    staged = store.staging_file(rel)
    _check_room(staged, arr.nbytes, rel)
    try:
        with rasterio.open(
            staged, "w", driver="COG", width=width, height=height, count=count, dtype=arr.dtype.name,
            crs=crs, transform=Affine(*transform), nodata=nodata, **opts,
        ) as ds:
            ds.write(arr)
            if descriptions:
                for i, d in enumerate(descriptions, 1):
                    ds.set_band_description(i, d)
            if scales is not None:
                ds.scales = tuple(scales)
            if offsets is not None:
                ds.offsets = tuple(offsets)
            if colormap:
                ds.write_colormap(1, dict(colormap))
            if tags:
                ds.update_tags(**tags)
        digest = sha256_file(staged)
    except (rasterio.errors.RasterioIOError, CPLE_BaseError) as exc:  # GDAL's write errors (CPLE_*) included
        staged.unlink(missing_ok=True)
        if _no_room(staged, str(exc)):
            raise _disk_full_hint(OSError(errno.ENOSPC, "No space left on device"), rel) from None
        raise OutputError(f"cannot write {rel}: {exc}") from None
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise _disk_full_hint(exc, rel) from None
    store.publish(staged, rel)
    return digest


AUX_SUFFIX = ".aux.xml"
"""GDAL's PAM sidecar of a raster: ``{file}.aux.xml`` beside it (GDAL, QGIS and rasterio read it)."""

# GDAL's RAT field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage)
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_MINMAX, _GFU_NAME, _GFU_RED, _GFU_GREEN, _GFU_BLUE = 5, 2, 6, 7, 8


def category_sidecar(names: Mapping[int, str], colours: Mapping[int, tuple[int, ...]]) -> bytes:
    """GDAL PAM XML (``.aux.xml``) declaring band 1's category names and a thematic RAT.

    GeoTIFF has no tag for category names or a raster attribute table: GDAL's GTiff and COG
    drivers keep both in the PAM sidecar ``{file}.aux.xml`` (GDAL raster data model, "Category
    names" and "Raster Attribute Table"; the layout of ``gcore/gdalpamrasterband.cpp`` and
    ``gcore/gdal_rat.cpp``: ``<CategoryNames><Category>``, ``<GDALRasterAttributeTable
    tableType="thematic">`` with ``<FieldDefn>`` type/usage codes and ``<Row><F>``). ``gdalinfo``
    shows them as ``categories`` and ``rat``; QGIS reads both.

    Parameters
    ----------
    names : mapping
        Class id -> name; category ``i`` is class id ``i`` (ids without a name get ``""``).
    colours : mapping
        Class id -> ``(r, g, b[, a])`` 0..255, the RAT's Red/Green/Blue columns (0 when absent).

    Returns
    -------
    bytes
        UTF-8 XML, the same bytes for the same input.
    """
    from xml.sax.saxutils import escape

    n = max([*names, *colours, 0]) + 1
    cats = "".join(f"      <Category>{escape(names.get(i, ''))}</Category>\n" for i in range(n))
    fields = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class_Name", _GFT_STRING, _GFU_NAME),
              ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN), ("Blue", _GFT_INTEGER, _GFU_BLUE)]
    defs = "".join(f'      <FieldDefn index="{i}">\n        <Name>{nm}</Name>\n        <Type>{t}</Type>\n'
                   f"        <Usage>{u}</Usage>\n      </FieldDefn>\n" for i, (nm, t, u) in enumerate(fields))
    rows = []
    for i, c in enumerate(sorted(names)):
        r, g, b = (tuple(colours[c])[:3] if c in colours else (0, 0, 0))
        rows.append(f'      <Row index="{i}">\n' + "".join(f"        <F>{escape(str(v))}</F>\n" for v in (c, names[c], r, g, b))
                    + "      </Row>\n")
    xml = ('<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n' + cats + "    </CategoryNames>\n"
           '    <GDALRasterAttributeTable tableType="thematic">\n' + defs + "".join(rows)
           + "    </GDALRasterAttributeTable>\n  </PAMRasterBand>\n</PAMDataset>\n")
    return xml.encode("utf-8")


def write_category_sidecar(store: OutputStore, rel: str, names: Mapping[int, str],
                           colours: Mapping[int, tuple[int, ...]]) -> tuple[str, str]:
    """Write ``{rel}.aux.xml`` (:func:`category_sidecar`) atomically; return ``(path, sha256)``.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    import hashlib

    data = category_sidecar(names, colours)
    aux = rel + AUX_SUFFIX
    store.write_bytes(aux, data)
    return aux, hashlib.sha256(data).hexdigest()
