// Dense attention: every fast form (seqmix::attention, attention_flash, attention_step)
// against reference::attention over a table of shapes and options, attention_merge properties,
// and argument validation.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

enum Extra : unsigned {
  none = 0,
  mask = 1,          // random additive mask with some -inf, one fully -inf row
  alibi = 2,         // ALiBi slopes
  sink_logits = 4,   // per-head sink logits
  positions = 8,     // explicit, non-decreasing positions
  strided = 16,      // q, k, v, o as non-contiguous views
  lse = 32,          // also request and compare the LSE output
  shared_mask = 64,  // the mask as a [1,Tq,Tk] view broadcast over B
};
bool has(unsigned flags, Extra e) { return (flags & e) != 0; }

struct Case {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, Dk, Dv;
  bool causal;
  index_t window, sink_tokens;
  float softcap;
  unsigned extras;
  bool large;  // dropped under SEQMIX_TEST_SCALE=small

  std::string describe(std::uint64_t seed) const {
    std::ostringstream s;
    s << name << ": B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " Dk=" << Dk
      << " Dv=" << Dv << " causal=" << causal << " window=" << window << " sink_tokens=" << sink_tokens
      << " softcap=" << softcap << " extras=" << extras << " seed=" << seed << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

// Each Tq in {1, 2, 7, 64, 300}, Tk in {1, 64, 65, 777, 1000, 5000}, D in {64, 80, 128}, group in
// {1, 2, 4, 8} (decode rows per KV head 1, 2, 4, 8), Dv != Dk and every option alone, then in combination; not the cross product.
const std::vector<Case>& cases() {
  using E = Extra;
  static const std::vector<Case> table = {
      // name                 B  Tq   Tk    Hq Hkv Dk   Dv  causal win sinks cap extras
      {"plain", 2, 64, 64, 4, 4, 64, 64, false, 0, 0, 0.f, E::lse, false},
      {"causal-square", 1, 64, 64, 8, 2, 64, 64, true, 0, 0, 0.f, E::lse, false},
      {"causal-ragged-d80", 1, 7, 65, 4, 1, 80, 80, true, 0, 0, 0.f, E::lse, false},
      {"causal-tq-gt-tk", 1, 7, 1, 4, 4, 64, 64, true, 0, 0, 0.f, E::lse, false},
      {"tk1", 2, 1, 1, 4, 4, 64, 64, false, 0, 0, 0.f, E::lse, false},
      {"decode-gqa8", 1, 1, 1000, 8, 1, 128, 128, true, 0, 0, 0.f, E::lse, false},
      {"decode-gqa4-b2", 2, 1, 1000, 8, 2, 64, 64, true, 0, 0, 0.f, E::lse, false},
      {"decode-mha", 1, 1, 1000, 4, 4, 64, 64, true, 0, 0, 0.f, E::lse, false},
      {"decode-gqa2-b2", 2, 1, 777, 8, 4, 128, 128, true, 0, 0, 0.f, E::lse, false},
      {"draft-tq2-mha", 1, 2, 1000, 4, 4, 64, 80, true, 0, 0, 0.f, E::lse, false},
      {"dv-lt-dk", 1, 64, 65, 4, 2, 128, 80, true, 0, 0, 0.f, E::lse, false},
      {"dv-gt-dk", 1, 7, 64, 4, 4, 64, 128, false, 0, 0, 0.f, E::none, false},
      {"softcap", 1, 64, 65, 4, 1, 64, 64, true, 0, 0, 5.f, E::lse, false},
      {"window", 1, 300, 1000, 4, 1, 64, 64, true, 100, 0, 0.f, E::lse, false},
      {"window-sinks", 1, 300, 1000, 8, 2, 64, 64, true, 100, 4, 0.f, E::lse, false},
      {"window-noncausal", 1, 64, 1000, 4, 4, 64, 64, false, 37, 0, 0.f, E::none, false},
      {"decode-window-sinks", 1, 1, 1000, 8, 1, 128, 128, true, 200, 8, 0.f, E::lse, false},
      {"alibi", 1, 300, 300, 8, 2, 64, 64, true, 0, 0, 0.f, E::lse | E::alibi, false},
      {"mask", 2, 64, 1000, 4, 4, 64, 64, false, 0, 0, 0.f, E::lse | E::mask, false},
      {"shared-mask", 2, 7, 65, 4, 1, 80, 64, false, 0, 0, 0.f, E::lse | E::mask | E::shared_mask, false},
      {"sink-logits", 1, 7, 1000, 8, 8, 64, 64, true, 0, 0, 0.f, E::lse | E::sink_logits, false},
      {"positions", 2, 64, 1000, 4, 1, 64, 64, true, 50, 2, 0.f, E::lse | E::positions, false},
      {"strided", 2, 64, 65, 8, 2, 80, 64, true, 0, 0, 0.f, E::lse | E::strided, false},
      {"strided-decode", 1, 1, 1000, 4, 1, 64, 80, false, 0, 0, 0.f, E::strided, false},
      {"all-options", 1, 64, 1000, 8, 2, 128, 128, true, 200, 4, 10.f,
       E::lse | E::mask | E::sink_logits | E::positions | E::strided, false},
      {"all-but-mask-alibi", 1, 7, 1000, 8, 1, 128, 64, true, 300, 4, 20.f, E::lse | E::alibi | E::sink_logits, false},
      {"long-decode", 1, 1, 5000, 8, 1, 128, 128, true, 0, 0, 0.f, E::lse, true},
      {"long-prefill", 1, 64, 5000, 4, 1, 128, 128, true, 0, 0, 0.f, E::lse, true},
      {"long-window-sinks", 1, 7, 5000, 4, 4, 64, 64, true, 512, 4, 0.f, E::alibi | E::sink_logits, true},
  };
  return table;
}

// Owning inputs of one case; views handed to the operators may be strided.
struct Problem {
  Tensor<float, 4> q_store, k_store, v_store;  // strided: padded / permuted storage
  TensorView<const float, 4> q, k, v;
  Tensor<float, 3> mask;
  Tensor<float, 1> slopes, sinks;
  Tensor<std::int32_t, 2> positions;
  seqmix::AttentionInputs<float> inputs;

  Problem(const Case& c, std::uint64_t seed) {
    const bool strided = has(c.extras, Extra::strided);
    if (strided) {
      // q with a padded feature dimension, k/v stored head-major [B,H,T,D] and viewed token-major.
      q_store = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.Dk + 3}, seed + 1);
      k_store = st::random_tensor<4>({c.B, c.Hkv, c.Tk, c.Dk}, seed + 2);
      v_store = st::random_tensor<4>({c.B, c.Hkv, c.Tk, c.Dv}, seed + 3);
      q = TensorView<const float, 4>(q_store.data(), {c.B, c.Tq, c.Hq, c.Dk},
                                     {c.Tq * c.Hq * (c.Dk + 3), c.Hq * (c.Dk + 3), c.Dk + 3, 1});
      k = TensorView<const float, 4>(k_store.data(), {c.B, c.Tk, c.Hkv, c.Dk},
                                     {c.Hkv * c.Tk * c.Dk, c.Dk, c.Tk * c.Dk, 1});
      v = TensorView<const float, 4>(v_store.data(), {c.B, c.Tk, c.Hkv, c.Dv},
                                     {c.Hkv * c.Tk * c.Dv, c.Dv, c.Tk * c.Dv, 1});
    } else {
      q_store = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.Dk}, seed + 1);
      k_store = st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.Dk}, seed + 2);
      v_store = st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.Dv}, seed + 3);
      q = q_store.view(), k = k_store.view(), v = v_store.view();
    }
    inputs.q = q, inputs.k = k, inputs.v = v;
    if (has(c.extras, Extra::mask)) {
      const index_t mb = has(c.extras, Extra::shared_mask) ? 1 : c.B;
      mask = st::random_tensor<3>({mb, c.Tq, c.Tk}, seed + 4, -2.f, 2.f);
      // A few hidden keys everywhere, and the last query row hidden entirely.
      for (index_t b = 0; b < mb; ++b)
        for (index_t i = 0; i < c.Tq; ++i)
          for (index_t j = 0; j < c.Tk; ++j)
            if ((i * 7 + j * 3 + b) % 11 == 0 || i == c.Tq - 1) mask(b, i, j) = -INFINITY;
      inputs.mask = mask.view();
    }
    if (has(c.extras, Extra::alibi)) {
      slopes = Tensor<float, 1>({c.Hq});
      for (index_t h = 0; h < c.Hq; ++h) slopes(h) = std::pow(2.f, -8.f * static_cast<float>(h + 1) / c.Hq);
      inputs.alibi_slopes = slopes.view();
    }
    if (has(c.extras, Extra::sink_logits)) {
      sinks = st::random_tensor<1>({c.Hq}, seed + 5, -1.f, 3.f);
      inputs.sink_logits = sinks.view();
    }
    if (has(c.extras, Extra::positions)) {
      // Non-decreasing positions spread over (and a little beyond) the keys.
      positions = Tensor<std::int32_t, 2>({c.B, c.Tq});
      for (index_t b = 0; b < c.B; ++b)
        for (index_t i = 0; i < c.Tq; ++i)
          positions(b, i) = static_cast<std::int32_t>((i * (c.Tk + 20)) / std::max<index_t>(c.Tq, 1) - 10 + b);
      inputs.positions = positions.view();
    }
  }
};

