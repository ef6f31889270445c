// compressive_memory: with rate 1 (every compression is the identity: mean, max, conv with
// identity weights, most_used) and room for the whole history, it equals causal attention over
// all earlier tokens; a hand-computed case of mean pooling; the fast form against the reference
// (loops in double) for every compression, rates 2 and 3, GQA, ragged segments, B > 1, 1 and 2
// threads; a stream in pieces equals one call; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include "seqmix/attention.hpp"
#include "seqmix/memory.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::Compression;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct CmemShape {
  index_t B, T, Hq, Hkv, dk, dv, segment, memory, compressed, rate;
};

struct CmemData {
  Tensor<float, 4> q, k, v, wk, wv;
  CmemData(const CmemShape& s, std::uint64_t seed, bool identity_conv)
      : q(st::random_tensor<4>({s.B, s.T, s.Hq, s.dk}, seed, -1.5f, 1.5f)),
        k(st::random_tensor<4>({s.B, s.T, s.Hkv, s.dk}, seed + 1, -1.5f, 1.5f)),
        v(st::random_tensor<4>({s.B, s.T, s.Hkv, s.dv}, seed + 2)),
        wk(st::random_tensor<4>({s.Hkv, s.rate, s.dk, s.dk}, seed + 3, -0.5f, 0.5f)),
        wv(st::random_tensor<4>({s.Hkv, s.rate, s.dv, s.dv}, seed + 4, -0.5f, 0.5f)) {
    if (identity_conv) {
      for (auto& e : wk) e = 0.f;
      for (auto& e : wv) e = 0.f;
      for (index_t h = 0; h < s.Hkv; ++h) {
        for (index_t e = 0; e < s.dk; ++e) wk.view()(h, 0, e, e) = 1.f;
        for (index_t e = 0; e < s.dv; ++e) wv.view()(h, 0, e, e) = 1.f;
      }
    }
  }
  seqmix::CompressiveMemoryInputs inputs(Compression how) const {
    seqmix::CompressiveMemoryInputs in{q.cview(), k.cview(), v.cview()};
    if (how == Compression::conv) in.weights = {wk.cview(), wv.cview()};
    return in;
  }
};

seqmix::CompressiveMemoryOptions cmem_options(const CmemShape& s, Compression how) {
  seqmix::CompressiveMemoryOptions o;
  o.compression = how, o.segment = s.segment, o.memory = s.memory, o.compressed = s.compressed, o.rate = s.rate;
  return o;
}

constexpr Compression kCmemAll[] = {Compression::mean, Compression::max, Compression::conv, Compression::most_used};

}  // namespace

TEST_CASE("compressive_memory with rate 1 and room for the history equals causal attention", "[compressive_memory]") {
  const CmemShape shapes[] = {
      {1, 1, 1, 1, 1, 1, 0, 0, 1, 1},     {2, 29, 4, 2, 8, 6, 8, 0, 29, 1},  // all history compressed
      {2, 29, 4, 2, 8, 6, 8, 16, 13, 1},  {1, 40, 3, 3, 5, 7, 7, 40, 0, 1},  // all in the memory
      {3, 33, 2, 1, 16, 16, 16, 10, 23, 1},
  };
  std::uint64_t seed = 1500;
  for (const auto& s : shapes)
    for (const Compression how : kCmemAll) {
      CAPTURE(s.B, s.T, s.Hq, s.Hkv, s.segment, s.memory, s.compressed, static_cast<int>(how));
      const CmemData data(s, seed += 10, true);
      Tensor<float, 4> o({s.B, s.T, s.Hq, s.dv}), o_ref(o.shape()), o_att(o.shape());
      seqmix::AttentionOptions causal;
      causal.causal = true;
      seqmix::AttentionInputs<float> att;
      att.q = data.q.cview(), att.k = data.k.cview(), att.v = data.v.cview();
      seqmix::reference::attention(att, {o_att.view(), {}}, causal);
      seqmix::compressive_memory(data.inputs(how), {o.view()}, cmem_options(s, how), st::two_thread_pool());
      seqmix::reference::compressive_memory(data.inputs(how), {o_ref.view()}, cmem_options(s, how));
      st::require_close("fast", o.cview(), o_att.cview(), 2e-5);
      st::require_close("reference", o_ref.cview(), o_att.cview(), 1e-6);
    }
}

TEST_CASE("compressive_memory mean pooling by hand", "[compressive_memory]") {
  // q = 0: uniform attention. Segments of 2, no memory, one compressed entry, rate 2: token 2
  // reads the mean of v0, v1 (compressed) and v2; token 3 that entry, v2 and v3.
  Tensor<float, 4> q({1, 4, 1, 1}), k({1, 4, 1, 1}), v({1, 4, 1, 1}), o({1, 4, 1, 1});
  const float vs[] = {1.f, 3.f, 8.f, -4.f};
  for (index_t t = 0; t < 4; ++t) v.view()(0, t, 0, 0) = vs[t], k.view()(0, t, 0, 0) = static_cast<float>(t);
  seqmix::CompressiveMemoryOptions options;
  options.segment = 2, options.memory = 0, options.compressed = 1, options.rate = 2;
  for (const bool fast : {true, false}) {
    if (fast) seqmix::compressive_memory({q.cview(), k.cview(), v.cview()}, {o.view()}, options);
    else seqmix::reference::compressive_memory({q.cview(), k.cview(), v.cview()}, {o.view()}, options);
    REQUIRE(o.view()(0, 0, 0, 0) == Approx(1.0));
    REQUIRE(o.view()(0, 1, 0, 0) == Approx(2.0));
    REQUIRE(o.view()(0, 2, 0, 0) == Approx((2.0 + 8.0) / 2));
    REQUIRE(o.view()(0, 3, 0, 0) == Approx((2.0 + 8.0 - 4.0) / 3));
  }
}

