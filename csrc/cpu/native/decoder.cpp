// The whole-model decode step (decoder.h). The integer products go through the selected path's kernels
// (isa.h); everything in float is this file's code, compiled once for the baseline ISA, so every path
// gives the same int8 intermediates, states and residual stream bit for bit. Compiled without FMA
// contraction (-ffp-contract=off), so a * b + c rounds twice, as the PyTorch reference's separate ops do.
#include "decoder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace native {

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("native decoder: " + what);
}

// kernel_math.h's rmsnorm_element and conv_silu_quantize on quantize_s8 (decoder.h): the same int8 for every
// input, the same float expressions.
inline int8_t conv_silu_s8(int32_t acc, float in_times_weight_scale, float bias, float out_scale) {
  const float y = static_cast<float>(acc) * in_times_weight_scale + bias;
  return quantize_s8(silu(y), out_scale);
}

// T tokens of one sequence through the scan (the decode step is T = 1), channel by channel so that a channel's
// state stays in registers along time. Token t reads u[t ldu + c], delta[t ldd + c], dbc[t ldbc + ...],
// z[t ldz + c] and writes y[t ldy + c]; state (d, n) fp32 in place; BC: scratch of 2 T n floats. Every
// operation is kernel_math.h's, in the reference's order, and <h, C> is summed in a fixed order (eight
// elementwise partial sums, then a fixed tree), so the result is the same whatever vector width the compiler
// uses: scan_avx2 (8 lanes) gives the baseline build's bits. kN > 0 fixes d_state.
template <int kN>
__attribute__((always_inline)) inline void scan_body(int64_t d, int64_t n_rt, int64_t T, const int8_t* u,
                                                     int64_t ldu, const int8_t* delta, int64_t ldd, const int8_t* dbc,
                                                     int64_t ldbc, int64_t rank, const int8_t* z, int64_t ldz,
                                                     const float* A, const int8_t* D, const int8_t* delta_bias,
                                                     const float* scales, float* state, float* y, int64_t ldy,
                                                     float* BC) {
  const int64_t n = kN > 0 ? kN : n_rt, n8 = n / 8 * 8;
  float* Bf = BC;
  float* Cf = BC + T * n;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < n; ++k) {
      Bf[t * n + k] = dequantize_int8(dbc[t * ldbc + rank + k], scales[kScaleB]);
      Cf[t * n + k] = dequantize_int8(dbc[t * ldbc + rank + n + k], scales[kScaleC]);
    }
  for (int64_t c = 0; c < d; ++c) {
    alignas(64) float h[kN > 0 ? kN : kMaxDState];
    float* st = state + c * n;
    std::copy(st, st + n, h);
    const float* __restrict Ac = A + c * n;
    for (int64_t t = 0; t < T; ++t) {
      const float dt = scan_delta(delta[t * ldd + c], delta_bias[c], scales);
      const float ut = dequantize_int8(u[t * ldu + c], scales[kScaleU]);
      const float dt_u = dt * ut;
      const float* __restrict Bt = Bf + t * n;
      const float* __restrict Ct = Cf + t * n;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) h[k] = scan_state_update(h[k], dt, Ac[k], dt_u, Bt[k]);
      alignas(32) float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k0 = 0; k0 < n8; k0 += 8)
        for (int l = 0; l < 8; ++l) part[l] += h[k0 + l] * Ct[k0 + l];
      for (int64_t k = n8; k < n; ++k) part[k - n8] += h[k] * Ct[k];
      const float h_dot_C = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
      y[t * ldy + c] = scan_output(h_dot_C, ut, D[c], z[t * ldz + c], scales);
    }
    std::copy(h, h + n, st);
  }
}

#define QE_SCAN_ARGS                                                                                              \
  int64_t d, int64_t n_rt, int64_t T, const int8_t *u, int64_t ldu, const int8_t *delta, int64_t ldd,             \
      const int8_t *dbc, int64_t ldbc, int64_t rank, const int8_t *z, int64_t ldz, const float *A, const int8_t *D, \
      const int8_t *delta_bias, const float *scales, float *state, float *y, int64_t ldy, float *BC
#define QE_SCAN_PASS d, n_rt, T, u, ldu, delta, ldd, dbc, ldbc, rank, z, ldz, A, D, delta_bias, scales, state, y, ldy, BC

