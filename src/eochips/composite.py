"""Compositors: merge a group of scenes, already read onto one chip grid, into one image.

A time step of a chip may be a *group* of scenes: several Sentinel-1 scenes whose union
covers the chip, several Copernicus DEM tiles, the scenes of a cloud-free mosaic. Each scene
arrives warped onto the chip grid as a ``(band, y, x)`` array of the band dtype, with one
nodata fill per band (an integer, or NaN for float bands) and an optional ``(y, x)`` boolean
``masked`` array (e.g. a cloud mask). A compositor merges the group into one
``(band, y, x)`` array.

Validity rule
-------------
A scene's pixel is **valid** when none of its bands is nodata there and it is not masked:

* band ``b`` is nodata where it equals ``nodata[b]``, compared in the band dtype; when
  ``nodata[b]`` is NaN the test is ``isnan`` (NaN never equals itself);
* for float dtypes NaN is never a valid observation, whatever the fill (otherwise a NaN
  would be copied into a composite whose declared fill is, say, -9999);
* ``masked[y, x]`` True makes the pixel invalid.

Bands are never mixed from different scenes within a pixel: a scene with nodata in one
band only is invalid for the whole pixel. This is stricter than ``rasterio.merge`` and
``stackstac.mosaic``, which decide per band; per-pixel keeps a pixel's bands physically
consistent (one acquisition, one cloud state), which is what a training sample needs.

Design
------
Compositors are streaming accumulators sharing one protocol (:class:`Compositor`):
construct with the group's ``(band, y, x)`` shape, dtype and per-band nodata, call
:meth:`~Compositor.add` once per scene (so a caller never holds the whole group in memory),
then :meth:`~Compositor.result` for a frozen :class:`Composite`. Only :class:`Median` keeps
the scenes it was given (a median needs all observations). Every ``add`` validates its
input completely before touching the accumulator, so a rejected scene leaves it unchanged.

========================  ==============================================================
``"first-valid"``         :class:`FirstValid`: the first added valid scene wins (callers
                          add in priority order: primary before backstop, earliest greedy
                          pick first). Source: ``rasterio.merge(method="first")``
                          ("reverse painting"), but decided per pixel, not per band.
``"later-on-top"``        :class:`LaterOnTop`: the last added valid scene wins (callers
                          add in date order). Source: Clay's datacube pipeline
                          (``Clay-foundation/model`` ``scripts/pipeline/datacube.py``),
                          which merges Sentinel-1 scenes with ``stackstac.mosaic``, whose
                          default puts "the last item on top".
``"median"``              :class:`Median`: per pixel and band, the median of the valid
                          observations, ``numpy.median`` definition (mean of the two middle
                          values for an even count), computed in float64.
========================  ==============================================================

Each :class:`Composite` also carries ``count``, the number of valid observations per pixel
(the chip's "clear_count"), and for the painting compositors optionally ``index``, the add
position of the scene each pixel came from.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike

from .errors import RecipeError

__all__ = ["COMPOSITES", "Composite", "Compositor", "FirstValid", "LaterOnTop", "Median", "MAX_INDEXED_SCENES",
           "MAX_SCENES", "composite", "get_compositor"]

MAX_INDEXED_SCENES = int(np.iinfo(np.int16).max)  # 32767: index is int16, -1 meaning "no scene"
MAX_SCENES = int(np.iinfo(np.uint16).max)  # 65535: count is uint16


@dataclass(frozen=True)
class Composite:
    """The merged image of one group of scenes.

    Attributes
    ----------
    image
        ``(band, y, x)`` array of the group's dtype; pixels valid in no scene hold each
        band's nodata.
    index
        ``(y, x)`` int16: 0-based add position of the scene each pixel came from, -1 where
        no scene was valid. ``None`` unless the compositor was built with ``index=True``
        (always ``None`` for :class:`Median`).
    count
        ``(y, x)`` uint16: number of added scenes valid at each pixel ("clear_count").
    """

    image: np.ndarray
    index: np.ndarray | None
    count: np.ndarray


class Compositor(Protocol):
    """The protocol all compositors in :data:`COMPOSITES` follow.

    ``Compositor(shape, dtype, nodata, index=False)`` where ``shape`` is ``(band, y, x)``,
    ``dtype`` an integer or float numpy dtype, ``nodata`` one fill per band (NaN allowed for
    float dtypes only) and ``index`` asks for :attr:`Composite.index`. Then ``add`` once per
    scene and ``result`` at the end (``result`` may be called at any time; it returns copies).
    """

    def __init__(self, shape: tuple[int, int, int], dtype: DTypeLike, nodata: Sequence[float],
                 index: bool = False) -> None: ...

    def add(self, image: np.ndarray, masked: np.ndarray | None = None, priority: int | None = None) -> None: ...

    def result(self) -> Composite: ...


class _Accumulator:
    """Shared construction, validation, validity and counting; subclasses set ``name`` and
    implement ``_take(image, valid, position)`` and ``_image()``."""

    name = ""
    ordered = True  # does the add order matter (so that ``priority`` is checked)?

    def __init__(self, shape: tuple[int, int, int], dtype: DTypeLike, nodata: Sequence[float],
                 index: bool = False) -> None:
        """
        Parameters
        ----------
        shape
            ``(band, y, x)`` of every scene of the group, positive ints.
        dtype
            The band dtype: an integer or float numpy dtype (``uint16``, ``int16``,
            ``float32``, ...).
        nodata
            One fill value per band. NaN is allowed for float dtypes only; integer fills
            must be representable in ``dtype``.
        index
            Record the add position of each pixel's source scene in
            :attr:`Composite.index`.

        Raises
        ------
        RecipeError
            Bad ``shape``, a dtype that is not integer or float, ``nodata`` of the wrong
            length, a NaN fill for an integer dtype, or a fill not representable in
            ``dtype``.
        """
        self.shape = _check_shape(shape)
        self.dtype = _check_dtype(dtype)
        self.nodata = _check_nodata(nodata, self.shape[0], self.dtype)
        self.index = bool(index)
        self._fill = np.array(self.nodata, dtype=self.dtype)  # (band,) in the band dtype
        self._fill_is_nan = [math.isnan(v) for v in self.nodata]
        self._count = np.zeros(self.shape[1:], np.uint16)
        self._scenes = 0
        self._last_priority: int | None = None

    @property
    def n_scenes(self) -> int:
        """Number of scenes added so far."""
        return self._scenes

    def add(self, image: np.ndarray, masked: np.ndarray | None = None, priority: int | None = None) -> None:
        """Add one scene of the group.

        Parameters
        ----------
        image
            ``(band, y, x)`` array, exactly the accumulator's shape and dtype (not cast: a
            silent cast could turn a fill into a valid value). Not modified; may be reused
            by the caller after the call returns.
        masked
            Optional ``(y, x)`` bool array; True marks a pixel invalid (cloud, shadow, ...).
        priority
            Optional int: the scene's rank in the caller's intended order. When given, it
            must not be lower than the last priority given to this accumulator (for the
            order-dependent compositors; :class:`Median` ignores it): the accumulator never
            reorders, so this catches a caller that forgot to sort.

        Raises
        ------
        RecipeError
            Wrong image shape or dtype, a ``masked`` that is not ``(y, x)`` bool, a
            non-int or decreasing ``priority``, more than :data:`MAX_SCENES` scenes, or
            more than :data:`MAX_INDEXED_SCENES` scenes with ``index=True``. The
            accumulator is unchanged after an error.
        """
        image = np.asarray(image)
        if image.shape != self.shape:
            raise RecipeError(f"{self.name}: image shape {image.shape} does not match the expected "
                              f"(band, y, x) = {self.shape}")
        if image.dtype != self.dtype:
            raise RecipeError(f"{self.name}: image dtype {image.dtype} does not match the expected dtype {self.dtype}; "
                              f"cast before add")
        if masked is not None:
            masked = np.asarray(masked)
            if masked.dtype != np.bool_ or masked.shape != self.shape[1:]:
                raise RecipeError(f"{self.name}: masked must be a bool (y, x) = {self.shape[1:]} array; "
                                  f"got {masked.dtype} {masked.shape}")
        priority = self._check_priority(priority)
        if self._scenes >= MAX_SCENES:
            raise RecipeError(f"{self.name}: at most {MAX_SCENES} scenes per group (count is uint16); "
                              f"scene {self._scenes + 1} is one too many")
        if self.index and self._scenes >= MAX_INDEXED_SCENES:
            raise RecipeError(f"{self.name}: at most {MAX_INDEXED_SCENES} scenes per group with index=True "
                              f"(index is int16); scene {self._scenes + 1} is one too many")
        valid = self._valid(image, masked)
        self._take(image, valid, self._scenes)
        self._count += valid
        self._scenes += 1
        if priority is not None:
            self._last_priority = priority

    def covered(self) -> bool:
        """True when every pixel has at least one valid observation (a first-valid result
        cannot change any more)."""
        return bool(self._count.all())

    def result(self) -> Composite:
        """The composite of the scenes added so far (copies; adding more later does not
        change it). With no scene added: all nodata, ``count`` 0, ``index`` -1."""
        return Composite(image=self._image(), index=self._index_copy(), count=self._count.copy())

    # -- shared helpers ---------------------------------------------------------------

    def _valid(self, image: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
        """``(y, x)`` bool: the module's validity rule, applied literally."""
        valid = np.ones(self.shape[1:], bool) if masked is None else ~masked
        is_float = self.dtype.kind == "f"
        for b in range(self.shape[0]):
            band = image[b]
            if is_float:
                valid &= ~np.isnan(band)
            if not self._fill_is_nan[b]:
                valid &= band != self._fill[b]
        return valid

    def _nodata_image(self) -> np.ndarray:
        """``(band, y, x)`` array holding each band's fill."""
        return np.broadcast_to(self._fill[:, None, None], self.shape).copy()

    def _check_priority(self, priority: int | None) -> int | None:
        if priority is None:
            return None
        if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
            raise RecipeError(f"{self.name}: priority must be an int or None; got {priority!r}")
        if self.ordered and self._last_priority is not None and priority < self._last_priority:
            raise RecipeError(f"{self.name}: priority {priority} after {self._last_priority}; add scenes in "
                              f"non-decreasing priority order (the compositor never reorders)")
        return int(priority)

    def _index_copy(self) -> np.ndarray | None:
        return None

    def _take(self, image: np.ndarray, valid: np.ndarray, position: int) -> None:
        raise NotImplementedError

    def _image(self) -> np.ndarray:
        raise NotImplementedError


