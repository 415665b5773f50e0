"""The BigEarthNet patches benchmark (issue 13, reference pipeline 4): eochips' ``bigearthnet``
recipe, the obvious per-patch script, the read limit and the unavoidable writes, on one
full-size Sentinel-2 L2A tile (8,281 patches of 1200 m, 12 bands at 10/20/60 m) and a CLC-like
GeoPackage of more than 100,000 polygons, all in one run (``make bench`` calls it after
``mosaic.py``).

    python benchmarks/bigearthnet.py [--runs 1] [--contenders eochips script limit writes labels] [--cache DIR]

The workload (``bigearthnet_workload.py``) is read from local files (the item from a local
static catalog): the read limit reads the same files, so the ratios are about the work, not a
server sharing the 2 cores. Each contender is its own process tree, measured by
``run.measure`` (wall and CPU seconds, peak RSS of the largest process, of the tree summed,
the tree's PSS); the order is rotated each round. eochips' band files and reference maps are
compared with the script's on a sample of patches (pixel for pixel), and the kept patches
(by position) in full. Writes ``benchmarks/results/bigearthnet.json`` and ``bigearthnet.md``
and puts the table into ``benchmarks/README.md`` between the ``<!-- bigearthnet-results -->``
markers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import bigearthnet_workload as bw  # noqa: E402
from mosaic import git_rev, machine  # noqa: E402
from run import EOCHIPS, PY, by_contender, measure, targets_md  # noqa: E402

CONTENDERS = ["eochips", "script", "limit", "writes", "labels"]
EOCHIPS_WORKERS = 2  # eochips' default on this 2-core machine (one per core)
RSS_LIMIT_MB = 1024.0
SCRIPT_ROWS = 8  # the per-patch script's rows in `make bench` (728 patches: its full 8,281 take about 20 minutes here)
SAMPLE = 150  # patches compared pixel for pixel
PATCH_RE = re.compile(r"_(\d{2})_(\d{2})$")


def classes() -> dict[str, int]:
    """The stand-in recipe's ``labels.classes``: CLC code (text) -> class id 1..44 (the codes'
    order); class 0 = no polygon (the recipe's ``nodata_class``)."""
    return {str(c): k + 1 for k, c in enumerate(bw.CLC_CODES)}


def unlabeled_ids() -> list[int]:
    """The stand-in's class ids of the UNLABELED codes, and 0 (no polygon: BigEarthNet's 999)."""
    c = classes()
    return [0] + [c[str(k)] for k in bw.UNLABELED]


def builtin_recipe() -> dict | None:
    """eochips' built-in ``bigearthnet`` recipe as a dict, or None (not merged yet)."""
    import yaml

    p = HERE.parent / "src" / "eochips" / "recipes" / "bigearthnet.yaml"
    return yaml.safe_load(p.read_text()) if p.exists() else None


def aoi() -> dict:
    """The AOI: the tile's square 100 m inside its edges (it only chooses the scene: the units
    are every full patch of the scene grid)."""
    return {"bbox": [bw.X0 + 100.0, bw.Y0 - bw.SIDE_M + 100.0, bw.X0 + bw.SIDE_M - 100.0, bw.Y0 - 100.0], "crs": bw.CRS}


def recipe(m: dict) -> tuple[dict, str]:
    """The recipe eochips runs and what it is.

    The built-in ``bigearthnet`` (when merged) with this workload's catalog and vector file;
    until then a stand-in that runs on today's main: the shape of the preamble's recipe without
    the parts other helpers add (``labels.burn: value`` / ``fill`` / ``table``, the ``{product}``
    id field, the ``tile-ring`` split, the ``bigearthnet`` and ``archive`` finalizers): vector
    labels via ``classes`` (CLC code -> id 1..44, uint8, 0 = uncovered), the label-fraction
    filter on the UNLABELED ids, unit ids ``{grid}_{col:02d}_{row:02d}``."""
    b = builtin_recipe()
    if b:
        b = json.loads(json.dumps(b))
        b["sources"]["s2"]["search"]["catalog"] = m["catalog"]
        b["sources"]["s2"]["search"].pop("auth", None)
        b["sources"]["s2"]["search"]["auth"] = "none"
        b["labels"]["vector"] = m["vector"]
        b["aoi"] = aoi()  # the recipe's ${AOI} tile file: here the workload's tile
        for k in ("datetime", "cloud_cover"):  # the recipe's Earth Search query defaults: the workload has one item
            b["sources"]["s2"]["search"].pop(k, None)
        meta = b.get("dataset", {}).get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("countries"), str) and "${" in meta["countries"]:
            meta["countries"] = str(bw.REAL / "naturalearth_lowres" / "naturalearth_lowres.shp")
        return b, "built-in bigearthnet.yaml"
    r = {
        "version": 2, "name": "bigearthnet",
        "aoi": aoi(),
        "sources": {"s2": {
            "search": {"catalog": m["catalog"], "collections": ["sentinel-2-l2a"], "auth": "none"},
            "profile": "sentinel-2-l2a-earthsearch",
            "bands": [{"name": b, "asset": bw.ES_ASSET[b], "resolution": float(bw.BAND_RES[b])} for b in bw.BANDS],
            "resampling": "nearest",
            "selection": {"kind": "all"},
        }},
        "grid": {"kind": "scene", "source": "s2", "resolution": 10},
        "units": {"kind": "chip", "size_m": bw.PATCH_M, "resolution_groups": True, "extent": "grid",
                  "id": "{grid}_{col:02d}_{row:02d}"},
        "masks": {"sources": [{"kind": "scl", "source": "s2", "cloud_classes": [8, 9, 10], "shadow_classes": [3],
                               "snow_classes": [11], "nodata_classes": [0]}]},
        "labels": {"vector": m["vector"], "class_field": bw.CLC_FIELD, "classes": classes(), "nodata_class": 0},
        "filters": [{"kind": "nodata", "max_pixels": 0},
                    {"kind": "label-fraction", "classes": unlabeled_ids(), "max_fraction": 0.25, "strict": True}],
        "output": {"layout": {"kind": "per-band", "name": "{unit}_{band}.tif", "path": "patches/{grid}/{unit}",
                              "labels": "{unit}_reference_map.tif"}},
        "dataset": {"split": {"kind": "random"}, "finalizers": ["index", "split", "stats", "summary", "manifest"]},
    }
    return r, "stand-in (today's main: classes ids, no burn/table/tile-ring/bigearthnet/archive)"


