"""Reproducible archives of a dataset: one ``tar`` + zstandard file whose bytes depend only on
the dataset's files (issue 13, item 5; BigEarthNet v2 ships ``.tar.zst`` at level 6).

What is packed: every file the manifest ``checksums.sha256`` lists, plus the manifest itself,
and nothing else; so the state (``state.sqlite``, ``state/``), the locks, ``plan/run.json``
(the run's engine settings), temporaries and the ``archive/`` folder (this file and its
checksums) are out, because the manifest leaves them out (:func:`eochips.dataset.write_manifest`).
Every member's bytes are checked against the manifest while they are streamed in: an archive
never holds a file the manifest does not bless (a file edited since ``eochips finalize`` stops
the archive, :class:`ArchiveError`).

The tar stream (the same bytes GNU tar or :mod:`tarfile` write for these headers):

- members under one top folder, the archive's name without its suffix (``demo.tar.zst`` ->
  ``demo/chips/...``), in bytewise (UTF-8) order of their names; regular files only, no
  directory entries (extractors create the folders; no directory attributes to fix);
- GNU format (``tarfile.GNU_FORMAT``): a name longer than 100 bytes takes a ``././@LongLink``
  record, files over 8 GiB a base-256 size; never a pax header, so no atime / ctime;
- mode 0644, uid / gid 0, empty user / group names, one fixed mtime (``dataset.archive.mtime``,
  default 0, like ``SOURCE_DATE_EPOCH``), device numbers 0;
- two zero blocks at the end, padded to a 10240-byte record (tarfile's ``RECORDSIZE``).

zstandard: one frame, single-threaded (``threads=0``: multi-threaded zstd output depends on the
job split), with the content size pledged (the tar's size is known from the file sizes before
the first byte is written, so the frame header records it and zstd checks it) and a content
checksum. Memory stays bounded: files are streamed in :data:`CHUNK` pieces.

The manifest hash is the sha256 of ``checksums.sha256`` itself: two runs whose manifest hashes
agree hold the same files, byte for byte, and (this module being deterministic) give the same
archive bytes.

What "two runs" must share for identical bytes (measured on the demo, crop and mosaic recipes:
every manifest file identical between two runs into two folders, issue 13's note):

- the inputs at the same places: ``plan/plan.json`` holds the recipe with its input paths made
  absolute (a label raster, a vector file, a local catalog) and ``plan/scenes.parquet`` the assets'
  hrefs, so the same data under another path gives another plan file (and manifest hash);
- the same library versions: the zstandard frame bytes depend on libzstd's version (the
  decompressed tar does not; the ``zstd`` 1.5.4 command line at level 6 gives other bytes than
  python-zstandard 0.25's libzstd 1.5.7), GeoTIFF bytes on GDAL's, Parquet files name their
  writer (``parquet-cpp-arrow version ...``).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Iterator

from ..errors import OutputError
from .store import OutputStore, check_relative, tmp_name

MANIFEST = "checksums.sha256"
ARCHIVE_DIR = "archive"
"""The dataset's folder of archives: out of the manifest, so out of every archive."""
MANIFEST_HASH = "manifest.sha256"
"""``archive/manifest.sha256``: the manifest's sha256 in sha256sum format (check it from the dataset root)."""
SUFFIXES = (".tar.zst", ".tar.zstd", ".tzst")
CHUNK = 1 << 20
"""Bytes read and written at a time (memory stays a few MB whatever the dataset's size)."""
FILE_MODE = 0o644
DEFAULT_LEVEL = 6


_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
"""tarfile's "data" extraction filter (Python 3.10.12+ / 3.11.4+; older ones rely on the checks here)."""


class ArchiveError(OutputError):
    """An archive cannot be written (the dataset is not finalised, its files differ from the
    manifest), or one read back is not a valid, safe eochips archive."""


@dataclass(frozen=True)
class ArchiveInfo:
    """What an archive holds: ``path`` (as written or read), its ``sha256`` and ``size`` (bytes
    of the ``.tar.zst``), ``manifest_sha256`` (sha256 of ``checksums.sha256``), ``members``
    (files packed, the manifest included), ``root`` (the top folder of the members), ``level``
    (zstandard level; None when read back: a frame does not record it)."""

    path: str
    sha256: str
    size: int
    manifest_sha256: str
    members: int
    root: str
    level: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# -- the manifest -------------------------------------------------------------------------

