"""The plan: which chips exist, which scenes each one uses, and why any chip was dropped early.

``make_plan`` runs AOI -> target grid -> chips -> label pre-scan -> search -> tile assignment
-> selection, without reading a pixel of imagery. ``write_plan`` stores it in
``{output}/plan/`` (``plan.json`` with the recipe and grid, ``chips.parquet`` and
``scenes.parquet``, both GeoParquet), so ``eochips build`` can run from it later and a
``--dry-run`` can print counts and a byte estimate first.

Label pre-scan: label rules (label no-data, unknown reclass codes in strict mode, minimum
labelled fraction) are checked here, from the label source alone, so chips that the seed's
chip-sampling step would have excluded (CDL value 0) never cost an imagery read, and a
strict-mode failure stops the run before anything is written.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from . import failpoints
from .chips import ChipTask, LabelSpec, StepSpec
from .config import Recipe, parse_recipe
from .errors import LabelError, OutputError, ProfileError
from .grid import Chip, TargetGrid, load_aoi, make_grid, reproject_geometry, tile_chips
from .labels import CDL_13_COLORS, CDL_13_NAMES, Reclass, default_colormap, make_reclass, rasterize_vector
from .profiles import Profile, get_profile
from .reading import close_assets, gdal_env, probe, read_onto
from .search import Scene, gdal_auth_env, redact, scene_from_item, search, sign_hrefs
from .selection import Candidate, SelectionFailed, get_strategy
from .writers import OutputStore

PLAN_DIR = "plan"


@dataclass
class ChipPlan:
    """One chip of the plan: its scenes per time step, or the reason it was dropped."""

    chip: Chip
    tile: str | None = None
    scene_ids: list[str] = field(default_factory=list)
    status: str = "planned"
    reason: str = ""
    label_info: dict[str, Any] = field(default_factory=dict)
    mask_scene_ids: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """The whole plan of a recipe (see module docstring)."""

    recipe: Recipe
    grid: TargetGrid
    chips: list[ChipPlan]
    scenes: dict[str, Scene]

    @property
    def planned(self) -> list[ChipPlan]:
        return [c for c in self.chips if c.status == "planned"]

    def summary(self) -> dict[str, Any]:
        """Counts and the byte estimate printed by ``eochips plan --dry-run``."""
        r = self.recipe
        profile = get_profile(r.profile)
        n_assets = len(r.bands) + (1 if profile.qa_kind != "none" and profile.qa_asset else 0)
        steps = sum(len(c.scene_ids) for c in self.planned)
        # upper bound: every 256 px source block a chip window touches, at the grid's resolution
        blocks = (math.ceil(r.grid.chip_size / 256) + 1) ** 2
        itemsize = np.dtype(profile.dtype).itemsize
        est = steps * n_assets * blocks * 256 * 256 * itemsize // 2  # DEFLATE ~2:1 on reflectance
        dropped: dict[str, int] = {}
        for c in self.chips:
            if c.status == "dropped":
                key = c.reason.split(":")[0]
                dropped[key] = dropped.get(key, 0) + 1
        return {
            "recipe": r.name, "scenes": len(self.scenes), "chips_total": len(self.chips),
            "chips_planned": len(self.planned), "chips_dropped_in_plan": dropped,
            "reads": steps * n_assets, "estimated_bytes": int(est),
        }


def read_env(recipe: Recipe) -> dict:
    """GDAL options of every read a recipe makes (cache size, HTTP timeout, credentials of
    ``search.auth``; the credentials never leave this dict)."""
    r = recipe.reading
    return gdal_env(r.gdal_cachemax_mb, gdal_auth_env(recipe.search.auth)) | {"GDAL_HTTP_TIMEOUT": r.http_timeout}


def _label_spec(recipe: Recipe) -> LabelSpec | None:
    lab = recipe.labels
    if lab is None:
        return None
    raster = lab.raster or (recipe.grid.label_raster if lab.vector is None else None)
    reclass = make_reclass(lab.reclass, lab.unknown_class, lab.strict) if raster else None
    if lab.reclass == "cdl-13":
        cmap = CDL_13_COLORS
    else:
        n = max([*(lab.classes or {}).values(), *((reclass.table.values()) if reclass else []), 1])
        cmap = default_colormap(int(n))
    if raster is None and lab.vector is None:
        raise LabelError("labels: give labels.raster, labels.vector, or grid.label_raster")
    return LabelSpec(raster=raster, reclass=reclass, vector=lab.vector, class_field=lab.class_field,
                     classes=tuple(sorted((lab.classes or {}).items())), colormap=tuple(sorted(cmap.items())))


def class_names(recipe: Recipe) -> dict[int, str]:
    """Class id -> name for plots and the catalog."""
    lab = recipe.labels
    if lab is None:
        return {}
    if lab.class_names:
        return dict(lab.class_names)
    if lab.reclass == "cdl-13":
        return dict(CDL_13_NAMES)
    if lab.classes:
        return {0: "unlabelled", **{v: k for k, v in lab.classes.items()}}
    return {}


def _scan_labels(recipe: Recipe, spec: LabelSpec, chips: list[ChipPlan]) -> None:
    """Apply the label rules to every chip (see module docstring)."""
    lab = recipe.labels
    env = read_env(recipe)
    strict_bad: dict[str, list[int]] = {}
    for cp in chips:
        ch = cp.chip
        if spec.vector:
            classes = rasterize_vector(spec.vector, spec.class_field, dict(spec.classes), ch.crs, ch.transform, (ch.size, ch.size))
            unknown: dict[int, int] = {}
        else:
            codes = read_onto(spec.raster, ch.crs, ch.transform, (ch.size, ch.size), resampling="nearest", env=env)
            if spec.reclass is not None:
                relaxed = Reclass(spec.reclass.table, spec.reclass.unknown_class, strict=False)
                classes, unknown = relaxed.apply(codes)
            else:
                classes, unknown = codes.astype(np.uint8), {}
        n_nodata = int((classes == lab.nodata_class).sum())
        cp.label_info = {"label_nodata_pixels": n_nodata}
        if unknown:
            cp.label_info["unknown_codes"] = unknown
            if lab.strict:
                strict_bad[ch.id] = sorted(unknown)
        labelled = 1.0 - n_nodata / classes.size
        if lab.max_nodata_pixels is not None and n_nodata > lab.max_nodata_pixels:
            cp.status, cp.reason = "dropped", f"labels: {n_nodata} no-data label pixels > {lab.max_nodata_pixels}"
        elif labelled < lab.min_labelled_fraction:
            cp.status, cp.reason = "dropped", f"labels: labelled fraction {labelled:.3f} < {lab.min_labelled_fraction:g}"
    if strict_bad:
        codes = sorted({c for v in strict_bad.values() for c in v})
        first = sorted(strict_bad)[:5]
        raise LabelError(
            f"labels: code(s) {codes} are not in the reclass table {lab.reclass!r} (in {len(strict_bad)} chip(s), e.g. "
            f"{', '.join(first)}); add them to labels.reclass or set labels.strict: false"
        )


def _coverage(scenes: list[Scene], profile: Profile, chips: list[ChipPlan], grid_crs: str) -> np.ndarray:
    """``(n_chips, n_scenes)`` coverage in percent: the item's own coverage attribute when it has
    one (HLS SPATIAL_COVERAGE), else footprint-over-chip area."""
    foot = np.array([reproject_geometry(s.geometry, "EPSG:4326", grid_crs) for s in scenes], dtype=object)
    polys = np.array([c.chip.polygon for c in chips], dtype=object)
    shapely.prepare(foot)
    cov = np.zeros((len(chips), len(scenes)))
    area = shapely.area(polys)
    for j, f in enumerate(foot):
        inter = shapely.intersects(f, polys)
        if inter.any():
            cov[inter, j] = 100.0 * shapely.area(shapely.intersection(polys[inter], f)) / area[inter]
    for j, s in enumerate(scenes):
        attr = s.properties.get(profile.coverage_property) if profile.coverage_property else None
        if attr is not None:
            cov[cov[:, j] > 0, j] = float(attr)
    return cov


def _assign_tiles(scenes: list[Scene], profile: Profile, chips: list[ChipPlan],
                  grid_crs: str) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Seed 001's chip -> tile rule: the tile whose centroid is nearest (projected distance in the
    grid CRS); among tiles whose footprints cover the chip fully when there are any.

    Returns ``(scene indices per tile, tile per chip id)``; both empty when the profile cannot
    tell the tile of a scene."""
    by_tile: dict[str, list[int]] = {}
    for j, s in enumerate(scenes):
        t = profile.tile_of(s.id, s.properties)
        if t is None:
            return {}, {}
        by_tile.setdefault(t, []).append(j)
    names = sorted(by_tile)
    unions = [shapely.union_all([reproject_geometry(scenes[j].geometry, "EPSG:4326", grid_crs) for j in by_tile[t]]) for t in names]
    cents = [u.centroid for u in unions]
    tile_of: dict[str, str] = {}
    for cp in chips:
        poly = cp.chip.polygon
        c = poly.centroid
        full = [i for i, u in enumerate(unions) if u.covers(poly)]
        pool = full or range(len(names))
        tile_of[cp.chip.id] = names[min(pool, key=lambda i: (c.distance(cents[i]), names[i]))]
    return by_tile, tile_of


