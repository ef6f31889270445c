// lsh_attention (Reformer): the fast form against reference::lsh_attention over T in
// {1, 64, 65, 1000, 5000}, D in {64, 128}, B = 2, causal and not, ragged chunks; one chunk holding every
// position (chunk_len >= T) equals dense causal attention over the normalized keys with the self
// rule (diagonal hidden except for the first query), for any number of rounds (lse + log rounds); the hashing rule
// on a hand-made case; determinism for a seed (and a different seed hashes differently); bad
// arguments refused with the outputs untouched.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/lsh/fast.hpp"
#include "seqmix/attention/lsh/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct LshCase {
  index_t B, T, H, D, buckets, rounds, chunk;
  bool causal;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " H=" << H << " D=" << D << " buckets=" << buckets << " rounds=" << rounds
      << " chunk=" << chunk << " causal=" << causal;
    return s.str();
  }
  seqmix::LshOptions options() const {
    seqmix::LshOptions o;
    o.n_buckets = buckets, o.n_rounds = rounds, o.chunk_len = chunk, o.causal = causal, o.seed = 11;
    return o;
  }
};

struct LshOutputs {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
  LshOutputs(index_t B, index_t T, index_t H, index_t D) : o({B, T, H, D}), lse({B, T, H}) {
    o.fill(NAN);
    lse.fill(NAN);
  }
  seqmix::AttentionOutputs view() { return {o.view(), lse.view()}; }
};

void lsh_check_same(const std::string& what, LshOutputs& got, LshOutputs& want, double tol = 1e-4) {
  const auto co = st::compare(got.o.cview(), want.o.cview(), tol);
  const auto cl = st::compare(got.lse.cview(), want.lse.cview(), tol);
  INFO(what << "\n  o: " << co.describe() << "\n  lse: " << cl.describe());
  CHECK(co.ok);
  CHECK(cl.ok);
}

// The fast form (2 threads and serial) against the reference on each case (seeds from seed0).
template <std::size_t N>
void lsh_fast_matches_reference(const LshCase (&cases)[N], std::uint64_t seed0) {
  seqmix::ThreadPool pool(2);
  const bool small = st::small_test_scale();
  std::uint64_t seed = seed0;
  for (const LshCase& c : cases) {
    if (small && c.T > 300) continue;
    seed += 10;
    const Tensor<float, 4> qk = st::random_tensor<4>({c.B, c.T, c.H, c.D}, seed + 1);
    const Tensor<float, 4> v = st::random_tensor<4>({c.B, c.T, c.H, c.D}, seed + 2);
    const seqmix::LshInputs in{qk.cview(), v.cview(), {}};
    LshOutputs want(c.B, c.T, c.H, c.D), fast(c.B, c.T, c.H, c.D), serial(c.B, c.T, c.H, c.D);
    seqmix::reference::lsh_attention(in, want.view(), c.options());
    seqmix::lsh_attention(in, fast.view(), c.options(), pool);
    seqmix::lsh_attention(in, serial.view(), c.options());
    lsh_check_same("lsh_attention " + c.describe(), fast, want);
    lsh_check_same("lsh_attention serial " + c.describe(), serial, want);
  }
}

}  // namespace

TEST_CASE("lsh_attention: fast form matches the reference", "[lsh_attention]") {
  const LshCase cases[] = {
      {1, 1, 2, 64, 4, 2, 8, true},     {2, 64, 2, 64, 8, 2, 16, true},  {1, 65, 3, 128, 4, 3, 16, true},
      {1, 65, 2, 64, 2, 1, 7, false},   {1, 1000, 1, 64, 16, 2, 64, true}, {1, 1000, 1, 128, 8, 1, 50, false},
      {2, 300, 2, 64, 32, 4, 300, true},
  };
  lsh_fast_matches_reference(cases, 300);
}

TEST_CASE("lsh_attention: fast form matches the reference at T 5000", "[lsh_attention]") {
  const LshCase cases[] = {{1, 5000, 1, 64, 64, 2, 64, true}};
  lsh_fast_matches_reference(cases, 800);
}

