// MlaLatentCache (issue 15 item 4: MLA's latent cache with KvCache's operations): appends in
// ragged pieces (rows / lengths, a fused rope, given positions) in every latent format (fp32 /
// f16 / bf16 / int8 / int4, groups) and rotary-key format, then
//   - the stored rows read back as the tokens rounded to the format (int8 / int4: the same codes
//     as mla_latent_append's quantized cache),
//   - mla_latent_cache_decode equals mla_decode over the same rows laid out densely bit for bit
//     (fp16 latents: over the fp16 tokens themselves), and reference::mla_latent_cache_decode,
//   - truncate / truncate_to_size then re-append equals never having appended the dropped tokens
//     (bytes read back, positions, decode), reset restarts a row,
//   - bad input is refused before the cache or an output changes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "seqmix/kv_cache/mla_cache.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::KvFormat;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct MlaCacheShape {
  index_t H, dn, dr, dc, dv;
};

struct MlaCacheWeights {
  Tensor<float, 3> kv_b;  // [H, d_nope + d_v, d_c]
  seqmix::MlaWeights views(const MlaCacheShape& s) const {
    return {kv_b.view().slice(1, 0, s.dn), kv_b.view().slice(1, s.dn, s.dv)};
  }
};

MlaCacheWeights mla_cache_weights(const MlaCacheShape& s) {
  MlaCacheWeights w{st::random_tensor<3>({s.H, s.dn + s.dv, s.dc}, 71)};
  for (float& x : w.kv_b) x *= 2.f / std::sqrt(static_cast<float>(s.dc));
  return w;
}

seqmix::RopeTable mla_cache_rope(index_t dr, index_t positions) {
  seqmix::RopeConfig c;
  c.layout = seqmix::RopeLayout::interleaved;
  c.rotary_dim = dr;
  return seqmix::RopeTable(c, positions);
}

// Every row of the cache, read back, laid out densely [B, Lmax, *] with the row lengths.
struct MlaCacheDense {
  Tensor<float, 3> c, r;
  std::vector<std::int64_t> lengths;
};

MlaCacheDense mla_cache_dense(const seqmix::MlaLatentCache& cache) {
  const auto& cfg = cache.config();
  index_t Lmax = 0;
  std::vector<std::int64_t> lengths;
  for (index_t b = 0; b < cfg.batch; ++b) lengths.push_back(cache.size(b)), Lmax = std::max(Lmax, cache.size(b));
  MlaCacheDense d{Tensor<float, 3>({cfg.batch, Lmax, cfg.latent_dim}), Tensor<float, 3>({cfg.batch, Lmax, cfg.rope_dim}),
                  lengths};
  for (index_t b = 0; b < cfg.batch; ++b)
    cache.read(b, d.c.view()[b].slice(0, 0, cache.size(b)), d.r.view()[b].slice(0, 0, cache.size(b)));
  return d;
}

