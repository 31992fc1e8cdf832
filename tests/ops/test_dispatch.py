"""Backend dispatch: auto choice, overrides, clear errors when a backend cannot run."""

import pytest
import torch

from vgpo_fast.ops import _backend, available_backends, resolve_backend, sde_step


def test_float64_always_runs_the_reference():
    assert resolve_backend(None, torch.device("cpu"), torch.float64) == "reference"
    assert resolve_backend("triton", torch.device("cpu"), torch.float64) == "reference"


def test_auto_on_cpu_prefers_the_extension(monkeypatch):
    monkeypatch.setattr(_backend, "cpu_extension_error", lambda: None)
    assert resolve_backend(None, torch.device("cpu"), torch.float32) == "cpu"
    monkeypatch.setattr(_backend, "cpu_extension_error", lambda: "not built")
    assert resolve_backend(None, torch.device("cpu"), torch.float32) == "reference"


def test_auto_on_cuda_prefers_triton(monkeypatch):
    monkeypatch.setattr(_backend, "triton_error", lambda: None)
    assert resolve_backend(None, torch.device("cuda"), torch.bfloat16) == "triton"
    monkeypatch.setattr(_backend, "triton_error", lambda: "no triton")
    assert resolve_backend(None, torch.device("cuda"), torch.bfloat16) == "reference"


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("VGPO_FAST_BACKEND", "reference")
    assert resolve_backend(None, torch.device("cpu"), torch.float32) == "reference"
    monkeypatch.setenv("VGPO_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend(None, torch.device("cpu"), torch.float32)


def test_unavailable_backends_say_why(monkeypatch):
    monkeypatch.setattr(_backend, "cpu_extension_error", lambda: "the C++ extension vgpo_fast._C is not built")
    with pytest.raises(RuntimeError, match="backend 'cpu' unavailable: the C\\+\\+ extension"):
        resolve_backend("cpu", torch.device("cpu"), torch.float32)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("triton", torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="needs CPU tensors"):
        resolve_backend("cpu", torch.device("cuda"), torch.float32)


def test_available_backends_run():
    x = torch.randn(2, 3, 4, 4)
    for backend in available_backends("cpu"):
        out = sde_step(x, x, 0.5, 0.4, noise=x, backend=backend)
        assert torch.isfinite(out.logp).all()
