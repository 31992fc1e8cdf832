"""Scenes of the shapes task and what a prompt asks for.

A scene is a few flat-coloured shapes (circle, square, upward triangle) on a plain grey background, each
inside an axis-aligned square box of `size` pixels with its top-left corner at integer pixel `(x, y)`
(x to the right, y downward). Boxes never overlap and keep `object_gap(image_size)` pixels between them.

`Requirements` is the meaning of a prompt: a list of object instances (colour, shape) and optionally one
relation `objects[0] <relation> objects[1]`. The layout sampler (`sample_scene`) draws one of the many scenes
that satisfy it from a seed; the verifier (`vgpo_fast.tasks.shapes.verifier`) checks one against an image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vgpo_fast.rollout.prompts import as_rng  # re-exported: the task's rng argument convention

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated colours far from each other and from the background in RGB (pairwise distance >= 139, green to
# grey; see `min_palette_distance`), so that nearest-colour segmentation with a threshold is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (128, 128, 128)

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

DEFAULT_IMAGE_SIZE = 24
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 128
MIN_OBJECT_SIZE = 7  # below 7 px a rasterised circle is an octagon or a near-square: shapes are not legible
MAX_OBJECTS = 6


def check_image_size(image_size: int) -> int:
    """`image_size` (px, square images) validated to lie in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE]."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an int, got {type(image_size).__name__}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")
    return int(image_size)


def object_size_range(image_size: int) -> tuple[int, int]:
    """Inclusive range (px) of object box sizes at `image_size`: about 28-38% of the side, at least 7 px."""
    image_size = check_image_size(image_size)
    lo = max(MIN_OBJECT_SIZE, round(0.28 * image_size))
    hi = max(lo, round(0.375 * image_size))
    return lo, hi


