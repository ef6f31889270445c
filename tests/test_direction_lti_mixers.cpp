// The reverse option of the remaining LTI mixers (issue 23 item 1): the distilled Hyena prefill,
// monarch_mix_causal, base_conv, lightweight_conv / dynamic_conv and masked_mixer. A reverse call
// equals the forward call on explicitly reversed copies (outputs reversed back; final states,
// which hold rows in processing order, equal) from a non-empty initial state where the operator
// takes one, for T 1, 2, 37 and 100 and B = 2, reference and fast forms. A reverse prefill
// continued by the steps (fed the tokens before the prompt, last first) equals one reverse call.
// The ssm_kernel convolutions carry no direction: long_conv(reverse) with an S4D or DPLR kernel is
// the recurrence run from token T-1 to token 0. None of these operators takes a SequenceBatch, so
// there is no packed case to refuse; a bad argument under reverse is refused before any write.
#include <catch2/catch.hpp>

#include <cstdint>

#include "seqmix/core/direction.hpp"
#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/direction.hpp"
#include "seqmix_testing/hyena_modes.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const index_t kMixDirLengths[] = {1, 2, 37, 100};

TEST_CASE("reverse monarch_mix_causal equals monarch_mix_causal on reversed copies", "[direction][monarch]") {
  const index_t B = 2, D = 5;
  for (const index_t T : kMixDirLengths)
    for (const index_t L : {index_t(1), index_t(7), index_t(120)})
      for (const bool fast : {false, true}) {
        INFO("T=" << T << " L=" << L << " fast=" << fast);
        const auto x = st::random_tensor<3>({B, T, D}, 3100 + std::uint64_t(T));
        const auto h = st::random_tensor<2>({L, D}, 3101 + std::uint64_t(L), -0.5f, 0.5f);
        const auto x_r = st::reversed_copy(x);
        seqmix::MonarchMixCausalOptions options, reverse;
        reverse.reverse = true;
        Tensor<float, 3> y({B, T, D}), y_ref({B, T, D});
        if (fast) {
          seqmix::monarch_mix_causal({x.cview(), h.cview()}, {y.view()}, reverse, st::two_thread_pool());
          seqmix::monarch_mix_causal({x_r.cview(), h.cview()}, {y_ref.view()}, options);
        } else {
          seqmix::reference::monarch_mix_causal({x.cview(), h.cview()}, {y.view()}, reverse);
          seqmix::reference::monarch_mix_causal({x_r.cview(), h.cview()}, {y_ref.view()}, options);
        }
        st::require_close("monarch y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
      }
  // Anti-causal: y[t] = sum_{s>=t} h[s-t] x[s].
  const index_t T = 37, L = 6;
  const auto x = st::random_tensor<3>({B, T, D}, 3150);
  const auto h = st::random_tensor<2>({L, D}, 3151);
  seqmix::MonarchMixCausalOptions reverse;
  reverse.reverse = true;
  Tensor<float, 3> y({B, T, D});
  seqmix::monarch_mix_causal({x.cview(), h.cview()}, {y.view()}, reverse);
  Tensor<float, 3> want({B, T, D});
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (index_t s = t; s < T && s - t < L; ++s) acc += double(h(s - t, d)) * x(b, s, d);
        want(b, t, d) = static_cast<float>(acc);
      }
  st::require_close("anti-causal monarch y", y.cview(), want.cview(), 1e-5);
  // A bad filter under reverse: ShapeError before y is touched.
  const Tensor<float, 2> bad({L, D + 1});
  y.fill(7.f);
  st::require_shape_error("filter", [&] { seqmix::monarch_mix_causal({x.cview(), bad.cview()}, {y.view()}, reverse); });
  for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y.data()[i] == 7.f);
}

