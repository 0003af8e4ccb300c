// `kvlab xkv-analyze`: what xKV's factorization (kvcache/xkv.h) loses on a model's own prompt,
// the paper's motivating measurements (../shared/research/algorithms.md section 2.9):
//
//  * per layer, the relative Frobenius error ||X_l - A B_l|| / ||X_l|| of the pre-RoPE keys and of
//    the values when the layer is factorized in groups of G adjacent layers (G = 1, 2, 4 by
//    default; a short last group keeps the per-layer rank), at equal per-layer rank: the group's
//    rank is (layers in the group) x rank;
//  * per pair of adjacent layers, the overlap ||U_l^T U_l+1||_F^2 / r of their top-r singular
//    subspaces (1: the same subspace; r / dim for unrelated ones), on the token side (the left
//    singular vectors: what the group's shared basis A must span for every layer) and on the
//    channel side (the right ones, which the issue names; each layer's channels are coordinates
//    of its own projection, so these need not align even when sharing works);
//  * the factorization time per group.
//
// The unmodified model (full f32 cache) runs once over a window of `tokens` tokens of the text
// (BOS first); K and V are read back from the cache and un-rotated.
#pragma once

#include <string>
#include <vector>

#include "base/progress.h"
#include "base/status.h"
#include "model/model.h"

namespace kvlab {

struct XkvAnalyzeConfig {
  std::string text_path;
  int tokens = 3584;
  int rank_k = 32;                 // per layer
  int rank_v = 48;                 // per layer
  std::vector<int> groups = {1, 2, 4};
};

struct XkvLayerRow {
  int layer = 0;
  std::vector<double> k_error, v_error;   // [groups]
  // With layer + 1 (-1 for the last layer): token side, channel side.
  double k_overlap = -1, v_overlap = -1, k_channel_overlap = -1, v_channel_overlap = -1;
};

struct XkvAnalysis {
  XkvAnalyzeConfig config;
  int kv_dim = 0;
  double capture_seconds = 0;
  std::vector<double> factor_seconds;  // [groups] mean time of one group's K and V factorization
  std::vector<XkvLayerRow> rows;
};

StatusOr<XkvAnalysis> analyze_xkv(const Model& model, const XkvAnalyzeConfig& config, Progress& progress);
std::string format_xkv_analysis(const XkvAnalysis& a);
std::string xkv_analysis_json(const XkvAnalysis& a);

}  // namespace kvlab
