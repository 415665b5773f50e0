"""Loading recipes: YAML, ``${VAR}`` expansion, ``--set`` overrides, version upgrades, path
resolution, and one error line per problem.

The flow of :func:`load_recipe`::

    YAML text --safe load, checked (no duplicate key, bounded aliases and nesting)--> mapping
    --overrides (--set a.b.0.c=v)--> --${VAR} expansion (an unset VAR without default: error)-->
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


def _expand(obj: Any, key: str = "") -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in strings (as in the shell: the default when VAR is
    unset or empty). ``${VAR}`` without a default and VAR unset is an error naming the key. A
    variable whose name says it is a credential (``..._TOKEN``, ``..._KEY``, ...) is recorded so
    that :func:`eochips.search.redact` keeps its value out of every output.

    Raises
    ------
    RecipeError
        A ``${VAR}`` without a default whose variable is not set.
    """
    if isinstance(obj, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if default is None and name not in os.environ:
                raise RecipeError(f"recipe field {key or '(top level)'!r}: environment variable {name} is not set "
                                  f"(set it, or give a default: ${{{name}:-value}})")
            return _expand_var(m)

        return _ENV.sub(sub, obj)
    if isinstance(obj, list):
        return [_expand(v, f"{key}.{i}" if key else str(i)) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _expand(v, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
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
        When the name is neither an existing file nor a built-in recipe; a folder; a file that
        cannot be read or is not UTF-8 (naming the byte offset).
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.is_dir():
            raise RecipeError(f"recipe {str(p)!r} is a folder, not a recipe file (a .yaml file or a built-in recipe name)")
        if not p.is_file():
            raise RecipeError(f"recipe file {str(p)!r} does not exist; built-in recipes: {', '.join(builtin_recipes())}")
        return _read_text(p), p.resolve().parent
    name = str(name_or_path)
    if name in builtin_recipes():
        return (resources.files("eochips") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"), None
    raise RecipeError(f"unknown recipe {name!r}: not a file and not one of the built-in recipes ({', '.join(builtin_recipes())})")


def _read_text(p: Path) -> str:
    """The UTF-8 text of a recipe file (one error line naming the file otherwise)."""
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise RecipeError(f"recipe file {str(p)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe file {str(p)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None


# --------------------------------------------------------------------------------------
# overrides

def set_dotted(data: dict, key: str, value: Any) -> dict:
    """Return a copy of ``data`` with ``a.b.c`` set to ``value``; intermediate mappings are
    created, and an integer part indexes a list (``masks.sources.0.kind``; ``-1`` the last item).

    Raises
    ------
    RecipeError
        A part crosses a value that is neither a mapping nor a list, indexes past a list's end,
        or indexes a list field the (version-2) recipe does not set.
    """
    if not isinstance(data, dict):
        raise RecipeError("recipe: expected a mapping at the top level")
    parts = key.split(".")
    if data.get("version") == 2:
        _check_missing_list(data, parts, key)
    return _set(data, parts, value, key)


def _check_missing_list(data: dict, parts: list[str], key: str) -> None:
    """Refuse ``a.b.0`` when ``a.b`` is a list field the recipe does not set (there is no item
    0 to set; setting it would make a mapping ``{"0": ...}``)."""
    cur: Any = data
    for j, part in enumerate(parts):
        if cur is None and j > 0 and re.fullmatch(r"-?\d+", part):
            alts = _field_alts(data, parts[:j])
            if any(typing.get_origin(a) in (list, tuple) for a in alts) and not any(
                    typing.get_origin(a) is dict or (isinstance(a, type) and issubclass(a, BaseModel)) for a in alts):
                field = ".".join(parts[:j])
                raise RecipeError(f"--set {key!r}: {field!r} is not set in the recipe, so it has no item {part}; "
                                  f"set the whole list, e.g. --set '{field}=[...]'")
            return
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and re.fullmatch(r"-?\d+", part) and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return


def _field_alts(data: Any, loc: list[str]) -> list[Any]:
    """The alternatives of the annotation of the recipe field at ``loc`` (followed through
    ``data`` for tagged variants), or [] when it is not a known field."""
    ann, cur = Recipe, data
    for part in loc:
        alts = _unwrap(ann)
        models = [a for a in alts if isinstance(a, type) and issubclass(a, BaseModel)]
        model = _model_for(alts, cur) or (models[0] if len(models) == 1 else None)
        if model is not None:
            if part not in model.model_fields:
                return []
            ann = model.model_fields[part].annotation
        else:
            inner = next((typing.get_args(a)[-1] for a in alts if typing.get_origin(a) in (list, dict)), None)
            if inner is None:
                return []
            ann = inner
        cur = cur.get(part) if isinstance(cur, dict) else None
    return _unwrap(ann)


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
        Naming the first invalid field and what would be valid; a ``${VAR}`` without a default
        whose variable is not set, naming the field and the variable.
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


MAX_ALIAS_VALUES = 100_000
"""Most values YAML aliases may add to a recipe (``*a`` repeats its anchor's values; a few
hundred bytes of nested aliases can stand for 10^8 values)."""
MAX_DEPTH = 100
"""Most levels of nesting in a recipe."""


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that checks each document's node tree before any
    value is built: no duplicate key, at most :data:`MAX_ALIAS_VALUES` values added by aliases,
    no alias inside itself, at most :data:`MAX_DEPTH` levels (:func:`_check_tree`)."""

    def compose_document(self):
        node = super().compose_document()
        _check_tree(node)
        return node


class _TreeError(Exception):
    """A problem of the node tree: the message and the node it is about."""

    def __init__(self, message: str, node: yaml.Node):
        super().__init__(message)
        self.node = node


def _check_tree(root: yaml.Node) -> None:
    """Size, duplicate keys and recursion of a composed YAML node tree (aliases are the same
    node object seen again: each is checked once, its size counted at every use).

    Raises
    ------
    _TreeError
        Naming the problem and the dotted key where it is.
    """
    sizes: dict[int, int] = {}
    busy: set[int] = set()
    distinct = 0

    def size(node: yaml.Node, key: str, depth: int) -> int:
        nonlocal distinct
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in busy:
            raise _TreeError(f"key {key or '(top level)'!r} holds an alias of itself (a recursive structure)", node)
        if depth > MAX_DEPTH:
            raise _TreeError(f"key {key!r} is nested more than {MAX_DEPTH} levels deep", node)
        busy.add(id(node))
        distinct += 1
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                n += size(item, f"{key}.{i}" if key else str(i), depth + 1)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for k, v in node.value:
                name = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
                where = f"{key}.{name}" if key else name
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if name in seen:
                        first = seen[name].start_mark.line + 1
                        raise _TreeError(f"duplicate key {where!r} (first at line {first}); give each key once", k)
                    seen[name] = k
                n += size(k, where, depth + 1) + size(v, where, depth + 1)
        busy.discard(id(node))
        sizes[id(node)] = n
        if n - distinct > MAX_ALIAS_VALUES:
            raise _TreeError(f"key {key or '(top level)'!r}: its aliases expand to more than {MAX_ALIAS_VALUES} values "
                             "(nested YAML aliases?); write the values out or use fewer aliases", node)
        return n

    size(root, "", 0)


def read_yaml(text: str, name: str) -> Any:
    """Parse recipe YAML safely: no Python tags, no duplicate keys, bounded aliases and nesting
    (:class:`_RecipeLoader`).

    Raises
    ------
    RecipeError
        Not valid YAML, with the line and column; a duplicate key, an alias bomb or a recursive
        alias, naming the key and the line.
    """
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except _TreeError as exc:
        raise RecipeError(f"recipe {name!r} at line {exc.node.start_mark.line + 1}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {name!r} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise RecipeError(f"recipe {name!r} is nested too deeply (more than {MAX_DEPTH} levels)") from None


def parse_set_value(key: str, text: str) -> Any:
    """The value of ``--set KEY=TEXT``, read as YAML like the recipe (``32``, ``[1, 2]``, ``null``).

    Raises
    ------
    RecipeError
        TEXT is not valid YAML (an unclosed ``[``, a tab, a ``!!python`` tag), naming the key.
    """
    try:
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except _TreeError as exc:
        raise RecipeError(f"--set {key!r}: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"--set {key!r}: the value {text!r} is not valid YAML ({problem}); "
                          "quote a string, e.g. --set 'name=\"my name\"'") from None
    except RecursionError:
        raise RecipeError(f"--set {key!r}: the value is nested too deeply") from None


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
        A file that cannot be read or is not UTF-8; malformed YAML, a duplicate key, an alias
        bomb (:func:`read_yaml`); an unknown key, a wrong type, a bad value or an unset
        ``${VAR}``; a ``--set`` key that cannot be set.
    """
    text, base = recipe_text(name_or_path)
    data = read_yaml(text, str(name_or_path))
    for key, value in (overrides or {}).items():
        data = set_dotted(data, key, value)
    return parse_recipe(data, base, from_cwd=tuple(overrides or {}))


SAMPLE_VAR = "EOCHIPS_SAMPLE_DIR"
"""The variable the demo recipe reads its embedded sample from (default ``sample-data``)."""


def check_sample_data(text: str, name: str) -> None:
    """A recipe that reads the embedded sample (``${EOCHIPS_SAMPLE_DIR:-sample-data}``, the demo)
    needs it built first: say how, before the plan fails on a missing catalog or label file.

    Raises
    ------
    RecipeError
        The sample folder (``$EOCHIPS_SAMPLE_DIR``, else ``sample-data`` in the working directory)
        has no ``catalog.json``; the message gives the ``eochips sample-data`` command.
    """
    if "${" + SAMPLE_VAR not in text:
        return
    folder = Path(os.environ.get(SAMPLE_VAR) or "sample-data")
    if (folder / "catalog.json").is_file():
        return
    where = f"{SAMPLE_VAR}={os.environ[SAMPLE_VAR]}" if os.environ.get(SAMPLE_VAR) else f"{SAMPLE_VAR} unset: ./sample-data"
    raise RecipeError(f"recipe {name!r} reads the embedded sample, which is not built at {str(folder.resolve())!r} ({where}): "
                      f"build it with 'eochips sample-data --output {folder}' (make demo does both), or point {SAMPLE_VAR} at it")


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
