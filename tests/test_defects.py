"""Regression tests for the defects of the engine-v1 review (/work/shared/reviews/engine-v1.md)
and of the engine-v2 issue, one or more per defect (numbered as in the issue; D2, D5, D8 are
the review's ids). Each test's docstring names the defect and why engine v1 (commit debc942)
fails it. Everything runs on the real Exeter HLS granules, through real local servers
(tests/servers.py) and the real code paths; subprocesses only where exit codes, stderr or
signals are the point.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, crop_recipe, manifest, needs_shared, run_cli, write_recipe
from servers import FaultyProxy, Faults, RangeServer

pytestmark = needs_shared

FMASK_RULE = "filters.2.max_pct"


# --------------------------------------------------------------------------------------
# helpers and fixtures




def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (relative path -> digest)."""
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eochips.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not Path(f"/proc/{p.pid}").exists()
    return p.pid


def _tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment holds ``tag``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if tag.encode() in (d / "environ").read_bytes():
                out.append(int(d.name))
        except OSError:
            pass
    return out


def _group(pgid: int) -> list[int]:
    """Pids of live processes in process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


# --------------------------------------------------------------------------------------
# 1. D2: a staging folder per store and process


def test_d2_staging_per_store_and_process_and_only_dead_ones_removed(tmp_path, monkeypatch):
    """D2 (one machine-wide staging folder): a remote store stages in a folder of its own store
    and process, and ``remove_temporaries()`` deletes only the staging folders of the same store
    whose process is dead. A live other job (simulated by the pytest parent's pid) keeps its
    files, and so does another store's dead folder.

    Engine v1 staged every remote store in one ``$TMP/eochips-staging`` folder (writers.py:131-138)
    and its ``remove_temporaries()`` deleted every temporary in it (writers.py:219-226): the
    folders of the two stores are the same and the live job's file is deleted."""
    from eochips.writers import TMP_MARK, OutputStore

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own $TMPDIR
    a, b = OutputStore("memory://eochips-d2/a"), OutputStore("memory://eochips-d2/b")
    sa, sb = a.staging, b.staging
    assert sa.is_dir() and sb.is_dir()
    assert sa.name == sb.name == str(os.getpid())
    assert sa != sb and sa.parent != sb.parent, "two stores must not share a staging folder"
    assert OutputStore("memory://eochips-d2/a").staging == sa  # stable per store and process

    dead = _dead_pid()
    own = sa / f"own{TMP_MARK}1"
    live = sa.parent / str(os.getppid()) / f"live{TMP_MARK}1"
    gone = sa.parent / str(dead) / f"gone{TMP_MARK}1"
    other = sb.parent / str(dead) / f"other{TMP_MARK}1"
    for f in (own, live, gone, other):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"in flight")

    assert a.remove_temporaries() == 1
    assert not gone.parent.exists()
    assert live.read_bytes() == b"in flight", "a live process's staged file was deleted"
    assert own.exists(), "this process's own staging folder was deleted"
    assert other.exists(), "another store's staging folder was touched"
    assert b.remove_temporaries() == 1 and not other.parent.exists() and live.exists()

    # and the staging folder really is what a remote write goes through (then emptied)
    a.write_text("x/y.txt", "hello")
    assert a.read_bytes("x/y.txt") == b"hello" and b.exists("x/y.txt") is False
    assert sorted(p.name for p in sa.iterdir()) == [own.name]


# --------------------------------------------------------------------------------------
# 2. D5: credentials never travel in tasks


def test_d5_tasks_carry_no_credentials_but_workers_build_them(local_catalog, cdl_raster, hls_dir, tmp_path, monkeypatch):
    """D5 (credentials in every task payload): with ``auth: earthdata`` and ``EARTHDATA_TOKEN``
    set, the tasks of a plan hold the token neither pickled (what goes to the scheduler and the
    workers) nor in their repr (what a log shows), while :func:`eochips.reading.read_env` (what a
    worker builds from the auth name) holds it, and a worker's read of an HTTP asset really
    sends it.

    Engine v1 put the GDAL env with ``GDAL_HTTP_HEADERS: Authorization: Bearer ...`` into every
    ``ChipTask.env`` (plan.py:478, 503) with the dataclass default repr (chips.py:132): the token
    is in both the pickle and the repr."""
    from eochips.chips import process_batch
    from eochips.config import load_recipe
    from eochips.plan import make_plan, make_tasks
    from eochips.reading import read_env
    from eochips.writers import OutputStore

    token = "edl-" + uuid.uuid4().hex
    monkeypatch.setenv("EARTHDATA_TOKEN", token)
    d, items = hls_dir
    with RangeServer(d) as srv:  # a fresh server: only this test's requests reach it
        feats = json.loads(json.dumps(items))
        for it in feats:
            for a in it["assets"].values():
                a["href"] = f"{srv.url}/{a['href']}"
        cat = tmp_path / "items.json"
        cat.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        recipe = write_recipe(tmp_path / "auth.yaml", crop_recipe(str(cat), cdl_raster, **{"sources.hls.search.auth": "earthdata",
                                                                                      "sources.hls.search.auth_hosts": ["127.0.0.1"]}))
        plan = make_plan(load_recipe(recipe))
        tasks = make_tasks(plan, OutputStore(tmp_path / "out"))
        assert len(tasks) == 41
        assert {lay.auth for t in tasks for lay in t.layers} == {"earthdata"}
        assert token.encode() not in pickle.dumps(tasks)
        assert token not in repr(tasks)
        assert token not in repr(plan) and token.encode() not in pickle.dumps(plan)
        env = read_env(tasks[0].reading, tasks[0].layers[0].auth)
        assert env["GDAL_HTTP_HEADERS"] == f"Authorization: Bearer {token}"
        # a worker (here in-process) builds the header itself and sends it with its reads
        srv.authorization.clear()
        (res,) = process_batch(tasks[:1])
        assert res.status in ("kept", "dropped"), res.reason
        assert srv.authorization == {f"Bearer {token}"}


