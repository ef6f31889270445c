// attention over bf16 K/V with bf16 dot products (AttentionOptions::bf16_compute = dot) against
// the fp32 computation on the same stored values (the default), within the documented bound
// (docs/operators.md section 5):
//   per row, Delta = max_j |s_dot_j - s_j| (the logit change from rounding q to bf16),
//   |o_dot - o_fp32| <= (exp(2 Delta) - 1 + 2^-8) * max_j |v_j|,   |lse_dot - lse_fp32| <= Delta
// (plus fp32 rounding slack). Ragged shapes: T = 1, T not a multiple of the 64-key tile, odd and
// non-multiple-of-16 head sizes, GQA, B > 1, masks and logit rules, packed sequences, strided K/V,
// a non-finite value (its tile takes the fp32 path). The decode kernel (attention_step) likewise,
// against the reference. On targets without AVX512-BF16 the option falls back to fp32, and the
// results are checked to be the fp32 ones exactly.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::bf16;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Bf16AttnCase {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, Dk, Dv;
  bool causal;
  index_t window, sinks;
  float softcap;
  bool mask, packed, strided;
};

struct Bf16AttnData {
  Tensor<float, 4> q;
  Tensor<bf16, 4> k, v;  // strided cases: every other head slot of a wider tensor
  Tensor<float, 3> mask;
  std::vector<std::int32_t> cu;
  seqmix::AttentionInputs<bf16> in;
  explicit Bf16AttnData(const Bf16AttnCase& c, std::uint64_t seed)
      : q({c.B, c.Tq, c.Hq, c.Dk}),
        k({c.B, c.Tk, c.Hkv * (c.strided ? 2 : 1), c.Dk}),
        v({c.B, c.Tk, c.Hkv * (c.strided ? 2 : 1), c.Dv}),
        mask({c.mask ? c.B : 0, c.Tq, c.Tk}) {
    st::fill_normal(q.view(), seed);
    st::fill_normal(k.view(), seed + 1);
    st::fill_normal(v.view(), seed + 2);
    in.q = q.cview();
    in.k = k.cview(), in.v = v.cview();
    if (c.strided) {  // heads 0, 2, 4, ... and features with stride 1: head stride 2 * D
      const index_t Hs = 2 * c.Hkv;
      in.k = seqmix::ConstView<bf16, 4>(k.data(), {c.B, c.Tk, c.Hkv, c.Dk}, {c.Tk * Hs * c.Dk, Hs * c.Dk, 2 * c.Dk, 1});
      in.v = seqmix::ConstView<bf16, 4>(v.data(), {c.B, c.Tk, c.Hkv, c.Dv}, {c.Tk * Hs * c.Dv, Hs * c.Dv, 2 * c.Dv, 1});
    }
    if (c.mask) {
      st::fill_uniform(mask.view(), seed + 3, -2.f, 2.f);
      for (index_t b = 0; b < c.B; ++b)  // a few hidden keys
        for (index_t i = 0; i < c.Tq; ++i)
          for (index_t j = (i * 7) % 5; j < c.Tk; j += 11) mask(b, i, j) = -std::numeric_limits<float>::infinity();
      in.mask = mask.cview();
    }
    if (c.packed) {  // ragged sequences over the Tq = Tk tokens
      cu = {0};
      for (index_t len = 1; cu.back() < c.Tq; len = len * 3 + 5)
        cu.push_back(static_cast<std::int32_t>(std::min<index_t>(cu.back() + len, c.Tq)));
      in.batch.cu_seqlens = cu;
    }
  }
};

