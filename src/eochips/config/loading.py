"""Loading recipes: YAML, ``${VAR}`` expansion, ``--set`` overrides, version upgrades, path
resolution, and one error line per problem.

The flow of :func:`load_recipe`::

    YAML text --safe_load--> mapping --overrides (--set a.b.0.c=v)--> --${VAR} expansion-->
    version 1? --validate as v1, upgrade (says so once)--> mapping of version 2
    --resolve path fields--> Recipe.model_validate --> Recipe

Every validation problem becomes one :class:`~eochips.errors.RecipeError` whose message
names the field (as the user wrote it) and what would be valid.
"""

from __future__ import annotations

import math
import os
import re
import typing
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import RecipeError
from .models import PathMarker, Recipe

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RecipeUpgradeWarning(FutureWarning):
    """A version-1 recipe was read and upgraded to version 2 (shown once per process)."""


def _expand(obj: Any) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in strings (as in the shell: the default when VAR is unset or empty).
    A variable whose name says it is a credential (``..._TOKEN``, ``..._KEY``, ...) is recorded so
    that :func:`eochips.search.redact` keeps its value out of every output."""
    if isinstance(obj, str):
        return _ENV.sub(_expand_var, obj)
    if isinstance(obj, list):
        return [_expand(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _expand(v) for k, v in obj.items()}
    return obj


def _expand_var(m: re.Match) -> str:
    from ..search.auth import is_secret_var, remember_secret_var

    value = os.environ.get(m.group(1))
    if value and is_secret_var(m.group(1)):
        remember_secret_var(m.group(1))
    return value or (m.group(2) or "")


def builtin_recipes() -> list[str]:
    """Names of the built-in recipes shipped in ``eochips/recipes/*.yaml``."""
    root = resources.files("eochips") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_text(name_or_path: str | os.PathLike) -> tuple[str, Path | None]:
    """Return the YAML text of a built-in recipe name or a recipe file, and its folder.

    Raises
    ------
    RecipeError
        When the name is neither an existing file nor a built-in recipe.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise RecipeError(f"recipe file {str(p)!r} does not exist; built-in recipes: {', '.join(builtin_recipes())}")
        return p.read_text(encoding="utf-8"), p.resolve().parent
    name = str(name_or_path)
    if name in builtin_recipes():
        return (resources.files("eochips") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"), None
    raise RecipeError(f"unknown recipe {name!r}: not a file and not one of the built-in recipes ({', '.join(builtin_recipes())})")


# --------------------------------------------------------------------------------------
# overrides

def set_dotted(data: dict, key: str, value: Any) -> dict:
    """Return a copy of ``data`` with ``a.b.c`` set to ``value``; intermediate mappings are
    created, and an integer part indexes a list (``masks.sources.0.kind``; ``-1`` the last item).

    Raises
    ------
    RecipeError
        A part crosses a value that is neither a mapping nor a list, or indexes past a list's end.
    """
    if not isinstance(data, dict):
        raise RecipeError("recipe: expected a mapping at the top level")
    return _set(data, key.split("."), value, key)


def _set(node: Any, parts: list[str], value: Any, key: str) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        try:
            i = int(head)
        except ValueError:
            raise RecipeError(f"--set {key!r}: {head!r} indexes a list; use a number (0 is the first item)") from None
        if not -len(node) <= i < len(node):
            raise RecipeError(f"--set {key!r}: index {i} is outside the list of {len(node)} item(s)")
        out = list(node)
        out[i] = _set(out[i], rest, value, key) if rest else value
        return out
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise RecipeError(f"--set {key!r}: cannot set {head!r} inside a {type(node).__name__}")
    out = dict(node)
    out[head] = _set(out.get(head), rest, value, key) if rest else value
    return out


# --------------------------------------------------------------------------------------
# path fields

def _unwrap(ann: Any) -> list[Any]:
    """The alternatives of an annotation: Optional/Union members, Annotated kept with metadata."""
    origin = typing.get_origin(ann)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return [a for m in typing.get_args(ann) for a in _unwrap(m)]
    if origin is typing.Annotated:
        base, *meta = typing.get_args(ann)
        if any(isinstance(m, PathMarker) for m in meta):
            return [ann]
        return _unwrap(base)
    return [ann]


def _marker(ann: Any) -> PathMarker | None:
    if typing.get_origin(ann) is typing.Annotated:
        return next((m for m in typing.get_args(ann)[1:] if isinstance(m, PathMarker)), None)
    return None


def _model_for(alts: list[Any], value: Any) -> type[BaseModel] | None:
    """The model among ``alts`` that a mapping ``value`` is meant for (by its ``kind``)."""
    models = [a for a in alts if isinstance(a, type) and issubclass(a, BaseModel)]
    if not isinstance(value, dict) or not models:
        return None
    if len(models) == 1:
        return models[0]
    for m in models:
        kind = m.model_fields.get("kind")
        if kind is not None and value.get("kind") in typing.get_args(kind.annotation):
            return m
    return None


def path_fields(model: type[BaseModel], data: Any, prefix: str = "") -> list[tuple[str, PathMarker]]:
    """Dotted keys of ``data`` that are path fields of ``model`` (found by their type)."""
    out: list[tuple[str, PathMarker]] = []
    if not isinstance(data, dict):
        return out
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        marker = next((m for m in field.metadata if isinstance(m, PathMarker)), None)
        if marker is not None and isinstance(data[name], str):  # pydantic moves a top-level Annotated's metadata here
            out.append((f"{prefix}{name}", marker))
            continue
        out += _walk(field.annotation, data[name], f"{prefix}{name}")
    return out


def _walk(ann: Any, value: Any, key: str) -> list[tuple[str, PathMarker]]:
    out: list[tuple[str, PathMarker]] = []
    for alt in _unwrap(ann):
        m = _marker(alt)
        if m is not None and isinstance(value, str):
            return [(key, m)]
        origin = typing.get_origin(alt)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(alt) or (Any,)
            for i, v in enumerate(value):
                out += _walk(item, v, f"{key}.{i}")
            return out
        if origin is dict and isinstance(value, dict):
            _, item = typing.get_args(alt) or (Any, Any)
            for k, v in value.items():
                out += _walk(item, v, f"{key}.{k}")
            return out
    sub = _model_for(_unwrap(ann), value)
    if sub is not None:
        return path_fields(sub, value, f"{key}.")
    return out


def _get(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def resolve_paths(data: dict, base: Path, from_cwd: tuple[str, ...] = ()) -> dict:
    """Make every relative path field of a version-2 recipe mapping absolute: against ``base``
    (the recipe's folder), or against the working directory for keys under ``from_cwd`` (values
    given with ``--set`` on the command line). URLs (``scheme://``) are left alone."""
    for key, marker in path_fields(Recipe, data):
        v = _get(data, key)
        if not v or "://" in v or os.path.isabs(v):
            continue
        if marker.url_ok and re.match(r"^[a-z][a-z0-9+.-]*:", v):  # e.g. s3:bucket (not a local path)
            continue
        root = Path.cwd() if any(key == k or key.startswith(k + ".") for k in from_cwd) else base
        data = set_dotted(data, key, str((root / v).resolve()))
    return data


# --------------------------------------------------------------------------------------
# errors

def _data_loc(data: Any, loc: tuple) -> tuple[list, int]:
    """The part of a pydantic error location that walks through ``data`` (union member names and
    discriminator tags dropped), and how many parts matched the data."""
    out, cur, matched = [], data, 0
    tagged = False
    for part in loc:
        if isinstance(cur, dict) and cur.get("kind") == part and not tagged:
            tagged = True  # the tag of a discriminated union (pydantic puts it before the member's fields)
            continue
        tagged = False
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
            matched += 1
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            out.append(part)
            cur = cur[part]
            matched += 1
        elif isinstance(part, str) and (part in {"str", "int", "float", "bool", "dict", "list", "none"} or "[" in part
                                        or part[:1].isupper() or part.startswith("function-")):
            continue  # a union member's name
        else:
            out.append(part)  # a key that is missing or not in the data
            cur = None
    return out, matched


def _valid_keys(data: Any, loc: list) -> str:
    """``; valid keys: ...`` for an unknown key at ``loc`` (the model found along the data)."""
    ann, cur = Recipe, data
    for part in loc[:-1]:
        alts = _unwrap(ann)
        model = _model_for(alts, cur)
        if model is not None:
            if part not in model.model_fields:
                return ""
            ann = model.model_fields[part].annotation
        else:
            inner = next((typing.get_args(a)[-1] for a in alts if typing.get_origin(a) in (list, dict)), None)
            if inner is None:
                return ""
            ann = inner
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return ""
    model = _model_for(_unwrap(ann), cur)
    keys = sorted(model.model_fields) if model is not None else []
    return f"; valid keys: {', '.join(keys)}" if keys else ""


def _long_forms(data: Any) -> Any:
    """``data`` with the shorthands the models accept written out (``masks: [...]`` as
    ``masks.sources``, a single ``output.layout`` mapping as a list), so error locations, which
    pydantic gives in the long form, can be followed through it."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(out.get("masks"), list):
        out["masks"] = {"sources": out["masks"]}
    if isinstance(out.get("output"), dict) and isinstance(out["output"].get("layout"), dict):
        out["output"] = dict(out["output"], layout=[out["output"]["layout"]])
    return out


def format_error(exc: ValidationError, data: Any) -> str:
    """One line for a pydantic ValidationError: the most specific problem, naming the field."""
    data = _long_forms(data)
    errs = exc.errors()
    best = max(range(len(errs)), key=lambda i: (_data_loc(data, errs[i]["loc"])[1], -i))
    err = errs[best]
    loc, _ = _data_loc(data, err["loc"])
    where = ".".join(str(x) for x in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = f"recipe field {where!r}: unknown key{_valid_keys(data, loc)}"
    elif kind == "missing":
        msg = f"recipe field {where!r}: required but missing"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tags = ", ".join(sorted(t.strip(" '") for t in ctx.get("expected_tags", "").split(",")))
        msg = f"recipe field {where + '.kind'!r}: unknown kind {ctx.get('tag')!r}; valid: {tags}"
    elif kind == "union_tag_not_found":
        msg = f"recipe field {where!r}: needs a 'kind'"
    else:
        text = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        ref = re.match(r"^([\w-]+(?:\.[\w-]+)+): (.*)$", text, re.S) if not where else None
        if ref:  # a cross-reference check of the whole recipe names its own field
            msg = f"recipe field {ref.group(1)!r}: {ref.group(2)}"
        else:
            msg = f"recipe field {where!r}: {text}{shown}" if where else f"recipe: {text}"
    locs = {tuple(_data_loc(data, e["loc"])[0]) for e in errs}
    mine = tuple(loc)
    others = {x for x in locs if x != mine and mine[:len(x)] != x}  # union siblings of the same field do not count
    return msg + (f" (+{len(others)} more)" if others else "")


# --------------------------------------------------------------------------------------
# parsing

_warned = False


def parse_recipe(data: Any, base_dir: Path | None = None, from_cwd: tuple[str, ...] = ()) -> Recipe:
    """Validate a recipe mapping (already parsed from YAML and overridden).

    A version-1 mapping (``version: 1`` or no ``version``) is validated as version 1 first
    (messages name its fields) and upgraded, with a :class:`RecipeUpgradeWarning` once per
    process. Relative path fields are resolved against ``base_dir`` (the working directory when
    None, and for keys in ``from_cwd``).

    Raises
    ------
    RecipeError
        Naming the first invalid field and what would be valid.
    """
    global _warned
    if not isinstance(data, dict):
        raise RecipeError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    data = _expand(data)
    version = data.get("version", 1)
    if version not in (1, 2):
        raise RecipeError(f"recipe field 'version': {version!r} is not a recipe version this eochips reads (1 or 2)")
    if version == 1:
        from .upgrade import upgrade_v1
        from .v1 import RecipeV1

        try:
            v1 = RecipeV1.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(_format_v1(exc, data)) from None
        data = upgrade_v1(v1)
        from_cwd = tuple(k2 for k in from_cwd for k2 in _v1_keys_to_v2(k, data))
        if not _warned:
            warnings.warn(f"recipe {data['name']!r} is version 1: read through the v1 -> v2 upgrader; "
                          "`eochips upgrade RECIPE` prints it as version 2 (version 1 support ends in eochips 1.0)",
                          RecipeUpgradeWarning, stacklevel=2)
            _warned = True
    data = resolve_paths(data, base_dir or Path.cwd(), from_cwd)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_error(exc, data)) from None


def _format_v1(exc: ValidationError, data: dict) -> str:
    """Version-1 messages, as eochips 0.1 printed them (loc through the v1 models)."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    if err["type"] == "extra_forbidden":
        from .v1 import RecipeV1

        cur: Any = RecipeV1
        for part in err["loc"][:-1]:
            field = getattr(cur, "model_fields", {}).get(part)
            ann = field.annotation if field else None
            cands = [a for a in _unwrap(ann) if isinstance(a, type) and issubclass(a, BaseModel)] if ann else []
            cur = cands[0] if cands else None
        keys = sorted(getattr(cur, "model_fields", {}) or {})
        msg = f"recipe field {loc!r}: unknown key" + (f"; valid keys: {', '.join(keys)}" if keys else "")
    elif err["type"] == "missing":
        msg = f"recipe field {loc!r}: required but missing"
    else:
        text = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        msg = f"recipe field {loc!r}: {text}{shown}" if loc else f"recipe: {text}"
    n = len(exc.errors())
    return msg + (f" (+{n - 1} more)" if n > 1 else "")


def _v1_keys_to_v2(key: str, data: dict) -> list[str]:
    """Where a version-1 ``--set`` key went in version 2: ``search...`` to the search of every
    source made from it (``main`` and seed 000's ``cloud_masks``), ``grid.label_raster`` to
    ``grid.path``; others keep their name."""
    if key == "search" or key.startswith("search."):
        return [f"sources.{src}.{key}" for src in data["sources"]]
    return [{"grid.label_raster": "grid.path", "grid": "grid"}.get(key, key)]


def read_yaml(text: str, name: str) -> Any:
    """Parse recipe YAML safely (no Python tags).

    Raises
    ------
    RecipeError
        Not valid YAML, with the line and column.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {name!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def load_recipe(name_or_path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe (see the module docstring).

    Parameters
    ----------
    name_or_path
        A built-in recipe name (``eochips recipes``) or a YAML file path.
    overrides
        Dotted keys to set before validation, e.g. ``{"units.size": 32, "masks.sources.0.kind": "scl"}``;
        relative paths among them are resolved against the working directory.

    Raises
    ------
    RecipeError
        Malformed YAML, an unknown key, a wrong type or a bad value.
    """
    text, base = recipe_text(name_or_path)
    data = read_yaml(text, str(name_or_path))
    for key, value in (overrides or {}).items():
        data = set_dotted(data, key, value)
    return parse_recipe(data, base, from_cwd=tuple(overrides or {}))


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Recipe` (what ``eochips schema`` prints)."""
    return Recipe.model_json_schema()


def canonical(recipe: Recipe) -> dict[str, Any]:
    """The recipe as JSON-ready data with NaN written as the string ``"nan"`` (JSON has no NaN)."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(recipe.model_dump(mode="python"))
