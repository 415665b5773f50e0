"""Recipe version 2: named sources, grids made from a label raster, a CRS or a selected scene,
units in pixels or metres, ordered filters, layouts and finalizers.

Every model forbids unknown keys and is frozen. Every choice among implementations is a
tagged variant: a mapping with a ``kind`` key, validated as a pydantic discriminated union
and paired with the function registered under the same name (selection strategies in
:mod:`eochips.selection`, samplers in :mod:`eochips.sampling`, mask sources in
:mod:`eochips.qa`, filters in :mod:`eochips.filters`, layouts in :mod:`eochips.writers`,
splits and finalizers in :mod:`eochips.dataset`). ``tests/test_config.py`` checks that the
two lists of names are the same.

File fields are typed :data:`FilePath` (a local path) or :data:`Location` (a path or a
URL); :func:`eochips.config.loading.resolve_paths` finds them by that type and makes them
absolute against the recipe file's folder (or the working directory for built-in recipes
and ``--set`` values), so a plan can be built from any folder.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


class PathMarker:
    """Marks a string field as a file path (``url_ok``: or a URL) in :data:`FilePath`, :data:`Location`."""

    def __init__(self, url_ok: bool):
        self.url_ok = url_ok

    def __repr__(self) -> str:  # pragma: no cover - shown in pydantic reprs only
        return f"PathMarker(url_ok={self.url_ok})"


FilePath = Annotated[str, PathMarker(url_ok=False)]
"""A local file path; relative paths are resolved against the recipe's folder."""
Location = Annotated[str, PathMarker(url_ok=True)]
"""A local path or a URL (``https://``, ``s3://``); relative paths are resolved like :data:`FilePath`."""

RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode")
Resampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode"]
DType = Literal["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]
NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no .inf / .nan unless a field says so


Fill = Annotated[float, Field(allow_inf_nan=True)]
"""A fill (nodata) value: any number, NaN included (``.nan`` for a float band)."""


def check_interval(v: str | None) -> str | None:
    """An RFC 3339 interval ``START/END`` (dates or datetimes; ``..`` or empty for an open end).

    The ends are compared as instants: a datetime with an offset (``Z``, ``+02:00``) is that
    instant; a date or a datetime without an offset is UTC; a date-only END covers that whole
    day (as :func:`eochips.search.scene.parse_interval` reads it), so
    ``2021-06-01/2021-07-31T23:59:59Z`` and ``2021-06-01T12:00:00Z/2021-06-01`` are valid.

    Raises
    ------
    ValueError
        Not two parts, a part that is not ISO 8601, or START after END.
    """
    if v is None:
        return v
    parts = v.split("/")
    if len(parts) != 2:
        raise ValueError("expected an interval 'START/END' (e.g. 2022-03-01/2022-09-30; '..' for an open end)")
    start, end = (p.strip() for p in parts)
    when = [_instant(part, is_end=i == 1) for i, part in enumerate((start, end))]
    if when[0] is not None and when[1] is not None and when[0] > when[1]:
        raise ValueError(f"start {start!r} is after end {end!r}")
    return v


def _instant(part: str, is_end: bool):
    """The UTC instant of one end of an interval (None for an open end); see :func:`check_interval`."""
    from datetime import datetime as _dt
    from datetime import timedelta, timezone

    if part in ("", ".."):
        return None
    try:
        dt = _dt.fromisoformat(part.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{part!r} is not an ISO 8601 date or datetime (e.g. 2022-03-01)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    if is_end and len(part) == 10:  # a date-only end: the whole day
        dt += timedelta(days=1) - timedelta(microseconds=1)
    return dt.astimezone(timezone.utc)


UNIT_ID_FIELDS = {"row", "col", "grid", "tile", "date", "n", "product"}
"""Fields of ``units.id``: chip row/col, the grid (a scene id), tile, the grid scene's ``date``
(a date: ``{date:%Y%m%d}``), ``product`` (the grid scene's ``s2:product_uri`` without the trailing
``_<timestamp>.SAFE``, else its id: BigEarthNet's patch names) and ``n``, the 1-based row-major position of the chip among the
grid's windows (Clay's tile.py counter). A template needs ``{row}`` and ``{col}``, or ``{n}``."""


def _template_fields(template: str) -> set[str]:
    import string

    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:
        return set()


def _unit_id(v: str | None) -> str | None:
    if v is not None:
        check_template(v, UNIT_ID_FIELDS, need_any=() if "n" in _template_fields(v) else ({"row", "col"},))
        from ..writers.store import check_path_template

        check_path_template(v, UNIT_ID_FIELDS, "id")  # an id names files: no '..', '\\', ':', NUL
    return v


def _regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return v


# --------------------------------------------------------------------------------------
# area of interest

class AOIConfig(_Model):
    """The area of interest: exactly one of ``bbox``, ``geometry`` or ``path``."""

    bbox: tuple[float, float, float, float] | None = Field(None, description="minx, miny, maxx, maxy in `crs`.")
    geometry: dict[str, Any] | None = Field(None, description="GeoJSON Geometry, Feature or FeatureCollection.")
    path: FilePath | None = Field(None, description="A vector file (GeoJSON, GeoPackage) whose union is the AOI.")
    crs: str = Field("EPSG:4326", description="CRS of bbox / geometry (GeoJSON is EPSG:4326 unless said otherwise).")
    row: int | Literal["all"] | None = Field(None, description=(
        "A tile list (`path`, one feature per tile, e.g. MGRS tiles): the 0-based row to use (one job per row, as Clay's "
        "--index / AWS_BATCH_JOB_ARRAY_INDEX), or 'all' for every row as its own tile; default: the union of the file."))
    id_field: str = Field("name", description="With `row`: the property holding the tile id (Clay's tile file: name).")

    @field_validator("row")
    @classmethod
    def _row(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError(f"row must be a 0-based row index (>= 0) or 'all', got {v}")
        return v

    @field_validator("geometry")
    @classmethod
    def _finite(cls, v):
        def walk(x: Any) -> None:
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"coordinates must be finite numbers (got {x})")
            if isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
            elif isinstance(x, dict):  # the geometry parts of GeoJSON (properties may hold anything)
                for k in ("coordinates", "geometry", "geometries", "features", "bbox"):
                    walk(x.get(k))

        walk(v)
        return v

    @model_validator(mode="after")
    def _one_of(self) -> "AOIConfig":
        given = [k for k in ("bbox", "geometry", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of bbox, geometry, path (got {given or 'none'})")
        if self.row is not None and self.path is None:
            raise ValueError("row: picks a row of a tile file; give aoi.path (a vector file with one feature per tile)")
        if self.bbox is not None and not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3]):
            hint = " (a bbox crossing the antimeridian must be split in two)" if self.bbox[0] > self.bbox[2] else ""
            raise ValueError(f"bbox must be minx < maxx and miny < maxy, got {list(self.bbox)}{hint}")
        return self


# --------------------------------------------------------------------------------------
# sources: search, profile, bands, selection, composite

class CloudCover(_Model):
    """Bounds on the item property ``eo:cloud_cover`` (percent, inclusive)."""

    min: float | None = Field(None, ge=0, le=100, description="Keep items with eo:cloud_cover >= min.")
    max: float | None = Field(None, ge=0, le=100, description="Keep items with eo:cloud_cover <= max.")

    @model_validator(mode="after")
    def _ordered(self) -> "CloudCover":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class SearchConfig(_Model):
    """Where and how to look for a source's scenes.

    ``catalog`` is a STAC API root URL, or a static catalog (a path or URL of an
    ItemCollection / Catalog JSON or a stac-geoparquet file). Both kinds apply the same item
    filter (:mod:`eochips.search`): collections, AOI intersection, datetime, ``filter`` (a
    CQL2 expression, text or JSON, evaluated with the ``cql2`` package on static items and
    sent to APIs that implement the Filter extension), ``cloud_cover``, ``id_pattern`` and
    ``date_pattern`` (on the item's UTC date ``YYYY-MM-DD``);
    then the same order (``sortby``, default datetime then id) and the same ``max_items``
    cut, so an API and a static copy of it give the same scenes.
    """

    catalog: Location = Field(..., description="STAC API URL, or path/URL of a static ItemCollection, Catalog or stac-geoparquet file.")
    collections: list[str] = Field(..., min_length=1, description="Collection ids to search.")
    datetime: str | None = Field(None, description="RFC 3339 interval 'START/END' (dates or datetimes, UTC).")
    filter: str | dict[str, Any] | None = Field(None, description="CQL2 text or CQL2 JSON over item properties, e.g. \"s2:nodata_pixel_percentage <= 20\".")
    cloud_cover: CloudCover = Field(default_factory=CloudCover)
    id_pattern: str | None = Field(None, description="Regular expression an item id must match (e.g. a tile id).")
    date_pattern: str | None = Field(None, description=(
        "Regular expression the item's UTC date YYYY-MM-DD must match (re.search), e.g. '-0[67]-' for June and July "
        "(cloud-buster's date regexp)."))
    sortby: list[str] | None = Field(None, description="Sort fields, e.g. ['-properties.datetime'] (newest first); default datetime, id.")
    page_size: int = Field(100, gt=0, le=10000, description="Items per API page.")
    max_items: int | None = Field(None, gt=0, description="Keep the first this many items in `sortby` order.")
    auth: Literal["none", "earthdata", "planetary-computer"] = Field(
        "none", description="earthdata: bearer token from $EARTHDATA_TOKEN or ~/.netrc; planetary-computer: sign hrefs at read time."
    )
    max_retries: int = Field(5, ge=0, le=20, description="Retries of each API request (5xx, 429, resets, timeouts).")
    auth_hosts: list[str] | None = Field(None, min_length=1, description=(
        "Hosts the credentials of `auth` may be sent to (a name also allows its subdomains), over https only (http only to "
        "a loopback host listed here); default for earthdata: earthdata.nasa.gov, earthdatacloud.nasa.gov, "
        "e4ftl01.cr.usgs.gov, lpdaac.usgs.gov."))

    @field_validator("auth_hosts")
    @classmethod
    def _hosts(cls, v):
        for h in v or []:
            if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|::1", h):
                raise ValueError(f"{h!r} is not a host name (e.g. earthdata.nasa.gov or 127.0.0.1; no scheme, port or path)")
        return v

    @model_validator(mode="after")
    def _hosts_need_auth(self) -> "SearchConfig":
        if self.auth_hosts is not None and self.auth != "earthdata":
            raise ValueError(f"auth_hosts: used only with auth: earthdata (auth is {self.auth!r})")
        return self

    @field_validator("datetime")
    @classmethod
    def _interval(cls, v: str | None) -> str | None:
        return check_interval(v)

    @field_validator("filter")
    @classmethod
    def _cql2(cls, v):
        if v is not None:
            import cql2

            try:
                expr = cql2.Expr(v)
                expr.validate()
            except Exception as exc:  # cql2 raises ParseError / ValidationError / ValueError
                lines = [ln.strip(" |=") for ln in str(exc).splitlines() if ln.strip(" |^-")]
                where = lines[0].replace("-->", "at").strip() if lines else ""
                raise ValueError(f"not a valid CQL2 expression ({where}: {lines[-1] if lines else exc})") from None
        return v

    @field_validator("sortby")
    @classmethod
    def _sortby(cls, v):
        for f in v or []:
            if not re.fullmatch(r"[+-]?[A-Za-z_][\w:.\-]*", f):
                raise ValueError(f"sort field {f!r} is not [+|-]name, e.g. '-properties.datetime'")
        return v

    @field_validator("id_pattern", "date_pattern")
    @classmethod
    def _id_regex(cls, v):
        return _regex(v)


class BandConfig(_Model):
    """One output band of a source, with any of its profile defaults overridden.

    A band is read from asset ``asset``, 1-based band ``index`` of that file (a multi-band
    asset gives one output band per index), kept in ``dtype`` with fill ``nodata`` (NaN for a
    float band without one), physical value = DN * ``scale`` + ``offset``, native pixel size
    ``resolution`` metres, warped with ``resampling``.
    """

    name: str = Field(..., pattern=NAME, description="The band's name in the output (descriptions 'name@date').")
    asset: str | None = Field(None, description="Asset key (default: the profile's asset of `name`).")
    index: int | None = Field(None, ge=1, description="1-based band index within the asset (default 1).")
    dtype: DType | None = None
    nodata: Fill | None = Field(None, description="Fill value (.nan allowed for floats).")
    scale: float | None = None
    offset: float | None = None
    resolution: float | None = Field(None, gt=0, description="Native pixel size, metres (resolution groups).")
    resampling: Resampling | None = None


class QALayerConfig(_Model):
    """The QA asset of a profile and its decoder."""

    asset: str
    kind: Literal["fmask", "scl", "qa-pixel", "bqa", "none"] = "none"
    dtype: DType = "uint8"
    nodata: Fill | None = None
    resolution: float | None = Field(None, gt=0)


class ProfileConfig(_Model):
    """A collection profile declared in the recipe (the built-in ones are in :mod:`eochips.profiles`)."""

    name: str = "custom"
    bands: dict[str, str | BandConfig] = Field(..., min_length=1, description="Band name -> asset key, or a full band spec.")
    dtype: DType = "uint16"
    nodata: Fill | None = Field(0, description="Fill value of the bands (None: the file's, else NaN for floats).")
    scale: float = 1.0
    offset: float = 0.0
    qa: QALayerConfig | None = None
    tile_pattern: str | None = Field(None, description="Regex with one group that extracts the tile id from the item id.")
    tile_property: str | None = Field(None, description="Item property holding the tile id.")
    coverage_property: str | None = Field(None, description="Item property holding the percent of the tile with data.")
    baseline_offset: bool = Field(False, description="Sentinel-2 processing baseline >= 04.00: offset -1000 DN per scene.")

    @field_validator("tile_pattern")
    @classmethod
    def _tile_regex(cls, v):
        return _regex(v)


def check_thresholds(v: list[float]) -> list[float]:
    """Coverage thresholds are percentages of a unit's area in (0, 100].

    Raises
    ------
    ValueError
        A threshold outside (0, 100] (pydantic reports it against the field).
    """
    if any(not 0 < t <= 100 for t in v):
        raise ValueError(f"thresholds must be in (0, 100], got {v}")
    return v


CoverageThresholds = Annotated[list[float], AfterValidator(check_thresholds)]
"""A coverage fallback list (percent), checked by :func:`check_thresholds` (v1 and v2 alike)."""


class _Coverage(_Model):
    per: Literal["tile", "unit"] = Field(
        "tile", description="tile: units take the scenes chosen for their nearest tile (seed 001); unit: each unit chooses on its own."
    )
    coverage_thresholds: CoverageThresholds = Field([100, 90, 80, 70, 60, 50], min_length=1,
                                                    description="Coverage fallback (percent): the first threshold with enough scenes is used.")


class FirstMiddleLastSelection(_Coverage):
    """Seed 001: at the first coverage threshold with >= ``min_scenes`` scenes, the scenes at
    sorted-by-date indices 0, n // 2 and -1."""

    kind: Literal["first-middle-last"]
    min_scenes: int = Field(3, ge=3, description="Scenes needed at a threshold (at least 3: three distinct dates).")


class LeastCloudySelection(_Coverage):
    """The ``n_scenes`` least cloudy scenes at the first threshold with that many, in date order."""

    kind: Literal["least-cloudy"]
    n_scenes: int = Field(1, gt=0)


class SeededByDateSelection(_Coverage):
    """Seed 000: at the first threshold with >= ``min_scenes`` scenes, ``n_scenes`` of them
    drawn with a seed per tile (or unit), in date order."""

    kind: Literal["seeded-by-date"]
    min_scenes: int = Field(6, gt=0)
    n_scenes: int = Field(6, gt=0)
    seed: int = 42

    @model_validator(mode="after")
    def _enough(self) -> "SeededByDateSelection":
        if self.n_scenes > self.min_scenes:
            raise ValueError(f"n_scenes ({self.n_scenes}) cannot exceed min_scenes ({self.min_scenes})")
        return self


class AllSelection(_Coverage):
    """Every scene covering at least the last threshold, one time step each, in date order."""

    kind: Literal["all"]
    coverage_thresholds: CoverageThresholds = Field([50], min_length=1)


class IntersectingSelection(_Model):
    """Every scene whose footprint intersects the unit (``per: grid``: the unit's whole grid,
    as Clay's datacube.py stacks every DEM tile over the Sentinel-2 scene), as ONE time step
    composited in date order (DEM tiles, a mosaic of swaths)."""

    kind: Literal["intersecting"]
    per: Literal["unit", "grid"] = Field("unit", description=(
        "unit: the scenes touching each unit; grid: the scenes touching the unit's grid, the same for all its units "
        "(they then batch together and share every COG tile read)."))


class LeastCloudyPerYearSelection(_Model):
    """Clay's Sentinel-2 rule (Clay-foundation/model scripts/pipeline/datacube.py @8b83005): the
    years ``years[0]..years[1]`` in the order ``random.Random(seed).shuffle`` gives (``seed``:
    the AOI row, as the seed's ``random.seed(index)``); per year the scenes of that year whose
    footprint holds the AOI's centroid (``contains: centroid``, the seed's ``s_intersects`` with
    ``aoi.centroid``) or touches the AOI (``any``), by ``eo:cloud_cover`` ascending, trying up to
    ``attempts`` of them until one is accepted by the sources selected relative to this one (an
    S1 match); stop after ``n_years`` accepted years. One grid (time step) per accepted year."""

    kind: Literal["least-cloudy-per-year"]
    years: tuple[int, int] = Field(..., description="First and last year (inclusive), e.g. [2017, 2023].")
    n_years: int = Field(3, gt=0, description="Stop after this many matched years (Clay v0.2: 3, v0.4: 4).")
    attempts: int = Field(20, gt=0, description="Scenes tried per year, least cloudy first (Clay v0.2: 20, v0.4: 40).")
    contains: Literal["centroid", "any"] = "centroid"
    seed: int | None = Field(None, description="Seed of the year order; default the AOI row (0 without one).")

    @model_validator(mode="after")
    def _ordered(self) -> "LeastCloudyPerYearSelection":
        if self.years[0] > self.years[1]:
            raise ValueError(f"years must be [first, last] with first <= last, got {list(self.years)}")
        return self


class NearestInTimeSelection(_Model):
    """Clay's Sentinel-1 rule, with its bug fixed: per scene of source ``relative_to`` (the
    reference), the scenes dated within +-``window_days`` calendar days of it, by overlap with
    the area (descending: the reference scene's footprint on a scene grid, else the unit); keep
    those with the same ``same`` properties (``sat:orbit_state``) as the first, adding them until
    their UNION covers the area (the seed replaced the covered area by each new scene). One
    time step per reference step, its scenes composited in date order."""

    kind: Literal["nearest-in-time"]
    relative_to: str = Field(..., description="The source whose chosen scenes this one is matched to (e.g. s2).")
    window_days: int = Field(3, ge=0, le=366, description="Calendar days before and after the reference date.")
    same: list[str] = Field(["sat:orbit_state"], description="Item properties the chosen scenes share with the best one.")
    cover: float = Field(99.9, gt=0, le=100, description=(
        "Percent of the area the union must cover to stop adding scenes: consecutive frames of one pass abut with "
        "sliver gaps (0.01 % on Planetary Computer's S1 RTC frames), so an exact cover would add every frame."))


class GreedyCoverageSelection(_Model):
    """cloud-buster's greedy multi-coverage choice (azavea/cloud-buster @fe6c339,
    ``cloudbuster/filter.py`` ``filter_response``), over the whole AOI (the union of its
    features) in the equal-area CRS, areas in m^2.

    Keep ``coverage_count`` copies of the AOI as "remaining" areas; repeatedly score every
    (scene, copy) pair as area(footprint ∩ remaining copy) x (1 - cloud / 100), take the best
    (ties: the first in the search order of the seed, newest first), subtract its footprint from
    that copy only and remove the scene; stop when the remaining area summed over the copies is
    <= ``max_uncovered_m2``, when no scene is left, when the best score is <= 0, or after exactly
    ``max_selections`` picks (the seed allowed one more). Then, with ``backstop``, the same
    scoring against ONE fresh AOI copy with the scenes left: those picks have role ``backstop``
    (not cloud-masked; they fill holes). One time step: primary picks first, then backstop, in
    pick order. The rule in full: :func:`eochips.selection.strategies.greedy_coverage`.
    """

    kind: Literal["greedy-coverage"]
    coverage_count: int = Field(3, gt=0, description="Copies of the AOI to cover (the seed's coverage_count).")
    max_uncovered_m2: float = Field(6.15e6, ge=0, description=(
        "Stop when the remaining area (summed over the copies; of the one copy in the backstop stage) is at most this, "
        "m^2 of the equal-area CRS; the default is the seed's max_uncovered 5e-4 square degrees at the equator "
        "(5e-4 x 111.32 km x 110.57 km = 6.15 km^2)."))
    backstop: bool = Field(True, description="Run the backstop stage after the primary one.")
    max_selections: int | None = Field(None, gt=0, description=(
        "Stop the primary stage after exactly this many picks (backstop picks are not counted); none: no limit."))


Selection = Annotated[
    Union[FirstMiddleLastSelection, LeastCloudySelection, SeededByDateSelection, AllSelection, IntersectingSelection,
          LeastCloudyPerYearSelection, NearestInTimeSelection, GreedyCoverageSelection],
    Field(discriminator="kind"),
]


class CompositeConfig(_Model):
    """How the scenes of one time step are merged (:mod:`eochips.composite`)."""

    kind: Literal["first-valid", "later-on-top", "median"] = "first-valid"
    index_band: bool = Field(False, description="Also record which scene each pixel came from.")


class SourceConfig(_Model):
    """One named source: a search, a profile, the bands to read and how scenes are chosen."""

    search: SearchConfig
    profile: str | ProfileConfig = Field(..., description="A built-in profile name (eochips profiles) or an inline profile.")
    bands: list[str | BandConfig] = Field(default_factory=list, description="Band names (or specs), in output order.")
    selection: Selection = Field(default_factory=lambda: AllSelection(kind="all"))
    resampling: Resampling = Field("bilinear", description="Default resampling of the bands (QA always nearest).")
    composite: CompositeConfig = Field(default_factory=CompositeConfig)

    def band_names(self) -> list[str]:
        return [b if isinstance(b, str) else b.name for b in self.bands]


# --------------------------------------------------------------------------------------
# grid and units

class LabelRasterGrid(_Model):
    """The grid of a label raster (its CRS, pixel size and edges: seed 001's CDL grid)."""

    kind: Literal["label-raster"]
    path: FilePath


class CRSGrid(_Model):
    """A grid in ``crs`` with square ``resolution`` pixels; ``origin`` (x, y of the top-left
    corner of pixel (0, 0)) defaults to the AOI's top-left snapped outwards to the resolution."""

    kind: Literal["crs"]
    crs: str
    resolution: float = Field(..., gt=0, description="Pixel size in CRS units (metres).")
    origin: tuple[float, float] | None = None


class SceneGrid(_Model):
    """The grid of each scene selected for ``source`` (over the whole AOI): its CRS and pixel
    edges, at ``resolution`` (default: the native grid of the asset of the source's finest band);
    one grid per selected scene (BigEarthNet tiles, Clay's S2 scene)."""

    kind: Literal["scene"]
    source: str
    resolution: float | None = Field(None, gt=0, description="Pixel size (metres); default: the native grid of the source's finest band.")


Grid = Annotated[Union[LabelRasterGrid, CRSGrid, SceneGrid], Field(discriminator="kind")]


class ChipUnits(_Model):
    """Non-overlapping square chips of the grid (the grid's remainder rows/columns are not chipped).

    ``size`` in pixels or ``size_m`` in metres; ``id`` is a template with fields ``row``,
    ``col`` (chip position), ``grid`` (the scene id of a scene grid), ``tile``; with
    ``resolution_groups`` each band is read at its native resolution (a 1200 m chip: 120 px
    at 10 m, 60 at 20 m, 20 at 60 m) instead of on the chip grid.
    """

    kind: Literal["chip"]
    size: int | None = Field(None, gt=0, le=100000, description="Chip side in pixels.")
    size_m: float | None = Field(None, gt=0, description="Chip side in metres (a multiple of the grid's pixel size).")
    min_aoi_fraction: float = Field(1.0, gt=0, le=1, description="Keep chips whose area inside the AOI is at least this fraction.")
    id: str | None = Field(None, description="Unit id template; default chip_{row:03d}_{col:03d} ({grid}_{col:02d}_{row:02d} on scene grids).")
    resolution_groups: bool = False
    extent: Literal["aoi", "grid"] = Field("aoi", description=(
        "aoi: chips inside the AOI (min_aoi_fraction); grid: every full chip of each grid, the AOI only choosing the "
        "scenes (Clay's tiler chips the whole S2 scene)."))
    warn_above: int = Field(100_000, gt=0, description="Print one warning when the plan holds more units than this.")
    max_units: int | None = Field(None, gt=0, description="Refuse (exit 2) a plan of more units than this, before they are made.")

    @model_validator(mode="after")
    def _one_size(self) -> "ChipUnits":
        if (self.size is None) == (self.size_m is None):
            raise ValueError("give exactly one of size (pixels) or size_m (metres)")
        return self

    @field_validator("id")
    @classmethod
    def _template(cls, v):
        return _unit_id(v)


class TileUnits(_Model):
    """Output tiles of a mosaic: like chips, but every tile that touches the AOI is kept."""

    kind: Literal["tile"]
    size: int = Field(1024, gt=0, le=100000)
    min_aoi_fraction: float = Field(1e-9, gt=0, le=1)
    id: str | None = None
    resolution_groups: Literal[False] = False
    extent: Literal["aoi"] = "aoi"
    size_m: None = None
    warn_above: int = Field(100_000, gt=0, description="Print one warning when the plan holds more units than this.")
    max_units: int | None = Field(None, gt=0, description="Refuse (exit 2) a plan of more units than this, before they are made.")

    @field_validator("id")
    @classmethod
    def _template(cls, v):
        return _unit_id(v)


Units = Annotated[Union[ChipUnits, TileUnits], Field(discriminator="kind")]


def check_template(template: str, fields: set[str], need_any: tuple[set[str], ...] = ()) -> None:
    """Check a ``str.format`` template: only ``fields`` (format specs allowed), and every set of
    ``need_any`` fully present (so names are unique). Raises ValueError naming the problem."""
    import string

    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc}") from None
    unknown = sorted(u for u in used if u not in fields)
    if unknown or "" in used:
        raise ValueError(f"template {template!r} uses unknown field(s) {unknown or ['{}']}; valid: {', '.join(sorted(fields))}")
    for need in need_any:
        if not need <= used:
            raise ValueError(f"template {template!r} must contain {', '.join('{' + n + '}' for n in sorted(need))} (names must be unique)")
    if "/" in template.replace("{", "").replace("}", "") and "path" not in fields:
        raise ValueError(f"template {template!r} must not contain '/'")


# --------------------------------------------------------------------------------------
# sampling

class AllSampling(_Model):
    """Keep every unit."""

    kind: Literal["all"] = "all"


class ClassBalanceSampling(_Model):
    """Seed 001's chip sampling (:func:`eochips.sampling.class_balance`): weight per unit from its
    label class counts, ``draws`` weighted draws with ``seed``, the ``n`` most drawn kept."""

    kind: Literal["class-balance"]
    n: int = Field(..., gt=0)
    min_classes: int = Field(8, gt=0)
    seed: int = 42
    draws: int = Field(100_000_000, gt=0)


class RandomNSampling(_Model):
    """``n`` units drawn uniformly without replacement with ``seed``."""

    kind: Literal["random-n"]
    n: int = Field(..., gt=0)
    seed: int = 42


Sampling = Annotated[Union[AllSampling, ClassBalanceSampling, RandomNSampling], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------
# masks

FmaskBit = Literal["cirrus", "cloud", "adjacent", "shadow", "snow_ice", "water"]


class _MaskSource(_Model):
    source: str | None = Field(None, description="The source whose scenes are masked (default: the only source).")


class FmaskMask(_MaskSource):
    """HLS v2.0 Fmask bits of the source's QA asset."""

    kind: Literal["fmask"]
    cloud_bits: list[FmaskBit] = ["cloud"]
    shadow_bits: list[FmaskBit] = ["shadow"]


class SCLMask(_MaskSource):
    """Sentinel-2 L2A Scene Classification classes of the source's QA asset."""

    kind: Literal["scl"]
    cloud_classes: list[int] = [8, 9, 10]
    shadow_classes: list[int] = [3]
    snow_classes: list[int] = [11]
    nodata_classes: list[int] = [0]


class QAPixelMask(_MaskSource):
    """Landsat Collection 2 ``QA_PIXEL`` bits (USGS LSDS-1619)."""

    kind: Literal["qa-pixel"]
    cloud: list[Literal["dilated_cloud", "cirrus", "cloud"]] = ["cloud", "dilated_cloud", "cirrus"]
    shadow: list[Literal["shadow"]] = ["shadow"]
    snow: list[Literal["snow"]] = ["snow"]


class BQAMask(_MaskSource):
    """Landsat 8 Collection 1 ``BQA`` bits and confidences."""

    kind: Literal["bqa"]
    min_confidence: int = Field(3, ge=1, le=3, description="1 low, 2 medium, 3 high.")
    cirrus: bool = True


class S2CloudlessMask(_MaskSource):
    """s2cloudless on L1C reflectance (DN * ``scale``) of asset keys ``bands`` (s2cloudless's order),
    read at ``working_resolution`` metres."""

    kind: Literal["s2cloudless"]
    bands: list[str] = Field(..., min_length=10, max_length=13)
    scale: float = Field(0.0001, gt=0)
    working_resolution: float | None = Field(None, gt=0)
    threshold: float = Field(0.4, gt=0, lt=1)
    average_over: int = Field(4, ge=0)
    dilation_size: int = Field(2, ge=0)


class ONNXMask(_MaskSource):
    """An ONNX cloud/shadow model (``ukis-csmask`` or a ``.onnx`` path) on asset keys ``bands``
    named by ``band_order`` (common names)."""

    kind: Literal["onnx"]
    model: str = "ukis-csmask"
    bands: list[str] = Field(..., min_length=1)
    band_order: list[str] = Field(..., min_length=1)
    scale: float = Field(0.0001, gt=0)
    working_resolution: float | None = Field(None, gt=0)
    product_level: Literal["l1c", "l2a"] = "l1c"


class CloudProbabilityMask(_MaskSource):
    """A cloud-probability asset (Sentinel-2 L2A ``CLD``: percent 0..100 at 20 m, the L2A
    product's cloud-probability layer): cloud where the probability is above ``threshold``
    (cloud-buster @fe6c339: > 40 %), read with nearest onto the unit grid."""

    kind: Literal["cloud-probability"]
    asset: str = Field("CLD", description="Asset key of the probability layer.")
    threshold: float = Field(40.0, ge=0, le=100, description="Cloud where the probability (percent) is above this.")

    @property
    def bands(self) -> list[str]:
        """The asset keys read for the mask (the probability layer)."""
        return [self.asset]

    working_resolution: None = None
    scale: float = Field(1.0, gt=0, description="Probability = DN * scale (percent).")


MaskSource = Annotated[Union[FmaskMask, SCLMask, QAPixelMask, BQAMask, S2CloudlessMask, ONNXMask, CloudProbabilityMask],
                       Field(discriminator="kind")]
QA_MASKS = ("fmask", "scl", "qa-pixel", "bqa")
"""Mask kinds that decode the source's QA asset (the others read bands of their own)."""


class MasksConfig(_Model):
    """Mask sources, combined by union per source and time step, then grown by ``dilation``
    pixels. A plain list is accepted as ``sources``."""

    sources: list[MaskSource] = Field(default_factory=list)
    dilation: int = Field(0, ge=0, le=50, description="Grow cloud and shadow by this many pixels (cloud-buster: 5, an 11 x 11 kernel).")
    quicklook: bool = Field(False, description="Write quicklooks/{unit}.png: RGB per date with the masks outlined.")

    @model_validator(mode="before")
    @classmethod
    def _list(cls, v):
        return {"sources": v} if isinstance(v, list) else v


# --------------------------------------------------------------------------------------
# filters (ordered)

class NodataFilter(_Model):
    """Drop a unit with more than ``max_pixels`` pixels that are fill in any band of any time
    step of ``sources`` (default: every source's bands; QA not counted)."""

    kind: Literal["nodata"]
    sources: list[str] | None = None
    max_pixels: int = Field(0, ge=0)


class NaNFilter(_Model):
    """Drop a unit with more than ``max_pixels`` NaN pixels in ``bands`` (``source.band``; default all float bands)."""

    kind: Literal["nan"]
    bands: list[str] | None = None
    max_pixels: int = Field(0, ge=0)


class ValueFilter(_Model):
    """Drop a unit with more than ``max_pixels`` pixels of ``band`` (``source.band``) equal to ``equals``
    in any time step (Clay: any B02 == 0)."""

    kind: Literal["value"]
    band: str
    equals: float
    max_pixels: int = Field(0, ge=0)


class FmaskBadPctFilter(_Model):
    """Seed 001's QA rule: keep a unit only if, for every time step, the largest share (percent)
    held by any single Fmask value with one of ``bits`` set is < ``max_pct``."""

    kind: Literal["fmask-bad-pct"]
    source: str | None = None
    bits: list[FmaskBit] = ["cirrus", "cloud", "shadow", "snow_ice"]
    max_pct: float = Field(5.0, ge=0, le=100)


class MaskFractionFilter(_Model):
    """Drop a unit whose worst time step has a ``layer`` fraction (0..1 of the unit's pixels) > ``max``
    (``strict``: >= ``max``)."""

    kind: Literal["mask-fraction"]
    source: str | None = None
    layer: Literal["cloud", "shadow", "snow", "nodata", "cloud+shadow", "cloud+shadow+nodata"] = "cloud"
    max: float = Field(..., ge=0, le=1)
    strict: bool = Field(False, description="Drop at or above max (Clay's tile.py: >= 0.3), not only above.")


class LabelFractionFilter(_Model):
    """Drop a unit by the pixels of label classes ``classes``: more than ``max_pixels``, or a
    fraction above ``max_fraction`` (``strict``: at or above). Evaluated from the labels alone,
    at plan time, when no imagery filter comes before it."""

    kind: Literal["label-fraction"]
    classes: list[int] = Field([0], min_length=1)
    max_pixels: int | None = Field(None, ge=0)
    max_fraction: float | None = Field(None, ge=0, le=1)
    strict: bool = False

    @model_validator(mode="after")
    def _one(self) -> "LabelFractionFilter":
        if (self.max_pixels is None) == (self.max_fraction is None):
            raise ValueError("give exactly one of max_pixels or max_fraction")
        return self


Filter = Annotated[
    Union[NodataFilter, NaNFilter, ValueFilter, FmaskBadPctFilter, MaskFractionFilter, LabelFractionFilter],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------
# labels

class LabelsConfig(_Model):
    """Where labels come from: a raster (+ reclass table) or polygons.

    Vector labels burn, per polygon, either its class id (``burn: classes``: the class of its
    ``class_field`` value in ``classes``) or the integer value of ``class_field`` itself
    (``burn: value``, e.g. the CORINE code 211; BigEarthNet v2's reference maps). Pixels no
    polygon covers get ``fill`` (default ``nodata_class``). The class map is ``dtype`` (uint8,
    or uint16 for codes above 255; ``burn: value`` defaults to uint16). ``table: clc-19`` names
    the BigEarthNet v2 19-class labels present in each unit (``label_names``)."""

    raster: FilePath | None = Field(None, description="Label raster (default: the label-raster grid's).")
    reclass: str | dict[int, int] | None = Field(None, description="'cdl-13', or a {source code: class} table.")
    vector: FilePath | None = Field(None, description="GeoJSON / GeoPackage polygons.")
    class_field: str | None = Field(None, description="Attribute holding the class (vector labels).")
    classes: dict[str, int] | None = Field(None, description="Attribute value -> class id (vector labels, burn: classes).")
    class_names: dict[int, str] | None = None
    burn: Literal["classes", "value"] = Field("classes", description=(
        "Vector labels: burn the class id of classes[value] ('classes') or the attribute's integer value itself ('value', "
        "e.g. a CORINE code)."))
    dtype: Literal["uint8", "uint16"] | None = Field(None, description=(
        "Class map dtype; default uint8, uint16 with burn: value (codes up to 65535)."))
    fill: int | None = Field(None, ge=0, le=65535, description="Class of pixels no polygon covers (default nodata_class).")
    table: Literal["clc-19"] | None = Field(None, description=(
        "Multi-label table: 'clc-19' names the BigEarthNet v2 classes of the CORINE codes present (needs burn: value)."))
    unknown_class: int = Field(0, ge=0, le=255, description="Class given to codes missing from the reclass table.")
    strict: bool = Field(False, description="Fail on codes missing from the reclass table instead of mapping them.")
    nodata_class: int = Field(0, ge=0, le=255)
    products: list[Literal["class-map"]] = Field(["class-map"], description="Label files written per unit.")

    @model_validator(mode="after")
    def _one_source(self) -> "LabelsConfig":
        if self.vector is not None and self.burn == "classes" and (self.class_field is None or self.classes is None):
            raise ValueError("vector labels need class_field and classes (attribute value -> class id); or set "
                             "burn: value to burn the class_field's integer value itself")
        if self.vector is not None and self.class_field is None:
            raise ValueError("vector labels with burn: value need class_field (the attribute whose integer value is burnt)")
        if self.vector is not None and self.raster is not None:
            raise ValueError("give labels.raster or labels.vector, not both")
        if self.burn == "value" and self.vector is None:
            raise ValueError("labels.burn: value burns polygons' attribute values; it needs labels.vector")
        if self.burn == "value" and self.dtype == "uint8":
            raise ValueError("labels.dtype: uint8 cannot hold burn: value codes (CORINE codes reach 523, values up to "
                             "65535); use dtype: uint16 (the default with burn: value)")
        if self.dtype == "uint16" and self.vector is None:
            raise ValueError("labels.dtype: uint16 is for vector labels (labels.vector); a label raster's class map is uint8")
        if self.fill is not None and self.vector is None:
            raise ValueError("labels.fill is the class of pixels no polygon covers; it needs labels.vector "
                             "(a label raster's own no-data is labels.nodata_class)")
        hi = 65535 if self.class_dtype == "uint16" else 255
        if self.fill is not None and self.fill > hi:
            raise ValueError(f"labels.fill {self.fill} does not fit the {self.class_dtype} class map (0..{hi}); "
                             f"use 0..{hi}" + (" or dtype: uint16" if hi == 255 else ""))
        if self.table is not None and self.burn != "value":
            raise ValueError(f"labels.table {self.table!r} names CORINE codes; it needs burn: value (the codes burnt)")
        if self.table is not None:
            from ..labels.tables import table_codes

            if self.fill_class not in table_codes(self.table):
                raise ValueError(f"labels.fill {self.fill_class} is not a code of labels.table {self.table!r}; give a code "
                                 f"of the table or an UNLABELED one (BigEarthNet: fill: 999)")
        return self

    @property
    def class_dtype(self) -> str:
        """The class map's dtype: ``dtype``, else uint16 with ``burn: value``, else uint8."""
        return self.dtype or ("uint16" if self.burn == "value" else "uint8")

    @property
    def fill_class(self) -> int:
        """The class of pixels no polygon covers: ``fill``, else ``nodata_class``."""
        return self.nodata_class if self.fill is None else self.fill


# --------------------------------------------------------------------------------------
# output layouts

LAYOUT_FIELDS = {"unit", "grid", "tile", "band", "source", "step", "date", "n", "product"}
"""The fields of the per-band and stack layouts' file-name templates (``date`` is a date:
``{date}`` gives YYYY-MM-DD, ``{date:%Y%m%d}`` any strftime form; ``n`` and ``product`` as in ``units.id``)."""


def _inside(v: str | None, fields: set[str], field: str) -> str | None:
    """A file-name template (or name) of a layout that stays inside the dataset folder."""
    if v is None or (field == "path" and v.strip("/") == ""):
        return v
    from ..writers.store import check_path_template

    return check_path_template(v, fields, field)


class Seed001Layout(_Model):
    """Seed 001's files: ``{unit}_merged.tif`` (every band of every time step of ``source``,
    time-major), ``{unit}.mask.tif`` (class map) and ``{unit}_Fmask.tif`` (raw QA per step)."""

    kind: Literal["seed-001"]
    source: str | None = None
    write_qa: bool = True


class Seed000CmaskLayout(_Model):
    """Seed 000's cloud masks: per time step i of ``source``, ``{unit}_{i}_cmask.tif`` (uint8:
    1 where one of the Fmask ``bits`` is set, 0 clear, 255 fill), listed in ``tracker``."""

    kind: Literal["seed-000-cmask"]
    source: str
    bits: list[FmaskBit] = ["cloud"]
    tracker: str = Field("fmask_tracker.csv", pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("tracker")
    @classmethod
    def _tracker_inside(cls, v):
        return _inside(v, set(), "tracker")


class PerBandLayout(_Model):
    """One file per band (and time step): ``path``/``name`` templates with fields unit, band,
    source, step, date, grid, tile."""

    kind: Literal["per-band"]
    sources: list[str] | None = None
    name: str = "{unit}_{band}.tif"
    path: str = "chips"
    labels: str | None = "{unit}_labels.tif"

    @field_validator("name", "path", "labels")
    @classmethod
    def _inside(cls, v, info):
        return _inside(v, LAYOUT_FIELDS, info.field_name)


class StackLayout(_Model):
    """One file per unit with every band of ``sources`` (each source's steps time-major), cast
    to ``dtype`` if given (a narrowing cast is refused at plan time)."""

    kind: Literal["stack"]
    sources: list[str] | None = None
    dtype: DType | None = None
    descriptions: Literal["band@date", "band"] = Field("band@date", description="Band descriptions: 'B02@2024-06-02' or 'B02' (Clay).")
    name: str = "{unit}.tif"
    path: str = "chips"
    labels: str | None = "{unit}_labels.tif"

    @field_validator("name", "path", "labels")
    @classmethod
    def _inside(cls, v, info):
        return _inside(v, LAYOUT_FIELDS, info.field_name)


class MosaicLayout(_Model):
    """One mosaic per AOI (reference pipeline 3, azavea/cloud-buster @fe6c339), built tile by
    tile (``units: {kind: tile}``): per tile, the scenes of ``source`` are read one at a time in
    priority order (primary picks before backstop ones, earliest greedy pick first), masked
    (primary scenes only: the recipe's masks, dilated) and composited with the source's
    ``composite`` (``first-valid`` or ``median``). Per tile the parts
    ``tiles/{unit}-cloudless.tif`` (primary scenes), ``tiles/{unit}-cloudy.tif`` (backstop
    scenes, unmasked) and ``tiles/{unit}-source.tif`` (uint16 bands ``cloudless_index``,
    ``cloudy_index`` (the 1-based pick number of ``sources.csv``, 0 = none) and, with
    ``clear_count``, ``clear_count``) are written; the ``mosaic`` finalizer assembles them into
    the COGs ``{name}-cloudless.tif``, ``{name}-cloudy.tif`` and ``{name}-source.tif``, writes
    ``sources.csv`` and the quicklooks ``quicklooks/{name}-cloudless.png`` and
    ``quicklooks/{name}-source.png``."""

    kind: Literal["mosaic"]
    source: str | None = None
    name: str = Field("{recipe}", description="File-name stem of the mosaics; field {recipe}: the recipe's name.")
    clear_count: bool = Field(False, description="Also write per-pixel clear_count: the valid (unmasked) primary observations.")
    quicklook: list[str] | None = Field(None, min_length=3, max_length=3, description=(
        "Three band names (red, green, blue) for the mosaic quicklook; default the source's first three bands."))

    @field_validator("name")
    @classmethod
    def _stem(cls, v):
        check_template(v, {"recipe"})
        return v


Layout = Annotated[Union[Seed001Layout, Seed000CmaskLayout, PerBandLayout, StackLayout, MosaicLayout], Field(discriminator="kind")]


class OutputConfig(_Model):
    """The files written per unit: one or more layouts, and the GeoTIFF compression."""

    layout: list[Layout] = Field(default_factory=lambda: [Seed001Layout(kind="seed-001")])
    compress: Literal["deflate", "lzw", "zstd", "none"] = "deflate"
    level: int = Field(6, ge=1, le=12)

    @field_validator("layout", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, dict) else v


# --------------------------------------------------------------------------------------
# dataset

class RandomSplit(_Model):
    """Seed 001: sort ids, shuffle with ``random.Random(seed)``, first ``int(train_fraction * n)`` train,
    the last ``int(test_fraction * n)`` test (none by default: seed 001's split), the rest validation."""

    kind: Literal["random"] = "random"
    seed: int = 42
    train_fraction: float = Field(0.8, gt=0, lt=1)
    test_fraction: float = Field(0, ge=0, lt=1, description=(
        "Share of the kept units in a test part (the last int(test_fraction * n) of the shuffled order); "
        "0: no test part (seed 001)."))

    @model_validator(mode="after")
    def _room_for_validation(self):
        if self.train_fraction + self.test_fraction >= 1:
            raise ValueError(f"train_fraction {self.train_fraction:g} + test_fraction {self.test_fraction:g} must be < 1 "
                             f"(the rest is the validation part); lower one of them")
        return self


class TileRingSplit(_Model):
    """BigEarthNet v2: by the unit's centroid in its scene grid's tile square of side ``s = tile_size_m``
    (anchored at the grid's top-left corner): the outer ring train (1/2 of the area), the ring of the
    inner square validation (1/4), its core test (1/4); :mod:`eochips.dataset.splits`. Needs a scene grid."""

    kind: Literal["tile-ring"]
    tile_size_m: float = Field(109800, gt=0, description="Side of the tile square (metres; a Sentinel-2 tile: 109,800).")


class SpatialBlocksSplit(_Model):
    """Square blocks of ``block_size_m`` anchored at each unit's grid origin (the grid's top-left
    corner, in the grid's CRS: metres; a geographic CRS is refused), each assigned to train /
    validation / test by a seeded shuffle of the sorted block keys; a unit goes to the block holding
    its centroid. A unit closer than ``buffer_m`` to a block of another part (or touching one, with
    ``buffer_m: 0``) is excluded (kept on disk, split null, counted). ``block_size_m`` must be a whole
    multiple of the units' size, so every unit lies inside its block: 0 leaks by construction
    (:mod:`eochips.dataset.splits`)."""

    kind: Literal["spatial-blocks"]
    block_size_m: float = Field(..., gt=0, description=(
        "Side of a block (metres, the grid CRS); a whole multiple of the unit size (units.size x resolution, or units.size_m)."))
    buffer_m: float = Field(0, ge=0, description=(
        "Units closer than this to a block of another part are excluded; 0 excludes units touching one."))
    seed: int = 42
    train_fraction: float = Field(0.8, gt=0, le=1, description="Share of the blocks in train (rounded to whole blocks).")
    validation_fraction: float | None = Field(None, ge=0, le=1, description=(
        "Share of the blocks in validation; default 1 - train_fraction - test_fraction."))
    test_fraction: float = Field(0, ge=0, lt=1, description="Share of the blocks in test; 0: no test part.")

    @model_validator(mode="after")
    def _fractions(self):
        total = self.train_fraction + (self.validation_fraction or 0.0) + self.test_fraction
        given = "train_fraction + validation_fraction + test_fraction"
        if self.validation_fraction is None:
            if self.train_fraction + self.test_fraction >= 1:
                raise ValueError(f"train_fraction {self.train_fraction:g} + test_fraction {self.test_fraction:g} must be < 1 "
                                 f"(the rest is the validation part); lower one of them or set validation_fraction")
        elif abs(total - 1) > 1e-9:
            raise ValueError(f"{given} = {self.train_fraction:g} + {self.validation_fraction:g} + "
                             f"{self.test_fraction:g} = {total:g}; they must sum to 1")
        return self

    @property
    def fractions(self) -> tuple[float, float, float]:
        """``(train, validation, test)`` shares of the blocks (validation filled in)."""
        val = self.validation_fraction if self.validation_fraction is not None else 1.0 - self.train_fraction - self.test_fraction
        return self.train_fraction, val, self.test_fraction


Split = Annotated[Union[RandomSplit, TileRingSplit, SpatialBlocksSplit], Field(discriminator="kind")]
DEFAULT_FINALIZERS = ("index", "split", "stats", "plots", "tables", "stac", "mosaic", "summary", "card", "report", "manifest")
"""The finalizers a recipe runs when ``dataset.finalizers`` is not given."""
FINALIZERS = (*DEFAULT_FINALIZERS, "bigearthnet", "archive")
"""Every finalizer name (eochips.dataset.FINALIZERS)."""
AFTER_MANIFEST = ("archive",)
"""Finalizers that may follow ``manifest``: they pack the dataset and write nothing it lists."""
ARCHIVE_SUFFIXES = (".tar.zst", ".tar.zstd", ".tzst")


class MetadataConfig(_Model):
    """Settings of the ``bigearthnet`` finalizer (BigEarthNet v2's ``metadata.parquet``;
    :mod:`eochips.dataset.bigearthnet`)."""

    countries: FilePath = Field(..., description="Admin-0 country polygons (a Natural Earth file): the patch's nearest country.")
    country_field: str = Field("name", description="Attribute of countries holding the country name.")
    country_names: list[str] | None = Field(None, min_length=1, description=(
        "Only these countries (values of country_field; BigEarthNet: its ten); default all."))
    s1_source: str | None = Field(None, description="Source paired with the patch: s1_name = its first scene id for the unit; null without it.")
    s2v1: FilePath | None = Field(None, description="CSV with columns patch_id,s2v1_name (BigEarthNet v1 names); null for patches not in it.")
    snow_min_fraction: float = Field(0, ge=0, lt=1, description=(
        "contains_seasonal_snow when the scl mask's snow fraction of the patch is > this (0: any snow pixel)."))
    cloud_min_fraction: float = Field(0, ge=0, lt=1, description=(
        "contains_cloud_or_shadow when the scl mask's cloud + shadow fraction of the patch is > this (0: any pixel)."))

class ArchiveConfig(_Model):
    """The ``archive`` finalizer: a reproducible ``tar`` + zstandard of the dataset's manifest files
    (:mod:`eochips.writers.archive`), written to ``archive/{name}`` in the dataset folder."""

    level: int = Field(6, ge=1, le=22, description="zstandard level (BigEarthNet v2 uses 6).")
    name: str = Field("{recipe}.tar.zst", description=(
        "Archive file name; field {recipe}: the recipe's name. Ends in .tar.zst, .tar.zstd or .tzst; the members "
        "sit under a top folder named like the file without that suffix."))
    mtime: int = Field(0, ge=0, le=8**11 - 1, description=(
        "Modification time of every member, seconds since 1970 (like SOURCE_DATE_EPOCH); fixed, so runs compare."))

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        check_template(v, {"recipe"})
        if not v.endswith(ARCHIVE_SUFFIXES) or v in ARCHIVE_SUFFIXES:
            raise ValueError(f"archive name {v!r} must end in {', '.join(ARCHIVE_SUFFIXES)} after a stem, e.g. '{{recipe}}.tar.zst'")
        return v


class DatasetConfig(_Model):
    """Dataset finalisation: the split, statistics and the finalizers run in order."""

    split: Split = Field(default_factory=RandomSplit)
    stats_on: Literal["train", "all"] = Field("train", description="Units the band statistics and class weights use.")
    percentiles: tuple[float, float] = (1.5, 98.5)
    finalizers: list[str] = Field(list(DEFAULT_FINALIZERS), description="Finalizers in order (eochips.dataset.FINALIZERS).")
    metadata: MetadataConfig | None = Field(None, description="The bigearthnet finalizer's settings (needed with it).")
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig, description="Settings of the 'archive' finalizer.")
    max_drop_fraction: float = Field(0.9, gt=0, le=1, description=(
        "Exit 3 when more than this share of the built units is dropped for one reason that points at the setup "
        "(nodata, nan, value, label-fraction, selection; eochips.dataset.checks); 1 accepts any."))

    @field_validator("finalizers")
    @classmethod
    def _known(cls, v):
        unknown = [f for f in v if f not in FINALIZERS]
        if unknown:
            raise ValueError(f"unknown finalizer(s) {unknown}; valid: {', '.join(FINALIZERS)}")
        if "manifest" in v:
            after = v[v.index("manifest") + 1:]
            if any(f not in AFTER_MANIFEST for f in after):
                raise ValueError(f"'manifest' must be the last finalizer (only {', '.join(repr(f) for f in AFTER_MANIFEST)} may follow it: "
                                 f"it hashes the files the others write); got {v}")
        if "archive" in v and ("manifest" not in v or v.index("archive") < v.index("manifest")):
            raise ValueError(f"'archive' packs the files of the manifest: it must follow 'manifest', e.g. "
                             f"[..., summary, manifest, archive]; got {v}")
        return v

    @field_validator("percentiles")
    @classmethod
    def _pct(cls, v):
        if not 0 <= v[0] <= v[1] <= 100:
            raise ValueError(f"percentiles must be 0 <= low <= high <= 100, got {list(v)}")
        return v


class ReadingConfig(_Model):
    """I/O settings of the windowed reads (they do not change any output)."""

    threads: int = Field(16, ge=1, le=64, description="Reading threads per worker (over assets; warps and writes use the worker's share of the cores).")
    max_retries: int = Field(4, ge=0, le=20, description="Retries of a transient read failure (5xx, 429, reset, timeout, truncated body).")
    http_timeout: int = Field(60, gt=0, le=3600, description="Seconds before an HTTP request for an asset gives up (then retried).")
    gdal_cachemax_mb: int = Field(128, ge=16)


class EngineConfig(_Model):
    """Where the units are built (does not change any output)."""

    workers: int | None = Field(None, gt=0, description="Dask workers (default: CPU cores).")
    scheduler: str | None = Field(None, description="tcp://HOST:PORT of an existing Dask scheduler.")
    processes: bool = True
    batch_chips: int = Field(128, gt=0, le=100000, description="Most units in one worker task (units sharing scenes are batched so shared COG tiles are read once).")


# --------------------------------------------------------------------------------------
# the recipe

RECIPE_VERSION = 2
NON_OUTPUT_FIELDS = ("description", "reading", "engine")
"""Top-level fields that do not change any output byte: left out of the recipe fingerprint."""
NON_OUTPUT_KEYS = ("units.warn_above", "units.max_units")
"""Dotted fields that do not change any output byte either (plan-size guards): a change of them
does not make a dataset "built from a different recipe"."""


class Recipe(_Model):
    """A complete eochips recipe (version 2)."""

    version: Literal[2] = RECIPE_VERSION
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    aoi: AOIConfig
    sources: dict[str, SourceConfig] = Field(..., min_length=1, description="Named sources (names: letters, digits, _ and -).")
    grid: Grid
    units: Units
    sampling: Sampling = Field(default_factory=AllSampling)
    masks: MasksConfig = Field(default_factory=MasksConfig)
    filters: list[Filter] = Field(default_factory=list, description="Applied in order; the first that says no gives the reason.")
    labels: LabelsConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    reading: ReadingConfig = Field(default_factory=ReadingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @field_validator("sources")
    @classmethod
    def _names(cls, v):
        for name in v:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"source name {name!r} must start with a letter and hold only letters, digits, _ and -")
        return v

    @model_validator(mode="after")
    def _references(self) -> "Recipe":
        """Cross-references: every source, band and label use names something that exists."""
        names = list(self.sources)

        def source(ref: str | None, where: str) -> str:
            if ref is None:
                if len(names) == 1:
                    return names[0]
                raise ValueError(f"{where}: give the source (one of {', '.join(names)})")
            if ref not in self.sources:
                raise ValueError(f"{where}: unknown source {ref!r}; sources: {', '.join(names)}")
            return ref

        def band(ref: str, where: str) -> None:
            src, _, b = ref.rpartition(".")
            src = source(src or None, where)
            if b not in self.sources[src].band_names():
                raise ValueError(f"{where}: source {src!r} has no band {b!r}; its bands: {', '.join(self.sources[src].band_names()) or 'none'}")

        if self.grid.kind == "scene":
            source(self.grid.source, "grid.source")
        if self.grid.kind != "label-raster" and self.labels is not None and self.labels.raster is None and self.labels.vector is None:
            raise ValueError("labels: give labels.raster or labels.vector (the grid is not a label raster)")
        for i, m in enumerate(self.masks.sources):
            source(m.source, f"masks.sources.{i}.source")
        for i, f in enumerate(self.filters):
            where = f"filters.{i}"
            if f.kind == "nodata":
                for s in f.sources or []:
                    source(s, f"{where}.sources")
            elif f.kind == "nan":
                for b in f.bands or []:
                    band(b, f"{where}.bands")
            elif f.kind == "value":
                band(f.band, f"{where}.band")
            elif f.kind in ("fmask-bad-pct", "mask-fraction"):
                source(f.source, f"{where}.source")
                if f.kind == "mask-fraction" and not self.masks.sources:
                    raise ValueError(f"{where}: a mask-fraction filter needs masks.sources")
            elif f.kind == "label-fraction" and self.labels is None:
                raise ValueError(f"{where}: a label-fraction filter needs a labels section")
        for i, lay in enumerate(self.output.layout):
            where = f"output.layout.{i}"
            for s in ([lay.source] if hasattr(lay, "source") else (lay.sources or [])):
                source(s, f"{where}.source")
            if lay.kind == "mosaic":
                src = source(lay.source, f"{where}.source")
                if self.units.kind != "tile":
                    raise ValueError(f"{where}: a mosaic is built tile by tile; set units: {{kind: tile, size: 1024}}")
                if len(self.output.layout) != 1:
                    raise ValueError(f"{where}: a mosaic layout is the only layout of its recipe (its tiles are parts, not chips)")
                if self.sources[src].composite.kind not in ("first-valid", "median"):
                    raise ValueError(f"{where}: a mosaic composites with first-valid or median, not "
                                     f"{self.sources[src].composite.kind!r} (sources.{src}.composite.kind)")
                if not self.sources[src].bands:
                    raise ValueError(f"{where}: source {src!r} has no bands to mosaic")
                if self.sources[src].selection.kind != "greedy-coverage":
                    raise ValueError(f"{where}: a mosaic's scenes are chosen once over the AOI: set sources.{src}.selection.kind "
                                     f"to greedy-coverage (cloud-buster), not {self.sources[src].selection.kind!r}")
                if "mosaic" not in self.dataset.finalizers:
                    raise ValueError(f"{where}: dataset.finalizers must include 'mosaic' (it assembles the tiles into the "
                                     f"mosaic files); got {self.dataset.finalizers}")
                for b in lay.quicklook or []:
                    band(f"{src}.{b}", f"{where}.quicklook")
        self._dataset_references(source)
        if self.sampling.kind == "class-balance" and (self.labels is None or (self.labels.reclass is None and self.labels.classes is None)):
            raise ValueError("sampling: class-balance needs labels with a reclass table or classes (it counts label classes)")
        for s, cfg in self.sources.items():
            sel = cfg.selection
            if sel.kind == "nearest-in-time":
                if sel.relative_to == s:
                    raise ValueError(f"sources.{s}.selection.relative_to: a source cannot be matched to itself")
                source(sel.relative_to, f"sources.{s}.selection.relative_to")
                if self.sources[sel.relative_to].selection.kind == "nearest-in-time":
                    raise ValueError(f"sources.{s}.selection.relative_to: {sel.relative_to!r} is itself matched to another "
                                     f"source; match to a source with its own selection")
            if sel.kind == "least-cloudy-per-year" and not (self.grid.kind == "scene" and self.grid.source == s):
                raise ValueError(f"sources.{s}.selection: least-cloudy-per-year chooses the scenes of a scene grid; set "
                                 f"grid: {{kind: scene, source: {s}}}")
            seen = cfg.band_names()
            dup = sorted({b for b in seen if seen.count(b) > 1})
            if dup:
                raise ValueError(f"sources.{s}.bands: band name(s) {dup} repeated; name each output band once")
        return self

    def _dataset_references(self, source) -> None:
        """The tile-ring split and the bigearthnet finalizer: what they need of the rest of the recipe."""
        ds = self.dataset
        if ds.split.kind == "tile-ring" and self.grid.kind != "scene":
            raise ValueError(f"dataset.split: a tile-ring split needs a scene grid (grid.kind: scene, one grid per tile); "
                             f"the grid is {self.grid.kind!r}; use dataset.split.kind: random")
        if "bigearthnet" not in ds.finalizers:
            return
        where = "dataset.metadata"
        if ds.metadata is None:
            raise ValueError(f"{where}: the bigearthnet finalizer needs dataset.metadata (at least countries: a Natural Earth "
                             f"admin-0 file)")
        if self.grid.kind != "scene":
            raise ValueError(f"{where}: the bigearthnet finalizer needs a scene grid (grid.kind: scene, one grid per tile); "
                             f"the grid is {self.grid.kind!r}")
        if self.labels is None:
            raise ValueError(f"{where}: the bigearthnet finalizer needs a labels section (its labels column: the class "
                             f"names present, labels.table)")
        scl = [m for m in self.masks.sources if m.kind == "scl"]
        if not scl:
            raise ValueError(f"{where}: the bigearthnet finalizer needs an scl mask (masks.sources: [{{kind: scl, source: "
                             f"{self.grid.source}}}]) for contains_seasonal_snow and contains_cloud_or_shadow")
        if len({self.source_of(m.source) for m in scl}) > 1:
            raise ValueError(f"{where}: the bigearthnet finalizer reads the flags of one scl mask; masks.sources has scl "
                             f"masks of several sources")
        if ds.metadata.s1_source is not None:
            source(ds.metadata.s1_source, f"{where}.s1_source")

    def source_of(self, ref: str | None) -> str:
        """The source a mask, filter or layout refers to (the only source when ``ref`` is None)."""
        return ref if ref is not None else next(iter(self.sources))


def is_nan(v: float | None) -> bool:
    """True for a NaN fill value."""
    return isinstance(v, float) and math.isnan(v)