def eochips_files(out: Path) -> dict[tuple[int, int], Path]:
    """eochips' patch folders by ``(col, row)`` (from the unit id's ``_CC_RR`` suffix)."""
    got = {}
    for f in out.rglob("*_reference_map.tif"):
        unit = f.name[: -len("_reference_map.tif")]
        mm = PATCH_RE.search(unit)
        if mm:
            got[(int(mm.group(1)), int(mm.group(2)))] = f.parent
    return got


def script_files(out: Path) -> dict[tuple[int, int], Path]:
    got = {}
    for d in out.iterdir():
        mm = PATCH_RE.search(d.name)
        if d.is_dir() and mm:
            got[(int(mm.group(1)), int(mm.group(2)))] = d
    return got


def _read(d: Path, suffix: str):
    import rasterio

    fs = list(d.glob(f"*_{suffix}.tif"))
    if len(fs) != 1:
        return None, None
    with rasterio.open(fs[0]) as ds:
        return ds.read(1), (ds.transform, ds.crs.to_epsg(), ds.dtypes[0])


def compare(eo: Path, sc: Path, n: int = SAMPLE, seed: int = 1, rows: int | None = None) -> dict:
    """eochips' outputs against the script's: the kept patches (by position), and on ``n``
    patches kept by both, every band file and the reference map pixel for pixel (eochips'
    class ids mapped back to CLC codes, 0 -> 999), plus the grid (transform, EPSG) of each file."""
    import numpy as np

    a, b = eochips_files(eo), script_files(sc)
    if rows:  # the script ran on the first rows only: compare there
        a = {k: v for k, v in a.items() if k[1] < rows}
    both = sorted(set(a) & set(b))
    sample = random.Random(seed).sample(both, min(n, len(both)))
    inv = {v: int(k) for k, v in classes().items()}
    lut = np.full(256, 999, np.uint16)
    for k, v in inv.items():
        lut[k] = v
    bad_bands: dict[str, int] = {}
    bad_grid, bad_labels, label_px = 0, 0, 0
    for pos in sample:
        for band in bw.BANDS:
            x, gx = _read(a[pos], band)
            y, gy = _read(b[pos], band)
            if x is None or y is None or x.shape != y.shape or not (x == y).all():
                bad_bands[band] = bad_bands.get(band, 0) + 1
            elif gx[:2] != gy[:2]:
                bad_grid += 1
        x, _ = _read(a[pos], "reference_map")
        y, _ = _read(b[pos], "reference_map")
        if x is None or y is None or x.shape != y.shape:
            bad_labels += 1
            continue
        codes = lut[x] if x.dtype == np.uint8 else x
        d = int((codes != y).sum())
        label_px += d
        bad_labels += d > 0
    return {"kept_eochips": len(a), "kept_script": len(b), "kept_both": len(both), "only_eochips": len(set(a) - set(b)),
            "only_script": len(set(b) - set(a)), "sampled": len(sample), "band_mismatches": bad_bands,
            "grid_mismatches": bad_grid, "label_mismatch_patches": bad_labels, "label_mismatch_px": label_px}


