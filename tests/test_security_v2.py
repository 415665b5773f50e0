"""Security regressions of issue 10, items 1-3, on real data, real local servers and the real CLI.

1. Credentials go only where they belong: the Earthdata bearer token is sent only over https to
   the hosts of the auth scheme (``search.auth_hosts``; http only to a listed loopback host),
   never to the host a redirect points at, never to a catalog (static over HTTP or a STAC API).
2. No credential is ever written or printed: every output file is read back *decoded* (Parquet
   values with pyarrow, SQLite rows, JSON / CSV / text, GeoTIFF tags and descriptions) with
   stdout and stderr, and searched for each secret; a control case shows the search finds what is
   there (a compressed Parquet hides text from a byte grep).
3. Nothing escapes the output folder: recipe file-name templates, tracker names and unit ids
   are checked at load time (exit 2, nothing written); a symbolic link out of the dataset folder
   is refused; hostile item ids are sanitised into plain names.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import crop_recipe, crop_recipe_v1, gap_recipe, needs_shared, run_cli, write_recipe
from servers import RangeServer

pytestmark = needs_shared

TOKEN = "EDL-" + uuid.uuid4().hex  # the Earthdata token of every test here


# --------------------------------------------------------------------------------------
# helpers: decoded outputs


def decoded_texts(root: Path) -> dict[str, str]:
    """Every file below ``root`` as decoded text: Parquet values (pyarrow, every column, nested
    values included), every row of every SQLite table, GeoTIFF tags and band descriptions, and
    the text of every other file."""
    import pyarrow.parquet as pq
    import rasterio

    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        if p.suffix == ".parquet":
            out[str(p)] = json.dumps(pq.read_table(p).to_pylist(), default=str)
        elif p.suffix == ".sqlite":
            with sqlite3.connect(p) as db:
                tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                out[str(p)] = json.dumps({t: [list(map(str, r)) for r in db.execute(f"SELECT * FROM {t}")] for t in tables})
        elif p.suffix == ".tif":
            with rasterio.open(p) as ds:
                out[str(p)] = json.dumps([ds.tags(), list(ds.descriptions)] + [ds.tags(b) for b in range(1, ds.count + 1)])
        else:
            out[str(p)] = p.read_bytes().decode("utf-8", "replace")
    return out


def _hits(texts: dict[str, str], secret: str) -> list[str]:
    return [name for name, text in texts.items() if secret in text]


# --------------------------------------------------------------------------------------
# 1. where the token may go: the per-href decision (read_env + the reading module's _env_for)

POLICY = {  # name: (href, search.auth_hosts, token sent?)
    "LP DAAC over https (default hosts)": ("https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/x.tif", None, True),
    "Earthdata Login over https (default hosts)": ("https://urs.earthdata.nasa.gov/x.tif", None, True),
    "LP DAAC over plain http": ("http://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/x.tif", None, False),
    "another https host": ("https://example.com/x.tif", None, False),
    "an allowed name as a prefix of another host": ("https://earthdata.nasa.gov.example.com/x.tif", None, False),
    "an allowed name glued to another": ("https://evilearthdata.nasa.gov/x.tif", None, False),
    "allowed host as userinfo of another host": ("https://data.lpdaac.earthdatacloud.nasa.gov@example.com/x.tif", None, False),
    "s3 URI": ("s3://lp-prod-protected/x.tif", None, False),
    "local path": ("/data/x.tif", None, False),
    "loopback not listed": ("http://127.0.0.1:8000/x.tif", None, False),
    "loopback listed, plain http": ("http://127.0.0.1:8000/x.tif", ["127.0.0.1"], True),
    "listed hosts replace the defaults": ("https://data.lpdaac.earthdatacloud.nasa.gov/x.tif", ["127.0.0.1"], False),
    "listed remote host over plain http": ("http://example.com/x.tif", ["example.com"], False),
}


@pytest.mark.parametrize("case", list(POLICY), ids=list(POLICY))
def test_token_goes_only_to_the_auth_hosts(case, monkeypatch):
    from eochips.config.models import ReadingConfig
    from eochips.reading import _env_for, read_env
    from eochips.search.auth import AUTH_HOSTS_OPTION

    href, hosts, sent = POLICY[case]
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    env = _env_for(href, read_env(ReadingConfig(), "earthdata", hosts))
    assert (env.get("GDAL_HTTP_HEADERS") == f"Authorization: Bearer {TOKEN}") is sent
    assert AUTH_HOSTS_OPTION not in env  # eochips' own option never reaches GDAL


def test_token_reaches_a_real_server_only_when_listed(hls_dir, monkeypatch):
    """Real reads (probe: header + decimated bands) of a loopback COG: no token unless the
    recipe lists 127.0.0.1; with it, the server receives it."""
    from eochips.config.models import ReadingConfig
    from eochips.reading import probe, read_env

    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    d, items = hls_dir
    name = items[0]["assets"]["B02"]["href"]
    with RangeServer(d) as srv:
        probe(f"{srv.url}/{name}?default", env=read_env(ReadingConfig(), "earthdata"), max_retries=0)
        assert srv.requests > 0 and srv.authorization == set()
        probe(f"{srv.url}/{name}?listed", env=read_env(ReadingConfig(), "earthdata", ["127.0.0.1"]), max_retries=0)
        assert srv.authorization == {f"Bearer {TOKEN}"}


class _Recorder(BaseHTTPRequestHandler):
    """Serves one file (Range requests) or answers every request with a redirect; records the
    Authorization header of each request."""

    protocol_version = "HTTP/1.1"
    data = b""
    redirect: str | None = None
    code = 302
    seen: list = []

    def log_message(self, *args):
        pass

    def _answer(self, body: bool) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        if self.redirect:
            self.send_response(self.code)
            self.send_header("Location", self.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rng, data = self.headers.get("Range"), self.data
        if rng:
            a, b = (int(x) for x in rng.split("=")[1].split("-"))
            b = min(b, len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
            chunk = data[a:b + 1]
        else:
            self.send_response(200)
            chunk = data
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if body:
            self.wfile.write(chunk)

    def do_GET(self):  # noqa: N802
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)


def _serve(handler) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _amz_now() -> str:
    return f"?X-Amz-Expires=3600&X-Amz-Date={time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}&X-Amz-Signature=s1gn"


REDIRECTS = {  # name: (status, host of B, query of the redirect URL)
    "302 to another host name": (302, "localhost", ""),
    "307 to another host name": (307, "localhost", ""),
    "301 to the same host, another port": (301, "127.0.0.1", ""),
    "302 to a signed S3-like URL (GDAL caches it and reads it directly)": (302, "localhost", "amz"),
}


@pytest.mark.parametrize("case", list(REDIRECTS), ids=list(REDIRECTS))
def test_redirect_does_not_carry_the_token(case, hls_dir, monkeypatch):
    """Server A (127.0.0.1, listed) answers every request with a redirect to server B; real
    reads of two windows (header, then range requests) go through. A receives the token, B never
    (neither on the first request nor on the later range requests)."""
    from eochips.config.models import ReadingConfig
    from eochips.reading import probe, read_env, read_onto

    status, host, query = REDIRECTS[case]
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    d, items = hls_dir
    path = d / items[0]["assets"]["B02"]["href"]
    B = type("B", (_Recorder,), {"data": path.read_bytes(), "seen": []})
    b = _serve(B)
    A = type("A", (_Recorder,), {"seen": [], "code": status,
                                 "redirect": f"http://{host}:{b.server_address[1]}/{path.name}{_amz_now() if query else ''}"})
    a = _serve(A)
    try:
        href = f"http://127.0.0.1:{a.server_address[1]}/{uuid.uuid4().hex}/{path.name}"
        env = read_env(ReadingConfig(), "earthdata", ["127.0.0.1"])
        info = probe(href, env=env, max_retries=0)
        t = info["transform"]
        read_onto(href, info["crs"], (t[0], 0.0, t[2] + 1000 * t[0], 0.0, t[4], t[5] + 1000 * t[4]), (64, 64), env=env,
                  max_retries=0)
    finally:
        a.shutdown()
        b.shutdown()
    assert f"Bearer {TOKEN}" in A.seen  # the token was really offered to the listed host
    assert len(B.seen) >= 2  # B served the header and the range requests
    assert [h for h in B.seen if h] == []


def test_catalogs_never_receive_the_token(hls_dir, cdl_raster, tmp_path):
    """A static catalog over HTTP (requests) and a STAC API (pystac-client) on 127.0.0.1, both
    listed in auth_hosts: ``eochips plan`` searches them and sends the token to neither."""
    d, items = hls_dir
    with RangeServer(d) as cogs:
        feats = json.loads(json.dumps(items))
        for it in feats:
            for a in it["assets"].values():
                a["href"] = f"{cogs.url}/{a['href']}"
        catdir = tmp_path / "cat"
        catdir.mkdir()
        (catdir / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        api = _FakeStacApi(feats)
        with RangeServer(catdir) as static:
            for catalog in (f"{static.url}/items.json", api.url):
                out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
                recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(catalog, cdl_raster, **{
                    "sources.hls.search.auth": "earthdata", "sources.hls.search.auth_hosts": ["127.0.0.1"]}))
                proc = run_cli("plan", str(recipe), "-o", str(out), env={"EARTHDATA_TOKEN": TOKEN})
                assert proc.returncode == 0, proc.stderr[-2000:]
        api.close()
    assert static.requests > 0 and static.authorization == set()
    assert api.requests > 0 and api.authorization == []
    assert f"Bearer {TOKEN}" in cogs.authorization  # the plan's probe read the assets with it


class _FakeStacApi:
    """A minimal STAC API (landing page, conformance, POST/GET /search) on 127.0.0.1 that
    records the Authorization header of every request."""

    def __init__(self, items: list[dict]):
        self.items, self.authorization, self.requests = items, [], 0
        api = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, doc) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self) -> None:
                api.requests += 1
                if self.headers.get("Authorization"):
                    api.authorization.append(self.headers["Authorization"])
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?")[0].rstrip("/")
                conf = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
                if path == "":
                    self._send({"type": "Catalog", "id": "fake", "stac_version": "1.0.0", "description": "fake",
                                "conformsTo": conf, "links": [
                                    {"rel": "self", "href": api.url}, {"rel": "root", "href": api.url},
                                    {"rel": "search", "href": f"{api.url}/search", "method": "POST", "type": "application/geo+json"},
                                    {"rel": "search", "href": f"{api.url}/search", "method": "GET", "type": "application/geo+json"}]})
                elif path == "/conformance":
                    self._send({"conformsTo": conf})
                elif path == "/search":
                    self._send({"type": "FeatureCollection", "features": api.items, "links": []})
                else:
                    self.send_error(404)

            do_GET = do_POST = _any

        self.httpd = _serve(H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
