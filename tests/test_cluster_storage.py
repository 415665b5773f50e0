"""A real multi-process Dask cluster (a `dask scheduler` and two `dask worker` processes on
127.0.0.1) and object storage (a moto S3 server on 127.0.0.1): the crop recipe must give the same
bytes as with the LocalCluster, with a single worker, and in a local folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import crop_recipe, manifest, needs_shared, run_cli, write_recipe
from servers import free_port, moto_s3

pytestmark = needs_shared


@pytest.fixture(scope="module")
def recipe(stac_api, cdl_raster, tmp_path_factory):
    return write_recipe(tmp_path_factory.mktemp("cl") / "crop.yaml", crop_recipe(stac_api, cdl_raster))


@pytest.fixture(scope="module")
def local_run(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")  # LocalCluster, 2 workers
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def dask_cluster():
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):  # the workers (and the Client below) wait for the scheduler themselves
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(addr, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
            assert len(c.scheduler_info()["workers"]) == 2
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _workers_that_built_units(addr: str) -> dict[str, bool]:
    """Per worker of the external cluster: whether it ran eochips' unit builder (its per-process
    thread pools exist only after ``process_batch`` ran there; a ``dask worker`` imports nothing
    of eochips by itself)."""
    import sys as _sys

    from distributed import Client

    def built() -> bool:
        mod = _sys.modules.get("eochips.chips")
        return mod is not None and bool(mod._pools)

    with Client(addr, timeout="30s") as c:
        return c.run(built)


def test_multi_process_cluster_gives_the_same_bytes(recipe, local_run, dask_cluster, tmp_path):
    on_cluster = tmp_path / "cluster"
    proc = run_cli("run", str(recipe), "-o", str(on_cluster), "--no-progress", "--scheduler", dask_cluster)
    assert proc.returncode == 0, proc.stderr
    # the external cluster did the work: its workers ran eochips unit batches (not a LocalCluster)
    per_worker = _workers_that_built_units(dask_cluster)
    assert len(per_worker) == 2 and any(per_worker.values()), per_worker
    single = tmp_path / "single"
    proc = run_cli("run", str(recipe), "-o", str(single), "--no-progress", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert manifest(on_cluster) == manifest(local_run) == manifest(single)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with the bucket ``eochips-test``; yields the client environment."""
    with moto_s3("eochips-test") as (env, _):
        yield env


def test_object_storage_output_equals_local(recipe, local_run, s3, tmp_path):
    pytest.importorskip("s3fs")
    url = "s3://eochips-test/datasets/crop"
    proc = run_cli("run", str(recipe), "-o", url, "--no-progress", env=s3 | {"EOCHIPS_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stderr
    def bucket_files():
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)  # not an instance made for an earlier test's endpoint
        return {p.split("datasets/crop/", 1)[1]: fs.cat_file(p) for p in fs.find("eochips-test/datasets/crop")}

    remote = with_env(s3, bucket_files)
    local = {p.relative_to(local_run).as_posix(): p.read_bytes() for p in local_run.rglob("*") if p.is_file()}
    state = lambda files: {k for k in files if k.startswith("state")}  # noqa: E731 - the state, not the dataset
    assert "state.sqlite" in remote  # a snapshot of the state travels with the dataset
    assert {k for k in remote if k.startswith("state/units/")} == {k for k in local if k.startswith("state/units/")}
    remote = {k: v for k, v in remote.items() if k not in state(remote)}
    local = {k: v for k, v in local.items() if k not in state(local)}
    assert sorted(remote) == sorted(local)
    assert all(remote[k] == local[k] for k in local), [k for k in local if remote[k] != local[k]]
    assert not [k for k in remote if ".eochips-tmp-" in k]
    # a rerun against the same prefix skips every finished unit
    proc = run_cli("build", url, "--no-progress", env=s3 | {"EOCHIPS_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 0 and '"ran": 0' in proc.stdout, proc.stdout + proc.stderr
    # D3: a fresh machine (an empty state folder) resumes and finalizes from the bucket alone: the
    # completion markers beside the files restore the state, nothing is rebuilt or lost
    fresh = {"EOCHIPS_STATE_DIR": str(tmp_path / "fresh-state")}
    proc = run_cli("build", url, "--no-progress", env=s3 | fresh)
    assert proc.returncode == 0 and '"ran": 0' in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli("finalize", url, env=s3 | {"EOCHIPS_STATE_DIR": str(tmp_path / "fresh-state-2")})
    assert proc.returncode == 0, proc.stderr
    with_env(s3, lambda: _assert_same_index(url, local_run))


def with_env(env: dict, fn):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _assert_same_index(url: str, local_run):
    import io

    import fsspec
    import geopandas as gpd

    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # not an instance made for an earlier test's endpoint
    remote = gpd.read_parquet(io.BytesIO(fs.cat_file(url.removeprefix("s3://") + "/index.parquet")))
    local = gpd.read_parquet(local_run / "index.parquet")
    assert (remote.status == "kept").sum() == (local.status == "kept").sum() > 0
    assert fs.cat_file(url.removeprefix("s3://") + "/checksums.sha256") == (local_run / "checksums.sha256").read_bytes()
