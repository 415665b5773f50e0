"""Finding scenes: STAC APIs and static catalogs, with one filter semantics.

Items are turned into frozen :class:`Scene` objects at this boundary; nothing downstream
touches pystac objects. Both backends apply the same filters (collections, AOI intersection,
datetime interval, ``eo:cloud_cover`` bounds, an id regex), so a static ItemCollection and an
API holding the same items give the same scenes. On an API the filters are also sent to the
server (cql2-json over POST when the API conforms to the Filter extension) to cut traffic; the
client-side pass then only confirms.

Credentials: the Earthdata bearer token is read from ``$EARTHDATA_TOKEN`` (or a ``password``
for ``urs.earthdata.nasa.gov`` in ``~/.netrc``) and only ever placed in the GDAL / HTTP
environment of a read; it is never logged or written.
"""

from __future__ import annotations

import json
import netrc
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from .config import SearchConfig
from .errors import CatalogError, NoScenesError


@dataclass(frozen=True)
class Scene:
    """One STAC item, reduced to what eochips needs. Immutable and picklable.

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
        Asset key -> href.
    properties
        The item's properties (read-only by convention).
    """

    id: str
    collection: str | None
    datetime: datetime
    geometry: BaseGeometry
    cloud_cover: float | None
    assets: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def date(self) -> str:
        """``YYYY-MM-DD`` of the acquisition (UTC)."""
        return self.datetime.strftime("%Y-%m-%d")


def _parse_dt(value: str) -> datetime:
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
    start = None if start_s in ("", "..") else _parse_dt(start_s)
    end = None
    if end_s not in ("", ".."):
        end = _parse_dt(end_s)
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
    return Scene(
        id=str(item["id"]),
        collection=item.get("collection"),
        datetime=_parse_dt(dt),
        geometry=shape(item["geometry"]),
        cloud_cover=float(cc) if cc is not None else None,
        assets={k: a["href"] for k, a in (item.get("assets") or {}).items() if "href" in a},
        properties=props,
    )


def matches(scene: Scene, cfg: SearchConfig, aoi: BaseGeometry | None) -> bool:
    """The client-side filter every backend applies (see module docstring)."""
    if cfg.collections and scene.collection is not None and scene.collection not in cfg.collections:
        return False
    if aoi is not None and not scene.geometry.intersects(aoi):
        return False
    start, end = parse_interval(cfg.datetime)
    if (start and scene.datetime < start) or (end and scene.datetime > end):
        return False
    cc = cfg.cloud_cover
    if cc.min is not None or cc.max is not None:
        if scene.cloud_cover is None:
            return False
        if (cc.min is not None and scene.cloud_cover < cc.min) or (cc.max is not None and scene.cloud_cover > cc.max):
            return False
    if cfg.id_pattern and not re.search(cfg.id_pattern, scene.id):
        return False
    return True


def _cql2(cfg: SearchConfig) -> dict | None:
    args = []
    if cfg.cloud_cover.min is not None:
        args.append({"op": ">=", "args": [{"property": "eo:cloud_cover"}, cfg.cloud_cover.min]})
    if cfg.cloud_cover.max is not None:
        args.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, cfg.cloud_cover.max]})
    if not args:
        return None
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def _is_api(catalog: str) -> bool:
    if not catalog.startswith(("http://", "https://")):
        return False
    return not catalog.lower().split("?")[0].endswith((".json", ".geojson", ".parquet"))


def search(cfg: SearchConfig, aoi: BaseGeometry) -> list[Scene]:
    """Find the scenes of a recipe's search section over an AOI.

    Parameters
    ----------
    cfg
        The recipe's ``search`` section.
    aoi
        The AOI in EPSG:4326 (degrees).

    Returns
    -------
    list of Scene
        Sorted by (datetime, id); duplicates removed.

    Raises
    ------
    CatalogError
        The catalog cannot be opened, is not a STAC API / catalog, or a request failed.
    NoScenesError
        Nothing matched.
    """
    if _is_api(cfg.catalog):
        scenes = _search_api(cfg, aoi)
    else:
        every = _static_scenes(cfg.catalog)
        held = sorted({s.collection for s in every if s.collection})
        unknown = [c for c in cfg.collections if held and c not in held]
        if unknown:
            raise CatalogError(f"search.collections: {unknown} not in {cfg.catalog!r}; it holds: {', '.join(held)}")
        scenes = [s for s in every if matches(s, cfg, aoi)]
    uniq = {s.id: s for s in scenes}
    out = sorted(uniq.values(), key=lambda s: (s.datetime, s.id))
    if cfg.max_items:
        out = out[: cfg.max_items]
    if not out:
        raise NoScenesError(
            f"search found no scenes in {cfg.catalog!r} for collections {cfg.collections}, datetime "
            f"{cfg.datetime or 'any'}, eo:cloud_cover {cfg.cloud_cover.min}..{cfg.cloud_cover.max} over the AOI "
            f"{tuple(round(v, 4) for v in aoi.bounds)}; widen the datetime or cloud-cover range"
        )
    return out


