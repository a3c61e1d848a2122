// Python binding of the native decoder (a pybind11 module built by quamba_edge/native.py through
// torch.utils.cpp_extension). Tensors come in once, at construction, in the order native.py's `pack`
// writes them; each step then passes only the token ids, the states (updated in place) and the logits
// buffer, and runs without the GIL and without allocating.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "decoder.h"
#include "mamba2.h"

namespace quamba_edge {
namespace native {
namespace {

// Per-layer tensors, in this order (quamba_edge/native.py: LAYER_TENSORS).
enum LayerTensor : int {
  kNormW = 0, kInW, kInScale, kInBias, kXW, kXScale, kDtW, kDtScale, kOutW, kOutScale, kOutBias,
  kConvW, kConvScale, kConvBias, kALog, kD, kDeltaBias, kScanScales, kHadamardK, kNumLayerTensors
};
// Per-layer floats (LAYER_FLOATS).
enum LayerFloat : int { kNormEps = 0, kNormScale, kInOut, kXOut, kDtOut, kUScale, kYScale, kNumLayerFloats };

void check(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const std::string& name) {
  TORCH_CHECK(t.device().is_cpu(), "native decoder: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, "native decoder: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "native decoder: ", name, " must be contiguous");
  TORCH_CHECK(numel < 0 || t.numel() == numel, "native decoder: ", name, " has ", t.numel(), " elements, expected ",
              numel);
}

// The head a decoder runs: "fp32" | "fp16" | "bf16" | "int8" (then its per-channel weight (vocab, d_model) int8,
// scale (vocab) and static input scale).
struct HeadChoice {
  HeadKind kind;
  LinearSpec int8;
  float in_scale;
};
HeadChoice choose_head(const std::string& head, const at::Tensor& weight, const at::Tensor& scale, double in_scale,
                       int64_t vocab, int64_t dm) {
  if (head == "fp32") return {HeadKind::kF32, {}, 1.0f};
  if (head == "fp16") return {HeadKind::kF16, {}, 1.0f};
  if (head == "bf16") return {HeadKind::kBF16, {}, 1.0f};
  TORCH_CHECK(head == "int8", "native decoder: head must be fp32, fp16, bf16 or int8, not '", head, "'");
  check(weight, at::kChar, vocab * dm, "int8 head weight (vocab, d_model)");
  check(scale, at::kFloat, vocab, "int8 head scale (vocab)");
  return {HeadKind::kInt8, LinearSpec{weight.data_ptr<int8_t>(), vocab, dm, scale.data_ptr<float>(), nullptr, 0.0f},
          static_cast<float>(in_scale)};
}

template <class T>
const T* optional_ptr(const at::Tensor& t) {
  return t.numel() == 0 ? nullptr : t.data_ptr<T>();
}

class PyDecoder {
 public:
  PyDecoder(std::vector<int64_t> dims, at::Tensor embedding, at::Tensor norm_f_weight, double norm_f_eps,
            const std::string& head, at::Tensor head_weight, at::Tensor head_scale, double head_in_scale,
            const std::string& isa) {
    TORCH_CHECK(dims.size() == 6, "dims: [d_model, d_inner, d_state, d_conv, rank, vocab]");
    ModelSpec s;
    s.d_model = dims[0], s.d_inner = dims[1], s.d_state = dims[2], s.d_conv = dims[3], s.rank = dims[4];
    s.vocab = dims[5];
    const int64_t dm = s.d_model;
    check(embedding, at::kFloat, s.vocab * dm, "embedding (vocab, d_model)");
    check(norm_f_weight, at::kFloat, dm, "norm_f weight");
    s.embedding = embedding.data_ptr<float>();
    s.norm_f_weight = norm_f_weight.data_ptr<float>();
    s.norm_f_eps = static_cast<float>(norm_f_eps);
    keep_ = {embedding, norm_f_weight, head_weight, head_scale};
    const HeadChoice h = choose_head(head, head_weight, head_scale, head_in_scale, s.vocab, dm);
    s.head = h.kind, s.int8_head = h.int8, s.head_in_scale = h.in_scale;
    const Isa chosen = isa.empty() ? select_isa() : parse_isa(isa);
    TORCH_CHECK(isa_supported(chosen), "native decoder: ISA ", isa, " cannot run on this CPU");
    dec_ = std::make_unique<Decoder>(s, chosen);  // packs the head; the embedding stays shared
    dims_ = dims;
  }

