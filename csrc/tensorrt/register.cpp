// Entry points TensorRT looks up when it loads this library (IPluginRegistry::loadLibrary, trtexec
// --dynamicPlugins, or the plugin library list of an engine). Creators are not also registered with
// REGISTER_TENSORRT_PLUGIN: loadLibrary refuses a library whose plugins are already registered.
#include <NvInferRuntime.h>

#include <atomic>
#include <string>

#include "plugin_base.h"

namespace quamba_edge {
namespace trt {

nvinfer1::IPluginCreatorInterface* selective_scan_creator();
nvinfer1::IPluginCreatorInterface* conv1d_silu_creator();

namespace {
std::atomic<nvinfer1::ILoggerFinder*> logger_finder{nullptr};
}

void log_error(std::string const& message) noexcept {
  nvinfer1::ILoggerFinder* finder = logger_finder.load();
  nvinfer1::ILogger* logger = finder ? finder->findLogger() : nullptr;
  if (logger) logger->log(nvinfer1::ILogger::Severity::kERROR, ("[quamba_edge] " + message).c_str());
}

}  // namespace trt
}  // namespace quamba_edge

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  quamba_edge::trt::logger_finder.store(finder);
}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {quamba_edge::trt::selective_scan_creator(),
                                                                quamba_edge::trt::conv1d_silu_creator()};
  nbCreators = 2;
  return creators;
}
