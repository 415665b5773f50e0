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


# --------------------------------------------------------------------------------------
# 2. no credential is written or printed

def _secret(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:12]}"


VAR_SECRETS = {  # expanded into the recipe from the environment: ${NAME}
    "EOCHIPS_T_PASSWORD": _secret("pw"),     # userinfo password of the catalog URL
    "EOCHIPS_T_PATH_TOKEN": _secret("pt"),   # a path segment of the catalog URL (and of relative hrefs)
    "EOCHIPS_T_QUERY_TOKEN": _secret("qt"),  # ?token= of the catalog URL
}
HREF_SECRETS = {  # in the items' asset hrefs; per asset key: (query, secret values)
    "B02": ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={0}&X-Amz-Signature={1}", (_secret("amzcred"), _secret("amzsig"))),
    "B03": ("X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={0}&X-Goog-Signature={1}", (_secret("goocred"), _secret("goosig"))),
    "B04": ("sv=2021-06-08&se={0}&sp=r&sig={1}", (_secret("2099-se"), _secret("sassig"))),
    "B08": ("token={0}&access_token={1}", (_secret("hreftok"), _secret("acctok"))),
    "Fmask": ("api_key={0}&code={1}&key={2}", (_secret("apikey"), _secret("code"), _secret("key"))),
}
ASSET_PASSWORD = _secret("assetpw")  # literal userinfo of the B02 hrefs
SECRETS = {
    "catalog userinfo password (${VAR})": VAR_SECRETS["EOCHIPS_T_PASSWORD"],
    "catalog path token (${VAR})": VAR_SECRETS["EOCHIPS_T_PATH_TOKEN"],
    "catalog ?token= (${VAR})": VAR_SECRETS["EOCHIPS_T_QUERY_TOKEN"],
    "asset href userinfo password": ASSET_PASSWORD,
    "X-Amz-Credential": HREF_SECRETS["B02"][1][0], "X-Amz-Signature": HREF_SECRETS["B02"][1][1],
    "X-Goog-Credential": HREF_SECRETS["B03"][1][0], "X-Goog-Signature": HREF_SECRETS["B03"][1][1],
    "SAS se": HREF_SECRETS["B04"][1][0], "SAS sig": HREF_SECRETS["B04"][1][1],
    "href ?token=": HREF_SECRETS["B08"][1][0], "href ?access_token=": HREF_SECRETS["B08"][1][1],
    "href ?api_key=": HREF_SECRETS["Fmask"][1][0], "href ?code=": HREF_SECRETS["Fmask"][1][1],
    "href ?key=": HREF_SECRETS["Fmask"][1][2],
    "Earthdata token": TOKEN,
}
CATALOG = "http://eo:${EOCHIPS_T_PASSWORD}@127.0.0.1:{port}/${EOCHIPS_T_PATH_TOKEN}/items.json?token=${EOCHIPS_T_QUERY_TOKEN}"


