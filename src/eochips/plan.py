"""The plan: which units exist, on which grids, which scenes each source gives each unit, and
why any unit was dropped early. No imagery pixel is read (the probe reads headers and a
decimated overview of one scene per source).

``make_plan`` runs, per the grid kind (DESIGN.md, "the one-way flow")::

    AOI -> grid(s) -> units -> label pre-scan -> sampling -> search per source
        -> tile assignment -> selection per source and unit -> probe

For a ``label-raster`` or ``crs`` grid the grid comes first; for a ``scene`` grid the grid
source is searched and selected over the whole AOI first and each chosen scene gives a grid
(its CRS and pixel edges), so a plan may span several CRSs.

Scale: a plan of more than ``units.warn_above`` units (100 000) prints one ``warning:`` line
(:class:`PlanScaleWarning`); ``units.max_units`` refuses larger plans before their units are
made. Selection and the ``units.parquet`` writer work on batches of units, so their memory is
flat in the unit count; the plan's own unit objects remain (about 2-3 kB each).

Label pre-scan: the leading ``label-fraction`` filters (those before any imagery filter) and
strict-mode reclass checks are applied from the label source alone, so units that the seed's
chip-sampling step would have excluded never cost an imagery read, and a strict-mode failure
stops the run before anything is written. Sampling (seed 001's class balance) then draws among
the surviving units.

``write_plan`` stores the plan in ``{output}/plan/``: ``plan.json`` (the resolved recipe but its
``description``, ``reading`` and ``engine``, which go to ``run.json``: they cannot change an
output byte, so a rerun with other workers keeps the manifest; the grids; the summary),
``units.parquet`` (typed columns, EPSG:4326 geometry plus each unit's CRS and transform;
streamed in record batches of :data:`UNIT_BATCH` units) and ``scenes.parquet`` (the scenes per
source, hrefs with credentials redacted).

Selection ``greedy-coverage`` (cloud-buster) runs once over the whole AOI, not per unit: each
unit gets the picks whose footprint touches it, in pick order and with their roles, and the
plan keeps the strategy's log per source (``Plan.selection_log``, ``selection_log`` in
``plan.json``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import shapely
from odc.geo.geobox import GeoBox

from . import failpoints
from .chips import LayerRead, MaskRead, SceneRead, StepRead, UnitTask, task_fingerprint
from .config import Recipe, canonical, is_nan, parse_recipe
from .config.models import NON_OUTPUT_FIELDS, QA_MASKS, RECIPE_VERSION
from .errors import CatalogError, EochipsError, LabelError, OutputError, ProfileError, ReadError, RecipeError
from .filters import Reason, label_fraction_check, plan_time_filters
from .geo import (EQUAL_AREA, Grid, Unit, at_resolution, check_overlap, grid_for_aoi, grid_from_raster, load_aoi,
                  product_name, reproject_geometry, scene_gbox, tile_units, unit_size_px, unit_span, whole_tiles)
from .labels import (CDL_13_COLORS, CDL_13_NAMES, LabelSpec, Reclass, check_class_ids, default_colormap, make_reclass,
                     rasterize_vector, release_vector_indexes, vector_index)
from .profiles import BandSpec, Profile, QASpec, get_profile
from .progress import stage
from .reading import close_assets, probe, read_env, read_onto
from .search.auth import check_secret_vars
from .search import Scene, fetch_by_ids, is_redacted, redact, redact_obj, scene_from_item, search, sign_href
from .selection import Candidate, Pick, SceneGroup, SelectionContext, SelectionFailed, get_strategy
from .writers import OutputStore
from .writers.store import safe_name

PLAN_DIR = "plan"
UNIT_BATCH = 10_000
"""Rows per record batch of ``plan/units.parquet`` (:func:`write_plan` streams them)."""
SELECT_BATCH = 10_000
"""Units whose equal-area footprints and scene coverage are computed together in selection."""


class PlanScaleWarning(UserWarning):
    """The plan holds more units than ``units.warn_above`` (the CLI prints one ``warning:`` line)."""

RUN_FILE = "run.json"
"""``plan/run.json``: the recipe's ``description``, ``reading`` and ``engine`` (not in the manifest)."""


# --------------------------------------------------------------------------------------
# plan objects

@dataclass
class UnitPlan:
    """One unit of the plan: its scenes per source and time step, or why it was dropped.

    Attributes
    ----------
    unit
        The unit (grid index, row, col, GeoBox).
    id
        Its id (from ``units.id``).
    tile
        Its MGRS tile, when a source's profile can tell (``per: tile``) or its grid is a tile.
    groups
        Per source, the time steps: each a group of :class:`~eochips.selection.Pick`.
    status, code, reason
        ``planned`` or ``dropped``; the typed reason code and message of a drop.
    label_info
        Label pre-scan results (class pixel counts, unknown codes).
    """

    unit: Unit
    id: str
    tile: str | None = None
    groups: dict[str, list[SceneGroup]] = field(default_factory=dict)
    status: str = "planned"
    code: str = ""
    reason: str = ""
    label_info: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: Reason) -> None:
        self.status, self.code, self.reason = "dropped", reason.code, str(reason)

    @property
    def key(self) -> tuple[int, int, int]:
        return self.unit.key


@dataclass
class SourcePlan:
    """What the plan resolved for one source: its profile, bands, QA layer and the facts the
    probe read from its assets (per asset key: dtype, nodata, block layout)."""

    name: str
    profile: Profile
    bands: tuple[BandSpec, ...]
    qa: QASpec | None
    extra_assets: tuple[str, ...] = ()
    probed: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Plan:
    """The whole plan of a recipe (see the module docstring)."""

    recipe: Recipe
    grids: list[Grid]
    units: list[UnitPlan]
    scenes: dict[str, dict[str, Scene]]
    sources: dict[str, SourcePlan]
    match_report: list[dict] = field(default_factory=list)
    selection_log: dict[str, dict] = field(default_factory=dict)
    """Per source with an AOI-wide selection (``greedy-coverage``): its log (the strategy's notes:
    picks with scores, roles and remaining areas; see :func:`~eochips.selection.strategies.greedy_coverage`)."""

    @property
    def planned(self) -> list[UnitPlan]:
        return [u for u in self.units if u.status == "planned"]

    def summary(self) -> dict[str, Any]:
        """Counts and the byte estimate printed by ``eochips plan --dry-run``."""
        dropped: dict[str, int] = {}
        for u in self.units:
            if u.status == "dropped":
                dropped[u.code] = dropped.get(u.code, 0) + 1
        reads = 0
        for u in self.planned:
            for s, groups in u.groups.items():
                sp = self.sources[s]
                n_assets = len({b.key for b in sp.bands}) + (1 if sp.qa else 0) + len(sp.extra_assets)
                reads += n_assets * sum(len(g) for g in groups)
        return {
            "recipe": self.recipe.name, "scenes": sum(len(v) for v in self.scenes.values()),
            "scenes_per_source": {s: len(v) for s, v in self.scenes.items()}, "grids": len(self.grids),
            "units_total": len(self.units), "units_planned": len(self.planned), "units_dropped_in_plan": dropped,
            "reads": reads, "estimated_bytes": estimate_bytes(self),
            **({"years_tried": sum(1 for e in self.match_report if e.get("s2_tried")),
                "years_matched": sum(1 for e in self.match_report if e.get("matched"))} if self.match_report else {}),
        }


# --------------------------------------------------------------------------------------
# sources: bands, QA, assets

def qa_users(recipe: Recipe) -> set[str]:
    """Sources whose QA layer something reads (QA masks, the Fmask filter, seed layouts)."""
    out = set()
    for m in recipe.masks.sources:
        if m.kind in QA_MASKS:
            out.add(recipe.source_of(m.source))
    for f in recipe.filters:
        if f.kind == "fmask-bad-pct":
            out.add(recipe.source_of(f.source))
    for lay in recipe.output.layout:
        if lay.kind == "seed-001" and lay.write_qa:
            src = recipe.source_of(lay.source)
            if get_profile(recipe.sources[src].profile).qa is not None:
                out.add(src)
        elif lay.kind == "seed-000-cmask":
            out.add(lay.source)
    return out


def resolve_sources(recipe: Recipe) -> dict[str, SourcePlan]:
    """Profiles, bands and QA layers of every source, checked against the recipe's other parts.

    Raises
    ------
    ProfileError, RecipeError
        An unknown profile or band; a fill the dtype cannot hold; a mask, filter or layout that
        needs a QA kind the source's profile does not have; bands that cannot share a file.
    """
    users = qa_users(recipe)
    out = {}
    for name, cfg in recipe.sources.items():
        profile = get_profile(cfg.profile)
        bands = profile.resolve(cfg.bands, cfg.resampling, where=f"sources.{name}.bands")
        qa = profile.qa if name in users else None
        if name in users and qa is None:
            raise RecipeError(f"source {name!r}: something reads its QA layer (masks, an fmask-bad-pct filter or a seed "
                              f"layout) but profile {profile.name!r} has none")
        extra = tuple(sorted({k for m in recipe.masks.sources if m.kind not in QA_MASKS and recipe.source_of(m.source) == name
                              for k in m.bands}))
        if not bands and qa is None:
            raise RecipeError(f"recipe field 'sources.{name}.bands': the source reads nothing; list its bands")
        out[name] = SourcePlan(name, profile, bands, qa, extra)
    for i, m in enumerate(recipe.masks.sources):
        if m.kind in QA_MASKS:
            sp = out[recipe.source_of(m.source)]
            if sp.qa.kind != m.kind:
                raise RecipeError(f"recipe field 'masks.sources.{i}.kind': {m.kind!r} needs a source whose QA is {m.kind!r}; "
                                  f"source {sp.name!r} (profile {sp.profile.name!r}) has QA {sp.qa.kind!r}")
    for i, f in enumerate(recipe.filters):
        if f.kind == "fmask-bad-pct" and out[recipe.source_of(f.source)].qa.kind != "fmask":
            raise RecipeError(f"recipe field 'filters.{i}': fmask-bad-pct needs a source with Fmask QA")
    from .writers.layouts import cast_dtype, common_fill

    for i, lay in enumerate(recipe.output.layout):
        where = f"recipe field 'output.layout.{i}'"
        if lay.kind == "seed-001":
            common_fill(out[recipe.source_of(lay.source)].bands, where)
        elif lay.kind == "stack":
            cast_dtype([b for s in (lay.sources or list(out)) for b in out[s].bands], lay.dtype, where)
        elif lay.kind == "mosaic":  # a pixel is copied with all its bands: one dtype, one fill
            common_fill(out[recipe.source_of(lay.source)].bands, where)
        elif lay.kind == "seed-000-cmask" and out[lay.source].qa.kind != "fmask":
            raise RecipeError(f"{where}: seed-000-cmask needs a source with Fmask QA; {lay.source!r} has {out[lay.source].qa.kind!r}")
    return out


