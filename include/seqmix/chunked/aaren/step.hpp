// Aaren decode step: one token per (batch row, head), the online-softmax state (m, l, acc) updated
// in place and o = acc / l read out. Prefill with final_state, then steps, equals one call.
// Batched decode of sequences at different positions is one call: the state is a pool [S,H,*]
// addressed by batch.state_indices (-1: padding row, nothing read or written, o left untouched),
// batch.has_initial_state false starts a row from the empty state. No heap allocation after the
// first call on a thread.
#pragma once

#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/serving.hpp"

namespace seqmix {

/// Arguments of aaren_step: one token per (batch row, head).
struct AarenStepInputs {
  ConstView<float, 2> query;  ///< [H,Dk]
  ConstView<float, 3> k;      ///< [B,H,Dk] this token's keys
  ConstView<float, 3> v;      ///< [B,H,Dv]
  SequenceBatch batch = {};   ///< optional: state_indices [B] into the state pool, has_initial_state [B]
};

namespace detail::aaren {

// A row of a [B,H,D] step tensor: in place when contiguous, else copied to `scratch`.
inline const float* step_row(const ConstView<float, 3>& x, index_t b, index_t h, float* scratch) {
  if (x.is_last_dim_contiguous()) return x.ptr(b, h);
  for (index_t j = 0; j < x.size(2); ++j) scratch[j] = x(b, h, j);
  return scratch;
}

}  // namespace detail::aaren

/// o [B,H,Dv]; state m, l [B or S,H], acc [B or S,H,Dv] (aaren_reset_state for a fresh sequence).
inline void aaren_step(const AarenStepInputs& in, const TensorView<float, 3>& o, const AarenState& state,
                       const AarenOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::aaren;
  static const ArgCheck check("aaren_step");  // a static: building an ArgCheck allocates its name
  check.shape("k", in.k, std::array<index_t, 3>{-1, -1, -1}, "B,H,Dk");
  const Dims d{in.k.size(0), 1, in.k.size(1), in.k.size(2), in.v.size(2)};
  check.shape("query", in.query, std::array<index_t, 2>{d.H, d.Dk}, "H,Dk");
  check.shape("v", in.v, std::array<index_t, 3>{d.B, d.H, -1}, "B,H,Dv");
  check.shape("o", o, std::array<index_t, 3>{d.B, d.H, d.Dv}, "B,H,Dv");
  check.shape("state.m", state.m, std::array<index_t, 2>{-1, d.H}, "S,H");
  const index_t S = state.m.size(0);
  check.shape("state.l", state.l, std::array<index_t, 2>{S, d.H}, "S,H");
  check.shape("state.acc", state.acc, std::array<index_t, 3>{S, d.H, d.Dv}, "S,H,Dv");
  if (options.scale) check.finite(*options.scale, "options.scale");
  const auto rows = detail::serving::ssm_step_slots(check, in.batch, d.B, S);
  check.no_overlap("o", o, "k", in.k).no_overlap("o", o, "v", in.v);
  check.no_overlap("state.acc", state.acc, "k", in.k).no_overlap("state.acc", state.acc, "v", in.v);
  check.no_overlap("o", o, "state.m", state.m).no_overlap("o", o, "state.l", state.l);
  check.no_overlap("o", o, "state.acc", state.acc).no_overlap("o", o, "query", in.query);
  // One token is H*(Dk + 2*Dv) FMAs per row: a thread hand-off costs more than the work.
  (void)executor;
  const float scale = scale_of(options, d.Dk);
  // q, k, v, o rows and acc when strided; kept across calls (no allocation after the first).
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<std::size_t>(2 * d.Dk + 3 * d.Dv))
    scratch.resize(static_cast<std::size_t>(2 * d.Dk + 3 * d.Dv));
  float *qrow = scratch.data(), *krow = qrow + d.Dk, *vrow = krow + d.Dk, *orow = vrow + d.Dv, *acc_copy = orow + d.Dv;
  const bool acc_contiguous = state.acc.is_last_dim_contiguous(), o_contiguous = o.is_last_dim_contiguous();
  for (index_t b = 0; b < d.B; ++b) {
    const SequenceSpan s = rows[b];
    if (s.state_row < 0) continue;
    for (index_t h = 0; h < d.H; ++h) {
      Running st;
      st.acc = acc_contiguous ? state.acc.ptr(s.state_row, h) : acc_copy;
      if (s.read_state) {
        st.m = state.m(s.state_row, h), st.l = state.l(s.state_row, h);
        if (!acc_contiguous)
          for (index_t j = 0; j < d.Dv; ++j) acc_copy[j] = state.acc(s.state_row, h, j);
      } else {
        std::fill(st.acc, st.acc + d.Dv, 0.f);
      }
      const float* q = in.query.is_last_dim_contiguous() ? in.query.ptr(h) : qrow;
      if (q == qrow)
        for (index_t c = 0; c < d.Dk; ++c) qrow[c] = in.query(h, c);
      // The prefill's operations in the prefill's order (run_tokens), so steps equal a prefill.
      const float logit = scale * simd::dot(q, step_row(in.k, b, h, krow), d.Dk);
      absorb(st, logit, step_row(in.v, b, h, vrow), d.Dv);
      state.m(s.state_row, h) = st.m, state.l(s.state_row, h) = st.l;
      if (!acc_contiguous)
        for (index_t j = 0; j < d.Dv; ++j) state.acc(s.state_row, h, j) = acc_copy[j];
      float* out = o_contiguous ? o.ptr(b, h) : orow;
      scale_into(out, st.acc, output_scale(st.l), d.Dv);
      if (!o_contiguous)
        for (index_t j = 0; j < d.Dv; ++j) o(b, h, j) = orow[j];
    }
  }
}

}  // namespace seqmix
