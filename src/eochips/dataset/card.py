"""The ``card`` finalizer: ``README.md`` at the dataset root, the dataset's card (issue 14 item 5).

Sections: what built it (recipe name, description, build date, eochips / GDAL / rasterio /
numpy / Python versions), the sources (catalog, collections, scenes, dates, licence and
attribution), counts (units kept, dropped by reason code, failed), the split sizes, the band
table (one row per chip channel, in chip order, with its statistics), the class table, how to
load the dataset (:func:`eochips.open_dataset`) and the resolved recipe as YAML (what
``plan/plan.json`` holds: credentials redacted, ``description``, ``reading`` and ``engine`` left
out as they are in the plan, so 1 or N workers write the same card).

Reproducible: the card holds no time but the build *date*, :func:`built_on` (taken from the
plan, never from the clock of ``eochips finalize``), so finalising twice writes the same bytes.

Statistics come from ``ctx.stats`` (the ``stats`` finalizer's dict) or ``stats.json``; both the
version-2 layout (``channels``, per-channel lists, ``classes``) and the earlier per-band layout
(``bands: {name: {...}}``, ``class_pixels``, ``class_weights``) are read (:func:`band_table`,
:func:`class_table`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from typing import Any

from . import Context, register
from ..plan import PLAN_DIR, RUN_FILE, Plan
from ..search import redact, redact_obj
from ..writers import OutputStore
from .plots import class_id, class_pixels, class_rows, codes_seen, hists_of, split_parts

CARD = "README.md"
UNKNOWN_LICENCE = "see the source catalog"
"""The licence cell of a source whose items and catalog name none."""


# --------------------------------------------------------------------------------------
# facts the card and the report share

def built_on(store: OutputStore) -> str:
    """The dataset's build date, ``YYYY-MM-DD`` (UTC).

    In order: ``created`` of ``plan/run.json`` (when the planner records it); the environment
    variable ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention, seconds since 1970);
    the time ``plan/plan.json`` was last written (the build's plan: ``eochips finalize`` does not
    write it, so finalising again keeps the date). A date, not a time, so two builds of one
    recipe on the same day write the same card.

    Returns
    -------
    str
        ``YYYY-MM-DD``, or ``"unknown"`` when the store cannot tell.
    """
    if store.exists(f"{PLAN_DIR}/{RUN_FILE}"):
        try:
            created = json.loads(store.read_bytes(f"{PLAN_DIR}/{RUN_FILE}")).get("created")
        except ValueError:
            created = None
        if created:
            return str(created)[:10]
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%d")
    rel = f"{PLAN_DIR}/plan.json"
    try:
        if store.is_local:
            ts = store.local_path(rel).stat().st_mtime
        else:
            info = store.fs.info(store._remote(rel))
            when = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or info.get("created")
            if when is None:
                return "unknown"
            ts = when.timestamp() if isinstance(when, datetime) else float(when)
    except (OSError, ValueError, TypeError):
        return "unknown"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def versions() -> dict[str, str]:
    """``{package: version}`` of eochips (``eochips.__version__``), GDAL (``rasterio.__gdal_version__``), rasterio, numpy and Python."""
    import numpy
    import rasterio

    from .. import __version__ as own  # the running code's (an editable install's metadata may be older)

    return {"eochips": own, "GDAL": rasterio.__gdal_version__, "rasterio": rasterio.__version__,
            "numpy": numpy.__version__, "Python": platform.python_version()}


def read_stats(ctx: Context) -> dict[str, Any] | None:
    """``ctx.stats`` when the ``stats`` finalizer ran, else ``stats.json`` of the store, else None."""
    if ctx.stats is not None:
        return ctx.stats
    if ctx.store.exists("stats.json"):
        try:
            return json.loads(ctx.store.read_bytes("stats.json"))
        except ValueError:
            return None
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def band_table(stats: dict[str, Any] | None, plan: Plan) -> list[dict[str, Any]]:
    """One row per chip channel (stats version 2) or per band (earlier stats), in chip order.

    Returns
    -------
    list of dict
        Keys ``index`` (0-based channel, None for a per-band row), ``name``, ``band``, ``dtype``,
        ``nodata``, ``scale``, ``offset``, ``mean``, ``std``, ``minimum``, ``maximum``, ``count``
        and ``percentiles`` (``{"1.5": v, "98.5": v}``; values None where the stats lack them).
        Without stats, the plan's bands (dtype, nodata, scale, offset) and no statistics.
    """
    specs = {b.name: b for sp in plan.sources.values() for b in sp.bands}

    def spec_fields(band: str) -> dict[str, Any]:
        b = specs.get(band)
        if b is None:
            return {"dtype": None, "nodata": None, "scale": None, "offset": None}
        nod = "nan" if isinstance(b.nodata, float) and math.isnan(b.nodata) else b.nodata
        return {"dtype": b.dtype, "nodata": nod, "scale": b.scale, "offset": b.offset}

    rows: list[dict[str, Any]] = []
    if stats and isinstance(stats.get("channels"), list):
        pct = stats.get("percentiles") or {}
        for i, ch in enumerate(stats["channels"]):
            def at(key: str) -> Any:
                v = stats.get(key)
                return v[i] if isinstance(v, list) and i < len(v) else None

            band = ch.get("band") or str(ch.get("name", f"band{i}")).split("@")[0]
            row = {"index": ch.get("index", i), "name": ch.get("name", band), "band": band, **spec_fields(band)}
            row.update({k: ch[k] for k in ("dtype", "nodata", "scale", "offset") if k in ch})
            row.update({k: at(k) for k in ("mean", "std", "minimum", "maximum", "count")})
            row["percentiles"] = {p: (v[i] if isinstance(v, list) and i < len(v) else None) for p, v in pct.items()}
            rows.append(row)
        return rows
    bands = (stats or {}).get("bands") or {}
    names = list(bands) or [b.name for sp in plan.sources.values() for b in sp.bands]
    for name in names:
        b = bands.get(name, {})
        rows.append({"index": None, "name": name, "band": name, **spec_fields(name),
                     **{k: b.get(k) for k in ("mean", "std", "minimum", "maximum", "count")},
                     "percentiles": dict(b.get("percentiles") or {})})
    return rows


def class_table(ctx: Context, stats: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The dataset's classes: ``id`` (a code table: the codes of the name), ``name``, ``colour``, ``pixels`` (over the units the stats
    were computed on, else the kept units), ``weight`` and ``background``; empty without labels.

    Stats version 2 ``classes`` are taken as they are; otherwise names and colours come from the
    recipe (:func:`eochips.dataset.plots.class_rows`), pixels from ``class_pixels`` (a class map:
    by id; a code table: by name) or the units' histograms, weights from ``class_weights``.
    """
    if ctx.plan.recipe.labels is None:
        return []
    if stats and isinstance(stats.get("classes"), list):
        return [{"id": c.get("id"), "name": c.get("name"), "colour": c.get("colour"), "pixels": c.get("pixels"),
                 "weight": c.get("weight"), "background": bool(c.get("background"))} for c in stats["classes"]]
    rows = class_rows(ctx.plan.recipe, codes_seen(ctx))
    r = ctx.plan.recipe
    ids = ctx.train if r.dataset.stats_on == "train" else ctx.kept
    counts = class_pixels(rows, hists_of(ctx, ids))
    weights = (stats or {}).get("class_weights")
    out = []
    for row, n in zip(rows, counts):
        w = None
        if isinstance(weights, list) and isinstance(row.key, int) and row.key < len(weights):
            w = weights[row.key]
        elif isinstance(weights, dict):
            w = weights.get(str(row.key))
        out.append({"id": row.key if isinstance(row.key, int) else class_id(row), "name": row.name, "colour": row.colour, "pixels": n, "weight": w,
                    "background": row.background})
    return out