// Decodes the cache and checks it against mla_decode over its rows (bit for bit) and the reference.
void mla_cache_check_decode(const seqmix::MlaLatentCache& cache, const MlaCacheShape& s, const MlaCacheWeights& w,
                            const seqmix::Executor& executor, Tensor<float, 3>* o_out = nullptr) {
  const index_t B = cache.config().batch;
  const auto q_nope = st::random_tensor<3>({B, s.H, s.dn}, 73), q_rope = st::random_tensor<3>({B, s.H, s.dr}, 74);
  Tensor<float, 3> o({B, s.H, s.dv}), o_dense({B, s.H, s.dv}), o_ref({B, s.H, s.dv});
  Tensor<float, 2> lse({B, s.H}), lse_dense({B, s.H}), lse_ref({B, s.H});
  seqmix::MlaCacheDecodeInputs in{q_nope.view(), q_rope.view(), &cache, w.views(s)};
  seqmix::mla_latent_cache_decode(in, {o.view(), lse.view()}, {}, executor);
  const MlaCacheDense d = mla_cache_dense(cache);
  seqmix::MlaDecodeInputs<float> din{q_nope.view(), q_rope.view(), d.c.view(), d.r.view(), d.lengths, w.views(s)};
  seqmix::mla_decode(din, {o_dense.view(), lse_dense.view()}, {}, executor);
  st::require_close("cache decode o vs mla_decode over its rows", o.view(), o_dense.view(), 0.0);
  for (index_t i = 0; i < lse.numel(); ++i) {
    INFO("lse entry " << i);
    REQUIRE(lse.data()[i] == lse_dense.data()[i]);  // bit for bit, -inf of an empty row included
  }
  seqmix::reference::mla_latent_cache_decode(in, {o_ref.view(), lse_ref.view()});
  st::require_close("cache decode o vs reference", o.view(), o_ref.view(), 2e-5);
  for (index_t i = 0; i < lse.numel(); ++i)
    if (std::isinf(lse_ref.data()[i])) {
      REQUIRE(lse.data()[i] == lse_ref.data()[i]);
    } else {
      REQUIRE(std::abs(lse.data()[i] - lse_ref.data()[i]) <= 2e-5 * (1 + std::abs(lse_ref.data()[i])));
    }
  if (o_out) *o_out = o;
}

// A bit-for-bit comparison of two caches' contents (rows read back, positions, next positions).
void mla_cache_require_same(const seqmix::MlaLatentCache& a, const seqmix::MlaLatentCache& b) {
  REQUIRE(a.bytes() == b.bytes());
  for (index_t row = 0; row < a.config().batch; ++row) {
    INFO("row " << row);
    REQUIRE(a.size(row) == b.size(row));
    REQUIRE(a.positions(row) == b.positions(row));
    REQUIRE(a.next_position(row) == b.next_position(row));
  }
  const MlaCacheDense da = mla_cache_dense(a), db = mla_cache_dense(b);
  st::require_close("latents read back", da.c.view(), db.c.view(), 0.0);
  st::require_close("rotary keys read back", da.r.view(), db.r.view(), 0.0);
}

seqmix::MlaLatentCacheConfig mla_cache_config(const MlaCacheShape& s, index_t B, KvFormat f, KvFormat rf, index_t group) {
  seqmix::MlaLatentCacheConfig c;
  c.batch = B, c.latent_dim = s.dc, c.rope_dim = s.dr, c.format = f, c.rope_format = rf, c.group_size = group;
  return c;
}

const MlaCacheShape kMlaCacheShapes[] = {{3, 16, 8, 40, 12}, {2, 8, 4, 17, 8}};

}  // namespace