  // Packs (copies) layer n_layer(): the tensors may be released when this returns.
  void add_layer(const std::vector<at::Tensor>& t, const std::vector<double>& f) {
    const int64_t dm = dims_[0], d = dims_[1], n = dims_[2], d_conv = dims_[3], r = dims_[4];
    const std::string at = "layer " + std::to_string(n_layer_) + " ";
    TORCH_CHECK(t.size() == kNumLayerTensors && f.size() == kNumLayerFloats, at, "has the wrong number of entries");
    check(t[kNormW], at::kFloat, dm, at + "norm weight");
    check(t[kInW], at::kChar, 2 * d * dm, at + "in_proj weight");
    check(t[kXW], at::kChar, (r + 2 * n) * d, at + "x_proj weight");
    check(t[kDtW], at::kChar, d * r, at + "dt_proj weight");
    check(t[kOutW], at::kChar, dm * d, at + "out_proj weight");
    for (auto [k, size] : {std::pair{kInScale, 2 * d}, {kXScale, r + 2 * n}, {kDtScale, d}, {kOutScale, dm}})
      check(t[k], at::kFloat, size, at + "linear scale");
    check(t[kInBias], at::kFloat, t[kInBias].numel() ? 2 * d : 0, at + "in_proj bias");
    check(t[kOutBias], at::kFloat, t[kOutBias].numel() ? dm : 0, at + "out_proj bias");
    check(t[kConvW], at::kChar, d * d_conv, at + "conv weight");
    check(t[kConvScale], at::kFloat, d, at + "conv scale");
    check(t[kConvBias], at::kFloat, d, at + "conv bias");
    check(t[kALog], at::kChar, d * n, at + "A_log");
    check(t[kD], at::kChar, d, at + "D");
    check(t[kDeltaBias], at::kChar, d, at + "delta_bias");
    check(t[kScanScales], at::kFloat, 8, at + "scan scales");
    check(t[kHadamardK], at::kChar, -1, at + "hadamard_K");
    LayerSpec L;
    L.norm_weight = t[kNormW].data_ptr<float>();
    L.norm_eps = static_cast<float>(f[kNormEps]);
    L.norm_scale = static_cast<float>(f[kNormScale]);
    L.in_proj = {t[kInW].data_ptr<int8_t>(), 2 * d, dm, t[kInScale].data_ptr<float>(), optional_ptr<float>(t[kInBias]),
                 static_cast<float>(f[kInOut])};
    L.x_proj = {t[kXW].data_ptr<int8_t>(), r + 2 * n, d, t[kXScale].data_ptr<float>(), nullptr,
                static_cast<float>(f[kXOut])};
    L.dt_proj = {t[kDtW].data_ptr<int8_t>(), d, r, t[kDtScale].data_ptr<float>(), nullptr, static_cast<float>(f[kDtOut])};
    L.out_proj = {t[kOutW].data_ptr<int8_t>(), dm, d, t[kOutScale].data_ptr<float>(), optional_ptr<float>(t[kOutBias]),
                  0.0f};
    L.conv_weight = t[kConvW].data_ptr<int8_t>();
    L.conv_scale = t[kConvScale].data_ptr<float>();
    L.conv_bias = t[kConvBias].data_ptr<float>();
    L.u_scale = static_cast<float>(f[kUScale]);
    L.A_log = t[kALog].data_ptr<int8_t>();
    L.D = t[kD].data_ptr<int8_t>();
    L.delta_bias = t[kDeltaBias].data_ptr<int8_t>();
    std::copy(t[kScanScales].data_ptr<float>(), t[kScanScales].data_ptr<float>() + 8, L.scan_scales);
    if (t[kHadamardK].numel() > 0) {
      TORCH_CHECK(t[kHadamardK].dim() == 2 && t[kHadamardK].size(0) == t[kHadamardK].size(1), at,
                  "hadamard_K must be (K, K)");
      L.hadamard_K = t[kHadamardK].data_ptr<int8_t>();
      L.K = t[kHadamardK].size(0);
    }
    L.y_scale = static_cast<float>(f[kYScale]);
    dec_->add_layer(L);
    ++n_layer_;
  }

