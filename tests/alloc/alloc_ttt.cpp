// Zero heap allocations on the decode path of the test-time-training layers: ttt_linear_step
// (with and without its inner bias) and ttt_mlp_step, dense and through state slots (a pool with
// holes, a padding row, a fresh ttt_linear sequence), serially and on a ThreadPool(2), after a
// warm-up.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// Slots of 4 token rows in a pool of 7: a padding row, holes, one fresh sequence.
const std::vector<std::int32_t> kTttSlots = {5, -1, 2, 0};
const std::vector<std::uint8_t> kTttInit = {1, 1, 0, 1};
constexpr index_t kTttRows = 4, kTttPool = 7;

}  // namespace

TEST_CASE("ttt decode steps allocate nothing after warm-up", "[alloc][ttt]") {
  const seqmix::ThreadPool& pool = st::two_thread_pool();
  const index_t H = 4, K = 64, M = 256;
  const Tensor<float, 3> q = st::random_tensor<3>({kTttRows, H, K}, 1), k = st::random_tensor<3>({kTttRows, H, K}, 2);
  const Tensor<float, 3> v = st::random_tensor<3>({kTttRows, H, K}, 3);
  const Tensor<float, 2> eta = st::random_tensor<2>({kTttRows, H}, 4, 0.f, 1e-3f);
  const Tensor<float, 2> gamma = st::random_tensor<2>({H, K}, 5, 0.5f, 1.5f), beta = st::random_tensor<2>({H, K}, 6);
  for (const bool slotted : {false, true}) {
    for (const bool threaded : {false, true}) {
      INFO("slotted=" << slotted << " threaded=" << threaded);
      const seqmix::Executor& ex = threaded ? static_cast<const seqmix::Executor&>(pool) : seqmix::serial_executor();
      const index_t S = slotted ? kTttPool : kTttRows;
      seqmix::TttStepInputs in;
      in.q = q.view(), in.k = k.view(), in.v = v.view(), in.eta = eta.view();
      in.ln_weight = gamma.view(), in.ln_bias = beta.view();
      if (slotted) in.batch.state_indices = kTttSlots;
      Tensor<float, 3> z({kTttRows, H, K});
      {
        Tensor<float, 4> w = st::random_tensor<4>({S, H, K, K}, 7, -0.1f, 0.1f);
        seqmix::TttStepInputs lin = in;
        if (slotted) lin.batch.has_initial_state = kTttInit;
        INFO("ttt_linear_step");
        CHECK(st::allocations_after_warmup(ex, [&] { seqmix::ttt_linear_step(lin, {z.view(), w.view()}, {}, ex); }) == 0);
        // With the inner bias b (a [S,H,K] state beside W).
        Tensor<float, 3> bias = st::random_tensor<3>({S, H, K}, 10);
        seqmix::TttOptions biased;
        biased.inner_bias = seqmix::TttInnerBias::trained;
        INFO("ttt_linear_step, inner bias");
        CHECK(st::allocations_after_warmup(
                  ex, [&] { seqmix::ttt_linear_step(lin, {z.view(), w.view(), bias.view()}, biased, ex); }) == 0);
      }
      {
        Tensor<float, 4> w1 = st::random_tensor<4>({S, H, K, M}, 8, -0.1f, 0.1f);
        Tensor<float, 4> w2 = st::random_tensor<4>({S, H, M, K}, 9, -0.1f, 0.1f);
        INFO("ttt_mlp_step");
        CHECK(st::allocations_after_warmup(
                  ex, [&] { seqmix::ttt_mlp_step(in, {z.view(), w1.view(), w2.view()}, {}, ex); }) == 0);
        // With the inner biases b1 [S,H,M], b2 [S,H,K] beside W1, W2.
        Tensor<float, 3> b1 = st::random_tensor<3>({S, H, M}, 11), b2 = st::random_tensor<3>({S, H, K}, 12);
        seqmix::TttOptions biased;
        biased.inner_bias = seqmix::TttInnerBias::trained;
        INFO("ttt_mlp_step, inner biases");
        CHECK(st::allocations_after_warmup(ex, [&] {
                seqmix::ttt_mlp_step(in, {z.view(), w1.view(), w2.view(), b1.view(), b2.view()}, biased, ex);
              }) == 0);
      }
    }
  }
}
