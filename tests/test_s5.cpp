// s5: the scan-based prefill and the step against the double recurrence; prefill pieces and steps
// carrying the state equal one call; unstable and bad parameters refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

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

struct S5Case {
  index_t B, T, H, P;
  SsmDiscretization disc;
  bool state;
};

TEST_CASE("s5: the associative-scan prefill matches the double recurrence", "[s5]") {
  // P below and above 2 threads' worth (time-parallel scans vs one state per task); T past the
  // 4096 elements from which the scan splits time.
  const S5Case cases[] = {
      {1, 1, 1, 1, SsmDiscretization::zoh, false},   {2, 7, 5, 3, SsmDiscretization::bilinear, true},
      {1, 300, 32, 16, SsmDiscretization::zoh, true}, {2, 257, 17, 4, SsmDiscretization::bilinear, false},
      {1, 5000, 8, 2, SsmDiscretization::zoh, true},  {1, 5000, 8, 12, SsmDiscretization::bilinear, true},
  };
  std::uint64_t seed = 1;
  for (const S5Case& c : cases)
    for (SsmStateSymmetry symmetry : {SsmStateSymmetry::none, SsmStateSymmetry::conjugate_pairs}) {
      INFO("B=" << c.B << " T=" << c.T << " H=" << c.H << " P=" << c.P << " disc=" << int(c.disc)
                << " state=" << c.state << " symmetry=" << int(symmetry));
      const st::S5System data(c.H, c.P, seed += 10);
      const Tensor<float, 3> u = st::random_tensor<3>({c.B, c.T, c.H}, seed + 7);
      const Tensor<float, 2> s_re = st::random_tensor<2>({c.B, c.P}, seed + 8), s_im = st::random_tensor<2>({c.B, c.P}, seed + 9);
      seqmix::S5Inputs in{u.view()};
      if (c.state) in.initial_state_real = s_re.view(), in.initial_state_imag = s_im.view();
      Tensor<float, 3> y_ref({c.B, c.T, c.H}), y({c.B, c.T, c.H});
      Tensor<float, 2> f_ref_re({c.B, c.P}), f_ref_im({c.B, c.P}), f_re({c.B, c.P}), f_im({c.B, c.P});
      const seqmix::SsmKernelOptions options{c.disc, symmetry};
      seqmix::reference::s5(data.params(), in, {y_ref.view(), f_ref_re.view(), f_ref_im.view()}, options);
      seqmix::s5(data.params(), in, {y.view(), f_re.view(), f_im.view()}, options, st::two_thread_pool());
      st::require_close("y", y.cview(), y_ref.cview(), 1e-4);
      st::require_close("final_state_real", f_re.cview(), f_ref_re.cview(), 1e-4);
      st::require_close("final_state_imag", f_im.cview(), f_ref_im.cview(), 1e-4);
    }
}

TEST_CASE("s5: prefill pieces and steps carrying the state equal one call", "[s5]") {
  const index_t B = 2, T = 200, H = 12, P = 8;
  const st::S5System data(H, P, 3);
  const Tensor<float, 3> u = st::random_tensor<3>({B, T, H}, 4);
  const seqmix::SsmKernelOptions options{SsmDiscretization::zoh, SsmStateSymmetry::conjugate_pairs};
  Tensor<float, 3> y_ref({B, T, H}), y({B, T, H});
  Tensor<float, 2> f_re({B, P}), f_im({B, P}), s_re({B, P}), s_im({B, P});
  seqmix::reference::s5(data.params(), {u.view()}, {y_ref.view(), f_re.view(), f_im.view()}, options);
  // 120 tokens, 70 tokens (state carried in place), then 10 steps.
  seqmix::s5(data.params(), {u.view().slice(1, 0, 120)}, {y.view().slice(1, 0, 120), s_re.view(), s_im.view()}, options);
  seqmix::s5(data.params(), {u.view().slice(1, 120, 70), s_re.view(), s_im.view()},
             {y.view().slice(1, 120, 70), s_re.view(), s_im.view()}, options, st::two_thread_pool());
  for (index_t t = 190; t < T; ++t)
    seqmix::s5_step(data.params(), {u.view().select(1, t)}, {y.view().select(1, t), s_re.view(), s_im.view()}, options);
  st::require_close("y", y.cview(), y_ref.cview(), 1e-4);
  st::require_close("state_real", s_re.cview(), f_re.cview(), 1e-4);
  st::require_close("state_imag", s_im.cview(), f_im.cview(), 1e-4);
}

TEST_CASE("s5: unstable, non-finite and misshapen parameters are refused before any write", "[s5]") {
  const index_t B = 1, T = 8, H = 4, P = 3;
  st::S5System data(H, P, 5);
  const Tensor<float, 3> u = st::random_tensor<3>({B, T, H}, 6);
  Tensor<float, 3> y({B, T, H});
  Tensor<float, 2> y1({B, H}), s_re({B, P}), s_im({B, P});
  y.fill(7.f), y1.fill(7.f);
  const auto refused = [&](const char* argument) {
    st::require_shape_error(argument, [&] { seqmix::s5(data.params(), {u.view()}, {y.view()}); });
    st::require_shape_error(argument, [&] { seqmix::reference::s5(data.params(), {u.view()}, {y.view()}); });
    st::require_shape_error(argument, [&] {
      seqmix::s5_step(data.params(), {u.view().select(1, 0)}, {y1.view(), s_re.view(), s_im.view()});
    });
    for (float v : y) REQUIRE(v == 7.f);
    for (float v : y1) REQUIRE(v == 7.f);
    for (float v : s_re) REQUIRE(v == 0.f);
  };
  data.L_re(1) = 0.f;
  refused("Lambda_real");
  data.L_re(1) = std::numeric_limits<float>::quiet_NaN();
  refused("Lambda_real");
  data.L_re(1) = -0.5f;
  data.B_im(2, 1) = std::numeric_limits<float>::infinity();
  refused("B_imag");
  data.B_im(2, 1) = 0.f;
  data.dt(0) = -1.f;
  refused("dt");
  data.dt(0) = 0.01f;
  Tensor<float, 2> C_wrong({H, P + 1});
  seqmix::S5Params p = data.params();
  p.C_real = C_wrong.view();
  st::require_shape_error("C_real", [&] { seqmix::s5(p, {u.view()}, {y.view()}); });
  Tensor<float, 2> f_re({B, P});
  st::require_shape_error("final_state_imag", [&] { seqmix::s5(data.params(), {u.view()}, {y.view(), f_re.view()}); });
  for (float v : y) REQUIRE(v == 7.f);
}

}  // namespace
