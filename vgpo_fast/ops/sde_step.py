"""`sde_step`: one SDE sampling step with its log-probability and the one-step ODE projection (docs/spec.md 2-3).

Reads x, v, noise once; writes x_next, x0_hat = x - sigma * v and the per-sample log-probability logp [B].
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch

from ._backend import launcher, resolve_backend
from ._sde_math import gaussian_logp, sde_terms
from ._validate import (
    REDUCES,
    SDE_TYPES,
    check_choice,
    check_like,
    check_number,
    check_sigmas,
    check_tensor,
    compute_dtype,
    step_sigmas,
)


def _triton_kernels() -> ModuleType:
    """This op's Triton launchers, kernels/sde_step.py, imported on the first triton call and not with
    this module: it imports triton (optional) and reads TRITON_INTERPRET when defined (see _backend)."""
    from vgpo_fast.kernels import sde_step as kernels

    return kernels


class SDEStepOutput(NamedTuple):
    x_next: torch.Tensor  # [B, ...] input dtype
    logp: torch.Tensor  # [B] float32 (float64 for float64 inputs); 0 for deterministic (scale 0) rows
    x0_hat: torch.Tensor  # [B, ...] input dtype: x - sigma * v


def sde_step_reference(
    x: torch.Tensor,
    v: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float = 0.7,
    sde_type: str = "flow_grpo",
    reduce: str = "mean",
) -> SDEStepOutput:
    """docs/spec.md section 2 in plain torch. x, v, noise `[B, ...]`; sigma, sigma_next `[B]`."""
    cdt = compute_dtype(x.dtype)
    view = (-1,) + (1,) * (x.dim() - 1)
    xs, vs, ns = x.to(cdt), v.to(cdt), noise.to(cdt)
    sig, sig_next = sigma.to(cdt).reshape(view), sigma_next.to(cdt).reshape(view)
    mean, _std, scale = sde_terms(xs, vs, sig, sig_next, a, sde_type)
    x_next = (mean + scale * ns).to(x.dtype)
    # The log-probability of the x_next actually returned (rounded to x's dtype), see docs/ops.md.
    logp = gaussian_logp(x_next.to(cdt), mean, scale, reduce)
    x0_hat = (xs - sig * vs).to(x.dtype)
    return SDEStepOutput(x_next, logp, x0_hat)


def _sde_step_impl(
    x: torch.Tensor,
    v: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: str,
    reduce: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_sigmas(sigma, sigma_next)
    if backend == "reference":
        return tuple(sde_step_reference(x, v, noise, sigma, sigma_next, a, sde_type, reduce))
    fwd = launcher(backend, _triton_kernels, "sde_step_fwd")
    return tuple(fwd(x, v, noise, sigma, sigma_next, a, SDE_TYPES[sde_type], reduce == "mean"))


_sde_step_op = torch.library.custom_op("vgpo_fast::sde_step", _sde_step_impl, mutates_args=())


@_sde_step_op.register_fake
def _(x, v, noise, sigma, sigma_next, a, sde_type, reduce, backend):
    return torch.empty_like(x), x.new_empty((x.shape[0],), dtype=compute_dtype(x.dtype)), torch.empty_like(x)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    a: float = 0.7,
    sde_type: str = "flow_grpo",
    reduce: str = "mean",
    backend: str | None = None,
) -> SDEStepOutput:
    """One SDE step sigma -> sigma_next of latents `x [B, ...]` with velocity `v [B, ...]`.

    sigma, sigma_next: floats or per-sample tensors (1 or B elements). `noise` (like x; cast to x's dtype) or a
    `generator` draws eps ~ N(0, I) in x's dtype, with torch, before any backend runs, so that every backend
    gives the same x_next for the same generator. Returns `(x_next, logp [B], x0_hat)`.
    """
    check_tensor("x", x, min_ndim=2)
    check_like("v", v, "x", x)
    check_choice("sde_type", sde_type, tuple(SDE_TYPES))
    check_choice("reduce", reduce, REDUCES)
    check_number("a", a, low=0.0, high=1.0 if sde_type == "cps" else None)
    if v.requires_grad or x.requires_grad:
        raise ValueError(
            "sde_step is a sampling op without gradients: call it on detached x and v (training uses sde_log_prob)"
        )
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        if generator is not None:
            raise ValueError("pass either noise or generator, not both")
        check_like("noise", noise, "x", x, dtype=False)
        noise = noise.to(x.dtype)
    sig, sig_next = step_sigmas(sigma, sigma_next, x)
    batch = x.shape[0]
    chosen = resolve_backend(backend, x.device, x.dtype)
    flat = (batch, -1)
    x_next, logp, x0_hat = _dispatch_sde_step(
        x.reshape(flat).contiguous(),
        v.reshape(flat).contiguous(),
        noise.reshape(flat).contiguous(),
        sig,
        sig_next,
        float(a),
        sde_type,
        reduce,
        chosen,
    )
    return SDEStepOutput(x_next.view(x.shape), logp, x0_hat.view(x.shape))


def _dispatch_sde_step(*args):
    """Compiled code sees the registered op; eager calls skip the dispatcher (no autograd here)."""
    if torch.compiler.is_compiling():
        return torch.ops.vgpo_fast.sde_step(*args)
    return _sde_step_impl(*args)
