// State passing across slices of one sequence (issue 21 item 2): every recurrent operator's
// slice functions (run from a zero state with the transition; compose; correct from the true
// initial state) equal one sequential call over the whole sequence. Slices of unequal length,
// including a 1-token slice and slices shorter than a chunk, an initial state, B > 1; once with
// the slices run one after another and once spread over a 2-thread pool.
#include <catch2/catch.hpp>

#include <array>
#include <functional>
#include <numeric>
#include <vector>

#include "seqmix/core/slice_state.hpp"
#include "seqmix/linear_attention/gated_delta_rule/slice.hpp"
#include "seqmix/linear_attention/gla/slice.hpp"
#include "seqmix/linear_attention/linear_attention/slice.hpp"
#include "seqmix/linear_attention/rwkv6/slice.hpp"
#include "seqmix/linear_attention/rwkv7/slice.hpp"
#include "seqmix/ssm/causal_conv1d/slice.hpp"
#include "seqmix/ssm/selective_scan/slice.hpp"
#include "seqmix/ssm/ssd/slice.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::Executor;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

constexpr double kCpTol = 2e-4;  // fp32 fast forms, as against the reference (SPEC)

// One operator's slice protocol over tokens [t0, t0 + n) of its inputs (the whole sequence when
// t0 = 0, n = T). RO: output rank, RD: transition (log-decay) rank, RS: state rank.
template <std::size_t RO, std::size_t RD, std::size_t RS>
struct CpOperator {
  std::array<index_t, RO> out_shape;    // [B,T,...]
  std::array<index_t, RS> state_shape;  // [B,...]
  // One sequential call over the whole sequence from `initial`.
  std::function<void(ConstView<float, RS> initial, TensorView<float, RO> o, TensorView<float, RS> final_state)> whole;
  // The slice from a zero state: outputs, local final state, transition.
  std::function<void(index_t t0, index_t n, TensorView<float, RO> o, TensorView<float, RS> local,
                     TensorView<float, RD> log_decay, const Executor& executor)>
      slice;
  // The correction of a slice's outputs and final state from its true initial state.
  std::function<void(index_t t0, index_t n, ConstView<float, RS> initial, TensorView<float, RO> o,
                     TensorView<float, RS> final_state, const Executor& executor)>
      correct;
};

template <std::size_t R>
Tensor<float, R> cp_copy(const Tensor<float, R>& t) {
  Tensor<float, R> c(t.view().shape());
  seqmix::copy(ConstView<float, R>(t.view()), c.view());
  return c;
}

// Splits the operator's sequence into `lengths`, runs each slice from zero (one after another, or
// all at once over `pool`), forms every slice's initial state by composing the summaries of the
// slices before it, corrects each slice, and requires outputs and final state to equal one
// call. Also checks that composing two summaries first gives the same states (associativity).
template <std::size_t RO, std::size_t RD, std::size_t RS>
void cp_require_slices_equal_whole(const CpOperator<RO, RD, RS>& op, const std::vector<index_t>& lengths,
                                   const Executor* pool) {
  const index_t T = op.out_shape[1];
  REQUIRE(std::accumulate(lengths.begin(), lengths.end(), index_t{0}) == T);
  std::array<index_t, RD> decay_shape{};
  for (std::size_t d = 0; d < RD; ++d) decay_shape[d] = op.state_shape[d];
  const Tensor<float, RS> initial = st::random_tensor(op.state_shape, 91);
  Tensor<float, RO> o_ref(op.out_shape), o(op.out_shape);
  Tensor<float, RS> final_ref(op.state_shape);
  op.whole(initial.view(), o_ref.view(), final_ref.view());

  const std::size_t n = lengths.size();
  std::vector<index_t> begins(n, 0);
  for (std::size_t i = 1; i < n; ++i) begins[i] = begins[i - 1] + lengths[i - 1];
  std::vector<Tensor<float, RS>> local, starts, finals;
  std::vector<Tensor<float, RD>> decay;
  for (std::size_t i = 0; i < n; ++i) {
    local.emplace_back(op.state_shape);
    finals.emplace_back(op.state_shape);
    decay.emplace_back(decay_shape);
  }
  auto run_slice = [&](index_t i) {
    const auto s = static_cast<std::size_t>(i);
    op.slice(begins[s], lengths[s], o.view().slice(1, begins[s], lengths[s]), local[s].view(), decay[s].view(),
             seqmix::serial_executor());
  };
  if (pool != nullptr)
    pool->run(static_cast<index_t>(n), run_slice);
  else
    for (std::size_t i = 0; i < n; ++i) run_slice(static_cast<index_t>(i));

  // The exclusive prefix, sequentially: slice i starts from the state after slices 0..i-1.
  starts.push_back(cp_copy(initial));
  for (std::size_t i = 0; i < n; ++i) {
    starts.emplace_back(op.state_shape);
    seqmix::compose_diagonal_slices<RD, RS>({}, starts[i].view(), decay[i].view(), local[i].view(), {},
                                            starts[i + 1].view());
  }
  if (n >= 3) {  // (slice 1 after slice 0) applied to the initial state = slice 1's end state
    Tensor<float, RD> d01(decay_shape);
    Tensor<float, RS> s01(op.state_shape), end1(op.state_shape);
    seqmix::compose_diagonal_slices<RD, RS>(decay[0].view(), local[0].view(), decay[1].view(), local[1].view(),
                                            d01.view(), s01.view());
    seqmix::compose_diagonal_slices<RD, RS>({}, initial.view(), d01.view(), s01.view(), {}, end1.view());
    st::require_close("composed summaries", end1.view(), starts[2].view(), kCpTol);
  }

  auto correct_slice = [&](index_t i) {
    const auto s = static_cast<std::size_t>(i);
    seqmix::copy(ConstView<float, RS>(local[s].view()), finals[s].view());
    op.correct(begins[s], lengths[s], starts[s].view(), o.view().slice(1, begins[s], lengths[s]), finals[s].view(),
               seqmix::serial_executor());
  };
  if (pool != nullptr)
    pool->run(static_cast<index_t>(n), correct_slice);
  else
    for (std::size_t i = 0; i < n; ++i) correct_slice(static_cast<index_t>(i));

  st::require_close("outputs", o.view(), o_ref.view(), kCpTol);
  st::require_close("final state", finals.back().view(), final_ref.view(), kCpTol);
  for (std::size_t i = 0; i < n; ++i) {
    INFO("slice " << i);
    st::require_close("corrected final state = composed start of the next", finals[i].view(), starts[i + 1].view(),
                      kCpTol);
  }
}

