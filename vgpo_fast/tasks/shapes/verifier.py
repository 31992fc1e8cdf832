"""Compositional verifier of the shapes task: GenEval-like scores from pixels alone (numpy only).

Pipeline, batched over images in numpy:
1. colour segmentation: each pixel takes its nearest palette colour (RGB distance) if within `max_color_dist`;
   the background colour and anything farther are no object;
2. connected components (4-connectivity) of equal colour: min-label propagation with pointer jumping over
   the whole batch at once;
3. components smaller than 20% of the smallest object box (`min_component_area`) are noise and dropped;
4. each component's shape from box-normalised features (`classify_shapes`): fill (area / bounding-box area:
   square 1, circle ~0.77, triangle ~0.5), top mass (share of its pixels in the upper half of its box: 0.5
   for circles and squares, ~0.27 for the upward triangle), aspect, and left-right mirror symmetry; ragged,
   lopsided or elongated components are "other" objects (they count, as extras or as colour-only matches);
5. the prompt's requirements (`prompts.parse_prompt`) checked against the detections (`evaluate_detections`).

Scores (`Verdict`):
- strict (0/1, GenEval-like but exact): the detected objects are exactly the required multiset of
  (colour, shape), no missing and no extra ones (extras would let a policy draw everything), and the
  relation, if any, holds between the matched objects' centroids (`relation_holds`).
- partial in [0, 1]: required and detected objects are matched (exact matches first, then objects sharing
  only a colour or only a shape, each worth `attribute_credit`, default 0.25); the object score is the
  F1-like `2 * credit / (n_required + n_detected)`, so missing and extra objects both cost. With a relation,
  half the score is the object score and half the relation, weighted by the mean credit of its two objects.
  Right colour with the wrong shape earns 0.25, not 0.8: shape, the hard part, carries the reward.
  Examples: wrong colour or shape of a single object 0.25; one object too many / few of three 0.86 / 0.8;
  sides swapped 0.5; colours of two objects swapped 0.25; blank 0.

The reward built on it (`build_reward("shapes")`, registered by `vgpo_fast.tasks.registry`) is
`vgpo_fast.tasks.shapes.reward.CompositionalReward`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .scene import (
    BACKGROUND,
    COLORS,
    PALETTE,
    Requirements,
    check_image_size,
    min_palette_distance,
    object_size_range,
    relation_holds,
)

# Shape rules on box-normalised features. Margins, measured on renders at 7-24 px boxes: crisp triangles
# have fill 0.50-0.57 and top mass 0.25-0.31, crisp circles fill 0.74-0.81; with a [0.25, 0.5, 0.25] blur
# (edges eroded by the colour threshold) triangles reach fill 0.78 / top mass 0.36, circles drop to fill
# 0.51, squares to 0.92. Top mass is what tells a triangle; fill tells a circle from a square.
TRIANGLE_TOP_MASS = (0.15, 0.40)
TRIANGLE_FILL = (0.35, 0.85)
ROUND_TOP_MASS = (0.40, 0.60)  # circles and squares: as much mass above the middle as below
SQUARE_MIN_FILL = 0.88
CIRCLE_MIN_FILL = 0.50
MAX_ASPECT = 1.5  # long / short side of the bounding box
MIN_MIRROR = 0.75  # share of pixels whose left-right mirror image (in the box) is in the component too
OTHER_SHAPE = "other"


@dataclass(frozen=True)
class Detection:
    """One object found in an image: palette colour, shape (or "other"), area (px), centroid `(x, y)` (px,
    pixel centres at +0.5), bounding box `(x0, y0, x1, y1)` (inclusive px), and the shape features
    (`classify_shapes`)."""

    color: str
    shape: str
    area: int
    center: tuple[float, float]
    bbox: tuple[int, int, int, int]
    fill: float
    top_mass: float
    mirror: float


@dataclass(frozen=True)
class Verdict:
    """How an image meets a prompt: strict pass, partial credit in [0, 1], matched-object counts, whether the
    relation holds (None without one) and the detections."""

    strict: bool
    partial: float
    n_required: int
    n_detected: int
    n_exact: int
    relation_ok: bool | None
    detections: tuple[Detection, ...]


def min_component_area(image_size: int) -> int:
    """Smallest component (px) counted as an object at `image_size`: 20% of the smallest object box."""
    lo, _ = object_size_range(image_size)
    return max(4, math.ceil(0.2 * lo * lo))


def segment_colors(images: np.ndarray, max_color_dist: float) -> np.ndarray:
    """int8 `[B, H, W]`: the palette index (order of `COLORS`) of each pixel of uint8 `images [B, H, W, 3]`,
    -1 for background, and for pixels farther than `max_color_dist` (RGB Euclidean) from every colour."""
    planes = images.astype(np.float32).transpose(3, 0, 1, 2)  # [3, B, H, W]
    best_d2 = np.full(images.shape[:-1], np.inf, dtype=np.float32)
    best = np.full(images.shape[:-1], -1, dtype=np.int8)
    # One pass per reference colour on whole planes: faster than a [N, 3] x [3, K] product, whose inner
    # dimension of 3 BLAS handles poorly. The background is index K and maps to -1 below.
    for k, rgb in enumerate([*PALETTE.values(), BACKGROUND]):
        d2 = (planes[0] - rgb[0]) ** 2 + (planes[1] - rgb[1]) ** 2 + (planes[2] - rgb[2]) ** 2
        closer = d2 < best_d2
        best_d2 = np.where(closer, d2, best_d2)
        best = np.where(closer, np.int8(k), best)
    classes = np.where((best_d2 <= max_color_dist**2) & (best < len(COLORS)), best, np.int8(-1))
    return classes


def label_components(classes: np.ndarray) -> np.ndarray:
    """int64 `[B, H, W]` component labels of `classes [B, H, W]` (>= 0: a colour, -1: nothing) under
    4-connectivity between equal classes. A component's label is the flat index (into `[B, H, W]`) of its
    first pixel; pixels of class -1 keep their own index and are to be ignored."""
    b, h, w = classes.shape
    fg = classes >= 0
    link_x = fg[:, :, :-1] & (classes[:, :, :-1] == classes[:, :, 1:])  # [B, H, W-1]
    link_y = fg[:, :-1, :] & (classes[:, :-1, :] == classes[:, 1:, :])  # [B, H-1, W]
    labels = np.arange(b * h * w, dtype=np.int64).reshape(b, h, w)
    while True:
        new = labels.copy()
        pair = np.minimum(labels[:, :, :-1], labels[:, :, 1:])
        new[:, :, :-1] = np.where(link_x, np.minimum(new[:, :, :-1], pair), new[:, :, :-1])
        new[:, :, 1:] = np.where(link_x, np.minimum(new[:, :, 1:], pair), new[:, :, 1:])
        pair = np.minimum(labels[:, :-1, :], labels[:, 1:, :])
        new[:, :-1, :] = np.where(link_y, np.minimum(new[:, :-1, :], pair), new[:, :-1, :])
        new[:, 1:, :] = np.where(link_y, np.minimum(new[:, 1:, :], pair), new[:, 1:, :])
        # Pointer jumping: a label is a pixel of the same component with a smaller index, so its label is
        # a valid (smaller) label too; this makes the number of sweeps logarithmic in the component size.
        new = new.reshape(-1)[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def classify_shapes(fill: np.ndarray, top_mass: np.ndarray, aspect: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Shape names `[N]` (object array) from component features `[N]`:

    triangle  top mass in TRIANGLE_TOP_MASS, fill in TRIANGLE_FILL
    square    top mass in ROUND_TOP_MASS, fill >= SQUARE_MIN_FILL
    circle    top mass in ROUND_TOP_MASS, fill in [CIRCLE_MIN_FILL, SQUARE_MIN_FILL)
    other     anything else, or aspect > MAX_ASPECT, or mirror < MIN_MIRROR (lopsided blobs)
    """
    regular = (aspect <= MAX_ASPECT) & (mirror >= MIN_MIRROR)
    triangle = (
        (top_mass >= TRIANGLE_TOP_MASS[0])
        & (top_mass <= TRIANGLE_TOP_MASS[1])
        & (fill >= TRIANGLE_FILL[0])
        & (fill <= TRIANGLE_FILL[1])
    )
    balanced = (top_mass > ROUND_TOP_MASS[0]) & (top_mass < ROUND_TOP_MASS[1])
    square = balanced & (fill >= SQUARE_MIN_FILL)
    circle = balanced & (fill >= CIRCLE_MIN_FILL) & (fill < SQUARE_MIN_FILL)
    names = np.full(fill.shape, OTHER_SHAPE, dtype=object)
    names[regular & circle] = "circle"
    names[regular & square] = "square"
    names[regular & triangle] = "triangle"
    return names


