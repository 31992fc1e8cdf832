"""OCR reward: how closely the text read from an image matches the quoted text of its prompt.

score = 1 - Levenshtein(read, target) / max(len(read), len(target)), both normalised (lower-case, whitespace runs
collapsed to one space, ends stripped); 1 when both are empty. Range [0, 1].

Reading is PP-OCR (rapidocr on onnxruntime, CPU) with the models bundled inside the rapidocr wheel, passed by
path so no download code path is ever taken: PP-OCRv6 small detector and recogniser (multilingual, Latin
included) and the PP-OCR mobile v2.0 180-degree classifier.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vgpo_fast.rewards.base import NonFinitePolicy, RewardModel, to_uint8_images
from vgpo_fast.rewards.text import extract_quoted_text  # re-exported: the OCR target of a prompt

OCRMode = Literal["auto", "rec", "det"]

_SPACES = re.compile(r"\s+")

# The model files shipped inside rapidocr 3.x (rapidocr/models/); see `bundled_models`.
_DET_MODEL = "PP-OCRv6_det_small.onnx"
_REC_MODEL = "PP-OCRv6_rec_small.onnx"
_CLS_MODEL = "ch_ppocr_mobile_v2.0_cls_mobile.onnx"


def normalize_text(text: str) -> str:
    """Lower-cased, whitespace runs collapsed to one space, ends stripped."""
    return _SPACES.sub(" ", text).strip().lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between `a` and `b`."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_similarity(read: str, target: str) -> float:
    """1 - normalised edit distance of the normalised strings, in [0, 1]; 1.0 when both are empty."""
    read, target = normalize_text(read), normalize_text(target)
    longest = max(len(read), len(target))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(read, target) / longest


def bundled_models() -> dict[str, Path]:
    """Paths of the ONNX models inside the installed rapidocr package: keys 'det', 'rec', 'cls'."""
    try:
        import rapidocr
    except ImportError as exc:
        raise ImportError("OCRReward needs rapidocr and onnxruntime: pip install 'vgpo-fast[rewards]'") from exc
    root = Path(rapidocr.__file__).resolve().parent / "models"
    paths = {"det": root / _DET_MODEL, "rec": root / _REC_MODEL, "cls": root / _CLS_MODEL}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"rapidocr's bundled models are missing (a different rapidocr version?): {missing}")
    return paths


class OCRReward(RewardModel):
    """Text-match reward in [0, 1] from PP-OCR: the target is the quoted text of each prompt.

    mode: 'rec' reads each whole image as one text line (recognition only; the batch goes to onnxruntime in
    calls of `rec_batch_size` images); 'det' detects text boxes first, reads each box, and joins the reads in
    reading order with spaces; 'auto' picks 'rec' for line-shaped images (H <= `line_max_height` px and
    W >= 2 H) and 'det' otherwise.
    rec_batch_size: on CPU larger calls are not faster (one thread, 32 lines of 32x128: 48 img/s in calls of 1,
    44 in calls of 8, 38-40 in one call of 32), so the default is 8; raise it for many threads or a GPU.
    Small images need no upscaling here: the recogniser resizes every line to 48 px high, and rapidocr brings a
    short side under 30 px up to 32 before detection (16x64 renders read perfectly in both modes; 12x48 is where
    reads start to fail, and upscaling first made that worse). The detector sees the image at its own size up to
    `det_max_side` px (longer sides are scaled down); rapidocr's default instead scales the short side up to
    736 px, ~90x slower on 32x128 lines.
    use_cls: run the 180-degree line classifier first; off by default because it turns some short upright words
    upside down (measured: 2 of 174 rendered words misread with it, e.g. "gold" as "plob", none without).
    Reads with recogniser confidence below `min_confidence` count as empty.
    num_threads: onnxruntime intra-op threads per session (None: onnxruntime's default, one per core; values above
    the core count are clamped to it).
    """

    name = "ocr"
    low = 0.0
    high = 1.0

    def __init__(
        self,
        mode: OCRMode = "auto",
        num_threads: int | None = None,
        line_max_height: int = 64,
        min_confidence: float = 0.0,
        use_cls: bool = False,
        rec_batch_size: int = 8,
        det_max_side: int = 960,
        nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        super().__init__(nonfinite)
        if mode not in ("auto", "rec", "det"):
            raise ValueError(f"mode must be 'auto', 'rec' or 'det', got {mode!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if rec_batch_size < 1:
            raise ValueError(f"rec_batch_size must be >= 1, got {rec_batch_size}")
        if line_max_height < 1:
            raise ValueError(f"line_max_height must be >= 1, got {line_max_height}")
        if det_max_side < 32:
            raise ValueError(f"det_max_side must be >= 32, got {det_max_side}")
        self.mode = mode
        self.line_max_height = line_max_height
        self.min_confidence = min_confidence
        self.use_cls = use_cls
        self._lock = threading.Lock()
        self._engine = self._build_engine(num_threads, rec_batch_size, det_max_side)

    def _build_engine(self, num_threads: int | None, rec_batch_size: int, det_max_side: int) -> Any:
        from rapidocr import RapidOCR

        paths = bundled_models()
        # rapidocr ignores thread counts above the core count; clamp so the setting always takes effect.
        threads = -1 if num_threads is None else min(num_threads, os.cpu_count() or 1)
        return RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.text_score": self.min_confidence,
                "Det.model_path": str(paths["det"]),
                "Rec.model_path": str(paths["rec"]),
                "Cls.model_path": str(paths["cls"]),
                "Rec.rec_batch_num": rec_batch_size,
                "Det.limit_type": "max",
                "Det.limit_side_len": det_max_side,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def resolve_mode(self, height: int, width: int) -> Literal["rec", "det"]:
        """The mode used for images of `height` x `width` px."""
        if self.mode != "auto":
            return self.mode
        return "rec" if height <= self.line_max_height and width >= 2 * height else "det"

    def read(self, images: Any) -> list[str]:
        """The text read from each image of a batch (any form `score` takes), raw: not normalised."""
        images = to_uint8_images(images)
        mode = self.resolve_mode(*images.shape[1:3])
        crops = [np.ascontiguousarray(im[..., ::-1]) for im in images]  # RGB -> BGR, PP-OCR's channel order
        with self._lock:
            if mode == "rec":
                return self._read_lines(crops)
            return [self._read_full(im) for im in crops]

    def _read_lines(self, crops: list[np.ndarray]) -> list[str]:
        if self.use_cls:
            crops, _ = self._engine.cls_and_rotate(crops)
        out = self._engine.recognize_txt(crops)
        return [t if s >= self.min_confidence else "" for t, s in zip(out.txts, out.scores, strict=True)]

    def _read_full(self, image: np.ndarray) -> str:
        out = self._engine(image, use_det=True, use_cls=self.use_cls, use_rec=True)
        return " ".join(out.txts) if getattr(out, "txts", None) else ""

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        targets = [extract_quoted_text(p) for p in prompts]
        reads = self.read(images)
        return np.array([text_similarity(r, t) for r, t in zip(reads, targets, strict=True)], dtype=np.float64)
