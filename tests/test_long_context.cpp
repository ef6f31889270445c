// ssm/long_context: the sliding-window state against the window sum (also where h_t - prod(a)
// h_{t-r} would cancel), DeciMamba pooling and LongMamba selective accumulation against naive
// selection loops, selective_scan on the filtered dt against a recurrence that skips the
// unselected tokens; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/ssm/long_context/reference.hpp"
#include "seqmix/ssm/long_context/selection.hpp"
#include "seqmix/ssm/long_context/window.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

TEST_CASE("long_context: sliding_window_scan matches the window sum", "[long_context]") {
  for (const auto space : {seqmix::GateSpace::direct, seqmix::GateSpace::log})
    for (const index_t T : {1, 7, 64, 200})
      for (const index_t D : {3, 70})
        for (const index_t r : {1, 5, 64, 300}) {
          INFO("T=" << T << " D=" << D << " r=" << r << " log=" << (space == seqmix::GateSpace::log));
          const index_t B = 2;
          const auto a = space == seqmix::GateSpace::log ? st::random_tensor<3>({B, T, D}, 1, -0.7f, 0.f)
                                                         : st::random_tensor<3>({B, T, D}, 1, 0.5f, 1.f);
          const auto b = st::random_tensor<3>({B, T, D}, 2);
          Tensor<float, 3> w({B, T, D}), ref({B, T, D});
          seqmix::SlidingWindowOptions options;
          options.gate_space = space;
          options.window = r;
          seqmix::reference::sliding_window_scan(a.view(), b.view(), ref.view(), options);
          seqmix::sliding_window_scan(a.view(), b.view(), w.view(), options, st::two_thread_pool());
          st::require_close("w", w.cview(), ref.cview(), 1e-5);
        }
}

// A non-finite gate a_t enters exactly the windows that multiply by it (those holding t - 1
// and t): the fast form's block start once formed gate * 0 for a window starting at t, which
// does not read a_t, and made it NaN where the reference is finite.
TEST_CASE("long_context: a non-finite gate reaches only the windows that read it", "[long_context]") {
  const index_t B = 1, T = 64, D = 3, r = 8;
  for (const float bad : {std::nanf(""), std::numeric_limits<float>::infinity()})
    for (const index_t t_bad : {index_t{40}, index_t{41}, index_t{47}}) {  // a block start, inside, the end
      INFO("t_bad=" << t_bad << " bad=" << bad);
      auto a = st::random_tensor<3>({B, T, D}, 5, 0.5f, 1.f);
      const auto b = st::random_tensor<3>({B, T, D}, 6);
      a(0, t_bad, 1) = bad;
      Tensor<float, 3> w({B, T, D}), ref({B, T, D});
      seqmix::SlidingWindowOptions options;
      options.window = r;
      seqmix::reference::sliding_window_scan(a.view(), b.view(), ref.view(), options);
      seqmix::sliding_window_scan(a.view(), b.view(), w.view(), options);
      for (index_t t = 0; t < T; ++t)
        for (index_t c = 0; c < D; ++c) {
          INFO("t=" << t << " c=" << c);
          REQUIRE(std::isfinite(w(0, t, c)) == std::isfinite(ref(0, t, c)));
          if (std::isfinite(ref(0, t, c))) REQUIRE(std::abs(w(0, t, c) - ref(0, t, c)) <= 1e-5f * (1.f + std::abs(ref(0, t, c))));
        }
    }
}

