"""Cloud-Optimized GeoTIFFs, written atomically through an :class:`~eochips.writers.store.OutputStore`.

Output is deterministic: the same arrays give byte-identical files (GDAL's COG driver writes
no timestamps).
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine

from ..errors import OutputError
from .store import OutputStore


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
    # GDAL renders into memory; the bytes reach the disk through the store (one clean ENOSPC error
    # on a full disk, no half-written TIFF, no libtiff lines on stderr)
    from rasterio.io import MemoryFile

    try:
        with MemoryFile() as mem:
            with mem.open(driver="COG", width=width, height=height, count=count, dtype=arr.dtype.name,
                          crs=crs, transform=Affine(*transform), nodata=nodata, **opts) as ds:
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
            data = mem.read()
    except rasterio.errors.RasterioIOError as exc:
        raise OutputError(f"cannot write {rel}: {exc}") from None
    store.write_bytes(rel, data)
    return hashlib.sha256(data).hexdigest()
