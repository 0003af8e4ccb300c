// Per-token metrics on next-token distributions, accumulated in double.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvlab {

// log softmax of one row of logits.
void log_softmax(std::span<const float> logits, std::vector<double>* out);
int argmax(std::span<const float> logits);
// KL(p || q) in nats from log-probabilities.
double kl_divergence(std::span<const double> logp, std::span<const double> logq);

// Running sums for one policy over scored tokens.
struct TokenScores {
  int64_t tokens = 0;
  double nll = 0;        // sum of -log p(target)
  double kld = 0;        // sum of KL(reference || this)
  int64_t top1_agree = 0;  // argmax equal to the reference's
  int64_t top1_correct = 0;  // argmax equal to the target token

  double ppl() const;
  double kld_mean() const;
  double top1_rate() const;
  double accuracy() const;  // top1_correct / tokens
};

}  // namespace kvlab
