// Runtime ISA dispatch for the CPU kernels. The widest ISA the CPU supports is picked once;
// $KVLAB_ISA=scalar|avx2|avx512 narrows it (for tests and comparisons). Asking for an ISA the
// CPU lacks is an error, never a silent fallback.
#pragma once

#include "base/status.h"

namespace kvlab {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };  // kAvx2 means AVX2 + FMA + F16C

const char* isa_name(Isa isa);
StatusOr<Isa> parse_isa(const char* name);
// The widest ISA this CPU (and OS) supports.
Isa detected_isa();
// The ISA the kernels use: detected_isa() unless set_active_isa() or $KVLAB_ISA chose a narrower one.
Isa active_isa();
// kUnsupported if the CPU lacks `isa`.
Status set_active_isa(Isa isa);

}  // namespace kvlab
