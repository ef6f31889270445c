// nsa (Native Sparse Attention): the fast prefill and the decode form against reference::nsa over
// T in {1, 64, 65, 1000}, D in {64, 128}, GQA 1 and 4, B = 2, Tq < Tk, f16 K/V, caller-given
// compressed K/V; degenerate settings equal dense causal attention (selection of every block,
// compression of single keys, a window over everything); decode equals the prefill's last row;
// the selection keeps its forced blocks and is shared by a group; bad arguments are refused with
// the output untouched.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/nsa/fast.hpp"
#include "seqmix/attention/nsa/reference.hpp"
#include "seqmix/attention/nsa/step.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Case {
  index_t B, Tq, Tk, Hq, Hkv, D;
  index_t l, d, ls, top_n, window;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " l=" << l
      << " d=" << d << " l'=" << ls << " n=" << top_n << " w=" << window;
    return s.str();
  }
  seqmix::NsaOptions options() const {
    seqmix::NsaOptions o;
    o.compress_block = l, o.compress_stride = d, o.select_block = ls, o.top_n = top_n, o.window = window;
    o.initial_blocks = std::min<index_t>(1, top_n), o.local_blocks = std::min<index_t>(2, top_n - o.initial_blocks);
    return o;
  }
};

template <class KV>
struct Problem {
  Tensor<float, 4> q, kf, vf, gates;
  Tensor<KV, 4> k, v;
  Problem(const Case& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed + 1)),
        kf(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2)),
        vf(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 3)),
        gates(st::random_tensor<4>({c.B, c.Tq, c.Hq, 3}, seed + 4, 0.f, 1.f)),
        k({c.B, c.Tk, c.Hkv, c.D}),
        v({c.B, c.Tk, c.Hkv, c.D}) {
    for (index_t e = 0; e < kf.numel(); ++e) k.data()[e] = KV(kf.data()[e]), v.data()[e] = KV(vf.data()[e]);
  }
  seqmix::NsaInputs<KV> inputs() const {
    seqmix::NsaInputs<KV> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.gates = gates.cview();
    return in;
  }
};

Tensor<float, 4> nan_output(const Case& c, index_t Tq) {
  Tensor<float, 4> o({c.B, Tq, c.Hq, c.D});
  o.fill(NAN);
  return o;
}

constexpr double kTol = 1e-4;

void check_same(const std::string& what, const Tensor<float, 4>& got, const Tensor<float, 4>& want) {
  const auto cmp = st::compare(got.cview(), want.cview(), kTol);
  INFO(what << ": " << cmp.describe());
  CHECK(cmp.ok);
}

}  // namespace

TEST_CASE("nsa: fast prefill and decode match the reference", "[nsa]") {
  seqmix::ThreadPool pool(2);
  const Case cases[] = {
      {1, 1, 1, 4, 1, 64, 8, 4, 16, 4, 32},        {2, 64, 64, 2, 2, 64, 8, 4, 16, 4, 32},
      {1, 65, 65, 8, 2, 128, 8, 8, 8, 3, 16},      {1, 1000, 1000, 4, 1, 64, 32, 16, 64, 4, 128},
      {1, 1000, 1000, 2, 2, 128, 16, 16, 32, 5, 100}, {2, 65, 200, 4, 1, 64, 12, 4, 24, 4, 50},
      {1, 64, 64, 4, 4, 64, 8, 4, 16, 0, 8},
  };
  std::uint64_t seed = 300;
  for (const Case& c : cases) {
    seed += 10;
    const Problem<float> p(c, seed);
    const seqmix::NsaOptions opt = c.options();
    Tensor<float, 4> want = nan_output(c, c.Tq), fast = nan_output(c, c.Tq), serial = nan_output(c, c.Tq),
                     step = nan_output(c, c.Tq);
    seqmix::reference::nsa(p.inputs(), want.view(), opt);
    seqmix::nsa(p.inputs(), fast.view(), opt, pool);
    seqmix::nsa(p.inputs(), serial.view(), opt);
    seqmix::nsa_step(p.inputs(), step.view(), opt, pool);
    check_same("nsa " + c.describe(), fast, want);
    check_same("nsa serial " + c.describe(), serial, want);
    check_same("nsa_step " + c.describe(), step, want);
  }
}

