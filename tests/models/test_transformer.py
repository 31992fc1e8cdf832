"""Transformer: tiny config, forward with the text encoder's outputs, save/load, loading errors, CFG velocity."""

import json

import pytest
import torch

from vgpo_fast.models import (
    TextEncoder,
    TextEncoderConfig,
    build_transformer,
    build_vocab,
    load_transformer,
    save_transformer,
    tiny_transformer_config,
    velocity,
)

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]


def _small(text_dim: int = 32, size: int = 8):
    model = build_transformer(
        tiny_transformer_config(size, width=32, layers=2, heads=2, text_dim=text_dim, pooled_dim=text_dim)
    ).eval()
    enc = TextEncoder(
        TextEncoderConfig(vocab=build_vocab(PROMPTS), text_dim=text_dim, pooled_dim=text_dim, layers=1)
    ).eval()
    return model, enc


def test_default_tiny_config_forward_24px():
    config = tiny_transformer_config(24)
    assert config["in_channels"] == config["out_channels"] == 3 and config["caption_projection_dim"] == 128
    model = build_transformer(config).eval()
    enc = TextEncoder(TextEncoderConfig(vocab=build_vocab(PROMPTS))).eval()
    ehs, pooled = enc.encode(PROMPTS)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        v = velocity(model, x, torch.tensor([0.2, 0.8]), ehs, pooled)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert type(model.transformer_blocks[0].attn.processor).__name__ == "JointAttnProcessor2_0"  # SDPA


def test_non_square_config():
    model = build_transformer(
        tiny_transformer_config((8, 32), width=32, layers=1, heads=2, text_dim=16, pooled_dim=16)
    ).eval()
    with torch.no_grad():
        v = velocity(model, torch.randn(1, 3, 8, 32), 0.5, torch.randn(1, 4, 16), torch.randn(1, 16))
    assert v.shape == (1, 3, 8, 32)


def test_config_validation():
    with pytest.raises(ValueError, match="patch_size"):
        tiny_transformer_config(25)
    with pytest.raises(ValueError, match="heads"):
        tiny_transformer_config(24, width=100, heads=3)


@pytest.mark.parametrize("layout", ["bare", "sd3"])
def test_save_load_round_trip(tmp_path, layout):
    model, enc = _small()
    ehs, pooled = enc.encode(PROMPTS)
    x = torch.randn(2, 3, 8, 8)
    target = tmp_path / "transformer" if layout == "sd3" else tmp_path
    save_transformer(model, target)
    if layout == "sd3":
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    loaded = load_transformer(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(velocity(model, x, 0.5, ehs, pooled), velocity(loaded, x, 0.5, ehs, pooled))
    assert load_transformer(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_transformer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_transformer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="AutoencoderKL"):
        load_transformer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_transformer(tmp_path)


def test_cfg():
    model, enc = _small()
    ehs, pooled = enc.encode(PROMPTS)
    uncond = enc.empty_embedding(1)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        v_c = model(
            hidden_states=x,
            encoder_hidden_states=ehs,
            pooled_projections=pooled,
            timestep=sigma * 1000,
            return_dict=False,
        )[0]
        v_u = model(
            hidden_states=x,
            encoder_hidden_states=uncond[0].expand_as(ehs),
            pooled_projections=uncond[1].expand_as(pooled),
            timestep=sigma * 1000,
            return_dict=False,
        )[0]
        assert torch.equal(velocity(model, x, sigma, ehs, pooled, guidance_scale=1.0, uncond=uncond), v_c)
        v = velocity(model, x, sigma, ehs, pooled, guidance_scale=4.5, uncond=uncond)
    torch.testing.assert_close(v, v_u + 4.5 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(v, v_c)
    with pytest.raises(ValueError, match="uncond"):
        velocity(model, x, sigma, ehs, pooled, guidance_scale=2.0)
    with pytest.raises(ValueError, match="sigma"):
        velocity(model, x, torch.ones(3), ehs, pooled)
