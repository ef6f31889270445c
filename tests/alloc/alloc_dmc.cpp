// dmc_decode_step makes no heap allocation after warm-up: merging and appending tokens, a GQA
// group of 4, serial and on a ThreadPool(2).
#include <catch2/catch.hpp>

#include <cstddef>

#include "counting_new.hpp"
#include "seqmix/kv_cache/dmc/step.hpp"
#include "seqmix_testing/random.hpp"

TEST_CASE("dmc decode step allocates nothing after warm-up", "[alloc][dmc]") {
  const seqmix::ThreadPool pool(2);
  for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)}) {
    seqmix::DmcCacheConfig cfg;
    cfg.batch = 2, cfg.kv_heads = 2, cfg.key_dim = 48, cfg.value_dim = 40, cfg.capacity = 400;
    seqmix::DmcCache cache(cfg);
    const auto q = seqmix::testing::random_tensor<3>({2, 8, 48}, 1);
    const auto k = seqmix::testing::random_tensor<3>({2, 2, 48}, 2);
    const auto v = seqmix::testing::random_tensor<3>({2, 2, 40}, 3);
    auto alpha = seqmix::testing::random_tensor<2>({2, 2}, 4, 0.f, 1.f);
    const auto omega = seqmix::testing::random_tensor<2>({2, 2}, 5, 0.1f, 1.f);
    seqmix::Tensor<float, 3> o({2, 8, 40});
    int calls = 0;
    const seqmix::DmcStepInputs in{q.cview(), k.cview(), v.cview(), alpha.cview(), omega.cview()};
    const std::size_t allocations = seqmix::testing::allocations_after_warmup(*executor, [&] {
      alpha(0, 1) = (calls++ % 3 == 0) ? 0.f : 1.f;  // one head appends every third token
      seqmix::dmc_decode_step(in, cache, o.view(), {}, *executor);
    });
    INFO(allocations << " allocations");
    CHECK(allocations == 0);
    CHECK(cache.size(0, 1) > 30);
  }
}
