// The native CPU decode step of a Quamba W8A8 Mamba-1 LM: one call runs one token of every sequence in the
// batch through the whole model (embedding row, every layer, final norm and head), with weights packed once
// at construction, states updated in place and no allocation per token. Plain C++ (no torch): the torch
// binding (bindings.cpp) and the standalone test (test_native.cpp) both drive it.
//
// One layer, per sequence (q: int8, s: per-tensor scale; shapes for one sequence; the formulas are
// kernel_math.h's and quamba_edge/quant/quamba.py's, operation for operation):
//   xn   (d_model)   = quantize(RMSNorm(h), s_norm)                        fused RMSNorm + quantize
//   xz   (2 d)       = quantize(int32(W_in xn) * (s_norm s_Win) + b, s_xz)  int8 GEMV + requantize epilogue
//   u    (d)         = quantize(SiLU(conv(state, x) * s_xz s_wc + bias), s_u); state shifted in place
//   dbc  (r + 2n)    = quantize(int32(W_x u) * (s_u s_Wx), s_dbc)
//   delta(d)         = quantize(int32(W_dt dbc[:r]) * (s_dbc s_Wdt), s_delta)
//   y    (d, fp32)   = scan step of every channel (state (d, n) fp32 in place), gated by SiLU(z)
//   yq   (d)         = quantize(y Mᵀ, s_y)                                   fused Hadamard + quantize
//   h   += int32(W_out yq) * (s_y s_Wout) + b                                fp32 residual
// then logits = head(RMSNorm_f(h)): fp32, fp16 or bf16 weights (fp32 accumulate) or int8 (per-channel).
//
// Prefill runs the same formulas layer-major over a whole (batch, length) prompt, kPrefillChunk tokens of every
// sequence at a time: each projection is one int8 GEMM over all those rows (gemm_s8: each packed weight block
// read once and reused from L1 against a few rows in registers), the conv and the scan run along time per
// channel, and only the last position goes through the head. The integers and every float operation are the
// step's, in the same order, so a prefill leaves the same states (bit for bit) as stepping token by token.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "isa.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace native {

// A 64-byte aligned, zero-initialised array (the packed weights, the per-token scratch).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n) : n_(n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes ? bytes : 64);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, bytes ? bytes : 64);
    p_.reset(static_cast<T*>(p));
  }
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return p_.get()[i]; }
  const T& operator[](int64_t i) const { return p_.get()[i]; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
  int64_t n_ = 0;
};

// Float helpers the decoders share (decoder.cpp). quantize_s8 is kernel_math.h's quantize_int8 with the clamp
// written as compares (maxss / minss; on the baseline ISA fminf / fmaxf are libm calls, which also kept the epilogue
// loops from vectorizing): the same int8 for every input, a NaN included (-128 in both).
inline int8_t quantize_s8(float x, float scale) {
  float q = rintf(x / scale);
  q = q > kQMin ? q : kQMin;
  q = q < kQMax ? q : kQMax;
  return static_cast<int8_t>(q);
}
// 1 / sqrt(mean(x^2) + eps) of one row of d floats (models/mamba.py's RMSNorm).
float rms_inverse_of(const float* x, int64_t d, float eps);
// One row y (n) -> int8 (y Mᵀ) / scale with M = (H_K ⊗ H_m) / sqrt(n) (H: K x K ±1, n = K m, m a power of two;
// K = 1 for none); X: n floats of scratch. hadamard_for(isa): the copy compiled for that path (the same bits).
using HadamardFn = void (*)(const float* y, int64_t n, const int8_t* H, int64_t K, float scale, float* X,
                            int8_t* out);
HadamardFn hadamard_for(Isa isa);
// out_proj's int8 input from one row y (n): rotated by hadamard_for(isa) when K > 0 (H, K from copy_hadamard; X: n
// floats of scratch), else y itself quantized at `scale`. Both decoders, step and prefill.
void rotate_quantize_row(Isa isa, const float* y, int64_t n, const int8_t* H, int64_t K, float scale, float* X,
                         int8_t* out);
// One row h (d) through RMSNorm (weight, eps: models/mamba.py's RMSNorm) and quantized at `scale` into out (d).
void rmsnorm_quantize_row(const float* h, int64_t d, float eps, const float* weight, float scale, int8_t* out);

// Views of the quantized model's tensors (row-major, host memory) handed to the constructor.
struct LinearSpec {
  const int8_t* weight = nullptr;  // (n, k) int8
  int64_t n = 0, k = 0;
  const float* scale = nullptr;  // (n): in_scale * weight_scale[j], the fp32 product the reference forms
  const float* bias = nullptr;   // (n) fp32, or nullptr
  float out_scale = 0.0f;        // > 0: the output is int8 with this scale; 0: the output stays fp32
};

