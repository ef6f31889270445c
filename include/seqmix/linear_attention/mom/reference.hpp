// mom (Mixture-of-Memories, Du et al. 2025): M gated delta-rule memories per sequence, a router
// that sends each token to a few of them, each memory updated only by the tokens routed to it,
// the output the weighted sum of what the routed memories return. This header holds the argument
// structs, the router, their validation and the readable definition seqmix::reference::mom. Fast
// prefill: fast.hpp; decode step: step.hpp.
//
// Token t of batch row b has E entries e (its top-k routes); entry e names a memory m = memory[b,t,e]
// (distinct within a token) and brings that memory's own key, value, beta and gate (MoM gives each
// memory its own key/value projections, so the caller computes them only for the routed memories,
// as a mixture of experts does):
//   S_m' = exp(g_{t,e}) S_m                          (per key channel with DeltaGate::channel)
//   S_m  = S_m' + beta_{t,e} k_{t,e} (v_{t,e} - S_m'^T k_{t,e})^T
//   o_t  = sum_e weight[b,t,e] * scale * S_m^T q_t   (the update first, then the read)
// Memories not routed to at token t are neither decayed nor read. The query is shared. MoM's
// always-on shared memory is one more memory that every token routes to with weight 1 (an entry
// of its own). mom_route turns router logits into top-k entries with softmax weights.
//
// Non-finite values follow the arithmetic of the definition: a NaN in an entry reaches the memory
// it updates (and the tokens that later read that memory), never another memory or an earlier token.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"

