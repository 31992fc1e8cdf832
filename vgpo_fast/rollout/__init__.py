"""Rollout: the sampling schedule, the sparse reward-step set and the trajectory sampler (DESIGN.md step 2)."""

from .sampler import ProjectionFn, Trajectory, VelocityFn, sample_trajectories
from .schedule import fill_sparse_rewards, reward_steps, sde_window, sigmas, timesteps

__all__ = [
    "ProjectionFn",
    "Trajectory",
    "VelocityFn",
    "fill_sparse_rewards",
    "reward_steps",
    "sample_trajectories",
    "sde_window",
    "sigmas",
    "timesteps",
]
