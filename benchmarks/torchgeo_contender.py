"""The TorchGeo contender: the benchmark's crop workload read the way TorchGeo 0.8.1 tells users to.

    python benchmarks/torchgeo_contender.py {tensors|files} WORKLOAD_JSON DENSITY NET OUTDIR --workers N

What it does:

- Sources: the COG server's URLs (``{url}/gKK/DATE/ASSET.tif``) as GDAL ``/vsicurl/`` paths,
  only the granules that the density's chips use. TorchGeo 0.8.1 takes them as they are:
  ``GeoDataset.files`` keeps a path that ``utils.path_is_vsi`` accepts (``'://'`` in it or a
  ``/vsi`` prefix) when it matches ``*{filename_glob}``, and ``RasterDataset`` opens every path
  with ``rasterio.open`` (source: ``torchgeo/datasets/geo.py`` and ``utils.py`` of the 0.8.1 wheel).
- GDAL settings: every entry of ``eochips.reading.DEFAULT_GDAL_ENV`` (GDAL_DISABLE_READDIR_ON_OPEN,
  CPL_VSIL_CURL_ALLOWED_EXTENSIONS, GDAL_HTTP_MAX_RETRY, GDAL_HTTP_TIMEOUT,
  GDAL_HTTP_MERGE_CONSECUTIVE_RANGES, VSI_CACHE, GDAL_CACHEMAX in bytes) is put into the
  process environment before anything is opened, so the DataLoader's worker processes inherit
  them (TorchGeo itself sets no GDAL option and opens files outside any ``rasterio.Env``).
- Datasets (``RasterDataset`` subclasses, the pattern of TorchGeo's "Custom Raster Datasets"
  tutorial, ``docs/tutorials/custom_raster_dataset.ipynb``): per date one reflectance dataset of
  the 6 bands, one file per band (``separate_files``: the index holds the B02 files and
  ``_update_filepath`` swaps the band name in), and one Fmask dataset with nearest resampling
  (its ``resampling`` property overridden; images default to bilinear) whose ``transforms``
  moves its tensor from ``image`` to ``qa`` so the QA bands stay apart from the reflectance;
  the label raster (EPSG:5070) as the mask dataset (``is_image = False``: ``long``, nearest).
  All with ``crs=EPSG:5070`` and ``res=30``, intersected with ``&`` one after the other, each
  intersection's index cut to its geometry (``intersect``: TorchGeo 0.8.1 fails on a fourth
  ``&`` with a pandas MergeError, torchgeo/torchgeo#3721; the workaround is the one given there).
- Dates: TorchGeo 0.8.1 has no time-series sampling: a ``RasterDataset`` whose index holds
  several dates over one place *merges* them into one image (``rasterio.merge``, first file
  wins; the bundled ``SouthAfricaCropType`` says so: "TorchGeo does not yet support timeseries
  datasets"). So each date is its own dataset and the intersection stacks them along the
  channel axis (``IntersectionDataset``'s default ``concat_samples``): image (18, 224, 224) in
  date-major order, qa (3, 224, 224), mask (224, 224). The date is in the directory, not the
  file name (TorchGeo's ``filename_regex`` sees the base name only), so no ``date`` group: every
  file spans all time and the temporal intersection is trivially non-empty.
- Sampler: the chip windows themselves, one ``GeoSlice`` ``(x0:x1:30, y0:y1:30)`` per chip
  (k, r, c) of the workload (grid cols c*224..(c+1)*224, rows r*224..(r+1)*224 of
  ``grid.transform``). ``GridGeoSampler`` does not land on them: it tiles from each index
  geometry's own corner (the intersection of the warped footprints), not from the grid origin.
  A ``DataLoader`` takes any iterable of queries as ``sampler``.
- ``DataLoader(dataset, sampler=queries, batch_size=1, num_workers=N, collate_fn=stack_samples,
  multiprocessing_context="forkserver")`` (TorchGeo's ``sits_dataset`` tutorial uses
  ``batch_size=1`` with ``stack_samples``). Not the Linux default ``fork``: ``RasterDataset``
  opens every file in the main process (its index), so forked workers inherit GDAL's open
  ``/vsicurl/`` connections, and GDAL state shared across ``fork()`` is unsupported
  (OSGeo/gdal#2368). One of five ``fork`` runs here ended in a worker's "CURL error: Operation
  timed out after 60002 milliseconds with 0 bytes received"; with plain rasterio (the parent
  opens one ``/vsicurl/`` COG, two forked children then read others) a child timed out so in 4
  of 6 trials, with forkserver in none of 4. The forkserver process starts clean and imports
  this module (torch, TorchGeo) once; workers fork from it. That costs TorchGeo about 0.3 CPU-s
  per chip and 0.9 GB of tree PSS at 50 chips (``fork`` when it works: 0.43-0.51 CPU-s per chip,
  PSS 1.45-1.49 GB; forkserver 0.78, 2.42 GB). ``--mp-context fork`` runs the default anyway.
- ``tensors``: a chip counts when its tensors arrive in the main process; ``kept`` applies seed
  001's filter to them (no -9999 in the reflectance, ``contenders.bad_pct`` < 5 on every date's
  Fmask, no label 0), as ``contenders.finish_chip`` does; no files.
- ``files``: the same, and each kept chip's three GeoTIFFs written by ``contenders.finish_chip``
  itself (18 bands int16, ``.mask.tif`` via the CDL_13 LUT, ``_Fmask`` 3 bands).

Prints one JSON line: ``{"chips": N, "kept": K, "files": F, "seconds": S}``.

How TorchGeo reads (why its pixels differ from eochips'): ``RasterDataset._load_warp_file``
wraps each file in a ``WarpedVRT`` onto its own EPSG:5070 grid (``calculate_default_transform``:
GDAL's suggested resolution and origin, nearest resampling, the VRT's default), and
``_merge_files`` then reads the query's bounds out of that VRT at 30 m with ``rasterio.merge``
(bilinear for float images, nearest otherwise): two resamplings, the first one nearest. For
granule 0 that VRT grid is 30.02 m with its origin 0.58 px (x) and 0.11 px (y) off the label
grid. eochips' chips equal a one-step bilinear ``rasterio.warp.reproject`` exactly; TorchGeo's
do not (about 2-12 % of the reflectance pixels identical, mean |diff| 15-105 for means of
375-3272; Fmask 97-99 % identical). The VRT is read by its 512 x 128 px blocks, so a chip warps
and fetches the source under every block it touches. File handles: ``_cached_load_warp_file`` is one
``functools.lru_cache(maxsize=128)`` for every ``RasterDataset`` of a process, so beyond 128
files (the seed density's 10 granules x 21 files) handles are closed and reopened.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

from eochips.reading import DEFAULT_GDAL_ENV


def _gdal_env_value(v) -> str:
    if isinstance(v, bool):
        return "YES" if v else "NO"
    return str(v)


os.environ.update({k: _gdal_env_value(v) for k, v in DEFAULT_GDAL_ENV.items()})

import numpy as np  # noqa: E402
from pyproj import CRS  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchgeo.datasets import RasterDataset, stack_samples  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contenders import Workload, bad_pct, finish_chip  # noqa: E402


class HLSBands(RasterDataset):
    """One date's 6 reflectance bands, one COG per band."""

    filename_glob = "B02.tif"
    filename_regex = r"^(?P<band>B[0-9][0-9A])\.tif$"
    separate_files = True
    all_bands = ("B02", "B03", "B04", "B8A", "B11", "B12")


