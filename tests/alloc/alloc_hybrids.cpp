// Zero heap allocations on the decode path of the hybrid mixers that serve slot pools: aaren_step,
// nonlinear_recurrence_step, and rat_step, based_step, infini_attention_step and mega_step with
// per-slot positions, over the four step batches of step_batches.hpp (dense and slotted,
// serial and ThreadPool(2)), after a warm-up.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

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
    {
      // RAT with per-slot positions: capacity for every step the count makes (L = 16).
      const index_t H = 4, Hkv = 2, D = 32, C = 64;
      const Tensor<float, 3> q = st::random_tensor<3>({B, H, D}, 21), k = st::random_tensor<3>({B, Hkv, D}, 22);
      const Tensor<float, 3> g = st::random_tensor<3>({B, Hkv, D}, 23, -1.f, 0.f);
      Tensor<float, 4> ck({S, C, Hkv, D}), cv({S, C, Hkv, D});
      Tensor<float, 3> kr({S, Hkv, D}), vr({S, Hkv, D}), o({B, H, D});
      std::vector<std::int64_t> pos(static_cast<std::size_t>(S), 0);
      seqmix::RatState state{ck.view(), cv.view(), kr.view(), vr.view(), 0,
                             seqmix::TensorView<std::int64_t, 1>(pos.data(), {S})};
      seqmix::RatStepInputs in{q.cview(), k.cview(), k.cview(), g.cview(), batch};
      INFO("rat_step");
      CHECK(st::allocations_after_warmup(ex, [&] {
              if (pos[0] > 900) std::fill(pos.begin(), pos.end(), 0);  // stay within the capacity
              seqmix::rat_step(in, {o.view()}, state, {}, ex);
            }) == 0);
    }
    {
      // BASED with per-slot positions (the ring wraps during the count: W = 16).
      const index_t Hf = 2, F = 8, H = 4, D = 16, V = 16, W = 16, Kf = 1 + F + F * F;
      const Tensor<float, 3> qf = st::random_tensor<3>({B, Hf, F}, 31), q = st::random_tensor<3>({B, H, D}, 32);
      Tensor<float, 4> kv({S, H, Kf, V}), wk({S, W, H, D}), wv({S, W, H, V});
      Tensor<float, 3> z({S, H, Kf}), o({B, H, V});
      std::vector<std::int64_t> pos(static_cast<std::size_t>(S), 0);
      seqmix::BasedState state{kv.view(), z.view(), wk.view(), wv.view(), 0,
                               seqmix::TensorView<std::int64_t, 1>(pos.data(), {S})};
      seqmix::BasedOptions options;
      options.window = W;
      const seqmix::BasedStepInputs in{qf.cview(), qf.cview(), q.cview(), q.cview(), q.cview(), batch};
      INFO("based_step");
      CHECK(st::allocations_after_warmup(ex, [&] { seqmix::based_step(in, {o.view()}, state, options, ex); }) == 0);
    }
    {
      // Infini-attention with per-slot positions: segments of 8 complete during the count.
      const index_t H = 4, Hkv = 2, K = 16, V = 16, seg = 8;
      const Tensor<float, 3> q = st::random_tensor<3>({B, H, K}, 41), k = st::random_tensor<3>({B, Hkv, K}, 42);
      const Tensor<float, 1> beta = st::random_tensor<1>({H}, 43);
      Tensor<float, 4> mem({S, Hkv, K, V}), sk({S, seg, Hkv, K}), sv({S, seg, Hkv, V});
      Tensor<float, 3> z({S, Hkv, K}), o({B, H, V});
      std::vector<std::int64_t> pos(static_cast<std::size_t>(S), 0);
      seqmix::InfiniAttentionState state{mem.view(), z.view(), sk.view(), sv.view(), 0,
                                         seqmix::TensorView<std::int64_t, 1>(pos.data(), {S})};
      seqmix::InfiniAttentionOptions options;
      options.segment = seg;
      const seqmix::InfiniAttentionStepInputs in{q.cview(), k.cview(), k.cview(), beta.cview(), batch};
      INFO("infini_attention_step");
      CHECK(st::allocations_after_warmup(ex, [&] { seqmix::infini_attention_step(in, {o.view()}, state, options, ex); }) == 0);
    }
    {
      // Mega with per-slot positions: chunks of 8 start over during the count.
      const index_t D = 32, N = 4, H = 2, Dv = 16, c = 8;
      const Tensor<float, 2> x = st::random_tensor<2>({B, D}, 51), p = st::random_tensor<2>({D, N}, 52);
      const Tensor<float, 1> affine = st::random_tensor<1>({D}, 53);
      const Tensor<float, 3> v = st::random_tensor<3>({B, H, Dv}, 54);
      Tensor<float, 3> ema({S, D, N}), o({B, H, Dv});
      Tensor<float, 4> kc({S, c, H, D / H}), vc({S, c, H, Dv});
      std::vector<std::int64_t> pos(static_cast<std::size_t>(S), 0);
      const seqmix::MegaDecodeState state{ema.view(), kc.view(), vc.view(),
                                          seqmix::TensorView<std::int64_t, 1>(pos.data(), {S})};
      seqmix::MegaOptions options;
      options.chunk_size = c;
      const seqmix::MegaParams params{p.cview(), p.cview(), p.cview(), p.cview(),
                                      affine.cview(), affine.cview(), affine.cview(), affine.cview()};
      const seqmix::MegaStepInputs in{x.cview(), v.cview(), params, 0, batch};
      INFO("mega_step");
      CHECK(st::allocations_after_warmup(ex, [&] { seqmix::mega_step(in, o.view(), state, options, ex); }) == 0);
    }
  });
}
