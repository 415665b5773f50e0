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
- Open datasets are cached per process, one handle per asset used by one thread at a time,
  and reused by every chip of a batch (re-opening per chip cost +35 % time and +40 % bytes in
  DESIGN.md's measurements; one handle per asset also lets GDAL's block cache serve a COG tile
  to all the chips that share it).
- GDAL options live in a plain dict and a ``rasterio.Env`` is opened around every read
  (GDAL's config is thread-local; STYLE.md §8).
- Transient errors (HTTP 5xx/429, resets, timeouts, truncated bodies) are retried with
  capped exponential backoff and jitter, by eochips alone (GDAL's own HTTP retries are off:
  one retry layer per transport); permanent ones (HTTP 4xx, not a TIFF) raise
  :class:`~eochips.errors.ReadError` at once. HTTP errors are classified by their status code.
- Credentials: a read gets the GDAL options of its source's auth scheme from
  :func:`read_env` on the worker, and hrefs are signed there (:func:`eochips.search.sign_href`).
"""

from __future__ import annotations

import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
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
from .search import auth_hosts, env_for_href, gdal_auth_env, redact
from .search.auth import AUTH_HOSTS_OPTION

DEFAULT_GDAL_ENV: dict[str, str | int | bool] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",
    "GDAL_HTTP_MAX_RETRY": 0,
    "GDAL_HTTP_TIMEOUT": 60,
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "FALSE",  # its cached-file layer re-sends a failed range itself (a second retry layer)
    "GDAL_CACHEMAX": 128 << 20,  # bytes: rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64 (128 would be 128 bytes)
}

# rasterio's in-memory datasets (used by reproject on arrays) read their transform before it is set
# and warn; the arrays are georeferenced right after. Filter exactly that message, process-wide
# (warnings.catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", message="Dataset has no geotransform", category=rasterio.errors.NotGeoreferencedWarning)

# HTTP status codes worth retrying (every other 4xx / 5xx is permanent)
TRANSIENT_STATUS = (408, 425, 429, 500, 502, 503, 504)
_STATUS = re.compile(r"HTTP response code: (\d{3})\b")
_MISSING = ("does not exist", "No such file")
# the bytes are not a (complete) GeoTIFF: retried once with a fresh handle (a truncated transfer
# looks the same), then permanent
_FORMAT = ("not recognized as being in a supported file format", "not a TIFF", "TIFFReadDirectory",
           "TIFFFillTile", "TIFFFillStrip", "IReadBlock failed", "Read error", "Cannot read TIFF header")


def gdal_env(cachemax_mb: int = 128, extra: Mapping[str, str] | None = None) -> dict:
    """The GDAL options of a read (defaults above, plus credentials in ``extra``); the block
    cache is ``cachemax_mb`` MiB, given to rasterio in bytes (its ``GDAL_CACHEMAX`` is bytes)."""
    env = dict(DEFAULT_GDAL_ENV, GDAL_CACHEMAX=int(cachemax_mb) << 20)
    env.update(extra or {})
    return env


def read_env(reading, auth: str = "none", hosts=None) -> dict:
    """The GDAL options of every read of a source: cache size and HTTP timeout of the recipe's
    ``reading`` section, and the credentials of ``auth`` (built here, on the worker; never put
    in a task, a plan or a message) with the hosts they may go to (``hosts``, the recipe's
    ``search.auth_hosts``, else the scheme's defaults): each read keeps them only for an href
    of those hosts (:func:`eochips.search.env_for_href`)."""
    env = gdal_env(reading.gdal_cachemax_mb, gdal_auth_env(auth)) | {"GDAL_HTTP_TIMEOUT": reading.http_timeout}
    if auth != "none":
        env[AUTH_HOSTS_OPTION] = ",".join(auth_hosts(auth, hosts))
    return env


class _Handles:
    """Open datasets of this process, one per href, each with its own lock.

    A handle is used by one thread at a time (GDAL datasets are not thread-safe) but by any
    thread, so every chip of a batch that needs an asset goes through the same handle and GDAL's
    block cache: a COG tile shared by neighbouring chips is fetched and decoded once. Opening
    happens under the href's lock only, so threads open different assets concurrently (on a
    remote archive each open costs a round trip).
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._open: OrderedDict[str, object] = OrderedDict()

    def lock(self, href: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(href, threading.Lock())

    def get(self, href: str):
        """The open dataset of ``href`` (caller holds ``lock(href)``)."""
        with self._lock:
            ds = self._open.get(href)
            if ds is not None and not ds.closed:
                self._open.move_to_end(href)
                return ds
        ds = rasterio.open(href)
        with self._lock:
            self._open[href] = ds
            old = [self._open.popitem(last=False) for _ in range(max(0, len(self._open) - self.max_open))]
        for h, d in old:  # least recently used beyond max_open; one in use stays open
            lk = self.lock(h)
            if lk.acquire(blocking=False):
                d.close()
                lk.release()
            else:
                with self._lock:
                    self._open.setdefault(h, d)
        return ds

    def close(self, href: str) -> None:
        """Close ``href``'s handle (its cached blocks are freed); caller must not hold its lock."""
        with self.lock(href):
            with self._lock:
                ds = self._open.pop(href, None)
            if ds is not None:
                ds.close()


_handles = _Handles()


def close_assets(hrefs) -> None:
    """Close the open datasets of ``hrefs`` in this process (after a batch of chips: frees the
    GDAL block cache they hold, so memory stays flat over any number of scenes)."""
    for h in set(hrefs):
        _handles.close(h)


_MARGIN = {Resampling.nearest: 1, Resampling.bilinear: 2, Resampling.cubic: 3, Resampling.cubic_spline: 3,
           Resampling.lanczos: 4, Resampling.average: 2, Resampling.mode: 2}
"""Source pixels added around a unit's footprint, per resampling kernel (its radius + 1)."""


def source_window(ds, crs: str, transform: Affine, shape: tuple[int, int], margin: int = 2,
                  clip: bool = True) -> Window | None:
    """The source pixel window a chip needs (its footprint in source pixels, densified edges,
    widened by ``margin`` pixels for the resampling kernel, clipped to the raster unless
    ``clip`` is false); None when the chip does not overlap the source."""
    box = footprint_box(str(crs), tuple(transform)[:6], tuple(shape), ds.crs.to_wkt(), tuple(ds.transform)[:6])
    c0, r0, c1, r1 = box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin
    if not clip:
        return Window(c0, r0, c1 - c0, r1 - r0)
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, ds.width), min(r1, ds.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


MARGIN_PX = max(_MARGIN.values())


@lru_cache(maxsize=4096)
def footprint_box(crs: str, transform: tuple, shape: tuple, src_crs: str, src_transform: tuple) -> tuple[int, int, int, int]:
    """``(col0, row0, col1, row1)`` source pixels under a chip's footprint (edges densified);
    cached: every asset of a scene, and every scene on the same grid, shares it."""
    h, w = shape
    n = 9
    ts = np.linspace(0, 1, n)
    edge_x = np.concatenate([ts * w, np.full(n, w), ts[::-1] * w, np.zeros(n)])
    edge_y = np.concatenate([np.zeros(n), ts * h, np.full(n, h), ts[::-1] * h])
    xs, ys = Affine(*transform) @ (edge_x, edge_y)
    if CRS.from_user_input(crs) != CRS.from_wkt(src_crs):
        xs, ys = warp_transform(crs, CRS.from_wkt(src_crs), list(xs), list(ys))
    cols, rows = ~Affine(*src_transform) @ (np.asarray(xs), np.asarray(ys))
    return (int(np.floor(np.min(cols))), int(np.floor(np.min(rows))), int(np.ceil(np.max(cols))), int(np.ceil(np.max(rows))))


class TileCache:
    """Decoded blocks (COG tiles) of one asset that chips of a batch still need.

    Chips are read in row-major order of the target grid, so once a chip's source window
    starts below a row of tiles no later chip needs that row: it is dropped. Neighbouring chips
    thus share tiles without fetching or decoding them twice, and memory holds about two rows
    of tiles per asset. Used by one thread at a time (under the asset's handle lock).
    """

    def __init__(self):
        self.tiles: dict[tuple[int, int, int], np.ndarray] = {}
        self.fetched = 0  # tiles read from the asset

    def prefetch(self, ds, band: int, windows: list[Window]) -> None:
        """Read the missing tiles under ``windows`` (inside the raster): per row of tiles, one
        read per run of adjacent missing tiles, rows with the same runs merged into one read
        (GDAL fetches a read's tiles with one multi-range request, consecutive ones merged)."""
        bh, bw = ds.block_shapes[band - 1]
        rows: dict[int, set[int]] = {}
        for win in windows:
            r0, c0 = int(win.row_off), int(win.col_off)
            r1, c1 = r0 + int(win.height), c0 + int(win.width)
            for tr in range(r0 // bh, (r1 - 1) // bh + 1):
                rows.setdefault(tr, set()).update(tc for tc in range(c0 // bw, (c1 - 1) // bw + 1)
                                                  if (band, tr, tc) not in self.tiles)
        runs: dict[tuple[int, ...], list[int]] = {}
        for tr in sorted(rows):
            for run in _runs(sorted(rows[tr])):
                runs.setdefault(tuple(run), []).append(tr)
        for run, trs in runs.items():
            for rrun in _runs(trs):
                y0, x0 = rrun[0] * bh, run[0] * bw
                y1, x1 = min((rrun[-1] + 1) * bh, ds.height), min((run[-1] + 1) * bw, ds.width)
                arr = ds.read(band, window=Window(x0, y0, x1 - x0, y1 - y0))
                for tr in rrun:
                    for tc in run:
                        self.tiles[(band, tr, tc)] = arr[(tr - rrun[0]) * bh:(tr - rrun[0] + 1) * bh,
                                                         (tc - run[0]) * bw:(tc - run[0] + 1) * bw]
                self.fetched += len(rrun) * len(run)

    def window(self, ds, band: int, win: Window) -> np.ndarray:
        """``(y, x)`` pixels of ``win`` (inside the raster), reading missing tiles first; then
        drops the rows of tiles above ``win`` (row-major order: no later chip needs them)."""
        bh, bw = ds.block_shapes[band - 1]
        r0, c0 = int(win.row_off), int(win.col_off)
        r1, c1 = r0 + int(win.height), c0 + int(win.width)
        trs = range(r0 // bh, (r1 - 1) // bh + 1)
        tcs = range(c0 // bw, (c1 - 1) // bw + 1)
        self.prefetch(ds, band, [win])
        out = np.empty((r1 - r0, c1 - c0), dtype=ds.dtypes[band - 1])
        for tr in trs:
            for tc in tcs:
                tile = self.tiles[(band, tr, tc)]
                ty, tx = tr * bh, tc * bw
                ya, yb = max(r0, ty), min(r1, ty + tile.shape[0])
                xa, xb = max(c0, tx), min(c1, tx + tile.shape[1])
                out[ya - r0:yb - r0, xa - c0:xb - c0] = tile[ya - ty:yb - ty, xa - tx:xb - tx]
        top = r0 // bh
        for key in [k for k in self.tiles if k[0] == band and k[1] < top]:
            del self.tiles[key]
        return out


def _runs(values: list[int]) -> list[list[int]]:
    """Split sorted integers into runs of consecutive values."""
    out: list[list[int]] = []
    for v in values:
        if out and v == out[-1][-1] + 1:
            out[-1].append(v)
        else:
            out.append([v])
    return out


@dataclass(frozen=True)
class SourceWindow:
    """The source pixels one chip needs from one band of one asset.

    Attributes
    ----------
    data
        ``(y, x)`` pixels of the window, in the asset's dtype.
    transform, crs
        Georeferencing of ``data`` (the asset's transform shifted to the window).
    nodata
        The asset's fill value (declared, else the caller's), or None.
    clipped
        True when the window was cut by the raster's edge (the chip is not fully inside).
    """

    data: np.ndarray
    transform: Affine
    crs: CRS
    nodata: float | None
    clipped: bool


def _sources(ds, band: int, grids: list[tuple], rs: Resampling, nodata: float | None,
             cache: TileCache | None = None) -> list[SourceWindow | None]:
    """Read the source windows chips need (``grids``: ``(crs, transform, shape)`` each), through
    ``cache`` when given (all their tiles prefetched at once); None for a chip that does not
    overlap the asset."""
    margin = _MARGIN.get(rs, 3)
    wins = [source_window(ds, c, Affine(*t), sh, margin) for c, t, sh in grids]
    if cache is not None:
        cache.prefetch(ds, band, [w for w in wins if w is not None])
    out = []
    for (c, t, sh), win in zip(grids, wins):
        if win is None:
            out.append(None)
            continue
        full = source_window(ds, c, Affine(*t), sh, margin, clip=False)
        data = cache.window(ds, band, win) if cache is not None else ds.read(band, window=win)
        out.append(SourceWindow(data, ds.transform @ Affine.translation(win.col_off, win.row_off), ds.crs, nodata, win != full))
    return out


def warp_sources(sources: list[SourceWindow | None], crs: str, transform: Affine, shape: tuple[int, int],
                 resampling: str, dtype: str, fill: float) -> np.ndarray:
    """Warp source windows onto one chip grid with GDAL's warper (``rasterio.warp.reproject``).

    When the windows on one source grid (all dates and bands of a granule) have no fill pixel
    and lie fully inside their raster, they are stacked and warped in one call without nodata
    values: GDAL then uses its unmasked kernels, 2-3x faster than masked per-band warps, with
    identical values (``tests/test_batching.py``). Otherwise each band is warped on its own
    with its nodata mask (equal to ``gdalwarp``, ``tests/test_reading.py``).

    Returns
    -------
    ndarray
        ``(n, y, x)`` of ``dtype``; ``fill`` where a source has no data or does not reach.
    """
    out = np.full((len(sources),) + tuple(shape), fill, dtype=dtype)
    groups: dict[tuple, list[int]] = {}
    for i, src in enumerate(sources):
        if src is not None:
            groups.setdefault((tuple(src.transform)[:6], src.crs.to_wkt(), src.data.shape, src.nodata, src.clipped), []).append(i)
    rs = Resampling[resampling]
    for (_, _, _, nodata, clipped), idx in groups.items():
        first = sources[idx[0]]
        stack = np.stack([sources[i].data for i in idx])
        has_fill = nodata is not None and (bool(np.isnan(stack).any()) if isinstance(nodata, float) and np.isnan(nodata)
                                           else bool((stack == nodata).any()))
        if has_fill or clipped:
            # masked warps band by band: GDAL's multi-band warp with per-band nodata masks
            # (UNIFIED_SRC_NODATA=NO) wrote values where single-band warps (and gdalwarp) leave fill
            for i in idx:
                reproject(sources[i].data, out[i], src_transform=first.transform, src_crs=first.crs, src_nodata=nodata,
                          dst_transform=transform, dst_crs=crs, dst_nodata=fill, init_dest_nodata=True, resampling=rs)
        else:  # every chip pixel falls inside valid source pixels: no masks needed, one call
            dst = out[idx]
            reproject(stack, dst, src_transform=first.transform, src_crs=first.crs, dst_transform=transform, dst_crs=crs,
                      resampling=rs, init_dest_nodata=False)
            out[idx] = dst
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

    An HTTP error is classified by its status code (``HTTP response code: NNN`` in GDAL's
    message): :data:`TRANSIENT_STATUS` is transient, every other code permanent. A missing
    local file is permanent. "Not a TIFF" / decode errors are permanent for a local file (its
    bytes will not change), but transient for a remote one: a truncated transfer gives exactly
    the error of a truncated file ("TIFFFillTile: Read error ... got N bytes, expected M"), so
    remote decode errors are retried until the retries run out. Everything else (resets,
    timeouts) is transient. Messages are redacted.
    """
    msg = redact(error_text(exc))
    where = redact(href)
    status = _STATUS.search(msg)
    if status:
        code = int(status.group(1))
        if code in TRANSIENT_STATUS:
            return TransientReadError(f"cannot read {where} (transient, HTTP {code}): {msg}")
        return ReadError(f"cannot read {where}: {msg}")
    if any(p in msg for p in _MISSING):
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
    tests), so such an href is read with ``CPL_VSIL_CURL_NON_CACHED`` from then on. Credentials
    stay only when ``href`` may carry them (:func:`eochips.search.env_for_href`)."""
    out = env_for_href(href, env)
    if href in _uncached and href.startswith(("http://", "https://")):
        out["CPL_VSIL_CURL_NON_CACHED"] = f"/vsicurl/{href}"
    return out


def _retrying(fn, href: str, max_retries: int, retries: list | None, env: Mapping):
    """Call ``fn(ds)`` on the cached dataset of ``href`` with the retry policy of this module."""

    def attempt():
        lock = _handles.lock(href)
        try:
            with rasterio.Env(**_env_for(href, env)), lock:
                return fn(_handles.get(href))
        except ReadError:
            _handles.close(href)
            raise
        except (rasterio.errors.RasterioError, OSError) as exc:
            _handles.close(href)
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


def probe(href: str, *, env: Mapping | None = None, max_retries: int = 4, size: int = 64) -> dict:
    """Open an asset and read every band decimated to about ``size`` pixels a side (overviews
    are used when the COG has them), and the compressed size of each block of band 1.

    Returns
    -------
    dict
        ``crs`` (WKT or None), ``count``, ``dtypes``, ``nodata`` (per band, declared or None),
        ``sample`` (per band, a decimated ``(y, x)`` array), ``shape`` ``(y, x)``, ``transform``
        (6 coefficients), ``block`` ``(y, x)`` of band 1 and ``block_bytes`` ``(block rows,
        block cols)`` int64 compressed bytes of each block of band 1.

    Raises
    ------
    ReadError
        As :func:`read_onto`.
    """

    def go(ds):
        f = max(1, max(ds.width, ds.height) // size)
        out_shape = (max(1, ds.height // f), max(1, ds.width // f))
        samples = [ds.read(b, out_shape=out_shape) for b in range(1, min(ds.count, 32) + 1)]
        bh, bw = ds.block_shapes[0]
        nr, nc = -(-ds.height // bh), -(-ds.width // bw)
        sizes = np.zeros((nr, nc), dtype=np.int64)
        if nr * nc <= 65536:
            for r in range(nr):
                for c in range(nc):
                    sizes[r, c] = ds.block_size(1, r, c)
        return {"crs": ds.crs.to_wkt() if ds.crs else None, "count": ds.count, "dtypes": list(ds.dtypes),
                "nodata": list(ds.nodatavals), "sample": samples, "shape": (ds.height, ds.width),
                "transform": tuple(ds.transform)[:6], "block": (bh, bw), "block_bytes": sizes}

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
    cache: TileCache | None = None,
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
    cache
        The asset's :class:`TileCache` when several chips are read in row-major order.

    Returns
    -------
    ndarray
        ``(y, x)`` array of ``shape``; where the source has no data or does not reach, its fill
        (declared in the file, else ``src_nodata``, else 0).

    Raises
    ------
    ReadError
        A permanent failure (HTTP 4xx, missing asset, not a raster, no CRS), or a transient one
        still failing after ``max_retries`` retries (the message says "gave up after N attempts").
    """
    kw = dict(band=band, resampling=resampling, src_nodata=src_nodata, env=env, max_retries=max_retries,
              retries=retries, cache=cache)
    srcs, dt, nodata = read_sources(href, [(crs, transform, shape)], **kw)
    return warp_sources(srcs, crs, Affine(*transform), shape, resampling, dtype or dt, nodata if nodata is not None else 0)[0]


def read_sources(
    href: str,
    grids: list[tuple],
    *,
    band: int = 1,
    resampling: str = "bilinear",
    src_nodata: float | None = None,
    env: Mapping | None = None,
    max_retries: int = 4,
    retries: list | None = None,
    cache: TileCache | None = None,
) -> tuple[list[SourceWindow | None], str, float | None]:
    """Read the source windows of one band of one asset that chips need (no warp yet; see
    :func:`read_onto` for the parameters and errors, and :func:`warp_sources`).

    ``grids`` holds one ``(crs, transform, shape)`` per chip, in row-major order. With a
    ``cache``, every tile the chips need is fetched in as few requests as possible, once.

    Returns
    -------
    windows, dtype, nodata
        One :class:`SourceWindow` per chip (None when the chip does not overlap the asset),
        the asset's dtype and its fill value (declared, else ``src_nodata``).
    """
    rs = Resampling[resampling]

    def go(ds):
        if ds.crs is None:
            raise ReadError(f"asset {redact(href)} has no CRS")
        nodata = ds.nodatavals[band - 1]
        if nodata is None:
            nodata = src_nodata
        return _sources(ds, band, grids, rs, nodata, cache), ds.dtypes[band - 1], nodata

    return _retrying(go, href, max_retries, retries, env or gdal_env())
