// One version of the AVX2 integer kernels (kernels/cpu/kv_int_avx2.cc), timed. scripts/kernel_ab.sh
// compiles this file twice, each time with that version's tree first on the include path,
// -Dkvlab=<namespace> so that the two copies do not collide, -DKERNELS=<its kv_int_avx2.cc>
// and -DENTRY=<the C name main.cc calls>. Both copies then run in one process on the same
// buffers, interleaved, so that a noisy host slows both alike.
#include <chrono>
#include <cstdint>

#include KERNELS

#include "ab.h"

using namespace kvlab;

// Runs `reps` passes over blocks 0 .. count - 1 of the pool: kv_scores of `rows` query rows
// over each key block, then kv_accumulate of the scores over its value block. Returns ms for
// the scores and the values separately (L1-hot: count = 1; DRAM: the whole pool, one pass).
extern "C" void ENTRY(const AbPool* P, const AbCase* c, int count, int reps, double* ms) {
  const int n = kAbBlockTokens, d = c->d;
  const int64_t kb = int64_t(d) * packed_bytes(n, c->bits), vb = int64_t(n) * packed_bytes(d, c->bits);
  const int kgroups = n / c->key_group, vgroups = d / c->value_group;
  double t_scores = 0, t_values = 0;
  for (int rep = 0; rep < reps; ++rep) {
    for (int b = 0; b < count; ++b) {
      KvBlock k;
      k.format = KvFormat::kIntChannel;
      k.n = n;
      k.d = d;
      k.bits = c->bits;
      k.group = c->key_group;
      k.data = P->keys + b * kb;
      k.stride = packed_bytes(n, c->bits);
      k.scale = P->key_scale + int64_t(b) * d * kgroups;
      k.zero = P->key_zero + int64_t(b) * d * kgroups;
      KvBlock v = k;
      v.format = KvFormat::kIntToken;
      v.group = c->value_group;
      v.data = P->values + b * vb;
      v.stride = packed_bytes(d, c->bits);
      v.scale = P->value_scale + int64_t(b) * n * vgroups;
      v.zero = P->value_zero + int64_t(b) * n * vgroups;
      const auto t0 = std::chrono::steady_clock::now();
      avx2_int_scores(k, P->q, c->rows, P->s);
      const auto t1 = std::chrono::steady_clock::now();
      avx2_int_accumulate(v, P->p, c->rows, P->acc);
      const auto t2 = std::chrono::steady_clock::now();
      t_scores += std::chrono::duration<double, std::milli>(t1 - t0).count();
      t_values += std::chrono::duration<double, std::milli>(t2 - t1).count();
    }
  }
  ms[0] = t_scores;
  ms[1] = t_values;
}
