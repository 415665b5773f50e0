"""One chip, end to end: read every band of every time step onto the chip grid, decode QA,
attach labels, apply the filter rules, write the files.

:class:`ChipTask` is plain picklable data (no open files, no clients): a Dask worker gets it,
calls :func:`process_chip`, and sends back a small :class:`ChipResult` (metrics, file
hashes), never arrays.

Arrays are ``(time, band, y, x)`` in the product's integer encoding; the merged file stacks
them time-major (``t0.b0, t0.b1, ..., t1.b0, ...``) with band descriptions
``{band}@{YYYY-MM-DD}`` (seed 001's ``{chip_id}_merged.tif``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine

from . import failpoints
from .errors import OutputError, ReadError
from .labels import Reclass, rasterize_vector
from .qa import FMASK_FILL, fmask_bad_pct
from .reading import TileCache, read_onto, read_sources, warp_sources
from .writers import OutputStore, write_cog

CHIPS_DIR = "chips"


@dataclass(frozen=True)
class StepSpec:
    """One time step of a chip: the scene and the hrefs of its assets.

    Attributes
    ----------
    scene_id, datetime
        Item id and ISO 8601 UTC acquisition time.
    band_hrefs
        One href per output band, in the recipe's band order.
    qa_href
        Href of the QA asset (Fmask), or None.
    offset_dn
        Extra reflectance offset in DN (-1000 for S2 baseline >= 04.00), recorded as metadata.
    extra
        ``(asset key, href)`` of further assets mask models read (s2cloudless, ONNX).
    """

    scene_id: str
    datetime: str
    band_hrefs: tuple[str, ...]
    qa_href: str | None = None
    offset_dn: int = 0
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def date(self) -> str:
        return self.datetime[:10]


@dataclass(frozen=True)
class LabelSpec:
    """Where a chip's labels come from: a raster (+ reclass) or polygons."""

    raster: str | None = None
    reclass: Reclass | None = None
    vector: str | None = None
    class_field: str | None = None
    classes: tuple[tuple[str, int], ...] = ()
    colormap: tuple[tuple[int, tuple[int, int, int, int]], ...] = ()


@dataclass(frozen=True)
class ChipTask:
    """Everything needed to build one chip (picklable; workers open assets themselves).

    Attributes
    ----------
    chip_id, crs, transform, size
        The chip and its grid: CRS (WKT), affine ``(a, b, c, d, e, f)`` in CRS units (metres),
        ``size x size`` pixels.
    band_names, steps
        Asset keys of the output bands; one :class:`StepSpec` per time step (date order).
    dtype, nodata, scale, offset
        Storage dtype and fill of the reflectance (kept as stored, e.g. int16 x 10000, -9999);
        physical value = DN * scale + offset.
    resampling
        Resampling name per band (``bilinear`` for reflectance by default).
    out
        Output location (folder or fsspec URL).
    qa_kind, qa_nodata, bad_bits, max_bad_pct, max_nodata_pixels
        QA asset decoder and seed 001's rules (see :func:`process_chip`).
    labels
        Label source, or None.
    compress, level, write_qa
        COG compression and whether the raw QA file is written.
    threads, max_retries, env
        Threads over assets, retries of transient read errors, GDAL options (may hold
        credentials: never logged or written).
    mask_sources, dilation, max_cloud_fraction, max_shadow_fraction, quicklook, rgb
        Cloud-mask sources (:class:`eochips.config.MaskSource`), their dilation in pixels, the
        cloud/shadow fraction filters (0..1), and quicklook output (``rgb``: band indices).
    mask_steps, cmask_bits
        Seed 000's cloud-mask scenes (Fmask hrefs in ``qa_href``) and the Fmask bits they mark.
    """

    chip_id: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    size: int
    band_names: tuple[str, ...]
    steps: tuple[StepSpec, ...]
    dtype: str
    nodata: float | None
    scale: float
    offset: float
    resampling: tuple[str, ...]
    out: str
    qa_kind: str = "none"
    qa_nodata: int | None = FMASK_FILL
    bad_bits: tuple[str, ...] = ("cirrus", "cloud", "shadow", "snow_ice")
    max_bad_pct: float = 5.0
    max_nodata_pixels: int = 0
    labels: LabelSpec | None = None
    compress: str = "deflate"
    level: int = 6
    write_qa: bool = True
    threads: int = 16
    max_retries: int = 4
    env: tuple[tuple[str, Any], ...] = ()
    mask_sources: tuple[Any, ...] = ()
    dilation: int = 0
    max_cloud_fraction: float | None = None
    max_shadow_fraction: float | None = None
    quicklook: bool = False
    rgb: tuple[int, int, int] | None = None
    mask_steps: tuple[StepSpec, ...] = ()
    cmask_bits: tuple[str, ...] = ("cloud",)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def file_names(self) -> dict[str, str]:
        """Seed 001's file names for this chip, relative to the output root."""
        names = {"image": f"{CHIPS_DIR}/{self.chip_id}_merged.tif"}
        if self.labels is not None:
            names["mask"] = f"{CHIPS_DIR}/{self.chip_id}.mask.tif"
        if self.qa_kind == "fmask" and self.write_qa:
            names["qa"] = f"{CHIPS_DIR}/{self.chip_id}_Fmask.tif"
        return names


