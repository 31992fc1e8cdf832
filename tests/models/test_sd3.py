"""SD3 pipeline loading: a tiny random SD3 pipeline saved with diffusers, loaded with `load_sd3_pipeline`.

Prompt encoding is checked against `StableDiffusion3Pipeline.encode_prompt` on the same saved components, with and
without T5; then latent shape, VAE decode, velocity, freezing and the loading errors.
"""

import json
import shutil

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from vgpo_fast.models.sd3 import SD3PromptEncoder, load_sd3_pipeline

WORDS = ["a", "red", "cat", "dog", "on", "the", "blue", "square"]
# Long enough to be truncated by both the CLIP length (12) and the T5 length (8); "!" and "x" are unknown tokens.
PROMPTS = ["a red cat on the blue square", "dog!", "x"]
CLIP_LENGTH, T5_LENGTH = 12, 8
# Tiny sizes: CLIP-L 8 + CLIP-G 16 <= T5 width 32 (padding), projections 8 + 8 = pooled 16, VAE scale 2, 4 channels.
VAE_SCALE, LATENT_CHANNELS, SAMPLE_SIZE = 2, 4, 8


def _write_clip_tokenizer(folder) -> None:
    """A tiny character-level BPE in the files real SD3 checkpoints ship (vocab.json, merges.txt, config)."""
    chars = sorted(set("".join(WORDS)))
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    tokens += ["ca", "cat</w>", "re", "red</w>", "on</w>"]
    merges = ["c a", "ca t</w>", "r e", "re d</w>", "o n</w>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_LENGTH})
    )


