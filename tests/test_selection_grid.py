"""Selection strategies (seed 001's and 000's rules) over a SelectionContext, and grids and units
with odc-geo, on small hand-checkable cases."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from affine import Affine
from pyproj import CRS
from shapely.geometry import box

from eochips.config.models import AllSelection, FirstMiddleLastSelection, LeastCloudySelection, SeededByDateSelection
from eochips.errors import RecipeError
from eochips.geo import Grid, grid_for_aoi, tile_units, unit_size_px
from eochips.search import Scene
from eochips.selection import COVERAGE_TOL, Candidate, SelectionContext, SelectionFailed, get_strategy

T0 = datetime(2022, 3, 1, tzinfo=timezone.utc)


def _cands(coverages, clouds=None):
    clouds = clouds or [0.0] * len(coverages)
    return [Candidate(Scene(f"s{i}", "c", T0 + timedelta(days=10 * i), box(0, 0, 1, 1), clouds[i]), cov)
            for i, cov in enumerate(coverages)]


def _ids(groups):
    return [[p.scene.id for p in g] for g in groups]


def _ctx(cands, cfg, key="13RCN"):
    return SelectionContext(key, box(0, 0, 1, 1), cands, cfg)


FML = FirstMiddleLastSelection(kind="first-middle-last")


def test_first_middle_last_takes_code_n_over_2():
    fml = get_strategy("first-middle-last")
    assert _ids(fml(_ctx(_cands([100, 100, 100, 100]), FML))) == [["s0"], ["s2"], ["s3"]]  # n=4: n//2 = 2, the later middle
    assert _ids(fml(_ctx(_cands([100] * 5), FML))) == [["s0"], ["s2"], ["s4"]]


def test_coverage_fallback_stops_at_first_threshold_with_three():
    fml = get_strategy("first-middle-last")
    # at 100 %: only s0 and s4; at 90 %: s0, s1, s4 -> kept; s2 (85 %) is not included
    assert _ids(fml(_ctx(_cands([100, 95, 85, 40, 100]), FML))) == [["s0"], ["s1"], ["s4"]]
    assert _ids(fml(_ctx(_cands([55, 52, 51, 49]), FML))) == [["s0"], ["s1"], ["s2"]]  # reached only at 50 %
    with pytest.raises(SelectionFailed, match=r"2 scene\(s\) cover >= 50%, need 3"):
        fml(_ctx(_cands([100, 60, 49]), FML))


def test_coverage_within_float_tolerance_counts_as_full():
    """A measured coverage of 99.99999999961 % (reprojected polygon areas) is 100 %: the 100 %
    threshold keeps it instead of falling back to 90 % (or dropping a whole row of chips)."""
    fml = get_strategy("first-middle-last")
    near = 100 - 3.9e-10
    assert near < 100 and 100 - near < COVERAGE_TOL
    got = fml(_ctx(_cands([near, 100, near, 92]), FML))
    assert _ids(got) == [["s0"], ["s1"], ["s2"]]  # s3 (92 %) would join only at the 90 % threshold
    assert _ids(fml(_ctx(_cands([100 - 2 * COVERAGE_TOL, 100, 100, 95]), FML))) == [["s0"], ["s2"], ["s3"]]


def test_first_middle_last_never_duplicates_a_scene():
    """With fewer than 3 scenes the unit is dropped; min_scenes < 3 is refused by the config."""
    fml = get_strategy("first-middle-last")
    with pytest.raises(SelectionFailed):
        fml(_ctx(_cands([100, 100]), FML))
    with pytest.raises(ValueError, match="greater than or equal to 3"):
        FirstMiddleLastSelection(kind="first-middle-last", min_scenes=2)
    for n in range(3, 9):
        got = _ids(fml(_ctx(_cands([100] * n), FML)))
        assert len({g[0] for g in got}) == 3


def test_least_cloudy_all_and_intersecting():
    lc = get_strategy("least-cloudy")
    cfg = LeastCloudySelection(kind="least-cloudy", n_scenes=2, coverage_thresholds=[100])
    assert _ids(lc(_ctx(_cands([100, 100, 100, 40], clouds=[30, 5, 10, 0]), cfg))) == [["s1"], ["s2"]]  # s3 clearer, not covering
    allsel = get_strategy("all")
    assert _ids(allsel(_ctx(_cands([100, 10, 60]), AllSelection(kind="all", coverage_thresholds=[50])))) == [["s0"], ["s2"]]
    inter = get_strategy("intersecting")
    assert _ids(inter(_ctx(_cands([30, 10, 60]), None))) == [["s0", "s1", "s2"]]  # one step, three scenes, by date
    with pytest.raises(RecipeError, match="unknown selection kind 'nope'; valid: all, first-middle-last"):
        get_strategy("nope")


def test_seeded_by_date_is_the_seeded_draw_per_tile():
    sel = get_strategy("seeded-by-date")
    cfg = SeededByDateSelection(kind="seeded-by-date", min_scenes=6, n_scenes=6, seed=42)
    cands = _cands([100] * 8)
    want = sorted(random.Random("42:13RCN").sample(range(8), 6))
    assert _ids(sel(_ctx(cands, cfg, key="13RCN"))) == [[f"s{i}"] for i in want]
    other = sorted(random.Random("42:14RCN").sample(range(8), 6))
    assert _ids(sel(_ctx(cands, cfg, key="14RCN"))) == [[f"s{i}"] for i in other]


def test_grid_from_crs_resolution_and_units():
    aoi = box(990, 1980, 990 + 30 * 70, 1980 + 30 * 50)  # on multiples of 30 m: the origin needs no snapping
    g = grid_for_aoi("EPSG:32630", 30, None, aoi, CRS("EPSG:32630"))
    snapped = grid_for_aoi("EPSG:32630", 30, None, box(1000, 2000, 3000, 3000), CRS("EPSG:32630"))
    assert (snapped.affine.c, snapped.affine.f) == (990.0, 3000.0)
    assert tuple(g.affine)[:6] == (30.0, 0.0, 990.0, 0.0, -30.0, 3480.0) and tuple(g.shape) == (50, 70)
    grid = Grid(0, "", g)
    units = tile_units(grid, 16, aoi)
    assert [(u.row, u.col) for u in units][:5] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert len(units) == (50 // 16) * (70 // 16)
    u = units[5]  # row 1, col 1
    assert u.gbox.affine == Affine(30, 0, 990 + 16 * 30, 0, -30, 3480 - 16 * 30) and tuple(u.gbox.shape) == (16, 16)
    assert u.polygon.bounds == (990 + 16 * 30, 3480 - 2 * 16 * 30, 990 + 2 * 16 * 30, 3480 - 16 * 30)
    # only units inside the AOI: a smaller AOI keeps fewer, and min_fraction relaxes it
    inner = box(990, 3480 - 16 * 30 * 1.5, 990 + 16 * 30 * 1.5, 3480)
    assert [(x.row, x.col) for x in tile_units(grid, 16, inner)] == [(0, 0)]
    assert [(x.row, x.col) for x in tile_units(grid, 16, inner, min_fraction=0.5)] == [(0, 0), (0, 1), (1, 0)]


def test_unit_size_in_metres():
    g = grid_for_aoi("EPSG:32629", 10, (500000, 6000000), box(500000, 5988000, 512000, 6000000), CRS("EPSG:32629"))
    assert unit_size_px(g, None, 1200) == 120
    with pytest.raises(RecipeError, match="1205 m is not a whole number of 10 m pixels"):
        unit_size_px(g, None, 1205)
    with pytest.raises(RecipeError, match="2000 px is larger than the grid"):
        unit_size_px(g, 2000, None)
