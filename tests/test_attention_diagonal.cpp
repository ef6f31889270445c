// The causal prefill's tiles across the diagonal (flash.hpp, diagonal_row_ends): there each block
// of rows multiplies only as far as its rows see, which must change nothing. So a causal call
// equals, bit for bit, the same call without the causal option and with the causal rule written
// as a -inf mask (every tile computed whole), and both equal the reference. Ragged shapes around
// the 64-key tile and the 6-row GEMM block: T = 1, 5, 63, 64, 65, 130, 257; groups 1, 3, 4;
// head sizes 40 and 128; B = 2; default positions and shuffled ones (rows that see fewer keys
// after rows that see more). fp32 and fp16 K/V, and bf16 K/V with bf16 dot products where the
// target has them. Also: a prefill after one whose queries held a NaN (the scratch each thread
// keeps across calls) gives the clean result. Under the sanitizers (small scale): no T = 257, half
// the grid (every pair of values still meets) and one KV type on every other case against the
// reference.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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
using seqmix::Tensor;
namespace st = seqmix::testing;

struct DiagonalCase {
  index_t T, Hq, Hkv, D;
  bool shuffled;       // positions: a permutation of 0 .. T-1 instead of the default ones
  index_t prefix = 0;  // keys before the queries (a cache): Tk = prefix + T, queries at prefix + i
  index_t window = 0, sinks = 0;
  std::string describe() const {
    std::ostringstream s;
    s << "B=2 T=" << T << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " shuffled=" << shuffled
      << " prefix=" << prefix << " window=" << window << " sinks=" << sinks << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

std::vector<DiagonalCase> diagonal_cases() {
  std::vector<DiagonalCase> cases;
  const index_t heads[3][2] = {{2, 2}, {6, 2}, {8, 2}};  // groups 1, 3, 4
  const bool small = st::small_test_scale();
  for (const index_t T : {1, 5, 63, 64, 65, 130, 257})
    for (int g = 0; g < 3; ++g)
      for (const index_t D : {40, 128})
        for (const bool shuffled : {false, true}) {
          // Under the sanitizers (small scale) no T = 257, and half the grid: each (T, groups,
          // shuffled) once, D alternating so that every pair of T, groups, D and shuffled values
          // still meets. D sets only the column panels of the two products (each runs over the
          // depth its block of rows reaches), not which rows see which keys of a tile.
          if (small && (T == 257 || (D == 128) != ((g + shuffled) % 2 == 1))) continue;
          cases.push_back({T, heads[g][0], heads[g][1], D, shuffled});
        }
  // A prefix cache (Tk > Tq: the diagonal off the tiles' grid), sliding windows with and without
  // sinks (rows whose first keys are hidden too), and a head size that is odd (a half-used pair
  // word in the bf16 key tile) and not a multiple of 16 pair words.
  for (const index_t T : {5, 70, 130})
    for (const index_t prefix : {1, 37, 64}) {
      cases.push_back({T, 6, 2, 33, false, prefix});
      cases.push_back({T, 4, 4, 72, false, prefix, 48, 0});
      cases.push_back({T, 8, 2, 64, false, prefix, 21, 3});
    }
  return cases;
}

template <class KV>
Tensor<KV, 4> stored(const Tensor<float, 4>& x) {
  Tensor<KV, 4> out(x.shape());
  for (index_t i = 0; i < x.numel(); ++i) out.data()[i] = static_cast<KV>(x.data()[i]);
  return out;
}

// The first element where a and b differ (-1: none), so a failure names its place.
template <std::size_t Rank>
index_t first_difference(const Tensor<float, Rank>& a, const Tensor<float, Rank>& b) {
  for (index_t i = 0; i < a.numel(); ++i)
    if (!(a.data()[i] == b.data()[i])) return i;
  return -1;
}

// A case's inputs in fp32 (each KV type stores its own rounding of k and v) and the causal rule
// (with the window and its sinks) as a mask: key j hidden from the query at position pos when
// j > pos, or when j <= pos - window unless j < sinks.
struct DiagonalData {
  Tensor<float, 4> q, k, v;
  Tensor<std::int64_t, 2> positions;
  Tensor<float, 3> mask;

  DiagonalData(const DiagonalCase& c, index_t B, std::uint64_t seed)
      : q(st::random_tensor<4>({B, c.T, c.Hq, c.D}, seed)),
        k(st::random_tensor<4>({B, c.prefix + c.T, c.Hkv, c.D}, seed + 1)),
        v(st::random_tensor<4>({B, c.prefix + c.T, c.Hkv, c.D}, seed + 2)),
        positions({B, c.T}),
        mask({B, c.T, c.prefix + c.T}) {
    const index_t Tk = c.prefix + c.T;
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < c.T; ++i) positions(b, i) = c.shuffled ? (i * 37 + 11 * b) % c.T : c.prefix + i;
    for (index_t b = 0; b < B; ++b)
      for (index_t i = 0; i < c.T; ++i)
        for (index_t j = 0; j < Tk; ++j) {
          const index_t pos = positions(b, i);
          const bool hidden = j > pos || (c.window > 0 && j <= pos - c.window && j >= c.sinks);
          mask(b, i, j) = hidden ? -std::numeric_limits<float>::infinity() : 0.f;
        }
  }
};

// The causal call against the masked one, bit for bit, and (with_reference) against the reference.
template <class KV>
void check_diagonal_case(const DiagonalCase& c, const DiagonalData& data, seqmix::Bf16Compute compute,
                         bool with_reference) {
  INFO(c.describe() << " kv=" << sizeof(KV) << " bytes, bf16_compute dot=" << (compute == seqmix::Bf16Compute::dot));
  const index_t B = data.q.size(0);
  const Tensor<KV, 4> k = stored<KV>(data.k), v = stored<KV>(data.v);
  seqmix::AttentionInputs<KV> in;
  in.q = data.q.cview(), in.k = k.cview(), in.v = v.cview();
  if (c.shuffled) in.positions = data.positions.cview();
  seqmix::AttentionInputs<KV> masked = in;
  masked.mask = data.mask.cview();
  seqmix::AttentionOptions causal, plain;
  causal.causal = true, causal.bf16_compute = compute;
  causal.window = c.window, causal.sink_tokens = c.sinks;
  plain.bf16_compute = compute;

  Tensor<float, 4> o_causal({B, c.T, c.Hq, c.D}), o_masked({B, c.T, c.Hq, c.D});
  Tensor<float, 3> lse_causal({B, c.T, c.Hq}), lse_masked({B, c.T, c.Hq});
  const seqmix::ThreadPool pool(2);
  seqmix::attention_flash(in, {o_causal.view(), lse_causal.view()}, causal, pool);
  seqmix::attention_flash(masked, {o_masked.view(), lse_masked.view()}, plain, pool);
  REQUIRE(first_difference(o_causal, o_masked) == -1);
  REQUIRE(first_difference(lse_causal, lse_masked) == -1);
  if (!with_reference) return;
  Tensor<float, 4> o_ref({B, c.T, c.Hq, c.D});
  seqmix::reference::attention(in, {o_ref.view()}, causal);
  // The dot form rounds q and P to bf16 (its bound: test_attention_bf16.cpp).
  const double tol = compute == seqmix::Bf16Compute::dot ? 3e-2 : 1e-4;
  st::require_close("attention_flash (causal)", o_causal.cview(), o_ref.cview(), tol);
}

}  // namespace