template <int kN>
void scan_base(QE_SCAN_ARGS) {
  scan_body<kN>(QE_SCAN_PASS);
}

using ScanFn = void (*)(QE_SCAN_ARGS);

#if defined(__x86_64__) || defined(_M_X64)
// The same code with 8-lane AVX vectors (no FMA: -ffp-contract=off and no "fma" target), for the x86 paths
// that have AVX2; its float results are the baseline's bit for bit (elementwise operations, fixed-order sums).
template <int kN>
__attribute__((target("avx2"))) void scan_avx2(QE_SCAN_ARGS) {
  scan_body<kN>(QE_SCAN_PASS);
}
#endif

ScanFn scan_for(Isa isa, int64_t n) {
#if defined(__x86_64__) || defined(_M_X64)
  if (has_avx2(isa))
    return n == 16 ? scan_avx2<16> : scan_avx2<0>;
#endif
  (void)isa;
  return n == 16 ? scan_base<16> : scan_base<0>;
}

void copy_trace(int8_t* dst, const int8_t* src, int64_t batch, int64_t width, int64_t src_stride) {
  if (dst == nullptr) return;
  for (int64_t b = 0; b < batch; ++b) std::copy(src + b * src_stride, src + b * src_stride + width, dst + b * width);
}

// Prefill rows (b T + t, stride src_stride) into a (batch, length, width) trace at time t0.
void copy_trace_rows(int8_t* dst, const int8_t* src, int64_t batch, int64_t T, int64_t t0, int64_t length,
                     int64_t width, int64_t src_stride) {
  if (dst == nullptr) return;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int8_t* row = src + (b * T + t) * src_stride;
      std::copy(row, row + width, dst + (b * length + t0 + t) * width);
    }
}

}  // namespace

// RMSNorm of one row: x * (1 / sqrt(mean(x^2) + eps)) * w, as models/mamba.py's RMSNorm.
float rms_inverse_of(const float* x, int64_t d, float eps) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < d; ++i) sum += x[i] * x[i];
  return rms_inverse(sum, static_cast<int>(d), eps);
}

namespace {

// y Mᵀ with M = (H_K ⊗ H_m) / sqrt(n), then int8: csrc/cpu/ops_cpu.cpp's hadamard_quantize for one row. The dense
// H_K part runs over blocks of columns j (vectorizable), each output still summed over col = 0..K-1 in order, so the
// baseline and AVX2 copies give the same bits.
__attribute__((always_inline)) inline void hadamard_body(const float* y, int64_t n, const int8_t* H, int64_t K,
                                                         float scale, float* X, int8_t* out) {
  constexpr int64_t kBlock = 256;
  const int64_t m = n / K;
  const float root_n = sqrtf(static_cast<float>(n));
  std::copy(y, y + n, X);
  for (int64_t h = 1; h < m; h *= 2)
    for (int64_t blk = 0; blk < K; ++blk)
      for (int64_t i = 0; i < m; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) butterfly(X[blk * m + j], X[blk * m + j + h]);
  alignas(32) float acc[kBlock];
  for (int64_t row = 0; row < K; ++row)
    for (int64_t j0 = 0; j0 < m; j0 += kBlock) {
      const int64_t bs = std::min(kBlock, m - j0);
      for (int64_t j = 0; j < bs; ++j) acc[j] = 0.0f;
      for (int64_t col = 0; col < K; ++col) {
        const float hc = static_cast<float>(H[row * K + col]);
        const float* xc = X + col * m + j0;
        for (int64_t j = 0; j < bs; ++j) acc[j] += hc * xc[j];
      }
      int8_t* o = out + row * m + j0;
      for (int64_t j = 0; j < bs; ++j) o[j] = quantize_s8(acc[j] / root_n, scale);
    }
}

void hadamard_base(const float* y, int64_t n, const int8_t* H, int64_t K, float scale, float* X, int8_t* out) {
  hadamard_body(y, n, H, K, scale, X, out);
}

#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx2"))) void hadamard_avx2(const float* y, int64_t n, const int8_t* H, int64_t K, float scale,
                                                   float* X, int8_t* out) {
  hadamard_body(y, n, H, K, scale, X, out);
}
#endif

}  // namespace