def source_facts(plan: Plan) -> list[dict[str, Any]]:
    """Per source: ``source``, ``profile``, ``catalog`` (credentials redacted), ``collections``,
    ``scenes`` (count), ``first`` / ``last`` scene dates, ``licence`` and ``attribution``.

    The licence and providers come from the source's STAC items (``properties.license``,
    ``properties.providers``, a ``license`` link) and, for a static catalog on disk, its
    Catalog / Collection documents (``license``, ``providers``); else :data:`UNKNOWN_LICENCE`.
    """
    out = []
    for name, cfg in plan.recipe.sources.items():
        scenes = sorted(plan.scenes.get(name, {}).values(), key=lambda s: (s.datetime, s.id))
        licences: list[str] = []
        providers: list[str] = []
        for doc in [dict(s.properties) for s in scenes] + _catalog_docs(str(cfg.search.catalog)):
            lic = doc.get("license")
            if isinstance(lic, str) and lic and lic not in licences:
                licences.append(lic)
            for p in doc.get("providers") or []:
                if isinstance(p, dict) and p.get("name"):
                    roles = ", ".join(str(x) for x in p.get("roles") or [])
                    text = f"{p['name']} ({roles})" if roles else str(p["name"])
                    if text not in providers:
                        providers.append(text)
        prof = cfg.profile if isinstance(cfg.profile, str) else getattr(cfg.profile, "name", str(cfg.profile))
        out.append({
            "source": name, "profile": prof, "catalog": redact(str(cfg.search.catalog)),
            "collections": list(cfg.search.collections or []) or sorted({s.collection for s in scenes if s.collection}),
            "scenes": len(scenes), "first": scenes[0].date if scenes else None, "last": scenes[-1].date if scenes else None,
            "licence": "; ".join(licences) or UNKNOWN_LICENCE, "attribution": "; ".join(providers) or UNKNOWN_LICENCE,
        })
    return out


