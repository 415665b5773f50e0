"""Writing chips: valid Cloud-Optimized GeoTIFFs, written atomically.

Every file is written under a temporary name in its final folder and renamed into place
with :func:`os.replace` once complete, so a crash never leaves a partial file under a final
name. Output is deterministic: the same arrays give byte-identical files (GDAL's COG driver
writes no timestamps).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine

TMP_MARK = ".eochips-tmp-"


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def tmp_name(path: Path) -> Path:
    """A unique temporary sibling of ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_cog(
    path: str | os.PathLike,
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
    """Write a ``(band, y, x)`` array as a COG, atomically, and return its sha256.

    Parameters
    ----------
    path
        Final file name.
    array
        ``(band, y, x)`` array; its dtype is kept (no silent float conversion).
    crs, transform
        CRS (WKT / ``EPSG:n``) and affine coefficients of the array's grid.
    nodata
        Declared fill value (None: none declared).
    descriptions, scales, offsets
        Per band: description (e.g. ``"B02@2022-06-01"``), scale and offset to physical units.
    colormap
        Class id -> RGBA, single-band uint8 only.
    compress, level
        ``deflate`` (with predictor 2 for integers), ``lzw``, ``zstd`` or ``none``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        if compress in ("deflate", "lzw", "zstd"):
            opts["PREDICTOR"] = "2" if np.issubdtype(arr.dtype, np.integer) else "3"
    tmp = tmp_name(path)
    try:
        with rasterio.open(
            tmp, "w", driver="COG", width=width, height=height, count=count, dtype=arr.dtype.name,
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
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        return digest
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Delete leftover temporary files of an interrupted run below ``folder``; return the count."""
    n = 0
    for p in Path(folder).rglob(f"*{TMP_MARK}*"):
        p.unlink(missing_ok=True)
        n += 1
    return n
