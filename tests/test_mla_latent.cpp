// mla over paged and quantized latent caches (issue 15 item 4): mla_paged_append /
// mla_paged_decode (fp32 / fp16 pages through block tables, page sizes 1 to 64) and
// mla_latent_append / mla_latent_decode (int8 / int4 latents with per-token groups, dense and
// paged), each filled in two appends (a prefix, then the rest, k_rope rotated by a fused rope
// or not), then checked three ways: the stored rows read back equal the tokens appended (within
// the quantization bound for codes), the decode equals mla_decode over those rows laid out
// densely bit for bit, and it equals the naive expanded reference::mla. Bad arguments are
// refused before any row or output is written.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "seqmix/attention/mla/paged.hpp"
#include "seqmix/kv_cache/mla_latent.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvFormat;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct MlaLatShape {
  index_t H, dn, dr, dc, dv;
};

const MlaLatShape kMlaLatShapes[] = {{3, 16, 8, 40, 12}, {16, 32, 16, 128, 32}, {2, 8, 4, 17, 8}};

struct MlaLatWeights {
  Tensor<float, 3> kv_b;  // [H, d_nope + d_v, d_c]
  seqmix::MlaWeights views(const MlaLatShape& s) const {
    return {kv_b.view().slice(1, 0, s.dn), kv_b.view().slice(1, s.dn, s.dv)};
  }
};

MlaLatWeights mla_lat_weights(const MlaLatShape& s) {
  MlaLatWeights w{st::random_tensor<3>({s.H, s.dn + s.dv, s.dc}, 31)};
  for (float& x : w.kv_b) x *= 2.f / std::sqrt(static_cast<float>(s.dc));
  return w;
}

seqmix::RopeTable mla_lat_rope(index_t dr, index_t positions) {
  seqmix::RopeConfig c;
  c.layout = seqmix::RopeLayout::interleaved;  // DeepSeek's layout
  c.rotary_dim = dr;
  c.scheme = seqmix::RopeScheme::yarn;
  c.factor = 4.0;
  c.original_max_position_embeddings = 64;
  return seqmix::RopeTable(c, positions);
}

// The tokens of N sequences of Lmax positions, and their rotary keys as the cache must hold them.
struct MlaLatTokens {
  index_t N, Lmax;
  Tensor<float, 3> c, r, r_stored;  // [N, Lmax, d_c], [N, Lmax, d_r] as appended, as stored
};

MlaLatTokens mla_lat_tokens(const MlaLatShape& s, index_t N, index_t Lmax, const seqmix::RopeTable* rope) {
  MlaLatTokens t{N, Lmax, st::random_tensor<3>({N, Lmax, s.dc}, 41), st::random_tensor<3>({N, Lmax, s.dr}, 42), {}};
  t.r_stored = Tensor<float, 3>({N, Lmax, s.dr});
  std::copy(t.r.begin(), t.r.end(), t.r_stored.begin());
  if (rope) {  // position = token index: rope's default positions on [N, Lmax, 1, d_r]
    const seqmix::ConstView<float, 4> x(t.r.data(), {N, Lmax, 1, s.dr});
    const seqmix::TensorView<float, 4> y(t.r_stored.data(), {N, Lmax, 1, s.dr});
    seqmix::rope(*rope, {x, {}}, {y});
  }
  return t;
}

// A block table of distinct pages in a shuffled order, and the pool's page count.
Tensor<std::int32_t, 2> mla_lat_table(index_t N, index_t max_blocks, index_t pages, std::uint32_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(pages));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  Tensor<std::int32_t, 2> table({N, max_blocks});
  for (index_t i = 0; i < N * max_blocks; ++i) table.data()[i] = ids[static_cast<std::size_t>(i)];
  return table;
}