def run_one(con: str, m: dict, scratch: Path, recipe_path: Path, script_rows: int | None = None) -> dict:
    out = scratch / con
    shutil.rmtree(out, ignore_errors=True)
    if con == "eochips":
        state = Path(tempfile.mkdtemp(prefix="state-", dir=scratch))
        env = dict(os.environ, EOCHIPS_STATE_DIR=str(state))
        r = measure([EOCHIPS, "run", str(recipe_path), "--output", str(out), "--workers", str(EOCHIPS_WORKERS),
                     "--no-progress"], env)
        s = json.loads((out / "summary.json").read_text())
        r.update(patches=s.get("units_total"), kept=s.get("kept"), dropped=s.get("dropped"))
        r["inner_seconds"] = None
    else:
        args = [PY, str(HERE / "bigearthnet_contenders.py"), con, m["manifest"], str(out)]
        if con == "labels":
            cp = scratch / "classes.json"
            cp.write_text(json.dumps(classes()))
            args.append(str(cp))
        env = dict(os.environ, EOCHIPS_BENCH_ROWS=str(script_rows)) if con == "script" and script_rows else None
        r = measure(args, env)
        got = json.loads(r["stdout"].strip().splitlines()[-1])
        r.update({k: v for k, v in got.items() if k != "seconds"}, inner_seconds=got["seconds"])
    r.pop("stdout", None)
    return r


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for con, rs in by_contender(records, CONTENDERS):
        walls = [r["wall_s"] for r in rs]
        wall = statistics.median(walls)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        inner = [r["inner_seconds"] for r in rs if r.get("inner_seconds") is not None]
        n = rs[0].get("patches") or len(bw.patch_ids())
        rows.append({
            "contender": con, "patches": n, "kept": rs[0].get("kept"), "dropped": rs[0].get("dropped"), "runs": len(rs),
            "seconds": round(wall, 2), "seconds_min_max": [round(min(walls), 2), round(max(walls), 2)],
            "inner_seconds": round(statistics.median(inner), 2) if inner else None,
            "patches_per_s": round(n / wall, 2), "cpu_s": round(cpu, 1), "cores_busy": round(cpu / wall, 2),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
            "peak_rss_sum_mb": round(statistics.median(r["peak_rss_sum_mb"] for r in rs), 1),
            "peak_pss_sum_mb": round(statistics.median(r["peak_pss_sum_mb"] for r in rs), 1),
            **({k: rs[0][k] for k in ("index_seconds", "burn_seconds") if k in rs[0]}),
        })
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 13's targets: eochips >= 3x the script's patches/s; eochips within 1.5x of the read
    limit + the unavoidable writes (the limit's process wall + the writes' timed seconds);
    label rasterisation < 1/4 of the total time; peak RSS (process tree) < 1 GB."""
    by = {r["contender"]: r for r in rows}
    e, s, lim, w, lab = (by.get(k) for k in ("eochips", "script", "limit", "writes", "labels"))
    out = []
    if e and s:
        v = e["patches_per_s"] / s["patches_per_s"]
        out.append({"target": "eochips >= 3x the per-patch script's patches/s",
                    "measured": f"{e['patches_per_s']:.1f} vs {s['patches_per_s']:.1f} patches/s = {v:.2f}x", "met": v >= 3})
    if e and lim and w:
        floor = lim["seconds"] + w["inner_seconds"]
        v = e["seconds"] / floor
        out.append({"target": "eochips within 1.5x of the read limit + the unavoidable writes",
                    "measured": f"{e['seconds']:.1f} s vs {lim['seconds']:.1f} + {w['inner_seconds']:.1f} = {floor:.1f} s: {v:.2f}x",
                    "met": v <= 1.5})
    if e and lab:
        v = lab["inner_seconds"] / e["seconds"]
        # eochips labels twice: the plan's pre-scan (index + every patch) and the workers (an index each + every patch)
        cpu = ((1 + EOCHIPS_WORKERS) * lab["index_seconds"] + 2 * lab["burn_seconds"]) / e["cpu_s"]
        out.append({"target": "label rasterisation for the whole tile < 1/4 of the total time",
                    "measured": (f"labels stage {lab['inner_seconds']:.1f} s in one process (index {lab['index_seconds']:.1f} s + "
                                 f"{lab['patches']:,} burns {lab['burn_seconds']:.1f} s) = {v:.2f} of eochips' {e['seconds']:.1f} s wall; "
                                 f"as CPU (the plan's pre-scan and {EOCHIPS_WORKERS} workers: {1 + EOCHIPS_WORKERS} indexes, every patch burnt twice) "
                                 f"{cpu:.2f} of its {e['cpu_s']:.0f} CPU s"),
                    "met": v < 0.25})
    if e:
        out.append({"target": "eochips peak RSS < 1 GB",
                    "measured": f"process tree {e['peak_rss_sum_mb']:.0f} MB (PSS {e['peak_pss_sum_mb']:.0f}, largest process "
                                f"{e['peak_rss_mb']:.0f})", "met": e["peak_rss_sum_mb"] < RSS_LIMIT_MB})
    return out


def table(rows: list[dict], tg: list[dict]) -> str:
    base = next((r for r in rows if r["contender"] == "script"), None)
    md = ("| contender | patches (kept) | runs | seconds (min-max) | timed inside | patches/s | vs script | cores busy "
          "| peak MB: largest RSS / tree RSS / tree PSS |\n|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        vs = f"{r['patches_per_s'] / base['patches_per_s']:.2f}x" if base else ""
        inner = f"{r['inner_seconds']:.1f}" if r["inner_seconds"] is not None else ""
        kept = r["kept"] if r["kept"] else "-"
        md += (f"| {r['contender']} | {r['patches']:,} ({kept}) | {r['runs']} | {r['seconds']:.1f} "
               f"({r['seconds_min_max'][0]:.1f}-{r['seconds_min_max'][1]:.1f}) | {inner} | {r['patches_per_s']:.1f} | {vs} "
               f"| {r['cores_busy']:.2f} | {r['peak_rss_mb']:.0f} / {r['peak_rss_sum_mb']:.0f} / {r['peak_pss_sum_mb']:.0f} |\n")
    md += targets_md(tg)
    return md


def agreement_target(ag: dict, script_rows: int) -> dict:
    ok = not ag["band_mismatches"] and not ag["grid_mismatches"] and not ag["label_mismatch_patches"] \
        and ag["only_eochips"] == 0 and ag["only_script"] == 0
    where = f"in the script's {script_rows} rows: " if script_rows < bw.N_PATCH else ""
    return {"target": "eochips' patches = the script's (kept set; bands, grids and reference maps on a sample)",
            "measured": (f"{where}kept {ag['kept_eochips']:,} / {ag['kept_script']:,} (only eochips {ag['only_eochips']}, "
                         f"only script {ag['only_script']}); {ag['sampled']} patches x 12 bands: "
                         f"{sum(ag['band_mismatches'].values())} differ; reference maps: {ag['label_mismatch_patches']} "
                         f"differ ({ag['label_mismatch_px']} px)"),
            "met": ok}


def finish(result: dict, results: Path) -> str:
    """Add the targets to ``result``, write ``bigearthnet.json`` / ``.md`` under ``results`` (and
    the README's table when ``results`` is ``benchmarks/results``); return the markdown."""
    rows = result["results"]
    tg = targets(rows)
    if result.get("agreement"):
        tg.append(agreement_target(result["agreement"], result["protocol"]["script_rows"]))
    result["targets"] = tg
    results.mkdir(parents=True, exist_ok=True)
    tmp = results / "bigearthnet.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(results / "bigearthnet.json")
    md = table(rows, tg)
    mc_ = result["machine"]
    loads = ", ".join(f"{r['contender']} {r['load_avg_before']}" for r in result["runs"])
    md += (f"\ngit {result['git_rev']}; recipe: {result['protocol']['recipe']}; {mc_['cores']} cores ({mc_['cpu']}, "
           f"{mc_['memory_gb']} GB); total {result['protocol']['total_s']:.0f} s; 1-min load average before each run: {loads}\n")
    (results / "bigearthnet.md").write_text(md)
    readme = HERE / "README.md"
    text = readme.read_text()
    a, b = "<!-- bigearthnet-results -->", "<!-- /bigearthnet-results -->"
    if a in text and b in text and results.resolve() == (HERE / "results").resolve():
        readme.write_text(text[:text.index(a) + len(a)] + "\n" + md + text[text.index(b):])
    return md


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="eochips BigEarthNet patches benchmark")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=bw.DEFAULT_CACHE,
                    help="workload files (about 1.2 GB under bigearthnet/, reused); default $EOCHIPS_BENCH_CACHE or /tmp/eochips-bench-cache")
    ap.add_argument("--contenders", nargs="*", default=CONTENDERS, choices=CONTENDERS)
    ap.add_argument("--sample", type=int, default=SAMPLE, help="patches compared pixel for pixel")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--script-rows", type=int, default=SCRIPT_ROWS, help=(
        "the per-patch script runs on the first SCRIPT_ROWS patch rows (91 patches each; its cost is per patch, so its "
        "patches/s is a rate; 0: all 91 rows)"))
    ap.add_argument("--rows", type=int, default=None, help="smoke run: only the first ROWS patch rows (eochips: an AOI over them)")
    ap.add_argument("--render", action="store_true", help="only re-render the tables from RESULTS/bigearthnet.json")
    args = ap.parse_args(argv)
    if args.render:
        print(finish(json.loads((args.results / "bigearthnet.json").read_text()), args.results))
        return
    if args.rows:
        os.environ["EOCHIPS_BENCH_ROWS"] = str(args.rows)
    t_start = time.perf_counter()
    m = bw.build(args.cache / "bigearthnet")
    t_files = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="eochips-bigearthnet-", dir=args.cache))
    rec, rec_kind = recipe(m)
    if args.rows:  # the smoke run: the first rows of patches (an AOI 1 m inside them)
        y1 = bw.Y0 - 1.0
        rec["aoi"] = {"bbox": [bw.X0 + 1.0, bw.Y0 - args.rows * bw.PATCH_M + 1.0, bw.X0 + bw.N_PATCH * bw.PATCH_M - 1.0, y1],
                      "crs": bw.CRS}
        rec["units"]["extent"] = "aoi"
        rec["units"]["min_aoi_fraction"] = 0.9
        rec_kind += f", smoke: {args.rows} rows"
    import yaml

    recipe_path = scratch / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(rec, sort_keys=False))
    records: list[dict] = []
    agreement = None
    try:
        cons = [c for c in CONTENDERS if c in args.contenders]
        for rnd in range(args.runs):
            k = rnd % len(cons)
            for con in cons[k:] + cons[:k]:
                load = round(os.getloadavg()[0], 2)
                r = run_one(con, m, scratch, recipe_path, args.script_rows)
                r.update(contender=con, round=rnd, load_avg_before=load)
                records.append(r)
                print(f"[{time.perf_counter() - t_start:7.1f}s] round {rnd + 1} {con:8s} {r['wall_s']:7.1f}s "
                      f"inner {r.get('inner_seconds') or 0:7.1f}s kept {r.get('kept')} rss {r['peak_rss_mb']:5.0f}/"
                      f"{r['peak_rss_sum_mb']:5.0f}/{r['peak_pss_sum_mb']:5.0f} MB load {load}", flush=True)
                if con in ("limit", "writes", "labels"):
                    shutil.rmtree(scratch / con, ignore_errors=True)
            if rnd == 0 and (scratch / "eochips").exists() and (scratch / "script").exists():
                agreement = compare(scratch / "eochips", scratch / "script", args.sample, rows=args.script_rows or None)
                print("agreement:", json.dumps(agreement), flush=True)
            for con in ("eochips", "script"):
                shutil.rmtree(scratch / con, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarise(records)
    result = {
        "machine": machine(), "git_rev": git_rev(),
        "protocol": {"runs": args.runs, "script_rows": args.script_rows or bw.N_PATCH, "io": "local files (static catalog on disk)",
                     "eochips_workers": EOCHIPS_WORKERS, "recipe": rec_kind, "threads_limit_writes": 4,
                     "files_build_s": round(t_files - t_start, 1), "total_s": round(time.perf_counter() - t_start, 1)},
        "workload": {"tile": bw.TILE, "epsg": bw.EPSG, "patches": len(bw.patch_ids()), "item": m["item_id"],
                     "facts": m["facts"]},
        "recipe": rec, "results": rows, "agreement": agreement,
        "runs": [{k: v for k, v in r.items() if k != "rss_by_process_mb"} for r in records],
    }
    print(finish(result, args.results))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
