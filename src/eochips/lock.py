"""One writer per dataset: an exclusive lock on the output location (or one lock per shard).

Every command that writes a dataset (``plan``, ``build``, ``finalize``, ``run``) holds the lock
of its output for as long as it writes; a second command on the same output stops at once with
``error: output ... is being written by pid N on HOST since ...`` (exit 2), before touching
anything. In one process the lock is re-entrant (``run`` holds it over ``build`` and
``finalize``).

Shards (``--shard I/N``, array jobs): shard ``I`` of ``N`` holds its own lock,
``.eochips.lock.shard-I-of-N``, so the shards of one output run at the same time while a second
copy of one shard stops at once. The dataset lock and the shard locks exclude each other: a
writer takes its own lock first, then looks at the others' (an unsharded ``run``/``build``, a
``finalize`` or a ``plan`` stops while any shard runs; a shard stops while such a writer runs,
or while a shard of another count ``M`` runs). Taking one's own lock before looking means two
writers started at the same moment cannot both pass. The shards write the plan one at a time
under :func:`plan_lock`, which waits (up to :data:`PLAN_WAIT` seconds) instead of stopping.

- Local folder: ``.eochips.lock`` in the folder, holding the holder's pid, host, start time and
  command, locked with ``fcntl.flock``. The kernel drops the lock when its holder dies (crash,
  SIGKILL), so a stale lock file never blocks: the next run takes it over. The file is removed
  when the holder finishes. Another writer's lock is looked at with a non-blocking shared
  ``flock`` (held only by a live holder's exclusive lock).
- Object storage: a lease object ``.eochips.lock`` at the prefix (the same JSON plus an expiry,
  :data:`LEASE_SECONDS` ahead), renewed by a background thread while held, deleted at the end.
  A lease that expired, or whose holder was this host and whose pid is gone, is taken over.
  Object stores offer no compare-and-swap here: after writing its lease the taker reads it
  back once more after a short pause and gives up if another writer's lease replaced it, which
  closes all but a sub-second window between two runs started at the same moment.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from .errors import OutputError

LOCK_FILE = ".eochips.lock"
PLAN_LOCK = f"{LOCK_FILE}.plan"
LEASE_SECONDS = 600.0
PLAN_WAIT = 300.0
"""Seconds a shard waits for another shard writing the plan (:func:`plan_lock`)."""
_SHARD_LOCK = re.compile(re.escape(LOCK_FILE) + r"\.shard-(\d+)-of-(\d+)$")
_held: dict[str, int] = {}
_guard = threading.Lock()

__all__ = ["LOCK_FILE", "PLAN_LOCK", "LockBusy", "dataset_lock", "plan_lock", "shard_lock_name"]


class LockBusy(OutputError):
    """Another process holds the lock (the message names it)."""


def shard_lock_name(shard: tuple[int, int]) -> str:
    """The lock file of shard ``(i, n)``: ``.eochips.lock.shard-{i}-of-{n}``."""
    return f"{LOCK_FILE}.shard-{shard[0]}-of-{shard[1]}"


def _info(command: str, token: str = "") -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "token": token,
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "expires": time.time() + LEASE_SECONDS}


def _busy(store, doc: dict[str, Any] | None, name: str = LOCK_FILE) -> LockBusy:
    if not doc:
        who = "another eochips process"
    else:
        who = f"pid {doc.get('pid')} on {doc.get('host')} since {doc.get('since')} (eochips {doc.get('command')})"
    m = _SHARD_LOCK.match(name)
    what = f"shard {m[1]}/{m[2]} of output" if m else "output"
    return LockBusy(f"{what} {store.location!r} is being written by {who}; wait for it to finish, or stop it "
                    f"(its lock: {name})")


@contextmanager
def dataset_lock(store, command: str = "", create: bool = True, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the exclusive write lock of ``store``'s dataset, or of its shard ``shard = (i, n)``,
    for the block (see the module docstring).

    ``create=False`` (``build``, ``finalize``): a local folder that does not exist is not created
    for the lock; the block runs unlocked and finds no plan there.

    Raises
    ------
    LockBusy
        Another process holds the lock, or (see the module docstring) a lock this one excludes:
        the message names its pid, host and start time.
    OutputError
        The lock cannot be created (the folder is not writable).
    """
    name = LOCK_FILE if shard is None else shard_lock_name(shard)
    key = f"{store.location}#{name}"
    with _guard:
        if _held.get(key):
            _held[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    if store.is_local and not create and not store.root.is_dir():
        release = _nothing
    else:
        release = _lock_local(store, command, name) if store.is_local else _lock_remote(store, command, name)
        try:
            _check_others(store, shard)
        except BaseException:
            release()
            raise
    with _guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            _held.pop(key, None)
        release()


@contextmanager
def plan_lock(store, command: str = "plan", wait: float | None = None) -> Iterator[None]:
    """Hold the plan-writing lock of ``store`` (``.eochips.lock.plan``) for the block, waiting up
    to ``wait`` seconds (default :data:`PLAN_WAIT`) for another shard that holds it.

    Raises
    ------
    LockBusy
        Still held by another process after ``wait`` seconds.
    """
    wait = PLAN_WAIT if wait is None else wait
    if store.is_local:
        release = _lock_local(store, command, PLAN_LOCK, wait)
    else:
        deadline = time.monotonic() + wait
        while True:
            try:
                release = _lock_remote(store, command, PLAN_LOCK)
                break
            except LockBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    try:
        yield
    finally:
        release()


def _nothing() -> None:
    pass


def _read_doc(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _lock_local(store, command: str, name: str = LOCK_FILE, wait: float = 0.0) -> Callable[[], None]:
    import fcntl

    path = store.root / name
    store.ensure()  # a folder that can be written (its own one-line errors)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"output folder {str(store.root)!r} is not writable: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                doc = _read_doc(os.read(fd, 4096).decode("utf-8", "replace"))
            finally:
                os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise _busy(store, doc, name) from None
        # the holder we waited for may have removed the file after we opened it: lock the live file
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_info(command)).encode())
    except OSError:
        pass  # a full disk: the flock alone still excludes; the holder is then unnamed

    def release() -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)

    return release