seqmix::AttentionOptions options_of(const Case& c) {
  seqmix::AttentionOptions o;
  o.causal = c.causal;
  o.window = c.window;
  o.sink_tokens = c.sink_tokens;
  o.softcap = c.softcap;
  return o;
}

struct Result {
  Tensor<float, 4> o_store;
  Tensor<float, 3> lse;
  TensorView<float, 4> o;
  seqmix::AttentionOutputs outputs() { return {o, lse.view()}; }
  Result(const Case& c, bool with_lse) {
    // Strided cases write o into every other head slot of a wider buffer.
    const bool strided = has(c.extras, Extra::strided);
    o_store = Tensor<float, 4>({c.B, c.Tq, strided ? 2 * c.Hq : c.Hq, c.Dv});
    o_store.fill(std::numeric_limits<float>::quiet_NaN());
    o = strided ? TensorView<float, 4>(o_store.data(), {c.B, c.Tq, c.Hq, c.Dv},
                                       {c.Tq * 2 * c.Hq * c.Dv, 2 * c.Hq * c.Dv, 2 * c.Dv, 1})
                : o_store.view();
    if (with_lse) {
      lse = Tensor<float, 3>({c.B, c.Tq, c.Hq});
      lse.fill(std::numeric_limits<float>::quiet_NaN());
    }
  }
};

