// The native CPU decode step of a W8A8 Mamba-2 LM (quamba_edge/quant/quamba2.py): one call runs one token of every
// sequence through the whole model, on the same packed int8 kernels and head as the Mamba-1 decoder (decoder.h),
// states updated in place, no allocation per token.
//
// One layer, per sequence (q: int8; scales static, per channel where quamba2.py has vectors; e = d + 2 G n):
//   xn  (d_model)      = quantize(RMSNorm(h), s_norm)
//   p   (d + e + H)    = quantize(int32(W_in xn) * (s_norm s_Win) + b, s_proj[j])     z | xBC | dt, per channel
//   xbc (e)            = quantize(SiLU(conv(state, xBC) * s_proj s_wc + bias), s_xbc[c]); state shifted in place
//   dt_h               = clamp(softplus(dq(dt_h) + dt_bias_h), dt_min, dt_max); decay_h = exp(dt_h A_h)
//   S_h (p, n, fp32)   = decay_h S_h + (dt_h x_h) B_gᵀ   (head h reads group g = h / (H / G)); y_h = S_h C_g + D_h x_h
//   yq  (d)            = quantize(RMSNorm_group(y * SiLU(z)) Mᵀ, s_y)   (the norm's weight is in W_out)
//   h  += int32(W_out yq) * (s_y s_Wout) + b
// then logits = head(RMSNorm_f(h)) (decoder.h's LmHead: fp32, fp16, bf16 or int8).
//
// Prefill runs the same formulas layer-major over kPrefillChunk tokens of every sequence at a time (decoder.h): the
// projections are int8 GEMMs over all those rows (each packed weight read once per chunk, not once per token), the
// conv runs along time per channel and the SSD recurrence along time per head (its (p, n) state stays in cache), and
// only the last position goes through the head. Every float operation is the step's, in the same order, so a
// prefill leaves the same states (bit for bit) as stepping token by token.
//
// Agreement with the PyTorch reference is DESIGN.md's end-to-end int8 bound (a rounding tie may flip an int8 value):
// the SSD reduction over the state and SiLU's exp are computed in another order than PyTorch's. Every ISA path gives
// the same bits (the integer products are exact; the float code is shared, with fixed-order sums).
#pragma once

#include <cstdint>
#include <vector>

#include "decoder.h"

namespace quamba_edge {
namespace native {

struct Mamba2LayerSpec {
  const float* norm_weight = nullptr;  // (d_model)
  float norm_eps = 1e-5f, norm_scale = 1.0f;
  LinearSpec in_proj;                  // (d + e + H, d_model), fp32 out: quantized per channel with proj_scale
  const float* proj_scale = nullptr;   // (d + e + H)
  const int8_t* conv_weight = nullptr;  // (e, d_conv)
  const float* conv_scale = nullptr;   // (e): proj_scale[d + c] * conv weight scale, the reference's fp32 product
  const float* conv_bias = nullptr;    // (e) fp32, or nullptr
  const float* xbc_scale = nullptr;    // (e)
  const float* dt_bias = nullptr;      // (H)
  const float* A = nullptr;            // (H): -exp(A_log)
  const float* D = nullptr;            // (H)
  const int8_t* hadamard_K = nullptr;  // (K, K) ±1, or nullptr: no rotation
  int64_t K = 1;
  float y_scale = 1.0f;
  LinearSpec out_proj;                 // (d_model, d), fp32 out
};

struct Mamba2Spec {
  int64_t d_model = 0, d_inner = 0, nheads = 0, headdim = 0, ngroups = 0, d_state = 0, d_conv = 0, vocab = 0;
  float dt_min = 0.0f, dt_max = 0.0f;  // dt_max <= 0: no upper limit
  float gate_eps = 1e-5f;              // the gated RMSNorm's eps
  const float* embedding = nullptr;    // (vocab, d_model) fp32, read in place (and by the fp32 head)
  const float* norm_f_weight = nullptr;
  float norm_f_eps = 1e-5f;
  HeadKind head = HeadKind::kF32;
  LinearSpec int8_head;                // kInt8: (vocab, d_model) per-channel int8, fp32 out
  float head_in_scale = 1.0f;
};

class Mamba2Decoder {
 public:
  Mamba2Decoder(const Mamba2Spec& spec, Isa isa);
  // Packs (copies) one more layer: its source tensors may be released once this returns.
  void add_layer(const Mamba2LayerSpec& s);
  // One token per sequence: ids (batch) -> logits (batch, vocab). conv_state (n_layer, batch, e, d_conv-1) int8 and
  // ssm_state (n_layer, batch, H, p, n) fp32 are read and updated in place.
  void step(const int64_t* ids, int64_t batch, int8_t* conv_state, float* ssm_state, float* logits);
  // ids (batch, length) row-major -> logits (batch, vocab) of the last position; the states (those before the prompt,
  // usually zeros) advanced over all `length` tokens in place. Scratch grows with batch, not with length.
  void prefill(const int64_t* ids, int64_t batch, int64_t length, int8_t* conv_state, float* ssm_state,
               float* logits);
  // One layer on h (batch, d_model) fp32 in place, with that layer's states (batch, e, d_conv-1), (batch, H, p, n).
  void layer(int64_t i, float* h, int64_t batch, int8_t* conv_state, float* ssm_state);
  void head(const float* h, int64_t batch, float* logits) { head_.run(h, batch, logits); }

