// memory_tokens: segment recurrence against one long call where the memory tokens carry a causal
// layer's state and are otherwise passed through (identity); the fast form against the reference
// with an attention layer, recall on and off; ragged segments, M = 0, B > 1, 1 and 2 threads;
// bad arguments refused before any write and before the layer runs.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include "seqmix/attention.hpp"
#include "seqmix/memory.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// A causal layer whose state is the first memory token: s = read[0] (0 when M = 0), then per
// segment token s = 0.9 s + tanh(x); out = s. The first write token gets s, the other write
// tokens pass through unchanged (identity), the read tokens are copied.
struct MemTokScanLayer {
  index_t M;
  void operator()(const seqmix::ConstView<float, 3>& in, const seqmix::TensorView<float, 3>& out) const {
    const index_t n = in.size(1), D = in.size(2), len = n - 2 * M;
    for (index_t b = 0; b < in.size(0); ++b)
      for (index_t c = 0; c < D; ++c) {
        float s = M > 0 ? in(b, 0, c) : 0.f;
        for (index_t m = 0; m < M; ++m) out(b, m, c) = in(b, m, c);
        for (index_t j = 0; j < len; ++j) out(b, M + j, c) = s = 0.9f * s + std::tanh(in(b, M + j, c));
        for (index_t m = 0; m < M; ++m) out(b, M + len + m, c) = m == 0 ? s : in(b, M + len + m, c);
      }
  }
};

// Causal softmax attention of the layer input over itself, q = k = v = in split in H heads.
struct MemTokAttentionLayer {
  index_t H;
  void operator()(const seqmix::ConstView<float, 3>& in, const seqmix::TensorView<float, 3>& out) const {
    const index_t B = in.size(0), n = in.size(1), dh = in.size(2) / H;
    const seqmix::ConstView<float, 4> qkv(in.data(), {B, n, H, dh});
    seqmix::AttentionOptions options;
    options.causal = true;
    seqmix::AttentionInputs<float> in_qkv;
    in_qkv.q = qkv, in_qkv.k = qkv, in_qkv.v = qkv;
    seqmix::attention(in_qkv, {seqmix::TensorView<float, 4>(out.data(), {B, n, H, dh}), {}}, options);
  }
};

}  // namespace

TEST_CASE("memory_tokens segments equal one long call when the memory carries the state", "[memory_tokens]") {
  struct Shape { index_t B, T, M, D, segment; };
  const Shape shapes[] = {{1, 1, 1, 1, 1}, {2, 37, 3, 5, 8}, {3, 64, 1, 7, 64}, {2, 50, 2, 4, 7}, {1, 20, 4, 3, 1},
                          {2, 19, 0, 6, 5}};  // M = 0: a token-wise-restarting scan, checked below
  std::uint64_t seed = 1200;
  for (const auto& s : shapes) {
    CAPTURE(s.B, s.T, s.M, s.D, s.segment);
    const auto x = st::random_tensor<3>({s.B, s.T, s.D}, seed++, -2.f, 2.f);
    const auto memory = st::random_tensor<3>({s.B, s.M, s.D}, seed++);
    const MemTokScanLayer layer{s.M};
    Tensor<float, 3> y_long({s.B, s.T, s.D}), m_long({s.B, s.M, s.D}), y(y_long.shape()), m(m_long.shape());
    Tensor<float, 3> y2(y_long.shape()), m2(m_long.shape());
    seqmix::memory_tokens({x.cview(), memory.cview()}, {y_long.view(), m_long.view()}, layer);  // one segment
    seqmix::MemoryTokensOptions options;
    options.segment = s.segment;
    seqmix::memory_tokens({x.cview(), memory.cview()}, {y.view(), m.view()}, layer, options);
    seqmix::memory_tokens({x.cview(), memory.cview()}, {y2.view(), m2.view()}, layer, options, st::two_thread_pool());
    if (s.M > 0) {
      st::require_close("y", y.cview(), y_long.cview(), 1e-6);
      st::require_close("final_memory", m.cview(), m_long.cview(), 1e-6);
      for (index_t mm = 1; mm < s.M; ++mm)  // the pass-through tokens come back unchanged
        for (index_t b = 0; b < s.B; ++b)
          for (index_t c = 0; c < s.D; ++c) REQUIRE(m.view()(b, mm, c) == memory.cview()(b, mm, c));
    } else {
      // No memory: every segment restarts the scan from 0.
      for (index_t b = 0; b < s.B; ++b)
        for (index_t c = 0; c < s.D; ++c) {
          float state = 0.f;
          for (index_t t = 0; t < s.T; ++t) {
            if (t % s.segment == 0) state = 0.f;
            state = 0.9f * state + std::tanh(x.cview()(b, t, c));
            // Within rounding, not bit for bit: the compiler may contract 0.9 s + tanh into an FMA
            // in one of the two loops and not in the other (-march=native: it did in CI).
            REQUIRE(y.view()(b, t, c) == Approx(state).epsilon(1e-6).margin(1e-6));
          }
        }
    }
    for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y2.data()[i] == y.data()[i]);
    for (index_t i = 0; i < m.numel(); ++i) REQUIRE(m2.data()[i] == m.data()[i]);
  }
}

