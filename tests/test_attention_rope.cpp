// Fused rope (issue 15 item 2): attention with AttentionInputs::rope equals seqmix::rope on q and
// k, then the same attention without it; for the prefill (attention_flash), the decode
// (attention_step), the entry point, the reference, packed batches, keys already rotated, both
// layouts, partial rotary, GQA and fp16 / bf16 K/V. Bad positions are refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RopeConfig;
using seqmix::RopeLayout;
using seqmix::RopeTable;
using seqmix::Tensor;
namespace st = seqmix::testing;

RopeTable make_table(RopeLayout layout, index_t R, index_t positions) {
  RopeConfig c;
  c.layout = layout;
  c.rotary_dim = R;
  c.scheme = seqmix::RopeScheme::llama3;
  c.base = 500000.0;
  c.factor = 8.0;
  c.original_max_position_embeddings = 64;  // so that the scaled band falls inside R/2 pairs
  return RopeTable(c, positions);
}

struct Case {
  const char* name;
  index_t B, Tq, Tk, Hq, Hkv, D, R;
  RopeLayout layout;
  bool causal, positions;
  index_t rotated_keys;  // AttentionInputs::rope_rotated_keys
  std::string describe() const {
    std::ostringstream s;
    s << name << ": B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D
      << " R=" << R << " layout=" << (layout == RopeLayout::interleaved ? "interleaved" : "half_split")
      << " causal=" << causal << " positions=" << positions << " rotated_keys=" << rotated_keys;
    return s.str();
  }
};

const RopeLayout kHalf = RopeLayout::half_split, kInter = RopeLayout::interleaved;
const std::vector<Case> kCases = {
    // name                B  Tq   Tk  Hq Hkv   D    R  layout causal pos rotated
    {"prefill-half", 2, 100, 100, 4, 2, 64, 64, kHalf, true, false, 0},
    {"prefill-inter-partial", 1, 77, 77, 8, 2, 80, 32, kInter, true, false, 0},
    {"prefill-chunk-on-cache", 1, 37, 150, 4, 1, 64, 64, kHalf, true, false, 113},
    {"prefill-noncausal-gqa4", 1, 65, 65, 8, 2, 128, 96, kHalf, false, false, 0},
    {"prefill-positions", 2, 40, 300, 4, 4, 64, 64, kInter, true, true, 260},
    {"decode-rotated-cache", 2, 1, 1000, 8, 2, 128, 128, kHalf, true, false, 1000},
    {"decode-partial-inter", 1, 1, 700, 8, 1, 64, 32, kInter, true, false, 700},
    {"decode-raw-keys", 1, 1, 300, 4, 2, 64, 64, kHalf, true, false, 0},
    {"decode-half-rotated", 1, 3, 500, 4, 2, 80, 64, kInter, true, false, 250},
    {"decode-positions", 2, 2, 600, 8, 2, 64, 64, kHalf, true, true, 600},
};

// rope applied by hand: q at its positions, keys j >= rotated at position j, K as fp32.
template <class KV>
void rotate_unfused(const RopeTable& table, const seqmix::AttentionInputs<KV>& in, Tensor<float, 4>& q,
                    Tensor<float, 4>& k) {
  const index_t B = in.q.size(0), Tq = in.q.size(1), Tk = in.k.size(1);
  std::vector<std::int64_t> qpos, kpos;
  for (index_t b = 0; b < B; ++b) {
    for (index_t i = 0; i < Tq; ++i) qpos.push_back(seqmix::detail::query_position(in, b, i));
    for (index_t j = 0; j < Tk; ++j) kpos.push_back(j);
  }
  if (in.batch.packed()) {  // positions local to each sequence
    qpos.clear(), kpos.clear();
    const seqmix::IndexList& cu = in.batch.cu_seqlens;
    for (index_t n = 0; n + 1 < cu.size(); ++n)
      for (index_t t = 0; t < cu[n + 1] - cu[n]; ++t) qpos.push_back(t), kpos.push_back(t);
  }
  seqmix::copy(in.q, q.view());
  seqmix::rope(table, {in.q, qpos}, {q.view()});
  Tensor<float, 4> kf(k.shape());
  seqmix::copy(in.k, kf.view());
  seqmix::rope(table, {kf.view(), kpos}, {k.view()});
  // Keys stored rotated already stay as they are.
  for (index_t b = 0; b < B; ++b)
    for (index_t j = 0; j < Tk; ++j)
      if (kpos[static_cast<std::size_t>(b * Tk + j)] < in.rope_rotated_keys)
        for (index_t h = 0; h < k.size(2); ++h)
          for (index_t c = 0; c < k.size(3); ++c) k(b, j, h, c) = kf(b, j, h, c);
}

