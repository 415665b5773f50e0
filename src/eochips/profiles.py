"""Collection profiles: one small, frozen data object per collection.

A profile says which asset holds each common band name, the assets' dtype and fill value,
the reflectance scale and offset, the QA asset and how to decode it, and how to get the tile
id of an item. A new sensor is a new entry in :data:`PROFILES`, nothing else.

Sources
-------
- HLS v2.0 user guide (LP DAAC, 2023), tables 6-9: S30 bands B01..B12 + B8A, L30 B01..B11;
  int16, scale 0.0001, fill -9999; Fmask uint8 with fill 255.
- Sentinel-2 L2A: ESA product specification; processing baseline 04.00 (25 Jan 2022) adds
  ``BOA_ADD_OFFSET = -1000`` to reflectance DN, i.e. reflectance = (DN - 1000) / 10000.
  Earth Search v1 asset keys are common names (``blue``, ``nir08``, ``scl``); Planetary
  Computer keeps the band ids (``B02``, ``B8A``, ``SCL``).
- Landsat Collection 2 L2 (USGS LSDS-1619): uint16, scale 2.75e-5, offset -0.2, fill 0,
  QA in ``qa_pixel``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from .config import ProfileConfig
from .errors import ProfileError


@dataclass(frozen=True)
class Profile:
    """How to read one collection.

    Attributes
    ----------
    name
        Profile name, e.g. ``"hls-s30"``.
    bands
        Common band name -> asset key, e.g. ``{"nir08": "B8A"}``.
    dtype, nodata
        Storage dtype and fill value of the reflectance assets.
    scale, offset
        Physical value = DN * scale + offset (reflectance, unitless).
    qa_asset, qa_kind, qa_nodata
        The QA asset key, its decoder (``"fmask"``, ``"scl"`` or ``"none"``) and its fill value.
    tile_pattern
        Regular expression with one group extracting the tile id from the item id.
    tile_property
        Item property holding the tile id (tried before ``tile_pattern``).
    coverage_property
        Item property holding the percent of the tile with data (HLS SPATIAL_COVERAGE).
    baseline_offset
        If true, scenes with ``s2:processing_baseline >= 04.00`` get ``offset_dn = -1000``.
    """

    name: str
    bands: Mapping[str, str]
    dtype: str
    nodata: float | None
    scale: float = 1.0
    offset: float = 0.0
    qa_asset: str | None = None
    qa_kind: str = "none"
    qa_nodata: int | None = None
    tile_pattern: str | None = None
    tile_property: str | None = None
    coverage_property: str | None = None
    baseline_offset: bool = False
    collections: tuple[str, ...] = field(default=())

    def asset_key(self, band: str) -> str:
        """Asset key of a common band name (an asset key itself is accepted too).

        Raises
        ------
        ProfileError
            When ``band`` is neither a common name nor an asset key of this profile.
        """
        if band in self.bands:
            return self.bands[band]
        if band in self.bands.values():
            return band
        raise ProfileError(
            f"band {band!r} is not in profile {self.name!r}; valid bands: {', '.join(sorted(self.bands))}"
        )

    def tile_of(self, item_id: str, properties: Mapping) -> str | None:
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

    def offset_dn(self, properties: Mapping) -> int:
        """Extra DN offset of a scene (S2 processing baseline >= 04.00: -1000, else 0)."""
        if not self.baseline_offset:
            return 0
        pb = properties.get("s2:processing_baseline")
        try:
            return -1000 if pb is not None and float(pb) >= 4.0 else 0
        except (TypeError, ValueError):
            return 0


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
_S2_ES = {k: k for k in ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "swir16", "swir22")}
_LANDSAT_C2 = {
    "coastal": "coastal", "blue": "blue", "green": "green", "red": "red", "nir08": "nir08",
    "swir16": "swir16", "swir22": "swir22",
}
_HLS_TILE = r"\.T(\d{2}[A-Z]{3})\."

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile("hls-s30", _HLS_S30, "int16", -9999, 0.0001, 0.0, "Fmask", "fmask", 255, _HLS_TILE,
                coverage_property="SPATIAL_COVERAGE", collections=("HLSS30_2.0", "HLSS30.v2.0", "hls2-s30")),
        Profile("hls-l30", _HLS_L30, "int16", -9999, 0.0001, 0.0, "Fmask", "fmask", 255, _HLS_TILE,
                coverage_property="SPATIAL_COVERAGE", collections=("HLSL30_2.0", "HLSL30.v2.0", "hls2-l30")),
        Profile("sentinel-2-l2a-earthsearch", _S2_ES, "uint16", 0, 0.0001, 0.0, "scl", "scl", 0,
                tile_property="grid:code", baseline_offset=True, collections=("sentinel-2-l2a",)),
        Profile("sentinel-2-l2a-pc", _S2_PC, "uint16", 0, 0.0001, 0.0, "SCL", "scl", 0,
                tile_property="s2:mgrs_tile", baseline_offset=True, collections=("sentinel-2-l2a",)),
        Profile("landsat-c2-l2", _LANDSAT_C2, "uint16", 0, 2.75e-5, -0.2, "qa_pixel", "none", 1,
                collections=("landsat-c2-l2",)),
        Profile("sentinel-1-rtc", {"vv": "vv", "vh": "vh"}, "float32", None, 1.0, 0.0, collections=("sentinel-1-rtc",)),
        Profile("cop-dem-glo-30", {"elevation": "data"}, "float32", None, 1.0, 0.0, collections=("cop-dem-glo-30",)),
    ]
}


def get_profile(spec: str | ProfileConfig) -> Profile:
    """Resolve a recipe's ``profile`` entry to a :class:`Profile`.

    Raises
    ------
    ProfileError
        Unknown profile name (the message lists the built-in ones).
    """
    if isinstance(spec, ProfileConfig):
        return Profile(
            spec.name, dict(spec.bands), spec.dtype, spec.nodata, spec.scale, spec.offset,
            spec.qa_asset, spec.qa_kind, spec.qa_nodata, spec.tile_pattern,
        )
    try:
        return PROFILES[spec]
    except KeyError:
        raise ProfileError(f"unknown profile {spec!r}; built-in profiles: {', '.join(sorted(PROFILES))}") from None
