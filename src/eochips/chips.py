"""One unit end to end: read -> composite -> masks -> labels -> filters -> layouts.

:class:`UnitTask` is plain picklable data (no open files, no clients, no credentials): a Dask
worker gets a batch of them, calls :func:`process_batch`, and sends back small
:class:`UnitResult` s (metrics, file hashes), never arrays.

Arrays are ``(time, y, x)`` per band of a source (``(time, band, y, x)`` when stacked), in the
product's integer encoding (or float with NaN fill), on the unit's grid (or, with resolution
groups, on the unit's extent at the band's own pixel size). A time step with several scenes is
composited (:mod:`eochips.composite`) in the order the selection gave.

Only I/O fails a unit (:class:`~eochips.errors.ReadError`, :class:`~eochips.errors.OutputError`):
the unit is recorded as ``failed`` and a rerun retries it. Any other exception is a bug: it
propagates and stops the run with its traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from affine import Affine

from .config import CompositeConfig, MasksConfig, ReadingConfig, is_nan
from .errors import OutputError, ReadError
from .labels import LabelSpec, label_names, rasterize_vector
from .profiles import BandSpec, QASpec
from .reading import TileCache, close_assets, read_env, read_onto, read_sources, warp_sources

CHIPS_DIR = "chips"


# --------------------------------------------------------------------------------------
# the task

@dataclass(frozen=True)
class SceneRead:
    """One scene of a time step: its id, time, role and the hrefs it reads (unsigned).

    Attributes
    ----------
    scene_id, datetime, role
        Item id, ISO 8601 UTC acquisition time, ``primary`` (or ``backstop``...).
    hrefs
        ``(asset key, href)`` pairs; signed at read time on the worker (never credentials here).
    offset_dn
        Extra DN offset of the scene (-1000 for Sentinel-2 baseline >= 04.00), written as metadata.
    pick
        The scene's 1-based pick number in a mosaic (``sources.csv``); 0 elsewhere.
    """

    scene_id: str
    datetime: str
    role: str = "primary"
    hrefs: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    offset_dn: int = 0
    pick: int = 0

    def href(self, asset: str) -> str:
        return dict(self.hrefs)[asset]

    @property
    def date(self) -> str:
        return self.datetime[:10]


@dataclass(frozen=True)
class StepRead:
    """One time step: its scenes in compositing priority order."""

    scenes: tuple[SceneRead, ...]

    @property
    def datetime(self) -> str:
        return self.scenes[0].datetime

    @property
    def date(self) -> str:
        return self.datetime[:10]


@dataclass(frozen=True)
class MaskRead:
    """Bands a mask model reads for one source, at ``resolution`` metres (None: the unit's)."""

    mask: int
    assets: tuple[str, ...]
    resolution: float | None
    resampling: str = "bilinear"


@dataclass(frozen=True)
class LayerRead:
    """One source of a unit: its bands, QA layer (when something uses it), time steps, compositor.

    Attributes
    ----------
    source
        The source's name in the recipe.
    bands
        Output bands, in order.
    qa
        The QA layer read per scene with nearest, or None.
    steps
        The unit's time steps of this source, in date order.
    composite
        How the scenes of a step are merged.
    auth
        The source's auth scheme (credentials are made on the worker).
    mask_reads
        Bands read for mask models (s2cloudless, ONNX).
    """

    source: str
    bands: tuple[BandSpec, ...]
    qa: QASpec | None
    steps: tuple[StepRead, ...]
    composite: CompositeConfig = CompositeConfig()
    auth: str = "none"
    mask_reads: tuple[MaskRead, ...] = ()
    auth_hosts: tuple[str, ...] | None = None  # where the credentials of auth may go (None: its defaults)

    def hrefs(self) -> tuple:
        return tuple(tuple(sc.hrefs for sc in st.scenes) for st in self.steps)


@dataclass(frozen=True)
class UnitTask:
    """Everything needed to build one unit (picklable; workers open assets themselves).

    Attributes
    ----------
    unit_id, key
        The unit's id and its numeric sort key ``(grid, row, col)``.
    crs, transform, shape
        The unit's grid: CRS (WKT), affine ``(a, b, c, d, e, f)`` in CRS units (metres), and
        ``(height, width)`` in pixels.
    tile, grid_name, product
        The unit's MGRS tile (if known), its grid's name (a scene id on scene grids) and its
        grid scene's product name (:func:`eochips.geo.product_name`; else the grid's name).
    n
        The unit's 1-based row-major position among its grid's windows (the ``{n}`` of file names).
    layers
        One :class:`LayerRead` per source used, in recipe order.
    labels, label_bounds
        Label source (or None) and the bounds of the unit's label strip (one vector read per strip of
        :data:`eochips.plan.LABEL_STRIP_ROWS` unit rows of its grid, shared by its units).
    masks, filters, layouts
        The recipe's mask sources, filters (in order) and layouts.
    resolution_groups
        Read each band at its native resolution over the unit's extent.
    out, compress, level
        Output location and GeoTIFF compression.
    reading, cpu_threads
        I/O settings; threads for warps and writes in this worker (its share of the cores).
    fingerprint
        sha256 of everything that decides the unit's bytes (state and resume compare it).
    mosaic
        A :class:`~eochips.mosaic.MosaicSpec` for a tile of a mosaic (built by
        :func:`eochips.mosaic.build_tile`), else None.
    """

    unit_id: str
    key: tuple[int, int, int]
    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]
    layers: tuple[LayerRead, ...]
    out: str
    tile: str | None = None
    grid_name: str = ""
    product: str = ""
    n: int = 0
    labels: LabelSpec | None = None
    label_bounds: tuple[float, float, float, float] | None = None
    masks: MasksConfig = MasksConfig()
    filters: tuple[Any, ...] = ()
    layouts: tuple[Any, ...] = ()
    resolution_groups: bool = False
    compress: str = "deflate"
    level: int = 6
    reading: ReadingConfig = ReadingConfig()
    cpu_threads: int = 1
    fingerprint: str = ""
    mosaic: Any = None

    @cached_property
    def gbox(self):
        from odc.geo.geobox import GeoBox

        return GeoBox(self.shape, Affine(*self.transform), self.crs)

    def grid_at(self, resolution: float | None) -> tuple[str, tuple, tuple[int, int]]:
        """``(crs, transform, shape)`` of the unit's extent at ``resolution`` metres (None: its own)."""
        if resolution is None or abs(resolution - abs(self.transform[0])) < 1e-9:
            return (self.crs, self.transform, self.shape)
        g = self.gbox.zoom_to(resolution=resolution)
        return (self.crs, tuple(g.affine)[:6], tuple(g.shape))

    def layer(self, source: str) -> "LayerRead":
        return next(lay for lay in self.layers if lay.source == source)

    def band_resolution(self, band: BandSpec) -> float | None:
        return band.resolution if self.resolution_groups else None


