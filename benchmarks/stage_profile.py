"""Profile one ``eochips run`` of a benchmark case: seconds per stage and the functions that take the time.

    python benchmarks/stage_profile.py --case seed-loopback [--cache DIR] [--workers 2] [--rate 50] [--top 25]

Starts the COG server of ``run.py`` on the case's workload (``--cache``, built as ``run.py`` builds
it), then runs ``eochips run RECIPE --workers N --no-progress`` once under py-spy
(``py-spy record --subprocesses --format raw``: every process of the run, main and workers,
sampled ``--rate`` times a second, idle threads left out) and writes

- ``benchmarks/results/profile.json``: the wall seconds, the stage table eochips recorded
  (``eochips run --timings FILE``: seconds per stage and its share of the run's wall, the main process's
  peak RSS at the end of each stage, and the build's worker CPU seconds, cores and
  utilisation), and py-spy's top functions: per process role (the
  main process; the workers and their forkserver) the functions with the most samples on the
  top of the stack (self) and anywhere on it (inclusive), in samples and seconds;
- ``benchmarks/results/profile.md``: the same as tables.

py-spy's sampling slows the processes a little; ``eochips run ... --timings FILE`` gives the stage
table of a run without it (and ``run.py``'s figures are measured without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402 - the harness's COG server and paths
import workload  # noqa: E402


def py_spy() -> str:
    """The py-spy next to this Python (the ``bench`` extra installs it), else the one on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else (shutil.which("py-spy") or "py-spy")


