// Standalone test of the native decoder's kernels and of the whole decode step on every path this CPU can
// run (no torch): each path's int8 GEMV and GEMM against a plain 64-bit loop (exact, including the extremes
// where a 16-bit saturating multiply-add would be wrong), its float head GEMVs against a double-precision sum,
// a random small model decoded on every path against the scalar path: int8 intermediates, states and the
// residual stream bit-identical, logits identical for the int8 head and within 1e-5 relative for float heads;
// and the layer-major prefill on every path against stepping the same tokens: bit-identical.
//
//   g++ -std=c++17 -O2 -ffp-contract=off -I csrc/include csrc/cpu/native/{test_native,decoder,dispatch,dot_*}.cpp
//   ./a.out [seed]            # prints "tested: scalar avx2 ..." and exits 0, or names the first failure
// tests/test_native.py builds and runs it natively and, cross-compiled for aarch64, under qemu-aarch64.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "decoder.h"

using namespace quamba_edge::native;

namespace {

int failures = 0;

void fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  ++failures;
}

std::vector<int8_t> rand_s8(std::mt19937& g, int64_t n, int lo = -128, int hi = 127) {
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(d(g));
  return v;
}

std::vector<float> rand_f(std::mt19937& g, int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

void test_gemv(Isa isa, std::mt19937& g) {
  const DotKernels& K = kernels(isa);
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {4, 64}, {7, 100}, {13, 768}, {33, 1536}, {5, 4}, {2, 2000}};
  for (int extreme = 0; extreme < 3; ++extreme)
    for (const auto& s : shapes) {
      const int64_t n = s[0], k = s[1], kp = pad_k(k);
      // extreme 1: every product is (-128)(-128), the pair sums 32768 that a 16-bit saturating add clips;
      // extreme 2: random values from {-128, 127} only.
      std::vector<int8_t> W = rand_s8(g, n * k), x = rand_s8(g, k);
      if (extreme == 1) W.assign(n * k, -128), x.assign(k, -128);
      if (extreme == 2)
        for (auto* v : {&W, &x})
          for (auto& e : *v) e = (g() & 1) ? -128 : 127;
      Buffer<int8_t> Wp(pad_n(n) * kp), xp(kp);
      pack_s8(W.data(), n, k, K.chunk, Wp.data());
      std::vector<int32_t> row_sum(pad_n(n), 0);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < k; ++i) row_sum[j] += W[j * k + i];
      for (int64_t i = 0; i < k; ++i) xp[i] = x[i];
      Buffer<uint8_t> scratch(2 * kp);
      std::vector<int32_t> out(pad_n(n));
      K.gemv_s8(Wp.data(), row_sum.data(), pad_n(n), kp, xp.data(), scratch.data(), out.data());
      for (int64_t j = 0; j < n; ++j) {
        int64_t ref = 0;
        for (int64_t i = 0; i < k; ++i) ref += int64_t(W[j * k + i]) * int64_t(x[i]);
        if (out[j] != ref) {
          fail(std::string(isa_name(isa)) + " gemv_s8 n=" + std::to_string(n) + " k=" + std::to_string(k) +
               " row " + std::to_string(j) + ": " + std::to_string(out[j]) + " != " + std::to_string(ref));
          break;
        }
      }
      // gemm_s8 on M rows (every remainder of the kernels' row blocks, and the most one call takes), the first
      // row being x: each output against the 64-bit loop; rows strided past k_pad, outputs past n_pad
      for (int64_t M : {int64_t(1), int64_t(2), int64_t(3), int64_t(5), int64_t(7), kGemmRows}) {
        const int64_t ldx = kp + 64, ldo = pad_n(n) + 4;
        std::vector<int8_t> X = rand_s8(g, M * k);
        if (extreme == 1) X.assign(M * k, -128);
        if (extreme == 2)
          for (auto& e : X) e = (g() & 1) ? -128 : 127;
        std::copy(x.begin(), x.end(), X.begin());
        Buffer<int8_t> Xp(M * ldx);
        for (int64_t m = 0; m < M; ++m) std::copy(X.begin() + m * k, X.begin() + (m + 1) * k, Xp.data() + m * ldx);
        Buffer<uint8_t> gscratch(gemm_scratch_bytes(kp));
        std::vector<int32_t> gout(M * ldo, 0x5A5A5A5A);
        K.gemm_s8(Wp.data(), row_sum.data(), pad_n(n), kp, Xp.data(), ldx, M, gscratch.data(), gout.data(), ldo);
        bool ok = true;
        for (int64_t m = 0; m < M && ok; ++m)
          for (int64_t j = 0; j < pad_n(n) && ok; ++j) {
            int64_t ref = 0;
            for (int64_t i = 0; j < n && i < k; ++i) ref += int64_t(W[j * k + i]) * int64_t(X[m * k + i]);
            if (gout[m * ldo + j] != ref) {
              fail(std::string(isa_name(isa)) + " gemm_s8 M=" + std::to_string(M) + " n=" + std::to_string(n) +
                   " k=" + std::to_string(k) + " row " + std::to_string(m) + " col " + std::to_string(j));
              ok = false;
            }
          }
        for (int64_t m = 0; m < M && ok; ++m)
          if (gout[m * ldo + pad_n(n)] != 0x5A5A5A5A) fail(std::string(isa_name(isa)) + " gemm_s8 wrote past n_pad");
      }
      // float heads: fp32 (row-major), fp16 and bf16 (pack_16) against a double sum of the same weights
      std::vector<float> Wf = rand_f(g, n * k, -1.0f, 1.0f), xf = rand_f(g, k, -2.0f, 2.0f);
      std::vector<uint16_t> Wh(n * k), Wb(n * k);
      for (int64_t i = 0; i < n * k; ++i) Wh[i] = float_to_half(Wf[i]), Wb[i] = float_to_bf16(Wf[i]);
      Buffer<uint16_t> Wh_p(pad_n(n) * pad8(k)), Wb_p(pad_n(n) * pad8(k));
      pack_16(Wh.data(), n, k, Wh_p.data());
      pack_16(Wb.data(), n, k, Wb_p.data());
      Buffer<float> x8(pad8(k));
      std::copy(xf.begin(), xf.end(), x8.data());
      std::vector<float> o32(n), o16(pad_n(n)), ob16(pad_n(n));
      K.gemv_f32(Wf.data(), n, k, xf.data(), o32.data());
      K.gemv_f16(Wh_p.data(), pad_n(n), pad8(k), x8.data(), o16.data());
      K.gemv_bf16(Wb_p.data(), pad_n(n), pad8(k), x8.data(), ob16.data());
      for (int64_t j = 0; j < n; ++j) {
        double r32 = 0, r16 = 0, rb = 0, mag = 0;
        for (int64_t i = 0; i < k; ++i) {
          r32 += double(Wf[j * k + i]) * xf[i];
          r16 += double(half_to_float(Wh[j * k + i])) * xf[i];
          rb += double(bf16_to_float(Wb[j * k + i])) * xf[i];
          mag += std::fabs(double(Wf[j * k + i]) * xf[i]);
        }
        const double tol = 1e-6 * mag + 1e-30;  // fp32 accumulation of k terms, any order
        if (std::fabs(o32[j] - r32) > tol || std::fabs(o16[j] - r16) > tol || std::fabs(ob16[j] - rb) > tol) {
          fail(std::string(isa_name(isa)) + " float gemv n=" + std::to_string(n) + " k=" + std::to_string(k));
          break;
        }
      }
    }
}

