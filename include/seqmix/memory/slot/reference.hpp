// slot_memory: a fixed set of S memory slots read by cross-attention and written with gates
// (Memformer, Wu et al. 2022; LM2, Kang et al. 2025; issue 22 item 3). README.md has the
// definition, the gate forms and what each takes from its paper.
//
// This header holds the arguments shared by every form, their validation and the readable
// definition (seqmix::reference::slot_memory: plain loops in double). The fast form (Eigen GEMMs,
// threaded) and the segment step are in fast.hpp.
//
//   x [B,T,D] tokens, memory [B,S,D] slots before the first segment, H heads of dh = D / H channels.
//   The tokens are cut into segments of `segment` tokens (0: one segment). For each segment, with
//   M the slots before it:
//     read   r[t]  = sum_s softmax_s(scale <x[t]_h, M[s]_h>) M[s]_h          per head h
//     write  u[s]  = sum_t softmax_t(scale <M[s]_h, x[t]_h>) x[t]_h          over the segment's t
//     gates  i[s]  = sigmoid(w_input u[s] + b_input),  f[s] = sigmoid(w_forget u[s] + b_forget)
//     update input_forget: M'[s] = f[s] * M[s] + i[s] * u[s]
//            lm2:          M'[s] = f[s] * M[s] + i[s] * tanh(u[s])
//     output input_forget: y[t] = r[t];   lm2: y[t] = sigmoid(w_output r[t] + b_output) * r[t]
//   and M' is the memory of the next segment; final_memory = the memory after the last one.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How slot_memory's write gates combine the old slot and what it read (docs/operators.md section 13).
enum class SlotGate {
  /// Memformer-style gated write: M' = f * M + i * u (forget and input gates from u).
  input_forget,
  /// LM2: M' = f * M + i * tanh(u), and an output gate on the read, y = sigmoid(w_output r + b_output) * r.
  lm2,
};

/// Options of slot_memory.
struct SlotMemoryOptions {
  /// The write's gate form (SlotGate).
  SlotGate gate = SlotGate::input_forget;
  /// Heads; D must be a multiple. Each head attends on its dh = D / heads channels.
  index_t heads = 1;
  /// Tokens per segment (the memory is read and written once per segment); 0: all T in one.
  index_t segment = 0;
  /// Multiplies every score; 0 means 1 / sqrt(dh).
  float scale = 0.f;
  /// Run from the last token to the first (core/direction.hpp): x and y are reached through
  /// reversed views, not copied, so the segments are cut from token T-1 and final_memory is the
  /// memory after the segment holding token 0. The segment step ignores it.
  bool reverse = false;
};

/// Gate weights: applied as (w u)[c] = sum_e w[c,e] u[e].
struct SlotMemoryWeights {
  ConstView<float, 2> w_input;          ///< [D,D]
  ConstView<float, 1> b_input;          ///< [D]
  ConstView<float, 2> w_forget;         ///< [D,D]
  ConstView<float, 1> b_forget;         ///< [D]
  ConstView<float, 2> w_output = {};    ///< [D,D], SlotGate::lm2 only (required there)
  ConstView<float, 1> b_output = {};    ///< [D], SlotGate::lm2 only (required there)
};

/// Inputs of slot_memory.
struct SlotMemoryInputs {
  ConstView<float, 3> x;       ///< [B,T,D]
  ConstView<float, 3> memory;  ///< [B,S,D]: the slots before the first segment
  /// The gate weights (SlotMemoryWeights).
  SlotMemoryWeights weights;
};

/// Outputs of slot_memory. Neither may overlap an input or the other.
struct SlotMemoryOutputs {
  TensorView<float, 3> y;             ///< [B,T,D]: the reads (output-gated under SlotGate::lm2)
  TensorView<float, 3> final_memory;  ///< [B,S,D]: the slots after the last segment
};