def _secret_catalog(root: Path, items: list[dict], hls: Path, port: int) -> None:
    """The served tree: the COGs at the root, ``<path token>/items.json`` whose Fmask hrefs are
    relative (so they inherit the catalog URL's userinfo and path token) and the other assets'
    hrefs absolute with signed-URL parameters."""
    token_dir = root / VAR_SECRETS["EOCHIPS_T_PATH_TOKEN"]
    token_dir.mkdir(parents=True)
    for f in hls.glob("*.tif"):
        (root / f.name).symlink_to(f)
        (token_dir / f.name).symlink_to(f)
    feats = json.loads(json.dumps(items))
    for it in feats:
        for key, a in it["assets"].items():
            query, values = HREF_SECRETS[key]
            q = query.format(*values)
            if key == "Fmask":
                a["href"] = f"{a['href']}?{q}"
            elif key == "B02":
                a["href"] = f"http://bob:{ASSET_PASSWORD}@127.0.0.1:{port}/{a['href']}?{q}"
            else:
                a["href"] = f"http://127.0.0.1:{port}/{a['href']}?{q}"
    (token_dir / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


@pytest.fixture(scope="module")
def secret_runs(hls_dir, cdl_raster, tmp_path_factory):
    """Datasets built with every kind of secret in play: ``ok`` by ``plan``, ``build`` (hrefs
    restored by searching the ${VAR}-expanded catalog again), ``finalize``, then ``run`` again
    (a resume: the stored recipe compares equal); ``failed`` with every B03 missing after the
    plan (failure reasons hold hrefs: state, index, summary, stderr). Yields the datasets' root,
    the captured processes and the server."""
    d, items = hls_dir
    base = tmp_path_factory.mktemp("secrets")
    served, work = base / "served", base / "work"
    served.mkdir()
    work.mkdir()
    env = dict(VAR_SECRETS, EARTHDATA_TOKEN=TOKEN)
    with RangeServer(served) as srv:
        _secret_catalog(served, items, d, srv.port)
        catalog = CATALOG.replace("{port}", str(srv.port))
        recipe = write_recipe(base / "r.yaml", crop_recipe(catalog, cdl_raster, **{
            "sources.hls.search.auth": "earthdata", "sources.hls.search.auth_hosts": ["127.0.0.1"],
            "reading.max_retries": 0, "description": "built with ${EOCHIPS_T_QUERY_TOKEN} in its description"}))
        ok, failed = work / "ok", work / "failed"
        procs = {"plan": run_cli("plan", str(recipe), "-o", str(ok), env=env),
                 "build": run_cli("build", str(ok), "--no-progress", env=env),
                 "finalize": run_cli("finalize", str(ok), env=env),
                 "run again": run_cli("run", str(recipe), "-o", str(ok), "--no-progress", env=env),
                 "plan failed": run_cli("plan", str(recipe), "-o", str(failed), env=env)}
        srv.faults.missing = {p.name for p in d.glob("*.B03.tif")}
        procs["build failed"] = run_cli("build", str(failed), "--no-progress", env=env)
        procs["finalize failed"] = run_cli("finalize", str(failed), env=env)
        procs["build without the variables"] = run_cli("build", str(ok), "--no-progress", env={"EARTHDATA_TOKEN": TOKEN})
        yield work, procs, srv


def test_secret_runs_really_used_the_credentials(secret_runs):
    work, procs, srv = secret_runs
    for name in ("plan", "build", "finalize", "run again", "plan failed"):
        assert procs[name].returncode == 0, (name, procs[name].stderr[-2000:])
    assert procs["build failed"].returncode == 1 and procs["finalize failed"].returncode == 1
    assert f"Bearer {TOKEN}" in srv.authorization
    ok = json.loads((work / "ok" / "summary.json").read_text())
    assert ok["kept"] > 0 and ok["failed"] == 0
    failed = json.loads((work / "failed" / "summary.json").read_text())
    assert failed["failed"] > 0 and "404" in next(iter(failed["failed_reasons"].values()))
    assert "failed chip_" in procs["finalize failed"].stderr and "X-Goog-Signature=REDACTED" in procs["finalize failed"].stderr
    # the stored recipe holds ${VAR} in place of each secret: without the variables, build says so
    bare = procs["build without the variables"]
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert bare.stderr.startswith(f"error: the plan in {str(work / 'ok')!r} needs the environment variable(s) "
                                  "$EOCHIPS_T_PASSWORD, $EOCHIPS_T_PATH_TOKEN, $EOCHIPS_T_QUERY_TOKEN"), bare.stderr


def test_the_decoded_search_finds_what_is_there(secret_runs):
    """Control: the decoding finds the redaction marks inside compressed Parquet values, SQLite
    rows and JSON, where a byte grep of a compressed Parquet does not."""
    work, _, srv = secret_runs
    texts = decoded_texts(work)
    scenes = str(work / "ok" / "plan" / "scenes.parquet")
    assert "sig=REDACTED" in texts[scenes] and "${EOCHIPS_T_PATH_TOKEN}" in texts[scenes]
    assert "X-Goog-Signature=REDACTED" in texts[str(work / "failed" / "state.sqlite")]
    assert "X-Goog-Signature=REDACTED" in texts[str(work / "failed" / "index.parquet")]
    plan = json.loads((work / "ok" / "plan" / "plan.json").read_text())  # each secret stored as its ${VAR}
    assert plan["recipe"]["sources"]["hls"]["search"]["catalog"] == CATALOG.replace("{port}", str(srv.port))
    assert b"sig=REDACTED" not in (work / "ok" / "plan" / "scenes.parquet").read_bytes()  # compressed: invisible to grep


@pytest.mark.parametrize("kind", list(SECRETS), ids=list(SECRETS))
def test_secret_never_written_or_printed(kind, secret_runs):
    work, procs, _ = secret_runs
    secret = SECRETS[kind]
    assert _hits(decoded_texts(work), secret) == []
    assert [name for name, p in procs.items() if secret in p.stdout + p.stderr] == []


def test_a_literal_catalog_credential_is_not_stored_and_build_says_how(hls_dir, cdl_raster, tmp_path):
    """A catalog URL with a literal password: ``run`` works (the plan is in memory), the password
    is written nowhere, and a later ``build DIR`` (which must search the catalog again for the
    redacted hrefs) stops with exit 2 saying how to give the credential."""
    d, items = hls_dir
    password = _secret("literal")
    served = tmp_path / "served"
    served.mkdir()
    with RangeServer(served) as srv:
        _secret_catalog(served, items, d, srv.port)
        catalog = f"http://eo:{password}@127.0.0.1:{srv.port}/{VAR_SECRETS['EOCHIPS_T_PATH_TOKEN']}/items.json"
        recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(catalog, cdl_raster))
        out = tmp_path / "out"
        procs = [run_cli("run", str(recipe), "-o", str(out), "--no-progress"), run_cli("build", str(out), "--no-progress")]
    assert procs[0].returncode == 0, procs[0].stderr[-2000:]
    assert procs[1].returncode == 2 and "Traceback" not in procs[1].stderr
    assert "held credentials, which are not stored in the plan" in procs[1].stderr
    assert "http://REDACTED@127.0.0.1" in procs[1].stderr
    assert _hits(decoded_texts(out), password) == [] and all(password not in p.stdout + p.stderr for p in procs)


