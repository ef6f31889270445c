// The non-finite policy (issue 24 item 2, docs/reliability.md) for the chunked hybrids: BASED,
// RAT, Infini-attention, Mega and the nonlinear recurrence (sequential, Newton, step). The probe
// of tests/nonfinite_probe.hpp puts NaN, +inf and -inf into one element of each token input at
// tokens around the chunk / segment / window edges, and into chosen elements of the initial
// states (valid history, and history slots that no token may read): earlier tokens stay bit for
// bit what the same form gives without it, later outputs and the final state are non-finite
// exactly where the reference's are. Every op runs its reference, its fast prefill on two
// threads and its decode step token by token from the same initial state.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "nonfinite_probe.hpp"
#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/reference.hpp"
#include "seqmix/chunked/infini/step.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/reference.hpp"
#include "seqmix/chunked/mega/step.hpp"
#include "seqmix/chunked/newton/fast.hpp"
#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix/chunked/newton/step.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/chunked/rat/step.hpp"

namespace {

using namespace seqmix_nonfinite_probe;

// Flat index of element (i0, i1, i2, i3) of a row-major field.
index_t hybrid_probe_at(const Field& f, std::vector<index_t> at) {
  index_t i = 0;
  for (std::size_t d = 0; d < at.size(); ++d) i = i * f.shape[d] + at[d];
  return i;
}

// The state inputs in[first, first + n) copied into the state outputs out[1, 1 + n), which the
// forms then update in place.
void hybrid_probe_copy_state(const Fields& in, std::size_t first, std::size_t n, Fields& out) {
  for (std::size_t s = 0; s < n; ++s) out[1 + s].data = in[first + s].data;
}

// ---- BASED -----------------------------------------------------------------------------------

// Resumes at position 5 with a window of 8: ring slots 0-4 hold history (visible to the first
// 2 tokens of the call ... token 6), slots 5-7 are stale and must not be read.
Op based_probe_op(seqmix::BasedNormalization norm) {
  const index_t B = 1, T = 50, Hf = 1, F = 4, H = 2, D = 8, V = 8, W = 8, Kf = 1 + F + F * F, p0 = 5;
  const bool sum = norm == seqmix::BasedNormalization::feature_sum;
  Op op;
  op.name = std::string("based ") + (sum ? "feature_sum" : "none");
  op.inputs = {random_field("q_feat", {B, T, Hf, F}, 101), random_field("k_feat", {B, T, Hf, F}, 102),
               random_field("q", {B, T, H, D}, 103),       random_field("k", {B, T, H, D}, 104),
               random_field("v", {B, T, H, V}, 105),       random_field("state.kv", {B, H, Kf, V}, 106, -0.1f, 0.1f, -1),
               random_field("state.normalizer", {B, H, Kf}, 107, 0.5f, 2.f, -1),
               random_field("state.window_k", {B, W, H, D}, 108, -1.f, 1.f, -1),
               random_field("state.window_v", {B, W, H, V}, 109, -1.f, 1.f, -1)};
  op.inputs[5].state_pokes = {hybrid_probe_at(op.inputs[5], {0, 1, 3, 2})};
  if (sum) op.inputs[6].state_pokes = {hybrid_probe_at(op.inputs[6], {0, 0, 7})};
  for (std::size_t f : {std::size_t{7}, std::size_t{8}})  // slot 4 (history), slot 6 (stale)
    op.inputs[f].state_pokes = {hybrid_probe_at(op.inputs[f], {0, 4, 0, 3}), hybrid_probe_at(op.inputs[f], {0, 6, 1, 3})};
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("state.kv", {B, H, Kf, V}, -1),
                zero_field("state.normalizer", {B, H, Kf}, -1), zero_field("state.window_k", {B, W, H, D}, -1),
                zero_field("state.window_v", {B, W, H, V}, -1)};
  seqmix::BasedOptions options;
  options.window = W;
  options.normalization = norm;
  options.chunk_size = 16;  // T >= chunk: the chunked linear branch
  const auto state = [=](Fields& out) {
    seqmix::BasedState s;
    s.kv = out[1].out<4>(), s.window_k = out[3].out<4>(), s.window_v = out[4].out<4>(), s.position = p0;
    if (sum) s.normalizer = out[2].out<3>();
    return s;
  };
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      hybrid_probe_copy_state(in, 5, 4, out);
      seqmix::BasedState s = state(out);
      const seqmix::BasedInputs i{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<4>(), in[4].in<4>(), {}};
      if (reference)
        seqmix::reference::based(i, {out[0].out<4>()}, options, &s);
      else
        seqmix::based(i, {out[0].out<4>()}, options, &s, st::two_thread_pool());
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.forms.push_back({"based_step", [=](const Fields& in, Fields& out) {
                        hybrid_probe_copy_state(in, 5, 4, out);
                        seqmix::BasedState s = state(out);
                        for (index_t t = 0; t < T; ++t)
                          seqmix::based_step({in[0].in<4>().select(1, t), in[1].in<4>().select(1, t),
                                              in[2].in<4>().select(1, t), in[3].in<4>().select(1, t),
                                              in[4].in<4>().select(1, t), {}},
                                             {out[0].out<4>().select(1, t)}, s, options, st::two_thread_pool());
                      }});
  op.tokens = {0, 6, 15, 16, 30, T - 1};
  return op;
}

