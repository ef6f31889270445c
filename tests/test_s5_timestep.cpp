// s5 with an input-dependent step (S5Inputs::timestep [B,T], S5StepInputs::timestep [B]): the
// reference, the scan prefill (forward and reverse) and the step against a double loop written
// here; prefill pieces and steps equal one call; a constant timestep equals the plain path; bad
// timesteps refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/s5_system.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::SsmDiscretization;
using seqmix::SsmStateSymmetry;
using seqmix::Tensor;
namespace st = seqmix::testing;
using Cd = std::complex<double>;

// Per-token steps log-uniform in [0.1, 10]: Lambda_bar moves by orders of magnitude between tokens.
Tensor<float, 2> random_timesteps(index_t B, index_t T, std::uint64_t seed) {
  Tensor<float, 2> ts = st::random_tensor<2>({B, T}, seed, -1.f, 1.f);
  for (float& v : ts) v = std::pow(10.f, v);
  return ts;
}

struct TsLoopResult {
  Tensor<float, 3> y;
  Tensor<float, 2> f_re, f_im;
};

// The definition, token by token in double (reverse: from the last token to the first), with
// B_bar formed per token from dt_p * timestep(b, t).
TsLoopResult ts_loop(const st::S5System& s, const Tensor<float, 3>& u, const Tensor<float, 2>& ts,
                     const Tensor<float, 2>* init_re, const Tensor<float, 2>* init_im, SsmDiscretization disc,
                     SsmStateSymmetry symmetry, bool reverse) {
  const index_t B = u.size(0), T = u.size(1), H = u.size(2), P = s.L_re.size(0);
  TsLoopResult r{Tensor<float, 3>({B, T, H}), Tensor<float, 2>({B, P}), Tensor<float, 2>({B, P})};
  const double c = symmetry == SsmStateSymmetry::conjugate_pairs ? 2.0 : 1.0;
  for (index_t b = 0; b < B; ++b) {
    std::vector<Cd> x(static_cast<std::size_t>(P));
    for (index_t p = 0; p < P; ++p)
      x[static_cast<std::size_t>(p)] = init_re ? Cd((*init_re)(b, p), (*init_im)(b, p)) : Cd(0.0);
    for (index_t k = 0; k < T; ++k) {
      const index_t t = reverse ? T - 1 - k : k;
      for (index_t p = 0; p < P; ++p) {
        const Cd lambda(s.L_re(p), s.L_im(p));
        const double delta = double(s.dt(p)) * double(ts(b, t));
        Cd a, w;
        if (disc == SsmDiscretization::zoh) {
          a = std::exp(delta * lambda), w = (a - 1.0) / lambda;
        } else {
          a = (1.0 + delta * lambda / 2.0) / (1.0 - delta * lambda / 2.0), w = delta / (1.0 - delta * lambda / 2.0);
        }
        Cd bu = 0.0;
        for (index_t h = 0; h < H; ++h) bu += Cd(s.B_re(p, h), s.B_im(p, h)) * double(u(b, t, h));
        x[static_cast<std::size_t>(p)] = a * x[static_cast<std::size_t>(p)] + w * bu;
      }
      for (index_t h = 0; h < H; ++h) {
        double acc = 0.0;
        for (index_t p = 0; p < P; ++p) acc += (Cd(s.C_re(h, p), s.C_im(h, p)) * x[static_cast<std::size_t>(p)]).real();
        r.y(b, t, h) = static_cast<float>(c * acc + double(s.D(h)) * u(b, t, h));
      }
    }
    for (index_t p = 0; p < P; ++p) {
      r.f_re(b, p) = static_cast<float>(x[static_cast<std::size_t>(p)].real());
      r.f_im(b, p) = static_cast<float>(x[static_cast<std::size_t>(p)].imag());
    }
  }
  return r;
}

struct TsCase {
  index_t B, T, H, P;
  SsmDiscretization disc;
  bool state, reverse;
};

