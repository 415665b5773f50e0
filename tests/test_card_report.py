"""The dataset card (README.md), the HTML report (report.html) and the class plots, on the demo
recipe's real Landsat 8 sample and on the crop recipe (pgstac API, real HLS over Exeter).

Expected values are computed here from the chip files (rasterio + numpy), from plan.json and
summary.json, never by calling the card or report code again. The report is rendered in headless
Debian chromium driven over the DevTools protocol (aiohttp's websocket client): the screenshot
must show a page (pixel variance, many colours) and the page must log no console error, no
uncaught exception and no failed load (a control page with each of those proves the capture).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from conftest import REPO, build_recipe, crop_recipe, run_cli

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_sample = pytest.mark.skipif(not (SAMPLE / "catalog.json").is_file(),
                                  reason=f"no sample at {SAMPLE}; run `make demo` (needs the package index)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
LICENCE = "CC-BY-4.0"
PROVIDER = "USGS (producer, licensor)"
SCREENSHOT_NOTE = Path("/work/notes/report14.png")


# --------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo recipe built once, on a copy of the sample catalog whose items declare a licence
    and a provider (STAC common metadata): the pixels are the sample's own (absolute hrefs)."""
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}; run `make demo`")
    tmp = tmp_path_factory.mktemp("demo")
    sample = tmp / "sample"
    sample.mkdir()
    (sample / "labels").symlink_to((SAMPLE / "labels").resolve())
    cat = json.loads((SAMPLE / "catalog.json").read_text())
    for it in cat["features"]:
        it["properties"]["license"] = LICENCE
        it["properties"]["providers"] = [{"name": "USGS", "roles": ["producer", "licensor"]}]
        for a in it["assets"].values():
            a["href"] = str((SAMPLE / a["href"]).resolve())
    (sample / "catalog.json").write_text(json.dumps(cat))
    out = tmp / "out"
    proc = run_cli("run", "demo", "--output", str(out), "--no-progress", "--workers", "1", env={"EOCHIPS_SAMPLE_DIR": str(sample)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _ids(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [r["ids"] for r in csv.DictReader(f)]


def _md_table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table after ``## heading``."""
    part = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = part.split("\n|", 1)[1].split("\n\n", 1)[0]  # the first table of the section
    lines = ("|" + lines).splitlines()
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


# --------------------------------------------------------------------------------------
# the card

def test_card_recipe_versions_and_date(demo):
    from eochips import __version__
    from eochips.config import canonical, parse_recipe
    from eochips.plan import load_plan
    from eochips.writers import OutputStore

    text = (demo / "README.md").read_text()
    assert text.startswith("# demo\n")
    assert "Landsat 8 chips from the embedded real sample" in text  # the recipe's description
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    plan_doc = json.loads((demo / "plan" / "plan.json").read_text())
    assert doc == plan_doc["recipe"]  # the resolved recipe, as the plan stores it
    run = json.loads((demo / "plan" / "run.json").read_text())
    assert canonical(parse_recipe({**doc, **run})) == canonical(load_plan(OutputStore(demo)).recipe)  # loads back equal
    build = dict(_md_table(text, "Build"))
    assert build["eochips"] == __version__ and build["GDAL"] == rasterio.__gdal_version__ and build["rasterio"] == rasterio.__version__
    planned = datetime.fromtimestamp((demo / "plan" / "plan.json").stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
    assert build["built on (UTC)"] == planned
    assert 'ds = eochips.open_dataset("path/to/demo")' in text and 'ds.paths("train")' in text
    src = _md_table(text, "Sources")
    assert len(src) == 1
    assert src[0][:5] == ["landsat", "landsat8-l1tp", str(demo.parent / "sample" / "catalog.json"), "landsat-8-l1tp-sample", "2"]
    assert src[0][5:] == ["2020-05-18 to 2020-05-18", LICENCE, PROVIDER]


def test_card_counts_split_bands_classes(demo):
    text = (demo / "README.md").read_text()
    summary = json.loads((demo / "summary.json").read_text())
    units = {k: int(_num(v)) for k, v in _md_table(text, "Units")}
    assert units == {"planned units": summary["units_total"], "kept": summary["kept"], "failed": summary["failed"],
                     **{f"dropped: {c}": n for c, n in summary["dropped"].items()}}
    assert units["planned units"] == 108 and units["kept"] == 108
    train, val = _ids(demo / "train_ids.csv"), _ids(demo / "val_ids.csv")
    assert {k: int(_num(v)) for k, v in _md_table(text, "Split")} == {"train": len(train), "validation": len(val)} \
        == {"train": summary["train"], "validation": summary["validation"]}
    # the leak check of the random split, as summary.json has it; every validation chip of the demo touches a train chip
    leaks = text.split("## Split\n", 1)[1].split("\n## ", 1)[0].split("Leak check", 1)[1]
    assert "| train/validation | 22 |" in leaks and summary["split"]["leaks"]["train/validation"] == 22 == len(val)
    # bands: per channel of the train chips, nodata (0) excluded, computed here with rasterio + numpy
    px = {b: [] for b in ("blue", "green", "red")}
    for cid in train:
        with rasterio.open(demo / "chips" / f"{cid}_merged.tif") as ds:
            a = ds.read()
            for i, b in enumerate(("blue", "green", "red")):
                px[b].append(a[i][a[i] != 0])
    rows = _md_table(text, "Bands")
    assert [r[1] for r in rows] == ["blue", "green", "red"] and [r[3] for r in rows] == ["uint16"] * 3 and [r[4] for r in rows] == ["0"] * 3
    for r in rows:
        v = np.concatenate(px[r[1]]).astype(np.float64)
        assert _num(r[7]) == pytest.approx(v.mean(), rel=1e-5) and _num(r[8]) == pytest.approx(v.std(), rel=1e-5)
        assert _num(r[9]) == v.min() and _num(r[12]) == v.max()
        assert _num(r[10]) == pytest.approx(np.percentile(v, 1.5), rel=1e-5, abs=1)  # stats' percentile rule, to 1 DN
        assert _num(r[11]) == pytest.approx(np.percentile(v, 98.5), rel=1e-5, abs=1)
    # classes: label pixels of the train chips' label maps, np.bincount here
    hist = np.zeros(256, np.int64)
    for cid in train:
        with rasterio.open(demo / "chips" / f"{cid}.mask.tif") as ds:
            hist += np.bincount(ds.read(1).ravel(), minlength=256)
            cmap = ds.colormap(1)
    cls = _md_table(text, "Classes")
    assert [(r[0], r[1]) for r in cls] == [("0", "unlabelled"), ("1", "water"), ("2", "crop"), ("3", "tree"), ("4", "developed")]
    assert [int(_num(r[3])) for r in cls] == hist[:5].tolist() and hist[5:].sum() == 0 and hist[0] == 87402
    for r in cls[1:]:  # the label files' own colour table
        assert r[2] == "`#{:02x}{:02x}{:02x}`".format(*cmap[int(r[0])][:3])
    assert cls[0][5] == "yes" and float(cls[0][4]) == 0 and sum(float(r[4]) for r in cls) == pytest.approx(1.0, abs=1e-5)


def test_refinalize_is_byte_identical(demo):
    names = ["README.md", "report.html", "class_distribution_train.png", "class_distribution_validation.png", "checksums.sha256"]
    before = {n: (demo / n).read_bytes() for n in names}
    proc = run_cli("finalize", str(demo))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [n for n in names if (demo / n).read_bytes() != before[n]] == []
    listed = {ln.split("  ", 1)[1] for ln in before["checksums.sha256"].decode().splitlines()}
    assert {"README.md", "report.html"} <= listed


# --------------------------------------------------------------------------------------
# the class plots

def test_class_plot_titles_and_log_axis(demo, monkeypatch):
    from PIL import Image

    from eochips.config import load_recipe
    from eochips.dataset.plots import class_figure, class_pixels, class_rows

    summary = json.loads((demo / "summary.json").read_text())
    for part, n in (("train", summary["train"]), ("validation", summary["validation"])):
        img = Image.open(demo / f"class_distribution_{part}.png")
        assert img.info["Title"] == f"demo: {part}, {n} units, {n * 32 * 32:,} label pixels"  # every pixel of 32 x 32 chips
        assert "Software" not in img.info and np.asarray(img).std() > 10
    monkeypatch.setenv("EOCHIPS_SAMPLE_DIR", str(SAMPLE))
    rows = class_rows(load_recipe("demo"))
    fig = class_figure(rows, {"train": [87402, 212, 171, 198, 81]}, "t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["unlabelled", "water", "crop", "tree", "developed"]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [81, 171, 198, 212, 87402]
    assert class_pixels(rows, [{"0": 5, "3": 2}, {"3": 1, "9": 4}]) == [5, 0, 0, 3, 0]


def test_code_table_plots_per_class_name():
    """A CORINE (clc-19) recipe is plotted per class name (19 names + UNLABELED), codes summed."""
    from eochips.config import parse_recipe, recipe_text
    from eochips.dataset.plots import class_figure, class_pixels, class_rows
    from eochips.labels.tables import CLC_19_NAMES

    data = yaml.safe_load(recipe_text("bigearthnet")[0])
    try:
        recipe = parse_recipe(data)
    except Exception as exc:  # noqa: BLE001 - the built-in recipe needs inputs this machine lacks
        pytest.skip(f"bigearthnet recipe does not load here: {exc}")
    if recipe.labels is None or recipe.labels.table != "clc-19":
        pytest.skip("the bigearthnet recipe has no clc-19 labels")
    rows = class_rows(recipe, {211, 212, 999, 7})
    assert [r.name for r in rows] == [*CLC_19_NAMES, "UNLABELED", "unknown code"]
    got = class_pixels(rows, [{"211": 10, "212": 5, "311": 3, "999": 100, "7": 2}])
    assert got[CLC_19_NAMES.index("Arable land")] == 15 and got[CLC_19_NAMES.index("Broad-leaved forest")] == 3
    assert got[-2:] == [100, 2] and sum(got) == 120
    ax = class_figure(rows, {"train": got}, "t").axes[0]
    assert ax.get_yscale() == "log" and len(ax.get_xticklabels()) == 21


# --------------------------------------------------------------------------------------
# the report: content

def _attrs(page: str) -> list[str]:
    return re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.I)


def test_report_is_self_contained_and_complete(demo):
    from PIL import Image

    page = (demo / "report.html").read_text()
    refs = _attrs(page)
    assert refs and [r for r in refs if "http" in r.lower() or not r.startswith("data:image/png;base64,")] == []
    assert "<script" not in page.lower() and "url(" not in page.lower() and "@import" not in page.lower()
    for h in ("Summary", "Units over the AOI", "Classes per split", "Bands", "Sample units (12 of 108 kept)", "Drop reasons", "Sources"):
        assert f"<h2>{h}</h2>" in page, h
    for name in ("unlabelled", "water", "crop", "tree", "developed"):
        assert f"<td>{name}</td>" in page
    cat = json.loads((SAMPLE / "catalog.json").read_text())
    for it in cat["features"]:
        assert f"<td>{it['id']}</td>" in page
    for r in refs:
        Image.open(io.BytesIO(base64.b64decode(r.split(",", 1)[1]))).verify()
    assert page.count('<div class="chip">') == 12


def _pngs_of(page: str, unit: str) -> dict[str, np.ndarray]:
    from PIL import Image

    out = {}
    for alt, data in re.findall(rf'<img alt="{unit} (\w+)" src="data:image/png;base64,([^"]+)"', page):
        out[alt] = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return out


def test_report_quicklook_pixels(demo):
    """The first sample unit's RGB quicklook is its red/green/blue stretched between the stats
    percentiles (nodata black); its label quicklook is the label file in its own colour table."""
    page = (demo / "report.html").read_text()
    shown = re.findall(r'<img alt="(chip_\d+_\d+) RGB"', page)
    assert len(shown) == 12 and shown == sorted(shown)
    # half of them: the units holding the most non-background classes (label maps counted here)
    n_classes = {}
    for f in sorted((demo / "chips").glob("*.mask.tif")):
        with rasterio.open(f) as ds:
            n_classes[f.name.split(".")[0]] = len(set(np.unique(ds.read(1)).tolist()) - {0})
    best = sorted((u for u in n_classes if n_classes[u]), key=lambda u: (-n_classes[u], u))[:6]
    assert set(best) <= set(shown)
    unit = best[0]
    pngs = _pngs_of(page, unit)
    assert set(pngs) == {"RGB", "labels"}
    stats = json.loads((demo / "stats.json").read_text())
    with rasterio.open(demo / "chips" / f"{unit}_merged.tif") as ds:
        a = ds.read().astype(np.float64)
        names = [d.split("@")[0] for d in ds.descriptions]
    want = np.zeros((*a.shape[1:], 3), np.uint8)
    for k, band in enumerate(("red", "green", "blue")):
        p = stats["bands"][band]["percentiles"] if "bands" in stats else None
        lo, hi = (p["1.5"], p["98.5"]) if p else (None, None)
        if "band_stats" in stats:
            i = stats["band_order"].index(band)
            lo, hi = stats["band_stats"]["percentiles"]["1.5"][i], stats["band_stats"]["percentiles"]["98.5"][i]
        v = a[names.index(band)]
        want[..., k] = np.where(v == 0, 0, np.round(np.clip((v - lo) / (hi - lo), 0, 1) * 255))
    assert np.abs(pngs["RGB"].astype(int) - want).max() <= 1
    with rasterio.open(demo / "chips" / f"{unit}.mask.tif") as ds:
        lab, cmap = ds.read(1), ds.colormap(1)
    colours = np.array([cmap[i][:3] if cmap[i][3] else (0, 0, 0) for i in range(256)], np.uint8)
    assert np.array_equal(pngs["labels"], colours[lab])


def test_report_map_and_drop_reasons_on_crop(crop):
    """The crop dataset drops units (CDL no data, Fmask): the report lists them per reason code
    with their counts from summary.json, and names the scenes of the plan."""
    out, _ = crop
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped"], "the crop setup drops units"
    for code, n in summary["dropped"].items():
        assert f"<td>dropped: {code}</td><td>{n:,}</td>" in page
    assert [r for r in _attrs(page) if not r.startswith("data:image/png;base64,")] == []
    assert page.count("<td>HLSS30_2.0</td>") >= summary["scenes"]
    kept = json.loads((out / "summary.json").read_text())["kept"]
    assert page.count('<div class="chip">') == min(kept, 12)
    # 3 dates per chip: the quicklook is the first date's red, green, blue; the Fmask (qa) file is not drawn
    assert page.count("red@t0/green@t0/blue@t0 | labels</div>") == min(kept, 12)


# --------------------------------------------------------------------------------------
# the card on the crop recipe

@pytest.fixture(scope="module")
def crop(stac_api, cdl_raster, tmp_path_factory):
    data = crop_recipe(stac_api, cdl_raster)
    out, _ = build_recipe(tmp_path_factory.mktemp("crop-card"), data)
    return out, data


def test_card_on_crop_recipe(crop):
    from eochips.labels import CDL_13_NAMES

    out, _ = crop
    text = (out / "README.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert text.startswith("# hls-crop-classification\n")
    doc = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert doc == json.loads((out / "plan" / "plan.json").read_text())["recipe"]
    units = {k: int(_num(v)) for k, v in _md_table(text, "Units")}
    assert units == {"planned units": summary["units_total"], "kept": summary["kept"], "failed": summary["failed"],
                     **{f"dropped: {c}": n for c, n in summary["dropped"].items()}}
    assert {k: int(_num(v)) for k, v in _md_table(text, "Split")} == {"train": summary["train"], "validation": summary["validation"]}
    src = _md_table(text, "Sources")
    assert [r[0] for r in src] == list(doc["sources"]) and int(src[0][4]) == summary["scenes"]
    assert src[0][6] == "see the source catalog"  # items of the pgstac API carry no licence (the collection's is not fetched)
    bands = _md_table(text, "Bands")
    assert {r[2] for r in bands} == {"blue", "green", "red", "nir"} and {r[3] for r in bands} == {"int16"}
    cls = _md_table(text, "Classes")
    assert [r[1] for r in cls][:14] == [CDL_13_NAMES[i] for i in range(14)]
    # pixels of class k over the train chips' label files, np.bincount here
    hist = np.zeros(256, np.int64)
    for cid in _ids(out / "train_ids.csv"):
        f = next((out / "chips").glob(f"{cid}*label*.tif"), None) or next((out / "chips").glob(f"{cid}*.mask.tif"))
        with rasterio.open(f) as ds:
            hist += np.bincount(ds.read(1).ravel(), minlength=256)
    assert [int(_num(r[3])) for r in cls] == hist[:len(cls)].tolist()


# --------------------------------------------------------------------------------------
# the report in headless chromium

async def _cdp_render(url: str, png: Path, width: int = 1280, height: int = 2000, timeout: float = 60) -> list[str]:
    """Load ``url`` in headless chromium over the DevTools protocol; write a screenshot of the
    viewport to ``png``; return the page's errors: console errors/asserts, uncaught exceptions
    and log entries of level error (failed loads)."""
    aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (the test extra) drives chromium's DevTools protocol")

    profile = tempfile.mkdtemp(prefix="eochips-chromium-")
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    errors: list[str] = []
    try:
        loop = asyncio.get_running_loop()
        ws_url = None
        while ws_url is None:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stderr.readline), timeout)
            if not line:
                raise RuntimeError("chromium exited before it opened the DevTools port")
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            ws_url = m.group(1).decode() if m else None
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))
            waiting: dict[int, asyncio.Future] = {}
            loaded = asyncio.Event()

            async def reader():
                async for msg in ws:
                    d = json.loads(msg.data)
                    if "id" in d and d["id"] in waiting:
                        waiting.pop(d["id"]).set_result(d)
                        continue
                    method, p = d.get("method"), d.get("params", {})
                    if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                        errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
                    elif method == "Runtime.exceptionThrown":
                        errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}).get("exception", {}).get("description")
                                                                 or p.get("exceptionDetails", {}).get("text")))
                    elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                        errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
                    elif method == "Page.loadEventFired":
                        loaded.set()

            task = asyncio.create_task(reader())

            async def call(method: str, session: str | None = None, **params):
                i = next(ids)
                fut = loop.create_future()
                waiting[i] = fut
                await ws.send_str(json.dumps({"id": i, "method": method, "params": params, **({"sessionId": session} if session else {})}))
                d = await asyncio.wait_for(fut, timeout)
                if "error" in d:
                    raise RuntimeError(f"{method}: {d['error']}")
                return d.get("result", {})

            target = (await call("Target.createTarget", url="about:blank"))["targetId"]
            sid = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
            for m in ("Runtime.enable", "Log.enable", "Page.enable"):
                await call(m, sid)
            await call("Emulation.setDeviceMetricsOverride", sid, width=width, height=height, deviceScaleFactor=1, mobile=False)
            await call("Page.navigate", sid, url=url)
            await asyncio.wait_for(loaded.wait(), timeout)
            # a round trip through the page after the load event: every event it raised has arrived
            await call("Runtime.evaluate", sid, expression="document.readyState", returnByValue=True)
            shot = await call("Page.captureScreenshot", sid, format="png")
            png.write_bytes(base64.b64decode(shot["data"]))
            task.cancel()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
    return errors