def _check_assets(scenes: list[Scene], sp: SourcePlan) -> None:
    keys = sorted({b.asset for b in sp.bands} | ({sp.qa.asset} if sp.qa else set()) | set(sp.extra_assets))
    for s in scenes:
        missing = [k for k in keys if k not in s.assets]
        if missing:
            raise ProfileError(f"source {sp.name!r}: item {s.id!r} has no asset(s) {missing} that profile "
                               f"{sp.profile.name!r} needs; its assets: {sorted(s.assets)}")


# --------------------------------------------------------------------------------------
# labels

def label_spec(recipe: Recipe) -> LabelSpec | None:
    """Where units get their labels (raster + reclass, or polygons) and the class colours (uint8
    class maps only: a uint16 map of codes has no colour table)."""
    lab = recipe.labels
    if lab is None:
        return None
    raster = lab.raster or (recipe.grid.path if recipe.grid.kind == "label-raster" and lab.vector is None else None)
    reclass = make_reclass(lab.reclass, lab.unknown_class, lab.strict) if raster else None
    if lab.class_dtype != "uint8":
        cmap = {}
    elif lab.reclass == "cdl-13":
        cmap = CDL_13_COLORS
    else:
        n = max([*(lab.classes or {}).values(), *((reclass.table.values()) if reclass else []), 1])
        cmap = default_colormap(int(n))
    if raster is None and lab.vector is None:
        raise LabelError("labels: give labels.raster, labels.vector, or a label-raster grid")
    if lab.vector is not None and lab.burn == "classes":
        check_class_ids(lab.classes or {}, "labels.classes", lab.class_dtype)
    hi = int(np.iinfo(np.dtype(lab.class_dtype)).max)
    for i, f in enumerate(recipe.filters):  # a class the map cannot hold would never match: a filter that silently keeps all
        wide = [c for c in getattr(f, "classes", None) or [] if f.kind == "label-fraction" and not 0 <= c <= hi]
        if wide:
            raise LabelError(f"filters[{i}] (label-fraction): class(es) {wide} do not fit the {lab.class_dtype} class map "
                             f"(0..{hi}); use classes 0..{hi}" + (" or labels.dtype: uint16" if hi == 255 else ""))
    return LabelSpec(raster=raster, reclass=reclass, vector=lab.vector, class_field=lab.class_field,
                     classes=tuple(sorted((lab.classes or {}).items())) if lab.burn == "classes" else (),
                     colormap=tuple(sorted(cmap.items())), nodata_class=lab.nodata_class, burn=lab.burn,
                     dtype=lab.class_dtype, fill=lab.fill_class, table=lab.table,
                     names=tuple(sorted(class_names(recipe).items())) if lab.class_dtype == "uint8" else ())


def class_names(recipe: Recipe) -> dict[int, str]:
    """Class id -> name for plots and the catalog."""
    lab = recipe.labels
    if lab is None:
        return {}
    if lab.class_names:
        return dict(lab.class_names)
    if lab.reclass == "cdl-13":
        return dict(CDL_13_NAMES)
    if lab.table is not None:  # CORINE codes: their 19-class names, UNLABELED for the rest
        from .labels import MULTI_LABEL_TABLES

        named, unlabeled = MULTI_LABEL_TABLES[lab.table]
        return dict(sorted({**named, **{c: "UNLABELED" for c in unlabeled}}.items()))
    if lab.classes:
        return {0: "unlabelled", **{v: k for k, v in lab.classes.items()}}
    return {}


def _grid_bounds(grid: Grid) -> tuple[float, float, float, float]:
    return tuple(grid.gbox.boundingbox[:4])


LABEL_STRIP_ROWS = 8
"""Unit rows per vector-label read: the polygons are read and indexed per strip of the grid
(its whole width, this many rows of units), not per whole grid, so a process holds a strip's
polygons, not a tile's (a 109,800 m CORINE tile's index is ~0.6 GB; a strip of 8 rows of
1200 m patches ~1/11 of it). Polygons crossing a strip edge are read once per strip."""


def _label_strip(grid: Grid, unit: Unit) -> tuple[float, float, float, float]:
    """The bounds (grid CRS) of the vector-label strip holding ``unit``: the grid's width and the
    :data:`LABEL_STRIP_ROWS` unit rows from the unit's row block (always containing the unit)."""
    x0, y0, x1, y1 = _grid_bounds(grid)
    ux0, uy0, ux1, uy1 = unit.gbox.boundingbox[:4]
    h = (uy1 - uy0) * LABEL_STRIP_ROWS
    k = math.floor((y1 - uy1) / h + 1e-9)
    top = y1 - k * h
    return (min(x0, ux0), max(y0, min(uy0, top - h)), max(x1, ux1), max(uy1, top))


def _scan_labels(recipe: Recipe, spec: LabelSpec, units: list[UnitPlan], grids: list[Grid]) -> None:
    """Label pre-scan (module docstring): class counts per unit, strict-mode codes, the leading
    label filters. Then the checks of the label source as a whole: vector labels with no
    feature over any grid (a wrong or mismatched CRS) and labels that give no unit any class
    are errors (:class:`LabelError` naming the file); repaired polygons are reported in one
    ``note:`` line (:class:`~eochips.labels.LabelNote`)."""
    lab = recipe.labels
    env = read_env(recipe.reading)
    rules = recipe.filters[:plan_time_filters(recipe.filters)]
    strict_bad: dict[str, list[int]] = {}
    read: dict[int, tuple] = {}  # per grid: what the cover check needs (the polygons themselves stay in the cache)
    strips: set[tuple] = set()
    for up in units:
        g = up.unit.gbox
        tr, shape = tuple(g.affine)[:6], tuple(g.shape)
        if spec.vector:
            gr = grids[up.unit.grid]
            strip = _label_strip(gr, up.unit)
            if (up.unit.grid, strip) not in strips:
                strips.add((up.unit.grid, strip))
                i = vector_index(spec.vector, spec.class_field, spec.classes, gr.gbox.crs.to_wkt(), strip,
                                 spec.burn, spec.dtype, spec.table)
                n, fids, *_ = read.get(up.unit.grid, (0, ()))
                read[up.unit.grid] = (n + len(i.geoms), tuple(sorted({*fids, *i.repaired})), i.layer_bounds, i.file_crs)
            classes = rasterize_vector(spec.vector, spec.class_field, dict(spec.classes), g.crs.to_wkt(), tr, shape,
                                       strip, burn=spec.burn, dtype=spec.dtype, fill=spec.fill, table=spec.table)
            unknown: dict[int, int] = {}
        else:
            try:
                codes = read_onto(spec.raster, g.crs.to_wkt(), tr, shape, resampling="nearest", env=env)
            except ReadError as exc:
                raise LabelError(f"label raster {spec.raster!r}: {exc}") from None
            if spec.reclass is not None:
                relaxed = Reclass(spec.reclass.table, spec.reclass.unknown_class, strict=False)
                classes, unknown = relaxed.apply(codes)
            else:
                classes, unknown = codes.astype(np.uint8), {}
        hist = np.bincount(classes.ravel(), minlength=256)  # uint16 codes: as long as the largest code
        up.label_info = {"class_pixels": {int(k): int(v) for k, v in enumerate(hist) if v},
                         "label_nodata_pixels": int((classes == spec.fill).sum())}
        if unknown:
            up.label_info["unknown_codes"] = unknown
            if lab.strict:
                strict_bad[up.id] = sorted(unknown)
        for rule in rules:
            _, reason = label_fraction_check(rule, classes)
            if reason is not None:
                up.drop(reason)
                break
    if spec.vector:
        _check_vector_cover(spec, grids, read)
    empty = {spec.fill, lab.nodata_class} | ({0} if spec.burn == "classes" else set())
    labelled = sum(n for up in units for c, n in up.label_info["class_pixels"].items() if c not in empty)
    if units and labelled == 0:
        src = f"labels.vector {spec.vector!r}" if spec.vector else f"label raster {spec.raster!r}"
        shown = " or ".join(str(c) for c in sorted(empty))
        raise LabelError(f"{src} gives no unit any class: every label pixel of the {len(units)} unit(s) is {shown} (no data); "
                         f"check the file's extent and CRS, labels.classes / labels.reclass and labels.nodata_class")
    if strict_bad:
        codes = sorted({c for v in strict_bad.values() for c in v})
        first = sorted(strict_bad)[:5]
        raise LabelError(
            f"labels: code(s) {codes} are not in the reclass table {lab.reclass!r} (in {len(strict_bad)} unit(s), e.g. "
            f"{', '.join(first)}); add them to labels.reclass or set labels.strict: false"
        )


