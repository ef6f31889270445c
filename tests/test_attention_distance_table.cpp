// RelativeBiasKind::distance_table (issue 15 item 3: a FIRE-like bias given as a lookup the
// caller provides): bias_h(pos, j) = table[h, min(|pos - j|, num_distances - 1)]. attention,
// attention_flash, attention_step, reference::attention, paged_attention and kv_cache_attention
// (fast and reference, float and int8 caches) with the table equal the same forms with the bias
// written by hand as a dense mask, head by head; tables shorter than the distances (clamped) and
// longer; GQA, B 2, Tq 1 / 3 / 70, fp32 and fp16 K/V. Bad tables are refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/attention.hpp"
#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::RelativeBiasKind;
using seqmix::Tensor;
namespace st = seqmix::testing;

// The table's bias of (head h, query position pos, key position j), written out.
float dist_table_bias(const Tensor<float, 2>& table, index_t h, std::int64_t pos, std::int64_t j) {
  const std::int64_t d = std::abs(pos - j), last = table.size(1) - 1;
  return table(h, static_cast<index_t>(std::min(d, last)));
}

struct DistTableCase {
  index_t B, Tq, Tk, Hq, Hkv, D, distances;
  bool causal;
};

template <class KV>
void dist_table_check_dense(const DistTableCase& c, std::uint64_t seed) {
  INFO("B=" << c.B << " Tq=" << c.Tq << " Tk=" << c.Tk << " Hq=" << c.Hq << " Hkv=" << c.Hkv << " distances="
            << c.distances << " causal=" << c.causal << " kv bytes=" << sizeof(KV));
  const auto q = st::random_tensor<4>({c.B, c.Tq, c.Hq, c.D}, seed);
  Tensor<KV, 4> k({c.B, c.Tk, c.Hkv, c.D}), v({c.B, c.Tk, c.Hkv, c.D});
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 1, -2.f, 2.f).cview(), k.view());
  seqmix::copy(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.D}, seed + 2).cview(), v.view());
  const auto table = st::random_tensor<2>({c.Hq, c.distances}, seed + 3, -3.f, 3.f);
  seqmix::AttentionInputs<KV> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  in.relative_bias.kind = RelativeBiasKind::distance_table, in.relative_bias.table = table.view();
  seqmix::AttentionOptions options;
  options.causal = c.causal;
  Tensor<float, 4> o_fast({c.B, c.Tq, c.Hq, c.D}), o_flash({c.B, c.Tq, c.Hq, c.D}), o_step({c.B, c.Tq, c.Hq, c.D}),
      o_ref({c.B, c.Tq, c.Hq, c.D});
  seqmix::ThreadPool pool(2);
  seqmix::attention(in, {o_fast.view()}, options, pool);
  seqmix::attention_flash(in, {o_flash.view()}, options, pool);
  seqmix::attention_step(in, {o_step.view()}, options, pool);
  seqmix::reference::attention(in, {o_ref.view()}, options);
  // Paged: one page per 16 keys in order (the last page partly used), same bias.
  const index_t BS = 16, pages = (c.Tk + BS - 1) / BS;
  Tensor<KV, 4> kp({c.B * pages, BS, c.Hkv, c.D}), vp({c.B * pages, BS, c.Hkv, c.D});
  Tensor<std::int32_t, 2> block_table({c.B, pages});
  for (index_t b = 0; b < c.B; ++b)
    for (index_t j = 0; j < c.Tk; ++j)
      for (index_t hk = 0; hk < c.Hkv; ++hk)
        for (index_t e = 0; e < c.D; ++e) {
          kp(b * pages + j / BS, j % BS, hk, e) = k(b, j, hk, e);
          vp(b * pages + j / BS, j % BS, hk, e) = v(b, j, hk, e);
        }
  for (index_t i = 0; i < c.B * pages; ++i) block_table.data()[i] = static_cast<std::int32_t>(i);
  const std::vector<std::int32_t> lens(static_cast<std::size_t>(c.B), static_cast<std::int32_t>(c.Tk));
  Tensor<float, 4> o_paged({c.B, c.Tq, c.Hq, c.D});
  if (c.causal) {  // paged queries are the last Tq tokens of each sequence
    seqmix::PagedAttentionInputs<KV> pin;
    pin.q = q.view(), pin.k_pages = kp.view(), pin.v_pages = vp.view(), pin.block_table = block_table.cview();
    pin.cache_seqlens = lens, pin.relative_bias = in.relative_bias;
    seqmix::paged_attention(pin, {o_paged.view()}, seqmix::PagedAttentionOptions{}, pool);
  }
  const index_t G = c.Hq / c.Hkv;
  Tensor<float, 3> mask({c.B, c.Tq, c.Tk});
  for (index_t h = 0; h < c.Hq; ++h) {
    INFO("head " << h);
    for (index_t b = 0; b < c.B; ++b)
      for (index_t i = 0; i < c.Tq; ++i)
        for (index_t j = 0; j < c.Tk; ++j) mask(b, i, j) = dist_table_bias(table, h, c.Tk - c.Tq + i, j);
    seqmix::AttentionInputs<KV> one;
    one.q = in.q.slice(2, h, 1), one.k = in.k.slice(2, h / G, 1), one.v = in.v.slice(2, h / G, 1), one.mask = mask.view();
    Tensor<float, 4> want({c.B, c.Tq, 1, c.D});
    seqmix::reference::attention(one, {want.view()}, options);
    st::require_close("attention (distance table)", o_fast.cview().slice(2, h, 1), want.cview(), 1e-5);
    st::require_close("attention_flash (distance table)", o_flash.cview().slice(2, h, 1), want.cview(), 1e-5);
    st::require_close("attention_step (distance table)", o_step.cview().slice(2, h, 1), want.cview(), 1e-5);
    st::require_close("reference::attention (distance table)", o_ref.cview().slice(2, h, 1), want.cview(), 1e-5);
    if (c.causal) st::require_close("paged_attention (distance table)", o_paged.cview().slice(2, h, 1), want.cview(), 1e-5);
  }
}

}  // namespace

