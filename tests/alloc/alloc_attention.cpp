// Attention's hot path allocates nothing after warm-up: dense decode (seqmix::attention with
// Tq <= 4, fp32 and fp16 K/V, bf16 K/V with bf16 dot products), paged decode and speculative verify (paged_attention, Tq 1 and
// 4, packed queries), paged prefill chunks beside decode rows, and paged_kv_append, also with
// the fused rope and a relative bias; serial and on a two-thread pool.
#include <catch2/catch.hpp>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

template <class F>
void expect_no_allocation(const char* what, const seqmix::Executor& executor, F&& call) {
  const std::size_t allocations = st::allocations_after_warmup(executor, call);  // before INFO, which allocates
  INFO(what << ": " << allocations << " allocations in " << st::kSteps << " calls");
  CHECK(allocations == 0);
}

template <class KV>
Tensor<KV, 4> random_kv(const std::array<index_t, 4>& shape, std::uint64_t seed) {
  Tensor<KV, 4> out(shape);
  seqmix::copy(st::random_tensor<4>(shape, seed).cview(), out.view());
  return out;
}

template <class KV>
void dense_decode(const seqmix::Executor& executor, const char* name,
                  seqmix::Bf16Compute compute = seqmix::Bf16Compute::fp32) {
  const index_t B = 2, Hq = 8, Hkv = 2, D = 128, Tk = 1000;
  seqmix::AttentionOptions options;
  options.causal = true, options.window = 300, options.sink_tokens = 4, options.bf16_compute = compute;
  for (const index_t Tq : {1, 4}) {
    const auto q = st::random_tensor<4>({B, Tq, Hq, D}, 1);
    const auto k = random_kv<KV>({B, Tk, Hkv, D}, 2), v = random_kv<KV>({B, Tk, Hkv, D}, 3);
    Tensor<float, 4> o({B, Tq, Hq, D});
    Tensor<float, 3> lse({B, Tq, Hq});
    seqmix::AttentionInputs<KV> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    expect_no_allocation((std::string("attention decode ") + name + " Tq=" + std::to_string(Tq)).c_str(), executor,
                         [&] { seqmix::attention(in, {o.view(), lse.view()}, options, executor); });
  }
}

template <class KV>
void paged(const seqmix::Executor& executor, const char* name) {
  const index_t N = 4, Hq = 8, Hkv = 2, D = 64, bs = 16, max_blocks = 40, blocks = N * max_blocks;
  auto k_pages = random_kv<KV>({blocks, bs, Hkv, D}, 4), v_pages = random_kv<KV>({blocks, bs, Hkv, D}, 5);
  Tensor<std::int32_t, 2> table({N, max_blocks});
  for (index_t i = 0; i < N * max_blocks; ++i) table.data()[i] = static_cast<std::int32_t>((i * 37) % blocks);
  const std::vector<std::int32_t> lengths{600, 17, 333, 640};
  for (const index_t Tq : {1, 4}) {
    const auto q = st::random_tensor<4>({N, Tq, Hq, D}, 6);
    Tensor<float, 4> o({N, Tq, Hq, D});
    seqmix::PagedAttentionInputs<KV> in;
    in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view();
    in.block_table = table.view(), in.cache_seqlens = lengths;
    expect_no_allocation((std::string("paged_attention ") + name + " Tq=" + std::to_string(Tq)).c_str(), executor,
                         [&] { seqmix::paged_attention(in, {o.view(), {}}, {}, executor); });
  }
  // Packed queries of different counts (decode rows beside a verify of 5).
  const std::vector<std::int32_t> cu{0, 1, 6, 7, 8};
  const auto q = st::random_tensor<4>({1, 8, Hq, D}, 7);
  Tensor<float, 4> o({1, 8, Hq, D});
  seqmix::PagedAttentionInputs<KV> in;
  in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view();
  in.block_table = table.view(), in.cache_seqlens = lengths, in.cu_seqlens_q = cu;
  expect_no_allocation((std::string("paged_attention packed ") + name).c_str(), executor,
                       [&] { seqmix::paged_attention(in, {o.view(), {}}, {}, executor); });
  // Prefill chunks (40 and 258 queries, the flash path) beside two decode rows in one call.
  const std::vector<std::int32_t> cu_mixed{0, 40, 41, 42, 300};
  const auto q_mixed = st::random_tensor<4>({1, 300, Hq, D}, 10);
  Tensor<float, 4> o_mixed({1, 300, Hq, D});
  in.q = q_mixed.view(), in.cu_seqlens_q = cu_mixed;
  expect_no_allocation((std::string("paged_attention prefill + decode ") + name).c_str(), executor,
                       [&] { seqmix::paged_attention(in, {o_mixed.view(), {}}, {}, executor); });
  // Append one token per sequence (written over and over at the same positions).
  const auto k_new = st::random_tensor<4>({N, 1, Hkv, D}, 8), v_new = st::random_tensor<4>({N, 1, Hkv, D}, 9);
  seqmix::PagedKvAppendInputs<float> append;
  append.k = k_new.view(), append.v = v_new.view(), append.block_table = table.view();
  const std::vector<std::int32_t> starts{599, 16, 332, 639};
  append.cache_seqlens = starts;
  const seqmix::PagedKvPool<KV> pool{k_pages.view(), v_pages.view()};
  expect_no_allocation((std::string("paged_kv_append ") + name).c_str(), executor,
                       [&] { seqmix::paged_kv_append(append, pool, executor); });
}

}  // namespace

