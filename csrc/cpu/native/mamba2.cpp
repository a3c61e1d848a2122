// The whole-model Mamba-2 decode step (mamba2.h). Compiled like decoder.cpp (no FMA contraction): the float code
// is the baseline ISA's, shared by every path; the SSD state update also has an AVX2 copy of the same code.
#include "mamba2.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace quamba_edge {
namespace native {

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("native Mamba-2 decoder: " + what);
}

// One head's SSD step: S (p, n) = decay S + (dt x_i) B for each row i, y_i = <S_i, C> + D x_i; <S_i, C> summed in a
// fixed order (eight elementwise partial sums, then a fixed tree), so every vector width gives the same bits.
__attribute__((always_inline)) inline void ssd_head_body(int64_t p, int64_t n, float decay, float dt, float D,
                                                         const float* x, const float* B, const float* C, float* S,
                                                         float* y) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < p; ++i) {
    float* __restrict s = S + i * n;
    const float dtx = dt * x[i];
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) s[k] = decay * s[k] + dtx * B[k];
    alignas(32) float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k0 = 0; k0 < n8; k0 += 8)
      for (int l = 0; l < 8; ++l) part[l] += s[k0 + l] * C[k0 + l];
    for (int64_t k = n8; k < n; ++k) part[k - n8] += s[k] * C[k];
    const float dot = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    y[i] = dot + x[i] * D;
  }
}

using SsdFn = void (*)(int64_t, int64_t, float, float, float, const float*, const float*, const float*, float*,
                       float*);

void ssd_head_base(int64_t p, int64_t n, float decay, float dt, float D, const float* x, const float* B,
                   const float* C, float* S, float* y) {
  ssd_head_body(p, n, decay, dt, D, x, B, C, S, y);
}

#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx2"))) void ssd_head_avx2(int64_t p, int64_t n, float decay, float dt, float D,
                                                   const float* x, const float* B, const float* C, float* S,
                                                   float* y) {
  ssd_head_body(p, n, decay, dt, D, x, B, C, S, y);
}
#endif

SsdFn ssd_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (has_avx2(isa)) return ssd_head_avx2;
#endif
  (void)isa;
  return ssd_head_base;
}

// The elementwise float parts of a layer's row, written once (always inlined) and compiled twice: for the baseline
// ISA and with 8-lane AVX vectors. Elementwise IEEE operations in one order (no FMA: -ffp-contract=off, no "fma"
// target) and sequential sums, so both copies give the same bits.
#define QE_ROW_OP __attribute__((always_inline)) inline

// in_proj's int32 (+ bias) -> z (dequantized), xBC (int8), dt (dequantized), each channel at its own scale.
QE_ROW_OP void in_epilogue_body(const int32_t* acc, const float* scale, const float* bias, const float* s, int64_t d,
                                int64_t e, int64_t H, float* z, int8_t* xbc_q, float* dt) {
  alignas(32) float v[64];
  for (int64_t j0 = 0; j0 < d + e + H; j0 += 64) {
    const int64_t bs = std::min<int64_t>(64, d + e + H - j0);
    for (int64_t j = 0; j < bs; ++j) v[j] = static_cast<float>(acc[j0 + j]) * scale[j0 + j];
    if (bias != nullptr)
      for (int64_t j = 0; j < bs; ++j) v[j] = v[j] + bias[j0 + j];
    alignas(32) int8_t q[64];
    for (int64_t j = 0; j < bs; ++j) q[j] = quantize_s8(v[j], s[j0 + j]);
    for (int64_t j = 0; j < bs; ++j) {
      const int64_t c = j0 + j;
      if (c < d) {
        z[c] = dequantize_int8(q[j], s[c]);
      } else if (c < d + e) {
        xbc_q[c - d] = q[j];
      } else {
        dt[c - d - e] = dequantize_int8(q[j], s[c]);
      }
    }
  }
}

// The float half of the conv step over e channels: acc * scale + bias -> SiLU -> int8 at xbc_scale -> dequantized.
QE_ROW_OP void conv_float_body(int64_t e, const int32_t* acc, const float* scale, const float* bias,
                               const float* xbc_scale, float* xbc) {
  for (int64_t c = 0; c < e; ++c) {
    const float v = static_cast<float>(acc[c]) * scale[c] + bias[c];
    xbc[c] = dequantize_int8(quantize_s8(silu(v), xbc_scale[c]), xbc_scale[c]);
  }
}

