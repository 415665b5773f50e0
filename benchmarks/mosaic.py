"""The cloud-free mosaic benchmark (issue 12, reference pipeline 3): eochips' ``greedy-coverage``
+ ``first-valid`` mosaic recipe, the seed's method (cloud-buster: whole masked scenes gdalwarp-ed,
then merged), odc-stac and the pure read+warp limit, on the same picks and the same output grid,
at two AOI sizes (1x: 30 x 30 km, 4x: 60 x 60 km), all in one run (``make bench`` calls it after
``clay.py``).

    python benchmarks/mosaic.py [--runs 1] [--scales 1 4] [--contenders eochips seed odc limit]

The workload (``mosaic_workload.py``: eight full-size scenes of real pixels around the AOI) is
served over HTTP by ``tests/servers.py``'s ``RangeServer`` (in a child process of the harness;
it counts the bytes it sends); the items are one static ItemCollection. Each contender is its own
process tree, measured by ``run.measure`` (wall and CPU seconds, peak RSS of the largest process,
of the tree summed, and the tree's PSS). eochips runs first at each scale: the others take its
picks (``plan/plan.json`` ``selection_log``); without eochips they take ``greedy`` of
``mosaic_contenders.py``. The outputs are compared pixel by pixel with the seed's (over the AOI
box). Writes ``benchmarks/results/mosaic.json`` and ``mosaic.md`` and puts the table into
``benchmarks/README.md`` between the ``<!-- mosaic-results -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import mosaic_contenders as mc  # noqa: E402
import mosaic_workload as mw  # noqa: E402
from run import CORES, EOCHIPS, PY, measure, targets_md  # noqa: E402
from servers import RangeServer  # noqa: E402

CONTENDERS = ["eochips", "seed", "odc", "limit"]
EOCHIPS_WORKERS = 2  # eochips' default on this 2-core machine (one per core)
RECIPE_NAME = "mosaic"
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}  # the profile's band names (the recipe's quicklook)


def recipe(m: dict, scale: int) -> dict:
    """The recipe eochips runs: the shape of issue 12's ``cloud-free-mosaic`` (its selection,
    composite, units, output and dataset parts taken from the built-in recipe when eochips has
    it), on the workload's static catalog, AOI box, bands and a 20 m EPSG:32630 grid."""
    r = {
        "version": 2, "name": RECIPE_NAME,
        "aoi": {"bbox": m["aoi"][str(scale)], "crs": mw.CRS},
        "sources": {"s2": {
            "search": {"catalog": m["catalog"], "collections": ["sentinel-2-l2a"], "cloud_cover": {"max": 20},
                       "sortby": ["-properties.datetime"], "max_items": 1024, "auth": "none"},
            "profile": "sentinel-2-l2a-pc",
            "bands": [{"name": COMMON[b], "asset": b, "resolution": mw.RES} for b in m["bands"]],
            "resampling": "nearest",
            "selection": {"kind": "greedy-coverage", "coverage_count": 3, "max_uncovered_m2": 6.15e6, "backstop": True,
                          "max_selections": None},
            "composite": {"kind": "first-valid"},
        }},
        "grid": {"kind": "crs", "crs": mw.CRS, "resolution": mw.RES},
        "units": {"kind": "tile", "size": 1024},
        "masks": {"sources": [{"kind": "scl", "source": "s2", "cloud_classes": [8, 9, 10], "shadow_classes": [3],
                               "nodata_classes": [0, 1], "snow_classes": []}], "dilation": 5},
        "output": {"layout": {"kind": "mosaic", "source": "s2"}},
        "dataset": {"finalizers": ["index", "mosaic", "summary", "manifest"]},
    }
    builtin = builtin_recipe()
    if builtin:
        src = next(iter(builtin.get("sources", {}).values()), {})
        for k in ("selection", "composite"):
            if k in src:
                r["sources"]["s2"][k] = src[k]
        for k in ("units", "output", "dataset"):
            if k in builtin:
                r[k] = builtin[k]
    return r


def builtin_recipe() -> dict | None:
    """eochips' built-in ``cloud-free-mosaic`` recipe as a dict, or None (not merged yet)."""
    import yaml

    p = HERE.parent / "src" / "eochips" / "recipes" / "cloud-free-mosaic.yaml"
    return yaml.safe_load(p.read_text()) if p.exists() else None


