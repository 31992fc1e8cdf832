"""OCR reward: the edit-distance score, prompt parsing, and real PP-OCR reads of rendered words."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("rapidocr")
pytest.importorskip("onnxruntime")

from vgpo_fast.rewards.ocr import (  # noqa: E402
    OCRReward,
    bundled_models,
    levenshtein,
    normalize_text,
    text_similarity,
)
from vgpo_fast.tasks.text import HELDOUT_WORDS, TRAIN_WORDS, make_prompt, render_batch, render_text  # noqa: E402

# ---- edit distance, normalisation, prompt parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, d",
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "abcd", 4),
        ("abc", "abc", 0),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("abc", "acb", 2),
        ("intention", "execution", 5),
        ("a", "b", 1),
        ("ab", "ba", 2),
    ],
)
def test_levenshtein_known_cases(a, b, d):
    assert levenshtein(a, b) == d


_text = st.text(alphabet="abcd ", max_size=8)


@settings(max_examples=150, deadline=None)
@given(_text, _text, _text)
def test_levenshtein_is_a_metric_bounded_by_lengths(a, b, c):
    d = levenshtein(a, b)
    assert d == levenshtein(b, a)
    assert (d == 0) == (a == b)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert levenshtein(a, c) <= d + levenshtein(b, c)
    assert levenshtein(a, a + c) == len(c)


@settings(max_examples=100, deadline=None)
@given(_text, _text)
def test_similarity_range_and_identity(read, target):
    s = text_similarity(read, target)
    assert 0.0 <= s <= 1.0
    assert (s == 1.0) == (normalize_text(read) == normalize_text(target))


def test_similarity_closed_form():
    assert text_similarity("cat", "cat") == 1.0
    assert text_similarity("CAT ", " cat") == 1.0
    assert text_similarity("", "cat") == 0.0
    assert text_similarity("dog", "cat") == 0.0
    assert text_similarity("house", "mouse") == pytest.approx(0.8)
    assert text_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert text_similarity("", "  ") == 1.0  # both normalise to empty


def test_normalize_text():
    assert normalize_text("  Hello \t\n  WORLD ") == "hello world"


# ---- configuration ----------------------------------------------------------------------------------------------


def test_bundled_models_are_present():
    paths = bundled_models()
    assert set(paths) == {"det", "rec", "cls"}
    assert all(p.is_file() and p.suffix == ".onnx" for p in paths.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "fast"}, "mode must be"),
        ({"num_threads": 0}, "num_threads"),
        ({"line_max_height": 0}, "line_max_height"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"rec_batch_size": 0}, "rec_batch_size"),
        ({"det_max_side": 8}, "det_max_side"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OCRReward(**kwargs)


# ---- real OCR ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ocr() -> OCRReward:
    reward = OCRReward(num_threads=1)
    yield reward
    reward.close()


def test_resolve_mode(ocr):
    assert ocr.resolve_mode(32, 128) == "rec"
    assert ocr.resolve_mode(16, 64) == "rec"
    assert ocr.resolve_mode(64, 512) == "rec"
    assert ocr.resolve_mode(65, 512) == "det"
    assert ocr.resolve_mode(128, 128) == "det"
    assert ocr.resolve_mode(32, 48) == "det"


# Measured on all 174 words at 32x128 (recognition only): every read matches after normalisation (one read is
# upper case, 'COW'); at 16x64 likewise. The threshold leaves room for other onnxruntime builds.
WORDS_UNDER_TEST = TRAIN_WORDS[::7] + HELDOUT_WORDS[::5]


@pytest.mark.parametrize("size", [(32, 128), (16, 64)])
def test_correct_text_scores_near_one(ocr, size):
    images = render_batch(WORDS_UNDER_TEST, size=size)
    scores = ocr.score(images, [make_prompt(w) for w in WORDS_UNDER_TEST])
    assert scores.shape == (len(WORDS_UNDER_TEST),) and scores.dtype == torch.float32
    assert (scores >= 0.9).float().mean() >= 0.9, list(zip(WORDS_UNDER_TEST, scores.tolist(), strict=True))
    assert scores.mean() >= 0.95


def test_the_text_tasks_ground_truth_scores_near_one(ocr):
    """The text task's own renderer (16 x 64, one 8 px cell per character): what its base model learns to draw."""
    from vgpo_fast.tasks.registry import get_task

    task = get_task("text")
    prompts = [make_prompt(w) for w in WORDS_UNDER_TEST]
    scores = ocr.score(task.render(prompts, [0] * len(prompts)), prompts)
    assert scores.mean() >= 0.95, list(zip(WORDS_UNDER_TEST, scores.tolist(), strict=True))


