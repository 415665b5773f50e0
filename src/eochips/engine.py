"""Executing unit tasks on Dask, with a state that cannot lie.

- Default: a ``LocalCluster`` with one single-threaded worker process per core (reads inside a
  task overlap I/O with their own thread pool; warps and writes use the worker's share of the
  cores, :func:`~eochips.chips.cpu_share`). ``scheduler="tcp://HOST:PORT"`` uses an existing
  cluster (``dask scheduler`` + ``dask worker``, dask-jobqueue, dask-kubernetes, Coiled) with
  eochips installed on the workers and the assets and the output reachable from them.
- A Dask task is a batch of small picklable :class:`~eochips.chips.UnitTask` s that read the
  same scenes (:func:`make_batches`), in numeric ``(grid, row, col)`` order, so COG tiles shared
  by neighbouring units are fetched once. Tasks carry no credentials: workers build them from
  the source's auth scheme at read time.
- Every finished unit leaves a completion marker ``state/units/{unit}.json`` beside its files
  (written by the worker after the files, like rslearn's ``completed`` files); the SQLite
  state records results as batches return and takes in the markers it lacks on start, so a
  Ctrl-C, a killed driver or a fresh machine (object storage: the SQLite file lives in
  ``$EOCHIPS_STATE_DIR``) loses no finished unit.
- A rerun skips a unit only when its state row has the same task fingerprint (scenes, bands,
  rules, layouts) and its files still match their sha256; everything else is redone. Units of
  an earlier plan that are no longer planned are removed with their files.
- A failed read or write fails its unit (a rerun retries it). Any other exception is a bug and
  stops the run with its traceback.
- Shards (array jobs, ``--shard I/N``): shard ``I`` of ``N`` builds the units of
  :func:`shard_units` ``[I]`` (whole batches of units that read the same scenes, contiguous in
  ``(grid, row, col)`` order; computed from the plan alone), with its own state
  ``state/shard-I-of-N.sqlite`` and its own lock (:mod:`eochips.lock`), so the shards of one
  output run at the same time. Their completion markers are the shared record:
  ``eochips finalize`` merges them (:func:`eochips.dataset.finalize`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import failpoints
from .chips import UnitResult, UnitTask, batch_key, cpu_share, process_batch
from .search import redact, redact_obj
from .errors import OutputError
from .writers import OutputStore

STATE_FILE = "state.sqlite"
MARKERS = "state/units"
SHARD_BATCH = 128
"""Most units in one batch that :func:`shard_units` hands out whole (the default of
``engine.batch_chips``; fixed, so the shards' units do not depend on any shard's engine settings)."""
__all__ = ["STATE_FILE", "MARKERS", "State", "build", "open_state", "state_path", "BuildSummary", "make_batches",
           "write_marker", "parse_shard", "check_shard", "shard_units", "shard_state_name", "shard_states", "share_plan"]

Shard = tuple[int, int]


def state_path(store: OutputStore, shard: Shard | None = None) -> Path:
    """Where the SQLite state of ``store`` (of its shard ``shard``) lives (see the module
    docstring): in the folder, or for object storage in ``$EOCHIPS_STATE_DIR``."""
    if store.is_local:
        if shard is None:
            return store.local_path(STATE_FILE)
        path = store.local_path(shard_state_name(shard))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(os.environ.get("EOCHIPS_STATE_DIR", Path.home() / ".cache" / "eochips" / "state"))
    base.mkdir(parents=True, exist_ok=True)
    tail = "" if shard is None else f"-shard-{shard[0]}-of-{shard[1]}"
    return base / f"{hashlib.sha1(store.location.encode()).hexdigest()[:16]}{tail}.sqlite"


def shard_state_name(shard: Shard) -> str:
    """The state of shard ``(i, n)`` in the dataset: ``state/shard-{i}-of-{n}.sqlite`` (object
    storage: a copy uploaded when the shard's build ends)."""
    return f"state/shard-{shard[0]}-of-{shard[1]}.sqlite"


_SHARD_STATE = re.compile(r"state/shard-(\d+)-of-(\d+)\.sqlite")


def shard_states(store: OutputStore) -> list[Shard]:
    """The shards ``(i, n)`` whose state is in ``store`` (those that have run), sorted."""
    return sorted((int(m[1]), int(m[2])) for rel in store.list_files() if (m := _SHARD_STATE.fullmatch(rel)))


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (``--shard``) as ``(I, N)``, 0-based: ``0/2`` and ``1/2`` are the two halves.

    Raises
    ------
    RecipeError
        Not two integers ``I/N`` with ``N >= 1`` and ``0 <= I < N``.
    """
    from .errors import RecipeError

    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise RecipeError(f"--shard {text!r}: expected I/N, shard I (0-based) of N, e.g. --shard 0/4 "
                          f"(SLURM: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return check_shard((int(m[1]), int(m[2])), f"--shard {text!r}")


def check_shard(shard, what: str = "") -> Shard:
    """``shard`` as ``(i, n)`` after checking ``n >= 1`` and ``0 <= i < n``.

    Raises
    ------
    RecipeError
        Not a pair of integers in range (the message says what would be valid).
    """
    from .errors import RecipeError

    import operator

    what = what or f"shard {shard!r}"
    try:
        if isinstance(shard, (str, bytes)) or any(isinstance(v, bool) for v in shard):
            raise TypeError
        i, n = (operator.index(v) for v in shard)  # Python or NumPy integers, not floats
        ok = True
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise RecipeError(f"{what}: expected a pair (I, N) of integers, shard I (0-based) of N, e.g. (0, 4)")
    if n < 1:
        raise RecipeError(f"{what}: the shard count N must be at least 1")
    if not 0 <= i < n:
        raise RecipeError(f"{what}: shards are numbered 0 to {n - 1} (0-based), got {i}")
    return (i, n)


class State:
    """The SQLite state of a build: one row per unit.

    Columns: ``unit_id``, ``status`` (kept / dropped / failed), ``code`` (typed reason),
    ``reason``, ``attempts``, ``retries`` (transient read failures retried, summed over
    attempts), ``files`` (JSON ``{path: sha256}``), ``metrics`` (JSON), ``fingerprint`` (of the
    task that made the row), ``updated`` (unix seconds).

    Every SQLite failure is an :class:`~eochips.errors.OutputError` naming the file and what to
    do: a corrupt or truncated file, a file another process keeps locked (after
    :data:`LOCK_TIMEOUT` seconds, not a silent minute), a full disk.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = None
        with self._errors(close=True):
            self.db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS units (unit_id TEXT PRIMARY KEY, status TEXT NOT NULL, code TEXT, reason TEXT, "
                "attempts INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0, files TEXT, metrics TEXT, "
                "fingerprint TEXT, updated REAL)"
            )
            self.db.commit()

    _COLS = "status, code, reason, attempts, retries, files, metrics, fingerprint"

    @contextmanager
    def _errors(self, close: bool = False) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            if close:
                self.close()
            raise state_error(self.path, exc) from None

    def _row(self, r) -> dict[str, Any]:
        try:
            files, metrics = json.loads(r[5] or "{}"), json.loads(r[6] or "{}")
        except ValueError as exc:  # a JSON column that does not parse
            raise state_error(self.path, exc) from None
        return {"status": r[0], "code": r[1] or "", "reason": r[2] or "", "attempts": r[3], "retries": r[4],
                "files": files, "metrics": metrics, "fingerprint": r[7] or ""}

    def get(self, unit_id: str) -> dict[str, Any] | None:
        with self._errors():
            row = self.db.execute(f"SELECT {self._COLS} FROM units WHERE unit_id=?", (unit_id,)).fetchone()
            return None if row is None else self._row(row)

    def all(self) -> dict[str, dict[str, Any]]:
        with self._errors():
            rows = self.db.execute(f"SELECT unit_id, {self._COLS} FROM units").fetchall()
            return {r[0]: self._row(r[1:]) for r in rows}

    def record(self, res: UnitResult, attempt: int = 1) -> None:
        """Record one result (``attempt`` 0: taken from a marker into an existing row, not a new attempt)."""
        with self._errors():
            self.db.execute(
                "INSERT INTO units (unit_id, status, code, reason, attempts, retries, files, metrics, fingerprint, updated) "
                "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(unit_id) DO UPDATE SET status=excluded.status, code=excluded.code, "
                "reason=excluded.reason, attempts=attempts+excluded.attempts, retries=retries+excluded.retries, "
                "files=excluded.files, metrics=excluded.metrics, fingerprint=excluded.fingerprint, updated=excluded.updated",
                (res.unit_id, res.status, res.code, redact(res.reason), attempt, res.retries,
                 json.dumps(res.files, sort_keys=True), json.dumps(res.metrics, sort_keys=True, default=_json_default),
                 res.fingerprint, time.time()),
            )
            self.db.commit()

    def delete(self, unit_id: str) -> None:
        with self._errors():
            self.db.execute("DELETE FROM units WHERE unit_id=?", (unit_id,))
            self.db.commit()

    def snapshot(self) -> Path:
        """A consistent copy of the database in a temporary file (for uploading)."""
        fd, tmp = tempfile.mkstemp(suffix=".sqlite")
        os.close(fd)
        with self._errors(), sqlite3.connect(tmp) as dst:
            self.db.backup(dst)
        return Path(tmp)

    def close(self) -> None:
        try:
            self.db.close()
        except (sqlite3.Error, AttributeError):
            pass


LOCK_TIMEOUT = 2.0
"""Seconds a SQLite state locked by another process is waited for before the run stops."""

DISK_FULL = "no space left on device"


def state_error(path: Path, exc: Exception) -> OutputError:
    """The one-line error of a state file SQLite cannot use (see :class:`State`)."""
    msg = str(exc)
    low = msg.lower()
    if "disk is full" in low or "no space" in low:
        return OutputError(f"{DISK_FULL} while writing the state {str(path)!r}; free space or choose another --output "
                           f"(finished units are kept: rerun the same command to resume)")
    if "locked" in low or "busy" in low:
        return OutputError(f"the state {str(path)!r} is locked by another process (still locked after {LOCK_TIMEOUT:g} s); "
                           f"stop the process that holds it (another eochips, a sqlite3 shell) and rerun")
    return OutputError(f"the state {str(path)!r} is corrupt or truncated ({msg}); delete it (and any {path.name}-wal, "
                       f"{path.name}-shm beside it) to rebuild it from the completion markers in {MARKERS}/, or rerun "
                       f"with --overwrite to start the dataset again")


def _json_default(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON")


def marker_path(unit_id: str) -> str:
    return f"{MARKERS}/{unit_id}.json"


def write_marker(out: str, res: UnitResult) -> None:
    """The completion marker of one unit (after its files): its result, as JSON."""
    doc = {"unit_id": res.unit_id, "status": res.status, "code": res.code, "reason": redact(res.reason), "files": res.files,
           "metrics": res.metrics, "retries": res.retries, "fingerprint": res.fingerprint}
    OutputStore(out).write_text(marker_path(res.unit_id), json.dumps(doc, sort_keys=True, default=_json_default))


def open_state(store: OutputStore, fingerprints: dict[str, str] | None = None, shard: Shard | None = None) -> State:
    """The state of ``store`` (of its shard ``shard``: :func:`state_path`), with every completion
    marker it lacks taken in (a unit finished by a worker whose result never reached the driver,
    a state left on another machine, or a unit another shard built). With ``fingerprints``
    (unit id -> task fingerprint) only markers of those tasks count.

    Raises
    ------
    OutputError
        The state file is corrupt, truncated or locked (:func:`state_error`), or a completion
        marker is not a marker (corrupt JSON): the message names the file and what to do.
    """
    state = State(state_path(store, shard))
    try:
        have = state.all()
        for rel in store.list_files():
            if not rel.startswith(MARKERS + "/") or not rel.endswith(".json"):
                continue
            if shard is not None and fingerprints is not None and rel[len(MARKERS) + 1:-5] not in fingerprints:
                continue  # another shard's unit: not read (a shard of a large dataset would read them all)
            doc = read_marker(store, rel)
            uid = doc["unit_id"]
            if fingerprints is not None and fingerprints.get(uid) != doc.get("fingerprint"):
                continue
            row = have.get(uid)
            if row is None or row["fingerprint"] != doc.get("fingerprint") or row["status"] != doc.get("status"):
                state.record(UnitResult(uid, doc["status"], doc.get("code", ""), doc.get("reason", ""), doc.get("files", {}),
                                        doc.get("metrics", {}), doc.get("retries", 0), doc.get("fingerprint", "")),
                             attempt=0 if row is not None else 1)
    except BaseException:
        state.close()
        raise
    return state


def read_marker(store: OutputStore, rel: str) -> dict[str, Any]:
    """The completion marker ``rel``, checked.

    Raises
    ------
    OutputError
        It is not valid JSON, or not a marker of the unit its name says.
    """
    try:
        doc = json.loads(store.read_bytes(rel))
    except (ValueError, OSError) as exc:
        why = f"not valid JSON: {exc}" if isinstance(exc, ValueError) else f"unreadable: {exc}"
        doc, problem = None, why
    else:
        problem = ""
    if doc is not None:
        if not isinstance(doc, dict) or rel != marker_path(str(doc.get("unit_id"))):
            problem = "not the marker of the unit its name says"
        elif doc.get("status") not in ("kept", "dropped", "failed") or not isinstance(doc.get("files", {}), dict):
            problem = f"status {doc.get('status')!r} / files are not a unit result"
    if problem:
        raise OutputError(f"completion marker {rel} in {store.location!r} is corrupt ({problem[:160]}); delete it and "
                          f"rerun 'eochips build {store.location}' (that unit is built again)")
    return doc


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
    shard: Shard | None = None
    units: int = 0  # planned units of this build (of its shard)
    processing: dict[str, float] = field(default_factory=dict)  # the units' processing: :func:`processing_figures`
    timings: dict[str, Any] = field(default_factory=dict)  # :func:`write_timings` of this build (not in as_dict)

    def as_dict(self) -> dict[str, Any]:
        d = {"kept": self.kept, "dropped": self.dropped, "failed": len(self.failed), "failed_reasons": self.failed,
             "skipped_done": self.skipped, "ran": self.ran, "read_retries": self.retries,
             "seconds": round(self.seconds, 2)}
        if self.processing:
            d["processing"] = dict(self.processing)
        if self.shard is not None:
            d.update(shard=f"{self.shard[0]}/{self.shard[1]}", units=self.units)
        return d


SCHEDULER_TIMEOUT = 5
"""Seconds to reach a ``--scheduler`` before giving up with one line."""


def check_scheduler(address: str) -> None:
    """Check that ``address`` is a Dask scheduler address this host can reach, within
    :data:`SCHEDULER_TIMEOUT` seconds (``eochips run`` does this before writing anything).

    Raises
    ------
    RecipeError
        Not ``tcp://HOST:PORT`` (or tls://, ws://, wss://), or nothing answers there.
    """
    import asyncio
    import re

    from .errors import RecipeError

    if not re.fullmatch(r"(tcp|tls|ws|wss)://[^\s/:]+(:\d+)?/?", address or ""):
        raise RecipeError(f"--scheduler {address!r}: expected tcp://HOST:PORT of a Dask scheduler (e.g. tcp://10.0.0.5:8786)")
    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address, timeout=SCHEDULER_TIMEOUT)
        await comm.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        raise RecipeError(f"--scheduler {address!r}: no Dask scheduler answers there within {SCHEDULER_TIMEOUT} s "
                          f"({type(exc).__name__}); start it, or leave --scheduler out for a local cluster") from None


@contextmanager
def _quiet_distributed() -> Iterator[None]:
    """distributed and tornado log nothing below CRITICAL in the driver while the block runs and
    while the cluster shuts down (no heartbeat or "stream closed" tracebacks on exit)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


WORKER_PRELOAD = ["eochips._forkserver", "distributed", "rasterio", "eochips.chips", "eochips.engine"]
"""What the LocalCluster workers' forkserver imports once, before it forks any worker."""


def _forkserver_method() -> str:
    return "forkserver" if sys.platform != "win32" else "spawn"


def _set_forkserver_preload() -> None:
    """distributed's own preload list first (it sets it once per process), then ours on top."""
    import multiprocessing

    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context()
    multiprocessing.get_context("forkserver").set_forkserver_preload(WORKER_PRELOAD)


def start_forkserver() -> None:
    """Start the LocalCluster workers' forkserver now, so that its imports (:data:`WORKER_PRELOAD`,
    about 1.5 s of GDAL, dask and eochips) run while the caller plans; :func:`dask_client`
    then finds it running and its workers start in milliseconds. ``eochips run`` calls it
    before planning when it will build on a local cluster of processes. Nothing on Windows
    (spawn). The forkserver stops with this process (:mod:`eochips._forkserver`)."""
    if _forkserver_method() != "forkserver":
        return
    from multiprocessing import forkserver

    _set_forkserver_preload()
    os.environ.update(_pre_spawn_environ())
    forkserver.ensure_running()


def _pre_spawn_environ() -> dict[str, str]:
    """The variables a distributed Nanny puts into this process's environment before it starts
    its first worker (``distributed.nanny.pre-spawn-environ``: ``MALLOC_TRIM_THRESHOLD_``, the BLAS
    thread counts, and a fixed ``PYTHONHASHSEED``), which a forkserver started by the Nanny
    inherits and passes to every worker. A forkserver started earlier (:func:`start_forkserver`)
    needs them too: without them glibc keeps freed memory and each worker's RSS was 30-40 MB
    higher on the benchmark (and string hashes differed between workers)."""
    import dask

    cfg = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    env = {k: os.environ.get(k, str(v)) for k, v in cfg.items() if v is not None}
    if env.get("PYTHONHASHSEED") in (None, "0"):
        env["PYTHONHASHSEED"] = "6640"  # what the Nanny sets (distributed.nanny.Nanny.__init__)
    return env


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, processes: bool = True) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` if given, else on a new LocalCluster (closed,
    with its worker processes, when the block ends, also on Ctrl-C).

    The LocalCluster serves no dashboard; its scheduler's HTTP endpoint (health checks) binds an
    ephemeral port on 127.0.0.1, so a busy port 8787 gives no warning. distributed logs nothing
    below CRITICAL in the driver (:func:`_quiet_distributed`). LocalCluster workers start from a
    ``forkserver`` that has already imported eochips: a worker is then ready in milliseconds
    instead of re-importing GDAL, dask and eochips.

    Raises
    ------
    RecipeError
        ``workers`` below 1, or ``scheduler`` cannot be reached (:func:`check_scheduler`).
    """
    import dask
    from distributed import Client, LocalCluster

    from .errors import RecipeError

    if workers is not None and workers < 1:
        raise RecipeError(f"--workers {workers}: give at least 1 worker process")
    method = _forkserver_method()
    # The worker's statistical profiler is off: every 10 ms it calls sys._current_frames(), which
    # on CPython 3.11 can deadlock the worker when a garbage collection starts inside it
    # (python/cpython#106883; seen here as a build hanging with the worker's threads all
    # waiting for the GIL while its main thread sits in _PyThread_CurrentFrames -> gc).
    with dask.config.set({"distributed.worker.daemon": False, "logging.distributed": "critical",
                          "distributed.worker.multiprocessing-method": method,
                          "distributed.worker.profile.enabled": False}), _quiet_distributed():
        if method == "forkserver":
            _set_forkserver_preload()  # (a forkserver already running, start_forkserver's, is used as it is)
        if scheduler:
            check_scheduler(scheduler)
            with Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT * 2}s") as client:
                yield client
            return
        n = workers or os.cpu_count() or 1
        with ExitStack() as stack:
            with _deferred_interrupts():  # a Ctrl-C while workers start is taken once they are up, then all is closed
                try:
                    failpoints.hit("engine:cluster-starting", exc=InterruptedError())
                except InterruptedError:  # tests: a SIGTERM 0.2 s into the workers' start
                    import threading

                    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
                cluster = stack.enter_context(LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None,
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}, silence_logs=50))
                client = stack.enter_context(Client(cluster))  # a failed task is re-raised here, once
            yield client


@contextmanager
def _deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT / SIGTERM while the block runs and raise ``KeyboardInterrupt`` after it: a
    cluster interrupted half-started cannot be closed cleanly (distributed then prints
    tracebacks at exit), a started one can. A second signal interrupts at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum, frame) -> None:
        got.append(signum)
        if len(got) > 1:  # a second Ctrl-C: do not wait any longer
            raise KeyboardInterrupt

    old = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if got:
        raise KeyboardInterrupt


def make_batches(tasks: list[UnitTask], workers: int, max_units: int = 128) -> list[list[UnitTask]]:
    """Group units into batches a worker builds together (:func:`eochips.chips.process_batch`).

    Units that read the same assets (:func:`eochips.chips.batch_key`; the same selected scenes)
    go together, in numeric ``(grid, row, col)`` order (row-major: a row of COG tiles is done
    before the next; ``chip_999_000`` before ``chip_1000_000``), so tiles shared by neighbouring
    units are fetched once. A group is cut into contiguous runs of at most ``max_units`` units,
    and the largest batches are split further until there are at least ``workers`` of them so
    every worker has work. Cuts fall between rows of units where they can (:func:`_cut`), so a
    cut re-reads no tile row when the COG tiles are a whole number of unit rows high, else at
    most one.
    """
    groups: dict[tuple, list[UnitTask]] = {}
    for t in sorted(tasks, key=lambda t: t.key):
        groups.setdefault(batch_key(t), []).append(t)
    batches = []
    for g in groups.values():
        batches.extend(_cut(g, -(-len(g) // max_units)))
    while len(batches) < workers:
        big = max(batches, key=len)
        if len(big) < 2:
            break
        batches.remove(big)
        batches.extend(_cut(big, 2))
    return sorted(batches, key=lambda b: b[0].key)


def _cut(units: list[UnitTask], n: int) -> list[list[UnitTask]]:
    """``units`` (one scene set, row-major) in ``n`` contiguous runs of about equal size. Each
    cut moves to the nearest boundary between two rows of units (the even row when two are as
    near: 1024 px COG tiles are two 512 px chip rows) if that keeps the run within half a run of
    its ideal size; a single row of units is cut anywhere."""
    if n <= 1 or len(units) < 2:
        return [units]
    rows = [i for i in range(1, len(units)) if units[i].key[:2] != units[i - 1].key[:2]]
    cuts = set()
    for k in range(1, n):
        ideal = round(k * len(units) / n)
        best = min(rows, key=lambda i: (abs(i - ideal), units[i].key[1] % 2, i)) if rows else ideal
        cuts.add(best if abs(best - ideal) <= len(units) / (2 * n) else ideal)
    edges = [0, *sorted(c for c in cuts if 0 < c < len(units)), len(units)]
    return [units[a:b] for a, b in zip(edges, edges[1:])]


def scene_key(task: UnitTask) -> tuple:
    """The scenes a unit reads, per source and step: ``(source, ((scene id, role, asset keys), ...) per step)``.
    Equal for units that read the same assets (like :func:`~eochips.chips.batch_key`), but free of
    hrefs, which may carry credentials that differ between machines."""
    return tuple((lay.source, tuple(tuple((s.scene_id, s.role, tuple(k for k, _ in s.hrefs)) for s in st.scenes)
                                    for st in lay.steps)) for lay in task.layers)


def shard_units(tasks: list[UnitTask], n: int) -> list[list[str]]:
    """The unit ids of each of ``n`` shards: ``result[i]`` is shard ``i``'s, in ``(grid, row, col)`` order.

    Batches as :func:`make_batches` makes them: units that read the same scenes
    (:func:`scene_key`) together, in ``(grid, row, col)`` order, cut into runs of
    ``min(SHARD_BATCH, total // n)`` units (at least 1; the last run of a group shorter). The
    batches, in the order of their first unit, are handed out whole and contiguously: a batch
    goes to shard ``floor(n * m / total)``, ``m`` the unit count before the batch's middle.
    Each shard then gets ``total / n`` units to within one batch, and (no batch being longer
    than ``total / n``) none is empty while ``total >= n``. A group of units is cut only where
    a run ends, so neighbouring units sharing COG tiles are fetched by one shard except at
    those cuts (each re-reads at most one row of tiles, like a cut of :func:`make_batches`).
    Deterministic from the tasks alone; every unit is in exactly one shard.
    """
    total = len(tasks)
    groups: dict[tuple, list[UnitTask]] = {}
    for t in sorted(tasks, key=lambda t: t.key):
        groups.setdefault(scene_key(t), []).append(t)
    cap = max(1, min(SHARD_BATCH, total // n))
    batches = sorted((g[k:k + cap] for g in groups.values() for k in range(0, len(g), cap)), key=lambda b: b[0].key)
    out: list[list[str]] = [[] for _ in range(n)]
    before = 0
    for batch in batches:
        out[min(n - 1, (n * (2 * before + len(batch))) // (2 * total))].extend(t.unit_id for t in batch)
        before += len(batch)
    order = {t.unit_id: t.key for t in tasks}
    return [sorted(ids, key=order.__getitem__) for ids in out]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def recipe_differences(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for every output-relevant field that differs between two canonical
    recipes (``description``, ``reading``, ``engine`` and the plan-size guards
    :data:`~eochips.config.models.NON_OUTPUT_KEYS` cannot change an output byte)."""
    from .config.models import NON_OUTPUT_FIELDS, NON_OUTPUT_KEYS

    a = _flat({k: v for k, v in old.items() if k not in NON_OUTPUT_FIELDS})
    b = _flat({k: v for k, v in new.items() if k not in NON_OUTPUT_FIELDS})
    keys = sorted((set(a) | set(b)) - set(NON_OUTPUT_KEYS))
    return [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


EOCHIPS_FILES = ("plan/", "state/", STATE_FILE, ".eochips.lock")
"""What eochips writes first in a dataset folder (a folder holding only these is one of its own,
e.g. a plan interrupted before ``plan/plan.json``; the lock is the writer's own, see :mod:`eochips.lock`)."""


def check_output(store: OutputStore, recipe, overwrite: bool = False) -> None:
    """Refuse to build a recipe into a folder that is not a dataset of the same recipe.

    The folder's ``plan/plan.json`` holds the recipe it was built from; if any output-relevant
    field differs, this stops (exit 2) naming the fields, unless ``overwrite``, which removes
    the old dataset first (:func:`clear_dataset`). A non-empty folder without a plan (files that
    eochips did not write) is refused even with ``overwrite``: nothing there is touched.

    Raises
    ------
    RecipeError
        The folder holds a dataset of a different recipe (or of another eochips version).
    OutputError
        The folder holds files but no eochips plan, or a ``plan/plan.json`` that is not one.
    """
    from .config import canonical
    from .errors import OutputError, RecipeError

    store.check_links()
    rel = "plan/plan.json"
    if not store.exists(rel):
        foreign = [f for f in store.list_files() if not f.startswith(EOCHIPS_FILES)]
        if foreign:
            more = f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1 else ""
            raise OutputError(f"output {store.location!r} is not empty and is not an eochips dataset (it holds "
                              f"{foreign[0]!r}{more}); give an empty or new folder")
        if overwrite:
            clear_dataset(store)
        return
    try:
        doc = read_plan_json(store)
    except OutputError:
        if not overwrite:
            raise
        clear_dataset(store)  # a damaged plan of some dataset: --overwrite replaces it
        return
    from .config.models import RECIPE_VERSION

    new = redact_obj(json.loads(json.dumps(canonical(recipe), default=str)))  # as write_plan stored it
    diffs = recipe_differences(doc.get("recipe") or {}, new) if doc.get("version") == RECIPE_VERSION else ["(a plan of another eochips version)"]
    if diffs and not overwrite:
        shown = "; ".join(diffs[:6]) + (f"; +{len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise RecipeError(f"output {store.location!r} holds a dataset built from a different recipe ({shown}); "
                          f"use another --output, or --overwrite to replace it")
    if diffs or overwrite:
        clear_dataset(store)


def read_plan_json(store: OutputStore) -> dict[str, Any]:
    """``plan/plan.json`` of ``store`` as a dict.

    Raises
    ------
    OutputError
        It cannot be read, is not valid JSON (corrupt, truncated, empty) or not a plan.
    """
    rel = "plan/plan.json"
    try:
        doc = json.loads(store.read_bytes(rel))
    except (ValueError, OSError) as exc:
        doc, why = None, (f"not valid JSON: {exc}" if isinstance(exc, ValueError) else f"unreadable: {exc}")
    else:
        why = "" if isinstance(doc, dict) and isinstance(doc.get("recipe"), dict) else "not a plan of eochips"
    if why:
        raise OutputError(f"plan file {rel} in {store.location!r} is corrupt ({why[:160]}); plan again with "
                          f"'eochips plan RECIPE -o {store.location} --overwrite', or rerun 'eochips run' with --overwrite")
    return doc


def clear_dataset(store: OutputStore) -> int:
    """Remove what eochips wrote in a dataset folder: the files of the manifest, of the states and
    of the markers, the plan, the states (the shards' too), the archives (``archive/``); other files are left alone. Returns how many."""
    files = set()
    if store.exists("checksums.sha256"):
        files |= {ln.split("  ", 1)[1] for ln in store.read_bytes("checksums.sha256").decode().splitlines() if "  " in ln}
    paths = [state_path(store)] + [state_path(store, sh) for sh in shard_states(store)]
    for path in paths:
        if not path.exists():
            continue
        try:  # a corrupt state lists nothing: the markers and the manifest still do
            st = State(path)
            try:
                for rec in st.all().values():
                    files |= set(rec["files"])
            finally:
                st.close()
        except OutputError:
            pass
    ours = [rel for rel in store.list_files() if rel.startswith(("plan/", "state/", "archive/"))]  # archive/: eochips.writers.archive
    for rel in ours:
        if rel.startswith(MARKERS + "/"):
            try:
                files |= set(read_marker(store, rel).get("files", {}))
            except OutputError:
                pass
    files |= set(ours)
    files |= {"checksums.sha256", STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm"}
    n = 0
    for rel in sorted(files):
        if store.exists(rel):
            store.remove(rel)
            n += 1
    if not store.is_local:
        for path in paths:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
    return n


def plan_identity(plan, store: OutputStore) -> dict[str, tuple]:
    """What decides a plan's output, unit by unit: ``{unit id: (status, reason code, task
    fingerprint)}`` (the fingerprint: scenes, bands, rules, layouts; :func:`eochips.chips.task_fingerprint`)."""
    from .plan import make_tasks

    prints = {t.unit_id: t.fingerprint for t in make_tasks(plan, store)}
    return {u.id: (u.status, u.code, prints.get(u.id, "")) for u in plan.units}


def share_plan(store: OutputStore, recipe, plan) -> bool:
    """Write ``plan`` into ``store`` for a shard, or check it is the plan already there (another
    shard wrote it); return True when this call wrote it. The shards take turns
    (:func:`eochips.lock.plan_lock`), so two shards started at once write one plan.

    Raises
    ------
    RecipeError
        The folder holds a dataset of a different recipe (:func:`check_output`).
    OutputError
        The folder holds the same recipe but another plan (the catalog or an input changed
        since the first shard planned): the message names how many units differ and says to
        build the stored plan with ``eochips build OUT --shard I/N``.
    """
    from .lock import plan_lock
    from .plan import load_plan, write_plan

    with plan_lock(store, "run --shard (plan)"):
        check_output(store, recipe, overwrite=False)
        if not store.exists("plan/plan.json"):
            write_plan(plan, store)
            return True
        old, new = plan_identity(load_plan(store), store), plan_identity(plan, store)
        if old == new:
            return False
        gone, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
        changed = sorted(u for u in set(old) & set(new) if old[u] != new[u])
        parts = [f"{len(changed)} unit(s) changed (e.g. {changed[0]})" if changed else "",
                 f"{len(gone)} only in the stored plan (e.g. {gone[0]})" if gone else "",
                 f"{len(added)} only in this one (e.g. {added[0]})" if added else ""]
        raise OutputError(f"output {store.location!r} holds another plan of this recipe ({'; '.join(p for p in parts if p)}): "
                          f"the catalog or an input changed since the first shard planned it, and every shard must build "
                          f"the same plan; build the stored plan with 'eochips build {store.location} --shard I/N', or "
                          f"use a new output for all shards")


def prune(store: OutputStore, state: State, planned: set[str], all_units: set[str]) -> int:
    """Remove the rows, files and markers of units that are not in the current plan at all (an
    earlier plan of the same recipe); return how many."""
    n = 0
    for uid, rec in state.all().items():
        if uid in all_units:
            continue
        for rel in rec["files"]:
            store.remove(rel)
        store.remove(marker_path(uid))
        state.delete(uid)
        n += 1
    return n


def write_timings(path: str | os.PathLike | None, command: str, rec, processing: dict[str, float] | None = None) -> dict[str, Any]:
    """Return ``{"command", "stages", "build", "main_peak_rss_mb"}`` of ``rec``
    (:func:`eochips.progress.recording`): seconds per stage key (``total``: the command so far),
    the units' processing figures (:func:`processing_figures`, empty when no unit ran) and this
    (the main) process's peak RSS in MB at the end of each stage; and write it as JSON to the
    local file ``path`` when given and ``rec`` is the outermost recording (``eochips run`` calls
    ``build``: the run writes).

    The figures never go into the dataset: ``summary.json`` and every file the manifest lists
    stay byte-identical from one finalize to the next, and a rerun that has nothing to do
    changes no file of the dataset (``--timings PATH`` of the CLI names a file of the user's)."""
    from .progress import peak_rss_mb

    stages = {k: round(v, 3) for k, v in rec.items()}
    stages["total"] = round(rec.elapsed(), 3)
    rss = {**rec.peak_rss_mb, "total": round(peak_rss_mb(), 1)}
    doc = {"command": command, "stages": stages, "build": dict(processing or {}), "main_peak_rss_mb": rss}
    if path is not None and rec.outermost:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def build(out: str | os.PathLike, *, plan=None, workers: int | None = None, scheduler: str | None = None,
          progress: bool = True, shard: Shard | None = None, timings: str | os.PathLike | None = None) -> BuildSummary:
    """Build every planned unit of the plan in ``out`` (see the module docstring), or the units
    of one shard.

    Parameters
    ----------
    out
        Output folder or URL holding ``plan/``.
    plan
        The plan in memory (``eochips run`` passes it); default: read ``plan/`` and fetch the
        scenes again where their hrefs were redacted.
    workers
        LocalCluster worker processes (default: recipe ``engine.workers``, else CPU cores).
    scheduler
        ``tcp://HOST:PORT`` of an existing Dask scheduler (default: recipe ``engine.scheduler``).
    progress
        Show a progress bar of units on stderr.
    shard
        ``(i, n)``: build only shard ``i`` (0-based) of ``n`` (:func:`shard_units`), with its own
        state and lock, leaving the dataset unfinalised (``eochips finalize`` merges the shards).
    timings
        A local file to write the build's stage seconds and processing figures to
        (:func:`write_timings`; ``BuildSummary.timings`` has them either way).

    Raises
    ------
    RecipeError
        ``shard`` is not ``(i, n)`` with ``0 <= i < n`` (:func:`check_shard`).
    OutputError
        No plan in ``out``; a plan or state file is corrupt; another process is writing the
        dataset or this shard (:mod:`eochips.lock`); the disk is full (the build stops at the
        first unit that cannot be written, its temporaries are removed, a rerun resumes).
    KeyboardInterrupt
        On Ctrl-C / SIGTERM, after the cluster is closed; finished units are kept.
    """
    from .lock import dataset_lock
    from .progress import recording, stage

    shard = None if shard is None else check_shard(shard)
    store = OutputStore(out)
    store.check_links()
    command = "build" if shard is None else f"build --shard {shard[0]}/{shard[1]}"
    with recording() as rec, dataset_lock(store, command, create=False, shard=shard):
        with stage(None, "build"):
            summary = _build(store, plan, workers, scheduler, progress, shard)
        summary.timings = write_timings(timings, command, rec, summary.processing)
        return summary


def _build(store: OutputStore, plan, workers: int | None, scheduler: str | None, progress: bool,
           shard: Shard | None = None) -> BuildSummary:
    from .plan import load_plan, make_tasks, refresh_hrefs

    t0 = time.perf_counter()
    plan = plan or refresh_hrefs(load_plan(store))
    # a local folder's temporaries are every writer's: a shard, with others running, leaves them to finalize
    sweep = shard is None or not store.is_local
    if sweep:
        store.remove_temporaries()
    eng = plan.recipe.engine
    n_workers = workers or eng.workers or os.cpu_count() or 1
    scheduler = scheduler or eng.scheduler
    tasks = make_tasks(plan, store, cpu_threads=cpu_share(n_workers))  # LocalCluster: n workers on this host
    if shard is not None:
        mine = set(shard_units(tasks, shard[1])[shard[0]])
        tasks = [t for t in tasks if t.unit_id in mine]
    prints = {t.unit_id: t.fingerprint for t in tasks}
    state = open_state(store, prints, shard)
    summary = BuildSummary(shard=shard, units=len(tasks))
    ok = False
    try:
        prune(store, state, set(prints), {u.id for u in plan.units})
        for up in plan.units if shard is None else []:  # a shard's state holds its own units only
            if up.status == "dropped":
                prev = state.get(up.id)
                if prev is None or prev["status"] != "dropped" or prev["reason"] != redact(up.reason):
                    for rel in (prev or {}).get("files", {}):
                        store.remove(rel)
                    state.record(UnitResult(up.id, "dropped", up.code, up.reason, metrics={"label_info": up.label_info}))
        todo = []
        for t in tasks:
            prev = state.get(t.unit_id)
            if prev and prev["status"] in ("kept", "dropped") and prev["fingerprint"] == t.fingerprint and files_ok(store, prev["files"]):
                summary.skipped += 1
            else:
                todo.append(t)
        failpoints.hit("build:before-first-chip")
        if todo:
            summary.processing = _run(todo, state, plan.recipe, n_workers, scheduler, progress)
        summary.ran = len(todo)
        for uid, rec in state.all().items():
            if shard is not None and uid not in prints:
                continue
            summary.retries += rec["retries"]
            if rec["status"] == "kept":
                summary.kept += 1
            elif rec["status"] == "dropped":
                summary.dropped[rec["code"]] = summary.dropped.get(rec["code"], 0) + 1
            else:
                summary.failed[uid] = rec["reason"]
        ok = True
    finally:
        try:
            if not store.is_local:
                try:
                    store.publish(state.snapshot(), STATE_FILE if shard is None else shard_state_name(shard))
                except (OSError, OutputError):
                    if ok:
                        raise
        finally:
            state.close()
            if not ok and sweep:  # a full disk, Ctrl-C: the workers are stopped; what they left half-written goes
                try:
                    store.remove_temporaries()
                except OSError:
                    pass
    summary.seconds = time.perf_counter() - t0
    return summary


def _cpu_threads(client, processes: bool) -> int:
    """Warp/write threads per worker task on a cluster: the smallest share of cores per running
    task over its hosts."""
    info = client.scheduler_info().get("workers", {})
    per_host: dict[str, int] = {}
    for w in info.values():
        per_host[w.get("host", "")] = per_host.get(w.get("host", ""), 0) + int(w.get("nthreads", 1))
    try:
        cores = client.run(os.cpu_count)
        host_cores = {info[a].get("host", ""): c or 1 for a, c in cores.items() if a in info}
    except Exception:  # noqa: BLE001 - a worker that cannot answer: assume one core per thread
        host_cores = {}
    shares = [max(1, host_cores.get(h, n) // max(1, n)) for h, n in per_host.items()]
    return min(shares) if shares else 1


def process_cpu_seconds() -> float:
    """User + system CPU seconds this process has used (run on each worker by :func:`_worker_cpu`)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _worker_cpu(client) -> dict[str, float]:
    """``{worker address: CPU seconds}`` of every worker that answers (none: empty)."""
    try:
        return dict(client.run(process_cpu_seconds))
    except Exception:  # noqa: BLE001 - a worker that cannot answer: no CPU figure rather than a failed build
        return {}


def _cores_given(client, workers_info: dict, share: int, scheduler: str | None) -> int:
    """Cores the build's tasks may use: per host, its workers' threads x warp threads per task
    (``share``), at most the host's cores (this host's for a LocalCluster)."""
    per_host: dict[str, int] = {}
    for w in workers_info.values():
        per_host[w.get("host", "")] = per_host.get(w.get("host", ""), 0) + int(w.get("nthreads", 1)) * share
    if not scheduler:
        return max(1, min(sum(per_host.values()), os.cpu_count() or 1))
    try:
        cores = client.run(os.cpu_count)
        host_cores = {workers_info[a].get("host", ""): c or 1 for a, c in cores.items() if a in workers_info}
    except Exception:  # noqa: BLE001
        host_cores = {}
    return max(1, sum(min(n, host_cores.get(h, n)) for h, n in per_host.items()))


def processing_figures(seconds: float, before: dict[str, float], after: dict[str, float], cores: int) -> dict[str, float]:
    """``{"seconds", "worker_cpu_s", "cores", "utilisation"}`` of the units' processing: its wall
    seconds, the CPU seconds the workers used meanwhile (workers present before and after),
    the cores given and ``worker_cpu_s / (seconds * cores)``."""
    cpu = sum(after[a] - before[a] for a in after if a in before)
    return {"seconds": round(seconds, 3), "worker_cpu_s": round(cpu, 3), "cores": cores,
            "utilisation": round(cpu / (seconds * cores), 4) if seconds > 0 else 0.0}


def _run(todo: list[UnitTask], state: State, recipe, workers: int, scheduler: str | None, progress: bool) -> dict[str, float]:
    """Process ``todo`` on a cluster, recording each result in ``state``; return the processing
    figures (:func:`processing_figures`). Stages (:mod:`eochips.progress`): ``cluster_start``,
    ``processing`` (submitting the batches to the last result), ``cluster_stop``."""
    from .progress import add_seconds, stage

    stopping: list[float] = []
    with ExitStack() as stack:  # callbacks run last first: the cluster's close sits between the two
        stack.callback(lambda: add_seconds("cluster_stop", time.perf_counter() - stopping[0]) if stopping else None)
        with stage(None, "cluster_start"):
            client = stack.enter_context(dask_client(workers, scheduler, recipe.engine.processes))
        stack.callback(lambda: stopping.append(time.perf_counter()))
        with stage(None, "processing"):
            return _process(client, todo, state, recipe, scheduler, progress)


def _process(client, todo: list[UnitTask], state: State, recipe, scheduler: str | None, progress: bool) -> dict[str, float]:
    from dataclasses import replace

    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    eng = recipe.engine
    info = client.scheduler_info().get("workers", {})
    n_workers = max(1, len(info))
    share = todo[0].cpu_threads if todo else 1
    if scheduler:
        share = _cpu_threads(client, eng.processes)
        todo = [replace(t, cpu_threads=share) for t in todo]
    cores = _cores_given(client, info, share, scheduler)
    t0, cpu0 = time.perf_counter(), _worker_cpu(client)
    batches = make_batches(todo, n_workers, eng.batch_chips)
    by_key = {f"units-{b[0].unit_id}-{len(b)}-{time.time_ns()}": b for b in batches}
    futures = [client.submit(process_batch, b, key=k, pure=False) for k, b in by_key.items()]
    with Progress(TextColumn("units"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not progress, transient=False) as bar:
        job = bar.add_task("units", total=len(todo))
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except KilledWorker as exc:  # the worker process died (e.g. out of memory): its units failed
                results = [UnitResult(t.unit_id, "failed", "io", f"worker died: {exc}", fingerprint=t.fingerprint)
                           for t in by_key[fut.key]]
            full = None
            for res in results:
                state.record(res)
                failpoints.hit("build:after-record")
                bar.advance(job)
                if res.status == "failed" and res.reason.startswith(DISK_FULL) and full is None:
                    full = res.reason
            fut.release()
            if full is not None:  # every next unit would fail the same way: stop, rerun resumes
                raise OutputError(full if "rerun" in full else f"{full} (finished units are kept: rerun the same command to resume)")
    return processing_figures(time.perf_counter() - t0, cpu0, _worker_cpu(client), cores)