TEST_CASE("attention decode allocates nothing after warm-up", "[alloc][attention]") {
  const seqmix::ThreadPool pool(2);
  dense_decode<float>(seqmix::serial_executor(), "f32 serial");
  dense_decode<float>(pool, "f32 pool(2)");
  dense_decode<seqmix::f16>(seqmix::serial_executor(), "f16 serial");
  dense_decode<seqmix::f16>(pool, "f16 pool(2)");
  // bf16 dot products (the q rows and weights rounded into the thread's decode scratch).
  dense_decode<seqmix::bf16>(seqmix::serial_executor(), "bf16 dot serial", seqmix::Bf16Compute::dot);
  dense_decode<seqmix::bf16>(pool, "bf16 dot pool(2)", seqmix::Bf16Compute::dot);
}

TEST_CASE("paged attention and paged append allocate nothing after warm-up", "[alloc][attention][paged]") {
  const seqmix::ThreadPool pool(2);
  paged<float>(seqmix::serial_executor(), "f32 serial");
  paged<float>(pool, "f32 pool(2)");
  paged<seqmix::f16>(seqmix::serial_executor(), "f16 serial");
  paged<seqmix::bf16>(pool, "bf16 pool(2)");
}

TEST_CASE("fused rope and relative biases allocate nothing after warm-up", "[alloc][attention][rope]") {
  const seqmix::ThreadPool pool(2);
  const index_t B = 2, Hq = 8, Hkv = 2, D = 64, Tk = 1000;
  seqmix::RopeConfig config;
  config.rotary_dim = D;
  const seqmix::RopeTable table(config, 1024);
  const auto q = st::random_tensor<4>({B, 1, Hq, D}, 1);
  const auto k = random_kv<seqmix::f16>({B, Tk, Hkv, D}, 2), v = random_kv<seqmix::f16>({B, Tk, Hkv, D}, 3);
  const auto bias_table = st::random_tensor<2>({Hq, 32}, 4);
  const auto scales = st::random_tensor<1>({Hq}, 5, 0.5f, 2.f);
  Tensor<float, 4> o({B, 1, Hq, D});
  seqmix::AttentionInputs<seqmix::f16> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  in.rope = &table, in.rope_rotated_keys = Tk;  // decode over a cache of rotated keys
  in.relative_bias.kind = seqmix::RelativeBiasKind::t5, in.relative_bias.table = bias_table.view();
  in.head_scales = scales.view();
  seqmix::AttentionOptions options;
  options.causal = true;
  for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)})
    expect_no_allocation("attention decode, fused rope + t5 bias + head scales", *executor,
                         [&] { seqmix::attention(in, {o.view()}, options, *executor); });
  // FIRE: the per-head MLP evaluated per logit in decode, from the caller's weights.
  const auto fire_w = st::random_tensor<2>({Hq, 16}, 10);
  const auto fire_b2 = st::random_tensor<1>({Hq}, 11);
  seqmix::AttentionInputs<seqmix::f16> fire = in;
  fire.relative_bias = {};
  fire.relative_bias.kind = seqmix::RelativeBiasKind::fire;
  fire.relative_bias.fire_w1 = fire_w.view(), fire.relative_bias.fire_b1 = fire_w.view();
  fire.relative_bias.fire_w2 = fire_w.view(), fire.relative_bias.fire_b2 = fire_b2.view();
  for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)})
    expect_no_allocation("attention decode, fire bias", *executor,
                         [&] { seqmix::attention(fire, {o.view()}, options, *executor); });

  // Paged: q rotated in the kernel, keys rotated by the append.
  const index_t N = 2, bs = 16, max_blocks = 8, blocks = N * max_blocks;
  auto k_pages = random_kv<float>({blocks, bs, Hkv, D}, 6), v_pages = random_kv<float>({blocks, bs, Hkv, D}, 7);
  Tensor<std::int32_t, 2> block_table({N, max_blocks});
  for (index_t i = 0; i < blocks; ++i) block_table.data()[i] = static_cast<std::int32_t>(i);
  const std::vector<std::int32_t> lengths{100, 128}, starts{99, 127};
  seqmix::PagedAttentionInputs<float> paged_in;
  paged_in.q = q.view(), paged_in.k_pages = k_pages.view(), paged_in.v_pages = v_pages.view();
  paged_in.block_table = block_table.view(), paged_in.cache_seqlens = lengths, paged_in.rope = &table;
  paged_in.relative_bias = in.relative_bias, paged_in.head_scales = scales.view();
  const auto k_new = st::random_tensor<4>({N, 1, Hkv, D}, 8), v_new = st::random_tensor<4>({N, 1, Hkv, D}, 9);
  seqmix::PagedKvAppendInputs<float> append;
  append.k = k_new.view(), append.v = v_new.view(), append.block_table = block_table.view();
  append.cache_seqlens = starts, append.rope = &table;
  for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)}) {
    expect_no_allocation("paged_attention, fused rope + t5 bias + head scales", *executor,
                         [&] { seqmix::paged_attention(paged_in, {o.view(), {}}, {}, *executor); });
    expect_no_allocation("paged_kv_append, fused rope", *executor,
                         [&] { seqmix::paged_kv_append(append, seqmix::PagedKvPool<float>{k_pages.view(), v_pages.view()}, *executor); });
  }
}
