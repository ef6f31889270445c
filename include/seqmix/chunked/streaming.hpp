// Streaming segments: one long input fed through a recurrent operator in segments of any size,
// with memory bounded by the operator's state.
//
//   seqmix::RecurrentStream<seqmix::GatedLinearAttentionInputs> stream(options);
//   for (each segment of tokens) stream.feed(segment_inputs, segment_outputs, pool);
//
// Every recurrent operator of the library takes an initial state and writes a final state that
// may alias it, so a segment is one call of the fast operator with the stream's own state as
// both. What makes the result reproducible is the rest of the call: the stream fixes the
// prefill algorithm once (an `automatic` choice can differ between a short and a long call) and
// drops per-call options that only make sense at the start of a sequence (a JRT prefix) after
// the first segment. Then, for segments whose lengths are multiples of the chunk size, the
// stream computes bit for bit what one call over the whole input computes (the same chunk grid
// and the same arithmetic per chunk); other boundaries change rounding only.
//
// Supported: linear_attention, gated_linear_attention (all GateKinds), rwkv6, delta_rule,
// gated_delta_rule (scalar gate and KDA), rwkv7, causal_conv1d (the conv state), selective_scan
// and ssd. gated_linear_attention, rwkv6, the delta rules and rwkv7 also stream their 16-bit
// storage forms (e.g. RecurrentStream<GatedLinearAttentionInputsOf<bf16>>: each segment is one
// call on views of the 16-bit tensors). StreamTraits<Inputs> below is the one place that knows
// each operator's per-token inputs, state tensors and call; a new recurrent operator needs one
// specialization.
#pragma once

#include <limits>
#include <sstream>
#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention.hpp"
#include "seqmix/ssm.hpp"

