// hyena distillation (issue 16 item 5): a filter that is exactly a sum of M modes is recovered,
// the fit error of Hyena-kind filters (decaying windowed sinusoid mixtures) falls with the order,
// the distilled step equals hyena on the modal filters and stays within the fit error of hyena on
// the original ones; bad arguments are refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <complex>
#include <limits>
#include <random>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;
using hyd_complex = std::complex<double>;

// Owns everything hyena_distill writes for [N,L,D] filters at order M.
struct HydFit {
  Tensor<float, 3> pole_real, pole_imag, gain_real, gain_imag;
  Tensor<float, 2> feedthrough, error;
  HydFit(index_t N, index_t D, index_t M)
      : pole_real({N, D, M}), pole_imag({N, D, M}), gain_real({N, D, M}), gain_imag({N, D, M}), feedthrough({N, D}),
        error({N, D}) {}
  seqmix::HyenaDistillOutputs outputs() {
    return {pole_real.view(), pole_imag.view(), gain_real.view(), gain_imag.view(), feedthrough.view(), error.view()};
  }
  seqmix::HyenaModalFilters filters() const {
    return {pole_real.view(), pole_imag.view(), gain_real.view(), gain_imag.view(), feedthrough.view()};
  }
  // The modal filter's L taps (tap 0 = feedthrough + Re(sum R), the skip folded into it).
  Tensor<float, 3> taps(index_t L) const {
    const index_t N = pole_real.size(0), D = pole_real.size(1), M = pole_real.size(2);
    Tensor<float, 3> h({N, L, D});
    for (index_t n = 0; n < N; ++n)
      for (index_t d = 0; d < D; ++d) {
        std::vector<hyd_complex> power(M, 1.0);
        for (index_t s = 0; s < L; ++s) {
          double value = s == 0 ? feedthrough(n, d) : 0.0;
          for (index_t k = 0; k < M; ++k) {
            const hyd_complex g(gain_real(n, d, k), gain_imag(n, d, k)), lambda(pole_real(n, d, k), pole_imag(n, d, k));
            value += (g * g * power[k]).real();
            power[k] *= lambda;
          }
          h(n, s, d) = static_cast<float>(value);
        }
      }
    return h;
  }
};

// Hyena-kind filters, as its implicit-filter MLP and window make them: a sine activation of a
// mixture of positional sinusoids (a few cycles over L), times an exponential decay window whose
// rate varies over channels (fast to slow, as Hyena's per-channel window), plus a bias.
Tensor<float, 3> hyd_hyena_filters(index_t N, index_t L, index_t D, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Tensor<float, 3> h({N, L, D});
  const double pi = 3.14159265358979323846;
  for (index_t n = 0; n < N; ++n)
    for (index_t d = 0; d < D; ++d) {
      double amp[4], freq[4], phase[4];
      for (int j = 0; j < 4; ++j) amp[j] = 0.3 + unit(rng), freq[j] = 1.0 + 7.0 * unit(rng), phase[j] = 2 * pi * unit(rng);
      const double decay = (3.0 + 27.0 * unit(rng)) / double(L), bias = 0.2 * (unit(rng) - 0.5);
      for (index_t t = 0; t < L; ++t) {
        const double z = double(t) / double(L);
        double mix = 0.0;
        for (int j = 0; j < 4; ++j) mix += amp[j] * std::sin(2 * pi * freq[j] * z + phase[j]);
        h(n, t, d) = static_cast<float>((std::sin(mix) + bias) * std::exp(-decay * double(t)) / std::sqrt(double(L)));
      }
    }
  return h;
}

double hyd_relative_error(const Tensor<float, 3>& a, const Tensor<float, 3>& b) {
  double err = 0.0, norm = 0.0;
  for (index_t i = 0; i < a.numel(); ++i) {
    const double diff = double(a.data()[i]) - double(b.data()[i]);
    err += diff * diff, norm += double(b.data()[i]) * double(b.data()[i]);
  }
  return std::sqrt(err / norm);
}

// Distilled steps over T tokens from a zero state: y [B,T,D].
Tensor<float, 3> hyd_run_steps(const Tensor<float, 3>& v, const Tensor<float, 4>& x, const HydFit& fit) {
  const index_t N = x.size(0), B = v.size(0), T = v.size(1), D = v.size(2), M = fit.pole_real.size(2);
  Tensor<float, 3> y({B, T, D});
  Tensor<float, 4> state_real({N, B, D, M}), state_imag({N, B, D, M});
  state_real.fill(0.f), state_imag.fill(0.f);
  Tensor<float, 2> y_row({B, D}), scratch({B, D});
  for (index_t t = 0; t < T; ++t) {
    seqmix::hyena_distilled_step({v.view().select(1, t), x.view().select(2, t), fit.filters()},
                                 {y_row.view(), state_real.view(), state_imag.view(), scratch.view()});
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d) y(b, t, d) = y_row(b, d);
  }
  return y;
}

}  // namespace