constexpr double kTol = 1e-4;

void check_against(const Case& c, std::uint64_t seed, const char* form, Result& got, Result& ref) {
  const auto co = st::compare(got.o.as_const(), ref.o.as_const(), kTol);
  INFO(c.describe(seed) << " form=" << form << " output o: " << co.describe());
  CHECK(co.ok);
  if (has(c.extras, Extra::lse)) {
    const auto cl = st::compare(got.lse.cview(), ref.lse.cview(), kTol);
    INFO(c.describe(seed) << " form=" << form << " output lse: " << cl.describe());
    CHECK(cl.ok);
  }
}

}  // namespace

TEST_CASE("attention: fast forms match the reference over the shape/option table", "[attention]") {
  seqmix::ThreadPool pool(2);
  for (const Case& c : cases()) {
    if (c.large && st::small_test_scale()) continue;
    const std::uint64_t seed = 1000 + static_cast<std::uint64_t>(&c - cases().data());
    Problem p(c, seed);
    const auto options = options_of(c);
    const bool lse = has(c.extras, Extra::lse);
    Result ref(c, lse);
    seqmix::reference::attention(p.inputs, ref.outputs(), options);

    Result fast(c, lse), flash(c, lse), decode(c, lse);
    seqmix::attention(p.inputs, fast.outputs(), options, pool);
    check_against(c, seed, "attention(pool 2)", fast, ref);
    seqmix::attention_flash(p.inputs, flash.outputs(), options);
    check_against(c, seed, "attention_flash(serial)", flash, ref);
    if (c.Tq <= 8) {  // decode is meant for a few queries; it still must be right for them
      seqmix::attention_step(p.inputs, decode.outputs(), options, pool);
      check_against(c, seed, "attention_step(pool 2)", decode, ref);
    }
  }
}

