"""Dataset finalisation: index, split, band statistics, class weights, plots, manifest.

Files written at the dataset root (seed 001's names where it had them):

- ``index.parquet``: GeoParquet, one row per chip of the plan (geometry in the grid CRS),
  with status (kept / dropped / failed), reason, scene ids and datetimes per time step,
  bad-QA %, nodata count, label histogram, file names and sha256, split.
- ``train_ids.csv`` / ``val_ids.csv`` (column ``ids``): kept chip ids sorted, shuffled with
  ``random.Random(seed)``, first ``int(train_fraction * n)`` train, rest validation.
- ``stats.json``: per band, pooled over dates, mean, population std and the 1.5 / 98.5
  percentiles (seed 001's "min"/"max"), nodata excluded, computed in one streaming pass over
  the chip files with exact integer histograms; class weights (sklearn "balanced"
  ``N / (K * n_c)`` over the classes present, normalised to sum 1, 0 for class 0 and absent
  classes).
- ``class_distribution_{split}.png``: pixels per class, one bar per class.
- ``summary.json`` and ``checksums.sha256`` (sha256sum format, sorted paths, every file but
  itself and ``state.sqlite``).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np

from . import failpoints
from .engine import STATE_FILE, State, state_path
from .plan import class_names, load_plan
from .profiles import get_profile
from .writers import OutputStore

MANIFEST = "checksums.sha256"


def split_ids(ids: list[str], seed: int = 42, train_fraction: float = 0.8) -> tuple[list[str], list[str]]:
    """Seed 001's split: sort, shuffle with ``random.Random(seed)``, cut at ``int(f * n)``."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    k = int(train_fraction * len(order))
    return order[:k], order[k:]


def _percentile_from_hist(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """numpy's default (linear) percentile of the multiset described by a histogram."""
    n = int(counts.sum())
    pos = q / 100.0 * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    cum = np.cumsum(counts)
    vlo = values[np.searchsorted(cum, lo + 1)]
    vhi = values[np.searchsorted(cum, hi + 1)]
    return float(vlo + (vhi - vlo) * (pos - lo))


class BandStats:
    """Streaming per-group statistics of integer bands, exact (histogram based).

    ``add(group, values)`` takes any integer array; fill values must be removed first.
    """

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iu" or self.dtype.itemsize > 2:
            self.values: dict[str, list[np.ndarray]] = {}
        self.hist: dict[str, np.ndarray] = {}

    def add(self, group: str, v: np.ndarray) -> None:
        v = v.ravel()
        if self.dtype.kind in "iu" and self.dtype.itemsize <= 2:
            off = 32768 if self.dtype.kind == "i" else 0
            h = np.bincount(v.astype(np.int64) + off, minlength=65536)
            self.hist[group] = self.hist.get(group, 0) + h
        else:
            self.values.setdefault(group, []).append(v.astype(np.float64))

    def result(self, q: tuple[float, float]) -> dict[str, dict[str, float]]:
        out = {}
        if self.hist:
            off = 32768 if self.dtype.kind == "i" else 0
            vals = np.arange(65536, dtype=np.float64) - off
            for g, h in self.hist.items():
                n = h.sum()
                if n == 0:
                    continue
                mean = float((vals * h).sum() / n)
                var = float((((vals - mean) ** 2) * h).sum() / n)
                out[g] = {"mean": mean, "std": var ** 0.5, "min": _percentile_from_hist(vals, h, q[0]),
                          "max": _percentile_from_hist(vals, h, q[1]), "count": int(n)}
        for g, parts in getattr(self, "values", {}).items():
            v = np.concatenate(parts)
            if v.size:
                out[g] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(np.percentile(v, q[0])),
                          "max": float(np.percentile(v, q[1])), "count": int(v.size)}
        return out


def class_weights(hist: dict[int, int], n_classes: int) -> list[float]:
    """sklearn "balanced" weights over the classes present (class 0 excluded), normalised to
    sum 1, as a list indexed by class id 0..n_classes (0 for class 0 and absent classes)."""
    present = {c: n for c, n in hist.items() if c != 0 and n > 0}
    w = [0.0] * (n_classes + 1)
    if not present:
        return w
    total, k = sum(present.values()), len(present)
    raw = {c: total / (k * n) for c, n in present.items()}
    s = sum(raw.values())
    for c, v in raw.items():
        if c <= n_classes:
            w[c] = v / s
    return w


