"""Landsat QA bands: Collection 2 ``QA_PIXEL`` and Collection 1 Level-1 ``BQA``.

Both are bit-packed **uint16** bands, one value per pixel; bit 0 is the fill flag and a fill
pixel holds the value 1.

Collection 2 Level-1 / Level-2 ``QA_PIXEL`` (USGS *Landsat 8-9 Collection 2 (C2) Level 2 Science
Product (L2SP) Guide*, LSDS-1619, QA_PIXEL bit table and its "Pixel Quality Assessment (QA_PIXEL)
Value Interpretations" table; the same layout in the *Landsat 4-7 C2 L2SP Guide*, LSDS-1618,
where the cirrus bit 2 and cirrus confidence bits 14-15 are unused, i.e. 0: its "clear with
lows set" is 5440, against 21824 for Landsat 8-9):

=====  ==================  =========================================================
bit    layer               meaning
=====  ==================  =========================================================
0      ``fill``            fill (no image data)
1      ``dilated_cloud``   cloud dilation
2      ``cirrus``          high-confidence cirrus (Landsat 8-9 only)
3      ``cloud``           high-confidence cloud
4      ``shadow``          high-confidence cloud shadow
5      ``snow``            high-confidence snow
6      ``clear``           set when neither the cloud nor the dilated-cloud bit is set
7      ``water``           water
8-9    ``cloud_conf``      00 none set, 01 low, 10 medium, 11 high
10-11  ``shadow_conf``     00 none set, 01 low, 10 reserved, 11 high
12-13  ``snow_conf``       00 none set, 01 low, 10 reserved, 11 high
14-15  ``cirrus_conf``     00 none set, 01 low, 10 reserved, 11 high (Landsat 8-9 only)
=====  ==================  =========================================================

The decoder returns the bits as they are stored and does not re-derive one from another: the
USGS value table itself lists 21826, "dilated cloud over land", with the clear bit 6 set, and
24088, "mid conf cloud with shadow", with the cloud bit 3 set at medium confidence. USGS also
reports an issue with bit 6 over water in Landsat 4-7 scenes (Landsat Collection 2 Quality
Assessment Bands page, February 2021): do not rely on ``clear`` there.

Collection 1 Level-1 ``BQA`` (USGS web page *Landsat Collection 1 Level-1 Quality Assessment
Band*, landsat.usgs.gov/collectionqualityband, bit attribute tables for Landsat 4-5 TM,
Landsat 7 ETM+ and Landsat 8 OLI/TIRS; also the *Landsat 8 (L8) Data Users Handbook*,
LSDS-1574):

=====  ==========================  =================================================
bit    layer                       meaning
=====  ==========================  =================================================
0      ``fill``                    designated fill
1      ``terrain_occlusion``       terrain occlusion (Landsat 8; dropped pixel on L4-7)
2-3    ``radiometric_saturation``  0 none, 1 1-2 bands, 2 3-4 bands, 3 5 or more bands
4      ``cloud``                   cloud
5-6    ``cloud_conf``              00 not determined, 01 low, 10 medium, 11 high
7-8    ``shadow_conf``             same coding
9-10   ``snow_conf``               same coding
11-12  ``cirrus_conf``             same coding (Landsat 8 only; unused, 0, on L4-7)
13-15  (unused)                    always 0 in Collection 1
=====  ==========================  =================================================

The USGS Landsat QA Tools (``bit_flags["BQA"]``) only define low (01) and high (11) for the
shadow, snow/ice and cirrus confidences, so for those ``min_confidence=2`` selects the same
pixels as 3.

The *pre-collection* Landsat 8 BQA (USGS page "Landsat 8 Pre-Collection Quality Assessment
band", landsat.usgs.gov/qualityband) is a different layout: water confidence in bits 4-5,
snow/ice in 10-11, cirrus in 12-13 and cloud confidence in bits 14-15. Read with the
Collection 1 table its bits mean other things (the C1 cloud bit 4 is there the low bit of the
water confidence). Collection 1 leaves bits 13-15 at 0, so :func:`decode_bqa` refuses any band
with one of them set rather than return wrong masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RecipeError
from .masks import MaskSet
from .masks import clean as _clean

LANDSAT_QA_FILL: dict[str, dict[str, object]] = {
    "QA_PIXEL": {"dtype": "uint16", "fill": 1},
    "BQA": {"dtype": "uint16", "fill": 1},
}
"""Documented dtype and fill value of each band. QA_PIXEL: value 1 is "Fill" in the LSDS-1619
value table (and bit 0 is the fill bit). BQA: value 1 is "Designated Fill" in the Collection 1
Level-1 QA page's pixel-value table. A fill pixel is told by bit 0; other bits are ignored."""

