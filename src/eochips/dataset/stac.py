"""The ``stac`` finalizer: a self-contained STAC catalog of the dataset (STAC 1.1.0).

Files (all through the dataset's :class:`~eochips.writers.OutputStore`, relative hrefs, so the
folder can move or be copied to object storage as it is):

``stac/collection.json``
    One Collection (id = the recipe name): the extent (union of the items' bboxes, the first and
    last scene datetime), summaries (split roles, projection codes, platforms, instruments,
    label classes), ``item`` links to every item, ``derived_from`` links to the source
    collections of a STAC API, eochips as the ``processor`` provider. The plan keeps no
    source collection documents, so the licence is ``other`` (see each source's terms).
``stac/items/{unit}.json``
    One Item per kept unit (a flat folder rather than pystac's ``{id}/{id}.json``: thousands of
    units make thousands of folders otherwise). The catalog is *self-contained* in pystac's
    sense: no ``self`` links, every other link relative.

An item holds

- ``geometry`` / ``bbox``: the unit footprint reprojected to EPSG:4326 (densified, as the index:
  :func:`eochips.geo.reproject_geometry`, then the vertices within :data:`GEOMETRY_TOLERANCE` of
  a straight edge left out); ``bbox`` is the index geometry's bounds;
- ``datetime``: the unit's one scene datetime, or ``null`` with ``start_datetime`` /
  ``end_datetime`` over its scenes (STAC 1.1 item spec, "datetime");
- projection v2.0.0: ``proj:code`` (``EPSG:n``, or null with ``proj:wkt2``), ``proj:shape``
  ``[rows, cols]`` and ``proj:transform`` (the 6 affine coefficients, CRS units) of the unit grid;
- one asset per file, in the layout's file order, href relative to the item, roles by the
  file's eochips role (:data:`ASSET_ROLES`): ``image`` -> ``data``, ``labels`` -> ``labels``,
  ``qa`` / ``mask`` / ``index`` -> ``metadata``, ``overview`` -> ``overview``;
- raster v1.1.0 ``raster:bands`` per GeoTIFF asset (``data_type``, ``nodata`` (a number or
  ``"nan"``), ``scale``, ``offset``, ``spatial_resolution``) read from the header of one file per
  *file pattern* (the file's position in the unit's file order, its role, and its path with the
  unit id and digits masked, e.g. ``chips/{unit}_merged.tif``): the layouts write every unit of
  a pattern alike, so headers are not opened per unit;
- eo v1.1.0 ``eo:bands`` on the image assets: each channel's name (``blue``, or ``blue@t1`` when a
  band recurs: the chip channel rule of issue 14) and its ``common_name`` where the band name is
  one (:data:`EO_COMMON_NAMES`; ``rededge1..3`` -> ``rededge``);
- label v1.0.1 on a recipe with labels: ``label:type`` ``raster``, ``label:properties`` null,
  ``label:classes`` ``[{"name": null, "classes": [names in class id order]}]`` (the schema wants
  ``name`` null for raster labels), ``label:description``, ``label:tasks``; in the item
  properties (the extension requires them there) and on the label assets;
- ml-aoi v0.1.0 ``ml-aoi:split``: ``train``, ``validate`` (the extension's word for the
  validation part) or ``test``; absent for a kept unit the split leaves out (``ctx.excluded``);
- ``derived_from`` links to the source scene items: for a STAC API source the item URL
  ``{api}/collections/{collection}/items/{id}`` (STAC API - Features), for a static catalog the
  catalog document (the plan does not keep each item's own file); every href without user
  info, query string or fragment and through :func:`eochips.search.redact`.

Writing is plain ``json`` from dicts (no pystac object per item): 8,281 items take seconds.
Items of units no longer kept are removed, so a refinalize leaves exactly one item per kept
unit, byte-identical to the last run when nothing changed (no wall-clock time in any file).

:func:`validate_catalog` validates the written catalog with pystac offline: the STAC core schemas
pystac ships plus the extension schemas above, shipped in ``eochips/schema/stac/`` (the
official schemas, as published at stac-extensions.github.io); a schema outside that set is an
error, never a download.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import OutputError
from ..search import redact
from . import Context, image_files, register

STAC_VERSION = "1.1.0"
STAC_DIR = "stac"
COLLECTION_FILE = f"{STAC_DIR}/collection.json"
ITEMS_DIR = f"{STAC_DIR}/items"

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
LABEL = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
ML_AOI = "https://stac-extensions.github.io/ml-aoi/v0.1.0/schema.json"
SCHEMA_FILES = {PROJECTION: "projection-v2.0.0.json", RASTER: "raster-v1.1.0.json", EO: "eo-v1.1.0.json",
                LABEL: "label-v1.0.1.json", ML_AOI: "ml-aoi-v0.1.0.json"}
"""Extension schema URI -> its copy in ``eochips/schema/stac/``."""

ASSET_ROLES = {"image": ["data"], "labels": ["labels"], "labels-aux": ["metadata"], "qa": ["metadata"], "mask": ["metadata"],
               "index": ["metadata"], "overview": ["overview"]}
"""eochips file role (``metrics["file_roles"]``) -> STAC asset roles."""

ML_AOI_SPLIT = {"train": "train", "validation": "validate", "test": "test"}
"""eochips split part -> ``ml-aoi:split`` (the extension's enum: train, validate, test)."""

EO_COMMON_NAMES = frozenset({"coastal", "blue", "green", "red", "rededge", "yellow", "pan", "nir", "nir08", "nir09",
                             "cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12"})
"""The eo v1.1.0 ``common_name`` values (its schema's enum)."""

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
MEDIA_TYPES = {".tif": COG, ".tiff": COG, ".png": "image/png", ".jpg": "image/jpeg", ".json": "application/json",
               ".parquet": "application/vnd.apache.parquet", ".zarr": "application/vnd+zarr", ".xml": "application/xml"}
RASTER_SUFFIXES = (".tif", ".tiff")
WRITE_THREADS = 8
"""Item files written at once (their fsyncs, or PUTs to object storage, overlap)."""
GEOMETRY_TOLERANCE = 1e-7
"""Degrees (about 1 cm) an item geometry may deviate from the unit's densified footprint."""


# --------------------------------------------------------------------------------------
# hrefs

def clean_href(href: str) -> str:
    """``href`` without credentials: a URL loses its user info, query string and fragment (a
    signed or token query is never part of an item's address), then :func:`redact` runs over
    what is left (a local path only goes through :func:`redact`)."""
    if "://" in href:
        p = urlsplit(href)
        netloc = p.hostname or ""
        if p.port:
            netloc = f"{netloc}:{p.port}"
        href = urlunsplit((p.scheme, netloc, p.path, "", ""))
    return redact(href)


def source_item_href(catalog: str, collection: str | None, item_id: str, api: bool) -> str:
    """Where a source scene's STAC item lives, without credentials (:func:`clean_href`).

    Parameters
    ----------
    catalog
        The source's ``search.catalog``: a STAC API root URL, or a static catalog file / URL.
    collection, item_id
        The scene's collection and item id.
    api
        True for a STAC API (:func:`eochips.search.stac.is_api`): the item URL is
        ``{root}/collections/{collection}/items/{id}`` (OGC API - Features, as STAC API serves
        items); else the static catalog document itself.
    """
    if not api:
        return clean_href(catalog)
    root = clean_href(catalog).rstrip("/")
    return f"{root}/collections/{quote(str(collection or ''), safe='')}/items/{quote(item_id, safe='')}"


def _relative(target: str, start_dir: str) -> str:
    """POSIX relative path from the folder ``start_dir`` to ``target`` (both dataset-relative,
    ``/``-separated, no ``.`` or ``..`` parts)."""
    t, s = target.split("/"), start_dir.split("/")
    n = 0
    while n < min(len(t), len(s)) and t[n] == s[n]:
        n += 1
    return "/".join([".."] * (len(s) - n) + list(t[n:])) or "."


def _suffix(rel: str) -> str:
    """The lower-case suffix of a path's file name (``.tif``), or ``""``."""
    name = rel.rsplit("/", 1)[-1]
    return name[name.rfind("."):].lower() if "." in name[1:] else ""


def item_path(unit_id: str) -> str:
    """Dataset-relative path of a unit's item (``stac/items/{unit}.json``; a ``/`` in an id becomes ``_``)."""
    return f"{ITEMS_DIR}/{unit_id.replace('/', '_')}.json"


# --------------------------------------------------------------------------------------
# file headers, once per file pattern

def file_pattern(rel: str, unit_id: str) -> str:
    """The layout pattern of a unit's file: ``rel`` with the unit id as ``{unit}`` and every
    other digit as ``#`` (dates, tile numbers), e.g. ``chips/{unit}_merged.tif``."""
    return re.sub(r"\d", "#", rel.replace(unit_id, "\0")).replace("\0", "{unit}")


def read_header(store, rel: str) -> dict[str, Any]:
    """The band facts of one GeoTIFF of the dataset, read from its header (no pixels).

    Returns
    -------
    dict
        ``dtypes``, ``nodata`` (float, NaN or None), ``scales``, ``offsets``, ``descriptions``
        (one entry per band, band order), ``res`` (pixel size in CRS units, ``(x, y)``) and
        ``shape`` (``(rows, cols)``).

    Raises
    ------
    OutputError
        The file does not open as a raster (named).
    """
    import rasterio
    from rasterio.io import MemoryFile

    def facts(ds) -> dict[str, Any]:
        return {"dtypes": list(ds.dtypes), "nodata": list(ds.nodatavals), "scales": list(ds.scales),
                "offsets": list(ds.offsets), "descriptions": list(ds.descriptions), "res": tuple(ds.res),
                "shape": (ds.height, ds.width)}

    try:
        if store.is_local:
            with rasterio.open(store.local_path(rel)) as ds:
                return facts(ds)
        with MemoryFile(store.read_bytes(rel)) as mem, mem.open() as ds:
            return facts(ds)
    except rasterio.errors.RasterioError as exc:
        raise OutputError(f"file {rel} of {store.location!r} does not open as a raster for the STAC catalog ({exc}); "
                          f"check it, then rerun 'eochips finalize'") from None


def _number(v: float) -> float | int | str:
    """A nodata value for JSON: ``"nan"`` / ``"inf"`` / ``"-inf"`` as the raster extension wants,
    an integer when the value is whole."""
    import math

    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return int(v) if float(v).is_integer() else float(v)


def raster_bands(h: dict[str, Any]) -> list[dict[str, Any]]:
    """``raster:bands`` of a file header (:func:`read_header`): per band ``data_type``, ``nodata``
    (omitted when the file declares none), ``scale``, ``offset``, ``spatial_resolution``
    (the x pixel size, CRS units: metres on the projected grids eochips writes)."""
    out = []
    for i, dt in enumerate(h["dtypes"]):
        b: dict[str, Any] = {"data_type": dt}
        if h["nodata"][i] is not None:
            b["nodata"] = _number(h["nodata"][i])
        b["scale"] = float(h["scales"][i])
        b["offset"] = float(h["offsets"][i])
        b["spatial_resolution"] = float(abs(h["res"][0]))
        out.append(b)
    return out


def band_name(description: str | None, i: int) -> str:
    """The band of a file band's description ``"{band}@{YYYY-MM-DD}"`` (``band{i+1}`` when empty)."""
    return (description or f"band{i + 1}").split("@")[0]


def common_name(band: str, known: dict[str, str] | None = None) -> str | None:
    """The eo ``common_name`` of a band name, or None: the name itself when it is one,
    ``rededge`` for ``rededge1..3``; else what ``known`` (:func:`profile_common_names`) maps it to."""
    if band in EO_COMMON_NAMES:
        return band
    if re.fullmatch(r"rededge\d?", band):
        return "rededge"
    got = (known or {}).get(band)
    return common_name(got) if got and got != band else None


def profile_common_names(plan) -> dict[str, str]:
    """Band name -> the profile's band name, over the plan's sources: a recipe that names bands
    by asset key (Clay's ``B02``, ``B8A``) gets the profile's common names (``blue``, ``nir08``)."""
    out: dict[str, str] = {}
    for sp in plan.sources.values():
        for b in sp.profile.bands:
            out.setdefault(b.asset, b.name)
    return out


# --------------------------------------------------------------------------------------
# items

def _label_fields(ctx: Context) -> dict[str, Any] | None:
    """The label extension fields of the dataset, or None without labels."""
    from ..plan import class_names

    r = ctx.plan.recipe
    if r.labels is None:
        return None
    names = class_names(r)
    ordered = list(dict.fromkeys(names[k] for k in sorted(names)))
    table = r.labels.table
    tasks = ["segmentation", "classification"] if table else ["segmentation"]
    desc = (f"{r.name}: a class map, one class id per pixel; classes in id order: "
            + ", ".join(f"{k} {names[k]}" for k in sorted(names)))
    if table:
        desc = f"{r.name}: {table} codes per pixel (multi-label names per unit from the table)"
    return {"label:type": "raster", "label:properties": None, "label:description": desc, "label:tasks": tasks,
            "label:classes": [{"name": None, "classes": ordered}]}


def _datetimes(rec: dict[str, Any], up) -> list[str]:
    m = rec["metrics"]
    got = m.get("datetimes") or [p.scene.datetime.isoformat() for groups in up.groups.values() for g in groups for p in g]
    return sorted({_iso(d) for d in got})


def _iso(d: str) -> str:
    """An ISO datetime as STAC writes it (``YYYY-MM-DDTHH:MM:SSZ``, UTC)."""
    from ..search.scene import parse_datetime

    dt = parse_datetime(d)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{dt.microsecond:06d}" if dt.microsecond else "") + "Z"


def _common_metadata(scenes: list) -> dict[str, Any]:
    """``platform`` / ``constellation`` / ``instruments`` shared by a unit's scenes (STAC common
    metadata): a field appears when every scene that has it agrees (instruments: the union)."""
    out: dict[str, Any] = {}
    for key in ("platform", "constellation"):
        vals = {s.properties.get(key) for s in scenes} - {None}
        if len(vals) == 1:
            out[key] = vals.pop()
    inst = sorted({i for s in scenes for i in (s.properties.get("instruments") or ())})
    if inst:
        out["instruments"] = inst
    return out


class _Builder:
    """Builds the item dicts of one finalisation (file headers cached per pattern)."""

    def __init__(self, ctx: Context):
        from ..search.stac import is_api

        self.ctx = ctx
        self.headers: dict[str, dict[str, Any]] = {}
        self.label = _label_fields(ctx)
        self.split_of = ctx.split_of
        self.units = {u.id: u for u in ctx.plan.units}
        self.api = {s: is_api(cfg.search.catalog) for s, cfg in ctx.plan.recipe.sources.items()}
        self.known = profile_common_names(ctx.plan)

    def header(self, rel: str, unit_id: str) -> dict[str, Any]:
        """The header of ``rel``, read once per (position in the unit's file order, role, pattern):
        the position keeps apart files whose names differ only in digits (``B02`` at 10 m,
        ``B05`` at 20 m: one pattern ``B##``)."""
        m = self.ctx.records[unit_id]["metrics"]
        order = m.get("file_order") or sorted(self.ctx.records[unit_id]["files"])
        pos = order.index(rel) if rel in order else -1
        key = f"{pos}|{m.get('file_roles', {}).get(rel, '')}|{file_pattern(rel, unit_id)}"
        if key not in self.headers:
            self.headers[key] = read_header(self.ctx.store, rel)
        return self.headers[key]

    def links(self, up) -> list[dict[str, Any]]:
        coll = _relative(COLLECTION_FILE, ITEMS_DIR)
        out = [{"rel": "root", "href": coll, "type": "application/json"},
               {"rel": "parent", "href": coll, "type": "application/json"},
               {"rel": "collection", "href": coll, "type": "application/json"}]
        seen = set()
        recipe = self.ctx.plan.recipe
        for src, groups in up.groups.items():
            for step, grp in enumerate(groups):
                for p in grp:
                    if (src, p.scene.id) in seen:
                        continue
                    seen.add((src, p.scene.id))
                    api = self.api.get(src, False)
                    out.append({"rel": "derived_from",
                                "href": source_item_href(recipe.sources[src].search.catalog, p.scene.collection, p.scene.id, api),
                                "type": "application/geo+json" if api else "application/json",
                                "title": f"{src} scene {p.scene.id} (step {step}, {p.role})"})
        return out

    def assets(self, uid: str, rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
        roles = rec["metrics"].get("file_roles", {})
        order = [f for f in (rec["metrics"].get("file_order") or []) if f in rec["files"]]
        order += sorted(f for f in rec["files"] if f not in order)
        images = image_files(rec)
        names = self._channel_names(uid, images)
        out: dict[str, dict[str, Any]] = {}
        for rel in order:
            role = roles.get(rel, "")
            key = self._asset_key(rel, uid, role, out)
            name = rel.rsplit("/", 1)[-1]
            suffix = _suffix(name)
            a: dict[str, Any] = {"href": _relative(rel, ITEMS_DIR), "type": MEDIA_TYPES.get(suffix, "application/octet-stream"),
                                 "title": name, "roles": ASSET_ROLES.get(role, ["data"])}
            if suffix in RASTER_SUFFIXES:
                h = self.header(rel, uid)
                a["raster:bands"] = raster_bands(h)
                if rel in names:
                    a["eo:bands"] = [{"name": n, **({"common_name": c} if (c := common_name(n.split("@")[0], self.known)) else {})}
                                     for n in names[rel]]
            if role == "labels" and self.label is not None:
                a.update(self.label)
            out[key] = a
        return out

    def _channel_names(self, uid: str, images: list[str]) -> dict[str, list[str]]:
        """Per image file its channels' names (chip order; ``{band}@t{k}`` when a band recurs)."""
        bands = {rel: [band_name(d, i) for i, d in enumerate(self.header(rel, uid)["descriptions"])]
                 for rel in images if _suffix(rel) in RASTER_SUFFIXES}
        every = [b for bs in bands.values() for b in bs]
        repeated = len(set(every)) < len(every)
        seen: dict[str, int] = {}
        out = {}
        for rel, bs in bands.items():
            names = []
            for b in bs:
                k = seen.get(b, 0)
                seen[b] = k + 1
                names.append(f"{b}@t{k}" if repeated else b)
            out[rel] = names
        return out

    @staticmethod
    def _asset_key(rel: str, uid: str, role: str, taken: dict) -> str:
        """The asset key of a file, the same in every item of a layout: its name without the unit
        id, suffix and separators when the name holds the id (``chip_000_000_merged.tif`` ->
        ``merged``; ``chip_000_000.mask.tif`` -> ``mask``), else its role (``image``; a name
        holding dates or tile numbers instead, as Clay's ``claytile_{tile}_{date}_v02_{n}.tif``);
        ``_2``, ``_3`` ... for repeats."""
        stem = rel.rsplit("/", 1)[-1]
        stem = stem[: -len(_suffix(stem))] if _suffix(stem) else stem
        key = (stem.replace(uid, "").strip("_.-") if uid in stem else "") or role or "file"
        base, n = key, 1
        while key in taken:
            n += 1
            key = f"{base}_{n}"
        return key

    def item(self, uid: str, footprint: tuple[Any, list[float]]) -> dict[str, Any]:
        from shapely.geometry import mapping

        ctx = self.ctx
        rec, up = ctx.records[uid], self.units[uid]
        g = up.unit.gbox
        epsg = g.crs.epsg
        dts = _datetimes(rec, up) or ([_iso(str(ctx.plan.grids[up.unit.grid].date))] if ctx.plan.grids[up.unit.grid].date else [])
        if not dts:
            raise OutputError(f"unit {uid} of {ctx.store.location!r} has no scene datetime for its STAC item; "
                              f"leave 'stac' out of dataset.finalizers for this recipe")
        props: dict[str, Any] = {}
        if len(dts) == 1:
            props["datetime"] = dts[0]
        else:
            props.update({"datetime": None, "start_datetime": dts[0], "end_datetime": dts[-1]})
        scenes = [p.scene for groups in up.groups.values() for grp in groups for p in grp]
        props.update(_common_metadata(scenes))
        props["gsd"] = float(abs(g.affine.a))
        props["proj:code"] = f"EPSG:{epsg}" if epsg else None
        if not epsg:
            props["proj:wkt2"] = g.crs.to_wkt()
        props["proj:shape"] = [int(g.shape[0]), int(g.shape[1])]
        props["proj:transform"] = [float(v) for v in tuple(g.affine)[:6]]
        exts = [PROJECTION, RASTER, EO]
        if self.label is not None:
            props.update(self.label)
            exts.append(LABEL)
        part = self.split_of.get(uid)
        if part is not None:
            props["ml-aoi:split"] = ML_AOI_SPLIT[part]
        exts.append(ML_AOI)
        props["eochips:grid"], props["eochips:row"], props["eochips:col"] = up.unit.grid, up.unit.row, up.unit.col
        if isinstance(up.tile, str) and up.tile not in ("", "<NA>", "nan", "None"):  # a plan read back may hold "<NA>"
            props["eochips:tile"] = up.tile
        shape, bbox = footprint
        return {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": exts, "id": uid,
                "geometry": mapping(shape), "bbox": bbox, "properties": props,
                "links": self.links(up), "assets": self.assets(uid, rec), "collection": ctx.plan.recipe.name}


def _footprints(ctx: Context, ids: list[str]) -> dict[str, tuple[Any, list[float]]]:
    """Unit id -> ``(item geometry, bbox)`` in EPSG:4326: the index's densified reprojection of
    the unit polygon simplified within :data:`GEOMETRY_TOLERANCE`, and the densified one's
    bounds ``[west, south, east, north]`` (degrees); per grid in one vectorised call."""
    import numpy as np
    import shapely

    from ..geo import reproject_geometry

    units = {u.id: u for u in ctx.plan.units}
    by_grid: dict[int, list[str]] = {}
    for uid in ids:
        by_grid.setdefault(units[uid].unit.grid, []).append(uid)
    out = {}
    for gi, uids in by_grid.items():
        crs = ctx.plan.grids[gi].gbox.crs.to_wkt()
        polys = np.array([units[u].unit.polygon for u in uids], dtype=object)
        feet = np.atleast_1d(reproject_geometry(polys, crs, "EPSG:4326"))
        # the densified footprint less its near-collinear vertices (within GEOMETRY_TOLERANCE): a
        # chip's 129 points become its 4 corners, a 110 km tile keeps the ones its curvature needs;
        # the bbox stays the densified footprint's bounds (the index's)
        shapes = shapely.simplify(feet, GEOMETRY_TOLERANCE, preserve_topology=False)  # Douglas-Peucker: the corners of a quad stay
        for u, geom, shape, bounds in zip(uids, feet, shapes, shapely.bounds(feet)):
            out[u] = (shape, [float(v) for v in bounds])
    return out


def _dumps(d: dict[str, Any], indent: int | None = None) -> str:
    """JSON text of a STAC object (items on one line: the C encoder, several times faster than an
    indented dump; the collection indented)."""
    return json.dumps(d, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def _write_if_changed(store, rel: str, text: str) -> bool:
    """Write ``text`` as ``rel`` (atomically, :meth:`OutputStore.write_text`) unless a local file
    already holds exactly these bytes (a refinalize: no rewrite, no fsync); True when written."""
    data = text.encode("utf-8")
    if store.is_local:
        p = store.local_path(rel)
        try:
            if p.stat().st_size == len(data) and p.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
    store.write_bytes(rel, data)
    return True


def collection_dict(ctx: Context, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The dataset's Collection (see the module docstring) over its item dicts."""
    from .. import __version__
    from ..search.stac import is_api

    r = ctx.plan.recipe
    if items:
        bb = [it["bbox"] for it in items]
        bbox = [min(b[0] for b in bb), min(b[1] for b in bb), max(b[2] for b in bb), max(b[3] for b in bb)]
        starts = [it["properties"].get("start_datetime") or it["properties"]["datetime"] for it in items]
        ends = [it["properties"].get("end_datetime") or it["properties"]["datetime"] for it in items]
        interval = [min(starts), max(ends)]
    else:
        bbox, interval = [-180.0, -90.0, 180.0, 90.0], [None, None]
    links: list[dict[str, Any]] = [{"rel": "root", "href": "./collection.json", "type": "application/json", "title": r.name}]
    for s, cfg in r.sources.items():
        api = is_api(cfg.search.catalog)
        for c in cfg.search.collections:
            href = (f"{clean_href(cfg.search.catalog).rstrip('/')}/collections/{quote(c, safe='')}" if api
                    else clean_href(cfg.search.catalog))
            links.append({"rel": "derived_from", "href": href, "type": "application/json", "title": f"source {s}: collection {c}"})
    links += [{"rel": "item", "href": "./" + _relative(item_path(it["id"]), STAC_DIR), "type": "application/geo+json"}
              for it in items]
    summaries: dict[str, Any] = {}
    splits = sorted({it["properties"]["ml-aoi:split"] for it in items if "ml-aoi:split" in it["properties"]})
    if splits:
        summaries["ml-aoi:split"] = splits
    codes = sorted({it["properties"]["proj:code"] for it in items if it["properties"].get("proj:code")})
    if codes:
        summaries["proj:code"] = codes
    for key in ("platform", "constellation"):
        vals = sorted({it["properties"][key] for it in items if key in it["properties"]})
        if vals:
            summaries[key] = vals
    inst = sorted({i for it in items for i in it["properties"].get("instruments", [])})
    if inst:
        summaries["instruments"] = inst
    gsd = sorted({it["properties"]["gsd"] for it in items})
    if gsd:
        summaries["gsd"] = gsd
    label = _label_fields(ctx)
    if label is not None:
        summaries["label:type"] = ["raster"]
        summaries["label:classes"] = label["label:classes"]
    desc = redact((r.description or f"eochips dataset of recipe {r.name}").strip())  # a ${..._TOKEN} may sit in it
    return {"type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": [], "id": r.name,
            "title": r.name, "description": desc + f" ({len(items)} chips; built by eochips {__version__})",
            "keywords": ["eochips", "machine learning", "training data"],
            "license": "other",
            "providers": [{"name": "eochips", "roles": ["processor"],
                           "description": f"eochips {__version__} cut these chips with recipe {r.name!r} "
                                          f"from the source collections linked as derived_from"}],
            "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
            "summaries": summaries, "links": links}


@register("stac")
def _stac(ctx: Context) -> None:
    store = ctx.store
    builder = _Builder(ctx)
    from concurrent.futures import ThreadPoolExecutor

    feet = _footprints(ctx, ctx.kept)
    items = [builder.item(uid, feet[uid]) for uid in ctx.kept]
    texts = {item_path(it["id"]): _dumps(it) for it in items}
    with ThreadPoolExecutor(WRITE_THREADS) as pool:  # each write waits on its fsync (or PUT): overlap them
        list(pool.map(lambda kv: _write_if_changed(store, *kv), texts.items()))
    for rel in store.list_files():
        if rel.startswith(ITEMS_DIR + "/") and rel not in texts:
            store.remove(rel)  # the item of a unit no longer kept
    _write_if_changed(store, COLLECTION_FILE, _dumps(collection_dict(ctx, items), indent=1))


# --------------------------------------------------------------------------------------
# offline validation

@lru_cache(maxsize=1)
def _schemas() -> dict[str, dict[str, Any]]:
    folder = Path(__file__).resolve().parents[1] / "schema" / "stac"
    return {uri: json.loads((folder / name).read_text()) for uri, name in SCHEMA_FILES.items()}


def offline_validator():
    """A pystac validator that never downloads: pystac's bundled STAC 1.1 core schemas plus the
    extension schemas of :data:`SCHEMA_FILES`; any other schema URI fails validation
    (``pystac.errors.GetSchemaError``) instead of being fetched."""
    import jsonschema
    from pystac.errors import STACValidationError
    from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

    class OfflineValidator(JsonSchemaSTACValidator):
        def __init__(self) -> None:
            super().__init__()
            self.schema_cache.update(json.loads(json.dumps(_schemas())))
            self._registry = None

            self._validators: dict[str, Any] = {}

        @property
        def registry(self):  # built once: every schema is in the cache, none is fetched
            if self._registry is None:
                self._registry = JsonSchemaSTACValidator.registry.fget(self)
            return self._registry

        def _validate_from_uri(self, stac_dict, stac_object_type, schema_uri, href=None) -> None:
            # pystac checks each schema against its metaschema on every call (half the time of
            # a catalog's validation); here once per schema, then its validator is reused
            if schema_uri not in self._validators:
                schema = self._get_schema(schema_uri)
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
                self._validators[schema_uri] = cls(schema, registry=self.registry)
            errors = list(self._validators[schema_uri].iter_errors(stac_dict))
            if errors:
                best = jsonschema.exceptions.best_match(errors)
                raise STACValidationError(f"Validation failed for {stac_object_type} with ID {stac_dict.get('id')} "
                                          f"against schema at {schema_uri}\n{best}", source=errors) from best

        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            if schema_uri not in self.schema_cache:
                raise GetSchemaError(schema_uri, LookupError("not among eochips' offline schemas (eochips/schema/stac)"))
            return self.schema_cache[schema_uri]

    return OfflineValidator()


def validate_catalog(folder: str | Path) -> int:
    """Validate ``{folder}/stac/collection.json`` and every item it links with pystac, offline
    (:func:`offline_validator`); return the number of items validated.

    Raises
    ------
    pystac.errors.STACValidationError
        An object breaks the STAC core schema or the schema of an extension it declares.
    pystac.validation.stac_validator.GetSchemaError
        An object declares an extension whose schema eochips does not ship.
    """
    import pystac.validation

    v = offline_validator()
    root = Path(folder) / STAC_DIR
    coll = json.loads((root / "collection.json").read_text())
    pystac.validation.validate_dict(coll, validator=v)
    n = 0
    for link in coll["links"]:
        if link["rel"] == "item":
            pystac.validation.validate_dict(json.loads((root / link["href"]).read_text()), validator=v)
            n += 1
    return n
