// MLA's decode allocates nothing after warm-up: mla_decode over a dense fp16 latent cache,
// mla_paged_append + mla_paged_decode over fp16 pages, mla_latent_append + mla_latent_decode over
// int8 / int4 latents (dense and paged); each step appends one token per sequence (with the fused
// rope) and decodes, so sequences grow across page and block boundaries inside the counted steps.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/attention/mla/paged.hpp"
#include "seqmix/kv_cache/mla_latent.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr index_t kMlaN = 2, kMlaH = 16, kMlaDn = 32, kMlaDr = 16, kMlaDc = 128, kMlaDv = 32, kMlaStart = 300;

struct MlaAllocSetup {
  Tensor<float, 3> kv_b = st::random_tensor<3>({kMlaH, kMlaDn + kMlaDv, kMlaDc}, 1, -0.1f, 0.1f);
  Tensor<float, 3> q_nope = st::random_tensor<3>({kMlaN, kMlaH, kMlaDn}, 2), q_rope = st::random_tensor<3>({kMlaN, kMlaH, kMlaDr}, 3);
  Tensor<float, 3> c_new = st::random_tensor<3>({kMlaN, 1, kMlaDc}, 4), r_new = st::random_tensor<3>({kMlaN, 1, kMlaDr}, 5);
  Tensor<float, 3> c_prefix = st::random_tensor<3>({kMlaN, kMlaStart, kMlaDc}, 6);
  Tensor<float, 3> r_prefix = st::random_tensor<3>({kMlaN, kMlaStart, kMlaDr}, 7);
  Tensor<float, 3> o{{kMlaN, kMlaH, kMlaDv}};
  Tensor<float, 2> lse{{kMlaN, kMlaH}};
  seqmix::RopeTable rope;
  MlaAllocSetup() {
    seqmix::RopeConfig c;
    c.layout = seqmix::RopeLayout::interleaved, c.rotary_dim = kMlaDr;
    rope = seqmix::RopeTable(c, 1024);
  }
  seqmix::MlaWeights weights() const { return {kv_b.view().slice(1, 0, kMlaDn), kv_b.view().slice(1, kMlaDn, kMlaDv)}; }
};

template <class F>
void mla_expect_no_allocation(const char* what, const seqmix::Executor& executor, F&& call) {
  const std::size_t allocations = st::allocations_after_warmup(executor, call);  // before INFO, which allocates
  INFO(what << ": " << allocations << " allocations in " << st::kSteps << " calls");
  CHECK(allocations == 0);
}

// The appends of one step: one token per sequence after `lengths`, then lengths + 1.
seqmix::MlaLatentAppendInputs mla_alloc_append(const MlaAllocSetup& s, const seqmix::BlockTable& table,
                                               const std::vector<std::int32_t>& lengths) {
  seqmix::MlaLatentAppendInputs in;
  in.c_kv = s.c_new.view(), in.k_rope = s.r_new.view(), in.block_table = table, in.cache_seqlens = lengths;
  in.rope = &s.rope;
  return in;
}

}  // namespace

