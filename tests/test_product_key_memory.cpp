// product_key_memory: the fast form (sub-key search) against the reference (exhaustive search over
// all N = n_sub^2 keys) over ragged shapes, fp32/fp16/bf16 values, gates, 1 and 2 threads, token
// splits; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/memory.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct PkmCase {
  index_t T, H, Dk, n_sub, Dv, k;
};

template <class Value>
Tensor<Value, 2> to_values(const Tensor<float, 2>& v) {
  Tensor<Value, 2> out(v.shape());
  for (index_t i = 0; i < v.numel(); ++i) out.data()[i] = Value(v.data()[i]);
  return out;
}

template <class Value>
void check_case(const PkmCase& c, bool gated, std::uint64_t seed) {
  CAPTURE(c.T, c.H, c.Dk, c.n_sub, c.Dv, c.k, gated, seed);
  const auto q = st::random_tensor<3>({c.T, c.H, c.Dk}, seed, -1.f, 1.f);
  const auto ka = st::random_tensor<3>({c.H, c.n_sub, c.Dk / 2}, seed + 1, -1.f, 1.f);
  const auto kb = st::random_tensor<3>({c.H, c.n_sub, c.Dk / 2}, seed + 2, -1.f, 1.f);
  const auto v32 = st::random_tensor<2>({c.n_sub * c.n_sub, c.Dv}, seed + 3, -1.f, 1.f);
  const auto gate = st::random_tensor<2>({c.T, c.Dv}, seed + 4, -2.f, 2.f);
  const auto values = to_values<Value>(v32);
  seqmix::ProductKeyMemoryInputs<Value> in{q.cview(), ka.cview(), kb.cview(), values.cview(),
                                           gated ? gate.cview() : seqmix::ConstView<float, 2>{}};
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = c.k;
  Tensor<float, 2> y_ref({c.T, c.Dv}), y({c.T, c.Dv}), y2({c.T, c.Dv});
  Tensor<std::int64_t, 3> rows_ref({c.T, c.H, c.k}), rows({c.T, c.H, c.k});
  Tensor<float, 3> w_ref({c.T, c.H, c.k}), w({c.T, c.H, c.k});
  seqmix::reference::product_key_memory(in, {y_ref.view(), rows_ref.view(), w_ref.view()}, options);
  seqmix::product_key_memory(in, {y.view(), rows.view(), w.view()}, options);
  seqmix::product_key_memory(in, {y2.view()}, options, st::two_thread_pool());
  // Random scores have no near-ties, so the selected rows are exactly the exhaustive search's.
  for (index_t i = 0; i < rows.numel(); ++i) REQUIRE(rows.data()[i] == rows_ref.data()[i]);
  for (index_t i = 0; i < w.numel(); ++i) CHECK(w.data()[i] == Approx(w_ref.data()[i]).margin(2e-6));
  for (index_t i = 0; i < y.numel(); ++i) {
    CHECK(y.data()[i] == Approx(y_ref.data()[i]).margin(2e-5));
    CHECK(y2.data()[i] == y.data()[i]);  // fixed token tiles: the thread count changes nothing
  }
  // A token range alone gives the same rows of y (tokens are independent), up to the sub-key
  // GEMM's rounding, which depends on a token's place in its tile (here shifted by 2).
  if (c.T > 3) {
    const index_t t0 = 2, len = c.T - 3;
    auto in_part = in;
    in_part.query = q.cview().slice(0, t0, len);
    if (gated) in_part.gate = gate.cview().slice(0, t0, len);
    Tensor<float, 2> part({len, c.Dv});
    seqmix::product_key_memory(in_part, {part.view()}, options, st::two_thread_pool());
    for (index_t t = 0; t < len; ++t)
      for (index_t j = 0; j < c.Dv; ++j) CHECK(part(t, j) == Approx(y(t0 + t, j)).margin(1e-6));
  }
}

}  // namespace