struct LayerSpec {
  const float* norm_weight = nullptr;  // (d_model)
  float norm_eps = 1e-5f, norm_scale = 1.0f;
  LinearSpec in_proj, x_proj, dt_proj, out_proj;  // (2d, d_model) int8 out; (r + 2n, d) int8; (d, r) int8; (d_model, d) fp32
  const int8_t* conv_weight = nullptr;  // (d, d_conv)
  const float* conv_scale = nullptr;    // (d): s_xz * conv weight scale (per channel or repeated)
  const float* conv_bias = nullptr;     // (d): dequantized conv bias
  float u_scale = 1.0f;                 // the conv's output scale (Quamba's percentile scale)
  const int8_t* A_log = nullptr;        // (d, n)
  const int8_t* D = nullptr;            // (d)
  const int8_t* delta_bias = nullptr;   // (d)
  float scan_scales[8] = {};            // kernel_math.h's ScanScale order: u, delta, B, C, z, A_log, D, delta_bias
  const int8_t* hadamard_K = nullptr;   // (K, K) ±1, or nullptr: no rotation of y
  int64_t K = 1;
  float y_scale = 1.0f;                 // out_proj's input scale
};

constexpr int64_t kMaxDState = 256;  // the scan's per-channel state lives on the stack
constexpr int64_t kPrefillChunk = 64;  // tokens of each sequence a prefill carries through all layers at once

enum class HeadKind : int { kF32 = 0, kF16, kBF16, kInt8 };

struct ModelSpec {
  int64_t d_model = 0, d_inner = 0, d_state = 0, d_conv = 0, rank = 0, vocab = 0;
  const float* embedding = nullptr;  // (vocab, d_model) fp32; the tied head of kF32 reads it in place
  const float* norm_f_weight = nullptr;
  float norm_f_eps = 1e-5f;
  HeadKind head = HeadKind::kF32;
  LinearSpec int8_head;  // kInt8: (vocab, d_model) per-channel int8, fp32 out
  float head_in_scale = 1.0f;
  std::vector<LayerSpec> layers;
};

// Where a traced step copies each layer's int8 intermediates (each (batch, width), or nullptr to skip).
struct Trace {
  int8_t *xn = nullptr, *xz = nullptr, *u = nullptr, *dbc = nullptr, *delta = nullptr, *y = nullptr;
};

