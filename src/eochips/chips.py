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

from . import failpoints
from .errors import OutputError, ReadError
from .labels import Reclass, rasterize_vector
from .qa import FMASK_FILL, fmask_bad_pct
from .reading import read_onto
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
    """

    scene_id: str
    datetime: str
    band_hrefs: tuple[str, ...]
    qa_href: str | None = None
    offset_dn: int = 0

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
    """Everything needed to build one chip (picklable; workers open assets themselves)."""

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
    threads: int = 4
    max_retries: int = 4
    env: tuple[tuple[str, Any], ...] = ()

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
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _threads(n: int) -> ThreadPoolExecutor:
    """A per-process thread pool, kept alive so per-thread dataset caches are reused."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(max_workers=n, thread_name_prefix="eochips-read"), n
        return _pool


def read_chip(task: ChipTask, retries: list | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a chip's imagery and QA (``retries`` collects one entry per retried read).

    Returns
    -------
    image : ndarray
        ``(time, band, y, x)`` in ``task.dtype`` (fill = ``task.nodata``).
    qa : ndarray or None
        ``(time, y, x)`` uint8 QA (nearest), fill ``task.qa_nodata``; None without QA.

    Raises
    ------
    ReadError
        An asset could not be read.
    """
    env = dict(task.env)
    jobs = []
    for t, step in enumerate(task.steps):
        for b, href in enumerate(step.band_hrefs):
            jobs.append(("img", t, b, href, task.resampling[b], task.nodata, task.dtype))
        if task.qa_kind != "none" and step.qa_href:
            jobs.append(("qa", t, 0, step.qa_href, "nearest", task.qa_nodata, "uint8"))

    def run(job):
        kind, t, b, href, rs, nd, dt = job
        return job, read_onto(href, task.crs, task.transform, task.shape, resampling=rs, src_nodata=nd, dtype=dt,
                              env=env, max_retries=task.max_retries, retries=retries)

    image = np.empty((len(task.steps), len(task.band_names), task.size, task.size), dtype=task.dtype)
    qa = np.empty((len(task.steps), task.size, task.size), dtype=np.uint8) if task.qa_kind != "none" else None
    pool = _threads(task.threads)
    for (kind, t, b, *_), arr in pool.map(run, jobs):
        if kind == "img":
            image[t, b] = arr
        else:
            qa[t] = arr
    return image, qa


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
    """Build one chip: read, measure, filter, write.

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
    retries: list = []
    try:
        image, qa = read_chip(task, retries)
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

    try:
        files = write_chip(task, image, qa, label)
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
