"""Dataset finalisation: finalizers run in the recipe's order (``dataset.finalizers``).

=============  ===================================================================================
finalizer      writes (at the dataset root)
=============  ===================================================================================
``index``      ``index.parquet``: GeoParquet, one row per unit of the plan, geometry in EPSG:4326
               plus the unit's CRS and transform; status, typed reason code, reason, split,
               scenes per source and step with roles and datetimes, measures (nodata pixels, Fmask
               bad %, mask fractions, label histogram), file names, roles and sha256
``split``      ``train_ids.csv`` / ``val_ids.csv`` (column ``ids``), and ``test_ids.csv`` when the
               split has a test part: the kept unit ids of each part of ``dataset.split``
               (:mod:`eochips.dataset.splits`: ``random``, seed 001; ``tile-ring``, BigEarthNet v2)
``stats``      ``stats.json``: per output band (the bands' recipe names, pooled over dates), mean,
               population std, the 1.5 / 98.5 percentiles as seed 001's "min" / "max", the exact
               minimum and maximum, nodata excluded, in one streaming pass over the image files
               in their own dtypes (exact for 8/16-bit integers, float-safe otherwise:
               :mod:`eochips.dataset.stats`); class weights (sklearn "balanced" ``N / (K * n_c)``
               over the classes present, normalised to sum 1, 0 for class 0 and absent classes)
``plots``      ``class_distribution_{split}.png``: pixels per class on a log axis, per class name
               (:mod:`eochips.dataset.plots`)
``tables``     the tables layouts ask for (seed 000's ``fmask_tracker.csv``)
``mosaic``     a mosaic recipe's ``{name}-cloudless.tif``, ``-cloudy.tif``, ``-source.tif`` (COGs assembled
               from the tiles' parts), ``sources.csv`` and ``quicklooks/``
               (:mod:`eochips.dataset.mosaic`); nothing for other recipes
``bigearthnet`` BigEarthNet v2's ``metadata.parquet`` and
               ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``
               (:mod:`eochips.dataset.bigearthnet`)
``summary``    ``summary.json``: counts by status and reason code, dates, unknown label codes; for a
               mosaic recipe its ``mosaic`` section (:func:`eochips.dataset.mosaic.mosaic_summary`)
``card``       ``README.md``: the dataset card (recipe, build date, versions, sources and licences,
               counts, split sizes, band and class tables, how to load it; :mod:`eochips.dataset.card`)
``report``     ``report.html``: one self-contained page (summary, map of the units, class distribution
               per split, quicklooks, drop reasons, scenes; :mod:`eochips.dataset.report`)
``manifest``   ``checksums.sha256`` (sha256sum format, sorted paths, every file but itself, the
               state (``state.sqlite``, the ``state/`` completion markers), ``plan/run.json``
               and ``archive/``)
``archive``    ``archive/{dataset.archive.name}``: a reproducible ``tar`` + zstandard of the
               manifest's files and the manifest, with ``archive/{name}.sha256`` and
               ``archive/manifest.sha256`` (:mod:`eochips.dataset.archive`); only after ``manifest``
=============  ===================================================================================

Every finalizer reads the state through :func:`eochips.engine.open_state`, which takes in the
units' completion markers: a fresh machine can finalize a dataset in object storage.

Shards (``eochips build OUT --shard I/N``, array jobs) are merged here: their completion markers
are the record. A dataset with shard states (``state/shard-I-of-N.sqlite``) is finalised only
when every planned unit has a result of the current plan; otherwise :func:`finalize` stops
(:class:`ShardsIncomplete`, exit 2) naming how many units lack one and their shards, before
anything of the dataset is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import failpoints
from ..config.models import FINALIZERS as FINALIZER_NAMES
from ..engine import MARKERS, STATE_FILE, open_state
from ..errors import OutputError
from ..plan import Plan, class_names, load_plan, make_tasks
from ..reading import error_text
from ..registry import Registry
from ..search import redact, redact_obj
from ..writers import OutputStore
from .splits import SPLITS, has_test_part, make_split, split_ids  # noqa: F401 - split_ids stays importable from here

MANIFEST = "checksums.sha256"


class ShardsIncomplete(OutputError):
    """Units of a sharded build have no result yet (a shard has not run or not finished)."""


def check_shards_done(store: OutputStore, plan: Plan, records: dict[str, dict[str, Any]]) -> None:
    """Refuse to finalise a sharded dataset before every shard has finished (see the module docstring).

    Raises
    ------
    ShardsIncomplete
        Naming how many planned units have no result of the current plan (no completion marker
        or one of another task fingerprint), which shards they belong to
        (:func:`eochips.engine.shard_units`) and the command that builds them.
    """
    from ..engine import shard_states, shard_units

    ran = shard_states(store)
    if not ran:
        return
    tasks = make_tasks(plan, store)
    missing = {t.unit_id for t in tasks if (records.get(t.unit_id) or {}).get("fingerprint") != t.fingerprint}
    if not missing:
        return
    counts = sorted({n for _, n in ran})
    loc = store.location
    head = f"{len(missing)} of {len(tasks)} planned unit(s) of {loc!r} have no result yet"
    if len(counts) == 1:
        n = counts[0]
        lacking = [(i, len(missing.intersection(ids))) for i, ids in enumerate(shard_units(tasks, n))]
        lacking = [(i, k) for i, k in lacking if k]
        shown = ", ".join(f"shard {i}/{n} ({k} unit(s){'' if (i, n) in ran else ', never started'})" for i, k in lacking)
        raise ShardsIncomplete(f"{head}: {shown}; finish them with 'eochips build {loc} --shard {lacking[0][0]}/{n}'"
                               f"{' (and the others listed)' if len(lacking) > 1 else ''}, then run 'eochips finalize {loc}' again")
    shown = ", ".join(f"{i}/{n}" for i, n in ran)
    raise ShardsIncomplete(f"{head}, and shards of different counts ran ({shown}); build the rest with "
                           f"'eochips build {loc}' (unsharded), then run 'eochips finalize {loc}' again")


@dataclass
class Context:
    """What the finalizers share: the store, the plan, the state's records, the kept ids and split."""

    store: OutputStore
    plan: Plan
    records: dict[str, dict[str, Any]]
    kept: list[str]
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # verified sha256 of the kept units' files
    excluded: list[str] = field(default_factory=list)  # kept units the split leaves out (a spatial-blocks buffer)
    stats: dict[str, Any] | None = None  # what the stats finalizer wrote to stats.json

    @property
    def split_of(self) -> dict[str, str]:
        """``{unit id: "train" | "validation" | "test"}`` of the kept units."""
        return {**{c: "train" for c in self.train}, **{c: "validation" for c in self.val}, **{c: "test" for c in self.test}}


