// mla: multi-head latent attention (DeepSeek-V2/V3; docs/operators.md section 10). This header
// holds the argument structs, their validation and the naive expanded definition
// (seqmix::reference::mla); the expanded prefill and the absorbed decode are in mla.hpp.
//
// Each cached token j keeps a latent c_j [d_c] and one rotary key r_j [d_r] shared by every
// head (rotated once when cached, e.g. by seqmix::rope). Head h expands them with its slices of
// DeepSeek's kv_b_proj, W_uk[h] [d_nope, d_c] and W_uv[h] [d_v, d_c]:
//   k_h,j = [W_uk[h] c_j ; r_j]        v_h,j = W_uv[h] c_j
//   s_h,ij = scale * (q_nope_h,i . W_uk[h] c_j + q_rope_h,i . r_j),  scale default 1/sqrt(d_nope + d_r)
//   o_h,i  = sum_{visible j} softmax_j(s_h,ij) v_h,j,      lse_h,i = log sum_j exp(s_h,ij)
// Visible: j <= pos_i with pos_i = Tk - Tq + i (bottom-right causal) when causal, else all j < Tk.
// The absorbed form (decode) computes the same with q_lat = W_uk[h]^T q_nope (d_c), scores
// q_lat . c_j against the latent cache directly, and W_uv[h] applied once to sum_j p_j c_j.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Options of mla_prefill, mla_decode and reference::mla.
struct MlaOptions {
  std::optional<float> scale;  ///< multiplies the whole score; default 1/sqrt(d_nope + d_r)
  bool causal = true;          ///< prefill: bottom-right causal (decode sees its whole cache)
};

/// The up-projections of kv_b_proj per head. A PyTorch weight [H*(d_nope+d_v), d_c] is the view
/// [H, d_nope+d_v, d_c]: w_uk is its rows [0, d_nope) and w_uv rows [d_nope, d_nope+d_v), as
/// strided views without a copy.
struct MlaWeights {
  ConstView<float, 3> w_uk;  ///< [H, d_nope, d_c]
  ConstView<float, 3> w_uv;  ///< [H, d_v, d_c]
};

/// Prefill: queries of the new tokens against c_kv / k_rope of the whole context (the new
/// tokens last). C is the latent storage: float, f16 or bf16.
template <class C = float>
struct MlaPrefillInputs {
  ConstView<float, 4> q_nope;  ///< [B, Tq, H, d_nope]
  ConstView<float, 4> q_rope;  ///< [B, Tq, H, d_r], rotated
  ConstView<C, 3> c_kv;        ///< [B, Tk, d_c]
  ConstView<C, 3> k_rope;      ///< [B, Tk, d_r], rotated
  MlaWeights weights;  ///< per-head up-projections
};

/// mla_prefill's outputs.
struct MlaPrefillOutputs {
  TensorView<float, 4> o;    ///< [B, Tq, H, d_v]
  TensorView<float, 3> lse = {}; ///< [B, Tq, H], optional
};

/// Decode: one query per sequence against the latent cache rows [0, cache_seqlens[b]).
template <class C = float>
struct MlaDecodeInputs {
  ConstView<float, 3> q_nope;  ///< [B, H, d_nope]
  ConstView<float, 3> q_rope;  ///< [B, H, d_r], rotated
  ConstView<C, 3> c_kv;        ///< [B, Tmax, d_c]: the latent cache
  ConstView<C, 3> k_rope;      ///< [B, Tmax, d_r]
  IndexList cache_seqlens = {}; ///< [B], optional: cached tokens per row, <= Tmax (default Tmax)
  MlaWeights weights;  ///< per-head up-projections
};

/// mla_decode's outputs.
struct MlaDecodeOutputs {
  TensorView<float, 3> o;    ///< [B, H, d_v]
  TensorView<float, 2> lse = {}; ///< [B, H], optional
};

