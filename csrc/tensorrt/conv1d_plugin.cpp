// TensorRT plugin "QuambaConv1dSiLU" (namespace quamba_edge, version 1): causal depthwise conv1d over the
// int8 in_proj output with the rolling conv state, SiLU, requantized to int8. Prefill and decode alike
// (the state output is a separate buffer). Runs csrc/cuda/conv1d.cu.
//
//   inputs:  x (batch, length, d_inner) int8; conv_state (batch, d_inner, width - 1) int8
//   outputs: u (batch, length, d_inner) int8; conv_state_out (batch, d_inner, width - 1) int8
//   fields:  d_inner, width (int); weight (d_inner * width int8); bias (d_inner int8);
//            weight_scale (1 or d_inner floats); scales (3 floats: in, bias, out)
#include "../cuda/launchers.h"
#include "plugin_base.h"

namespace quamba_edge {
namespace trt {

class Conv1dSiLUPlugin : public PluginBase<Conv1dSiLUPlugin> {
 public:
  static constexpr char const* kName = "QuambaConv1dSiLU";

  explicit Conv1dSiLUPlugin(Fields fields) : fields_(std::move(fields)) {
    d_inner_ = fields_.get_int("d_inner");
    width_ = fields_.get_int("width");
    if (d_inner_ < 1 || width_ < 2 || width_ > 8) throw std::runtime_error("d_inner/width out of range");
    auto const ws = fields_.get_floats("weight_scale").size();
    if (fields_.get_int8s("weight").size() != static_cast<size_t>(d_inner_) * width_ ||
        fields_.get_int8s("bias").size() != static_cast<size_t>(d_inner_) ||
        (ws != 1 && ws != static_cast<size_t>(d_inner_)) || fields_.get_floats("scales").size() != 3)
      throw std::runtime_error("weight, bias, weight_scale or scales do not match d_inner x width");
  }

  int32_t getNbOutputs() const noexcept override { return 2; }

  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t,
                                 int32_t) noexcept override {
    return is_linear(inOut[pos], nvinfer1::DataType::kINT8);
  }

  int32_t getOutputDataTypes(nvinfer1::DataType* types, int32_t nbOutputs, nvinfer1::DataType const*,
                             int32_t) const noexcept override {
    for (int32_t i = 0; i < nbOutputs; ++i) types[i] = nvinfer1::DataType::kINT8;
    return 0;
  }

  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const*, int32_t,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept override {
    if (nbInputs != 2 || nbOutputs != 2) return -1;
    outputs[0] = inputs[0];
    outputs[1] = inputs[1];
    return 0;
  }

  int32_t enqueue(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    auto const& dims = in[0].dims;
    if (dims.nbDims != 3 || dims.d[2] != d_inner_ || in[1].dims.d[2] != width_ - 1) {
      log_error("QuambaConv1dSiLU: input shapes do not match the plugin's d_inner/width");
      return -1;
    }
    auto const& weight = fields_.get_int8s("weight");
    auto const& bias = fields_.get_int8s("bias");
    auto const& weight_scale = fields_.get_floats("weight_scale");
    auto const& scales = fields_.get_floats("scales");
    std::vector<void*> device;
    if (!params_.upload({{weight.data(), weight.size()}, {bias.data(), bias.size()},
                         {weight_scale.data(), weight_scale.size() * sizeof(float)},
                         {scales.data(), scales.size() * sizeof(float)}},
                        device, stream))
      return -1;
    cuda::ConvParams p{};
    p.x = static_cast<int8_t const*>(inputs[0]);
    p.state_in = static_cast<int8_t const*>(inputs[1]);
    p.out = static_cast<int8_t*>(outputs[0]);
    p.state_out = static_cast<int8_t*>(outputs[1]);
    p.weight = static_cast<int8_t const*>(device[0]);
    p.bias = static_cast<int8_t const*>(device[1]);
    p.weight_scale = static_cast<float const*>(device[2]);
    p.per_channel_weight_scale = weight_scale.size() > 1;
    p.scales = static_cast<float const*>(device[3]);
    p.batch = static_cast<int>(dims.d[0]);
    p.length = static_cast<int>(dims.d[1]);
    p.d_inner = d_inner_;
    p.width = width_;
    return cuda::conv1d_silu(p, stream) == cudaSuccess ? 0 : -1;
  }

  Fields fields_;

 private:
  int32_t d_inner_ = 0, width_ = 0;
  DeviceBlob params_;
};

nvinfer1::IPluginCreatorInterface* conv1d_silu_creator() {
  static Creator<Conv1dSiLUPlugin> creator({"d_inner", "width", "weight", "bias", "weight_scale", "scales"});
  return &creator;
}

}  // namespace trt
}  // namespace quamba_edge
