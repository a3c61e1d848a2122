// torch bindings of the CUDA kernels (built only where torch has CUDA: a GPU machine, the Jetson image).
// Same argument checks as the CPU twins; launches go on the current stream; a launch error is raised.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "../cuda/launchers.h"
#include "shapes.h"

namespace quamba_edge {
namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "quamba_edge::", op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

cuda::ScanParams scan_params(const ScanDims& s, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B,
                             const at::Tensor& C, const at::Tensor& z, const at::Tensor& A_log, const at::Tensor& D,
                             const at::Tensor& delta_bias, const at::Tensor& scales) {
  cuda::ScanParams p{};
  p.u = u.data_ptr<int8_t>();
  p.delta = delta.data_ptr<int8_t>();
  p.B = B.data_ptr<int8_t>();
  p.C = C.data_ptr<int8_t>();
  p.z = z.data_ptr<int8_t>();
  p.A_log = A_log.data_ptr<int8_t>();
  p.D = D.data_ptr<int8_t>();
  p.delta_bias = delta_bias.data_ptr<int8_t>();
  p.scales = scales.data_ptr<float>();
  p.batch = static_cast<int>(s.batch);
  p.length = static_cast<int>(s.length);
  p.d_inner = static_cast<int>(s.d_inner);
  p.d_state = static_cast<int>(s.d_state);
  return p;
}

std::tuple<at::Tensor, at::Tensor> selective_scan_cuda(const at::Tensor& u, const at::Tensor& delta,
                                                       const at::Tensor& B, const at::Tensor& C, const at::Tensor& z,
                                                       const at::Tensor& A_log, const at::Tensor& D,
                                                       const at::Tensor& delta_bias, const at::Tensor& scales,
                                                       const at::Tensor& ssm_state) {
  const auto s = check_scan("selective_scan", false, u, delta, B, C, z, A_log, D, delta_bias, scales, ssm_state);
  const c10::cuda::CUDAGuard guard(u.device());
  at::Tensor y = at::empty({s.batch, s.length, s.d_inner}, u.options().dtype(at::kFloat));
  at::Tensor state = at::empty_like(ssm_state);
  if (s.length == 0) return {y, ssm_state.clone()};
  auto p = scan_params(s, u, delta, B, C, z, A_log, D, delta_bias, scales);
  p.state_in = ssm_state.data_ptr<float>();
  p.state_out = state.data_ptr<float>();
  p.y = y.data_ptr<float>();
  check_launch(cuda::selective_scan(p, c10::cuda::getCurrentCUDAStream().stream()), "selective_scan");
  return {y, state};
}

at::Tensor selective_scan_step_cuda(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B,
                                    const at::Tensor& C, const at::Tensor& z, const at::Tensor& A_log,
                                    const at::Tensor& D, const at::Tensor& delta_bias, const at::Tensor& scales,
                                    at::Tensor ssm_state) {
  const auto s = check_scan("selective_scan_step", true, u, delta, B, C, z, A_log, D, delta_bias, scales, ssm_state);
  const c10::cuda::CUDAGuard guard(u.device());
  at::Tensor y = at::empty({s.batch, s.d_inner}, u.options().dtype(at::kFloat));
  auto p = scan_params(s, u, delta, B, C, z, A_log, D, delta_bias, scales);
  p.state_in = ssm_state.data_ptr<float>();
  p.state_out = ssm_state.data_ptr<float>();
  p.y = y.data_ptr<float>();
  check_launch(cuda::selective_scan(p, c10::cuda::getCurrentCUDAStream().stream()), "selective_scan_step");
  return y;
}

cuda::ConvParams conv_params(const ConvDims& k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const at::Tensor& weight_scale, const at::Tensor& scales) {
  cuda::ConvParams p{};
  p.x = x.data_ptr<int8_t>();
  p.weight = weight.data_ptr<int8_t>();
  p.bias = bias.data_ptr<int8_t>();
  p.weight_scale = weight_scale.data_ptr<float>();
  p.per_channel_weight_scale = weight_scale.numel() > 1;
  p.scales = scales.data_ptr<float>();
  p.batch = static_cast<int>(k.batch);
  p.length = static_cast<int>(k.length);
  p.d_inner = static_cast<int>(k.d_inner);
  p.width = static_cast<int>(k.width);
  return p;
}

std::tuple<at::Tensor, at::Tensor> conv1d_silu_cuda(const at::Tensor& x, const at::Tensor& conv_state,
                                                    const at::Tensor& weight, const at::Tensor& bias,
                                                    const at::Tensor& weight_scale, const at::Tensor& scales) {
  const auto k = check_conv("conv1d_silu", false, x, conv_state, weight, bias, weight_scale, scales);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  at::Tensor new_state = at::empty_like(conv_state);
  auto p = conv_params(k, x, weight, bias, weight_scale, scales);
  p.state_in = conv_state.data_ptr<int8_t>();
  p.state_out = new_state.data_ptr<int8_t>();
  p.out = out.data_ptr<int8_t>();
  check_launch(cuda::conv1d_silu(p, c10::cuda::getCurrentCUDAStream().stream()), "conv1d_silu");
  return {out, new_state};
}

at::Tensor conv1d_silu_step_cuda(const at::Tensor& x, at::Tensor conv_state, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& weight_scale, const at::Tensor& scales) {
  const auto k = check_conv("conv1d_silu_step", true, x, conv_state, weight, bias, weight_scale, scales);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  auto p = conv_params(k, x, weight, bias, weight_scale, scales);
  p.state_in = conv_state.data_ptr<int8_t>();
  p.state_out = conv_state.data_ptr<int8_t>();
  p.out = out.data_ptr<int8_t>();
  check_launch(cuda::conv1d_silu_step(p, c10::cuda::getCurrentCUDAStream().stream()), "conv1d_silu_step");
  return out;
}

at::Tensor rmsnorm_quantize_cuda(const at::Tensor& x, const at::Tensor& weight, double eps,
                                 const at::Tensor& out_scale) {
  const auto r = check_rows("rmsnorm_quantize", x, "x");
  check_arg("rmsnorm_quantize", weight, "weight", at::kFloat, 1, "(features)", x.device());
  check_size("rmsnorm_quantize", weight, "weight", 0, r.n, "x's last dim");
  check_numel("rmsnorm_quantize", out_scale, "out_scale", {1}, x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x, x.options().dtype(at::kChar));
  check_launch(cuda::rmsnorm_quantize(x.data_ptr<float>(), weight.data_ptr<float>(), static_cast<float>(eps),
                                      out_scale.data_ptr<float>(), out.data_ptr<int8_t>(), r.rows,
                                      static_cast<int>(r.n), c10::cuda::getCurrentCUDAStream().stream()),
               "rmsnorm_quantize");
  return out;
}

at::Tensor hadamard_quantize_cuda(const at::Tensor& y, const at::Tensor& hadamard_K, const at::Tensor& out_scale) {
  const auto r = check_rows("hadamard_quantize", y, "y");
  const int64_t K = check_hadamard("hadamard_quantize", y, hadamard_K);
  check_numel("hadamard_quantize", out_scale, "out_scale", {1}, y.device());
  TORCH_CHECK(r.n <= cuda::kMaxHadamardSize, "quamba_edge::hadamard_quantize: rows of ", r.n,
              " exceed the CUDA kernel's shared-memory row of ", cuda::kMaxHadamardSize);
  const c10::cuda::CUDAGuard guard(y.device());
  at::Tensor out = at::empty_like(y, y.options().dtype(at::kChar));
  check_launch(cuda::hadamard_quantize(y.data_ptr<float>(), hadamard_K.data_ptr<int8_t>(), static_cast<int>(K),
                                       out_scale.data_ptr<float>(), out.data_ptr<int8_t>(), r.rows,
                                       static_cast<int>(r.n), c10::cuda::getCurrentCUDAStream().stream()),
               "hadamard_quantize");
  return out;
}

at::Tensor ssd_step_cuda(const at::Tensor& xbc, const at::Tensor& xbc_scale, const at::Tensor& dt,
                         const at::Tensor& dt_bias, const at::Tensor& A, const at::Tensor& D, at::Tensor ssm_state,
                         int64_t ngroups, double dt_min, double dt_max) {
  const char* op = "ssd_step";
  check_arg(op, ssm_state, "ssm_state", at::kFloat, 4, "(batch, nheads, headdim, d_state)", xbc.device());
  const int64_t batch = ssm_state.size(0), H = ssm_state.size(1), P = ssm_state.size(2), N = ssm_state.size(3);
  TORCH_CHECK(ngroups > 0 && H % ngroups == 0, "quamba_edge::ssd_step: ", H, " heads do not split into ", ngroups,
              " groups");
  const int64_t d = H * P, e = d + 2 * ngroups * N;
  check_arg(op, xbc, "xbc", at::kChar, 2, "(batch, d_inner + 2 ngroups d_state)", xbc.device());
  check_size(op, xbc, "xbc", 0, batch, "ssm_state's batch");
  check_size(op, xbc, "xbc", 1, e, "d_inner + 2 ngroups d_state");
  check_arg(op, dt, "dt", at::kFloat, 2, "(batch, nheads)", xbc.device());
  check_size(op, dt, "dt", 1, H, "nheads");
  check_numel(op, xbc_scale, "xbc_scale", {e}, xbc.device());
  for (const auto& [t, name] : {std::pair{&dt_bias, "dt_bias"}, {&A, "A"}, {&D, "D"}})
    check_numel(op, *t, name, {H}, xbc.device());
  const c10::cuda::CUDAGuard guard(xbc.device());
  at::Tensor y = at::empty({batch, d}, xbc.options().dtype(at::kFloat));
  cuda::SsdStepParams p{};
  p.xbc = xbc.data_ptr<int8_t>();
  p.xbc_scale = xbc_scale.data_ptr<float>();
  p.dt = dt.data_ptr<float>();
  p.dt_bias = dt_bias.data_ptr<float>();
  p.A = A.data_ptr<float>();
  p.D = D.data_ptr<float>();
  p.state = ssm_state.data_ptr<float>();
  p.y = y.data_ptr<float>();
  p.batch = static_cast<int>(batch), p.nheads = static_cast<int>(H), p.headdim = static_cast<int>(P);
  p.ngroups = static_cast<int>(ngroups), p.d_state = static_cast<int>(N), p.d_inner = static_cast<int>(d);
  p.dt_min = static_cast<float>(dt_min), p.dt_max = static_cast<float>(dt_max);
  check_launch(cuda::ssd_step(p, c10::cuda::getCurrentCUDAStream().stream()), op);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(quamba_edge, CUDA, m) {
  m.impl("selective_scan", &selective_scan_cuda);
  m.impl("selective_scan_step", &selective_scan_step_cuda);
  m.impl("conv1d_silu", &conv1d_silu_cuda);
  m.impl("conv1d_silu_step", &conv1d_silu_step_cuda);
  m.impl("rmsnorm_quantize", &rmsnorm_quantize_cuda);
  m.impl("hadamard_quantize", &hadamard_quantize_cuda);
  m.impl("ssd_step", &ssd_step_cuda);
}

}  // namespace quamba_edge