TEST_CASE("attention: fully masked rows give zeros and lse -inf", "[attention]") {
  // Tq > Tk with causal alignment: the first Tq - Tk queries sit before every key.
  const Case c{"masked-rows", 1, 7, 3, 2, 1, 64, 64, true, 0, 0, 0.f, static_cast<unsigned>(Extra::lse), false};
  Problem p(c, 7);
  Result got(c, true);
  seqmix::attention(p.inputs, got.outputs(), options_of(c));
  for (index_t i = 0; i < 4; ++i)
    for (index_t h = 0; h < 2; ++h) {
      INFO("query " << i << " head " << h);
      CHECK(got.lse(0, i, h) == -INFINITY);
      for (index_t d = 0; d < 64; ++d) CHECK(got.o(0, i, h, d) == 0.f);
    }
  CHECK(std::isfinite(got.lse(0, 4, 0)));
}

TEST_CASE("attention: merge of two key halves equals one call", "[attention]") {
  // Keys split at `split`; the second half sees absolute key j as j - split, so its queries get
  // positions shifted by -split (causal, window and ALiBi depend only on pos - j). Sinks logits go
  // to one half only. sink_tokens would refer to the second half's own first keys, so not here.
  struct MergeCase {
    const char* name;
    index_t Tq, Tk, split, Hq, Hkv, D;
    bool causal;
    index_t window;
    bool alibi, sink_logits;
  };
  const std::vector<MergeCase> table = {
      {"noncausal", 7, 200, 100, 4, 1, 64, false, 0, false, false},
      {"causal-decode", 1, 1000, 333, 8, 2, 128, true, 0, false, true},
      {"causal-prefill-window-alibi", 64, 300, 150, 4, 4, 80, true, 64, true, false},
  };
  seqmix::ThreadPool pool(2);
  for (const MergeCase& m : table) {
    const std::uint64_t seed = 77;
    INFO(m.name << " Tq=" << m.Tq << " Tk=" << m.Tk << " split=" << m.split << " seed=" << seed);
    auto q = st::random_tensor<4>({1, m.Tq, m.Hq, m.D}, seed + 1);
    auto k = st::random_tensor<4>({1, m.Tk, m.Hkv, m.D}, seed + 2);
    auto v = st::random_tensor<4>({1, m.Tk, m.Hkv, m.D}, seed + 3);
    Tensor<float, 1> slopes({m.Hq}), sinks = st::random_tensor<1>({m.Hq}, seed + 4);
    for (index_t h = 0; h < m.Hq; ++h) slopes(h) = 0.05f * static_cast<float>(h + 1);
    Tensor<std::int32_t, 2> pos_full({1, m.Tq}), pos_second({1, m.Tq});
    for (index_t i = 0; i < m.Tq; ++i) {
      pos_full(0, i) = static_cast<std::int32_t>(m.Tk - m.Tq + i);
      pos_second(0, i) = static_cast<std::int32_t>(m.Tk - m.Tq + i - m.split);
    }
    seqmix::AttentionOptions options;
    options.causal = m.causal;
    options.window = m.window;

    seqmix::AttentionInputs<float> full;
    full.q = q.view(), full.k = k.view(), full.v = v.view();
    if (m.alibi) full.alibi_slopes = slopes.view();
    if (m.sink_logits) full.sink_logits = sinks.view();
    full.positions = pos_full.view();
    seqmix::AttentionInputs<float> first = full, second = full;
    first.k = k.view().slice(1, 0, m.split), first.v = v.view().slice(1, 0, m.split);
    second.k = k.view().slice(1, m.split, m.Tk - m.split), second.v = v.view().slice(1, m.split, m.Tk - m.split);
    second.positions = pos_second.view();
    second.sink_logits = {};

    Tensor<float, 4> o_ref({1, m.Tq, m.Hq, m.D}), o1({1, m.Tq, m.Hq, m.D}), o2({1, m.Tq, m.Hq, m.D});
    Tensor<float, 3> lse_ref({1, m.Tq, m.Hq}), lse1({1, m.Tq, m.Hq}), lse2({1, m.Tq, m.Hq});
    seqmix::reference::attention(full, {o_ref.view(), lse_ref.view()}, options);
    seqmix::attention(first, {o1.view(), lse1.view()}, options, pool);
    seqmix::attention(second, {o2.view(), lse2.view()}, options, pool);
    // In place into the first part; then merge order swapped must agree too (commutative).
    Tensor<float, 4> o_swapped({1, m.Tq, m.Hq, m.D});
    Tensor<float, 3> lse_swapped({1, m.Tq, m.Hq});
    seqmix::attention_merge(o2.view(), lse2.view(), o1.view(), lse1.view(), o_swapped.view(), lse_swapped.view());
    seqmix::attention_merge(o1.view(), lse1.view(), o2.view(), lse2.view(), o1.view(), lse1.view(), pool);
    const auto co = st::compare(o1.cview(), o_ref.cview(), kTol);
    const auto cl = st::compare(lse1.cview(), lse_ref.cview(), kTol);
    const auto cs = st::compare(o_swapped.cview(), o_ref.cview(), kTol);
    INFO("o: " << co.describe() << "; lse: " << cl.describe() << "; swapped o: " << cs.describe());
    CHECK(co.ok);
    CHECK(cl.ok);
    CHECK(cs.ok);
  }
}

