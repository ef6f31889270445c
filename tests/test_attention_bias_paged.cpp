// Relative biases and head scales in paged attention (decode, verify and prefill chunks, fast
// and reference) and in block-sparse attention (shared and per-head layouts, fast and
// reference), issue 15 item 3: each equals the attention of that head alone with the same bias
// written as a dense mask and the head's scale as the option.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/patterns.hpp"
#include "seqmix/attention/block_sparse/reference.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RelativeBiasKind;
using seqmix::Tensor;
namespace st = seqmix::testing;

// The per-head parameters of every bias kind, random, for Hq heads.
struct BiasParams {
  Tensor<float, 2> table;
  Tensor<float, 1> r1, r2, scales;
  BiasParams(index_t Hq, std::uint64_t seed)
      : table(st::random_tensor<2>({Hq, 32}, seed, -3.f, 3.f)),
        r1(st::random_tensor<1>({Hq}, seed + 1, 0.05f, 2.f)),
        r2(st::random_tensor<1>({Hq}, seed + 2, 0.1f, 2.f)),
        scales(st::random_tensor<1>({Hq}, seed + 3, 0.5f, 2.f)) {}
  seqmix::RelativeBias bias(RelativeBiasKind kind, bool bidirectional) const {
    seqmix::RelativeBias rb;
    rb.kind = kind, rb.bidirectional = bidirectional, rb.max_distance = 60;
    rb.table = table.view(), rb.r1 = r1.view(), rb.r2 = r2.view();
    return rb;
  }
};

// Head h of a one-sequence problem as plain attention with the bias as a dense [1,Tq,Tk] mask:
// the oracle every fused form is held to.
Tensor<float, 4> bias_paged_oracle(const seqmix::ConstView<float, 4>& q, const seqmix::ConstView<float, 4>& k,
                                   const seqmix::ConstView<float, 4>& v, index_t h, index_t G,
                                   const seqmix::RelativeBias& rb, float scale, bool causal) {
  const index_t Tq = q.size(1), Tk = k.size(1);
  Tensor<float, 3> mask({1, Tq, Tk});
  for (index_t i = 0; i < Tq; ++i)
    for (index_t j = 0; j < Tk; ++j)
      mask(0, i, j) = static_cast<float>(seqmix::detail::relative_bias_value(rb, h, Tk - Tq + i, j));
  seqmix::AttentionInputs<float> one;
  one.q = q.slice(2, h, 1), one.k = k.slice(2, h / G, 1), one.v = v.slice(2, h / G, 1), one.mask = mask.view();
  seqmix::AttentionOptions options;
  options.scale = scale, options.causal = causal;
  Tensor<float, 4> o({1, Tq, 1, v.size(3)});
  seqmix::reference::attention(one, {o.view()}, options);
  return o;
}

