// The chunkwise-parallel form shared by the family (README.md in the parent folder derives it).
// Internal.
//
// Per head, tokens are cut into chunks of C. With Bk_i = sum_{s<=i} g_s the within-chunk
// cumulative log-decay of key i (per channel) and Bq_i the query's (Bk_i for an inclusive
// readout, Bk_{i-1} for rwkv6's exclusive one), one chunk does
//   O   = (Q * exp(Bq)) S                                   inter-chunk: the carried state
//   A   = [sum_k Q_ik K_jk exp(Bq_ik - Bk_jk)]_{j<=i}       intra-chunk scores (j<i: rwkv6,
//   O  += A V                                                whose diagonal is q.(u*k))
//   S   = diag(exp(Bk_last)) S + (K * exp(Bk_last - Bk))^T V   state passing
// Every exponent above is <= 0 except inside A, which is computed in a safe way:
//  - scalar gates: A = (Q K^T) * exp(bq_i - bk_j), an exp only where j <= i;
//  - channel gates whose decay over the chunk is at most kAnchorRange: one GEMM on
//    Q*exp(Bq - m) and K*exp(m - Bk) with m half way, so every factor stays within
//    exp(+-kAnchorRange/2);
//  - stronger decays: sub-chunks of kSubChunk. Block (I, J<I) anchors at r = first(I) - 1, which
//    makes both exp(Bq_i - Bk_r) and exp(Bk_r - Bk_j) <= 1; diagonal blocks take the exp of the
//    exact (non-positive) difference for each pair.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include <Eigen/Core>

#include "seqmix/core/chunkwise/causal_product.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/linear_attention/diagonal_decay/bf16_tiles.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunk_ops.hpp"
#include "seqmix/linear_attention/diagonal_decay/chunk_products.hpp"
#include "seqmix/linear_attention/diagonal_decay/head.hpp"

namespace seqmix::detail::la {

// 60: with the anchor half way, factors stay within exp(+-30) ~ 1e13, so even masked-out
// products of O(1) inputs are far from fp32 overflow (3e38) and kept ones from underflow.
constexpr float kAnchorRange = 60.f;
// A chunk whose cumulative log-decay falls below -kPrefixRange runs as pieces of decay at most
// kPieceRange each (driver.hpp, ChunkKernel::run_in_pieces): fp32 prefix sums of magnitude
// kPrefixRange + 128 still resolve a difference to ~3e-5, twice that no longer meets the 1e-4
// tolerance of the chunked forms.
constexpr float kPrefixRange = 256.f;
constexpr float kPieceRange = 128.f;
// 16: the diagonal blocks cost C*16/2 pairwise exps; off-diagonal blocks stay GEMMs.
constexpr index_t kSubChunk = 16;

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVector = Eigen::Matrix<float, 1, Eigen::Dynamic>;

// C rounded up to whole vectors: the columns the register-tiled scores write (chunk_products.hpp).
inline index_t vector_padded(index_t C) { return (C + simd::kWidth - 1) / simd::kWidth * simd::kWidth; }

// Per-thread scratch of the chunked form, allocated once per parallel block (never per chunk).
// A and KT start zeroed: the tiled scores read KT and write A a few columns past the chunk's
// last token (values never used), and those columns must hold no uninitialized floats.
struct ChunkWorkspace {
  ChunkWorkspace(index_t C, index_t K, index_t Kf, index_t Vp)
      : Q(C, Kf), Kc(C, Kf), QD(C, Kf), KD(C, Kf), KT(RowMatrix::Zero(Kf, vector_padded(C))), Vc(C, Vp), O(C, Vp),
        A(RowMatrix::Zero(C, vector_padded(C))), Bq(C, K), Bk(C, K), m(K), bonus(C), bk0(C), in_row(K) {}
  RowMatrix Q, Kc;     // [C,Kf] phi(q)*scale, phi(k)
  RowMatrix QD, KD;    // [C,Kf] decayed copies (inter-chunk, anchored intra, state passing)
  RowMatrix KT;        // [Kf,Cpad] the scores' keys (decayed or not), transposed (tiled steps)
  RowMatrix Vc, O;     // [C,Vp] values (+ ones column), outputs
  RowMatrix A;         // [C,Cpad] intra-chunk scores (the first L columns used)
  RowMatrix Bq, Bk;    // [C,K] cumulative log-decays (column 0 only for scalar gates)
  bool bq_is_bk = false;  // an inclusive readout: Bq is Bk, not copied (load_chunk)
  RowVector m;         // [K] anchor
  RowVector bonus;     // [C] rwkv6 diagonal
  RowVector bk0;       // [C] column 0 of Bk, contiguous (scalar gates)
  RowVector in_row;    // [K] a 16-bit q or k row widened before its feature map (InputRows)
  bool v_words = false;  // bf16 steps: V's pair words packed by the intra step for the state update
  bool q_words = false;  // bf16 steps: the scratch's `a` holds the inter step's Q * exp(Bq) words
  bool kd_exp_bq = false;  // bf16 steps, channel gates, inclusive readout: KD holds exp(Bq) = exp(Bk)
  bool key_words = false;  // bf16 steps: the scratch's `b` holds the undecayed keys' words, transposed
  bool keys_anchored = false;  // tiled steps: KD holds K * exp(Bk_last / 2 - Bk) from the scores
  // bf16 steps: load_chunk packed the rows straight into the steps' words (load_chunk_words); Q,
  // Kc and Vc were not written, so only the bf16 steps may run on this chunk.
  bool rows_packed = false;
  chunkwise::ProductScratch finite_values;  // add_lower_product's scratch (non-finite values only)