// A linear layer's int8 weight packed once for the path's kernels (isa.h: pack_s8), its row sums and its fp32
// epilogue (per-output scales, bias, output scale), shared by the Mamba-1 and Mamba-2 decoders.
struct PackedLinear {
  Buffer<int8_t> w;  // (n_pad, k_pad) in the path's packed layout
  Buffer<int32_t> row_sum;  // (n_pad)
  std::vector<float> scale, bias;
  int64_t n = 0, k = 0, n_pad = 0, k_pad = 0;
  float out_scale = 0.0f;
  int64_t bytes() const { return n_pad * k_pad + 4 * n * (2 + (bias.empty() ? 0 : 1)); }
};
PackedLinear pack_linear(const LinearSpec& s, int64_t chunk);
// X (M, ldx) int8 rows (k_pad valid bytes each, padding zero) through l, kGemmRows rows per gemm_s8 call;
// epilogue(row, acc) gets each row's n_pad int32 outputs. acc: kGemmRows * l.n_pad int32 of scratch; scratch:
// gemm_scratch_bytes(l.k_pad) bytes. The prefill projections of both decoders.
template <class Epilogue>
void gemm_rows(const DotKernels& kernels, const PackedLinear& l, const int8_t* X, int64_t ldx, int64_t M,
               int32_t* acc, uint8_t* scratch, Epilogue&& epilogue) {
  for (int64_t m0 = 0; m0 < M; m0 += kGemmRows) {
    const int64_t mt = M - m0 < kGemmRows ? M - m0 : kGemmRows;
    kernels.gemm_s8(l.w.data(), l.row_sum.data(), l.n_pad, l.k_pad, X + m0 * ldx, ldx, mt, scratch, acc, l.n_pad);
    for (int64_t m = 0; m < mt; ++m) epilogue(m0 + m, acc + m * l.n_pad);
  }
}
// The chunk loop of both decoders' prefill over ids (batch, length) row-major: throws for an id outside the
// vocabulary; then for each chunk of T <= kPrefillChunk tokens per sequence, the embedding rows into h (row b * T + t:
// token t0 + t of sequence b) and layers(T, t0) (every layer on those rows, in place); finally the last position of
// each sequence into last (batch, d_model), for the head.
template <class Layers>
void prefill_chunks(const float* embedding, int64_t vocab, int64_t d_model, const int64_t* ids, int64_t batch,
                    int64_t length, float* h, float* last, Layers&& layers) {
  for (int64_t i = 0; i < batch * length; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw std::invalid_argument("native decoder: token id " + std::to_string(ids[i]) + " outside the vocabulary");
  for (int64_t t0 = 0; t0 < length; t0 += kPrefillChunk) {
    const int64_t T = length - t0 < kPrefillChunk ? length - t0 : kPrefillChunk;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const float* row = embedding + ids[b * length + t0 + t] * d_model;
        std::copy(row, row + d_model, h + (b * T + t) * d_model);
      }
    layers(T, t0);
    if (t0 + T == length)
      for (int64_t b = 0; b < batch; ++b)
        std::copy(h + (b * T + T - 1) * d_model, h + (b * T + T) * d_model, last + b * d_model);
  }
}
// The causal depthwise conv along time of one sequence's T new inputs (both decoders' prefill): rows x (T, stride
// ldx; the first `channels` int8 of each) after the state cs (channels, k-1) int8, oldest first; taps wt (k,
// channels) int32. row(t, acc) gets position t's int32 sums (acc: `channels` int32 of scratch); cs then holds the
// last k-1 inputs. xpad: (k-1+T) * channels int8 of scratch. Integer sums: the same as k-1 steps of the state.
template <class Row>
void conv_along_time(int8_t* cs, const int8_t* x, int64_t ldx, int64_t T, int64_t channels, int64_t k,
                     const int32_t* wt, int8_t* xpad, int32_t* acc, Row&& row) {
  for (int64_t j = 0; j < k - 1; ++j)
    for (int64_t c = 0; c < channels; ++c) xpad[j * channels + c] = cs[c * (k - 1) + j];
  for (int64_t t = 0; t < T; ++t) std::copy(x + t * ldx, x + t * ldx + channels, xpad + (k - 1 + t) * channels);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      int32_t a = 0;
      for (int64_t j = 0; j < k; ++j) a += wt[j * channels + c] * int32_t(xpad[(t + j) * channels + c]);
      acc[c] = a;
    }
    row(t, acc);
  }
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t j = 0; j < k - 1; ++j) cs[c * (k - 1) + j] = xpad[(T + j) * channels + c];
}
// h (n) += the fp32 epilogue of an fp32-out layer's int32 outputs: acc * scale (+ bias), the residual add.
inline void add_residual(const PackedLinear& l, const int32_t* acc, float* h) {
  for (int64_t j = 0; j < l.n; ++j) {
    float o = static_cast<float>(acc[j]) * l.scale[j];
    if (!l.bias.empty()) o = o + l.bias[j];
    h[j] = h[j] + o;
  }
}
// The embedding rows (vocab, d_model) of ids (batch) into h (batch, d_model); throws for an id outside the vocabulary.
void embed_rows(const float* embedding, int64_t vocab, int64_t d_model, const int64_t* ids, int64_t batch, float* h);
// A layer's H_K (K x K, ±1) for the Hadamard rotation of a d-wide row into `out`; returns K, or 0 when H is nullptr
// (no rotation). Throws when d is not K times a power of two.
int64_t copy_hadamard(const int8_t* H, int64_t K, int64_t d, std::vector<int8_t>& out);

// The final RMSNorm and the head of an LM, on one path's kernels: fp32 (the tied embedding, read in place: it must
// outlive the head), fp16 / bf16 (that matrix converted once, round to nearest even, fp32 accumulation) or int8
// (a per-channel int8 matrix, packed). Owns its per-row scratch.
class LmHead {
 public:
  LmHead() = default;
  LmHead(const DotKernels& kernels, HeadKind kind, const float* embedding, int64_t vocab, int64_t d_model,
         const float* norm_weight, float norm_eps, const LinearSpec& int8_head, float in_scale);
  // h (batch, d_model) fp32 -> logits (batch, vocab) fp32.
  void run(const float* h, int64_t batch, float* logits);
  HeadKind kind() const { return kind_; }
  int64_t packed_bytes() const;  // the 16-bit or int8 matrix and its scales (0 for fp32: the embedding is shared)

 private:
  DotKernels kernels_{};
  HeadKind kind_ = HeadKind::kF32;
  const float* embedding_ = nullptr;
  int64_t vocab_ = 0, d_model_ = 0;
  std::vector<float> norm_weight_;
  float norm_eps_ = 1e-5f, in_scale_ = 1.0f;
  Buffer<uint16_t> head16_;
  PackedLinear head8_;
  Buffer<float> normed_, out_;
  Buffer<int8_t> xq_;
  Buffer<int32_t> acc_;
  Buffer<uint8_t> scratch_;
};

class Decoder {
 public:
  // Packs every weight in the layout of `isa`'s kernels (the embedding is used in place for the rows a step looks
  // up and, by kF32, as the head: it must outlive the decoder). spec.layers may be empty: add_layer then.
  Decoder(const ModelSpec& spec, Isa isa);
  // Packs (copies) one more layer: its source tensors may be released once this returns.
  void add_layer(const LayerSpec& s);

