"""The Clay datacube's selection rules on real item metadata (Planetary Computer Sentinel-1 RTC
frames of one orbit, 2024-04-19, from stac-utils/stac-geoparquet's test data):
``least-cloudy-per-year`` (year order, attempts, centroid rule, stop after n years) and
``nearest-in-time`` (calendar-day window, orbit state of the best overlap, union until the
reference footprint is covered: the seed's replace bug fixed). Expected values come from
``random`` (the seed's own shuffle) and shapely, not from eochips."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
import shapely
from shapely.geometry import box, mapping, shape

from conftest import needs_shared

from eochips.config.models import LeastCloudyPerYearSelection, NearestInTimeSelection
from eochips.geo import EQUAL_AREA, reproject_geometry
from eochips.search import scene_from_item
from eochips.selection import Candidate, Pick, SelectionContext, SelectionFailed, get_strategy

pytestmark = needs_shared
S1_ITEMS = "stac_items/stacgeoparquet__sentinel-1-rtc-pc.json"


@pytest.fixture(scope="module")
def s1_items():
    from conftest import REAL

    items = json.loads((REAL / S1_ITEMS).read_text())
    return sorted(items, key=lambda it: it["properties"]["datetime"])  # a descending pass: north to south in time


def _cands(items, area_ea):
    out = []
    for it in items:
        s = scene_from_item(it)
        foot = reproject_geometry(s.geometry, "EPSG:4326", EQUAL_AREA)
        inter = foot.intersection(area_ea).area
        if inter > 0:
            out.append(Candidate(s, 100.0 * inter / area_ea.area, foot))
    return out


def _ref(dt: str, geom) -> object:
    return scene_from_item({"type": "Feature", "id": f"S2_REF_{dt}", "geometry": mapping(geom), "bbox": list(geom.bounds),
                            "properties": {"datetime": dt}, "assets": {}})


def _match(items, ref, **cfg):
    area = reproject_geometry(ref.geometry, "EPSG:4326", EQUAL_AREA)
    conf = NearestInTimeSelection(kind="nearest-in-time", relative_to="s2", **cfg)
    ctx = SelectionContext(ref.id, area, _cands(items, area), conf, {"s2": [(Pick(ref),)]}, "s1")
    groups = get_strategy("nearest-in-time")(ctx)
    return groups, ctx.notes["match"][0], area


def test_union_of_two_frames_covers_a_footprint_that_straddles_them(s1_items):
    """A reference footprint across the boundary of two consecutive real frames: neither covers
    it alone, their union does; both are chosen (in date order), coverage 100 %."""
    feet = {it["id"]: shape(it["geometry"]) for it in s1_items}
    ids = [it["id"] for it in s1_items]
    a, b = feet[ids[0]], feet[ids[1]]  # consecutive frames of one orbit, overlapping a little
    c = shapely.Point((a.centroid.x + b.centroid.x) / 2, (a.centroid.y + b.centroid.y) / 2)  # mid-track, in the overlap
    ref_geom = box(c.x - 0.15, c.y - 0.35, c.x + 0.15, c.y + 0.35)
    assert a.intersection(ref_geom).area < 0.6 * ref_geom.area and b.intersection(ref_geom).area < 0.6 * ref_geom.area
    ref = _ref("2024-04-20T10:00:00Z", ref_geom)
    groups, note, area = _match(s1_items, ref)
    # the real frames abut with a sliver gap: their union covers 99.989 % of the footprint (cover: 99.9 stops there)
    ea = {i: reproject_geometry(feet[i], "EPSG:4326", EQUAL_AREA) for i in ids[:2]}
    want = 100.0 * shapely.union(ea[ids[0]], ea[ids[1]]).intersection(area).area / area.area
    assert 99.9 <= want < 100.0
    chosen = [p.scene.id for p in groups[0]]
    assert sorted(chosen) == sorted([ids[0], ids[1]])
    assert chosen == sorted(chosen, key=lambda i: next(it["properties"]["datetime"] for it in s1_items if it["id"] == i))
    assert note["coverage"] == pytest.approx(want, abs=1e-6) and note["reason"] == ""
    assert note["same"] == {"sat:orbit_state": "descending"}
    # the seed's loop (datacube.py search_sentinel1) set the covered area to the new frame each time and
    # then intersected it with itself: after the second frame it tests `b.covers(bbox)`, which is False,
    # so it kept adding frames that do not even touch the footprint. Here the union stops at two.
    assert set(chosen) <= {i for i in ids if feet[i].intersects(ref_geom)}


def test_one_frame_that_covers_is_enough(s1_items):
    a = shape(s1_items[0]["geometry"])
    c = a.representative_point()
    ref = _ref("2024-04-19T11:00:00Z", box(c.x - 0.05, c.y - 0.05, c.x + 0.05, c.y + 0.05))
    assert sum(shape(it["geometry"]).covers(ref.geometry) for it in s1_items) >= 1
    groups, note, area = _match(s1_items, ref)
    assert len(groups[0]) == 1
    best = max(s1_items, key=lambda it: reproject_geometry(shape(it["geometry"]), "EPSG:4326", EQUAL_AREA).intersection(area).area)
    assert groups[0][0].scene.id == best["id"]


def test_calendar_day_window_and_orbit_state(s1_items):
    """The window is whole calendar days (the seed's CQL2 date interval (d-3).date()/(d+3).date());
    a frame relabelled ascending (derived) with more overlap fixes the orbit state: the
    descending frames are then left out."""
    a = shape(s1_items[0]["geometry"])
    c = a.representative_point()
    ref_geom = box(c.x - 0.05, c.y - 0.05, c.x + 0.05, c.y + 0.05)
    # 2024-04-19 04:59 is 3 days and ~19 h before 2024-04-22T23:59: inside; one minute into the 23rd... still inside
    for dt, inside in [("2024-04-22T23:59:00Z", True), ("2024-04-16T00:00:01Z", True), ("2024-04-23T00:00:00Z", False),
                       ("2024-04-15T23:59:59Z", False)]:
        ref = _ref(dt, ref_geom)
        if inside:
            groups, note, _ = _match(s1_items, ref)
            assert note["candidates"] >= 1
        else:
            with pytest.raises(SelectionFailed, match=r"no scene within \+-3 days"):
                _match(s1_items, ref)
    asc = json.loads(json.dumps(s1_items[1]))
    asc["id"] = "S1_ASCENDING_DERIVED"
    asc["properties"]["sat:orbit_state"] = "ascending"
    asc["properties"]["eochips:derived_from"] = s1_items[1]["id"] + " (orbit state and footprint changed)"
    asc["geometry"] = mapping(ref_geom.buffer(0.5))
    groups, note, _ = _match(s1_items + [asc], _ref("2024-04-19T12:00:00Z", ref_geom))
    assert [p.scene.id for p in groups[0]] == ["S1_ASCENDING_DERIVED"] and note["same"] == {"sat:orbit_state": "ascending"}


def _s2(i: int, dt: str, cloud: float, geom) -> dict:
    return {"type": "Feature", "id": f"S2_{i:02d}", "geometry": mapping(geom), "bbox": list(geom.bounds),
            "properties": {"datetime": dt, "eo:cloud_cover": cloud}, "assets": {}}


@pytest.mark.parametrize("row", [0, 1, 7, 31])
def test_year_order_is_the_seeds_shuffle(row):
    """datacube.py: random.seed(index); random.shuffle(["2017-01-01/2017-12-31", ...]) - the same order."""
    ranges = [f"{y}-01-01/{y}-12-31" for y in range(2017, 2024)]
    random.seed(row)
    random.shuffle(ranges)
    expected = [int(r[:4]) for r in ranges]
    tile = box(0, 0, 1, 1)
    items = [_s2(y - 2000, f"{y}-06-01T10:00:00Z", 10.0, tile) for y in range(2017, 2024)]
    area = reproject_geometry(tile, "EPSG:4326", EQUAL_AREA)
    conf = LeastCloudyPerYearSelection(kind="least-cloudy-per-year", years=(2017, 2023), n_years=7, attempts=20)
    ctx = SelectionContext("T", area, _cands(items, area), conf, {}, "s2", seed=row)
    groups = get_strategy("least-cloudy-per-year")(ctx)
    assert [e["year"] for e in ctx.notes["years"]] == expected
    assert [g[0].scene.datetime.year for g in groups] == expected


def test_attempts_centroid_and_stop_after_n_years():
    """Per year the least cloudy scene holding the tile's centroid is tried first; a rejected one
    (no match) leads to the next; attempts caps the tries; after n_years matches it stops."""
    tile = box(10, 40, 11, 41)
    west = box(9.0, 39.5, 10.4, 41.5)  # touches the tile but not its centroid
    items = [
        _s2(1, "2019-05-01T10:00:00Z", 1.0, west),       # least cloudy of 2019, but misses the centroid
        _s2(2, "2019-06-01T10:00:00Z", 5.0, tile),       # rejected by accept (no S1)
        _s2(3, "2019-07-01T10:00:00Z", 9.0, tile),       # accepted
        _s2(4, "2020-07-01T10:00:00Z", 3.0, tile),       # rejected
        _s2(5, "2020-08-01T10:00:00Z", 4.0, tile),       # the second (last) attempt of 2020: accepted
        _s2(6, "2021-07-01T10:00:00Z", 2.0, tile),       # accepted
        _s2(7, "2022-07-01T10:00:00Z", 2.0, tile),       # accepted when its year comes before n_years are matched
    ]
    rejected = {"S2_02", "S2_04"}

    def accept(scene):
        return (scene.id not in rejected), ({"reason": "no S1"} if scene.id in rejected else {})

    area = reproject_geometry(tile, "EPSG:4326", EQUAL_AREA)
    years = list(range(2019, 2023))
    random.Random(5).shuffle(years)
    conf = LeastCloudyPerYearSelection(kind="least-cloudy-per-year", years=(2019, 2022), n_years=2, attempts=2, seed=5)
    ctx = SelectionContext("T", area, _cands(items, area), conf, {}, "s2", accept=accept)
    groups = get_strategy("least-cloudy-per-year")(ctx)
    expect_pick = {2019: "S2_03", 2020: "S2_05", 2021: "S2_06", 2022: "S2_07"}
    expect_tried = {2019: ["S2_02", "S2_03"], 2020: ["S2_04", "S2_05"], 2021: ["S2_06"], 2022: ["S2_07"]}
    # walk the shuffled years independently: stop after 2 matches
    picks, seen = [], []
    for y in years:
        if len(picks) == 2:
            break
        seen.append(y)
        if expect_pick[y]:
            picks.append(expect_pick[y])
    assert [g[0].scene.id for g in groups] == picks
    assert [e["year"] for e in ctx.notes["years"]] == seen
    for e in ctx.notes["years"]:
        assert e["s2_tried"] == expect_tried[e["year"]] and e["s2_chosen"] == expect_pick[e["year"]]
        assert e["matched"] == (expect_pick[e["year"]] is not None)
    with_attempts_1 = LeastCloudyPerYearSelection(kind="least-cloudy-per-year", years=(2019, 2019), attempts=1)
    ctx1 = SelectionContext("T", area, _cands(items, area), with_attempts_1, {}, "s2", accept=accept)
    with pytest.raises(SelectionFailed, match="no year matched"):
        get_strategy("least-cloudy-per-year")(ctx1)
    assert ctx1.notes["years"][0]["s2_tried"] == ["S2_02"] and "no S1" in ctx1.notes["years"][0]["reason"]


# --------------------------------------------------------------------------------------
# bad input around the Clay recipe: one line, exit 2, no traceback, nothing written

def _tiles(path, rows):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": props, "geometry": mapping(box(-3.56 + i * 0.01, 50.69, -3.46 + i * 0.01, 50.75))}
        for i, props in enumerate(rows)]}))
    return path


CLAY_CASES = {
    "row out of range": (["aoi.row=5"], "aoi.row 5: ", "has 2 row(s) (0..1)"),
    "negative row": (["aoi.row=-1"], "recipe field 'aoi.row'", "0-based row index"),
    "id field missing": (["aoi.id_field=tile_id"], "aoi.id_field 'tile_id'", "its properties: name"),
    "duplicate tile ids": (["aoi.path={dup}", "aoi.row=all"], "appear in several rows", "must be unique"),
    "row without a path": (["aoi.path=null", "aoi.bbox=[-3.6, 50.6, -3.4, 50.8]"], "recipe field 'aoi'", "give aoi.path"),
    "years reversed": (["sources.s2.selection.years=[2023, 2017]"], "recipe field 'sources.s2.selection'", "first <= last"),
    "match to itself": (["sources.s1.selection.relative_to=s1"], "relative_to", "cannot be matched to itself"),
    "match to an unknown source": (["sources.s1.selection.relative_to=s3"], "unknown source 's3'", "sources: s2, s1, dem"),
    "per-year without a scene grid": (["grid={kind: crs, crs: 'EPSG:32630', resolution: 10}"], "least-cloudy-per-year chooses the scenes of a scene grid", "grid:"),
    "cover out of range": (["sources.s1.selection.cover=0"], "sources.s1.selection.cover", "greater than 0"),
    "unknown unit id field": (["units.id='{tile}_{m}'"], "unknown field(s) ['m']", "valid: col, date, grid, n, product, row, tile"),
}


@pytest.mark.parametrize("case", list(CLAY_CASES))
def test_clay_recipe_bad_input(case, tmp_path, monkeypatch):
    from conftest import run_cli

    sets, first, second = CLAY_CASES[case]
    tiles = _tiles(tmp_path / "tiles.geojson", [{"name": "30UVB"}, {"name": "30UVC"}])
    dup = _tiles(tmp_path / "dup.geojson", [{"name": "30UVB"}, {"name": "30UVB"}])
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("user file")
    monkeypatch.chdir(tmp_path / "work")
    args = ["run", "clay-datacube", "-o", str(tmp_path / "out"), "--no-progress", "--set", f"aoi.path={tiles}"]
    for s_ in sets:
        args += ["--set", s_.replace("{dup}", str(dup))]
    proc = run_cli(*args, env={"MGRS_TILES": str(tiles)})
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, (case, proc.stderr[-800:])
    assert err.startswith("error: ") and first in err and second in err, (case, err)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3, proc.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["keep.txt"]
