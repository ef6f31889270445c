// mlstm: xLSTM's matrix-memory LSTM (Beck et al. 2024), as its kernels define it. Per (batch,
// head), with q scaled by `scale` (default 1/sqrt(DK)) and gate pre-activations i, f:
//
//   m_t = max(log sigmoid(f_t) + m_{t-1}, i_t)                       stabilizer
//   f'_t = exp(log sigmoid(f_t) + m_{t-1} - m_t),  i'_t = exp(i_t - m_t)
//   C_t = f'_t C_{t-1} + i'_t k_t v_t^T                               C [DK,DV]
//   n_t = f'_t n_{t-1} + i'_t k_t                                     n [DK]
//   h_t = (q_t^T C_t) / (max(|q_t . n_t|, exp(-m_t)) + eps)            h [DV]
//
// C and n are the unstabilized memories times exp(-m_t); m_t is the largest log-weight of any
// term in them, so every exponent above is <= 0. The state starts at zeros (m = 0) unless given.
// This header: argument structs, options, validation and seqmix::reference::mlstm. Fast prefill
// (chunkwise-parallel and recurrent): chunked.hpp; decode step: step.hpp; derivation: README.md.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/rnn/common.hpp"

namespace seqmix {

/// How mlstm() runs the prefill; the step is always recurrent.
enum class MlstmAlgorithm {
  chunked,    ///< chunkwise-parallel: intra-chunk quadratic, inter-chunk recurrent (default)
  recurrent,  ///< token by token, the step's kernel
};

/// Options of mlstm and mlstm_step.
struct MlstmOptions {
  /// Multiplies q; default 1/sqrt(DK), as xLSTM.
  std::optional<float> scale = {};
  /// Added to the denominator max(|q . n|, exp(-m)), as xLSTM's eps.
  float eps = 1e-6f;
  /// Tokens per chunk of the chunked algorithm, in [1, 1024]; changes rounding only.
  index_t chunk_size = 64;
  /// Prefill algorithm (see MlstmAlgorithm).
  MlstmAlgorithm algorithm = MlstmAlgorithm::chunked;
  /// Prefill only (the step ignores it): run from the last token to the first
  /// (core/direction.hpp). q, k, v, i, f and h are reached through reversed views, not copied;
  /// the initial states are the state "after token T", the final states the state after token 0.
  bool reverse = false;
};

/// Prefill arguments. The three initial states are given together or not at all (zeros).
struct MlstmInputs {
  ConstView<float, 4> q;                ///< [B,T,NH,DK]
  ConstView<float, 4> k;                ///< [B,T,NH,DK]
  ConstView<float, 4> v;                ///< [B,T,NH,DV]
  ConstView<float, 3> i;                ///< [B,T,NH] input-gate pre-activations
  ConstView<float, 3> f;                ///< [B,T,NH] forget-gate pre-activations
  ConstView<float, 4> initial_c = {};   ///< [B,NH,DK,DV], optional
  ConstView<float, 3> initial_n = {};   ///< [B,NH,DK], optional
  ConstView<float, 2> initial_m = {};   ///< [B,NH], optional
  /// Optional serving arguments (core/batch.hpp): packed tokens (cu_seqlens [N+1], token tensors
  /// [1,total_T,...], states [N,...]), state slots (state_indices [N] into pools [P,...] of c, n
  /// and m, -1 = padding: nothing read or written) and has_initial_state [N] (false: zeros).
  SequenceBatch batch = {};
};

/// Prefill outputs. h must not overlap an input; each final state is optional and may be the
/// very view of its initial state (written after the last token of its row).
struct MlstmOutputs {
  TensorView<float, 4> h;               ///< [B,T,NH,DV]
  TensorView<float, 4> final_c = {};    ///< [B,NH,DK,DV], optional
  TensorView<float, 3> final_n = {};    ///< [B,NH,DK], optional
  TensorView<float, 2> final_m = {};    ///< [B,NH], optional
};

/// Decode-step arguments: one token per batch row.
struct MlstmStepInputs {
  ConstView<float, 3> q;  ///< [B,NH,DK]
  ConstView<float, 3> k;  ///< [B,NH,DK]
  ConstView<float, 3> v;  ///< [B,NH,DV]
  ConstView<float, 2> i;  ///< [B,NH]
  ConstView<float, 2> f;  ///< [B,NH]
  /// Optional: state_indices [B] (row b updates pool row state_indices[b] of c, n and m; -1 =
  /// padding row, its h and state untouched) and has_initial_state [B] (false: start from zeros).
  /// No cu_seqlens (one token per batch row).
  SequenceBatch batch = {};
};

/// Decode-step outputs: the state (c, n, m) is read and updated in place; h overlaps nothing.
struct MlstmStepOutputs {
  TensorView<float, 3> h;  ///< [B,NH,DV]
  TensorView<float, 4> c;  ///< [B,NH,DK,DV] (or the pool [P,NH,DK,DV] with batch.state_indices)
  TensorView<float, 3> n;  ///< [B,NH,DK] (or [P,NH,DK])
  TensorView<float, 2> m;  ///< [B,NH] (or [P,NH])
};

namespace detail {

struct MlstmDims {
  index_t B, T, NH, DK, DV;
  float scale;
};

inline float mlstm_scale(const ArgCheck& check, const MlstmOptions& options, index_t DK) {
  if (options.eps < 0.f || !std::isfinite(options.eps))
    check.fail("options.eps", "must be finite and >= 0, got " + std::to_string(options.eps));
  if (!options.scale) return DK > 0 ? 1.f / std::sqrt(static_cast<float>(DK)) : 1.f;
  check.finite(*options.scale, "options.scale");
  return *options.scale;
}

inline MlstmDims validate_mlstm(const ArgCheck& check, const MlstmInputs& in, const MlstmOutputs& out,
                                const MlstmOptions& options, SequenceMap* map = nullptr) {
  check_reversible(check.op().c_str(), in.batch, options.reverse);
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,NH,DK");
  const index_t B = in.q.size(0), T = in.q.size(1), NH = in.q.size(2), DK = in.q.size(3);
  check.shape("k", in.k, std::array<index_t, 4>{B, T, NH, DK}, "B,T,NH,DK");
  check.shape("v", in.v, std::array<index_t, 4>{B, T, NH, -1}, "B,T,NH,DV");
  const index_t DV = in.v.size(3);
  check.shape("i", in.i, std::array<index_t, 3>{B, T, NH}, "B,T,NH");
  check.shape("f", in.f, std::array<index_t, 3>{B, T, NH}, "B,T,NH");
  const bool c0 = in.initial_c.has_value(), n0 = in.initial_n.has_value(), m0 = in.initial_m.has_value();
  if (c0 != n0 || c0 != m0)
    check.fail(c0 ? (n0 ? "initial_m" : "initial_n") : "initial_c",
               "must be given together with the other initial states (initial_c, initial_n, initial_m)");
  // A plain dense batch has B state rows; a serving call N (packed) or the pool's rows (slots).
  const bool plain = rnn_plain_batch(in.batch);
  const index_t R = plain ? B : -1;
  check.optional_shape("initial_c", in.initial_c, std::array<index_t, 4>{R, NH, DK, DV}, plain ? "B,NH,DK,DV" : "N,NH,DK,DV");
  check.optional_shape("initial_n", in.initial_n, std::array<index_t, 3>{R, NH, DK}, plain ? "B,NH,DK" : "N,NH,DK");
  check.optional_shape("initial_m", in.initial_m, std::array<index_t, 2>{R, NH}, plain ? "B,NH" : "N,NH");
  check.shape("h", out.h, std::array<index_t, 4>{B, T, NH, DV}, "B,T,NH,DV");
  check.optional_shape("final_c", out.final_c, std::array<index_t, 4>{R, NH, DK, DV}, plain ? "B,NH,DK,DV" : "N,NH,DK,DV");
  check.optional_shape("final_n", out.final_n, std::array<index_t, 3>{R, NH, DK}, plain ? "B,NH,DK" : "N,NH,DK");
  check.optional_shape("final_m", out.final_m, std::array<index_t, 2>{R, NH}, plain ? "B,NH" : "N,NH");
  if (!plain) {
    index_t rows = rnn_state_rows(check, "initial_c", in.initial_c, "final_c", out.final_c);
    const auto same_rows = [&](const char* name, index_t r) {
      if (r >= 0 && rows >= 0 && r != rows)
        check.fail(name, "must have as many rows as the other states (" + std::to_string(rows) + "), got " +
                             std::to_string(r));
      if (rows < 0) rows = r;
    };
    same_rows("initial_n", in.initial_n.has_value() ? in.initial_n.size(0) : -1);
    same_rows("initial_m", in.initial_m.has_value() ? in.initial_m.size(0) : -1);
    same_rows("final_n", out.final_n.has_value() ? out.final_n.size(0) : -1);
    same_rows("final_m", out.final_m.has_value() ? out.final_m.size(0) : -1);
    const SequenceMap m = SequenceMap::make(check, in.batch, B, T, in.initial_c.has_value(), rows);
    if (map != nullptr) *map = m;
  }
  if (options.chunk_size < 1 || options.chunk_size > 1024)
    check.fail("options.chunk_size", "must lie in [1, 1024], got " + std::to_string(options.chunk_size));
  const float scale = mlstm_scale(check, options, DK);
  // h is written while every input is still read; the final states only at the end of a row.
  check.no_overlap("h", out.h, "q", in.q).no_overlap("h", out.h, "k", in.k).no_overlap("h", out.h, "v", in.v);
  check.no_overlap("h", out.h, "i", in.i).no_overlap("h", out.h, "f", in.f);
  check.no_overlap("h", out.h, "initial_c", in.initial_c).no_overlap("h", out.h, "initial_n", in.initial_n);
  check.no_overlap("h", out.h, "initial_m", in.initial_m).no_overlap("h", out.h, "final_c", out.final_c);
  check.no_overlap("h", out.h, "final_n", out.final_n).no_overlap("h", out.h, "final_m", out.final_m);
  const auto same = [](const auto& a, const auto& b) { return a.data() == b.data() && a.strides() == b.strides(); };
  if (!same(out.final_c, in.initial_c)) check.no_overlap("final_c", out.final_c, "initial_c", in.initial_c);
  if (!same(out.final_n, in.initial_n)) check.no_overlap("final_n", out.final_n, "initial_n", in.initial_n);
  if (!same(out.final_m, in.initial_m)) check.no_overlap("final_m", out.final_m, "initial_m", in.initial_m);
  check.no_overlap("final_c", out.final_c, "q", in.q).no_overlap("final_c", out.final_c, "k", in.k);
  check.no_overlap("final_c", out.final_c, "v", in.v).no_overlap("final_c", out.final_c, "final_n", out.final_n);
  check.no_overlap("final_c", out.final_c, "final_m", out.final_m).no_overlap("final_n", out.final_n, "final_m", out.final_m);
  return {B, T, NH, DK, DV, scale};
}

inline MlstmDims validate_mlstm_step(const ArgCheck& check, const MlstmStepInputs& in, const MlstmStepOutputs& out,
                                     const MlstmOptions& options) {
  check.shape("q", in.q, std::array<index_t, 3>{-1, -1, -1}, "B,NH,DK");
  const index_t B = in.q.size(0), NH = in.q.size(1), DK = in.q.size(2);
  check.shape("k", in.k, std::array<index_t, 3>{B, NH, DK}, "B,NH,DK");
  check.shape("v", in.v, std::array<index_t, 3>{B, NH, -1}, "B,NH,DV");
  const index_t DV = in.v.size(2);
  check.shape("i", in.i, std::array<index_t, 2>{B, NH}, "B,NH");
  check.shape("f", in.f, std::array<index_t, 2>{B, NH}, "B,NH");
  check.shape("h", out.h, std::array<index_t, 3>{B, NH, DV}, "B,NH,DV");
  const bool plain = rnn_plain_batch(in.batch);
  const index_t P = plain ? B : -1;
  check.shape("c", out.c, std::array<index_t, 4>{P, NH, DK, DV}, plain ? "B,NH,DK,DV" : "P,NH,DK,DV");
  check.shape("n", out.n, std::array<index_t, 3>{out.c.size(0), NH, DK}, plain ? "B,NH,DK" : "P,NH,DK");
  check.shape("m", out.m, std::array<index_t, 2>{out.c.size(0), NH}, plain ? "B,NH" : "P,NH");
  if (!plain) {
    if (in.batch.packed()) check.fail("cu_seqlens", "must be empty for a step (one token per batch row)");
    SequenceMap::make(check, in.batch, B, 1, true, out.c.size(0));  // slots and flags
  }
  const float scale = mlstm_scale(check, options, DK);
  check.no_overlap("h", out.h, "q", in.q).no_overlap("h", out.h, "k", in.k).no_overlap("h", out.h, "v", in.v);
  check.no_overlap("h", out.h, "c", out.c).no_overlap("h", out.h, "n", out.n).no_overlap("h", out.h, "m", out.m);
  check.no_overlap("c", out.c, "n", out.n).no_overlap("c", out.c, "m", out.m).no_overlap("n", out.n, "m", out.m);
  check.no_overlap("c", out.c, "q", in.q).no_overlap("c", out.c, "k", in.k).no_overlap("c", out.c, "v", in.v);
  return {B, 1, NH, DK, DV, scale};
}

// A reverse call (options.reverse) as the forward call on reversed views; the forward code reaches
// every token through its time stride, so the views are all it needs.
inline std::pair<MlstmInputs, MlstmOutputs> reversed_call(MlstmInputs in, MlstmOutputs out) {
  reverse_time_of(in.q, in.k, in.v, in.i, in.f, out.h);
  return {in, out};
}

// Runs one(in, out) on every running sequence of a validated serving call as a plain dense call
// of its own (B = 1, its tokens, its state rows; no initial state when it starts from zeros).
// Padding sequences (state row -1) are skipped: their outputs stay untouched.
template <class F>
void mlstm_for_each_sequence(const SequenceMap& map, const MlstmInputs& in, const MlstmOutputs& out, F&& one) {
  for (index_t s_i = 0; s_i < map.sequences(); ++s_i) {
    const SequenceSpan s = map[s_i];
    if (s.state_row < 0) continue;
    MlstmInputs in1 = in;
    in1.q = rnn_sequence_rows(in.q, s), in1.k = rnn_sequence_rows(in.k, s), in1.v = rnn_sequence_rows(in.v, s);
    in1.i = rnn_sequence_rows(in.i, s), in1.f = rnn_sequence_rows(in.f, s);
    in1.initial_c = rnn_state_row(in.initial_c, s, s.read_state);
    in1.initial_n = rnn_state_row(in.initial_n, s, s.read_state);
    in1.initial_m = rnn_state_row(in.initial_m, s, s.read_state);
    in1.batch = SequenceBatch();
    MlstmOutputs out1 = out;
    out1.h = rnn_sequence_rows(out.h, s);
    out1.final_c = rnn_state_row(out.final_c, s, true);
    out1.final_n = rnn_state_row(out.final_n, s, true);
    out1.final_m = rnn_state_row(out.final_m, s, true);
    one(in1, out1);
  }
}

}  // namespace detail

namespace reference {

/// The mLSTM definition (see the top of this file), token by token, state and sums in double.
/// Single-threaded; `executor` is accepted for a uniform signature.
inline void mlstm(const MlstmInputs& in, const MlstmOutputs& out, const MlstmOptions& options = {},
                  const Executor& executor = serial_executor()) {
  detail::check_reversible("reference::mlstm", in.batch, options.reverse);
  if (options.reverse) {
    const auto rev = detail::reversed_call(in, out);
    return mlstm(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  const ArgCheck check("reference::mlstm");
  SequenceMap map;
  const detail::MlstmDims d = detail::validate_mlstm(check, in, out, options, &map);
  if (!detail::rnn_plain_batch(in.batch))
    return detail::mlstm_for_each_sequence(map, in, out, [&](const MlstmInputs& in1, const MlstmOutputs& out1) {
      mlstm(in1, out1, options, executor);
    });
  const index_t DK = d.DK, DV = d.DV;
  std::vector<double> C(static_cast<std::size_t>(DK * DV)), n(static_cast<std::size_t>(DK)), num(static_cast<std::size_t>(DV));
  for (index_t b = 0; b < d.B; ++b)
    for (index_t hd = 0; hd < d.NH; ++hd) {
      const bool given = in.initial_c.has_value();
      for (index_t r = 0; r < DK; ++r) {
        n[r] = given ? in.initial_n(b, hd, r) : 0.0;
        for (index_t c = 0; c < DV; ++c) C[r * DV + c] = given ? in.initial_c(b, hd, r, c) : 0.0;
      }
      double m = given ? in.initial_m(b, hd) : 0.0;
      for (index_t t = 0; t < d.T; ++t) {
        const double ig = in.i(b, t, hd), lf = detail::rnn_log_sigmoid(in.f(b, t, hd));
        const double m_new = std::max(lf + m, ig);
        const double fa = std::exp(lf + m - m_new), ia = std::exp(ig - m_new);
        double qn = 0;
        for (index_t c = 0; c < DV; ++c) num[c] = 0;
        for (index_t r = 0; r < DK; ++r) {
          const double kr = in.k(b, t, hd, r), qr = double(d.scale) * in.q(b, t, hd, r);
          n[r] = fa * n[r] + ia * kr;
          qn += qr * n[r];
          for (index_t c = 0; c < DV; ++c) {
            C[r * DV + c] = fa * C[r * DV + c] + ia * kr * in.v(b, t, hd, c);
            num[c] += qr * C[r * DV + c];
          }
        }
        m = m_new;
        const double denom = std::max(std::abs(qn), std::exp(-m)) + options.eps;
        for (index_t c = 0; c < DV; ++c) out.h(b, t, hd, c) = static_cast<float>(num[c] / denom);
      }
      if (out.final_c.has_value())
        for (index_t r = 0; r < DK; ++r)
          for (index_t c = 0; c < DV; ++c) out.final_c(b, hd, r, c) = static_cast<float>(C[r * DV + c]);
      if (out.final_n.has_value())
        for (index_t r = 0; r < DK; ++r) out.final_n(b, hd, r) = static_cast<float>(n[r]);
      if (out.final_m.has_value()) out.final_m(b, hd) = static_cast<float>(m);
    }
}

}  // namespace reference
}  // namespace seqmix