template <class KV>
void check_case(const Case& c, std::uint64_t seed, const char* kv_name, bool alibi = false) {
  INFO(c.describe() << " kv=" << kv_name << " alibi=" << alibi << " simd=" << seqmix::simd::arch_name());
  const RopeTable table = make_table(c.layout, c.R, 1200);
  const auto q = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed);
  Tensor<KV, 4> k({c.B, c.Tk, c.Hkv, c.D}), v({c.B, c.Tk, c.Hkv, c.D});
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 1, -2.f, 2.f).cview(), k.view());
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2).cview(), v.view());
  Tensor<std::int64_t, 2> positions({c.B, c.Tq});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t i = 0; i < c.Tq; ++i) positions(b, i) = c.Tk - c.Tq - 17 * b + i;  // any in-table values
  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (c.positions) in.positions = positions.view();
  // ALiBi's geometric slopes 2^(-8 (h + 1) / Hq), beside the rope in the same call.
  Tensor<float, 1> slopes({c.Hq});
  for (index_t h = 0; h < c.Hq; ++h) slopes(h) = std::exp2(-8.f * static_cast<float>(h + 1) / static_cast<float>(c.Hq));
  if (alibi) in.alibi_slopes = slopes.view();
  seqmix::AttentionOptions options;
  options.causal = c.causal;

  // Unfused: rope, then attention with fp32 K / V holding the same values.
  Tensor<float, 4> qr({c.B, c.Tq, c.Hq, c.D}), kr({c.B, c.Tk, c.Hkv, c.D}), vf({c.B, c.Tk, c.Hkv, c.D});
  in.rope_rotated_keys = c.rotated_keys;
  rotate_unfused(table, in, qr, kr);
  seqmix::copy(in.v, vf.view());
  seqmix::AttentionInputs<float> plain;
  plain.q = qr.view(), plain.k = kr.view(), plain.v = vf.view(), plain.positions = in.positions;
  plain.alibi_slopes = in.alibi_slopes;
  Tensor<float, 4> o_plain({c.B, c.Tq, c.Hq, c.D}), o_ref_plain({c.B, c.Tq, c.Hq, c.D});
  Tensor<float, 3> lse_plain({c.B, c.Tq, c.Hq});
  seqmix::ThreadPool pool(2);
  seqmix::attention(plain, {o_plain.view(), lse_plain.view()}, options, pool);
  seqmix::reference::attention(plain, {o_ref_plain.view()}, options);

  in.rope = &table;
  Tensor<float, 4> o({c.B, c.Tq, c.Hq, c.D});
  Tensor<float, 3> lse({c.B, c.Tq, c.Hq});
  seqmix::attention(in, {o.view(), lse.view()}, options, pool);
  st::require_close("attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
  st::require_close("attention (fused rope) lse", lse.cview(), lse_plain.cview(), 1e-6);
  seqmix::attention_flash(in, {o.view(), lse.view()}, options, pool);
  st::require_close("attention_flash (fused rope)", o.cview(), o_plain.cview(), 1e-6);
  seqmix::attention_step(in, {o.view(), lse.view()}, options, pool);
  st::require_close("attention_step (fused rope)", o.cview(), o_plain.cview(), 1e-6);
  st::require_close("attention_step (fused rope) lse", lse.cview(), lse_plain.cview(), 1e-6);
  seqmix::reference::attention(in, {o.view()}, options);
  st::require_close("reference::attention (fused rope)", o.cview(), o_ref_plain.cview(), 1e-6);
}

}  // namespace

TEST_CASE("attention with a fused rope equals rope then attention", "[attention][rope]") {
  for (const Case& c : kCases) {
    const std::uint64_t seed = 1500 + static_cast<std::uint64_t>(&c - kCases.data()) * 10;
    check_case<float>(c, seed, "f32");
    check_case<seqmix::f16>(c, seed, "f16");
    check_case<seqmix::bf16>(c, seed, "bf16");
  }
}

