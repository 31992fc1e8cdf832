"""Shapes task: scene specs, layout sampling, rendering, prompt grammar and the train / held-out split."""

from collections import Counter

import numpy as np
import pytest

from vgpo_fast.tasks.shapes.prompts import (
    CATEGORIES,
    all_prompts,
    canonical_key,
    category_of,
    category_prompts,
    format_prompt,
    miscaptioned,
    parse_prompt,
    sample_prompts,
    split_prompts,
)
from vgpo_fast.tasks.shapes.render import (
    render,
    render_batch,
    render_prompts,
    sample_prompt_scene,
    shape_mask,
)
from vgpo_fast.tasks.shapes.scene import (
    BACKGROUND,
    DEFAULT_IMAGE_SIZE,
    PALETTE,
    SHAPES,
    ObjectSpec,
    Requirements,
    Scene,
    SceneObject,
    near_miss,
    near_miss_kinds,
    object_gap,
    object_size_range,
    relation_holds,
    sample_scene,
)

EXPECTED_COUNTS = {
    "single_object": 18,
    "two_object": 18,
    "counting": 54,
    "colors": 45,
    "position": 1224,
    "color_attr": 90,
}


def _one_prompt_per_category(k: int = 8) -> list[str]:
    prompts = all_prompts()
    return [p for c in CATEGORIES for p in prompts[c][:: max(1, len(prompts[c]) // k)]]


# ---- prompts -------------------------------------------------------------------------------------------


def test_category_sizes_and_no_duplicates():
    prompts = all_prompts()
    assert {c: len(p) for c, p in prompts.items()} == EXPECTED_COUNTS
    flat = [p for ps in prompts.values() for p in ps]
    assert len(flat) == len(set(flat))


def test_parse_format_round_trip_and_category():
    for category, prompts in all_prompts().items():
        for prompt in prompts:
            req = parse_prompt(prompt)
            assert format_prompt(req) == prompt
            assert category_of(req) == category


def test_parse_examples():
    assert parse_prompt("three red circles") == Requirements((ObjectSpec("red", "circle"),) * 3)
    req = parse_prompt("  A Blue  square left of a yellow triangle ")
    assert req == Requirements((ObjectSpec("blue", "square"), ObjectSpec("yellow", "triangle")), "left of")
    assert canonical_key(parse_prompt("a blue square left of a red circle")) == canonical_key(
        parse_prompt("a red circle right of a blue square")
    )
    assert canonical_key(parse_prompt("a red circle and a blue square")) == canonical_key(
        parse_prompt("a blue square and a red circle")
    )


@pytest.mark.parametrize(
    "bad",
    [
        "a purple circle",
        "a red hexagon",
        "two red circle",
        "a red circles",
        "a red circle left of two blue squares",
        "a red circle left of a red circle",
        "one red circle",
        "",
        "six red circles and a blue square",
    ],
)
def test_parse_rejects_with_the_prompt_named(bad):
    with pytest.raises(ValueError, match="prompt"):
        parse_prompt(bad)


def test_split_disjoint_balanced_deterministic():
    split = split_prompts()
    assert split_prompts().held_out == split.held_out
    train = {p for ps in split.train.values() for p in ps}
    held = {p for ps in split.held_out.values() for p in ps}
    assert not train & held
    assert train | held == {p for ps in all_prompts().values() for p in ps}
    for c in CATEGORIES:
        frac = len(split.held_out[c]) / EXPECTED_COUNTS[c]
        assert 0.15 <= frac <= 0.25, (c, frac)
    # Two phrasings of one scene never straddle the split.
    held_keys = {canonical_key(parse_prompt(p)) for p in held}
    assert not held_keys & {canonical_key(parse_prompt(p)) for p in train}
    assert split_prompts(salt="other").held_out != split.held_out
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_prompts(held_out_fraction=1.0)


def test_sample_prompts_uniform_over_categories():
    split = split_prompts()
    drawn = sample_prompts(split.train, 6000, rng=1)
    assert sample_prompts(split.train, 6000, rng=1) == drawn
    counts = Counter(category_of(parse_prompt(p)) for p in drawn)
    for c in CATEGORIES:
        assert 850 <= counts[c] <= 1150, counts
    assert set(drawn) <= {p for ps in split.train.values() for p in ps}


# ---- scenes and rendering ------------------------------------------------------------------------------


def test_size_range_and_gap():
    assert object_size_range(24) == (7, 9)
    assert object_size_range(16) == (7, 7)
    assert object_size_range(64) == (18, 24)
    assert object_gap(24) == 2
    with pytest.raises(ValueError, match="image_size"):
        object_size_range(8)


def test_shape_masks():
    for size in range(7, 25):
        assert shape_mask("square", size).all()
        circle, triangle = shape_mask("circle", size), shape_mask("triangle", size)
        assert 0.72 <= circle.mean() <= 0.82
        assert 0.45 <= triangle.mean() <= 0.58
        assert triangle[-1].all() and triangle[0].sum() <= 2  # base at the bottom, apex at the top
        assert (circle == circle[::-1]).all() and (circle == circle[:, ::-1]).all()
        assert (triangle == triangle[:, ::-1]).all()


def test_render_deterministic_and_seed_dependent():
    prompts = _one_prompt_per_category()
    a = render_prompts(prompts, list(range(len(prompts))))
    b = render_prompts(prompts, list(range(len(prompts))))
    assert a.dtype == np.uint8 and a.shape == (len(prompts), DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3)
    assert a.tobytes() == b.tobytes()
    c = render_prompts(prompts, [s + 1000 for s in range(len(prompts))])
    assert all((a[i] != c[i]).any() for i in range(len(prompts)))
    scene = sample_prompt_scene(prompts[0], 3)
    assert render(scene).tobytes() == render(scene).tobytes() == render_batch([scene])[0].tobytes()


@pytest.mark.parametrize("size", [16, 24, 32, 64])
def test_layouts_valid(size):
    palette = {tuple(BACKGROUND), *map(tuple, PALETTE.values())}
    for i, prompt in enumerate(_one_prompt_per_category(6)):
        req = parse_prompt(prompt)
        scene = sample_prompt_scene(prompt, i, size)
        assert Counter(ObjectSpec(o.color, o.shape) for o in scene.objects) == req.counts()
        lo, hi = object_size_range(size)
        for j, a in enumerate(scene.objects):
            assert lo <= a.size <= hi or len(scene.objects) >= 4  # crowded scenes may shrink below lo
            for b in scene.objects[j + 1 :]:  # at least 1 px between boxes (object_gap unless crowded)
                assert (
                    a.x + a.size + 1 <= b.x
                    or b.x + b.size + 1 <= a.x
                    or a.y + a.size + 1 <= b.y
                    or b.y + b.size + 1 <= a.y
                )
        if req.relation is not None:
            a, b = scene.objects
            assert relation_holds(req.relation, a.center, b.center, size)
        image = render(scene)
        assert {tuple(px) for px in image.reshape(-1, 3)} <= palette


def test_crowded_scenes():
    five = Requirements((ObjectSpec("red", "circle"),) * 5)
    for seed in range(5):
        assert len(sample_scene(five, 24, seed).objects) == 5
    assert len(sample_scene(Requirements((ObjectSpec("red", "circle"),) * 4), 16, 0).objects) == 4
    with pytest.raises(ValueError, match="cannot place"):
        sample_scene(five, 16, 0)


def test_scene_validation():
    with pytest.raises(ValueError, match="color"):
        ObjectSpec("purple", "circle")
    with pytest.raises(ValueError, match="shape"):
        ObjectSpec("red", "star")
    with pytest.raises(ValueError, match="relation"):
        Requirements((ObjectSpec("red", "circle"),), "left of")
    with pytest.raises(ValueError, match="inside"):
        Scene(24, (SceneObject("red", "circle", 20, 0, 7),))
    with pytest.raises(ValueError, match="rng"):
        sample_scene(parse_prompt("a red circle"), 24, rng=-1)


def test_near_misses_change_the_scene_set():
    for i, prompt in enumerate(_one_prompt_per_category()):
        req = parse_prompt(prompt)
        for kind in near_miss_kinds(req):
            miss = near_miss(req, kind, i)
            assert canonical_key(miss) != canonical_key(req), (prompt, kind)
    assert set(near_miss_kinds(parse_prompt("a red circle left of a blue square"))) == {
        "color",
        "shape",
        "side",
        "swap_colors",
    }
    assert "swap_colors" not in near_miss_kinds(parse_prompt("a red circle and a blue circle"))
    with pytest.raises(ValueError, match="kind"):
        near_miss(parse_prompt("a red circle"), "side")


def test_miscaptioned_scenes_fail_the_original_prompt_and_keep_its_shapes():
    """Caption noise for pretraining: the scene drawn for a miscaptioned prompt fails the original prompt (the
    strict verifier is the judge), is one of the allowed mistakes (never a different shape), and fits 16 px."""
    from vgpo_fast.tasks.shapes.reward import CompositionalReward

    verifier = CompositionalReward(mode="strict")
    rng = np.random.default_rng(0)
    prompts = [p for ps in split_prompts().train.values() for p in ps[:12]]
    noisy = [miscaptioned(p, rng) for p in prompts]
    images = render_prompts(noisy, list(range(len(noisy))), 16)
    assert verifier.score(images, noisy).mean() == 1.0  # the noisy prompt describes what is drawn
    assert verifier.score(images, prompts).max() == 0.0  # and the original prompt never does
    for p, q in zip(prompts, noisy, strict=True):
        assert {o.shape for o in parse_prompt(q).objects} == {o.shape for o in parse_prompt(p).objects}, (p, q)
        assert len(parse_prompt(q).objects) <= 4
    assert [miscaptioned(p, 7) for p in prompts] == [miscaptioned(p, 7) for p in prompts]
    assert miscaptioned("a red circle", 0, kinds=("side",)) == "a red circle"  # no kind applies: unchanged


def test_shapes_constant_order():
    # The verifier and the prompt grammar both enumerate these; changing them changes the split.
    assert SHAPES == ("circle", "square", "triangle")
    assert category_prompts("single_object")[0] == "a red circle"
