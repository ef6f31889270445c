// Attention as a scan (Aaren; Feng et al. 2024, "Attention as an RNN"): a fixed query per head
// attends over every prefix of the keys, giving one output per token:
//   s_t = scale * q_h . k_t
//   o_t = sum_{s<=t} exp(s_s) v_s / sum_{s<=t} exp(s_s)
// with an optional initial state (m0, l0, acc0) standing for earlier tokens: it adds
// exp(m0) * acc0 to the numerator and exp(m0) * l0 to the denominator. The state is the
// online-softmax triple (m = running max logit, l = sum exp(s - m), acc = sum exp(s - m) v), the
// monoid OnlineSoftmax of core/scan/monoids.hpp with a vector acc; o_t = acc_t / l_t.
// Per-token queries make o_t ordinary causal attention (the logits then depend on t), which is
// seqmix::attention with causal = true, not a scan.
//
// Layouts: query [H,Dk], k [B,T,H,Dk], v [B,T,H,Dv], o [B,T,H,Dv]; state m, l [B,H], acc [B,H,Dv].
// Empty state (no earlier tokens): m = -inf, l = 0, acc = 0 (aaren_reset_state).
// Serving (inputs.batch, core/batch.hpp): packed k/v [1,total_T,H,*] with cu_seqlens, states as
// rows of a pool [S,H,*] through state_indices (-1: padding), has_initial_state (false: the empty
// state), and token_states, the triple after each token, for a speculative verify.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// Aaren's online-softmax state per (batch row, head), updated by aaren (final_state) and
/// aaren_step (docs/operators.md section 8).
struct AarenState {
  TensorView<float, 2> m;    ///< [B,H] running max logit
  TensorView<float, 2> l;    ///< [B,H] sum of exp(s - m)
  TensorView<float, 3> acc;  ///< [B,H,Dv] sum of exp(s - m) v
};
/// A read-only AarenState (the initial state of a prefill).
struct AarenConstState {
  /// [B,H] running max logit.
  ConstView<float, 2> m;
  /// [B,H] sum of exp(s - m).
  ConstView<float, 2> l;
  /// [B,H,Dv] sum of exp(s - m) v.
  ConstView<float, 3> acc;
};

/// AarenInputs::initial, the former name of initial_state: assigning it still compiles, with a
/// deprecation warning, and the operators read it when initial_state is not given. (A plain
/// [[deprecated]] member would warn in every aggregate initialization of AarenInputs.)
class AarenFormerInitial {
 public:
  /// Sets the initial state under its former name.
  [[deprecated("renamed AarenInputs::initial_state")]] AarenFormerInitial& operator=(const AarenConstState& s) {
    state_ = s;
    return *this;
  }
  /// The state assigned, empty views if none.
  const AarenConstState& state() const noexcept { return state_; }

 private:
  AarenConstState state_;
};

/// The state after every token of a prefill (speculative verify): restoring token t's triple
/// into a slot equals a prefill that stopped after token t. [B,T] are k's first two dims.
struct AarenTokenStates {
  TensorView<float, 3> m;    ///< [B,T,H]
  TensorView<float, 3> l;    ///< [B,T,H]
  TensorView<float, 4> acc;  ///< [B,T,H,Dv]
};

/// Arguments of aaren (attention as a scan): one learned query per head over every prefix of k.
struct AarenInputs {
  ConstView<float, 2> query;  ///< [H,Dk] the learned query of each head
  ConstView<float, 4> k;      ///< [B,T,H,Dk], or [1,total_T,H,Dk] packed
  ConstView<float, 4> v;      ///< [B,T,H,Dv]
  AarenConstState initial_state = {};  ///< optional (all three or none): earlier tokens; [N or S,H,*] with a batch
  SequenceBatch batch = {};       ///< optional: cu_seqlens, state_indices, has_initial_state (core/batch.hpp)
  AarenFormerInitial initial = {};  ///< deprecated name of initial_state
};

/// Outputs of aaren; o must not overlap an input.
struct AarenOutputs {
  TensorView<float, 4> o;         ///< [B,T,H,Dv]
  AarenState final_state = {};    ///< optional (all three or none); may alias the initial state
  AarenTokenStates token_states = {}; ///< optional (all three or none): the state after each token
};

/// How the fast form uses several threads.
enum class AarenSplit {
  automatic,  ///< heads when B*H gives every thread at least two (batch, head) pairs, time otherwise
  heads,      ///< one token-major pass per (batch row, block of heads)
  time,       ///< chunked scan: chunk summaries, carry scan through core associative_scan, rescan
};

/// Options of aaren and aaren_step.
struct AarenOptions {
  std::optional<float> scale;  ///< multiplies q.k; default 1/sqrt(Dk)
  /// How the fast form uses several threads (automatic by default).
  AarenSplit split = AarenSplit::automatic;
  index_t chunks = 0;  ///< time chunks per (batch, head) for AarenSplit::time; 0 = threads + 1
  /// Run from the last token to the first (core/direction.hpp): k, v, o and token_states are
  /// reached through reversed views, not copied; o_t then attends over tokens t..T-1, the initial
  /// state stands for tokens after T-1 and the final state is the one after token 0. Packed
  /// batches are refused with it; the step ignores it.
  bool reverse = false;
};