def _check_vector_cover(spec: LabelSpec, grids: list[Grid], read: dict[int, tuple]) -> None:
    """Vector labels must reach the grids; repaired polygons get one note (see :func:`_scan_labels`).
    ``read``: per grid index, ``(polygons over it, repaired FIDs, layer bounds, file CRS)``."""
    import warnings

    from .labels import LabelNote

    if read and not any(n for n, *_ in read.values()):
        gi = min(read)
        g = grids[gi]
        crs = g.gbox.crs.epsg
        lb = ", ".join(f"{v:.6g}" for v in read[gi][2])
        gb = ", ".join(f"{v:.6g}" for v in _grid_bounds(g))
        raise LabelError(f"labels.vector {spec.vector!r}: no feature lies over the grid (layer extent [{lb}] in "
                         f"{read[gi][3]}, grid extent [{gb}] in {f'EPSG:{crs}' if crs else g.gbox.crs.to_wkt()}); "
                         f"check the file's CRS and the AOI")
    repaired = sorted({f for _, fids, *_ in read.values() for f in fids})
    if repaired:
        shown = ", ".join(map(str, repaired[:5])) + (", ..." if len(repaired) > 5 else "")
        warnings.warn(f"labels.vector {spec.vector!r}: repaired {len(repaired)} invalid polygon(s) (FID {shown}) with "
                      f"shapely.make_valid (structure: shells minus holes, overlaps merged)", LabelNote, stacklevel=2)


def _sample(recipe: Recipe, units: list[UnitPlan]) -> None:
    """Apply ``sampling`` to the units still planned (seed 001's class balance needs their
    label class counts, classes 1..K; class 0 is no data)."""
    from .sampling import get_sampler

    cfg = recipe.sampling
    if cfg.kind == "all":
        return
    live = [u for u in units if u.status == "planned"]
    if not live:
        return
    params = cfg.model_dump(exclude={"kind"})
    counts = None
    if cfg.kind == "class-balance":
        k = max([c for u in live for c in u.label_info.get("class_pixels", {})] + [max(class_names(recipe) or [1]), 1])
        counts = np.zeros((len(live), k), dtype=np.int64)
        for i, u in enumerate(live):
            for c, n in u.label_info.get("class_pixels", {}).items():
                if c >= 1:
                    counts[i, c - 1] = n
        params["min_classes"] = min(params["min_classes"], k)
    keep = set(int(i) for i in get_sampler(cfg.kind)(counts=counts, n_units=len(live), **params))
    for i, u in enumerate(live):
        if i not in keep:
            u.drop(Reason("sampling", f"not drawn by {cfg.kind} sampling (n={cfg.n}, seed={cfg.seed})"))


# --------------------------------------------------------------------------------------
# grids and units

def _unit_id(template: str, grid: Grid, row: int, col: int, size: int) -> str:
    # a scene grid's name is an item id, a tile comes from item properties: both sanitised (safe_name)
    return template.format(row=row, col=col, grid=safe_name(grid.name), tile=safe_name(grid.tile or ""),
                           date=grid_date(grid), n=window_number(grid, size, row, col),
                           product=safe_name(grid.product or grid.name))


def grid_date(grid: Grid):
    """The date of a scene grid's scene as a :class:`datetime.date` (``{date}`` formats as
    YYYY-MM-DD, ``{date:%Y%m%d}`` as any strftime form); None on other grids."""
    from datetime import date

    return date.fromisoformat(grid.date) if grid.date else None


