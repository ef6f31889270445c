// The reverse option (core/direction.hpp): every operator run with reverse = true equals the
// forward operator run on explicitly reversed copies (outputs reversed back), for the fast and
// the reference forms, ragged T and B > 1; and bidirectional() equals the sum / concatenation /
// mix of the two directions.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

// An owning copy of `view` with its time axis (dim 1) reversed: what the reverse option must not
// need to make.
template <std::size_t Rank>
Tensor<float, Rank> direction_reversed_copy(const TensorView<const float, Rank>& view) {
  Tensor<float, Rank> t(view.shape());
  seqmix::copy(seqmix::reversed_time_view(view), t.view());
  return t;
}

// Runs of the same shape: T ragged against chunk sizes and SIMD widths, B > 1.
struct DirectionShape {
  index_t B, T;
};
const DirectionShape kDirectionShapes[] = {{1, 1}, {2, 17}, {3, 70}, {1, 129}};

// Reference and fast forms both compute in the same order on the reversed views and on reversed
// copies, except for alignment-dependent vector heads: allow rounding.
constexpr double kDirectionTol = 1e-5;

}  // namespace

TEST_CASE("reverse linear_scan equals the scan of reversed copies", "[direction][scan]") {
  for (const DirectionShape& s : kDirectionShapes) {
    const index_t D = 19;
    INFO("B=" << s.B << " T=" << s.T);
    const auto a = st::random_tensor<3>({s.B, s.T, D}, 1, 0.5f, 1.f);
    const auto b = st::random_tensor<3>({s.B, s.T, D}, 2);
    const auto h0 = st::random_tensor<2>({s.B, D}, 3);
    const auto a_rev = direction_reversed_copy(a.cview()), b_rev = direction_reversed_copy(b.cview());
    for (int fast = 0; fast < 2; ++fast) {
      auto run = [&](auto av, auto bv, TensorView<float, 3> h_all, TensorView<float, 2> h_last, bool reverse) {
        seqmix::LinearScanOptions options;
        options.reverse = reverse;
        if (fast)
          seqmix::linear_scan(av, bv, h0.cview(), h_all, h_last, options, st::two_thread_pool());
        else
          seqmix::reference::linear_scan(av, bv, h0.cview(), h_all, h_last, options);
      };
      Tensor<float, 3> h_all(a.shape()), want_all(a.shape());
      Tensor<float, 2> h_last(h0.shape()), want_last(h0.shape());
      run(a.cview(), b.cview(), h_all.view(), h_last.view(), true);
      run(a_rev.cview(), b_rev.cview(), want_all.view(), want_last.view(), false);
      st::require_close("h_all", h_all.view(), seqmix::reversed_time_view(want_all.view()), kDirectionTol);
      st::require_close("h_last", h_last.view(), want_last.view(), kDirectionTol);
      // In place (h_all is b) still works reversed: each element is read before it is written.
      Tensor<float, 3> in_place(b.shape());
      seqmix::copy(b.cview(), in_place.view());
      run(a.cview(), in_place.cview(), in_place.view(), TensorView<float, 2>(), true);
      st::require_close("in place", in_place.view(), h_all.view(), kDirectionTol);
    }
  }
}

TEST_CASE("reverse causal_conv1d equals the convolution of reversed copies", "[direction][ssm]") {
  for (const DirectionShape& s : kDirectionShapes) {
    const index_t D = 21, W = 4;
    INFO("B=" << s.B << " T=" << s.T);
    const auto x = st::random_tensor<3>({s.B, s.T, D}, 4);
    const auto weight = st::random_tensor<2>({D, W}, 5);
    const auto state0 = st::random_tensor<3>({s.B, W - 1, D}, 6);
    const auto x_rev = direction_reversed_copy(x.cview());
    for (int fast = 0; fast < 2; ++fast) {
      Tensor<float, 3> y(x.shape()), want_y(x.shape()), fs({s.B, W - 1, D}), want_fs({s.B, W - 1, D});
      Tensor<float, 4> ts({s.B, s.T, W - 1, D}), want_ts({s.B, s.T, W - 1, D});
      auto run = [&](TensorView<const float, 3> xv, TensorView<float, 3> yv, TensorView<float, 3> fsv,
                     TensorView<float, 4> tsv, bool reverse) {
        seqmix::CausalConv1dOptions options;
        options.reverse = reverse;
        options.activation = seqmix::ConvActivation::silu;
        const seqmix::CausalConv1dInputs in{xv, weight.cview(), {}, state0.cview()};
        const seqmix::CausalConv1dOutputs out{yv, fsv, tsv};
        if (fast)
          seqmix::causal_conv1d(in, out, options, st::two_thread_pool());
        else
          seqmix::reference::causal_conv1d(in, out, options);
      };
      run(x.cview(), y.view(), fs.view(), ts.view(), true);
      run(x_rev.cview(), want_y.view(), want_fs.view(), want_ts.view(), false);
      st::require_close("y", y.view(), seqmix::reversed_time_view(want_y.view()), kDirectionTol);
      st::require_close("final_state", fs.view(), want_fs.view(), kDirectionTol);
      st::require_close("token_states", ts.view(), seqmix::reversed_time_view(want_ts.view()), kDirectionTol);
    }
  }
}

