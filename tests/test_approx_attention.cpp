// linformer, nystrom_attention and combiner (the classic sub-quadratic approximations): the fast
// forms against their references over T in {1, 64, 65, 1000}, D in {64, 128}, GQA 1 and 4, B up
// to 2; the degenerate settings that equal dense attention (linformer with E = F = I, Nystrom
// with m = T landmarks, combiner with block size 1 or >= T); combiner's decode steps and chunks
// equal the prefill's rows; determinism under two threads; bad arguments refused with a
// ShapeError before any output is written.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "seqmix/attention/approx/fast.hpp"
#include "seqmix/attention/approx/reference.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct ApproxCase {
  index_t B, T, Hq, Hkv, D, param;  // param: kp (linformer), m (nystrom), block size (combiner)
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " param=" << param;
    return s.str();
  }
};

struct ApproxProblem {
  Tensor<float, 4> q, k, v;
  ApproxProblem(const ApproxCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.T, c.Hq, c.D}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 3)) {}
  seqmix::AttentionInputs<float> dense() const {
    seqmix::AttentionInputs<float> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    return in;
  }
};

struct ApproxOutputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  ApproxOutputs(index_t B, index_t T, index_t H, index_t D) : o({B, T, H, D}), lse({B, T, H}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
  bool untouched() const {
    for (index_t e = 0; e < o.numel(); ++e)
      if (!std::isnan(o.data()[e])) return false;
    for (index_t e = 0; e < lse.numel(); ++e)
      if (!std::isnan(lse.data()[e])) return false;
    return true;
  }
};

constexpr double kApproxTol = 1e-4;

void approx_check(const std::string& what, const ApproxOutputs& got, const ApproxOutputs& want, bool with_lse = true,
                  double tol = kApproxTol) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), tol);
  INFO(what << "\n  o: " << co.describe());
  CHECK(co.ok);
  if (with_lse) {
    const auto cl = st::compare(got.lse.cview(), want.lse.cview(), tol);
    INFO(what << "\n  lse: " << cl.describe());
    CHECK(cl.ok);
  }
}

bool approx_bitwise_equal(const Tensor<float, 4>& a, const Tensor<float, 4>& b) {
  for (index_t e = 0; e < a.numel(); ++e)
    if (a.data()[e] != b.data()[e]) return false;
  return true;
}

// Projections with entries of size ~ 1 / sqrt(T), so the projected keys stay O(1).
Tensor<float, 2> approx_projection(index_t kp, index_t T, std::uint64_t seed) {
  const float s = 1.f / std::sqrt(static_cast<float>(T));
  return st::random_tensor<2>({kp, T}, seed, -s, s);
}

}  // namespace

// ---- linformer --------------------------------------------------------------------------------

TEST_CASE("linformer: the fast form matches the reference", "[approx][linformer]") {
  const ApproxCase cases[] = {{1, 1, 4, 1, 64, 1},    {2, 64, 2, 2, 64, 16},   {1, 65, 8, 2, 128, 65},
                              {1, 1000, 4, 1, 64, 64}, {1, 1000, 2, 2, 128, 48}, {2, 65, 4, 4, 64, 7}};
  std::uint64_t seed = 300;
  for (const ApproxCase& c : cases) {
    seed += 10;
    if (st::small_test_scale() && c.T > 256) continue;  // the sanitizer build: the T = 1000 rows are its slowest
    const ApproxProblem p(c, seed);
    const Tensor<float, 2> e = approx_projection(c.param, c.T, seed + 5), f = approx_projection(c.param, c.T, seed + 6);
    seqmix::LinformerInputs in{p.q.cview(), p.k.cview(), p.v.cview(), e.cview(), f.cview()};
    ApproxOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), serial(c.B, c.T, c.Hq, c.D);
    seqmix::reference::linformer(in, want.view());
    seqmix::linformer(in, fast.view(), {}, st::two_thread_pool());
    seqmix::linformer(in, serial.view());
    approx_check("linformer " + c.describe(), fast, want);
    approx_check("linformer serial " + c.describe(), serial, want);
  }
  // Fewer queries than keys (cross-attention onto the projected sequence).
  const ApproxCase c{1, 70, 4, 1, 64, 20};
  const ApproxProblem p(c, 9);
  const Tensor<float, 4> q5 = st::random_tensor<4>({1, 5, 4, 64}, 10);
  const Tensor<float, 2> e = approx_projection(20, 70, 11), f = approx_projection(20, 70, 12);
  seqmix::LinformerInputs in{q5.cview(), p.k.cview(), p.v.cview(), e.cview(), f.cview()};
  ApproxOutputs want(1, 5, 4, 64), fast(1, 5, 4, 64);
  seqmix::reference::linformer(in, want.view());
  seqmix::linformer(in, fast.view(), {}, st::two_thread_pool());
  approx_check("linformer Tq = 5, T = 70", fast, want);
}