TEST_CASE("attention prefill: tiles across the causal diagonal equal the causal rule as a mask, bit for bit",
          "[attention]") {
  // The reference cost two thirds of the test under the sanitizers (small scale): there every
  // other case checks one KV type against it, fp32, fp16 and bf16 in turn (each type over every
  // T); every type's causal call still equals its masked call bit for bit in every case, and
  // the masked (whole-tile) forms are checked against the reference in test_attention*.cpp.
  const bool small = st::small_test_scale();
  std::uint64_t seed = 4100;
  int index = 0;
  for (const DiagonalCase& c : diagonal_cases()) {
    const DiagonalData data(c, 2, seed);
    const int turn = small ? (index % 2 == 0 ? index / 2 % 3 : -1) : 3;  // 3: every type
    check_diagonal_case<float>(c, data, seqmix::Bf16Compute::fp32, turn == 0 || turn == 3);
    check_diagonal_case<seqmix::f16>(c, data, seqmix::Bf16Compute::fp32, turn == 1 || turn == 3);
    check_diagonal_case<seqmix::bf16>(c, data, seqmix::Bf16Compute::dot, turn == 2 || turn == 3);
    ++index;
    seed += 100;
  }
}

TEST_CASE("attention prefill: a call after one whose queries held a NaN gives the clean result", "[attention]") {
  const index_t B = 1, T = 130, Hq = 8, Hkv = 2, D = 64;
  Tensor<float, 4> q = st::random_tensor<4>({B, T, Hq, D}, 4300);
  const Tensor<float, 4> k = st::random_tensor<4>({B, T, Hkv, D}, 4301);
  const Tensor<float, 4> v = st::random_tensor<4>({B, T, Hkv, D}, 4302);
  seqmix::AttentionInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  seqmix::AttentionOptions options;
  options.causal = true;
  Tensor<float, 4> o({B, T, Hq, D}), want({B, T, Hq, D});
  seqmix::reference::attention(in, {want.view()}, options);
  const seqmix::ThreadPool pool(2);
  Tensor<float, 4> poisoned = q;
  for (index_t i = 0; i < poisoned.numel(); i += 7) poisoned.data()[i] = std::numeric_limits<float>::quiet_NaN();
  seqmix::AttentionInputs<float> bad = in;
  bad.q = poisoned.cview();
  seqmix::attention_flash(bad, {o.view()}, options, pool);
  seqmix::attention_flash(in, {o.view()}, options, pool);
  st::require_close("attention_flash after a NaN call", o.cview(), want.cview(), 1e-4);
}