def task_fingerprint(task: UnitTask) -> str:
    """sha256 of the parts of a task that decide its output bytes (not I/O settings)."""
    parts = {
        "id": task.unit_id, "crs": task.crs, "transform": task.transform, "shape": task.shape,
        "layers": [(lay.source, [b.__dict__ for b in lay.bands], lay.qa.__dict__ if lay.qa else None,
                    [[(s.scene_id, s.role, s.offset_dn, [k for k, _ in s.hrefs]) + ((s.pick,) if s.pick else ())
                      for s in st.scenes] for st in lay.steps],
                    lay.composite.model_dump(), [{k: v for k, v in m.__dict__.items() if (k, v) != ("resampling", "bilinear")}
                                                 for m in lay.mask_reads]) for lay in task.layers],
        "labels": repr(task.labels), "masks": task.masks.model_dump(mode="json"),
        "filters": [f.model_dump(mode="json") for f in task.filters], "layouts": [x.model_dump(mode="json") for x in task.layouts],
        "rg": task.resolution_groups, "compress": task.compress, "level": task.level,
    }
    if task.mosaic is not None:
        parts["mosaic"] = [task.mosaic.layout.model_dump(mode="json"), task.mosaic.source, task.mosaic.aoi_wkb.hex()]
    text = json.dumps(parts, sort_keys=True, default=str).replace("NaN", '"nan"')
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class UnitResult:
    """What a worker sends back for one unit.

    ``status`` is ``kept`` (files written), ``dropped`` (a filter said no; ``code`` says which,
    ``reason`` how) or ``failed`` (an I/O error; ``reason`` is its message). ``files`` maps file
    names (relative to the output folder) to sha256. ``retries`` counts transient read failures
    that were retried (kept in the state, not the dataset: the dataset must not depend on
    network luck).
    """

    unit_id: str
    status: str
    code: str = ""
    reason: str = ""
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    fingerprint: str = ""