TEST_CASE("linformer: identity projections E = F = I (kp = T) equal dense non-causal attention", "[approx][linformer]") {
  for (const ApproxCase& c : {ApproxCase{2, 65, 8, 2, 64, 65}, ApproxCase{1, 1, 4, 4, 128, 1}}) {
    const ApproxProblem p(c, 40);
    Tensor<float, 2> eye({c.T, c.T});
    eye.fill(0.f);
    for (index_t j = 0; j < c.T; ++j) eye(j, j) = 1.f;
    seqmix::LinformerInputs in{p.q.cview(), p.k.cview(), p.v.cview(), eye.cview(), eye.cview()};
    ApproxOutputs want(c.B, c.T, c.Hq, c.D), ref(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D);
    seqmix::reference::attention(p.dense(), want.view());
    seqmix::reference::linformer(in, ref.view());
    seqmix::linformer(in, fast.view(), {}, st::two_thread_pool());
    approx_check("reference::linformer vs dense " + c.describe(), ref, want);
    approx_check("linformer vs dense " + c.describe(), fast, want);
  }
}

// ---- nystrom_attention ------------------------------------------------------------------------

TEST_CASE("nystrom_attention: the fast form matches the reference, with and without the conv skip",
          "[approx][nystrom]") {
  const ApproxCase cases[] = {{1, 1, 4, 1, 64, 1},     {2, 64, 2, 2, 64, 8},   {1, 65, 8, 2, 128, 13},
                              {1, 1000, 4, 1, 64, 40}, {1, 1000, 2, 2, 128, 25}, {2, 64, 4, 4, 64, 64}};
  std::uint64_t seed = 500;
  for (const ApproxCase& c : cases)
    for (const index_t ks : {0, 3}) {
      seed += 10;
      if (st::small_test_scale() && c.T > 256) continue;
      const ApproxProblem p(c, seed);
      const Tensor<float, 2> kernel = st::random_tensor<2>({c.Hq, 3}, seed + 7);
      seqmix::NystromInputs in{p.q.cview(), p.k.cview(), p.v.cview(), {}};
      if (ks > 0) in.conv_kernel = kernel.cview();
      seqmix::NystromOptions opt;
      opt.landmarks = c.param;
      ApproxOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), serial(c.B, c.T, c.Hq, c.D);
      seqmix::reference::nystrom_attention(in, want.o.view(), opt);
      seqmix::nystrom_attention(in, fast.o.view(), opt, st::two_thread_pool());
      seqmix::nystrom_attention(in, serial.o.view(), opt);
      const std::string what = "nystrom " + c.describe() + " conv " + std::to_string(ks);
      approx_check(what, fast, want, false);
      approx_check(what + " serial", serial, want, false);
    }
}