TEST_CASE("attention_merge: associative, and empty parts are neutral", "[attention]") {
  const index_t B = 1, T = 3, H = 2, D = 5;
  std::vector<Tensor<float, 4>> o;
  std::vector<Tensor<float, 3>> lse;
  for (int part = 0; part < 3; ++part) {
    o.push_back(st::random_tensor<4>({B, T, H, D}, 10 + part));
    lse.push_back(st::random_tensor<3>({B, T, H}, 20 + part, -3.f, 3.f));
  }
  lse[2](0, 1, 1) = -INFINITY;  // one part with no visible key in one row
  Tensor<float, 4> left({B, T, H, D}), right({B, T, H, D});
  Tensor<float, 3> lse_left({B, T, H}), lse_right({B, T, H});
  // (a + b) + c
  seqmix::attention_merge(o[0].cview(), lse[0].cview(), o[1].cview(), lse[1].cview(), left.view(), lse_left.view());
  seqmix::attention_merge(left.cview(), lse_left.cview(), o[2].cview(), lse[2].cview(), left.view(), lse_left.view());
  // a + (b + c)
  seqmix::attention_merge(o[1].cview(), lse[1].cview(), o[2].cview(), lse[2].cview(), right.view(), lse_right.view());
  seqmix::attention_merge(o[0].cview(), lse[0].cview(), right.cview(), lse_right.cview(), right.view(),
                          lse_right.view());
  CHECK(st::compare(left.cview(), right.cview(), 1e-6).ok);
  CHECK(st::compare(lse_left.cview(), lse_right.cview(), 1e-6).ok);

  // Two empty parts: zeros and -inf, no NaN.
  Tensor<float, 3> empty({B, T, H});
  empty.fill(-INFINITY);
  Tensor<float, 4> merged({B, T, H, D});
  Tensor<float, 3> lse_merged({B, T, H});
  seqmix::attention_merge(o[0].cview(), empty.cview(), o[1].cview(), empty.cview(), merged.view(), lse_merged.view());
  for (float x : merged) CHECK(x == 0.f);
  for (float x : lse_merged) CHECK(x == -INFINITY);
}

