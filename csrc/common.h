// Shared pieces of the CPU backend: per-row SDE coefficients, float32 vector loads/stores of the
// data dtypes, the row/chunk work split, and the launcher declarations that registration.cpp binds.
#pragma once

// at::vec picks its instruction set from these macros, which torch only defines when it builds its own
// kernels. Derive them from what the compiler targets (-march=native by default, see setup.py), and give
// the inline namespace a name of our own so that nothing here can collide with torch's instantiations.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY_AVX2
#endif
#define CPU_CAPABILITY vgpo_fast_vec

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
// GCC 12 flags AVX-512 intrinsics inside torch's vector headers as maybe-uninitialized; not this code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#pragma GCC diagnostic pop
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

namespace vgpo_fast {

using Vec = at::vec::Vectorized<float>;

constexpr double kPi = 3.14159265358979323846;
constexpr double kLogSqrt2Pi = 0.91893853320467274178;  // log(sqrt(2 pi))

// Work unit of the elementwise kernels: a (row, chunk) pair. The chunk length is fixed, not derived from
// the thread count, and per-chunk partial sums are added in chunk order, so results do not depend on the
// number of threads.
constexpr int64_t kChunk = 8192;
// Inside a chunk, squares are summed in float32 vector lanes over blocks of this many elements (32 terms
// per lane with AVX-512) and each block's total is added in double: float-lane error stays ~1e-7.
constexpr int64_t kBlock = 1024;
// Below this many elements per thread a parallel region costs more than it saves.
constexpr int64_t kMinElemsPerThread = 32768;

struct RowCoef {
  float c_x, c_v, scale, sigma;  // hot-loop coefficients: mean = c_x x + c_v v
  double std_dev, scale_d;       // double copies for the per-row closed forms
};

// docs/spec.md section 2.3 / docs/ops.md "Per-sample coefficients"; computed in double, used in float32.
inline RowCoef row_coef(float sigma_f, float sigma_next_f, double a, int64_t sde_type) {
  const double sigma = sigma_f, sigma_next = sigma_next_f, dt = sigma_next - sigma;
  double std_dev, c_x, c_v, scale;
  if (sde_type == 0) {  // flow_grpo
    const double s = (sigma == 1.0) ? sigma_next : sigma;
    std_dev = a * std::sqrt(sigma / (1.0 - s));
    const double var = std_dev * std_dev;
    c_x = 1.0 + var * dt / (2.0 * sigma);
    c_v = (1.0 + var * (1.0 - sigma) / (2.0 * sigma)) * dt;
    scale = std_dev * std::sqrt(-dt);
  } else {  // cps
    std_dev = sigma_next * std::sin(a * kPi / 2.0);
    // a = 1 makes the radicand exactly 0 in exact arithmetic; keep rounding from turning it into NaN.
    const double r = std::sqrt(std::max(0.0, sigma_next * sigma_next - std_dev * std_dev));
    c_x = (1.0 - sigma_next) + r;
    c_v = -sigma * (1.0 - sigma_next) + r * (1.0 - sigma);
    scale = std_dev;
  }
  RowCoef c;
  c.c_x = static_cast<float>(c_x);
  c.c_v = static_cast<float>(c_v);
  c.scale = static_cast<float>(scale);
  c.sigma = sigma_f;
  c.std_dev = std_dev;
  c.scale_d = static_cast<double>(c.scale);
  return c;
}

// logp of a row from sum_n (x_next - mean)^2: w * sum_n [-d^2 / (2 scale^2) - log(scale) - log(sqrt(2 pi))]
// with w = 1/N (mean) or 1 (sum), so the constant terms count N times under sum. 0 on a deterministic row.
inline float gaussian_logp(double sum_sq, const RowCoef& c, double w, int64_t n) {
  if (c.scale_d == 0.0) return 0.0f;
  const double per_element_const = -std::log(c.scale_d) - kLogSqrt2Pi;
  const double quadratic = -0.5 * sum_sq / (c.scale_d * c.scale_d);
  return static_cast<float>(w * quadratic + w * static_cast<double>(n) * per_element_const);
}

// Load/store 2 * Vec::size() elements of T as two float32 vectors (count < 2 * Vec::size() for tails).
// For BFloat16/Half that is exactly one Vectorized<T>.
template <typename T>
struct Io {
  static constexpr int64_t kStep = 2 * Vec::size();
  using VecT = at::vec::Vectorized<T>;
  static_assert(VecT::size() == kStep, "reduced-precision vector must hold two float vectors");

