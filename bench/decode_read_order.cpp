// seqmix-decode-read-order: how fast the order in which dense decode reads K and V can go, with
// the arithmetic taken out (issue 19 item 4, include/seqmix/attention/README.md "What limits
// decode").
//
// For Hq 32, Hkv 8, D 128 (Llama-3 8B) and K/V in fp32, fp16 and bf16, on 2 threads in one
// process, process CPU time per call (medians of at least 5 calls and 0.25 s):
//   stream          a plain read of the same K and V bytes, each thread one contiguous half;
//   kernel_order    attention_step's loop (decode.hpp) with every multiply-add removed: the same
//                   tiles (decode_tile_keys), pieces (8) and next-tile prefetches (LineStream),
//                   scores reading 4 key rows side by side with the heads inside, P V one head's
//                   256-byte slices across the tile's rows; one add per loaded vector;
//   kernel_order_nopf  the same without the software prefetches;
//   pv_addr_order   the values key by key, the heads inside (address order);
//   all_addr_order  keys and values in address order;
//   decode          seqmix::attention itself (Tq = 1, causal).
// Then a KvCache of the same shape in fp16 and in int8 (per-channel keys), against a stream over
// as many bytes:
//   kv_order        kv_cache_attention's order (kv_cache/attention.hpp) with loads only: the same
//                   pieces (32: 4 per KV head), spans of 8 blocks, each block's keys with the lines
//                   key_phase_lines requests, then the span's values;
//   kv_decode       kv_cache_attention itself.
// GB/s = K and V bytes / (CPU time / 2). Usage: seqmix-decode-read-order [Tk] (default 16384).
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/prefetch.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
namespace st = seqmix::testing;
namespace simd = seqmix::simd;
using FBatch = simd::Batch<float>;

const seqmix::ThreadPool& pool() {
  static const seqmix::ThreadPool instance(2);
  return instance;
}

// Median process CPU time of fn() in ms, after one warm-up call.
template <class Fn>
double median_ms(Fn&& fn) {
  fn();
  std::vector<double> times;
  double total = 0;
  while (total < 0.25 || times.size() < 5) {
    const double t0 = st::process_cpu_seconds();
    fn();
    times.push_back(st::process_cpu_seconds() - t0);
    total += times.back();
  }
  std::sort(times.begin(), times.end());
  return 1e3 * times[times.size() / 2];
}

volatile float g_sink;  // keeps the sums of the read loops alive

// Bytes [p, p + bytes) as floats, one vector at a time into `acc` (bytes a multiple of the
// vector size): the one operation per loaded vector that stands in for the kernel's FMAs.
inline void read_into(FBatch& acc, const char* p, index_t bytes) noexcept {
  for (index_t b = 0; b < bytes; b += static_cast<index_t>(sizeof(FBatch)))
    acc += simd::load(reinterpret_cast<const float*>(p + b));
}

void stream(const char* k, const char* v, index_t bytes) {
  float sums[2] = {};
  seqmix::parallel_for(pool(), 2, 1, [&](index_t begin, index_t end) {
    for (index_t part = begin; part < end; ++part) {
      FBatch a0(0.f), a1(0.f), a2(0.f), a3(0.f);
      const index_t W = static_cast<index_t>(sizeof(FBatch));
      for (const char* base : {k, v}) {
        const char* p = base + part * (bytes / 2);
        for (index_t b = 0; b + 4 * W <= bytes / 2; b += 4 * W) {
          a0 += simd::load(reinterpret_cast<const float*>(p + b));
          a1 += simd::load(reinterpret_cast<const float*>(p + b + W));
          a2 += simd::load(reinterpret_cast<const float*>(p + b + 2 * W));
          a3 += simd::load(reinterpret_cast<const float*>(p + b + 3 * W));
        }
      }
      sums[part] = simd::reduce_add((a0 + a1) + (a2 + a3));
    }
  });
  g_sink = sums[0] + sums[1];
}

struct Order {
  const char* name;
  bool keys_in_address_order, values_in_address_order, prefetch;
};

