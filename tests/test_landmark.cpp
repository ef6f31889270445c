// landmark attention: the fast prefill and the decode step against reference::landmark_attention
// over T in {1, 64, 65, 1000}, D in {64, 128}, GQA 1 and 4, fixed blocks and the caller's
// variable-length chunks (with and without the sqrt(length) scaling), every earlier block
// (top_k = -1) and retrieval (top_k); the degenerate settings that are dense causal attention
// (one block; blocks of one token whose landmarks are the keys); retrieval of every block equals
// the full grouped softmax; decode equals the prefill's last row; the grouped softmax on a
// hand-made case; bad arguments refused with the outputs untouched.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/landmark/fast.hpp"
#include "seqmix/attention/landmark/reference.hpp"
#include "seqmix/attention/landmark/step.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct LandmarkCase {
  index_t B, Tq, Tk, Hq, Hkv, D, block, top_k;
  bool chunks, length_scaling;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " block=" << block
      << " top_k=" << top_k << " chunks=" << chunks << " sqrt_len=" << length_scaling;
    return s.str();
  }
};

template <class KV>
struct LandmarkProblem {
  Tensor<float, 4> q, kf, vf;
  Tensor<KV, 4> k, v;
  Tensor<std::int32_t, 1> starts;
  explicit LandmarkProblem(const LandmarkCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed + 1)),
        kf(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2)),
        vf(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 3)),
        k({c.B, c.Tk, c.Hkv, c.D}),
        v({c.B, c.Tk, c.Hkv, c.D}) {
    for (index_t e = 0; e < kf.numel(); ++e) k.data()[e] = KV(kf.data()[e]), v.data()[e] = KV(vf.data()[e]);
    // Variable chunks: lengths cycling through block / 2 .. 3 block / 2 (ragged, deterministic).
    std::vector<std::int32_t> s;
    for (index_t j = 0, n = 0; j < c.Tk; ++n) {
      s.push_back(static_cast<std::int32_t>(j));
      j += std::max<index_t>(1, c.block / 2 + (n * 7) % (c.block + 1));
    }
    starts = Tensor<std::int32_t, 1>({static_cast<index_t>(s.size())});
    for (std::size_t e = 0; e < s.size(); ++e) starts(static_cast<index_t>(e)) = s[e];
  }
  index_t blocks(const LandmarkCase& c) const { return c.chunks ? starts.size(0) : (c.Tk + c.block - 1) / c.block; }
  seqmix::LandmarkInputs<KV> inputs(const LandmarkCase& c) const {
    seqmix::LandmarkInputs<KV> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    if (c.chunks) in.chunk_starts = starts.cview();
    return in;
  }
  seqmix::LandmarkOptions options(const LandmarkCase& c) const {
    seqmix::LandmarkOptions o;
    o.block_size = c.block, o.top_k = c.top_k, o.length_scaling = c.length_scaling;
    return o;
  }
};

struct LandmarkOutputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  LandmarkOutputs(index_t B, index_t Tq, index_t H, index_t D) : o({B, Tq, H, D}), lse({B, Tq, H}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
};

constexpr double kLandmarkTol = 1e-4;

void landmark_check_same(const std::string& what, LandmarkOutputs& got, LandmarkOutputs& want) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), kLandmarkTol);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), kLandmarkTol);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

}  // namespace