TEST_CASE("lsh_attention: one chunk over every position is dense causal attention with the self rule",
          "[lsh_attention]") {
  seqmix::ThreadPool pool(2);
  for (const index_t rounds : {1, 3}) {
    const index_t B = 2, T = 65, H = 2, D = 64;
    const Tensor<float, 4> qk = st::random_tensor<4>({B, T, H, D}, 41), v = st::random_tensor<4>({B, T, H, D}, 42);
    // Dense reference: keys are the normalized qk rows; the diagonal is hidden except for the
    // first query, which has no other key and attends to itself.
    Tensor<float, 4> k({B, T, H, D});
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < H; ++h) {
          double n = 0;
          for (index_t c = 0; c < D; ++c) n += static_cast<double>(qk(b, t, h, c)) * qk(b, t, h, c);
          for (index_t c = 0; c < D; ++c) k(b, t, h, c) = static_cast<float>(qk(b, t, h, c) / std::sqrt(n));
        }
    Tensor<float, 2> mask({T, T});
    mask.fill(0.f);
    for (index_t t = 1; t < T; ++t) mask(t, t) = -INFINITY;
    seqmix::AttentionInputs<float> dense;
    dense.q = qk.cview(), dense.k = k.cview(), dense.v = v.cview(), dense.mask = seqmix::shared_mask(mask.cview());
    seqmix::AttentionOptions causal;
    causal.causal = true;
    LshOutputs want(B, T, H, D), got(B, T, H, D), got_ref(B, T, H, D);
    seqmix::reference::attention(dense, want.view(), causal);
    seqmix::LshOptions opt;
    opt.n_buckets = 8, opt.n_rounds = rounds, opt.chunk_len = T;
    seqmix::lsh_attention({qk.cview(), v.cview(), {}}, got.view(), opt, pool);
    seqmix::reference::lsh_attention({qk.cview(), v.cview(), {}}, got_ref.view(), opt);
    // The rounds see the same keys, so their lse-weighted combination is the one softmax; the
    // combined lse counts each round (log sum_r exp(lse_r) = lse + log(rounds)), except for the
    // first query, alone in every round (the self rule).
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 1; t < T; ++t)
        for (index_t h = 0; h < H; ++h) want.lse(b, t, h) += static_cast<float>(std::log(static_cast<double>(rounds)));
    lsh_check_same("fast vs dense, rounds " + std::to_string(rounds), got, want);
    lsh_check_same("reference vs dense, rounds " + std::to_string(rounds), got_ref, want);
    // The first query is alone: o = v_0.
    for (index_t c = 0; c < D; ++c) CHECK(got.o(0, 0, 0, c) == v(0, 0, 0, c));
  }
}

TEST_CASE("lsh_attention: buckets follow argmax of the rotated vector and its negation", "[lsh_attention]") {
  // D = 2, one round, rotation = identity [2 x 2] (4 buckets): buckets 0, 1 for +x, +y, 2, 3 for
  // -x, -y.
  const Tensor<float, 4> qk = [] {
    Tensor<float, 4> t({1, 5, 1, 2});
    const float rows[5][2] = {{3, 1}, {0.5f, 2}, {-4, 1}, {1, -3}, {1, 1}};
    for (index_t i = 0; i < 5; ++i) t(0, i, 0, 0) = rows[i][0], t(0, i, 0, 1) = rows[i][1];
    return t;
  }();
  Tensor<float, 3> rot({1, 2, 2});
  rot.fill(0.f);
  rot(0, 0, 0) = 1.f, rot(0, 1, 1) = 1.f;
  seqmix::LshOptions opt;
  opt.n_buckets = 4, opt.n_rounds = 1;
  Tensor<std::int32_t, 4> buckets({1, 1, 1, 5});
  seqmix::lsh_buckets({qk.cview(), qk.cview(), rot.cview()}, buckets.view(), opt);
  const std::int32_t want[5] = {0, 1, 2, 3, 0};  // (1, 1): a tie, the lower index
  for (index_t i = 0; i < 5; ++i) CHECK(buckets(0, 0, 0, i) == want[i]);
}