HadamardFn hadamard_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (has_avx2(isa)) return hadamard_avx2;
#endif
  (void)isa;
  return hadamard_base;
}

void rotate_quantize_row(Isa isa, const float* y, int64_t n, const int8_t* H, int64_t K, float scale, float* X,
                         int8_t* out) {
  if (K > 0) {
    hadamard_for(isa)(y, n, H, K, scale, X, out);
  } else {
    for (int64_t c = 0; c < n; ++c) out[c] = quantize_s8(y[c], scale);
  }
}

void rmsnorm_quantize_row(const float* h, int64_t d, float eps, const float* weight, float scale, int8_t* out) {
  const float inv = rms_inverse_of(h, d, eps);
  for (int64_t c = 0; c < d; ++c) out[c] = quantize_s8(h[c] * inv * weight[c], scale);
}

void embed_rows(const float* embedding, int64_t vocab, int64_t d_model, const int64_t* ids, int64_t batch, float* h) {
  for (int64_t b = 0; b < batch; ++b) {
    if (ids[b] < 0 || ids[b] >= vocab)
      throw std::invalid_argument("native decoder: token id " + std::to_string(ids[b]) + " outside the vocabulary");
    std::copy(embedding + ids[b] * d_model, embedding + (ids[b] + 1) * d_model, h + b * d_model);
  }
}

int64_t copy_hadamard(const int8_t* H, int64_t K, int64_t d, std::vector<int8_t>& out) {
  if (H == nullptr) return 0;
  require(K > 0 && d % K == 0 && is_power_of_two(d / K), "d_inner is not K * 2^k for the given H_K");
  out.assign(H, H + K * K);
  return K;
}

PackedLinear pack_linear(const LinearSpec& s, int64_t chunk) {
  require(s.weight != nullptr && s.scale != nullptr && s.n > 0 && s.k > 0, "a linear layer is missing");
  PackedLinear l;
  l.n = s.n;
  l.k = s.k;
  l.n_pad = pad_n(s.n);
  l.k_pad = pad_k(s.k);
  l.w = Buffer<int8_t>(l.n_pad * l.k_pad);
  pack_s8(s.weight, s.n, s.k, chunk, l.w.data());
  l.row_sum = Buffer<int32_t>(l.n_pad);
  for (int64_t j = 0; j < l.n; ++j) {
    int32_t sum = 0;
    for (int64_t i = 0; i < l.k; ++i) sum += s.weight[j * l.k + i];
    l.row_sum[j] = sum;
  }
  l.scale.assign(s.scale, s.scale + s.n);
  if (s.bias != nullptr) l.bias.assign(s.bias, s.bias + s.n);
  l.out_scale = s.out_scale;
  return l;
}

LmHead::LmHead(const DotKernels& kernels, HeadKind kind, const float* embedding, int64_t vocab, int64_t d_model,
               const float* norm_weight, float norm_eps, const LinearSpec& int8_head, float in_scale)
    : kernels_(kernels), kind_(kind), embedding_(embedding), vocab_(vocab), d_model_(d_model), norm_eps_(norm_eps),
      in_scale_(in_scale) {
  require(embedding != nullptr && norm_weight != nullptr, "embedding and norm_f weight are required");
  norm_weight_.assign(norm_weight, norm_weight + d_model);
  if (kind == HeadKind::kF16 || kind == HeadKind::kBF16) {
    // Converted and packed a block of rows at a time (pack_16 is block-local): no second full-size copy.
    const bool half = kind == HeadKind::kF16;
    const int64_t rows = 64 * kRowBlock, k_pad = pad8(d_model);
    head16_ = Buffer<uint16_t>(pad_n(vocab) * k_pad);
    std::vector<uint16_t> converted(rows * d_model);
    for (int64_t r0 = 0; r0 < vocab; r0 += rows) {
      const int64_t m = std::min(rows, vocab - r0);
      const float* src = embedding + r0 * d_model;
      for (int64_t i = 0; i < m * d_model; ++i) converted[i] = half ? float_to_half(src[i]) : float_to_bf16(src[i]);
      pack_16(converted.data(), m, d_model, head16_.data() + r0 * k_pad);
    }
  } else if (kind == HeadKind::kInt8) {
    require(int8_head.n == vocab && int8_head.k == d_model && int8_head.out_scale == 0,
            "int8 head is not (vocab, d_model) fp32-out");
    head8_ = pack_linear(int8_head, kernels.chunk);
    acc_ = Buffer<int32_t>(head8_.n_pad);
  }
  normed_ = Buffer<float>(pad8(d_model));  // zero-padded for the 16-bit head
  out_ = Buffer<float>(pad_n(vocab));
  xq_ = Buffer<int8_t>(pad_k(d_model));
  scratch_ = Buffer<uint8_t>(2 * pad_k(d_model));
}

