"""Class tables: label codes -> classes, with names and colours.

``cdl-13``: USDA Cropland Data Layer codes -> the 13 classes of seed 001 (ClarkCGA
multi-temporal-crop-classification-training-data @82cca1a; table in ``specs/recipes.md``).
Code 0 is CDL's "no data" and maps to class 0.

``clc-19``: CORINE Land Cover level-3 codes -> the 19 BigEarthNet v2 class names
(kai-tub/bigearthnet-pipeline, table in ``specs/recipes.md`` section 4; the same names as
``bigearthnet_common.constants.OLD2NEW_LABELS_DICT``). The codes of :data:`CLC_19_UNLABELED`
(and 999, uncovered) have no class: a unit's multi-labels (:func:`label_names`) skip them.
"""

from __future__ import annotations


def _codes(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


_CDL13_SPEC = {
    1: "37, 152, 176", 2: "141-143", 3: "1", 4: "5", 5: "190, 195", 6: "121-124, 131", 7: "111", 8: "24",
    9: "36", 10: "61", 11: "2", 12: "4",
    13: "3, 6, 10-14, 21-23, 25-35, 38, 39, 41-60, 62-72, 74-77, 81-83, 87, 88, 92, 112, 204-250, 254",
}
CDL_13: dict[int, int] = {code: cls for cls, spec in _CDL13_SPEC.items() for code in _codes(spec)}
CDL_13[0] = 0
CDL_13_NAMES = {
    0: "No Data", 1: "Natural Vegetation", 2: "Forest", 3: "Corn", 4: "Soybeans", 5: "Wetlands",
    6: "Developed/Barren", 7: "Open Water", 8: "Winter Wheat", 9: "Alfalfa", 10: "Fallow/Idle Cropland",
    11: "Cotton", 12: "Sorghum", 13: "Other",
}
# Colours of the CDL legend for the class's main crop (RGBA), class 0 transparent black.
CDL_13_COLORS = {
    0: (0, 0, 0, 0), 1: (233, 255, 190, 255), 2: (147, 204, 147, 255), 3: (255, 211, 0, 255),
    4: (38, 112, 0, 255), 5: (128, 179, 179, 255), 6: (156, 156, 156, 255), 7: (77, 112, 163, 255),
    8: (168, 112, 0, 255), 9: (255, 168, 227, 255), 10: (191, 191, 122, 255), 11: (255, 38, 38, 255),
    12: (255, 158, 10, 255), 13: (0, 175, 75, 255),
}
RECLASS_TABLES = {"cdl-13": CDL_13}

_CLC19_SPEC = {
    "Urban fabric": "111, 112",
    "Industrial or commercial units": "121",
    "Arable land": "211-213",
    "Permanent crops": "221-223, 241",
    "Pastures": "231",
    "Complex cultivation patterns": "242",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": "243",
    "Agro-forestry areas": "244",
    "Broad-leaved forest": "311",
    "Coniferous forest": "312",
    "Mixed forest": "313",
    "Natural grassland and sparsely vegetated areas": "321, 333",
    "Moors, heathland and sclerophyllous vegetation": "322, 323",
    "Transitional woodland, shrub": "324",
    "Beaches, dunes, sands": "331",
    "Inland wetlands": "411, 412",
    "Coastal wetlands": "421, 422",
    "Inland waters": "511, 512",
    "Marine waters": "521-523",
}
CLC_19: dict[int, str] = {code: name for name, spec in _CLC19_SPEC.items() for code in _codes(spec)}
"""CORINE code -> BigEarthNet v2 class name (the 19 classes)."""
CLC_19_UNLABELED: tuple[int, ...] = (122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999)
"""CORINE codes without a 19-class name (UNLABELED; 999: no polygon, the reference maps' fill)."""
CLC_19_NAMES: tuple[str, ...] = tuple(_CLC19_SPEC)
"""The 19 class names in BigEarthNet v2's order."""
MULTI_LABEL_TABLES: dict[str, tuple[dict[int, str], tuple[int, ...]]] = {"clc-19": (CLC_19, CLC_19_UNLABELED)}
"""``labels.table`` name -> (code -> class name, codes without a name)."""


def label_names(label_hist: dict[int, int], table: str = "clc-19") -> list[str]:
    """The sorted distinct class names of the codes present in a unit (no minimum area).

    Parameters
    ----------
    label_hist
        Code -> pixel count (a unit's ``metrics["label_hist"]``); codes with 0 pixels are absent.
    table
        A :data:`MULTI_LABEL_TABLES` name.

    Returns
    -------
    list of str
        Names of the codes with a pixel, sorted; UNLABELED codes add none (BigEarthNet v2:
        every distinct 19-class name present is a label).

    Raises
    ------
    LabelError
        A code that is neither in the table nor UNLABELED (e.g. CLC's 990 / 995).
    """
    from ..errors import LabelError

    names, unlabeled = MULTI_LABEL_TABLES[table]
    out = set()
    for code, n in label_hist.items():
        c = int(code)
        if n <= 0 or c in unlabeled:
            continue
        if c not in names:
            raise LabelError(f"labels.table {table!r}: code {c} is neither one of its classes nor UNLABELED "
                             f"({', '.join(map(str, unlabeled))})")
        out.add(names[c])
    return sorted(out)


def table_codes(table: str) -> frozenset[int]:
    """Every code a :data:`MULTI_LABEL_TABLES` table knows (named or UNLABELED)."""
    names, unlabeled = MULTI_LABEL_TABLES[table]
    return frozenset(names) | frozenset(unlabeled)


def default_colormap(n_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """A colour per class id 0..n (tab20 colours; 0 transparent)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    out = {0: (0, 0, 0, 0)}
    for i in range(1, n_classes + 1):
        r, g, b, _ = cmap((i - 1) % 20)
        out[i] = (int(r * 255), int(g * 255), int(b * 255), 255)
    return out
