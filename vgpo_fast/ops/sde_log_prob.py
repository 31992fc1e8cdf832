"""`sde_log_prob`: log-probability of a taken SDE step under v_theta, and the closed-form KL to a reference.

Training's per-step op (docs/spec.md sections 2.4 and 5.2): logp [B] and kl [B] in one pass; the backward gives
d/dv_theta in one pass from the closed forms (gradients flow only through v_theta).
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch

from ._backend import launcher, resolve_backend
from ._sde_math import gaussian_logp, mean_slope, reduce_rows, sde_terms
from ._validate import (
    KL_FORMS,
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
    """This op's Triton launchers, kernels/sde_log_prob.py, imported on the first triton call and not with
    this module: it imports triton (optional) and reads TRITON_INTERPRET when defined (see _backend)."""
    from vgpo_fast.kernels import sde_log_prob as kernels

    return kernels


class LogProbOutput(NamedTuple):
    logp: torch.Tensor  # [B] float32 (float64 for float64 inputs)
    kl: torch.Tensor  # [B]; zeros when no v_ref was given


def sde_log_prob_reference(
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    v_ref: torch.Tensor | None = None,
    a: float = 0.7,
    sde_type: str = "flow_grpo",
    reduce: str = "mean",
    kl_form: str = "scale",
) -> LogProbOutput:
    """docs/spec.md sections 2.4 and 5.2 in plain torch (differentiable in v). Tensors `[B, ...]`; sigmas `[B]`."""
    cdt = compute_dtype(x.dtype)
    view = (-1,) + (1,) * (x.dim() - 1)
    sig, sig_next = sigma.to(cdt).reshape(view), sigma_next.to(cdt).reshape(view)
    mean, std, scale = sde_terms(x.to(cdt), v.to(cdt), sig, sig_next, a, sde_type)
    logp = gaussian_logp(x_next.to(cdt), mean, scale, reduce)
    if v_ref is None:
        return LogProbOutput(logp, torch.zeros_like(logp))
    # mean is linear in (x, v): mean_theta - mean_ref = mean(0, v - v_ref), without float cancellation.
    mean_diff, _, _ = sde_terms(torch.zeros_like(mean), v.to(cdt) - v_ref.to(cdt), sig, sig_next, a, sde_type)
    variance = scale**2 if kl_form == "scale" else std**2
    kl = reduce_rows(mean_diff**2, reduce) / (2 * variance.reshape(-1))
    return LogProbOutput(logp, kl)


def sde_log_prob_backward_reference(
    grad_logp: torch.Tensor,
    grad_kl: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    v_ref: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: str,
    reduce: str,
    kl_form: str,
) -> torch.Tensor:
    """d(grad_logp . logp + grad_kl . kl)/dv in closed form (docs/spec.md section 5.4), in v's dtype.

    grad_v = w c_v (grad_logp (x_next - mean) / scale^2 + grad_kl (mean - mean_ref) / variance), with
    w = 1/N for reduce="mean", c_v = d mean / d v, variance = scale^2 or std^2 per kl_form.
    """
    cdt = compute_dtype(x.dtype)
    view = (-1,) + (1,) * (x.dim() - 1)
    sig, sig_next = sigma.to(cdt).reshape(view), sigma_next.to(cdt).reshape(view)
    mean, std, scale = sde_terms(x.to(cdt), v.to(cdt), sig, sig_next, a, sde_type)
    slope = mean_slope(sig, sig_next, std, sde_type)
    weight = 1.0 / x[0].numel() if reduce == "mean" else 1.0
    grad = grad_logp.to(cdt).reshape(view) * (x_next.to(cdt) - mean) / scale**2
    if v_ref is not None:
        variance = scale**2 if kl_form == "scale" else std**2
        grad = grad + grad_kl.to(cdt).reshape(view) * slope * (v.to(cdt) - v_ref.to(cdt)) / variance
    return (weight * slope * grad).to(v.dtype)


@torch.library.custom_op("vgpo_fast::sde_log_prob", mutates_args=())
def _sde_log_prob_op(
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    v_ref: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: str,
    reduce: str,
    kl_form: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_sigmas(sigma, sigma_next)
    _check_stochastic(sigma, sigma_next, a, sde_type)
    if backend == "reference":
        return tuple(sde_log_prob_reference(x, v, x_next, sigma, sigma_next, v_ref, a, sde_type, reduce, kl_form))
    fwd = launcher(backend, _triton_kernels, "sde_log_prob_fwd")
    return tuple(
        fwd(x, v, x_next, v_ref, sigma, sigma_next, a, SDE_TYPES[sde_type], reduce == "mean", KL_FORMS[kl_form])
    )


@_sde_log_prob_op.register_fake
def _(x, v, x_next, v_ref, sigma, sigma_next, a, sde_type, reduce, kl_form, backend):
    row = x.new_empty((x.shape[0],), dtype=compute_dtype(x.dtype))
    return row, torch.empty_like(row)


@torch.library.custom_op("vgpo_fast::sde_log_prob_backward", mutates_args=())
def _sde_log_prob_backward_op(
    grad_logp: torch.Tensor,
    grad_kl: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    v_ref: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: str,
    reduce: str,
    kl_form: str,
    backend: str,
) -> torch.Tensor:
    if backend == "reference":
        return sde_log_prob_backward_reference(
            grad_logp, grad_kl, x, v, x_next, v_ref, sigma, sigma_next, a, sde_type, reduce, kl_form
        )
    bwd = launcher(backend, _triton_kernels, "sde_log_prob_bwd")
    return bwd(
        grad_logp.float().contiguous(),
        grad_kl.float().contiguous(),
        x,
        v,
        x_next,
        v_ref,
        sigma,
        sigma_next,
        a,
        SDE_TYPES[sde_type],
        reduce == "mean",
        KL_FORMS[kl_form],
    )


@_sde_log_prob_backward_op.register_fake
def _(grad_logp, grad_kl, x, v, x_next, v_ref, sigma, sigma_next, a, sde_type, reduce, kl_form, backend):
    return torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    x, v, x_next, v_ref, sigma, sigma_next, a, sde_type, reduce, kl_form, backend = inputs
    ctx.save_for_backward(x, v, x_next, v_ref, sigma, sigma_next)
    ctx.options = (a, sde_type, reduce, kl_form, backend)


def _backward(ctx, grad_logp: torch.Tensor, grad_kl: torch.Tensor):
    x, v, x_next, v_ref, sigma, sigma_next = ctx.saved_tensors
    if grad_logp is None:
        grad_logp = torch.zeros(x.shape[0], device=x.device, dtype=compute_dtype(x.dtype))
    if grad_kl is None:
        grad_kl = torch.zeros_like(grad_logp)
    grad_v = torch.ops.vgpo_fast.sde_log_prob_backward(
        grad_logp, grad_kl, x, v, x_next, v_ref, sigma, sigma_next, *ctx.options
    )
    return None, grad_v, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("vgpo_fast::sde_log_prob", _backward, setup_context=_setup_context)


def _check_stochastic(sigma: torch.Tensor, sigma_next: torch.Tensor, a: float, sde_type: str) -> None:
    """A deterministic step (scale 0) has no log-probability: training must never ask for one."""
    if a == 0:
        raise ValueError("a = 0 makes every step deterministic (scale 0): there is no log-probability to train on")
    if sde_type == "cps" and sigma_next.device.type != "cuda" and bool((sigma_next == 0).any()):
        raise ValueError(
            "sigma_next = 0 with sde_type='cps' is a deterministic step (scale 0): "
            "it has no log-probability and is never a training step"
        )


def sde_log_prob(
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    *,
    v_ref: torch.Tensor | None = None,
    a: float = 0.7,
    sde_type: str = "flow_grpo",
    reduce: str = "mean",
    kl_form: str = "scale",
    backend: str | None = None,
) -> LogProbOutput:
    """Log-probability `[B]` of the step `x -> x_next` under velocity `v` (and KL `[B]` to `v_ref`'s step).

    x, v, x_next, v_ref: `[B, ...]`, one dtype and device; only `v` may require grad. sigma, sigma_next: floats
    or per-sample tensors. kl_form: "scale" divides by 2 scale^2 (the exact KL), "flow_grpo" by 2 std^2.
    """
    check_tensor("x", x, min_ndim=2)
    check_like("v", v, "x", x)
    check_like("x_next", x_next, "x", x)
    if v_ref is not None:
        check_like("v_ref", v_ref, "x", x)
    check_choice("sde_type", sde_type, tuple(SDE_TYPES))
    check_choice("reduce", reduce, REDUCES)
    check_choice("kl_form", kl_form, tuple(KL_FORMS))
    check_number("a", a, low=0.0, high=1.0 if sde_type == "cps" else None)
    for name, t in (("x", x), ("x_next", x_next), ("v_ref", v_ref)):
        if t is not None and t.requires_grad:
            raise ValueError(
                f"{name} requires grad, but gradients flow only through v (docs/spec.md section 5.4): "
                f"pass {name}.detach()"
            )
    sig, sig_next = step_sigmas(sigma, sigma_next, x)
    batch = x.shape[0]
    chosen = resolve_backend(backend, x.device, x.dtype)
    flat = (batch, -1)
    logp, kl = torch.ops.vgpo_fast.sde_log_prob(
        x.reshape(flat).contiguous(),
        v.reshape(flat).contiguous(),
        x_next.reshape(flat).contiguous(),
        None if v_ref is None else v_ref.reshape(flat).contiguous(),
        sig,
        sig_next,
        float(a),
        sde_type,
        reduce,
        kl_form,
        chosen,
    )
    return LogProbOutput(logp, kl)
