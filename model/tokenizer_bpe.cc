// Byte-level BPE from GGUF metadata (tokenizer.ggml.model "gpt2"), as HF tokenizers runs it.
//
// encode(text):
//   1. Pre-tokenize the bytes into pieces (below; the pre-tokenizer is tokenizer.ggml.pre).
//   2. In each piece, every byte b becomes the one-character token bytes_to_unicode(b) (GPT-2's
//      table: the printable bytes 0x21..0x7E, 0xA1..0xAC, 0xAE..0xFF stand for themselves, the
//      other 68 bytes for U+0100.. in byte order). A byte whose character is not in the
//      vocabulary is dropped, and its neighbours become adjacent, as HF's BPE without an unk
//      token does (SmolLM2 has no token for 0x04 0x06 0x13 0x14 0x16 0x1D 0xC0 0xC1 0xF1 0xF2
//      0xF5..0xFF).
//   3. Merge: repeatedly take the adjacent pair with the lowest merge rank (its index in
//      tokenizer.ggml.merges), the leftmost one on equal ranks, and replace it by the token
//      for the concatenation. A min-heap over the pairs of a linked list does this in
//      O(m log m) for m bytes; results are cached per distinct piece during one encode() call.
// Control tokens (token type 3, e.g. "<|im_start|>") are never produced: merges that would
// produce one are ignored, and text that spells one is encoded as ordinary characters.
//
// Pre-tokenizers (by tokenizer.ggml.pre):
//   "gpt2"    the GPT-2 pattern below on the whole text.
//   "smollm"  first every single \p{N} code point becomes a piece of its own, then the GPT-2
//             pattern runs on each stretch between them (and never across one). This is
//             HF tokenizers' Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true,
//             add_prefix_space=false)], the pre_tokenizer of SmolLM2's tokenizer.json, and
//             llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM (src/llama-vocab.cpp: regex_exprs
//             {"\\p{N}", <the GPT-2 pattern>}, shared with STARCODER/REFACT/COMMAND_R).
//
// The GPT-2 pattern, 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+,
// is matched by hand (no std::regex: it has no \p classes and is slow). Scanning from the start
// of a stretch, the first alternative that matches at the current position wins, and the next
// match starts where it ended, so the pieces cover the stretch exactly:
//   - "'" followed by s, t, m, d, re, ve or ll (ASCII, case-sensitive): that contraction.
//   - An optional U+0020 space, then a maximal run of letters (\p{L}), or of numbers (\p{N}),
//     or of "other" code points (neither whitespace, letter nor number: punctuation, symbols,
//     controls, and each ill-formed UTF-8 byte). The space joins only when a run follows it.
//   - Otherwise the position starts a maximal run of whitespace (Unicode White_Space, see
//     unicode.h) of k code points. \s+(?!\S) takes the longest prefix not followed by a
//     non-whitespace code point: the whole run if it reaches the end of the stretch, else its
//     first k-1 code points, leaving the last one to start the next piece (" ?\p{L}+" makes
//     "   word" into "  ", " word"). For k == 1 before a non-space, \s+ takes the single one.
// \s, \p{L} and \p{N} are the classes of model/unicode.h (Unicode 14 tables); HF tokenizers
// matches with Oniguruma, whose \s is the same White_Space set.
#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/pair_merge.h"
#include "model/tokenizer.h"
#include "model/unicode.h"

