"""Build a `RewardModel` from a spec: a built-in name, `package.module:ClassName`, or reward-server URLs.

    build_reward("ocr")                                   # built-in, default options
    build_reward("ocr?mode=rec&num_threads=2")            # options as a query string (values parsed as JSON)
    build_reward({"name": "shapes", "mode": "partial"})   # a dict: "name" plus options
    build_reward("my_pkg.rewards:Aesthetic?scale=2")      # any importable RewardModel subclass or factory
    build_reward("http://127.0.0.1:8123")                 # a RewardClient; several URLs separated by commas

Built-ins are imported only when asked for, so a missing optional dependency (rapidocr for 'ocr') breaks only
the reward that needs it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from vgpo_fast.rewards.base import RewardModel

# Built-in name -> "module:attribute".
BUILTIN_REWARDS: dict[str, str] = {
    "ocr": "vgpo_fast.rewards.ocr:OCRReward",
    "shapes": "vgpo_fast.rewards.compositional:CompositionalReward",
    "compositional": "vgpo_fast.rewards.compositional:CompositionalReward",
    "clipscore": "vgpo_fast.rewards.clip:CLIPScore",  # needs model_dir=<local checkpoint>
    "pickscore": "vgpo_fast.rewards.clip:PickScore",  # needs model_dir=... (and processor_dir=...)
}


def available_rewards() -> list[str]:
    """The built-in reward names (whether or not their optional dependencies are installed)."""
    return sorted(BUILTIN_REWARDS)


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
        raise ValueError(f"reward spec {spec!r}: missing option {missing[0]!r} "
                         f"(give it as '?{missing[0]}=...' or in the dict)")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"reward spec {spec!r}: unknown option {key!r}{hint} "
                             f"(valid: {', '.join(valid)})")


def is_server_spec(spec: Any) -> bool:
    """Whether `spec` names reward-server URLs (a `RewardClient`) rather than a reward built in this process."""
    return isinstance(spec, str) and spec.strip().startswith(("http://", "https://"))


def build_reward(spec: str | Mapping[str, Any] | RewardModel, **overrides: Any) -> RewardModel:
    """A `RewardModel` from `spec` (see the module docstring); `overrides` go over the spec's options."""
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
    elif name in BUILTIN_REWARDS:
        factory = _load_target(BUILTIN_REWARDS[name], shown)
    else:
        raise ValueError(f"unknown reward {name!r}: valid built-in names are "
                         f"{', '.join(available_rewards())}, or give 'package.module:ClassName' or a reward "
                         f"server URL 'http://host:port'")
    if not callable(factory):
        raise ValueError(f"reward spec {shown!r}: {name!r} is not a class or a function")
    _check_options(factory, options, shown)
    reward = factory(**options)
    if not isinstance(reward, RewardModel):
        raise ValueError(f"reward spec {shown!r}: {name!r} built a {type(reward).__name__}, "
                         f"not a RewardModel")
    return reward
