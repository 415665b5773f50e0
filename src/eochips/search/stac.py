"""Finding scenes: STAC APIs and static catalogs, with one filter semantics and one order.

Both backends apply the same steps to the same item dicts:

1. collections, AOI intersection (EPSG:4326) and the datetime interval;
2. the item filter: ``search.filter`` (CQL2 text or JSON) AND the ``cloud_cover`` bounds,
   evaluated with the ``cql2`` package (an item without a property the filter compares does
   not match, as in SQL and pgstac);
3. ``id_pattern``;
4. the order ``sortby`` (default datetime then id; id always breaks ties);
5. the first ``max_items``.

On an API the filter is also sent to the server (cql2-json, when it implements the Filter
extension) and the order too (when it implements Sort), to cut traffic; with ``max_items`` the
pages are read until ``max_items`` items passed steps 1-3 and the boundary's ties are in, so
a static copy of an API gives the same scenes (D8 of the engine review).

Retries: one layer per transport. Each API request is retried on its own (connection errors,
timeouts, truncated bodies, HTTP 429/500/502/503/504; ``Retry-After`` honoured), classified by
exception type and status code, never by message text; urllib3's own retries are off.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from ..config import SearchConfig
from ..errors import CatalogError, NoScenesError
from .auth import redact
from .scene import Scene, parse_datetime, parse_interval, scene_from_item

TRANSIENT_STATUS = (429, 500, 502, 503, 504)


# --------------------------------------------------------------------------------------
# the filter

def item_filter(cfg: SearchConfig) -> dict | None:
    """The CQL2 JSON of ``search.filter`` AND the ``cloud_cover`` bounds, or None."""
    import cql2

    args = []
    if cfg.filter is not None:
        args.append(cql2.Expr(cfg.filter).to_json())
    cc = cfg.cloud_cover
    if cc.min is not None:
        args.append({"op": ">=", "args": [{"property": "eo:cloud_cover"}, cc.min]})
    if cc.max is not None:
        args.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, cc.max]})
    if not args:
        return None
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


class ItemMatcher:
    """Steps 1-3 of the module docstring for one search (built once, applied per item dict)."""

    def __init__(self, cfg: SearchConfig, aoi: BaseGeometry | None):
        import cql2

        self.cfg, self.aoi = cfg, aoi
        if aoi is not None:
            shapely.prepare(aoi)
        self.start, self.end = parse_interval(cfg.datetime)
        f = item_filter(cfg)
        self.expr = cql2.Expr(f) if f is not None else None
        self.id_re = re.compile(cfg.id_pattern) if cfg.id_pattern else None

    def __call__(self, item: Mapping[str, Any]) -> bool:
        coll = item.get("collection")
        if coll is not None and coll not in self.cfg.collections:
            return False
        props = item.get("properties") or {}
        dt = props.get("datetime") or props.get("start_datetime")
        if not dt or not item.get("geometry"):
            return False
        if self.aoi is not None and not self.aoi.intersects(shape(item["geometry"])):
            return False
        when = parse_datetime(dt)
        if (self.start and when < self.start) or (self.end and when > self.end):
            return False
        if self.expr is not None:
            try:
                if not self.expr.matches(dict(item)):
                    return False
            except Exception:  # noqa: BLE001 - cql2: "could not reduce" = a compared property is missing
                return False
        if self.id_re is not None and not self.id_re.search(str(item.get("id"))):
            return False
        return True


def _field(item: Mapping[str, Any], name: str) -> Any:
    if name in ("id", "collection"):
        return item.get(name)
    props = item.get("properties") or {}
    key = name.removeprefix("properties.")
    v = props.get(key)
    if key == "datetime" and v is None:
        v = props.get("start_datetime")
    return parse_datetime(v).timestamp() if key.endswith("datetime") and isinstance(v, str) else v


def sort_fields(cfg: SearchConfig) -> list[tuple[str, bool]]:
    """``(field, descending)`` pairs of the search's order; ``id`` always last."""
    fields = [(f.lstrip("+-"), f.startswith("-")) for f in (cfg.sortby or ["+datetime"])]
    if not any(f in ("id", "properties.id") for f, _ in fields):
        fields.append(("id", False))
    return fields


