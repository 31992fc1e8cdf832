// tcrm_adae_fwd: discounted returns-to-go, temporal step weights and ADAE advantages (docs/spec.md section 4),
// one pass per prompt group.
//
// Internally double: the relative term (Q - mu) / (s + eps) divides a difference of near-equal returns by a
// possibly tiny std, which float32 rounding of Q would dominate. Everything stays in the tensors' [G][T]
// layout: the scan runs along each trajectory (the G serial chains overlap in the out-of-order core), the
// statistics over samples and the advantages run over T-wide double vectors (the last one masked) with
// register accumulators, and float32 outputs are converted from double group buffers in contiguous loops.
#include "common.h"

#include <atomic>
#include <memory>
#include <sstream>
#include <vector>

namespace vgpo_fast {
namespace {

using VecD = at::vec::Vectorized<double>;
constexpr int64_t kWD = VecD::size();

inline void to_float(float* out, const double* in, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

// Sum over g of fn(row g's vector at step offset j0), two accumulators to halve the dependency chain.
template <typename Fn>
inline VecD sum_over_samples(const double* q, int64_t G, int64_t T, int64_t j0, int64_t n, const Fn& fn) {
  VecD a0(0.0), a1(0.0);
  int64_t g = 0;
  for (; g + 1 < G; g += 2) {
    a0 = a0 + fn(VecD::loadu(q + g * T + j0, n));
    a1 = a1 + fn(VecD::loadu(q + (g + 1) * T + j0, n));
  }
  if (g < G) a0 = a0 + fn(VecD::loadu(q + g * T + j0, n));
  return a0 + a1;
}

// The op layer rejects non-finite rewards before calling; this keeps the kernel safe on its own, with the
// op layer's message.
[[noreturn]] void reject_non_finite(const float* R, int64_t P, int64_t G, int64_t T) {
  int64_t first = -1, count = 0;
  for (int64_t i = 0; i < P * G * T; ++i)
    if (!std::isfinite(R[i])) {
      if (first < 0) first = i;
      ++count;
    }
  const int64_t p = first / (G * T), g = (first / T) % G, t = first % T;
  const float value = R[first];
  std::ostringstream msg;
  msg << "rewards[p=" << p << ", g=" << g << ", t=" << t << "] is "
      << (std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf")) << " (prompt group " << p
      << "): non-finite rewards are rejected; drop the group or fix the reward (" << count << " non-finite of "
      << P * G * T << ")";
  TORCH_CHECK_VALUE(false, msg.str());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tcrm_adae_fwd(
    const at::Tensor& rewards, double gamma, double k, double eps, double adv_clip, bool use_omega,
    bool global_std) {
  TORCH_CHECK(rewards.device().is_cpu() && rewards.is_contiguous() && rewards.scalar_type() == at::kFloat &&
                  rewards.dim() == 3,
              "rewards must be a contiguous float32 CPU tensor [P, G, T], got ", rewards.sizes(), " ",
              rewards.scalar_type());
  const int64_t P = rewards.size(0), G = rewards.size(1), T = rewards.size(2), GT = G * T;
  at::Tensor A = new_cpu({P, G, T}, at::kFloat), Q = new_cpu({P, G, T}, at::kFloat);
  at::Tensor omega = new_cpu({P, G, T}, at::kFloat), mu = new_cpu({P, T}, at::kFloat);
  at::Tensor s = new_cpu({P, T}, at::kFloat), fallback = new_cpu({P, G}, at::kFloat);
  if (P * GT == 0) return {A, Q, omega, mu, s, fallback};
  const float* R = rewards.data_ptr<float>();
  float *A_p = A.data_ptr<float>(), *Q_p = Q.data_ptr<float>(), *om_p = omega.data_ptr<float>();
  float *mu_p = mu.data_ptr<float>(), *s_p = s.data_ptr<float>(), *fb_p = fallback.data_ptr<float>();

  // Per trajectory 1 / mean_j Q (0 where omega is 1); per (group, step) mu, the sum of squared deviations
  // from mu (m2) and 1 / (s + eps). Q itself lives only in a per-thread group buffer: global_std computes
  // it again in its second pass instead of keeping the batch's Q (cheaper than faulting in a fresh buffer).
  const int64_t nv = (T + kWD - 1) / kWD, T_pad = nv * kWD;  // double vectors per trajectory
  std::unique_ptr<double[]> inv_mean(new double[P * G]), mud(new double[P * T_pad]);
  std::unique_ptr<double[]> m2(new double[P * T_pad]), inv_sd(new double[P * T_pad]);
  std::atomic<bool> non_finite{false};

  // Q_j = R_j + gamma Q_{j+1} of group p into q [G][T]; each trajectory's total into `total`. The G serial
  // chains overlap in the out-of-order core. Returns false if a reward is not finite.
  auto returns = [&](int64_t p, double* q, double* total) {
    const float* r = R + p * GT;
    bool finite = true;
    for (int64_t g = 0; g < G; ++g) {
      double carry = 0.0, tot = 0.0;
      for (int64_t j = T - 1; j >= 0; --j) {
        carry = static_cast<double>(r[g * T + j]) + gamma * carry;
        q[g * T + j] = carry;
        tot += carry;
      }
      total[g] = tot;
      finite = finite && std::isfinite(tot);  // a non-finite reward makes its row's total non-finite
    }
    return finite;
  };
  auto set_std = [&](int64_t p, const double* sumsq, double n) {
    for (int64_t j = 0; j < T; ++j) {
      const double sd = std::sqrt(sumsq[j] / n);
      s_p[p * T + j] = static_cast<float>(sd);
      inv_sd[p * T_pad + j] = 1.0 / (sd + eps);
    }
    for (int64_t j = T; j < T_pad; ++j) inv_sd[p * T_pad + j] = 0.0;  // lanes past T: defined, never stored
  };
  // omega and A = clamp(omega ((Q - mu) / (s + eps) + k Q)) of group p, through double buffers `om`, `adv`.
  auto weights_and_advantages = [&](int64_t p, const double* q, double* om, double* adv) {
    const VecD k_v(k), lo(-adv_clip), hi(adv_clip), one(1.0);
    const double* f = &inv_mean[p * G];
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t j0 = v * kWD, n = std::min(kWD, T - j0);
      const VecD m = VecD::loadu(&mud[p * T_pad + j0]), is = VecD::loadu(&inv_sd[p * T_pad + j0]);
      for (int64_t g = 0; g < G; ++g) {
        const VecD qv = VecD::loadu(q + g * T + j0, n);
        const VecD w = f[g] != 0.0 ? qv * VecD(f[g]) : one;
        w.store(om + g * T + j0, static_cast<int>(n));
        at::vec::clamp(w * at::vec::fmadd(k_v, qv, (qv - m) * is), lo, hi).store(adv + g * T + j0,
                                                                                 static_cast<int>(n));
      }
    }
    to_float(om_p + p * GT, om, GT);
    to_float(A_p + p * GT, adv, GT);
  };

  const int64_t grain = std::max<int64_t>(1, kMinElemsPerThread / GT);
  at::parallel_for(0, P, grain, [&](int64_t p_begin, int64_t p_end) {
    std::vector<double> q(GT), om(GT), adv(GT), total(G);
    for (int64_t p = p_begin; p < p_end; ++p) {
      if (!returns(p, q.data(), total.data())) {
        non_finite.store(true, std::memory_order_relaxed);
        continue;
      }
      to_float(Q_p + p * GT, q.data(), GT);

      // omega's factor: 1 / (the trajectory's mean Q), or none (omega off, or that mean <= eps: a fallback).
      for (int64_t g = 0; g < G; ++g) {
        const double q_mean = total[g] / static_cast<double>(T);
        const bool fell_back = use_omega && q_mean <= eps;
        fb_p[p * G + g] = fell_back ? 1.0f : 0.0f;
        inv_mean[p * G + g] = (use_omega && !fell_back) ? 1.0 / q_mean : 0.0;
      }
      // Group mean and (two-pass) sum of squared deviations of Q_j over the G samples.
      double* mu_g = &mud[p * T_pad];
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t j0 = v * kWD, n = std::min(kWD, T - j0);
        const VecD m =
            sum_over_samples(q.data(), G, T, j0, n, [](const VecD& x) { return x; }) / VecD(static_cast<double>(G));
        m.store(mu_g + j0);
        sum_over_samples(q.data(), G, T, j0, n, [&](const VecD& x) {
          const VecD d = x - m;
          return d * d;
        }).store(&m2[p * T_pad + j0]);
      }
      for (int64_t j = 0; j < T; ++j) mu_p[p * T + j] = static_cast<float>(mu_g[j]);
      if (global_std) continue;
      set_std(p, &m2[p * T_pad], static_cast<double>(G));
      weights_and_advantages(p, q.data(), om.data(), adv.data());
    }
  });
  if (non_finite.load()) reject_non_finite(R, P, G, T);

  if (global_std) {
    // Batch-wide std of Q_j (ddof 0) from the groups' means and m2 (equal group sizes):
    // sum over all samples of (Q - mean)^2 = sum_p [m2_p + G (mu_p - mean)^2], mean = mean_p mu_p.
    std::vector<double> mean_all(T, 0.0), sumsq(T, 0.0);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t j = 0; j < T; ++j) mean_all[j] += mud[p * T_pad + j];
    for (int64_t j = 0; j < T; ++j) mean_all[j] /= static_cast<double>(P);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t j = 0; j < T; ++j) {
        const double d = mud[p * T_pad + j] - mean_all[j];
        sumsq[j] += m2[p * T_pad + j] + static_cast<double>(G) * d * d;
      }
    for (int64_t p = 0; p < P; ++p) set_std(p, sumsq.data(), static_cast<double>(P * G));
    at::parallel_for(0, P, grain, [&](int64_t p_begin, int64_t p_end) {
      std::vector<double> q(GT), om(GT), adv(GT), total(G);
      for (int64_t p = p_begin; p < p_end; ++p) {
        returns(p, q.data(), total.data());
        weights_and_advantages(p, q.data(), om.data(), adv.data());
      }
    });
  }
  return {A, Q, omega, mu, s, fallback};
}

}  // namespace vgpo_fast