TEST_CASE("long_context: the window stays exact where h grows large", "[long_context]") {
  // a = 1 - 1e-6 and b ~ 1 + noise: h_t grows to ~T while a 16-token window stays ~16, so
  // h_t - prod(a) h_{t-16} in float would lose log2(T/16) bits; the block form loses none.
  const index_t T = st::small_test_scale() ? 4096 : 32768, D = 4, r = 16;
  Tensor<float, 3> a({1, T, D});
  a.fill(1.f - 1e-6f);
  const auto b = st::random_tensor<3>({1, T, D}, 3, 0.5f, 1.5f);
  Tensor<float, 3> w({1, T, D}), ref({1, T, D});
  seqmix::SlidingWindowOptions options;
  options.window = r;
  seqmix::reference::sliding_window_scan(a.view(), b.view(), ref.view(), options);
  seqmix::sliding_window_scan(a.view(), b.view(), w.view(), options);
  double worst = 0.0;
  for (index_t i = 0; i < w.numel(); ++i) worst = std::max(worst, std::fabs(double(w.data()[i]) - ref.data()[i]) / std::fabs(ref.data()[i]));
  CHECK(worst < 1e-6);
}

// Naive pooling: repeatedly take the best remaining token (largest mean dt, earliest on ties).
std::vector<index_t> longctx_naive_pool(const Tensor<float, 3>& dt, index_t b, index_t keep) {
  const index_t T = dt.size(1), D = dt.size(2);
  std::vector<double> score(static_cast<std::size_t>(T));
  for (index_t t = 0; t < T; ++t) {
    double s = 0.0;
    for (index_t d = 0; d < D; ++d) s += dt(b, t, d);
    score[t] = s / double(D);
  }
  std::vector<index_t> picked;
  std::vector<bool> used(static_cast<std::size_t>(T), false);
  for (index_t i = 0; i < keep; ++i) {
    index_t best = -1;
    for (index_t t = 0; t < T; ++t)
      if (!used[t] && (best < 0 || score[t] > score[best])) best = t;
    used[best] = true;
    picked.push_back(best);
  }
  std::sort(picked.begin(), picked.end());
  return picked;
}

TEST_CASE("long_context: decimamba_pool keeps the top tokens by mean dt, in order", "[long_context]") {
  const index_t B = 3, T = 50, D = 6, C = 5;
  // dt on a coarse grid so that ties happen.
  Tensor<float, 3> dt = st::random_tensor<3>({B, T, D}, 5, 0.f, 1.f);
  for (float& v : dt) v = std::round(v * 4.f) / 4.f;
  const auto x = st::random_tensor<3>({B, T, C}, 6);
  for (const index_t keep : {0, 1, 17, 50}) {
    INFO("keep=" << keep);
    Tensor<std::int64_t, 2> kept({B, keep});
    Tensor<float, 3> pooled({B, keep, C});
    seqmix::decimamba_pool(dt.view(), x.view(), kept.view(), pooled.view(), st::two_thread_pool());
    for (index_t b = 0; b < B; ++b) {
      const auto ref = longctx_naive_pool(dt, b, keep);
      for (index_t i = 0; i < keep; ++i) {
        REQUIRE(kept(b, i) == ref[i]);
        for (index_t c = 0; c < C; ++c) REQUIRE(pooled(b, i, c) == x(b, ref[i], c));
      }
    }
  }
  seqmix::DeciMambaSchedule schedule;
  schedule.first_layer = 2, schedule.last_layer = 4, schedule.base_tokens = 1000, schedule.decay = 0.5;
  CHECK(seqmix::decimamba_keep_count(schedule, 1, 5000) == 5000);
  CHECK(seqmix::decimamba_keep_count(schedule, 2, 5000) == 1000);
  CHECK(seqmix::decimamba_keep_count(schedule, 4, 5000) == 250);
  CHECK(seqmix::decimamba_keep_count(schedule, 3, 300) == 300);
  CHECK(seqmix::decimamba_keep_count(schedule, 5, 5000) == 5000);
}

