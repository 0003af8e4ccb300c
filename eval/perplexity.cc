#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>

#include "eval/metrics.h"
#include "eval/text.h"

namespace kvlab {

StatusOr<ParagraphPerplexity> paragraph_perplexity(const Model& model, const std::string& text_path,
                                                   int max_paragraphs, const std::string& policy,
                                                   Progress& progress) {
  constexpr int kBatch = 16;  // paragraphs per forward
  KVLAB_ASSIGN_OR_RETURN(std::string text, read_eval_text(text_path));
  const std::vector<std::string> paragraphs = split_paragraphs(text, max_paragraphs);
  KVLAB_ASSIGN_OR_RETURN(auto cache, model.make_cache(policy, kBatch));
  const int max_len = model.config().max_seq_len;
  const size_t V = size_t(model.config().vocab_size);

  ParagraphPerplexity r;
  double nll_sum = 0;
  std::vector<float> logits;
  std::vector<double> lp;
  for (size_t first = 0; first < paragraphs.size(); first += kBatch) {
    progress.update("perplexity", int64_t(first), int64_t(paragraphs.size()));
    const size_t last = std::min(paragraphs.size(), first + kBatch);
    std::vector<std::vector<int32_t>> ids;
    std::vector<SeqInput> inputs;
    for (size_t p = first; p < last; ++p) {
      std::vector<int32_t> t = {model.tokenizer().bos_id()};
      const std::vector<int32_t> body = model.tokenizer().encode(paragraphs[p]);
      t.insert(t.end(), body.begin(), body.end());
      if (int(t.size()) > max_len) t.resize(size_t(max_len));
      ids.push_back(std::move(t));
    }
    for (size_t i = 0; i < ids.size(); ++i) inputs.push_back({int(i), ids[i]});
    cache->reset_all();
    KVLAB_RETURN_IF_ERROR(model.forward(*cache, inputs, LogitsMode::kAll, &logits));
    size_t row = 0;
    for (const auto& t : ids) {
      for (size_t i = 0; i + 1 < t.size(); ++i) {
        log_softmax(std::span<const float>(&logits[(row + i) * V], V), &lp);
        nll_sum -= lp[size_t(t[i + 1])];
        ++r.tokens;
      }
      row += t.size();
    }
    r.paragraphs += int(ids.size());
  }
  progress.finish();
  if (r.tokens == 0) return invalid_argument("no tokens to score in '" + text_path + "'");
  r.nll = nll_sum / double(r.tokens);
  r.ppl = std::exp(r.nll);
  return r;
}

}  // namespace kvlab
