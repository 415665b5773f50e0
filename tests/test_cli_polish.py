"""The command line as a new user meets it (issue 14, item 8): --version, help texts without
Python type labels, plan --dry-run without -o, progress (planning stages, the unit bar, the
finalizers) on stderr only, no Dask dashboard warning with port 8787 taken, and a missing
embedded sample that says how to build it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
needs_sample = pytest.mark.skipif(not (SAMPLE / "catalog.json").is_file(), reason=f"no sample at {SAMPLE}; run `make demo`")
COMMANDS = [["run"], ["plan"], ["build"], ["finalize"], ["archive"], ["verify-archive"], ["upgrade"], ["schema"],
            ["sample-data"], ["recipes"], ["recipes", "show"], []]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    e = dict(os.environ, COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "eochips.cli", *args], capture_output=True, text=True, cwd=cwd, env=e,
                          timeout=timeout)


def test_version_names_eochips_gdal_rasterio_python():
    import platform

    import rasterio

    import eochips

    p = cli("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (f"eochips {eochips.__version__} (GDAL {rasterio.__gdal_version__}, "
                                f"rasterio {rasterio.__version__}, Python {platform.python_version()})")
    import tomllib

    assert eochips.__version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_has_no_type_placeholders(command):
    p = cli(*command, "--help")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert "Usage:" in text
    # typer's Python type labels: <bool>, <str>, <int>, <list[str]>, <path> ...
    assert re.findall(r"<[a-z_\[\]]+>", text) == [], text
    if command in (["run"], ["build"], ["plan"], ["finalize"]):
        line = next(ln for ln in text.splitlines() if "--progress" in ln)
        assert "Show the planning stages" in line  # the flag is explained
    if command == ["run"]:
        for metavar in ("RECIPE", "PATH", "KEY=VALUE", "N ", "I/N", "tcp://HOST:PORT"):
            assert metavar in text


@needs_sample
def test_plan_dry_run_needs_no_output(tmp_path):
    p = cli("plan", "demo", "--dry-run", "--no-progress", cwd=tmp_path, env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert p.returncode == 0, p.stderr
    assert "units in AOI" in p.stdout and "108" in p.stdout and "(dry run)" in p.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written
    p = cli("plan", "demo", cwd=tmp_path, env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--output/-o" in p.stderr and "--dry-run" in p.stderr
    assert list(tmp_path.iterdir()) == []


@needs_sample
def test_progress_on_stderr_and_no_dashboard_warning(tmp_path):
    """With port 8787 (Dask's dashboard default) taken, a run prints no dashboard warning; the
    stage lines and the unit bar go to stderr, stdout holds only the summary table."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind(("127.0.0.1", 8787))
        held.listen(1)
    except OSError:  # someone else holds it: the condition of the test holds all the same
        held.close()
        held = None
    try:
        p = cli("run", "demo", "-o", str(tmp_path / "d"), "--workers", "1", "--progress", env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    finally:
        if held is not None:
            held.close()
    assert p.returncode == 0, p.stderr
    assert "8787" not in p.stderr and "dashboard" not in p.stderr.lower(), p.stderr
    for line in ("plan: scanning labels of 108 unit(s) ...", "plan: searching landsat ...",
                 "plan: selecting landsat scenes from 2 for 108 unit(s) ...", "plan: probing the assets", "finalize: index ...",
                 "finalize: manifest ..."):
        assert line in p.stderr, (line, p.stderr)
    assert "108/108" in p.stderr  # the unit bar
    assert "108/108" not in p.stdout and "plan:" not in p.stdout and "finalize:" not in p.stdout
    assert "units in plan" in p.stdout and "eochips: demo" in p.stdout
    for flag in ("--no-progress", None):  # off, and off by default when stderr is not a terminal (a pipe here)
        q = cli("finalize", str(tmp_path / "d"), *([flag] if flag else []))
        assert q.returncode == 0, q.stderr
        assert "finalize:" not in q.stderr and "units in plan" in q.stdout


def test_missing_sample_says_how_to_build_it(tmp_path):
    for env, folder in (({}, tmp_path / "sample-data"), ({"EOCHIPS_SAMPLE_DIR": str(tmp_path / "elsewhere")}, tmp_path / "elsewhere")):
        e = dict(env)
        if not e:
            e["EOCHIPS_SAMPLE_DIR"] = ""  # unset for the recipe (an empty value falls back to ./sample-data)
        for args in (["run", "demo", "-o", str(tmp_path / "out")], ["plan", "demo", "--dry-run"]):
            p = cli(*args, cwd=tmp_path, env=e)
            assert p.returncode == 2 and "Traceback" not in p.stderr
            assert f"not built at '{folder}'" in p.stderr, p.stderr
            want = "eochips sample-data --output " + ("sample-data" if not env else str(folder))
            assert want in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # nothing written
    p = cli("upgrade", "demo", cwd=tmp_path)  # reading the recipe alone needs no sample
    assert p.returncode == 0 and "name: demo" in p.stdout
