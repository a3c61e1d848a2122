// x86 AVX2 path: exact int8 GEMV by widening to int16 (vpmovsxbw) and vpmaddwd (pairs of int16 products
// summed into int32: |a*b + c*d| <= 2 * 128^2, no saturation possible), four weight rows per pass so each
// activation load serves four rows. The 16/32-bit float head with FMA (fp16 via F16C).
//
// Only functions in this file's anonymous namespace carry the AVX2 target attribute, so no inline function
// shared with other translation units is ever compiled for AVX2 (the scalar path stays runnable anywhere).
#include "isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define QE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace quamba_edge {
namespace native {
namespace {

QE_AVX2 inline __m128i hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
  const __m256i s = _mm256_hadd_epi32(ab, cd);
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

QE_AVX2 inline __m256i madd_row(__m256i acc, const int8_t* w, __m256i x16) {
  const __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w16, x16));
}

constexpr int64_t kChunk = 16;  // one __m128i of int8 per row, widened to one __m256i of int16

QE_AVX2 void gemv_s8(const int8_t* W, const int32_t*, int64_t n_pad, int64_t k_pad, const int8_t* x, void* scratch,
                     int32_t* out) {
  int16_t* x16 = static_cast<int16_t*>(scratch);  // the activation widened once, reused by every row
  for (int64_t i = 0; i < k_pad; i += 16)
    _mm256_store_si256(reinterpret_cast<__m256i*>(x16 + i),
                       _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  const int8_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k_pad; i += kChunk, w += kRowBlock * kChunk) {
      _mm_prefetch(reinterpret_cast<const char*>(w + 1024), _MM_HINT_T0);  // one cache line a pass, 16 ahead
      const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x16 + i));
      a0 = madd_row(a0, w, xv);
      a1 = madd_row(a1, w + kChunk, xv);
      a2 = madd_row(a2, w + 2 * kChunk, xv);
      a3 = madd_row(a3, w + 3 * kChunk, xv);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), hsum4_epi32(a0, a1, a2, a3));
  }
}

// kT activation rows (int16, row stride k_pad) against one packed block of kRowBlock weight rows: kT x 4
// accumulators stay in registers (12 + one widened weight chunk at kT = 3; the activations are memory operands),
// each weight chunk is widened once for kT rows.
template <int kT>
QE_AVX2 inline void gemm_block(const int8_t* w, int64_t k_pad, const int16_t* x16, int32_t* out, int64_t ldo) {
  __m256i acc[kT][kRowBlock];
  for (int t = 0; t < kT; ++t)
    for (int r = 0; r < kRowBlock; ++r) acc[t][r] = _mm256_setzero_si256();
  for (int64_t i = 0; i < k_pad; i += kChunk, w += kRowBlock * kChunk) {
    for (int r = 0; r < kRowBlock; ++r) {
      const __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * kChunk)));
      for (int t = 0; t < kT; ++t)
        acc[t][r] = _mm256_add_epi32(
            acc[t][r], _mm256_madd_epi16(w16, _mm256_load_si256(reinterpret_cast<const __m256i*>(x16 + t * k_pad + i))));
    }
  }
  for (int t = 0; t < kT; ++t)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + t * ldo), hsum4_epi32(acc[t][0], acc[t][1], acc[t][2], acc[t][3]));
}

QE_AVX2 void gemm_s8(const int8_t* W, const int32_t*, int64_t n_pad, int64_t k_pad, const int8_t* X, int64_t ldx,
                     int64_t M, void* scratch, int32_t* out, int64_t ldo) {
  int16_t* x16 = static_cast<int16_t*>(scratch);  // every row widened once (M * k_pad int16)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < k_pad; i += 16)
      _mm256_store_si256(reinterpret_cast<__m256i*>(x16 + m * k_pad + i),
                         _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(X + m * ldx + i))));
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    const int8_t* w = W + j * k_pad;
    int64_t m = 0;
    for (; m + 3 <= M; m += 3) gemm_block<3>(w, k_pad, x16 + m * k_pad, out + m * ldo + j, ldo);
    if (M - m == 2) gemm_block<2>(w, k_pad, x16 + m * k_pad, out + m * ldo + j, ldo);
    if (M - m == 1) gemm_block<1>(w, k_pad, x16 + m * k_pad, out + m * ldo + j, ldo);
  }
}

QE_AVX2 inline float hsum_ps(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
  return _mm_cvtss_f32(s);
}

QE_AVX2 void gemv_f32(const float* W, int64_t n, int64_t k, const float* x, float* out) {
  const int64_t k8 = k / 8 * 8;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float *w0 = W + j * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k8; i += 8) {
      const __m256 xv = _mm256_loadu_ps(x + i);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xv, a3);
    }
    float s0 = hsum_ps(a0), s1 = hsum_ps(a1), s2 = hsum_ps(a2), s3 = hsum_ps(a3);
    for (int64_t i = k8; i < k; ++i) {
      s0 += w0[i] * x[i];
      s1 += w1[i] * x[i];
      s2 += w2[i] * x[i];
      s3 += w3[i] * x[i];
    }
    out[j] = s0;
    out[j + 1] = s1;
    out[j + 2] = s2;
    out[j + 3] = s3;
  }
  for (; j < n; ++j) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < k8; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(W + j * k + i), _mm256_loadu_ps(x + i), a);
    float s = hsum_ps(a);
    for (int64_t i = k8; i < k; ++i) s += W[j * k + i] * x[i];
    out[j] = s;
  }
}

QE_AVX2 inline __m256 from_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
}
QE_AVX2 inline __m256 from_bf16(const uint16_t* p) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

// A pack_16 matrix: one sequential stream, four rows a pass, eight lanes each, fp32 accumulate.
template <bool kBF16>
QE_AVX2 void gemv_packed16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  const uint16_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k_pad8; i += kHeadChunk, w += kRowBlock * kHeadChunk) {
      _mm_prefetch(reinterpret_cast<const char*>(w + 512), _MM_HINT_T0);  // one line a pass, 16 ahead
      const __m256 xv = _mm256_loadu_ps(x + i);
      a0 = _mm256_fmadd_ps(kBF16 ? from_bf16(w) : from_f16(w), xv, a0);
      a1 = _mm256_fmadd_ps(kBF16 ? from_bf16(w + 8) : from_f16(w + 8), xv, a1);
      a2 = _mm256_fmadd_ps(kBF16 ? from_bf16(w + 16) : from_f16(w + 16), xv, a2);
      a3 = _mm256_fmadd_ps(kBF16 ? from_bf16(w + 24) : from_f16(w + 24), xv, a3);
    }
    out[j] = hsum_ps(a0);
    out[j + 1] = hsum_ps(a1);
    out[j + 2] = hsum_ps(a2);
    out[j + 3] = hsum_ps(a3);
  }
}

QE_AVX2 void gemv_f16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  gemv_packed16<false>(W, n_pad, k_pad8, x, out);
}
QE_AVX2 void gemv_bf16(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out) {
  gemv_packed16<true>(W, n_pad, k_pad8, x, out);
}

const DotKernels kAvx2{Isa::kAvx2, kChunk, gemv_s8, gemv_f32, gemv_f16, gemv_bf16, gemm_s8};

}  // namespace

const DotKernels* avx2_kernels() { return &kAvx2; }

}  // namespace native
}  // namespace quamba_edge

#else

namespace quamba_edge {
namespace native {
const DotKernels* avx2_kernels() { return nullptr; }
}  // namespace native
}  // namespace quamba_edge

#endif