// Appends the tokens in two calls (positions [0, split) then [split, Lmax)) through `append`.
template <class Append>
void mla_lat_fill(const MlaLatTokens& t, index_t split, const seqmix::BlockTable& table, const seqmix::RopeTable* rope,
                  Append&& append) {
  for (const auto& range : {std::pair<index_t, index_t>{0, split}, std::pair<index_t, index_t>{split, t.Lmax}}) {
    const std::vector<std::int64_t> before(static_cast<std::size_t>(t.N), range.first);
    seqmix::MlaLatentAppendInputs in;
    in.c_kv = t.c.view().slice(1, range.first, range.second - range.first);
    in.k_rope = t.r.view().slice(1, range.first, range.second - range.first);
    in.block_table = table, in.cache_seqlens = before, in.rope = rope;
    append(in);
  }
}

// Checks o / lse of a decode against mla_decode over dense rows (exactly) and reference::mla.
void mla_lat_check_decode(const MlaLatShape& s, const MlaLatWeights& w, const Tensor<float, 3>& q_nope,
                          const Tensor<float, 3>& q_rope, const Tensor<float, 3>& c_dense, const Tensor<float, 3>& r_dense,
                          const std::vector<std::int64_t>& lengths, const Tensor<float, 3>& o, const Tensor<float, 2>& lse,
                          const seqmix::Executor& executor) {
  const index_t N = c_dense.size(0);
  Tensor<float, 3> o_dense({N, s.H, s.dv});
  Tensor<float, 2> lse_dense({N, s.H});
  seqmix::MlaDecodeInputs<float> din{q_nope.view(), q_rope.view(), c_dense.view(), r_dense.view(), lengths, w.views(s)};
  seqmix::mla_decode(din, {o_dense.view(), lse_dense.view()}, {}, executor);
  st::require_close("decode o vs dense mla_decode", o.view(), o_dense.view(), 0.0);
  for (index_t i = 0; i < lse.numel(); ++i) {  // bit for bit, -inf of an empty sequence included
    INFO("lse entry " << i << ": " << lse.data()[i] << " vs dense " << lse_dense.data()[i]);
    REQUIRE(lse.data()[i] == lse_dense.data()[i]);
  }
  for (index_t n = 0; n < N; ++n) {
    const index_t L = lengths[static_cast<std::size_t>(n)];
    INFO("sequence " << n << ", cached " << L);
    if (L == 0) {
      for (index_t h = 0; h < s.H; ++h) REQUIRE(lse(n, h) == -std::numeric_limits<float>::infinity());
      continue;
    }
    const seqmix::ConstView<float, 4> qn(q_nope.view().ptr(n), {1, 1, s.H, s.dn}), qr(q_rope.view().ptr(n), {1, 1, s.H, s.dr});
    seqmix::MlaPrefillInputs<float> one{qn, qr, c_dense.view().slice(0, n, 1).slice(1, 0, L),
                                        r_dense.view().slice(0, n, 1).slice(1, 0, L), w.views(s)};
    Tensor<float, 4> ref({1, 1, s.H, s.dv});
    Tensor<float, 3> ref_lse({1, 1, s.H});
    seqmix::reference::mla(one, {ref.view(), ref_lse.view()});
    st::require_close("decode o vs reference::mla", seqmix::ConstView<float, 4>(o.view().ptr(n), {1, 1, s.H, s.dv}),
                      ref.cview(), 2e-5);
    st::require_close("decode lse vs reference::mla", seqmix::ConstView<float, 3>(lse.view().ptr(n), {1, 1, s.H}),
                      ref_lse.cview(), 2e-5);
  }
}

