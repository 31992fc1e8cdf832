"""Test session setup. TRITON_INTERPRET must be set before any @triton.jit definition executes, so here."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("VGPO_FAST_BACKEND", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