def test_wrong_text_and_blank_images_score_near_zero(ocr):
    wrong = render_batch(["cat", "sun", "lion", "frog"])
    prompts = [make_prompt(w) for w in ["dog", "key", "bath", "milk"]]  # no letter in the same place
    assert ocr.score(wrong, prompts).max() <= 0.1
    blanks = np.stack([np.full((32, 128, 3), v, np.uint8) for v in (255, 0, 128)])
    assert ocr.score(blanks, [make_prompt("cat")] * 3).tolist() == [0.0, 0.0, 0.0]
    noise = np.random.default_rng(0).integers(0, 256, (2, 32, 128, 3), dtype=np.uint8)
    assert ocr.score(noise, [make_prompt("house")] * 2).max() <= 0.2


def test_partial_matches_get_partial_credit(ocr):
    images = render_batch(["house", "cats"])
    scores = ocr.score(images, [make_prompt("mouse"), make_prompt("cat")])
    torch.testing.assert_close(scores, torch.tensor([0.8, 0.75]))


def test_batch_scores_equal_one_by_one(ocr):
    words = ["apple", "zebra", "keyboard", "fox", "rainbow", "sky"]
    images = np.concatenate([render_batch(words), np.full((1, 32, 128, 3), 255, np.uint8)])
    prompts = [make_prompt(w) for w in ["apple", "zebras", "keyboard", "box", "rainbow", "sky", "cat"]]
    batched = ocr.score(images, prompts)
    single = torch.cat([ocr.score(images[i : i + 1], prompts[i : i + 1]) for i in range(len(prompts))])
    torch.testing.assert_close(batched, single, rtol=0, atol=0)
    with OCRReward(num_threads=1, rec_batch_size=64) as one_call:  # the whole batch in one onnxruntime call
        torch.testing.assert_close(one_call.score(images, prompts), batched, rtol=0, atol=0)
    assert ocr.read(images[:1]) == ["apple"]


def test_float_tensor_input_and_submit(ocr):
    images = render_batch(["green", "tiger"])
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    prompts = [make_prompt("green"), make_prompt("tiger")]
    assert ocr.submit(as_float, prompts).result(timeout=60).tolist() == [1.0, 1.0]


def test_colours_do_not_matter(ocr):
    images = np.stack(
        [
            render_text("river", fg=(255, 255, 255), bg=(0, 0, 0)),
            render_text("river", fg=(200, 30, 30), bg=(230, 230, 120)),
        ]
    )
    assert ocr.score(images, [make_prompt("river")] * 2).tolist() == [1.0, 1.0]


def test_detection_mode_on_full_images(ocr):
    canvas = np.full((3, 160, 160, 3), 255, np.uint8)
    canvas[0, 64:96, 16:144] = render_text("garden")
    canvas[1, 24:56, 16:144] = render_text("red")
    canvas[1, 104:136, 16:144] = render_text("boat")
    prompts = [make_prompt("garden"), make_prompt("red boat"), make_prompt("garden")]
    assert ocr.resolve_mode(160, 160) == "det"
    assert ocr.score(canvas, prompts).tolist() == [1.0, 1.0, 0.0]


def test_detection_mode_reads_tiny_lines():
    with OCRReward(mode="det", num_threads=1) as det:
        images = render_batch(["lemon", "wolf"], size=(16, 64))
        assert det.score(images, [make_prompt("lemon"), make_prompt("wolf")]).tolist() == [1.0, 1.0]


def test_prompt_without_quotes_raises(ocr):
    with pytest.raises(ValueError, match="double quotes"):
        ocr.score(render_batch(["cat"]), ["a cat"])


def test_thread_count_reaches_onnxruntime(ocr):
    session = ocr._engine.text_rec.session.session  # rapidocr TextRecognizer -> OrtInferSession -> ort session
    assert session.get_session_options().intra_op_num_threads == 1
    assert ocr._engine.cfg.Rec.model_path == str(bundled_models()["rec"])


def test_no_network_is_used(monkeypatch):
    from rapidocr.utils import download_file

    def refuse(*args, **kwargs):
        raise AssertionError("OCRReward tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(download_file.DownloadFile, "run", classmethod(refuse))
    with OCRReward(mode="auto", num_threads=1, use_cls=True) as reward:
        line = render_batch(["moon"])
        full = np.full((1, 96, 96, 3), 255, np.uint8)
        full[0, 32:64, 0:96] = render_text("moon", size=(32, 96))
        assert reward.score(line, [make_prompt("moon")]).tolist() == [1.0]
        assert reward.score(full, [make_prompt("moon")]).tolist() == [1.0]