void test_conversions() {
  struct Case {
    float f;
    uint16_t half, bf16;
  };
  const Case cases[] = {{1.0f, 0x3C00, 0x3F80},           {-2.0f, 0xC000, 0xC000},
                        {65504.0f, 0x7BFF, 0x4780},       {65520.0f, 0x7C00, 0x4780},
                        {5.9604644775390625e-8f, 0x0001, 0x3380}, {2.98023223876953125e-8f, 0x0000, 0x3300},
                        {0.333333343f, 0x3555, 0x3EAB},   {1.00048828125f, 0x3C00, 0x3F80},
                        {1.00146484375f, 0x3C02, 0x3F80}, {6.103515625e-05f, 0x0400, 0x3880}};
  for (const Case& c : cases) {
    if (float_to_half(c.f) != c.half) fail("float_to_half(" + std::to_string(c.f) + ")");
    if (float_to_bf16(c.f) != c.bf16) fail("float_to_bf16(" + std::to_string(c.f) + ")");
  }
  for (uint32_t h = 0; h < 0x7C00; ++h)  // every finite positive half survives half -> float -> half
    if (float_to_half(half_to_float(static_cast<uint16_t>(h))) != h) {
      fail("half round trip " + std::to_string(h));
      break;
    }
}

// A random model whose tensors the test owns; `spec` points into them.
struct Model {
  ModelSpec spec;
  std::vector<std::vector<int8_t>> s8;
  std::vector<std::vector<float>> f32;
  const int8_t* keep(std::vector<int8_t> v) { return s8.emplace_back(std::move(v)).data(); }
  const float* keep(std::vector<float> v) { return f32.emplace_back(std::move(v)).data(); }
};

