// Causal depthwise conv1d on int8 -> SiLU -> int8 (prefill), and its one-token update with the rolling
// conv state (decode). The taps are summed exactly in int32; the requantization is kernel_math.h's.
#include "launchers.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Input at time p of channel (b, c) of the padded sequence [state, x]: p < 0 reads the state.
__device__ __forceinline__ int8_t conv_input(const ConvParams& k, int b, int c, int p) {
  return p < 0 ? k.state_in[(static_cast<int64_t>(b) * k.d_inner + c) * (k.width - 1) + (k.width - 1) + p]
               : k.x[(static_cast<int64_t>(b) * k.length + p) * k.d_inner + c];
}

__device__ __forceinline__ float in_times_weight_scale(const ConvParams& k, int c) {
  return k.scales[0] * k.weight_scale[k.per_channel_weight_scale ? c : 0];
}

// One thread per output element (b, t, c), c fastest: the x loads and out stores are coalesced.
__global__ void __launch_bounds__(kThreads) conv_prefill_kernel(ConvParams k) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= static_cast<int64_t>(k.batch) * k.length * k.d_inner) return;
  const int c = static_cast<int>(i % k.d_inner);
  const int t = static_cast<int>((i / k.d_inner) % k.length);
  const int b = static_cast<int>(i / (static_cast<int64_t>(k.d_inner) * k.length));
  int32_t acc = 0;
  for (int j = 0; j < k.width; ++j)
    acc += int32_t(k.weight[c * k.width + j]) * int32_t(conv_input(k, b, c, t - (k.width - 1) + j));
  k.out[i] = conv_silu_quantize(acc, in_times_weight_scale(k, c), dequantize_int8(k.bias[c], k.scales[1]),
                                k.scales[2]);
}

// The last width - 1 inputs become the new state (written to a separate buffer: the prefill reads the old).
__global__ void __launch_bounds__(kThreads) conv_state_kernel(ConvParams k) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int w1 = k.width - 1;
  if (i >= static_cast<int64_t>(k.batch) * k.d_inner * w1) return;
  const int j = static_cast<int>(i % w1);
  const int c = static_cast<int>((i / w1) % k.d_inner);
  const int b = static_cast<int>(i / (static_cast<int64_t>(w1) * k.d_inner));
  k.state_out[i] = conv_input(k, b, c, k.length + j - w1);
}

// Decode: one thread per (b, c) reads its window, writes the output, shifts its state in place.
__global__ void __launch_bounds__(kThreads) conv_step_kernel(ConvParams k) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= static_cast<int64_t>(k.batch) * k.d_inner) return;
  const int c = static_cast<int>(i % k.d_inner);
  const int w1 = k.width - 1;
  int8_t* state = k.state_out + i * w1;
  const int8_t x = k.x[i];
  int32_t acc = int32_t(k.weight[c * k.width + w1]) * int32_t(x);
  for (int j = 0; j < w1; ++j) acc += int32_t(k.weight[c * k.width + j]) * int32_t(state[j]);
  k.out[i] = conv_silu_quantize(acc, in_times_weight_scale(k, c), dequantize_int8(k.bias[c], k.scales[1]),
                                k.scales[2]);
  for (int j = 0; j + 1 < w1; ++j) state[j] = state[j + 1];
  state[w1 - 1] = x;
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t conv1d_silu(const ConvParams& p, cudaStream_t stream) {
  if (p.width < 2 || p.state_in == p.state_out) return cudaErrorInvalidValue;
  const int64_t outputs = static_cast<int64_t>(p.batch) * p.length * p.d_inner;
  const int64_t states = static_cast<int64_t>(p.batch) * p.d_inner * (p.width - 1);
  if (outputs > 0) conv_prefill_kernel<<<blocks(outputs), kThreads, 0, stream>>>(p);
  if (states > 0) conv_state_kernel<<<blocks(states), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t conv1d_silu_step(const ConvParams& p, cudaStream_t stream) {
  if (p.width < 2 || p.length != 1) return cudaErrorInvalidValue;
  const int64_t channels = static_cast<int64_t>(p.batch) * p.d_inner;
  if (channels > 0) conv_step_kernel<<<blocks(channels), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace quamba_edge
