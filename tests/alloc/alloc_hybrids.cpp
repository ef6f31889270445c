// Zero heap allocations on the decode path of the hybrid mixers that serve slot pools: aaren_step
// and nonlinear_recurrence_step over the four step batches of step_batches.hpp (dense and slotted,
// serial and ThreadPool(2)), after a warm-up.
#include <catch2/catch.hpp>

#include "counting_new.hpp"
#include "step_batches.hpp"
#include "seqmix/chunked.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr index_t B = st::kStepRows;

}  // namespace

TEST_CASE("hybrid decode steps allocate nothing after warm-up", "[alloc][chunked]") {
  st::for_each_step_batch([](const seqmix::SequenceBatch& batch, index_t S, const seqmix::Executor& ex, bool slotted,
                             bool threaded) {
    INFO("slotted=" << slotted << " threaded=" << threaded);
    {
      const index_t H = 8, Dk = 64, Dv = 64;
      const Tensor<float, 2> query = st::random_tensor<2>({H, Dk}, 1);
      const Tensor<float, 3> k = st::random_tensor<3>({B, H, Dk}, 2), v = st::random_tensor<3>({B, H, Dv}, 3);
      Tensor<float, 2> m = st::random_tensor<2>({S, H}, 4), l = st::random_tensor<2>({S, H}, 5, 1.f, 2.f);
      Tensor<float, 3> acc = st::random_tensor<3>({S, H, Dv}, 6), o({B, H, Dv});
      const seqmix::AarenStepInputs in{query.view(), k.view(), v.view(), batch};
      const seqmix::AarenState state{m.view(), l.view(), acc.view()};
      INFO("aaren_step");
      CHECK(st::allocations_after_warmup(ex, [&] { seqmix::aaren_step(in, o.view(), state, {}, ex); }) == 0);
    }
    {
      const index_t D = 512;
      const Tensor<float, 2> x = st::random_tensor<2>({B, D}, 11), u = st::random_tensor<2>({B, D}, 12);
      const Tensor<float, 1> a = st::random_tensor<1>({D}, 14, -0.9f, 0.9f), w = st::random_tensor<1>({D}, 15);
      seqmix::NonlinearRecurrenceStepInputs<seqmix::MinGruCell> in;
      in.inputs = {x.view(), u.view()};
      in.params = {a.view(), w.view()};
      in.batch = batch;
      Tensor<float, 2> state = st::random_tensor<2>({S, D}, 13);
      INFO("nonlinear_recurrence_step");
      CHECK(st::allocations_after_warmup(ex,
                [&] { seqmix::nonlinear_recurrence_step<seqmix::MinGruCell>(in, state.view(), ex); }) == 0);
    }
  });
}
