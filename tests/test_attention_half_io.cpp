// Attention with q, k and v all stored as bf16 or f16 (AttentionInputs<KV, Q>): the prefill
// (attention_flash), the decode (attention_step), the dispatching attention and the reference
// widen each query tile on load. Checked two ways (docs/operators.md section 5):
//  - against the same entry point on fp32 q holding the same rounded values (and the same 16-bit
//    K/V): the same arithmetic after the load, so within 1e-6 relative;
//  - against fp32 q/k/v holding the unrounded originals, within the documented bound: per row,
//    Delta = max_j |s~_j - s_j| (the logit change the roundings of q and k_j make), then
//    |o~ - o| <= (exp(2 Delta) - 1) max_j |v~_j| + max_j |v~_j - v_j|,  |lse~ - lse| <= Delta,
//    plus fp32 slack. Delta <= (2u + u^2) scale max_j sum_c |q_c k_jc|, u = 2^-8 (bf16), 2^-11 (f16).
// Ragged shapes: Tq = 1, T not a multiple of the 64-key tile, odd head sizes, GQA, B > 1, packed
// sequences. The bf16 dot-product form (Bf16Compute::dot) is checked on bf16 q against fp32 q
// holding the same values too (the kernel rounds the scaled q tile to bf16 in both).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct HalfIoCase {
  index_t B, Tq, Tk, Hq, Hkv, Dk, Dv;
  bool causal, packed;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " Dk=" << Dk << " Dv=" << Dv
      << (causal ? " causal" : "") << (packed ? " packed" : "");
    return s.str();
  }
};

std::vector<HalfIoCase> half_io_cases() {
  std::vector<HalfIoCase> cases = {
      {1, 1, 1, 2, 1, 64, 64, true, false},       // one query, one key
      {2, 3, 130, 8, 2, 64, 64, true, false},     // decode shape (Tq <= 4), GQA 4:1
      {1, 70, 70, 4, 2, 33, 20, true, false},     // ragged tiles, odd head sizes
      {2, 65, 129, 6, 3, 48, 80, false, false},   // not causal, Dk != Dv
      {1, 150, 150, 4, 2, 64, 64, true, true},    // packed sequences
      // The decode's address-order tile (16-bit K/V read in place): query rows per KV head 1
      // (odd Hkv), 2, 3 and 8, key counts off the tile and the key pairs, Dv below one P V block.
      {2, 1, 1000, 5, 5, 64, 64, true, false},
      {1, 2, 97, 4, 4, 64, 64, true, false},
      {1, 1, 777, 3, 1, 128, 128, true, false},
      {1, 1, 131, 24, 3, 64, 32, true, false},
  };
  if (!st::small_test_scale()) cases.push_back({1, 200, 200, 4, 2, 128, 128, true, false});
  return cases;
}

// A random fp32 tensor, its 16-bit rounding and that rounding widened back to fp32.
template <class H>
struct Stored {
  Tensor<float, 4> orig, rounded;
  Tensor<H, 4> half;
  Stored(const typename Tensor<float, 4>::shape_type& shape, std::uint64_t seed)
      : orig(shape), rounded(shape), half(shape) {
    st::fill_normal(orig.view(), seed);
    seqmix::convert(orig.data(), half.data(), orig.numel());
    seqmix::convert(half.data(), rounded.data(), orig.numel());
  }
};

struct HalfIoResult {
  Tensor<float, 4> o;
  Tensor<float, 3> lse;
};

enum class Entry { flash, step, dispatch, reference };

const char* entry_name(Entry e) {
  switch (e) {
    case Entry::flash: return "attention_flash";
    case Entry::step: return "attention_step";
    case Entry::dispatch: return "attention";
    case Entry::reference: return "reference::attention";
  }
  return "?";
}

template <class KV, class Q>
HalfIoResult half_io_run(Entry e, const HalfIoCase& c, const seqmix::ConstView<Q, 4>& q,
                         const seqmix::ConstView<KV, 4>& k, const seqmix::ConstView<KV, 4>& v,
                         const std::vector<std::int32_t>& cu, const seqmix::AttentionOptions& options,
                         const seqmix::Executor& executor) {
  seqmix::AttentionInputs<KV, Q> in;
  in.q = q, in.k = k, in.v = v;
  if (c.packed) in.batch.cu_seqlens = cu;
  HalfIoResult r{Tensor<float, 4>({c.B, c.Tq, c.Hq, c.Dv}), Tensor<float, 3>({c.B, c.Tq, c.Hq})};
  const seqmix::AttentionOutputs out{r.o.view(), r.lse.view()};
  switch (e) {
    case Entry::flash: seqmix::attention_flash(in, out, options, executor); break;
    case Entry::step: seqmix::attention_step(in, out, options, executor); break;
    case Entry::dispatch: seqmix::attention(in, out, options, executor); break;
    case Entry::reference: seqmix::reference::attention(in, out, options); break;
  }
  return r;
}

