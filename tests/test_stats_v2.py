"""stats.json version 2 and the class map's category names (issue 14, item 1).

On two real datasets -- the demo (Landsat 8, one date x 3 bands, land-cover polygons) and the
crop recipe (real HLS S30 over Exeter from a pgstac API, 3 dates x 4 bands, CDL-13 labels) --
every array of stats.json is compared with numpy over the train chips' files stacked in their
own band order (read back with rasterio), the class table with numpy counts over the masks and
names typed out from the recipe / specs/recipes.md, and the masks' category names and colours
with ``gdalinfo -json`` (Debian's GDAL, a separate process). Sentinel-2 baseline 04.00 offsets
are crafted files (the real S2 scenes here are of one baseline).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from conftest import FMASK_RULE, REPO, build_recipe, crop_recipe, run_cli

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
QS = (1.5, 98.5)
CROP_BANDS = ["blue", "green", "red", "nir"]
# specs/recipes.md, "CDL -> 13 classes", typed out again (0 = No Data)
CDL13_NAMES = ["No Data", "Natural Vegetation", "Forest", "Corn", "Soybeans", "Wetlands", "Developed/Barren", "Open Water",
               "Winter Wheat", "Alfalfa", "Fallow/Idle Cropland", "Cotton", "Sorghum", "Other"]


# -- references (numpy and rasterio only) ------------------------------------------------------

def _train(out: Path) -> list[str]:
    return [r["ids"] for r in csv.DictReader(open(out / "train_ids.csv"))]


def _stack(out: Path, ids: list[str]) -> tuple[np.ndarray, float, list[float], list[float]]:
    """``(chip, channel, y, x)`` of the chips' merged files, and their nodata, scales, offsets."""
    arrs = []
    for cid in ids:
        with rasterio.open(out / "chips" / f"{cid}_merged.tif") as ds:
            arrs.append(ds.read())
            nodata, scales, offsets = ds.nodata, list(ds.scales), list(ds.offsets)
    return np.stack(arrs), nodata, scales, offsets


def _valid(v: np.ndarray, nodata: float) -> np.ndarray:
    v = v.ravel()
    return v[v != nodata].astype(np.float64)


def _check_values(got: dict, i: int, v: np.ndarray) -> None:
    """Entry ``i`` of a stats.json array group equals numpy over the float64 values ``v``."""
    assert got["count"][i] == v.size
    assert got["mean"][i] == pytest.approx(v.mean(), rel=1e-12)
    assert got["std"][i] == pytest.approx(v.std(), rel=1e-9)
    assert got["minimum"][i] == v.min() and got["maximum"][i] == v.max()
    for q in QS:  # exact path: bit for bit numpy's linear percentile
        assert got["percentiles"][str(q)][i] == np.percentile(v, q, method="linear")


def _balanced(counts: np.ndarray) -> np.ndarray:
    present = [c for c in range(1, counts.size) if counts[c] > 0]
    w = np.zeros(counts.size)
    for c in present:
        w[c] = counts[present].sum() / (len(present) * counts[c])
    return w / w.sum()


def _mask_counts(out: Path, ids: list[str], n: int) -> np.ndarray:
    counts = np.zeros(n, dtype=np.int64)
    for cid in ids:
        with rasterio.open(out / "chips" / f"{cid}.mask.tif") as ds:
            counts += np.bincount(ds.read(1).ravel(), minlength=n)[:n]
    return counts