TEST_CASE("landmark: fast prefill and decode step match the reference", "[landmark]") {
  seqmix::ThreadPool pool(2);
  std::vector<LandmarkCase> cases = {
      {1, 1, 1, 4, 1, 64, 16, -1, false, false},    {2, 64, 64, 2, 2, 64, 16, -1, false, false},
      {1, 65, 65, 8, 2, 128, 16, 2, false, false},  {2, 65, 200, 4, 1, 64, 32, 1, true, true},
      {1, 64, 64, 4, 4, 64, 8, 0, false, false},    {1, 300, 300, 4, 1, 64, 7, 5, true, false},
      {1, 1, 300, 4, 1, 128, 20, 3, true, true},
  };
  if (!st::small_test_scale()) {
    cases.push_back({1, 1000, 1000, 4, 1, 64, 64, 3, false, false});
    cases.push_back({1, 200, 1000, 2, 2, 128, 50, -1, true, true});
  }
  std::uint64_t seed = 300;
  for (const LandmarkCase& c : cases) {
    seed += 10;
    const LandmarkProblem<float> p(c, seed);
    const auto opt = p.options(c);
    LandmarkOutputs want(c.B, c.Tq, c.Hq, c.D), fast(c.B, c.Tq, c.Hq, c.D), fast1(c.B, c.Tq, c.Hq, c.D),
        step(c.B, c.Tq, c.Hq, c.D);
    seqmix::reference::landmark_attention(p.inputs(c), want.view(), opt);
    seqmix::landmark_attention(p.inputs(c), fast.view(), opt, pool);
    seqmix::landmark_attention(p.inputs(c), fast1.view(), opt);
    seqmix::landmark_step(p.inputs(c), step.view(), opt, pool);
    landmark_check_same("landmark " + c.describe(), fast, want);
    landmark_check_same("landmark serial " + c.describe(), fast1, want);
    landmark_check_same("landmark_step " + c.describe(), step, want);
  }
}

TEST_CASE("landmark: 16-bit K/V and given landmark keys match the reference", "[landmark]") {
  seqmix::ThreadPool pool(2);
  const LandmarkCase c{1, 130, 130, 4, 1, 64, 32, 2, false, false};
  const LandmarkProblem<seqmix::f16> p(c, 7);
  const Tensor<float, 4> lk = st::random_tensor<4>({c.B, p.blocks(c), c.Hkv, c.D}, 77);
  auto in = p.inputs(c);
  in.landmark_k = lk.cview();
  LandmarkOutputs want(c.B, c.Tq, c.Hq, c.D), fast(c.B, c.Tq, c.Hq, c.D), step(c.B, c.Tq, c.Hq, c.D);
  seqmix::reference::landmark_attention(in, want.view(), p.options(c));
  seqmix::landmark_attention(in, fast.view(), p.options(c), pool);
  seqmix::landmark_step(in, step.view(), p.options(c), pool);
  landmark_check_same("landmark f16", fast, want);
  landmark_check_same("landmark_step f16", step, want);
}

TEST_CASE("landmark: one block, and one-token blocks with the keys as landmarks, are dense causal attention",
          "[landmark]") {
  seqmix::ThreadPool pool(2);
  for (const LandmarkCase& c : {LandmarkCase{1, 100, 100, 8, 2, 64, 1, -1, false, false},
                                LandmarkCase{2, 65, 65, 4, 4, 128, 1, 65, false, false},
                                LandmarkCase{1, 1, 90, 4, 1, 64, 1, 90, false, false},
                                LandmarkCase{2, 65, 65, 4, 1, 64, 65, -1, false, true},
                                LandmarkCase{1, 64, 1000, 4, 1, 64, 1000, 1, false, false}}) {
    const LandmarkProblem<float> p(c, 3);
    auto in = p.inputs(c);
    if (c.block == 1) in.landmark_k = p.kf.cview();  // landmarks = all tokens
    seqmix::AttentionInputs<float> dense;
    dense.q = p.q.cview(), dense.k = p.k.cview(), dense.v = p.v.cview();
    seqmix::AttentionOptions causal;
    causal.causal = true;
    LandmarkOutputs want(c.B, c.Tq, c.Hq, c.D), fast(c.B, c.Tq, c.Hq, c.D), ref(c.B, c.Tq, c.Hq, c.D),
        step(c.B, c.Tq, c.Hq, c.D);
    seqmix::reference::attention(dense, want.view(), causal);
    seqmix::reference::landmark_attention(in, ref.view(), p.options(c));
    seqmix::landmark_attention(in, fast.view(), p.options(c), pool);
    seqmix::landmark_step(in, step.view(), p.options(c), pool);
    landmark_check_same("reference::landmark_attention vs dense " + c.describe(), ref, want);
    landmark_check_same("landmark_attention vs dense " + c.describe(), fast, want);
    landmark_check_same("landmark_step vs dense " + c.describe(), step, want);
  }
}

