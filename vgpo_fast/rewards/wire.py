"""Wire format between `RewardClient` and the reward server: JSON plus raw bytes, never pickle.

Request body (`Content-Type: application/x-vgpo-reward`):

    b"VGPR" | header length, uint32 big-endian | header, UTF-8 JSON | payload

    header  = {"version": 1, "id": str, "prompts": [str] * B, "dtype": "uint8", "shape": [B, H, W, 3],
               "encoding": "raw" | "png", "lengths": [int] * B  (png only: bytes of each image's PNG)}
    payload = raw:  the C-order bytes of the uint8 array [B, H, W, 3], exactly B*H*W*3 of them
              png:  B PNG files (RGB, H x W) back to back, image i being `lengths[i]` bytes

Response body (`Content-Type: application/json`), success:

    {"id", "scores": [float | "nan" | "inf" | "-inf"] * B, "reward", "low", "high",
     "timing": {"queue_ms", "score_ms", "server_ms", "batch_images", "batch_requests"}}

and on failure `{"error": str, "kind": str}` with a 4xx/5xx status. Non-finite scores travel as the strings
"nan"/"inf"/"-inf" so the body stays standard JSON and the client can apply its own non-finite policy.

Every length, shape and count in a request is checked against the header and against the server's limits
before anything is allocated from it; a mismatch raises `WireError` (the server answers 400) or
`PayloadTooLarge` (413).
"""

from __future__ import annotations

import io
import json
import math
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

MAGIC = b"VGPR"
WIRE_VERSION = 1
CONTENT_TYPE = "application/x-vgpo-reward"
Encoding = Literal["raw", "png"]
ENCODINGS: tuple[str, ...] = ("raw", "png")

_PREFIX = struct.Struct(">4sI")  # magic, header length
MAX_HEADER_BYTES = 16 * 1024 * 1024  # prompts of a large batch fit many times over
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class WireError(ValueError):
    """A request or response does not follow the wire format (the server answers 400)."""


class PayloadTooLarge(WireError):
    """A request is over the server's limits on bytes, images or pixels (the server answers 413)."""


@dataclass(frozen=True)
class Limits:
    """The largest request a server accepts: body bytes, images per request, pixels (H*W) per image."""

    max_request_bytes: int = 256 * 1024 * 1024
    max_images: int = 4096
    max_pixels: int = 4096 * 4096


@dataclass
class ScoreRequest:
    """A decoded request: uint8 images `[B, H, W, 3]`, one prompt per image, and its id."""

    images: np.ndarray
    prompts: list[str]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def encode_request(
    images: np.ndarray,
    prompts: list[str],
    request_id: str | None = None,
    encoding: Encoding = "raw",
    png_compress_level: int = 1,
) -> bytes:
    """The request body for uint8 `images [B, H, W, 3]` and `prompts` (B strings)."""
    return b"".join(request_parts(images, prompts, request_id, encoding, png_compress_level))


def request_parts(
    images: np.ndarray,
    prompts: list[str],
    request_id: str | None = None,
    encoding: Encoding = "raw",
    png_compress_level: int = 1,
) -> list[bytes | memoryview]:
    """The request body as a list of buffers, in order (raw pixels as a view of `images`, not a copy)."""
    is_array = isinstance(images, np.ndarray)
    if not is_array or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        desc = f"{images.dtype} {images.shape}" if is_array else type(images).__name__
        raise ValueError(f"images must be a uint8 numpy array [B, H, W, 3], got {desc}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"prompts must have one entry per image: {images.shape[0]} images, {len(prompts)} prompts")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    header: dict[str, Any] = {
        "version": WIRE_VERSION,
        "id": request_id or uuid.uuid4().hex,
        "prompts": [str(p) for p in prompts],
        "dtype": "uint8",
        "shape": list(images.shape),
        "encoding": encoding,
    }
    if encoding == "raw":
        payload = [np.ascontiguousarray(images).data]
    else:
        payload = [_png_bytes(im, png_compress_level) for im in images]
        header["lengths"] = [len(p) for p in payload]
    head = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return [_PREFIX.pack(MAGIC, len(head)) + head, *payload]