def finalize(out: str | os.PathLike) -> dict[str, Any]:
    """Finalise the dataset in ``out`` (a folder or URL; see module docstring); return the summary.

    Raises
    ------
    OutputError
        No plan, or a file cannot be written.
    """
    import io

    import geopandas as gpd
    import rasterio
    from rasterio.io import MemoryFile

    store = OutputStore(out)
    store.remove_temporaries()
    plan = load_plan(store)
    r = plan.recipe
    state = State(state_path(store))
    try:
        records = state.all()
    finally:
        state.close()
    kept = sorted(cid for cid, rec in records.items() if rec["status"] == "kept")
    train, val = split_ids(kept, r.dataset.split.seed, r.dataset.split.train_fraction)
    split_of = {**{c: "train" for c in train}, **{c: "validation" for c in val}}

    rows = []
    for cp in sorted(plan.chips, key=lambda c: c.chip.id):
        rec = records.get(cp.chip.id) or {"status": "pending", "reason": "not built", "files": {}, "metrics": {}}
        m = rec["metrics"]
        scenes = m.get("scene_ids") or cp.scene_ids
        files = sorted(rec["files"])
        rows.append({
            "chip_id": cp.chip.id, "row": cp.chip.row, "col": cp.chip.col, "tile": cp.tile,
            "status": rec["status"], "reason": rec["reason"] or "", "split": split_of.get(cp.chip.id),
            "scene_ids": list(scenes),
            "datetimes": m.get("datetimes") or [plan.scenes[s].datetime.isoformat() for s in scenes if s in plan.scenes],
            "bad_qa_pct": m.get("bad_qa_pct"), "nodata_pixels": m.get("nodata_pixels"),
            "label_hist": json.dumps(m.get("label_hist", {}), sort_keys=True),
            "unknown_codes": json.dumps(m.get("unknown_codes") or cp.label_info.get("unknown_codes") or {}, sort_keys=True),
            "mask_fractions": json.dumps(m.get("mask_fractions"), sort_keys=True) if m.get("mask_fractions") else None,
            "mask_scene_ids": list(cp.mask_scene_ids),
            "files": files, "sha256": [rec["files"][n] for n in files],
            "geometry": cp.chip.polygon,
        })
    buf = io.BytesIO()
    gpd.GeoDataFrame(rows, geometry="geometry", crs=plan.grid.crs).to_parquet(buf, index=False)
    store.write_bytes("index.parquet", buf.getvalue())
    store.write_text("train_ids.csv", "ids\n" + "".join(f"{c}\n" for c in train))
    store.write_text("val_ids.csv", "ids\n" + "".join(f"{c}\n" for c in val))
    if r.cloud_masks is not None:
        lines = [f"{c['file']},{c['cloud_pct']}\n" for cid in kept for c in records[cid]["metrics"].get("cmasks", [])]
        store.write_text(r.cloud_masks.tracker, "fmask_name,cloud_pct\n" + "".join(sorted(lines)))
    failpoints.hit("finalize:after-index")

    # statistics over the chosen chips, one streaming pass over the written files
    profile = get_profile(r.profile)
    stats_ids = train if r.dataset.stats_on == "train" else kept
    bs = BandStats(profile.dtype)
    hist_total: dict[int, int] = {}
    bands = [profile.asset_key(b) for b in r.bands]
    for cid in stats_ids:
        image = next(f for f in records[cid]["files"] if f.endswith("_merged.tif"))
        src = store.local_path(image) if store.is_local else None
        with (rasterio.open(src) if src else MemoryFile(store.read_bytes(image)).open()) as ds:
            arr = ds.read()
            for i, desc in enumerate(ds.descriptions):
                band = (desc or bands[i % len(bands)]).split("@")[0]
                v = arr[i]
                bs.add(band, v[v != ds.nodata] if ds.nodata is not None else v)
        for c, n in records[cid]["metrics"].get("label_hist", {}).items():
            hist_total[int(c)] = hist_total.get(int(c), 0) + int(n)
    names = class_names(r)
    n_classes = max([*names, *hist_total, 0])
    band_stats = bs.result(tuple(r.dataset.percentiles))
    stats = {
        "computed_on": r.dataset.stats_on, "chips": len(stats_ids),
        "bands": {b: band_stats[b] for b in bands if b in band_stats},
        "class_weights": class_weights(hist_total, n_classes) if r.labels else None,
        "class_pixels": {str(k): v for k, v in sorted(hist_total.items())},
    }
    store.write_text("stats.json", json.dumps(stats, indent=2, sort_keys=True))
    if r.labels:
        for split, ids in (("train", train), ("validation", val)):
            png = _plot_classes([records[c]["metrics"].get("label_hist", {}) for c in ids], names, n_classes,
                                f"{r.name}: {split} ({len(ids)} chips)")
            store.write_bytes(f"class_distribution_{split}.png", png)

    dropped: dict[str, int] = {}
    failed = {}
    for cid, rec in records.items():
        if rec["status"] == "dropped":
            k = (rec["reason"] or "").split(":")[0]
            dropped[k] = dropped.get(k, 0) + 1
        elif rec["status"] == "failed":
            failed[cid] = rec["reason"]
    unknown: dict[str, int] = {}
    for row in rows:
        for code, n in json.loads(row["unknown_codes"]).items():
            unknown[code] = unknown.get(code, 0) + n
    summary = {
        "recipe": r.name, "chips_total": len(plan.chips), "kept": len(kept), "dropped": dropped,
        "failed": len(failed), "failed_reasons": failed, "train": len(train), "validation": len(val),
        "scenes": len(plan.scenes), "unknown_label_codes": unknown,
        "selected_dates": sorted({d[:10] for row in rows if row["status"] == "kept" for d in row["datetimes"]}),
    }
    store.write_text("summary.json", json.dumps(summary, indent=2, sort_keys=True))
    failpoints.hit("finalize:before-manifest")
    write_manifest(store)
    return summary


def _plot_classes(hists: list[dict], names: dict[int, str], n_classes: int, title: str) -> bytes:
    """PNG bytes of a bar chart: pixels per class."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.zeros(n_classes + 1, dtype=np.int64)
    for h in hists:
        for c, n in h.items():
            if int(c) <= n_classes:
                counts[int(c)] += int(n)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * (n_classes + 1)), 4), dpi=100)
    labels = [names.get(i, str(i)) for i in range(n_classes + 1)]
    ax.bar(range(n_classes + 1), counts, color="#4c72b0")
    ax.set_xticks(range(n_classes + 1), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("pixels")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_manifest(store: OutputStore) -> None:
    """Write ``checksums.sha256`` over every file of the store but itself and the state file."""
    skip = {MANIFEST, STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm"}
    lines = [f"{store.sha256(rel)}  {rel}\n" for rel in store.list_files() if rel not in skip]
    store.write_text(MANIFEST, "".join(lines))
