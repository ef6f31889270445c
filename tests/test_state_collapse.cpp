// ssm/long_context state-collapse remedies (stronger forgetting, state normalization) for ssd and
// selective_scan: the fast forms against the plain-loop references over ragged shapes (T not a
// multiple of the interval, T = 1, odd P, B > 1, grouped B/C), reverse, token_states and state
// slots; the defaults equal the plain operators; the normalized state keeps its norm at the
// threshold; prefill then steps equal one call; bad options refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/ssm/long_context/collapse.hpp"
#include "seqmix/ssm/long_context/collapse_reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// One ssd problem: inputs drawn so that the state grows (slow decay, inputs of one sign).
struct CollapseSsdProblem {
  index_t B, T, H, P, N, G;
  Tensor<float, 4> x, Bm, Cm, z, initial;
  Tensor<float, 3> dt;
  Tensor<float, 1> A, D;
  CollapseSsdProblem(index_t b, index_t t, index_t h, index_t p, index_t n, index_t g)
      : B(b), T(t), H(h), P(p), N(n), G(g),
        x(st::random_tensor<4>({b, t, h, p}, 11, 0.f, 1.f)), Bm(st::random_tensor<4>({b, t, g, n}, 12, -0.2f, 1.f)),
        Cm(st::random_tensor<4>({b, t, g, n}, 13)), z(st::random_tensor<4>({b, t, h, p}, 14)),
        initial(st::random_tensor<4>({b, h, p, n}, 15)), dt(st::random_tensor<3>({b, t, h}, 16, 0.01f, 0.2f)),
        A(st::random_tensor<1>({h}, 17, -0.3f, -0.01f)), D(st::random_tensor<1>({h}, 18)) {}
  seqmix::SsdInputs inputs(bool with_initial) const {
    seqmix::SsdInputs in{x.view(), dt.view(), A.view(), Bm.view(), Cm.view(), D.view(), z.view()};
    if (with_initial) in.initial_state = initial.view();
    return in;
  }
};

seqmix::StateCollapseOptions collapse_test_remedies(const Tensor<float, 1>& thresholds, index_t interval) {
  seqmix::StateCollapseOptions r;
  r.decay_scale = 1.5f;
  r.decay_offset = -0.02f;
  r.input_scale = 0.8f;
  r.input_clip = 0.7f;
  r.norm_threshold = thresholds.view();
  r.interval = interval;
  return r;
}

TEST_CASE("state collapse: ssd_with_remedies equals its reference", "[long_context][collapse][ssd]") {
  const auto& pool = st::two_thread_pool();
  for (const index_t T : {1, 37, 130})
    for (const index_t interval : {1, 16, 64})
      for (const bool reverse : {false, true}) {
        INFO("T=" << T << " interval=" << interval << " reverse=" << reverse);
        const CollapseSsdProblem pr(2, T, 4, 5, 8, 2);
        const auto thresholds = st::random_tensor<1>({4}, 19, 0.3f, 0.8f);
        const auto remedies = collapse_test_remedies(thresholds, interval);
        seqmix::SsdOptions options;
        options.reverse = reverse;
        options.chunk_size = 16;
        Tensor<float, 4> y({2, T, 4, 5}), ref_y({2, T, 4, 5}), fs({2, 4, 5, 8}), ref_fs({2, 4, 5, 8});
        Tensor<float, 5> ts({2, T, 4, 5, 8}), ref_ts({2, T, 4, 5, 8});
        seqmix::reference::ssd_with_remedies(pr.inputs(true), {ref_y.view(), ref_fs.view(), ref_ts.view()}, options, remedies);
        for (const auto algorithm : {seqmix::SsdAlgorithm::chunked, seqmix::SsdAlgorithm::recurrent}) {
          options.algorithm = algorithm;
          seqmix::ssd_with_remedies(pr.inputs(true), {y.view(), fs.view(), {}}, options, remedies, pool);
          st::require_close("y", y.cview(), ref_y.cview(), 2e-5);
          st::require_close("final_state", fs.cview(), ref_fs.cview(), 2e-5);
        }
        seqmix::ssd_with_remedies(pr.inputs(true), {y.view(), fs.view(), ts.view()}, options, remedies);
        st::require_close("token_states", ts.cview(), ref_ts.cview(), 2e-5);
      }
}