TEST_CASE("mla decode over dense, paged and quantized latents allocates nothing after warm-up", "[alloc][mla]") {
  const seqmix::ThreadPool pool(2);
  MlaAllocSetup s;
  for (const seqmix::Executor* ex : {static_cast<const seqmix::Executor*>(&seqmix::serial_executor()),
                                     static_cast<const seqmix::Executor*>(&pool)}) {
    {  // dense fp16 latents
      Tensor<seqmix::f16, 3> c({kMlaN, 512, kMlaDc}), r({kMlaN, 512, kMlaDr});
      std::vector<std::int32_t> lengths = {kMlaStart, kMlaStart + 5};
      seqmix::MlaDecodeInputs<seqmix::f16> in{s.q_nope.view(), s.q_rope.view(), c.view(), r.view(), lengths, s.weights()};
      mla_expect_no_allocation("mla_decode fp16", *ex, [&] {
        seqmix::mla_decode(in, {s.o.view(), s.lse.view()}, {}, *ex);
        for (auto& L : lengths) L = L < 511 ? L + 1 : kMlaStart;
      });
    }
    {  // fp16 pages of 16 tokens
      const index_t bs = 16, max_blocks = 1024 / bs;
      Tensor<seqmix::f16, 3> c_pages({kMlaN * max_blocks, bs, kMlaDc}), r_pages({kMlaN * max_blocks, bs, kMlaDr});
      Tensor<std::int32_t, 2> table({kMlaN, max_blocks});
      for (index_t i = 0; i < table.numel(); ++i) table.data()[i] = static_cast<std::int32_t>((i * 7) % (kMlaN * max_blocks));
      const seqmix::MlaPagedLatentPool<seqmix::f16> pool_views{c_pages.view(), r_pages.view()};
      std::vector<std::int32_t> lengths(kMlaN, 0);
      seqmix::MlaLatentAppendInputs prefix;
      prefix.c_kv = s.c_prefix.view(), prefix.k_rope = s.r_prefix.view(), prefix.block_table = table.cview();
      prefix.cache_seqlens = lengths;
      seqmix::mla_paged_append(prefix, pool_views, *ex);
      for (auto& L : lengths) L = kMlaStart;
      seqmix::MlaPagedDecodeInputs<seqmix::f16> in{s.q_nope.view(), s.q_rope.view(), c_pages.view(), r_pages.view(),
                                                   table.cview(), lengths, s.weights()};
      const seqmix::MlaLatentAppendInputs append = mla_alloc_append(s, table.cview(), lengths);
      mla_expect_no_allocation("mla_paged_append + mla_paged_decode fp16", *ex, [&] {
        seqmix::mla_paged_append(append, pool_views, *ex);
        for (auto& L : lengths) ++L;
        seqmix::mla_paged_decode(in, {s.o.view(), s.lse.view()}, {}, *ex);
      });
    }
    for (const seqmix::KvFormat f : {seqmix::KvFormat::int8, seqmix::KvFormat::int4})
      for (const bool paged : {false, true}) {  // quantized latents, 32-channel groups
        const index_t bs = paged ? 64 : 1024, max_blocks = 1024 / bs, X = paged ? kMlaN * max_blocks : kMlaN;
        Tensor<std::uint8_t, 3> codes({X, bs, seqmix::row_bytes(f, kMlaDc)});
        Tensor<float, 4> params({X, bs, kMlaDc / 32, 2});
        Tensor<seqmix::f16, 3> kr({X, bs, kMlaDr});
        const seqmix::MlaQuantizedLatents<seqmix::f16> cache{f, 32, codes.view(), params.view(), kr.view(), kMlaDc};
        Tensor<std::int32_t, 2> table({kMlaN, max_blocks});
        for (index_t i = 0; i < table.numel(); ++i) table.data()[i] = static_cast<std::int32_t>((i * 5) % X);
        const seqmix::BlockTable bt = paged ? seqmix::BlockTable(table.cview()) : seqmix::BlockTable();
        std::vector<std::int32_t> lengths(kMlaN, 0);
        seqmix::MlaLatentAppendInputs prefix;
        prefix.c_kv = s.c_prefix.view(), prefix.k_rope = s.r_prefix.view(), prefix.block_table = bt;
        prefix.cache_seqlens = lengths;
        seqmix::mla_latent_append(prefix, cache, *ex);
        for (auto& L : lengths) L = kMlaStart;
        seqmix::MlaLatentDecodeInputs<seqmix::f16> in{s.q_nope.view(), s.q_rope.view(), cache, bt, lengths, s.weights()};
        const seqmix::MlaLatentAppendInputs append = mla_alloc_append(s, bt, lengths);
        mla_expect_no_allocation(paged ? "mla_latent_append + decode, paged" : "mla_latent_append + decode, dense", *ex, [&] {
          seqmix::mla_latent_append(append, cache, *ex);
          for (auto& L : lengths) ++L;
          seqmix::mla_latent_decode(in, {s.o.view(), s.lse.view()}, {}, *ex);
        });
      }
  }
}