// y (d) <- RMSNorm over each group of `group` channels of y * SiLU(z), without the norm's weight.
QE_ROW_OP void gate_body(int64_t d, int64_t group, float eps, const float* z, float* y) {
  for (int64_t c = 0; c < d; ++c) y[c] = y[c] * silu(z[c]);
  for (int64_t g0 = 0; g0 < d; g0 += group) {
    float ss = 0.0f;
    for (int64_t c = g0; c < g0 + group; ++c) ss += y[c] * y[c];
    const float r = 1.0f / sqrtf(ss / static_cast<float>(group) + eps);
    for (int64_t c = g0; c < g0 + group; ++c) y[c] = y[c] * r;
  }
}

struct RowOps {
  void (*in_epilogue)(const int32_t*, const float*, const float*, const float*, int64_t, int64_t, int64_t, float*,
                      int8_t*, float*);
  void (*conv_float)(int64_t, const int32_t*, const float*, const float*, const float*, float*);
  void (*gate)(int64_t, int64_t, float, const float*, float*);
};

#define QE_ROW_OPS(suffix, attr)                                                                                    \
  attr void in_epilogue_##suffix(const int32_t* acc, const float* scale, const float* bias, const float* s,         \
                                 int64_t d, int64_t e, int64_t H, float* z, int8_t* xbc_q, float* dt) {             \
    in_epilogue_body(acc, scale, bias, s, d, e, H, z, xbc_q, dt);                                                   \
  }                                                                                                                 \
  attr void conv_float_##suffix(int64_t e, const int32_t* acc, const float* scale, const float* bias,              \
                                const float* xbc_scale, float* xbc) {                                               \
    conv_float_body(e, acc, scale, bias, xbc_scale, xbc);                                                           \
  }                                                                                                                 \
  attr void gate_##suffix(int64_t d, int64_t group, float eps, const float* z, float* y) {                          \
    gate_body(d, group, eps, z, y);                                                                                 \
  }                                                                                                                 \
  constexpr RowOps kRowOps_##suffix{in_epilogue_##suffix, conv_float_##suffix, gate_##suffix};

QE_ROW_OPS(base, )
#if defined(__x86_64__) || defined(_M_X64)
QE_ROW_OPS(avx2, __attribute__((target("avx2"))))
#endif

const RowOps& row_ops_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (has_avx2(isa)) return kRowOps_avx2;
#endif
  (void)isa;
  return kRowOps_base;
}

// torch.nn.functional.softplus (beta 1, threshold 20) with libm's exp and log1p: once per head, so accuracy first.
inline float softplus_exact(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

}  // namespace

Mamba2Decoder::Mamba2Decoder(const Mamba2Spec& spec, Isa isa)
    : kernels_(kernels(isa)),
      d_model_(spec.d_model),
      d_inner_(spec.d_inner),
      nheads_(spec.nheads),
      headdim_(spec.headdim),
      ngroups_(spec.ngroups),
      d_state_(spec.d_state),
      d_conv_(spec.d_conv),
      conv_dim_(spec.d_inner + 2 * spec.ngroups * spec.d_state),
      vocab_(spec.vocab),
      dt_min_(spec.dt_min),
      dt_max_(spec.dt_max),
      gate_eps_(spec.gate_eps),
      embedding_(spec.embedding) {
  require(d_model_ > 0 && nheads_ > 0 && headdim_ > 0 && ngroups_ > 0 && d_state_ > 0 && d_conv_ >= 2 && vocab_ > 0,
          "every dimension must be positive and d_conv >= 2");
  require(d_inner_ == nheads_ * headdim_ && nheads_ % ngroups_ == 0, "d_inner must be nheads * headdim and the "
          "heads must split into ngroups");
  head_ = LmHead(kernels_, spec.head, spec.embedding, vocab_, d_model_, spec.norm_f_weight, spec.norm_f_eps,
                 spec.int8_head, spec.head_in_scale);
}

