"""Credentials: where they come from, where they may go, and how they are kept out of text.

Credentials never travel inside a plan or a task: a task names its source's auth scheme
(``none``, ``earthdata``, ``planetary-computer``) and the worker that reads an asset builds the
GDAL options (:func:`gdal_auth_env`) and signs the href (:func:`sign_href`) itself, at read
time. Every message and every stored href goes through :func:`redact`.
"""

from __future__ import annotations

import netrc
import os
import re
from dataclasses import replace
from typing import Iterable

from ..errors import CatalogError
from .scene import Scene

AUTH_SCHEMES = ("none", "earthdata", "planetary-computer")


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
    """GDAL options carrying the credentials of an auth scheme (built on the worker, kept out of
    every output, task and message)."""
    if auth == "earthdata":
        tok = earthdata_token()
        if tok:
            return {"GDAL_HTTP_HEADERS": f"Authorization: Bearer {tok}"}
    return {}


def sign_href(href: str, auth: str) -> str:
    """The href to open for ``auth`` (Planetary Computer: a SAS-signed URL; else unchanged).

    Raises
    ------
    CatalogError
        When signing is asked for and the ``planetary-computer`` package is missing.
    """
    if auth != "planetary-computer" or not href.startswith(("http://", "https://")):
        return href
    try:
        import planetary_computer as pc
    except ImportError:
        raise CatalogError("search.auth 'planetary-computer' needs: pip install 'eochips[planetary-computer]'") from None
    return pc.sign(href)


def sign_hrefs(scenes: Iterable[Scene], auth: str) -> list[Scene]:
    """Scenes with every asset href signed for ``auth`` (see :func:`sign_href`)."""
    scenes = list(scenes)
    if auth != "planetary-computer":
        return scenes
    return [replace(s, assets={k: sign_href(h, auth) for k, h in s.assets.items()}) for s in scenes]


_SECRET = re.compile(r"([?&](?:sig|se|sp|sv|sr|st|skoid|sktid|skt|ske|sks|skv|token|X-Amz-[A-Za-z-]+)=)[^&\s]+", re.I)


def redact(text: str) -> str:
    """Remove query-string credentials (SAS tokens, signed-URL parameters) from a string."""
    return _SECRET.sub(r"\1REDACTED", text)
