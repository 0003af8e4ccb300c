// The llama2.c tokenizer (tok512.bin, tokenizer.bin): loading and the encoder of run.c.
//
// Encoding, as run.c's encode() does it (without BOS/EOS, which callers add):
//   1. If the text is not empty, start with the dummy-prefix token for " ".
//   2. Split the bytes into groups: a group starts at any byte and takes up to 3 following
//      continuation bytes (10xxxxxx). For UTF-8 text this is one group per code point. Look
//      each group up in the vocabulary; if it is missing, emit one byte-fallback id per byte
//      (byte + 3).
//   3. Repeatedly merge the adjacent pair whose concatenated pieces form a vocabulary entry
//      with the highest score (strictly above -1e10); on equal scores the leftmost pair wins.
//      Stop when no adjacent pair forms an entry.
//
// run.c rescans the whole sequence after every merge, O(n^2) lookups for n code points: far
// too slow on a 600 KB text encoded as one string. Two changes make it fast and keep the result
// identical (tests/tokenizer_test.cc checks it against a literal transcription of run.c's loop):
//   - Barriers. Every token's piece is the concatenation of the pieces of a run of initial
//     tokens, so a merge across the boundary between initial tokens x and y makes a piece that
//     contains the byte pair (last byte of x's piece, first byte of y's piece). If no
//     vocabulary piece contains that byte pair, no merge ever crosses the boundary. Merges on
//     the two sides never touch each other, so the order in which run.c interleaves them does
//     not matter, and each segment between barriers is encoded on its own (with these
//     vocabularies a segment is about one word).
//   - Within a segment the candidate pairs sit in a max-heap ordered by (score, then position)
//     over a doubly linked list of tokens. A merge only changes the pairs next to it, so only
//     those are pushed; entries that a merge made stale are recognised when popped (their
//     tokens or adjacency no longer hold) and dropped. List order follows the original
//     positions, so "leftmost among the best" in the list is "smallest position" in the heap,
//     and every merge is the one run.c would make.
//
// Where this differs from run.c, on inputs run.c cannot handle:
//   - The text is a string_view: a NUL byte is an ordinary byte (run.c stops at it).
//   - If the vocabulary has no " " piece, the dummy prefix is the byte-fallback id for 0x20
//     (run.c would emit id -1).
//   - If two vocabulary entries have the same piece, lookups return the lower id (run.c's
//     bsearch over a qsort-ed array returns either one).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/file.h"
#include "model/pair_merge.h"
#include "model/tokenizer.h"