def record(recipe: str, out: Path, workers: int, rate: int, raw: Path, timings: Path, env: dict) -> float:
    """Run ``eochips run --timings TIMINGS`` under py-spy; return its wall seconds."""
    cmd = [py_spy(), "record", "--subprocesses", "-r", str(rate), "-f", "raw", "-o", str(raw), "--",
           bench.EOCHIPS, "run", recipe, "--output", str(out), "--workers", str(workers), "--no-progress",
           "--timings", str(timings)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"eochips run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def parse_raw(raw: Path) -> list[tuple[str, list[str], int]]:
    """py-spy's raw lines ``process PID:"CMD";[process PID:"CMD";...]frame;frame... COUNT`` (a
    child's stack starts with its parents' process entries) as ``(the sampled process's CMD, its
    frames, count)``."""
    stacks = []
    for line in raw.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        parts = head.split(";")
        last = max(i for i, p in enumerate(parts) if p.startswith("process ")) if parts[0].startswith("process ") else -1
        cmd = parts[last].split(":", 1)[1].strip('"') if last >= 0 else ""
        stacks.append((cmd, parts[last + 1:], int(count)))
    return stacks


def role(cmd: str) -> str:
    """``workers`` for the processes multiprocessing started (forkserver, nannies' workers), else ``main``."""
    return "workers" if "multiprocessing" in cmd else "main"


WAITS = {"_worker (concurrent/futures/thread.py)", "select (selectors.py)", "wait (threading.py)",
         "_recv (multiprocessing/connection.py)", "_wait_for_tstate_lock (threading.py)", "accept (socket.py)"}
"""Leaves where a thread waits (a queue, a selector, a lock, a pipe): py-spy samples them
unless it sees the thread idle in a system call; counted as ``waiting``, not as a function."""


def function_name(frame: str) -> str:
    """``Cls.func (path/to/file.py:LINE)`` -> ``Cls.func (to/file.py)``: one row per function,
    not per line (eochips' own files keep their path from ``eochips/``)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[parts.index("eochips"):] if "eochips" in parts else parts[-3:])
    return f"{name} ({short})" if path else name


def _is_wait(name: str) -> bool:
    func, _, where = name.partition(" (")
    return f"{func.rsplit('.', 1)[-1]} ({where.split('/', 1)[-1] if where.count('/') > 1 else where}" in WAITS or \
        f"{func.rsplit('.', 1)[-1]} ({where}" in WAITS


def top_functions(stacks, rate: int, top: int) -> dict[str, dict]:
    """Per role: thread-samples (a sample per thread: seconds summed over threads, not CPU
    seconds), those waiting, the ``top`` functions by self samples (waits left out) and
    eochips' own functions by inclusive samples (the function anywhere on the stack)."""
    out: dict[str, dict] = {}
    for r in ("main", "workers"):
        own = [(f, n) for cmd, f, n in stacks if role(cmd) == r]
        total = sum(n for _, n in own)
        self_c: Counter = Counter()
        incl: Counter = Counter()
        waiting = 0
        for frames, n in own:
            names = [function_name(f) for f in frames]
            if names and _is_wait(names[-1]):
                waiting += n
            elif names:
                self_c[names[-1]] += n
            for name in {x for x in names if "(eochips/" in x}:
                incl[name] += n
        rows = lambda c: [{"function": k, "samples": v, "seconds": round(v / rate, 2),  # noqa: E731
                           "share": round(v / total, 4) if total else 0.0} for k, v in c.most_common(top)]
        out[r] = {"samples": total, "seconds": round(total / rate, 2), "waiting_samples": waiting,
                  "self": rows(self_c), "inclusive": rows(incl)}
    return out


def stage_table(timings: dict, wall: float) -> list[dict]:
    """The recorded stages with their share of the run's wall (the process's own start and
    imports are ``startup``: wall minus the recorded total)."""
    st = dict(timings["stages"])
    rss = timings.get("main_peak_rss_mb", {})
    rows = [{"stage": "startup (interpreter, imports, recipe)", "seconds": round(wall - st["total"], 3)}]
    rows += [{"stage": k, "seconds": v, "main_peak_rss_mb": rss.get(k)} for k, v in st.items()]
    rows.append({"stage": "wall (measured here)", "seconds": round(wall, 3)})
    for r in rows:
        r["share"] = round(r["seconds"] / wall, 4) if wall else 0.0
    return rows


def markdown(doc: dict) -> str:
    b = doc["build"]
    md = [f"# eochips run, {doc['case']}, {doc['workers']} workers (py-spy {doc['rate']} Hz)\n",
          f"{doc['chips']} chips, wall {doc['wall_s']} s. Build processing: {b.get('seconds')} s wall, "
          f"{b.get('worker_cpu_s')} worker CPU-s on {b.get('cores')} cores, utilisation {b.get('utilisation')}.\n",
          "Stages nest: `plan` holds `search:*`, `selection:*`, `label_scan`, `asset_probe`; `build` holds "
          "`cluster_start`, `processing`, `cluster_stop`; `finalize` holds `finalize:*`.\n",
          "`main peak RSS`: the main process's peak resident memory (MB) when the stage ended.\n",
          "| stage | seconds | share of wall | main peak RSS MB |", "|---|---|---|---|"]
    md += [f"| {r['stage']} | {r['seconds']:.3f} | {r['share']:.1%} | {r.get('main_peak_rss_mb') or ''} |"
           for r in doc["stages"]]
    for r, t in doc["py_spy"].items():
        for kind in ("self", "inclusive"):
            md += ["", f"## {r}: top functions by {kind} samples ({t['samples']} thread-samples, "
                   f"{t['seconds']} thread-seconds, {t['waiting_samples']} of them waiting)", "",
                   "| function | samples | seconds | share |", "|---|---|---|---|"]
            md += [f"| `{x['function']}` | {x['samples']} | {x['seconds']} | {x['share']:.1%} |" for x in t[kind]]
    return "\n".join(md) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="profile one eochips run of a benchmark case")
    ap.add_argument("--case", default="seed-loopback", choices=bench.CASES)
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=int, default=50)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    workload.build_base(args.cache)
    server = bench.Server(args.cache)
    scratch = Path(tempfile.mkdtemp(prefix="eochips-profile-"))
    try:
        wl = workload.build(args.cache, server.urls["loopback"], server.urls["proxy"])
        out, raw, tfile = scratch / "out", scratch / "py-spy.txt", scratch / "timings.json"
        env = dict(os.environ, EOCHIPS_STATE_DIR=str(scratch / "state"))
        wall = record(wl["recipes"][args.case], out, args.workers, args.rate, raw, tfile, env)
        timings = json.loads(tfile.read_text())
        doc = {"case": args.case, "workers": args.workers, "rate": args.rate, "wall_s": round(wall, 3),
               "chips": len(wl["chips"][args.case.split("-")[0]]), "stages": stage_table(timings, wall),
               "build": timings["build"], "py_spy": top_functions(parse_raw(raw), args.rate, args.top)}
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "profile.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.results / "profile.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