def parse_manifest(text: str, where: str = MANIFEST) -> dict[str, str]:
    """``{path: sha256}`` of a sha256sum-format manifest (``<64 hex>  <relative path>`` per line).

    Raises
    ------
    ArchiveError
        A line is not in that format, a path is not a safe relative path
        (:func:`eochips.writers.store.check_relative`) or is listed twice.
    """
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ArchiveError(f"{where} line {n} is not '<sha256>  <path>': {line[:120]!r}")
        try:
            check_relative(rel, f"{where} line {n}: path")
        except OutputError as exc:
            raise ArchiveError(str(exc)) from None
        if rel in out:
            raise ArchiveError(f"{where} lists {rel!r} twice (line {n})")
        out[rel] = digest
    return out


def archive_root(name: str) -> str:
    """The members' top folder for an archive file name: the name without its suffix.

    Raises
    ------
    ArchiveError
        ``name`` does not end in one of :data:`SUFFIXES` after a non-empty stem, or the stem is
        not a plain file name.
    """
    base = name.rsplit("/", 1)[-1]
    for suffix in SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            root = base[:-len(suffix)]
            try:
                check_relative(root, "archive name")
            except OutputError as exc:
                raise ArchiveError(str(exc)) from None
            return root
    raise ArchiveError(f"archive name {name!r} must end in {', '.join(SUFFIXES)} after a stem, e.g. 'demo.tar.zst'")


def manifest_sha256(store: OutputStore) -> str:
    """sha256 of the dataset's ``checksums.sha256``.

    Raises
    ------
    ArchiveError
        The dataset has no manifest (not finalised).
    """
    digest = store.sha256(MANIFEST)
    if digest is None:
        raise ArchiveError(f"{store.location!r} has no {MANIFEST}: it is not a finalised dataset; "
                           f"run 'eochips finalize {store.location}' first")
    return digest


# -- writing ------------------------------------------------------------------------------

