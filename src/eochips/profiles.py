"""Collection profiles: one small, frozen data object per collection.

A profile says, per band name, which asset (and which band of a multi-band asset) holds it,
its dtype and fill value (NaN for float bands without one), the reflectance scale and offset,
its native pixel size and default resampling; which asset holds the QA layer and how to decode
it; and how to get the tile id, the tile coverage and the per-scene DN offset of an item. A
new sensor is a new entry in :data:`PROFILES`, nothing else.

Sources
-------
- HLS v2.0 user guide (LP DAAC, 2023), tables 6-9: S30 bands B01..B12 + B8A, L30 B01..B11;
  int16, scale 0.0001, fill -9999, 30 m; Fmask uint8 with fill 255.
- Sentinel-2 L2A: ESA product specification; 10 m B02 B03 B04 B08, 20 m B05 B06 B07 B8A B11
  B12 SCL, 60 m B01 B09; uint16, fill 0; processing baseline 04.00 (25 Jan 2022) adds
  ``BOA_ADD_OFFSET = -1000`` to reflectance DN, i.e. reflectance = (DN - 1000) / 10000.
  Earth Search v1 asset keys are common names (``blue``, ``nir08``, ``scl``); Planetary
  Computer keeps the band ids (``B02``, ``B8A``, ``SCL``).
- Landsat Collection 2 L2 (USGS LSDS-1619): uint16, scale 2.75e-5, offset -0.2, fill 0, 30 m,
  QA in ``qa_pixel`` (uint16; fill = bit 0).
- Sentinel-1 RTC (Planetary Computer ``sentinel-1-rtc``): ``vv``, ``vh`` float32 linear gamma0,
  10 m, files declare nodata -32768; eochips' fill is NaN.
- Copernicus DEM GLO-30 (Planetary Computer ``cop-dem-glo-30``): asset ``data`` float32 metres;
  eochips' fill is NaN.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .config import BandConfig, ProfileConfig, QALayerConfig
from .errors import ProfileError, RecipeError

NAN = float("nan")


@dataclass(frozen=True)
class BandSpec:
    """How one output band is read and stored.

    Attributes
    ----------
    name
        The band's name in the output (recipe name; descriptions ``name@YYYY-MM-DD``).
    asset, index
        Asset key and 1-based band index within that asset.
    dtype, nodata
        Storage dtype and fill (an integer, or NaN for floats; never 0 by default).
    scale, offset
        Physical value = DN * scale + offset (reflectance, unitless; metres for a DEM).
    resolution
        Native pixel size in metres (None: unknown).
    resampling
        GDAL resampling name used to warp the band onto a unit's grid.
    """

    name: str
    asset: str
    index: int = 1
    dtype: str = "uint16"
    nodata: float | None = 0
    scale: float = 1.0
    offset: float = 0.0
    resolution: float | None = None
    resampling: str = "bilinear"

    @property
    def key(self) -> tuple[str, int]:
        """``(asset, index)``: where the pixels are."""
        return (self.asset, self.index)


@dataclass(frozen=True)
class QASpec:
    """The QA layer of a collection: asset key, decoder (``fmask``, ``scl``, ``qa-pixel``,
    ``bqa``), dtype (kept: a uint16 QA read as uint8 would lose bits), fill, pixel size."""

    asset: str
    kind: str
    dtype: str = "uint8"
    nodata: float | None = None
    resolution: float | None = None

    def as_band(self) -> BandSpec:
        """The QA layer as a band read with nearest (QA codes must not be interpolated)."""
        return BandSpec("qa", self.asset, 1, self.dtype, self.nodata, 1.0, 0.0, self.resolution, "nearest")


@dataclass(frozen=True)
class Profile:
    """How to read one collection (see the module docstring).

    Attributes
    ----------
    name
        Profile name, e.g. ``"hls-s30"``.
    bands
        Band specs, one per common band name (``BandSpec.name`` is the common name).
    qa
        The QA layer, or None.
    tile_pattern, tile_property
        A regex with one group extracting the tile id from the item id; an item property
        holding it (tried first).
    coverage_property
        Item property holding the percent of the tile with data (HLS SPATIAL_COVERAGE).
    baseline_offset
        If true, scenes with ``s2:processing_baseline >= 04.00`` get ``offset_dn = -1000``.
    collections
        Collection ids the profile is meant for.
    """

    name: str
    bands: tuple[BandSpec, ...]
    qa: QASpec | None = None
    tile_pattern: str | None = None
    tile_property: str | None = None
    coverage_property: str | None = None
    baseline_offset: bool = False
    collections: tuple[str, ...] = ()

    def band(self, name: str) -> BandSpec:
        """The spec of a band by common name (an asset key of a single-band asset works too).

        Raises
        ------
        ProfileError
            When ``name`` is neither a band nor an asset key of this profile.
        """
        for b in self.bands:
            if b.name == name:
                return b
        for b in self.bands:
            if b.asset == name:
                return replace(b, name=name)
        raise ProfileError(f"band {name!r} is not in profile {self.name!r}; valid bands: {', '.join(sorted(b.name for b in self.bands))}")

    def asset_key(self, band: str) -> str:
        """Asset key of a band name (see :meth:`band`)."""
        return self.band(band).asset

    def resolve(self, bands: Sequence[str | BandConfig], resampling: str = "bilinear", where: str = "bands") -> tuple[BandSpec, ...]:
        """The output bands of a source: each name looked up in the profile (or given in full),
        with the recipe's overrides applied and ``resampling`` as the default.

        Raises
        ------
        ProfileError
            An unknown band name without an ``asset``.
        RecipeError
            A nodata value outside the band's dtype, or NaN for an integer dtype.
        """
        out = []
        for i, b in enumerate(bands):
            if isinstance(b, str):
                spec = replace(self.band(b), resampling=resampling)
            else:
                try:
                    base = self.band(b.asset or b.name)
                except ProfileError:
                    if b.asset is None:
                        raise
                    base = BandSpec(b.name, b.asset, 1, self.bands[0].dtype if self.bands else "uint16",
                                    self.bands[0].nodata if self.bands else None)
                over = {k: v for k, v in b.model_dump(exclude={"name"}).items() if v is not None}
                spec = replace(base, name=b.name, resampling=over.pop("resampling", resampling), **over)
            if spec.nodata is None and np.dtype(spec.dtype).kind == "f":
                spec = replace(spec, nodata=NAN)
            check_nodata(spec.nodata, spec.dtype, f"{where}.{i} ({spec.name})")
            out.append(spec)
        return tuple(out)

    def tile_of(self, item_id: str, properties) -> str | None:
        """The tile id of an item (e.g. ``"13RCN"``), or None when the profile cannot tell.

        The STAC grid extension writes ``grid:code`` as ``MGRS-20EPT``; the prefix is dropped so
        every profile names MGRS tiles alike.
        """
        if self.tile_property and properties.get(self.tile_property):
            return str(properties[self.tile_property]).removeprefix("MGRS-")
        if self.tile_pattern:
            m = re.search(self.tile_pattern, item_id)
            if m:
                return m.group(1)
        return None

    def offset_dn(self, properties) -> int:
        """Extra DN offset of a scene (S2 processing baseline >= 04.00: -1000, else 0)."""
        if not self.baseline_offset:
            return 0
        pb = properties.get("s2:processing_baseline")
        try:
            return -1000 if pb is not None and float(pb) >= 4.0 else 0
        except (TypeError, ValueError):
            return 0


def check_nodata(nodata: float | None, dtype: str, where: str) -> None:
    """Refuse a fill value the dtype cannot hold (``qa_nodata: -32768`` for uint8 overflowed in v1).

    Raises
    ------
    RecipeError
        NaN for an integer dtype, or an integer fill outside the dtype's range or not whole.
    """
    if nodata is None:
        return
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return
    if math.isnan(nodata):
        raise RecipeError(f"{where}: nodata NaN is not possible for integer dtype {dtype}; give an integer fill value")
    info = np.iinfo(dt)
    if not (info.min <= nodata <= info.max) or nodata != int(nodata):
        raise RecipeError(f"{where}: nodata {nodata:g} does not fit dtype {dtype} ({info.min}..{info.max})")


def _bands(table: dict[str, str], dtype: str, nodata: float | None, scale: float, offset: float,
           res: dict[str, float] | float | None, resampling: str = "bilinear") -> tuple[BandSpec, ...]:
    def r(asset):
        return res.get(asset) if isinstance(res, dict) else res

    return tuple(BandSpec(name, asset, 1, dtype, nodata, scale, offset, r(asset), resampling) for name, asset in table.items())


_HLS_S30 = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}
_HLS_L30 = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "nir08": "B05", "swir16": "B06",
    "swir22": "B07", "cirrus": "B09", "lwir11": "B10", "lwir12": "B11",
}
_S2_PC = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "swir16": "B11", "swir22": "B12",
}
_S2_RES = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20, "B09": 60,
           "B11": 20, "B12": 20}
_S2_ES = {k: k for k in ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "swir16", "swir22")}
_S2_ES_RES = {es: _S2_RES[pc] for es, pc in zip(_S2_ES, _S2_PC.values())}
_LANDSAT_C2 = {
    "coastal": "coastal", "blue": "blue", "green": "green", "red": "red", "nir08": "nir08",
    "swir16": "swir16", "swir22": "swir22",
}
_HLS_TILE = r"\.T(\d{2}[A-Z]{3})\."

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile("hls-s30", _bands(_HLS_S30, "int16", -9999, 0.0001, 0.0, 30), QASpec("Fmask", "fmask", "uint8", 255, 30),
                _HLS_TILE, coverage_property="SPATIAL_COVERAGE", collections=("HLSS30_2.0", "HLSS30.v2.0", "hls2-s30")),
        Profile("hls-l30", _bands(_HLS_L30, "int16", -9999, 0.0001, 0.0, 30), QASpec("Fmask", "fmask", "uint8", 255, 30),
                _HLS_TILE, coverage_property="SPATIAL_COVERAGE", collections=("HLSL30_2.0", "HLSL30.v2.0", "hls2-l30")),
        Profile("sentinel-2-l2a-earthsearch", _bands(_S2_ES, "uint16", 0, 0.0001, 0.0, _S2_ES_RES),
                QASpec("scl", "scl", "uint8", 0, 20), tile_property="grid:code", baseline_offset=True,
                collections=("sentinel-2-l2a",)),
        Profile("sentinel-2-l2a-pc", _bands(_S2_PC, "uint16", 0, 0.0001, 0.0, _S2_RES),
                QASpec("SCL", "scl", "uint8", 0, 20), tile_property="s2:mgrs_tile", baseline_offset=True,
                collections=("sentinel-2-l2a",)),
        Profile("landsat-c2-l2", _bands(_LANDSAT_C2, "uint16", 0, 2.75e-5, -0.2, 30),
                QASpec("qa_pixel", "qa-pixel", "uint16", 1, 30), collections=("landsat-c2-l2",)),
        Profile("sentinel-1-rtc", _bands({"vv": "vv", "vh": "vh"}, "float32", NAN, 1.0, 0.0, 10),
                collections=("sentinel-1-rtc",)),
        Profile("cop-dem-glo-30", _bands({"elevation": "data"}, "float32", NAN, 1.0, 0.0, 30),
                collections=("cop-dem-glo-30",)),
    ]
}


def get_profile(spec: str | ProfileConfig) -> Profile:
    """Resolve a recipe's ``profile`` entry to a :class:`Profile`.

    Raises
    ------
    ProfileError
        Unknown profile name (the message lists the built-in ones).
    RecipeError
        An inline profile whose fill values do not fit its dtypes.
    """
    if isinstance(spec, ProfileConfig):
        bands = []
        for name, b in spec.bands.items():
            if isinstance(b, str):
                bands.append(BandSpec(name, b, 1, spec.dtype, spec.nodata, spec.scale, spec.offset))
            else:
                over = {k: v for k, v in b.model_dump(exclude={"name"}).items() if v is not None}
                bands.append(BandSpec(name, over.pop("asset", name), over.pop("index", 1), over.pop("dtype", spec.dtype),
                                      over.pop("nodata", spec.nodata), over.pop("scale", spec.scale),
                                      over.pop("offset", spec.offset), **over))
        qa = _qa(spec.qa)
        for b in bands:
            check_nodata(b.nodata, b.dtype, f"profile.bands.{b.name}")
        if qa is not None:
            check_nodata(qa.nodata, qa.dtype, "profile.qa")
        return Profile(spec.name, tuple(bands), qa, spec.tile_pattern, spec.tile_property, spec.coverage_property,
                       spec.baseline_offset)
    try:
        return PROFILES[spec]
    except KeyError:
        raise ProfileError(f"unknown profile {spec!r}; built-in profiles: {', '.join(sorted(PROFILES))}") from None


def _qa(cfg: QALayerConfig | None) -> QASpec | None:
    if cfg is None or cfg.kind == "none":
        return None
    return QASpec(cfg.asset, cfg.kind, cfg.dtype, cfg.nodata, cfg.resolution)