void Mamba2Decoder::add_layer(const Mamba2LayerSpec& s) {
  const int64_t d = d_inner_, e = conv_dim_, H = nheads_;
  Layer L;
  require(s.norm_weight && s.proj_scale && s.conv_weight && s.conv_scale && s.xbc_scale && s.dt_bias && s.A && s.D,
          "a layer tensor is missing");
  require(s.in_proj.n == d + e + H && s.in_proj.k == d_model_ && s.in_proj.out_scale == 0,
          "in_proj is not (d + e + nheads, d_model) fp32-out");
  require(s.out_proj.n == d_model_ && s.out_proj.k == d && s.out_proj.out_scale == 0,
          "out_proj is not (d_model, d_inner) fp32-out");
  L.norm_weight.assign(s.norm_weight, s.norm_weight + d_model_);
  L.norm_eps = s.norm_eps;
  L.norm_scale = s.norm_scale;
  L.in_proj = pack_linear(s.in_proj, kernels_.chunk);
  L.out_proj = pack_linear(s.out_proj, kernels_.chunk);
  L.proj_scale.assign(s.proj_scale, s.proj_scale + d + e + H);
  L.conv_weight.assign(s.conv_weight, s.conv_weight + e * d_conv_);
  L.conv_weight_t.resize(e * d_conv_);
  for (int64_t c = 0; c < e; ++c)
    for (int64_t j = 0; j < d_conv_; ++j) L.conv_weight_t[j * e + c] = s.conv_weight[c * d_conv_ + j];
  L.conv_scale.assign(s.conv_scale, s.conv_scale + e);
  L.conv_bias = s.conv_bias ? std::vector<float>(s.conv_bias, s.conv_bias + e) : std::vector<float>(e, 0.0f);
  L.xbc_scale.assign(s.xbc_scale, s.xbc_scale + e);
  L.dt_bias.assign(s.dt_bias, s.dt_bias + H);
  L.A.assign(s.A, s.A + H);
  L.D.assign(s.D, s.D + H);
  L.K = copy_hadamard(s.hadamard_K, s.K, d, L.hadamard_K);
  L.y_scale = s.y_scale;
  layers_.push_back(std::move(L));
  batch_ = prefill_batch_ = 0;  // the scratch is sized from the layers: made again at the next call
}

int64_t Mamba2Decoder::packed_bytes() const {
  int64_t total = head_.packed_bytes();
  for (const Layer& L : layers_)
    total += L.in_proj.bytes() + L.out_proj.bytes() + static_cast<int64_t>(L.conv_weight.size()) +
             4 * static_cast<int64_t>(L.proj_scale.size() + 3 * L.conv_scale.size() + 3 * L.A.size());
  return total;
}

void Mamba2Decoder::ensure_batch(int64_t batch) {
  if (batch <= batch_) return;
  require(!layers_.empty(), "no layers (add_layer first)");
  const Layer& L = layers_.front();
  xn_ = Buffer<int8_t>(L.in_proj.k_pad);
  xbc_q_ = Buffer<int8_t>(conv_dim_);
  yq_ = Buffer<int8_t>(L.out_proj.k_pad);
  acc_ = Buffer<int32_t>(std::max(L.in_proj.n_pad, L.out_proj.n_pad));
  conv_acc_ = Buffer<int32_t>(conv_dim_);
  z_ = Buffer<float>(d_inner_);
  xbc_ = Buffer<float>(conv_dim_);
  dt_ = Buffer<float>(nheads_);
  y_ = Buffer<float>(d_inner_);
  rot_ = Buffer<float>(d_inner_);
  h_ = Buffer<float>(batch * d_model_);
  gemv_scratch_ = Buffer<uint8_t>(2 * std::max(L.in_proj.k_pad, L.out_proj.k_pad));
  batch_ = batch;
}