def object_gap(image_size: int) -> int:
    """Minimum empty pixels between two object boxes at `image_size` (1 px at 16, 2 at 24-32, 5 at 64)."""
    return max(1, check_image_size(image_size) // 12)


def min_palette_distance() -> float:
    """Smallest RGB Euclidean distance between two palette colours or a colour and the background."""
    rgb = np.array([*PALETTE.values(), BACKGROUND], dtype=np.float64)
    d = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    return float(d[~np.eye(len(rgb), dtype=bool)].min())


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for: a palette colour and a shape."""

    color: str
    shape: str

    def __post_init__(self) -> None:
        if self.color not in PALETTE:
            raise ValueError(f"color must be one of {COLORS}, got {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")

    def __str__(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Requirements:
    """What a prompt asks for: object instances (a multiset) and optionally `objects[0] relation objects[1]`.

    An image satisfies it when its objects are exactly these (no missing, no extra ones) and the relation,
    if any, holds between the centroids.
    """

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"objects must hold 1 to {MAX_OBJECTS} ObjectSpec, got {len(self.objects)}")
        if not all(isinstance(o, ObjectSpec) for o in self.objects):
            raise ValueError("objects must be a tuple of ObjectSpec")
        if self.relation is not None:
            if self.relation not in RELATIONS:
                raise ValueError(f"relation must be one of {RELATIONS} or None, got {self.relation!r}")
            if len(self.objects) != 2 or self.objects[0] == self.objects[1]:
                raise ValueError(f"a relation needs exactly two distinct objects, got {self.objects}")

    def counts(self) -> Counter[ObjectSpec]:
        """How many instances of each (colour, shape) are required."""
        return Counter(self.objects)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its box is `[x, x + size) x [y, y + size)` in pixels (x right, y down)."""

    color: str
    shape: str
    x: int
    y: int
    size: int

    def __post_init__(self) -> None:
        ObjectSpec(self.color, self.shape)
        if self.size < 1 or self.x < 0 or self.y < 0:
            raise ValueError(f"SceneObject needs size >= 1 and x, y >= 0, got x={self.x} y={self.y} size={self.size}")

    @property
    def center(self) -> tuple[float, float]:
        """Box centre `(x, y)` in pixels."""
        return self.x + self.size / 2, self.y + self.size / 2


@dataclass(frozen=True)
class Scene:
    """Objects drawn on a `image_size` x `image_size` background; boxes lie inside the image."""

    image_size: int
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        for o in self.objects:
            if o.x + o.size > self.image_size or o.y + o.size > self.image_size:
                raise ValueError(f"objects must lie inside the {self.image_size} px image, got {o}")


def relation_offsets(
    relation: str, center_a: tuple[float, float], center_b: tuple[float, float]
) -> tuple[float, float]:
    """`(along, cross)` px: how far A is from B in the relation's direction (> 0: the relation's side), and
    the offset on the other axis."""
    dx, dy = center_b[0] - center_a[0], center_b[1] - center_a[1]
    if relation == "left of":
        return dx, dy
    if relation == "right of":
        return -dx, dy
    if relation == "above":
        return dy, dx
    if relation == "below":
        return -dy, dx
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def relation_holds(
    relation: str, center_a: tuple[float, float], center_b: tuple[float, float], image_size: int
) -> bool:
    """Verifier's rule: A is `relation` B when A's centroid is at least 15% of the image side away in that
    direction and the direction is dominant (within 45 degrees of the axis)."""
    along, cross = relation_offsets(relation, center_a, center_b)
    return along >= 0.15 * image_size and along >= abs(cross)


_RESTARTS = 6  # per stage of `_placement_stages`


def _placement_stages(image_size: int) -> list[tuple[int, int, int, bool]]:
    """`(min size, max size, gap, packed)` tried in turn: the normal range, then smaller boxes and tighter
    gaps, and last a packed placement (each object at the first free position in scan order from a random
    corner) that fits crowded scenes random placement rarely finds (four objects at 16 px, five at 24)."""
    lo, hi = object_size_range(image_size)
    gap = object_gap(image_size)
    stages = [
        (lo, hi, gap, False),
        (lo, lo, gap, False),
        (lo, lo, 1, False),
        (MIN_OBJECT_SIZE, MIN_OBJECT_SIZE, 1, False),
        (MIN_OBJECT_SIZE, MIN_OBJECT_SIZE, 1, True),
    ]
    return list(dict.fromkeys(stages))


def sample_scene(
    requirements: Requirements, image_size: int = DEFAULT_IMAGE_SIZE, rng: np.random.Generator | int = 0
) -> Scene:
    """A random scene satisfying `requirements`. Objects are placed one after another, each size uniform in
    `object_size_range` and each position uniform over all free positions (no overlap, `object_gap` apart);
    a dead end restarts, and repeated dead ends shrink boxes and gaps (`_placement_stages`). A relation is
    drawn with a clear margin: boxes apart along its axis, the cross offset at most half the along offset.
    Deterministic given `rng` (a Generator or an int seed).

    Raises ValueError when the objects cannot be placed at this size (e.g. 5 or more objects at 16 px).
    """
    if not isinstance(requirements, Requirements):
        raise ValueError(f"requirements must be Requirements, got {type(requirements).__name__}")
    image_size = check_image_size(image_size)
    rng = as_rng(rng)
    n = len(requirements.objects)
    for lo, hi, gap, packed in _placement_stages(image_size):
        for _ in range(_RESTARTS):
            sizes = rng.integers(lo, hi + 1, size=n)
            boxes = _place(requirements.relation, sizes, gap, image_size, packed, rng)
            if boxes is not None:
                objects = tuple(
                    SceneObject(o.color, o.shape, x, y, s)
                    for o, (x, y, s) in zip(requirements.objects, boxes, strict=True)
                )
                return Scene(image_size, objects)
    raise ValueError(f"cannot place {n} objects in a {image_size} px image (requirements={requirements})")


@lru_cache(maxsize=1024)
def _positions(image_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners `(xs, ys)` of every box that fits, each int `[P, P]`, P = image_size - size + 1."""
    span = np.arange(image_size - size + 1)
    xs, ys = np.meshgrid(span, span, indexing="xy")
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _place(
    relation: str | None, sizes: np.ndarray, gap: int, image_size: int, packed: bool, rng: np.random.Generator
) -> list[tuple[int, int, int]] | None:
    """Boxes `(x, y, size)` placed in order at random free positions (packed: the first free one in scan
    order from a random corner), or None at a dead end."""
    boxes: list[tuple[int, int, int]] = []
    flip_x, flip_y = rng.integers(2, size=2) * 2 - 1
    for i, s in enumerate(sizes.tolist()):
        xs, ys = _positions(image_size, s)
        ok = np.ones(xs.shape, dtype=bool)
        for bx, by, bs in boxes:
            ok &= (xs + s + gap <= bx) | (bx + bs + gap <= xs) | (ys + s + gap <= by) | (by + bs + gap <= ys)
        if i == 0 and relation is not None:
            # Only positions of A that leave room for B: test B at its best spot, as far as possible along
            # the relation and aligned with A across it.
            b_s = int(sizes[1])
            ax_c, ay_c = xs + s / 2, ys + s / 2
            near, far = b_s / 2, image_size - b_s / 2
            if relation in ("left of", "right of"):
                b_c = (np.full(xs.shape, far if relation == "left of" else near), np.clip(ay_c, near, far))
            else:
                b_c = (np.clip(ax_c, near, far), np.full(ys.shape, far if relation == "above" else near))
            along, cross = relation_offsets(relation, (ax_c, ay_c), b_c)
            ok &= (along >= (s + b_s) / 2 + gap) & (np.abs(cross) <= along / 2)
        if i == 1 and relation is not None:
            ax, ay, a_s = boxes[0]
            along, cross = relation_offsets(relation, (ax + a_s / 2, ay + a_s / 2), (xs + s / 2, ys + s / 2))
            ok &= (along >= (a_s + s) / 2 + gap) & (np.abs(cross) <= along / 2)
        free = np.flatnonzero(ok)
        if free.size == 0:
            return None
        if packed:
            scan = (flip_y * ys.flat[free]) * (2 * image_size) + flip_x * xs.flat[free]
            k = int(free[np.argmin(scan)])
        else:
            k = int(free[rng.integers(free.size)])
        boxes.append((int(xs.flat[k]), int(ys.flat[k]), s))
    return boxes


NEAR_MISS_KINDS: tuple[str, ...] = ("color", "shape", "count_plus", "count_minus", "side", "swap_colors")


def near_miss_kinds(requirements: Requirements) -> tuple[str, ...]:
    """The near-miss kinds that apply to `requirements` (see `near_miss`)."""
    kinds = ["color", "shape"]
    if requirements.relation is None and len(requirements.counts()) == 1:
        if len(requirements.objects) < MAX_OBJECTS:
            kinds.append("count_plus")
        if len(requirements.objects) > 1:
            kinds.append("count_minus")
    if requirements.relation is not None:
        kinds.append("side")
    if len(requirements.objects) == 2:
        a, b = requirements.objects
        if a.color != b.color and (a.shape != b.shape or requirements.relation is not None):
            kinds.append("swap_colors")
    return tuple(kinds)


def near_miss(requirements: Requirements, kind: str, rng: np.random.Generator | int = 0) -> Requirements:
    """Requirements that differ from `requirements` by one mistake, so a scene drawn from them must fail it.

    kind: "color" / "shape" (one instance recoloured / reshaped), "count_plus" / "count_minus" (one instance
    more / fewer, single-kind prompts), "side" (relation reversed), "swap_colors" (the two objects' colours
    exchanged: a colour-attribution error).
    """
    if kind not in near_miss_kinds(requirements):
        raise ValueError(f"kind must be one of {near_miss_kinds(requirements)} for {requirements}, got {kind!r}")
    rng = as_rng(rng)
    objs = list(requirements.objects)
    if kind in ("color", "shape"):
        i = int(rng.integers(len(objs)))
        if kind == "color":
            choices = [c for c in COLORS if c != objs[i].color]
            objs[i] = ObjectSpec(choices[int(rng.integers(len(choices)))], objs[i].shape)
        else:
            choices = [s for s in SHAPES if s != objs[i].shape]
            objs[i] = ObjectSpec(objs[i].color, choices[int(rng.integers(len(choices)))])
        # "a red circle left of a blue circle" recoloured can become two blue circles: no relation left.
        same = requirements.relation is not None and objs[0] == objs[1]
        return Requirements(tuple(objs), None if same else requirements.relation)
    if kind == "count_plus":
        return Requirements((*objs, objs[0]))
    if kind == "count_minus":
        return Requirements(tuple(objs[:-1]))
    if kind == "side":
        return Requirements(requirements.objects, OPPOSITE_RELATION[requirements.relation])
    a, b = objs
    return Requirements((ObjectSpec(b.color, a.shape), ObjectSpec(a.color, b.shape)), requirements.relation)