def _candidates(scenes: list[Scene], profile: Profile, chips: list[ChipPlan], grid_crs: str,
                unit: str) -> tuple[list[list[Candidate]], dict[str, str]]:
    """Per chip, the candidate scenes with their coverage, and the chip's tile (unit ``tile``)."""
    cov = _coverage(scenes, profile, chips, grid_crs)
    by_tile, tile_of = _assign_tiles(scenes, profile, chips, grid_crs) if unit == "tile" else ({}, {})
    out = []
    for i, cp in enumerate(chips):
        idx = by_tile.get(tile_of.get(cp.chip.id), range(len(scenes))) if by_tile else range(len(scenes))
        out.append([Candidate(scenes[j], float(cov[i, j])) for j in idx if cov[i, j] > 0])
    return out, tile_of


def make_plan(recipe: Recipe, probe: bool = True) -> Plan:
    """Plan a recipe: no imagery is read, except the header and a decimated overview of the
    earliest selected scene's assets when ``probe`` is true (see :func:`probe_assets`).

    Raises
    ------
    AOIError, RecipeError, LabelError, CatalogError, NoScenesError, ProfileError, ReadError
        Bad input, each with a message naming the field or file.
    """
    profile = get_profile(recipe.profile)
    for b in recipe.bands:
        profile.asset_key(b)
    get_strategy(recipe.selection.strategy)
    aoi, aoi_crs = load_aoi(recipe.aoi)
    grid = make_grid(recipe.grid, aoi, aoi_crs)
    aoi_grid = reproject_geometry(aoi, aoi_crs, grid.crs)
    chips = [ChipPlan(c) for c in tile_chips(grid, recipe.grid.chip_size, aoi_grid, recipe.grid.min_aoi_fraction)]
    if not chips:
        raise LabelError(f"no {recipe.grid.chip_size} px chip of the target grid lies inside the AOI; enlarge the AOI or lower grid.chip_size")
    spec = _label_spec(recipe)
    if spec is not None:
        _scan_labels(recipe, spec, chips)
    aoi_ll = reproject_geometry(aoi, aoi_crs, "EPSG:4326")
    scenes = search(recipe.search, aoi_ll)  # unsigned: signed hrefs never reach the plan files
    _check_assets(scenes, profile, recipe)
    strategy = get_strategy(recipe.selection.strategy)
    live = [c for c in chips if c.status == "planned"]
    if live:
        cands, tile_of = _candidates(scenes, profile, live, grid.crs, recipe.selection.unit)
        for cp, cc in zip(live, cands):
            cp.tile = tile_of.get(cp.chip.id)
            try:
                cp.scene_ids = [s.id for s in strategy(cc, recipe.selection)]
            except SelectionFailed as exc:
                cp.status, cp.reason = "dropped", str(exc)
    all_scenes = {s.id: s for s in scenes}
    if recipe.cloud_masks is not None:
        all_scenes.update(_plan_cloud_masks(recipe, profile, [c for c in chips if c.status == "planned"], grid, aoi_ll))
    plan = Plan(recipe, grid, chips, all_scenes)
    if probe:
        probe_assets(plan)
    return plan