TEST_CASE("s5 timestep: reference, scan prefill and steps match the double loop", "[s5]") {
  // P below and above 2 threads' worth (time-chunked scans vs one state per task); T past the
  // 4096 elements from which the scan splits time (default scale only).
  std::vector<TsCase> cases = {
      {1, 1, 1, 1, SsmDiscretization::zoh, false, false},    {2, 7, 5, 3, SsmDiscretization::bilinear, true, false},
      {1, 300, 32, 16, SsmDiscretization::zoh, true, true},  {2, 257, 17, 4, SsmDiscretization::bilinear, false, true},
      {2, 129, 9, 6, SsmDiscretization::zoh, false, false},  {1, 64, 3, 1, SsmDiscretization::bilinear, true, true},
  };
  if (!st::small_test_scale()) {
    cases.push_back({1, 5000, 8, 2, SsmDiscretization::zoh, true, false});
    cases.push_back({1, 5000, 8, 12, SsmDiscretization::bilinear, true, true});
  }
  std::uint64_t seed = 100;
  for (const TsCase& c : cases)
    for (SsmStateSymmetry symmetry : {SsmStateSymmetry::none, SsmStateSymmetry::conjugate_pairs}) {
      INFO("B=" << c.B << " T=" << c.T << " H=" << c.H << " P=" << c.P << " disc=" << int(c.disc)
                << " state=" << c.state << " reverse=" << c.reverse << " symmetry=" << int(symmetry));
      const st::S5System sys(c.H, c.P, seed += 10);
      const Tensor<float, 3> u = st::random_tensor<3>({c.B, c.T, c.H}, seed + 7);
      const Tensor<float, 2> ts = random_timesteps(c.B, c.T, seed + 8);
      const Tensor<float, 2> s_re = st::random_tensor<2>({c.B, c.P}, seed + 9), s_im = st::random_tensor<2>({c.B, c.P}, seed + 10);
      const TsLoopResult want = ts_loop(sys, u, ts, c.state ? &s_re : nullptr, c.state ? &s_im : nullptr, c.disc, symmetry, c.reverse);
      seqmix::S5Inputs in{u.view()};
      in.timestep = ts.view();
      if (c.state) in.initial_state_real = s_re.view(), in.initial_state_imag = s_im.view();
      seqmix::S5Options options(seqmix::SsmKernelOptions{c.disc, symmetry});
      options.reverse = c.reverse;
      Tensor<float, 3> y({c.B, c.T, c.H});
      Tensor<float, 2> f_re({c.B, c.P}), f_im({c.B, c.P});
      const auto check = [&](const char* form) {
        INFO(form);
        st::require_close("y", y.cview(), want.y.cview(), 1e-4);
        st::require_close("final_state_real", f_re.cview(), want.f_re.cview(), 1e-4);
        st::require_close("final_state_imag", f_im.cview(), want.f_im.cview(), 1e-4);
      };
      seqmix::reference::s5(sys.params(), in, {y.view(), f_re.view(), f_im.view()}, options);
      check("reference");
      seqmix::s5(sys.params(), in, {y.view(), f_re.view(), f_im.view()}, options, st::two_thread_pool());
      check("fast, 2 threads");
      seqmix::s5(sys.params(), in, {y.view(), f_re.view(), f_im.view()}, options);
      check("fast, serial");
      if (c.reverse) continue;
      // Steps from the initial state, one token's timestep column each.
      Tensor<float, 2> x_re({c.B, c.P}), x_im({c.B, c.P});
      for (index_t b = 0; b < c.B; ++b)
        for (index_t p = 0; p < c.P; ++p)
          x_re(b, p) = c.state ? s_re(b, p) : 0.f, x_im(b, p) = c.state ? s_im(b, p) : 0.f;
      for (index_t t = 0; t < c.T; ++t)
        seqmix::s5_step(sys.params(), {u.view().select(1, t), ts.view().select(1, t)},
                        {y.view().select(1, t), x_re.view(), x_im.view()}, options);
      f_re = x_re, f_im = x_im;
      check("steps");
    }
}

