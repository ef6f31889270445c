// hyena_distilled_prefill (issue 16 item 5, prefill -> distilled decode): after the exact prefill
// of a prompt, the modal states it hands over let hyena_distilled_step continue as if the
// distilled step had run from token 0; bad arguments are refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <complex>
#include <random>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/hyena_modes.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct HandoffCase {
  index_t N, B, T, D, M, prompt;
  seqmix::LongConvMethod method;
};

}  // namespace

TEST_CASE("hyena_distilled_prefill: prefill then distilled steps equal the distilled steps from token 0",
          "[hyena][distill][handoff]") {
  const HandoffCase cases[] = {
      {2, 2, 40, 5, 3, 23, seqmix::LongConvMethod::fft},
      {1, 1, 30, 70, 4, 1, seqmix::LongConvMethod::automatic},
      {3, 2, 33, 3, 2, 32, seqmix::LongConvMethod::direct},
      {2, 1, 150, 9, 6, 129, seqmix::LongConvMethod::fft},
  };
  for (const HandoffCase& c : cases) {
    INFO("N=" << c.N << " B=" << c.B << " T=" << c.T << " D=" << c.D << " M=" << c.M << " prompt=" << c.prompt);
    const st::HyenaModes modes(c.N, c.D, c.M, 1000 + static_cast<std::uint64_t>(c.T));
    const auto f = modes.filters();
    const Tensor<float, 3> v = st::random_tensor<3>({c.B, c.T, c.D}, 11 + c.T);
    const Tensor<float, 4> x = st::random_tensor<4>({c.N, c.B, c.T, c.D}, 12 + c.T);
    // The modes' own taps as the prefill's filter (L = prompt), so the exact prefill and the
    // distilled recurrence compute the same map.
    const Tensor<float, 3> taps = modes.taps(c.prompt);

    // Distilled steps from token 0 over the whole sequence.
    Tensor<float, 3> y_steps({c.B, c.T, c.D});
    Tensor<float, 4> sr({c.N, c.B, c.D, c.M}), si({c.N, c.B, c.D, c.M});
    sr.fill(0.f), si.fill(0.f);
    Tensor<float, 4> sr_at_prompt({c.N, c.B, c.D, c.M}), si_at_prompt({c.N, c.B, c.D, c.M});
    Tensor<float, 2> yt({c.B, c.D});
    for (index_t t = 0; t < c.T; ++t) {
      seqmix::hyena_distilled_step({v.view().select(1, t), x.view().select(2, t), f}, {yt.view(), sr.view(), si.view()});
      seqmix::copy(yt.cview(), y_steps.view().select(1, t));
      if (t + 1 == c.prompt) seqmix::copy(sr.cview(), sr_at_prompt.view()), seqmix::copy(si.cview(), si_at_prompt.view());
    }

    // The handoff: prefill of the prompt, then steps from its states.
    Tensor<float, 3> y({c.B, c.T, c.D});
    Tensor<float, 4> hr({c.N, c.B, c.D, c.M}), hi({c.N, c.B, c.D, c.M});
    seqmix::HyenaInputs prompt{v.view().slice(1, 0, c.prompt), x.view().slice(2, 0, c.prompt), taps.view()};
    seqmix::HyenaOptions options;
    options.method = c.method;
    seqmix::hyena_distilled_prefill(prompt, f, {y.view().slice(1, 0, c.prompt), hr.view(), hi.view()}, options,
                                    st::two_thread_pool());
    st::require_close("handed-over state_real", hr.view(), sr_at_prompt.view(), 2e-5);
    st::require_close("handed-over state_imag", hi.view(), si_at_prompt.view(), 2e-5);
    // The prefill's outputs are hyena's.
    Tensor<float, 3> y_hyena({c.B, c.prompt, c.D});
    seqmix::reference::hyena(prompt, {y_hyena.view()});
    st::require_close("prefill y vs reference::hyena", y.view().slice(1, 0, c.prompt).as_const(), y_hyena.view(), 1e-5);
    for (index_t t = c.prompt; t < c.T; ++t) {
      seqmix::hyena_distilled_step({v.view().select(1, t), x.view().select(2, t), f}, {yt.view(), hr.view(), hi.view()});
      seqmix::copy(yt.cview(), y.view().select(1, t));
    }
    st::require_close("y (prefill + steps) vs steps from token 0", y.view(), y_steps.view(), 2e-5);
    st::require_close("final state_real", hr.view(), sr.view(), 2e-5);
    st::require_close("final state_imag", hi.view(), si.view(), 2e-5);
  }
}