// |a - b| <= tol * (1 + |b|) everywhere (both -inf / NaN in the same places).
void half_io_require_close(const HalfIoResult& a, const HalfIoResult& b, double tol) {
  double worst = 0.0;
  for (index_t i = 0; i < a.o.numel(); ++i)
    worst = std::max(worst, std::abs(double{a.o.data()[i]} - b.o.data()[i]) / (1.0 + std::abs(b.o.data()[i])));
  for (index_t i = 0; i < a.lse.numel(); ++i) {
    const double x = a.lse.data()[i], y = b.lse.data()[i];
    if (std::isinf(y)) {
      REQUIRE(x == y);
      continue;
    }
    worst = std::max(worst, std::abs(x - y) / (1.0 + std::abs(y)));
  }
  INFO("largest relative difference " << worst);
  REQUIRE(worst <= tol);
}

// The documented bound per output row (b, i, h) of a rounded call against the fp32 call on the
// originals: o_bound and Delta, computed once per case (every entry point shares them).
struct HalfIoBound {
  std::vector<double> o_bound, delta;  // [B, Tq, Hq] row-major
};

template <class H>
HalfIoBound half_io_bound(const HalfIoCase& c, const Stored<H>& q, const Stored<H>& k, const Stored<H>& v, float scale) {
  const index_t G = c.Hq / c.Hkv;
  HalfIoBound bound;
  bound.o_bound.resize(static_cast<std::size_t>(c.B * c.Tq * c.Hq));
  bound.delta.resize(bound.o_bound.size());
  for (index_t b = 0; b < c.B; ++b)
    for (index_t hk = 0; hk < c.Hkv; ++hk) {
      double vmax = 0.0, dv = 0.0;
      for (index_t j = 0; j < c.Tk; ++j)
        for (index_t x = 0; x < c.Dv; ++x) {
          vmax = std::max(vmax, std::abs(double{v.rounded(b, j, hk, x)}));
          dv = std::max(dv, std::abs(double{v.rounded(b, j, hk, x)} - v.orig(b, j, hk, x)));
        }
      for (index_t h = hk * G; h < (hk + 1) * G; ++h)
        for (index_t i = 0; i < c.Tq; ++i) {
          double delta = 0.0;  // over every key: a bound for any visible set
          for (index_t j = 0; j < c.Tk; ++j) {
            double change = 0.0, size = 0.0;
            for (index_t x = 0; x < c.Dk; ++x) {
              change += double{q.rounded(b, i, h, x)} * k.rounded(b, j, hk, x) -
                        double{q.orig(b, i, h, x)} * k.orig(b, j, hk, x);
              size += std::abs(double{q.orig(b, i, h, x)} * k.orig(b, j, hk, x));
            }
            delta = std::max(delta, scale * (std::abs(change) + 1e-6 * size));
          }
          const std::size_t row = static_cast<std::size_t>((b * c.Tq + i) * c.Hq + h);
          bound.delta[row] = delta;
          bound.o_bound[row] = std::expm1(2.0 * delta) * vmax + dv + 1e-5 * (1.0 + vmax);
        }
    }
  return bound;
}

void half_io_require_bound(const HalfIoCase& c, const HalfIoBound& bound, const HalfIoResult& got,
                           const HalfIoResult& ref) {
  double worst = 0.0;
  for (index_t b = 0; b < c.B; ++b)
    for (index_t i = 0; i < c.Tq; ++i)
      for (index_t h = 0; h < c.Hq; ++h) {
        const std::size_t row = static_cast<std::size_t>((b * c.Tq + i) * c.Hq + h);
        for (index_t x = 0; x < c.Dv; ++x)
          worst = std::max(worst, std::abs(double{got.o(b, i, h, x)} - ref.o(b, i, h, x)) / bound.o_bound[row]);
        const double l = ref.lse(b, i, h);
        if (std::isinf(l)) {
          REQUIRE(got.lse(b, i, h) == l);
        } else {
          worst = std::max(worst, std::abs(got.lse(b, i, h) - l) / (bound.delta[row] + 1e-5 * (1.0 + std::abs(l))));
        }
      }
  INFO("largest error / bound = " << worst);
  REQUIRE(worst <= 1.0);
}

