"""Chips that share scenes are read together: each COG tile is fetched and decoded once, the
arrays equal one-chip reads, and the unmasked warp fast path gives the masked path's values.
Real Exeter HLS pixels, re-tiled at 64 px so neighbouring 32 px chips share tiles."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.shutil import copy as rio_copy
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

from conftest import EXETER, needs_shared
from eochips.chips import LayerRead, SceneRead, StepRead, UnitTask, batch_key, process_batch, read_units
from eochips.config.models import Seed001Layout
from eochips.profiles import BandSpec, QASpec
from eochips.engine import make_batches
from eochips.reading import TileCache, read_onto, read_sources, source_window, warp_sources
from servers import RangeServer

CRS = "EPSG:32630"
N = 32  # chip side, px (30 m)
# two rows of four adjacent chips, row-major, inside the Exeter scene
GRIDS = [(CRS, (30.0, 0.0, 461000.0 + c * N * 30, 0.0, -30.0, 5621500.0 - r * N * 30), (N, N)) for r in range(2) for c in range(4)]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """Real B04 and Fmask of 2021-06-08 as COGs with 64 px tiles (no overviews)."""
    d = tmp_path_factory.mktemp("tiled")
    with rasterio.open(EXETER / "hls_exe_2021-06-08_12-27-08.tif") as src:
        arrays = {"B04": (src.read(3), "int16", -9999),
                  "Fmask": (np.where(src.read(5) == -9999, 255, np.clip(src.read(5), 0, 254)).astype("uint8"), "uint8", 255)}
        prof = dict(crs=src.crs, transform=src.transform, width=src.width, height=src.height, count=1)
    for name, (arr, dtype, nodata) in arrays.items():
        mem = d / f"{name}.mem.tif"
        with rasterio.open(mem, "w", driver="GTiff", dtype=dtype, nodata=nodata, **prof) as ds:
            ds.write(arr, 1)
        rio_copy(mem, d / f"{name}.tif", driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=64, OVERVIEWS="NONE")
        mem.unlink()
    return d


def _tiles(ds, windows) -> set[tuple[int, int]]:
    out = set()
    for w in windows:
        for r in range(int(w.row_off) // 64, (int(w.row_off + w.height) - 1) // 64 + 1):
            for c in range(int(w.col_off) // 64, (int(w.col_off + w.width) - 1) // 64 + 1):
                out.add((r, c))
    return out


@needs_shared
def test_tile_cache_reads_each_tile_once_and_equals_direct_reads(tiled):
    path = str(tiled / "B04.tif")
    cache = TileCache()
    srcs, dtype, nodata = read_sources(path, GRIDS, resampling="bilinear", cache=cache)
    with rasterio.open(path) as ds:
        wins = [source_window(ds, c, Affine(*t), sh, 2) for c, t, sh in GRIDS]
        needed = _tiles(ds, wins)
        for src, win in zip(srcs, wins):
            np.testing.assert_array_equal(src.data, ds.read(1, window=win))
    assert dtype == "int16" and nodata == -9999
    assert cache.fetched == len(needed)  # every tile once, although neighbouring chips share them
    assert cache.fetched < sum(len(_tiles(ds, [w])) for w in wins)  # ... which they do
    # only about the last rows of tiles stay cached
    assert {k[1] for k in cache.tiles} <= {t[0] for t in needed if t[0] >= int(wins[-1].row_off) // 64}


@needs_shared
def test_batch_over_http_sends_each_tile_once(tiled):
    with RangeServer(tiled) as server, rasterio.open(tiled / "B04.tif") as ds:
        # a URL no earlier read in this process used: GDAL's /vsicurl/ cache is process-wide and keyed by URL, and an
        # ephemeral port can come round again (then cached blocks would not be sent and the count would be short)
        href = f"{server.url}/B04.tif?read={uuid.uuid4().hex}"
        wins = [source_window(ds, c, Affine(*t), sh, 2) for c, t, sh in GRIDS]
        tile_bytes = sum(ds.block_size(1, r, c) for r, c in _tiles(ds, wins))
        per_chip = sum(ds.block_size(1, r, c) for w in wins for r, c in _tiles(ds, [w]))
        cache = TileCache()
        read_sources(href, GRIDS, resampling="bilinear", cache=cache)
        sent = server.bytes_sent
    # the tiles once, plus what GDAL reads on open: the header and the tile index, in 16 KiB chunks
    assert tile_bytes <= sent <= 1.3 * tile_bytes + 2 * 16384
    assert per_chip > 1.5 * tile_bytes  # what reading each chip on its own would fetch


@needs_shared
def test_unmasked_fast_path_equals_masked_warp(tiled):
    path = str(tiled / "B04.tif")
    srcs, _, nodata = read_sources(path, GRIDS, resampling="bilinear")
    checked = 0
    for (crs, t, sh), src in zip(GRIDS, srcs):
        assert not src.clipped and not (src.data == nodata).any()  # fast-path chips
        got = warp_sources([src, src], crs, Affine(*t), sh, "bilinear", "int16", -9999)
        ref = np.full(sh, -9999, np.int16)
        reproject(src.data, ref, src_transform=src.transform, src_crs=src.crs, dst_transform=Affine(*t), dst_crs=crs,
                  src_nodata=-9999, dst_nodata=-9999, resampling=Resampling.bilinear)
        np.testing.assert_array_equal(got[0], ref)
        np.testing.assert_array_equal(got[1], ref)
        checked += 1
    assert checked == len(GRIDS)


@needs_shared
def test_edge_chip_with_fill_keeps_its_fill_when_stacked(tiled):
    """A chip over the scene's fill row and edge: warped band by band with nodata masks, so two
    stacked bands give exactly the single-band (gdalwarp-equal) result, fill included."""
    t = (30.0, 0.0, 460860.0, 0.0, -30.0, 5622180.0)  # the top-left chip of the crop test
    srcs, _, nodata = read_sources(str(tiled / "B04.tif"), [(CRS, t, (N, N))], resampling="bilinear")
    assert srcs[0].clipped and (srcs[0].data == nodata).any()
    got = warp_sources([srcs[0], srcs[0]], CRS, Affine(*t), (N, N), "bilinear", "int16", -9999)
    ref = np.full((N, N), -9999, np.int16)
    with rasterio.open(tiled / "B04.tif") as ds:
        reproject(rasterio.band(ds, 1), ref, dst_transform=Affine(*t), dst_crs=CRS, resampling=Resampling.bilinear,
                  src_nodata=-9999, dst_nodata=-9999)
    assert (ref == -9999).sum() > 0
    np.testing.assert_array_equal(got[0], ref)
    np.testing.assert_array_equal(got[1], ref)


def _task(tmp_path, unit_id, hrefs, qa_href, transform=None, key=(0, 0, 0)) -> UnitTask:
    """A one-band (B04) + Fmask unit task, built by hand (unit tests of the batch reader)."""
    assets = (("B04", hrefs[0]),) + ((("Fmask", qa_href),) if qa_href else ())
    step = StepRead((SceneRead("S1", "2021-06-08T11:27:08+00:00", "primary", assets),))
    layer = LayerRead("hls", (BandSpec("red", "B04", 1, "int16", -9999, 0.0001, 0.0, 30, "bilinear"),),
                      QASpec("Fmask", "fmask", "uint8", 255, 30) if qa_href else None, (step,))
    return UnitTask(unit_id=unit_id, key=key, crs=CRS, transform=transform or GRIDS[0][1], shape=(N, N), layers=(layer,),
                    out=str(tmp_path / "out"), layouts=(Seed001Layout(kind="seed-001"),))


@needs_shared
def test_read_units_equals_one_unit_reads(tiled, tmp_path):
    tasks = [_task(tmp_path, f"chip_{i:03d}", [str(tiled / "B04.tif")], str(tiled / "Fmask.tif"), g[1], (0, i // 4, i % 4))
             for i, g in enumerate(GRIDS)]
    got = read_units(tasks, caches={})
    for task, layers in zip(tasks, got):
        ref = read_onto(str(tiled / "B04.tif"), CRS, task.transform, (N, N), resampling="bilinear")
        ref_qa = read_onto(str(tiled / "Fmask.tif"), CRS, task.transform, (N, N), resampling="nearest")
        np.testing.assert_array_equal(layers["hls"].bands[0][0], ref)
        np.testing.assert_array_equal(layers["hls"].qa[0], ref_qa)
    results = process_batch(tasks)
    assert [r.unit_id for r in results] == [t.unit_id for t in tasks]
    assert {r.status for r in results} == {"kept"}
    with rasterio.open(tmp_path / "out" / "chips" / "chip_005_merged.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), got[5]["hls"].bands[0][0])
        assert ds.descriptions == ("red@2021-06-08",) and ds.nodata == -9999


@needs_shared
def test_a_missing_asset_fails_the_chips_that_need_it(tiled, tmp_path):
    tasks = [_task(tmp_path, f"chip_{i:03d}", [str(tiled / "nope.tif")], str(tiled / "Fmask.tif"), g[1]) for i, g in enumerate(GRIDS[:3])]
    results = process_batch(tasks)
    assert [r.status for r in results] == ["failed"] * 3
    assert all("nope.tif" in r.reason and r.code == "io" for r in results)


def test_make_batches_groups_by_scenes_and_splits_for_workers(tmp_path):
    a = [_task(tmp_path, f"chip_000_{i:03d}", ["a.tif"], None, key=(0, 0, i)) for i in range(5)]
    b = [_task(tmp_path, f"chip_001_{i:03d}", ["b.tif"], None, key=(0, 1, i)) for i in range(300)]
    tasks = b[::-1] + a
    batches = make_batches(tasks, workers=2, max_units=128)
    assert sorted(len(x) for x in batches) == [5, 100, 100, 100]
    for x in batches:
        assert len({batch_key(t) for t in x}) == 1  # one scene set per batch
        assert [t.key for t in x] == sorted(t.key for t in x)  # row-major
    assert sorted(t.unit_id for x in batches for t in x) == sorted(t.unit_id for t in tasks)
    many = make_batches(a, workers=4, max_units=128)  # few units, more workers: split to keep all busy
    assert len(many) == 4 and sum(len(x) for x in many) == 5
    assert make_batches([a[0]], workers=8) == [[a[0]]]
    c = dataclasses.replace(a[0], unit_id="chip_002_000", key=(0, 2, 0),
                            layers=(dataclasses.replace(a[0].layers[0], steps=(StepRead((SceneRead("S2", "2021-06-09T00:00:00+00:00", "primary", (("B04", "c.tif"),)),)),)),))
    assert len(make_batches(a + [c], workers=1)) == 2


def test_batches_are_in_numeric_row_order_not_id_order(tmp_path):
    """D4: ids sort 'chip_1000_000' before 'chip_999_000' as strings; rows must go 999 then 1000
    (TileCache drops tile rows above the current unit, so a string order re-reads them)."""
    rows = [998, 999, 1000, 1001]
    tasks = [_task(tmp_path, f"chip_{r:03d}_000", ["a.tif"], None, key=(0, r, 0)) for r in rows]
    assert sorted(t.unit_id for t in tasks) != [t.unit_id for t in tasks]  # the string order differs
    (batch,) = make_batches(list(reversed(tasks)), workers=1)
    assert [t.key[1] for t in batch] == rows


def test_warp_threads_are_each_workers_share_of_the_cores(monkeypatch):
    """D9: N worker processes on a C-core host get C // N warp threads each (at least 1), not C
    each (engine v1: min(reading.threads, cores) per worker, cores^2 in all); and asking for a
    pool of another size never shuts down a pool a running task may be using."""
    import os

    from eochips.chips import _pool, cpu_share

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [cpu_share(n) for n in (1, 2, 4, 16, 32)] == [16, 8, 4, 1, 1]
    a = _pool("cpu-test", 2)
    b = _pool("cpu-test", 3)
    assert a is not b and a.submit(lambda: 41 + 1).result() == 42  # the first pool still runs work
    assert _pool("cpu-test", 2) is a