@dataclass
class ChipResult:
    """What a worker sends back for one chip.

    ``status`` is ``kept`` (files written), ``dropped`` (a filter rule said no; ``reason``
    says which) or ``failed`` (an error; ``reason`` is its message). ``files`` maps file
    names (relative to the output folder) to sha256. ``retries`` counts transient read
    failures that were retried (kept in the state file, not in the dataset, so the dataset
    does not depend on network luck).
    """

    chip_id: str
    status: str
    reason: str = ""
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    retries: int = 0


_pool_lock = threading.Lock()
_pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def _pool(kind: str, n: int) -> ThreadPoolExecutor:
    """A per-process thread pool (``io``: reads, ``cpu``: warps and writes), kept alive so open
    datasets are reused across batches."""
    with _pool_lock:
        size, pool = _pools.get(kind, (0, None))
        if pool is None or size != n:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"eochips-{kind}")
            _pools[kind] = (n, pool)
        return pool


def _threads(n: int) -> ThreadPoolExecutor:
    """The reading pool (``reading.threads`` threads over assets)."""
    return _pool("io", n)


def _cpu_threads(n: int) -> ThreadPoolExecutor:
    """The warp-and-write pool: as many threads as cores (at most ``n``); GDAL releases the GIL."""
    import os

    return _pool("cpu", max(1, min(n, os.cpu_count() or 1)))


def _jobs(task: ChipTask) -> list[tuple]:
    """One read job per asset of a chip: ``(kind, t, b, href, resampling, nodata, dtype)``."""
    jobs = []
    for t, step in enumerate(task.steps):
        for b, href in enumerate(step.band_hrefs):
            jobs.append(("img", t, b, href, task.resampling[b], task.nodata, task.dtype))
        if task.qa_kind != "none" and step.qa_href:
            jobs.append(("qa", t, 0, step.qa_href, "nearest", task.qa_nodata, "uint8"))
    return jobs


