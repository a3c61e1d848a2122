// The two quantizing epilogues of a Mamba block, one row (token) per block:
//   rmsnorm_quantize:  fp32 residual -> RMSNorm -> int8 (the input of in_proj)
//   hadamard_quantize: fp32 y -> y·Mᵀ, M = (H_K ⊗ H_m)/√n -> int8 (the input of out_proj); the row sits
//                      in shared memory for log2(m) Walsh-Hadamard butterfly passes and one K x K pass.
#include "launchers.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ float block_sum(float v, float* scratch) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? scratch[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;  // every thread holds the row sum
}

__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(const float* x, const float* weight, float eps,
                                                           const float* out_scale, int8_t* out, int n) {
  __shared__ float scratch[kThreads / 32];
  const float* row = x + static_cast<int64_t>(blockIdx.x) * n;
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += kThreads) sum += row[i] * row[i];
  const float inv = rms_inverse(block_sum(sum, scratch), n, eps);
  const float s = *out_scale;
  for (int i = threadIdx.x; i < n; i += kThreads)
    out[static_cast<int64_t>(blockIdx.x) * n + i] = rmsnorm_element(row[i], inv, weight[i], s);
}

__global__ void __launch_bounds__(kThreads) hadamard_kernel(const float* y, const int8_t* hadamard_K, int K,
                                                            const float* out_scale, int8_t* out, int n) {
  extern __shared__ float X[];  // n floats, then K*K entries of H_K
  float* H = X + n;
  const int m = n / K;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < n; i += kThreads) X[i] = y[base + i];
  for (int i = threadIdx.x; i < K * K; i += kThreads) H[i] = static_cast<float>(hadamard_K[i]);
  __syncthreads();
  for (int h = 1; h < m; h *= 2) {  // each pass: n / 2 independent butterflies at distance h
    for (int p = threadIdx.x; p < n / 2; p += kThreads) {
      const int blk = p / (m / 2), q = p % (m / 2);
      const int a = blk * m + (q / h) * 2 * h + q % h;
      butterfly(X[a], X[a + h]);
    }
    __syncthreads();
  }
  const float root_n = sqrtf(static_cast<float>(n)), s = *out_scale;
  for (int e = threadIdx.x; e < n; e += kThreads) {
    const int row_k = e / m, j = e % m;
    float acc = 0.0f;
    for (int col = 0; col < K; ++col) acc += H[row_k * K + col] * X[col * m + j];
    out[base + e] = quantize_int8(acc / root_n, s);
  }
}

}  // namespace

cudaError_t rmsnorm_quantize(const float* x, const float* weight, float eps, const float* out_scale, int8_t* out,
                             int64_t rows, int n, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (n < 1 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  rmsnorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, weight, eps, out_scale, out, n);
  return cudaGetLastError();
}

cudaError_t hadamard_quantize(const float* y, const int8_t* hadamard_K, int K, const float* out_scale, int8_t* out,
                              int64_t rows, int n, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (K < 1 || n % K != 0 || !is_power_of_two(n / K) || n > kMaxHadamardSize || rows > 0x7fffffff)
    return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * (n + K * K);
  if (smem > 48 * 1024) {  // above the default limit a kernel must opt in (Orin and Hopper allow more)
    const cudaError_t err =
        cudaFuncSetAttribute(hadamard_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  hadamard_kernel<<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(y, hadamard_K, K, out_scale, out, n);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace quamba_edge