namespace detail {

struct SlotDims {
  index_t B, T, S, D, H, dh, L;
  float scale;
};

inline SlotDims validate_slot_memory(const ArgCheck& check, const ConstView<float, 3>& x, const ConstView<float, 3>& memory,
                                     const SlotMemoryWeights& w, const SlotMemoryOptions& options) {
  check.shape("x", x, {-1, -1, -1}, "B,T,D");
  SlotDims d{};
  d.B = x.size(0), d.T = x.size(1), d.D = x.size(2);
  check.that(d.D >= 1, "x", "needs D >= 1");
  check.shape("memory", memory, {d.B, -1, d.D}, "B,S,D");
  d.S = memory.size(1);
  check.that(d.S >= 1, "memory", "needs at least one slot");
  check.enum_value("gate", options.gate, 2);
  check.that(options.heads >= 1, "heads", "must be >= 1, got " + std::to_string(options.heads));
  check.divides(options.heads, d.D, "heads", "heads");
  d.H = options.heads, d.dh = d.D / d.H;
  check.that(options.segment >= 0, "segment", "must be >= 0, got " + std::to_string(options.segment));
  d.L = options.segment == 0 ? std::max<index_t>(d.T, 1) : options.segment;
  check.finite(options.scale, "scale");
  d.scale = options.scale == 0.f ? 1.f / std::sqrt(static_cast<float>(d.dh)) : options.scale;
  check.shape("w_input", w.w_input, {d.D, d.D}, "D,D").shape("b_input", w.b_input, {d.D}, "D");
  check.shape("w_forget", w.w_forget, {d.D, d.D}, "D,D").shape("b_forget", w.b_forget, {d.D}, "D");
  if (options.gate == SlotGate::lm2) {
    check.shape("w_output", w.w_output, {d.D, d.D}, "D,D").shape("b_output", w.b_output, {d.D}, "D");
  } else {
    check.that(!w.w_output.has_value() && !w.b_output.has_value(), "w_output",
               "is only used by SlotGate::lm2; SlotGate::input_forget has no output gate");
  }
  return d;
}

// A reverse call (options.reverse) as the forward call on reversed views of x and y.
inline std::pair<SlotMemoryInputs, SlotMemoryOutputs> slot_reversed_call(SlotMemoryInputs in, SlotMemoryOutputs out) {
  reverse_time_of(in.x, out.y);
  return {in, out};
}

inline void validate_slot_outputs(const ArgCheck& check, const SlotDims& d, const ConstView<float, 3>& x,
                                  const ConstView<float, 3>& memory, const SlotMemoryWeights& w,
                                  const TensorView<float, 3>& y, const TensorView<float, 3>& mem_out, const char* mem_name) {
  check.shape("y", y, {d.B, d.T, d.D}, "B,T,D").shape(mem_name, mem_out, {d.B, d.S, d.D}, "B,S,D");
  for (const auto* out : {&y, &mem_out}) {
    const char* name = out == &y ? "y" : mem_name;
    check.no_overlap(name, *out, "x", x).no_overlap(name, *out, "w_input", w.w_input)
        .no_overlap(name, *out, "w_forget", w.w_forget).no_overlap(name, *out, "b_input", w.b_input)
        .no_overlap(name, *out, "b_forget", w.b_forget).no_overlap(name, *out, "w_output", w.w_output)
        .no_overlap(name, *out, "b_output", w.b_output);
  }
  check.no_overlap("y", y, "memory", memory).no_overlap("y", y, mem_name, mem_out);
}

inline double slot_sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

}  // namespace detail

