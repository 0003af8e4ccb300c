#include "eval/metrics.h"

#include <cmath>

namespace kvlab {

void log_softmax(std::span<const float> logits, std::vector<double>* out) {
  double mx = -INFINITY;
  for (float x : logits) mx = std::max(mx, double(x));
  double sum = 0;
  for (float x : logits) sum += std::exp(double(x) - mx);
  const double lse = mx + std::log(sum);
  out->resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) (*out)[i] = double(logits[i]) - lse;
}

int argmax(std::span<const float> logits) {
  int best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = int(i);
  }
  return best;
}

double kl_divergence(std::span<const double> logp, std::span<const double> logq) {
  double kl = 0;
  for (size_t i = 0; i < logp.size(); ++i) kl += std::exp(logp[i]) * (logp[i] - logq[i]);
  return std::max(kl, 0.0);
}

double TokenScores::ppl() const { return tokens ? std::exp(nll / double(tokens)) : NAN; }
double TokenScores::kld_mean() const { return tokens ? kld / double(tokens) : NAN; }
double TokenScores::top1_rate() const { return tokens ? double(top1_agree) / double(tokens) : NAN; }
double TokenScores::accuracy() const { return tokens ? double(top1_correct) / double(tokens) : NAN; }

}  // namespace kvlab
