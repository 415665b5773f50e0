"""Finding scenes: STAC APIs and static catalogs, with one filter semantics and one order.

Both backends apply the same steps to the same item dicts:

1. collections, AOI intersection (EPSG:4326) and the datetime interval;
2. the item filter: ``search.filter`` (CQL2 text or JSON) AND the ``cloud_cover`` bounds,
   evaluated with the ``cql2`` package (an item without a property the filter compares does
   not match, as in SQL and pgstac);
3. ``id_pattern`` (``re.search`` on the item id) and ``date_pattern`` (``re.search`` on the
   item's UTC date ``YYYY-MM-DD``: cloud-buster's date regexp);
4. the order ``sortby`` (default datetime then id; id always breaks ties);
5. the first ``max_items``.

On an API the filter is also sent to the server (cql2-json, when it implements the Filter
extension) and the order too (when it implements Sort), to cut traffic; with ``max_items`` the
pages are read until ``max_items`` items passed steps 1-3 and the boundary's ties are in, so
a static copy of an API gives the same scenes (D8 of the engine review).

Retries: one layer per transport. Each API request, and each document of a static catalog
fetched over HTTP, is retried on its own with one policy (:func:`retry_policy`: connection
errors, timeouts, truncated bodies, HTTP 429/500/502/503/504; ``Retry-After`` honoured),
classified by exception type and status code, never by message text; urllib3's own retries are
off. A host name that does not resolve is not retried (:func:`dns_failure`): offline, it fails
at once with one line.
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
        self.date_re = re.compile(cfg.date_pattern) if cfg.date_pattern else None

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
        if self.date_re is not None and not self.date_re.search(when.strftime("%Y-%m-%d")):
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
        every = _static_items(cfg.catalog, cfg.max_retries)
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
    a truncated or undecodable body, or HTTP 429/500/502/503/504 (by status code, not message).
    A host name that does not resolve is not (:func:`dns_failure`)."""
    import requests

    from pystac_client.exceptions import APIError

    if dns_failure(exc):
        return False  # a host name that does not resolve: offline or a typo, retrying will not help
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, APIError) and getattr(exc, "status_code", None) is not None:
            return exc.status_code in TRANSIENT_STATUS
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            return exc.response.status_code in TRANSIENT_STATUS
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            requests.exceptions.ContentDecodingError, json.JSONDecodeError, UnicodeDecodeError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def dns_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it wraps) is a failed host-name lookup
    (``socket.gaierror``, urllib3's ``NameResolutionError``)."""
    import socket

    from urllib3.exceptions import NameResolutionError

    todo, seen = [exc], set()
    while todo and len(seen) < 30:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (socket.gaierror, NameResolutionError)):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return False


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or url