  // A workspace kept across calls (driver.hpp, ChunkedPrefillScratch) is reused only for the
  // same dimensions, after reset() puts back what the constructor initialized (the zeroed KT, A
  // and the flags; every other member is written before it is read), so a call computes what it
  // would on a fresh one, bit for bit.
  bool fits(index_t C, index_t K, index_t Kf, index_t Vp) const {
    return Q.rows() == C && Q.cols() == Kf && Bq.cols() == K && Vc.cols() == Vp;
  }
  void reset() {
    KT.setZero();
    A.setZero();
    forget_chunk_operands();
  }
  // The queries' cumulative log-decays: Bk itself for an inclusive readout.
  const RowMatrix& query_decays() const { return bq_is_bk ? Bk : Bq; }
  // A new chunk: no step's packed words or kept operands carry over.
  void forget_chunk_operands() { v_words = q_words = kd_exp_bq = key_words = keys_anchored = rows_packed = false; }
  std::size_t bytes() const {
    const index_t floats = Q.size() + Kc.size() + QD.size() + KD.size() + KT.size() + Vc.size() + O.size() +
                           A.size() + Bq.size() + Bk.size() + m.size() + bonus.size() + bk0.size() + in_row.size() +
                           finite_values.size();
    return static_cast<std::size_t>(floats) * sizeof(float);
  }
};

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// ---- bf16 dot-product chunk steps (HeadProblem::bf16_dot; GLA's Bf16Compute::dot) ---------------
//
// The same steps with every GEMM on vdpbf16ps (core/bf16_gemm.hpp): the fp32 operands of the
// chunk (decayed q and k, the values, the intra-chunk scores, the carried state) are rounded to
// bf16 as they are packed (bf16_tiles.hpp), products accumulate in fp32, and everything else
// (cumulative gates, exps, masks, the state itself) stays fp32. A chunk holding a non-finite
// value, and channel gates too strong for the anchored GEMM, take the fp32 steps.
// As the delta rules' steps (delta_update/wy.hpp): every product is written or accumulated
// straight into O and S (gemm_bf16_into), the scalar gate's row decays are applied as Q and K
// are packed, the scores and A V run over 16-row strips up to the diagonal, and V is packed once
// for A V and the state update. With the channel gate's exps below, the bf16 call ran 1.21x
// (channel) / 1.24x (scalar gate) faster at gla-1.3b T 8192, one thread.
// Q is packed once per chunk, as Q * exp(Bq) for the state read-out, and the scores take those
// words as they are (kSharedQueryRange); V is checked finite as it is packed; the keys' rescale
// for the state update is applied as they are packed. At gla-k128 (K = V = 128) the products
// already run near the dot-product peak (perf), so what is left to cut is these passes.

// The row decay of a scalar gate, exp(s * b_i + c) for i < n (b: column 0 of Bq or Bk), in out.
template <class Rows>
void scalar_decays(const Rows& B, index_t n, float s, float c, float* out) {
  for (index_t i = 0; i < n; ++i) out[i] = s * B(i, 0) + c;
  exp_inplace(out, n);
}

template <class Deferred = void>
void chunk_inter_bf16(const HeadProblem& p, index_t L, const deferred_t<RowMatrix, Deferred>& S,
                      deferred_t<ChunkWorkspace, Deferred>& ws) {
  using namespace bf16_tiles;
  const index_t Kf = S.rows(), Vp = S.cols(), Kw = words(Kf), Vpad = pad16(Vp);
  Scratch& x = Scratch::local();
  x.reserve(L, Kf, Vp);
  const RowMatrix& Bq = ws.query_decays();
  const float* q = ws.Q.data();
  const float* row_scale = nullptr;
  if (ws.rows_packed) {
    // load_chunk_words made Q * exp(Bq)'s words (in `a`).
  } else if (p.gated() && !p.scalar_gate && p.readout == Readout::inclusive) {
    // exp(Bq) = exp(Bk) kept in KD: the scores' keys K * exp(-Bk) are then a division, not an exp.
    times_exp_rows_kept(ws.Q.data(), Kf, Bq.data(), Bq.cols(), ws.KD.data(), Kf, ws.QD.data(), Kf, L, Kf);
    ws.kd_exp_bq = true;
    q = ws.QD.data();
  } else if (p.gated() && !p.scalar_gate) {
    times_exp_rows(ws.Q.data(), Kf, Bq.data(), Bq.cols(), 1.f, nullptr, ws.QD.data(), Kf, L, Kf);
    q = ws.QD.data();
  } else if (p.gated()) {  // exp(bq_i) on the rows of Q: O = (Q S) * exp(bq), rounded once
    scalar_decays(Bq, L, 1.f, 0.f, x.g.data());
    row_scale = x.g.data();
  }
  if (!ws.rows_packed) pack_rows(q, Kf, L, Kf, x.a.data(), Kw, row_scale);
  ws.q_words = true;
  pack_row_pairs(S.data(), Vp, Kf, Vp, x.b.data(), Vpad);
  gemm_bf16_into(x.a.data(), Kw, x.b.data(), Vpad, L, Vp, Kw, ws.O.data(), Vp, Vp, nullptr, x.f.data());
}

// 30: a chunk whose decay stays within it has its scores on the inter step's words of
// Q * exp(Bq) as they are and the keys as K * exp(-Bk) (anchor 0 instead of half way): every
// factor within exp(+-30), the bound the half-way anchor keeps up to kAnchorRange. Reusing the
// words saves rescaling and repacking Q, and for scalar gates the exp per score.
constexpr float kSharedQueryRange = 30.f;

// False (nothing written) where the fp32 step must run instead. Leaves V's pair words in the
// scratch's `d` (ws.v_words) for chunk_state_update_bf16, and for channel gates the keys
// K * exp(a - Bk) in KD with ws.m = exp(Bk_last - a) (a: the scores' anchor).
template <class Deferred = void>
bool chunk_intra_bf16(const HeadProblem& p, index_t L, deferred_t<ChunkWorkspace, Deferred>& ws) {
  using namespace bf16_tiles;
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  const bool channel = p.gated() && !p.scalar_gate, scalar = p.gated() && p.scalar_gate;
  const index_t Kf = ws.Q.cols(), Vp = ws.Vc.cols(), Kw = words(Kf), Lw = words(L), Lpad = pad16(L);
  const bool kd_exp_bq = ws.kd_exp_bq;
  ws.v_words = ws.kd_exp_bq = false;  // KD holds keys (or the fp32 step's operands) from here on
  const float range = channel ? -ws.Bk.row(L - 1).minCoeff() : scalar ? -ws.Bk(L - 1, 0) : 0.f;
  if (channel && range > kAnchorRange) return false;
  Scratch& x = Scratch::local();
  x.reserve(L, Kf, Vp);
  const bool packed = ws.rows_packed;  // V's and the keys' words and ws.m from load_chunk_words
  // V's words, checked as they are packed: a non-finite value takes the fp32 step.
  if (!packed && !pack_row_pairs(ws.Vc.data(), Vp, L, Vp, x.d.data(), pad16(Vp))) return false;
  const bool shared_q = ws.q_words && range <= kSharedQueryRange;
  const float* k = ws.Kc.data();
  const float* key_scale = nullptr;
  float* g = x.g.data();  // the scalar gate's exp(-bk_j), or column 0 of Bk; then free
  if (packed) {
    // load_chunk_words made the keys' words (in `c`) and ws.m = exp(Bk_last).
  } else if (shared_q && channel) {
    if (kd_exp_bq)  // exp(Bk) >= exp(-kSharedQueryRange): a division as exact as the exp
      divide_rows(ws.Kc.data(), Kf, ws.KD.data(), Kf, ws.KD.data(), Kf, L, Kf);
    else
      times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), ws.Bk.cols(), -1.f, nullptr, ws.KD.data(), Kf, L, Kf);
    exp_copy(ws.Bk.row(L - 1).data(), ws.m.data(), Kf);
    k = ws.KD.data();
  } else if (shared_q && scalar) {
    scalar_decays(ws.Bk, L, -1.f, 0.f, g);
    key_scale = g;
  } else if (!shared_q) {
    const float* q = ws.Q.data();
    if (channel) {  // the anchored operands of intra_channel_anchored: m' = Bk_last / 2
      // Q * exp(Bq - m') is chunk_inter's Q * exp(Bq) (in QD, both forms) times exp(-m') per
      // channel: a product where the exps were (the exps are the dearest pass at K = 64).
      ws.m = -0.5f * ws.Bk.row(L - 1);
      exp_inplace(ws.m.data(), Kf);
      times_columns(ws.QD.data(), Kf, ws.m.data(), ws.QD.data(), Kf, L, Kf);
      ws.m = 0.5f * ws.Bk.row(L - 1);
      times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), ws.Bk.cols(), -1.f, ws.m.data(), ws.KD.data(), Kf, L, Kf);
      exp_inplace(ws.m.data(), Kf);
      q = ws.QD.data(), k = ws.KD.data();
    } else if (scalar) {
      for (index_t j = 0; j < L; ++j) g[j] = ws.Bk(j, 0);
    }
    pack_rows(q, Kf, L, Kf, x.a.data(), Kw);
  }
  const bool score_decays = scalar && !shared_q;  // scores still to be times exp(bq_i - bk_j)
  if (!packed) pack_rows(k, Kf, L, Kf, x.c.data(), Kw, key_scale);
  transpose_words(x.c.data(), Kw, L, Kw, x.b.data(), Lpad, Lpad);
  // K itself: the update's keys without a gate.
  ws.key_words = packed ? !p.gated() : k == ws.Kc.data() && key_scale == nullptr;
  float* A = x.f.data();  // [L x Lpad] scores, each 16-row strip up to its last row's diagonal
  for (index_t i0 = 0; i0 < L; i0 += 16) {
    const index_t rows = std::min<index_t>(16, L - i0), cols = std::min(L, i0 + 16);
    float* strip = A + i0 * Lpad;
    gemm_bf16(x.a.data() + i0 * Kw, Kw, x.b.data(), Lpad, strip, Lpad, rows, pad16(cols), Kw, nullptr);
    for (index_t i = i0; i < i0 + rows; ++i) {
      float* row = A + i * Lpad;
      if (score_decays) times_exp_diff(row, ws.query_decays()(i, 0), g, i + 1);  // exponents <= 0
      for (index_t j = exclusive ? i : i + 1; j < cols; ++j) row[j] = 0.f;
      if (exclusive) row[i] = ws.bonus(i);
    }
    pack_rows(strip, Lpad, rows, cols, x.c.data() + i0 * Lw, Lw);  // K's words are in b by now
    gemm_bf16_into(x.c.data() + i0 * Lw, Lw, x.d.data(), pad16(Vp), rows, Vp, words(cols), ws.O.row(i0).data(), Vp, Vp,
                   x.ones.data(), x.g.data() + Lpad);
  }
  ws.v_words = true;
  return true;
}