namespace seqmix {

/// Options of mom and mom_step.
struct MomOptions {
  /// Memories per sequence, M >= 1 (the states are [B,M,HV,K,V]).
  index_t memories = 1;
  /// The memories' update: gate kind, scale, qk_norm, chunk size, algorithm of the gated delta
  /// rule. memory.reverse runs from the last token to the first (core/direction.hpp): every
  /// token-indexed input (the routes and weights too, given per token by the caller) and o are
  /// reached through reversed views, not copied; the final state is the one after token 0. The
  /// step ignores it.
  GatedDeltaRuleOptions memory = {};
};

/// mom's inputs: every token carries E routed entries. Optional views are empty when not given.
struct MomInputs {
  ConstView<float, 4> q;                     ///< [B,T,HK,K], shared by the memories
  ConstView<float, 5> k;                     ///< [B,T,E,HK,K], each entry's key (its memory's projection)
  ConstView<float, 5> v;                     ///< [B,T,E,HV,V]
  ConstView<float, 4> beta;                  ///< [B,T,E,HV]
  ConstView<float, 4> g_scalar = {};         ///< [B,T,E,HV] log-decays <= 0 (DeltaGate::scalar)
  ConstView<float, 5> g = {};                ///< [B,T,E,HV,K] log-decays <= 0 (DeltaGate::channel)
  ConstView<std::int32_t, 3> memory;         ///< [B,T,E], memory ids in [0, M), distinct within a token
  ConstView<float, 3> weight;                ///< [B,T,E], the weight of each entry's read
  ConstView<float, 5> initial_state = {};    ///< [B,M,HV,K,V], optional (zeros if absent)
};

/// mom's outputs; o must not overlap an input, final_state may be initial_state.
struct MomOutputs {
  TensorView<float, 4> o;                    ///< [B,T,HV,V]
  TensorView<float, 5> final_state = {};     ///< [B,M,HV,K,V], optional
};

/// mom_step's inputs: one token per batch row, E entries each.
struct MomStepInputs {
  ConstView<float, 3> q;                     ///< [B,HK,K]
  ConstView<float, 4> k;                     ///< [B,E,HK,K]
  ConstView<float, 4> v;                     ///< [B,E,HV,V]
  ConstView<float, 3> beta;                  ///< [B,E,HV]
  ConstView<float, 3> g_scalar = {};         ///< [B,E,HV] (DeltaGate::scalar)
  ConstView<float, 4> g = {};                ///< [B,E,HV,K] (DeltaGate::channel)
  ConstView<std::int32_t, 2> memory;         ///< [B,E]
  ConstView<float, 2> weight;                ///< [B,E]
};

/// mom_step's outputs.
struct MomStepOutputs {
  TensorView<float, 3> o;                    ///< [B,HV,V]
  TensorView<float, 5> state;                ///< [B,M,HV,K,V], updated in place (required)
};

namespace detail {

// The sizes of a mom call (T = 1 for a step).
struct MomDims {
  index_t B, T, E, M, HK, HV, K, V;
};

// Memory ids in [0, M) and distinct within each token: two entries of one token updating the
// same memory would make the result depend on their order.
inline void check_mom_routes(const ArgCheck& check, const ConstView<std::int32_t, 2>& ids, index_t M) {
  const index_t E = ids.size(1);
  for (index_t r = 0; r < ids.size(0); ++r)
    for (index_t e = 0; e < E; ++e) {
      const index_t m = ids(r, e);
      if (m < 0 || m >= M)
        check.fail("memory", "holds id " + std::to_string(m) + " at token row " + std::to_string(r) +
                                 ", outside [0, M = " + std::to_string(M) + ")");
      for (index_t f = 0; f < e; ++f)
        if (ids(r, f) == m)
          check.fail("memory", "routes token row " + std::to_string(r) + " to memory " + std::to_string(m) +
                                   " twice (entries must name distinct memories)");
    }
}

// A reverse call (options.memory.reverse) as the forward call on reversed views of the
// token-indexed arguments, with the direction taken out of the options.
struct MomReversedCall {
  MomInputs in;
  MomOutputs out;
  MomOptions options;
};
inline MomReversedCall mom_reversed_call(MomInputs in, MomOutputs out, MomOptions options) {
  reverse_time_of(in.q, in.k, in.v, in.beta, in.g_scalar, in.g, in.memory, in.weight, out.o);
  options.memory.reverse = false;
  return {in, out, options};
}

// Validates a prefill (a step is validated as a prefill of T = 1 over views with a token axis of
// one, step.hpp).
inline MomDims validate_mom(const ArgCheck& check, const MomInputs& in, const MomOutputs& out, const MomOptions& options) {
  check.shape("q", in.q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,HK,K");
  const index_t B = in.q.size(0), T = in.q.size(1), HK = in.q.size(2), K = in.q.size(3);
  check.shape("memory", in.memory, std::array<index_t, 3>{B, T, -1}, "B,T,E");
  const index_t E = in.memory.size(2);
  if (HK <= 0 || K <= 0) check.fail("q", "must have at least one head and one key channel, got shape " + shape_to_string(in.q.shape()));
  if (E <= 0) check.fail("memory", "must give at least one entry per token (E >= 1), got shape " + shape_to_string(in.memory.shape()));
  if (options.memories < 1) check.fail("options.memories", "must be >= 1, got " + std::to_string(options.memories));
  check.shape("k", in.k, std::array<index_t, 5>{B, T, E, HK, K}, "B,T,E,HK,K");
  check.shape("v", in.v, std::array<index_t, 5>{B, T, E, -1, -1}, "B,T,E,HV,V");
  const index_t HV = in.v.size(3), V = in.v.size(4);
  check.divides(HK, HV, "v", "q/k heads; v's head count HV (dimension 3)");
  if (V <= 0) check.fail("v", "must have at least one value channel, got shape " + shape_to_string(in.v.shape()));
  delta_update::check_beta<4>(check, in.beta, {B, T, E, HV}, "B,T,E,HV");  // finite, as the delta rule's
  check.shape("weight", in.weight, std::array<index_t, 3>{B, T, E}, "B,T,E");
  check.enum_value("options.memory.gate", options.memory.gate, 2);
  check.enum_value("options.memory.qk_norm", options.memory.qk_norm, 2);
  check.enum_value("options.memory.algorithm", options.memory.algorithm, 3);
  if (options.memory.chunk_size < 1 || options.memory.chunk_size > 4096)
    check.fail("options.memory.chunk_size", "must be in [1, 4096], got " + std::to_string(options.memory.chunk_size));
  if (options.memory.scale) check.finite(*options.memory.scale, "options.memory.scale");
  if (options.memory.gate == DeltaGate::scalar) {
    check.shape("g_scalar", in.g_scalar, std::array<index_t, 4>{B, T, E, HV}, "B,T,E,HV");
    check.that(!in.g.has_value(), "g", "must be empty with DeltaGate::scalar (the gate is g_scalar)");
  } else {
    check.shape("g", in.g, std::array<index_t, 5>{B, T, E, HV, K}, "B,T,E,HV,K");
    check.that(!in.g_scalar.has_value(), "g_scalar", "must be empty with DeltaGate::channel (the gate is g)");
  }
  // Log-gates <= 0 (-inf a reset), refused otherwise as by the gated delta rule itself.
  la::check_log_gate(check, "g_scalar", in.g_scalar, serial_executor());
  la::check_log_gate(check, "g", in.g, serial_executor());
  const std::array<index_t, 5> state{B, options.memories, HV, K, V};
  check.optional_shape("initial_state", in.initial_state, state, "B,M,HV,K,V");
  check.shape("o", out.o, std::array<index_t, 4>{B, T, HV, V}, "B,T,HV,V");
  check.optional_shape("final_state", out.final_state, state, "B,M,HV,K,V");
  for (index_t b = 0; b < B; ++b) check_mom_routes(check, in.memory[b], options.memories);
  check.no_overlap("o", out.o, "q", in.q).no_overlap("o", out.o, "k", in.k).no_overlap("o", out.o, "v", in.v);
  check.no_overlap("o", out.o, "beta", in.beta).no_overlap("o", out.o, "g", in.g).no_overlap("o", out.o, "g_scalar", in.g_scalar);
  check.no_overlap("o", out.o, "weight", in.weight).no_overlap("o", out.o, "initial_state", in.initial_state);
  check.no_overlap("o", out.o, "final_state", out.final_state);
  if (out.final_state.has_value() && !(in.initial_state.data() == out.final_state.data() &&
                                       in.initial_state.strides() == out.final_state.strides()))
    check.no_overlap("final_state", out.final_state, "initial_state", in.initial_state);
  check.no_overlap("final_state", out.final_state, "q", in.q).no_overlap("final_state", out.final_state, "k", in.k);
  check.no_overlap("final_state", out.final_state, "v", in.v).no_overlap("final_state", out.final_state, "beta", in.beta);
  check.no_overlap("final_state", out.final_state, "weight", in.weight);
  return {B, T, E, options.memories, HK, HV, K, V};
}

}  // namespace detail

/// Top-k routing of MoM: entries [B,T,top_k] name the top_k memories of each token by router
/// logit (ties to the lower id) and weight them by the softmax of their logits. A NaN logit is
/// always selected (ranked above every number) and makes its token's weights NaN, so it is never
/// hidden. logits [B,T,M], 1 <= top_k <= M.
inline void mom_route(const ConstView<float, 3>& logits, const TensorView<std::int32_t, 3>& memory,
                      const TensorView<float, 3>& weight) {
  const ArgCheck check("mom_route");
  check.shape("logits", logits, std::array<index_t, 3>{-1, -1, -1}, "B,T,M");
  const index_t B = logits.size(0), T = logits.size(1), M = logits.size(2);
  check.shape("memory", memory, std::array<index_t, 3>{B, T, -1}, "B,T,top_k");
  const index_t top_k = memory.size(2);
  if (top_k < 1 || top_k > M)
    check.fail("memory", "must have 1 <= top_k <= M = " + std::to_string(M) + " entries per token, got shape " +
                             shape_to_string(memory.shape()));
  if (M > std::numeric_limits<std::int32_t>::max()) check.fail("logits", "has more memories than int32 ids can name");
  check.shape("weight", weight, std::array<index_t, 3>{B, T, top_k}, "B,T,top_k");
  check.no_overlap("weight", weight, "logits", logits);
  std::vector<index_t> order(static_cast<std::size_t>(M));
  for (index_t b = 0; b < B; ++b)
    for (index_t t = 0; t < T; ++t) {
      const ConstView<float, 1> row = logits[b][t];
      for (index_t m = 0; m < M; ++m) order[static_cast<std::size_t>(m)] = m;
      auto before = [&](index_t a, index_t c) {
        const float x = row(a), y = row(c);
        if (std::isnan(x) != std::isnan(y)) return std::isnan(x);
        if (x != y && !std::isnan(x)) return x > y;
        return a < c;
      };
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(), before);
      float top = row(order[0]);
      double sum = 0;
      for (index_t e = 0; e < top_k; ++e) sum += std::exp(double(row(order[static_cast<std::size_t>(e)])) - top);
      for (index_t e = 0; e < top_k; ++e) {
        const index_t m = order[static_cast<std::size_t>(e)];
        memory(b, t, e) = static_cast<std::int32_t>(m);
        weight(b, t, e) = static_cast<float>(std::exp(double(row(m)) - top) / sum);
      }
    }
}

namespace reference {

/// The readable definition of mom (see the top of this header), token by token, each memory's
/// state in double.
inline void mom(const MomInputs& in, const MomOutputs& out, const MomOptions& options = {}) {
  if (options.memory.reverse) {
    const auto rev = detail::mom_reversed_call(in, out, options);
    return mom(rev.in, rev.out, rev.options);
  }
  const ArgCheck check("reference::mom");
  const detail::MomDims d = detail::validate_mom(check, in, out, options);
  const double scale = options.memory.scale ? *options.memory.scale : 1.0 / std::sqrt(static_cast<double>(d.K));
  const index_t group = d.HV / d.HK;
  const std::size_t per_memory = static_cast<std::size_t>(d.HV * d.K * d.V);
  std::vector<double> S(static_cast<std::size_t>(d.M) * per_memory), u(static_cast<std::size_t>(d.V));
  for (index_t b = 0; b < d.B; ++b) {
    auto s = [&](index_t m, index_t hv, index_t r, index_t c) -> double& {
      return S[static_cast<std::size_t>(m) * per_memory + static_cast<std::size_t>((hv * d.K + r) * d.V + c)];
    };
    for (index_t m = 0; m < d.M; ++m)
      for (index_t hv = 0; hv < d.HV; ++hv)
        for (index_t r = 0; r < d.K; ++r)
          for (index_t c = 0; c < d.V; ++c) s(m, hv, r, c) = in.initial_state.has_value() ? in.initial_state(b, m, hv, r, c) : 0.0;
    for (index_t t = 0; t < d.T; ++t) {
      for (index_t hv = 0; hv < d.HV; ++hv)
        for (index_t c = 0; c < d.V; ++c) out.o(b, t, hv, c) = 0.f;
      std::vector<double> acc(static_cast<std::size_t>(d.HV * d.V), 0.0);
      for (index_t e = 0; e < d.E; ++e) {
        const index_t m = in.memory(b, t, e);
        for (index_t hv = 0; hv < d.HV; ++hv) {
          const index_t h = hv / group;
          const std::vector<double> q = delta_update::reference_row(in.q[b][t][h], options.memory.qk_norm);
          const std::vector<double> k = delta_update::reference_row(in.k[b][t][e][h], options.memory.qk_norm);
          for (index_t r = 0; r < d.K; ++r) {
            const double g = options.memory.gate == DeltaGate::scalar ? in.g_scalar(b, t, e, hv) : in.g(b, t, e, hv, r);
            for (index_t c = 0; c < d.V; ++c) s(m, hv, r, c) *= std::exp(g);
          }
          for (index_t c = 0; c < d.V; ++c) {
            double kS = 0;
            for (index_t r = 0; r < d.K; ++r) kS += k[static_cast<std::size_t>(r)] * s(m, hv, r, c);
            u[static_cast<std::size_t>(c)] = double(in.beta(b, t, e, hv)) * (double(in.v(b, t, e, hv, c)) - kS);
          }
          for (index_t r = 0; r < d.K; ++r)
            for (index_t c = 0; c < d.V; ++c) s(m, hv, r, c) += k[static_cast<std::size_t>(r)] * u[static_cast<std::size_t>(c)];
          for (index_t c = 0; c < d.V; ++c) {
            double read = 0;
            for (index_t r = 0; r < d.K; ++r) read += q[static_cast<std::size_t>(r)] * s(m, hv, r, c);
            // The fast form rounds each memory's read to float before weighting it; so does this.
            acc[static_cast<std::size_t>(hv * d.V + c)] += double(in.weight(b, t, e)) * double(static_cast<float>(scale * read));
          }
        }
      }
      for (index_t hv = 0; hv < d.HV; ++hv)
        for (index_t c = 0; c < d.V; ++c) out.o(b, t, hv, c) = static_cast<float>(acc[static_cast<std::size_t>(hv * d.V + c)]);
    }
    if (out.final_state.has_value())
      for (index_t m = 0; m < d.M; ++m)
        for (index_t hv = 0; hv < d.HV; ++hv)
          for (index_t r = 0; r < d.K; ++r)
            for (index_t c = 0; c < d.V; ++c) out.final_state(b, m, hv, r, c) = static_cast<float>(s(m, hv, r, c));
  }
}

}  // namespace reference
}  // namespace seqmix
