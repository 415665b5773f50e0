"""Open a finalised eochips dataset: its index, splits, chip files in channel order, statistics
and classes (``eochips.open_dataset``).

A finalised dataset (``eochips run`` or ``eochips build`` + ``eochips finalize``) holds at its root
``index.parquet`` (one row per planned unit), ``stats.json``, ``train_ids.csv`` / ``val_ids.csv``
(and ``test_ids.csv`` when the split has a test part) and the units' files. :func:`open_dataset`
reads those and answers the questions a training script asks::

    ds = eochips.open_dataset("out")
    ds.ids("train")                 # kept unit ids of the train part, in train_ids.csv order
    ds.paths("validation")          # per unit: image files in chip channel order + labels file
    mean, std = ds.normalization()  # per channel, the stored values (torchvision Normalize)
    ds.classes                      # [{"id": 0, "name": "unlabelled", "colour": "#000000"}, ...]

Chip channel order (issue 14's shared design): a unit's channels are its ``image``-role files in
the order the layouts wrote them (``metrics["file_order"]``; :func:`eochips.dataset.image_files`),
each file's bands in order. The index's ``files`` column carries that order when it is a list of
``{path, role, sha256}`` structs; an index of plain ``files`` / ``roles`` lists (sorted names,
eochips 0.2 before issue 14) takes the order from the unit's completion marker
(``state/units/{unit}.json``).

The PyTorch ``Dataset`` over a split is :class:`eochips.torch.ChipTorchDataset` (extra
``eochips[torch]``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .errors import EochipsError, OutputError
from .writers import OutputStore

SPLIT_FILES = {"train": "train_ids.csv", "validation": "val_ids.csv", "test": "test_ids.csv"}
"""The split part -> its ids file (column ``ids``), as the ``split`` finalizer writes them."""
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}


class NotADataset(OutputError):
    """The location is not a finalised eochips dataset (no ``index.parquet`` or ``stats.json``)."""


class DatasetContentError(EochipsError, ValueError):
    """A finalised dataset's files disagree (a split id not in the index, a unit without image files)."""


class MissingExtraError(EochipsError, ImportError):
    """An optional dependency of eochips is not installed; the message names the extra."""


@dataclass(frozen=True)
class UnitPaths:
    """The files of one kept unit, as paths a reader opens (local paths, or URLs of a remote dataset).

    Attributes
    ----------
    unit_id
        The unit's id (``chip_003_004``).
    images
        The unit's ``image`` files in chip channel order (their bands, in order, are the channels).
    labels
        The unit's labels file (role ``labels``: one band, the class map), or None without labels.
    """

    unit_id: str
    images: tuple[str, ...]
    labels: str | None


@contextmanager
def open_raster(path: str) -> Iterator[Any]:
    """Open a dataset file for reading: a local path with rasterio; a URL (``s3://...``, any fsspec
    URL, as :meth:`ChipDataset.path` gives for a remote dataset) fetched whole through fsspec (the
    same credentials and endpoint as the dataset's store, not GDAL's own) and opened in memory.

    Yields
    ------
    rasterio.io.DatasetReader
    """
    import rasterio

    if "://" not in path:
        with rasterio.open(path) as src:
            yield src
        return
    import fsspec
    from rasterio.io import MemoryFile

    with fsspec.open(path, "rb") as f:
        data = f.read()
    with MemoryFile(data) as mem, mem.open() as src:
        yield src


