// sde_log_prob_fwd / _bwd: log-probability of a stored transition and the closed-form KL to a reference
// velocity (docs/spec.md sections 5.2, 5.4), and their fused gradient with respect to v. Each is one pass over memory.
#include "common.h"

#include <vector>

namespace vgpo_fast {
namespace {

// Forward over elements [lo, hi) of one row: adds sum (x_next - mean)^2 to *sq and sum (v - v_ref)^2 to *dv2.
template <typename T, bool kRef>
void fwd_range(const T* x, const T* v, const T* x_next, const T* v_ref, int64_t lo, int64_t hi, const RowCoef& c,
               double* sq, double* dv2) {
  constexpr int64_t S = Io<T>::kStep;
  const Vec c_x(c.c_x), c_v(c.c_v);
  double sq_total = 0.0, dv2_total = 0.0;
  for (int64_t blk = lo; blk < hi; blk += kBlock) {
    const int64_t end = std::min(hi, blk + kBlock);
    Vec sq_lo(0.0f), sq_hi(0.0f), dv_lo(0.0f), dv_hi(0.0f);
    auto body = [&](int64_t i, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const int64_t count = end - i;
      Vec x_lo, x_hi, v_lo, v_hi, xn_lo, xn_hi;
      load2<kTail>(x + i, count, x_lo, x_hi);
      load2<kTail>(v + i, count, v_lo, v_hi);
      load2<kTail>(x_next + i, count, xn_lo, xn_hi);
      const Vec d_lo = xn_lo - at::vec::fmadd(c_x, x_lo, c_v * v_lo);
      const Vec d_hi = xn_hi - at::vec::fmadd(c_x, x_hi, c_v * v_hi);
      sq_lo = at::vec::fmadd(d_lo, d_lo, sq_lo);
      sq_hi = at::vec::fmadd(d_hi, d_hi, sq_hi);
      if constexpr (kRef) {
        Vec r_lo, r_hi;
        load2<kTail>(v_ref + i, count, r_lo, r_hi);
        const Vec e_lo = v_lo - r_lo;
        const Vec e_hi = v_hi - r_hi;
        dv_lo = at::vec::fmadd(e_lo, e_lo, dv_lo);
        dv_hi = at::vec::fmadd(e_hi, e_hi, dv_hi);
      }
    };
    int64_t i = blk;
    for (; i + S <= end; i += S) body(i, std::false_type{});
    if (i < end) body(i, std::true_type{});
    sq_total += sum_lanes(sq_lo + sq_hi);
    if constexpr (kRef) dv2_total += sum_lanes(dv_lo + dv_hi);
  }
  *sq = sq_total;
  *dv2 = dv2_total;
}

// Backward over elements [lo, hi): grad_v = g_d * (x_next - mean) + g_r * (v - v_ref).
template <typename T, bool kRef>
void bwd_range(const T* x, const T* v, const T* x_next, const T* v_ref, T* grad_v, int64_t lo, int64_t hi,
               const RowCoef& c, float g_d_f, float g_r_f) {
  constexpr int64_t S = Io<T>::kStep;
  const Vec c_x(c.c_x), c_v(c.c_v), g_d(g_d_f), g_r(g_r_f);
  auto body = [&](int64_t i, auto tail) {
    constexpr bool kTail = decltype(tail)::value;
    const int64_t count = hi - i;
    Vec x_lo, x_hi, v_lo, v_hi, xn_lo, xn_hi;
    load2<kTail>(x + i, count, x_lo, x_hi);
    load2<kTail>(v + i, count, v_lo, v_hi);
    load2<kTail>(x_next + i, count, xn_lo, xn_hi);
    Vec g_lo = g_d * (xn_lo - at::vec::fmadd(c_x, x_lo, c_v * v_lo));
    Vec g_hi = g_d * (xn_hi - at::vec::fmadd(c_x, x_hi, c_v * v_hi));
    if constexpr (kRef) {
      Vec r_lo, r_hi;
      load2<kTail>(v_ref + i, count, r_lo, r_hi);
      g_lo = at::vec::fmadd(g_r, v_lo - r_lo, g_lo);
      g_hi = at::vec::fmadd(g_r, v_hi - r_hi, g_hi);
    }
    store2<kTail>(grad_v + i, count, g_lo, g_hi);
  };
  int64_t i = lo;
  for (; i + S <= hi; i += S) body(i, std::false_type{});
  if (i < hi) body(i, std::true_type{});
}

struct Prepared {
  int64_t B, N;
  std::vector<RowCoef> coef;
  double w;  // 1/N for reduce_mean, else 1
};

Prepared prepare(const at::Tensor& x, const at::Tensor& v, const at::Tensor& x_next,
                 const std::optional<at::Tensor>& v_ref, const at::Tensor& sigma, const at::Tensor& sigma_next,
                 double a, int64_t sde_type, bool reduce_mean, int64_t kl_form) {
  check_data(x, "x", x);
  check_data(v, "v", x);
  check_data(x_next, "x_next", x);
  if (v_ref.has_value()) check_data(*v_ref, "v_ref", x);
  Prepared p;
  p.B = x.size(0);
  p.N = x.size(1);
  check_f32(sigma, "sigma", p.B);
  check_f32(sigma_next, "sigma_next", p.B);
  TORCH_CHECK(sde_type == 0 || sde_type == 1, "sde_type must be 0 (flow_grpo) or 1 (cps), got ", sde_type);
  TORCH_CHECK(kl_form == 0 || kl_form == 1, "kl_form must be 0 (scale) or 1 (flow_grpo), got ", kl_form);
  p.coef.resize(p.B);
  const float* s = sigma.data_ptr<float>();
  const float* sn = sigma_next.data_ptr<float>();
  for (int64_t b = 0; b < p.B; ++b) p.coef[b] = row_coef(s[b], sn[b], a, sde_type);
  p.w = reduce_mean ? 1.0 / static_cast<double>(std::max<int64_t>(p.N, 1)) : 1.0;
  return p;
}

// 1 / (2 scale^2) or 1 / (2 std^2); 0 where that is infinite (the op never sends such rows).
inline double inv_kl_den(const RowCoef& c, int64_t kl_form) {
  const double s = kl_form == 0 ? c.scale_d : c.std_dev;
  return s != 0.0 ? 1.0 / (2.0 * s * s) : 0.0;
}

inline double inv_var(const RowCoef& c) { return c.scale_d != 0.0 ? 1.0 / (c.scale_d * c.scale_d) : 0.0; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> sde_log_prob_fwd(const at::Tensor& x, const at::Tensor& v,
                                                    const at::Tensor& x_next, const std::optional<at::Tensor>& v_ref,
                                                    const at::Tensor& sigma, const at::Tensor& sigma_next, double a,
                                                    int64_t sde_type, bool reduce_mean, int64_t kl_form) {
  const Prepared p = prepare(x, v, x_next, v_ref, sigma, sigma_next, a, sde_type, reduce_mean, kl_form);
  const int64_t B = p.B, N = p.N, per_row = chunks_per_row(N);
  std::vector<double> sq(B * per_row, 0.0), dv2(B * per_row, 0.0);
  const bool has_ref = v_ref.has_value();

  dispatch_data_dtype(x.scalar_type(), "sde_log_prob_fwd", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* vp = v.data_ptr<T>();
    const T* xnp = x_next.data_ptr<T>();
    const T* rp = has_ref ? v_ref->data_ptr<T>() : nullptr;
    for_each_chunk(B, N, [&](int64_t task, int64_t row, int64_t lo, int64_t hi) {
      const int64_t off = row * N;
      if (has_ref) {
        fwd_range<T, true>(xp + off, vp + off, xnp + off, rp + off, lo, hi, p.coef[row], &sq[task], &dv2[task]);
      } else {
        fwd_range<T, false>(xp + off, vp + off, xnp + off, nullptr, lo, hi, p.coef[row], &sq[task], &dv2[task]);
      }
    });
  });

  at::Tensor logp = new_cpu({B}, at::kFloat);
  at::Tensor kl = new_cpu({B}, at::kFloat);
  float* logp_p = logp.data_ptr<float>();
  float* kl_p = kl.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const RowCoef& c = p.coef[b];
    double sq_b = 0.0, dv2_b = 0.0;
    for (int64_t t = 0; t < per_row; ++t) {
      sq_b += sq[b * per_row + t];
      dv2_b += dv2[b * per_row + t];
    }
    logp_p[b] = gaussian_logp(sq_b, c, p.w, N);
    const double c_v = c.c_v;
    kl_p[b] = has_ref ? static_cast<float>(p.w * c_v * c_v * dv2_b * inv_kl_den(c, kl_form)) : 0.0f;
  }
  return {logp, kl};
}

at::Tensor sde_log_prob_bwd(const at::Tensor& grad_logp, const at::Tensor& grad_kl, const at::Tensor& x,
                            const at::Tensor& v, const at::Tensor& x_next, const std::optional<at::Tensor>& v_ref,
                            const at::Tensor& sigma, const at::Tensor& sigma_next, double a, int64_t sde_type,
                            bool reduce_mean, int64_t kl_form) {
  const Prepared p = prepare(x, v, x_next, v_ref, sigma, sigma_next, a, sde_type, reduce_mean, kl_form);
  const int64_t B = p.B, N = p.N;
  check_f32(grad_logp, "grad_logp", B);
  check_f32(grad_kl, "grad_kl", B);
  const bool has_ref = v_ref.has_value();

  // grad_v = w c_v (grad_logp (x_next - mean) / scale^2 + grad_kl 2 c_v (v - v_ref) / kl_den), hoisted per row.
  std::vector<float> g_d(B), g_r(B);
  const float* gl = grad_logp.data_ptr<float>();
  const float* gk = grad_kl.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const RowCoef& c = p.coef[b];
    const double c_v = c.c_v;
    g_d[b] = static_cast<float>(p.w * c_v * gl[b] * inv_var(c));
    g_r[b] = has_ref ? static_cast<float>(p.w * c_v * gk[b] * 2.0 * c_v * inv_kl_den(c, kl_form)) : 0.0f;
  }

  at::Tensor grad_v = new_cpu(v.sizes(), v.scalar_type());
  dispatch_data_dtype(x.scalar_type(), "sde_log_prob_bwd", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* vp = v.data_ptr<T>();
    const T* xnp = x_next.data_ptr<T>();
    const T* rp = has_ref ? v_ref->data_ptr<T>() : nullptr;
    T* gp = grad_v.data_ptr<T>();
    for_each_chunk(B, N, [&](int64_t, int64_t row, int64_t lo, int64_t hi) {
      const int64_t off = row * N;
      if (has_ref) {
        bwd_range<T, true>(xp + off, vp + off, xnp + off, rp + off, gp + off, lo, hi, p.coef[row], g_d[row], g_r[row]);
      } else {
        bwd_range<T, false>(xp + off, vp + off, xnp + off, nullptr, gp + off, lo, hi, p.coef[row], g_d[row], 0.0f);
      }
    });
  });
  return grad_v;
}

}  // namespace vgpo_fast
