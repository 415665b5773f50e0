"""The ``report`` finalizer: ``report.html`` at the dataset root (issue 14 item 7).

One self-contained HTML page (no script, no external URL: every image is a base64 PNG inside
the page, drawn by matplotlib or Pillow, no web tiles) with

- a summary table (recipe, build date, versions, units by status, split sizes, scenes),
- a map of the unit footprints over the AOI in EPSG:4326 degrees, kept units coloured by
  split part, dropped / failed / unbuilt ones by status,
- the class distribution per split part on a log axis with the class names
  (:func:`eochips.dataset.plots.plot_classes`),
- quicklooks of up to :data:`QUICKLOOKS` sample units (:func:`sample_units`: half the units
  holding the most classes, half evenly spaced over the other kept units): an RGB of the chip (its ``red``, ``green``, ``blue`` channels when it has them, else
  its first three; each stretched between the stats percentiles ``dataset.percentiles`` of its
  band, nodata black) beside its label map in the class colours and its ``mask`` file (non-zero
  white; ``qa`` files such as Fmask are bit fields and are not drawn),
- the drop reasons (count and one example message per reason code),
- per source, the scenes of the plan (id, date, collection, cloud cover, kept units using it).

Like every finalizer it writes through ``ctx.store`` and the same dataset gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np

from . import Context, image_files, register
from .channels import read_file
from ..search import redact
from .card import band_table, built_on, counts, read_stats, source_facts, split_sizes, versions
from .plots import ClassRow, class_id, class_pixels, class_rows, codes_seen, hists_of, plot_classes, split_parts

REPORT = "report.html"
QUICKLOOKS = 12
"""Sample units shown as quicklooks (at most)."""
RGB_ALIASES = {"B04": "red", "B03": "green", "B02": "blue"}
"""Band ids that are red, green and blue (Sentinel-2 MSI and HLS S30 / L30: ESA's and NASA's band tables)."""
MAX_SCENE_ROWS = 2000
"""Scenes listed per source (the page's scene table; the plan's ``scenes.parquet`` holds them all)."""
QUICKLOOK_PX = 256
"""Largest side of a quicklook PNG: larger chips are decimated (every k-th pixel)."""
STATUS_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e", "test": "#2ca02c", "excluded": "#9467bd",
                  "dropped": "#c7c7c7", "failed": "#d62728", "pending": "#ffffff"}
"""Map fill per split part (kept units) or status (the others)."""


def _b64png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png(rgb: np.ndarray) -> bytes:
    """PNG bytes of a ``(y, x, 3)`` uint8 array (Pillow: no time in the file)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _esc(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return html.escape(redact("" if v is None else str(v)))  # every text of the page: no credential (search.redact)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{_esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------------------
# the map

def footprint_map(ctx: Context) -> bytes:
    """PNG of the unit footprints (EPSG:4326) over the AOI outline, filled per :data:`STATUS_COLOURS`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    excluded = set(ctx.excluded)
    polys, colours, used = [], [], {}
    for row in ctx.rows:
        key = row["split"] if row["status"] == "kept" and row.get("split") else (
            "excluded" if row["unit_id"] in excluded else row["status"] if row["status"] in STATUS_COLOURS else "pending")
        geom = _geometry(row.get("geometry"))
        for g in getattr(geom, "geoms", [geom]):
            if g.is_empty or not hasattr(g, "exterior"):
                continue
            polys.append(np.asarray(g.exterior.coords)[:, :2])
            colours.append(STATUS_COLOURS[key])
        used[key] = used.get(key, 0) + 1
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    ax.add_collection(PolyCollection(polys, facecolors=colours, edgecolors="#333333", linewidths=0.3))
    aoi = _aoi_outline(ctx)
    pts = [p for p in polys] + ([np.asarray(aoi.exterior.coords)] if aoi is not None and hasattr(aoi, "exterior") else [])
    if aoi is not None:
        for g in getattr(aoi, "geoms", [aoi]):
            if hasattr(g, "exterior"):
                xy = np.asarray(g.exterior.coords)
                ax.plot(xy[:, 0], xy[:, 1], color="#000000", linewidth=1.2, linestyle="--")
    if pts:
        allxy = np.concatenate(pts)
        x0, y0 = allxy.min(0)[:2]
        x1, y1 = allxy.max(0)[:2]
        pad = 0.03 * max(x1 - x0, y1 - y0, 1e-6)
        ax.set_xlim(x0 - pad, x1 + pad)
        ax.set_ylim(y0 - pad, y1 + pad)
        ax.set_aspect(1.0 / max(math.cos(math.radians((y0 + y1) / 2)), 0.05))
    handles = [Patch(facecolor=STATUS_COLOURS[k], edgecolor="#333333", label=f"{k} ({n:,})") for k, n in
               sorted(used.items(), key=lambda kv: list(STATUS_COLOURS).index(kv[0]))]
    if aoi is not None:
        handles.append(plt.Line2D([], [], color="#000000", linestyle="--", label="AOI"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("longitude (degrees)")
    ax.set_ylabel("latitude (degrees)")
    ax.set_title(f"{ctx.plan.recipe.name}: {len(ctx.rows):,} units", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _geometry(v: Any):
    """A row's footprint as a shapely geometry (it may come as shapely, WKB bytes or WKT text)."""
    import shapely

    if v is None:
        return shapely.Polygon()
    if isinstance(v, (bytes, bytearray)):
        return shapely.from_wkb(bytes(v))
    if isinstance(v, str):
        return shapely.from_wkt(v)
    return v


def _aoi_outline(ctx: Context):
    """The recipe's AOI in EPSG:4326, or None when it cannot be loaded any more (its file gone)."""
    from ..errors import EochipsError
    from ..geo import load_aoi, reproject_geometry

    try:
        geom, crs = load_aoi(ctx.plan.recipe.aoi)
        return reproject_geometry(geom, crs.to_wkt(), "EPSG:4326")
    except (EochipsError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------
# quicklooks

def sample_units(kept: list[str], n: int = QUICKLOOKS, score: dict[str, int] | None = None) -> list[str]:
    """Up to ``n`` unit ids of ``kept``, in its order: with ``score`` (unit id -> the number of
    non-background classes it holds) the ``n // 2`` best-scoring units with a positive score (ties:
    first in ``kept``), then units evenly spaced over the others (first and last included)."""
    if len(kept) <= n:
        return list(kept)
    top = sorted((u for u in kept if (score or {}).get(u, 0) > 0), key=lambda u: -score[u])[:n // 2] if score else []
    rest = [u for u in kept if u not in set(top)]
    k = n - len(top)
    spread = [rest[round(i * (len(rest) - 1) / (k - 1))] for i in range(k)] if k > 1 else rest[:k]
    chosen = set(top) | set(spread)
    return [u for u in kept if u in chosen]


def _stretch_bounds(stats: dict[str, Any] | None, band: str, lo: str, hi: str) -> tuple[float, float] | None:
    """The stats percentiles ``(lo, hi)`` of ``band`` (stats v2 ``band_stats`` or earlier ``bands``)."""
    if not stats:
        return None
    bs, order = stats.get("band_stats"), stats.get("band_order")
    if isinstance(bs, dict) and isinstance(order, list) and band in order:
        i = order.index(band)
        p = bs.get("percentiles") or {}
        try:
            return float(p[lo][i]), float(p[hi][i])
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    b = (stats.get("bands") or {}).get(band) or {}
    p = b.get("percentiles") or {}
    if lo in p and hi in p:
        return float(p[lo]), float(p[hi])
    return None


def rgb_channels(names: list[str]) -> list[int]:
    """Channel indexes of the quicklook: the first ``red``, ``green``, ``blue`` when all three are
    there (:data:`RGB_ALIASES`: Sentinel-2 / HLS band ids count), else the first three channels
    (one channel: grey)."""
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        first.setdefault(RGB_ALIASES.get(n, n), i)
    if all(c in first for c in ("red", "green", "blue")):
        return [first["red"], first["green"], first["blue"]]
    return list(range(min(3, len(names)))) or []


def channel_name(names: list[str], i: int) -> str:
    """The name of channel ``i`` of a chip whose channels' bands are ``names``: the band, with
    ``@t{k}`` (k: 0-based occurrence of that band in the chip) when the band occurs more than once."""
    if names.count(names[i]) == 1:
        return names[i]
    return f"{names[i]}@t{names[:i].count(names[i])}"


def chip_rgb(arr: np.ndarray, nodata: list[Any], bands: list[str], stats: dict[str, Any] | None,
             percentiles: tuple[float, float]) -> np.ndarray:
    """``(y, x, 3)`` uint8 of three channels of ``arr`` (``(channel, y, x)``), each stretched
    linearly between its band's stats percentiles (the chip's own 2 / 98 % without stats);
    nodata and NaN black."""
    lo, hi = (f"{p:g}" for p in percentiles)
    out = np.zeros((*arr.shape[1:], 3), dtype=np.uint8)
    for k in range(3):
        c = min(k, arr.shape[0] - 1)
        a = arr[c].astype("float64")
        bad = ~np.isfinite(a)
        nd = nodata[c]
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
            bad |= a == nd
        b = _stretch_bounds(stats, bands[c], lo, hi)
        if b is None or not b[1] > b[0]:
            good = a[~bad]
            b = (float(np.percentile(good, 2)), float(np.percentile(good, 98))) if good.size else (0.0, 1.0)
        scaled = np.clip((a - b[0]) / max(b[1] - b[0], 1e-12), 0, 1) * 255
        out[..., k] = np.where(bad, 0, np.round(np.nan_to_num(scaled))).astype(np.uint8)
    return out


def label_rgb(lab: np.ndarray, rows: list[ClassRow]) -> np.ndarray:
    """``(y, x, 3)`` uint8 of a label map in the class colours (unknown values grey)."""
    out = np.full((*lab.shape, 3), 128, dtype=np.uint8)
    for r in rows:
        rgb = [int(r.colour[i:i + 2], 16) for i in (1, 3, 5)]
        sel = np.isin(lab, np.asarray(r.codes, dtype=lab.dtype)) if r.codes else np.zeros(lab.shape, bool)
        out[sel] = rgb
    return out


def _decimate(a: np.ndarray) -> np.ndarray:
    k = max(1, math.ceil(max(a.shape[-2:]) / QUICKLOOK_PX))
    return a[..., ::k, ::k]


def _same_shape(planes: list[np.ndarray]) -> np.ndarray:
    """``(channel, y, x)`` of 2-D planes, each repeated (nearest) onto the largest plane's shape
    (files of one unit at several resolutions: BigEarthNet's 10 / 20 / 60 m bands)."""
    h = max(p.shape[0] for p in planes)
    w = max(p.shape[1] for p in planes)
    out = []
    for p in planes:
        if p.shape != (h, w):
            p = p[np.ix_(np.arange(h) * p.shape[0] // h, np.arange(w) * p.shape[1] // w)]
        out.append(p)
    return np.stack(out)


def quicklooks(ctx: Context, stats: dict[str, Any] | None, rows: list[ClassRow]) -> list[dict[str, Any]]:
    """Per sample unit (:func:`sample_units`): ``unit_id``, ``split``, ``channels`` (names shown),
    ``rgb`` / ``labels`` / ``mask`` (PNG bytes, None where the unit has no such file)."""
    out = []
    split_of = ctx.split_of
    background = {c for r in rows if r.background for c in r.codes}
    score = {u: sum(1 for c, n in ctx.records[u]["metrics"].get("label_hist", {}).items() if int(n) and int(c) not in background)
             for u in ctx.kept}
    for uid in sample_units(ctx.kept, QUICKLOOKS, score if rows else None):
        rec = ctx.records[uid]
        files = image_files(rec)
        if not files:
            continue
        planes, names, nodata = [], [], []
        for rel in files:
            a, bands = read_file(ctx.store, rel)
            planes += list(_decimate(a))
            names += [b.band for b in bands]
            nodata += [b.nodata for b in bands]
        idx = rgb_channels(names)
        arr = _same_shape([planes[i] for i in idx])
        shown = [channel_name(names, i) for i in idx]
        item = {"unit_id": uid, "split": split_of.get(uid, ""), "channels": shown,
                "rgb": _png(chip_rgb(arr, [nodata[i] for i in idx], [names[i] for i in idx], stats,
                                     tuple(ctx.plan.recipe.dataset.percentiles))),
                "labels": None, "mask": None}
        roles = rec["metrics"].get("file_roles", {})
        order = rec["metrics"].get("file_order") or sorted(rec["files"])
        lab = next((f for f in order if roles.get(f) == "labels"), None)
        if lab is not None and rows:
            a, _ = read_file(ctx.store, lab)
            item["labels"] = _png(label_rgb(_decimate(a[0]), rows))
        mask = next((f for f in order if roles.get(f) == "mask"), None)  # not "qa": bit fields (Fmask) have no one picture
        if mask is not None:
            a, bands = read_file(ctx.store, mask)
            m = _decimate(a[0])
            on = (m != 0) if bands[0].nodata is None else ((m != 0) & (m != bands[0].nodata))
            item["mask"] = _png(np.repeat(np.where(on, 255, 0).astype(np.uint8)[..., None], 3, axis=2))
            item["mask_role"] = roles.get(mask)
        out.append(item)
    return out


# --------------------------------------------------------------------------------------
# tables

def drop_reasons(ctx: Context) -> list[list[Any]]:
    """``[[reason code, units, an example message]]`` of the dropped and failed units."""
    by: dict[tuple[str, str], list[str]] = {}
    for uid in sorted(ctx.records):
        rec = ctx.records[uid]
        if rec["status"] in ("dropped", "failed"):
            by.setdefault((rec["status"], rec.get("code") or ""), []).append(redact(rec.get("reason") or ""))
    return [[f"{st}: {code or 'unspecified'}", len(msgs), msgs[0][:200]] for (st, code), msgs in sorted(by.items())]


def scene_rows(ctx: Context) -> list[list[Any]]:
    """Per source and scene of the plan (the first :data:`MAX_SCENE_ROWS` by date): source, id,
    date, collection, cloud %, kept units using it."""
    use: dict[str, int] = {}
    for row in ctx.rows:
        if row["status"] == "kept":
            for sid in set(row.get("scene_ids") or []):
                use[sid] = use.get(sid, 0) + 1
    out = []
    for src, scenes in ctx.plan.scenes.items():
        for s in sorted(scenes.values(), key=lambda s: (s.datetime, s.id))[:MAX_SCENE_ROWS]:
            out.append([src, s.id, s.datetime.strftime("%Y-%m-%d %H:%M"), s.collection, s.cloud_cover, use.get(s.id, 0)])
    return out


CSS = """body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;background:#fff;max-width:1200px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:4px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}img.plot{max-width:100%;border:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:12px}.chip{border:1px solid #ccc;padding:6px;font-size:11px}
.chip img{width:128px;height:128px;image-rendering:pixelated;margin-right:4px;background:#000;border:1px solid #999}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #555;vertical-align:middle;margin-right:4px}
.scroll{max-height:420px;overflow:auto}"""


def report_html(ctx: Context) -> str:
    """The page of ``report.html`` (see the module docstring)."""
    r = ctx.plan.recipe
    stats = read_stats(ctx)
    rows = class_rows(r, codes_seen(ctx))
    s = ctx.summary
    v = versions()
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(r.name)}: eochips dataset report</title>"
           f"<style>{CSS}</style></head><body>", f"<h1>{_esc(r.name)}</h1>"]
    if r.description:
        out.append(f"<p>{_esc(r.description.strip())}</p>")
    summary_rows = [["recipe", r.name], ["built on (UTC)", built_on(ctx.store)],
                    ["software", ", ".join(f"{k} {val}" for k, val in v.items())],
                    *[[k, n] for k, n in counts(s)], *[[f"split: {k}", n] for k, n in split_sizes(ctx)],
                    ["split kind", r.dataset.split.kind], ["scenes", s.get("scenes", 0)], ["grids", s.get("grids", 0)],
                    ["scene dates of kept units", ", ".join(s.get("selected_dates") or [])[:400]]]
    out.append("<h2>Summary</h2>" + _table(["", ""], summary_rows))
    out.append("<h2>Units over the AOI</h2>"
               f"<img class=\"plot\" alt=\"unit footprints\" src=\"{_b64png(footprint_map(ctx))}\">")
    out.append("<h2>Classes per split</h2>")
    if rows:
        series = {name: class_pixels(rows, hists_of(ctx, ids)) for name, ids in split_parts(ctx)}
        out.append(f"<img class=\"plot\" alt=\"class distribution\" src=\"{_b64png(plot_classes(rows, series, f'{r.name}: labelled pixels per class and split'))}\">")
        out.append(_table(["class", "name", *series], [[
            class_id(row), row.name, *(series[k][i] for k in series)] for i, row in enumerate(rows)]))
    else:
        out.append("<p>This recipe has no labels.</p>")
    out.append("<h2>Bands</h2>")
    bt = band_table(stats, ctx.plan)
    lo, hi = (f"{p:g}" for p in r.dataset.percentiles)
    out.append(_table(["#", "channel", "dtype", "nodata", "scale", "offset", "mean", "std", f"p{lo}", f"p{hi}"],
                      [[b["index"] if b["index"] is not None else i, b["name"], b["dtype"], b["nodata"], b["scale"], b["offset"],
                        b["mean"], b["std"], b["percentiles"].get(lo), b["percentiles"].get(hi)] for i, b in enumerate(bt)]))
    looks = quicklooks(ctx, stats, rows)
    out.append(f"<h2>Sample units ({len(looks)} of {len(ctx.kept):,} kept)</h2><div class=\"grid\">")
    for q in looks:
        imgs = f"<img alt=\"{_esc(q['unit_id'])} RGB\" src=\"{_b64png(q['rgb'])}\">"
        if q["labels"] is not None:
            imgs += f"<img alt=\"{_esc(q['unit_id'])} labels\" src=\"{_b64png(q['labels'])}\">"
        if q["mask"] is not None:
            imgs += f"<img alt=\"{_esc(q['unit_id'])} {_esc(q.get('mask_role'))}\" src=\"{_b64png(q['mask'])}\">"
        what = "/".join(q["channels"]) + (" | labels" if q["labels"] is not None else "") + (
            f" | {q.get('mask_role')}" if q["mask"] is not None else "")
        out.append(f"<div class=\"chip\">{imgs}<br>{_esc(q['unit_id'])} ({_esc(q['split'])})<br>{_esc(what)}</div>")
    out.append("</div>")
    if rows:
        out.append("<p>" + " ".join(f"<span class=\"swatch\" style=\"background:{row.colour}\"></span>{_esc(row.name)}"
                                    for row in rows) + "</p>")
    out.append("<h2>Drop reasons</h2>")
    dr = drop_reasons(ctx)
    out.append(_table(["reason", "units", "example"], dr) if dr else "<p>No unit was dropped or failed.</p>")
    out.append("<h2>Sources</h2>")
    out.append(_table(["source", "profile", "collections", "scenes", "licence", "attribution"],
                      [[f["source"], f["profile"], ", ".join(f["collections"]), f["scenes"], f["licence"], f["attribution"]]
                       for f in source_facts(ctx.plan)]))
    out.append("<div class=\"scroll\">" + _table(["source", "scene", "datetime (UTC)", "collection", "cloud %", "kept units"],
                                                  scene_rows(ctx)) + "</div>")
    big = {src: len(sc) for src, sc in ctx.plan.scenes.items() if len(sc) > MAX_SCENE_ROWS}
    if big:
        out.append("<p>" + "; ".join(f"{_esc(src)}: the first {MAX_SCENE_ROWS:,} of {n:,} scenes" for src, n in big.items())
                   + " (all are in plan/scenes.parquet).</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


@register("report")
def _report(ctx: Context) -> None:
    ctx.store.write_text(REPORT, report_html(ctx))
