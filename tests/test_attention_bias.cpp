// Relative position biases in the attention tile loop (issue 15 item 3): T5 buckets (causal and
// bidirectional, per-head table), KERPLE log and power, per-head scales; each fused form
// (attention, attention_flash, attention_step, reference::attention) equals attention on that
// head alone with the same bias written as a dense [B,Tq,Tk] mask and the head's scale.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RelativeBiasKind;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Case {
  const char* name;
  RelativeBiasKind kind;
  bool bidirectional;
  index_t B, Tq, Tk, Hq, Hkv, D;
  bool causal, positions, head_scales;
  std::string describe() const {
    std::ostringstream s;
    s << name << ": kind=" << static_cast<int>(kind) << " bidirectional=" << bidirectional << " B=" << B << " Tq=" << Tq
      << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " causal=" << causal
      << " positions=" << positions << " head_scales=" << head_scales << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

const std::vector<Case> kCases = {
    {"t5-causal-prefill", RelativeBiasKind::t5, false, 2, 100, 100, 4, 2, 64, true, false, false},
    {"t5-causal-decode", RelativeBiasKind::t5, false, 1, 1, 1000, 8, 2, 64, true, false, true},
    {"t5-bidirectional", RelativeBiasKind::t5, true, 1, 150, 150, 4, 4, 64, false, false, false},
    {"t5-bidirectional-positions", RelativeBiasKind::t5, true, 2, 7, 300, 4, 1, 80, false, true, true},
    // max_distance 100 past Tk: the per-offset table stops at Tk and does not clamp; the
    // positions put keys farther than that from their queries (the formula's side).
    {"t5-causal-short", RelativeBiasKind::t5, false, 1, 40, 40, 4, 2, 64, true, false, false},
    {"t5-bidirectional-positions-beyond", RelativeBiasKind::t5, true, 2, 30, 60, 4, 2, 64, false, true, false},
    {"kerple-log-prefill", RelativeBiasKind::kerple_log, false, 1, 77, 77, 8, 2, 64, true, false, true},
    {"kerple-log-decode", RelativeBiasKind::kerple_log, false, 2, 2, 700, 4, 2, 128, true, false, false},
    {"kerple-power-prefill", RelativeBiasKind::kerple_power, false, 1, 65, 200, 4, 2, 64, true, true, false},
    {"kerple-power-decode", RelativeBiasKind::kerple_power, false, 1, 1, 513, 8, 1, 64, true, false, true},
    // Without the causal rule keys after the query count too: both halves of the per-offset
    // table, which holds each distance once and mirrors it.
    {"kerple-log-noncausal", RelativeBiasKind::kerple_log, false, 1, 70, 90, 4, 2, 64, false, false, true},
    {"kerple-power-noncausal-positions", RelativeBiasKind::kerple_power, false, 2, 33, 130, 4, 2, 64, false, true, false},
    // One KV head, head size 80 (not a power of two); with r2 near 2 the rows' largest logits
    // reach -600 (the fp32 bound in check_case).
    {"kerple-power-noncausal-positions-d80", RelativeBiasKind::kerple_power, false, 2, 33, 130, 4, 1, 80, false, true, false},
    {"head-scales-only", RelativeBiasKind::none, false, 1, 40, 40, 4, 2, 64, true, false, true},
};

// The largest |max_j s_ij| over the rows of query head h, in double: s = scale q.k + bias (the
// dense mask's bias), the logit magnitude that sets the fp32 forms' rounding.
template <class KV>
double largest_row_max_logit(const seqmix::AttentionInputs<KV>& in, const Tensor<float, 3>& mask, index_t h, float scale,
                             bool causal) {
  const index_t B = in.q.size(0), Tq = in.q.size(1), Tk = in.k.size(1), D = in.q.size(3);
  const index_t kv_head = h / (in.q.size(2) / in.k.size(2));
  double largest = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i) {
      double row_max = -INFINITY;
      const index_t last_visible = causal ? seqmix::detail::query_position(in, b, i) : Tk - 1;
      for (index_t j = 0; j <= std::min(last_visible, Tk - 1); ++j) {
        double dot = 0;
        for (index_t d = 0; d < D; ++d)
          dot += static_cast<double>(in.q(b, i, h, d)) * static_cast<double>(static_cast<float>(in.k(b, j, kv_head, d)));
        row_max = std::max(row_max, static_cast<double>(scale) * dot + static_cast<double>(mask(b, i, j)));
      }
      if (row_max > -INFINITY) largest = std::max(largest, std::abs(row_max));
    }
  return largest;
}

