// Shape contracts of the ops (shared by the CPU and CUDA bindings). Layouts are Mamba's "channels last"
// activations, the ones our int8 linear layers produce:
//   selective_scan:      u, delta, z (b, l, d) int8; B, C (b, l, n) int8; A_log (d, n); D, delta_bias (d)
//                        int8; scales (8) float32; ssm_state (b, d, n) float32.
//   selective_scan_step: the same with the time axis dropped: u, delta, z (b, d); B, C (b, n).
//   conv1d_silu:         x (b, l, d) int8; conv_state (b, d, k-1) int8; weight (d, k) int8; bias (d) int8;
//                        weight_scale (1) or (d) float32; scales [in, bias, out] float32.
//   conv1d_silu_step:    x (b, d).
#pragma once

#include "checks.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {

struct ScanDims {
  int64_t batch, length, d_inner, d_state;
};

inline ScanDims check_scan(const char* op, bool step, const at::Tensor& u, const at::Tensor& delta,
                           const at::Tensor& B, const at::Tensor& C, const at::Tensor& z, const at::Tensor& A_log,
                           const at::Tensor& D, const at::Tensor& delta_bias, const at::Tensor& scales,
                           const at::Tensor& ssm_state) {
  const auto dev = u.device();
  const int64_t act_dim = step ? 2 : 3;
  const char* act_layout = step ? "(batch, d_inner)" : "(batch, length, d_inner)";
  const char* bc_layout = step ? "(batch, d_state)" : "(batch, length, d_state)";
  check_arg(op, u, "u", at::kChar, act_dim, act_layout, dev);
  check_arg(op, delta, "delta", at::kChar, act_dim, act_layout, dev);
  check_arg(op, z, "z", at::kChar, act_dim, act_layout, dev);
  check_arg(op, B, "B", at::kChar, act_dim, bc_layout, dev);
  check_arg(op, C, "C", at::kChar, act_dim, bc_layout, dev);
  check_arg(op, A_log, "A_log", at::kChar, 2, "(d_inner, d_state)", dev);
  check_arg(op, D, "D", at::kChar, 1, "(d_inner)", dev);
  check_arg(op, delta_bias, "delta_bias", at::kChar, 1, "(d_inner)", dev);
  check_arg(op, ssm_state, "ssm_state", at::kFloat, 3, "(batch, d_inner, d_state)", dev);
  check_numel(op, scales, "scales [u, delta, B, C, z, A_log, D, delta_bias]", {kNumScanScales}, dev);
  ScanDims s{u.size(0), step ? 1 : u.size(1), u.size(-1), A_log.size(1)};
  for (const auto* t : {&delta, &z}) {
    for (int64_t i = 0; i < act_dim; ++i) check_size(op, *t, "delta/z", i, u.size(i), "u's");
  }
  for (const auto* t : {&B, &C}) {
    for (int64_t i = 0; i + 1 < act_dim; ++i) check_size(op, *t, "B/C", i, u.size(i), "u's");
    check_size(op, *t, "B/C", act_dim - 1, s.d_state, "A_log's d_state");
  }
  check_size(op, A_log, "A_log", 0, s.d_inner, "u's d_inner");
  check_size(op, D, "D", 0, s.d_inner, "u's d_inner");
  check_size(op, delta_bias, "delta_bias", 0, s.d_inner, "u's d_inner");
  check_size(op, ssm_state, "ssm_state", 0, s.batch, "u's batch");
  check_size(op, ssm_state, "ssm_state", 1, s.d_inner, "u's d_inner");
  check_size(op, ssm_state, "ssm_state", 2, s.d_state, "A_log's d_state");
  TORCH_CHECK(s.d_state >= 1 && s.d_state <= kMaxStateSize, "quamba_edge::", op, ": d_state ", s.d_state,
              " is outside the kernels' range 1..", kMaxStateSize);
  return s;
}

struct ConvDims {
  int64_t batch, length, d_inner, width;
};

inline ConvDims check_conv(const char* op, bool step, const at::Tensor& x, const at::Tensor& conv_state,
                           const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& weight_scale,
                           const at::Tensor& scales) {
  const auto dev = x.device();
  check_arg(op, x, "x", at::kChar, step ? 2 : 3, step ? "(batch, d_inner)" : "(batch, length, d_inner)", dev);
  check_arg(op, weight, "weight", at::kChar, 2, "(d_inner, width)", dev);
  check_arg(op, conv_state, "conv_state", at::kChar, 3, "(batch, d_inner, width - 1)", dev);
  check_arg(op, bias, "bias", at::kChar, 1, "(d_inner)", dev);
  ConvDims c{x.size(0), step ? 1 : x.size(1), x.size(-1), weight.size(1)};
  TORCH_CHECK(c.width >= 2 && c.width <= 8, "quamba_edge::", op, ": conv width ", c.width,
              " is outside the kernels' range 2..8 (Mamba uses 4)");
  check_size(op, weight, "weight", 0, c.d_inner, "x's d_inner");
  check_size(op, bias, "bias", 0, c.d_inner, "x's d_inner");
  check_size(op, conv_state, "conv_state", 0, c.batch, "x's batch");
  check_size(op, conv_state, "conv_state", 1, c.d_inner, "x's d_inner");
  check_size(op, conv_state, "conv_state", 2, c.width - 1, "width - 1");
  check_numel(op, weight_scale, "weight_scale", {1, c.d_inner}, dev);
  check_numel(op, scales, "scales [in, bias, out]", {3}, dev);
  return c;
}

struct RowDims {
  int64_t rows, n;
};

inline RowDims check_rows(const char* op, const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() >= 1 && x.is_contiguous(), "quamba_edge::", op, ": ", name,
              " must be a contiguous float32 tensor (..., features), got ", describe(x),
              ". Fix: pass .contiguous().float()");
  const int64_t n = x.size(-1);
  return {n ? x.numel() / n : 0, n};
}

inline int64_t check_hadamard(const char* op, const at::Tensor& y, const at::Tensor& hadamard_K) {
  check_arg(op, hadamard_K, "hadamard_K", at::kChar, 2, "(K, K) of ±1", y.device());
  const int64_t K = hadamard_K.size(0), n = y.size(-1);
  check_size(op, hadamard_K, "hadamard_K", 1, K, "its first dim");
  TORCH_CHECK(K >= 1 && n % K == 0 && is_power_of_two(n / K), "quamba_edge::", op, ": no Hadamard transform for n=",
              n, " with K=", K, ": n must be K * 2^k. Fix: pick K with quamba_edge.quant.hadamard.factor(n), or "
              "quantize this model without the rotation (--no-hadamard)");
  return K;
}

}  // namespace quamba_edge
