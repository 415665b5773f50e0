"""A PyTorch ``Dataset`` over one split of a finalised eochips dataset (extra ``eochips[torch]``).

::

    from torch.utils.data import DataLoader
    from eochips.torch import ChipTorchDataset

    train = ChipTorchDataset("out", "train")
    for image, mask in DataLoader(train, batch_size=4, shuffle=True, num_workers=2):
        ...  # image (4, channel, y, x) float32, normalised; mask (4, y, x) int64 class ids

Each item is one kept unit: its ``image`` files read with rasterio and stacked in chip channel
order (:meth:`eochips.api.ChipDataset.unit_paths`), normalised per channel with the dataset's
``stats.json`` (:meth:`eochips.api.ChipDataset.normalization`): ``(x - mean) / std`` on the stored
values (raw DN for integer bands: the statistics are of the same values). Nodata pixels (each
band's own nodata value in its file, and NaN) are set to ``fill`` (0.0: the channel's mean)
*after* normalisation, so they carry no extreme value into a network; pass
``return_valid=True`` to get the validity mask too. The mask is the unit's labels file (band 1)
as int64 class ids.

Importing this module without PyTorch raises :class:`eochips.api.MissingExtraError` (an
``ImportError``) naming the extra to install.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .api import ChipDataset, DatasetContentError, MissingExtraError, UnitPaths, open_dataset, open_raster

try:
    import torch
    from torch.utils.data import Dataset as _TorchDataset
except ImportError as exc:  # torch absent (or blocked): name the extra
    raise MissingExtraError(f"eochips.torch needs PyTorch, which is not importable here ({exc}); "
                            "install it with: pip install \"eochips[torch]\"") from None

Transform = Callable[..., Any]


def read_unit(unit: UnitPaths) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read one unit's channels and labels.

    Parameters
    ----------
    unit
        The unit's files (:meth:`eochips.api.ChipDataset.unit_paths`): local paths, or URLs read
        whole through fsspec (:func:`eochips.api.open_raster`).

    Returns
    -------
    image : numpy.ndarray
        float64, shape ``(channel, y, x)``: the image files' bands concatenated in chip channel
        order, the stored values (raw DN for integer bands).
    valid : numpy.ndarray
        bool, shape ``(channel, y, x)``: False where a pixel equals its band's nodata value or is NaN.
    labels : numpy.ndarray or None
        int64, shape ``(y, x)``: band 1 of the labels file; None when the unit has none.

    Raises
    ------
    DatasetContentError
        The unit's files do not share one pixel shape (they cannot be stacked into one tensor).
    """
    parts, valids = [], []
    for path in unit.images:
        with open_raster(path) as src:
            arr = src.read().astype(np.float64)
            ok = ~np.isnan(arr)
            for b, nd in enumerate(src.nodatavals):
                if nd is not None and not np.isnan(nd):
                    ok[b] &= arr[b] != nd
        parts.append(arr)
        valids.append(ok)
    labels = None
    if unit.labels is not None:
        with open_raster(unit.labels) as src:
            labels = src.read(1).astype(np.int64)
    shapes = {a.shape[1:] for a in parts} | ({labels.shape} if labels is not None else set())
    if len(shapes) > 1:
        raise DatasetContentError(f"unit {unit.unit_id!r}: its files have different pixel shapes {sorted(shapes)} "
                                  f"({', '.join(unit.images)}{', ' + unit.labels if unit.labels else ''}); "
                                  "they cannot be stacked into one (channel, y, x) tensor")
    return np.concatenate(parts, axis=0), np.concatenate(valids, axis=0), labels


class ChipTorchDataset(_TorchDataset):
    """The kept units of one split as ``(image, mask)`` tensors.

    Parameters
    ----------
    dataset
        A finalised dataset: its folder / URL, or an opened :class:`eochips.api.ChipDataset`.
    split
        ``"train"``, ``"validation"`` (``"val"``), ``"test"`` or ``"all"``
        (:meth:`eochips.api.ChipDataset.ids`); items follow the ids file's order.
    normalize
        Apply ``(x - mean) / std`` per channel with the dataset's statistics (default). A channel
        whose std is 0 (constant) is divided by 1. False: the stored values as float32.
    fill
        The value nodata pixels take after normalisation (default 0.0, the channel mean).
    transforms
        Optional ``f(image, mask) -> (image, mask)`` applied last (tensors; ``mask`` is None for a
        dataset without labels).
    return_valid
        Also return the validity mask: items become ``(image, mask, valid)``.

    Notes
    -----
    Items: ``image`` float32 ``(channel, y, x)``; ``mask`` int64 ``(y, x)`` (class ids of the
    labels file); for a dataset without labels, ``image`` alone (or ``(image, valid)``);
    ``valid`` bool ``(channel, y, x)``. The object holds only paths and arrays (picklable), so
    ``DataLoader(num_workers=N)`` works under fork and spawn; each item opens its files anew.

    Raises
    ------
    NotADataset, DatasetContentError
        From :func:`eochips.api.open_dataset` and :meth:`eochips.api.ChipDataset.ids`; the
        statistics' channel count differs from the units' (stats.json of another build).
    """

    def __init__(self, dataset: str | os.PathLike | ChipDataset, split: str = "train", *, normalize: bool = True,
                 fill: float = 0.0, transforms: Transform | None = None, return_valid: bool = False):
        ds = dataset if isinstance(dataset, ChipDataset) else open_dataset(dataset)
        self.location = ds.location
        self.split = split
        self.units: list[UnitPaths] = ds.paths(split)
        mean, std = ds.normalization()
        self.mean = mean
        self.std = np.where(std > 0, std, 1.0)
        self.normalize = normalize
        self.fill = float(fill)
        self.transforms = transforms
        self.return_valid = return_valid
        self.channel_names = [c["name"] for c in ds.channels()]
        if len(self.channel_names) != len(mean):
            raise DatasetContentError(f"stats.json of {ds.location!r} has {len(mean)} channel statistics but the chips "
                                      f"{len(self.channel_names)} channels; run 'eochips finalize {ds.location}' again")

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int):
        unit = self.units[i]
        arr, valid, labels = read_unit(unit)
        if arr.shape[0] != len(self.mean):
            raise DatasetContentError(f"unit {unit.unit_id!r} has {arr.shape[0]} channels, the statistics of "
                                      f"{self.location!r} {len(self.mean)}")
        if self.normalize:
            arr = (arr - self.mean[:, None, None]) / self.std[:, None, None]
        arr[~valid] = self.fill
        image = torch.from_numpy(arr.astype(np.float32))
        mask = torch.from_numpy(labels) if labels is not None else None
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        out: tuple = (image,) if mask is None else (image, mask)
        if self.return_valid:
            out = (*out, torch.from_numpy(valid))
        return out[0] if len(out) == 1 else out