class HLSFmask(RasterDataset):
    """One date's Fmask (uint8 bit flags): nearest resampling, never bilinear."""

    filename_glob = "Fmask.tif"
    filename_regex = r"^Fmask\.tif$"

    @property
    def resampling(self) -> Resampling:
        return Resampling.nearest


class CDLLabels(RasterDataset):
    """The CDL-coded label raster, the mask of every sample."""

    filename_glob = "*.tif"
    is_image = False


def as_qa(sample: dict) -> dict:
    """Move an Fmask dataset's tensor from ``image`` to ``qa``."""
    sample["qa"] = sample.pop("image")
    return sample


def vsi_paths(w: Workload, date: str, asset: str) -> list[str]:
    return [f"/vsicurl/{w.href(k, date, asset)}" for k in sorted(w.granules())]


def build_dataset(w: Workload):
    kw = dict(crs=CRS.from_user_input(w.crs), res=(w.grid_t.a, -w.grid_t.e))
    parts = [HLSBands(vsi_paths(w, d, "B02"), **kw) for d in w.dates]
    parts += [HLSFmask(vsi_paths(w, d, "Fmask"), transforms=as_qa, **kw) for d in w.dates]
    parts.append(CDLLabels(w.m["labels"], **kw))
    return functools.reduce(intersect, parts)


