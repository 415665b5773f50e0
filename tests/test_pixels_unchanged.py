"""Engine v2 reproduces engine v1's pixels: every chip array of the crop recipe's relaxed-QA run
and of the gap-filling recipe equals what v1 (commit debc942) wrote, decoded and hashed
(``tests/fixtures/pixels-v1.json``, recorded by ``tests/fixtures/record_pixels.py``; band
descriptions and tags may differ, pixels may not). The demo's are checked in test_demo.py.

The runs read the real Exeter granules through a static catalog of local files (v1 recorded
them the same way); ``test_crop_recipe.py`` runs the same recipe over the pgstac API and HTTP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import crop_recipe, derived_cloudy_items, gap_recipe, needs_shared, run_cli, write_recipe, FMASK_RULE

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from record_pixels import hash_chips  # noqa: E402

pytestmark = needs_shared
V1 = json.loads((Path(__file__).parent / "fixtures" / "pixels-v1.json").read_text())




@pytest.mark.parametrize("case", ["crop_relaxed_qa", "gap_filling"])
def test_pixels_equal_engine_v1(case, local_catalog, cdl_raster, tmp_path):
    data = (crop_recipe(str(local_catalog), cdl_raster, **{FMASK_RULE: 100}) if case == "crop_relaxed_qa"
            else gap_recipe(str(local_catalog), cdl_raster))
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = hash_chips(out), V1[case]
    assert sorted(got) == sorted(want)  # the same chips kept, the same files
    assert [f for f in want if got[f] != want[f]] == []
    assert len(want) > 80
