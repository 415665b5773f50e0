"""index.parquet (GeoParquet 1.1, one typed schema for every recipe) and index.gpkg, on two real
datasets: the demo (real Landsat 8 sample, one source, no masks) and the HLS crop recipe (pgstac
STAC API on 127.0.0.1, real HLS over Exeter, Fmask filter, plan-time drops, an unknown label code).

The checks are independent of eochips: the GeoParquet 1.1 rules are checked by hand against the
spec's text (https://geoparquet.org/releases/v1.1.0/), bounds with shapely, files with hashlib,
datetimes against the STAC items, label histograms with numpy, and the files are read back by
DuckDB, geopandas and Debian's ``ogrinfo`` / ``ogr2ogr`` (GDAL 3.6, not the GDAL eochips bundles).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely

from conftest import REPO, UNKNOWN_CODE, crop_recipe, run_cli, write_recipe

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
needs_sample = pytest.mark.skipif(not (SAMPLE / "catalog.json").is_file(), reason=f"no sample at {SAMPLE}; run `make demo`")
needs_ogr = pytest.mark.skipif(shutil.which("ogrinfo") is None or shutil.which("ogr2ogr") is None,
                               reason="Debian gdal-bin (ogrinfo, ogr2ogr) not installed")
UTC = dt.timezone.utc
ROLES = {"image", "labels", "labels-aux", "qa", "mask", "index", "overview"}  # the file roles (labels-aux: a mask's .aux.xml)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}")
    out = tmp_path_factory.mktemp("index-demo") / "demo"
    proc = run_cli("run", "demo", "--output", str(out), "--no-progress", "--workers", "1", env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def crop(stac_api, cdl_raster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index-crop")
    out = tmp / "out"
    proc = run_cli("run", str(write_recipe(tmp / "crop.yaml", crop_recipe(stac_api, cdl_raster))), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(params=["demo", "crop"])
def dataset(request) -> Path:
    if request.param == "demo" and not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}")
    return request.getfixturevalue(request.param)


def _table(out: Path) -> pa.Table:
    return pq.read_table(out / "index.parquet")


def _geo(out: Path) -> dict:
    return json.loads(pq.read_schema(out / "index.parquet").metadata[b"geo"])


# -- one schema -------------------------------------------------------------------------

@needs_sample
def test_demo_and_crop_write_the_same_schema(demo, crop):
    a, b = pq.read_schema(demo / "index.parquet"), pq.read_schema(crop / "index.parquet")
    assert a.remove_metadata() == b.remove_metadata()  # names, order, types and nullability
    assert [f.name for f in a] == [f.name for f in b] and not any(f.name.startswith(("ids_", "dt_hours_")) for f in a)
    # a column a recipe never fills is still typed: the demo has no masks, the crop recipe no multi-label table
    da, cr = _table(demo), _table(crop)
    assert da.column("mask_fractions").null_count == da.num_rows
    assert da.schema.field("mask_fractions").type == pa.list_(pa.struct([
        ("source", pa.string()), ("step", pa.int32()), ("cloud", pa.float64()), ("shadow", pa.float64()),
        ("snow", pa.float64()), ("nodata", pa.float64())]))
    assert cr.column("label_names").null_count == cr.num_rows and cr.schema.field("label_names").type == pa.list_(pa.string())
    assert da.column("nan_pixels").null_count == da.num_rows and da.schema.field("nan_pixels").type == pa.int64()
    # ... and the crop recipe fills what the demo does not
    assert cr.column("bad_qa_pct").null_count < cr.num_rows and da.column("bad_qa_pct").null_count == da.num_rows
    # no JSON text: every nested column is a typed list / struct / map
    types = {f.name: f.type for f in a}
    assert types["label_hist"] == pa.map_(pa.int32(), pa.int64()) and types["unknown_codes"] == pa.map_(pa.int32(), pa.int64())
    assert types["files"] == pa.list_(pa.struct([("path", pa.string()), ("role", pa.string()), ("sha256", pa.string())]))
    assert types["scenes"].value_type.field("datetime").type == pa.timestamp("us", tz="UTC")
    assert types["bad_qa_pct"] == pa.list_(pa.float64()) and types["transform"] == pa.list_(pa.float64())


# -- GeoParquet 1.1 -----------------------------------------------------------------------

def test_geoparquet_1_1_metadata_by_hand(dataset):
    """The spec's rules, one by one."""
    from pyproj import CRS

    geo = _geo(dataset)
    t = _table(dataset)
    # file metadata: version, primary_column (a key of columns), columns
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry" and set(geo["columns"]) == {"geometry"}
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB"
    # the geometry column: at the root, BYTE_ARRAY (binary) WKB that parses
    assert t.schema.field("geometry").type == pa.binary()
    pf = pq.ParquetFile(dataset / "index.parquet")
    assert pf.schema.column(pf.schema.names.index("geometry")).physical_type == "BYTE_ARRAY"
    geoms = shapely.from_wkb(t.column("geometry").to_pylist())
    assert all(shapely.is_valid(geoms))
    # geometry_types: the types present (from the spec's list of names)
    assert col["geometry_types"] == sorted({g.geom_type for g in geoms}) == ["Polygon"]
    # crs: PROJJSON of EPSG:4326 (coordinates stay x = longitude, y = latitude)
    assert CRS.from_json_dict(col["crs"]).to_epsg() == 4326
    lon, lat = shapely.get_coordinates(geoms).T
    assert (-180 <= lon).all() and (lon <= 180).all() and (-90 <= lat).all() and (lat <= 90).all()
    # bbox: [xmin, ymin, xmax, ymax] of all geometries
    assert col["bbox"] == list(shapely.total_bounds(geoms))
    # covering: the bbox struct column at the root, float64 fields named as the covering says
    assert col["covering"] == {"bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"],
                                        "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}}
    bt = t.schema.field("bbox").type
    assert pa.types.is_struct(bt) and [bt.field(i).name for i in range(bt.num_fields)] == ["xmin", "ymin", "xmax", "ymax"]
    assert all(bt.field(i).type == pa.float64() for i in range(4))
    # each row's bbox is its geometry's bounds, exactly
    got = np.array([[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in t.column("bbox").to_pylist()])
    np.testing.assert_array_equal(got, shapely.bounds(geoms))
    # row-group statistics on the covering (what lets a reader skip row groups by bbox)
    rg = pf.metadata.row_group(0)
    st = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema == "bbox.xmin").statistics
    assert st is not None and st.has_min_max and st.min == got[: rg.num_rows, 0].min() and st.max == got[: rg.num_rows, 0].max()


