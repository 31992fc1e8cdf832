"""train.config_io: dataclass trees <-> dicts, type checks and their messages, overrides, YAML files, hashes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from vgpo_fast.train.config_io import (
    ConfigError,
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)


@dataclass
class Model:
    name: str = "tiny"
    path: str | None = None
    lora: bool = True
    rank: int = 8


@dataclass
class Rollout:
    steps: int = 10
    guidance_scale: float = 4.5
    sde_type: Literal["flow_grpo", "cps"] = "flow_grpo"
    window: tuple[int, int] | None = None
    sizes: list[int] = field(default_factory=lambda: [512, 512])


@dataclass
class Reward:
    reward: str | dict[str, Any] | None = None
    steps: int | str | list[int] = "all"
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Algo:
    name: Literal["vgpo", "flow_grpo"] = "vgpo"
    lr: float = 3e-4
    mode: Literal["no", "bf16"] = "bf16"


@dataclass
class Train:
    model: Model = field(default_factory=Model)
    rollout: Rollout = field(default_factory=Rollout)
    reward: Reward = field(default_factory=Reward)
    algo: Algo = field(default_factory=Algo)
    extra: Model | None = None
    out: Path = Path("runs")
    seed: int = 0


@dataclass
class Pairs:
    p: tuple[int, int] | list[str] | None = None


@dataclass
class Required:
    a: int
    b: int = 2


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------------ from / to dict


def test_defaults_and_round_trip() -> None:
    assert from_dict(Train, {}) == Train()
    cfg = Train(
        model=Model(name="sd35", path="/m", lora=False, rank=4),
        rollout=Rollout(steps=3, guidance_scale=1.0, sde_type="cps", window=(1, 5), sizes=[64]),
        reward=Reward(reward={"name": "ocr", "k": [1, 2]}, steps=[0, 3], weights={"a": 0.5}),
        algo=Algo(name="flow_grpo", lr=1e-5, mode="no"),
        extra=Model(rank=2),
        out=Path("/tmp/x"),
        seed=7,
    )
    plain = to_dict(cfg)
    assert plain["rollout"]["window"] == [1, 5] and plain["out"] == "/tmp/x"
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert from_dict(Train, plain) == cfg
    assert from_dict(Train, yaml.safe_load(yaml.safe_dump(plain))) == cfg


def test_partial_sections_keep_other_defaults() -> None:
    cfg = from_dict(Train, {"rollout": {"steps": 4}, "extra": {}})
    assert cfg.rollout == Rollout(steps=4) and cfg.model == Model() and cfg.extra == Model()


def test_int_accepted_for_float() -> None:
    cfg = from_dict(Train, {"rollout": {"guidance_scale": 3}})
    assert cfg.rollout.guidance_scale == 3.0 and isinstance(cfg.rollout.guidance_scale, float)


def test_unknown_key_nested_with_suggestion() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(Train, {"rollout": {"gudance_scale": 3.0}})
    assert message(e) == "unknown config key 'rollout.gudance_scale' (did you mean 'rollout.guidance_scale'?)"
    with pytest.raises(ConfigError, match=r"unknown config key 'rolout' \(did you mean 'rollout'\?\)"):
        from_dict(Train, {"rolout": {}})
    with pytest.raises(ConfigError, match=r"unknown config key 'model.zzz' \(valid keys: lora, name, path, rank\)"):
        from_dict(Train, {"model": {"zzz": 1}})


def test_path_prefix() -> None:
    with pytest.raises(ConfigError, match=r"'cfg.rollout.stepz' \(did you mean 'cfg.rollout.steps'\?\)"):
        from_dict(Train, {"rollout": {"stepz": 1}}, path="cfg")


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"rollout": {"steps": "3"}}, r"config key 'rollout.steps': expected int, got '3' \(str\)"),
        ({"rollout": {"steps": 3.0}}, r"'rollout.steps': expected int, got 3.0 \(float\)"),
        ({"rollout": {"steps": True}}, r"'rollout.steps': expected int, got True \(bool\)"),
        ({"model": {"lora": 1}}, r"'model.lora': expected bool, got 1 \(int\)"),
        ({"model": {"lora": "true"}}, r"'model.lora': expected bool, got 'true' \(str\)"),
        ({"rollout": {"guidance_scale": "1e-4"}}, r"'rollout.guidance_scale': expected float, got '1e-4' \(str\)"),
        ({"model": {"name": 5}}, r"'model.name': expected str, got 5 \(int\)"),
        ({"rollout": {"sizes": [1, "2"]}}, r"'rollout.sizes\[1\]': expected int, got '2' \(str\)"),
        ({"rollout": {"sizes": 5}}, r"'rollout.sizes': expected list\[int\], got 5 \(int\)"),
        ({"rollout": {"window": [1, 2, 3]}}, r"'rollout.window': expected tuple\[int, int\] \| None, got \[1, 2, 3\]"),
        ({"reward": {"weights": {"a": "x"}}}, r"'reward.weights.a': expected float, got 'x' \(str\)"),
        ({"rollout": 3}, r"'rollout': expected a mapping for Rollout, got 3 \(int\)"),
    ],
)
def test_wrong_type_messages(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Train, data)


def test_bad_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(Train, {"algo": {"name": "ppo"}})
    assert message(e) == "config key 'algo.name': expected one of ['vgpo', 'flow_grpo'], got 'ppo' (str)"


def test_none_only_where_allowed() -> None:
    assert from_dict(Train, {"model": {"path": None}, "extra": None}).model.path is None
    with pytest.raises(ConfigError, match=r"config key 'model.rank': expected int, got None \(NoneType\)"):
        from_dict(Train, {"model": {"rank": None}})
    with pytest.raises(ConfigError, match=r"'rollout': expected a mapping for Rollout, got None"):
        from_dict(Train, {"rollout": None})


def test_union_tried_in_order() -> None:
    assert from_dict(Reward, {"steps": 4}).steps == 4
    assert from_dict(Reward, {"steps": "all"}).steps == "all"
    assert from_dict(Reward, {"steps": [1, 2]}).steps == [1, 2]
    assert from_dict(Reward, {"reward": "ocr"}).reward == "ocr"
    assert from_dict(Reward, {"reward": {"name": "ocr", "x": [1]}}).reward == {"name": "ocr", "x": [1]}
    with pytest.raises(ConfigError, match=r"'steps': expected int \| str \| list\[int\], got 1.5 \(float\)"):
        from_dict(Reward, {"steps": 1.5})
    # An element error inside the one arm whose shape fits is reported as such; otherwise the whole union is named.
    with pytest.raises(ConfigError, match=r"'steps\[1\]': expected int, got 'x' \(str\)"):
        from_dict(Reward, {"steps": [1, "x"]})
    assert from_dict(Pairs, {"p": ["a", "b"]}).p == ["a", "b"]
    assert from_dict(Pairs, {"p": [1, 2]}).p == (1, 2)
    with pytest.raises(ConfigError, match=r"'p': expected tuple\[int, int\] \| list\[str\] \| None, got \[1, 'b'\]"):
        from_dict(Pairs, {"p": [1, "b"]})


def test_required_field_and_non_mapping() -> None:
    assert from_dict(Required, {"a": 1}) == Required(1, 2)
    with pytest.raises(ConfigError, match=r"missing required config key 'a' \(int\)"):
        from_dict(Required, {"b": 1})
    with pytest.raises(ConfigError, match="config must be a mapping for Required, got"):
        from_dict(Required, [1, 2])


def test_config_hash_stable() -> None:
    a, b = Train(), from_dict(Train, {"seed": 0})
    assert config_hash(a) == config_hash(b) == config_hash(to_dict(a))
    assert len(config_hash(a)) == 12
    assert config_hash(a) != config_hash(Train(seed=1))
    assert config_hash({"x": 1, "y": 2}) == config_hash({"y": 2, "x": 1})


# ------------------------------------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b=3", ("a.b", 3)),
        ("lr=1e-4", ("lr", 1e-4)),
        ("lr=3e-4", ("lr", 3e-4)),
        ("lr=-2.5E+3", ("lr", -2500.0)),
        ("x=0.5", ("x", 0.5)),
        ("x=true", ("x", True)),
        ("x=False", ("x", False)),
        ("x=[1,2]", ("x", [1, 2])),
        ("x={a: 1}", ("x", {"a": 1})),
        ("x=null", ("x", None)),
        ("x=flow_grpo", ("x", "flow_grpo")),
        ("x=no", ("x", "no")),
        ("x='3'", ("x", "3")),
        ("x=a=b", ("x", "a=b")),
        (" x = 7 ", ("x", 7)),
    ],
)
def test_parse_override(text: str, expected: tuple) -> None:
    key, value = parse_override(text)
    assert (key, value) == expected and type(value) is type(expected[1])


def test_pyyaml_itself_untouched() -> None:
    assert yaml.safe_load("1e-4") == "1e-4"  # the project loader is a subclass; global PyYAML keeps its rules


@pytest.mark.parametrize("text", ["rollout.steps", "=3", "a..b=1"])
def test_parse_override_bad_form(text: str) -> None:
    with pytest.raises(ConfigError, match="key=value|dotted keys"):
        parse_override(text)


def test_parse_override_bad_yaml() -> None:
    with pytest.raises(ConfigError, match=r"value '\[1, 2' is not valid YAML"):
        parse_override("x=[1, 2")


def test_apply_overrides_nested_and_copy() -> None:
    data = {"rollout": {"steps": 4}, "reward": None}
    out = apply_overrides(
        data, ["rollout.steps=8", "rollout.guidance_scale=1e-1", "model.lora=false", "reward.reward.name=ocr"]
    )
    assert out == {
        "rollout": {"steps": 8, "guidance_scale": 0.1},
        "model": {"lora": False},
        "reward": {"reward": {"name": "ocr"}},
    }
    assert data == {"rollout": {"steps": 4}, "reward": None}
    with pytest.raises(ConfigError, match="'rollout.steps' holds 8 \\(int\\), not a mapping"):
        apply_overrides(out, ["rollout.steps.x=1"])


def test_apply_overrides_checks_keys_against_class() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides({}, ["rollout.gudance_scale=3"], Train)
    assert message(e) == "unknown config key 'rollout.gudance_scale' (did you mean 'rollout.guidance_scale'?)"
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({}, ["seed.x=3"], Train)
    # Keys under dict-typed fields and optional sections are free / checked as appropriate.
    assert apply_overrides({}, ["reward.weights.anything=1", "extra.rank=3"], Train) == {
        "reward": {"weights": {"anything": 1}},
        "extra": {"rank": 3},
    }
    with pytest.raises(ConfigError, match=r"'extra.rnk' \(did you mean 'extra.rank'\?\)"):
        apply_overrides({}, ["extra.rnk=3"], Train)


def test_load_config_overrides_of_every_kind() -> None:
    cfg = load_config(
        Train,
        None,
        [
            "rollout.steps=16",
            "rollout.guidance_scale=7",
            "algo.lr=1e-4",
            "model.lora=false",
            "model.path=null",
            "algo.name=flow_grpo",
            "rollout.window=[2,6]",
            "rollout.sizes=[256]",
            "reward.steps=all",
            "reward.reward={name: ocr}",
            "extra.rank=2",
            "seed=3",
            "out=/tmp/run",
        ],
    )
    assert cfg.rollout == Rollout(steps=16, guidance_scale=7.0, window=(2, 6), sizes=[256])
    assert cfg.algo == Algo(name="flow_grpo", lr=1e-4)
    assert cfg.model == Model(lora=False) and cfg.extra == Model(rank=2) and cfg.seed == 3
    assert cfg.reward.reward == {"name": "ocr"} and cfg.reward.steps == "all" and cfg.out == Path("/tmp/run")


def test_cli_values_are_coerced_but_yaml_values_are_not(tmp_path: Path) -> None:
    # The shell has no types: a numeric-looking name is still a name, `no` is a Literal value, "yes" a bool.
    cfg = load_config(
        Train,
        None,
        [
            "model.name=0123",
            "model.path=42",
            "algo.mode=no",
            "model.lora=yes",
            "rollout.steps='5'",
            "rollout.sizes=['8', 9]",
        ],
    )
    assert cfg.model.name == "0123" and cfg.model.path == "42" and cfg.algo.mode == "no" and cfg.model.lora
    assert cfg.rollout.steps == 5 and cfg.rollout.sizes == [8, 9]
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: 123\n")
    with pytest.raises(ConfigError, match=r"'model.name': expected str, got 123 \(int\)"):
        load_config(Train, f)
    with pytest.raises(ConfigError, match=r"'rollout.steps': expected int, got 'x' \(str\)"):
        load_config(Train, None, ["rollout.steps=x"])
    with pytest.raises(ConfigError, match=r"'algo.name': expected one of \['vgpo', 'flow_grpo'\], got 'ppo'"):
        load_config(Train, None, ["algo.name=ppo"])


# ------------------------------------------------------------------------------------------------ YAML files


def test_load_config_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(
        "rollout:\n  steps: 12\n  guidance_scale: 1e-1\n  window: [1, 4]\n"
        "algo:\n  name: flow_grpo\n  lr: 3e-4\n  mode: no\n"
        "model:\n  lora: true\n"
    )
    cfg = load_config(Train, f, ["rollout.steps=20"])
    assert cfg.rollout == Rollout(steps=20, guidance_scale=0.1, window=(1, 4))
    assert cfg.algo == Algo(name="flow_grpo", lr=3e-4, mode="no") and cfg.model == Model()
    assert load_config(Train, str(f)).rollout.steps == 12
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(Train, tmp_path / "empty.yaml") == Train()
    assert load_config(Train, None) == Train()


def test_load_config_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("rollout:\n  gudance_scale: 3\n")
    with pytest.raises(ConfigError, match=r"'rollout.gudance_scale' \(did you mean 'rollout.guidance_scale'\?\)"):
        load_config(Train, f)


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_config(Train, missing)


def test_load_config_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("rollout:\n  steps: 3\n  window: [1, 2\nseed: 1\n")
    with pytest.raises(ConfigError, match=rf"YAML syntax error in {f}:4:"):
        load_config(Train, f)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just text\n", "3\n"])
def test_load_config_top_level_not_mapping(tmp_path: Path, text: str) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="must hold a mapping of sections at the top level"):
        load_config(Train, f)
