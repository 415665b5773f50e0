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
