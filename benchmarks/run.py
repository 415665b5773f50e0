"""Run the benchmark: every contender on every case, interleaved, and write the results.

    python benchmarks/run.py [--runs 3] [--cache DIR] [--only CASE ...]

Cases are ``{density}-{network}``: seed, medium and dense on loopback, seed and dense through
the latency-and-bandwidth-limited port (see ``server.py``). Each run of a contender is its own
process tree; the harness samples the RSS of every process in it (psutil, every 50 ms), reads
its CPU time from ``getrusage(RUSAGE_CHILDREN)`` and asks the COG server how many bytes it sent.
Run order is rotated each round so no contender always runs first or last.

Writes ``benchmarks/results/latest.json`` (one object per contender and case, plus every run)
and ``benchmarks/results/latest.md`` (the table), and puts the table into
``benchmarks/README.md`` between the ``<!-- results -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workload  # noqa: E402

PY = sys.executable
EOCHIPS = str(Path(sys.executable).with_name("eochips"))
CORES = os.cpu_count() or 1

CASES = ["seed-loopback", "medium-loopback", "dense-loopback", "seed-proxy", "dense-proxy"]
CONTENDERS = ["eochips-2w", "torchgeo", "torchgeo-files", "rslearn", "seed", "odc-stac", "limit"]
# eochips-1w (one worker) runs on request only (--contenders): the 2-vs-1-worker target gave way
# to CPU-seconds per chip and worker utilisation during the build (issue 15)
KNOWN = ["eochips-1w"] + CONTENDERS
# the peers users pick instead of a notebook, each a script of its own (they import torch):
# name -> (script, arguments before the common ones). Each prints one JSON line
# {"chips", "kept", "files", "seconds"} and takes --workers (as many as eochips-2w's).
PEERS = {"torchgeo": ("torchgeo_contender.py", ["tensors"]), "torchgeo-files": ("torchgeo_contender.py", ["files"]),
         "rslearn": ("rslearn_contender.py", [])}
PEER_WORKERS = 2
# rslearn builds one window after the other at a cost per chip that does not fall with density
# (about 2 CPU-s per chip here): on the first --peer-chips chips of a case, to keep `make bench`
# under 30 minutes. TorchGeo gets faster with density (GDAL's block cache), so it builds them all.
CAPPED = {"rslearn"}
LOOPBACK_ONLY_PEERS = {"torchgeo-files"}  # the second TorchGeo row (files) is a CPU/writing question
PEER_TIMEOUT_S = 900.0
QUICK_PEER_CHIPS = 20  # a hung DataLoader worker (a CURL timeout per request) must not stall the run
# the 1-vs-2-worker comparison is a CPU question; the seed method and odc-stac fetch whole
# granules (their proxy rows took 204 of the 1960 s of the issue-15 run): loopback only
LOOPBACK_ONLY = {"eochips-1w", "seed", "odc-stac"}
# The seed method and odc-stac decode and warp every granule whole whatever its chips (about
# 28 s per granule here). To keep `make bench` under 20 minutes they run --heavy-runs times
# (default 1) per case, and in the 10-granule seed-density cases on the first
# --heavy-granules granules (default 2, 5 chips each): their chips/s is a per-granule rate.
# `--heavy-runs 3 --heavy-granules 10` is the full protocol (about an hour).
HEAVY = {"seed", "odc-stac"}
PROTOCOL = {"heavy_granules": 2, "peer_chips": 50}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path):
        self.port, self.slow = free_port(), free_port()
        self.proc = subprocess.Popen([PY, str(HERE / "server.py"), str(root), "--port", str(self.port),
                                      "--slow-port", str(self.slow)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.urls = {"loopback": f"http://127.0.0.1:{self.port}", "proxy": f"http://127.0.0.1:{self.slow}"}

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.urls["loopback"] + "/_reset", method="POST")).read()

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far: it shares the cores."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(self.urls["loopback"] + "/_stats").read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def by_contender(records: list[dict], names) -> list[tuple[str, list[dict]]]:
    """The records of each contender that ran, in the order of ``names``."""
    return [(c, rs) for c in names if (rs := [r for r in records if r["contender"] == c])]


def targets_md(targets: list[dict]) -> str:
    """The markdown table of a benchmark's targets (``target``, ``measured``, ``met``); "" without any."""
    if not targets:
        return ""
    return "\n| target | measured | |\n|---|---|---|\n" + "".join(
        f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |\n" for t in targets)


class TimedOut(RuntimeError):
    """A contender's run took longer than the harness allows (its process tree was killed)."""


def _kill_tree(root: psutil.Process) -> None:
    procs = [root] + root.children(recursive=True)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def measure(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``cmd``; return wall seconds, CPU seconds of the whole process tree, and peak RSS
    (largest process, largest sum over the tree, and per process: every 50 ms), and the peak
    PSS summed over the tree (shared pages counted once: every 0.5 s). After ``timeout``
    seconds the tree is killed and :class:`TimedOut` raised."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # stdout/stderr go to files, not pipes: a contender that logs more than a pipe holds (64 KB:
    # rslearn's logs, tqdm bars) would block on a pipe nobody reads until it exits
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=env)
    root = psutil.Process(proc.pid)
    peak_sum, peak_pss, peaks, cpu_seen, n = 0, 0, {}, {}, 0
    while proc.poll() is None:
        if timeout is not None and time.perf_counter() - t0 > timeout:
            _kill_tree(root)
            proc.wait()
            out_f.close(), err_f.close()
            raise TimedOut(f"{' '.join(cmd[:3])} ... killed after {timeout:.0f} s")
        total = total_pss = 0
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        full = n % 10 == 0  # PSS needs /proc/PID/smaps_rollup, costly: every 0.5 s only
        for p in procs:
            try:
                with p.oneshot():
                    mem = p.memory_full_info() if full else p.memory_info()
                    ct = p.cpu_times()
            except psutil.Error:
                continue
            total += mem.rss
            total_pss += getattr(mem, "pss", mem.rss)
            peaks[p.pid] = max(peaks.get(p.pid, 0), mem.rss)
            cpu_seen[p.pid] = ct.user + ct.system
        peak_sum = max(peak_sum, total)
        if full:
            peak_pss = max(peak_pss, total_pss)
        n += 1
        time.sleep(0.05)
    proc.wait()
    wall = time.perf_counter() - t0
    out_f.seek(0), err_f.seek(0)
    out, err = out_f.read(), err_f.read()
    out_f.close(), err_f.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the whole tree: waited-for children's rusage, or (when grandchildren are reaped by
    # a forkserver, whose rusage we never see) the sum of the last samples, whichever is larger
    cpu = max((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), sum(cpu_seen.values()))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": max(peaks.values(), default=0) / 2**20,
            "peak_rss_sum_mb": peak_sum / 2**20, "peak_pss_sum_mb": peak_pss / 2**20, "rss_by_process_mb": sorted((v / 2**20 for v in peaks.values()), reverse=True),
            "root_rss_mb": peaks.get(proc.pid, 0) / 2**20, "stdout": out}