def _gdalinfo(path: Path) -> dict:
    proc = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _check_classes(out: Path, stats: dict, names: list[str]) -> None:
    """The class table against numpy counts over the train masks, the recipe's names and the
    masks' colour table (rasterio), and gdalinfo's view of one mask."""
    train = _train(out)
    counts = _mask_counts(out, train, len(names))
    classes = stats["classes"]
    assert [c["id"] for c in classes] == list(range(len(names)))
    assert [c["name"] for c in classes] == names
    assert [c["pixels"] for c in classes] == counts.tolist()
    np.testing.assert_allclose([c["weight"] for c in classes], _balanced(counts), rtol=1e-12)
    assert [c["background"] for c in classes] == [True] + [False] * (len(names) - 1) and classes[0]["weight"] == 0
    mask = out / "chips" / f"{train[0]}.mask.tif"
    with rasterio.open(mask) as ds:
        cmap = ds.colormap(1)
        tags = ds.tags()
    assert [c["colour"] for c in classes] == ["#{:02x}{:02x}{:02x}".format(*cmap[i][:3]) for i in range(len(names))]
    assert json.loads(tags["class_names"]) == {str(i): n for i, n in enumerate(names)}  # rasterio sees the names as tags
    assert tags["background_class"] == "0" and "nodata/background" in tags["background"]

    info = _gdalinfo(mask)
    band = info["bands"][0]
    assert band["categories"] == names
    entries = band["colorTable"]["entries"]
    assert all(e[3] == 255 for e in entries)  # no alpha: class 0 is background by its documentation, not transparency
    assert ["#{:02x}{:02x}{:02x}".format(*entries[i][:3]) for i in range(len(names))] == [c["colour"] for c in classes]
    rows = info["rat"]["row"]
    assert [r["f"][:2] for r in rows] == [[i, n] for i, n in enumerate(names)]
    assert str(mask) + ".aux.xml" in info["files"]
    # the sidecar is one of the dataset's files: in the manifest with its sha256
    aux = f"chips/{train[0]}.mask.tif.aux.xml"
    manifest = dict(reversed(ln.split("  ", 1)) for ln in (out / "checksums.sha256").read_text().splitlines())
    assert manifest[aux] == hashlib.sha256((out / aux).read_bytes()).hexdigest()


# -- the demo -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}; run `make demo`")
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_cli("run", "demo", "--output", str(out), "--no-progress", "--workers", "1", "--set", "engine.processes=false",
                   env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "stats.json").read_text())


def test_demo_channels_and_arrays(demo):
    out, stats = demo
    train = _train(out)
    arr, nodata, scales, offsets = _stack(out, train)
    assert stats["version"] == 2 and stats["computed_on"] == "train" and stats["chips"] == len(train) == 86
    assert stats["values"] == "stored" and "DN" in stats["note"] and "harmonised" in stats["note"]
    assert [c["name"] for c in stats["channels"]] == ["blue", "green", "red"]  # the merged file's band order
    for i, c in enumerate(stats["channels"]):
        assert c == {"index": i, "name": c["band"], "band": c["band"], "step": 0, "dtype": "uint16", "nodata": 0,
                     "scale": scales[i], "offset": offsets[i], "units": "DN", "exact": True}
        _check_values(stats, i, _valid(arr[:, i], nodata))
    assert stats["band_order"] == ["blue", "green", "red"] and list(stats["bands"]) == ["blue", "green", "red"]
    for i, b in enumerate(stats["band_order"]):  # one step: pooled = per channel
        _check_values(stats["band_stats"], i, _valid(arr[:, i], nodata))
        assert "min" not in stats["bands"][b] and stats["bands"][b]["percentiles"]["98.5"] == stats["percentiles"]["98.5"][i]


def test_demo_classes_and_mask_categories(demo):
    out, stats = demo
    recipe = yaml.safe_load((REPO / "src" / "eochips" / "recipes" / "demo.yaml").read_text())
    names = [recipe["labels"]["class_names"][i] for i in range(5)]
    _check_classes(out, stats, names)
    assert stats["class_pixels"] == {str(c["id"]): c["pixels"] for c in stats["classes"] if c["pixels"]}


def test_demo_finalize_twice_same_bytes(demo):
    out, _ = demo
    before = {p: (out / p).read_bytes() for p in ("stats.json", "checksums.sha256", "chips/chip_000_000.mask.tif.aux.xml")}
    proc = run_cli("finalize", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: (out / p).read_bytes() for p in before} == before


# -- the crop recipe (3 dates x 4 bands) ------------------------------------------------------------

@pytest.fixture(scope="module")
def crop(stac_api, cdl_raster, tmp_path_factory):
    out, _ = build_recipe(tmp_path_factory.mktemp("crop-stats"), crop_recipe(stac_api, cdl_raster, **{FMASK_RULE: 100, "engine.processes": False}))
    return out, json.loads((out / "stats.json").read_text())


