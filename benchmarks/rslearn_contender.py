"""The rslearn contender: the crop workload's chips built as an rslearn 0.1.19 dataset.

    python benchmarks/rslearn_contender.py WORKLOAD_JSON DENSITY NET OUTDIR --workers N

What it does, each step timed (a user has to do all of them):

1. **Sources.** rslearn has no data source for a static STAC ItemCollection over HTTP: its STAC
   sources (``rslearn.data_sources.stac``) need a STAC API ``/search`` endpoint, and the
   ``DirectMaterializeDataSource`` ones are tied to their providers (Planetary Computer, NASA
   CMR, Element84). So the layers use ``rslearn.data_sources.local_files.LocalFiles``, which
   reads files on disk (docs: ``docs/data_sources/local_files_LocalFiles.md``,
   ``docs/AddRasterData.md``, "combine bands stored in separate files" with
   ``raster_item_specs``). The COGs exist only on the benchmark's server (granule k is the base
   granule with a shifted tie point), so the sources are small VRTs (written from the STAC
   items' ``proj:shape``/``proj:transform`` and ``raster:bands``, no request) whose sources are
   ``/vsicurl/{url}/gKK/DATE/ASSET.tif``: every pixel is read from the server, as eochips
   reads it. ``--vrt stacked`` (default): per granule and date one 6-band VRT of the
   reflectance assets (one file per item with all its bands, LocalFiles' default
   assumption) and one of Fmask. ``--vrt per-asset``: one VRT per asset, combined into items
   by ``raster_item_specs``; rslearn then opens, bounds and warps each band file on its own
   per window (same pixels; at medium density 2.09 against 1.64 CPU-s per chip). The label raster (workload.json ``labels``, local) gets
   a VRT the same way.
2. **config.json.** Per date d one reflectance layer ``hls_d`` (B02 B03 B04 B8A B11 B12, int16,
   ``resampling_method: bilinear``) and one ``fmask_d`` (uint8, ``nearest``; rslearn's
   resampling is per layer, so Fmask cannot share the reflectance layer), and ``label`` (CDL
   codes, uint8, nearest). One layer per date because LocalFiles items have no time range
   ("The time range of all items is null"), so a window's time range and ``max_matches: 3`` can
   not order or tell the dates apart (the order of the matched groups would be the spatial
   index's set order); one layer per date is rslearn's pattern for multi-temporal inputs
   (``docs/examples/BitemporalSentinel2.md``: a layer per period). Each LocalFiles layer has its
   own source folder: LocalFiles caches its item list in ``src_dir/summary.json``, so two
   layers on one folder would share one list.
3. **Windows** (Python API, ``docs/CreateWindowsProgrammatically.md``): one per chip (k, r, c),
   group ``default``. rslearn pixel bounds are integers in units of the projection's
   resolution from the CRS origin, and this grid's origin (the CDL's) is half a pixel off
   EPSG:5070's (20865 / 30 = 695.5): rslearn itself rounds such an origin
   (``get_raster_projection_and_bounds_from_transform``), a 15 m shift. To land exactly on the
   chip windows the windows' CRS is EPSG:5070 with its false easting and northing moved by
   that half pixel (15 m each): the same projection, datum and ground pixels, integer bounds.
   Time range: the first date to the day after the last (unused by LocalFiles).
4. ``rslearn dataset prepare``, ``rslearn dataset ingest``, ``rslearn dataset materialize``
   (CLI, ``--workers N``, other options at their defaults). **Direct reads**: ``ingest: false``
   exists in 0.1.19 (``DataSourceConfig.ingest``) only for ``DirectMaterializeDataSource``
   sources; LocalFiles has no ``materialize`` (``DataSource.materialize`` raises
   NotImplementedError), so its layers must be ingested. With the tile store's
   ``convert_rasters_to_cogs: false`` the ingest copies each source file as it is: here the
   VRTs (about 1 KB each), not pixels; materialize then reads the COG tiles over HTTP through
   them (``GeotiffRasterFormat.decode_raster``: a WarpedVRT per window, layer and band set).
   GDAL gets the usual COG-over-HTTP settings (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``,
   ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS=.tif``) and nothing else.
5. **Count.** A chip counts when all 7 layers of its window are completed
   (``Window.is_layer_completed``). rslearn has no chip filter (no QA / nodata / label rules),
   so ``kept`` = chips materialised. ``files`` = every file the run wrote under OUTDIR (sources,
   config, window metadata, layer data, tile store, completion markers) except its logs;
   ``tifs`` = the materialised GeoTIFFs.

Prints one JSON line last: ``{"chips", "kept", "files", "tifs", "seconds"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

from affine import Affine
from pyproj import CRS as PyprojCRS

RSLEARN = str(Path(sys.executable).with_name("rslearn"))
GDAL_HTTP_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif"}
VRT_TYPES = {"int16": "Int16", "uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}
LABEL_BAND = "cdl"
GROUP = "default"


class Workload:
    """What this contender needs of workload.json (the chips of one density, the grid, the
    dates and assets, the server's URL of ``net``). Not ``contenders.Workload``: that module
    imports eochips, which would charge this contender for eochips' imports."""

    def __init__(self, path: str, density: str, net: str):
        self.m = json.loads(Path(path).read_text())
        self.chips = [tuple(c) for c in self.m["chips"][density]]
        self.net = net
        self.grid_t = Affine(*self.m["grid"]["transform"])
        self.crs = self.m["grid"]["crs"]
        self.size = self.m["chip"]
        self.dates, self.refl = self.m["dates"], self.m["reflectance"]

    def href(self, k: int, date: str, asset: str) -> str:
        return f"{self.m['urls'][self.net]}/g{k:02d}/{date}/{asset}.tif"

    def granules(self) -> list[int]:
        return sorted({k for k, _, _ in self.chips})


def vrt_xml(sources: list[str], width: int, height: int, transform: list[float], crs: str, dtype: str, nodata) -> str:
    """A VRT with one band per source (band 1 of each, whole raster, all on the same grid)."""
    gt = ", ".join(repr(float(v)) for v in Affine(*transform[:6]).to_gdal())
    nd = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
    vt = VRT_TYPES[dtype]
    rect = f'xOff="0" yOff="0" xSize="{width}" ySize="{height}"'
    bands = "".join(
        f'<VRTRasterBand dataType="{vt}" band="{i}">{nd}<SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(src)}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SourceProperties RasterXSize="{width}" RasterYSize="{height}" DataType="{vt}"/>'
        f"<SrcRect {rect}/><DstRect {rect}/></SimpleSource></VRTRasterBand>"
        for i, src in enumerate(sources, 1))
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(crs)}</SRS>'
            f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>\n")


