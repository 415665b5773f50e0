"""The built-in ``clay-datacube`` recipe end to end (specs/recipes.md section 5; the seed
Clay-foundation/model scripts/pipeline/datacube.py and tile.py) on the real-pixel test data of
:mod:`claydata`, served by a pgstac STAC API and a range server on 127.0.0.1.

Every expectation is computed here, independently of eochips: the year order with ``random``, the
scene choice, S1 union and coverage with shapely on the item geometries, the chip grid from the
chosen scene's own file, the S1 and DEM pixels with ``rasterio.warp.reproject`` (nearest) of each
asset onto each chip's grid, and the filters with numpy on those reads."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject
from shapely.geometry import shape

from claydata import CHIP, ROW, S1_WINDOW_DAYS, S2_BANDS, TILE, YEARS, build_clay_data, serve_clay
from conftest import manifest, needs_shared, run_cli
from servers import pg_available
from test_cluster_storage import s3, with_env  # noqa: F401 - s3: the moto S3 server fixture, used by name

pytestmark = needs_shared
N_YEARS, ATTEMPTS = 3, 20
BAD_SCL = (0, 1, 3, 8, 9, 10)
OUT_BANDS = [*S2_BANDS, "vh", "vv", "elevation"]


# ----------------------------------------------------------------------------------------------
# fixtures: the data, the servers, one run


@pytest.fixture(scope="module")
def clay(tmp_path_factory):
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    data = build_clay_data(tmp_path_factory.mktemp("clay"))
    with serve_clay(data) as url:
        yield data, url


def _sets(data: dict, url: str) -> list[str]:
    sets = {
        "aoi.path": str(data["tiles"]), "aoi.row": ROW,
        "sources.s2.search.datetime": f"{YEARS[0]}-01-01/{YEARS[1]}-12-31",
        "sources.s1.search.datetime": f"{YEARS[0] - 1}-12-29/{YEARS[1] + 1}-01-03",
        "sources.s2.selection.years": f"[{YEARS[0]}, {YEARS[1]}]",
        "grid.resolution": "null", "units.size": CHIP, "engine.workers": 2,
    }
    for s in ("s2", "s1", "dem"):
        sets[f"sources.{s}.search.catalog"] = url
        sets[f"sources.{s}.search.auth"] = "none"
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


@pytest.fixture(scope="module")
def run(clay, tmp_path_factory):
    data, url = clay
    out = tmp_path_factory.mktemp("run") / "out"
    proc = run_cli("run", "clay-datacube", "-o", str(out), "--no-progress", *_sets(data, url))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def expected(clay):
    return expected_selection(clay[0])


# ----------------------------------------------------------------------------------------------
# independent expectations


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def year_order(row: int, years: tuple[int, int]) -> list[int]:
    """The seed: ``random.seed(index); random.shuffle(date_ranges)`` over the years."""
    ys = [f"{y}" for y in range(years[0], years[1] + 1)]
    random.seed(row)
    random.shuffle(ys)
    return [int(y) for y in ys]


def s1_match(s2_item: dict, s1_items: list[dict]) -> dict:
    """S1 within +-3 calendar days intersecting the S2 footprint, by overlap (descending), the orbit
    state of the first, same-orbit scenes added until their union covers the footprint."""
    foot = shape(s2_item["geometry"])
    d = _dt(s2_item["properties"]["datetime"]).date()
    lo, hi = d - timedelta(days=S1_WINDOW_DAYS), d + timedelta(days=S1_WINDOW_DAYS)
    cands = [it for it in s1_items if lo <= _dt(it["properties"]["datetime"]).date() <= hi and shape(it["geometry"]).intersects(foot)]
    cands.sort(key=lambda it: -shape(it["geometry"]).intersection(foot).area)
    chosen, union = [], None
    if cands:
        orbit = cands[0]["properties"]["sat:orbit_state"]
        for it in cands:
            if it["properties"]["sat:orbit_state"] != orbit:
                continue
            chosen.append(it)
            union = shape(it["geometry"]) if union is None else union.union(shape(it["geometry"]))
            if union.covers(foot):
                break
    cov = 100.0 * union.intersection(foot).area / foot.area if union is not None else 0.0
    return {"candidates": [it["id"] for it in cands], "chosen": [it["id"] for it in chosen], "coverage": cov}


def expected_selection(data: dict) -> dict:
    tiles = json.loads(data["tiles"].read_text())["features"]
    tile = shape(tiles[ROW]["geometry"])
    centroid = tile.centroid
    entries, matched = [], 0
    order = year_order(ROW, YEARS)
    for year in order:
        cands = [it for it in data["s2"] if _dt(it["properties"]["datetime"]).year == year
                 and it["properties"]["eo:cloud_cover"] <= 50 and it["properties"]["s2:nodata_pixel_percentage"] <= 20
                 and shape(it["geometry"]).intersects(centroid)]
        cands.sort(key=lambda it: (it["properties"]["eo:cloud_cover"], it["properties"]["datetime"], it["id"]))
        entry = {"year": year, "s2_candidates": [it["id"] for it in cands], "s2_tried": [], "s2_chosen": None,
                 "s1_chosen": [], "matched": False}
        for it in cands[:ATTEMPTS]:
            entry["s2_tried"].append(it["id"])
            m = s1_match(it, data["s1"])
            entry["s1_candidates"] = m["candidates"]
            if m["chosen"]:
                entry.update(s2_chosen=it["id"], s1_chosen=m["chosen"], s1_coverage=m["coverage"], matched=True, item=it)
                break
        entries.append(entry)
        matched += entry["matched"]
        if matched == N_YEARS:
            break
    dem = {}
    for e in entries:
        if e["matched"]:
            foot = shape(e["item"]["geometry"])
            dem[e["year"]] = [it["id"] for it in data["dem"] if shape(it["geometry"]).intersects(foot)]
    return {"order": order, "entries": entries, "dem": dem}


def _nearest(path, crs, tr) -> np.ndarray:
    """A float32 nearest read of ``path`` onto a chip grid; the file's declared nodata (NaN, or
    -32768 as in real RTC files) becomes NaN."""
    with rasterio.open(path) as src:
        dst = np.full((CHIP, CHIP), np.nan, np.float32)
        reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs=crs, resampling=Resampling.nearest,
                  src_nodata=src.nodata, dst_nodata=np.nan)
    return dst


def expected_chips(data: dict, entry: dict, dem_ids: list[str]) -> list[dict]:
    """Every window of the chosen S2 scene's own grid (remainder dropped) with its pixels and the
    first filter it fails (None when kept)."""
    assets = data["assets"]
    it = entry["item"]
    s1 = sorted((x for x in data["s1"] if x["id"] in entry["s1_chosen"]), key=lambda x: x["properties"]["datetime"])
    dems = [x for x in data["dem"] if x["id"] in dem_ids]
    date = _dt(it["properties"]["datetime"])
    with rasterio.open(assets / it["assets"]["B02"]["href"]) as ds:
        crs, tr0, (h, w) = ds.crs, ds.transform, ds.shape
    raw = {}
    for b in [*S2_BANDS, "SCL"]:
        with rasterio.open(assets / it["assets"][b]["href"]) as ds:
            raw[b] = ds.read(1)
    n_rows, n_cols = h // CHIP, w // CHIP
    out = []
    for r in range(n_rows):
        for c in range(n_cols):
            sl = np.s_[r * CHIP:(r + 1) * CHIP, c * CHIP:(c + 1) * CHIP]
            tr = tr0 * Affine.translation(c * CHIP, r * CHIP)
            s2 = {b: raw[b][sl] for b in [*S2_BANDS, "SCL"]}
            pol = {}
            for p in ("vh", "vv"):
                acc = np.full((CHIP, CHIP), np.nan, np.float32)
                for x in s1:  # later on top
                    new = _nearest(assets / x["assets"][p]["href"], crs, tr)
                    acc = np.where(np.isnan(new), acc, new)
                pol[p] = acc
            elev = np.full((CHIP, CHIP), np.nan, np.float32)
            for x in dems:  # first valid
                new = _nearest(assets / x["assets"]["data"]["href"], crs, tr)
                elev = np.where(np.isnan(elev), new, elev)
            fails = [code for code, bad in [
                ("value", (s2["B02"] == 0).any()),
                ("nan", any(np.isnan(a).any() for a in (pol["vh"], pol["vv"], elev))),
                ("mask-fraction", np.isin(s2["SCL"], BAD_SCL).mean() >= 0.3)] if bad]
            reason = fails[0] if fails else None  # the first failing filter, in the recipe's order
            n = r * n_cols + c + 1
            out.append({"n": n, "row": r, "col": c, "transform": tr, "crs": crs, "reason": reason, "fails": fails,
                        "stack": np.stack([s2[b].astype(np.float32) for b in S2_BANDS] + [pol["vh"], pol["vv"], elev]),
                        "unit_id": f"{TILE}_{date:%Y%m%d}_{n:04d}",
                        "path": f"{TILE}/{date:%Y-%m-%d}/claytile_{TILE}_{date:%Y%m%d}_v02_{n:04d}.tif",
                        "bad_fraction": float(np.isin(s2["SCL"], BAD_SCL).mean())})
    return out


@pytest.fixture(scope="module")
def chips(clay, expected):
    data = clay[0]
    return {e["year"]: expected_chips(data, e, expected["dem"][e["year"]]) for e in expected["entries"] if e["matched"]}


# ----------------------------------------------------------------------------------------------
# the design itself (so a test-data change cannot silently weaken the tests below)


def test_the_design_exercises_every_rule(clay, expected, chips):
    data = clay[0]
    by = {e["year"]: e for e in expected["entries"]}
    assert expected["order"] == [2022, 2021, 2020, 2024, 2023]
    assert [e["year"] for e in expected["entries"]] == [2022, 2021, 2020, 2024]  # 2023 never tried: 3 matched
    k = data["s2_by_key"]
    s1 = {key: it["id"] for key, it in data["s1_by_key"].items()}
    assert by[2022]["s2_tried"] == [k["A-tie"]["id"], k["A"]["id"], k["B"]["id"]] and by[2022]["s2_chosen"] == k["B"]["id"]
    for key in ("off-centroid", "cql2-fail", "nodata-fail"):
        assert k[key]["id"] not in by[2022]["s2_candidates"], key
    tile = shape(json.loads(data["tiles"].read_text())["features"][ROW]["geometry"])
    off = shape(k["off-centroid"]["geometry"])
    assert off.intersects(tile) and not off.intersects(tile.centroid)  # in the tile, but not holding its centroid
    assert s1_match(k["nodata-fail"], data["s1"])["chosen"]  # it would be chosen if the nodata rule were lost
    assert by[2022]["s1_chosen"] == [s1["W"], s1["E"]] and by[2022]["s1_coverage"] == pytest.approx(100)
    assert set(by[2022]["s1_candidates"]) == {s1["W"], s1["E"], s1["O"], s1["T"]}  # X: 4 days before
    assert not by[2021]["matched"] and by[2021]["s2_tried"] == [k["C"]["id"]]
    assert by[2020]["s1_chosen"] == [s1["P"]] and 60 < by[2020]["s1_coverage"] < 80
    with rasterio.open(data["assets"] / data["s1_by_key"]["P"]["assets"]["vv"]["href"]) as ds:  # as real RTC files
        assert ds.nodata == -32768 and (ds.read(1) == -32768).any() and not np.isnan(ds.read(1)).any()
    assert by[2024]["s2_chosen"] == k["real2024"]["id"] and len(by[2024]["s2_candidates"]) == 2
    # each half alone leaves the other half uncovered
    foot = shape(k["B"]["geometry"])
    for key in ("W", "E"):
        assert 40 < 100 * shape(data["s1_by_key"][key]["geometry"]).intersection(foot).area / foot.area < 60
    fails = [tuple(ch["fails"]) for y in chips for ch in chips[y]]
    assert ("value", "nan") in fails and ("nan", "mask-fraction") in fails  # the filters' order decides
    reasons = [ch["reason"] for y in chips for ch in chips[y]]
    for r in ("value", "nan", "mask-fraction", None):
        assert reasons.count(r) >= 2, (r, reasons)
    # chips west and east of the S1 W/E seam are kept in 2022
    seam = _seam_col(data, chips[2022])
    kept = [ch for ch in chips[2022] if ch["reason"] is None]
    assert any(ch["col"] < seam for ch in kept) and any(ch["col"] > seam for ch in kept)


def _seam_col(data, chips22) -> float:
    """The chip column (fractional) of the middle of the W/E overlap."""
    from rasterio.warp import transform

    w, e = shape(data["s1_by_key"]["W"]["geometry"]), shape(data["s1_by_key"]["E"]["geometry"])
    lon = (w.bounds[2] + e.bounds[0]) / 2
    lat = w.centroid.y
    ch = chips22[0]
    xs, ys = transform("EPSG:4326", ch["crs"], [lon], [lat])
    col, _ = ~ch["transform"] * (xs[0], ys[0])
    return col / CHIP


# ----------------------------------------------------------------------------------------------
# the run against the expectations


def _summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def _index(out) -> gpd.GeoDataFrame:
    return gpd.read_parquet(out / "index.parquet").set_index("unit_id")


def test_match_report(run, expected):
    s = _summary(run)
    report = s["match_report"]
    assert [(e["tile"], int(e["year"])) for e in report] == [(TILE, e["year"]) for e in expected["entries"]]
    for got, want in zip(report, expected["entries"]):
        where = (got["year"], got)
        cands = got["s2_candidates"]
        assert (cands if isinstance(cands, list) else len(want["s2_candidates"])) == (
            want["s2_candidates"] if isinstance(cands, list) else cands), where
        assert got["s2_tried"] == want["s2_tried"], where
        assert got["matched"] is want["matched"], where
        if want["matched"]:
            assert got["s2_chosen"] == want["s2_chosen"], where
            assert got["s1_chosen"] == want["s1_chosen"], where
            c1 = got["s1_candidates"]
            assert (sorted(c1) if isinstance(c1, list) else c1) == (
                sorted(want["s1_candidates"]) if isinstance(c1, list) else len(want["s1_candidates"])), where
            assert got["s1_coverage"] == pytest.approx(want["s1_coverage"], abs=0.5), where
        else:
            assert not got.get("s2_chosen") and not got.get("s1_chosen"), where
            assert got["reason"], where  # says why (here: no Sentinel-1 scene within the window)
    n_tried = len(expected["entries"])
    n_matched = sum(e["matched"] for e in expected["entries"])
    assert (s["years_tried"], s["years_matched"]) == (n_tried, n_matched)
    rate = s["s1_match_rate"]
    assert rate == pytest.approx(n_matched / n_tried) or rate == pytest.approx(100 * n_matched / n_tried), rate


def test_chip_ids_and_every_filter(run, chips):
    idx = _index(run)
    want = {ch["unit_id"]: ch for y in chips for ch in chips[y]}
    assert sorted(idx.index) == sorted(want)  # every window of each chosen scene, remainder dropped
    for uid, ch in want.items():
        row = idx.loc[uid]
        if ch["reason"] is None:
            assert row.status == "kept", (uid, row.reason)
        else:
            assert (row.status, row.reason_code) == ("dropped", ch["reason"]), (uid, row.status, row.reason, ch["reason"])
        assert list(row["transform"]) == pytest.approx(list(ch["transform"])[:6])
    s = _summary(run)
    assert s["kept"] == sum(ch["reason"] is None for ch in want.values())
    for code in ("value", "nan", "mask-fraction"):
        assert s["dropped"].get(code, 0) == sum(ch["reason"] == code for ch in want.values()), code


def test_kept_chip_files(run, chips, expected):
    files = sorted(p.relative_to(run).as_posix() for p in run.glob(f"{TILE}/**/*.tif"))
    kept = [ch for y in chips for ch in chips[y] if ch["reason"] is None]
    assert files == sorted(ch["path"] for ch in kept)
    dates = {e["year"]: e["item"]["properties"]["datetime"] for e in expected["entries"] if e["matched"]}
    for year in chips:
        for ch in chips[year]:
            if ch["reason"] is not None:
                continue
            with rasterio.open(run / ch["path"]) as ds:
                assert ds.count == 13 and set(ds.dtypes) == {"float32"}, ch["path"]
                assert list(ds.descriptions) == OUT_BANDS
                assert np.isnan(ds.nodata)
                assert ds.profile["compress"].lower() == "deflate"
                assert ds.tags()["date"] == dates[year][:10]
                assert ds.transform.almost_equals(ch["transform"]) and ds.crs == ch["crs"]
                got = ds.read()
            # S2 exactly (the scene's own grid: no resampling), S1 and DEM exactly (nearest)
            np.testing.assert_array_equal(got, ch["stack"], err_msg=ch["path"])


def test_scene_ids_per_source_and_time_differences(run, chips, expected, clay):
    data = clay[0]
    idx = _index(run)
    s1_by_id = {it["id"]: it for it in data["s1"]}
    for e in expected["entries"]:
        if not e["matched"]:
            continue
        t2 = _dt(e["item"]["properties"]["datetime"])
        for ch in chips[e["year"]]:
            row = idx.loc[ch["unit_id"]]
            assert list(_ids(row, "s2")) == [e["s2_chosen"]]
            assert list(_ids(row, "s1")) == e["s1_chosen"] or sorted(_ids(row, "s1")) == sorted(e["s1_chosen"]), ch["unit_id"]
            # DEM (intersecting, per: grid): every tile over the S2 scene's grid, as datacube.py's search_dem over the
            # scene; those over the chip among them, never the far one over Rome
            assert sorted(_ids(row, "dem")) == sorted(_dem_tiles_of_grid(data, e["item"])), ch["unit_id"]
            assert set(_dem_tiles_of(data, ch)) <= set(_ids(row, "dem")) and "ROME" not in " ".join(_ids(row, "dem")).upper()
            want_dt = {sid: (_dt(s1_by_id[sid]["properties"]["datetime"]) - t2).total_seconds() / 3600 for sid in _ids(row, "s1")}
            assert [s["dt_hours"] for s in row.scenes if s["source"] == "s1"] == pytest.approx([want_dt[sid] for sid in _ids(row, "s1")], abs=0.01)


def _ids(row, source: str) -> list[str]:
    """The scene ids of one source in an index row (its ``scenes`` entries of that source, in order)."""
    return [s["id"] for s in row.scenes if s["source"] == source]


def _dem_tiles_of_grid(data, item) -> list[str]:
    """The DEM tiles intersecting the extent of the S2 item's B02 grid (its proj:* fields)."""
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    a = item["assets"]["B02"]
    h, w = a["proj:shape"]
    tr = Affine(*a["proj:transform"][:6])
    crs = a.get("proj:code") or a["proj:wkt2"]
    (x0, y1), (x1, y0) = tr * (0, 0), tr * (w, h)
    poly = shape(transform_geom(crs, "EPSG:4326", mapping(box(x0, y0, x1, y1))))
    return [it["id"] for it in data["dem"] if shape(it["geometry"]).intersects(poly)]