int64_t LmHead::packed_bytes() const {
  return head16_.size() * 2 + (head8_.n ? head8_.bytes() : 0);
}

void LmHead::run(const float* h, int64_t batch, float* logits) {
  const int64_t dm = d_model_, dm8 = pad8(dm), vocab_pad = pad_n(vocab_);
  float* x = normed_.data();
  for (int64_t b = 0; b < batch; ++b) {
    const float* hb = h + b * dm;
    const float inv = rms_inverse_of(hb, dm, norm_eps_);
    for (int64_t c = 0; c < dm; ++c) x[c] = hb[c] * inv * norm_weight_[c];
    float* out = logits + b * vocab_;
    // the packed heads write vocab_pad outputs: straight into the logits when that is the vocabulary
    float* padded_out = vocab_pad == vocab_ ? out : out_.data();
    switch (kind_) {
      case HeadKind::kF32:
        kernels_.gemv_f32(embedding_, vocab_, dm, x, out);
        break;
      case HeadKind::kF16:
        kernels_.gemv_f16(head16_.data(), vocab_pad, dm8, x, padded_out);
        break;
      case HeadKind::kBF16:
        kernels_.gemv_bf16(head16_.data(), vocab_pad, dm8, x, padded_out);
        break;
      case HeadKind::kInt8: {
        int8_t* xq = xq_.data();
        for (int64_t c = 0; c < dm; ++c) xq[c] = quantize_s8(x[c], in_scale_);
        kernels_.gemv_s8(head8_.w.data(), head8_.row_sum.data(), head8_.n_pad, head8_.k_pad, xq, scratch_.data(),
                         acc_.data());
        for (int64_t j = 0; j < vocab_; ++j) out[j] = static_cast<float>(acc_[j]) * head8_.scale[j];
        break;
      }
    }
    if ((kind_ == HeadKind::kF16 || kind_ == HeadKind::kBF16) && padded_out != out)
      std::copy(padded_out, padded_out + vocab_, out);
  }
}

Decoder::Decoder(const ModelSpec& spec, Isa isa)
    : kernels_(kernels(isa)),
      d_model_(spec.d_model),
      d_inner_(spec.d_inner),
      d_state_(spec.d_state),
      d_conv_(spec.d_conv),
      rank_(spec.rank),
      vocab_(spec.vocab),
      embedding_(spec.embedding) {
  require(d_model_ > 0 && d_inner_ > 0 && d_state_ > 0 && d_conv_ >= 2 && rank_ > 0 && vocab_ > 0,
          "every dimension must be positive and d_conv >= 2");
  require(d_state_ <= kMaxDState, "d_state above kMaxDState");
  head_ = LmHead(kernels_, spec.head, spec.embedding, vocab_, d_model_, spec.norm_f_weight, spec.norm_f_eps,
                 spec.int8_head, spec.head_in_scale);
  for (const LayerSpec& s : spec.layers) add_layer(s);
  scan_bc_ = Buffer<float>(2 * kPrefillChunk * d_state_);
}