// ---- RAT --------------------------------------------------------------------------------------

// Resumes at position p0 = 11 with chunks of 8: chunk summary row 0 is history, the in-chunk state
// holds 3 tokens of chunk 1; summary row 5 is beyond the call and must not be read. With p0 = 0
// the first chunk's queries see their own state only (no summary yet).
Op rat_probe_op(index_t p0) {
  const index_t B = 1, T = 40, H = 2, Hkv = 1, D = 8, L = 8, C = (p0 + T) / L + 1;
  Op op;
  op.name = "rat p0=" + std::to_string(p0);
  op.inputs = {random_field("q", {B, T, H, D}, 111, -2.f, 2.f),
               random_field("k", {B, T, Hkv, D}, 112, -2.f, 2.f),
               random_field("v", {B, T, Hkv, D}, 113),
               random_field("g", {B, T, Hkv, D}, 114, -2.f, 0.f),
               random_field("state.chunk_k", {B, C, Hkv, D}, 115, -1.f, 1.f, -1),
               random_field("state.chunk_v", {B, C, Hkv, D}, 116, -1.f, 1.f, -1),
               random_field("state.k_run", {B, Hkv, D}, 117, -1.f, 1.f, -1),
               random_field("state.v_run", {B, Hkv, D}, 118, -1.f, 1.f, -1)};
  for (std::size_t f : {std::size_t{4}, std::size_t{5}})
    op.inputs[f].state_pokes = {hybrid_probe_at(op.inputs[f], {0, 0, 0, 3}), hybrid_probe_at(op.inputs[f], {0, 5, 0, 3})};
  for (std::size_t f : {std::size_t{6}, std::size_t{7}}) op.inputs[f].state_pokes = {hybrid_probe_at(op.inputs[f], {0, 0, 5})};
  op.outputs = {zero_field("o", {B, T, H, D}), zero_field("state.chunk_k", {B, C, Hkv, D}, -1),
                zero_field("state.chunk_v", {B, C, Hkv, D}, -1), zero_field("state.k_run", {B, Hkv, D}, -1),
                zero_field("state.v_run", {B, Hkv, D}, -1)};
  seqmix::RatOptions options;
  options.chunk_size = L;
  const auto state = [=](Fields& out) {
    return seqmix::RatState{out[1].out<4>(), out[2].out<4>(), out[3].out<3>(), out[4].out<3>(), p0};
  };
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      hybrid_probe_copy_state(in, 4, 4, out);
      seqmix::RatState s = state(out);
      const seqmix::RatInputs i{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<4>(), {}};
      if (reference)
        seqmix::reference::rat(i, {out[0].out<4>()}, options, &s);
      else
        seqmix::rat(i, {out[0].out<4>()}, options, &s, st::two_thread_pool());
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.forms.push_back({"rat_step", [=](const Fields& in, Fields& out) {
                        hybrid_probe_copy_state(in, 4, 4, out);
                        seqmix::RatState s = state(out);
                        for (index_t t = 0; t < T; ++t)
                          seqmix::rat_step({in[0].in<4>().select(1, t), in[1].in<4>().select(1, t),
                                            in[2].in<4>().select(1, t), in[3].in<4>().select(1, t), {}},
                                           {out[0].out<4>().select(1, t)}, s, options, st::two_thread_pool());
                      }});
  op.tokens = {0, 4, 5, 7, 8, 12, 20, T - 1};  // tokens 4 / 7 end a chunk (p0 = 11 / 0)
  return op;
}

