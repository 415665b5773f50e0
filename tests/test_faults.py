"""Retries under injected faults: HTTP 5xx, 429 with Retry-After, connection resets, truncated
bodies and timeouts, injected at >= 20 % of requests by a local server in front of the COGs and a
proxy in front of the pgstac STAC API. Every run must end with the same manifest as a clean run
through the same servers. One asset answering 404 forever fails exactly the chip that uses it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from conftest import crop_recipe, manifest, needs_shared, run_cli, write_recipe
from servers import TRANSIENT_KINDS, FaultyProxy, Faults, RangeServer

pytestmark = needs_shared
RATE = 0.35  # drawn per request; with the cap of 2 failures per request key, >= 20 % of requests fail


@pytest.fixture(scope="module")
def faulty(hls_dir, stac_api, cdl_raster, tmp_path_factory):
    """A clean baseline run through the (not yet faulty) servers, and the servers."""
    tmp = tmp_path_factory.mktemp("faults")
    with FaultyProxy(stac_api) as api:
        # the pgstac items point at the session COG server, whose faults the tests switch on
        data = crop_recipe(api.url, cdl_raster, **{"reading.http_timeout": 1, "reading.max_retries": 6,
                                                   "sources.hls.search.max_retries": 6})
        recipe = write_recipe(tmp / "crop.yaml", data)
        yield {"tmp": tmp, "recipe": recipe, "api": api}


@pytest.fixture(scope="module")
def baseline(faulty, cog_server):
    out = faulty["tmp"] / "clean"
    proc = run_cli("run", str(faulty["recipe"]), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("kind", [*TRANSIENT_KINDS, "mixed"])
def test_transient_faults_are_retried(kind, faulty, baseline, cog_server, tmp_path):
    """Faults on both the COG server (the session one the items point at) and the STAC API."""
    kinds = TRANSIENT_KINDS if kind == "mixed" else (kind,)
    cog_server.faults = Faults(RATE, kinds, seed=1)
    faulty["api"].faults = Faults(RATE, kinds, seed=2)
    try:
        out = tmp_path / "out"
        proc = run_cli("run", str(faulty["recipe"]), "-o", str(out), "--no-progress")
    finally:
        injected = (dict(cog_server.faults.counts), cog_server.faults.requests, dict(faulty["api"].faults.counts),
                    faulty["api"].faults.requests)
        cog_server.faults = Faults()
        faulty["api"].faults = Faults()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert manifest(out) == manifest(baseline)
    cog_counts, cog_requests, api_counts, api_requests = injected
    assert sum(cog_counts.values()) > 0 and set(cog_counts) <= set(kinds)
    assert sum(cog_counts.values()) >= 0.2 * cog_requests
    assert sum(api_counts.values()) > 0  # the STAC API requests failed too, and were retried per request
    # GDAL's own HTTP retries are off (one retry layer per transport): the injected COG faults were
    # retried by eochips, and each retry is counted in the state. (A reset alone can be invisible:
    # libcurl re-sends a request once when a reused keep-alive connection turns out dead.)
    from eochips.engine import State

    retries = sum(r["retries"] for r in State(out / "state.sqlite").all().values())
    if kind != "reset":
        assert retries > 0, (kind, cog_counts)


def _extra_scene(hls_dir, chip_bounds_utm, dst):
    """A copy of the 2021-07-18 granule cropped around one chip and dated 2021-07-25: only that
    chip is fully covered by it, so only that chip selects it (as its last date)."""
    from shapely.geometry import box, mapping

    from eochips.geo import reproject_geometry

    d, items = hls_dir
    src_item = next(it for it in items if it["properties"]["datetime"].startswith("2021-07-18"))
    gid = src_item["id"].replace("2021199T112709", "2021206T112709")
    assets = {}
    for key, a in src_item["assets"].items():
        with rasterio.open(d / a["href"]) as ds:
            poly = reproject_geometry(box(*chip_bounds_utm).buffer(45), "EPSG:32630", ds.crs)
            win = from_bounds(*poly.bounds, transform=ds.transform).round_offsets().round_lengths()
            arr = ds.read(1, window=win)
            prof = ds.profile | {"driver": "GTiff", "width": arr.shape[1], "height": arr.shape[0],
                                 "transform": ds.window_transform(win)}
            name = f"{gid}.{key}.tif"
            with rasterio.open(dst / name, "w", **{k: v for k, v in prof.items() if k not in ("blockxsize", "blockysize", "tiled", "compress", "interleave")}) as out:
                out.write(arr, 1)
            assets[key] = {"href": name}
            foot = reproject_geometry(box(*rasterio.transform.array_bounds(arr.shape[0], arr.shape[1], prof["transform"])[:4]), ds.crs, "EPSG:4326")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": gid, "collection": "HLSS30_2.0", "geometry": mapping(foot),
            "bbox": list(foot.bounds), "properties": {"datetime": "2021-07-25T11:27:09Z", "eo:cloud_cover": 1.0},
            "links": [], "assets": assets}
    return item


def test_404_asset_fails_only_its_chip_then_rerun_completes(faulty, baseline, hls_dir, cdl_raster, tmp_path):
    import geopandas as gpd

    d, items = hls_dir
    idx = gpd.read_parquet(baseline / "index.parquet").set_index("unit_id")
    target = sorted(idx.index[idx.status == "kept"])[0]
    a, _, c, _, e, f = idx.loc[target]["transform"]
    bounds = (c, f + e * 32, c + a * 32, f)  # the chip in its grid's CRS (EPSG:32630)
    served = tmp_path / "served"
    shutil.copytree(d, served)
    extra = _extra_scene(hls_dir, bounds, served)
    missing = extra["assets"]["B03"]["href"]
    with RangeServer(served, Faults(missing={missing})) as srv:
        feats = json.loads(json.dumps(items)) + [extra]
        for it in feats:
            for a in it["assets"].values():
                a["href"] = f"{srv.url}/{a['href']}"
        cat = tmp_path / "items.json"
        cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(str(cat), cdl_raster, **{"reading.max_retries": 2}))
        out = tmp_path / "out"
        proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
        assert proc.returncode == 1, proc.stderr
        s = json.loads((out / "summary.json").read_text())
        assert s["failed"] == 1 and list(s["failed_reasons"]) == [target]
        assert "HTTP response code: 404" in s["failed_reasons"][target] and missing in s["failed_reasons"][target]
        assert f"failed {target}" in proc.stderr
        ix = gpd.read_parquet(out / "index.parquet").set_index("unit_id")
        assert ix.loc[target].reason_code == "io"
        others = ix.drop(index=target)
        assert (others.status != "failed").all() and (others.status == "kept").sum() == (idx.drop(index=target).status == "kept").sum()
        assert not any(p.name.startswith(target) for p in (out / "chips").iterdir())
        # restore the asset: the rerun redoes only the failed chip and completes it
        srv.faults = Faults()
        proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        s = json.loads((out / "summary.json").read_text())
        assert s["failed"] == 0
        ix = gpd.read_parquet(out / "index.parquet").set_index("unit_id")
        assert ix.loc[target].status in ("kept", "dropped")
        assert [f"{s['datetime']:%Y-%m-%d}" for s in ix.loc[target].scenes] == ["2021-06-08", "2021-06-23", "2021-07-25"]
        from eochips.engine import State

        st = State(out / "state.sqlite").all()
        assert st[target]["attempts"] == 2 and all(v["attempts"] == 1 for k, v in st.items() if k != target)
        assert np.isfinite(ix.loc[target].nodata_pixels)