def test_duckdb_and_geopandas_read_it(dataset):
    import duckdb
    import geopandas as gpd

    t = _table(dataset)
    geoms = shapely.from_wkb(t.column("geometry").to_pylist())
    con = duckdb.connect()
    path = str(dataset / "index.parquet")
    kinds = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{path}'))").fetchall())
    assert kinds["start_datetime"] == "TIMESTAMP WITH TIME ZONE" and kinds["label_hist"] == "MAP(INTEGER, BIGINT)"
    assert kinds["bbox"].startswith("STRUCT(xmin DOUBLE") and kinds["files"].startswith("STRUCT(path VARCHAR")
    # a bbox query on the covering columns (no spatial extension) finds the units shapely finds
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    qx, qy = (x0 + x1) / 2, (y0 + y1) / 2
    n = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE bbox.xmin <= {qx} AND bbox.xmax >= {qx} "
                    f"AND bbox.ymin <= {qy} AND bbox.ymax >= {qy}").fetchone()[0]
    assert n == sum(shapely.intersects(shapely.box(*g.bounds), shapely.Point(qx, qy)) for g in geoms) > 0
    kept = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE status = 'kept' AND len(files) > 0").fetchone()[0]
    assert kept == t.column("status").to_pylist().count("kept")
    # geopandas: the CRS and geometries from the geo metadata
    gdf = gpd.read_parquet(dataset / "index.parquet")
    assert gdf.crs.to_epsg() == 4326 and len(gdf) == t.num_rows
    assert all(a.equals_exact(b, 0) for a, b in zip(gdf.geometry, geoms))


# -- files and timestamps -----------------------------------------------------------------

def test_files_have_roles_and_their_sha256(dataset):
    t = _table(dataset)
    manifest = dict(reversed(line.split("  ", 1)) for line in (dataset / "checksums.sha256").read_text().splitlines())
    seen = set()
    for row in t.select(["unit_id", "status", "files"]).to_pylist():
        if row["status"] != "kept":
            assert row["files"] == []
            continue
        assert row["files"], row["unit_id"]
        for f in row["files"]:
            assert f["role"] in ROLES, f
            digest = hashlib.sha256((dataset / f["path"]).read_bytes()).hexdigest()
            assert f["sha256"] == digest == manifest[f["path"]]
            seen.add(f["role"])
        images = [f["path"] for f in row["files"] if f["role"] == "image"]
        assert images and all(p.endswith(".tif") for p in images)
        with rasterio.open(dataset / images[0]) as ds:  # an image file holds the recipe's bands with dates
            assert all("@" in d for d in ds.descriptions)
    assert {"image", "labels"} <= seen


def _items(dataset: Path, hls_dir) -> dict[str, dict]:
    if dataset.name == "demo":
        return {it["id"]: it for it in json.loads((SAMPLE / "catalog.json").read_text())["features"]}
    return {it["id"]: it for it in hls_dir[1]}