template <class KV>
void check_case(const Case& c, std::uint64_t seed) {
  INFO(c.describe() << " kv bytes=" << sizeof(KV));
  const auto q = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed);
  Tensor<KV, 4> k({c.B, c.Tk, c.Hkv, c.D}), v({c.B, c.Tk, c.Hkv, c.D});
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 1, -2.f, 2.f).cview(), k.view());
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2).cview(), v.view());
  const index_t buckets = c.bidirectional ? 32 : 16;
  const auto table = st::random_tensor<2>({c.Hq, buckets}, seed + 3, -3.f, 3.f);
  const auto r1 = st::random_tensor<1>({c.Hq}, seed + 4, 0.05f, 2.f);
  const auto r2 = st::random_tensor<1>({c.Hq}, seed + 5, 0.1f, c.kind == RelativeBiasKind::kerple_power ? 2.f : 5.f);
  const auto scales = st::random_tensor<1>({c.Hq}, seed + 6, 0.5f, 2.f);
  Tensor<std::int64_t, 2> positions({c.B, c.Tq});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t i = 0; i < c.Tq; ++i) positions(b, i) = c.Tk - c.Tq - 13 * b + 2 * i;

  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (c.positions) in.positions = positions.view();
  in.relative_bias.kind = c.kind;
  in.relative_bias.table = table.view(), in.relative_bias.bidirectional = c.bidirectional;
  in.relative_bias.max_distance = 100;
  in.relative_bias.r1 = r1.view(), in.relative_bias.r2 = r2.view();
  if (c.head_scales) in.head_scales = scales.view();
  seqmix::AttentionOptions options;
  options.causal = c.causal;

  Tensor<float, 4> o_fast({c.B, c.Tq, c.Hq, c.D}), o_flash({c.B, c.Tq, c.Hq, c.D}), o_step({c.B, c.Tq, c.Hq, c.D});
  Tensor<float, 4> o_ref({c.B, c.Tq, c.Hq, c.D});
  seqmix::ThreadPool pool(2);
  seqmix::attention(in, {o_fast.view()}, options, pool);
  seqmix::attention_flash(in, {o_flash.view()}, options, pool);
  seqmix::attention_step(in, {o_step.view()}, options, pool);
  seqmix::reference::attention(in, {o_ref.view()}, options);

  // Head by head: the same bias as a dense mask, the head's scale as the option.
  const index_t G = c.Hq / c.Hkv;
  Tensor<float, 3> mask({c.B, c.Tq, c.Tk});
  for (index_t h = 0; h < c.Hq; ++h) {
    INFO("head " << h);
    for (index_t b = 0; b < c.B; ++b)
      for (index_t i = 0; i < c.Tq; ++i)
        for (index_t j = 0; j < c.Tk; ++j)
          mask(b, i, j) = static_cast<float>(
              seqmix::detail::relative_bias_value(in.relative_bias, h, seqmix::detail::query_position(in, b, i), j));
    seqmix::AttentionInputs<KV> one;
    one.q = in.q.slice(2, h, 1), one.k = in.k.slice(2, h / G, 1), one.v = in.v.slice(2, h / G, 1);
    one.positions = in.positions, one.mask = mask.view();
    seqmix::AttentionOptions one_options = options;
    one_options.scale = 1.f / std::sqrt(static_cast<float>(c.D)) * (c.head_scales ? scales(h) : 1.f);
    Tensor<float, 4> o_one({c.B, c.Tq, 1, c.D}), o_one_ref({c.B, c.Tq, 1, c.D});
    seqmix::attention(one, {o_one.view()}, one_options, pool);
    seqmix::reference::attention(one, {o_one_ref.view()}, one_options);
    // The fp32 forms hold each logit s in fp32, an absolute error near |s| 2^-24, which the
    // softmax turns into relative weight errors of that size; with large biases (KERPLE power
    // reaches -600 here) that is above 1e-6, in the fused and the dense-mask form alike (the
    // double reference stays at 3e-8 of a double evaluation). Two such forms agree to 1e-6 plus
    // twice that.
    const double fp32_tol = 1e-6 + std::ldexp(largest_row_max_logit(in, mask, h, *one_options.scale, c.causal), -23);
    INFO("fp32 bound " << fp32_tol);
    st::require_close("attention (relative bias)", o_fast.cview().slice(2, h, 1), o_one.cview(), fp32_tol);
    st::require_close("attention_flash (relative bias)", o_flash.cview().slice(2, h, 1), o_one.cview(), fp32_tol);
    st::require_close("attention_step (relative bias)", o_step.cview().slice(2, h, 1), o_one.cview(), fp32_tol);
    st::require_close("reference::attention (relative bias)", o_ref.cview().slice(2, h, 1), o_one_ref.cview(), 1e-6);
  }
}

}  // namespace

