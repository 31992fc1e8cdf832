"""The rendered-text task: a word list with train/held-out splits, prompts, and a deterministic text renderer."""

from vgpo_fast.tasks.text.render import (
    HELDOUT_WORDS,
    PROMPT_TEMPLATE,
    TRAIN_WORDS,
    WORDS,
    make_prompt,
    render_batch,
    render_text,
    target_text,
    words,
)

__all__ = [
    "HELDOUT_WORDS",
    "PROMPT_TEMPLATE",
    "TRAIN_WORDS",
    "WORDS",
    "make_prompt",
    "render_batch",
    "render_text",
    "target_text",
    "words",
]
