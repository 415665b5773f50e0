"""Real local servers for the tests: a Range-capable static HTTP server and a pgstac STAC API.

Both bind to 127.0.0.1 only and stop when their fixture ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRANSIENT_KINDS = ("500", "503", "429", "reset", "truncate", "timeout")


class Faults:
    """Which requests fail, and how: each request fails with probability ``rate`` with a kind
    drawn from ``kinds`` (seeded), but at most ``max_fails`` times in all for the same (path,
    range). The cap is per key over the whole run, not per streak: one read attempt needs
    several requests (the header, then the tiles), so a per-streak cap that a success resets
    would let an asset's attempts keep failing on alternating requests, and a read with N
    retries would then fail by chance (about 2 % per asset at a rate of 0.35 and 7 attempts).
    With the total cap an asset whose reads use K distinct ranges fails at most ``K *
    max_fails`` attempts. ``missing`` paths answer 404 forever. ``counts`` records what was
    injected."""

    def __init__(self, rate: float = 0.0, kinds=TRANSIENT_KINDS, seed: int = 0, max_fails: int = 2,
                 timeout_s: float = 2.5, missing=()):
        import random

        self.rate, self.kinds, self.max_fails, self.timeout_s = rate, tuple(kinds), max_fails, timeout_s
        self.missing = set(missing)
        self._rng = random.Random(seed)
        self._failed: dict = {}  # (path, range) -> failures injected
        self.counts: dict[str, int] = {}
        self.requests = 0
        self._lock = threading.Lock()

    def draw(self, key) -> str | None:
        with self._lock:
            self.requests += 1
            if self.rate <= 0 or self._failed.get(key, 0) >= self.max_fails or self._rng.random() >= self.rate:
                return None
            self._failed[key] = self._failed.get(key, 0) + 1
            kind = self._rng.choice(self.kinds)
            self.counts[kind] = self.counts.get(kind, 0) + 1
            return kind


def _inject(handler, kind: str, body: bytes, faults: Faults) -> None:
    """Answer ``handler``'s request with the fault ``kind`` instead of ``body``."""
    import struct

    if kind in ("500", "503"):
        handler.send_response(int(kind))
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    elif kind == "429":
        handler.send_response(429)
        handler.send_header("Retry-After", "1")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    elif kind == "reset":
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif kind == "truncate":
        handler.send_response(206 if handler.headers.get("Range") else 200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: max(1, len(body) // 2)])
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif kind == "timeout":
        time.sleep(faults.timeout_s)
    handler.close_connection = True


class _LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port), run while used as a context manager."""

    def _serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RangeServer(_LoopbackServer):
    """Serves ``root`` over HTTP/1.1 on 127.0.0.1 with single-range ``Range`` support.

    ``bytes_sent`` and ``requests`` count what was served (for read-efficiency checks);
    ``faults`` (a :class:`Faults`) injects transient failures and permanent 404s.
    """

    def __init__(self, root: Path, faults: Faults | None = None, require_query: str | None = None):
        self.root = Path(root)
        self.bytes_sent = 0
        self.requests = 0
        self.faults = faults or Faults()
        self.require_query = require_query  # e.g. "sig=...": answer 403 without it (a signed-URL store)
        self.authorization: set[str] = set()  # Authorization headers seen
        self._lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls per response

            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(server.root), **kw)

            def log_message(self, *args):  # quiet
                pass

            def _count(self, n: int) -> None:
                with server._lock:
                    server.bytes_sent += n
                    server.requests += 1

            def _resolve(self) -> Path | None:
                """The file asked for, or None after answering 403 / 404."""
                if self.headers.get("Authorization"):
                    server.authorization.add(self.headers["Authorization"])
                if server.require_query and server.require_query not in self.path.partition("?")[2]:
                    self.send_error(403)
                    return None
                path = Path(self.translate_path(self.path))
                if not path.is_file() or path.name in server.faults.missing:
                    self.send_error(404)
                    return None
                return path

            def do_GET(self):  # noqa: N802
                path = self._resolve()
                if path is None:
                    return
                size = path.stat().st_size
                rng = self.headers.get("Range")
                start, end = 0, size - 1
                status = 200
                if rng:
                    m = _RANGE.match(rng.strip())
                    if not m:
                        self.send_error(416)
                        return
                    a, b = m.groups()
                    if a == "":
                        start, end = max(0, size - int(b)), size - 1
                    else:
                        start, end = int(a), min(int(b) if b else size - 1, size - 1)
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                length = end - start + 1
                kind = server.faults.draw((self.path, rng))
                if kind:
                    with open(path, "rb") as f:
                        f.seek(start)
                        _inject(self, kind, f.read(length), server.faults)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "image/tiff" if path.suffix == ".tif" else "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(length))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                with open(path, "rb") as f:
                    f.seek(start)
                    body = f.read(length)
                self._count(length)  # before the body goes out: a client that has it may read the count at once
                self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                path = self._resolve()
                if path is None:
                    return
                self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()

        self._serve(Handler)


class FaultyProxy(_LoopbackServer):
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (a STAC API) that injects
    :class:`Faults`. The Host header is rewritten so the API's links point at the proxy."""

    def __init__(self, upstream: str, faults: Faults | None = None):
        import requests
        from http.server import BaseHTTPRequestHandler

        self.upstream = upstream.rstrip("/")
        self.faults = faults or Faults()
        proxy = self
        session = requests.Session()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls per response

            def log_message(self, *args):
                pass

            def _forward(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                headers["Host"] = f"127.0.0.1:{proxy.port}"
                r = session.request(method, proxy.upstream + self.path, data=data, headers=headers, timeout=60)
                body = r.content
                kind = proxy.faults.draw((method, self.path, data))
                if kind:
                    _inject(self, kind, body, proxy.faults)
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                head = method == "HEAD"  # no body; the upstream's length stands
                self.send_header("Content-Length", r.headers.get("Content-Length", "0") if head else str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._forward("GET")

            def do_POST(self):  # noqa: N802
                self._forward("POST")

            def do_PUT(self):  # noqa: N802 - object storage (an S3 server upstream)
                self._forward("PUT")

            def do_HEAD(self):  # noqa: N802
                self._forward("HEAD")

            def do_DELETE(self):  # noqa: N802
                self._forward("DELETE")

        self._serve(Handler)


# --------------------------------------------------------------------------------------
# PostgreSQL + pgstac + stac-fastapi-pgstac

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_available() -> str | None:
    """None when a pgstac API can be started here, else the reason it cannot."""
    if not (PG_BIN / "initdb").exists():
        return "PostgreSQL 15 server binaries are not installed (apt-get install postgresql-15 postgresql-15-postgis-3)"
    if not Path("/usr/share/postgresql/15/extension/postgis.control").exists():
        return "PostGIS for PostgreSQL 15 is not installed (apt-get install postgresql-15-postgis-3)"
    try:
        import pypgstac  # noqa: F401
        import stac_fastapi.pgstac  # noqa: F401
    except ImportError as exc:
        return f"pgstac test dependencies missing: {exc}"
    return None


def _as_pg_user(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _app_target() -> str:
    """stac-fastapi-pgstac >= 6 exposes an app factory; older releases a module-level ``app``."""
    import stac_fastapi.pgstac.app as mod

    return "stac_fastapi.pgstac.app:create_app --factory" if hasattr(mod, "create_app") else "stac_fastapi.pgstac.app:app"


@contextmanager
def pgstac_api(collections: list[dict], items: list[dict]) -> Iterator[str]:
    """A throwaway PostgreSQL cluster with pgstac, loaded with ``collections`` and ``items``,
    and stac-fastapi-pgstac under uvicorn on 127.0.0.1. Yields the API root URL."""
    tmp = Path(tempfile.mkdtemp(prefix="eochips-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    _as_pg_user([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    _as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(tmp / "pg.log"), "-w", "-o",
                 f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
    api = None
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        env = dict(os.environ, PGUSER="postgres", PGPASSWORD="x", PGHOST="127.0.0.1", PGPORT=str(port),
                   PGDATABASE="postgres")
        bindir = Path(sys.executable).parent
        subprocess.run([str(bindir / "pypgstac"), "migrate", "--dsn", dsn], check=True, capture_output=True, env=env)
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET search_path TO pgstac, public")
            conn.execute(
                "INSERT INTO queryables (name, definition, property_wrapper, property_index_type) "
                "VALUES ('eo:cloud_cover', '{\"type\": \"number\", \"minimum\": 0, \"maximum\": 100}', 'to_float', 'BTREE')"
            )
            for c in collections:
                conn.execute("SELECT create_collection(%s::jsonb)", (json.dumps(c),))
            for it in items:
                conn.execute("SELECT create_item(%s::jsonb)", (json.dumps(it),))
        api_port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *_app_target().split(), "--host", "127.0.0.1", "--port", str(api_port),
             "--log-level", "warning"],
            env=dict(env, ENABLED_EXTENSIONS="query,sort,fields,filter,pagination,collection_search"),
            stdout=subprocess.DEVNULL, stderr=open(tmp / "api.log", "w"),
        )
        url = f"http://127.0.0.1:{api_port}"
        import requests

        for _ in range(120):
            try:
                if requests.get(url + "/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if api.poll() is not None:
                raise RuntimeError("stac-fastapi-pgstac exited: " + (tmp / "api.log").read_text()[-2000:])
            time.sleep(0.25)
        else:
            raise RuntimeError("stac-fastapi-pgstac did not start: " + (tmp / "api.log").read_text()[-2000:])
        yield url
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
        _as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def moto_s3(*buckets: str) -> Iterator[tuple[dict, object]]:
    """A moto S3 server on 127.0.0.1 (a free port) with ``buckets`` created; yields the client
    environment (``AWS_*`` with the endpoint URL and test credentials) and a boto3 client."""
    import boto3

    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.monotonic() + 60  # the server takes a moment to listen (seconds on a loaded machine)
        for bucket in buckets:
            while True:
                try:
                    client.create_bucket(Bucket=bucket)
                    break
                except Exception:  # noqa: BLE001 - connection refused until it is up
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"moto_server on port {port} did not come up (exit code {server.poll()})") from None
                    time.sleep(0.1)
        yield env, client
    finally:
        server.terminate()
        server.wait(10)