def test_timestamps_are_typed_and_those_of_the_items(dataset, hls_dir):
    t = _table(dataset)
    assert t.schema.field("start_datetime").type == pa.timestamp("us", tz="UTC") == t.schema.field("end_datetime").type
    items = _items(dataset, hls_dir)
    n = 0
    for row in t.select(["status", "scenes", "start_datetime", "end_datetime"]).to_pylist():
        if row["status"] != "kept":
            continue
        want = [dt.datetime.fromisoformat(items[s["id"]]["properties"]["datetime"].replace("Z", "+00:00")) for s in row["scenes"]]
        assert [s["datetime"] for s in row["scenes"]] == want and all(s["datetime"].utcoffset() == dt.timedelta(0) for s in row["scenes"])
        assert (row["start_datetime"], row["end_datetime"]) == (min(want), max(want))
        assert all(s["dt_hours"] is None and s["role"] for s in row["scenes"])  # no source is matched in time
        n += 1
    assert n > 0


# -- values against independent references ------------------------------------------------

def test_label_hist_and_unknown_codes(crop):
    t = _table(crop)
    rows = t.select(["unit_id", "status", "files", "label_hist", "unknown_codes"]).to_pylist()
    kept = [r for r in rows if r["status"] == "kept"]
    for r in kept[:6]:
        lab = next(f["path"] for f in r["files"] if f["role"] == "labels")
        with rasterio.open(crop / lab) as ds:
            counts = np.bincount(ds.read(1).ravel())
        assert dict(r["label_hist"]) == {c: int(n) for c, n in enumerate(counts) if n}
    unknown = {}
    for r in rows:
        for code, n in r["unknown_codes"]:
            unknown[code] = unknown.get(code, 0) + n
    assert unknown == {UNKNOWN_CODE: 9}  # conftest's chip holding CDL code 99 (not in the table)
    assert json.loads((crop / "summary.json").read_text())["unknown_label_codes"] == {str(UNKNOWN_CODE): 9}


def test_crop_measures_and_splits(crop):
    t = _table(crop)
    rows = t.to_pylist()
    train = {line.strip() for line in (crop / "train_ids.csv").read_text().splitlines()[1:]}
    val = {line.strip() for line in (crop / "val_ids.csv").read_text().splitlines()[1:]}
    for r in rows:
        assert r["split"] == ("train" if r["unit_id"] in train else "validation" if r["unit_id"] in val else None)
        if r["status"] == "kept":
            assert len(r["bad_qa_pct"]) == len({s["step"] for s in r["scenes"]}) == 3 and r["reason_code"] == ""
            assert max(r["bad_qa_pct"]) < 5 and r["nodata_pixels"] == 0  # the recipe's Fmask rule, no fill
            assert r["mask_fractions"] is None and r["cloud_fraction"] is None  # no mask in this recipe
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert dropped and all(r["reason_code"] for r in dropped)
    for r in dropped:
        if r["reason_code"] == "fmask-bad-pct":
            assert max(r["bad_qa_pct"]) >= 5


# -- index.gpkg ---------------------------------------------------------------------------

@needs_ogr
def test_gpkg_opens_with_debian_ogrinfo(dataset):
    t = _table(dataset)
    proc = subprocess.run(["ogrinfo", "-so", str(dataset / "index.gpkg"), "units"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "partially supported" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert f"Feature Count: {t.num_rows}\n" in proc.stdout and "Geometry: Polygon" in proc.stdout
    assert 'ID["EPSG",4326]' in proc.stdout
    for field in ("unit_id: String", "start_datetime: DateTime", "nodata_pixels: Integer64", "scenes: String", "files: String"):
        assert field in proc.stdout, field
    # the features: ogr2ogr to CSV with WKT, compared with the GeoParquet rows
    csv_text = subprocess.run(["ogr2ogr", "-f", "CSV", "/vsistdout/", str(dataset / "index.gpkg"), "units", "-lco", "GEOMETRY=AS_WKT"],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    feats = {r["unit_id"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    rows = {r["unit_id"]: r for r in t.to_pylist()}
    assert set(feats) == set(rows)
    for uid, r in rows.items():
        f = feats[uid]
        assert shapely.from_wkt(f["WKT"]).equals_exact(shapely.from_wkb(r["geometry"]), 1e-9)
        assert f["status"] == r["status"] and (f["split"] or None) == r["split"]
        assert [s["id"] for s in json.loads(f["scenes"])] == [s["id"] for s in r["scenes"]]
        assert [(x["path"], x["role"], x["sha256"]) for x in json.loads(f["files"])] == \
            [(x["path"], x["role"], x["sha256"]) for x in r["files"]]
        if r["label_hist"] is not None:
            assert {int(k): v for k, v in json.loads(f["label_hist"]).items()} == dict(r["label_hist"])


def test_finalize_twice_writes_the_same_bytes(dataset):
    before = {n: (dataset / n).read_bytes() for n in ("index.parquet", "index.gpkg")}
    proc = run_cli("finalize", str(dataset))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {n: (dataset / n).read_bytes() for n in before} == before
    assert "index.gpkg" in (dataset / "checksums.sha256").read_text()