def _header(name: str, size: int, mtime: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, mtime, FILE_MODE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def _tar_size(entries: list[tuple[bytes, int]]) -> int:
    body = sum(len(h) + size + _padding(size) for h, size in entries) + 2 * tarfile.BLOCKSIZE
    return body + (-body % tarfile.RECORDSIZE)


def _size(store: OutputStore, rel: str) -> int:
    if store.is_local:
        return store.local_path(rel).stat().st_size
    with store._remote_errors("reading", rel):
        return int(store.fs.size(store._remote(rel)))


def _open_read(store: OutputStore, rel: str) -> IO[bytes]:
    if store.is_local:
        return open(store.local_path(rel), "rb")
    with store._remote_errors("reading", rel):
        return store.fs.open(store._remote(rel), "rb")


class _Counting:
    """A write-only binary file wrapper that hashes and counts what passes through."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def write_tar_zst(store: OutputStore, f: IO[bytes], root: str, level: int = DEFAULT_LEVEL, mtime: int = 0) -> tuple[str, int]:
    """Stream the archive of ``store``'s dataset into the open binary file ``f`` (module
    docstring); return ``(manifest sha256, members)``.

    ``root`` is the members' top folder, ``level`` the zstandard level (1..22), ``mtime`` the
    members' modification time (seconds since 1970, >= 0).

    Raises
    ------
    ArchiveError
        No manifest; a listed file is missing, or its bytes differ from the manifest (edited
        since ``eochips finalize``: rerun it).
    """
    import zstandard

    manifest_bytes = _read_manifest(store)
    listed = parse_manifest(manifest_bytes.decode("utf-8"))
    want = {**listed, MANIFEST: hashlib.sha256(manifest_bytes).hexdigest()}
    names = sorted(want, key=lambda r: r.encode("utf-8"))
    entries = []
    for rel in names:
        try:
            size = len(manifest_bytes) if rel == MANIFEST else _size(store, rel)
        except FileNotFoundError:
            raise ArchiveError(f"{rel!r} is listed in {MANIFEST} of {store.location!r} but missing; rerun "
                               f"'eochips finalize {store.location}'") from None
        entries.append((rel, _header(f"{root}/{rel}", size, mtime), size))
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True, threads=0)
    # not a ``with`` block: closing a frame short of its pledged size raises and would hide the cause
    z = cctx.stream_writer(f, size=_tar_size([(h, s) for _, h, s in entries]), closefd=False)
    for rel, header, size in entries:
        z.write(header)
        got = hashlib.sha256()
        n = 0
        for chunk in ([manifest_bytes] if rel == MANIFEST else _chunks(store, rel)):
            n += len(chunk)
            if n > size:
                break
            got.update(chunk)
            z.write(chunk)
        if n != size or got.hexdigest() != want[rel]:
            raise ArchiveError(f"{rel!r} of {store.location!r} differs from {MANIFEST} (changed since the dataset "
                               f"was finalised); rerun 'eochips finalize {store.location}', then archive again")
        z.write(b"\0" * _padding(size))
    end = 2 * tarfile.BLOCKSIZE + sum(len(h) + s + _padding(s) for _, h, s in entries)
    z.write(b"\0" * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
    z.close()
    return want[MANIFEST], len(entries)


def _read_manifest(store: OutputStore) -> bytes:
    try:
        return store.read_bytes(MANIFEST)
    except FileNotFoundError:
        raise ArchiveError(f"{store.location!r} has no {MANIFEST}: it is not a finalised dataset; "
                           f"run 'eochips finalize {store.location}' first") from None


def _chunks(store: OutputStore, rel: str) -> Iterator[bytes]:
    with _open_read(store, rel) as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def write_archive(store: OutputStore, name: str, level: int = DEFAULT_LEVEL, mtime: int = 0,
                  output: str | os.PathLike | None = None) -> ArchiveInfo:
    """Write the archive of ``store``'s finalised dataset (module docstring) atomically.

    Without ``output``: into the dataset as ``archive/{name}`` (through the store: a temporary
    name then a rename locally, a staging file then one upload for object storage), with
    ``archive/{name}.sha256`` (its sha256, sha256sum format, checkable from ``archive/``) and
    ``archive/manifest.sha256`` (the manifest's sha256, checkable from the dataset root). A
    rerun rewrites the same bytes. With ``output`` (a local file path): there, plus
    ``{output}.sha256`` beside it.

    Raises
    ------
    ArchiveError
        ``name`` lacks a ``.tar.zst`` / ``.tar.zstd`` / ``.tzst`` suffix; the dataset is not
        finalised or its files differ from its manifest (see :func:`write_tar_zst`).
    OutputError
        The archive cannot be written (disk full: named).
    """
    root = archive_root(str(output) if output is not None else name)
    if not 1 <= int(level) <= 22:
        raise ArchiveError(f"archive level {level}: zstandard levels are 1..22 (BigEarthNet v2 uses 6)")
    if output is None:
        rel = f"{ARCHIVE_DIR}/{check_relative(name, 'archive name')}"
        with store.open_write(rel) as raw:
            f = _Counting(raw)
            mhash, members = write_tar_zst(store, f, root, level, mtime)
        store.write_text(f"{rel}.sha256", f"{f.h.hexdigest()}  {name}\n")
        store.write_text(f"{ARCHIVE_DIR}/{MANIFEST_HASH}", f"{mhash}  {MANIFEST}\n")
        where = rel if not store.is_local else str(store.local_path(rel))
    else:
        path = Path(output).expanduser().absolute()
        if path.is_dir():
            raise ArchiveError(f"--output {str(output)!r} is a folder; give the archive's file path, "
                               f"e.g. {str(path / (root + '.tar.zst'))!r}")
        if store.is_local and _inside(path, store.root) and not _inside(path, store.root / ARCHIVE_DIR):
            raise ArchiveError(f"--output {str(output)!r} is inside the dataset {store.location!r}: the next manifest "
                               f"would list it; write it outside the dataset or into its {ARCHIVE_DIR}/ folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = tmp_name(path)
        try:
            with open(staged, "wb") as raw:
                f = _Counting(raw)
                mhash, members = write_tar_zst(store, f, root, level, mtime)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(staged, path)
            side = path.with_name(path.name + ".sha256")
            side_tmp = tmp_name(side)
            side_tmp.write_text(f"{f.h.hexdigest()}  {path.name}\n")
            os.replace(side_tmp, side)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"cannot write the archive {str(path)!r}: {exc.strerror or exc}") from None
        finally:
            staged.unlink(missing_ok=True)
        where = str(path)
    return ArchiveInfo(where, f.h.hexdigest(), f.n, mhash, members, root, int(level))


def _inside(path: Path, folder: Path) -> bool:
    real, top = path.resolve(), folder.resolve()
    return top in real.parents


# -- reading back -------------------------------------------------------------------------

class _Hashing:
    """A read-only binary file wrapper that hashes and counts what is read."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        b = self.f.read(size)
        self.h.update(b)
        self.n += len(b)
        return b


def _member_problem(m: tarfile.TarInfo) -> str | None:
    if m.pax_headers:
        return "carries pax headers (eochips archives have none)"
    if m.issym() or m.islnk():
        return f"is a {'symbolic' if m.issym() else 'hard'} link to {m.linkname!r}"
    if m.ischr() or m.isblk() or m.isfifo():
        return "is a device or FIFO"
    if not m.isreg():
        return "is not a regular file"
    return None


def _check_name(name: str, where: str) -> None:
    try:
        check_relative(name, f"{where}: member")
    except OutputError as exc:
        raise ArchiveError(f"{exc}; refused (an archive must not write outside its folder)") from None


def _members(path: Path, outer: list | None = None) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, str]]:
    """Stream ``(tar, member, name below the root)`` of an archive after the safety checks; the
    root is the first member's top folder. At the end the zstandard stream is read to its end
    (its frame checksum is checked; trailing bytes that are not a frame are refused) and, when
    ``outer`` is a list, the archive file's :class:`_Hashing` reader is appended to it."""
    import zstandard

    where = str(path)
    with _read_errors(where), open(path, "rb") as fh:
        raw = _Hashing(fh)
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False) as z:
            with tarfile.open(fileobj=z, mode="r|") as tf:
                yield from _checked(tf, where)
            while z.read(CHUNK):  # past the tar's end: the frame's checksum, no trailing junk
                pass
        while raw.read(CHUNK):
            pass
        if outer is not None:
            outer.append(raw)


