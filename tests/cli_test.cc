// The kvlab command on bad input: a clear message and exit code 2, nothing written. And the
// JSON the eval command writes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "base/file.h"
#include "kernels/cpu/cpu_features.h"
#include "tests/testing/gguf_writer.h"
#include "tests/testing/test_paths.h"

namespace kvlab {
namespace {

using testing::run_kvlab;

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  ASSERT_TRUE(write_file_atomic(path, std::string(b.begin(), b.end())).ok());
}

void expect_failure(const std::vector<std::string>& args, const std::string& needle) {
  const auto r = run_kvlab(args);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "output: " << r.output << "\nexpected: " << needle;
  EXPECT_EQ(r.output.find("Segmentation"), std::string::npos);
}

TEST(CliTest, MissingModelFile) {
  expect_failure({"info", "--model", "/nonexistent/model.gguf"}, "not found");
  expect_failure({"eval", "--model", "/nonexistent/x.bin", "--text", testing::shared_data_path("sherlock_holmes_adventures.txt"),
                  "--policy", "full"},
                 "not found");
}

TEST(CliTest, TruncatedGguf) {
  const auto tiny = testing::make_tiny_llama_gguf();
  const std::string dir = testing::temp_dir();
  for (size_t cut : {size_t(3), size_t(20), tiny.layout.tensor_info_begin + 5, tiny.bytes.size() - 1}) {
    const std::string path = dir + "/cut.gguf";
    write_bytes(path, std::vector<uint8_t>(tiny.bytes.begin(), tiny.bytes.begin() + cut));
    const auto r = run_kvlab({"info", "--model", path});
    EXPECT_EQ(r.exit_code, 2) << "cut at " << cut << ": " << r.output;
    EXPECT_NE(r.output.find("kvlab: "), std::string::npos) << r.output;
  }
  // The real model cut short.
  const std::string smol = testing::smollm2_path();
  if (!smol.empty()) {
    const auto bytes = read_file_bytes(smol);
    ASSERT_TRUE(bytes.ok());
    const std::string path = dir + "/smol_cut.gguf";
    write_bytes(path, std::vector<uint8_t>(bytes->begin(), bytes->begin() + bytes->size() * 2 / 3));
    expect_failure({"info", "--model", path}, "corrupt or truncated");
  }
}

TEST(CliTest, WrongMagic) {
  auto tiny = testing::make_tiny_llama_gguf();
  tiny.bytes[3] = 'X';  // "GGUX"
  const std::string path = testing::temp_dir() + "/magic.gguf";
  write_bytes(path, tiny.bytes);
  expect_failure({"info", "--model", path}, "not a GGUF file");
}

TEST(CliTest, UnsupportedTensorType) {
  std::map<std::string, std::vector<float>> values;
  testing::GgufWriter w = testing::tiny_llama_writer({}, &values);
  ASSERT_TRUE(w.remove_tensor("blk.0.attn_v.weight"));
  // Q5_K (type 13): 256 values in 176-byte blocks; attn_v is [dim 32, kv 16] = 512 values.
  w.add_tensor_raw("blk.0.attn_v.weight", {32, 16}, 13, std::vector<uint8_t>(2 * 176, 0));
  const std::string path = testing::temp_dir() + "/q5k.gguf";
  write_bytes(path, w.bytes());
  expect_failure({"info", "--model", path}, "blk.0.attn_v.weight");
  expect_failure({"info", "--model", path}, "Q5_K");
}

TEST(CliTest, UnknownPolicyAndBadParameter) {
  const std::string text = testing::shared_data_path("tinystories_valid_subset.txt");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "nosuch"},
                 "unknown policy 'nosuch' (valid: full");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "full:dtype=f8"},
                 "bad value 'f8' for full:dtype");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "full:bits=3"},
                 "unknown key 'bits'");
  expect_failure({"generate", "--model", "stories260k", "--prompt", "Hi", "--policy", "L0-9=full"},
                 "outside the model's layers L0-4");
  // xkv on stories260K (5 layers, kv_dim 32).
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "xkv:rank_k=0"}, "rank_k");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "xkv:group=2,rank_k=65,rank_v=8"},
                 "rank 65 is above the group width 64");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "xkv:group=6,rank_k=8,rank_v=8"},
                 "group 6 is larger than the layer range (5 layers)");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy",
                  "xkv:group=2,rank_k=8,rank_v=8,short_group=off"},
                 "5 layers are not a multiple of group 2");
  // lighttransfer on stories260K (context 512).
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "lighttransfer:rho=1.5"},
                 "bad value '1.5' for lighttransfer:rho: out of range");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "lighttransfer:window=600"},
                 "sink 4 + window 600 is not below the model's context of 512 tokens");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "lighttransfer:window=64,base=[kivi:bits=9]"},
                 "bad policy spec for lighttransfer:base: bad value '9' for kivi:bits");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "lighttransfer:window=64,base=[kivi:bits=4"},
                 "unbalanced brackets");
  // dynsparse: keep outside (0, 1], K outside the model's 5 layers.
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "dynsparse:keep=0"},
                 "keeps no generated token; keep is in (0, 1]");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "dynsparse:keep=1.01"},
                 "bad value '1.01' for dynsparse:keep: out of range");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "dynsparse:layer=7"},
                 "layer=7 is outside the layers 0..4");
  // A decider file for another K, another kind, another model; calibrating what learns nothing.
  const std::string dir = testing::temp_dir();
  const std::string probe = dir + "/cli_probe1.bin";
  const auto made = run_kvlab({"calibrate", "--model", "stories260k", "--text", text, "--policy",
                               "dynsparse:decider=probe,layer=1", "--out", probe, "--tokens", "600", "--window", "128",
                               "--horizon", "8", "--quiet"});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  EXPECT_NE(made.output.find("held AUC"), std::string::npos) << made.output;
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "dynsparse:layer=2,decider=probe,calib=" + probe},
                 "trained at layer=1, the policy asks for layer=2");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "dynsparse:layer=1,decider=mlp,calib=" + probe},
                 "holds a decider=probe, the policy asks for decider=mlp");
  const std::string smol = testing::smollm2_path();
  ASSERT_FALSE(smol.empty());
  expect_failure({"eval", "--model", smol, "--text", text, "--policy", "dynsparse:layer=1,decider=probe,calib=" + probe},
                 "made for another model");
  expect_failure({"calibrate", "--model", "stories260k", "--text", text, "--policy", "dynsparse:decider=knorm",
                  "--out", dir + "/never.bin"},
                 "which learns nothing");
}