void Decoder::add_layer(const LayerSpec& s) {
  const int64_t d = d_inner_, n = d_state_;
  Layer L;
  require(s.norm_weight != nullptr, "layer norm weight missing");
  L.norm_weight.assign(s.norm_weight, s.norm_weight + d_model_);
  L.norm_eps = s.norm_eps;
  L.norm_scale = s.norm_scale;
  require(s.in_proj.n == 2 * d && s.in_proj.k == d_model_ && s.in_proj.out_scale > 0, "in_proj is not (2d, d_model) int8-out");
  require(s.x_proj.n == rank_ + 2 * n && s.x_proj.k == d && s.x_proj.out_scale > 0, "x_proj is not (r + 2n, d) int8-out");
  require(s.dt_proj.n == d && s.dt_proj.k == rank_ && s.dt_proj.out_scale > 0, "dt_proj is not (d, r) int8-out");
  require(s.out_proj.n == d_model_ && s.out_proj.k == d && s.out_proj.out_scale == 0, "out_proj is not (d_model, d) fp32-out");
  L.in_proj = pack_linear(s.in_proj, kernels_.chunk);
  L.x_proj = pack_linear(s.x_proj, kernels_.chunk);
  L.dt_proj = pack_linear(s.dt_proj, kernels_.chunk);
  L.out_proj = pack_linear(s.out_proj, kernels_.chunk);
  require(s.conv_weight && s.conv_scale && s.conv_bias && s.A_log && s.D && s.delta_bias, "conv or scan tensors missing");
  L.conv_weight.assign(s.conv_weight, s.conv_weight + d * d_conv_);
  L.conv_weight_t.resize(d_conv_ * d);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < d_conv_; ++j) L.conv_weight_t[j * d + c] = L.conv_weight[c * d_conv_ + j];
  L.conv_scale.assign(s.conv_scale, s.conv_scale + d);
  L.conv_bias.assign(s.conv_bias, s.conv_bias + d);
  L.u_scale = s.u_scale;
  std::copy(s.scan_scales, s.scan_scales + kNumScanScales, L.scan_scales);
  L.A = Buffer<float>(d * n);
  for (int64_t i = 0; i < d * n; ++i) L.A[i] = scan_A(s.A_log[i], L.scan_scales);
  L.D.assign(s.D, s.D + d);
  L.delta_bias.assign(s.delta_bias, s.delta_bias + d);
  L.K = copy_hadamard(s.hadamard_K, s.K, d, L.hadamard_K);
  L.y_scale = s.y_scale;
  layers_.push_back(std::move(L));
  batch_ = prefill_batch_ = 0;  // the scratch is sized from the layers: made again at the next call
}

int64_t Decoder::packed_bytes() const {
  int64_t total = head_.packed_bytes();
  for (const Layer& L : layers_)
    total += L.in_proj.bytes() + L.x_proj.bytes() + L.dt_proj.bytes() + L.out_proj.bytes() + L.A.size() * 4 +
             static_cast<int64_t>(L.conv_weight.size()) + 8 * d_inner_;
  return total;
}

void Decoder::ensure_batch(int64_t batch) {
  if (batch <= batch_) return;
  require(!layers_.empty(), "no layers (add_layer first)");
  const int64_t d = d_inner_;
  const Layer& L = layers_.front();
  xn_ = Buffer<int8_t>(batch * L.in_proj.k_pad);
  u_ = Buffer<int8_t>(batch * L.x_proj.k_pad);
  dt_ = Buffer<int8_t>(batch * L.dt_proj.k_pad);
  yq_ = Buffer<int8_t>(batch * L.out_proj.k_pad);
  xz_ = Buffer<int8_t>(batch * 2 * d);
  dbc_ = Buffer<int8_t>(batch * L.x_proj.n);
  delta_ = Buffer<int8_t>(batch * d);
  const int64_t widest = std::max({L.in_proj.n_pad, L.out_proj.n_pad, L.x_proj.n_pad, L.dt_proj.n_pad});
  acc_ = Buffer<int32_t>(widest);
  y_ = Buffer<float>(batch * d);
  rot_ = Buffer<float>(d);
  h_ = Buffer<float>(batch * d_model_);
  const int64_t widest_k = std::max({L.in_proj.k_pad, L.x_proj.k_pad, L.dt_proj.k_pad, L.out_proj.k_pad,
                                     pad_k(d_model_)});
  gemv_scratch_ = Buffer<uint8_t>(2 * widest_k);
  batch_ = batch;
}

