// FIRE (Li et al. 2023, functional interpolation for relative positions) as a relative bias in
// the tile loop: every attention form (entry point, prefill, decode, reference, paged, block-
// sparse) equals attention of each head alone with the bias written as a dense mask by the plain
// loops below (psi(d) = ln(1 + c d), normalized by psi(max(pos, L)), through the head's MLP);
// per-head MLPs and the paper's shared hidden layer (stride-0 views), queries on both sides of
// the threshold L (the per-distance table of the prefill covers only those below it).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/patterns.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct FireParams {
  Tensor<float, 2> w1, b1, w2;
  Tensor<float, 1> b2;
  FireParams(index_t Hq, index_t W, std::uint64_t seed)
      : w1(st::random_tensor<2>({Hq, W}, seed, -4.f, 4.f)),
        b1(st::random_tensor<2>({Hq, W}, seed + 1, -1.f, 1.f)),
        w2(st::random_tensor<2>({Hq, W}, seed + 2, -1.f, 1.f)),
        b2(st::random_tensor<1>({Hq}, seed + 3, -1.f, 1.f)) {}
};

// FIRE's bias of head h for a query at position pos and key j, by the paper's definition.
double fire_bias_plain(const seqmix::RelativeBias& rb, index_t h, index_t pos, index_t j) {
  const double c = rb.fire_c, L = rb.fire_threshold;
  const double x = std::log(1.0 + c * std::abs(static_cast<double>(pos - j))) /
                   (std::log(1.0 + c * std::max(static_cast<double>(pos), L)) + 1e-6);
  double out = rb.fire_b2(h);
  for (index_t k = 0; k < rb.fire_w1.size(1); ++k)
    out += rb.fire_w2(h, k) * std::max(0.0, static_cast<double>(rb.fire_w1(h, k)) * x + rb.fire_b1(h, k));
  return out;
}

struct FireCase {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, D, W;
  float threshold;
  bool causal, positions, shared_hidden;
  std::string describe() const {
    std::ostringstream s;
    s << name << ": B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D
      << " W=" << W << " L=" << threshold << " causal=" << causal << " positions=" << positions
      << " shared_hidden=" << shared_hidden << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

const std::vector<FireCase> kFireCases = {
    {"prefill-across-threshold", 1, 130, 130, 4, 2, 64, 32, 60.f, true, false, false},
    {"prefill-shared-hidden", 2, 70, 90, 4, 1, 64, 16, 512.f, true, false, true},
    {"prefill-positions-far", 1, 40, 100, 2, 2, 80, 8, 30.f, false, true, false},
    {"decode", 2, 1, 700, 8, 2, 64, 32, 512.f, true, false, true},
    {"decode-beyond-threshold", 1, 3, 400, 4, 2, 64, 4, 100.f, true, false, false},
    // A late chunk of a prefill: every query above L, so only the lines serve its rows.
    {"prefill-chunk-above-threshold", 1, 20, 300, 4, 2, 64, 8, 100.f, true, false, false},
};

void check_fire_case(const FireCase& c, std::uint64_t seed) {
  INFO(c.describe());
  const auto q = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed);
  const auto k = st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 1, -2.f, 2.f);
  const auto v = st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2);
  const FireParams params(c.Hq, c.W, seed + 3);
  Tensor<std::int64_t, 2> positions({c.B, c.Tq});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t i = 0; i < c.Tq; ++i) positions(b, i) = 3 * i + 50 * b + 7;  // up to past Tk
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (c.positions) in.positions = positions.view();
  seqmix::RelativeBias& rb = in.relative_bias;
  rb.kind = seqmix::RelativeBiasKind::fire;
  rb.fire_c = 0.3f, rb.fire_threshold = c.threshold;
  if (c.shared_hidden) {  // the paper's layout: one hidden layer (head 0's row) read by every head
    rb.fire_w1 = seqmix::ConstView<float, 2>(params.w1.data(), {c.Hq, c.W}, {0, 1});
    rb.fire_b1 = seqmix::ConstView<float, 2>(params.b1.data(), {c.Hq, c.W}, {0, 1});
  } else {
    rb.fire_w1 = params.w1.view(), rb.fire_b1 = params.b1.view();
  }
  rb.fire_w2 = params.w2.view(), rb.fire_b2 = params.b2.view();
  seqmix::AttentionOptions options;
  options.causal = c.causal;
  Tensor<float, 4> o_fast({c.B, c.Tq, c.Hq, c.D}), o_flash({c.B, c.Tq, c.Hq, c.D}), o_step({c.B, c.Tq, c.Hq, c.D}),
      o_ref({c.B, c.Tq, c.Hq, c.D}), o_sparse({c.B, c.Tq, c.Hq, c.D});
  seqmix::ThreadPool pool(2);
  seqmix::attention(in, {o_fast.view()}, options, pool);
  seqmix::attention_flash(in, {o_flash.view()}, options, pool);
  seqmix::attention_step(in, {o_step.view()}, options, pool);
  seqmix::reference::attention(in, {o_ref.view()}, options);
  // Block-sparse with every block selected is dense attention.
  seqmix::BlockGrid grid;
  grid.Tq = c.Tq, grid.Tk = c.Tk, grid.block_q = 32, grid.block_k = 32;
  seqmix::LocalGlobalPattern all;
  all.window_blocks = grid.key_blocks(), all.causal = false;
  const seqmix::BlockPattern pattern = seqmix::local_global_pattern(grid, all);
  seqmix::block_sparse_attention(in, pattern.layout(), {o_sparse.view()}, options, pool);

  const index_t G = c.Hq / c.Hkv;
  Tensor<float, 3> mask({c.B, c.Tq, c.Tk});
  for (index_t h = 0; h < c.Hq; ++h) {
    INFO("head " << h);
    for (index_t b = 0; b < c.B; ++b)
      for (index_t i = 0; i < c.Tq; ++i) {
        const index_t pos = c.positions ? positions(b, i) : c.Tk - c.Tq + i;
        for (index_t j = 0; j < c.Tk; ++j) mask(b, i, j) = static_cast<float>(fire_bias_plain(rb, h, pos, j));
      }
    seqmix::AttentionInputs<float> one;
    one.q = in.q.slice(2, h, 1), one.k = in.k.slice(2, h / G, 1), one.v = in.v.slice(2, h / G, 1);
    one.positions = in.positions, one.mask = mask.view();
    Tensor<float, 4> want({c.B, c.Tq, 1, c.D});
    seqmix::reference::attention(one, {want.view()}, options);
    // The mask's double formula and the kernels' may round a bias differently in the last bit.
    st::require_close("attention (fire)", o_fast.cview().slice(2, h, 1), want.cview(), 2e-6);
    st::require_close("attention_flash (fire)", o_flash.cview().slice(2, h, 1), want.cview(), 2e-6);
    st::require_close("attention_step (fire)", o_step.cview().slice(2, h, 1), want.cview(), 2e-6);
    st::require_close("reference::attention (fire)", o_ref.cview().slice(2, h, 1), want.cview(), 2e-6);
    st::require_close("block_sparse_attention (fire)", o_sparse.cview().slice(2, h, 1), want.cview(), 2e-6);
  }
}

}  // namespace

