"""Reproducible dataset archives (issue 13, item 5): eochips.writers.archive, the ``archive``
finalizer and ``eochips archive`` / ``eochips verify-archive``.

Two real runs of the crop recipe (real HLS pixels over Exeter, static local catalog) into two
folders, with ``dataset.finalizers: [..., manifest, archive]``. The references are independent of
the code under test: hashlib over the files, the stdlib tarfile reading the tar back and writing
the same members itself, GNU tar listing it, the zstandard decompressor.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from conftest import crop_recipe, needs_shared, run_cli, write_recipe

FINALIZERS = ["index", "split", "stats", "plots", "tables", "mosaic", "summary", "manifest", "archive"]
NAME = "hls-crop-classification"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_lines(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / "checksums.sha256").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        out[rel] = digest
    return out


def untar(archive: Path) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(archive.read_bytes()).read()


@pytest.fixture(scope="module")
def two_runs(local_catalog, cdl_raster, tmp_path_factory):
    """Two runs of the same recipe into two folders: ``(recipe, a, b, stdout of a)``."""
    tmp = tmp_path_factory.mktemp("archive")
    recipe = write_recipe(tmp / "crop.yaml", crop_recipe(str(local_catalog), cdl_raster, **{"dataset.finalizers": FINALIZERS}))
    outs = []
    for name in ("a", "b"):
        proc = run_cli("run", str(recipe), "-o", str(tmp / name), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    return recipe, tmp / "a", tmp / "b", outs[0]


@needs_shared
def test_two_runs_give_identical_archives_and_manifest_hash(two_runs):
    _, a, b, stdout = two_runs
    arc_a, arc_b = a / "archive" / f"{NAME}.tar.zst", b / "archive" / f"{NAME}.tar.zst"
    assert arc_a.read_bytes() == arc_b.read_bytes()
    assert (a / "checksums.sha256").read_bytes() == (b / "checksums.sha256").read_bytes()
    m = sha((a / "checksums.sha256").read_bytes())
    assert (a / "archive" / "manifest.sha256").read_text() == f"{m}  checksums.sha256\n"
    assert (a / "archive" / f"{NAME}.tar.zst.sha256").read_text() == f"{sha(arc_a.read_bytes())}  {NAME}.tar.zst\n"
    flat = "".join(stdout.replace("│", " ").split())  # the table folds long hashes
    assert sha(arc_a.read_bytes()) in flat and m in flat
    # the archive folder is neither in the manifest nor in the archive
    assert not any(r.startswith("archive/") for r in manifest_lines(a))
    print(f"archive sha256 {sha(arc_a.read_bytes())}, manifest sha256 {m}, {arc_a.stat().st_size} bytes")


@needs_shared
def test_members_sorted_root_owner_mode_mtime_no_pax(two_runs):
    _, a, _, _ = two_runs
    tar = untar(a / "archive" / f"{NAME}.tar.zst")
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.encode("utf-8"))
    listed = manifest_lines(a)
    assert names == sorted((f"{NAME}/{r}" for r in [*listed, "checksums.sha256"]), key=str.encode)
    for m in members:
        assert m.isreg() and (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
        assert m.mtime == 0 and m.mode == 0o644 and m.pax_headers == {}
        assert tar[m.offset + 156:m.offset + 157] not in (b"x", b"g")  # no pax header blocks
        assert tar[m.offset + 257:m.offset + 265] == b"ustar  \0"  # GNU magic
    rels = {n.split("/", 1)[1] for n in names}
    assert not rels & {"state.sqlite", "plan/run.json", ".eochips.lock"}
    assert not any(r.startswith(("state/", "archive/")) or ".eochips-tmp-" in r for r in rels)
    assert len(tar) % 10240 == 0 and tar[-1024:] == b"\0" * 1024
    params = zstandard.get_frame_parameters((a / "archive" / f"{NAME}.tar.zst").read_bytes())
    assert params.content_size == len(tar) and params.has_checksum


@needs_shared
def test_tar_bytes_equal_stdlib_tarfile_and_gnu_tar_lists_them(two_runs, tmp_path):
    """The tar inside is what the stdlib tarfile writes for the same members (sorted names,
    GNU format, 0644, uid/gid 0, mtime 0), and GNU tar reads it."""
    _, a, _, _ = two_runs
    tar = untar(a / "archive" / f"{NAME}.tar.zst")
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for rel in sorted([*manifest_lines(a), "checksums.sha256"], key=str.encode):
            data = (a / rel).read_bytes()
            ti = tarfile.TarInfo(f"{NAME}/{rel}")
            ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0o644, 0, 0, 0, "", ""
            tf.addfile(ti, io.BytesIO(data))
    assert tar == ref.getvalue()
    if shutil.which("tar"):
        (tmp_path / "x.tar").write_bytes(tar)
        listing = subprocess.run(["tar", "-tvf", str(tmp_path / "x.tar")], capture_output=True, text=True, check=True).stdout
        rows = listing.splitlines()
        assert len(rows) == len(manifest_lines(a)) + 1
        assert all(r.startswith("-rw-r--r-- 0/0 ") and " 1970-01-01 00:00 " in r for r in rows)


@needs_shared
def test_round_trip_extract_matches_manifest(two_runs, tmp_path):
    from eochips.writers.archive import extract_archive, verify_archive

    _, a, _, _ = two_runs
    arc = a / "archive" / f"{NAME}.tar.zst"
    info = verify_archive(arc)
    assert info.sha256 == sha(arc.read_bytes()) and info.manifest_sha256 == sha((a / "checksums.sha256").read_bytes())
    out = extract_archive(arc, tmp_path / "x")
    assert out == tmp_path / "x" / NAME
    listed = manifest_lines(a)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == sorted([*listed, "checksums.sha256"])
    for rel, digest in listed.items():
        assert sha((out / rel).read_bytes()) == digest == sha((a / rel).read_bytes())
    assert not list((tmp_path / "x").glob("*.eochips-tmp-*"))
    proc = run_cli("verify-archive", str(arc), "--extract", str(tmp_path / "x"))  # exists already
    assert proc.returncode == 2 and "exists already" in proc.stderr and "Traceback" not in proc.stderr


@needs_shared
def test_rerun_finalize_and_cli_archive_are_idempotent(two_runs, tmp_path):
    _, a, _, _ = two_runs
    arc = a / "archive" / f"{NAME}.tar.zst"
    before, man = arc.read_bytes(), (a / "checksums.sha256").read_bytes()
    proc = run_cli("finalize", str(a))
    assert proc.returncode == 0, proc.stderr
    assert arc.read_bytes() == before and (a / "checksums.sha256").read_bytes() == man
    proc = run_cli("archive", str(a), "--output", str(tmp_path / "copy.tar.zst"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "copy.tar.zst").read_bytes() != before  # another top folder name: "copy/"
    assert (tmp_path / "copy.tar.zst.sha256").read_text() == f"{sha((tmp_path / 'copy.tar.zst').read_bytes())}  copy.tar.zst\n"
    proc = run_cli("archive", str(a), "--output", str(tmp_path / f"{NAME}.tar.zst"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{NAME}.tar.zst").read_bytes() == before
    proc = run_cli("archive", str(a))
    assert proc.returncode == 0 and arc.read_bytes() == before


@needs_shared
def test_level_and_mtime_are_honoured(two_runs, tmp_path):
    from eochips.writers import OutputStore
    from eochips.writers.archive import write_archive

    _, a, _, _ = two_runs
    ref = untar(a / "archive" / f"{NAME}.tar.zst")
    store = OutputStore(a)
    sizes = {}
    for level in (1, 19):
        info = write_archive(store, "unused.tar.zst", level=level, output=tmp_path / f"l{level}" / f"{NAME}.tar.zst")
        data = Path(info.path).read_bytes()
        assert untar(Path(info.path)) == ref and info.size == len(data) and info.level == level
        sizes[level] = len(data)
    assert sizes[19] < (a / "archive" / f"{NAME}.tar.zst").stat().st_size < sizes[1]
    proc = run_cli("archive", str(a), "--level", "3", "--mtime", "1700000000", "-o", str(tmp_path / "m" / f"{NAME}.tar.zst"))
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(untar(tmp_path / "m" / f"{NAME}.tar.zst")), mode="r:") as tf:
        assert {m.mtime for m in tf.getmembers()} == {1700000000}
    for bad in ("0", "23"):
        proc = run_cli("archive", str(a), "--level", bad, "-o", str(tmp_path / "bad" / "x.tar.zst"))
        assert proc.returncode == 2 and "1..22" in proc.stderr
        assert not (tmp_path / "bad" / "x.tar.zst").exists()


@needs_shared
def test_cli_archive_refuses_non_datasets_and_changed_files(two_runs, tmp_path):
    _, a, _, _ = two_runs
    proc = run_cli("archive", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "not an eochips dataset" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli("archive", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "not an eochips dataset" in proc.stderr
    proc = run_cli("archive", str(a), "-o", str(a / "chips" / "x.tar.zst"))
    assert proc.returncode == 2 and "inside the dataset" in proc.stderr and not (a / "chips" / "x.tar.zst").exists()
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    shutil.rmtree(copy / "archive")
    (copy / "checksums.sha256").unlink()
    proc = run_cli("archive", str(copy))
    assert proc.returncode == 2 and "not finalised" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    shutil.copy(a / "checksums.sha256", copy / "checksums.sha256")
    (copy / "train_ids.csv").write_text("ids\nedited\n")
    proc = run_cli("archive", str(copy))
    assert proc.returncode == 2 and "'train_ids.csv'" in proc.stderr and "differs from checksums.sha256" in proc.stderr
    assert not (copy / "archive").exists() or not any((copy / "archive").iterdir())  # nothing, not even a temporary


def _crafted(tmp_path: Path, members: list[tarfile.TarInfo]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ok = tarfile.TarInfo("d/checksums.sha256")
        tf.addfile(ok, io.BytesIO(b""))
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
    path = tmp_path / "crafted.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def _reg(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 1
    return ti


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti


def _dev(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
    return ti


@pytest.mark.parametrize("member, why", [
    (_reg("d/../x"), "'..' part"),
    (_reg("../x"), "'..' part"),
    (_reg("/abs"), "absolute"),
    (_link("d/link", "/etc/passwd", tarfile.SYMTYPE), "symbolic link"),
    (_link("d/hard", "/etc/passwd", tarfile.LNKTYPE), "hard link"),
    (_dev("d/null"), "device"),
    (_reg("other/x"), "top folder"),
])
def test_extraction_refuses_unsafe_members(tmp_path, member, why):
    from eochips.writers.archive import ArchiveError, extract_archive, verify_archive

    path = _crafted(tmp_path, [member])
    with pytest.raises(ArchiveError, match=why):
        verify_archive(path)
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match=why):
        extract_archive(path, dest)
    assert not dest.exists() or not any(dest.rglob("*"))
    assert not (tmp_path / "x").exists()
    proc = run_cli("verify-archive", str(path), "--extract", str(dest))
    assert proc.returncode == 2 and why.split()[-1] in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_verify_refuses_a_member_the_manifest_does_not_bless(tmp_path):
    from eochips.writers.archive import ArchiveError, verify_archive

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        data = b"hello\n"
        man = f"{sha(b'other')}  a.txt\n".encode()
        for name, body in (("d/a.txt", data), ("d/checksums.sha256", man)):
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
    path = tmp_path / "d.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    with pytest.raises(ArchiveError, match="sha256 differs from the manifest: a.txt"):
        verify_archive(path)
    path.write_bytes(b"not zstd")
    with pytest.raises(ArchiveError, match="not a valid zstandard stream"):
        verify_archive(path)


def test_finalizer_order_and_archive_config():
    from eochips.config.models import DEFAULT_FINALIZERS, FINALIZERS as NAMES, ArchiveConfig, DatasetConfig
    from eochips.dataset import FINALIZERS as REGISTRY

    assert DatasetConfig().finalizers == list(DEFAULT_FINALIZERS) and "archive" not in DEFAULT_FINALIZERS
    assert "archive" in NAMES and "archive" in REGISTRY
    assert DatasetConfig(finalizers=["index", "manifest", "archive"]).finalizers[-1] == "archive"
    for bad, msg in ((["manifest", "summary"], "'manifest' must be the last"), (["archive", "manifest"], "must follow 'manifest'"),
                     (["index", "archive"], "must follow 'manifest'")):
        with pytest.raises(ValueError, match=msg):
            DatasetConfig(finalizers=bad)
    assert ArchiveConfig() == ArchiveConfig(level=6, name="{recipe}.tar.zst", mtime=0)
    for kw in ({"level": 0}, {"level": 23}, {"name": "{recipe}.zip"}, {"name": "a/{recipe}.tar.zst"}, {"name": "{unit}.tar.zst"},
               {"mtime": -1}):
        with pytest.raises(ValueError):
            ArchiveConfig(**kw)


@needs_shared
def test_archive_of_a_dataset_in_object_storage_equals_local(two_runs, tmp_path):
    """The same dataset uploaded to a moto S3 server: ``eochips archive s3://...`` streams its
    objects and publishes ``archive/{name}`` with one upload; the bytes equal the local archive."""
    pytest.importorskip("s3fs")
    from servers import moto_s3

    _, a, _, _ = two_runs
    local = (a / "archive" / f"{NAME}.tar.zst").read_bytes()
    with moto_s3("eochips-archive") as (env, client):
        for p in sorted(a.rglob("*")):
            rel = p.relative_to(a).as_posix()
            if p.is_file() and not rel.startswith(("state", "archive/")):
                client.put_object(Bucket="eochips-archive", Key=f"ds/{rel}", Body=p.read_bytes())
        proc = run_cli("archive", "s3://eochips-archive/ds", env=env | {"EOCHIPS_STATE_DIR": str(tmp_path / "state")})
        assert proc.returncode == 0, proc.stderr
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="eochips-archive", Prefix="ds/archive/")["Contents"])
        assert keys == [f"ds/archive/{NAME}.tar.zst", f"ds/archive/{NAME}.tar.zst.sha256", "ds/archive/manifest.sha256"]
        remote = client.get_object(Bucket="eochips-archive", Key=f"ds/archive/{NAME}.tar.zst")["Body"].read()
    assert remote == local


@needs_shared
def test_overwrite_clears_the_archive_folder(two_runs, tmp_path):
    from eochips.engine import clear_dataset
    from eochips.writers import OutputStore

    _, a, _, _ = two_runs
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    clear_dataset(OutputStore(copy))
    assert not [p for p in copy.rglob("*") if p.is_file()]


@needs_shared
def test_verify_refuses_trailing_bytes_and_a_cut_archive(two_runs, tmp_path):
    from eochips.writers.archive import ArchiveError, verify_archive

    _, a, _, _ = two_runs
    data = (a / "archive" / f"{NAME}.tar.zst").read_bytes()
    (tmp_path / "junk.tar.zst").write_bytes(data + b"junk")
    with pytest.raises(ArchiveError, match="not a valid zstandard stream"):
        verify_archive(tmp_path / "junk.tar.zst")
    (tmp_path / "cut.tar.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError):
        verify_archive(tmp_path / "cut.tar.zst")
    flipped = bytearray(data)
    flipped[-8] ^= 0xFF  # inside the last block or the frame checksum
    (tmp_path / "flip.tar.zst").write_bytes(bytes(flipped))
    with pytest.raises(ArchiveError):
        verify_archive(tmp_path / "flip.tar.zst")