// ---- Infini-attention ---------------------------------------------------------------------------

// Resumes at position 20 with segments of 16: the memory holds segment 0, segment slots 0-3
// hold the current segment's first 4 tokens, slot 10 is stale.
Op infini_probe_op(seqmix::InfiniMemoryUpdate update) {
  const index_t B = 1, T = 40, H = 2, Hkv = 1, K = 8, V = 8, S = 16, p0 = 20;
  Op op;
  op.name = std::string("infini_attention ") + (update == seqmix::InfiniMemoryUpdate::delta ? "delta" : "linear");
  op.inputs = {random_field("q", {B, T, H, K}, 121),
               random_field("k", {B, T, Hkv, K}, 122),
               random_field("v", {B, T, Hkv, V}, 123),
               random_field("beta", {H}, 124, -2.f, 2.f, -1),
               random_field("state.memory", {B, Hkv, K, V}, 125, -1.f, 1.f, -1),
               random_field("state.normalizer", {B, Hkv, K}, 126, 1.f, 4.f, -1),
               random_field("state.segment_k", {B, S, Hkv, K}, 127, -1.f, 1.f, -1),
               random_field("state.segment_v", {B, S, Hkv, V}, 128, -1.f, 1.f, -1)};
  op.inputs[4].state_pokes = {hybrid_probe_at(op.inputs[4], {0, 0, 3, 4})};
  op.inputs[5].state_pokes = {hybrid_probe_at(op.inputs[5], {0, 0, 5})};
  for (std::size_t f : {std::size_t{6}, std::size_t{7}})
    op.inputs[f].state_pokes = {hybrid_probe_at(op.inputs[f], {0, 2, 0, 3}), hybrid_probe_at(op.inputs[f], {0, 10, 0, 3})};
  op.outputs = {zero_field("o", {B, T, H, V}), zero_field("state.memory", {B, Hkv, K, V}, -1),
                zero_field("state.normalizer", {B, Hkv, K}, -1), zero_field("state.segment_k", {B, S, Hkv, K}, -1),
                zero_field("state.segment_v", {B, S, Hkv, V}, -1)};
  seqmix::InfiniAttentionOptions options;
  options.segment = S;
  options.update = update;
  const auto state = [=](Fields& out) {
    return seqmix::InfiniAttentionState{out[1].out<4>(), out[2].out<3>(), out[3].out<4>(), out[4].out<4>(), p0};
  };
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      hybrid_probe_copy_state(in, 4, 4, out);
      seqmix::InfiniAttentionState s = state(out);
      const seqmix::InfiniAttentionInputs i{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<1>(), {}};
      if (reference)
        seqmix::reference::infini_attention(i, {out[0].out<4>()}, options, &s);
      else
        seqmix::infini_attention(i, {out[0].out<4>()}, options, &s, st::two_thread_pool());
    };
  };
  // Segment buffer rows at or past position % S are stale (the fast forms keep a finished
  // segment's rows there, the reference does not): cleared before the comparison.
  const auto clear_stale = [=](Fields& out) {
    for (std::size_t f : {std::size_t{3}, std::size_t{4}}) {
      const index_t row = out[f].stride(1);
      std::fill(out[f].data.begin() + ((p0 + T) % S) * row, out[f].data.end(), 0.f);
    }
  };
  op.reference = [=](const Fields& in, Fields& out) { prefill(true)(in, out), clear_stale(out); };
  op.forms.push_back({"fast", [=](const Fields& in, Fields& out) { prefill(false)(in, out), clear_stale(out); }});
  op.forms.push_back({"infini_attention_step", [=](const Fields& in, Fields& out) {
                        hybrid_probe_copy_state(in, 4, 4, out);
                        seqmix::InfiniAttentionState s = state(out);
                        for (index_t t = 0; t < T; ++t)
                          seqmix::infini_attention_step({in[0].in<4>().select(1, t), in[1].in<4>().select(1, t),
                                                         in[2].in<4>().select(1, t), in[3].in<1>(), {}},
                                                        {out[0].out<4>().select(1, t)}, s, options, st::two_thread_pool());
                        clear_stale(out);
                      }});
  op.tokens = {0, 5, 11, 12, 20, T - 1};  // token 11 ends segment 1 (position 31)
  return op;
}

