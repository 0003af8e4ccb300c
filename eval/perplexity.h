// Perplexity over paragraphs (the protocol of ../shared/models/SOURCES.md): each paragraph is
// BOS + encode(paragraph), cut to the model's context, run as one prefill; every token after
// the first is predicted and scored.
#pragma once

#include <cstdint>
#include <string>

#include "base/progress.h"
#include "base/status.h"
#include "model/model.h"

namespace kvlab {

struct ParagraphPerplexity {
  int paragraphs = 0;
  int64_t tokens = 0;  // predicted tokens
  double nll = 0;      // mean negative log-likelihood, nats
  double ppl = 0;
};

StatusOr<ParagraphPerplexity> paragraph_perplexity(const Model& model, const std::string& text_path,
                                                   int max_paragraphs, const std::string& policy,
                                                   Progress& progress);

}  // namespace kvlab