TEST_CASE("landmark: retrieving every block equals the grouped softmax over all earlier blocks", "[landmark]") {
  seqmix::ThreadPool pool(2);
  for (const bool chunks : {false, true}) {
    LandmarkCase c{2, 150, 150, 4, 1, 64, 16, -1, chunks, chunks};
    const LandmarkProblem<float> p(c, 11);
    LandmarkOutputs all(c.B, c.Tq, c.Hq, c.D), every(c.B, c.Tq, c.Hq, c.D);
    seqmix::landmark_attention(p.inputs(c), all.view(), p.options(c), pool);
    c.top_k = p.blocks(c);
    seqmix::landmark_attention(p.inputs(c), every.view(), p.options(c), pool);
    landmark_check_same("top_k = blocks vs -1 " + c.describe(), every, all);
  }
}

TEST_CASE("landmark: decode equals the prefill's last row", "[landmark]") {
  seqmix::ThreadPool pool(2);
  for (const LandmarkCase& c : {LandmarkCase{1, 1000, 1000, 8, 2, 128, 64, 3, false, false},
                                LandmarkCase{2, 65, 65, 4, 1, 64, 16, -1, true, true},
                                LandmarkCase{1, 64, 64, 4, 4, 64, 16, 2, false, false}}) {
    const LandmarkProblem<float> p(c, 21);
    LandmarkOutputs full(c.B, c.Tq, c.Hq, c.D);
    seqmix::landmark_attention(p.inputs(c), full.view(), p.options(c), pool);
    auto last = p.inputs(c);
    last.q = p.q.cview().slice(1, c.Tq - 1, 1);
    LandmarkOutputs step(c.B, 1, c.Hq, c.D);
    seqmix::landmark_step(last, step.view(), p.options(c), pool);
    Tensor<float, 4> want_o({c.B, 1, c.Hq, c.D});
    Tensor<float, 3> want_lse({c.B, 1, c.Hq});
    for (index_t b = 0; b < c.B; ++b)
      for (index_t h = 0; h < c.Hq; ++h) {
        want_lse(b, 0, h) = full.lse(b, c.Tq - 1, h);
        for (index_t d = 0; d < c.D; ++d) want_o(b, 0, h, d) = full.o(b, c.Tq - 1, h, d);
      }
    INFO(c.describe());
    st::require_close("o", step.o.cview(), want_o.cview(), kLandmarkTol);
    st::require_close("lse", step.lse.cview(), want_lse.cview(), kLandmarkTol);
  }
}

TEST_CASE("landmark: the grouped softmax on a hand-made case", "[landmark]") {
  // D = 1, scale 1, q = 1. Keys 0..3 in blocks of 2; the query at position 3 (own block 1).
  // Block 0: keys 0, 1 (logits 0, ln 3), values 10, 20; landmark logit ln 2. Own keys 2, 3:
  // logits 0, 0, values 1, 3. Z = 1 + 1 + 2 = 4; block 0's inner softmax (1/4, 3/4) gives 17.5;
  // o = (1 + 3 + 2 * 17.5) / 4 = 9.75, lse = ln 4. With sqrt scaling (lengths 2, 2) the gate is
  // exp(sqrt(2) ln 2).
  Tensor<float, 4> q({1, 1, 1, 1}), k({1, 4, 1, 1}), v({1, 4, 1, 1}), lk({1, 2, 1, 1});
  q(0, 0, 0, 0) = 1.f;
  const float keys[4] = {0.f, std::log(3.f), 0.f, 0.f}, values[4] = {10.f, 20.f, 1.f, 3.f};
  for (index_t j = 0; j < 4; ++j) k(0, j, 0, 0) = keys[j], v(0, j, 0, 0) = values[j];
  lk(0, 0, 0, 0) = std::log(2.f), lk(0, 1, 0, 0) = 100.f;  // the own block's landmark is never used
  seqmix::LandmarkInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.landmark_k = lk.cview();
  seqmix::LandmarkOptions opt;
  opt.block_size = 2, opt.scale = 1.f;
  for (const bool scaled : {false, true}) {
    opt.length_scaling = scaled;
    const double gate = std::exp((scaled ? std::sqrt(2.0) : 1.0) * std::log(2.0)), z = 2.0 + gate;
    const double want_o = (1.0 + 3.0 + gate * 17.5) / z, want_lse = std::log(z);
    Tensor<float, 4> o({1, 1, 1, 1});
    Tensor<float, 3> lse({1, 1, 1});
    seqmix::reference::landmark_attention(in, {o.view(), lse.view()}, opt);
    CHECK(o(0, 0, 0, 0) == Approx(want_o).epsilon(1e-5));
    CHECK(lse(0, 0, 0) == Approx(want_lse).epsilon(1e-5));
    seqmix::landmark_attention(in, {o.view(), lse.view()}, opt);
    CHECK(o(0, 0, 0, 0) == Approx(want_o).epsilon(1e-5));
    CHECK(lse(0, 0, 0) == Approx(want_lse).epsilon(1e-5));
  }
}