// One read order over K and V [Tk, Hkv, head_bytes] in `pieces` pieces of tiles of `tile` keys.
void read_order(const Order& order, const char* k, const char* v, index_t Tk, index_t Hkv, index_t head_bytes,
                index_t tile, index_t pieces) {
  const index_t row = Hkv * head_bytes, tiles = Tk / tile, slice = 256;  // head_bytes: 256 or 512
  constexpr index_t kRowsSideBySide = 4;  // decode.hpp's score block: 4 key rows per load step
  std::vector<float> sums(static_cast<std::size_t>(pieces));
  seqmix::parallel_for(pool(), pieces, 1, [&](index_t begin, index_t end) {
    for (index_t piece = begin; piece < end; ++piece) {
      FBatch acc(0.f);
      const index_t first = tiles * piece / pieces, last = tiles * (piece + 1) / pieces;
      for (index_t t = first; t < last; ++t) {
        const char *kt = k + t * tile * row, *vt = v + t * tile * row;
        seqmix::detail::LineStream ahead;  // the next tile's K and V, as decode_tile requests them
        if (order.prefetch && t + 1 < last) {
          ahead.set(0, kt + tile * row, static_cast<std::size_t>(tile * row));
          ahead.set(1, vt + tile * row, static_cast<std::size_t>(tile * row));
        }
        // One step per 256 bytes read (4 rows x 64 bytes side by side, or a slice), so the
        // prefetches are spread evenly over both phases, as in the kernel.
        ahead.spread_over(static_cast<std::size_t>(2 * tile * row / 256));
        if (order.keys_in_address_order) {
          for (index_t b = 0; b < tile * row; b += 256, ahead.step()) read_into(acc, kt + b, 256);
        } else {
          for (index_t c = 0; c < tile; c += kRowsSideBySide)
            for (index_t h = 0; h < Hkv; ++h)
              for (index_t d = 0; d < head_bytes; d += 64, ahead.step())
                for (index_t i = 0; i < kRowsSideBySide; ++i) read_into(acc, kt + (c + i) * row + h * head_bytes + d, 64);
        }
        if (order.values_in_address_order) {
          for (index_t b = 0; b < tile * row; b += 256, ahead.step()) read_into(acc, vt + b, 256);
        } else {
          for (index_t h = 0; h < Hkv; ++h)
            for (index_t col = 0; col < head_bytes; col += slice)
              for (index_t c = 0; c < tile; ++c, ahead.step()) read_into(acc, vt + c * row + h * head_bytes + col, slice);
        }
      }
      sums[static_cast<std::size_t>(piece)] = simd::reduce_add(acc);
    }
  });
  float total = 0;
  for (const float s : sums) total += s;
  g_sink = total;
}

template <class KV>
seqmix::Tensor<KV, 4> random_kv(const std::array<index_t, 4>& shape, std::uint64_t seed) {
  const seqmix::Tensor<float, 4> values = st::random_tensor<4>(shape, seed);
  seqmix::Tensor<KV, 4> out(shape);
  for (index_t i = 0; i < values.numel(); ++i) out.data()[i] = static_cast<KV>(values.data()[i]);
  return out;
}

template <class KV>
void run(const char* type, index_t Tk) {
  const index_t Hq = 32, Hkv = 8, D = 128, head_bytes = D * static_cast<index_t>(sizeof(KV));
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 1);
  seqmix::Tensor<float, 4> o({1, 1, Hq, D});
  const auto k = random_kv<KV>({1, Tk, Hkv, D}, 2), v = random_kv<KV>({1, Tk, Hkv, D}, 3);
  const char *kp = reinterpret_cast<const char*>(k.data()), *vp = reinterpret_cast<const char*>(v.data());
  const index_t bytes = Tk * Hkv * head_bytes;  // of K, and of V
  const auto report = [&](const char* what, double ms) {
    std::printf("%-5s Tk%-6ld %-18s %8.3f ms cpu %7.1f GB/s\n", type, static_cast<long>(Tk), what, ms,
                2.0 * static_cast<double>(bytes) / (ms * 1e-3 / 2) * 1e-9);
    std::fflush(stdout);
  };
  report("stream", median_ms([&] { stream(kp, vp, bytes); }));
  const index_t tile = seqmix::detail::decode_tile_keys(Hkv * head_bytes);
  for (const Order& order : {Order{"kernel_order", false, false, true}, Order{"kernel_order_nopf", false, false, false},
                             Order{"pv_addr_order", false, true, true}, Order{"all_addr_order", true, true, true}})
    report(order.name, median_ms([&] { read_order(order, kp, vp, Tk, Hkv, head_bytes, tile, 8); }));
  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  seqmix::AttentionOptions options;
  options.causal = true;
  report("decode", median_ms([&] { seqmix::attention(in, {o.view(), {}}, options, pool()); }));
}

// Bytes [p, p + bytes) a vector at a time (a partial last vector is left out: the few bytes of
// a block's parameters), one LineStream step per vector.
inline void read_bytes(FBatch& acc, const void* p, std::size_t bytes, seqmix::detail::LineStream& ahead) noexcept {
  const char* c = static_cast<const char*>(p);
  for (std::size_t b = 0; b + sizeof(FBatch) <= bytes; b += sizeof(FBatch), ahead.step())
    acc += simd::load(reinterpret_cast<const float*>(c + b));
}

std::size_t vectors(std::size_t bytes) noexcept { return bytes / sizeof(FBatch); }

