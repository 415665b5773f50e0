"""cloud-buster's greedy multi-coverage selection (``greedy-coverage``, azavea/cloud-buster
@fe6c339) on real Sentinel-2 footprints and cloud covers: the 13 Planetary Computer items of
tile 35MNM (2020-06..07; their north-west corners differ from date to date) and the Earth
Search items of tiles 24MUV/24MVV/24MUA (adjacent footprints), each with an AOI that
straddles footprint edges, so that partial coverage matters.

Every expectation comes from :func:`reference`: the rule written again here with shapely and
pyproj directly (its own projection, its own loop re-scoring every pair at every step), never
from eochips' strategy. eochips runs through its real code path: a static catalog (the items
as a FeatureCollection file), ``make_plan`` (crs grid, tile units) and ``eochips plan``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from shapely.geometry import box, shape

from conftest import REAL, needs_shared, run_cli, write_recipe

from eochips.config import parse_recipe
from eochips.plan import load_plan, make_plan, write_plan
from eochips.writers import OutputStore

pytestmark = needs_shared
PC_ITEMS = "stac_items/odcstac__site2-2020_jun_jul-35MNM.geojson"
ES_ITEMS = "stac_items/pystacclient__earthsearch_v1_sentinel-2-l2a_extracted.json"
PC_AOI = (26.98, -7.40, 27.06, -7.245)
"""Lon/lat box over the north-west corner of tile 35MNM: its west strip (lon < 27) is in no
footprint, and the corner cut of each date's footprint crosses it at a different place."""
ES_AOI = (-40.0, -4.70, -39.75, -4.45)
"""Lon/lat box across the edges of 24MUV, 24MVV and 24MUA: its north-east corner is in none."""
EA = "EPSG:6933"
SCORE_TOL = 1e-9
"""Relative tolerance of areas (m^2) against the reference, which projects the footprints as
eochips documents it (edges split to 1/32 of the geometry's larger extent, then pyproj); see
:func:`to_ea` for why the split matters."""


# --------------------------------------------------------------------------------------
# the independent reference

_TO_EA = pyproj.Transformer.from_crs("EPSG:4326", EA, always_xy=True)


def to_ea(geom, src: str = "EPSG:4326", step: float | None = None):
    """``geom`` in EPSG:6933, its edges first split into segments of at most ``step`` (default
    1/32 of the larger side of its bounds, the split eochips documents for its reprojection).

    The split matters at the square-metre level: a straight lon/lat edge is a curve in the
    equal-area CRS, and the real 35MNM footprints share nearly coincident edges whose slivers
    score a few m^2 (picks 5-8 of the default run); the order of those sliver picks depends on
    how the edges were split. The substantial picks do not (test_real_footprints_35mnm_default_rule)."""
    tr = _TO_EA if src == "EPSG:4326" else pyproj.Transformer.from_crs(src, EA, always_xy=True)
    if step is None:
        x0, y0, x1, y1 = geom.bounds
        step = max(x1 - x0, y1 - y0) / 32 or 1.0
    dense = shapely.segmentize(geom, step)
    return shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def _when(it: dict) -> datetime:
    return datetime.fromisoformat(it["properties"]["datetime"].replace("Z", "+00:00"))