def read_chips(tasks: list[ChipTask], retries: list[list] | None = None,
               caches: dict[str, TileCache] | None = None) -> list[tuple[np.ndarray, np.ndarray | None] | ReadError]:
    """Read the imagery and QA of chips that share their scenes (the same assets).

    First one job per asset runs on the process's thread pool and reads every chip's source
    window through the same open dataset and the asset's :class:`~eochips.reading.TileCache`,
    in the order given (row-major): a COG tile shared by neighbouring chips is fetched and
    decoded once, while the threads overlap different assets' requests and decoding. Then one
    job per chip warps its windows, all bands on one source grid in one GDAL call
    (:func:`~eochips.reading.warp_sources`).

    Parameters
    ----------
    tasks
        Chips whose ``steps`` name the same assets (see :func:`batch_key`).
    retries
        If given, one list per task; one entry is appended per retried read.
    caches
        Tile caches by href, kept by the caller across calls for the same batch (default: new).

    Returns
    -------
    list
        Per task, ``(image, qa)``: ``image`` ``(time, band, y, x)`` in ``task.dtype`` (fill =
        ``task.nodata``), ``qa`` ``(time, y, x)`` uint8 (nearest, fill ``task.qa_nodata``) or
        None without QA; or the :class:`ReadError` that made the chip unreadable.
    """
    return _warp_group(_GroupRead(tasks, retries, caches))


class _GroupRead:
    """The reads of one group of chips, started on the reading pool at once (one job per
    asset) so they can run while the previous group is warped and written."""

    def __init__(self, tasks: list[ChipTask], retries: list[list] | None, caches: dict[str, TileCache] | None):
        self.tasks, self.retries = tasks, retries
        self.jobs = _jobs(tasks[0])
        self.sources: list[list] = [[None] * len(self.jobs) for _ in tasks]
        self.errors: dict[int, ReadError] = {}
        self.caches = {} if caches is None else caches
        for job in self.jobs:
            self.caches.setdefault(job[3], TileCache())
        self.env = dict(tasks[0].env)
        pool = _threads(tasks[0].threads)
        self.futures = [pool.submit(self._read, j) for j in range(len(self.jobs))]

    def _read(self, j: int) -> None:  # one asset, every chip, in order
        tasks, first = self.tasks, self.tasks[0]
        kind, t, b, href, rs, nd, dt = self.jobs[j]
        live = [i for i in range(len(tasks)) if i not in self.errors]
        tries: list = []
        try:
            got = read_sources(href, [(tasks[i].crs, tasks[i].transform, tasks[i].shape) for i in live], resampling=rs,
                               src_nodata=nd, env=self.env, max_retries=first.max_retries, cache=self.caches[href],
                               retries=tries)[0]
        except ReadError as exc:
            for i in live:
                self.errors.setdefault(i, exc)
            return
        finally:
            if self.retries is not None:
                for i in live:
                    self.retries[i].extend(tries)
        for i, src in zip(live, got):
            self.sources[i][j] = src

    def wait(self) -> "_GroupRead":
        for f in self.futures:
            f.result()
        return self


def _warp_group(reads: _GroupRead) -> list[tuple[np.ndarray, np.ndarray | None] | ReadError]:
    """Wait for a group's reads, then warp each chip's windows on the CPU pool."""
    reads.wait()
    jobs = reads.jobs

    def warp(i: int):  # one chip, every asset: a warp per source grid and resampling
        if i in reads.errors:
            return reads.errors[i]
        task, src = reads.tasks[i], reads.sources[i]
        image = np.empty((len(task.steps), len(task.band_names), task.size, task.size), dtype=task.dtype)
        qa = np.empty((len(task.steps), task.size, task.size), dtype=np.uint8) if task.qa_kind != "none" else None
        for kind, rs in sorted({(job[0], job[4]) for job in jobs}):
            idx = [j for j, job in enumerate(jobs) if (job[0], job[4]) == (kind, rs)]
            if kind == "img":
                arr = warp_sources([src[j] for j in idx], task.crs, Affine(*task.transform), task.shape, rs, task.dtype,
                                   task.nodata if task.nodata is not None else 0)
                for a, j in zip(arr, idx):
                    image[jobs[j][1], jobs[j][2]] = a
            else:
                arr = warp_sources([src[j] for j in idx], task.crs, Affine(*task.transform), task.shape, rs, "uint8",
                                   task.qa_nodata if task.qa_nodata is not None else 0)
                for a, j in zip(arr, idx):
                    qa[jobs[j][1]] = a
        reads.sources[i] = None
        return image, qa

    return list(_cpu_threads(reads.tasks[0].threads).map(warp, range(len(reads.tasks))))


