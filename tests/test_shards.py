"""Sharded builds for array jobs: ``eochips run/build OUT --shard I/N`` builds a disjoint part of
the plan's units on one shared output, ``eochips finalize OUT`` merges the shards.

The crop recipe over the pgstac API (real HLS pixels, tens of chips). References are independent
of the sharding code: an unsharded run of the same recipe (its manifest and index rows), the
plan's own unit list (``plan/units.parquet`` read with geopandas) and the shards' SQLite states
read with ``sqlite3``."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import pytest

from conftest import clean_crop_run, crop_recipe, manifest, needs_shared, run_cli, write_recipe

pytestmark = needs_shared

FINAL = ("index.parquet", "checksums.sha256", "summary.json", "stats.json", "train_ids.csv", "val_ids.csv")


@pytest.fixture(scope="module")
def setup(stac_api, cdl_raster, tmp_path_factory):
    return clean_crop_run(stac_api, cdl_raster, tmp_path_factory.mktemp("shards"))


def planned_units(out: Path) -> set[str]:
    df = gpd.read_parquet(out / "plan" / "units.parquet")
    return set(df.loc[df["status"] == "planned", "unit_id"])


def state_units(path: Path) -> dict[str, str]:
    """``{unit id: status}`` of a shard's state, read from a copy (SQLite would leave -wal/-shm files beside it)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        db = sqlite3.connect(copy)
        try:
            return dict(db.execute("SELECT unit_id, status FROM units").fetchall())
        finally:
            db.close()


def snapshot(out: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def index_rows(out: Path) -> tuple[list[str], list]:
    """The rows of ``index.parquet`` (sorted by unit id) as JSON texts, and their geometries."""
    df = gpd.read_parquet(out / "index.parquet").sort_values("unit_id").reset_index(drop=True)
    rows = [json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}, sort_keys=True, default=str)
            for r in df.drop(columns="geometry").to_dict("records")]
    return rows, list(df.geometry)


def shard_counts(proc) -> dict:
    return json.loads(proc.stdout)


def test_two_shards_one_after_the_other(setup, tmp_path):
    recipe, clean = setup
    out = tmp_path / "out"
    p0 = run_cli("run", str(recipe), "-o", str(out), "--no-progress", "--shard", "0/2")
    assert p0.returncode == 0, p0.stderr[-2000:]
    assert "shard 0/2 finished" in p0.stderr and f"eochips finalize {out}" in p0.stderr
    assert not [f for f in FINAL if (out / f).exists()], "a shard does not finalize"
    s0 = shard_counts(p0)
    assert s0["shard"] == "0/2" and s0["ran"] == s0["units"] > 0 and s0["skipped_done"] == 0

    # finalize with shard 1 missing: a clear error, nothing of the dataset written
    fin = run_cli("finalize", str(out))
    assert fin.returncode == 2, fin.stderr
    planned = planned_units(out)
    lacking = len(planned) - s0["units"]
    assert fin.stderr.startswith("error: ") and len(fin.stderr.strip().splitlines()) == 1, fin.stderr
    assert f"{lacking} of {len(planned)} planned unit(s)" in fin.stderr
    assert "shard 1/2" in fin.stderr and "never started" in fin.stderr and "--shard 1/2" in fin.stderr
    assert "shard 0/2" not in fin.stderr
    assert not [f for f in FINAL if (out / f).exists()]

    # the second shard through 'build' (the plan is on disk)
    p1 = run_cli("build", str(out), "--no-progress", "--shard", "1/2")
    assert p1.returncode == 0, p1.stderr[-2000:]
    s1 = shard_counts(p1)
    assert s1["shard"] == "1/2" and s1["ran"] == s1["units"] == lacking

    # the shards' units: disjoint, their union is the plan's planned units, each with a marker
    u0 = state_units(out / "state" / "shard-0-of-2.sqlite")
    u1 = state_units(out / "state" / "shard-1-of-2.sqlite")
    assert u0 and u1 and not set(u0) & set(u1)
    assert set(u0) | set(u1) == planned
    assert {p.stem for p in (out / "state" / "units").glob("*.json")} == planned
    assert len(u0) == s0["units"] and len(u1) == s1["units"]
    assert sum(v == "kept" for v in u0.values()) == s0["kept"]

    # a rerun of a shard skips everything and changes no file
    before = snapshot(out)
    again = run_cli("run", str(recipe), "-o", str(out), "--no-progress", "--shard", "0/2")
    assert again.returncode == 0, again.stderr[-2000:]
    s = shard_counts(again)
    assert s["ran"] == 0 and s["skipped_done"] == s0["units"]
    again = run_cli("build", str(out), "--no-progress", "--shard", "1/2")
    assert again.returncode == 0 and shard_counts(again)["ran"] == 0
    assert snapshot(out) == before

    fin = run_cli("finalize", str(out))
    assert fin.returncode == 0, fin.stderr[-2000:]
    assert manifest(out) == manifest(clean)
    (rows, geoms), (want, want_geoms) = index_rows(out), index_rows(clean)
    assert len(rows) == len(want) == len(gpd.read_parquet(clean / "plan" / "units.parquet")) > 0
    assert rows == want
    assert all(g.equals_exact(h, 0) for g, h in zip(geoms, want_geoms))

    # an unsharded build and run over the finished sharded output build nothing
    ub = run_cli("build", str(out), "--no-progress")
    assert ub.returncode == 0 and json.loads(ub.stdout)["ran"] == 0, ub.stderr[-2000:]
    ur = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert ur.returncode == 0, ur.stderr[-2000:]
    assert manifest(out) == manifest(clean)