TEST(CliTest, ContextLongerThanTheModel) {
  expect_failure({"eval", "--model", "stories260k", "--text", testing::shared_data_path("tinystories_valid_subset.txt"),
                  "--policy", "full", "--context", "1024"},
                 "longer than the model's maximum context of 512");
  expect_failure({"generate", "--model", "stories260k", "--prompt", "Once", "-n", "600"}, "context of 512");
}

TEST(CliTest, EmptyText) {
  const std::string path = testing::temp_dir() + "/empty.txt";
  ASSERT_TRUE(write_file_atomic(path, "\n\n").ok());
  expect_failure({"eval", "--model", "stories260k", "--text", path, "--policy", "full"}, "is empty");
  expect_failure({"ppl", "--model", "stories260k", "--text", path}, "is empty");
}

TEST(CliTest, BadCommandLine) {
  expect_failure({"frobnicate"}, "unknown command 'frobnicate'");
  expect_failure({"eval", "--model", "stories260k", "--windws", "3"}, "unknown option '--windws'");
  expect_failure({"eval", "--model", "stories260k", "--text", "x", "--policy", "full", "--windows", "two"},
                 "needs an integer");
  expect_failure({"generate", "--model", "stories260k"}, "missing required option --prompt");
}

TEST(CliTest, EvalWritesJsonAndAFailedRunLeavesItAlone) {
  const std::string dir = testing::temp_dir();
  const std::string json = dir + "/out.json";
  const std::string text = testing::shared_data_path("tinystories_valid_subset.txt");
  auto r = run_kvlab({"eval", "--model", "stories260k", "--text", text, "--policy", "full:dtype=f32", "--context", "64",
                      "--windows", "3", "--json", json, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto out = read_file_text(json);
  ASSERT_TRUE(out.ok());
  for (const char* key : {"\"model\"", "\"text\"", "\"policy\": \"full:dtype=f32\"", "\"context\": 64", "\"prefill\": 32",
                          "\"windows\": 3", "\"tokens_scored\": 93", "\"ppl\"", "\"ppl_full\"", "\"rel_ppl\": 0",
                          "\"kld_mean\": 0", "\"top1_agree\": 1", "\"kv_bytes\"", "\"kv_bytes_f16\": 120960",
                          "\"bits_per_value\"", "\"compression_vs_f16\"", "\"decode_tokens_per_s\"",
                          "\"decode_tokens_per_s_full\""}) {
    EXPECT_NE(out->find(key), std::string::npos) << key << " missing in\n" << *out;
  }
  // A failing run must not touch an existing output.
  r = run_kvlab({"eval", "--model", "stories260k", "--text", text, "--policy", "nosuch", "--json", json});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(*read_file_text(json), *out);
}

// The copy-retrieval task on SmolLM2: one window of BOS, 32 tokens, 191 more, the 32 again. The
// full cache copies (measured 84% at context 512), a 64-token streaming window has lost the
// passage and does not; the JSON says what was measured; misuse is exit 2.
TEST(CliTest, RetrievalTaskSeesWhatACacheForgot) {
  const std::string json = testing::temp_dir() + "/retrieval.json";
  const std::string text = testing::shared_data_path("sherlock_holmes_adventures.txt");
  auto r = run_kvlab({"eval", "--model", testing::smollm2_path(), "--text", text, "--task", "retrieval", "--context",
                      "256", "--passage", "32", "--windows", "2", "--policy", "full:dtype=f16", "--policy",
                      "streaming:sink=4,window=64", "--json", json, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string out = *read_file_text(json);
  for (const char* key : {"\"task\": \"retrieval\"", "\"passage\": 32", "\"distance\": 191", "\"context\": 256",
                          "\"prefill\": 224", "\"tokens_scored\": 62"}) {
    EXPECT_NE(out.find(key), std::string::npos) << key << " missing in\n" << out;
  }
  auto numbers = [&](const std::string& key) {  // one per policy, in order
    std::vector<double> v;
    for (size_t p = out.find("\"" + key + "\": "); p != std::string::npos; p = out.find("\"" + key + "\": ", p + 1)) {
      v.push_back(std::stod(out.substr(p + key.size() + 4)));
    }
    return v;
  };
  const std::vector<double> top1 = numbers("retrieval_top1"), full = numbers("retrieval_top1_full");
  ASSERT_EQ(top1.size(), 2u);
  ASSERT_EQ(full.size(), 2u);
  EXPECT_GT(full[0], 0.6);
  EXPECT_EQ(top1[0], full[0]);  // f16 against f32: the same argmax on every copied token
  EXPECT_LT(top1[1], full[0] - 0.25);
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "full", "--task", "copy"},
                 "--task must be text or retrieval");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "full", "--passage", "8"},
                 "--passage and --distance belong to --task retrieval");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "full", "--task", "retrieval",
                  "--prefill", "8"},
                 "--prefill does not apply to --task retrieval");
  expect_failure({"eval", "--model", "stories260k", "--text", text, "--policy", "full", "--task", "retrieval",
                  "--context", "100", "--passage", "40", "--distance", "30"},
                 "do not fit in --context 100");
}

