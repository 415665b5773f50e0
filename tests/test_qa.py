"""Fmask decoding on native HLS v2.0 granules, against the HLS v2.0 user guide's bit table
(bit 0 cirrus, 1 cloud, 2 adjacent, 3 shadow, 4 snow/ice, 5 water, 6-7 aerosol; fill 255)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from conftest import REAL, needs_shared
from eochips.qa import decode_fmask, fmask_bad_pct

pytestmark = needs_shared
GRANULES = sorted((REAL / "hls_fmask_native").glob("*.Fmask.tif")) if REAL.is_dir() else []


@pytest.mark.parametrize("path", GRANULES, ids=lambda p: p.name)
def test_fmask_bits_match_user_guide(path):
    with rasterio.open(path) as ds:
        fm = ds.read(1)
        assert ds.dtypes[0] == "uint8" and ds.shape == (3660, 3660)
    layers = decode_fmask(fm)
    v = fm.astype(np.int64)
    fill = v == 255
    table = {"cirrus": 1, "cloud": 2, "adjacent": 4, "shadow": 8, "snow_ice": 16, "water": 32}
    for name, mask in table.items():
        np.testing.assert_array_equal(getattr(layers, name), ((v & mask) > 0) & ~fill, err_msg=name)
    np.testing.assert_array_equal(layers.valid, ~fill)
    np.testing.assert_array_equal(layers.aerosol[~fill], (v[~fill] // 64) % 4)


def test_native_granule_contents():
    """What the two real granules hold (independent counts), so the decoding is exercised."""
    s30 = next(p for p in GRANULES if ".S30." in p.name)
    l30 = next(p for p in GRANULES if ".L30." in p.name)
    with rasterio.open(s30) as ds:
        a = decode_fmask(ds.read(1))
    assert a.cloud.sum() > 0 and a.shadow.sum() > 0
    with rasterio.open(l30) as ds:
        b = decode_fmask(ds.read(1))
    assert b.cloud.sum() == 0 and b.water.sum() > 0 and b.snow_ice.sum() > 0  # MANIFEST: water/snow, no cloud
    assert not a.cirrus.any() and not b.cirrus.any()  # reserved in v2.0


def test_bad_pct_rule_on_native_windows():
    s30 = next(p for p in GRANULES if ".S30." in p.name)
    with rasterio.open(s30) as ds:
        fm = ds.read(1)
    bad_mask = 0b11011
    for r, c in [(0, 0), (1000, 1000), (2000, 500), (3000, 3000), (1500, 2600)]:
        win = fm[r:r + 224, c:c + 224]
        vals = win[((win.astype(int) & bad_mask) != 0) & (win != 255)]
        want = 0.0 if vals.size == 0 else np.unique(vals, return_counts=True)[1].max() * 100 / win.size
        assert fmask_bad_pct(win, ["cirrus", "cloud", "shadow", "snow_ice"]) == pytest.approx(want)
