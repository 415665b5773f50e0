"""Crash and resume: `eochips run` is killed with SIGKILL at many moments (named failpoints,
see eochips.failpoints); each time a rerun completes, its manifest equals a clean run's and no
temporary file remains. The run uses the in-process (threaded) Dask cluster so that SIGKILL
takes the workers down with it, as a machine crash would."""

from __future__ import annotations

import signal

import pytest

from conftest import clean_crop_run, manifest, needs_shared, run_cli
from eochips.writers import TMP_MARK

pytestmark = needs_shared

KILL_POINTS = [
    "plan:before-write",          # searched and selected, nothing written
    "plan:after-write",           # plan on disk, no chip
    "build:before-first-chip",
    "chip:after-image@3",         # mid-chip: the 3rd chip's image published, its mask and Fmask not
    "writer:before-publish@7",    # a complete temporary file exists, not renamed yet
    "build:after-record@10",      # 10 chips recorded
    "finalize:after-index",       # index written, stats / plots / manifest not
    "finalize:before-manifest",
]


@pytest.fixture(scope="module")
def setup(stac_api, cdl_raster, tmp_path_factory):
    return clean_crop_run(stac_api, cdl_raster, tmp_path_factory.mktemp("resume"))


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_and_resume(point, setup, tmp_path):
    recipe, clean = setup
    out = tmp_path / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress", env={"EOCHIPS_FAILPOINT": point})
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-1500:])
    if point.startswith("writer:before-publish"):
        assert any(TMP_MARK in p.name for p in out.rglob("*")), "the kill should leave a temporary file behind"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert manifest(out) == manifest(clean)
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]


def test_kill_twice_then_build_and_finalize_separately(setup, tmp_path):
    """Two crashes in a row (mid-unit each time), then the stages run one by one."""
    recipe, clean = setup
    out = tmp_path / "out"
    assert run_cli("run", str(recipe), "-o", str(out), env={"EOCHIPS_FAILPOINT": "chip:after-image@2"}).returncode == -9
    assert run_cli("build", str(out), env={"EOCHIPS_FAILPOINT": "chip:after-image@1"}).returncode == -9
    assert run_cli("build", str(out), "--no-progress").returncode == 0
    assert run_cli("finalize", str(out)).returncode == 0
    assert manifest(out) == manifest(clean)


def test_disk_full_is_a_clean_error(setup, tmp_path):
    recipe, _ = setup
    out = tmp_path / "new-folder"
    proc = run_cli("run", str(recipe), "-o", str(out), env={"EOCHIPS_FAILPOINT": "writer:write"})
    assert proc.returncode == 2
    assert "no space left on device while writing plan/units.parquet" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