TEST_CASE("product_key_memory equals the exhaustive search over all keys", "[pkm]") {
  const PkmCase cases[] = {
      {1, 1, 2, 1, 1, 1},     {1, 1, 8, 4, 5, 4},   {5, 2, 16, 8, 17, 3},  {17, 4, 32, 16, 33, 8},
      {33, 3, 12, 23, 7, 23}, {40, 2, 64, 32, 64, 32}, {19, 1, 10, 11, 16, 1},
      {130, 2, 16, 8, 9, 4},  // three token tiles of 64, the last one short: split over 2 threads
  };
  std::uint64_t seed = 100;
  for (const auto& c : cases)
    for (const bool gated : {false, true}) {
      check_case<float>(c, gated, seed);
      check_case<seqmix::f16>(c, gated, seed + 10);
      check_case<seqmix::bf16>(c, gated, seed + 20);
      seed += 31;
    }
}

TEST_CASE("product_key_memory with one sub-key row selected reads that value row", "[pkm]") {
  // top_k = 1: softmax weight 1, y = the best row (times silu(gate)); a planted key wins.
  const index_t n = 8, Dk = 4, Dv = 6;
  Tensor<float, 3> q({1, 1, Dk}), ka({1, n, Dk / 2}), kb({1, n, Dk / 2});
  q.fill(1.f);
  ka.fill(0.f);
  kb.fill(0.f);
  ka(0, 5, 0) = 1.f;
  kb(0, 2, 1) = 1.f;
  const auto v = st::random_tensor<2>({n * n, Dv}, 7);
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = 1;
  Tensor<float, 2> y({1, Dv});
  Tensor<std::int64_t, 3> rows({1, 1, 1});
  seqmix::product_key_memory<float>({q.cview(), ka.cview(), kb.cview(), v.cview()}, {y.view(), rows.view()}, options);
  CHECK(rows(0, 0, 0) == 5 * n + 2);
  for (index_t c = 0; c < Dv; ++c) CHECK(y(0, c) == v(5 * n + 2, c));
}

TEST_CASE("product_key_memory refuses bad arguments before writing", "[pkm]") {
  const index_t T = 3, H = 2, Dk = 8, n = 4, Dv = 5;
  const auto q = st::random_tensor<3>({T, H, Dk}, 1);
  const auto ka = st::random_tensor<3>({H, n, Dk / 2}, 2);
  const auto kb = st::random_tensor<3>({H, n, Dk / 2}, 3);
  const auto v = st::random_tensor<2>({n * n, Dv}, 4);
  const auto v_short = st::random_tensor<2>({n * n - 1, Dv}, 4);
  const auto q_odd = st::random_tensor<3>({T, H, Dk - 1}, 1);
  const auto gate_bad = st::random_tensor<2>({T + 1, Dv}, 5);
  Tensor<float, 2> y({T, Dv});
  y.fill(7.f);
  seqmix::ProductKeyMemoryInputs<float> in{q.cview(), ka.cview(), kb.cview(), v.cview()};
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = n + 1;  // more than the sub-key count
  st::require_shape_error("top_k", [&] { seqmix::product_key_memory(in, {y.view()}, options); });
  st::require_shape_error("top_k", [&] { seqmix::reference::product_key_memory(in, {y.view()}, options); });
  options.top_k = 0;
  st::require_shape_error("top_k", [&] { seqmix::product_key_memory(in, {y.view()}, options); });
  options = {};
  options.top_k = 2;
  options.scale = NAN;
  st::require_shape_error("scale", [&] { seqmix::product_key_memory(in, {y.view()}, options); });
  options.scale = 0.f;
  auto bad = in;
  bad.values = v_short.cview();
  st::require_shape_error("values", [&] { seqmix::product_key_memory(bad, {y.view()}, options); });
  bad = in;
  bad.query = q_odd.cview();
  st::require_shape_error("query", [&] { seqmix::product_key_memory(bad, {y.view()}, options); });
  bad = in;
  bad.keys_b = ka.cview().slice(1, 0, n - 1);
  st::require_shape_error("keys_b", [&] { seqmix::product_key_memory(bad, {y.view()}, options); });
  bad = in;
  bad.gate = gate_bad.cview();
  st::require_shape_error("gate", [&] { seqmix::product_key_memory(bad, {y.view()}, options); });
  Tensor<float, 2> y_small({T, Dv - 1});
  st::require_shape_error("y", [&] { seqmix::product_key_memory(in, {y_small.view()}, options); });
  Tensor<std::int64_t, 3> rows_bad({T, H, 3});
  st::require_shape_error("rows", [&] { seqmix::product_key_memory(in, {y.view(), rows_bad.view()}, options); });
  for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y.data()[i] == 7.f);
}

