"""Prompts of the shapes task: grammar, the benchmark categories, a train / held-out split, and parsing.

Grammar (lower case, single spaces):

    prompt   := phrase (" and " phrase)* | single " " relation " " single
    phrase   := single | number " " color " " shape "s"
    single   := "a " color " " shape
    number   := "two" | "three" | "four" | "five" | "six"
    relation := "left of" | "right of" | "above" | "below"

Benchmark categories (GenEval's six tags; every object has a colour because the object classes are only three
shapes); each tests one skill:

    single_object  "a red circle"                       one object                    18 prompts
    two_object     "a red circle and a red square"      two shapes, one colour        18
    counting       "three red circles"                  2-4 of one kind               54
    colors         "a red circle and a blue circle"     one shape, two colours        45
    position       "a red circle left of a blue square" relation of two objects     1224 (612 scenes)
    color_attr     "a red circle and a blue square"     binding colours to shapes     90

The split holds out the same fraction of every category, drawn by a salted hash of the prompt's canonical
form, so "A left of B" and "B right of A" always fall on the same side.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vgpo_fast.rollout.prompts import sample_prompts as sample_prompts  # generic; re-exported for old callers

from .scene import (
    COLORS,
    OPPOSITE_RELATION,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    Requirements,
    as_rng,
    near_miss,
    near_miss_kinds,
)

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
COUNTING_RANGE: tuple[int, ...] = (2, 3, 4)
DEFAULT_HELD_OUT_FRACTION = 0.2
DEFAULT_SPLIT_SALT = "shapes-v1"
# The mistakes a noisy caption makes (`miscaptioned`): attributes a scene's layout decides; a wrong shape is not
# among them, so that caption noise leaves the model's drawing of shapes alone.
CAPTION_NOISE_KINDS: tuple[str, ...] = ("color", "count_plus", "count_minus", "side", "swap_colors")

_WORD_NUMBERS = {"a": 1, **{w: n for n, w in NUMBER_WORDS.items()}}
_PHRASE = re.compile(r"^(?P<num>\w+) (?P<color>\w+) (?P<shape>\w+?)(?P<plural>s?)$")
_RELATION = re.compile(r" (" + "|".join(RELATIONS) + r") ")


def _phrase(spec: ObjectSpec, count: int) -> str:
    if count == 1:
        return f"a {spec}"
    return f"{NUMBER_WORDS[count]} {spec}s"


def format_prompt(requirements: Requirements) -> str:
    """The prompt text for `requirements` (instances of one kind grouped, in order of first appearance)."""
    objs = requirements.objects
    if requirements.relation is not None:
        return f"{_phrase(objs[0], 1)} {requirements.relation} {_phrase(objs[1], 1)}"
    counts = requirements.counts()
    for spec, count in counts.items():
        if count not in _WORD_NUMBERS.values():
            raise ValueError(f"requirements holds {count} x {spec}; the grammar counts 1 to {max(NUMBER_WORDS)}")
    return " and ".join(_phrase(spec, count) for spec, count in counts.items())


def _parse_phrase(phrase: str, prompt: str) -> list[ObjectSpec]:
    m = _PHRASE.match(phrase)
    if m is None or m["num"] not in _WORD_NUMBERS:
        raise ValueError(f"prompt {prompt!r} is not in the shapes grammar: cannot read {phrase!r}")
    count = _WORD_NUMBERS[m["num"]]
    if (count > 1) != (m["plural"] == "s"):
        raise ValueError(f"prompt {prompt!r} is not in the shapes grammar: number and plural disagree in {phrase!r}")
    if m["color"] not in COLORS or m["shape"] not in SHAPES:
        raise ValueError(
            f"prompt {prompt!r} is not in the shapes grammar: colours are {COLORS}, shapes {SHAPES}, got {phrase!r}"
        )
    return [ObjectSpec(m["color"], m["shape"])] * count


@lru_cache(maxsize=65536)
def parse_prompt(prompt: str) -> Requirements:
    """The requirements a prompt states; raises ValueError naming the prompt when it is not in the grammar.

    Case and repeated whitespace are ignored.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().split())
    parts = _RELATION.split(text)
    if len(parts) == 3:
        a, b = _parse_phrase(parts[0], prompt), _parse_phrase(parts[2], prompt)
        if len(a) != 1 or len(b) != 1 or a[0] == b[0]:
            raise ValueError(f"prompt {prompt!r}: a relation needs two different single objects ('a ...')")
        return Requirements((a[0], b[0]), parts[1])
    if len(parts) != 1:
        raise ValueError(f"prompt {prompt!r} is not in the shapes grammar: at most one relation")
    objects = [o for phrase in text.split(" and ") for o in _parse_phrase(phrase, prompt)]
    try:
        return Requirements(tuple(objects))
    except ValueError as e:
        raise ValueError(f"prompt {prompt!r}: {e}") from None