  void step(const at::Tensor& ids, at::Tensor conv_state, at::Tensor ssm_state, at::Tensor logits,
            const std::vector<std::vector<at::Tensor>>& traces) {
    const int64_t b = ids.numel();
    check(ids, at::kLong, -1, "token ids");
    check_states(b, conv_state, ssm_state, n_layer_);
    check(logits, at::kFloat, b * dims_[5], "logits (batch, vocab)");
    std::vector<Trace> tr = make_traces(traces, b);
    {
      pybind11::gil_scoped_release nogil;
      dec_->step(ids.data_ptr<int64_t>(), b, conv_state.data_ptr<int8_t>(), ssm_state.data_ptr<float>(),
                 logits.data_ptr<float>(), tr.empty() ? nullptr : tr.data());
    }
  }

  // ids (batch, length) int64; states as step (read, then advanced over the whole prompt); logits (batch, vocab)
  // of the last position; traces: per layer six int8 tensors of (batch, length, width), or none.
  void prefill(const at::Tensor& ids, at::Tensor conv_state, at::Tensor ssm_state, at::Tensor logits,
               const std::vector<std::vector<at::Tensor>>& traces) {
    check(ids, at::kLong, -1, "token ids (batch, length)");
    TORCH_CHECK(ids.dim() == 2 && ids.size(0) > 0 && ids.size(1) > 0, "native decoder: prefill takes token ids "
                "(batch, length) with batch, length >= 1, got shape ", ids.sizes());
    const int64_t b = ids.size(0), length = ids.size(1);
    check_states(b, conv_state, ssm_state, n_layer_);
    check(logits, at::kFloat, b * dims_[5], "logits (batch, vocab)");
    std::vector<Trace> tr = make_traces(traces, b * length);
    pybind11::gil_scoped_release nogil;
    dec_->prefill(ids.data_ptr<int64_t>(), b, length, conv_state.data_ptr<int8_t>(), ssm_state.data_ptr<float>(),
                  logits.data_ptr<float>(), tr.empty() ? nullptr : tr.data());
  }

  void layer(int64_t i, at::Tensor h, at::Tensor conv_state, at::Tensor ssm_state,
             const std::vector<at::Tensor>& trace) {
    TORCH_CHECK(i >= 0 && i < n_layer_, "native decoder: layer ", i, " out of range");
    check(h, at::kFloat, -1, "h (batch, d_model)");
    const int64_t b = h.numel() / dims_[0];
    check(h, at::kFloat, b * dims_[0], "h (batch, d_model)");
    check_states(b, conv_state, ssm_state, 1);
    std::vector<Trace> tr = make_traces(trace.empty() ? std::vector<std::vector<at::Tensor>>{}
                                                      : std::vector<std::vector<at::Tensor>>{trace}, b);
    pybind11::gil_scoped_release nogil;
    dec_->layer(i, h.data_ptr<float>(), b, conv_state.data_ptr<int8_t>(), ssm_state.data_ptr<float>(),
                tr.empty() ? nullptr : tr.data());
  }

  void head(const at::Tensor& h, at::Tensor logits) {
    check(h, at::kFloat, -1, "h (batch, d_model)");
    const int64_t b = h.numel() / dims_[0];
    check(h, at::kFloat, b * dims_[0], "h (batch, d_model)");
    check(logits, at::kFloat, b * dims_[5], "logits (batch, vocab)");
    pybind11::gil_scoped_release nogil;
    dec_->head(h.data_ptr<float>(), b, logits.data_ptr<float>());
  }

  std::string isa() const { return isa_name(dec_->isa()); }
  int64_t packed_bytes() const { return dec_->packed_bytes(); }

 private:
  void check_states(int64_t b, const at::Tensor& conv, const at::Tensor& ssm, int64_t layers) const {
    const int64_t d = dims_[1];
    check(conv, at::kChar, layers * b * d * (dims_[3] - 1), "conv_state (n_layer, batch, d_inner, d_conv - 1)");
    check(ssm, at::kFloat, layers * b * d * dims_[2], "ssm_state (n_layer, batch, d_inner, d_state)");
  }

