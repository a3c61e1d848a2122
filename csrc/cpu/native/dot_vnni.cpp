// x86 VNNI paths: vpdpbusd multiplies unsigned bytes by signed bytes and adds each group of four products
// into an int32 lane without saturation (vpdpbusds is the saturating form; never used). The activation
// x (int8) is shifted to u8 = x + 128 once per GEMV; then sum_i (x_i + 128) w_i - 128 * sum_i w_i is the
// exact sum_i x_i w_i, with row_sum[j] = sum_i W[j, i] computed when the weights are packed.
//
//   avx512vnni  512-bit (EVEX) vpdpbusd, 64 bytes of a row per instruction
//   avxvnni     256-bit (VEX) vpdpbusd (Alder Lake and later client cores without AVX-512)
//
// The float head kernels of both are the AVX2 ones. As in dot_avx2.cpp, only functions in the anonymous
// namespace carry a target attribute.
#include "isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define QE_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define QE_AVXVNNI __attribute__((target("avx2,avxvnni")))

namespace quamba_edge {
namespace native {
namespace {

QE_AVX512VNNI void shift_to_u8_512(const int8_t* x, int64_t k_pad, uint8_t* xu) {
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t i = 0; i < k_pad; i += 64)
    _mm512_store_si512(xu + i, _mm512_xor_si512(_mm512_loadu_si512(x + i), bias));
}

// Sum of the 16 lanes (through memory: GCC 12's _mm512_reduce_add_epi32 trips -Wmaybe-uninitialized).
QE_AVX512VNNI inline int32_t hsum512(__m512i a) {
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, a);
  int32_t s = 0;
  for (int i = 0; i < 16; ++i) s += lanes[i];
  return s;
}

constexpr int64_t kChunk512 = 64, kChunk256 = 32;  // one register of int8 per row

QE_AVX512VNNI void gemv_s8_avx512vnni(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad,
                                      const int8_t* x, void* scratch, int32_t* out) {
  uint8_t* xu = static_cast<uint8_t*>(scratch);
  shift_to_u8_512(x, k_pad, xu);
  const int8_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k_pad; i += kChunk512, w += kRowBlock * kChunk512) {
      for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(w + 1024 + 64 * l), _MM_HINT_T0);
      const __m512i xv = _mm512_load_si512(xu + i);
      a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_load_si512(w));
      a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_load_si512(w + kChunk512));
      a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_load_si512(w + 2 * kChunk512));
      a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_load_si512(w + 3 * kChunk512));
    }
    out[j] = hsum512(a0) - 128 * row_sum[j];
    out[j + 1] = hsum512(a1) - 128 * row_sum[j + 1];
    out[j + 2] = hsum512(a2) - 128 * row_sum[j + 2];
    out[j + 3] = hsum512(a3) - 128 * row_sum[j + 3];
  }
}

// The four row sums of four accumulators, minus the +128 shift's 128 * row_sum (a shift by 7: the same int32),
// stored to out[0..4). Through memory and 128-bit adds: GCC 12's 512 -> 256/128-bit extracts and lane shuffles
// trip -Wuninitialized.
QE_AVX512VNNI inline void hsum4_512(__m512i a, __m512i b, __m512i c, __m512i d, const int32_t* row_sum,
                                    int32_t* out) {
  alignas(64) int32_t lanes[4][16];
  _mm512_store_si512(lanes[0], a);
  _mm512_store_si512(lanes[1], b);
  _mm512_store_si512(lanes[2], c);
  _mm512_store_si512(lanes[3], d);
  __m128i r[4];
  for (int k = 0; k < 4; ++k) {
    const __m128i* p = reinterpret_cast<const __m128i*>(lanes[k]);
    r[k] = _mm_add_epi32(_mm_add_epi32(_mm_load_si128(p), _mm_load_si128(p + 1)),
                         _mm_add_epi32(_mm_load_si128(p + 2), _mm_load_si128(p + 3)));
  }
  const __m128i sum = _mm_hadd_epi32(_mm_hadd_epi32(r[0], r[1]), _mm_hadd_epi32(r[2], r[3]));
  const __m128i shift = _mm_slli_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row_sum)), 7);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_sub_epi32(sum, shift));
}

// kT shifted activation rows (u8, row stride k_pad) against one packed block of kRowBlock weight rows.
template <int kT>
QE_AVX512VNNI inline void gemm_block_512(const int8_t* w, int64_t k_pad, const uint8_t* xu, const int32_t* row_sum,
                                         int32_t* out, int64_t ldo) {
  __m512i acc[kT][kRowBlock];
  for (int t = 0; t < kT; ++t)
    for (int r = 0; r < kRowBlock; ++r) acc[t][r] = _mm512_setzero_si512();
  for (int64_t i = 0; i < k_pad; i += kChunk512, w += kRowBlock * kChunk512)
    for (int t = 0; t < kT; ++t) {
      const __m512i xv = _mm512_load_si512(xu + t * k_pad + i);
      for (int r = 0; r < kRowBlock; ++r)
        acc[t][r] = _mm512_dpbusd_epi32(acc[t][r], xv, _mm512_load_si512(w + r * kChunk512));
    }
  for (int t = 0; t < kT; ++t) hsum4_512(acc[t][0], acc[t][1], acc[t][2], acc[t][3], row_sum, out + t * ldo);
}