def render(path: Path, png: Path) -> list[str]:
    return asyncio.run(_cdp_render(path.resolve().as_uri(), png))


@needs_chromium
def test_error_capture_control(tmp_path):
    """The capture works: a page with a console.error, an uncaught exception and a missing image
    reports all three."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="missing.png">'
                   '<script>console.error("boom-error"); console.log("harmless-log"); undefinedFn();</script></body></html>')
    errors = render(bad, tmp_path / "bad.png")
    assert any("boom-error" in e for e in errors) and any("undefinedFn" in e for e in errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors
    assert not any("harmless-log" in e for e in errors)


@needs_chromium
def test_report_renders_in_chromium(demo, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    errors = render(demo / "report.html", png)
    assert errors == []
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (2000, 1280, 3)
    assert img.std() > 20  # not blank
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, tables, the map's split colours, plots, quicklooks
    # the map's train and validation fills are on the page (matplotlib's tab10 blue and orange)
    flat = img.reshape(-1, 3)
    for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert (np.abs(flat.astype(int) - rgb).max(1) <= 2).sum() > 500, rgb
    if SCREENSHOT_NOTE.parent.is_dir():
        shutil.copy(png, SCREENSHOT_NOTE)


def test_band_table_reads_stats_v2(demo):
    """The card reads the stats.json version-2 layout (per-channel lists in chip order) as well
    as the earlier per-band one; here a version-2 document of two steps of one band."""
    from eochips.dataset.card import band_table
    from eochips.plan import load_plan
    from eochips.writers import OutputStore

    plan = load_plan(OutputStore(demo))
    v2 = {"version": 2, "computed_on": "train", "chips": 3,
          "channels": [{"index": 0, "name": "red@t0", "band": "red", "step": 0, "dtype": "uint16", "nodata": 0,
                        "scale": 0.0001, "offset": 0.0, "units": "DN"},
                       {"index": 1, "name": "red@t1", "band": "red", "step": 1, "dtype": "uint16", "nodata": "nan",
                        "scale": 0.0001, "offset": -0.1, "units": "DN"}],
          "mean": [10.5, 20.25], "std": [1.0, 2.0], "minimum": [1, 2], "maximum": [30, 40], "count": [100, 90],
          "percentiles": {"1.5": [2.0, 3.0], "98.5": [29.0, 39.0]}}
    rows = band_table(v2, plan)
    assert [(r["index"], r["name"], r["band"], r["nodata"], r["offset"]) for r in rows] == [
        (0, "red@t0", "red", 0, 0.0), (1, "red@t1", "red", "nan", -0.1)]
    assert [r["mean"] for r in rows] == [10.5, 20.25] and [r["percentiles"]["98.5"] for r in rows] == [29.0, 39.0]
    old = json.loads((demo / "stats.json").read_text())
    if "bands" in old and "channels" not in old:
        rows = band_table(old, plan)
        assert [r["name"] for r in rows] == ["blue", "green", "red"] and rows[0]["mean"] == old["bands"]["blue"]["mean"]
