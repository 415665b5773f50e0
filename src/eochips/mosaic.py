"""One tile of a cloud-free mosaic (reference pipeline 3, azavea/cloud-buster @fe6c339).

A mosaic recipe (``output.layout: {kind: mosaic}``, ``units: {kind: tile}``) chooses its scenes
once over the whole AOI (``greedy-coverage``: primary picks, then backstop picks) and builds the
mosaic tile by tile. For one tile, :func:`build_tile` reads the picks that touch it ONE SCENE AT A
TIME, in priority order (primary before backstop, earliest greedy pick first), onto the tile's
grid (the source's resampling; nearest in the recipe, as the seed's ``gdalwarp``):

- a primary scene is masked: the union of the recipe's mask sources of the mosaic's source
  (cloud, shadow, snow and the masks' own nodata classes, e.g. SCL 0 and 1), then dilated by a
  ``(2 * masks.dilation + 1)`` square (cloud-buster: the union grown by an 11 x 11 kernel,
  ``dilation: 5``); a pixel is valid when it is not masked and no band is fill (cloud-buster:
  ``B01 != 0``; with fill 0 the same on the first band);
- a backstop scene is not masked (it fills holes, as in the seed): valid where no band is fill.

Primary scenes go through the source's compositor (``first-valid``: each pixel from the
earliest valid pick, :class:`~eochips.composite.FirstValid`; ``median``: the median of the valid
observations), backstop scenes through a separate ``first-valid`` compositor (the "cloudy"
mosaic). With ``first-valid``, once every pixel of the tile is valid in a stage the remaining
scenes of that stage are not read (their pixels could not show); with ``clear_count`` or
``median`` every primary scene is read. One scene's arrays are in memory at a time besides the
compositors' (its bands are read in parallel on the reading pool), whatever the number of picks;
a median keeps every valid observation (it needs them all).

The tile's parts (the contract of :class:`~eochips.config.models.MosaicLayout`) are
``tiles/{unit}-cloudless.tif``, ``tiles/{unit}-cloudy.tif`` (``(band, y, x)`` in the bands'
dtype and fill) and ``tiles/{unit}-source.tif`` (uint16 ``cloudless_index``, ``cloudy_index``:
the 1-based pick number of ``sources.csv``, 0 = no valid pick; for a median, ``cloudless_index``
is 65535 where at least one observation is valid, as a median pixel has no single source;
``clear_count`` with ``clear_count: true`` or a median). The unit's metrics hold
``mosaic_pixels``: per mosaic (``cloudless``, ``cloudy``, and ``filled``: the cloudless mosaic
with its holes filled by the cloudy one), the count of the tile's pixels inside the AOI
(pixel-centre rule) by pick number (string keys, ``"0"`` = empty).

Only I/O fails a tile (a :class:`~eochips.errors.ReadError` or
:class:`~eochips.errors.OutputError`); a rerun rebuilds only the tiles without a marker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from .config import CompositeConfig, MasksConfig
from .errors import OutputError, ReadError

if TYPE_CHECKING:
    from .chips import UnitResult

PART_LEVEL = 1
"""DEFLATE/ZSTD level of the tile parts (the assembled mosaics use ``output.level``): parts are
written once per tile and read once per assembly, so the cheapest level pays (about 1/3 of the
write time of level 6, files about 10 % larger)."""

MEDIAN_INDEX = 65535
"""``cloudless_index`` of a median pixel with at least one valid observation (no single source)."""


@dataclass(frozen=True)
class MosaicSpec:
    """What a tile task needs beyond the chip task (picklable).

    Attributes
    ----------
    layout
        The recipe's :class:`~eochips.config.models.MosaicLayout`.
    source
        The mosaic's source name.
    aoi_wkb
        The AOI clipped to the tile, in the tile's CRS (WKB), for the pixel counts.
    """

    layout: Any
    source: str
    aoi_wkb: bytes


@dataclass
class MosaicTile:
    """One built tile of a mosaic, what the ``mosaic`` layout writes.

    Attributes
    ----------
    task
        The tile's :class:`~eochips.chips.UnitTask`.
    images
        ``{"cloudless", "cloudy"}`` -> ``(band, y, x)`` in the bands' dtype (fill where empty).
    cloudless_index, cloudy_index
        ``(y, x)`` uint16 pick numbers (0 = none; :data:`MEDIAN_INDEX` for a median pixel).
    clear_count
        ``(y, x)`` uint16 valid primary observations, or None when not asked for.
    picks
        ``{"cloudless", "cloudy"}`` -> the :class:`~eochips.chips.SceneRead` s of each stage.
    """

    task: Any
    images: dict[str, np.ndarray]
    cloudless_index: np.ndarray
    cloudy_index: np.ndarray
    clear_count: np.ndarray | None
    picks: dict[str, list]


def part_names(unit_id: str) -> dict[str, str]:
    """The relative paths of one tile's parts, by product (``cloudless``, ``cloudy``, ``source``)."""
    return {p: f"tiles/{unit_id}-{p}.tif" for p in ("cloudless", "cloudy", "source")}


