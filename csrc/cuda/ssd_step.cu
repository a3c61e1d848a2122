// The Mamba-2 SSD decode step (quamba_edge/quant/quamba2.py, models/ssd.py: ssd_recurrent with one token) over the
// int8 conv output xBC with per-channel scales, fp32 state updated in place:
//   dt_h = clamp(softplus(dt_h + dt_bias_h), dt_min, dt_max);  x, B, C = dequant(xBC)
//   S_h (p, n) = exp(dt_h A_h) S_h + (dt_h x_h) B_gᵀ;  y_h = S_h C_g + D_h x_h      (head h reads group h / (H / G))
//
// One block per (head, sequence): the group's B and C dequantized once into shared memory; each warp takes rows of
// the head's state (one row = d_state floats, coalesced across the lanes) and reduces <S_i, C> with shuffles.
#include "launchers.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads) ssd_step_kernel(SsdStepParams p) {
  extern __shared__ float smem[];
  const int h = blockIdx.x, b = blockIdx.y;
  const int n = p.d_state, e = p.d_inner + 2 * p.ngroups * n;
  const int g = h / (p.nheads / p.ngroups);
  const int8_t* xbc = p.xbc + static_cast<int64_t>(b) * e;
  float* sB = smem;
  float* sC = smem + n;
  const int b_off = p.d_inner + g * n, c_off = p.d_inner + p.ngroups * n + g * n;
  for (int k = threadIdx.x; k < n; k += kThreads) {
    sB[k] = dequantize_int8(xbc[b_off + k], p.xbc_scale[b_off + k]);
    sC[k] = dequantize_int8(xbc[c_off + k], p.xbc_scale[c_off + k]);
  }
  __syncthreads();
  float dt = softplus(p.dt[static_cast<int64_t>(b) * p.nheads + h] + p.dt_bias[h]);
  dt = fmaxf(dt, p.dt_min);
  if (p.dt_max > 0.0f) dt = fminf(dt, p.dt_max);
  const float decay = expf(dt * p.A[h]), D = p.D[h];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = kThreads / 32;
  float* S = p.state + (static_cast<int64_t>(b) * p.nheads + h) * p.headdim * n;
  for (int i = warp; i < p.headdim; i += warps) {
    const int c = h * p.headdim + i;
    const float x = dequantize_int8(xbc[c], p.xbc_scale[c]);
    const float dtx = dt * x;
    float part = 0.0f;
    for (int k = lane; k < n; k += 32) {
      const float s = decay * S[i * n + k] + dtx * sB[k];
      S[i * n + k] = s;
      part += s * sC[k];
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) part += __shfl_xor_sync(0xffffffffu, part, off);
    if (lane == 0) p.y[static_cast<int64_t>(b) * p.d_inner + c] = part + x * D;
  }
}

}  // namespace

cudaError_t ssd_step(const SsdStepParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const dim3 grid(p.nheads, p.batch);
  ssd_step_kernel<<<grid, kThreads, 2 * p.d_state * sizeof(float), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace quamba_edge
