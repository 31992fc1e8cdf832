"""The tasks' rewards reach `build_reward` by registration: importing `vgpo_fast.tasks.registry` registers
"shapes" and "compositional"; a process that did not import it builds them from `resolve_spec`'s explicit target;
`vgpo-fast reward-server --reward shapes` (and the server's `main(argv, setup=...)`) serves them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rewards"))
from helpers_rewards import Server  # noqa: E402

from vgpo_fast.rewards.client import RewardClient
from vgpo_fast.rewards.registry import available_rewards, build_reward, resolve_spec
from vgpo_fast.tasks.registry import TASK_REWARDS, get_task
from vgpo_fast.tasks.shapes.render import render_prompts
from vgpo_fast.tasks.shapes.reward import CompositionalReward

REPO = Path(__file__).resolve().parents[2]
TARGET = "vgpo_fast.tasks.shapes.reward:CompositionalReward"
PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a red circle", "a red circle"]


def _images():
    images = render_prompts(PROMPTS, [0, 1, 2, 3], 16)
    images[3] = 255 - images[3]  # one that fails
    return images


def test_importing_the_task_registry_registers_the_task_rewards() -> None:
    assert TASK_REWARDS == {"shapes": TARGET, "compositional": TARGET}
    assert {"shapes", "compositional", "ocr"} <= set(available_rewards())
    for name in ("shapes", "compositional"):
        reward = build_reward({"name": name, "mode": "partial"})
        assert isinstance(reward, CompositionalReward) and reward.name == "compositional_partial"
    assert resolve_spec("shapes?mode=strict") == f"{TARGET}?mode=strict"
    assert resolve_spec(get_task("shapes").reward) == {"name": TARGET, "mode": "partial"}
    for task in ("shapes", "text"):  # every task's reward specs name rewards known here
        for spec in (get_task(task).reward, get_task(task).eval_reward):
            resolve_spec(spec)


def test_a_process_without_the_task_registry_builds_the_resolved_spec() -> None:
    code = (
        "import sys\n"
        "from vgpo_fast.rewards.registry import build_reward\n"
        "try:\n"
        "    build_reward('shapes')\n"
        "except ValueError as exc:\n"
        "    print('error:', exc)\n"
        "print(build_reward(sys.argv[1]).name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('vgpo_fast.tasks.registry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, resolve_spec("shapes?mode=soft")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("error: unknown reward 'shapes': known names are clipscore, ocr, pickscore")
    assert lines[1:] == ["compositional_soft", "[]"]


SETUP_MAIN = (
    "import importlib, sys\n"
    "from vgpo_fast.rewards.server import main\n"
    "sys.exit(main(sys.argv[1:], setup=lambda: importlib.import_module('vgpo_fast.tasks.registry')))\n"
)


@pytest.mark.parametrize(
    "entry",
    [["-m", "vgpo_fast.cli", "reward-server"], ["-c", SETUP_MAIN]],
    ids=["vgpo-fast reward-server", "server.main(setup=...)"],
)
def test_the_reward_server_entries_serve_a_task_reward_by_name(tmp_path: Path, entry: list[str]) -> None:
    server = Server(tmp_path, "shapes?mode=partial", entry=tuple(entry))
    try:
        images = _images()
        with RewardClient(server.url) as client:
            got = client.score(images, PROMPTS)
            assert client.name == "compositional_partial"
        assert torch.equal(got, CompositionalReward("partial").score(images, PROMPTS))
    finally:
        server.kill()