std::vector<std::int32_t> half_io_cu_seqlens(index_t T) {
  std::vector<std::int32_t> cu = {0};
  for (index_t len = 1; cu.back() < T; len = len * 3 + 5)
    cu.push_back(static_cast<std::int32_t>(std::min<index_t>(cu.back() + len, T)));
  return cu;
}

template <class H>
void half_io_check(const HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  const Stored<H> q({c.B, c.Tq, c.Hq, c.Dk}, seed), k({c.B, c.Tk, c.Hkv, c.Dk}, seed + 1),
      v({c.B, c.Tk, c.Hkv, c.Dv}, seed + 2);
  const std::vector<std::int32_t> cu = half_io_cu_seqlens(c.Tq);
  seqmix::AttentionOptions options;
  options.causal = c.causal;
  const HalfIoBound bound = half_io_bound(c, q, k, v, seqmix::detail::attention_scale(options, c.Dk));
  for (const Entry e : {Entry::flash, Entry::step, Entry::dispatch, Entry::reference}) {
    if (e == Entry::step && c.packed) continue;  // packed decode is covered by attention
    if (e == Entry::reference && c.Tq * c.Tk * c.Hq * c.Dk > (index_t{1} << 22)) continue;  // double loops: small cases
    INFO(entry_name(e) << " " << c.describe() << " seed " << seed);
    const HalfIoResult all16 =
        half_io_run<H, H>(e, c, q.half.cview(), k.half.cview(), v.half.cview(), cu, options, executor);
    const HalfIoResult q32 =
        half_io_run<H, float>(e, c, q.rounded.cview(), k.half.cview(), v.half.cview(), cu, options, executor);
    half_io_require_close(all16, q32, 1e-6);
    const HalfIoResult orig =
        half_io_run<float, float>(e, c, q.orig.cview(), k.orig.cview(), v.orig.cview(), cu, options, executor);
    half_io_require_bound(c, bound, all16, orig);
  }
  if constexpr (std::is_same_v<H, seqmix::bf16>) {
    // The dot-product tiles read the query tile through the same load.
    options.bf16_compute = seqmix::Bf16Compute::dot;
    INFO("attention_flash, bf16 dot products, " << c.describe() << " seed " << seed);
    const HalfIoResult dot16 =
        half_io_run<H, H>(Entry::flash, c, q.half.cview(), k.half.cview(), v.half.cview(), cu, options, executor);
    const HalfIoResult dot32 =
        half_io_run<H, float>(Entry::flash, c, q.rounded.cview(), k.half.cview(), v.half.cview(), cu, options, executor);
    half_io_require_close(dot16, dot32, 1e-6);
  }
}

template <class H>
void half_io_sweep(std::uint64_t seed) {
  const seqmix::ThreadPool pool(2);
  for (const HalfIoCase& c : half_io_cases()) half_io_check<H>(c, seed += 10, pool);
}

}  // namespace

TEST_CASE("attention with bf16 q, k and v: equal to fp32 q of the same values, within the bound of fp32",
          "[attention][bf16]") {
  half_io_sweep<seqmix::bf16>(9100);
}

TEST_CASE("attention with f16 q, k and v: equal to fp32 q of the same values, within the bound of fp32",
          "[attention][f16]") {
  half_io_sweep<seqmix::f16>(9500);
}

TEST_CASE("attention with bf16 q: a bad shape is refused before any write", "[attention][bf16]") {
  Tensor<seqmix::bf16, 4> q({1, 5, 4, 32}), k({1, 5, 2, 16}), v({1, 5, 2, 16});  // q's Dk != k's
  Tensor<float, 4> o({1, 5, 4, 16});
  std::fill(o.data(), o.data() + o.numel(), 3.f);
  seqmix::AttentionInputs<seqmix::bf16, seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  CHECK_THROWS_AS(seqmix::attention(in, {o.view(), {}}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::attention_step(in, {o.view(), {}}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::attention(in, {o.view(), {}}), seqmix::ShapeError);
  REQUIRE(std::all_of(o.data(), o.data() + o.numel(), [](float x) { return x == 3.f; }));
}