TEST_CASE("attention with a caller distance table equals the table as a dense mask", "[attention][bias]") {
  const DistTableCase cases[] = {
      {2, 70, 70, 4, 2, 32, 40, true},   // prefill, table shorter than the distances (clamped)
      {1, 1, 200, 4, 2, 32, 512, true},  // decode, table longer than every distance
      {2, 3, 129, 4, 1, 32, 1, true},    // verify rows, a one-entry table (a constant per head)
      {1, 37, 37, 4, 4, 24, 20, false},  // bidirectional
  };
  for (const DistTableCase& c : cases) {
    const std::uint64_t seed = 8100 + static_cast<std::uint64_t>(&c - cases) * 10;
    dist_table_check_dense<float>(c, seed);
    if (!st::small_test_scale()) dist_table_check_dense<seqmix::f16>(c, seed);
  }
}

TEST_CASE("kv_cache_attention with a caller distance table equals the table as a dense mask", "[kv_cache][bias]") {
  using seqmix::KvFormat;
  const index_t B = 2, Hkv = 2, Hq = 4, Dk = 32, Dv = 16;
  const auto table = st::random_tensor<2>({Hq, 50}, 8201, -3.f, 3.f);
  for (const KvFormat f : {KvFormat::f32, KvFormat::int8}) {
    seqmix::KvCacheConfig cfg;
    cfg.batch = B, cfg.kv_heads = Hkv, cfg.key_dim = Dk, cfg.value_dim = Dv;
    cfg.key_format = f, cfg.value_format = f, cfg.residual = f == KvFormat::int8 ? 8 : 0;
    seqmix::KvCache cache(cfg);
    cache.append(st::random_tensor<4>({B, 90, Hkv, Dk}, 8202).view(), st::random_tensor<4>({B, 90, Hkv, Dv}, 8203).view());
    cache.append(st::random_tensor<4>({B, 7, Hkv, Dk}, 8204).view(), st::random_tensor<4>({B, 7, Hkv, Dv}, 8205).view());
    for (const index_t Tq : {1, 3}) {
      INFO("format " << seqmix::format_name(f) << " Tq " << Tq);
      const auto q = st::random_tensor<4>({B, Tq, Hq, Dk}, 8210 + Tq);
      seqmix::KvCacheAttentionInputs in;
      in.q = q.view(), in.cache = &cache;
      in.relative_bias.kind = RelativeBiasKind::distance_table, in.relative_bias.table = table.view();
      seqmix::AttentionOptions options;
      options.causal = true;
      Tensor<float, 4> o({B, Tq, Hq, Dv}), o_ref({B, Tq, Hq, Dv});
      seqmix::ThreadPool pool(2);
      seqmix::kv_cache_attention(in, {o.view()}, options, pool);
      seqmix::reference::kv_cache_attention(in, {o_ref.view()}, options);
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < Hq; ++h) {
          const index_t hk = h / (Hq / Hkv), Tk = cache.size(b, hk);
          Tensor<float, 4> k({1, Tk, 1, Dk}), v({1, Tk, 1, Dv});
          cache.read_keys(b, hk, seqmix::TensorView<float, 2>(k.data(), {Tk, Dk}));
          cache.read_values(b, hk, seqmix::TensorView<float, 2>(v.data(), {Tk, Dv}));
          Tensor<float, 3> mask({1, Tq, Tk});
          for (index_t i = 0; i < Tq; ++i)
            for (index_t j = 0; j < Tk; ++j) mask(0, i, j) = dist_table_bias(table, h, cache.next_position(b) - Tq + i, j);
          seqmix::AttentionInputs<float> dense;
          dense.q = in.q.slice(0, b, 1).slice(2, h, 1), dense.k = k.view(), dense.v = v.view(), dense.mask = mask.view();
          Tensor<float, 4> want({1, Tq, 1, Dv});
          seqmix::reference::attention(dense, {want.view()}, options);
          INFO("b " << b << " head " << h);
          const double tol = f == KvFormat::f32 ? 1e-5 : 1e-4;
          st::require_close("kv_cache_attention (distance table)", o.cview().slice(0, b, 1).slice(2, h, 1), want.cview(), tol);
          st::require_close("reference::kv_cache_attention (distance table)", o_ref.cview().slice(0, b, 1).slice(2, h, 1),
                            want.cview(), tol);
        }
    }
  }
}