  // One token per sequence: ids (batch) -> logits (batch, vocab) fp32. conv_state (n_layer, batch, d, d_conv-1)
  // int8 and ssm_state (n_layer, batch, d, n) fp32 are read and updated in place. traces: n_layer entries or
  // nullptr. Scratch grows on the first call with a larger batch, never afterwards.
  void step(const int64_t* ids, int64_t batch, int8_t* conv_state, float* ssm_state, float* logits,
            const Trace* traces = nullptr);
  // A whole prompt per sequence: ids (batch, length) row-major -> logits (batch, vocab) fp32 of the last
  // position; conv_state and ssm_state as `step` (the states before the prompt, usually zeros) are advanced
  // over all `length` tokens in place. traces: n_layer entries whose pointers are (batch, length, width) int8
  // (the same widths as step's), or nullptr. Scratch grows with batch, not with length.
  void prefill(const int64_t* ids, int64_t batch, int64_t length, int8_t* conv_state, float* ssm_state,
               float* logits, const Trace* traces = nullptr);
  // One layer on h (batch, d_model) fp32 in place, with that layer's states (batch, d, d_conv-1), (batch, d, n).
  void layer(int64_t i, float* h, int64_t batch, int8_t* conv_state, float* ssm_state, const Trace* trace = nullptr);
  // Final RMSNorm and head: h (batch, d_model) -> logits (batch, vocab).
  void head(const float* h, int64_t batch, float* logits);

  Isa isa() const { return kernels_.isa; }
  int64_t n_layer() const { return static_cast<int64_t>(layers_.size()); }
  int64_t packed_bytes() const;  // weight bytes this decoder owns (packed int8, 16-bit head, scales)

 private:
  using Linear = PackedLinear;
  struct Layer {
    std::vector<float> norm_weight;
    float norm_eps, norm_scale;
    Linear in_proj, x_proj, dt_proj, out_proj;
    std::vector<int8_t> conv_weight;  // (d, d_conv)
    std::vector<int32_t> conv_weight_t;  // (d_conv, d): the taps by time, for the prefill's conv along time
    std::vector<float> conv_scale, conv_bias;
    float u_scale;
    Buffer<float> A;  // (d, n) = -exp(dequant(A_log)), computed once with kernel_math's scan_A
    std::vector<int8_t> D, delta_bias, hadamard_K;
    float scan_scales[8];
    int64_t K;
    float y_scale;
  };

  void gemv(const Linear& l, const int8_t* x, int32_t* acc);
  // gemm_rows on the prefill scratch.
  template <class Epilogue>
  void gemm(const Linear& l, const int8_t* X, int64_t ldx, int64_t M, Epilogue&& epilogue) {
    gemm_rows(kernels_, l, X, ldx, M, p_acc_.data(), gemm_scratch_.data(), std::forward<Epilogue>(epilogue));
  }
  // One layer over rows = batch * T tokens (row b * T + t is token t0 + t of sequence b) of the prefill buffers.
  void prefill_layer(int64_t i, int64_t batch, int64_t T, int64_t t0, int64_t length, int8_t* conv_state,
                     float* ssm_state, const Trace* trace);
  void ensure_batch(int64_t batch);
  void ensure_prefill(int64_t batch);

  DotKernels kernels_;
  int64_t d_model_, d_inner_, d_state_, d_conv_, rank_, vocab_;
  const float* embedding_;
  LmHead head_;
  std::vector<Layer> layers_;

  // Per-token scratch, sized for `batch_` sequences; padded int8 inputs keep zeros past their width.
  int64_t batch_ = 0;
  Buffer<int8_t> xn_, u_, dt_, yq_, xz_, dbc_, delta_;
  Buffer<int32_t> acc_;
  Buffer<float> y_, rot_, h_;
  Buffer<uint8_t> gemv_scratch_;
  Buffer<float> scan_bc_;  // (2, kPrefillChunk, d_state): a scan's B and C rows, dequantized

  // Prefill scratch for `prefill_batch_` sequences of kPrefillChunk tokens (rows), the step's layouts by row.
  int64_t prefill_batch_ = 0;
  Buffer<float> p_h_, p_y_;  // (rows, d_model) residual stream; (rows, d) scan output
  Buffer<int8_t> p_xn_, p_xz_, p_u_, p_dbc_, p_dt_, p_delta_, p_yq_, p_xpad_;
  Buffer<int32_t> p_acc_, p_conv_acc_;  // (kGemmRows, widest n_pad); (d) the conv's sums of one position
  Buffer<uint8_t> gemm_scratch_;
};

}  // namespace native
}  // namespace quamba_edge