TEST_CASE("attention with a fused rope and ALiBi equals rope then attention with ALiBi", "[attention][rope][alibi]") {
  // RoPE and ALiBi in one call (issue 15 item 3): the rotation in the q / k tiles, the slope
  // times the distance added to each logit, as rope() then attention with the same slopes.
  for (const Case& c : kCases) {
    const index_t index = &c - kCases.data();
    const std::uint64_t seed = 2700 + static_cast<std::uint64_t>(index) * 10;
    if (index % 2 == 0)  // K/V types alternate over the cases (the rotation is the same for each)
      check_case<float>(c, seed, "f32", true);
    else
      check_case<seqmix::f16>(c, seed, "f16", true);
  }
}

TEST_CASE("packed attention with a fused rope rotates each sequence from position 0", "[attention][rope]") {
  for (const RopeLayout layout : {kHalf, kInter}) {
    const RopeTable table = make_table(layout, 48, 400);
    const std::vector<std::int64_t> cu{0, 1, 130, 147, 400};
    const index_t total = 400, Hq = 8, Hkv = 2, D = 64;
    const auto q = st::random_tensor<4>({1, total, Hq, D}, 7);
    const auto k = st::random_tensor<4>({1, total, Hkv, D}, 8);
    const auto v = st::random_tensor<4>({1, total, Hkv, D}, 9);
    seqmix::AttentionInputs<float> in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    in.batch.cu_seqlens = cu;
    seqmix::AttentionOptions options;
    options.causal = true;
    Tensor<float, 4> qr({1, total, Hq, D}), kr({1, total, Hkv, D});
    rotate_unfused(table, in, qr, kr);
    seqmix::AttentionInputs<float> plain = in;
    plain.q = qr.view(), plain.k = kr.view();
    Tensor<float, 4> o({1, total, Hq, D}), o_plain({1, total, Hq, D});
    seqmix::ThreadPool pool(2);
    seqmix::attention(plain, {o_plain.view()}, options, pool);
    in.rope = &table;
    seqmix::attention(in, {o.view()}, options, pool);
    st::require_close("packed attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
    seqmix::attention_step(in, {o.view()}, options, pool);
    st::require_close("packed attention_step (fused rope)", o.cview(), o_plain.cview(), 1e-6);
    seqmix::reference::attention(plain, {o_plain.view()}, options);
    seqmix::reference::attention(in, {o.view()}, options);
    st::require_close("packed reference::attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
  }
}

TEST_CASE("attention with a fused rope refuses positions outside the table before writing", "[attention][rope]") {
  const RopeTable table = make_table(kHalf, 64, 100);
  const auto q = st::random_tensor<4>({1, 2, 4, 64}, 1);
  const auto k = st::random_tensor<4>({1, 200, 2, 64}, 2);
  const auto v = st::random_tensor<4>({1, 200, 2, 64}, 3);
  Tensor<std::int64_t, 2> positions({1, 2});
  positions(0, 0) = 50, positions(0, 1) = 100;  // 100 is one past the table
  Tensor<float, 4> o({1, 2, 4, 64});
  o.fill(7.f);
  const auto untouched = [&] {
    for (index_t i = 0; i < 2; ++i)
      for (index_t h = 0; h < 4; ++h)
        for (index_t c = 0; c < 64; ++c) REQUIRE(o(0, i, h, c) == 7.f);
  };
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view(), in.rope = &table;
  in.rope_rotated_keys = 200;
  // Default positions 198, 199: beyond the table.
  for (int form = 0; form < 4; ++form) {
    const auto call = [&] {
      if (form == 0) seqmix::attention(in, {o.view()});
      if (form == 1) seqmix::attention_flash(in, {o.view()});
      if (form == 2) seqmix::attention_step(in, {o.view()});
      if (form == 3) seqmix::reference::attention(in, {o.view()});
    };
    in.positions = {};
    st::require_shape_error("rope", call);
    untouched();
    in.positions = positions.view();
    st::require_shape_error("positions", call);
    untouched();
    positions(0, 1) = -1;
    st::require_shape_error("positions", call);
    untouched();
    positions(0, 1) = 60;
    in.rope_rotated_keys = 150;  // keys 150..199 would be rotated, beyond the table
    st::require_shape_error("rope", call);
    untouched();
    in.rope_rotated_keys = -1;
    st::require_shape_error("rope_rotated_keys", call);
    untouched();
    in.rope_rotated_keys = 200;
    positions(0, 1) = 100;
  }
  const RopeTable narrow = make_table(kHalf, 64, 300);
  const auto q32 = st::random_tensor<4>({1, 2, 4, 32}, 4);
  const auto k32 = st::random_tensor<4>({1, 200, 2, 32}, 5);
  in.q = q32.view(), in.k = k32.view(), in.rope = &narrow, in.positions = {};
  st::require_shape_error("rope", [&] { seqmix::attention(in, {o.view()}); });  // rotary_dim 64 > Dk 32
  untouched();
}

// ---- paged ------------------------------------------------------------------------------------

namespace {

// A pool of pages for N sequences of the given lengths, each sequence's blocks on pages in a
// shuffled order, with one unused page between sequences.
struct PagedSetup {
  index_t block_size, max_blocks, num_blocks;
  Tensor<std::int32_t, 2> block_table;
  PagedSetup(const std::vector<index_t>& lengths, index_t bs) : block_size(bs) {
    max_blocks = 0;
    for (index_t L : lengths) max_blocks = std::max(max_blocks, (L + bs - 1) / bs);
    const index_t N = static_cast<index_t>(lengths.size());
    num_blocks = N * (max_blocks + 1);
    block_table = Tensor<std::int32_t, 2>({N, max_blocks});
    for (index_t n = 0; n < N; ++n)
      for (index_t blk = 0; blk < max_blocks; ++blk)  // reversed within the sequence's range
        block_table(n, blk) = static_cast<std::int32_t>(n * (max_blocks + 1) + (max_blocks - 1 - blk));
  }
};

template <class KV>
void check_paged(index_t block_size, RopeLayout layout, index_t R, std::uint64_t seed) {
  const std::vector<index_t> lengths{1, 40, 300, 129};
  const std::vector<index_t> queries{1, 17, 3, 129};  // decode, prefill chunk, verify, whole prompt
  const index_t N = 4, Hq = 8, Hkv = 2, D = 64;
  INFO("paged: block_size=" << block_size << " R=" << R << " layout=" << static_cast<int>(layout)
                             << " kv bytes=" << sizeof(KV));
  const RopeTable table = make_table(layout, R, 512);
  std::vector<std::int64_t> cu{0}, cu_q{0}, seqlens, zeros(N, 0), key_pos, q_pos;
  for (index_t n = 0; n < N; ++n) {
    cu.push_back(cu.back() + lengths[n]), cu_q.push_back(cu_q.back() + queries[n]), seqlens.push_back(lengths[n]);
    for (index_t t = 0; t < lengths[n]; ++t) key_pos.push_back(t);
    for (index_t t = 0; t < queries[n]; ++t) q_pos.push_back(lengths[n] - queries[n] + t);
  }
  const index_t total = cu.back(), total_q = cu_q.back();
  const auto k = st::random_tensor<4>({1, total, Hkv, D}, seed, -2.f, 2.f);
  const auto v = st::random_tensor<4>({1, total, Hkv, D}, seed + 1);
  const auto q = st::random_tensor<4>({1, total_q, Hq, D}, seed + 2);
  PagedSetup setup(lengths, block_size);
  Tensor<KV, 4> k_fused({setup.num_blocks, block_size, Hkv, D}), v_fused({setup.num_blocks, block_size, Hkv, D});
  Tensor<KV, 4> k_plain({setup.num_blocks, block_size, Hkv, D}), v_plain({setup.num_blocks, block_size, Hkv, D});
  seqmix::ThreadPool pool(2);

  // Fused append vs rope then append: the same bits in the pages.
  seqmix::PagedKvAppendInputs<float> app;
  app.k = k.view(), app.v = v.view(), app.block_table = setup.block_table.view(), app.cache_seqlens = zeros;
  app.cu_seqlens = cu;
  Tensor<float, 4> kr({1, total, Hkv, D});
  seqmix::rope(table, {k.view(), key_pos}, {kr.view()});
  seqmix::PagedKvAppendInputs<float> plain_app = app;
  plain_app.k = kr.view();
  seqmix::paged_kv_append(plain_app, seqmix::PagedKvPool<KV>{k_plain.view(), v_plain.view()}, pool);
  app.rope = &table;
  seqmix::paged_kv_append(app, seqmix::PagedKvPool<KV>{k_fused.view(), v_fused.view()}, pool);
  {
    Tensor<float, 4> a(k_fused.shape()), b(k_plain.shape());
    seqmix::copy(k_fused.cview(), a.view()), seqmix::copy(k_plain.cview(), b.view());
    // Within one rounding of the page type (the two rotations may round the last fp32 bit apart).
    st::require_close("paged_kv_append (fused rope) keys", a.cview(), b.cview(), sizeof(KV) == 4 ? 1e-6 : 1e-2);
  }
  REQUIRE(std::memcmp(v_fused.data(), v_plain.data(), sizeof(KV) * static_cast<std::size_t>(v_plain.numel())) == 0);

  // The same through slot_mapping with explicit positions, into a fresh pool.
  {
    std::vector<std::int64_t> slots;
    for (index_t n = 0; n < N; ++n)
      for (index_t t = 0; t < lengths[n]; ++t)
        slots.push_back(setup.block_table(n, t / block_size) * block_size + t % block_size);
    Tensor<KV, 4> k_slots({setup.num_blocks, block_size, Hkv, D}), v_slots({setup.num_blocks, block_size, Hkv, D});
    seqmix::PagedKvAppendInputs<float> by_slot;
    by_slot.k = k.view(), by_slot.v = v.view(), by_slot.slot_mapping = slots, by_slot.rope = &table;
    st::require_shape_error("positions", [&] {  // a slot does not tell the position
      seqmix::paged_kv_append(by_slot, seqmix::PagedKvPool<KV>{k_slots.view(), v_slots.view()});
    });
    by_slot.positions = key_pos;
    seqmix::paged_kv_append(by_slot, seqmix::PagedKvPool<KV>{k_slots.view(), v_slots.view()}, pool);
    REQUIRE(std::memcmp(k_slots.data(), k_fused.data(), sizeof(KV) * static_cast<std::size_t>(k_fused.numel())) == 0);
  }

  // paged_attention with the rope (q rotated in the kernel) vs rope(q) then paged_attention.
  seqmix::PagedAttentionInputs<KV> in;
  in.q = q.view(), in.k_pages = k_fused.view(), in.v_pages = v_fused.view();
  in.block_table = setup.block_table.view(), in.cache_seqlens = seqlens, in.cu_seqlens_q = cu_q;
  Tensor<float, 4> qr({1, total_q, Hq, D});
  seqmix::rope(table, {q.view(), q_pos}, {qr.view()});
  seqmix::PagedAttentionInputs<KV> plain = in;
  plain.q = qr.view();  // the same pages: this compares the rotation of q alone
  Tensor<float, 4> o({1, total_q, Hq, D}), o_plain({1, total_q, Hq, D});
  Tensor<float, 3> lse({1, total_q, Hq}), lse_plain({1, total_q, Hq});
  seqmix::paged_attention(plain, {o_plain.view(), lse_plain.view()}, {}, pool);
  in.rope = &table;
  seqmix::paged_attention(in, {o.view(), lse.view()}, {}, pool);
  st::require_close("paged_attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
  st::require_close("paged_attention (fused rope) lse", lse.cview(), lse_plain.cview(), 1e-6);
  seqmix::reference::paged_attention(plain, {o_plain.view()});
  seqmix::reference::paged_attention(in, {o.view()});
  st::require_close("reference::paged_attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
}

}  // namespace

TEST_CASE("paged append and paged attention with a fused rope equal rope then the plain forms", "[attention][rope]") {
  std::uint64_t seed = 3000;
  for (const index_t block_size : {1, 16, 64}) {
    check_paged<float>(block_size, kHalf, 64, seed += 10);
    check_paged<seqmix::f16>(block_size, kInter, 48, seed += 10);
    check_paged<seqmix::bf16>(block_size, kHalf, 32, seed += 10);
  }
}

TEST_CASE("paged append and attention with a fused rope refuse positions outside the table", "[attention][rope]") {
  const RopeTable table = make_table(kHalf, 64, 50);
  const index_t Hkv = 2, D = 64, BS = 16;
  const auto k = st::random_tensor<4>({1, 30, Hkv, D}, 1);
  const auto v = st::random_tensor<4>({1, 30, Hkv, D}, 2);
  Tensor<float, 4> k_pages({8, BS, Hkv, D}), v_pages({8, BS, Hkv, D});
  k_pages.fill(3.f), v_pages.fill(3.f);
  const auto untouched = [&] {
    for (index_t i = 0; i < k_pages.numel(); ++i) REQUIRE((k_pages.data()[i] == 3.f && v_pages.data()[i] == 3.f));
  };
  Tensor<std::int32_t, 2> block_table({1, 4});
  for (index_t b = 0; b < 4; ++b) block_table(0, b) = static_cast<std::int32_t>(b);
  const std::vector<std::int64_t> start{25};  // tokens 25..54: the last 5 beyond the table
  seqmix::PagedKvAppendInputs<float> app;
  app.k = k.view(), app.v = v.view(), app.block_table = block_table.view(), app.cache_seqlens = start, app.rope = &table;
  const seqmix::PagedKvPool<float> pool{k_pages.view(), v_pages.view()};
  st::require_shape_error("cache_seqlens", [&] { seqmix::paged_kv_append(app, pool); });
  untouched();
  std::vector<std::int64_t> positions(30, 3);
  positions[29] = 50;
  app.positions = positions;
  st::require_shape_error("positions", [&] { seqmix::paged_kv_append(app, pool); });
  untouched();
  positions[29] = -1;
  st::require_shape_error("positions", [&] { seqmix::paged_kv_append(app, pool); });
  untouched();
  positions.resize(29);
  app.positions = positions;
  st::require_shape_error("positions", [&] { seqmix::paged_kv_append(app, pool); });
  untouched();

  // Attention: a sequence of 55 cached tokens puts its query at position 54.
  const auto q = st::random_tensor<4>({1, 1, 4, D}, 3);
  const std::vector<std::int64_t> seqlens{55};
  seqmix::PagedAttentionInputs<float> in;
  in.q = q.view(), in.k_pages = k_pages.view(), in.v_pages = v_pages.view(), in.block_table = block_table.view();
  in.cache_seqlens = seqlens, in.rope = &table;
  Tensor<float, 4> o({1, 1, 4, D});
  o.fill(7.f);
  st::require_shape_error("rope", [&] { seqmix::paged_attention(in, {o.view()}); });
  st::require_shape_error("rope", [&] { seqmix::reference::paged_attention(in, {o.view()}); });
  for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
}

// ---- KvCache ----------------------------------------------------------------------------------

TEST_CASE("KvCache::append with a fused rope stores what rope then append stores", "[kv_cache][rope]") {
  const index_t B = 2, Hkv = 2, Dk = 64, Dv = 32, P = 64;
  for (const RopeLayout layout : {kHalf, kInter})
    for (const seqmix::KvFormat format : {seqmix::KvFormat::f32, seqmix::KvFormat::f16}) {
      INFO("layout=" << static_cast<int>(layout) << " format=" << static_cast<int>(format));
      const RopeTable table = make_table(layout, 48, P);
      seqmix::KvCacheConfig cfg;
      cfg.batch = B, cfg.kv_heads = Hkv, cfg.key_dim = Dk, cfg.value_dim = Dv;
      cfg.key_format = format, cfg.value_format = format;
      seqmix::KvCache fused(cfg), plain(cfg);
      // Two appends: 5 tokens at the default positions 0..4, then 3 at explicit positions.
      const auto k1 = st::random_tensor<4>({B, 5, Hkv, Dk}, 11), v1 = st::random_tensor<4>({B, 5, Hkv, Dv}, 12);
      const auto k2 = st::random_tensor<4>({B, 3, Hkv, Dk}, 13), v2 = st::random_tensor<4>({B, 3, Hkv, Dv}, 14);
      Tensor<std::int64_t, 2> pos2({B, 3});
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < 3; ++t) pos2(b, t) = 10 + 20 * b + 7 * t;
      std::vector<std::int64_t> pos1_flat, pos2_flat;
      for (index_t b = 0; b < B; ++b) {
        for (index_t t = 0; t < 5; ++t) pos1_flat.push_back(t);
        for (index_t t = 0; t < 3; ++t) pos2_flat.push_back(pos2(b, t));
      }
      Tensor<float, 4> k1r({B, 5, Hkv, Dk}), k2r({B, 3, Hkv, Dk});
      seqmix::rope(table, {k1.view(), pos1_flat}, {k1r.view()});
      seqmix::rope(table, {k2.view(), pos2_flat}, {k2r.view()});
      plain.append(k1r.view(), v1.view());
      plain.append(k2r.view(), v2.view(), pos2.view());
      seqmix::KvAppendInputs in;
      in.keys = k1.view(), in.values = v1.view(), in.rope = &table;
      fused.append(in);
      in.keys = k2.view(), in.values = v2.view(), in.positions = pos2.view();
      fused.append(in);
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < Hkv; ++h) {
          REQUIRE(fused.size(b, h) == 8);
          Tensor<float, 2> a({8, Dk}), r({8, Dk}), va({8, Dv}), vr({8, Dv});
          fused.read_keys(b, h, a.view()), plain.read_keys(b, h, r.view());
          fused.read_values(b, h, va.view()), plain.read_values(b, h, vr.view());
          st::require_close("KvCache::append (fused rope) keys", a.cview(), r.cview(),
                            format == seqmix::KvFormat::f32 ? 1e-6 : 2e-3);
          st::require_close("KvCache::append (fused rope) values", va.cview(), vr.cview(), 0.0);
        }

      // kv_cache_attention rotating q in the kernel equals rope(q) then kv_cache_attention, over
      // the same cache of rotated keys.
      const index_t Hq = 4, Tq = 2;
      const auto q = st::random_tensor<4>({B, Tq, Hq, Dk}, 15);
      std::vector<std::int64_t> qpos;
      for (index_t b = 0; b < B; ++b)
        for (index_t i = 0; i < Tq; ++i) qpos.push_back(fused.next_position(b) - Tq + i);
      Tensor<float, 4> qr({B, Tq, Hq, Dk});
      seqmix::rope(table, {q.view(), qpos}, {qr.view()});
      seqmix::AttentionOptions causal;
      causal.causal = true;
      seqmix::KvCacheAttentionInputs kin;
      kin.q = qr.view(), kin.cache = &fused;
      Tensor<float, 4> o({B, Tq, Hq, Dv}), o_plain({B, Tq, Hq, Dv});
      seqmix::kv_cache_attention(kin, {o_plain.view()}, causal);
      kin.q = q.view(), kin.cache = &fused, kin.rope = &table;
      seqmix::kv_cache_attention(kin, {o.view()}, causal);
      st::require_close("kv_cache_attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
      seqmix::reference::kv_cache_attention(kin, {o.view()}, causal);
      st::require_close("reference::kv_cache_attention (fused rope)", o.cview(), o_plain.cview(), 1e-6);
      const RopeTable short_table = make_table(layout, 48, 20);  // queries at 23, 24 / 65, 66 lie beyond it
      kin.rope = &short_table;
      o.fill(5.f);
      st::require_shape_error("rope", [&] { seqmix::kv_cache_attention(kin, {o.view()}, causal); });
      for (index_t e = 0; e < o.numel(); ++e) REQUIRE(o.data()[e] == 5.f);

      // Positions outside the table: refused, nothing appended.
      in.positions = {};
      Tensor<float, 4> k_long({B, P, Hkv, Dk}), v_long({B, P, Hkv, Dv});
      in.keys = k_long.view(), in.values = v_long.view();  // default positions 8..71 pass 63
      st::require_shape_error("rope", [&] { fused.append(in); });
      pos2(1, 2) = P;
      in.keys = k2.view(), in.values = v2.view(), in.positions = pos2.view();
      for (index_t b = 0; b < B; ++b)  // beyond every stored position, so only the table refuses it
        for (index_t t = 0; t < 3; ++t) pos2(b, t) = (b == 1 && t == 2) ? P : 50 + t;
      st::require_shape_error("positions", [&] { fused.append(in); });
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < Hkv; ++h) REQUIRE(fused.size(b, h) == 8);
      const RopeTable wide = make_table(layout, 96, P);  // rotary_dim 96 > Dk 64
      in.rope = &wide;
      pos2(1, 2) = 60;
      st::require_shape_error("rope", [&] { fused.append(in); });
    }
}
