// Fused rope in block_sparse_attention (issue 15 item 2): the fast form and the reference with
// AttentionInputs::rope equal seqmix::rope on q and the keys, then the same block-sparse call
// without it; shared and per-head layouts, GQA, partial rotary in both layouts, a chunk over a
// partly rotated cache, B > 1, Tq = 1, fp32 and fp16 K/V. Positions outside the table are refused
// before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RopeLayout;
using seqmix::RopeTable;
using seqmix::Tensor;
namespace st = seqmix::testing;

RopeTable bsrope_table(RopeLayout layout, index_t R, index_t positions) {
  seqmix::RopeConfig c;
  c.layout = layout, c.rotary_dim = R, c.scheme = seqmix::RopeScheme::llama3;
  c.base = 500000.0, c.factor = 8.0, c.original_max_position_embeddings = 64;
  return RopeTable(c, positions);
}

// A layout owned by the test, each key block picked with probability `density`.
struct BsropeLayout {
  Tensor<std::int32_t, 3> offsets;
  std::vector<std::int32_t> indices;
  index_t block_q = 0, block_k = 0;
  seqmix::BlockSparseLayout view() const {
    seqmix::BlockSparseLayout l;
    l.block_q = block_q, l.block_k = block_k, l.offsets = offsets.view();
    l.indices = seqmix::ConstView<std::int32_t, 1>(indices.data(), {static_cast<index_t>(indices.size())});
    return l;
  }
};

BsropeLayout bsrope_layout(index_t Hl, index_t Tq, index_t Tk, index_t bq, index_t bk, std::uint64_t seed) {
  const index_t Nq = (Tq + bq - 1) / bq, Nk = (Tk + bk - 1) / bk;
  BsropeLayout l;
  l.offsets = Tensor<std::int32_t, 3>({1, Hl, Nq + 1});
  l.block_q = bq, l.block_k = bk;
  std::mt19937_64 engine(seed);
  std::bernoulli_distribution pick(0.5);
  for (index_t h = 0; h < Hl; ++h)
    for (index_t qb = 0; qb < Nq; ++qb) {
      l.offsets(0, h, qb) = static_cast<std::int32_t>(l.indices.size());
      for (index_t kb = 0; kb < Nk; ++kb)
        if (pick(engine)) l.indices.push_back(static_cast<std::int32_t>(kb));
      l.offsets(0, h, qb + 1) = static_cast<std::int32_t>(l.indices.size());
    }
  return l;
}

struct BsropeCase {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, D, R, bq, bk;
  RopeLayout layout;
  bool causal, per_head;
  index_t rotated_keys;  // AttentionInputs::rope_rotated_keys
  std::string describe() const {
    std::ostringstream s;
    s << name << ": B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D
      << " R=" << R << " bq=" << bq << " bk=" << bk
      << " layout=" << (layout == RopeLayout::interleaved ? "interleaved" : "half_split") << " causal=" << causal
      << " per_head=" << per_head << " rotated_keys=" << rotated_keys;
    return s.str();
  }
};

const RopeLayout kBsHalf = RopeLayout::half_split, kBsInter = RopeLayout::interleaved;
const std::vector<BsropeCase> kBsropeCases = {
    // name              B  Tq   Tk  Hq Hkv  D    R  bq  bk  layout   causal per_head rotated
    {"shared-gqa", 1, 130, 130, 8, 2, 64, 64, 32, 32, kBsHalf, true, false, 0},
    {"per-head-partial", 2, 77, 77, 4, 2, 80, 32, 16, 24, kBsInter, true, true, 0},
    {"chunk-on-cache", 1, 37, 200, 4, 1, 64, 64, 16, 64, kBsHalf, true, false, 150},
    {"noncausal-big-blocks", 1, 50, 90, 4, 4, 64, 48, 8, 128, kBsInter, false, true, 0},
    {"decode", 2, 1, 300, 8, 2, 64, 64, 1, 32, kBsHalf, true, true, 300},
};

// Rotates q at its default positions Tk - Tq + i and the keys j >= rotated at j, into fp32.
template <class KV>
void bsrope_unfused(const RopeTable& table, const seqmix::AttentionInputs<KV>& in, Tensor<float, 4>& q,
                    Tensor<float, 4>& k) {
  const index_t B = in.q.size(0), Tq = in.q.size(1), Tk = in.k.size(1);
  std::vector<std::int64_t> qpos, kpos;
  for (index_t b = 0; b < B; ++b) {
    for (index_t i = 0; i < Tq; ++i) qpos.push_back(Tk - Tq + i);
    for (index_t j = 0; j < Tk; ++j) kpos.push_back(j);
  }
  seqmix::rope(table, {in.q, qpos}, {q.view()});
  Tensor<float, 4> kf(k.shape());
  seqmix::copy(in.k, kf.view());
  seqmix::rope(table, {kf.view(), kpos}, {k.view()});
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < std::min(Tk, in.rope_rotated_keys); ++j)
      for (index_t h = 0; h < k.size(2); ++h)
        for (index_t c = 0; c < k.size(3); ++c) k(b, j, h, c) = kf(b, j, h, c);
}