def test_crop_channels_per_date_and_pooled(crop):
    out, stats = crop
    train = _train(out)
    arr, nodata, scales, offsets = _stack(out, train)
    assert arr.shape[1] == 12 and stats["chips"] == len(train) > 10
    names = [f"{b}@t{t}" for t in range(3) for b in CROP_BANDS]  # seed 001's time-major order
    assert [c["name"] for c in stats["channels"]] == names
    for i, c in enumerate(stats["channels"]):
        assert (c["band"], c["step"], c["dtype"], c["nodata"], c["units"]) == (CROP_BANDS[i % 4], i // 4, "int16", -9999, "DN")
        assert c["scale"] == scales[i] == 0.0001 and c["offset"] == offsets[i] == 0
        _check_values(stats, i, _valid(arr[:, i], nodata))
    assert stats["band_order"] == CROP_BANDS and list(stats["bands"]) == CROP_BANDS
    for k, b in enumerate(CROP_BANDS):  # pooled over the 3 dates
        v = np.concatenate([_valid(arr[:, t * 4 + k], nodata) for t in range(3)])
        _check_values(stats["band_stats"], k, v)
        assert stats["bands"][b]["count"] == v.size and stats["bands"][b]["mean"] == stats["band_stats"]["mean"][k]


def test_crop_classes_and_mask_categories(crop):
    out, stats = crop
    _check_classes(out, stats, CDL13_NAMES)
    np.testing.assert_allclose(stats["class_weights"], [c["weight"] for c in stats["classes"]], rtol=0)


# -- harmonised DN offsets (crafted files: two Sentinel-2 baselines) --------------------------------

def _write(path: Path, arr: np.ndarray, desc: str, scale: float, offset: float, nodata: float) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[-1], height=arr.shape[-2], count=1, dtype=arr.dtype.name,
                       crs="EPSG:32630", transform=Affine(10, 0, 0, 0, -10, 0), nodata=nodata) as ds:
        ds.write(arr[None])
        ds.set_band_description(1, desc)
        ds.scales, ds.offsets = (scale,), (offset,)


def _ctx(tmp_path: Path, units: dict[str, list[str]]):
    """A finaliser Context over crafted image files (the real store; the plan reduced to what the
    stats read: one source whose band ``red`` has the profile offset 0)."""
    from eochips.writers import OutputStore

    recipe = SimpleNamespace(dataset=SimpleNamespace(stats_on="train", percentiles=list(QS)), labels=None)
    plan = SimpleNamespace(recipe=recipe, sources={"s2": SimpleNamespace(bands=[SimpleNamespace(name="red", offset=0.0)])})
    records = {u: {"files": dict.fromkeys(fs, ""), "metrics": {"file_roles": dict.fromkeys(fs, "image"), "file_order": fs}}
               for u, fs in units.items()}
    return SimpleNamespace(plan=plan, store=OutputStore(tmp_path), records=records, train=sorted(units), kept=sorted(units),
                           stats=None)


def test_baseline_offsets_pool_on_one_dn_scale(tmp_path):
    """Baseline 03.xx: reflectance = DN / 1e4; 04.00: (DN - 1000) / 1e4, declared as offset -0.1.
    The stats pool DN on the profile's scale (offset 0): the 04.00 file's DN minus 1000."""
    from eochips.dataset import FINALIZERS

    rng = np.random.default_rng(7)
    old = rng.integers(1, 4000, (20, 20)).astype(np.uint16)
    new = rng.integers(300, 5000, (20, 20)).astype(np.uint16)  # below 1000: negative on the harmonised scale
    old[0, :5] = 0
    new[1, :7] = 0  # nodata 0 is tested on the stored value, before the shift
    (tmp_path / "chips").mkdir()
    _write(tmp_path / "chips" / "a.tif", old, "red@2021-06-01", 1e-4, 0.0, 0)
    _write(tmp_path / "chips" / "b.tif", new, "red@2022-06-01", 1e-4, -0.1, 0)
    ctx = _ctx(tmp_path, {"a": ["chips/a.tif"], "b": ["chips/b.tif"]})
    FINALIZERS["stats"](ctx)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert ctx.stats == stats
    v = np.concatenate([old[old != 0].astype(np.int64), new[new != 0].astype(np.int64) - 1000]).astype(np.float64)
    assert v.min() < 0
    assert stats["channels"][0]["offset"] == 0.0 and stats["channels"][0]["scale"] == 1e-4
    _check_values(stats, 0, v)
    _check_values(stats["band_stats"], 0, v)
    raw = np.concatenate([old[old != 0], new[new != 0]]).astype(np.float64)
    assert stats["mean"][0] != pytest.approx(raw.mean(), rel=1e-3)  # pooling raw would be off by ~500 DN
    # physical values agree whichever baseline a pixel came from
    assert stats["mean"][0] * 1e-4 == pytest.approx(np.concatenate([old[old != 0] * 1e-4, new[new != 0] * 1e-4 - 0.1]).mean(), rel=1e-12)