namespace {

// selective_scan inputs of one shape, and a call of either form in either direction.
struct DirectionScanData {
  index_t B, T, D = 24, N = 16, G = 2;
  Tensor<float, 3> u, delta, z, state0;
  Tensor<float, 2> A;
  Tensor<float, 4> Bm, Cm;
  DirectionScanData(index_t b, index_t t, std::uint64_t seed)
      : B(b), T(t), u(st::random_tensor<3>({b, t, D}, seed)), delta(st::random_tensor<3>({b, t, D}, seed + 1, 0.f, 0.5f)),
        z(st::random_tensor<3>({b, t, D}, seed + 2)), state0(st::random_tensor<3>({b, D, N}, seed + 3)),
        A(st::random_tensor<2>({D, N}, seed + 4, -2.f, -0.1f)), Bm(st::random_tensor<4>({b, t, G, N}, seed + 5)),
        Cm(st::random_tensor<4>({b, t, G, N}, seed + 6)) {}
  DirectionScanData reversed_copy() const {
    DirectionScanData r = *this;
    r.u = direction_reversed_copy(u.cview());
    r.delta = direction_reversed_copy(delta.cview());
    r.z = direction_reversed_copy(z.cview());
    r.Bm = direction_reversed_copy(Bm.cview());
    r.Cm = direction_reversed_copy(Cm.cview());
    return r;
  }
  seqmix::SelectiveScanInputs inputs() const {
    return {u.cview(), delta.cview(), A.cview(), Bm.cview(), Cm.cview(), {}, z.cview(), {}, state0.cview()};
  }
  void run(bool fast, bool reverse, const seqmix::SelectiveScanOutputs& out) const {
    seqmix::SelectiveScanOptions options;
    options.reverse = reverse;
    options.delta_softplus = true;
    if (fast)
      seqmix::selective_scan(inputs(), out, options, st::two_thread_pool());
    else
      seqmix::reference::selective_scan(inputs(), out, options);
  }
};

}  // namespace

TEST_CASE("reverse selective_scan equals the scan of reversed copies", "[direction][ssm]") {
  for (const DirectionShape& s : kDirectionShapes) {
    INFO("B=" << s.B << " T=" << s.T);
    const DirectionScanData data(s.B, s.T, 10), copies = data.reversed_copy();
    const index_t D = data.D, N = data.N;
    for (int fast = 0; fast < 2; ++fast) {
      Tensor<float, 3> y({s.B, s.T, D}), want_y({s.B, s.T, D}), fs({s.B, D, N}), want_fs({s.B, D, N});
      Tensor<float, 4> ts({s.B, s.T, D, N}), want_ts({s.B, s.T, D, N});
      data.run(fast, true, {y.view(), fs.view(), ts.view()});
      copies.run(fast, false, {want_y.view(), want_fs.view(), want_ts.view()});
      st::require_close("y", y.view(), seqmix::reversed_time_view(want_y.view()), kDirectionTol);
      st::require_close("final_state", fs.view(), want_fs.view(), kDirectionTol);
      st::require_close("token_states", ts.view(), seqmix::reversed_time_view(want_ts.view()), kDirectionTol);
    }
  }
}

