// Relative biases and head scales in kv_cache_attention (issue 15 item 3): the fast form and the
// reference with KvCacheAttentionInputs::relative_bias / head_scales equal dense attention over
// the cache's (dequantized) keys and values with the same bias written as a dense [Tq, Tk] mask
// per head; fp32 and int8 / int4 caches, blocks plus a residual window, Tq = 1 and 3, B = 2, every
// bias kind. Bad parameters are refused before any write.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// The per-head parameters of every bias kind for Hq heads.
struct KvBiasParams {
  Tensor<float, 2> table, w1, b1, w2;
  Tensor<float, 1> r1, r2, b2, head_scales;
  explicit KvBiasParams(index_t Hq)
      : table(st::random_tensor<2>({Hq, 16}, 71)), w1(st::random_tensor<2>({Hq, 8}, 72)),
        b1(st::random_tensor<2>({Hq, 8}, 73)), w2(st::random_tensor<2>({Hq, 8}, 74)),
        r1(st::random_tensor<1>({Hq}, 75, 0.2f, 1.f)), r2(st::random_tensor<1>({Hq}, 76, 0.2f, 1.5f)),
        b2(st::random_tensor<1>({Hq}, 77)), head_scales(st::random_tensor<1>({Hq}, 78, 0.5f, 1.5f)) {}
  seqmix::RelativeBias make(seqmix::RelativeBiasKind kind, bool bidirectional) const {
    seqmix::RelativeBias rb;
    rb.kind = kind;
    rb.table = table.view(), rb.bidirectional = bidirectional, rb.max_distance = 40;
    rb.r1 = r1.view(), rb.r2 = r2.view();
    rb.fire_w1 = w1.view(), rb.fire_b1 = b1.view(), rb.fire_w2 = w2.view(), rb.fire_b2 = b2.view();
    rb.fire_c = 0.2f, rb.fire_threshold = 64.f;
    return rb;
  }
};

// Dense reference::attention per (b, head) over the cache's keys and values read back as fp32,
// the bias given as a [1, Tq, Tk] mask (keys at positions 0..Tk-1, as appended).
void kv_bias_dense(const seqmix::KvCache& cache, const seqmix::KvCacheAttentionInputs& in,
                   const seqmix::AttentionOptions& options, Tensor<float, 4>& o) {
  const index_t B = in.q.size(0), Tq = in.q.size(1), Hq = in.q.size(2), Dk = in.q.size(3), Dv = o.size(3);
  const index_t G = Hq / cache.config().kv_heads;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h) {
      const index_t hk = h / G, Tk = cache.size(b, hk);
      Tensor<float, 4> k({1, Tk, 1, Dk}), v({1, Tk, 1, Dv});
      cache.read_keys(b, hk, seqmix::TensorView<float, 2>(k.data(), {Tk, Dk}));
      cache.read_values(b, hk, seqmix::TensorView<float, 2>(v.data(), {Tk, Dv}));
      Tensor<float, 3> mask({1, Tq, Tk});
      for (index_t i = 0; i < Tq; ++i)
        for (index_t j = 0; j < Tk; ++j)
          mask(0, i, j) = static_cast<float>(
              seqmix::detail::relative_bias_value(in.relative_bias, h, cache.next_position(b) - Tq + i, j));
      seqmix::AttentionInputs<float> dense;
      dense.q = in.q.slice(0, b, 1).slice(2, h, 1), dense.k = k.view(), dense.v = v.view(), dense.mask = mask.view();
      if (in.head_scales.has_value()) dense.head_scales = in.head_scales.slice(0, h, 1);
      seqmix::reference::attention(dense, {o.view().slice(0, b, 1).slice(2, h, 1)}, options);
    }
}

}  // namespace