TEST_CASE("product_key_memory reads int8 value tables with per-row scales", "[pkm]") {
  const PkmCase c{37, 2, 16, 8, 20, 4};
  const auto q = st::random_tensor<3>({c.T, c.H, c.Dk}, 7, -1.f, 1.f);
  const auto ka = st::random_tensor<3>({c.H, c.n_sub, c.Dk / 2}, 8, -1.f, 1.f);
  const auto kb = st::random_tensor<3>({c.H, c.n_sub, c.Dk / 2}, 9, -1.f, 1.f);
  auto v32 = st::random_tensor<2>({c.n_sub * c.n_sub, c.Dv}, 10, -1.f, 1.f);
  const index_t N = c.n_sub * c.n_sub;
  Tensor<std::int8_t, 2> codes({N, c.Dv});
  Tensor<float, 1> scales({N});
  seqmix::quantize_pkm_values(v32.cview(), codes.view(), scales.view());
  for (index_t r = 0; r < N; ++r)
    for (index_t j = 0; j < c.Dv; ++j)
      REQUIRE(std::fabs(scales(r) * codes(r, j) - v32(r, j)) <= scales(r) / 2 * (1 + 1e-5f));
  seqmix::ProductKeyMemoryInputs<std::int8_t> in{q.cview(), ka.cview(), kb.cview(), codes.cview()};
  in.value_scales = scales.cview();
  seqmix::ProductKeyMemoryOptions options;
  options.top_k = c.k;
  Tensor<float, 2> y({c.T, c.Dv}), y2({c.T, c.Dv}), y_ref({c.T, c.Dv}), y32({c.T, c.Dv});
  Tensor<float, 3> w({c.T, c.H, c.k});
  seqmix::reference::product_key_memory(in, {y_ref.view()}, options);
  seqmix::product_key_memory(in, {y.view(), {}, w.view()}, options);
  seqmix::product_key_memory(in, {y2.view()}, options, st::two_thread_pool());
  seqmix::product_key_memory(seqmix::ProductKeyMemoryInputs<float>{q.cview(), ka.cview(), kb.cview(), v32.cview()},
                             {y32.view()}, options);
  float max_scale = 0.f;
  for (index_t r = 0; r < N; ++r) max_scale = std::max(max_scale, scales(r));
  for (index_t i = 0; i < y.numel(); ++i) {
    CHECK(y.data()[i] == Approx(y_ref.data()[i]).margin(2e-5));
    CHECK(y2.data()[i] == y.data()[i]);
    // Each head's weights sum to 1, so the read moves by at most the largest half-step per head.
    CHECK(std::fabs(y.data()[i] - y32.data()[i]) <= c.H * max_scale / 2 + 1e-5f);
  }
  // A non-finite source row gets a NaN scale: whoever reads it gets NaN, as from the fp32 table.
  v32(5, 3) = INFINITY;
  seqmix::quantize_pkm_values(v32.cview(), codes.view(), scales.view());
  REQUIRE(std::isnan(scales(5)));
  Tensor<std::int64_t, 3> rows({c.T, c.H, c.k});
  seqmix::product_key_memory(in, {y.view(), rows.view()}, options);
  for (index_t t = 0; t < c.T; ++t) {
    bool reads = false;
    for (index_t h = 0; h < c.H; ++h)
      for (index_t r = 0; r < c.k; ++r) reads = reads || rows(t, h, r) == 5;
    for (index_t j = 0; j < c.Dv; ++j) REQUIRE(std::isnan(y(t, j)) == reads);
  }
  // Scales are required with int8 and refused with the other tables.
  in.value_scales = {};
  st::require_shape_error("value_scales", [&] { seqmix::product_key_memory(in, {y.view()}, options); });
  seqmix::ProductKeyMemoryInputs<float> with_scales{q.cview(), ka.cview(), kb.cview(), v32.cview()};
  with_scales.value_scales = scales.cview();
  st::require_shape_error("value_scales", [&] { seqmix::product_key_memory(with_scales, {y.view()}, options); });
}