def run_one(contender: str, case: str, wl: dict, scratch: Path) -> dict:
    density, net = case.split("-")
    out = scratch / f"{contender}-{case}"
    shutil.rmtree(out, ignore_errors=True)
    chips = wl["chips"][density]
    if contender.startswith("eochips"):
        workers = contender.split("-")[1].rstrip("w")
        timings = scratch / f"timings-{contender}-{case}.json"
        cmd = [EOCHIPS, "run", wl["recipes"][case], "--output", str(out), "--workers", workers, "--no-progress",
               "--timings", str(timings)]
        env = dict(os.environ, EOCHIPS_STATE_DIR=str(scratch / "state"))
        m = measure(cmd, env)
        summary = json.loads((out / "summary.json").read_text())
        m["kept"] = summary.get("kept", summary.get("chips_kept"))
        m["chips"] = len(chips)
        # per worker: the worker processes are every process but the main one and the nannies
        m["worker_rss_mb"] = max((v for v in m["rss_by_process_mb"] if v != m["root_rss_mb"]), default=0.0)
        m["build"], m["stages"] = build_timings(timings)
    elif contender in PEERS:
        script, pre = PEERS[contender]
        wl_path = peer_workload(wl, scratch) if subset(contender, density) == "peer" else Path(wl["root"]) / "workload.json"
        m = measure([PY, str(HERE / script), *pre, str(wl_path), density, net, str(out),
                     "--workers", str(PEER_WORKERS)], timeout=PEER_TIMEOUT_S)
        res = json.loads(m["stdout"].strip().splitlines()[-1])
        m["kept"], m["chips"] = res["kept"], res["chips"]
    else:
        name = {"seed": "seed", "odc-stac": "odc", "limit": "limit"}[contender]
        args = [PY, str(HERE / "contenders.py"), name, str(Path(wl["root"]) / "workload.json"), density, net, str(out)]
        if contender in HEAVY and density == "seed":
            args.append(str(PROTOCOL["heavy_granules"]))
        m = measure(args)
        res = json.loads(m["stdout"].strip().splitlines()[-1])
        m["kept"], m["chips"] = res["kept"], res["chips"]
    m.pop("stdout")
    shutil.rmtree(out, ignore_errors=True)
    return m


