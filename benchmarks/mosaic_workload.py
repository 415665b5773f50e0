"""The cloud-free mosaic benchmark workload: eight full-size Sentinel-2 L2A-like scenes (four
MGRS-like tiles x two passes) made of real pixels, with SCL, around an AOI of 30 x 30 km (1x) or
60 x 60 km (4x) where the four tiles meet, and PC-shaped STAC items (a static ItemCollection).

How the files are made (also in benchmarks/README.md, *Cloud-free mosaic*):

- **Grid**: UTM 30N (EPSG:32630), 20 m, the native resolution of the real pixels. The four tiles
  have the Sentinel-2 tiling's 109.8 km frames with 100 km spacing (9.8 km overlaps): upper-left
  corners (399960, 5700000), (499980, 5700000), (399960, 5600040), (499980, 5600040) as the real
  tiles 30UVB, 30UWB, 30UVA, 30UWA; 5490 x 5490 px per asset. Every tile is on the same 20 m
  grid (their corners are 20 m multiples), and so is the output grid: the warp of every
  contender samples whole source pixels.
- **Assets** (Planetary Computer ``sentinel-2-l2a`` keys): B02, B03, B04, B08 (uint16) and SCL
  (uint8), all at 20 m (the real B02..B08 are 10 m: here their 20 m pixels, as in the files
  used), fill 0, 1024 px tiles, DEFLATE, internal overviews (as PC's COGs).
- **Pixels**: the real S2 L2A rasters over Exeter (``s2l2a_multitemporal_exeter``, the three
  LAEA dates 2024-08-01 (clear), 2024-08-16 (thin cirrus) and 2024-08-26 (cloudy), without their
  1 px fill border: 333 x 352 px of B02, B03, B04, B08, SCL), mirror-tiled over the scene, each
  mirror block taking all five rasters of one date drawn at random (seeded per scene,
  probabilities 75 / 12.5 / 12.5 %, the block grid shifted by a random phase per scene), so a
  band and its SCL agree and every scene has clouds and shadows in 20 % to 60 % of its blocks.
- **Footprints**: pass A (2024-08-11) covers its four frames fully; pass B (2024-08-01) has a
  swath edge: everything east of a line 12 degrees west of north through (508000, 5595000) is
  fill (0 in every band, SCL 0), as the real swath edges of Sentinel-2; its items' geometry is
  the frame minus that region. So the AOI's corners are covered by one or two scenes, its
  centre by up to eight: coverage is partial everywhere but the centre.
- **Items**: PC-like (``proj:epsg``/``proj:shape``/``proj:transform`` per asset,
  ``eo:cloud_cover`` = percent of the valid pixels (B02 != 0) with SCL 8, 9 or 10,
  ``s2:nodata_pixel_percentage``, ``s2:mgrs_tile``), marked ``eochips:derived_from``; one static
  ItemCollection (``items.json``), hrefs on the benchmark's Range server.
- **AOI**: a UTM box centred on (504880, 5595120): 30 km (1x, 1500 x 1500 px at 20 m) or 60 km
  (4x, 3000 x 3000 px) wide, all edges on the 20 m grid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer

HERE = Path(__file__).resolve().parent
REAL = HERE.parent.parent / "shared" / "data" / "real"

EPSG = 32630
CRS = f"EPSG:{EPSG}"
RES = 20.0
SIZE = 5490
BLOCK = 1024
BANDS = ("B02", "B03", "B04", "B08")
ASSETS = BANDS + ("SCL",)
SCL_CLOUD = (8, 9, 10)
TILES = {"30UVB": (399960.0, 5700000.0), "30UWB": (499980.0, 5700000.0),
         "30UVA": (399960.0, 5600040.0), "30UWA": (499980.0, 5600040.0)}
PASSES = {"A": "2024-08-11T11:16:21Z", "B": "2024-08-01T11:16:19Z"}
EXETER = ("exe_2024-08-01_12-21-19.tif", "exe_2024-08-16_12-21-11.tif", "exe_2024-08-26_12-21-11.tif")
EXETER_P = (0.75, 0.125, 0.125)
SWATH_POINT = (508000.0, 5595000.0)  # pass B: fill east of the line through this point ...
SWATH_HEADING_DEG = -12.0  # ... running this many degrees east of north
AOI_CENTRE = (504880.0, 5595120.0)
AOI_SIDE_M = {1: 30_000.0, 4: 60_000.0}  # scale (area factor) -> side
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
PROJ = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.0.0/schema.json"


def scenes() -> list[dict]:
    """The eight scenes: ``id``, ``tile``, ``pass``, ``datetime``, ``origin`` (x, y of the upper-left
    corner), ``seed`` (of its block map), pass A first, tiles in ``TILES`` order."""
    out = []
    for p, (pas, dt) in enumerate(PASSES.items()):
        for t, (tile, origin) in enumerate(TILES.items()):
            d = dt[:10].replace("-", "")
            dt_t = dt[:-3] + f"{int(dt[-3:-1]) + 5 * t:02d}Z"  # distinct per tile: 5 s apart along the pass
            out.append({"id": f"S2B_MSIL2A_{d}T111621_R137_T{tile}_{d}T{140000 + t:06d}", "tile": tile, "pass": pas,
                        "datetime": dt_t, "origin": origin, "seed": 100 + 10 * p + t})
    return out


def aoi_box(scale: int) -> tuple[float, float, float, float]:
    """``(minx, miny, maxx, maxy)`` of the AOI at ``scale`` (1 or 4: area factor), EPSG:32630 metres."""
    h = AOI_SIDE_M[scale] / 2
    cx, cy = AOI_CENTRE
    return (cx - h, cy - h, cx + h, cy + h)


def frame(origin: tuple[float, float]) -> shapely.Polygon:
    x0, y0 = origin
    return shapely.box(x0, y0 - SIZE * RES, x0 + SIZE * RES, y0)


def swath_fill() -> shapely.Polygon:
    """Pass B's fill: the half-plane east of the swath edge, as a polygon larger than every frame."""
    h = math.radians(SWATH_HEADING_DEG)
    ax, ay = math.sin(h), math.cos(h)  # along the edge
    ex, ey = ay, -ax  # to its right (east)
    px, py = SWATH_POINT
    far = 1e6
    return shapely.Polygon([(px - far * ax, py - far * ay), (px + far * ax, py + far * ay),
                            (px + far * ax + far * ex, py + far * ay + far * ey),
                            (px - far * ax + far * ex, py - far * ay + far * ey)])