Finalizer = Callable[[Context], None]
FINALIZERS = Registry("finalizer")
register = FINALIZERS.register




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


@register("split")
def _split(ctx: Context) -> None:
    ctx.store.write_text("train_ids.csv", "ids\n" + "".join(f"{c}\n" for c in ctx.train))
    ctx.store.write_text("val_ids.csv", "ids\n" + "".join(f"{c}\n" for c in ctx.val))
    if has_test_part(ctx.plan.recipe.dataset.split):
        ctx.store.write_text("test_ids.csv", "ids\n" + "".join(f"{c}\n" for c in ctx.test))


def _index_rows(ctx: Context) -> list[dict[str, Any]]:
    from ..geo import reproject_geometry

    plan, records = ctx.plan, ctx.records
    split_of = ctx.split_of
    rows = []
    for up in sorted(plan.units, key=lambda u: u.key):
        rec = records.get(up.id) or {"status": "pending", "code": "", "reason": "not built", "files": {}, "metrics": {}}
        m = rec["metrics"]
        picks = [(s, t, p) for s, groups in up.groups.items() for t, grp in enumerate(groups) for p in grp]
        files = sorted(rec["files"])
        roles = m.get("file_roles", {})
        g = plan.grids[up.unit.grid].gbox
        crs = g.crs.epsg
        rows.append({
            "unit_id": up.id, "grid": up.unit.grid, "row": up.unit.row, "col": up.unit.col, "tile": up.tile,
            "crs": f"EPSG:{crs}" if crs else g.crs.to_wkt(), "transform": list(tuple(up.unit.gbox.affine)[:6]),
            "status": rec["status"], "reason_code": rec.get("code") or up.code or "", "reason": redact(rec["reason"] or ""),
            "split": split_of.get(up.id),
            "scene_ids": m.get("scene_ids") or [p.scene.id for _, _, p in picks],
            "datetimes": m.get("datetimes") or [p.scene.datetime.isoformat() for _, _, p in picks],
            "scene_sources": m.get("scene_sources") or [s for s, _, _ in picks],
            "scene_steps": m.get("scene_steps") or [t for _, t, _ in picks],
            "scene_roles": m.get("scene_roles") or [p.role for _, _, p in picks],
            "bad_qa_pct": m.get("bad_qa_pct"), "nodata_pixels": m.get("nodata_pixels"), "nan_pixels": m.get("nan_pixels"),
            "value_pixels": m.get("value_pixels"),
            "label_hist": json.dumps(m.get("label_hist", {}), sort_keys=True),
            "label_names": _label_names(plan, up, m),
            "unknown_codes": json.dumps(m.get("unknown_codes") or up.label_info.get("unknown_codes") or {}, sort_keys=True),
            "mask_fractions": json.dumps(m["mask_fractions"], sort_keys=True) if m.get("mask_fractions") else None,
            "files": files, "roles": [roles.get(f, "") for f in files], "sha256": [rec["files"][n] for n in files],
            **_provenance(plan, up, m),
            "geometry": reproject_geometry(up.unit.polygon, g.crs.to_wkt(), "EPSG:4326"),
        })
    return rows


