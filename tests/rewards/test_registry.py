"""Reward registry: registration of names, `resolve_spec`, and the layering (rewards/ and rollout/ know no task).

Names registered here are undone after each test (`registry` fixture), so the known-name lists that other tests
match stay as they are.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_rewards import Brightness, Probe

from vgpo_fast.rewards import registry as reg
from vgpo_fast.rewards.base import RewardModel
from vgpo_fast.rewards.registry import build_reward, register_reward, resolve_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(reg, "_REWARDS", dict(reg._REWARDS))  # noqa: SLF001 - registrations end with the test
    return reg


def test_a_registered_string_target_builds_and_resolves(registry) -> None:
    register_reward("probe-test", "helpers_rewards:Probe")
    register_reward("probe-test", "helpers_rewards:Probe")  # the same target again: nothing happens
    assert "probe-test" in registry.available_rewards()
    reward = build_reward("probe-test?delay_s=0.5", nonfinite="drop")
    assert isinstance(reward, Probe) and reward.delay_s == 0.5 and reward.nonfinite == "drop"
    assert resolve_spec("probe-test?delay_s=0.5") == "helpers_rewards:Probe?delay_s=0.5"
    assert resolve_spec(" probe-test ") == "helpers_rewards:Probe"
    spec = {"name": "probe-test", "options": {"delay_s": 0.5}}
    resolved = resolve_spec(spec)
    assert resolved == {"name": "helpers_rewards:Probe", "options": {"delay_s": 0.5}} and resolved is not spec
    assert spec["name"] == "probe-test"  # the caller's dict is left alone
    assert isinstance(build_reward(resolved), Probe)


def test_a_registered_class_resolves_to_its_import_name(registry) -> None:
    register_reward("bright-test", Brightness)
    assert isinstance(build_reward("bright-test"), Brightness)
    assert resolve_spec({"name": "bright-test"}) == {"name": "helpers_rewards:Brightness"}

    class Local(Brightness):
        pass

    register_reward("local-test", Local)
    assert isinstance(build_reward("local-test"), Local)  # builds here
    with pytest.raises(ValueError, match="another process cannot import by name"):
        resolve_spec("local-test")  # but cannot be named to a child process


def test_registration_errors(registry) -> None:
    register_reward("probe-test", "helpers_rewards:Probe")
    with pytest.raises(ValueError, match="already registered for 'helpers_rewards:Probe'; pass replace=True"):
        register_reward("probe-test", "helpers_rewards:Brightness")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("ocr", Brightness)  # the built-ins too
    register_reward("probe-test", "helpers_rewards:Brightness", replace=True)
    assert isinstance(build_reward("probe-test"), Brightness) and not isinstance(build_reward("probe-test"), Probe)
    for bad in ("", "a:b", "x?y", "http://h:1", "1abc", "a,b"):
        with pytest.raises(ValueError, match="reward name must be"):
            register_reward(bad, "helpers_rewards:Probe")
    for bad in ("helpers_rewards", "helpers_rewards:", ":Probe", "a b:C"):
        with pytest.raises(ValueError, match="must be 'package.module:ClassName'"):
            register_reward("t", bad)
    with pytest.raises(ValueError, match="got int"):
        register_reward("t", 3)


def test_resolve_spec_leaves_targets_and_urls_alone_and_names_unknown_ones() -> None:
    assert resolve_spec("ocr?mode=rec") == "vgpo_fast.rewards.ocr:OCRReward?mode=rec"
    assert resolve_spec("helpers_rewards:Probe?delay_s=1") == "helpers_rewards:Probe?delay_s=1"
    assert resolve_spec("http://127.0.0.1:1,http://127.0.0.1:2") == "http://127.0.0.1:1,http://127.0.0.1:2"
    with pytest.raises(
        ValueError,
        match=r"unknown reward 'ocrr' \(did you mean 'ocr'\?\): known names are "
        r".*ocr.*register_reward",
    ):
        resolve_spec("ocrr?mode=rec")
    with pytest.raises(ValueError, match="needs a 'name'"):
        resolve_spec({"mode": "rec"})
    with pytest.raises(ValueError, match="non-empty"):
        resolve_spec("")


def test_a_factory_must_build_a_reward_model(registry) -> None:
    register_reward("not-a-reward", lambda: object())
    with pytest.raises(ValueError, match="built a object, not a RewardModel"):
        build_reward("not-a-reward")
    register_reward("factory-test", lambda scale=1.0: Brightness())
    assert isinstance(build_reward("factory-test?scale=2"), RewardModel)


# Layering ---------------------------------------------------------------------------------------------------------
LAYERED = ("vgpo_fast/rewards", "vgpo_fast/rollout")


def _task_references(path: Path) -> list[str]:
    """Imports of vgpo_fast.tasks (absolute or relative) and strings naming it, in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("vgpo_fast.tasks")]
        elif isinstance(node, ast.ImportFrom):
            module = ("." * node.level) + (node.module or "")
            if module.startswith("vgpo_fast.tasks") or (node.level >= 2 and (node.module or "").startswith("tasks")):
                found.append(module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "vgpo_fast.tasks" in node.value:
            found.append(node.value[:60])  # a "module:attr" target, or a docstring pointing there
    return [f"{path.relative_to(REPO)}: {f}" for f in found]


def test_rewards_and_rollout_name_no_task_module() -> None:
    offenders = [f for d in LAYERED for p in sorted((REPO / d).glob("*.py")) for f in _task_references(p)]
    assert offenders == []


def test_rewards_and_rollout_import_no_task_module() -> None:
    modules = [f"{d.replace('/', '.')}.{p.stem}" for d in LAYERED for p in sorted((REPO / d).glob("*.py"))]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('vgpo_fast.tasks')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_train_reaches_tasks_only_through_the_task_registry() -> None:
    """vgpo_fast/train/ (estimators included) names no task module but `vgpo_fast.tasks.registry`."""
    files = sorted((REPO / "vgpo_fast/train").rglob("*.py"))
    offenders = [f for p in files for f in _task_references(p) if not f.endswith(": vgpo_fast.tasks.registry")]
    assert offenders == []
    assert any(f.endswith(": vgpo_fast.tasks.registry") for p in files for f in _task_references(p))