LinearSpec linear(Model& m, std::mt19937& g, int64_t n, int64_t k, float out_scale, bool bias) {
  LinearSpec l;
  l.n = n, l.k = k, l.out_scale = out_scale;
  l.weight = m.keep(rand_s8(g, n * k));
  // scales sized so that typical outputs span the int8 range (some clip): every rounding path is exercised
  const float typical = std::sqrt(float(k)) * 75.0f * 75.0f;
  l.scale = m.keep(rand_f(g, n, 0.5f, 1.5f));
  for (auto& s : m.f32.back()) s = out_scale > 0 ? s * out_scale * 60.0f / typical : s * 2.0f / typical;
  if (bias) l.bias = m.keep(rand_f(g, n, -0.5f, 0.5f));
  return l;
}

std::unique_ptr<Model> random_model(std::mt19937& g, int64_t dm, int64_t d, int64_t n, int64_t K, HeadKind head,
                                    bool bias) {
  auto m = std::make_unique<Model>();
  ModelSpec& s = m->spec;
  s.d_model = dm, s.d_inner = d, s.d_state = n, s.d_conv = 4, s.rank = 4, s.vocab = 97, s.head = head;
  s.embedding = m->keep(rand_f(g, s.vocab * dm, -1.0f, 1.0f));
  s.norm_f_weight = m->keep(rand_f(g, dm, 0.5f, 1.5f));
  if (head == HeadKind::kInt8) {
    s.int8_head = linear(*m, g, s.vocab, dm, 0.0f, false);
    s.head_in_scale = 3.0f / 127;
  }
  std::vector<int8_t> H(K * K, 1);  // a ±1 matrix (the test needs no orthogonality)
  for (auto& h : H) h = (g() & 1) ? 1 : -1;
  for (int layer = 0; layer < 3; ++layer) {
    LayerSpec L;
    L.norm_weight = m->keep(rand_f(g, dm, 0.5f, 1.5f));
    L.norm_scale = 3.0f / 127;
    L.in_proj = linear(*m, g, 2 * d, dm, 0.05f, bias);
    L.x_proj = linear(*m, g, s.rank + 2 * n, d, 0.04f, false);
    L.dt_proj = linear(*m, g, d, s.rank, 0.03f, false);
    L.out_proj = linear(*m, g, dm, d, 0.0f, bias);
    L.conv_weight = m->keep(rand_s8(g, d * s.d_conv));
    L.conv_scale = m->keep(rand_f(g, d, 0.5f * 0.05f / 127, 1.5f * 0.05f / 127));
    L.conv_bias = m->keep(rand_f(g, d, -0.3f, 0.3f));
    L.u_scale = 0.02f;
    L.A_log = m->keep(rand_s8(g, d * n, 0, 127));
    L.D = m->keep(rand_s8(g, d));
    L.delta_bias = m->keep(rand_s8(g, d));
    const float scan[8] = {0.02f, 0.03f, 0.04f, 0.04f, 0.05f, 2.8f / 127, 1.5f / 127, 4.0f / 127};
    std::copy(scan, scan + 8, L.scan_scales);
    if (K > 0) L.hadamard_K = m->keep(H), L.K = K;
    L.y_scale = 0.05f;
    s.layers.push_back(L);
  }
  return m;
}