def sort_items(items: list[dict], fields: list[tuple[str, bool]]) -> list[dict]:
    """Items in the order of ``fields`` (a missing value sorts last either way); a stable sort per field."""
    out = list(items)
    for name, desc in reversed(fields):
        present = [it for it in out if _field(it, name) is not None]
        missing = [it for it in out if _field(it, name) is None]
        present.sort(key=lambda it: _sortable(_field(it, name)), reverse=desc)
        out = present + missing
    return out


def _sortable(v: Any) -> Any:
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))


# --------------------------------------------------------------------------------------
# search

def search(cfg: SearchConfig, aoi: BaseGeometry) -> list[Scene]:
    """Find the scenes of a source's search over an AOI (see the module docstring).

    Parameters
    ----------
    cfg
        The source's ``search`` section.
    aoi
        The AOI in EPSG:4326 (degrees).

    Returns
    -------
    list of Scene
        In ``sortby`` order (default datetime, id), duplicates removed, at most ``max_items``.

    Raises
    ------
    CatalogError
        The catalog cannot be opened, is not a STAC API / catalog, or a request kept failing.
    NoScenesError
        Nothing matched.
    """
    match = ItemMatcher(cfg, aoi)
    fields = sort_fields(cfg)
    if is_api(cfg.catalog):
        items = _search_api(cfg, aoi, match, fields)
    else:
        every = _static_items(cfg.catalog)
        held = sorted({it.get("collection") for it in every if it.get("collection")})
        unknown = [c for c in cfg.collections if held and c not in held]
        if unknown:
            raise CatalogError(f"search.collections: {unknown} not in {redact(cfg.catalog)!r}; it holds: {', '.join(held)}")
        items = [it for it in every if match(it)]
    ordered = sort_items(unique_items(items, cfg.catalog), fields)
    if cfg.max_items:
        ordered = ordered[: cfg.max_items]
    if not ordered:
        raise NoScenesError(
            f"search found no scenes in {redact(cfg.catalog)!r} for collections {cfg.collections}, datetime "
            f"{cfg.datetime or 'any'}, filter {json.dumps(item_filter(cfg)) if item_filter(cfg) else 'none'} over the AOI "
            f"{tuple(round(v, 4) for v in aoi.bounds)}; widen the datetime range or the filter"
        )
    return [scene_from_item(it) for it in ordered]


def _where(item: Mapping[str, Any]) -> str:
    """Where an item comes from, for messages: its self link, else its first asset href."""
    for link in item.get("links") or []:
        if isinstance(link, Mapping) and link.get("rel") == "self" and link.get("href"):
            return redact(str(link["href"]))
    for a in (item.get("assets") or {}).values():
        if isinstance(a, Mapping) and a.get("href"):
            return redact(str(a["href"]))
    return "(no href)"


def unique_items(items: list[dict], catalog: str) -> list[dict]:
    """``items`` with repeats of the same item (an API page overlap, a catalog listing an item
    twice: equal JSON) kept once, in their order.

    A plan keys the scenes of a source by item id, so two *different* items with one id (in one
    collection, or in two collections of one source) would silently build every unit from one
    while the index named the other: that is an error.

    Raises
    ------
    CatalogError
        Two different items share an id (the message names the id and both items' hrefs).
    """
    seen: dict[str, tuple[dict, str]] = {}
    out = []
    for it in items:
        iid = str(it.get("id"))
        body = json.dumps(it, sort_keys=True, default=str)
        if iid not in seen:
            seen[iid] = (it, body)
            out.append(it)
        elif seen[iid][1] != body:
            first = seen[iid][0]
            raise CatalogError(f"{redact(catalog)!r} holds two different items with id {iid!r} (collection "
                               f"{first.get('collection')!r}: {_where(first)}; collection {it.get('collection')!r}: "
                               f"{_where(it)}); item ids must be unique within a source: remove one, or give each "
                               f"collection its own source")
    return out