def _membership(x: np.ndarray | float, lo: float, hi: float, margin: float) -> np.ndarray:
    """1 inside [lo, hi], falling linearly to 0 at `margin` outside it."""
    dist = np.maximum(lo - np.asarray(x, dtype=np.float64), 0.0) + np.maximum(np.asarray(x, dtype=np.float64) - hi, 0.0)
    return np.clip(1.0 - dist / margin, 0.0, 1.0)


# Margins of the graded shape scores: how far outside a rule's interval a feature may lie before the score is 0.
SOFT_MARGINS = {"fill": 0.15, "top_mass": 0.1, "aspect": 0.5, "mirror": 0.25}


def shape_scores(det: Detection) -> dict[str, float]:
    """Graded version of `classify_shapes` for one detection: shape -> score in [0, 1], the product of a linear
    membership per rule (1 where the hard rule holds, 0 at `SOFT_MARGINS` outside it). A component the hard rules
    call shape s scores 1 for s; a ragged near-square scores between 0 and 1 for "square", closer to 1 the more
    square it is: the partial credit RL can climb (`CompositionalReward(mode="soft")`)."""
    m = SOFT_MARGINS
    x0, y0, x1, y1 = det.bbox
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    regular = float(
        _membership(max(bw, bh) / min(bw, bh), 0.0, MAX_ASPECT, m["aspect"])
        * _membership(det.mirror, MIN_MIRROR, 1.0, m["mirror"])
    )
    balanced = float(_membership(det.top_mass, *ROUND_TOP_MASS, m["top_mass"]))
    return {
        "circle": regular * balanced * float(_membership(det.fill, CIRCLE_MIN_FILL, SQUARE_MIN_FILL, m["fill"])),
        "square": regular * balanced * float(_membership(det.fill, SQUARE_MIN_FILL, 1.0, m["fill"])),
        "triangle": regular
        * float(
            _membership(det.top_mass, *TRIANGLE_TOP_MASS, m["top_mass"])
            * _membership(det.fill, *TRIANGLE_FILL, m["fill"])
        ),
    }


