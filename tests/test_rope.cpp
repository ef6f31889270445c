// rope: the fast form and reference::rope against a double-precision loop written here from
// transformers' formulas (every scheme, both layouts, full and partial rotary, positions up to
// 2^20), the Hugging Face key mapping on real model configs, and the ShapeErrors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "seqmix/positional.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RopeConfig;
using seqmix::RopeLayout;
using seqmix::RopeScheme;
using seqmix::RopeTable;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr double kPi = 3.14159265358979323846;

// transformers' inverse frequencies and attention factor for a sequence of `len` tokens,
// written from modeling_rope_utils.py independently of seqmix's table.
struct Expected {
  std::vector<double> inv;
  double m = 1.0;
};

Expected expected_frequencies(const RopeConfig& c, index_t len) {
  const int dim = static_cast<int>(c.rotary_dim);
  const double L0 = static_cast<double>(c.original_max_position_embeddings);
  Expected e;
  auto powers = [&](double base) {
    std::vector<double> v;
    for (int k = 0; k < dim; k += 2) v.push_back(1.0 / std::pow(base, static_cast<double>(k) / dim));
    return v;
  };
  switch (c.scheme) {
    case RopeScheme::plain:
      e.inv = powers(c.base);
      break;
    case RopeScheme::linear:
      e.inv = powers(c.base);
      for (auto& w : e.inv) w = w / c.factor;
      break;
    case RopeScheme::ntk:
      e.inv = powers(c.base * std::pow(c.factor, dim / (dim - 2.0)));
      break;
    case RopeScheme::dynamic_ntk: {
      double base = c.base;
      if (len > c.original_max_position_embeddings)
        base = c.base * std::pow((c.factor * len / L0) - (c.factor - 1), dim / (dim - 2.0));
      e.inv = powers(base);
      break;
    }
    case RopeScheme::yarn: {
      auto corr = [&](double rot) { return (dim * std::log(L0 / (rot * 2 * kPi))) / (2 * std::log(c.base)); };
      double low = std::floor(corr(c.beta_fast)), high = std::ceil(corr(c.beta_slow));
      low = std::max(low, 0.0), high = std::min(high, dim - 1.0);
      if (low == high) high += 0.001;
      for (int i = 0; i < dim / 2; ++i) {
        const double pos_freq = std::pow(c.base, 2.0 * i / dim);
        const double extrap_weight = 1.0 - std::min(1.0, std::max(0.0, (i - low) / (high - low)));
        e.inv.push_back((1.0 / (c.factor * pos_freq)) * (1 - extrap_weight) + (1.0 / pos_freq) * extrap_weight);
      }
      auto get_mscale = [](double s, double ms) { return s <= 1 ? 1.0 : 0.1 * ms * std::log(s) + 1.0; };
      e.m = (c.mscale != 0 && c.mscale_all_dim != 0) ? get_mscale(c.factor, c.mscale) / get_mscale(c.factor, c.mscale_all_dim)
                                                     : get_mscale(c.factor, 1.0);
      break;
    }
    case RopeScheme::llama3: {
      const double low_wl = L0 / c.low_freq_factor, high_wl = L0 / c.high_freq_factor;
      for (double w : powers(c.base)) {
        const double wl = 2 * kPi / w;
        double out = wl > low_wl ? w / c.factor : w;
        const bool medium = !(wl < high_wl) && !(wl > low_wl);
        if (medium) {
          const double smooth = (L0 / wl - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
          out = (1 - smooth) * out / c.factor + smooth * out;
        }
        e.inv.push_back(out);
      }
      break;
    }
    case RopeScheme::longrope: {
      const auto& ext = len > c.original_max_position_embeddings ? c.long_factor : c.short_factor;
      for (int i = 0; i < dim / 2; ++i) e.inv.push_back(1.0 / (ext[i] * std::pow(c.base, 2.0 * i / dim)));
      const double f = static_cast<double>(c.max_position_embeddings) / L0;
      e.m = f <= 1.0 ? 1.0 : std::sqrt(1 + std::log(f) / std::log(L0));
      break;
    }
  }
  return e;
}

RopeConfig scheme_config(RopeScheme scheme, index_t R, RopeLayout layout) {
  RopeConfig c;
  c.scheme = scheme;
  c.layout = layout;
  c.rotary_dim = R;
  c.base = scheme == RopeScheme::llama3 ? 500000.0 : 10000.0;
  c.factor = scheme == RopeScheme::yarn ? 16.0 : 4.0;
  c.original_max_position_embeddings = 4096;
  c.max_position_embeddings = 131072;
  if (scheme == RopeScheme::llama3) c.factor = 8.0, c.original_max_position_embeddings = 8192;
  for (index_t i = 0; i < R / 2; ++i) {
    c.short_factor.push_back(1.0 + 0.05 * static_cast<double>(i));
    c.long_factor.push_back(1.0 + 1.5 * static_cast<double>(i));
  }
  return c;
}

const RopeScheme kSchemes[] = {RopeScheme::plain, RopeScheme::linear, RopeScheme::ntk,     RopeScheme::dynamic_ntk,
                               RopeScheme::yarn,  RopeScheme::llama3, RopeScheme::longrope};
const char* const kSchemeNames[] = {"plain", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope"};

// out = rope(x) in double, from the expected frequencies.
void double_loop(const Expected& e, RopeLayout layout, index_t R, const Tensor<float, 4>& x,
                 const std::vector<std::int64_t>& pos, Tensor<double, 4>& out) {
  const index_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t h = 0; h < H; ++h) {
        for (index_t d = 0; d < D; ++d) out(b, t, h, d) = x(b, t, h, d);
        const double p = static_cast<double>(pos[static_cast<std::size_t>(b * T + t)]);
        for (index_t i = 0; i < R / 2; ++i) {
          const index_t a = layout == RopeLayout::interleaved ? 2 * i : i;
          const index_t o = layout == RopeLayout::interleaved ? 2 * i + 1 : i + R / 2;
          const double th = p * e.inv[static_cast<std::size_t>(i)];
          out(b, t, h, a) = e.m * (x(b, t, h, a) * std::cos(th) - x(b, t, h, o) * std::sin(th));
          out(b, t, h, o) = e.m * (x(b, t, h, o) * std::cos(th) + x(b, t, h, a) * std::sin(th));
        }
      }
}

}  // namespace