QE_AVX512VNNI void gemm_s8_avx512vnni(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad,
                                      const int8_t* X, int64_t ldx, int64_t M, void* scratch, int32_t* out,
                                      int64_t ldo) {
  uint8_t* xu = static_cast<uint8_t*>(scratch);  // every row shifted once (M * k_pad u8)
  for (int64_t m = 0; m < M; ++m) shift_to_u8_512(X + m * ldx, k_pad, xu + m * k_pad);
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    const int8_t* w = W + j * k_pad;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) gemm_block_512<4>(w, k_pad, xu + m * k_pad, row_sum + j, out + m * ldo + j, ldo);
    for (; m < M; ++m) gemm_block_512<1>(w, k_pad, xu + m * k_pad, row_sum + j, out + m * ldo + j, ldo);
  }
}

QE_AVXVNNI inline int32_t hsum_epi32(__m256i a) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

QE_AVXVNNI inline __m256i load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

QE_AVXVNNI void gemv_s8_avxvnni(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad,
                                const int8_t* x, void* scratch, int32_t* out) {
  uint8_t* xu = static_cast<uint8_t*>(scratch);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t i = 0; i < k_pad; i += 32)
    _mm256_store_si256(reinterpret_cast<__m256i*>(xu + i),
                       _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), bias));
  const int8_t* w = W;
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < k_pad; i += kChunk256, w += kRowBlock * kChunk256) {
      _mm_prefetch(reinterpret_cast<const char*>(w + 1024), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + 1088), _MM_HINT_T0);
      const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(xu + i));
      a0 = _mm256_dpbusd_avx_epi32(a0, xv, load(w));
      a1 = _mm256_dpbusd_avx_epi32(a1, xv, load(w + kChunk256));
      a2 = _mm256_dpbusd_avx_epi32(a2, xv, load(w + 2 * kChunk256));
      a3 = _mm256_dpbusd_avx_epi32(a3, xv, load(w + 3 * kChunk256));
    }
    out[j] = hsum_epi32(a0) - 128 * row_sum[j];
    out[j + 1] = hsum_epi32(a1) - 128 * row_sum[j + 1];
    out[j + 2] = hsum_epi32(a2) - 128 * row_sum[j + 2];
    out[j + 3] = hsum_epi32(a3) - 128 * row_sum[j + 3];
  }
}

template <int kT>
QE_AVXVNNI inline void gemm_block_256(const int8_t* w, int64_t k_pad, const uint8_t* xu, const int32_t* row_sum,
                                      int32_t* out, int64_t ldo) {
  __m256i acc[kT][kRowBlock];
  for (int t = 0; t < kT; ++t)
    for (int r = 0; r < kRowBlock; ++r) acc[t][r] = _mm256_setzero_si256();
  for (int64_t i = 0; i < k_pad; i += kChunk256, w += kRowBlock * kChunk256)
    for (int t = 0; t < kT; ++t) {
      const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(xu + t * k_pad + i));
      for (int r = 0; r < kRowBlock; ++r) acc[t][r] = _mm256_dpbusd_avx_epi32(acc[t][r], xv, load(w + r * kChunk256));
    }
  for (int t = 0; t < kT; ++t) {
    const __m256i ab = _mm256_hadd_epi32(acc[t][0], acc[t][1]), cd = _mm256_hadd_epi32(acc[t][2], acc[t][3]);
    const __m256i s = _mm256_hadd_epi32(ab, cd);
    const __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    const __m128i shift = _mm_slli_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row_sum)), 7);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + t * ldo), _mm_sub_epi32(sum, shift));
  }
}

QE_AVXVNNI void gemm_s8_avxvnni(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad,
                                const int8_t* X, int64_t ldx, int64_t M, void* scratch, int32_t* out, int64_t ldo) {
  uint8_t* xu = static_cast<uint8_t*>(scratch);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < k_pad; i += 32)
      _mm256_store_si256(reinterpret_cast<__m256i*>(xu + m * k_pad + i),
                         _mm256_xor_si256(load(X + m * ldx + i), bias));
  for (int64_t j = 0; j < n_pad; j += kRowBlock) {
    const int8_t* w = W + j * k_pad;
    int64_t m = 0;
    for (; m + 3 <= M; m += 3) gemm_block_256<3>(w, k_pad, xu + m * k_pad, row_sum + j, out + m * ldo + j, ldo);
    for (; m < M; ++m) gemm_block_256<1>(w, k_pad, xu + m * k_pad, row_sum + j, out + m * ldo + j, ldo);
  }
}

DotKernels with_avx2_floats(Isa isa, int64_t chunk, decltype(DotKernels::gemv_s8) gemv,
                             decltype(DotKernels::gemm_s8) gemm) {
  const DotKernels* f = avx2_kernels();
  return DotKernels{isa, chunk, gemv, f->gemv_f32, f->gemv_f16, f->gemv_bf16, gemm};
}

}  // namespace

const DotKernels* avx512vnni_kernels() {
  static const DotKernels k = with_avx2_floats(Isa::kAvx512Vnni, kChunk512, gemv_s8_avx512vnni, gemm_s8_avx512vnni);
  return &k;
}

const DotKernels* avxvnni_kernels() {
  static const DotKernels k = with_avx2_floats(Isa::kAvxVnni, kChunk256, gemv_s8_avxvnni, gemm_s8_avxvnni);
  return &k;
}

}  // namespace native
}  // namespace quamba_edge

#else

namespace quamba_edge {
namespace native {
const DotKernels* avx512vnni_kernels() { return nullptr; }
const DotKernels* avxvnni_kernels() { return nullptr; }
}  // namespace native
}  // namespace quamba_edge

#endif