// The splits every operator runs: a 1-token slice, slices shorter than a chunk (16 here, 64 by
// default), one longer than several chunks.
const std::vector<std::vector<index_t>>& cp_splits() {
  static const std::vector<std::vector<index_t>> splits = {{1, 5, 70, 30, 1}, {40, 1, 3, 63}, {107}};
  return splits;
}

// ---- diagonal-decay linear attention -------------------------------------------------------

struct CpLaData {
  index_t B = 2, T = 107, H = 2, HV = 4, K = 12, V = 10;
  Tensor<float, 4> q, k, v, g, u_unused;
  Tensor<float, 3> gs;
  Tensor<float, 2> u;
  CpLaData()
      : q(st::random_tensor<4>({B, T, H, K}, 1)), k(st::random_tensor<4>({B, T, H, K}, 2)),
        v(st::random_tensor<4>({B, T, HV, V}, 3)), g(st::random_tensor<4>({B, T, HV, K}, 4, -0.3f, 0.f)),
        gs(st::random_tensor<3>({B, T, H}, 5, -0.2f, 0.f)), u(st::random_tensor<2>({H, K}, 6)) {}
  template <std::size_t R>
  static ConstView<float, R> cut(const Tensor<float, R>& t, index_t t0, index_t n) {
    return ConstView<float, R>(t.view()).slice(1, t0, n);
  }
};

using CpLaOperator = CpOperator<4, 3, 4>;