// False (nothing written) where the fp32 step must run instead. V's pair words come from
// chunk_intra_bf16 when it ran (the same bf16 V), and for channel gates its keys.
template <class Deferred = void>
bool chunk_state_update_bf16(const HeadProblem& p, index_t L, deferred_t<RowMatrix, Deferred>& S,
                             deferred_t<ChunkWorkspace, Deferred>& ws) {
  using namespace bf16_tiles;
  const index_t Kf = S.rows(), Vp = S.cols(), Lw = words(L), Kpad = pad16(Kf), Vpad = pad16(Vp);
  const bool packed = ws.v_words, key_words = ws.key_words && !p.gated();
  const bool key_pairs = ws.rows_packed && p.gated();  // load_chunk_words' (K * exp(Bk_last - Bk)) row pairs in `e`
  ws.v_words = ws.q_words = ws.key_words = ws.rows_packed = false;  // the scratch's `a` is overwritten below
  if (!packed && !simd::rows_finite(ws.Vc.data(), L, Vp, Vp)) return false;
  Scratch& x = Scratch::local();
  x.reserve(L, Kf, Vp);
  const float* k = ws.Kc.data();
  const float* key_scale = nullptr;    // the scalar gate's exp(bk_last - bk_j), applied as K is packed
  const float* channel_scale = nullptr;  // K * exp(a - Bk) to K * exp(Bk_last - Bk), likewise
  const float* decay = x.ones.data();  // the state's decay over the chunk, the GEMM's row scale
  float* scales = x.g.data();
  if (p.gated() && p.scalar_gate) {
    const float last = ws.Bk(L - 1, 0);
    scalar_decays(ws.Bk, L, -1.f, last, scales);
    std::fill(scales + L, scales + L + Kf, std::exp(last));
    key_scale = scales, decay = scales + L;
  } else if (p.gated()) {
    const float* last = ws.Bk.row(L - 1).data();
    if (packed)  // chunk_intra_bf16's keys K * exp(a - Bk), times ws.m = exp(Bk_last - a)
      channel_scale = ws.m.data();
    else
      times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), ws.Bk.cols(), -1.f, last, ws.KD.data(), Kf, L, Kf);
    exp_copy(last, scales, Kf);
    k = ws.KD.data(), decay = scales;
  }
  if (key_words) {  // no gate: the scores' words of K^T, regrouped by channel
    rows_words_from_columns(x.b.data(), pad16(L), L, Kf, x.a.data(), Lw);   // [Kf x Lw]: K^T
  } else if (key_pairs) {
    transpose_words(x.e.data(), Kpad, Lw, Kf, x.a.data(), Lw, Lw);           // [Kf x Lw]: (K * decay)^T
  } else {
    pack_row_pairs(k, Kf, L, Kf, x.c.data(), Kpad, key_scale, channel_scale);  // [Lw x Kpad]
    transpose_words(x.c.data(), Kpad, Lw, Kf, x.a.data(), Lw, Lw);           // [Kf x Lw]: (K * decay)^T
  }
  if (!packed) pack_row_pairs(ws.Vc.data(), Vp, L, Vp, x.d.data(), Vpad);   // [Lw x Vpad]
  gemm_bf16_into(x.a.data(), Lw, x.d.data(), Vpad, Kf, Vp, Lw, S.data(), Vp, Vp, decay, x.f.data());
  return true;
}
#endif

