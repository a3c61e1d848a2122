// The plain C++ path (any CPU) and the 16-bit float conversions every path shares.
#include <cstring>

#include "isa.h"

namespace quamba_edge {
namespace native {

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // below half the smallest subnormal
    const uint32_t exp = abs >> 23, mant = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24: mant >> shift is the subnormal's 10-bit field
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t q = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3FFu);
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;  // a carry into the exponent is still right
  return static_cast<uint16_t>(sign | q);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  uint32_t x;
  if (exp == 0x1Fu) {
    x = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  } else {  // zero or subnormal: mant * 2^-24, exact in fp32
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    std::memcpy(&x, &v, 4);
    x |= sign;
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_float(uint16_t h) {
  const uint32_t x = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

void pack_s8(const int8_t* W, int64_t n, int64_t k, int64_t chunk, int8_t* out) {
  const int64_t k_pad = pad_k(k), n_pad = pad_n(n);
  std::memset(out, 0, static_cast<size_t>(n_pad * k_pad));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < k; ++i)
      out[(j / kRowBlock) * kRowBlock * k_pad + (i / chunk) * kRowBlock * chunk + (j % kRowBlock) * chunk + i % chunk] =
          W[j * k + i];
}

void pack_16(const uint16_t* W, int64_t n, int64_t k, uint16_t* out) {
  const int64_t k_pad = pad8(k), n_pad = pad_n(n), c = kHeadChunk;
  std::memset(out, 0, static_cast<size_t>(n_pad * k_pad) * sizeof(uint16_t));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < k; ++i)
      out[(j / kRowBlock) * kRowBlock * k_pad + (i / c) * kRowBlock * c + (j % kRowBlock) * c + i % c] = W[j * k + i];
}

namespace {

constexpr int64_t kChunk = 16;

void gemv_s8(const int8_t* W, const int32_t*, int64_t n_pad, int64_t k_pad, const int8_t* x, void*, int32_t* out) {
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    int32_t acc[kRowBlock] = {0, 0, 0, 0};
    const int8_t* w = W + j * k_pad;
    for (int64_t i = 0; i < k_pad; i += kChunk)
      for (int64_t r = 0; r < kRowBlock; ++r, w += kChunk) {
        int32_t s = 0;
        for (int64_t l = 0; l < kChunk; ++l) s += int32_t(w[l]) * int32_t(x[i + l]);
        acc[r] += s;
      }
    for (int64_t r = 0; r < kRowBlock; ++r) out[j + r] = acc[r];
  }
}

// Row by row: the plain path has no registers to reuse a weight block in.
void gemm_s8(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad, const int8_t* X, int64_t ldx,
             int64_t M, void* scratch, int32_t* out, int64_t ldo) {
  for (int64_t m = 0; m < M; ++m) gemv_s8(W, row_sum, n_pad, k_pad, X + m * ldx, scratch, out + m * ldo);
}

void gemv_f32(const float* W, int64_t n, int64_t k, const float* x, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // eight partial sums, as the vector paths keep
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
      for (int l = 0; l < 8; ++l) acc[l] += W[j * k + i + l] * x[i + l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < k; ++i) s += W[j * k + i] * x[i];
    out[j] = s;
  }
}

template <float (*kLoad)(uint16_t)>
void gemv_packed16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  const uint16_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    float acc[kRowBlock][kHeadChunk] = {};
    for (int64_t i = 0; i < k_pad8; i += kHeadChunk)
      for (int64_t r = 0; r < kRowBlock; ++r, w += kHeadChunk)
        for (int64_t l = 0; l < kHeadChunk; ++l) acc[r][l] += kLoad(w[l]) * x[i + l];
    for (int64_t r = 0; r < kRowBlock; ++r) {
      const float* a = acc[r];
      out[j + r] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
    }
  }
}

void gemv_f16(const uint16_t* W, int64_t n, int64_t k, const float* x, float* out) {
  gemv_packed16<half_to_float>(W, n, k, x, out);
}
void gemv_bf16(const uint16_t* W, int64_t n, int64_t k, const float* x, float* out) {
  gemv_packed16<bf16_to_float>(W, n, k, x, out);
}

const DotKernels kScalar{Isa::kScalar, kChunk, gemv_s8, gemv_f32, gemv_f16, gemv_bf16, gemm_s8};

}  // namespace

const DotKernels* scalar_kernels() { return &kScalar; }

}  // namespace native
}  // namespace quamba_edge