TEST_CASE("state collapse: normalization holds each head's state at its threshold", "[long_context][collapse][ssd]") {
  const CollapseSsdProblem pr(2, 96, 3, 4, 8, 1);
  Tensor<float, 1> thresholds({3});
  for (index_t h = 0; h < 3; ++h) thresholds(h) = 0.25f * static_cast<float>(h + 1);
  seqmix::StateCollapseOptions remedies;
  remedies.norm_threshold = thresholds.view();
  remedies.interval = 32;
  Tensor<float, 4> y({2, 96, 3, 4}), fs({2, 3, 4, 8}), plain_y({2, 96, 3, 4}), plain_fs({2, 3, 4, 8});
  seqmix::ssd_with_remedies(pr.inputs(false), {y.view(), fs.view()}, {}, remedies);
  seqmix::ssd(pr.inputs(false), {plain_y.view(), plain_fs.view()});
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 3; ++h) {
      double norm = 0.0, plain = 0.0;
      for (index_t p = 0; p < 4; ++p)
        for (index_t n = 0; n < 8; ++n) {
          norm += double(fs(b, h, p, n)) * fs(b, h, p, n);
          plain += double(plain_fs(b, h, p, n)) * plain_fs(b, h, p, n);
        }
      INFO("b=" << b << " h=" << h << " plain norm " << std::sqrt(plain));
      REQUIRE(std::sqrt(plain) > thresholds(h));  // the inputs make the state grow past it
      CHECK(std::sqrt(norm) == Approx(thresholds(h)).epsilon(1e-5));
    }
  // The first interval is untouched by normalization: its outputs equal plain ssd's.
  st::require_close("first interval", y.cview().slice(1, 0, 32), plain_y.cview().slice(1, 0, 32), 1e-5);
}

TEST_CASE("state collapse: default remedies equal the plain operators", "[long_context][collapse]") {
  const CollapseSsdProblem pr(2, 45, 2, 3, 4, 2);
  Tensor<float, 4> y({2, 45, 2, 3}), ref({2, 45, 2, 3}), fs({2, 2, 3, 4}), ref_fs({2, 2, 3, 4});
  seqmix::ssd_with_remedies(pr.inputs(true), {y.view(), fs.view()}, {}, {});
  seqmix::ssd(pr.inputs(true), {ref.view(), ref_fs.view()});
  st::require_close("ssd y", y.cview(), ref.cview(), 1e-6);
  st::require_close("ssd final_state", fs.cview(), ref_fs.cview(), 1e-6);

  const index_t B = 2, T = 45, D = 6, N = 4;
  const auto u = st::random_tensor<3>({B, T, D}, 31), delta = st::random_tensor<3>({B, T, D}, 32, 0.f, 0.3f);
  const auto A = st::random_tensor<2>({D, N}, 33, -1.f, -0.1f);
  const auto Bm = st::random_tensor<4>({B, T, 2, N}, 34), Cm = st::random_tensor<4>({B, T, 2, N}, 35);
  Tensor<float, 3> sy({B, T, D}), sref({B, T, D});
  seqmix::selective_scan_with_remedies({u.view(), delta.view(), A.view(), Bm.view(), Cm.view()}, {sy.view()}, {}, {});
  seqmix::selective_scan({u.view(), delta.view(), A.view(), Bm.view(), Cm.view()}, {sref.view()});
  st::require_close("selective_scan y", sy.cview(), sref.cview(), 1e-6);
}

TEST_CASE("state collapse: selective_scan_with_remedies equals its reference", "[long_context][collapse][selective_scan]") {
  const auto& pool = st::two_thread_pool();
  const index_t B = 2, D = 11, N = 5, G = 1;
  for (const index_t T : {1, 50, 129})
    for (const index_t interval : {1, 32})
      for (const bool reverse : {false, true}) {
        INFO("T=" << T << " interval=" << interval << " reverse=" << reverse);
        const auto u = st::random_tensor<3>({B, T, D}, 41, 0.f, 1.f), delta = st::random_tensor<3>({B, T, D}, 42, 0.f, 0.3f);
        const auto A = st::random_tensor<2>({D, N}, 43, -0.5f, -0.01f);
        const auto bias = st::random_tensor<1>({D}, 44);
        const auto Bm = st::random_tensor<4>({B, T, G, N}, 45, -0.2f, 1.f), Cm = st::random_tensor<4>({B, T, G, N}, 46);
        const auto z = st::random_tensor<3>({B, T, D}, 47);
        const auto skip = st::random_tensor<1>({D}, 48);
        const auto initial = st::random_tensor<3>({B, D, N}, 49);
        const auto thresholds = st::random_tensor<1>({D}, 50, 0.2f, 0.6f);
        seqmix::SelectiveScanInputs in{u.view(), delta.view(), A.view(), Bm.view(), Cm.view(), skip.view(), z.view(),
                                       bias.view(), initial.view()};
        seqmix::SelectiveScanOptions options;
        options.delta_softplus = true;
        options.reverse = reverse;
        const auto remedies = collapse_test_remedies(thresholds, interval);
        Tensor<float, 3> y({B, T, D}), ref({B, T, D}), fs({B, D, N}), ref_fs({B, D, N});
        Tensor<float, 4> ts({B, T, D, N}), ref_ts({B, T, D, N});
        seqmix::reference::selective_scan_with_remedies(in, {ref.view(), ref_fs.view(), ref_ts.view()}, options, remedies);
        seqmix::selective_scan_with_remedies(in, {y.view(), fs.view(), ts.view()}, options, remedies, pool);
        st::require_close("y", y.cview(), ref.cview(), 2e-5);
        st::require_close("final_state", fs.cview(), ref_fs.cview(), 2e-5);
        st::require_close("token_states", ts.cview(), ref_ts.cview(), 2e-5);
      }
}