def eochips_cmd(path: Path, out: Path) -> list[str]:
    return [EOCHIPS, "run", str(path), "--output", str(out), "--workers", str(EOCHIPS_WORKERS), "--no-progress"]


def eochips_outputs(out: Path) -> dict[str, Path]:
    """eochips' mosaic COGs, by part (cloudless, cloudy, source)."""
    got = {}
    for part in ("cloudless", "cloudy", "source"):
        fs = sorted(out.rglob(f"*-{part}.tif"))
        fs = [f for f in fs if "tiles" not in f.parts]
        if fs:
            got[part] = fs[0]
    return got


def plan_picks(out: Path) -> list[dict] | None:
    p = out / "plan" / "plan.json"
    if not p.exists():
        return None
    log = json.loads(p.read_text()).get("selection_log", {})
    src = log.get("s2") or next(iter(log.values()), None)
    return src["picks"] if src else None


def run_one(contender: str, m: dict, scale: int, scratch: Path, picks_json: Path, keep: Path) -> dict:
    out = scratch / f"{contender}-{scale}x"
    shutil.rmtree(out, ignore_errors=True)
    if contender == "eochips":
        rp = scratch / f"recipe-{scale}x.yaml"
        import yaml

        rp.write_text(yaml.safe_dump(recipe(m, scale), sort_keys=False))
        # a state folder of its own per run (eochips uses it only for object-storage outputs)
        state = Path(tempfile.mkdtemp(prefix="state-", dir=scratch))
        env = dict(os.environ, EOCHIPS_STATE_DIR=str(state))
        r = measure(eochips_cmd(rp, out), env)
        r["picks"] = plan_picks(out)
        files = eochips_outputs(out)
        summary = out / "summary.json"
        r["summary_mosaic"] = json.loads(summary.read_text()).get("mosaic") if summary.exists() else None
    else:
        r = measure([PY, str(HERE / "mosaic_contenders.py"), contender, m["manifest"],
                     str(scale), str(picks_json), str(out)])
        files = {p: out / f"{p}.tif" for p in ("cloudless", "cloudy", "source") if (out / f"{p}.tif").exists()}
    r.pop("stdout", None)
    keep.mkdir(parents=True, exist_ok=True)
    for part, f in files.items():
        shutil.copy(f, keep / f"{contender}-{part}.tif")
    shutil.rmtree(out, ignore_errors=True)
    return r


def _aoi_read(path: Path, scale: int, bands: list[int] | None = None):
    """The raster's pixels over the AOI box ``(band, y, x)``, its band descriptions."""
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(path) as ds:
        win = from_bounds(*mw.aoi_box(scale), transform=ds.transform).round_offsets().round_lengths()
        return ds.read(bands, window=win, boundless=True, fill_value=0), list(ds.descriptions)