def window_number(grid: Grid, size: int, row: int, col: int) -> int:
    """The 1-based row-major position of chip ``(row, col)`` among all ``size`` px windows of
    ``grid`` (remainder dropped): Clay's tile.py counter (``n`` of ``claytile_..._{n:04d}.tif``)."""
    return row * (grid.gbox.shape[1] // size) + col + 1


def _make_units(recipe: Recipe, grids: list[Grid], aoi, aoi_crs) -> list[UnitPlan]:
    u = recipe.units
    template = u.id or (("{grid}_{col:02d}_{row:02d}" if recipe.grid.kind == "scene" else "chip_{row:03d}_{col:03d}")
                        if u.kind == "chip" else "tile_{row:03d}_{col:03d}")
    out: list[UnitPlan] = []
    sizes = [unit_size_px(g.gbox, u.size, u.size_m) for g in grids]
    aois = [shapely.box(*g.gbox.boundingbox) if u.extent == "grid" else reproject_geometry(aoi, aoi_crs, g.gbox.crs.to_wkt())
            for g in grids]
    most = sum(_count_units(g, n, a) for g, n, a in zip(grids, sizes, aois))
    if u.max_units is not None and most > u.max_units:
        raise RecipeError(f"recipe field 'units.max_units': the AOI holds up to {most} units, more than max_units "
                          f"({u.max_units}); shrink the AOI, enlarge units.size or raise units.max_units")
    for g, size, aoi_g in zip(grids, sizes, aois):
        if u.extent == "grid":  # every full window of the grid (Clay's tiler); the AOI chose the scenes
            aoi_g = shapely.box(*g.gbox.boundingbox)
        for unit in tile_units(g, size, aoi_g, u.min_aoi_fraction):
            out.append(UnitPlan(unit, _unit_id(template, g, unit.row, unit.col, size), g.tile))
    seen: dict[str, tuple] = {}
    for up in out:
        if up.id in seen:
            raise RecipeError(f"recipe field 'units.id': template {template!r} gives the id {up.id!r} to two units "
                              f"(grid/row/col {seen[up.id]} and {up.key}); add {{grid}}, {{row}} and {{col}}")
        seen[up.id] = up.key
    if not out:
        what = f"{u.size} px" if u.size else f"{u.size_m:g} m"
        raise LabelError(f"no {what} unit of the grid lies inside the AOI; enlarge the AOI or lower units.size")
    if len(out) > u.warn_above:
        import warnings

        warnings.warn(f"the plan holds {len(out)} units (more than units.warn_above = {u.warn_above}): planning and "
                      f"building take a while and the index is large; set units.max_units to refuse such plans",
                      PlanScaleWarning, stacklevel=2)
    return sorted(out, key=lambda p: p.key)


def _count_units(grid: Grid, size: int, aoi_grid) -> int:
    """How many units of ``grid`` the AOI's bounding box spans (an upper bound of what
    :func:`~eochips.geo.tile_units` makes), without making them."""
    r0, r1, c0, c1 = unit_span(grid, size, aoi_grid)
    return max(0, r1 - r0 + 1) * max(0, c1 - c0 + 1)


def _scene_grids(recipe: Recipe, sp: SourcePlan, scenes: list[Scene], aoi, aoi_crs,
                 matcher: "_Matcher") -> tuple[list[Grid], list[Scene], list[dict]]:
    """Scene grid: select the grid source's scenes over the AOI (per tile of a tile-list AOI,
    seeded by its row); one grid per chosen scene. Returns the grids, their scenes and the
    match report (one entry per tile and year tried, for strategies that keep one)."""
    g = recipe.grid
    cfg = recipe.sources[g.source].selection
    if recipe.aoi.row is not None:
        from .geo import aoi_tiles

        tiles, file_crs = aoi_tiles(recipe.aoi)
        jobs = [(t.name, t.row, t.geometry, file_crs or aoi_crs) for t in tiles]
    else:
        jobs = [(None, 0, aoi, aoi_crs)]
    env = read_env(recipe.reading, recipe.sources[g.source].search.auth, recipe.sources[g.source].search.auth_hosts)
    grids, chosen, report, failures = [], [], [], []
    for tile, row, geom, crs in jobs:
        area = reproject_geometry(geom, crs, EQUAL_AREA)
        ctx = SelectionContext(tile or "aoi", area, _candidates_for_area(scenes, sp.profile, area), cfg, {}, g.source,
                               accept=matcher if matcher.names else None, seed=row)
        try:
            groups = get_strategy(cfg.kind)(ctx)
        except SelectionFailed as exc:
            groups = []
            failures.append(f"{tile}: {exc}" if tile else str(exc))
        report += [_report_entry(tile, row, e, matcher.names) for e in ctx.notes.get("years", [])]
        for grp in groups:
            scene = grp[0].scene
            band = min(sp.bands, key=lambda b: (b.resolution or math.inf)) if sp.bands else sp.qa.as_band()
            gbox = scene_gbox(scene.properties, scene.asset_fields.get(band.asset, {}), scene.assets.get(band.asset), env=env)
            if g.resolution is not None:
                gbox = at_resolution(gbox, g.resolution, "grid.resolution")
            grids.append(Grid(len(grids), scene.id, gbox, tile or sp.profile.tile_of(scene.id, scene.properties),
                              scene.datetime.strftime("%Y-%m-%d"), product_name(scene.id, scene.properties)))
            chosen.append(scene)
    if not grids:
        raise CatalogError(f"grid: no scene of source {g.source!r} can give the grid ({'; '.join(failures)})")
    return grids, chosen, report


def _report_entry(tile: str | None, row: int, year: dict, names: list[str]) -> dict:
    """One match-report row (tile, year): the strategy's entry, with each matched source's
    outcome for the chosen scene (or the last one tried) flattened as ``{source}_*`` keys."""
    tries = year.get("tries", [])
    last = next((t for t in tries if t.get("scene") == year.get("s2_chosen")), tries[-1] if tries else {})
    out = {"tile": tile, "row": row, **{k: v for k, v in year.items() if k != "tries"}}
    for n in names:
        d = last.get(n) or {}
        out.update({f"{n}_candidates": d.get("candidates", 0), f"{n}_chosen": d.get("chosen", []),
                    f"{n}_coverage": d.get("coverage", 0.0), f"{n}_reason": d.get("reason", "")})
    out["tries"] = tries
    return out


class _Matcher:
    """The selections of the sources matched to a scene grid's source (``nearest-in-time``
    with ``relative_to`` = the grid source), run per candidate scene of it over that scene's
    footprint (the seed matched Sentinel-1 to the whole Sentinel-2 scene): the grid strategy
    calls it to accept a scene (every matched source found its scenes), and the units of each
    grid then take the groups found for the grid's scene."""

    def __init__(self, recipe: Recipe, sources: dict[str, SourcePlan], ref: str, ref_scenes: list[Scene],
                 found: dict[str, list[Scene]]):
        self.recipe, self.sources, self.ref, self.found = recipe, sources, ref, found
        self.names = [n for n, c in recipe.sources.items()
                      if c.selection.kind == "nearest-in-time" and c.selection.relative_to == ref]
        self.groups: dict[str, dict[str, list[SceneGroup]]] = {}
        self.reasons: dict[str, str] = {}
        if self.names and ref_scenes:
            hull = shapely.union_all([s.geometry for s in ref_scenes]).convex_hull  # every footprint a match may need
            for n in self.names:
                found[n] = _search_or_none(recipe.sources[n].search, hull)
                _check_assets(found[n], sources[n])
        # footprints reprojected once, not once per S2 scene tried (up to attempts x years of them)
        self.feet = {n: [reproject_geometry(s.geometry, "EPSG:4326", EQUAL_AREA) for s in found.get(n, [])] for n in self.names}

    def __call__(self, scene: Scene) -> tuple[bool, dict]:
        area = reproject_geometry(scene.geometry, "EPSG:4326", EQUAL_AREA)
        detail: dict[str, Any] = {}
        groups: dict[str, list[SceneGroup]] = {}
        for n in self.names:
            cfg = self.recipe.sources[n].selection
            ctx = SelectionContext(scene.id, area, _candidates_for_area(self.found[n], self.sources[n].profile, area, self.feet[n]), cfg,
                                   {self.ref: [(Pick(scene),)]}, n)
            try:
                groups[n] = get_strategy(cfg.kind)(ctx)
            except SelectionFailed as exc:
                detail[n] = (ctx.notes.get("match") or [{}])[0]
                detail["reason"] = self.reasons[scene.id] = f"source {n!r}: {exc}"
                return False, detail
            detail[n] = ctx.notes["match"][0]
        self.groups[scene.id] = groups
        return True, detail


def _search_or_none(cfg, aoi_ll) -> list[Scene]:
    """``search``, with no match being an empty list (a matched source may have no scene)."""
    from .errors import NoScenesError

    try:
        return search(cfg, aoi_ll)
    except NoScenesError:
        return []


def _candidates_for_area(scenes: list[Scene], profile: Profile, area_ea, feet: list | None = None) -> list[Candidate]:
    """The scenes overlapping ``area_ea`` (equal-area CRS) with their coverage (percent) and
    footprints, in (datetime, id) order; ``feet``: the scenes' equal-area footprints when the
    caller already has them (the matcher asks for every candidate scene of the grid source)."""
    out = []
    a = area_ea.area
    for i, s in enumerate(scenes):
        foot = feet[i] if feet is not None else reproject_geometry(s.geometry, "EPSG:4326", EQUAL_AREA)
        inter = foot.intersection(area_ea).area
        if inter > 0:
            out.append(Candidate(s, 100.0 * inter / a, foot))
    return sorted(out, key=lambda c: (c.scene.datetime, c.scene.id))


def _unit_polygons_ea(units: list[UnitPlan], grids: list[Grid]) -> np.ndarray:
    """Unit footprints in the equal-area CRS (edges densified), as a shapely array."""
    out = np.empty(len(units), dtype=object)
    by_grid: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        by_grid[u.unit.grid].append(i)
    for gi, idx in by_grid.items():
        polys = np.array([units[i].unit.polygon for i in idx], dtype=object)
        out[idx] = reproject_geometry(polys, grids[gi].gbox.crs.to_wkt(), EQUAL_AREA)
    return out


def _coverage(scenes: list[Scene], profile: Profile, polys_ea: np.ndarray) -> tuple[np.ndarray, list]:
    """``(n_units, n_scenes)`` coverage in percent: the item's own tile coverage attribute when its
    profile names one (HLS SPATIAL_COVERAGE), else footprint-over-unit area in the equal-area CRS."""
    foot = [reproject_geometry(s.geometry, "EPSG:4326", EQUAL_AREA) for s in scenes]
    cov = np.zeros((len(polys_ea), len(scenes)))
    area = shapely.area(polys_ea)
    tree = shapely.STRtree(polys_ea)
    for j, f in enumerate(foot):
        idx = tree.query(f, predicate="intersects")
        if idx.size:
            cov[idx, j] = 100.0 * shapely.area(shapely.intersection(polys_ea[idx], f)) / area[idx]
    for j, s in enumerate(scenes):
        attr = s.properties.get(profile.coverage_property) if profile.coverage_property else None
        if attr is not None:
            cov[cov[:, j] > 0, j] = float(attr)
    return cov, foot


def _assign_tiles(scenes: list[Scene], profile: Profile, units: list[UnitPlan], grids: list[Grid]) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Seed 001's unit -> tile rule: the tile whose centroid is nearest (projected distance in the
    unit's grid CRS); among tiles whose footprints cover the unit fully when there are any.

    Returns ``(scene indices per tile, tile per unit id)``; both empty when the profile cannot
    tell the tile of a scene."""
    by_tile: dict[str, list[int]] = {}
    for j, s in enumerate(scenes):
        t = profile.tile_of(s.id, s.properties)
        if t is None:
            return {}, {}
        by_tile.setdefault(t, []).append(j)
    names = sorted(by_tile)
    tile_of: dict[str, str] = {}
    for gi in sorted({u.unit.grid for u in units}):
        crs = grids[gi].gbox.crs.to_wkt()
        unions = [shapely.union_all([reproject_geometry(scenes[j].geometry, "EPSG:4326", crs) for j in by_tile[t]]) for t in names]
        cents = [u.centroid for u in unions]
        for up in (u for u in units if u.unit.grid == gi):
            poly = up.unit.polygon
            c = poly.centroid
            full = [i for i, u in enumerate(unions) if u.covers(poly)]
            pool = full or range(len(names))
            tile_of[up.id] = names[min(pool, key=lambda i: (c.distance(cents[i]), names[i]))]
    return by_tile, tile_of


def _select(recipe: Recipe, name: str, sp: SourcePlan, scenes: list[Scene], units: list[UnitPlan], grids: list[Grid],
            aoi_ea=None) -> dict | None:
    """Choose each live unit's time steps of source ``name`` (drops units without acceptable scenes).

    ``aoi_ea``: the AOI in the equal-area CRS, for the AOI-wide strategies (``greedy-coverage``,
    :func:`_select_aoi`), whose log is returned; None for the others."""
    cfg = recipe.sources[name].selection
    strategy = get_strategy(cfg.kind)
    live = [u for u in units if u.status == "planned"]
    if cfg.kind in AOI_WIDE:
        return _select_aoi(strategy, cfg, name, sp, scenes, live, grids, aoi_ea)
    if not live:
        return None
    per = getattr(cfg, "per", "unit")
    if per == "grid":
        _select_per_grid(strategy, cfg, name, sp, scenes, live, grids)
        return None
    by_tile, tile_of = _assign_tiles(scenes, sp.profile, live, grids) if per == "tile" else ({}, {})
    for start in range(0, len(live), SELECT_BATCH):  # footprints and coverage a batch at a time: flat memory
        _select_batch(strategy, cfg, name, sp, scenes, live[start:start + SELECT_BATCH], grids, by_tile, tile_of)
    return None


AOI_WIDE = {"greedy-coverage"}
"""Selection kinds run once over the whole AOI (:func:`_select_aoi`)."""


def _select_aoi(strategy, cfg, name: str, sp: SourcePlan, scenes: list[Scene], live: list[UnitPlan], grids: list[Grid],
                aoi_ea) -> dict:
    """One selection over the whole AOI (``aoi_ea``, equal-area CRS); each live unit gets the
    picks whose equal-area footprint overlaps its polygon (intersection area > 0), in pick order
    with their roles, as one time step; a unit touching no pick is dropped (``selection``).
    Returns the strategy's log (``ctx.notes``)."""
    ctx = SelectionContext("aoi", aoi_ea, _candidates_for_area(scenes, sp.profile, aoi_ea), cfg, {}, name)
    try:
        picks = [p for grp in strategy(ctx) for p in grp]
    except SelectionFailed as exc:
        for up in live:
            up.drop(Reason("selection", f"source {name!r}: {exc}"))
        return ctx.notes
    feet = {c.scene.id: c.footprint for c in ctx.candidates}
    for start in range(0, len(live), SELECT_BATCH):
        batch = live[start:start + SELECT_BATCH]
        polys = _unit_polygons_ea(batch, grids)
        tree = shapely.STRtree(polys)
        touched: list[list[Pick]] = [[] for _ in batch]
        for p in picks:  # in pick order: each unit's list keeps it
            foot = feet[p.scene.id]
            idx = tree.query(foot, predicate="intersects")
            if idx.size:
                areas = shapely.area(shapely.intersection(polys[idx], foot))
                for i in idx[areas > 0]:
                    touched[int(i)].append(p)
        for up, got in zip(batch, touched):
            if got:
                up.groups[name] = [tuple(got)]
            else:
                up.drop(Reason("selection", f"source {name!r}: {cfg.kind}: none of the {len(picks)} picked scene(s) "
                                            f"touches the unit"))
    return ctx.notes


def _select_per_grid(strategy, cfg, name: str, sp: SourcePlan, scenes: list[Scene], live: list[UnitPlan],
                     grids: list[Grid]) -> None:
    """``per: grid``: one selection per grid over its whole extent, given to each of its units."""
    by_grid: dict[int, list[UnitPlan]] = defaultdict(list)
    for up in live:
        by_grid[up.unit.grid].append(up)
    for gi, ups in by_grid.items():
        g = grids[gi]
        area = reproject_geometry(shapely.box(*g.gbox.boundingbox), g.gbox.crs.to_wkt(), EQUAL_AREA)
        ctx = SelectionContext(g.name or str(gi), area, _candidates_for_area(scenes, sp.profile, area), cfg,
                               dict(ups[0].groups), name)
        try:
            groups = strategy(ctx)
        except SelectionFailed as exc:
            for up in ups:
                up.drop(Reason("selection", f"source {name!r}: {exc}"))
            continue
        for up in ups:
            up.groups[name] = groups


def _select_batch(strategy, cfg, name: str, sp: SourcePlan, scenes: list[Scene], live: list[UnitPlan], grids: list[Grid],
                  by_tile: dict[str, list[int]], tile_of: dict[str, str]) -> None:
    polys = _unit_polygons_ea(live, grids)
    cov, foot = _coverage(scenes, sp.profile, polys)
    for i, up in enumerate(live):
        tile = tile_of.get(up.id)
        idx = by_tile.get(tile, range(len(scenes))) if by_tile else range(len(scenes))
        cands = [Candidate(scenes[j], float(cov[i, j]), foot[j]) for j in idx if cov[i, j] > 0]
        cands.sort(key=lambda c: (c.scene.datetime, c.scene.id))
        if tile and up.tile is None:
            up.tile = tile
        ctx = SelectionContext(tile or up.id, polys[i], cands, cfg, dict(up.groups), name)
        try:
            up.groups[name] = strategy(ctx)
        except SelectionFailed as exc:
            up.drop(Reason("selection", f"source {name!r}: {exc}"))


# --------------------------------------------------------------------------------------
# making the plan

def _in_reference_order(recipe: Recipe) -> list[tuple[str, Any]]:
    """The sources in recipe order, except that a source matched to another (``relative_to``)
    comes after it: its selection reads the other's picks."""
    items = list(recipe.sources.items())
    first = [(n, c) for n, c in items if c.selection.kind != "nearest-in-time"]
    return first + [(n, c) for n, c in items if c.selection.kind == "nearest-in-time"]

def make_plan(recipe: Recipe, probe: bool = True) -> Plan:
    """Plan a recipe (see the module docstring): no imagery is read, except headers and a
    decimated overview of each source's earliest selected scene when ``probe`` is true
    (:func:`probe_assets`).

    Raises
    ------
    AOIError, RecipeError, LabelError, CatalogError, NoScenesError, ProfileError, ReadError
        Bad input, each with a message naming the field or file.
    """
    sources = resolve_sources(recipe)
    aoi, aoi_crs = load_aoi(recipe.aoi)
    aoi_ll = reproject_geometry(aoi, aoi_crs, "EPSG:4326")
    g = recipe.grid
    found: dict[str, list[Scene]] = {}
    if g.kind == "label-raster":
        gbox = grid_from_raster(g.path)
        check_overlap(gbox, aoi, aoi_crs, f"label raster {g.path!r}")
        grids = [Grid(0, "", gbox)]
    elif g.kind == "crs":
        grids = [Grid(0, "", grid_for_aoi(g.crs, g.resolution, g.origin, aoi, aoi_crs))]
    else:
        sel = recipe.sources[g.source].selection.kind
        if sel in AOI_WIDE:
            raise RecipeError(f"recipe field 'sources.{g.source}.selection.kind': {sel} chooses scenes for the whole AOI, "
                              f"not the scenes of a scene grid; use grid: {{kind: crs, ...}} for it")
        sp = sources[g.source]
        with stage(f"plan: searching {g.source}", f"search:{g.source}"):
            found[g.source] = search(recipe.sources[g.source].search, aoi_ll)
        _check_assets(found[g.source], sp)
        matcher = _Matcher(recipe, sources, g.source, found[g.source], found)
        with stage(f"plan: selecting {g.source} scene grids from {len(found[g.source])} scene(s)", f"selection:{g.source}"):
            grids, chosen, report = _scene_grids(recipe, sp, found[g.source], aoi, aoi_crs, matcher)
        if recipe.units.extent == "grid":  # units reach past the AOI: the other sources are searched over the grids too
            aoi_ll = shapely.union_all([aoi_ll] + [reproject_geometry(shapely.box(*gr.gbox.boundingbox), gr.gbox.crs.to_wkt(),
                                                                      "EPSG:4326") for gr in grids])
    if recipe.units.kind == "tile":  # a mosaic's tiles cover the whole AOI: the last row and column are whole tiles too
        grids = [replace(gr, gbox=whole_tiles(gr.gbox, recipe.units.size)) for gr in grids]
    units = _make_units(recipe, grids, aoi, aoi_crs)
    selection_log: dict[str, dict] = {}
    aoi_ea = reproject_geometry(aoi, aoi_crs, EQUAL_AREA) if any(
        c.selection.kind in AOI_WIDE for c in recipe.sources.values()) else None
    spec = label_spec(recipe)
    if spec is not None:
        with stage(f"plan: scanning labels of {len(units)} unit(s)", "label_scan"):
            _scan_labels(recipe, spec, units, grids)
        if spec.vector:
            release_vector_indexes()  # the workers build their own; the planning process need not hold it
    _sample(recipe, units)
    for name, cfg in _in_reference_order(recipe):
        if g.kind == "scene" and name == g.source:
            by_id = {s.id: s for s in chosen}
            for up in units:
                up.groups[name] = [(Pick(by_id[grids[up.unit.grid].name]),)]
            continue
        if g.kind == "scene" and name in matcher.names:  # matched per grid scene (while the grids were chosen)
            by_id = {s.id: s for s in chosen}
            for up in units:
                sid = grids[up.unit.grid].name
                if sid not in matcher.groups and sid not in matcher.reasons:
                    matcher(by_id[sid])  # a grid strategy that does not ask for matches
                if sid in matcher.groups:
                    up.groups[name] = matcher.groups[sid][name]
                elif up.status == "planned":
                    up.drop(Reason("selection", matcher.reasons[sid]))
            continue
        with stage(f"plan: searching {name}", f"search:{name}"):
            found[name] = search(cfg.search, aoi_ll)  # unsigned: signed hrefs never reach the plan files
        _check_assets(found[name], sources[name])
        with stage(f"plan: selecting {name} scenes from {len(found[name])} for {len(units)} unit(s)", f"selection:{name}"):
            log = _select(recipe, name, sources[name], found[name], units, grids, aoi_ea)
        if log is not None:
            selection_log[name] = log
    scenes = {name: {s.id: s for s in found[name]} for name in recipe.sources}  # every scene found (provenance)
    plan = Plan(recipe, grids, units, scenes, sources, report if g.kind == "scene" else [], selection_log)
    from .dataset.checks import check_plan

    check_plan(plan)
    if probe:
        with stage("plan: probing the assets of each source's first scene", "asset_probe"):
            probe_assets(plan)
    return plan


# --------------------------------------------------------------------------------------
# plan-time probe of the assets

def probe_assets(plan: Plan) -> None:
    """Open every asset of each source's earliest selected scene (header + a decimated read)
    before any output is written, so systematic problems stop the run with exit code 2: a
    missing asset (404), a file that is not a GeoTIFF (corrupt or truncated), a raster without
    a CRS, a scene holding only nodata, a multi-band asset without a band index, an asset whose
    dtype the band's dtype cannot hold (a silent clip), a band without any fill value. A single
    bad asset of another scene is left to the build, where it fails only the units that use it.

    Also records per asset key the block layout and the compressed size of every block, for
    the dry-run byte estimate (:func:`estimate_bytes`).

    Raises
    ------
    ReadError
        With ``exit_code = 2`` (bad input), naming the source, scene, asset and problem.
    RecipeError
        A dtype or band-index mismatch between the recipe and the asset.
    """
    r = plan.recipe
    for name, sp in plan.sources.items():
        used = sorted({p.scene.id for u in plan.planned for grp in u.groups.get(name, []) for p in grp},
                      key=lambda i: (plan.scenes[name][i].datetime, i))
        if not used:
            continue
        scene = plan.scenes[name][used[0]]
        auth = r.sources[name].search.auth
        reads = [(b.asset, b.index, b) for b in sp.bands] + ([(sp.qa.asset, 1, sp.qa.as_band())] if sp.qa else [])
        reads += [(k, 1, None) for k in sp.extra_assets]
        keys = sorted({k for k, _, _ in reads})
        env = read_env(r.reading, auth, r.sources[name].search.auth_hosts)
        hrefs = {k: sign_href(scene.assets[k], auth) for k in keys}

        def one(key):
            try:
                return probe(hrefs[key], env=env, max_retries=r.reading.max_retries)
            except ReadError as exc:
                return exc

        with ThreadPoolExecutor(max(1, min(len(keys), r.reading.threads))) as pool:  # remote: overlap round trips
            probed = dict(zip(keys, pool.map(one, keys)))
        close_assets(hrefs.values())
        for key in keys:
            got = probed[key]
            where = f"source {name!r} scene {scene.id!r} asset {key!r}"
            if isinstance(got, ReadError):
                raise _bad(ReadError(f"{where}: {got}")) from None
            if got["crs"] is None:
                raise _bad(ReadError(f"{where} ({redact(scene.assets[key])}) has no CRS; give the raster a CRS (gdal_edit.py -a_srs)"))
            _check_item_grid(where, scene, key, got)
            sp.probed[key] = got
        new_bands = []
        for key, index, band in reads:
            got = sp.probed[key]
            if band is None:
                continue
            where = f"source {name!r} band {band.name!r} (asset {key!r})"
            if index > got["count"]:
                raise RecipeError(f"{where}: band index {index} but the asset has {got['count']} band(s)")
            if got["count"] > 1 and band.name != "qa" and _index_unset(r, name, band):
                raise RecipeError(f"{where}: the asset has {got['count']} bands; say which one with bands[].index "
                                  f"(1..{got['count']}) so every output band is not band 1")
            src_dtype, dst_dtype = np.dtype(got["dtypes"][index - 1]), np.dtype(band.dtype)
            if not (np.can_cast(src_dtype, dst_dtype, "safe") or (src_dtype.kind == dst_dtype.kind == "f")):
                raise RecipeError(f"{where}: the asset is {src_dtype} but the band is kept as {band.dtype}: values would be "
                                  f"clipped; set bands[].dtype (or profile dtype) to {src_dtype} or wider")
            nd = band.nodata
            file_nd = got["nodata"][index - 1]
            if nd is None:
                if file_nd is None:
                    raise RecipeError(f"{where}: no fill value anywhere (recipe, profile or file); set bands[].nodata so "
                                      f"pixels outside the scene are not read as data")
                nd = file_nd
            sample = got["sample"][index - 1] if band.name != "qa" else None
            fill_src = file_nd if file_nd is not None else nd
            if sample is not None and sample.size and fill_src is not None and bool(
                    (np.isnan(sample) if is_nan(fill_src) else sample == fill_src).all()):
                raise _bad(ReadError(f"source {name!r} scene {scene.id!r} asset {key!r} ({redact(scene.assets[key])}) holds "
                                     f"only nodata ({fill_src:g}); check the scene or the search filters"))
            if band.name != "qa":
                new_bands.append(replace(band, nodata=nd))
        if len(new_bands) == len(sp.bands):
            sp.bands = tuple(new_bands)


def _check_item_grid(where: str, scene: Scene, key: str, got: dict) -> None:
    """The file's CRS (and transform, when the asset gives ``proj:transform``) must be the
    item's (``proj:code`` / ``proj:epsg`` / ``proj:wkt2``): else reads land elsewhere and units
    are silently dropped as nodata.

    Raises
    ------
    ReadError
        With ``exit_code = 2``, naming the item, the asset and both CRSs (or transforms).
    """
    from pyproj import CRS

    from .geo import scene_crs

    fields = scene.asset_fields.get(key, {})
    declared = scene_crs(scene.properties, fields)
    if declared:
        try:
            item_crs = CRS.from_user_input(declared)
        except Exception:  # noqa: BLE001 - pyproj raises CRSError; an unreadable item CRS is named as it is
            raise _bad(ReadError(f"{where}: the item's CRS {declared!r} is not a CRS")) from None
        file_crs = CRS.from_wkt(got["crs"])
        same = item_crs.equals(file_crs, ignore_axis_order=True) or (
            item_crs.to_epsg() is not None and item_crs.to_epsg() == file_crs.to_epsg())
        if not same:
            def name(c):
                if c.to_epsg():
                    return f"EPSG:{c.to_epsg()}"
                op = c.coordinate_operation.method_name if c.coordinate_operation else ""
                return ", ".join(x for x in (c.name if c.name != "unknown" else "", op) if x) or "a custom CRS"
            raise _bad(ReadError(f"{where}: the file's CRS ({name(file_crs)}) is not the item's ({name(item_crs)}, from its "
                                 f"proj:* fields); fix the item metadata or the file"))
    tr = fields.get("proj:transform")
    if tr and not np.allclose(np.asarray(list(tr)[:6], dtype=float), np.asarray(got["transform"][:6], dtype=float),
                              rtol=0, atol=1e-6 * max(1.0, abs(float(got["transform"][0])))):
        raise _bad(ReadError(f"{where}: the file's transform {list(got['transform'][:6])} is not the item's proj:transform "
                             f"{list(tr)[:6]}; fix the item metadata or the file"))


def _index_unset(recipe: Recipe, source: str, band: BandSpec) -> bool:
    """True when neither the recipe nor the profile chose a band index for ``band``."""
    from .config import BandConfig

    for b in recipe.sources[source].bands:
        if isinstance(b, BandConfig) and b.name == band.name and b.index is not None:
            return False
    prof = recipe.sources[source].profile
    if not isinstance(prof, str):
        pb = prof.bands.get(band.name)
        if isinstance(pb, BandConfig) and pb.index is not None:
            return False
    return True


def _bad(exc):
    exc.exit_code = 2
    return exc


def estimate_bytes(plan: Plan) -> int:
    """Bytes the build will fetch, from the probed assets' tile sizes.

    Per source, asset and scene: the distinct COG blocks that the units' source windows touch
    (on the probed asset's grid, or the scene's own ``proj:*`` grid) times their compressed size
    (exact for the probed scene's positions, its mean block size elsewhere), plus 16 KiB per
    opened asset (GDAL's first read of the header and tile index). Without a probe, 0.
    """
    from odc.geo.geobox import GeoBox

    from .reading import MARGIN_PX

    total = 0
    for name, sp in plan.sources.items():
        keys = sorted({b.asset for b in sp.bands} | ({sp.qa.asset} if sp.qa else set()) | set(sp.extra_assets))
        for key in keys:
            info = sp.probed.get(key)
            if info is None:
                continue
            bh, bw = info["block"]
            sizes = info["block_bytes"]
            mean = float(sizes.mean()) if sizes.size else 0.0
            per_scene: dict[str, list] = defaultdict(list)
            for u in plan.planned:
                for grp in u.groups.get(name, []):
                    for p in grp:
                        per_scene[p.scene.id].append(u.unit.gbox)
            for sid, boxes in per_scene.items():
                s = plan.scenes[name][sid]
                fields = s.asset_fields.get(key, {})
                try:
                    grid = scene_gbox(s.properties, fields) if (fields.get("proj:transform") or s.properties.get("proj:transform")) else None
                except ProfileError:
                    grid = None
                src = grid or GeoBox(info["shape"], info["transform"], info["crs"])
                same = grid is None or (tuple(grid.affine)[:6] == tuple(info["transform"])[:6] and tuple(grid.shape) == tuple(info["shape"]))
                mask = _touched_blocks(boxes, src, (bh, bw), MARGIN_PX)
                if same:
                    h, w = min(mask.shape[0], sizes.shape[0]), min(mask.shape[1], sizes.shape[1])
                    total += int(sizes[:h, :w][mask[:h, :w]].sum())
                else:
                    total += int(mask.sum() * mean)
                total += 16384
    return total


def _touched_blocks(boxes: list, src: GeoBox, block: tuple[int, int], margin: int) -> np.ndarray:
    """``(block rows, block cols)`` bool: the blocks of ``src`` under the units' footprints
    (edges densified, 9 points a side, grown by ``margin`` px), computed for all units at once
    (one CRS transform per unit CRS, its transformer cached; the rule of :func:`eochips.reading.footprint_box`)."""
    from affine import Affine

    from .geo import _transformer

    bh, bw = block
    mask = np.zeros((-(-src.shape[0] // bh), -(-src.shape[1] // bw)), dtype=bool)
    ts = np.linspace(0, 1, 9)
    src_wkt = src.crs.to_wkt()
    inv = ~Affine(*tuple(src.affine)[:6])
    by_crs: dict[Any, list] = defaultdict(list)
    for gb in boxes:  # units of one grid share its CRS object: no WKT per unit
        by_crs[gb.crs].append(gb)
    chunks = [(c, g[i:i + SELECT_BATCH]) for c, g in by_crs.items() for i in range(0, len(g), SELECT_BATCH)]
    for grid_crs, group in chunks:  # SELECT_BATCH units at a time: flat memory
        aff = np.array([tuple(gb.affine)[:6] for gb in group], dtype=float)
        hw = np.array([tuple(gb.shape) for gb in group], dtype=float)
        h, w = hw[:, :1], hw[:, 1:]
        ex = np.concatenate([ts * w, np.repeat(w, 9, 1), ts[::-1] * w, np.zeros((len(group), 9))], axis=1)
        ey = np.concatenate([np.zeros((len(group), 9)), ts * h, np.repeat(h, 9, 1), ts[::-1] * h], axis=1)
        xs = aff[:, 0:1] * ex + aff[:, 1:2] * ey + aff[:, 2:3]
        ys = aff[:, 3:4] * ex + aff[:, 4:5] * ey + aff[:, 5:6]
        tr = _transformer(grid_crs.to_wkt(), src_wkt)  # cached: making one costs up to 50 ms, once per scene and asset before
        if tr is not None:
            tx, ty = tr.transform(xs.ravel(), ys.ravel())
            xs, ys = np.asarray(tx).reshape(xs.shape), np.asarray(ty).reshape(ys.shape)
        cols = inv.a * xs + inv.b * ys + inv.c
        rows = inv.d * xs + inv.e * ys + inv.f
        c0 = np.maximum(0, np.floor(cols.min(1)).astype(np.int64) - margin)
        r0 = np.maximum(0, np.floor(rows.min(1)).astype(np.int64) - margin)
        c1 = np.minimum(src.shape[1], np.ceil(cols.max(1)).astype(np.int64) + margin)
        r1 = np.minimum(src.shape[0], np.ceil(rows.max(1)).astype(np.int64) + margin)
        ok = (c1 > c0) & (r1 > r0)
        tr0, tr1 = r0[ok] // bh, (r1[ok] - 1) // bh
        tc0, tc1 = c0[ok] // bw, (c1[ok] - 1) // bw
        if not tr0.size:
            continue
        for dr in range(int((tr1 - tr0).max()) + 1):
            for dc in range(int((tc1 - tc0).max()) + 1):
                sel = (tr0 + dr <= tr1) & (tc0 + dc <= tc1)
                mask[tr0[sel] + dr, tc0[sel] + dc] = True
    return mask


# --------------------------------------------------------------------------------------
# persistence

def write_plan(plan: Plan, store: OutputStore) -> None:
    """Write ``plan/units.parquet``, ``plan/scenes.parquet`` and, last, ``plan/plan.json``.

    Each file is written atomically; a plan counts only once ``plan.json`` exists. Every text is
    stored through :func:`eochips.search.redact`: asset hrefs and catalog URLs without their
    credentials (:func:`refresh_hrefs` restores hrefs by fetching the scenes again), a secret
    ``${VAR}`` of the recipe as ``${VAR}`` (expanded again when the plan is loaded).
    """
    import io

    import geopandas as gpd

    failpoints.hit("plan:before-write")
    rows = []
    for name, scenes in plan.scenes.items():
        for s in sorted(scenes.values(), key=lambda s: (s.datetime, s.id)):
            rows.append({"source": name, "id": s.id, "collection": s.collection, "datetime": s.datetime,
                         "cloud_cover": s.cloud_cover, "item": json.dumps(redact_obj(s.to_item()), sort_keys=True),
                         "geometry": s.geometry})
    sc = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326") if rows else gpd.GeoDataFrame(
        {"source": [], "id": [], "item": []}, geometry=[], crs="EPSG:4326")
    written = []
    try:
        write_units(plan, store)
        written.append(f"{PLAN_DIR}/units.parquet")
        buf = io.BytesIO()
        sc.to_parquet(buf, index=False)
        store.write_bytes(f"{PLAN_DIR}/scenes.parquet", buf.getvalue())
        written.append(f"{PLAN_DIR}/scenes.parquet")
        recipe = canonical(plan.recipe)
        # the settings that cannot change an output byte go to run.json, which the manifest leaves out
        run = redact_obj({k: recipe.pop(k) for k in NON_OUTPUT_FIELDS})
        store.write_text(f"{PLAN_DIR}/{RUN_FILE}", json.dumps(run, indent=2, sort_keys=True, default=str))
        written.append(f"{PLAN_DIR}/{RUN_FILE}")
        doc = {"version": RECIPE_VERSION, "recipe": recipe,
               "match_report": plan.match_report,
               "selection_log": plan.selection_log,
               "source_order": list(plan.recipe.sources),  # the JSON is key-sorted; order decides layers and fingerprints
               "grids": [{"index": g.index, "name": g.name, "tile": g.tile, "date": g.date, "product": g.product, "crs": g.gbox.crs.to_wkt(),
                          "transform": list(tuple(g.gbox.affine)[:6]), "shape": list(g.gbox.shape)} for g in plan.grids],
               "sources": {n: {"bands": [_band_json(b) for b in sp.bands], "qa": sp.qa.__dict__ if sp.qa else None}
                           for n, sp in plan.sources.items()},
               "summary": plan.summary()}
        doc = redact_obj(doc)  # the recipe's catalog URLs, ${VAR} credentials (written back as ${VAR})
        store.write_text(f"{PLAN_DIR}/plan.json", json.dumps(doc, indent=2, sort_keys=True, default=str))
    except Exception:
        for rel in written:
            store.remove(rel)
        raise
    failpoints.hit("plan:after-write")


def _units_frame(plan: Plan, units: list[UnitPlan]):
    """The rows of ``units`` as a GeoDataFrame (the columns of ``plan/units.parquet``)."""
    import geopandas as gpd

    picks = [[{"source": s, "step": t, "scene_id": p.scene.id, "role": p.role}
              for s, groups in u.groups.items() for t, grp in enumerate(groups) for p in grp] for u in units]
    geoms = np.empty(len(units), dtype=object)
    by_grid: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        by_grid[u.unit.grid].append(i)
    for gi, idx in by_grid.items():  # one reprojection per grid
        polys = np.array([units[i].unit.polygon for i in idx], dtype=object)
        geoms[idx] = reproject_geometry(polys, plan.grids[gi].gbox.crs.to_wkt(), "EPSG:4326")
    return gpd.GeoDataFrame({
        "unit_id": pd_str([u.id for u in units]),
        "grid": np.array([u.unit.grid for u in units], dtype=np.int32),
        "row": np.array([u.unit.row for u in units], dtype=np.int32),
        "col": np.array([u.unit.col for u in units], dtype=np.int32),
        "tile": pd_str([u.tile for u in units]), "status": pd_str([u.status for u in units]),
        "reason_code": pd_str([u.code for u in units]), "reason": pd_str([redact(u.reason) for u in units]),
        "label_info": pd_str([json.dumps(u.label_info, sort_keys=True) for u in units]),
        "picks": picks,
        "transform": [list(tuple(u.unit.gbox.affine)[:6]) for u in units],
    }, geometry=list(geoms), crs="EPSG:4326")


def _units_schema():
    """The Arrow schema of ``plan/units.parquet`` (fixed, so every record batch has it)."""
    import pyarrow as pa

    s = pa.string()
    pick = pa.struct([("source", s), ("step", pa.int64()), ("scene_id", s), ("role", s)])
    return pa.schema([("unit_id", s), ("grid", pa.int32()), ("row", pa.int32()), ("col", pa.int32()), ("tile", s),
                      ("status", s), ("reason_code", s), ("reason", s), ("label_info", s), ("picks", pa.list_(pick)),
                      ("transform", pa.list_(pa.float64())), ("geometry", pa.binary())])


def _geo_metadata() -> bytes:
    """GeoParquet 1.0 ``geo`` metadata of ``plan/units.parquet`` (WKB polygons in EPSG:4326)."""
    from pyproj import CRS

    return json.dumps({"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": ["Polygon"], "crs": CRS.from_epsg(4326).to_json_dict()}}}).encode()


def write_units(plan: Plan, store: OutputStore, rel: str = f"{PLAN_DIR}/units.parquet", batch: int = UNIT_BATCH) -> None:
    """Write ``rel`` (GeoParquet, one row per unit) in record batches of ``batch`` units, to a
    temporary file then renamed: the memory it needs beyond the plan itself is one batch's,
    whatever the unit count. Every batch is cast to the schema of the first (an all-null
    column of a later batch keeps its type).

    Raises
    ------
    OutputError
        The file cannot be written (the disk is full).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    units = plan.units
    with store.open_write(rel) as f:
        writer = schema = None
        for start in range(0, max(len(units), 1), batch):
            frame = _units_frame(plan, units[start:start + batch]).to_wkb()
            table = pa.Table.from_pandas(frame, schema=_units_schema(), preserve_index=False)
            if writer is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), b"geo": _geo_metadata()})
                writer = pq.ParquetWriter(f, schema)
            writer.write_table(table.replace_schema_metadata(schema.metadata))
        writer.close()


def pd_str(values: list) -> list:
    """Values of a string column (None kept), so an all-empty column is still typed string."""
    import pandas as pd

    return pd.array(values, dtype="string")


def _band_json(b: BandSpec) -> dict:
    return {k: ("nan" if is_nan(v) else v) for k, v in b.__dict__.items()}


def _band_from_json(d: dict) -> BandSpec:
    return BandSpec(**{k: (float("nan") if v == "nan" else v) for k, v in d.items()})


def _corrupt_plan(store: OutputStore, rel: str, why: str) -> OutputError:
    return OutputError(f"plan file {rel} in {store.location!r} is {why[:200]}; plan again with "
                       f"'eochips plan RECIPE -o {store.location} --overwrite' (or rerun 'eochips run' with --overwrite)")


def _plan_file(store: OutputStore, fname: str, parse):
    """``parse(bytes)`` of ``plan/fname``; any failure to read or parse it is one line naming it."""
    rel = f"{PLAN_DIR}/{fname}"
    try:
        data = store.read_bytes(rel)
    except FileNotFoundError:
        raise _corrupt_plan(store, rel, "missing") from None
    except OSError as exc:
        raise OutputError(f"plan file {rel} of {store.location!r} cannot be read: {exc}") from None
    if not data:
        raise _corrupt_plan(store, rel, "empty (0 bytes)")
    try:
        return parse(data)
    except Exception as exc:  # noqa: BLE001 - JSON, Arrow, a missing column: a damaged file, not a bug
        raise _corrupt_plan(store, rel, f"corrupt or truncated ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _json_doc(data: bytes) -> dict:
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def load_plan(store: OutputStore) -> Plan:
    """Read a plan written by :func:`write_plan`.

    Raises
    ------
    OutputError
        No plan in ``store`` (run ``eochips plan`` first), one written by another version, or
        a plan file that is missing, empty, corrupt or truncated (the message names it).
    """
    import io

    import geopandas as gpd

    if not store.exists(f"{PLAN_DIR}/plan.json"):
        raise OutputError(f"no plan in {store.location!r}; run 'eochips plan RECIPE --output {store.location}' first")
    doc = _plan_file(store, "plan.json", _json_doc)
    if doc.get("version") != RECIPE_VERSION:
        raise OutputError(f"the plan in {store.location!r} was written by another eochips version; plan again "
                          f"(eochips run RECIPE -o {store.location} --overwrite)")
    run = _plan_file(store, RUN_FILE, _json_doc) if store.exists(f"{PLAN_DIR}/{RUN_FILE}") else {}

    try:
        check_secret_vars(json.dumps([doc["recipe"], run]), f"the plan in {store.location!r}")
        data = {**doc["recipe"], **run}
        order = doc.get("source_order") or []
        if sorted(order) == sorted(data.get("sources", {})):  # recipe order (plan.json sorts keys): the same tasks as make_plan
            data["sources"] = {n: data["sources"][n] for n in order}
        recipe = parse_recipe(data)  # "nan" fills (JSON has no NaN) validate back to float NaN
        grids = [Grid(g["index"], g["name"], GeoBox(tuple(g["shape"]), _affine(g["transform"]), g["crs"]), g["tile"],
                      g.get("date"), g.get("product")) for g in doc["grids"]]
        match_report = list(doc.get("match_report") or [])
        selection_log = dict(doc.get("selection_log") or {})  # older plans: none
    except EochipsError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _corrupt_plan(store, f"{PLAN_DIR}/plan.json", f"not a plan ({type(exc).__name__}: {exc})") from None
    sources = resolve_sources(recipe)
    try:
        for n, sd in doc["sources"].items():
            sources[n].bands = tuple(_band_from_json(b) for b in sd["bands"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise _corrupt_plan(store, f"{PLAN_DIR}/plan.json", f"not a plan (sources: {type(exc).__name__}: {exc})") from None

    def parse_scenes(data: bytes) -> dict[str, dict[str, Scene]]:
        sc = gpd.read_parquet(io.BytesIO(data))
        out: dict[str, dict[str, Scene]] = {n: {} for n in recipe.sources}
        for src, item in zip(sc["source"], sc["item"]):
            s = scene_from_item(json.loads(item))
            out[src][s.id] = s
        return out

    scenes = _plan_file(store, "scenes.parquet", parse_scenes)

    def parse_units(data: bytes) -> list[UnitPlan]:
        df = gpd.read_parquet(io.BytesIO(data))
        size = {g.index: None for g in grids}
        units = []
        for r in df.itertuples():
            g = grids[int(r.grid)]
            n = _unit_shape(recipe, g, size)
            unit = Unit(int(r.grid), int(r.row), int(r.col), GeoBox((n, n), _affine(list(r.transform)), g.gbox.crs))
            groups: dict[str, list] = {}
            for p in (list(r.picks) if r.picks is not None else []):
                groups.setdefault(p["source"], [])
                while len(groups[p["source"]]) <= p["step"]:
                    groups[p["source"]].append(())
                groups[p["source"]][p["step"]] = groups[p["source"]][p["step"]] + (Pick(scenes[p["source"]][p["scene_id"]], p["role"]),)
            units.append(UnitPlan(unit, r.unit_id, None if r.tile is None or r.tile is np.nan else str(r.tile), groups,
                                  str(r.status), str(r.reason_code or ""), str(r.reason or ""), json.loads(r.label_info)))
        return units

    units = _plan_file(store, "units.parquet", parse_units)
    return Plan(recipe, grids, units, scenes, sources, match_report, selection_log)


def _unit_shape(recipe: Recipe, grid: Grid, cache: dict) -> int:
    if cache.get(grid.index) is None:
        cache[grid.index] = unit_size_px(grid.gbox, recipe.units.size, recipe.units.size_m)
    return cache[grid.index]


def _affine(t):
    from affine import Affine

    return Affine(*list(t)[:6])


def refresh_hrefs(plan: Plan) -> Plan:
    """Restore asset hrefs whose credentials were redacted on disk, by fetching the plan's scene
    ids again, source by source. Plans without redacted hrefs are returned unchanged.

    Raises
    ------
    CatalogError
        A scene of the plan is no longer in its source's catalog.
    """
    stale = {n for n, scenes in plan.scenes.items() if any(is_redacted(h) for s in scenes.values() for h in s.assets.values())}
    if not stale:
        return plan
    aoi, aoi_crs = load_aoi(plan.recipe.aoi)
    aoi_ll = reproject_geometry(aoi, aoi_crs, "EPSG:4326")
    scenes = dict(plan.scenes)
    for name in sorted(stale):
        cfg = plan.recipe.sources[name].search
        if is_redacted(cfg.catalog):
            raise CatalogError(f"source {name!r}: the catalog URL {cfg.catalog!r} held credentials, which are not stored in the "
                               f"plan; put them in an environment variable of the recipe (e.g. ${{STAC_TOKEN}}) or run "
                               f"'eochips run RECIPE -o DIR' again")
        fresh = fetch_by_ids(cfg, plan.scenes[name], aoi_ll)
        missing = sorted(set(plan.scenes[name]) - set(fresh))
        if missing:
            raise CatalogError(f"source {name!r}: scene(s) {missing[:3]} of the plan are no longer in {redact(cfg.catalog)!r}; plan again")
        scenes[name] = {k: fresh[k] for k in plan.scenes[name]}
    units = []
    for u in plan.units:
        groups = {s: [tuple(Pick(scenes[s][p.scene.id], p.role) for p in grp) for grp in gs] for s, gs in u.groups.items()}
        units.append(replace(u, groups=groups))
    return Plan(plan.recipe, plan.grids, units, scenes, plan.sources, plan.match_report, plan.selection_log)


# --------------------------------------------------------------------------------------
# tasks

def pick_numbers(plan: Plan, source: str) -> dict[str, int]:
    """The 1-based pick number of each scene of ``source`` in a mosaic: its ``number`` in the
    selection log of ``greedy-coverage`` (``plan.json`` ``selection_log``; ``sources.csv``)."""
    return {p["scene_id"]: int(p["number"]) for p in plan.selection_log.get(source, {}).get("picks", [])}


def make_tasks(plan: Plan, store: OutputStore, cpu_threads: int = 1) -> list[UnitTask]:
    """One :class:`~eochips.chips.UnitTask` per planned unit, in ``(grid, row, col)`` order.

    Hrefs stay unsigned (workers sign them at read time); no credential is put in a task.
    """
    r = plan.recipe
    labels = label_spec(r)
    tasks = []
    model_masks = [(mi, m) for mi, m in enumerate(r.masks.sources) if m.kind not in QA_MASKS]
    mosaic = next((lay for lay in r.output.layout if lay.kind == "mosaic"), None)
    numbers = {r.source_of(mosaic.source): pick_numbers(plan, r.source_of(mosaic.source))} if mosaic else {}
    aoi_geom = None
    if mosaic is not None:
        from .mosaic import MosaicSpec

        aoi, aoi_crs = load_aoi(r.aoi)
    for up in sorted(plan.planned, key=lambda u: u.key):
        layers = []
        for name, sp in plan.sources.items():
            keys = sorted({b.asset for b in sp.bands} | ({sp.qa.asset} if sp.qa else set()) | set(sp.extra_assets))
            steps = []
            for grp in up.groups.get(name, []):
                steps.append(StepRead(tuple(
                    SceneRead(p.scene.id, p.scene.datetime.isoformat(), p.role, tuple((k, p.scene.assets[k]) for k in keys),
                              sp.profile.offset_dn(p.scene.properties), numbers.get(name, {}).get(p.scene.id, 0)) for p in grp)))
            mreads = tuple(MaskRead(mi, tuple(m.bands), m.working_resolution,
                                    "nearest" if m.kind == "cloud-probability" else "bilinear") for mi, m in model_masks
                           if r.source_of(m.source) == name)
            cfg = r.sources[name]
            layers.append(LayerRead(name, sp.bands, sp.qa, tuple(steps), cfg.composite, cfg.search.auth, mreads,
                                    tuple(cfg.search.auth_hosts) if cfg.search.auth_hosts else None))
        g = up.unit.gbox
        task = UnitTask(
            unit_id=up.id, key=up.key, crs=g.crs.to_wkt(), transform=tuple(g.affine)[:6], shape=tuple(g.shape),
            layers=tuple(layers), out=store.location, tile=up.tile, grid_name=plan.grids[up.unit.grid].name,
            product=plan.grids[up.unit.grid].product or plan.grids[up.unit.grid].name,
            n=window_number(plan.grids[up.unit.grid], g.shape[1], up.unit.row, up.unit.col), labels=labels,
            label_bounds=_label_strip(plan.grids[up.unit.grid], up.unit), masks=r.masks, filters=tuple(r.filters),
            layouts=tuple(r.output.layout), resolution_groups=getattr(r.units, "resolution_groups", False),
            compress=r.output.compress, level=r.output.level, reading=r.reading, cpu_threads=cpu_threads,
        )
        if mosaic is not None:
            crs = g.crs.to_wkt()
            if aoi_geom is None or aoi_geom[0] != crs:
                aoi_geom = (crs, reproject_geometry(aoi, aoi_crs, crs))
            clipped = aoi_geom[1].intersection(shapely.box(*g.boundingbox))
            task = replace(task, mosaic=MosaicSpec(mosaic, r.source_of(mosaic.source), shapely.to_wkb(clipped)))
        tasks.append(replace(task, fingerprint=task_fingerprint(task)))
    return tasks


__all__ = ["Plan", "UnitPlan", "SourcePlan", "make_plan", "write_plan", "load_plan", "refresh_hrefs", "make_tasks",
           "label_spec", "class_names", "qa_users", "resolve_sources", "estimate_bytes", "PLAN_DIR"]
