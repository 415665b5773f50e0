"""The benchmark's own tools do what benchmarks/README.md says: a granule copy served with a
patched tie point is the same COG at the shifted place, and the seed-density chip sets hold
5 chips per granule, each fully inside one granule."""

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
