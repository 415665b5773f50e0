"""Engine v2 against engine v1 on the benchmark workload, interleaved in one run.

    git worktree add /tmp/eochips-v1 debc942          # engine v1
    python benchmarks/ab_v1.py --v1-src /tmp/eochips-v1/src [--runs 3] [--only seed-loopback ...]

Each case of ``run.py`` (full-size real-pixel HLS granules behind the byte-counting server) is
built by v2 (this checkout) and by v1 (imported from ``--v1-src`` with the same Python and
packages), 2 workers each, in alternating order per round. v1 reads the same case as a
version-1 recipe (its own format). Prints per case the median wall seconds and bytes sent of
each, and v1 / v2 ratios; writes ``results/ab-v1.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402
import workload  # noqa: E402


def v1_recipe(v2: dict) -> dict:
    """The version-1 form of a benchmark case's recipe (engine v1 cannot read version 2)."""
    src = v2["sources"]["hls"]
    return {
        "name": v2["name"], "aoi": v2["aoi"], "search": src["search"], "profile": src["profile"], "bands": src["bands"],
        "grid": {"label_raster": v2["grid"]["path"], "chip_size": v2["units"]["size"],
                 "min_aoi_fraction": v2["units"]["min_aoi_fraction"]},
        "selection": {"strategy": "first-middle-last", "unit": "tile", "min_scenes": 3},
        "qa": {"bad_fmask_bits": ["cirrus", "cloud", "shadow", "snow_ice"], "max_bad_pct": 5, "max_nodata_pixels": 0},
        "labels": {"reclass": "cdl-13", "unknown_class": 0, "max_nodata_pixels": 0},
        "reading": {"resampling": "bilinear", "qa_resampling": "nearest"},
        "output": {"layout": "seed-001", "compress": "deflate"},
        "dataset": {"split": {"seed": 42, "train_fraction": 0.8}},
    }


def main(argv=None) -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--v1-src", type=Path, required=True, help="src/ folder of an engine v1 checkout (commit debc942)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=["seed-loopback", "dense-loopback", "seed-proxy"])
    ap.add_argument("--cache", type=Path, default=HERE / ".cache")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    workload.build_base(args.cache)
    server = bench.Server(args.cache)
    scratch = Path(tempfile.mkdtemp(prefix="eochips-ab-"))
    runs: list[dict] = []
    try:
        wl = workload.build(args.cache, server.urls["loopback"], server.urls["proxy"])
        v1_files = {}
        for case in args.only:
            v2 = yaml.safe_load(Path(wl["recipes"][case]).read_text())
            p = scratch / f"v1-{case}.yaml"
            p.write_text(yaml.safe_dump(v1_recipe(v2)))
            v1_files[case] = p
        for rnd in range(args.runs):
            for case in args.only:
                order = ["v2", "v1"] if (rnd % 2 == 0) else ["v1", "v2"]
                for version in order:
                    out = scratch / f"{version}-{case}"
                    shutil.rmtree(out, ignore_errors=True)
                    recipe = wl["recipes"][case] if version == "v2" else str(v1_files[case])
                    env = dict(os.environ, EOCHIPS_STATE_DIR=str(scratch / "state"))
                    if version == "v1":
                        env["PYTHONPATH"] = str(args.v1_src)
                    cmd = [bench.PY, "-m", "eochips.cli", "run", recipe, "--output", str(out), "--workers", "2", "--no-progress"]
                    server.reset()
                    m = bench.measure(cmd, env)
                    st = server.stats()
                    kept = json.loads((out / "summary.json").read_text())["kept"]
                    runs.append({"case": case, "version": version, "round": rnd, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"],
                                 "bytes": st["bytes"], "kept": kept})
                    print(f"round {rnd + 1} {case:15s} {version} {m['wall_s']:6.1f}s cpu {m['cpu_s']:6.1f}s "
                          f"sent {st['bytes'] / 1e6:7.1f} MB kept {kept}", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {}
    for case in args.only:
        med = {v: {k: statistics.median(r[k] for r in runs if r["case"] == case and r["version"] == v)
                   for k in ("wall_s", "cpu_s", "bytes", "kept")} for v in ("v1", "v2")}
        summary[case] = {**med, "v1_over_v2_wall": med["v1"]["wall_s"] / med["v2"]["wall_s"],
                         "v1_over_v2_bytes": med["v1"]["bytes"] / med["v2"]["bytes"]}
        print(f"{case:15s} v1 {med['v1']['wall_s']:6.1f}s  v2 {med['v2']['wall_s']:6.1f}s  v1/v2 wall "
              f"{summary[case]['v1_over_v2_wall']:.2f}  bytes {summary[case]['v1_over_v2_bytes']:.3f}  kept "
              f"{med['v1']['kept']:.0f}/{med['v2']['kept']:.0f}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ab-v1.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