// `kvlab xkv-analyze` on stories260K (kv_dim 32, 5 layers): at full rank nothing is lost (every
// error ~0, whatever the grouping); at rank 4 the errors are real and a group of 4 layers, with
// 4x the rank shared, loses less than single layers on average (the JSON's numbers); bad
// parameters are exit 2.
TEST(CliTest, XkvAnalyzeMeasuresTheFactorization) {
  const std::string dir = testing::temp_dir();
  const std::string text = testing::shared_data_path("tinystories_valid_subset.txt");
  const std::string full = dir + "/full.json", low = dir + "/low.json";
  auto r = run_kvlab({"xkv-analyze", "--model", "stories260k", "--text", text, "--tokens", "256", "--rank-k", "32",
                      "--rank-v", "32", "--json", full, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_kvlab({"xkv-analyze", "--model", "stories260k", "--text", text, "--tokens", "256", "--rank-k", "4",
                 "--groups", "1,4", "--json", low, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The errors of one layer: "k_error": [a, b, c] -> numbers.
  auto errors = [](const std::string& json, const std::string& key) {
    std::vector<std::vector<double>> rows;
    for (size_t p = json.find(key); p != std::string::npos; p = json.find(key, p + 1)) {
      std::vector<double> row;
      const size_t open = json.find('[', p), close = json.find(']', p);
      std::string list = json.substr(open + 1, close - open - 1);
      for (size_t q = 0; q < list.size();) {
        size_t used = 0;
        row.push_back(std::stod(list.substr(q), &used));
        q += used + 1;
      }
      rows.push_back(row);
    }
    return rows;
  };
  const std::string full_json = *read_file_text(full), low_json = *read_file_text(low);
  for (const char* key : {"\"k_error\"", "\"v_error\""}) {
    const auto rows = errors(full_json, key);
    ASSERT_EQ(rows.size(), 5u) << full_json;
    for (const auto& row : rows) {
      ASSERT_EQ(row.size(), 3u);
      for (double e : row) EXPECT_LT(e, 1e-4) << key;
    }
    const auto low_rows = errors(low_json, key);
    ASSERT_EQ(low_rows.size(), 5u);
    double g1 = 0, g4 = 0;
    for (const auto& row : low_rows) {
      EXPECT_GT(row[0], 0.01) << key;
      EXPECT_LT(row[0], 1.0) << key;
      g1 += row[0], g4 += row[1];
    }
    EXPECT_LT(g4, g1) << key;
  }
  expect_failure({"xkv-analyze", "--model", "stories260k", "--text", text, "--rank-k", "0"}, "out of range");
  expect_failure({"xkv-analyze", "--model", "stories260k", "--text", text, "--tokens", "64", "--rank-k", "40"},
                 "ranks must be in [1, kv_dim = 32]");
  expect_failure(
      {"xkv-analyze", "--model", "stories260k", "--text", text, "--tokens", "64", "--rank-k", "4", "--groups", "1,9"},
      "groups must be in [1, 5]");
  expect_failure({"xkv-analyze", "--model", "stories260k", "--text", text, "--groups", "1,x"}, "--groups needs");
}

// `kvlab isas`: the supported ISAs, narrowest first, the active one marked. Its child process
// reads the same $KVLAB_ISA as this one (unset, or set by a narrower-ISA rerun of the tests).
TEST(CliTest, IsasListsSupportedIsasNarrowestFirstAndMarksTheActiveOne) {
  std::string expected;
  for (Isa isa : supported_isas()) {
    expected += std::string(isa_name(isa)) + (isa == active_isa() ? " (active)" : "") + "\n";
  }
  const auto r = run_kvlab({"isas"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, expected);
  EXPECT_EQ(expected.rfind("scalar", 0), 0u) << "every CPU runs the scalar kernels";
}

// $KVLAB_ISA moves the mark; a bad value is the usual one-line error and exit code 2.
TEST(CliTest, IsasFollowsKvlabIsa) {
  const char* saved = std::getenv("KVLAB_ISA");
  const std::string restore = saved ? saved : "";
  setenv("KVLAB_ISA", "scalar", 1);
  auto r = run_kvlab({"isas"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("scalar (active)\n", 0), 0u) << r.output;
  EXPECT_EQ(r.output.find("(active)"), r.output.rfind("(active)")) << r.output;
  setenv("KVLAB_ISA", "avx9000", 1);
  expect_failure({"isas"}, "kvlab: $KVLAB_ISA: unknown ISA 'avx9000'");
  if (saved) {
    setenv("KVLAB_ISA", restore.c_str(), 1);
  } else {
    unsetenv("KVLAB_ISA");
  }
}

}  // namespace
}  // namespace kvlab