TEST_CASE("relative biases in the tile loop equal the same bias as a dense mask", "[attention][bias]") {
  for (const Case& c : kCases) {
    const auto index = &c - kCases.data();
    const std::uint64_t seed = 7000 + static_cast<std::uint64_t>(index) * 10;
    check_case<float>(c, seed);
    // Under the sanitizers (small scale) every other case with fp16 K/V (half the test's time
    // there): the bias is added to the logits the same way whatever the K/V type, which only
    // changes how K and V are loaded (test_attention_half_io.cpp sweeps that).
    if (!st::small_test_scale() || index % 2 == 0) check_case<seqmix::f16>(c, seed);
  }
}

// Query positions far beyond the keys (up to the 2^62 validation allows): every key lies past
// the per-offset table, whose slice a row must then not even point at (a pointer formed that
// far outside overflows the address space: clang's UBSan stops on it).
TEST_CASE("relative biases with query positions near 2^61 equal the reference", "[attention][bias]") {
  const index_t Tq = 16, Tk = 40, Hq = 2, D = 16, W = 4;
  const auto q = st::random_tensor<4>({1, Tq, Hq, D}, 7500);
  const auto k = st::random_tensor<4>({1, Tk, 1, D}, 7501, -2.f, 2.f);
  const auto v = st::random_tensor<4>({1, Tk, 1, D}, 7502);
  const auto table = st::random_tensor<2>({Hq, 16}, 7503, -3.f, 3.f);
  const auto r = st::random_tensor<1>({Hq}, 7504, 0.1f, 1.f);
  const auto w = st::random_tensor<2>({Hq, W}, 7505, -1.f, 1.f);
  const auto b2 = st::random_tensor<1>({Hq}, 7506);
  Tensor<std::int64_t, 2> positions({1, Tq});
  for (index_t i = 0; i < Tq; ++i) positions(0, i) = (std::int64_t{1} << 61) + 3 * i;
  for (int variant = 0; variant < 5; ++variant) {
    seqmix::AttentionInputs<float> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.positions = positions.view();
    seqmix::RelativeBias& rb = in.relative_bias;
    rb.table = table.view(), rb.r1 = r.view(), rb.r2 = r.view();
    rb.fire_w1 = w.view(), rb.fire_b1 = w.view(), rb.fire_w2 = w.view(), rb.fire_b2 = b2.view();
    if (variant == 0) rb.kind = RelativeBiasKind::t5, rb.max_distance = 20;    // the table clamps
    if (variant == 1) rb.kind = RelativeBiasKind::t5, rb.max_distance = 1000;  // it stops at Tk
    if (variant == 2) rb.kind = RelativeBiasKind::kerple_log;
    if (variant == 3) rb.kind = RelativeBiasKind::fire, rb.fire_threshold = 1e30f;  // rows on the table
    if (variant == 4) rb.kind = RelativeBiasKind::fire;                             // rows on the lines
    Tensor<float, 4> o({1, Tq, Hq, D}), o_ref({1, Tq, Hq, D});
    seqmix::attention_flash(in, {o.view()});
    seqmix::reference::attention(in, {o_ref.view()});
    INFO("variant " << variant);
    st::require_close("attention_flash (far positions)", o.cview(), o_ref.cview(), 1e-5);
  }
}

