"""Deterministic ODE samples (`vgpo_fast.rollout.ode.sample_images`): per-seed noise, batch independence, the
ODE sampler's result, and the old import place."""

from __future__ import annotations

import torch

from vgpo_fast.rollout.ode import sample_images
from vgpo_fast.rollout.sampler import sample_trajectories
from vgpo_fast.rollout.schedule import sigmas as make_sigmas


class FakePipe:
    """The part of `FlowPipeline` that `sample_images` uses; the velocity depends on the prompt and guidance."""

    latent_shape = (3, 4, 4)
    device = torch.device("cpu")

    def velocity_fn(self, prompts, guidance_scale=1.0):
        bias = torch.tensor([len(p) / 10 for p in prompts]).view(-1, 1, 1, 1) * guidance_scale

        def v(x, sigma):
            return x * 0.5 - bias * sigma.view(-1, 1, 1, 1)

        return v

    def decode(self, latents):
        return ((latents + 1) / 2).clamp(0, 1).float()


def test_samples_depend_on_prompt_and_seed_only() -> None:
    pipe = FakePipe()
    prompts, seeds = ["a", "bb", "ccc", "a"], [5, 6, 7, 5]
    images = sample_images(pipe, prompts, seeds, steps=4)
    assert images.shape == (4, 3, 4, 4) and images.dtype == torch.float32
    assert torch.equal(images[0], images[3])
    assert torch.equal(images, sample_images(pipe, prompts, seeds, steps=4, batch_size=1))
    assert torch.equal(sample_images(pipe, prompts[1:2], seeds[1:2], steps=4)[0], images[1])


def test_samples_are_the_ode_trajectories_of_seeded_noise() -> None:
    pipe = FakePipe()
    prompts, seeds = ["a", "bb"], [0, 1]
    noise = torch.stack([torch.randn(pipe.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    traj = sample_trajectories(pipe.velocity_fn(prompts, 2.0), noise, make_sigmas(3, 2.0), a=0.0)
    got = sample_images(pipe, prompts, seeds, steps=3, guidance_scale=2.0, shift=2.0)
    assert torch.equal(got, pipe.decode(traj.final))


def test_the_old_import_place_is_the_same_function() -> None:
    from vgpo_fast.rollout import sample_images as exported
    from vgpo_fast.tasks.pretrain import sample_images as old

    assert old is sample_images and exported is sample_images