# --------------------------------------------------------------------------------------
# reading a batch

_pool_lock = threading.Lock()
_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}


def _pool(kind: str, n: int) -> ThreadPoolExecutor:
    """A per-process thread pool (``io``: reads, ``cpu``: warps and writes) of ``n`` threads, kept
    alive so open datasets are reused across batches; a pool is never shut down under a task."""
    with _pool_lock:
        pool = _pools.get((kind, n))
        if pool is None:
            pool = _pools[(kind, n)] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"eochips-{kind}")
        return pool


@dataclass(frozen=True)
class _Job:
    """One read of one band of one asset for every unit of a batch."""

    layer: int
    step: int
    scene: int
    slot: tuple
    asset: str
    index: int
    resampling: str
    nodata: float | None
    dtype: str
    resolution: float | None
    auth: str


def _jobs(task: UnitTask) -> list[_Job]:
    jobs = []
    for li, lay in enumerate(task.layers):
        for ti, st in enumerate(lay.steps):
            for si, _ in enumerate(st.scenes):
                for bi, b in enumerate(lay.bands):
                    jobs.append(_Job(li, ti, si, ("band", bi), b.asset, b.index, b.resampling, b.nodata, b.dtype,
                                     task.band_resolution(b), lay.auth))
                if lay.qa is not None:
                    jobs.append(_Job(li, ti, si, ("qa",), lay.qa.asset, 1, "nearest", lay.qa.nodata, lay.qa.dtype, None,
                                     lay.auth))
                for mr in lay.mask_reads:
                    for ki, asset in enumerate(mr.assets):
                        jobs.append(_Job(li, ti, si, ("mask", mr.mask, ki), asset, 1, mr.resampling, None, "float32",
                                         mr.resolution, lay.auth))
    return jobs


def batch_key(task: UnitTask) -> tuple:
    """Units with equal keys read the same assets and can share a batch."""
    return tuple((lay.source, lay.hrefs()) for lay in task.layers)


def task_hrefs(task: UnitTask) -> set[str]:
    """Every imagery href a unit reads (not the label raster)."""
    return {h for lay in task.layers for st in lay.steps for sc in st.scenes for _, h in sc.hrefs}


class _BatchRead:
    """The reads of one group of units, started on the reading pool at once (one job per asset
    band) so they run while the previous group is warped and written."""

    def __init__(self, tasks: list[UnitTask], caches: dict[str, TileCache]):
        from .search import sign_href

        self.tasks = tasks
        self.jobs = _jobs(tasks[0])
        self.sources: list[list] = [[None] * len(self.jobs) for _ in tasks]
        self.errors: dict[int, ReadError] = {}
        self.retries: list[list] = [[] for _ in tasks]
        self.caches = caches
        first = tasks[0]
        self.hrefs = [sign_href(first.layers[j.layer].steps[j.step].scenes[j.scene].href(j.asset), j.auth) for j in self.jobs]
        for h in self.hrefs:
            caches.setdefault(h, TileCache())
        self.envs = [read_env(first.reading, lay.auth, lay.auth_hosts) for lay in first.layers]
        pool = _pool("io", first.reading.threads)
        self.futures = [pool.submit(self._read, j) for j in range(len(self.jobs))]

    def _read(self, j: int) -> None:  # one asset band, every unit, in (grid, row, col) order
        job, href = self.jobs[j], self.hrefs[j]
        live = [i for i in range(len(self.tasks)) if i not in self.errors]
        grids = [self.tasks[i].grid_at(job.resolution) for i in live]
        tries: list = []
        try:
            got = read_sources(href, grids, band=job.index, resampling=job.resampling, src_nodata=job.nodata,
                               env=self.envs[job.layer], max_retries=self.tasks[0].reading.max_retries,
                               cache=self.caches[href], retries=tries)[0]
        except ReadError as exc:
            for i in live:
                self.errors.setdefault(i, exc)
            return
        finally:
            for i in live:
                self.retries[i].extend(tries)
        for i, src in zip(live, got):
            self.sources[i][j] = src

    def wait(self) -> "_BatchRead":
        for f in self.futures:
            f.result()
        return self