void Mamba2Decoder::layer(int64_t i, float* h, int64_t batch, int8_t* conv_state, float* ssm_state) {
  require(i >= 0 && i < n_layer(), "layer index out of range");
  ensure_batch(batch);
  const Layer& L = layers_[i];
  const int64_t d = d_inner_, e = conv_dim_, H = nheads_, P = headdim_, N = d_state_, k = d_conv_, dm = d_model_;
  const int64_t heads_per_group = H / ngroups_, group = d / ngroups_;
  const SsdFn ssd = ssd_for(kernels_.isa);
  const RowOps& ops = row_ops_for(kernels_.isa);
  int32_t* acc = acc_.data();
  int32_t* conv_acc = conv_acc_.data();
  float *z = z_.data(), *xbc = xbc_.data(), *dt = dt_.data(), *y = y_.data();
  int8_t *xn = xn_.data(), *xbc_q = xbc_q_.data(), *yq = yq_.data();
  for (int64_t b = 0; b < batch; ++b) {
    float* hb = h + b * dm;
    rmsnorm_quantize_row(hb, dm, L.norm_eps, L.norm_weight.data(), L.norm_scale, xn);
    // in_proj -> z | xBC | dt, each channel quantized with its own scale (z and dt then dequantized)
    const PackedLinear& ip = L.in_proj;
    kernels_.gemv_s8(ip.w.data(), ip.row_sum.data(), ip.n_pad, ip.k_pad, xn, gemv_scratch_.data(), acc);
    ops.in_epilogue(acc, ip.scale.data(), ip.bias.empty() ? nullptr : ip.bias.data(), L.proj_scale.data(), d, e, H, z,
                    xbc_q, dt);
    // causal conv step over x, B and C + SiLU + requantize (then dequantized for the SSD); the state shifts in place
    int8_t* cs = conv_state + b * e * (k - 1);
    for (int64_t c = 0; c < e; ++c) {
      int8_t* st = cs + c * (k - 1);
      const int8_t* w = L.conv_weight.data() + c * k;
      int32_t a = 0;
      for (int64_t j = 0; j < k - 1; ++j) a += int32_t(w[j]) * int32_t(st[j]);
      conv_acc[c] = a + int32_t(w[k - 1]) * int32_t(xbc_q[c]);
      for (int64_t j = 0; j + 1 < k - 1; ++j) st[j] = st[j + 1];
      st[k - 2] = xbc_q[c];
    }
    ops.conv_float(e, conv_acc, L.conv_scale.data(), L.conv_bias.data(), L.xbc_scale.data(), xbc);
    // the SSD step of every head; its state (P, N) in place
    const float* Bs = xbc + d;
    const float* Cs = xbc + d + ngroups_ * N;
    float* S = ssm_state + b * H * P * N;
    for (int64_t hh = 0; hh < H; ++hh) {
      const float dth = head_dt(dt[hh], L.dt_bias[hh]);
      const int64_t g = hh / heads_per_group;
      ssd(P, N, expf(dth * L.A[hh]), dth, L.D[hh], xbc + hh * P, Bs + g * N, Cs + g * N, S + hh * P * N, y + hh * P);
    }
    // gate: RMSNorm over each group of y * SiLU(z) (its weight is in out_proj), then Hadamard + quantize -> yq
    ops.gate(d, group, gate_eps_, z, y);
    rotate_quantize_row(kernels_.isa, y, d, L.hadamard_K.data(), L.K, L.y_scale, rot_.data(), yq);
    // out_proj (fp32 out) + residual
    const PackedLinear& op = L.out_proj;
    kernels_.gemv_s8(op.w.data(), op.row_sum.data(), op.n_pad, op.k_pad, yq, gemv_scratch_.data(), acc);
    add_residual(op, acc, hb);
  }
}

float Mamba2Decoder::head_dt(float dt, float dt_bias) const {
  float v = softplus_exact(dt + dt_bias);
  v = v > dt_min_ ? v : dt_min_;
  if (dt_max_ > 0.0f) v = v < dt_max_ ? v : dt_max_;
  return v;
}

void Mamba2Decoder::advance(const int64_t* ids, int64_t batch, int8_t* conv_state, float* ssm_state) {
  ensure_batch(batch);
  const int64_t dm = d_model_;
  float* h = h_.data();
  embed_rows(embedding_, vocab_, dm, ids, batch, h);
  const int64_t conv_stride = batch * conv_dim_ * (d_conv_ - 1), ssm_stride = batch * d_inner_ * d_state_;
  for (int64_t i = 0; i < n_layer(); ++i) layer(i, h, batch, conv_state + i * conv_stride, ssm_state + i * ssm_stride);
}

void Mamba2Decoder::step(const int64_t* ids, int64_t batch, int8_t* conv_state, float* ssm_state, float* logits) {
  advance(ids, batch, conv_state, ssm_state);
  head_.run(h_.data(), batch, logits);
}

void Mamba2Decoder::ensure_prefill(int64_t batch) {
  if (batch <= prefill_batch_) return;
  require(!layers_.empty(), "no layers (add_layer first)");
  const Layer& L = layers_.front();
  const int64_t rows = batch * kPrefillChunk, e = conv_dim_;
  p_h_ = Buffer<float>(rows * d_model_);
  p_z_ = Buffer<float>(rows * d_inner_);
  p_xbc_ = Buffer<float>(rows * e);
  p_dt_ = Buffer<float>(rows * nheads_);
  p_y_ = Buffer<float>(rows * d_inner_);
  p_xn_ = Buffer<int8_t>(rows * L.in_proj.k_pad);
  p_xbc_q_ = Buffer<int8_t>(rows * e);
  p_yq_ = Buffer<int8_t>(rows * L.out_proj.k_pad);
  p_xpad_ = Buffer<int8_t>((d_conv_ - 1 + kPrefillChunk) * e);
  p_acc_ = Buffer<int32_t>(kGemmRows * std::max(L.in_proj.n_pad, L.out_proj.n_pad));
  p_conv_acc_ = Buffer<int32_t>(e);
  gemm_scratch_ = Buffer<uint8_t>(gemm_scratch_bytes(std::max(L.in_proj.k_pad, L.out_proj.k_pad)));
  prefill_batch_ = batch;
}