QA_PIXEL_BITS: dict[str, int] = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "shadow": 4, "snow": 5,
                                 "clear": 6, "water": 7}
QA_PIXEL_CONF_BITS: dict[str, int] = {"cloud_conf": 8, "shadow_conf": 10, "snow_conf": 12, "cirrus_conf": 14}
QA_PIXEL_MASK_LAYERS: tuple[str, ...] = tuple(n for n in QA_PIXEL_BITS if n != "fill")
"""Layer names :func:`qa_pixel_masks` accepts (``fill`` is always the nodata mask instead)."""

BQA_CONF_BITS: dict[str, int] = {"radiometric_saturation": 2, "cloud_conf": 5, "shadow_conf": 7, "snow_conf": 9,
                                 "cirrus_conf": 11}
BQA_UNUSED_BITS = 0xE000  # bits 13-15
CONFIDENCE_LEVELS = {1: "low", 2: "medium", 3: "high"}


def _as_uint16(qa, band: str) -> np.ndarray:
    """Return ``qa`` as a uint16 array, refusing dtypes that cannot carry the 16 QA bits."""
    a = np.asarray(qa)
    if a.dtype == np.uint16:
        return a
    if a.dtype.kind not in "iu" or a.dtype.itemsize <= 2:
        hint = ""
        if a.dtype == np.int16:
            hint = ("; a uint16 band read as int16 makes every value with bit 15 set negative: re-read it as "
                    "uint16, or use qa.view(np.uint16) if the bits were stored unchanged")
        raise RecipeError(f"{band} must be uint16 (or a wider integer array holding uint16 values), "
                          f"got dtype {a.dtype}{hint}")
    if a.size and (a.min() < 0 or a.max() > 0xFFFF):
        raise RecipeError(f"{band} values must lie in 0..65535 (uint16); this {a.dtype} array holds "
                          f"{a.min()}..{a.max()}")
    return a.astype(np.uint16)


@dataclass(frozen=True)
class QAPixelLayers:
    """Decoded ``QA_PIXEL``: bool arrays for the single bits, uint8 arrays (0..3) for the
    two-bit confidences, all of the input's shape, normally ``(y, x)``.

    Every layer but ``fill`` is False (confidences 0) where ``fill`` is True.
    """

    fill: np.ndarray
    dilated_cloud: np.ndarray
    cirrus: np.ndarray
    cloud: np.ndarray
    shadow: np.ndarray
    snow: np.ndarray
    clear: np.ndarray
    water: np.ndarray
    cloud_conf: np.ndarray
    shadow_conf: np.ndarray
    snow_conf: np.ndarray
    cirrus_conf: np.ndarray


