// Argument checks shared by the CPU and CUDA bindings: a wrong tensor is a clear error naming the fix,
// never an out-of-bounds read. Kernels index raw pointers, so dtype, rank, size and contiguity are all
// checked before any launch.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace quamba_edge {

// torch's Python names (c10 calls int8 "Char").
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    default: return c10::toString(t);
  }
}

inline std::string describe(const at::Tensor& t) {
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i) shape += (i ? ", " : "") + std::to_string(t.size(i));
  return dtype_name(t.scalar_type()) + " " + shape + ")" +
         (t.is_contiguous() ? "" : " non-contiguous") + " on " + t.device().str();
}

// dtype, rank, contiguity and device of one argument; `layout` names the expected dims for the message.
inline void check_arg(const char* op, const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t dim,
                      const char* layout, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == dim && t.is_contiguous() && t.device() == device,
              "quamba_edge::", op, ": ", name, " must be a contiguous ", dtype_name(dtype), " tensor ", layout,
              " on ", device.str(), ", got ", describe(t),
              ". Fix: pass .contiguous() and the dtype above (the kernels read raw memory).");
}

inline void check_size(const char* op, const at::Tensor& t, const char* name, int64_t dim, int64_t expected,
                       const char* what) {
  TORCH_CHECK(t.size(dim) == expected, "quamba_edge::", op, ": ", name, " has size ", t.size(dim), " in dim ", dim,
              " but ", what, " is ", expected, " (", name, ": ", describe(t), ")");
}

inline void check_numel(const char* op, const at::Tensor& t, const char* name, std::vector<int64_t> allowed,
                        const at::Device& device) {
  bool ok = t.scalar_type() == at::kFloat && t.is_contiguous() && t.device() == device;
  bool size_ok = false;
  for (int64_t n : allowed) size_ok |= t.numel() == n;
  TORCH_CHECK(ok && size_ok, "quamba_edge::", op, ": ", name, " must be a contiguous float32 tensor on ",
              device.str(), " with ", allowed.front(), allowed.size() > 1 ? " or " + std::to_string(allowed.back()) : "",
              " elements, got ", describe(t));
}

// Largest d_state the kernels hold in registers (Mamba uses 16).
constexpr int64_t kMaxStateSize = 256;

}  // namespace quamba_edge