TEST_CASE("t5 buckets follow transformers' _relative_position_bucket", "[attention][bias]") {
  using seqmix::detail::t5_bucket;
  // Causal, 32 buckets, max_distance 128: exact up to 15, then log buckets, 31 from 128 on.
  CHECK(t5_bucket(0, false, 32, 128) == 0);
  CHECK(t5_bucket(5, false, 32, 128) == 0);  // keys after the query
  CHECK(t5_bucket(-15, false, 32, 128) == 15);
  CHECK(t5_bucket(-16, false, 32, 128) == 16);
  CHECK(t5_bucket(-32, false, 32, 128) == 21);  // 16 + floor(ln 2 / ln 8 * 16) = 16 + 5
  CHECK(t5_bucket(-127, false, 32, 128) == 31);
  CHECK(t5_bucket(-100000, false, 32, 128) == 31);
  // Bidirectional: 16 buckets each side, 8 exact; keys after the query from 16 on.
  CHECK(t5_bucket(-7, true, 32, 128) == 7);
  CHECK(t5_bucket(7, true, 32, 128) == 23);
  CHECK(t5_bucket(-16, true, 32, 128) == 10);  // 8 + floor(ln 2 / ln 16 * 8) = 8 + 2
  CHECK(t5_bucket(1000, true, 32, 128) == 31);
}

TEST_CASE("relative biases and head scales refuse bad parameters before writing", "[attention][bias]") {
  const index_t Hq = 4;
  const auto q = st::random_tensor<4>({1, 3, Hq, 64}, 1);
  const auto k = st::random_tensor<4>({1, 50, 2, 64}, 2);
  const auto v = st::random_tensor<4>({1, 50, 2, 64}, 3);
  Tensor<float, 4> o({1, 3, Hq, 64});
  o.fill(7.f);
  Tensor<float, 2> table({Hq, 32}), small_table({Hq, 3});
  Tensor<float, 1> r1({Hq}), r2({Hq}), scales({Hq});
  r1.fill(1.f), r2.fill(1.f), scales.fill(1.f);
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  const auto refused = [&](const char* argument) {
    for (int form = 0; form < 3; ++form) {
      st::require_shape_error(argument, [&] {
        if (form == 0) seqmix::attention(in, {o.view()});
        if (form == 1) seqmix::attention_flash(in, {o.view()});
        if (form == 2) seqmix::reference::attention(in, {o.view()});
      });
      for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
    }
  };
  in.relative_bias.kind = RelativeBiasKind::t5;
  refused("relative_bias.table");  // missing
  in.relative_bias.table = small_table.view();
  in.relative_bias.bidirectional = true;  // 3 buckets: no exact bucket per side
  refused("relative_bias.table");
  in.relative_bias.table = table.view(), in.relative_bias.max_distance = 8;  // 8 exact buckets per side
  refused("relative_bias.max_distance");
  in.relative_bias = {};
  in.relative_bias.kind = RelativeBiasKind::kerple_power;
  in.relative_bias.r1 = r1.view();
  refused("relative_bias.r2");  // missing
  in.relative_bias.r2 = r2.view();
  r2(2) = 2.5f;  // power needs r2 <= 2
  refused("relative_bias.r2");
  r2(2) = 1.f, r1(1) = 0.f;
  refused("relative_bias.r1");
  r1(1) = 1.f;
  in.relative_bias.kind = static_cast<RelativeBiasKind>(9);
  refused("relative_bias.kind");
  in.relative_bias = {};
  scales(3) = std::nanf("");
  in.head_scales = scales.view();
  refused("head_scales");
}

namespace {

// attention_step adds each tile's relative bias from parts shared by every head (DecodeTileBias:
// T5 / table columns, KERPLE-power ln d, FIRE's x and lines): a sweep of its shapes against the
// reference, per bias kind and K/V type. Tk around the 64-key tile (1, 63, 65, ragged 1000),
// groups of 1 to 4 heads, B > 1, Tq > 1 (draft tokens), D = 80 (heads copied one by one into
// the scratch tiles, so the shared parts are prepared per KV head), keys after the query
// (not causal), positions far past the keys, and Tk 6000 (KERPLE log's series from ~2000 keys
// away on).
struct StepShape {
  index_t B, Tq, Tk, Hq, Hkv, D;
  bool causal;
  std::int64_t first_position;  // -1: the default positions (the last Tq keys)
};

const std::vector<StepShape> kStepShapes = {
    {1, 1, 1, 4, 4, 64, true, -1},      {1, 1, 63, 8, 2, 64, true, -1},    {2, 1, 65, 6, 3, 64, false, -1},
    {2, 3, 200, 8, 2, 64, true, -1},    {1, 2, 1000, 4, 1, 128, true, -1}, {2, 1, 130, 4, 2, 80, false, -1},
    {1, 2, 150, 4, 2, 64, true, std::int64_t{1} << 40}, {1, 1, 6000, 4, 2, 64, true, -1},
};

const RelativeBiasKind kStepKinds[] = {RelativeBiasKind::t5,         RelativeBiasKind::distance_table,
                                       RelativeBiasKind::kerple_log, RelativeBiasKind::kerple_power,
                                       RelativeBiasKind::fire};

// A shape's queries, keys and values, made once for all its bias kinds and variants: at Tk = 6000
// making them per call (allocation, page faults and zeroing included) took 40% of the test under
// the sanitizers.
template <class KV>
struct StepTensors {
  Tensor<float, 4> q;
  Tensor<KV, 4> k, v;
  StepTensors(const StepShape& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed)),
        k({c.B, c.Tk, c.Hkv, c.D}),
        v({c.B, c.Tk, c.Hkv, c.D}) {
    seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 1, -2.f, 2.f).cview(), k.view());
    seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2).cview(), v.view());
  }
};

