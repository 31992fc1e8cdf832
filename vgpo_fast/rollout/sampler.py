"""The rollout sampler: T SDE/ODE steps with log-probabilities and projections.

Step j: v_j = velocity_fn(x_j, sigma_j); `sde_step` -> x_{j+1}, logp_j and x0_hat = x_j - sigma_j v_j, which is
the one-step ODE projection of the *previous* action, x0_hat_{j-1} (docs/spec.md section 3: no extra model call).
It is handed to `on_projection(j - 1, x0_hat)` at once, so that reward work can overlap step j+1; after the loop
x_T is x0_hat_{T-1} (sigma_T = 0).

Memory, for latents `[B, C, H, W]` of E = B*C*H*W elements in dtype d: `latents` holds (T+1) E elements of d
(SD3.5 at 512px, 16x64x64 bf16 latents: 128 KiB per sample per step); `projections` (only with
keep_projections=True) another T E; `logp` T*B float32. The loop itself keeps one x, v, x0_hat alive at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..ops import sde_step
from .schedule import sde_window

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProjectionFn = Callable[[int, torch.Tensor], None]


@dataclass
class Trajectory:
    """One batch of rollouts, in sampling order.

    latents:     [T+1, B, ...] x's dtype; latents[j] is x_j, the state before step j (latents[0] = the noise,
                 latents[T] = the final sample x_T = x0_hat_{T-1}).
    logp:        [T, B] float32 (float64 for float64 latents); logp[j] = log p(x_{j+1} | x_j) as `sde_step`
                 returned it; 0 for deterministic steps (ODE steps, scale 0).
    sigmas:      [T+1] the schedule the rollout used (CPU).
    train_mask:  [T] bool (CPU); True for training-eligible steps: stochastic (SDE step with scale > 0) and, unless
                 train_last_step, not the last step T-1 (docs/spec.md section 2).
    sde_mask:    [T] bool (CPU); True where the step ran with noise level a (the SDE window), False for ODE steps.
    projections: [T, B, ...] x's dtype, projections[j] = x0_hat_j; None unless keep_projections=True.
    """

    latents: torch.Tensor
    logp: torch.Tensor
    sigmas: torch.Tensor
    train_mask: torch.Tensor
    sde_mask: torch.Tensor
    projections: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        return self.logp.shape[0]

    @property
    def final(self) -> torch.Tensor:
        """x_T `[B, ...]`, the final samples."""
        return self.latents[-1]

    @property
    def training_steps(self) -> list[int]:
        """The indices j of the training-eligible steps."""
        return [int(j) for j in torch.nonzero(self.train_mask).reshape(-1).tolist()]


def _check_schedule(sigmas: torch.Tensor) -> list[float]:
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor [T+1] with T >= 1 (see rollout.schedule.sigmas)")
    values = [float(s) for s in sigmas.detach().cpu().tolist()]
    if not all(math.isfinite(s) for s in values):
        raise ValueError("sigmas must be finite")
    if not 0 < values[0] <= 1:
        raise ValueError(f"sigmas[0] must lie in (0, 1], got {values[0]}")
    if values[-1] != 0:
        raise ValueError(f"sigmas[-1] must be 0 (the projection of the last action is then x_T), got {values[-1]}")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError("sigmas must be strictly decreasing")
    return values


def _sde_mask(T: int, sde_steps: tuple[int, int] | Sequence[bool] | torch.Tensor | None) -> torch.Tensor:
    if sde_steps is None or (
        isinstance(sde_steps, tuple) and len(sde_steps) == 2 and not any(isinstance(w, bool) for w in sde_steps)
    ):
        return sde_window(T, sde_steps)
    mask = torch.as_tensor(sde_steps).detach().cpu()
    if mask.dtype != torch.bool or mask.shape != (T,):
        raise ValueError(
            f"sde_steps must be None, a window (start, end) or a bool mask of shape [{T}], got {sde_steps!r}"
        )
    return mask.clone()


def _is_stochastic(sigma: float, sigma_next: float, a: float, sde_type: str) -> bool:
    """Whether the step sigma -> sigma_next with noise level a has scale > 0 (docs/spec.md section 2)."""
    if a <= 0:
        return False
    if sde_type == "cps":
        return sigma_next * math.sin(a * math.pi / 2) > 0
    return True  # flow_grpo: std = a sqrt(sigma / (1 - s)) > 0 and -dt > 0


def sample_trajectories(
    velocity_fn: VelocityFn,
    x_T_init: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    a: float = 0.7,
    sde_type: str = "flow_grpo",
    sde_steps: tuple[int, int] | Sequence[bool] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_projection: ProjectionFn | None = None,
    keep_projections: bool = False,
    train_last_step: bool = False,
    reduce: str = "mean",
    backend: str | None = None,
) -> Trajectory:
    """Roll out T = len(sigmas) - 1 steps from the noise `x_T_init [B, ...]` (the state at sigma_0, i.e. latents[0]).

    velocity_fn(x [B, ...], sigma [B]) -> v [B, ...] like x: the (CFG-guided) velocity; sigma is float32 (float64
    for float64 x) on x's device; it runs under torch.no_grad. sde_steps: None (every step stochastic), a window
    (start, end) (steps start <= j < end; see `sde_window`) or a bool mask [T]; other steps are ODE steps (a = 0).
    generator: one generator, on x's device, drives the noise of every step, so a seeded rollout is reproducible.
    on_projection(j, x0_hat_j [B, ...]): called for j = 0..T-1 in order, as soon as each projection exists
    (x0_hat_j right after the sde_step of step j+1; x0_hat_{T-1} = x_T after the loop); do not modify the tensor.
    reduce, backend: passed to `sde_step` (use the reduce the trainer's `sde_log_prob` will use).
    """
    if not isinstance(x_T_init, torch.Tensor) or x_T_init.dim() < 2:
        raise ValueError("x_T_init must be a tensor [B, ...] with a batch dim and at least one data dim")
    if not callable(velocity_fn):
        raise ValueError("velocity_fn must be callable as velocity_fn(x, sigma) -> v")
    sig = _check_schedule(sigmas)
    T = len(sig) - 1
    sde_mask = _sde_mask(T, sde_steps)
    a = float(a)
    if not math.isfinite(a) or a < 0:
        raise ValueError(f"a must be a finite number >= 0, got {a}")

    x0 = x_T_init.detach()
    batch, device, dtype = x0.shape[0], x0.device, x0.dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    sig_dev = torch.tensor(sig, dtype=cdt, device=device)
    latents = torch.empty((T + 1, *x0.shape), dtype=dtype, device=device)
    latents[0].copy_(x0)
    logp = torch.zeros((T, batch), dtype=cdt, device=device)
    projections = torch.empty((T, *x0.shape), dtype=dtype, device=device) if keep_projections else None
    train_mask = torch.zeros(T, dtype=torch.bool)

    def emit(j: int, x0_hat: torch.Tensor) -> None:
        if projections is not None:
            projections[j].copy_(x0_hat)
        if on_projection is not None:
            on_projection(j, x0_hat)

    zeros: torch.Tensor | None = None
    with torch.no_grad():
        for j in range(T):
            x = latents[j]
            v = velocity_fn(x, sig_dev[j].expand(batch))
            if not isinstance(v, torch.Tensor) or v.shape != x.shape:
                raise ValueError(
                    f"velocity_fn must return a tensor of x's shape {tuple(x.shape)}, got "
                    f"{getattr(v, 'shape', type(v).__name__)}"
                )
            a_j = a if bool(sde_mask[j]) else 0.0
            if a_j > 0:
                noise_kw = {"generator": generator}
            else:  # an ODE step draws no noise (and leaves the generator's stream to the SDE steps)
                if zeros is None:
                    zeros = torch.zeros_like(x)
                noise_kw = {"noise": zeros}
            out = sde_step(
                x,
                v.detach().to(dtype),
                sig[j],
                sig[j + 1],
                a=a_j,
                sde_type=sde_type,
                reduce=reduce,
                backend=backend,
                **noise_kw,
            )
            latents[j + 1].copy_(out.x_next)
            stochastic = _is_stochastic(sig[j], sig[j + 1], a_j, sde_type)
            if stochastic:
                logp[j].copy_(out.logp)
            train_mask[j] = stochastic and (train_last_step or j < T - 1)
            if j >= 1:
                emit(j - 1, out.x0_hat)
        emit(T - 1, latents[T])

    return Trajectory(
        latents=latents,
        logp=logp,
        sigmas=sigmas.detach().cpu().clone(),
        train_mask=train_mask,
        sde_mask=sde_mask,
        projections=projections,
    )
