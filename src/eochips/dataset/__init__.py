"""Dataset finalisation: finalizers run in the recipe's order (``dataset.finalizers``).

=============  ===================================================================================
finalizer      writes (at the dataset root)
=============  ===================================================================================
``index``      ``index.parquet``: GeoParquet 1.1 with a ``bbox`` covering column, one row per unit of
               the plan, one schema for every recipe (:data:`eochips.dataset.index.INDEX_SCHEMA`):
               geometry in EPSG:4326 plus the unit's CRS and transform; status, typed reason code,
               reason, split, scenes (source, step, id, datetime, role), measures (nodata pixels,
               Fmask bad %, mask fractions, label histogram), files (path, role, sha256); and
               ``index.gpkg`` (the same rows for GIS without GeoParquet: :mod:`eochips.dataset.index`)
``split``      ``train_ids.csv`` / ``val_ids.csv`` (column ``ids``), and ``test_ids.csv`` when the
               split has a test part: the kept unit ids of each part of ``dataset.split``
               (:mod:`eochips.dataset.splits`: ``random``, seed 001; ``tile-ring``, BigEarthNet v2;
               ``spatial-blocks``), and ``summary["split"]``: part sizes, excluded units, the leak
               check per part pair (:mod:`eochips.dataset.leaks`)
``stats``      ``stats.json`` (version 2, :mod:`eochips.dataset.stats`): per chip channel in chip order
               (:mod:`eochips.dataset.channels`: ``channels`` with band, step, dtype, nodata, scale,
               offset, units) arrays ``mean``, population ``std``, exact ``minimum`` / ``maximum``,
               ``count`` and ``percentiles`` (``dataset.percentiles``), of the stored values (raw DN,
               scene DN offsets harmonised onto the profile's), nodata excluded, in one streaming
               pass (exact for 8/16-bit integers, float-safe otherwise); the same pooled per band
               over steps (``band_order``, ``band_stats``, ``bands``); the class table ``classes``
               (id, name, colour, pixels, weight, background) and class weights (sklearn
               "balanced" ``N / (K * n_c)`` over the classes present, normalised to sum 1, 0 for
               class 0 and absent classes); sets ``Context.stats``
``plots``      ``class_distribution_{split}.png``: pixels per class on a log axis, per class name
               (:mod:`eochips.dataset.plots`)
``tables``     the tables layouts ask for (seed 000's ``fmask_tracker.csv``)
``mosaic``     a mosaic recipe's ``{name}-cloudless.tif``, ``-cloudy.tif``, ``-source.tif`` (COGs assembled
               from the tiles' parts), ``sources.csv`` and ``quicklooks/``
               (:mod:`eochips.dataset.mosaic`); nothing for other recipes
``bigearthnet`` BigEarthNet v2's ``metadata.parquet`` and
               ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``
               (:mod:`eochips.dataset.bigearthnet`)
``stac``       ``stac/collection.json`` and ``stac/items/{unit}.json``: a self-contained STAC 1.1 catalog,
               one item per kept unit (projection, raster, eo, label, ml-aoi; derived_from links to
               the source items without credentials: :mod:`eochips.dataset.stac`)
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


from .. import failpoints
from ..config.models import FINALIZERS as FINALIZER_NAMES
from ..engine import MARKERS, STATE_FILE, open_state
from ..errors import OutputError
from ..plan import Plan, class_names, load_plan, make_tasks
from ..progress import stage
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
    rows: list[dict[str, Any]] = field(default_factory=list)  # index rows, typed as index.INDEX_SCHEMA (index.index_rows)
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


@register("split")
def _split(ctx: Context) -> None:
    from .splits import write_split

    write_split(ctx)


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
        for code, n in row["unknown_codes"].items():
            unknown[str(code)] = unknown.get(str(code), 0) + n
    plan = ctx.plan
    return {
        "recipe": plan.recipe.name, "units_total": len(plan.units), "kept": len(ctx.kept), "dropped": dropped,
        "failed": len(failed), "failed_reasons": failed, "train": len(ctx.train), "validation": len(ctx.val),
        **({"test": len(ctx.test)} if has_test_part(plan.recipe.dataset.split) else {}),
        "scenes": sum(len(v) for v in plan.scenes.values()), "grids": len(plan.grids), "unknown_label_codes": unknown,
        "selected_dates": sorted({f"{sc['datetime']:%Y-%m-%d}" for row in ctx.rows if row["status"] == "kept" for sc in row["scenes"]}),
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


def finalize(out: str | os.PathLike, timings: str | os.PathLike | None = None) -> dict[str, Any]:
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
    from ..engine import write_timings
    from ..lock import dataset_lock
    from ..progress import recording

    store = OutputStore(out)
    with recording() as rec, dataset_lock(store, "finalize", create=False):
        with stage(None, "finalize"):
            summary = _finalize(store)
        summary["stages"] = write_timings(timings, "finalize", rec)["stages"]  # also to the file ``timings`` if given
        return summary


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

    with stage(None, "finalize:load"):
        plan = load_plan(store)
        check_built(store, state_path(store).exists())
        records = _records(store, plan)
        check_shards_done(store, plan, records)
        store.remove_temporaries()
    r = plan.recipe
    with stage(None, "finalize:verify"):
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
    ctx.excluded = parts.excluded
    ctx.hashes = hashes
    with stage(None, "finalize:rows"):
        ctx.rows = _index_rows(ctx)
        ctx.summary = summarize(ctx)
        ctx.summary["problems"] = dataset_problems(ctx.summary, r)
    for name in r.dataset.finalizers:
        with stage(f"finalize: {name}", f"finalize:{name}"):
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


from .index import index_rows as _index_rows  # noqa: E402 - registers the "index" finalizer
from . import bigearthnet as _bigearthnet  # noqa: E402,F401 - registers the "bigearthnet" finalizer
from . import mosaic as _mosaic  # noqa: E402,F401 - registers the "mosaic" finalizer
from . import archive as _archive  # noqa: E402,F401 - registers the "archive" finalizer
from .stats import class_weights, multilabel_stats  # noqa: E402,F401 - registers "stats"; both stay importable from here
from . import stac as _stac_catalog  # noqa: E402,F401 - registers the "stac" finalizer
from .plots import _plot_classes  # noqa: E402,F401 - registers the "plots" finalizer; _plot_classes stays importable
from . import card as _card  # noqa: E402,F401 - registers the "card" finalizer
from . import report as _report  # noqa: E402,F401 - registers the "report" finalizer

assert set(FINALIZERS) == set(FINALIZER_NAMES), "every finalizer name of the config has a function"