def detect_objects(images: np.ndarray, max_color_dist: float | None = None) -> list[list[Detection]]:
    """The objects in each of uint8 `images [B, H, W, 3]` (square, 16-128 px), largest first."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
    b, h, w, _ = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h} x {w}")
    check_image_size(h)
    if max_color_dist is None:
        max_color_dist = default_max_color_dist()
    classes = segment_colors(images, max_color_dist)
    labels = label_components(classes)
    pix = np.flatnonzero(classes.reshape(-1) >= 0)  # flat indices of object pixels
    out: list[list[Detection]] = [[] for _ in range(b)]
    if pix.size == 0:
        return out
    roots, comp = np.unique(labels.reshape(-1)[pix], return_inverse=True)
    area = np.bincount(comp)
    keep = area >= min_component_area(h)
    if not keep.any():
        return out
    ys, xs = (pix // w) % h, pix % w
    n = roots.size
    x0 = np.full(n, w, dtype=np.int64)
    y0 = np.full(n, h, dtype=np.int64)
    x1 = np.full(n, -1, dtype=np.int64)
    y1 = np.full(n, -1, dtype=np.int64)
    np.minimum.at(x0, comp, xs)
    np.minimum.at(y0, comp, ys)
    np.maximum.at(x1, comp, xs)
    np.maximum.at(y1, comp, ys)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    mid = y0 + bh / 2
    top_mass = np.bincount(comp, np.clip(mid[comp] - ys, 0.0, 1.0), minlength=n) / area
    fill = area / (bw * bh)
    cx = np.bincount(comp, xs + 0.5, minlength=n) / area
    cy = np.bincount(comp, ys + 0.5, minlength=n) / area
    # Left-right mirror of each pixel inside its box, same component there?
    mirrored = pix - xs + (x0[comp] + x1[comp] - xs)
    mirror = np.bincount(comp, labels.reshape(-1)[mirrored] == roots[comp], minlength=n) / area
    shapes = classify_shapes(fill, top_mass, np.maximum(bw, bh) / np.minimum(bw, bh), mirror)
    color_idx = classes.reshape(-1)[roots]
    image_idx = roots // (h * w)
    for k in np.flatnonzero(keep)[np.argsort(-area[keep], kind="stable")]:
        out[int(image_idx[k])].append(
            Detection(
                color=COLORS[int(color_idx[k])],
                shape=str(shapes[k]),
                area=int(area[k]),
                center=(float(cx[k]), float(cy[k])),
                bbox=(int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])),
                fill=float(fill[k]),
                top_mass=float(top_mass[k]),
                mirror=float(mirror[k]),
            )
        )
    return out


def default_max_color_dist() -> float:
    """0.45 x the smallest palette distance (~63 RGB units): segmentation can never be ambiguous."""
    return 0.45 * min_palette_distance()


def _max_matching(candidates: list[list[int]], taken: set[int]) -> list[int | None]:
    """Maximum bipartite matching (augmenting paths): `candidates[i]` the detections required object i may
    take, `taken` detections already used. Returns the detection of each required object or None."""
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in candidates[i]:
            if j in taken or j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(candidates)):
        augment(i, set())
    match: list[int | None] = [None] * len(candidates)
    for j, i in owner.items():
        match[i] = j
    return match


def evaluate_detections(
    requirements: Requirements, detections: list[Detection], image_size: int, attribute_credit: float = 0.25
) -> Verdict:
    """The verdict of one image's `detections` against `requirements` (see the module docstring)."""
    required = requirements.objects
    n_req, n_det = len(required), len(detections)
    match: list[int | None] = [None] * n_req
    credit = [0.0] * n_req
    used: set[int] = set()
    # Exact matches first: with attribute_credit <= 0.5 an exact match is never worth trading for two
    # partial ones, and per (colour, shape) greedy takes as many exact matches as exist.
    for i, spec in enumerate(required):
        for j, d in enumerate(detections):
            if j not in used and d.color == spec.color and d.shape == spec.shape:
                match[i], credit[i] = j, 1.0
                used.add(j)
                break
    rest = [i for i in range(n_req) if match[i] is None]
    candidates = [
        [j for j, d in enumerate(detections) if d.color == required[i].color or d.shape == required[i].shape]
        for i in rest
    ]
    for i, j in zip(rest, _max_matching(candidates, used), strict=True):
        if j is not None:
            match[i], credit[i] = j, attribute_credit
    n_exact = sum(c == 1.0 for c in credit)
    object_score = 2.0 * sum(credit) / (n_req + n_det)
    strict = n_exact == n_req == n_det
    relation_ok: bool | None = None
    partial = object_score
    if requirements.relation is not None:
        a, b = match
        relation_ok = (
            a is not None
            and b is not None
            and relation_holds(requirements.relation, detections[a].center, detections[b].center, image_size)
        )
        strict = strict and relation_ok
        partial = 0.5 * object_score + 0.5 * float(relation_ok) * (credit[0] + credit[1]) / 2
    return Verdict(
        strict=bool(strict),
        partial=1.0 if strict else min(partial, 1.0),
        n_required=n_req,
        n_detected=n_det,
        n_exact=n_exact,
        relation_ok=relation_ok,
        detections=tuple(detections),
    )


