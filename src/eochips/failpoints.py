"""Named failure points, for crash and disk-full tests (off unless the environment says so).

``EOCHIPS_FAILPOINT=NAME[@N]`` makes the N-th (default first) time the process reaches
``hit(NAME)`` fail: with ``SIGKILL`` of the whole process (a crash: no cleanup, no finally
blocks), or by raising the exception the call site passes (e.g. ``ENOSPC`` for a simulated
full disk). Points in eochips:

- ``plan:before-write``, ``plan:after-write``
- ``build:before-first-chip``, ``build:after-record`` (after a chip's result is recorded)
- ``chip:after-image`` (a chip's image file is published, its other files are not)
- ``writer:before-publish`` (a complete temporary file exists, not yet renamed)
- ``writer:write`` (raises ENOSPC while writing a file)
- ``finalize:after-index``, ``finalize:before-manifest``

With ``EOCHIPS_FAILPOINT_WAIT=PATH`` the point pauses instead, until ``PATH`` exists (it
creates ``PATH.waiting`` when it gets there; a test holds a run there, e.g. to start a second run into the same folder).
"""

from __future__ import annotations

import os
import signal
import threading

_counts: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str, exc: BaseException | None = None) -> None:
    """Fail here if ``$EOCHIPS_FAILPOINT`` names this point (see module docstring)."""
    spec = os.environ.get("EOCHIPS_FAILPOINT")
    if not spec:
        return
    want, _, nth = spec.partition("@")
    if want != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        n = _counts[name]
    if n != int(nth or 1):
        return
    wait = os.environ.get("EOCHIPS_FAILPOINT_WAIT")
    if wait:
        import time

        open(f"{wait}.waiting", "w").close()  # tells the test the point is reached
        while not os.path.exists(wait):
            time.sleep(0.05)
        return
    if exc is not None:
        raise exc
    os.kill(os.getpid(), signal.SIGKILL)