TEST_CASE("rope frequencies match transformers for every scheme", "[rope]") {
  for (int s = 0; s < 7; ++s)
    for (const index_t R : {index_t{8}, index_t{64}, index_t{128}})
      for (const index_t len : {index_t{2048}, index_t{40000}}) {
        const RopeConfig c = scheme_config(kSchemes[s], R, RopeLayout::half_split);
        const auto f = seqmix::rope_frequencies(c, len);
        const Expected e = expected_frequencies(c, len);
        INFO(kSchemeNames[s] << " R=" << R << " len=" << len);
        REQUIRE(f.inv_freq.size() == e.inv.size());
        for (std::size_t i = 0; i < e.inv.size(); ++i) REQUIRE(std::abs(f.inv_freq[i] - e.inv[i]) <= 1e-13 * e.inv[i]);
        REQUIRE(std::abs(f.attention_factor - e.m) <= 1e-14);
      }
}

TEST_CASE("rope equals a double loop for every scheme, layout and rotary size up to position 2^20", "[rope]") {
  const index_t max_position = st::small_test_scale() ? (index_t{1} << 16) : (index_t{1} << 20);
  struct Shape {
    index_t B, T, H, D, R, table;
  };
  // R = D and partial rotary; odd head counts and D not a multiple of the SIMD width; the big
  // table only for small R (its size is positions * R floats).
  const Shape shapes[] = {{2, 9, 3, 8, 8, max_position + 1},
                          {1, 13, 2, 24, 16, (max_position >> 3) + 1},
                          {2, 7, 5, 80, 64, 5000},
                          {1, 5, 3, 96, 38, 5000}};
  std::mt19937_64 rng(15);
  for (int s = 0; s < 7; ++s)
    for (const auto layout : {RopeLayout::half_split, RopeLayout::interleaved})
      for (const Shape& sh : shapes) {
        const RopeConfig c = scheme_config(kSchemes[s], sh.R, layout);
        const RopeTable table(c, sh.table);
        const Expected e = expected_frequencies(c, sh.table);
        Tensor<float, 4> x({sh.B, sh.T, sh.H, sh.D}), out({sh.B, sh.T, sh.H, sh.D}), ref({sh.B, sh.T, sh.H, sh.D});
        Tensor<double, 4> exact({sh.B, sh.T, sh.H, sh.D});
        st::fill_uniform(x.view(), 100 + s);
        // Positions: the ends of the table, 1,000,000 where the table reaches it, random ones.
        std::vector<std::int64_t> pos64;
        for (index_t i = 0; i < sh.B * sh.T; ++i) {
          index_t p = static_cast<index_t>(rng() % static_cast<std::uint64_t>(sh.table));
          if (i == 0) p = sh.table - 1;
          if (i == 1) p = 0;
          if (i == 2 && sh.table > 1000000) p = 1000000;
          pos64.push_back(p);
        }
        std::vector<std::int32_t> pos32(pos64.begin(), pos64.end());
        double_loop(e, layout, sh.R, x, pos64, exact);
        INFO(kSchemeNames[s] << (layout == RopeLayout::interleaved ? " interleaved" : " half-split") << " B=" << sh.B
                             << " T=" << sh.T << " H=" << sh.H << " D=" << sh.D << " R=" << sh.R);
        seqmix::reference::rope(table, {x.view(), pos64}, {ref.view()});
        st::require_close("reference", ref.view(), exact.view(), 1e-6);
        seqmix::rope(table, {x.view(), pos32}, {out.view()});
        st::require_close("fast serial int32", out.view(), exact.view(), 1e-6);
        out.fill(0.f);
        seqmix::rope(table, {x.view(), pos64}, {out.view()}, st::two_thread_pool());
        st::require_close("fast two threads int64", out.view(), exact.view(), 1e-6);
        // In place gives the same bits as out of place.
        Tensor<float, 4> y = x;
        seqmix::rope(table, {y.view(), pos64}, {y.view()}, st::two_thread_pool());
        REQUIRE(st::compare(y.view(), out.view(), 0.0).ok);
      }
}

