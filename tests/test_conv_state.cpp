// conv_state_scan (ConvS5-style tensor states: a depthwise convolution as the transition): the
// fast prefill and the step against the double recurrence over ragged maps and kernels; bad
// arguments refused before any write.
#include <catch2/catch.hpp>

#include "seqmix/ssm/matrix_scan/conv_state.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct ConvStateCase {
  index_t B, T, C, Hs, Ws, Kh, Kw;
};

TEST_CASE("conv_state_scan: fast prefill and steps match the double recurrence", "[conv_state]") {
  const ConvStateCase cases[] = {{1, 1, 1, 1, 1, 1, 1}, {2, 9, 3, 5, 7, 3, 3}, {1, 30, 2, 1, 17, 3, 5},
                                 {2, 12, 1, 8, 1, 5, 1}, {1, 20, 4, 6, 6, 7, 7}};
  for (const auto& c : cases) {
    INFO("B=" << c.B << " T=" << c.T << " C=" << c.C << " map " << c.Hs << "x" << c.Ws << " kernel " << c.Kh << "x" << c.Kw);
    // Kernel taps summing to at most 1 in absolute value: the state stays bounded.
    const float bound = 1.f / float(c.Kh * c.Kw);
    const auto kernel = st::random_tensor<3>({c.C, c.Kh, c.Kw}, 1, -bound, bound);
    const auto x = st::random_tensor<5>({c.B, c.T, c.C, c.Hs, c.Ws}, 2);
    const auto h0 = st::random_tensor<4>({c.B, c.C, c.Hs, c.Ws}, 3);
    Tensor<float, 5> h_all({c.B, c.T, c.C, c.Hs, c.Ws}), ref_all({c.B, c.T, c.C, c.Hs, c.Ws});
    Tensor<float, 4> h_last({c.B, c.C, c.Hs, c.Ws}), ref_last({c.B, c.C, c.Hs, c.Ws});
    const seqmix::ConvStateScanInputs in{kernel.view(), x.view(), h0.view()};
    seqmix::reference::conv_state_scan(in, {ref_all.view(), ref_last.view()});
    seqmix::conv_state_scan(in, {h_all.view(), h_last.view()}, st::two_thread_pool());
    st::require_close("h_all", h_all.cview(), ref_all.cview(), 1e-5);
    st::require_close("h_last", h_last.cview(), ref_last.cview(), 1e-5);
    // A prefill of the first half carrying the state in place (h_last is h0), then one step a token.
    const index_t split = c.T / 2;
    Tensor<float, 4> state = h0;
    seqmix::conv_state_scan({kernel.view(), x.cview().slice(1, 0, split), state.cview()}, {{}, state.view()});
    for (index_t t = split; t < c.T; ++t) seqmix::conv_state_step(kernel.view(), x.cview().select(1, t), state.view());
    st::require_close("prefill then steps", state.cview(), ref_last.cview(), 1e-5);
  }
}

TEST_CASE("conv_state_scan: bad arguments refused before any write", "[conv_state]") {
  const index_t B = 2, T = 4, C = 3, Hs = 4, Ws = 5;
  const auto x = st::random_tensor<5>({B, T, C, Hs, Ws}, 1);
  const auto kernel_even = st::random_tensor<3>({C, 2, 3}, 2), kernel_c = st::random_tensor<3>({C + 1, 3, 3}, 3);
  const auto kernel = st::random_tensor<3>({C, 3, 3}, 4);
  Tensor<float, 5> h_all({B, T, C, Hs, Ws});
  h_all.fill(-7.f);
  st::require_shape_error("kernel", [&] { seqmix::conv_state_scan({kernel_even.view(), x.view()}, {h_all.view(), {}}); });
  st::require_shape_error("kernel", [&] { seqmix::conv_state_scan({kernel_c.view(), x.view()}, {h_all.view(), {}}); });
  st::require_shape_error("h_all", [&] { seqmix::conv_state_scan({kernel.view(), x.view()}, {}); });
  const Tensor<float, 4> h0_bad({B, C, Hs + 1, Ws});
  st::require_shape_error("h0", [&] { seqmix::conv_state_scan({kernel.view(), x.view(), h0_bad.view()}, {h_all.view(), {}}); });
  for (const float v : h_all) REQUIRE(v == -7.f);
  Tensor<float, 4> state({B, C, Hs, Ws});
  state.fill(-7.f);
  st::require_shape_error("kernel", [&] { seqmix::conv_state_step(kernel_even.view(), x.cview().select(1, 0), state.view()); });
  st::require_shape_error("state", [&] { seqmix::conv_state_step(kernel.view(), x.cview().select(1, 0), state.view().slice(3, 0, 4)); });
  for (const float v : state) REQUIRE(v == -7.f);
}

}  // namespace