def is_api(catalog: str) -> bool:
    """True for a STAC API root URL (not a ``.json`` / ``.geojson`` / ``.parquet`` file)."""
    if not catalog.startswith(("http://", "https://")):
        return False
    return not catalog.lower().split("?")[0].endswith((".json", ".geojson", ".parquet"))


def transient(exc: BaseException) -> bool:
    """True for a failure of one HTTP request that a retry may fix: a connection error, a timeout,
    a truncated or undecodable body, or HTTP 429/500/502/503/504 (by status code, not message)."""
    import requests

    from pystac_client.exceptions import APIError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, APIError) and getattr(exc, "status_code", None) is not None:
            return exc.status_code in TRANSIENT_STATUS
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ContentDecodingError, json.JSONDecodeError, UnicodeDecodeError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _retrying_io(cfg: SearchConfig):
    """A pystac-client ``StacApiIO`` whose every request is retried on its own (module docstring)."""
    from pystac_client.stac_api_io import StacApiIO
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    backoff = wait_random_exponential(multiplier=0.25, max=8)

    class RetryingIO(StacApiIO):
        retry_after: float = 0.0

        def request(self, href, method=None, headers=None, parameters=None):
            def wait(state) -> float:
                return max(backoff(state), min(self.retry_after, 30.0))

            for att in Retrying(retry=retry_if_exception(transient), stop=stop_after_attempt(cfg.max_retries + 1), wait=wait,
                                reraise=True):
                with att:
                    self.retry_after = 0.0
                    text = super().request(href, method=method, headers=headers, parameters=parameters)
                    if text.lstrip()[:1] in ("{", "["):
                        json.loads(text)  # a truncated body raises here, inside the retry
                    return text
            raise AssertionError("unreachable")  # pragma: no cover

    io = RetryingIO(max_retries=0, timeout=30)

    def remember(resp, *args, **kwargs):
        ra = resp.headers.get("Retry-After")
        if ra and ra.strip().isdigit():
            io.retry_after = float(ra)
        return resp

    io.session.hooks["response"].append(remember)
    return io


def _search_api(cfg: SearchConfig, aoi: BaseGeometry, match: ItemMatcher, fields) -> list[dict]:
    from pystac_client import Client

    where = redact(cfg.catalog)
    try:
        client = Client.open(cfg.catalog, stac_io=_retrying_io(cfg))
    except Exception as exc:  # pystac-client raises many kinds here
        kind = "kept failing" if transient(exc) else "is not a reachable STAC API"
        raise CatalogError(f"catalog {where!r} {kind}: {type(exc).__name__}: {_short(exc)}") from None
    unknown = []
    for cid in cfg.collections:  # one request per id: CMR-STAC lists thousands of collections
        try:
            client.get_collection(cid)
        except Exception as exc:
            if transient(exc):
                raise CatalogError(f"catalog {where!r} kept failing after {cfg.max_retries} retries: {_short(exc)}") from None
            unknown.append(cid)
    if unknown:
        raise CatalogError(f"search.collections: {unknown} not found in the STAC API {where!r} "
                           f"(list its collections at {where.rstrip('/')}/collections)")
    kwargs: dict[str, Any] = dict(collections=cfg.collections, intersects=shapely.geometry.mapping(aoi),
                                  datetime=cfg.datetime, limit=cfg.page_size, method="POST")
    cql = item_filter(cfg)
    if cql is not None and client.conforms_to("FILTER"):
        kwargs.update(filter=cql, filter_lang="cql2-json")
    server_sorted = client.conforms_to("SORT")
    if server_sorted:
        kwargs["sortby"] = [("-" if d else "+") + f for f, d in fields]
    out: list[dict] = []
    try:
        for it in client.search(**kwargs).items_as_dicts():
            if not match(it):
                continue
            if cfg.max_items and server_sorted and len(out) >= cfg.max_items:
                last = [_field(out[-1], f) for f, _ in fields[:-1]]
                if [_field(it, f) for f, _ in fields[:-1]] != last:
                    break  # past the cut and its ties: the rest cannot be among the first max_items
            out.append(it)
    except Exception as exc:
        kind = f"kept failing after {cfg.max_retries} retries" if transient(exc) else "failed"
        raise CatalogError(f"search of {where!r} {kind}: {type(exc).__name__}: {_short(exc)}") from None
    return out


