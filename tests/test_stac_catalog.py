"""The dataset's STAC catalog (``stac`` finalizer, :mod:`eochips.dataset.stac`) on two real
datasets: the demo (real Landsat 8 sample, static catalog) and the crop recipe (real HLS over
Exeter from a pgstac STAC API on 127.0.0.1 whose URL carries a token, as a signed catalog URL
would). Both are built once per module through the CLI; every check reads the written files.

References are independent of the code under test: rasterio for the file headers, pyproj for
the footprints, the split CSVs, the index, the recipe's class names as literals, the STAC API
itself for the derived_from hrefs, and pystac / stac-geoparquet for reading the catalog.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import rasterio

from conftest import REPO, crop_recipe, run_cli, write_recipe

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
TOKEN = "s3cr3t-t0ken-4f9a"  # what a signed / token-bearing catalog URL carries: it must never reach a file
DEMO_CLASSES = ["unlabelled", "water", "crop", "tree", "developed"]  # demo.yaml labels.class_names, ids 0..4
CDL_13 = ["No Data", "Natural Vegetation", "Forest", "Corn", "Soybeans", "Wetlands", "Developed/Barren", "Open Water",
          "Winter Wheat", "Alfalfa", "Fallow/Idle Cropland", "Cotton", "Sorghum", "Other"]  # seed 001's 13 classes, ids 0..13
ML_AOI = {"train": "train", "validation": "validate", "test": "test"}


def _tree(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "stac").rglob("*")) if p.is_file()}


def _items(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "stac" / "items").glob("*.json"))}


def _ids(out: Path, name: str) -> list[str]:
    lines = (out / name).read_text().splitlines()
    assert lines[0] == "ids"
    return lines[1:]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}; run `make demo` (needs the package index)")
    out = tmp_path_factory.mktemp("stac") / "demo"
    proc = run_cli("run", "demo", "--output", str(out), "--no-progress", "--workers", "1", env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def crop(stac_api, cdl_raster, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("stac")
    signed = f"{stac_api}/?token={TOKEN}"
    recipe = write_recipe(tmp / "crop.yaml", crop_recipe(signed, cdl_raster, **{"engine.processes": False}))
    out = tmp / "crop"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def demo_per_band(tmp_path_factory) -> Path:
    """The demo with one file per band and band names that differ only in digits (b2, b3, b4):
    one file pattern ``chips/{unit}_b#.tif`` for three bands, told apart by their file position."""
    import yaml

    from eochips.config import recipe_text

    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}; run `make demo` (needs the package index)")
    data = yaml.safe_load(recipe_text("demo")[0])
    data["sources"]["landsat"]["profile"]["bands"] = {"b2": "B2", "b3": "B3", "b4": "B4"}
    data["sources"]["landsat"]["bands"] = ["b2", "b3", "b4"]
    data["output"]["layout"] = {"kind": "per-band", "name": "{unit}_{band}.tif", "labels": "{unit}_labels.tif"}
    data["filters"] = [{"kind": "nodata", "max_pixels": 0}]
    tmp = tmp_path_factory.mktemp("stac")
    out = tmp / "per-band"
    proc = run_cli("run", str(write_recipe(tmp / "per-band.yaml", data)), "--output", str(out), "--no-progress", "--workers", "1",
                   env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(params=["demo", "crop"])
def dataset(request) -> Path:
    return request.getfixturevalue(request.param)


def test_catalog_validates_offline_one_item_per_kept_unit(dataset):
    from eochips.dataset.stac import validate_catalog

    summary = json.loads((dataset / "summary.json").read_text())
    assert summary["kept"] > 0
    assert validate_catalog(dataset) == summary["kept"]  # every item the collection links, against every declared schema
    import geopandas as gpd

    idx = gpd.read_parquet(dataset / "index.parquet")
    kept = sorted(idx.unit_id[idx.status == "kept"])
    items = _items(dataset)
    assert sorted(items) == kept and len(items) == summary["kept"]
    coll = json.loads((dataset / "stac" / "collection.json").read_text())
    assert sorted(link["href"] for link in coll["links"] if link["rel"] == "item") == [f"./items/{k}.json" for k in kept]
    assert all(it["collection"] == coll["id"] for it in items.values())


def test_broken_objects_fail_validation(demo):
    """The offline validation really validates: a wrong value of each extension fails."""
    import pystac.validation
    from pystac.errors import STACValidationError
    from pystac.validation.stac_validator import GetSchemaError

    from eochips.dataset.stac import offline_validator, validate_catalog

    v = offline_validator()
    good = next(iter(_items(demo).values()))
    pystac.validation.validate_dict(good, validator=v)
    image = next(k for k, a in good["assets"].items() if "data" in a["roles"])
    breaks = {
        "raster data_type": lambda d: d["assets"][image]["raster:bands"][0].update(data_type="uint17"),
        "raster nodata": lambda d: d["assets"][image]["raster:bands"][0].update(nodata="none"),
        "eo common_name": lambda d: d["assets"][image]["eo:bands"][0].update(common_name="rededge1"),
        "ml-aoi split": lambda d: d["properties"].update({"ml-aoi:split": "validation"}),
        "label class name on a raster label": lambda d: d["properties"]["label:classes"][0].update(name="class"),
        "label type": lambda d: d["properties"].update({"label:type": "segmentation"}),
        "proj shape": lambda d: d["properties"].update({"proj:shape": [32]}),
        "proj code": lambda d: d["properties"].update({"proj:code": 32621}),
        "no datetime": lambda d: d["properties"].pop("datetime"),
    }
    for what, spoil in breaks.items():
        bad = copy.deepcopy(good)
        spoil(bad)
        with pytest.raises(STACValidationError):
            pystac.validation.validate_dict(bad, validator=v)
            pytest.fail(f"{what}: not caught")
    unknown = copy.deepcopy(good)
    unknown["stac_extensions"].append("https://stac-extensions.github.io/file/v2.1.0/schema.json")
    with pytest.raises(GetSchemaError):  # a schema eochips does not ship is an error, never a download
        pystac.validation.validate_dict(unknown, validator=v)
    # and a broken file in a copied catalog fails the catalog's validation
    copy_dir = demo.parent / "broken"
    shutil.copytree(demo / "stac", copy_dir / "stac")
    path = copy_dir / "stac" / "items" / f"{good['id']}.json"
    bad = copy.deepcopy(good)
    bad["assets"][image]["raster:bands"][0]["data_type"] = "uint17"
    path.write_text(json.dumps(bad))
    with pytest.raises(STACValidationError):
        validate_catalog(copy_dir)


def test_item_geometry_is_the_index_footprint_and_the_unit_grid(dataset):
    import geopandas as gpd
    from pyproj import Transformer

    idx = gpd.read_parquet(dataset / "index.parquet").set_index("unit_id")
    for uid, it in _items(dataset).items():
        bounds = idx.geometry[uid].bounds
        assert it["bbox"] == pytest.approx(list(bounds), abs=1e-12)
        from shapely.geometry import shape

        assert shape(it["geometry"]).hausdorff_distance(idx.geometry[uid]) <= 1e-7  # degrees: the footprint, simplified
        p = it["properties"]
        a, b, c, d, e, f = p["proj:transform"]
        rows, cols = p["proj:shape"]
        assert p["proj:code"] == idx["crs"][uid]
        assert [a, b, c, d, e, f] == pytest.approx(list(idx["transform"][uid])[:6])
        # the unit grid's corners in EPSG:4326 (pyproj) lie inside the item bbox, on its edges
        tr = Transformer.from_crs(p["proj:code"], "EPSG:4326", always_xy=True)
        xs = [c, c + a * cols, c, c + a * cols]
        ys = [f, f, f + e * rows, f + e * rows]
        lon, lat = tr.transform(xs, ys)
        assert min(lon) >= it["bbox"][0] - 1e-9 and max(lon) <= it["bbox"][2] + 1e-9
        assert min(lat) >= it["bbox"][1] - 1e-9 and max(lat) <= it["bbox"][3] + 1e-9
        assert min(lon) == pytest.approx(it["bbox"][0], abs=1e-4) and max(lat) == pytest.approx(it["bbox"][3], abs=1e-4)


def test_raster_bands_equal_every_file_header(dataset):
    """raster:bands are read from one file per pattern; every file of every item matches its own header."""
    checked = 0
    for it in _items(dataset).values():
        item_dir = dataset / "stac" / "items"
        for key, a in it["assets"].items():
            path = (item_dir / a["href"]).resolve()
            assert path.is_file(), a["href"]
            if path.name.endswith(".aux.xml"):  # the mask's GDAL sidecar (category names): metadata, no raster
                assert a["roles"] == ["metadata"] and a["type"] == "application/xml" and "raster:bands" not in a
                assert (path.parent / path.name[:-len(".aux.xml")]).is_file()
                continue
            with rasterio.open(path) as ds:
                bands = a["raster:bands"]
                assert len(bands) == ds.count
                for i, band in enumerate(bands):
                    assert band["data_type"] == ds.dtypes[i]
                    assert band["scale"] == ds.scales[i] and band["offset"] == ds.offsets[i]
                    nd = ds.nodatavals[i]
                    if nd is None:
                        assert "nodata" not in band
                    elif math.isnan(nd):
                        assert band["nodata"] == "nan"
                    else:
                        assert band["nodata"] == nd
                    assert band["spatial_resolution"] == abs(ds.res[0])
                if "eo:bands" in a:
                    assert [b["name"].split("@")[0] for b in a["eo:bands"]] == [d.split("@")[0] for d in ds.descriptions]
            checked += 1
    assert checked >= 2 * len(_items(dataset))


def test_demo_bands_roles_and_labels(demo):
    it = _items(demo)["chip_000_000"]
    assert it["assets"]["merged"]["roles"] == ["data"] and it["assets"]["mask"]["roles"] == ["labels"]
    assert it["assets"]["merged"]["href"] == "../../chips/chip_000_000_merged.tif"
    assert it["assets"]["merged"]["eo:bands"] == [{"name": "blue", "common_name": "blue"}, {"name": "green", "common_name": "green"},
                                                  {"name": "red", "common_name": "red"}]
    assert it["assets"]["merged"]["raster:bands"][0] == {"data_type": "uint16", "nodata": 0, "scale": 1.0, "offset": 0.0,
                                                         "spatial_resolution": 30.0}
    assert it["properties"]["datetime"] == "2020-05-18T00:00:00Z"
    for where in (it["properties"], it["assets"]["mask"]):
        assert where["label:type"] == "raster" and where["label:properties"] is None
        assert where["label:classes"] == [{"name": None, "classes": DEMO_CLASSES}]
    coll = json.loads((demo / "stac" / "collection.json").read_text())
    assert coll["summaries"]["label:classes"] == [{"name": None, "classes": DEMO_CLASSES}]
    assert coll["extent"]["temporal"]["interval"] == [["2020-05-18T00:00:00Z", "2020-05-18T00:00:00Z"]]


def test_crop_label_classes_and_scaled_bands(crop):
    items = _items(crop)
    it = next(iter(items.values()))
    assert it["properties"]["label:classes"] == [{"name": None, "classes": CDL_13}]
    image = next(a for a in it["assets"].values() if a["roles"] == ["data"])
    # HLS S30 v2.0 user guide: int16 reflectance, scale 0.0001, fill -9999
    # three time steps (first-middle-last): the chip channel names of issue 14, {band}@t{k}
    assert [b["name"] for b in image["eo:bands"]] == [f"{b}@t{k}" for k in range(3) for b in ("blue", "green", "red", "nir")]
    assert [b.get("common_name") for b in image["eo:bands"]][:4] == ["blue", "green", "red", "nir"]
    assert {(b["data_type"], b["nodata"], b["scale"]) for b in image["raster:bands"]} == {("int16", -9999, 0.0001)}
    assert sorted({a["roles"][0] for a in it["assets"].values()}) == ["data", "labels", "metadata"]  # + the Fmask qa file
    import geopandas as gpd
    import pandas as pd

    idx = gpd.read_parquet(crop / "index.parquet").set_index("unit_id")
    for uid, it in items.items():  # several scene dates: datetime null, start/end over the unit's scenes
        dts = sorted(pd.Timestamp(sc["datetime"]).strftime("%Y-%m-%dT%H:%M:%S") for sc in idx.scenes[uid])
        p = it["properties"]
        assert p["datetime"] is None and p["start_datetime"][:19] == dts[0] and p["end_datetime"][:19] == dts[-1]


def test_split_roles_equal_the_split_files(dataset):
    items = _items(dataset)
    want = {**{c: "train" for c in _ids(dataset, "train_ids.csv")}, **{c: "validate" for c in _ids(dataset, "val_ids.csv")}}
    if (dataset / "test_ids.csv").exists():
        want.update({c: "test" for c in _ids(dataset, "test_ids.csv")})
    got = {uid: it["properties"].get("ml-aoi:split") for uid, it in items.items()}
    assert {k: v for k, v in got.items() if v is not None} == want
    assert set(got.values()) >= {"train", "validate"}


def test_derived_from_links_reach_the_source_items_without_credentials(crop, stac_api):
    import geopandas as gpd
    import requests

    assert TOKEN in (crop.parent / "crop.yaml").read_text()  # the recipe's catalog URL carries the token
    idx = gpd.read_parquet(crop / "index.parquet").set_index("unit_id")
    fetched: dict[str, dict] = {}
    for uid, it in _items(crop).items():
        links = [link for link in it["links"] if link["rel"] == "derived_from"]
        assert [link["href"].rsplit("/", 1)[1] for link in links] == list(dict.fromkeys(sc["id"] for sc in idx.scenes[uid]))
        for link in links:
            href = link["href"]
            assert TOKEN not in href and "?" not in href and "@" not in href
            assert href.startswith(f"{stac_api}/collections/HLSS30_2.0/items/")
            if href not in fetched:
                r = requests.get(href, timeout=30)
                assert r.status_code == 200, href
                fetched[href] = r.json()
            assert fetched[href]["id"] == href.rsplit("/", 1)[1] and fetched[href]["type"] == "Feature"
    coll = json.loads((crop / "stac" / "collection.json").read_text())
    assert [link["href"] for link in coll["links"] if link["rel"] == "derived_from"] == [f"{stac_api}/collections/HLSS30_2.0"]
    for p in (crop / "stac").rglob("*.json"):
        assert TOKEN not in p.read_text(), p


def test_clean_href_removes_credentials():
    from eochips.dataset.stac import clean_href, source_item_href

    signed = "https://user:pa55@planetarycomputer.example/api/stac/v1?token=abc123&se=2026-01-01&sig=SIGNATURE%3D"
    assert clean_href(signed) == "https://planetarycomputer.example/api/stac/v1"
    assert source_item_href(signed, "sentinel-2-l2a", "S2A_MSIL2A_X", True) == \
        "https://planetarycomputer.example/api/stac/v1/collections/sentinel-2-l2a/items/S2A_MSIL2A_X"
    static = "https://bucket.example/catalog.json?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIAX"
    assert source_item_href(static, None, "x", False) == "https://bucket.example/catalog.json"


def test_refinalize_is_byte_identical_and_drops_stale_items(demo):
    before = _tree(demo)
    stale = demo / "stac" / "items" / "chip_999_999.json"
    stale.write_text("{}")
    proc = run_cli("finalize", str(demo), env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
    assert _tree(demo) == before
    manifest = (demo / "checksums.sha256").read_text()
    assert f"{before['stac/collection.json']}  stac/collection.json\n" in manifest


def test_pystac_reads_the_moved_catalog(demo, tmp_path):
    import pystac

    moved = tmp_path / "moved"
    shutil.copytree(demo, moved)
    coll = pystac.Collection.from_file(str(moved / "stac" / "collection.json"))
    assert coll.catalog_type == pystac.CatalogType.SELF_CONTAINED
    items = list(coll.get_items())
    assert len(items) == 108
    for item in items[:10]:
        for a in item.assets.values():
            assert Path(a.get_absolute_href()).is_file() and str(moved) in a.get_absolute_href()
    assert {i.properties["ml-aoi:split"] for i in items} == {"train", "validate"}


def test_stac_geoparquet_round_trip(dataset, tmp_path):
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow as sga

    items = list(_items(dataset).values())
    table = sga.parse_stac_items_to_arrow(items)
    table = table.read_all() if hasattr(table, "read_all") else table
    pq.write_table(table, tmp_path / "items.parquet")
    back = {it["id"]: it for it in sga.stac_table_to_items(pq.read_table(tmp_path / "items.parquet"))}
    assert sorted(back) == sorted(it["id"] for it in items)
    for it in items:
        b = back[it["id"]]
        assert b["bbox"] == pytest.approx(it["bbox"])
        assert b["properties"].get("ml-aoi:split") == it["properties"].get("ml-aoi:split")
        assert {k: [dict(x) for x in a["raster:bands"]] for k, a in b["assets"].items() if a.get("raster:bands")} == \
               {k: a["raster:bands"] for k, a in it["assets"].items() if "raster:bands" in a}


def test_per_band_files_keep_their_own_band(demo_per_band):
    from eochips.dataset.stac import validate_catalog

    assert validate_catalog(demo_per_band) == 108
    for it in _items(demo_per_band).values():
        images = {k: a for k, a in it["assets"].items() if a["roles"] == ["data"]}
        assert sorted(images) == ["b2", "b3", "b4"]
        for key, a in images.items():
            with rasterio.open((demo_per_band / "stac" / "items" / a["href"]).resolve()) as ds:
                assert [b["name"] for b in a["eo:bands"]] == [ds.descriptions[0].split("@")[0]] == [key]
            assert "common_name" not in a["eo:bands"][0]