TEST_CASE("MlaLatentCache ragged appends decode as mla_decode over the same rows", "[mla][kv_cache]") {
  struct Fmt {
    KvFormat f, rf;
    index_t group;
  };
  const Fmt fmts[] = {{KvFormat::f32, KvFormat::f32, 0}, {KvFormat::f16, KvFormat::f16, 0},
                      {KvFormat::bf16, KvFormat::f32, 0}, {KvFormat::int8, KvFormat::f16, 0},
                      {KvFormat::int4, KvFormat::bf16, 16}, {KvFormat::int8, KvFormat::f16, 7}};
  const index_t B = 3, T = 70;
  seqmix::ThreadPool pool(2);
  for (const MlaCacheShape& s : kMlaCacheShapes)
    for (const Fmt& fm : fmts) {
      INFO("format " << seqmix::format_name(fm.f) << " rope " << seqmix::format_name(fm.rf) << " group " << fm.group
                     << " d_c " << s.dc);
      const seqmix::RopeTable rope = mla_cache_rope(s.dr, 256);
      seqmix::MlaLatentCache cache(mla_cache_config(s, B, fm.f, fm.rf, fm.group));
      const auto c = st::random_tensor<3>({B, T, s.dc}, 75), r = st::random_tensor<3>({B, T, s.dr}, 76);
      // Piece 1: rows 2 and 0 (ragged 5 and 65 tokens); row 1 padding (-1). Piece 2: all rows, 1 token.
      const std::vector<std::int32_t> rows1 = {2, -1, 0}, lens1 = {5, 9, 65};
      seqmix::MlaCacheAppendInputs a1;
      a1.c_kv = c.view(), a1.k_rope = r.view(), a1.rows = rows1, a1.lengths = lens1, a1.rope = &rope;
      cache.append(a1);
      seqmix::MlaCacheAppendInputs a2;
      a2.c_kv = c.view().slice(1, T - 1, 1), a2.k_rope = r.view().slice(1, T - 1, 1), a2.rope = &rope;
      cache.append(a2);
      REQUIRE(cache.size(0) == 66);
      REQUIRE(cache.size(1) == 1);
      REQUIRE(cache.size(2) == 6);
      REQUIRE(cache.next_position(0) == 66);
      REQUIRE(cache.bytes() == 73u * static_cast<std::size_t>(cache.bytes_per_token()));
      // What is stored: row 0 holds tokens 0..64 of sequence 2 then token T-1 of sequence 0.
      Tensor<float, 2> cr({66, s.dc}), rr({66, s.dr});
      cache.read(0, cr.view(), rr.view());
      Tensor<float, 4> r_rot({1, 66, 1, s.dr}), r_raw({1, 66, 1, s.dr});
      for (index_t j = 0; j < 66; ++j)
        for (index_t e = 0; e < s.dr; ++e) r_raw(0, j, 0, e) = j < 65 ? r(2, j, e) : r(0, T - 1, e);
      seqmix::reference::rope(rope, {r_raw.cview(), {}}, {r_rot.view()});
      for (index_t j = 0; j < 66; ++j) {
        const index_t src_b = j < 65 ? 2 : 0, src_t = j < 65 ? j : T - 1;
        for (index_t e = 0; e < s.dr; ++e)
          REQUIRE(std::abs(rr(j, e) - r_rot(0, j, 0, e)) <= (fm.rf == KvFormat::f32 ? 1e-5 : 1e-2) * (1 + std::abs(r_rot(0, j, 0, e))));
        if (fm.f == KvFormat::f32 || fm.f == KvFormat::f16 || fm.f == KvFormat::bf16) {
          for (index_t e = 0; e < s.dc; ++e) {
            const float x = c(src_b, src_t, e);
            const float want = fm.f == KvFormat::f32 ? x
                               : fm.f == KvFormat::f16 ? static_cast<float>(static_cast<seqmix::f16>(x))
                                                       : static_cast<float>(static_cast<seqmix::bf16>(x));
            REQUIRE(cr(j, e) == want);
          }
        }
      }
      if (fm.f == KvFormat::int8 || fm.f == KvFormat::int4) {  // the same codes as mla_latent_append's cache
        const index_t rb = seqmix::row_bytes(fm.f, s.dc), g = seqmix::quant::group_count(s.dc, fm.group);
        std::vector<std::uint8_t> codes(static_cast<std::size_t>(66 * rb));
        std::vector<float> params(static_cast<std::size_t>(66 * g * 2)), rk(static_cast<std::size_t>(66 * s.dr));
        seqmix::MlaQuantizedLatents<float> q{fm.f, fm.group,
                                             seqmix::TensorView<std::uint8_t, 3>(codes.data(), {1, 66, rb}),
                                             seqmix::TensorView<float, 4>(params.data(), {1, 66, g, 2}),
                                             seqmix::TensorView<float, 3>(rk.data(), {1, 66, s.dr}), s.dc};
        Tensor<float, 3> cin({1, 66, s.dc}), rin({1, 66, s.dr});
        for (index_t j = 0; j < 66; ++j) {
          for (index_t e = 0; e < s.dc; ++e) cin(0, j, e) = j < 65 ? c(2, j, e) : c(0, T - 1, e);
          for (index_t e = 0; e < s.dr; ++e) rin(0, j, e) = r_raw(0, j, 0, e);
        }
        const std::vector<std::int64_t> zero = {0};
        seqmix::MlaLatentAppendInputs la;
        la.c_kv = cin.view(), la.k_rope = rin.view(), la.cache_seqlens = zero;
        seqmix::mla_latent_append(la, q);
        Tensor<float, 3> deq({1, 66, s.dc});
        seqmix::mla_latent_dequantize(q, deq.view());
        st::require_close("int latents vs mla_latent_append's", cr.view(), deq.view()[0], 0.0);
      }
      const MlaCacheWeights w = mla_cache_weights(s);
      mla_cache_check_decode(cache, s, w, seqmix::serial_executor());
      mla_cache_check_decode(cache, s, w, pool);
      if (fm.f == KvFormat::f16 && fm.rf == KvFormat::f16) {  // mla_decode over the fp16 tokens themselves
        const MlaCacheDense d = mla_cache_dense(cache);
        Tensor<seqmix::f16, 3> c16({B, 66, s.dc}), r16({B, 66, s.dr});
        for (index_t i = 0; i < c16.numel(); ++i) c16.data()[i] = static_cast<seqmix::f16>(d.c.data()[i]);
        for (index_t i = 0; i < r16.numel(); ++i) r16.data()[i] = static_cast<seqmix::f16>(d.r.data()[i]);
        const auto q_nope = st::random_tensor<3>({B, s.H, s.dn}, 73), q_rope = st::random_tensor<3>({B, s.H, s.dr}, 74);
        Tensor<float, 3> o({B, s.H, s.dv}), o16({B, s.H, s.dv});
        seqmix::mla_latent_cache_decode({q_nope.view(), q_rope.view(), &cache, w.views(s)}, {o.view()});
        seqmix::mla_decode(seqmix::MlaDecodeInputs<seqmix::f16>{q_nope.view(), q_rope.view(), c16.view(), r16.view(),
                                                                d.lengths, w.views(s)},
                           {o16.view()});
        st::require_close("cache decode vs mla_decode over fp16 tokens", o.view(), o16.view(), 0.0);
      }
    }
}

