"""Finding scenes (STAC APIs and static catalogs, one filter semantics) and their credentials.

- :mod:`eochips.search.scene`: the frozen :class:`Scene` value object;
- :mod:`eochips.search.stac`: :func:`search` over an API or a static catalog;
- :mod:`eochips.search.auth`: Earthdata tokens, Planetary Computer signing, redaction.
"""

from .auth import (AUTH_SCHEMES, auth_hosts, credentials_allowed, earthdata_token, env_for_href, gdal_auth_env, is_redacted,
                   redact, redact_obj, sign_href, sign_hrefs)
from .scene import FrozenDict, Scene, freeze, parse_datetime, parse_interval, scene_from_item, thaw
from .stac import ItemMatcher, fetch_by_ids, is_api, item_filter, search, sort_fields, sort_items, transient

__all__ = [
    "Scene", "FrozenDict", "freeze", "thaw", "scene_from_item", "parse_datetime", "parse_interval", "search", "is_api",
    "item_filter", "ItemMatcher", "sort_fields", "sort_items", "transient", "fetch_by_ids", "AUTH_SCHEMES",
    "earthdata_token", "gdal_auth_env", "redact", "redact_obj", "is_redacted", "sign_href", "sign_hrefs", "auth_hosts",
    "credentials_allowed", "env_for_href",
]
