"""Executing chip tasks on Dask, with an SQLite state file for resume.

- Default: a ``LocalCluster`` with one single-threaded worker process per core (reads inside a
  task overlap I/O with their own small thread pool). ``scheduler="tcp://HOST:PORT"`` (or
  ``engine.scheduler`` in the recipe) uses an existing cluster instead: start one with
  ``dask scheduler`` and ``dask worker tcp://HOST:PORT`` on each machine, or with
  dask-jobqueue / dask-kubernetes / Coiled, with eochips installed in the workers' environment
  and the assets and the output location reachable from every worker.
- A Dask task is a batch of small picklable :class:`~eochips.chips.ChipTask` objects that read
  the same scenes (:func:`make_batches`): the worker reads their windows through one handle per
  asset, so COG tiles shared by neighbouring chips are fetched once. Workers open assets and
  write chip files themselves. Results (metrics and file hashes, never arrays) stream back per
  batch (``as_completed``) and are recorded in the SQLite state at once.
- The state lives in ``{output}/state.sqlite`` for a local output; for object storage it lives
  in ``$EOCHIPS_STATE_DIR`` (default ``~/.cache/eochips/state``) under a name derived from the
  output URL, and a copy is uploaded as ``state.sqlite`` after each build.
- A rerun skips chips recorded as kept/dropped whose files still match their sha256, and
  redoes the rest (failed, missing, modified, never finished).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import failpoints
from .chips import CHIPS_DIR, ChipResult, ChipTask, batch_key, process_batch
from .plan import Plan, load_plan, make_tasks, refresh_hrefs
from .writers import OutputStore

STATE_FILE = "state.sqlite"
__all__ = ["STATE_FILE", "CHIPS_DIR", "State", "build", "state_path", "BuildSummary"]


def state_path(store: OutputStore) -> Path:
    """Where the SQLite state of ``store`` lives (see module docstring)."""
    if store.is_local:
        return store.local_path(STATE_FILE)
    base = Path(os.environ.get("EOCHIPS_STATE_DIR", Path.home() / ".cache" / "eochips" / "state"))
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{hashlib.sha1(store.location.encode()).hexdigest()[:16]}.sqlite"


class State:
    """The SQLite state of a build: one row per chip.

    Columns: ``chip_id``, ``status`` (kept / dropped / failed), ``reason``, ``attempts``,
    ``retries`` (transient read failures retried, summed over attempts), ``files`` (JSON
    ``{path: sha256}``), ``metrics`` (JSON), ``updated`` (unix seconds).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS chips (chip_id TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, "
            "attempts INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0, files TEXT, metrics TEXT, updated REAL)"
        )
        self.db.commit()

    def _row(self, r) -> dict[str, Any]:
        return {"status": r[0], "reason": r[1], "attempts": r[2], "retries": r[3], "files": json.loads(r[4] or "{}"),
                "metrics": json.loads(r[5] or "{}")}

    def get(self, chip_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT status, reason, attempts, retries, files, metrics FROM chips WHERE chip_id=?",
                              (chip_id,)).fetchone()
        return None if row is None else self._row(row)

    def all(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT chip_id, status, reason, attempts, retries, files, metrics FROM chips").fetchall()
        return {r[0]: self._row(r[1:]) for r in rows}

    def record(self, res: ChipResult) -> None:
        self.db.execute(
            "INSERT INTO chips (chip_id, status, reason, attempts, retries, files, metrics, updated) VALUES (?,?,?,1,?,?,?,?) "
            "ON CONFLICT(chip_id) DO UPDATE SET status=excluded.status, reason=excluded.reason, attempts=attempts+1, "
            "retries=retries+excluded.retries, files=excluded.files, metrics=excluded.metrics, updated=excluded.updated",
            (res.chip_id, res.status, res.reason, res.retries, json.dumps(res.files, sort_keys=True),
             json.dumps(res.metrics, sort_keys=True), time.time()),
        )
        self.db.commit()

    def snapshot(self) -> Path:
        """A consistent copy of the database in a temporary file (for uploading)."""
        fd, tmp = tempfile.mkstemp(suffix=".sqlite")
        os.close(fd)
        with sqlite3.connect(tmp) as dst:
            self.db.backup(dst)
        return Path(tmp)

    def close(self) -> None:
        self.db.close()


def files_ok(store: OutputStore, files: dict[str, str]) -> bool:
    """True when every file exists in ``store`` with the recorded sha256."""
    return all(store.sha256(rel) == digest for rel, digest in files.items())


@dataclass
class BuildSummary:
    """Counts of a build (what the CLI prints)."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    ran: int = 0
    retries: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": self.dropped, "failed": len(self.failed), "failed_reasons": self.failed,
                "skipped_done": self.skipped, "ran": self.ran, "read_retries": self.retries,
                "seconds": round(self.seconds, 2)}


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, processes: bool = True) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` if given, else on a new LocalCluster.

    LocalCluster workers start from a ``forkserver`` that has already imported eochips: a
    worker is then ready in milliseconds instead of re-importing GDAL, dask and eochips
    (about 1 s of CPU each, per build).
    """
    import multiprocessing
    import sys

    import dask
    from distributed import Client, LocalCluster

    method = "forkserver" if sys.platform != "win32" else "spawn"
    with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error",
                          "distributed.worker.multiprocessing-method": method}):
        if method == "forkserver":
            from distributed.utils import get_mp_context

            get_mp_context()  # distributed's own preload list first, then ours on top
            multiprocessing.get_context("forkserver").set_forkserver_preload(
                ["distributed", "rasterio", "eochips.chips", "eochips.engine"])
        if scheduler:
            with Client(scheduler, timeout="30s") as client:
                yield client
            return
        n = workers or os.cpu_count() or 1
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            yield client