@contextmanager
def _read_errors(where: str) -> Iterator[None]:
    """zstandard and tarfile failures (also raised while a member's bytes are read) as one
    :class:`ArchiveError` line."""
    import zstandard

    try:
        yield
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"{where} is not a valid zstandard stream: {exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{where} is not a valid tar archive: {exc}") from None


def _checked(tf: tarfile.TarFile, where: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, str]]:
    root = None
    for m in tf:
        _check_name(m.name, where)
        problem = _member_problem(m)
        if problem:
            raise ArchiveError(f"{where}: member {m.name!r} {problem}; refused")
        top, _, rest = m.name.partition("/")
        root = top if root is None else root
        if top != root or not rest:
            raise ArchiveError(f"{where}: member {m.name!r} is not below the archive's top folder {root!r}; refused")
        yield tf, m, rest


def verify_archive(path: str | os.PathLike) -> ArchiveInfo:
    """Read an archive back and check it: every member safe (a regular file, a relative name
    without ``..``, below one top folder, no pax header), the manifest present, every file it
    lists present with its sha256, nothing else. Returns its :class:`ArchiveInfo` (``level``
    None).

    Raises
    ------
    ArchiveError
        The file is missing or not ``tar`` + zstandard; a member is unsafe (named) or its bytes
        differ from the manifest; a listed file is missing or an unlisted one present.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ArchiveError(f"archive {str(path)!r} does not exist or is not a file")
    got: dict[str, str] = {}
    manifest_bytes = None
    root = ""
    outers: list = []
    with _read_errors(str(path)):
        for tf, m, rel in _members(path, outers):
            root = m.name.split("/", 1)[0]
            f = tf.extractfile(m)
            h = hashlib.sha256()
            buf = bytearray() if rel == MANIFEST else None
            while chunk := f.read(CHUNK):
                h.update(chunk)
                if buf is not None:
                    buf += chunk
            if rel in got:
                raise ArchiveError(f"{path}: member {m.name!r} appears twice")
            got[rel] = h.hexdigest()
            if buf is not None:
                manifest_bytes = bytes(buf)
    if manifest_bytes is None:
        raise ArchiveError(f"{path} holds no {MANIFEST}: not an eochips dataset archive")
    listed = parse_manifest(manifest_bytes.decode("utf-8"), f"{path}: {MANIFEST}")
    extra = sorted(set(got) - set(listed) - {MANIFEST})
    missing = sorted(set(listed) - set(got))
    differ = sorted(r for r in listed if r in got and got[r] != listed[r])
    for what, rels in (("files the manifest does not list", extra), ("files of the manifest missing", missing),
                       ("files whose sha256 differs from the manifest", differ)):
        if rels:
            raise ArchiveError(f"{path}: {len(rels)} {what}: {', '.join(rels[:5])}{' ...' if len(rels) > 5 else ''}")
    outer = outers[0]
    return ArchiveInfo(str(path), outer.h.hexdigest(), outer.n, got[MANIFEST], len(got), root)


def extract_archive(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a verified archive (:func:`verify_archive` first: nothing is written from an
    unsafe or inconsistent one) into ``dest``; return the extracted dataset folder
    ``dest/{root}``. Extraction goes to a temporary sibling first, with tarfile's ``"data"``
    filter (no absolute names, ``..``, links or devices; modes sanitised), then is renamed.

    Raises
    ------
    ArchiveError
        See :func:`verify_archive`; ``dest/{root}`` exists already.
    """
    info = verify_archive(path)
    dest = Path(dest).expanduser().absolute()
    final = dest / info.root
    if final.exists():
        raise ArchiveError(f"{str(final)!r} exists already; extract into another folder or remove it")
    dest.mkdir(parents=True, exist_ok=True)
    staged = tmp_name(final)
    staged.mkdir()
    try:
        with _read_errors(str(path)):
            for tf, m, _ in _members(Path(path).expanduser()):
                tf.extract(m, staged, **_DATA_FILTER)
        os.replace(staged / info.root, final)
    finally:
        if staged.exists():
            import shutil

            shutil.rmtree(staged, ignore_errors=True)
    return final
