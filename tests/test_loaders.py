"""Loaders (issue 14 item 6): ``eochips.open_dataset`` and the PyTorch ``Dataset`` of
``eochips.torch`` on real datasets built by the real CLI (the demo on the embedded Landsat sample;
the crop recipe on real HLS scenes over Exeter served by pgstac), and TorchGeo on the same folder.

Every expected value is computed here independently: ids from the split CSVs (csv module), pixels
read with rasterio, means / stds with numpy over the train chips' valid pixels, TorchGeo's
windows read again with rasterio ``from_bounds``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import FMASK_RULE, REPO, crop_recipe, run_cli, write_recipe

SAMPLE = Path(os.environ.get("EOCHIPS_SAMPLE_DIR", REPO / "sample-data"))
NO_TORCH = "PyTorch is not installed (extra eochips[torch]: pip install torch==2.13.0+cpu, ~190 MB wheel, ~25 s)"


def _torchgeo_or_skip() -> None:
    """Skip unless TorchGeo imports. PyPI's torchvision wheels are CUDA builds: next to the CPU-only
    torch their compiled ops fail to load (``operator torchvision::nms does not exist``), so TorchGeo
    needs the CUDA torch and its nvidia-* wheels (see the loaders report for the cost)."""
    try:
        import torchgeo.datasets  # noqa: F401
        import torchgeo.samplers  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision's RuntimeError against a CPU-only torch
        pytest.skip(f"TorchGeo does not import here ({type(exc).__name__}: {str(exc)[:120]}); it needs torch, "
                    "torchvision and torchgeo>=0.8 of one build (PyPI's torchvision wheels need the CUDA torch)")


def _csv_ids(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [row["ids"] for row in csv.DictReader(f)]


def _read(path: Path | str) -> tuple[np.ndarray, tuple]:
    with rasterio.open(path) as src:
        return src.read(), src.nodatavals


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    if not (SAMPLE / "catalog.json").is_file():
        pytest.skip(f"no sample at {SAMPLE}; run `make demo` (needs the package index)")
    out = tmp_path_factory.mktemp("loaders") / "demo"
    proc = run_cli("run", "demo", "-o", str(out), "--no-progress", "--workers", "1",
                   env={"EOCHIPS_SAMPLE_DIR": str(SAMPLE)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _reference_norm(out: Path, ids: list[str], image: str, per_channel: bool, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy mean / population std of the chips' valid pixels (not nodata), per channel; or per
    band pooled over the steps (channel i is band i % bands), each channel taking its band's."""
    vals: dict[int, list[np.ndarray]] = {}
    for cid in ids:
        arr, nodata = _read(out / "chips" / image.format(cid))
        for i in range(arr.shape[0]):
            v = arr[i].ravel().astype(np.float64)
            vals.setdefault(i if per_channel else i % bands, []).append(v if nodata[i] is None else v[v != nodata[i]])
    keys = [i if per_channel else i % bands for i in range(arr.shape[0])]
    pooled = {k: np.concatenate(v) for k, v in vals.items()}
    return np.array([pooled[k].mean() for k in keys]), np.array([pooled[k].std() for k in keys])


# -- open_dataset ----------------------------------------------------------------------------