void Decoder::ensure_prefill(int64_t batch) {
  if (batch <= prefill_batch_) return;
  const int64_t d = d_inner_, rows = batch * kPrefillChunk;
  const Layer& L = layers_.front();
  p_h_ = Buffer<float>(rows * d_model_);
  p_y_ = Buffer<float>(rows * d);
  p_xn_ = Buffer<int8_t>(rows * L.in_proj.k_pad);
  p_xz_ = Buffer<int8_t>(rows * 2 * d);
  p_u_ = Buffer<int8_t>(rows * L.x_proj.k_pad);
  p_dbc_ = Buffer<int8_t>(rows * L.x_proj.n);
  p_dt_ = Buffer<int8_t>(rows * L.dt_proj.k_pad);
  p_delta_ = Buffer<int8_t>(rows * d);
  p_yq_ = Buffer<int8_t>(rows * L.out_proj.k_pad);
  p_xpad_ = Buffer<int8_t>((d_conv_ - 1 + kPrefillChunk) * d);
  p_conv_acc_ = Buffer<int32_t>(d);
  p_acc_ = Buffer<int32_t>(kGemmRows * std::max({L.in_proj.n_pad, L.out_proj.n_pad, L.x_proj.n_pad, L.dt_proj.n_pad}));
  gemm_scratch_ = Buffer<uint8_t>(
      gemm_scratch_bytes(std::max({L.in_proj.k_pad, L.x_proj.k_pad, L.dt_proj.k_pad, L.out_proj.k_pad})));
  prefill_batch_ = batch;
}

void Decoder::gemv(const Linear& l, const int8_t* x, int32_t* acc) {
  kernels_.gemv_s8(l.w.data(), l.row_sum.data(), l.n_pad, l.k_pad, x, gemv_scratch_.data(), acc);
}

void Decoder::layer(int64_t i, float* h, int64_t batch, int8_t* conv_state, float* ssm_state, const Trace* trace) {
  require(i >= 0 && i < n_layer(), "layer index out of range");
  ensure_batch(batch);
  Layer& L = layers_[i];
  const int64_t d = d_inner_, n = d_state_, k = d_conv_, dm = d_model_;
  const int64_t nx = L.x_proj.n;
  int32_t* acc = acc_.data();
  for (int64_t b = 0; b < batch; ++b) {
    float* hb = h + b * dm;
    // RMSNorm + quantize -> xn
    int8_t* xn = xn_.data() + b * L.in_proj.k_pad;
    rmsnorm_quantize_row(hb, dm, L.norm_eps, L.norm_weight.data(), L.norm_scale, xn);
    // in_proj -> xz (x and z share one scale)
    int8_t* xz = xz_.data() + b * 2 * d;
    gemv(L.in_proj, xn, acc);
    const Linear& ip = L.in_proj;
    if (ip.bias.empty()) {
      for (int64_t j = 0; j < ip.n; ++j) xz[j] = quantize_s8(static_cast<float>(acc[j]) * ip.scale[j], ip.out_scale);
    } else {
      for (int64_t j = 0; j < ip.n; ++j)
        xz[j] = quantize_s8(static_cast<float>(acc[j]) * ip.scale[j] + ip.bias[j], ip.out_scale);
    }
    // causal conv step + SiLU + requantize -> u; the state (d, k-1) shifts in place
    int8_t* u = u_.data() + b * L.x_proj.k_pad;
    int8_t* cs = conv_state + b * d * (k - 1);
    for (int64_t c = 0; c < d; ++c) {
      int8_t* st = cs + c * (k - 1);
      const int8_t* w = L.conv_weight.data() + c * k;
      int32_t a = 0;
      for (int64_t j = 0; j < k - 1; ++j) a += int32_t(w[j]) * int32_t(st[j]);
      a += int32_t(w[k - 1]) * int32_t(xz[c]);
      u[c] = conv_silu_s8(a, L.conv_scale[c], L.conv_bias[c], L.u_scale);
      for (int64_t j = 0; j + 1 < k - 1; ++j) st[j] = st[j + 1];
      st[k - 2] = xz[c];
    }
    // x_proj -> dt, B, C (one scale)
    int8_t* dbc = dbc_.data() + b * nx;
    gemv(L.x_proj, u, acc);
    for (int64_t j = 0; j < nx; ++j)
      dbc[j] = quantize_s8(static_cast<float>(acc[j]) * L.x_proj.scale[j], L.x_proj.out_scale);
    // dt_proj (no bias: it moved into the scan) -> delta
    int8_t* dt = dt_.data() + b * L.dt_proj.k_pad;
    std::copy(dbc, dbc + rank_, dt);
    int8_t* delta = delta_.data() + b * d;
    gemv(L.dt_proj, dt, acc);
    for (int64_t j = 0; j < d; ++j)
      delta[j] = quantize_s8(static_cast<float>(acc[j]) * L.dt_proj.scale[j], L.dt_proj.out_scale);
    // the scan step of every channel, gated by SiLU(z); the state (d, n) in place
    float* y = y_.data() + b * d;
    const ScanFn scan_fn = scan_for(kernels_.isa, n);
    scan_fn(d, n, 1, u, 0, delta, 0, dbc, 0, rank_, xz + d, 0, L.A.data(), L.D.data(), L.delta_bias.data(),
            L.scan_scales, ssm_state + b * d * n, y, 0, scan_bc_.data());
    // Hadamard + quantize -> yq
    int8_t* yq = yq_.data() + b * L.out_proj.k_pad;
    rotate_quantize_row(kernels_.isa, y, d, L.hadamard_K.data(), L.K, L.y_scale, rot_.data(), yq);
    // out_proj (fp32 out) + residual
    gemv(L.out_proj, yq, acc);
    add_residual(L.out_proj, acc, hb);
  }
  if (trace != nullptr) {
    copy_trace(trace->xn, xn_.data(), batch, dm, L.in_proj.k_pad);
    copy_trace(trace->xz, xz_.data(), batch, 2 * d, 2 * d);
    copy_trace(trace->u, u_.data(), batch, d, L.x_proj.k_pad);
    copy_trace(trace->dbc, dbc_.data(), batch, nx, nx);
    copy_trace(trace->delta, delta_.data(), batch, d, d);
    copy_trace(trace->y, yq_.data(), batch, d, L.out_proj.k_pad);
  }
}

