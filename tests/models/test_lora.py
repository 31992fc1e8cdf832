"""LoRA: fresh adapter is a no-op, perturbed adapter changes outputs, reference_policy gives the base, save/load."""

import pytest
import torch

from vgpo_fast.models import (
    MMDIT_LORA_TARGETS,
    add_lora,
    build_transformer,
    load_lora,
    lora_state_dict,
    reference_policy,
    save_lora,
    tiny_transformer_config,
    trainable_parameters,
    velocity,
)


def _inputs():
    return torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.8]), torch.randn(2, 5, 16), torch.randn(2, 16)


def _model():
    return build_transformer(tiny_transformer_config(8, width=32, layers=2, heads=2, text_dim=16, pooled_dim=16))


def _perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)


def test_fresh_lora_is_identity_and_reference_policy_is_base():
    model = _model().eval()
    args = _inputs()
    with torch.no_grad():
        base = velocity(model, *args)
        add_lora(model, rank=4)
        # peft initialises lora_B = 0: unchanged up to float rounding (peft >= 0.21 adds the zero update in a
        # different order than the bare Linear, so bitwise equality is not guaranteed).
        torch.testing.assert_close(velocity(model, *args), base, rtol=1e-6, atol=1e-6)
        _perturb(model)
        assert not torch.allclose(velocity(model, *args), base)
        with reference_policy(model) as ref:
            torch.testing.assert_close(velocity(ref, *args), base, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(velocity(model, *args), base)  # adapters back on
    assert all(p.requires_grad for p in trainable_parameters(model))  # restored after the context


def test_only_lora_trainable_and_targets():
    model = _model()
    add_lora(model, rank=4, alpha=8)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    # 2 blocks; the last is context_pre_only (no to_add_out): 8 + 7 targets, A and B each.
    assert len(names) == 2 * (len(MMDIT_LORA_TARGETS) * 2 - 1)
    assert sum(p.numel() for p in trainable_parameters(model)) == sum(
        p.numel() for n, p in model.named_parameters() if "lora_" in n
    )
    x, sigma, ehs, pooled = _inputs()
    velocity(model, x, sigma, ehs, pooled).square().mean().backward()
    assert all(p.grad is not None for p in trainable_parameters(model))
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_save_load_lora(tmp_path):
    model = add_lora(_model().eval(), rank=4)
    _perturb(model)
    save_lora(model, tmp_path / "lora.safetensors")
    other = _model().eval()
    # Same base weights: peft moved each target's weights under `.base_layer`.
    base_state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    other.load_state_dict(base_state)
    load_lora(other, tmp_path / "lora.safetensors")  # adds the adapter from the file's metadata
    args = _inputs()
    with torch.no_grad():
        assert torch.equal(velocity(model, *args), velocity(other, *args))
    assert set(lora_state_dict(other)) == set(lora_state_dict(model))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_lora(other, tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        load_lora(add_lora(_model(), rank=4, target_modules=["to_q"]), tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="no LoRA"), reference_policy(_model()):
        pass