namespace detail {

struct MlaDims {
  index_t B, Tq, Tk, H, dn, dr, dc, dv;
  float scale;
};

inline MlaDims validate_mla_weights(const ArgCheck& check, const MlaWeights& w, index_t H, index_t dn, index_t dc,
                                    const MlaOptions& options) {
  check.shape("w_uk", w.w_uk, std::array<index_t, 3>{H, dn, dc}, "H,d_nope,d_c");
  check.shape("w_uv", w.w_uv, std::array<index_t, 3>{H, -1, dc}, "H,d_v,d_c");
  if (options.scale) check.finite(*options.scale, "options.scale");
  MlaDims d{};
  d.dv = w.w_uv.size(1);
  return d;
}

template <class C>
MlaDims validate_mla_prefill(const ArgCheck& check, const MlaPrefillInputs<C>& in, const MlaPrefillOutputs& out,
                             const MlaOptions& options) {
  check.shape("q_nope", in.q_nope, std::array<index_t, 4>{-1, -1, -1, -1}, "B,Tq,H,d_nope");
  const index_t B = in.q_nope.size(0), Tq = in.q_nope.size(1), H = in.q_nope.size(2), dn = in.q_nope.size(3);
  check.shape("q_rope", in.q_rope, std::array<index_t, 4>{B, Tq, H, -1}, "B,Tq,H,d_r");
  const index_t dr = in.q_rope.size(3);
  check.shape("c_kv", in.c_kv, std::array<index_t, 3>{B, -1, -1}, "B,Tk,d_c");
  const index_t Tk = in.c_kv.size(1), dc = in.c_kv.size(2);
  check.shape("k_rope", in.k_rope, std::array<index_t, 3>{B, Tk, dr}, "B,Tk,d_r");
  MlaDims d = validate_mla_weights(check, in.weights, H, dn, dc, options);
  check.shape("o", out.o, std::array<index_t, 4>{B, Tq, H, d.dv}, "B,Tq,H,d_v");
  check.optional_shape("lse", out.lse, std::array<index_t, 3>{B, Tq, H}, "B,Tq,H");
  if (options.causal && Tq > Tk)
    check.fail("c_kv", "holds Tk = " + std::to_string(Tk) + " tokens, fewer than the Tq = " + std::to_string(Tq) +
                           " queries it must include (causal)");
  for (const auto* name : {"o", "lse"}) {
    const bool is_o = name[0] == 'o';
    const bool overlaps = is_o ? (views_overlap(out.o, in.q_nope) || views_overlap(out.o, in.q_rope) ||
                                  views_overlap(out.o, in.c_kv) || views_overlap(out.o, in.k_rope))
                               : (views_overlap(out.lse, in.q_nope) || views_overlap(out.lse, in.q_rope) ||
                                  views_overlap(out.lse, in.c_kv) || views_overlap(out.lse, in.k_rope) ||
                                  views_overlap(out.lse, out.o));
    if (overlaps) check.fail(name, "overlaps an input or o; mla cannot write in place");
  }
  d.B = B, d.Tq = Tq, d.Tk = Tk, d.H = H, d.dn = dn, d.dr = dr, d.dc = dc;
  d.scale = options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(dn + dr));
  return d;
}

template <class C>
MlaDims validate_mla_decode(const ArgCheck& check, const MlaDecodeInputs<C>& in, const MlaDecodeOutputs& out,
                            const MlaOptions& options) {
  check.shape("q_nope", in.q_nope, std::array<index_t, 3>{-1, -1, -1}, "B,H,d_nope");
  const index_t B = in.q_nope.size(0), H = in.q_nope.size(1), dn = in.q_nope.size(2);
  check.shape("q_rope", in.q_rope, std::array<index_t, 3>{B, H, -1}, "B,H,d_r");
  const index_t dr = in.q_rope.size(2);
  check.shape("c_kv", in.c_kv, std::array<index_t, 3>{B, -1, -1}, "B,Tmax,d_c");
  const index_t Tk = in.c_kv.size(1), dc = in.c_kv.size(2);
  check.shape("k_rope", in.k_rope, std::array<index_t, 3>{B, Tk, dr}, "B,Tmax,d_r");
  MlaDims d = validate_mla_weights(check, in.weights, H, dn, dc, options);
  check.shape("o", out.o, std::array<index_t, 3>{B, H, d.dv}, "B,H,d_v");
  check.optional_shape("lse", out.lse, std::array<index_t, 2>{B, H}, "B,H");
  const IndexList& lens = in.cache_seqlens;
  if (lens.has_value()) {
    if (lens.dangling()) check.fail("cache_seqlens", "has a null data pointer");
    if (lens.size() != B)
      check.fail("cache_seqlens", "must hold B = " + std::to_string(B) + " entries, got " + std::to_string(lens.size()));
    for (index_t b = 0; b < B; ++b)
      if (lens[b] < 0 || lens[b] > Tk)
        check.fail("cache_seqlens", "entry " + std::to_string(b) + " is " + std::to_string(lens[b]) +
                                        ", outside [0, Tmax = " + std::to_string(Tk) + "]");
  }
  const bool o_overlaps = views_overlap(out.o, in.q_nope) || views_overlap(out.o, in.q_rope) ||
                          views_overlap(out.o, in.c_kv) || views_overlap(out.o, in.k_rope);
  if (o_overlaps) check.fail("o", "overlaps an input; mla cannot write in place");
  if (views_overlap(out.lse, in.q_nope) || views_overlap(out.lse, in.q_rope) || views_overlap(out.lse, in.c_kv) ||
      views_overlap(out.lse, in.k_rope) || views_overlap(out.lse, out.o))
    check.fail("lse", "overlaps an input or o");
  d.B = B, d.Tq = 1, d.Tk = Tk, d.H = H, d.dn = dn, d.dr = dr, d.dc = dc;
  d.scale = options.scale ? *options.scale : 1.f / std::sqrt(static_cast<float>(dn + dr));
  return d;
}