void Mamba2Decoder::prefill_layer(int64_t i, int64_t batch, int64_t T, int8_t* conv_state, float* ssm_state) {
  const Layer& L = layers_[i];
  const int64_t d = d_inner_, e = conv_dim_, H = nheads_, P = headdim_, N = d_state_, k = d_conv_, dm = d_model_;
  const int64_t rows = batch * T, ld_xn = L.in_proj.k_pad, ld_yq = L.out_proj.k_pad;
  const int64_t heads_per_group = H / ngroups_, group = d / ngroups_;
  const SsdFn ssd = ssd_for(kernels_.isa);
  const RowOps& ops = row_ops_for(kernels_.isa);
  float *h = p_h_.data(), *z = p_z_.data(), *xbc = p_xbc_.data(), *dt = p_dt_.data(), *y = p_y_.data();
  int8_t *xn = p_xn_.data(), *xbc_q = p_xbc_q_.data(), *yq = p_yq_.data(), *xpad = p_xpad_.data();
  int32_t* conv_acc = p_conv_acc_.data();
  // RMSNorm + quantize -> xn, row by row
  for (int64_t r = 0; r < rows; ++r)
    rmsnorm_quantize_row(h + r * dm, dm, L.norm_eps, L.norm_weight.data(), L.norm_scale, xn + r * ld_xn);
  // in_proj -> z | xBC | dt, per row
  const PackedLinear& ip = L.in_proj;
  const float* ip_bias = ip.bias.empty() ? nullptr : ip.bias.data();
  gemm_rows(kernels_, ip, xn, ld_xn, rows, p_acc_.data(), gemm_scratch_.data(), [&](int64_t r, const int32_t* acc) {
    ops.in_epilogue(acc, ip.scale.data(), ip_bias, L.proj_scale.data(), d, e, H, z + r * d, xbc_q + r * e, dt + r * H);
  });
  // causal conv along time over x, B and C + SiLU + requantize (dequantized for the SSD); the state (e, k-1) advances
  for (int64_t b = 0; b < batch; ++b)
    conv_along_time(conv_state + b * e * (k - 1), xbc_q + b * T * e, e, T, e, k, L.conv_weight_t.data(), xpad,
                    conv_acc, [&](int64_t t, const int32_t* acc) {
                      ops.conv_float(e, acc, L.conv_scale.data(), L.conv_bias.data(), L.xbc_scale.data(),
                                     xbc + (b * T + t) * e);
                    });
  // the SSD recurrence along time, head by head (its (p, n) state stays in cache over the chunk)
  for (int64_t b = 0; b < batch; ++b) {
    float* S = ssm_state + b * H * P * N;
    for (int64_t hh = 0; hh < H; ++hh) {
      const int64_t g = hh / heads_per_group;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t r = b * T + t;
        const float* xr = xbc + r * e;
        const float dth = head_dt(dt[r * H + hh], L.dt_bias[hh]);
        ssd(P, N, expf(dth * L.A[hh]), dth, L.D[hh], xr + hh * P, xr + d + g * N, xr + d + (ngroups_ + g) * N,
            S + hh * P * N, y + r * d + hh * P);
      }
    }
  }
  // gate, Hadamard + quantize -> yq, row by row
  for (int64_t r = 0; r < rows; ++r) {
    ops.gate(d, group, gate_eps_, z + r * d, y + r * d);
    rotate_quantize_row(kernels_.isa, y + r * d, d, L.hadamard_K.data(), L.K, L.y_scale, rot_.data(), yq + r * ld_yq);
  }
  // out_proj (fp32 out) + residual
  gemm_rows(kernels_, L.out_proj, yq, ld_yq, rows, p_acc_.data(), gemm_scratch_.data(),
            [&](int64_t r, const int32_t* acc) { add_residual(L.out_proj, acc, h + r * dm); });
}

void Mamba2Decoder::prefill(const int64_t* ids, int64_t batch, int64_t length, int8_t* conv_state, float* ssm_state,
                            float* logits) {
  require(batch > 0 && length > 0, "a prefill needs at least one sequence of at least one token");
  ensure_batch(batch);
  ensure_prefill(batch);
  const int64_t conv_stride = batch * conv_dim_ * (d_conv_ - 1), ssm_stride = batch * d_inner_ * d_state_;
  prefill_chunks(embedding_, vocab_, d_model_, ids, batch, length, p_h_.data(), h_.data(), [&](int64_t T, int64_t) {
    for (int64_t i = 0; i < n_layer(); ++i)
      prefill_layer(i, batch, T, conv_state + i * conv_stride, ssm_state + i * ssm_stride);
  });
  head_.run(h_.data(), batch, logits);  // only the last position goes through the head
}

}  // namespace native
}  // namespace quamba_edge
