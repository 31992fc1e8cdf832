// sde_step_fwd: one SDE step with its log-probability (docs/spec.md section 2) and the ODE projection
// x0_hat = x - sigma v (section 3), in one pass: x, v, noise read once, x_next and x0_hat written once.
#include "common.h"

#include <vector>

namespace vgpo_fast {
namespace {

// One vector step (see load2). Zero-filled tail lanes add 0 to acc. kNoise is false on a deterministic
// row (scale == 0): x_next = mean and noise is not read.
template <typename T, bool kTail, bool kNoise>
inline void step_vec(const T* x, const T* v, const T* noise, T* x_next, T* x0_hat, int64_t count, const Vec& c_x,
                     const Vec& c_v, const Vec& scale, const Vec& sigma, Vec& acc_lo, Vec& acc_hi) {
  Vec x_lo, x_hi, v_lo, v_hi;
  load2<kTail>(x, count, x_lo, x_hi);
  load2<kTail>(v, count, v_lo, v_hi);
  const Vec mean_lo = at::vec::fmadd(c_x, x_lo, c_v * v_lo);
  const Vec mean_hi = at::vec::fmadd(c_x, x_hi, c_v * v_hi);
  store2<kTail>(x0_hat, count, x_lo - sigma * v_lo, x_hi - sigma * v_hi);
  if constexpr (!kNoise) {
    store2<kTail>(x_next, count, mean_lo, mean_hi);
  } else {
    Vec e_lo, e_hi;
    load2<kTail>(noise, count, e_lo, e_hi);
    Vec xn_lo = at::vec::fmadd(scale, e_lo, mean_lo);
    Vec xn_hi = at::vec::fmadd(scale, e_hi, mean_hi);
    store2_rounded<kTail>(x_next, count, xn_lo, xn_hi);  // logp is taken from x_next as stored (docs/ops.md)
    const Vec d_lo = xn_lo - mean_lo;
    const Vec d_hi = xn_hi - mean_hi;
    acc_lo = at::vec::fmadd(d_lo, d_lo, acc_lo);
    acc_hi = at::vec::fmadd(d_hi, d_hi, acc_hi);
  }
}

// Elements [lo, hi) of one row; returns sum (x_next - mean)^2 over them (0 when !kNoise).
template <typename T, bool kNoise>
double step_range(const T* x, const T* v, const T* noise, T* x_next, T* x0_hat, int64_t lo, int64_t hi,
                  const RowCoef& c) {
  constexpr int64_t S = Io<T>::kStep;
  const Vec c_x(c.c_x), c_v(c.c_v), scale(c.scale), sigma(c.sigma);
  double total = 0.0;
  for (int64_t blk = lo; blk < hi; blk += kBlock) {
    const int64_t end = std::min(hi, blk + kBlock);
    Vec acc_lo(0.0f), acc_hi(0.0f);
    int64_t i = blk;
    for (; i + S <= end; i += S) {
      step_vec<T, false, kNoise>(x + i, v + i, noise + i, x_next + i, x0_hat + i, S, c_x, c_v, scale, sigma, acc_lo,
                                 acc_hi);
    }
    if (i < end) {
      step_vec<T, true, kNoise>(x + i, v + i, noise + i, x_next + i, x0_hat + i, end - i, c_x, c_v, scale, sigma,
                                acc_lo, acc_hi);
    }
    if constexpr (kNoise) total += sum_lanes(acc_lo + acc_hi);
  }
  return total;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> sde_step_fwd(const at::Tensor& x, const at::Tensor& v,
                                                            const at::Tensor& noise, const at::Tensor& sigma,
                                                            const at::Tensor& sigma_next, double a,
                                                            int64_t sde_type, bool reduce_mean) {
  check_data(x, "x", x);
  check_data(v, "v", x);
  check_data(noise, "noise", x);
  const int64_t B = x.size(0), N = x.size(1);
  check_f32(sigma, "sigma", B);
  check_f32(sigma_next, "sigma_next", B);
  TORCH_CHECK(sde_type == 0 || sde_type == 1, "sde_type must be 0 (flow_grpo) or 1 (cps), got ", sde_type);

  std::vector<RowCoef> coef(B);
  const float* sigma_p = sigma.data_ptr<float>();
  const float* sigma_next_p = sigma_next.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) coef[b] = row_coef(sigma_p[b], sigma_next_p[b], a, sde_type);

  const int64_t per_row = chunks_per_row(N);
  std::vector<double> partial(B * per_row, 0.0);
  at::Tensor x_next = new_cpu(x.sizes(), x.scalar_type());
  at::Tensor x0_hat = new_cpu(x.sizes(), x.scalar_type());
  at::Tensor logp = new_cpu({B}, at::kFloat);

  dispatch_data_dtype(x.scalar_type(), "sde_step_fwd", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* vp = v.data_ptr<T>();
    const T* ep = noise.data_ptr<T>();
    T* xnp = x_next.data_ptr<T>();
    T* x0p = x0_hat.data_ptr<T>();
    for_each_chunk(B, N, [&](int64_t task, int64_t row, int64_t lo, int64_t hi) {
      const int64_t off = row * N;
      partial[task] = coef[row].scale != 0.0f
                          ? step_range<T, true>(xp + off, vp + off, ep + off, xnp + off, x0p + off, lo, hi, coef[row])
                          : step_range<T, false>(xp + off, vp + off, ep + off, xnp + off, x0p + off, lo, hi, coef[row]);
    });
  });

  float* logp_p = logp.data_ptr<float>();
  const double w = reduce_mean ? 1.0 / static_cast<double>(std::max<int64_t>(N, 1)) : 1.0;
  for (int64_t b = 0; b < B; ++b) {
    double sq = 0.0;
    for (int64_t t = 0; t < per_row; ++t) sq += partial[b * per_row + t];
    logp_p[b] = gaussian_logp(sq, coef[b], w, N);
  }
  return {x_next, logp, x0_hat};
}

}  // namespace vgpo_fast
