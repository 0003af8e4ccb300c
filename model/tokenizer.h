// Tokenizers: the llama2.c sentencepiece-style format (tok512.bin, tokenizer.bin) and the GGUF
// byte-level BPE ("gpt2" model, e.g. SmolLM2 with pre-tokenizer "smollm").
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvlab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text to ids, without BOS or EOS. Special/control tokens written in the text are NOT parsed:
  // "<|im_start|>" is tokenized as ordinary characters. The llama2.c format adds its dummy-prefix
  // space (as run.c does) when the text is not empty.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids to bytes. decode(encode(t)) == t for any valid UTF-8 t (the llama2.c dummy prefix is
  // removed again). Ids out of range decode to nothing; BOS/EOS decode to nothing.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual std::string kind() const = 0;  // "llama2c" or "bpe:<pre-tokenizer>"
};

// llama2.c tokenizer file: int32 max_token_length, then vocab_size records {f32 score,
// int32 len, len bytes}. `vocab_size` comes from the model header. Truncated/corrupt: kDataLoss.
StatusOr<std::unique_ptr<Tokenizer>> load_llama2c_tokenizer(const std::string& path, int vocab_size);

// Byte-level BPE from GGUF metadata (tokenizer.ggml.tokens / merges / token_type / bos / eos).
struct BpeVocab {
  std::vector<std::string> tokens;   // byte-level (GPT-2 bytes_to_unicode) strings
  std::vector<std::string> merges;   // "a b", highest priority first
  std::vector<int32_t> token_types;  // 1 normal, 3 control, 4 user-defined, 6 byte (may be empty)
  std::string pre;                   // tokenizer.ggml.pre: "smollm", "gpt2", ...
  int32_t bos_id = -1;
  int32_t eos_id = -1;
};
// Unknown pre-tokenizer names are kUnsupported (list the known ones).
StatusOr<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(BpeVocab vocab);

}  // namespace kvlab
