// Host entry points of the CUDA kernels, on raw device pointers: the torch bindings (csrc/torch) and
// the TensorRT plugins (csrc/tensorrt) both call these, so the plugin runs exactly the tested kernels.
// Layouts and the order of the scan scales are those of csrc/torch/shapes.h and kernel_math.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace quamba_edge {
namespace cuda {

struct ScanParams {
  const int8_t* u;           // (batch, length, d_inner)
  const int8_t* delta;       // (batch, length, d_inner)
  const int8_t* B;           // (batch, length, d_state)
  const int8_t* C;           // (batch, length, d_state)
  const int8_t* z;           // (batch, length, d_inner)
  const int8_t* A_log;       // (d_inner, d_state)
  const int8_t* D;           // (d_inner)
  const int8_t* delta_bias;  // (d_inner)
  const float* scales;       // kNumScanScales, device memory
  const float* state_in;     // (batch, d_inner, d_state); may equal state_out (decode step, in place)
  float* state_out;          // (batch, d_inner, d_state)
  float* y;                  // (batch, length, d_inner)
  int batch, length, d_inner, d_state;
};

struct ConvParams {
  const int8_t* x;              // (batch, length, d_inner)
  const int8_t* state_in;       // (batch, d_inner, width - 1)
  int8_t* state_out;            // prefill: a different buffer; step: equal to state_in (updated in place)
  const int8_t* weight;         // (d_inner, width)
  const int8_t* bias;           // (d_inner)
  const float* weight_scale;    // 1 or d_inner values
  const float* scales;          // [in, bias, out]
  int8_t* out;                  // (batch, length, d_inner)
  int batch, length, d_inner, width;
  bool per_channel_weight_scale;
};

// Largest row the Hadamard kernel holds in shared memory (fp32): 12288 = 3 · 4096 (Mamba-2.8B: 5120).
constexpr int kMaxHadamardSize = 12288;

// Mamba-2's SSD decode step (ssd_step.cu): one token per sequence, the state updated in place.
struct SsdStepParams {
  const int8_t* xbc;        // (batch, d_inner + 2 ngroups d_state): the conv's int8 output x | B | C
  const float* xbc_scale;   // (d_inner + 2 ngroups d_state)
  const float* dt;          // (batch, nheads): in_proj's dt, dequantized (before dt_bias and softplus)
  const float* dt_bias;     // (nheads)
  const float* A;           // (nheads): -exp(A_log)
  const float* D;           // (nheads)
  float* state;             // (batch, nheads, headdim, d_state) fp32, in place
  float* y;                 // (batch, d_inner)
  int batch, nheads, headdim, ngroups, d_state, d_inner;
  float dt_min, dt_max;     // dt_max <= 0: no upper limit
};

cudaError_t ssd_step(const SsdStepParams& p, cudaStream_t stream);
cudaError_t selective_scan(const ScanParams& p, cudaStream_t stream);
cudaError_t conv1d_silu(const ConvParams& p, cudaStream_t stream);
cudaError_t conv1d_silu_step(const ConvParams& p, cudaStream_t stream);
cudaError_t rmsnorm_quantize(const float* x, const float* weight, float eps, const float* out_scale, int8_t* out,
                             int64_t rows, int n, cudaStream_t stream);
cudaError_t hadamard_quantize(const float* y, const int8_t* hadamard_K, int K, const float* out_scale, int8_t* out,
                              int64_t rows, int n, cudaStream_t stream);

}  // namespace cuda
}  // namespace quamba_edge
