// CPU twins of the CUDA kernels: the same per-element math (kernel_math.h), looped on the host and
// parallel over independent channels or rows. CI builds and tests these against the PyTorch reference;
// they are also what `quamba_edge.kernels` runs on a CPU when the extension is built.
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../torch/shapes.h"

namespace quamba_edge {
namespace {

constexpr int64_t kChannelBlock = 32;  // channels stepped together: their states (2 KiB at d_state 16) stay in L1

// Runs the recurrence of channels [c0, c1) of batch row b over all steps, time outermost: each step
// reads u, delta and z for the block from one cache line and B_t, C_t once. kN > 0 fixes d_state at
// compile time (Mamba's 16: the inner loops become straight vector code); kN == 0 reads it from `s`.
template <int kN>
void scan_block(const ScanDims& s, int64_t b, int64_t c0, int64_t c1, const int8_t* u, const int8_t* delta,
                const int8_t* B, const int8_t* C, const int8_t* z, const int8_t* A_log, const int8_t* D,
                const int8_t* delta_bias, const float* scales, float* state, float* y) {
  const int64_t n = kN > 0 ? kN : s.d_state;
  alignas(64) float A[kChannelBlock * (kN > 0 ? kN : kMaxStateSize)];
  alignas(64) float Bf[kN > 0 ? kN : kMaxStateSize], Cf[kN > 0 ? kN : kMaxStateSize];
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t k = 0; k < n; ++k) A[(c - c0) * n + k] = scan_A(A_log[c * n + k], scales);
  for (int64_t t = 0; t < s.length; ++t) {
    const int64_t row = b * s.length + t;
    for (int64_t k = 0; k < n; ++k) {
      Bf[k] = dequantize_int8(B[row * n + k], scales[kScaleB]);
      Cf[k] = dequantize_int8(C[row * n + k], scales[kScaleC]);
    }
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i = row * s.d_inner + c;
      const float dt = scan_delta(delta[i], delta_bias[c], scales);
      const float ut = dequantize_int8(u[i], scales[kScaleU]);
      const float dt_u = dt * ut;
      float* __restrict h = state + (b * s.d_inner + c) * n;
      const float* __restrict Ac = A + (c - c0) * n;
      // Two loops so that each vectorizes (OpenMP SIMD: the exp polynomial; a reordered sum, within the
      // fp32 1e-5 contract).
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) h[k] = scan_state_update(h[k], dt, Ac[k], dt_u, Bf[k]);
      float h_dot_C = 0.0f;
#pragma omp simd reduction(+ : h_dot_C)
      for (int64_t k = 0; k < n; ++k) h_dot_C += h[k] * Cf[k];
      y[i] = scan_output(h_dot_C, ut, D[c], z[i], scales);
    }
  }
}

void scan_cpu(const ScanDims& s, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B,
              const at::Tensor& C, const at::Tensor& z, const at::Tensor& A_log, const at::Tensor& D,
              const at::Tensor& delta_bias, const at::Tensor& scales, float* state, float* y) {
  const float* sc = scales.data_ptr<float>();
  const int64_t blocks = (s.d_inner + kChannelBlock - 1) / kChannelBlock;
  const auto run = s.d_state == 16 ? scan_block<16> : scan_block<0>;
  at::parallel_for(0, s.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / blocks, c0 = (job % blocks) * kChannelBlock;
      run(s, b, c0, std::min(c0 + kChannelBlock, s.d_inner), u.data_ptr<int8_t>(), delta.data_ptr<int8_t>(),
          B.data_ptr<int8_t>(), C.data_ptr<int8_t>(), z.data_ptr<int8_t>(), A_log.data_ptr<int8_t>(),
          D.data_ptr<int8_t>(), delta_bias.data_ptr<int8_t>(), sc, state, y);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> selective_scan_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B,
                                                  const at::Tensor& C, const at::Tensor& z, const at::Tensor& A_log,
                                                  const at::Tensor& D, const at::Tensor& delta_bias,
                                                  const at::Tensor& scales, const at::Tensor& ssm_state) {
  const auto s = check_scan("selective_scan", false, u, delta, B, C, z, A_log, D, delta_bias, scales, ssm_state);
  at::Tensor y = at::empty({s.batch, s.length, s.d_inner}, u.options().dtype(at::kFloat));
  at::Tensor state = ssm_state.clone();
  scan_cpu(s, u, delta, B, C, z, A_log, D, delta_bias, scales, state.data_ptr<float>(), y.data_ptr<float>());
  return {y, state};
}

at::Tensor selective_scan_step_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B,
                               const at::Tensor& C, const at::Tensor& z, const at::Tensor& A_log, const at::Tensor& D,
                               const at::Tensor& delta_bias, const at::Tensor& scales, at::Tensor ssm_state) {
  const auto s = check_scan("selective_scan_step", true, u, delta, B, C, z, A_log, D, delta_bias, scales, ssm_state);
  at::Tensor y = at::empty({s.batch, s.d_inner}, u.options().dtype(at::kFloat));
  scan_cpu(s, u, delta, B, C, z, A_log, D, delta_bias, scales, ssm_state.data_ptr<float>(), y.data_ptr<float>());
  return y;
}

