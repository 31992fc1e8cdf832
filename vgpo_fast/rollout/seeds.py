"""Seeds of an iteration's random streams, so that a batch depends only on (seed, iteration) and the weights."""

from __future__ import annotations

import numpy as np

__all__ = ["Stream", "iteration_seed"]


class Stream:
    """The random streams of one iteration (the `stream` argument of `iteration_seed`)."""

    PROMPTS, INIT_NOISE, SDE_NOISE, STEP_ORDER, MINIBATCH_ORDER, LORA_INIT = 0, 1, 2, 3, 4, 5


def iteration_seed(seed: int, iteration: int, stream: int, *index: int) -> int:
    """A 63-bit seed for one random stream (0 prompts, 1 initial noise, 2 SDE noise, 3 step order, 4 minibatch
    order, 5 LoRA init) of one iteration, `index` naming a part of it (the rollout chunk of the SDE noise);
    independent of the process count and of anything drawn before."""
    entropy = [seed, iteration, stream, *index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
