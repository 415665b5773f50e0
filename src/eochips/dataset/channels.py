"""A chip's channels: which band of which file is channel ``i`` of the chip, and on which DN scale.

A unit's channels are its ``image`` files in ``metrics["file_order"]`` (the order the layouts
wrote them, :func:`eochips.dataset.image_files`), each file's bands in order: the
``(channel, y, x)`` array a loader stacks. A file band's description is ``"{band}@{YYYY-MM-DD}"``
(or ``"{band}"``); the date varies per chip, so a channel is identified by its position. Its
name is ``"{band}"`` when no band occurs twice in the chip (one step), else ``"{band}@t{k}"``
(``k``: the 0-based occurrence of that band in the chip) -- the lead's contract of issue 14.

Scale and offset: physical = stored * scale + offset. A file's declared offset may carry its
scene's DN offset (``offset_dn * scale``, :func:`eochips.writers.layouts._offsets`: Sentinel-2
L2A from processing baseline 04.00 on). :func:`dn_shift` turns it into the whole number of DN
that puts the file's values on the DN scale of the profile's base offset (the band's offset in
the recipe's profile), so every chip pools on one scale: ``stats.json`` channels declare that
base offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OutputError
from ..reading import error_text
from ..writers import OutputStore

__all__ = ["FileBand", "Channel", "read_file", "channel_names", "dn_shift", "base_offsets", "chip_channels"]

#: How close ``(file offset - base offset) / scale`` must be to an integer to count as whole DN.
SHIFT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FileBand:
    """One band of one image file, as the file declares it.

    Attributes
    ----------
    path : str
        The file's path relative to the dataset root.
    band : str
        The band's name: its description up to ``@`` (``"band{i}"`` without a description).
    dtype : str
        numpy dtype name of the stored values.
    nodata : float or None
        The file's declared fill (NaN allowed), None when none is declared.
    scale, offset : float
        The file's scale and offset (physical = stored * scale + offset); 1 and 0 when not set.
    """

    path: str
    band: str
    dtype: str
    nodata: float | None
    scale: float
    offset: float


@dataclass(frozen=True)
class Channel:
    """Channel ``index`` of every chip of a dataset (``stats.json`` ``channels`` entries).

    ``offset`` is the base offset of the band's profile, which every file's values are shifted
    onto (:func:`dn_shift`); ``units`` is ``"DN"`` for integer values (digital numbers:
    physical = DN * scale + offset) and for floats with a scale or offset, ``"physical"`` for
    floats stored as physical values (scale 1, offset 0: a DEM in metres, backscatter in dB).
    """

    index: int
    name: str
    band: str
    step: int
    dtype: str
    nodata: float | None
    scale: float
    offset: float

    @property
    def units(self) -> str:
        plain = np.dtype(self.dtype).kind == "f" and self.scale == 1 and self.offset == 0
        return "physical" if plain else "DN"

    def as_json(self) -> dict[str, Any]:
        """The ``stats.json`` entry: nodata as a number, ``null`` or the string ``"nan"``."""
        nd: Any = self.nodata
        if nd is not None:
            nd = "nan" if math.isnan(nd) else (int(nd) if float(nd).is_integer() and np.dtype(self.dtype).kind in "iu" else float(nd))
        return {"index": self.index, "name": self.name, "band": self.band, "step": self.step, "dtype": self.dtype,
                "nodata": nd, "scale": self.scale, "offset": self.offset, "units": self.units}


def read_file(store: OutputStore, rel: str, attempts: int = 3) -> tuple[np.ndarray, list[FileBand]]:
    """Pixels and band declarations of one image file of the dataset.

    Parameters
    ----------
    store : OutputStore
        The dataset (local or object storage; from object storage the object is fetched whole
        and decoded in memory, again up to ``attempts`` times when it does not decode).
    rel : str
        The file's path relative to the dataset root.

    Returns
    -------
    (numpy.ndarray, list of FileBand)
        ``(band, y, x)`` pixels in the file's dtype, and one :class:`FileBand` per band.

    Raises
    ------
    OutputError
        The file still does not decode as a GeoTIFF (named).
    """
    import rasterio
    from rasterio.io import MemoryFile

    def _read(ds) -> tuple[np.ndarray, list[FileBand]]:
        bands = [FileBand(rel, (d or f"band{i + 1}").split("@")[0], ds.dtypes[i], ds.nodatavals[i],
                          float(ds.scales[i]), float(ds.offsets[i])) for i, d in enumerate(ds.descriptions)]
        return ds.read(), bands

    if store.is_local:
        with rasterio.open(store.local_path(rel)) as ds:
            return _read(ds)
    last: Exception | None = None
    for _ in range(attempts):
        data = store.read_bytes(rel)
        try:
            with MemoryFile(data) as mem, mem.open() as ds:
                return _read(ds)
        except rasterio.errors.RasterioError as exc:
            last = exc
    raise OutputError(f"file {rel} of {store.location!r} does not decode as a GeoTIFF after {attempts} reads "
                      f"({error_text(last)}); check the object, then rerun 'eochips finalize'")


def channel_names(bands: list[str]) -> list[tuple[str, int]]:
    """``(name, step)`` per channel of a chip whose channels hold ``bands`` in order.

    ``step`` is the 0-based occurrence of the band in the chip; the name is the band when no
    band occurs twice, else ``"{band}@t{step}"``.

    >>> channel_names(["red", "green"])
    [('red', 0), ('green', 0)]
    >>> channel_names(["red", "green", "red", "green"])
    [('red@t0', 0), ('green@t0', 0), ('red@t1', 1), ('green@t1', 1)]
    """
    seen: dict[str, int] = {}
    steps = []
    for b in bands:
        steps.append(seen.get(b, 0))
        seen[b] = steps[-1] + 1
    one = all(n == 1 for n in seen.values())
    return [(b if one else f"{b}@t{k}", k) for b, k in zip(bands, steps)]


def dn_shift(offset: float, base: float, scale: float, dtype: str, where: str) -> float:
    """DN to add to a file band's stored values to put them on the base offset's DN scale.

    ``stored * scale + offset == (stored + shift) * scale + base``, so
    ``shift = (offset - base) / scale``; Sentinel-2 baseline 04.00: ``(-0.1 - 0) / 1e-4 = -1000``.

    Parameters
    ----------
    offset, base, scale : float
        The file band's offset, the profile's base offset and the scale (physical units).
    dtype : str
        The stored dtype: for integers the shift must be whole DN (within
        :data:`SHIFT_TOLERANCE`) and is returned as an int.
    where : str
        The file and band, for the message.

    Raises
    ------
    OutputError
        An integer band whose offset is not a whole number of DN away from the base offset.
    """
    if offset == base or scale == 0:
        return 0
    shift = (offset - base) / scale
    if np.dtype(dtype).kind in "iu":
        if abs(shift - round(shift)) > SHIFT_TOLERANCE * max(1.0, abs(shift)):
            raise OutputError(f"{where}: offset {offset} is {shift} DN (not a whole number) from the profile's base offset "
                              f"{base} at scale {scale}; stats cannot pool it on one DN scale: check the profile's offset")
        return int(round(shift))
    return shift


def base_offsets(plan) -> dict[str, float]:
    """``{band name: base offset}`` of the recipe's sources (the profile band's offset, without
    any scene DN offset); a name two sources share with different offsets is left out."""
    out: dict[str, float] = {}
    clash = set()
    for sp in plan.sources.values():
        for b in sp.bands:
            if b.name in out and out[b.name] != b.offset:
                clash.add(b.name)
            out.setdefault(b.name, float(b.offset))
    return {k: v for k, v in out.items() if k not in clash}


def chip_channels(bands: list[FileBand], bases: dict[str, float]) -> tuple[list[Channel], list[float]]:
    """The channels of one chip and the DN shift of each.

    Parameters
    ----------
    bands : list of FileBand
        The chip's file bands in channel order.
    bases : dict
        :func:`base_offsets`; a band not in it keeps its file's offset (shift 0).

    Returns
    -------
    (list of Channel, list of float)

    Raises
    ------
    OutputError
        See :func:`dn_shift`.
    """
    chans, shifts = [], []
    for i, (fb, (name, step)) in enumerate(zip(bands, channel_names([b.band for b in bands]))):
        base = bases.get(fb.band, fb.offset)
        shifts.append(dn_shift(fb.offset, base, fb.scale, fb.dtype, f"file {fb.path} band {i + 1} ({fb.band})"))
        chans.append(Channel(i, name, fb.band, step, fb.dtype, fb.nodata, fb.scale, base))
    return chans, shifts


def same_layout(a: list[Channel], b: list[Channel]) -> bool:
    """Whether two chips' channels agree in order, names, dtypes, nodata, scales and offsets."""
    def key(c: Channel) -> tuple:
        nd = "nan" if c.nodata is not None and math.isnan(c.nodata) else c.nodata
        return (c.name, c.dtype, nd, c.scale, c.offset)

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))