def _scene_tasks(task, lay, scene, masked: bool) -> list:
    """One-scene, one-step views of ``task`` (only the mosaic's source): the bands on the tile's
    grid, and for a masked (primary) scene its QA and mask-model bands on the tile's grid grown by
    a halo of ``masks.dilation`` pixels on every side (same pixel edges), so that a cloud just
    outside the tile grows into it exactly as in a whole-scene dilation (:func:`_crop` removes
    the halo). The band pixels are those of a chip on the same grid, whatever the dilation."""
    from .chips import StepRead

    step = (StepRead((scene,)),)
    bands = replace(task, layers=(replace(lay, steps=step, composite=CompositeConfig(), qa=None, mask_reads=()),),
                    masks=MasksConfig())
    if not masked or not (lay.qa is not None or lay.mask_reads):
        return [bands]
    masks = MasksConfig(sources=[m for m in task.masks.sources if (m.source or lay.source) == lay.source])
    d = task.masks.dilation
    a = Affine(*task.transform) * Affine.translation(-d, -d)
    qa = replace(task, layers=(replace(lay, steps=step, composite=CompositeConfig(), bands=()),),
                 masks=masks.model_copy(update={"dilation": 0}), transform=tuple(a)[:6],
                 shape=(task.shape[0] + 2 * d, task.shape[1] + 2 * d))
    return [bands, qa]


def _crop(a: np.ndarray, d: int) -> np.ndarray:
    """``a`` without its ``d`` px halo on the last two axes."""
    return a[..., d:a.shape[-2] - d, d:a.shape[-1] - d] if d else a


def raster_frame(reads) -> np.ndarray:
    """``(y, x)`` bool on the grid of a one-unit read: the pixels inside the scene's raster (the
    extent of the first source window read; the window is the part of the raster the grid
    needs). Outside it the warp's fill is "no raster", not the scene's own no-data class."""
    from rasterio.warp import Resampling, reproject

    task = reads.tasks[0]
    win = next((w for w in reads.sources[0] if w is not None), None)
    out = np.zeros(task.shape, np.uint8)
    if win is not None:
        reproject(np.ones(win.data.shape, np.uint8), out, src_transform=win.transform, src_crs=win.crs, src_nodata=None,
                  dst_transform=Affine(*task.transform), dst_crs=task.crs, dst_nodata=0, resampling=Resampling.nearest)
    return out.astype(bool)


def scene_mask(task, layer, d: int, frame: np.ndarray | None = None) -> np.ndarray:
    """``(y, x)`` bool on ``task``'s grid: the scene's masked pixels (cloud-buster: the union of
    every mask source's cloud, shadow, snow and nodata classes, then dilated by ``d`` pixels as
    a ``(2d + 1)`` square). ``layer`` is the scene's :class:`~eochips.chips.LayerData` with
    ``masks`` filled (one step). Only pixels inside ``frame`` (the scene's raster,
    :func:`raster_frame`) are grown: as in the seed, which masks each scene on its own raster
    before warping it, the raster's edge does not eat into the scene (its own no-data class
    inside the raster, e.g. SCL 0 beyond the swath edge, does)."""
    if not layer.masks:
        return np.zeros(task.shape, bool)
    m = layer.masks[0]
    out = m.cloud | m.shadow | m.snow | m.nodata
    if frame is not None:
        out &= frame
    if d > 0:
        from .qa.masks import grow

        out = grow(out, d)
    return out


def _image(layer) -> np.ndarray:
    """``(band, y, x)`` of a one-step layer, in the bands' common dtype."""
    return np.stack([b[0] for b in layer.bands])


def _aoi_inside(spec: MosaicSpec, task) -> np.ndarray:
    """``(y, x)`` bool: the tile's pixels whose centre is inside the AOI."""
    import shapely
    from rasterio.features import geometry_mask

    geom = shapely.from_wkb(spec.aoi_wkb)
    if geom.is_empty:
        return np.zeros(task.shape, bool)
    return geometry_mask([geom], out_shape=task.shape, transform=Affine(*task.transform), invert=True)


def _counts(index: np.ndarray, inside: np.ndarray) -> dict[str, int]:
    vals, n = np.unique(index[inside], return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, n)}


class _Stage:
    """One compositor and the pick numbers of what was added to it, in add order."""

    def __init__(self, kind: str, shape, dtype, nodata, index: bool):
        from .composite import get_compositor

        self.comp = get_compositor(kind)(shape, dtype, nodata, index=index)
        self.numbers: list[int] = []

    def add(self, image: np.ndarray, masked: np.ndarray | None, number: int) -> None:
        self.comp.add(image, masked, priority=number)
        self.numbers.append(number)

    def complete(self) -> bool:
        """Every pixel has a valid observation (a first-valid stage cannot change any more)."""
        return self.comp.covered()

    def result(self):
        res = self.comp.result()
        if res.index is not None:
            lut = np.array([0] + self.numbers, np.uint16)  # position -1 -> 0 (none), k -> pick number
            index = lut[res.index.astype(np.int32) + 1]
        else:
            index = np.where(res.count > 0, MEDIAN_INDEX, 0).astype(np.uint16)
        return res.image, index, res.count