TEST_CASE("hyena_distilled_prefill: a distilled fit hands over to steps that follow hyena within the fit",
          "[hyena][distill][handoff]") {
  // A smooth decaying filter fitted with hyena_distill: the prompt's outputs are exact (FFT
  // hyena), the decoded ones follow hyena on the original filter about as closely as the
  // distilled step run from token 0 does.
  const index_t N = 1, B = 1, T = 96, D = 4, M = 8, prompt = 64;
  Tensor<float, 3> h({N, T, D});
  for (index_t s = 0; s < T; ++s)
    for (index_t d = 0; d < D; ++d)
      h(0, s, d) = static_cast<float>(std::exp(-0.05 * (d + 1) * s) * std::cos(0.3 * s + d) + (s == 0 ? 0.5 : 0.0));
  Tensor<float, 3> pr({N, D, M}), pi({N, D, M}), gr({N, D, M}), gi({N, D, M});
  Tensor<float, 2> ft({N, D});
  seqmix::HyenaDistillOptions dopt;
  dopt.order = M;
  seqmix::hyena_distill(h.view(), {}, {pr.view(), pi.view(), gr.view(), gi.view(), ft.view()}, dopt);
  const seqmix::HyenaModalFilters f{pr.view(), pi.view(), gr.view(), gi.view(), ft.view()};
  const Tensor<float, 3> v = st::random_tensor<3>({B, T, D}, 71);
  const Tensor<float, 4> x = st::random_tensor<4>({N, B, T, D}, 72);
  Tensor<float, 3> y_exact({B, T, D});
  seqmix::reference::hyena({v.view(), x.view(), h.view()}, {y_exact.view()});

  Tensor<float, 3> y({B, T, D});
  Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M});
  seqmix::hyena_distilled_prefill({v.view().slice(1, 0, prompt), x.view().slice(2, 0, prompt), h.view().slice(1, 0, prompt)},
                                  f, {y.view().slice(1, 0, prompt), sr.view(), si.view()});
  st::require_close("prompt outputs are hyena's", y.view().slice(1, 0, prompt).as_const(),
                    y_exact.view().slice(1, 0, prompt), 1e-5);
  Tensor<float, 2> yt({B, D});
  double worst = 0.0, scale = 0.0;
  for (index_t t = prompt; t < T; ++t) {
    seqmix::hyena_distilled_step({v.view().select(1, t), x.view().select(2, t), f}, {yt.view(), sr.view(), si.view()});
    for (index_t d = 0; d < D; ++d) {
      worst = std::max(worst, std::abs(double(yt(0, d)) - y_exact(0, t, d)));
      scale = std::max(scale, std::abs(double(y_exact(0, t, d))));
    }
  }
  INFO("worst decoded error " << worst << " against max |y| " << scale);
  CHECK(worst <= 1e-3 * std::max(1.0, scale));
}

TEST_CASE("hyena_distilled_prefill: bad arguments are refused before any write", "[hyena][distill][handoff]") {
  const index_t N = 2, B = 1, T = 9, D = 3, M = 2;
  const st::HyenaModes modes(N, D, M, 5);
  const Tensor<float, 3> taps = modes.taps(T);
  const Tensor<float, 3> v = st::random_tensor<3>({B, T, D}, 1);
  const Tensor<float, 4> x = st::random_tensor<4>({N, B, T, D}, 2);
  const Tensor<float, 4> history = st::random_tensor<4>({N, B, T - 1, D}, 3);
  Tensor<float, 3> y({B, T, D});
  Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M}), s_bad({N, B, D, M + 1});
  y.fill(3.f), sr.fill(3.f), si.fill(3.f);
  const seqmix::HyenaInputs good{v.view(), x.view(), taps.view()};
  const auto untouched = [&] {
    for (float e : y) REQUIRE(e == 3.f);
    for (float e : sr) REQUIRE(e == 3.f);
    for (float e : si) REQUIRE(e == 3.f);
  };
  auto with_history = good;
  with_history.initial_state = history.view();
  st::require_shape_error("initial_state", [&] {
    seqmix::hyena_distilled_prefill(with_history, modes.filters(), {y.view(), sr.view(), si.view()});
  });
  untouched();
  st::require_shape_error("state_imag", [&] {
    seqmix::hyena_distilled_prefill(good, modes.filters(), {y.view(), sr.view(), s_bad.view()});
  });
  untouched();
  Tensor<float, 3> unstable({N, D, M});
  seqmix::copy(modes.pole_real.cview(), unstable.view());
  unstable(1, 2, 1) = 1.0f;
  auto f = modes.filters();
  f.pole_real = unstable.view();
  st::require_shape_error("filters.pole_real",
                          [&] { seqmix::hyena_distilled_prefill(good, f, {y.view(), sr.view(), si.view()}); });
  untouched();
  Tensor<float, 3> bad_taps({N, T, D});
  seqmix::copy(taps.cview(), bad_taps.view());
  bad_taps(1, 4, 0) = std::nanf("");
  st::require_shape_error("filter", [&] {
    seqmix::hyena_distilled_prefill({v.view(), x.view(), bad_taps.view()}, modes.filters(),
                                    {y.view(), sr.view(), si.view()});
  });
  untouched();
  // A state that overlaps the output.
  Tensor<float, 1> shared({N * B * D * M + B * T * D});
  const seqmix::TensorView<float, 4> s_view(shared.data(), {N, B, D, M});
  const seqmix::TensorView<float, 3> y_view(shared.data() + 1, {B, T, D});
  st::require_shape_error("state_real",
                          [&] { seqmix::hyena_distilled_prefill(good, modes.filters(), {y_view, s_view, si.view()}); });
}