TEST_CASE("lsh_attention: deterministic for a seed", "[lsh_attention]") {
  seqmix::ThreadPool pool(2);
  const index_t T = 200, H = 2, D = 64;
  const Tensor<float, 4> qk = st::random_tensor<4>({1, T, H, D}, 51), v = st::random_tensor<4>({1, T, H, D}, 52);
  seqmix::LshOptions opt;
  opt.n_buckets = 8, opt.n_rounds = 2, opt.chunk_len = 16, opt.seed = 5;
  LshOutputs a(1, T, H, D), b(1, T, H, D), c(1, T, H, D);
  seqmix::lsh_attention({qk.cview(), v.cview(), {}}, a.view(), opt, pool);
  seqmix::lsh_attention({qk.cview(), v.cview(), {}}, b.view(), opt);
  for (index_t e = 0; e < a.o.numel(); ++e) REQUIRE(a.o.data()[e] == b.o.data()[e]);
  // The same rotations given explicitly give the same result.
  const Tensor<float, 3> rot = seqmix::lsh_rotations(D, opt);
  seqmix::lsh_attention({qk.cview(), v.cview(), rot.cview()}, c.view(), opt, pool);
  for (index_t e = 0; e < a.o.numel(); ++e) REQUIRE(a.o.data()[e] == c.o.data()[e]);
  // Another seed hashes differently.
  seqmix::LshOptions other = opt;
  other.seed = 6;
  Tensor<std::int32_t, 4> b1({1, H, 2, T}), b2({1, H, 2, T});
  seqmix::lsh_buckets({qk.cview(), v.cview(), {}}, b1.view(), opt);
  seqmix::lsh_buckets({qk.cview(), v.cview(), {}}, b2.view(), other);
  index_t differ = 0;
  for (index_t e = 0; e < b1.numel(); ++e) differ += b1.data()[e] != b2.data()[e];
  CHECK(differ > T / 2);
}

TEST_CASE("lsh_attention: bad arguments are refused before any output", "[lsh_attention]") {
  const index_t T = 16, H = 2, D = 8;
  const Tensor<float, 4> qk = st::random_tensor<4>({1, T, H, D}, 61), v = st::random_tensor<4>({1, T, H, D}, 62);
  const Tensor<float, 4> v_bad = st::random_tensor<4>({1, T, H + 1, D}, 63);
  LshOutputs out(1, T, H, D);
  const auto run = [&](const seqmix::LshInputs& in, const seqmix::LshOptions& opt) {
    seqmix::lsh_attention(in, out.view(), opt);
  };
  const auto run_ref = [&](const seqmix::LshInputs& in, const seqmix::LshOptions& opt) {
    seqmix::reference::lsh_attention(in, out.view(), opt);
  };
  seqmix::LshOptions opt;
  opt.n_buckets = 4, opt.n_rounds = 2, opt.chunk_len = 4;
  const seqmix::LshInputs good{qk.cview(), v.cview(), {}};
  for (const auto& call : {std::function<void(const seqmix::LshInputs&, const seqmix::LshOptions&)>(run),
                           std::function<void(const seqmix::LshInputs&, const seqmix::LshOptions&)>(run_ref)}) {
    seqmix::LshOptions bad = opt;
    bad.chunk_len = 0;
    st::require_shape_error("options.chunk_len", [&] { call(good, bad); });
    bad = opt, bad.n_rounds = 0;
    st::require_shape_error("options.n_rounds", [&] { call(good, bad); });
    bad = opt, bad.n_buckets = 5;
    st::require_shape_error("options.n_buckets", [&] { call(good, bad); });
    bad = opt, bad.n_buckets = 1;
    st::require_shape_error("options.n_buckets", [&] { call(good, bad); });
    st::require_shape_error("v", [&] { call({qk.cview(), v_bad.cview(), {}}, opt); });
    Tensor<float, 3> rot({2, D, 3});
    rot.fill(0.f);
    st::require_shape_error("rotations", [&] { call({qk.cview(), v.cview(), rot.cview()}, opt); });
    Tensor<float, 3> rot_nan({2, D, 2});
    rot_nan.fill(0.f);
    rot_nan(1, 3, 1) = NAN;
    st::require_shape_error("rotations", [&] { call({qk.cview(), v.cview(), rot_nan.cview()}, opt); });
  }
  for (index_t e = 0; e < out.o.numel(); ++e) REQUIRE(std::isnan(out.o.data()[e]));
  for (index_t e = 0; e < out.lse.numel(); ++e) REQUIRE(std::isnan(out.lse.data()[e]));
}