# --------------------------------------------------------------------------------------
# the unit's arrays

@dataclass
class LayerData:
    """The arrays of one source of a unit.

    Attributes
    ----------
    read
        The source's :class:`LayerRead`.
    bands
        Per output band, ``(time, y, x)`` in the band's dtype (fill = its nodata).
    qa
        ``(time, y, x)`` QA codes in the QA dtype (nearest; fill = its nodata), or None.
    index
        ``(time, y, x)`` int16: which scene of the step each pixel came from (-1: none), when
        the step's composite asks for it; else None.
    masks
        Per time step, the union of the recipe's masks of this source (filled by :func:`measure`).
    mask_inputs
        Per time step, ``{mask index: (band, y, x) float32}`` bands of mask models.
    """

    read: LayerRead
    bands: list[np.ndarray]
    qa: np.ndarray | None = None
    index: np.ndarray | None = None
    masks: list = field(default_factory=list)
    mask_inputs: list[dict[int, np.ndarray]] = field(default_factory=list)

    def stack(self) -> np.ndarray:
        """``(time, band, y, x)`` (every band on the same grid; raises ValueError otherwise)."""
        shapes = {a.shape for a in self.bands}
        if len(shapes) != 1:
            raise ValueError(f"source {self.read.source!r}: bands on different grids ({sorted(shapes)}) cannot be stacked")
        return np.stack(self.bands, axis=1)