struct BaseConvDirCase {
  index_t B = 2, T, D = 4, L;
  Tensor<float, 3> u, state0;
  Tensor<float, 2> w1, w2, h;
  Tensor<float, 1> b1, b2;
  BaseConvDirCase(index_t T_, index_t L_, std::uint64_t seed) : T(T_), L(L_) {
    u = st::random_tensor<3>({B, T, D}, seed), state0 = st::random_tensor<3>({B, L - 1, D}, seed + 1);
    w1 = st::random_tensor<2>({D, D}, seed + 2), w2 = st::random_tensor<2>({D, D}, seed + 3);
    h = st::random_tensor<2>({L, D}, seed + 4, -0.3f, 0.3f);
    b1 = st::random_tensor<1>({D}, seed + 5), b2 = st::random_tensor<1>({D}, seed + 6);
  }
  seqmix::BaseConvInputs inputs(const Tensor<float, 3>& tokens, const Tensor<float, 3>& state) const {
    return {tokens.cview(), w1.cview(), w2.cview(), h.cview(), b1.cview(), b2.cview(), state.cview()};
  }
};

TEST_CASE("reverse base_conv equals base_conv on reversed copies, reverse prefill then steps", "[direction][base_conv]") {
  for (const index_t T : kMixDirLengths)
    for (const index_t L : {index_t(1), index_t(5), index_t(60)})
      for (const bool fast : {false, true}) {
        INFO("T=" << T << " L=" << L << " fast=" << fast);
        const BaseConvDirCase c(T, L, 3200 + std::uint64_t(T * 3 + L));
        const auto u_r = st::reversed_copy(c.u);
        seqmix::BaseConvOptions options, reverse;
        reverse.reverse = true;
        auto state = st::clone(c.state0), state_ref = st::clone(c.state0);
        Tensor<float, 3> y({c.B, T, c.D}), y_ref({c.B, T, c.D});
        // The final state written over the initial one.
        if (fast) {
          seqmix::base_conv(c.inputs(c.u, state), {y.view(), state.view()}, reverse, st::two_thread_pool());
          seqmix::base_conv(c.inputs(u_r, state_ref), {y_ref.view(), state_ref.view()}, options);
        } else {
          seqmix::reference::base_conv(c.inputs(c.u, state), {y.view(), state.view()}, reverse);
          seqmix::reference::base_conv(c.inputs(u_r, state_ref), {y_ref.view(), state_ref.view()}, options);
        }
        st::require_close("base_conv y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
        st::require_close("base_conv final_state", state.cview(), state_ref.cview(), 1e-5);
      }
  // Reverse prefill of tokens [k, T), then steps fed tokens k-1, ..., 0: one reverse call.
  const index_t T = 37, L = 9, k = 20;
  const BaseConvDirCase c(T, L, 3300);
  seqmix::BaseConvOptions reverse;
  reverse.reverse = true;
  auto state_all = st::clone(c.state0), state = st::clone(c.state0);
  Tensor<float, 3> y_all({c.B, T, c.D}), y({c.B, T, c.D});
  seqmix::base_conv(c.inputs(c.u, state_all), {y_all.view(), state_all.view()}, reverse);
  const Tensor<float, 3> tail = [&] {
    Tensor<float, 3> t({c.B, T - k, c.D});
    seqmix::copy(c.u.cview().slice(1, k, T - k), t.view());
    return t;
  }();
  seqmix::base_conv(c.inputs(tail, state), {y.view().slice(1, k, T - k), state.view()}, reverse);
  Tensor<float, 2> yt({c.B, c.D});
  for (index_t t = k; t-- > 0;) {
    seqmix::base_conv_step({c.u.cview().select(1, t), c.w1.cview(), c.w2.cview(), c.h.cview(), c.b1.cview(), c.b2.cview()},
                           {yt.view(), state.view()});
    seqmix::copy(yt.cview(), y.view().select(1, t));
  }
  st::require_close("prefill + steps y", y.cview(), y_all.cview(), 1e-5);
  st::require_close("prefill + steps state", state.cview(), state_all.cview(), 1e-5);
}

TEST_CASE("reverse lightweight_conv and dynamic_conv equal the forward calls on reversed copies",
          "[direction][dynamic_conv]") {
  const index_t B = 2, D = 6, H = 3;
  for (const index_t T : kMixDirLengths)
    for (const index_t K : {index_t(1), index_t(4), index_t(7)})
      for (const auto padding : {seqmix::LocalConvPadding::causal, seqmix::LocalConvPadding::centered})
        for (const bool fast : {false, true}) {
          INFO("T=" << T << " K=" << K << " centered=" << (padding == seqmix::LocalConvPadding::centered)
                    << " fast=" << fast);
          const std::uint64_t seed = 3400 + std::uint64_t(T * 11 + K);
          const auto x = st::random_tensor<3>({B, T, D}, seed);
          const auto weight = st::random_tensor<2>({H, K}, seed + 1);
          const auto logits = st::random_tensor<4>({B, T, H, K}, seed + 2);
          const auto x_r = st::reversed_copy(x);
          const auto logits_r = st::reversed_copy(logits);
          seqmix::LocalConvOptions options;
          options.padding = padding;
          seqmix::LocalConvOptions reverse = options;
          reverse.reverse = true;
          Tensor<float, 3> y({B, T, D}), y_ref({B, T, D});
          if (fast) {
            seqmix::lightweight_conv({x.cview(), weight.cview()}, {y.view()}, reverse, st::two_thread_pool());
            seqmix::lightweight_conv({x_r.cview(), weight.cview()}, {y_ref.view()}, options);
          } else {
            seqmix::reference::lightweight_conv({x.cview(), weight.cview()}, {y.view()}, reverse);
            seqmix::reference::lightweight_conv({x_r.cview(), weight.cview()}, {y_ref.view()}, options);
          }
          st::require_close("lightweight y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
          if (fast) {
            seqmix::dynamic_conv({x.cview(), logits.cview()}, {y.view()}, reverse, st::two_thread_pool());
            seqmix::dynamic_conv({x_r.cview(), logits_r.cview()}, {y_ref.view()}, options);
          } else {
            seqmix::reference::dynamic_conv({x.cview(), logits.cview()}, {y.view()}, reverse);
            seqmix::reference::dynamic_conv({x_r.cview(), logits_r.cview()}, {y_ref.view()}, options);
          }
          st::require_close("dynamic y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
        }
}

TEST_CASE("reverse masked_mixer equals masked_mixer on reversed copies", "[direction][masked_mixer]") {
  const index_t B = 2, D = 6;
  for (const index_t T : kMixDirLengths)
    for (const index_t G : {index_t(1), index_t(3)})
      for (const bool fast : {false, true}) {
        INFO("T=" << T << " G=" << G << " fast=" << fast);
        const std::uint64_t seed = 3500 + std::uint64_t(T * 5 + G);
        const index_t L = T + 3;
        const auto x = st::random_tensor<3>({B, T, D}, seed);
        const auto w = st::random_tensor<3>({G, L, L}, seed + 1, -0.2f, 0.2f);
        const auto x_r = st::reversed_copy(x);
        seqmix::MaskedMixerOptions options, reverse;
        reverse.reverse = true;
        Tensor<float, 3> y({B, T, D}), y_ref({B, T, D});
        if (fast) {
          seqmix::masked_mixer({x.cview(), w.cview()}, {y.view()}, reverse, st::two_thread_pool());
          seqmix::masked_mixer({x_r.cview(), w.cview()}, {y_ref.view()}, options);
        } else {
          seqmix::reference::masked_mixer({x.cview(), w.cview()}, {y.view()}, reverse);
          seqmix::reference::masked_mixer({x_r.cview(), w.cview()}, {y_ref.view()}, options);
        }
        st::require_close("masked_mixer y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
      }
}

TEST_CASE("reverse hyena_distilled_prefill equals the prefill on reversed copies, then steps continue it",
          "[direction][hyena][distill]") {
  const index_t N = 2, B = 2, D = 5, M = 3;
  const st::HyenaModes modes(N, D, M, 3600);
  const auto f = modes.filters();
  for (const index_t T : kMixDirLengths) {
    INFO("T=" << T);
    const std::uint64_t seed = 3610 + std::uint64_t(T);
    const auto v = st::random_tensor<3>({B, T, D}, seed);
    const auto x = st::random_tensor<4>({N, B, T, D}, seed + 1);
    const auto filter = st::random_tensor<3>({N, 40, D}, seed + 2, -0.2f, 0.2f);
    const auto v_r = st::reversed_copy(v);
    const auto x_r = st::reversed_copy(x, 2);
    seqmix::HyenaOptions options, reverse;
    reverse.reverse = true;
    Tensor<float, 3> y({B, T, D}), y_ref({B, T, D}), scratch({B, T, D});
    Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M}), sr_ref({N, B, D, M}), si_ref({N, B, D, M});
    seqmix::hyena_distilled_prefill({v.cview(), x.cview(), filter.cview()}, f,
                                    {y.view(), sr.view(), si.view(), scratch.view()}, reverse, st::two_thread_pool());
    seqmix::hyena_distilled_prefill({v_r.cview(), x_r.cview(), filter.cview()}, f,
                                    {y_ref.view(), sr_ref.view(), si_ref.view()}, options);
    st::require_close("prefill y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
    st::require_close("prefill state_real", sr.cview(), sr_ref.cview(), 1e-5);
    st::require_close("prefill state_imag", si.cview(), si_ref.cview(), 1e-5);
  }
  // With the modes' own taps as the filter: reverse prefill of tokens [k, T), then distilled steps
  // fed tokens k-1, ..., 0, equal one reverse hyena call over all T tokens.
  const index_t T = 60, k = 23;
  const auto v = st::random_tensor<3>({B, T, D}, 3690);
  const auto x = st::random_tensor<4>({N, B, T, D}, 3691);
  const Tensor<float, 3> taps = modes.taps(T);
  seqmix::HyenaOptions reverse;
  reverse.reverse = true;
  Tensor<float, 3> y_all({B, T, D}), y({B, T, D});
  seqmix::reference::hyena({v.cview(), x.cview(), taps.cview()}, {y_all.view()}, reverse);
  Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M});
  const seqmix::HyenaInputs tail{v.cview().slice(1, k, T - k), x.cview().slice(2, k, T - k),
                                 taps.cview().slice(1, 0, T - k)};
  seqmix::hyena_distilled_prefill(tail, f, {y.view().slice(1, k, T - k), sr.view(), si.view()}, reverse);
  Tensor<float, 2> yt({B, D});
  for (index_t t = k; t-- > 0;) {
    seqmix::hyena_distilled_step({v.cview().select(1, t), x.cview().select(2, t), f}, {yt.view(), sr.view(), si.view()});
    seqmix::copy(yt.cview(), y.view().select(1, t));
  }
  st::require_close("reverse prefill + steps vs reverse hyena", y.cview(), y_all.cview(), 2e-5);
}

// Random S4D (diagonal, complex) parameters: Re(A) in [-1, -0.2], dt in [0.01, 0.1].
struct SsmDirSystem {
  Tensor<float, 2> Ar, Ai, Br, Bi, Cr, Ci;
  Tensor<float, 1> dt;
  SsmDirSystem(index_t H, index_t N, std::uint64_t seed)
      : Ar(st::random_tensor<2>({H, N}, seed, -1.f, -0.2f)), Ai(st::random_tensor<2>({H, N}, seed + 1, -6.f, 6.f)),
        Br(st::random_tensor<2>({H, N}, seed + 2)), Bi(st::random_tensor<2>({H, N}, seed + 3)),
        Cr(st::random_tensor<2>({H, N}, seed + 4)), Ci(st::random_tensor<2>({H, N}, seed + 5)),
        dt(st::random_tensor<1>({H}, seed + 6, 0.01f, 0.1f)) {}
  seqmix::SsmParams params() const {
    return {Ar.cview(), Ai.cview(), Br.cview(), Bi.cview(), Cr.cview(), Ci.cview(), dt.cview()};
  }
};

// long_conv(reverse) of u with `kernel` [T,H] (no state) against `step(u_t, out)` run from token
// T-1 down to 0 from a zero state.
template <class Step>
void mix_dir_check_ssm(const char* what, const Tensor<float, 3>& u, const Tensor<float, 2>& kernel, index_t N,
                       Step&& step) {
  const index_t B = u.size(0), T = u.size(1), H = u.size(2);
  seqmix::LongConvOptions reverse;
  reverse.reverse = true;
  Tensor<float, 3> y({B, T, H}), y_steps({B, T, H});
  seqmix::long_conv({u.cview(), kernel.cview()}, {y.view()}, reverse, st::two_thread_pool());
  Tensor<float, 3> xr({B, H, N}), xi({B, H, N});
  xr.fill(0.f), xi.fill(0.f);
  Tensor<float, 2> yt({B, H});
  for (index_t t = T; t-- > 0;) {
    step(u.cview().select(1, t), seqmix::SsmStepOutputs{yt.view(), xr.view(), xi.view()});
    seqmix::copy(yt.cview(), y_steps.view().select(1, t));
  }
  st::require_close(what, y.cview(), y_steps.cview(), 1e-4);
}

TEST_CASE("long_conv reverse with an ssm_kernel kernel is the SSM recurrence run from the last token",
          "[direction][ssm_kernel]") {
  const index_t B = 2, H = 3, N = 4;
  for (const index_t T : kMixDirLengths) {
    INFO("T=" << T);
    const auto u = st::random_tensor<3>({B, T, H}, 3700 + std::uint64_t(T));
    // Diagonal (S4D, ZOH).
    const SsmDirSystem sys(H, N, 3710);
    const seqmix::SsmKernelOptions zoh;
    Tensor<float, 2> kernel({T, H});
    seqmix::ssm_kernel(sys.params(), kernel.view(), zoh);
    Tensor<float, 2> Abr({H, N}), Abi({H, N}), Bbr({H, N}), Bbi({H, N});
    seqmix::ssm_discretize(sys.params(), {Abr.view(), Abi.view(), Bbr.view(), Bbi.view()}, zoh);
    mix_dir_check_ssm("diagonal", u, kernel, N, [&](const seqmix::ConstView<float, 2>& ut, const seqmix::SsmStepOutputs& out) {
      seqmix::ssm_step({ut, Abr.cview(), Abi.cview(), Bbr.cview(), Bbi.cview(), sys.Cr.cview(), sys.Ci.cview()}, out, zoh);
    });
    // DPLR (rank 1, Q = P, bilinear), one group shared by the channels.
    const auto Pr = st::random_tensor<3>({1, 1, N}, 3720, -0.5f, 0.5f), Pi = st::random_tensor<3>({1, 1, N}, 3721, -0.5f, 0.5f);
    const seqmix::SsmDplrParams dplr{sys.Ar.cview().slice(0, 0, 1), sys.Ai.cview().slice(0, 0, 1), Pr.cview(), Pi.cview(),
                                     {}, {}, sys.Br.cview(), sys.Bi.cview(), sys.Cr.cview(), sys.Ci.cview(), sys.dt.cview()};
    const seqmix::SsmKernelOptions bilinear{seqmix::SsmDiscretization::bilinear, seqmix::SsmStateSymmetry::none};
    seqmix::ssm_dplr_kernel(dplr, kernel.view(), bilinear);
    const auto plan = seqmix::ssm_dplr_step_plan(dplr, bilinear);
    mix_dir_check_ssm("dplr", u, kernel, N, [&](const seqmix::ConstView<float, 2>& ut, const seqmix::SsmStepOutputs& out) {
      seqmix::ssm_dplr_step(plan, ut, out);
    });
  }
}

}  // namespace
