// moba (Mixture of Block Attention): the fast prefill and the decode form against reference::moba
// over T in {1, 64, 65, 1000}, D in {64, 128}, GQA 1 and 4, B = 2, Tq < Tk; every block selected
// equals dense causal attention; decode equals the prefill's last row (with and without the
// caller's block means); the selection rule on a hand-made case; bad arguments refused with the
// outputs untouched.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/moba/fast.hpp"
#include "seqmix/attention/moba/reference.hpp"
#include "seqmix/attention/moba/step.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Case {
  index_t B, Tq, Tk, Hq, Hkv, D, block, top_k;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " block=" << block
      << " top_k=" << top_k;
    return s.str();
  }
};

template <class KV>
struct Problem {
  Tensor<float, 4> q, kf, vf;
  Tensor<KV, 4> k, v;
  explicit Problem(const Case& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed + 1)),
        kf(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2)),
        vf(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 3)),
        k({c.B, c.Tk, c.Hkv, c.D}),
        v({c.B, c.Tk, c.Hkv, c.D}) {
    for (index_t b = 0; b < c.B; ++b)
      for (index_t j = 0; j < c.Tk; ++j)
        for (index_t h = 0; h < c.Hkv; ++h)
          for (index_t d = 0; d < c.D; ++d) k(b, j, h, d) = KV(kf(b, j, h, d)), v(b, j, h, d) = KV(vf(b, j, h, d));
  }
  seqmix::MobaInputs<KV> inputs() const {
    seqmix::MobaInputs<KV> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    return in;
  }
};

struct Outputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  Outputs(index_t B, index_t Tq, index_t H, index_t D) : o({B, Tq, H, D}), lse({B, Tq, H}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
};

constexpr double kTol = 1e-4;

void check_same(const std::string& what, Outputs& got, Outputs& want) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), kTol);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), kTol);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

}  // namespace

TEST_CASE("moba: fast prefill and decode match the reference", "[moba]") {
  seqmix::ThreadPool pool(2);
  // The two long rows cost most of the test under the sanitizers; there they are 500 tokens:
  // still ragged for blocks of 64 (7 blocks and 52) and whole for blocks of 50 (10 blocks), as
  // 1000 is, and with more blocks (8 and 10) than top_k + 1, so the selection still chooses.
  const index_t long_T = st::small_test_scale() ? 500 : 1000;
  const Case cases[] = {
      {1, 1, 1, 4, 1, 64, 16, 2},      {2, 64, 64, 2, 2, 64, 16, 2},   {1, 65, 65, 8, 2, 128, 16, 3},
      {1, long_T, long_T, 4, 1, 64, 64, 3}, {1, long_T, long_T, 2, 2, 128, 50, 2}, {2, 65, 200, 4, 1, 64, 32, 1},
      {1, 64, 64, 4, 4, 64, 8, 0},     {1, 300, 300, 4, 1, 64, 7, 5},
  };
  std::uint64_t seed = 100;
  for (const Case& c : cases) {
    seed += 10;
    const Problem<float> p(c, seed);
    seqmix::MobaOptions opt;
    opt.block_size = c.block, opt.top_k = c.top_k;
    Outputs want(c.B, c.Tq, c.Hq, c.D), fast(c.B, c.Tq, c.Hq, c.D), fast1(c.B, c.Tq, c.Hq, c.D),
        step(c.B, c.Tq, c.Hq, c.D);
    seqmix::reference::moba(p.inputs(), want.view(), opt);
    seqmix::moba(p.inputs(), fast.view(), opt, pool);
    seqmix::moba(p.inputs(), fast1.view(), opt);
    seqmix::moba_step(p.inputs(), step.view(), opt, pool);
    check_same("moba " + c.describe(), fast, want);
    check_same("moba serial " + c.describe(), fast1, want);
    check_same("moba_step " + c.describe(), step, want);
  }
}