TEST_CASE("nystrom_attention: m = T landmarks equal dense non-causal attention", "[approx][nystrom]") {
  for (const ApproxCase& c : {ApproxCase{1, 64, 4, 2, 64, 64}, ApproxCase{1, 1, 4, 4, 128, 1},
                              ApproxCase{1, 32, 4, 1, 128, 32}}) {
    const ApproxProblem p(c, 60);
    seqmix::NystromInputs in{p.q.cview(), p.k.cview(), p.v.cview(), {}};
    seqmix::NystromOptions opt;
    opt.landmarks = c.T, opt.pinv_iterations = 40;
    ApproxOutputs want(c.B, c.T, c.Hq, c.D), ref(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D);
    seqmix::reference::attention(p.dense(), want.view());
    seqmix::reference::nystrom_attention(in, ref.o.view(), opt);
    seqmix::nystrom_attention(in, fast.o.view(), opt, st::two_thread_pool());
    approx_check("reference::nystrom_attention vs dense " + c.describe(), ref, want, false, 1e-3);
    approx_check("nystrom_attention vs dense " + c.describe(), fast, want, false, 1e-3);
  }
}

TEST_CASE("nystrom_attention: the pseudo-inverse iteration count is honoured", "[approx][nystrom]") {
  // With fewer iterations the m = T result is further from dense attention than with more.
  const ApproxCase c{1, 32, 2, 1, 64, 32};
  const ApproxProblem p(c, 61);
  seqmix::NystromInputs in{p.q.cview(), p.k.cview(), p.v.cview(), {}};
  ApproxOutputs dense(c.B, c.T, c.Hq, c.D);
  seqmix::reference::attention(p.dense(), dense.view());
  double previous = INFINITY;
  for (const index_t iterations : {0, 2, 40}) {
    seqmix::NystromOptions opt;
    opt.landmarks = c.T, opt.pinv_iterations = iterations;
    ApproxOutputs fast(c.B, c.T, c.Hq, c.D);
    seqmix::nystrom_attention(in, fast.o.view(), opt);
    const double error = st::compare(fast.o.cview(), dense.o.cview(), 0.0).max_abs_error;
    INFO("iterations " << iterations << " error " << error);
    CHECK(error < previous);
    previous = error;
  }
}

// ---- combiner ---------------------------------------------------------------------------------

TEST_CASE("combiner: the fast form matches the reference", "[approx][combiner]") {
  const ApproxCase cases[] = {{1, 1, 4, 1, 64, 16},   {2, 64, 2, 2, 64, 16},   {1, 65, 8, 2, 128, 16},
                              {1, 1000, 4, 1, 64, 32}, {1, 1000, 2, 2, 128, 31}, {2, 65, 4, 4, 64, 7},
                              {1, 64, 4, 1, 64, 64},   {1, 65, 4, 1, 64, 3}};
  std::uint64_t seed = 700;
  for (const ApproxCase& c : cases) {
    seed += 10;
    if (st::small_test_scale() && c.T > 256) continue;  // the sanitizer build: the T = 1000 rows are its slowest
    const ApproxProblem p(c, seed);
    seqmix::CombinerInputs in{p.q.cview(), p.k.cview(), p.v.cview(), {}, {}};
    seqmix::CombinerOptions opt;
    opt.block_size = c.param;
    ApproxOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), serial(c.B, c.T, c.Hq, c.D);
    seqmix::reference::combiner(in, want.view(), opt);
    seqmix::combiner(in, fast.view(), opt, st::two_thread_pool());
    seqmix::combiner(in, serial.view(), opt);
    approx_check("combiner " + c.describe(), fast, want);
    approx_check("combiner serial " + c.describe(), serial, want);
  }
}