@dataclass
class UnitData:
    """Everything known about one unit once its pixels are read (what filters and layouts see)."""

    task: UnitTask
    layers: dict[str, LayerData]
    labels: np.ndarray | None = None
    unknown_codes: dict[int, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _composite(lay: LayerRead, arrays: list[list[np.ndarray | None]], qas: list[np.ndarray] | None):
    """Merge the scenes of each step: ``arrays[scene][band]`` -> per band ``(y, x)``; QA likewise."""
    from .composite import get_compositor

    if len(arrays) == 1:
        return arrays[0], (qas[0] if qas else None), None
    out_bands: list[np.ndarray] = []
    index = None
    if lay.bands:
        shapes = {a.shape for a in arrays[0]}
        if len(shapes) == 1:
            b0 = lay.bands[0]
            comp = get_compositor(lay.composite.kind)((len(lay.bands),) + arrays[0][0].shape, b0.dtype,
                                                      [b.nodata for b in lay.bands], index=lay.composite.kind != "median")
            for sc in arrays:
                comp.add(np.stack(sc))
            res = comp.result()
            out_bands = list(res.image)
            index = res.index
        else:  # resolution groups: each band on its own
            for bi, b in enumerate(lay.bands):
                comp = get_compositor(lay.composite.kind)((1,) + arrays[0][bi].shape, b.dtype, [b.nodata])
                for sc in arrays:
                    comp.add(sc[bi][None])
                out_bands.append(comp.result().image[0])
    qa = None
    if qas:
        q = lay.qa
        if index is not None and qas[0].shape == index.shape:
            qa = np.full(qas[0].shape, q.nodata if q.nodata is not None else 0, dtype=qas[0].dtype)
            for k, a in enumerate(qas):
                qa[index == k] = a[index == k]
        else:
            comp = get_compositor("first-valid" if lay.composite.kind == "median" else lay.composite.kind)(
                (1,) + qas[0].shape, q.dtype, [q.nodata if q.nodata is not None else 0])
            for a in qas:
                comp.add(a[None])
            qa = comp.result().image[0]
    return out_bands, qa, index


def _warp_unit(reads: _BatchRead, i: int) -> dict[str, LayerData] | ReadError:
    """Warp one unit's source windows and composite its steps (on the CPU pool)."""
    if i in reads.errors:
        return reads.errors[i]
    task, src, jobs = reads.tasks[i], reads.sources[i], reads.jobs
    groups: dict[tuple, list[int]] = {}
    for j, job in enumerate(jobs):
        fill = job.nodata if job.nodata is not None else 0
        groups.setdefault((job.resolution, job.resampling, job.dtype, "nan" if is_nan(fill) else fill), []).append(j)
    warped: list[np.ndarray | None] = [None] * len(jobs)
    for (res, rs, dtype, fill), idx in groups.items():
        crs, tr, shape = task.grid_at(res)
        arr = warp_sources([src[j] for j in idx], crs, Affine(*tr), shape, rs, dtype, float("nan") if fill == "nan" else fill)
        for a, j in zip(arr, idx):
            warped[j] = a
    reads.sources[i] = None
    layers: dict[str, LayerData] = {}
    for li, lay in enumerate(task.layers):
        bands_t: list[list[np.ndarray]] = [[] for _ in lay.bands]
        qa_t, idx_t, minputs = [], [], []
        for ti, st in enumerate(lay.steps):
            per_scene = [[None] * len(lay.bands) for _ in st.scenes]
            qas = [] if lay.qa is not None else None
            mins: dict[int, list] = {}
            for j, job in enumerate(jobs):
                if job.layer != li or job.step != ti:
                    continue
                if job.slot[0] == "band":
                    per_scene[job.scene][job.slot[1]] = warped[j]
                elif job.slot[0] == "qa":
                    qas.append(warped[j])
                elif job.scene == 0:  # mask models run on the step's first scene
                    mins.setdefault(job.slot[1], []).append(warped[j])
            bands, qa, index = _composite(lay, per_scene, qas)
            if index is None and lay.composite.index_band and bands:  # one scene: it is the source wherever it has data
                valid = np.logical_and.reduce([~nodata_mask(a, b.nodata) for a, b in zip(bands, lay.bands)])
                index = np.where(valid, 0, -1).astype(np.int16)
            for bi, a in enumerate(bands):
                bands_t[bi].append(a)
            if qa is not None:
                qa_t.append(qa)
            idx_t.append(index)
            minputs.append({m: np.stack(v) for m, v in mins.items()})
        index = np.stack(idx_t) if lay.composite.index_band and all(x is not None for x in idx_t) else None
        layers[lay.source] = LayerData(lay, [np.stack(b) for b in bands_t], np.stack(qa_t) if qa_t else None, index,
                                       mask_inputs=minputs)
    return layers


def read_units(tasks: list[UnitTask], caches: dict[str, TileCache] | None = None) -> list[dict[str, LayerData] | ReadError]:
    """Read the imagery of units that share their scenes (see :func:`batch_key`).

    First one job per asset band runs on the process's reading pool and reads every unit's
    source window through the same open dataset and the asset's :class:`~eochips.reading.TileCache`,
    in ``(grid, row, col)`` order: a COG tile shared by neighbouring units is fetched and decoded
    once. Then, per unit, the windows are warped (all bands on one source grid and resampling in
    one GDAL call, :func:`~eochips.reading.warp_sources`) and the steps composited.

    Returns
    -------
    list
        Per task, ``{source: LayerData}``, or the :class:`ReadError` that made it unreadable.
    """
    reads = _BatchRead(tasks, {} if caches is None else caches).wait()
    return list(_pool("cpu", tasks[0].cpu_threads).map(lambda i: _warp_unit(reads, i), range(len(tasks))))


# --------------------------------------------------------------------------------------
# labels, masks, measures

def read_labels(task: UnitTask) -> tuple[np.ndarray | None, dict[int, int]]:
    """The unit's ``(y, x)`` class map (None without labels) and unknown code counts.

    The map is uint8, or ``labels.dtype`` for vector labels (uint16 CORINE codes with
    ``burn: value``, ``labels.fill`` where no polygon lies).

    Raises
    ------
    ReadError
        The label raster cannot be read.
    LabelError
        In strict mode, a code missing from the reclass table.
    """
    spec = task.labels
    if spec is None:
        return None, {}
    if spec.vector:
        return rasterize_vector(spec.vector, spec.class_field, dict(spec.classes), task.crs, task.transform, task.shape,
                                task.label_bounds, burn=spec.burn, dtype=spec.dtype, fill=spec.fill, table=spec.table), {}
    codes = read_onto(spec.raster, task.crs, task.transform, task.shape, resampling="nearest",
                      env=read_env(task.reading), max_retries=task.reading.max_retries)
    if spec.reclass is None:
        return codes.astype(np.uint8), {}
    return spec.reclass.apply(codes, where=task.unit_id)


def unit_masks(task: UnitTask, data: dict[str, LayerData]) -> None:
    """Fill ``LayerData.masks``: per source and time step, the union of the recipe's mask sources
    of that source, grown by ``masks.dilation`` pixels, on the unit grid."""
    from .qa import MODEL_MASKS, QA_DECODERS, MaskSet, dilate, union, upsample

    by_source: dict[str, list[tuple[int, Any]]] = {}
    first = next(iter(task.layers)).source
    for mi, m in enumerate(task.masks.sources):
        by_source.setdefault(m.source or first, []).append((mi, m))
    for source, sources in by_source.items():
        lay = data[source]
        out = []
        for t in range(len(lay.read.steps)):
            sets = []
            for mi, m in sources:
                if m.kind in QA_DECODERS:
                    sets.append(QA_DECODERS[m.kind](m, lay.qa[t], lay.read.qa.nodata))
                else:
                    bands = lay.mask_inputs[t][mi]
                    nodata = np.all((bands == 0) | np.isnan(bands), axis=0)
                    ms = MODEL_MASKS[m.kind](m, np.nan_to_num(bands) * m.scale, nodata)
                    sets.append(MaskSet(*(upsample(getattr(ms, k), task.shape) for k in ("cloud", "shadow", "snow", "nodata"))))
            out.append(dilate(union(*sets), task.masks.dilation))
        lay.masks = out


def nodata_mask(a: np.ndarray, nodata: float | None) -> np.ndarray:
    """Boolean fill pixels of an array (NaN-aware; NaN always counts for floats)."""
    if np.issubdtype(a.dtype, np.floating):
        bad = np.isnan(a)
        if nodata is not None and not is_nan(nodata):
            bad |= a == nodata
        return bad
    if nodata is None or is_nan(nodata):
        return np.zeros(a.shape, bool)
    return a == nodata


def _metrics(task: UnitTask, data: UnitData) -> dict[str, Any]:
    scenes = [(lay.source, t, sc) for lay in task.layers for t, st in enumerate(lay.steps) for sc in st.scenes]
    m: dict[str, Any] = {
        "scene_ids": [sc.scene_id for _, _, sc in scenes], "datetimes": [sc.datetime for _, _, sc in scenes],
        "scene_sources": [s for s, _, _ in scenes], "scene_steps": [t for _, t, _ in scenes],
        "scene_roles": [sc.role for _, _, sc in scenes],
    }
    if data.labels is not None:
        hist = np.bincount(data.labels.ravel(), minlength=256)
        m["label_hist"] = {int(k): int(v) for k, v in enumerate(hist) if v}
        if task.labels.table is not None:  # BigEarthNet v2 multi-labels: every distinct class name present
            m["label_names"] = label_names(m["label_hist"], task.labels.table)
        if data.unknown_codes:
            m["unknown_codes"] = {int(k): int(v) for k, v in data.unknown_codes.items()}
    fractions = [{"source": s, "step": t, **{k: round(v, 6) for k, v in ms.fractions().items()}}
                 for s, lay in data.layers.items() for t, ms in enumerate(lay.masks)]
    if fractions:
        m["mask_fractions"] = fractions
    return m


# --------------------------------------------------------------------------------------
# building

def finish_unit(task: UnitTask, layers: dict[str, LayerData] | ReadError, retries: list) -> UnitResult:
    """Measure, filter and write one unit whose imagery is read (see the module docstring).

    Filters run in recipe order (:mod:`eochips.filters`); every filter's measure is recorded in
    the metrics, and the first that says no gives the typed reason code.
    """
    from .filters import apply_filters
    from .writers.layouts import write_layouts

    def failed(exc: Exception, metrics=None) -> UnitResult:
        return UnitResult(task.unit_id, "failed", "io", str(exc), metrics=metrics or {}, retries=len(retries),
                          fingerprint=task.fingerprint)

    if isinstance(layers, ReadError):
        return failed(layers)
    try:
        labels, unknown = read_labels(task)
    except ReadError as exc:
        return failed(exc)
    data = UnitData(task, layers, labels, unknown)
    unit_masks(task, layers)
    data.metrics = _metrics(task, data)
    reason = apply_filters(task.filters, data)
    if reason is not None:
        return UnitResult(task.unit_id, "dropped", reason.code, str(reason), metrics=data.metrics, retries=len(retries),
                          fingerprint=task.fingerprint)
    try:
        files, extra = write_layouts(task, data)
    except (ReadError, OutputError) as exc:
        return failed(exc, data.metrics)
    data.metrics.update(extra)
    return UnitResult(task.unit_id, "kept", "", "", files, data.metrics, retries=len(retries), fingerprint=task.fingerprint)


def process_batch(tasks: list[UnitTask], group: int = 16) -> list[UnitResult]:
    """Build units that share their scenes (:func:`batch_key`), ``group`` at a time.

    Each group is read as in :func:`read_units` (COG tiles shared by neighbouring units are
    fetched once), then every unit is warped and finished (:func:`finish_unit`) on the CPU pool
    while the next group's reads run on the reading pool. At most two groups' arrays are in
    memory at a time, and the batch's datasets are closed at the end, so a worker's memory does
    not grow with the number of scenes. Each unit writes its completion marker
    (:func:`eochips.engine.write_marker`) as soon as it is finished.

    Returns
    -------
    list of UnitResult
        One per task, in order; a unit whose asset cannot be read is ``failed`` alone.
    """
    if tasks and tasks[0].mosaic is not None:  # tiles of a mosaic stream their scenes one by one
        from .mosaic import process_mosaic_batch

        return process_mosaic_batch(tasks)
    results: list[UnitResult] = []
    caches: dict[str, TileCache] = {}  # tiles carry over from one group to the next
    groups = [tasks[g:g + group] for g in range(0, len(tasks), group)]
    reads = None
    cpu = _pool("cpu", tasks[0].cpu_threads)
    try:
        for k, sub in enumerate(groups):
            reads = reads or _BatchRead(sub, caches)
            current = reads.wait()
            # the next group's reads (network, decoding) overlap this group's warps and writes
            reads = _BatchRead(groups[k + 1], caches) if k + 1 < len(groups) else None
            got = list(cpu.map(lambda i: _warp_unit(current, i), range(len(sub))))
            # matplotlib (quicklooks) is not thread-safe: finish those units one by one
            mapper = map if sub[0].masks.quicklook else cpu.map
            results.extend(mapper(lambda args: _finish_and_mark(*args), zip(sub, got, current.retries)))
    finally:
        if reads is not None:
            reads.wait()
        close_assets(set().union(*(task_hrefs(t) for t in tasks)))
    return results


def _finish_and_mark(task: UnitTask, layers, retries: list) -> UnitResult:
    """Finish one unit and, right away, leave its completion marker (after its files)."""
    from .engine import write_marker

    res = finish_unit(task, layers, retries)
    write_marker(task.out, res)
    return res


def cpu_share(workers_on_host: int) -> int:
    """Warp/write threads per worker process: this host's cores divided among its workers (at
    least 1), so N workers on a C-core host run about C warps at once, not N x C."""
    return max(1, (os.cpu_count() or 1) // max(1, workers_on_host))
