// Per-element math of the int8 Mamba kernels, shared by the CUDA kernels (csrc/cuda), their CPU
// twins (csrc/cpu) and the TensorRT plugins (csrc/tensorrt). One definition of every formula means the
// CPU twin, which CI tests against the PyTorch reference, checks the arithmetic the GPU runs.
//
// The formulas follow quamba_edge/quant/qmodels.py operation for operation (same order of fp32
// operations where it matters for rounding), so int8 outputs agree exactly except at rounding ties.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QE_HD __host__ __device__ __forceinline__
#else
#define QE_HD inline
#endif

namespace quamba_edge {

constexpr float kQMin = -128.0f;
constexpr float kQMax = 127.0f;

// Symmetric int8, zero point 0: clamp(round_half_even(x / scale)). rintf rounds half to even in the
// default rounding mode on the host and always on the device, like torch.round and QuantizeLinear.
// The division (not a multiplication by 1/scale) matches the reference bit for bit.
QE_HD int8_t quantize_int8(float x, float scale) {
  const float q = rintf(x / scale);
  return static_cast<int8_t>(fminf(fmaxf(q, kQMin), kQMax));
}

QE_HD float dequantize_int8(int8_t q, float scale) { return static_cast<float>(q) * scale; }

// exp(x) to about 1 ulp (Cody-Waite range reduction, Cephes' degree-6 polynomial), written without
// library calls or branches so that the CPU twin's inner loop over the state vectorizes (a scalar expf
// per state element was 80% of the twin's scan); the GPU runs the same arithmetic. Inputs below -87 give
// about 1e-38 instead of a denormal (the scan's exp(delta * A) only decays the state).
// Multiply-add: one fused instruction on the GPU; on the host a*b+c, which the compiler fuses where
// the target has FMA (a libm fmaf call without it would cost more than the whole exp).
QE_HD float mul_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

QE_HD float exp_approx(float x) {
  x = x > -87.0f ? x : -87.0f;  // not fminf/fmaxf: calls on SSE2; written so each is one maxps/minps
  x = x < 88.0f ? x : 88.0f;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = mul_add(n, -0.693359375f, x);
  r = mul_add(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = mul_add(p, r, 1.3981999507e-3f);
  p = mul_add(p, r, 8.3334519073e-3f);
  p = mul_add(p, r, 4.1665795894e-2f);
  p = mul_add(p, r, 1.6666665459e-1f);
  p = mul_add(p, r, 5.0000001201e-1f);
  p = mul_add(p, r * r, r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  memcpy(&two_to_n, &bits, sizeof(float));
  return p * two_to_n;
}

QE_HD float silu(float x) { return x / (1.0f + exp_approx(-x)); }

// torch.nn.functional.softplus with beta 1 and threshold 20.
QE_HD float softplus(float x) { return x > 20.0f ? x : log1pf(exp_approx(x)); }

// ---- selective scan ------------------------------------------------------------------------------
// Scales of the scan inputs, in this order, in one float array (device memory on the GPU, so that a
// launch never waits for a host copy).
enum ScanScale : int { kScaleU = 0, kScaleDelta, kScaleB, kScaleC, kScaleZ, kScaleALog, kScaleD, kScaleDeltaBias,
                       kNumScanScales };

// delta = softplus(dequant(delta_q) + dequant(delta_bias_q)).
QE_HD float scan_delta(int8_t delta_q, int8_t delta_bias_q, const float* scales) {
  return softplus(dequantize_int8(delta_q, scales[kScaleDelta]) +
                  dequantize_int8(delta_bias_q, scales[kScaleDeltaBias]));
}

// A = -exp(dequant(A_log_q)).
QE_HD float scan_A(int8_t A_log_q, const float* scales) {
  return -exp_approx(dequantize_int8(A_log_q, scales[kScaleALog]));
}

// One element of the state recurrence: h_t = exp(delta_t * A) * h_{t-1} + (delta_t * u_t) * B_t.
QE_HD float scan_state_update(float h, float delta, float A, float delta_u, float B) {
  return delta_u * B + exp_approx(delta * A) * h;
}

// y_t = (<h_t, C_t> + D * u_t) * silu(z_t), given the already reduced <h_t, C_t>.
QE_HD float scan_output(float h_dot_C, float u, int8_t D_q, int8_t z_q, const float* scales) {
  return (h_dot_C + u * dequantize_int8(D_q, scales[kScaleD])) * silu(dequantize_int8(z_q, scales[kScaleZ]));
}

// ---- causal depthwise conv1d + SiLU + requantize --------------------------------------------------
// acc is the exact int32 sum of k int8 x int8 taps; in_times_weight_scale = in_scale * weight_scale[d]
// (computed in fp32 first, as the reference does); bias = dequant(bias_q[d]).
QE_HD int8_t conv_silu_quantize(int32_t acc, float in_times_weight_scale, float bias, float out_scale) {
  const float y = static_cast<float>(acc) * in_times_weight_scale + bias;
  return quantize_int8(silu(y), out_scale);
}

// ---- RMSNorm + quantize ---------------------------------------------------------------------------
QE_HD float rms_inverse(float sum_of_squares, int d, float eps) {
  return 1.0f / sqrtf(sum_of_squares / static_cast<float>(d) + eps);
}

QE_HD int8_t rmsnorm_element(float x, float inv_rms, float weight, float out_scale) {
  return quantize_int8(x * inv_rms * weight, out_scale);
}

// ---- Hadamard ---------------------------------------------------------------------------------------
// n = K * m with m a power of two: y·Mᵀ = (H_K ⊗ H_m) y / sqrt(n). The 2^k part is a fast Walsh-Hadamard
// butterfly (a + b, a - b); the K part is a dense K x K product with H_K's ±1 entries.
QE_HD void butterfly(float& a, float& b) {
  const float s = a + b;
  b = a - b;
  a = s;
}

QE_HD bool is_power_of_two(long long m) { return m > 0 && (m & (m - 1)) == 0; }

}  // namespace quamba_edge
