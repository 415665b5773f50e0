"""Preloaded into the LocalCluster's forkserver (:func:`eochips.engine.dask_client`).

- Its worker processes ignore SIGINT. A terminal's Ctrl-C reaches the whole process group; the
  driver alone handles it (one ``interrupted`` line, exit 130) and closes the cluster, which
  stops the workers, so no worker prints a ``KeyboardInterrupt`` traceback. (The forkserver
  restores, in each child, the handlers it found after its preloads: this one.)
- Nothing outlives the driver (Linux): the forkserver asks for SIGTERM when its parent, the
  driver, dies, and each process it forks asks for SIGKILL when the forkserver dies
  (``prctl(PR_SET_PDEATHSIG)``), so a driver killed with SIGKILL leaves no worker behind.
"""

import os
import signal
import sys

signal.signal(signal.SIGINT, signal.SIG_IGN)

if sys.platform.startswith("linux"):
    import ctypes

    _PR_SET_PDEATHSIG = 1
    _libc = ctypes.CDLL(None, use_errno=True)

    def _die_with_parent(sig: int) -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    _die_with_parent(signal.SIGTERM)
    os.register_at_fork(after_in_child=lambda: _die_with_parent(signal.SIGKILL))