def _plan_cloud_masks(recipe: Recipe, profile: Profile, chips: list[ChipPlan], grid: TargetGrid, aoi_ll) -> dict[str, Scene]:
    """Seed 000: the second search (cloudy scenes) and the seeded choice of mask scenes per chip."""
    from .errors import NoScenesError, RecipeError
    from .selection import seeded_by_date

    cm = recipe.cloud_masks
    if profile.qa_kind != "fmask" or not profile.qa_asset:
        raise RecipeError(f"recipe field 'cloud_masks': needs a profile with an Fmask QA asset (profile {profile.name!r} has none)")
    try:
        update = {"cloud_cover": cm.cloud_cover} | ({"datetime": cm.datetime} if cm.datetime else {})
        cloudy = search(recipe.search.model_copy(update=update), aoi_ll)
    except NoScenesError:
        cloudy = []
    for s in cloudy:
        if profile.qa_asset not in s.assets:
            raise ProfileError(f"item {s.id!r} has no {profile.qa_asset!r} asset for the cloud masks")
    if not chips:
        return {}
    cands, tile_of = _candidates(cloudy, profile, chips, grid.crs, recipe.selection.unit)
    for cp, cc in zip(chips, cands):
        try:
            key = tile_of.get(cp.chip.id) or cp.chip.id
            cp.mask_scene_ids = [s.id for s in seeded_by_date(cc, cm.coverage_thresholds, cm.min_scenes, cm.n_scenes, cm.seed, key)]
        except SelectionFailed as exc:
            cp.status, cp.reason = "dropped", str(exc)
    return {s.id: s for s in cloudy}