template <class KV>
void check_step_bias(const StepShape& c, const StepTensors<KV>& data, RelativeBiasKind kind, int variant,
                     std::uint64_t seed) {
  const index_t W = 8;
  const Tensor<float, 4>& q = data.q;
  const Tensor<KV, 4>& k = data.k;
  const Tensor<KV, 4>& v = data.v;
  const auto table = st::random_tensor<2>({c.Hq, 32}, seed + 3, -3.f, 3.f);
  const auto r1 = st::random_tensor<1>({c.Hq}, seed + 4, 0.05f, 1.f);
  const auto r2 = st::random_tensor<1>({c.Hq}, seed + 5, 0.1f, kind == RelativeBiasKind::kerple_power ? 0.6f : 3.f);
  const auto w1 = st::random_tensor<2>({c.Hq, W}, seed + 6, -4.f, 4.f), b1 = st::random_tensor<2>({c.Hq, W}, seed + 7);
  const auto w2 = st::random_tensor<2>({c.Hq, W}, seed + 8);
  const auto b2 = st::random_tensor<1>({c.Hq}, seed + 9);
  Tensor<std::int64_t, 2> positions({c.B, c.Tq});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t i = 0; i < c.Tq; ++i) positions(b, i) = c.first_position + 5 * b + 2 * i;

  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (c.first_position >= 0) in.positions = positions.view();
  seqmix::RelativeBias& rb = in.relative_bias;
  rb.kind = kind, rb.table = table.view(), rb.r1 = r1.view(), rb.r2 = r2.view();
  rb.bidirectional = variant == 1, rb.max_distance = 20;  // t5: 16 or 32 buckets below
  if (kind == RelativeBiasKind::t5) rb.table = table.cview().slice(1, 0, rb.bidirectional ? 32 : 16);
  if (kind == RelativeBiasKind::distance_table) rb.table = table.cview().slice(1, 0, variant == 1 ? 32 : 5);
  rb.fire_c = 0.3f, rb.fire_threshold = variant == 1 ? 1e6f : 30.f;  // rows below L, or above it
  if (variant == 1) {  // the paper's layout: one hidden layer every head reads
    rb.fire_w1 = seqmix::ConstView<float, 2>(w1.data(), {c.Hq, W}, {0, 1});
    rb.fire_b1 = seqmix::ConstView<float, 2>(b1.data(), {c.Hq, W}, {0, 1});
  } else {
    rb.fire_w1 = w1.view(), rb.fire_b1 = b1.view();
  }
  rb.fire_w2 = w2.view(), rb.fire_b2 = b2.view();
  seqmix::AttentionOptions options;
  options.causal = c.causal;

  Tensor<float, 4> o_step({c.B, c.Tq, c.Hq, c.D}), o_ref({c.B, c.Tq, c.Hq, c.D});
  seqmix::ThreadPool pool(2);
  seqmix::attention_step(in, {o_step.view()}, options, pool);
  seqmix::reference::attention(in, {o_ref.view()}, options);
  // fp32 logits against the reference's double: biases here stay within ~60 of the rows' maxima.
  st::require_close("attention_step (per-tile relative bias)", o_step.cview(), o_ref.cview(), 2e-5);
}

