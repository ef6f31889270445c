// Zero heap allocations on the decode path of the recurrent cells: lstm_step, gru_step,
// slstm_step and mlstm_step, dense and through state slots (a pool with holes, a padding row, a
// fresh sequence), serially and on a ThreadPool(2), after a warm-up (step_batches.hpp).
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

// Counts one dense-cell step (G gates, S state vectors, H units, `heads` blocks of W_hh) on one
// step batch. H = 512 with one head is 4 rows x 4 gates x 512 x 512 = 4M multiply-adds per step,
// above kRnnParallelWork, so the threaded call really splits the recurrent product.
template <class Step>
std::size_t cell_step_allocations(Step step, index_t G, index_t S, index_t H, index_t heads, index_t I,
                                  const seqmix::SequenceBatch& batch, index_t state_rows, const seqmix::Executor& ex) {
  const index_t Dh = H / heads;
  const Tensor<float, 2> x = st::random_tensor<2>({st::kStepRows, I}, 1);
  const Tensor<float, 2> w_ih = st::random_tensor<2>({G * H, I}, 2, -0.05f, 0.05f);
  const Tensor<float, 2> w_hh = st::random_tensor<2>({G * H, Dh}, 3, -0.05f, 0.05f);
  const Tensor<float, 1> b_ih = st::random_tensor<1>({G * H}, 4), b_hh = st::random_tensor<1>({G * H}, 5);
  Tensor<float, 3> state = st::random_tensor<3>({state_rows, S, H}, 6, 0.f, 0.5f);
  Tensor<float, 2> y({st::kStepRows, H});
  seqmix::RnnStepInputs in{x.view(), w_ih.view(), w_hh.view(), b_ih.view(), b_hh.view(), batch};
  seqmix::RnnOptions options;
  options.heads = heads;
  const seqmix::RnnStepOutputs out{y.view(), state.view()};
  return st::allocations_after_warmup(ex, [&] { step(in, out, options, ex); });
}

}  // namespace

TEST_CASE("cell decode steps allocate nothing after warm-up", "[alloc][rnn]") {
  st::for_each_step_batch([](const seqmix::SequenceBatch& batch, index_t rows, const seqmix::Executor& ex, bool slotted,
                             bool threaded) {
    INFO("slotted=" << slotted << " threaded=" << threaded);
    for (const index_t H : {48, 512}) {
      INFO("H=" << H);
      {
        INFO("lstm_step");
        CHECK(cell_step_allocations(seqmix::lstm_step<>, 4, 2, H, 1, 32, batch, rows, ex) == 0);
      }
      {
        INFO("gru_step");
        CHECK(cell_step_allocations(seqmix::gru_step<>, 3, 1, H, 1, 32, batch, rows, ex) == 0);
      }
      {
        INFO("slstm_step, 4 heads");
        CHECK(cell_step_allocations(seqmix::slstm_step<>, 4, 4, H, 4, 32, batch, rows, ex) == 0);
      }
    }
    {
      // 4 rows x 4 heads of 64 x 128 matrix memories: enough rows for both threads.
      const index_t NH = 4, DK = 64, DV = 128;
      const Tensor<float, 3> q = st::random_tensor<3>({st::kStepRows, NH, DK}, 11);
      const Tensor<float, 3> k = st::random_tensor<3>({st::kStepRows, NH, DK}, 12);
      const Tensor<float, 3> v = st::random_tensor<3>({st::kStepRows, NH, DV}, 13);
      const Tensor<float, 2> ig = st::random_tensor<2>({st::kStepRows, NH}, 14), fg = st::random_tensor<2>({st::kStepRows, NH}, 15);
      Tensor<float, 4> c = st::random_tensor<4>({rows, NH, DK, DV}, 16);
      Tensor<float, 3> n = st::random_tensor<3>({rows, NH, DK}, 17);
      Tensor<float, 2> m = st::random_tensor<2>({rows, NH}, 18);
      Tensor<float, 3> h({st::kStepRows, NH, DV});
      seqmix::MlstmStepInputs in{q.view(), k.view(), v.view(), ig.view(), fg.view(), batch};
      const seqmix::MlstmStepOutputs out{h.view(), c.view(), n.view(), m.view()};
      INFO("mlstm_step");
      CHECK(st::allocations_after_warmup(ex, [&] { seqmix::mlstm_step(in, out, {}, ex); }) == 0);
    }
  });
}
