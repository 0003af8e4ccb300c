// GGUF reader, ggml dequantizers and the GGUF "llama" loader.
//
// Sections: (1) the ggml type table and each dequantizer against hand-computed values; (2) the
// reader against the independent writer in tests/testing (round trips of every metadata type);
// (3) hostile input: every prefix of a file, random corruption, each structural check; (4) the
// model loader on the tiny writer-made model; (5) the real SmolLM2 GGUF against values from the
// Python `gguf` package (skipped when the file is absent).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <sstream>

#include "base/half.h"
#include "model/ggml_types.h"
#include "model/gguf.h"
#include "model/gguf_model.h"
#include "tests/testing/gguf_writer.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

using testing::GgufWriter;
using testing::MetaType;
using testing::MetaValue;

// Relative comparison with a small absolute floor (values that cancel to ~0 in d * q + m).
void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::fabs(got[i] - want[i]) > 1e-6f * std::fabs(want[i]) + 1e-9f) {
      if (++bad <= 5) ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what;
}

StatusOr<GgufFile> parse(const std::vector<uint8_t>& bytes) { return GgufFile::from_bytes(bytes, "test.gguf"); }

template <typename T>
void poke(std::vector<uint8_t>* b, size_t at, T v) {
  ASSERT_LE(at + sizeof(T), b->size());
  std::memcpy(b->data() + at, &v, sizeof(T));
}

// ---------------------------------------------------------------------------------------------
// (1) ggml types and dequantizers

TEST(GgmlTypes, TableMatchesGgmlBlockLayouts) {
  struct Want {
    uint32_t id;
    const char* name;
    int64_t block_size, block_bytes;
    bool dequantizable;
  };
  // From the static_asserts in ggml's ggml-common.h (QK_K = 256).
  const Want want[] = {
      {0, "F32", 1, 4, true},        {1, "F16", 1, 2, true},         {2, "Q4_0", 32, 18, true},
      {3, "Q4_1", 32, 20, true},     {6, "Q5_0", 32, 22, true},      {7, "Q5_1", 32, 24, true},
      {8, "Q8_0", 32, 34, true},     {9, "Q8_1", 32, 36, false},     {10, "Q2_K", 256, 84, false},
      {11, "Q3_K", 256, 110, false}, {12, "Q4_K", 256, 144, false},  {13, "Q5_K", 256, 176, false},
      {14, "Q6_K", 256, 210, false}, {15, "Q8_K", 256, 292, false},  {16, "IQ2_XXS", 256, 66, false},
      {17, "IQ2_XS", 256, 74, false}, {18, "IQ3_XXS", 256, 98, false}, {19, "IQ1_S", 256, 50, false},
      {20, "IQ4_NL", 32, 18, false}, {21, "IQ3_S", 256, 110, false}, {22, "IQ2_S", 256, 82, false},
      {23, "IQ4_XS", 256, 136, false}, {24, "I8", 1, 1, false},       {25, "I16", 1, 2, false},
      {26, "I32", 1, 4, false},      {27, "I64", 1, 8, false},       {28, "F64", 1, 8, false},
      {29, "IQ1_M", 256, 56, false}, {30, "BF16", 1, 2, true},       {34, "TQ1_0", 256, 54, false},
      {35, "TQ2_0", 256, 66, false},
  };
  for (const Want& w : want) {
    const GgmlTypeInfo* info = ggml_type_info(w.id);
    ASSERT_NE(info, nullptr) << w.name;
    EXPECT_STREQ(info->name, w.name);
    EXPECT_EQ(info->block_size, w.block_size) << w.name;
    EXPECT_EQ(info->block_bytes, w.block_bytes) << w.name;
    EXPECT_EQ(info->dequantizable, w.dequantizable) << w.name;
  }
  // Removed ids (Q4_2, Q4_3, the Q4_0_N_M repacks) and ids past the end are unknown.
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 39u, 1000u, 0xffffffffu}) {
    EXPECT_EQ(ggml_type_info(id), nullptr) << id;
  }
  EXPECT_EQ(ggml_supported_type_names(), "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16");
}

std::vector<float> dequant(GgmlType type, const std::vector<uint8_t>& bytes, int64_t n) {
  // Copy to an odd address: blocks inside a file have no alignment.
  std::vector<uint8_t> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  std::vector<float> out(size_t(n), -12345.0f);
  dequantize_row(type, shifted.data() + 1, out.data(), n);
  return out;
}

std::vector<uint8_t> u16_bytes(const std::vector<uint16_t>& v) {
  std::vector<uint8_t> b(v.size() * 2);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(Dequantize, F32IsACopy) {
  const std::vector<float> v = {1.5f, -0.0f, 3e38f, -1e-45f, 42.0f};
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  const auto out = dequant(GgmlType::kF32, b, 5);
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(f32_bits(out[i]), f32_bits(v[i])) << i;
}

TEST(Dequantize, F16) {
  const auto out = dequant(GgmlType::kF16, u16_bytes({0x3C00, 0xC000, 0x3555, 0x0001, 0x8400, 0x7BFF, 0x7C00}), 7);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.333251953125f);
  EXPECT_EQ(out[3], 5.9604644775390625e-08f);  // smallest subnormal, 2^-24
  EXPECT_EQ(out[4], -6.103515625e-05f);        // smallest normal, negative
  EXPECT_EQ(out[5], 65504.0f);
  EXPECT_TRUE(std::isinf(out[6]));
}

TEST(Dequantize, BF16) {
  const auto out = dequant(GgmlType::kBF16, u16_bytes({0x3F80, 0xC040, 0x3E20, 0x4049}), 4);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.0f);
  EXPECT_EQ(out[2], 0.15625f);
  EXPECT_EQ(out[3], 3.140625f);
}