def intersect(a, b):
    """``a & b``, its index cut to the geometry: TorchGeo 0.8.1 cannot intersect more than three
    datasets (the overlay's ``filepath_1`` / ``filepath_2`` columns collide in pandas' merge:
    torchgeo/torchgeo#3721, fixed after 0.8.1 by #3722); this is the workaround given in that
    issue. An intersection's index only bounds the samplers; each dataset reads through its own."""
    ds = a & b
    ds.index = ds.index[["geometry"]]
    return ds


def chip_query(w: Workload, r: int, c: int) -> tuple[slice, slice]:
    t = w.chip_transform(r, c)
    x0, y1, rx, ry = t.c, t.f, t.a, -t.e
    return slice(x0, x0 + w.size * rx, rx), slice(y1 - w.size * ry, y1, ry)


def passes(image: np.ndarray, fmask: np.ndarray, codes: np.ndarray) -> bool:
    """Seed 001's filter, as ``contenders.finish_chip`` applies it."""
    return not (image == -9999).any() and max(bad_pct(f) for f in fmask) < 5 and not (codes == 0).any()


class _Codes:
    """The chip's label codes where ``finish_chip`` expects the label raster (it reads one window)."""

    def __init__(self, codes: np.ndarray):
        self.codes = codes

    def read(self, band: int, window) -> np.ndarray:
        return self.codes


def chip_arrays(w: Workload, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, band, y, x) int16 reflectance, (time, y, x) uint8 Fmask, (y, x) uint8 codes of a batch of one."""
    s, nd, nb = w.size, len(w.dates), len(w.refl)
    image, qa, mask = batch["image"][0], batch["qa"][0], batch["mask"][0]
    if tuple(image.shape) != (nd * nb, s, s) or tuple(qa.shape) != (nd, s, s) or tuple(mask.shape) != (s, s):
        raise RuntimeError(f"unexpected sample shapes {tuple(image.shape)} {tuple(qa.shape)} {tuple(mask.shape)}")
    return (image.numpy().astype(np.int16).reshape(nd, nb, s, s), qa.numpy().astype(np.uint8),
            mask.numpy().astype(np.uint8))


def run(mode: str, w: Workload, out: Path, workers: int, mp_context: str) -> tuple[int, int]:
    dataset = build_dataset(w)
    queries = [chip_query(w, r, c) for _, r, c in w.chips]
    loader = DataLoader(dataset, sampler=queries, batch_size=1, num_workers=workers, collate_fn=stack_samples,
                        multiprocessing_context=mp_context if workers else None)
    kept = 0
    for (_, r, c), batch in zip(w.chips, loader, strict=True):
        image, fmask, codes = chip_arrays(w, batch)
        if mode == "files":
            kept += finish_chip(w, out, _Codes(codes), r, c, image, fmask)
        else:
            kept += passes(image, fmask, codes)
    return kept, 3 * kept if mode == "files" else 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["tensors", "files"])
    ap.add_argument("workload_json")
    ap.add_argument("density")
    ap.add_argument("net")
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mp-context", default="forkserver", choices=["fork", "forkserver", "spawn"],
                    help="the DataLoader's multiprocessing_context (see the module docstring)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    w = Workload(a.workload_json, a.density, a.net)
    a.outdir.mkdir(parents=True, exist_ok=True)
    kept, files = run(a.mode, w, a.outdir, a.workers, a.mp_context)
    print(json.dumps({"chips": len(w.chips), "kept": kept, "files": files, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