  static inline void load(const T* p, Vec& lo, Vec& hi) {
    std::tie(lo, hi) = at::vec::convert_to_float<T>(VecT::loadu(p));
  }
  static inline void load(const T* p, int64_t count, Vec& lo, Vec& hi) {
    std::tie(lo, hi) = at::vec::convert_to_float<T>(VecT::loadu(p, count));
  }
  static inline void store(T* p, const Vec& lo, const Vec& hi) {
    at::vec::convert_from_float<T>(lo, hi).store(p);
  }
  static inline void store(T* p, int64_t count, const Vec& lo, const Vec& hi) {
    at::vec::convert_from_float<T>(lo, hi).store(p, static_cast<int>(count));
  }
  // Stores lo, hi as T and replaces them by what was stored (x_next's logp is taken after rounding).
  static inline void store_rounded(T* p, Vec& lo, Vec& hi) {
    const VecT rounded = at::vec::convert_from_float<T>(lo, hi);
    rounded.store(p);
    std::tie(lo, hi) = at::vec::convert_to_float<T>(rounded);
  }
  static inline void store_rounded(T* p, int64_t count, Vec& lo, Vec& hi) {
    const VecT rounded = at::vec::convert_from_float<T>(lo, hi);
    rounded.store(p, static_cast<int>(count));
    std::tie(lo, hi) = at::vec::convert_to_float<T>(rounded);
  }
};

template <>
struct Io<float> {
  static constexpr int64_t kStep = 2 * Vec::size();
  static constexpr int64_t W = Vec::size();

  static inline void load(const float* p, Vec& lo, Vec& hi) {
    lo = Vec::loadu(p);
    hi = Vec::loadu(p + W);
  }
  static inline void load(const float* p, int64_t count, Vec& lo, Vec& hi) {
    lo = Vec::loadu(p, std::min(count, W));
    hi = count > W ? Vec::loadu(p + W, count - W) : Vec(0.0f);
  }
  static inline void store(float* p, const Vec& lo, const Vec& hi) {
    lo.store(p);
    hi.store(p + W);
  }
  static inline void store(float* p, int64_t count, const Vec& lo, const Vec& hi) {
    lo.store(p, static_cast<int>(std::min(count, W)));
    if (count > W) hi.store(p + W, static_cast<int>(count - W));
  }
  static inline void store_rounded(float* p, Vec& lo, Vec& hi) { store(p, lo, hi); }
  static inline void store_rounded(float* p, int64_t count, Vec& lo, Vec& hi) { store(p, count, lo, hi); }
};

// One step of 2 * Vec::size() elements, or with kTail the row's last `count` (fewer) elements, whose
// missing lanes load as 0.
template <bool kTail, typename T>
inline void load2(const T* p, int64_t count, Vec& lo, Vec& hi) {
  if constexpr (kTail) {
    Io<T>::load(p, count, lo, hi);
  } else {
    Io<T>::load(p, lo, hi);
  }
}
template <bool kTail, typename T>
inline void store2(T* p, int64_t count, const Vec& lo, const Vec& hi) {
  if constexpr (kTail) {
    Io<T>::store(p, count, lo, hi);
  } else {
    Io<T>::store(p, lo, hi);
  }
}
template <bool kTail, typename T>
inline void store2_rounded(T* p, int64_t count, Vec& lo, Vec& hi) {
  if constexpr (kTail) {
    Io<T>::store_rounded(p, count, lo, hi);
  } else {
    Io<T>::store_rounded(p, lo, hi);
  }
}

// A new uninitialised CPU tensor, allocated without a dispatcher round trip (a few us per output that
// the small ops would otherwise pay).
inline at::Tensor new_cpu(at::IntArrayRef size, at::ScalarType dtype) {
  return at::Tensor(at::detail::empty_cpu(size, dtype));
}

inline double sum_lanes(const Vec& acc) {
  float lanes[Vec::size()];
  acc.store(lanes);
  double total = 0.0;
  for (int64_t k = 0; k < Vec::size(); ++k) total += lanes[k];
  return total;
}

// Run fn(task, row, lo, hi) over every (row, chunk) task of a [rows, n] array, in parallel when it is big
// enough; task = row * chunks_per_row(n) + chunk indexes per-task partial sums.
inline int64_t chunks_per_row(int64_t n) { return std::max<int64_t>(1, (n + kChunk - 1) / kChunk); }

template <typename Fn>
inline void for_each_chunk(int64_t rows, int64_t n, const Fn& fn) {
  const int64_t per_row = chunks_per_row(n);
  const int64_t tasks = rows * per_row;
  const int64_t task_elems = std::max<int64_t>(1, std::min(n, kChunk));
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerThread / task_elems);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / per_row, lo = (t % per_row) * kChunk;
      fn(t, row, lo, std::min(n, lo + kChunk));
    }
  });
}