def _dem_tiles_of(data, ch) -> list[str]:
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    x0, y1 = ch["transform"] * (0, 0)
    x1, y0 = ch["transform"] * (CHIP, CHIP)
    poly = shape(transform_geom(ch["crs"], "EPSG:4326", mapping(box(x0, y0, x1, y1))))
    return [it["id"] for it in data["dem"] if shape(it["geometry"]).intersects(poly)]


def test_scene_ids_tag_names_every_scene_used(run):
    idx = _index(run)
    kept = idx[idx.status == "kept"]
    assert len(kept) > 0
    bad = []
    for uid, row in kept.iterrows():
        with rasterio.open(run / row.files[0]["path"]) as ds:
            tag = ds.tags()["scene_ids"].split(",")
        if sorted(tag) != sorted([*_ids(row, "s2"), *_ids(row, "s1"), *_ids(row, "dem")]):
            bad.append((uid, tag))
    assert bad == []


def test_seed_bug_fixed_both_half_scenes_used(run, chips, clay):
    """Two same-orbit S1 scenes each covering half the S2 footprint: both are used (the seed
    replaced the covered area by each new scene and would also have added ``T``), and chips on
    both sides of their seam are kept."""
    data = clay[0]
    idx = _index(run)
    w, e, t = (data["s1_by_key"][k]["id"] for k in ("W", "E", "T"))
    seam = _seam_col(data, chips[2022])
    kept = [ch for ch in chips[2022] if ch["reason"] is None]
    west, east = [ch for ch in kept if ch["col"] + 1 <= seam], [ch for ch in kept if ch["col"] >= seam]
    assert west and east
    for ch in west + east:
        row = idx.loc[ch["unit_id"]]
        assert row.status == "kept" and set(_ids(row, "s1")) == {w, e} and t not in list(_ids(row, "s1"))
    # the west chips' S1 pixels are W's, the east chips' E's (each alone would leave the other side NaN)
    for ch, key in [(west[0], "W"), (east[-1], "E")]:
        ref = _nearest(data["assets"] / data["s1_by_key"][key]["assets"]["vv"]["href"], ch["crs"], ch["transform"])
        with rasterio.open(run / ch["path"]) as ds:
            np.testing.assert_array_equal(ds.read(OUT_BANDS.index("vv") + 1), ref)


