"""Progress of the long stages, reported by the library and shown by the CLI (on stderr).

The stages before the unit bar (``eochips plan`` / ``run``: the STAC search of each source, the
scene selection, the label scan, the asset probe) and after it (each finalizer) call
:func:`stage`; whoever wants to see them registers a listener with :func:`listening` (the CLI
does unless ``--no-progress``). With no listener a stage costs one clock read. Messages carry
no credential: they name stages and sources, never hrefs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[str], None]
_listeners: list[Listener] = []


def report(text: str) -> None:
    """Send one line of progress to every listener."""
    for fn in list(_listeners):
        fn(text)


SLOW_S = 1.0
"""A stage that took at least this long (seconds) also reports its end."""


@contextmanager
def stage(text: str) -> Iterator[None]:
    """Report ``text ...`` when a stage starts and, after at least :data:`SLOW_S` seconds,
    ``text: done in S s`` when it ends (not on an error: the error says what happened)."""
    if not _listeners:
        yield
        return
    report(f"{text} ...")
    t0 = time.perf_counter()
    yield
    took = time.perf_counter() - t0
    if took >= SLOW_S:
        report(f"{text}: done in {took:.1f} s")


@contextmanager
def listening(fn: Listener) -> Iterator[None]:
    """Call ``fn(line)`` for every progress line reported inside the ``with`` block."""
    _listeners.append(fn)
    try:
        yield
    finally:
        _listeners.remove(fn)
