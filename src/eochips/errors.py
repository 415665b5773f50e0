"""The eochips exception hierarchy.

Every error eochips raises on purpose derives from :class:`EochipsError`::

    EochipsError
    ├── RecipeError (ValueError)        bad recipe: unknown key, wrong type, bad value
    ├── AOIError (ValueError)           AOI is not valid GeoJSON / empty / unusable
    ├── CatalogError (RuntimeError)     a catalog could not be opened or searched
    │   └── NoScenesError               a search returned nothing
    ├── ProfileError (KeyError)         unknown profile, band or asset
    ├── LabelError (ValueError)         label raster / vectors unusable, strict reclass failure
    ├── ReadError (OSError)             an asset could not be read
    │   └── TransientReadError          ... but trying again may succeed
    └── OutputError (OSError)           the output folder cannot be written

The CLI maps user-input errors (everything but :class:`ReadError`) to exit code 2 and
prints ``error: <message>`` with no traceback. Subclasses also inherit the matching
builtin so callers that catch ``ValueError`` or ``OSError`` keep working (the habit of
``rasterio.errors.RasterioIOError``).
"""

from __future__ import annotations


class EochipsError(Exception):
    """Root of every error eochips raises on purpose."""

    exit_code: int = 2


class RecipeError(EochipsError, ValueError):
    """The recipe is malformed: the message names the field and what would be valid."""


class AOIError(EochipsError, ValueError):
    """The area of interest is not usable (invalid, empty, wrong CRS)."""


class CatalogError(EochipsError, RuntimeError):
    """A STAC catalog could not be opened or searched."""


class NoScenesError(CatalogError):
    """A search matched no scene."""


class ProfileError(EochipsError, KeyError):
    """Unknown collection profile, band name or asset key."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class LabelError(EochipsError, ValueError):
    """Labels cannot be used (no overlap, unknown codes in strict mode, bad vector file)."""


class ReadError(EochipsError, OSError):
    """An asset could not be read (permanent: 404, corrupt file)."""

    exit_code = 1


class TransientReadError(ReadError):
    """An asset read failed in a way that a retry may fix (5xx, 429, reset, timeout)."""


class OutputError(EochipsError, OSError):
    """The output location cannot be written."""