TEST_CASE("attention: bad arguments are rejected before any output is written", "[attention]") {
  auto q = st::random_tensor<4>({1, 4, 6, 64}, 1);
  auto k = st::random_tensor<4>({1, 8, 4, 64}, 2);  // 4 KV heads do not divide 6 query heads
  auto v = st::random_tensor<4>({1, 8, 4, 32}, 3);
  Tensor<float, 4> o({1, 4, 6, 32});
  o.fill(42.f);
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  const seqmix::AttentionOutputs out{o.view(), {}};
  CHECK_THROWS_AS(seqmix::attention(in, out), seqmix::ShapeError);
  CHECK_THROWS_WITH(seqmix::reference::attention(in, out), Catch::Contains("'k'") && Catch::Contains("6"));

  auto k_ok = st::random_tensor<4>({1, 8, 2, 64}, 2);
  auto v_short = st::random_tensor<4>({1, 7, 2, 32}, 3);
  in.k = k_ok.view(), in.v = v_short.view();
  CHECK_THROWS_WITH(seqmix::attention(in, out), Catch::Contains("'v'") && Catch::Contains("[1, 7, 2, 32]"));

  auto v_ok = st::random_tensor<4>({1, 8, 2, 32}, 3);
  in.v = v_ok.view();
  Tensor<float, 3> bad_mask({1, 4, 9});
  in.mask = bad_mask.view();
  CHECK_THROWS_WITH(seqmix::attention(in, out), Catch::Contains("'mask'"));
  in.mask = {};
  seqmix::AttentionOptions options;
  options.window = -1;
  CHECK_THROWS_WITH(seqmix::attention(in, out, options), Catch::Contains("window"));
  Tensor<float, 4> o_wrong({1, 4, 6, 64});
  CHECK_THROWS_WITH(seqmix::attention(in, seqmix::AttentionOutputs{o_wrong.view(), {}}), Catch::Contains("'o'"));
  for (float x : o) CHECK(x == 42.f);
}

namespace {

// K/V stored as KV: every form must equal the reference run in fp32 on the same rounded values.
template <class KV>
void check_kv_storage(const Case& c, std::uint64_t seed, const char* kv_name) {
  Problem p(c, seed);
  Tensor<KV, 4> k({c.B, c.Tk, c.Hkv, c.Dk}), v({c.B, c.Tk, c.Hkv, c.Dv});
  seqmix::copy(p.k, k.view());
  seqmix::copy(p.v, v.view());
  // The reference sees exactly the values the kernels see: the stored ones, widened back.
  Tensor<float, 4> k_rounded({c.B, c.Tk, c.Hkv, c.Dk}), v_rounded({c.B, c.Tk, c.Hkv, c.Dv});
  seqmix::copy(k.cview(), k_rounded.view());
  seqmix::copy(v.cview(), v_rounded.view());
  seqmix::AttentionInputs<float> rounded = p.inputs;
  rounded.k = k_rounded.view(), rounded.v = v_rounded.view();
  seqmix::AttentionInputs<KV> in;
  in.q = p.q, in.k = k.view(), in.v = v.view();
  in.alibi_slopes = p.inputs.alibi_slopes, in.sink_logits = p.inputs.sink_logits, in.mask = p.inputs.mask;
  const auto options = options_of(c);
  const bool lse = has(c.extras, Extra::lse);
  Result ref(c, lse), fast(c, lse), flash(c, lse), decode(c, lse);
  seqmix::reference::attention(rounded, ref.outputs(), options);
  seqmix::ThreadPool pool(2);
  const std::string name = std::string(kv_name);
  seqmix::attention(in, fast.outputs(), options, pool);
  check_against(c, seed, ("attention<" + name + ">").c_str(), fast, ref);
  seqmix::attention_flash(in, flash.outputs(), options, pool);
  check_against(c, seed, ("attention_flash<" + name + ">").c_str(), flash, ref);
  if (c.Tq <= 8) {
    seqmix::attention_step(in, decode.outputs(), options, pool);
    check_against(c, seed, ("attention_step<" + name + ">").c_str(), decode, ref);
  }
}

// Shapes for 16-bit K/V: D a multiple of the vector width and not (80, 72: the scalar tail of
// each row), decode and prefill, a full tile and a ragged one.
const std::vector<Case>& kv_storage_cases() {
  using E = Extra;
  static const std::vector<Case> table = {
      {"kv16-decode-gqa4", 1, 1, 1000, 8, 2, 128, 128, true, 0, 0, 0.f, E::lse, false},
      {"kv16-decode-d80-window", 2, 1, 1000, 8, 1, 80, 72, true, 300, 4, 0.f, E::lse | E::alibi, false},
      {"kv16-draft-tokens", 1, 7, 1000, 8, 2, 80, 64, true, 300, 4, 0.f, E::lse | E::alibi, false},
      {"kv16-prefill", 1, 64, 65, 8, 2, 64, 64, true, 0, 0, 0.f, E::lse | E::sink_logits, false},
      {"kv16-mask-dv-ne-dk", 1, 64, 200, 4, 4, 64, 32, false, 0, 0, 0.f, E::lse | E::mask, false},
  };
  return table;
}

}  // namespace