TEST_CASE("reverse ssd equals ssd of reversed copies, chunked and recurrent", "[direction][ssm]") {
  const index_t H = 4, P = 8, N = 16, G = 2;
  for (const DirectionShape& s : kDirectionShapes) {
    INFO("B=" << s.B << " T=" << s.T);
    const auto x = st::random_tensor<4>({s.B, s.T, H, P}, 20), z = st::random_tensor<4>({s.B, s.T, H, P}, 21);
    const auto dt = st::random_tensor<3>({s.B, s.T, H}, 22, -1.f, 0.5f);
    const auto A = st::random_tensor<1>({H}, 23, -1.5f, -0.2f);
    const auto Bm = st::random_tensor<4>({s.B, s.T, G, N}, 24), Cm = st::random_tensor<4>({s.B, s.T, G, N}, 25);
    const auto state0 = st::random_tensor<4>({s.B, H, P, N}, 26);
    const auto x_r = direction_reversed_copy(x.cview()), z_r = direction_reversed_copy(z.cview());
    const auto dt_r = direction_reversed_copy(dt.cview());
    const auto Bm_r = direction_reversed_copy(Bm.cview()), Cm_r = direction_reversed_copy(Cm.cview());
    for (int form = 0; form < 3; ++form) {  // reference, chunked, recurrent
      INFO("form " << form);
      auto run = [&](bool reverse, const seqmix::SsdInputs& in, const seqmix::SsdOutputs& out) {
        seqmix::SsdOptions options;
        options.reverse = reverse;
        options.dt_softplus = true;
        options.chunk_size = 16;
        options.algorithm = form == 2 ? seqmix::SsdAlgorithm::recurrent : seqmix::SsdAlgorithm::chunked;
        if (form == 0)
          seqmix::reference::ssd(in, out, options);
        else
          seqmix::ssd(in, out, options, st::two_thread_pool());
      };
      Tensor<float, 4> y(x.shape()), want_y(x.shape()), fs(state0.shape()), want_fs(state0.shape());
      run(true, {x.cview(), dt.cview(), A.cview(), Bm.cview(), Cm.cview(), {}, z.cview(), {}, state0.cview()},
          {y.view(), fs.view()});
      run(false, {x_r.cview(), dt_r.cview(), A.cview(), Bm_r.cview(), Cm_r.cview(), {}, z_r.cview(), {}, state0.cview()},
          {want_y.view(), want_fs.view()});
      st::require_close("y", y.view(), seqmix::reversed_time_view(want_y.view()), kDirectionTol);
      st::require_close("final_state", fs.view(), want_fs.view(), kDirectionTol);
    }
  }
}

TEST_CASE("reverse prefill then steps equals one reverse call", "[direction][ssm]") {
  // Tokens T-1..k by a reverse prefill, then k-1..0 by decode steps: the state carries over.
  const DirectionScanData data(2, 23, 40);
  const index_t B = data.B, T = data.T, D = data.D, N = data.N, k = 9;
  Tensor<float, 3> y({B, T, D}), fs({B, D, N});
  data.run(true, true, {y.view(), fs.view()});
  seqmix::SelectiveScanInputs in = data.inputs();
  auto tail = [&](auto view) { return view.slice(1, k, T - k); };
  in.u = tail(in.u), in.delta = tail(in.delta), in.Bm = tail(in.Bm), in.Cm = tail(in.Cm), in.z = tail(in.z);
  Tensor<float, 3> y_split({B, T, D}), state({B, D, N});
  seqmix::SelectiveScanOptions options;
  options.reverse = true;
  options.delta_softplus = true;
  seqmix::selective_scan(in, {tail(y_split.view()), state.view()}, options);
  for (index_t t = k; t-- > 0;) {
    const seqmix::SelectiveScanStepInputs step{data.u.cview().select(1, t), data.delta.cview().select(1, t), data.A.cview(),
                                               data.Bm.cview().select(1, t), data.Cm.cview().select(1, t), {},
                                               data.z.cview().select(1, t)};
    seqmix::selective_scan_step(step, {y_split.view().select(1, t), state.view()}, options);
  }
  st::require_close("y", y_split.view(), y.view(), kDirectionTol);
  st::require_close("state", state.view(), fs.view(), kDirectionTol);
}