def assets_vrt(hrefs: list[str], asset: dict) -> str:
    """The VRT of assets at ``hrefs`` (read over /vsicurl/; one band each), their grid and type
    from the (first) STAC asset's projection and raster extensions."""
    h, w = asset["proj:shape"]
    band = asset["raster:bands"][0]
    return vrt_xml(["/vsicurl/" + u for u in hrefs], w, h, asset["proj:transform"], f"EPSG:{asset['proj:epsg']}",
                   band["data_type"], band.get("nodata"))


def label_vrt(path: str) -> str:
    import rasterio

    with rasterio.open(path) as ds:
        return vrt_xml([str(Path(path).resolve())], ds.width, ds.height, list(ds.transform)[:6], ds.crs.to_wkt(),
                       ds.dtypes[0], None if ds.nodata is None else int(ds.nodata))


def load_items(w: Workload) -> dict[str, dict]:
    """The case's STAC items (the catalog eochips searches), by id."""
    root = Path(w.m["root"])
    coll = json.loads((root / f"items-{w.net}.json").read_text())
    return {f["id"]: f for f in coll["features"]}


def layer_name(kind: str, date: str) -> str:
    return f"{kind}_{date.replace('-', '')}"  # rslearn layer names may not contain periods


def write_sources(w: Workload, root: Path, stacked: bool) -> dict[str, list[dict]]:
    """VRTs of the used granules' assets, one folder per layer; returns each layer's item specs.
    ``stacked``: one 6-band VRT per granule and date for the reflectance (one file per item, as
    LocalFiles assumes by default); else one VRT per asset, combined by ``raster_item_specs``."""
    items = load_items(w)
    specs: dict[str, list[dict]] = {}
    for k in w.granules():
        ids = w.m["granules"][str(k)]["items"]
        for date, item_id in zip(w.dates, ids, strict=True):
            assets = items[item_id]["assets"]
            files = {"hls": [("hls", list(w.refl))] if stacked else [(a, [a]) for a in w.refl],
                     "fmask": [("Fmask", ["Fmask"])]}
            for kind, groups in files.items():
                name = layer_name(kind, date)
                folder = root / "sources" / name
                folder.mkdir(parents=True, exist_ok=True)
                for stem, bands in groups:
                    (folder / f"g{k:02d}_{stem}.vrt").write_text(
                        assets_vrt([w.href(k, date, b) for b in bands], assets[bands[0]]))
                specs.setdefault(name, []).append({"fnames": [f"g{k:02d}_{stem}.vrt" for stem, _ in groups],
                                                   "bands": [bands for _, bands in groups],
                                                   "name": f"g{k:02d}_{date}"})
    folder = root / "sources" / "label"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cdl_labels.vrt").write_text(label_vrt(w.m["labels"]))
    specs["label"] = [{"fnames": ["cdl_labels.vrt"], "bands": [[LABEL_BAND]], "name": "cdl"}]
    return specs


