// Policy spec parsing: canonical forms, per-layer mixing, and errors that say what is valid.
#include "kvcache/policy_spec.h"

#include <gtest/gtest.h>

#include "kvcache/registry.h"

namespace kvlab {
namespace {

TEST(PolicySpecTest, SinglePolicyCoversAllLayersWithDefaultsFilledIn) {
  auto r = parse_cache_spec("full", 30);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].first_layer, 0);
  EXPECT_EQ((*r)[0].last_layer, 29);
  EXPECT_EQ((*r)[0].spec.text, "full:dtype=f16");
  EXPECT_EQ(cache_spec_text(*r), "full:dtype=f16");
  auto b = parse_cache_spec(" full : dtype = bf16 ", 30);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)[0].spec.text, "full:dtype=bf16");
}

TEST(PolicySpecTest, PerLayerMixingFillsGapsWithTheDefault) {
  auto r = parse_cache_spec("L15-29=full:dtype=bf16;L3=full:dtype=f32", 30);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->size(), 4u);
  const int expect[4][2] = {{0, 2}, {3, 3}, {4, 14}, {15, 29}};
  const char* specs[4] = {"full:dtype=f16", "full:dtype=f32", "full:dtype=f16", "full:dtype=bf16"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*r)[i].first_layer, expect[i][0]);
    EXPECT_EQ((*r)[i].last_layer, expect[i][1]);
    EXPECT_EQ((*r)[i].spec.text, specs[i]);
  }
  EXPECT_EQ(cache_spec_text(*r),
            "L0-2=full:dtype=f16;L3=full:dtype=f32;L4-14=full:dtype=f16;L15-29=full:dtype=bf16");
  // The canonical text parses to the same layout.
  auto again = parse_cache_spec(cache_spec_text(*r), 30);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(cache_spec_text(*again), cache_spec_text(*r));
}

void expect_error(const std::string& spec, const std::string& needle, int n_layers = 30) {
  auto r = parse_cache_spec(spec, n_layers);
  ASSERT_FALSE(r.ok()) << spec;
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << spec;
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "'" << spec << "' gave: " << r.status().message() << "\nexpected to find: " << needle;
}

// A parameter holding a policy spec: its commas and semicolons stay inside the brackets, it is
// validated and canonicalized like any spec, and the canonical text parses back to itself.
TEST(PolicySpecTest, NestedSpecsStayInsideTheirBrackets) {
  auto r = parse_cache_spec("L0-9=lighttransfer:base=[kivi:bits=4,group=64],rho=0.25;L20-29=full:dtype=bf16", 30);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].spec.params.get("base"), "[kivi:bits=4,group=64,residual=128,sink=0,dtype=f16]");
  EXPECT_EQ((*r)[0].spec.params.get("rho"), "0.25");
  auto again = parse_cache_spec(cache_spec_text(*r), 30);
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(cache_spec_text(*again), cache_spec_text(*r));
  // Unbracketed is fine when the nested spec has no comma.
  auto plain = parse_cache_spec("lighttransfer:base=kivi:bits=4", 30);
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  EXPECT_EQ(plain->front().spec.params.get("base"), "[kivi:bits=4,group=32,residual=128,sink=0,dtype=f16]");
  EXPECT_FALSE(parse_cache_spec("lighttransfer:base=[kivi:bits=4", 30).ok());
  EXPECT_FALSE(parse_cache_spec("lighttransfer:base=[kivi:bits=4]]", 30).ok());
  EXPECT_FALSE(parse_cache_spec("lighttransfer:base=[]", 30).ok());
}

TEST(PolicySpecTest, ErrorsListWhatIsValid) {
  expect_error("nosuch", "unknown policy 'nosuch' (valid: " + registered_policy_names() + ")");
  expect_error("full:dtype=f8", "valid: dtype=f32|f16|bf16|fp8");
  expect_error("full:dtyp=f16", "unknown key 'dtyp' for policy 'full' (valid: dtype=f32|f16|bf16|fp8)");
  expect_error("full:dtype", "expected key=value");
  expect_error("full:dtype=f16,dtype=f32", "given twice");
  expect_error("", "empty policy spec");
  expect_error("L0-40=full", "outside the model's layers L0-29");
  expect_error("L5-3=full", "outside the model's layers");
  expect_error("L0-10=full;L10-12=full", "layer 10 is assigned twice");
  expect_error("L0-x=full", "bad layer range");
  expect_error("L0-3", "expected L<first>-<last>=<policy>");
  expect_error("L0-3=bogus", "unknown policy 'bogus'");
  expect_error("kivi:bits=5", "bad value '5' for kivi:bits");
  expect_error("kivi:group=4", "out of range");
  expect_error("streaming:window=0", "out of range");
  expect_error("quant:kbits=4,vbits=16", "bad value '16' for quant:vbits");
}

}  // namespace
}  // namespace kvlab
