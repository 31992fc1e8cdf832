"""Cheap test-only rewards, importable by a reward-server subprocess as 'helpers_rewards:ClassName' (with
tests/rewards on PYTHONPATH)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vgpo_fast.rewards.base import NonFinitePolicy, RewardModel
from vgpo_fast.rewards.client import TOKEN_ENV


class Brightness(RewardModel):
    """Mean pixel value / 255 of each image, in [0, 1]; exact for constant images (value v -> v / 255)."""

    name = "brightness"
    low = 0.0
    high = 1.0

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return images.reshape(images.shape[0], -1).mean(axis=1, dtype=np.float64) / 255.0


class Probe(Brightness):
    """Brightness, with behaviour chosen by prompt prefix, to exercise the server's failure paths.

    'nan ...' / 'inf ...' -> that image scores NaN / +inf; 'raise ...' -> the whole call raises ValueError
    naming the prompt; 'sleep:S ...' -> the call sleeps S seconds (once per call: the longest asked for).
    `delay_s` is slept on every call, to make a server busy enough that concurrent requests queue up.
    """

    name = "probe"

    def __init__(self, delay_s: float = 0.0, nonfinite: NonFinitePolicy = "raise") -> None:
        super().__init__(nonfinite)
        self.delay_s = float(delay_s)

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        for p in prompts:
            if p.startswith("raise"):
                raise ValueError(f"probe cannot score prompt {p!r}")
        sleeps = [float(p.split()[0].split(":", 1)[1]) for p in prompts if p.startswith("sleep:")]
        time.sleep(self.delay_s + max(sleeps, default=0.0))
        scores = super()._score(images, prompts)
        for i, p in enumerate(prompts):
            if p.startswith("nan"):
                scores[i] = np.nan
            elif p.startswith("inf"):
                scores[i] = np.inf
        return scores


def constant_images(values: list[int], size: int = 8) -> np.ndarray:
    """uint8 `[len(values), size, size, 3]`, image i filled with `values[i]` (Brightness values[i] / 255)."""
    return np.broadcast_to(np.asarray(values, dtype=np.uint8)[:, None, None, None], (len(values), size, size, 3)).copy()


TOKEN = "test-token-123"
START_TIMEOUT_S = 60.0
_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]


class Server:
    """A reward-server subprocess on 127.0.0.1 with an ephemeral port; `entry`: the interpreter arguments that
    start it (`-m vgpo_fast.rewards.server`, `-m vgpo_fast.cli reward-server`, `-c CODE`)."""

    def __init__(
        self,
        tmp: Path,
        reward: str,
        *args: str,
        token: str | None = None,
        entry: tuple[str, ...] = ("-m", "vgpo_fast.rewards.server"),
    ) -> None:
        self.log_path = tmp / "server.log"
        port_file = tmp / "port"
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(_HERE), str(_REPO), os.environ.get("PYTHONPATH", "")]),
        )
        env.pop(TOKEN_ENV, None)
        if token:
            env[TOKEN_ENV] = token
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *entry,
                    "--reward",
                    reward,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--port-file",
                    str(port_file),
                    *args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"reward server did not start: {self.log()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def post(
        self, body: bytes, headers: dict[str, str] | None = None, path: str = "/score", method: str = "POST"
    ) -> tuple[int, dict]:
        """(status, JSON reply) of one raw request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()