def _check_assets(scenes: list[Scene], profile: Profile, recipe: Recipe) -> None:
    keys = [profile.asset_key(b) for b in recipe.bands]
    if profile.qa_kind != "none" and profile.qa_asset:
        keys.append(profile.qa_asset)
    for s in scenes:
        missing = [k for k in keys if k not in s.assets]
        if missing:
            raise ProfileError(
                f"item {s.id!r} has no asset(s) {missing} that profile {profile.name!r} needs; its assets: {sorted(s.assets)}"
            )


# --------------------------------------------------------------------------------------
# plan-time probe of the assets

def probe_assets(plan: Plan) -> None:
    """Open every asset of the earliest selected scene (header + a decimated read) before any
    output is written, so systematic problems stop the run with exit code 2: a missing asset
    (404), a file that is not a GeoTIFF (corrupt or truncated), a raster without a CRS, a scene
    holding only nodata. A single bad asset of another scene is left to the build, where it
    fails only the chips that use it.

    Raises
    ------
    ReadError
        With ``exit_code = 2`` (bad input), naming the scene, the asset and the problem.
    """
    from .errors import ReadError

    used = sorted({sid for c in plan.planned for sid in c.scene_ids}, key=lambda i: (plan.scenes[i].datetime, i))
    if not used:
        return
    r = plan.recipe
    profile = get_profile(r.profile)
    scene = sign_hrefs([plan.scenes[used[0]]], r.search.auth)[0]
    keys = [profile.asset_key(b) for b in r.bands] + ([profile.qa_asset] if profile.qa_kind != "none" and profile.qa_asset else [])
    env = read_env(r)

    def one(key):
        try:
            return probe(scene.assets[key], env=env, max_retries=r.reading.max_retries)
        except ReadError as exc:
            return exc

    with ThreadPoolExecutor(max(1, min(len(keys), r.reading.threads))) as pool:  # remote: overlap round trips
        probed = list(pool.map(one, keys))
    close_assets(scene.assets[k] for k in keys)
    for key, got in zip(keys, probed):
        href = scene.assets[key]
        where = f"scene {scene.id!r} asset {key!r}"
        if isinstance(got, ReadError):
            raise _bad(ReadError(f"{where}: {got}")) from None
        crs, nd, small = got
        if crs is None:
            raise _bad(ReadError(f"{where} ({redact(href)}) has no CRS; give the raster a CRS (gdal_edit.py -a_srs)"))
        nd = nd if nd is not None else profile.nodata
        if key != profile.qa_asset and nd is not None and small.size and bool((small == nd).all()):
            raise _bad(ReadError(f"{where} ({redact(href)}) holds only nodata ({nd:g}); check the scene or the search filters"))


def _bad(exc):
    exc.exit_code = 2
    return exc


# --------------------------------------------------------------------------------------
# persistence