  // Six int8 tensors per layer: xn (b, d_model), xz (b, 2d), u (b, d), dbc (b, r + 2n), delta (b, d), y (b, d)
  // (b: the number of rows, batch * length for a prefill).
  std::vector<Trace> make_traces(const std::vector<std::vector<at::Tensor>>& traces, int64_t b) const {
    std::vector<Trace> out;
    if (traces.empty()) return out;
    const int64_t dm = dims_[0], d = dims_[1], nx = dims_[4] + 2 * dims_[2];
    const int64_t widths[6] = {dm, 2 * d, d, nx, d, d};
    for (const auto& t : traces) {
      TORCH_CHECK(t.size() == 6, "a trace is six int8 tensors: xn, xz, u, dbc, delta, y");
      for (int k = 0; k < 6; ++k) check(t[k], at::kChar, b * widths[k], "trace tensor " + std::to_string(k));
      out.push_back(Trace{t[0].data_ptr<int8_t>(), t[1].data_ptr<int8_t>(), t[2].data_ptr<int8_t>(),
                          t[3].data_ptr<int8_t>(), t[4].data_ptr<int8_t>(), t[5].data_ptr<int8_t>()});
    }
    return out;
  }

  std::unique_ptr<Decoder> dec_;
  std::vector<at::Tensor> keep_;  // the embedding (read in place by the fp32 head) and the head tensors
  std::vector<int64_t> dims_;
  int64_t n_layer_ = 0;
};

// The Mamba-2 decoder (mamba2.h). dims: d_model, d_inner, nheads, headdim, ngroups, d_state, d_conv, vocab;
// floats: dt_min, dt_max (0: none), the gated norm's eps. Layer tensors in quamba_edge/kernels/native.py's
// MAMBA2_LAYER_TENSORS order, floats in MAMBA2_LAYER_FLOATS order.
enum Mamba2Tensor : int {
  k2NormW = 0, k2InW, k2InScale, k2InBias, k2ProjScale, k2ConvW, k2ConvScale, k2ConvBias, k2XbcScale, k2DtBias, k2A,
  k2D, k2HadamardK, k2OutW, k2OutScale, k2OutBias, kNumMamba2Tensors
};

class PyMamba2Decoder {
 public:
  PyMamba2Decoder(std::vector<int64_t> dims, std::vector<double> floats, at::Tensor embedding,
                  at::Tensor norm_f_weight, double norm_f_eps, const std::string& head, at::Tensor head_weight,
                  at::Tensor head_scale, double head_in_scale, const std::string& isa) {
    TORCH_CHECK(dims.size() == 8, "dims: [d_model, d_inner, nheads, headdim, ngroups, d_state, d_conv, vocab]");
    TORCH_CHECK(floats.size() == 3, "floats: [dt_min, dt_max, gate_eps]");
    Mamba2Spec s;
    s.d_model = dims[0], s.d_inner = dims[1], s.nheads = dims[2], s.headdim = dims[3], s.ngroups = dims[4];
    s.d_state = dims[5], s.d_conv = dims[6], s.vocab = dims[7];
    s.dt_min = static_cast<float>(floats[0]), s.dt_max = static_cast<float>(floats[1]);
    s.gate_eps = static_cast<float>(floats[2]);
    check(embedding, at::kFloat, s.vocab * s.d_model, "embedding (vocab, d_model)");
    check(norm_f_weight, at::kFloat, s.d_model, "norm_f weight");
    s.embedding = embedding.data_ptr<float>();
    s.norm_f_weight = norm_f_weight.data_ptr<float>();
    s.norm_f_eps = static_cast<float>(norm_f_eps);
    const HeadChoice h = choose_head(head, head_weight, head_scale, head_in_scale, s.vocab, s.d_model);
    s.head = h.kind, s.int8_head = h.int8, s.head_in_scale = h.in_scale;
    const Isa chosen = isa.empty() ? select_isa() : parse_isa(isa);
    TORCH_CHECK(isa_supported(chosen), "native decoder: ISA ", isa, " cannot run on this CPU");
    keep_ = {embedding, norm_f_weight, head_weight, head_scale};
    dims_ = dims;
    dec_ = std::make_unique<Mamba2Decoder>(s, chosen);
  }

