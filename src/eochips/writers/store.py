"""The output location: files written atomically to a local folder or to object storage.

:class:`OutputStore` is the one place that touches the output location. A file appears under
its final name only when complete:

- local folder: written under a unique temporary sibling name, then :func:`os.replace`;
- object storage (``s3://``, ``gs://``, ``az://``, any fsspec URL): written to a local
  staging file, then uploaded with a single put (an object becomes visible only when its
  upload completes), from a staging folder of this store and this process.

Every relative path is checked to stay inside the location (:func:`check_relative`): a
recipe template or an item id cannot write elsewhere.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import failpoints
from ..errors import OutputError

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
            self.root = Path(loc).expanduser().absolute()  # absolute: workers may run in another folder
            self.location = str(self.root)
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
        return f"{self.root_path}/{check_relative(rel)}"

    def local_path(self, rel: str) -> Path:
        """Final local path of ``rel`` (local stores only).

        Raises
        ------
        OutputError
            ``rel`` would leave the output folder (``..``, an absolute path).
        """
        return self.root / check_relative(rel)

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
    def staging_root(self) -> Path:
        """The local folder of this store's staging folders, one per process (remote stores)."""
        return Path(tempfile.gettempdir()) / "eochips-staging" / hashlib.sha1(self.location.encode()).hexdigest()[:16]

    @property
    def staging(self) -> Path:
        """A local folder for files on their way to the store: the output folder itself for a
        local store; for a remote one, a folder of this store and this process (so two jobs on
        one host, or two runs into different prefixes, never touch each other's files)."""
        if self.is_local:
            return self.root
        d = self.staging_root / str(os.getpid())
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
                with self._remote_errors("writing", rel):
                    self.fs.put_file(str(staged), self._remote(rel))
        except OutputError:
            raise
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
    @contextmanager
    def _remote_errors(self, what: str, rel: str = "") -> Iterator[None]:
        """Object-store failures left after the client's own retries (botocore retries 5xx,
        throttling and dropped connections with backoff; s3fs retries timeouts and truncated
        reads) as one line; a missing object stays :class:`FileNotFoundError`."""
        try:
            yield
        except (FileNotFoundError, OutputError):
            raise
        except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, s3fs: one line, no traceback
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise OutputError(f"object storage {self.location!r} kept failing while {what} {rel or 'the prefix'}: "
                              f"{type(exc).__name__}: {msg}; rerun the same command to resume") from None

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return self.local_path(rel).is_file()
        with self._remote_errors("checking", rel):
            return self.fs.isfile(self._remote(rel))

    def read_bytes(self, rel: str) -> bytes:
        if self.is_local:
            return self.local_path(rel).read_bytes()
        with self._remote_errors("reading", rel):
            return self.fs.cat_file(self._remote(rel))

    def sha256(self, rel: str) -> str | None:
        """sha256 of ``rel``, or None when it does not exist."""
        if self.is_local:
            p = self.local_path(rel)
            return sha256_file(p) if p.is_file() else None
        try:
            with self._remote_errors("reading", rel):
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
                with self._remote_errors("listing"):
                    found = self.fs.find(self.root_path)
            except FileNotFoundError:
                found = []
            out = [f[len(self.root_path) + 1:] for f in found]
        return sorted(r for r in out if TMP_MARK not in r)

    def remove(self, rel: str) -> None:
        if self.is_local:
            self.local_path(rel).unlink(missing_ok=True)
        else:
            with self._remote_errors("removing", rel):
                if self.fs.isfile(self._remote(rel)):
                    self.fs.rm_file(self._remote(rel))

    def remove_temporaries(self) -> int:
        """Delete leftover temporaries of interrupted runs; return the count.

        Local store: every temporary below the folder (a run holds its folder, see
        :mod:`eochips.engine`). Remote store: the staging folders of *this store* on this host
        whose process is gone; a live process's files (another job writing to the same
        prefix) are left alone.
        """
        if not self.is_local:
            n = 0
            root = self.staging_root
            for d in (root.iterdir() if root.is_dir() else []):
                if d.name.isdigit() and int(d.name) != os.getpid() and not _alive(int(d.name)):
                    n += sum(1 for _ in d.iterdir())
                    shutil.rmtree(d, ignore_errors=True)
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


def check_relative(rel: str) -> str:
    """``rel`` if it is a relative path that stays inside the output folder.

    Raises
    ------
    OutputError
        An absolute path, a ``..`` part or an empty name (from a recipe template or an item id).
    """
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or any(p in ("", "..") for p in parts) or ":" in parts[0]:
        raise OutputError(f"output path {rel!r} would leave the dataset folder; names must be relative, without '..'")
    return rel


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