CpLaOperator cp_gla(const CpLaData& x, const seqmix::GatedLinearAttentionOptions& options) {
  auto inputs = [&x, options](index_t t0, index_t n) {
    seqmix::GatedLinearAttentionInputs in{CpLaData::cut(x.q, t0, n), CpLaData::cut(x.k, t0, n), CpLaData::cut(x.v, t0, n)};
    if (options.gate == seqmix::GateKind::channel) in.g = CpLaData::cut(x.g, t0, n);
    if (options.gate == seqmix::GateKind::scalar) in.g_scalar = CpLaData::cut(x.gs, t0, n);
    return in;
  };
  CpLaOperator op{{x.B, x.T, x.HV, x.V}, {x.B, x.HV, x.K, x.V}, {}, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::gated_linear_attention(in, {o, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local, TensorView<float, 3> decay,
                 const Executor& ex) { seqmix::gated_linear_attention_slice(inputs(t0, n), {o, local}, decay, options, ex); };
  op.correct = [=](index_t t0, index_t n, ConstView<float, 4> initial, TensorView<float, 4> o,
                   TensorView<float, 4> fin, const Executor& ex) {
    auto in = inputs(t0, n);
    in.initial_state = initial;
    seqmix::gated_linear_attention_slice_correct(in, {o, fin}, options, ex);
  };
  return op;
}

CpLaOperator cp_rwkv6(const CpLaData& x, const seqmix::Rwkv6Options& options) {
  auto inputs = [&x](index_t t0, index_t n) {
    return seqmix::Rwkv6Inputs{CpLaData::cut(x.q, t0, n), CpLaData::cut(x.k, t0, n), CpLaData::cut(x.v, t0, n),
                               CpLaData::cut(x.g, t0, n), x.u.view()};
  };
  CpLaOperator op{{x.B, x.T, x.HV, x.V}, {x.B, x.HV, x.K, x.V}, {}, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::rwkv6(in, {o, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local, TensorView<float, 3> decay,
                 const Executor& ex) { seqmix::rwkv6_slice(inputs(t0, n), {o, local}, decay, options, ex); };
  op.correct = [=](index_t t0, index_t n, ConstView<float, 4> initial, TensorView<float, 4> o,
                   TensorView<float, 4> fin, const Executor& ex) {
    auto in = inputs(t0, n);
    in.initial_state = initial;
    seqmix::rwkv6_slice_correct(in, {o, fin}, options, ex);
  };
  return op;
}

CpLaOperator cp_linear_attention(const CpLaData& x, const seqmix::LinearAttentionOptions& options) {
  auto inputs = [&x](index_t t0, index_t n) {
    return seqmix::LinearAttentionInputs{CpLaData::cut(x.q, t0, n), CpLaData::cut(x.k, t0, n), CpLaData::cut(x.v, t0, n)};
  };
  const index_t Kf = seqmix::feature_dim(options.feature_map, x.K);
  CpLaOperator op{{x.B, x.T, x.HV, x.V}, {x.B, x.HV, Kf, x.V}, {}, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::linear_attention(in, {o, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local, TensorView<float, 3> decay,
                 const Executor& ex) {
    for (index_t i = 0; i < decay.numel(); ++i) decay.data()[i] = 0.f;  // no decay: the identity
    seqmix::linear_attention_slice(inputs(t0, n), {o, local}, options, ex);
  };
  op.correct = [=](index_t t0, index_t n, ConstView<float, 4> initial, TensorView<float, 4> o,
                   TensorView<float, 4> fin, const Executor& ex) {
    auto in = inputs(t0, n);
    in.initial_state = initial;
    seqmix::linear_attention_slice_correct(in, {o, fin}, options, ex);
  };
  return op;
}

template <class Options>
Options cp_la_options(seqmix::LinearAttentionAlgorithm algorithm) {
  Options options;
  options.algorithm = algorithm;
  options.chunk_size = 16;
  return options;
}


// ---- selective state spaces ----------------------------------------------------------------

struct CpSsdData {
  index_t B = 2, T = 107, H = 4, P = 6, N = 8, G = 2;
  Tensor<float, 4> x, Bm, Cm, z;
  Tensor<float, 3> dt;
  Tensor<float, 1> A, D, dt_bias;
  CpSsdData()
      : x(st::random_tensor<4>({B, T, H, P}, 11)), Bm(st::random_tensor<4>({B, T, G, N}, 12)),
        Cm(st::random_tensor<4>({B, T, G, N}, 13)), z(st::random_tensor<4>({B, T, H, P}, 14)),
        dt(st::random_tensor<3>({B, T, H}, 15, -2.f, 0.f)), A(st::random_tensor<1>({H}, 16, -1.f, -0.2f)),
        D(st::random_tensor<1>({H}, 17)), dt_bias(st::random_tensor<1>({H}, 18, -1.f, 0.f)) {}
};

CpOperator<4, 2, 4> cp_ssd(const CpSsdData& x, const seqmix::SsdOptions& options) {
  auto inputs = [&x](index_t t0, index_t n) {
    seqmix::SsdInputs in{CpLaData::cut(x.x, t0, n), CpLaData::cut(x.dt, t0, n), x.A.view(), CpLaData::cut(x.Bm, t0, n),
                         CpLaData::cut(x.Cm, t0, n), x.D.view(), CpLaData::cut(x.z, t0, n), x.dt_bias.view()};
    return in;
  };
  CpOperator<4, 2, 4> op{{x.B, x.T, x.H, x.P}, {x.B, x.H, x.P, x.N}, {}, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> y, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::ssd(in, {y, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> y, TensorView<float, 4> local, TensorView<float, 2> decay,
                 const Executor& ex) { seqmix::ssd_slice(inputs(t0, n), {y, local}, decay, options, ex); };
  op.correct = [=](index_t t0, index_t n, ConstView<float, 4> initial, TensorView<float, 4> y,
                   TensorView<float, 4> fin, const Executor& ex) {
    auto in = inputs(t0, n);
    in.initial_state = initial;
    seqmix::ssd_slice_correct(in, {y, fin}, options, ex);
  };
  return op;
}

struct CpScanData {
  index_t B = 2, T = 107, D = 6, N = 5, G = 3;
  Tensor<float, 3> u, delta, z;
  Tensor<float, 4> Bm, Cm;
  Tensor<float, 2> A;
  Tensor<float, 1> Dskip, delta_bias;
  CpScanData()
      : u(st::random_tensor<3>({B, T, D}, 21)), delta(st::random_tensor<3>({B, T, D}, 22, 0.f, 1.f)),
        z(st::random_tensor<3>({B, T, D}, 23)), Bm(st::random_tensor<4>({B, T, G, N}, 24)),
        Cm(st::random_tensor<4>({B, T, G, N}, 25)), A(st::random_tensor<2>({D, N}, 26, -1.f, -0.1f)),
        Dskip(st::random_tensor<1>({D}, 27)), delta_bias(st::random_tensor<1>({D}, 28, 0.f, 0.5f)) {}
};

CpOperator<3, 3, 3> cp_selective_scan(const CpScanData& x, const seqmix::SelectiveScanOptions& options) {
  auto inputs = [&x](index_t t0, index_t n) {
    return seqmix::SelectiveScanInputs{CpLaData::cut(x.u, t0, n), CpLaData::cut(x.delta, t0, n), x.A.view(),
                                       CpLaData::cut(x.Bm, t0, n),   CpLaData::cut(x.Cm, t0, n),    x.Dskip.view(),
                                       CpLaData::cut(x.z, t0, n),    x.delta_bias.view()};
  };
  CpOperator<3, 3, 3> op{{x.B, x.T, x.D}, {x.B, x.D, x.N}, {}, {}, {}};
  op.whole = [=](ConstView<float, 3> initial, TensorView<float, 3> y, TensorView<float, 3> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::selective_scan(in, {y, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 3> y, TensorView<float, 3> local, TensorView<float, 3> decay,
                 const Executor& ex) { seqmix::selective_scan_slice(inputs(t0, n), {y, local}, decay, options, ex); };
  op.correct = [=](index_t t0, index_t n, ConstView<float, 3> initial, TensorView<float, 3> y,
                   TensorView<float, 3> fin, const Executor& ex) {
    auto in = inputs(t0, n);
    in.initial_state = initial;
    seqmix::selective_scan_slice_correct(in, {y, fin}, options, ex);
  };
  return op;
}


// ---- matrix transitions: the delta rules and rwkv7 -----------------------------------------

// The slice protocol of an operator with a [K,K] transition: out [B,T,HV,V], state [B,HV,K,V].
struct CpMatrixOperator {
  index_t B, T, HV, K, V;
  std::function<void(ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> final_state)> whole;
  std::function<void(index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local,
                     TensorView<float, 4> readout, TensorView<float, 4> transition, const Executor& executor)>
      slice;
};

// As cp_require_slices_equal_whole, with compose_matrix_slices and correct_matrix_slice.
void cp_require_matrix_slices_equal_whole(const CpMatrixOperator& op, const std::vector<index_t>& lengths,
                                          const Executor* pool) {
  const std::array<index_t, 4> state_shape{op.B, op.HV, op.K, op.V}, transition_shape{op.B, op.HV, op.K, op.K};
  const Tensor<float, 4> initial = st::random_tensor(state_shape, 92);
  Tensor<float, 4> o_ref({op.B, op.T, op.HV, op.V}), o({op.B, op.T, op.HV, op.V}), final_ref(state_shape);
  Tensor<float, 4> readout({op.B, op.T, op.HV, op.K});
  op.whole(initial.view(), o_ref.view(), final_ref.view());
  const std::size_t n = lengths.size();
  std::vector<index_t> begins(n, 0);
  for (std::size_t i = 1; i < n; ++i) begins[i] = begins[i - 1] + lengths[i - 1];
  std::vector<Tensor<float, 4>> local, transition, starts;
  for (std::size_t i = 0; i < n; ++i) {
    local.emplace_back(state_shape);
    transition.emplace_back(transition_shape);
  }
  auto run_slice = [&](index_t i) {
    const auto s = static_cast<std::size_t>(i);
    op.slice(begins[s], lengths[s], o.view().slice(1, begins[s], lengths[s]), local[s].view(),
             readout.view().slice(1, begins[s], lengths[s]), transition[s].view(), seqmix::serial_executor());
  };
  if (pool != nullptr)
    pool->run(static_cast<index_t>(n), run_slice);
  else
    for (std::size_t i = 0; i < n; ++i) run_slice(static_cast<index_t>(i));
  starts.push_back(cp_copy(initial));
  for (std::size_t i = 0; i < n; ++i) {
    starts.emplace_back(state_shape);
    seqmix::compose_matrix_slices({}, starts[i].view(), transition[i].view(), local[i].view(), {}, starts[i + 1].view());
  }
  if (n >= 3) {
    Tensor<float, 4> t01(transition_shape), s01(state_shape), end1(state_shape);
    seqmix::compose_matrix_slices(transition[0].view(), local[0].view(), transition[1].view(), local[1].view(),
                                  t01.view(), s01.view());
    seqmix::compose_matrix_slices({}, initial.view(), t01.view(), s01.view(), {}, end1.view());
    st::require_close("composed summaries", end1.view(), starts[2].view(), kCpTol);
  }
  auto correct_slice = [&](index_t i) {
    const auto s = static_cast<std::size_t>(i);
    seqmix::correct_matrix_slice(readout.view().slice(1, begins[s], lengths[s]), transition[s].view(),
                                 starts[s].view(), o.view().slice(1, begins[s], lengths[s]), local[s].view());
  };
  if (pool != nullptr)
    pool->run(static_cast<index_t>(n), correct_slice);
  else
    for (std::size_t i = 0; i < n; ++i) correct_slice(static_cast<index_t>(i));
  st::require_close("outputs", o.view(), o_ref.view(), kCpTol);
  for (std::size_t i = 0; i < n; ++i) {
    INFO("slice " << i);
    st::require_close("corrected final state = composed start of the next", local[i].view(), starts[i + 1].view(),
                      kCpTol);
  }
  st::require_close("final state", local.back().view(), final_ref.view(), kCpTol);
}

struct CpDeltaData {
  index_t B = 2, T = 107, H = 2, HV = 4, K = 12, V = 10;
  Tensor<float, 4> q, k, v, g, a, b;
  Tensor<float, 3> beta, gs;
  CpDeltaData()
      : q(st::random_tensor<4>({B, T, H, K}, 41)), k(st::random_tensor<4>({B, T, H, K}, 42)),
        v(st::random_tensor<4>({B, T, HV, V}, 43)), g(st::random_tensor<4>({B, T, HV, K}, 44, -0.3f, 0.f)),
        a(st::random_tensor<4>({B, T, HV, K}, 45, -0.3f, 0.3f)), b(st::random_tensor<4>({B, T, HV, K}, 46, -0.3f, 0.3f)),
        beta(st::random_tensor<3>({B, T, HV}, 47, 0.f, 1.f)), gs(st::random_tensor<3>({B, T, HV}, 48, -0.2f, 0.f)) {}
};

CpMatrixOperator cp_gated_delta_rule(const CpDeltaData& x, const seqmix::GatedDeltaRuleOptions& options) {
  auto inputs = [&x, options](index_t t0, index_t n) {
    seqmix::GatedDeltaRuleInputs in{CpLaData::cut(x.q, t0, n), CpLaData::cut(x.k, t0, n), CpLaData::cut(x.v, t0, n),
                                    CpLaData::cut(x.beta, t0, n)};
    if (options.gate == seqmix::DeltaGate::scalar) in.g_scalar = CpLaData::cut(x.gs, t0, n);
    else in.g = CpLaData::cut(x.g, t0, n);
    return in;
  };
  CpMatrixOperator op{x.B, x.T, x.HV, x.K, x.V, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::gated_delta_rule(in, {o, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local, TensorView<float, 4> readout,
                 TensorView<float, 4> transition, const Executor& ex) {
    seqmix::gated_delta_rule_slice(inputs(t0, n), {o, local}, readout, transition, options, ex);
  };
  return op;
}

CpMatrixOperator cp_delta_rule(const CpDeltaData& x, const seqmix::DeltaRuleOptions& options) {
  auto inputs = [&x](index_t t0, index_t n) {
    return seqmix::DeltaRuleInputs{CpLaData::cut(x.q, t0, n), CpLaData::cut(x.k, t0, n), CpLaData::cut(x.v, t0, n),
                                   CpLaData::cut(x.beta, t0, n)};
  };
  CpMatrixOperator op{x.B, x.T, x.HV, x.K, x.V, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::delta_rule(in, {o, fin}, options);
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local, TensorView<float, 4> readout,
                 TensorView<float, 4> transition, const Executor& ex) {
    seqmix::delta_rule_slice(inputs(t0, n), {o, local}, readout, transition, options, ex);
  };
  return op;
}

// rwkv7 has one head count for everything: HV heads of K channels, V = 10 values. r and k reuse
// the other tensors of that shape (any values will do).
CpMatrixOperator cp_rwkv7(const CpDeltaData& x) {
  auto inputs = [&x](index_t t0, index_t n) {
    const auto head_k = [&](const Tensor<float, 4>& t) { return CpLaData::cut(t, t0, n); };
    return seqmix::Rwkv7Inputs{head_k(x.a), head_k(x.g), CpLaData::cut(x.v, t0, n), head_k(x.a), head_k(x.b),
                               head_k(x.g)};
  };
  CpMatrixOperator op{x.B, x.T, x.HV, x.K, x.V, {}, {}};
  op.whole = [=](ConstView<float, 4> initial, TensorView<float, 4> o, TensorView<float, 4> fin) {
    auto in = inputs(0, x.T);
    in.initial_state = initial;
    seqmix::rwkv7(in, {o, fin});
  };
  op.slice = [=](index_t t0, index_t n, TensorView<float, 4> o, TensorView<float, 4> local, TensorView<float, 4> readout,
                 TensorView<float, 4> transition, const Executor& ex) {
    seqmix::rwkv7_slice(inputs(t0, n), {o, local}, readout, transition, ex);
  };
  return op;
}

}  // namespace

TEST_CASE("context parallel: delta rule, gated delta rule / KDA and rwkv7 slices equal one call", "[context_parallel]") {
  const CpDeltaData x;
  for (const auto algorithm : {seqmix::DeltaAlgorithm::chunked, seqmix::DeltaAlgorithm::recurrent}) {
    seqmix::GatedDeltaRuleOptions gated;
    gated.algorithm = algorithm;
    gated.chunk_size = 16;
    gated.qk_norm = seqmix::QkNorm::l2;
    seqmix::DeltaRuleOptions plain;
    plain.algorithm = algorithm;
    plain.chunk_size = 16;
    plain.qk_norm = seqmix::QkNorm::l2;
    for (const auto& split : cp_splits()) {
      for (const Executor* pool : {static_cast<const Executor*>(nullptr), static_cast<const Executor*>(&st::two_thread_pool())}) {
        INFO("algorithm " << static_cast<int>(algorithm) << ", " << split.size() << " slices, pool " << (pool != nullptr));
        for (const auto gate : {seqmix::DeltaGate::scalar, seqmix::DeltaGate::channel}) {
          INFO("gate " << static_cast<int>(gate));
          gated.gate = gate;
          cp_require_matrix_slices_equal_whole(cp_gated_delta_rule(x, gated), split, pool);
        }
        cp_require_matrix_slices_equal_whole(cp_delta_rule(x, plain), split, pool);
        if (algorithm == seqmix::DeltaAlgorithm::recurrent) cp_require_matrix_slices_equal_whole(cp_rwkv7(x), split, pool);
      }
    }
  }
}

TEST_CASE("context parallel: ssd and selective_scan slices equal one call", "[context_parallel]") {
  const CpSsdData ssd_data;
  const CpScanData scan_data;
  for (const auto algorithm : {seqmix::SsdAlgorithm::chunked, seqmix::SsdAlgorithm::recurrent}) {
    seqmix::SsdOptions ssd;
    ssd.algorithm = algorithm;
    ssd.chunk_size = 16;
    ssd.dt_softplus = true;
    seqmix::SelectiveScanOptions scan;
    scan.delta_softplus = algorithm == seqmix::SsdAlgorithm::chunked;
    for (const auto& split : cp_splits()) {
      for (const Executor* pool : {static_cast<const Executor*>(nullptr), static_cast<const Executor*>(&st::two_thread_pool())}) {
        INFO("algorithm " << static_cast<int>(algorithm) << ", " << split.size() << " slices, pool " << (pool != nullptr));
        cp_require_slices_equal_whole(cp_ssd(ssd_data, ssd), split, pool);
        cp_require_slices_equal_whole(cp_selective_scan(scan_data, scan), split, pool);
      }
    }
  }
}

TEST_CASE("context parallel: causal_conv1d slices with the halo equal one call", "[context_parallel]") {
  const index_t B = 2, T = 37, D = 9;
  for (const index_t W : {1, 2, 4, 7}) {
    const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, 31), initial = st::random_tensor<3>({B, W - 1, D}, 32);
    const Tensor<float, 2> weight = st::random_tensor<2>({D, W}, 33);
    const Tensor<float, 1> bias = st::random_tensor<1>({D}, 34);
    seqmix::CausalConv1dOptions options;
    options.activation = seqmix::ConvActivation::silu;
    Tensor<float, 3> y_ref({B, T, D}), final_ref({B, W - 1, D}), y({B, T, D});
    seqmix::causal_conv1d({x.view(), weight.view(), bias.view(), initial.view()}, {y_ref.view(), final_ref.view()},
                          options);
    for (const std::vector<index_t>& split : {std::vector<index_t>{1, 2, 3, 20, 1, 10}, std::vector<index_t>{5, 1, 31}}) {
      INFO("W " << W << ", " << split.size() << " slices");
      Tensor<float, 3> carried = cp_copy(initial);  // the true window before the slice
      index_t t0 = 0;
      for (const index_t n : split) {
        const seqmix::CausalConv1dInputs in{CpLaData::cut(x, t0, n), weight.view(), bias.view()};
        Tensor<float, 3> local({B, W - 1, D}), composed({B, W - 1, D});
        seqmix::causal_conv1d_slice(in, {y.view().slice(1, t0, n), local.view()}, options);
        seqmix::compose_causal_conv1d_slices(carried.view(), n, local.view(), composed.view());
        seqmix::CausalConv1dInputs with_halo = in;
        with_halo.initial_state = carried.view();
        seqmix::causal_conv1d_slice_correct(with_halo, {y.view().slice(1, t0, n), local.view()}, options,
                                            st::two_thread_pool());
        st::require_close("corrected window = composed window", local.view(), composed.view(), 0.0);
        carried = std::move(composed);
        t0 += n;
      }
      st::require_close("outputs", y.view(), y_ref.view(), kCpTol);
      st::require_close("final window", carried.view(), final_ref.view(), 0.0);
    }
  }
}

TEST_CASE("context parallel: diagonal-decay linear attention slices equal one call", "[context_parallel]") {
  const CpLaData x;
  using seqmix::LinearAttentionAlgorithm;
  for (const auto algorithm : {LinearAttentionAlgorithm::chunked, LinearAttentionAlgorithm::recurrent}) {
    auto gla = cp_la_options<seqmix::GatedLinearAttentionOptions>(algorithm);
    auto rwkv = cp_la_options<seqmix::Rwkv6Options>(algorithm);
    auto la = cp_la_options<seqmix::LinearAttentionOptions>(algorithm);
    la.feature_map = seqmix::FeatureMap::elu1;
    for (const auto& split : cp_splits()) {
      for (const Executor* pool : {static_cast<const Executor*>(nullptr), static_cast<const Executor*>(&st::two_thread_pool())}) {
        INFO("algorithm " << static_cast<int>(algorithm) << ", " << split.size() << " slices, pool " << (pool != nullptr));
        for (const auto gate : {seqmix::GateKind::channel, seqmix::GateKind::scalar, seqmix::GateKind::retnet,
                                seqmix::GateKind::none}) {
          INFO("gla gate " << static_cast<int>(gate));
          gla.gate = gate;
          cp_require_slices_equal_whole(cp_gla(x, gla), split, pool);
        }
        cp_require_slices_equal_whole(cp_rwkv6(x, rwkv), split, pool);
        cp_require_slices_equal_whole(cp_linear_attention(x, la), split, pool);
      }
    }
  }
}

TEST_CASE("context parallel: slice calls refuse what they cannot pass on", "[context_parallel]") {
  const CpLaData x;
  Tensor<float, 4> o({x.B, x.T, x.HV, x.V}), fin({x.B, x.HV, x.K, x.V}), init({x.B, x.HV, x.K, x.V});
  for (index_t i = 0; i < o.numel(); ++i) o.data()[i] = 7.5f;
  Tensor<float, 3> decay({x.B, x.HV, x.K});
  const seqmix::GatedLinearAttentionInputs in{x.q.view(), x.k.view(), x.v.view(), x.g.view()};
  st::require_shape_error("log_decay", [&] {
    Tensor<float, 3> wrong({x.B, x.HV, x.K + 1});
    seqmix::gated_linear_attention_slice(in, {o.view(), fin.view()}, wrong.view());
  });
  st::require_shape_error("final_state", [&] { seqmix::gated_linear_attention_slice(in, {o.view()}, decay.view()); });
  st::require_shape_error("initial_state", [&] {
    auto with_state = in;
    with_state.initial_state = init.view();
    seqmix::gated_linear_attention_slice(with_state, {o.view(), fin.view()}, decay.view());
  });
  st::require_shape_error("initial_state", [&] { seqmix::gated_linear_attention_slice_correct(in, {o.view(), fin.view()}); });
  st::require_shape_error("final_state", [&] {
    auto with_state = in;
    with_state.initial_state = fin.view();
    seqmix::gated_linear_attention_slice_correct(with_state, {o.view(), fin.view()});
  });
  st::require_shape_error("options.normalize", [&] {
    seqmix::LinearAttentionOptions options;
    options.normalize = true;
    options.feature_map = seqmix::FeatureMap::elu1;
    seqmix::linear_attention_slice({x.q.view(), x.k.view(), x.v.view()}, {o.view(), fin.view()}, options);
  });
  const CpDeltaData dx;
  const seqmix::GatedDeltaRuleInputs din{dx.q.view(), dx.k.view(), dx.v.view(), dx.beta.view(), dx.gs.view()};
  Tensor<float, 4> dfin({dx.B, dx.HV, dx.K, dx.V}), readout({dx.B, dx.T, dx.HV, dx.K}), transition({dx.B, dx.HV, dx.K, dx.K});
  st::require_shape_error("readout", [&] {
    Tensor<float, 4> wrong({dx.B, dx.T, dx.HV, dx.K + 1});
    seqmix::gated_delta_rule_slice(din, {o.view(), dfin.view()}, wrong.view(), transition.view());
  });
  st::require_shape_error("transition", [&] {
    seqmix::gated_delta_rule_slice(din, {o.view(), dfin.view()}, readout.view(), readout.view());
  });
  st::require_shape_error("final_state", [&] {
    seqmix::gated_delta_rule_slice(din, {o.view()}, readout.view(), transition.view());
  });
  st::require_shape_error("final_state", [&] {
    seqmix::correct_matrix_slice(readout.view(), transition.view(), dfin.view(), o.view(), dfin.view());
  });
  st::require_shape_error("options.reverse", [&] {
    seqmix::GatedLinearAttentionOptions options;
    options.reverse = true;
    seqmix::gated_linear_attention_slice(in, {o.view(), fin.view()}, decay.view(), options);
  });
  st::require_shape_error("options.reverse", [&] {
    seqmix::GatedDeltaRuleOptions options;
    options.reverse = true;
    seqmix::gated_delta_rule_slice(din, {o.view(), dfin.view()}, readout.view(), transition.view(), options);
  });
  for (index_t i = 0; i < o.view().numel(); ++i) REQUIRE(o.view().data()[i] == 7.5f);
  for (index_t i = 0; i < readout.view().numel(); ++i) REQUIRE(readout.view().data()[i] == 0.f);
}

TEST_CASE("context parallel: one long sequence split over a 2-thread pool equals one call", "[context_parallel]") {
  const CpLaData x;
  const CpSsdData y;
  const CpDeltaData z;
  const seqmix::Executor& pool = st::two_thread_pool();
  for (const index_t slices : {0, 3, 7, 200}) {
    for (const bool with_initial : {false, true}) {
      INFO(slices << " slices, initial state " << with_initial);
      {  // GLA, per-channel gate
        const Tensor<float, 4> init = st::random_tensor<4>({x.B, x.HV, x.K, x.V}, 51);
        seqmix::GatedLinearAttentionInputs in{x.q.view(), x.k.view(), x.v.view(), x.g.view()};
        if (with_initial) in.initial_state = init.view();
        Tensor<float, 4> o_ref({x.B, x.T, x.HV, x.V}), f_ref({x.B, x.HV, x.K, x.V}), o(o_ref.shape()), f(f_ref.shape());
        seqmix::gated_linear_attention(in, {o_ref.view(), f_ref.view()});
        seqmix::context_parallel_gated_linear_attention(in, {o.view(), f.view()}, {}, pool, slices);
        st::require_close("gla outputs", o.view(), o_ref.view(), kCpTol);
        st::require_close("gla final state", f.view(), f_ref.view(), kCpTol);
      }
      {  // ssd
        const Tensor<float, 4> init = st::random_tensor<4>({y.B, y.H, y.P, y.N}, 52);
        seqmix::SsdInputs in{y.x.view(), y.dt.view(), y.A.view(), y.Bm.view(), y.Cm.view(), y.D.view(), y.z.view(),
                             y.dt_bias.view()};
        if (with_initial) in.initial_state = init.view();
        seqmix::SsdOptions options;
        options.dt_softplus = true;
        Tensor<float, 4> o_ref({y.B, y.T, y.H, y.P}), f_ref({y.B, y.H, y.P, y.N}), o(o_ref.shape()), f(f_ref.shape());
        seqmix::ssd(in, {o_ref.view(), f_ref.view()}, options);
        seqmix::context_parallel_ssd(in, {o.view(), f.view()}, options, pool, slices);
        st::require_close("ssd outputs", o.view(), o_ref.view(), kCpTol);
        st::require_close("ssd final state", f.view(), f_ref.view(), kCpTol);
      }
      {  // Gated DeltaNet
        const Tensor<float, 4> init = st::random_tensor<4>({z.B, z.HV, z.K, z.V}, 53);
        seqmix::GatedDeltaRuleInputs in{z.q.view(), z.k.view(), z.v.view(), z.beta.view(), z.gs.view()};
        if (with_initial) in.initial_state = init.view();
        seqmix::GatedDeltaRuleOptions options;
        options.qk_norm = seqmix::QkNorm::l2;
        Tensor<float, 4> o_ref({z.B, z.T, z.HV, z.V}), f_ref({z.B, z.HV, z.K, z.V}), o(o_ref.shape()), f(f_ref.shape());
        seqmix::gated_delta_rule(in, {o_ref.view(), f_ref.view()}, options);
        seqmix::context_parallel_gated_delta_rule(in, {o.view(), f.view()}, options, pool, slices);
        st::require_close("gated delta rule outputs", o.view(), o_ref.view(), kCpTol);
        st::require_close("gated delta rule final state", f.view(), f_ref.view(), kCpTol);
      }
    }
  }
}