TEST_CASE("combiner: caller-chosen summaries replace the block means", "[approx][combiner]") {
  const ApproxCase c{2, 65, 4, 2, 64, 8};
  const ApproxProblem p(c, 80);
  const index_t Nb = 9;
  const Tensor<float, 4> sk = st::random_tensor<4>({c.B, Nb, c.Hkv, c.D}, 81),
                         sv = st::random_tensor<4>({c.B, Nb, c.Hkv, c.D}, 82);
  seqmix::CombinerOptions opt;
  opt.block_size = c.param;
  for (int which = 0; which < 3; ++which) {
    seqmix::CombinerInputs in{p.q.cview(), p.k.cview(), p.v.cview(), {}, {}};
    if (which != 1) in.summary_k = sk.cview();
    if (which != 0) in.summary_v = sv.cview();
    ApproxOutputs want(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D), means(c.B, c.T, c.Hq, c.D);
    seqmix::reference::combiner(in, want.view(), opt);
    seqmix::combiner(in, fast.view(), opt, st::two_thread_pool());
    approx_check("combiner summaries " + std::to_string(which), fast, want);
    // The summaries matter: the result with block means differs.
    seqmix::CombinerInputs plain{p.q.cview(), p.k.cview(), p.v.cview(), {}, {}};
    seqmix::combiner(plain, means.view(), opt);
    CHECK(st::compare(means.o.cview(), want.o.cview(), 0.0).max_abs_error > 1e-3);
  }
}

TEST_CASE("combiner: block size 1 and block size >= T equal dense causal attention", "[approx][combiner]") {
  for (const ApproxCase& c : {ApproxCase{2, 65, 8, 2, 64, 1}, ApproxCase{1, 64, 4, 4, 128, 64},
                              ApproxCase{1, 65, 4, 1, 64, 1000}, ApproxCase{1, 1, 4, 1, 64, 1}}) {
    const ApproxProblem p(c, 90);
    seqmix::CombinerInputs in{p.q.cview(), p.k.cview(), p.v.cview(), {}, {}};
    seqmix::CombinerOptions opt;
    opt.block_size = c.param;
    seqmix::AttentionOptions causal;
    causal.causal = true;
    ApproxOutputs want(c.B, c.T, c.Hq, c.D), ref(c.B, c.T, c.Hq, c.D), fast(c.B, c.T, c.Hq, c.D);
    seqmix::reference::attention(p.dense(), want.view(), causal);
    seqmix::reference::combiner(in, ref.view(), opt);
    seqmix::combiner(in, fast.view(), opt, st::two_thread_pool());
    approx_check("reference::combiner vs dense " + c.describe(), ref, want);
    approx_check("combiner vs dense " + c.describe(), fast, want);
  }
}

TEST_CASE("combiner: decode steps and chunks (Tq < T) equal the prefill's last rows", "[approx][combiner]") {
  for (const ApproxCase& c : {ApproxCase{2, 65, 4, 2, 64, 16}, ApproxCase{1, 300, 8, 2, 128, 32},
                              ApproxCase{1, 20, 4, 1, 64, 32}}) {
    const ApproxProblem p(c, 110);
    seqmix::CombinerOptions opt;
    opt.block_size = c.param;
    ApproxOutputs full(c.B, c.T, c.Hq, c.D);
    seqmix::combiner({p.q.cview(), p.k.cview(), p.v.cview(), {}, {}}, full.view(), opt, st::two_thread_pool());
    const index_t Nb = (c.T + c.param - 1) / c.param;
    Tensor<float, 4> means_k({c.B, Nb, c.Hkv, c.D}), means_v({c.B, Nb, c.Hkv, c.D});
    seqmix::block_key_summaries(p.k.cview(), c.param, means_k.view(), {}, {});
    seqmix::block_key_summaries(p.v.cview(), c.param, means_v.view(), {}, {});
    for (const index_t Tq : {index_t{1}, index_t{5}, index_t{19}})
      for (const bool kept : {false, true}) {
        seqmix::CombinerInputs in{p.q.cview().slice(1, c.T - Tq, Tq), p.k.cview(), p.v.cview(), {}, {}};
        if (kept) in.summary_k = means_k.cview(), in.summary_v = means_v.cview();
        ApproxOutputs step(c.B, Tq, c.Hq, c.D), ref(c.B, Tq, c.Hq, c.D), want(c.B, Tq, c.Hq, c.D);
        seqmix::combiner(in, step.view(), opt, st::two_thread_pool());
        seqmix::reference::combiner(in, ref.view(), opt);
        for (index_t b = 0; b < c.B; ++b)
          for (index_t i = 0; i < Tq; ++i)
            for (index_t h = 0; h < c.Hq; ++h) {
              want.lse(b, i, h) = full.lse(b, c.T - Tq + i, h);
              for (index_t x = 0; x < c.D; ++x) want.o(b, i, h, x) = full.o(b, c.T - Tq + i, h, x);
            }
        const std::string what = c.describe() + " Tq=" + std::to_string(Tq) + " kept summaries " + std::to_string(kept);
        approx_check("combiner step vs prefill " + what, step, want);
        approx_check("combiner step vs reference " + what, step, ref);
      }
  }
}

