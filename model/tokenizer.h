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

// Implementations are immutable after construction: encode() and decode() are thread-safe.
// How each one encodes is described at the top of tokenizer_llama2c.cc and tokenizer_bpe.cc.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text to ids, without BOS or EOS. Special/control tokens written in the text are NOT parsed:
  // "<|im_start|>" is tokenized as ordinary characters. The llama2.c format adds its dummy-prefix
  // space (as run.c does) when the text is not empty. Any bytes are accepted (ill-formed UTF-8
  // included) and always give the same ids. Byte-level BPE drops a byte whose byte-level
  // character has no token, as HF tokenizers does (SmolLM2 lacks 0x04 0x06 0x13 0x14 0x16 0x1D
  // and the lead bytes 0xF1 0xF2, so code points U+40000..U+BFFFF are lost too).
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids to bytes. decode(encode(t)) == t for any valid UTF-8 t, except for the bytes byte-level
  // BPE drops (above). Ids out of range, BOS/EOS and BPE control tokens decode to nothing.
  // llama2.c: "<0xAB>" pieces decode to the byte 0xAB, and the leading space of the first token
  // (after an optional BOS) is removed, the dummy prefix: `ids` are taken as a whole text.
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual std::string kind() const = 0;  // "llama2c" or "bpe:<pre-tokenizer>"
};

// llama2.c tokenizer file: int32 max_token_length, then vocab_size records {f32 score,
// int32 len, len bytes}. `vocab_size` comes from the model header. Ids 0/1/2 are unk/BOS/EOS and
// ids 3..258 must be the byte-fallback pieces "<0x00>".."<0xFF>".
// Errors: a missing file is kNotFound; vocab_size < 259 is kInvalidArgument; a truncated or
// corrupt file (any length outside [0, max_token_length], a non-finite score, bytes left over
// after the last record, a wrong byte-fallback piece) is kDataLoss naming the token and offset.
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
// Known pre-tokenizers: "gpt2" and "smollm"; others are kUnsupported (the message lists the
// known ones). A malformed vocabulary (a merge that is not "a b" over tokens whose concatenation
// is a token, token_types of another length, bos/eos outside the vocabulary) is kDataLoss, since
// it comes from a file. If a token string occurs twice, the lower id is used.
StatusOr<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(BpeVocab vocab);

}  // namespace kvlab