def _t5_tokenizer() -> T5TokenizerFast:
    chars = sorted(set("".join(WORDS)))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS] + [("\u2581", -2.0)] + [(c, -3.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _clip(vocab_size: int, hidden: int) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_LENGTH,
            projection_dim=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


@pytest.fixture(scope="module")
def sd3_dirs(tmp_path_factory):
    """`(full, no_t5)`: a tiny SD3 pipeline saved by diffusers, and a copy without T5 (as diffusers saves one)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sd3")
    _write_clip_tokenizer(root / "clip_tokenizer")
    tok, t5_tok = CLIPTokenizer.from_pretrained(root / "clip_tokenizer", local_files_only=True), _t5_tokenizer()
    assert tok("a red cat").input_ids[1:-1] == [tok.convert_tokens_to_ids(t) for t in ("a</w>", "red</w>", "cat</w>")]
    transformer = SD3Transformer2DModel(
        sample_size=SAMPLE_SIZE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        pos_embed_max_size=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=1.5,
        shift_factor=0.1,
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
        )
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=_clip(len(tok), 8),
        tokenizer=tok,
        text_encoder_2=_clip(len(tok), 16),
        tokenizer_2=tok,
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )
    full, no_t5 = root / "full", root / "no_t5"
    pipe.save_pretrained(full)
    # tokenizer/ as real checkpoints have it (vocab.json + merges.txt); tokenizer_2/ as diffusers saves it.
    shutil.rmtree(full / "tokenizer")
    shutil.copytree(root / "clip_tokenizer", full / "tokenizer")
    shutil.copytree(full, no_t5)
    for name in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(no_t5 / name)
    index = json.loads((no_t5 / "model_index.json").read_text())
    index.update(text_encoder_3=[None, None], tokenizer_3=[None, None])
    (no_t5 / "model_index.json").write_text(json.dumps(index))
    return full, no_t5


@pytest.fixture(scope="module")
def pipe(sd3_dirs):
    return load_sd3_pipeline(sd3_dirs[0], max_sequence_length=T5_LENGTH)


@pytest.mark.parametrize("variant", ["t5", "no_t5"])
def test_encode_matches_diffusers_encode_prompt(sd3_dirs, variant):
    path = sd3_dirs[0] if variant == "t5" else sd3_dirs[1]
    ours = load_sd3_pipeline(path, max_sequence_length=T5_LENGTH)
    assert isinstance(ours.text_encoder, SD3PromptEncoder)
    assert (ours.text_encoder.t5 is None) == (variant == "no_t5")
    no_t5 = {} if variant == "t5" else {"text_encoder_3": None, "tokenizer_3": None}  # as diffusers documents it
    ref = StableDiffusion3Pipeline.from_pretrained(path, local_files_only=True, **no_t5)
    assert (ref.text_encoder_3 is None) == (variant == "no_t5")
    with torch.no_grad():
        want_ehs, _, want_pooled, _ = ref.encode_prompt(
            PROMPTS,
            None,
            None,
            device=torch.device("cpu"),
            do_classifier_free_guidance=False,
            max_sequence_length=T5_LENGTH,
        )
    ehs, pooled = ours.encode(PROMPTS)
    assert ehs.shape == (len(PROMPTS), CLIP_LENGTH + T5_LENGTH, 32) and pooled.shape == (len(PROMPTS), 16)
    torch.testing.assert_close(ehs, want_ehs, rtol=0, atol=0)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)
    # CLIP states fill 8 + 16 of the 32 features; the T5 part is zeros only without T5.
    assert ehs[:, :CLIP_LENGTH, 24:].abs().max() == 0
    assert (ehs[:, CLIP_LENGTH:].abs().max() == 0) == (variant == "no_t5")


def test_use_t5_false_skips_t5(sd3_dirs):
    pipe = load_sd3_pipeline(sd3_dirs[0], max_sequence_length=T5_LENGTH, use_t5=False)
    ref = load_sd3_pipeline(sd3_dirs[1], max_sequence_length=T5_LENGTH)
    assert pipe.text_encoder.t5 is None
    for got, want in zip(pipe.encode(PROMPTS), ref.encode(PROMPTS), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_latent_shape_and_resolution(sd3_dirs, pipe):
    size = SAMPLE_SIZE * VAE_SCALE
    assert pipe.latent_shape == (LATENT_CHANNELS, SAMPLE_SIZE, SAMPLE_SIZE)
    assert load_sd3_pipeline(sd3_dirs[1], resolution=(8, 32)).latent_shape == (LATENT_CHANNELS, 4, 16)
    assert load_sd3_pipeline(sd3_dirs[1], resolution=size).latent_shape == pipe.latent_shape
    with pytest.raises(ValueError, match="multiples of vae scale"):
        load_sd3_pipeline(sd3_dirs[1], resolution=size + 2)
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        load_sd3_pipeline(sd3_dirs[1], resolution=64)


def test_decode_uses_sd3_scaling_and_shift(pipe):
    torch.manual_seed(1)
    latents = torch.randn(2, *pipe.latent_shape)
    images = pipe.decode(latents)
    assert images.shape == (2, 3, SAMPLE_SIZE * VAE_SCALE, SAMPLE_SIZE * VAE_SCALE) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        raw = pipe.vae.decode(latents / 1.5 + 0.1, return_dict=False)[0]
    torch.testing.assert_close(images, (raw / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_velocity_fn_runs_on_tiny_transformer(pipe, guidance_scale):
    x = torch.randn(len(PROMPTS), *pipe.latent_shape)
    with torch.no_grad():
        v = pipe.velocity_fn(PROMPTS, guidance_scale=guidance_scale)(x, torch.tensor([0.1, 0.5, 0.9]))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_encoders_and_vae_are_frozen(pipe):
    pipe.train()  # the prompt encoder stays in eval mode: CLIP/T5 dropout must stay off
    try:
        frozen = [pipe.text_encoder, pipe.vae]
        assert all(not p.requires_grad for m in frozen for p in m.parameters())
        assert not any(m.training for m in pipe.text_encoder.modules())
        assert all(p.requires_grad for p in pipe.transformer.parameters())
    finally:
        pipe.eval()


def test_missing_directory_and_components(sd3_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sd3_pipeline(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_sd3_pipeline(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(sd3_dirs[1], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match=r"no vae/ subfolder"):
        load_sd3_pipeline(broken)


def test_half_t5_is_an_error(sd3_dirs, tmp_path):
    broken = tmp_path / "half_t5"
    shutil.copytree(sd3_dirs[0], broken)
    shutil.rmtree(broken / "tokenizer_3")
    with pytest.raises(FileNotFoundError, match=r"tokenizer_3/.*use_t5=False"):
        load_sd3_pipeline(broken)
    assert load_sd3_pipeline(broken, use_t5=False).text_encoder.t5 is None


def test_non_sd3_model_index_is_a_value_error(sd3_dirs, tmp_path):
    other = tmp_path / "flux"
    shutil.copytree(sd3_dirs[1], other)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline"):
        load_sd3_pipeline(other)