  Isa isa() const { return kernels_.isa; }
  int64_t n_layer() const { return static_cast<int64_t>(layers_.size()); }
  int64_t packed_bytes() const;

 private:
  struct Layer {
    std::vector<float> norm_weight, proj_scale, conv_scale, conv_bias, xbc_scale, dt_bias, A, D;
    float norm_eps, norm_scale, y_scale;
    PackedLinear in_proj, out_proj;
    std::vector<int8_t> conv_weight, hadamard_K;
    std::vector<int32_t> conv_weight_t;  // (d_conv, e): the taps by time, for the prefill's conv along time
    int64_t K;
  };
  void ensure_batch(int64_t batch);
  void ensure_prefill(int64_t batch);
  // One layer over rows = batch * T tokens of the prefill buffers (row b * T + t is token t of the chunk of sequence
  // b), its states (batch, e, d_conv-1) and (batch, H, p, n) advanced over the T tokens.
  void prefill_layer(int64_t i, int64_t batch, int64_t T, int8_t* conv_state, float* ssm_state);
  // The step's dt_h of one head from in_proj's dequantized dt: clamp(softplus(dt + dt_bias), dt_min, dt_max).
  float head_dt(float dt, float dt_bias) const;
  // Embedding rows of ids (batch) and every layer: the residual stream after them in h_.
  void advance(const int64_t* ids, int64_t batch, int8_t* conv_state, float* ssm_state);

  DotKernels kernels_;
  int64_t d_model_, d_inner_, nheads_, headdim_, ngroups_, d_state_, d_conv_, conv_dim_, vocab_;
  float dt_min_, dt_max_, gate_eps_;
  const float* embedding_;
  LmHead head_;
  std::vector<Layer> layers_;

  int64_t batch_ = 0;
  Buffer<int8_t> xn_, xbc_q_, yq_;
  Buffer<int32_t> acc_, conv_acc_;
  Buffer<float> z_, xbc_, dt_, y_, rot_, h_;
  Buffer<uint8_t> gemv_scratch_;

  // Prefill scratch for `prefill_batch_` sequences of kPrefillChunk tokens (rows), the step's layouts by row.
  int64_t prefill_batch_ = 0;
  Buffer<float> p_h_, p_z_, p_xbc_, p_dt_, p_y_;   // (rows, d_model), (rows, d), (rows, e), (rows, H), (rows, d)
  Buffer<int8_t> p_xn_, p_xbc_q_, p_yq_, p_xpad_;  // (rows, in k_pad), (rows, e), (rows, out k_pad), (k-1+chunk, e)
  Buffer<int32_t> p_acc_, p_conv_acc_;             // (kGemmRows, widest n_pad), (e)
  Buffer<uint8_t> gemm_scratch_;
};

}  // namespace native
}  // namespace quamba_edge
