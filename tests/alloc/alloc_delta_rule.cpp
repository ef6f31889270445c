// The delta-rule family's decode steps (gated_delta_rule scalar and KDA, delta_rule, rwkv7) make
// no heap allocation after a warm-up call: serial and on a ThreadPool(2), dense and through a
// slot pool with padding rows and fresh rows.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/linear_attention/delta_rule/step.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// 4 rows, 2 heads, K = V = 64 (large enough that the step goes parallel on the pool, 2^18
// state elements, when H = 16).
struct StepData {
  index_t B = 4, H, K = 64, V = 64, S = 7;
  Tensor<float, 3> q, k, v, g, a, b, o;
  Tensor<float, 2> beta, gs;
  Tensor<float, 4> pool;
  std::vector<std::int64_t> slots = {5, -1, 0, 3};
  std::vector<std::uint8_t> has_initial = {1, 1, 0, 1};
  explicit StepData(index_t heads)
      : H(heads), q(st::random_tensor<3>({B, H, K}, 1, -0.1f, 0.1f)), k(st::random_tensor<3>({B, H, K}, 2, -0.1f, 0.1f)),
        v(st::random_tensor<3>({B, H, V}, 3)), g(st::random_tensor<3>({B, H, K}, 4, -0.1f, 0.f)),
        a(st::random_tensor<3>({B, H, K}, 5, -0.1f, 0.1f)), b(st::random_tensor<3>({B, H, K}, 6, -0.1f, 0.1f)),
        o({B, H, V}), beta(st::random_tensor<2>({B, H}, 7, 0.f, 1.f)), gs(st::random_tensor<2>({B, H}, 8, -0.1f, 0.f)),
        pool(st::random_tensor<4>({S, H, K, V}, 9, -0.1f, 0.1f)) {}
  seqmix::SequenceBatch batch(bool slotted) const {
    seqmix::SequenceBatch out;
    if (slotted) out.state_indices = slots, out.has_initial_state = has_initial;
    return out;
  }
};

template <class Step>
void require_no_allocation(const char* what, const seqmix::Executor& executor, Step&& step) {
  INFO(what);
  CHECK(seqmix::testing::allocations_after_warmup(executor, step) == 0);
}

}  // namespace

TEST_CASE("delta-rule family steps allocate nothing after warm-up", "[alloc][delta_rule]") {
  for (index_t heads : {2, 16})
    for (bool slotted : {false, true})
      for (const seqmix::Executor* ex :
           {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&st::two_thread_pool())}) {
        StepData d(heads);
        const auto batch = d.batch(slotted);
        // Dense: a state of B rows (the first four of the pool).
        const seqmix::TensorView<float, 4> state = slotted ? d.pool.view() : d.pool.view().slice(0, 0, d.B);
        INFO("H = " << heads << (slotted ? " slots" : " dense") << " threads " << ex->concurrency());
        require_no_allocation("gated_delta_rule_step", *ex, [&] {
          seqmix::gated_delta_rule_step({d.q.view(), d.k.view(), d.v.view(), d.beta.view(), d.gs.view(), {}, batch},
                                        {d.o.view(), state}, {}, *ex);
        });
        seqmix::GatedDeltaRuleOptions kda;
        kda.gate = DeltaGate::channel;
        require_no_allocation("gated_delta_rule_step (KDA)", *ex, [&] {
          seqmix::gated_delta_rule_step({d.q.view(), d.k.view(), d.v.view(), d.beta.view(), {}, d.g.view(), batch},
                                        {d.o.view(), state}, kda, *ex);
        });
        require_no_allocation("delta_rule_step", *ex, [&] {
          seqmix::delta_rule_step({d.q.view(), d.k.view(), d.v.view(), d.beta.view(), batch}, {d.o.view(), state}, {}, *ex);
        });
        require_no_allocation("rwkv7_step", *ex, [&] {
          seqmix::rwkv7_step({d.q.view(), d.k.view(), d.v.view(), d.a.view(), d.b.view(), d.g.view(), batch},
                             {d.o.view(), state}, *ex);
        });
      }
}
