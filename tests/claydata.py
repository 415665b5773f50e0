"""Test data for the Clay datacube recipe (specs/recipes.md section 5), built from the real rasters of
``../shared/data/real``: Sentinel-2 L2A over Exeter (real pixels, 10 bands + SCL), Sentinel-1 RTC items
(real Planetary Computer metadata, real pixels of S2 bands placed on derived swaths), Copernicus DEM
GLO-30 items (real metadata, the real Rome DEM pixels placed over Exeter) and an MGRS tile file.

What is real and what is derived (every derived item says so in ``eochips:derived_from`` and lists its
assumed fields in ``eochips:assumed``):

- S2: the 5 real Exeter items of :func:`realdata.build_s2_exeter` (B02 B03 B04 B08 SCL, 20 m). The 6
  bands the files lack are integer means of real bands of the same scene (:data:`EXTRA_BANDS`), so
  every band holds distinct pixels. Re-dated copies in 2020-2023 reuse those assets; their
  ``eo:cloud_cover`` is assumed where the design needs it (the cloud cover of a whole 110 km tile is
  not the one of this 7 km crop anyway) and their processing baseline is the one of their year.
- S1: metadata of the first real item of ``stacgeoparquet__sentinel-1-rtc-pc.json``; geometry,
  datetime, orbit state, proj:* and hrefs are placed over the S2 scenes (:data:`S1_SCENES`). Pixels
  (EPSG:32630, 10 m, float32): real S2 DNs repeated 2 x 2 and squared into linear backscatter
  (``(DN / 10000) ** 2``), NaN outside the swath polygon (scene ``P``: -32768, declared as the
  file's nodata, like the real RTC COGs and their ``raster:bands``).
- DEM: the real Rome DEM (360 x 360 px, 1 arcsec) as float32 metres placed over Exeter in EPSG:4326,
  split in two tiles (west / east halves), with a derived void (NaN) block and an uncovered strip on
  the west edge; metadata of the real ``cop-dem-glo-30`` items. A third tile holds the same pixels at
  their true place (Rome), far away.

The design (years 2020..2024, tile row 0, ``n_years`` 3; ``random.seed(0)`` orders the years
2022, 2021, 2020, 2024, 2023):

- 2022: the two least cloudy candidates ``A-tie`` and ``A`` (equal cloud cover: the earlier first) have
  no S1 within +-3 days; the third ``B`` has two
  same-orbit (descending) S1 scenes ``W``/``E`` each covering about half of it (both needed), an
  ascending one ``O`` (other orbit), a descending one ``T`` of smaller overlap (the seed, which
  replaced the covered area instead of unioning it, would add it; the union is complete without it)
  and a descending full cover ``X`` 4 days before (outside the window). Also a scene whose footprint
  misses the tile's centroid (not a candidate) and two that fail the CQL2 filter: cloud 70.6 %, and
  the least cloudy of the year (0.2 %, S1 W/E/O in its window) with 25 % nodata pixels.
- 2021: one candidate, no S1 at all: the year is tried and skipped.
- 2020: one candidate (real cloudy pixels: the mask-fraction filter drops chips) with one ascending
  S1 scene covering ~70 % of it (chips outside get NaN and are dropped) and one far away.
- 2024: the real items; 3 fail the CQL2 filter (cloud > 50 %), the EPSG:27700 one (0 % cloud, 4.5 %
  nodata: the B02 == 0 filter drops edge chips) has one full-cover S1 scene.
- 2023: a candidate with a full S1 match, never tried: 3 years matched before it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from realdata import REAL, build_s2_exeter, write_cog

if TYPE_CHECKING:
    from affine import Affine
    from shapely import Polygon

TILE = "30UVB"
YEARS = (2020, 2024)
CHIP = 64
ROW = 0
S1_WINDOW_DAYS = 3
ITEMS = REAL / "stac_items"
S2_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
# The bands the real files lack: integer means of real bands of the same scene, {band: {real: weight}}
EXTRA_BANDS = {
    "B05": {"B04": 1, "B08": 1}, "B06": {"B04": 1, "B08": 2}, "B07": {"B04": 1, "B08": 3},
    "B8A": {"B03": 1, "B08": 3}, "B11": {"B03": 1, "B04": 1}, "B12": {"B02": 1, "B04": 1},
}
BASELINES = {2020: "02.14", 2021: "03.01", 2022: "04.00", 2023: "05.09", 2024: "05.10"}

# Derived S2 copies: key -> (real item suffix, new datetime, assumed eo:cloud_cover or None = keep real)
S2_COPIES = {
    "A": ("20240617T112121_EXETER_UTM", "2022-06-17T11:21:21Z", 0.9),
    "A-tie": ("20240602T112119_EXETER_EPSG27700", "2022-06-10T11:21:19Z", 0.9),  # A's cloud cover, earlier: tried first
    "B": ("20240801T112119_EXETER_LAEA", "2022-08-01T11:21:19Z", None),
    "off-centroid": ("20240801T112119_EXETER_LAEA", "2022-07-01T11:21:19Z", 0.5),
    "cql2-fail": ("20240617T112121_EXETER_UTM", "2022-07-10T11:21:21Z", None),
    "nodata-fail": ("20240801T112119_EXETER_LAEA", "2022-08-03T11:21:19Z", 0.2),
    "C": ("20240617T112121_EXETER_UTM", "2021-06-17T11:21:21Z", 20.0),
    "D": ("20240816T112111_EXETER_LAEA", "2020-08-16T11:21:11Z", 30.0),
    "G": ("20240602T112119_EXETER_EPSG27700", "2023-06-02T11:21:19Z", None),
}
REAL_MAIN_2024 = "S2X_MSIL2A_20240602T112119_EXETER_EPSG27700"

# S1 scenes: key -> (S2 key it is placed on, datetime, orbit state, relative orbit,
#   swath as fractions (x0, y0, x1, y1) of that S2 footprint's lon/lat bounds (may reach outside), pixel source)
S1_SCENES = {
    "W": ("B", "2022-07-31T06:20:00Z", "descending", 154, (-0.1, -0.15, 0.55, 1.15), ("20240617T112121_EXETER_UTM", "B08", "B04")),
    "E": ("B", "2022-08-02T06:12:00Z", "descending", 52, (0.48, -0.15, 1.1, 1.15), ("20240801T112119_EXETER_LAEA", "B08", "B04")),
    "O": ("B", "2022-08-04T18:00:00Z", "ascending", 132, (0.1, 0.5, 0.9, 1.15), ("20240602T112119_EXETER_EPSG27700", "B08", "B04")),
    "T": ("B", "2022-07-29T06:25:00Z", "descending", 81, (0.35, -0.15, 0.65, 1.15), ("20240816T112111_EXETER_LAEA", "B08", "B03")),
    "X": ("B", "2022-07-28T06:30:00Z", "descending", 52, (-0.1, -0.15, 1.1, 1.15), ("20240826T112111_EXETER_LAEA", "B08", "B04")),
    "P": ("D", "2020-08-15T18:10:00Z", "ascending", 132, (0.3, -0.15, 1.1, 1.15), ("20240602T112119_EXETER_EPSG27700", "B08", "B03")),
    "F": ("real2024", "2024-06-03T06:15:00Z", "descending", 154, (-0.1, -0.15, 1.1, 1.15), ("20240801T112119_EXETER_LAEA", "B03", "B02")),
    "G1": ("G", "2023-06-03T06:15:00Z", "descending", 154, (-0.1, -0.15, 1.1, 1.15), ("20240617T112121_EXETER_UTM", "B03", "B02")),
}
S1_PC_NODATA = ("P",)  # scenes whose files declare nodata -32768 like the real PC RTC COGs (the others: NaN)
S1_FAR = ("2020-08-17T05:00:00Z", (12.40, 41.90, 12.60, 42.10))  # in D's window, over Rome: not intersecting
S1_CRS = "EPSG:32630"
S1_RES = 10.0
DEM_ORIGIN = (-3.5585, 50.7625)  # upper-left corner of the placed Rome DEM (lon, lat)
DEM_VOID = (slice(150, 200), slice(100, 150))  # rows, cols of the derived void (NaN)


def _dt(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _real_pixels(assets: Path, s2_items: dict[str, dict], suffix: str, band: str) -> np.ndarray:
    import rasterio

    it = s2_items[f"S2X_MSIL2A_{suffix}"]
    with rasterio.open(assets / it["assets"][band]["href"]) as ds:
        return ds.read(1)


def _add_extra_bands(assets: Path, items: list[dict]) -> None:
    """Write the 6 derived bands of each real item (:data:`EXTRA_BANDS`) and add their assets."""
    import rasterio

    for it in items:
        real = {}
        for b in ("B02", "B03", "B04", "B08"):
            with rasterio.open(assets / it["assets"][b]["href"]) as ds:
                real[b] = ds.read(1).astype(np.int64)
                crs, tr = ds.crs, ds.transform
        valid = real["B02"] != 0
        for band, weights in EXTRA_BANDS.items():
            total = sum(w * real[b] for b, w in weights.items()) // sum(weights.values())
            arr = np.where(valid, np.maximum(total, 1), 0).astype(np.uint16)
            name = f"{it['id']}_{band}_20m.tif"
            write_cog(assets / name, arr, crs, tr, "uint16", 0)
            it["assets"][band] = dict(it["assets"]["B02"], href=name)
        it["properties"]["eochips:derived_from"] = {
            "item": it["properties"]["eochips:derived_from"],
            **{band: "integer mean of " + " + ".join(f"{w} x {b}" for b, w in weights.items()) for band, weights in EXTRA_BANDS.items()},
        }
    for it in items:
        it["assets"] = {k: it["assets"][k] for k in [*S2_BANDS, "SCL"]}


def _s2_copies(real: dict[str, dict]) -> dict[str, dict]:
    import shapely
    from shapely.geometry import box, mapping, shape

    out = {}
    for key, (suffix, when, cloud) in S2_COPIES.items():
        src = real[f"S2X_MSIL2A_{suffix}"]
        d = _dt(when)
        new = json.loads(json.dumps(src))
        tag = suffix.split("_")[-1]
        new["id"] = f"S2X_MSIL2A_{d:%Y%m%dT%H%M%S}_EXETER_{tag}"
        p = new["properties"]
        p["datetime"] = when
        p["s2:processing_baseline"] = BASELINES[d.year]
        assumed = list(p["eochips:assumed"])
        if cloud is not None:
            p["eo:cloud_cover"] = cloud
            assumed.append("eo:cloud_cover")
        if key == "nodata-fail":  # the least cloudy of 2022, with S1 W/E/O in its window, but 25 % nodata
            p["s2:nodata_pixel_percentage"] = 25.0
            assumed.append("s2:nodata_pixel_percentage")
        if key == "off-centroid":  # the west 30 % of the footprint: misses the tile's centroid
            g = shape(new["geometry"])
            x0, y0, x1, y1 = g.bounds
            g = shapely.intersection(g, box(x0, y0, x0 + 0.3 * (x1 - x0), y1))
            new["geometry"], new["bbox"] = mapping(g), list(g.bounds)
            assumed.append("geometry")
        p["eochips:assumed"] = assumed
        p["eochips:derived_from"] = {"item": src["id"], "redated": f"{src['properties']['datetime']} -> {when}",
                                     "pixels": src["properties"]["eochips:derived_from"]}
        out[key] = new
    return out


def _swath(s2_item: dict, frac) -> Polygon:
    from shapely.geometry import box, shape

    x0, y0, x1, y1 = shape(s2_item["geometry"]).bounds
    w, h = x1 - x0, y1 - y0
    return box(x0 + frac[0] * w, y0 + frac[1] * h, x0 + frac[2] * w, y0 + frac[3] * h)


def _s1_pixels(poly: Polygon, src: np.ndarray) -> tuple[np.ndarray, Affine, tuple[int, int]]:
    """A 10 m EPSG:32630 raster over ``poly`` (lon/lat): ``src`` DNs repeated 2 x 2 (tiled when the
    swath is larger), squared to linear backscatter, NaN outside the polygon."""
    from affine import Affine
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    g = shape(transform_geom("EPSG:4326", S1_CRS, mapping(poly)))
    x0, y0, x1, y1 = g.bounds
    # an origin off the S2 grids' pixel edges (no half-pixel ties under nearest)
    x0 = np.floor(x0 / S1_RES) * S1_RES + 3.3
    y1 = np.ceil(y1 / S1_RES) * S1_RES + 2.7
    tr = Affine(S1_RES, 0, x0, 0, -S1_RES, y1)
    shape_ = (int(np.ceil((y1 - y0) / S1_RES)) + 1, int(np.ceil((x1 - x0) / S1_RES)) + 1)
    rows, cols = np.mgrid[0:shape_[0], 0:shape_[1]]
    dn = src[(rows // 2) % src.shape[0], (cols // 2) % src.shape[1]].astype(np.float64)
    arr = ((dn / 10000.0) ** 2).astype(np.float32)
    outside = geometry_mask([mapping(g)], out_shape=shape_, transform=tr)
    arr[outside] = np.nan
    return arr, tr, shape_


def _s1_items(assets: Path, s2_real: dict[str, dict], on: dict[str, dict]) -> list[dict]:
    from shapely.geometry import box

    template = json.loads((ITEMS / "stacgeoparquet__sentinel-1-rtc-pc.json").read_text())[0]
    out = []
    for key, (s2key, when, orbit, rel, frac, (suffix, vv_band, vh_band)) in S1_SCENES.items():
        poly = _swath(on[s2key], frac)
        it = json.loads(json.dumps(template))
        d = _dt(when)
        sid = f"S1X_IW_GRDH_1SDV_{d:%Y%m%dT%H%M%S}_EXETER_{key}_rtc"
        assets_out = {}
        proj = None
        for pol, band in (("vv", vv_band), ("vh", vh_band)):
            arr, tr, shape_ = _s1_pixels(poly, _real_pixels(assets, s2_real, suffix, band))
            name = f"{sid}_{pol}.tif"
            a = dict(it["assets"][pol], href=name)
            a.pop("file:size", None)
            a.pop("file:checksum", None)
            if key in S1_PC_NODATA:  # as the real files: outside the swath -32768, declared
                write_cog(assets / name, np.where(np.isnan(arr), np.float32(-32768), arr), S1_CRS, tr, "float32", -32768.0,
                          blocksize=256)
            else:
                write_cog(assets / name, arr, S1_CRS, tr, "float32", float("nan"), blocksize=256)
                a["raster:bands"] = [dict(a["raster:bands"][0], nodata="nan")]
            assets_out[pol] = a
            proj = (tr, shape_)
        it["assets"] = assets_out
        _place_s1(it, sid, when, orbit, rel, poly, proj, f"real S2 {suffix} {vv_band} (vv) / {vh_band} (vh) DNs, 2 x 2 repeated, (DN/1e4)**2")
        out.append(it)
    # one in D's window, far away (over Rome): searched for D's footprint, never intersecting
    when, bounds = S1_FAR
    it = json.loads(json.dumps(template))
    d = _dt(when)
    sid = f"S1X_IW_GRDH_1SDV_{d:%Y%m%dT%H%M%S}_ROME_rtc"
    it["assets"] = json.loads(json.dumps(out[0]["assets"]))
    _place_s1(it, sid, when, "ascending", 117, box(*bounds), None, "metadata only (the assets are those of scene W)")
    out.append(it)
    return out


def _place_s1(it: dict, sid: str, when: str, orbit: str, rel: int, poly, proj, pixels: str) -> None:
    from shapely.geometry import mapping

    d = _dt(when)
    it["id"] = sid
    it["geometry"], it["bbox"] = mapping(poly), list(poly.bounds)
    it["links"] = []
    p = it["properties"]
    p["datetime"] = when
    p["start_datetime"] = (d - timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    p["end_datetime"] = (d + timedelta(seconds=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    p["sat:orbit_state"] = orbit
    p["sat:relative_orbit"] = rel
    for k in ("proj:bbox", "proj:shape", "proj:transform", "proj:epsg"):
        p.pop(k, None)
    if proj is not None:
        tr, shape_ = proj
        p["proj:epsg"] = 32630
        p["proj:shape"] = list(shape_)
        p["proj:transform"] = list(tr)[:6] + [0.0, 0.0, 1.0]
    p["eochips:derived_from"] = {"metadata": "shared/data/real/stac_items/stacgeoparquet__sentinel-1-rtc-pc.json[0]", "pixels": pixels}
    p["eochips:assumed"] = ["geometry", "datetime", "start_datetime", "end_datetime", "sat:orbit_state",
                            "sat:relative_orbit", "proj:*"] + ([] if it["id"].endswith("_P_rtc") else ["raster:bands.nodata"])


def dem_mosaic() -> tuple[np.ndarray, Affine]:
    """The real Rome DEM placed over Exeter: float32 metres ``(360, 360)``, NaN in the void block,
    and its EPSG:4326 transform (1 arcsec pixels from :data:`DEM_ORIGIN`)."""
    import rasterio
    from affine import Affine

    with rasterio.open(REAL / "dem_rome" / "Rome-30m-DEM.tif") as ds:
        raw, tr_rome = ds.read(1), ds.transform
    arr = np.where(raw == -32768, np.nan, raw.astype(np.float32)).astype(np.float32)
    arr[DEM_VOID] = np.nan
    tr = Affine(tr_rome.a, 0, DEM_ORIGIN[0], 0, tr_rome.e, DEM_ORIGIN[1])
    return arr, tr


def _dem_items(assets: Path) -> list[dict]:
    import rasterio
    from affine import Affine
    from shapely.geometry import box, mapping

    template = json.loads((ITEMS / "stacgeoparquet__cop-dem-glo-30-pc.json").read_text())[0]
    arr, tr = dem_mosaic()
    with rasterio.open(REAL / "dem_rome" / "Rome-30m-DEM.tif") as ds:
        rome_tr = ds.transform
        rome = np.where(ds.read(1) == -32768, np.nan, ds.read(1).astype(np.float32)).astype(np.float32)
    half = arr.shape[1] // 2
    tiles = [
        ("Copernicus_DSM_COG_10_N50_00_W004_00_DEM_EXETER_W", arr[:, :half], tr, "Rome DEM cols 0-179 placed over Exeter"),
        ("Copernicus_DSM_COG_10_N50_00_W004_00_DEM_EXETER_E", arr[:, half:], tr * Affine.translation(half, 0),
         "Rome DEM cols 180-359 placed over Exeter"),
        ("Copernicus_DSM_COG_10_N41_00_E012_00_DEM_ROME", rome, rome_tr, "Rome DEM at its own place"),
    ]
    out = []
    for tid, a, t, what in tiles:
        name = f"{tid}.tif"
        write_cog(assets / name, a, "EPSG:4326", t, "float32", float("nan"))
        b = box(t.c, t.f + t.e * a.shape[0], t.c + t.a * a.shape[1], t.f)
        it = json.loads(json.dumps(template))
        it["id"] = tid
        it["geometry"], it["bbox"], it["links"] = mapping(b), list(b.bounds), []
        it["assets"] = {"data": dict(it["assets"]["data"], href=name, title=tid)}
        p = it["properties"]
        p["proj:shape"] = [int(a.shape[0]), int(a.shape[1])]
        p["proj:transform"] = list(t)[:6]
        p["eochips:derived_from"] = {"metadata": "shared/data/real/stac_items/stacgeoparquet__cop-dem-glo-30-pc.json[0]",
                                     "pixels": f"shared/data/real/dem_rome/Rome-30m-DEM.tif: {what} (float32, NaN void rows "
                                               f"{DEM_VOID[0].start}-{DEM_VOID[0].stop - 1}, cols {DEM_VOID[1].start}-{DEM_VOID[1].stop - 1})"}
        p["eochips:assumed"] = ["geometry", "proj:shape", "proj:transform"]
        out.append(it)
    return out


def _tile_file(path: Path, s2_items: list[dict]) -> Path:
    """GeoJSON tiles with a ``name``: row 0 = 30UVB (a polygon around the Exeter S2 extent), row 1 =
    33TTG around Rome (no Sentinel-2 there)."""
    import shapely
    from shapely.geometry import box, mapping, shape

    ex = shapely.union_all([shape(it["geometry"]) for it in s2_items]).bounds
    rows = [(TILE, box(*ex).buffer(0.002, join_style="mitre")), ("33TTG", box(12.45, 41.95, 12.55, 42.05))]
    feats = [{"type": "Feature", "properties": {"name": n}, "geometry": mapping(g)} for n, g in rows]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def build_clay_data(dst: Path) -> dict:
    """All assets under ``dst/assets`` (hrefs relative to it) and the items by role.

    Returns
    -------
    dict
        ``s2`` / ``s1`` / ``dem``: lists of STAC items (collections ``sentinel-2-l2a``,
        ``sentinel-1-rtc``, ``cop-dem-glo-30``); ``s2_by_key`` (the copies of :data:`S2_COPIES` and
        ``real2024``), ``s1_by_key`` (:data:`S1_SCENES`); ``tiles``: the MGRS tile file; ``assets``.
    """
    assets = dst / "assets"
    real = build_s2_exeter(assets)
    _add_extra_bands(assets, real)
    real_by_id = {it["id"]: it for it in real}
    copies = _s2_copies(real_by_id)
    on = dict(copies, real2024=real_by_id[REAL_MAIN_2024])
    s1 = _s1_items(assets, real_by_id, on)
    dem = _dem_items(assets)
    s2 = real + list(copies.values())
    return {"s2": s2, "s1": s1, "dem": dem, "s2_by_key": on,
            "s1_by_key": {k: it for k, it in zip(S1_SCENES, s1)}, "tiles": _tile_file(dst / "mgrs_tiles.geojson", s2),
            "assets": assets}


def _collection(cid: str, desc: str) -> dict:
    return {"type": "Collection", "stac_version": "1.0.0", "id": cid, "description": desc, "license": "proprietary",
            "links": [], "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                    "temporal": {"interval": [["2014-01-01T00:00:00Z", None]]}}}


@contextmanager
def serve_clay(data: dict):
    """The assets over a :class:`servers.RangeServer` and the items in a pgstac API. Yields the API
    root URL; the served items' hrefs point at the range server."""
    from servers import RangeServer, pgstac_api

    with RangeServer(data["assets"]) as srv:
        served = []
        for it in data["s2"] + data["s1"] + data["dem"]:
            it = json.loads(json.dumps(it))
            for a in it["assets"].values():
                if not a["href"].startswith("http"):
                    a["href"] = f"{srv.url}/{a['href']}"
            served.append(it)
        cols = [_collection("sentinel-2-l2a", "Sentinel-2 L2A (Exeter, real pixels)"),
                _collection("sentinel-1-rtc", "Sentinel-1 RTC (derived over Exeter)"),
                _collection("cop-dem-glo-30", "Copernicus DEM GLO-30 (derived over Exeter)")]
        with pgstac_api(cols, served) as url:
            yield url