TEST_CASE("attention: f16 and bf16 K/V match the reference on the same rounded values", "[attention]") {
  for (const Case& c : kv_storage_cases()) {
    const std::uint64_t seed = 500 + static_cast<std::uint64_t>(&c - kv_storage_cases().data());
    check_kv_storage<seqmix::f16>(c, seed, "f16");
    check_kv_storage<seqmix::bf16>(c, seed, "bf16");
  }
}

TEST_CASE("attention: K/V of another storage type go through the converting tile loads", "[attention]") {
  // double storage has no vector conversion: the scalar per-element branch of kv_row_to_float.
  check_kv_storage<double>(Case{"kv-double", 1, 7, 1000, 8, 2, 80, 64, true, 300, 4, 0.f, Extra::lse | Extra::alibi, false},
                           99, "double");
}

TEST_CASE("attention: the K/V row conversion is bit-exact for every f16 and bf16 pattern", "[attention]") {
  // All 65536 patterns, converted as contiguous rows (vector body + scalar tail) and one strided
  // row, against core/half.hpp's scalar conversions; NaNs compared by bits (both quiet them).
  const auto check = [](auto tag, auto scalar, const char* name) {
    using Half = decltype(tag);
    std::vector<Half> src(65536 + 3);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = Half::from_bits(static_cast<std::uint16_t>(i * 40503u));
    std::vector<float> dst(src.size());
    seqmix::detail::kv_row_to_float(src.data(), 1, static_cast<index_t>(src.size()), dst.data());
    index_t mismatches = 0;
    for (std::size_t i = 0; i < src.size(); ++i) {
      const float want = scalar(src[i].bits);
      if (seqmix::detail::float_bits(dst[i]) != seqmix::detail::float_bits(want) && mismatches++ < 5)
        UNSCOPED_INFO(name << " pattern 0x" << std::hex << src[i].bits << ": got " << dst[i] << " want " << want);
    }
    std::vector<float> strided(7);
    seqmix::detail::kv_row_to_float(src.data(), 3, 7, strided.data());
    for (index_t c = 0; c < 7; ++c)
      if (seqmix::detail::float_bits(strided[c]) != seqmix::detail::float_bits(scalar(src[3 * c].bits))) ++mismatches;
    CHECK(mismatches == 0);
  };
  check(seqmix::f16{}, seqmix::f16_to_float, "f16");
  check(seqmix::bf16{}, seqmix::bf16_to_float, "bf16");
}

