// Decode step of the elementwise nonlinear recurrence: one token per batch row,
// state <- f(state, x_t) in place. Prefill with nonlinear_recurrence(_newton) and h_last, then
// steps, equals one call over the whole sequence.
#pragma once

#include <array>

#include "seqmix/chunked/newton/fast.hpp"

namespace seqmix {

/// Arguments of nonlinear_recurrence_step: one token per batch row.
template <class Cell>
struct NonlinearRecurrenceStepInputs {
  std::array<ConstView<float, 2>, Cell::kInputs> inputs;  ///< each [B,D]: this token's streams
  std::array<ConstView<float, 1>, Cell::kParams> params;  ///< each [D]
  /// optional: state_indices [B] into a state pool [S,D] (-1: padding row, nothing read or
  /// written), has_initial_state [B] (false: the row starts from h = 0).
  SequenceBatch batch = {};
};

/// state [B,D] or a pool [S,D]: h_{t-1} on entry, h_t on return (channels contiguous on the SIMD
/// path). No heap allocation.
template <class Cell>
void nonlinear_recurrence_step(const NonlinearRecurrenceStepInputs<Cell>& in, const TensorView<float, 2>& state,
                               const Executor& executor = serial_executor()) {
  using namespace detail::newton;
  static const ArgCheck check("nonlinear_recurrence_step");  // a static: building one allocates its name
  check.shape("state", state, std::array<index_t, 2>{-1, -1}, "S,D");
  const index_t S = state.size(0), D = state.size(1);
  const bool slotted = in.batch.slotted();
  const index_t B = slotted ? in.batch.state_indices.size() : S;
  for (int s = 0; s < Cell::kInputs; ++s)
    check.shape(Cell::kInputNames[s], in.inputs[s], std::array<index_t, 2>{B, D}, "B,D");
  for (int s = 0; s < Cell::kParams; ++s) check.shape(Cell::kParamNames[s], in.params[s], std::array<index_t, 1>{D}, "D");
  const auto rows = detail::serving::ssm_step_slots(check, in.batch, B, S);
  for (int s = 0; s < Cell::kInputs; ++s) check.no_overlap("state", state, Cell::kInputNames[s], in.inputs[s]);
  bool contiguous = state.is_last_dim_contiguous();
  for (int s = 0; s < Cell::kInputs; ++s) contiguous = contiguous && in.inputs[s].is_last_dim_contiguous();
  for (int s = 0; s < Cell::kParams; ++s) contiguous = contiguous && in.params[s].is_last_dim_contiguous();
  (void)executor;  // one token of B*D scalar recurrences: far below a thread hand-off's cost
  for (index_t b = 0; b < B; ++b) {
    const SequenceSpan r = rows[b];
    if (r.state_row < 0) continue;
    const index_t row = r.state_row;
    if (!r.read_state)
      for (index_t c = 0; c < D; ++c) state(row, c) = 0.f;
    if (!contiguous) {
      float x[Cell::kInputs], p[Cell::kParams];
      for (index_t c = 0; c < D; ++c) {
        for (int s = 0; s < Cell::kInputs; ++s) x[s] = in.inputs[s](b, c);
        for (int s = 0; s < Cell::kParams; ++s) p[s] = in.params[s](c);
        state(row, c) = Cell::value(state(row, c), x, p);
      }
      continue;
    }
    float* h = state.ptr(row);
    over_channels(D, [&](index_t i, auto tag) {
      using V = decltype(tag);
      V x[Cell::kInputs], p[Cell::kParams];
      for (int s = 0; s < Cell::kInputs; ++s) x[s] = load_v<V>(in.inputs[s].ptr(b) + i);
      for (int s = 0; s < Cell::kParams; ++s) p[s] = load_v<V>(in.params[s].data() + i);
      store_v(h + i, Cell::value(load_v<V>(h + i), x, p));
    });
  }
}

}  // namespace seqmix
