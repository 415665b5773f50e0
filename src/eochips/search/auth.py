"""Credentials: where they come from, where they may go, and how they are kept out of text.

Credentials never travel inside a plan or a task: a task names its source's auth scheme
(``none``, ``earthdata``, ``planetary-computer``) and the worker that reads an asset builds the
GDAL options (:func:`gdal_auth_env`) and signs the href (:func:`sign_href`) itself, at read
time. Every message and every stored text goes through :func:`redact`.

Where a bearer token may go is decided per read (:func:`env_for_href`): only ``https://`` to
the scheme's hosts (:data:`DEFAULT_AUTH_HOSTS`, or the recipe's ``search.auth_hosts``), plain
``http://`` only to a loopback host the recipe lists. Loopback is not allowed by default: a
token must not reach whatever listens on the machine (a proxy, a debug server) because an item
href names it; tests list ``127.0.0.1`` explicitly. Catalog requests (static JSON over HTTP,
STAC APIs through pystac-client) never carry it.
"""

from __future__ import annotations

import netrc
import os
import re
from dataclasses import replace
from typing import Any, Iterable, Mapping

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
    every output, task and message). Where they may be sent is decided per read by
    :func:`env_for_href`."""
    if auth == "earthdata":
        tok = earthdata_token()
        if tok:
            return {"GDAL_HTTP_HEADERS": f"Authorization: Bearer {tok}"}
    return {}


# --------------------------------------------------------------------------------------
# where credentials may go

DEFAULT_AUTH_HOSTS: dict[str, tuple[str, ...]] = {
    # Earthdata Login and the DAACs behind it (LP DAAC: data.lpdaac.earthdatacloud.nasa.gov,
    # the legacy data pool e4ftl01.cr.usgs.gov); a name matches itself and its subdomains
    "earthdata": ("earthdata.nasa.gov", "earthdatacloud.nasa.gov", "e4ftl01.cr.usgs.gov", "lpdaac.usgs.gov"),
}
AUTH_HOSTS_OPTION = "EOCHIPS_AUTH_HOSTS"
"""Key of a read's option dict listing the hosts its credentials may go to (comma-separated);
:func:`env_for_href` removes it before the options reach GDAL."""
_CREDENTIAL_OPTIONS = ("GDAL_HTTP_HEADERS",)
_LOOPBACK_NAMES = ("localhost",)


def auth_hosts(auth: str, hosts: Iterable[str] | None = None) -> tuple[str, ...]:
    """The hosts the credentials of ``auth`` may be sent to: ``hosts`` (the recipe's
    ``search.auth_hosts``) when given, else the scheme's defaults (:data:`DEFAULT_AUTH_HOSTS`)."""
    if hosts is not None:
        return tuple(h.lower().strip(".") for h in hosts)
    return DEFAULT_AUTH_HOSTS.get(auth, ())


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_allowed(href: str, hosts: Iterable[str]) -> bool:
    """True when a read of ``href`` may carry credentials meant for ``hosts``: an ``https://``
    URL whose host is one of ``hosts`` or a subdomain of one (``earthdata.nasa.gov`` allows
    ``urs.earthdata.nasa.gov``), or ``http://`` to a loopback host that ``hosts`` lists (tests
    without TLS). Never a plain-http remote host, never another scheme (``s3://``, a path).

    A redirect to another host does not carry them either: libcurl drops a custom
    ``Authorization`` header when a redirect changes the host or port, and GDAL does not add it
    to the redirect URLs it caches (``tests/test_security_v2.py`` checks both)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(href)
        host = (parts.hostname or "").lower().rstrip(".")
    except ValueError:
        return False
    if not host or parts.scheme not in ("https", "http"):
        return False
    allowed = {h.lower().strip(".") for h in hosts}
    match = any(host == h or host.endswith("." + h) for h in allowed)
    if parts.scheme == "http":
        return match and _is_loopback(host)
    return match


def env_for_href(href: str, env: Mapping) -> dict:
    """The GDAL options of one read of ``href``: ``env`` without its credential options unless
    :func:`credentials_allowed` says ``href`` may carry them (the hosts are ``env``'s
    :data:`AUTH_HOSTS_OPTION`; none listed: no credentials at all)."""
    out = dict(env)
    hosts = [h for h in str(out.pop(AUTH_HOSTS_OPTION, "") or "").split(",") if h]
    if not credentials_allowed(href, hosts):
        for key in _CREDENTIAL_OPTIONS:
            out.pop(key, None)
    return out


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


# --------------------------------------------------------------------------------------
# redaction

_PARAMS = (r"sig|se|sp|sv|sr|st|spr|srt|ss|skoid|sktid|skt|ske|sks|skv|token|access_token|id_token|refresh_token"
           r"|code|key|api_key|apikey|api-key|password|passwd|pwd|secret|client_secret|signature|policy|key-pair-id"
           r"|auth|session|X-Amz-[A-Za-z-]+|X-Goog-[A-Za-z-]+|x-oss-[A-Za-z-]+")
_SECRET = re.compile(rf"([?&;](?:{_PARAMS})=)([^&;\s\"'<>#\\]+)", re.I)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)([^/\s\"'<>@?#\\]+)@")
_PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
SECRET_VARS_ENV = "EOCHIPS_SECRET_VARS"
"""Environment variable naming (comma-separated) the ``${VAR}`` s of the recipe whose values are
credentials: :func:`redact` writes ``${VAR}`` in place of such a value (the names, never the
values, travel to worker processes with the environment)."""
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASS|PWD|KEY|SIG|CRED|AUTH|SAS|SESSION|COOKIE|BEARER", re.I)
REDACTED = "REDACTED"


def is_secret_var(name: str) -> bool:
    """True when a ``${VAR}`` of a recipe names a credential (TOKEN, SECRET, PASSWORD, KEY, SIG,
    AUTH, SAS, ... in its name): its value is then kept out of every output."""
    return bool(_SECRET_NAME.search(name))


def remember_secret_var(name: str) -> None:
    """Record that the environment variable ``name`` holds a credential expanded into the
    recipe (see :data:`SECRET_VARS_ENV`); :func:`redact` replaces its value by ``${name}``."""
    names = [n for n in os.environ.get(SECRET_VARS_ENV, "").split(",") if n]
    if name not in names:
        os.environ[SECRET_VARS_ENV] = ",".join(names + [name])


def _secret_values() -> list[tuple[str, str]]:
    """``(value, placeholder)`` of every known credential value, longest first."""
    out = []
    for name in os.environ.get(SECRET_VARS_ENV, "").split(","):
        v = os.environ.get(name) if name else None
        if v and len(v) >= 4:
            out.append((v, "${" + name + "}"))
    tok = os.environ.get("EARTHDATA_TOKEN")
    if tok and len(tok) >= 4:
        out.append((tok, REDACTED))
    return sorted(out, key=lambda p: -len(p[0]))


def redact(text: str) -> str:
    """``text`` with every credential removed: the value of a secret ``${VAR}`` of the recipe
    (written back as ``${VAR}``, so a stored recipe expands again where the variable is set),
    the Earthdata token, URL userinfo (``https://user:pass@host`` -> ``https://REDACTED@host``),
    query-string credentials (``token``, ``access_token``, ``code``, ``key``, ``api_key``, SAS
    ``sig``/``se``/..., ``X-Amz-*``, ``X-Goog-*``, ``Signature``/``Policy``/``Key-Pair-Id``: the
    value becomes ``REDACTED``) and ``Bearer`` tokens. The one function every message and every
    stored text goes through."""
    if not isinstance(text, str) or not text:
        return text
    for value, placeholder in _secret_values():
        text = text.replace(value, placeholder)
    text = _USERINFO.sub(_userinfo, text)
    text = _SECRET.sub(lambda m: m.group(1) + (m.group(2) if _PLACEHOLDER.fullmatch(m.group(2)) else REDACTED), text)
    return _BEARER.sub(rf"\1{REDACTED}", text)


def _userinfo(m: re.Match) -> str:
    """``scheme://REDACTED@``, but ``user:${VAR}@`` kept (its secret is already a placeholder)."""
    user, _, password = m.group(2).partition(":")
    if password and _PLACEHOLDER.fullmatch(password) and not _PLACEHOLDER.sub("", user).count("$"):
        return m.group(0)
    if not password and _PLACEHOLDER.fullmatch(user):
        return m.group(0)
    return f"{m.group(1)}{REDACTED}@"


def redact_obj(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings) with :func:`redact` applied to every string,
    keys included."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def check_secret_vars(text: str, where: str) -> None:
    """Check that every ``${VAR}`` :func:`redact` left in a stored text (a plan's recipe) can be
    expanded again: the variable is set in this environment.

    Raises
    ------
    RecipeError
        Naming the unset variables.
    """
    from ..errors import RecipeError

    missing = sorted({p[2:-1] for p in _PLACEHOLDER.findall(text) if not os.environ.get(p[2:-1])})
    if missing:
        raise RecipeError(f"{where} needs the environment variable(s) {', '.join('$' + m for m in missing)}: credentials of "
                          f"its recipe, which are not stored; set them and run the command again")


def is_redacted(text: str) -> bool:
    """True when :func:`redact` changed something in ``text`` (a stored href or URL that must be
    fetched again, or expanded, before use)."""
    return REDACTED in text or "${" in text
