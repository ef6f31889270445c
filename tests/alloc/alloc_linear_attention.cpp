// Zero heap allocations on the decode path of the diagonal-decay linear-attention family:
// gated_linear_attention_step (every gate kind), linear_attention_step (with its normalizer) and
// rwkv6_step, dense and through state slots (a pool with holes, a padding row, has_initial_state),
// serially and on a ThreadPool(2), after a warm-up.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateKind;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

using st::allocations_after_warmup;

// Slots of 4 token rows in a pool of 9: a padding row, holes, one fresh sequence.
const std::vector<std::int32_t> kSlots = {6, -1, 2, 0};
const std::vector<std::uint8_t> kInit = {1, 1, 0, 1};
// 4 rows x 32 heads x 64 x 64 = 2^19 state elements: the size at which a step uses the pool.
constexpr index_t kRows = 4, kPool = 9, H = 32, K = 64, V = 64;

}  // namespace

TEST_CASE("linear-attention family steps allocate nothing after warm-up", "[alloc][linear_attention]") {
  const seqmix::ThreadPool& pool = st::two_thread_pool();
  const Tensor<float, 3> q = st::random_tensor<3>({kRows, H, K}, 1), k = st::random_tensor<3>({kRows, H, K}, 2),
                         v = st::random_tensor<3>({kRows, H, V}, 3);
  Tensor<float, 3> g({kRows, H, K});
  Tensor<float, 2> gs({kRows, H});
  st::fill_log_gate(g.view(), 4, -0.05f, 0.f);
  st::fill_log_gate(gs.view(), 5, -0.05f, 0.f);
  const Tensor<float, 2> u = st::random_tensor<2>({H, K}, 6);
  for (const bool slotted : {false, true}) {
    for (const bool threaded : {false, true}) {
      INFO("slotted=" << slotted << " threaded=" << threaded);
      const seqmix::Executor& ex = threaded ? static_cast<const seqmix::Executor&>(pool) : seqmix::serial_executor();
      seqmix::SequenceBatch batch;
      if (slotted) batch.state_indices = kSlots, batch.has_initial_state = kInit;
      const index_t S = slotted ? kPool : kRows;
      Tensor<float, 4> state = st::random_tensor<4>({S, H, K, V}, 8, -0.1f, 0.1f);
      Tensor<float, 3> o({kRows, H, V});
      for (GateKind gate : {GateKind::channel, GateKind::scalar, GateKind::retnet, GateKind::none}) {
        seqmix::GatedLinearAttentionStepInputs in{q.view(), k.view(), v.view()};
        if (gate == GateKind::channel) in.g = g.view();
        if (gate == GateKind::scalar) in.g_scalar = gs.view();
        in.batch = batch;
        seqmix::GatedLinearAttentionOptions options;
        options.gate = gate;
        INFO("gated_linear_attention_step gate " << static_cast<int>(gate));
        CHECK(allocations_after_warmup(ex,
                  [&] { seqmix::gated_linear_attention_step(in, {o.view(), state.view()}, options, ex); }) == 0);
      }
      {
        Tensor<float, 3> z = st::random_tensor<3>({S, H, K}, 9, 1.f, 2.f);
        seqmix::LinearAttentionStepInputs in{q.view(), k.view(), v.view(), batch};
        seqmix::LinearAttentionOptions options;
        options.feature_map = seqmix::FeatureMap::elu1;
        options.normalize = true;
        INFO("linear_attention_step");
        CHECK(allocations_after_warmup(ex,
                  [&] { seqmix::linear_attention_step(in, {o.view(), state.view(), z.view()}, options, ex); }) == 0);
      }
      {
        seqmix::Rwkv6StepInputs in{q.view(), k.view(), v.view(), g.view(), u.view(), batch};
        INFO("rwkv6_step");
        CHECK(allocations_after_warmup(ex, [&] { seqmix::rwkv6_step(in, {o.view(), state.view()}, {}, ex); }) == 0);
      }
    }
  }
}
