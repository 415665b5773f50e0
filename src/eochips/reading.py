"""Reading assets onto a chip's grid: windowed COG reads + warp, nothing more.

Each read opens the asset (local path, ``http(s)://``, ``s3://``), computes the source
window the chip's footprint needs (plus the resampling kernel's margin), reads only that
window (GDAL fetches only the COG blocks it touches, never the whole scene) and warps the
small array onto the chip grid with GDAL's warper (``rasterio.warp.reproject``).

Why not a ``WarpedVRT``: on a chip-sized VRT, GDAL's warped-VRT block path gave bilinear
values up to 80 DN away from ``gdalwarp`` of the same grid (only ~5 % of pixels equal on
real HLS), while the window + reproject route equals ``gdalwarp`` exactly; see
``tests/test_reading.py``.

- Resampling is per band (bilinear for reflectance, nearest for QA by default).
- Nodata is carried through: source fill pixels are excluded from interpolation and the
  output is filled with the same value where the source has no data.
- Open datasets are cached per thread and reused across chips (re-opening per chip cost
  +35 % time and +40 % bytes in DESIGN.md's measurements); a thread never shares a handle.
- GDAL options live in a plain dict and a ``rasterio.Env`` is opened around every read
  (GDAL's config is thread-local; STYLE.md §8).
- Transient errors (HTTP 5xx/429, resets, timeouts, truncated bodies) are retried with
  capped exponential backoff and jitter; permanent ones (404, not a TIFF) raise
  :class:`~eochips.errors.ReadError` at once.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Mapping

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.crs import CRS
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from .errors import ReadError, TransientReadError
from .search import redact

DEFAULT_GDAL_ENV: dict[str, str | int | bool] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
    "GDAL_HTTP_MAX_RETRY": 3,
    "GDAL_HTTP_RETRY_DELAY": 0.5,
    "GDAL_HTTP_TIMEOUT": 60,
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "GDAL_CACHEMAX": 128,
}

# rasterio's in-memory datasets (used by reproject on arrays) read their transform before it is set
# and warn; the arrays are georeferenced right after. Filter exactly that message, process-wide
# (warnings.catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=rasterio.errors.NotGeoreferencedWarning)

# HTTP answers that will not change on retry
_PERMANENT = ("HTTP response code: 404", "HTTP response code: 403", "HTTP response code: 401",
              "HTTP response code: 400", "HTTP response code: 410", "does not exist", "No such file")
# the bytes are not a (complete) GeoTIFF: retried once with a fresh handle (a truncated transfer
# looks the same), then permanent
_FORMAT = ("not recognized as being in a supported file format", "not a TIFF", "TIFFReadDirectory",
           "TIFFFillTile", "TIFFFillStrip", "IReadBlock failed", "Read error", "Cannot read TIFF header")
_local = threading.local()


def gdal_env(cachemax_mb: int = 128, extra: Mapping[str, str] | None = None) -> dict:
    """The GDAL options of a read (defaults above, plus credentials in ``extra``)."""
    env = dict(DEFAULT_GDAL_ENV, GDAL_CACHEMAX=cachemax_mb)
    env.update(extra or {})
    return env


def _cache() -> OrderedDict:
    c = getattr(_local, "datasets", None)
    if c is None:
        c = _local.datasets = OrderedDict()
    return c


def _open(href: str, max_open: int = 64):
    cache = _cache()
    ds = cache.get(href)
    if ds is not None and not ds.closed:
        cache.move_to_end(href)
        return ds
    ds = rasterio.open(href)
    cache[href] = ds
    while len(cache) > max_open:
        _, old = cache.popitem(last=False)
        old.close()
    return ds


def _evict(href: str) -> None:
    ds = _cache().pop(href, None)
    if ds is not None:
        ds.close()


_MARGIN = {Resampling.nearest: 1, Resampling.bilinear: 2, Resampling.cubic: 3, Resampling.average: 2}


def source_window(ds, crs: str, transform: Affine, shape: tuple[int, int], margin: int = 2) -> Window | None:
    """The source pixel window a chip needs (its footprint in source pixels, densified edges,
    widened by ``margin`` pixels for the resampling kernel, clipped to the raster); None
    when the chip does not overlap the source."""
    h, w = shape
    n = 9
    ts = np.linspace(0, 1, n)
    edge_x = np.concatenate([ts * w, np.full(n, w), ts[::-1] * w, np.zeros(n)])
    edge_y = np.concatenate([np.zeros(n), ts * h, np.full(n, h), ts[::-1] * h])
    xs, ys = transform @ (edge_x, edge_y)
    if CRS.from_user_input(crs) != ds.crs:
        xs, ys = warp_transform(crs, ds.crs, list(xs), list(ys))
    cols, rows = ~ds.transform @ (np.asarray(xs), np.asarray(ys))
    c0 = max(int(np.floor(np.min(cols))) - margin, 0)
    r0 = max(int(np.floor(np.min(rows))) - margin, 0)
    c1 = min(int(np.ceil(np.max(cols))) + margin, ds.width)
    r1 = min(int(np.ceil(np.max(rows))) + margin, ds.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _warp_window(ds, band: int, crs: str, transform: Affine, shape: tuple[int, int], rs: Resampling,
                 nodata: float | None, dtype: str) -> np.ndarray:
    """Windowed read of the source blocks a chip needs, then a GDAL warp of that small array
    onto the chip grid (same result as ``gdalwarp`` of the whole band onto the chip grid)."""
    fill = nodata if nodata is not None else 0
    out = np.full(shape, fill, dtype=dtype)
    win = source_window(ds, crs, transform, shape, _MARGIN.get(rs, 3))
    if win is None:
        return out
    src = ds.read(band, window=win)
    reproject(
        src, out, src_transform=ds.transform @ Affine.translation(win.col_off, win.row_off), src_crs=ds.crs, src_nodata=nodata,
        dst_transform=transform, dst_crs=crs, dst_nodata=fill, resampling=rs,
    )
    return out


def error_text(exc: BaseException) -> str:
    """The most specific message of an exception chain (rasterio's "Read failed. See previous
    exception for details." hides GDAL's own message in ``__cause__``)."""
    msgs = []
    while exc is not None and len(msgs) < 8:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "See previous exception" not in text:
            msgs.append(text)
        exc = exc.__cause__ or exc.__context__
    return msgs[-1] if msgs else "unknown error"


def classify(exc: BaseException, href: str) -> ReadError:
    """Turn a GDAL/rasterio error into a permanent :class:`ReadError` or a :class:`TransientReadError`.

    HTTP 4xx (but 429) and missing files are permanent at once. "Not a TIFF" / decode errors
    are permanent for a local file (its bytes will not change), but transient for a remote one:
    a truncated transfer gives exactly the error of a truncated file ("TIFFFillTile: Read error
    ... got N bytes, expected M"), so remote decode errors are retried until the retries run
    out. Everything else (5xx, 429, resets, timeouts) is transient. Messages are redacted.
    """
    msg = redact(error_text(exc))
    where = redact(href)
    if any(p in msg for p in _PERMANENT):
        return ReadError(f"cannot read {where}: {msg}")
    if any(p in msg for p in _FORMAT):
        if not href.startswith(("http://", "https://", "s3://", "gs://", "az://")):
            return ReadError(f"cannot read {where}: not a valid GeoTIFF ({msg})")
        return TransientReadError(f"cannot read {where}: not a valid GeoTIFF or a broken transfer ({msg})")
    return TransientReadError(f"cannot read {where} (transient): {msg}")


_uncached: set[str] = set()  # hrefs that had a transient failure in this process


def _env_for(href: str, env: Mapping) -> dict:
    """GDAL options of one read. After a transient failure GDAL's process-wide /vsicurl/ region
    cache can keep serving the broken transfer (a truncated body was never re-requested in
    tests), so such an href is read with ``CPL_VSIL_CURL_NON_CACHED`` from then on."""
    out = dict(env)
    if href in _uncached and href.startswith(("http://", "https://")):
        out["CPL_VSIL_CURL_NON_CACHED"] = f"/vsicurl/{href}"
    return out


def _retrying(fn, href: str, max_retries: int, retries: list | None, env: Mapping):
    """Call ``fn(ds)`` on the cached dataset of ``href`` with the retry policy of this module."""

    def attempt():
        try:
            with rasterio.Env(**_env_for(href, env)):
                return fn(_open(href))
        except ReadError:
            _evict(href)
            raise
        except (rasterio.errors.RasterioError, OSError) as exc:
            _evict(href)
            err = classify(exc, href)
            if isinstance(err, TransientReadError):
                _uncached.add(href)
            raise err from None

    try:
        for att in Retrying(
            retry=retry_if_exception_type(TransientReadError),
            stop=stop_after_attempt(max_retries + 1),
            wait=wait_random_exponential(multiplier=0.25, max=8),
            before_sleep=(lambda rs: retries.append(str(rs.outcome.exception()))) if retries is not None else None,
            reraise=True,
        ):
            with att:
                return attempt()
    except TransientReadError as exc:
        raise ReadError(f"{exc} (gave up after {max_retries + 1} attempts)") from None
    raise AssertionError("unreachable")  # pragma: no cover


def probe(href: str, *, env: Mapping | None = None, max_retries: int = 4, size: int = 64):
    """Open an asset and read band 1 decimated to about ``size`` pixels a side (overviews are
    used when the COG has them).

    Returns
    -------
    crs, nodata, small
        The asset's CRS (None if it has none), its declared nodata, and the ``(y, x)`` sample.

    Raises
    ------
    ReadError
        As :func:`read_onto`.
    """

    def go(ds):
        f = max(1, max(ds.width, ds.height) // size)
        return ds.crs, ds.nodata, ds.read(1, out_shape=(max(1, ds.height // f), max(1, ds.width // f)))

    return _retrying(go, href, max_retries, None, env or gdal_env())


def read_onto(
    href: str,
    crs: str,
    transform: tuple,
    shape: tuple[int, int],
    *,
    band: int = 1,
    resampling: str = "bilinear",
    src_nodata: float | None = None,
    dtype: str | None = None,
    env: Mapping | None = None,
    max_retries: int = 4,
    retries: list | None = None,
) -> np.ndarray:
    """Read one band of one asset onto a chip grid.

    Parameters
    ----------
    href
        Local path, ``http(s)://`` URL or ``s3://`` URI of a GeoTIFF / COG.
    crs, transform, shape
        The chip's grid: CRS (WKT or ``EPSG:n``), affine coefficients ``(a, b, c, d, e, f)``
        and ``(height, width)`` in pixels.
    band
        1-based band index in the asset.
    resampling
        GDAL resampling name (``nearest``, ``bilinear``, ``cubic``, ``average``).
    src_nodata
        Fill value of the source when the file does not declare one.
    dtype
        Output dtype (default: the source's); values keep the product's encoding.
    env
        GDAL options (see :func:`gdal_env`).
    max_retries
        Extra attempts on transient failures (exponential backoff with jitter, capped at 8 s).
    retries
        If given, one entry (the error message) is appended per retried attempt.

    Returns
    -------
    ndarray
        ``(y, x)`` array of ``shape``; fill where the source has no data or does not reach.

    Raises
    ------
    ReadError
        Permanent failure (missing asset, not a raster, no CRS).
    TransientReadError
        Still failing after the retries.
    """
    rs = Resampling[resampling]

    def go(ds) -> np.ndarray:
        if ds.crs is None:
            raise ReadError(f"asset {redact(href)} has no CRS")
        nodata = ds.nodatavals[band - 1]
        if nodata is None:
            nodata = src_nodata
        return _warp_window(ds, band, crs, Affine(*transform), shape, rs, nodata, dtype or ds.dtypes[band - 1])

    return _retrying(go, href, max_retries, retries, env or gdal_env())

