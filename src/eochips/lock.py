"""One writer per dataset: an exclusive lock on the output location.

Every command that writes a dataset (``plan``, ``build``, ``finalize``, ``run``) holds the lock
of its output for as long as it writes; a second command on the same output stops at once with
``error: output ... is being written by pid N on HOST since ...`` (exit 2), before touching
anything. In one process the lock is re-entrant (``run`` holds it over ``build`` and
``finalize``).

- Local folder: ``.eochips.lock`` in the folder, holding the holder's pid, host, start time and
  command, locked with ``fcntl.flock``. The kernel drops the lock when its holder dies (crash,
  SIGKILL), so a stale lock file never blocks: the next run takes it over. The file is removed
  when the holder finishes.
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
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from .errors import OutputError

LOCK_FILE = ".eochips.lock"
LEASE_SECONDS = 600.0
_held: dict[str, int] = {}
_guard = threading.Lock()

__all__ = ["LOCK_FILE", "dataset_lock"]


def _info(command: str, token: str = "") -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "token": token,
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "expires": time.time() + LEASE_SECONDS}


def _busy(store, doc: dict[str, Any] | None) -> OutputError:
    if not doc:
        who = "another eochips process"
    else:
        who = f"pid {doc.get('pid')} on {doc.get('host')} since {doc.get('since')} (eochips {doc.get('command')})"
    return OutputError(f"output {store.location!r} is being written by {who}; wait for it to finish, or stop it "
                       f"(its lock: {LOCK_FILE})")


@contextmanager
def dataset_lock(store, command: str = "", create: bool = True) -> Iterator[None]:
    """Hold the exclusive write lock of ``store``'s dataset for the block (see the module docstring).

    ``create=False`` (``build``, ``finalize``): a local folder that does not exist is not created
    for the lock; the block runs unlocked and finds no plan there.

    Raises
    ------
    OutputError
        Another process holds the lock (the message names its pid, host and start time), or
        the lock cannot be created (the folder is not writable).
    """
    key = store.location
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
        release = _lock_local(store, command) if store.is_local else _lock_remote(store, command)
    with _guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            _held.pop(key, None)
        release()


def _nothing() -> None:
    pass


def _read_doc(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _lock_local(store, command: str):
    import fcntl

    path = store.root / LOCK_FILE
    store.ensure()  # a folder that can be written (its own one-line errors)
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
            raise _busy(store, doc) from None
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


def _lock_remote(store, command: str):
    token = uuid.uuid4().hex
    remote = store._remote(LOCK_FILE)

    def current() -> dict[str, Any] | None:
        try:
            return _read_doc(store.fs.cat_file(remote).decode("utf-8", "replace"))
        except FileNotFoundError:
            return None

    def stale(doc: dict[str, Any]) -> bool:
        if float(doc.get("expires") or 0) < time.time():
            return True
        if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
            from .writers.store import _alive

            return not _alive(doc["pid"])
        return False

    def write(doc: dict[str, Any]) -> None:
        store.fs.pipe_file(remote, json.dumps(doc).encode())

    try:
        doc = current()
        if doc is not None and doc.get("token") != token and not stale(doc):
            raise _busy(store, doc)
        mine = _info(command, token)
        write(mine)
        time.sleep(0.2)
        doc = current()
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any object-store failure: one line
        raise OutputError(f"the lock {LOCK_FILE} of {store.location!r} cannot be written: {type(exc).__name__}: {exc}") from None
    if doc is None or doc.get("token") != token:
        raise _busy(store, doc)
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
            doc = current()
            if doc is not None and doc.get("token") == token:
                store.fs.rm_file(remote)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            pass

    return release
