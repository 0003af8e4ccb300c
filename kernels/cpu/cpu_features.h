// Runtime ISA dispatch for the CPU kernels. The widest ISA the CPU supports is picked once;
// $KVLAB_ISA=scalar|avx2|avx512 narrows it (for tests and comparisons). Asking for an ISA the
// CPU lacks is an error, never a silent fallback.
//
// The library is built for the x86-64 baseline; only the kernel functions that use intrinsics
// are compiled for AVX2 / AVX-512 (function target attributes) and are called only after this
// check. "Supports" means the CPU has the instructions (CPUID) and the OS saves their registers
// (XCR0 via xgetbv). Results differ between ISAs (each has its own summation order) but are
// reproducible within one.
#pragma once

#include <vector>

#include "base/status.h"

namespace kvlab {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };  // kAvx2 means AVX2 + FMA + F16C

// "scalar", "avx2", "avx512".
const char* isa_name(Isa isa);
// The inverse of isa_name (exact, lower case); kInvalidArgument for anything else.
StatusOr<Isa> parse_isa(const char* name);
// The widest ISA this CPU (and OS) supports.
Isa detected_isa();
// Every ISA this CPU supports, narrowest first (tests run each kernel on all of them).
std::vector<Isa> supported_isas();
// The ISA the kernels use: detected_isa() unless set_active_isa() or $KVLAB_ISA chose a narrower one.
// $KVLAB_ISA is read once, at the first call of active_isa() or set_active_isa(); if it is not a
// valid name or names an ISA this CPU lacks, the process prints why on stderr and exits with
// code 2. Thread-safe.
Isa active_isa();
// Makes `isa` the active ISA for the whole process (overriding $KVLAB_ISA). kUnsupported, and no
// change, if the CPU lacks `isa`.
Status set_active_isa(Isa isa);

}  // namespace kvlab