// kv_cache_attention's read order with loads only: per piece of one KV head's blocks, spans of
// kKvSpanBlocks blocks, each block's keys and key parameters while key_phase_lines requests the
// next blocks' keys and this block's values, then the span's values and their parameters.
void kv_read_order(const seqmix::KvCache& cache, index_t pieces_per_head) {
  using seqmix::detail::KvBlockView;
  const seqmix::KvCacheConfig& cfg = cache.config();
  const index_t heads = cfg.kv_heads, pieces = heads * pieces_per_head;
  std::vector<float> sums(static_cast<std::size_t>(pieces));
  seqmix::parallel_for(pool(), pieces, 1, [&](index_t begin, index_t end) {
    for (index_t piece = begin; piece < end; ++piece) {
      const auto& blocks = cache.head(0, piece / pieces_per_head).blocks;
      const index_t nb = static_cast<index_t>(blocks.size()), p = piece % pieces_per_head;
      const index_t first = nb * p / pieces_per_head, last = nb * (p + 1) / pieces_per_head;
      const auto block = [&](index_t k) { return k < last ? seqmix::detail::view_of(blocks[static_cast<std::size_t>(k)]) : KvBlockView{}; };
      FBatch acc(0.f);
      for (index_t s0 = first; s0 < last; s0 += seqmix::detail::kKvSpanBlocks) {
        const index_t s1 = std::min(last, s0 + seqmix::detail::kKvSpanBlocks);
        for (index_t k = s0; k < s1; ++k) {
          const KvBlockView blk = block(k), next = block(k + 1), after = block(k + 2);
          seqmix::detail::LineStream ahead =
              seqmix::detail::key_phase_lines(k + 1 < last ? &next : nullptr, k + 2 < last ? &after : nullptr, blk, cfg, 4);
          ahead.spread_over(vectors(blk.key_bytes) + vectors(blk.key_param_count * sizeof(float)));
          read_bytes(acc, blk.keys, blk.key_bytes, ahead);
          read_bytes(acc, blk.key_params, blk.key_param_count * sizeof(float), ahead);
        }
        seqmix::detail::LineStream none;
        for (index_t k = s0; k < s1; ++k) {
          const KvBlockView blk = block(k);
          read_bytes(acc, blk.values, blk.value_bytes, none);
          read_bytes(acc, blk.value_params, blk.value_param_count * sizeof(float), none);
        }
      }
      sums[static_cast<std::size_t>(piece)] = simd::reduce_add(acc);
    }
  });
  float total = 0;
  for (const float x : sums) total += x;
  g_sink = total;
}

void run_kv(const char* type, seqmix::KvFormat format, index_t Tk) {
  const index_t Hq = 32, Hkv = 8, D = 128;
  seqmix::KvCacheConfig config;
  config.batch = 1, config.kv_heads = Hkv, config.key_dim = D, config.value_dim = D;
  config.key_format = format, config.value_format = format, config.key_quant = seqmix::KeyQuant::per_channel;
  seqmix::KvCache cache(config);
  {
    const auto k = st::random_tensor<4>({1, Tk, Hkv, D}, 1), v = st::random_tensor<4>({1, Tk, Hkv, D}, 2);
    cache.append(k.view(), v.view());
  }
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 3);
  seqmix::Tensor<float, 4> o({1, 1, Hq, D});
  const index_t bytes = static_cast<index_t>(cache.bytes()) / 128 * 128;
  const std::vector<char> plain(static_cast<std::size_t>(bytes));
  const auto report = [&](const char* what, double ms) {
    std::printf("%-5s Tk%-6ld %-18s %8.3f ms cpu %7.1f GB/s\n", type, static_cast<long>(Tk), what, ms,
                static_cast<double>(bytes) / (ms * 1e-3 / 2) * 1e-9);
    std::fflush(stdout);
  };
  report("stream", median_ms([&] { stream(plain.data(), plain.data() + bytes / 2, bytes / 2); }));
  report("kv_order", median_ms([&] { kv_read_order(cache, 4); }));
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache;
  seqmix::AttentionOptions options;
  options.causal = true;
  report("kv_decode", median_ms([&] { seqmix::kv_cache_attention(in, {o.view(), {}}, options, pool()); }));
}

}  // namespace

int main(int argc, char** argv) {
  const index_t Tk = argc > 1 ? std::atol(argv[1]) : 16384;
  if (Tk < 64 || Tk % 64 != 0) {
    std::fprintf(stderr, "usage: %s [Tk], Tk a multiple of 64 (default 16384)\n", argv[0]);
    return 1;
  }
  run<float>("f32", Tk);
  run<seqmix::f16>("f16", Tk);
  run<seqmix::bf16>("bf16", Tk);
  run_kv("kv16", seqmix::KvFormat::f16, Tk);
  run_kv("kv8", seqmix::KvFormat::int8, Tk);
}
