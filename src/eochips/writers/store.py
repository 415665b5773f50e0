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
import re
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


OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
"""fsspec protocols an output may use besides local paths and ``file://`` (object storage that
every worker can reach; ``memory://``, ``ftp://`` and the like are refused by
:func:`check_location`)."""


def check_location(location: str | os.PathLike) -> str:
    """The output location given by the user, checked before anything is written.

    Raises
    ------
    OutputError
        Empty; a URL whose protocol is not a local path, ``file://`` or one of
        :data:`OBJECT_STORES`; a symbolic link whose target does not exist.
    """
    loc = str(location)
    if not loc.strip():
        raise OutputError("output location is empty; give a folder (-o my-dataset) or a URL (-o s3://bucket/prefix)")
    if "://" in loc and not loc.startswith("file://"):
        proto = loc.split("://", 1)[0].lower()
        if proto not in OBJECT_STORES:
            raise OutputError(f"output {loc!r}: protocol {proto + '://'!r} is not supported; use a local folder, file://, "
                              "s3://, gs:// or az://")
        return loc
    path = Path(loc[len("file://"):] if loc.startswith("file://") else loc).expanduser()
    if path.is_symlink() and not path.exists():
        raise OutputError(f"output {loc!r} is a symbolic link to {os.readlink(path)!r}, which does not exist; "
                          "create the target folder or give another --output")
    return loc


class OutputStore:
    """A dataset's output location: a local folder or an fsspec URL (``s3://bucket/prefix``).

    Paths given to the methods are relative, ``/``-separated (``chips/chip_000_001_merged.tif``).
    Object-store credentials and endpoints come from the environment as fsspec / botocore read
    them (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...); they are never stored.
    """

    def __init__(self, location: str | os.PathLike):
        loc = str(location)
        if not loc.strip():  # Path("") is the working directory: never write a dataset there by accident
            raise OutputError("output location is empty; give a folder (-o my-dataset) or a URL (-o s3://bucket/prefix)")
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
            ``rel`` would leave the output folder (``..``, an absolute path, a symbolic link in
            the folder pointing elsewhere; :func:`check_inside`).
        """
        return check_inside(self.root, rel)

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

    def check_links(self) -> None:
        """Refuse a dataset folder holding a symbolic link that resolves outside it (a write
        through it would land elsewhere); remote stores have no links.

        Raises
        ------
        OutputError
            Naming the link and where it points.
        """
        if not self.is_local or not self.root.is_dir():
            return
        real_root = self.root.resolve()
        for folder, dirs, files in os.walk(self.root):
            for name in dirs + files:
                p = Path(folder) / name
                if p.is_symlink():
                    real = p.resolve()
                    if real != real_root and real_root not in real.parents:
                        rel = p.relative_to(self.root).as_posix()
                        raise OutputError(f"output folder {str(self.root)!r} holds {rel!r}, a symbolic link to {str(real)!r} "
                                          f"outside it; remove the link or choose another --output")

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

    @contextmanager
    def open_write(self, rel: str) -> Iterator:
        """A binary file object that becomes ``rel`` atomically: written to a staging file,
        fsynced and published when the block ends; removed if the block raises.

        Raises
        ------
        OutputError
            The file cannot be written (the disk is full: the message says so and names ``rel``).
        """
        staged = self.staging_file(rel)
        try:
            with open(staged, "wb") as f:
                failpoints.hit("writer:write", exc=OSError(errno.ENOSPC, "No space left on device"))
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise _disk_full_hint(exc, rel) from None
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        self.publish(staged, rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` as ``rel``, atomically (see :meth:`open_write`)."""
        with self.open_write(rel) as f:
            f.write(data)

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


_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def check_relative(rel: str, where: str = "output path") -> str:
    """``rel`` if it is a relative ``/``-separated path that stays inside the output folder.

    Refused: an empty path or part, an absolute path (``/x``, ``\\x``), a drive (``C:``) or URL
    scheme (``a:``), a ``..`` or ``.`` part, a backslash, a NUL or other control character.
    ``where`` names the recipe field the path came from, for the message.

    Raises
    ------
    OutputError
        Naming ``where`` and the path.
    """
    problem = None
    if not isinstance(rel, str) or not rel:
        problem = "is empty"
    elif any(ord(c) < 32 for c in rel):
        problem = "holds a control character (NUL, newline)"
    elif "\\" in rel:
        problem = "holds a backslash"
    elif rel.startswith("/"):
        problem = "is absolute"
    elif _DRIVE.match(rel) or ":" in rel.split("/")[0]:
        problem = "starts with a drive or URL scheme"
    elif any(p in ("", ".", "..") for p in rel.split("/")):
        problem = "has an empty, '.' or '..' part"
    if problem:
        raise OutputError(f"{where} {rel!r} would leave the dataset folder: it {problem}; "
                          "names must be relative, '/'-separated, without '..'")
    return rel


def check_inside(root: Path, rel: str, where: str = "output path") -> Path:
    """``root / rel`` after :func:`check_relative`, checked to resolve (symlinks followed) inside
    ``root``: a symlink in the dataset folder that points elsewhere is refused.

    Raises
    ------
    OutputError
        ``rel`` is not a safe relative path, or resolves outside ``root``.
    """
    path = root / check_relative(rel, where)
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise OutputError(f"{where} {rel!r} resolves outside the dataset folder {str(root)!r} (through a symbolic link to "
                          f"{str(real)!r}); remove the link or choose another --output")
    return path


def safe_name(text: str) -> str:
    """A file-name part from data (a scene id, a tile id): every character but ``A-Z a-z 0-9 . _ -``
    becomes ``_``, and leading dots become ``_``, so the result has no separator, cannot be
    ``.``/``..`` or hidden, and is unchanged for ordinary ids (``HLS.S30.T30UVB.2021159T112121.v2.0``)."""
    s = _UNSAFE.sub("_", str(text))
    stripped = s.lstrip(".")
    return "_" * (len(s) - len(stripped)) + stripped


def check_path_template(template: str, fields: set[str], where: str) -> str:
    """Check that a recipe's file-name template (``str.format`` fields) gives a safe relative
    path whatever the (sanitised) field values: formatted with sample values, it must pass
    :func:`check_relative`.

    Raises
    ------
    ValueError
        The template would leave the dataset folder (a pydantic validator turns it into a
        RecipeError naming the field).
    """
    sample = {f: "x" for f in fields}
    try:
        rel = template.format(**sample).strip("/") if where.endswith("path") else template.format(**sample)
    except (KeyError, IndexError, ValueError, AttributeError):
        return template  # the field check of the template reports it
    try:
        check_relative(rel, "path")
    except OutputError as exc:
        raise ValueError(str(exc).replace(f"path {rel!r}", f"template {template!r}", 1)) from None
    return template


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
