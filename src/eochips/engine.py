"""Executing chip tasks on Dask, with an SQLite state file for resume.

- Default: a ``LocalCluster`` with one single-threaded worker process per core (reads inside a
  task overlap I/O with their own small thread pool). ``scheduler="tcp://HOST:PORT"`` uses an
  existing cluster instead.
- Results stream back as they finish (``as_completed``) and are recorded in
  ``{output}/state.sqlite`` immediately; arrays never travel to the driver.
- A rerun skips chips recorded as kept/dropped whose files still match their sha256, and
  redoes the rest (failed, missing, modified, never finished).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .chips import ChipResult, ChipTask, process_chip
from .plan import load_plan, make_tasks
from .writers import remove_temporaries, sha256_file

STATE_FILE = "state.sqlite"
CHIPS_DIR = "chips"


class State:
    """The SQLite state of a build: one row per chip.

    Columns: ``chip_id``, ``status`` (kept / dropped / failed), ``reason``, ``attempts``,
    ``files`` (JSON ``{name: sha256}``), ``metrics`` (JSON), ``updated`` (unix seconds).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS chips (chip_id TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, "
            "attempts INTEGER NOT NULL DEFAULT 0, files TEXT, metrics TEXT, updated REAL)"
        )
        self.db.commit()

    def get(self, chip_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT status, reason, attempts, files, metrics FROM chips WHERE chip_id=?", (chip_id,)).fetchone()
        if row is None:
            return None
        return {"status": row[0], "reason": row[1], "attempts": row[2], "files": json.loads(row[3] or "{}"),
                "metrics": json.loads(row[4] or "{}")}

    def all(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT chip_id, status, reason, attempts, files, metrics FROM chips").fetchall()
        return {r[0]: {"status": r[1], "reason": r[2], "attempts": r[3], "files": json.loads(r[4] or "{}"),
                       "metrics": json.loads(r[5] or "{}")} for r in rows}

    def record(self, res: ChipResult) -> None:
        self.db.execute(
            "INSERT INTO chips (chip_id, status, reason, attempts, files, metrics, updated) VALUES (?,?,?,1,?,?,?) "
            "ON CONFLICT(chip_id) DO UPDATE SET status=excluded.status, reason=excluded.reason, attempts=attempts+1, "
            "files=excluded.files, metrics=excluded.metrics, updated=excluded.updated",
            (res.chip_id, res.status, res.reason, json.dumps(res.files, sort_keys=True),
             json.dumps(res.metrics, sort_keys=True), time.time()),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def files_ok(folder: Path, files: dict[str, str]) -> bool:
    """True when every file exists in ``folder`` with the recorded sha256."""
    for name, digest in files.items():
        p = folder / name
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return True


@dataclass
class BuildSummary:
    """Counts of a build (what the CLI prints)."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    ran: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": self.dropped, "failed": len(self.failed), "failed_reasons": self.failed,
                "skipped_done": self.skipped, "ran": self.ran, "seconds": round(self.seconds, 2)}


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, processes: bool = True) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` if given, else on a new LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "error"}):
        if scheduler:
            with Client(scheduler, timeout="30s") as client:
                yield client
            return
        n = workers or os.cpu_count() or 1
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            yield client


def _safe(task: ChipTask) -> ChipResult:
    """Run a chip; any unexpected exception becomes a failed result naming it."""
    try:
        return process_chip(task)
    except Exception as exc:  # noqa: BLE001 - recorded, reported, retried on rerun
        return ChipResult(task.chip_id, "failed", f"{type(exc).__name__}: {exc}")


def build(out: str | os.PathLike, *, workers: int | None = None, scheduler: str | None = None,
          progress: bool = True) -> BuildSummary:
    """Build every planned chip of the plan in ``out`` (see module docstring).

    Parameters
    ----------
    out
        Output folder holding ``plan/``.
    workers
        LocalCluster worker processes (default: recipe ``engine.workers``, else CPU cores).
    scheduler
        ``tcp://HOST:PORT`` of an existing Dask scheduler (default: recipe ``engine.scheduler``).
    progress
        Show a rich progress bar on stderr.
    """
    out = Path(out)
    t0 = time.perf_counter()
    plan = load_plan(out)
    remove_temporaries(out)
    tasks = make_tasks(plan, out)
    state = State(out / STATE_FILE)
    summary = BuildSummary()
    chips_dir = out / CHIPS_DIR
    try:
        for cp in plan.chips:
            if cp.status == "dropped":
                prev = state.get(cp.chip.id)
                if prev is None or prev["status"] != "dropped" or prev["reason"] != cp.reason:
                    state.record(ChipResult(cp.chip.id, "dropped", cp.reason, metrics=cp.label_info))
        todo = []
        for t in tasks:
            prev = state.get(t.chip_id)
            if prev and prev["status"] in ("kept", "dropped") and files_ok(chips_dir, prev["files"]):
                summary.skipped += 1
            else:
                todo.append(t)
        if todo:
            _run(todo, state, plan.recipe, workers, scheduler, progress)
        summary.ran = len(todo)
        for cid, rec in state.all().items():
            if rec["status"] == "kept":
                summary.kept += 1
            elif rec["status"] == "dropped":
                key = (rec["reason"] or "").split(":")[0]
                summary.dropped[key] = summary.dropped.get(key, 0) + 1
            else:
                summary.failed[cid] = rec["reason"]
    finally:
        state.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(todo: list[ChipTask], state: State, recipe, workers, scheduler, progress: bool) -> None:
    from distributed import as_completed
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    eng = recipe.engine
    with dask_client(workers or eng.workers, scheduler or eng.scheduler, eng.processes) as client:
        futures = [client.submit(_safe, t, key=f"chip-{t.chip_id}-{time.time_ns()}", pure=False) for t in todo]
        with Progress(TextColumn("chips"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      disable=not progress, transient=False) as bar:
            job = bar.add_task("chips", total=len(futures))
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as exc:  # worker died, etc.
                    res = ChipResult(fut.key.split("-")[1], "failed", f"{type(exc).__name__}: {exc}")
                state.record(res)
                fut.release()
                bar.advance(job)
