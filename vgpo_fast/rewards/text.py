"""Text helpers shared by text rewards and the data they score (no dependencies beyond the standard library).

extract_quoted_text('an image with the text "cat"')   # -> "cat"
"""

from __future__ import annotations

import re

__all__ = ["extract_quoted_text"]

_QUOTED = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d')


def extract_quoted_text(prompt: str) -> str:
    """The first span of `prompt` inside straight ("...") or curly (\u201c...\u201d) double quotes."""
    match = _QUOTED.search(prompt)
    if match is None:
        raise ValueError(f'prompt must contain the target text in double quotes ("..."), got {prompt!r}')
    return match.group(1) if match.group(1) is not None else match.group(2)