def test_shifted_accumulators_merge_and_float_path():
    from eochips.dataset.stats import RunningStats

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 3000, 500).astype(np.uint16), rng.integers(0, 3000, 700).astype(np.uint16)
    x, y = RunningStats("uint16"), RunningStats("uint16")
    x.add(a, 0)
    y.add(b, 0, shift=-1000)
    x.merge(y)
    v = np.concatenate([a[a != 0].astype(np.int64), b[b != 0].astype(np.int64) - 1000]).astype(np.float64)
    res = x.result(QS)
    assert res["count"] == v.size and res["minimum"] == v.min() and res["maximum"] == v.max()
    assert res["mean"] == pytest.approx(v.mean(), rel=1e-12) and res["std"] == pytest.approx(v.std(), rel=1e-12)
    assert [res["percentiles"][str(q)] for q in QS] == [np.percentile(v, q) for q in QS]
    f = rng.normal(0.2, 0.05, 1000).astype(np.float32)
    acc = RunningStats("float32")
    acc.add(f, float("nan"), shift=-1000.0)
    ref = f.astype(np.float64) - 1000.0
    res = acc.result(QS)
    assert res["mean"] == pytest.approx(ref.mean(), rel=1e-12) and res["minimum"] == ref.min()
    for q in QS:
        assert res["percentiles"][str(q)] == pytest.approx(np.percentile(ref, q), rel=2 ** -9 + 2 ** -23)


def test_bad_shifts_and_mismatched_chips_refused(tmp_path):
    from eochips.dataset.channels import channel_names, dn_shift
    from eochips.dataset.stats import RunningStats
    from eochips.errors import EochipsError, OutputError, RecipeError

    assert dn_shift(-0.1, 0.0, 1e-4, "uint16", "x") == -1000
    assert channel_names(["red", "nir", "red", "nir", "dem"]) == [("red@t0", 0), ("nir@t0", 0), ("red@t1", 1), ("nir@t1", 1), ("dem@t0", 0)]
    with pytest.raises(OutputError, match=r"offset -0\.10005 is -1000\.5 DN"):
        dn_shift(-0.10005, 0.0, 1e-4, "uint16", "file f band 1 (red)")
    with pytest.raises(RecipeError, match="whole DN"):
        RunningStats("uint16").add(np.ones(3, np.uint16), 0, shift=0.5)
    (tmp_path / "chips").mkdir()
    _write(tmp_path / "chips" / "a.tif", np.ones((4, 4), np.uint16), "red@2021-06-01", 1e-4, 0.0, 0)
    _write(tmp_path / "chips" / "b.tif", np.ones((4, 4), np.uint16), "nir@2021-06-01", 1e-4, 0.0, 0)
    ctx = _ctx(tmp_path, {"a": ["chips/a.tif"], "b": ["chips/b.tif"]})
    from eochips.dataset import FINALIZERS

    with pytest.raises(EochipsError, match=r"unit b's image files hold channels \[nir uint16.*unit a's hold \[red uint16"):
        FINALIZERS["stats"](ctx)
    ctx = _ctx(tmp_path, {"a": ["chips/a.tif"], "c": ["chips/a.tif", "chips/a.tif"]})  # one channel more
    with pytest.raises(EochipsError, match=r"unit c's image files hold channels \[red@t0 uint16 x0.0001\+0, red@t1"):
        FINALIZERS["stats"](ctx)
    assert not (tmp_path / "stats.json").exists()