/// Sets a state to "no tokens seen" (m = -inf, l = 0, acc = 0).
inline void aaren_reset_state(const AarenState& s) {
  for (index_t b = 0; b < s.m.size(0); ++b)
    for (index_t h = 0; h < s.m.size(1); ++h) {
      s.m(b, h) = -std::numeric_limits<float>::infinity();
      s.l(b, h) = 0.f;
      for (index_t j = 0; j < s.acc.size(2); ++j) s.acc(b, h, j) = 0.f;
    }
}

namespace detail::aaren {

struct Dims {
  index_t B, T, H, Dk, Dv;
};

// A state triple of `rows` rows (-1: any; the state rows are then checked by SequenceMap).
template <class State>
void check_state(const ArgCheck& check, const State& s, index_t rows, const Dims& d, const char* m, const char* l,
                 const char* acc) {
  const bool any = s.m.has_value() || s.l.has_value() || s.acc.has_value();
  if (!any) return;
  check.shape(m, s.m, std::array<index_t, 2>{rows, d.H}, "S,H");
  check.shape(l, s.l, std::array<index_t, 2>{s.m.size(0), d.H}, "S,H");
  check.shape(acc, s.acc, std::array<index_t, 3>{s.m.size(0), d.H, d.Dv}, "S,H,Dv");
  check.that(s.m.has_value() && s.l.has_value() && (s.acc.has_value() || s.m.size(0) * d.H * d.Dv == 0), m,
             "and its siblings l, acc must be given together");
}

template <class State>
bool has_state(const State& s) {
  return s.m.has_value() || s.l.has_value() || s.acc.has_value();
}

// The inputs with the deprecated AarenInputs::initial moved to initial_state when only it is given.
inline AarenInputs current(const AarenInputs& in) {
  AarenInputs r = in;
  if (!has_state(in.initial_state)) r.initial_state = in.initial.state();
  r.initial = AarenFormerInitial{};
  return r;
}

// The validated call: shapes and the map from sequences to tokens and state rows.
struct Call {
  Dims d;
  SequenceMap seqs;
};

inline Call validate(const char* op, const AarenInputs& in, const AarenOutputs& out, const AarenOptions& options) {
  const ArgCheck check(op);
  check.shape("k", in.k, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,Dk");
  check.shape("v", in.v, std::array<index_t, 4>{in.k.size(0), in.k.size(1), in.k.size(2), -1}, "B,T,H,Dv");
  const Dims d{in.k.size(0), in.k.size(1), in.k.size(2), in.k.size(3), in.v.size(3)};
  check.shape("query", in.query, std::array<index_t, 2>{d.H, d.Dk}, "H,Dk");
  check.shape("o", out.o, std::array<index_t, 4>{d.B, d.T, d.H, d.Dv}, "B,T,H,Dv");
  // Without slots or packing the states have one row per batch row; otherwise SequenceMap
  // checks their rows against the sequences (N) or the pool (S).
  const bool serving = in.batch.packed() || in.batch.slotted();
  check_state(check, in.initial_state, serving ? -1 : d.B, d, "initial_state.m", "initial_state.l", "initial_state.acc");
  const index_t rows = has_state(in.initial_state) ? in.initial_state.m.size(0) : -1;
  check_state(check, out.final_state, serving ? rows : d.B, d, "final_state.m", "final_state.l", "final_state.acc");
  const index_t state_rows = rows >= 0 ? rows : has_state(out.final_state) ? out.final_state.m.size(0) : -1;
  const AarenTokenStates& ts = out.token_states;
  if (has_state(ts)) {
    check.shape("token_states.m", ts.m, std::array<index_t, 3>{d.B, d.T, d.H}, "B,T,H");
    check.shape("token_states.l", ts.l, std::array<index_t, 3>{d.B, d.T, d.H}, "B,T,H");
    check.shape("token_states.acc", ts.acc, std::array<index_t, 4>{d.B, d.T, d.H, d.Dv}, "B,T,H,Dv");
  }
  if (options.scale) check.finite(*options.scale, "options.scale");
  check.that(options.chunks >= 0, "options.chunks", "must be >= 0 (0 = automatic)");
  // state_rows -1: no state at all (a stateless prefill), which any batch accepts.
  const SequenceMap seqs = SequenceMap::make(check, in.batch, d.B, d.T, has_state(in.initial_state), state_rows);
  // Outputs are written while inputs are still read: none may share memory with an input (the
  // final state may be the initial one: it is written after its sequence's last read).
  auto refuse_overlap = [&](const char* name, const auto& view) {
    check.no_overlap(name, view, "k", in.k).no_overlap(name, view, "v", in.v).no_overlap(name, view, "query", in.query);
    check.no_overlap(name, view, "initial_state.m", in.initial_state.m).no_overlap(name, view, "initial_state.l", in.initial_state.l);
    check.no_overlap(name, view, "initial_state.acc", in.initial_state.acc);
  };
  refuse_overlap("o", out.o);
  refuse_overlap("token_states.m", ts.m);
  refuse_overlap("token_states.l", ts.l);
  refuse_overlap("token_states.acc", ts.acc);
  for (const auto& kept : {ts.m, ts.l}) check.no_overlap("token_states", kept, "o", out.o);
  check.no_overlap("token_states.acc", ts.acc, "o", out.o);
  return {d, seqs};
}

inline float scale_of(const AarenOptions& o, index_t Dk) {
  return o.scale ? *o.scale : 1.f / std::sqrt(static_cast<float>(Dk > 0 ? Dk : 1));
}

}  // namespace detail::aaren

namespace detail::aaren {

// A reverse call (options.reverse) as the forward call on reversed views of the token-indexed
// arguments; packed batches refused.
inline std::pair<AarenInputs, AarenOutputs> reversed_call(const char* op, AarenInputs in, AarenOutputs out) {
  check_reversible(op, in.batch, true);
  reverse_time_of(in.k, in.v, out.o, out.token_states.m, out.token_states.l, out.token_states.acc);
  return {in, out};
}

}  // namespace detail::aaren

namespace reference {

/// Every prefix computed directly (O(T^2) per head): the definition, not the recurrence.
inline void aaren(const AarenInputs& inputs, const AarenOutputs& out, const AarenOptions& options = {},
                  const Executor& executor = serial_executor()) {
  if (options.reverse) {
    const auto rev = detail::aaren::reversed_call("reference::aaren", inputs, out);
    return aaren(rev.first, rev.second, detail::forward_options(options), executor);
  }
  (void)executor;
  using namespace detail::aaren;
  const AarenInputs in = current(inputs);
  const auto [d, seqs] = validate("reference::aaren", in, out, options);
  const float scale = scale_of(options, d.Dk);
  const float ninf = -std::numeric_limits<float>::infinity();
  const bool keep = has_state(out.token_states);
  std::vector<double> s(static_cast<std::size_t>(d.T)), num(static_cast<std::size_t>(d.Dv));
  for (index_t seq = 0; seq < seqs.sequences(); ++seq) {
    const SequenceSpan span = seqs[seq];
    if (span.state_row < 0) continue;
    const index_t b = span.batch_row, t0 = span.token_begin, T = span.tokens, row = span.state_row;
    for (index_t h = 0; h < d.H; ++h) {
      const float m0 = span.read_state ? in.initial_state.m(row, h) : ninf;
      for (index_t t = 0; t < T; ++t) {
        double dot = 0;
        for (index_t c = 0; c < d.Dk; ++c) dot += static_cast<double>(in.query(h, c)) * in.k(b, t0 + t, h, c);
        s[t] = scale * dot;
      }
      // n = number of tokens in the prefix: o[n-1] for n >= 1, and the final state at n = T.
      for (index_t n = T == 0 ? 0 : 1; n <= T; ++n) {
        double m = m0;
        for (index_t u = 0; u < n; ++u) m = std::max(m, s[u]);
        double den = m0 == ninf ? 0.0 : in.initial_state.l(row, h) * std::exp(m0 - m);
        for (index_t j = 0; j < d.Dv; ++j) num[j] = m0 == ninf ? 0.0 : in.initial_state.acc(row, h, j) * std::exp(m0 - m);
        for (index_t u = 0; u < n; ++u) {
          if (s[u] == ninf) continue;  // weight 0: takes no part (its v neither)
          const double w = std::exp(s[u] - m);  // NaN for a NaN logit, and for +inf (inf - inf)
          den += w;
          for (index_t j = 0; j < d.Dv; ++j) num[j] += w * in.v(b, t0 + u, h, j);
        }
        if (n >= 1)
          for (index_t j = 0; j < d.Dv; ++j)
            out.o(b, t0 + n - 1, h, j) = den == 0 ? 0.f : static_cast<float>(num[j] / den);  // NaN den stays
        if (n >= 1 && keep) {
          out.token_states.m(b, t0 + n - 1, h) = static_cast<float>(m);
          out.token_states.l(b, t0 + n - 1, h) = static_cast<float>(den);
          for (index_t j = 0; j < d.Dv; ++j) out.token_states.acc(b, t0 + n - 1, h, j) = static_cast<float>(num[j]);
        }
        if (n == T && out.final_state.m.has_value()) {
          out.final_state.m(row, h) = static_cast<float>(m);
          out.final_state.l(row, h) = static_cast<float>(den);
          for (index_t j = 0; j < d.Dv; ++j) out.final_state.acc(row, h, j) = static_cast<float>(num[j]);
        }
      }
    }
  }
}

}  // namespace reference
}  // namespace seqmix