MAX_SOFT_DETECTIONS = 6  # the largest detections the soft matching considers (all count in the F1 denominator)


def soft_partial(
    requirements: Requirements, detections: list[Detection], image_size: int, attribute_credit: float = 0.25
) -> float:
    """The partial score with graded shape credit (`mode="soft"`): a required (colour, shape) matched to a
    detection of its colour earns `a + (1 - a) * shape_scores(d)[shape]` (a = attribute_credit; 1 for an exact
    match, a for the right colour in an illegible shape), one of another colour `a * shape_scores(d)[shape]`.
    The assignment of required objects to detections maximises the score, which combines credits as `partial`
    does (F1-like object score, half relation when the prompt has one). Always >= the hard partial score."""
    required = requirements.objects
    n_req, n_det = len(required), len(detections)
    dets = detections[:MAX_SOFT_DETECTIONS]
    scores = [shape_scores(d) for d in dets]
    credit_of = [
        [
            (attribute_credit + (1 - attribute_credit) * sc[spec.shape])
            if d.color == spec.color
            else attribute_credit * sc[spec.shape]
            for d, sc in zip(dets, scores, strict=True)
        ]
        for spec in required
    ]
    best = 0.0
    slots = max(len(dets), n_req)  # indices >= len(dets): left unmatched
    for assign in itertools.permutations(range(slots), n_req):
        credit = [credit_of[i][j] if j < len(dets) else 0.0 for i, j in enumerate(assign)]
        score = 2.0 * sum(credit) / (n_req + n_det)
        if requirements.relation is not None:
            a, b = assign
            ok = (
                a < len(dets)
                and b < len(dets)
                and relation_holds(requirements.relation, dets[a].center, dets[b].center, image_size)
            )
            score = 0.5 * score + 0.5 * float(ok) * (credit[0] + credit[1]) / 2
        best = max(best, score)
    return min(best, 1.0)