TEST_CASE("kv_cache_attention with a relative bias equals the bias as a dense mask", "[kv_cache][bias]") {
  using seqmix::KvFormat;
  using seqmix::RelativeBiasKind;
  const index_t B = 2, Hkv = 2, Hq = 8, Dk = 64, Dv = 32;
  const KvBiasParams params(Hq);
  struct Format {
    KvFormat keys, values;
    index_t residual;
    double tol;
  };
  for (const Format f : {Format{KvFormat::f32, KvFormat::f32, 0, 1e-5}, Format{KvFormat::int8, KvFormat::int4, 16, 1e-4}}) {
    seqmix::KvCacheConfig cfg;
    cfg.batch = B, cfg.kv_heads = Hkv, cfg.key_dim = Dk, cfg.value_dim = Dv;
    cfg.key_format = f.keys, cfg.value_format = f.values, cfg.residual = f.residual;
    seqmix::KvCache cache(cfg);
    cache.append(st::random_tensor<4>({B, 100, Hkv, Dk}, 81).view(), st::random_tensor<4>({B, 100, Hkv, Dv}, 82).view());
    cache.append(st::random_tensor<4>({B, 77, Hkv, Dk}, 83).view(), st::random_tensor<4>({B, 77, Hkv, Dv}, 84).view());
    for (const index_t Tq : {1, 3})
      for (const RelativeBiasKind kind : {RelativeBiasKind::t5, RelativeBiasKind::kerple_log,
                                          RelativeBiasKind::kerple_power, RelativeBiasKind::fire})
        for (const bool extras : {false, true}) {  // bidirectional T5, head scales, a window and ALiBi-free softcap
          INFO("keys=" << static_cast<int>(f.keys) << " Tq=" << Tq << " kind=" << static_cast<int>(kind)
                       << " extras=" << extras);
          const auto q = st::random_tensor<4>({B, Tq, Hq, Dk}, 90 + Tq);
          seqmix::KvCacheAttentionInputs in;
          in.q = q.view(), in.cache = &cache, in.relative_bias = params.make(kind, extras);
          if (extras) in.head_scales = params.head_scales.view();
          seqmix::AttentionOptions options;
          options.causal = true;
          if (extras) options.window = 90, options.softcap = 20.f;
          Tensor<float, 4> want({B, Tq, Hq, Dv}), o({B, Tq, Hq, Dv});
          kv_bias_dense(cache, in, options, want);
          seqmix::ThreadPool pool(2);
          seqmix::kv_cache_attention(in, {o.view()}, options, pool);
          st::require_close("kv_cache_attention (relative bias)", o.cview(), want.cview(), f.tol);
          seqmix::reference::kv_cache_attention(in, {o.view()}, options);
          st::require_close("reference::kv_cache_attention (relative bias)", o.cview(), want.cview(), f.tol);
        }
  }
}

TEST_CASE("kv_cache_attention refuses bad bias parameters before writing", "[kv_cache][bias]") {
  const index_t Hq = 4;
  seqmix::KvCacheConfig cfg;
  cfg.batch = 1, cfg.kv_heads = 2, cfg.key_dim = 16, cfg.value_dim = 16, cfg.key_format = seqmix::KvFormat::f32;
  seqmix::KvCache cache(cfg);
  cache.append(st::random_tensor<4>({1, 10, 2, 16}, 1).view(), st::random_tensor<4>({1, 10, 2, 16}, 2).view());
  const auto q = st::random_tensor<4>({1, 1, Hq, 16}, 3);
  const auto r = st::random_tensor<1>({Hq}, 4, 0.5f, 1.f), wrong = st::random_tensor<1>({Hq + 1}, 5);
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache;
  in.relative_bias.kind = seqmix::RelativeBiasKind::kerple_log, in.relative_bias.r1 = r.view();
  in.relative_bias.r2 = wrong.view();
  Tensor<float, 4> o({1, 1, Hq, 16});
  o.fill(7.f);
  st::require_shape_error("relative_bias.r2", [&] { seqmix::kv_cache_attention(in, {o.view()}); });
  in.relative_bias.r2 = r.view(), in.head_scales = wrong.view();
  st::require_shape_error("head_scales", [&] { seqmix::kv_cache_attention(in, {o.view()}); });
  st::require_shape_error("head_scales", [&] { seqmix::reference::kv_cache_attention(in, {o.view()}); });
  for (float x : o) CHECK(x == 7.f);
}
