// clipped_policy_loss_fwd / _bwd: PPO clipped surrogate plus beta * KL, averaged over the N
// (trajectory, step) entries (docs/spec.md section 5.3). Double vectors: exp is torch's vectorised (SLEEF) one,
// which a scalar std::exp loop is about ten times slower than at N ~ 10^4.
#include "common.h"

namespace vgpo_fast {
namespace {

using VecD = at::vec::Vectorized<double>;
constexpr int64_t kWD = VecD::size();

void check_vec(const at::Tensor& t, const char* what, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == at::kFloat && t.dim() == 1 &&
                  t.numel() == n,
              what, " must be a contiguous float32 CPU tensor [", n, "], got ", t.sizes(), " ", t.scalar_type());
}

// n <= kWD floats as doubles (lanes past n are 0), and back. Through a lane array where the compiler has no
// vector conversion to use: assembling a vector from scalar stores costs a store-forwarding stall.
inline VecD load_f64(const float* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask8 mask = n >= kWD ? 0xFF : static_cast<__mmask8>((1u << n) - 1);
  return VecD(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, p)));
#else
  double lanes[kWD] = {};
  for (int64_t i = 0; i < n; ++i) lanes[i] = p[i];
  return VecD::loadu(lanes);
#endif
}

inline void store_f32(float* p, const VecD& v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask8 mask = n >= kWD ? 0xFF : static_cast<__mmask8>((1u << n) - 1);
  _mm256_mask_storeu_ps(p, mask, _mm512_cvtpd_ps(v));
#else
  double lanes[kWD];
  v.store(lanes);
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(lanes[i]);
#endif
}

// The ratio exp(logp_new - logp_old), its clamp to [1 - clip, 1 + clip], and -adv times each.
struct Surrogate {
  VecD diff, ratio, unclipped, clipped;
  Surrogate(const float* ln, const float* lo, const float* adv, int64_t n, const VecD& lo_c, const VecD& hi_c) {
    diff = load_f64(ln, n) - load_f64(lo, n);
    ratio = diff.exp();
    const VecD neg_adv = VecD(0.0) - load_f64(adv, n);
    unclipped = neg_adv * ratio;
    clipped = neg_adv * at::vec::clamp(ratio, lo_c, hi_c);
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> clipped_policy_loss_fwd(const at::Tensor& logp_new,
                                                                       const at::Tensor& logp_old,
                                                                       const at::Tensor& adv,
                                                                       const std::optional<at::Tensor>& kl,
                                                                       double clip, double beta) {
  const int64_t N = logp_new.numel();
  check_vec(logp_new, "logp_new", N);
  check_vec(logp_old, "logp_old", N);
  check_vec(adv, "adv", N);
  if (kl.has_value()) check_vec(*kl, "kl", N);
  const float *ln = logp_new.data_ptr<float>(), *lo = logp_old.data_ptr<float>(), *ad = adv.data_ptr<float>();
  const float* kp = kl.has_value() ? kl->data_ptr<float>() : nullptr;

  const VecD lo_c(1.0 - clip), hi_c(1.0 + clip), clip_v(clip), one(1.0), half(0.5), beta_v(beta);
  VecD loss(0.0), clipped(0.0), approx_kl(0.0);
  for (int64_t i = 0; i < N; i += kWD) {
    const int64_t n = std::min(kWD, N - i);  // padded lanes: ratio 1, adv 0, kl 0 -> they add 0
    const Surrogate s(ln + i, lo + i, ad + i, n, lo_c, hi_c);
    loss = loss + at::vec::maximum(s.unclipped, s.clipped);
    if (kp) loss = at::vec::fmadd(beta_v, load_f64(kp + i, n), loss);
    clipped = clipped + ((s.ratio - one).abs() > clip_v & one);
    approx_kl = at::vec::fmadd(half * s.diff, s.diff, approx_kl);
  }
  auto total = [](const VecD& v) {
    double lanes[kWD];
    v.store(lanes);
    double t = 0.0;
    for (int64_t i = 0; i < kWD; ++i) t += lanes[i];
    return t;
  };
  const double inv_n = 1.0 / static_cast<double>(N);  // N = 0 gives NaN, as torch's mean of nothing
  auto scalar = [](double value) {
    at::Tensor t = new_cpu({}, at::kFloat);
    *t.data_ptr<float>() = static_cast<float>(value);
    return t;
  };
  return {scalar(total(loss) * inv_n), scalar(total(clipped) * inv_n), scalar(total(approx_kl) * inv_n)};
}

std::tuple<at::Tensor, at::Tensor> clipped_policy_loss_bwd(const at::Tensor& grad_loss, const at::Tensor& logp_new,
                                                           const at::Tensor& logp_old, const at::Tensor& adv,
                                                           double clip, double beta, bool n_kl) {
  const int64_t N = logp_new.numel();
  check_vec(logp_new, "logp_new", N);
  check_vec(logp_old, "logp_old", N);
  check_vec(adv, "adv", N);
  TORCH_CHECK(grad_loss.device().is_cpu() && grad_loss.numel() == 1 && grad_loss.scalar_type() == at::kFloat,
              "grad_loss must be a float32 CPU scalar, got ", grad_loss.sizes(), " ", grad_loss.scalar_type());
  const double g = static_cast<double>(grad_loss.item<float>()) / static_cast<double>(N);
  at::Tensor grad_new = new_cpu({N}, at::kFloat);
  // The KL term is beta * mean(kl): a constant gradient; zeros when the forward had no kl (n_kl false).
  at::Tensor grad_kl = new_cpu({N}, at::kFloat);
  std::fill_n(grad_kl.data_ptr<float>(), N, n_kl ? static_cast<float>(g * beta) : 0.0f);

  const float *ln = logp_new.data_ptr<float>(), *lo = logp_old.data_ptr<float>(), *ad = adv.data_ptr<float>();
  float* gn = grad_new.data_ptr<float>();
  const VecD lo_c(1.0 - clip), hi_c(1.0 + clip), g_v(g);
  for (int64_t i = 0; i < N; i += kWD) {
    const int64_t n = std::min(kWD, N - i);
    const Surrogate s(ln + i, lo + i, ad + i, n, lo_c, hi_c);
    // max() takes the unclipped branch on ties; only that branch depends on logp_new (d/dx of -adv e^x).
    store_f32(gn + i, (s.unclipped >= s.clipped) & (g_v * s.unclipped), n);
  }
  return {grad_new, grad_kl};
}

}  // namespace vgpo_fast