def reference(items: list[dict], aoi_ll, coverage_count: int = 3, max_uncovered: float = 6.15e6, backstop: bool = True,
              max_selections: int | None = None, step: float | None = None) -> dict:
    """The greedy rule (cloud-buster filter.py, with an exact max_selections, unknown cloud = 100 %):
    scenes newest first (datetime descending, id ascending), score = area(footprint ∩ copy) x
    (1 - cloud/100), the first best pair in (scene, copy) order wins; every pair re-scored each round."""
    aoi = to_ea(aoi_ll, step=step)
    feet = {it["id"]: to_ea(shape(it["geometry"]), step=step) for it in items}
    pool = [it for it in items if feet[it["id"]].intersection(aoi).area > 0]
    pool.sort(key=lambda it: it["id"])
    pool.sort(key=_when, reverse=True)

    def clear(it):
        cc = it["properties"].get("eo:cloud_cover")
        return 0.0 if cc is None else 1 - cc / 100

    def run(copies: list, limit: int | None, role: str) -> tuple[list, str]:
        picks = []
        while True:
            if sum(c.area for c in copies) <= max_uncovered:
                return picks, "covered"
            if limit is not None and len(picks) >= limit:
                return picks, "max_selections"
            if not pool:
                return picks, "no_candidates"
            best = (0.0, None, None)
            for i, it in enumerate(pool):
                for j, c in enumerate(copies):
                    s = feet[it["id"]].intersection(c).area * clear(it)
                    if s > best[0]:
                        best = (s, i, j)
            if best[1] is None:
                return picks, "no_score"
            it = pool.pop(best[1])
            copies[best[2]] = copies[best[2]].difference(feet[it["id"]])
            picks.append({"scene_id": it["id"], "role": role, "copy": best[2] if role == "primary" else None,
                          "score": best[0], "remaining_m2": sum(c.area for c in copies),
                          "cloud_cover": it["properties"].get("eo:cloud_cover")})

    copies = [aoi] * coverage_count
    primary, stop_p = run(copies, max_selections, "primary")
    out = {"aoi_area_m2": aoi.area, "picks": primary, "stop_primary": stop_p, "stop_backstop": "disabled",
           "remaining_primary_m2": sum(c.area for c in copies), "remaining_backstop_m2": None, "feet": feet}
    if backstop and primary:
        one = [aoi]
        more, out["stop_backstop"] = run(one, None, "backstop")
        out["picks"] = primary + more
        out["remaining_backstop_m2"] = one[0].area
    return out


def assert_log_equals(log: dict, ref: dict) -> None:
    """eochips' selection log against the reference: the same picks in the same order, roles
    and copies; scores and remaining areas within :data:`SCORE_TOL`."""
    got = [(p["scene_id"], p["role"], p["copy"]) for p in log["picks"]]
    want = [(p["scene_id"], p["role"], p["copy"]) for p in ref["picks"]]
    assert got == want
    assert [p["number"] for p in log["picks"]] == list(range(1, len(want) + 1))
    for p, r in zip(log["picks"], ref["picks"]):
        assert p["score"] == pytest.approx(r["score"], rel=SCORE_TOL)
        assert p["remaining_m2"] == pytest.approx(r["remaining_m2"], rel=SCORE_TOL, abs=1.0)
        assert p["cloud_cover"] == r["cloud_cover"]
    assert log["aoi_area_m2"] == pytest.approx(ref["aoi_area_m2"], rel=SCORE_TOL)
    assert log["remaining_primary_m2"] == pytest.approx(ref["remaining_primary_m2"], rel=SCORE_TOL, abs=1.0)
    if ref["remaining_backstop_m2"] is None:
        assert log["remaining_backstop_m2"] is None
    else:
        assert log["remaining_backstop_m2"] == pytest.approx(ref["remaining_backstop_m2"], rel=SCORE_TOL, abs=1.0)
    assert (log["stop_primary"], log["stop_backstop"]) == (ref["stop_primary"], ref["stop_backstop"])


# --------------------------------------------------------------------------------------
# the setups: real items as a static catalog, a crs grid of tile units


@pytest.fixture(scope="module")
def pc_items() -> list[dict]:
    return json.loads((REAL / PC_ITEMS).read_text())["features"]


@pytest.fixture(scope="module")
def es_items() -> list[dict]:
    return json.loads((REAL / ES_ITEMS).read_text())["features"]