TEST_CASE("s5 timestep: prefill pieces and steps carrying the state equal one call", "[s5]") {
  const index_t B = 2, T = 200, H = 12, P = 8;
  const st::S5System sys(H, P, 3);
  const Tensor<float, 3> u = st::random_tensor<3>({B, T, H}, 4);
  const Tensor<float, 2> ts = random_timesteps(B, T, 5);
  for (SsmDiscretization disc : {SsmDiscretization::zoh, SsmDiscretization::bilinear}) {
    INFO("disc=" << int(disc));
    const seqmix::SsmKernelOptions options{disc, SsmStateSymmetry::conjugate_pairs};
    Tensor<float, 3> y_one({B, T, H}), y({B, T, H});
    Tensor<float, 2> f_re({B, P}), f_im({B, P}), s_re({B, P}), s_im({B, P});
    seqmix::S5Inputs whole{u.view()};
    whole.timestep = ts.view();
    seqmix::s5(sys.params(), whole, {y_one.view(), f_re.view(), f_im.view()}, options, st::two_thread_pool());
    // 120 tokens, 70 tokens (state carried in place), then 10 steps.
    seqmix::S5Inputs first{u.view().slice(1, 0, 120)};
    first.timestep = ts.view().slice(1, 0, 120);
    seqmix::s5(sys.params(), first, {y.view().slice(1, 0, 120), s_re.view(), s_im.view()}, options);
    seqmix::S5Inputs second{u.view().slice(1, 120, 70), s_re.view(), s_im.view()};
    second.timestep = ts.view().slice(1, 120, 70);
    seqmix::s5(sys.params(), second, {y.view().slice(1, 120, 70), s_re.view(), s_im.view()}, options,
               st::two_thread_pool());
    for (index_t t = 190; t < T; ++t)
      seqmix::s5_step(sys.params(), {u.view().select(1, t), ts.view().select(1, t)},
                      {y.view().select(1, t), s_re.view(), s_im.view()}, options);
    st::require_close("y", y.cview(), y_one.cview(), 1e-4);
    st::require_close("state_real", s_re.cview(), f_re.cview(), 1e-4);
    st::require_close("state_imag", s_im.cview(), f_im.cview(), 1e-4);
  }
}

TEST_CASE("s5 timestep: a constant timestep equals the plain path with dt scaled", "[s5]") {
  const index_t B = 2, T = 150, H = 10, P = 6;
  st::S5System sys(H, P, 7);
  const Tensor<float, 3> u = st::random_tensor<3>({B, T, H}, 8);
  // timestep 1: the per-token path against the precomputed one, same dt; timestep 2: against dt
  // doubled (exact in float).
  for (float factor : {1.f, 2.f})
    for (SsmDiscretization disc : {SsmDiscretization::zoh, SsmDiscretization::bilinear}) {
      INFO("timestep=" << factor << " disc=" << int(disc));
      const seqmix::SsmKernelOptions options{disc, SsmStateSymmetry::none};
      Tensor<float, 2> ts({B, T});
      ts.fill(factor);
      Tensor<float, 3> y_ts({B, T, H}), y_plain({B, T, H});
      Tensor<float, 2> y1_ts({B, H}), y1_plain({B, H});
      Tensor<float, 2> ts1({B, 1});
      ts1.fill(factor);
      seqmix::S5Inputs in{u.view()};
      in.timestep = ts.view();
      seqmix::s5(sys.params(), in, {y_ts.view()}, options, st::two_thread_pool());
      seqmix::reference::s5(sys.params(), in, {y_plain.view()}, options);
      st::require_close("reference with timestep vs fast with timestep", y_ts.cview(), y_plain.cview(), 1e-4);
      Tensor<float, 1> dt_scaled({P});
      for (index_t p = 0; p < P; ++p) dt_scaled(p) = sys.dt(p) * factor;
      seqmix::S5Params scaled = sys.params();
      scaled.dt = dt_scaled.view();
      seqmix::s5(scaled, {u.view()}, {y_plain.view()}, options, st::two_thread_pool());
      st::require_close("y", y_ts.cview(), y_plain.cview(), 1e-5);
      // The step: a timestep column against the scaled dt.
      Tensor<float, 2> a_re({B, P}), a_im({B, P}), b_re({B, P}), b_im({B, P});
      a_re.fill(0.f), a_im.fill(0.f), b_re.fill(0.f), b_im.fill(0.f);
      for (index_t t = 0; t < 5; ++t) {
        seqmix::s5_step(sys.params(), {u.view().select(1, t), ts1.view().select(1, 0)},
                        {y1_ts.view(), a_re.view(), a_im.view()}, options);
        seqmix::s5_step(scaled, {u.view().select(1, t)}, {y1_plain.view(), b_re.view(), b_im.view()}, options);
        st::require_close("step y", y1_ts.cview(), y1_plain.cview(), 1e-5);
      }
    }
}