TEST_CASE("hyena_distill: a filter made of M modes is recovered", "[hyena][distill]") {
  const index_t N = 2, L = 256, D = 5;
  for (index_t M : {1, 3, 8}) {
    INFO("M=" << M);
    std::mt19937_64 rng(40 + M);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    Tensor<float, 3> h({N, L, D});
    const Tensor<float, 2> skip = st::random_tensor<2>({N, D}, 7);
    for (index_t n = 0; n < N; ++n)
      for (index_t d = 0; d < D; ++d) {
        std::vector<hyd_complex> pole(M), residue(M);
        for (index_t k = 0; k < M; ++k) {
          // Distinct, well separated angles; one real pole in the first channel.
          const double angle = (n == 0 && d == 0 && k == 0) ? 0.0 : 0.2 + 2.6 * (k + 0.5 * unit(rng)) / double(M);
          pole[k] = std::polar(0.85 + 0.13 * unit(rng), angle);
          residue[k] = hyd_complex(unit(rng) - 0.5, angle == 0.0 ? 0.0 : unit(rng) - 0.5);
        }
        std::vector<hyd_complex> power(M, 1.0);
        for (index_t t = 0; t < L; ++t) {
          double value = 0.0;
          for (index_t k = 0; k < M; ++k) value += (residue[k] * power[k]).real(), power[k] *= pole[k];
          h(n, t, d) = static_cast<float>(value);
        }
      }
    HydFit fit(N, D, M);
    seqmix::hyena_distill(h.view(), skip.view(), fit.outputs(), {M}, st::two_thread_pool());
    for (float e : fit.error) REQUIRE(e < 2e-6);
    // The modes rebuild the taps (tap 0 through the feedthrough, minus the skip folded into it).
    Tensor<float, 3> rebuilt = fit.taps(L);
    for (index_t n = 0; n < N; ++n)
      for (index_t d = 0; d < D; ++d) rebuilt(n, 0, d) -= skip(n, d);
    REQUIRE(hyd_relative_error(rebuilt, h) < 1e-5);
    for (index_t i = 0; i < fit.pole_real.numel(); ++i)
      REQUIRE(std::hypot(fit.pole_real.data()[i], fit.pole_imag.data()[i]) < 1.0);
  }
}

TEST_CASE("hyena_distill: the fit error of Hyena-kind filters falls with the order", "[hyena][distill]") {
  const index_t N = 1, L = st::small_test_scale() ? 512 : 1024, D = 4;
  const Tensor<float, 3> h = hyd_hyena_filters(N, L, D, 11);
  std::vector<double> worst;
  for (index_t M : {2, 4, 8, 16}) {
    HydFit fit(N, D, M);
    seqmix::hyena_distill(h.view(), {}, fit.outputs(), {M}, st::two_thread_pool());
    // The reported error is the one of the modal taps, channel by channel.
    const Tensor<float, 3> rebuilt = fit.taps(L);
    double max_error = 0.0;
    for (index_t d = 0; d < D; ++d) {
      double err = 0.0, norm = 0.0;
      for (index_t s = 0; s < L; ++s) {
        const double diff = double(rebuilt(0, s, d)) - h(0, s, d);
        err += diff * diff, norm += double(h(0, s, d)) * h(0, s, d);
      }
      INFO("M=" << M << " channel " << d);
      REQUIRE(std::abs(std::sqrt(err / norm) - fit.error(0, d)) < 1e-4 + 0.01 * fit.error(0, d));
      max_error = std::max(max_error, double(fit.error(0, d)));
    }
    worst.push_back(max_error);
  }
  INFO("worst fit error at M = 2, 4, 8, 16: " << worst[0] << " " << worst[1] << " " << worst[2] << " " << worst[3]);
  REQUIRE(worst[1] < worst[0]);
  REQUIRE(worst[2] < worst[1]);
  REQUIRE(worst[3] <= worst[2] * 1.01);
  REQUIRE(worst[3] < 2e-2);
}

TEST_CASE("hyena_distilled_step: equals hyena on the modal filters and follows hyena within the fit error",
          "[hyena][distill]") {
  const index_t N = 2, B = 2, T = 300, D = 7, M = 16;
  const Tensor<float, 3> h = hyd_hyena_filters(N, T, D, 21);
  const Tensor<float, 2> skip = st::random_tensor<2>({N, D}, 22);
  const Tensor<float, 3> v = st::random_tensor<3>({B, T, D}, 23);
  const Tensor<float, 4> x = st::random_tensor<4>({N, B, T, D}, 24);
  HydFit fit(N, D, M);
  seqmix::hyena_distill(h.view(), skip.view(), fit.outputs(), {M});
  const Tensor<float, 3> steps = hyd_run_steps(v, x, fit);
  // Exactly the operator with the modal taps as filters (skip folded into tap 0).
  const Tensor<float, 3> modal = fit.taps(T);
  Tensor<float, 3> y_modal({B, T, D}), y({B, T, D});
  seqmix::hyena({v.view(), x.view(), modal.view()}, {y_modal.view()});
  st::require_close("steps vs hyena on the modal filters", steps.cview(), y_modal.cview(), 1e-4);
  // Against FFT Hyena on the original filters: within a small multiple of the fit errors.
  seqmix::hyena({v.view(), x.view(), h.view(), skip.view()}, {y.view()}, {seqmix::LongConvMethod::fft});
  double fit_sum = 0.0;
  for (index_t n = 0; n < N; ++n) {
    double worst = 0.0;
    for (index_t d = 0; d < D; ++d) worst = std::max(worst, double(fit.error(n, d)));
    fit_sum += worst;
  }
  const double output_error = hyd_relative_error(steps, y);
  INFO("output error " << output_error << ", sum of worst fit errors " << fit_sum);
  REQUIRE(output_error < 4.0 * fit_sum + 1e-5);
}