def local_layer(name: str, specs: list[dict], bands: list[str], dtype: str, resampling: str, nodata) -> dict:
    return {"type": "raster", "resampling_method": resampling,
            "band_sets": [{"bands": bands, "dtype": dtype, "nodata_value": nodata}],
            "data_source": {"class_path": "rslearn.data_sources.local_files.LocalFiles",
                            "init_args": {"src_dir": f"sources/{name}", "raster_item_specs": specs},
                            "query_config": {"space_mode": "CONTAINS", "max_matches": 1}}}


def dataset_config(w: Workload, specs: dict[str, list[dict]]) -> dict:
    layers = {}
    for d in w.dates:
        layers[layer_name("hls", d)] = local_layer(layer_name("hls", d), specs[layer_name("hls", d)], list(w.refl),
                                                   "int16", "bilinear", -9999)
        layers[layer_name("fmask", d)] = local_layer(layer_name("fmask", d), specs[layer_name("fmask", d)], ["Fmask"],
                                                     "uint8", "nearest", 255)
    layers["label"] = local_layer("label", specs["label"], [LABEL_BAND], "uint8", "nearest", 0)
    return {"layers": layers,
            "tile_store": {"class_path": "rslearn.tile_stores.default.DefaultTileStore",
                           "init_args": {"convert_rasters_to_cogs": False}}}


def aligned_crs(w: Workload) -> tuple[object, int, int]:
    """The grid's CRS with its false easting / northing moved so the grid's origin is a whole
    number of pixels from the CRS origin; returns it (a rasterio CRS) and the origin's pixel
    column and row in it."""
    from rasterio.crs import CRS

    t = w.grid_t
    dx, dy = (-t.c) % t.a, (-t.f) % (-t.e)  # metres to add so that origin / resolution is whole
    col0, row0 = round((t.c + dx) / t.a), round((t.f + dy) / t.e)
    if dx == 0 and dy == 0:
        return CRS.from_user_input(w.crs), col0, row0
    js = PyprojCRS.from_user_input(w.crs).to_json_dict()
    js.pop("id", None)
    js["name"] = f"{js['name']} (false origin moved {dx:g} m E, {dy:g} m N: the label grid on whole pixels)"
    conv = js["conversion"]
    conv.pop("id", None)
    for p in conv["parameters"]:
        if "easting" in p["name"].lower():
            p["value"] += dx
        elif "northing" in p["name"].lower():
            p["value"] += dy
    return CRS.from_wkt(PyprojCRS.from_json_dict(js).to_wkt()), col0, row0


def window_name(k: int, r: int, c: int) -> str:
    return f"g{k:02d}_chip_{r:03d}_{c:03d}"


def add_windows(w: Workload, root: Path) -> int:
    """One window per chip, exactly on its grid cells (see the module docstring)."""
    from rslearn.dataset import Dataset, Window
    from rslearn.utils.geometry import Projection
    from upath import UPath

    ds = Dataset(UPath(root))
    crs, col0, row0 = aligned_crs(w)
    proj = Projection(crs, w.grid_t.a, w.grid_t.e)
    d0 = datetime.fromisoformat(w.dates[0]).replace(tzinfo=UTC)
    d1 = datetime.fromisoformat(w.dates[-1]).replace(tzinfo=UTC) + timedelta(days=1)
    n = w.size
    for k, r, c in w.chips:
        bounds = (col0 + c * n, row0 + r * n, col0 + (c + 1) * n, row0 + (r + 1) * n)
        Window(storage=ds.storage, group=GROUP, name=window_name(k, r, c), projection=proj, bounds=bounds,
               time_range=(d0, d1), data_factory=ds.window_data_storage_factory).save()
    return len(w.chips)


