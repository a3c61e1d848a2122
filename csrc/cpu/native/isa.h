// Instruction-set paths of the native CPU decoder and the kernels each one supplies.
//
// Every path computes the same int8 x int8 -> int32 dot products exactly (no saturating instruction
// anywhere), so the integer results, and everything the decoder derives from them, are identical on every
// path; only the fp32 head's summation order differs (within DESIGN.md's 1e-5 relative).
//
//   scalar      plain C++ (any CPU)
//   avx2        x86 AVX2: int8 widened to int16 (vpmovsxbw) then vpmaddwd -> int32 (vpmaddubsw, which
//               saturates at 16 bits, is never used); FMA + F16C for the 16/32-bit head
//   avxvnni     x86 AVX-VNNI (VEX, 256-bit vpdpbusd): u8 x s8 -> int32 with the activation shifted by +128
//               and 128 * row_sum(W) subtracted afterwards (exact)
//   avx512vnni  x86 AVX512-VNNI (512-bit vpdpbusd), the same shift
//   neon        ARMv8.2 dot product (sdot, vdotq_s32: s8 x s8 -> int32), the Jetson Orin's Cortex-A78AE
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace quamba_edge {
namespace native {

enum class Isa : int { kScalar = 0, kAvx2, kAvxVnni, kAvx512Vnni, kNeon };

// The x86 paths that have AVX2: the float code the decoders compile twice (baseline and AVX2) takes its AVX2 copy.
inline bool has_avx2(Isa isa) { return isa == Isa::kAvx2 || isa == Isa::kAvxVnni || isa == Isa::kAvx512Vnni; }

// Packed int8 weights (the layout `pack_s8` writes, once, at load): a row's length is zero-padded to
// k_pad, a multiple of kKAlign bytes (one AVX-512 register); rows are zero-padded to n_pad, a multiple of
// kRowBlock, and each block of kRowBlock rows is stored interleaved in `chunk`-byte pieces
//   [row 0, bytes 0..chunk) [row 1, 0..chunk) [row 2 ...] [row 3 ...] [row 0, chunk..2 chunk) ...
// so that a GEMV reads one sequential stream (measured here: ~2x the bandwidth of four row streams) and each
// activation load serves four rows. chunk is the path's register width in bytes (16, 32 or 64).
// Activation vectors handed to `gemv_s8` are k_pad long, zero-padded.
constexpr int64_t kKAlign = 64;
constexpr int64_t kRowBlock = 4;

inline int64_t pad_k(int64_t k) { return (k + kKAlign - 1) / kKAlign * kKAlign; }
inline int64_t pad_n(int64_t n) { return (n + kRowBlock - 1) / kRowBlock * kRowBlock; }

// W (n, k) row-major int8 -> out (pad_n(n) * pad_k(k)) in the layout above.
void pack_s8(const int8_t* W, int64_t n, int64_t k, int64_t chunk, int8_t* out);

// The 16-bit head is packed the same way (it is the decoder's own converted copy): rows padded to n_pad and
// blocked by kRowBlock, each block interleaved in pieces of kHeadChunk elements (16 bytes); k padded to
// pad8(k) with zeros. The fp32 head is the model's embedding, read in place, row-major.
constexpr int64_t kHeadChunk = 8;

inline int64_t pad8(int64_t k) { return (k + kHeadChunk - 1) / kHeadChunk * kHeadChunk; }

// W (n, k) row-major 16-bit -> out (pad_n(n) * pad8(k)) in the layout above.
void pack_16(const uint16_t* W, int64_t n, int64_t k, uint16_t* out);

struct DotKernels {
  Isa isa;
  int64_t chunk;  // the packed layout's piece size, bytes
  // out[j] = sum_i W[j, i] * x[i] for j in [0, n_pad), exact int32. W: packed (pack_s8 with this chunk);
  // x: k_pad int8 (padding zero); row_sum[j] = sum_i W[j, i] (n_pad entries; used by the VNNI paths);
  // scratch: at least 2 * k_pad bytes, 64-byte aligned, overwritten.
  void (*gemv_s8)(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad, const int8_t* x,
                  void* scratch, int32_t* out);
  // out[j] = sum_i W[j * k + i] * x[i] for j in [0, n), fp32 accumulation; W fp32 row-major (n, k).
  void (*gemv_f32)(const float* W, int64_t n, int64_t k, const float* x, float* out);
  // The same over a pack_16 matrix of IEEE fp16 or bf16 bits: n_pad outputs, x k_pad8 long (zero-padded).
  void (*gemv_f16)(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out);
  void (*gemv_bf16)(const uint16_t* W, int64_t n_pad, int64_t k_pad8, const float* x, float* out);
  // The GEMV for M activation rows at once (prefill): out[m * ldo + j] = sum_i W[j, i] * X[m * ldx + i] for
  // m in [0, M), j in [0, n_pad), exact int32, the same integers gemv_s8 gives row by row. Each packed block of
  // kRowBlock weight rows is read from memory once and reused, from L1, against a few activation rows at a time
  // (held in registers). X: M rows of k_pad int8 (padding zero), row stride ldx; 1 <= M <= kGemmRows;
  // scratch: at least gemm_scratch_bytes(k_pad) bytes, 64-byte aligned, overwritten.
  void (*gemm_s8)(const int8_t* W, const int32_t* row_sum, int64_t n_pad, int64_t k_pad, const int8_t* X,
                  int64_t ldx, int64_t M, void* scratch, int32_t* out, int64_t ldo);
};

// The most activation rows one gemm_s8 call takes (its scratch holds them widened to 16 bits: 2 * kGemmRows *
// k_pad bytes, 192 KiB at k_pad 1536, within a core's L2).
constexpr int64_t kGemmRows = 64;
inline int64_t gemm_scratch_bytes(int64_t k_pad) { return 2 * kGemmRows * k_pad; }

// The kernel table of each path; nullptr where this build has no such path (e.g. neon on x86).
const DotKernels* scalar_kernels();
const DotKernels* avx2_kernels();
const DotKernels* avxvnni_kernels();
const DotKernels* avx512vnni_kernels();
const DotKernels* neon_kernels();

const char* isa_name(Isa isa);
// Parses scalar | avx2 | avxvnni | avx512vnni | neon; throws std::invalid_argument otherwise.
Isa parse_isa(const std::string& name);
// Compiled in and executable on this CPU (CPUID + OS register state on x86, HWCAP on ARM).
bool isa_supported(Isa isa);
// Every supported path, scalar first.
std::vector<Isa> supported_isas();
// The fastest supported path: avx512vnni > avxvnni > avx2 > scalar on x86; neon > scalar on ARM.
Isa best_isa();
// QUAMBA_EDGE_ISA if set (and not "auto"), else best_isa(). Throws std::runtime_error when the forced
// path is unknown or not executable here, naming the supported ones.
Isa select_isa();
const DotKernels& kernels(Isa isa);

// IEEE binary16 and bfloat16 conversions, round to nearest even (as torch's .half() / .bfloat16()).
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);

}  // namespace native
}  // namespace quamba_edge