TEST_CASE("state collapse: prefill then steps equal one call", "[long_context][collapse]") {
  const index_t B = 2, T = 70, H = 3, P = 5, N = 4, G = 1, split = 32, interval = 16;
  const CollapseSsdProblem pr(B, T, H, P, N, G);
  const auto thresholds = st::random_tensor<1>({H}, 61, 0.3f, 0.6f);
  const auto remedies = collapse_test_remedies(thresholds, interval);
  Tensor<float, 4> y({B, T, H, P}), fs({B, H, P, N}), state({B, H, P, N});
  seqmix::ssd_with_remedies(pr.inputs(true), {y.view(), fs.view()}, {}, remedies);
  seqmix::SsdInputs head = pr.inputs(true);
  head.x = head.x.slice(1, 0, split), head.dt = head.dt.slice(1, 0, split);
  head.Bm = head.Bm.slice(1, 0, split), head.Cm = head.Cm.slice(1, 0, split), head.z = head.z.slice(1, 0, split);
  Tensor<float, 4> y_head({B, split, H, P});
  seqmix::ssd_with_remedies(head, {y_head.view(), state.view()}, {}, remedies);
  st::require_close("prefill part", y_head.cview(), y.cview().slice(1, 0, split), 1e-5);
  Tensor<float, 3> y_step({B, H, P});
  Tensor<std::int64_t, 1> positions({B});
  for (index_t t = split; t < T; ++t) {
    for (index_t b = 0; b < B; ++b) positions(b) = t;
    seqmix::SsdStepInputs in{pr.x.cview().select(1, t), pr.dt.cview().select(1, t), pr.A.view(), pr.Bm.cview().select(1, t),
                             pr.Cm.cview().select(1, t), pr.D.view(), pr.z.cview().select(1, t)};
    seqmix::ssd_step_with_remedies(in, {y_step.view(), state.view()}, {}, remedies, positions.view());
    st::require_close("step", y_step.cview(), y.cview().select(1, t), 1e-5);
  }
  st::require_close("final state", state.cview(), fs.cview(), 1e-5);

  // selective_scan the same way, with state slots in the prefill (rows 2 and 0 of a pool of 3).
  const index_t D = 7;
  const auto u = st::random_tensor<3>({B, T, D}, 71, 0.f, 1.f), delta = st::random_tensor<3>({B, T, D}, 72, 0.f, 0.3f);
  const auto A = st::random_tensor<2>({D, N}, 73, -0.5f, -0.01f);
  const auto Bm = st::random_tensor<4>({B, T, 1, N}, 74, 0.f, 1.f), Cm = st::random_tensor<4>({B, T, 1, N}, 75);
  const auto sthresh = st::random_tensor<1>({D}, 76, 0.2f, 0.4f);
  const auto sremedies = collapse_test_remedies(sthresh, interval);
  Tensor<float, 3> sy({B, T, D}), pool({3, D, N}), one_pool({3, D, N});
  Tensor<std::int32_t, 1> slots({B});
  slots(0) = 2, slots(1) = 0;
  seqmix::SequenceBatch batch;
  batch.state_indices = slots.cview();
  seqmix::SelectiveScanInputs whole{u.view(), delta.view(), A.view(), Bm.view(), Cm.view()};
  whole.initial_state = one_pool.view();
  whole.batch = batch;
  seqmix::selective_scan_with_remedies(whole, {sy.view(), one_pool.view()}, {}, sremedies);
  seqmix::SelectiveScanInputs part = whole;
  part.u = u.cview().slice(1, 0, split), part.delta = delta.cview().slice(1, 0, split);
  part.Bm = Bm.cview().slice(1, 0, split), part.Cm = Cm.cview().slice(1, 0, split);
  part.initial_state = pool.view();
  Tensor<float, 3> sy_head({B, split, D});
  seqmix::selective_scan_with_remedies(part, {sy_head.view(), pool.view()}, {}, sremedies);
  st::require_close("slotted prefill part", sy_head.cview(), sy.cview().slice(1, 0, split), 1e-5);
  Tensor<float, 2> sy_step({B, D});
  for (index_t t = split; t < T; ++t) {
    for (index_t b = 0; b < B; ++b) positions(b) = t;
    seqmix::SelectiveScanStepInputs in{u.cview().select(1, t), delta.cview().select(1, t), A.view(),
                                       Bm.cview().select(1, t), Cm.cview().select(1, t)};
    in.batch.state_indices = slots.cview();
    seqmix::selective_scan_step_with_remedies(in, {sy_step.view(), pool.view()}, {}, sremedies, positions.view());
    st::require_close("selective step", sy_step.cview(), sy.cview().select(1, t), 1e-5);
  }
  st::require_close("pool", pool.cview(), one_pool.cview(), 1e-5);
}

