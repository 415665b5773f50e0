"""Writing outputs: valid Cloud-Optimized GeoTIFFs and other files, atomically, to a local
folder or to object storage.

:class:`OutputStore` is the one place that touches the output location. A file appears under
its final name only when complete:

- local folder: written under a unique temporary sibling name, then :func:`os.replace`;
- object storage (``s3://``, ``gs://``, ``az://``, any fsspec URL): written to a local
  staging file, then uploaded with a single put (an object becomes visible only when its
  upload completes).

Output is deterministic: the same arrays give byte-identical files (GDAL's COG driver writes
no timestamps).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine

from . import failpoints
from .errors import OutputError

TMP_MARK = ".eochips-tmp-"


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    """Hex sha256 of a local file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def tmp_name(path: Path) -> Path:
    """A unique temporary sibling of ``path`` (same folder, so the rename is atomic)."""
    return path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _disk_full_hint(exc: OSError, what: str) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"no space left on device while writing {what}; free space or choose another --output")
    return OutputError(f"cannot write {what}: {exc.strerror or exc}")


class OutputStore:
    """A dataset's output location: a local folder or an fsspec URL (``s3://bucket/prefix``).

    Paths given to the methods are relative, ``/``-separated (``chips/chip_000_001_merged.tif``).
    Object-store credentials and endpoints come from the environment as fsspec / botocore read
    them (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...); they are never stored.
    """

    def __init__(self, location: str | os.PathLike):
        loc = str(location)
        if loc.startswith("file://"):
            loc = loc[len("file://"):]
        self.location = loc.rstrip("/") if _is_url(loc) else loc
        self.is_local = not _is_url(loc)
        if self.is_local:
            self.root = Path(loc)
            self.fs = None
        else:
            import fsspec

            try:
                self.fs, path = fsspec.core.url_to_fs(self.location)
            except (ImportError, ValueError) as exc:
                raise OutputError(f"output {self.location!r}: {exc}") from None
            self.root_path = path.rstrip("/")

    def __repr__(self) -> str:
        return f"OutputStore({self.location!r})"

    def __reduce__(self):
        return (OutputStore, (self.location,))

    # -- helpers ---------------------------------------------------------------------
    def _remote(self, rel: str) -> str:
        return f"{self.root_path}/{rel}"

    def local_path(self, rel: str) -> Path:
        """Final local path of ``rel`` (local stores only)."""
        return self.root / rel

    def ensure(self) -> None:
        """Create the location if needed and check it can be written.

        Raises
        ------
        OutputError
            It is a file, or cannot be created / written.
        """
        if self.is_local:
            if self.root.exists() and not self.root.is_dir():
                raise OutputError(f"output {str(self.root)!r} exists and is not a folder")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".eochips-write-probe{TMP_MARK}{uuid.uuid4().hex[:8]}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise OutputError(f"output folder {str(self.root)!r} is not writable: {exc.strerror or exc}") from None
        else:
            try:
                if self.fs.isfile(self.root_path):
                    raise OutputError(f"output {self.location!r} is an object, not a prefix")
                bucket = self.root_path.split("/")[0]
                if not self.fs.exists(bucket):
                    raise OutputError(f"output bucket {bucket!r} of {self.location!r} does not exist or is not reachable")
            except OutputError:
                raise
            except Exception as exc:
                raise OutputError(f"output {self.location!r} is not reachable: {type(exc).__name__}: {exc}") from None

    @property
    def staging(self) -> Path:
        """A local folder for files on their way to the store."""
        if self.is_local:
            return self.root
        d = Path(tempfile.gettempdir()) / "eochips-staging"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def staging_file(self, rel: str) -> Path:
        """A unique local temporary path from which ``rel`` will be published."""
        if self.is_local:
            final = self.local_path(rel)
            final.parent.mkdir(parents=True, exist_ok=True)
            return tmp_name(final)
        return self.staging / f"{uuid.uuid4().hex}{TMP_MARK}{Path(rel).name}"

    # -- writing ---------------------------------------------------------------------
    def publish(self, staged: Path, rel: str) -> None:
        """Make the complete local file ``staged`` appear as ``rel`` (atomic); ``staged`` is consumed."""
        try:
            failpoints.hit("writer:before-publish")
            if self.is_local:
                os.replace(staged, self.local_path(rel))
            else:
                self.fs.put_file(str(staged), self._remote(rel))
        except OSError as exc:
            raise _disk_full_hint(exc, rel) from None
        finally:
            if staged.exists():
                staged.unlink()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` as ``rel``, atomically."""
        staged = self.staging_file(rel)
        try:
            with open(staged, "wb") as f:
                failpoints.hit("writer:write", exc=OSError(errno.ENOSPC, "No space left on device"))
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise _disk_full_hint(exc, rel) from None
        self.publish(staged, rel)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    # -- reading ---------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.local_path(rel).is_file() if self.is_local else self.fs.isfile(self._remote(rel))

    def read_bytes(self, rel: str) -> bytes:
        if self.is_local:
            return self.local_path(rel).read_bytes()
        return self.fs.cat_file(self._remote(rel))

    def sha256(self, rel: str) -> str | None:
        """sha256 of ``rel``, or None when it does not exist."""
        if self.is_local:
            p = self.local_path(rel)
            return sha256_file(p) if p.is_file() else None
        try:
            return hashlib.sha256(self.fs.cat_file(self._remote(rel))).hexdigest()
        except FileNotFoundError:
            return None

    def list_files(self) -> list[str]:
        """Every file below the location, relative and sorted (temporaries excluded)."""
        if self.is_local:
            if not self.root.is_dir():
                return []
            out = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]
        else:
            try:
                found = self.fs.find(self.root_path)
            except FileNotFoundError:
                found = []
            out = [f[len(self.root_path) + 1:] for f in found]
        return sorted(r for r in out if TMP_MARK not in r)

    def remove(self, rel: str) -> None:
        if self.is_local:
            self.local_path(rel).unlink(missing_ok=True)
        elif self.fs.isfile(self._remote(rel)):
            self.fs.rm_file(self._remote(rel))

    def remove_temporaries(self) -> int:
        """Delete leftover temporaries of an interrupted run; return the count."""
        if not self.is_local:
            n = 0
            for p in self.staging.glob(f"*{TMP_MARK}*"):
                p.unlink(missing_ok=True)
                n += 1
            return n
        n = 0
        if self.root.is_dir():
            for p in self.root.rglob(f"*{TMP_MARK}*"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                n += 1
        return n



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
    except rasterio.errors.RasterioIOError as exc:
        staged.unlink(missing_ok=True)
        raise OutputError(f"cannot write {rel}: {exc}") from None
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise _disk_full_hint(exc, rel) from None
    store.publish(staged, rel)
    return digest