TEST_CASE("rope at position 1000000 keeps float accuracy", "[rope]") {
  RopeConfig c;
  c.rotary_dim = 4;
  c.base = 10000.0;
  const RopeTable table(c, 1000001);
  Tensor<float, 4> x({1, 1, 1, 4}), out({1, 1, 1, 4});
  x.fill(1.f);
  const std::vector<std::int32_t> pos = {1000000};
  seqmix::rope(table, {x.view(), pos}, {out.view()});
  const double angle = 1000000.0;  // pair 0: inv_freq 1
  REQUIRE(std::abs(out(0, 0, 0, 0) - (std::cos(angle) - std::sin(angle))) < 3e-7);
  REQUIRE(std::abs(out(0, 0, 0, 2) - (std::cos(angle) + std::sin(angle))) < 3e-7);
}

TEST_CASE("rope on packed, broadcast, strided and default positions", "[rope]") {
  const RopeConfig c = scheme_config(RopeScheme::llama3, 32, RopeLayout::interleaved);
  const RopeTable table(c, 600);
  const index_t T = 37, H = 4, D = 40;
  // Packed: two sequences of 20 and 17 tokens, each at its own offset in its cache.
  Tensor<float, 4> x({1, T, H, D}), out({1, T, H, D}), ref({1, T, H, D});
  st::fill_uniform(x.view(), 7);
  std::vector<std::int64_t> pos;
  for (index_t t = 0; t < 20; ++t) pos.push_back(500 + t);
  for (index_t t = 0; t < 17; ++t) pos.push_back(t);
  seqmix::rope(table, {x.view(), pos}, {out.view()}, st::two_thread_pool());
  seqmix::reference::rope(table, {x.view(), pos}, {ref.view()});
  st::require_close("packed", out.view(), ref.view(), 1e-6);

  // No positions: p = t; a list of T serves every row.
  Tensor<float, 4> x2({3, T, H, D}), a({3, T, H, D}), b({3, T, H, D});
  st::fill_uniform(x2.view(), 8);
  std::vector<std::int32_t> ramp;
  for (index_t t = 0; t < T; ++t) ramp.push_back(static_cast<std::int32_t>(t));
  seqmix::rope(table, {x2.view(), {}}, {a.view()});
  seqmix::rope(table, {x2.view(), ramp}, {b.view()});
  REQUIRE(st::compare(a.view(), b.view(), 0.0).ok);
  seqmix::reference::rope(table, {x2.view(), {}}, {b.view()});
  st::require_close("default positions", a.view(), b.view(), 1e-6);

  // Strided last dimension (every other float of a wider buffer): the scalar path.
  Tensor<float, 4> wide({1, T, H, 2 * D}), wide_out({1, T, H, 2 * D});
  st::fill_uniform(wide.view(), 9);
  const seqmix::ConstView<float, 4> xs(wide.data(), {1, T, H, D}, {T * H * 2 * D, H * 2 * D, 2 * D, 2});
  const seqmix::TensorView<float, 4> os(wide_out.data(), {1, T, H, D}, {T * H * 2 * D, H * 2 * D, 2 * D, 2});
  Tensor<float, 4> xs_copy({1, T, H, D});
  for (index_t t = 0; t < T; ++t)
    for (index_t h = 0; h < H; ++h)
      for (index_t d = 0; d < D; ++d) xs_copy(0, t, h, d) = xs(0, t, h, d);
  seqmix::rope(table, {xs, pos}, {os});
  seqmix::rope(table, {xs_copy.view(), pos}, {out.view()});
  for (index_t t = 0; t < T; ++t)
    for (index_t h = 0; h < H; ++h)
      for (index_t d = 0; d < D; ++d) REQUIRE(std::abs(os(0, t, h, d) - out(0, t, h, d)) <= 1e-6f);
}

