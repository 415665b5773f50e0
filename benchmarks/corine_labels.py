"""CORINE-scale vector labels: read one 109,800 m tile of a CLC-like file, rasterise its 8,281 patches.

    python benchmarks/corine_labels.py [--cells 1000] [--edge-points 6] [--file /tmp/eochips-clc-bench.gpkg]

The workload (no real CORINE extract is available here): a CLC-like GeoPackage in EPSG:3035 of
``cells`` x ``cells`` polygons (default 1000 x 1000 = 1,000,000) of 500 m, a partition of a
500 x 500 km square over Germany: a jittered grid whose nodes move up to 80 m and whose edges
carry ``edge-points`` extra vertices each, moved up to 25 m across the edge (shared by both
neighbours, so the cells tile the plane with no gap or overlap; 4 * (edge-points + 1) + 1
vertices per ring), then the heavy tail of real CLC: ``big`` (default 5000) large wavy
polygons (radius 1-4 km, 800-2000 vertices) written after the cells (so burnt over them). ``Code_18`` is text like real CLC, a random CLC level-3 code. The file is
written once to ``--file`` (kept in /tmp, reused when present).

Measured in a fresh process (so generating the file does not count): the read of one UTM tile
(EPSG:32632, 109,800 m, the tile's whole bounds: what the engine reads once per scene grid,
:func:`eochips.labels.vector_index`) and the rasterisation of all 91 x 91 patches of 120 x 120
px at 10 m (:func:`eochips.labels.rasterize_vector`, burn: value, uint16, fill 999). Reports
seconds and peak RSS (``resource.getrusage``, after the read and after the rasterisation), the
polygon counts (file, read for the tile) and checks a sample of patches against an independent
``rasterio.features.rasterize`` of the tile's polygons. Writes ``results/corine_labels.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLC_CODES = [111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223, 231, 241, 242, 243,
             244, 311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 335, 411, 412, 421, 422, 423, 511, 512, 521,
             522, 523]
X0, Y0 = 4_150_000.0, 2_750_000.0  # EPSG:3035 lower-left of the generated square (central Germany)
CELL = 500.0
TILE = 109_800.0
PATCH_PX, RES = 120, 10.0


def generate(path: str, cells: int, edge_points: int, big: int, seed: int = 13) -> None:
    """Write the CLC-like partition (see the module docstring) to ``path`` (GeoPackage, EPSG:3035)."""
    import pyarrow as pa
    import pyogrio
    import shapely

    rng = np.random.default_rng(seed)
    n = cells
    gx, gy = np.meshgrid(np.arange(n + 1) * CELL + X0, np.arange(n + 1) * CELL + Y0, indexing="xy")  # (y, x) nodes
    nodes = np.stack([gx, gy], -1) + rng.uniform(-80, 80, (n + 1, n + 1, 2))
    t = (np.arange(1, edge_points + 1) / (edge_points + 1))[:, None]  # positions along an edge

    def edge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Interior points of the edges a -> b (..., 2), moved across the edge: (..., k, 2)."""
        d = b - a
        normal = np.stack([-d[..., 1], d[..., 0]], -1) / np.linalg.norm(d, axis=-1, keepdims=True)
        off = rng.uniform(-25, 25, a.shape[:-1] + (edge_points, 1))
        return a[..., None, :] + t * d[..., None, :] + off * normal[..., None, :]

    horiz = edge(nodes[:, :-1], nodes[:, 1:])  # (n+1, n, k, 2): west -> east
    vert = edge(nodes[:-1, :], nodes[1:, :])  # (n, n+1, k, 2): south -> north
    with_codes = rng.choice(np.array(CLC_CODES), size=n * n)
    tmp = path + ".tmp.gpkg"
    if os.path.exists(tmp):
        os.remove(tmp)
    rows_per_chunk = max(1, 200_000 // n)
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        sl = slice(r0, r1)
        ll, lr = nodes[sl, :-1], nodes[sl, 1:]
        ul, ur = nodes[r0 + 1:r1 + 1, :-1], nodes[r0 + 1:r1 + 1, 1:]
        ring = np.concatenate([
            ll[:, :, None], horiz[sl], lr[:, :, None],  # south edge, west -> east
            vert[sl, 1:], ur[:, :, None],  # east edge, south -> north
            horiz[r0 + 1:r1 + 1][:, :, ::-1], ul[:, :, None],  # north edge, east -> west
            vert[sl, :-1][:, :, ::-1], ll[:, :, None],  # west edge, north -> south, closed
        ], axis=2).reshape(-1, 4 * (edge_points + 1) + 1, 2)
        geoms = shapely.polygons(ring)
        codes = with_codes[r0 * n:r1 * n]
        table = pa.table({"Code_18": pa.array([str(c) for c in codes]),
                          "geometry": pa.array(shapely.to_wkb(geoms), type=pa.binary())})
        pyogrio.write_arrow(table, tmp, layer="clc", driver="GPKG", geometry_name="geometry", geometry_type="Polygon",
                            crs="EPSG:3035", append=r0 > 0)
    # the heavy tail of real CLC: large polygons with many vertices (forests, lakes) over the cells (later over earlier)
    centres = rng.uniform([X0, Y0], [X0 + n * CELL, Y0 + n * CELL], (big, 2))
    radii = rng.uniform(1000, 4000, big)
    verts = rng.integers(800, 2000, big)
    codes = rng.choice(np.array(CLC_CODES), size=big)
    geoms = []
    for (cx, cy), r, k in zip(centres, radii, verts):
        a = np.linspace(0, 2 * np.pi, k, endpoint=False)
        rr = r * (1 + 0.25 * np.sin(5 * a + rng.uniform(0, 6)) + rng.uniform(-0.03, 0.03, k))
        xy = np.column_stack([cx + rr * np.cos(a), cy + rr * np.sin(a)])
        geoms.append(shapely.Polygon(np.vstack([xy, xy[:1]])))
    table = pa.table({"Code_18": pa.array([str(c) for c in codes]),
                      "geometry": pa.array(shapely.to_wkb(np.asarray(geoms, dtype=object)), type=pa.binary())})
    pyogrio.write_arrow(table, tmp, layer="clc", driver="GPKG", geometry_name="geometry", geometry_type="Polygon",
                        crs="EPSG:3035", append=True)
    os.replace(tmp, path)


def tile_grid() -> tuple[str, tuple[float, float, float, float]]:
    """The UTM tile (EPSG:32632) whose centre is the generated square's centre, on a 10 m grid."""
    from pyproj import Transformer

    cx, cy = X0 + 250_000.0, Y0 + 250_000.0
    ux, uy = Transformer.from_crs("EPSG:3035", "EPSG:32632", always_xy=True).transform(cx, cy)
    left, top = round((ux - TILE / 2) / 10) * 10.0, round((uy + TILE / 2) / 10) * 10.0
    return "EPSG:32632", (left, top - TILE, left + TILE, top)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def measure(path: str, check: int) -> dict:
    """Read + rasterise in this (fresh) process; see the module docstring."""
    import pyogrio
    from affine import Affine
    from pyproj import CRS
    from rasterio.features import rasterize

    from eochips.labels import rasterize_vector, vector_index

    crs, bounds = tile_grid()
    wkt = CRS.from_user_input(crs).to_wkt()
    n_patch = int(TILE // (PATCH_PX * RES))
    rng = np.random.default_rng(0)
    picks = [tuple(p) for p in rng.integers(0, n_patch, (check, 2)).tolist()]
    kept: dict[tuple[int, int], np.ndarray] = {}
    rss0 = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    idx = vector_index(path, "Code_18", (), wkt, bounds, burn="value", dtype="uint16")
    t_read, cpu_read = time.perf_counter() - t0, time.process_time() - c0
    rss_read = rss_mb()
    left, top = bounds[0], bounds[3]
    hist = np.zeros(65536, np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    for r in range(n_patch):  # the engine's order: units sorted by (row, col)
        for c in range(n_patch):
            tr = (RES, 0.0, left + c * PATCH_PX * RES, 0.0, -RES, top - r * PATCH_PX * RES)
            a = rasterize_vector(path, "Code_18", {}, wkt, tr, (PATCH_PX, PATCH_PX), bounds, burn="value",
                                 dtype="uint16", fill=999)
            hist += np.bincount(a.ravel(), minlength=65536)
            if (r, c) in picks:
                kept[(r, c)] = a
    t_burn, cpu_burn = time.perf_counter() - t0, time.process_time() - c0
    rss_burn = rss_mb()
    print(f"read {t_read:.1f} s, rasterise {t_burn:.1f} s", file=sys.stderr)
    # independent check of a sample of patches: geopandas reads and transforms the tile's polygons,
    # shapely picks those meeting the patch, GDAL burns them (file order) via rasterio
    import geopandas as gpd
    import shapely

    from eochips.geo import reproject_geometry

    bbox = reproject_geometry(shapely.box(*bounds), wkt, "EPSG:3035").bounds
    ref = gpd.read_file(path, bbox=bbox, engine="pyogrio").to_crs(wkt)
    ref_geoms, ref_codes = ref.geometry.values, ref["Code_18"].astype(int).to_numpy()
    bad = 0
    for r, c in picks:
        tr = Affine(RES, 0.0, left + c * PATCH_PX * RES, 0.0, -RES, top - r * PATCH_PX * RES)
        x0, y1 = tr * (0, 0)
        x1, y0 = tr * (PATCH_PX, PATCH_PX)
        sel = np.flatnonzero(shapely.intersects(ref_geoms, shapely.box(x0, y0, x1, y1)))
        want = rasterize(zip(ref_geoms[sel], ref_codes[sel].tolist()), out_shape=(PATCH_PX, PATCH_PX), transform=tr, fill=999,
                         dtype="uint16", all_touched=False)
        bad += int((want != kept[(r, c)]).sum())
    info = pyogrio.read_info(path)
    return {
        "file": path, "file_bytes": os.path.getsize(path), "file_polygons": int(info["features"]),
        "tile_crs": crs, "tile_bounds": list(bounds), "tile_polygons": int(len(idx.geoms)),
        "tile_vertices": int(shapely.get_num_coordinates(idx.geoms).sum()), "reference_polygons": int(len(ref_geoms)),
        "patches": n_patch * n_patch, "read_s": round(t_read, 2), "rasterise_s": round(t_burn, 2),
        "patches_per_s": round(n_patch * n_patch / t_burn, 1),
        "rss_start_mb": round(rss0, 1), "rss_peak_after_read_mb": round(rss_read, 1), "rss_peak_after_rasterise_mb": round(rss_burn, 1),
        "checked_patches": int(check), "pixels_differing_from_rasterio": bad,
        "fill_pixels": int(hist[999]), "codes_burnt": int((hist[:999] > 0).sum()),
        "read_cpu_s": round(cpu_read, 2), "rasterise_cpu_s": round(cpu_burn, 2), "load_average_1min": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--edge-points", type=int, default=6)
    ap.add_argument("--big", type=int, default=5000)
    ap.add_argument("--file", default="/tmp/eochips-clc-bench.gpkg")
    ap.add_argument("--check", type=int, default=50, help="patches checked against rasterio.features.rasterize")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.file, a.check)))
        return
    t0 = time.perf_counter()
    if not os.path.exists(a.file):
        generate(a.file, a.cells, a.edge_points, a.big)
    t_gen = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, "--measure", "--file", a.file, "--check", str(a.check)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update({"generate_s": round(t_gen, 1), "cells": a.cells, "edge_points": a.edge_points, "big": a.big,
                "vertices_per_ring": 4 * (a.edge_points + 1) + 1})
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "corine_labels.json").write_text(json.dumps(res, indent=1) + "\n")
    md = [
        "# CORINE-scale vector labels (benchmarks/corine_labels.py)", "",
        f"CLC-like GeoPackage (EPSG:3035): {res['file_polygons']:,} polygons ({res['cells'] ** 2:,} cells of {res['vertices_per_ring']} vertices a ring "
        f"+ {res['big']:,} large ones of 800-2000 vertices), "
        f"{res['file_bytes'] / 1e6:.0f} MB. One UTM tile ({res['tile_crs']}, 109,800 m): {res['tile_polygons']:,} polygons read; "
        f"{res['patches']:,} patches of 120 x 120 px at 10 m rasterised (burn: value, uint16, fill 999).", "",
        "| step | wall s | CPU s | peak RSS after (MB) |", "|---|---|---|---|",
        f"| read the tile (bbox read, checks, repair, to UTM, STRtree) | {res['read_s']} | {res['read_cpu_s']} | {res['rss_peak_after_read_mb']} |",
        f"| rasterise {res['patches']:,} patches | {res['rasterise_s']} ({res['patches_per_s']} patches/s) | {res['rasterise_cpu_s']} | {res['rss_peak_after_rasterise_mb']} |",
        "", f"Process RSS before the read: {res['rss_start_mb']} MB. {res['checked_patches']} random patches checked against "
        f"an independent rasterio.features.rasterize of the tile's polygons: {res['pixels_differing_from_rasterio']} pixels differ.",
        f"File generation (not timed above): {res['generate_s']} s (0 when reused). Load average (1 min) at the end: "
        f"{res['load_average_1min']} on {os.cpu_count()} cores (wall seconds stretch with it; CPU seconds do not).", "",
    ]
    (out / "corine_labels.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
