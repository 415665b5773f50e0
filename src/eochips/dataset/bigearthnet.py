"""BigEarthNet v2 metadata: the ``bigearthnet`` finalizer (settings: ``dataset.metadata``).

It writes, like the pipeline's ``nu-scripts/ben-metadata-finalizer.sql`` (kai-tub/bigearthnet-pipeline),
two Parquet files at the dataset root, one row per kept unit (patch):

=======================================================  =========================================
file                                                     rows
=======================================================  =========================================
``metadata.parquet``                                     patches with neither flag
``metadata_for_patches_with_snow_cloud_or_shadow.parquet``  patches with either flag
=======================================================  =========================================

Columns, in this order (:data:`SCHEMA`):

- ``patch_id`` (string): the unit id.
- ``labels`` (list<string>, sorted): the unit's ``metrics["label_names"]`` (the class names present,
  written by the build with ``labels.table``); for a build that did not record them, the names
  (:func:`eochips.plan.class_names`) of the classes of ``metrics["label_hist"]`` other than
  ``labels.nodata_class``.
- ``split`` (string): ``train`` / ``validation`` / ``test`` (:mod:`eochips.dataset.splits`).
- ``country`` (string): the nearest country polygon of ``countries`` (:func:`nearest_countries`).
- ``s1_name`` (string, null): with ``s1_source``, the first scene id of that source for the unit
  (the index's ``scenes`` of that source); null without it or when the unit has no such scene.
- ``s2v1_name`` (string, null): from the ``s2v1`` CSV (``patch_id,s2v1_name``); null otherwise.
- ``contains_seasonal_snow`` (bool): the scl mask's ``snow`` fraction of the unit (worst time step of
  ``metrics["mask_fractions"]`` of the scl mask's source, 0..1, rounded to 6 decimals by the build)
  is > ``snow_min_fraction`` (default 0: any snow pixel; SCL class 11 with the default scl mask).
- ``contains_cloud_or_shadow`` (bool): its ``cloud + shadow`` fraction (the SCL classes are disjoint:
  the share of cloud-or-shadow pixels) is > ``cloud_min_fraction`` (default 0: any pixel; classes 8,
  9, 10 and 3 with BigEarthNet's scl mask).

Rows are sorted by ``patch_id``; zstd, row groups of :data:`ROW_GROUP_SIZE` rows (the pipeline's,
fixed so the file does not depend on the writer's defaults), no pandas metadata: the bytes depend
only on the rows and the pyarrow version, so a second finalize writes identical files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from . import Context, register

ROW_GROUP_SIZE = 122_880
"""Rows per Parquet row group (BigEarthNet v2's ``row_group_size 122_880``)."""
CLEAR_FILE = "metadata.parquet"
FLAGGED_FILE = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
MARGINS_DEG = (10.0, 20.0, 40.0)
"""Countries are looked for within these margins (degrees) around a tile's lon/lat box, the next
only when no country lies in the previous one."""


def schema():
    """The pyarrow schema of both files (module docstring)."""
    import pyarrow as pa

    return pa.schema([("patch_id", pa.string()), ("labels", pa.list_(pa.string())), ("split", pa.string()),
                      ("country", pa.string()), ("s1_name", pa.string()), ("s2v1_name", pa.string()),
                      ("contains_seasonal_snow", pa.bool_()), ("contains_cloud_or_shadow", pa.bool_())])


# --------------------------------------------------------------------------------------
# countries

def load_countries(path: str, field: str = "name", names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Country polygons and names of an admin-0 file, in EPSG:4326.

    Parameters
    ----------
    path : str
        Any vector file OGR reads (Natural Earth admin-0 shapefile or GeoPackage).
    field : str
        Attribute holding the country name (``dataset.metadata.country_field``).
    names : list of str, optional
        Keep only these countries (``dataset.metadata.country_names``).

    Returns
    -------
    (geometries, names)
        A ``(n,)`` object array of shapely (multi)polygons (lon/lat) and their ``n`` names.

    Raises
    ------
    OutputError
        The file does not open, has no ``field`` (the message lists its fields), or none of ``names``.
    """
    import pyogrio
    import shapely

    try:
        info = pyogrio.read_info(path)
    except Exception as exc:  # noqa: BLE001 - any OGR failure: named below
        raise OutputError(f"dataset.metadata.countries: {path!r} does not open as a vector file ({exc}); give a Natural "
                          f"Earth admin-0 file (shapefile or GeoPackage)") from None
    fields = list(info["fields"])
    if field not in fields:
        raise OutputError(f"dataset.metadata.country_field: {path!r} has no field {field!r}; its fields: {', '.join(fields)}")
    df = pyogrio.read_dataframe(path, columns=[field])
    if df.crs is not None and not df.crs.equals("EPSG:4326"):
        df = df.to_crs("EPSG:4326")
    df = df[df.geometry.notna() & ~df.geometry.is_empty]
    if names is not None:
        missing = sorted(set(names) - set(df[field]))
        if missing:
            raise OutputError(f"dataset.metadata.country_names: {missing} not in field {field!r} of {path!r}")
        df = df[df[field].isin(names)]
    geoms = shapely.make_valid(np.asarray(df.geometry.values, dtype=object))
    return geoms, [str(v) for v in df[field]]


def nearest_countries(patches: np.ndarray, crs: str, countries: tuple[np.ndarray, list[str]]) -> list[str]:
    """The nearest country of each patch polygon, measured in the patches' metric CRS.

    The countries within :data:`MARGINS_DEG` degrees of the patches' lon/lat bounding box are
    clipped to that window, reprojected to ``crs`` (a tile's UTM zone) and indexed in a
    ``shapely.STRtree``; each patch takes the country at the least planar distance
    (``query_nearest``, as the pipeline's ``p.geom <-> country.geom`` between the patch polygon and
    the country, both in the tile's CRS). A patch inside a country is at distance 0 from it; a patch
    at distance 0 from several (on a border) takes the one it overlaps most, then the first name.

    Parameters
    ----------
    patches : numpy.ndarray
        ``(n,)`` shapely polygons in ``crs`` (metres).
    crs : str
        Their CRS (WKT or ``EPSG:...``).
    countries : (geometries, names)
        :func:`load_countries`.

    Returns
    -------
    list of str
        ``n`` country names.

    Raises
    ------
    OutputError
        No country lies within the largest margin of the patches.
    """
    import shapely

    from ..geo import reproject_geometry

    geoms, names = countries
    if len(patches) == 0:
        return []
    ll = shapely.bounds(reproject_geometry(shapely.box(*shapely.total_bounds(patches)), crs, "EPSG:4326"))
    for m in MARGINS_DEG:
        window = (max(ll[0] - m, -180.0), max(ll[1] - m, -90.0), min(ll[2] + m, 180.0), min(ll[3] + m, 90.0))
        near = np.flatnonzero(shapely.intersects(geoms, shapely.box(*window)))
        if near.size:
            break
    else:
        raise OutputError(f"dataset.metadata.countries: no country within {MARGINS_DEG[-1]:g} degrees of the patches "
                          f"(lon/lat {', '.join(f'{v:.3f}' for v in ll)}); give a file that covers them")
    clipped = shapely.make_valid(reproject_geometry(shapely.clip_by_rect(geoms[near], *window), "EPSG:4326", crs))
    tree = shapely.STRtree(clipped)
    (pi, ci), dist = tree.query_nearest(patches, all_matches=True, return_distance=True)
    best: dict[int, list[tuple[float, int]]] = {}
    for p, c, d in zip(pi.tolist(), ci.tolist(), dist.tolist()):
        best.setdefault(p, []).append((d, c))
    out = []
    for p in range(len(patches)):
        cands = best[p]
        dmin = min(d for d, _ in cands)
        ties = sorted({c for d, c in cands if d == dmin}, key=lambda c: names[near[c]])
        if len(ties) > 1:
            areas = [float(shapely.area(shapely.intersection(patches[p], clipped[c]))) for c in ties]
            ties = [ties[int(np.argmax(areas))]]
        out.append(names[near[ties[0]]])
    return out


# --------------------------------------------------------------------------------------
# columns

def read_s2v1(path: str) -> dict[str, str]:
    """``{patch_id: s2v1_name}`` of a CSV with the header ``patch_id,s2v1_name``.

    Raises
    ------
    OutputError
        The file does not read, lacks either column, or names a patch twice.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"dataset.metadata.s2v1: cannot read {path!r} ({exc.strerror or exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"patch_id", "s2v1_name"} <= set(reader.fieldnames):
        raise OutputError(f"dataset.metadata.s2v1: {path!r} needs the columns patch_id,s2v1_name; "
                          f"its header: {','.join(reader.fieldnames or [])}")
    out: dict[str, str] = {}
    for row in reader:
        pid = row["patch_id"]
        if pid in out:
            raise OutputError(f"dataset.metadata.s2v1: patch {pid!r} is named twice in {path!r}")
        out[pid] = row["s2v1_name"]
    return out


def scl_source(recipe) -> str:
    """The source of the recipe's scl mask (checked at recipe load: there is one)."""
    m = next(m for m in recipe.masks.sources if m.kind == "scl")
    return recipe.source_of(m.source)


def flags(metrics: dict[str, Any], source: str, cfg, unit: str) -> tuple[bool, bool]:
    """``(contains_seasonal_snow, contains_cloud_or_shadow)`` of a unit (module docstring).

    Raises
    ------
    OutputError
        The unit's metrics hold no mask fractions of ``source`` (a build without the scl mask).
    """
    fr = [f for f in metrics.get("mask_fractions") or [] if f.get("source") == source]
    if not fr:
        raise OutputError(f"unit {unit!r} has no mask fractions of source {source!r}: it was built without the scl mask; "
                          f"run 'eochips build' again with the recipe's masks")
    snow = max(f["snow"] for f in fr)
    cloud = max(f["cloud"] + f["shadow"] for f in fr)
    return snow > cfg.snow_min_fraction, cloud > cfg.cloud_min_fraction


def label_list(metrics: dict[str, Any], names: dict[int, str], nodata_class: int) -> list[str]:
    """The sorted class names of a unit (module docstring: ``label_names``, else from ``label_hist``)."""
    if metrics.get("label_names") is not None:
        return sorted(str(n) for n in metrics["label_names"])
    hist = metrics.get("label_hist") or {}
    return sorted({names[int(c)] for c, n in hist.items() if int(n) > 0 and int(c) != nodata_class and int(c) in names})


def check_inputs(cfg) -> None:
    """Open the finalizer's input files before the dataset's finalizers write anything.

    Raises
    ------
    OutputError
        As :func:`load_countries` and :func:`read_s2v1`.
    """
    load_countries(cfg.countries, cfg.country_field, cfg.country_names)
    if cfg.s2v1 is not None:
        read_s2v1(cfg.s2v1)


def metadata_rows(ctx: Context) -> list[dict[str, Any]]:
    """One row per kept unit, sorted by ``patch_id`` (module docstring)."""
    import shapely

    from ..plan import class_names
    from .index import source_scene_ids

    r = ctx.plan.recipe
    cfg = r.dataset.metadata
    countries = load_countries(cfg.countries, cfg.country_field, cfg.country_names)
    s2v1 = read_s2v1(cfg.s2v1) if cfg.s2v1 is not None else {}
    scl = scl_source(r)
    names = class_names(r)
    nodata_class = r.labels.nodata_class if r.labels is not None else 0
    split_of = ctx.split_of
    by_id = {up.id: up for up in ctx.plan.units}
    index = {row["unit_id"]: row for row in ctx.rows}
    kept = sorted(ctx.kept)
    country: dict[str, str] = {}
    for gi in sorted({by_id[u].unit.grid for u in kept}):
        ids = [u for u in kept if by_id[u].unit.grid == gi]
        polys = np.array([shapely.box(*by_id[u].unit.gbox.boundingbox[:4]) for u in ids], dtype=object)
        country.update(zip(ids, nearest_countries(polys, ctx.plan.grids[gi].gbox.crs.to_wkt(), countries)))
    rows = []
    for uid in kept:
        m = ctx.records[uid]["metrics"]
        snow, cloud = flags(m, scl, cfg, uid)
        s1 = source_scene_ids(index[uid], cfg.s1_source) if cfg.s1_source and uid in index else None
        rows.append({"patch_id": uid, "labels": label_list(m, names, nodata_class), "split": split_of.get(uid),
                     "country": country[uid], "s1_name": s1[0] if s1 else None, "s2v1_name": s2v1.get(uid),
                     "contains_seasonal_snow": snow, "contains_cloud_or_shadow": cloud})
    return rows


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The Parquet file of ``rows`` (:func:`schema`; zstd, :data:`ROW_GROUP_SIZE`; deterministic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sch = schema()
    table = pa.Table.from_pylist(rows, schema=sch)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_SIZE, write_statistics=True)
    return buf.getvalue()


@register("bigearthnet")
def _bigearthnet(ctx: Context) -> None:
    rows = metadata_rows(ctx)
    flagged = [r for r in rows if r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"]]
    clear = [r for r in rows if not (r["contains_seasonal_snow"] or r["contains_cloud_or_shadow"])]
    ctx.store.write_bytes(CLEAR_FILE, parquet_bytes(clear))
    ctx.store.write_bytes(FLAGGED_FILE, parquet_bytes(flagged))