def catalog(path: Path, items: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def recipe(cat: Path, bbox, selection: dict | None = None, profile: str = "sentinel-2-l2a-pc", band: str = "B04",
           crs: str = "EPSG:32735", size: int = 128, **search) -> dict:
    return {
        "version": 2, "name": "greedy-test",
        "aoi": {"bbox": list(bbox), "crs": "EPSG:4326"},
        "sources": {"s2": {"search": {"catalog": str(cat), "collections": ["sentinel-2-l2a"],
                                      "sortby": ["-properties.datetime"], "max_items": 1024, **search},
                           "profile": profile, "bands": [band] if profile.endswith("pc") else ["red"],
                           "selection": {"kind": "greedy-coverage", **(selection or {})}, "resampling": "nearest"}},
        "grid": {"kind": "crs", "crs": crs, "resolution": 10},
        "units": {"kind": "tile", "size": size},
        "output": {"layout": {"kind": "seed-001", "source": "s2"}},
    }


def plan_of(data: dict):
    return make_plan(parse_recipe(data), probe=False)


@pytest.fixture(scope="module")
def pc_cat(pc_items, tmp_path_factory) -> Path:
    return catalog(tmp_path_factory.mktemp("pc") / "items.json", pc_items)


@pytest.fixture(scope="module")
def es_cat(es_items, tmp_path_factory) -> Path:
    return catalog(tmp_path_factory.mktemp("es") / "items.json", es_items)


def print_log(log: dict) -> None:
    print(f"AOI {log['aoi_area_m2']:.1f} m2, remaining primary {log['remaining_primary_m2']:.1f} ({log['stop_primary']}), "
          f"backstop {log['remaining_backstop_m2']} ({log['stop_backstop']})")
    for p in log["picks"]:
        print(f"  #{p['number']:2d} {p['role']:8s} copy {p['copy']}  score {p['score']:15.1f}  remaining "
              f"{p['remaining_m2']:15.1f}  cloud {p['cloud_cover']}  {p['scene_id']}")


# --------------------------------------------------------------------------------------
# the rule on real footprints


def test_real_footprints_35mnm_default_rule(pc_cat, pc_items):
    """The default (coverage_count 3, backstop, 6.15e6 m^2) on the 13 real 35MNM footprints:
    picks, order, roles, copies, scores and remaining areas equal the reference. The AOI's west
    strip lies in no footprint, so the primary stage ends with the best score 0, far above
    max_uncovered; some scenes are left to the backstop stage."""
    p = plan_of(recipe(pc_cat, PC_AOI))
    log = p.selection_log["s2"]
    print_log(log)
    ref = reference(pc_items, box(*PC_AOI))
    assert_log_equals(log, ref)
    roles = [q["role"] for q in log["picks"]]
    assert roles.count("primary") >= 3 and roles.count("backstop") >= 1
    assert roles == sorted(roles, key=lambda r: r != "primary")  # primary first
    assert log["stop_primary"] == "no_score" and log["remaining_primary_m2"] > 3 * 6.15e6
    assert log["picks"][0]["copy"] == 0  # the first pick ties over the copies: copy 0
    assert {q["copy"] for q in log["picks"] if q["role"] == "primary"} == {0, 1, 2}
    # remaining areas decrease, by exactly the (cloud-free) area newly covered
    rem = [q["remaining_m2"] for q in log["picks"] if q["role"] == "primary"]
    assert all(a > b for a, b in zip(rem, rem[1:]))
    assert (log["coverage_count"], log["max_uncovered_m2"], log["candidates"]) == (3, 6.15e6, 13)
    assert log["picks"][0]["datetime"].startswith("2020-")
    # the substantial picks (> 1000 m^2) do not depend on how edges are split: 1e-4 degree segments
    fine = reference(pc_items, box(*PC_AOI), step=1e-4)
    big = lambda picks: [(q["scene_id"], q["role"], q["copy"]) for q in picks if q["score"] > 1000]  # noqa: E731
    assert big(fine["picks"]) == big(log["picks"]) and len(big(log["picks"])) >= 5
    for q, r in zip([q for q in log["picks"] if q["score"] > 1000], [r for r in fine["picks"] if r["score"] > 1000]):
        assert q["score"] == pytest.approx(r["score"], rel=1e-4)


def test_real_footprints_earth_search_edges(es_cat, es_items):
    """The Earth Search items: the AOI across three adjacent tiles (24MUV, 24MVV, 24MUA), real
    cloud covers 35-57 %; coverage_count 1 and 3, with and without backstop."""
    for count in (1, 3):
        for backstop in (True, False):
            sel = {"coverage_count": count, "backstop": backstop}
            p = plan_of(recipe(es_cat, ES_AOI, sel, profile="sentinel-2-l2a-earthsearch", crs="EPSG:32724"))
            log = p.selection_log["s2"]
            ref = reference(es_items, box(*ES_AOI), coverage_count=count, backstop=backstop)
            assert_log_equals(log, ref)
            assert log["candidates"] == 3
            if not backstop:
                assert log["stop_backstop"] == "disabled" and all(q["role"] == "primary" for q in log["picks"])
    # count 1: the three tiles each add area to the one copy -> all three are primary, nothing left to back up
    p = plan_of(recipe(es_cat, ES_AOI, {"coverage_count": 1}, profile="sentinel-2-l2a-earthsearch", crs="EPSG:32724"))
    print_log(p.selection_log["s2"])
    assert [q["role"] for q in p.selection_log["s2"]["picks"]] == ["primary"] * 3
    assert p.selection_log["s2"]["stop_primary"] == "no_candidates"


def test_coverage_count_one_and_backstop_off_on_35mnm(pc_cat, pc_items):
    for count, backstop in ((1, True), (1, False), (3, False), (2, True)):
        p = plan_of(recipe(pc_cat, PC_AOI, {"coverage_count": count, "backstop": backstop}))
        ref = reference(pc_items, box(*PC_AOI), coverage_count=count, backstop=backstop)
        assert_log_equals(p.selection_log["s2"], ref)
        assert sum(q["role"] == "primary" for q in p.selection_log["s2"]["picks"]) >= count


def test_max_selections_is_exact(pc_cat, pc_items):
    """max_selections 2: exactly 2 primary picks (the seed's `len > max` allowed 3); the backstop
    stage still runs on the scenes left (max_selections counts primary picks only)."""
    for n in (1, 2, 4):
        p = plan_of(recipe(pc_cat, PC_AOI, {"max_selections": n}))
        log = p.selection_log["s2"]
        assert_log_equals(log, reference(pc_items, box(*PC_AOI), max_selections=n))
        assert sum(q["role"] == "primary" for q in log["picks"]) == n
        assert log["stop_primary"] == "max_selections"
        assert any(q["role"] == "backstop" for q in log["picks"])


def test_large_max_uncovered_stops_early(pc_cat, pc_items):
    """max_uncovered between the remaining areas after picks 1 and 2 of the unlimited run:
    the primary stage stops after exactly 2 picks (``covered``); the backstop's one copy (the
    AOI's area) is then already within it, so no backstop pick."""
    full = reference(pc_items, box(*PC_AOI))
    r1, r2 = full["picks"][0]["remaining_m2"], full["picks"][1]["remaining_m2"]
    limit = (r1 + r2) / 2
    assert limit > full["aoi_area_m2"]  # the single backstop copy is within the limit
    p = plan_of(recipe(pc_cat, PC_AOI, {"max_uncovered_m2": limit}))
    log = p.selection_log["s2"]
    assert_log_equals(log, reference(pc_items, box(*PC_AOI), max_uncovered=limit))
    assert [q["role"] for q in log["picks"]] == ["primary", "primary"]
    assert (log["stop_primary"], log["stop_backstop"]) == ("covered", "covered")
    # a limit above 3 x the AOI: nothing to pick, every unit dropped with the reason
    p = plan_of(recipe(pc_cat, PC_AOI, {"max_uncovered_m2": 4 * full["aoi_area_m2"]}))
    assert p.selection_log["s2"]["picks"] == [] and not p.planned
    assert all(u.code == "selection" and "already within max_uncovered_m2" in u.reason for u in p.units)


def test_ties_go_to_the_stated_order(pc_items, tmp_path):
    """A duplicate of the best scene's footprint with the same cloud cover: with the same
    datetime and a smaller id it is picked first (copy 0) and the original next, with the very
    same score, on copy 1; a duplicate dated a second later (newer) wins whatever its id."""
    best = reference(pc_items, box(*PC_AOI))["picks"][0]["scene_id"]
    orig = next(it for it in pc_items if it["id"] == best)
    same_time = json.loads(json.dumps(orig))
    same_time["id"] = "S2A_AAAA_duplicate"  # sorts before every real id
    newer = json.loads(json.dumps(orig))
    newer["id"] = "S2Z_ZZZZ_duplicate"  # sorts after every real id
    when = _when(orig)
    newer["properties"]["datetime"] = when.replace(second=when.second + 1).isoformat().replace("+00:00", "Z")

    items = pc_items + [same_time]
    p = plan_of(recipe(catalog(tmp_path / "a.json", items), PC_AOI))
    log = p.selection_log["s2"]
    assert_log_equals(log, reference(items, box(*PC_AOI)))
    assert [(q["scene_id"], q["copy"]) for q in log["picks"][:2]] == [("S2A_AAAA_duplicate", 0), (best, 1)]
    assert log["picks"][0]["score"] == log["picks"][1]["score"]

    items = pc_items + [newer, same_time]
    p = plan_of(recipe(catalog(tmp_path / "b.json", items), PC_AOI))
    log = p.selection_log["s2"]
    assert_log_equals(log, reference(items, box(*PC_AOI)))
    assert [q["scene_id"] for q in log["picks"][:3]] == ["S2Z_ZZZZ_duplicate", "S2A_AAAA_duplicate", best]
    assert [q["copy"] for q in log["picks"][:3]] == [0, 1, 2]


def test_zero_scores_are_never_picked(pc_items, tmp_path):
    """A scene 100 % cloudy and one without eo:cloud_cover (counted as 100 %) score 0: never
    picked in either stage, though both cover the AOI. All scenes so: no pick, the units are
    dropped with the reason."""
    best = reference(pc_items, box(*PC_AOI))["picks"][:2]
    items = json.loads(json.dumps(pc_items))
    by_id = {it["id"]: it for it in items}
    by_id[best[0]["scene_id"]]["properties"]["eo:cloud_cover"] = 100.0
    del by_id[best[1]["scene_id"]]["properties"]["eo:cloud_cover"]
    p = plan_of(recipe(catalog(tmp_path / "c.json", items), PC_AOI))
    log = p.selection_log["s2"]
    assert_log_equals(log, reference(items, box(*PC_AOI)))
    picked = {q["scene_id"] for q in log["picks"]}
    assert best[0]["scene_id"] not in picked and best[1]["scene_id"] not in picked
    assert log["stop_backstop"] == "no_score"

    for it in items:
        it["properties"]["eo:cloud_cover"] = 100.0
    p = plan_of(recipe(catalog(tmp_path / "d.json", items), PC_AOI))
    assert p.selection_log["s2"]["picks"] == [] and p.selection_log["s2"]["stop_primary"] == "no_score"
    assert not p.planned
    assert {u.reason for u in p.units} == {"selection: source 's2': greedy-coverage: none of the 13 scene(s) over the AOI scores above 0"}


# --------------------------------------------------------------------------------------
# the plan: picks per tile unit, plan.json, the CLI


def test_units_get_the_picks_that_touch_them(pc_cat, pc_items, tmp_path):
    """128 px (1.28 km) tiles on UTM 35S: each planned unit holds, as one time step, exactly
    the picks whose footprint overlaps it, in pick order with their roles; units in the AOI's
    west strip (no footprint) are dropped (``selection``). The log survives write_plan /
    load_plan (and a plan.json without it loads as {})."""
    p = plan_of(recipe(pc_cat, PC_AOI))
    log = p.selection_log["s2"]
    ref = reference(pc_items, box(*PC_AOI))
    feet = ref["feet"]
    order = [(q["scene_id"], q["role"]) for q in log["picks"]]
    crs = p.grids[0].gbox.crs.to_wkt()
    n_dropped = 0
    for u in p.units:
        poly = to_ea(u.unit.polygon, crs)
        want = [(sid, role) for sid, role in order if poly.intersection(feet[sid]).area > 0]
        if not want:
            n_dropped += 1
            assert u.status == "dropped" and u.code == "selection" and "touches the unit" in u.reason
            continue
        assert u.status == "planned"
        assert len(u.groups["s2"]) == 1
        assert [(q.scene.id, q.role) for q in u.groups["s2"][0]] == want
    assert n_dropped >= 3 and len(p.planned) >= 10
    # some units see only part of the picks (the corner cuts differ from scene to scene)
    assert any(len(u.groups["s2"][0]) < len(order) for u in p.planned)

    store = OutputStore(str(tmp_path / "ds"))
    store.ensure()
    write_plan(p, store)
    doc = json.loads((tmp_path / "ds" / "plan" / "plan.json").read_text())
    assert doc["selection_log"]["s2"]["picks"] == log["picks"]
    back = load_plan(store)
    assert back.selection_log == json.loads(json.dumps(p.selection_log))
    assert [[(q.scene.id, q.role) for q in g] for u in back.planned for g in u.groups["s2"]] == \
        [[(q.scene.id, q.role) for q in g] for u in p.planned for g in u.groups["s2"]]
    del doc["selection_log"]
    (tmp_path / "ds" / "plan" / "plan.json").write_text(json.dumps(doc))
    assert load_plan(store).selection_log == {}


def test_plan_dry_run_prints_the_log(pc_items, tmp_path):
    """``eochips plan --dry-run`` prints the log, one line per pick in pick order, and writes
    nothing. (The plan's probe opens the first scene's B04 and SCL: those hrefs, on Planetary
    Computer, are pointed at the real local 34SGA B04 and SCL COGs; footprints and clouds stay real.)"""
    import rasterio

    from realdata import proj_fields

    local = {}
    for key in ("B04", "SCL"):
        cog = REAL / "s2l2a_native_scl_34SGA" / f"{key}.tif"
        with rasterio.open(cog) as ds:
            local[key] = dict(href=str(cog), **proj_fields(ds.crs, ds.transform, ds.shape))
    items = json.loads(json.dumps(pc_items))
    for it in items:
        for key, fields in local.items():
            it["assets"][key].update(fields)
        it["properties"]["eochips:derived_from"] = "B04 and SCL assets: the real 34SGA COGs and their grids (probed only)"
    rec = write_recipe(tmp_path / "r.yaml", recipe(catalog(tmp_path / "items.json", items), PC_AOI))
    proc = run_cli("plan", str(rec), "-o", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    ref = reference(pc_items, box(*PC_AOI))
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"\s+#\d+ ", ln)]
    assert [ln.split()[-1] for ln in lines] == [q["scene_id"] for q in ref["picks"]]
    assert [ln.split()[1] for ln in lines] == [q["role"] for q in ref["picks"]]
    assert "selection s2: AOI" in proc.stdout and "stop: no_score" in proc.stdout
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# date_pattern and id_pattern