// True where a chunk step of p runs on bf16 dot products.
inline bool use_bf16_dot(const HeadProblem& p) { return kNativeBf16Dot && p.bf16_dot; }

// The chunk loop itself is seqmix::chunkwise's engine (core/chunkwise/engine.hpp); driver.hpp maps its
// hooks onto the steps below.

// fp32 q, k and v rows of unit column stride under the identity map (GLA's and linear
// attention's usual inputs): load_chunk reads them by pointer. Per row, the view and feature-map
// calls cost about as much as the copies they made (perf, bf16 GLA call at gla-k128, one thread).
inline bool plain_rows(const HeadProblem& p) {
  const auto unit = [](const InputRows& x) { return x.is_float() && x.floats().is_last_dim_contiguous(); };
  return p.phi == FeatureMap::identity && unit(p.q) && unit(p.k) && unit(p.v);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// The bf16 steps' operands packed straight from the caller's rows, for the chunks where those
// steps are sure to run: fp32 rows under the identity map (plain_rows), no normalizer, an
// inclusive readout, no gate or a channel gate whose decay over the chunk stays within
// kSharedQueryRange, finite values. Per row of a channel gate, e = exp(Bk) is taken once and the
// row goes to Q * e's words (`a`), K / e's words (`c`) and (K / e) * exp(Bk_last)'s row pairs
// (`e`) while it is in L1, with ws.m = exp(Bk_last); without a gate the rows are packed as they
// are. These are the values the steps made from Q, Kc and Vc, with the same operations in the
// same order (bit for bit), where those made the fp32 copies and read them back several times.
// False (nothing but the scratch written) where load_chunk must load the fp32 rows.
// kRowsAhead: the rows are asked for into L1 this many rows ahead, row pair by row pair. With a
// channel gate the exps between two rows' loads leave few of those loads in flight: without the
// requests the packed rows were 1.05x slower than the fp32 copies at gla-k128 (one thread), with
// them 1.07x faster, and 1.15x at gla-1.3b. Without a gate, packing the tiles whole then
// measured the same as the copies, row pairs with the requests 1.07x faster (AMD EPYC Zen 4,
// load 4-9; linear_attention/README.md, 2026-12-08).
constexpr index_t kRowsAhead = 4;
inline bool load_chunk_words(const HeadProblem& p, index_t t0, index_t L, ChunkWorkspace& ws) {
  using namespace bf16_tiles;
  const bool channel = p.gated() && !p.scalar_gate;
  if (!use_bf16_dot(p) || !plain_rows(p) || p.normalize || p.readout != Readout::inclusive) return false;
  if (p.gated() && !channel) return false;
  if (channel && -ws.Bk.row(L - 1).minCoeff() > kSharedQueryRange) return false;
  const ConstView<float, 2>&q = p.q.floats(), &k = p.k.floats(), &v = p.v.floats();
  const index_t K = p.K(), V = p.V(), Kw = words(K), Kpad = pad16(K);
  const float* qt = q.data() + t0 * q.stride(0);  // [L, K] rows q.stride(0) apart
  const float* kt = k.data() + t0 * k.stride(0);  // [L, K] rows k.stride(0) apart
  const float* vt = v.data() + t0 * v.stride(0);  // [L, V] rows v.stride(0) apart
  Scratch& x = Scratch::local();
  x.reserve(L, K, V);
  // V's words are checked as they are packed: a non-finite value takes the fp32 rows and steps.
  if (!channel) {
    float* scale = x.staging.data();  // pack_rows' row scale: q * scale as scaled_copy makes it
    std::fill(scale, scale + L, p.scale);
    bool finite = true;
    for (index_t i0 = 0; i0 < L; i0 += 2) {
      const index_t n = std::min<index_t>(2, L - i0);
      for (index_t i = i0 + kRowsAhead; i < std::min(L, i0 + kRowsAhead + 2); ++i) {
        prefetch_row(qt + i * q.stride(0), K);
        prefetch_row(kt + i * k.stride(0), K);
        prefetch_row(vt + i * v.stride(0), V);
      }
      finite &= pack_row_pairs(vt + i0 * v.stride(0), v.stride(0), n, V, x.d.data() + i0 / 2 * pad16(V), pad16(V));
      pack_rows(qt + i0 * q.stride(0), q.stride(0), n, K, x.a.data() + i0 * Kw, Kw, scale);
      pack_rows(kt + i0 * k.stride(0), k.stride(0), n, K, x.c.data() + i0 * Kw, Kw);
    }
    if (!finite) return false;
  } else {
    if (!pack_row_pairs(vt, v.stride(0), L, V, x.d.data(), pad16(V))) return false;
    exp_copy(ws.Bk.row(L - 1).data(), ws.m.data(), K);
    float* e = x.staging.data();  // [K] exp(Bk_i)
    float* qe = e + K;             // [K] Q_i * exp(Bk_i)
    float* ke = qe + K;            // [2, K] K_i / exp(Bk_i) of a row pair
    for (index_t i0 = 0; i0 < L; i0 += 2) {
      const index_t n = std::min<index_t>(2, L - i0);
      for (index_t i = i0 + kRowsAhead; i < std::min(L, i0 + kRowsAhead + 2); ++i) {
        prefetch_row(qt + i * q.stride(0), K);
        prefetch_row(kt + i * k.stride(0), K);
      }
      for (index_t r = 0; r < n; ++r) {
        const index_t i = i0 + r;
        exp_copy(ws.Bk.row(i).data(), e, K);
        scaled_copy(qt + i * q.stride(0), p.scale, qe, K);
        times_columns(qe, K, e, qe, K, 1, K);
        pack_rows(qe, K, 1, K, x.a.data() + i * Kw, Kw);
        divide_rows(kt + i * k.stride(0), K, e, K, ke + r * K, K, 1, K);
        pack_rows(ke + r * K, K, 1, K, x.c.data() + i * Kw, Kw);
      }
      pack_row_pairs(ke, K, n, K, x.e.data() + i0 / 2 * Kpad, Kpad, nullptr, ws.m.data());
    }
  }
  ws.rows_packed = ws.q_words = true;
  return true;
}
#endif

// Loads chunk [t0, t0+L): features, values, cumulative decays relative to the chunk start.
inline void load_chunk(const HeadProblem& p, index_t t0, index_t L, ChunkWorkspace& ws) {
  ws.forget_chunk_operands();
  ws.bq_is_bk = p.readout == Readout::inclusive;
  if (p.gated()) {
    const index_t n = p.scalar_gate ? 1 : p.K();
    const bool rows = n > 1 && p.g.stride(1) == 1;  // contiguous gate rows: vectorized sums
    for (index_t i = 0; i < L; ++i) {
      float* bk = ws.Bk.row(i).data();
      const float* prev = i > 0 ? ws.Bk.row(i - 1).data() : nullptr;
      if (rows) {
        add_floored(prev, p.g.ptr(t0 + i), kGateFloor, bk, n);
      } else {
        for (index_t c = 0; c < n; ++c) {
          const float g = std::max(p.g(t0 + i, c), kGateFloor);
          bk[c] = prev ? prev[c] + g : g;
        }
      }
      if (ws.bq_is_bk) continue;
      float* bq = ws.Bq.row(i).data();
      if (prev)
        std::copy(prev, prev + n, bq);
      else
        std::fill(bq, bq + n, 0.f);
    }
  }
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (load_chunk_words(p, t0, L, ws)) return;
#endif
  if (plain_rows(p)) {  // the same values as the general loop below, bit for bit
    const ConstView<float, 2>&q = p.q.floats(), &k = p.k.floats(), &v = p.v.floats();
    const index_t K = p.K(), V = p.V();
    const float *qt = q.data() + t0 * q.stride(0), *kt = k.data() + t0 * k.stride(0), *vt = v.data() + t0 * v.stride(0);
    for (index_t i = 0; i < L; ++i, qt += q.stride(0), kt += k.stride(0), vt += v.stride(0)) {
      scaled_copy(qt, p.scale, ws.Q.row(i).data(), K);
      scaled_copy(kt, 1.f, ws.Kc.row(i).data(), K);
      float* vi = ws.Vc.row(i).data();
      std::copy(vt, vt + V, vi);
      if (p.normalize) vi[V] = 1.f;
    }
  } else {
    for (index_t i = 0; i < L; ++i) {
      apply_feature_map(p.phi, p.q.row(t0 + i, ws.in_row.data()), p.scale, ws.Q.row(i).data());
      apply_feature_map(p.phi, p.k.row(t0 + i, ws.in_row.data()), 1.f, ws.Kc.row(i).data());
      load_value_row(p, t0 + i, ws.Vc.row(i).data());
    }
  }
  if (p.readout == Readout::exclusive_bonus)
    for (index_t i = 0; i < L; ++i) ws.bonus(i) = bonus_dot(ws.Q.row(i).data(), p.u, ws.Kc.row(i).data(), p.K());
}

// True where the fp32 steps run on the register tiles (chunk_products.hpp): value rows (V, plus
// the normalizer column if any) of whole SIMD vectors; K, the inner dimension or the rows of
// every product, and the chunk length may be anything. So V = 16, 32, 48, 64, 128 qualify on
// AVX-512 (V = 72 does not; V + 1 = 16 with a normalizer does); the others keep Eigen, since the
// tiles have no scalar tail for a ragged last column.
inline bool tiled_steps(const ChunkWorkspace& ws) { return ws.O.cols() % simd::kWidth == 0; }

constexpr Accumulate kOverwrite{false};
constexpr Accumulate kAddTo{true};

// O = (Q * exp(Bq)) S: what the tokens of the chunk read from the state carried into it.
template <class Deferred = void>
void chunk_inter(const HeadProblem& p, index_t L, const deferred_t<RowMatrix, Deferred>& S,
                 deferred_t<ChunkWorkspace, Deferred>& ws) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (use_bf16_dot(p)) return chunk_inter_bf16<Deferred>(p, L, S, ws);
#endif
  auto O = ws.O.topRows(L);
  const index_t Kf = ws.Q.cols();
  const RowMatrix& Bq = ws.query_decays();
  if (tiled_steps(ws)) {
    const float* q = ws.Q.data();
    if (p.gated() && !p.scalar_gate) {
      times_exp_rows(ws.Q.data(), Kf, Bq.data(), Bq.cols(), 1.f, nullptr, ws.QD.data(), Kf, L, Kf);
      q = ws.QD.data();
    }
    tiled_product({q, Kf, 1}, L, Kf, S.data(), S.cols(), S.cols(), ws.O.data(), ws.O.cols(), kOverwrite);
    if (p.gated() && p.scalar_gate) O.array().colwise() *= Bq.col(0).head(L).array().exp();
    return;
  }
  if (!p.gated()) {
    O.noalias() = ws.Q.topRows(L) * S;
  } else if (p.scalar_gate) {
    O.noalias() = ws.Q.topRows(L) * S;
    O.array().colwise() *= Bq.col(0).head(L).array().exp();
  } else {
    times_exp_rows(ws.Q.data(), Kf, Bq.data(), Bq.cols(), 1.f, nullptr, ws.QD.data(), Kf, L, Kf);
    O.noalias() = ws.QD.topRows(L) * S;
  }
}

