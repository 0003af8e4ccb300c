#include "model/unicode.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

namespace kvlab::unicode {
namespace {

struct CodepointRange {
  char32_t first;
  char32_t last;  // inclusive
};

#include "model/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodepointRange (&ranges)[N], char32_t cp) {
  // First range whose last >= cp; cp is inside iff that range starts at or before it.
  const auto* it = std::lower_bound(std::begin(ranges), std::end(ranges), cp,
                                    [](const CodepointRange& r, char32_t c) { return r.last < c; });
  return it != std::end(ranges) && it->first <= cp;
}

bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

}  // namespace

const char* unicode_version() { return kUnicodeVersion; }

Utf8Unit decode_utf8(std::string_view text, size_t pos) {
  if (pos >= text.size()) return {0, 0, false};
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
  const size_t avail = text.size() - pos;
  const uint8_t b0 = byte(0);
  const Utf8Unit invalid{kReplacement, 1, false};

  if (b0 < 0x80) return {b0, 1, true};
  // Lead byte -> sequence length and the allowed range of the SECOND byte (Table 3-7).
  int length = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    length = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs below U+0800
    if (b0 == 0xED) hi = 0x9F;  // no surrogates U+D800..U+DFFF
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs below U+10000
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return invalid;  // 80..BF (stray continuation), C0, C1, F5..FF
  }
  if (avail < static_cast<size_t>(length)) return invalid;
  const uint8_t b1 = byte(1);
  if (b1 < lo || b1 > hi) return invalid;
  for (int i = 2; i < length; ++i) {
    if (!is_continuation(byte(i))) return invalid;
  }
  char32_t cp = 0;
  switch (length) {
    case 2: cp = (char32_t(b0 & 0x1F) << 6) | (b1 & 0x3F); break;
    case 3: cp = (char32_t(b0 & 0x0F) << 12) | (char32_t(b1 & 0x3F) << 6) | (byte(2) & 0x3F); break;
    default:
      cp = (char32_t(b0 & 0x07) << 18) | (char32_t(b1 & 0x3F) << 12) |
           (char32_t(byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
  }
  return {cp, length, true};
}

bool is_valid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Unit u = decode_utf8(text, pos);
    if (!u.valid) return false;
    pos += u.length;
  }
  return true;
}

void append_utf8(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacement;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ASCII answers first: that is almost every code point of English text.
bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(kLetterRanges, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumberRanges, cp);
}

bool is_whitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return in_ranges(kWhitespaceRanges, cp);
}

}  // namespace kvlab::unicode
