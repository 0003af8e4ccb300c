// Placeholder until the AVX2 integer paths land: no block takes them.
#include "kernels/cpu/kv_kernels_internal.h"

namespace kvlab {
bool avx2_int_scores_take(const KvBlock&) { return false; }
bool avx2_int_accumulate_take(const KvBlock&) { return false; }
void avx2_int_scores(const KvBlock&, const float*, int, float*) {}
void avx2_int_accumulate(const KvBlock&, const float*, int, float*) {}
}  // namespace kvlab
