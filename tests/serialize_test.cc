// BinaryWriter / BinaryReader (base/serialize.h): round trips, and truncation as kDataLoss.
#include "base/serialize.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kvlab {
namespace {

// Values, a string and arrays, the empty one included, read back as written. Reading the empty
// array copies nothing into an empty vector's null data(): the sanitized run checks that this is
// no memcpy(nullptr, ..., 0) (undefined behaviour, seen when a saved AQUA-KV cache had no norms).
TEST(SerializeTest, RoundTripIncludingEmptyArrays) {
  BinaryWriter w;
  w.put<int32_t>(-7);
  w.put_string("kvlab");
  const std::vector<uint16_t> codes = {1, 2, 65535};
  w.put_array(codes.data(), codes.size());
  w.put_array<float>(nullptr, 0);
  w.put<double>(0.5);

  BinaryReader r(w.bytes().data(), w.bytes().size(), "test buffer");
  int32_t i = 0;
  std::string s;
  std::vector<uint16_t> codes_read;
  std::vector<float> empty;
  double d = 0;
  ASSERT_TRUE(r.get(&i).ok());
  ASSERT_TRUE(r.get_string(&s).ok());
  ASSERT_TRUE(r.get_array(&codes_read, 3).ok());
  ASSERT_TRUE(r.get_array(&empty, 0).ok());
  ASSERT_TRUE(r.get(&d).ok());
  EXPECT_EQ(i, -7);
  EXPECT_EQ(s, "kvlab");
  EXPECT_EQ(codes_read, codes);
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(d, 0.5);
  EXPECT_EQ(r.remaining(), 0u);
}

// Every cut of a valid buffer fails with kDataLoss and reads nothing past the end.
TEST(SerializeTest, TruncatedBufferIsDataLoss) {
  BinaryWriter w;
  const std::vector<float> values = {1, 2, 3, 4};
  w.put_array(values.data(), values.size());
  for (size_t cut = 0; cut < w.bytes().size(); ++cut) {
    const std::string bytes = w.bytes().substr(0, cut);  // its own allocation: ASan sees overreads
    BinaryReader r(bytes.data(), bytes.size(), "cut buffer");
    std::vector<float> read;
    const Status st = r.get_array(&read);
    EXPECT_EQ(st.code(), ErrorCode::kDataLoss) << "cut at " << cut;
  }
}

}  // namespace
}  // namespace kvlab