def retry_policy(max_retries: int, retry_after=lambda: 0.0):
    """The tenacity policy of every catalog request (API and static): :func:`transient`
    failures retried ``max_retries`` times with jittered exponential backoff (at most 8 s, or
    the server's ``Retry-After`` up to 30 s), then the last failure re-raised."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    backoff = wait_random_exponential(multiplier=0.25, max=8)

    def wait(state) -> float:
        return max(backoff(state), min(retry_after(), 30.0))

    return Retrying(retry=retry_if_exception(transient), stop=stop_after_attempt(max_retries + 1), wait=wait, reraise=True)


def _retrying_io(cfg: SearchConfig):
    """A pystac-client ``StacApiIO`` whose every request is retried on its own (module docstring)."""
    from pystac_client.stac_api_io import StacApiIO

    class RetryingIO(StacApiIO):
        retry_after: float = 0.0

        def request(self, href, method=None, headers=None, parameters=None):
            for att in retry_policy(cfg.max_retries, lambda: self.retry_after):
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
        if dns_failure(exc):
            raise CatalogError(f"catalog {where!r}: host {_host(cfg.catalog)!r} does not resolve (DNS); "
                               "check the URL and the network") from None
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
    return redact(s)[:n]  # redacted first: a cut must not leave half a secret


# --------------------------------------------------------------------------------------
# static catalogs

def _static_items(location: str, max_retries: int = 5) -> list[dict]:
    """Every item dict of a static catalog (hrefs made absolute): ItemCollection /
    FeatureCollection JSON, a list of items, a STAC Catalog or Collection JSON (its child and
    item links are followed, :func:`_catalog_items`), or a stac-geoparquet file. Documents over
    HTTP are fetched with :func:`retry_policy`.

    Raises
    ------
    CatalogError
        A document cannot be read or fetched (naming it and why), is not STAC, or child links
        form a cycle.
    """
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
    doc = _read_json(location, max_retries)
    if isinstance(doc, list):
        return [_absolute(it, location) for it in doc]
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        return [_absolute(it, location) for it in doc.get("features", [])]
    if kind == "Feature":
        return [_absolute(doc, location)]
    if kind in ("Catalog", "Collection"):
        return _catalog_items(doc, location, max_retries)
    raise CatalogError(f"{redact(location)!r} is not a STAC ItemCollection, Catalog or stac-geoparquet file (type={kind!r})")


def _catalog_items(root: dict, location: str, max_retries: int) -> list[dict]:
    """The items below a static Catalog / Collection: its ``item`` links, then its ``child``
    links' items, depth first in link order, each document read once. A link back to a document
    on the way down (a catalog that is its own child) is an error, not an endless walk."""
    out: list[dict] = []
    seen = {location}
    stack: list[tuple[str, dict, tuple[str, ...]]] = [(location, root, ())]
    while stack:
        href, doc, above = stack.pop()
        children = []
        for link in doc.get("links") or []:
            if not isinstance(link, dict) or link.get("rel") not in ("item", "child") or not isinstance(link.get("href"), str):
                continue
            target = _join(href, link["href"])
            if target == href or target in above:
                raise CatalogError(f"static catalog {redact(location)!r}: {redact(href)!r} has a '{link['rel']}' link back to "
                                   f"{redact(target)!r} (a cycle); fix its links")
            if target in seen:
                continue  # reached twice (two parents): read once
            seen.add(target)
            sub = _read_json(target, max_retries)
            if not isinstance(sub, dict):
                raise CatalogError(f"static catalog {redact(location)!r}: {redact(target)!r} is not a STAC object")
            if sub.get("type") == "Feature":
                out.append(_absolute(sub, target))
            elif sub.get("type") in ("Catalog", "Collection"):
                children.append((target, sub, above + (href,)))
            else:
                raise CatalogError(f"static catalog {redact(location)!r}: {redact(target)!r} is not a STAC Item, Catalog "
                                   f"or Collection (type={sub.get('type')!r})")
        stack.extend(reversed(children))
    return out


def _join(base: str, href: str) -> str:
    """``href`` of a link made absolute against the document ``base`` it is in."""
    from urllib.parse import urljoin

    if href.startswith("file://"):
        href = href[len("file://"):]
    if "://" in href or os.path.isabs(href):
        return href
    if base.startswith(("http://", "https://")):
        return urljoin(base, href)
    return str((Path(base).absolute().parent / href).resolve())


def _absolute(item: dict, location: str) -> dict:
    """Resolve relative asset hrefs against the folder (or URL) of the catalog file."""
    assets = {k: (dict(a, href=_join(location, a["href"])) if isinstance(a, dict) and isinstance(a.get("href"), str) else a)
              for k, a in (item.get("assets") or {}).items()}
    return dict(item, assets=assets)


def _read_json(location: str, max_retries: int = 5) -> Any:
    """A JSON document of a static catalog: a local file, or fetched over HTTP with
    :func:`retry_policy` (a 503, a reset, a truncated body are retried; a 404 or a host that
    does not resolve are not)."""
    where = redact(location)
    if location.startswith(("http://", "https://")):
        return _fetch_json(location, max_retries)
    p = Path(location)
    if p.is_dir():
        raise CatalogError(f"static catalog {where!r} is a folder; give its catalog.json or items file")
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CatalogError(f"static catalog {where!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"static catalog {where!r} is not UTF-8 JSON (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise CatalogError(f"static catalog {where!r} cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CatalogError(f"static catalog {where!r} could not be read as JSON: {_short(exc)}") from None


def _fetch_json(url: str, max_retries: int) -> Any:
    import requests

    where = redact(url)
    ra = {"s": 0.0}
    try:
        for att in retry_policy(max_retries, lambda: ra["s"]):
            with att:
                ra["s"] = 0.0
                r = requests.get(url, timeout=(10, 60))
                h = r.headers.get("Retry-After")
                if h and h.strip().isdigit():
                    ra["s"] = float(h)
                r.raise_for_status()
                text = r.content.decode("utf-8")
                if text.lstrip()[:1] not in ("{", "["):
                    raise CatalogError(f"static catalog {where!r} did not answer JSON (it starts {text.lstrip()[:40]!r})")
                return json.loads(text)  # a truncated body raises here, inside the retry
    except CatalogError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests / json / decoding: named below
        if dns_failure(exc):
            raise CatalogError(f"static catalog {where!r}: host {_host(url)!r} does not resolve (DNS); "
                               "check the URL and the network") from None
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            if code not in TRANSIENT_STATUS:
                raise CatalogError(f"static catalog {where!r} answered HTTP {code} {exc.response.reason or ''}".rstrip()) from None
        if transient(exc):
            raise CatalogError(f"static catalog {where!r} kept failing after {max_retries} retries: "
                               f"{type(exc).__name__}: {_short(exc)}") from None
        raise CatalogError(f"static catalog {where!r} could not be fetched: {type(exc).__name__}: {_short(exc)}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_by_ids(cfg: SearchConfig, ids: Iterable[str], aoi: BaseGeometry) -> dict[str, Scene]:
    """The scenes of ``ids`` from the source's catalog again (fresh hrefs), by searching with the
    same parameters and picking the ids; missing ids are absent from the result."""
    want = set(ids)
    try:
        got = search(cfg.model_copy(update={"max_items": None}), aoi)
    except NoScenesError:
        return {}
    return {s.id: s for s in got if s.id in want}

