"""The benchmark's own tools do what benchmarks/README.md says: a granule copy served with a
patched tie point is the same COG at the shifted place, and the seed-density chip sets hold
5 chips per granule, each fully inside one granule; the Clay benchmark's touched-tile bytes equal
a brute-force pixel count summed over tifffile's TileByteCounts, and its chip windows are the
seed's 21 x 21 row-major 512 px tiles."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import workload  # noqa: E402
from server import Files  # noqa: E402


def test_patched_tie_point_moves_the_granule_and_keeps_the_pixels(tmp_path):
    arr = (np.arange(512 * 512, dtype=np.int32).reshape(512, 512) % 3000).astype(np.int16)
    path = tmp_path / "B04.tif"
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=512, height=512, count=1, dtype="int16", nodata=-9999, crs="EPSG:32615",
                      transform=Affine(30, 0, workload.BASE_X, 0, -30, workload.BASE_Y)) as ds:
            ds.write(arr, 1)
        with mem.open() as ds:
            rio_copy(ds, path, driver="COG", compress="DEFLATE", blocksize=256)
    off = workload.tiepoint_offset(path)
    size = path.stat().st_size
    k = 13
    with open(path, "rb") as f:
        fd = f.fileno()
        patch = (off, struct.pack("<2d", *workload.granule_origin(k)))
        # served in pieces, as Range requests would be
        data = b"".join(Files.read(fd, s, min(4096, size - s), patch) for s in range(0, size, 4096))
    with MemoryFile(data) as mem, mem.open() as ds:
        x0, y0 = workload.granule_origin(k)
        assert (ds.transform.c, ds.transform.f) == (x0, y0)
        assert ds.crs.to_epsg() == 32615
        np.testing.assert_array_equal(ds.read(1), arr)


def test_chip_sets_match_the_densities():
    g = workload.label_grid()
    sets = workload.chip_sets(g)
    seed = sets["seed"]
    assert len(seed) == 50 and {k for k, _, _ in seed} == set(range(10))
    assert all(sum(1 for k, _, _ in seed if k == gk) == 5 for gk in range(10))
    dense = sets["dense"]
    assert len(dense) == len(workload.chips_in_granule(0, g)) > 200
    assert {(r, c) for k, r, c in seed if k == 0} <= {(r, c) for _, r, c in dense}  # same grid, same chips
    assert len(sets["medium"]) == 50


def _tiff_tile_bytes(path):
    """TileByteCounts of the first (full-resolution) image, read with tifffile: an independent
    reader of the tag GDAL's BLOCK_SIZE metadata comes from."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return list(page.tags["TileByteCounts"].value), page.tilelength, page.tilewidth, page.imagelength, page.imagewidth


def test_touched_tile_bytes_match_a_brute_force_count(tmp_path):
    import clay_workload as cw

    rng = np.random.default_rng(3)
    h, w, res = 260, 300, 20.0
    x0, y0 = cw.X0 + 3.0, cw.Y0 - 7.0  # a grid offset from the chips' (like S1), coarser (like 20 m bands)
    arr = (rng.integers(0, 4000, (h, w)) * (np.arange(w) % 7 > 2)).astype(np.uint16)  # blocks of unequal size
    path = tmp_path / "small.tif"
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=w, height=h, count=1, dtype="uint16", crs=f"EPSG:{cw.EPSG}",
                      transform=Affine(res, 0, x0, 0, -res, y0)) as ds:
            ds.write(arr, 1)
        with mem.open() as ds:
            rio_copy(ds, path, driver="COG", compress="DEFLATE", blocksize=64)
    counts, th, tw, ih, iw = _tiff_tile_bytes(path)
    ntx = -(-iw // tw)
    chip_t = Affine(10.0, 0, cw.X0, 0, -10.0, cw.Y0)
    size = 50
    chips = [(0, 0), (0, 450), (100, 100), (480, 560), (500, 590), (1000, 1000), (37, 413)]  # edges, outside, inside
    block, shape, sizes = cw.block_bytes(path)
    assert block == (th, tw) and shape == (ih, iw)
    assert [sizes[(i // ntx, i % ntx)] for i in range(len(counts))] == counts
    fast, brute = set(), set()
    px0 = x0 + res * np.arange(w)  # pixel left edges (x), top edges (y)
    py0 = y0 - res * np.arange(h)
    for r, c in chips:
        box = cw.source_box(f"EPSG:{cw.EPSG}", chip_t * Affine.translation(c, r), (size, size), f"EPSG:{cw.EPSG}",
                            Affine(res, 0, x0, 0, -res, y0))
        fast |= cw.touched_blocks(box, block, shape)
        cx0, cy1 = cw.X0 + c * 10.0, cw.Y0 - r * 10.0
        cx1, cy0 = cx0 + size * 10.0, cy1 - size * 10.0
        cols = np.nonzero(np.maximum(px0, cx0) < np.minimum(px0 + res, cx1))[0]
        rows = np.nonzero(np.maximum(py0 - res, cy0) < np.minimum(py0, cy1))[0]
        brute |= {(int(y) // th, int(x) // tw) for y in rows for x in cols}
    assert fast == brute and len(brute) > 4
    assert sum(sizes[b] for b in fast) == sum(counts[y * ntx + x] for y, x in brute)


def test_clay_chip_windows_are_the_seed_tiles():
    import clay_workload as cw

    wins = cw.chip_windows()
    assert len(wins) == 441 and wins[0] == (0, 0) and wins[1] == (0, 512) and wins[21] == (512, 0)
    assert max(r for r, _ in wins) + 512 <= 10980 < max(r for r, _ in wins) + 1024