TEST_CASE("fire: attention with a FIRE bias equals the bias as a dense mask", "[attention][bias]") {
  for (const FireCase& c : kFireCases) check_fire_case(c, 9700 + static_cast<std::uint64_t>(&c - kFireCases.data()) * 10);
}

// The prefill's lines for rows above L (DistanceBiasCache::add_fire_row) against the formula,
// bias by bias: units that are off or on everywhere (w1 = 0), shared kinks (equal -b1 / w1),
// a kink at 0, and keys past the table (the formula's side).
TEST_CASE("fire: the prefill's lines above L equal the MLP per logit", "[attention][bias]") {
  const index_t Hq = 3, W = 12, Tk = 300;
  FireParams params(Hq, W, 9900);
  params.w1(0, 0) = 0.f, params.b1(0, 0) = 0.5f;    // on everywhere
  params.w1(0, 1) = 0.f, params.b1(0, 1) = -0.5f;   // off everywhere
  params.w1(1, 2) = 2.f, params.b1(1, 2) = -1.f;    // kink at 0.5 ...
  params.w1(1, 3) = -4.f, params.b1(1, 3) = 2.f;    // ... shared, with the other side on
  params.w1(2, 4) = 3.f, params.b1(2, 4) = 0.f;     // kink at 0
  seqmix::RelativeBias rb;
  rb.kind = seqmix::RelativeBiasKind::fire, rb.fire_c = 0.3f, rb.fire_threshold = 20.f;
  rb.fire_w1 = params.w1.view(), rb.fire_b1 = params.b1.view(), rb.fire_w2 = params.w2.view(), rb.fire_b2 = params.b2.view();
  const index_t distances = 200;  // keys of positions past 200 from the query take the formula
  const auto cache = seqmix::detail::DistanceBiasCache::build(rb, Hq, distances, seqmix::serial_executor());
  std::vector<float> row(static_cast<std::size_t>(Tk));
  for (index_t h = 0; h < Hq; ++h)
    for (const index_t pos : {21, 64, 150, 299, 420}) {
      const double normalizer = seqmix::detail::fire_normalizer(rb, pos);
      const auto formula = [&](index_t j) {
        return static_cast<float>(seqmix::detail::fire_value(rb, h, normalizer, std::abs(static_cast<double>(pos - j))));
      };
      // Tiles of 64 keys, ragged ones, and rows longer than the lines' 64-key pieces.
      const index_t runs[6][2] = {{0, 64}, {64, 64}, {131, 64}, {250, 50}, {0, 300}, {37, 263}};
      for (const auto& run : runs) {
        const index_t j0 = run[0], n = run[1];
        std::fill(row.begin(), row.end(), 0.f);
        cache.add_fire_row(row.data(), j0, n, h, pos, normalizer, [&](float* part, index_t first, index_t count) {
          for (index_t c = 0; c < count; ++c) part[c] += formula(first + c);
        });
        for (index_t c = 0; c < n; ++c) {
          INFO("h=" << h << " pos=" << pos << " key=" << j0 + c);
          const double want = fire_bias_plain(rb, h, pos, j0 + c);
          REQUIRE(std::abs(row[static_cast<std::size_t>(c)] - want) <= 1e-6 * (1.0 + std::abs(want)));
        }
      }
    }
}