def _held_local(path) -> dict[str, Any] | None:
    """The holder's record when another process holds the lock file ``path`` (``{}`` if it is
    unnamed), else None. A shared non-blocking ``flock``: two lookers do not exclude each other."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no such lock: nobody holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_doc(os.read(fd, 4096).decode("utf-8", "replace")) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _check_others(store, shard: tuple[int, int] | None) -> None:
    """Raise :class:`LockBusy` when a lock that excludes ours is held (see the module docstring)."""
    for name, holder in _other_locks(store):
        m = _SHARD_LOCK.match(name)
        if shard is None and m:
            raise _busy(store, holder, name)
        if shard is not None and name == LOCK_FILE:
            raise _busy(store, holder, name)
        if shard is not None and m and int(m[2]) != shard[1]:
            raise LockBusy(f"shard {m[1]}/{m[2]} is running on output {store.location!r} ({_busy(store, holder, name)}); "
                           f"every shard of one output needs the same count: --shard {shard[0]}/{m[2]}, or wait for it")


def _other_locks(store) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(lock name, holder)`` of every dataset or shard lock of ``store`` that a live process holds."""
    if store.is_local:
        for p in sorted(store.root.glob(f"{LOCK_FILE}*")):
            if p.name == LOCK_FILE or _SHARD_LOCK.match(p.name):
                holder = _held_local(p)
                if holder is not None:
                    yield p.name, holder
        return
    try:
        found = store.fs.glob(store._remote(LOCK_FILE) + "*")
    except Exception as exc:  # noqa: BLE001 - any object-store failure: one line
        raise OutputError(f"the locks of {store.location!r} cannot be listed: {type(exc).__name__}: {exc}") from None
    for path in sorted(found):
        name = path.rsplit("/", 1)[-1]
        if name != LOCK_FILE and not _SHARD_LOCK.match(name):
            continue
        doc = _remote_doc(store, store._remote(name))
        if doc is not None and not _stale(doc) and doc.get("pid_token") != _process_token:
            yield name, doc


_process_token = uuid.uuid4().hex  # this process's leases carry it: its own locks are not "another" holder


def _remote_doc(store, remote: str) -> dict[str, Any] | None:
    try:
        return _read_doc(store.fs.cat_file(remote).decode("utf-8", "replace"))
    except FileNotFoundError:
        return None


def _stale(doc: dict[str, Any]) -> bool:
    if float(doc.get("expires") or 0) < time.time():
        return True
    if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
        from .writers.store import _alive

        return not _alive(doc["pid"])
    return False


def _lock_remote(store, command: str, name: str = LOCK_FILE) -> Callable[[], None]:
    token = uuid.uuid4().hex
    remote = store._remote(name)

    def write(doc: dict[str, Any]) -> None:
        store.fs.pipe_file(remote, json.dumps(doc).encode())

    try:
        doc = _remote_doc(store, remote)
        if doc is not None and doc.get("token") != token and not _stale(doc):
            raise _busy(store, doc, name)
        mine = dict(_info(command, token), pid_token=_process_token)
        write(mine)
        time.sleep(0.2)
        doc = _remote_doc(store, remote)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any object-store failure: one line
        raise OutputError(f"the lock {name} of {store.location!r} cannot be written: {type(exc).__name__}: {exc}") from None
    if doc is None or doc.get("token") != token:
        raise _busy(store, doc, name)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 4):
            try:
                write(dict(mine, expires=time.time() + LEASE_SECONDS))
            except Exception:  # noqa: BLE001 - retried at the next beat
                print(f"warning: could not renew the lock of {store.location}", file=sys.stderr)

    beat = threading.Thread(target=renew, name="eochips-lease", daemon=True)
    beat.start()

    def release() -> None:
        stop.set()
        beat.join(5)
        try:
            doc = _remote_doc(store, remote)
            if doc is not None and doc.get("token") == token:
                store.fs.rm_file(remote)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            pass

    return release
