// The shared layout of scripts/kernel_ab.sh's two kernel versions (version.cc) and their driver
// (main.cc).
#pragma once

#include <cstdint>

constexpr int kAbBlockTokens = 128;  // tokens per block, as the stores keep them

// Blocks one after the other, as the stores lay them out: block b's codes, scales and zeros
// follow block b - 1's, so each kernel's read-ahead of "the bytes after my block" hits the next.
struct AbPool {
  const uint8_t* keys;
  const uint8_t* values;
  const uint16_t *key_scale, *key_zero, *value_scale, *value_zero;  // f16
  const float* q;  // rows x d
  const float* p;  // rows x kAbBlockTokens probabilities
  float* s;        // rows x kAbBlockTokens scores
  float* acc;      // rows x d
  int blocks;
};

struct AbCase {
  int bits, d, rows, key_group, value_group;
};