def _state_rows(out) -> dict[str, tuple]:
    """unit id -> (attempts, updated) of the dataset's state: a rebuilt unit changes both."""
    import sqlite3

    with sqlite3.connect(out / "state.sqlite") as c:
        return {u: (a, t) for u, a, t in c.execute("SELECT unit_id, attempts, updated FROM units")}


def test_rerun_skips_everything(run, clay):
    data, url = clay
    before, state = manifest(run), _state_rows(run)
    mtimes = {p: p.stat().st_mtime_ns for p in run.glob(f"{TILE}/**/*.tif")}
    proc = run_cli("run", "clay-datacube", "-o", str(run), "--no-progress", *_sets(data, url))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert manifest(run) == before
    assert {p: p.stat().st_mtime_ns for p in run.glob(f"{TILE}/**/*.tif")} == mtimes
    assert len(state) == 75 and _state_rows(run) == state  # no unit was built again


def test_build_after_run_skips_everything(run):
    before, state = manifest(run), _state_rows(run)
    proc = run_cli("build", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    b = json.loads(proc.stdout)
    s = _summary(run)
    assert manifest(run) == before
    assert b["ran"] == 0 and b["skipped_done"] == s["units_total"] == s["kept"] + sum(s["dropped"].values()), b
    assert _state_rows(run) == state


def test_object_storage_equals_local(run, clay, s3, tmp_path):
    """The same recipe into a moto S3 bucket gives the local dataset's files byte for byte."""
    pytest.importorskip("s3fs")
    data, url = clay
    dest = "s3://eochips-test/datasets/clay"
    proc = run_cli("run", "clay-datacube", "-o", dest, "--no-progress", *_sets(data, url),
                   env=s3 | {"EOCHIPS_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def bucket_files():
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)  # not an instance made for an earlier test's endpoint
        return {p.split("datasets/clay/", 1)[1]: fs.cat_file(p) for p in fs.find("eochips-test/datasets/clay")}

    remote = with_env(s3, bucket_files)
    local = {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    remote = {k: v for k, v in remote.items() if not k.startswith("state")}
    local = {k: v for k, v in local.items() if not k.startswith("state")}
    assert sorted(remote) == sorted(local)
    assert [k for k in local if remote[k] != local[k]] == []
    assert sum(k.endswith(".tif") and k.startswith(TILE) for k in remote) > 0


def test_recipes_show():
    from pathlib import Path

    proc = run_cli("recipes", "show", "clay-datacube")
    assert proc.returncode == 0, proc.stderr
    text = (Path(__file__).resolve().parents[1] / "src" / "eochips" / "recipes" / "clay-datacube.yaml").read_text()
    assert text.strip() in proc.stdout or all(line in proc.stdout for line in text.strip().splitlines()), proc.stdout[:2000]


def test_a_tile_without_scenes(clay, tmp_path):
    """Row 1 of the tile file (33TTG, over Rome) has no Sentinel-2 scene in any year. Today the
    engine refuses the run (exit 2, one line naming the search, nothing written) rather than
    writing an empty dataset with a match report of 5 unmatched years (see the report)."""
    data, url = clay
    out = tmp_path / "out"
    sets = _sets(data, url)
    sets[sets.index(f"aoi.row={ROW}")] = "aoi.row=1"
    proc = run_cli("run", "clay-datacube", "-o", str(out), "--no-progress", *sets)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    msg = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(msg.splitlines()) == 1, msg
    assert "no scenes" in msg and "sentinel-2-l2a" in msg and "12.45" in msg  # the search and the tile's bounds
    assert not (out / "summary.json").exists() and not list(out.glob("**/*.tif"))


def test_two_shards_and_finalize_equal_one_run(run, clay, tmp_path):
    """Array jobs: two shards of the same recipe at the same time into one output, then finalize,
    give the unsharded run's manifest; a shard run again builds nothing."""
    import subprocess
    import sys

    data, url = clay
    out = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "eochips.cli", "run", "clay-datacube", "-o", str(out), "--no-progress", *_sets(data, url)]
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert not (out / "checksums.sha256").exists()  # a shard does not finalize
    fin = run_cli("finalize", str(out))
    assert fin.returncode == 0, fin.stderr[-2000:]
    assert manifest(out) == manifest(run)
    assert _summary(out)["match_report"] == _summary(run)["match_report"]
    again = run_cli("run", "clay-datacube", "-o", str(out), "--no-progress", "--shard", "1/2", *_sets(data, url))
    assert again.returncode == 0, again.stderr[-2000:]
    counts = json.loads(again.stdout)
    assert counts["shard"] == "1/2" and counts["ran"] == 0 and counts["skipped_done"] == counts["units"] > 0
    assert manifest(out) == manifest(run)