def build_timings(path: Path) -> tuple[dict, dict]:
    """eochips' own account of a run (``eochips run --timings PATH``): the units' processing
    (seconds, worker CPU-seconds, cores given, utilisation) and seconds per stage."""
    rec = json.loads(path.read_text())
    return dict(rec.get("build") or {}), dict(rec.get("stages") or {})


def subset(contender: str, density: str) -> str:
    """Which chips of the density a contender builds: ``all``; ``heavy`` (the seed method and
    odc-stac at seed density: the first ``heavy_granules`` granules); ``peer`` (rslearn, see
    ``CAPPED``: the first ``peer_chips`` chips, in the workload's row-major order)."""
    if contender in HEAVY and density == "seed":
        return "heavy"
    if contender in CAPPED and PROTOCOL.get("peer_chips"):
        return "peer"
    return "all"


def subset_chips(wl: dict, density: str, which: str) -> list[list[int]]:
    """The ``[k, r, c]`` chips of :func:`subset` ``which``."""
    chips = wl["chips"][density]
    if which == "heavy":
        return [c for c in chips if c[0] < PROTOCOL["heavy_granules"]]
    if which == "peer":
        return chips[:PROTOCOL["peer_chips"]]
    return chips


def peer_workload(wl: dict, scratch: Path) -> Path:
    """workload.json with every density's chips cut to the peers' subset (written once per run)."""
    path = scratch / "workload-peer.json"
    if not path.exists():
        doc = dict(wl, chips={d: subset_chips(wl, d, "peer") for d in wl["chips"]})
        path.write_text(json.dumps(doc))
    return path


