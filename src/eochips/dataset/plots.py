"""The ``plots`` finalizer and the class tables the card and the report share.

``class_distribution_{split}.png`` (one per part of the split): labelled pixels per class of the
part's units on a **log** axis (the demo's class 0 holds 87 402 of 88 064 pixels: on a linear
axis the other classes vanish), bars in the class colours of the label files, each bar's count
written above it, the title naming the part, its unit count and its pixel total. A recipe with a
code table (``labels.table``, e.g. ``clc-19``: CORINE codes in a uint16 reference map) is plotted
per class *name* (19 bars plus ``UNLABELED``), not per code.

PNG files carry no time or software tag (matplotlib's ``metadata``), so ``eochips finalize``
run twice writes the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from . import Context, has_test_part, register
from ..config import Recipe
from ..plan import class_names

UNKNOWN = "unknown code"
"""The row of codes neither a class table nor ``labels.class_names`` knows."""


@dataclass(frozen=True)
class ClassRow:
    """One class of a dataset's class table.

    Attributes
    ----------
    key
        The class id (a class map), or the class name (a code table: several codes per name).
    name
        Its name (``labels.class_names``, the CDL 13 names, the code table's names).
    colour
        ``#rrggbb`` of the label files' colour table (grey where the files have none).
    background
        True for the class that means "no class" (``labels.nodata_class``, a table's ``UNLABELED``).
    codes
        The label codes counted in this class (a code table), else ``(key,)``.
    """

    key: int | str
    name: str
    colour: str
    background: bool
    codes: tuple[int, ...]


def class_id(row: ClassRow) -> str:
    """What identifies a class in the files: its id (a class map) or its codes (a code table)."""
    return str(row.key) if isinstance(row.key, int) else ", ".join(str(c) for c in row.codes)


def _hex(rgba: tuple[int, ...]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def class_rows(recipe: Recipe, codes_seen: set[int] | None = None) -> list[ClassRow]:
    """The class table of ``recipe``'s labels, in class-id order (a code table: table order,
    ``UNLABELED`` then unknown codes last).

    Parameters
    ----------
    recipe
        The resolved recipe (``labels``; none: an empty table).
    codes_seen
        Label values found in the units (``label_hist`` keys): ids the names do not cover get a
        row of their own (a class map) or go to :data:`UNKNOWN` (a code table).

    Returns
    -------
    list of ClassRow
        Colours from the label files' colour table (:func:`eochips.plan.label_spec`: CDL's legend
        for ``cdl-13``, tab20 otherwise); ``#808080`` for a uint16 map, which has none.
    """
    from ..labels import MULTI_LABEL_TABLES
    from ..plan import label_spec

    lab = recipe.labels
    if lab is None:
        return []
    seen = codes_seen or set()
    if lab.table is not None:
        named, unlabeled = MULTI_LABEL_TABLES[lab.table]
        order = list(dict.fromkeys(named.values()))
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        rows = [ClassRow(n, n, _hex(tuple(int(255 * v) for v in cmap(i % 20))), False,
                         tuple(sorted(c for c, m in named.items() if m == n))) for i, n in enumerate(order)]
        rows.append(ClassRow("UNLABELED", "UNLABELED", "#000000", True, tuple(sorted(unlabeled))))
        other = sorted(c for c in seen if c not in named and c not in unlabeled)
        if other:
            rows.append(ClassRow(UNKNOWN, UNKNOWN, "#808080", True, tuple(other)))
        return rows
    try:
        spec = label_spec(recipe)
        cmap = dict(spec.colormap) if spec is not None else {}
    except Exception:  # noqa: BLE001 - a label input gone since the build: the table keeps its names, grey colours
        cmap = {}
    names = class_names(recipe)
    ids = sorted({*names, *seen})
    def colour(i: int) -> str:  # a transparent entry (class 0) shows as black, no entry (uint16 map) as grey
        if i not in cmap:
            return "#808080"
        return _hex(cmap[i]) if cmap[i][3] else "#000000"

    return [ClassRow(i, names.get(i, f"class {i}"), colour(i), i == lab.nodata_class, (i,)) for i in ids]


def class_pixels(rows: list[ClassRow], hists: list[dict[str, Any]]) -> list[int]:
    """Pixels per row of ``rows`` summed over unit label histograms (``{str(code): pixels}``).

    Returns
    -------
    list of int
        One count per row, in the rows' order.
    """
    where = {c: i for i, r in enumerate(rows) for c in r.codes}
    out = [0] * len(rows)
    for h in hists:
        for c, n in h.items():
            i = where.get(int(c))
            if i is not None:
                out[i] += int(n)
    return out


def split_parts(ctx: Context) -> list[tuple[str, list[str]]]:
    """``[(part name, unit ids)]``: train, validation and (when the split has one) test."""
    parts = [("train", ctx.train), ("validation", ctx.val)]
    if has_test_part(ctx.plan.recipe.dataset.split):
        parts.append(("test", ctx.test))
    return parts


def class_figure(rows: list[ClassRow], series: dict[str, list[int]], title: str):
    """A matplotlib Figure of pixels per class on a log axis (see :func:`plot_classes`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rows)
    k = len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2) + (1.6 if k > 1 else 0), 4.5), dpi=100)
    x = np.arange(n)
    w = 0.8 / max(k, 1)
    top = max([1, *(v for s in series.values() for v in s)])
    for j, (label, counts) in enumerate(series.items()):
        pos = x - 0.4 + w * (j + 0.5)
        vals = np.asarray(counts, dtype=float)
        shown = np.where(vals > 0, vals, np.nan)  # log axis: an empty class has no bar (its count, 0, is written)
        colours = [r.colour if r.colour != "#000000" else "#404040" for r in rows] if k == 1 else None
        ax.bar(pos, shown, width=w, color=colours, edgecolor="#202020", linewidth=0.4, label=label)
        if k == 1:
            for p, v in zip(pos, counts):
                ax.text(p, max(v, 1) * 1.15, f"{v:,}", ha="center", va="bottom", fontsize=7, rotation=90 if n > 8 else 0)
    ax.set_yscale("log")
    ax.set_ylim(0.8, top * (12 if k == 1 else 3))
    ax.set_xticks(x, [r.name if len(r.name) <= 28 else r.name[:26] + "\u2026" for r in rows], rotation=60 if n > 4 else 0,
                  ha="right" if n > 4 else "center", fontsize=8)
    ax.set_ylabel("pixels (log scale)")
    ax.set_title(title, fontsize=10)
    if k > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_classes(rows: list[ClassRow], series: dict[str, list[int]], title: str) -> bytes:
    """PNG bytes of a bar chart of pixels per class on a log axis.

    Parameters
    ----------
    rows
        The classes (x axis, their names as tick labels; bar colours when one series).
    series
        ``{label: pixels per row}``: one series (a split part) is drawn in the class colours with
        counts above the bars; several are drawn side by side with a legend.
    title
        The chart title (also the PNG's ``Title`` text chunk).

    Returns
    -------
    bytes
        A PNG without time or software metadata (byte-identical for the same input).
    """
    import matplotlib.pyplot as plt

    fig = class_figure(rows, series, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None, "Title": title})
    plt.close(fig)
    return buf.getvalue()