struct PagedBiasCase {
  const char* name;
  RelativeBiasKind kind;
  bool bidirectional, head_scales;
  index_t Hq, Hkv, D, block_size;
  std::vector<index_t> lengths, queries;  // per sequence: cached tokens, queries (last ones)
  std::string describe() const {
    std::ostringstream s;
    s << name << ": kind=" << static_cast<int>(kind) << " bidirectional=" << bidirectional
      << " head_scales=" << head_scales << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D << " bs=" << block_size
      << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

const std::vector<PagedBiasCase> kPagedBiasCases = {
    {"t5-decode", RelativeBiasKind::t5, false, true, 8, 2, 64, 16, {300, 1, 77}, {1, 1, 1}},
    {"t5-bidirectional-verify", RelativeBiasKind::t5, true, false, 4, 1, 64, 16, {200, 40}, {3, 5}},
    {"kerple-log-mixed", RelativeBiasKind::kerple_log, false, true, 4, 2, 80, 7, {150, 90}, {1, 40}},
    {"kerple-power-prefill", RelativeBiasKind::kerple_power, false, false, 8, 2, 64, 64, {130}, {70}},
    {"head-scales-only", RelativeBiasKind::none, false, true, 4, 4, 64, 1, {65, 20}, {2, 20}},
};

void check_paged_bias_case(const PagedBiasCase& c, std::uint64_t seed) {
  INFO(c.describe());
  using KV = seqmix::f16;
  const index_t N = static_cast<index_t>(c.lengths.size()), Tq = *std::max_element(c.queries.begin(), c.queries.end());
  const index_t G = c.Hq / c.Hkv, bs = c.block_size;
  const BiasParams params(c.Hq, seed);
  // Dense per-sequence K/V (fp16 values, kept as fp32 for the oracle) scattered over shuffled pages.
  index_t max_blocks = 0, num_blocks = 0;
  for (const index_t L : c.lengths) max_blocks = std::max(max_blocks, (L + bs - 1) / bs), num_blocks += (L + bs - 1) / bs;
  std::vector<index_t> order(static_cast<std::size_t>(num_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  Tensor<KV, 4> k_pages({num_blocks, bs, c.Hkv, c.D}), v_pages({num_blocks, bs, c.Hkv, c.D});
  Tensor<std::int32_t, 2> table({N, max_blocks});
  std::vector<std::int64_t> lengths(c.lengths.begin(), c.lengths.end());
  std::vector<Tensor<float, 4>> ks, vs;
  Tensor<float, 4> q = st::random_tensor<4>({N, Tq, c.Hq, c.D}, seed + 10);
  index_t next = 0;
  for (index_t n = 0; n < N; ++n) {
    const index_t L = c.lengths[static_cast<std::size_t>(n)];
    Tensor<float, 4> k({1, L, c.Hkv, c.D}), v({1, L, c.Hkv, c.D});
    seqmix::copy(st::random_tensor<4>({1, L, c.Hkv, c.D}, seed + 20 + n, -2.f, 2.f).cview(), k.view());
    seqmix::copy(st::random_tensor<4>({1, L, c.Hkv, c.D}, seed + 40 + n).cview(), v.view());
    for (index_t blk = 0; blk < max_blocks; ++blk) table(n, blk) = blk * bs < L ? static_cast<std::int32_t>(order[next++]) : -1;
    for (index_t j = 0; j < L; ++j)
      for (index_t h = 0; h < c.Hkv; ++h)
        for (index_t d = 0; d < c.D; ++d) {
          const KV kj(k(0, j, h, d)), vj(v(0, j, h, d));
          k(0, j, h, d) = static_cast<float>(kj), v(0, j, h, d) = static_cast<float>(vj);
          k_pages(table(n, j / bs), j % bs, h, d) = kj, v_pages(table(n, j / bs), j % bs, h, d) = vj;
        }
    ks.push_back(std::move(k)), vs.push_back(std::move(v));
  }
  // Packed queries when the counts differ (sequence n: its last queries[n] tokens), else dense.
  const bool packed = std::any_of(c.queries.begin(), c.queries.end(), [&](index_t t) { return t != Tq; });
  std::vector<std::int64_t> cu{0};
  for (const index_t t : c.queries) cu.push_back(cu.back() + t);
  Tensor<float, 4> q_packed = st::random_tensor<4>({1, cu.back(), c.Hq, c.D}, seed + 11);
  seqmix::PagedAttentionInputs<KV> in;
  in.q = packed ? q_packed.view() : q.view();
  in.k_pages = k_pages.view(), in.v_pages = v_pages.view(), in.block_table = table.view(), in.cache_seqlens = lengths;
  if (packed) in.cu_seqlens_q = cu;
  in.relative_bias = params.bias(c.kind, c.bidirectional);
  if (c.head_scales) in.head_scales = params.scales.view();
  seqmix::PagedAttentionOptions options;
  options.causal = !c.bidirectional;
  const index_t rows = packed ? cu.back() : Tq;
  Tensor<float, 4> o_fast({packed ? 1 : N, rows, c.Hq, c.D}), o_ref({packed ? 1 : N, rows, c.Hq, c.D});
  o_fast.fill(NAN), o_ref.fill(NAN);
  seqmix::ThreadPool pool(2);
  seqmix::paged_attention(in, {o_fast.view()}, options, pool);
  seqmix::reference::paged_attention(in, {o_ref.view()}, options);
  const float base = 1.f / std::sqrt(static_cast<float>(c.D));
  for (index_t n = 0; n < N; ++n) {
    const index_t count = c.queries[static_cast<std::size_t>(n)];
    const index_t b = packed ? 0 : n, i0 = packed ? static_cast<index_t>(cu[static_cast<std::size_t>(n)]) : 0;
    const seqmix::ConstView<float, 4> qn = in.q.slice(0, b, 1).slice(1, i0, count);
    for (index_t h = 0; h < c.Hq; ++h) {
      INFO("sequence " << n << " head " << h);
      const float scale = base * (c.head_scales ? params.scales(h) : 1.f);
      const auto want = bias_paged_oracle(qn, ks[static_cast<std::size_t>(n)].cview(), vs[static_cast<std::size_t>(n)].cview(),
                                          h, G, in.relative_bias, scale, options.causal);
      const auto got = o_fast.cview().slice(0, b, 1).slice(1, i0, count).slice(2, h, 1);
      const auto got_ref = o_ref.cview().slice(0, b, 1).slice(1, i0, count).slice(2, h, 1);
      st::require_close("paged_attention (relative bias)", got, want.cview(), 1e-6);
      st::require_close("reference::paged_attention (relative bias)", got_ref, want.cview(), 1e-6);
    }
  }
}

}  // namespace

TEST_CASE("paged attention: relative biases and head scales equal the bias as a dense mask", "[paged][bias]") {
  for (const PagedBiasCase& c : kPagedBiasCases)
    check_paged_bias_case(c, 8100 + static_cast<std::uint64_t>(&c - kPagedBiasCases.data()) * 100);
}

TEST_CASE("paged attention: bad relative biases are refused before writing", "[paged][bias]") {
  const auto q = st::random_tensor<4>({1, 1, 4, 32}, 1);
  const auto pages = st::random_tensor<4>({2, 16, 2, 32}, 2);
  Tensor<std::int32_t, 2> table({1, 2});
  table(0, 0) = 0, table(0, 1) = 1;
  std::vector<std::int64_t> lengths{20};
  Tensor<float, 1> r1({4}), r2({4}), bad_scales({3});
  r1.fill(1.f), r2.fill(3.f);  // power needs r2 <= 2
  seqmix::PagedAttentionInputs<float> in;
  in.q = q.view(), in.k_pages = pages.view(), in.v_pages = pages.view(), in.block_table = table.view();
  in.cache_seqlens = lengths;
  in.relative_bias.kind = RelativeBiasKind::kerple_power;
  in.relative_bias.r1 = r1.view(), in.relative_bias.r2 = r2.view();
  Tensor<float, 4> o({1, 1, 4, 32});
  o.fill(7.f);
  for (int form = 0; form < 2; ++form) {
    st::require_shape_error("relative_bias.r2", [&] {
      if (form == 0) seqmix::paged_attention(in, {o.view()});
      if (form == 1) seqmix::reference::paged_attention(in, {o.view()});
    });
  }
  in.relative_bias = {};
  in.head_scales = bad_scales.view();
  st::require_shape_error("head_scales", [&] { seqmix::paged_attention(in, {o.view()}); });
  for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
}

TEST_CASE("block-sparse attention: relative biases and head scales equal the bias as a dense mask",
          "[block_sparse][bias]") {
  struct SparseCase {
    const char* name;
    RelativeBiasKind kind;
    bool per_head_layout, head_scales, causal;
    index_t B, Tq, Tk, Hq, Hkv, D, block;
  };
  const std::vector<SparseCase> cases = {
      {"t5-shared", RelativeBiasKind::t5, false, true, true, 2, 150, 150, 4, 2, 64, 32},
      {"kerple-log-per-head", RelativeBiasKind::kerple_log, true, false, true, 1, 100, 130, 4, 2, 64, 16},
      {"kerple-power-noncausal", RelativeBiasKind::kerple_power, false, true, false, 1, 70, 70, 2, 1, 80, 64},
  };
  seqmix::ThreadPool pool(2);
  for (const SparseCase& c : cases) {
    const std::uint64_t seed = 8700 + static_cast<std::uint64_t>(&c - cases.data()) * 10;
    INFO(c.name << " simd=" << seqmix::simd::arch_name());
    const BiasParams params(c.Hq, seed);
    const auto q = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed + 4);
    const auto k = st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 5, -2.f, 2.f);
    const auto v = st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 6);
    // The layout: a local + global pattern shared by every head, or per head every other key
    // block (offset by the head) plus the diagonal one.
    seqmix::BlockGrid grid;
    grid.Tq = c.Tq, grid.Tk = c.Tk, grid.block_q = c.block, grid.block_k = c.block;
    const seqmix::BlockPattern pattern = seqmix::local_global_pattern(grid, {});
    const index_t Nq = grid.query_blocks(), Nk = grid.key_blocks();
    std::vector<std::int32_t> offsets{0}, indices;
    for (index_t h = 0; h < c.Hq; ++h) {
      for (index_t qb = 0; qb < Nq; ++qb) {
        const index_t diagonal = std::min(Nk - 1, (c.Tk - c.Tq + qb * c.block) / c.block);
        for (index_t kb = 0; kb < Nk; ++kb)
          if ((kb + h) % 2 == 0 || kb == diagonal) indices.push_back(static_cast<std::int32_t>(kb));
        offsets.push_back(static_cast<std::int32_t>(indices.size()));
      }
      if (h + 1 < c.Hq) offsets.push_back(offsets.back());  // each head's row starts where the last ended
    }
    seqmix::BlockSparseLayout layout = pattern.layout();
    if (c.per_head_layout) {
      layout.offsets = seqmix::ConstView<std::int32_t, 3>(offsets.data(), {1, c.Hq, Nq + 1});
      layout.indices = seqmix::ConstView<std::int32_t, 1>(indices.data(), {static_cast<index_t>(indices.size())});
    }
    seqmix::AttentionInputs<float> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    in.relative_bias = params.bias(c.kind, false);
    if (c.head_scales) in.head_scales = params.scales.view();
    seqmix::AttentionOptions options;
    options.causal = c.causal;
    Tensor<float, 4> o_fast({c.B, c.Tq, c.Hq, c.D}), o_ref({c.B, c.Tq, c.Hq, c.D});
    seqmix::block_sparse_attention(in, layout, {o_fast.view()}, options, pool);
    seqmix::reference::block_sparse_attention(in, layout, {o_ref.view()}, options);
    Tensor<float, 3> mask({c.B, c.Tq, c.Tk});
    for (index_t h = 0; h < c.Hq; ++h) {
      INFO("head " << h);
      for (index_t b = 0; b < c.B; ++b)
        for (index_t i = 0; i < c.Tq; ++i)
          for (index_t j = 0; j < c.Tk; ++j)
            mask(b, i, j) = static_cast<float>(seqmix::detail::relative_bias_value(in.relative_bias, h, c.Tk - c.Tq + i, j));
      seqmix::AttentionInputs<float> one;
      one.q = in.q.slice(2, h, 1), one.k = in.k.slice(2, h / (c.Hq / c.Hkv), 1);
      one.v = in.v.slice(2, h / (c.Hq / c.Hkv), 1), one.mask = mask.view();
      seqmix::BlockSparseLayout one_layout = layout;
      if (c.per_head_layout) one_layout.offsets = layout.offsets.slice(1, h, 1);
      seqmix::AttentionOptions one_options = options;
      one_options.scale = 1.f / std::sqrt(static_cast<float>(c.D)) * (c.head_scales ? params.scales(h) : 1.f);
      Tensor<float, 4> want({c.B, c.Tq, 1, c.D});
      seqmix::reference::block_sparse_attention(one, one_layout, {want.view()}, one_options);
      st::require_close("block_sparse_attention (relative bias)", o_fast.cview().slice(2, h, 1), want.cview(), 1e-6);
      st::require_close("reference::block_sparse_attention (relative bias)", o_ref.cview().slice(2, h, 1), want.cview(),
                        1e-6);
    }
  }
}
