"""The fused ops of docs/spec.md section 6: reference, Triton and C++ implementations behind one dispatch.

sde_step             x, v, noise -> x_next, logp [B], x0_hat          (rollout, one pass)
sde_log_prob         x, v_theta, x_next [, v_ref] -> logp [B], kl [B]  (training, fused backward to v)
tcrm_adae            rewards [P, G, T] -> VGPO advantages, returns, omega, group stats
grpo_advantage       rewards [P, G] -> Flow-GRPO advantages
clipped_policy_loss  logp_new, logp_old, advantages [, kl] -> loss, clip_frac, approx_kl
"""

from ._backend import available_backends, resolve_backend
from .clipped_policy_loss import PolicyLossOutput, clipped_policy_loss, clipped_policy_loss_reference
from .grpo_advantage import grpo_advantage, grpo_advantage_reference
from .sde_log_prob import LogProbOutput, sde_log_prob, sde_log_prob_reference
from .sde_step import SDEStepOutput, sde_step, sde_step_reference
from .tcrm_adae import TCRMOutput, tcrm_adae, tcrm_adae_reference

__all__ = [
    "LogProbOutput",
    "PolicyLossOutput",
    "SDEStepOutput",
    "TCRMOutput",
    "available_backends",
    "clipped_policy_loss",
    "clipped_policy_loss_reference",
    "grpo_advantage",
    "grpo_advantage_reference",
    "resolve_backend",
    "sde_log_prob",
    "sde_log_prob_reference",
    "sde_step",
    "sde_step_reference",
    "tcrm_adae",
    "tcrm_adae_reference",
]