TEST_CASE("hyena_distill and hyena_distilled_step: bad arguments are refused before any write", "[hyena][distill]") {
  const index_t N = 2, L = 32, D = 3, M = 4, B = 2;
  const Tensor<float, 3> h = hyd_hyena_filters(N, L, D, 31);
  HydFit fit(N, D, M);
  for (auto* t : {&fit.pole_real, &fit.pole_imag, &fit.gain_real, &fit.gain_imag}) t->fill(7.f);
  fit.feedthrough.fill(7.f), fit.error.fill(7.f);
  const auto untouched = [&] {
    for (const auto* t : {&fit.pole_real, &fit.pole_imag, &fit.gain_real, &fit.gain_imag})
      for (float value : *t) REQUIRE(value == 7.f);
    for (float value : fit.feedthrough) REQUIRE(value == 7.f);
    for (float value : fit.error) REQUIRE(value == 7.f);
  };
  st::require_shape_error("options.order", [&] { seqmix::hyena_distill(h.view(), {}, fit.outputs(), {0}); });
  HydFit wide(N, D, L / 2 + 1);
  st::require_shape_error("options.order", [&] { seqmix::hyena_distill(h.view(), {}, wide.outputs(), {L / 2 + 1}); });
  Tensor<float, 3> bad = h;
  bad(N - 1, L - 1, D - 1) = std::numeric_limits<float>::quiet_NaN();
  st::require_shape_error("filter", [&] { seqmix::hyena_distill(bad.view(), {}, fit.outputs(), {M}); });
  Tensor<float, 2> bad_skip({N, D});
  bad_skip.fill(0.f), bad_skip(1, 2) = std::numeric_limits<float>::infinity();
  st::require_shape_error("skip", [&] { seqmix::hyena_distill(h.view(), bad_skip.view(), fit.outputs(), {M}); });
  seqmix::HyenaDistillOptions unstable{M};
  unstable.max_pole_modulus = 1.0;
  st::require_shape_error("options.max_pole_modulus", [&] { seqmix::hyena_distill(h.view(), {}, fit.outputs(), unstable); });
  st::require_shape_error("pole_real", [&] { seqmix::hyena_distill(h.view(), {}, fit.outputs(), {M - 1}); });
  const Tensor<float, 3> one_tap({N, 1, D});
  st::require_shape_error("options.order", [&] { seqmix::hyena_distill(one_tap.view(), {}, fit.outputs(), {M}); });
  untouched();

  // The step: an unstable pole of the last order, a wrong state, y over v.
  seqmix::hyena_distill(h.view(), {}, fit.outputs(), {M});
  const Tensor<float, 2> v = st::random_tensor<2>({B, D}, 1);
  const Tensor<float, 3> x = st::random_tensor<3>({N, B, D}, 2);
  Tensor<float, 2> y({B, D});
  Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M}), s_wrong({N, B, D, M + 1});
  y.fill(7.f), sr.fill(7.f), si.fill(7.f);
  Tensor<float, 3> pole_bad = fit.pole_real;
  pole_bad(N - 1, D - 1, M - 1) = 1.f;
  seqmix::HyenaModalFilters bad_filters = fit.filters();
  bad_filters.pole_real = pole_bad.view();
  st::require_shape_error("filters.pole_real", [&] {
    seqmix::hyena_distilled_step({v.view(), x.view(), bad_filters}, {y.view(), sr.view(), si.view()});
  });
  st::require_shape_error("state_imag", [&] {
    seqmix::hyena_distilled_step({v.view(), x.view(), fit.filters()}, {y.view(), sr.view(), s_wrong.view()});
  });
  Tensor<float, 2> v_copy = v;
  st::require_shape_error("y", [&] {
    seqmix::hyena_distilled_step({v_copy.view(), x.view(), fit.filters()}, {v_copy.view(), sr.view(), si.view()});
  });
  for (float value : y) REQUIRE(value == 7.f);
  for (float value : sr) REQUIRE(value == 7.f);
  for (float value : si) REQUIRE(value == 7.f);
}
