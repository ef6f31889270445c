// Zero heap allocations on the decode path of Titans' memories: titans_step (linear memory,
// every loss, dense and through state slots with a padding row and a fresh row) and titans_mlp_step (MLP memory, dense and through state slots with a padding
// row), serially and on a ThreadPool(2), after a warm-up.
#include <catch2/catch.hpp>

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

// 4 token rows in a pool of 6 state rows: a padding row and holes.
const std::vector<std::int32_t> kTitansSlots = {4, -1, 1, 0};
constexpr index_t kTitansRows = 4, kTitansPool = 6;

// The gates of one decode token per (row, value head), inside their ranges.
struct TitansGates {
  Tensor<float, 2> alpha, eta, theta, delta;
  explicit TitansGates(index_t HV)
      : alpha(st::random_tensor<2>({kTitansRows, HV}, 11, 0.f, 0.1f)),
        eta(st::random_tensor<2>({kTitansRows, HV}, 12, 0.5f, 0.9f)),
        theta(st::random_tensor<2>({kTitansRows, HV}, 13, 0.f, 1e-3f)),
        delta(st::random_tensor<2>({kTitansRows, HV}, 14, 0.5f, 2.f)) {}
};

const seqmix::Executor& titans_executor(bool threaded) {
  return threaded ? static_cast<const seqmix::Executor&>(st::two_thread_pool()) : seqmix::serial_executor();
}

}  // namespace

TEST_CASE("titans_step allocates nothing after warm-up", "[alloc][titans]") {
  const index_t HK = 2, HV = 4, K = 64, V = 64;
  const Tensor<float, 3> q = st::random_tensor<3>({kTitansRows, HK, K}, 1), k = st::random_tensor<3>({kTitansRows, HK, K}, 2);
  const Tensor<float, 3> v = st::random_tensor<3>({kTitansRows, HV, V}, 3);
  const TitansGates gates(HV);
  const std::vector<std::uint8_t> fresh = {1, 1, 0, 1};  // row 2 resets its slot every call
  for (const bool slotted : {false, true})
    for (const bool threaded : {false, true}) {
      for (const seqmix::TitansLoss loss : {seqmix::TitansLoss::l2, seqmix::TitansLoss::huber}) {
        INFO("slotted=" << slotted << " threaded=" << threaded << " loss=" << static_cast<int>(loss));
        const seqmix::Executor& ex = titans_executor(threaded);
        const index_t S = slotted ? kTitansPool : kTitansRows;
        seqmix::TitansStepInputs in;
        in.q = q.view(), in.k = k.view(), in.v = v.view();
        in.alpha = gates.alpha.view(), in.eta = gates.eta.view(), in.theta = gates.theta.view();
        if (loss == seqmix::TitansLoss::huber) in.huber_delta = gates.delta.view();
        if (slotted) in.batch.state_indices = kTitansSlots, in.batch.has_initial_state = fresh;
        seqmix::TitansOptions options;
        options.loss = loss;
        Tensor<float, 3> y({kTitansRows, HV, V});
        Tensor<float, 4> memory = st::random_tensor<4>({S, HV, K, V}, 4, -0.1f, 0.1f);
        Tensor<float, 4> momentum({S, HV, K, V});
        CHECK(st::allocations_after_warmup(
                  ex, [&] { seqmix::titans_step(in, {y.view(), memory.view(), momentum.view()}, options, ex); }) == 0);
      }
    }
}

TEST_CASE("titans_mlp_step allocates nothing after warm-up", "[alloc][titans]") {
  const index_t HK = 2, HV = 4, K = 64, M = 256;
  const Tensor<float, 3> q = st::random_tensor<3>({kTitansRows, HK, K}, 1), k = st::random_tensor<3>({kTitansRows, HK, K}, 2);
  const Tensor<float, 3> v = st::random_tensor<3>({kTitansRows, HV, K}, 3);
  const TitansGates gates(HV);
  for (const bool slotted : {false, true}) {
    for (const bool threaded : {false, true}) {
      for (const seqmix::TitansLoss loss : {seqmix::TitansLoss::l2, seqmix::TitansLoss::huber}) {
        INFO("slotted=" << slotted << " threaded=" << threaded << " loss=" << static_cast<int>(loss));
        const seqmix::Executor& ex = titans_executor(threaded);
        const index_t S = slotted ? kTitansPool : kTitansRows;
        seqmix::TitansMlpStepInputs in;
        in.q = q.view(), in.k = k.view(), in.v = v.view();
        in.alpha = gates.alpha.view(), in.eta = gates.eta.view(), in.theta = gates.theta.view();
        if (loss == seqmix::TitansLoss::huber) in.huber_delta = gates.delta.view();
        if (slotted) in.batch.state_indices = kTitansSlots;
        seqmix::TitansMlpOptions options;
        options.loss = loss;
        Tensor<float, 3> y({kTitansRows, HV, K});
        Tensor<float, 4> w1 = st::random_tensor<4>({S, HV, K, M}, 5, -0.1f, 0.1f);
        Tensor<float, 4> w2 = st::random_tensor<4>({S, HV, M, K}, 6, -0.1f, 0.1f);
        Tensor<float, 4> s1({S, HV, K, M}), s2({S, HV, M, K});
        CHECK(st::allocations_after_warmup(ex, [&] {
                seqmix::titans_mlp_step(in, {y.view(), w1.view(), w2.view(), s1.view(), s2.view()}, options, ex);
              }) == 0);
      }
    }
  }
}
