"""Test catalogs built from the real rasters of ``../shared/data/real`` (and the embedded sample).

Every asset holds real pixels, copied without resampling; item metadata comes from the files
(datetime tag, valid-data footprint, projection, QA-derived cloud and nodata percentages).
Where a field is not in the files it is stated as assumed and the item says so in
``eochips:derived_from`` / ``eochips:assumed``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
S2_EXETER = REAL / "s2l2a_multitemporal_exeter"
S2_BANDS = ["B02", "B03", "B04", "B08", "SCL"]
SCL_CLOUD = (8, 9, 10)


def write_cog(path: Path, arr: np.ndarray, crs, transform, dtype: str, nodata, blocksize: int = 128, **tags) -> None:
    """A DEFLATE COG of a ``(band, y, x)`` or ``(y, x)`` array."""
    import rasterio
    from rasterio.io import MemoryFile

    a = arr if arr.ndim == 3 else arr[None]
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0], dtype=dtype, crs=crs,
                      transform=transform, nodata=nodata) as ds:
            ds.write(a)
            if tags:
                ds.update_tags(**tags)
        with mem.open() as ds:
            from rasterio.shutil import copy

            copy(ds, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=blocksize)


def footprint(valid: np.ndarray, crs, transform):
    """The valid-data footprint of a mask, in EPSG:4326."""
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    from eochips.geo import reproject_geometry

    polys = [shape(g) for g, v in shapes(valid.astype(np.uint8), mask=valid, transform=transform) if v == 1]
    return reproject_geometry(shapely.union_all(polys), crs, "EPSG:4326")


def proj_fields(crs, transform, shape) -> dict:
    """STAC projection-extension fields of a grid (``proj:code`` when the CRS has an EPSG code)."""
    epsg = crs.to_epsg()
    out = {"proj:transform": list(transform)[:6], "proj:shape": [int(shape[0]), int(shape[1])]}
    if epsg:
        out["proj:code"] = f"EPSG:{epsg}"
    else:
        out["proj:wkt2"] = crs.to_wkt()
    return out


def build_s2_exeter(dst: Path, cuts: dict[str, tuple[float, float, float, float]] | None = None) -> list[dict]:
    """Per-band COGs and STAC items of the 5 real Sentinel-2 L2A dates over Exeter (PC
    ``sentinel-2-l2a``, warped to 20 m by vrtility in three CRSs: EPSG:27700, UTM 30N and a
    local LAEA), with Planetary Computer asset keys.

    From the files: datetime (GeoTIFF tag, UTC), footprint (B02 != 0), projection,
    ``eo:cloud_cover`` (percent of valid pixels with SCL 8, 9 or 10; the SCL was bilinear-warped,
    so in-between codes exist: they count as what they read), ``s2:nodata_pixel_percentage``.
    Assumed (not in the files): ``s2:processing_baseline`` 05.10 (the baseline of 2024 L2A
    products) and ``s2:mgrs_tile`` 30UVB (Exeter). ``cuts`` maps a date ``YYYY-MM-DD`` to a
    fraction box ``(x0, y0, x1, y1)`` of the file's pixels that date keeps (the rest set to 0, the
    footprint computed from what is left, said in ``eochips:derived_from``): partial coverage.
    """
    import rasterio
    from shapely.geometry import mapping

    dst.mkdir(parents=True, exist_ok=True)
    items = []
    for f in sorted(S2_EXETER.glob("*.tif")):
        with rasterio.open(f) as ds:
            arr = ds.read()
            dt = datetime.strptime(ds.tags()["datetime"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
            crs, tr, shape = ds.crs, ds.transform, (ds.height, ds.width)
        cut = (cuts or {}).get(f"{dt:%Y-%m-%d}")
        if cut:
            h, w = arr.shape[1:]
            keep = np.zeros((h, w), bool)
            keep[int(cut[1] * h):int(cut[3] * h), int(cut[0] * w):int(cut[2] * w)] = True
            arr = np.where(keep, arr, 0)
        tag = f.stem.split("_")[-1] if "EPSG" in f.stem or "UTM" in f.stem else "LAEA"
        iid = f"S2X_MSIL2A_{dt:%Y%m%dT%H%M%S}_EXETER_{tag}"
        valid = arr[0] != 0
        assets = {}
        for i, band in enumerate(S2_BANDS):
            name = f"{iid}_{band}_20m.tif"
            write_cog(dst / name, arr[i], crs, tr, "uint16" if band != "SCL" else "uint8", 0)
            assets[band] = {"href": name, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                            "roles": ["data"], **proj_fields(crs, tr, shape)}
        scl = arr[4][valid]
        foot = footprint(valid, crs, tr)
        items.append({
            "type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": "sentinel-2-l2a",
            "geometry": mapping(foot), "bbox": list(foot.bounds),
            "properties": {
                "datetime": dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": "Sentinel-2",
                "eo:cloud_cover": round(100.0 * float(np.isin(scl, SCL_CLOUD).mean()), 3),
                "s2:nodata_pixel_percentage": round(100.0 * float((~valid).mean()), 3),
                "s2:processing_baseline": "05.10", "s2:mgrs_tile": "30UVB",
                "eochips:derived_from": f"shared/data/real/s2l2a_multitemporal_exeter/{f.name}"
                                        + (f" (pixels outside the fraction box {cut} set to 0)" if cut else ""),
                "eochips:assumed": ["s2:processing_baseline", "s2:mgrs_tile"],
            },
            "links": [], "assets": assets,
        })
    return items


def write_catalog(path: Path, items: list[dict], root: Path) -> Path:
    """A static ItemCollection of ``items`` with hrefs made absolute under ``root``."""
    feats = json.loads(json.dumps(items))
    for it in feats:
        for a in it["assets"].values():
            a["href"] = str(root / a["href"])
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path