class _Painter(_Accumulator):
    """Copies whole pixels from one scene: the first valid (``on_top=False``) or the last."""

    on_top = False

    def __init__(self, shape: tuple[int, int, int], dtype: DTypeLike, nodata: Sequence[float],
                 index: bool = False) -> None:
        super().__init__(shape, dtype, nodata, index)
        self._out = self._nodata_image()
        self._source = np.full(self.shape[1:], -1, np.int16)  # also tells "already filled" (>= 0)

    def _take(self, image: np.ndarray, valid: np.ndarray, position: int) -> None:
        take = valid if self.on_top else valid & (self._source < 0)
        self._out[:, take] = image[:, take]
        self._source[take] = min(position, MAX_INDEXED_SCENES)  # only clipped when index=False

    def _image(self) -> np.ndarray:
        return self._out.copy()

    def _index_copy(self) -> np.ndarray | None:
        return self._source.copy() if self.index else None


class FirstValid(_Painter):
    """First-valid compositor: each pixel comes, all bands together, from the first added
    scene valid there; pixels valid in no scene hold each band's nodata.

    The caller adds scenes in priority order (primary before backstop, earliest greedy pick
    first). Shapes, dtypes, nodata and errors: see :class:`Compositor` and :meth:`add`.
    Rule source: ``rasterio.merge(method="first")``, decided per pixel instead of per band.
    """

    name = "first-valid"
    on_top = False