def _safe(tasks: list[ChipTask]) -> list[ChipResult]:
    """Run a batch; an unexpected exception fails its chips with a message naming it."""
    try:
        return process_batch(tasks)
    except Exception as exc:  # noqa: BLE001 - recorded, reported, retried on rerun
        from .search import redact

        return [ChipResult(t.chip_id, "failed", redact(f"{type(exc).__name__}: {exc}")) for t in tasks]


def make_batches(tasks: list[ChipTask], workers: int, max_chips: int = 128) -> list[list[ChipTask]]:
    """Group chips into batches a worker builds together (:func:`eochips.chips.process_batch`).

    Chips that read the same assets (:func:`eochips.chips.batch_key`; the same selected scenes)
    go together, in chip-id order (row-major), so COG tiles shared by neighbouring chips are
    fetched once. A group is cut into contiguous runs of at most ``max_chips`` chips (bounded
    work per task, a lost worker costs little), and the largest batches are split further
    until there are at least ``workers`` of them so every worker has work. Each cut re-reads
    at most one row of tiles.
    """
    groups: dict[tuple, list[ChipTask]] = {}
    for t in sorted(tasks, key=lambda t: t.chip_id):
        groups.setdefault(batch_key(t), []).append(t)
    batches = []
    for g in groups.values():
        n = -(-len(g) // max_chips)
        size = -(-len(g) // n)
        batches.extend(g[i:i + size] for i in range(0, len(g), size))
    while len(batches) < workers:
        big = max(batches, key=len)
        if len(big) < 2:
            break
        batches.remove(big)
        half = -(-len(big) // 2)
        batches.extend([big[:half], big[half:]])
    return sorted(batches, key=lambda b: b[0].chip_id)


def build(out: str | os.PathLike, *, plan: Plan | None = None, workers: int | None = None,
          scheduler: str | None = None, progress: bool = True) -> BuildSummary:
    """Build every planned chip of the plan in ``out`` (see module docstring).

    Parameters
    ----------
    out
        Output folder or URL holding ``plan/``.
    plan
        The plan in memory (``eochips run`` passes it, so credentials in hrefs never need to
        be stored); default: read ``plan/`` and restore redacted hrefs by searching again.
    workers
        LocalCluster worker processes (default: recipe ``engine.workers``, else CPU cores).
    scheduler
        ``tcp://HOST:PORT`` of an existing Dask scheduler (default: recipe ``engine.scheduler``).
    progress
        Show a rich progress bar on stderr.
    """
    store = OutputStore(out)
    t0 = time.perf_counter()
    plan = plan or refresh_hrefs(load_plan(store))
    store.remove_temporaries()
    tasks = make_tasks(plan, store)
    state = State(state_path(store))
    summary = BuildSummary()
    try:
        for cp in plan.chips:
            if cp.status == "dropped":
                prev = state.get(cp.chip.id)
                if prev is None or prev["status"] != "dropped" or prev["reason"] != cp.reason:
                    state.record(ChipResult(cp.chip.id, "dropped", cp.reason, metrics=cp.label_info))
        todo = []
        for t in tasks:
            prev = state.get(t.chip_id)
            if prev and prev["status"] in ("kept", "dropped") and files_ok(store, prev["files"]):
                summary.skipped += 1
            else:
                todo.append(t)
        failpoints.hit("build:before-first-chip")
        if todo:
            _run(todo, state, plan.recipe, workers, scheduler, progress)
        summary.ran = len(todo)
        for cid, rec in state.all().items():
            summary.retries += rec["retries"]
            if rec["status"] == "kept":
                summary.kept += 1
            elif rec["status"] == "dropped":
                key = (rec["reason"] or "").split(":")[0]
                summary.dropped[key] = summary.dropped.get(key, 0) + 1
            else:
                summary.failed[cid] = rec["reason"]
        if not store.is_local:
            snap = state.snapshot()
            store.publish(snap, STATE_FILE)
    finally:
        state.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(todo: list[ChipTask], state: State, recipe, workers, scheduler, progress: bool) -> None:
    from distributed import as_completed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    eng = recipe.engine
    with dask_client(workers or eng.workers, scheduler or eng.scheduler, eng.processes) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        batches = make_batches(todo, n_workers, eng.batch_chips)
        by_key = {f"chips-{b[0].chip_id}-{len(b)}-{time.time_ns()}": b for b in batches}
        futures = [client.submit(_safe, b, key=k, pure=False) for k, b in by_key.items()]
        with Progress(TextColumn("chips"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not progress, transient=False) as bar:
            job = bar.add_task("chips", total=len(todo))
            for fut in as_completed(futures):
                try:
                    results = fut.result()
                except Exception as exc:  # a worker died, etc.
                    results = [ChipResult(t.chip_id, "failed", f"{type(exc).__name__}: {exc}") for t in by_key[fut.key]]
                for res in results:
                    state.record(res)
                    failpoints.hit("build:after-record")
                    bar.advance(job)
                fut.release()