namespace seqmix {

/// What a stream needs to know about one operator (specialized below for each).
///   Outputs, Options, State     the operator's output and option structs; the state it carries
///   name                        for error messages
///   tokens(in)                  T of a call
///   slice(in|out, t0, count)    tokens [t0, t0 + count) of a call (views, no copies)
///   state_shape(in, options)    the shape of the main state tensor for a call
///   make_state(in, options)     a zero state shaped for the call
///   load_initial(state, in)     copies a caller's initial state into the stream's state
///   write_final(state, out)     copies the state into the final-state views a caller asked for
///   bind(in, out, state)        points initial and final state at the stream's state
///   fix_options(options, in, ex) the options every segment uses (algorithm resolved for the
///                               executor of the first segment)
///   later_options(options)      the options of segments after the first
///   run(in, out, options, ex)   the fast operator
template <class Inputs>
struct StreamTraits;

namespace detail::stream {

template <class T, std::size_t R>
TensorView<T, R> time_slice(const TensorView<T, R>& x, index_t t0, index_t count) {
  return x.has_value() ? x.slice(1, t0, count) : x;
}

template <class T, std::size_t R>
void copy_into(Tensor<T, R>& dst, const ConstView<T, R>& src) {
  if (src.has_value()) copy(src, dst.view());
}

template <class T, std::size_t R>
void copy_out(const Tensor<T, R>& src, const TensorView<T, R>& dst) {
  if (dst.has_value()) copy(src.cview(), dst);
}

// What every operator with one state tensor (initial_state in, final_state out) shares: the
// state, its copies in and out, and options that need no fixing. Derived supplies name,
// tokens, slice, state_shape and run (and fix_options where an algorithm choice needs pinning).
template <class In, class Out, class Opt, std::size_t R>
struct SingleStateTraits {
  using Outputs = Out;
  using Options = Opt;
  struct State {
    Tensor<float, R> s;
  };
  static void load_initial(State& st, const In& in) { copy_into(st.s, in.initial_state); }
  static void bind(In& in, Out& out, State& st, const Opt&) {
    in.initial_state = st.s.cview(), out.final_state = st.s.view();
  }
  static void write_final(const State& st, const Out& out) { copy_out(st.s, out.final_state); }
  static Opt fix_options(Opt o, const In&, const Executor&) { return o; }
  static Opt later_options(Opt o) { return o; }
};

// The per-token views of an operator's inputs, sliced to tokens [t0, t0 + n) (empty optional
// views stay empty).
template <class... Views>
void slice_all(index_t t0, index_t n, Views&... views) {
  ((views = time_slice(views, t0, n)), ...);
}

}  // namespace detail::stream

namespace detail::stream {

// make_state of a SingleStateTraits operator: a zero state of Traits::state_shape.
template <class Traits, class In, class Opt>
typename Traits::State make_single_state(const In& in, const Opt& o) {
  return {decltype(std::declval<typename Traits::State>().s)(Traits::state_shape(in, o))};
}

// What a delta-rule stream's automatic choice counts (choose_stream_delta_algorithm): an endless
// sequence of the call's heads on the value block each of its calls runs on `executor`
// (choice_value_block of B x HV items, as run_delta_items splits them), so the stream pins the
// form one call over the same batch and executor takes: one head on two threads at K = V = 128
// runs two blocks of 64 columns, recurrent, where all of V would count as chunked.
template <class In, class Opt>
delta_update::DeltaShape delta_shape(const In& in, const Opt& o, const Executor& executor) {
  const index_t B = in.q.size(0), K = in.k.size(3), V = in.v.size(3), HV = in.v.size(2);
  delta_update::DeltaShape s{std::numeric_limits<index_t>::max(), K, V, HV, o.chunk_size, o.bf16_compute};
  s.value_block = delta_update::choice_value_block(B * HV, K, V, executor.concurrency());
  return s;
}
}  // namespace detail::stream

// The specializations below fill StreamTraits' interface for each supported operator; the API
// reference lists the supported operators (above) rather than each specialization's members.
/// \cond SEQMIX_STREAM_TRAITS

// ---- linear attention family ---------------------------------------------------------------

template <>
struct StreamTraits<LinearAttentionInputs> {
  using Outputs = LinearAttentionOutputs;
  using Options = LinearAttentionOptions;
  struct State {
    Tensor<float, 4> s;  ///< [B,HV,Kf,V]
    Tensor<float, 3> z;  ///< [B,HV,Kf] (normalize only)
  };
  static constexpr const char* name = "linear_attention";
  static index_t tokens(const LinearAttentionInputs& in) { return in.q.size(1); }
  static LinearAttentionInputs slice(LinearAttentionInputs in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.q, in.k, in.v);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.o);
    return out;
  }
  static std::array<index_t, 4> state_shape(const LinearAttentionInputs& in, const Options& o) {
    return {in.q.size(0), in.v.size(2), feature_dim(o.feature_map, in.k.size(3)), in.v.size(3)};
  }
  static State make_state(const LinearAttentionInputs& in, const Options& o) {
    const auto shape = state_shape(in, o);
    return {Tensor<float, 4>(shape), Tensor<float, 3>({shape[0], shape[1], shape[2]})};
  }
  static void load_initial(State& st, const LinearAttentionInputs& in) {
    detail::stream::copy_into(st.s, in.initial_state);
    detail::stream::copy_into(st.z, in.initial_normalizer);
  }
  static void bind(LinearAttentionInputs& in, Outputs& out, State& st, const Options& o) {
    in.initial_state = st.s.cview(), out.final_state = st.s.view();
    in.initial_normalizer = o.normalize ? st.z.cview() : ConstView<float, 3>{};
    out.final_normalizer = o.normalize ? st.z.view() : TensorView<float, 3>{};
  }
  static void write_final(const State& st, const Outputs& out) {
    detail::stream::copy_out(st.s, out.final_state);
    detail::stream::copy_out(st.z, out.final_normalizer);
  }
  static Options fix_options(Options o, const LinearAttentionInputs& in, const Executor&) {
    if (o.algorithm == LinearAttentionAlgorithm::automatic)
      o.algorithm = detail::la::choose_algorithm(GateKind::none, std::numeric_limits<index_t>::max(),
                                                 feature_dim(o.feature_map, in.k.size(3)), in.v.size(3), o.chunk_size,
                                                 o.bf16_compute == Bf16Compute::dot);
    return o;
  }
  static Options later_options(Options o) {
    o.prefix_len = 0;  // a JRT prefix belongs to the start of the sequence
    return o;
  }
  template <class Deferred = void>  // its Eigen products compile where a stream runs (docs/compile_time.md)
  static void run(const LinearAttentionInputs& in, const Outputs& out, const Options& o, const Executor& ex) {
    linear_attention<Deferred>(in, out, o, ex);
  }
};