// Input at time p of channel (b, c) of the padded sequence [conv_state, x]: p < 0 reads the state.
inline int8_t conv_input(const int8_t* x, const int8_t* state, const ConvDims& k, int64_t b, int64_t c, int64_t p) {
  return p < 0 ? state[(b * k.d_inner + c) * (k.width - 1) + (k.width - 1) + p]
               : x[(b * k.length + p) * k.d_inner + c];
}

std::tuple<at::Tensor, at::Tensor> conv1d_silu_cpu(const at::Tensor& x, const at::Tensor& conv_state,
                                               const at::Tensor& weight, const at::Tensor& bias,
                                               const at::Tensor& weight_scale, const at::Tensor& scales) {
  const auto k = check_conv("conv1d_silu", false, x, conv_state, weight, bias, weight_scale, scales);
  at::Tensor out = at::empty_like(x);
  at::Tensor new_state = at::empty_like(conv_state);
  const int8_t *xp = x.data_ptr<int8_t>(), *sp = conv_state.data_ptr<int8_t>(), *wp = weight.data_ptr<int8_t>();
  const int8_t* bp = bias.data_ptr<int8_t>();
  const float *ws = weight_scale.data_ptr<float>(), *sc = scales.data_ptr<float>();
  const bool per_channel = weight_scale.numel() > 1;
  int8_t *op = out.data_ptr<int8_t>(), *nsp = new_state.data_ptr<int8_t>();
  at::parallel_for(0, k.batch * k.d_inner, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / k.d_inner, c = bc % k.d_inner;
      const float in_w = sc[0] * ws[per_channel ? c : 0];
      const float bias_f = dequantize_int8(bp[c], sc[1]);
      for (int64_t t = 0; t < k.length; ++t) {
        int32_t acc = 0;
        for (int64_t j = 0; j < k.width; ++j)
          acc += int32_t(wp[c * k.width + j]) * int32_t(conv_input(xp, sp, k, b, c, t - (k.width - 1) + j));
        op[(b * k.length + t) * k.d_inner + c] = conv_silu_quantize(acc, in_w, bias_f, sc[2]);
      }
      for (int64_t i = 0; i < k.width - 1; ++i)
        nsp[bc * (k.width - 1) + i] = conv_input(xp, sp, k, b, c, k.length + i - (k.width - 1));
    }
  });
  return {out, new_state};
}