// Dispatch over the three data dtypes the kernels accept.
template <typename Fn>
inline void dispatch_data_dtype(at::ScalarType dt, const char* name, const Fn& fn) {
  switch (dt) {
    case at::kFloat: fn(float{}); break;
    case at::kBFloat16: fn(c10::BFloat16{}); break;
    case at::kHalf: fn(c10::Half{}); break;
    default: TORCH_CHECK(false, name, ": data tensors must be float32, bfloat16 or float16, got ", dt);
  }
}

inline void check_data(const at::Tensor& t, const char* what, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == 2, what,
              " must be a contiguous 2-D CPU tensor [B, N], got sizes ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type(), what, " must match x: ",
              like.sizes(), " ", like.scalar_type(), ", got ", t.sizes(), " ", t.scalar_type());
}

inline void check_f32(const at::Tensor& t, const char* what, int64_t numel) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == at::kFloat && t.numel() == numel,
              what, " must be a contiguous float32 CPU tensor with ", numel, " elements, got ", t.sizes(), " ",
              t.scalar_type());
}

// ---- launchers (docs/ops.md), registered in registration.cpp ----

std::tuple<at::Tensor, at::Tensor, at::Tensor> sde_step_fwd(const at::Tensor& x, const at::Tensor& v,
                                                            const at::Tensor& noise, const at::Tensor& sigma,
                                                            const at::Tensor& sigma_next, double a,
                                                            int64_t sde_type, bool reduce_mean);

std::tuple<at::Tensor, at::Tensor> sde_log_prob_fwd(const at::Tensor& x, const at::Tensor& v,
                                                    const at::Tensor& x_next, const std::optional<at::Tensor>& v_ref,
                                                    const at::Tensor& sigma, const at::Tensor& sigma_next, double a,
                                                    int64_t sde_type, bool reduce_mean, int64_t kl_form);

at::Tensor sde_log_prob_bwd(const at::Tensor& grad_logp, const at::Tensor& grad_kl, const at::Tensor& x,
                            const at::Tensor& v, const at::Tensor& x_next, const std::optional<at::Tensor>& v_ref,
                            const at::Tensor& sigma, const at::Tensor& sigma_next, double a, int64_t sde_type,
                            bool reduce_mean, int64_t kl_form);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tcrm_adae_fwd(
    const at::Tensor& rewards, double gamma, double k, double eps, double adv_clip, bool use_omega, bool global_std);

at::Tensor grpo_advantage_fwd(const at::Tensor& rewards, double eps, double adv_clip, bool global_std);

std::tuple<at::Tensor, at::Tensor, at::Tensor> clipped_policy_loss_fwd(const at::Tensor& logp_new,
                                                                       const at::Tensor& logp_old,
                                                                       const at::Tensor& adv,
                                                                       const std::optional<at::Tensor>& kl,
                                                                       double clip, double beta);

std::tuple<at::Tensor, at::Tensor> clipped_policy_loss_bwd(const at::Tensor& grad_loss, const at::Tensor& logp_new,
                                                           const at::Tensor& logp_old, const at::Tensor& adv,
                                                           double clip, double beta, bool n_kl);

}  // namespace vgpo_fast