TEST_CASE("memory_tokens with an attention layer equals the reference, recall on and off", "[memory_tokens]") {
  struct Shape { index_t B, T, M, D, H, segment, recall; };
  const Shape shapes[] = {{1, 1, 1, 4, 1, 0, 0},  {2, 33, 4, 8, 2, 8, 0},  {2, 33, 4, 8, 2, 8, 3},
                          {3, 40, 2, 6, 3, 13, 2}, {2, 17, 0, 4, 1, 5, 0},  {1, 70, 3, 10, 2, 16, 10},
                          {2, 24, 2, 4, 2, 24, 1}};
  std::uint64_t seed = 1300;
  for (const auto& s : shapes) {
    CAPTURE(s.B, s.T, s.M, s.D, s.H, s.segment, s.recall);
    const auto x = st::random_tensor<3>({s.B, s.T, s.D}, seed++, -1.5f, 1.5f);
    const auto memory = st::random_tensor<3>({s.B, s.M, s.D}, seed++);
    const MemTokAttentionLayer layer{s.H};
    seqmix::MemoryTokensOptions options;
    options.segment = s.segment, options.recall = s.recall;
    Tensor<float, 3> y_ref({s.B, s.T, s.D}), m_ref({s.B, s.M, s.D}), y(y_ref.shape()), m(m_ref.shape());
    seqmix::reference::memory_tokens({x.cview(), memory.cview()}, {y_ref.view(), m_ref.view()}, layer, options);
    seqmix::memory_tokens({x.cview(), memory.cview()}, {y.view(), m.view()}, layer, options, st::two_thread_pool());
    st::require_close("y", y.cview(), y_ref.cview(), 1e-5);
    st::require_close("final_memory", m.cview(), m_ref.cview(), 1e-5);
    if (s.recall == 1 || s.recall == 3) {
      // recall 1 reads the carried memory: the same as no recall, bit for bit.
      auto plain = options;
      plain.recall = s.recall == 1 ? 0 : 1;
      Tensor<float, 3> y0(y.shape()), m0(m.shape());
      seqmix::memory_tokens({x.cview(), memory.cview()}, {y0.view(), m0.view()}, layer, plain);
      if (s.recall == 1) {
        for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y0.data()[i] == y.data()[i]);
      } else {  // recall 3 mixes older memories in: the outputs after the first segment change
        double diff = 0;
        for (index_t i = 0; i < y.numel(); ++i) diff = std::max(diff, std::abs(double(y0.data()[i]) - y.data()[i]));
        REQUIRE(diff > 1e-4);
      }
    }
  }
}

TEST_CASE("memory_tokens recall with the caller's query and key projections", "[memory_tokens]") {
  const index_t B = 2, T = 40, M = 3, D = 6, R = 4;
  const auto x = st::random_tensor<3>({B, T, D}, 1500, -1.5f, 1.5f);
  const auto memory = st::random_tensor<3>({B, M, D}, 1501);
  const auto wq = st::random_tensor<2>({D, R}, 1502), wk = st::random_tensor<2>({D, R}, 1503);
  const MemTokAttentionLayer layer{2};
  seqmix::MemoryTokensOptions options;
  options.segment = 9, options.recall = 3;
  Tensor<float, 3> y_ref({B, T, D}), m_ref({B, M, D}), y(y_ref.shape()), m(m_ref.shape()), y_plain(y_ref.shape()), m_plain(m_ref.shape());
  seqmix::reference::memory_tokens({x.cview(), memory.cview(), wq.cview(), wk.cview()}, {y_ref.view(), m_ref.view()}, layer, options);
  seqmix::memory_tokens({x.cview(), memory.cview(), wq.cview(), wk.cview()}, {y.view(), m.view()}, layer, options,
                        st::two_thread_pool());
  st::require_close("y", y.cview(), y_ref.cview(), 1e-5);
  st::require_close("final_memory", m.cview(), m_ref.cview(), 1e-5);
  // The projections change the scores, hence the outputs after the first segment.
  seqmix::memory_tokens({x.cview(), memory.cview()}, {y_plain.view(), m_plain.view()}, layer, options);
  double diff = 0;
  for (index_t i = 0; i < y.numel(); ++i) diff = std::max(diff, std::abs(double(y_plain.data()[i]) - y.data()[i]));
  REQUIRE(diff > 1e-4);
  // Identity projections (R = D, recall_scale fixed) give the plain recall.
  Tensor<float, 2> eye({D, D});
  for (index_t c = 0; c < D; ++c) eye(c, c) = 1.f;
  Tensor<float, 3> y_eye(y.shape()), m_eye(m.shape());
  seqmix::memory_tokens({x.cview(), memory.cview(), eye.cview(), eye.cview()}, {y_eye.view(), m_eye.view()}, layer, options);
  st::require_close("identity projections", y_eye.cview(), y_plain.cview(), 1e-6);
}