TEST_CASE("nsa: 16-bit K/V and caller-given compressed K/V match the reference", "[nsa]") {
  seqmix::ThreadPool pool(2);
  const Case c{1, 130, 130, 4, 1, 64, 16, 8, 32, 3, 40};
  const seqmix::NsaOptions opt = c.options();
  const Problem<seqmix::bf16> p(c, 11);
  Tensor<float, 4> want = nan_output(c, c.Tq), fast = nan_output(c, c.Tq), step = nan_output(c, c.Tq);
  seqmix::reference::nsa(p.inputs(), want.view(), opt);
  seqmix::nsa(p.inputs(), fast.view(), opt, pool);
  seqmix::nsa_step(p.inputs(), step.view(), opt, pool);
  check_same("nsa bf16", fast, want);
  check_same("nsa_step bf16", step, want);
  // A caller's compression (here random: any phi): every form reads it instead of mean pooling.
  const index_t Nc = seqmix::nsa_compressed_blocks(c.Tk, opt);
  const Tensor<float, 4> ckf = st::random_tensor<4>({c.B, Nc, c.Hkv, c.D}, 12),
                         cvf = st::random_tensor<4>({c.B, Nc, c.Hkv, c.D}, 13);
  Tensor<seqmix::bf16, 4> ck({c.B, Nc, c.Hkv, c.D}), cv({c.B, Nc, c.Hkv, c.D});
  for (index_t e = 0; e < ck.numel(); ++e) ck.data()[e] = seqmix::bf16(ckf.data()[e]), cv.data()[e] = seqmix::bf16(cvf.data()[e]);
  seqmix::NsaInputs<seqmix::bf16> given = p.inputs();
  given.compressed_k = ck.cview(), given.compressed_v = cv.cview();
  Tensor<float, 4> want2 = nan_output(c, c.Tq), fast2 = nan_output(c, c.Tq), step2 = nan_output(c, c.Tq);
  seqmix::reference::nsa(given, want2.view(), opt);
  seqmix::nsa(given, fast2.view(), opt, pool);
  seqmix::nsa_step(given, step2.view(), opt, pool);
  check_same("nsa given compression", fast2, want2);
  check_same("nsa_step given compression", step2, want2);
  const auto differs = st::compare(want2.cview(), want.cview(), kTol);
  CHECK_FALSE(differs.ok);  // the given compression is really used
}

TEST_CASE("nsa: degenerate settings are dense causal attention", "[nsa]") {
  seqmix::ThreadPool pool(2);
  const Case base{1, 200, 200, 8, 2, 64, 4, 4, 16, 13, 200};
  const Problem<float> p(base, 5);
  seqmix::AttentionInputs<float> dense;
  dense.q = p.q.cview(), dense.k = p.k.cview(), dense.v = p.v.cview();
  seqmix::AttentionOptions causal;
  causal.causal = true;
  Tensor<float, 4> want = nan_output(base, base.Tq);
  seqmix::reference::attention(dense, {want.view(), {}}, causal);
  const auto run = [&](const char* what, const seqmix::NsaOptions& opt, float g0, float g1, float g2) {
    Tensor<float, 4> gates({base.B, base.Tq, base.Hq, 3});
    for (index_t r = 0; r < base.B * base.Tq * base.Hq; ++r)
      gates.data()[3 * r] = g0, gates.data()[3 * r + 1] = g1, gates.data()[3 * r + 2] = g2;
    seqmix::NsaInputs<float> in = p.inputs();
    in.gates = gates.cview();
    Tensor<float, 4> ref = nan_output(base, base.Tq), fast = nan_output(base, base.Tq), step = nan_output(base, base.Tq);
    seqmix::reference::nsa(in, ref.view(), opt);
    seqmix::nsa(in, fast.view(), opt, pool);
    seqmix::nsa_step(in, step.view(), opt, pool);
    check_same(std::string(what) + " reference", ref, want);
    check_same(std::string(what) + " fast", fast, want);
    check_same(std::string(what) + " step", step, want);
  };
  seqmix::NsaOptions opt = base.options();
  run("every block selected", opt, 0.f, 1.f, 0.f);
  run("window over every key", opt, 0.f, 0.f, 1.f);
  opt.compress_block = 1, opt.compress_stride = 1;
  run("compression of single keys", opt, 0.f, 0.f, 1.f);
  run("compression of single keys, compressed branch", opt, 1.f, 0.f, 0.f);
  run("half selection, half window", base.options(), 0.f, 0.5f, 0.5f);
}