def batch_key(task: ChipTask) -> tuple:
    """Chips with equal keys read the same assets and can share a batch."""
    return (tuple((s.band_hrefs, s.qa_href) for s in task.steps), tuple(s.qa_href for s in task.mask_steps))


def task_hrefs(task: ChipTask) -> set[str]:
    """Every imagery href a chip reads (not the label raster)."""
    out = set()
    for s in task.steps + task.mask_steps:
        out.update(s.band_hrefs)
        out.update(h for _, h in s.extra)
        if s.qa_href:
            out.add(s.qa_href)
    return out


def process_batch(tasks: list[ChipTask], group: int = 16) -> list[ChipResult]:
    """Build chips that share their scenes (see :func:`batch_key`), ``group`` at a time.

    Each group is read as in :func:`read_chips` (COG tiles shared by neighbouring chips are
    fetched once), then every chip is warped and finished (:func:`finish_chip`) on the CPU
    pool while the next group's reads run on the reading pool (network waits and CPU work
    overlap). At most two groups' arrays are in memory at a time, and the batch's datasets are
    closed at the end, so a worker's memory does not grow with the number of scenes.

    Returns
    -------
    list of ChipResult
        One per task, in order; a chip whose asset cannot be read is ``failed`` alone.
    """
    results: list[ChipResult] = []
    caches: dict[str, TileCache] = {}  # tiles carry over from one group to the next
    groups = [tasks[g:g + group] for g in range(0, len(tasks), group)]
    reads = None
    try:
        for k, sub in enumerate(groups):
            reads = reads or _GroupRead(sub, [[] for _ in sub], caches)
            current = reads.wait()
            # the next group's reads (network, decoding) overlap this group's warps and writes
            reads = _GroupRead(groups[k + 1], [[] for _ in groups[k + 1]], caches) if k + 1 < len(groups) else None
            got = _warp_group(current)
            # matplotlib (quicklooks) is not thread-safe: finish those chips one by one
            mapper = map if sub[0].quicklook else _cpu_threads(sub[0].threads).map
            results.extend(mapper(lambda args: _finish_safely(*args), zip(sub, got, current.retries)))
    finally:
        if reads is not None:
            reads.wait()
        from .reading import close_assets

        close_assets(set().union(*(task_hrefs(t) for t in tasks)))
    return results


def _finish_safely(task: ChipTask, got, retries: list) -> ChipResult:
    """:func:`finish_chip`, with any unexpected exception turned into a failed result naming it
    (recorded, reported, retried on rerun) so one chip never takes its batch down."""
    if isinstance(got, ReadError):
        return ChipResult(task.chip_id, "failed", str(got), retries=len(retries))
    try:
        return finish_chip(task, got[0], got[1], retries)
    except Exception as exc:  # noqa: BLE001
        from .search import redact

        return ChipResult(task.chip_id, "failed", redact(f"{type(exc).__name__}: {exc}"), retries=len(retries))


def read_labels(task: ChipTask) -> tuple[np.ndarray | None, dict[int, int]]:
    """The chip's ``(y, x)`` uint8 class array (None without labels) and unknown code counts."""
    spec = task.labels
    if spec is None:
        return None, {}
    if spec.vector:
        return rasterize_vector(spec.vector, spec.class_field, dict(spec.classes), task.crs, task.transform, task.shape), {}
    codes = read_onto(spec.raster, task.crs, task.transform, task.shape, resampling="nearest",
                      env=dict(task.env), max_retries=task.max_retries)
    if spec.reclass is None:
        return codes.astype(np.uint8), {}
    return spec.reclass.apply(codes, where=task.chip_id)


