"""Reward wire format: round trips, and every malformed or oversized request rejected with a clear error."""

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpo_fast.rewards.wire import (
    MAGIC,
    Limits,
    PayloadTooLarge,
    WireError,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
    error_message,
)


def _images(b: int = 2, h: int = 4, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


def _body(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + payload


def _header(**changes: object) -> dict:
    header = {
        "version": 1,
        "id": "r1",
        "prompts": ["a", "b"],
        "dtype": "uint8",
        "shape": [2, 4, 5, 3],
        "encoding": "raw",
    }
    header.update(changes)
    return header


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_request_round_trip(encoding: str) -> None:
    images = _images(3)
    prompts = ["a red circle", 'the text "caf\u00e9"', ""]
    request = decode_request(encode_request(images, prompts, request_id="abc", encoding=encoding))
    assert request.request_id == "abc"
    assert request.prompts == prompts
    assert request.images.dtype == np.uint8
    np.testing.assert_array_equal(request.images, images)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    prompts=st.lists(st.text(max_size=12), min_size=4, max_size=4),
    encoding=st.sampled_from(["raw", "png"]),
)
def test_request_round_trip_any_shape(b: int, h: int, w: int, seed: int, prompts: list[str], encoding: str) -> None:
    images = _images(b, h, w, seed)
    request = decode_request(encode_request(images, prompts[:b], encoding=encoding))
    assert request.prompts == prompts[:b]
    np.testing.assert_array_equal(request.images, images)


def test_encode_request_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"uint8 numpy array \[B, H, W, 3\], got float32"):
        encode_request(np.zeros((1, 2, 2, 3), np.float32), ["a"])
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        encode_request(_images(2), ["a"])
    with pytest.raises(ValueError, match="encoding"):
        encode_request(_images(2), ["a", "b"], encoding="jpeg")  # type: ignore[arg-type]


PAYLOAD = bytes(2 * 4 * 5 * 3)
MALFORMED = {
    "short": (b"VG", "shorter than"),
    "magic": (b"JUNK" + bytes(100), "does not start with"),
    "header_past_end": (MAGIC + struct.pack(">I", 10**6) + b"{}", "runs past the body"),
    "header_not_json": (MAGIC + struct.pack(">I", 3) + b"{x}" + PAYLOAD, "not UTF-8 JSON"),
    "header_not_object": (_body([1, 2], PAYLOAD), "JSON object"),  # type: ignore[arg-type]
    "version": (_body(_header(version=9), PAYLOAD), "wire version 9"),
    "missing_prompts": (_body({k: v for k, v in _header().items() if k != "prompts"}, PAYLOAD), "'prompts'"),
    "prompt_not_str": (_body(_header(prompts=["a", 3]), PAYLOAD), "list of strings"),
    "dtype": (_body(_header(dtype="float32"), PAYLOAD), "dtype must be 'uint8'"),
    "shape_rank": (_body(_header(shape=[2, 4, 15]), PAYLOAD), "4 integers"),
    "shape_channels": (_body(_header(shape=[2, 4, 5, 4]), PAYLOAD), r"\[B, H, W, 3\]"),
    "shape_float": (_body(_header(shape=[2, 4.0, 5, 3]), PAYLOAD), "4 integers"),
    "prompt_count": (_body(_header(prompts=["a"]), PAYLOAD), "1 prompts for 2 images"),
    "payload_short": (_body(_header(), PAYLOAD[:-1]), "payload is 119 bytes; shape .* needs 120"),
    "payload_long": (_body(_header(), PAYLOAD + b"x"), "payload is 121 bytes"),
    "encoding": (_body(_header(encoding="jpeg"), PAYLOAD), "encoding must be one of"),
    "png_no_lengths": (_body(_header(encoding="png"), PAYLOAD), "'lengths'"),
    "png_lengths_sum": (_body(_header(encoding="png", lengths=[60, 61]), PAYLOAD), "add up to 121"),
    "png_not_png": (_body(_header(encoding="png", lengths=[60, 60]), PAYLOAD), "image 0 is not a readable"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_raises_wire_error(case: str) -> None:
    body, message = MALFORMED[case]
    with pytest.raises(WireError, match=message) as info:
        decode_request(body)
    assert not isinstance(info.value, PayloadTooLarge)


def test_png_of_wrong_size_rejected_before_decoding() -> None:
    good = encode_request(_images(1, 6, 6), ["a"], encoding="png")
    head_len = struct.unpack(">I", good[4:8])[0]
    header = json.loads(good[8 : 8 + head_len])
    header["shape"] = [1, 4, 5, 3]  # the PNG says 6x6
    with pytest.raises(WireError, match="image 0 is a PNG of 6x6 .* the header says PNG of 5x4"):
        decode_request(_body(header, good[8 + head_len :]))


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(max_request_bytes=100), "over the limit of 100"),
        (Limits(max_images=1), "2 images, over the limit of 1"),
        (Limits(max_pixels=19), "20 pixels, over the limit of 19"),
    ],
)
def test_request_over_limits_raises_payload_too_large(limits: Limits, message: str) -> None:
    with pytest.raises(PayloadTooLarge, match=message):
        decode_request(encode_request(_images(2), ["a", "b"]), limits)


def test_oversized_header_shape_rejected_without_allocating() -> None:
    # A 10^6-image header with a tiny payload must fail on the limit, not try to build the array.
    body = _body(_header(prompts=["p"] * 10**6, shape=[10**6, 1000, 1000, 3]), b"")
    with pytest.raises(PayloadTooLarge, match="images, over the limit"):
        decode_request(body, Limits(max_request_bytes=1 << 30))


def test_response_round_trip_keeps_non_finite() -> None:
    scores = np.array([0.25, np.nan, np.inf, -np.inf, 1e-30], dtype=np.float32)
    body = encode_response("id7", scores, "ocr", 0.0, 1.0, {"score_ms": 1.5})
    json.loads(body)  # standard JSON: no bare NaN / Infinity tokens
    assert b"NaN" not in body and b"Infinity" not in body
    decoded, reply = decode_response(body, 5)
    np.testing.assert_array_equal(decoded.astype(np.float32), scores)
    assert reply["id"] == "id7" and reply["reward"] == "ocr" and reply["timing"] == {"score_ms": 1.5}


@pytest.mark.parametrize(
    ("body", "expected", "message"),
    [
        (b"<html>", 1, "not UTF-8 JSON"),
        (b'{"error": "x"}', 1, "no 'scores' list"),
        (b'{"scores": [0.5]}', 2, "1 scores for 2 images"),
        (b'{"scores": ["half"]}', 1, "score 0 is 'half'"),
        (b'{"scores": [true]}', 1, "score 0 is True"),
    ],
)
def test_bad_response_raises(body: bytes, expected: int, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_response(body, expected)


def test_error_message() -> None:
    assert error_message(encode_error("bad shape", "bad_request")) == "bad shape"
    assert error_message(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    assert error_message(b"") == "(empty body)"
    assert math.isnan(decode_response(b'{"scores": ["nan"]}', 1)[0][0])