// One score sum_k Q_ik K_jk exp(Bq_ik - Bk_jk), for j <= i (so the exponent is <= 0).
inline float direct_score(const ChunkWorkspace& ws, index_t i, index_t j, index_t K) {
  using simd::Batch;
  const float *q = ws.Q.row(i).data(), *k = ws.Kc.row(j).data();
  const float *bq = ws.query_decays().row(i).data(), *bk = ws.Bk.row(j).data();
  Batch<float> acc(0.f);
  const index_t kv = simd::vector_end(K);
  for (index_t c = 0; c < kv; c += simd::kWidth) {
    const Batch<float> decay = simd::exp(simd::load(bq + c) - simd::load(bk + c));
    acc = simd::fma(simd::load(q + c) * simd::load(k + c), decay, acc);
  }
  float sum = simd::reduce_add(acc);
  for (index_t c = kv; c < K; ++c) sum += q[c] * k[c] * std::exp(bq[c] - bk[c]);
  return sum;
}

// Channel gates, strong decay: sub-chunked scores (see the header comment).
template <class Deferred = void>
void intra_channel_subchunked(const HeadProblem& p, index_t L, deferred_t<ChunkWorkspace, Deferred>& ws) {
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  ws.A.topLeftCorner(L, L).setZero();
  for (index_t i0 = 0; i0 < L; i0 += kSubChunk) {
    const index_t n = std::min(kSubChunk, L - i0);
    if (i0 > 0) {
      const index_t Kf = ws.Q.cols(), G = ws.Bk.cols();
      ws.m = -ws.Bk.row(i0 - 1);  // the anchor r = i0 - 1: exp(Bq - Bk_r) and exp(Bk_r - Bk)
      times_exp_rows(ws.Q.row(i0).data(), Kf, ws.query_decays().row(i0).data(), G, 1.f, ws.m.data(), ws.QD.row(i0).data(), Kf, n, Kf);
      ws.m = -ws.m;
      times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), G, -1.f, ws.m.data(), ws.KD.data(), Kf, i0, Kf);
      ws.A.block(i0, 0, n, i0).noalias() = ws.QD.middleRows(i0, n) * ws.KD.topRows(i0).transpose();
    }
    for (index_t i = i0; i < i0 + n; ++i)
      for (index_t j = i0; j < (exclusive ? i : i + 1); ++j) ws.A(i, j) = direct_score(ws, i, j, p.K());
  }
}

