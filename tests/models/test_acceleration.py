"""torch.compile (with LoRA) matches eager; torchao float8 training runs forward+backward on the CPU."""

import copy

import pytest
import torch

from vgpo_fast.models import (
    add_lora,
    build_transformer,
    enable_fp8_training,
    fp8_supported,
    maybe_compile,
    reference_policy,
    tiny_transformer_config,
    trainable_parameters,
    velocity,
)


def _model(width: int = 32, size: int = 8):
    return build_transformer(tiny_transformer_config(size, width=width, layers=2, heads=2, text_dim=32, pooled_dim=32))


def _inputs(size: int = 8):
    return torch.randn(2, 3, size, size), torch.tensor([0.3, 0.8]), torch.randn(2, 5, 32), torch.randn(2, 32)


def test_maybe_compile_none_is_identity():
    model = _model()
    assert maybe_compile(model, mode=None) is model and maybe_compile(model, mode="none") is model


def _check_compiled_matches(backend: str, atol: float) -> None:
    model = add_lora(_model().eval(), rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    args = _inputs()
    compiled = maybe_compile(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(velocity(compiled, *args), velocity(model, *args), rtol=1e-4, atol=atol)
        with reference_policy(compiled):
            ref_c = velocity(compiled, *args)
        with reference_policy(model):
            ref_e = velocity(model, *args)
    torch.testing.assert_close(ref_c, ref_e, rtol=1e-4, atol=atol)


def test_compile_traces_lora_model():
    """Dynamo tracing with LoRA and the reference toggle, without inductor's codegen cost (~3 s)."""
    _check_compiled_matches("aot_eager", atol=1e-6)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    """Inductor on CPU (~30 s cold): observed max abs difference ~5e-7."""
    _check_compiled_matches("inductor", atol=1e-5)


@pytest.mark.skipif(not fp8_supported("cpu")[0], reason="torchao float8 unavailable")
def test_fp8_training_cpu_forward_backward():
    """Observed on the CPU (width 64, 16 px): relative L2 error ~4e-3, max abs ~1e-2 at |v| ~2."""
    model = _model(width=64, size=16)
    fp8 = enable_fp8_training(copy.deepcopy(model))
    assert sum(type(m).__name__ == "Float8Linear" for m in fp8.modules()) > 0
    assert type(fp8.proj_out).__name__ == "Linear"  # 12 outputs: not a multiple of 16, stays high precision
    args = _inputs(16)
    v_ref = velocity(model, *args)
    v = velocity(fp8, *args)
    assert ((v - v_ref).norm() / v_ref.norm()).item() < 2e-2
    v.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fp8.parameters() if p.requires_grad)


@pytest.mark.skipif(not fp8_supported("cpu")[0], reason="torchao float8 unavailable")
def test_fp8_with_lora_keeps_adapters_high_precision():
    model = enable_fp8_training(add_lora(_model(), rank=16))
    adapters = ("lora_A.default", "lora_B.default")
    lora_types = {type(m).__name__ for n, m in model.named_modules() if n.endswith(adapters)}
    assert lora_types == {"Linear"}
    velocity(model, *_inputs()).square().mean().backward()
    assert all(p.grad is not None for p in trainable_parameters(model))


def test_fp8_unsupported_device_raises():
    with pytest.raises(RuntimeError, match="float8"):
        enable_fp8_training(_model(), device="meta")