TEST(Dequantize, Q4_0EveryNibbleBothScaleSigns) {
  // Block 0: d = -0.5, low nibbles 0..15, high nibbles 15..0. Block 1: d = 3, nibbles swapped.
  std::vector<uint8_t> b;
  for (const auto& [d_bits, flip] : {std::pair<uint16_t, bool>{0xB800, false}, {0x4200, true}}) {
    b.push_back(uint8_t(d_bits & 0xff));
    b.push_back(uint8_t(d_bits >> 8));
    for (int j = 0; j < 16; ++j) {
      const int lo = flip ? 15 - j : j, hi = flip ? j : 15 - j;
      b.push_back(uint8_t(lo | hi << 4));
    }
  }
  ASSERT_EQ(b.size(), 36u);
  const auto out = dequant(GgmlType::kQ4_0, b, 64);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], -0.5f * float(j - 8)) << j;
    EXPECT_EQ(out[16 + j], -0.5f * float(15 - j - 8)) << j;
    EXPECT_EQ(out[32 + j], 3.0f * float(15 - j - 8)) << j;
    EXPECT_EQ(out[48 + j], 3.0f * float(j - 8)) << j;
  }
  EXPECT_EQ(out[0], 4.0f);    // q = 0: -0.5 * -8
  EXPECT_EQ(out[8], -0.0f);   // q = 8
  EXPECT_EQ(out[16], -3.5f);  // q = 15: -0.5 * 7
}

TEST(Dequantize, Q4_1EveryNibbleBothScaleSigns) {
  uint8_t q[32];
  for (int j = 0; j < 16; ++j) {
    q[j] = uint8_t(j);
    q[16 + j] = uint8_t(15 - j);
  }
  // d = 0.25, m = -1.5; then d = -2, m = 3.
  auto b = testing::q4_1_block(0x3400, 0xBE00, q);
  const auto b2 = testing::q4_1_block(0xC000, 0x4200, q);
  b.insert(b.end(), b2.begin(), b2.end());
  // Layout check on the writer too: element 1 is the low nibble of byte 1, element 17 its high.
  EXPECT_EQ(b[4 + 1], uint8_t(1 | 14 << 4));
  const auto out = dequant(GgmlType::kQ4_1, b, 64);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(out[j], 0.25f * float(q[j]) - 1.5f) << j;
    EXPECT_EQ(out[32 + j], -2.0f * float(q[j]) + 3.0f) << j;
  }
  EXPECT_EQ(out[0], -1.5f);
  EXPECT_EQ(out[15], 2.25f);
  EXPECT_EQ(out[16], 2.25f);
  EXPECT_EQ(out[31], -1.5f);
  EXPECT_EQ(out[32 + 15], -27.0f);
}

TEST(Dequantize, Q8_0FullInt8RangeNegativeScale) {
  // 8 blocks with q = -128..127 in order, d = -0.125 (blocks 0-3) and 0.0999755859375 (4-7).
  std::vector<uint8_t> b;
  for (int blk = 0; blk < 8; ++blk) {
    int8_t q[32];
    for (int j = 0; j < 32; ++j) q[j] = int8_t(blk * 32 + j - 128);
    const auto block = testing::q8_0_block(blk < 4 ? 0xB000 : 0x2E66, q);
    b.insert(b.end(), block.begin(), block.end());
  }
  const auto out = dequant(GgmlType::kQ8_0, b, 256);
  for (int i = 0; i < 256; ++i) {
    const double d = i < 128 ? -0.125 : 0.0999755859375;
    EXPECT_EQ(double(out[i]), double(float(d * (i - 128)))) << i;
  }
  EXPECT_EQ(out[0], 16.0f);       // -0.125 * -128
  EXPECT_EQ(out[127], 0.125f);    // -0.125 * -1
  EXPECT_EQ(out[128], 0.0f);
}

// Q5: element j < 16 takes the low nibble of qs[j] and bit j of qh as its fifth bit; element
// j + 16 the high nibble and bit j + 16.
std::vector<uint8_t> q5_block(bool with_min, uint16_t d, uint16_t m, uint32_t qh, const uint8_t (&q)[32]) {
  std::vector<uint8_t> b;
  b.push_back(uint8_t(d & 0xff));
  b.push_back(uint8_t(d >> 8));
  if (with_min) {
    b.push_back(uint8_t(m & 0xff));
    b.push_back(uint8_t(m >> 8));
  }
  for (int i = 0; i < 4; ++i) b.push_back(uint8_t(qh >> (8 * i)));
  for (int j = 0; j < 16; ++j) b.push_back(uint8_t((q[j] & 15) | (q[j + 16] & 15) << 4));
  return b;
}

TEST(Dequantize, Q5_0AndQ5_1EveryFiveBitValue) {
  uint8_t q[32];
  uint32_t qh = 0;
  for (int j = 0; j < 32; ++j) {
    const int v = (j * 7 + 3) % 32;  // a permutation of 0..31
    q[j] = uint8_t(v & 15);
    if (v & 16) qh |= 1u << j;
  }
  const auto b0 = q5_block(false, 0xB800, 0, qh, q);  // d = -0.5
  ASSERT_EQ(b0.size(), 22u);
  const auto out0 = dequant(GgmlType::kQ5_0, b0, 32);
  const auto b1 = q5_block(true, 0x3400, 0xBE00, qh, q);  // d = 0.25, m = -1.5
  ASSERT_EQ(b1.size(), 24u);
  const auto out1 = dequant(GgmlType::kQ5_1, b1, 32);
  for (int j = 0; j < 32; ++j) {
    const int v = (j * 7 + 3) % 32;
    EXPECT_EQ(out0[j], -0.5f * float(v - 16)) << j;
    EXPECT_EQ(out1[j], 0.25f * float(v) - 1.5f) << j;
  }
}

// ---------------------------------------------------------------------------------------------
// (2) round trips through the writer

