// Which path runs: the CPU's features at run time, or QUAMBA_EDGE_ISA to force one (the tests run every
// path the machine can execute that way).
#include <cstdlib>
#include <stdexcept>

#include "isa.h"

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace quamba_edge {
namespace native {

namespace {
const Isa kAll[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvxVnni, Isa::kAvx512Vnni, Isa::kNeon};

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return true;
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kAvx2:  // __builtin_cpu_supports also checks that the OS saves the AVX registers (XCR0)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::kAvxVnni:
      return cpu_has(Isa::kAvx2) && __builtin_cpu_supports("avxvnni");
    case Isa::kAvx512Vnni:
      return cpu_has(Isa::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__) && defined(__linux__)
    case Isa::kNeon:
      return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    default:
      return false;
  }
}

const DotKernels* table(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return scalar_kernels();
    case Isa::kAvx2: return avx2_kernels();
    case Isa::kAvxVnni: return avxvnni_kernels();
    case Isa::kAvx512Vnni: return avx512vnni_kernels();
    case Isa::kNeon: return neon_kernels();
  }
  return nullptr;
}

std::string names(const std::vector<Isa>& isas) {
  std::string s;
  for (Isa i : isas) s += (s.empty() ? "" : ", ") + std::string(isa_name(i));
  return s;
}
}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvxVnni: return "avxvnni";
    case Isa::kAvx512Vnni: return "avx512vnni";
    case Isa::kNeon: return "neon";
  }
  return "?";
}

Isa parse_isa(const std::string& name) {
  for (Isa i : kAll)
    if (name == isa_name(i)) return i;
  throw std::invalid_argument("unknown ISA '" + name + "': expected scalar, avx2, avxvnni, avx512vnni or neon");
}

bool isa_supported(Isa isa) { return table(isa) != nullptr && cpu_has(isa); }

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa i : kAll)
    if (isa_supported(i)) out.push_back(i);
  return out;
}

Isa best_isa() {
  for (Isa i : {Isa::kAvx512Vnni, Isa::kAvxVnni, Isa::kAvx2, Isa::kNeon})
    if (isa_supported(i)) return i;
  return Isa::kScalar;
}

Isa select_isa() {
  const char* env = std::getenv("QUAMBA_EDGE_ISA");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return best_isa();
  const Isa isa = parse_isa(env);
  if (!isa_supported(isa))
    throw std::runtime_error("QUAMBA_EDGE_ISA=" + std::string(env) + " cannot run on this CPU; it can run: " +
                             names(supported_isas()) + " (or unset it for the fastest)");
  return isa;
}

const DotKernels& kernels(Isa isa) {
  if (!isa_supported(isa)) throw std::runtime_error(std::string("ISA not supported here: ") + isa_name(isa));
  return *table(isa);
}

}  // namespace native
}  // namespace quamba_edge