TEST_CASE("s5 timestep: misshapen, non-finite and non-positive timesteps are refused before any write", "[s5]") {
  const index_t B = 2, T = 6, H = 4, P = 3;
  const st::S5System sys(H, P, 9);
  const Tensor<float, 3> u = st::random_tensor<3>({B, T, H}, 10);
  Tensor<float, 2> ts({B, T}), ts_wrong({B, T + 1});
  Tensor<float, 1> ts1({B}), ts1_wrong({B + 1});
  ts.fill(1.f), ts_wrong.fill(1.f), ts1.fill(1.f), ts1_wrong.fill(1.f);
  Tensor<float, 3> y({B, T, H});
  Tensor<float, 2> y1({B, H}), f_re({B, P}), f_im({B, P}), s_re({B, P}), s_im({B, P});
  y.fill(7.f), y1.fill(7.f), f_re.fill(7.f), f_im.fill(7.f), s_re.fill(0.f), s_im.fill(0.f);
  const auto untouched = [&] {
    for (float v : y) REQUIRE(v == 7.f);
    for (float v : y1) REQUIRE(v == 7.f);
    for (float v : f_re) REQUIRE(v == 7.f);
    for (float v : s_re) REQUIRE(v == 0.f);
    for (float v : s_im) REQUIRE(v == 0.f);
  };
  const auto refused_prefill = [&](const seqmix::ConstView<float, 2>& timestep, bool reverse) {
    seqmix::S5Inputs in{u.view()};
    in.timestep = timestep;
    seqmix::S5Options options;
    options.reverse = reverse;
    st::require_shape_error("timestep", [&] { seqmix::s5(sys.params(), in, {y.view(), f_re.view(), f_im.view()}, options); });
    st::require_shape_error("timestep", [&] {
      seqmix::reference::s5(sys.params(), in, {y.view(), f_re.view(), f_im.view()}, options);
    });
    untouched();
  };
  const auto refused_step = [&](const seqmix::ConstView<float, 1>& timestep) {
    st::require_shape_error("timestep", [&] {
      seqmix::s5_step(sys.params(), {u.view().select(1, 0), timestep}, {y1.view(), s_re.view(), s_im.view()});
    });
    untouched();
  };
  refused_prefill(ts_wrong.view(), false);
  refused_step(ts1_wrong.view());
  const float bad[] = {0.f, -0.5f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()};
  for (float v : bad) {
    INFO("bad value " << v);
    ts(1, T - 1) = v;  // the last token: checked before the first is written
    refused_prefill(ts.view(), false);
    refused_prefill(ts.view(), true);
    ts(1, T - 1) = 1.f;
    ts1(1) = v;
    refused_step(ts1.view());
    ts1(1) = 1.f;
  }
  // An output over the timestep is refused too.
  Tensor<float, 3> y_and_ts({B, T, H});
  y_and_ts.fill(1.f);
  seqmix::S5Inputs in{u.view()};
  in.timestep = y_and_ts.view().select(2, 0);
  st::require_shape_error("y", [&] { seqmix::s5(sys.params(), in, {y_and_ts.view()}); });
}

}  // namespace