// Checks o / lse of the dot form against the fp32 form row by row, within the bound above, with
// Delta the row's actual logit change: the kernel rounds the scaled q row to bf16, so
// Delta = max_j |sum_c (bf16(scale q_c) - scale q_c) k_jc| (over every key, a bound for any
// visible set), plus 1e-6 * sum_c |scale q_c k_jc| for the fp32 sums' different order.
void bf16_attn_require_bound(const Bf16AttnCase& c, const Bf16AttnData& data, const seqmix::AttentionOptions& options,
                             const Tensor<float, 4>& o_dot, const Tensor<float, 3>& lse_dot,
                             const Tensor<float, 4>& o_ref, const Tensor<float, 3>& lse_ref) {
  const double u = std::ldexp(1.0, -8);
  const float scale = seqmix::detail::attention_scale(options, c.Dk);
  const index_t G = c.Hq / c.Hkv;
  double worst = 0.0;  // the largest error as a fraction of its bound
  std::vector<double> keys(static_cast<std::size_t>(c.Tk * c.Dk)), dq(static_cast<std::size_t>(c.Dk)),
      aq(static_cast<std::size_t>(c.Dk));
  for (index_t b = 0; b < c.B; ++b)
    for (index_t hk = 0; hk < c.Hkv; ++hk) {
      double vmax = 0.0;
      for (index_t j = 0; j < c.Tk; ++j) {
        for (index_t x = 0; x < c.Dk; ++x) keys[j * c.Dk + x] = data.in.k(b, j, hk, x).to_float();
        for (index_t x = 0; x < c.Dv; ++x) vmax = std::max(vmax, std::abs(double{data.in.v(b, j, hk, x).to_float()}));
      }
      for (index_t h = hk * G; h < (hk + 1) * G; ++h)
        for (index_t i = 0; i < c.Tq; ++i) {
          for (index_t x = 0; x < c.Dk; ++x) {
            const float scaled = scale * data.q(b, i, h, x);
            dq[x] = static_cast<double>(bf16(scaled).to_float()) - scaled;
            aq[x] = std::abs(scaled);
          }
          double delta = 0.0;
          for (index_t j = 0; j < c.Tk; ++j) {
            double change = 0.0, size = 0.0;
            for (index_t x = 0; x < c.Dk; ++x)
              change += dq[x] * keys[j * c.Dk + x], size += aq[x] * std::abs(keys[j * c.Dk + x]);
            delta = std::max(delta, std::abs(change) + 1e-6 * size);
          }
          const double o_bound = (std::expm1(2.0 * delta) + u) * vmax + 1e-6;
          for (index_t x = 0; x < c.Dv; ++x) {
            const double err = std::abs(static_cast<double>(o_dot(b, i, h, x)) - o_ref(b, i, h, x));
            worst = std::max(worst, err / o_bound);
          }
          const double l = lse_ref(b, i, h), l_dot = lse_dot(b, i, h);
          if (std::isinf(l)) {  // no visible key: the same in both forms
            REQUIRE(l_dot == l);
          } else {
            worst = std::max(worst, std::abs(l_dot - l) / (delta + 1e-6 * (1.0 + std::abs(l))));
          }
        }
    }
  INFO(c.name << ": largest error / bound = " << worst);
  REQUIRE(worst <= 1.0);
}

void bf16_attn_check(const Bf16AttnCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  INFO(c.name << " seed " << seed);
  const Bf16AttnData data(c, seed);
  seqmix::AttentionOptions options;
  options.causal = c.causal, options.window = c.window, options.sink_tokens = c.sinks, options.softcap = c.softcap;
  Tensor<float, 4> o_ref({c.B, c.Tq, c.Hq, c.Dv}), o_dot({c.B, c.Tq, c.Hq, c.Dv});
  Tensor<float, 3> lse_ref({c.B, c.Tq, c.Hq}), lse_dot({c.B, c.Tq, c.Hq});
  seqmix::attention_flash(data.in, {o_ref.view(), lse_ref.view()}, options, executor);
  options.bf16_compute = seqmix::Bf16Compute::dot;
  seqmix::attention_flash(data.in, {o_dot.view(), lse_dot.view()}, options, executor);
  if (!seqmix::detail::kNativeBf16Dot) {  // the fallback is the fp32 form itself
    REQUIRE(std::equal(o_dot.data(), o_dot.data() + o_dot.numel(), o_ref.data()));
    REQUIRE(std::equal(lse_dot.data(), lse_dot.data() + lse_dot.numel(), lse_ref.data()));
    return;
  }
  bf16_attn_require_bound(c, data, options, o_dot, lse_dot, o_ref, lse_ref);
}

