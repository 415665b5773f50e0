"""The ``mosaic`` finalizer (issue 12, items 4-5): per-tile parts -> COGs, sources.csv, quicklooks
and the summary's mosaic section.

The parts are cut with numpy/rasterio from a real Sentinel-2 L2A raster over Exeter (bands 1-4,
uint16, nodata 0; the cloudy part from another date) into 64 px tiles; the source part's index
values are synthetic. The finalizer runs through the finalizer registry on a real
:class:`~eochips.dataset.Context` (plan objects in memory, records as the state gives them);
references are numpy on the original arrays.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

from conftest import REAL, needs_shared

EXETER = REAL / "s2l2a_multitemporal_exeter"
CLOUDLESS_SRC = EXETER / "exe_2024-08-01_12-21-19.tif"
CLOUDY_SRC = EXETER / "exe_2024-08-16_12-21-11.tif"
BANDS = ["blue", "green", "red", "nir"]
N = 64          # tile side, px
ROWS = COLS = 5  # 320 x 320 px of the 335 x 354 raster
MISSING = {(1, 3), (4, 0)}  # tiles not kept: (1, 3) failed, (4, 0) dropped

PICKS = [
    {"number": 1, "scene_id": "S2A_MSIL2A_20240801", "datetime": "2024-08-01T11:21:19Z", "role": "primary", "score": 2.5e8,
     "copy": 0, "cloud_cover": 3.1, "remaining_m2": 9.0e8},
    {"number": 2, "scene_id": "S2B_MSIL2A_20240816", "datetime": "2024-08-16T11:21:11Z", "role": "primary", "score": 1.25e8,
     "copy": 1, "cloud_cover": 7.5, "remaining_m2": 6.5e8},
    {"number": 3, "scene_id": "S2A_MSIL2A_20240826", "datetime": "2024-08-26T11:21:11Z", "role": "primary", "score": 5.0e7,
     "copy": 2, "cloud_cover": 12.0, "remaining_m2": 4.0e6},
    {"number": 4, "scene_id": "S2B_MSIL2A_20240617", "datetime": "2024-06-17T11:21:21Z", "role": "backstop", "score": 3.0e6,
     "copy": None, "cloud_cover": 18.0, "remaining_m2": 1.0e6},
    {"number": 5, "scene_id": "S2A_MSIL2A_20240602", "datetime": "2024-06-02T11:21:19Z", "role": "backstop", "score": 1.0e6,
     "copy": None, "cloud_cover": 19.5, "remaining_m2": 0.0},
]
LOG = {"aoi_area_m2": 4.096e7, "coverage_count": 3, "max_uncovered_m2": 6.15e6, "picks": PICKS,
       "remaining_primary_m2": 4.0e6, "remaining_backstop_m2": 0.0, "stop_primary": "max_uncovered", "stop_backstop": "no candidates"}


def _recipe(name="exeter-mosaic", clear_count=False):
    from eochips.config import parse_recipe

    return parse_recipe({
        "version": 2, "name": name, "aoi": {"bbox": [-3540, 3340 - 320 * 20, -3540 + 320 * 20, 3340], "crs": "EPSG:3035"},
        "sources": {"s2": {"search": {"catalog": "http://127.0.0.1:9/stac", "collections": ["sentinel-2-l2a"]},
                           "profile": {"name": "s2-exeter", "bands": {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"},
                                       "dtype": "uint16", "nodata": 0},
                           "bands": BANDS, "composite": {"kind": "first-valid"}, "resampling": "nearest",
                           "selection": {"kind": "greedy-coverage"}}},
        "grid": {"kind": "crs", "crs": "EPSG:3035", "resolution": 20}, "units": {"kind": "tile", "size": N},
        "output": {"layout": {"kind": "mosaic", "clear_count": clear_count, "quicklook": ["red", "green", "blue"]}},
        "dataset": {"finalizers": ["mosaic", "summary", "manifest"]},
    })


def _arrays():
    """(cloudless (4, y, x), cloudy (4, y, x), source (2 or 3, y, x), crs, transform) over the 5 x 5 tiles."""
    with rasterio.open(CLOUDLESS_SRC) as ds:
        cloudless = ds.read([1, 2, 3, 4])[:, :ROWS * N, :COLS * N]
        crs, transform = ds.crs, ds.transform
    with rasterio.open(CLOUDY_SRC) as ds:
        cloudy = ds.read([1, 2, 3, 4])[:, :ROWS * N, :COLS * N]
    yy, xx = np.mgrid[:ROWS * N, :COLS * N]
    cl = (1 + (yy // 37 + xx // 53) % 3).astype(np.uint16)
    cl[cloudless[0] == 0] = 0        # no primary observation where the real raster is nodata
    cl[100:150, 150:260] = 0         # a cloud hole
    cy = (4 + (xx // 100) % 2).astype(np.uint16)
    cy[cl > 0] = 0
    cy[120:140, 210:230] = 0         # not filled by the backstop either
    count = ((yy + xx) % 4).astype(np.uint16)
    return cloudless, cloudy, np.stack([cl, cy, count]), crs, transform


def _write(path, arr, crs, transform, nodata, descriptions):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype.name,
                       crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=32, blockysize=32, compress="deflate") as ds:
        ds.write(arr)
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)


def _dataset(out, clear_count=False, missing=MISSING):
    """A dataset folder with the parts of every kept tile, and the Context the finalizers get."""
    from eochips.dataset import Context
    from eochips.geo import Grid, Unit
    from eochips.plan import Plan, UnitPlan, resolve_sources
    from eochips.writers import OutputStore
    from eochips.writers.store import sha256_file

    cloudless, cloudy, source, crs, transform = _arrays()
    source = source if clear_count else source[:2]
    recipe = _recipe(clear_count=clear_count)
    gbox = GeoBox((ROWS * N, COLS * N), transform, crs.to_wkt())
    grids = [Grid(0, "", gbox, None)]
    units, records = [], {}
    (out / "tiles").mkdir(parents=True)
    for r in range(ROWS):
        for c in range(COLS):
            uid = f"tile_{r:03d}_{c:03d}"
            t = transform * Affine.translation(c * N, r * N)
            up = UnitPlan(Unit(0, r, c, GeoBox((N, N), t, crs.to_wkt())), uid)
            units.append(up)
            win = np.s_[:, r * N:(r + 1) * N, c * N:(c + 1) * N]
            if (r, c) == (4, 0):
                up.status, up.code, up.reason = "dropped", "selection", "no scene"
                records[uid] = {"status": "dropped", "code": "selection", "reason": "no scene", "files": {}, "metrics": {}}
                continue
            if (r, c) in missing:
                records[uid] = {"status": "failed", "code": "", "reason": "read error", "files": {}, "metrics": {}}
                continue
            files = {}
            for product, arr, nd, desc in (("cloudless", cloudless, 0, BANDS), ("cloudy", cloudy, 0, BANDS),
                                           ("source", source, None, ["cloudless_index", "cloudy_index", "clear_count"][:len(source)])):
                rel = f"tiles/{uid}-{product}.tif"
                _write(out / rel, arr[win], crs, t, nd, desc)
                files[rel] = sha256_file(out / rel)
            cl, cy = source[0][win[1:]], source[1][win[1:]]
            filled = np.where(cl > 0, cl, cy)
            hist = {p: {str(k): int(n) for k, n in zip(*np.unique(a, return_counts=True))}
                    for p, a in (("cloudless", cl), ("cloudy", cy), ("filled", filled))}
            records[uid] = {"status": "kept", "code": "", "reason": "", "files": files, "metrics": {"mosaic_pixels": hist}}
    sources = resolve_sources(recipe)
    plan = Plan(recipe, grids, units, {"s2": {}}, sources)
    plan.selection_log = {"s2": LOG}
    store = OutputStore(out)
    kept = sorted(k for k, v in records.items() if v["status"] == "kept")
    ctx = Context(store, plan, records, kept)
    return ctx, (cloudless, cloudy, source, crs, transform)


def _finalize(ctx):
    """What eochips.dataset._finalize does after the split: summary, then the recipe's finalizers in order."""
    from eochips.dataset import FINALIZERS, summarize

    ctx.summary = summarize(ctx)
    for name in ctx.plan.recipe.dataset.finalizers:
        FINALIZERS[name](ctx)
    return ctx.summary