TEST_CASE("nsa: decode equals the prefill's last row, with and without kept compression", "[nsa]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : {Case{1, 1000, 1000, 8, 2, 128, 32, 16, 64, 6, 256}, Case{2, 65, 65, 4, 1, 64, 8, 4, 16, 3, 20}}) {
    const Problem<float> p(c, 21);
    const seqmix::NsaOptions opt = c.options();
    Tensor<float, 4> full = nan_output(c, c.Tq);
    seqmix::nsa(p.inputs(), full.view(), opt, pool);
    const index_t Nc = seqmix::nsa_compressed_blocks(c.Tk, opt);
    Tensor<float, 4> ck({c.B, Nc, c.Hkv, c.D}), cv({c.B, Nc, c.Hkv, c.D});
    seqmix::nsa_compress(p.k.cview(), p.v.cview(), ck.view(), cv.view(), opt, pool);
    for (const bool kept : {false, true}) {
      seqmix::NsaInputs<float> last = p.inputs();
      last.q = p.q.cview().slice(1, c.Tq - 1, 1);
      last.gates = p.gates.cview().slice(1, c.Tq - 1, 1);
      if (kept) last.compressed_k = ck.cview(), last.compressed_v = cv.cview();
      Tensor<float, 4> step = nan_output(c, 1), want({c.B, 1, c.Hq, c.D});
      seqmix::nsa_step(last, step.view(), opt, pool);
      for (index_t b = 0; b < c.B; ++b)
        for (index_t h = 0; h < c.Hq; ++h)
          for (index_t e = 0; e < c.D; ++e) want(b, 0, h, e) = full(b, c.Tq - 1, h, e);
      INFO(c.describe() << " kept compression " << kept);
      st::require_close("o", step.cview(), want.cview(), kTol);
    }
  }
}

TEST_CASE("nsa: the selection keeps the forced blocks, the best by importance, one per group", "[nsa]") {
  const Case c{1, 300, 300, 4, 1, 64, 8, 4, 16, 5, 32};
  const Problem<float> p(c, 8);
  const seqmix::NsaOptions opt = c.options();  // top_n 5: block 0, the own block and the one before, 2 chosen
  const index_t Nc = seqmix::nsa_compressed_blocks(c.Tk, opt);
  Tensor<float, 4> ck({c.B, Nc, c.Hkv, c.D}), cv({c.B, Nc, c.Hkv, c.D});
  seqmix::nsa_compress(p.k.cview(), p.v.cview(), ck.view(), cv.view(), opt);
  Tensor<std::int32_t, 4> blocks({c.B, c.Tq, c.Hkv, opt.top_n});
  seqmix::nsa_block_selection(p.inputs(), ck.cview(), blocks.view(), opt);
  for (index_t i = 0; i < c.Tq; ++i) {
    const index_t own = i / opt.select_block;
    std::vector<index_t> got;
    for (index_t e = 0; e < opt.top_n; ++e)
      if (blocks(0, i, 0, e) >= 0) got.push_back(blocks(0, i, 0, e));
    INFO("query " << i);
    REQUIRE(got.size() == static_cast<std::size_t>(std::min<index_t>(opt.top_n, own + 1)));
    CHECK(got.front() == 0);
    CHECK(got.back() == own);
    if (own >= 1) CHECK(std::find(got.begin(), got.end(), own - 1) != got.end());
    CHECK(std::is_sorted(got.begin(), got.end()));
  }
  // Mean pooling itself: compressed block 3 is the mean of keys 12 .. 19.
  double mean = 0;
  for (index_t j = 12; j < 20; ++j) mean += p.k(0, j, 0, 5);
  CHECK(ck(0, 3, 0, 5) == Approx(mean / 8).margin(1e-6));
}