def rslearn(root: Path, command: str, workers: int, log) -> None:
    """``rslearn dataset COMMAND --root ROOT --workers N``, its output to ``log``."""
    cmd = [RSLEARN, "dataset", command, "--root", str(root), "--workers", str(workers)]
    env = dict(os.environ, **GDAL_HTTP_ENV)
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"rslearn dataset {command} failed ({rc}); see {log.name}")


def count(w: Workload, root: Path, layers: list[str]) -> tuple[int, int, int]:
    """Chips whose every layer is completed, files written (without the logs), GeoTIFFs."""
    from rslearn.dataset import Dataset
    from upath import UPath

    done = sum(all(win.is_layer_completed(name) for name in layers)
               for win in Dataset(UPath(root)).load_windows(groups=[GROUP]))
    files = [p for p in root.rglob("*") if p.is_file() and "logs" not in p.relative_to(root).parts]
    return done, len(files), sum(p.suffix == ".tif" for p in files)


def layer_tif(root: Path, window: str, layer: str) -> Path:
    return next((root / "windows" / GROUP / window / "layers" / layer).glob("*/geotiff.tif"))


def compare(w: Workload, root: Path, eochips_dir: Path, n: int) -> None:
    """Share of identical pixels and max |diff| per band of the first ``n`` chips that eochips
    kept (``chips/chip_RRR_CCC_merged.tif``, ``_Fmask.tif``, ``.mask.tif``) against this run's
    arrays (labels as CDL-13 classes, eochips' reclass), printed to stderr."""
    import numpy as np
    import rasterio

    from eochips.labels import CDL_13

    lut = np.zeros(256, np.uint8)
    for code, cls in CDL_13.items():
        lut[code] = cls
    names = {f"chip_{r:03d}_{c:03d}": (k, r, c) for k, r, c in w.chips}
    for merged in sorted((eochips_dir / "chips").glob("chip_*_merged.tif"))[:n]:
        cid = merged.name[: -len("_merged.tif")]
        win = window_name(*names[cid])
        with rasterio.open(merged) as ds:
            eo = ds.read()  # time-major: band t * 6 + b
        ours = np.concatenate([rasterio.open(layer_tif(root, win, layer_name("hls", d))).read() for d in w.dates])
        rows = [(f"{d} {b}", eo[i * len(w.refl) + j], ours[i * len(w.refl) + j])
                for i, d in enumerate(w.dates) for j, b in enumerate(w.refl)]
        with rasterio.open(eochips_dir / "chips" / f"{cid}_Fmask.tif") as ds:
            fm = ds.read()
        rows += [(f"{d} Fmask", fm[i], rasterio.open(layer_tif(root, win, layer_name("fmask", d))).read(1))
                 for i, d in enumerate(w.dates)]
        with rasterio.open(eochips_dir / "chips" / f"{cid}.mask.tif") as ds:
            rows.append(("label (CDL-13)", ds.read(1), lut[rasterio.open(layer_tif(root, win, "label")).read(1)]))
        for name, a, b in rows:
            d = np.abs(a.astype(np.int32) - b.astype(np.int32))
            print(f"{cid} {name}: identical {np.mean(d == 0):.4%}, max |diff| {d.max()}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("density")
    ap.add_argument("net")
    ap.add_argument("outdir")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--vrt", choices=["stacked", "per-asset"], default="stacked",
                    help="reflectance sources: one 6-band VRT per granule and date, or one VRT per asset")
    ap.add_argument("--compare", type=Path, help="after the run, compare chips with this eochips output folder")
    ap.add_argument("--compare-chips", type=int, default=2)
    a = ap.parse_args()
    t0 = time.perf_counter()
    w = Workload(a.workload, a.density, a.net)
    root = Path(a.outdir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    specs = write_sources(w, root, a.vrt == "stacked")
    cfg = dataset_config(w, specs)
    (root / "config.json").write_text(json.dumps(cfg, indent=1))
    add_windows(w, root)
    with open(root / "logs" / "rslearn.log", "w") as log:
        for command in ("prepare", "ingest", "materialize"):
            t = time.perf_counter()
            rslearn(root, command, a.workers, log)
            print(f"rslearn dataset {command}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    done, files, tifs = count(w, root, list(cfg["layers"]))
    print(json.dumps({"chips": len(w.chips), "kept": done, "files": files, "tifs": tifs,
                      "seconds": time.perf_counter() - t0}))
    if a.compare:
        compare(w, root, a.compare, a.compare_chips)


if __name__ == "__main__":
    main()