# --------------------------------------------------------------------------------------
# 3. D8: a 400 mentioning 5000 is not a transient error


def _api_error(status: int, text: str):
    import requests
    from pystac_client.exceptions import APIError

    resp = requests.Response()
    resp.status_code = status
    resp._content = text.encode()
    resp.encoding = "utf-8"
    return APIError.from_response(resp)


def test_d8_transient_is_classified_by_status_code_not_text():
    """D8 (``_transient`` misclassifies 400s containing "500"-like numbers): a STAC API 400 whose
    body says "5000" is permanent, a 503 and a connection error are transient; a GDAL
    "HTTP response code: 400 ... 5000" is a permanent ReadError, a 503 a TransientReadError.

    Engine v1 looked for " 500" / "500" in the message text (search.py:214), so "limit 5000"
    made the 400 transient: the search was retried and then reported as "kept failing"."""
    import requests

    from eochips.errors import ReadError, TransientReadError
    from eochips.reading import classify
    from eochips.search.stac import transient

    bad = _api_error(400, '{"code": "BadRequest", "description": "limit must be between 1 and 5000 (got 50000)"}')
    assert bad.status_code == 400 and "5000" in str(bad)
    assert transient(bad) is False
    assert transient(_api_error(503, "Service Unavailable")) is True
    assert transient(requests.ConnectionError("Connection refused")) is True

    href = "https://data.example/HLS.S30.T30UVB.2021159T112708.v2.0.B04.tif"
    perm = classify(RuntimeError("HTTP response code: 400 - max 5000 ranges per request (5000 exceeded)"), href)
    assert isinstance(perm, ReadError) and not isinstance(perm, TransientReadError)
    tr = classify(RuntimeError("HTTP response code: 503 - service unavailable"), href)
    assert isinstance(tr, TransientReadError)


