"""The benchmark's COG server: HTTP/1.1 Range requests on 127.0.0.1, counting the bytes it sends.

Run as its own process (``python benchmarks/server.py ROOT --port P --slow-port Q``) so its CPU
time is not charged to a contender. It serves ``/gKK/DATE/ASSET.tif``: the base granule's file
``ROOT/base/DATE/ASSET.tif`` with the GeoTIFF tie point replaced by granule KK's corner (16 bytes
at the offset ``workload.tiepoint_offset`` found), so every granule is a real, distinct-looking
COG without 40 copies on disk. It also serves ``/clay/PATH``: the file ``ROOT/clay/PATH`` as it is
(the Clay datacube workload, ``clay_workload.py``).

Two listeners share the counters:

- ``--port``: plain loopback.
- ``--slow-port``: a remote-archive stand-in: ``--latency`` seconds before every response and on
  every new connection, and all responses together paced to ``--mbps`` MB/s.

``GET /_stats`` answers ``{"bytes": .., "requests": .., "connections": .., "by_path": {path: bytes}}``;
``POST /_reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import DATES, granule_origin  # noqa: E402

_PATH = re.compile(r"^/g(\d+)/([0-9-]+)/(\w+)\.tif$")
_PLAIN = re.compile(r"[\w.-]+(/[\w.-]+)*\.tif")
_RANGE = re.compile(r"(\d*)-(\d*)")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.bytes = self.requests = self.connections = 0
        self.by_path: dict[str, int] = {}

    def add(self, path: str | None = None, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)
            if path is not None:
                self.by_path[path] = self.by_path.get(path, 0) + kw.get("bytes", 0)


class Pacer:
    """A shared bandwidth cap: callers reserve time slots for their bytes, in order."""

    def __init__(self, mbps: float):
        self.rate = mbps * 1e6
        self.lock = threading.Lock()
        self.next_free = 0.0

    def wait(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            until = self.next_free
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Files:
    """The base files, opened once, and the patched tie point of each granule."""

    def __init__(self, root: Path):
        self.root = root
        offsets = root / "base" / "offsets.json"
        self.offsets = json.loads(offsets.read_text()) if offsets.exists() else {}
        self.fds: dict[tuple[str, str], tuple[int, int]] = {}
        for d in DATES:
            for a in self.offsets.get(d, ()):
                p = root / "base" / d / f"{a}.tif"
                self.fds[(d, a)] = (os.open(p, os.O_RDONLY), p.stat().st_size)
        self.plain: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def _plain(self, path: str):
        """``/clay/REL``: ``ROOT/clay/REL`` unpatched (opened once; no path outside ``ROOT/clay``)."""
        rel = path.removeprefix("/clay/")
        if not _PLAIN.fullmatch(rel) or ".." in rel.split("/"):
            return None
        with self.lock:
            if rel not in self.plain:
                p = self.root / "clay" / rel
                if not p.is_file():
                    return None
                self.plain[rel] = (os.open(p, os.O_RDONLY), p.stat().st_size)
            fd, size = self.plain[rel]
        return fd, size, (0, b"")

    def resolve(self, path: str):
        if path.startswith("/clay/"):
            return self._plain(path.split("?")[0])
        m = _PATH.match(path.split("?")[0])
        if not m or (m.group(2), m.group(3)) not in self.fds:
            return None
        k, date, asset = int(m.group(1)), m.group(2), m.group(3)
        fd, size = self.fds[(date, asset)]
        patch = (self.offsets[date][asset], struct.pack("<2d", *granule_origin(k)))
        return fd, size, patch

    @staticmethod
    def read(fd: int, start: int, length: int, patch) -> bytes:
        data = os.pread(fd, length, start)
        off, new = patch
        lo, hi = max(start, off), min(start + length, off + len(new))
        if lo < hi:
            buf = bytearray(data)
            buf[lo - start:hi - start] = new[lo - off:hi - off]
            data = bytes(buf)
        return data


def make_handler(files: Files, stats: Stats, latency: float, pacer: Pacer | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        # no Nagle: otherwise a response's last partial segment waits for the client's delayed
        # ACK (40 ms on Linux) and loopback looks like a slow WAN
        disable_nagle_algorithm = True

        def setup(self):
            super().setup()
            stats.add(connections=1)
            if latency:
                time.sleep(latency)

        def log_message(self, *args):
            pass

        def _send(self, data: bytes, path: str | None = None) -> None:
            view = memoryview(data)
            step = 1 << 16
            for i in range(0, len(view), step):
                if pacer:
                    pacer.wait(min(step, len(view) - i))
                self.wfile.write(view[i:i + step])
            stats.add(path, bytes=len(data))

        def do_POST(self):  # noqa: N802
            if self.path == "/_reset":
                with stats.lock:
                    stats.bytes = stats.requests = stats.connections = 0
                    stats.by_path = {}
                self._json({})
            else:
                self.send_error(404)

        def _json(self, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self):  # noqa: N802
            got = files.resolve(self.path)
            if got is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(got[1]))
            self.end_headers()

        def do_GET(self):  # noqa: N802
            if self.path == "/_stats":
                with stats.lock:
                    by_path = dict(stats.by_path)
                self._json({"bytes": stats.bytes, "requests": stats.requests, "connections": stats.connections,
                            "by_path": by_path})
                return
            got = files.resolve(self.path)
            if got is None:
                self.send_error(404)
                return
            fd, size, patch = got
            stats.add(requests=1)
            if latency:
                time.sleep(latency)
            rng = self.headers.get("Range")
            if not rng:
                self.send_response(200)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                step = 1 << 22
                for s in range(0, size, step):
                    self._send(files.read(fd, s, min(step, size - s), patch), self.path)
                return
            spans = []
            for part in rng.strip().removeprefix("bytes=").split(","):
                m = _RANGE.fullmatch(part.strip())
                if not m:
                    self.send_error(416)
                    return
                a, b = m.groups()
                start, end = (max(0, size - int(b)), size - 1) if a == "" else (int(a), min(int(b) if b else size - 1, size - 1))
                if start >= size or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                spans.append((start, end))
            if len(spans) == 1:
                start, end = spans[0]
                self.send_response(206)
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                self._send(files.read(fd, start, end - start + 1, patch), self.path)
                return
            boundary = "eochipsbenchboundary"
            body = bytearray()
            for start, end in spans:
                body += (f"\r\n--{boundary}\r\nContent-Type: image/tiff\r\n"
                         f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n").encode()
                body += files.read(fd, start, end - start + 1, patch)
            body += f"\r\n--{boundary}--\r\n".encode()
            self.send_response(206)
            self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self._send(bytes(body), self.path)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):  # a client hanging up is not news
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--slow-port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.040, help="seconds per request and per new connection")
    ap.add_argument("--mbps", type=float, default=50.0, help="bandwidth cap of the slow port, MB/s")
    args = ap.parse_args(argv)
    files, stats = Files(args.root), Stats()
    servers = [Server(("127.0.0.1", args.port), make_handler(files, stats, 0.0, None)),
               Server(("127.0.0.1", args.slow_port), make_handler(files, stats, args.latency, Pacer(args.mbps)))]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