def write_plan(plan: Plan, store: OutputStore) -> None:
    """Write ``plan/chips.parquet``, ``plan/scenes.parquet`` and, last, ``plan/plan.json``.

    Each file is written atomically; a plan counts only once ``plan.json`` exists. Asset
    hrefs are stored with query-string credentials (SAS tokens, signed-URL parameters)
    redacted; :func:`refresh_hrefs` restores them by searching again.
    """
    import io

    import geopandas as gpd

    failpoints.hit("plan:before-write")
    chips = gpd.GeoDataFrame(
        {
            "chip_id": [c.chip.id for c in plan.chips], "row": [c.chip.row for c in plan.chips],
            "col": [c.chip.col for c in plan.chips], "tile": [c.tile for c in plan.chips],
            "scene_ids": [list(c.scene_ids) for c in plan.chips], "status": [c.status for c in plan.chips],
            "reason": [c.reason for c in plan.chips],
            "label_info": [json.dumps(c.label_info, sort_keys=True) for c in plan.chips],
            "mask_scene_ids": [list(c.mask_scene_ids) for c in plan.chips],
        },
        geometry=[c.chip.polygon for c in plan.chips], crs=plan.grid.crs,
    )
    scenes = sorted(plan.scenes.values(), key=lambda s: (s.datetime, s.id))
    sc = gpd.GeoDataFrame(
        {
            "id": [s.id for s in scenes], "collection": [s.collection for s in scenes],
            "datetime": [s.datetime.isoformat() for s in scenes], "cloud_cover": [s.cloud_cover for s in scenes],
            "item": [json.dumps(_scene_item(s), sort_keys=True) for s in scenes],
        },
        geometry=[s.geometry for s in scenes], crs="EPSG:4326",
    )
    written = []
    try:
        for name, frame in (("chips.parquet", chips), ("scenes.parquet", sc)):
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            store.write_bytes(f"{PLAN_DIR}/{name}", buf.getvalue())
            written.append(f"{PLAN_DIR}/{name}")
        doc = {"recipe": plan.recipe.model_dump(mode="json"),
               "grid": plan.grid.__dict__ | {"transform": list(plan.grid.transform)}, "summary": plan.summary()}
        store.write_text(f"{PLAN_DIR}/plan.json", json.dumps(doc, indent=2, sort_keys=True))
    except Exception:
        for rel in written:
            store.remove(rel)
        raise
    failpoints.hit("plan:after-write")


def _scene_item(s: Scene) -> dict:
    return {"type": "Feature", "id": s.id, "collection": s.collection, "properties": dict(s.properties),
            "geometry": shapely.geometry.mapping(s.geometry),
            "assets": {k: {"href": redact(h)} for k, h in s.assets.items()}}


def load_plan(store: OutputStore) -> Plan:
    """Read a plan written by :func:`write_plan`.

    Raises
    ------
    OutputError
        No plan in ``store`` (run ``eochips plan`` first).
    """
    import io

    import geopandas as gpd

    if not store.exists(f"{PLAN_DIR}/plan.json"):
        raise OutputError(f"no plan in {store.location!r}; run 'eochips plan RECIPE --output {store.location}' first")
    doc = json.loads(store.read_bytes(f"{PLAN_DIR}/plan.json"))
    recipe = parse_recipe(doc["recipe"])
    g = doc["grid"]
    grid = TargetGrid(g["crs"], tuple(g["transform"]), g["width"], g["height"])
    chips_df = gpd.read_parquet(io.BytesIO(store.read_bytes(f"{PLAN_DIR}/chips.parquet")))
    size = recipe.grid.chip_size
    from affine import Affine

    a = Affine(*grid.transform)
    chips = []
    for r in chips_df.itertuples():
        ch = Chip(int(r.row), int(r.col), grid.crs, tuple(a @ Affine.translation(r.col * size, r.row * size))[:6], size)
        masks = getattr(r, "mask_scene_ids", None)
        chips.append(ChipPlan(ch, r.tile, list(r.scene_ids), r.status, r.reason, json.loads(r.label_info),
                              [] if masks is None else list(masks)))
    sc = gpd.read_parquet(io.BytesIO(store.read_bytes(f"{PLAN_DIR}/scenes.parquet")))
    scenes = {s.id: s for s in (scene_from_item(json.loads(it)) for it in sc["item"])}
    return Plan(recipe, grid, chips, scenes)


