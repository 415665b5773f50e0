"""Stage timings (issue 15): every ``eochips run`` / ``build`` / ``finalize`` records the seconds of
its stages and the units' processing figures, listened to or not; ``--timings PATH`` writes them
to a file of the user's, and nothing of it reaches the dataset (``summary.json`` and the manifest
stay byte-identical on a second finalize, a rerun with nothing to do changes no file).

Runs the demo recipe on the embedded real sample (as tests/test_demo.py: skipped without it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
RUN_KEYS = {"search:landsat", "selection:landsat", "label_scan", "asset_probe", "plan", "plan_write", "cluster_start",
            "processing", "cluster_stop", "build", "finalize", "finalize:load", "finalize:verify", "finalize:index",
            "finalize:stats", "finalize:manifest", "total"}
PLAN_PARTS = {"search:landsat", "selection:landsat", "label_scan", "asset_probe"}
BUILD_PARTS = {"cluster_start", "processing", "cluster_stop"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EOCHIPS_SAMPLE_DIR=str(SAMPLE))
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", *args, "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _timings(out: Path) -> dict:
    return json.loads((out.parent / "timings.json").read_text())


def _tree(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(out).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}; run `make demo`")
    out = tmp_path_factory.mktemp("stages") / "demo"
    _cli("run", "demo", "-o", str(out), "--workers", "2", "--timings", str(out.parent / "timings.json"))
    return out


def test_run_records_every_stage(demo_run):
    t = _timings(demo_run)
    st = t["stages"]
    assert t["command"] == "run" and RUN_KEYS <= set(st), RUN_KEYS - set(st)
    assert all(v >= 0 for v in st.values())
    assert all(v <= st["total"] for v in st.values())
    # each figure is rounded to 1 ms: a sum of n of them may exceed its whole by n / 2 ms
    assert sum(st[k] for k in PLAN_PARTS) <= st["plan"] + 1e-3 * len(PLAN_PARTS)
    assert sum(st[k] for k in BUILD_PARTS) <= st["build"] + 1e-3 * len(BUILD_PARTS)
    fin = [v for k, v in st.items() if k.startswith("finalize:")]
    assert sum(fin) <= st["finalize"] + 1e-3 * len(fin)
    assert st["plan"] + st["plan_write"] + st["build"] + st["finalize"] <= st["total"] + 4e-3
    rss = t["main_peak_rss_mb"]  # a peak so far: never falls from one stage to the next
    assert set(rss) == set(st) and 0 < rss["plan"] <= rss["build"] <= rss["finalize"] <= rss["total"]


def test_build_figures(demo_run):
    b = _timings(demo_run)["build"]
    assert b["cores"] == min(2, os.cpu_count() or 1) or b["cores"] >= 1
    assert 0 < b["seconds"] <= _timings(demo_run)["stages"]["processing"] + 1e-3
    assert b["worker_cpu_s"] > 0
    assert 0 < b["utilisation"] <= 1.05
    assert b["utilisation"] == pytest.approx(b["worker_cpu_s"] / (b["seconds"] * b["cores"]), rel=1e-2, abs=1e-3)


def test_timings_stay_out_of_the_dataset(demo_run):
    """summary.json has no seconds and no file of the dataset is a timings file; a second
    finalize rewrites the timings file (command finalize) and every manifested file byte for byte."""
    summary, manifest = (demo_run / "summary.json").read_bytes(), (demo_run / "checksums.sha256").read_text()
    assert "stages" not in json.loads(summary) and not [p for p in demo_run.rglob("*timings*")]
    _cli("finalize", str(demo_run), "--timings", str(demo_run.parent / "timings.json"))
    assert (demo_run / "summary.json").read_bytes() == summary and (demo_run / "checksums.sha256").read_text() == manifest
    t = _timings(demo_run)
    assert t["command"] == "finalize" and t["build"] == {} and "finalize:index" in t["stages"]
    assert "cluster_start" not in t["stages"]


def test_build_alone_records_build_stages(demo_run):
    before = _tree(demo_run)
    _cli("build", str(demo_run), "--workers", "1", "--timings", str(demo_run.parent / "timings.json"))
    t = _timings(demo_run)  # every unit done: nothing to process, no cluster, no file of the dataset touched
    assert t["command"] == "build" and {"build", "total"} <= set(t["stages"]) and "processing" not in t["stages"]
    assert _tree(demo_run) == before


def test_stages_record_without_listeners():
    from eochips import progress

    assert not progress._listeners
    with progress.recording() as outer:
        with progress.recording() as inner:
            with progress.stage("a stage nobody hears", "a"):
                pass
            with progress.stage(None, "a"):
                pass
        with pytest.raises(ValueError):
            with progress.stage(None, "b"):
                raise ValueError
    assert outer.outermost and not inner.outermost
    assert set(inner) == {"a", "total"} and set(outer) == {"a", "b", "total"}
    assert 0 <= inner["a"] <= inner["total"] <= outer["total"]
