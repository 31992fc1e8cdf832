"""Build a `RewardModel` from a spec: a reward name, `package.module:ClassName`, or reward-server URLs.

    build_reward("ocr")                                   # built-in, default options
    build_reward("ocr?mode=rec&num_threads=2")            # options as a query string (values parsed as JSON)
    build_reward({"name": "ocr", "mode": "rec"})          # a dict: "name" plus options
    build_reward("my_pkg.rewards:Aesthetic?scale=2")      # any importable RewardModel subclass or factory
    build_reward("http://127.0.0.1:8123")                 # a RewardClient; several URLs separated by commas

Names: the generic built-ins (`BUILTIN_REWARDS`: OCR, CLIP-style) and whatever `register_reward` added. This
package knows no task: a task registers its own rewards (`register_reward("shapes", "pkg.module:Class")`) when
its registry module is imported, so a name like "shapes" is known in a process that imported it (the trainer,
the `vgpo-fast` command). `resolve_spec` turns a name into its explicit `package.module:ClassName` form, which
builds in any process: `ProcessReward` sends that to its child. See docs/architecture.md (layering).

Targets are imported only when asked for, so a missing optional dependency (rapidocr for 'ocr') breaks only
the reward that needs it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from vgpo_fast.rewards.base import RewardModel

__all__ = [
    "BUILTIN_REWARDS",
    "available_rewards",
    "build_reward",
    "is_server_spec",
    "parse_spec",
    "register_reward",
    "resolve_spec",
]

# Generic built-in name -> "module:attribute".
BUILTIN_REWARDS: dict[str, str] = {
    "ocr": "vgpo_fast.rewards.ocr:OCRReward",
    "clipscore": "vgpo_fast.rewards.clip:CLIPScore",  # needs model_dir=<local checkpoint>
    "pickscore": "vgpo_fast.rewards.clip:PickScore",  # needs model_dir=... (and processor_dir=...)
}

RewardTarget = str | Callable[..., "RewardModel"]
_REWARDS: dict[str, RewardTarget] = dict(BUILTIN_REWARDS)  # every known name: built-ins + registered
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def register_reward(name: str, target: RewardTarget, *, replace: bool = False) -> None:
    """Make `name` a reward spec name: `build_reward(name)` builds `target`, a `"package.module:ClassName"` string
    (imported when first built) or a `RewardModel` subclass or factory (called with the spec's options).

    Registering a name again with the same target does nothing; with another target it raises ValueError unless
    `replace=True`. A string target is what a child process or a reward server can import; `resolve_spec` turns a
    class target into that form when the class is importable under its `__module__` and `__qualname__`.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"reward name must be letters, digits, '_', '.' or '-' (not starting with a digit or "
            f"punctuation), got {name!r}"
        )
    if isinstance(target, str):
        if not _TARGET.fullmatch(target):
            raise ValueError(f"reward target for {name!r} must be 'package.module:ClassName', got {target!r}")
    elif not callable(target):
        raise ValueError(
            f"reward target for {name!r} must be a 'package.module:ClassName' string, a class or a "
            f"function, got {type(target).__name__}"
        )
    current = _REWARDS.get(name)
    if current is not None and current != target and not replace:
        raise ValueError(
            f"reward name {name!r} is already registered for {_describe(current)}; pass "
            f"replace=True to register {_describe(target)} instead"
        )
    _REWARDS[name] = target


def available_rewards() -> list[str]:
    """The known reward names: the built-ins and the registered ones (whether or not their optional
    dependencies are installed)."""
    return sorted(_REWARDS)


def _describe(target: RewardTarget) -> str:
    if isinstance(target, str):
        return repr(target)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def _parse_value(text: str) -> Any:
    """'2' -> 2, '0.5' -> 0.5, 'true' -> True, 'null'/'none' -> None, '[1,2]' -> [1, 2], else the string."""
    if text.lower() == "none":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name or target, options) of a spec string `name?k=v&k2=v2` or a dict `{"name": ..., **options}`."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"reward spec dict needs a 'name' string, got keys {sorted(spec)}")
        if isinstance(options.get("options"), Mapping):
            options.update(options.pop("options"))
        return name, options
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward spec must be a non-empty string or a dict, got {spec!r}")
    name, _, query = spec.strip().partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise ValueError(f"reward spec {spec!r}: options must be 'key=value' pairs joined by '&'") from None
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(f"reward spec {spec!r}: option {key!r} given twice")
        options[key] = _parse_value(value)
    return name, options


