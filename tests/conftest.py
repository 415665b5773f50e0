"""Shared fixtures: real data from ../shared, real local servers.

Tests that need ``../shared`` skip with a clear reason when it is absent.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from servers import RangeServer, pg_available, pgstac_api

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real"
EXETER = REAL / "hls_multitemporal_exeter"

needs_shared = pytest.mark.skipif(not REAL.is_dir(), reason=f"real test data not found at {REAL} (../shared is absent)")

HLS_BANDS = ["B02", "B03", "B04", "B08"]
TILE = "30UVB"  # MGRS tile of Exeter (UTM 30N, 100 km square VB)
# The CDL-coded label raster the crop test writes (EPSG:32630, 30 m, 7 x 6 chips of 32 px);
# its top and right edges reach the fill row / column of the real Exeter scenes.
LABEL_ORIGIN = (460860.0, 5622180.0)
LABEL_SHAPE = (192, 224)  # rows, cols
LABEL_CODES = [1, 5, 24, 36, 61, 111, 121, 141, 176, 190, 2, 4, 3, 37]
CDL_NODATA_CHIP = (3, 3)  # holds CDL code 0 (no data): dropped in the plan
UNKNOWN_CODE_CHIP = (4, 1)  # holds code 99, not in the CDL -> 13 table
UNKNOWN_CODE = 99


def _write_cog(path: Path, arr: np.ndarray, profile: dict, **tags) -> None:
    import rasterio
    from rasterio.shutil import copy as rio_copy

    mem = path.with_suffix(".mem.tif")
    with rasterio.open(mem, "w", driver="GTiff", **profile) as ds:
        ds.write(arr, 1)
        if tags:
            ds.update_tags(**tags)
        if "scale" in tags:
            ds.scales = (float(tags["scale"]),)
    rio_copy(mem, path, driver="COG", COMPRESS="DEFLATE", PREDICTOR="2", BLOCKSIZE=256)
    mem.unlink()


def build_hls_granules(dst: Path) -> list[dict]:
    """Split each real Exeter HLS S30 file into per-band COG assets laid out like real HLS
    granules (``HLS.S30.T30UVB.YYYYDDDTHHMMSS.v2.0.B02.tif`` ..., Fmask uint8 with fill 255),
    and return STAC items whose metadata comes from the files themselves: datetime from the
    GeoTIFF ``datetime`` tag (UTC), footprint from the valid-data mask, eo:cloud_cover as the
    percent of valid Fmask pixels with the cloud or cloud-shadow bit (HLS CLOUD_COVERAGE)."""
    import rasterio
    from shapely.geometry import mapping

    from realdata import footprint

    dst.mkdir(parents=True, exist_ok=True)
    items = []
    for f in sorted(EXETER.glob("*.tif")):
        with rasterio.open(f) as ds:
            arr = ds.read()
            dt = datetime.strptime(ds.tags()["datetime"][:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            gid = f"HLS.S30.T{TILE}.{dt:%Y}{dt.timetuple().tm_yday:03d}T{dt:%H%M%S}.v2.0"
            prof = dict(crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height, count=1)
            valid = arr[0] != -9999
            assets = {}
            for i, band in enumerate(HLS_BANDS):
                p = dst / f"{gid}.{band}.tif"
                _write_cog(p, arr[i], dict(prof, dtype="int16", nodata=-9999), scale="0.0001")
                assets[band] = {"href": p.name, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                "roles": ["data"]}
            fm = np.where(arr[4] == -9999, 255, np.clip(arr[4], 0, 254)).astype(np.uint8)
            _write_cog(dst / f"{gid}.Fmask.tif", fm, dict(prof, dtype="uint8", nodata=255))
            assets["Fmask"] = {"href": f"{gid}.Fmask.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]}
            foot = footprint(valid, ds.crs, ds.transform)
            fv = fm[fm != 255].astype(int)
            cloud = round(100.0 * float((((fv >> 1) & 1) | ((fv >> 3) & 1)).mean()), 2)
            items.append({
                "type": "Feature", "stac_version": "1.0.0", "id": gid, "collection": "HLSS30_2.0",
                "geometry": mapping(foot), "bbox": list(foot.bounds),
                "properties": {"datetime": dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "eo:cloud_cover": cloud,
                               "proj:wkt2": ds.crs.to_wkt()},
                "links": [], "assets": assets,
            })
    return items


def write_cdl_raster(path: Path) -> Path:
    """A CDL-coded (uint8) label raster over Exeter in EPSG:32630 at 30 m (see constants)."""
    import rasterio
    from affine import Affine

    rows, cols = LABEL_SHAPE
    yy, xx = np.mgrid[0:rows, 0:cols]
    codes = np.array(LABEL_CODES, dtype=np.uint8)[((yy // 16) * 3 + (xx // 16)) % len(LABEL_CODES)]
    r, c = CDL_NODATA_CHIP
    codes[r * 32 + 10:r * 32 + 12, c * 32 + 10:c * 32 + 12] = 0
    r, c = UNKNOWN_CODE_CHIP
    codes[r * 32 + 5:r * 32 + 8, c * 32 + 5:c * 32 + 8] = UNKNOWN_CODE
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=1, dtype="uint8", crs="EPSG:32630",
                       transform=Affine(30, 0, LABEL_ORIGIN[0], 0, -30, LABEL_ORIGIN[1]), nodata=0) as ds:
        ds.write(codes, 1)
    return path


def crop_recipe(catalog: str, cdl_raster: Path, **overrides) -> dict:
    """The built-in hls-crop-classification recipe pointed at the Exeter test setup: the given
    catalog, the 4 real bands of the sample, 32 px chips on the CDL-coded label raster, any
    cloud cover (the real dates are 7-52 % cloudy), unknown CDL codes -> class 13, every chip
    (the seed's class-balance sampling needs >= 8 classes per chip; these chips hold <= 4).

    ``overrides`` are dotted keys of the version-2 recipe (``filters.2.max_pct`` is the Fmask rule)."""
    import yaml

    from eochips.config import recipe_text, set_dotted

    data = yaml.safe_load(recipe_text("hls-crop-classification")[0])
    x0, y0 = LABEL_ORIGIN
    data["aoi"] = {"bbox": [x0, y0 - LABEL_SHAPE[0] * 30, x0 + LABEL_SHAPE[1] * 30, y0], "crs": "EPSG:32630"}
    data["sources"]["hls"]["search"].update(catalog=catalog, auth="none", datetime="2021-06-01/2021-07-31", cloud_cover={"max": 100})
    data["sources"]["hls"]["bands"] = ["blue", "green", "red", "nir"]
    data["grid"] = {"kind": "label-raster", "path": str(cdl_raster)}
    data["units"] = {"kind": "chip", "size": 32}
    data["sampling"] = {"kind": "all"}
    data["labels"]["unknown_class"] = 13
    data["engine"] = {"workers": 2}
    for k, v in overrides.items():
        data = set_dotted(data, k, v)
    return data


def crop_recipe_v1(catalog: str, cdl_raster: Path, **overrides) -> dict:
    """The version-1 hls-crop-classification recipe (as eochips 0.1 shipped it, kept in
    ``tests/fixtures/v1/``) on the Exeter test setup, with version-1 keys."""
    import yaml

    from eochips.config import set_dotted

    data = yaml.safe_load((Path(__file__).parent / "fixtures" / "v1" / "hls-crop-classification.yaml").read_text())
    x0, y0 = LABEL_ORIGIN
    data["aoi"] = {"bbox": [x0, y0 - LABEL_SHAPE[0] * 30, x0 + LABEL_SHAPE[1] * 30, y0], "crs": "EPSG:32630"}
    data["search"].update(catalog=catalog, auth="none", datetime="2021-06-01/2021-07-31", cloud_cover={"max": 100})
    data["bands"] = ["blue", "green", "red", "nir"]
    data["grid"] = {"label_raster": str(cdl_raster), "chip_size": 32}
    data["labels"]["unknown_class"] = 13
    data["engine"] = {"workers": 2}
    for k, v in overrides.items():
        data = set_dotted(data, k, v)
    return data


FMASK_RULE = "filters.2.max_pct"  # the fmask-bad-pct filter of crop_recipe and gap_recipe


def gap_recipe(catalog: str, cdl_raster: Path, **overrides) -> dict:
    """The built-in hls-gap-filling recipe on the Exeter test setup: source ``hls`` as in
    :func:`crop_recipe`, source ``cloudy`` over 2021-06-01..09-30 (where the derived cloudy
    stand-ins are), the Fmask rule relaxed (max_pct 100) so most chips are kept."""
    import yaml

    from eochips.config import recipe_text, set_dotted

    data = yaml.safe_load(recipe_text("hls-gap-filling")[0])
    crop = crop_recipe(catalog, cdl_raster)
    for key in ("aoi", "grid", "units", "sampling", "labels", "engine"):
        data[key] = crop[key]
    data["sources"]["hls"] = crop["sources"]["hls"]
    data["sources"]["cloudy"]["search"].update(catalog=catalog, auth="none", datetime="2021-06-01/2021-09-30")
    data = set_dotted(data, FMASK_RULE, 100)
    for k, v in overrides.items():
        data = set_dotted(data, k, v)
    return data


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run ``python -m eochips.cli ARGS`` and return the CompletedProcess."""
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "eochips.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def clean_crop_run(stac_api: str, cdl_raster: Path, tmp: Path) -> tuple[Path, Path]:
    """The crop recipe over the pgstac API (threads, not processes) in ``tmp``, and a clean run of
    it: ``(recipe path, dataset folder)``; the reference of the resume and shard tests."""
    recipe = write_recipe(tmp / "crop.yaml", crop_recipe(stac_api, cdl_raster, **{"engine.processes": False}))
    clean = tmp / "clean"
    proc = run_cli("run", str(recipe), "-o", str(clean), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return recipe, clean


def build_recipe(tmp: Path, data: dict, *args: str, env: dict | None = None):
    """Write ``data`` as ``tmp/recipe.yaml`` and ``eochips run`` it into ``tmp/out`` (no progress);
    return ``(dataset folder, CompletedProcess)`` after checking the run exited 0."""
    out = tmp / "out"
    proc = run_cli("run", str(write_recipe(tmp / "recipe.yaml", data)), "-o", str(out), "--no-progress", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def write_recipe(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def manifest(out: Path) -> str:
    return (out / "checksums.sha256").read_text()


@pytest.fixture(scope="session")
def hls_dir(tmp_path_factory) -> tuple[Path, list[dict]]:
    if not REAL.is_dir():
        pytest.skip(f"real test data not found at {REAL} (../shared is absent)")
    d = tmp_path_factory.mktemp("hls")
    return d, build_hls_granules(d)


DERIVED_SHIFTS_DAYS = (56, 72, 88)


def derived_cloudy_items(items: list[dict]) -> list[dict]:
    """Seed 000 needs >= 6 scenes with 30-80 % cloud; Exeter has 2 (2021-06-08, 58 %; 2021-06-23,
    73 %). These stand-ins reuse those two granules' real assets and metadata, re-dated by +56,
    +72 and +88 days (into Aug-Sep 2021, outside the crop tests' June-July window) and marked
    with ``eochips:derived_from``. Only their dates are not real."""
    from datetime import timedelta

    out = []
    for it in items:
        if not 30 <= it["properties"]["eo:cloud_cover"] <= 80:
            continue
        dt = datetime.strptime(it["properties"]["datetime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        for days in DERIVED_SHIFTS_DAYS:
            d2 = dt + timedelta(days=days)
            new = json.loads(json.dumps(it))
            new["id"] = f"HLS.S30.T{TILE}.{d2:%Y}{d2.timetuple().tm_yday:03d}T{d2:%H%M%S}.v2.0"
            new["properties"]["datetime"] = d2.strftime("%Y-%m-%dT%H:%M:%SZ")
            new["properties"]["eochips:derived_from"] = it["id"]
            out.append(new)
    return out


@pytest.fixture(scope="session")
def local_catalog(hls_dir, tmp_path_factory) -> Path:
    """A static ItemCollection of the real Exeter granules and their re-dated cloudy stand-ins
    (:func:`derived_cloudy_items`, Aug-Sep 2021), with absolute local hrefs."""
    d, items = hls_dir
    feats = json.loads(json.dumps(items + derived_cloudy_items(items)))
    for it in feats:
        for a in it["assets"].values():
            a["href"] = str(d / a["href"])
    path = tmp_path_factory.mktemp("localcat") / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


@pytest.fixture(scope="session")
def cog_server(hls_dir):
    with RangeServer(hls_dir[0]) as srv:
        yield srv


@pytest.fixture(scope="session")
def stac_api(hls_dir, cog_server):
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    _, items = hls_dir
    served = []
    for it in items + derived_cloudy_items(items):
        it = json.loads(json.dumps(it))
        for a in it["assets"].values():
            a["href"] = f"{cog_server.url}/{a['href']}"
        served.append(it)
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": "HLSS30_2.0", "description": "HLS S30 v2.0 (Exeter sample)",
        "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [["2015-01-01T00:00:00Z", None]]}},
    }
    with pgstac_api([collection], served) as url:
        yield url


@pytest.fixture(scope="session")
def cdl_raster(tmp_path_factory) -> Path:
    return write_cdl_raster(tmp_path_factory.mktemp("cdl") / "cdl_exeter.tif")