def test_date_and_id_patterns_filter_the_static_catalog(pc_cat, pc_items):
    """``date_pattern`` (re.search on the UTC date YYYY-MM-DD) and ``id_pattern`` on the real
    items; the greedy choice then runs over the kept scenes only."""
    cases = [({"date_pattern": "-06-"}, lambda it: "-06-" in it["properties"]["datetime"][:10]),
             ({"date_pattern": r"^2020-07-(0|1)"}, lambda it: re.search(r"^2020-07-(0|1)", it["properties"]["datetime"][:10])),
             ({"id_pattern": "^S2B_"}, lambda it: it["id"].startswith("S2B_")),
             ({"id_pattern": "^S2A_", "date_pattern": "-07-"},
              lambda it: it["id"].startswith("S2A_") and it["properties"]["datetime"][5:8] == "07-")]
    for search, keep in cases:
        want = [it for it in pc_items if keep(it)]
        assert 0 < len(want) < len(pc_items)
        p = plan_of(recipe(pc_cat, PC_AOI, **search))
        assert sorted(p.scenes["s2"]) == sorted(it["id"] for it in want), search
        assert_log_equals(p.selection_log["s2"], reference(want, box(*PC_AOI)))


@pytest.mark.parametrize("field", ["date_pattern", "id_pattern"])
def test_bad_regex_exits_2_naming_the_field(pc_cat, tmp_path, field):
    rec = write_recipe(tmp_path / "r.yaml", recipe(pc_cat, PC_AOI, **{field: "2020-(0["}))
    proc = run_cli("plan", str(rec), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"sources.s2.search.{field}" in err[0] and "regular expression" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_greedy_coverage_config_bounds(pc_cat, tmp_path):
    for sel, where in (({"coverage_count": 0}, "coverage_count"), ({"max_uncovered_m2": -1}, "max_uncovered_m2"),
                       ({"max_selections": 0}, "max_selections")):
        rec = write_recipe(tmp_path / "r.yaml", recipe(pc_cat, PC_AOI, sel))
        proc = run_cli("plan", str(rec), "-o", str(tmp_path / "out"), "--dry-run")
        assert proc.returncode == 2 and f"sources.s2.selection.{where}" in proc.stderr, proc.stderr


def test_aoi_of_two_features_is_one_union(es_cat, es_items):
    """An AOI FeatureCollection of two overlapping boxes: the selection covers their union
    (one log, AOI area = the union's), not each feature on its own."""
    from shapely.geometry import mapping

    a, b = box(-40.0, -4.70, -39.85, -4.45), box(-39.90, -4.65, -39.75, -4.50)
    data = recipe(es_cat, ES_AOI, {"coverage_count": 2}, profile="sentinel-2-l2a-earthsearch", crs="EPSG:32724")
    data["aoi"] = {"geometry": {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": mapping(g)} for g in (a, b)]}}
    log = plan_of(data).selection_log["s2"]
    ref = reference(es_items, shapely.union(a, b), coverage_count=2)
    assert_log_equals(log, ref)
    assert log["aoi_area_m2"] < to_ea(a).area + to_ea(b).area  # the overlap counted once


def test_greedy_coverage_is_not_a_scene_grid_choice(pc_cat, tmp_path):
    data = recipe(pc_cat, PC_AOI)
    data["grid"] = {"kind": "scene", "source": "s2"}
    data["units"] = {"kind": "chip", "size": 128}
    proc = run_cli("plan", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: recipe field 'sources.s2.selection.kind': greedy-coverage chooses scenes for the "
                                   "whole AOI, not the scenes of a scene grid; use grid: {kind: crs, ...} for it")