// Rows above L never read the per-offset table, so a call whose queries all lie above L (a late
// chunk of a long prefill) does not build it; one query at L still needs it.
TEST_CASE("fire: a prefill with every query above L builds no per-offset table", "[attention][bias]") {
  const index_t Hq = 2, W = 4;
  const FireParams params(Hq, W, 9950);
  seqmix::RelativeBias rb;
  rb.kind = seqmix::RelativeBiasKind::fire, rb.fire_threshold = 100.f;
  rb.fire_w1 = params.w1.view(), rb.fire_b1 = params.b1.view(), rb.fire_w2 = params.w2.view(), rb.fire_b2 = params.b2.view();
  const auto above = seqmix::detail::prefill_bias_cache(rb, Hq, 16, 300, 101, seqmix::serial_executor());
  CHECK(above.built());
  CHECK(above.bias.empty());
  CHECK(above.has_fire_lines());
  CHECK_FALSE(above.covers(101));
  const auto at = seqmix::detail::prefill_bias_cache(rb, Hq, 16, 300, 100, seqmix::serial_executor());
  CHECK(at.bias.size() == static_cast<std::size_t>(Hq * at.width()));
  CHECK(at.covers(100));
  CHECK_FALSE(at.covers(101));
}

TEST_CASE("fire: bad parameters are refused before writing", "[attention][bias]") {
  const index_t Hq = 4;
  const auto q = st::random_tensor<4>({1, 20, Hq, 32}, 1);
  const auto k = st::random_tensor<4>({1, 20, 2, 32}, 2);
  Tensor<float, 2> w({Hq, 8}), narrow({Hq, 7});
  Tensor<float, 1> b2({Hq});
  w.fill(0.5f), narrow.fill(0.5f), b2.fill(0.f);
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = k.view();
  in.relative_bias.kind = seqmix::RelativeBiasKind::fire;
  in.relative_bias.fire_w1 = w.view(), in.relative_bias.fire_b1 = w.view(), in.relative_bias.fire_w2 = w.view();
  in.relative_bias.fire_b2 = b2.view();
  Tensor<float, 4> o({1, 20, Hq, 32});
  o.fill(7.f);
  const auto refused = [&](const char* argument) {
    for (int form = 0; form < 3; ++form) {
      st::require_shape_error(argument, [&] {
        if (form == 0) seqmix::attention(in, {o.view()});
        if (form == 1) seqmix::attention_step(in, {o.view()});
        if (form == 2) seqmix::reference::attention(in, {o.view()});
      });
      for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
    }
  };
  in.relative_bias.fire_w2 = narrow.view();
  refused("relative_bias.fire_w2");
  in.relative_bias.fire_w2 = w.view(), in.relative_bias.fire_b2 = {};
  refused("relative_bias.fire_b2");
  in.relative_bias.fire_b2 = b2.view(), in.relative_bias.fire_c = 0.f;
  refused("relative_bias.fire_c");
  in.relative_bias.fire_c = 0.1f, in.relative_bias.fire_threshold = -1.f;
  refused("relative_bias.fire_threshold");
  in.relative_bias.fire_threshold = 512.f, w(2, 3) = std::nanf("");
  refused("relative_bias.fire_w1");
}