// ---- Mega ---------------------------------------------------------------------------------------

// Chunks of 16 over T = 40 from an initial EMA state; the decode step runs from position 0. Its
// k / v cache rows past T % c hold the previous chunk's tokens where the prefill leaves them
// untouched (both are unused by later steps): the step form clears them before the comparison.
Op mega_probe_op() {
  const index_t B = 1, T = 40, D = 8, N = 4, H = 2, Dk = D / H, Dv = 4, c = 16;
  Op op;
  op.name = "mega";
  op.inputs = {random_field("x", {B, T, D}, 131),
               random_field("v", {B, T, H, Dv}, 132),
               random_field("initial_state", {B, D, N}, 133, -1.f, 1.f, -1),
               random_field("params.alpha_logit", {D, N}, 134, -2.f, 2.f, -1),
               random_field("params.delta_logit", {D, N}, 135, -2.f, 2.f, -1),
               random_field("params.beta", {D, N}, 136, -1.f, 1.f, -1),
               random_field("params.eta", {D, N}, 137, -1.f, 1.f, -1),
               random_field("params.q_scale", {D}, 138, -1.f, 1.f, -1),
               random_field("params.q_bias", {D}, 139, -1.f, 1.f, -1),
               random_field("params.k_scale", {D}, 140, -1.f, 1.f, -1),
               random_field("params.k_bias", {D}, 141, -1.f, 1.f, -1)};
  op.inputs[2].state_pokes = {hybrid_probe_at(op.inputs[2], {0, 5, 2})};
  op.inputs[3].state_pokes = {hybrid_probe_at(op.inputs[3], {6, 1})};
  op.inputs[10].state_pokes = {3};
  op.outputs = {zero_field("o", {B, T, H, Dv}), zero_field("final_state", {B, D, N}, -1),
                zero_field("k_cache", {B, c, H, Dk}, -1), zero_field("v_cache", {B, c, H, Dv}, -1)};
  seqmix::MegaOptions options;
  options.chunk_size = c;
  const auto params = [](const Fields& in) {
    return seqmix::MegaParams{in[3].in<2>(), in[4].in<2>(), in[5].in<2>(), in[6].in<2>(),
                              in[7].in<1>(), in[8].in<1>(), in[9].in<1>(), in[10].in<1>()};
  };
  const auto prefill = [=](bool reference) {
    return [=](const Fields& in, Fields& out) {
      seqmix::MegaInputs i;
      i.x = in[0].in<3>(), i.v = in[1].in<4>(), i.params = params(in), i.initial_state = in[2].in<3>();
      seqmix::MegaOutputs o;
      o.o = out[0].out<4>(), o.final_state = out[1].out<3>(), o.k_cache = out[2].out<4>(), o.v_cache = out[3].out<4>();
      if (reference)
        seqmix::reference::mega(i, o, options);
      else
        seqmix::mega(i, o, options, st::two_thread_pool());
    };
  };
  op.reference = prefill(true);
  op.forms.push_back({"fast", prefill(false)});
  op.forms.push_back({"mega_step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[2].data;
                        const seqmix::MegaDecodeState s{out[1].out<3>(), out[2].out<4>(), out[3].out<4>(), {}};
                        for (index_t t = 0; t < T; ++t) {
                          seqmix::MegaStepInputs i;
                          i.x = in[0].in<3>().select(1, t), i.v = in[1].in<4>().select(1, t), i.params = params(in);
                          i.position = t;
                          seqmix::mega_step(i, out[0].out<4>().select(1, t), s, options, st::two_thread_pool());
                        }
                        for (std::size_t f : {std::size_t{2}, std::size_t{3}}) {
                          const index_t row = out[f].stride(1);
                          std::fill(out[f].data.begin() + (T % c) * row, out[f].data.end(), 0.f);
                        }
                      }});
  op.tokens = {0, 10, 15, 16, 33, T - 1};
  return op;
}