class GgufRoundTrip : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufRoundTrip, MetadataOfEveryValueType) {
  GgufWriter w(GetParam());
  w.add("u8", MetaValue::u8(200));
  w.add("i8", MetaValue::i8(-100));
  w.add("u16", MetaValue::u16(60000));
  w.add("i16", MetaValue::i16(-30000));
  w.add("u32", MetaValue::u32(4000000000u));
  w.add("i32", MetaValue::i32(-2000000000));
  w.add("u64", MetaValue::u64(1ull << 40));
  w.add("u64.huge", MetaValue::u64(~0ull));
  w.add("i64", MetaValue::i64(-(int64_t(1) << 62)));
  w.add("f32", MetaValue::f32(3.25f));
  w.add("f64", MetaValue::f64(-1e300));
  w.add("bool.t", MetaValue::boolean(true));
  w.add("bool.f", MetaValue::boolean(false));
  w.add("str", MetaValue::string(std::string("h\xc3\xa9llo\0world", 12)));
  w.add("str.empty", MetaValue::string(""));
  w.add_string_array("arr.str", {"a", "", "\xe2\x96\x81the"});
  w.add_i32_array("arr.i32", {-1, 0, 2147483647});
  w.add("arr.u8", MetaValue::array(MetaType::kU8, {MetaValue::u8(0), MetaValue::u8(255)}));
  w.add("arr.u64", MetaValue::array(MetaType::kU64, {MetaValue::u64(7), MetaValue::u64(1ull << 50)}));
  w.add_f32_array("arr.f32", {0.5f, -2.0f});
  w.add("arr.f64", MetaValue::array(MetaType::kF64, {MetaValue::f64(0.1)}));
  w.add("arr.bool", MetaValue::array(MetaType::kBool, {MetaValue::boolean(true), MetaValue::boolean(false)}));
  w.add("arr.empty", MetaValue::array(MetaType::kI32, {}));
  w.add("arr.nested", MetaValue::array(MetaType::kArray,
                                       {MetaValue::array(MetaType::kI16, {MetaValue::i16(1), MetaValue::i16(-2)}),
                                        MetaValue::array(MetaType::kI16, {MetaValue::i16(3)}),
                                        MetaValue::array(MetaType::kI16, {})}));
  w.add("arr.nested.str",
        MetaValue::array(MetaType::kArray,
                         {MetaValue::array(MetaType::kString, {MetaValue::string("x")}),
                          MetaValue::array(MetaType::kArray, {MetaValue::array(MetaType::kString, {MetaValue::string("deep"),
                                                                                                   MetaValue::string("er")})})}));
  w.add_u32("after.nested", 77);  // parsed correctly only if the nested arrays were skipped exactly
  w.add_tensor_f32("t", {2}, {1.0f, 2.0f});

  const auto r = parse(w.bytes());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const GgufFile& g = *r;
  EXPECT_EQ(g.version(), GetParam());

