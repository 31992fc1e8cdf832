"""Typed config machinery: a tree of dataclasses <-> plain dicts, YAML files and `key.sub=value` overrides.

Type hints are the schema: `int`, `float`, `bool`, `str`, `Path`, `Literal[...]`, `X | None`, unions (tried in
order), `list[X]`, `tuple[X, Y]`, `tuple[X, ...]`, `dict[K, V]`, `Any` and nested dataclasses. Values are checked,
not guessed: the string "3" in a YAML file is not an int and `1` is not a bool. Command-line overrides are the one
lenient source, because the shell has no types: `name=123` for a `str` field is the text "123".

YAML scalars follow YAML 1.2 (see `_Loader`): `1e-4` is a float and `no` is the string "no".
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["ConfigError", "apply_overrides", "config_hash", "from_dict", "load_config", "parse_override", "to_dict"]


class ConfigError(ValueError):
    """A config file, dict or override that does not fit the dataclass tree; the message names the dotted key."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: `1e-4` is a float (1.1: a string), only true/false are bools (1.1: also
    yes/no/on/off, so `mixed_precision: no` would be False), and `0123` / `1:30` stay strings (1.1: octal 83 and
    sexagesimal 90)."""


_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o[0-7_]+)$")
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))

_NONE_TYPE = type(None)
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


class _Mismatch(Exception):
    """Internal: a value does not fit a hint (unions catch it and try the next arm)."""


# ---------------------------------------------------------------------------------------------------- hints


@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """The init fields of dataclass `cls` -> (field, resolved type hint)."""
    hints = get_type_hints(cls)
    return {f.name: (f, hints.get(f.name, Any)) for f in dataclasses.fields(cls) if f.init}


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "Any"
    if hint is _NONE_TYPE or hint is None:
        return "None"
    if _is_union(hint):
        return " | ".join(_type_name(a) for a in get_args(hint))
    origin = get_origin(hint)
    if origin is Literal:
        return "one of [" + ", ".join(repr(a) for a in get_args(hint)) + "]"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if dataclasses.is_dataclass(hint):
        return f"a mapping for {hint.__name__}"
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _section_class(hint: Any) -> type | None:
    """The dataclass a hint holds (`Sub` or `Sub | None`), else None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if _is_union(hint):
        classes = [a for a in get_args(hint) if dataclasses.is_dataclass(a) and isinstance(a, type)]
        if len(classes) == 1:
            return classes[0]
    return None


def _free_form(hint: Any) -> bool:
    """Whether keys below a field with this hint are the user's (dict / Any), not the schema's."""
    if hint is Any or hint is dict or get_origin(hint) in (dict, Mapping):
        return True
    return _is_union(hint) and any(_free_form(a) for a in get_args(hint))


def _unknown_key(key: Any, path: str, valid: Sequence[str]) -> ConfigError:
    full = _join(path, key)
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{_join(path, close[0])}'?"
    else:
        hint = "valid keys: " + (", ".join(sorted(valid)) or "none")
    return ConfigError(f"unknown config key '{full}' ({hint})")


# ---------------------------------------------------------------------------------------------------- convert