def nodata_pixels(image: np.ndarray, nodata: float | None) -> int:
    """Pixels ``(y, x)`` that are fill in any band of any date of a ``(time, band, y, x)`` array."""
    if nodata is None:
        bad = np.isnan(image) if np.issubdtype(image.dtype, np.floating) else np.zeros(image.shape, bool)
    elif isinstance(nodata, float) and np.isnan(nodata):
        bad = np.isnan(image)
    else:
        bad = image == nodata
    return int(bad.any(axis=(0, 1)).sum())


def process_chip(task: ChipTask) -> ChipResult:
    """Build one chip: read, measure, filter, write (a batch of one, see :func:`process_batch`)."""
    return process_batch([task])[0]


def finish_chip(task: ChipTask, image: np.ndarray, qa: np.ndarray | None, retries: list) -> ChipResult:
    """Measure, filter and write one chip whose imagery is read.

    Rules (seed 001, thresholds from the recipe):

    - ``nodata``: more than ``max_nodata_pixels`` fill pixels (any band, any date) -> dropped.
    - ``qa``: for each date, bad_pct (:func:`eochips.qa.fmask_bad_pct`); the chip is kept only
      if the maximum over dates is < ``max_bad_pct``.

    Returns
    -------
    ChipResult
        ``failed`` with the error message when an asset cannot be read; other exceptions
        propagate (they are bugs).
    """
    try:
        label, unknown = read_labels(task)
    except ReadError as exc:
        return ChipResult(task.chip_id, "failed", str(exc), retries=len(retries))
    metrics: dict[str, Any] = {
        "scene_ids": [s.scene_id for s in task.steps],
        "datetimes": [s.datetime for s in task.steps],
        "nodata_pixels": nodata_pixels(image, task.nodata),
    }
    if qa is not None and task.qa_kind == "fmask":
        pcts = [round(fmask_bad_pct(qa[t], list(task.bad_bits), task.qa_nodata), 6) for t in range(len(task.steps))]
        metrics["bad_qa_pct"] = pcts
    if label is not None:
        hist = np.bincount(label.ravel(), minlength=256)
        metrics["label_hist"] = {int(k): int(v) for k, v in enumerate(hist) if v}
        if unknown:
            metrics["unknown_codes"] = {int(k): int(v) for k, v in unknown.items()}

    if metrics["nodata_pixels"] > task.max_nodata_pixels:
        return ChipResult(task.chip_id, "dropped", f"nodata: {metrics['nodata_pixels']} fill pixels > {task.max_nodata_pixels}",
                          metrics=metrics, retries=len(retries))
    if "bad_qa_pct" in metrics:
        worst = max(metrics["bad_qa_pct"])
        if worst >= task.max_bad_pct:
            t = metrics["bad_qa_pct"].index(worst)
            return ChipResult(task.chip_id, "dropped", f"qa: bad_pct {worst:.2f} >= {task.max_bad_pct:g} on {task.steps[t].date}",
                              metrics=metrics, retries=len(retries))
    masks = []
    if task.mask_sources:
        try:
            masks = [chip_masks(task, t, qa, retries) for t in range(len(task.steps))]
        except ReadError as exc:
            return ChipResult(task.chip_id, "failed", str(exc), metrics=metrics, retries=len(retries))
        metrics["mask_fractions"] = [{k: round(v, 6) for k, v in m.fractions().items()} for m in masks]
        for kind, limit in (("cloud", task.max_cloud_fraction), ("shadow", task.max_shadow_fraction)):
            worst = max(f[kind] for f in metrics["mask_fractions"])
            if limit is not None and worst > limit:
                t = [f[kind] for f in metrics["mask_fractions"]].index(worst)
                return ChipResult(task.chip_id, "dropped", f"{kind}: fraction {worst:.3f} > {limit:g} on {task.steps[t].date}",
                                  metrics=metrics, retries=len(retries))

    try:
        files = write_chip(task, image, qa, label)
        if task.mask_steps:
            cfiles, metrics["cmasks"] = write_cloud_masks(task, retries)
            files.update(cfiles)
        if task.quicklook:
            files.update(write_quicklook(task, image, masks))
    except ReadError as exc:
        return ChipResult(task.chip_id, "failed", str(exc), metrics=metrics, retries=len(retries))
    except OutputError as exc:
        return ChipResult(task.chip_id, "failed", str(exc), metrics=metrics, retries=len(retries))
    return ChipResult(task.chip_id, "kept", "", files, metrics, retries=len(retries))


