// TensorRT plugin "QuambaSelectiveScan" (namespace quamba_edge, version 1): the int8 selective scan with
// the SiLU(z) gate, for prefill (any length) and decode (length 1). It replaces the ONNX Scan loop of
// the portable graph (quamba_edge/export/plugins.py) and runs csrc/cuda/scan.cu.
//
//   inputs:  u, delta, z (batch, length, d_inner) int8; B, C (batch, length, d_state) int8;
//            ssm_state (batch, d_inner, d_state) float32        [order: u, delta, B, C, z, ssm_state]
//   outputs: y (batch, length, d_inner) float32; ssm_state_out (batch, d_inner, d_state) float32
//   fields:  d_inner, d_state (int); scales (8 floats: u, delta, B, C, z, A_log, D, delta_bias);
//            A_log (d_inner * d_state int8), D and delta_bias (d_inner int8)
#include "../cuda/launchers.h"
#include "plugin_base.h"
#include "quamba_edge/kernel_math.h"

namespace quamba_edge {
namespace trt {

class SelectiveScanPlugin : public PluginBase<SelectiveScanPlugin> {
 public:
  static constexpr char const* kName = "QuambaSelectiveScan";
  static constexpr int32_t kInputs = 6;

  explicit SelectiveScanPlugin(Fields fields) : fields_(std::move(fields)) {
    d_inner_ = fields_.get_int("d_inner");
    d_state_ = fields_.get_int("d_state");
    if (d_inner_ < 1 || d_state_ < 1 || d_state_ > 256) throw std::runtime_error("d_inner/d_state out of range");
    if (fields_.get_floats("scales").size() != kNumScanScales) throw std::runtime_error("scales needs 8 values");
    if (fields_.get_int8s("A_log").size() != static_cast<size_t>(d_inner_) * d_state_ ||
        fields_.get_int8s("D").size() != static_cast<size_t>(d_inner_) ||
        fields_.get_int8s("delta_bias").size() != static_cast<size_t>(d_inner_))
      throw std::runtime_error("A_log, D or delta_bias does not match d_inner x d_state");
  }

  int32_t getNbOutputs() const noexcept override { return 2; }

  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t,
                                 int32_t) noexcept override {
    using nvinfer1::DataType;
    return is_linear(inOut[pos], pos < 5 ? DataType::kINT8 : DataType::kFLOAT);
  }

  int32_t getOutputDataTypes(nvinfer1::DataType* types, int32_t nbOutputs, nvinfer1::DataType const*,
                             int32_t) const noexcept override {
    for (int32_t i = 0; i < nbOutputs; ++i) types[i] = nvinfer1::DataType::kFLOAT;
    return 0;
  }

  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const*, int32_t,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept override {
    if (nbInputs != kInputs || nbOutputs != 2) return -1;
    outputs[0] = inputs[0];  // y like u
    outputs[1] = inputs[5];  // the state keeps its shape
    return 0;
  }

  int32_t enqueue(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    auto const& dims = in[0].dims;
    if (dims.nbDims != 3 || dims.d[2] != d_inner_ || in[2].dims.d[2] != d_state_) {
      log_error("QuambaSelectiveScan: input shapes do not match the plugin's d_inner/d_state");
      return -1;
    }
    std::vector<void*> device;
    auto const& A_log = fields_.get_int8s("A_log");
    auto const& D = fields_.get_int8s("D");
    auto const& delta_bias = fields_.get_int8s("delta_bias");
    auto const& scales = fields_.get_floats("scales");
    if (!params_.upload({{A_log.data(), A_log.size()}, {D.data(), D.size()}, {delta_bias.data(), delta_bias.size()},
                         {scales.data(), scales.size() * sizeof(float)}},
                        device, stream))
      return -1;
    cuda::ScanParams p{};
    p.u = static_cast<int8_t const*>(inputs[0]);
    p.delta = static_cast<int8_t const*>(inputs[1]);
    p.B = static_cast<int8_t const*>(inputs[2]);
    p.C = static_cast<int8_t const*>(inputs[3]);
    p.z = static_cast<int8_t const*>(inputs[4]);
    p.state_in = static_cast<float const*>(inputs[5]);
    p.A_log = static_cast<int8_t const*>(device[0]);
    p.D = static_cast<int8_t const*>(device[1]);
    p.delta_bias = static_cast<int8_t const*>(device[2]);
    p.scales = static_cast<float const*>(device[3]);
    p.y = static_cast<float*>(outputs[0]);
    p.state_out = static_cast<float*>(outputs[1]);
    p.batch = static_cast<int>(dims.d[0]);
    p.length = static_cast<int>(dims.d[1]);
    p.d_inner = d_inner_;
    p.d_state = d_state_;
    if (p.length == 0) return cudaMemcpyAsync(p.state_out, p.state_in, sizeof(float) * p.batch * d_inner_ * d_state_,
                                              cudaMemcpyDeviceToDevice, stream) == cudaSuccess ? 0 : -1;
    return cuda::selective_scan(p, stream) == cudaSuccess ? 0 : -1;
  }

  Fields fields_;

 private:
  int32_t d_inner_ = 0, d_state_ = 0;
  DeviceBlob params_;
};

nvinfer1::IPluginCreatorInterface* selective_scan_creator() {
  static Creator<SelectiveScanPlugin> creator({"d_inner", "d_state", "scales", "A_log", "D", "delta_bias"});
  return &creator;
}

}  // namespace trt
}  // namespace quamba_edge