def compare(keep: Path, scale: int, ref: str, other: str) -> dict:
    """``other``'s mosaic against ``ref``'s over the AOI box: per part, the pixels that differ in
    any band, how many of them lie within 5 px of a 1024 px tile edge of the output grid or of
    the AOI border, and the share of the AOI's pixels; the source-index bands likewise."""
    import numpy as np

    t, h, w = mw.output_grid(scale)
    rows, cols = np.mgrid[0:h, 0:w]
    near_tile = ((rows % 1024 < 5) | (rows % 1024 >= 1019) | (cols % 1024 < 5) | (cols % 1024 >= 1019)) & (rows >= 5) & (cols >= 5)
    near_aoi = (rows < 5) | (cols < 5) | (rows >= h - 5) | (cols >= w - 5)
    out = {}
    for part in ("cloudless", "cloudy"):
        fa, fb = keep / f"{ref}-{part}.tif", keep / f"{other}-{part}.tif"
        if not fa.exists() and not fb.exists():
            continue
        if not (fa.exists() and fb.exists()):
            out[part] = f"only in {ref if fa.exists() else other}"
            continue
        a, _ = _aoi_read(fa, scale)
        b, _ = _aoi_read(fb, scale)
        if a.shape != b.shape:
            out[part] = f"shapes {a.shape} vs {b.shape}"
            continue
        d = (a != b).any(axis=0)
        out[part] = {"differing_px": int(d.sum()), "share": round(float(d.mean()), 6),
                     "near_tile_edges": int((d & near_tile).sum()), "near_aoi_border": int((d & near_aoi).sum()),
                     "empty_ref": int((a[0] == 0).sum()), "empty_other": int((b[0] == 0).sum())}
    fa, fb = keep / f"{ref}-source.tif", keep / f"{other}-source.tif"
    if fa.exists() and fb.exists():
        a, na = _aoi_read(fa, scale)
        b, nb = _aoi_read(fb, scale)
        for name in ("cloudless_index", "cloudy_index"):
            if name in na and name in nb:
                d = a[na.index(name)] != b[nb.index(name)]
                out[name] = {"differing_px": int(d.sum()), "near_tile_edges": int((d & near_tile).sum()),
                             "near_aoi_border": int((d & near_aoi).sum())}
    return out


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for scale in sorted({r["scale"] for r in records}):
        for con in CONTENDERS:
            rs = [r for r in records if r["contender"] == con and r["scale"] == scale]
            if not rs:
                continue
            walls = [r["wall_s"] for r in rs]
            wall = statistics.median(walls)
            cpu = statistics.median(r["cpu_s"] for r in rs)
            px = rs[0]["pixels"]
            rows.append({
                "scale": scale, "contender": con, "pixels": px, "picks": rs[0]["n_picks"], "runs": len(rs),
                "seconds": round(wall, 2), "seconds_min_max": [round(min(walls), 2), round(max(walls), 2)],
                "mpix_per_s": round(px / 1e6 / wall, 4), "cpu_s": round(cpu, 1), "cores_busy": round(cpu / wall, 2),
                "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
                "peak_rss_sum_mb": round(statistics.median(r["peak_rss_sum_mb"] for r in rs), 1),
                "peak_pss_sum_mb": round(statistics.median(r["peak_pss_sum_mb"] for r in rs), 1),
                "bytes_sent_mb": round(statistics.median(r["bytes"] for r in rs) / 1e6, 1),
                "requests": int(statistics.median(r["requests"] for r in rs)),
            })
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 12's targets: eochips >= 2x the seed's output Mpix/s; eochips' peak RSS (process
    tree) flat within 10 % from 1x to 4x the AOI area; eochips within 1.5x of the read+warp time."""
    by = {(r["scale"], r["contender"]): r for r in rows}
    out = []
    for scale in sorted({r["scale"] for r in rows}):
        e, s, lim = by.get((scale, "eochips")), by.get((scale, "seed")), by.get((scale, "limit"))
        if e and s:
            v = e["mpix_per_s"] / s["mpix_per_s"]
            out.append({"target": f"{scale}x: eochips >= 2x the seed method's output Mpix/s",
                        "measured": f"{e['mpix_per_s']:.3f} vs {s['mpix_per_s']:.3f} Mpix/s = {v:.2f}x", "met": v >= 2})
        if e and lim:
            v = e["seconds"] / lim["seconds"]
            out.append({"target": f"{scale}x: eochips within 1.5x of the pure read+warp time",
                        "measured": f"{e['seconds']:.1f} vs {lim['seconds']:.1f} s = {v:.2f}x", "met": v <= 1.5})
    e1, e4 = by.get((1, "eochips")), by.get((4, "eochips"))
    if e1 and e4:
        v = e4["peak_rss_sum_mb"] / e1["peak_rss_sum_mb"]
        w = e4["peak_pss_sum_mb"] / e1["peak_pss_sum_mb"]
        out.append({"target": "eochips peak RSS flat (within 10 %) from 1x to 4x the AOI area",
                    "measured": f"tree RSS {e1['peak_rss_sum_mb']:.0f} -> {e4['peak_rss_sum_mb']:.0f} MB = {v:.2f}; "
                                f"tree PSS {e1['peak_pss_sum_mb']:.0f} -> {e4['peak_pss_sum_mb']:.0f} MB = {w:.2f}; largest process "
                                f"{e1['peak_rss_mb']:.0f} -> {e4['peak_rss_mb']:.0f} MB",
                    "met": v <= 1.1})
    return out


def table(rows: list[dict], tg: list[dict]) -> str:
    md = ("| AOI | contender | output px | picks | runs | seconds (min-max) | output Mpix/s | cores busy "
          "| peak MB: largest RSS / tree RSS / tree PSS | MB sent | requests |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        md += (f"| {r['scale']}x | {r['contender']} | {r['pixels']:,} | {r['picks']} | {r['runs']} | {r['seconds']:.1f} "
               f"({r['seconds_min_max'][0]:.1f}-{r['seconds_min_max'][1]:.1f}) | {r['mpix_per_s']:.3f} | {r['cores_busy']:.2f} "
               f"| {r['peak_rss_mb']:.0f} / {r['peak_rss_sum_mb']:.0f} / {r['peak_pss_sum_mb']:.0f} | {r['bytes_sent_mb']:.0f} "
               f"| {r['requests']} |\n")
    md += targets_md(tg)
    return md


def agreement_table(agreement: dict) -> str:
    md = "\n| AOI | vs seed | cloudless: differing px (near tile edges, near AOI border) | cloudless_index | empty px (seed / this) |\n|---|---|---|---|---|\n"
    for key, a in agreement.items():
        scale, other = key.split(":")
        c, i = a.get("cloudless"), a.get("cloudless_index")
        cs = f"{c['differing_px']:,} ({c['near_tile_edges']:,}, {c['near_aoi_border']:,})" if isinstance(c, dict) else str(c)
        ix = f"{i['differing_px']:,}" if isinstance(i, dict) else str(i)
        em = f"{c['empty_ref']:,} / {c['empty_other']:,}" if isinstance(c, dict) else ""
        md += f"| {scale} | {other} | {cs} | {ix} | {em} |\n"
    return md


def machine() -> dict:
    """Cores, CPU model, memory, Python, the 1/5/15 min load averages at the end."""
    cpu = mem = None
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), None)
        mem = next((round(int(ln.split()[1]) / 2**20, 1) for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ln.startswith("MemTotal")), None)
    except OSError:
        pass
    return {"cores": CORES, "cpu": cpu, "memory_gb": mem, "python": sys.version.split()[0],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()]}


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty src" if dirty else "")
    except OSError:
        return "unknown"


class Server:
    """``tests/servers.py``'s ``RangeServer`` on ``root`` in its own process (``mosaic.py --serve
    ROOT``): in the harness's process its threads would wait for the GIL while the harness
    samples the contenders' memory (an eochips run took 3x as long). ``stats()`` returns and
    zeroes the bytes sent and the requests answered (asked over the child's stdin)."""

    def __init__(self, root: Path):
        self.proc = subprocess.Popen([PY, str(Path(__file__).resolve()), "--serve", str(root)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"the range server did not start: {self.url!r}")

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def serve(root: Path) -> None:
    """The ``--serve`` child: print the URL, then per ``stats`` line on stdin one JSON line
    ``{"bytes", "requests"}`` (counters zeroed); stop at end of input."""
    with RangeServer(root) as server:
        print(server.url, flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                with server._lock:
                    got = {"bytes": server.bytes_sent, "requests": server.requests}
                    server.bytes_sent = server.requests = 0
                print(json.dumps(got), flush=True)


def main(argv=None) -> None:
    if argv is None and sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description="eochips cloud-free mosaic benchmark")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--scales", type=int, nargs="*", default=[1, 4], choices=sorted(mw.AOI_SIDE_M))
    ap.add_argument("--cache", type=Path, default=HERE / ".cache", help="workload files (about 1.2 GB under mosaic/, reused)")
    ap.add_argument("--contenders", nargs="*", default=CONTENDERS, choices=CONTENDERS)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    root = args.cache / "mosaic"
    mw.build_files(root)
    t_files = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="eochips-mosaic-"))
    records: list[dict] = []
    agreement: dict[str, dict] = {}
    picks_used: dict[str, dict] = {}
    failed: dict[str, str] = {}
    try:
        with Server(root) as server:
            m = mw.build(root, server.url, scratch / "catalog")
            feats = json.loads(Path(m["catalog"]).read_text())["features"]
            for rnd in range(args.runs):
                for scale in args.scales:
                    keep = scratch / f"keep-{scale}x"
                    picks_json = scratch / f"picks-{scale}x.json"
                    cons = [c for c in CONTENDERS if c in args.contenders]
                    rest = [c for c in cons if c != "eochips"]
                    k = rnd % max(len(rest), 1)
                    order = (["eochips"] if "eochips" in cons else []) + rest[k:] + rest[:k]
                    for con in order:
                        if con != "eochips" and not picks_json.exists():
                            ordered = sorted((f for f in feats if f["properties"]["eo:cloud_cover"] <= 20),
                                             key=lambda f: f["properties"]["datetime"], reverse=True)
                            import shapely

                            picks = mc.greedy(ordered, shapely.box(*m["aoi"][str(scale)]))
                            picks_json.write_text(json.dumps({"source": "greedy (mosaic_contenders.py)", "picks": picks}))
                            picks_used[f"{scale}x"] = json.loads(picks_json.read_text())
                        server.stats()  # zeroes the counters
                        load = round(os.getloadavg()[0], 2)
                        try:
                            r = run_one(con, m, scale, scratch, picks_json, keep)
                        except RuntimeError as exc:  # eochips without the mosaic recipe's parts: the others still run
                            if con != "eochips":
                                raise
                            failed[f"{scale}x"] = str(exc)[-1500:]
                            print(f"eochips failed at {scale}x: {str(exc)[-600:]}", flush=True)
                            continue
                        r.update(server.stats())
                        if con == "eochips" and r.get("picks"):
                            picks_json.write_text(json.dumps({"source": "eochips plan.json selection_log", "picks": r["picks"]}))
                            picks_used[f"{scale}x"] = {"source": "eochips plan.json selection_log", "picks": r["picks"]}
                        _, h, w = mw.output_grid(scale)
                        n_picks = len(json.loads(picks_json.read_text())["picks"]) if picks_json.exists() else len(r.get("picks") or [])
                        r.update(contender=con, scale=scale, round=rnd, pixels=h * w, n_picks=n_picks, load_avg_before=load)
                        records.append(r)
                        print(f"[{time.perf_counter() - t_start:7.1f}s] round {rnd + 1} {scale}x {con:8s} {r['wall_s']:6.1f}s "
                              f"{h * w / 1e6 / r['wall_s']:6.3f} Mpix/s rss {r['peak_rss_mb']:5.0f}/{r['peak_rss_sum_mb']:5.0f}/"
                              f"{r['peak_pss_sum_mb']:5.0f} MB sent {r['bytes'] / 1e6:7.1f} MB", flush=True)
                    if rnd == 0 and "seed" in cons:
                        for other in cons:
                            if other not in ("seed", "limit") and (keep / f"{other}-cloudless.tif").exists():
                                agreement[f"{scale}x:{other}"] = compare(keep, scale, "seed", other)
                    shutil.rmtree(keep, ignore_errors=True)
                    picks_json.unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(records)
    tg = targets(rows)
    eo = [r for r in records if r["contender"] == "eochips" and r["round"] == 0]
    result = {
        "machine": machine(),
        "git_rev": git_rev(),
        "protocol": {"runs": args.runs, "network": "loopback (tests/servers.py RangeServer, its own process)",
                     "catalog": "static ItemCollection", "eochips_workers": EOCHIPS_WORKERS,
                     "output_grid": "EPSG:32630, 20 m, the AOI box", "files_build_s": round(t_files - t_start, 1),
                     "total_s": round(time.perf_counter() - t_start, 1)},
        "workload": {"scenes": [{k: s[k] for k in ("id", "tile", "pass", "datetime", "eo:cloud_cover", "s2:nodata_pixel_percentage")}
                                for s in m["scenes"]],
                     "aoi": m["aoi"], "output_px": {f"{s}x": mw.output_grid(s)[1] * mw.output_grid(s)[2] for s in args.scales}},
        "results": rows, "targets": tg, "eochips_failed": failed, "agreement_vs_seed": agreement, "picks": picks_used,
        "eochips_summary_mosaic": {f"{r['scale']}x": r.get("summary_mosaic") for r in eo},
        "runs": [{k: v for k, v in r.items() if k not in ("rss_by_process_mb", "picks", "summary_mosaic")} for r in records],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    tmp = args.results / "mosaic.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(args.results / "mosaic.json")
    md = table(rows, tg) + (agreement_table(agreement) if agreement else "")
    if failed:
        md += "\n" + "".join(f"eochips failed at {k}: `{v.strip().splitlines()[-1]}`\n" for k, v in failed.items())
    mc_ = result["machine"]
    loads = ", ".join(f"{r['scale']}x {r['contender']} {r['load_avg_before']}" for r in records)
    md += (f"\ngit {result['git_rev']}; {mc_['cores']} cores ({mc_['cpu']}, {mc_['memory_gb']} GB); total "
           f"{result['protocol']['total_s']:.0f} s; 1-min load average before each run: {loads}\n")
    (args.results / "mosaic.md").write_text(md)
    readme = HERE / "README.md"
    text = readme.read_text()
    a, b = "<!-- mosaic-results -->", "<!-- /mosaic-results -->"
    if a in text and b in text and args.results.resolve() == (HERE / "results").resolve():
        readme.write_text(text[:text.index(a) + len(a)] + "\n" + md + text[text.index(b):])
    print(md)
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