def test_two_shards_at_the_same_time(setup, tmp_path):
    recipe, clean = setup
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "eochips.cli", "run", str(recipe), "-o", str(out), "--no-progress", "--shard"]
    procs = [subprocess.Popen([*cmd, f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, results):
        assert p.returncode == 0, se[-2000:]
    counts = [json.loads(so) for so, _ in results]
    planned = planned_units(out)
    assert sum(c["units"] for c in counts) == len(planned) and all(c["ran"] == c["units"] for c in counts)
    u0 = state_units(out / "state" / "shard-0-of-2.sqlite")
    u1 = state_units(out / "state" / "shard-1-of-2.sqlite")
    assert not set(u0) & set(u1) and set(u0) | set(u1) == planned
    fin = run_cli("finalize", str(out))
    assert fin.returncode == 0, fin.stderr[-2000:]
    assert manifest(out) == manifest(clean)


def test_a_killed_shard_resumes(setup, tmp_path):
    """Shard 1/2 is killed (SIGKILL) with a temporary file on disk; shard 0/2 runs meanwhile-free; the
    rerun of shard 1/2 builds the rest and finalize gives the unsharded manifest, with no temporary
    or lock file left."""
    from eochips.writers import TMP_MARK

    recipe, clean = setup
    out = tmp_path / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress", "--shard", "1/2",
                   env={"EOCHIPS_FAILPOINT": "writer:before-publish@20"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert any(TMP_MARK in p.name for p in out.rglob("*")) and (out / ".eochips.lock.shard-1-of-2").exists()
    assert run_cli("build", str(out), "--no-progress", "--shard", "0/2").returncode == 0
    fin = run_cli("finalize", str(out))
    assert fin.returncode == 2 and "shard 1/2" in fin.stderr and "never started" not in fin.stderr, fin.stderr
    again = run_cli("run", str(recipe), "-o", str(out), "--no-progress", "--shard", "1/2")
    assert again.returncode == 0, again.stderr[-2000:]
    s = shard_counts(again)
    assert 0 < s["ran"] < s["units"] and s["ran"] + s["skipped_done"] == s["units"]
    fin = run_cli("finalize", str(out))
    assert fin.returncode == 0, fin.stderr[-2000:]
    assert manifest(out) == manifest(clean)
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name or p.name.startswith(".eochips.lock")]


def test_another_plan_and_a_running_writer_are_refused(setup, tmp_path, stac_api, cdl_raster):
    recipe, _ = setup
    out = tmp_path / "out"
    assert run_cli("plan", str(recipe), "-o", str(out)).returncode == 0
    # the stored plan loses a unit (as if the catalog had changed since the first shard planned)
    units = gpd.read_parquet(out / "plan" / "units.parquet")
    gone = sorted(units.loc[units["status"] == "planned", "unit_id"])[0]
    units.loc[units["unit_id"] == gone, ["status", "reason_code", "reason"]] = ["dropped", "sampling", "not drawn"]
    units.to_parquet(out / "plan" / "units.parquet", index=False)
    before = snapshot(out)
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress", "--shard", "0/2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds another plan of this recipe" in proc.stderr and gone in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before

    # a recipe with another output field: the "different recipe" check
    other = write_recipe(tmp_path / "other.yaml", crop_recipe(stac_api, cdl_raster, **{"engine.processes": False, "units.size": 16}))
    proc = run_cli("run", str(other), "-o", str(out), "--no-progress", "--shard", "1/2")
    assert proc.returncode == 2 and "different recipe" in proc.stderr, proc.stderr[-2000:]
    assert snapshot(out) == before


def test_shard_and_dataset_locks_exclude_each_other(setup, tmp_path):
    """While shard 0/2 holds its lock: another copy of it, a finalize and a shard of another count stop
    at once; shard 1/2 does not."""
    from eochips.engine import build
    from eochips.lock import dataset_lock
    from eochips.writers import OutputStore

    recipe, _ = setup
    out = tmp_path / "out"
    assert run_cli("plan", str(recipe), "-o", str(out)).returncode == 0
    store = OutputStore(out)
    code = ("import sys; from eochips.lock import dataset_lock; from eochips.writers import OutputStore\n"
            "with dataset_lock(OutputStore(sys.argv[1]), 'test', shard=(0, 2)):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (("build", str(out), "--shard", "0/2"), ("finalize", str(out)), ("build", str(out)),
                     ("build", str(out), "--shard", "0/3")):
            proc = run_cli(*args, "--no-progress") if args[0] == "build" else run_cli(*args)
            assert proc.returncode == 2, (args, proc.stderr[-2000:])
            assert f"pid {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "same count: --shard 0/2" in proc.stderr
        with dataset_lock(store, "test", shard=(1, 2)):  # the other shard of the same count runs alongside
            pass
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert build(out, progress=False, shard=(0, 1)).units == len(planned_units(out))  # one shard of one: every unit


@pytest.mark.parametrize("value", ["2/2", "0/0", "a/b", "1", "-1/2", "1/2/3", ""])
def test_bad_shard_values(setup, tmp_path, value):
    recipe, _ = setup
    out = tmp_path / "new"
    for args in (("run", str(recipe), "-o", str(out)), ("build", str(out))):
        proc = run_cli(*args, "--no-progress", f"--shard={value}")
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: --shard") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists()
    proc = run_cli("run", str(recipe), "-o", str(out), "--shard", value)  # the value as its own argument
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_bad_shard_in_the_library_and_overwrite(setup, tmp_path):
    from eochips import load_recipe, run
    from eochips.engine import build
    from eochips.errors import RecipeError

    recipe, _ = setup
    out = tmp_path / "new"
    r = load_recipe(str(recipe))
    for bad in [(2, 2), (0, 0), (-1, 2), ("0", "2"), (0.0, 2), (1,), "0/2"]:
        with pytest.raises(RecipeError, match="shard"):
            run(r, out, shard=bad)
        with pytest.raises(RecipeError, match="shard"):
            build(out, shard=bad)
    proc = run_cli("run", str(recipe), "-o", str(out), "--shard", "0/2", "--overwrite")
    assert proc.returncode == 2 and "--overwrite with --shard" in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with the bucket ``eochips-test``; yields the client environment."""
    from servers import moto_s3

    pytest.importorskip("s3fs")
    with moto_s3("eochips-test") as (env, _):
        yield env


def test_shards_on_object_storage(setup, s3, tmp_path):
    """Two shards at once into one s3:// prefix, each with its own state folder (two machines), then
    finalize from a third, fresh one: the manifest of the unsharded local run."""
    import os

    recipe, clean = setup
    url = "s3://eochips-test/shards/crop"
    procs = [subprocess.Popen([sys.executable, "-m", "eochips.cli", "run", str(recipe), "-o", url, "--no-progress", "--shard", f"{i}/2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, **s3, EOCHIPS_STATE_DIR=str(tmp_path / f"machine-{i}")))
             for i in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, results):
        assert p.returncode == 0, se[-2000:]
    assert sum(json.loads(so)["units"] for so, _ in results) == len(planned_units(clean))
    fresh = s3 | {"EOCHIPS_STATE_DIR": str(tmp_path / "machine-2")}
    proc = run_cli("finalize", url, env=fresh)
    assert proc.returncode == 0, proc.stderr[-2000:]

    import fsspec

    old = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        prefix = url.removeprefix("s3://")
        names = {p.split("shards/crop/", 1)[1] for p in fs.find(prefix)}
        text = fs.cat_file(f"{prefix}/checksums.sha256").decode()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert text == manifest(clean)
    assert {"state/shard-0-of-2.sqlite", "state/shard-1-of-2.sqlite"} <= names  # each shard's state travels with the data
    assert not [n for n in names if n.startswith(".eochips.lock") or ".eochips-tmp-" in n]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 41, 60])
def test_shard_units_partition_the_plan(setup, n):
    """For any count, the shards' unit sets are disjoint, cover the plan's planned units (read from
    plan/units.parquet), no shard is empty while there are at least as many units as shards, and
    units that read the same scenes (the plan's picks) are in at most as many shards as cuts allow."""
    from eochips.engine import shard_units
    from eochips.plan import load_plan, make_tasks
    from eochips.writers import OutputStore

    _, clean = setup
    store = OutputStore(clean)
    parts = shard_units(make_tasks(load_plan(store), store), n)
    planned = planned_units(clean)
    assert len(parts) == n
    assert sum(len(p) for p in parts) == len(planned) and set().union(*map(set, parts)) == planned
    if n <= len(planned):
        assert all(parts)
    else:
        assert sum(1 for p in parts if p) == len(planned)
    assert parts == shard_units(make_tasks(load_plan(store), store), n)  # the same from the plan alone
    # contiguous in the plan's batch order: a shard's units come in one run of shards 0..n-1
    df = gpd.read_parquet(clean / "plan" / "units.parquet")
    scenes = {r.unit_id: json.dumps(sorted((p["source"], p["step"], p["scene_id"]) for p in r.picks)) for r in df.itertuples()
              if r.status == "planned"}
    rank = {i: k for k, i in enumerate(i for i, p in enumerate(parts) if p)}  # shards with units, in order
    shard_of = {u: rank[i] for i, p in enumerate(parts) for u in p}
    for group in set(scenes.values()):
        used = sorted({shard_of[u] for u in scenes if scenes[u] == group})
        assert used == list(range(used[0], used[-1] + 1)), (group, used)  # a scene group spans adjacent shards only
