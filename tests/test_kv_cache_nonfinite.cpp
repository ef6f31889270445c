// kv_cache_attention keeps the non-finite policy (docs/reliability.md): a NaN in the value of a
// key the query does not see (outside its window, inside a block it partly sees) leaves the
// output finite, and the same NaN on a key it sees makes its row NaN. Every storage format of
// the values, serial and on two threads.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvFormat;
using seqmix::Tensor;

// Output rows of head group 1 (KV head 1 holds the NaN) after one decode query at position T - 1.
bool output_finite(KvFormat format, index_t nan_token, const seqmix::Executor& executor) {
  const index_t Hkv = 2, Hq = 4, D = 64, T = 200;
  seqmix::KvCacheConfig cfg;
  cfg.kv_heads = Hkv, cfg.key_dim = D, cfg.value_dim = D;
  cfg.key_format = format == KvFormat::int4 || format == KvFormat::int2 ? KvFormat::int8 : format;
  cfg.value_format = format;
  seqmix::KvCache cache(cfg);
  Tensor<float, 4> k({1, T, Hkv, D}), v({1, T, Hkv, D});
  seqmix::testing::fill_uniform(k.view(), 1);
  seqmix::testing::fill_uniform(v.view(), 2);
  v(0, nan_token, 1, 5) = std::nanf("");
  cache.append(k.cview(), v.cview());
  const auto q = seqmix::testing::random_tensor<4>({1, 1, Hq, D}, 3);
  Tensor<float, 4> o({1, 1, Hq, D});
  Tensor<float, 3> lse({1, 1, Hq});
  seqmix::AttentionOptions options;
  options.window = 32;  // the query at 199 sees 168..199; block 160..191 is partly visible
  seqmix::KvCacheAttentionInputs in;
  in.q = q.cview(), in.cache = &cache;
  seqmix::kv_cache_attention(in, {o.view(), lse.view()}, options, executor);
  bool finite = true;
  for (index_t h = 2; h < Hq; ++h)  // query heads 2, 3 read KV head 1
    for (index_t c = 0; c < D; ++c) finite = finite && std::isfinite(o(0, 0, h, c));
  return finite;
}

}  // namespace

TEST_CASE("kv_cache_attention: a NaN value reaches only the rows that see its key", "[kv_cache][nonfinite]") {
  const seqmix::ThreadPool pool(2);
  for (const KvFormat format : {KvFormat::f32, KvFormat::f16, KvFormat::bf16, KvFormat::int8, KvFormat::int4,
                                KvFormat::int2})
    for (int threads : {1, 2}) {
      const seqmix::Executor& executor = threads == 1 ? seqmix::serial_executor() : static_cast<const seqmix::Executor&>(pool);
      INFO("value format " << static_cast<int>(format) << ", threads " << threads);
      for (const index_t hidden : {3, 100, 160, 165, 167})  // outside the window; 160..167 in a visible block
        CHECK(output_finite(format, hidden, executor));
      for (const index_t seen : {168, 180, 199})  // inside the window
        CHECK_FALSE(output_finite(format, seen, executor));
    }
}