def _catalog_docs(catalog: str) -> list[dict[str, Any]]:
    """The JSON documents of a static catalog on disk that may name a licence (the file itself:
    a Catalog, Collection or ItemCollection, and its ``collections`` list); none for an API or URL."""
    if "://" in catalog or not catalog.endswith(".json") or not os.path.isfile(catalog):
        return []
    try:
        with open(catalog, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict):
        return []
    return [doc, *(c for c in doc.get("collections") or [] if isinstance(c, dict))]


def recipe_doc(plan: Plan) -> dict[str, Any]:
    """The resolved recipe as ``plan/plan.json`` stores it: JSON-ready, credentials redacted,
    without the fields that cannot change an output byte (``description``, ``reading``, ``engine``)."""
    from ..config import canonical
    from ..config.models import NON_OUTPUT_FIELDS

    data = json.loads(json.dumps(canonical(plan.recipe), default=str))
    for k in NON_OUTPUT_FIELDS:
        data.pop(k, None)
    return redact_obj(data)


def counts(summary: dict[str, Any]) -> list[tuple[str, int]]:
    """``[(what, units)]`` of the summary: total, kept, dropped per reason code, failed."""
    rows = [("planned units", int(summary.get("units_total", 0))), ("kept", int(summary.get("kept", 0)))]
    rows += [(f"dropped: {code or 'unspecified'}", int(n)) for code, n in sorted((summary.get("dropped") or {}).items())]
    rows.append(("failed", int(summary.get("failed", 0))))
    return rows


def split_sizes(ctx: Context) -> list[tuple[str, int]]:
    """``[(part, units)]``: train, validation, test (when the split has one), excluded (a buffer)."""
    out = [(name, len(ids)) for name, ids in split_parts(ctx)]
    if ctx.excluded:
        out.append(("excluded (buffer)", len(ctx.excluded)))
    return out


# --------------------------------------------------------------------------------------
# the card

def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return redact(str(v)).replace("|", "\\|").replace("\n", " ")  # every cell: no credential (search.redact)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


LOAD_SNIPPET = '''```python
import eochips
ds = eochips.open_dataset("path/to/{name}")  # this folder (or its URL)
ds.index                # one row per unit: status, split, scenes, files (geopandas)
ds.paths("train")       # the files of the training units (images in channel order, labels)
```

For PyTorch (`pip install "eochips[torch]"`): `eochips.torch.ChipTorchDataset(ds, "train")` yields `(image, mask)`
tensors, the image normalised with stats.json's per-channel mean and std.
'''