TEST_CASE("MlaLatentCache truncate then re-append equals never having appended", "[mla][kv_cache]") {
  const MlaCacheShape s = kMlaCacheShapes[0];
  const index_t B = 2, T = 40;
  for (const KvFormat f : {KvFormat::f16, KvFormat::int4, KvFormat::int8}) {
    INFO("format " << seqmix::format_name(f));
    const seqmix::RopeTable rope = mla_cache_rope(s.dr, 128);
    const auto c = st::random_tensor<3>({B, T, s.dc}, 81), r = st::random_tensor<3>({B, T, s.dr}, 82);
    const auto c2 = st::random_tensor<3>({B, T, s.dc}, 83), r2 = st::random_tensor<3>({B, T, s.dr}, 84);
    const auto append = [&](seqmix::MlaLatentCache& cache, const Tensor<float, 3>& cc, const Tensor<float, 3>& rr,
                            index_t t0, index_t n) {
      seqmix::MlaCacheAppendInputs in;
      in.c_kv = cc.view().slice(1, t0, n), in.k_rope = rr.view().slice(1, t0, n), in.rope = &rope;
      cache.append(in);
    };
    seqmix::MlaLatentCache spec(mla_cache_config(s, B, f, KvFormat::f16, 8)), plain(mla_cache_config(s, B, f, KvFormat::f16, 8));
    append(spec, c, r, 0, 25), append(plain, c, r, 0, 25);
    append(spec, c, r, 25, 15);  // speculative tokens, rejected below
    spec.truncate(0, 25);
    spec.truncate_to_size(1, 25);
    spec.truncate(1, 1000);  // beyond the row: nothing happens
    mla_cache_require_same(spec, plain);
    append(spec, c2, r2, 0, 7), append(plain, c2, r2, 0, 7);  // re-append other tokens at the same positions
    mla_cache_require_same(spec, plain);
    const MlaCacheWeights w = mla_cache_weights(s);
    Tensor<float, 3> o_spec, o_plain;
    mla_cache_check_decode(spec, s, w, seqmix::serial_executor(), &o_spec);
    mla_cache_check_decode(plain, s, w, seqmix::serial_executor(), &o_plain);
    st::require_close("decode after rollback", o_spec.view(), o_plain.view(), 0.0);
    // Given positions with gaps: truncate at a position between two tokens keeps those below it.
    seqmix::MlaLatentCache gaps(mla_cache_config(s, 1, f, KvFormat::f32, 0));
    const std::vector<std::int64_t> pos = {3, 10, 11, 50};
    seqmix::MlaCacheAppendInputs in;
    in.c_kv = c.view().slice(0, 0, 1).slice(1, 0, 4), in.k_rope = r.view().slice(0, 0, 1).slice(1, 0, 4);
    in.positions = seqmix::ConstView<std::int64_t, 2>(pos.data(), {1, 4});
    gaps.append(in);
    REQUIRE(gaps.next_position(0) == 51);
    gaps.truncate(0, 11);
    REQUIRE(gaps.positions(0) == std::vector<std::int64_t>{3, 10});
    REQUIRE(gaps.next_position(0) == 11);
    gaps.reset(0);
    REQUIRE(gaps.size(0) == 0);
    REQUIRE(gaps.next_position(0) == 0);
    REQUIRE(gaps.bytes() == 0u);
  }
}