TEST_CASE("bidirectional merges forward and reverse by sum, concat and mix", "[direction][ssm]") {
  const DirectionScanData data(3, 37, 50);
  const index_t B = data.B, T = data.T, D = data.D;
  Tensor<float, 3> fwd({B, T, D}), bwd({B, T, D});
  data.run(true, false, {fwd.view()});
  data.run(true, true, {bwd.view()});
  auto run = [&](bool reverse, TensorView<float, 3> y) { data.run(true, reverse, {y}); };

  Tensor<float, 3> sum({B, T, D}), want_sum({B, T, D});
  seqmix::bidirectional<3>(run, sum.view());
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) want_sum(b, t, d) = fwd(b, t, d) + bwd(b, t, d);
  st::require_close("sum", sum.view(), want_sum.view(), 1e-6);

  Tensor<float, 3> cat({B, T, 2 * D});
  seqmix::BidirectionalOptions options;
  options.merge = seqmix::BidirectionalMerge::concat;
  seqmix::bidirectional<3>(run, cat.view(), options);
  st::require_close("concat, forward half", cat.view().slice(2, 0, D), fwd.view(), 0.0);
  st::require_close("concat, reverse half", cat.view().slice(2, D, D), bwd.view(), 0.0);

  Tensor<float, 3> mixed({B, T, D});
  options.merge = seqmix::BidirectionalMerge::mix;
  seqmix::bidirectional<3>(run, mixed.view(), options,
                           [&](seqmix::ConstView<float, 3> f, seqmix::ConstView<float, 3> r, TensorView<float, 3> out) {
                             for (index_t b = 0; b < B; ++b)
                               for (index_t t = 0; t < T; ++t)
                                 for (index_t d = 0; d < D; ++d) out(b, t, d) = f(b, t, d) - 2.f * r(b, t, d);
                           });
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) want_sum(b, t, d) = fwd(b, t, d) - 2.f * bwd(b, t, d);
  st::require_close("mix", mixed.view(), want_sum.view(), 1e-6);
}

TEST_CASE("reverse and bidirectional refuse bad calls before writing", "[direction][errors]") {
  const DirectionScanData data(1, 12, 60);
  const index_t T = data.T, D = data.D;
  auto run = [&](bool reverse, TensorView<float, 3> y) { data.run(true, reverse, {y}); };
  Tensor<float, 3> odd({1, T, 2 * D - 1});
  for (index_t i = 0; i < odd.view().numel(); ++i) odd.data()[i] = 7.f;
  seqmix::BidirectionalOptions options;
  options.merge = seqmix::BidirectionalMerge::concat;
  st::require_shape_error("y", [&] { seqmix::bidirectional<3>(run, odd.view(), options); });
  options.merge = seqmix::BidirectionalMerge::mix;
  st::require_shape_error("mix", [&] { seqmix::bidirectional<3>(run, odd.view(), options); });
  for (index_t i = 0; i < odd.view().numel(); ++i) REQUIRE(odd.data()[i] == 7.f);

  // Packed sequences cannot run reversed: refused, y untouched (also through bidirectional, which
  // runs the reverse direction first).
  const std::vector<std::int32_t> cu{0, 5, 12};
  seqmix::SelectiveScanInputs in = data.inputs();
  in.batch.cu_seqlens = cu;
  in.initial_state = {};
  Tensor<float, 3> y({1, T, D});
  for (index_t i = 0; i < y.view().numel(); ++i) y.data()[i] = 7.f;
  seqmix::SelectiveScanOptions reverse;
  reverse.reverse = true;
  st::require_shape_error("options.reverse", [&] { seqmix::selective_scan(in, {y.view()}, reverse); });
  st::require_shape_error("options.reverse", [&] { seqmix::reference::selective_scan(in, {y.view()}, reverse); });
  auto run_packed = [&](bool rev, TensorView<float, 3> out) {
    seqmix::SelectiveScanOptions o;
    o.reverse = rev;
    seqmix::selective_scan(in, {out}, o);
  };
  st::require_shape_error("options.reverse", [&] { seqmix::bidirectional<3>(run_packed, y.view()); });
  for (index_t i = 0; i < y.view().numel(); ++i) REQUIRE(y.data()[i] == 7.f);
}
