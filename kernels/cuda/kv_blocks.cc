// Packed blocks from host memory to device memory (kv_attention_cuda.h).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/kv_quantize.h"
#include "kernels/cuda/kv_attention_cuda.h"

namespace kvlab::cuda {
namespace {

constexpr int64_t kAlign = 16;  // every array in the arena starts on 16 bytes

int64_t aligned(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

}  // namespace

BlockExtent block_extent(const KvBlock& b) {
  BlockExtent e;
  e.data_bytes = block_data_bytes(b);
  e.scales = block_scales(b);  // kIntToken with group 0: none (check_block refuses it)
  e.zeros = b.format == KvFormat::kIntToken || b.format == KvFormat::kIntChannel;
  return e;
}

Status check_block(const KvBlock& b) {
  if (int(b.format) > int(KvFormat::kIntChannel)) return invalid_argument("packed block: unknown format " + std::to_string(int(b.format)));
  if (b.n < 1 || b.d < 1) return invalid_argument("packed block: " + std::to_string(b.n) + " tokens of head size " + std::to_string(b.d));
  if (!b.data) return invalid_argument("packed block: no data");
  const bool integer = b.format == KvFormat::kIntToken || b.format == KvFormat::kIntChannel;
  if (integer && b.bits != 2 && b.bits != 3 && b.bits != 4 && b.bits != 8) {
    return invalid_argument("packed block: " + std::to_string(b.bits) + "-bit codes (2, 3, 4 or 8)");
  }
  if (b.format == KvFormat::kIntToken && (b.group < 1 || b.d % b.group != 0)) {
    return invalid_argument("packed block: channel group " + std::to_string(b.group) + " does not divide head size " + std::to_string(b.d));
  }
  if (b.format == KvFormat::kIntChannel && b.group > 0 && b.group < b.n && b.group * b.bits % 8 != 0) {
    return invalid_argument("packed block: token groups of " + std::to_string(b.group) + " " + std::to_string(b.bits) +
                            "-bit codes do not start on a byte");
  }
  const BlockExtent e = block_extent(b);
  const int64_t row = block_row_bytes(b);
  if (block_rows(b) > 1 && b.stride < row) {
    return invalid_argument("packed block: stride " + std::to_string(b.stride) + " shorter than a row of " + std::to_string(row) + " bytes");
  }
  if (e.scales > 0 && (!b.scale || (e.zeros && !b.zero))) return invalid_argument("packed block: missing scales or zeros");
  return Status::Ok();
}

StatusOr<DeviceBlocks> upload_blocks(std::span<const KvBlock> blocks) {
  // Arena layout: each block's data, then its scales, then its zeros, each 16-byte aligned.
  std::vector<int64_t> offset(blocks.size());
  int64_t total = 0, packed = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Status st = check_block(blocks[i]);
    if (!st.ok()) return Status(st.code(), "block " + std::to_string(i) + ": " + st.message());
    const BlockExtent e = block_extent(blocks[i]);
    offset[i] = total;
    total += aligned(e.data_bytes) + (1 + int(e.zeros)) * aligned(2 * e.scales);
    packed += e.data_bytes + (1 + int(e.zeros)) * 2 * e.scales;
  }
  std::vector<uint8_t> host(size_t(total), 0);
  std::vector<KvBlock> desc(blocks.begin(), blocks.end());
  StatusOr<DeviceBuffer> arena = DeviceBuffer::allocate(size_t(std::max<int64_t>(total, 1)));
  if (!arena.ok()) return arena.status();
  const auto base = static_cast<uint8_t*>(arena->data());
  for (size_t i = 0; i < blocks.size(); ++i) {
    const KvBlock& b = blocks[i];
    const BlockExtent e = block_extent(b);
    int64_t at = offset[i];
    std::memcpy(host.data() + at, b.data, size_t(e.data_bytes));
    desc[i].data = base + at;
    desc[i].scale = nullptr, desc[i].zero = nullptr, desc[i].next = nullptr;  // no host pointer reaches the device
    at += aligned(e.data_bytes);
    if (e.scales > 0) {
      std::memcpy(host.data() + at, b.scale, size_t(2 * e.scales));
      desc[i].scale = reinterpret_cast<const uint16_t*>(base + at);
      at += aligned(2 * e.scales);
      if (e.zeros) {
        std::memcpy(host.data() + at, b.zero, size_t(2 * e.scales));
        desc[i].zero = reinterpret_cast<const uint16_t*>(base + at);
      }
    }
  }
  KVLAB_RETURN_IF_ERROR(arena->upload(host.data(), host.size()));
  StatusOr<DeviceBuffer> d = DeviceBuffer::allocate(std::max<size_t>(desc.size(), 1) * sizeof(KvBlock));
  if (!d.ok()) return d.status();
  KVLAB_RETURN_IF_ERROR(d->upload(desc.data(), desc.size() * sizeof(KvBlock)));
  DeviceBlocks out;
  out.arena = std::move(*arena);
  out.descriptors = std::move(*d);
  out.count = int(blocks.size());
  out.packed_bytes = packed;
  return out;
}

StatusOr<DeviceHistory> upload_history(std::span<const KvBlock> k, std::span<const KvBlock> v, int head_dim) {
  if (k.size() != v.size()) return invalid_argument("history: " + std::to_string(k.size()) + " key blocks, " + std::to_string(v.size()) + " value blocks");
  for (size_t i = 0; i < k.size(); ++i) {
    if (k[i].n != v[i].n) return invalid_argument("history: block " + std::to_string(i) + " has " + std::to_string(k[i].n) + " keys and " + std::to_string(v[i].n) + " values");
    if (k[i].d != head_dim || v[i].d != head_dim) return invalid_argument("history: block " + std::to_string(i) + " is not of head size " + std::to_string(head_dim));
  }
  StatusOr<DeviceBlocks> kd = upload_blocks(k);
  if (!kd.ok()) return Status(kd.status().code(), "keys: " + kd.status().message());
  StatusOr<DeviceBlocks> vd = upload_blocks(v);
  if (!vd.ok()) return Status(vd.status().code(), "values: " + vd.status().message());
  DeviceHistory h;
  h.k = std::move(*kd);
  h.v = std::move(*vd);
  return h;
}

}  // namespace kvlab::cuda