TEST_CASE("memory_tokens bad arguments are refused before any write or layer call", "[memory_tokens]") {
  const index_t B = 2, T = 9, M = 2, D = 4;
  const auto x = st::random_tensor<3>({B, T, D}, 1400);
  const auto memory = st::random_tensor<3>({B, M, D}, 1401);
  const auto memory_bad = st::random_tensor<3>({B, M, D + 1}, 1402);
  const auto no_memory = Tensor<float, 3>({B, 0, D});
  Tensor<float, 3> y({B, T, D}), m({B, M, D}), m0({B, 0, D}), y_short({B, T - 1, D});
  int calls = 0;
  const auto layer = [&](const seqmix::ConstView<float, 3>&, const seqmix::TensorView<float, 3>& out) {
    ++calls;
    for (auto* p = out.data(); p != out.data() + out.numel(); ++p) *p = 0.f;
  };
  const auto expect_refused = [&](const char* argument, const seqmix::MemoryTokensInputs& in,
                                  const seqmix::MemoryTokensOutputs& out, const seqmix::MemoryTokensOptions& o) {
    for (auto& e : y) e = 7.f;
    for (auto& e : m) e = 7.f;
    st::require_shape_error(argument, [&] { seqmix::memory_tokens(in, out, layer, o); });
    st::require_shape_error(argument, [&] { seqmix::reference::memory_tokens(in, out, layer, o); });
    for (const float e : y) REQUIRE(e == 7.f);
    for (const float e : m) REQUIRE(e == 7.f);
    REQUIRE(calls == 0);
  };
  seqmix::MemoryTokensOptions o;
  o.segment = -1;
  expect_refused("segment", {x.cview(), memory.cview()}, {y.view(), m.view()}, o);
  o.segment = 4, o.recall = -2;
  expect_refused("recall", {x.cview(), memory.cview()}, {y.view(), m.view()}, o);
  o.recall = 2;  // recall without memory tokens
  expect_refused("recall", {x.cview(), no_memory.cview()}, {y.view(), m0.view()}, o);
  o.recall_scale = std::numeric_limits<float>::quiet_NaN();
  expect_refused("recall_scale", {x.cview(), memory.cview()}, {y.view(), m.view()}, o);
  o.recall_scale = 0.f;
  const auto wq = st::random_tensor<2>({D, 3}, 1403), wk_bad = st::random_tensor<2>({D, 2}, 1404);
  expect_refused("recall_key", {x.cview(), memory.cview(), wq.cview(), wk_bad.cview()}, {y.view(), m.view()}, o);
  expect_refused("recall_key", {x.cview(), memory.cview(), wq.cview()}, {y.view(), m.view()}, o);  // only one given
  auto no_recall = o;
  no_recall.recall = 0;
  expect_refused("recall_query", {x.cview(), memory.cview(), wq.cview(), wq.cview()}, {y.view(), m.view()}, no_recall);
  expect_refused("memory", {x.cview(), memory_bad.cview()}, {y.view(), m.view()}, o);
  expect_refused("y", {x.cview(), memory.cview()}, {y_short.view(), m.view()}, o);
  // final_memory aliasing x (its first rows).
  expect_refused("final_memory", {x.cview(), memory.cview()},
                 {y.view(), seqmix::TensorView<float, 3>(const_cast<float*>(x.data()), {B, M, D})}, o);
}

