"""The :class:`Scene` value object: one STAC item, reduced to what eochips needs, frozen and hashable.

Items become scenes at the search boundary; nothing downstream touches pystac objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from ..errors import CatalogError


class FrozenDict(dict):
    """A ``dict`` that cannot be changed after it is made, and so can be hashed (its nested
    mappings and lists are frozen too: :func:`freeze`). It stays a ``dict`` for ``json``."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("FrozenDict is read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: str(kv[0]))))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def freeze(v: Any) -> Any:
    """Deep-freeze JSON-like data: mappings become :class:`FrozenDict`, lists tuples."""
    if isinstance(v, Mapping):
        return FrozenDict({k: freeze(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v


def thaw(v: Any) -> Any:
    """The inverse of :func:`freeze` (plain dicts and lists, for writing JSON)."""
    if isinstance(v, Mapping):
        return {k: thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [thaw(x) for x in v]
    return v


@dataclass(frozen=True)
class Scene:
    """One STAC item. Immutable, hashable and picklable.

    Attributes
    ----------
    id, collection
        Item and collection ids.
    datetime
        Acquisition time, timezone-aware UTC.
    geometry
        Footprint, shapely geometry in EPSG:4326 (degrees).
    cloud_cover
        ``eo:cloud_cover`` in percent, or None.
    assets
        Asset key -> href (unsigned: signing happens at read time on the worker).
    properties
        The item's properties (frozen).
    asset_fields
        Asset key -> the asset's other fields (``proj:*``, ``raster:bands``), frozen.
    """

    id: str
    collection: str | None
    datetime: datetime
    geometry: BaseGeometry = field(compare=False)
    cloud_cover: float | None
    assets: Mapping[str, str] = field(default_factory=FrozenDict)
    properties: Mapping[str, Any] = field(default_factory=FrozenDict, compare=False)
    asset_fields: Mapping[str, Any] = field(default_factory=FrozenDict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("assets", "properties", "asset_fields"):
            v = getattr(self, name)
            if not isinstance(v, FrozenDict):
                object.__setattr__(self, name, freeze(v))

    def __hash__(self) -> int:
        return hash((self.id, self.collection))

    @property
    def date(self) -> str:
        """``YYYY-MM-DD`` of the acquisition (UTC)."""
        return self.datetime.strftime("%Y-%m-%d")

    def to_item(self, href=lambda h: h) -> dict[str, Any]:
        """The scene as a STAC item dict (``href`` maps each asset href, e.g. to redact it)."""
        assets = {k: dict(thaw(self.asset_fields.get(k, {})), href=href(h)) for k, h in self.assets.items()}
        return {"type": "Feature", "stac_version": "1.0.0", "id": self.id, "collection": self.collection,
                "properties": thaw(self.properties), "geometry": mapping(self.geometry),
                "bbox": list(self.geometry.bounds), "assets": assets, "links": []}


def parse_datetime(value: str) -> datetime:
    """An ISO 8601 date or datetime as an aware UTC datetime (naive means UTC)."""
    v = value.strip().replace("Z", "+00:00")
    if len(v) == 10:
        v += "T00:00:00+00:00"
    dt = datetime.fromisoformat(v)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_interval(interval: str | None) -> tuple[datetime | None, datetime | None]:
    """Parse ``START/END`` (dates or datetimes; ``..`` for open ends) to UTC datetimes.

    A date-only END covers that whole day.
    """
    if not interval:
        return None, None
    start_s, end_s = (p.strip() for p in interval.split("/"))
    start = None if start_s in ("", "..") else parse_datetime(start_s)
    end = None
    if end_s not in ("", ".."):
        end = parse_datetime(end_s)
        if len(end_s) == 10:
            end = end.replace(hour=23, minute=59, second=59, microsecond=999999)
    return start, end


def scene_from_item(item: Mapping[str, Any]) -> Scene:
    """Build a :class:`Scene` from a STAC item dict.

    Raises
    ------
    CatalogError
        When the item has no geometry or no datetime (nor start_datetime).
    """
    props = dict(item.get("properties") or {})
    dt = props.get("datetime") or props.get("start_datetime")
    if not dt or not item.get("geometry"):
        raise CatalogError(f"item {item.get('id')!r} lacks a geometry or a datetime")
    cc = props.get("eo:cloud_cover")
    assets = {k: a for k, a in (item.get("assets") or {}).items() if isinstance(a, Mapping) and "href" in a}
    return Scene(
        id=str(item["id"]),
        collection=item.get("collection"),
        datetime=parse_datetime(dt),
        geometry=shape(item["geometry"]),
        cloud_cover=float(cc) if cc is not None else None,
        assets={k: a["href"] for k, a in assets.items()},
        properties=props,
        asset_fields={k: {f: v for f, v in a.items() if f != "href"} for k, a in assets.items()},
    )