TEST_CASE("nsa: bad arguments are refused before any output is written", "[nsa]") {
  const Case c{1, 8, 16, 4, 2, 64, 4, 2, 4, 3, 8};
  const Problem<float> p(c, 5);
  const auto refused = [&](const char* argument, const seqmix::NsaInputs<float>& in, const seqmix::NsaOptions& opt,
                           index_t Tq) {
    Tensor<float, 4> a = nan_output(c, Tq), b = nan_output(c, Tq), r = nan_output(c, Tq);
    st::require_shape_error(argument, [&] { seqmix::nsa(in, a.view(), opt); });
    st::require_shape_error(argument, [&] { seqmix::nsa_step(in, b.view(), opt); });
    st::require_shape_error(argument, [&] { seqmix::reference::nsa(in, r.view(), opt); });
    for (const auto* t : {&a, &b, &r})
      for (index_t e = 0; e < t->numel(); ++e) REQUIRE(std::isnan(t->data()[e]));
  };
  const seqmix::NsaOptions good = c.options();
  seqmix::NsaOptions opt = good;
  opt.compress_block = 0;
  refused("options.compress_block", p.inputs(), opt, c.Tq);
  opt = good, opt.compress_stride = 5;
  refused("options.compress_stride", p.inputs(), opt, c.Tq);
  opt = good, opt.select_block = 0;
  refused("options.select_block", p.inputs(), opt, c.Tq);
  opt = good, opt.top_n = 2;  // below initial + local = 3
  refused("options.top_n", p.inputs(), opt, c.Tq);
  opt = good, opt.window = 0;
  refused("options.window", p.inputs(), opt, c.Tq);
  opt = good, opt.local_blocks = -1;
  refused("options.initial_blocks", p.inputs(), opt, c.Tq);
  Tensor<float, 4> gates = p.gates;
  gates(0, 3, 1, 2) = 1.5f;
  seqmix::NsaInputs<float> bad_gates = p.inputs();
  bad_gates.gates = gates.cview();
  refused("gates", bad_gates, good, c.Tq);
  gates(0, 3, 1, 2) = NAN;
  refused("gates", bad_gates, good, c.Tq);
  const index_t Nc = seqmix::nsa_compressed_blocks(c.Tk, good);
  Tensor<float, 4> ck({c.B, Nc, c.Hkv, c.D}), wrong({c.B, Nc + 1, c.Hkv, c.D});
  seqmix::NsaInputs<float> half = p.inputs();
  half.compressed_k = ck.cview();
  refused("compressed_v", half, good, c.Tq);
  seqmix::NsaInputs<float> bad_shape = p.inputs();
  bad_shape.compressed_k = wrong.cview(), bad_shape.compressed_v = wrong.cview();
  refused("compressed_k", bad_shape, good, c.Tq);
  Tensor<float, 4> long_q = st::random_tensor<4>({c.B, 20, c.Hq, c.D}, 9), long_gates({c.B, 20, c.Hq, 3});
  seqmix::NsaInputs<float> too_many = p.inputs();
  too_many.q = long_q.cview(), too_many.gates = long_gates.cview();
  refused("q", too_many, good, 20);
}