TEST_CASE("memory_tokens_step continues a segmented prefill exactly, recall cache included", "[memory_tokens]") {
  struct Shape { index_t B, T, M, D, H, segment, recall, prefill; };
  const Shape shapes[] = {{2, 45, 3, 8, 2, 8, 0, 16}, {2, 45, 3, 8, 2, 8, 3, 16}, {1, 23, 2, 6, 3, 5, 2, 0},
                          {2, 9, 1, 4, 1, 4, 5, 8}, {2, 17, 0, 4, 1, 5, 0, 10}};
  std::uint64_t seed = 1500;
  for (const auto& s : shapes) {
    CAPTURE(s.B, s.T, s.M, s.D, s.segment, s.recall, s.prefill);
    const auto x = st::random_tensor<3>({s.B, s.T, s.D}, seed++, -1.5f, 1.5f);
    const auto memory = st::random_tensor<3>({s.B, s.M, s.D}, seed++);
    const auto wq = st::random_tensor<2>({s.D, 3}, seed++), wk = st::random_tensor<2>({s.D, 3}, seed++);
    const MemTokAttentionLayer layer{s.H};
    seqmix::MemoryTokensOptions options;
    options.segment = s.segment, options.recall = s.recall;
    seqmix::MemoryTokensInputs whole{x.cview(), memory.cview()};
    if (s.recall > 0) whole.recall_query = wq.cview(), whole.recall_key = wk.cview();
    Tensor<float, 3> y({s.B, s.T, s.D}), m({s.B, s.M, s.D}), y_steps({s.B, s.T, s.D});
    seqmix::memory_tokens(whole, {y.view(), m.view()}, layer, options, st::two_thread_pool());
    // The prefill (a whole number of segments) from the state, then one segment per step.
    seqmix::MemoryTokensState state(memory.cview(), s.recall);
    for (index_t t0 = 0; t0 < s.T;) {
      const index_t n = t0 == 0 && s.prefill > 0 ? s.prefill : std::min(s.segment, s.T - t0);
      seqmix::MemoryTokensInputs piece{x.cview().slice(1, t0, n), {}};
      piece.recall_query = whole.recall_query, piece.recall_key = whole.recall_key;
      seqmix::memory_tokens_step(state, piece, y_steps.view().slice(1, t0, n), layer, options, st::two_thread_pool());
      t0 += n;
    }
    for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y_steps.data()[i] == y.data()[i]);
    for (index_t i = 0; i < m.numel(); ++i) REQUIRE(state.memory().data()[i] == m.data()[i]);
    REQUIRE(state.cached() == std::min<index_t>(s.recall, 1 + (s.T + s.segment - 1) / s.segment));
  }
}

TEST_CASE("memory_tokens_step refuses bad arguments before any write or state change", "[memory_tokens]") {
  const index_t B = 2, M = 2, D = 4;
  const auto x = st::random_tensor<3>({B, 6, D}, 1600), memory = st::random_tensor<3>({B, M, D}, 1601);
  seqmix::MemoryTokensState state(memory.cview(), 2);
  Tensor<float, 3> y({B, 6, D});
  y.view()(0, 0, 0) = 7.f;
  int calls = 0;
  const auto layer = [&](const seqmix::ConstView<float, 3>& in, const seqmix::TensorView<float, 3>& out) {
    ++calls;
    for (index_t i = 0; i < in.numel(); ++i) out.data()[i] = in.data()[i];
  };
  seqmix::MemoryTokensOptions options;
  options.recall = 2;
  auto wrong = options;
  wrong.recall = 1;
  REQUIRE_THROWS_AS(seqmix::memory_tokens_step(state, {x.cview(), {}}, y.view(), layer, wrong), seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::memory_tokens_step(state, {x.cview(), memory.cview()}, y.view(), layer, options), seqmix::ShapeError);
  const auto x_wide = st::random_tensor<3>({B, 6, D + 1}, 1602);
  REQUIRE_THROWS_AS(seqmix::memory_tokens_step(state, {x_wide.cview(), {}}, y.view(), layer, options), seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::MemoryTokensState(memory.cview(), -1), seqmix::ShapeError);
  const auto no_mem = st::random_tensor<3>({B, 0, D}, 1603);
  REQUIRE_THROWS_AS(seqmix::MemoryTokensState(no_mem.cview(), 1), seqmix::ShapeError);
  REQUIRE(calls == 0);
  REQUIRE(y.view()(0, 0, 0) == 7.f);
  REQUIRE(state.cached() == 1);
  for (index_t i = 0; i < memory.numel(); ++i) REQUIRE(state.memory().data()[i] == memory.data()[i]);
}