const std::vector<Bf16AttnCase>& bf16_attn_cases() {
  static const std::vector<Bf16AttnCase> cases = {
      // name, B, Tq, Tk, Hq, Hkv, Dk, Dv, causal, window, sinks, softcap, mask, packed, strided
      {"one-query", 1, 1, 1, 2, 1, 64, 64, true, 0, 0, 0.f, false, false, false},
      {"gqa4-ragged-tiles", 1, 150, 150, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
      {"b2-full-odd-dims", 2, 70, 133, 6, 3, 67, 40, false, 0, 0, 0.f, false, false, false},
      {"dk-ne-dv", 1, 65, 65, 4, 4, 48, 80, true, 0, 0, 0.f, false, false, false},
      {"window-sinks-softcap", 1, 200, 200, 4, 2, 64, 64, true, 50, 4, 30.f, false, false, false},
      {"mask-bottom-right", 2, 37, 101, 4, 1, 32, 16, true, 0, 0, 0.f, true, false, false},
      {"packed", 1, 180, 180, 4, 2, 64, 64, true, 0, 0, 0.f, false, true, false},
      {"strided-heads", 1, 90, 90, 4, 2, 96, 96, true, 0, 0, 0.f, false, false, true},
  };
  return cases;
}

}  // namespace

TEST_CASE("attention bf16 dot products: within the documented bound of the fp32 form", "[attention][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 7100;
  for (const Bf16AttnCase& c : bf16_attn_cases()) bf16_attn_check(c, seed += 10, pool);
  if (!st::small_test_scale())  // a chunk after a long prefix: 20 key tiles, 256-row tasks
    bf16_attn_check({"chunk-after-prefix", 1, 256, 1280, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false}, 7999,
                    pool);
}

TEST_CASE("attention bf16 dot products: a non-finite value reaches only the rows that see it", "[attention][bf16]") {
  // Key 70's value holds a NaN and key 140's an inf: with causal masking the rows before them
  // give them weight 0 and must stay finite (their tiles take the fp32 path), the rest are NaN
  // or inf-contaminated exactly as in the fp32 form.
  const Bf16AttnCase c{"nonfinite", 1, 200, 200, 4, 2, 64, 64, true, 0, 0, 0.f, false, false, false};
  Bf16AttnData data(c, 7300);
  data.v(0, 70, 1, 5) = bf16(std::numeric_limits<float>::quiet_NaN());
  data.v(0, 140, 0, 9) = bf16(std::numeric_limits<float>::infinity());
  seqmix::AttentionOptions options;
  options.causal = true;
  Tensor<float, 4> o_ref({1, 200, 4, 64}), o_dot({1, 200, 4, 64});
  Tensor<float, 3> lse_ref({1, 200, 4}), lse_dot({1, 200, 4});
  seqmix::attention_flash(data.in, {o_ref.view(), lse_ref.view()}, options);
  options.bf16_compute = seqmix::Bf16Compute::dot;
  seqmix::attention_flash(data.in, {o_dot.view(), lse_dot.view()}, options);
  for (index_t i = 0; i < 200; ++i)
    for (index_t h = 0; h < 4; ++h)
      for (index_t x = 0; x < 64; ++x) {
        const float a = o_ref(0, i, h, x), d = o_dot(0, i, h, x);
        INFO("row " << i << " head " << h << " feature " << x);
        REQUIRE(std::isfinite(a) == std::isfinite(d));
        REQUIRE(std::isnan(a) == std::isnan(d));
        if (i < 70) REQUIRE(std::isfinite(d));
      }
  // Where both are finite they are within the bound.
  for (index_t i = 0; i < 200; ++i)
    for (index_t h = 0; h < 4; ++h)
      for (index_t x = 0; x < 64; ++x)
        if (!std::isfinite(o_ref(0, i, h, x))) o_ref(0, i, h, x) = o_dot(0, i, h, x) = 0.f;
  data.v(0, 70, 1, 5) = bf16(0.f), data.v(0, 140, 0, 9) = bf16(0.f);  // for the bound's max |v|
  bf16_attn_require_bound(c, data, options, o_dot, lse_dot, o_ref, lse_ref);
}

