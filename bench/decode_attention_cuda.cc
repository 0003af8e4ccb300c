// Decode attention on the GPU (kernels/cuda/kv_attention_cuda.h): one new query token per
// sequence over a history of N tokens in pages of 128, each (sequence, kv head) its own pages in
// device memory, the L2 flushed before every timed call (an H100's 50 MiB L2 would otherwise hold
// a whole int4 history of 32K tokens).
//
//   decode_attention_cuda/<format>/ctx:<N>/q:<Hq>/kv:<Hkv>/d:<D>/b:<B>
//
//   f32, f16, bf16, fp8     token-major pages
//   int8, int4, int3, int2  KIVI layout with group 128 (as attention_bench): keys per channel over
//                           the page, values per token in groups of min(128, d) channels
//   kivi4, kivi2            the kivi policy's layout: key groups of 32 tokens, value groups of 32
//
// Counters: bytes_read = the packed K/V bytes of the batch (codes or elements, scales, zeros),
// GBps = bytes_read per second, read_frac = GBps over the device read bandwidth measured at
// start-up in the same binary (bench/cuda_bandwidth.h, also in the context as
// device_read_GBps), us = microseconds per call. Times are CUDA events around decode_attention
// (its two launches and kernels; manual time: real_time in the JSON).
//
// Without a GPU the binary says so and exits 0 without measuring anything.
//
// Usage: decode_attention_cuda [--benchmark_filter=int4/ctx:32768] [google benchmark flags]
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/cuda_bandwidth.h"
#include "kernels/cpu/kv_format.h"
#include "kernels/cpu/kv_quantize.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/kv_attention_cuda.h"

namespace kvlab {
namespace {

constexpr int kPage = 128;
double g_read_gbps = 0;
cuda::L2Flush* g_flush = nullptr;  // main's

struct Layout {
  KvFormat format;  // of keys (values: token-major or kIntToken)
  int bits = 0;
  int key_group = 0;    // kIntChannel: tokens per group (0: the page)
  int value_group = 0;  // kIntToken: channels per group (0: min(128, d))
};

Layout layout_of(const std::string& name) {
  if (name == "f32") return {KvFormat::kF32};
  if (name == "f16") return {KvFormat::kF16};
  if (name == "bf16") return {KvFormat::kBF16};
  if (name == "fp8") return {KvFormat::kFp8};
  if (name == "kivi4") return {KvFormat::kIntChannel, 4, 32, 32};
  if (name == "kivi2") return {KvFormat::kIntChannel, 2, 32, 32};
  return {KvFormat::kIntChannel, std::stoi(name.substr(3))};  // int8 / int4 / int3 / int2
}

// One page of one kv head, packed on the host: storage and the KvBlock pointing into it.
struct HostPage {
  std::vector<uint8_t> data;
  std::vector<uint16_t> scale, zero;
  KvBlock block;
};

HostPage pack_page(KvFormat format, int bits, int group, const float* x, int n, int d) {
  HostPage p;
  KvBlock& b = p.block;
  b.format = format, b.n = n, b.d = d, b.bits = bits, b.group = group;
  const bool channels = format == KvFormat::kIntChannel;
  b.stride = channels ? packed_bytes(n, bits) : format == KvFormat::kIntToken ? packed_bytes(d, bits) : element_bytes(format) * d;
  p.data.assign(size_t(b.stride) * (channels ? d : n), 0);
  p.scale.resize(size_t(block_scales(b)));
  if (format == KvFormat::kIntToken || channels) p.zero.resize(p.scale.size());
  quantize_block(b, x, d, p.data.data(), p.scale.data(), p.zero.empty() ? nullptr : p.zero.data());
  b.data = p.data.data();
  b.scale = p.scale.empty() ? nullptr : p.scale.data();
  b.zero = p.zero.empty() ? nullptr : p.zero.data();
  return p;
}

// xorshift64, normal-ish values (a sum of four uniforms); keys with an outlier channel in 32.
struct Rng {
  uint64_t s;
  float normalish() {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    const float u = float((s & 0xffff) + ((s >> 16) & 0xffff) + ((s >> 32) & 0xffff) + (s >> 48)) / 65536.0f;
    return (u - 2.0f) * 1.7f;
  }
};

void BM_decode_attention_cuda(benchmark::State& state, const std::string& format, int ctx, int q_heads, int kv_heads,
                              int d, int batch) {
  const Layout ly = layout_of(format);
  const bool integer = ly.format == KvFormat::kIntChannel;
  const KvFormat vformat = integer ? KvFormat::kIntToken : ly.format;
  const int vgroup = integer ? (ly.value_group ? ly.value_group : std::min(128, d)) : 0;
  // One sequence's pages, packed once; the batch uploads `batch` copies (distinct device memory).
  Rng rng{0x9e3779b97f4a7c15ull};
  std::vector<HostPage> kp, vp;
  std::vector<float> k(size_t(kPage) * d), v(size_t(kPage) * d);
  for (int h = 0; h < kv_heads; ++h) {
    for (int j0 = 0; j0 < ctx; j0 += kPage) {
      const int n = std::min(kPage, ctx - j0);
      for (int i = 0; i < n * d; ++i) {
        const bool outlier = i % d % 32 == 7;
        k[i] = outlier ? 4.0f + 3.0f * rng.normalish() : rng.normalish();
        v[i] = rng.normalish();
      }
      kp.push_back(pack_page(ly.format, ly.bits, ly.key_group, k.data(), n, d));
      vp.push_back(pack_page(vformat, ly.bits, vgroup, v.data(), n, d));
    }
  }
  std::vector<KvBlock> kb, vb;
  std::vector<int32_t> first = {0};
  const int pages = (ctx + kPage - 1) / kPage;
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < kv_heads; ++h) {
      for (int i = 0; i < pages; ++i) kb.push_back(kp[size_t(h) * pages + i].block), vb.push_back(vp[size_t(h) * pages + i].block);
      first.push_back(first.back() + pages);
    }
  }
  StatusOr<cuda::DeviceHistory> hist = cuda::upload_history(kb, vb, d);
  if (!hist.ok()) return state.SkipWithError(hist.status().to_string().c_str());
  cuda::DecodeAttention a;
  a.batch = batch, a.n_heads = q_heads, a.n_kv_heads = kv_heads, a.head_dim = d;
  a.scale = 1.0f / std::sqrt(float(d)), a.max_blocks = pages;
  std::vector<float> q(size_t(batch) * q_heads * d);
  for (float& x : q) x = rng.normalish();
  auto qd = cuda::DeviceBuffer::allocate(q.size() * 4);
  auto fd = cuda::DeviceBuffer::allocate(first.size() * 4);
  auto od = cuda::DeviceBuffer::allocate(q.size() * 4);
  auto ws = cuda::DeviceBuffer::allocate(cuda::decode_workspace_floats(a) * 4);
  if (!qd.ok() || !fd.ok() || !od.ok() || !ws.ok()) return state.SkipWithError("device allocation failed");
  if (!qd->upload(q.data(), q.size() * 4).ok() || !fd->upload(first.data(), first.size() * 4).ok()) {
    return state.SkipWithError("upload failed");
  }
  a.q = static_cast<const float*>(qd->data()), a.out = static_cast<float*>(od->data());
  a.k = hist->k.blocks(), a.v = hist->v.blocks(), a.first = static_cast<const int32_t*>(fd->data());
  StatusOr<cuda::EventTimer> timer = cuda::EventTimer::create();
  if (!timer.ok()) return state.SkipWithError(timer.status().to_string().c_str());
  // check() outside the timed region: the events then bracket the two launches and the kernels.
  if (Status st = cuda::check(a); !st.ok()) return state.SkipWithError(st.to_string().c_str());
  double total_ms = 0;
  for (auto _ : state) {
    if (Status st = g_flush->run(); !st.ok()) return state.SkipWithError(st.to_string().c_str());
    if (Status st = timer->start(); !st.ok()) return state.SkipWithError(st.to_string().c_str());
    if (Status st = cuda::decode_attention(a, static_cast<float*>(ws->data())); !st.ok()) {
      return state.SkipWithError(st.to_string().c_str());
    }
    StatusOr<float> ms = timer->stop_ms();
    if (!ms.ok()) return state.SkipWithError(ms.status().to_string().c_str());
    state.SetIterationTime(*ms * 1e-3);
    total_ms += *ms;
  }
  const double bytes = double(hist->k.packed_bytes + hist->v.packed_bytes);
  const double sec = total_ms * 1e-3 / double(state.iterations());
  state.counters["bytes_read"] = bytes;
  state.counters["GBps"] = bytes / sec / 1e9;
  state.counters["read_frac"] = bytes / sec / 1e9 / g_read_gbps;
  state.counters["us"] = sec * 1e6;
}