def build_tile(task) -> UnitResult:
    """Build one mosaic tile (see the module docstring) and write its parts.

    Parameters
    ----------
    task
        A :class:`~eochips.chips.UnitTask` with ``mosaic`` set; the mosaic source's single
        time step holds the tile's picks in priority order, each ``SceneRead.pick`` its pick
        number and ``role`` ``primary`` or ``backstop``.

    Returns
    -------
    UnitResult
        ``kept`` with the three parts and ``metrics["mosaic_pixels"]``, or ``failed`` on an
        I/O error (a rerun retries it).
    """
    from .chips import UnitData, UnitResult, _BatchRead, _metrics, _warp_unit, unit_masks
    from .writers.layouts import get_layout
    from .writers.store import OutputStore

    spec: MosaicSpec = task.mosaic
    lay = task.layer(spec.source)
    bands = lay.bands
    dtype = bands[0].dtype
    nodata = [b.nodata if b.nodata is not None else 0 for b in bands]
    shape = (len(bands),) + tuple(task.shape)
    kind = lay.composite.kind
    primary = _Stage(kind, shape, dtype, nodata, index=kind != "median")
    backstop = _Stage("first-valid", shape, dtype, nodata, index=True)
    read_all = kind == "median" or spec.layout.clear_count
    scenes = [sc for st in lay.steps for sc in st.scenes]
    retries: list = []

    def needed(sc) -> bool:  # can this scene still show anywhere in its stage?
        if sc.role == "backstop":
            return not backstop.complete()
        return read_all or not primary.complete()

    try:
        for sc in scenes:
            if not needed(sc):
                continue
            reads = [_BatchRead([sub], {}) for sub in _scene_tasks(task, lay, sc, sc.role != "backstop")]
            got, frame = [], None
            for k, r in enumerate(reads):
                r.wait()
                retries.extend(r.retries[0])
                if k == 1:
                    frame = raster_frame(r)
                got.append(_warp_unit(r, 0))
            err = next((g for g in got if isinstance(g, ReadError)), None)
            if err is not None:
                raise err
            masked = None  # a backstop scene, or a source without masks
            if len(got) == 2:  # the QA / mask bands on the halo grid
                sub, d = reads[1].tasks[0], task.masks.dilation
                unit_masks(sub, got[1])
                masked = _crop(scene_mask(sub, got[1][spec.source], d, frame), d)
            (backstop if sc.role == "backstop" else primary).add(_image(got[0][spec.source]), masked, sc.pick)
            del got, masked
    except ReadError as exc:
        return UnitResult(task.unit_id, "failed", "io", str(exc), retries=len(retries), fingerprint=task.fingerprint)
    img_p, idx_p, count = primary.result()
    img_b, idx_b, _ = backstop.result()
    tile = MosaicTile(task, {"cloudless": img_p, "cloudy": img_b}, idx_p, idx_b, count if read_all else None,
                      {"cloudless": [sc for sc in scenes if sc.role != "backstop"],
                       "cloudy": [sc for sc in scenes if sc.role == "backstop"]})
    try:
        files, extra = get_layout("mosaic")(spec.layout, tile, OutputStore(task.out),
                                            {"compress": task.compress, "level": min(task.level, PART_LEVEL)})
    except (ReadError, OutputError) as exc:
        return UnitResult(task.unit_id, "failed", "io", str(exc), retries=len(retries), fingerprint=task.fingerprint)
    inside = _aoi_inside(spec, task)
    metrics = _metrics(task, UnitData(task, {}))
    metrics["mosaic_pixels"] = {"cloudless": _counts(idx_p, inside), "cloudy": _counts(idx_b, inside),
                                "filled": _counts(np.where(idx_p > 0, idx_p, idx_b), inside)}
    metrics["scenes_read"] = primary.comp.n_scenes + backstop.comp.n_scenes
    metrics.update(extra)
    return UnitResult(task.unit_id, "kept", "", "", files, metrics, retries=len(retries), fingerprint=task.fingerprint)


def process_mosaic_batch(tasks: list) -> list:
    """Build mosaic tiles (each streams its scenes, :func:`build_tile`), as many at once as the
    worker's CPU share, leaving each tile's completion marker as soon as it is done."""
    from .chips import _pool, task_hrefs
    from .engine import write_marker
    from .reading import close_assets

    def one(task):
        res = build_tile(task)
        write_marker(task.out, res)
        return res

    try:
        results = list(_pool("cpu", tasks[0].cpu_threads).map(one, tasks))
    finally:
        close_assets(set().union(*(task_hrefs(t) for t in tasks)))
    return results