def card_text(ctx: Context) -> str:
    """The Markdown of ``README.md`` (see the module docstring)."""
    import yaml

    plan, r, summary = ctx.plan, ctx.plan.recipe, ctx.summary
    stats = read_stats(ctx)
    v = versions()
    parts = [f"# {r.name}\n"]
    if r.description:
        parts.append(f"{redact(r.description.strip())}\n")
    parts.append(f"An Earth-observation training dataset built by eochips from the recipe `{r.name}` "
                 f"(the resolved recipe is at the end of this file).\n")
    parts.append("## Build\n\n" + _table(["", ""], [["built on (UTC)", built_on(ctx.store)],
                                                    *[[k, val] for k, val in v.items()]]))
    src = source_facts(plan)
    parts.append("## Sources\n\n" + _table(
        ["source", "profile", "catalog", "collections", "scenes", "dates", "licence", "attribution"],
        [[s["source"], s["profile"], s["catalog"], ", ".join(s["collections"]), s["scenes"],
          f"{s['first']} to {s['last']}" if s["first"] else "", s["licence"], s["attribution"]] for s in src]))
    parts.append("Licences and attribution are those the STAC items or catalog declare; where they declare none, "
                 "check the catalog before redistributing the pixels.\n")
    parts.append("## Units\n\n" + _table(["units", "count"], [list(c) for c in counts(summary)]))
    dates = summary.get("selected_dates") or []
    if dates:
        parts.append(f"Scene dates of the kept units: {', '.join(dates[:12])}"
                     f"{f' and {len(dates) - 12} more' if len(dates) > 12 else ''}.\n")
    sp = r.dataset.split
    parts.append(f"## Split\n\nKind `{sp.kind}`.\n\n" + _table(["part", "units"], [list(s) for s in split_sizes(ctx)]))
    leaks = (summary.get("split") or {}).get("leaks")
    if leaks:  # eochips.dataset.leaks: held-out units touching (or within the buffer of) a unit of another part
        parts.append("Leak check (units of the second part touching, or within the split's buffer of, a unit of the "
                     "first; 0 means spatially separate):\n\n" + _table(["parts", "units"], [[k, n] for k, n in leaks.items()]))
    bt = band_table(stats, plan)
    lo, hi = (f"{p:g}" for p in r.dataset.percentiles)
    on = (stats or {}).get("computed_on", r.dataset.stats_on)
    parts.append(f"## Bands\n\nChannels of a chip in order; statistics over the {on} units, of the stored values "
                 f"(physical value = stored * scale + offset), nodata excluded.\n\n" + _table(
                     ["#", "channel", "band", "dtype", "nodata", "scale", "offset", "mean", "std", "minimum",
                      f"p{lo}", f"p{hi}", "maximum"],
                     [[b["index"] if b["index"] is not None else i, b["name"], b["band"], b["dtype"], b["nodata"], b["scale"],
                       b["offset"], b["mean"], b["std"], b["minimum"], b["percentiles"].get(lo, b["percentiles"].get(str(float(lo)))),
                       b["percentiles"].get(hi, b["percentiles"].get(str(float(hi)))), b["maximum"]] for i, b in enumerate(bt)]))
    if isinstance((stats or {}).get("note"), str):
        parts.append(f"From stats.json: {stats['note']}\n")
    ct = class_table(ctx, stats)
    if ct:
        parts.append(f"## Classes\n\nLabelled pixels over the {on} units; weights: sklearn \"balanced\" over the classes "
                     f"present, normalised to sum 1, 0 for the background.\n\n" + _table(
                         ["id", "name", "colour", "pixels", "weight", "background"],
                         [[c["id"], c["name"], f"`{c['colour']}`" if c["colour"] else "", c["pixels"], c["weight"],
                           "yes" if c["background"] else ""] for c in ct]))
    else:
        parts.append("## Classes\n\nThis recipe has no labels.\n")
    fin = set(r.dataset.finalizers)
    files = [(f, w) for f, w, by in [
        ("index.parquet", "GeoParquet 1.1, one row per unit: status, reason, split, scenes, files with roles and sha256", "index"),
        ("index.gpkg", "the same rows as a GeoPackage, for GIS without GeoParquet", "index"),
        ("train_ids.csv, val_ids.csv" + (", test_ids.csv" if len(split_parts(ctx)) > 2 else ""), "unit ids per split part", "split"),
        ("stats.json", "band and class statistics", "stats"),
        ("class_distribution_*.png", "pixels per class and split part (log axis)", "plots"),
        ("stac/collection.json", "a STAC catalog of the dataset: one item per kept unit (stac/items/)", "stac"),
        ("summary.json", "counts by status and reason, the split's leak check", "summary"),
        ("report.html", "the dataset report (map, class plots, quicklooks, drop reasons, scenes)", "report"),
        ("plan/", "the plan: resolved recipe, units, scenes", None),
        ("checksums.sha256", "sha256 of every file (sha256sum -c)", "manifest")] if by is None or by in fin]
    parts.append("## Files\n\n" + _table(["file", "what"], [list(x) for x in files]))
    parts.append("## Load\n\n" + LOAD_SNIPPET.format(name=r.name))
    recipe_yaml = yaml.safe_dump(recipe_doc(plan), sort_keys=True, allow_unicode=True, default_flow_style=False, width=100)
    parts.append("## Recipe\n\nThe resolved recipe (as `plan/plan.json` stores it; `description`, `reading` and `engine` "
                 "cannot change an output byte and are left out):\n\n```yaml\n" + recipe_yaml + "```\n")
    return redact("\n".join(parts))  # the whole card once more: no credential in any line (search.redact)


@register("card")
def _card(ctx: Context) -> None:
    ctx.store.write_text(CARD, card_text(ctx))