  EXPECT_EQ(*g.get_int("u8"), 200);
  EXPECT_EQ(*g.get_int("i8"), -100);
  EXPECT_EQ(*g.get_int("u16"), 60000);
  EXPECT_EQ(*g.get_int("i16"), -30000);
  EXPECT_EQ(*g.get_int("u32"), 4000000000ll);
  EXPECT_EQ(*g.get_int("i32"), -2000000000);
  EXPECT_EQ(*g.get_int("u64"), int64_t(1) << 40);
  EXPECT_EQ(g.get_int("u64.huge").status().code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(*g.get_float("u64.huge"), 18446744073709551615.0);
  EXPECT_EQ(*g.get_int("i64"), -(int64_t(1) << 62));
  EXPECT_EQ(*g.get_float("f32"), 3.25);
  EXPECT_EQ(*g.get_float("f64"), -1e300);
  EXPECT_EQ(*g.get_float("i32"), -2000000000.0);  // integers read as floats too
  EXPECT_TRUE(*g.get_bool("bool.t"));
  EXPECT_FALSE(*g.get_bool("bool.f"));
  EXPECT_EQ(*g.get_string("str"), std::string("h\xc3\xa9llo\0world", 12));
  EXPECT_EQ(*g.get_string("str.empty"), "");
  EXPECT_EQ(*g.get_string_array("arr.str"), (std::vector<std::string>{"a", "", "\xe2\x96\x81the"}));
  EXPECT_EQ(*g.get_int_array("arr.i32"), (std::vector<int64_t>{-1, 0, 2147483647}));
  EXPECT_EQ(*g.get_int_array("arr.u8"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(*g.get_int_array("arr.u64"), (std::vector<int64_t>{7, int64_t(1) << 50}));
  EXPECT_EQ(*g.get_float_array("arr.f32"), (std::vector<float>{0.5f, -2.0f}));
  EXPECT_EQ(*g.get_float_array("arr.f64"), (std::vector<float>{0.1f}));
  EXPECT_EQ(*g.get_float_array("arr.i32"), (std::vector<float>{-1.0f, 0.0f, 2147483648.0f}));
  EXPECT_TRUE(g.get_int_array("arr.empty")->empty());
  EXPECT_EQ(*g.format_value("arr.bool"), "[true, false]");
  EXPECT_EQ(*g.format_value("arr.nested"), "[[1, -2], [3], []]");
  EXPECT_EQ(*g.format_value("arr.nested.str"), "[[\"x\"], [[\"deep\", \"er\"]]]");
  EXPECT_EQ(*g.format_value("arr.i32", 2), "[-1, 0, ... (3 elements)]");
  EXPECT_EQ(*g.format_value("f64"), "-1e+300");
  EXPECT_EQ(*g.get_int("after.nested"), 77);
  ASSERT_NE(g.find_tensor("t"), nullptr);
  EXPECT_EQ(*g.dequantize(*g.find_tensor("t")), (std::vector<float>{1.0f, 2.0f}));

  const std::vector<std::string> keys = g.keys();
  ASSERT_EQ(keys.size(), 26u);
  EXPECT_EQ(keys.front(), "u8");
  EXPECT_EQ(keys[13], "str");
  EXPECT_EQ(keys.back(), "after.nested");

  // Wrong type and missing key: the codes the header promises, and messages naming the key.
  const auto wrong = g.get_string("u32");
  EXPECT_EQ(wrong.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("'u32'"), std::string::npos) << wrong.status().message();
  EXPECT_EQ(g.get_int("f32").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(g.get_bool("u8").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(g.get_int_array("arr.nested").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(g.get_string_array("arr.i32").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(g.get_float_array("arr.str").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(g.get_int("str").status().code(), ErrorCode::kInvalidArgument);
  const auto missing = g.get_int("no.such.key");
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no.such.key"), std::string::npos);
  EXPECT_FALSE(g.has("no.such.key"));
  EXPECT_TRUE(g.has("arr.nested"));
}

INSTANTIATE_TEST_SUITE_P(Versions, GgufRoundTrip, ::testing::Values(2u, 3u));

TEST(GgufReader, TensorTableOffsetsAndAlignment) {
  GgufWriter w(3, 64);
  std::vector<float> a(3 * 5), c(7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f;
  for (size_t i = 0; i < c.size(); ++i) c[i] = -float(i);
  w.add_tensor_f32("a", {5, 3}, a);
  w.add_tensor_f16("b", {3}, {1.0f, -2.0f, 0.5f});
  w.add_tensor_f32("c", {7, 1, 1, 1}, c);
  GgufWriter::Layout layout;
  const auto bytes = w.bytes(&layout);
  const auto r = parse(bytes);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const GgufFile& g = *r;
  EXPECT_EQ(*g.get_int("general.alignment"), 64);
  EXPECT_EQ(layout.data_begin % 64, 0u);
  ASSERT_EQ(g.tensors().size(), 3u);
  const auto& ta = g.tensors()[0];
  EXPECT_EQ(ta.name, "a");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(ta.type, GgmlType::kF32);
  EXPECT_EQ(ta.n_elements, 15);
  EXPECT_EQ(ta.offset, 0u);
  EXPECT_EQ(ta.n_bytes, 60u);
  EXPECT_EQ(g.tensors()[1].offset, 64u);  // 60 bytes, padded to the next 64
  EXPECT_EQ(g.tensors()[1].n_bytes, 6u);
  EXPECT_EQ(g.tensors()[2].offset, 128u);
  EXPECT_EQ(g.tensors()[2].shape, (std::vector<int64_t>{7, 1, 1, 1}));
  EXPECT_EQ(std::memcmp(g.tensor_data(ta), bytes.data() + layout.data_begin, 60), 0);
  EXPECT_EQ(std::memcmp(g.tensor_data(g.tensors()[2]), bytes.data() + layout.data_begin + 128, 28), 0);
  EXPECT_EQ(*g.dequantize(ta), a);
  EXPECT_EQ(*g.dequantize(*g.find_tensor("b")), (std::vector<float>{1.0f, -2.0f, 0.5f}));
  EXPECT_EQ(*g.dequantize(*g.find_tensor("c")), c);
  EXPECT_EQ(g.find_tensor("d"), nullptr);
}

TEST(GgufReader, NoTensorsNoData) {
  GgufWriter w;
  w.add_string("general.architecture", "none");
  const auto r = parse(w.bytes());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->tensors().empty());
}

TEST(GgufReader, OpenMissingFileIsNotFound) {
  const auto r = GgufFile::open("/nonexistent/dir/model.gguf");
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// (3) hostile input

TEST(GgufHostile, EveryPrefixOfTinyModelIsDataLoss) {
  const auto tiny = testing::make_tiny_llama_gguf();
  const auto& bytes = tiny.bytes;
  ASSERT_TRUE(parse(bytes).ok());
  size_t failures = 0;
  for (size_t n = 0; n < bytes.size(); ++n) {
    const auto r = parse(std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(n)));
    if (r.ok() || r.status().code() != ErrorCode::kDataLoss) {
      if (++failures <= 10) {
        ADD_FAILURE() << "prefix of " << n << " bytes: " << (r.ok() ? "accepted" : r.status().to_string());
      }
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << bytes.size() << " prefixes";
  // Spot-check that messages say where: a cut inside the tensor infos names a tensor.
  const size_t cut = tiny.layout.tensor_info_begin + 20;
  const auto r = parse(std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(cut)));
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("byte"), std::string::npos) << r.status().message();
}

// Whatever survives parsing must also survive the loader and dequantization.
void exercise(const std::vector<uint8_t>& bytes, size_t* rejected) {
  auto r = parse(bytes);
  if (!r.ok()) {
    EXPECT_FALSE(r.status().message().empty());
    ++*rejected;
    return;
  }
  for (const auto& key : r->keys()) (void)r->format_value(key);
  (void)r->get_string_array("tokenizer.ggml.tokens");
  (void)r->get_int_array("tokenizer.ggml.token_type");
  for (const auto& t : r->tensors()) {
    auto v = r->dequantize(t);
    if (v.ok()) {
      EXPECT_EQ(int64_t(v->size()), t.n_elements);
    }
  }
  (void)load_gguf_checkpoint(*r);
}

TEST(GgufHostile, RandomCorruptionOfHeaderAndMetadataNeverCrashes) {
  const auto tiny = testing::make_tiny_llama_gguf();
  std::mt19937 rng(12345);
  const size_t region = tiny.layout.data_begin;  // header, metadata, tensor infos, padding
  size_t rejected = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    auto bytes = tiny.bytes;
    const int flips = 1 + int(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % region] = uint8_t(rng());
    exercise(bytes, &rejected);
  }
  // Many flips land in token strings or padding and are harmless; a good share must not be.
  EXPECT_GT(rejected, 400u);
  // Length and count fields set to extremes: the overflow guards, not the allocator, must stop them.
  for (size_t field : tiny.layout.fields) {
    if (field + 8 > region) continue;
    for (uint64_t v : {~0ull, 1ull << 63, (1ull << 61) + 1, 0ull, 0xffffffffull}) {
      auto bytes = tiny.bytes;
      std::memcpy(bytes.data() + field, &v, 8);
      exercise(bytes, &rejected);
    }
  }
}

TEST(GgufHostile, WrongMagicIsDataLoss) {
  auto bytes = testing::make_tiny_llama_gguf().bytes;
  bytes[0] = 'X';
  const auto r = parse(bytes);
  EXPECT_EQ(r.status().code(), ErrorCode::kDataLoss);
  EXPECT_NE(r.status().message().find("not a GGUF file (magic 'XGUF'"), std::string::npos) << r.status().message();
  // A llama2.c checkpoint is not a GGUF file either.
  const auto l = GgufFile::open(testing::stories260k_path());
  EXPECT_EQ(l.status().code(), ErrorCode::kDataLoss);
  EXPECT_NE(l.status().message().find("not a GGUF file"), std::string::npos) << l.status().message();
}

TEST(GgufHostile, UnsupportedVersions) {
  auto bytes = testing::make_tiny_llama_gguf().bytes;
  for (uint32_t v : {1u, 0u, 4u}) {
    poke<uint32_t>(&bytes, 4, v);
    const auto r = parse(bytes);
    EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported) << v;
    EXPECT_NE(r.status().message().find("version " + std::to_string(v)), std::string::npos) << r.status().message();
  }
  poke<uint32_t>(&bytes, 4, 0x03000000u);  // a big-endian v3 file
  const auto r = parse(bytes);
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.status().message().find("big-endian"), std::string::npos) << r.status().message();
}

TEST(GgufHostile, UnknownTensorTypeIdIsUnsupported) {
  GgufWriter w;
  w.add_tensor_f32("fine", {4}, {1, 2, 3, 4});
  w.add_tensor_raw("blk.7.mystery", {32}, 99, std::vector<uint8_t>(64));
  const auto r = parse(w.bytes());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.status().message().find("'blk.7.mystery'"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("99"), std::string::npos) << r.status().message();
}

TEST(GgufHostile, KnownTypeWithoutDequantizerIsUnsupported) {
  GgufWriter w;
  w.add_tensor_raw("blk.0.ffn_down.weight", {256, 2}, uint32_t(GgmlType::kQ5_K), std::vector<uint8_t>(2 * 176));
  const auto r = parse(w.bytes());
  ASSERT_TRUE(r.ok()) << r.status().to_string();  // the file itself is fine
  const auto& t = r->tensors()[0];
  EXPECT_EQ(t.n_bytes, 352u);
  const auto d = r->dequantize(t);
  EXPECT_EQ(d.status().code(), ErrorCode::kUnsupported);
  const std::string& m = d.status().message();
  EXPECT_NE(m.find("'blk.0.ffn_down.weight'"), std::string::npos) << m;
  EXPECT_NE(m.find("Q5_K"), std::string::npos) << m;
  EXPECT_NE(m.find(ggml_supported_type_names()), std::string::npos) << m;
}

// Builds a one-tensor file and returns the parse status.
Status parse_status(const std::vector<uint8_t>& bytes) { return parse(bytes).status(); }

TEST(GgufHostile, StructuralChecks) {
  const auto expect_loss = [](const std::vector<uint8_t>& bytes, const std::string& needle) {
    const Status s = parse_status(bytes);
    EXPECT_EQ(s.code(), ErrorCode::kDataLoss) << needle << ": " << s.to_string();
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  };
  {  // 5 dimensions
    GgufWriter w;
    w.add_tensor_raw("t5", {1, 1, 1, 1, 2}, 0, std::vector<uint8_t>(8));
    expect_loss(w.bytes(), "'t5' has 5 dimensions");
  }
  {  // a zero dimension
    GgufWriter w;
    w.add_tensor_raw("t0", {4, 0}, 0, {});
    expect_loss(w.bytes(), "'t0' dimension 1 is 0");
  }
  {  // element count overflow: 2^32 * 2^32
    GgufWriter w;
    w.add_tensor_raw("big", {int64_t(1) << 32, int64_t(1) << 32}, 0, {});
    expect_loss(w.bytes(), "'big' has more than 2^63 elements");
  }
  {  // byte count overflow: 2^62 F32 elements
    GgufWriter w;
    w.add_tensor_raw("huge", {int64_t(1) << 62}, 0, {});
    expect_loss(w.bytes(), "'huge' is larger than 2^64 bytes");
  }
  {  // rows that are not whole blocks
    GgufWriter w;
    w.add_tensor_raw("q", {33, 2}, uint32_t(GgmlType::kQ8_0), std::vector<uint8_t>(136));
    expect_loss(w.bytes(), "'q' of type Q8_0 has rows of 33 elements");
  }
  {  // data past the end of the file
    GgufWriter w;
    w.add_tensor_raw("short", {16}, 0, std::vector<uint8_t>(60));
    expect_loss(w.bytes(), "tensor 'short' data");
  }
  {  // duplicate tensor names
    GgufWriter w;
    w.add_tensor_f32("dup", {1}, {1});
    w.add_tensor_f32("dup", {1}, {2});
    expect_loss(w.bytes(), "duplicate tensor name 'dup'");
  }
  {  // duplicate keys
    GgufWriter w;
    w.add_u32("k", 1);
    w.add_u32("k", 2);
    expect_loss(w.bytes(), "duplicate metadata key 'k'");
  }
  {  // alignment that is not a power of two
    GgufWriter w;
    w.add_u32("general.alignment", 48);
    expect_loss(w.bytes(), "general.alignment = 48");
  }
  {  // misaligned tensor offset
    GgufWriter w;
    w.add_tensor_f32("a", {4}, {1, 2, 3, 4});
    GgufWriter::Layout layout;
    auto bytes = w.bytes(&layout);
    const size_t offset_field = layout.fields[layout.fields.size() - 2];  // the field before the data
    poke<uint64_t>(&bytes, offset_field, 4);
    expect_loss(bytes, "data offset 4 is not a multiple of the alignment 32");
  }
  {  // an array whose count would overflow count * element size
    GgufWriter w;
    w.add("arr", MetaValue::array(MetaType::kU64, {MetaValue::u64(1)}));
    GgufWriter::Layout layout;
    auto bytes = w.bytes(&layout);
    poke<uint64_t>(&bytes, layout.kv_begin + 8 + 3 + 4 + 4, (1ull << 61) + 1);  // key "arr", type, elem type
    expect_loss(bytes, "array 'arr' of 2305843009213693953 u64");
  }
  {  // a string length past the end
    GgufWriter w;
    w.add_string("s", "hello");
    GgufWriter::Layout layout;
    auto bytes = w.bytes(&layout);
    poke<uint64_t>(&bytes, layout.kv_begin + 8 + 1 + 4, ~0ull);
    expect_loss(bytes, "string value of 's'");
  }
  {  // a bool that is neither 0 nor 1
    GgufWriter w;
    w.add("b", MetaValue::u8(2));
    GgufWriter::Layout layout;
    auto bytes = w.bytes(&layout);
    poke<uint32_t>(&bytes, layout.kv_begin + 8 + 1, uint32_t(MetaType::kBool));
    expect_loss(bytes, "bool value of 'b' is 2");
  }
  {  // an unknown metadata value type
    GgufWriter w;
    w.add_u32("v", 1);
    GgufWriter::Layout layout;
    auto bytes = w.bytes(&layout);
    poke<uint32_t>(&bytes, layout.kv_begin + 8 + 1, 13);
    expect_loss(bytes, "'v' has unknown value type id 13");
  }
  {  // arrays nested past the depth limit
    MetaValue v = MetaValue::array(MetaType::kU8, {});
    for (int i = 0; i < 20; ++i) v = MetaValue::array(MetaType::kArray, {v});
    GgufWriter w;
    w.add("deep", v);
    expect_loss(w.bytes(), "nested deeper than");
  }
  {  // counts that cannot fit in the file
    GgufWriter w;
    auto bytes = w.bytes();
    poke<uint64_t>(&bytes, 16, 1000);  // kv_count
    expect_loss(bytes, "declares 1000 key/value pairs");
    poke<uint64_t>(&bytes, 16, 0);
    poke<uint64_t>(&bytes, 8, ~0ull);  // tensor_count
    expect_loss(bytes, "tensor infos");
  }
}

// ---------------------------------------------------------------------------------------------
// (4) the llama loader on the tiny model

StatusOr<Checkpoint> load_tiny(const std::vector<uint8_t>& bytes) {
  auto g = parse(bytes);
  if (!g.ok()) return g.status();
  return load_gguf_checkpoint(*g);
}

void expect_weights(const Checkpoint& ck, const std::map<std::string, std::vector<float>>& values) {
  const Weights& w = ck.weights;
  // Matrices the file stores as Q4_1 / Q8_0 are kept only in that form: dense() gives their values.
  expect_close(w.dense(w.token_embedding, "token_embd.weight"), values.at("token_embd.weight"), "token_embd");
  expect_close(w.final_norm, values.at("output_norm.weight"), "output_norm");
  if (values.count("output.weight")) {
    expect_close(w.dense(w.output, "output.weight"), values.at("output.weight"), "output");
    EXPECT_FALSE(w.tied());
  } else {
    EXPECT_TRUE(w.tied());
    EXPECT_EQ(&w.classifier(), &w.token_embedding);
  }
  ASSERT_EQ(int(w.layers.size()), ck.config.n_layers);
  for (int l = 0; l < ck.config.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const LayerWeights& lw = w.layers[size_t(l)];
    expect_close(lw.attn_norm, values.at(p + "attn_norm.weight"), p + "attn_norm");
    expect_close(w.dense(lw.wq, p + "attn_q.weight"), values.at(p + "attn_q.weight"), p + "attn_q");
    expect_close(w.dense(lw.wk, p + "attn_k.weight"), values.at(p + "attn_k.weight"), p + "attn_k");
    expect_close(w.dense(lw.wv, p + "attn_v.weight"), values.at(p + "attn_v.weight"), p + "attn_v");
    expect_close(w.dense(lw.wo, p + "attn_output.weight"), values.at(p + "attn_output.weight"), p + "attn_output");
    expect_close(lw.ffn_norm, values.at(p + "ffn_norm.weight"), p + "ffn_norm");
    expect_close(w.dense(lw.w_gate, p + "ffn_gate.weight"), values.at(p + "ffn_gate.weight"), p + "ffn_gate");
    expect_close(w.dense(lw.w_up, p + "ffn_up.weight"), values.at(p + "ffn_up.weight"), p + "ffn_up");
    expect_close(w.dense(lw.w_down, p + "ffn_down.weight"), values.at(p + "ffn_down.weight"), p + "ffn_down");
  }
}

TEST(GgufModel, TinyLlamaTiedLoadsConfigAndEveryWeight) {
  const auto tiny = testing::make_tiny_llama_gguf();
  const auto ck = load_tiny(tiny.bytes);
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  const ModelConfig& c = ck->config;
  EXPECT_EQ(c.format, "gguf");
  EXPECT_EQ(c.name, "tiny-llama");
  EXPECT_EQ(c.dim, 32);
  EXPECT_EQ(c.hidden_dim, 48);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.max_seq_len, 128);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_TRUE(c.tied_embeddings);
  expect_weights(*ck, tiny.values);
  // Shapes: [out, in] row-major, e.g. W_k is [kv_dim = 16, dim = 32].
  EXPECT_EQ(ck->weights.dense(ck->weights.layers[0].wk, "blk.0.attn_k.weight").size(), 16u * 32u);
  EXPECT_EQ(ck->weights.dense(ck->weights.layers[1].w_down, "blk.1.ffn_down.weight").size(), 32u * 48u);
}

TEST(GgufModel, TinyLlamaUntiedWithOtherShape) {
  testing::TinyLlamaSpec spec;
  spec.tied = false;
  spec.n_layers = 3;
  spec.dim = 64;
  spec.n_heads = 8;
  spec.n_kv_heads = 8;
  spec.hidden_dim = 40;
  spec.vocab_size = 70;
  spec.rope_theta = 500000.0f;
  spec.norm_eps = 1e-6f;
  spec.seed = 7;
  const auto tiny = testing::make_tiny_llama_gguf(spec);
  const auto ck = load_tiny(tiny.bytes);
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  EXPECT_FALSE(ck->config.tied_embeddings);
  EXPECT_EQ(ck->config.vocab_size, 70);
  EXPECT_EQ(ck->config.head_dim, 8);
  EXPECT_EQ(ck->config.rope_theta, 500000.0f);
  EXPECT_EQ(ck->config.norm_eps, 1e-6f);
  expect_weights(*ck, tiny.values);
  EXPECT_EQ(&ck->weights.classifier(), &ck->weights.output);
}

// Writer for the tiny model with one edit applied.
std::vector<uint8_t> tiny_with(const std::function<void(GgufWriter&)>& edit) {
  std::map<std::string, std::vector<float>> values;
  GgufWriter w = testing::tiny_llama_writer({}, &values);
  edit(w);
  return w.bytes();
}

TEST(GgufModel, ShapeMismatchIsDataLoss) {
  const auto bytes = tiny_with([](GgufWriter& w) {
    ASSERT_TRUE(w.remove_tensor("blk.1.attn_k.weight"));
    w.add_tensor_f32("blk.1.attn_k.weight", {32, 24}, std::vector<float>(32 * 24));
  });
  const auto ck = load_tiny(bytes);
  EXPECT_EQ(ck.status().code(), ErrorCode::kDataLoss);
  EXPECT_NE(ck.status().message().find("'blk.1.attn_k.weight' has shape [32, 24], expected [32, 16]"),
            std::string::npos)
      << ck.status().message();
}

TEST(GgufModel, TypeWithoutDequantizerIsUnsupported) {
  const auto bytes = tiny_with([](GgufWriter& w) {
    ASSERT_TRUE(w.remove_tensor("blk.1.attn_q.weight"));
    w.add_tensor_raw("blk.1.attn_q.weight", {32, 32}, uint32_t(GgmlType::kIQ4_NL), std::vector<uint8_t>(32 * 18));
  });
  const auto ck = load_tiny(bytes);
  EXPECT_EQ(ck.status().code(), ErrorCode::kUnsupported);
  const std::string& m = ck.status().message();
  EXPECT_NE(m.find("'blk.1.attn_q.weight' has type IQ4_NL"), std::string::npos) << m;
  EXPECT_NE(m.find(ggml_supported_type_names()), std::string::npos) << m;
}

TEST(GgufModel, RefusesWhatItCannotRunFaithfully) {
  struct Case {
    const char* what;
    std::function<void(GgufWriter&)> edit;
    ErrorCode code;
    const char* needle;
  };
  const Case cases[] = {
      {"architecture", [](GgufWriter& w) { w.remove("general.architecture"); w.add_string("general.architecture", "qwen2"); },
       ErrorCode::kUnsupported, "architecture 'qwen2'"},
      {"partial rope", [](GgufWriter& w) { w.remove("llama.rope.dimension_count"); w.add_u32("llama.rope.dimension_count", 4); },
       ErrorCode::kUnsupported, "llama.rope.dimension_count = 4"},
      {"rope scaling", [](GgufWriter& w) { w.add_string("llama.rope.scaling.type", "yarn"); },
       ErrorCode::kUnsupported, "scaling.type = 'yarn'"},
      {"extra tensor", [](GgufWriter& w) { w.add_tensor_f32("rope_freqs.weight", {4}, {1, 1, 1, 1}); },
       ErrorCode::kUnsupported, "'rope_freqs.weight'"},
      {"missing tensor", [](GgufWriter& w) { w.remove_tensor("blk.0.ffn_up.weight"); },
       ErrorCode::kNotFound, "'blk.0.ffn_up.weight' not found"},
      {"missing key", [](GgufWriter& w) { w.remove("llama.attention.layer_norm_rms_epsilon"); },
       ErrorCode::kNotFound, "llama.attention.layer_norm_rms_epsilon"},
      {"zero heads", [](GgufWriter& w) { w.remove("llama.attention.head_count"); w.add_u32("llama.attention.head_count", 0); },
       ErrorCode::kDataLoss, "llama.attention.head_count = 0"},
      {"gqa ratio", [](GgufWriter& w) { w.remove("llama.attention.head_count_kv"); w.add_u32("llama.attention.head_count_kv", 3); },
       ErrorCode::kDataLoss, "not a multiple of llama.attention.head_count_kv 3"},
      {"vocab", [](GgufWriter& w) { w.remove("llama.vocab_size"); w.add_u32("llama.vocab_size", 65); },
       ErrorCode::kDataLoss, "llama.vocab_size = 65"},
      // Found by fuzzing: layers were once allocated from block_count before any tensor check.
      {"block count", [](GgufWriter& w) { w.remove("llama.block_count"); w.add_u32("llama.block_count", 2000000000); },
       ErrorCode::kDataLoss, "llama.block_count = 2000000000 needs"},
  };
  for (const Case& c : cases) {
    const auto ck = load_tiny(tiny_with(c.edit));
    EXPECT_EQ(ck.status().code(), c.code) << c.what << ": " << ck.status().to_string();
    EXPECT_NE(ck.status().message().find(c.needle), std::string::npos) << c.what << ": " << ck.status().message();
  }
}

// ---------------------------------------------------------------------------------------------
// (5) the real SmolLM2-135M-Instruct Q4_1 GGUF

struct FixtureValue {
  std::string tensor;
  int64_t index;
  float value;
};

std::vector<FixtureValue> read_fixture() {
  std::ifstream in(testing::fixture_path("smollm2_gguf_values.txt"));
  std::vector<FixtureValue> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    FixtureValue v;
    double x;
    ss >> v.tensor >> v.index >> x;
    v.value = float(x);
    out.push_back(v);
  }
  return out;
}

class SmolLM2 : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::smollm2_path();
    if (path_.empty()) GTEST_SKIP() << "SmolLM2 GGUF not found (run scripts/fetch_models.sh)";
  }
  std::string path_;
};

TEST_F(SmolLM2, OpensFastWithConfigMetadata) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto g = GgufFile::open(path_);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  RecordProperty("open_seconds", std::to_string(seconds));
  // A bound against a pathological (quadratic) parse, not a speed target: the open takes about
  // 0.5 s here, and a loaded CI machine must not fail it.
  EXPECT_LT(seconds, 10.0) << "opening and validating the 98 MB file";
  EXPECT_EQ(g->version(), 3u);
  EXPECT_EQ(g->tensors().size(), 272u);
  EXPECT_EQ(*g->get_string("general.architecture"), "llama");
  const auto tokens = g->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  EXPECT_EQ(tokens->size(), 49152u);
  EXPECT_EQ(tokens->front(), "<|endoftext|>");
  EXPECT_EQ(g->get_string_array("tokenizer.ggml.merges")->size(), 48900u);
  EXPECT_EQ(g->get_int_array("tokenizer.ggml.token_type")->size(), 49152u);
  EXPECT_EQ(*g->get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_FALSE(*g->get_bool("tokenizer.ggml.add_bos_token"));
  const auto* embd = g->find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::kQ8_0);
  EXPECT_EQ(embd->shape, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(g->find_tensor("blk.0.attn_q.weight")->type, GgmlType::kQ4_1);
  EXPECT_EQ(g->find_tensor("output.weight"), nullptr);
}

TEST_F(SmolLM2, CheckpointConfigAndValuesMatchPythonGguf) {
  const auto g = GgufFile::open(path_);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  const auto ck = load_gguf_checkpoint(*g);
  ASSERT_TRUE(ck.ok()) << ck.status().to_string();
  const ModelConfig& c = ck->config;
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.hidden_dim, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_seq_len, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0f);
  EXPECT_EQ(c.norm_eps, 1e-5f);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_TRUE(ck->weights.output.empty());

