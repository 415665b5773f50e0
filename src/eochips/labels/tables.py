"""Class tables: label codes -> classes, with names and colours.

``cdl-13``: USDA Cropland Data Layer codes -> the 13 classes of seed 001 (ClarkCGA
multi-temporal-crop-classification-training-data @82cca1a; table in ``specs/recipes.md``).
Code 0 is CDL's "no data" and maps to class 0.
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


def default_colormap(n_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """A colour per class id 0..n (tab20 colours; 0 transparent)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    out = {0: (0, 0, 0, 0)}
    for i in range(1, n_classes + 1):
        r, g, b, _ = cmap((i - 1) % 20)
        out[i] = (int(r * 255), int(g * 255), int(b * 255), 255)
    return out