namespace {

// ---- decode (attention_step) ------------------------------------------------------------------
// The decode kernel's dot-product tiles against the reference (fp32 products on the same stored
// values), within the same bound: few query rows (T = 1 steps, Tq 2-3), GQA groups of 1, 4 and 8,
// key counts off the 64-key tile, head sizes with a 16-feature tail (80, 48, 16), past a whole
// 64-column block (160), not a multiple of 16 (67, 40: those tiles take the fp32 path), B > 1,
// window / sinks / softcap, masks, strided heads, and splits over the keys on two threads.
// `sharpness` multiplies the default scale 1/sqrt(Dk): at 4 a few keys hold most of a row's
// weight, so a weight given to the wrong key moves o by about max |v|, far past the bound.
void bf16_decode_check(const Bf16AttnCase& c, std::uint64_t seed, const seqmix::Executor& executor,
                       float sharpness = 1.f) {
  INFO(c.name << " seed " << seed << " sharpness " << sharpness);
  const Bf16AttnData data(c, seed);
  seqmix::AttentionOptions options;
  options.causal = c.causal, options.window = c.window, options.sink_tokens = c.sinks, options.softcap = c.softcap;
  options.scale = sharpness / std::sqrt(static_cast<float>(c.Dk));
  Tensor<float, 4> o_ref({c.B, c.Tq, c.Hq, c.Dv}), o_fp32({c.B, c.Tq, c.Hq, c.Dv}), o_dot({c.B, c.Tq, c.Hq, c.Dv});
  Tensor<float, 3> lse_ref({c.B, c.Tq, c.Hq}), lse_fp32({c.B, c.Tq, c.Hq}), lse_dot({c.B, c.Tq, c.Hq});
  seqmix::reference::attention(data.in, {o_ref.view(), lse_ref.view()}, options);
  seqmix::attention_step(data.in, {o_fp32.view(), lse_fp32.view()}, options, executor);
  options.bf16_compute = seqmix::Bf16Compute::dot;
  seqmix::attention_step(data.in, {o_dot.view(), lse_dot.view()}, options, executor);
  if (!seqmix::detail::kNativeBf16Dot) {  // the fallback is the fp32 decode itself
    REQUIRE(std::equal(o_dot.data(), o_dot.data() + o_dot.numel(), o_fp32.data()));
    REQUIRE(std::equal(lse_dot.data(), lse_dot.data() + lse_dot.numel(), lse_fp32.data()));
    return;
  }
  bf16_attn_require_bound(c, data, options, o_dot, lse_dot, o_ref, lse_ref);
}

const std::vector<Bf16AttnCase>& bf16_decode_cases() {
  static const std::vector<Bf16AttnCase> cases = {
      // name, B, Tq, Tk, Hq, Hkv, Dk, Dv, causal, window, sinks, softcap, mask, packed, strided
      {"step-one-key", 1, 1, 1, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
      {"step-g4-tk63", 1, 1, 63, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
      {"step-g1-tk65-b2", 2, 1, 65, 4, 4, 64, 64, true, 0, 0, 0.f, false, false, false},
      {"step-g8-tk300", 1, 1, 300, 16, 2, 64, 64, true, 0, 0, 0.f, false, false, false},
      {"tq2-g1", 1, 2, 129, 2, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
      {"tq3-g4-b2", 2, 3, 300, 8, 2, 64, 64, true, 0, 0, 0.f, false, false, false},
      {"dk80-dv48-tails", 1, 1, 200, 8, 2, 80, 48, true, 0, 0, 0.f, false, false, false},
      {"dk96-dv160", 1, 2, 150, 4, 1, 96, 160, true, 0, 0, 0.f, false, false, false},
      {"odd-dims-fp32-tiles", 1, 1, 150, 4, 2, 67, 40, true, 0, 0, 0.f, false, false, false},
      {"window-sinks-softcap", 1, 1, 700, 8, 2, 64, 64, true, 100, 4, 30.f, false, false, false},
      {"mask-dv16", 2, 2, 101, 4, 1, 32, 16, true, 0, 0, 0.f, true, false, false},
      {"full-not-causal", 1, 1, 90, 8, 2, 64, 64, false, 0, 0, 0.f, false, false, false},
      {"strided-heads", 1, 1, 300, 4, 2, 96, 96, true, 0, 0, 0.f, false, false, true},
      {"split-over-keys", 1, 1, 3000, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
      {"split-b2-g8", 2, 1, 1100, 16, 2, 64, 64, true, 0, 0, 0.f, false, false, false},
  };
  return cases;
}

}  // namespace

TEST_CASE("attention bf16 dot products: the decode kernel within the documented bound of the reference",
          "[attention][bf16][decode]") {
  std::uint64_t seed = 7400;
  const seqmix::ThreadPool pool(2);
  for (const Bf16AttnCase& c : bf16_decode_cases()) {
    bf16_decode_check(c, seed += 10, seqmix::serial_executor());
    bf16_decode_check(c, seed, pool);
    bf16_decode_check(c, seed, pool, 4.f);
  }
}

TEST_CASE("attention bf16 dot products: in decode a non-finite value reaches only the rows that see it",
          "[attention][bf16][decode]") {
  // Window 100 at position 299: keys 192-199 share the tile [192, 256) with visible keys, at
  // weight 0. Key 195's value holds a NaN (KV head 1, hidden: its rows stay finite) and key 250's
  // an inf (KV head 0, seen: its rows are non-finite exactly as in the fp32 decode).
  const Bf16AttnCase c{"nonfinite-step", 1, 1, 300, 8, 2, 64, 64, true, 100, 0, 0.f, false, false, false};
  Bf16AttnData data(c, 7600);
  data.v(0, 195, 1, 5) = bf16(std::numeric_limits<float>::quiet_NaN());
  data.v(0, 250, 0, 9) = bf16(std::numeric_limits<float>::infinity());
  seqmix::AttentionOptions options;
  options.causal = true, options.window = 100;
  Tensor<float, 4> o_ref({1, 1, 8, 64}), o_dot({1, 1, 8, 64});
  Tensor<float, 3> lse_ref({1, 1, 8}), lse_dot({1, 1, 8});
  seqmix::attention_step(data.in, {o_ref.view(), lse_ref.view()}, options);
  options.bf16_compute = seqmix::Bf16Compute::dot;
  seqmix::attention_step(data.in, {o_dot.view(), lse_dot.view()}, options);
  for (index_t h = 0; h < 8; ++h)
    for (index_t x = 0; x < 64; ++x) {
      const float a = o_ref(0, 0, h, x), d = o_dot(0, 0, h, x);
      INFO("head " << h << " feature " << x);
      REQUIRE(std::isfinite(a) == std::isfinite(d));
      REQUIRE(std::isnan(a) == std::isnan(d));
      if (h >= 4) REQUIRE(std::isfinite(d));
    }
  for (index_t h = 0; h < 8; ++h)
    for (index_t x = 0; x < 64; ++x)
      if (!std::isfinite(o_ref(0, 0, h, x))) o_ref(0, 0, h, x) = o_dot(0, 0, h, x) = 0.f;
  data.v(0, 195, 1, 5) = bf16(0.f), data.v(0, 250, 0, 9) = bf16(0.f);  // for the bound's max |v|
  bf16_attn_require_bound(c, data, options, o_dot, lse_dot, o_ref, lse_ref);
}

TEST_CASE("attention bf16 dot products: decode with ALiBi, relative biases and the fused rope", "[attention][bf16][decode]") {
  // The logit rule and the rope share the dot-product tile's path: keys before rope_rotated_keys
  // are stored rotated (read in place, dot products), later ones are rotated as they load (their
  // tiles take fp32); every row adds ALiBi and a relative bias, mild enough that distant keys keep
  // their weight. Against the fp32 decode within the bound above, whose q is the query rotated at
  // its position (the row the kernel rounds; the biases move both forms' logits alike).
  const Bf16AttnCase c{"bias-rope", 2, 1, 500, 8, 2, 64, 64, true, 0, 0, 0.f, false, false, false};
  Bf16AttnData data(c, 7700), rotated(c, 7700);
  seqmix::RopeConfig config;
  config.rotary_dim = 64, config.base = 10000.0;
  const seqmix::RopeTable rope(config, 500);
  for (index_t b = 0; b < c.B; ++b)
    for (index_t h = 0; h < c.Hq; ++h) seqmix::detail::rope_row_in_place(rope, c.Tk - 1, &rotated.q(b, 0, h, 0), 1);
  const Tensor<float, 1> slopes = st::random_tensor<1>({8}, 7701, 0.0005f, 0.002f);
  const Tensor<float, 2> table = st::random_tensor<2>({8, 32}, 7702, -1.f, 1.f);
  const Tensor<float, 1> r1 = st::random_tensor<1>({8}, 7703, 0.1f, 0.5f), r2 = st::random_tensor<1>({8}, 7704, 0.1f, 0.3f);
  data.in.rope = &rope;
  data.in.alibi_slopes = slopes.cview();
  for (const index_t rotated_keys : {index_t{256}, c.Tk})
    for (const seqmix::RelativeBiasKind kind : {seqmix::RelativeBiasKind::t5, seqmix::RelativeBiasKind::kerple_power}) {
      data.in.rope_rotated_keys = rotated_keys;
      seqmix::RelativeBias& rb = data.in.relative_bias;
      rb = {};
      rb.kind = kind;
      if (kind == seqmix::RelativeBiasKind::t5) rb.table = table.cview(), rb.max_distance = 128;
      else rb.r1 = r1.cview(), rb.r2 = r2.cview();
      seqmix::AttentionOptions options;
      options.causal = true, options.scale = 0.5f;  // 4 / sqrt(Dk): a few keys carry each row (see bf16_decode_check)
      Tensor<float, 4> o_fp32({2, 1, 8, 64}), o_dot({2, 1, 8, 64});
      Tensor<float, 3> lse_fp32({2, 1, 8}), lse_dot({2, 1, 8});
      seqmix::attention_step(data.in, {o_fp32.view(), lse_fp32.view()}, options);
      options.bf16_compute = seqmix::Bf16Compute::dot;
      seqmix::attention_step(data.in, {o_dot.view(), lse_dot.view()}, options);
      INFO("bias kind " << static_cast<int>(kind) << ", keys stored rotated " << rotated_keys);
      if (!seqmix::detail::kNativeBf16Dot) {
        REQUIRE(std::equal(o_dot.data(), o_dot.data() + o_dot.numel(), o_fp32.data()));
        continue;
      }
      bf16_attn_require_bound(c, rotated, options, o_dot, lse_dot, o_fp32, lse_fp32);
    }
}

TEST_CASE("attention bf16 dot products: paged decode within the documented bound of the reference",
          "[attention][bf16][paged]") {
  // paged_attention's decode items run decode_tile on the pages in place, so the option reaches
  // them through PagedAttentionOptions::bf16_compute: the same K/V in pages of 16 placed in
  // reverse order, against the reference on the contiguous tensors.
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 7800;
  for (const Bf16AttnCase& c : {Bf16AttnCase{"paged-step-g4", 2, 1, 300, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
                                Bf16AttnCase{"paged-verify-window", 2, 4, 517, 8, 2, 64, 64, true, 100, 4, 0.f, false, false, false},
                                Bf16AttnCase{"paged-dk80-dv48", 1, 2, 150, 4, 1, 80, 48, true, 0, 0, 0.f, false, false, false}}) {
    INFO(c.name);
    const Bf16AttnData data(c, seed += 10);
    const index_t bs = 16, per_seq = (c.Tk + bs - 1) / bs, pages = c.B * per_seq;
    Tensor<bf16, 4> k_pages({pages, bs, c.Hkv, c.Dk}), v_pages({pages, bs, c.Hkv, c.Dv});
    Tensor<std::int32_t, 2> table({c.B, per_seq});
    for (index_t b = 0; b < c.B; ++b)
      for (index_t i = 0; i < per_seq; ++i) table(b, i) = static_cast<std::int32_t>(pages - 1 - (b * per_seq + i));
    for (index_t b = 0; b < c.B; ++b)
      for (index_t j = 0; j < c.Tk; ++j)
        for (index_t h = 0; h < c.Hkv; ++h) {
          const index_t page = table(b, j / bs), slot = j % bs;
          for (index_t x = 0; x < c.Dk; ++x) k_pages(page, slot, h, x) = data.k(b, j, h, x);
          for (index_t x = 0; x < c.Dv; ++x) v_pages(page, slot, h, x) = data.v(b, j, h, x);
        }
    const std::vector<std::int32_t> lengths(static_cast<std::size_t>(c.B), static_cast<std::int32_t>(c.Tk));
    seqmix::PagedAttentionInputs<bf16> in;
    in.q = data.q.cview(), in.k_pages = k_pages.cview(), in.v_pages = v_pages.cview();
    in.block_table = table.cview(), in.cache_seqlens = lengths;
    seqmix::PagedAttentionOptions paged_options;
    paged_options.window = c.window, paged_options.sink_tokens = c.sinks;
    Tensor<float, 4> o_fp32({c.B, c.Tq, c.Hq, c.Dv}), o_dot({c.B, c.Tq, c.Hq, c.Dv}), o_ref({c.B, c.Tq, c.Hq, c.Dv});
    Tensor<float, 3> lse_dot({c.B, c.Tq, c.Hq}), lse_ref({c.B, c.Tq, c.Hq});
    seqmix::paged_attention(in, {o_fp32.view(), {}}, paged_options, pool);
    paged_options.bf16_compute = seqmix::Bf16Compute::dot;
    seqmix::paged_attention(in, {o_dot.view(), lse_dot.view()}, paged_options, pool);
    const seqmix::AttentionOptions options = paged_options.dense();
    seqmix::reference::attention(data.in, {o_ref.view(), lse_ref.view()}, options);
    if (!seqmix::detail::kNativeBf16Dot) {
      REQUIRE(std::equal(o_dot.data(), o_dot.data() + o_dot.numel(), o_fp32.data()));
      continue;
    }
    REQUIRE(!std::equal(o_dot.data(), o_dot.data() + o_dot.numel(), o_fp32.data()));  // the dot tiles ran
    bf16_attn_require_bound(c, data, options, o_dot, lse_dot, o_ref, lse_ref);
  }
}

namespace {

// ---- the call's K/V tiles packed once (PackedKvTiles) -----------------------------------------
// Calls of more than one query block take every key tile from one packing per call instead of
// packing it in each task. Shapes with 2-7 query blocks: GQA groups of 1, 4 and 8 (blocks of 256,
// 64 and 32 queries), T off the 64-key tile, odd head sizes, causal and full, Tq < Tk, B = 2,
// windows with sinks (over strided heads; and one leaving tiles no block visits, which are not
// packed); each on one and two threads, within the bound.
const std::vector<Bf16AttnCase>& bf16_packed_call_cases() {
  static const std::vector<Bf16AttnCase> cases = {
      // name, B, Tq, Tk, Hq, Hkv, Dk, Dv, causal, window, sinks, softcap, mask, packed, strided
      {"g1-two-blocks", 1, 300, 300, 2, 2, 64, 64, true, 0, 0, 0.f, false, false, false},
      {"g4-ragged", 1, 333, 333, 8, 2, 128, 128, true, 0, 0, 0.f, false, false, false},
      {"g8-ragged", 1, 200, 200, 16, 2, 64, 64, true, 0, 0, 0.f, false, false, false},
      {"b2-full-odd-dims", 2, 150, 150, 4, 1, 67, 40, false, 0, 0, 0.f, false, false, false},
      {"full-tq-lt-tk", 1, 130, 190, 8, 2, 96, 96, false, 0, 0, 0.f, false, false, false},
      {"chunk-dk-ne-dv", 1, 100, 420, 4, 1, 48, 80, true, 0, 0, 0.f, false, false, false},
      {"window-sinks-strided", 1, 260, 260, 8, 2, 64, 64, true, 70, 3, 0.f, false, false, true},
      {"window-tq-lt-tk", 1, 150, 700, 8, 2, 64, 64, true, 100, 2, 0.f, false, false, false},  // some tiles unvisited
  };
  return cases;
}

}  // namespace

TEST_CASE("attention bf16 dot products: a call packs its K/V tiles once for all its query blocks", "[attention][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 8100;
  for (const Bf16AttnCase& c : bf16_packed_call_cases()) {
    bf16_attn_check(c, seed += 10, seqmix::serial_executor());
    bf16_attn_check(c, seed, pool);
  }
}

TEST_CASE("attention bf16 dot products: packed once per call equals packed per task, bit for bit", "[attention][bf16]") {
  // One sequence given as a packed batch (cu_seqlens {0, T}) runs the same tasks, which pack their
  // own tiles (attention_flash_varlen): the same pair words in the same products, so the same bits.
  for (const Bf16AttnCase& c : bf16_packed_call_cases()) {
    if (c.B != 1 || c.Tq != c.Tk) continue;
    INFO(c.name);
    Bf16AttnData data(c, 8300);
    seqmix::AttentionOptions options;
    options.causal = c.causal, options.window = c.window, options.sink_tokens = c.sinks;
    options.bf16_compute = seqmix::Bf16Compute::dot;
    Tensor<float, 4> o_call({1, c.Tq, c.Hq, c.Dv}), o_tasks({1, c.Tq, c.Hq, c.Dv});
    Tensor<float, 3> lse_call({1, c.Tq, c.Hq}), lse_tasks({1, c.Tq, c.Hq});
    seqmix::attention_flash(data.in, {o_call.view(), lse_call.view()}, options);
    const std::vector<std::int32_t> one = {0, static_cast<std::int32_t>(c.Tq)};
    data.in.batch.cu_seqlens = one;
    seqmix::attention_flash(data.in, {o_tasks.view(), lse_tasks.view()}, options);
    REQUIRE(std::equal(o_call.data(), o_call.data() + o_call.numel(), o_tasks.data()));
    REQUIRE(std::equal(lse_call.data(), lse_call.data() + lse_call.numel(), lse_tasks.data()));
  }
}

TEST_CASE("attention bf16 dot products: prefill with the fused rope, tiles past the rotated keys in fp32",
          "[attention][bf16]") {
  // Keys before rope_rotated_keys are stored rotated (dot-product tiles from the call's packing),
  // later tiles are rotated as they load and take the fp32 tile. Against the fp32 form within the
  // bound, whose q rows are the queries rotated at their positions (the rows the kernel rounds).
  const Bf16AttnCase c{"prefill-rope", 1, 300, 300, 8, 2, 64, 64, true, 0, 0, 0.f, false, false, false};
  Bf16AttnData data(c, 8500), rotated(c, 8500);
  seqmix::RopeConfig config;
  config.rotary_dim = 64, config.base = 10000.0;
  const seqmix::RopeTable rope(config, 300);
  for (index_t i = 0; i < c.Tq; ++i)
    for (index_t h = 0; h < c.Hq; ++h) seqmix::detail::rope_row_in_place(rope, i, &rotated.q(0, i, h, 0), 1);
  data.in.rope = &rope;
  for (const index_t rotated_keys : {index_t{128}, c.Tk}) {
    INFO("keys stored rotated " << rotated_keys);
    data.in.rope_rotated_keys = rotated_keys;
    seqmix::AttentionOptions options;
    options.causal = true;
    Tensor<float, 4> o_fp32({1, c.Tq, c.Hq, c.Dv}), o_dot({1, c.Tq, c.Hq, c.Dv});
    Tensor<float, 3> lse_fp32({1, c.Tq, c.Hq}), lse_dot({1, c.Tq, c.Hq});
    seqmix::attention_flash(data.in, {o_fp32.view(), lse_fp32.view()}, options);
    options.bf16_compute = seqmix::Bf16Compute::dot;
    seqmix::attention_flash(data.in, {o_dot.view(), lse_dot.view()}, options);
    if (!seqmix::detail::kNativeBf16Dot) {
      REQUIRE(std::equal(o_dot.data(), o_dot.data() + o_dot.numel(), o_fp32.data()));
      continue;
    }
    bf16_attn_require_bound(c, rotated, options, o_dot, lse_dot, o_fp32, lse_fp32);
  }
}