def write_chip(task: ChipTask, image: np.ndarray, qa: np.ndarray | None, label: np.ndarray | None) -> dict[str, str]:
    """Write seed 001's files of a kept chip; return ``{relative path: sha256}``."""
    out = OutputStore(task.out)
    names = task.file_names()
    nt, nb = image.shape[:2]
    desc = [f"{b}@{s.date}" for s in task.steps for b in task.band_names]
    offsets = [task.offset + s.offset_dn * task.scale for s in task.steps for _ in task.band_names]
    common = dict(compress=task.compress, level=task.level)
    files = {
        names["image"]: write_cog(
            out, names["image"], image.reshape(nt * nb, task.size, task.size), task.crs, task.transform,
            nodata=task.nodata, descriptions=desc, scales=[task.scale] * (nt * nb), offsets=offsets,
            tags={"scene_ids": ",".join(s.scene_id for s in task.steps)}, **common,
        )
    }
    failpoints.hit("chip:after-image")
    if label is not None:
        files[names["mask"]] = write_cog(out, names["mask"], label, task.crs, task.transform,
                                         colormap=dict(task.labels.colormap) or None, **common)
    if "qa" in names and qa is not None:
        files[names["qa"]] = write_cog(out, names["qa"], qa, task.crs, task.transform, nodata=task.qa_nodata,
                                       descriptions=[f"Fmask@{s.date}" for s in task.steps], **common)
    return files