template <class C>
void mla_lat_check_paged(const MlaLatShape& s, index_t BS, bool with_rope, const seqmix::Executor& executor) {
  const std::vector<std::int64_t> lengths = {65, 0, 1, 130};
  const index_t N = 4, Lmax = 130, split = 47, max_blocks = (Lmax + BS - 1) / BS, NB = N * max_blocks + 3;
  INFO("paged " << (std::is_same_v<C, float> ? "fp32" : "fp16") << " H=" << s.H << " d_c=" << s.dc << " d_r=" << s.dr
                << " block_size=" << BS << " rope=" << with_rope);
  const seqmix::RopeTable rope = mla_lat_rope(s.dr, Lmax);
  const seqmix::RopeTable* rp = with_rope ? &rope : nullptr;
  const MlaLatTokens t = mla_lat_tokens(s, N, Lmax, rp);
  const auto table = mla_lat_table(N, max_blocks, NB, static_cast<std::uint32_t>(BS));
  Tensor<C, 3> c_pages({NB, BS, s.dc}), r_pages({NB, BS, s.dr});
  mla_lat_fill(t, split, table.cview(), rp, [&](const seqmix::MlaLatentAppendInputs& in) {
    seqmix::mla_paged_append(in, seqmix::MlaPagedLatentPool<C>{c_pages.view(), r_pages.view()}, executor);
  });
  // Read back through the table: latents are the tokens rounded to C, keys their rotations.
  Tensor<float, 3> c_dense({N, Lmax, s.dc}), r_dense({N, Lmax, s.dr}), c_round({N, Lmax, s.dc});
  for (index_t n = 0; n < N; ++n)
    for (index_t j = 0; j < Lmax; ++j) {
      const index_t page = table(n, j / BS), row = j % BS;
      for (index_t e = 0; e < s.dc; ++e) {
        c_dense(n, j, e) = static_cast<float>(c_pages(page, row, e));
        c_round(n, j, e) = static_cast<float>(static_cast<C>(t.c(n, j, e)));
      }
      for (index_t e = 0; e < s.dr; ++e) r_dense(n, j, e) = static_cast<float>(r_pages(page, row, e));
    }
  st::require_close("pages' latents", c_dense.view(), c_round.view(), 0.0);
  st::require_close("pages' rotary keys", r_dense.view(), t.r_stored.view(), std::is_same_v<C, float> ? 1e-6 : 1e-3);
  const auto q_nope = st::random_tensor<3>({N, s.H, s.dn}, 43), q_rope = st::random_tensor<3>({N, s.H, s.dr}, 44);
  Tensor<float, 3> o({N, s.H, s.dv});
  Tensor<float, 2> lse({N, s.H});
  const MlaLatWeights w = mla_lat_weights(s);
  seqmix::MlaPagedDecodeInputs<C> in{q_nope.view(), q_rope.view(), c_pages.view(), r_pages.view(), table.cview(),
                                     lengths, w.views(s)};
  seqmix::mla_paged_decode(in, {o.view(), lse.view()}, {}, executor);
  mla_lat_check_decode(s, w, q_nope, q_rope, c_dense, r_dense, lengths, o, lse, executor);
}

