// `full`: every token of every layer kept, in f32, f16 or bf16.
//
// Storage per (layer, sequence): pages of kPageTokens tokens, each page
//   K: [n_kv_heads, kPageTokens, head_dim]   post-RoPE keys
//   V: [n_kv_heads, kPageTokens, head_dim]
// in the element type. dtype=f32 is the exact reference every other policy is compared with.
#pragma once

#include <memory>

#include "kvcache/formats.h"
#include "kvcache/policy.h"
#include "kvcache/registry.h"

namespace kvlab {

PolicyInfo full_policy_info();

}  // namespace kvlab
