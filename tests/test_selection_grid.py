"""Selection strategies (seed 001's rules) and chip tiling, on small hand-checkable cases."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pyproj import CRS
from shapely.geometry import box

from eochips.config import GridConfig, SelectionConfig
from eochips.errors import RecipeError
from eochips.grid import chip_id, make_grid, tile_chips
from eochips.search import Scene
from eochips.selection import Candidate, SelectionFailed, get_strategy

T0 = datetime(2022, 3, 1, tzinfo=timezone.utc)


def _cands(coverages, clouds=None):
    clouds = clouds or [0.0] * len(coverages)
    return [Candidate(Scene(f"s{i}", "c", T0 + timedelta(days=10 * i), box(0, 0, 1, 1), clouds[i]), cov)
            for i, cov in enumerate(coverages)]


def test_first_middle_last_takes_code_n_over_2():
    fml = get_strategy("first-middle-last")
    got = fml(_cands([100, 100, 100, 100]), SelectionConfig())
    assert [s.id for s in got] == ["s0", "s2", "s3"]  # n = 4: n // 2 = 2, the later middle (the seed's code)
    got = fml(_cands([100] * 5), SelectionConfig())
    assert [s.id for s in got] == ["s0", "s2", "s4"]


def test_coverage_fallback_stops_at_first_threshold_with_three():
    fml = get_strategy("first-middle-last")
    # at 100 %: only s0 and s4; at 90 %: s0, s1, s4 -> kept; s2 (85 %) is not included
    got = fml(_cands([100, 95, 85, 40, 100]), SelectionConfig())
    assert [s.id for s in got] == ["s0", "s1", "s4"]
    got = fml(_cands([55, 52, 51, 49]), SelectionConfig())
    assert [s.id for s in got] == ["s0", "s1", "s2"]  # reached only at 50 %
    with pytest.raises(SelectionFailed, match=r"2 scene\(s\) cover >= 50%, need 3"):
        fml(_cands([100, 60, 49]), SelectionConfig())


def test_least_cloudy_and_all():
    lc = get_strategy("least-cloudy")
    got = lc(_cands([100, 100, 100, 40], clouds=[30, 5, 10, 0]), SelectionConfig(n_scenes=2, coverage_thresholds=[100]))
    assert [s.id for s in got] == ["s1", "s2"]  # s3 is clearer but does not cover the chip
    allsel = get_strategy("all")
    assert [s.id for s in allsel(_cands([100, 10, 60]), SelectionConfig(coverage_thresholds=[50]))] == ["s0", "s2"]
    with pytest.raises(RecipeError, match="unknown strategy 'nope'"):
        get_strategy("nope")


def test_grid_from_crs_resolution_and_chip_ids():
    aoi = box(990, 1980, 990 + 30 * 70, 1980 + 30 * 50)  # on multiples of 30 m: the origin needs no snapping
    g = make_grid(GridConfig(crs="EPSG:32630", resolution=30, chip_size=16), aoi, CRS("EPSG:32630"))
    snapped = make_grid(GridConfig(crs="EPSG:32630", resolution=30, chip_size=16), box(1000, 2000, 3000, 3000), CRS("EPSG:32630"))
    assert snapped.transform[2] == 990.0 and snapped.transform[5] == 3000.0
    assert g.transform == (30.0, 0.0, 990.0, 0.0, -30.0, 3480.0) and (g.width, g.height) == (70, 50)
    chips = tile_chips(g, 16, aoi)
    assert [c.id for c in chips][:5] == ["chip_000_000", "chip_000_001", "chip_000_002", "chip_000_003", "chip_001_000"]
    assert len(chips) == (50 // 16) * (70 // 16)
    c = chips[5]
    assert c.bounds == (990 + 16 * 30, 3480 - 2 * 16 * 30, 990 + 2 * 16 * 30, 3480 - 16 * 30)
    # only chips inside the AOI: a smaller AOI keeps fewer, and min_fraction relaxes it
    inner = box(990, 3480 - 16 * 30 * 1.5, 990 + 16 * 30 * 1.5, 3480)
    assert [c.id for c in tile_chips(g, 16, inner)] == ["chip_000_000"]
    assert [c.id for c in tile_chips(g, 16, inner, min_fraction=0.5)] == ["chip_000_000", "chip_000_001", "chip_001_000"]
    assert chip_id(3, 12) == "chip_003_012"