TEST_CASE("long_context: selective accumulation lets only selected tokens into global channels", "[long_context]") {
  const index_t B = 2, T = 40, D = 6, N = 4;
  const auto dt = st::random_tensor<3>({B, T, D}, 7, 0.f, 0.2f);
  std::vector<std::uint8_t> global_flags = {1, 0, 1, 0, 0, 1};
  const seqmix::ConstView<std::uint8_t, 1> global(global_flags.data(), {D});
  const auto u = st::random_tensor<3>({B, T, D}, 8);
  const auto A = st::random_tensor<2>({D, N}, 9, -1.f, -0.1f);
  const auto Bm = st::random_tensor<4>({B, T, 1, N}, 10), Cm = st::random_tensor<4>({B, T, 1, N}, 11);
  for (const auto rule : {seqmix::AccumulationRule::threshold, seqmix::AccumulationRule::top_k}) {
    seqmix::SelectiveAccumulationOptions options;
    options.rule = rule;
    options.threshold = 0.12f;
    options.top_k = 9;
    INFO("rule " << static_cast<int>(rule));
    Tensor<float, 3> filtered = dt;  // in place
    seqmix::selective_accumulation(filtered.cview(), global, filtered.view(), options, st::two_thread_pool());
    // Naive selection: threshold, or the 9 largest (earliest on ties) by repeated maximum.
    std::vector<std::vector<std::vector<bool>>> selected(B, std::vector<std::vector<bool>>(D, std::vector<bool>(T, true)));
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d) {
        if (!global_flags[d]) continue;
        auto& sel = selected[b][d];
        if (rule == seqmix::AccumulationRule::threshold) {
          for (index_t t = 0; t < T; ++t) sel[t] = dt(b, t, d) > options.threshold;
        } else {
          std::fill(sel.begin(), sel.end(), false);
          for (index_t i = 0; i < options.top_k; ++i) {
            index_t best = -1;
            for (index_t t = 0; t < T; ++t)
              if (!sel[t] && (best < 0 || dt(b, t, d) > dt(b, best, d))) best = t;
            sel[best] = true;
          }
        }
        for (index_t t = 0; t < T; ++t) REQUIRE(filtered(b, t, d) == (sel[t] ? dt(b, t, d) : 0.f));
      }
    // selective_scan on the filtered dt: the state of a global channel holds the selected tokens only.
    seqmix::SelectiveScanInputs in;
    in.u = u.view(), in.delta = filtered.view(), in.A = A.view(), in.Bm = Bm.view(), in.Cm = Cm.view();
    Tensor<float, 3> y({B, T, D}), state({B, D, N});
    seqmix::reference::selective_scan(in, {y.view(), state.view()});
    for (index_t b = 0; b < B; ++b)
      for (index_t d = 0; d < D; ++d)
        for (index_t n = 0; n < N; ++n) {
          double h = 0.0;
          for (index_t t = 0; t < T; ++t)
            if (selected[b][d][t]) h = std::exp(double(dt(b, t, d)) * A(d, n)) * h + double(dt(b, t, d)) * Bm(b, t, 0, n) * u(b, t, d);
          REQUIRE(state(b, d, n) == Approx(h).margin(1e-5));
        }
  }
}