  const auto fixture = read_fixture();
  ASSERT_GE(fixture.size(), 300u) << "tests/fixtures/smollm2_gguf_values.txt";
  // The Q4_1 / Q8_0 matrices are kept only as stored (their f32 members empty); Weights::dense
  // gives their values.
  const Weights& w = ck->weights;
  EXPECT_TRUE(w.token_embedding.empty());
  EXPECT_TRUE(w.layers[0].wq.empty());
  EXPECT_FALSE(w.layers[0].attn_norm.empty());
  const std::map<std::string, std::vector<float>> from_checkpoint = {
      {"token_embd.weight", w.dense(w.token_embedding, "token_embd.weight")},
      {"blk.0.attn_q.weight", w.dense(w.layers[0].wq, "blk.0.attn_q.weight")},
      {"blk.0.attn_norm.weight", w.dense(w.layers[0].attn_norm, "blk.0.attn_norm.weight")},
      {"blk.29.ffn_down.weight", w.dense(w.layers[29].w_down, "blk.29.ffn_down.weight")},
  };
  std::map<std::string, int> checked;
  for (const auto& f : fixture) {
    const auto it = from_checkpoint.find(f.tensor);
    ASSERT_NE(it, from_checkpoint.end()) << f.tensor;
    const std::vector<float>& v = it->second;
    ASSERT_LT(size_t(f.index), v.size()) << f.tensor;
    const float got = v[size_t(f.index)];
    EXPECT_LE(std::fabs(got - f.value), 1e-6f * std::fabs(f.value) + 1e-12f)
        << f.tensor << "[" << f.index << "] = " << got << ", python gguf says " << f.value;
    ++checked[f.tensor];
  }
  EXPECT_EQ(checked.size(), 4u);
  // The loader hands out exactly what GgufFile::dequantize produces, bytes in the same order.
  const auto wq = g->dequantize(*g->find_tensor("blk.0.attn_q.weight"));
  ASSERT_TRUE(wq.ok());
  EXPECT_EQ(*wq, from_checkpoint.at("blk.0.attn_q.weight"));
  // The values are not all alike (a reader returning zeros or one block repeated would fail).
  EXPECT_NE(from_checkpoint.at("token_embd.weight")[0], from_checkpoint.at("token_embd.weight")[1]);

  // The matrices kept as the file stores them (the decoder multiplies by these): every Q4_1
  // layer matrix and the Q8_0 embedding, each giving back ggml's dequantized values bit for bit.
  EXPECT_EQ(ck->weights.packed.size(), 7u * 30u + 1u);
  for (const auto& [name, packed] : ck->weights.packed) {
    const GgufFile::Tensor* t = g->find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(packed.format, name == "token_embd.weight" ? BlockFormat::kQ8_0 : BlockFormat::kQ4_1) << name;
    const int64_t k = t->shape[0], rows = t->shape[1];
    ASSERT_EQ(packed.cols, k) << name;
    ASSERT_EQ(packed.rows, rows) << name;
    std::vector<float> got(size_t(rows * k));
    dequantize_rows(packed.blocks(), 0, rows, got.data());
    const auto want = g->dequantize(*t);
    ASSERT_TRUE(want.ok());
    ASSERT_EQ(std::memcmp(got.data(), want->data(), got.size() * sizeof(float)), 0) << name;
  }
}

}  // namespace
}  // namespace kvlab