TEST_CASE("landmark: bad arguments are refused before any output is written", "[landmark]") {
  const LandmarkCase c{1, 8, 16, 4, 2, 64, 4, 1, false, false};
  const LandmarkProblem<float> p(c, 5);
  const auto untouched = [](LandmarkOutputs& out) {
    for (index_t e = 0; e < out.o.numel(); ++e) REQUIRE(std::isnan(out.o.data()[e]));
    for (index_t e = 0; e < out.lse.numel(); ++e) REQUIRE(std::isnan(out.lse.data()[e]));
  };
  const auto refused = [&](const char* argument, const seqmix::LandmarkInputs<float>& in,
                           const seqmix::LandmarkOptions& opt, index_t Tq) {
    LandmarkOutputs a(c.B, Tq, c.Hq, c.D), b(c.B, Tq, c.Hq, c.D), r(c.B, Tq, c.Hq, c.D);
    st::require_shape_error(argument, [&] { seqmix::landmark_attention(in, a.view(), opt); });
    st::require_shape_error(argument, [&] { seqmix::landmark_step(in, b.view(), opt); });
    st::require_shape_error(argument, [&] { seqmix::reference::landmark_attention(in, r.view(), opt); });
    untouched(a), untouched(b), untouched(r);
  };
  seqmix::LandmarkOptions opt = p.options(c);
  opt.block_size = 0;
  refused("options.block_size", p.inputs(c), opt, c.Tq);
  opt.block_size = 4, opt.top_k = 5;  // 4 blocks
  refused("options.top_k", p.inputs(c), opt, c.Tq);
  opt.top_k = -2;
  refused("options.top_k", p.inputs(c), opt, c.Tq);
  opt.top_k = 1;
  Tensor<float, 4> long_q = st::random_tensor<4>({c.B, 20, c.Hq, c.D}, 9);
  auto too_many = p.inputs(c);
  too_many.q = long_q.cview();
  refused("q", too_many, opt, 20);
  Tensor<float, 4> lk({c.B, 3, c.Hkv, c.D});  // needs 4 landmarks
  auto bad_lk = p.inputs(c);
  bad_lk.landmark_k = lk.cview();
  refused("landmark_k", bad_lk, opt, c.Tq);
  for (const std::vector<std::int32_t>& bad : {std::vector<std::int32_t>{1, 5}, std::vector<std::int32_t>{0, 5, 5},
                                               std::vector<std::int32_t>{0, 16}}) {
    Tensor<std::int32_t, 1> starts({static_cast<index_t>(bad.size())});
    for (std::size_t e = 0; e < bad.size(); ++e) starts(static_cast<index_t>(e)) = bad[e];
    auto bad_chunks = p.inputs(c);
    bad_chunks.chunk_starts = starts.cview();
    refused("chunk_starts", bad_chunks, opt, c.Tq);
  }
  auto bad_v = p.inputs(c);
  bad_v.v = p.v.cview().slice(1, 0, 15);
  refused("v", bad_v, opt, c.Tq);
}
