// grpo_advantage_fwd: Flow-GRPO's group-relative advantage of terminal rewards (docs/spec.md section 4.6).
#include "common.h"

#include <vector>

namespace vgpo_fast {

at::Tensor grpo_advantage_fwd(const at::Tensor& rewards, double eps, double adv_clip, bool global_std) {
  TORCH_CHECK(rewards.device().is_cpu() && rewards.is_contiguous() && rewards.scalar_type() == at::kFloat &&
                  rewards.dim() == 2,
              "rewards must be a contiguous float32 CPU tensor [P, G], got ", rewards.sizes(), " ",
              rewards.scalar_type());
  const int64_t P = rewards.size(0), G = rewards.size(1);
  at::Tensor A = new_cpu({P, G}, at::kFloat);
  const float* r = rewards.data_ptr<float>();
  float* A_p = A.data_ptr<float>();

  // Group means; std per group (ddof 0) or over the whole batch around the batch mean.
  std::vector<double> mu(P), sd(P);
  for (int64_t p = 0; p < P; ++p) {
    double sum = 0.0;
    for (int64_t g = 0; g < G; ++g) sum += r[p * G + g];
    mu[p] = sum / static_cast<double>(G);
    double sumsq = 0.0;
    for (int64_t g = 0; g < G; ++g) {
      const double d = r[p * G + g] - mu[p];
      sumsq += d * d;
    }
    sd[p] = std::sqrt(sumsq / static_cast<double>(G));
  }
  if (global_std) {
    const double n = static_cast<double>(P * G);
    double sum = 0.0, sumsq = 0.0;
    for (int64_t i = 0; i < P * G; ++i) sum += r[i];
    const double mean_all = sum / n;
    for (int64_t i = 0; i < P * G; ++i) sumsq += (r[i] - mean_all) * (r[i] - mean_all);
    std::fill(sd.begin(), sd.end(), std::sqrt(sumsq / n));
  }
  for (int64_t p = 0; p < P; ++p)
    for (int64_t g = 0; g < G; ++g) {
      const double adv = (r[p * G + g] - mu[p]) / (sd[p] + eps);
      A_p[p * G + g] = static_cast<float>(std::min(std::max(adv, -adv_clip), adv_clip));
    }
  return A;
}

}  // namespace vgpo_fast