def refresh_hrefs(plan: Plan) -> Plan:
    """Restore asset hrefs whose credentials were redacted on disk, by searching again (same
    recipe, same scene ids). Plans without redacted hrefs are returned unchanged.

    Raises
    ------
    CatalogError
        A scene of the plan is no longer in the catalog.
    """
    if not any("REDACTED" in h for s in plan.scenes.values() for h in s.assets.values()):
        return plan
    from .errors import CatalogError

    aoi, aoi_crs = load_aoi(plan.recipe.aoi)
    fresh = {s.id: s for s in search(plan.recipe.search, reproject_geometry(aoi, aoi_crs, "EPSG:4326"))}
    missing = sorted(set(plan.scenes) - set(fresh))
    if missing:
        raise CatalogError(f"scene(s) {missing[:3]} of the plan are no longer in {plan.recipe.search.catalog!r}; plan again")
    return Plan(plan.recipe, plan.grid, plan.chips, {k: fresh[k] for k in plan.scenes})


def make_tasks(plan: Plan, store: OutputStore) -> list[ChipTask]:
    """One :class:`ChipTask` per planned chip, in chip-id order."""
    r = plan.recipe
    profile = get_profile(r.profile)
    keys = tuple(profile.asset_key(b) for b in r.bands)
    qa_key = profile.qa_asset if profile.qa_kind != "none" else None
    rs = tuple(r.reading.band_resampling.get(b, r.reading.resampling) for b in r.bands)
    env = read_env(r)
    labels = _label_spec(r)
    signed = {s.id: s for s in sign_hrefs(plan.scenes.values(), r.search.auth)}
    tasks = []
    extra_keys = sorted({k for m in r.qa.masks for k in m.bands})
    for cp in sorted(plan.planned, key=lambda c: c.chip.id):
        steps = []
        for sid in cp.scene_ids:
            s = signed[sid]
            missing = [k for k in extra_keys if k not in s.assets]
            if missing:
                raise ProfileError(f"item {sid!r} has no asset(s) {missing} that qa.masks need; its assets: {sorted(s.assets)}")
            steps.append(StepSpec(sid, s.datetime.isoformat(), tuple(s.assets[k] for k in keys),
                                  s.assets.get(qa_key) if qa_key else None, profile.offset_dn(s.properties),
                                  tuple((k, s.assets[k]) for k in extra_keys)))
        mask_steps = tuple(StepSpec(sid, signed[sid].datetime.isoformat(), (), signed[sid].assets[profile.qa_asset])
                           for sid in cp.mask_scene_ids)
        ch = cp.chip
        tasks.append(ChipTask(
            chip_id=ch.id, crs=ch.crs, transform=ch.transform, size=ch.size, band_names=keys, steps=tuple(steps),
            dtype=profile.dtype, nodata=profile.nodata, scale=profile.scale, offset=profile.offset, resampling=rs,
            out=store.location, qa_kind=profile.qa_kind if qa_key else "none",
            qa_nodata=profile.qa_nodata, bad_bits=tuple(r.qa.bad_fmask_bits), max_bad_pct=r.qa.max_bad_pct,
            max_nodata_pixels=r.qa.max_nodata_pixels, labels=labels, compress=r.output.compress, level=r.output.level,
            write_qa=r.output.write_qa, threads=r.reading.threads, max_retries=r.reading.max_retries,
            env=tuple(sorted(env.items())), mask_sources=tuple(r.qa.masks), dilation=r.qa.dilation,
            max_cloud_fraction=r.qa.max_cloud_fraction, max_shadow_fraction=r.qa.max_shadow_fraction,
            quicklook=r.qa.quicklook, rgb=_rgb_indices(r), mask_steps=mask_steps,
            cmask_bits=tuple(r.cloud_masks.bits) if r.cloud_masks else ("cloud",),
        ))
    return tasks


def _rgb_indices(r: Recipe) -> tuple[int, int, int] | None:
    """Band indices of red, green, blue in the recipe's band list (for quicklooks)."""
    try:
        return (r.bands.index("red"), r.bands.index("green"), r.bands.index("blue"))
    except ValueError:
        return None