// int8 / int4 latents, dense (no table) or paged: read back within the quantization bound, decode
// equal to mla_decode over the decoded rows and to reference::mla over them.
template <class R>
void mla_lat_check_quantized(const MlaLatShape& s, KvFormat format, index_t group, index_t BS, bool with_rope,
                             const seqmix::Executor& executor) {
  const std::vector<std::int64_t> lengths = {66, 130, 0};
  const index_t N = 3, Lmax = 130, split = 64;
  const bool paged = BS > 0;
  const index_t max_blocks = paged ? (Lmax + BS - 1) / BS : 0, X = paged ? N * max_blocks + 2 : N,
                Y = paged ? BS : Lmax;
  const index_t groups = seqmix::quant::group_count(s.dc, group);
  INFO(seqmix::format_name(format) << " group " << group << (paged ? " paged, block_size " : " dense") << BS
                                   << " H=" << s.H << " d_c=" << s.dc << " d_r=" << s.dr << " rope=" << with_rope);
  const seqmix::RopeTable rope = mla_lat_rope(s.dr, Lmax);
  const seqmix::RopeTable* rp = with_rope ? &rope : nullptr;
  const MlaLatTokens t = mla_lat_tokens(s, N, Lmax, rp);
  Tensor<std::int32_t, 2> table;
  if (paged) table = mla_lat_table(N, max_blocks, X, 7);
  const seqmix::BlockTable bt = paged ? seqmix::BlockTable(table.cview()) : seqmix::BlockTable();
  Tensor<std::uint8_t, 3> codes({X, Y, seqmix::row_bytes(format, s.dc)});
  Tensor<float, 4> params({X, Y, groups, 2});
  Tensor<R, 3> k_rope({X, Y, s.dr});
  const seqmix::MlaQuantizedLatents<R> cache{format, group, codes.view(), params.view(), k_rope.view(), s.dc};
  mla_lat_fill(t, split, bt, rp, [&](const seqmix::MlaLatentAppendInputs& in) { seqmix::mla_latent_append(in, cache, executor); });
  Tensor<float, 3> decoded({X, Y, s.dc});
  seqmix::mla_latent_dequantize(cache, decoded.view());
  Tensor<float, 3> c_dense({N, Lmax, s.dc}), r_dense({N, Lmax, s.dr});
  const index_t width = group > 0 ? group : s.dc;
  double worst = 0.0;
  for (index_t n = 0; n < N; ++n)
    for (index_t j = 0; j < Lmax; ++j) {
      const index_t x = paged ? table(n, j / BS) : n, y = paged ? j % BS : j;
      for (index_t e = 0; e < s.dc; ++e) {
        c_dense(n, j, e) = decoded(x, y, e);
        const seqmix::quant::Params p{params(x, y, e / width, 0), params(x, y, e / width, 1)};
        const double err = std::abs(static_cast<double>(decoded(x, y, e)) - t.c(n, j, e));
        worst = std::max(worst, err);
        if (!(err <= seqmix::quant::error_bound(p))) {
          INFO("token " << j << " of sequence " << n << " channel " << e << ": error " << err << " > bound "
                        << seqmix::quant::error_bound(p));
          REQUIRE(false);
        }
      }
      for (index_t e = 0; e < s.dr; ++e) r_dense(n, j, e) = static_cast<float>(k_rope(x, y, e));
    }
  REQUIRE(worst > 0.0);  // the codes did quantize
  st::require_close("rotary keys", r_dense.view(), t.r_stored.view(), std::is_same_v<R, float> ? 1e-6 : 1e-3);
  const auto q_nope = st::random_tensor<3>({N, s.H, s.dn}, 45), q_rope = st::random_tensor<3>({N, s.H, s.dr}, 46);
  const MlaLatWeights w = mla_lat_weights(s);
  Tensor<float, 3> o({N, s.H, s.dv});
  Tensor<float, 2> lse({N, s.H});
  seqmix::MlaLatentDecodeInputs<R> in{q_nope.view(), q_rope.view(), cache, bt, lengths, w.views(s)};
  seqmix::mla_latent_decode(in, {o.view(), lse.view()}, {}, executor);
  mla_lat_check_decode(s, w, q_nope, q_rope, c_dense, r_dense, lengths, o, lse, executor);
  // Against the unquantized latents: the error of the codes, small against the output's scale.
  Tensor<float, 3> o_fp32({N, s.H, s.dv});
  seqmix::MlaDecodeInputs<float> fin{q_nope.view(), q_rope.view(), t.c.view(), r_dense.view(), lengths, w.views(s)};
  seqmix::mla_decode(fin, {o_fp32.view(), {}}, {}, executor);
  st::require_close("quantized vs fp32 latents", o.view(), o_fp32.view(), format == KvFormat::int8 ? 2e-2 : 2e-1);
}

}  // namespace

TEST_CASE("mla_paged_decode over paged latents equals mla_decode and the reference", "[mla][paged]") {
  for (const MlaLatShape& s : kMlaLatShapes)
    for (const index_t bs : {1, 7, 16, 64}) {
      if (s.H > 8 && bs < 16) continue;  // the large shape at the page sizes that matter, for time
      mla_lat_check_paged<float>(s, bs, bs != 16, bs == 7 ? seqmix::serial_executor() : st::two_thread_pool());
      if (bs == 7 || (bs == 16 && s.H > 8)) mla_lat_check_paged<seqmix::f16>(s, bs, true, seqmix::serial_executor());
    }
}