class ChipDataset:
    """A finalised eochips dataset, opened for reading (see :func:`open_dataset`).

    Attributes
    ----------
    location : str
        The dataset's folder (absolute) or URL.
    index : geopandas.GeoDataFrame
        ``index.parquet`` as written (one row per planned unit, geometry in EPSG:4326; column
        ``unit_id``, ``status`` ``kept`` | ``dropped`` | ``failed`` | ``pending``, ``split`` ...).
    stats : dict
        ``stats.json`` (version 2 keys ``channels``, ``mean``, ``std`` ... when present).
    """

    def __init__(self, store: OutputStore, index: Any, stats: dict[str, Any]):
        self._store = store
        self.location = store.location
        self.index = index
        self.stats = stats
        self._by_id = {uid: i for i, uid in enumerate(index["unit_id"])}
        self._kept = [uid for uid, st in zip(index["unit_id"], index["status"]) if st == "kept"]
        cols = index.columns
        n = len(index)
        # the file columns as Python lists once (row access through pandas is slow on large indexes)
        self._files = index["files"].tolist() if "files" in cols else [None] * n
        self._roles = index["roles"].tolist() if "roles" in cols else [None] * n
        self._shas = index["sha256"].tolist() if "sha256" in cols else [None] * n
        self._markers: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"ChipDataset({self.location!r}, {len(self.kept_ids())} kept units)"

    # -- units and splits ------------------------------------------------------------
    def kept_ids(self) -> list[str]:
        """Ids of the kept units (status ``kept``), in index order (numeric grid, row, col)."""
        return list(self._kept)

    def splits(self) -> list[str]:
        """The split parts this dataset has: ``["train", "validation"]`` plus ``"test"`` when written."""
        return [p for p, name in SPLIT_FILES.items() if self._store.exists(name)]

    def ids(self, split: str | None = None) -> list[str]:
        """Kept unit ids of one split part, in the order of its ids file.

        Parameters
        ----------
        split
            ``"train"``, ``"validation"`` (or ``"val"``), ``"test"``; None or ``"all"``: every kept unit
            (index order).

        Returns
        -------
        list of str
            The ids of ``train_ids.csv`` / ``val_ids.csv`` / ``test_ids.csv`` (column ``ids``).

        Raises
        ------
        DatasetContentError
            An unknown part, a part this dataset has no ids file for (naming the parts it has), or an
            id of the file that is not a kept unit of the index (a stale file: rerun ``eochips finalize``).
        """
        if split is None or split == "all":
            return self.kept_ids()
        part = SPLIT_ALIASES.get(split, split)
        have = self.splits()
        if part not in SPLIT_FILES or part not in have:
            why = "unknown split" if part not in SPLIT_FILES else "this dataset has no such split part"
            raise DatasetContentError(f"split {split!r}: {why} in {self.location!r}; valid: "
                                      f"{', '.join(repr(p) for p in have)} or 'all'")
        text = self._store.read_bytes(SPLIT_FILES[part]).decode()
        ids = [row["ids"] for row in csv.DictReader(io.StringIO(text))]
        kept = set(self.kept_ids())
        stale = [u for u in ids if u not in kept]
        if stale:
            raise DatasetContentError(f"{SPLIT_FILES[part]} of {self.location!r} lists {len(stale)} id(s) that are not "
                                      f"kept units of index.parquet (first {stale[0]!r}); run 'eochips finalize "
                                      f"{self.location}' again")
        return ids

    # -- files -----------------------------------------------------------------------
    def files(self, unit_id: str) -> list[dict[str, str]]:
        """The unit's files in file order: ``[{"path", "role", "sha256"}, ...]``, paths relative to the root.

        The order is the index's when its ``files`` column is a list of structs (file order);
        with plain ``files`` / ``roles`` lists (sorted) it is the completion marker's
        ``metrics["file_order"]``, and sorted names when the marker has none.

        Raises
        ------
        DatasetContentError
            ``unit_id`` is not in the index.
        """
        if unit_id not in self._by_id:
            raise DatasetContentError(f"unit {unit_id!r} is not in the index of {self.location!r}")
        i = self._by_id[unit_id]
        entries = [] if self._files[i] is None else list(self._files[i])
        if entries and isinstance(entries[0], dict):  # list<struct<path, role, sha256>>, in file order
            return [{"path": e["path"], "role": e.get("role") or "", "sha256": e.get("sha256") or ""} for e in entries]
        roles = [""] * len(entries) if self._roles[i] is None else list(self._roles[i])
        shas = [""] * len(entries) if self._shas[i] is None else list(self._shas[i])
        by_name = {f: {"path": f, "role": r, "sha256": s} for f, r, s in zip(entries, roles, shas)}
        order = self._marker(unit_id).get("metrics", {}).get("file_order") or sorted(by_name)
        return [by_name[f] for f in order if f in by_name] + [by_name[f] for f in sorted(by_name) if f not in order]

    def _marker(self, unit_id: str) -> dict[str, Any]:
        if unit_id not in self._markers:
            from .engine import MARKERS

            rel = f"{MARKERS}/{unit_id}.json"
            self._markers[unit_id] = json.loads(self._store.read_bytes(rel)) if self._store.exists(rel) else {}
        return self._markers[unit_id]

    def path(self, rel: str) -> str:
        """A dataset-relative path as a reader opens it: an absolute local path, or the dataset's URL + ``/rel``."""
        if self._store.is_local:
            return str(self._store.local_path(rel))
        return f"{self.location}/{rel}"

    def unit_paths(self, unit_id: str) -> UnitPaths:
        """The unit's image files in chip channel order and its labels file (see :class:`UnitPaths`).

        Raises
        ------
        DatasetContentError
            The unit is not in the index, or has no ``image`` file (not a kept unit).
        """
        fs = self.files(unit_id)
        images = tuple(self.path(f["path"]) for f in fs if f["role"] == "image")
        if not images:
            raise DatasetContentError(f"unit {unit_id!r} of {self.location!r} has no image file "
                                      f"(status {self.index.iloc[self._by_id[unit_id]]['status']!r})")
        labels = next((self.path(f["path"]) for f in fs if f["role"] == "labels"), None)
        return UnitPaths(unit_id, images, labels)

    def paths(self, split: str | None = None) -> list[UnitPaths]:
        """:meth:`unit_paths` of every unit of :meth:`ids` ``(split)``, in that order."""
        return [self.unit_paths(u) for u in self.ids(split)]

    # -- statistics and classes ------------------------------------------------------
    def channels(self) -> list[dict[str, Any]]:
        """One entry per chip channel, in chip order: ``{"index", "name", "band", "step", "nodata", ...}``.

        ``stats.json`` version 2's ``channels`` when present; otherwise derived from the band
        descriptions (``"{band}@{YYYY-MM-DD}"``) and nodata of the first kept unit's image files:
        ``name`` is ``"{band}"`` when every band occurs once, else ``"{band}@t{k}"`` (k = 0-based
        occurrence of the band in the chip), as issue 14's design names channels.

        Raises
        ------
        DatasetContentError
            No stats channels and no kept unit to read them from.
        """
        if self.stats.get("channels"):
            return [dict(c) for c in self.stats["channels"]]
        kept = self.kept_ids()
        if not kept:
            raise DatasetContentError(f"{self.location!r} has no kept unit and its stats.json no 'channels'")
        found: list[tuple[str, Any, str]] = []
        for p in self.unit_paths(kept[0]).images:
            with open_raster(p) as src:
                for i, (desc, nd) in enumerate(zip(src.descriptions, src.nodatavals)):
                    found.append(((desc or f"band{i + 1}").split("@")[0], nd, src.dtypes[i]))
        bands = [b for b, _, _ in found]
        multi = len(set(bands)) < len(bands)
        out, seen = [], {}
        for i, (band, nd, dtype) in enumerate(found):
            k = seen.get(band, 0)
            seen[band] = k + 1
            nodata = None if nd is None else ("nan" if np.isnan(nd) else nd)
            out.append({"index": i, "name": f"{band}@t{k}" if multi else band, "band": band, "step": k,
                        "dtype": dtype, "nodata": nodata})
        return out

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` per chip channel of the stored values (raw DN for integer bands).

        Returns
        -------
        mean, std : numpy.ndarray
            float64, shape ``(channel,)``, in chip channel order: ``stats.json`` version 2's
            per-channel ``mean`` / ``std``; for an older ``stats.json`` (per band, pooled over
            dates), each channel takes its band's values (``bands[band]``). The population std,
            as ``torchvision.transforms.Normalize(mean, std)`` expects.

        Raises
        ------
        DatasetContentError
            ``stats.json`` has no statistics for a channel's band (no valid pixel was seen).
        """
        st = self.stats
        if st.get("mean") is not None and st.get("std") is not None:
            return np.asarray(st["mean"], dtype=np.float64), np.asarray(st["std"], dtype=np.float64)
        bands = st.get("bands") or {}
        chans = self.channels()
        missing = sorted({c["band"] for c in chans if c["band"] not in bands})
        if missing:
            raise DatasetContentError(f"stats.json of {self.location!r} has no statistics for band(s) {missing} "
                                      f"(bands with statistics: {sorted(bands)}); were all their pixels nodata?")
        return (np.array([bands[c["band"]]["mean"] for c in chans], dtype=np.float64),
                np.array([bands[c["band"]]["std"] for c in chans], dtype=np.float64))

    @property
    def classes(self) -> list[dict[str, Any]] | None:
        """The label classes: ``[{"id", "name", "colour", ...}, ...]`` by id, None without labels.

        ``stats.json`` version 2's ``classes`` when present. Otherwise the recipe's class names
        (:func:`eochips.plan.class_names`) over the ids of ``class_pixels`` and the names, with the
        colour (``"#rrggbb"``) of the first kept unit's labels file's colour map (None where it has none).
        """
        if "classes" in self.stats:
            return None if self.stats["classes"] is None else [dict(c) for c in self.stats["classes"]]
        from .plan import class_names, load_plan

        recipe = load_plan(self._store).recipe
        if recipe.labels is None:
            return None
        names = class_names(recipe)
        pixels = self.stats.get("code_pixels") or self.stats.get("class_pixels") or {}
        ids = sorted({*names, *(int(k) for k in pixels if str(k).lstrip("-").isdigit())})
        cmap = self._colormap()
        return [{"id": c, "name": names.get(c, str(c)), "colour": cmap.get(c)} for c in ids]

    def _colormap(self) -> dict[int, str]:
        for uid in self.kept_ids()[:1]:
            labels = self.unit_paths(uid).labels
            if labels is None:
                break
            with open_raster(labels) as src:
                try:
                    cm = src.colormap(1)
                except ValueError:  # no colour map
                    return {}
            return {int(k): "#{:02x}{:02x}{:02x}".format(*v[:3]) for k, v in cm.items()}
        return {}


def open_dataset(path: str | os.PathLike) -> ChipDataset:
    """Open a finalised eochips dataset (a folder, or a URL such as ``s3://bucket/prefix``).

    Parameters
    ----------
    path
        The dataset's root, as given to ``eochips run -o`` / ``eochips finalize``.

    Returns
    -------
    ChipDataset
        Its index (a GeoDataFrame of ``index.parquet``), ``stats.json``, splits and files.

    Raises
    ------
    NotADataset
        ``path`` does not exist, or has no ``index.parquet`` or ``stats.json`` (not finalised):
        the message names the path, what is missing and the command that makes it.
    """
    import geopandas as gpd

    store = OutputStore(path)
    loc = store.location
    if store.is_local and not store.root.is_dir():
        raise NotADataset(f"no dataset at {loc!r}: no such folder; build one with 'eochips run RECIPE -o {loc}'")
    missing = [f for f in ("index.parquet", "stats.json") if not store.exists(f)]
    if missing:
        built = store.exists("plan/plan.json") or store.exists("state.sqlite")
        fix = (f"run 'eochips finalize {loc}'" if built else
               f"build it with 'eochips run RECIPE -o {loc}' (or 'eochips finalize {loc}' after 'eochips build')")
        raise NotADataset(f"{loc!r} is not a finalised eochips dataset: it has no {' and no '.join(missing)}; {fix}")
    src = store.local_path("index.parquet") if store.is_local else io.BytesIO(store.read_bytes("index.parquet"))
    try:
        index = gpd.read_parquet(src)
    except ValueError:  # not GeoParquet (no "geo" metadata): the table without a geometry column
        import pandas as pd

        index = pd.read_parquet(src if store.is_local else io.BytesIO(store.read_bytes("index.parquet")))
    stats = json.loads(store.read_bytes("stats.json"))
    return ChipDataset(store, index, stats)