def _png_bytes(image: np.ndarray, compress_level: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _header_field(header: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in header:
        raise WireError(f"request header is missing {key!r} (has {sorted(header)})")
    value = header[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError(f"request header {key!r} has the wrong type: got {type(value).__name__}")
    return value


def decode_request(body: bytes | bytearray | memoryview, limits: Limits | None = None) -> ScoreRequest:
    """The images and prompts of a request `body`; `WireError` / `PayloadTooLarge` say what is wrong."""
    limits = limits or Limits()
    body = memoryview(body)
    if len(body) > limits.max_request_bytes:
        raise PayloadTooLarge(f"request is {len(body)} bytes, over the limit of {limits.max_request_bytes}")
    if len(body) < _PREFIX.size:
        raise WireError(f"request is {len(body)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, head_len = _PREFIX.unpack_from(body, 0)
    if magic != MAGIC:
        raise WireError(
            f"request does not start with {MAGIC!r} (got {bytes(magic)!r}); "
            f"is the client speaking the vgpo-fast reward wire format?"
        )
    if head_len > min(MAX_HEADER_BYTES, len(body) - _PREFIX.size):
        raise WireError(f"request header length {head_len} runs past the body ({len(body)} bytes)")
    try:
        header = json.loads(bytes(body[_PREFIX.size : _PREFIX.size + head_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"request header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(f"request header must be a JSON object, got {type(header).__name__}")
    version = _header_field(header, "version", int)
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version} is not supported (server speaks {WIRE_VERSION})")
    request_id = str(header.get("id") or uuid.uuid4().hex)[:128]
    prompts = _header_field(header, "prompts", list)
    if not all(isinstance(p, str) for p in prompts):
        raise WireError("request header 'prompts' must be a list of strings")
    if _header_field(header, "dtype", str) != "uint8":
        raise WireError(f"request dtype must be 'uint8', got {header['dtype']!r}")
    shape = _header_field(header, "shape", list)
    if len(shape) != 4 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise WireError(f"request shape must be 4 integers [B, H, W, 3], got {shape}")
    b, h, w, c = shape
    if c != 3 or b < 1 or h < 1 or w < 1:
        raise WireError(f"request shape must be [B, H, W, 3] with B, H, W >= 1, got {shape}")
    if b != len(prompts):
        raise WireError(f"request has {len(prompts)} prompts for {b} images (shape {shape})")
    if b > limits.max_images:
        raise PayloadTooLarge(f"request has {b} images, over the limit of {limits.max_images}")
    if h * w > limits.max_pixels:
        raise PayloadTooLarge(f"request images are {h}x{w} = {h * w} pixels, over the limit of {limits.max_pixels}")
    encoding = header.get("encoding", "raw")
    payload = body[_PREFIX.size + head_len :]
    if encoding == "raw":
        expected = b * h * w * 3
        if len(payload) != expected:
            raise WireError(f"request payload is {len(payload)} bytes; shape {shape} uint8 needs {expected}")
        # A view of the body: writable when the body is a bytearray (as the server reads it), no copy.
        images = np.frombuffer(payload, dtype=np.uint8).reshape(b, h, w, 3)
    elif encoding == "png":
        images = _decode_pngs(payload, header, (b, h, w))
    else:
        raise WireError(f"request encoding must be one of {ENCODINGS}, got {encoding!r}")
    return ScoreRequest(images=images, prompts=prompts, request_id=request_id)


def _decode_pngs(payload: memoryview, header: dict[str, Any], shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    b, h, w = shape
    lengths = _header_field(header, "lengths", list)
    if len(lengths) != b or not all(type(n) is int and n > 0 for n in lengths):
        raise WireError(f"request 'lengths' must be {b} positive integers (one per PNG), got {len(lengths)} entries")
    if sum(lengths) != len(payload):
        raise WireError(f"request 'lengths' add up to {sum(lengths)} bytes, the payload is {len(payload)}")
    out = np.empty((b, h, w, 3), dtype=np.uint8)
    start = 0
    for i, n in enumerate(lengths):
        try:
            with Image.open(io.BytesIO(payload[start : start + n])) as im:
                # Checked before decoding: a small PNG can declare a huge image.
                if im.format != "PNG" or im.size != (w, h):
                    raise WireError(
                        f"image {i} is a {im.format} of {im.size[0]}x{im.size[1]} (W x H); "
                        f"the header says PNG of {w}x{h}"
                    )
                out[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, WireError):
                raise
            raise WireError(f"image {i} is not a readable PNG: {exc}") from None
        start += n
    return out


def _json_score(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def encode_response(
    request_id: str, scores: np.ndarray, reward: str, low: float, high: float, timing: dict[str, float]
) -> bytes:
    """JSON body for `scores [B]` (float; non-finite entries as "nan"/"inf"/"-inf")."""
    body = {
        "id": request_id,
        "scores": [_json_score(float(x)) for x in np.asarray(scores).reshape(-1)],
        "reward": reward,
        "low": low,
        "high": high,
        "timing": timing,
    }
    return json.dumps(body, allow_nan=False).encode("utf-8")


def encode_error(message: str, kind: str) -> bytes:
    """JSON body of an error reply: `{"error": message, "kind": kind}`."""
    return json.dumps({"error": message, "kind": kind}).encode("utf-8")


def decode_response(body: bytes, expected: int) -> tuple[np.ndarray, dict[str, Any]]:
    """float64 scores `[expected]` (non-finite restored) and the whole reply object from a success `body`."""
    try:
        reply = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"reply is not UTF-8 JSON ({exc}): {body[:200]!r}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("scores"), list):
        raise WireError(f"reply has no 'scores' list: {body[:200]!r}")
    raw = reply["scores"]
    if len(raw) != expected:
        raise WireError(f"reply has {len(raw)} scores for {expected} images")
    scores = np.empty(expected, dtype=np.float64)
    for i, x in enumerate(raw):
        if isinstance(x, str) and x in _NONFINITE:
            scores[i] = _NONFINITE[x]
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            scores[i] = x
        else:
            raise WireError(f"reply score {i} is {x!r}, not a number")
    return scores, reply


def error_message(body: bytes) -> str:
    """The 'error' text of an error reply, or the start of the body when it is not one."""
    try:
        reply = json.loads(body.decode("utf-8"))
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            return reply["error"]
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