  void add_layer(const std::vector<at::Tensor>& t, const std::vector<double>& f) {
    const int64_t dm = dims_[0], d = dims_[1], H = dims_[2], e = d + 2 * dims_[4] * dims_[5], k = dims_[6];
    const std::string at = "layer " + std::to_string(n_layer_) + " ";
    TORCH_CHECK(t.size() == kNumMamba2Tensors && f.size() == 3, at, "has the wrong number of entries");
    check(t[k2NormW], at::kFloat, dm, at + "norm weight");
    check(t[k2InW], at::kChar, (d + e + H) * dm, at + "in_proj weight");
    check(t[k2InScale], at::kFloat, d + e + H, at + "in_proj scale");
    check(t[k2InBias], at::kFloat, t[k2InBias].numel() ? d + e + H : 0, at + "in_proj bias");
    check(t[k2ProjScale], at::kFloat, d + e + H, at + "proj scale");
    check(t[k2ConvW], at::kChar, e * k, at + "conv weight");
    check(t[k2ConvScale], at::kFloat, e, at + "conv scale");
    check(t[k2ConvBias], at::kFloat, t[k2ConvBias].numel() ? e : 0, at + "conv bias");
    check(t[k2XbcScale], at::kFloat, e, at + "xbc scale");
    for (int i : {k2DtBias, k2A, k2D}) check(t[i], at::kFloat, H, at + "dt_bias / A / D");
    check(t[k2HadamardK], at::kChar, -1, at + "hadamard_K");
    check(t[k2OutW], at::kChar, dm * d, at + "out_proj weight");
    check(t[k2OutScale], at::kFloat, dm, at + "out_proj scale");
    check(t[k2OutBias], at::kFloat, t[k2OutBias].numel() ? dm : 0, at + "out_proj bias");
    Mamba2LayerSpec L;
    L.norm_weight = t[k2NormW].data_ptr<float>();
    L.norm_eps = static_cast<float>(f[0]);
    L.norm_scale = static_cast<float>(f[1]);
    L.y_scale = static_cast<float>(f[2]);
    L.in_proj = {t[k2InW].data_ptr<int8_t>(), d + e + H, dm, t[k2InScale].data_ptr<float>(),
                 optional_ptr<float>(t[k2InBias]), 0.0f};
    L.proj_scale = t[k2ProjScale].data_ptr<float>();
    L.conv_weight = t[k2ConvW].data_ptr<int8_t>();
    L.conv_scale = t[k2ConvScale].data_ptr<float>();
    L.conv_bias = optional_ptr<float>(t[k2ConvBias]);
    L.xbc_scale = t[k2XbcScale].data_ptr<float>();
    L.dt_bias = t[k2DtBias].data_ptr<float>();
    L.A = t[k2A].data_ptr<float>();
    L.D = t[k2D].data_ptr<float>();
    if (t[k2HadamardK].numel() > 0) {
      TORCH_CHECK(t[k2HadamardK].dim() == 2 && t[k2HadamardK].size(0) == t[k2HadamardK].size(1), at,
                  "hadamard_K must be (K, K)");
      L.hadamard_K = t[k2HadamardK].data_ptr<int8_t>();
      L.K = t[k2HadamardK].size(0);
    }
    L.out_proj = {t[k2OutW].data_ptr<int8_t>(), dm, d, t[k2OutScale].data_ptr<float>(),
                  optional_ptr<float>(t[k2OutBias]), 0.0f};
    dec_->add_layer(L);
    ++n_layer_;
  }

  void step(const at::Tensor& ids, at::Tensor conv_state, at::Tensor ssm_state, at::Tensor logits) {
    const int64_t b = ids.numel();
    check(ids, at::kLong, -1, "token ids");
    check_states(b, conv_state, ssm_state, n_layer_);
    check(logits, at::kFloat, b * dims_[7], "logits (batch, vocab)");
    pybind11::gil_scoped_release nogil;
    dec_->step(ids.data_ptr<int64_t>(), b, conv_state.data_ptr<int8_t>(), ssm_state.data_ptr<float>(),
               logits.data_ptr<float>());
  }