def test_open_dataset_demo(demo):
    import eochips

    ds = eochips.open_dataset(demo)
    assert isinstance(ds, eochips.ChipDataset) and ds.location == str(demo)
    kept = ds.kept_ids()
    assert len(kept) == 108 and len(ds.index) == 108 and ds.index.crs.to_epsg() == 4326
    train, val = _csv_ids(demo / "train_ids.csv"), _csv_ids(demo / "val_ids.csv")
    assert ds.ids("train") == train and len(train) == 86
    assert ds.ids("validation") == val == ds.ids("val") and len(val) == 22
    assert sorted(train + val) == sorted(kept) == ds.ids("all") == ds.ids()
    assert ds.splits() == ["train", "validation"]
    with pytest.raises(eochips.EochipsError, match=r"split 'test'.*'train', 'validation'"):
        ds.ids("test")
    with pytest.raises(eochips.EochipsError, match=r"split 'holdout': unknown split"):
        ds.ids("holdout")

    paths = ds.paths("train")
    assert [p.unit_id for p in paths] == train
    for p in paths:
        assert p.images == (str(demo / "chips" / f"{p.unit_id}_merged.tif"),) and Path(p.images[0]).is_file()
        assert p.labels == str(demo / "chips" / f"{p.unit_id}.mask.tif") and Path(p.labels).is_file()
    files = ds.files("chip_000_000")  # in file order (image first), with the index's sha256
    main = [(f["path"], f["role"]) for f in files if f["role"] in ("image", "labels")]
    assert main == [("chips/chip_000_000_merged.tif", "image"), ("chips/chip_000_000.mask.tif", "labels")]
    assert {f["path"] for f in files} == {p.relative_to(demo).as_posix() for p in (demo / "chips").glob("chip_000_000[._]*")}
    for f in files:
        assert f["sha256"] == hashlib.sha256((demo / f["path"]).read_bytes()).hexdigest()

    chans = ds.channels()
    assert [c["name"] for c in chans] == ["blue", "green", "red"] and [c["index"] for c in chans] == [0, 1, 2]
    mean, std = ds.normalization()
    assert mean.shape == std.shape == (3,) and mean.dtype == std.dtype == np.float64
    want_mean, want_std = _reference_norm(demo, train, "{}_merged.tif", per_channel=True, bands=3)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9)
    np.testing.assert_allclose(std, want_std, rtol=1e-9)

    classes = ds.classes
    assert [(c["id"], c["name"]) for c in classes] == [(0, "unlabelled"), (1, "water"), (2, "crop"), (3, "tree"), (4, "developed")]
    with rasterio.open(paths[0].labels) as src:
        cmap = src.colormap(1)
    assert [c["colour"] for c in classes] == ["#{:02x}{:02x}{:02x}".format(*cmap[i][:3]) for i in range(5)]
    assert ds.stats == json.loads((demo / "stats.json").read_text())