// Channel gates, moderate decay: one GEMM around the half-way anchor m.
template <class Deferred = void>
void intra_channel_anchored(index_t L, deferred_t<ChunkWorkspace, Deferred>& ws) {
  const index_t Kf = ws.Q.cols(), G = ws.Bk.cols();
  ws.m = -0.5f * ws.Bk.row(L - 1);  // exp(Bq - m) and exp(m - Bk) with m = Bk_last / 2
  times_exp_rows(ws.Q.data(), Kf, ws.query_decays().data(), G, 1.f, ws.m.data(), ws.QD.data(), Kf, L, Kf);
  ws.m = -ws.m;
  times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), G, -1.f, ws.m.data(), ws.KD.data(), Kf, L, Kf);
  ws.A.topLeftCorner(L, L).noalias() = ws.QD.topRows(L) * ws.KD.topRows(L).transpose();
}

// The tiled scores' lower part (chunk_products.hpp, lower_scores) for all gates but strong
// channel decays, which keep intra_channel_subchunked. The keys go transposed into KT once.
template <class Deferred = void>
void tiled_scores(const HeadProblem& p, index_t L, deferred_t<ChunkWorkspace, Deferred>& ws) {
  const index_t Kf = ws.Q.cols(), ldt = ws.KT.cols(), lda = ws.A.cols();
  const float* q = ws.Q.data();
  const float* k = ws.Kc.data();
  if (p.gated() && !p.scalar_gate) {
    // intra_channel_anchored's operands, m = Bk_last / 2: Q * exp(Bq - m) is chunk_inter's
    // Q * exp(Bq) (in QD) times exp(-m) per channel, a product where the exps were. The state
    // update rescales K * exp(m - Bk) (KD) the same way (keys_anchored).
    ws.m = -0.5f * ws.Bk.row(L - 1);
    exp_inplace(ws.m.data(), Kf);
    times_columns(ws.QD.data(), Kf, ws.m.data(), ws.QD.data(), Kf, L, Kf);
    ws.m = 0.5f * ws.Bk.row(L - 1);
    times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), ws.Bk.cols(), -1.f, ws.m.data(), ws.KD.data(), Kf, L, Kf);
    q = ws.QD.data(), k = ws.KD.data();
    ws.keys_anchored = true;
  }
  transpose_block(k, Kf, L, Kf, ws.KT.data(), ldt);
  lower_scores(q, Kf, ws.KT.data(), ldt, L, Kf, ws.A.data(), lda);
  if (p.gated() && p.scalar_gate) {
    float* bk = ws.bk0.data();
    for (index_t j = 0; j < L; ++j) bk[j] = ws.Bk(j, 0);
    for (index_t i = 0; i < L; ++i) times_exp_diff(ws.A.row(i).data(), ws.query_decays()(i, 0), bk, i + 1);
  }
}