def _load_target(target: str, spec: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward spec {spec!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(f"reward spec {spec!r}: cannot import module {module_name!r} ({exc})") from exc
        raise  # the module exists but one of its own imports is missing: show the real cause
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward spec {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _check_options(factory: Any, options: dict[str, Any], spec: str) -> None:
    """Missing required options and unknown ones (named with the nearest valid one) are errors."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid = [n for n, p in params.items() if p.kind in named]
    missing = [n for n in valid if params[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise ValueError(
            f"reward spec {spec!r}: missing option {missing[0]!r} (give it as '?{missing[0]}=...' or in the dict)"
        )
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"reward spec {spec!r}: unknown option {key!r}{hint} (valid: {', '.join(valid)})")


def is_server_spec(spec: Any) -> bool:
    """Whether `spec` names reward-server URLs (a `RewardClient`) rather than a reward built in this process."""
    return isinstance(spec, str) and spec.strip().startswith(("http://", "https://"))


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_REWARDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(
        f"unknown reward {name!r}{hint}: known names are {', '.join(available_rewards())} (more are "
        f"added by register_reward, e.g. a task's rewards when its registry module is imported); "
        f"or give 'package.module:ClassName' or a reward server URL 'http://host:port'"
    )


def _target_string(name: str, target: RewardTarget) -> str:
    """`target` as "module:attr"; a class or function must be importable under that name to the same object."""
    if isinstance(target, str):
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    text = f"{module}:{qualname}"
    try:
        ok = (
            module not in (None, "__main__", "__mp_main__")
            and qualname is not None
            and "<" not in qualname
            and _load_target(text, text) is target
        )
    except (ValueError, ImportError):
        ok = False
    if not ok:
        raise ValueError(
            f"reward {name!r} is registered as {target!r}, which another process cannot import by "
            f"name; register it as a 'package.module:ClassName' string instead"
        )
    return text


def resolve_spec(spec: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """`spec` with a reward name replaced by its explicit `package.module:ClassName` target, options unchanged:
    a spec that `build_reward` accepts in a process that never registered the name (a spawned child, a reward
    server started on its own). Targets and reward-server URLs come back as they are; dicts as a new dict.

        resolve_spec("ocr?mode=rec")                 # 'vgpo_fast.rewards.ocr:OCRReward?mode=rec'
        resolve_spec({"name": "ocr", "mode": "rec"}) # {'name': 'vgpo_fast.rewards.ocr:OCRReward', 'mode': 'rec'}

    An unknown name raises the same ValueError as `build_reward`."""
    name, _ = parse_spec(spec)  # validates the spec's form
    if is_server_spec(name) or ":" in name:
        return dict(spec) if isinstance(spec, Mapping) else spec
    if name not in _REWARDS:
        raise _unknown(name)
    target = _target_string(name, _REWARDS[name])
    if isinstance(spec, Mapping):
        return {**spec, "name": target}
    _, sep, query = spec.strip().partition("?")
    return target + sep + query


def build_reward(spec: str | Mapping[str, Any] | RewardModel, **overrides: Any) -> RewardModel:
    """A `RewardModel` from `spec` (see the module docstring); `overrides` go over the spec's options."""
    from vgpo_fast.rewards.base import RewardModel

    if isinstance(spec, RewardModel):
        if overrides:
            raise ValueError("options cannot be applied to an already built RewardModel")
        return spec
    name, options = parse_spec(spec)
    options.update(overrides)
    shown = spec if isinstance(spec, str) else json.dumps(dict(spec), default=str)
    if is_server_spec(name):
        from vgpo_fast.rewards.client import RewardClient

        options["urls"] = [u.strip() for u in name.split(",") if u.strip()]
        _check_options(RewardClient, options, shown)
        return RewardClient(**options)
    if ":" in name:
        factory = _load_target(name, shown)
    elif name in _REWARDS:
        target = _REWARDS[name]
        factory = _load_target(target, shown) if isinstance(target, str) else target
    else:
        raise _unknown(name)
    if not callable(factory):
        raise ValueError(f"reward spec {shown!r}: {name!r} is not a class or a function")
    _check_options(factory, options, shown)
    reward = factory(**options)
    if not isinstance(reward, RewardModel):
        raise ValueError(f"reward spec {shown!r}: {name!r} built a {type(reward).__name__}, not a RewardModel")
    return reward