void register_benchmarks() {
  struct Heads {
    int q, kv, d;
  };
  for (const char* f : {"f32", "f16", "bf16", "fp8", "int8", "int4", "int3", "int2", "kivi4", "kivi2"}) {
    for (int ctx : {4096, 32768}) {
      for (Heads h : {Heads{32, 8, 128}, Heads{9, 3, 64}}) {
        for (int b : {1, 8}) {
          const std::string name = std::string("decode_attention_cuda/") + f + "/ctx:" + std::to_string(ctx) + "/q:" +
                                   std::to_string(h.q) + "/kv:" + std::to_string(h.kv) + "/d:" + std::to_string(h.d) +
                                   "/b:" + std::to_string(b);
          benchmark::RegisterBenchmark(name.c_str(), BM_decode_attention_cuda, std::string(f), ctx, h.q, h.kv, h.d, b)
              ->UseManualTime()
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvlab

int main(int argc, char** argv) {
  using namespace kvlab;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const StatusOr<cuda::DeviceInfo> info = cuda::device_info();
  if (!info.ok()) {
    std::printf("decode_attention_cuda: nothing measured: %s\n", info.status().message().c_str());
    return 0;
  }
  StatusOr<double> gbps = cuda::measure_device_read_gbps();
  if (!gbps.ok()) {
    std::fprintf(stderr, "decode_attention_cuda: %s\n", gbps.status().to_string().c_str());
    return 2;
  }
  g_read_gbps = *gbps;
  StatusOr<cuda::L2Flush> flush = cuda::L2Flush::create();
  if (!flush.ok()) {
    std::fprintf(stderr, "decode_attention_cuda: %s\n", flush.status().to_string().c_str());
    return 2;
  }
  g_flush = &*flush;
  benchmark::AddCustomContext("device", info->name);
  benchmark::AddCustomContext("device_read_GBps", std::to_string(g_read_gbps));
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_flush = nullptr;
  return 0;
}