// Every bias kind and variant of one shape on one KV type (seeds from `seed` on, 10 apart).
template <class KV>
void check_step_biases(const StepShape& c, std::uint64_t seed) {
  const StepTensors<KV> data(c, seed);
  for (const RelativeBiasKind kind : kStepKinds)
    for (int variant = 0; variant < 2; ++variant) {
      seed += 10;
      // KERPLE power 2^40 keys away is a bias near -1e7, where an fp32 logit's ulp is 1: no
      // fp32 form can follow the reference there (the former per-row formula failed alike).
      if (kind == RelativeBiasKind::kerple_power && c.first_position > 0) continue;
      INFO("B=" << c.B << " Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " D=" << c.D
                << " causal=" << c.causal << " first_position=" << c.first_position << " kind=" << static_cast<int>(kind)
                << " variant=" << variant << " kv bytes=" << sizeof(KV) << " seed=" << seed
                << " simd=" << seqmix::simd::arch_name());
      check_step_bias<KV>(c, data, kind, variant, seed);
    }
}

}  // namespace

TEST_CASE("attention_step's per-tile relative bias equals the reference", "[attention][bias]") {
  std::uint64_t seed = 7600;
  for (const StepShape& c : kStepShapes) {
    check_step_biases<float>(c, seed);
    check_step_biases<seqmix::f16>(c, seed);
    check_step_biases<seqmix::bf16>(c, seed);
    seed += 100;
  }
}

// The per-tile bias itself, row by row against relative_bias_value: outputs average a bias
// error over many keys (a wrong series term of 1e-4 moved no output by 2e-5), so the values are
// checked directly, to a few fp32 ulps. Keys near and far from the query (KERPLE log's log1p
// and its series), on both sides, tiles of 1, 7 and 64 keys, several queries per tile.
TEST_CASE("decode's per-tile relative bias equals relative_bias_value key by key", "[attention][bias]") {
  using seqmix::detail::DecodeTileBias;
  const index_t Hq = 4, W = 8, T = seqmix::detail::kDecodeTile;
  const auto table = st::random_tensor<2>({Hq, 32}, 7900, -3.f, 3.f);
  const auto r1 = st::random_tensor<1>({Hq}, 7901, 0.05f, 2.f);
  const auto r2 = st::random_tensor<1>({Hq}, 7902, 0.1f, 2.f);
  const auto w1 = st::random_tensor<2>({Hq, W}, 7903, -4.f, 4.f), b1 = st::random_tensor<2>({Hq, W}, 7904);
  const auto w2 = st::random_tensor<2>({Hq, W}, 7905);
  const auto b2 = st::random_tensor<1>({Hq}, 7906);
  const std::int64_t positions[] = {0, 5, 70, 3000, 100000, std::int64_t{1} << 40};
  for (const RelativeBiasKind kind : kStepKinds) {
    seqmix::RelativeBias rb;
    rb.kind = kind, rb.r1 = r1.view(), rb.r2 = r2.view(), rb.max_distance = 20;
    rb.table = table.cview().slice(1, 0, kind == RelativeBiasKind::t5 ? 16 : 32);
    rb.fire_w1 = w1.view(), rb.fire_b1 = b1.view(), rb.fire_w2 = w2.view(), rb.fire_b2 = b2.view();
    rb.fire_c = 0.3f, rb.fire_threshold = 100.f;
    seqmix::detail::DistanceBiasCache lines;
    lines.build_fire_lines(rb, Hq);
    DecodeTileBias bias;
    for (const std::int64_t pos : positions)
      for (const index_t n : {index_t{1}, index_t{7}, T})
        for (const std::int64_t j0 : {pos - 4000, pos - 70, pos - 3, pos + 10}) {
          if (j0 < 0) continue;
          const index_t queries = 2;  // query i at pos + i
          bias.prepare(rb, j0, n, queries, [&](index_t i) { return pos + i; });
          for (index_t i = 0; i < queries; ++i)
            for (index_t h = 0; h < Hq; ++h) {
              std::vector<float> s(static_cast<std::size_t>(T), 0.f);
              bias.add_row(rb, &lines, h, i, s.data());
              for (index_t c = 0; c < n; ++c) {
                const double want = seqmix::detail::relative_bias_value(rb, h, pos + i, j0 + c);
                INFO("kind=" << static_cast<int>(kind) << " pos=" << pos + i << " j0=" << j0 << " n=" << n << " h=" << h
                             << " key=" << j0 + c);
                REQUIRE(std::abs(static_cast<double>(s[static_cast<std::size_t>(c)]) - want) <= 2.5e-7 * std::abs(want) + 1e-12);
              }
            }
        }
  }
}