namespace kvlab {
namespace {

constexpr int32_t kBosId = 1;
constexpr int32_t kEosId = 2;
constexpr int32_t kByteFallbackOffset = 3;  // byte b is id b + 3
constexpr float kMinMergeScore = -1e10f;     // run.c's initial best_score: merges need more

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

bool is_continuation(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte of a "<0xAB>" piece, or -1.
int byte_fallback_value(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  const int hi = hex_digit(piece[3]), lo = hex_digit(piece[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// (left id, right id) -> merged id, as a flat open-addressing hash table: the hot lookup of the
// encoder, so it must be cheap both when the pair merges and when it does not.
class PairTable {
 public:
  void build(const std::vector<std::pair<uint64_t, int32_t>>& entries) {
    size_t capacity = 16;
    while (capacity < 2 * entries.size()) capacity *= 2;
    keys_.assign(capacity, kEmpty);
    values_.assign(capacity, -1);
    mask_ = capacity - 1;
    for (const auto& [key, value] : entries) {
      size_t slot = hash(key);
      while (keys_[slot] != kEmpty && keys_[slot] != key) slot = (slot + 1) & mask_;
      keys_[slot] = key;
      values_[slot] = value;
    }
  }
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  int32_t find(uint64_t key) const {
    for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return values_[slot];
      if (keys_[slot] == kEmpty) return -1;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // never a key: ids are below 2^31
  size_t hash(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 32) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> values_;
  size_t mask_ = 0;
};

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), scores_(std::move(scores)) {
    piece_to_id_.reserve(pieces_.size());
    for (size_t id = 0; id < pieces_.size(); ++id) {
      piece_to_id_.emplace(pieces_[id], static_cast<int32_t>(id));  // keeps the lower id
    }
    piece_byte_.resize(pieces_.size());
    canonical_.resize(pieces_.size());
    for (size_t id = 0; id < pieces_.size(); ++id) {
      piece_byte_[id] = static_cast<int16_t>(byte_fallback_value(pieces_[id]));
      canonical_[id] = lookup(pieces_[id]);
      const std::string& p = pieces_[id];
      for (size_t i = 0; i + 1 < p.size(); ++i) {
        in_some_piece_[static_cast<uint8_t>(p[i]) * 256 + static_cast<uint8_t>(p[i + 1])] = true;
      }
    }
    // Every pair run.c can merge: both halves of a piece split anywhere are pieces, and the
    // piece (its lowest id, as lookups return) scores above -1e10.
    std::vector<std::pair<uint64_t, int32_t>> entries;
    for (const std::string& p : pieces_) {
      const int32_t merged = lookup(p);
      if (!(scores_[merged] > kMinMergeScore)) continue;
      for (size_t k = 1; k < p.size(); ++k) {
        const int32_t a = lookup(std::string_view(p).substr(0, k));
        const int32_t b = lookup(std::string_view(p).substr(k));
        if (a >= 0 && b >= 0) entries.emplace_back(PairTable::key(a, b), merged);
      }
    }
    pairs_.build(entries);
  }

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int32_t> ids) const override;
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int32_t bos_id() const override { return kBosId; }
  int32_t eos_id() const override { return kEosId; }
  std::string kind() const override { return "llama2c"; }

 private:
  int32_t lookup(std::string_view piece) const {
    const auto it = piece_to_id_.find(piece);
    return it == piece_to_id_.end() ? -1 : it->second;
  }
  void append_piece_or_bytes(std::string_view group, std::vector<int32_t>& out) const {
    const int32_t id = lookup(group);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
    for (char c : group) out.push_back(static_cast<uint8_t>(c) + kByteFallbackOffset);
  }

  std::vector<std::string> pieces_;  // [vocab_size] token bytes
  std::vector<float> scores_;        // [vocab_size] merge priority: higher merges first
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> piece_to_id_;
  std::vector<int16_t> piece_byte_;  // [vocab_size] the byte of a "<0xAB>" piece, else -1
  std::vector<bool> in_some_piece_ = std::vector<bool>(256 * 256);  // [a * 256 + b]: "ab" occurs in a piece
  std::vector<int32_t> canonical_;   // [vocab_size] the lowest id with the same piece
  PairTable pairs_;                  // (canonical a, canonical b) -> the id of piece a + piece b,
                                     // if run.c may merge them
};

std::vector<int32_t> Llama2cTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  ids.reserve(text.size() + 1);
  append_piece_or_bytes(" ", ids);  // dummy prefix

  for (size_t pos = 0; pos < text.size();) {
    size_t len = 1;
    while (pos + len < text.size() && len < 4 && is_continuation(text[pos + len])) ++len;
    append_piece_or_bytes(text.substr(pos, len), ids);
    pos += len;
  }

  // Merging, segment by segment; higher scores merge first.
  const int32_t n = static_cast<int32_t>(ids.size());
  const auto lookup = [this](int32_t left, int32_t right, int32_t* merged, double* priority) {
    *merged = pairs_.find(PairTable::key(canonical_[left], canonical_[right]));
    if (*merged < 0) return false;
    *priority = -double(scores_[*merged]);
    return true;
  };
  const auto is_barrier = [&](int32_t left_id, int32_t right_id) {
    const std::string& l = pieces_[left_id];
    const std::string& r = pieces_[right_id];
    if (l.empty() || r.empty()) return false;  // not for initial tokens; merely no barrier
    return !in_some_piece_[static_cast<uint8_t>(l.back()) * 256 + static_cast<uint8_t>(r.front())];
  };
  PairMergeScratch scratch;
  std::vector<int32_t> out;
  out.reserve(n);
  for (int32_t begin = 0; begin < n;) {
    int32_t end = begin + 1;
    while (end < n && !is_barrier(ids[end - 1], ids[end])) ++end;
    merge_pairs(ids, begin, end, lookup, out, scratch);
    begin = end;
  }
  return out;
}

// Decoding treats `ids` as a whole sequence from the start of a text: BOS/EOS and ids out of
// range produce nothing, "<0xAB>" pieces produce the byte 0xAB, other pieces their bytes, and
// the dummy-prefix space (the leading ' ' of the first token after an optional BOS) is dropped.
std::string Llama2cTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || id == kBosId || id == kEosId) continue;
    std::string_view piece = pieces_[id];
    char byte = 0;
    if (piece_byte_[id] >= 0) {
      byte = static_cast<char>(piece_byte_[id]);
      piece = std::string_view(&byte, 1);
    }
    if (first && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
    first = false;
    out.append(piece);
  }
  return out;
}

// Bounds-checked little-endian reads over the file bytes.
class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& bytes) : bytes_(bytes) {}
  size_t offset() const { return offset_; }
  size_t remaining() const { return bytes_.size() - offset_; }
  bool read(void* dst, size_t n) {
    if (n > remaining()) return false;
    std::memcpy(dst, bytes_.data() + offset_, n);
    offset_ += n;
    return true;
  }
  bool read_string(std::string& dst, size_t n) {
    if (n > remaining()) return false;
    dst.assign(reinterpret_cast<const char*>(bytes_.data() + offset_), n);
    offset_ += n;
    return true;
  }

 private:
  const std::vector<uint8_t>& bytes_;
  size_t offset_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> load_llama2c_tokenizer(const std::string& path, int vocab_size) {
  // 3 special ids + 256 byte-fallback ids: the encoder emits byte + 3 for any byte.
  constexpr int kMinVocab = kByteFallbackOffset + 256;
  if (vocab_size < kMinVocab) {
    return invalid_argument("llama2.c tokenizer " + path + ": vocab_size " + std::to_string(vocab_size) +
                            " is below " + std::to_string(kMinVocab) +
                            " (ids 3..258 must be the byte-fallback tokens)");
  }
  KVLAB_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, read_file_bytes(path));
  const std::string where = "llama2.c tokenizer " + path + ": ";
  Reader r(bytes);

  int32_t max_token_length = 0;
  if (!r.read(&max_token_length, 4)) {
    return data_loss(where + "truncated: " + std::to_string(bytes.size()) +
                     " bytes, no room for the int32 max_token_length header");
  }
  if (max_token_length <= 0 || max_token_length > (1 << 16)) {
    return data_loss(where + "max_token_length " + std::to_string(max_token_length) +
                     " is not in [1, 65536]: not a llama2.c tokenizer file or corrupt");
  }

  std::vector<std::string> pieces(vocab_size);
  std::vector<float> scores(vocab_size);
  for (int id = 0; id < vocab_size; ++id) {
    const std::string at = " (token " + std::to_string(id) + " at byte offset " + std::to_string(r.offset()) + ")";
    float score = 0;
    int32_t len = 0;
    if (!r.read(&score, 4) || !r.read(&len, 4)) {
      return data_loss(where + "truncated in a record header" + at + "; expected " +
                       std::to_string(vocab_size) + " records");
    }
    if (!std::isfinite(score)) return data_loss(where + "score is not finite" + at);
    if (len < 0 || len > max_token_length) {
      return data_loss(where + "token length " + std::to_string(len) + " is outside [0, max_token_length=" +
                       std::to_string(max_token_length) + "]" + at);
    }
    if (!r.read_string(pieces[id], static_cast<size_t>(len))) {
      return data_loss(where + "truncated in the bytes of a token of length " + std::to_string(len) + at);
    }
    scores[id] = score;
  }
  if (r.remaining() != 0) {
    return data_loss(where + std::to_string(r.remaining()) + " bytes left after " + std::to_string(vocab_size) +
                     " records: the file holds more tokens than the model's vocab_size, or is corrupt");
  }
  for (int b = 0; b < 256; ++b) {
    const int id = b + kByteFallbackOffset;
    if (byte_fallback_value(pieces[id]) != b) {
      return data_loss(where + "token " + std::to_string(id) + " is \"" + pieces[id] +
                       "\", expected the byte-fallback piece for byte " + std::to_string(b));
    }
  }
  return std::unique_ptr<Tokenizer>(
      std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores)));
}

}  // namespace kvlab
