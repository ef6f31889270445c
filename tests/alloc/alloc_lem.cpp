// Zero heap allocations on the decode path of lem: lem_step, dense and through state slots (a
// pool with holes, a padding row, a fresh sequence), serially and on a ThreadPool(2), after a
// warm-up (step_batches.hpp).
#include <catch2/catch.hpp>

#include "counting_new.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/rnn.hpp"
#include "seqmix_testing/testing.hpp"
#include "step_batches.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// Counts lem_step on one step batch. H = 512: 4 rows x 4 H^2 = 4M multiply-adds per step, above
// the engine's threading threshold, so the threaded call really splits both phases.
std::size_t lem_step_allocations(index_t H, index_t I, const seqmix::SequenceBatch& batch, index_t state_rows,
                                 const seqmix::Executor& ex) {
  const Tensor<float, 2> x = st::random_tensor<2>({st::kStepRows, I}, 1);
  const Tensor<float, 2> w_ih = st::random_tensor<2>({4 * H, I}, 2, -0.05f, 0.05f);
  const Tensor<float, 2> w_hh = st::random_tensor<2>({3 * H, H}, 3, -0.05f, 0.05f);
  const Tensor<float, 2> w_z = st::random_tensor<2>({H, H}, 4, -0.05f, 0.05f);
  const Tensor<float, 1> b_ih = st::random_tensor<1>({4 * H}, 5), b_hh = st::random_tensor<1>({3 * H}, 6);
  const Tensor<float, 1> b_z = st::random_tensor<1>({H}, 7);
  Tensor<float, 3> state = st::random_tensor<3>({state_rows, 2, H}, 8, -0.5f, 0.5f);
  Tensor<float, 2> y({st::kStepRows, H});
  seqmix::LemStepInputs in;
  in.x = x.cview(), in.w_ih = w_ih.cview(), in.w_hh = w_hh.cview(), in.w_z = w_z.cview();
  in.b_ih = b_ih.cview(), in.b_hh = b_hh.cview(), in.b_z = b_z.cview(), in.batch = batch;
  const seqmix::RnnStepOutputs out{y.view(), state.view()};
  seqmix::LemOptions options;
  options.dt = 0.5f;
  return st::allocations_after_warmup(ex, [&] { seqmix::lem_step(in, out, options, ex); });
}

}  // namespace

TEST_CASE("lem decode steps allocate nothing after warm-up", "[alloc][rnn][lem]") {
  st::for_each_step_batch([](const seqmix::SequenceBatch& batch, index_t rows, const seqmix::Executor& ex, bool slotted,
                             bool threaded) {
    INFO("slotted=" << slotted << " threaded=" << threaded);
    for (const index_t H : {48, 512}) {
      INFO("H=" << H);
      CHECK(lem_step_allocations(H, 32, batch, rows, ex) == 0);
    }
  });
}