def category_of(requirements: Requirements) -> str:
    """The benchmark category of `requirements`, or "other" for grammatical prompts outside the benchmark."""
    counts = requirements.counts()
    if requirements.relation is not None:
        return "position"
    if len(counts) == 1:
        n = len(requirements.objects)
        return "single_object" if n == 1 else "counting" if n in COUNTING_RANGE else "other"
    if len(counts) == 2 and len(requirements.objects) == 2:
        a, b = requirements.objects
        if a.color == b.color:
            return "two_object"
        return "colors" if a.shape == b.shape else "color_attr"
    return "other"


def canonical_key(requirements: Requirements) -> str:
    """A string equal for requirements that describe the same set of scenes ("A left of B" = "B right of A",
    phrase order ignored)."""
    a_b = requirements.objects
    if requirements.relation is not None:
        relation = requirements.relation
        if relation in ("right of", "below"):
            a_b, relation = a_b[::-1], OPPOSITE_RELATION[relation]
        return f"{a_b[0]} | {relation} | {a_b[1]}"
    groups = sorted((str(spec), n) for spec, n in requirements.counts().items())
    return " + ".join(f"{n} x {spec}" for spec, n in groups)


def category_prompts(category: str) -> list[str]:
    """Every prompt of a benchmark category, in a fixed order."""
    objects = [ObjectSpec(c, s) for s in SHAPES for c in COLORS]
    if category == "single_object":
        reqs = [Requirements((o,)) for o in objects]
    elif category == "two_object":
        reqs = [
            Requirements((ObjectSpec(c, s1), ObjectSpec(c, s2)))
            for c in COLORS
            for s1, s2 in itertools.combinations(SHAPES, 2)
        ]
    elif category == "counting":
        reqs = [Requirements((o,) * n) for n in COUNTING_RANGE for o in objects]
    elif category == "colors":
        reqs = [
            Requirements((ObjectSpec(c1, s), ObjectSpec(c2, s)))
            for s in SHAPES
            for c1, c2 in itertools.combinations(COLORS, 2)
        ]
    elif category == "position":
        reqs = [Requirements((a, b), rel) for a in objects for b in objects if a != b for rel in RELATIONS]
    elif category == "color_attr":
        reqs = [
            Requirements((ObjectSpec(c1, s1), ObjectSpec(c2, s2)))
            for s1, s2 in itertools.combinations(SHAPES, 2)
            for c1 in COLORS
            for c2 in COLORS
            if c1 != c2
        ]
    else:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    return [format_prompt(r) for r in reqs]


def all_prompts() -> dict[str, list[str]]:
    """`{category: prompts}` for every benchmark category."""
    return {c: category_prompts(c) for c in CATEGORIES}


@dataclass(frozen=True)
class PromptSplit:
    """Disjoint train and held-out prompts, `{category: prompts}` each, with the same held-out fraction in
    every category."""

    train: dict[str, tuple[str, ...]]
    held_out: dict[str, tuple[str, ...]]

    def __getitem__(self, split: str) -> dict[str, tuple[str, ...]]:
        if split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
        return self.train if split == "train" else self.held_out


def split_prompts(held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION, salt: str = DEFAULT_SPLIT_SALT) -> PromptSplit:
    """Deterministic split: in each category, the scenes (canonical keys) ranked by a salted BLAKE2 hash, the
    first `round(fraction * count)` held out (at least one each side). Prompts of one scene stay together."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    train: dict[str, tuple[str, ...]] = {}
    held_out: dict[str, tuple[str, ...]] = {}
    for category in CATEGORIES:
        prompts = category_prompts(category)
        keys = {p: canonical_key(parse_prompt(p)) for p in prompts}
        groups = sorted(
            set(keys.values()), key=lambda k: hashlib.blake2b(f"{salt}\0{k}".encode(), digest_size=8).digest()
        )
        n_held = min(len(groups) - 1, max(1, round(held_out_fraction * len(groups))))
        held = set(groups[:n_held])
        held_out[category] = tuple(p for p in prompts if keys[p] in held)
        train[category] = tuple(p for p in prompts if keys[p] not in held)
    return PromptSplit(train, held_out)


def miscaptioned(prompt: str, rng: np.random.Generator | int = 0, kinds: Sequence[str] = CAPTION_NOISE_KINDS) -> str:
    """A prompt for a scene that `prompt` describes wrongly by one mistake of `kinds` (drawn uniformly among those
    that apply; see `near_miss`; never more objects than the counting range, which is what fits the image).
    Pretraining on (prompt, scene of the result) pairs is pretraining on noisy captions, as web alt-text is.
    Returns `prompt` itself when no kind applies."""
    requirements = parse_prompt(prompt)
    applicable = [
        k
        for k in near_miss_kinds(requirements)
        if k in kinds and not (k == "count_plus" and len(requirements.objects) >= max(COUNTING_RANGE))
    ]
    if not applicable:
        return prompt
    rng = as_rng(rng)
    return format_prompt(near_miss(requirements, applicable[int(rng.integers(len(applicable)))], rng))