at::Tensor conv1d_silu_step_cpu(const at::Tensor& x, at::Tensor conv_state, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& weight_scale, const at::Tensor& scales) {
  const auto k = check_conv("conv1d_silu_step", true, x, conv_state, weight, bias, weight_scale, scales);
  at::Tensor out = at::empty_like(x);
  const int8_t *xp = x.data_ptr<int8_t>(), *wp = weight.data_ptr<int8_t>(), *bp = bias.data_ptr<int8_t>();
  const float *ws = weight_scale.data_ptr<float>(), *sc = scales.data_ptr<float>();
  const bool per_channel = weight_scale.numel() > 1;
  int8_t *sp = conv_state.data_ptr<int8_t>(), *op = out.data_ptr<int8_t>();
  at::parallel_for(0, k.batch * k.d_inner, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t c = bc % k.d_inner;
      int8_t* st = sp + bc * (k.width - 1);
      int32_t acc = int32_t(wp[c * k.width + k.width - 1]) * int32_t(xp[bc]);
      for (int64_t j = 0; j < k.width - 1; ++j) acc += int32_t(wp[c * k.width + j]) * int32_t(st[j]);
      op[bc] = conv_silu_quantize(acc, sc[0] * ws[per_channel ? c : 0], dequantize_int8(bp[c], sc[1]), sc[2]);
      for (int64_t j = 0; j + 1 < k.width - 1; ++j) st[j] = st[j + 1];
      st[k.width - 2] = xp[bc];
    }
  });
  return out;
}

at::Tensor rmsnorm_quantize_cpu(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& out_scale) {
  const auto r = check_rows("rmsnorm_quantize", x, "x");
  check_arg("rmsnorm_quantize", weight, "weight", at::kFloat, 1, "(features)", x.device());
  check_size("rmsnorm_quantize", weight, "weight", 0, r.n, "x's last dim");
  check_numel("rmsnorm_quantize", out_scale, "out_scale", {1}, x.device());
  at::Tensor out = at::empty_like(x, x.options().dtype(at::kChar));
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  const float s = out_scale.data_ptr<float>()[0];
  int8_t* op = out.data_ptr<int8_t>();
  at::parallel_for(0, r.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* xr = xp + row * r.n;
      float sum = 0.0f;
      for (int64_t i = 0; i < r.n; ++i) sum += xr[i] * xr[i];
      const float inv = rms_inverse(sum, static_cast<int>(r.n), static_cast<float>(eps));
      for (int64_t i = 0; i < r.n; ++i) op[row * r.n + i] = rmsnorm_element(xr[i], inv, wp[i], s);
    }
  });
  return out;
}

at::Tensor hadamard_quantize_cpu(const at::Tensor& y, const at::Tensor& hadamard_K, const at::Tensor& out_scale) {
  const auto r = check_rows("hadamard_quantize", y, "y");
  const int64_t K = check_hadamard("hadamard_quantize", y, hadamard_K), m = r.n / K;
  check_numel("hadamard_quantize", out_scale, "out_scale", {1}, y.device());
  at::Tensor out = at::empty_like(y, y.options().dtype(at::kChar));
  const float* yp = y.data_ptr<float>();
  const int8_t* H = hadamard_K.data_ptr<int8_t>();
  const float s = out_scale.data_ptr<float>()[0], root_n = sqrtf(static_cast<float>(r.n));
  int8_t* op = out.data_ptr<int8_t>();
  at::parallel_for(0, r.rows, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> X(r.n);
    for (int64_t row = begin; row < end; ++row) {
      std::copy(yp + row * r.n, yp + (row + 1) * r.n, X.begin());
      for (int64_t h = 1; h < m; h *= 2)  // Walsh-Hadamard on each of the K blocks of m
        for (int64_t blk = 0; blk < K; ++blk)
          for (int64_t i = 0; i < m; i += 2 * h)
            for (int64_t j = i; j < i + h; ++j) butterfly(X[blk * m + j], X[blk * m + j + h]);
      for (int64_t row_k = 0; row_k < K; ++row_k)
        for (int64_t j = 0; j < m; ++j) {
          float acc = 0.0f;
          for (int64_t col = 0; col < K; ++col) acc += static_cast<float>(H[row_k * K + col]) * X[col * m + j];
          op[row * r.n + row_k * m + j] = quantize_int8(acc / root_n, s);
        }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(quamba_edge, CPU, m) {
  m.impl("selective_scan", &selective_scan_cpu);
  m.impl("selective_scan_step", &selective_scan_step_cpu);
  m.impl("conv1d_silu", &conv1d_silu_cpu);
  m.impl("conv1d_silu_step", &conv1d_silu_step_cpu);
  m.impl("rmsnorm_quantize", &rmsnorm_quantize_cpu);
  m.impl("hadamard_quantize", &hadamard_quantize_cpu);
}

}  // namespace quamba_edge
