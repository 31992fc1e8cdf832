"""Text helpers shared by the OCR reward and the text task: quoted-target extraction (no OCR dependencies)."""

from __future__ import annotations

import pytest

from vgpo_fast.rewards.text import extract_quoted_text
from vgpo_fast.tasks.text import make_prompt, target_text


def test_extract_quoted_text():
    assert extract_quoted_text(make_prompt("cat")) == "cat"
    assert extract_quoted_text('a sign saying "Open Late" and "closed"') == "Open Late"
    assert extract_quoted_text("a mug with \u201ccoffee\u201d on it") == "coffee"
    assert extract_quoted_text('empty ""') == ""
    with pytest.raises(ValueError, match=r"double quotes.*'a photo of a cat'"):
        extract_quoted_text("a photo of a cat")


def test_the_ocr_reward_and_the_text_task_share_it():
    assert target_text(make_prompt("elephant")) == "elephant"
    ocr = pytest.importorskip("vgpo_fast.rewards.ocr")  # importable without rapidocr (imported lazily)
    assert ocr.extract_quoted_text is extract_quoted_text
