"""The built-in collection profiles (src/eochips/profiles.py) against real STAC items recorded from
the catalogs they describe (``../shared/data/real/stac_items``: Planetary Computer sentinel-2-l2a,
sentinel-1-rtc, cop-dem-glo-30; Earth Search v1 sentinel-2-l2a): asset keys, dtypes, fill values,
native pixel sizes, the processing-baseline DN offset, and the properties the Clay recipe relies on."""

from __future__ import annotations

import json
import math

import pytest

from conftest import REAL, needs_shared
from eochips.profiles import get_profile

pytestmark = needs_shared
ITEMS = REAL / "stac_items"
S2_PC_FILES = ["stacgeoparquet__sentinel-2-l2a-pc.json", "odcstac__site2-2020_jun_jul-35MNM.geojson",
               "odcstac__S2B_MSIL2A_20190629T212529_R043_T06VVN_raster_ext.json"]
FILES = {
    "sentinel-2-l2a-pc": S2_PC_FILES,
    "sentinel-2-l2a-earthsearch": ["pystacclient__earthsearch_v1_sentinel-2-l2a_extracted.json"],
    "sentinel-1-rtc": ["stacgeoparquet__sentinel-1-rtc-pc.json"],
    "cop-dem-glo-30": ["stacgeoparquet__cop-dem-glo-30-pc.json"],
}


def _items(name: str) -> list[dict]:
    d = json.loads((ITEMS / name).read_text())
    if isinstance(d, list):
        return d
    return d["features"] if "features" in d else [d]


def _cases(profile: str):
    return [pytest.param(profile, it, id=f"{profile}:{it['id'][:48]}") for f in FILES[profile] for it in _items(f)]


ALL = [c for p in FILES for c in _cases(p)]


def test_every_file_holds_items():
    for p, files in FILES.items():
        for f in files:
            assert _items(f), f
    assert len(ALL) == 4 + 13 + 1 + 7 + 4 + 4


@pytest.mark.parametrize("profile,item", ALL)
def test_asset_keys_dtypes_nodata_resolution(profile, item):
    prof = get_profile(profile)
    assert item["collection"] in prof.collections
    specs = list(prof.bands) + ([prof.qa.as_band()] if prof.qa else [])
    for b in specs:
        assert b.asset in item["assets"], f"{profile}: band {b.name} reads asset {b.asset!r}, not in {item['id']} ({sorted(item['assets'])})"
        a = item["assets"][b.asset]
        rb = (a.get("raster:bands") or [None])[b.index - 1]
        if rb is not None:
            assert rb["data_type"] == b.dtype, (b.name, rb, b.dtype)
            if "nodata" in rb:
                declared = float(rb["nodata"]) if rb["nodata"] != "nan" else math.nan
                if math.isnan(b.nodata) and not math.isnan(declared):
                    # S1 RTC: the files declare -32768 and eochips' fill is NaN. Not a conflict only
                    # because the reader takes a file's declared nodata first (reading.read_sources:
                    # ds.nodatavals, else the profile's): the -32768 pixels are masked, then filled NaN.
                    assert profile == "sentinel-1-rtc" and declared == -32768, (profile, b.name, rb)
                else:
                    assert declared == b.nodata or (math.isnan(declared) and math.isnan(b.nodata)), (b.name, rb, b.nodata)
            if "spatial_resolution" in rb and b.resolution is not None:
                assert float(rb["spatial_resolution"]) == float(b.resolution), (b.name, rb, b.resolution)
            if "scale" in rb:
                assert rb["scale"] == pytest.approx(b.scale), (b.name, rb)
        gsd = a.get("gsd")
        if gsd is not None and b.resolution is not None and profile.startswith("sentinel-2"):
            assert float(gsd) == float(b.resolution), (b.name, gsd, b.resolution)


@pytest.mark.parametrize("profile,item", [c for c in ALL if c.values[0].startswith("sentinel-2")])
def test_s2_baseline_offset(profile, item):
    """Processing baseline 04.00 (25 Jan 2022) added BOA_ADD_OFFSET = -1000: reflectance =
    (DN - 1000) / 10000 from 04.00 on. Earth Search v1 states the same in ``raster:bands``
    (offset -0.1 with scale 1e-4 on its baseline 05.xx items, ``earthsearch:boa_offset_applied``)."""
    prof = get_profile(profile)
    p = item["properties"]
    baseline = p["s2:processing_baseline"]
    major, minor = (int(x) for x in baseline.split("."))
    want = -1000 if (major, minor) >= (4, 0) else 0
    assert prof.offset_dn(p) == want, (item["id"], baseline)
    for b in prof.bands:
        rb = (item["assets"][b.asset].get("raster:bands") or [None])[0]
        if rb is not None and "offset" in rb:
            # the physical value eochips computes for DN 0 equals the catalog's offset
            assert prof.offset_dn(p) * b.scale + b.offset == pytest.approx(rb["offset"]), (b.name, rb)
    if profile.endswith("earthsearch"):
        assert p["earthsearch:boa_offset_applied"] is True and want == -1000


@pytest.mark.parametrize("profile,item", [c for c in ALL if c.values[0].startswith("sentinel-2")])
def test_s2_properties_the_clay_recipe_uses(profile, item):
    p = item["properties"]
    assert 0 <= p["s2:nodata_pixel_percentage"] <= 100 and 0 <= p["eo:cloud_cover"] <= 100
    tile = get_profile(profile).tile_of(item["id"], p)
    assert tile is not None and tile in item["id"], (tile, item["id"])


@pytest.mark.parametrize("profile,item", _cases("sentinel-1-rtc"))
def test_s1_items_carry_the_orbit_state(profile, item):
    p = item["properties"]
    assert p["sat:orbit_state"] in ("ascending", "descending")
    assert {"VV", "VH"} <= set(p["sar:polarizations"])
    assert p["datetime"] and item["geometry"]["type"] in ("Polygon", "MultiPolygon")


def test_dem_profile_band():
    prof = get_profile("cop-dem-glo-30")
    (b,) = prof.bands
    assert (b.name, b.asset, b.dtype, b.scale, b.offset) == ("elevation", "data", "float32", 1.0, 0.0) and math.isnan(b.nodata)
    for it in _items(FILES["cop-dem-glo-30"][0]):
        assert it["properties"]["gsd"] == b.resolution and it["properties"]["proj:epsg"] == 4326