class _Api400(ThreadingHTTPServer):
    """A minimal STAC API whose /search answers 400 with "5000" in the body, counting searches."""

    def __init__(self):
        self.searches = 0
        api = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                root = api.url
                if self.path.rstrip("/") == "":
                    self._send(200, {"type": "Catalog", "id": "t", "description": "t", "stac_version": "1.0.0",
                                     "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                                    "https://api.stacspec.org/v1.0.0/item-search",
                                                    "https://api.stacspec.org/v1.0.0/collections",
                                                    "http://www.opengis.net/spec/ogcapi-features-1/conf/core"],
                                     "links": [{"rel": "self", "href": root + "/"}, {"rel": "root", "href": root + "/"},
                                               {"rel": "search", "href": root + "/search", "method": "POST", "type": "application/geo+json"},
                                               {"rel": "data", "href": root + "/collections"}]})
                elif self.path.startswith("/collections/"):
                    cid = self.path.rsplit("/", 1)[1]
                    self._send(200, {"type": "Collection", "id": cid, "stac_version": "1.0.0", "description": "x",
                                     "license": "proprietary", "links": [],
                                     "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                                                "temporal": {"interval": [[None, None]]}}})
                else:
                    self._send(404, {"code": "NotFound"})

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                api.searches += 1
                self._send(400, {"code": "BadRequest", "description": "limit must be between 1 and 5000"})

        super().__init__(("127.0.0.1", 0), H)
        self.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def test_d8_api_400_mentioning_5000_is_not_retried(cdl_raster):
    """D8 end to end: a search whose API answers HTTP 400 "... 5000" fails at once with the
    server's message, after exactly one /search request, not as "kept failing after N retries".

    Engine v1 retried it as transient (search.py:214) max_retries + 1 times with backoff."""
    from eochips.config import parse_recipe
    from eochips.errors import CatalogError
    from eochips.geo import load_aoi, reproject_geometry
    from eochips.search import search

    api = _Api400()
    th = threading.Thread(target=api.serve_forever, daemon=True)
    th.start()
    try:
        r = parse_recipe(crop_recipe(api.url, cdl_raster))
        assert r.sources["hls"].search.max_retries >= 1
        aoi, crs = load_aoi(r.aoi)
        with pytest.raises(CatalogError) as ei:
            search(r.sources["hls"].search, reproject_geometry(aoi, crs, "EPSG:4326"))
    finally:
        api.shutdown()
        api.server_close()
    assert api.searches == 1
    assert "kept failing" not in str(ei.value) and "5000" in str(ei.value)


# --------------------------------------------------------------------------------------
# 4. one retry layer per transport


class _FailOnce(Faults):
    """Counts every request by key; answers 503 to the first request of the ``nth`` distinct key
    that ``want`` accepts, once (every later request passes)."""

    def __init__(self, want, nth: int):
        super().__init__()
        self.want, self.nth = want, nth
        self.seen: collections.Counter = collections.Counter()
        self.keys: list = []  # distinct wanted keys, in order of first request
        self.failed = None

    def draw(self, key):
        with self._lock:
            self.requests += 1
            self.seen[key] += 1
            if not self.want(key):
                return None
            if key not in self.keys:
                self.keys.append(key)
            if self.failed is None and len(self.keys) == self.nth and self.seen[key] == 1:
                self.failed = key
                self.counts["503"] = 1
                return "503"
            return None


def test_gdal_http_retries_are_off():
    """One retry layer per transport: GDAL's own HTTP retries are off, in the defaults and in
    the options a worker builds for every read (any auth scheme).

    Engine v1 set ``GDAL_HTTP_MAX_RETRY: 3`` and ``GDAL_HTTP_RETRY_DELAY: 0.5`` (reading.py:52-53)
    under its own tenacity retries (each transient error retried 4 x 5 times)."""
    from eochips.config import ReadingConfig
    from eochips.reading import DEFAULT_GDAL_ENV, read_env

    assert DEFAULT_GDAL_ENV["GDAL_HTTP_MAX_RETRY"] == 0
    for auth in ("none", "earthdata"):
        assert read_env(ReadingConfig(), auth)["GDAL_HTTP_MAX_RETRY"] == 0


def test_a_cog_request_failing_once_is_retried_and_counted_by_eochips(hls_dir):
    """One retry layer per transport (COG side): the first request for an asset answered 503
    once is retried by eochips alone: the request is sent exactly twice (the failure and
    eochips' retry), eochips counts one retry, and the pixels equal a local read.

    Engine v1 let GDAL retry (``GDAL_HTTP_MAX_RETRY: 3``, reading.py:52-53): the 503 never
    reached eochips, no retry was counted (test_faults.py could only print the count)."""
    import rasterio

    from eochips.reading import read_onto

    d, items = hls_dir
    name = items[0]["assets"]["B04"]["href"]
    faults = _FailOnce(lambda key: True, nth=1)
    with RangeServer(d, faults) as srv:  # a fresh port: nothing of this URL is in GDAL's caches
        with rasterio.open(d / name) as ds:
            crs, (a, b, c, dd, e, f) = ds.crs.to_wkt(), tuple(ds.transform)[:6]
            tr = (a, b, c + a * (ds.width // 2), dd, e, f + e * (ds.height // 2))
            ref = ds.read(1, window=((ds.height // 2, ds.height // 2 + 16), (ds.width // 2, ds.width // 2 + 16)))
        retries: list = []
        got = read_onto(f"{srv.url}/{name}", crs, tr, (16, 16), resampling="nearest", max_retries=3, retries=retries)
    assert (got == ref).all()
    assert faults.failed is not None and faults.seen[faults.failed] == 2
    assert len(retries) == 1, "the 503 was retried by GDAL, invisibly to eochips' retry layer"


def test_api_search_retries_only_the_failed_page(stac_api, cdl_raster):
    """One retry layer per transport (STAC side): a paged search (``page_size: 1``) through a
    proxy that answers 503 to the second page request once retries that request alone: page 1
    and every other page are requested once, page 2 twice, and the scenes equal a clean search.

    Engine v1 wrapped the whole search in a tenacity loop on top of urllib3 retries
    (search.py:230-260): a page fault urllib3 did not absorb restarted the search from page 1,
    and 503s were retried by both layers."""
    from eochips.config import parse_recipe
    from eochips.geo import load_aoi, reproject_geometry
    from eochips.search import search

    def is_search(key):
        return key[0] == "POST" and key[1].startswith("/search")

    clean = _FailOnce(is_search, nth=10**6)  # counts only
    faulty = _FailOnce(is_search, nth=2)
    results = []
    for faults in (clean, faulty):
        with FaultyProxy(stac_api, faults) as px:
            r = parse_recipe(crop_recipe(px.url, cdl_raster, **{"sources.hls.search.page_size": 1}))
            aoi, crs = load_aoi(r.aoi)
            results.append([s.id for s in search(r.sources["hls"].search, reproject_geometry(aoi, crs, "EPSG:4326"))])
    assert results[0] == results[1] and len(results[0]) == 4
    pages = faulty.keys
    assert len(pages) >= 4, "page_size 1 should fetch one page per scene"
    assert len(pages) == len(clean.keys)
    assert faulty.failed == pages[1]
    assert faulty.seen[pages[0]] == 1, "page 1 was requested again: the whole search was restarted"
    assert faulty.seen[pages[1]] == 2
    assert all(faulty.seen[p] == 1 for p in pages[2:])


# --------------------------------------------------------------------------------------
# 5. a bug is not a failed unit


def _unit_task(hls_dir, out: Path):
    """A hand-built one-unit task (B04 + Fmask of a real granule, 32 px inside it, seed-001)."""
    import rasterio

    from eochips.chips import LayerRead, SceneRead, StepRead, UnitTask
    from eochips.config.models import Seed001Layout
    from eochips.profiles import BandSpec, QASpec

    d, items = hls_dir
    it = items[0]
    b04, fm = str(d / it["assets"]["B04"]["href"]), str(d / it["assets"]["Fmask"]["href"])
    with rasterio.open(b04) as ds:
        a, b, c, dd, e, f = tuple(ds.transform)[:6]
        tr = (a, b, c + a * (ds.width // 2), dd, e, f + e * (ds.height // 2))
        crs = ds.crs.to_wkt()
    step = StepRead((SceneRead(it["id"], "2021-06-08T11:27:08+00:00", "primary", (("B04", b04), ("Fmask", fm))),))
    layer = LayerRead("hls", (BandSpec("red", "B04", 1, "int16", -9999, 0.0001, 0.0, 30, "bilinear"),),
                      QASpec("Fmask", "fmask", "uint8", 255, 30), (step,))
    return UnitTask(unit_id="chip_000_000", key=(0, 0, 0), crs=crs, transform=tr, shape=(32, 32), layers=(layer,),
                    out=str(out), layouts=(Seed001Layout(kind="seed-001"),))


def test_a_bug_in_a_unit_propagates_an_io_error_fails_the_unit(hls_dir, tmp_path, monkeypatch):
    """A bug is not a failed unit: a non-I/O exception raised while building a unit (here a
    layout raising ValueError) propagates out of ``process_batch`` (the run stops with its
    traceback), while a ReadError makes the unit ``failed`` with code "io" (a rerun retries it).
    The same task without the patch is kept (so the patch is what decides).

    Engine v1 caught every exception per chip (chips.py:369-376 ``_finish_safely``, and
    engine.py ``_safe``) and recorded a bug as a failed chip that every rerun retried."""
    from eochips.chips import process_batch
    from eochips.errors import ReadError
    from eochips.writers import layouts

    task = _unit_task(hls_dir, tmp_path / "ok")
    (ok,) = process_batch([task])
    assert ok.status == "kept" and sorted(ok.files) == ["chips/chip_000_000_Fmask.tif", "chips/chip_000_000_merged.tif"]

    def bug(*a, **k):
        raise ValueError("a bug in a layout")

    monkeypatch.setitem(layouts.LAYOUTS, "seed-001", bug)
    with pytest.raises(ValueError, match="a bug in a layout"):
        process_batch([_unit_task(hls_dir, tmp_path / "bug")])

    def io(*a, **k):
        raise ReadError("cannot read s3://bucket/labels.tif: HTTP response code: 404")

    monkeypatch.setitem(layouts.LAYOUTS, "seed-001", io)
    (res,) = process_batch([_unit_task(hls_dir, tmp_path / "io")])
    assert (res.status, res.code) == ("failed", "io") and "labels.tif" in res.reason and res.files == {}
    marker = json.loads((tmp_path / "io" / "state" / "units" / "chip_000_000.json").read_text())
    assert marker["status"] == "failed" and marker["code"] == "io"


# --------------------------------------------------------------------------------------
# 6. relative paths


def test_relative_paths_plan_in_one_folder_build_from_another(hls_dir, cdl_raster, tmp_path, monkeypatch):
    """Paths: a recipe in folder A names its static catalog and label raster relative to A (and
    the catalog its assets relative to itself); ``plan -o out`` from cwd A, then ``build`` and
    ``finalize`` of A/out from another cwd succeed, and the dataset is in A/out. A relative
    output is stored as an absolute location: ``OutputStore("rel").location`` and every task's
    ``out`` are absolute.

    Engine v1 kept a relative output as given (writers.py:76 ``self.root = Path(loc)``; the
    location stays "rel") and put that relative location in every task (plan.py:499): a worker
    in another folder wrote the chips elsewhere."""
    from eochips.plan import load_plan, make_tasks
    from eochips.writers import OutputStore

    d, items = hls_dir
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    (a_dir / "labels").mkdir(parents=True)
    b_dir.mkdir()
    shutil.copy(cdl_raster, a_dir / "labels" / "cdl.tif")
    feats = json.loads(json.dumps(items))
    for it in feats:
        for a in it["assets"].values():
            a["href"] = os.path.relpath(d / a["href"], a_dir)
    (a_dir / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    data = crop_recipe("items.json", Path("labels/cdl.tif"))
    data["grid"]["path"] = "labels/cdl.tif"
    write_recipe(a_dir / "recipe.yaml", data)

    monkeypatch.chdir(a_dir)
    proc = run_cli("plan", "recipe.yaml", "-o", "out")
    assert proc.returncode == 0, proc.stderr[-1500:]
    out = a_dir / "out"
    doc = json.loads((out / "plan" / "plan.json").read_text())
    assert doc["recipe"]["sources"]["hls"]["search"]["catalog"] == str(a_dir / "items.json")
    assert doc["recipe"]["grid"]["path"] == str(a_dir / "labels" / "cdl.tif")

    assert OutputStore("rel").location == str(a_dir / "rel")
    tasks = make_tasks(load_plan(OutputStore(out)), OutputStore("out"))
    assert tasks and {t.out for t in tasks} == {str(out)}
    monkeypatch.chdir(tmp_path)

    proc = _cli(["build", str(out), "--no-progress"], cwd=b_dir)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert json.loads(proc.stdout)["kept"] == 3
    proc = _cli(["finalize", str(out)], cwd=b_dir)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert len(list((out / "chips").glob("*_merged.tif"))) == 3 and (out / "checksums.sha256").is_file()
    assert list(b_dir.iterdir()) == [], "nothing may be written relative to the build's working directory"


# --------------------------------------------------------------------------------------
# 7. zero kept units


@pytest.fixture(scope="module")
def zero_run(local_catalog, cdl_raster, tmp_path_factory):
    """A run whose Fmask rule (max_pct 0) drops every unit, its stderr at a log's width (80)."""
    tmp = tmp_path_factory.mktemp("defects-zero")
    recipe = write_recipe(tmp / "r.yaml", crop_recipe(str(local_catalog), cdl_raster, **{FMASK_RULE: 0}))
    return run_cli("run", str(recipe), "-o", str(tmp / "out"), "--no-progress", env={"COLUMNS": "80"})


def test_zero_kept_units_exit_3_without_traceback(zero_run):
    """Zero kept units: a run whose filters drop every unit exits 3 (not 0: an empty dataset is
    not a success, not 1: nothing failed), warns once, and shows no traceback.

    Engine v1 exited 0 unless a chip failed (cli.py:88-90) and printed no warning."""
    assert zero_run.returncode == 3, zero_run.stderr[-1500:]
    assert "Traceback" not in zero_run.stderr and "error:" not in zero_run.stderr
    assert sum(ln.startswith("warning: no unit was kept") for ln in zero_run.stderr.splitlines()) == 1, zero_run.stderr
    assert re.search(r"│ kept\s*│ 0\s*│", zero_run.stdout), zero_run.stdout


def test_zero_kept_warning_is_one_line_naming_every_reason(zero_run):
    """Zero kept units: the warning is one line, "warning: no unit was kept (CODE N, ...); the
    dataset is empty", naming every reason code with its count (summing to the plan's 42 units).

    Engine v1 printed no such line at all."""
    lines = [ln for ln in zero_run.stderr.splitlines() if ln.startswith("warning: no unit was kept")]
    assert len(lines) == 1, zero_run.stderr
    m = re.match(r"warning: no unit was kept \((.*)\); the dataset is empty$", lines[0])
    assert m, lines[0]
    counts = dict((code, int(n)) for code, n in (part.rsplit(" ", 1) for part in m.group(1).split(", ")))
    assert {"fmask-bad-pct", "label-fraction"} <= set(counts) <= {"fmask-bad-pct", "label-fraction", "nodata"}
    assert sum(counts.values()) == 42 and counts["label-fraction"] == 1


# --------------------------------------------------------------------------------------
# 8. a changed recipe over an existing dataset; 9. / 10. interruptions (shared clean run)


@pytest.fixture(scope="module")
def slow(local_catalog, cdl_raster, tmp_path_factory):
    """The crop recipe with the Fmask rule relaxed (29 of 42 units kept) and ``batch_chips: 1``
    (one Dask task per unit, so completion markers appear one by one over ~4 s: a build that
    can be interrupted in the middle), and a clean run of it (engine settings overridden for
    speed: they do not change an output byte)."""
    tmp = tmp_path_factory.mktemp("defects-slow")
    recipe = write_recipe(tmp / "crop.yaml", crop_recipe(str(local_catalog), cdl_raster,
                                                         **{FMASK_RULE: 100, "engine.batch_chips": 1}))
    clean = tmp / "clean"
    proc = run_cli("run", str(recipe), "-o", str(clean), "--no-progress", "--set", "engine.batch_chips=128")
    assert proc.returncode == 0, proc.stderr[-1500:]
    return {"recipe": recipe, "clean": clean, "manifest": manifest(clean)}


def test_changed_recipe_is_refused_overwrite_rebuilds_same_recipe_resumes(slow, tmp_path):
    """Changed recipe over an existing folder: a dataset of ``units.size: 32``, run again with
    ``--set units.size=64``, is refused (exit 2, one error line naming ``units.size: 32 -> 64``
    and ``--overwrite``) and left untouched; rerunning the same recipe resumes (``build``
    reports ``ran: 0``), also when only ``engine.workers`` / ``reading.threads`` differ; with
    ``--overwrite`` it is rebuilt: every chip 64 x 64, no 32-px chip file left.

    Engine v1 stored no recipe to compare with (``run`` had no ``--overwrite``): a 64-px run
    over the 32-px dataset mixed both sizes in one folder (old chips kept in the state and the
    index)."""
    import rasterio

    from eochips.engine import State

    out = tmp_path / "out"
    shutil.copytree(slow["clean"], out)
    before = _tree(out)
    recipe = str(slow["recipe"])

    proc = run_cli("run", recipe, "-o", str(out), "--no-progress", "--set", "units.size=64")
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    errs = [ln for ln in proc.stderr.strip().splitlines()]
    assert len(errs) == 1 and errs[0].startswith("error: "), proc.stderr
    assert "units.size: 32 -> 64" in errs[0] and "--overwrite" in errs[0]
    assert _tree(out) == before, "a refused run must not touch the dataset"

    proc = run_cli("build", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-1500:]
    s = json.loads(proc.stdout)
    assert s["ran"] == 0 and s["kept"] == 29

    rows = State(out / "state.sqlite").all()
    chips = {k: v for k, v in _tree(out).items() if k.startswith("chips/")}
    proc = run_cli("run", recipe, "-o", str(out), "--no-progress", "--set", "engine.workers=1", "--set", "reading.threads=4")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert State(out / "state.sqlite").all() == rows, "an engine/reading change alone must resume, not rebuild"
    assert {k: v for k, v in _tree(out).items() if k.startswith("chips/")} == chips

    proc = run_cli("run", recipe, "-o", str(out), "--no-progress", "--set", "units.size=64", "--overwrite")
    assert proc.returncode in (0, 3), proc.stderr[-1500:]
    tifs = sorted((out / "chips").glob("*.tif"))
    assert proc.returncode == 3 or tifs
    for p in tifs:
        with rasterio.open(p) as ds:
            assert (ds.height, ds.width) == (64, 64), p.name
    listed = {ln.split("  ", 1)[1] for ln in manifest(out).splitlines()}
    assert {p.relative_to(out).as_posix() for p in tifs} <= listed
    assert not [p for p in (out / "chips").iterdir() if p.relative_to(out).as_posix() not in listed]


def test_engine_and_reading_settings_do_not_change_the_dataset(slow, tmp_path):
    """A change of ``engine.workers`` or ``reading.threads`` alone is not a different recipe: a
    rerun with them changed resumes and leaves a dataset whose manifest equals the first one.

    Engine v1 fails it the same way: plan.py:400 dumped the whole recipe, engine section
    included, into plan/plan.json and dataset.py:258 listed that file in the manifest."""
    out = tmp_path / "out"
    shutil.copytree(slow["clean"], out)
    proc = run_cli("run", str(slow["recipe"]), "-o", str(out), "--no-progress", "--set", "engine.workers=1",
                   "--set", "reading.threads=4")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert manifest(out) == slow["manifest"]


def _check_committed(out: Path) -> set[str]:
    """D10 invariants of an interrupted dataset; returns the units the rerun must redo.

    Every unit with final files under chips/ has a marker ``state/units/{unit}.json`` listing
    exactly those files with matching sha256, or has no marker (its files are partial: the rerun
    redoes it). ``open_state`` then holds one row per marker (plus the rows of units dropped in
    the plan, which have no marker)."""
    from eochips.engine import open_state
    from eochips.plan import load_plan
    from eochips.writers import TMP_MARK, OutputStore

    store = OutputStore(out)
    plan = load_plan(store)
    ids = sorted((u.id for u in plan.units), key=len, reverse=True)
    on_disk: dict[str, set[str]] = collections.defaultdict(set)
    for p in (out / "chips").glob("*") if (out / "chips").is_dir() else []:
        if TMP_MARK in p.name:
            continue
        uid = next(u for u in ids if p.name.startswith((u + "_", u + ".")))
        on_disk[uid].add(p.relative_to(out).as_posix())
    markers = {p.stem: json.loads(p.read_text()) for p in (out / "state" / "units").glob("*.json")}
    assert markers, "the build was interrupted before any unit finished"
    planned = {u.id for u in plan.planned}
    assert len(markers) < len(planned), "the build was not interrupted (every unit finished)"
    redo = set()
    for uid, files in on_disk.items():
        m = markers.get(uid)
        if m is None:
            redo.add(uid)
            continue
        assert m["status"] == "kept", (uid, m["status"])
        assert {f for f in m["files"] if f.startswith("chips/")} == files, uid
    for uid, m in markers.items():
        assert m["unit_id"] == uid
        for rel, digest in m["files"].items():
            assert _sha(out / rel) == digest, (uid, rel)
    state = open_state(store)
    try:
        rows = state.all()
    finally:
        state.close()
    for uid, m in markers.items():
        assert uid in rows, uid
        assert (rows[uid]["status"], rows[uid]["files"], rows[uid]["fingerprint"]) == (m["status"], m["files"], m["fingerprint"])
    plan_dropped = {u.id for u in plan.units if u.status == "dropped"}
    assert set(rows) - set(markers) <= plan_dropped
    return redo


def _rerun_equals_clean(slow, out: Path, redo: set[str]) -> None:
    proc = run_cli("run", str(slow["recipe"]), "-o", str(out), "--no-progress", "--set", "engine.batch_chips=128")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert manifest(out) == slow["manifest"]
    for uid in redo:
        assert (out / "state" / "units" / f"{uid}.json").is_file(), uid


INTERRUPTS = [
    pytest.param("SIGINT", "driver", id="sigint"),
    pytest.param("SIGTERM", "driver", id="sigterm"),
    pytest.param("SIGINT", "group", id="ctrl-c-process-group"),
]


def _sigint_default() -> None:
    """In the child before exec: SIGINT back to its default. A process started in the background
    by a non-interactive shell (``cmd &``, as a CI runner may start the suite) inherits SIGINT
    ignored, and Python then installs no KeyboardInterrupt handler; a terminal's Ctrl-C, which
    this test stands for, reaches a job whose SIGINT is not ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signame, target", INTERRUPTS)
def test_interrupt_exits_130_cleanly_and_resumes(slow, tmp_path, signame, target):
    """Ctrl-C / SIGTERM (issue item 9) during the build: exit 130, exactly one
    "interrupted: ..." line and no traceback on stderr, no process of the run left (the run has
    a unique environment variable; /proc/*/environ is scanned), the state committed as units
    finished (item 10, :func:`_check_committed`), and a rerun completes with a clean run's
    manifest.

    ``driver``: the signal goes to the eochips process (``kill -INT`` / ``kill -TERM``, a batch
    scheduler). ``group``: as a terminal's Ctrl-C, SIGINT reaches every process of the run's
    process group (the run is started as a session leader, like a shell job); the others are
    signalled 0.3 s before the driver, one order a group signal may take effect in, so the test
    is deterministic.

    Engine v1 installed no SIGTERM handler and did not catch KeyboardInterrupt (cli.py:28-33):
    SIGTERM killed the driver with -15, Ctrl-C ended with a KeyboardInterrupt traceback and
    exit 1, and chips recorded only when their batch returned."""
    out = tmp_path / "out"
    tag = f"EOCHIPS_TEST_RUN_{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-m", "eochips.cli", "run", str(slow["recipe"]), "-o", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, **{tag: "1"}), preexec_fn=_sigint_default)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "plan" / "plan.json").is_file() and list((out / "state" / "units").glob("*.json"))):
            assert proc.poll() is None, f"the run ended before building: {proc.returncode}"
            assert time.monotonic() < deadline, "the build did not start"
            time.sleep(0.02)
        sig = getattr(signal, signame)
        if target == "group":  # the members of the run's process group, the driver last
            for pid in _group(proc.pid):
                if pid != proc.pid:
                    os.kill(pid, sig)
            time.sleep(0.3)
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    deadline = time.monotonic() + 5
    while _tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _tagged(tag) == [], "a process of the interrupted run survived"
    lines = [ln for ln in stderr.splitlines() if ln.startswith("interrupted:")]
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    redo = _check_committed(out)
    _rerun_equals_clean(slow, out, redo)


def test_sigkill_after_first_record_leaves_committed_state(slow, tmp_path):
    """State committed as units finish (item 10): a run killed with SIGKILL right after the first
    result is recorded (``EOCHIPS_FAILPOINT=build:after-record@1``, threaded cluster: the workers
    die with it, as in a machine crash) leaves a completion marker with matching sha256 for
    every unit whose files are all on disk, the others are redone by the rerun, ``open_state``
    holds one row per marker, and the rerun's manifest equals a clean run's.

    Engine v1 had no markers: a unit's record existed only once its whole batch returned to the
    driver and was written to the driver's SQLite; files finished by workers were orphans that
    the rerun had to redo, and a remote state was uploaded only at the end (D3)."""
    out = tmp_path / "out"
    proc = run_cli("run", str(slow["recipe"]), "-o", str(out), "--no-progress", "--set", "engine.processes=false",
                   env={"EOCHIPS_FAILPOINT": "build:after-record@1"})
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-1500:])
    redo = _check_committed(out)
    _rerun_equals_clean(slow, out, redo)


# --------------------------------------------------------------------------------------
# 11. dry-run estimate


def test_dry_run_estimate_within_2x_of_bytes_read(stac_api, cog_server, cdl_raster, tmp_path):
    """Dry-run estimate: ``plan --dry-run`` prints "estimated bytes to read"; a full ``run`` of
    the same recipe over HTTP (the pgstac items point at the RangeServer ``cog_server``, which
    counts the bytes it sends) reads between 0.5 and 2 times that.

    Engine v1 estimated whole-window reads per chip, step and asset without the COG block
    layout or the shared tiles (plan.py:67-85): 5x-1500x too high."""
    recipe = write_recipe(tmp_path / "crop.yaml", crop_recipe(stac_api, cdl_raster))
    out = tmp_path / "out"
    proc = run_cli("plan", str(recipe), "-o", str(out), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-1500:]
    m = re.search(r"estimated bytes to read\s*│?\s*([0-9.]+) MB", proc.stdout)
    assert m, proc.stdout
    estimate = float(m.group(1)) * 1e6
    assert not out.exists()
    before = cog_server.bytes_sent
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-1500:]
    sent = cog_server.bytes_sent - before
    assert sent > 0
    assert 0.5 <= estimate / sent <= 2.0, (estimate, sent)


# --------------------------------------------------------------------------------------
# 12. make demo without the test extras


def _make_rules(text: str) -> tuple[dict[str, str], dict[str, tuple[list[str], list[str]]]]:
    """Variables and ``target -> (prerequisites, recipe lines)`` of a simple Makefile, expanded."""
    variables: dict[str, str] = {}
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current = None
    for raw in text.splitlines():
        if raw.startswith("\t"):
            if current is not None:
                rules[current][1].append(raw.strip())
            continue
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|=)\s*(.*)$", line)
        if m:
            variables[m.group(1)] = m.group(3).strip()
            current = None
            continue
        m = re.match(r"^([^:=]+):(?!=)\s*(.*)$", line)
        if m:
            current = m.group(1).strip()
            rules[current] = (m.group(2).split(), [])

    def expand(s: str) -> str:
        for _ in range(10):
            s2 = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda mm: variables.get(mm.group(1), ""), s)
            if s2 == s:
                break
            s = s2
        return s

    rules = {expand(t): ([expand(p) for p in pre], [expand(c) for c in cmds]) for t, (pre, cmds) in rules.items()}
    return variables, rules


def _installs(rules, target: str, seen=None) -> list[str]:
    """The ``pip install`` commands that making ``target`` runs (prerequisites first)."""
    seen = set() if seen is None else seen
    if target in seen or target not in rules:
        return []
    seen.add(target)
    pre, cmds = rules[target]
    out = [c for p in pre for c in _installs(rules, p, seen)]
    return out + [c for c in cmds if "pip install" in c]


def test_make_demo_installs_the_runtime_only():
    """``make demo`` must not install the test extras: the installs its prerequisites run
    include ``pip install -e .`` and none names an extra, while ``make test`` installs
    ``.[test]``.

    Engine v1's Makefile made ``demo`` depend on the one ``install`` stamp, which ran
    ``pip install -e ".[test]"`` (moto, pgstac, s2cloudless... for a demo)."""
    _, rules = _make_rules((REPO / "Makefile").read_text())
    demo = _installs(rules, "demo")
    assert demo, "make demo installs nothing"
    assert any(re.search(r"pip install( -q)? -e \.(\s|$)", c) for c in demo), demo
    assert not any("[" in c for c in demo), demo
    test = _installs(rules, "test")
    assert any(re.search(r"""-e ["']?\.\[test\]["']?""", c) for c in test), test
