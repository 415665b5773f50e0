"""Layouts: which files a kept unit becomes (a registry; the ``kind`` of ``output.layout`` entries).

=====================  =====================================================================
kind                   files (relative to the dataset folder)
=====================  =====================================================================
``seed-001``           ``chips/{unit}_merged.tif`` every band x step of the source, time-major
                       (``t0.b0, t0.b1, ..., t1.b0, ...``); ``chips/{unit}.mask.tif`` class map
                       with colours (and ``.mask.tif.aux.xml``: category names, see
                       :func:`write_labels`); ``chips/{unit}_Fmask.tif`` raw QA per step (seed 001)
``seed-000-cmask``     ``chips/{unit}_{i}_cmask.tif`` per step i: 1 where a chosen Fmask bit is
                       set, 0 clear, 255 fill (seed 000); rows for the ``fmask_tracker.csv`` table
``per-band``           one file per band and step: ``{path}/{name}`` templates
``stack``              one file per unit with every band of its sources, optionally cast
=====================  =====================================================================

With ``composite.index_band`` a source also gets ``chips/{unit}_{source}_scene_index.tif``
(int16, -1 where no scene has data): per step, the position of the scene each pixel came from
in that step's scene list (the ``step_N`` tags list the scene ids).

Band descriptions are the recipe's band names with the step's date (``blue@2021-06-08``);
scale and offset (with a scene's DN offset) go into the GeoTIFF metadata; nodata is declared
in every file (an integer fill, or NaN for floats). Every path is checked to stay inside the
dataset folder.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import failpoints
from ..config import is_nan
from ..errors import RecipeError
from ..registry import Registry
from .cog import AUX_SUFFIX, write_category_sidecar, write_cog
from .store import OutputStore, check_relative, safe_name

CHIPS_DIR = "chips"
Layout = Callable[[Any, Any, OutputStore, dict], tuple[dict[str, str], dict[str, Any]]]
LAYOUTS = Registry("layout")
register = LAYOUTS.register
get_layout = LAYOUTS.lookup


def write_layouts(task, data) -> tuple[dict[str, str], dict[str, Any]]:
    """Write every layout of a kept unit; return ``({path: sha256}, extra metrics)``; the
    metrics hold ``file_roles`` (``image``, ``labels``, ``labels-aux``, ``qa``, ``mask``, ``index``, ``overview`` per path)
    and ``file_order`` (the paths in the order the layouts wrote them: a unit's ``image`` files in
    this order, each file's bands in order, are the chip's channels, ``(channel, y, x)``)."""
    store = OutputStore(task.out)
    common = {"compress": task.compress, "level": task.level}
    files: dict[str, str] = {}
    extra: dict[str, Any] = {}
    roles: dict[str, str] = {}
    for cfg in task.layouts:
        f, e = get_layout(cfg.kind)(cfg, data, store, common)
        files.update(f)
        roles.update(e.pop("file_roles", {}))
        extra.update(e)
    for source, lay in data.layers.items():  # composites that record which scene each pixel came from
        if lay.index is not None:
            rel = check_relative(f"{CHIPS_DIR}/{task.unit_id}_{source}_scene_index.tif")
            files[rel] = write_cog(store, rel, lay.index, task.crs, task.transform, nodata=-1,
                                   descriptions=[f"scene_index@{s.date}" for s in lay.read.steps],
                                   tags={f"step_{t}": ",".join(sc.scene_id for sc in s.scenes) for t, s in enumerate(lay.read.steps)},
                                   **common)
            roles[rel] = "index"
    if task.masks.quicklook:
        q = write_quicklook(data, store)
        files.update(q)
        roles.update({k: "overview" for k in q})
    extra["file_roles"] = roles
    extra["file_order"] = list(files)
    return files, extra


def _source(cfg, data) -> str:
    return cfg.source or next(iter(data.layers))


def _descriptions(lay) -> list[str]:
    return [f"{b.name}@{st.date}" for st in lay.read.steps for b in lay.read.bands]


def _offsets(lay) -> list[float]:
    """Per written band: the band's offset plus the step's scene DN offset x scale."""
    return [b.offset + st.scenes[0].offset_dn * b.scale for st in lay.read.steps for b in lay.read.bands]


def common_fill(bands, where: str) -> float | None:
    """The one fill value of bands written to one file (a file has one nodata).

    Raises
    ------
    RecipeError
        The bands have different fill values or dtypes.
    """
    fills = {("nan" if is_nan(b.nodata) else b.nodata) for b in bands}
    dtypes = {b.dtype for b in bands}
    if len(fills) > 1 or len(dtypes) > 1:
        raise RecipeError(f"{where}: bands written to one file need one dtype and one nodata; got dtypes {sorted(dtypes)}, "
                          f"nodata {sorted(map(str, fills))} (set bands[].dtype/nodata, or a stack layout with a dtype)")
    (fill,) = fills
    return float("nan") if fill == "nan" else fill


BACKGROUND_NOTE = ("class 0 is nodata/background: pixels no label covers (not a class to learn; weight 0 in stats.json); "
                   "the colour table has no alpha, class 0 is drawn black")


def write_labels(data, store: OutputStore, rel: str, common: dict) -> dict[str, str]:
    """The unit's class map as a single-band COG; returns ``{path: sha256}`` of what it wrote.

    A uint8 class map gets the class colours as its colour table with alpha 255 everywhere
    (TIFF colour maps hold no alpha: GDAL reads 255 whatever was asked, so a "transparent"
    class 0 would show opaque black without saying so), tags ``class_names`` (JSON
    ``{"id": name}``), ``background_class`` (``0``) and ``background`` (:data:`BACKGROUND_NOTE`),
    and, when the recipe names its classes, the PAM sidecar ``{rel}.aux.xml`` with the
    category names and a thematic RAT (:func:`~eochips.writers.cog.category_sidecar`: GeoTIFF
    has no place for them; role ``labels-aux``, hashed like every file). A uint16 map of codes
    (``labels.dtype: uint16``; BigEarthNet v2's reference maps) is DEFLATE with predictor 2
    whatever ``output.compress`` says, with no colour table or names.
    """
    import json

    spec = data.task.labels
    if data.labels.dtype == np.uint16:
        return {rel: write_cog(store, rel, data.labels, data.task.crs, data.task.transform,
                               **{**common, "compress": "deflate"})}
    cmap = {c: (*tuple(rgba)[:3], 255) for c, rgba in spec.colormap}
    names = dict(spec.names)
    tags = {"background_class": "0", "background": BACKGROUND_NOTE}
    if names:
        tags["class_names"] = json.dumps({str(k): v for k, v in sorted(names.items())})
    files = {rel: write_cog(store, rel, data.labels, data.task.crs, data.task.transform,
                            colormap=cmap or None, tags=tags, **common)}
    if names:
        aux, digest = write_category_sidecar(store, rel, names, cmap)
        files[aux] = digest
    return files


def label_roles(files: dict[str, str]) -> dict[str, str]:
    """Roles of :func:`write_labels`' files: ``labels``, and ``labels-aux`` for the sidecar."""
    return {k: ("labels-aux" if k.endswith(AUX_SUFFIX) else "labels") for k in files}


@register("seed-001")
def seed_001(cfg, data, store: OutputStore, common: dict) -> tuple[dict[str, str], dict]:
    """Seed 001's files (ClarkCGA multi-temporal-crop-classification-training-data @82cca1a)."""
    task = data.task
    lay = data.layers[_source(cfg, data)]
    image = lay.stack()
    nt, nb = image.shape[:2]
    fill = common_fill(lay.read.bands, f"output.layout {cfg.kind}")
    rel = f"{CHIPS_DIR}/{task.unit_id}_merged.tif"
    files = {rel: write_cog(store, rel, image.reshape((nt * nb,) + image.shape[2:]), task.crs, task.transform, nodata=fill,
                            descriptions=_descriptions(lay), scales=[b.scale for _ in lay.read.steps for b in lay.read.bands],
                            offsets=_offsets(lay), tags={"scene_ids": ",".join(s.scenes[0].scene_id for s in lay.read.steps)},
                            **common)}
    failpoints.hit("chip:after-image")
    roles = {rel: "image"}
    if data.labels is not None:
        lab = write_labels(data, store, f"{CHIPS_DIR}/{task.unit_id}.mask.tif", common)
        files.update(lab)
        roles.update(label_roles(lab))
    if cfg.write_qa and lay.qa is not None:
        rel = f"{CHIPS_DIR}/{task.unit_id}_Fmask.tif"
        files[rel] = write_cog(store, rel, lay.qa, task.crs, task.transform, nodata=lay.read.qa.nodata,
                               descriptions=[f"{lay.read.qa.asset}@{s.date}" for s in lay.read.steps], **common)
        roles[rel] = "qa"
    return files, {"file_roles": roles}


@register("seed-000-cmask")
def seed_000_cmask(cfg, data, store: OutputStore, common: dict) -> tuple[dict[str, str], dict]:
    """Seed 000's binary cloud masks (ClarkCGA cloud-gap-filling-td @8130cd3), Fmask read with
    nearest; ``cloud_pct`` is the cloud fraction (0..1) of all the unit's pixels."""
    from ..qa import FMASK_FILL, fmask_masks

    task = data.task
    lay = data.layers[cfg.source]
    fill = int(lay.read.qa.nodata) if lay.read.qa.nodata is not None else FMASK_FILL
    files, rows = {}, []
    for i, step in enumerate(lay.read.steps):
        m = fmask_masks(lay.qa[i], tuple(cfg.bits), (), fill)
        cm = np.where(m.nodata, 255, m.cloud).astype(np.uint8)
        rel = f"{CHIPS_DIR}/{task.unit_id}_{i}_cmask.tif"
        files[rel] = write_cog(store, rel, cm, task.crs, task.transform, nodata=255, descriptions=[f"cloud@{step.date}"],
                               tags={"scene_id": step.scenes[0].scene_id}, **common)
        rows.append({"file": rel.split("/")[-1], "scene_id": step.scenes[0].scene_id, "cloud_pct": round(m.fractions()["cloud"], 6)})
    return files, {"cmasks": rows, "file_roles": {k: "mask" for k in files}}


def _fields(data, **kw) -> dict[str, Any]:
    """The template fields of one unit's files; ``date`` (YYYY-MM-DD) becomes a
    :class:`datetime.date`, so ``{date}`` stays YYYY-MM-DD and ``{date:%Y%m%d}`` works."""
    from datetime import date

    task = data.task
    if isinstance(kw.get("date"), str):
        kw["date"] = date.fromisoformat(kw["date"][:10])
    # grid (a scene id) and tile come from the catalog's items: sanitised to a plain name part
    return {"unit": task.unit_id, "grid": safe_name(task.grid_name), "tile": safe_name(task.tile or ""), "n": task.n,
            "product": safe_name(task.product or task.grid_name), **kw}


def _path(cfg, fields: dict[str, Any], name: str) -> str:
    folder = cfg.path.format(**fields).strip("/")
    return check_relative(f"{folder}/{name.format(**fields)}" if folder else name.format(**fields), f"output.layout {cfg.kind} path")


@register("per-band")
def per_band(cfg, data, store: OutputStore, common: dict) -> tuple[dict[str, str], dict]:
    """One single-band file per band and time step (BigEarthNet: ``{patch}_{band}.tif``), each at
    the band's own grid (resolution groups keep 10/20/60 m bands at their pixel size)."""
    task = data.task
    files = {}
    for source in cfg.sources or list(data.layers):
        lay = data.layers[source]
        for t, step in enumerate(lay.read.steps):
            for spec, arr in zip(lay.read.bands, lay.bands):
                f = _fields(data, band=spec.name, source=source, step=t, date=step.date)
                rel = _path(cfg, f, cfg.name)
                _, tr, _ = task.grid_at(task.band_resolution(spec))
                files[rel] = write_cog(store, rel, arr[t], task.crs, tr, nodata=spec.nodata, descriptions=[f"{spec.name}@{step.date}"],
                                       scales=[spec.scale], offsets=[spec.offset + step.scenes[0].offset_dn * spec.scale],
                                       tags={"scene_id": ",".join(sc.scene_id for sc in step.scenes)}, **common)
    roles = {k: "image" for k in files}
    if data.labels is not None and cfg.labels:
        lab = write_labels(data, store, _path(cfg, _fields(data), cfg.labels), common)
        files.update(lab)
        roles.update(label_roles(lab))
    return files, {"file_roles": roles}


def cast_dtype(bands, dtype: str | None, where: str) -> tuple[str, float | None]:
    """The dtype and fill of a stack of ``bands`` cast to ``dtype`` (None: their common one).

    Raises
    ------
    RecipeError
        A narrowing cast (values would be clipped or rounded: uint8 on int16 data), or bands
        that need a cast and have none.
    """
    if dtype is None:
        return bands[0].dtype, common_fill(bands, where)
    bad = [b.name for b in bands if not np.can_cast(np.dtype(b.dtype), np.dtype(dtype), "safe")]
    if bad:
        raise RecipeError(f"{where}: dtype {dtype} cannot hold band(s) {bad} ({', '.join(sorted({b.dtype for b in bands}))}) "
                          f"without clipping or rounding; use a wider dtype (e.g. float32)")
    if np.dtype(dtype).kind == "f":
        return dtype, float("nan")
    return dtype, common_fill(bands, where)


@register("stack")
def stack(cfg, data, store: OutputStore, common: dict) -> tuple[dict[str, str], dict]:
    """Every band of ``cfg.sources`` (each source's steps time-major) in one file, cast to
    ``cfg.dtype`` when given (fill pixels become NaN in a float cast)."""
    from ..chips import nodata_mask

    task = data.task
    sources = cfg.sources or list(data.layers)
    specs = [b for s in sources for b in data.layers[s].read.bands]
    dtype, fill = cast_dtype(specs, cfg.dtype, f"output.layout {cfg.kind}")
    parts, desc, scales, offsets, scene_ids = [], [], [], [], []
    for s in sources:
        lay = data.layers[s]
        for t, step in enumerate(lay.read.steps):
            for spec, arr in zip(lay.read.bands, lay.bands):
                a = arr[t]
                out = a.astype(dtype)
                if np.dtype(dtype).kind == "f" and np.dtype(spec.dtype).kind != "f":
                    out[nodata_mask(a, spec.nodata)] = np.nan
                parts.append(out)
                desc.append(spec.name if cfg.descriptions == "band" else f"{spec.name}@{step.date}")
                scales.append(spec.scale)
                offsets.append(spec.offset + step.scenes[0].offset_dn * spec.scale)
            scene_ids.extend(sc.scene_id for sc in step.scenes)  # every scene of a composited step (S1 swaths, DEM tiles)
    first = data.layers[sources[0]].read.steps[0]
    f = _fields(data, date=first.date, source=",".join(sources))
    rel = _path(cfg, f, cfg.name)
    files = {rel: write_cog(store, rel, np.stack(parts), task.crs, task.transform, nodata=fill, descriptions=desc,
                            scales=scales, offsets=offsets, tags={"date": first.date, "scene_ids": ",".join(scene_ids)}, **common)}
    roles = {rel: "image"}
    if data.labels is not None and cfg.labels:
        lab = write_labels(data, store, _path(cfg, _fields(data, date=first.date), cfg.labels), common)
        files.update(lab)
        roles.update(label_roles(lab))
    return files, {"file_roles": roles}


def write_quicklook(data, store: OutputStore) -> dict[str, str]:
    """``quicklooks/{unit}.png``: per date of the first masked source, the RGB (2-98 % stretch)
    with cloud outlined in red, shadow in blue and nodata in grey; returns ``{path: sha256}``."""
    import hashlib
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = data.task
    lay = next((lay for lay in data.layers.values() if lay.masks), next(iter(data.layers.values())))
    names = [b.name for b in lay.read.bands]
    rgb_idx = [names.index(n) for n in ("red", "green", "blue")] if {"red", "green", "blue"} <= set(names) else None
    nt = len(lay.read.steps)
    fig, axes = plt.subplots(1, nt, figsize=(2.5 * nt, 2.7), dpi=100, squeeze=False)
    for t in range(nt):
        ax = axes[0, t]
        if rgb_idx is not None:
            rgb = np.stack([lay.bands[i][t] for i in rgb_idx]).astype(np.float64)
            nd = lay.read.bands[rgb_idx[0]].nodata
            valid = np.isfinite(rgb[0]) & ((rgb[0] != nd) if nd is not None and not is_nan(nd) else True)
            lo, hi = (np.percentile(rgb[:, valid], (2, 98)) if valid.any() else (0, 1))
            ax.imshow(np.clip((np.moveaxis(rgb, 0, -1) - lo) / max(hi - lo, 1e-9), 0, 1), interpolation="nearest")
        elif lay.bands:
            ax.imshow(lay.bands[0][t], cmap="gray", interpolation="nearest")
        if lay.masks:
            for layer, color in (("cloud", "red"), ("shadow", "blue"), ("nodata", "0.5")):
                arr = getattr(lay.masks[t], layer)
                if arr.any() and not arr.all():
                    ax.contour(arr.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
        ax.set_title(lay.read.steps[t].date, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(task.unit_id, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    rel = f"quicklooks/{task.unit_id}.png"
    store.write_bytes(rel, buf.getvalue())
    return {rel: hashlib.sha256(buf.getvalue()).hexdigest()}


@register("mosaic")
def mosaic(cfg, tile, store: OutputStore, common: dict) -> tuple[dict[str, str], dict]:
    """The parts of one mosaic tile (:class:`eochips.mosaic.MosaicTile`, contract in
    :class:`~eochips.config.models.MosaicLayout`): ``tiles/{unit}-cloudless.tif`` and
    ``tiles/{unit}-cloudy.tif`` (``(band, y, x)``, the bands' dtype, fill and scale/offset; tag
    ``picks`` = ``number:scene_id`` of the stage's picks) and ``tiles/{unit}-source.tif``
    (uint16 ``cloudless_index``, ``cloudy_index`` [, ``clear_count``], no fill: 0 = none)."""
    from ..mosaic import part_names

    task = tile.task
    lay = task.layer(task.mosaic.source)
    bands = lay.bands
    fill = common_fill(bands, "output.layout mosaic")
    parts = part_names(task.unit_id)
    files: dict[str, str] = {}
    for product in ("cloudless", "cloudy"):
        files[parts[product]] = write_cog(
            store, parts[product], tile.images[product], task.crs, task.transform, nodata=fill,
            descriptions=[b.name for b in bands], scales=[b.scale for b in bands], offsets=[b.offset for b in bands],
            tags={"picks": ",".join(f"{sc.pick}:{sc.scene_id}" for sc in tile.picks[product])}, **common)
    src = [tile.cloudless_index, tile.cloudy_index] + ([tile.clear_count] if tile.clear_count is not None else [])
    desc = ["cloudless_index", "cloudy_index"] + (["clear_count"] if tile.clear_count is not None else [])
    files[parts["source"]] = write_cog(store, parts["source"], np.stack(src).astype(np.uint16), task.crs, task.transform,
                                       descriptions=desc, **common)
    roles = {parts["cloudless"]: "image", parts["cloudy"]: "image", parts["source"]: "index"}
    return files, {"file_roles": roles}