def test_refuses_a_folder_that_is_not_a_finalised_dataset(demo, tmp_path):
    from eochips import EochipsError, open_dataset

    with pytest.raises(EochipsError, match=r"no dataset at .*nothere.*no such folder.*eochips run RECIPE -o"):
        open_dataset(tmp_path / "nothere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EochipsError, match=r"'.*empty' is not a finalised eochips dataset: it has no index.parquet and no stats.json"):
        open_dataset(tmp_path / "empty")
    built = tmp_path / "built"  # built but not finalised: the plan and the chips, no index / stats
    shutil.copytree(demo / "plan", built / "plan")
    shutil.copytree(demo / "chips", built / "chips")
    with pytest.raises(EochipsError) as exc:
        open_dataset(built)
    assert str(exc.value) == (f"{str(built)!r} is not a finalised eochips dataset: it has no index.parquet and no "
                              f"stats.json; run 'eochips finalize {built}'")
    assert isinstance(exc.value, OSError)
    # the CLI does not know this verb, so check the one-line contract through the library's error type
    assert "\n" not in str(exc.value)


def test_both_index_forms_of_the_files(demo, tmp_path):
    """The index's ``files`` as a list of ``{path, role, sha256}`` structs in file order (issue 14's
    index) is read as given, without the markers; the plain ``files`` / ``roles`` / ``sha256`` lists
    (sorted names, before it) follow the completion marker's ``file_order``, else stay sorted.
    Both forms are written here from the built index, whichever it is."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eochips import open_dataset

    t = pq.read_table(demo / "index.parquet")
    if "roles" in t.schema.names:  # plain lists: the struct form, image files first
        entries = [[{"path": f, "role": r, "sha256": h} for f, r, h in sorted(zip(fs, rs, hs), key=lambda e: e[1] != "image")]
                   for fs, rs, hs in zip(t["files"].to_pylist(), t["roles"].to_pylist(), t["sha256"].to_pylist())]
    else:
        entries = t["files"].to_pylist()
    base = t.drop_columns([c for c in ("files", "roles", "sha256") if c in t.schema.names])
    typ = pa.list_(pa.struct([("path", pa.string()), ("role", pa.string()), ("sha256", pa.string())]))
    sorted_entries = [sorted(es, key=lambda e: e["path"]) for es in entries]
    forms = {
        "structs": base.append_column("files", pa.array(entries, type=typ)),
        "lists": base.append_column("files", pa.array([[e["path"] for e in es] for es in sorted_entries]))
                     .append_column("roles", pa.array([[e["role"] for e in es] for es in sorted_entries]))
                     .append_column("sha256", pa.array([[e["sha256"] for e in es] for es in sorted_entries])),
    }
    ids = t["unit_id"].to_pylist()
    u = ids.index("chip_002_003")
    for name, table in forms.items():
        for markers in (True, False):
            copy = tmp_path / f"{name}-{markers}"
            shutil.copytree(demo, copy, ignore=None if markers else shutil.ignore_patterns("state", "state.sqlite"))
            pq.write_table(table, copy / "index.parquet")
            ds = open_dataset(copy)
            got = ds.files("chip_002_003")
            if name == "structs":
                assert got == entries[u]
            elif markers:  # the marker's order: the layout wrote the image first
                order = json.loads((demo / "state" / "units" / "chip_002_003.json").read_text())["metrics"]["file_order"]
                assert [f["path"] for f in got][:len(order)] == [p for p in order if p in {e["path"] for e in entries[u]}]
                assert got[0]["path"] == "chips/chip_002_003_merged.tif"
            else:
                assert got == sorted_entries[u]
            assert sorted(got, key=lambda e: e["path"]) == sorted_entries[u]
            assert ds.unit_paths("chip_002_003").images == (str(copy / "chips" / "chip_002_003_merged.tif"),)
            assert ds.unit_paths("chip_002_003").labels == str(copy / "chips" / "chip_002_003.mask.tif")
            assert [p.unit_id for p in ds.paths("validation")] == _csv_ids(demo / "val_ids.csv")


# -- the PyTorch Dataset ---------------------------------------------------------------------

def test_import_without_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` then raises ImportError, as without torch
            "try:\n    import eochips.torch\nexcept ImportError as e:\n    print(type(e).__name__, '|', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MissingExtraError | eochips.torch needs PyTorch")
    assert 'pip install "eochips[torch]"' in proc.stdout


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_over_the_demo(demo, workers):
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    from torch.utils.data import DataLoader

    from eochips.torch import ChipTorchDataset

    train = _csv_ids(demo / "train_ids.csv")
    mean, std = _reference_norm(demo, train, "{}_merged.tif", per_channel=True, bands=3)
    ds = ChipTorchDataset(demo, "train")
    assert len(ds) == 86 and ds.channel_names == ["blue", "green", "red"]
    seen = []
    for k, (image, mask) in enumerate(DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)):
        n = min(4, 86 - 4 * k)
        assert image.shape == (n, 3, 32, 32) and image.dtype == torch.float32
        assert mask.shape == (n, 32, 32) and mask.dtype == torch.int64
        for j in range(n):
            cid = train[4 * k + j]
            arr, _ = _read(demo / "chips" / f"{cid}_merged.tif")
            want = (arr.astype(np.float64) - mean[:, None, None]) / std[:, None, None]
            np.testing.assert_allclose(image[j].numpy(), want, rtol=1e-5, atol=1e-5)
            lab, _ = _read(demo / "chips" / f"{cid}.mask.tif")
            np.testing.assert_array_equal(mask[j].numpy(), lab[0].astype(np.int64))
            seen.append(cid)
    assert seen == train and k == 21  # 21 full batches of 4, then 2


def test_nodata_fill_valid_mask_and_transforms(demo, tmp_path):
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    from eochips.torch import ChipTorchDataset

    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    cid = _csv_ids(demo / "val_ids.csv")[0]
    path = copy / "chips" / f"{cid}_merged.tif"
    with rasterio.open(path) as src:
        arr, profile = src.read(), src.profile
        desc = src.descriptions
    arr[1, 3:9, 5:20] = 0  # the file's nodata (0) in the green band
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        dst.descriptions = desc
    flip = lambda image, mask: (torch.flip(image, dims=[-1]), torch.flip(mask, dims=[-1]))  # noqa: E731
    ds = ChipTorchDataset(copy, "validation", fill=-7.0, return_valid=True)
    image, mask, valid = ds[0]
    mean, std = ds.mean, ds.std
    want = (arr.astype(np.float64) - mean[:, None, None]) / std[:, None, None]
    want[1, 3:9, 5:20] = -7.0
    np.testing.assert_allclose(image.numpy(), want, rtol=1e-5, atol=1e-5)
    want_valid = np.ones(arr.shape, bool)
    want_valid[1, 3:9, 5:20] = False
    np.testing.assert_array_equal(valid.numpy(), want_valid)
    raw = ChipTorchDataset(copy, "validation", normalize=False, transforms=flip)
    image2, mask2 = raw[0]
    np.testing.assert_array_equal(image2.numpy(), np.where(want_valid, arr, 0).astype(np.float32)[..., ::-1])
    np.testing.assert_array_equal(mask2.numpy(), mask.numpy()[..., ::-1])


# -- the crop recipe: 3 dates x 4 bands ------------------------------------------------------

@pytest.fixture(scope="module")
def crop(stac_api, cdl_raster, tmp_path_factory) -> Path:
    """The crop recipe with the Fmask rule relaxed (most chips kept), on the pgstac API."""
    tmp = tmp_path_factory.mktemp("loaders-crop")
    out = tmp / "out"
    recipe = write_recipe(tmp / "crop.yaml", crop_recipe(stac_api, cdl_raster, **{FMASK_RULE: 100}))
    proc = run_cli("run", str(recipe), "-o", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_crop_recipe_channels_and_loader(crop):
    from eochips import open_dataset

    ds = open_dataset(crop)
    names = ["blue", "green", "red", "nir"]  # the 4 real bands of the Exeter sample (the recipe's 6 minus the SWIRs)
    assert [c["name"] for c in ds.channels()] == [f"{b}@t{k}" for k in range(3) for b in names]
    assert [p.unit_id for p in ds.paths("train")] == _csv_ids(crop / "train_ids.csv")
    train = ds.ids("train")
    assert len(train) >= 20
    v2 = "mean" in ds.stats  # stats.json version 2: per channel; before it: per band, pooled over the dates
    want_mean, want_std = _reference_norm(crop, train, "{}_merged.tif", per_channel=v2, bands=4)
    mean, std = ds.normalization()
    assert mean.shape == std.shape == (12,)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9)
    np.testing.assert_allclose(std, want_std, rtol=1e-9)

    torch = pytest.importorskip("torch", reason=NO_TORCH)
    from torch.utils.data import DataLoader

    from eochips.torch import ChipTorchDataset

    image, mask = next(iter(DataLoader(ChipTorchDataset(ds, "train"), batch_size=4)))
    assert image.shape == (4, 12, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (4, 32, 32) and mask.dtype == torch.int64
    for j, cid in enumerate(train[:4]):
        arr, nodata = _read(crop / "chips" / f"{cid}_merged.tif")
        assert set(nodata) == {-9999.0}
        want = np.where(arr != -9999, (arr - want_mean[:, None, None]) / want_std[:, None, None], 0.0)
        np.testing.assert_allclose(image[j].numpy(), want, rtol=1e-5, atol=1e-5)
        lab, _ = _read(crop / "chips" / f"{cid}.mask.tif")
        np.testing.assert_array_equal(mask[j].numpy(), lab[0])
    assert int(mask.max()) <= 13


# -- TorchGeo on the same folder -------------------------------------------------------------

def test_torchgeo_reads_the_demo_folder(demo):
    pytest.importorskip("torch", reason=NO_TORCH)
    _torchgeo_or_skip()
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

    class Chips(RasterDataset):
        filename_glob = "*_merged.tif"
        is_image = True

    class Masks(RasterDataset):
        filename_glob = "*.mask.tif"
        is_image = False

    images, masks = Chips(paths=str(demo / "chips")), Masks(paths=str(demo / "chips"))
    assert len(images) == 108 and len(masks) == 108
    both = images & masks
    # the reference: every chip and mask read with rasterio and placed by numpy on the demo grid
    # (one CRS, 30 m, chips edge to edge), then cut at each sample's bounds
    chips = sorted((demo / "chips").glob("*_merged.tif"))
    with rasterio.open(chips[0]) as src:
        res = src.res[0]
    tops, lefts = [], []
    for f in chips:
        with rasterio.open(f) as src:
            tops.append(src.bounds.top)
            lefts.append(src.bounds.left)
    top, left = max(tops), min(lefts)
    rows, cols = round((top - min(tops)) / res) + 32, round((max(lefts) - left) / res) + 32
    mosaic, labels = np.zeros((3, rows, cols), np.float32), np.full((rows, cols), -1, np.int64)
    for f, t, lf in zip(chips, tops, lefts):
        r0, c0 = round((top - t) / res), round((lf - left) / res)
        mosaic[:, r0:r0 + 32, c0:c0 + 32] = _read(f)[0]
        labels[r0:r0 + 32, c0:c0 + 32] = _read(str(f).replace("_merged.tif", ".mask.tif"))[0][0]
    assert (labels >= 0).all()  # the 108 chips tile the grid

    def reference(x: slice, y: slice) -> tuple[np.ndarray, np.ndarray]:
        r0, r1 = round((top - y.stop) / res), round((top - y.start) / res)
        c0, c1 = round((x.start - left) / res), round((x.stop - left) / res)
        return mosaic[:, r0:r1, c0:c1], labels[r0:r1, c0:c1]

    checked = 0
    for sampler, size in ((GridGeoSampler(both, size=32, stride=32), 32), (RandomGeoSampler(both, size=16, length=9), 16)):
        loader = DataLoader(both, sampler=sampler, batch_size=3, collate_fn=stack_samples)
        for b, batch in enumerate(loader):
            n = batch["image"].shape[0]
            assert batch["image"].shape == (n, 3, size, size) and batch["image"].dtype == torch.float32
            assert batch["mask"].shape == (n, size, size) and batch["mask"].dtype == torch.int64
            for j, q in enumerate(batch["bounds"]):
                img, lab = reference(q[0], q[1])
                np.testing.assert_array_equal(batch["image"][j].numpy(), img)
                np.testing.assert_array_equal(batch["mask"][j].numpy(), lab)
                checked += 1
            if b == 2:
                break
    assert checked == 18


# -- a dataset in object storage ---------------------------------------------------------------

def test_open_dataset_from_object_storage(demo):
    """The demo's files put into a moto S3 bucket (127.0.0.1): open_dataset reads its index, splits,
    markers and stats through fsspec and gives the chips' URLs."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from servers import moto_s3

    from eochips import open_dataset

    with moto_s3("eochips-loaders") as (env, client):
        for p in sorted(demo.rglob("*")):
            if p.is_file() and p.name != "state.sqlite":
                client.put_object(Bucket="eochips-loaders", Key=f"demo/{p.relative_to(demo).as_posix()}", Body=p.read_bytes())
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import fsspec

            fsspec.filesystem("s3", skip_instance_cache=True)  # a fresh instance for this endpoint
            ds = open_dataset("s3://eochips-loaders/demo")
            val = ds.ids("validation")
            paths = ds.paths("validation")
            files = ds.files(val[0])
            mean, std = ds.normalization()
            channels = ds.channels()  # from the first kept unit's image file, read through fsspec
            classes = ds.classes  # colours from a labels file's colour map, through fsspec
            item = None
            try:
                from eochips.torch import ChipTorchDataset

                item = ChipTorchDataset(ds, "validation")[0]
            except ImportError:
                pass
            with pytest.raises(Exception, match=r"'s3://eochips-loaders/nothing' is not a finalised eochips dataset"):
                open_dataset("s3://eochips-loaders/nothing")
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert len(ds.kept_ids()) == 108 and val == _csv_ids(demo / "val_ids.csv")
    assert [p.images for p in paths] == [(f"s3://eochips-loaders/demo/chips/{u}_merged.tif",) for u in val]
    assert [p.labels for p in paths] == [f"s3://eochips-loaders/demo/chips/{u}.mask.tif" for u in val]
    assert [f["path"] for f in files if f["role"] in ("image", "labels")] == [f"chips/{val[0]}_merged.tif", f"chips/{val[0]}.mask.tif"]
    want_mean, want_std = _reference_norm(demo, _csv_ids(demo / "train_ids.csv"), "{}_merged.tif", per_channel=True, bands=3)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9)
    np.testing.assert_allclose(std, want_std, rtol=1e-9)
    assert [c["name"] for c in channels] == ["blue", "green", "red"]
    assert [c["name"] for c in classes] == ["unlabelled", "water", "crop", "tree", "developed"] and classes[0]["colour"]
    if item is not None:  # torch installed: one item read from the bucket equals the local file's
        arr, _ = _read(demo / "chips" / f"{val[0]}_merged.tif")
        want = (arr - want_mean[:, None, None]) / want_std[:, None, None]
        np.testing.assert_allclose(item[0].numpy(), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(item[1].numpy(), _read(demo / "chips" / f"{val[0]}.mask.tif")[0][0])