def _short(exc: BaseException, n: int = 300) -> str:
    s = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return redact(s[:n])


# --------------------------------------------------------------------------------------
# static catalogs

def _static_items(location: str) -> list[dict]:
    """Every item dict of a static catalog (hrefs made absolute): ItemCollection /
    FeatureCollection JSON, a list of items, a STAC Catalog JSON (its item links are followed),
    or a stac-geoparquet file."""
    if location.lower().endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
            import stac_geoparquet.arrow as sga
        except ImportError:  # pragma: no cover - optional dependency
            raise CatalogError("reading stac-geoparquet needs the 'geoparquet' extra: pip install 'eochips[geoparquet]'") from None
        try:
            table = pq.read_table(location)
        except (OSError, ValueError) as exc:
            raise CatalogError(f"static catalog {redact(location)!r} could not be read as Parquet: {_short(exc)}") from None
        return [dict(it) for it in sga.stac_table_to_items(table)]
    doc = _read_json(location)
    if isinstance(doc, list):
        return [_absolute(it, location) for it in doc]
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        return [_absolute(it, location) for it in doc.get("features", [])]
    if kind == "Feature":
        return [_absolute(doc, location)]
    if kind in ("Catalog", "Collection"):
        import pystac

        cat = pystac.read_file(location)
        return [it.to_dict(transform_hrefs=True) for it in cat.get_items(recursive=True)]
    raise CatalogError(f"{redact(location)!r} is not a STAC ItemCollection, Catalog or stac-geoparquet file (type={kind!r})")


def _absolute(item: dict, location: str) -> dict:
    """Resolve relative asset hrefs against the folder (or URL) of the catalog file."""
    from urllib.parse import urljoin

    def fix(h: str) -> str:
        if "://" in h or os.path.isabs(h):
            return h
        if location.startswith(("http://", "https://")):
            return urljoin(location, h)
        return str((Path(location).resolve().parent / h).resolve())

    assets = {k: (dict(a, href=fix(a["href"])) if isinstance(a, dict) and "href" in a else a)
              for k, a in (item.get("assets") or {}).items()}
    return dict(item, assets=assets)


def _read_json(location: str) -> Any:
    try:
        if location.startswith(("http://", "https://")):
            import requests
            from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

            for att in Retrying(retry=retry_if_exception(_http_transient), stop=stop_after_attempt(6),
                                wait=wait_random_exponential(multiplier=0.25, max=8), reraise=True):
                with att:
                    r = requests.get(location, timeout=60)
                    r.raise_for_status()
                    return r.json()
        return json.loads(Path(location).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(f"static catalog {redact(location)!r} does not exist") from None
    except (ValueError, OSError) as exc:
        raise CatalogError(f"static catalog {redact(location)!r} could not be read as JSON: {_short(exc)}") from None
    except Exception as exc:
        raise CatalogError(f"static catalog {redact(location)!r} could not be fetched: {_short(exc)}") from None


def _http_transient(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUS
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            json.JSONDecodeError))


def fetch_by_ids(cfg: SearchConfig, ids: Iterable[str], aoi: BaseGeometry) -> dict[str, Scene]:
    """The scenes of ``ids`` from the source's catalog again (fresh hrefs), by searching with the
    same parameters and picking the ids; missing ids are absent from the result."""
    want = set(ids)
    try:
        got = search(cfg.model_copy(update={"max_items": None}), aoi)
    except NoScenesError:
        return {}
    return {s.id: s for s in got if s.id in want}