template <class T>
struct StreamTraits<GatedLinearAttentionInputsOf<T>>
    : detail::stream::SingleStateTraits<GatedLinearAttentionInputsOf<T>, GatedLinearAttentionOutputs,
                                        GatedLinearAttentionOptions, 4> {
  using Base =
      detail::stream::SingleStateTraits<GatedLinearAttentionInputsOf<T>, GatedLinearAttentionOutputs,
                                        GatedLinearAttentionOptions, 4>;
  using typename Base::Options;
  using typename Base::Outputs;
  using typename Base::State;
  static constexpr const char* name = "gated_linear_attention";
  static index_t tokens(const GatedLinearAttentionInputsOf<T>& in) { return in.q.size(1); }
  static GatedLinearAttentionInputsOf<T> slice(GatedLinearAttentionInputsOf<T> in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.q, in.k, in.v, in.g, in.g_scalar);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.o);
    return out;
  }
  static std::array<index_t, 4> state_shape(const GatedLinearAttentionInputsOf<T>& in, const Options&) {
    return {in.q.size(0), in.v.size(2), in.k.size(3), in.v.size(3)};
  }
  static State make_state(const GatedLinearAttentionInputsOf<T>& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static Options fix_options(Options o, const GatedLinearAttentionInputsOf<T>& in, const Executor&) {
    if (o.algorithm == LinearAttentionAlgorithm::automatic)
      o.algorithm = detail::la::choose_algorithm(detail::la::effective_gate(o.gate), std::numeric_limits<index_t>::max(),
                                                 in.k.size(3), in.v.size(3), o.chunk_size,
                                                 o.bf16_compute == Bf16Compute::dot);
    return o;
  }
  static void run(const GatedLinearAttentionInputsOf<T>& in, const Outputs& out, const Options& o, const Executor& ex) {
    gated_linear_attention(in, out, o, ex);
  }
};

template <class T>
struct StreamTraits<Rwkv6InputsOf<T>>
    : detail::stream::SingleStateTraits<Rwkv6InputsOf<T>, Rwkv6Outputs, Rwkv6Options, 4> {
  using Base =
      detail::stream::SingleStateTraits<Rwkv6InputsOf<T>, Rwkv6Outputs, Rwkv6Options, 4>;
  using typename Base::Options;
  using typename Base::Outputs;
  using typename Base::State;
  static constexpr const char* name = "rwkv6";
  static index_t tokens(const Rwkv6InputsOf<T>& in) { return in.r.size(1); }
  static Rwkv6InputsOf<T> slice(Rwkv6InputsOf<T> in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.r, in.k, in.v, in.g);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.o);
    return out;
  }
  static std::array<index_t, 4> state_shape(const Rwkv6InputsOf<T>& in, const Options&) {
    return {in.r.size(0), in.v.size(2), in.k.size(3), in.v.size(3)};
  }
  static State make_state(const Rwkv6InputsOf<T>& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static Options fix_options(Options o, const Rwkv6InputsOf<T>& in, const Executor&) {
    if (o.algorithm == LinearAttentionAlgorithm::automatic)
      o.algorithm = detail::la::choose_algorithm(GateKind::channel, std::numeric_limits<index_t>::max(), in.k.size(3),
                                                 in.v.size(3), o.chunk_size, false);  // rwkv6 has no bf16 dot products
    return o;
  }
  static void run(const Rwkv6InputsOf<T>& in, const Outputs& out, const Options& o, const Executor& ex) {
    rwkv6(in, out, o, ex);
  }
};