// ---- all three --------------------------------------------------------------------------------

TEST_CASE("approx attention: repeated calls give bit-identical results", "[approx]") {
  const ApproxCase c{2, st::small_test_scale() ? 96 : 256, 8, 2, 64, 32};  // T divisible by m = 32
  const ApproxProblem p(c, 95);
  const Tensor<float, 2> e = approx_projection(32, c.T, 96), f = approx_projection(32, c.T, 97);
  const Tensor<float, 2> kernel = st::random_tensor<2>({c.Hq, 5}, 98);
  ApproxOutputs a(c.B, c.T, c.Hq, c.D), b(c.B, c.T, c.Hq, c.D);
  for (int op = 0; op < 3; ++op) {
    for (ApproxOutputs* out : {&a, &b}) {
      if (op == 0)
        seqmix::linformer({p.q.cview(), p.k.cview(), p.v.cview(), e.cview(), f.cview()}, out->view(), {},
                          st::two_thread_pool());
      if (op == 1) {
        seqmix::NystromOptions opt;
        opt.landmarks = 32;
        seqmix::nystrom_attention({p.q.cview(), p.k.cview(), p.v.cview(), kernel.cview()}, out->o.view(), opt,
                                  st::two_thread_pool());
      }
      if (op == 2) {
        seqmix::CombinerOptions opt;
        opt.block_size = 32;
        seqmix::combiner({p.q.cview(), p.k.cview(), p.v.cview(), {}, {}}, out->view(), opt, st::two_thread_pool());
      }
    }
    INFO("operator " << op);
    CHECK(approx_bitwise_equal(a.o, b.o));
  }
}

