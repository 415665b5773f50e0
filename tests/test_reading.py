"""Reprojection correctness: eochips' windowed reads equal an independent GDAL reprojection
(the ``gdalwarp`` CLI from Debian's gdal-bin; the tests skip without it, rather than compare
with the warper eochips itself uses) of the same chip grid: exact for nearest, within 1 DN for
bilinear. Over local files and over HTTP Range requests."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import rasterio
from affine import Affine

from conftest import needs_shared
from eochips.errors import ReadError
from eochips.reading import read_onto, source_window

pytestmark = needs_shared

# chips on a UTM 30N 30 m grid over the real Exeter scenes (stored in a local LAEA CRS)
CHIPS = [(461000.0, 5621500.0, 32), (463123.0, 5619877.0, 48), (466900.0, 5622300.0, 32)]  # last one crosses the edge


needs_gdalwarp = pytest.mark.skipif(shutil.which("gdalwarp") is None,
                                    reason="gdalwarp (Debian gdal-bin) is not installed: no independent reference")


def _reference(path, band, x0, y1, n, rs, nodata):
    """The chip as gdalwarp makes it from the whole single-band file."""
    out = path.parent / f"ref_{band}_{rs}_{int(x0)}_{n}.tif"
    subprocess.run(["gdalwarp", "-q", "-overwrite", "-t_srs", "EPSG:32630",
                    "-te", str(x0), str(y1 - 30 * n), str(x0 + 30 * n), str(y1), "-tr", "30", "30",
                    "-r", {"nearest": "near"}.get(rs, rs), "-srcnodata", str(nodata), "-dstnodata", str(nodata), str(path), str(out)], check=True)
    with rasterio.open(out) as ds:
        return ds.read(1)


@needs_gdalwarp
@pytest.mark.parametrize("x0,y1,n", CHIPS)
@pytest.mark.parametrize("rs", ["nearest", "bilinear"])
def test_matches_gdalwarp_local(hls_dir, x0, y1, n, rs):
    d, items = hls_dir
    for it in items[:2]:
        for key in ("B04", "Fmask"):
            path = d / it["assets"][key]["href"]
            nodata = 255 if key == "Fmask" else -9999
            if key == "Fmask" and rs != "nearest":
                continue
            got = read_onto(str(path), "EPSG:32630", (30, 0, x0, 0, -30, y1), (n, n), resampling=rs)
            ref = _reference(path, 1, x0, y1, n, rs, nodata)
            assert got.dtype == ref.dtype and got.shape == (n, n)
            if rs == "nearest":
                np.testing.assert_array_equal(got, ref)
            else:
                assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
                assert np.mean(got == ref) >= 0.99
            # nodata is carried: fill where the reference has fill
            np.testing.assert_array_equal(got == nodata, ref == nodata)


def test_over_http_equals_local_read(hls_dir, cog_server):
    d, items = hls_dir
    it = items[0]
    # a URL no other test opened in this process (open handles and GDAL's caches are per URL)
    href = f"{cog_server.url}/{it['assets']['B04']['href']}?case=over-http"
    x0, y1, n = CHIPS[0]
    before = cog_server.bytes_sent
    got = read_onto(href, "EPSG:32630", (30, 0, x0, 0, -30, y1), (n, n), resampling="bilinear")
    ref = read_onto(str(d / it["assets"]["B04"]["href"]), "EPSG:32630", (30, 0, x0, 0, -30, y1), (n, n), resampling="bilinear")
    np.testing.assert_array_equal(got, ref)
    assert cog_server.bytes_sent - before > 0


def test_source_window_is_small_and_clipped(hls_dir):
    d, items = hls_dir
    with rasterio.open(d / items[0]["assets"]["B04"]["href"]) as ds:
        win = source_window(ds, "EPSG:32630", Affine(30, 0, 463123.0, 0, -30, 5619877.0), (48, 48), margin=2)
        assert 48 <= win.width <= 48 + 2 * 2 + 2 and 48 <= win.height <= 48 + 2 * 2 + 2
        edge = source_window(ds, "EPSG:32630", Affine(30, 0, 466900.0, 0, -30, 5622300.0), (32, 32), margin=2)
        assert edge.col_off + edge.width == ds.width and edge.row_off == 0
        assert source_window(ds, "EPSG:32630", Affine(30, 0, 600000.0, 0, -30, 5622300.0), (32, 32)) is None


def test_missing_asset_is_a_permanent_read_error(cog_server):
    with pytest.raises(ReadError) as exc:
        read_onto(f"{cog_server.url}/does-not-exist.tif", "EPSG:32630", (30, 0, 0, 0, -30, 0), (8, 8), max_retries=1)
    assert "does-not-exist.tif" in str(exc.value) and type(exc.value) is ReadError


def test_gdal_block_cache_is_megabytes_not_bytes():
    """rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64 in BYTES: the read env's 128 (MiB) once
    gave GDAL a 128-byte block cache (every block decoded again on each read)."""
    import rasterio
    from rasterio._env import get_gdal_config

    from eochips.config import ReadingConfig
    from eochips.reading import gdal_env, read_env

    with rasterio.Env(**gdal_env()):
        assert get_gdal_config("GDAL_CACHEMAX") == 128 * 2**20
    with rasterio.Env(**read_env(ReadingConfig(gdal_cachemax_mb=64))):
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * 2**20