TEST_CASE("moba: 16-bit K/V match the reference on the same values", "[moba]") {
  seqmix::ThreadPool pool(2);
  const Case c{1, 130, 130, 4, 1, 64, 32, 2};
  const Problem<seqmix::f16> p(c, 7);
  seqmix::MobaOptions opt;
  opt.block_size = c.block, opt.top_k = c.top_k;
  Outputs want(c.B, c.Tq, c.Hq, c.D), fast(c.B, c.Tq, c.Hq, c.D), step(c.B, c.Tq, c.Hq, c.D);
  seqmix::reference::moba(p.inputs(), want.view(), opt);
  seqmix::moba(p.inputs(), fast.view(), opt, pool);
  seqmix::moba_step(p.inputs(), step.view(), opt, pool);
  check_same("moba f16", fast, want);
  check_same("moba_step f16", step, want);
}

TEST_CASE("moba: selecting every earlier block is dense causal attention", "[moba]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : {Case{1, 200, 200, 8, 2, 64, 16, 13}, Case{2, 65, 65, 4, 4, 128, 64, 1},
                        Case{1, 1, 90, 4, 1, 64, 10, 100}}) {
    const Problem<float> p(c, 3);
    seqmix::MobaOptions opt;
    opt.block_size = c.block, opt.top_k = c.top_k;
    seqmix::AttentionInputs<float> dense;
    dense.q = p.q.cview(), dense.k = p.k.cview(), dense.v = p.v.cview();
    seqmix::AttentionOptions causal;
    causal.causal = true;
    Outputs want(c.B, c.Tq, c.Hq, c.D), fast(c.B, c.Tq, c.Hq, c.D), ref(c.B, c.Tq, c.Hq, c.D), step(c.B, c.Tq, c.Hq, c.D);
    seqmix::reference::attention(dense, want.view(), causal);
    seqmix::reference::moba(p.inputs(), ref.view(), opt);
    seqmix::moba(p.inputs(), fast.view(), opt, pool);
    seqmix::moba_step(p.inputs(), step.view(), opt, pool);
    check_same("reference::moba vs dense " + c.describe(), ref, want);
    check_same("moba vs dense " + c.describe(), fast, want);
    check_same("moba_step vs dense " + c.describe(), step, want);
  }
}

TEST_CASE("moba: decode equals the prefill's last row, with and without kept block means", "[moba]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : {Case{1, 1000, 1000, 8, 2, 128, 64, 3}, Case{2, 65, 65, 4, 1, 64, 16, 2}}) {
    const Problem<float> p(c, 21);
    seqmix::MobaOptions opt;
    opt.block_size = c.block, opt.top_k = c.top_k;
    Outputs full(c.B, c.Tq, c.Hq, c.D);
    seqmix::moba(p.inputs(), full.view(), opt, pool);
    const index_t Nb = (c.Tk + c.block - 1) / c.block;
    Tensor<float, 4> means({c.B, Nb, c.Hkv, c.D});
    seqmix::block_key_summaries(p.k.cview(), c.block, means.view(), {}, {}, pool);
    for (const bool kept : {false, true}) {
      seqmix::MobaInputs<float> last = p.inputs();
      last.q = p.q.cview().slice(1, c.Tq - 1, 1);
      if (kept) last.block_means = means.cview();
      Outputs step(c.B, 1, c.Hq, c.D);
      seqmix::moba_step(last, step.view(), opt, pool);
      Tensor<float, 4> want_o({c.B, 1, c.Hq, c.D});
      Tensor<float, 3> want_lse({c.B, 1, c.Hq});
      for (index_t b = 0; b < c.B; ++b)
        for (index_t h = 0; h < c.Hq; ++h) {
          want_lse(b, 0, h) = full.lse(b, c.Tq - 1, h);
          for (index_t d = 0; d < c.D; ++d) want_o(b, 0, h, d) = full.o(b, c.Tq - 1, h, d);
        }
      INFO(c.describe() << " kept means " << kept);
      st::require_close("o", step.o.cview(), want_o.cview(), kTol);
      st::require_close("lse", step.lse.cview(), want_lse.cview(), kTol);
    }
  }
}