def _label_names(plan: Plan, up, metrics: dict[str, Any]) -> list[str] | None:
    """The unit's multi-labels (``labels.table``): the built unit's ``label_names``, else (dropped at
    plan time) those of its plan-time class counts; None without a table."""
    from ..labels import label_names

    table = plan.recipe.labels.table if plan.recipe.labels is not None else None
    if table is None:
        return None
    if "label_names" in metrics:
        return list(metrics["label_names"])
    pixels = up.label_info.get("class_pixels")
    return label_names(pixels, table) if pixels else None


def _provenance(plan: Plan, up, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per-source columns of one index row: ``ids_{source}`` (its scene ids, all steps), for a
    source matched in time to another (``nearest-in-time``) ``dt_hours_{source}`` (each scene's
    datetime minus its reference scene's, hours: Clay's S1 - S2), and the unit's worst
    ``cloud_fraction`` (cloud + shadow) and ``nodata_fraction`` (0..1) over the mask steps."""
    out: dict[str, Any] = {}
    for s, cfg in plan.recipe.sources.items():
        groups = up.groups.get(s, [])
        out[f"ids_{s}"] = [p.scene.id for grp in groups for p in grp]
        sel = cfg.selection
        if sel.kind == "nearest-in-time":
            refs = up.groups.get(sel.relative_to, [])
            out[f"dt_hours_{s}"] = [round((p.scene.datetime - refs[t][0].scene.datetime).total_seconds() / 3600.0, 4)
                                    for t, grp in enumerate(groups) if t < len(refs) for p in grp]
    fr = metrics.get("mask_fractions") or []
    out["cloud_fraction"] = max((f["cloud"] + f["shadow"] for f in fr), default=None)
    out["nodata_fraction"] = max((f["nodata"] for f in fr), default=None)
    return out


@register("index")
def _index(ctx: Context) -> None:
    import io

    import geopandas as gpd

    buf = io.BytesIO()
    gpd.GeoDataFrame(ctx.rows, geometry="geometry", crs="EPSG:4326").to_parquet(buf, index=False)
    ctx.store.write_bytes("index.parquet", buf.getvalue())
    failpoints.hit("finalize:after-index")


@register("tables")
def _tables(ctx: Context) -> None:
    for lay in ctx.plan.recipe.output.layout:
        if lay.kind == "seed-000-cmask":
            lines = [f"{c['file']},{c['cloud_pct']}\n" for cid in ctx.kept for c in ctx.records[cid]["metrics"].get("cmasks", [])]
            ctx.store.write_text(lay.tracker, "fmask_name,cloud_pct\n" + "".join(sorted(lines)))


def image_files(rec: dict[str, Any]) -> list[str]:
    """A unit record's ``image`` files in channel order (``metrics["file_order"]``, the order the
    layouts wrote them; sorted names for a unit built before eochips recorded it)."""
    roles = rec["metrics"].get("file_roles", {})
    order = rec["metrics"].get("file_order") or sorted(rec["files"])
    return [f for f in order if roles.get(f) == "image"]


_image_files = image_files


def _read_image(store: OutputStore, rel: str, attempts: int = 3) -> tuple[np.ndarray, tuple, tuple]:
    """``(band, y, x)`` pixels, band descriptions and nodata of a dataset file. From object
    storage the object is fetched whole and decoded in memory; a body that does not decode (a
    transfer cut short: seen once from a local S3 server) is fetched again, ``attempts`` times.

    Raises
    ------
    OutputError
        The file still does not decode (named).
    """
    import rasterio
    from rasterio.io import MemoryFile

    if store.is_local:
        with rasterio.open(store.local_path(rel)) as ds:
            return ds.read(), ds.descriptions, ds.nodatavals
    for attempt in range(attempts):
        data = store.read_bytes(rel)
        try:
            with MemoryFile(data) as mem, mem.open() as ds:
                return ds.read(), ds.descriptions, ds.nodatavals
        except rasterio.errors.RasterioError as exc:
            last = exc
    raise OutputError(f"file {rel} of {store.location!r} does not decode as a GeoTIFF after {attempts} reads "
                      f"({error_text(last)}); check the object, then rerun 'eochips finalize'")


@register("stats")
def _stats(ctx: Context) -> None:
    from .stats import BandStatistics

    r = ctx.plan.recipe
    store = ctx.store
    ids = ctx.train if r.dataset.stats_on == "train" else ctx.kept
    bs = BandStatistics()
    hist_total: dict[int, int] = {}
    for cid in ids:
        rec = ctx.records[cid]
        for rel in _image_files(rec):
            arr, descriptions, nodatas = _read_image(store, rel)
            for i, desc in enumerate(descriptions):
                bs.add((desc or f"band{i + 1}").split("@")[0], arr[i], nodatas[i])
        for c, n in rec["metrics"].get("label_hist", {}).items():
            hist_total[int(c)] = hist_total.get(int(c), 0) + int(n)
    names = class_names(r)
    n_classes = max([*names, *hist_total, 0])
    lo, hi = r.dataset.percentiles
    bands = {}
    for name, res in bs.result((lo, hi)).items():
        if res["count"]:
            pct = res["percentiles"]
            bands[name] = {"mean": res["mean"], "std": res["std"], "min": list(pct.values())[0], "max": list(pct.values())[1],
                           "count": res["count"], "minimum": res["minimum"], "maximum": res["maximum"],
                           "percentiles": pct, "exact": res["exact"]}
    stats = {
        "computed_on": r.dataset.stats_on, "chips": len(ids), "bands": bands,
        "note": "min/max are the percentiles of dataset.percentiles (seed 001's names); minimum/maximum are exact; "
                "values are in the files' own encoding (raw DN, see each file's scale/offset)",
        "class_weights": class_weights(hist_total, n_classes) if r.labels else None,
        "class_pixels": {str(k): v for k, v in sorted(hist_total.items())},
    }
    if r.labels is not None and r.labels.table:  # codes (CLC) with a multi-label table: weights per class name
        stats["code_pixels"] = stats["class_pixels"]
        stats.update(multilabel_stats([ctx.records[c]["metrics"].get("label_hist", {}) for c in ids], r.labels.table))
    store.write_text("stats.json", json.dumps(stats, indent=2))


def multilabel_stats(hists: list[dict], table: str) -> dict[str, Any]:
    """Class statistics of a multi-label table (``labels.table``, e.g. ``clc-19``) over units' code
    histograms (``stats.json`` keeps the pixels per code as ``code_pixels``): ``class_weights`` and
    ``class_pixels`` keyed by class name (UNLABELED codes and the
    fill left out; the weights are the balanced ones of :func:`class_weights` over the names' pixels)
    and ``label_units`` (units holding each name: the multi-label frequency), names in table order."""
    from ..labels.tables import MULTI_LABEL_TABLES

    names_of, _ = MULTI_LABEL_TABLES[table]
    order = list(dict.fromkeys(names_of.values()))
    pixels = dict.fromkeys(order, 0)
    units = dict.fromkeys(order, 0)
    for h in hists:
        present = set()
        for c, n in h.items():
            name = names_of.get(int(c))
            if name is not None and int(n):
                pixels[name] += int(n)
                present.add(name)
        for name in present:
            units[name] += 1
    w = class_weights({i + 1: pixels[nm] for i, nm in enumerate(order)}, len(order))
    return {"class_weights": {nm: w[i + 1] for i, nm in enumerate(order)}, "class_pixels": pixels, "label_units": units}


def summarize(ctx: Context) -> dict[str, Any]:
    """The dataset's counts: units by status and reason code, split sizes, dates, unknown codes."""
    dropped: dict[str, int] = {}
    failed = {}
    for cid, rec in ctx.records.items():
        if rec["status"] == "dropped":
            dropped[rec["code"]] = dropped.get(rec["code"], 0) + 1
        elif rec["status"] == "failed":
            failed[cid] = redact(rec["reason"])
    unknown: dict[str, int] = {}
    for row in ctx.rows:
        for code, n in json.loads(row["unknown_codes"]).items():
            unknown[code] = unknown.get(code, 0) + n
    plan = ctx.plan
    return {
        "recipe": plan.recipe.name, "units_total": len(plan.units), "kept": len(ctx.kept), "dropped": dropped,
        "failed": len(failed), "failed_reasons": failed, "train": len(ctx.train), "validation": len(ctx.val),
        **({"test": len(ctx.test)} if has_test_part(plan.recipe.dataset.split) else {}),
        "scenes": sum(len(v) for v in plan.scenes.values()), "grids": len(plan.grids), "unknown_label_codes": unknown,
        "selected_dates": sorted({d[:10] for row in ctx.rows if row["status"] == "kept" for d in row["datetimes"]}),
        **match_summary(plan), **_mosaic_section(ctx),
    }


def _mosaic_section(ctx: Context) -> dict[str, Any]:
    """``{"mosaic": ...}`` for a mosaic recipe (:func:`eochips.dataset.mosaic.mosaic_summary`), else empty."""
    from .mosaic import mosaic_summary

    section = mosaic_summary(ctx.plan, ctx.records, ctx.kept)
    return {"mosaic": section} if section else {}


def match_summary(plan: Plan) -> dict[str, Any]:
    """The plan's match report (one entry per tile and year looked at, :mod:`eochips.selection`'s
    ``least-cloudy-per-year``) and, per matched source, ``{source}_match_rate``: matched years
    over years tried (0..1; a year is tried when at least one scene of it was tried, so a year
    without any candidate scene does not count against the match). Empty when the grid
    strategy keeps no report."""
    report = plan.match_report
    if not report:
        return {}
    tried = [e for e in report if e.get("s2_tried")]
    out: dict[str, Any] = {"match_report": [{k: v for k, v in e.items() if k != "tries"} for e in report],
                           "years_tried": len(tried), "years_matched": sum(1 for e in tried if e["matched"]),
                           "years_without_scenes": len(report) - len(tried)}
    for s, cfg in plan.recipe.sources.items():
        if cfg.selection.kind == "nearest-in-time":
            out[f"{s}_match_rate"] = round(out["years_matched"] / len(tried), 6) if tried else 0.0
    return out


@register("summary")
def _summary(ctx: Context) -> None:
    ctx.store.write_text("summary.json", json.dumps(redact_obj(ctx.summary), indent=2, sort_keys=True))


@register("manifest")
def _manifest(ctx: Context) -> None:
    failpoints.hit("finalize:before-manifest")
    write_manifest(ctx.store, ctx.hashes)


def finalize(out: str | os.PathLike) -> dict[str, Any]:
    """Finalise the dataset in ``out`` (a folder or URL; see the module docstring); return the summary.

    Before anything is written, every kept unit's files are checked against the sha256 the
    state recorded when they were built (:func:`verify_files`): a unit whose file was edited or
    deleted since is built again (its changed files removed first), so the index and the manifest
    never bless bytes the build did not write. ``summary["rebuilt"]`` lists those units.

    Raises
    ------
    ShardsIncomplete
        A sharded dataset (``state/shard-I-of-N.sqlite``) with planned units that have no result
        yet (:func:`check_shards_done`); nothing is written.
    OutputError
        No plan; a plan or state file is corrupt; another process writes the dataset (or a
        shard of it); a file cannot be written; a unit's files still differ from the state
        after its rebuild.
    """
    from ..lock import dataset_lock

    store = OutputStore(out)
    with dataset_lock(store, "finalize", create=False):
        return _finalize(store)


def _records(store: OutputStore, plan: Plan) -> dict[str, dict[str, Any]]:
    state = open_state(store, {t.unit_id: t.fingerprint for t in make_tasks(plan, store)})
    try:
        records = state.all()
    finally:
        state.close()
    planned = {u.id for u in plan.units}
    records = {k: v for k, v in records.items() if k in planned}
    for u in plan.units:  # units the plan dropped have no marker: the plan itself is their record
        if u.status == "dropped" and u.id not in records:
            records[u.id] = {"status": "dropped", "code": u.code, "reason": u.reason, "files": {},
                             "metrics": {"label_info": u.label_info}, "retries": 0, "attempts": 0}
    return records


def verify_files(store: OutputStore, records: dict[str, dict[str, Any]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Hash every file of the kept units; return ``({path: sha256}, {unit: [changed or missing paths]})``."""
    hashes: dict[str, str] = {}
    bad: dict[str, list[str]] = {}
    for uid, rec in sorted(records.items()):
        if rec["status"] != "kept":
            continue
        for rel, want in sorted(rec["files"].items()):
            got = store.sha256(rel)
            if got == want:
                hashes[rel] = got
            else:
                bad.setdefault(uid, []).append(rel)
    return hashes, bad


def _finalize(store: OutputStore) -> dict[str, Any]:
    from ..engine import build, state_path
    from .checks import check_built, dataset_problems

    plan = load_plan(store)
    check_built(store, state_path(store).exists())
    records = _records(store, plan)
    check_shards_done(store, plan, records)
    store.remove_temporaries()
    r = plan.recipe
    hashes, bad = verify_files(store, records)
    if bad:  # edited or deleted since the build: build those units again (the build redoes exactly them)
        for files in bad.values():
            for rel in files:
                store.remove(rel)
        build(store.location, progress=False)
        records = _records(store, plan)
        hashes, still = verify_files(store, records)
        if still:
            shown = ", ".join(f for fs in still.values() for f in fs)
            raise OutputError(f"file(s) {shown[:300]} of {store.location!r} differ from the state after they were built "
                              f"again; something else writes into the dataset: stop it and rerun 'eochips finalize'")
    if "bigearthnet" in r.dataset.finalizers:  # its input files, before any finalizer writes
        from .bigearthnet import check_inputs

        check_inputs(r.dataset.metadata)
    kept = sorted(cid for cid, rec in records.items() if rec["status"] == "kept")
    parts = make_split(kept, r.dataset.split, plan)
    ctx = Context(store, plan, records, kept, parts.train, parts.validation, parts.test)
    ctx.hashes = hashes
    ctx.rows = _index_rows(ctx)
    ctx.summary = summarize(ctx)
    ctx.summary["problems"] = dataset_problems(ctx.summary, r)
    for name in r.dataset.finalizers:
        FINALIZERS[name](ctx)
    return {**ctx.summary, "rebuilt": sorted(bad)}


def write_manifest(store: OutputStore, known: dict[str, str] | None = None) -> None:
    """Write ``checksums.sha256`` over every file of the store but itself, the states, the
    write locks (``.eochips.lock*``: a killed shard's may remain) and ``archive/`` (the archives
    of the dataset, :mod:`eochips.writers.archive`); ``known`` holds sha256 already computed (the verified files of the kept units)."""
    from ..lock import LOCK_FILE
    from ..plan import PLAN_DIR, RUN_FILE
    from ..writers.archive import ARCHIVE_DIR

    known = known or {}
    skip = {MANIFEST, STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", f"{PLAN_DIR}/{RUN_FILE}", LOCK_FILE}
    lines = [f"{known.get(rel) or store.sha256(rel)}  {rel}\n" for rel in store.list_files()
             if rel not in skip and not rel.startswith((MARKERS.split("/")[0] + "/", LOCK_FILE, ARCHIVE_DIR + "/"))]
    store.write_text(MANIFEST, "".join(lines))


from . import bigearthnet as _bigearthnet  # noqa: E402,F401 - registers the "bigearthnet" finalizer
from . import mosaic as _mosaic  # noqa: E402,F401 - registers the "mosaic" finalizer
from . import archive as _archive  # noqa: E402,F401 - registers the "archive" finalizer
from .plots import _plot_classes  # noqa: E402,F401 - registers the "plots" finalizer; _plot_classes stays importable
from . import card as _card  # noqa: E402,F401 - registers the "card" finalizer
from . import report as _report  # noqa: E402,F401 - registers the "report" finalizer

assert set(FINALIZERS) == set(FINALIZER_NAMES), "every finalizer name of the config has a function"