def footprint(scene: dict) -> shapely.Polygon:
    """The scene's valid area (EPSG:32630): its frame, minus the swath fill for pass B."""
    f = frame(scene["origin"])
    return f.difference(swath_fill()) if scene["pass"] == "B" else f


def _sources() -> list[np.ndarray]:
    """The three Exeter rasters ``(5, 333, 352)`` (B02, B03, B04, B08, SCL), fill border dropped."""
    out = []
    for f in EXETER:
        with rasterio.open(REAL / "s2l2a_multitemporal_exeter" / f) as ds:
            a = ds.read()[:, 1:-1, 1:-1]
        if (a[:4] == 0).any():
            raise RuntimeError(f"{f}: fill inside the cropped window")
        out.append(a)
    return out


def scene_pixels(scene: dict, sources: list[np.ndarray]) -> np.ndarray:
    """``(5, 5490, 5490)`` uint16: B02, B03, B04, B08, SCL of ``scene`` (mirror blocks of the three
    dates drawn with ``EXETER_P``, seeded by ``scene["seed"]``, block grid shifted by a random
    phase), fill (pass B's swath) zero in every band."""
    rng = np.random.default_rng(scene["seed"])
    bh, bw = sources[0].shape[1:]
    dy, dx = int(rng.integers(0, bh)), int(rng.integers(0, bw))
    ny, nx = -(-(SIZE + dy) // bh), -(-(SIZE + dx) // bw)
    dates = rng.choice(len(sources), size=(ny, nx), p=EXETER_P)
    out = np.empty((5, ny * bh, nx * bw), np.uint16)
    for i in range(ny):
        for j in range(nx):
            a = sources[dates[i, j]]
            a = a[:, ::-1] if i % 2 else a
            a = a[:, :, ::-1] if j % 2 else a
            out[:, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] = a
    out = np.ascontiguousarray(out[:, dy:dy + SIZE, dx:dx + SIZE])
    if scene["pass"] == "B":
        fill = rasterio.features.geometry_mask([swath_fill()], (SIZE, SIZE), transform(scene), invert=True)
        out[:, fill] = 0
    return out


def transform(scene: dict) -> Affine:
    return Affine(RES, 0, scene["origin"][0], 0, -RES, scene["origin"][1])


def write_cog(path: Path, arr: np.ndarray, tr: Affine, resampling: str) -> None:
    """``arr`` ``(y, x)`` as a COG (DEFLATE, 1024 px tiles, internal overviews, nodata 0), atomically."""
    from clay_workload import write_cog as cog

    cog(path, arr, tr, CRS, 0, BLOCK, resampling)


def build_files(root: Path, only: int | None = None) -> dict:
    """Write every scene's COGs under ``root/{scene id}/`` (once: ``root/files.json`` marks
    completion) and return per scene id its facts (``eo:cloud_cover``, ``s2:nodata_pixel_percentage``).
    ``only``: build just the first ``only`` scenes (the smoke test)."""
    done = root / "files.json"
    if done.exists() and only is None:
        return json.loads(done.read_text())
    if not (REAL / "s2l2a_multitemporal_exeter").is_dir():
        raise SystemExit(f"the benchmark needs ../shared/data/real ({REAL} is missing)")
    sources = _sources()
    facts = {}
    for s in scenes()[:only]:
        d = root / s["id"]
        d.mkdir(parents=True, exist_ok=True)
        px = scene_pixels(s, sources)
        tr = transform(s)
        for k, a in enumerate(ASSETS):
            arr = px[k].astype(np.uint8) if a == "SCL" else px[k]
            write_cog(d / f"{a}.tif", arr, tr, "nearest" if a == "SCL" else "average")
        valid = px[0] != 0
        cloud = np.isin(px[4], SCL_CLOUD) & valid
        facts[s["id"]] = {"eo:cloud_cover": round(100.0 * float(cloud.sum()) / max(int(valid.sum()), 1), 4),
                          "s2:nodata_pixel_percentage": round(100.0 * float((~valid).mean()), 4)}
    if only is None:
        done.write_text(json.dumps(facts))
    return facts


def to4326(geom, step: float = 1000.0):
    tr = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    return shapely.transform(shapely.segmentize(geom, step), lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def item(scene: dict, facts: dict, base_url: str) -> dict:
    """The PC-shaped STAC item of ``scene`` with hrefs under ``base_url``."""
    geom = to4326(footprint(scene))
    proj = {"proj:epsg": EPSG, "proj:shape": [SIZE, SIZE], "proj:transform": list(transform(scene))[:6]}
    assets = {a: {"href": f"{base_url}/{scene['id']}/{a}.tif", "type": COG, "roles": ["data"], "gsd": RES, **proj}
              for a in ASSETS}
    props = {"datetime": scene["datetime"], "platform": "Sentinel-2B", "constellation": "Sentinel 2",
             "s2:mgrs_tile": scene["tile"], "proj:epsg": EPSG, **facts[scene["id"]],
             "eochips:derived_from": ("real S2 L2A pixels over Exeter (shared/data/real/s2l2a_multitemporal_exeter, "
                                      "2024-08-01/16/26, 20 m) mirror-tiled onto a full 109.8 km frame "
                                      "(benchmarks/mosaic_workload.py)")}
    return {"type": "Feature", "stac_version": "1.0.0", "stac_extensions": [PROJ, EO], "id": scene["id"],
            "collection": "sentinel-2-l2a", "geometry": shapely.geometry.mapping(geom), "bbox": list(geom.bounds),
            "properties": props, "assets": assets, "links": []}


def build(root: Path, base_url: str, dest: Path | None = None) -> dict:
    """Build (or reuse) the files under ``root`` (``benchmarks/.cache/mosaic``), write the items
    for ``base_url`` (``dest/items.json``, ``dest`` default ``root``: a run's own folder, so runs
    on different servers do not share them); return the manifest (also ``dest/workload.json``)."""
    root = root.resolve()
    dest = (dest or root).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    facts = build_files(root)
    items = [item(s, facts, base_url) for s in scenes()]
    cat = dest / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    manifest = {"root": str(root), "catalog": str(cat), "epsg": EPSG, "res": RES, "url": base_url,
                "scenes": [{**s, **facts[s["id"]], "href": {a: f"{base_url}/{s['id']}/{a}.tif" for a in ASSETS},
                            "path": {a: str(root / s["id"] / f"{a}.tif") for a in ASSETS}} for s in scenes()],
                "aoi": {str(k): list(aoi_box(k)) for k in AOI_SIDE_M}, "bands": list(BANDS)}
    manifest["manifest"] = str(dest / "workload.json")
    (dest / "workload.json").write_text(json.dumps(manifest))
    return manifest


def output_grid(scale: int) -> tuple[Affine, int, int]:
    """The output grid of the AOI at ``scale``: ``(transform, height, width)``, EPSG:32630, 20 m,
    the AOI's box (its edges are 20 m multiples)."""
    x0, y0, x1, y1 = aoi_box(scale)
    return Affine(RES, 0, x0, 0, -RES, y1), int(round((y1 - y0) / RES)), int(round((x1 - x0) / RES))
