// The reverse option of the remaining recurrent operators (issue 23 item 1): s5 and the others
// listed in docs/operators.md section 19. The reference and fast forms with options.reverse equal
// the forward operator on explicitly reversed copies (outputs reversed back; final states, the
// states after token 0, equal), for T 1, 2, 37 (and above the chunk size where there is one), B 2.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// An explicit reversed copy along the token axis (dimension 1).
template <std::size_t Rank>
Tensor<float, Rank> more_dir_reversed(const Tensor<float, Rank>& t) {
  Tensor<float, Rank> r(t.shape());
  for (index_t b = 0; b < t.size(0); ++b)
    for (index_t i = 0; i < t.size(1); ++i) seqmix::copy(t.cview()[b][t.size(1) - 1 - i], r.view()[b][i]);
  return r;
}

const index_t kMoreDirLengths[] = {1, 2, 37};

TEST_CASE("reverse s5 equals s5 on reversed copies", "[direction][s5]") {
  const index_t H = 5, P = 6;
  Tensor<float, 1> L_re = st::random_tensor<1>({P}, 501, -1.f, -0.1f), L_im = st::random_tensor<1>({P}, 502, -3.f, 3.f);
  Tensor<float, 1> dt = st::random_tensor<1>({P}, 503, 0.01f, 0.2f), D = st::random_tensor<1>({H}, 504);
  Tensor<float, 2> B_re = st::random_tensor<2>({P, H}, 505, -0.4f, 0.4f), B_im = st::random_tensor<2>({P, H}, 506, -0.4f, 0.4f);
  Tensor<float, 2> C_re = st::random_tensor<2>({H, P}, 507, -0.4f, 0.4f), C_im = st::random_tensor<2>({H, P}, 508, -0.4f, 0.4f);
  const seqmix::S5Params params{L_re.view(), L_im.view(), B_re.view(), B_im.view(), C_re.view(), C_im.view(), dt.view(), D.view()};
  for (const index_t T : kMoreDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const Tensor<float, 3> u = st::random_tensor<3>({2, T, H}, 510 + std::uint64_t(T));
      const Tensor<float, 3> u_rev = more_dir_reversed(u);
      const Tensor<float, 2> s_re = st::random_tensor<2>({2, P}, 520), s_im = st::random_tensor<2>({2, P}, 521);
      seqmix::S5Options options;
      options.discretization = seqmix::SsmDiscretization::bilinear;
      seqmix::S5Options reverse = options;
      reverse.reverse = true;
      Tensor<float, 3> y({2, T, H}), y_ref({2, T, H});
      Tensor<float, 2> f_re({2, P}), f_im({2, P}), g_re({2, P}), g_im({2, P});
      const seqmix::S5Inputs got_in{u.view(), s_re.view(), s_im.view()}, want_in{u_rev.view(), s_re.view(), s_im.view()};
      if (fast) {
        seqmix::s5(params, got_in, {y.view(), f_re.view(), f_im.view()}, reverse, st::two_thread_pool());
        seqmix::s5(params, want_in, {y_ref.view(), g_re.view(), g_im.view()}, options);
      } else {
        seqmix::reference::s5(params, got_in, {y.view(), f_re.view(), f_im.view()}, reverse);
        seqmix::reference::s5(params, want_in, {y_ref.view(), g_re.view(), g_im.view()}, options);
      }
      st::require_close("s5 y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
      st::require_close("s5 final_state_real", f_re.cview(), g_re.cview(), 1e-5);
      st::require_close("s5 final_state_imag", f_im.cview(), g_im.cview(), 1e-5);
    }
}

}  // namespace