template <class C>
double latent_value(const C& x) {
  return static_cast<double>(static_cast<float>(x));
}

}  // namespace detail

namespace reference {

/// The naive expanded form in double: every head's keys and values built from the latents,
/// then softmax attention.
template <class C>
void mla(const MlaPrefillInputs<C>& in, const MlaPrefillOutputs& out, const MlaOptions& options = {}) {
  const detail::MlaDims d = detail::validate_mla_prefill(ArgCheck("reference::mla"), in, out, options);
  const MlaWeights& w = in.weights;
  std::vector<double> k_nope(static_cast<std::size_t>(d.Tk * d.dn)), v(static_cast<std::size_t>(d.Tk * d.dv)),
      s(static_cast<std::size_t>(d.Tk));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.H; ++h) {
      for (index_t j = 0; j < d.Tk; ++j) {
        for (index_t e = 0; e < d.dn; ++e) {
          double acc = 0;
          for (index_t c = 0; c < d.dc; ++c) acc += w.w_uk(h, e, c) * detail::latent_value(in.c_kv(b, j, c));
          k_nope[static_cast<std::size_t>(j * d.dn + e)] = acc;
        }
        for (index_t e = 0; e < d.dv; ++e) {
          double acc = 0;
          for (index_t c = 0; c < d.dc; ++c) acc += w.w_uv(h, e, c) * detail::latent_value(in.c_kv(b, j, c));
          v[static_cast<std::size_t>(j * d.dv + e)] = acc;
        }
      }
      for (index_t i = 0; i < d.Tq; ++i) {
        const index_t visible = options.causal ? d.Tk - d.Tq + i + 1 : d.Tk;
        double max = -std::numeric_limits<double>::infinity();
        for (index_t j = 0; j < visible; ++j) {
          double acc = 0;
          for (index_t e = 0; e < d.dn; ++e) acc += in.q_nope(b, i, h, e) * k_nope[static_cast<std::size_t>(j * d.dn + e)];
          for (index_t e = 0; e < d.dr; ++e) acc += in.q_rope(b, i, h, e) * detail::latent_value(in.k_rope(b, j, e));
          s[static_cast<std::size_t>(j)] = d.scale * acc;
          max = std::max(max, s[static_cast<std::size_t>(j)]);
        }
        // Attention's non-finite rule (docs/reliability.md): a NaN or +inf logit makes o and lse
        // NaN; a row whose every logit is -inf (or that sees no key) gives o = 0, lse = -inf; a
        // key of weight exactly 0 takes no part, so its inf / NaN value reaches nothing (the
        // naive loop gave NaN for both, where the prefill and decode give 0 / a finite row).
        bool nan = max == std::numeric_limits<double>::infinity();
        for (index_t j = 0; j < visible; ++j) nan = nan || std::isnan(s[static_cast<std::size_t>(j)]);
        const bool empty = !nan && max == -std::numeric_limits<double>::infinity();
        double sum = 0;
        for (index_t j = 0; j < visible && !nan && !empty; ++j) sum += std::exp(s[static_cast<std::size_t>(j)] - max);
        for (index_t e = 0; e < d.dv; ++e) {
          double acc = 0;
          for (index_t j = 0; j < visible && !nan && !empty; ++j) {
            const double p = std::exp(s[static_cast<std::size_t>(j)] - max);
            if (p != 0.0) acc += p * v[static_cast<std::size_t>(j * d.dv + e)];
          }
          out.o(b, i, h, e) = nan ? std::numeric_limits<float>::quiet_NaN() : empty ? 0.f : static_cast<float>(acc / sum);
        }
        if (out.lse.has_value())
          out.lse(b, i, h) = nan     ? std::numeric_limits<float>::quiet_NaN()
                             : empty ? -std::numeric_limits<float>::infinity()
                                     : static_cast<float>(max + std::log(sum));
      }
    }
}

}  // namespace reference
}  // namespace seqmix
