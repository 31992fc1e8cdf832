"""`vgpo-fast ... --help` imports nothing heavy, exits 0, prints its usage to stdout and nothing to stderr.

Each check runs in a fresh interpreter (`sys.executable`): the test process itself has long imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

HEAVY = ("torch", "diffusers", "transformers", "peft", "torchao", "triton")
SUBCOMMANDS = ("backends", "train", "sample", "eval", "pretrain", "profile", "experiment", "reward-server")

# In the child: run `main(argv)`, then report its exit code and which heavy modules it imported. For reward-server
# the CLI hands over to `vgpo_fast.rewards.server.main`, whose own module imports torch (rewards.base): a stub
# stands in for it, so that what is checked is the CLI's part (the parser and the task-reward registration).
_CHILD = """
import json, sys, types
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if argv[:1] == ["reward-server"]:
    stub = types.ModuleType("vgpo_fast.rewards.server")
    stub.main = lambda rest: print("usage: stub reward-server", rest) or 0
    sys.modules["vgpo_fast.rewards.server"] = stub
from vgpo_fast.cli import main
try:
    code = main(argv)
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def _vgpo_fast() -> list[str]:
    script = Path(sys.executable).with_name("vgpo-fast")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vgpo_fast.cli"]


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in SUBCOMMANDS)], ids=" ".join)
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(argv), json.dumps(HEAVY)], capture_output=True, text=True, timeout=120
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0 and result["code"] in (0, None), proc.stderr
    assert result["heavy"] == [], f"vgpo-fast {' '.join(argv)} imported {result['heavy']}"
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("sub", ["", *SUBCOMMANDS])
def test_help_prints_usage_and_no_stderr(sub: str) -> None:
    cmd = [*_vgpo_fast(), *([sub] if sub else []), "--help"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    print(f"vgpo-fast {sub} --help: {time.perf_counter() - start:.2f} s")  # informative only: no timing assert
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]
    assert proc.stderr == ""


def test_profile_help_shows_the_default_modes() -> None:
    """The profile parser spells out `modes.DEFAULT_MODES` (importing that module imports torch): they agree."""
    from vgpo_fast.profiling import cli
    from vgpo_fast.profiling.modes import DEFAULT_MODES

    assert cli._DEFAULT_MODES == DEFAULT_MODES


def test_pretrain_help_shows_pretrain_config_defaults() -> None:
    from vgpo_fast.tasks.pretrain_config import PretrainConfig

    out = subprocess.run([*_vgpo_fast(), "pretrain", "--help"], capture_output=True, text=True, timeout=300).stdout
    assert f"default {PretrainConfig().steps}" in out and f"default {PretrainConfig().lr}" in out