// A key hidden by a -inf mask entry takes no part (SPEC), even when the key itself is NaN or
// inf: the row equals the same call on finite data (the mask entry used to be added to a NaN
// logit, making the row NaN in the reference, the flash prefill and the decode alike).
TEST_CASE("attention: a NaN key under a -inf mask entry does not contaminate its row", "[attention]") {
  const index_t B = 1, Tk = 40, Hq = 4, Hkv = 2, D = 16, bad = 17;
  for (const index_t Tq : {index_t{1}, index_t{8}})
    for (const float poison : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
      INFO("Tq=" << Tq << " poison=" << poison);
      const auto q = st::random_tensor<4>({B, Tq, Hq, D}, 81), v = st::random_tensor<4>({B, Tk, Hkv, D}, 83);
      auto k = st::random_tensor<4>({B, Tk, Hkv, D}, 82);
      const Tensor<float, 4> k_clean = k;
      k(0, bad, 1, 3) = poison;
      Tensor<float, 3> mask({1, Tq, Tk});
      mask.fill(0.f);
      for (index_t i = 0; i < Tq; ++i) mask(0, i, bad) = -std::numeric_limits<float>::infinity();
      const auto run = [&](const Tensor<float, 4>& keys, bool reference) {
        seqmix::AttentionInputs<float> in;
        in.q = q.cview(), in.k = keys.cview(), in.v = v.cview(), in.mask = mask.cview();
        Tensor<float, 4> o({B, Tq, Hq, D});
        Tensor<float, 3> lse({B, Tq, Hq});
        if (reference) seqmix::reference::attention(in, {o.view(), lse.view()});
        else seqmix::attention(in, {o.view(), lse.view()});
        return std::make_pair(std::move(o), std::move(lse));
      };
      for (const bool reference : {true, false}) {
        const auto hit = run(k, reference), clean = run(k_clean, reference);
        for (index_t i = 0; i < hit.first.numel(); ++i) {
          REQUIRE(std::isfinite(hit.first.data()[i]));
          REQUIRE(std::abs(hit.first.data()[i] - clean.first.data()[i]) <= 1e-6f);
        }
        for (index_t i = 0; i < hit.second.numel(); ++i) REQUIRE(std::isfinite(hit.second.data()[i]));
      }
    }
}

// The vectorized test for a weight of exactly 0 that decides whether a P V tile guards its value
// rows against NaN / inf (NonFiniteKeys): a single 0 (or -0) anywhere, in the vector part or the
// scalar tail of any row, is found; tiny but non-zero weights are not taken for 0.
TEST_CASE("attention: the zero-weight test finds a single 0 at every place of ragged tiles", "[attention]") {
  const index_t ld = 64;
  for (const index_t n : {index_t{1}, index_t{3}, index_t{7}, index_t{15}, index_t{16}, index_t{17}, index_t{63}, index_t{64}})
    for (const index_t M : {index_t{1}, index_t{4}, index_t{5}}) {
      INFO("n=" << n << " M=" << M);
      std::vector<float> P(static_cast<std::size_t>(M * ld), 0.f);  // padding past n stays 0
      for (index_t r = 0; r < M; ++r)
        for (index_t j = 0; j < n; ++j) P[static_cast<std::size_t>(r * ld + j)] = 1e-30f * static_cast<float>(1 + j % 3);
      CHECK_FALSE(seqmix::detail::has_zero_weight(P.data(), ld, M, n));
      for (index_t r = 0; r < M; ++r)
        for (index_t j = 0; j < n; ++j) {
          float& p = P[static_cast<std::size_t>(r * ld + j)];
          const float kept = p;
          p = (j % 2 == 0) ? 0.f : -0.f;
          if (!seqmix::detail::has_zero_weight(P.data(), ld, M, n)) FAIL_CHECK("missed the 0 at row " << r << " key " << j);
          p = kept;
        }
    }
}