def _upsample(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a ``(y, x)`` array to ``(size, size)`` (pixel centres)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return mask[np.ix_(rows, cols)]


def chip_masks(task: ChipTask, t: int, qa: np.ndarray | None, retries: list | None = None):
    """The union of the task's mask sources for time step ``t``, dilated, on the chip grid.

    Fmask / SCL come from the QA asset already read (nearest); s2cloudless and ONNX models
    read their own bands at their working resolution over the chip's footprint and their
    masks are brought back to the chip grid by nearest neighbour.
    """
    from .qa import MaskSet, dilate, fmask_masks, onnx_masks, s2cloudless_masks, scl_masks, union

    step = task.steps[t]
    extra = dict(step.extra)
    sets = []
    for src in task.mask_sources:
        if src.kind in ("fmask", "scl"):
            if qa is None:
                raise ReadError(f"qa.masks kind {src.kind!r} needs the profile's QA asset")
            sets.append(fmask_masks(qa[t], src.cloud_bits, src.shadow_bits, task.qa_nodata if task.qa_nodata is not None else 255)
                        if src.kind == "fmask" else scl_masks(qa[t], src.cloud_classes, src.shadow_classes))
            continue
        res = abs(task.transform[0])
        wr = src.working_resolution or res
        n = max(1, int(round(task.size * res / wr)))
        tr = (wr * task.size / n * (1 if task.transform[0] > 0 else -1), 0.0, task.transform[2], 0.0,
              task.transform[4] * task.size / n, task.transform[5])
        bands = np.stack([read_onto(extra[k], task.crs, tr, (n, n), resampling="bilinear", dtype="float32",
                                    env=dict(task.env), max_retries=task.max_retries, retries=retries) for k in src.bands])
        nodata = np.all(bands == 0, axis=0)
        refl = bands * src.scale
        if src.kind == "s2cloudless":
            _, m = s2cloudless_masks(refl, threshold=src.threshold, average_over=src.average_over,
                                     dilation_size=src.dilation_size, all_bands=len(src.bands) == 13, nodata=nodata)
        else:
            m = onnx_masks(refl, list(src.band_order), model=src.model, product_level=src.product_level, nodata_value=0.0)
        sets.append(MaskSet(*(_upsample(getattr(m, k), task.size) for k in ("cloud", "shadow", "snow", "nodata"))))
    return dilate(union(*sets), task.dilation)


def write_cloud_masks(task: ChipTask, retries: list | None = None) -> tuple[dict[str, str], list[dict]]:
    """Seed 000's cloud-mask chips: for each mask scene i, ``{chip_id}_{i}_cmask.tif`` (uint8:
    1 where a chosen Fmask bit, by default bit 1 cloud, is set, 0 clear, 255 where Fmask is
    fill), Fmask read with nearest. Returns the files and ``[{file, scene_id, cloud_pct}]``
    with ``cloud_pct`` the cloud fraction (0..1) of all the chip's pixels."""
    from .qa import fmask_masks

    out = OutputStore(task.out)
    files, rows = {}, []
    for i, step in enumerate(task.mask_steps):
        fm = read_onto(step.qa_href, task.crs, task.transform, task.shape, resampling="nearest", src_nodata=task.qa_nodata,
                       dtype="uint8", env=dict(task.env), max_retries=task.max_retries, retries=retries)
        m = fmask_masks(fm, task.cmask_bits, (), task.qa_nodata if task.qa_nodata is not None else 255)
        cm = np.where(m.nodata, 255, m.cloud).astype(np.uint8)
        rel = f"{CHIPS_DIR}/{task.chip_id}_{i}_cmask.tif"
        files[rel] = write_cog(out, rel, cm, task.crs, task.transform, nodata=255,
                               descriptions=[f"cloud@{step.date}"], tags={"scene_id": step.scene_id},
                               compress=task.compress, level=task.level)
        rows.append({"file": rel.split("/")[-1], "scene_id": step.scene_id, "cloud_pct": round(m.fractions()["cloud"], 6)})
    return files, rows


def write_quicklook(task: ChipTask, image: np.ndarray, masks: list) -> dict[str, str]:
    """``quicklooks/{chip_id}.png``: per date, the RGB (2-98 % stretch) with cloud outlined in
    red, shadow in blue and nodata in grey; returns ``{path: sha256}``."""
    import hashlib
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nt = image.shape[0]
    fig, axes = plt.subplots(1, nt, figsize=(2.5 * nt, 2.7), dpi=100, squeeze=False)
    for t in range(nt):
        ax = axes[0, t]
        if task.rgb is not None:
            rgb = image[t, list(task.rgb)].astype(np.float64)
            valid = rgb[0] != task.nodata if task.nodata is not None else np.ones(rgb.shape[1:], bool)
            lo, hi = (np.percentile(rgb[:, valid], (2, 98)) if valid.any() else (0, 1))
            ax.imshow(np.clip((np.moveaxis(rgb, 0, -1) - lo) / max(hi - lo, 1e-9), 0, 1), interpolation="nearest")
        else:
            ax.imshow(image[t, 0], cmap="gray", interpolation="nearest")
        if masks:
            for layer, color in (("cloud", "red"), ("shadow", "blue"), ("nodata", "0.5")):
                arr = getattr(masks[t], layer)
                if arr.any() and not arr.all():
                    ax.contour(arr.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
        ax.set_title(task.steps[t].date, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(task.chip_id, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    rel = f"quicklooks/{task.chip_id}.png"
    OutputStore(task.out).write_bytes(rel, buf.getvalue())
    return {rel: hashlib.sha256(buf.getvalue()).hexdigest()}