TEST_CASE("state collapse: bad options are refused before any write", "[long_context][collapse][errors]") {
  const CollapseSsdProblem pr(1, 8, 2, 3, 4, 1);
  const auto thresholds = st::random_tensor<1>({2}, 81, 0.1f, 0.2f);
  Tensor<float, 4> y({1, 8, 2, 3}), fs({1, 2, 3, 4});
  y(0, 0, 0, 0) = 42.f;
  auto expect = [&](const char* argument, const seqmix::StateCollapseOptions& r) {
    st::require_shape_error(argument, [&] { seqmix::ssd_with_remedies(pr.inputs(false), {y.view(), fs.view()}, {}, r); });
    st::require_shape_error(argument, [&] { seqmix::reference::ssd_with_remedies(pr.inputs(false), {y.view(), fs.view()}, {}, r); });
    CHECK(y(0, 0, 0, 0) == 42.f);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  seqmix::StateCollapseOptions r;
  r.decay_scale = 0.f;
  expect("remedies.decay_scale", r);
  r = {}, r.decay_scale = nan;
  expect("remedies.decay_scale", r);
  r = {}, r.decay_offset = 0.1f;
  expect("remedies.decay_offset", r);
  r = {}, r.input_scale = -1.f;
  expect("remedies.input_scale", r);
  r = {}, r.input_clip = nan;
  expect("remedies.input_clip", r);
  r = {}, r.interval = 0, r.norm_threshold = thresholds.view();
  expect("remedies.interval", r);
  const auto wrong = st::random_tensor<1>({3}, 82, 0.1f, 0.2f);
  r = {}, r.norm_threshold = wrong.view();
  expect("remedies.norm_threshold", r);
  Tensor<float, 1> zero({2});
  r = {}, r.norm_threshold = zero.view();
  expect("remedies.norm_threshold", r);

  // Packed sequences are refused; state slots with a threshold need final_state.
  Tensor<std::int32_t, 1> cu({2});
  cu(1) = 8;
  seqmix::SsdInputs packed = pr.inputs(false);
  packed.batch.cu_seqlens = cu.cview();
  st::require_shape_error("batch.cu_seqlens",
                          [&] { seqmix::ssd_with_remedies(packed, {y.view()}, {}, collapse_test_remedies(thresholds, 4)); });
  Tensor<std::int32_t, 1> slots({1});
  Tensor<float, 4> pool({2, 2, 3, 4});
  seqmix::SsdInputs slotted = pr.inputs(false);
  slotted.initial_state = pool.view();
  slotted.batch.state_indices = slots.cview();
  st::require_shape_error("final_state",
                          [&] { seqmix::ssd_with_remedies(slotted, {y.view()}, {}, collapse_test_remedies(thresholds, 4)); });
  CHECK(y(0, 0, 0, 0) == 42.f);

  // The step: negative positions and bad thresholds leave the state untouched.
  Tensor<float, 3> ys({1, 2, 3});
  Tensor<float, 4> state({1, 2, 3, 4});
  state(0, 0, 0, 0) = 7.f;
  Tensor<std::int64_t, 1> positions({1});
  positions(0) = -1;
  seqmix::SsdStepInputs in{pr.x.cview().select(1, 0), pr.dt.cview().select(1, 0), pr.A.view(), pr.Bm.cview().select(1, 0),
                           pr.Cm.cview().select(1, 0)};
  st::require_shape_error("positions", [&] {
    seqmix::ssd_step_with_remedies(in, {ys.view(), state.view()}, {}, collapse_test_remedies(thresholds, 4), positions.view());
  });
  r = {}, r.norm_threshold = wrong.view();
  st::require_shape_error("remedies.norm_threshold", [&] { seqmix::ssd_step_with_remedies(in, {ys.view(), state.view()}, {}, r); });
  CHECK(state(0, 0, 0, 0) == 7.f);
}

}  // namespace