void Decoder::head(const float* h, int64_t batch, float* logits) { head_.run(h, batch, logits); }

void Decoder::step(const int64_t* ids, int64_t batch, int8_t* conv_state, float* ssm_state, float* logits,
                   const Trace* traces) {
  ensure_batch(batch);
  const int64_t dm = d_model_;
  float* h = h_.data();
  embed_rows(embedding_, vocab_, dm, ids, batch, h);
  const int64_t conv_stride = batch * d_inner_ * (d_conv_ - 1), ssm_stride = batch * d_inner_ * d_state_;
  for (int64_t i = 0; i < n_layer(); ++i)
    layer(i, h, batch, conv_state + i * conv_stride, ssm_state + i * ssm_stride,
          traces != nullptr ? traces + i : nullptr);
  head(h, batch, logits);
}

void Decoder::prefill_layer(int64_t i, int64_t batch, int64_t T, int64_t t0, int64_t length, int8_t* conv_state,
                            float* ssm_state, const Trace* trace) {
  Layer& L = layers_[i];
  const int64_t d = d_inner_, n = d_state_, k = d_conv_, dm = d_model_, nx = L.x_proj.n, rows = batch * T;
  const int64_t ld_xn = L.in_proj.k_pad, ld_u = L.x_proj.k_pad, ld_dt = L.dt_proj.k_pad, ld_yq = L.out_proj.k_pad;
  float *h = p_h_.data(), *y = p_y_.data();
  int8_t *xn = p_xn_.data(), *xz = p_xz_.data(), *u = p_u_.data(), *dbc = p_dbc_.data(), *dt = p_dt_.data();
  int8_t *delta = p_delta_.data(), *yq = p_yq_.data();
  // RMSNorm + quantize -> xn, row by row
  for (int64_t r = 0; r < rows; ++r)
    rmsnorm_quantize_row(h + r * dm, dm, L.norm_eps, L.norm_weight.data(), L.norm_scale, xn + r * ld_xn);
  // in_proj -> xz
  const Linear& ip = L.in_proj;
  gemm(ip, xn, ld_xn, rows, [&](int64_t r, const int32_t* acc) {
    int8_t* out = xz + r * 2 * d;
    if (ip.bias.empty()) {
      for (int64_t j = 0; j < ip.n; ++j) out[j] = quantize_s8(static_cast<float>(acc[j]) * ip.scale[j], ip.out_scale);
    } else {
      for (int64_t j = 0; j < ip.n; ++j)
        out[j] = quantize_s8(static_cast<float>(acc[j]) * ip.scale[j] + ip.bias[j], ip.out_scale);
    }
  });
  // causal conv along time over x (the first d of each xz row) + SiLU + requantize -> u; the state (d, k-1) advances
  for (int64_t b = 0; b < batch; ++b)
    conv_along_time(conv_state + b * d * (k - 1), xz + b * T * 2 * d, 2 * d, T, d, k, L.conv_weight_t.data(),
                    p_xpad_.data(), p_conv_acc_.data(), [&](int64_t t, const int32_t* acc) {
                      int8_t* ut = u + (b * T + t) * ld_u;
                      for (int64_t c = 0; c < d; ++c)
                        ut[c] = conv_silu_s8(acc[c], L.conv_scale[c], L.conv_bias[c], L.u_scale);
                    });
  // x_proj -> dt, B, C; dt_proj -> delta
  gemm(L.x_proj, u, ld_u, rows, [&](int64_t r, const int32_t* acc) {
    int8_t* out = dbc + r * nx;
    for (int64_t j = 0; j < nx; ++j)
      out[j] = quantize_s8(static_cast<float>(acc[j]) * L.x_proj.scale[j], L.x_proj.out_scale);
    std::copy(out, out + rank_, dt + r * ld_dt);
  });
  gemm(L.dt_proj, dt, ld_dt, rows, [&](int64_t r, const int32_t* acc) {
    for (int64_t j = 0; j < d; ++j)
      delta[r * d + j] = quantize_s8(static_cast<float>(acc[j]) * L.dt_proj.scale[j], L.dt_proj.out_scale);
  });
  // the scan along time, gated by SiLU(z); each sequence's state (d, n) in place
  const ScanFn scan_fn = scan_for(kernels_.isa, n);
  for (int64_t b = 0; b < batch; ++b)
    scan_fn(d, n, T, u + b * T * ld_u, ld_u, delta + b * T * d, d, dbc + b * T * nx, nx, rank_, xz + b * T * 2 * d + d,
            2 * d, L.A.data(), L.D.data(), L.delta_bias.data(), L.scan_scales, ssm_state + b * d * n, y + b * T * d, d,
            scan_bc_.data());
  // Hadamard + quantize -> yq
  for (int64_t r = 0; r < rows; ++r)
    rotate_quantize_row(kernels_.isa, y + r * d, d, L.hadamard_K.data(), L.K, L.y_scale, rot_.data(), yq + r * ld_yq);
  // out_proj (fp32 out) + residual
  gemm(L.out_proj, yq, ld_yq, rows, [&](int64_t r, const int32_t* acc) { add_residual(L.out_proj, acc, h + r * dm); });
  if (trace != nullptr) {
    copy_trace_rows(trace->xn, xn, batch, T, t0, length, dm, ld_xn);
    copy_trace_rows(trace->xz, xz, batch, T, t0, length, 2 * d, 2 * d);
    copy_trace_rows(trace->u, u, batch, T, t0, length, d, ld_u);
    copy_trace_rows(trace->dbc, dbc, batch, T, t0, length, nx, nx);
    copy_trace_rows(trace->delta, delta, batch, T, t0, length, d, d);
    copy_trace_rows(trace->y, yq, batch, T, t0, length, d, ld_yq);
  }
}

void Decoder::prefill(const int64_t* ids, int64_t batch, int64_t length, int8_t* conv_state, float* ssm_state,
                      float* logits, const Trace* traces) {
  require(batch > 0 && length > 0, "a prefill needs at least one sequence of at least one token");
  ensure_batch(batch);
  ensure_prefill(batch);
  const int64_t conv_stride = batch * d_inner_ * (d_conv_ - 1), ssm_stride = batch * d_inner_ * d_state_;
  prefill_chunks(embedding_, vocab_, d_model_, ids, batch, length, p_h_.data(), h_.data(), [&](int64_t T, int64_t t0) {
    for (int64_t i = 0; i < n_layer(); ++i)
      prefill_layer(i, batch, T, t0, length, conv_state + i * conv_stride, ssm_state + i * ssm_stride,
                    traces != nullptr ? traces + i : nullptr);
  });
  head(h_.data(), batch, logits);  // only the last position goes through the head
}

}  // namespace native
}  // namespace quamba_edge
