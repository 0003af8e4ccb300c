// Tokenizer tests: UTF-8 decoding and code-point classes, the llama2.c tokenizer (tok512.bin,
// the 32k Llama 2 tokenizer.bin, synthetic files), and the SmolLM2 byte-level BPE from the GGUF.
//
// References are independent of the code under test:
//   - llama2.c: the golden ids of ../shared/models/SOURCES.md, and run_c_encode() below, a
//     literal transcription of run.c's O(n^2) merge loop over a vocabulary parsed here.
//   - SmolLM2: ids written by scripts/fixtures/tokenizer_ids.py with HF tokenizers
//     (tests/fixtures/smollm2_*). Those tests skip when the GGUF is absent (fetch it with
//     scripts/fetch_models.sh).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/unicode.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

using kvlab::testing::fixture_path;
using kvlab::testing::shared_data_path;

// ---------------------------------------------------------------------------------------------
// Helpers

std::string read_text(const std::string& path) {
  auto text = read_file_text(path);
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  return text.ok() ? *text : std::string();
}

// Printable ASCII as is, everything else escaped, so failure messages show the bytes.
std::string escaped(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

std::string join(std::span<const int32_t> ids) {
  std::string out;
  for (int32_t id : ids) {
    if (!out.empty()) out += ' ';
    out += std::to_string(id);
  }
  return out;
}

// The first `n` bytes of `text`, moved back so that no UTF-8 sequence is split (the same rule as
// scripts/fixtures/tokenizer_ids.py).
std::string utf8_prefix(const std::string& text, size_t n) {
  if (n >= text.size()) return text;
  while (n > 0 && (static_cast<uint8_t>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(0, n);
}

// "" when got == want, else where they first differ, the ids around it and the text there.
std::string first_mismatch(const Tokenizer& tok, std::span<const int32_t> got, std::span<const int32_t> want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return "";
  const auto window = [&](std::span<const int32_t> ids, size_t from, size_t to) {
    return ids.subspan(std::min(from, ids.size()), std::min(to, ids.size()) - std::min(from, ids.size()));
  };
  const size_t lo = i >= 8 ? i - 8 : 0;
  std::string msg = "first mismatch at id index " + std::to_string(i) + " (got " + std::to_string(got.size()) +
                    " ids, want " + std::to_string(want.size()) + ")\n";
  msg += "  got  [" + std::to_string(lo) + "..]: " + join(window(got, lo, i + 8)) + "\n";
  msg += "  want [" + std::to_string(lo) + "..]: " + join(window(want, lo, i + 8)) + "\n";
  msg += "  text before: \"" + escaped(tok.decode(window(want, lo, i))) + "\"\n";
  msg += "  want from there: \"" + escaped(tok.decode(window(want, i, i + 8))) + "\"\n";
  msg += "  got from there:  \"" + escaped(tok.decode(window(got, i, i + 8))) + "\"";
  return msg;
}

// A random string of valid UTF-8: mostly ASCII, some Latin/Cyrillic/CJK, some astral (emoji).
// `avoid(cp)` excludes code points.
template <typename Avoid>
std::string random_utf8(std::mt19937& rng, int n_codepoints, Avoid avoid) {
  std::string s;
  std::uniform_int_distribution<int> pick(0, 99);
  while (n_codepoints > 0) {
    const int r = pick(rng);
    char32_t cp;
    if (r < 55) {
      cp = std::uniform_int_distribution<char32_t>(0x20, 0x7E)(rng);
    } else if (r < 62) {
      const char32_t ws[] = {'\n', '\t', ' ', ' ', '\r', 0xA0, 0x3000};
      cp = ws[std::uniform_int_distribution<int>(0, 6)(rng)];
    } else if (r < 75) {
      cp = std::uniform_int_distribution<char32_t>(0xA0, 0x52F)(rng);
    } else if (r < 85) {
      cp = std::uniform_int_distribution<char32_t>(0x3000, 0x9FFF)(rng);
    } else if (r < 92) {
      cp = std::uniform_int_distribution<char32_t>(0x1F300, 0x1FAFF)(rng);
    } else {
      cp = std::uniform_int_distribution<char32_t>(0, 0x10FFFF)(rng);
    }
    if ((cp >= 0xD800 && cp <= 0xDFFF) || avoid(cp)) continue;
    unicode::append_utf8(s, cp);
    --n_codepoints;
  }
  return s;
}

std::string random_bytes(std::mt19937& rng, int n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and code-point classes

TEST(Unicode, DecodesWellFormedSequences) {
  const struct {
    const char* bytes;
    char32_t cp;
    int length;
  } cases[] = {{"a", 'a', 1},          {"\x7F", 0x7F, 1},          {"\xC3\xA9", 0xE9, 2},
               {"\xDF\xBF", 0x7FF, 2}, {"\xE2\x82\xAC", 0x20AC, 3}, {"\xEF\xBF\xBF", 0xFFFF, 3},
               {"\xF0\x9F\x98\x80", 0x1F600, 4}, {"\xF4\x8F\xBF\xBF", 0x10FFFF, 4}};
  for (const auto& c : cases) {
    const unicode::Utf8Unit u = unicode::decode_utf8(c.bytes, 0);
    EXPECT_TRUE(u.valid) << escaped(c.bytes);
    EXPECT_EQ(u.cp, c.cp) << escaped(c.bytes);
    EXPECT_EQ(u.length, c.length) << escaped(c.bytes);
  }
  EXPECT_EQ(unicode::decode_utf8("", 0).length, 0);
  EXPECT_EQ(unicode::decode_utf8(std::string_view("\0", 1), 0).valid, true);  // U+0000 is a code point
}

TEST(Unicode, IllFormedBytesBecomeSingleReplacementUnits) {
  // Each entry: bytes, and the lengths/validity of the units it must decode into.
  const struct {
    std::string bytes;
    std::vector<int> units;  // unit lengths; negative = invalid unit of that length
  } cases[] = {
      {"\x80", {-1}},                          // stray continuation byte
      {"\xC0\xAF", {-1, -1}},                  // overlong '/'
      {"\xC1\xBF", {-1, -1}},                  // overlong
      {"\xE0\x80\xAF", {-1, -1, -1}},          // overlong 3-byte
      {"\xED\xA0\x80", {-1, -1, -1}},          // surrogate U+D800
      {"\xF0\x8F\xBF\xBF", {-1, -1, -1, -1}},  // overlong 4-byte
      {"\xF4\x90\x80\x80", {-1, -1, -1, -1}},  // U+110000
      {"\xF5\xFF\xFE", {-1, -1, -1}},          // never valid in UTF-8
      {"\xE2\x82", {-1, -1}},                  // truncated at the end
      {"\xE2\x82" "a\xC3\xA9", {-1, -1, 1, 2}},  // broken sequence: resume at the next byte
      {"\xF0\x9F\x98" " x", {-1, -1, -1, 1, 1}},
  };
  for (const auto& c : cases) {
    std::vector<int> got;
    for (size_t pos = 0; pos < c.bytes.size();) {
      const unicode::Utf8Unit u = unicode::decode_utf8(c.bytes, pos);
      ASSERT_GT(u.length, 0);
      if (!u.valid) {
        EXPECT_EQ(u.cp, unicode::kReplacement);
      }
      got.push_back(u.valid ? u.length : -u.length);
      pos += u.length;
    }
    EXPECT_EQ(got, c.units) << escaped(c.bytes);
    EXPECT_FALSE(unicode::is_valid_utf8(c.bytes)) << escaped(c.bytes);
  }
  // The decoder must not look past the end of the view, even when the buffer goes on: "€" cut
  // to two bytes is ill formed although the third byte is right there in memory.
  const char euro[] = "\xE2\x82\xAC";
  EXPECT_FALSE(unicode::decode_utf8(std::string_view(euro, 2), 0).valid);
  EXPECT_TRUE(unicode::decode_utf8(std::string_view(euro, 3), 0).valid);
}

TEST(Unicode, EncodeThenDecodeEveryScalarValue) {
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string s;
    unicode::append_utf8(s, cp);
    const unicode::Utf8Unit u = unicode::decode_utf8(s, 0);
    ASSERT_TRUE(u.valid && u.cp == cp && u.length == static_cast<int>(s.size())) << "U+" << std::hex << static_cast<uint32_t>(cp);
  }
  std::string s;
  unicode::append_utf8(s, 0xD800);  // not a scalar value
  EXPECT_EQ(s, "\xEF\xBF\xBD");
}

TEST(Unicode, CodepointClasses) {
  EXPECT_STRNE(unicode::unicode_version(), "");
  for (char32_t cp : {U'a', U'Z', U'é', U'ß', U'Ж', U'λ', U'中', U'ー', U'ǅ', U'ا', U'ह'}) {
    EXPECT_TRUE(unicode::is_letter(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
    EXPECT_FALSE(unicode::is_number(cp) || unicode::is_whitespace(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
  }
  // Nd, No (superscripts, fractions, circled), Nl (roman numerals), other scripts' digits.
  for (char32_t cp : {U'0', U'9', U'²', U'½', U'①', U'Ⅳ', U'٣', U'४', U'〇'}) {
    EXPECT_TRUE(unicode::is_number(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
    EXPECT_FALSE(unicode::is_letter(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
  }
  for (char32_t cp : {0x20u, 0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x85u, 0xA0u, 0x1680u, 0x2003u, 0x2028u, 0x2029u,
                      0x202Fu, 0x205Fu, 0x3000u}) {
    EXPECT_TRUE(unicode::is_whitespace(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
  }
  // Not White_Space (although Python's str.isspace() says yes to U+001C..U+001F).
  for (char32_t cp : {0x1Cu, 0x1Fu, 0x200Bu, 0xFEFFu, 0x180Eu, 0u}) {
    EXPECT_FALSE(unicode::is_whitespace(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
  }
  // Marks, punctuation, symbols, emoji: none of the three classes.
  for (char32_t cp : {U'\u0301', U'_', U'\'', U'’', U'€', U'😀', unicode::kReplacement}) {
    EXPECT_FALSE(unicode::is_letter(cp) || unicode::is_number(cp) || unicode::is_whitespace(cp))
        << "U+" << std::hex << static_cast<uint32_t>(cp);
  }
}

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer: an independent parse of the file and run.c's encoder, transcribed.

struct Llama2cVocab {
  int max_token_length = 0;
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::map<std::string, int32_t> index;  // run.c: bsearch over the sorted vocabulary

  int32_t lookup(const std::string& s) const {
    const auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  }
};

Llama2cVocab parse_llama2c(const std::string& path, int vocab_size) {
  Llama2cVocab v;
  auto bytes = read_file_bytes(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
  if (!bytes.ok()) return v;
  const uint8_t* p = bytes->data();
  std::memcpy(&v.max_token_length, p, 4);
  p += 4;
  for (int i = 0; i < vocab_size; ++i) {
    float score;
    int32_t len;
    std::memcpy(&score, p, 4);
    std::memcpy(&len, p + 4, 4);
    p += 8;
    v.pieces.emplace_back(reinterpret_cast<const char*>(p), len);
    v.scores.push_back(score);
    v.index.emplace(v.pieces.back(), i);
    p += len;
  }
  return v;
}

// run.c encode() (no BOS/EOS), statement by statement: the straightforward greedy loop.
std::vector<int32_t> run_c_encode(const Llama2cVocab& v, std::string_view text) {
  std::vector<int32_t> tokens;
  if (text.empty()) return tokens;
  tokens.push_back(v.lookup(" "));
  std::string str_buffer;
  for (size_t c = 0; c < text.size(); ++c) {
    if ((text[c] & 0xC0) != 0x80) str_buffer.clear();
    str_buffer += text[c];
    if (c + 1 < text.size() && (text[c + 1] & 0xC0) == 0x80 && str_buffer.size() < 4) continue;
    const int32_t id = v.lookup(str_buffer);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char b : str_buffer) tokens.push_back(static_cast<uint8_t>(b) + 3);
    }
    str_buffer.clear();
  }
  while (true) {
    float best_score = -1e10;
    int32_t best_id = -1;
    int best_idx = -1;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      const int32_t id = v.lookup(v.pieces[tokens[i]] + v.pieces[tokens[i + 1]]);
      if (id != -1 && v.scores[id] > best_score) {
        best_score = v.scores[id];
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  return tokens;
}

std::unique_ptr<Tokenizer> load_llama2c_or_die(const std::string& path, int vocab_size) {
  auto tok = load_llama2c_tokenizer(path, vocab_size);
  EXPECT_TRUE(tok.ok()) << tok.status().to_string();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

// Writes a llama2.c tokenizer file.
std::string llama2c_file_bytes(int32_t max_token_length, const std::vector<std::string>& pieces,
                               const std::vector<float>& scores) {
  std::string out(reinterpret_cast<const char*>(&max_token_length), 4);
  for (size_t i = 0; i < pieces.size(); ++i) {
    const int32_t len = static_cast<int32_t>(pieces[i].size());
    out.append(reinterpret_cast<const char*>(&scores[i]), 4);
    out.append(reinterpret_cast<const char*>(&len), 4);
    out += pieces[i];
  }
  return out;
}

// The 259 ids every llama2.c vocabulary starts with.
std::vector<std::string> llama2c_base_pieces() {
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    pieces.push_back(buf);
  }
  return pieces;
}

TEST(Llama2cTokenizer, Tok512GoldenOnceUponATime) {
  auto tok = load_llama2c_or_die(kvlab::testing::tok512_path(), 512);
  ASSERT_TRUE(tok);
  std::vector<int32_t> ids = {tok->bos_id()};
  for (int32_t id : tok->encode("Once upon a time")) ids.push_back(id);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->decode(ids), "Once upon a time");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->kind(), "llama2c");
}

TEST(Llama2cTokenizer, EmptyTextAndSpecialIds) {
  auto tok = load_llama2c_or_die(kvlab::testing::tok512_path(), 512);
  ASSERT_TRUE(tok);
  EXPECT_TRUE(tok->encode("").empty());
  EXPECT_EQ(tok->decode(std::vector<int32_t>{}), "");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{1, 2, -1, 512, 1 << 30}), "");  // BOS, EOS, out of range
  EXPECT_EQ(tok->decode(std::vector<int32_t>{3 + 0x41, 3 + 0xC3, 3 + 0xA9}), "A\xC3\xA9");  // byte fallback
  // Characters without a piece use byte fallback (id = byte + 3); " " + "<0xE4>" is no piece, so
  // the dummy prefix (id 410, " ") stays on its own. decode removes it once.
  EXPECT_EQ(tok->encode("\xE4\xB8\xAD"), (std::vector<int32_t>{410, 0xE4 + 3, 0xB8 + 3, 0xAD + 3}));  // "中"
  EXPECT_EQ(tok->decode(tok->encode(" ")), " ");
  EXPECT_EQ(tok->decode(tok->encode("  two spaces first")), "  two spaces first");
  // Control pieces written in the text are ordinary characters.
  for (int32_t id : tok->encode("\n<s>\n</s><unk>")) EXPECT_GT(id, 2);
}

TEST(Llama2cTokenizer, Tok512RoundTripsTinyStoriesValidation) {
  auto tok = load_llama2c_or_die(kvlab::testing::tok512_path(), 512);
  ASSERT_TRUE(tok);
  const std::string text = read_text(shared_data_path("tinystories_valid_subset.txt"));
  ASSERT_GT(text.size(), 700000u);
  std::vector<int32_t> ids = tok->encode(text);
  EXPECT_LT(ids.size(), text.size() / 2) << "merges should shorten the text a lot";
  EXPECT_TRUE(tok->decode(ids) == text) << "decode(encode(tinystories_valid_subset.txt)) differs";
  ids.insert(ids.begin(), tok->bos_id());
  ids.push_back(tok->eos_id());
  EXPECT_TRUE(tok->decode(ids) == text) << "BOS/EOS must decode to nothing";
}

TEST(Llama2cTokenizer, Tok512RoundTripsRandomValidUtf8) {
  auto tok = load_llama2c_or_die(kvlab::testing::tok512_path(), 512);
  ASSERT_TRUE(tok);
  std::mt19937 rng(512);
  for (int trial = 0; trial < 500; ++trial) {
    const std::string s = random_utf8(rng, trial % 97, [](char32_t) { return false; });
    const std::vector<int32_t> ids = tok->encode(s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 512) << escaped(s);
    ASSERT_EQ(tok->decode(ids), s) << "\"" << escaped(s) << "\" -> " << join(ids);
  }
}

TEST(Llama2cTokenizer, Tok512InvalidUtf8IsSafeAndDeterministic) {
  auto tok = load_llama2c_or_die(kvlab::testing::tok512_path(), 512);
  ASSERT_TRUE(tok);
  const Llama2cVocab vocab = parse_llama2c(kvlab::testing::tok512_path(), 512);
  std::mt19937 rng(7);
  for (int trial = 0; trial < 400; ++trial) {
    std::string s = random_bytes(rng, trial % 61);
    if (trial % 3 == 0) s = "ab" + s + "\xE2\x82";  // ends inside a sequence
    const std::vector<int32_t> ids = tok->encode(s);
    ASSERT_EQ(ids, tok->encode(s)) << escaped(s);
    ASSERT_EQ(ids, run_c_encode(vocab, s)) << escaped(s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 512) << escaped(s);
    // Every byte comes back: ill-formed bytes go through byte fallback.
    ASSERT_EQ(tok->decode(ids), s) << escaped(s);
  }
}

TEST(Llama2cTokenizer, Tok512FastEncoderEqualsRunCLoopOnRandomStrings) {
  auto tok = load_llama2c_or_die(kvlab::testing::tok512_path(), 512);
  ASSERT_TRUE(tok);
  const Llama2cVocab vocab = parse_llama2c(kvlab::testing::tok512_path(), 512);
  ASSERT_EQ(vocab.pieces.size(), 512u);
  std::mt19937 rng(260);
  // Strings glued from vocabulary pieces (many merges, competing pairs) and random characters.
  for (int trial = 0; trial < 1500; ++trial) {
    std::string s;
    const int parts = trial % 40;
    for (int k = 0; k < parts; ++k) {
      if (rng() % 4 == 0) {
        s += random_utf8(rng, 1 + rng() % 3, [](char32_t) { return false; });
      } else {
        s += vocab.pieces[259 + rng() % (512 - 259)];
      }
    }
    ASSERT_EQ(tok->encode(s), run_c_encode(vocab, s)) << "\"" << escaped(s) << "\"";
  }
}

// A synthetic vocabulary over {a, b, ' '} whose scores take few values, so that equal-score
// pairs compete everywhere: the leftmost must win, as in run.c. One piece scores below -1e10
// and must never be merged into.
TEST(Llama2cTokenizer, FastEncoderEqualsRunCLoopWithTiedScores) {
  std::vector<std::string> pieces = llama2c_base_pieces();
  std::vector<float> scores(pieces.size(), 0.0f);
  const std::vector<std::string> extra = {" ",   "a",   "b",    "aa",   "ab",   "ba",  "bb",  " a",  " b",
                                          "  ",  "aaa", "aba",  "bab",  "abab", "baa", " aa", " ab", "aab",
                                          "bba", "abb", "aaaa", "bbbb", " ba",  "a a", "b b", "ab ", "bbb"};
  std::mt19937 rng(3);
  for (const std::string& e : extra) {
    pieces.push_back(e);
    scores.push_back(e.size() == 1 ? 0.0f : -static_cast<float>(rng() % 3));  // -0, -1 or -2
  }
  scores[pieces.size() - 1] = -2e10f;  // "bbb": never merged into
  const std::string path = kvlab::testing::temp_dir() + "/tied.bin";
  ASSERT_TRUE(write_file_atomic(path, llama2c_file_bytes(6, pieces, scores)).ok());
  const int n = static_cast<int>(pieces.size());
  auto tok = load_llama2c_or_die(path, n);
  ASSERT_TRUE(tok);
  const Llama2cVocab vocab = parse_llama2c(path, n);
  const char alphabet[] = {'a', 'b', ' ', 'a', 'b', 'c'};  // 'c' has no piece: byte fallback
  for (int trial = 0; trial < 3000; ++trial) {
    std::string s;
    for (int k = static_cast<int>(rng() % 50); k > 0; --k) s += alphabet[rng() % 6];
    const std::vector<int32_t> ids = tok->encode(s);
    ASSERT_EQ(ids, run_c_encode(vocab, s)) << "\"" << s << "\"";
    ASSERT_EQ(tok->decode(ids), s) << "\"" << s << "\"";
  }
  const int32_t bbb = n - 1;
  for (int32_t id : tok->encode("bbbbbbbbbbbbbbb")) EXPECT_NE(id, bbb);
}

// Every prefix of a valid file is refused as kDataLoss, and so is every corruption below.
TEST(Llama2cTokenizer, RefusesTruncatedAndCorruptFiles) {
  auto bytes_or = read_file_bytes(kvlab::testing::tok512_path());
  ASSERT_TRUE(bytes_or.ok());
  const std::string good(bytes_or->begin(), bytes_or->end());
  const std::string dir = kvlab::testing::temp_dir();
  const auto load = [&](const std::string& content, int vocab_size = 512) {
    const std::string path = dir + "/tok.bin";
    EXPECT_TRUE(write_file_atomic(path, content).ok());
    return load_llama2c_tokenizer(path, vocab_size).status();
  };
  ASSERT_TRUE(load(good).ok());

  for (size_t n = 0; n < good.size(); n += (n < 64 || n + 64 > good.size()) ? 1 : 13) {
    const Status st = load(good.substr(0, n));
    ASSERT_EQ(st.code(), ErrorCode::kDataLoss) << "prefix of " << n << " bytes: " << st.to_string();
  }
  const auto with_int32_at = [&](size_t offset, int32_t v) {
    std::string s = good;
    std::memcpy(s.data() + offset, &v, 4);
    return s;
  };
  const auto with_float_at = [&](size_t offset, float v) {
    std::string s = good;
    std::memcpy(s.data() + offset, &v, 4);
    return s;
  };
  // Record 0 is at offset 4: score at 4, length at 8, "<unk>" at 12.
  const struct {
    const char* what;
    std::string content;
  } corrupt[] = {
      {"max_token_length 0", with_int32_at(0, 0)},
      {"max_token_length -1", with_int32_at(0, -1)},
      {"max_token_length huge", with_int32_at(0, 1 << 30)},
      {"negative token length", with_int32_at(8, -1)},
      {"token length above max_token_length", with_int32_at(8, 8)},
      {"token length past the end", with_int32_at(8, INT32_MAX)},
      {"NaN score", with_float_at(4, std::numeric_limits<float>::quiet_NaN())},
      {"infinite score", with_float_at(4, std::numeric_limits<float>::infinity())},
      {"trailing byte", good + "x"},
      {"byte-fallback piece replaced", [&] {
         std::string s = good;
         const size_t at = s.find("<0x41>");
         s[at + 4] = 'G';
         return s;
       }()},
  };
  for (const auto& c : corrupt) {
    const Status st = load(c.content);
    EXPECT_EQ(st.code(), ErrorCode::kDataLoss) << c.what << ": " << st.to_string();
    EXPECT_FALSE(st.message().empty()) << c.what;
  }
  EXPECT_EQ(load(good, 513).code(), ErrorCode::kDataLoss);  // model expects more tokens
  EXPECT_EQ(load(good, 511).code(), ErrorCode::kDataLoss);  // file holds more tokens
  EXPECT_EQ(load(good, 100).code(), ErrorCode::kInvalidArgument);  // no room for byte fallback
  EXPECT_EQ(load_llama2c_tokenizer(dir + "/missing.bin", 512).status().code(), ErrorCode::kNotFound);
}

TEST(Llama2cTokenizer, Llama2VocabularyRoundTripsRealText) {
  auto tok = load_llama2c_or_die(kvlab::testing::llama2_tokenizer_path(), 32000);
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<int32_t>{15043, 3186}));  // " Hello", " world"
  for (const char* name : {"sherlock_holmes_adventures.txt", "tinystories_valid_subset.txt"}) {
    const std::string text = read_text(shared_data_path(name));
    const std::vector<int32_t> ids = tok->encode(text);
    EXPECT_LT(ids.size(), text.size() / 3) << name;
    EXPECT_TRUE(tok->decode(ids) == text) << "decode(encode(" << name << ")) differs";
  }
  std::mt19937 rng(32000);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string s = random_utf8(rng, trial % 80, [](char32_t) { return false; });
    ASSERT_EQ(tok->decode(tok->encode(s)), s) << escaped(s);
  }
}

TEST(Llama2cTokenizer, Llama2FastEncoderEqualsRunCLoopOnRealText) {
  auto tok = load_llama2c_or_die(kvlab::testing::llama2_tokenizer_path(), 32000);
  ASSERT_TRUE(tok);
  const Llama2cVocab vocab = parse_llama2c(kvlab::testing::llama2_tokenizer_path(), 32000);
  int compared = 0;
  for (const char* name : {"sherlock_holmes_adventures.txt", "tinystories_valid_subset.txt", "sotu_addresses.txt"}) {
    const std::string text = read_text(shared_data_path(name));
    // 25 chunks of up to 400 bytes, spread over the file (the reference is O(n^2)).
    for (int k = 0; k < 25; ++k) {
      size_t begin = text.size() / 25 * k;
      while (begin < text.size() && (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) ++begin;
      const std::string chunk = utf8_prefix(text.substr(begin), 400);
      const std::vector<int32_t> ids = tok->encode(chunk);
      ASSERT_EQ(ids, run_c_encode(vocab, chunk)) << name << " chunk " << k << ": \"" << escaped(chunk) << "\"";
      ++compared;
    }
  }
  std::mt19937 rng(2);
  for (int trial = 0; trial < 200; ++trial, ++compared) {
    const std::string s = random_utf8(rng, trial % 60, [](char32_t) { return false; });
    ASSERT_EQ(tok->encode(s), run_c_encode(vocab, s)) << escaped(s);
  }
  EXPECT_EQ(compared, 275);
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE: synthetic vocabularies (no GGUF needed)

// GPT-2 bytes_to_unicode as a string per byte, written out independently of the library.
std::string byte_level_char(int b) {
  int cp = b;
  if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  unicode::append_utf8(s, static_cast<char32_t>(cp));
  return s;
}

// 256 byte tokens, then "<|end|>" (control), then the results of `merges`.
BpeVocab synthetic_bpe(std::string pre, const std::vector<std::pair<std::string, std::string>>& merges) {
  BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_level_char(b));
  v.tokens.push_back("<|end|>");
  v.token_types.assign(v.tokens.size(), 1);
  v.token_types.back() = 3;
  v.eos_id = 256;
  for (const auto& [a, b] : merges) {
    v.merges.push_back(a + " " + b);
    v.tokens.push_back(a + b);
    v.token_types.push_back(1);
  }
  v.pre = std::move(pre);
  return v;
}

TEST(BpeTokenizer, UnknownPreTokenizerIsUnsupportedAndListsKnownOnes) {
  auto tok = make_bpe_tokenizer(synthetic_bpe("qwen2", {}));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(tok.status().message().find("qwen2"), std::string::npos) << tok.status().to_string();
  EXPECT_NE(tok.status().message().find("gpt2"), std::string::npos) << tok.status().to_string();
  EXPECT_NE(tok.status().message().find("smollm"), std::string::npos) << tok.status().to_string();
}

TEST(BpeTokenizer, MalformedVocabularyIsDataLoss) {
  BpeVocab v = synthetic_bpe("gpt2", {});
  v.merges = {"ab"};  // no space
  EXPECT_EQ(make_bpe_tokenizer(v).status().code(), ErrorCode::kDataLoss);
  v.merges = {"a zz"};  // "zz" is not a token
  EXPECT_EQ(make_bpe_tokenizer(v).status().code(), ErrorCode::kDataLoss);
  v.merges = {"a b"};  // "ab" is not a token
  EXPECT_EQ(make_bpe_tokenizer(v).status().code(), ErrorCode::kDataLoss);
  v = synthetic_bpe("gpt2", {});
  v.token_types.pop_back();
  EXPECT_EQ(make_bpe_tokenizer(v).status().code(), ErrorCode::kDataLoss);
  v = synthetic_bpe("gpt2", {});
  v.bos_id = 100000;
  EXPECT_EQ(make_bpe_tokenizer(v).status().code(), ErrorCode::kDataLoss);
}

std::vector<std::string> token_strings(const BpeVocab& v, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(v.tokens[id]);
  return out;
}

// With merges that could join across piece boundaries, the pieces become visible in the ids.
TEST(BpeTokenizer, PreTokenizerBoundariesShowInMerges) {
  const std::string sp = byte_level_char(' '), nl = byte_level_char('\n');
  const std::vector<std::pair<std::string, std::string>> merges = {
      {sp, "1"}, {"1", "2"}, {sp, sp}, {sp + sp, sp}, {sp, "a"}, {"a", "b"}, {"b", "1"}, {"'", "s"},
      {"a", "'"}, {nl, sp}, {sp, nl}, {sp, "."}, {".", "."}};
  for (const char* pre : {"gpt2", "smollm"}) {
    const BpeVocab v = synthetic_bpe(pre, merges);
    auto tok_or = make_bpe_tokenizer(v);
    ASSERT_TRUE(tok_or.ok()) << tok_or.status().to_string();
    const Tokenizer& tok = **tok_or;
    const bool smollm = std::string(pre) == "smollm";
    const auto pieces = [&](std::string_view text) { return token_strings(v, tok.encode(text)); };
    using V = std::vector<std::string>;
    // Digits: "smollm" isolates each one (so " 12" cannot merge), "gpt2" keeps " ?\p{N}+".
    EXPECT_EQ(pieces(" 12"), smollm ? (V{sp, "1", "2"}) : (V{sp + "1", "2"})) << pre;
    EXPECT_EQ(pieces("ab1"), smollm ? (V{"ab", "1"}) : (V{"ab", "1"})) << pre;  // letters vs numbers
    // A run of spaces before a word leaves its last space to the word.
    EXPECT_EQ(pieces("   ab"), (V{sp + sp, sp + "a", "b"})) << pre;
    EXPECT_EQ(pieces("ab   "), (V{"ab", sp + sp + sp})) << pre;  // at the end: the whole run
    EXPECT_EQ(pieces(" \n ab"), (V{sp + nl, sp + "a", "b"})) << pre;
    EXPECT_EQ(pieces("\n ab"), (V{nl, sp + "a", "b"})) << pre;  // a single whitespace before " ab"
    // Contractions split off; "'" alone is punctuation.
    EXPECT_EQ(pieces("a's"), (V{"a", "'s"})) << pre;
    EXPECT_EQ(pieces("a'x"), (V{"a", "'", "x"})) << pre;
    EXPECT_EQ(pieces(" .."), (V{sp + ".", "."})) << pre;  // " ?[^\s\p{L}\p{N}]+" takes the space
    EXPECT_EQ(pieces(" a.."), (V{sp + "a", ".."})) << pre;
    // Control tokens are never produced; their text is ordinary bytes.
    for (int32_t id : tok.encode("<|end|>")) EXPECT_NE(id, 256) << pre;
    EXPECT_EQ(tok.decode(std::vector<int32_t>{256}), "") << pre;
    EXPECT_EQ(tok.kind(), std::string("bpe:") + pre);
  }
}

// Bytes whose byte-level character is not a token are dropped; their neighbours then merge.
TEST(BpeTokenizer, BytesWithoutATokenAreDropped) {
  BpeVocab v = synthetic_bpe("gpt2", {{".", "."}});
  const std::string missing = byte_level_char(0x04);
  for (auto& t : v.tokens) {
    if (t == missing) t = "<unused>";
  }
  auto tok = make_bpe_tokenizer(v);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  // ".\x04." is one piece (a run of "other" code points); without the 0x04 the dots are adjacent.
  EXPECT_EQ(token_strings(v, (*tok)->encode(".\x04.")), (std::vector<std::string>{".."}));
  EXPECT_EQ((*tok)->decode((*tok)->encode(".\x04.")), "..");
  EXPECT_TRUE((*tok)->encode("\x04").empty());
}

// ---------------------------------------------------------------------------------------------
// SmolLM2 byte-level BPE from the GGUF, against HF tokenizers fixtures

// Vocabulary from GGUF metadata (glue that may later move into the model library).
StatusOr<BpeVocab> read_gguf_bpe_vocab(const GgufFile& f) {
  BpeVocab v;
  KVLAB_ASSIGN_OR_RETURN(v.tokens, f.get_string_array("tokenizer.ggml.tokens"));
  KVLAB_ASSIGN_OR_RETURN(v.merges, f.get_string_array("tokenizer.ggml.merges"));
  if (f.has("tokenizer.ggml.token_type")) {
    KVLAB_ASSIGN_OR_RETURN(std::vector<int64_t> types, f.get_int_array("tokenizer.ggml.token_type"));
    v.token_types.assign(types.begin(), types.end());
  }
  KVLAB_ASSIGN_OR_RETURN(v.pre, f.get_string("tokenizer.ggml.pre"));
  if (f.has("tokenizer.ggml.bos_token_id")) {
    KVLAB_ASSIGN_OR_RETURN(int64_t bos, f.get_int("tokenizer.ggml.bos_token_id"));
    v.bos_id = static_cast<int32_t>(bos);
  }
  if (f.has("tokenizer.ggml.eos_token_id")) {
    KVLAB_ASSIGN_OR_RETURN(int64_t eos, f.get_int("tokenizer.ggml.eos_token_id"));
    v.eos_id = static_cast<int32_t>(eos);
  }
  return v;
}

StatusOr<std::unique_ptr<Tokenizer>> make_gguf_tokenizer(const GgufFile& f) {
  KVLAB_ASSIGN_OR_RETURN(BpeVocab v, read_gguf_bpe_vocab(f));
  return make_bpe_tokenizer(std::move(v));
}

// The GGUF is large: read it once per test binary.
struct SmolLm2 {
  std::string skip_reason;  // non-empty: no GGUF
  std::string error;        // non-empty: the GGUF is there but loading failed
  BpeVocab vocab;
  std::unique_ptr<Tokenizer> tok;       // pre-tokenizer from the file ("smollm")
  std::unique_ptr<Tokenizer> tok_gpt2;  // same vocabulary, "gpt2" pre-tokenizer
};

const SmolLm2& smollm2() {
  static const SmolLm2* loaded = [] {
    auto* s = new SmolLm2;
    const std::string path = kvlab::testing::smollm2_path();
    if (path.empty()) {
      s->skip_reason = "SmolLM2-135M-Instruct.Q4_1.gguf not found (run scripts/fetch_models.sh)";
      return s;
    }
    auto file = GgufFile::open(path);
    if (!file.ok()) {
      s->error = file.status().to_string();
      return s;
    }
    auto tok = make_gguf_tokenizer(*file);
    auto vocab = read_gguf_bpe_vocab(*file);
    if (!tok.ok() || !vocab.ok()) {
      s->error = !tok.ok() ? tok.status().to_string() : vocab.status().to_string();
      return s;
    }
    s->tok = std::move(tok).value();
    s->vocab = std::move(vocab).value();
    BpeVocab gpt2 = s->vocab;
    gpt2.pre = "gpt2";
    auto tok_gpt2 = make_bpe_tokenizer(std::move(gpt2));
    if (!tok_gpt2.ok()) {
      s->error = tok_gpt2.status().to_string();
      return s;
    }
    s->tok_gpt2 = std::move(tok_gpt2).value();
    return s;
  }();
  return *loaded;
}

#define SMOLLM2_OR_SKIP()                                           \
  const SmolLm2& sm = smollm2();                                    \
  if (!sm.skip_reason.empty()) GTEST_SKIP() << sm.skip_reason;      \
  ASSERT_TRUE(sm.error.empty()) << sm.error

std::vector<int32_t> read_u16_ids(const std::string& path) {
  auto bytes = read_file_bytes(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status().to_string();
  std::vector<int32_t> ids;
  if (!bytes.ok()) return ids;
  EXPECT_EQ(bytes->size() % 2, 0u) << path;
  for (size_t i = 0; i + 1 < bytes->size(); i += 2) ids.push_back((*bytes)[i] | ((*bytes)[i + 1] << 8));
  return ids;
}

TEST(SmolLm2Tokenizer, LoadsFromGguf) {
  SMOLLM2_OR_SKIP();
  EXPECT_EQ(sm.tok->vocab_size(), 49152);
  EXPECT_EQ(sm.tok->kind(), "bpe:smollm");
  EXPECT_EQ(sm.tok->bos_id(), 1);  // <|im_start|>
  EXPECT_EQ(sm.tok->eos_id(), 2);  // <|im_end|>
  EXPECT_EQ(sm.vocab.merges.size(), 48900u);
}

void expect_matches_fixture(const Tokenizer& tok, const char* data_file, const char* fixture) {
  const std::string text = utf8_prefix(read_text(shared_data_path(data_file)), 102400);
  ASSERT_GT(text.size(), 102390u);
  const std::vector<int32_t> want = read_u16_ids(fixture_path(fixture));
  ASSERT_GT(want.size(), 10000u) << fixture;
  const std::vector<int32_t> got = tok.encode(text);
  const std::string mismatch = first_mismatch(tok, got, want);
  EXPECT_TRUE(mismatch.empty()) << data_file << " vs " << fixture << ": " << mismatch;
  EXPECT_TRUE(tok.decode(got) == text) << "decode(encode(first 100 KB of " << data_file << ")) differs";
}

TEST(SmolLm2Tokenizer, MatchesHfTokenizersOnSherlock100k) {
  SMOLLM2_OR_SKIP();
  expect_matches_fixture(*sm.tok, "sherlock_holmes_adventures.txt", "smollm2_ids_sherlock100k.u16");
}

TEST(SmolLm2Tokenizer, MatchesHfTokenizersOnSotu100k) {
  SMOLLM2_OR_SKIP();
  expect_matches_fixture(*sm.tok, "sotu_addresses.txt", "smollm2_ids_sotu100k.u16");
}

// tests/fixtures/smollm2_cases.txt: "<byte count>\n<bytes>\n" per case.
std::vector<std::string> read_cases(const std::string& path) {
  const std::string all = read_text(path);
  std::vector<std::string> cases;
  size_t pos = 0;
  while (pos < all.size()) {
    const size_t nl = all.find('\n', pos);
    if (nl == std::string::npos) break;
    const size_t n = std::stoul(all.substr(pos, nl - pos));
    EXPECT_LE(nl + 1 + n + 1, all.size()) << "malformed " << path;
    cases.push_back(all.substr(nl + 1, n));
    pos = nl + 1 + n + 1;
  }
  return cases;
}

std::vector<std::vector<int32_t>> read_id_lines(const std::string& path) {
  const std::string all = read_text(path);
  std::vector<std::vector<int32_t>> lines;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t nl = all.find('\n', pos);
    if (nl == std::string::npos) nl = all.size();
    std::vector<int32_t> ids;
    const std::string line = all.substr(pos, nl - pos);
    for (size_t i = 0; i < line.size();) {
      size_t used = 0;
      ids.push_back(std::stoi(line.substr(i), &used));
      i += used;
      while (i < line.size() && line[i] == ' ') ++i;
    }
    lines.push_back(std::move(ids));
    pos = nl + 1;
  }
  return lines;
}

void expect_cases_match(const Tokenizer& tok, const char* ids_fixture) {
  const std::vector<std::string> cases = read_cases(fixture_path("smollm2_cases.txt"));
  const std::vector<std::vector<int32_t>> want = read_id_lines(fixture_path(ids_fixture));
  ASSERT_GE(cases.size(), 30u);
  ASSERT_EQ(cases.size(), want.size()) << ids_fixture;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> got = tok.encode(cases[i]);
    const std::string mismatch = first_mismatch(tok, got, want[i]);
    EXPECT_TRUE(mismatch.empty()) << "case " << i << " \"" << escaped(cases[i]) << "\"\n  got:  " << join(got)
                                  << "\n  want: " << join(want[i]) << "\n" << mismatch;
  }
}

TEST(SmolLm2Tokenizer, MatchesHfTokenizersOnHandPickedCases) {
  SMOLLM2_OR_SKIP();
  expect_cases_match(*sm.tok, "smollm2_cases_ids_smollm.txt");
}

TEST(SmolLm2Tokenizer, Gpt2PreTokenizerMatchesHfByteLevelOnHandPickedCases) {
  SMOLLM2_OR_SKIP();
  expect_cases_match(*sm.tok_gpt2, "smollm2_cases_ids_gpt2.txt");
}

// Bytes without a token in this vocabulary (see tokenizer_bpe.cc) cannot round-trip.
bool smollm2_drops(char32_t cp) {
  return cp == 0x04 || cp == 0x06 || cp == 0x13 || cp == 0x14 || cp == 0x16 || cp == 0x1D ||
         (cp >= 0x40000 && cp <= 0xBFFFF);  // lead bytes F1, F2
}

TEST(SmolLm2Tokenizer, RoundTripsAndNeverProducesControlTokens) {
  SMOLLM2_OR_SKIP();
  const std::string text = read_text(shared_data_path("sherlock_holmes_adventures.txt"));
  EXPECT_TRUE(sm.tok->decode(sm.tok->encode(text)) == text) << "decode(encode(sherlock)) differs";
  const auto is_control = [&](int32_t id) { return sm.vocab.token_types.at(id) == 3; };
  std::mt19937 rng(49152);
  for (int trial = 0; trial < 400; ++trial) {
    std::string s = random_utf8(rng, trial % 90, smollm2_drops);
    if (trial % 10 == 0) s += "<|im_start|>user\n<|im_end|><|endoftext|>";
    for (const Tokenizer* tok : {sm.tok.get(), sm.tok_gpt2.get()}) {
      const std::vector<int32_t> ids = tok->encode(s);
      for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 49152 && !is_control(id)) << id << " in " << escaped(s);
      ASSERT_EQ(tok->decode(ids), s) << tok->kind() << " \"" << escaped(s) << "\" -> " << join(ids);
    }
  }
  EXPECT_EQ(sm.tok->decode(std::vector<int32_t>{1, 2, 0, -1, 49152}), "");  // control and out of range
  // Invalid UTF-8: no crash, deterministic, every byte that has a token comes back.
  for (int trial = 0; trial < 200; ++trial) {
    const std::string s = random_bytes(rng, trial % 50);
    const std::vector<int32_t> ids = sm.tok->encode(s);
    ASSERT_EQ(ids, sm.tok->encode(s));
    std::string kept;
    for (char c : s) {
      const uint8_t b = static_cast<uint8_t>(c);
      const bool dropped = smollm2_drops(b) || b == 0xC0 || b == 0xC1 || b == 0xF1 || b == 0xF2 || b >= 0xF5;
      if (!dropped) kept += c;
    }
    ASSERT_EQ(sm.tok->decode(ids), kept) << escaped(s);
  }
}

// ---------------------------------------------------------------------------------------------
// Speed: whole texts as one string. In optimized builds the 575 KB text must take well under a
// second with every tokenizer; the 10.7 MB one is timed there too (debug builds skip it: their
// timings mean nothing and it takes a while under sanitizers).

TEST(TokenizerSpeed, EncodesWholeTexts) {
  std::vector<std::pair<std::string, std::string>> texts;
  texts.emplace_back("sherlock", read_text(shared_data_path("sherlock_holmes_adventures.txt")));
#ifdef NDEBUG
  texts.emplace_back("sotu", read_text(shared_data_path("sotu_addresses.txt")));
#endif
  std::vector<std::pair<std::string, std::unique_ptr<Tokenizer>>> toks;
  toks.emplace_back("tok512", load_llama2c_or_die(kvlab::testing::tok512_path(), 512));
  toks.emplace_back("llama2-32k", load_llama2c_or_die(kvlab::testing::llama2_tokenizer_path(), 32000));
  const SmolLm2& sm = smollm2();
  if (sm.tok) {
    auto again = make_bpe_tokenizer(sm.vocab);
    ASSERT_TRUE(again.ok());
    toks.emplace_back("smollm2", std::move(again).value());
  }
  for (auto& [name, tok] : toks) {
    ASSERT_TRUE(tok) << name;
    for (const auto& [text_name, text] : texts) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<int32_t> ids = tok->encode(text);
      const double s = seconds_since(t0);
      std::printf("[ timing   ] %-10s encode %-8s %9zu bytes -> %8zu ids in %.3f s (%.1f MB/s)\n", name.c_str(),
                  text_name.c_str(), text.size(), ids.size(), s, text.size() / s / 1e6);
      EXPECT_TRUE(tok->decode(ids) == text) << name << " " << text_name;
#ifdef NDEBUG
      if (text_name == "sherlock") {
        EXPECT_LT(s, 1.0) << name;
      }
#endif
    }
  }
}

}  // namespace
}  // namespace kvlab