def decode_qa_pixel(qa: np.ndarray) -> QAPixelLayers:
    """Split a Landsat Collection 2 ``QA_PIXEL`` array into its bit layers.

    Bit layout: LSDS-1619 (Landsat 8-9) / LSDS-1618 (Landsat 4-7) QA_PIXEL bit table, copied in
    the module docstring.

    Parameters
    ----------
    qa
        ``(y, x)`` QA_PIXEL array, **uint16** as USGS stores it. Wider integer arrays (int32,
        uint32, int64, ...) are accepted when every value lies in 0..65535.

    Returns
    -------
    QAPixelLayers
        Bool ``(y, x)`` layers ``fill``, ``dilated_cloud``, ``cirrus``, ``cloud``, ``shadow``,
        ``snow``, ``clear``, ``water``; uint8 ``(y, x)`` confidences ``cloud_conf``,
        ``shadow_conf``, ``snow_conf``, ``cirrus_conf`` (0 none set, 1 low, 2 medium -- for
        the cloud confidence; reserved in the other three --, 3 high). Fill pixels (bit 0) are
        False / 0 in every layer but ``fill``.

    Raises
    ------
    RecipeError
        If ``qa`` is a float, bool, 8-bit or int16 array, or a wider integer array holding a
        value outside 0..65535. The message names the dtype.

    Notes
    -----
    The reader must keep the band uint16. Bits 14-15 carry the cirrus confidence, so every
    Landsat 8-9 pixel with cirrus confidence 10 or 11 (e.g. 54596, "high conf cirrus") has
    bit 15 set; read as int16 that value becomes negative (54596 -> -10940). A negative value
    matches nothing in the USGS value table, and anything that then clips, rescales or
    resamples it as a signed number (or through float) loses bit 15. An int16 array cannot be
    told apart from such a damaged one, so it is refused; if the file only *declares* int16
    over intact bits, pass ``qa.view(np.uint16)``.
    """
    q = _as_uint16(qa, "QA_PIXEL")
    fill = (q & 1).astype(bool)

    def bit(n: int) -> np.ndarray:
        return ((q >> n) & 1).astype(bool) & ~fill

    def conf(n: int) -> np.ndarray:
        return np.where(fill, 0, (q >> n) & 3).astype(np.uint8)

    bits = {name: bit(n) for name, n in QA_PIXEL_BITS.items() if name != "fill"}
    return QAPixelLayers(fill=fill, **bits, **{name: conf(n) for name, n in QA_PIXEL_CONF_BITS.items()})


def _layer_names(names, role: str) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in QA_PIXEL_MASK_LAYERS]
    if unknown:
        raise RecipeError(f"unknown QA_PIXEL layer(s) for {role}: {', '.join(map(repr, unknown))}; "
                          f"valid layers: {', '.join(QA_PIXEL_MASK_LAYERS)}")
    return names


def _union(layers: QAPixelLayers, names: tuple[str, ...]) -> np.ndarray:
    out = np.zeros(layers.fill.shape, bool)
    for n in names:
        out |= getattr(layers, n)
    return out


def qa_pixel_masks(qa: np.ndarray, *, cloud=("cloud", "dilated_cloud", "cirrus"), shadow=("shadow",),
                   snow=("snow",)) -> MaskSet:
    """Mask set of a Landsat Collection 2 ``QA_PIXEL`` array.

    Parameters
    ----------
    qa
        ``(y, x)`` QA_PIXEL array, uint16 (see :func:`decode_qa_pixel` for the dtypes accepted).
    cloud, shadow, snow
        Names of :class:`QAPixelLayers` bool layers whose union is each mask (one of
        ``dilated_cloud``, ``cirrus``, ``cloud``, ``shadow``, ``snow``, ``clear``, ``water``; a
        single name may be given as a string). The defaults follow the LSDS-1619 bit table:
        cloud = high-confidence cloud, its dilation and high-confidence cirrus (bits 1-3);
        shadow = bit 4; snow = bit 5.

    Returns
    -------
    MaskSet
        Bool ``(y, x)`` masks; ``nodata`` is the fill bit (bit 0) and a nodata pixel is never
        cloud, shadow or snow.

    Raises
    ------
    RecipeError
        For an unknown layer name (the message lists the valid names), or a dtype
        :func:`decode_qa_pixel` refuses.
    """
    cloud, shadow, snow = (_layer_names(n, r) for n, r in ((cloud, "cloud"), (shadow, "shadow"), (snow, "snow")))
    layers = decode_qa_pixel(qa)
    return _clean(_union(layers, cloud), _union(layers, shadow), _union(layers, snow), layers.fill)


@dataclass(frozen=True)
class BQALayers:
    """Decoded Collection 1 ``BQA``: bool ``fill``, ``terrain_occlusion``, ``cloud``; uint8
    (0..3) ``radiometric_saturation``, ``cloud_conf``, ``shadow_conf``, ``snow_conf``,
    ``cirrus_conf``; all of the input's shape, normally ``(y, x)``.

    Every layer but ``fill`` is False (0) where ``fill`` is True.
    """

    fill: np.ndarray
    terrain_occlusion: np.ndarray
    radiometric_saturation: np.ndarray
    cloud: np.ndarray
    cloud_conf: np.ndarray
    shadow_conf: np.ndarray
    snow_conf: np.ndarray
    cirrus_conf: np.ndarray


