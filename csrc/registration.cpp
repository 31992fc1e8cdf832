// Registers the launchers of docs/ops.md as torch ops (torch.ops.vgpo_fast_C.<name>) with CPU kernels, and
// gives `import vgpo_fast._C` a module to load: importing it runs the static registrations below.
#include <Python.h>
#include <torch/library.h>

#include "common.h"

TORCH_LIBRARY(vgpo_fast_C, m) {
  m.def(
      "sde_step_fwd(Tensor x, Tensor v, Tensor noise, Tensor sigma, Tensor sigma_next, float a, int sde_type, "
      "bool reduce_mean) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sde_log_prob_fwd(Tensor x, Tensor v, Tensor x_next, Tensor? v_ref, Tensor sigma, Tensor sigma_next, "
      "float a, int sde_type, bool reduce_mean, int kl_form) -> (Tensor, Tensor)");
  m.def(
      "sde_log_prob_bwd(Tensor grad_logp, Tensor grad_kl, Tensor x, Tensor v, Tensor x_next, Tensor? v_ref, "
      "Tensor sigma, Tensor sigma_next, float a, int sde_type, bool reduce_mean, int kl_form) -> Tensor");
  m.def(
      "tcrm_adae_fwd(Tensor rewards, float gamma, float k, float eps, float adv_clip, bool use_omega, "
      "bool global_std) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("grpo_advantage_fwd(Tensor rewards, float eps, float adv_clip, bool global_std) -> Tensor");
  m.def(
      "clipped_policy_loss_fwd(Tensor logp_new, Tensor logp_old, Tensor adv, Tensor? kl, float clip, "
      "float beta) -> (Tensor, Tensor, Tensor)");
  m.def(
      "clipped_policy_loss_bwd(Tensor grad_loss, Tensor logp_new, Tensor logp_old, Tensor adv, float clip, "
      "float beta, bool n_kl) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vgpo_fast_C, CPU, m) {
  m.impl("sde_step_fwd", &vgpo_fast::sde_step_fwd);
  m.impl("sde_log_prob_fwd", &vgpo_fast::sde_log_prob_fwd);
  m.impl("sde_log_prob_bwd", &vgpo_fast::sde_log_prob_bwd);
  m.impl("tcrm_adae_fwd", &vgpo_fast::tcrm_adae_fwd);
  m.impl("grpo_advantage_fwd", &vgpo_fast::grpo_advantage_fwd);
  m.impl("clipped_policy_loss_fwd", &vgpo_fast::clipped_policy_loss_fwd);
  m.impl("clipped_policy_loss_bwd", &vgpo_fast::clipped_policy_loss_bwd);
}

// The module itself is empty; the ops live in torch.ops.vgpo_fast_C.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
