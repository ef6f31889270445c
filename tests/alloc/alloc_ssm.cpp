// Zero heap allocations on the decode path of the selective state-space family: causal_conv1d_step,
// ssd_step and selective_scan_step, dense and through state slots (a pool with holes, a padding
// row, has_initial_state), serially and on a ThreadPool(2), after a warm-up; and no large allocation
// in ssd's chunked prefill, whose C B^T tiles and chunk scratch each thread keeps across calls.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "counting_new.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

using st::allocations_after_warmup;
using st::large_allocations_after_warmup;

// Slots of 4 token rows in a pool of 9: a padding row, holes, one fresh sequence.
const std::vector<std::int32_t> kSlots = {6, -1, 2, 0};
const std::vector<std::uint8_t> kInit = {1, 1, 0, 1};
constexpr index_t kRows = 4, kPool = 9;

}  // namespace

TEST_CASE("ssm decode steps allocate nothing after warm-up", "[alloc][ssm]") {
  const seqmix::ThreadPool& pool = st::two_thread_pool();
  for (const bool slotted : {false, true}) {
    for (const bool threaded : {false, true}) {
      INFO("slotted=" << slotted << " threaded=" << threaded);
      const seqmix::Executor& ex = threaded ? static_cast<const seqmix::Executor&>(pool) : seqmix::serial_executor();
      seqmix::SequenceBatch batch;
      if (slotted) batch.state_indices = kSlots, batch.has_initial_state = kInit;
      const index_t S = slotted ? kPool : kRows;

      {  // ssd_step
        // Large enough (4 x 8 heads x 64 x 128) that the threaded call does use both threads.
        const index_t H = 8, P = 64, N = 128, G = 1;
        const Tensor<float, 3> x = st::random_tensor<3>({kRows, H, P}, 1), z = st::random_tensor<3>({kRows, H, P}, 2);
        const Tensor<float, 2> dt = st::random_tensor<2>({kRows, H}, 3, 0.f, 0.1f);
        const Tensor<float, 1> A = st::random_tensor<1>({H}, 4, -1.f, -0.1f), D = st::random_tensor<1>({H}, 5);
        const Tensor<float, 3> Bm = st::random_tensor<3>({kRows, G, N}, 6), Cm = st::random_tensor<3>({kRows, G, N}, 7);
        Tensor<float, 4> state = st::random_tensor<4>({S, H, P, N}, 8);
        Tensor<float, 3> y({kRows, H, P});
        seqmix::SsdStepInputs in{x.view(), dt.view(), A.view(), Bm.view(), Cm.view(), D.view(), z.view(), {}, batch};
        seqmix::SsdOptions o;
        o.dt_softplus = true;
        INFO("ssd_step");
        CHECK(allocations_after_warmup(ex, [&] { seqmix::ssd_step(in, {y.view(), state.view()}, o, ex); }) == 0);
      }
      {  // causal_conv1d_step
        const index_t D = 8192, W = 4;
        const Tensor<float, 2> x = st::random_tensor<2>({kRows, D}, 11), weight = st::random_tensor<2>({D, W}, 12);
        const Tensor<float, 1> bias = st::random_tensor<1>({D}, 13);
        Tensor<float, 3> state = st::random_tensor<3>({S, W - 1, D}, 14);
        Tensor<float, 2> y({kRows, D});
        seqmix::CausalConv1dStepInputs in{x.view(), weight.view(), bias.view(), batch};
        const seqmix::CausalConv1dOptions o{seqmix::ConvActivation::silu};
        INFO("causal_conv1d_step");
        CHECK(allocations_after_warmup(ex, [&] { seqmix::causal_conv1d_step(in, {y.view(), state.view()}, o, ex); }) == 0);
      }
      {  // selective_scan_step
        const index_t D = 1024, N = 16, G = 1;
        const Tensor<float, 2> u = st::random_tensor<2>({kRows, D}, 21), delta = st::random_tensor<2>({kRows, D}, 22);
        const Tensor<float, 2> A = st::random_tensor<2>({D, N}, 23, -2.f, -0.1f);
        const Tensor<float, 3> Bm = st::random_tensor<3>({kRows, G, N}, 24), Cm = st::random_tensor<3>({kRows, G, N}, 25);
        Tensor<float, 3> state = st::random_tensor<3>({S, D, N}, 26);
        Tensor<float, 2> y({kRows, D});
        seqmix::SelectiveScanStepInputs in{u.view(), delta.view(), A.view(), Bm.view(), Cm.view(), {}, {}, {}, batch};
        const seqmix::SelectiveScanOptions o{true};
        INFO("selective_scan_step");
        CHECK(allocations_after_warmup(ex, [&] { seqmix::selective_scan_step(in, {y.view(), state.view()}, o, ex); }) == 0);
      }
    }
  }
}

// ssd's chunked prefill at chunk 128: the C B^T tiles (5 chunks of 128 x 128 floats, 320 KiB) and
// each block's chunk scratch are kept per thread (ssm/ssd/chunked.hpp), so after warm-up a call
// allocates only its small plan. The counter sees the tiles (operator new); the scratch's Eigen
// matrices bypass it (test_ssd.cpp checks that a call reuses them).
TEST_CASE("ssd chunked prefill makes no large allocation after warm-up", "[alloc][ssm]") {
  const seqmix::ThreadPool& pool = st::two_thread_pool();
  const index_t T = 600, H = 8, P = 64, N = 128, G = 1;
  const Tensor<float, 4> x = st::random_tensor<4>({1, T, H, P}, 1), z = st::random_tensor<4>({1, T, H, P}, 2);
  const Tensor<float, 3> dt = st::random_tensor<3>({1, T, H}, 3, 0.f, 0.1f);
  const Tensor<float, 1> A = st::random_tensor<1>({H}, 4, -1.f, -0.1f), D = st::random_tensor<1>({H}, 5);
  const Tensor<float, 4> Bm = st::random_tensor<4>({1, T, G, N}, 6), Cm = st::random_tensor<4>({1, T, G, N}, 7);
  Tensor<float, 4> y({1, T, H, P}), state({1, H, P, N});
  const seqmix::SsdInputs in{x.view(), dt.view(), A.view(), Bm.view(), Cm.view(), D.view(), z.view(), {}, {}, {}};
  seqmix::SsdOptions options;
  options.algorithm = seqmix::SsdAlgorithm::chunked;
  options.chunk_size = 128;
  for (const bool threaded : {false, true}) {
    const seqmix::Executor& ex = threaded ? static_cast<const seqmix::Executor&>(pool) : seqmix::serial_executor();
    INFO("threaded=" << threaded);
    CHECK(large_allocations_after_warmup(ex, [&] { seqmix::ssd(in, {y.view(), state.view(), {}}, options, ex); }) == 0);
  }
}