TEST_CASE("approx attention: bad arguments are refused before any output is written", "[approx]") {
  const ApproxCase c{1, 16, 4, 2, 64, 4};
  const ApproxProblem p(c, 99);
  const auto refused = [&](const char* argument, auto&& call) {
    ApproxOutputs a(c.B, c.T, c.Hq, c.D), r(c.B, c.T, c.Hq, c.D);
    st::require_shape_error(argument, [&] { call(a, false); });
    st::require_shape_error(argument, [&] { call(r, true); });
    CHECK(a.untouched());
    CHECK(r.untouched());
  };
  // linformer: kp = 0, kp > T, F of another shape, causal.
  const auto linformer_with = [&](const Tensor<float, 2>& e, const Tensor<float, 2>& f, bool causal) {
    return [&, causal](ApproxOutputs& out, bool ref) {
      seqmix::LinformerInputs in{p.q.cview(), p.k.cview(), p.v.cview(), e.cview(), f.cview()};
      seqmix::LinformerOptions opt;
      opt.causal = causal;
      if (ref)
        seqmix::reference::linformer(in, out.view(), opt);
      else
        seqmix::linformer(in, out.view(), opt);
    };
  };
  const Tensor<float, 2> e0({0, c.T}), e17 = approx_projection(17, c.T, 1), e4 = approx_projection(4, c.T, 2),
                         f5 = approx_projection(5, c.T, 3), e4_short = approx_projection(4, c.T - 1, 4);
  refused("e", linformer_with(e0, e0, false));
  refused("e", linformer_with(e17, e17, false));
  refused("e", linformer_with(e4_short, e4_short, false));
  refused("f", linformer_with(e4, f5, false));
  refused("options.causal", linformer_with(e4, e4, true));
  // nystrom_attention: m = 0, m not dividing T, m > T, negative iterations, even kernel, Tq != T.
  const Tensor<float, 2> even = st::random_tensor<2>({c.Hq, 4}, 5), wrong_heads = st::random_tensor<2>({2, 3}, 6);
  const Tensor<float, 4> q8 = st::random_tensor<4>({1, 8, c.Hq, c.D}, 7);
  const auto nystrom_with = [&](index_t m, index_t iterations, const Tensor<float, 2>* kernel, bool short_q) {
    return [&, m, iterations, kernel, short_q](ApproxOutputs& out, bool ref) {
      seqmix::NystromInputs in{short_q ? q8.cview() : p.q.cview(), p.k.cview(), p.v.cview(), {}};
      if (kernel != nullptr) in.conv_kernel = kernel->cview();
      seqmix::NystromOptions opt;
      opt.landmarks = m, opt.pinv_iterations = iterations;
      const auto o = short_q ? out.o.view().slice(1, 0, 8) : out.o.view();
      if (ref)
        seqmix::reference::nystrom_attention(in, o, opt);
      else
        seqmix::nystrom_attention(in, o, opt);
    };
  };
  refused("options.landmarks", nystrom_with(0, 6, nullptr, false));
  refused("options.landmarks", nystrom_with(5, 6, nullptr, false));
  refused("options.landmarks", nystrom_with(32, 6, nullptr, false));
  refused("options.pinv_iterations", nystrom_with(4, -1, nullptr, false));
  refused("conv_kernel", nystrom_with(4, 6, &even, false));
  refused("conv_kernel", nystrom_with(4, 6, &wrong_heads, false));
  refused("q", nystrom_with(4, 6, nullptr, true));
  // combiner: block size 0, summaries of the wrong block count, a short v.
  const Tensor<float, 4> sk3 = st::random_tensor<4>({1, 3, c.Hkv, c.D}, 8);
  const auto combiner_with = [&](index_t bs, const Tensor<float, 4>* sk, bool short_v) {
    return [&, bs, sk, short_v](ApproxOutputs& out, bool ref) {
      seqmix::CombinerInputs in{p.q.cview(), p.k.cview(), short_v ? p.v.cview().slice(1, 0, 15) : p.v.cview(), {}, {}};
      if (sk != nullptr) in.summary_k = sk->cview(), in.summary_v = sk->cview();
      seqmix::CombinerOptions opt;
      opt.block_size = bs;
      if (ref)
        seqmix::reference::combiner(in, out.view(), opt);
      else
        seqmix::combiner(in, out.view(), opt);
    };
  };
  refused("options.block_size", combiner_with(0, nullptr, false));
  refused("summary_k", combiner_with(4, &sk3, false));
  refused("v", combiner_with(4, nullptr, true));
  Tensor<float, 4> long_q = st::random_tensor<4>({1, 17, c.Hq, c.D}, 9);  // Tq > T
  {
    ApproxOutputs a(1, 17, c.Hq, c.D), r(1, 17, c.Hq, c.D);
    seqmix::CombinerInputs in{long_q.cview(), p.k.cview(), p.v.cview(), {}, {}};
    st::require_shape_error("q", [&] { seqmix::combiner(in, a.view()); });
    st::require_shape_error("q", [&] { seqmix::reference::combiner(in, r.view()); });
    CHECK(a.untouched());
    CHECK(r.untouched());
  }
}