struct Run {
  std::vector<int8_t> conv, trace;
  std::vector<float> ssm, logits;
};

Run decode(const ModelSpec& spec, Isa isa, int64_t batch, int steps, uint32_t seed) {
  Decoder dec(spec, isa);
  const int64_t L = spec.layers.size(), d = spec.d_inner, dm = spec.d_model, nx = spec.rank + 2 * spec.d_state;
  Run r;
  r.conv.assign(L * batch * d * (spec.d_conv - 1), 0);
  r.ssm.assign(L * batch * d * spec.d_state, 0.0f);
  r.logits.assign(batch * spec.vocab, 0.0f);
  const int64_t per_layer = batch * (dm + 2 * d + d + nx + d + d);
  std::vector<int8_t> trace(L * per_layer);
  std::vector<Trace> traces(L);
  for (int64_t i = 0; i < L; ++i) {
    int8_t* p = trace.data() + i * per_layer;
    traces[i] = Trace{p, p + batch * dm, p + batch * (dm + 2 * d), p + batch * (dm + 3 * d),
                      p + batch * (dm + 3 * d + nx), p + batch * (dm + 4 * d + nx)};
  }
  std::mt19937 g(seed);
  std::vector<int64_t> ids(batch);
  for (int t = 0; t < steps; ++t) {
    for (auto& id : ids) id = g() % spec.vocab;
    dec.step(ids.data(), batch, r.conv.data(), r.ssm.data(), r.logits.data(), traces.data());
    r.trace.insert(r.trace.end(), trace.begin(), trace.end());
  }
  return r;
}

// The layer-major prefill of a (batch, length) prompt against `steps` of the same tokens on the same path: the
// same states bit for bit, the same int8 intermediates at every position, the same last logits.
void test_prefill(const ModelSpec& spec, Isa isa, int64_t batch, int64_t length, uint32_t seed,
                  const std::string& what) {
  Decoder dec(spec, isa);
  const int64_t L = spec.layers.size(), d = spec.d_inner, dm = spec.d_model, nx = spec.rank + 2 * spec.d_state;
  const int64_t widths[6] = {dm, 2 * d, d, nx, d, d};
  std::mt19937 g(seed);
  std::vector<int64_t> ids(batch * length);
  for (auto& id : ids) id = g() % spec.vocab;
  const int64_t conv_n = L * batch * d * (spec.d_conv - 1), ssm_n = L * batch * d * spec.d_state;
  // prefill, tracing every position: per layer six (batch, length, width) arrays
  std::vector<int8_t> conv(conv_n, 0), trace_p;
  std::vector<float> ssm(ssm_n, 0.0f), logits(batch * spec.vocab);
  std::vector<std::vector<int8_t>> store(L * 6);
  std::vector<Trace> traces(L);
  for (int64_t i = 0; i < L; ++i) {
    int8_t* p[6];
    for (int q = 0; q < 6; ++q) p[q] = (store[i * 6 + q] = std::vector<int8_t>(batch * length * widths[q])).data();
    traces[i] = Trace{p[0], p[1], p[2], p[3], p[4], p[5]};
  }
  dec.prefill(ids.data(), batch, length, conv.data(), ssm.data(), logits.data(), traces.data());
  // the same tokens one step at a time, on a fresh decoder
  Decoder ref(spec, isa);
  std::vector<int8_t> conv_s(conv_n, 0);
  std::vector<float> ssm_s(ssm_n, 0.0f), logits_s(batch * spec.vocab);
  std::vector<std::vector<int8_t>> step_store(L * 6);
  std::vector<Trace> step_traces(L);
  for (int64_t i = 0; i < L; ++i) {
    int8_t* p[6];
    for (int q = 0; q < 6; ++q) p[q] = (step_store[i * 6 + q] = std::vector<int8_t>(batch * widths[q])).data();
    step_traces[i] = Trace{p[0], p[1], p[2], p[3], p[4], p[5]};
  }
  std::vector<int64_t> step_ids(batch);
  bool traces_equal = true;
  for (int64_t t = 0; t < length; ++t) {
    for (int64_t b = 0; b < batch; ++b) step_ids[b] = ids[b * length + t];
    ref.step(step_ids.data(), batch, conv_s.data(), ssm_s.data(), logits_s.data(), step_traces.data());
    for (int64_t i = 0; i < L * 6; ++i)
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t w = widths[i % 6];
        if (!std::equal(step_store[i].begin() + b * w, step_store[i].begin() + (b + 1) * w,
                        store[i].begin() + (b * length + t) * w))
          traces_equal = false;
      }
  }
  const std::string at = std::string(isa_name(isa)) + " prefill " + what + " b=" + std::to_string(batch) +
                         " l=" + std::to_string(length);
  if (!traces_equal) fail(at + ": int8 intermediates differ from stepping");
  if (conv != conv_s) fail(at + ": conv state differs from stepping");
  if (ssm != ssm_s) fail(at + ": ssm state differs from stepping");
  if (logits != logits_s) fail(at + ": logits differ from stepping");
}