namespace reference {

/// slot_memory by its definition, in double: per batch row, per segment, the read and write
/// attentions as loops and the gates as dot products. For tests.
inline void slot_memory(const SlotMemoryInputs& in, const SlotMemoryOutputs& out, const SlotMemoryOptions& options = {}) {
  if (options.reverse) {
    const auto rev = detail::slot_reversed_call(in, out);
    return slot_memory(rev.first, rev.second, detail::forward_options(options));
  }
  const ArgCheck check("reference::slot_memory");
  const auto d = detail::validate_slot_memory(check, in.x, in.memory, in.weights, options);
  detail::validate_slot_outputs(check, d, in.x, in.memory, in.weights, out.y, out.final_memory, "final_memory");
  check.no_overlap("final_memory", out.final_memory, "memory", in.memory);
  const auto& w = in.weights;
  using Mat = std::vector<std::vector<double>>;
  for (index_t b = 0; b < d.B; ++b) {
    Mat M(static_cast<std::size_t>(d.S), std::vector<double>(static_cast<std::size_t>(d.D)));
    for (index_t s = 0; s < d.S; ++s)
      for (index_t c = 0; c < d.D; ++c) M[s][c] = in.memory(b, s, c);
    for (index_t t0 = 0; t0 < d.T; t0 += d.L) {
      const index_t len = std::min(d.L, d.T - t0);
      Mat U(static_cast<std::size_t>(d.S), std::vector<double>(static_cast<std::size_t>(d.D), 0.0));
      Mat R(static_cast<std::size_t>(len), std::vector<double>(static_cast<std::size_t>(d.D), 0.0));
      for (index_t h = 0; h < d.H; ++h) {
        const index_t c0 = h * d.dh;
        // read: tokens over slots
        for (index_t t = t0; t < t0 + len; ++t) {
          std::vector<double> p(static_cast<std::size_t>(d.S));
          double top = -INFINITY, total = 0;
          for (index_t s = 0; s < d.S; ++s) {
            double dot = 0;
            for (index_t c = c0; c < c0 + d.dh; ++c) dot += static_cast<double>(in.x(b, t, c)) * M[s][c];
            p[s] = d.scale * dot;
            top = std::fmax(top, p[s]);
          }
          for (auto& e : p) total += e = std::exp(e - top);
          for (index_t c = c0; c < c0 + d.dh; ++c) {
            for (index_t s = 0; s < d.S; ++s) R[t - t0][c] += p[s] / total * M[s][c];
          }
        }
        // write: slots over the segment's tokens
        for (index_t s = 0; s < d.S; ++s) {
          std::vector<double> p(static_cast<std::size_t>(len));
          double top = -INFINITY, total = 0;
          for (index_t j = 0; j < len; ++j) {
            double dot = 0;
            for (index_t c = c0; c < c0 + d.dh; ++c) dot += M[s][c] * in.x(b, t0 + j, c);
            p[j] = d.scale * dot;
            top = std::fmax(top, p[j]);
          }
          for (auto& e : p) total += e = std::exp(e - top);
          for (index_t c = c0; c < c0 + d.dh; ++c)
            for (index_t j = 0; j < len; ++j) U[s][c] += p[j] / total * in.x(b, t0 + j, c);
        }
      }
      for (index_t t = t0; t < t0 + len; ++t) {
        const auto& r = R[t - t0];
        for (index_t c = 0; c < d.D; ++c) {
          double g = 1.0;  // the output gate of lm2 (it needs every head of r)
          if (options.gate == SlotGate::lm2) {
            double pre = w.b_output(c);
            for (index_t e = 0; e < d.D; ++e) pre += static_cast<double>(w.w_output(c, e)) * r[e];
            g = detail::slot_sigmoid(pre);
          }
          out.y(b, t, c) = static_cast<float>(g * r[c]);
        }
      }
      for (index_t s = 0; s < d.S; ++s)
        for (index_t c = 0; c < d.D; ++c) {
          double gi = w.b_input(c), gf = w.b_forget(c);
          for (index_t e = 0; e < d.D; ++e) {
            gi += static_cast<double>(w.w_input(c, e)) * U[s][e];
            gf += static_cast<double>(w.w_forget(c, e)) * U[s][e];
          }
          const double write = options.gate == SlotGate::lm2 ? std::tanh(U[s][c]) : U[s][c];
          // M[s][c] is read by no later (s, c) of this loop: the gates use U only.
          M[s][c] = detail::slot_sigmoid(gf) * M[s][c] + detail::slot_sigmoid(gi) * write;
        }
    }
    for (index_t s = 0; s < d.S; ++s)
      for (index_t c = 0; c < d.D; ++c) out.final_memory(b, s, c) = static_cast<float>(M[s][c]);
  }
}

}  // namespace reference
}  // namespace seqmix