// The tiled form of chunk_intra: scores (the lower part only), mask, then O += A V over the
// tokens up to each row block's last row. A skipped zero of A would meet a non-finite value of a
// later token (0 * inf = NaN), so a chunk holding one runs the same tiles on V with those entries
// zeroed and adds them to the rows i >= j afterwards (core/chunkwise/causal_product.hpp's
// policy): the outputs that do not see them stay bit-identical to a clean chunk's.
template <class Deferred = void>
void chunk_intra_tiled(const HeadProblem& p, index_t L, deferred_t<ChunkWorkspace, Deferred>& ws) {
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  if (p.gated() && !p.scalar_gate && -ws.Bk.row(L - 1).minCoeff() > kAnchorRange)
    intra_channel_subchunked<Deferred>(p, L, ws);
  else
    tiled_scores<Deferred>(p, L, ws);
  // Zero the scores above the diagonal that A V reads: up to the end of the row's A V block.
  for (index_t i = 0; i < L; ++i) {
    float* row = ws.A.row(i).data();
    std::fill(row + (exclusive ? i : i + 1), row + std::min(L, i + kPanelRows), 0.f);
    if (exclusive) row[i] = ws.bonus(i);
  }
  const auto values = ws.Vc.topRows(L);
  const index_t Vp = ws.Vc.cols();
  // Vectorized: Eigen's allFinite on the block ran one scalar compare per value, 6% of the call
  // at K = V = 1024 (perf, one thread).
  const bool finite = simd::rows_finite(ws.Vc.data(), L, Vp, Vp);
  if (!finite) ws.finite_values = values.array().isFinite().select(values, 0.f);
  const float* v = finite ? ws.Vc.data() : ws.finite_values.data();
  tiled_product({ws.A.data(), ws.A.cols(), 1}, L, L, v, Vp, Vp, ws.O.data(), Vp, kAddTo, true);
  if (!finite) chunkwise::add_nonfinite_lower(ws.A.topLeftCorner(L, L), values, ws.O.topRows(L));
}