TEST_CASE("long_context: bad arguments refused before any write", "[long_context]") {
  const index_t B = 2, T = 6, D = 3;
  const auto a = st::random_tensor<3>({B, T, D}, 1), b = st::random_tensor<3>({B, T, D}, 2);
  Tensor<float, 3> w({B, T, D});
  w.fill(-7.f);
  seqmix::SlidingWindowOptions options;
  st::require_shape_error("options.window", [&] { seqmix::sliding_window_scan(a.view(), b.view(), w.view(), options); });
  options.window = 2;
  const Tensor<float, 3> b_short({B, T - 1, D});
  st::require_shape_error("b", [&] { seqmix::sliding_window_scan(a.view(), b_short.view(), w.view(), options); });
  Tensor<float, 3> b_mut = b;
  st::require_shape_error("w", [&] { seqmix::sliding_window_scan(a.view(), b_mut.view(), b_mut.view(), options); });
  for (const float v : w) REQUIRE(v == -7.f);
  Tensor<std::int64_t, 2> kept({B, T + 1});
  Tensor<float, 3> pooled({B, T + 1, 4});
  const auto x = st::random_tensor<3>({B, T, 4}, 3);
  st::require_shape_error("kept", [&] { seqmix::decimamba_pool(a.view(), x.view(), kept.view(), pooled.view()); });
  Tensor<std::int64_t, 2> kept2({B, 2});
  Tensor<float, 3> pooled2({B, 2, 4});
  pooled2.fill(-7.f);
  Tensor<float, 3> dt_bad = a;
  dt_bad(1, 1, 1) = std::nanf("");
  st::require_shape_error("dt", [&] { seqmix::decimamba_pool(dt_bad.view(), x.view(), kept2.view(), pooled2.view()); });
  for (const float v : pooled2) REQUIRE(v == -7.f);
  std::vector<std::uint8_t> flags(static_cast<std::size_t>(D + 1), 1);
  Tensor<float, 3> out({B, T, D});
  out.fill(-7.f);
  st::require_shape_error("global", [&] {
    seqmix::selective_accumulation(a.view(), seqmix::ConstView<std::uint8_t, 1>(flags.data(), {D + 1}), out.view());
  });
  seqmix::SelectiveAccumulationOptions bad;
  bad.rule = seqmix::AccumulationRule::top_k;
  bad.top_k = -1;
  st::require_shape_error("options.top_k", [&] {
    seqmix::selective_accumulation(a.view(), seqmix::ConstView<std::uint8_t, 1>(flags.data(), {D}), out.view(), bad);
  });
  for (const float v : out) REQUIRE(v == -7.f);
  seqmix::DeciMambaSchedule schedule;
  schedule.last_layer = 3;
  st::require_shape_error("schedule.base_tokens", [&] { seqmix::decimamba_keep_count(schedule, 1, 10); });
}

}  // namespace

// A NaN dt in a global channel is always selected (it stays visible), under both rules; under
// top_k it takes one of the k places and the rest are the largest finite values, as a naive
// selection gives, whatever the NaN's position (the comparison once broke nth_element's order).
TEST_CASE("long_context: selective accumulation keeps a NaN dt visible", "[long_context]") {
  const index_t B = 1, T = 32, D = 2;
  std::vector<std::uint8_t> flags = {1, 0};
  const seqmix::ConstView<std::uint8_t, 1> global(flags.data(), {D});
  for (const auto rule : {seqmix::AccumulationRule::threshold, seqmix::AccumulationRule::top_k})
    for (const index_t t_nan : {index_t{0}, index_t{10}, index_t{31}})
      for (std::uint64_t seed = 1; seed <= 5; ++seed) {
        INFO("rule " << static_cast<int>(rule) << " t_nan=" << t_nan << " seed=" << seed);
        auto dt = st::random_tensor<3>({B, T, D}, 20 + seed, 0.f, 1.f);
        dt(0, t_nan, 0) = std::nanf("");
        seqmix::SelectiveAccumulationOptions options;
        options.rule = rule, options.threshold = 0.5f, options.top_k = 5;
        Tensor<float, 3> out({B, T, D});
        seqmix::selective_accumulation(dt.cview(), global, out.view(), options);
        REQUIRE(std::isnan(out(0, t_nan, 0)));
        std::vector<bool> sel(T, false);
        sel[t_nan] = true;
        if (rule == seqmix::AccumulationRule::threshold) {
          for (index_t t = 0; t < T; ++t) sel[t] = sel[t] || dt(0, t, 0) > options.threshold;
        } else {
          for (index_t n = 1; n < options.top_k; ++n) {  // the 4 largest finite, earliest on ties
            index_t best = -1;
            for (index_t t = 0; t < T; ++t)
              if (!sel[t] && (best < 0 || dt(0, t, 0) > dt(0, best, 0))) best = t;
            sel[best] = true;
          }
        }
        for (index_t t = 0; t < T; ++t) {
          if (t != t_nan) REQUIRE(out(0, t, 0) == (sel[t] ? dt(0, t, 0) : 0.f));
          REQUIRE(out(0, t, 1) == dt(0, t, 1));
        }
      }
}