# --------------------------------------------------------------------------------------
# 3. nothing escapes the output folder

CMASK = "output.layout.1"  # gap_recipe's seed-000-cmask layout
PATHS = {  # name: (recipe kind, overrides, first words of the message)
    "tracker with '../'": ("gap", {f"{CMASK}.tracker": "../../x.csv"}, "recipe field 'output.layout.1.tracker'"),
    "tracker '..'": ("gap", {f"{CMASK}.tracker": ".."}, "recipe field 'output.layout.1.tracker': template '..' would leave the dataset folder"),
    "v1 cloud_masks.tracker with '../'": ("v1-gap", {"cloud_masks.tracker": "../../x.csv"}, "recipe field 'cloud_masks.tracker'"),
    "per-band path '..'": ("crop", {"output.layout": [{"kind": "per-band", "path": "../outside"}]},
                           "recipe field 'output.layout.0.path': template '../outside' would leave the dataset folder"),
    "per-band absolute name": ("crop", {"output.layout": [{"kind": "per-band", "name": "/tmp/{unit}_{band}.tif"}]},
                               "recipe field 'output.layout.0.name': template '/tmp/{unit}_{band}.tif' would leave the dataset folder: it is absolute"),
    "stack name with a backslash": ("crop", {"output.layout": [{"kind": "stack", "name": "..\\{unit}.tif"}]},
                                    "recipe field 'output.layout.0.name'"),
    "stack name with a drive": ("crop", {"output.layout": [{"kind": "stack", "name": "C:{unit}.tif"}]},
                                "would leave the dataset folder: it starts with a drive"),
    "stack labels with a NUL": ("crop", {"output.layout": [{"kind": "stack", "labels": "{unit}\x00.tif"}]},
                                "recipe field 'output.layout.0.labels'"),
    "stack path through '..'": ("crop", {"output.layout": [{"kind": "stack", "path": "chips/../../x"}]},
                                "recipe field 'output.layout.0.path'"),
    "units.id with a backslash": ("crop", {"units.id": "..\\chip_{row}_{col}"}, "recipe field 'units.id'"),
    "units.id with a drive": ("crop", {"units.id": "C:{row}_{col}"}, "recipe field 'units.id'"),
}


@pytest.mark.parametrize("case", list(PATHS), ids=list(PATHS))
def test_recipe_paths_stay_inside(case, local_catalog, cdl_raster, tmp_path):
    from conftest import REPO

    kind, overrides, message = PATHS[case]
    make = {"crop": crop_recipe, "gap": gap_recipe, "v1-gap": None}[kind]
    if make is None:
        import yaml

        from eochips.config import set_dotted

        data = crop_recipe_v1(str(local_catalog), cdl_raster)
        gap = yaml.safe_load((REPO / "tests" / "fixtures" / "v1" / "hls-gap-filling.yaml").read_text())
        data["cloud_masks"] = gap["cloud_masks"]
        for k, v in overrides.items():
            data = set_dotted(data, k, v)
    else:
        data = make(str(local_catalog), cdl_raster, **overrides)
    recipe = write_recipe(tmp_path / "r.yaml", data)
    out = tmp_path / "work" / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[-1]
    assert first.startswith("error: ") and message in first, first
    assert not (tmp_path / "work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_a_symlink_out_of_the_dataset_is_refused(local_catalog, cdl_raster, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "chips").symlink_to(elsewhere)
    recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(str(local_catalog), cdl_raster))
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: output folder {str(out)!r} holds 'chips', a symbolic link to" in proc.stderr
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["chips"]


def test_hostile_item_ids_become_plain_names_on_a_scene_grid(hls_dir, cdl_raster, tmp_path):
    """On a scene grid the unit ids start with the scene id: an id ``../../HLS...`` is sanitised
    (every character but A-Z a-z 0-9 . _ - becomes ``_``, leading dots too), the run succeeds and
    every file lies inside the dataset folder under a plain name."""
    d, items = hls_dir
    feats = json.loads(json.dumps(items))
    for it in feats:
        it["id"] = "../../" + it["id"]
        for a in it["assets"].values():
            a["href"] = str(d / a["href"])
    cat = tmp_path / "items.json"
    cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    recipe = write_recipe(tmp_path / "r.yaml", crop_recipe(str(cat), cdl_raster, **{
        "grid": {"kind": "scene", "source": "hls"}, "labels.raster": str(cdl_raster)}))
    out = tmp_path / "work" / "out"
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]
    import pyarrow.parquet as pq

    ids = pq.read_table(out / "index.parquet").column("unit_id").to_pylist()
    assert ids and all(i.startswith("___.._HLS.S30.T30UVB.") and "/" not in i for i in ids), ids[:3]
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve()) and not p.name.startswith("..")
