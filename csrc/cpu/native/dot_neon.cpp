// ARM path: ARMv8.2 dot product (sdot: four s8 x s8 products summed into each int32 lane, exact), four
// weight rows a pass; the float head with NEON FMA (fp16 weights widened by fcvtl, bf16 by a 16-bit shift).
// The Jetson Orin's Cortex-A78AE has the dot product extension. Only the functions in the anonymous
// namespace carry the target attribute; the build itself stays plain armv8-a.
#include "isa.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define QE_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

namespace quamba_edge {
namespace native {
namespace {

constexpr int64_t kChunk = 16;  // one int8x16_t per row

QE_DOTPROD void gemv_s8(const int8_t* W, const int32_t*, int64_t n_pad, int64_t k_pad, const int8_t* x, void*,
                        int32_t* out) {
  const int8_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k_pad; i += kChunk, w += kRowBlock * kChunk) {
      __builtin_prefetch(w + 1024);
      const int8x16_t xv = vld1q_s8(x + i);
      a0 = vdotq_s32(a0, vld1q_s8(w), xv);
      a1 = vdotq_s32(a1, vld1q_s8(w + kChunk), xv);
      a2 = vdotq_s32(a2, vld1q_s8(w + 2 * kChunk), xv);
      a3 = vdotq_s32(a3, vld1q_s8(w + 3 * kChunk), xv);
    }
    out[j] = vaddvq_s32(a0);
    out[j + 1] = vaddvq_s32(a1);
    out[j + 2] = vaddvq_s32(a2);
    out[j + 3] = vaddvq_s32(a3);
  }
}

// kT activation rows (row stride k_pad) against one packed block of kRowBlock weight rows: 16 accumulators and
// the block's four weight chunks in registers at kT = 4 (32 q registers).
template <int kT>
QE_DOTPROD inline void gemm_block(const int8_t* w, int64_t k_pad, const int8_t* x, int64_t ldx, int32_t* out,
                                  int64_t ldo) {
  int32x4_t acc[kT][kRowBlock];
  for (int t = 0; t < kT; ++t)
    for (int r = 0; r < kRowBlock; ++r) acc[t][r] = vdupq_n_s32(0);
  for (int64_t i = 0; i < k_pad; i += kChunk, w += kRowBlock * kChunk) {
    int8x16_t wv[kRowBlock];
    for (int r = 0; r < kRowBlock; ++r) wv[r] = vld1q_s8(w + r * kChunk);
    for (int t = 0; t < kT; ++t) {
      const int8x16_t xv = vld1q_s8(x + t * ldx + i);
      for (int r = 0; r < kRowBlock; ++r) acc[t][r] = vdotq_s32(acc[t][r], wv[r], xv);
    }
  }
  for (int t = 0; t < kT; ++t)
    vst1q_s32(out + t * ldo, vpaddq_s32(vpaddq_s32(acc[t][0], acc[t][1]), vpaddq_s32(acc[t][2], acc[t][3])));
}

QE_DOTPROD void gemm_s8(const int8_t* W, const int32_t*, int64_t n_pad, int64_t k_pad, const int8_t* X, int64_t ldx,
                        int64_t M, void*, int32_t* out, int64_t ldo) {
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    const int8_t* w = W + j * k_pad;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) gemm_block<4>(w, k_pad, X + m * ldx, ldx, out + m * ldo + j, ldo);
    for (; m < M; ++m) gemm_block<1>(w, k_pad, X + m * ldx, ldx, out + m * ldo + j, ldo);
  }
}

void gemv_f32(const float* W, int64_t n, int64_t k, const float* x, float* out) {
  const int64_t k4 = k / 4 * 4;
  for (int64_t j = 0; j < n; ++j) {
    const float* w = W + j * k;
    float32x4_t a = vdupq_n_f32(0.0f), b = a;
    int64_t i = 0;
    for (; i + 8 <= k4; i += 8) {
      a = vfmaq_f32(a, vld1q_f32(w + i), vld1q_f32(x + i));
      b = vfmaq_f32(b, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
    }
    for (; i < k4; i += 4) a = vfmaq_f32(a, vld1q_f32(w + i), vld1q_f32(x + i));
    float s = vaddvq_f32(vaddq_f32(a, b));
    for (; i < k; ++i) s += w[i] * x[i];
    out[j] = s;
  }
}

// Eight 16-bit weights -> two float32x4 (fp16 by fcvtl, bf16 by a 16-bit left shift).
template <bool kBF16>
inline void widen8(const uint16_t* p, float32x4_t& lo, float32x4_t& hi) {
  const uint16x8_t v = vld1q_u16(p);
  if (kBF16) {
    lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16));
    hi = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(v), 16));
  } else {
    lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(v)));
    hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(v)));
  }
}

// A pack_16 matrix: one sequential stream, four rows a pass.
template <bool kBF16>
void gemv_packed16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  const uint16_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    float32x4_t a[kRowBlock][2];
    for (auto& r : a) r[0] = r[1] = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < k_pad8; i += kHeadChunk) {
      __builtin_prefetch(w + 512);
      const float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4);
      for (int64_t r = 0; r < kRowBlock; ++r, w += kHeadChunk) {
        float32x4_t lo, hi;
        widen8<kBF16>(w, lo, hi);
        a[r][0] = vfmaq_f32(a[r][0], lo, x0);
        a[r][1] = vfmaq_f32(a[r][1], hi, x1);
      }
    }
    for (int64_t r = 0; r < kRowBlock; ++r) out[j + r] = vaddvq_f32(vaddq_f32(a[r][0], a[r][1]));
  }
}

void gemv_f16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  gemv_packed16<false>(W, n_pad, k_pad8, x, out);
}
void gemv_bf16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  gemv_packed16<true>(W, n_pad, k_pad8, x, out);
}

const DotKernels kNeon{Isa::kNeon, kChunk, gemv_s8, gemv_f32, gemv_f16, gemv_bf16, gemm_s8};

}  // namespace

const DotKernels* neon_kernels() { return &kNeon; }

}  // namespace native
}  // namespace quamba_edge

#else

namespace quamba_edge {
namespace native {
const DotKernels* neon_kernels() { return nullptr; }
}  // namespace native
}  // namespace quamba_edge

#endif
