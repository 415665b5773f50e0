"""One writer per dataset, damaged state and plan files, tampered chips, duplicate item ids, a
real full disk and object storage that fails: each ends with one line (exit 2, no traceback,
nothing changed) or is repaired, and a rerun gives the manifest of a clean solo run.

Everything runs the real CLI on the real Exeter HLS sample (conftest's crop recipe), a real
tmpfs for the full disk (skipped with the reason where ``mount`` is not allowed) and a real S3
server (moto) behind a fault-injecting proxy on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import FMASK_RULE, crop_recipe, manifest, needs_shared, run_cli, write_recipe
from eochips.writers import TMP_MARK
from servers import FaultyProxy, Faults

pytestmark = needs_shared

LOCK = ".eochips.lock"


# --------------------------------------------------------------------------------------
# helpers

def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file's bytes but SQLite's own -wal / -shm files."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


# distributed's warning when another program on this host holds its default HTTP port (the
# other test sessions of a shared machine): not eochips output
_PORT_WARNING = re.compile(r"^.*UserWarning: Port \d+ is already in use\.\n(Perhaps you already have a cluster running\?\n)?"
                           r"(Hosting the HTTP server on port \d+ instead\n)?(\s*warnings\.warn\(\n)?", re.M)


def _one_line_error(proc, message: str, case: str = "") -> None:
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, (case, proc.stderr[-2000:])
    lines = _PORT_WARNING.sub("", proc.stderr).strip().splitlines()
    assert lines and lines[0].startswith("error: ") and len(lines) <= 3, (case, proc.stderr[-2000:])
    assert message in err, (case, err)


def _cmd(kind: str, recipe: Path, out: Path, *extra: str) -> list[str]:
    if kind == "run":
        return ["run", str(recipe), "-o", str(out), "--no-progress", *extra]
    if kind == "plan":
        return ["plan", str(recipe), "-o", str(out), *extra]
    if kind == "build":
        return ["build", str(out), "--no-progress", *extra]
    return ["finalize", str(out), *extra]


def _kept_chip(out: Path, suffix: str = "_merged.tif") -> Path:
    import geopandas as gpd

    idx = gpd.read_parquet(out / "index.parquet")
    uid = sorted(idx[idx.status == "kept"].unit_id)[0]
    return out / "chips" / f"{uid}{suffix}"


@pytest.fixture(scope="module")
def recipe(local_catalog, cdl_raster, tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("rec") / "crop.yaml", crop_recipe(str(local_catalog), cdl_raster))


@pytest.fixture(scope="module")
def other_recipe(local_catalog, cdl_raster, tmp_path_factory) -> Path:
    """The crop recipe with the Fmask rule relaxed: more chips kept (a different dataset)."""
    return write_recipe(tmp_path_factory.mktemp("rec2") / "crop100.yaml",
                        crop_recipe(str(local_catalog), cdl_raster, **{FMASK_RULE: 100}))


@pytest.fixture(scope="module")
def solo(recipe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("solo") / "ds"
    proc = run_cli(*_cmd("run", recipe, out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def solo_other(other_recipe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("solo2") / "ds"
    proc = run_cli(*_cmd("run", other_recipe, out))
    assert proc.returncode == 0, proc.stderr
    return out


def _copy(solo: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(solo, out)
    return out


# --------------------------------------------------------------------------------------
# 5. one writer per dataset folder

# a second command into a folder a paused `eochips run` holds: exit 2 naming the holder
CONTENDERS = {
    "run, same recipe": ("run", False, ()),
    "run, another recipe": ("run", True, ()),
    "run --overwrite, another recipe": ("run", True, ("--overwrite",)),
    "plan": ("plan", False, ()),
    "build": ("build", False, ()),
    "finalize": ("finalize", False, ()),
}


def _wait_until_paused(out: Path, proc, go: Path) -> dict:
    """The lock's content once the first run is paused at its failpoint (holding the lock)."""
    for _ in range(12000):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if Path(f"{go}.waiting").exists():
            return json.loads((out / LOCK).read_text())
        time.sleep(0.05)
    raise AssertionError("the first run never reached its failpoint")