TEST_CASE("compressive_memory and its step equal the reference for every compression", "[compressive_memory]") {
  const CmemShape shapes[] = {
      {1, 23, 2, 1, 4, 4, 4, 5, 3, 2},   {2, 45, 4, 2, 8, 6, 6, 8, 4, 3},   {2, 40, 2, 2, 5, 3, 10, 0, 6, 2},
      {1, 31, 3, 1, 6, 6, 7, 7, 0, 3},   {2, 64, 2, 1, 16, 16, 16, 16, 8, 4}, {1, 17, 1, 1, 3, 5, 1, 2, 3, 2},
  };
  std::uint64_t seed = 1600;
  for (const auto& s : shapes)
    for (const Compression how : kCmemAll) {
      CAPTURE(s.B, s.T, s.Hq, s.Hkv, s.segment, s.memory, s.compressed, s.rate, static_cast<int>(how));
      const CmemData data(s, seed += 10, false);
      const auto in = data.inputs(how);
      const auto options = cmem_options(s, how);
      Tensor<float, 4> o({s.B, s.T, s.Hq, s.dv}), o2(o.shape()), o_ref(o.shape()), o_step(o.shape());
      seqmix::reference::compressive_memory(in, {o_ref.view()}, options);
      seqmix::compressive_memory(in, {o.view()}, options);
      seqmix::compressive_memory(in, {o2.view()}, options, st::two_thread_pool());
      st::require_close("o", o.cview(), o_ref.cview(), 2e-5);
      for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o2.data()[i] == o.data()[i]);
      // The stream in three pieces cut on segment boundaries.
      seqmix::CompressiveMemoryState state(s.B, s.Hkv, s.dk, s.dv);
      const index_t cut1 = s.segment * 1, cut2 = std::min(s.T, s.segment * 3);
      for (const auto& [t0, n] : {std::pair<index_t, index_t>{0, cut1}, {cut1, cut2 - cut1}, {cut2, s.T - cut2}}) {
        auto piece = in;
        piece.q = in.q.slice(1, t0, n), piece.k = in.k.slice(1, t0, n), piece.v = in.v.slice(1, t0, n);
        seqmix::compressive_memory_step(state, piece, {o_step.view().slice(1, t0, n)}, options);
      }
      for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o_step.data()[i] == o.data()[i]);
      for (index_t b = 0; b < s.B; ++b)
        for (index_t h = 0; h < s.Hkv; ++h) {
          REQUIRE(state.memory_size(b, h) >= std::min(s.memory, s.T));
          REQUIRE(state.memory_size(b, h) < s.memory + s.rate);
          REQUIRE(state.compressed_size(b, h) <= s.compressed);
        }
    }
}

TEST_CASE("compressive_memory bad arguments are refused before any write", "[compressive_memory]") {
  const CmemShape s{2, 10, 4, 2, 4, 3, 4, 4, 4, 2};
  const CmemData data(s, 1700, false);
  Tensor<float, 4> o({s.B, s.T, s.Hq, s.dv});
  const auto expect_refused = [&](const char* argument, const seqmix::CompressiveMemoryInputs& in,
                                  const seqmix::CompressiveMemoryOptions& opt) {
    for (auto& e : o) e = 7.f;
    st::require_shape_error(argument, [&] { seqmix::compressive_memory(in, {o.view()}, opt); });
    st::require_shape_error(argument, [&] { seqmix::reference::compressive_memory(in, {o.view()}, opt); });
    for (const float e : o) REQUIRE(e == 7.f);
  };
  const auto good = data.inputs(Compression::mean);
  auto opt = cmem_options(s, Compression::mean);
  opt.rate = 0;
  expect_refused("rate", good, opt);
  opt.rate = 2, opt.memory = -1;
  expect_refused("memory", good, opt);
  opt.memory = 4, opt.compressed = -3;
  expect_refused("compressed", good, opt);
  opt.compressed = 4, opt.segment = -1;
  expect_refused("segment", good, opt);
  opt.segment = 4, opt.scale = std::numeric_limits<float>::infinity();
  expect_refused("scale", good, opt);
  opt.scale = 0.f, opt.compression = static_cast<Compression>(9);
  expect_refused("compression", good, opt);
  opt.compression = Compression::conv;  // without weights
  expect_refused("conv_key", good, opt);
  opt.compression = Compression::mean;  // weights with mean
  expect_refused("conv_key", data.inputs(Compression::conv), opt);
  const auto k3 = st::random_tensor<4>({s.B, s.T, 3, s.dk}, 1);  // 3 KV heads do not divide 4
  auto in = good;
  in.k = k3.cview();
  expect_refused("k", in, opt);
  const auto wk_bad = st::random_tensor<4>({s.Hkv, s.rate + 1, s.dk, s.dk}, 2);
  in = data.inputs(Compression::conv);
  in.weights.conv_key = wk_bad.cview();
  opt.compression = Compression::conv;
  expect_refused("conv_key", in, opt);
  // o aliasing v, and a state of the wrong shape: memories and o untouched.
  opt.compression = Compression::mean;
  st::require_shape_error("o", [&] {
    seqmix::compressive_memory(good, {seqmix::TensorView<float, 4>(const_cast<float*>(data.v.data()), {s.B, s.T, s.Hq, s.dv})}, opt);
  });
  seqmix::CompressiveMemoryState state(s.B, s.Hkv, s.dk + 1, s.dv);
  for (auto& e : o) e = 7.f;
  st::require_shape_error("state", [&] { seqmix::compressive_memory_step(state, good, {o.view()}, opt); });
  for (const float e : o) REQUIRE(e == 7.f);
  REQUIRE(state.memory_size(0, 0) == 0);
}