def _convert(value: Any, hint: Any, key: str, cli: bool, raw: str | None) -> Any:
    """`value` checked against (and lightly coerced to) `hint`; raises _Mismatch or ConfigError.

    `cli`: the value came from a command-line override, so strings may stand for numbers and numbers for strings;
    `raw` is the override's text when `value` is the whole override value."""
    if hint is Any or hint is object:
        return value
    if value is None:
        if hint is None or hint is _NONE_TYPE or (_is_union(hint) and _NONE_TYPE in get_args(hint)):
            return None
        raise _Mismatch
    if _is_union(hint):
        arms = [a for a in get_args(hint) if a is not _NONE_TYPE]
        specific: dict[int, ConfigError] = {}  # arms whose shape fit but whose contents did not
        for lenient in (False, True) if cli else (False,):
            for i, arm in enumerate(arms):
                try:
                    return _convert(value, arm, key, lenient, raw)
                except _Mismatch:
                    continue
                except ConfigError as e:
                    specific.setdefault(i, e)
        if len(specific) == 1:
            raise next(iter(specific.values()))
        raise _Mismatch
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        for allowed in args:
            if type(value) is type(allowed) and value == allowed:
                return allowed
        if cli and isinstance(value, (str, int, float)):
            text = raw if raw is not None else str(value)
            for allowed in args:
                if str(allowed) == text:
                    return allowed
        raise ConfigError(
            f"config key '{key}': expected one of [{', '.join(repr(a) for a in args)}], got {_show(value)}"
        )
    if origin in (list, Sequence) or hint is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = args[0] if args else Any
        return [_convert_item(v, item, f"{key}[{i}]", cli) for i, v in enumerate(value)]
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert_item(v, args[0], f"{key}[{i}]", cli) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_convert_item(v, a, f"{key}[{i}]", cli) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        kt, vt = args if args else (Any, Any)
        return {
            _convert_item(k, kt, f"{key}.<key>", cli): _convert_item(v, vt, _join(key, k), cli)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _from_dict(hint, value, key, {} if not cli else None)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if cli and isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.lower() in _TRUE_WORDS
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if cli and isinstance(value, str) and re.fullmatch(r"[-+]?[0-9_]+", value.strip()):
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if cli and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        if cli and isinstance(value, (int, float, bool)):
            return raw if raw is not None else str(value)
        raise _Mismatch
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    raise ConfigError(f"config key '{key}': unsupported type hint {hint!r}")


def _convert_item(value: Any, hint: Any, key: str, cli: bool) -> Any:
    """Convert a nested value, turning a mismatch into the error that names this exact element."""
    try:
        return _convert(value, hint, key, cli, None)
    except _Mismatch:
        raise ConfigError(f"config key '{key}': expected {_type_name(hint)}, got {_show(value)}") from None


def _from_dict(cls: type, data: Mapping, path: str, cli: Mapping[str, str] | None) -> Any:
    """`cli` maps dotted keys set on the command line to their raw text; None: everything below is from the CLI."""
    if not isinstance(data, Mapping):
        where = f"config section '{path}'" if path else "config"
        raise ConfigError(f"{where} must be a mapping for {cls.__name__}, got {_show(data)}")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(key, path, list(fields))
    kwargs = {}
    for name, (f, hint) in fields.items():
        key = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required config key '{key}' ({_type_name(hint)})")
            continue
        value = data[name]
        from_cli = cli is None or key in cli
        raw = None if cli is None else cli.get(key)
        section = _section_class(hint)
        if section is not None and isinstance(value, Mapping):
            below = None if cli is None or key in cli else cli
            kwargs[name] = _from_dict(section, value, key, below)
            continue
        try:
            kwargs[name] = _convert(value, hint, key, from_cli, raw)
        except _Mismatch:
            raise ConfigError(f"config key '{key}': expected {_type_name(hint)}, got {_show(value)}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a __post_init__ check of the dataclass itself
        raise ConfigError(f"config section '{path or cls.__name__}': {e}") from e


# ---------------------------------------------------------------------------------------------------- public


def from_dict(cls: type, data: Mapping, path: str = "", *, cli: Mapping[str, str] | None = None) -> Any:
    """Build dataclass `cls` (and the tree below it) from plain dicts, checking every value against its hint.

    Missing keys take the field defaults; unknown keys, wrong types, bad Literal values and None where the hint
    does not allow it raise ConfigError naming the dotted key (prefixed by `path`). `cli` maps the dotted keys
    whose values came from command-line overrides to their raw text: those may be coerced ("3" -> 3, 123 -> "123").
    """
    return _from_dict(cls, data, path, dict(cli or {}))


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-serialisable data: dicts, lists (from tuples too), str for Path."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(obj: Any) -> str:
    """12 hex digits of sha256 over the canonical JSON (sorted keys) of `to_dict(obj)`; equal configs, equal hash."""
    text = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _split_override(text: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must have the form key=value, e.g. rollout.steps=16 or optim.lr=1e-4")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: key {key!r} has an empty part; use dotted keys like a.b.c")
    return key, raw.strip()


def _parse_value(text: str, raw: str) -> Any:
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {text!r}: value {raw!r} is not valid YAML ({e.__class__.__name__}); "
            f"quote strings with special characters, e.g. key='a: b'"
        ) from None


def parse_override(text: str) -> tuple[str, Any]:
    """`"a.b=3"` -> `("a.b", 3)`; the value is read by YAML rules (`1e-4`, `true`, `[1, 2]`, `null`, `flow_grpo`)."""
    key, raw = _split_override(text)
    return key, _parse_value(text, raw)


def _check_key(cls: type, key: str) -> None:
    """Raise ConfigError unless dotted `key` names a field in the tree of `cls` (or lies under a dict field)."""
    path = ""
    current: type | None = cls
    for part in key.split("."):
        if current is None:
            raise ConfigError(f"config key '{key}': '{path}' is not a section (it has no sub-keys)")
        fields = _fields(current)
        if part not in fields:
            raise _unknown_key(part, path, list(fields))
        hint = fields[part][1]
        path = _join(path, part)
        if _free_form(hint):
            return
        current = _section_class(hint)


def _apply(
    data: Mapping, overrides: Sequence[str], cls: type | None, legacy_keys: Sequence[str] = ()
) -> tuple[dict, dict[str, str]]:
    out = copy.deepcopy(dict(data))
    raws: dict[str, str] = {}
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got the string {overrides!r}")
    for text in overrides:
        key, raw = _split_override(text)
        value = _parse_value(text, raw)
        if cls is not None and key not in legacy_keys:
            _check_key(cls, key)
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {text!r}: '{where}' holds {_show(child)}, not a mapping")
            node = child
        node[parts[-1]] = value
        raws = {k: v for k, v in raws.items() if not k.startswith(key + ".")}
        raws[key] = raw
    return out, raws


def apply_overrides(data: Mapping, overrides: Sequence[str], cls: type | None = None) -> dict:
    """A copy of nested dict `data` with each `key.sub=value` override set (sub-dicts created as needed).

    With `cls`, each dotted key is first checked against the dataclass tree (unknown -> ConfigError with the
    nearest valid key). Values are parsed by YAML rules and type-checked later, by from_dict / load_config."""
    return _apply(data, overrides, cls)[0]


def load_config(
    cls: type,
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    legacy_keys: Sequence[str] = (),
    migrate: Callable[[dict], dict] | None = None,
) -> Any:
    """YAML file `path` (None: the defaults) + `key.sub=value` overrides -> a checked `cls` tree.

    `legacy_keys`: dotted keys of earlier versions that overrides may still set; `migrate(data)` rewrites the
    merged raw dict (file + overrides) into today's keys before it is checked."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"YAML syntax error in {where}: {problem}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text ({e})") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"config file {path} must hold a mapping of sections at the top level, got {type(data).__name__}"
            )
    data, raws = _apply(data, overrides, cls, legacy_keys)
    if migrate is not None:
        data = migrate(data)
        raws = {k: v for k, v in raws.items() if k not in legacy_keys}
    return from_dict(cls, data, cli=raws)