void test_decoder(const std::vector<Isa>& isas, std::mt19937& g, uint32_t seed) {
  struct Shape {
    int64_t dm, d, n, K;
  };
  const Shape shapes[] = {{64, 128, 16, 1}, {48, 96, 8, 12}, {40, 80, 16, 0}};
  for (const Shape& sh : shapes)
    for (HeadKind head : {HeadKind::kF32, HeadKind::kF16, HeadKind::kBF16, HeadKind::kInt8}) {
      auto model = random_model(g, sh.dm, sh.d, sh.n, sh.K, head, sh.K == 0);
      const Run ref = decode(model->spec, Isa::kScalar, 2, 6, seed);
      int nonzero = 0;
      for (int8_t v : ref.trace) nonzero += v != 0 && v != 127 && v != -128;
      if (nonzero < static_cast<int>(ref.trace.size()) / 2) fail("degenerate test model: int8 values mostly 0 or clipped");
      const std::string what = "decoder d_model=" + std::to_string(sh.dm) + " head=" + std::to_string(int(head));
      for (Isa isa : isas)  // lengths: one token, a partial chunk, past one chunk (kPrefillChunk 64)
        for (auto [batch, length] : {std::pair<int64_t, int64_t>{1, 1}, {2, 7}, {2, kPrefillChunk + 5}})
          test_prefill(model->spec, isa, batch, length, seed + 1, what);
      for (Isa isa : isas) {
        if (isa == Isa::kScalar) continue;
        const Run r = decode(model->spec, isa, 2, 6, seed);
        if (r.trace != ref.trace) fail(std::string(isa_name(isa)) + " " + what + ": int8 intermediates differ");
        if (r.conv != ref.conv) fail(std::string(isa_name(isa)) + " " + what + ": conv state differs");
        if (r.ssm != ref.ssm) fail(std::string(isa_name(isa)) + " " + what + ": ssm state differs");
        double num = 0, den = 0;
        for (size_t i = 0; i < r.logits.size(); ++i) {
          num = std::fmax(num, std::fabs(double(r.logits[i]) - ref.logits[i]));
          den = std::fmax(den, std::fabs(double(ref.logits[i])));
        }
        const double bound = head == HeadKind::kInt8 ? 0.0 : 1e-5;
        if (num > bound * den) fail(std::string(isa_name(isa)) + " " + what + ": logits differ by " + std::to_string(num / den));
      }
    }
}

}  // namespace

int main(int argc, char** argv) {
  const uint32_t seed = argc > 1 ? static_cast<uint32_t>(std::strtoul(argv[1], nullptr, 10)) : 0u;
  std::mt19937 g(seed);
  const std::vector<Isa> isas = supported_isas();
  test_conversions();
  for (Isa isa : isas) test_gemv(isa, g);
  test_decoder(isas, g, seed);
  std::printf("tested:");
  for (Isa isa : isas) std::printf(" %s", isa_name(isa));
  std::printf("\n");
  if (failures) std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
