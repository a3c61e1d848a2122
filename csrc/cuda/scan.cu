// Selective scan over int8 inputs with an fp32 state (Quamba: int8 in, fp32 recurrence).
//
// Parallel over (batch, channel, state element): each channel owns `lanes` consecutive threads of a
// warp (lanes = d_state rounded up to a power of two, at most 32), each lane `per_lane` state
// elements in registers, and <h_t, C_t> is a butterfly reduction over the lanes. Time runs
// sequentially; B_t and C_t, shared by every channel of a batch row, are dequantized once per chunk
// of steps into shared memory. u, delta and z loads are coalesced across the channels of a warp.
// The decode step is the same kernel with length 1 and state_in == state_out.
#include "launchers.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kSmemFloats = 8192;  // 32 KiB of B and C per block

template <int kPerLane>
__global__ void __launch_bounds__(kThreads) scan_kernel(ScanParams p, int lanes, int chunk) {
  extern __shared__ float smem[];
  float* sB = smem;
  float* sC = smem + chunk * p.d_state;
  float scales[kNumScanScales];
#pragma unroll
  for (int i = 0; i < kNumScanScales; ++i) scales[i] = p.scales[i];

  const int lane = threadIdx.x % lanes;
  const int channel = blockIdx.x * (kThreads / lanes) + threadIdx.x / lanes;
  const bool active = channel < p.d_inner;
  const int c = active ? channel : p.d_inner - 1;  // idle threads still join the shuffles
  const int b = blockIdx.y;
  const int n = p.d_state;

  float A[kPerLane], h[kPerLane];
  const int64_t state_base = (static_cast<int64_t>(b) * p.d_inner + c) * n;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int k = lane + i * lanes;
    A[i] = k < n ? scan_A(p.A_log[c * n + k], scales) : 0.0f;
    h[i] = k < n ? p.state_in[state_base + k] : 0.0f;
  }

  for (int t0 = 0; t0 < p.length; t0 += chunk) {
    const int steps = min(chunk, p.length - t0);
    const int64_t bc_base = (static_cast<int64_t>(b) * p.length + t0) * n;
    __syncthreads();  // the previous chunk is consumed
    for (int i = threadIdx.x; i < steps * n; i += kThreads) {
      sB[i] = dequantize_int8(p.B[bc_base + i], scales[kScaleB]);
      sC[i] = dequantize_int8(p.C[bc_base + i], scales[kScaleC]);
    }
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
      const int64_t idx = (static_cast<int64_t>(b) * p.length + t0 + s) * p.d_inner + c;
      const float dt = scan_delta(p.delta[idx], p.delta_bias[c], scales);
      const float ut = dequantize_int8(p.u[idx], scales[kScaleU]);
      const float dt_u = dt * ut;
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int k = lane + i * lanes;
        if (k < n) {
          h[i] = scan_state_update(h[i], dt, A[i], dt_u, sB[s * n + k]);
          part += h[i] * sC[s * n + k];
        }
      }
      for (int offset = lanes / 2; offset > 0; offset /= 2) part += __shfl_xor_sync(0xffffffffu, part, offset);
      if (lane == 0 && active) p.y[idx] = scan_output(part, ut, p.D[c], p.z[idx], scales);
    }
  }
  if (active) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int k = lane + i * lanes;
      if (k < n) p.state_out[state_base + k] = h[i];
    }
  }
}

template <int kPerLane>
cudaError_t launch(const ScanParams& p, int lanes, cudaStream_t stream) {
  const int chunk = max(1, min(64, kSmemFloats / (2 * p.d_state)));
  const dim3 grid((p.d_inner + kThreads / lanes - 1) / (kThreads / lanes), p.batch);
  const size_t smem = 2 * sizeof(float) * chunk * p.d_state;
  scan_kernel<kPerLane><<<grid, kThreads, smem, stream>>>(p, lanes, chunk);
  return cudaGetLastError();
}

}  // namespace

cudaError_t selective_scan(const ScanParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.d_inner == 0) return cudaSuccess;
  if (p.d_state < 1 || p.d_state > 256 || p.length < 1) return cudaErrorInvalidValue;
  int lanes = 1;
  while (lanes < p.d_state && lanes < 32) lanes *= 2;
  const int per_lane = (p.d_state + lanes - 1) / lanes;
  if (per_lane <= 1) return launch<1>(p, lanes, stream);
  if (per_lane <= 2) return launch<2>(p, lanes, stream);
  if (per_lane <= 4) return launch<4>(p, lanes, stream);
  return launch<8>(p, lanes, stream);
}

}  // namespace cuda
}  // namespace quamba_edge