def intersected_tile_bytes(wl: dict, density: str, granules: int | None = None, chips: list | None = None) -> int:
    """Bytes of the full-resolution COG tiles that the chips' source windows (footprint plus one
    pixel for bilinear) intersect, each tile counted once."""
    import rasterio
    from affine import Affine
    from eochips.reading import source_window

    root = Path(wl["root"]) / "base"
    sizes: dict[tuple[str, str], dict[tuple[int, int], int]] = {}
    for d in wl["dates"]:
        for a in wl["assets"]:
            with rasterio.open(root / d / f"{a}.tif") as ds:
                bh, bw = ds.block_shapes[0]
                nty, ntx = -(-ds.height // bh), -(-ds.width // bw)
                sizes[(d, a)] = {(r, c): ds.block_size(1, r, c) for r in range(nty) for c in range(ntx)}
    grid_t = Affine(*wl["grid"]["transform"])
    size = wl["chip"]
    seen = set()
    total = 0
    chips = wl["chips"][density] if chips is None else chips
    if granules is not None:
        chips = [c for c in chips if c[0] < granules]

    class _DS:  # the geometry source_window needs, for granule k
        def __init__(self, k):
            import rasterio.crs

            x0, y0 = wl["granules"][str(k)]["origin"]
            self.crs = rasterio.crs.CRS.from_epsg(workload.EPSG)
            self.transform = Affine(workload.RES, 0, x0, 0, -workload.RES, y0)
            self.width = self.height = workload.SIZE

    for k, r, c in chips:
        ds = _DS(k)
        win = source_window(ds, wl["grid"]["crs"], grid_t * Affine.translation(c * size, r * size), (size, size), 1)
        if win is None:
            continue
        tr = range(int(win.row_off) // 256, (int(win.row_off + win.height) - 1) // 256 + 1)
        tc = range(int(win.col_off) // 256, (int(win.col_off + win.width) - 1) // 256 + 1)
        for (d, a), tiles in sizes.items():
            for y in tr:
                for x in tc:
                    key = (k, d, a, y, x)
                    if key not in seen:
                        seen.add(key)
                        total += tiles[(y, x)]
    return total


def summarise(records: list[dict], wl: dict, tiles: dict[str, int]) -> list[dict]:
    rows = []
    for case in CASES:
        for con in KNOWN:
            rs = [r for r in records if r["case"] == case and r["contender"] == con]
            if not rs:
                continue
            chips = rs[0]["chips"]
            walls = [r["wall_s"] for r in rs]
            cps = sorted(chips / w for w in walls)
            med_wall = statistics.median(walls)
            med_cpu = statistics.median(r["cpu_s"] for r in rs)
            bytes_sent = statistics.median(r["bytes"] for r in rs)
            density, net = case.split("-")
            tile_bytes = tiles[(density, subset(con, density))]
            row = {
                "case": case, "density": density, "network": net, "contender": con, "chips": chips,
                "kept": rs[0]["kept"], "granules": rs[0]["granules"], "of_chips": rs[0].get("of_chips", chips), "runs": len(rs),
                "seconds": round(med_wall, 2), "seconds_min_max": [round(min(walls), 2), round(max(walls), 2)],
                "chips_per_s": round(chips / med_wall, 3), "chips_per_s_min_max": [round(cps[0], 3), round(cps[-1], 3)],
                "cpu_s": round(med_cpu, 1), "cores_busy": round(med_cpu / med_wall, 2),
                "chips_per_s_per_core": round(chips / med_cpu, 3),
                "cpu_s_per_chip": round(med_cpu / chips, 4),
                "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
                "peak_rss_sum_mb": round(statistics.median(r["peak_rss_sum_mb"] for r in rs), 1),
                "peak_pss_sum_mb": round(statistics.median(r["peak_pss_sum_mb"] for r in rs), 1),
                "bytes_sent_mb": round(bytes_sent / 1e6, 1),
                "intersected_tiles_mb": round(tile_bytes / 1e6, 1),
                "bytes_ratio": round(bytes_sent / tile_bytes, 3) if tile_bytes else None,
                "requests": int(statistics.median(r["requests"] for r in rs)),
                "server_cpu_s": round(statistics.median(r.get("server_cpu_s", 0.0) for r in rs), 1),
            }
            if con.startswith("eochips"):
                row["worker_rss_mb"] = round(statistics.median(r["worker_rss_mb"] for r in rs), 1)
                row["root_rss_mb"] = round(statistics.median(r["root_rss_mb"] for r in rs), 1)
                util = [r["build"]["utilisation"] for r in rs if r.get("build", {}).get("utilisation") is not None]
                if util:
                    row["build_utilisation"] = round(statistics.median(util), 3)
                stages = dict.fromkeys(k for r in rs for k in r.get("stages", {}))  # in the order the run took them
                row["stages_s"] = {k: round(statistics.median(r["stages"].get(k, 0.0) for r in rs), 3) for k in stages}
            rows.append(row)
    for row in rows:
        if row["contender"].startswith("eochips"):
            others = [o for o in rows if o["case"] == row["case"] and o["contender"] != row["contender"]]
            row["ratio_vs"] = {o["contender"]: round(row["chips_per_s"] / o["chips_per_s"], 2) for o in others}
    return rows


EOCHIPS_ROW = "eochips-2w"  # eochips' default on this machine (a worker per core)
PEER_ROWS = ("torchgeo", "torchgeo-files", "rslearn")


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each ``{"target", "measured", "met"}``, from the summary rows (a
    target whose contenders did not run is left out)."""
    def row(case, con):
        return next((r for r in rows if r["case"] == case and r["contender"] == con), None)

    out = []
    cases = sorted({r["case"] for r in rows}, key=CASES.index)
    for case in cases:
        e = row(case, EOCHIPS_ROW)
        if e is None:
            continue
        for peer in PEER_ROWS:
            p = row(case, peer)
            if p is not None:
                out.append({"target": f"{case}: faster than {peer} (chips/s)",
                            "measured": f"{e['chips_per_s']:.2f} vs {p['chips_per_s']:.2f} = {e['chips_per_s'] / p['chips_per_s']:.2f}x",
                            "met": e["chips_per_s"] > p["chips_per_s"]})
                out.append({"target": f"{case}: lower peak RSS than {peer} (largest process)",
                            "measured": f"{e['peak_rss_mb']:.0f} vs {p['peak_rss_mb']:.0f} MB",
                            "met": e["peak_rss_mb"] < p["peak_rss_mb"]})
        s = row(case, "seed")
        if s is not None and case.startswith("seed"):
            out.append({"target": f"{case}: >= 5x the seed method's chips/s",
                        "measured": f"{e['chips_per_s']:.2f} vs {s['chips_per_s']:.2f} = {e['chips_per_s'] / s['chips_per_s']:.1f}x"
                                    + ("" if s["granules"] == e["granules"] else f" (seed on {s['granules']} granules)"),
                        "met": e["chips_per_s"] >= 5 * s["chips_per_s"]})
            out.append({"target": f"{case}: <= 1/4 of the seed method's peak RSS (largest process)",
                        "measured": f"{e['peak_rss_mb']:.0f} vs {s['peak_rss_mb']:.0f} MB = {e['peak_rss_mb'] / s['peak_rss_mb']:.2f}",
                        "met": e["peak_rss_mb"] <= s["peak_rss_mb"] / 4})
        lim = row(case, "limit")
        if lim is not None:
            out.append({"target": f"{case}: within 1.5x of the limit's time",
                        "measured": f"{e['seconds']:.1f} vs {lim['seconds']:.1f} s = {e['seconds'] / lim['seconds']:.2f}x",
                        "met": e["seconds"] <= 1.5 * lim["seconds"]})
            out.append({"target": f"{case}: CPU-seconds per chip <= 1.2x the limit's",
                        "measured": f"{e['cpu_s_per_chip']:.3f} vs {lim['cpu_s_per_chip']:.3f} = {e['cpu_s_per_chip'] / lim['cpu_s_per_chip']:.2f}x",
                        "met": e["cpu_s_per_chip"] <= 1.2 * lim["cpu_s_per_chip"]})
        if e.get("bytes_ratio") is not None:
            out.append({"target": f"{case}: bytes sent <= 1.3x the intersected tiles",
                        "measured": f"{e['bytes_ratio']:.2f}", "met": e["bytes_ratio"] <= 1.3})
        if e.get("build_utilisation") is not None:
            out.append({"target": f"{case}: worker utilisation during build >= 85 % of the cores given",
                        "measured": f"{100 * e['build_utilisation']:.0f} %", "met": e["build_utilisation"] >= 0.85})
    return out


def git_rev() -> str | None:
    """The checkout's commit (short), or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def stages_md(rows: list[dict]) -> str:
    """eochips' seconds per stage (its own ``timings``), one column per case; "" without any."""
    es = [r for r in rows if r["contender"] == EOCHIPS_ROW and r.get("stages_s")]
    if not es:
        return ""
    # the top-level stages, and the parts of a stage that took at least 0.3 s somewhere
    names = [k for k in dict.fromkeys(k for r in es for k in r["stages_s"])
             if ":" not in k or max(r["stages_s"].get(k, 0.0) for r in es) >= 0.3]
    md = "\n| eochips-2w: seconds per stage | " + " | ".join(r["case"] for r in es) + " |\n"
    md += "|---|" + "---|" * len(es) + "\n"
    for n in names:
        md += f"| {n} | " + " | ".join(f"{r['stages_s'].get(n, 0.0):.2f}" for r in es) + " |\n"
    if any("build_utilisation" in r for r in es):
        md += "| build: worker utilisation | " + " | ".join(
            f"{100 * r['build_utilisation']:.0f} %" if "build_utilisation" in r else "" for r in es) + " |\n"
    md += "| CPU-s of the whole run / of the COG server meanwhile | " + " | ".join(
        f"{r['cpu_s']:.1f} / {r['server_cpu_s']:.1f}" for r in es) + " |\n"
    return md


def table(rows: list[dict]) -> str:
    head = ("| case | contender | chips (kept) | runs | chips/s (min-max) | CPU-s per chip | peak MB: largest RSS / tree PSS "
            f"| MB sent | / tiles | {EOCHIPS_ROW} vs this |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        base = next((o for o in rows if o["case"] == r["case"] and o["contender"] == EOCHIPS_ROW), None)
        vs = "" if r["contender"] == EOCHIPS_ROW or base is None else f"{base['chips_per_s'] / r['chips_per_s']:.2f}x"
        chips = (f"{r['chips']}" + (f" of {r['of_chips']}" if r["of_chips"] != r["chips"] else "") + f" ({r['kept']})"
                 + (f", {r['granules']} gran." if r["granules"] else ""))
        lines.append(
            f"| {r['case']} | {r['contender']} | {chips} | {r['runs']} | {r['chips_per_s']:.2f} "
            f"({r['chips_per_s_min_max'][0]:.2f}-{r['chips_per_s_min_max'][1]:.2f}) | {r['cpu_s_per_chip']:.3f} "
            f"| {r['peak_rss_mb']:.0f} / {r['peak_pss_sum_mb']:.0f} | {r['bytes_sent_mb']:.0f} | {r['bytes_ratio']:.2f} | {vs} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="eochips benchmark")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--heavy-runs", type=int, default=1, help="runs of the seed method and odc-stac per case")
    ap.add_argument("--heavy-granules", type=int, default=PROTOCOL["heavy_granules"],
                    help="granules the seed method and odc-stac process at seed density")
    ap.add_argument("--peer-runs", type=int, default=1, help="runs of TorchGeo and rslearn per case")
    ap.add_argument("--peer-chips", type=int, default=PROTOCOL["peer_chips"],
                    help="chips rslearn builds per case (the first N of the density's; 0: all)")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache", help="workload files (about 0.5 GB, reused)")
    ap.add_argument("--only", nargs="*", default=None, help="cases to run (default: all)")
    ap.add_argument("--contenders", nargs="*", default=CONTENDERS, choices=KNOWN)
    ap.add_argument("--scale40", action="store_true", default=False, help="also eochips at 40 granules (RSS per worker)")
    ap.add_argument("--no-scale40", dest="scale40", action="store_false")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--quick", action="store_true",
                    help="one round of seed-loopback and dense-loopback, rslearn on 20 chips, the seed method and odc-stac on 1 granule, no torchgeo-files or 40-granule row (under 10 minutes)")
    args = ap.parse_args(argv)
    if args.quick:  # one round of the two ends (seed and dense, loopback), rslearn on 20 chips,
        # the seed method and odc-stac on 1 granule at seed density, no second TorchGeo row
        args.runs, args.heavy_runs, args.peer_runs, args.scale40 = 1, 1, 1, False
        args.peer_chips = min(args.peer_chips or QUICK_PEER_CHIPS, QUICK_PEER_CHIPS)
        args.heavy_granules = 1
        args.only = args.only or ["seed-loopback", "dense-loopback"]
        args.contenders = [c for c in args.contenders if c != "torchgeo-files"]
    PROTOCOL["heavy_granules"] = args.heavy_granules
    PROTOCOL["peer_chips"] = args.peer_chips
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    cases = args.only or CASES
    args.cache.mkdir(parents=True, exist_ok=True)
    workload.build_base(args.cache)
    server = Server(args.cache)
    scratch = Path(tempfile.mkdtemp(prefix="eochips-bench-"))
    records: list[dict] = []
    timed_out: list[dict] = []
    try:
        wl = workload.build(args.cache, server.urls["loopback"], server.urls["proxy"])
        t_built = time.perf_counter()
        tiles = {(d, which): intersected_tile_bytes(wl, d, chips=subset_chips(wl, d, which))
                 for d in {c.split('-')[0] for c in cases} for which in ("all", "heavy", "peer")}
        for rnd in range(args.runs):
            for case in cases:
                cons = [c for c in args.contenders if (rnd < args.heavy_runs or c not in HEAVY)
                        and (rnd < args.peer_runs or c not in PEERS)
                        and not (c in LOOPBACK_ONLY | LOOPBACK_ONLY_PEERS and case.endswith("proxy"))]
                k = rnd % len(cons)
                for con in cons[k:] + cons[:k]:
                    server.reset()
                    server_cpu0 = server.cpu_s()
                    try:
                        m = run_one(con, case, wl, scratch)
                    except TimedOut as e:
                        timed_out.append({"case": case, "contender": con, "round": rnd, "error": str(e)})
                        print(f"[{time.perf_counter() - t_start:7.1f}s] round {rnd + 1} {case:16s} {con:11s} {e}", flush=True)
                        continue
                    st = server.stats()
                    m["server_cpu_s"] = server.cpu_s() - server_cpu0
                    density = case.split("-")[0]
                    m.update(case=case, contender=con, round=rnd, bytes=st["bytes"], requests=st["requests"],
                             connections=st["connections"], of_chips=len(wl["chips"][density]),
                             granules=len({c[0] for c in subset_chips(wl, density, subset(con, density))}))
                    records.append(m)
                    print(f"[{time.perf_counter() - t_start:7.1f}s] round {rnd + 1} {case:16s} {con:11s} "
                          f"{m['wall_s']:6.1f}s {m['chips'] / m['wall_s']:6.2f} chips/s rss {m['peak_rss_mb']:5.0f}/"
                          f"{m['peak_rss_sum_mb']:5.0f} MB sent {st['bytes'] / 1e6:7.1f} MB", flush=True)
        scale = [r for r in records if r["case"] == "seed-loopback" and r["contender"] == "eochips-2w"]
        if args.scale40:
            server.reset()
            m = run_one("eochips-2w", "scale40-loopback", wl, scratch)
            m.update(granules=40, bytes=server.stats()["bytes"])
            scale.append(m)
            print(f"[{time.perf_counter() - t_start:7.1f}s] 40 granules eochips-2w {m['wall_s']:.1f}s "
                  f"worker RSS {m['worker_rss_mb']:.0f} MB", flush=True)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(records, wl, tiles)
    tg = targets(rows)
    result = {
        "machine": {"cores": CORES, "python": sys.version.split()[0], "load_average_start": load_start,
                    "load_average_end": list(os.getloadavg()), "git_rev": git_rev()},
        "protocol": {"runs": args.runs, "heavy_runs": args.heavy_runs, "heavy_granules_at_seed_density": PROTOCOL["heavy_granules"],
                     "peer_runs": args.peer_runs, "peer_chips": PROTOCOL["peer_chips"],
                     "latency_s": 0.040, "bandwidth_mb_s": 50.0, "workload_build_s": round(t_built - t_start, 1),
                     "total_s": round(time.perf_counter() - t_start, 1)},
        "results": rows,
        "targets": tg,
        "timed_out": timed_out,
        "scale": [{"granules": m["granules"], "chips": m["chips"], "seconds": round(m["wall_s"], 2),
                   "worker_rss_mb": round(m["worker_rss_mb"], 1), "peak_rss_mb": round(m["peak_rss_mb"], 1)} for m in scale],
        "runs": [{k: v for k, v in r.items() if k != "rss_by_process_mb"} for r in records],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    md = table(rows) + stages_md(rows)
    if scale:
        md += "\n| eochips-2w, seed density | granules | chips | seconds | RSS per worker MB |\n|---|---|---|---|---|\n"
        md += "".join(f"| | {s['granules']} | {s['chips']} | {s['seconds']} | {s['worker_rss_mb']} |\n" for s in result["scale"])
    md += targets_md(tg)
    name = "quick" if args.quick else "latest"  # a quick round never replaces the full results
    tmp = args.results / f"{name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(args.results / f"{name}.json")
    (args.results / f"{name}.md").write_text(md)
    readme = HERE / "README.md"
    if readme.exists() and args.results == HERE / "results" and not args.quick:
        text = readme.read_text()
        a, b = "<!-- results -->", "<!-- /results -->"
        if a in text and b in text:
            text = text[:text.index(a) + len(a)] + "\n" + md + text[text.index(b):]
            readme.write_text(text)
    print(md)
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
