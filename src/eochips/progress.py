"""Progress of the long stages, reported by the library and shown by the CLI (on stderr), and
the seconds each stage took.

The stages before the unit bar (``eochips plan`` / ``run``: the STAC search of each source, the
scene selection, the label scan, the asset probe) and after it (each finalizer) call
:func:`stage`; whoever wants to see them registers a listener with :func:`listening` (the CLI
does unless ``--no-progress``). Messages carry no credential: they name stages and sources,
never hrefs.

A stage given a ``key`` also adds its seconds to every open :func:`recording`, listened to or
not: two clock reads and a ``getrusage`` per stage. ``eochips run`` / ``build`` / ``finalize``
open one; their summaries carry the figures and ``--timings PATH`` writes them
(:func:`eochips.engine.write_timings`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[str], None]
_listeners: list[Listener] = []
_recordings: list[dict[str, float]] = []


def report(text: str) -> None:
    """Send one line of progress to every listener."""
    for fn in list(_listeners):
        fn(text)


SLOW_S = 1.0
"""A stage that took at least this long (seconds) also reports its end."""


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (``getrusage``; 0 where it is unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def add_seconds(key: str, seconds: float) -> None:
    """Add ``seconds`` to ``key`` of every open :func:`recording`, and note the process's peak
    RSS at the stage's end (``Timings.peak_rss_mb``)."""
    if not _recordings:
        return
    rss = round(peak_rss_mb(), 1)
    for rec in _recordings:
        rec[key] = rec.get(key, 0.0) + seconds
        rec.peak_rss_mb[key] = rss


@contextmanager
def stage(text: str | None, key: str | None = None) -> Iterator[None]:
    """Report ``text ...`` when a stage starts and, after at least :data:`SLOW_S` seconds,
    ``text: done in S s`` when it ends (not on an error: the error says what happened); with
    ``key``, add the stage's seconds to the open recordings (also on an error). ``text`` None:
    record only, report nothing."""
    t0 = time.perf_counter()
    if _listeners and text:
        report(f"{text} ...")
    try:
        yield
    finally:
        took = time.perf_counter() - t0
        if key:
            add_seconds(key, took)
    if _listeners and text and took >= SLOW_S:
        report(f"{text}: done in {took:.1f} s")


class Timings(dict):
    """``{stage key: seconds}`` of one :func:`recording`; ``outermost``: no other recording was
    open when it began (the one that writes them, when commands nest: ``run`` calls ``build``);
    ``peak_rss_mb``: ``{stage key: this process's peak RSS (MB) when the stage (last) ended}``."""

    def __init__(self, outermost: bool):
        super().__init__()
        self.outermost = outermost
        self.started = time.perf_counter()
        self.peak_rss_mb: dict[str, float] = {}

    def elapsed(self) -> float:
        """Seconds since the recording began."""
        return time.perf_counter() - self.started


@contextmanager
def recording() -> Iterator[Timings]:
    """Collect ``{stage key: seconds}`` of the keyed stages run inside the block (a key met
    twice sums), in the order they first ran; at the end ``"total"``: the block's own seconds."""
    rec = Timings(outermost=not _recordings)
    _recordings.append(rec)
    try:
        yield rec
    finally:
        rec["total"] = rec.elapsed()
        _recordings.remove(rec)


@contextmanager
def listening(fn: Listener) -> Iterator[None]:
    """Call ``fn(line)`` for every progress line reported inside the ``with`` block."""
    _listeners.append(fn)
    try:
        yield
    finally:
        _listeners.remove(fn)
