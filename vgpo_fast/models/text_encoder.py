"""A small task text encoder: deterministic tokenizer, learned token + position embeddings, a tiny transformer.

Produces what `SD3Transformer2DModel` takes: `encoder_hidden_states [B, L, text_dim]` and
`pooled_projections [B, pooled_dim]` (mean over the prompt's tokens, then a linear projection).
Every prompt starts with a `<bos>` token, so the empty prompt (CFG's unconditional input) is one attended token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["TextEncoder", "TextEncoderConfig", "Tokenizer", "build_vocab"]

PAD, UNK, BOS = "<pad>", "<unk>", "<bos>"
SPECIALS = (PAD, UNK, BOS)
_WORD_RE = re.compile(r"\w+|[^\w\s]")
_WEIGHTS = "text_encoder.safetensors"
_CONFIG = "text_encoder.json"


def _split(text: str, level: str) -> list[str]:
    text = text.lower()
    if level == "word":
        return _WORD_RE.findall(text)
    if level == "char":
        return list(text)
    raise ValueError(f"level must be 'word' or 'char', got {level!r}")


def build_vocab(texts: Iterable[str], level: str = "word") -> list[str]:
    """Sorted, deduplicated tokens of `texts` (lower-cased) at `level` ('word' or 'char'); deterministic."""
    return sorted({tok for text in texts for tok in _split(text, level)})


class Tokenizer:
    """Maps text to ids `[B, L]`: `<bos>` then word/char tokens, `<unk>` for unknown ones, `<pad>` (id 0) after."""

    def __init__(self, vocab: Sequence[str], level: str = "word", max_length: int = 16) -> None:
        _split("", level)  # validates level
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.level, self.max_length = level, max_length
        self.tokens = list(SPECIALS) + [t for t in dict.fromkeys(vocab) if t not in SPECIALS]
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids `[B, max_length]` (int64); text longer than `max_length - 1` tokens is truncated."""
        unk = self.index[UNK]
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            toks = [self.index[BOS]] + [self.index.get(t, unk) for t in _split(text, self.level)]
            toks = toks[: self.max_length]
            ids[row, : len(toks)] = torch.tensor(toks)
        return ids


@dataclass
class TextEncoderConfig:
    """Sizes of the task text encoder; `vocab` excludes the special tokens, which are always added."""

    vocab: list[str] = field(default_factory=list)
    level: str = "word"
    max_length: int = 16
    text_dim: int = 128
    pooled_dim: int = 128
    layers: int = 2
    heads: int = 2


class TextEncoder(nn.Module):
    """Learned embeddings + `layers` pre-norm transformer encoder layers; see the module docstring for outputs."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.text_dim % config.heads:
            raise ValueError(f"text_dim must be a multiple of heads={config.heads}, got {config.text_dim}")
        self.config = config
        self.tokenizer = Tokenizer(config.vocab, config.level, config.max_length)
        d = config.text_dim
        self.token_embedding = nn.Embedding(len(self.tokenizer), d)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.pooled_projection = nn.Linear(d, config.pooled_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids `[B, L]` -> (`encoder_hidden_states [B, L, text_dim]`, zero at padding; `pooled [B, pooled_dim]`)."""
        mask = ids != 0  # [B, L]; position 0 is <bos>, never padding
        h = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        h = h * mask.unsqueeze(-1).to(h.dtype)
        mean = h.sum(1) / mask.sum(1, keepdim=True).to(h.dtype)
        return h, self.pooled_projection(mean)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts (B strings) -> (`[B, L, text_dim]`, `[B, pooled_dim]`) on the encoder's device."""
        return self(self.tokenizer(prompts).to(self.token_embedding.weight.device))

    def empty_embedding(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt's conditioning for CFG: (`[batch, L, text_dim]`, `[batch, pooled_dim]`)."""
        return self.encode([""] * batch)

    def save(self, path: str | Path) -> None:
        """Write `text_encoder.json` (config incl. vocab) and `text_encoder.safetensors` under directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / _CONFIG).write_text(json.dumps(asdict(self.config), indent=1))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path / _WEIGHTS))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> TextEncoder:
        """Inverse of `save`. Raises FileNotFoundError naming the missing file."""
        path = Path(path)
        for name in (_CONFIG, _WEIGHTS):
            if not (path / name).is_file():
                raise FileNotFoundError(f"text encoder file {path / name} does not exist")
        model = cls(TextEncoderConfig(**json.loads((path / _CONFIG).read_text())))
        model.load_state_dict(load_file(str(path / _WEIGHTS), device=str(device)))
        return model.to(device)