def decode_bqa(bqa: np.ndarray) -> BQALayers:
    """Split a Landsat Collection 1 Level-1 ``BQA`` array into its bit layers.

    Bit layout: USGS *Landsat Collection 1 Level-1 Quality Assessment Band* page, bit attribute
    tables (copied in the module docstring).

    Parameters
    ----------
    bqa
        ``(y, x)`` BQA array, **uint16** (the band is uint16 even where a file or reader
        declares it otherwise; see :func:`decode_qa_pixel` for why int16 is refused). Wider
        integer arrays are accepted when every value lies in 0..65535.

    Returns
    -------
    BQALayers
        Bool ``(y, x)`` ``fill`` (bit 0), ``terrain_occlusion`` (bit 1), ``cloud`` (bit 4);
        uint8 ``(y, x)`` ``radiometric_saturation`` (bits 2-3), ``cloud_conf`` (5-6),
        ``shadow_conf`` (7-8), ``snow_conf`` (9-10), ``cirrus_conf`` (11-12), each 0 not
        determined, 1 low, 2 medium, 3 high. Fill pixels are False / 0 in every other layer.

    Raises
    ------
    RecipeError
        For a dtype that cannot carry the 16 bits (float, bool, 8-bit, int16) or values outside
        0..65535; or when a pixel has one of bits 13-15 set. Those bits are unused in
        Collection 1, and set in every pre-collection Landsat 8 BQA pixel whose cloud
        confidence (bits 14-15 there) was determined: such a band is not read as Collection 1.
    """
    q = _as_uint16(bqa, "BQA")
    high = (q & BQA_UNUSED_BITS) != 0
    if high.any():
        example = int(q[high].flat[0])
        raise RecipeError(
            f"BQA is not a Landsat Collection 1 QA band: {int(high.sum())} of {q.size} pixels set bits 13-15, "
            f"which Collection 1 leaves unused (e.g. value {example}). It looks like a pre-collection Landsat 8 "
            "BQA (cloud confidence in bits 14-15, cirrus in 12-13, snow/ice in 10-11), which decode_bqa does not read")
    fill = (q & 1).astype(bool)

    def conf(n: int) -> np.ndarray:
        return np.where(fill, 0, (q >> n) & 3).astype(np.uint8)

    terrain = ((q >> 1) & 1).astype(bool) & ~fill
    cloud = ((q >> 4) & 1).astype(bool) & ~fill
    return BQALayers(fill=fill, terrain_occlusion=terrain, cloud=cloud,
                     **{name: conf(n) for name, n in BQA_CONF_BITS.items()})


def bqa_masks(bqa: np.ndarray, *, min_confidence: int = 3, cirrus: bool = True) -> MaskSet:
    """Mask set of a Landsat Collection 1 Level-1 ``BQA`` array.

    cloud = cloud bit (bit 4) set, or (``cirrus`` and cirrus confidence >= ``min_confidence``);
    shadow = cloud-shadow confidence >= ``min_confidence``; snow = snow/ice confidence >=
    ``min_confidence``; nodata = designated fill (bit 0). Bits per the USGS Collection 1
    Level-1 QA band page (module docstring).

    Parameters
    ----------
    bqa
        ``(y, x)`` BQA array, uint16 (see :func:`decode_bqa`).
    min_confidence
        1 (low), 2 (medium) or 3 (high, the default). Low ("0-33 percent confidence") is
        what USGS sets on clear pixels (2720, "clear terrain", has all four confidences low),
        so 1 flags nearly every pixel as shadow and snow.
    cirrus
        Count cirrus confidence as cloud (Landsat 8; Landsat 4-7 carry no cirrus confidence).

    Returns
    -------
    MaskSet
        Bool ``(y, x)`` masks; a nodata pixel is never cloud, shadow or snow.

    Raises
    ------
    RecipeError
        If ``min_confidence`` is not the integer 1, 2 or 3, or for a band :func:`decode_bqa`
        refuses.
    """
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, np.integer)) \
            or min_confidence not in CONFIDENCE_LEVELS:
        raise RecipeError(f"min_confidence must be 1 (low), 2 (medium) or 3 (high), got {min_confidence!r}")
    b = decode_bqa(bqa)
    cloud = b.cloud | (bool(cirrus) & (b.cirrus_conf >= min_confidence))
    return _clean(cloud, b.shadow_conf >= min_confidence, b.snow_conf >= min_confidence, b.fill)