namespace kvlab {
namespace {

constexpr int32_t kTokenTypeControl = 3;

enum class PreTokenizer { kGpt2, kSmollm };

struct KnownPreTokenizer {
  std::string_view name;
  PreTokenizer kind;
};
constexpr KnownPreTokenizer kKnownPreTokenizers[] = {
    {"gpt2", PreTokenizer::kGpt2},
    {"smollm", PreTokenizer::kSmollm},
};

// GPT-2's bytes_to_unicode(): byte -> the code point that stands for it in token strings.
std::array<char32_t, 256> make_byte_to_codepoint() {
  std::array<char32_t, 256> table{};
  char32_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next_extra++;
  }
  return table;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringToId = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// ---------------------------------------------------------------------------------------------
// Pre-tokenization: calls emit(begin, end) for each piece, as byte offsets into `text`.

enum class CharClass : uint8_t { kLetter, kNumber, kWhitespace, kOther };

struct Unit {
  CharClass cls;
  int length;  // bytes
};

Unit unit_at(std::string_view text, size_t pos) {
  const unicode::Utf8Unit u = unicode::decode_utf8(text, pos);
  CharClass cls = CharClass::kOther;  // ill-formed bytes decode to U+FFFD, a symbol
  if (unicode::is_letter(u.cp)) {
    cls = CharClass::kLetter;
  } else if (unicode::is_number(u.cp)) {
    cls = CharClass::kNumber;
  } else if (unicode::is_whitespace(u.cp)) {
    cls = CharClass::kWhitespace;
  }
  return {cls, u.length};
}

// Length of a contraction ('s 't 'm 'd 're 've 'll) at text[pos], or 0.
size_t contraction_length(std::string_view text, size_t pos, size_t end) {
  if (text[pos] != '\'' || pos + 1 >= end) return 0;
  const char a = text[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= end) return 0;
  const char b = text[pos + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// The GPT-2 pattern over text[begin, end).
template <typename Emit>
void split_gpt2(std::string_view text, size_t begin, size_t end, Emit&& emit) {
  const std::string_view stretch = text.substr(0, end);  // classes never look past `end`
  size_t pos = begin;
  while (pos < end) {
    if (const size_t n = contraction_length(text, pos, end)) {
      emit(pos, pos + n);
      pos += n;
      continue;
    }
    Unit u = unit_at(stretch, pos);
    size_t run_start = pos;  // where the class run begins (after an optional space)
    if (text[pos] == ' ' && pos + 1 < end) {
      const Unit after = unit_at(stretch, pos + 1);
      if (after.cls != CharClass::kWhitespace) {
        u = after;
        run_start = pos + 1;
      }
    }
    if (u.cls != CharClass::kWhitespace) {
      size_t p = run_start + u.length;
      while (p < end) {
        const Unit v = unit_at(stretch, p);
        if (v.cls != u.cls) break;
        p += v.length;
      }
      emit(pos, p);
      pos = p;
      continue;
    }
    // Whitespace run: keep its last code point for the next piece unless the run ends the
    // stretch or is a single code point.
    size_t p = pos + u.length;
    size_t last = pos;  // start of the last code point of the run
    while (p < end) {
      const Unit v = unit_at(stretch, p);
      if (v.cls != CharClass::kWhitespace) break;
      last = p;
      p += v.length;
    }
    const size_t stop = (p == end || last == pos) ? p : last;
    emit(pos, stop);
    pos = stop;
  }
}

// Digits(individual_digits) then the GPT-2 pattern on each stretch between numbers.
template <typename Emit>
void split_smollm(std::string_view text, Emit&& emit) {
  size_t stretch_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    const unicode::Utf8Unit u = unicode::decode_utf8(text, pos);
    if (unicode::is_number(u.cp)) {
      split_gpt2(text, stretch_begin, pos, emit);
      emit(pos, pos + u.length);
      stretch_begin = pos + u.length;
    }
    pos += u.length;
  }
  split_gpt2(text, stretch_begin, text.size(), emit);
}

// ---------------------------------------------------------------------------------------------

class BpeTokenizer final : public Tokenizer {
 public:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };

  BpeTokenizer(BpeVocab vocab, PreTokenizer pre, std::array<int32_t, 256> byte_token,
               std::unordered_map<uint64_t, Merge> merges, std::vector<std::string> token_bytes)
      : vocab_(std::move(vocab)),
        pre_(pre),
        byte_token_(byte_token),
        merges_(std::move(merges)),
        token_bytes_(std::move(token_bytes)) {}

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int vocab_size() const override { return static_cast<int>(vocab_.tokens.size()); }
  int32_t bos_id() const override { return vocab_.bos_id; }
  int32_t eos_id() const override { return vocab_.eos_id; }
  std::string kind() const override { return "bpe:" + vocab_.pre; }

 private:
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  const Merge* find_merge(int32_t a, int32_t b) const {
    const auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;

  BpeVocab vocab_;
  PreTokenizer pre_;
  std::array<int32_t, 256> byte_token_;             // byte -> its one-character token, or -1
  std::unordered_map<uint64_t, Merge> merges_;      // (left id, right id) -> rank and result
  std::vector<std::string> token_bytes_;            // [vocab] decoded bytes; "" for control
};

// Lowest rank first, leftmost on ties, over a linked list of symbols (the piece's bytes).
void BpeTokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  std::vector<int32_t> ids;
  ids.reserve(piece.size());
  for (char c : piece) {
    const int32_t id = byte_token_[static_cast<uint8_t>(c)];
    if (id >= 0) ids.push_back(id);
  }
  const int32_t n = static_cast<int32_t>(ids.size());
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  PairMergeScratch scratch;
  const auto lookup = [this](int32_t left, int32_t right, int32_t* merged, double* priority) {
    const Merge* m = find_merge(left, right);
    if (!m) return false;
    *merged = m->merged;
    *priority = m->rank;
    return true;
  };
  merge_pairs(ids, 0, n, lookup, out, scratch);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  // Pieces repeat a lot in prose; the cache lives for this call only, so encode() stays const
  // and thread-safe. Keys point into `text`.
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;  // -> [first, count) in `memo`
  std::vector<int32_t> memo;
  const auto emit = [&](size_t begin, size_t end) {
    const std::string_view piece = text.substr(begin, end - begin);
    if (piece.size() > 64) {  // long runs (whitespace, symbols) are rare: no need to keep them
      bpe(piece, out);
      return;
    }
    const auto [it, inserted] = cache.try_emplace(piece);
    if (inserted) {
      const size_t first = memo.size();
      bpe(piece, memo);
      it->second = {static_cast<uint32_t>(first), static_cast<uint32_t>(memo.size() - first)};
    }
    out.insert(out.end(), memo.begin() + it->second.first, memo.begin() + it->second.first + it->second.second);
  };
  if (pre_ == PreTokenizer::kSmollm) {
    split_smollm(text, emit);
  } else {
    split_gpt2(text, 0, text.size(), emit);
  }
  return out;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id == vocab_.bos_id || id == vocab_.eos_id) continue;
    out += token_bytes_[id];
  }
  return out;
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> make_bpe_tokenizer(BpeVocab vocab) {
  const auto* known = std::find_if(std::begin(kKnownPreTokenizers), std::end(kKnownPreTokenizers),
                                   [&](const KnownPreTokenizer& k) { return k.name == vocab.pre; });
  if (known == std::end(kKnownPreTokenizers)) {
    std::string names;
    for (const auto& k : kKnownPreTokenizers) {
      if (!names.empty()) names += ", ";
      names += k.name;
    }
    return unsupported("BPE pre-tokenizer \"" + vocab.pre + "\" is not supported (known: " + names + ")");
  }
  const size_t n = vocab.tokens.size();
  if (n == 0 || n > static_cast<size_t>(INT32_MAX)) {
    return data_loss("BPE vocabulary has " + std::to_string(n) + " tokens");
  }
  if (!vocab.token_types.empty() && vocab.token_types.size() != n) {
    return data_loss("BPE vocabulary has " + std::to_string(n) + " tokens but " +
                     std::to_string(vocab.token_types.size()) + " token types");
  }
  for (const auto& [name, id] : {std::pair{"bos", vocab.bos_id}, std::pair{"eos", vocab.eos_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return data_loss(std::string("BPE ") + name + " id " + std::to_string(id) + " is outside the vocabulary of " +
                       std::to_string(n));
    }
  }
  const auto is_control = [&](int32_t id) {
    return !vocab.token_types.empty() && vocab.token_types[id] == kTokenTypeControl;
  };

  StringToId token_to_id;
  token_to_id.reserve(n);
  for (size_t id = 0; id < n; ++id) token_to_id.emplace(vocab.tokens[id], static_cast<int32_t>(id));  // first wins
  const auto lookup = [&](std::string_view s) {
    const auto it = token_to_id.find(s);
    return it == token_to_id.end() ? -1 : it->second;
  };

  // Byte-level alphabet, both ways.
  const std::array<char32_t, 256> byte_to_cp = make_byte_to_codepoint();
  std::array<int32_t, 256> byte_token{};
  std::vector<int16_t> cp_to_byte(324, -1);  // the alphabet's code points are all below 324
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(s, byte_to_cp[b]);
    const int32_t id = lookup(s);
    byte_token[b] = (id >= 0 && !is_control(id)) ? id : -1;
    cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
  }

  std::unordered_map<uint64_t, BpeTokenizer::Merge> merges;
  merges.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& m = vocab.merges[rank];
    const size_t space = m.find(' ', 1);
    const std::string where = "BPE merge " + std::to_string(rank) + " \"" + m + "\": ";
    if (space == std::string::npos || space + 1 >= m.size()) return data_loss(where + "not of the form \"a b\"");
    const std::string_view left = std::string_view(m).substr(0, space);
    const std::string_view right = std::string_view(m).substr(space + 1);
    const int32_t a = lookup(left), b = lookup(right);
    const int32_t merged = lookup(std::string(left) + std::string(right));
    if (a < 0 || b < 0 || merged < 0) return data_loss(where + "a part or the result is not in the vocabulary");
    if (is_control(merged)) continue;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    // A repeated merge keeps its first (lowest) rank, as llama.cpp does (HF keeps the last one;
    // SmolLM2 repeats none).
    merges.try_emplace(key, BpeTokenizer::Merge{static_cast<int32_t>(rank), merged});
  }

  // What each token decodes to: byte-level characters map back to their bytes; a character
  // outside that alphabet (only in added tokens) stays as its UTF-8; control tokens give "".
  std::vector<std::string> token_bytes(n);
  for (size_t id = 0; id < n; ++id) {
    if (is_control(static_cast<int32_t>(id))) continue;
    const std::string& t = vocab.tokens[id];
    for (size_t pos = 0; pos < t.size();) {
      const unicode::Utf8Unit u = unicode::decode_utf8(t, pos);
      if (u.valid && u.cp < cp_to_byte.size() && cp_to_byte[u.cp] >= 0) {
        token_bytes[id] += static_cast<char>(cp_to_byte[u.cp]);
      } else {
        token_bytes[id].append(t, pos, u.length);
      }
      pos += u.length;
    }
  }

  const PreTokenizer pre = known->kind;
  return std::unique_ptr<Tokenizer>(std::make_unique<BpeTokenizer>(std::move(vocab), pre, byte_token,
                                                                    std::move(merges), std::move(token_bytes)));
}

}  // namespace kvlab