TEST_CASE("mla_latent_decode over int8 and int4 latents equals decoding then mla_decode", "[mla][kv_cache]") {
  for (const MlaLatShape& s : kMlaLatShapes)
    for (const KvFormat f : {KvFormat::int8, KvFormat::int4}) {
      const bool large = s.H > 8;
      if (!large || f == KvFormat::int4) mla_lat_check_quantized<seqmix::f16>(s, f, 0, 0, true, st::two_thread_pool());
      if (!large || f == KvFormat::int8) mla_lat_check_quantized<float>(s, f, 16, 16, false, seqmix::serial_executor());
      if (!large) mla_lat_check_quantized<seqmix::f16>(s, f, 7, 64, true, st::two_thread_pool());
    }
}

TEST_CASE("mla paged and quantized latent caches refuse bad arguments before writing", "[mla][paged][kv_cache]") {
  const MlaLatShape s{2, 8, 4, 16, 8};
  const MlaLatWeights w = mla_lat_weights(s);
  const index_t N = 2, NB = 4, BS = 4;
  Tensor<float, 3> c_pages({NB, BS, s.dc}), r_pages({NB, BS, s.dr});
  c_pages.fill(5.f), r_pages.fill(5.f);
  Tensor<std::int32_t, 2> table({N, 2});
  for (index_t i = 0; i < 4; ++i) table.data()[i] = static_cast<std::int32_t>(i);
  const auto c_new = st::random_tensor<3>({N, 3, s.dc}, 1), r_new = st::random_tensor<3>({N, 3, s.dr}, 2);
  std::vector<std::int32_t> before = {0, 6};  // 6 + 3 > 2 pages x 4
  seqmix::MlaLatentAppendInputs app;
  app.c_kv = c_new.view(), app.k_rope = r_new.view(), app.block_table = table.cview(), app.cache_seqlens = before;
  const seqmix::MlaPagedLatentPool<float> pool{c_pages.view(), r_pages.view()};
  st::require_shape_error("cache_seqlens", [&] { seqmix::mla_paged_append(app, pool); });
  before = {0, 4};
  app.cache_seqlens = before;
  table(1, 1) = 9;  // outside the pool
  st::require_shape_error("block_table", [&] { seqmix::mla_paged_append(app, pool); });
  table(1, 1) = 3;
  const seqmix::RopeTable short_table = mla_lat_rope(s.dr, 6);  // positions 4..6 of sequence 1 reach 6
  app.rope = &short_table;
  st::require_shape_error("cache_seqlens", [&] { seqmix::mla_paged_append(app, pool); });
  const seqmix::RopeTable wide = mla_lat_rope(s.dr + 2, 64);  // rotary_dim above d_r
  app.rope = &wide;
  st::require_shape_error("rope", [&] { seqmix::mla_paged_append(app, pool); });
  app.rope = nullptr;
  seqmix::MlaLatentAppendInputs no_table = app;
  no_table.block_table = {};
  st::require_shape_error("block_table", [&] { seqmix::mla_paged_append(no_table, pool); });
  for (const float x : c_pages) REQUIRE(x == 5.f);
  for (const float x : r_pages) REQUIRE(x == 5.f);

  // Decode: a length beyond the table's pages, a table entry outside the pool, a wrong o.
  const auto q_nope = st::random_tensor<3>({N, s.H, s.dn}, 3), q_rope = st::random_tensor<3>({N, s.H, s.dr}, 4);
  Tensor<float, 3> o({N, s.H, s.dv});
  o.fill(3.f);
  std::vector<std::int32_t> lengths = {8, 9};
  seqmix::MlaPagedDecodeInputs<float> dec{q_nope.view(), q_rope.view(), c_pages.view(), r_pages.view(), table.cview(),
                                          lengths, w.views(s)};
  st::require_shape_error("cache_seqlens", [&] { seqmix::mla_paged_decode(dec, {o.view(), {}}); });
  lengths = {8, 8};
  dec.cache_seqlens = lengths;
  table(0, 1) = -1;
  st::require_shape_error("block_table", [&] { seqmix::mla_paged_decode(dec, {o.view(), {}}); });
  table(0, 1) = 1;
  Tensor<float, 3> wrong({N, s.H, s.dv + 1});
  st::require_shape_error("o", [&] { seqmix::mla_paged_decode(dec, {wrong.view(), {}}); });
  const Tensor<float, 3> short_r({NB, BS, s.dr - 1});
  dec.r_pages = short_r.view();
  st::require_shape_error("q_rope", [&] { seqmix::mla_paged_decode(dec, {o.view(), {}}); });
  for (const float x : o) REQUIRE(x == 3.f);

  // Quantized: a float format, codes of the wrong width, params of the wrong group count, more
  // sequences than rows, a length beyond Y; the codes stay untouched.
  Tensor<std::uint8_t, 3> codes({N, 8, s.dc});
  Tensor<float, 4> params({N, 8, 1, 2});
  Tensor<float, 3> kr({N, 8, s.dr});
  codes.fill(7), params.fill(7.f), kr.fill(7.f);
  seqmix::MlaQuantizedLatents<float> cache{KvFormat::int8, 0, codes.view(), params.view(), kr.view(), s.dc};
  seqmix::MlaLatentAppendInputs qapp;
  std::vector<std::int32_t> zero = {0, 6};  // 6 + 3 > 8 positions
  qapp.c_kv = c_new.view(), qapp.k_rope = r_new.view(), qapp.cache_seqlens = zero;
  st::require_shape_error("cache_seqlens", [&] { seqmix::mla_latent_append(qapp, cache); });
  zero = {0, 5};
  qapp.cache_seqlens = zero;
  auto bad = cache;
  bad.format = KvFormat::f16;
  st::require_shape_error("cache.format", [&] { seqmix::mla_latent_append(qapp, bad); });
  bad = cache;
  bad.format = KvFormat::int4;  // codes hold d_c bytes, int4 rows take d_c / 2
  st::require_shape_error("cache.codes", [&] { seqmix::mla_latent_append(qapp, bad); });
  bad = cache;
  bad.group_size = 4;  // 4 groups, params hold 1
  st::require_shape_error("cache.params", [&] { seqmix::mla_latent_append(qapp, bad); });
  const auto c_three = st::random_tensor<3>({3, 1, s.dc}, 5), r_three = st::random_tensor<3>({3, 1, s.dr}, 6);
  const std::vector<std::int32_t> three = {0, 0, 0};
  seqmix::MlaLatentAppendInputs too_many = qapp;
  too_many.c_kv = c_three.view(), too_many.k_rope = r_three.view(), too_many.cache_seqlens = three;
  st::require_shape_error("c_kv", [&] { seqmix::mla_latent_append(too_many, cache); });
  for (const auto x : codes) REQUIRE(x == 7);
  for (const float x : params) REQUIRE(x == 7.f);
  for (const float x : kr) REQUIRE(x == 7.f);
  std::vector<std::int32_t> qlens = {8, 9};
  seqmix::MlaLatentDecodeInputs<float> qdec{q_nope.view(), q_rope.view(), cache, {}, qlens, w.views(s)};
  st::require_shape_error("cache_seqlens", [&] { seqmix::mla_latent_decode(qdec, {o.view(), {}}); });
  qdec.cache_seqlens = {};
  qdec.cache.format = KvFormat::int2;
  st::require_shape_error("cache.format", [&] { seqmix::mla_latent_decode(qdec, {o.view(), {}}); });
  for (const float x : o) REQUIRE(x == 3.f);
}