TEST_CASE("rope_config_from_hf maps real model configs", "[rope]") {
  seqmix::HfRopeKeys llama;  // Llama-3.1-8B
  llama.head_dim = 128;
  llama.rope_theta = 500000.0;
  llama.max_position_embeddings = 131072;
  llama.rope_type = "llama3";
  llama.factor = 8.0;
  llama.low_freq_factor = 1.0;
  llama.high_freq_factor = 4.0;
  llama.original_max_position_embeddings = 8192;
  const RopeConfig lc = seqmix::rope_config_from_hf(llama);
  REQUIRE(lc.scheme == RopeScheme::llama3);
  REQUIRE(lc.rotary_dim == 128);
  const auto lf = seqmix::rope_frequencies(lc, 131072);
  REQUIRE(lf.inv_freq[0] == 1.0);  // wavelength 2*pi, far below 8192/4: unchanged
  REQUIRE(std::abs(lf.inv_freq[63] - std::pow(500000.0, -126.0 / 128) / 8) < 1e-18);  // long: divided by 8

  seqmix::HfRopeKeys ds;  // DeepSeek-V2-Lite: yarn, mscale = mscale_all_dim, interleaved
  ds.head_dim = 64;
  ds.rope_theta = 10000.0;
  ds.max_position_embeddings = 163840;
  ds.rope_type = "yarn";
  ds.factor = 40.0;
  ds.beta_fast = 32.0;
  ds.beta_slow = 1.0;
  ds.mscale = 0.707;
  ds.mscale_all_dim = 0.707;
  ds.original_max_position_embeddings = 4096;
  ds.interleaved = true;
  const RopeConfig dc = seqmix::rope_config_from_hf(ds);
  REQUIRE(dc.layout == RopeLayout::interleaved);
  REQUIRE(seqmix::rope_frequencies(dc, 4096).attention_factor == 1.0);
  ds.mscale.reset();  // Qwen-style yarn: 0.1 ln(factor) + 1
  REQUIRE(std::abs(seqmix::rope_frequencies(seqmix::rope_config_from_hf(ds), 4096).attention_factor -
                   (0.1 * std::log(40.0) + 1)) < 1e-15);

  seqmix::HfRopeKeys phi;  // Phi-3-mini-128k: longrope, partial rotary off
  phi.head_dim = 96;
  phi.max_position_embeddings = 131072;
  phi.config_original_max_position_embeddings = 4096;
  phi.rope_type = "longrope";
  phi.short_factor.assign(48, 1.0);
  phi.long_factor.assign(48, 2.0);
  const RopeConfig pc = seqmix::rope_config_from_hf(phi);
  REQUIRE(std::abs(seqmix::rope_frequencies(pc, 8192).attention_factor - std::sqrt(1 + 5.0 / 12)) < 1e-15);
  REQUIRE(seqmix::rope_frequencies(pc, 4096).inv_freq[1] == std::pow(10000.0, -2.0 / 96));
  REQUIRE(seqmix::rope_frequencies(pc, 4097).inv_freq[1] == std::pow(10000.0, -2.0 / 96) / 2.0);

  seqmix::HfRopeKeys neox;  // GPT-NeoX-style partial rotary (Phi-2: 0.4 of 80)
  neox.head_dim = 80;
  neox.partial_rotary_factor = 0.4;
  REQUIRE(seqmix::rope_config_from_hf(neox).rotary_dim == 32);
}