class _TransientCatalogError(Exception):
    pass


def _transient(exc: BaseException) -> bool:
    """Errors of a STAC API request worth retrying: resets, timeouts, truncated bodies, 5xx, 429."""
    import requests

    markers = ("Max retries exceeded", "Connection broken", "IncompleteRead", "Connection aborted", "Connection reset",
               "timed out", "RemoteDisconnected")
    seen = 0
    while exc is not None and seen < 10:  # pystac wraps the network error: look down the chain
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ContentDecodingError)):
            return True
        text = str(exc)
        if any(m in text for m in markers) or any(f" {c}" in text or text.startswith(str(c)) for c in (429, 500, 502, 503, 504)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _search_api(cfg: SearchConfig, aoi: BaseGeometry) -> list[Scene]:
    """Search a STAC API; the whole request sequence is retried on transient errors
    (urllib3 retries 5xx/429 per request; resets, timeouts and truncated bodies surface later
    and are retried here, capped exponential backoff with jitter)."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
    from urllib3 import Retry

    retry = Retry(total=cfg.max_retries, backoff_factor=0.25, status_forcelist=[429, 500, 502, 503, 504],
                  allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)

    def attempt() -> list[dict]:
        try:
            client = Client.open(cfg.catalog, stac_io=StacApiIO(max_retries=retry, timeout=30))
        except Exception as exc:  # pystac-client raises many kinds here
            if _transient(exc):
                raise _TransientCatalogError(str(exc)) from None
            raise CatalogError(f"catalog {cfg.catalog!r} is not a reachable STAC API: {type(exc).__name__}: {_short(exc)}") from None
        unknown = []
        for cid in cfg.collections:  # one request per id: CMR-STAC lists thousands of collections
            try:
                client.get_collection(cid)
            except Exception as exc:
                if _transient(exc):
                    raise _TransientCatalogError(str(exc)) from None
                unknown.append(cid)
        if unknown:
            raise CatalogError(f"search.collections: {unknown} not found in the STAC API {cfg.catalog!r} "
                               f"(list its collections at {cfg.catalog.rstrip('/')}/collections)")
        kwargs: dict[str, Any] = dict(
            collections=cfg.collections, intersects=shapely.geometry.mapping(aoi), datetime=cfg.datetime,
            limit=cfg.page_size, max_items=cfg.max_items, method="POST",
        )
        cql = _cql2(cfg)
        if cql is not None and client.conforms_to("FILTER"):
            kwargs.update(filter=cql, filter_lang="cql2-json")
        if cfg.sortby:
            kwargs["sortby"] = cfg.sortby
        try:
            return list(client.search(**kwargs).items_as_dicts())
        except Exception as exc:
            if _transient(exc):
                raise _TransientCatalogError(str(exc)) from None
            raise CatalogError(f"search of {cfg.catalog!r} failed: {type(exc).__name__}: {_short(exc)}") from None

    try:
        for att in Retrying(retry=retry_if_exception_type(_TransientCatalogError), stop=stop_after_attempt(cfg.max_retries + 1),
                            wait=wait_random_exponential(multiplier=0.25, max=8), reraise=True):
            with att:
                items = attempt()
    except _TransientCatalogError as exc:
        raise CatalogError(f"search of {cfg.catalog!r} kept failing after {cfg.max_retries} retries: {_short(exc)}") from None
    scenes = [scene_from_item(it) for it in items]
    return [s for s in scenes if matches(s, cfg, aoi)]


def _short(exc: BaseException, n: int = 300) -> str:
    s = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return s[:n]


def _static_scenes(location: str) -> list[Scene]:
    """Read every item of a static catalog: ItemCollection/FeatureCollection JSON, a list of items,
    a STAC Catalog JSON (its item links are followed), or a stac-geoparquet file."""
    if location.lower().endswith(".parquet"):
        try:
            import stac_geoparquet.arrow as sga
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - optional dependency
            raise CatalogError("reading stac-geoparquet needs the 'geoparquet' extra: pip install 'eochips[geoparquet]'") from None
        table = pq.read_table(location)
        return [scene_from_item(it) for it in sga.stac_table_to_items(table)]
    doc = _read_json(location)
    if isinstance(doc, list):
        return [_absolute(scene_from_item(it), location) for it in doc]
    kind = doc.get("type")
    if kind == "FeatureCollection":
        return [_absolute(scene_from_item(it), location) for it in doc.get("features", [])]
    if kind == "Feature":
        return [_absolute(scene_from_item(doc), location)]
    if kind in ("Catalog", "Collection"):
        import pystac

        cat = pystac.read_file(location)
        return [scene_from_item(it.to_dict(transform_hrefs=True)) for it in cat.get_items(recursive=True)]
    raise CatalogError(f"{location!r} is not a STAC ItemCollection, Catalog or stac-geoparquet file (type={kind!r})")


def _absolute(scene: Scene, location: str) -> Scene:
    """Resolve relative asset hrefs against the folder (or URL) of the catalog file."""
    from dataclasses import replace
    from urllib.parse import urljoin

    def fix(h: str) -> str:
        if "://" in h or os.path.isabs(h):
            return h
        if location.startswith(("http://", "https://")):
            return urljoin(location, h)
        return str((Path(location).resolve().parent / h).resolve())

    return replace(scene, assets={k: fix(h) for k, h in scene.assets.items()})


def _read_json(location: str) -> Any:
    try:
        if location.startswith(("http://", "https://")):
            import requests

            r = requests.get(location, timeout=60)
            r.raise_for_status()
            return r.json()
        return json.loads(Path(location).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"static catalog {location!r} does not exist") from None
    except (ValueError, OSError) as exc:
        raise CatalogError(f"static catalog {location!r} could not be read as JSON: {_short(exc)}") from None
    except Exception as exc:
        raise CatalogError(f"static catalog {location!r} could not be fetched: {_short(exc)}") from None


# --------------------------------------------------------------------------------------
# credentials

def earthdata_token() -> str | None:
    """The Earthdata Login bearer token: ``$EARTHDATA_TOKEN``, else the ``password`` of the
    ``urs.earthdata.nasa.gov`` machine in ``~/.netrc`` (or ``$NETRC``). Never logged."""
    tok = os.environ.get("EARTHDATA_TOKEN")
    if tok:
        return tok
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators("urs.earthdata.nasa.gov")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return auth[2] if auth else None


def gdal_auth_env(auth: str) -> dict[str, str]:
    """GDAL options carrying the credentials of ``search.auth`` (kept out of every output)."""
    if auth == "earthdata":
        tok = earthdata_token()
        if tok:
            return {"GDAL_HTTP_HEADERS": f"Authorization: Bearer {tok}"}
    return {}


def sign_hrefs(scenes: Iterable[Scene], auth: str) -> list[Scene]:
    """Sign asset hrefs for Planetary Computer (``auth: planetary-computer``); else unchanged.

    Raises
    ------
    CatalogError
        When signing is asked for and the ``planetary-computer`` package is missing.
    """
    scenes = list(scenes)
    if auth != "planetary-computer":
        return scenes
    try:
        import planetary_computer as pc
    except ImportError:
        raise CatalogError("search.auth 'planetary-computer' needs: pip install 'eochips[planetary-computer]'") from None
    from dataclasses import replace

    return [replace(s, assets={k: pc.sign(h) for k, h in s.assets.items()}) for s in scenes]


_SECRET = re.compile(r"([?&](?:sig|se|sp|sv|sr|st|skoid|sktid|skt|ske|sks|skv|token|X-Amz-[A-Za-z-]+)=)[^&\s]+", re.I)


def redact(text: str) -> str:
    """Remove query-string credentials (SAS tokens, signed-URL parameters) from a string."""
    return _SECRET.sub(r"\1REDACTED", text)