def plot_title(recipe_name: str, part: str, units: int, pixels: int) -> str:
    """The title of a part's class plot: the part, its unit count and its label pixel total."""
    return f"{recipe_name}: {part}, {units:,} unit{'s' if units != 1 else ''}, {pixels:,} label pixels"


def hists_of(ctx: Context, ids: list[str]) -> list[dict[str, Any]]:
    """The label histograms (``metrics["label_hist"]``) of units ``ids``."""
    return [ctx.records[c]["metrics"].get("label_hist", {}) for c in ids]


def codes_seen(ctx: Context) -> set[int]:
    """Every label value of the kept units' histograms."""
    return {int(c) for h in hists_of(ctx, ctx.kept) for c in h}


@register("plots")
def _plots(ctx: Context) -> None:
    r = ctx.plan.recipe
    if not r.labels:
        return
    rows = class_rows(r, codes_seen(ctx))
    for split, ids in split_parts(ctx):
        counts = class_pixels(rows, hists_of(ctx, ids))
        png = plot_classes(rows, {split: counts}, plot_title(r.name, split, len(ids), sum(counts)))
        ctx.store.write_bytes(f"class_distribution_{split}.png", png)


def _plot_classes(hists: list[dict], names: dict[int, str], n_classes: int, title: str) -> bytes:
    """The former plot (pixels per class id 0..n_classes), kept for callers: now on a log axis."""
    rows = [ClassRow(i, names.get(i, str(i)), "#4c72b0", i == 0, (i,)) for i in range(n_classes + 1)]
    return plot_classes(rows, {"pixels": class_pixels(rows, hists)}, title)
