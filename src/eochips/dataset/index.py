"""The ``index`` finalizer: ``index.parquet`` (GeoParquet 1.1) and ``index.gpkg``, one row per unit of the plan.

``index.parquet`` has one fixed Arrow schema, :data:`INDEX_SCHEMA`, for every recipe: the same
columns in the same order with the same types, whatever the sources are called, whether the
recipe has labels, masks or filters (a measure a recipe does not take is a typed null). Things
that vary per source are rows of a list, keyed by the source's name (``scenes``,
``mask_fractions``), never columns named after a source.

=====================  ========================================================  ====================================
column                 type                                                      meaning (unit)
=====================  ========================================================  ====================================
``unit_id``            ``string``                                                the unit's id (plan/units.parquet)
``grid``               ``int32``                                                 the unit's grid (index into the plan's grids)
``row``, ``col``       ``int32``                                                 the unit's position on its grid (units)
``tile``               ``string``                                                its MGRS tile, null when none is known
``crs``                ``string``                                                the unit's CRS: ``EPSG:{code}``, else WKT
``transform``          ``list<float64>``                                         the unit's affine ``a, b, c, d, e, f``
                                                                                 (rasterio order; CRS units per pixel)
``status``             ``string``                                                ``kept``, ``dropped``, ``failed``, ``pending``
``reason_code``        ``string``                                                typed reason of a drop or failure, ``""`` when kept
``reason``             ``string``                                                its message (credentials redacted)
``split``              ``string``                                                ``train``, ``validation``, ``test``; null when
                                                                                 not kept or left out by a split's buffer
``start_datetime``     ``timestamp[us, UTC]``                                    earliest scene datetime of the unit
``end_datetime``       ``timestamp[us, UTC]``                                    latest scene datetime of the unit
``scenes``             ``list<struct<source: string, step: int32, id: string,    every scene the unit reads, per source
                       datetime: timestamp[us, UTC], role: string,               in recipe order, per time step, per
                       dt_hours: float64>>``                                     group: ``role`` the selection's
                                                                                 (``primary``, ``backstop``, ...);
                                                                                 ``dt_hours`` for a source matched in time
                                                                                 (``nearest-in-time``): datetime minus its
                                                                                 reference scene's, hours (Clay: S1 - S2),
                                                                                 else null
``bad_qa_pct``         ``list<float64>``                                         Fmask bad % per time step (0..100,
                                                                                 ``fmask-bad-pct`` filter), else null
``nodata_pixels``      ``int64``                                                 fill pixels (``nodata`` filter), else null
``nan_pixels``         ``int64``                                                 NaN pixels, worst band (``nan`` filter)
``value_pixels``       ``int64``                                                 pixels equal to a value (``value`` filter)
``label_class_pixels`` ``int64``                                                 pixels of the ``label-fraction`` classes
``cloud_fraction``     ``float64``                                               worst step's cloud + shadow share (0..1)
``nodata_fraction``    ``float64``                                               worst step's nodata mask share (0..1)
``mask_fractions``     ``list<struct<source: string, step: int32, cloud:         each mask step's shares of the unit's
                       float64, shadow: float64, snow: float64, nodata:          pixels (0..1), null without masks
                       float64>>``
``label_hist``         ``map<int32, int64>``                                     pixels per label class id (or code of a
                                                                                 ``labels.table``); null without labels
``label_names``        ``list<string>``                                          the unit's multi-labels (``labels.table``)
``unknown_codes``      ``map<int32, int64>``                                     label codes outside the reclass table and
                                                                                 their pixels (empty when none)
``files``              ``list<struct<path: string, role: string, sha256:         the unit's files in the order the layouts
                       string>>``                                                wrote them (chip channel order), ``role``
                                                                                 of :data:`FILE_ROLES`; empty unless kept
``bbox``               ``struct<xmin, ymin, xmax, ymax: float64>``               bounds of ``geometry`` (degrees), the
                                                                                 GeoParquet 1.1 covering column
``geometry``           ``binary`` (WKB)                                          the unit's footprint, a polygon in
                                                                                 EPSG:4326, x = longitude, y = latitude
=====================  ========================================================  ====================================

The ``geo`` metadata follows GeoParquet 1.1.0 (https://geoparquet.org/releases/v1.1.0/):
``primary_column`` ``geometry``, ``encoding`` ``WKB``, ``geometry_types`` of the rows, ``crs`` the
PROJJSON of EPSG:4326 (as ``plan/units.parquet``; the spec fixes the WKB axis order to x, y =
longitude, latitude whatever the CRS says), ``bbox`` of all rows and ``covering`` naming the
``bbox`` column's fields. Rows are in the plan's unit order (grid, row, col: row-major, so a row
group holds neighbouring units).

``index.gpkg`` holds the same rows for GIS without GeoParquet support (Debian's GDAL 3.6, distro
QGIS): layer ``units``, EPSG:4326, GeoPackage version 1.2 (:data:`GPKG_VERSION`). GeoPackage has
no list, struct or map type: the nested columns are JSON text of the same values (``scenes``,
``files``, ``mask_fractions``, ``transform``, ``bad_qa_pct``, ``label_names``; the maps
``label_hist`` / ``unknown_codes`` as objects keyed by the id as text; datetimes ISO 8601 with
``Z``); ``bbox`` is dropped (the GeoPackage's R-tree holds each feature's envelope);
``start_datetime`` / ``end_datetime`` are DateTime fields (UTC, millisecond precision: GeoPackage's).
Its ``last_change`` dates (``gpkg_contents``, normally the write time) are the newest scene
datetime of the index, so a second ``eochips finalize`` writes the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from typing import Any

import pyarrow as pa

from .. import failpoints
from ..plan import Plan
from ..search import redact
from . import Context, register

INDEX_FILE = "index.parquet"
GPKG_FILE = "index.gpkg"
GPKG_LAYER = "units"
GPKG_VERSION = "1.2"
"""GeoPackage version of ``index.gpkg``: 1.2, which GDAL 3.6 (Debian 12) and older QGIS read
without the "may only be partially supported" warning GDAL 3.6 gives for 1.4."""
FILE_ROLES = ("image", "labels", "labels-aux", "qa", "mask", "index", "overview")
"""File roles of ``files[].role`` (``metrics["file_roles"]`` of the layouts, :mod:`eochips.writers.layouts`; ``labels-aux``: a class map's GDAL ``.aux.xml`` with its category names)."""

_S = pa.string()
_F = pa.float64()
_TS = pa.timestamp("us", tz="UTC")
SCENE_TYPE = pa.struct([("source", _S), ("step", pa.int32()), ("id", _S), ("datetime", _TS), ("role", _S), ("dt_hours", _F)])
MASK_FRACTION_TYPE = pa.struct([("source", _S), ("step", pa.int32()), ("cloud", _F), ("shadow", _F), ("snow", _F), ("nodata", _F)])
FILE_TYPE = pa.struct([("path", _S), ("role", _S), ("sha256", _S)])
BBOX_TYPE = pa.struct([("xmin", _F), ("ymin", _F), ("xmax", _F), ("ymax", _F)])
INDEX_SCHEMA = pa.schema([
    ("unit_id", _S), ("grid", pa.int32()), ("row", pa.int32()), ("col", pa.int32()), ("tile", _S), ("crs", _S),
    ("transform", pa.list_(_F)), ("status", _S), ("reason_code", _S), ("reason", _S), ("split", _S),
    ("start_datetime", _TS), ("end_datetime", _TS), ("scenes", pa.list_(SCENE_TYPE)),
    ("bad_qa_pct", pa.list_(_F)), ("nodata_pixels", pa.int64()), ("nan_pixels", pa.int64()), ("value_pixels", pa.int64()),
    ("label_class_pixels", pa.int64()), ("cloud_fraction", _F), ("nodata_fraction", _F),
    ("mask_fractions", pa.list_(MASK_FRACTION_TYPE)), ("label_hist", pa.map_(pa.int32(), pa.int64())),
    ("label_names", pa.list_(_S)), ("unknown_codes", pa.map_(pa.int32(), pa.int64())), ("files", pa.list_(FILE_TYPE)),
    ("bbox", BBOX_TYPE), ("geometry", pa.binary()),
])
"""The Arrow schema of ``index.parquet`` (the module docstring describes each column)."""

_MEASURES = ("nodata_pixels", "nan_pixels", "value_pixels", "label_class_pixels")


def parse_datetime(value: str | dt.datetime) -> dt.datetime:
    """A scene datetime (ISO 8601 text, ``Z`` or an offset; or a datetime) as an aware UTC datetime
    (a naive one is taken as UTC, as STAC datetimes are)."""
    d = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return d.replace(tzinfo=dt.timezone.utc) if d.tzinfo is None else d.astimezone(dt.timezone.utc)


def index_rows(ctx: Context) -> list[dict[str, Any]]:
    """One dict per unit of the plan, in unit order, keyed and typed as :data:`INDEX_SCHEMA`
    (``geometry`` a shapely polygon in EPSG:4326; datetimes aware UTC ``datetime``; maps as
    ``{int: int}``; lists of structs as lists of dicts).

    A unit without a result (not built yet) is ``pending``; its scenes are the plan's picks.
    """
    import shapely

    from ..geo import reproject_geometry

    plan, records = ctx.plan, ctx.records
    split_of = ctx.split_of
    rows = []
    for up in sorted(plan.units, key=lambda u: u.key):
        rec = records.get(up.id) or {"status": "pending", "code": "", "reason": "not built", "files": {}, "metrics": {}}
        m = rec["metrics"]
        g = plan.grids[up.unit.grid].gbox
        scenes = _scenes(plan, up, m)
        times = [s["datetime"] for s in scenes]
        geom = reproject_geometry(up.unit.polygon, g.crs.to_wkt(), "EPSG:4326")
        xmin, ymin, xmax, ymax = (float(v) for v in shapely.bounds(geom))
        fr = [{k: f.get(k) for k in MASK_FRACTION_TYPE.names} for f in m.get("mask_fractions") or []]
        hist = m.get("label_hist")
        unknown = m.get("unknown_codes") or up.label_info.get("unknown_codes") or {}
        bad = m.get("bad_qa_pct")
        rows.append({
            "unit_id": up.id, "grid": int(up.unit.grid), "row": int(up.unit.row), "col": int(up.unit.col), "tile": _tile(up.tile),
            "crs": f"EPSG:{g.crs.epsg}" if g.crs.epsg else g.crs.to_wkt(),
            "transform": [float(v) for v in tuple(up.unit.gbox.affine)[:6]],
            "status": rec["status"], "reason_code": rec.get("code") or up.code or "", "reason": redact(rec["reason"] or ""),
            "split": split_of.get(up.id),
            "start_datetime": min(times, default=None), "end_datetime": max(times, default=None), "scenes": scenes,
            "bad_qa_pct": [float(v) for v in bad] if bad is not None else None,
            **{k: (int(m[k]) if m.get(k) is not None else None) for k in _MEASURES},
            "cloud_fraction": max((f["cloud"] + f["shadow"] for f in fr), default=None),
            "nodata_fraction": max((f["nodata"] for f in fr), default=None),
            "mask_fractions": fr or None,
            "label_hist": _int_map(hist) if hist is not None else None,
            "label_names": _label_names(plan, up, m),
            "unknown_codes": _int_map(unknown),
            "files": _files(rec),
            "bbox": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            "geometry": geom,
        })
    return rows


def _int_map(counts: dict) -> dict[int, int]:
    """``{id: count}`` with int keys in ascending order (JSON state gives the keys as text)."""
    return {int(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: int(kv[0]))}


def _tile(tile: Any) -> str | None:
    """A unit's tile, None when it has none (a plan read back from ``plan/units.parquet`` gives a
    missing tile as the text ``"<NA>"``: :func:`eochips.plan.load_plan` tests ``is np.nan`` only)."""
    return tile if isinstance(tile, str) and tile != "<NA>" else None


def _files(rec: dict[str, Any]) -> list[dict[str, str]]:
    """The ``files`` entries of a unit record: the layouts' order (``metrics["file_order"]``, then any
    file it does not name, sorted; sorted names for a unit built before eochips recorded it)."""
    names = rec["files"]
    roles = rec["metrics"].get("file_roles", {})
    order = [f for f in rec["metrics"].get("file_order") or [] if f in names]
    order += sorted(set(names) - set(order))
    return [{"path": f, "role": roles.get(f, ""), "sha256": names[f]} for f in order]


def _scenes(plan: Plan, up, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``scenes`` entries of a unit: the built unit's (``metrics["scene_ids"]`` and the lists
    beside it, in the task's order), else the plan's picks; ``dt_hours`` from the plan's groups
    (a ``nearest-in-time`` source's scene minus the first scene of its reference source's group
    at the same step, hours, rounded to 4 decimals)."""
    picks = [(s, t, p) for s, groups in up.groups.items() for t, grp in enumerate(groups) for p in grp]
    if metrics.get("scene_ids"):
        items = list(zip(metrics["scene_sources"], metrics["scene_steps"], metrics["scene_ids"], metrics["datetimes"],
                         metrics["scene_roles"]))
    else:
        items = [(s, t, p.scene.id, p.scene.datetime, p.role) for s, t, p in picks]
    dt_hours: dict[tuple[str, int, str], float] = {}
    for s, cfg in plan.recipe.sources.items():
        if cfg.selection.kind != "nearest-in-time":
            continue
        refs = up.groups.get(cfg.selection.relative_to, [])
        for t, grp in enumerate(up.groups.get(s, [])):
            if t < len(refs) and refs[t]:
                ref = parse_datetime(refs[t][0].scene.datetime)
                for p in grp:
                    dt_hours[(s, t, p.scene.id)] = round((parse_datetime(p.scene.datetime) - ref).total_seconds() / 3600.0, 4)
    return [{"source": s, "step": int(t), "id": sid, "datetime": parse_datetime(when), "role": role,
             "dt_hours": dt_hours.get((s, int(t), sid))} for s, t, sid, when, role in items]


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
    return label_names({int(k): v for k, v in pixels.items()}, table) if pixels else None


def source_scene_ids(row: dict[str, Any], source: str) -> list[str]:
    """The scene ids one source gave a unit (an index row's ``scenes`` of that source, in order)."""
    return [s["id"] for s in row["scenes"] or [] if s["source"] == source]


def index_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows of :func:`index_rows` as an Arrow table of :data:`INDEX_SCHEMA` with GeoParquet
    1.1 ``geo`` metadata (see the module docstring)."""
    import shapely

    geoms = [r["geometry"] for r in rows]
    table = pa.Table.from_pylist([{**r, "geometry": shapely.to_wkb(r["geometry"])} for r in rows], schema=INDEX_SCHEMA)
    return table.replace_schema_metadata({b"geo": json.dumps(geo_metadata(geoms)).encode()})


def geo_metadata(geoms: list) -> dict[str, Any]:
    """GeoParquet 1.1.0 ``geo`` metadata of WKB geometries in EPSG:4326 with the ``bbox`` covering column."""
    import shapely
    from pyproj import CRS

    col: dict[str, Any] = {"encoding": "WKB", "geometry_types": sorted({g.geom_type for g in geoms}),
                           "crs": CRS.from_epsg(4326).to_json_dict()}
    if geoms:
        b = shapely.bounds(geoms)
        col["bbox"] = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]
    col["covering"] = {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """``index.parquet``'s bytes (deterministic: the same rows give the same bytes)."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(index_table(rows), sink, compression="zstd", write_statistics=True)
    return sink.getvalue().to_pybytes()


_JSON_COLUMNS = ("transform", "scenes", "bad_qa_pct", "mask_fractions", "label_hist", "label_names", "unknown_codes", "files")


def _json_default(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def gpkg_frame(rows: list[dict[str, Any]]):
    """The rows as a GeoDataFrame of GeoPackage-able columns (module docstring: nested columns as
    JSON text, ``bbox`` dropped), EPSG:4326."""
    import geopandas as gpd
    import pandas as pd

    cols: dict[str, Any] = {}
    for name in INDEX_SCHEMA.names:
        if name in ("bbox", "geometry"):
            continue
        values = [r[name] for r in rows]
        if name in _JSON_COLUMNS:
            cols[name] = pd.array([None if v is None else json.dumps(v, default=_json_default, sort_keys=True) for v in values],
                                  dtype="string")
        elif name.endswith("_datetime"):
            cols[name] = pd.to_datetime(pd.Series(values, dtype="object"), utc=True).astype("datetime64[ms, UTC]")
        elif pa.types.is_integer(INDEX_SCHEMA.field(name).type):
            cols[name] = pd.array(values, dtype="Int64" if INDEX_SCHEMA.field(name).type == pa.int64() else "Int32")
        elif pa.types.is_floating(INDEX_SCHEMA.field(name).type):
            cols[name] = pd.array(values, dtype="Float64")
        else:
            cols[name] = pd.array(values, dtype="string")
    return gpd.GeoDataFrame(cols, geometry=[r["geometry"] for r in rows], crs="EPSG:4326")


def gpkg_bytes(rows: list[dict[str, Any]]) -> bytes:
    """``index.gpkg``'s bytes: layer :data:`GPKG_LAYER` written by pyogrio (GDAL) into a
    temporary file, its ``last_change`` the newest scene datetime (module docstring)."""
    import pyogrio

    newest = max((r["end_datetime"] for r in rows if r["end_datetime"] is not None),
                 default=dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc))
    stamp = newest.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    frame = gpkg_frame(rows)
    with tempfile.TemporaryDirectory(prefix="eochips-gpkg-") as tmp:
        path = os.path.join(tmp, GPKG_FILE)
        old = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": stamp})
        try:
            pyogrio.write_dataframe(frame, path, layer=GPKG_LAYER, driver="GPKG", promote_to_multi=False,
                                    dataset_options={"VERSION": GPKG_VERSION})
        finally:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": old})
        with open(path, "rb") as f:
            return f.read()


@register("index")
def _index(ctx: Context) -> None:
    """Write ``index.parquet`` and ``index.gpkg`` of ``ctx.rows`` through ``ctx.store`` (atomic)."""
    ctx.store.write_bytes(INDEX_FILE, parquet_bytes(ctx.rows))
    ctx.store.write_bytes(GPKG_FILE, gpkg_bytes(ctx.rows))
    failpoints.hit("finalize:after-index")
