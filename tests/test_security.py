"""Credentials never leak: a fake Earthdata token and fake SAS-signed hrefs are used for real
reads, then every output file, the state, the plan and the captured logs are searched for them.
Also: no input can make eochips write outside the output folder, and YAML is loaded safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import crop_recipe, derived_cloudy_items, gap_recipe, needs_shared, run_cli, write_recipe
from servers import RangeServer

pytestmark = needs_shared
TOKEN = "FAKE-EDL-TOKEN-7d1c9e0b5a"
SIG = "FAKESASSIG9f3e2d1c"
SAS = f"st=2024-01-01T00%3A00Z&se=2099-01-01T00%3A00Z&sp=rl&sv=2021-06-08&sr=b&sig={SIG}"


def _leaks(root: Path, texts: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {t}" for t in texts if t.encode() in data]
    return hits


@pytest.fixture()
def signed_catalog(hls_dir, tmp_path):
    d, items = hls_dir
    with RangeServer(d, require_query=f"sig={SIG}") as srv:
        feats = json.loads(json.dumps(items + derived_cloudy_items(items)))
        for it in feats:
            it["id"] = "../../" + it["id"]  # hostile ids must not steer any path
            for a in it["assets"].values():
                a["href"] = f"{srv.url}/{a['href']}?{SAS}"
        cat = tmp_path / "items.json"
        cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        yield cat, srv


def test_token_and_sas_never_written_or_logged(signed_catalog, cdl_raster, tmp_path):
    cat, srv = signed_catalog
    # the loopback test server must be listed: credentials go only to the hosts of search.auth_hosts
    edl = {"sources.hls.search.auth": "earthdata", "sources.hls.search.auth_hosts": ["127.0.0.1"]}
    recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(str(cat), cdl_raster, **edl))
    out = tmp_path / "work" / "out"
    env = {"EARTHDATA_TOKEN": TOKEN}
    # the stages one by one, on the two-source gap-filling recipe: build must get the signed hrefs
    # of both sources back by fetching their scenes again (engine v1 searched the main source only)
    gap = write_recipe(tmp_path / "gap.yaml", gap_recipe(str(cat), cdl_raster, **edl))
    runs = [run_cli("run", str(recipe), "-o", str(out), "--no-progress", env=env),
            run_cli("plan", str(gap), "-o", str(tmp_path / "work" / "staged"), env=env),
            run_cli("build", str(tmp_path / "work" / "staged"), "--no-progress", env=env),
            run_cli("finalize", str(tmp_path / "work" / "staged"), env=env)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert TOKEN not in proc.stdout + proc.stderr and SIG not in proc.stdout + proc.stderr
    assert f"Bearer {TOKEN}" in srv.authorization  # the token was really used for the reads
    assert json.loads((out / "summary.json").read_text())["kept"] > 0
    staged = tmp_path / "work" / "staged"
    assert json.loads((staged / "summary.json").read_text())["kept"] > 0
    assert len(list((staged / "chips").glob("*_cmask.tif"))) > 0  # the cloudy source's signed hrefs were restored
    # the chips both recipes share are the same bytes
    ours = {ln.split("  ")[1]: ln.split("  ")[0] for ln in (out / "checksums.sha256").read_text().splitlines()}
    theirs = {ln.split("  ")[1]: ln.split("  ")[0] for ln in (staged / "checksums.sha256").read_text().splitlines()}
    shared = [k for k in ours if k.startswith("chips/") and k in theirs]
    assert shared and all(ours[k] == theirs[k] for k in shared)
    assert _leaks(tmp_path / "work", [TOKEN, SIG]) == []
    assert "REDACTED" in (out / "plan" / "scenes.parquet").read_bytes().decode("latin-1")
    # nothing was written outside the output folders despite '../../' item ids
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out", "staged"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gap.yaml", "items.json", "r.yaml", "work"]


def test_failure_messages_are_redacted(signed_catalog, cdl_raster, tmp_path):
    cat, srv = signed_catalog
    srv.faults.missing = {p.name for p in srv.root.glob("*.B03.tif")}
    recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(str(cat), cdl_raster, **{"reading.max_retries": 1}))
    proc = run_cli("run", str(recipe), "-o", str(tmp_path / "out"), env={"EARTHDATA_TOKEN": TOKEN})
    assert proc.returncode == 2 and "404" in proc.stderr and "B03" in proc.stderr
    assert SIG not in proc.stderr and "sig=REDACTED" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = run_cli("run", str(tmp_path / "evil.yaml"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