class LaterOnTop(_Painter):
    """Later-on-top compositor: each pixel comes, all bands together, from the *last* added
    scene valid there (valid pixels of a later scene overwrite earlier ones); pixels valid in
    no scene hold each band's nodata.

    The caller adds scenes in date order, no reversal needed. Rule source: Clay's datacube
    (``stackstac.mosaic`` default, "the last item is on top"), decided per pixel instead of
    per band. Shapes, dtypes, nodata and errors: see :class:`Compositor` and :meth:`add`.
    """

    name = "later-on-top"
    on_top = True


class Median(_Accumulator):
    """Median compositor: per pixel and band, the median of the scenes valid at that pixel.

    The median follows ``numpy.median`` (the mean of the two middle values for an even count)
    and is computed in float64. For integer dtypes it is rounded half to even (``np.rint``,
    so 2.5 -> 2 and 3.5 -> 4) and cast back to the band dtype; float dtypes are cast back
    directly. Pixels valid in no scene hold each band's nodata. 64-bit integer values beyond
    2**53 are not exact in float64.

    Keeps a copy of every added scene and its validity (the median needs all observations);
    :meth:`result` builds an ``(n_scenes, band, y, x)`` float64 stack. ``index`` has no
    meaning (a median pixel has no single source scene), so ``index=True`` is refused, and
    ``priority`` is type-checked but not ordered (the median does not depend on add order).

    Raises
    ------
    RecipeError
        ``index=True``; otherwise as :class:`Compositor` and :meth:`add`.
    """

    name = "median"
    ordered = False

    def __init__(self, shape: tuple[int, int, int], dtype: DTypeLike, nodata: Sequence[float],
                 index: bool = False) -> None:
        if index:
            raise RecipeError("median: index=True is not supported (a median pixel has no single source scene); "
                              "use index=False, or 'first-valid' / 'later-on-top' for an index")
        super().__init__(shape, dtype, nodata, index)
        self._kept: list[tuple[np.ndarray, np.ndarray]] = []  # (image copy, (y, x) valid)

    def _take(self, image: np.ndarray, valid: np.ndarray, position: int) -> None:
        self._kept.append((image.copy(), valid))

    def _image(self) -> np.ndarray:
        out = self._nodata_image()
        if not self._kept:
            return out
        # Invalid observations become NaN, which np.sort puts last; the k valid values of a
        # pixel are then at positions 0..k-1 and the middle ones at (k-1)//2 and k//2.
        stack = np.stack([np.where(valid, img.astype(np.float64), np.nan) for img, valid in self._kept])
        stack.sort(axis=0)
        k = self._count.astype(np.intp)[None, None]  # (1, 1, y, x), broadcast over bands
        low = np.take_along_axis(stack, np.maximum(k - 1, 0) // 2, axis=0)[0]
        high = np.take_along_axis(stack, k // 2, axis=0)[0]
        median = (low + high) / 2
        if self.dtype.kind in "ui":
            median = np.rint(median)
        has = self._count > 0
        out[:, has] = median[:, has].astype(self.dtype)
        return out


COMPOSITES: dict[str, type] = {"first-valid": FirstValid, "later-on-top": LaterOnTop, "median": Median}


def get_compositor(name: str) -> type:
    """The compositor class registered under ``name`` in :data:`COMPOSITES`.

    Raises
    ------
    RecipeError
        ``name`` is not a registered compositor; the message lists the valid names.
    """
    try:
        return COMPOSITES[name]
    except (KeyError, TypeError):
        valid = ", ".join(repr(n) for n in COMPOSITES)
        raise RecipeError(f"unknown composite {name!r}; valid: {valid}") from None


_END = object()


def composite(images: Iterable[np.ndarray], kind: str, dtype: DTypeLike, nodata: Sequence[float],
              masks: Iterable[np.ndarray | None] | None = None, index: bool = False) -> Composite:
    """Composite a group of scenes in one call, streaming them through the ``kind`` compositor.

    Parameters
    ----------
    images
        The scenes, each ``(band, y, x)`` of ``dtype``, in add order; consumed one at a
        time (a generator that reads each scene on demand keeps memory to one scene, except
        for ``"median"``). The first image sets the shape.
    kind
        A key of :data:`COMPOSITES`.
    dtype, nodata, index
        As for :class:`Compositor`.
    masks
        Optional, one ``(y, x)`` bool array (or None) per image, same order.

    Returns
    -------
    Composite

    Raises
    ------
    RecipeError
        Unknown ``kind``, no image, ``masks`` not of the same length as ``images``, or any
        error of the compositor's constructor or ``add``.
    """
    cls = get_compositor(kind)
    mask_iter = None if masks is None else iter(masks)
    acc = None
    n = 0
    for image in images:
        image = np.asarray(image)
        if acc is None:
            acc = cls(image.shape, dtype, nodata, index=index)
        masked = None
        if mask_iter is not None:
            masked = next(mask_iter, _END)
            if masked is _END:
                raise RecipeError(f"masks has fewer entries than images (ran out at image {n}); give one per image")
        acc.add(image, masked)
        n += 1
    if acc is None:
        raise RecipeError(f"composite {kind!r} needs at least one image; got none")
    if mask_iter is not None and next(mask_iter, _END) is not _END:
        raise RecipeError(f"masks has more entries than the {n} images; give one per image")
    return acc.result()


# -- argument checks ------------------------------------------------------------------

def _check_shape(shape) -> tuple[int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if (dims is None or len(dims) != 3
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in dims)):
        raise RecipeError(f"shape must be (band, y, x), three positive ints; got {shape!r}")
    return tuple(int(d) for d in dims)


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "uif":
        raise RecipeError(f"dtype {dtype!r} is not supported; valid: an integer or float numpy dtype "
                          f"(uint8, uint16, int16, float32, ...)")
    return dt


def _check_nodata(nodata, bands: int, dtype: np.dtype) -> tuple[int | float, ...]:
    """Validated fills: ints for an integer dtype (exact), floats for a float dtype."""
    if isinstance(nodata, (str, bytes)) or not isinstance(nodata, Sequence):
        raise RecipeError(f"nodata must be a sequence of one fill value per band; got {nodata!r}")
    if len(nodata) != bands:
        raise RecipeError(f"nodata has {len(nodata)} values for {bands} bands; give one fill value per band")
    out = []
    for b, v in enumerate(nodata):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise RecipeError(f"nodata[{b}] = {v!r} is not a number")
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            if not isinstance(v, numbers.Integral) and math.isnan(v):
                raise RecipeError(f"nodata[{b}] is NaN but dtype {dtype} is an integer type; "
                                  f"valid: an integer in {info.min}..{info.max}")
            if not (isinstance(v, numbers.Integral) or float(v).is_integer()) or not info.min <= v <= info.max:
                raise RecipeError(f"nodata[{b}] = {v!r} is not representable in {dtype}; "
                                  f"valid: an integer in {info.min}..{info.max}")
            out.append(int(v))
        else:
            if math.isfinite(v) and abs(v) > float(np.finfo(dtype).max):
                raise RecipeError(f"nodata[{b}] = {v!r} overflows {dtype}; valid: NaN or a value within "
                                  f"+-{np.finfo(dtype).max}")
            out.append(float(v))
    return tuple(out)