TEST_CASE("a caller distance table is refused before writing when misshapen or not finite", "[attention][bias]") {
  const index_t Hq = 4;
  const auto q = st::random_tensor<4>({1, 3, Hq, 16}, 1);
  const auto k = st::random_tensor<4>({1, 20, 2, 16}, 2), v = st::random_tensor<4>({1, 20, 2, 16}, 3);
  Tensor<float, 4> o({1, 3, Hq, 16});
  o.fill(7.f);
  Tensor<float, 2> wrong_heads({Hq + 1, 8}), empty({Hq, 0}), bad({Hq, 8});
  bad.fill(0.f);
  bad(2, 5) = std::nanf("");
  seqmix::KvCacheConfig cfg;
  cfg.batch = 1, cfg.kv_heads = 2, cfg.key_dim = 16, cfg.value_dim = 16;
  seqmix::KvCache cache(cfg);
  cache.append(k.view(), v.view());
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  in.relative_bias.kind = RelativeBiasKind::distance_table;
  seqmix::KvCacheAttentionInputs kin;
  kin.q = q.view(), kin.cache = &cache;
  kin.relative_bias.kind = RelativeBiasKind::distance_table;
  const std::vector<const Tensor<float, 2>*> tables = {nullptr, &wrong_heads, &empty, &bad};
  for (const Tensor<float, 2>* t : tables) {
    in.relative_bias.table = t ? t->cview() : seqmix::ConstView<float, 2>();
    kin.relative_bias.table = in.relative_bias.table;
    st::require_shape_error("relative_bias.table", [&] { seqmix::attention(in, {o.view()}); });
    st::require_shape_error("relative_bias.table", [&] { seqmix::attention_flash(in, {o.view()}); });
    st::require_shape_error("relative_bias.table", [&] { seqmix::reference::attention(in, {o.view()}); });
    st::require_shape_error("relative_bias.table", [&] { seqmix::kv_cache_attention(kin, {o.view()}); });
    st::require_shape_error("relative_bias.table", [&] { seqmix::reference::kv_cache_attention(kin, {o.view()}); });
    for (float x : o) REQUIRE(x == 7.f);
  }
}