template <class T>
struct StreamTraits<DeltaRuleInputsOf<T>>
    : detail::stream::SingleStateTraits<DeltaRuleInputsOf<T>, DeltaRuleOutputs, DeltaRuleOptions, 4> {
  using Base =
      detail::stream::SingleStateTraits<DeltaRuleInputsOf<T>, DeltaRuleOutputs, DeltaRuleOptions, 4>;
  using typename Base::Options;
  using typename Base::Outputs;
  using typename Base::State;
  static constexpr const char* name = "delta_rule";
  static index_t tokens(const DeltaRuleInputsOf<T>& in) { return in.q.size(1); }
  static DeltaRuleInputsOf<T> slice(DeltaRuleInputsOf<T> in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.q, in.k, in.v, in.beta);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.o);
    return out;
  }
  static std::array<index_t, 4> state_shape(const DeltaRuleInputsOf<T>& in, const Options&) {
    return {in.q.size(0), in.v.size(2), in.k.size(3), in.v.size(3)};
  }
  static State make_state(const DeltaRuleInputsOf<T>& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static Options fix_options(Options o, const DeltaRuleInputsOf<T>& in, const Executor& executor) {
    if (o.algorithm == DeltaAlgorithm::automatic)
      o.algorithm = delta_update::choose_stream_delta_algorithm(detail::stream::delta_shape(in, o, executor));
    return o;
  }
  static void run(const DeltaRuleInputsOf<T>& in, const Outputs& out, const Options& o, const Executor& ex) {
    delta_rule(in, out, o, ex);
  }
};

template <class T>
struct StreamTraits<GatedDeltaRuleInputsOf<T>>
    : detail::stream::SingleStateTraits<GatedDeltaRuleInputsOf<T>, GatedDeltaRuleOutputs, GatedDeltaRuleOptions, 4> {
  using Base =
      detail::stream::SingleStateTraits<GatedDeltaRuleInputsOf<T>, GatedDeltaRuleOutputs, GatedDeltaRuleOptions, 4>;
  using typename Base::Options;
  using typename Base::Outputs;
  using typename Base::State;
  static constexpr const char* name = "gated_delta_rule";
  static index_t tokens(const GatedDeltaRuleInputsOf<T>& in) { return in.q.size(1); }
  static GatedDeltaRuleInputsOf<T> slice(GatedDeltaRuleInputsOf<T> in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.q, in.k, in.v, in.beta, in.g_scalar, in.g);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.o);
    return out;
  }
  static std::array<index_t, 4> state_shape(const GatedDeltaRuleInputsOf<T>& in, const Options&) {
    return {in.q.size(0), in.v.size(2), in.k.size(3), in.v.size(3)};
  }
  static State make_state(const GatedDeltaRuleInputsOf<T>& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static Options fix_options(Options o, const GatedDeltaRuleInputsOf<T>& in, const Executor& executor) {
    if (o.algorithm == DeltaAlgorithm::automatic)
      o.algorithm = delta_update::choose_stream_delta_algorithm(detail::stream::delta_shape(in, o, executor));
    return o;
  }
  static void run(const GatedDeltaRuleInputsOf<T>& in, const Outputs& out, const Options& o, const Executor& ex) {
    gated_delta_rule(in, out, o, ex);
  }
};

/// \endcond

/// rwkv7 has no options; the stream still takes (and ignores) this empty struct.
struct Rwkv7StreamOptions {};

/// \cond SEQMIX_STREAM_TRAITS

template <class T>
struct StreamTraits<Rwkv7InputsOf<T>>
    : detail::stream::SingleStateTraits<Rwkv7InputsOf<T>, Rwkv7Outputs, Rwkv7StreamOptions, 4> {
  using Base =
      detail::stream::SingleStateTraits<Rwkv7InputsOf<T>, Rwkv7Outputs, Rwkv7StreamOptions, 4>;
  using typename Base::Options;
  using typename Base::Outputs;
  using typename Base::State;
  static constexpr const char* name = "rwkv7";
  static index_t tokens(const Rwkv7InputsOf<T>& in) { return in.r.size(1); }
  static Rwkv7InputsOf<T> slice(Rwkv7InputsOf<T> in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.r, in.k, in.v, in.a, in.b, in.g);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.o);
    return out;
  }
  static std::array<index_t, 4> state_shape(const Rwkv7InputsOf<T>& in, const Options&) {
    return {in.r.size(0), in.r.size(2), in.k.size(3), in.v.size(3)};
  }
  static State make_state(const Rwkv7InputsOf<T>& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static void run(const Rwkv7InputsOf<T>& in, const Outputs& out, const Options&, const Executor& ex) {
    rwkv7(in, out, ex);
  }
};

// ---- selective state-space family ------------------------------------------------------------

