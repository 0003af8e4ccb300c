// Runtime ISA detection and the process-wide active ISA (see cpu_features.h).
//
// Detection asks two questions: does the CPU implement the instructions (CPUID, through
// __builtin_cpu_supports), and does the OS save the wider registers on a context switch (XCR0,
// read with xgetbv)? A hypervisor or kernel may disable AVX-512 state even on a CPU that has it;
// executing a zmm instruction then faults, so both answers must be yes.
//
// $KVLAB_ISA is read once, on the first call that needs the active ISA. A bad value is a user
// error that must not be papered over: a benchmark run with KVLAB_ISA=avx512 on a machine without
// it would otherwise report scalar numbers under an AVX-512 label. So the process prints why and
// exits with code 2 (the `kvlab` command's code for bad input).
#include "kernels/cpu/cpu_features.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define KVLAB_X86 1
#endif

namespace kvlab {
namespace {

#ifdef KVLAB_X86
// CPUID.1:ECX, or 0 if leaf 1 is missing.
unsigned cpuid1_ecx() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) ? ecx : 0;
}

// XCR0 (the OS-enabled register state), or 0 if the OS does not expose xgetbv
// (CPUID.1:ECX.OSXSAVE). Inline asm rather than _xgetbv() so that this file needs no -mxsave.
uint64_t read_xcr0() {
  if (!(cpuid1_ecx() & (1u << 27))) return 0;  // OSXSAVE
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

Isa detect() {
  __builtin_cpu_init();
  const uint64_t xcr0 = read_xcr0();
  // Bits 1|2: SSE and AVX (ymm upper halves). Bits 5|6|7: opmask, zmm0-15 upper halves, zmm16-31.
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;
  // F16C is CPUID.1:ECX bit 29, read directly: clang's __builtin_cpu_supports does not know it.
  const bool f16c = cpuid1_ecx() & (1u << 29);
  const bool avx2 =
      os_avx && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  const bool avx512 = avx2 && os_avx512 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  return avx512 ? Isa::kAvx512 : (avx2 ? Isa::kAvx2 : Isa::kScalar);
}
#else
Isa detect() { return Isa::kScalar; }
#endif

// The active ISA as an int; -1 until initialize() has run.
std::atomic<int> g_active{-1};
std::once_flag g_once;

// Runs once: detection, then $KVLAB_ISA. Exits the process on a bad $KVLAB_ISA.
void initialize() {
  const Isa detected = detected_isa();
  Isa chosen = detected;
  if (const char* env = std::getenv("KVLAB_ISA"); env != nullptr && env[0] != '\0') {
    StatusOr<Isa> parsed = parse_isa(env);
    if (!parsed.ok()) {
      std::fprintf(stderr, "kvlab: $KVLAB_ISA: %s\n", parsed.status().message().c_str());
      std::exit(2);
    }
    if (int(*parsed) > int(detected)) {
      std::fprintf(stderr,
                   "kvlab: $KVLAB_ISA=%s but this CPU (or OS) supports at most %s; "
                   "unset it or pick a narrower ISA\n",
                   env, isa_name(detected));
      std::exit(2);
    }
    chosen = *parsed;
  }
  g_active.store(int(chosen), std::memory_order_release);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

StatusOr<Isa> parse_isa(const char* name) {
  if (name != nullptr) {
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (std::strcmp(name, isa_name(isa)) == 0) return isa;
    }
  }
  return invalid_argument(std::string("unknown ISA '") + (name ? name : "(null)") +
                          "' (expected scalar, avx2 or avx512)");
}

Isa detected_isa() {
  static const Isa detected = detect();  // thread-safe static initialization
  return detected;
}

Isa active_isa() {
  const int v = g_active.load(std::memory_order_acquire);
  if (v >= 0) return Isa(v);
  std::call_once(g_once, initialize);
  return Isa(g_active.load(std::memory_order_acquire));
}

Status set_active_isa(Isa isa) {
  // $KVLAB_ISA is consumed first so that it cannot overwrite this choice later.
  std::call_once(g_once, initialize);
  if (int(isa) > int(detected_isa())) {
    return unsupported(std::string("ISA ") + isa_name(isa) +
                       " is not supported by this CPU (or OS); the widest available is " +
                       isa_name(detected_isa()));
  }
  g_active.store(int(isa), std::memory_order_release);
  return Status::Ok();
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (int(isa) <= int(detected_isa())) isas.push_back(isa);
  }
  return isas;
}

}  // namespace kvlab