// ---- nonlinear recurrence (minGRU cell) ------------------------------------------------------

// h_t = f(h_{t-1}, x_t, u_t) from h0. newton = false: the sequential forms (fast loop, decode step)
// against the reference loop, bit for bit on earlier tokens. newton = true: the Newton solves
// (channel and time splits, the plain-loop Newton), whose clean result is an iterate within tol of
// the loop's: earlier tokens are compared within 1e-4 (exact = false). With a NaN input the solve
// turns non-finite and returns the sequential result, whatever options.fallback says.
Op newton_probe_op(bool newton) {
  const index_t B = 1, T = 60, D = 20;
  using Cell = seqmix::MinGruCell;
  Op op;
  op.name = newton ? "nonlinear_recurrence_newton (minGRU)" : "nonlinear_recurrence (minGRU)";
  op.inputs = {random_field("x", {B, T, D}, 151), random_field("u", {B, T, D}, 152),
               random_field("a", {D}, 153, -0.9f, 0.9f, -1), random_field("w", {D}, 154, -0.9f, 0.9f, -1),
               random_field("h0", {B, D}, 155, -1.f, 1.f, -1)};
  op.inputs[0].exact = op.inputs[1].exact = !newton;
  op.inputs[2].state_pokes = {7};
  op.inputs[4].state_pokes = {hybrid_probe_at(op.inputs[4], {0, 11})};
  op.outputs = {zero_field("h", {B, T, D}), zero_field("h_last", {B, D}, -1)};
  const auto io = [](const Fields& in, Fields& out) {
    seqmix::NonlinearRecurrenceInputs<Cell> i;
    i.inputs = {in[0].in<3>(), in[1].in<3>()};
    i.params = {in[2].in<1>(), in[3].in<1>()};
    i.h0 = in[4].in<2>();
    return std::make_pair(i, seqmix::NonlinearRecurrenceOutputs{out[0].out<3>(), out[1].out<2>()});
  };
  op.reference = [=](const Fields& in, Fields& out) {
    const auto [i, o] = io(in, out);
    seqmix::reference::nonlinear_recurrence(i, o);
  };
  if (!newton) {
    op.forms.push_back({"fast", [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::nonlinear_recurrence(i, o, st::two_thread_pool());
                        }});
    op.forms.push_back({"nonlinear_recurrence_step", [=](const Fields& in, Fields& out) {
                          out[1].data = in[4].data;
                          for (index_t t = 0; t < T; ++t) {
                            seqmix::NonlinearRecurrenceStepInputs<Cell> i;
                            i.inputs = {in[0].in<3>().select(1, t), in[1].in<3>().select(1, t)};
                            i.params = {in[2].in<1>(), in[3].in<1>()};
                            seqmix::nonlinear_recurrence_step(i, out[1].out<2>(), st::two_thread_pool());
                            const auto h = out[0].out<3>();
                            for (index_t c = 0; c < D; ++c) h(0, t, c) = out[1].data[c];
                          }
                        }});
  } else {
    for (auto split : {seqmix::NewtonSplit::channels, seqmix::NewtonSplit::time}) {
      seqmix::NonlinearRecurrenceNewtonOptions options;
      options.split = split;  // fallback: the default, poison
      op.forms.push_back({split == seqmix::NewtonSplit::time ? "newton time split" : "newton channel split",
                          [=](const Fields& in, Fields& out) {
                            const auto [i, o] = io(in, out);
                            seqmix::nonlinear_recurrence_newton(i, o, options, st::two_thread_pool());
                          }});
    }
    op.forms.push_back({"reference newton", [=](const Fields& in, Fields& out) {
                          const auto [i, o] = io(in, out);
                          seqmix::reference::nonlinear_recurrence_newton(i, o);
                        }});
  }
  op.tokens = {0, 13, 31, T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite inputs: based (fast, step, reference)", "[nonfinite][chunked][based]") {
  probe(based_probe_op(seqmix::BasedNormalization::feature_sum));
  probe(based_probe_op(seqmix::BasedNormalization::none));
}

TEST_CASE("non-finite inputs: rat (fast, step, reference)", "[nonfinite][chunked][rat]") {
  probe(rat_probe_op(11));
  probe(rat_probe_op(0));
}

TEST_CASE("non-finite inputs: infini_attention (fast, step, reference)", "[nonfinite][chunked][infini]") {
  probe(infini_probe_op(seqmix::InfiniMemoryUpdate::linear));
  probe(infini_probe_op(seqmix::InfiniMemoryUpdate::delta));
}

TEST_CASE("non-finite inputs: mega (fast, step, reference)", "[nonfinite][chunked][mega]") { probe(mega_probe_op()); }

TEST_CASE("non-finite inputs: nonlinear_recurrence (sequential, step, Newton)", "[nonfinite][chunked][newton]") {
  probe(newton_probe_op(false));
  probe(newton_probe_op(true));
}

TEST_CASE("nonlinear_recurrence_newton: a NaN input returns the sequential result, not poison", "[nonfinite][newton]") {
  // The report says what happened: non-finite, not converged, the sequential loop's result used.
  Op op = newton_probe_op(true);
  Fields in = op.inputs;
  in[0].data[in[0].poke_index(31)] = kNan;
  Fields ref = op.outputs;
  op.reference(in, ref);
  for (auto split : {seqmix::NewtonSplit::channels, seqmix::NewtonSplit::time}) {
    Fields out = op.outputs;
    seqmix::NonlinearRecurrenceInputs<seqmix::MinGruCell> i;
    i.inputs = {in[0].in<3>(), in[1].in<3>()};
    i.params = {in[2].in<1>(), in[3].in<1>()};
    i.h0 = in[4].in<2>();
    seqmix::NonlinearRecurrenceNewtonOptions options;  // fallback: poison
    options.split = split;
    const seqmix::NewtonReport report =
        seqmix::nonlinear_recurrence_newton(i, {out[0].out<3>(), out[1].out<2>()}, options, st::two_thread_pool());
    CHECK(report.status == seqmix::NewtonStatus::non_finite);
    CHECK_FALSE(report.converged);
    CHECK(report.used_fallback);
    CHECK(report.message.find("an input holds NaN or inf") != std::string::npos);
    index_t finite_before = 0, nan_after = 0;
    for (index_t t = 0; t < 60; ++t)
      for (index_t c = 0; c < 20; ++c) {
        const float h = out[0].data[t * 20 + c];
        if (t < 31) finite_before += std::isfinite(h) && std::fabs(h - ref[0].data[t * 20 + c]) <= 1e-5f;
        if (t >= 31 && c == 10) nan_after += std::isnan(h);
      }
    CHECK(finite_before == 31 * 20);
    CHECK(nan_after == 60 - 31);
  }
}

TEST_CASE("rat: a -inf gate inside a chunk multiplies the in-chunk state by 0, so an inf state becomes NaN",
          "[nonfinite][chunked][rat]") {
  // docs/reliability.md, rat: exp(-inf) = 0 is the state's multiplier a, not a reset; 0 * inf is
  // NaN in the reference (double), the fast scan and the step alike, from that token to the
  // chunk's end. Only a chunk start is a reset that never reads the state. Chunk 8, T = 6 (inside
  // chunk 0): an inf key at token 2 of channel 1, a -inf gate at token 4 of channel 1.
  const index_t T = 6, H = 1, Hkv = 1, D = 4, L = 8, C = 1;
  for (const bool inf_key : {true, false}) {
    INFO((inf_key ? "inf key at token 2, then a -inf gate" : "a -inf gate on a finite state"));
    Field q = random_field("q", {1, T, H, D}, 141), k = random_field("k", {1, T, Hkv, D}, 142);
    Field v = random_field("v", {1, T, Hkv, D}, 143), g = random_field("g", {1, T, Hkv, D}, 144, -2.f, 0.f);
    if (inf_key) k.data[2 * D + 1] = std::numeric_limits<float>::infinity();
    g.data[4 * D + 1] = -std::numeric_limits<float>::infinity();
    seqmix::RatOptions options;
    options.chunk_size = L;
    for (int form = 0; form < 3; ++form) {
      INFO((form == 0 ? "reference" : form == 1 ? "fast" : "rat_step"));
      std::vector<float> ck(static_cast<std::size_t>(C * Hkv * D)), cv(ck.size()), kr(static_cast<std::size_t>(Hkv * D)),
          vr(kr.size()), o(static_cast<std::size_t>(T * H * D));
      seqmix::RatState s{TensorView<float, 4>(ck.data(), {1, C, Hkv, D}), TensorView<float, 4>(cv.data(), {1, C, Hkv, D}),
                         TensorView<float, 3>(kr.data(), {1, Hkv, D}), TensorView<float, 3>(vr.data(), {1, Hkv, D}), 0, {}};
      const seqmix::RatInputs i{q.in<4>(), k.in<4>(), v.in<4>(), g.in<4>(), {}};
      const TensorView<float, 4> ov(o.data(), {1, T, H, D});
      if (form == 0) seqmix::reference::rat(i, {ov}, options, &s);
      if (form == 1) seqmix::rat(i, {ov}, options, &s, st::two_thread_pool());
      if (form == 2)
        for (index_t t = 0; t < T; ++t)
          seqmix::rat_step({i.q.select(1, t), i.k.select(1, t), i.v.select(1, t), i.g.select(1, t), {}}, {ov.select(1, t)}, s,
                           options);
      for (index_t c = 0; c < D; ++c) {
        INFO("k_run channel " << c);
        if (c == 1 && inf_key)
          CHECK(std::isnan(kr[static_cast<std::size_t>(c)]));
        else
          CHECK(std::isfinite(kr[static_cast<std::size_t>(c)]));
        CHECK(std::isfinite(vr[static_cast<std::size_t>(c)]));
      }
      for (index_t j = 0; j < 2 * H * D; ++j) CHECK(std::isfinite(o[static_cast<std::size_t>(j)]));  // tokens 0, 1
    }
  }
}
