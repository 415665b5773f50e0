"""Scale of the plan: wall time and peak RSS of ``eochips plan`` at 10k / 100k / 1M units.

Each case plans a ``crs`` grid at 1 m over the real Exeter HLS granules with small units (the
unit size sets the count) in a fresh process, with ``--dry-run`` (no file) and with a plan
written to a temporary folder (``plan/units.parquet``). Peak RSS is the child's
``ru_maxrss``; the same cases run on an older checkout (``--base``, e.g. a ``git worktree`` of
main) in the same run give the ratios.

    python benchmarks/plan_scale.py --base /work/wt-empties-base [--sizes 10000 100000 1000000]

Needs ``../shared`` (the real Exeter files). Prints a Markdown table and writes
``benchmarks/results/plan_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

# the Exeter granules' common valid area in EPSG:32630 (inside every footprint)
X0, Y0, W, H = 461000.0, 5621800.0, 6000.0, 5000.0


def setup(work: Path) -> Path:
    """Build the real HLS granules and a static catalog once (``tests/conftest.py``)."""
    from conftest import build_hls_granules

    cat = work / "items.json"
    if cat.is_file():
        return cat
    items = build_hls_granules(work / "hls")
    for it in items:
        for a in it["assets"].values():
            a["href"] = str(work / "hls" / a["href"])
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return cat


def recipe(cat: Path, n_units: int) -> dict:
    """A recipe whose plan has about ``n_units`` units (square units of ``size`` 1 m pixels)."""
    size = max(1, int(math.sqrt(W * H / n_units)))
    return {
        "version": 2, "name": "plan-scale",
        "aoi": {"bbox": [X0, Y0 - H, X0 + W, Y0], "crs": "EPSG:32630"},
        "sources": {"hls": {"search": {"catalog": str(cat), "collections": ["HLSS30_2.0"], "auth": "none",
                                       "datetime": "2021-06-01/2021-07-31", "cloud_cover": {"max": 100}},
                            "profile": "hls-s30", "bands": ["blue"],
                            "selection": {"kind": "least-cloudy", "per": "unit", "coverage_thresholds": [100], "n_scenes": 1}}},
        "grid": {"kind": "crs", "crs": "EPSG:32630", "resolution": 1, "origin": [X0, Y0]},
        "units": {"kind": "chip", "size": size},
        "filters": [{"kind": "nodata", "max_pixels": 0}],
    }


def run_case(src: Path, rec: Path, dry: bool) -> dict:
    import yaml

    out = Path(tempfile.mkdtemp(prefix="plan-scale-")) / "out"
    code = ("import resource, sys, time; from eochips.cli import main; t = time.perf_counter()\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "sys.stderr.write('\\nBENCH %f %d %s\\n' % (time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc))")
    args = [sys.executable, "-c", code, "plan", str(rec), "-o", str(out)] + (["--dry-run"] if dry else [])
    env = dict(os.environ, PYTHONPATH=str(src / "src"), COLUMNS="200")
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH ")]
    if not line:
        raise SystemExit(f"{src}: {proc.stderr[-2000:]}")
    secs, rss_kb, rc = line[-1].split()[1:]
    units = None
    for ln in proc.stdout.splitlines():
        if "units in AOI" in ln:
            units = int("".join(ch for ch in ln.split("units in AOI")[1] if ch.isdigit()))
    warned = any(ln.startswith("warning:") for ln in proc.stderr.splitlines())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    return {"units": units, "plan_seconds": round(float(secs), 2), "process_seconds": round(wall, 2),
            "peak_rss_mb": round(int(rss_kb) / 1024, 1), "exit": rc, "warning": warned, "bytes_written": size,
            "yaml": yaml.safe_load(rec.read_text())["units"]}


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="an older checkout to compare with (its src/ is used)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--work", type=Path, default=HERE / ".cache" / "plan_scale")
    ap.add_argument("--modes", nargs="+", default=["dry-run", "write"], choices=["dry-run", "write"])
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cat = setup(args.work)
    rows = []
    for n in args.sizes:
        rec = args.work / f"recipe-{n}.yaml"
        data = recipe(cat, n)
        rec.write_text(yaml.safe_dump(data))
        for mode in args.modes:
            for name, src in [("this", REPO)] + ([("base", args.base)] if args.base else []):
                r = run_case(src, rec, mode == "dry-run")
                r.update(code=name, mode=mode, target=n)
                rows.append(r)
                print(json.dumps(r), flush=True)
    lines = ["| units | mode | code | plan s | peak RSS MB | warning | exit |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['units']} | {r['mode']} | {r['code']} | {r['plan_seconds']} | {r['peak_rss_mb']} | {r['warning']} | {r['exit']} |")
    if args.base:
        lines += ["", "| units | mode | time ratio (this / base) | RSS ratio (this / base) |", "|---|---|---|---|"]
        for r in rows:
            if r["code"] != "this":
                continue
            b = next((x for x in rows if x["code"] == "base" and x["target"] == r["target"] and x["mode"] == r["mode"]), None)
            if b:
                lines.append(f"| {r['units']} | {r['mode']} | {r['plan_seconds'] / max(b['plan_seconds'], 1e-9):.2f} | "
                             f"{r['peak_rss_mb'] / max(b['peak_rss_mb'], 1e-9):.2f} |")
    print("\n".join(lines))
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "plan_scale.json").write_text(json.dumps({"rows": rows, "table": "\n".join(lines)}, indent=2))


if __name__ == "__main__":
    main()
