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
from conftest import needs_shared  # noqa: E402
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


@needs_shared
def test_mosaic_workload_scene_matches_its_item():
    """A swath-edge scene of the mosaic benchmark: its item's footprint (EPSG:4326, back to UTM
    with pyproj) holds exactly the pixels with data (B02 != 0, up to the edge pixels), SCL is 0
    exactly where the bands are, and eo:cloud_cover is the share of SCL 8/9/10 among them."""
    import mosaic_workload as mw
    import shapely
    from pyproj import Transformer
    from rasterio.features import geometry_mask

    s = next(x for x in mw.scenes() if x["tile"] == "30UVB" and x["pass"] == "B")
    px = mw.scene_pixels(s, mw._sources())
    assert px.shape == (5, 5490, 5490)
    valid = px[0] != 0
    assert ((px[1:4] != 0) == valid).all() and ((px[4] != 0) == valid).all()
    assert 0.5 < valid.mean() < 0.99  # a partial scene
    it = mw.item(s, {s["id"]: {"eo:cloud_cover": 0.0, "s2:nodata_pixel_percentage": 0.0}}, "http://x")
    tr = Transformer.from_crs("EPSG:4326", mw.CRS, always_xy=True)
    fp = shapely.transform(shapely.geometry.shape(it["geometry"]),
                           lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    inside = geometry_mask([fp], valid.shape, mw.transform(s), invert=True)
    edge = (inside != valid).sum()
    assert edge < 2 * 5490  # at most about one pixel per row along the slanted edge
    cloud = 100.0 * np.isin(px[4][valid], (8, 9, 10)).mean()
    assert 5 < cloud < 20  # passes the recipe's search (eo:cloud_cover <= 20)


def test_mosaic_seed_dilation_is_an_11_by_11_binary_dilation():
    """The contenders' mask: SCL 0, 1, 3, 8, 9, 10 grown by scipy's binary dilation with an
    11 x 11 square (outside the array not masked), valid also needs B02 != 0."""
    import mosaic_contenders as mc
    from scipy import ndimage

    rng = np.random.default_rng(5)
    scl = rng.choice([0, 1, 3, 4, 5, 8, 9, 10], size=(80, 90), p=[0.002, 0.002, 0.004, 0.5, 0.484, 0.003, 0.003, 0.002])
    b02 = rng.integers(0, 50, size=scl.shape).astype(np.uint16)
    ref = ~ndimage.binary_dilation(np.isin(scl, [0, 1, 3, 8, 9, 10]), structure=np.ones((11, 11), bool)) & (b02 != 0)
    got = mc.valid_mask(b02, scl)
    assert got.dtype == bool and (got == ref).all() and 0.05 < got.mean() < 0.95
    assert (mc.valid_mask(b02, None) == (b02 != 0)).all()


# --------------------------------------------------------------------------------------
# the BigEarthNet benchmark (benchmarks/bigearthnet*.py)

def test_bigearthnet_patches_are_the_91_by_91_grid_at_every_resolution():
    """8,281 patches named {product}_{col:02d}_{row:02d}, row-major; each patch's window covers
    the same 1200 m square at 10, 20 and 60 m (computed here from the tile origin)."""
    import bigearthnet_workload as bw

    ids = bw.patch_ids()
    assert len(ids) == 91 * 91 == 8281 and len({n for n, _, _ in ids}) == 8281
    assert ids[0] == ("S2A_MSIL2A_20200318T085701_N0214_R007_T34SGA_00_00", 0, 0)
    assert ids[1][1:] == (1, 0) and ids[91][1:] == (0, 1) and ids[-1][0].endswith("_90_90")
    for band, n in (("B02", 120), ("B05", 60), ("B01", 20), ("SCL", 60)):
        for col, row in ((0, 0), (37, 5), (90, 90)):
            r0, c0, size = bw.patch_window(band, col, row)
            assert size == n
            t = bw.band_transform(band)
            x0, y0 = t * (c0, r0)
            x1, y1 = t * (c0 + size, r0 + size)
            assert (x0, y0) == (699960.0 + 1200.0 * col, 3600000.0 - 1200.0 * row)
            assert (x1 - x0, y0 - y1) == (1200.0, 1200.0)
            assert r0 + size <= bw.band_shape(band)


def test_bigearthnet_mirror_is_numpy_symmetric_padding():
    import bigearthnet_workload as bw

    a = np.arange(7 * 5, dtype=np.uint16).reshape(7, 5)
    got = bw.mirror(a, (30, 23))
    ref = np.pad(a, ((0, 23), (0, 18)), mode="symmetric")
    np.testing.assert_array_equal(got, ref)


def test_bigearthnet_clc_tessellation_covers_its_box_once():
    """The CLC-like polygons tile their box with no gap or overlap (areas sum to the box's and
    to their union's), carry CLC level-3 codes as text, UNLABELED ones among them, and have
    tens of vertices each."""
    import bigearthnet_workload as bw
    import shapely

    cells, codes = bw.clc_polygons(seed=3, min_polygons=300)
    box = shapely.box(*shapely.total_bounds(cells))
    areas = shapely.area(cells)
    assert abs(areas.sum() - box.area) < 1e-6 * box.area
    assert abs(shapely.union_all(cells).area - box.area) < 1e-6 * box.area
    assert codes.dtype.kind == "U" and set(codes.astype(int)) <= set(bw.CLC_CODES)
    assert set(codes.astype(int)) & set(bw.UNLABELED)
    tile = bw.reproject(bw.tile_box(), bw.CRS, bw.CLC_CRS)
    assert shapely.intersects(cells, tile).sum() >= 300 and box.contains(tile)
    assert shapely.get_num_coordinates(cells).mean() > 20


def test_bigearthnet_script_labels_match_a_pixel_centre_lookup(tmp_path):
    """The per-patch script's reference map (bbox read, reprojection, rasterize) equals an
    independent lookup: each 10 m pixel centre moved to EPSG:3035 with pyproj and the polygon
    containing it found with an STRtree (999 where none); at most a few pixels on polygon edges
    may differ (the edges are straight in one CRS, not the other)."""
    import bigearthnet_contenders as bc
    import bigearthnet_workload as bw
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    cells, codes = bw.clc_polygons(seed=5, min_polygons=4000)
    path = tmp_path / "clc.gpkg"
    gpd.GeoDataFrame({bw.CLC_FIELD: codes}, geometry=cells, crs=bw.CLC_CRS).to_file(path, layer=bw.CLC_LAYER, engine="pyogrio")
    col, row = 40, 53
    got = bc.patch_labels(str(path), col, row)
    assert got.shape == (120, 120) and got.dtype == np.uint16
    t = bc.patch_transform("B02", col, row)
    cc, rr = np.meshgrid(np.arange(120) + 0.5, np.arange(120) + 0.5)
    xs, ys = t * (cc.ravel(), rr.ravel())
    px, py = Transformer.from_crs(bw.CRS, bw.CLC_CRS, always_xy=True).transform(xs, ys)
    pts = shapely.points(px, py)
    tree = shapely.STRtree(cells)
    ip, ig = tree.query(pts, predicate="within")
    ref = np.full(pts.shape, 999, np.uint16)
    ref[ip] = codes[ig].astype(int)
    ref = ref.reshape(120, 120)
    assert len(np.unique(ig)) >= 3 and len(np.unique(ref)) >= 2 and len(ip) == 120 * 120
    assert (got != ref).sum() <= 30
    assert bc.unlabeled_share(np.array([[122, 211], [999, 311]], np.uint16)) == 0.5


def test_bigearthnet_standin_recipe_is_a_valid_eochips_recipe(tmp_path):
    """The benchmark's stand-in recipe loads as an eochips recipe (today's models), with the
    label-fraction filter on the UNLABELED codes' class ids and class 0 (no polygon)."""
    import bigearthnet
    import bigearthnet_workload as bw
    from eochips.config.models import Recipe

    (tmp_path / "catalog.json").write_text("{}")
    (tmp_path / "clc.gpkg").write_bytes(b"")
    r, kind = bigearthnet.recipe({"catalog": str(tmp_path / "catalog.json"), "vector": str(tmp_path / "clc.gpkg")})
    rec = Recipe.model_validate(r)
    assert rec.units.resolution_groups and rec.units.size_m == 1200
    ids = bigearthnet.unlabeled_ids()
    c = bigearthnet.classes()
    assert ids[0] == 0 and sorted(int(k) for k, v in c.items() if v in ids[1:]) == sorted(bw.UNLABELED)
    assert len(set(c.values())) == 44 and min(c.values()) == 1