def _holes(shape2d, missing=MISSING | {(4, 0)}):
    m = np.zeros(shape2d, bool)
    for r, c in missing:
        m[r * N:(r + 1) * N, c * N:(c + 1) * N] = True
    return m


@needs_shared
def test_mosaic_assembles_parts_into_cogs(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "ds"
    ctx, (cloudless, cloudy, source, crs, transform) = _dataset(out)
    summary = _finalize(ctx)
    holes = _holes(cloudless.shape[1:])
    for product, ref, nodata, desc in (("cloudless", cloudless, 0, tuple(BANDS)), ("cloudy", cloudy, 0, tuple(BANDS)),
                                       ("source", source, None, ("cloudless_index", "cloudy_index"))):
        path = out / f"exeter-mosaic-{product}.tif"
        valid, errors, warnings = cog_validate(str(path), strict=True)
        assert valid and not errors and not warnings, (product, errors, warnings)
        with rasterio.open(path) as ds:
            got = ds.read()
            assert ds.crs == crs and ds.transform.almost_equals(transform, 1e-9)
            assert ds.shape == (ROWS * N, COLS * N) and ds.dtypes[0] == "uint16"
            assert ds.descriptions == desc
            assert ds.nodata == nodata
            assert ds.block_shapes[0] == (512, 512)
            assert ds.overviews(1) == [2, 4]  # 320 px: two levels down to <= 128 px
            assert ds.profile["compress"] == "deflate"
            ovr = ds.read(out_shape=(ds.count, 160, 160))
        fill = 0
        expect = np.where(holes[None], fill, ref)
        np.testing.assert_array_equal(got, expect)
        np.testing.assert_array_equal(ovr, expect[:, ::2, ::2])  # nearest overview: every other pixel
        assert (got[:, holes] == fill).all() and (got[:, ~holes] == ref[:, ~holes]).all()
    # the mosaics' hashes go to the manifest as written
    lines = dict(reversed(line.split("  ")) for line in (out / "checksums.sha256").read_text().splitlines())
    from eochips.writers.store import sha256_file
    for product in ("cloudless", "cloudy", "source"):
        rel = f"exeter-mosaic-{product}.tif"
        assert lines[rel] == sha256_file(out / rel)
    assert "quicklooks/exeter-mosaic-cloudless.png" in lines and "sources.csv" in lines
    assert json.loads((out / "summary.json").read_text())["mosaic"] == json.loads(json.dumps(summary["mosaic"]))


@needs_shared
def test_mosaic_is_byte_identical_on_rerun_and_elsewhere(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ctx_a, _ = _dataset(a)
    _finalize(ctx_a)
    names = [f"exeter-mosaic-{p}.tif" for p in ("cloudless", "cloudy", "source")] + [
        "sources.csv", "quicklooks/exeter-mosaic-cloudless.png", "quicklooks/exeter-mosaic-source.png"]
    first = {n: (a / n).read_bytes() for n in names}
    (a / names[0]).write_bytes(b"truncated by a crash")  # a rerun rebuilds every mosaic (idempotent)
    _finalize(ctx_a)
    assert {n: (a / n).read_bytes() for n in names} == first
    ctx_b, _ = _dataset(b)  # same parts in another folder: the part paths do not reach the files
    _finalize(ctx_b)
    assert {n: (b / n).read_bytes() for n in names} == first
    assert not [p for p in a.rglob("*") if ".eochips-tmp-" in p.name or p.suffix == ".vrt"]


@needs_shared
def test_sources_csv_and_summary(tmp_path):
    out = tmp_path / "ds"
    ctx, (_, _, source, _, _) = _dataset(out)
    summary = _finalize(ctx)
    rows = list(csv.DictReader(io.StringIO((out / "sources.csv").read_text())))
    assert list(rows[0]) == ["number", "scene_id", "role", "datetime", "score", "cloud_cover", "remaining_m2"]
    assert [(int(r["number"]), r["scene_id"], r["role"], r["datetime"], float(r["score"]), float(r["cloud_cover"]),
             float(r["remaining_m2"])) for r in rows] == [
        (p["number"], p["scene_id"], p["role"], p["datetime"], p["score"], p["cloud_cover"], p["remaining_m2"]) for p in PICKS]

    m = summary["mosaic"]
    kept = ~_holes(source.shape[1:])
    cl, cy = source[0][kept], source[1][kept]
    total = kept.sum()
    assert m["aoi_area_m2"] == 4.096e7 and m["source"] == "s2"
    assert m["remaining_primary_m2"] == 4.0e6 and m["remaining_primary_pct"] == pytest.approx(100 * 4.0e6 / (3 * 4.096e7))
    assert m["remaining_backstop_m2"] == 0.0 and m["remaining_backstop_pct"] == 0.0
    assert m["picks"] == {"primary": 3, "backstop": 2}
    assert m["aoi_pixels"] == total
    for product, a in (("cloudless", cl), ("cloudy", cy)):
        want = {str(k): round(int((a == k).sum()) / total, 6) for k in np.unique(a)}
        assert m["pixel_share"][product] == want
    assert m["empty_share"] == round(int((cl == 0).sum()) / total, 6) and m["empty_share"] > 0
    assert m["empty_filled_share"] == round(int(((cl == 0) & (cy == 0)).sum()) / total, 6)
    assert 0 < m["empty_filled_share"] < m["empty_share"]
    assert m["tiles_missing"] == 1  # (1, 3) failed; (4, 0) was dropped by the plan


@needs_shared
def test_quicklooks_read_overviews_only(tmp_path, monkeypatch):
    from PIL import Image

    import eochips.dataset.mosaic as mosaic

    monkeypatch.setattr(mosaic, "QUICKLOOK_PX", 100)
    reads = []
    real_read = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        reads.append((self.name, kwargs.get("out_shape")))
        return real_read(self, *args, **kwargs)

    out = tmp_path / "ds"
    ctx, (cloudless, *_rest) = _dataset(out)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    _finalize(ctx)
    monkeypatch.setattr(rasterio.io.DatasetReader, "read", real_read)
    # the finalizer reads pixels only for the quicklooks, each at most 100 px on a side: GDAL streams the assembly
    assert reads and all(shape is not None and max(shape[1:]) <= 100 for _, shape in reads), reads
    with Image.open(out / "quicklooks/exeter-mosaic-cloudless.png") as im:
        assert im.size == (100, 100) and im.mode == "RGBA"
        rgba = np.asarray(im)
    holes = _holes(cloudless.shape[1:])
    f = 320 / 100
    yy, xx = np.mgrid[:100, :100]
    # transparent exactly where the mosaic is empty (nearest sampling of the 320 px mosaic onto 100 px)
    sampled_hole = holes[(yy * f + f / 2).astype(int), (xx * f + f / 2).astype(int)]
    empty = (cloudless[:3] == 0).all(0)
    sampled_empty = empty[(yy * f + f / 2).astype(int), (xx * f + f / 2).astype(int)]
    alpha = rgba[..., 3]
    assert ((alpha == 0) == (sampled_hole | sampled_empty)).mean() > 0.97
    visible = rgba[alpha == 255][:, :3]
    assert visible.std(0).min() > 20 and len(np.unique(visible.reshape(-1, 3), axis=0)) > 500  # a stretched image, not blank
    with Image.open(out / "quicklooks/exeter-mosaic-source.png") as im:
        src = np.asarray(im.convert("RGB"))
    colours = (mosaic.pick_colours(5)[:, :3] * 255).round().astype(int)
    for k in (1, 2, 3, 4, 5):  # every pick's colour is drawn (pixels and legend)
        assert (np.abs(src.astype(int) - colours[k]).sum(-1) <= 3).sum() > 50, k


@needs_shared
def test_clear_count_band_and_no_mosaic_for_chip_recipes(tmp_path):
    out = tmp_path / "ds"
    ctx, (_, _, source, _, _) = _dataset(out, clear_count=True)
    _finalize(ctx)
    with rasterio.open(out / "exeter-mosaic-source.tif") as ds:
        assert ds.descriptions == ("cloudless_index", "cloudy_index", "clear_count") and ds.nodata is None
        np.testing.assert_array_equal(ds.read(3), np.where(_holes(source.shape[1:]), 0, source[2]))

    # a chip recipe: the mosaic finalizer (in the default list) writes nothing, the summary has no mosaic section
    from eochips.config.models import FINALIZERS, DatasetConfig
    from eochips.dataset import FINALIZERS as registry, Context, summarize

    assert DatasetConfig().finalizers.index("mosaic") == DatasetConfig().finalizers.index("summary") - 1
    assert "mosaic" in FINALIZERS and "mosaic" in registry
    chip = ctx.plan.recipe.model_copy(update={"output": ctx.plan.recipe.output.model_copy(update={"layout": []})})
    other = tmp_path / "chips"
    other.mkdir()
    from eochips.plan import Plan
    from eochips.writers import OutputStore

    cctx = Context(OutputStore(other), Plan(chip, ctx.plan.grids, ctx.plan.units, {"s2": {}}, ctx.plan.sources), ctx.records, ctx.kept)
    registry["mosaic"](cctx)
    assert list(other.iterdir()) == [] and "mosaic" not in summarize(cctx)


@needs_shared
def test_a_part_of_another_grid_is_refused(tmp_path):
    from eochips.errors import OutputError

    out = tmp_path / "ds"
    ctx, (cloudless, _, _, crs, transform) = _dataset(out)
    rel = "tiles/tile_002_002-cloudy.tif"
    _write(out / rel, cloudless[:, :N, :N], crs, transform, 0, BANDS)  # tile (0, 0)'s pixels and place
    with pytest.raises(OutputError, match=r"mosaic part tiles/tile_002_002-cloudy.tif: transform .* is not the tile's"):
        _finalize(ctx)
    assert not list(out.glob("exeter-mosaic-*"))
    assert not [p for p in out.rglob("*") if ".eochips-tmp-" in p.name]


@needs_shared
def test_mosaic_from_object_storage_equals_local(tmp_path, monkeypatch):
    """Parts in a (moto) S3 bucket are fetched to a local staging folder: the same bytes as a local finalize."""
    pytest.importorskip("s3fs")
    import s3fs
    from servers import moto_s3

    from eochips.dataset import Context
    from eochips.writers import OutputStore

    local = tmp_path / "local"
    ctx, _ = _dataset(local)
    _finalize(ctx)
    with moto_s3("eochips-mosaic") as (env, client):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()  # not an instance made for another test's endpoint
        for p in sorted((local / "tiles").iterdir()):
            client.upload_file(str(p), "eochips-mosaic", f"ds/tiles/{p.name}")
        remote = Context(OutputStore("s3://eochips-mosaic/ds"), ctx.plan, ctx.records, ctx.kept)
        summary = _finalize(remote)
        names = [f"exeter-mosaic-{p}.tif" for p in ("cloudless", "cloudy", "source")] + [
            "sources.csv", "quicklooks/exeter-mosaic-cloudless.png", "quicklooks/exeter-mosaic-source.png", "summary.json"]
        got = {n: client.get_object(Bucket="eochips-mosaic", Key=f"ds/{n}")["Body"].read() for n in names}
        listed = [o["Key"] for o in client.list_objects_v2(Bucket="eochips-mosaic", Prefix="ds/")["Contents"]]
    assert got == {n: (local / n).read_bytes() for n in names}
    assert summary["mosaic"] == ctx.summary["mosaic"]
    assert not [k for k in listed if ".eochips-tmp-" in k or k.endswith(".vrt")]
    assert not list(remote.store.staging.glob("eochips-mosaic-*"))  # the fetched parts are gone


@needs_shared
def test_no_kept_tile_gives_empty_mosaics_and_a_missing_part_is_named(tmp_path):
    from eochips.errors import OutputError

    out = tmp_path / "none"
    everything = {(r, c) for r in range(ROWS) for c in range(COLS)}
    ctx, _ = _dataset(out, missing=everything)
    summary = _finalize(ctx)
    with rasterio.open(out / "exeter-mosaic-cloudless.tif") as ds:
        assert ds.shape == (ROWS * N, COLS * N) and ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert not ds.read().any()
    with rasterio.open(out / "exeter-mosaic-source.tif") as ds:
        assert not ds.read().any() and ds.nodata is None
    m = summary["mosaic"]
    assert m["aoi_pixels"] == 0 and m["empty_share"] is None and m["tiles_missing"] == ROWS * COLS - 1

    out = tmp_path / "lost"
    ctx, _ = _dataset(out)
    del ctx.records["tile_003_001"]["files"]["tiles/tile_003_001-source.tif"]
    with pytest.raises(OutputError, match="kept tile tile_003_001 has no part tiles/tile_003_001-source.tif"):
        _finalize(ctx)
    assert not list(out.glob("exeter-mosaic-*")) and not (out / "sources.csv").exists()  # nothing written


@needs_shared
def test_a_plan_without_selection_log_is_refused(tmp_path):
    from eochips.errors import OutputError

    out = tmp_path / "ds"
    ctx, _ = _dataset(out)
    ctx.plan.selection_log = {}
    with pytest.raises(OutputError, match="has no selection log of source 's2'"):
        _finalize(ctx)
    assert not list(out.glob("exeter-mosaic-*")) and not (out / "sources.csv").exists()


@needs_shared
def test_through_finalize(tmp_path, monkeypatch):
    """eochips.dataset.finalize on a dataset folder: the plan written by write_plan, the units'
    completion markers and the state, the parts beside them; the same files as the Context runs."""
    import eochips.dataset as dataset
    from eochips.chips import UnitResult
    from eochips.engine import open_state, write_marker
    from eochips.plan import make_tasks, write_plan

    out = tmp_path / "ds"
    ctx, (cloudless, *_rest) = _dataset(out)
    ctx.plan.recipe = ctx.plan.recipe.model_copy(update={"dataset": ctx.plan.recipe.dataset.model_copy(
        update={"finalizers": ["index", "mosaic", "summary", "manifest"]})})
    write_plan(ctx.plan, ctx.store)
    fps = {t.unit_id: t.fingerprint for t in make_tasks(ctx.plan, ctx.store)}
    for uid, rec in ctx.records.items():
        if rec["status"] != "dropped":
            write_marker(str(out), UnitResult(uid, rec["status"], rec["code"], rec["reason"], rec["files"], rec["metrics"],
                                              0, fps[uid]))
    open_state(ctx.store, fps).close()
    real_load = dataset.load_plan

    def with_log(store):  # the selection log as the greedy-coverage plan records it (plan.json's selection_log)
        plan = real_load(store)
        if not getattr(plan, "selection_log", None):
            plan.selection_log = {"s2": LOG}
        return plan

    monkeypatch.setattr(dataset, "load_plan", with_log)
    summary = dataset.finalize(out)
    assert summary["kept"] == 23 and summary["failed"] == 1 and summary["mosaic"]["picks"] == {"primary": 3, "backstop": 2}
    with rasterio.open(out / "exeter-mosaic-cloudless.tif") as ds:
        np.testing.assert_array_equal(ds.read(), np.where(_holes(cloudless.shape[1:])[None], 0, cloudless))
    listed = dict(reversed(line.split("  ")) for line in (out / "checksums.sha256").read_text().splitlines())
    assert {"exeter-mosaic-cloudless.tif", "exeter-mosaic-cloudy.tif", "exeter-mosaic-source.tif", "sources.csv",
            "quicklooks/exeter-mosaic-cloudless.png", "quicklooks/exeter-mosaic-source.png", "index.parquet"} <= set(listed)
    first = (out / "exeter-mosaic-source.tif").read_bytes()
    dataset.finalize(out)  # finalize again: rebuilt, identical
    assert (out / "exeter-mosaic-source.tif").read_bytes() == first