template <class KV>
void bsrope_check(const BsropeCase& c, std::uint64_t seed, const char* kv_name) {
  INFO(c.describe() << " kv=" << kv_name << " simd=" << seqmix::simd::arch_name());
  const RopeTable table = bsrope_table(c.layout, c.R, 400);
  const auto q = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed);
  Tensor<KV, 4> k({c.B, c.Tk, c.Hkv, c.D}), v({c.B, c.Tk, c.Hkv, c.D});
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 1, -2.f, 2.f).cview(), k.view());
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2).cview(), v.view());
  const BsropeLayout layout = bsrope_layout(c.per_head ? c.Hq : 1, c.Tq, c.Tk, c.bq, c.bk, seed + 3);
  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view(), in.rope_rotated_keys = c.rotated_keys;
  seqmix::AttentionOptions options;
  options.causal = c.causal;

  // Unfused: rope, then block-sparse attention over fp32 K / V holding the same values.
  Tensor<float, 4> qr({c.B, c.Tq, c.Hq, c.D}), kr({c.B, c.Tk, c.Hkv, c.D}), vf({c.B, c.Tk, c.Hkv, c.D});
  bsrope_unfused(table, in, qr, kr);
  seqmix::copy(in.v, vf.view());
  seqmix::AttentionInputs<float> plain;
  plain.q = qr.view(), plain.k = kr.view(), plain.v = vf.view();
  Tensor<float, 4> o_plain({c.B, c.Tq, c.Hq, c.D}), o_ref_plain({c.B, c.Tq, c.Hq, c.D});
  Tensor<float, 3> lse_plain({c.B, c.Tq, c.Hq}), lse_ref_plain({c.B, c.Tq, c.Hq});
  seqmix::ThreadPool pool(2);
  seqmix::block_sparse_attention(plain, layout.view(), {o_plain.view(), lse_plain.view()}, options, pool);
  seqmix::reference::block_sparse_attention(plain, layout.view(), {o_ref_plain.view(), lse_ref_plain.view()}, options);

  in.rope = &table;
  Tensor<float, 4> o({c.B, c.Tq, c.Hq, c.D});
  Tensor<float, 3> lse({c.B, c.Tq, c.Hq});
  seqmix::block_sparse_attention(in, layout.view(), {o.view(), lse.view()}, options, pool);
  st::require_close("block_sparse_attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
  st::require_close("block_sparse_attention (fused rope) lse", lse.cview(), lse_plain.cview(), 1e-6);
  seqmix::reference::block_sparse_attention(in, layout.view(), {o.view(), lse.view()}, options);
  st::require_close("reference::block_sparse_attention (fused rope)", o.cview(), o_ref_plain.cview(), 1e-6);
  st::require_close("reference::block_sparse_attention (fused rope) lse", lse.cview(), lse_ref_plain.cview(), 1e-6);
}

}  // namespace

TEST_CASE("block_sparse_attention with a fused rope equals rope then block_sparse_attention", "[block_sparse][rope]") {
  for (const BsropeCase& c : kBsropeCases) {
    const std::uint64_t seed = 2500 + static_cast<std::uint64_t>(&c - kBsropeCases.data()) * 10;
    bsrope_check<float>(c, seed, "f32");
    bsrope_check<seqmix::f16>(c, seed, "f16");
  }
}

TEST_CASE("block_sparse_attention with a fused rope refuses positions outside the table before writing",
          "[block_sparse][rope]") {
  const RopeTable table = bsrope_table(kBsHalf, 32, 100);
  const auto q = st::random_tensor<4>({1, 4, 2, 32}, 1), k = st::random_tensor<4>({1, 120, 1, 32}, 2);
  const auto v = st::random_tensor<4>({1, 120, 1, 32}, 3);
  const BsropeLayout layout = bsrope_layout(1, 4, 120, 4, 16, 4);
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view(), in.rope = &table;
  Tensor<float, 4> o({1, 4, 2, 32});
  o.fill(42.f);
  // Queries at 116..119 and keys up to 119, beyond the table's 100 positions.
  st::require_shape_error("rope", [&] { seqmix::block_sparse_attention(in, layout.view(), {o.view()}, {}); });
  st::require_shape_error("rope", [&] { seqmix::reference::block_sparse_attention(in, layout.view(), {o.view()}, {}); });
  for (float x : o) CHECK(x == 42.f);
}
