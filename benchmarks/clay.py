"""The Clay datacube benchmark: eochips' ``clay-datacube`` recipe, the seed's stackstac method and
the read limit on one full Sentinel-2 tile (441 chips of 512 px) plus Sentinel-1 RTC and the
Copernicus DEM, all in one run (``make bench`` calls it after ``run.py``).

    python benchmarks/clay.py [--runs 1] [--cache DIR] [--contenders eochips seed limit]

Each contender is its own process tree, measured as in ``run.py`` (wall and CPU seconds, peak
RSS of the largest process and PSS of the tree, bytes the COG server sent). Bytes are compared
with the compressed size of the COG tiles the chip windows touch (``clay_workload.touched_bytes``).
Writes ``benchmarks/results/clay.json`` and ``clay.md`` and puts the table into
``benchmarks/README.md`` between the ``<!-- clay-results -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import clay_workload  # noqa: E402
from run import CORES, EOCHIPS, PY, Server, by_contender, measure, targets_md  # noqa: E402

CONTENDERS = ["eochips", "seed", "limit"]
EOCHIPS_WORKERS = 2  # eochips' default on this 2-core machine (one per core)
SAMPLES = {1, 100, 221, 222, 300, 441}  # chip numbers (1-based, row-major) kept for the pixel comparison


def eochips_cmd(m: dict, out: Path) -> list[str]:
    """``eochips run clay-datacube`` on the workload: its static catalogs (no Planetary Computer
    signing), its one-row MGRS tile file, the year of the S2 scene, 512 px chips, a local output
    folder."""
    sets: dict[str, object] = {"aoi.path": m["aoi"], "aoi.row": 0}
    for src in ("s2", "s1", "dem"):
        sets[f"sources.{src}.search.catalog"] = m["catalogs"][src]
        sets[f"sources.{src}.search.auth"] = "none"
    sets["sources.s2.selection.years"] = f"[{m['year']}, {m['year']}]"
    sets["units.size"] = m["chip"]
    cmd = [EOCHIPS, "run", "clay-datacube", "--output", str(out), "--workers", str(EOCHIPS_WORKERS), "--no-progress"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def run_one(contender: str, m: dict, scratch: Path) -> dict:
    out = scratch / contender
    shutil.rmtree(out, ignore_errors=True)
    if contender == "eochips":
        env = dict(os.environ, EOCHIPS_STATE_DIR=str(scratch / "state"))
        r = measure(eochips_cmd(m, out), env)
        summary = json.loads((out / "summary.json").read_text())
        r["kept"] = summary.get("kept", summary.get("chips_kept"))
        r["files"] = len(list(out.rglob("claytile_*.tif")))
        r["summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, dict))}
    else:
        r = measure([PY, str(HERE / "clay_contenders.py"), contender, str(Path(m["root"]) / "workload.json"), str(out)])
        res = json.loads(r["stdout"].strip().splitlines()[-1])
        r["kept"] = res["kept"]
        r["files"] = len(list(out.rglob("claytile_*.tif")))
    r.pop("stdout", None)
    r["chips"] = len(m["chips"])
    files = sorted(out.rglob("claytile_*.tif"))
    r["kept_n"] = sorted(int(f.stem.rsplit("_", 1)[1]) for f in files)
    keep = scratch / "samples" / contender
    keep.mkdir(parents=True, exist_ok=True)
    for f in files:
        if int(f.stem.rsplit("_", 1)[1]) in SAMPLES:
            shutil.copy(f, keep / f.name)
    shutil.rmtree(out, ignore_errors=True)
    return r


def compare(scratch: Path, a: str, b: str) -> dict:
    """Pixel agreement of the sample chips both contenders wrote: per band (``a``'s names), the
    number of pixels that differ (NaN equal to NaN); the band descriptions (both lists when they
    differ), the dtypes, whether transform and CRS agree."""
    import numpy as np
    import rasterio

    out = {}
    for fa in sorted((scratch / "samples" / a).glob("*.tif")):
        fb = scratch / "samples" / b / fa.name
        if not fb.exists():
            out[fa.name] = "only in " + a
            continue
        with rasterio.open(fa) as da, rasterio.open(fb) as db:
            x, y = da.read(), db.read()
            same_t = da.transform.almost_equals(db.transform) and da.crs == db.crs
            names, names_b = list(da.descriptions), list(db.descriptions)
        if x.shape != y.shape:
            out[fa.name] = f"shapes {x.shape} vs {y.shape}"
            continue
        diff = ~((x == y) | (np.isnan(x) & np.isnan(y)))
        out[fa.name] = {"transform_crs_equal": bool(same_t), "descriptions": names if names == names_b else [names, names_b],
                        "dtypes": sorted({str(x.dtype), str(y.dtype)}),
                        "differing_pixels": {n: int(d.sum()) for n, d in zip(names, diff)}}
    return out


def by_kind(m: dict, by_path: dict[str, int], touched: dict[str, int]) -> dict[str, dict]:
    """Bytes sent over touched-tile bytes per asset kind (S2 10 m, S2 20 m, S1, DEM)."""
    out: dict[str, dict] = {}
    for key, a in m["assets"].items():
        path = "/clay/" + key + ".tif"
        k = out.setdefault(a["kind"], {"sent_mb": 0.0, "touched_mb": 0.0})
        k["sent_mb"] += by_path.get(path, 0) / 1e6
        k["touched_mb"] += touched[key] / 1e6
    for k in out.values():
        k["ratio"] = round(k["sent_mb"] / k["touched_mb"], 3) if k["touched_mb"] else None
        k["sent_mb"], k["touched_mb"] = round(k["sent_mb"], 1), round(k["touched_mb"], 1)
    return out


def summarise(records: list[dict], touched: int) -> list[dict]:
    rows = []
    for con, rs in by_contender(records, CONTENDERS):
        walls = [r["wall_s"] for r in rs]
        wall = statistics.median(walls)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        sent = statistics.median(r["bytes"] for r in rs)
        rows.append({
            "contender": con, "chips": rs[0]["chips"], "kept": rs[0]["kept"], "files": rs[0]["files"], "runs": len(rs),
            "seconds": round(wall, 2), "seconds_min_max": [round(min(walls), 2), round(max(walls), 2)],
            "chips_per_s": round(rs[0]["chips"] / wall, 3), "cpu_s": round(cpu, 1), "cores_busy": round(cpu / wall, 2),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
            "peak_rss_sum_mb": round(statistics.median(r["peak_rss_sum_mb"] for r in rs), 1),
            "peak_pss_sum_mb": round(statistics.median(r["peak_pss_sum_mb"] for r in rs), 1),
            "bytes_sent_mb": round(sent / 1e6, 1), "touched_tiles_mb": round(touched / 1e6, 1),
            "bytes_ratio": round(sent / touched, 3), "requests": int(statistics.median(r["requests"] for r in rs)),
        })
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, measured: eochips >= 1.5x the seed's chips/s at <= 1/3 of its peak
    RSS, within 1.5x of the limit's time, bytes sent <= 1.1x the touched tiles."""
    by = {r["contender"]: r for r in rows}
    out = []
    e, s, lim = by.get("eochips"), by.get("seed"), by.get("limit")
    if e and s:
        v = e["chips_per_s"] / s["chips_per_s"]
        out.append({"target": "eochips >= 1.5x the seed method's chips/s", "measured": f"{e['chips_per_s']:.2f} vs {s['chips_per_s']:.2f} chips/s = {v:.2f}x", "met": v >= 1.5})
        v = e["peak_rss_mb"] / s["peak_rss_mb"]
        w = e["peak_pss_sum_mb"] / s["peak_pss_sum_mb"]
        out.append({"target": "eochips <= 1/3 of the seed method's peak RSS", "measured": f"largest process {e['peak_rss_mb']:.0f} vs {s['peak_rss_mb']:.0f} MB = {v:.2f}; tree PSS {e['peak_pss_sum_mb']:.0f} vs {s['peak_pss_sum_mb']:.0f} MB = {w:.2f}", "met": v <= 1 / 3 and w <= 1 / 3})
    if e and lim:
        v = e["seconds"] / lim["seconds"]
        out.append({"target": "eochips within 1.5x of the limit's time", "measured": f"{e['seconds']:.1f} vs {lim['seconds']:.1f} s = {v:.2f}x", "met": v <= 1.5})
    if e:
        out.append({"target": "eochips bytes sent <= 1.1x the COG tiles the chips touch", "measured": f"{e['bytes_sent_mb']:.0f} / {e['touched_tiles_mb']:.0f} MB = {e['bytes_ratio']:.2f}", "met": e["bytes_ratio"] <= 1.1})
    return out


def table(rows: list[dict], tg: list[dict]) -> str:
    md = ("| contender | chips (kept, files) | runs | seconds (min-max) | chips/s | cores busy | peak MB: largest RSS / tree PSS "
          "| MB sent | / touched tiles | requests |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        md += (f"| {r['contender']} | {r['chips']} ({r['kept']}, {r['files']}) | {r['runs']} | {r['seconds']:.1f} "
               f"({r['seconds_min_max'][0]:.1f}-{r['seconds_min_max'][1]:.1f}) | {r['chips_per_s']:.2f} | {r['cores_busy']:.2f} "
               f"| {r['peak_rss_mb']:.0f} / {r['peak_pss_sum_mb']:.0f} | {r['bytes_sent_mb']:.0f} | {r['bytes_ratio']:.2f} | {r['requests']} |\n")
    md += "\n| contender | MB sent / touched: S2 10 m | S2 20 m | S1 | DEM |\n|---|---|---|---|---|\n"
    for r in rows:
        k = r.get("bytes_ratio_by_kind", {})
        cell = [f"{k[n]['sent_mb']:.0f} / {k[n]['touched_mb']:.0f} = {k[n]['ratio']:.2f}" if n in k else "" for n in ("s2_10m", "s2_20m", "s1", "dem")]
        md += f"| {r['contender']} | " + " | ".join(cell) + " |\n"
    md += targets_md(tg)
    return md


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="eochips Clay datacube benchmark")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=HERE / ".cache", help="workload files (about 2 GB under clay/, reused)")
    ap.add_argument("--contenders", nargs="*", default=CONTENDERS)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    root = args.cache / "clay"
    clay_workload.build_files(root)
    t_files = time.perf_counter()
    server = Server(args.cache)
    scratch = Path(tempfile.mkdtemp(prefix="eochips-clay-"))
    records: list[dict] = []
    try:
        m = clay_workload.build(root, server.urls["loopback"])
        touched = clay_workload.touched_bytes(m)
        for rnd in range(args.runs):
            cons = list(args.contenders)
            k = rnd % len(cons)
            for con in cons[k:] + cons[:k]:
                server.reset()
                r = run_one(con, m, scratch)
                st = server.stats()
                r.update(contender=con, round=rnd, bytes=st["bytes"], requests=st["requests"], connections=st["connections"],
                         bytes_by_path=st.get("by_path", {}))
                records.append(r)
                print(f"[{time.perf_counter() - t_start:7.1f}s] round {rnd + 1} {con:8s} {r['wall_s']:6.1f}s "
                      f"{r['chips'] / r['wall_s']:6.2f} chips/s kept {r['kept']} rss {r['peak_rss_mb']:5.0f}/"
                      f"{r['peak_pss_sum_mb']:5.0f} MB sent {st['bytes'] / 1e6:7.1f} MB", flush=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        server.stop()
    agreement = {}
    try:
        if {"seed", "eochips"} <= {r["contender"] for r in records}:
            ks = {r["contender"]: r["kept_n"] for r in records if r["round"] == 0}
            agreement = {"same_kept_chips": ks["seed"] == ks["eochips"],
                         "only_seed": sorted(set(ks["seed"]) - set(ks["eochips"])),
                         "only_eochips": sorted(set(ks["eochips"]) - set(ks["seed"])),
                         "sample_pixels": compare(scratch, "seed", "eochips")}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(records, touched["total"])
    for row in rows:
        first = next(r for r in records if r["contender"] == row["contender"])
        row["bytes_ratio_by_kind"] = by_kind(m, first["bytes_by_path"], touched)
    tg = targets(rows)
    result = {
        "machine": {"cores": CORES, "python": sys.version.split()[0]},
        "protocol": {"runs": args.runs, "network": "loopback", "eochips_workers": EOCHIPS_WORKERS,
                     "seed_dask": "threaded scheduler, 2 threads", "files_build_s": round(t_files - t_start, 1),
                     "total_s": round(time.perf_counter() - t_start, 1)},
        "workload": {"tile": m["tile"], "chips": len(m["chips"]), "chip_px": m["chip"], "facts": m["facts"],
                     "touched_tiles_bytes": touched},
        "results": rows, "targets": tg, "seed_vs_eochips": agreement,
        "runs": [{k: v for k, v in r.items() if k != "rss_by_process_mb"} for r in records],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    tmp = args.results / "clay.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(args.results / "clay.json")
    md = table(rows, tg)
    (args.results / "clay.md").write_text(md)
    readme = HERE / "README.md"
    text = readme.read_text()
    a, b = "<!-- clay-results -->", "<!-- /clay-results -->"
    if a in text and b in text and args.results.resolve() == (HERE / "results").resolve():
        readme.write_text(text[:text.index(a) + len(a)] + "\n" + md + text[text.index(b):])
    print(md)
    if agreement:
        print("seed vs eochips:", json.dumps(agreement)[:2000])
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