TEST_CASE("MlaLatentCache refuses bad input before any change", "[mla][kv_cache][errors]") {
  const MlaCacheShape s = kMlaCacheShapes[1];
  const index_t B = 2, T = 6;
  // Configurations.
  auto bad = mla_cache_config(s, B, KvFormat::int2, KvFormat::f16, 0);
  REQUIRE_THROWS_AS(seqmix::MlaLatentCache(bad), seqmix::ShapeError);
  bad = mla_cache_config(s, B, KvFormat::f16, KvFormat::int8, 0);
  REQUIRE_THROWS_AS(seqmix::MlaLatentCache(bad), seqmix::ShapeError);
  bad = mla_cache_config(s, 0, KvFormat::f16, KvFormat::f16, 0);
  REQUIRE_THROWS_AS(seqmix::MlaLatentCache(bad), seqmix::ShapeError);
  bad = mla_cache_config(s, B, KvFormat::int8, KvFormat::f16, -1);
  REQUIRE_THROWS_AS(seqmix::MlaLatentCache(bad), seqmix::ShapeError);

  const seqmix::RopeTable rope = mla_cache_rope(s.dr, 8);
  seqmix::MlaLatentCache cache(mla_cache_config(s, B, KvFormat::int8, KvFormat::f16, 0));
  const auto c = st::random_tensor<3>({B, T, s.dc}, 91), r = st::random_tensor<3>({B, T, s.dr}, 92);
  seqmix::MlaCacheAppendInputs good;
  good.c_kv = c.view().slice(1, 0, 3), good.k_rope = r.view().slice(1, 0, 3), good.rope = &rope;
  cache.append(good);
  seqmix::MlaLatentCache before(mla_cache_config(s, B, KvFormat::int8, KvFormat::f16, 0));
  before.append(good);
  const auto refused = [&](const seqmix::MlaCacheAppendInputs& in) {
    REQUIRE_THROWS_AS(cache.append(in), seqmix::ShapeError);
    mla_cache_require_same(cache, before);
  };
  const Tensor<float, 3> c_wide({B, T, s.dc + 1}), r_short({B, T - 1, s.dr}), c_three({3, T, s.dc});
  seqmix::MlaCacheAppendInputs in = good;
  in.c_kv = c_wide.view();
  refused(in);  // d_c
  in = good, in.k_rope = r_short.view();
  refused(in);  // k_rope's T
  in = good, in.c_kv = c_three.view(), in.k_rope = seqmix::ConstView<float, 3>();
  refused(in);  // batch without rows
  const std::vector<std::int32_t> rows_dup = {1, 1}, rows_out = {0, 2}, lens_long = {3, 7}, lens_short = {1};
  in = good, in.rows = rows_dup;
  refused(in);
  in = good, in.rows = rows_out;
  refused(in);
  in = good, in.lengths = lens_long;
  refused(in);
  in = good, in.lengths = lens_short;
  refused(in);
  const std::vector<std::int64_t> pos_old = {2, 3, 4, 5, 6, 7}, pos_flat = {3, 4, 4, 5, 6, 7};
  in = good, in.rope = nullptr, in.positions = seqmix::ConstView<std::int64_t, 2>(pos_old.data(), {B, 3});
  refused(in);  // position 2 of row 0 is below next_position 3
  in = good, in.rope = nullptr, in.positions = seqmix::ConstView<std::int64_t, 2>(pos_flat.data(), {B, 3});
  refused(in);  // not strictly increasing
  in = good, in.c_kv = c.view(), in.k_rope = r.view();
  refused(in);  // positions 3..8 pass the rope table's 8 positions
  REQUIRE_THROWS_AS(cache.truncate(2, 0), seqmix::ShapeError);
  REQUIRE_THROWS_AS(cache.truncate(0, -1), seqmix::ShapeError);
  REQUIRE_THROWS_AS(cache.truncate_to_size(0, -1), seqmix::ShapeError);
  REQUIRE_THROWS_AS(cache.reset(-1), seqmix::ShapeError);
  Tensor<float, 2> cr({2, s.dc}), rr({3, s.dr});
  REQUIRE_THROWS_AS(cache.read(0, cr.view(), rr.view()), seqmix::ShapeError);
  mla_cache_require_same(cache, before);

  // Decode: wrong batch, wrong d_r, null cache; o untouched.
  const MlaCacheWeights w = mla_cache_weights(s);
  const auto q_nope = st::random_tensor<3>({B, s.H, s.dn}, 93), q_rope = st::random_tensor<3>({B, s.H, s.dr}, 94);
  const auto q_nope3 = st::random_tensor<3>({3, s.H, s.dn}, 95), q_rope3 = st::random_tensor<3>({3, s.H, s.dr}, 96);
  const auto q_rope_wide = st::random_tensor<3>({B, s.H, s.dr + 2}, 97);
  Tensor<float, 3> o({B, s.H, s.dv}), o3({3, s.H, s.dv});
  std::fill(o.begin(), o.end(), 7.f);
  REQUIRE_THROWS_AS(seqmix::mla_latent_cache_decode({q_nope3.view(), q_rope3.view(), &cache, w.views(s)}, {o3.view()}),
                    seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::mla_latent_cache_decode({q_nope.view(), q_rope_wide.view(), &cache, w.views(s)}, {o.view()}),
                    seqmix::ShapeError);
  REQUIRE_THROWS_AS(seqmix::mla_latent_cache_decode({q_nope.view(), q_rope.view(), nullptr, w.views(s)}, {o.view()}),
                    seqmix::ShapeError);
  REQUIRE_THROWS_AS(
      seqmix::reference::mla_latent_cache_decode({q_nope.view(), q_rope.view(), nullptr, w.views(s)}, {o.view()}),
      seqmix::ShapeError);
  for (float x : o) REQUIRE(x == 7.f);

  // An arena too small for the append: KvArenaFull and the cache unchanged.
  std::vector<unsigned char> buffer(4096);
  seqmix::KvArena arena(buffer.data(), buffer.size());
  auto acfg = mla_cache_config(s, B, KvFormat::f32, KvFormat::f32, 0);
  acfg.arena = &arena;
  seqmix::MlaLatentCache small(acfg);
  seqmix::MlaCacheAppendInputs one;
  one.c_kv = c.view().slice(1, 0, 1), one.k_rope = r.view().slice(1, 0, 1);
  small.append(one);
  const Tensor<float, 3> c_big({B, 64, s.dc}), r_big({B, 64, s.dr});
  seqmix::MlaCacheAppendInputs big;
  big.c_kv = c_big.view(), big.k_rope = r_big.view();
  REQUIRE_THROWS_AS(small.append(big), seqmix::KvArenaFull);
  REQUIRE(small.size(0) == 1);
  REQUIRE(small.size(1) == 1);
  REQUIRE(small.next_position(0) == 1);
}
