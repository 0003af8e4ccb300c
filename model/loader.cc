// Model::load: format detection, alias resolution, tokenizer lookup.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/file.h"
#include "base/paths.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "model/llama2c.h"
#include "model/model.h"

namespace kvlab {
namespace {

StatusOr<std::unique_ptr<Tokenizer>> gguf_tokenizer(const GgufFile& gguf) {
  KVLAB_ASSIGN_OR_RETURN(std::string kind, gguf.get_string("tokenizer.ggml.model"));
  if (kind != "gpt2") {
    return unsupported("'" + gguf.path() + "' has a '" + kind +
                       "' tokenizer; kvlab reads the byte-level BPE ('gpt2') tokenizer of GGUF files");
  }
  BpeVocab vocab;
  KVLAB_ASSIGN_OR_RETURN(vocab.tokens, gguf.get_string_array("tokenizer.ggml.tokens"));
  KVLAB_ASSIGN_OR_RETURN(vocab.merges, gguf.get_string_array("tokenizer.ggml.merges"));
  if (gguf.has("tokenizer.ggml.token_type")) {
    KVLAB_ASSIGN_OR_RETURN(std::vector<int64_t> types, gguf.get_int_array("tokenizer.ggml.token_type"));
    vocab.token_types.assign(types.begin(), types.end());
  }
  vocab.pre = "gpt2";
  if (gguf.has("tokenizer.ggml.pre")) {
    KVLAB_ASSIGN_OR_RETURN(vocab.pre, gguf.get_string("tokenizer.ggml.pre"));
  }
  KVLAB_ASSIGN_OR_RETURN(int64_t bos, gguf.get_int("tokenizer.ggml.bos_token_id"));
  KVLAB_ASSIGN_OR_RETURN(int64_t eos, gguf.get_int("tokenizer.ggml.eos_token_id"));
  vocab.bos_id = int32_t(bos);
  vocab.eos_id = int32_t(eos);
  return make_bpe_tokenizer(std::move(vocab));
}

StatusOr<std::string> llama2c_tokenizer_path(const std::string& model_path, int vocab_size) {
  const std::filesystem::path dir = std::filesystem::path(model_path).parent_path();
  const std::string candidates[] = {(dir / ("tok" + std::to_string(vocab_size) + ".bin")).string(),
                                    (dir / "tokenizer.bin").string()};
  for (const std::string& c : candidates) {
    if (file_exists(c)) return c;
  }
  return not_found("no tokenizer for '" + model_path + "' (looked for " + candidates[0] + " and " +
                   candidates[1] + "); pass --tokenizer");
}

}  // namespace

StatusOr<std::string> resolve_model_path(const std::string& name) {
  std::vector<std::string> tried;
  if (name == "stories260k") {
    tried = {models_dir() + "/stories260K.bin", shared_dir() + "/models/stories260K.bin"};
  } else if (name == "smollm2-135m") {
    tried = {models_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf", shared_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"};
  } else {
    tried = {name};
  }
  for (const std::string& p : tried) {
    if (file_exists(p)) return p;
  }
  std::string msg = "model '" + name + "' not found (looked at";
  for (const std::string& p : tried) msg += " " + p;
  msg += ")";
  if (name == "smollm2-135m") msg += "; run scripts/fetch_models.sh to download it";
  return not_found(msg);
}

StatusOr<std::unique_ptr<Model>> Model::load(const std::string& name, const std::string& tokenizer_path) {
  KVLAB_ASSIGN_OR_RETURN(std::string path, resolve_model_path(name));
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    in.read(magic, 4);
    if (in.gcount() < 4) return data_loss("'" + path + "' is too short to be a model file");
  }
  Checkpoint ckpt;
  std::unique_ptr<Tokenizer> tokenizer;
  if (std::memcmp(magic, "GGUF", 4) == 0) {
    KVLAB_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
    KVLAB_ASSIGN_OR_RETURN(ckpt, load_gguf_checkpoint(gguf));
    if (!tokenizer_path.empty()) return invalid_argument("--tokenizer is for llama2.c checkpoints; a GGUF file carries its own");
    KVLAB_ASSIGN_OR_RETURN(tokenizer, gguf_tokenizer(gguf));
  } else {
    auto loaded = load_llama2c_checkpoint(path);
    if (!loaded.ok()) {
      if (loaded.status().code() != ErrorCode::kDataLoss) return loaded.status();
      std::string shown;
      for (char c : magic) shown += (c >= 32 && c < 127) ? c : '?';
      return data_loss("'" + path + "' is not a GGUF file (magic '" + shown +
                       "') and not a llama2.c checkpoint: " + loaded.status().message());
    }
    ckpt = std::move(loaded).value();
    std::string tok = tokenizer_path;
    if (tok.empty()) {
      KVLAB_ASSIGN_OR_RETURN(tok, llama2c_tokenizer_path(path, ckpt.config.vocab_size));
    }
    KVLAB_ASSIGN_OR_RETURN(tokenizer, load_llama2c_tokenizer(tok, ckpt.config.vocab_size));
  }
  if (tokenizer->vocab_size() != ckpt.config.vocab_size) {
    return invalid_argument("tokenizer has " + std::to_string(tokenizer->vocab_size()) + " tokens, the model " +
                            std::to_string(ckpt.config.vocab_size));
  }
  return std::unique_ptr<Model>(new Model(path, std::move(ckpt.config), std::move(ckpt.weights), std::move(tokenizer)));
}

}  // namespace kvlab
