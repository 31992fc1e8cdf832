"""VGPO and its two ablations (docs/spec.md, TCRM and ADAE), all through the fused `tcrm_adae`.

vgpo           tcrm_adae(R, gamma, k)                  dense values Q, omega, absolute anchor k Q
vgpo_no_tcrm   tcrm_adae(terminal-only R, gamma=1, k, omega off)   A = (r - mu)/s + k r at every step
vgpo_no_adae   tcrm_adae(R, gamma, k=0)                omega-weighted relative advantage of Q
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vgpo_fast.train.estimators.base import AdvantageResult, Estimator, register_estimator

if TYPE_CHECKING:
    import torch


def _tcrm_adae(rewards: torch.Tensor, alg, *, gamma: float, k: float, omega: bool) -> AdvantageResult:
    from vgpo_fast.ops import tcrm_adae  # imported on use: the registry is read by CLI help, which needs no torch

    out = tcrm_adae(
        rewards, gamma=gamma, k=k, eps=alg.eps, adv_clip=alg.adv_clip, omega=omega, global_std=alg.global_std
    )
    return AdvantageResult(out.advantages, out.returns, out.omega, out.group_std, float(out.omega_fallback_frac))


def vgpo_advantages(rewards: torch.Tensor, alg) -> AdvantageResult:
    """rewards `[P, G, T]`: instant rewards of every evaluated step (sparse steps filled)."""
    return _tcrm_adae(rewards, alg, gamma=alg.gamma, k=alg.k, omega=alg.omega)


def vgpo_no_tcrm_advantages(rewards: torch.Tensor, alg) -> AdvantageResult:
    """Values from the terminal reward alone: Q_j = r for every j, omega = 1."""
    terminal = rewards.new_zeros(rewards.shape)
    terminal[..., -1] = rewards[..., -1]
    return _tcrm_adae(terminal, alg, gamma=1.0, k=alg.k, omega=False)


def vgpo_no_adae_advantages(rewards: torch.Tensor, alg) -> AdvantageResult:
    """TCRM values with the relative advantage only (anchor weight k = 0)."""
    return _tcrm_adae(rewards, alg, gamma=alg.gamma, k=0.0, omega=alg.omega)


_COMMON = ("eps", "adv_clip", "global_std")
VGPO = register_estimator(
    Estimator(
        "vgpo",
        "VGPO: TCRM dense values with ADAE's absolute anchor",
        dense=True,
        options=("gamma", "k", "omega", *_COMMON),
        compute=vgpo_advantages,
    )
)
VGPO_NO_TCRM = register_estimator(
    Estimator(
        "vgpo_no_tcrm",
        "VGPO without TCRM: terminal values, ADAE anchor",
        dense=False,
        options=("k", *_COMMON),
        compute=vgpo_no_tcrm_advantages,
    )
)
VGPO_NO_ADAE = register_estimator(
    Estimator(
        "vgpo_no_adae",
        "VGPO without ADAE: TCRM values, relative advantage only",
        dense=True,
        options=("gamma", "omega", *_COMMON),
        compute=vgpo_no_adae_advantages,
    )
)