template <>
struct StreamTraits<CausalConv1dInputs>
    : detail::stream::SingleStateTraits<CausalConv1dInputs, CausalConv1dOutputs, CausalConv1dOptions, 3> {
  static constexpr const char* name = "causal_conv1d";
  static index_t tokens(const CausalConv1dInputs& in) { return in.x.size(1); }
  static CausalConv1dInputs slice(CausalConv1dInputs in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.x);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.y);
    return out;
  }
  /// The last (W-1) * dilation inputs, oldest first.
  static std::array<index_t, 3> state_shape(const CausalConv1dInputs& in, const Options& o) {
    return {in.x.size(0), std::max<index_t>(in.weight.size(1) - 1, 0) * o.dilation, in.x.size(2)};
  }
  /// A lookahead output reads tokens of the next segment: refused (before the state is made).
  static Options fix_options(const Options& o, const CausalConv1dInputs& in, const Executor&) {
    const ArgCheck check("causal_conv1d stream");
    if (o.lookahead != 0)
      check.fail("options.lookahead", "must be 0 in a stream (an output would read the next segment's tokens)");
    detail::check_conv_options(check, o, std::max<index_t>(in.weight.size(1), 1));
    return o;
  }
  static State make_state(const CausalConv1dInputs& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static void run(const CausalConv1dInputs& in, const Outputs& out, const Options& o, const Executor& ex) {
    causal_conv1d(in, out, o, ex);
  }
};

template <>
struct StreamTraits<SelectiveScanInputs>
    : detail::stream::SingleStateTraits<SelectiveScanInputs, SelectiveScanOutputs, SelectiveScanOptions, 3> {
  static constexpr const char* name = "selective_scan";
  static index_t tokens(const SelectiveScanInputs& in) { return in.u.size(1); }
  static SelectiveScanInputs slice(SelectiveScanInputs in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.u, in.delta, in.Bm, in.Cm, in.z);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.y);
    return out;
  }
  static std::array<index_t, 3> state_shape(const SelectiveScanInputs& in, const Options&) {
    return {in.u.size(0), in.u.size(2), in.A.size(1)};
  }
  static State make_state(const SelectiveScanInputs& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static void run(const SelectiveScanInputs& in, const Outputs& out, const Options& o, const Executor& ex) {
    selective_scan(in, out, o, ex);
  }
};

template <>
struct StreamTraits<SsdInputs> : detail::stream::SingleStateTraits<SsdInputs, SsdOutputs, SsdOptions, 4> {
  static constexpr const char* name = "ssd";
  static index_t tokens(const SsdInputs& in) { return in.x.size(1); }
  static SsdInputs slice(SsdInputs in, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, in.x, in.dt, in.Bm, in.Cm, in.z);
    return in;
  }
  static Outputs slice(Outputs out, index_t t0, index_t n) {
    detail::stream::slice_all(t0, n, out.y);
    return out;
  }
  static std::array<index_t, 4> state_shape(const SsdInputs& in, const Options&) {
    return {in.x.size(0), in.x.size(2), in.x.size(3), in.Bm.size(3)};
  }
  static State make_state(const SsdInputs& in, const Options& o) {
    return detail::stream::make_single_state<StreamTraits>(in, o);
  }
  static Options fix_options(Options o, const SsdInputs&, const Executor&) {
    // A long call runs chunked; a short one would go token by token (kSsdChunkedMinTokens).
    if (o.algorithm == SsdAlgorithm::automatic) o.algorithm = SsdAlgorithm::chunked;
    return o;
  }
  static void run(const SsdInputs& in, const Outputs& out, const Options& o, const Executor& ex) { ssd(in, out, o, ex); }
};

/// \endcond

// ---- the stream ----------------------------------------------------------------------------

/// Carries one operator's state across calls. The state is the only memory a stream holds, so
/// an input of any length costs the state plus what one segment's call needs.
template <class Inputs>
class RecurrentStream {
 public:
  /// The operator's StreamTraits.
  using Traits = StreamTraits<Inputs>;
  /// The operator's output struct.
  using Outputs = typename Traits::Outputs;
  /// The operator's options struct.
  using Options = typename Traits::Options;
  /// The state the stream owns (one or more Tensors).
  using State = typename Traits::State;
  /// The shape of the main state tensor.
  using StateShape = decltype(Traits::state_shape(std::declval<const Inputs&>(), std::declval<const Options&>()));

  /// A stream that runs every segment with `options` (the algorithm is fixed at the first segment).
  explicit RecurrentStream(const Options& options = {}) : options_(options) {}

