// What the quamba-edge TensorRT plugins share: their fields (the ONNX node's attributes: read once at
// creation, kept as host vectors, serialized back as the same fields, copied to the GPU on first use),
// the IPluginV3 boilerplate, and the creator. Each plugin adds only its shapes, types and enqueue.
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace quamba_edge {
namespace trt {

constexpr char const* kNamespace = "quamba_edge";
constexpr char const* kVersion = "1";

// Errors go to TensorRT's logger when the library was loaded through loadLibrary (setLoggerFinder).
void log_error(std::string const& message) noexcept;

// A named list of int8 or float32 arrays and int32 scalars, as TensorRT passes plugin fields.
class Fields {
 public:
  void set_int(char const* name, int32_t value) { ints_.push_back({name, {value}}); }
  void set_floats(char const* name, std::vector<float> values) { floats_.push_back({name, std::move(values)}); }
  void set_int8s(char const* name, std::vector<int8_t> values) { int8s_.push_back({name, std::move(values)}); }

  // Copies every field of `fc` (the parser's pointers live only during createPlugin).
  static Fields from(nvinfer1::PluginFieldCollection const* fc) {
    Fields f;
    for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
      auto const& field = fc->fields[i];
      if (field.type == nvinfer1::PluginFieldType::kINT32) {
        f.set_int(field.name, *static_cast<int32_t const*>(field.data));
      } else if (field.type == nvinfer1::PluginFieldType::kFLOAT32) {
        auto const* p = static_cast<float const*>(field.data);
        f.set_floats(field.name, std::vector<float>(p, p + field.length));
      } else if (field.type == nvinfer1::PluginFieldType::kINT8) {
        auto const* p = static_cast<int8_t const*>(field.data);
        f.set_int8s(field.name, std::vector<int8_t>(p, p + field.length));
      }
    }
    return f;
  }

  int32_t get_int(char const* name) const {
    for (auto const& e : ints_)
      if (e.name == name) return e.values.front();
    throw std::runtime_error(std::string("missing int field ") + name);
  }
  std::vector<float> const& get_floats(char const* name) const { return find(floats_, name); }
  std::vector<int8_t> const& get_int8s(char const* name) const { return find(int8s_, name); }

  // The collection TensorRT serializes into the engine (pointers into this object: rebuilt on demand).
  nvinfer1::PluginFieldCollection const* collection() {
    view_.clear();
    for (auto const& e : ints_) view_.emplace_back(e.name.c_str(), e.values.data(), nvinfer1::PluginFieldType::kINT32, 1);
    for (auto const& e : floats_)
      view_.emplace_back(e.name.c_str(), e.values.data(), nvinfer1::PluginFieldType::kFLOAT32,
                         static_cast<int32_t>(e.values.size()));
    for (auto const& e : int8s_)
      view_.emplace_back(e.name.c_str(), e.values.data(), nvinfer1::PluginFieldType::kINT8,
                         static_cast<int32_t>(e.values.size()));
    fc_.nbFields = static_cast<int32_t>(view_.size());
    fc_.fields = view_.data();
    return &fc_;
  }

 private:
  template <typename T>
  struct Entry {
    std::string name;
    std::vector<T> values;
  };
  template <typename T>
  static std::vector<T> const& find(std::vector<Entry<T>> const& entries, char const* name) {
    for (auto const& e : entries)
      if (e.name == name) return e.values;
    throw std::runtime_error(std::string("missing array field ") + name);
  }
  std::vector<Entry<int32_t>> ints_;
  std::vector<Entry<float>> floats_;
  std::vector<Entry<int8_t>> int8s_;
  std::vector<nvinfer1::PluginField> view_;
  nvinfer1::PluginFieldCollection fc_{0, nullptr};
};

// One device allocation holding a plugin's constant arrays, uploaded on the first enqueue.
class DeviceBlob {
 public:
  DeviceBlob() = default;
  DeviceBlob(DeviceBlob const&) : DeviceBlob() {}  // a clone uploads its own copy
  DeviceBlob& operator=(DeviceBlob const&) = delete;
  ~DeviceBlob() {
    if (ptr_) cudaFree(ptr_);
  }

  // Packs the arrays (each aligned to 256 bytes) and returns their device addresses, in order.
  bool upload(std::vector<std::pair<void const*, size_t>> const& arrays, std::vector<void*>& out,
              cudaStream_t stream) {
    if (!ptr_) {
      size_t total = 0;
      for (auto const& a : arrays) total += (a.second + 255) / 256 * 256;
      if (cudaMalloc(&ptr_, total) != cudaSuccess) return false;
      size_t offset = 0;
      for (auto const& a : arrays) {
        char* dst = static_cast<char*>(ptr_) + offset;
        if (cudaMemcpyAsync(dst, a.first, a.second, cudaMemcpyHostToDevice, stream) != cudaSuccess) return false;
        offsets_.push_back(offset);
        offset += (a.second + 255) / 256 * 256;
      }
    }
    out.clear();
    for (size_t o : offsets_) out.push_back(static_cast<char*>(ptr_) + o);
    return true;
  }

 private:
  void* ptr_ = nullptr;
  std::vector<size_t> offsets_;
};

// The creator half shared by both plugins: names, version, namespace, field names for the parser.
template <typename Plugin>
class Creator : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit Creator(std::vector<char const*> field_names) {
    for (char const* name : field_names) names_.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kUNKNOWN, 0);
    fc_.nbFields = static_cast<int32_t>(names_.size());
    fc_.fields = names_.data();
  }
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase) noexcept override {
    try {
      return new Plugin(Fields::from(fc));
    } catch (std::exception const& e) {
      log_error(std::string(Plugin::kName) + " '" + (name ? name : "") + "': " + e.what());
      return nullptr;
    }
  }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &fc_; }
  char const* getPluginName() const noexcept override { return Plugin::kName; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  std::vector<nvinfer1::PluginField> names_;
  nvinfer1::PluginFieldCollection fc_{};
};

// IPluginV3 with the OneCore/OneBuild/OneRuntime capabilities; Derived supplies kName, fields_ and the
// shape, type and enqueue methods.
template <typename Derived>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
      default: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
  }
  nvinfer1::IPluginV3* clone() noexcept override {
    try {
      return new Derived(static_cast<Derived const&>(*this));
    } catch (std::exception const& e) {
      log_error(std::string(Derived::kName) + ": clone failed: " + e.what());
      return nullptr;
    }
  }
  char const* getPluginName() const noexcept override { return Derived::kName; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;
  }
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    return static_cast<Derived*>(this)->fields_.collection();
  }
};

inline bool is_linear(nvinfer1::DynamicPluginTensorDesc const& d, nvinfer1::DataType type) {
  return d.desc.type == type && d.desc.format == nvinfer1::TensorFormat::kLINEAR;
}

}  // namespace trt
}  // namespace quamba_edge
