"""Task text encoder: tokenizer, output shapes, padding invariance, empty prompt, save/load."""

import pytest
import torch

from vgpo_fast.models import TextEncoder, TextEncoderConfig, Tokenizer, build_vocab


def test_tokenizer_word_and_char():
    vocab = build_vocab(["a red circle", "a blue square"])
    assert vocab == ["a", "blue", "circle", "red", "square"]
    tok = Tokenizer(vocab, max_length=6)
    ids = tok(["A red circle", "", "a green circle"])
    assert ids.shape == (3, 6) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [2, 3, 6, 5]  # <bos>, a, red, circle (specials take ids 0..2)
    assert ids[1].tolist() == [2, 0, 0, 0, 0, 0]
    assert ids[2, 2].item() == 1  # unknown word -> <unk>
    assert tok(["a " * 20]).shape == (1, 6)  # truncated
    char = Tokenizer(build_vocab(['with the text "cat"'], level="char"), level="char", max_length=8)
    assert char(["cat"])[0, :4].tolist() == [2] + [char.index[c] for c in "cat"]
    with pytest.raises(ValueError, match="level"):
        Tokenizer(vocab, level="bpe")


def test_outputs_and_empty_prompt():
    enc = TextEncoder(
        TextEncoderConfig(vocab=build_vocab(["a red circle"]), max_length=8, text_dim=32, pooled_dim=48, layers=1)
    ).eval()
    ehs, pooled = enc.encode(["a red circle", "red"])
    assert ehs.shape == (2, 8, 32) and pooled.shape == (2, 48)
    assert (ehs[1, 2:] == 0).all()  # padding rows are zero
    e_ehs, e_pooled = enc.empty_embedding(3)
    assert e_ehs.shape == (3, 8, 32) and torch.isfinite(e_pooled).all() and torch.equal(e_pooled[0], e_pooled[2])
    # A prompt's outputs do not depend on what else is in the batch (padding is masked).
    torch.testing.assert_close(enc.encode(["red"])[1], pooled[1:], rtol=1e-5, atol=1e-6)
    pooled.sum().backward()
    assert enc.token_embedding.weight.grad is not None


def test_save_load(tmp_path):
    enc = TextEncoder(
        TextEncoderConfig(vocab=build_vocab(["a red circle"]), text_dim=16, pooled_dim=16, layers=1, heads=1)
    ).eval()
    enc.save(tmp_path / "te")
    loaded = TextEncoder.load(tmp_path / "te").eval()
    for a, b in zip(enc.encode(["a red circle", ""]), loaded.encode(["a red circle", ""]), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="text_encoder.json"):
        TextEncoder.load(tmp_path / "missing")