  /// Runs the next `Traits::tokens(segment)` tokens. The first segment fixes the state's shape
  /// and may carry initial_state (and initial_normalizer) to start from; later segments must
  /// not, and must not ask for final states: the stream owns them (see state()).
  void feed(Inputs segment, Outputs out, const Executor& executor = serial_executor()) {
    check_segment(segment, out);
    if (!started_) {
      fixed_ = Traits::fix_options(options_, segment, executor);
      state_ = Traits::make_state(segment, fixed_);
      shape_ = Traits::state_shape(segment, fixed_);
      Traits::load_initial(state_, segment);
    }
    const Options call_options = started_ ? Traits::later_options(fixed_) : fixed_;
    Traits::bind(segment, out, state_, call_options);
    Traits::run(segment, out, call_options, executor);
    started_ = true;
    tokens_ += Traits::tokens(segment);
  }

  /// The carried state after the tokens fed so far (empty before the first segment).
  const State& state() const noexcept { return state_; }
  /// Tokens fed since the start or the last reset().
  index_t tokens_seen() const noexcept { return tokens_; }
  /// True once a segment has been fed.
  bool started() const noexcept { return started_; }

  /// Forgets the sequence: the next segment starts a new one (possibly of another shape).
  void reset() {
    state_ = State{};
    started_ = false;
    tokens_ = 0;
  }

 private:
  void check_segment(const Inputs& segment, const Outputs& out) const {
    // A stream is one dense batch whose state it owns. Ragged batches in an engine need no
    // stream: a chunk of each prompt is one packed call of the operator itself, with the
    // states in slots (state_indices) and has_initial_state true after the first chunk.
    const SequenceBatch& b = segment.batch;
    if (b.packed() || b.slotted() || b.has_initial_state.has_value())
      throw ShapeError(std::string(Traits::name) + " stream", "batch",
                       "is not supported: a stream carries the state of one dense batch; for chunked prefill of "
                       "ragged sequences call the operator with cu_seqlens, state_indices and has_initial_state");
    if (!started_) return;
    const std::string op = std::string(Traits::name) + " stream";
    if (segment.initial_state.has_value())
      throw ShapeError(op, "initial_state",
                       "is given after the first segment; the stream carries the state (reset() starts over)");
    if (out.final_state.has_value())
      throw ShapeError(op, "final_state", "is requested after the first segment; read the carried state with state()");
    const StateShape shape = Traits::state_shape(segment, fixed_);
    if (shape != shape_)
      throw ShapeError(op, "segment",
                       "has other batch/head/feature sizes than the first segment: state shape " + shape_text(shape) +
                           " vs the stream's " + shape_text(shape_));
  }

  static std::string shape_text(const StateShape& shape) {
    std::ostringstream s;
    s << '[';
    for (std::size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
    s << ']';
    return s.str();
  }

  Options options_, fixed_{};
  State state_{};
  StateShape shape_{};
  bool started_ = false;
  index_t tokens_ = 0;
};

/// One call computed as consecutive segments of `segment_length` tokens through a stream: the
/// same outputs (bit for bit when segment_length is a multiple of the operator's chunk size),
/// with the operator's working memory bounded by one segment. The final state, if asked for, is
/// written at the end.
template <class Inputs>
void run_in_segments(const Inputs& in, const typename StreamTraits<Inputs>::Outputs& out,
                     const typename StreamTraits<Inputs>::Options& options, index_t segment_length,
                     const Executor& executor = serial_executor()) {
  using Traits = StreamTraits<Inputs>;
  if (segment_length < 1)
    throw ShapeError(std::string(Traits::name) + " run_in_segments", "segment_length",
                     "must be >= 1, got " + std::to_string(segment_length));
  RecurrentStream<Inputs> stream(options);
  const index_t T = Traits::tokens(in);
  for (index_t t0 = 0; t0 < std::max<index_t>(T, 1); t0 += segment_length) {
    const index_t n = std::min(segment_length, T - t0);
    Inputs segment = Traits::slice(in, t0, n);
    typename Traits::Outputs part = Traits::slice(out, t0, n);
    if (t0 > 0) segment.initial_state = {};
    part.final_state = {};  // the stream carries the state; the caller's copy is written at the end
    stream.feed(segment, part, executor);
  }
  Traits::write_final(stream.state(), out);
}

}  // namespace seqmix
