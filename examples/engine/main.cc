// A minimal engine on an installed kvlab: load a model, make a cache from a policy spec, prefill
// a prompt, decode greedily, report what the cache holds (docs/api.md).
//
//   engine MODEL SPEC [N] [PROMPT]
//     MODEL   a GGUF or llama2.c file (llama2.c: its tokenizer tok<vocab>.bin or tokenizer.bin
//             beside it), or an alias (stories260k, smollm2-135m; docs/api.md says where they
//             are looked up)
//     SPEC    a policy spec: full:dtype=f32, kivi:bits=4, "L0-2=kivi:bits=2;L3-4=full:dtype=f16"
//     N       tokens to decode, default 60
//     PROMPT  default "Once upon a time"
//
// Prints the prompt and its continuation, then the cache's bytes by kind and its bits per K/V
// value. A bad model, spec or argument: one line on stderr, exit code 2.
#include <kvlab/kvlab.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace {

// Prints the cache's bytes by kind and what its K/V state costs per value.
void print_cache(const kvlab::Model& model, const kvlab::KvCache& cache) {
  const kvlab::MemoryReport mem = cache.memory();
  const kvlab::KvGeometry g = model.cache_geometry();
  const int n_tokens = cache.seq_length(0);
  std::printf("cache %s: %d tokens\n", cache.spec().c_str(), n_tokens);
  for (int k = 0; k < int(kvlab::MemoryKind::kCount); ++k) {
    const auto kind = kvlab::MemoryKind(k);
    std::printf("  %-8s %10lld bytes\n", kvlab::memory_kind_name(kind), static_cast<long long>(mem[kind]));
  }
  // Per value: K and V of every token written, in every layer (kv_dim scalars each), as kvlab's
  // evaluation counts it. Per stored value: of the tokens the layers still hold (fewer where a
  // policy evicts).
  int64_t stored = 0;
  for (int l = 0; l < g.n_layers; ++l) stored += cache.stored_tokens(l, 0);
  const double bits = 8.0 * double(mem.kv_bytes());
  std::printf("  %-8s %10lld bytes: %.2f bits per value, %.2f per stored value\n", "kv",
              static_cast<long long>(mem.kv_bytes()), bits / (2.0 * n_tokens * g.n_layers * g.kv_dim()),
              bits / (2.0 * double(stored) * g.kv_dim()));
}

kvlab::Status run(const std::string& model_path, const std::string& spec, int n_new, const std::string& prompt) {
  KVLAB_ASSIGN_OR_RETURN(std::unique_ptr<kvlab::Model> model, kvlab::Model::load(model_path));
  // One sequence slot, slot 0. The cache uses the model's RoPE table: it must not outlive it.
  KVLAB_ASSIGN_OR_RETURN(std::unique_ptr<kvlab::KvCache> cache, model->make_cache(spec, 1));

  // As the kvlab command does: llama2.c models start with BOS, the GGUF tokenizer adds none.
  const kvlab::Tokenizer& tok = model->tokenizer();
  std::vector<int32_t> ids;
  if (model->config().format == "llama2c") ids.push_back(tok.bos_id());
  const std::vector<int32_t> body = tok.encode(prompt);
  ids.insert(ids.end(), body.begin(), body.end());

  // Prefill: the whole prompt in one forward; logits [1, vocab] of its last token. forward()
  // refuses an empty input and a sequence longer than the model's context.
  std::vector<float> logits;
  const kvlab::SeqInput prefill{0, ids};
  KVLAB_RETURN_IF_ERROR(model->forward(*cache, {&prefill, 1}, kvlab::LogitsMode::kLast, &logits));
  // Decode: one token a forward, the argmax of the previous logits (the first one on ties).
  for (int i = 0; i < n_new; ++i) {
    const auto next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == tok.eos_id()) break;
    ids.push_back(next);
    const kvlab::SeqInput step{0, std::span<const int32_t>(&ids.back(), 1)};
    KVLAB_RETURN_IF_ERROR(model->forward(*cache, {&step, 1}, kvlab::LogitsMode::kLast, &logits));
  }

  std::printf("%s\n", tok.decode(ids).c_str());
  print_cache(*model, *cache);
  return kvlab::Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 5) {
    std::fprintf(stderr, "usage: %s MODEL SPEC [N] [PROMPT]\n", argv[0]);
    return 2;
  }
  int n_new = 60;
  if (argc > 3) {
    char* end = nullptr;
    const long n = std::strtol(argv[3], &end, 10);
    if (*argv[3] == '\0' || *end != '\0' || n < 0 || n > 1 << 20) {
      std::fprintf(stderr, "engine: N must be an integer in 0..1048576 (got '%s')\n", argv[3]);
      return 2;
    }
    n_new = int(n);
  }
  const std::string prompt = argc > 4 ? argv[4] : "Once upon a time";
  const kvlab::Status s = run(argv[1], argv[2], n_new, prompt);
  if (!s.ok()) {
    std::fprintf(stderr, "engine: %s\n", s.to_string().c_str());
    return 2;
  }
  return 0;
}