TEST_CASE("rope refuses bad configurations and arguments before writing", "[rope]") {
  RopeConfig c = scheme_config(RopeScheme::yarn, 16, RopeLayout::half_split);
  const auto build = [](const RopeConfig& config) { RopeTable t(config, 64); };
  {
    RopeConfig odd = c;
    odd.rotary_dim = 15;
    st::require_shape_error("rotary_dim", [&] { build(odd); });
    RopeConfig zero = c;
    zero.factor = 0.0;
    st::require_shape_error("factor", [&] { build(zero); });
    zero.factor = -2.0;
    st::require_shape_error("factor", [&] { build(zero); });
    RopeConfig unknown = c;
    unknown.scheme = static_cast<RopeScheme>(99);
    st::require_shape_error("scheme", [&] { build(unknown); });
    RopeConfig no_l0 = c;
    no_l0.original_max_position_embeddings = 0;
    st::require_shape_error("original_max_position_embeddings", [&] { build(no_l0); });
    RopeConfig lr = scheme_config(RopeScheme::longrope, 16, RopeLayout::half_split);
    lr.long_factor.pop_back();
    st::require_shape_error("long_factor", [&] { build(lr); });
    RopeConfig l3 = scheme_config(RopeScheme::llama3, 16, RopeLayout::half_split);
    l3.high_freq_factor = 0.5;
    st::require_shape_error("high_freq_factor", [&] { build(l3); });
    st::require_shape_error("positions", [&] { RopeTable t(c, 0); });
  }
  {
    seqmix::HfRopeKeys k;
    k.head_dim = 64;
    k.rope_type = "quadratic";
    st::require_shape_error("rope_scaling.rope_type", [&] { seqmix::rope_config_from_hf(k); });
    k.rope_type = "linear";
    st::require_shape_error("rope_scaling.factor", [&] { seqmix::rope_config_from_hf(k); });
    k.rope_type = "default";
    k.head_dim = 10;
    k.partial_rotary_factor = 0.5;  // 5 rotary dims
    st::require_shape_error("rotary_dim", [&] { seqmix::rope_config_from_hf(k); });
  }
  const RopeTable table(c, 64);
  Tensor<float, 4> x({2, 4, 2, 16}), out({2, 4, 2, 16});
  st::fill_uniform(x.view(), 3);
  out.fill(7.f);
  const Tensor<float, 4> before = out;
  std::vector<std::int32_t> pos = {0, 1, 2, 3, 4, 5, 6, 64};  // the last is outside the table
  st::require_shape_error("positions", [&] { seqmix::rope(table, {x.view(), pos}, {out.view()}); });
  pos.back() = -1;
  st::require_shape_error("positions", [&] { seqmix::rope(table, {x.view(), pos}, {out.view()}); });
  pos.pop_back();
  st::require_shape_error("positions", [&] { seqmix::rope(table, {x.view(), pos}, {out.view()}); });
  Tensor<float, 4> narrow({2, 4, 2, 8});
  st::require_shape_error("x", [&] { seqmix::rope(table, {narrow.view(), {}}, {narrow.view()}); });
  Tensor<float, 4> wrong({2, 4, 3, 16});
  st::require_shape_error("out", [&] { seqmix::rope(table, {x.view(), {}}, {wrong.view()}); });
  // out overlapping x without being x: shifted by one float.
  Tensor<float, 4> big({2, 4, 2, 17});
  const seqmix::TensorView<float, 4> shifted(big.data() + 1, {2, 4, 2, 16}, {4 * 2 * 17, 2 * 17, 17, 1});
  const seqmix::ConstView<float, 4> base(big.data(), {2, 4, 2, 16}, {4 * 2 * 17, 2 * 17, 17, 1});
  st::require_shape_error("out", [&] { seqmix::rope(table, {base, {}}, {shifted}); });
  st::require_shape_error("table", [&] { seqmix::rope(RopeTable(), {x.view(), {}}, {out.view()}); });
  REQUIRE(st::compare(out.view(), before.view(), 0.0).ok);
}