  void prefill(const at::Tensor& ids, at::Tensor conv_state, at::Tensor ssm_state, at::Tensor logits) {
    check(ids, at::kLong, -1, "token ids (batch, length)");
    TORCH_CHECK(ids.dim() == 2 && ids.size(0) > 0 && ids.size(1) > 0, "native decoder: prefill takes token ids "
                "(batch, length) with batch, length >= 1, got shape ", ids.sizes());
    const int64_t b = ids.size(0);
    check_states(b, conv_state, ssm_state, n_layer_);
    check(logits, at::kFloat, b * dims_[7], "logits (batch, vocab)");
    for (int64_t i = 0; i < ids.numel(); ++i)
      TORCH_CHECK(ids.data_ptr<int64_t>()[i] >= 0 && ids.data_ptr<int64_t>()[i] < dims_[7], "native decoder: token "
                  "id ", ids.data_ptr<int64_t>()[i], " outside the vocabulary");
    pybind11::gil_scoped_release nogil;
    dec_->prefill(ids.data_ptr<int64_t>(), b, ids.size(1), conv_state.data_ptr<int8_t>(), ssm_state.data_ptr<float>(),
                  logits.data_ptr<float>());
  }

  std::string isa() const { return isa_name(dec_->isa()); }
  int64_t packed_bytes() const { return dec_->packed_bytes(); }

 private:
  void check_states(int64_t b, const at::Tensor& conv, const at::Tensor& ssm, int64_t layers) const {
    const int64_t e = dims_[1] + 2 * dims_[4] * dims_[5];
    check(conv, at::kChar, layers * b * e * (dims_[6] - 1), "conv_state (n_layer, batch, conv_dim, d_conv - 1)");
    check(ssm, at::kFloat, layers * b * dims_[1] * dims_[5], "ssm_state (n_layer, batch, nheads, headdim, d_state)");
  }

  std::unique_ptr<Mamba2Decoder> dec_;
  std::vector<at::Tensor> keep_;
  std::vector<int64_t> dims_;
  int64_t n_layer_ = 0;
};

std::vector<std::string> supported() {
  std::vector<std::string> out;
  for (Isa i : supported_isas()) out.emplace_back(isa_name(i));
  return out;
}

}  // namespace
}  // namespace native
}  // namespace quamba_edge

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using quamba_edge::native::PyDecoder;
  namespace nat = quamba_edge::native;
  m.doc() = "quamba-edge native CPU decoder (csrc/cpu/native)";
  pybind11::class_<PyDecoder>(m, "Decoder")
      .def(pybind11::init<std::vector<int64_t>, at::Tensor, at::Tensor, double, const std::string&, at::Tensor,
                          at::Tensor, double, const std::string&>())
      .def("add_layer", &PyDecoder::add_layer)
      .def("step", &PyDecoder::step)
      .def("prefill", &PyDecoder::prefill)
      .def("layer", &PyDecoder::layer)
      .def("head", &PyDecoder::head)
      .def_property_readonly("isa", &PyDecoder::isa)
      .def_property_readonly("packed_bytes", &PyDecoder::packed_bytes);
  pybind11::class_<quamba_edge::native::PyMamba2Decoder>(m, "Mamba2Decoder")
      .def(pybind11::init<std::vector<int64_t>, std::vector<double>, at::Tensor, at::Tensor, double, const std::string&,
                          at::Tensor, at::Tensor, double, const std::string&>())
      .def("add_layer", &quamba_edge::native::PyMamba2Decoder::add_layer)
      .def("step", &quamba_edge::native::PyMamba2Decoder::step)
      .def("prefill", &quamba_edge::native::PyMamba2Decoder::prefill)
      .def_property_readonly("isa", &quamba_edge::native::PyMamba2Decoder::isa)
      .def_property_readonly("packed_bytes", &quamba_edge::native::PyMamba2Decoder::packed_bytes);
  m.def("supported_isas", &nat::supported, "paths this CPU can run, scalar first");
  m.def("best_isa", [] { return std::string(nat::isa_name(nat::best_isa())); });
  m.def("select_isa", [] { return std::string(nat::isa_name(nat::select_isa())); },
        "QUAMBA_EDGE_ISA if set, else the best path; raises if the forced path cannot run here");
}