def test_second_writer_stops_and_the_first_completes(recipe, other_recipe, solo, tmp_path):
    out = tmp_path / "ds"
    go = tmp_path / "go"
    env = dict(os.environ, EOCHIPS_FAILPOINT="build:before-first-chip", EOCHIPS_FAILPOINT_WAIT=str(go))
    first = subprocess.Popen([sys.executable, "-m", "eochips.cli", *_cmd("run", recipe, out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        doc = _wait_until_paused(out, first, go)
        assert doc["pid"] == first.pid and doc["host"] == socket.gethostname() and doc["command"] == "run"
        before = _snapshot(out)
        for case, (kind, other, extra) in CONTENDERS.items():
            proc = run_cli(*_cmd(kind, other_recipe if other else recipe, out, *extra))
            _one_line_error(proc, f"is being written by pid {first.pid} on {doc['host']} since {doc['since']}", case)
            assert _snapshot(out) == before, case
    finally:
        go.write_text("")
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert manifest(out) == manifest(solo)
    assert not (out / LOCK).exists()


# a lock whose holder is gone does not block
STALE = {
    "lock file of a dead pid": "dead-pid",
    "lock left by a killed run": "killed",
}


@pytest.mark.parametrize("kind", ["build", "finalize"])
def test_build_or_finalize_of_a_missing_folder_creates_nothing(kind, recipe, tmp_path):
    out = tmp_path / "nothing-here"
    _one_line_error(run_cli(*_cmd(kind, recipe, out)), "no plan in", kind)
    assert not out.exists()


@pytest.mark.parametrize("case", list(STALE))
def test_stale_lock_is_taken_over(case, recipe, solo, tmp_path):
    if STALE[case] == "dead-pid":
        out = _copy(solo, tmp_path)
        (out / LOCK).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "since": "2020-01-01T00:00:00Z",
                                            "command": "run"}))
        proc = run_cli(*_cmd("finalize", recipe, out))
    else:
        out = tmp_path / "ds"
        killed = run_cli(*_cmd("run", recipe, out), env={"EOCHIPS_FAILPOINT": "build:before-first-chip"})
        assert killed.returncode == -9 and (out / LOCK).exists()
        proc = run_cli(*_cmd("run", recipe, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert manifest(out) == manifest(solo)
    assert not (out / LOCK).exists()


# --------------------------------------------------------------------------------------
# 6. state and plan files are validated

def _damage(out: Path, how: str) -> None:
    state = out / "state.sqlite"
    for side in ("state.sqlite-wal", "state.sqlite-shm"):
        (out / side).unlink(missing_ok=True)
    plan = out / "plan"
    marker = sorted((out / "state" / "units").glob("*.json"))[0]
    if how == "state-garbage":
        state.write_bytes(b"this is not a database\n" * 300)
    elif how == "state-truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif how == "state-zero":
        state.write_bytes(b"")
    elif how.startswith("plan-json-"):
        text = (plan / "plan.json").read_text()
        new = {"garbage": "{not json", "truncated": text[: len(text) // 2], "empty": "", "list": "[1, 2]"}
        if how == "plan-json-missing":
            (plan / "plan.json").unlink()
        else:
            (plan / "plan.json").write_text(new[how.removeprefix("plan-json-")])
    elif how.startswith(("units-", "scenes-", "run-")):
        name, kind = how.rsplit("-", 1)
        f = plan / {"units": "units.parquet", "scenes": "scenes.parquet", "run": "run.json"}[name]
        if kind == "missing":
            f.unlink()
        elif kind == "empty":
            f.write_bytes(b"")
        elif kind == "truncated":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            f.write_bytes(b"PAR1 garbage {")
    elif how == "marker-garbage":
        marker.write_text('{"unit_id": "chip_0')
    elif how == "marker-other-unit":
        doc = json.loads(marker.read_text())
        doc["unit_id"] = "chip_999_999"
        marker.write_text(json.dumps(doc))
    else:
        raise AssertionError(how)


# (command, damage, first words of the message)
DAMAGED = {
    "state not a database (build)": ("build", "state-garbage", "is corrupt or truncated (file is not a database)"),
    "state not a database (run, resume)": ("run", "state-garbage", "is corrupt or truncated (file is not a database)"),
    "state truncated (finalize)": ("finalize", "state-truncated", "is corrupt or truncated"),
    "state locked by another process (build)": ("build", "state-locked", "is locked by another process (still locked after 2 s)"),
    "state locked by another process (finalize)": ("finalize", "state-locked", "is locked by another process"),
    "plan.json not JSON (build)": ("build", "plan-json-garbage", "plan file plan/plan.json in"),
    "plan.json truncated (finalize)": ("finalize", "plan-json-truncated", "plan file plan/plan.json in"),
    "plan.json truncated (run, resume)": ("run", "plan-json-truncated", "plan file plan/plan.json in"),
    "plan.json empty (build)": ("build", "plan-json-empty", "plan file plan/plan.json in"),
    "plan.json not a plan (run, resume)": ("run", "plan-json-list", "is corrupt (not a plan of eochips)"),
    "plan.json missing (build)": ("build", "plan-json-missing", "no plan in"),
    "units.parquet truncated (build)": ("build", "units-truncated", "plan file plan/units.parquet in"),
    "units.parquet missing (finalize)": ("finalize", "units-missing", "plan/units.parquet in"),
    "scenes.parquet not parquet (finalize)": ("finalize", "scenes-garbage", "plan file plan/scenes.parquet in"),
    "scenes.parquet empty (build)": ("build", "scenes-empty", "is empty (0 bytes)"),
    "run.json not JSON (build)": ("build", "run-garbage", "plan file plan/run.json in"),
    "completion marker not JSON (build)": ("build", "marker-garbage", "is corrupt (not valid JSON"),
    "completion marker of another unit (finalize)": ("finalize", "marker-other-unit", "is corrupt (not the marker of the unit"),
}
FIX = {"state": "delete it", "plan": "plan again", "units": "plan again", "scenes": "plan again", "run": "plan again",
       "marker": "delete it and rerun 'eochips build"}  # what the message says to do, by damage


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_state_or_plan_is_one_line(case, recipe, solo, tmp_path):
    kind, how, message = DAMAGED[case]
    out = _copy(solo, tmp_path)
    holder = None
    if how == "state-locked":  # another process holds a write transaction; the build has a row to write
        holder = sqlite3.connect(out / "state.sqlite", isolation_level=None)
        holder.execute("DELETE FROM units WHERE unit_id = (SELECT min(unit_id) FROM units)")
        holder.execute("BEGIN EXCLUSIVE")
    else:
        _damage(out, how)
    before = _snapshot(out)
    try:
        proc = run_cli(*_cmd(kind, recipe, out))
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
    _one_line_error(proc, message, case)
    if how not in ("plan-json-missing", "state-locked"):
        fix = FIX["plan" if how.startswith("plan-json") else how.split("-")[0]]
        assert fix in " ".join(proc.stderr.split()), (case, proc.stderr)
    if holder is not None:  # the holder's own DELETE reaches state.sqlite when it closes
        before.pop("state.sqlite")
        assert {k: v for k, v in _snapshot(out).items() if k != "state.sqlite"} == before, case
    else:
        assert _snapshot(out) == before, case


# damage that a rerun repairs by itself (the plan is rewritten, the state rebuilt from the markers)
REPAIRED = {
    "zero-byte state (build: every unit from its marker)": ("build", "state-zero", ()),
    "units.parquet truncated (run rewrites the plan)": ("run", "units-truncated", ()),
    "state not a database (run --overwrite starts again)": ("run", "state-garbage", ("--overwrite",)),
    "plan.json not JSON (run --overwrite starts again)": ("run", "plan-json-garbage", ("--overwrite",)),
}


@pytest.mark.parametrize("case", list(REPAIRED))
def test_damage_a_rerun_repairs(case, recipe, solo, tmp_path):
    kind, how, extra = REPAIRED[case]
    out = _copy(solo, tmp_path)
    _damage(out, how)
    proc = run_cli(*_cmd(kind, recipe, out, *extra))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if kind == "build":
        assert '"ran": 0' in proc.stdout, proc.stdout
        assert run_cli(*_cmd("finalize", recipe, out)).returncode == 0
    assert manifest(out) == manifest(solo)


# --------------------------------------------------------------------------------------
# 7. finalize verifies, never re-blesses

VERIFY = {
    "an image edited on disk": "edit",
    "a mask deleted": "delete",
}


@pytest.mark.parametrize("case", list(VERIFY))
def test_finalize_rebuilds_a_changed_chip(case, recipe, solo, tmp_path):
    out = _copy(solo, tmp_path)
    chip = _kept_chip(out, "_merged.tif" if VERIFY[case] == "edit" else ".mask.tif")
    original = chip.read_bytes()
    if VERIFY[case] == "edit":
        data = bytearray(original)
        data[-100] ^= 0xFF  # one byte of the last tile
        chip.write_bytes(bytes(data))
    else:
        chip.unlink()
    proc = run_cli(*_cmd("finalize", recipe, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"note: rebuilt 1 unit(s) whose files had changed on disk since they were built: {chip.name.split('.')[0].replace('_merged', '')}" in proc.stderr
    assert chip.read_bytes() == original
    assert manifest(out) == manifest(solo)


def test_finalize_never_blesses_a_chip_it_cannot_rebuild(hls_dir, cdl_raster, tmp_path):
    """The assets are gone, so the edited chip cannot be built again: it is removed, its unit is
    failed (exit 1) and neither the manifest nor the index lists the edited bytes."""
    import geopandas as gpd

    src, items = hls_dir
    assets = tmp_path / "assets"
    shutil.copytree(src, assets)
    feats = json.loads(json.dumps(items))
    for it in feats:
        for a in it["assets"].values():
            a["href"] = str(assets / a["href"])
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(str(cat), cdl_raster))
    out = tmp_path / "ds"
    assert run_cli(*_cmd("run", recipe, out)).returncode == 0
    chip = _kept_chip(out)
    chip.write_bytes(chip.read_bytes()[:-10] + b"0123456789")
    shutil.rmtree(assets)
    proc = run_cli(*_cmd("finalize", recipe, out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    uid = chip.name.replace("_merged.tif", "")
    assert f"failed {uid}:" in proc.stderr
    assert not chip.exists() and chip.name not in manifest(out)
    idx = gpd.read_parquet(out / "index.parquet").set_index("unit_id")
    assert idx.loc[uid, "status"] == "failed"


# --------------------------------------------------------------------------------------
# 8. items are unique

def _dup_catalog(local_catalog: Path, tmp_path: Path, how: str) -> Path:
    doc = json.loads(local_catalog.read_text())
    feats = [f for f in doc["features"] if f["properties"]["datetime"] < "2021-08"]
    feats.sort(key=lambda f: f["properties"]["datetime"])
    twin = json.loads(json.dumps(feats[0]))
    if how == "other-assets":
        twin["assets"] = json.loads(json.dumps(feats[1]["assets"]))
    elif how == "other-collection":
        twin["collection"] = "HLSS30_copy"
    feats.append(twin)
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


UNIQUE = {
    "same id, another scene's assets": ("other-assets", "holds two different items with id 'HLS.S30.T30UVB.2021159T112708.v2.0'"),
    "same id in two collections of one source": ("other-collection", "(collection 'HLSS30_2.0': "),
}


@pytest.mark.parametrize("case", list(UNIQUE))
def test_duplicate_item_ids_are_an_error(case, local_catalog, cdl_raster, tmp_path):
    how, message = UNIQUE[case]
    cat = _dup_catalog(local_catalog, tmp_path, how)
    data = crop_recipe(str(cat), cdl_raster)
    if how == "other-collection":
        data["sources"]["hls"]["search"]["collections"] = ["HLSS30_2.0", "HLSS30_copy"]
    recipe = write_recipe(tmp_path / "r.yaml", data)
    out = tmp_path / "ds"
    proc = run_cli(*_cmd("run", recipe, out))
    _one_line_error(proc, message, case)
    err = " ".join(proc.stderr.split())
    assert err.count(".tif") >= 2 or "HLSS30_copy" in err, err  # both items are named
    assert not out.exists()


def test_a_repeated_identical_item_is_kept_once(local_catalog, cdl_raster, tmp_path):
    """An API page overlap or a catalog listing one item twice: the same JSON, one scene."""
    plain = write_recipe(tmp_path / "plain.yaml", crop_recipe(str(local_catalog), cdl_raster))
    dup = write_recipe(tmp_path / "dup.yaml", crop_recipe(str(_dup_catalog(local_catalog, tmp_path, "same")), cdl_raster))
    a = run_cli("plan", str(plain), "-o", str(tmp_path / "a"), "--dry-run")
    b = run_cli("plan", str(dup), "-o", str(tmp_path / "b"), "--dry-run")
    assert a.returncode == b.returncode == 0, b.stderr
    assert "scenes (hls)" in a.stdout and a.stdout.replace(str(tmp_path / "a"), "") == b.stdout.replace(str(tmp_path / "b"), "")


# --------------------------------------------------------------------------------------
# 9. a real full disk

@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]}): needs root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# tmpfs sizes at which the build runs out of space at different moments (a chip's image, a
# completion marker, the SQLite state), depending on the two workers' timing
DISK_SIZES = {"400 kB": "400k", "900 kB": "900k", "1300 kB": "1300k"}


@pytest.mark.parametrize("case", list(DISK_SIZES))
def test_real_full_disk_is_one_line_and_resumes(case, other_recipe, solo_other, tmp_path):
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, DISK_SIZES[case]):
        out = mnt / "ds"
        proc = run_cli(*_cmd("run", other_recipe, out))
        _one_line_error(proc, "no space left on device while writing", case)
        assert not [ln for ln in proc.stderr.splitlines() if "_tiff" in ln or "CPLE_" in ln or "ERROR " in ln]
        assert not [p for p in mnt.rglob("*") if TMP_MARK in p.name or p.suffix == ".tmp"]
        r = subprocess.run(["mount", "-o", "remount,size=16M", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        proc = run_cli(*_cmd("run", other_recipe, out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert manifest(out) == manifest(solo_other)


def test_state_on_a_full_disk_is_one_line(tmp_path):
    """SQLite's "database or disk is full" is the same error as a full disk elsewhere."""
    from eochips.chips import UnitResult
    from eochips.engine import State
    from eochips.errors import OutputError

    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        st = State(mnt / "state.sqlite")
        with pytest.raises(OutputError, match=r"^no space left on device while writing the state '.*state.sqlite'"):
            for i in range(10000):
                st.record(UnitResult(f"u{i}", "kept", "", "x" * 2000, {f"chips/u{i}.tif": "0" * 64}))
        st.close()


def test_cog_on_a_full_disk_is_one_line(tmp_path, capfd):
    """A disk without room for the file stops before GDAL writes: one OutputError, no libtiff
    lines, no temporary."""
    import numpy as np

    from eochips.errors import OutputError
    from eochips.writers import OutputStore, write_cog

    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        store = OutputStore(mnt)
        arr = np.random.default_rng(0).integers(0, 10000, (4, 256, 256), dtype=np.int16)
        with pytest.raises(OutputError, match=r"^no space left on device while writing chips/a.tif"):
            write_cog(store, "chips/a.tif", arr, "EPSG:32630", (30, 0, 460860, 0, -30, 5622180))
        assert not [p for p in mnt.rglob("*") if p.is_file()]
    assert "_tiff" not in capfd.readouterr().err


# --------------------------------------------------------------------------------------
# 5 (object storage) and 13: the lease, and finalize retrying then failing with one line

@pytest.fixture(scope="module")
def s3_env():
    from servers import moto_s3

    pytest.importorskip("s3fs")
    with moto_s3("eochips-state") as (env, client):
        yield env, client


def _upload(client, solo: Path, prefix: str) -> str:
    """The solo dataset in the bucket (its state travels as markers, as from another machine)."""
    for p in solo.rglob("*"):
        rel = p.relative_to(solo).as_posix()
        if p.is_file() and not rel.startswith("state.sqlite"):
            client.put_object(Bucket="eochips-state", Key=f"{prefix}/{rel}", Body=p.read_bytes())
    return f"s3://eochips-state/{prefix}"


LEASES = {
    "live lease of another host": ({"pid": 4242, "host": "other-host", "expires": 4e9}, 2),
    "expired lease": ({"pid": 4242, "host": "other-host", "expires": 1.0}, 0),
    "lease of a dead pid on this host": ({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "expires": 4e9}, 0),
}


@pytest.mark.parametrize("case", list(LEASES))
def test_object_storage_lease(case, s3_env, solo, tmp_path):
    env, client = s3_env
    doc, code = LEASES[case]
    prefix = f"lease-{list(LEASES).index(case)}"
    url = _upload(client, solo, prefix)
    lease = json.dumps({**doc, "since": "2026-01-01T00:00:00Z", "command": "build", "token": "x"}).encode()
    client.put_object(Bucket="eochips-state", Key=f"{prefix}/{LOCK}", Body=lease)
    client.delete_object(Bucket="eochips-state", Key=f"{prefix}/checksums.sha256")
    proc = run_cli("finalize", url, env=env | {"EOCHIPS_STATE_DIR": str(tmp_path / "state")})
    if code == 2:
        _one_line_error(proc, "is being written by pid 4242 on other-host since 2026-01-01T00:00:00Z", case)
        assert client.get_object(Bucket="eochips-state", Key=f"{prefix}/{LOCK}")["Body"].read() == lease
        assert client.list_objects_v2(Bucket="eochips-state", Prefix=f"{prefix}/checksums")["KeyCount"] == 0
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        body = client.get_object(Bucket="eochips-state", Key=f"{prefix}/checksums.sha256")["Body"].read().decode()
        assert body == manifest(solo)
        assert client.list_objects_v2(Bucket="eochips-state", Prefix=f"{prefix}/{LOCK}")["KeyCount"] == 0


class _FailPuts(Faults):
    """Every PUT of one object fails with 503, forever; the rest passes."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def draw(self, key) -> str | None:
        method, path, _ = key
        if method == "PUT" and path.split("?")[0].endswith(self.name):
            self.counts["503"] = self.counts.get("503", 0) + 1
            return "503"
        return None


FINALIZE_S3 = {
    "transient faults on 30 % of requests (retried)": (lambda: Faults(rate=0.3, seed=3), 0, ""),
    "every PUT of index.parquet fails": (lambda: _FailPuts("index.parquet"), 2,
                                          "kept failing while writing index.parquet: "),
}


@pytest.mark.parametrize("case", list(FINALIZE_S3))
def test_finalize_to_object_storage(case, s3_env, solo, tmp_path):
    env, client = s3_env
    make, code, message = FINALIZE_S3[case]
    prefix = f"fin-{list(FINALIZE_S3).index(case)}"
    url = _upload(client, solo, prefix)
    faults = make()
    with FaultyProxy(env["AWS_ENDPOINT_URL"], faults) as proxy:
        proc = run_cli("finalize", url, env=env | {"AWS_ENDPOINT_URL": proxy.url, "EOCHIPS_STATE_DIR": str(tmp_path / "st")})
    assert sum(faults.counts.values()) > 0
    if code:
        _one_line_error(proc, message, case)
        assert faults.counts["503"] >= 2  # retried before giving up
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        body = client.get_object(Bucket="eochips-state", Key=f"{prefix}/checksums.sha256")["Body"].read().decode()
        assert body == manifest(solo)
