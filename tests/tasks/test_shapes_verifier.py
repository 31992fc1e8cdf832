"""Compositional verifier of the shapes task (`verifier`, `reward`): ground truth passes, near misses fail with
partial credit, robust to mild noise."""

from collections import deque

import numpy as np
import pytest
import torch

from vgpo_fast.tasks.shapes.prompts import CATEGORIES, all_prompts, category_of, parse_prompt, sample_prompts
from vgpo_fast.tasks.shapes.render import render, render_prompts
from vgpo_fast.tasks.shapes.reward import CompositionalReward
from vgpo_fast.tasks.shapes.scene import (
    BACKGROUND,
    ObjectSpec,
    Requirements,
    Scene,
    SceneObject,
    near_miss,
    near_miss_kinds,
    sample_scene,
)
from vgpo_fast.tasks.shapes.verifier import detect_objects, label_components, min_component_area, shape_scores

ALL = {c: tuple(p) for c, p in all_prompts().items()}
STRICT = CompositionalReward("strict")
PARTIAL = CompositionalReward("partial")
SOFT = CompositionalReward("soft")


def _ground_truth(size: int, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    prompts = sample_prompts(ALL, n, rng=seed)
    return render_prompts(prompts, [seed * 100_000 + i for i in range(n)], size), prompts


@pytest.mark.parametrize("size", [24, 32])
def test_ground_truth_passes_every_category(size):
    images, prompts = _ground_truth(size, 600, seed=size)
    assert {category_of(parse_prompt(p)) for p in prompts} == set(CATEGORIES)
    verdicts = PARTIAL.evaluate(images, prompts)
    failed = [(p, v.detections) for p, v in zip(prompts, verdicts, strict=True) if not v.strict]
    assert not failed, failed[:3]
    assert all(v.partial == 1.0 for v in verdicts)
    assert (STRICT.score(images, prompts) == 1).all()


def test_ground_truth_passes_at_16_and_64():
    for size in (16, 64):
        images, prompts = _ground_truth(size, 120, seed=size)
        assert (STRICT.score(images, prompts) == 1).all(), size


@pytest.mark.parametrize("size", [24, 32])
def test_near_misses_fail_with_partial_credit(size):
    prompts = sample_prompts(ALL, 300, rng=7)
    images, miss_prompts, kinds = [], [], []
    for i, prompt in enumerate(prompts):
        req = parse_prompt(prompt)
        for kind in near_miss_kinds(req):
            if kind == "count_plus" and len(req.objects) == 4 and size == 24 and i % 4:
                continue  # five-object scenes are slow to place; a quarter of them suffice
            images.append(render(sample_scene(near_miss(req, kind, i), size, i)))
            miss_prompts.append(prompt)
            kinds.append(kind)
    assert set(kinds) == {"color", "shape", "count_plus", "count_minus", "side", "swap_colors"}
    strict = STRICT.score(np.stack(images), miss_prompts)
    partial = PARTIAL.score(np.stack(images), miss_prompts)
    assert (strict == 0).all(), [(p, k) for p, k, s in zip(miss_prompts, kinds, strict, strict=True) if s][:5]
    assert ((partial > 0) & (partial < 1)).all()


def _scene(size: int, *objects: tuple[str, str, int, int, int]) -> np.ndarray:
    return render(Scene(size, tuple(SceneObject(*o) for o in objects)))[None]


def test_partial_credit_values():
    def score(prompt: str, *objects: tuple[str, str, int, int, int]) -> tuple[float, float]:
        image = _scene(24, *objects)
        return float(STRICT.score(image, [prompt])[0]), float(PARTIAL.score(image, [prompt])[0])

    assert score("a red circle", ("red", "circle", 8, 8, 8)) == (1.0, 1.0)
    assert score("a red circle", ("blue", "circle", 8, 8, 8)) == (0.0, 0.25)  # wrong colour
    assert score("a red circle", ("red", "square", 8, 8, 8)) == (0.0, 0.25)  # wrong shape: colour alone
    assert score("a red circle", ("blue", "square", 8, 8, 8)) == (0.0, 0.0)
    three = [("red", "circle", 0, 0, 8), ("red", "circle", 12, 0, 8), ("red", "circle", 0, 12, 8)]
    assert score("three red circles", *three) == (1.0, 1.0)
    assert score("three red circles", *three[:2]) == (0.0, pytest.approx(0.8))  # one fewer
    assert score("three red circles", *three, ("red", "circle", 13, 13, 8)) == (0.0, pytest.approx(6 / 7))
    left, right = ("red", "circle", 1, 8, 8), ("blue", "square", 14, 8, 8)
    assert score("a red circle left of a blue square", left, right) == (1.0, 1.0)
    swapped = ("red", "circle", 14, 8, 8), ("blue", "square", 1, 8, 8)
    assert score("a red circle left of a blue square", *swapped) == (0.0, 0.5)  # wrong side
    assert score("a red circle above a blue square", left, right) == (0.0, 0.5)  # side by side, not above
    attr = ("blue", "circle", 1, 8, 8), ("red", "square", 14, 8, 8)
    assert score("a red circle and a blue square", *attr) == (0.0, 0.25)  # colours swapped
    extra = ("green", "triangle", 8, 16, 8)
    assert score("a red circle and a blue square", left, right, extra) == (0.0, pytest.approx(0.8))


def test_blank_and_unrelated_images_score_zero():
    blank = np.broadcast_to(np.array(BACKGROUND, dtype=np.uint8), (3, 24, 24, 3)).copy()
    prompts = ["a red circle", "three blue squares", "a red circle left of a blue square"]
    assert (STRICT.score(blank, prompts) == 0).all() and (PARTIAL.score(blank, prompts) == 0).all()
    black = np.zeros((1, 24, 24, 3), dtype=np.uint8)  # one huge black "object": not a shape of the prompt
    assert float(PARTIAL.score(black, ["a red circle"])[0]) == 0.0


@pytest.mark.parametrize("size", [24, 32])
def test_mild_noise_keeps_the_verdict(size):
    images, prompts = _ground_truth(size, 200, seed=3)
    rng = np.random.default_rng(0)
    misses = np.stack(
        [render(sample_scene(near_miss(parse_prompt(p), "shape", i), size, i)) for i, p in enumerate(prompts[:100])]
    )
    for batch, expected in ((images, 1.0), (misses, 0.0)):
        noisy = np.clip(batch.astype(np.int16) + rng.integers(-10, 11, batch.shape), 0, 255).astype(np.uint8)
        clean_scores = PARTIAL.score(batch, prompts[: len(batch)])
        assert (STRICT.score(noisy, prompts[: len(batch)]) == expected).all()
        assert torch.equal(PARTIAL.score(noisy, prompts[: len(batch)]), clean_scores)


def test_small_specks_are_noise_and_lopsided_blobs_are_not_shapes():
    image = _scene(24, ("red", "circle", 8, 8, 8))
    image[0, 0:2, 0:3] = (30, 60, 220)  # a 6 px blue speck
    assert min_component_area(24) > 6 and float(STRICT.score(image, ["a red circle"])[0]) == 1.0
    blob = np.full((1, 24, 24, 3), BACKGROUND, dtype=np.uint8)
    blob[0, 5:14, 5:8] = (220, 30, 30)  # an L: 9 x 3 bar plus a 3 x 6 foot
    blob[0, 11:14, 8:14] = (220, 30, 30)
    assert [d.shape for d in detect_objects(blob)[0]] == ["other"]
    assert float(PARTIAL.score(blob, ["a red square"])[0]) == 0.25


def _bfs_partition(classes: np.ndarray) -> set[frozenset[tuple[int, int]]]:
    h, w = classes.shape
    seen = np.zeros_like(classes, dtype=bool)
    parts = set()
    for y0 in range(h):
        for x0 in range(w):
            if classes[y0, x0] < 0 or seen[y0, x0]:
                continue
            comp, queue = [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                comp.append((y, x))
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and classes[ny, nx] == classes[y, x]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            parts.add(frozenset(comp))
    return parts


def test_label_components_matches_bfs():
    rng = np.random.default_rng(0)
    classes = rng.integers(-1, 3, size=(6, 20, 17)).astype(np.int8)
    classes[0] = -1
    classes[1] = 2
    classes[2, ::2] = 0  # long snakes exercise propagation depth
    labels = label_components(classes)
    for b in range(classes.shape[0]):
        got: dict[int, set[tuple[int, int]]] = {}
        for y, x in zip(*np.nonzero(classes[b] >= 0), strict=True):
            got.setdefault(int(labels[b, y, x]), set()).add((int(y), int(x)))
        assert {frozenset(c) for c in got.values()} == _bfs_partition(classes[b])


def test_interface():
    images, prompts = _ground_truth(24, 4, seed=11)
    scores = STRICT.score(images, prompts)
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(STRICT.score(as_float, prompts), scores)
    assert STRICT.submit(images, prompts).result().tolist() == scores.tolist()
    assert STRICT.name == "compositional_strict" and (STRICT.low, STRICT.high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="prompt"):
        STRICT.score(images[:1], ["a purple circle"])
    with pytest.raises(ValueError, match="mode"):
        CompositionalReward("fuzzy")
    with pytest.raises(ValueError, match="attribute_credit"):
        CompositionalReward("partial", attribute_credit=0.9)
    with pytest.raises(ValueError, match="square"):
        STRICT.score(np.zeros((1, 24, 32, 3), dtype=np.uint8), ["a red circle"])
    with pytest.raises(ValueError, match="image_size"):
        STRICT.score(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a red circle"])


def test_requirements_without_a_category_are_still_verified():
    red, blue = ObjectSpec("red", "circle"), ObjectSpec("blue", "square")
    req = Requirements((red, red, blue))
    image = render(sample_scene(req, 24, 0))[None]
    assert float(STRICT.score(image, ["two red circles and a blue square"])[0]) == 1.0


def test_soft_scores_ground_truth_1_near_misses_below_1_and_never_below_partial():
    small, small_prompts = _ground_truth(16, 100, seed=4)
    assert (SOFT.score(small, small_prompts) == 1).all()
    images, prompts = _ground_truth(24, 200, seed=5)
    assert (SOFT.score(images, prompts) == 1).all()
    misses = np.stack(
        [
            render(sample_scene(near_miss(parse_prompt(p), kind, i), 24, i))
            for i, p in enumerate(prompts[:120])
            for kind in ("color", "shape", "side")
            if kind in near_miss_kinds(parse_prompt(p))
        ]
    )
    miss_prompts = [
        p for p in prompts[:120] for kind in ("color", "shape", "side") if kind in near_miss_kinds(parse_prompt(p))
    ]
    soft, partial = SOFT.score(misses, miss_prompts), PARTIAL.score(misses, miss_prompts)
    assert (soft < 1).all() and (soft >= partial - 1e-12).all()
    # Ragged versions of the near misses and ground truth (pixels flipped to background) stay >= partial.
    rng = np.random.default_rng(1)
    ragged = np.concatenate([misses, images[:120]])
    holes = rng.random(ragged.shape[:3]) < 0.15
    ragged[holes] = BACKGROUND
    ps = miss_prompts + prompts[:120]
    assert (SOFT.score(ragged, ps) >= PARTIAL.score(ragged, ps) - 1e-12).all()


def test_soft_shape_credit_grows_as_a_disc_fills_its_box():
    disc = _scene(24, ("red", "circle", 8, 8, 8))
    corners = [(8, 8), (8, 15), (15, 8), (15, 15), (9, 8), (8, 9), (14, 15), (15, 14)]
    scores = [float(SOFT.score(disc, ["a red square"])[0])]
    for k in range(2, len(corners) + 1, 2):  # fill the corner pixels two at a time: the disc becomes a square
        img = disc.copy()
        for y, x in corners[:k]:
            img[0, y, x] = (220, 40, 40)
        scores.append(float(SOFT.score(img, ["a red square"])[0]))
    assert scores[0] == pytest.approx(0.25 + 0.75 * shape_scores(detect_objects(disc)[0][0])["square"])
    assert all(b >= a for a, b in zip(scores, scores[1:], strict=False)) and scores[-1] > scores[0]
    assert float(SOFT.score(_scene(24, ("red", "square", 8, 8, 8)), ["a red square"])[0]) == 1.0
    assert float(SOFT.score(disc, ["a blue square"])[0]) < 0.25  # colour wrong: shape credit only, scaled down


def test_hard_shape_classes_score_1_in_the_soft_scores():
    images, prompts = _ground_truth(24, 100, seed=11)
    for dets in detect_objects(images):
        for d in dets:
            assert shape_scores(d)[d.shape] == 1.0