TEST_CASE("moba: the selection keeps the top_k earlier blocks by q . mean, lower block on ties", "[moba]") {
  // One head, D = 1, blocks of 2: block means 1, 3, 3, -1, own block 4 for the last query (q = 1).
  Tensor<float, 4> q({1, 1, 1, 1}), k({1, 10, 1, 1}), v({1, 10, 1, 1});
  const float keys[10] = {0, 2, 3, 3, 2, 4, -1, -1, 5, 5};
  for (index_t j = 0; j < 10; ++j) k(0, j, 0, 0) = keys[j], v(0, j, 0, 0) = static_cast<float>(j);
  q(0, 0, 0, 0) = 1.f;
  seqmix::MobaInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  seqmix::MobaOptions opt;
  opt.block_size = 2, opt.top_k = 2;
  Tensor<std::int32_t, 4> blocks({1, 1, 1, 2});
  seqmix::moba_block_selection(in, blocks.view(), opt);
  CHECK(blocks(0, 0, 0, 0) == 1);
  CHECK(blocks(0, 0, 0, 1) == 2);
  opt.top_k = 3;
  Tensor<std::int32_t, 4> three({1, 1, 1, 3});
  seqmix::moba_block_selection(in, three.view(), opt);
  CHECK(three(0, 0, 0, 0) == 0);
  CHECK(three(0, 0, 0, 2) == 2);
  opt.top_k = 6;  // more than there are earlier blocks: all four, then -1
  Tensor<std::int32_t, 4> six({1, 1, 1, 6});
  seqmix::moba_block_selection(in, six.view(), opt);
  CHECK(six(0, 0, 0, 3) == 3);
  CHECK(six(0, 0, 0, 4) == -1);
  CHECK(six(0, 0, 0, 5) == -1);
}

TEST_CASE("moba: bad arguments are refused before any output is written", "[moba]") {
  const Case c{1, 8, 16, 4, 2, 64, 4, 1};
  const Problem<float> p(c, 5);
  const auto untouched = [](Outputs& out) {
    for (index_t e = 0; e < out.o.numel(); ++e) REQUIRE(std::isnan(out.o.data()[e]));
    for (index_t e = 0; e < out.lse.numel(); ++e) REQUIRE(std::isnan(out.lse.data()[e]));
  };
  const auto refused = [&](const char* argument, const seqmix::MobaInputs<float>& in, const seqmix::MobaOptions& opt,
                           index_t Tq) {
    Outputs a(c.B, Tq, c.Hq, c.D), b(c.B, Tq, c.Hq, c.D), r(c.B, Tq, c.Hq, c.D);
    st::require_shape_error(argument, [&] { seqmix::moba(in, a.view(), opt); });
    st::require_shape_error(argument, [&] { seqmix::moba_step(in, b.view(), opt); });
    st::require_shape_error(argument, [&] { seqmix::reference::moba(in, r.view(), opt); });
    untouched(a), untouched(b), untouched(r);
  };
  seqmix::MobaOptions opt;
  opt.block_size = 0;
  refused("options.block_size", p.inputs(), opt, c.Tq);
  opt.block_size = 4, opt.top_k = -1;
  refused("options.top_k", p.inputs(), opt, c.Tq);
  opt.top_k = 1;
  Tensor<float, 4> long_q = st::random_tensor<4>({c.B, 20, c.Hq, c.D}, 9);
  seqmix::MobaInputs<float> too_many = p.inputs();
  too_many.q = long_q.cview();
  refused("q", too_many, opt, 20);
  Tensor<float, 4> means({c.B, 3, c.Hkv, c.D});  // needs 4 blocks of 4
  seqmix::MobaInputs<float> bad_means = p.inputs();
  bad_means.block_means = means.cview();
  refused("block_means", bad_means, opt, c.Tq);
  seqmix::MobaInputs<float> bad_v = p.inputs();
  bad_v.v = p.v.cview().slice(1, 0, 15);
  refused("v", bad_v, opt, c.Tq);
}