// A = intra-chunk scores, causally masked; then O += A V.
template <class Deferred = void>
void chunk_intra(const HeadProblem& p, index_t L, deferred_t<ChunkWorkspace, Deferred>& ws) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (use_bf16_dot(p) && chunk_intra_bf16<Deferred>(p, L, ws)) return;
#endif
  if (tiled_steps(ws)) return chunk_intra_tiled<Deferred>(p, L, ws);
  const bool exclusive = p.readout == Readout::exclusive_bonus;
  auto A = ws.A.topLeftCorner(L, L);
  if (p.gated() && !p.scalar_gate) {
    const float range = -ws.Bk.row(L - 1).minCoeff();
    if (range <= kAnchorRange)
      intra_channel_anchored<Deferred>(L, ws);
    else
      intra_channel_subchunked<Deferred>(p, L, ws);
  } else {
    A.noalias() = ws.Q.topRows(L) * ws.Kc.topRows(L).transpose();
    if (p.gated()) {
      float* bk = ws.bk0.data();
      for (index_t j = 0; j < L; ++j) bk[j] = ws.Bk(j, 0);
      for (index_t i = 0; i < L; ++i) times_exp_diff(&A(i, 0), ws.query_decays()(i, 0), bk, i + 1);
    }
  }
  // Causal mask (the sub-chunked path wrote zeros there already; cheap to redo).
  for (index_t i = 0; i < L; ++i)
    for (index_t j = exclusive ? i : i + 1; j < L; ++j) A(i, j) = 0.f;
  if (exclusive)
    for (index_t i = 0; i < L; ++i) A(i, i) = ws.bonus(i);
  // O += A V, causal also for non-finite values (core/chunkwise/causal_product.hpp).
  chunkwise::add_lower_product(A, ws.Vc.topRows(L), ws.O.topRows(L), ws.finite_values);
}

// The tiled form of chunk_state_update: (K * decay)^T read in place from the key rows (a
// broadcast per key channel and token), the scalar gate's state decay folded into the product.
template <class Deferred = void>
void chunk_state_update_tiled(const HeadProblem& p, index_t L, deferred_t<RowMatrix, Deferred>& S,
                              deferred_t<ChunkWorkspace, Deferred>& ws) {
  const index_t Kf = S.rows(), Vp = S.cols();
  const float* k = ws.Kc.data();
  Accumulate old = kAddTo;
  if (p.gated() && p.scalar_gate) {
    const float last = ws.Bk(L - 1, 0);
    ws.KD.topRows(L).array() = ws.Kc.topRows(L).array().colwise() * (last - ws.Bk.col(0).head(L).array()).exp();
    k = ws.KD.data(), old.scale = std::exp(last);
  } else if (p.gated()) {
    const float* last = ws.Bk.row(L - 1).data();
    if (ws.keys_anchored) {  // K * exp(Bk_last - Bk) = the scores' K * exp(Bk_last / 2 - Bk) * exp(Bk_last / 2)
      for (index_t c = 0; c < Kf; ++c) ws.m[c] = 0.5f * last[c];
      exp_inplace(ws.m.data(), Kf);
      times_columns(ws.KD.data(), Kf, ws.m.data(), ws.KD.data(), Kf, L, Kf);
    } else {
      times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), ws.Bk.cols(), -1.f, last, ws.KD.data(), Kf, L, Kf);
    }
    exp_copy(last, ws.m.data(), Kf);
    S.array().colwise() *= ws.m.transpose().array();
    k = ws.KD.data();
  }
  ws.keys_anchored = false;
  tiled_product({k, 1, Kf}, Kf, L, ws.Vc.data(), Vp, Vp, S.data(), Vp, old);
}

// S = diag(exp(Bk_last)) S + (K * exp(Bk_last - Bk))^T V.
template <class Deferred = void>
void chunk_state_update(const HeadProblem& p, index_t L, deferred_t<RowMatrix, Deferred>& S,
                        deferred_t<ChunkWorkspace, Deferred>& ws) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if (use_bf16_dot(p) && chunk_state_update_bf16<Deferred>(p, L, S, ws)) return;
#endif
  if (tiled_steps(ws)) return chunk_state_update_tiled<Deferred>(p, L, S, ws);
  if (!p.gated()) {
    S.noalias() += ws.Kc.topRows(L).transpose() * ws.Vc.topRows(L);
  } else if (p.scalar_gate) {
    const float last = ws.Bk(L - 1, 0);
    ws.KD.topRows(L).array() =
        ws.Kc.topRows(L).array().colwise() * (last - ws.Bk.col(0).head(L).array()).exp();
    S *= std::exp(last);
    S.noalias() += ws.KD.topRows(L).transpose() * ws.Vc.topRows(L);
  } else {
    const auto last = ws.Bk.row(L - 1);
    const index_t Kf = S.rows();
    times_exp_rows(ws.Kc.data(), Kf, ws.Bk.data(), ws.Bk.cols(), -1.f, last.data(), ws.KD.data(), Kf, L, Kf);
    ws.m = last;
    exp_inplace(ws.m.data(), Kf);
    S.array().colwise() *= ws.m.transpose().array();
    S.noalias() += ws.KD.topRows(L).transpose() * ws.Vc.topRows(L);
  }
}

// Writes the chunk's output rows (the engine's store_outputs hook).
inline void store_chunk_outputs(const HeadProblem& p, index_t t0, index_t L, const ChunkWorkspace& ws) {
  for (index_t i = 0; i < L; ++i) store_output_row(p, t0 + i, ws.O.row(i).data());
}

}  // namespace seqmix::detail::la
