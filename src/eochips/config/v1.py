"""Recipe version 1 (eochips 0.1): one sensor, one grid fixed before the search, one scene per
time step. Kept only to read version-1 files: :func:`eochips.config.upgrade.upgrade_v1` turns a
validated :class:`RecipeV1` into a version-2 mapping.

Validating with these models first means that a bad version-1 file gets a message naming the
field as the user wrote it (``grid.chip_size``), not its version-2 successor. The JSON Schema
of this version is committed as ``schema/recipe-v1.json``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .models import AOIConfig, CloudCover, CoverageThresholds, check_interval  # unchanged from version 1

V1_STRATEGIES = ("all", "first-middle-last", "least-cloudy")
"""The selection strategies a version-1 recipe could name (version 2 has more, as ``kind``)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchConfig(_Model):
    """Where and how to look for scenes.

    ``catalog`` is a STAC API root URL (``https://.../stac``), or a static catalog: a path or
    URL to an ItemCollection / Catalog JSON or a stac-geoparquet file. Both kinds apply the
    same filters (collections, AOI intersection, datetime, cloud cover, id pattern).
    """

    catalog: str = Field(..., description="STAC API URL, or path/URL of a static ItemCollection, Catalog or stac-geoparquet file.")
    collections: list[str] = Field(..., min_length=1, description="Collection ids to search.")
    datetime: str | None = Field(None, description="RFC 3339 interval 'START/END' (dates or datetimes, UTC).")
    cloud_cover: CloudCover = Field(default_factory=CloudCover)
    id_pattern: str | None = Field(None, description="Regular expression an item id must match (e.g. a tile id).")
    sortby: list[str] | None = Field(None, description="STAC API sort fields, e.g. ['-properties.eo:cloud_cover'].")
    page_size: int = Field(100, gt=0, le=10000, description="Items per API page.")
    max_items: int | None = Field(None, gt=0, description="Stop after this many items.")
    auth: Literal["none", "earthdata", "planetary-computer"] = Field(
        "none", description="earthdata: bearer token from $EARTHDATA_TOKEN or ~/.netrc; planetary-computer: sign hrefs."
    )
    max_retries: int = Field(5, ge=0, le=20, description="Retries for the API requests (5xx, 429, resets).")

    @field_validator("datetime")
    @classmethod
    def _interval(cls, v: str | None) -> str | None:
        return check_interval(v)

    @field_validator("id_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class GridConfig(_Model):
    """The target grid that chips are cut from.

    Either aligned to a label raster (its CRS, resolution and pixel edges: the seed's CDL
    EPSG:5070 30 m case) or given as ``crs`` + ``resolution`` (+ optional ``origin``, the
    top-left corner of pixel (0, 0); default: the AOI's top-left snapped to the resolution).
    """

    label_raster: str | None = Field(None, description="Align the grid to this raster.")
    crs: str | None = Field(None, description="Target CRS when no label raster is given, e.g. EPSG:5070.")
    resolution: float | None = Field(None, gt=0, description="Pixel size in CRS units (metres).")
    origin: tuple[float, float] | None = Field(None, description="x, y of the grid's top-left corner.")
    chip_size: int = Field(224, gt=0, le=10000, description="Chip side in pixels.")
    min_aoi_fraction: float = Field(1.0, gt=0, le=1, description="Keep chips whose area inside the AOI is at least this fraction.")

    @model_validator(mode="after")
    def _source(self) -> "GridConfig":
        if self.label_raster is None and (self.crs is None or self.resolution is None):
            raise ValueError("give label_raster, or both crs and resolution")
        return self


class ProfileConfig(_Model):
    """A generic collection profile declared in the recipe (see :mod:`eochips.profiles`)."""

    name: str = "generic"
    bands: dict[str, str] = Field(..., min_length=1, description="Common band name -> asset key.")
    dtype: Literal["uint8", "uint16", "int16", "int32", "float32"] = "uint16"
    nodata: float | None = Field(0, description="Fill value of the reflectance assets.")
    scale: float = 1.0
    offset: float = 0.0
    qa_asset: str | None = None
    qa_kind: Literal["fmask", "scl", "none"] = "none"
    qa_nodata: int | None = None
    tile_pattern: str | None = Field(None, description="Regex with one group that extracts the tile id from the item id.")


class SelectionConfig(_Model):
    """How scenes are chosen for each chip (see :mod:`eochips.selection`)."""

    strategy: str = Field("first-middle-last", description="A registered strategy name.")

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in V1_STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; valid: {', '.join(sorted(V1_STRATEGIES))}")
        return v
    unit: Literal["tile", "chip"] = Field(
        "tile", description="tile: chips take the scenes of their nearest tile (seed 001); chip: any scene over the chip."
    )
    coverage_thresholds: CoverageThresholds = Field([100, 90, 80, 70, 60, 50], min_length=1)
    min_scenes: int = Field(3, gt=0)
    n_scenes: int = Field(1, gt=0, description="Scenes to keep (least-cloudy).")


class MaskSource(_Model):
    """One source of cloud / shadow / snow masks (see :mod:`eochips.qa`); sources are combined by union.

    - ``fmask``: the HLS Fmask QA asset; ``cloud_bits`` / ``shadow_bits`` choose the bits.
    - ``scl``: the Sentinel-2 L2A SCL asset (nearest); ``cloud_classes`` / ``shadow_classes``.
    - ``s2cloudless``: the model on ``bands`` (asset keys in s2cloudless's order, L1C reflectance
      = DN * ``scale``) read at ``working_resolution`` metres.
    - ``onnx``: ``model`` (``ukis-csmask`` or a ``.onnx`` path) on ``bands`` named by
      ``band_order`` (common names), at ``working_resolution``.
    """

    kind: Literal["fmask", "scl", "s2cloudless", "onnx"]
    cloud_bits: list[Literal["cirrus", "cloud", "adjacent", "shadow", "snow_ice", "water"]] = ["cloud"]
    shadow_bits: list[Literal["cirrus", "cloud", "adjacent", "shadow", "snow_ice", "water"]] = ["shadow"]
    cloud_classes: list[int] = [8, 9, 10]
    shadow_classes: list[int] = [3]
    bands: list[str] = Field(default_factory=list, description="Asset keys the model reads.")
    band_order: list[str] = Field(default_factory=list, description="Common names of `bands` (onnx).")
    scale: float = Field(0.0001, gt=0, description="DN -> reflectance 0..1.")
    working_resolution: float | None = Field(None, gt=0, description="Metres; default: the chip grid's.")
    threshold: float = Field(0.4, gt=0, lt=1)
    average_over: int = Field(4, ge=0)
    dilation_size: int = Field(2, ge=0)
    model: str = "ukis-csmask"
    product_level: Literal["l1c", "l2a"] = "l1c"


class QAConfig(_Model):
    """Per-chip QA rules (seed 001 by default) and optional cloud-mask filters."""

    bad_fmask_bits: list[Literal["cirrus", "cloud", "adjacent", "shadow", "snow_ice", "water"]] = Field(
        ["cirrus", "cloud", "shadow", "snow_ice"], description="Fmask bits that make a pixel bad."
    )
    max_bad_pct: float = Field(5.0, ge=0, le=100, description="Keep chips whose worst date has bad_pct < this.")
    max_nodata_pixels: int = Field(0, ge=0, description="Keep chips with at most this many fill pixels (any band, any date).")
    masks: list[MaskSource] = Field(default_factory=list, description="Mask sources; fractions go to the index.")
    dilation: int = Field(0, ge=0, le=50, description="Grow cloud and shadow masks by this many pixels.")
    max_cloud_fraction: float | None = Field(None, ge=0, le=1, description="Drop chips whose worst date has more cloud.")
    max_shadow_fraction: float | None = Field(None, ge=0, le=1, description="Drop chips whose worst date has more shadow.")
    quicklook: bool = Field(False, description="Write quicklooks/{chip_id}.png: RGB per date with the masks outlined.")


class LabelsConfig(_Model):
    """Where labels come from (raster + reclass table, or vector polygons)."""

    raster: str | None = Field(None, description="Label raster (defaults to grid.label_raster).")
    reclass: str | dict[int, int] | None = Field(None, description="'cdl-13', or a {source code: class} table.")
    vector: str | None = Field(None, description="GeoJSON / GeoPackage polygons.")
    class_field: str | None = Field(None, description="Attribute holding the class (vector labels).")
    classes: dict[str, int] | None = Field(None, description="Attribute value -> class id (vector labels).")
    class_names: dict[int, str] | None = None
    unknown_class: int = Field(0, ge=0, le=255, description="Class given to codes missing from the reclass table.")
    strict: bool = Field(False, description="Fail on codes missing from the reclass table instead of mapping them.")
    nodata_class: int = Field(0, ge=0, le=255)
    max_nodata_pixels: int | None = Field(0, ge=0, description="Drop chips with more label-nodata pixels than this (None: keep).")
    min_labelled_fraction: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _one_source(self) -> "LabelsConfig":
        if self.vector is not None and (self.class_field is None or self.classes is None):
            raise ValueError("vector labels need class_field and classes")
        return self


class CloudMaskConfig(_Model):
    """Seed 000's realistic cloud masks (ClarkCGA cloud-gap-filling-td @8130cd3): a second
    search for cloudy scenes; per chip, ``n_scenes`` of them chosen by date (seeded); the Fmask
    cloud bit as a binary mask per scene (fill 255 stays nodata), written as
    ``{chip_id}_{i}_cmask.tif`` and listed in ``fmask_tracker.csv``."""

    cloud_cover: CloudCover = Field(default_factory=lambda: CloudCover(min=30, max=80))
    datetime: str | None = Field(None, description="Interval of the cloudy search (default: search.datetime).")
    coverage_thresholds: CoverageThresholds = Field([100, 90, 80, 70, 60, 50], min_length=1)
    min_scenes: int = Field(6, gt=0)
    n_scenes: int = Field(6, gt=0)
    seed: int = 42
    bits: list[Literal["cirrus", "cloud", "adjacent", "shadow", "snow_ice"]] = ["cloud"]
    tracker: str = Field("fmask_tracker.csv", pattern=r"^[A-Za-z0-9_.-]+$")  # a file name in the dataset folder

    @model_validator(mode="after")
    def _enough(self) -> "CloudMaskConfig":
        if self.n_scenes > self.min_scenes:
            raise ValueError(f"n_scenes ({self.n_scenes}) cannot exceed min_scenes ({self.min_scenes})")
        return self


class ReadingConfig(_Model):
    """Resampling and I/O for the windowed reads."""

    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"
    qa_resampling: Literal["nearest"] = "nearest"
    band_resampling: dict[str, Literal["nearest", "bilinear", "cubic", "average"]] = Field(default_factory=dict)
    threads: int = Field(16, ge=1, le=64, description="Reading threads per worker (over assets: they overlap network waits; warps and writes use one thread per core).")
    max_retries: int = Field(4, ge=0, le=20)
    http_timeout: int = Field(60, gt=0, le=3600, description="Seconds before an HTTP request for an asset gives up (then retried).")
    gdal_cachemax_mb: int = Field(128, ge=16)


class OutputConfig(_Model):
    """File layout of the written chips."""

    layout: Literal["seed-001"] = "seed-001"
    compress: Literal["deflate", "lzw", "zstd", "none"] = "deflate"
    level: int = Field(6, ge=1, le=12)
    write_qa: bool = True


class SplitConfig(_Model):
    seed: int = 42
    train_fraction: float = Field(0.8, gt=0, lt=1)


class DatasetConfig(_Model):
    split: SplitConfig = Field(default_factory=SplitConfig)
    stats_on: Literal["train", "all"] = Field("train", description="Chips the band statistics and class weights use.")
    percentiles: tuple[float, float] = (1.5, 98.5)


class EngineConfig(_Model):
    workers: int | None = Field(None, gt=0, description="Dask workers (default: CPU cores).")
    scheduler: str | None = Field(None, description="tcp://HOST:PORT of an existing Dask scheduler.")
    processes: bool = True
    batch_chips: int = Field(128, gt=0, le=100000, description="Most chips in one worker task (chips sharing scenes are batched so shared COG tiles are read once).")


class RecipeV1(_Model):
    """A complete eochips recipe (version 1)."""

    version: Literal[1] = 1
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    aoi: AOIConfig
    search: SearchConfig
    profile: str | ProfileConfig = Field(..., description="A built-in profile name (eochips profiles) or an inline profile.")
    bands: list[str] = Field(..., min_length=1, description="Common band names, in output order.")
    grid: GridConfig
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    labels: LabelsConfig | None = None
    cloud_masks: CloudMaskConfig | None = None
    reading: ReadingConfig = Field(default_factory=ReadingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)