// The scratch each thread keeps (FlashScratch::local) across calls whose shapes differ (remade)
// and after a call whose keys and values held NaN / inf (the value-row guard's saved rows), on
// two pools and the serial executor used in turn by one thread: every call equals the reference.
TEST_CASE("attention prefill: calls of different shapes after non-finite keys and values, on two pools",
          "[attention]") {
  const seqmix::ThreadPool pool_a(2), pool_b(2);
  const seqmix::Executor* executors[3] = {&pool_a, &seqmix::serial_executor(), &pool_b};
  struct Shape {
    index_t T, Hq, Hkv, D;
  };
  const Shape shapes[4] = {{130, 8, 2, 64}, {65, 6, 2, 40}, {130, 8, 2, 64}, {7, 2, 2, 128}};
  std::uint64_t seed = 4400;
  for (int round = 0; round < 4; ++round) {
    const Shape& s = shapes[round];
    INFO("round " << round << " T=" << s.T << " Hq=" << s.Hq << " D=" << s.D);
    const Tensor<float, 4> q = st::random_tensor<4>({1, s.T, s.Hq, s.D}, seed);
    Tensor<float, 4> k = st::random_tensor<4>({1, s.T, s.Hkv, s.D}, seed + 1);
    Tensor<float, 4> v = st::random_tensor<4>({1, s.T, s.Hkv, s.D}, seed + 2);
    seqmix::AttentionInputs<float> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    seqmix::AttentionOptions options;
    options.causal = true;
    Tensor<float, 4> o({1, s.T, s.Hq, s.D}), want({1, s.T, s.Hq, s.D});
    seqmix::reference::attention(in, {want.view()}, options);
    // First a call whose keys and values hold non-finite entries, then the clean one.
    Tensor<float, 4> k_bad = k, v_bad = v;
    for (index_t i = 3; i < k_bad.numel(); i += 97) k_bad.data()[i] = std::numeric_limits<float>::infinity();
    for (index_t i = 5; i < v_bad.numel(); i += 89) v_bad.data()[i] = std::numeric_limits<float>::quiet_NaN();
    seqmix::AttentionInputs<float> bad = in;
    bad.k = k_bad.cview(), bad.v = v_bad.cview();
    seqmix::attention_flash(bad, {o.view()}, options, *executors[round % 3]);
    seqmix::attention_flash(in, {o.view()}, options, *executors[(round + 1) % 3]);
    st::require_close("attention_flash after non-finite keys / values", o.cview(), want.cview(), 1e-4);
    seed += 10;
  }
}
