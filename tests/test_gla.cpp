// gated_linear_attention (and simple_gla / retention / ungated): every fast form against the
// reference recurrence over a shape table, plus split-run, chunk-size, threading, strided-view,
// long-sequence and bad-argument properties.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateKind;
using seqmix::index_t;
using seqmix::LinearAttentionAlgorithm;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct GlaCase {
  index_t B, T, H, HV, K, V;
  GateKind gate;
  float gate_lo;  // log-gates drawn from [gate_lo, gate_hi]
  float gate_hi;
  bool big;  // dropped under SEQMIX_TEST_SCALE=small
};

std::string describe(const GlaCase& c, std::uint64_t seed) {
  static const char* gates[] = {"channel", "scalar", "retnet", "none"};
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " H=" << c.H << " HV=" << c.HV << " K=" << c.K << " V=" << c.V
    << " gate=" << gates[static_cast<int>(c.gate)] << " g in [" << c.gate_lo << ", " << c.gate_hi << "] seed=" << seed;
  return s.str();
}

// Random inputs of one case; initial state included.
struct GlaData {
  Tensor<float, 4> q, k, v, g, s0;
  Tensor<float, 3> gs;
  GlaData(const GlaCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.HV, c.V}, seed + 3)),
        s0(st::random_tensor<4>({c.B, c.HV, c.K, c.V}, seed + 5)) {
    if (c.gate == GateKind::channel) {
      g = Tensor<float, 4>({c.B, c.T, c.H, c.K});
      st::fill_log_gate(g.view(), seed + 4, c.gate_lo, c.gate_hi);
    }
    if (c.gate == GateKind::scalar) {
      gs = Tensor<float, 3>({c.B, c.T, c.H});
      st::fill_log_gate(gs.view(), seed + 4, c.gate_lo, c.gate_hi);
    }
  }
  seqmix::GatedLinearAttentionInputs inputs() const {
    seqmix::GatedLinearAttentionInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.initial_state = s0.view();
    if (g.numel()) in.g = g.view();
    if (gs.numel()) in.g_scalar = gs.view();
    return in;
  }
  // Token t's operands for a step (the case's gate as inputs() has it).
  seqmix::GatedLinearAttentionStepInputs step_inputs(index_t t) const {
    seqmix::GatedLinearAttentionStepInputs in;
    in.q = q.view().select(1, t), in.k = k.view().select(1, t), in.v = v.view().select(1, t);
    if (g.numel()) in.g = g.view().select(1, t);
    if (gs.numel()) in.g_scalar = gs.view().select(1, t);
    return in;
  }
};

struct GlaResult {
  Tensor<float, 4> o, state;
  GlaResult(const GlaCase& c) : o({c.B, c.T, c.HV, c.V}), state({c.B, c.HV, c.K, c.V}) {}
  seqmix::GatedLinearAttentionOutputs outputs() { return {o.view(), state.view()}; }
};

void require_close(const Tensor<float, 4>& out, const Tensor<float, 4>& ref, double tol, const std::string& what) {
  st::require_close(what.c_str(), out.view(), ref.view(), tol);
}

// The table: each listed value of T, K, V, H, B and gate strength appears, in ragged
// combinations around the chunk size 64 (smaller, equal, one over, several, long).
std::vector<GlaCase> gla_table() {
  std::vector<GlaCase> cases = {
      {1, 1, 1, 1, 16, 16, GateKind::channel, -1.f, 0.f, false},
      {3, 17, 4, 4, 16, 64, GateKind::channel, -0.1f, 0.f, false},
      {1, 64, 1, 1, 64, 64, GateKind::channel, -20.f, 0.f, false},
      {3, 65, 4, 4, 80, 16, GateKind::channel, -3.f, -0.5f, false},
      {1, 300, 4, 4, 64, 80, GateKind::channel, -0.05f, 0.f, false},
      {1, 300, 1, 1, 128, 64, GateKind::channel, -20.f, -5.f, false},
      {3, 300, 1, 4, 16, 128, GateKind::channel, -1e-3f, 0.f, false},
      {1, 2048, 1, 1, 64, 64, GateKind::channel, -0.5f, 0.f, false},
      {1, 2048, 4, 4, 128, 128, GateKind::channel, -1.f, 0.f, true},
      {1, 1, 4, 4, 64, 16, GateKind::scalar, -1.f, 0.f, false},
      {3, 65, 1, 1, 16, 80, GateKind::scalar, -20.f, 0.f, false},
      {1, 300, 4, 4, 128, 64, GateKind::scalar, -0.01f, 0.f, false},
      {1, 2048, 1, 2, 80, 64, GateKind::scalar, -0.1f, 0.f, false},
      {3, 17, 4, 4, 64, 64, GateKind::retnet, 0.f, 0.f, false},
      {1, 300, 4, 8, 64, 16, GateKind::retnet, 0.f, 0.f, false},
      {1, 65, 1, 1, 80, 128, GateKind::none, 0.f, 0.f, false},
      {3, 300, 4, 4, 16, 16, GateKind::none, 0.f, 0.f, false},
      // The register-tiled chunk steps (diagonal_decay/chunk_products.hpp) take any K and V of
      // whole vectors: odd K, T ragged against the chunk and the score tiles, grouped heads.
      {2, 131, 1, 2, 33, 32, GateKind::channel, -0.5f, 0.f, false},
      {2, 97, 2, 4, 7, 48, GateKind::scalar, -0.2f, 0.f, false},
      {1, 129, 1, 1, 33, 16, GateKind::none, 0.f, 0.f, false},
      // Widths whose recurrent prefill state rows are padded (state_row_stride, recurrent.hpp):
      // 512 -> 528 floats; 1030 -> 1040, with a scalar tail of 6 columns.
      {2, 37, 1, 2, 8, 512, GateKind::channel, -0.5f, 0.f, false},
      {1, 21, 1, 1, 5, 1030, GateKind::scalar, -0.2f, 0.f, false},
      // States over 2^16 floats: the chunked form runs its heads one at a time in the
      // workspace's own state (run_chunked_heads, groups of one), two value heads per q/k head.
      {2, 131, 1, 2, 64, 1040, GateKind::channel, -0.5f, 0.f, false},
      {1, 70, 2, 2, 72, 1024, GateKind::scalar, -0.2f, 0.f, false},
  };
  if (st::small_test_scale()) cases.erase(std::remove_if(cases.begin(), cases.end(), [](const GlaCase& c) { return c.big; }), cases.end());
  return cases;
}

// fp32 chunked/recurrent against the double reference; long ungated sums grow, so the bound
// scales with max|ref| (SPEC's rule).
constexpr double kTol = 2e-4;

}  // namespace

TEST_CASE("gated_linear_attention: fast forms match the reference over the shape table", "[gla]") {
  std::uint64_t seed = 100;
  for (const GlaCase& c : gla_table()) {
    seed += 10;
    const GlaData data(c, seed);
    seqmix::GatedLinearAttentionOptions options;
    options.gate = c.gate;
    GlaResult ref(c);
    seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs(), options);
    for (auto algorithm : {LinearAttentionAlgorithm::automatic, LinearAttentionAlgorithm::chunked,
                           LinearAttentionAlgorithm::recurrent}) {
      options.algorithm = algorithm;
      GlaResult fast(c);
      seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options);
      const std::string what = describe(c, seed) + " algorithm=" + std::to_string(static_cast<int>(algorithm));
      require_close(fast.o, ref.o, kTol, what + " o");
      require_close(fast.state, ref.state, kTol, what + " final_state");
    }
  }
}

TEST_CASE("gated_linear_attention: chunk sizes and thread counts agree", "[gla]") {
  const GlaCase c{2, 300, 2, 4, 64, 80, GateKind::channel, -25.f, 0.f, false};
  seqmix::ThreadPool pool(2);
  // The reference depends only on the gates, not on the chunk: one per gate strength, then
  // every chunk size is compared against it.
  for (float lo : {-25.f, -0.05f}) {
    GlaData data(c, 7);
    st::fill_log_gate(data.g.view(), 9, lo, 0.f);
    GlaResult ref(c);
    seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs());
    for (index_t chunk : {1, 16, 33, 64, 128, 512}) {
      GlaResult fast(c);
      seqmix::GatedLinearAttentionOptions options;
      options.chunk_size = chunk;
      options.algorithm = LinearAttentionAlgorithm::chunked;
      seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options, pool);
      require_close(fast.o, ref.o, kTol, "chunk=" + std::to_string(chunk) + " g_lo=" + std::to_string(lo));
      require_close(fast.state, ref.state, kTol, "chunk=" + std::to_string(chunk));
    }
  }
}

TEST_CASE("gated_linear_attention: recurrent prefill on padded state rows, whole, split and kept", "[gla]") {
  // V = 1024: state rows 1040 floats apart; on two threads the one head splits into two blocks of
  // 512 columns (rows 528 apart); token_states run the one-token path on the padded rows.
  const GlaCase c{1, 37, 1, 1, 8, 1024, GateKind::channel, -0.5f, 0.f, false};
  const GlaData data(c, 11);
  GlaResult ref(c);
  seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs());
  constexpr index_t kMid = 20;  // a token whose kept state is checked against a shorter reference run
  seqmix::GatedLinearAttentionInputs head = data.inputs();
  head.q = head.q.slice(1, 0, kMid), head.k = head.k.slice(1, 0, kMid), head.v = head.v.slice(1, 0, kMid);
  head.g = head.g.slice(1, 0, kMid);
  Tensor<float, 4> o_mid({c.B, kMid, c.HV, c.V}), state_mid({c.B, c.HV, c.K, c.V});
  seqmix::reference::gated_linear_attention(head, {o_mid.view(), state_mid.view()});

  seqmix::GatedLinearAttentionOptions options;
  options.algorithm = LinearAttentionAlgorithm::recurrent;
  seqmix::ThreadPool pool(2);
  for (const bool two_threads : {false, true}) {
    GlaResult fast(c);
    if (two_threads)
      seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options, pool);
    else
      seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options);
    const std::string what = describe(c, 11) + (two_threads ? " two threads" : " one thread");
    require_close(fast.o, ref.o, kTol, what + " o");
    require_close(fast.state, ref.state, kTol, what + " final_state");
  }
  GlaResult kept(c);
  Tensor<float, 5> token_states({c.B, c.T, c.HV, c.K, c.V});
  seqmix::GatedLinearAttentionOutputs out = kept.outputs();
  out.token_states = token_states.view();
  seqmix::gated_linear_attention(data.inputs(), out, options);
  require_close(kept.o, ref.o, kTol, "token_states o");
  require_close(kept.state, ref.state, kTol, "token_states final_state");
  st::require_close("token_states[T-1]", token_states.view()[0][c.T - 1], ref.state.view()[0], kTol);
  st::require_close("token_states[19]", token_states.view()[0][kMid - 1], state_mid.view()[0], kTol);
}

TEST_CASE("gated_linear_attention: the prefills' kept per-thread memory leaks nothing between calls", "[gla]") {
  // Each thread keeps the recurrent prefill's states and token operands across calls
  // (RecurrentPrefillScratch in diagonal_decay/driver.hpp), and the chunked prefill's workspace
  // and group states (ChunkedPrefillScratch). Calls whose shapes grow and shrink, a call fed a
  // NaN, then every case again: each equals the reference, and bit for bit a call made on a fresh
  // thread (nothing kept). On two threads the single-head cases split into value-column blocks
  // (V = 300: a narrower last block), the three- and four-head ones run as groups of heads.
  const GlaCase cases[] = {{1, 140, 3, 3, 64, 300, GateKind::channel, -0.5f, 0.f, false},
                           {2, 19, 2, 4, 9, 17, GateKind::scalar, -0.3f, 0.f, false},
                           {1, 77, 1, 1, 33, 1024, GateKind::channel, -0.5f, 0.f, false},
                           {1, 70, 1, 1, 20, 300, GateKind::scalar, -0.5f, 0.f, false},
                           {2, 17, 2, 2, 5, 3, GateKind::none, 0.f, 0.f, false}};
  for (const LinearAttentionAlgorithm algorithm :
       {LinearAttentionAlgorithm::recurrent, LinearAttentionAlgorithm::chunked}) {
    seqmix::GatedLinearAttentionOptions options;
    options.algorithm = algorithm;
    seqmix::ThreadPool pool(2);
    auto run_case = [&](const GlaCase& c, const GlaData& data, bool two_threads) {
      GlaResult out(c);
      options.gate = c.gate;
      if (two_threads)
        seqmix::gated_linear_attention(data.inputs(), out.outputs(), options, pool);
      else
        seqmix::gated_linear_attention(data.inputs(), out.outputs(), options);
      return out;
    };
    for (int round = 0; round < 2; ++round) {
      for (const GlaCase& c : cases) {
        const GlaData data(c, 40);
        GlaResult ref(c);
        options.gate = c.gate;
        seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs(), options);
        GlaResult fresh(c);
        std::thread([&] { fresh = run_case(c, data, false); }).join();
        for (const bool two_threads : {false, true}) {
          const GlaResult kept = run_case(c, data, two_threads);
          const std::string what = describe(c, 40) + (two_threads ? " two threads" : " one thread") +
                                   (algorithm == LinearAttentionAlgorithm::chunked ? " chunked" : " recurrent");
          require_close(kept.o, ref.o, kTol, what + " o");
          require_close(kept.state, ref.state, kTol, what + " final_state");
          if (!two_threads) {
            require_close(kept.o, fresh.o, 0.0, what + " o against a fresh thread");
            require_close(kept.state, fresh.state, 0.0, what + " final_state against a fresh thread");
          }
        }
      }
      // A NaN in the first round's last call leaves NaN in the kept memory; the second round's calls
      // must not see it.
      if (round == 0) {
        const GlaCase& c = cases[2];
        GlaData poisoned(c, 41);
        poisoned.q.view()(0, 3, 0, 5) = std::nanf("");
        poisoned.v.view()(0, 2, 0, 7) = std::nanf("");
        for (const bool two_threads : {false, true}) {
          const GlaResult out = run_case(c, poisoned, two_threads);
          CHECK(std::isnan(out.state.view()(0, 0, 0, 7)));
        }
      }
    }
  }
}

// The memory a thread keeps (diagonal_decay/driver.hpp) is the memory its next call of the same
// shape runs in: the same buffers (a group's states trade places with the workspace's state as
// they are swapped in, so those are compared as a set). Eigen's matrices are not allocated by
// operator new, so the allocation-counting tests (tests/alloc) cannot see this.
std::vector<const float*> kept_buffers() {
  const auto& recurrent = seqmix::detail::la::RecurrentPrefillKeep::slot();
  const auto& chunked = seqmix::detail::la::ChunkedPrefillKeep::slot();
  std::vector<const float*> states{recurrent.tokens.data()};
  for (const auto& S : recurrent.states) states.push_back(S.data());
  if (chunked.whole) {
    states.push_back(chunked.whole->S.data());
    const auto& w = chunked.whole->chunk;
    for (const auto* m : {&w.Q, &w.Kc, &w.QD, &w.KD, &w.KT, &w.Vc, &w.O, &w.A, &w.Bq, &w.Bk}) states.push_back(m->data());
  }
  for (const auto& S : chunked.states) states.push_back(S.data());
  std::sort(states.begin(), states.end());
  return states;
}

TEST_CASE("the prefills run in the memory they keep, and linear_attention_release_thread_scratch frees it", "[gla]") {
  using seqmix::detail::la::ChunkedPrefillKeep;
  using seqmix::detail::la::RecurrentPrefillKeep;
  const GlaCase c{1, 80, 2, 2, 64, 64, GateKind::channel, -0.5f, 0.f, false};
  const GlaData data(c, 50);
  GlaResult ref(c);
  seqmix::GatedLinearAttentionOptions options;
  seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs(), options);
  std::thread([&] {  // a thread of its own: nothing kept before, nothing left for the other cases
    for (int round = 0; round < 2; ++round) {
      for (const LinearAttentionAlgorithm algorithm :
           {LinearAttentionAlgorithm::recurrent, LinearAttentionAlgorithm::chunked}) {
        options.algorithm = algorithm;
        GlaResult out(c);
        seqmix::gated_linear_attention(data.inputs(), out.outputs(), options);
        require_close(out.o, ref.o, kTol, describe(c, 50) + " round " + std::to_string(round));
        const std::vector<const float*> kept = kept_buffers();
        seqmix::gated_linear_attention(data.inputs(), out.outputs(), options);
        CHECK(kept_buffers() == kept);
      }
      CHECK(RecurrentPrefillKeep::slot().bytes() > 0);
      CHECK(ChunkedPrefillKeep::slot().bytes() > 0);
      seqmix::linear_attention_release_thread_scratch();
      CHECK(RecurrentPrefillKeep::slot().bytes() == 0);
      CHECK(ChunkedPrefillKeep::slot().bytes() == 0);
    }
  }).join();
}

TEST_CASE("gated_linear_attention: one call equals prefill + prefill + steps", "[gla]") {
  for (GateKind gate : {GateKind::channel, GateKind::scalar, GateKind::retnet, GateKind::none}) {
    const GlaCase c{2, 150, 2, 4, 64, 48, gate, -2.f, 0.f, false};
    const GlaData data(c, 31);
    seqmix::GatedLinearAttentionOptions options;
    options.gate = gate;
    GlaResult full(c);
    seqmix::gated_linear_attention(data.inputs(), full.outputs(), options);

    // Pieces [0,100), [100,137), then 13 single steps, carrying the state in place.
    Tensor<float, 4> state({c.B, c.HV, c.K, c.V});
    seqmix::copy(data.s0.cview(), state.view());
    Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
    auto piece = [&](index_t t0, index_t n) {
      seqmix::GatedLinearAttentionInputs in = data.inputs();
      in.q = in.q.slice(1, t0, n), in.k = in.k.slice(1, t0, n), in.v = in.v.slice(1, t0, n);
      if (in.g.has_value()) in.g = in.g.slice(1, t0, n);
      if (in.g_scalar.has_value()) in.g_scalar = in.g_scalar.slice(1, t0, n);
      in.initial_state = state.cview();
      seqmix::gated_linear_attention(in, {o.view().slice(1, t0, n), state.view()}, options);
    };
    piece(0, 100);
    piece(100, 37);
    for (index_t t = 137; t < c.T; ++t) {
      const seqmix::GatedLinearAttentionStepInputs in = data.step_inputs(t);
      seqmix::gated_linear_attention_step(in, {o.view().select(1, t), state.view()}, options);
    }
    const std::string what = describe(c, 31);
    require_close(o, full.o, 1e-5, what + " o");
    require_close(state, full.state, 1e-5, what + " state");
  }
}

// The step from kRowWalkColumns (256) columns walks the state row by row in blocks of 1024
// columns (recurrent_rows, diagonal_decay/recurrent.hpp): widths on both sides of the threshold
// and of a block, rows 4 KiB apart (1024) and 8 KiB (2048), a scalar tail (1023, 1040 = 1024 + 16
// is one more batch, 255), K odd so 4-row groups leave a remainder row, B = 2 and grouped heads.
// A recurrent prefill of 11 tokens, then 6 steps, against one reference call over all 17.
TEST_CASE("gated_linear_attention: decode steps on wide states match the reference", "[gla]") {
  for (const index_t V : {255, 256, 1023, 1024, 1040, 2048, 2051})
    for (GateKind gate : {GateKind::channel, GateKind::scalar, GateKind::none}) {
      const GlaCase c{2, 17, 1, 2, 9, V, gate, -1.f, 0.f, false};
      const GlaData data(c, 71);
      seqmix::GatedLinearAttentionOptions options;
      options.gate = gate;
      GlaResult ref(c);
      seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs(), options);
      constexpr index_t kPrefill = 11;
      seqmix::GatedLinearAttentionInputs head = data.inputs();
      head.q = head.q.slice(1, 0, kPrefill), head.k = head.k.slice(1, 0, kPrefill), head.v = head.v.slice(1, 0, kPrefill);
      if (head.g.has_value()) head.g = head.g.slice(1, 0, kPrefill);
      if (head.g_scalar.has_value()) head.g_scalar = head.g_scalar.slice(1, 0, kPrefill);
      GlaResult fast(c);
      options.algorithm = LinearAttentionAlgorithm::recurrent;
      seqmix::gated_linear_attention(head, {fast.o.view().slice(1, 0, kPrefill), fast.state.view()}, options);
      for (index_t t = kPrefill; t < c.T; ++t) {
        const seqmix::GatedLinearAttentionStepInputs in = data.step_inputs(t);
        seqmix::gated_linear_attention_step(in, {fast.o.view().select(1, t), fast.state.view()}, options);
      }
      const std::string what = describe(c, 71) + " prefill " + std::to_string(kPrefill) + " + steps";
      require_close(fast.o, ref.o, kTol, what + " o");
      require_close(fast.state, ref.state, kTol, what + " state");
    }
}

// The step's row walk sums each column's readout over the rows in the order the prefill's column
// tiles do, so one step equals a one-token recurrent prefill (which runs the tiles) bit for bit,
// for 4-row groups leaving 1, 2 or 3 rows and with scalar tails.
TEST_CASE("gated_linear_attention: a step on a wide state equals a one-token prefill bit for bit", "[gla]") {
  for (const index_t V : {256, 1023, 1040, 2051})
    for (const index_t K : {9, 10, 11})
      for (GateKind gate : {GateKind::channel, GateKind::scalar, GateKind::none}) {
        const GlaCase c{2, 1, 1, 2, K, V, gate, -1.f, 0.f, false};
        const GlaData data(c, 81);
        seqmix::GatedLinearAttentionOptions options;
        options.gate = gate;
        options.algorithm = LinearAttentionAlgorithm::recurrent;
        GlaResult prefill(c), step(c);
        seqmix::gated_linear_attention(data.inputs(), prefill.outputs(), options);
        const seqmix::GatedLinearAttentionStepInputs in = data.step_inputs(0);
        seqmix::copy(data.s0.view(), step.state.view());
        seqmix::gated_linear_attention_step(in, {step.o.view().select(1, 0), step.state.view()}, options);
        const std::string what = describe(c, 81);
        require_close(step.o, prefill.o, 0.0, what + " o");
        require_close(step.state, prefill.state, 0.0, what + " state");
      }
}

TEST_CASE("gated_linear_attention: strided views give the same result", "[gla]") {
  const GlaCase c{2, 70, 2, 2, 20, 24, GateKind::channel, -1.f, 0.f, false};
  const GlaData data(c, 55);
  GlaResult ref(c);
  seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs());
  // q as every other element of a wider buffer (strided last dim); o into a padded buffer.
  Tensor<float, 4> wide({c.B, c.T, c.H, 2 * c.K});
  seqmix::TensorView<float, 4> q_strided(wide.data(), {c.B, c.T, c.H, c.K},
                                         {c.T * c.H * 2 * c.K, c.H * 2 * c.K, 2 * c.K, 2});
  seqmix::copy(data.q.cview(), q_strided);
  Tensor<float, 4> o_pad({c.B, c.T, c.HV, c.V + 3});
  auto o_view = o_pad.view().slice(3, 1, c.V);
  seqmix::GatedLinearAttentionInputs in = data.inputs();
  in.q = q_strided;
  Tensor<float, 4> state({c.B, c.HV, c.K, c.V});
  for (auto algorithm : {LinearAttentionAlgorithm::chunked, LinearAttentionAlgorithm::recurrent}) {
    seqmix::GatedLinearAttentionOptions options;
    options.algorithm = algorithm;
    seqmix::gated_linear_attention(in, {o_view, state.view()}, options);
    Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
    seqmix::copy(o_view.as_const(), o.view());
    require_close(o, ref.o, kTol, describe(c, 55) + " strided");
  }
}

TEST_CASE("gated_linear_attention: a 65536-token run stays finite and matches the recurrence", "[gla][long]") {
  if (st::small_test_scale()) return;
  const GlaCase c{1, 65536, 1, 1, 16, 16, GateKind::channel, -20.f, 0.f, false};
  GlaData data(c, 77);
  // Mostly slow decays, with stretches of very strong ones and exact zeros (no decay).
  st::fill_log_gate(data.g.view(), 78, -0.02f, 0.f);
  for (index_t t = 0; t < c.T; t += 997)
    for (index_t j = 0; j < 40 && t + j < c.T; ++j) data.g(0, t + j, 0, j % c.K) = -20.f;
  for (index_t t = 500; t < 700; ++t)
    for (index_t kk = 0; kk < c.K; ++kk) data.g(0, t, 0, kk) = 0.f;
  GlaResult ref(c), fast(c);
  seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs());
  seqmix::gated_linear_attention(data.inputs(), fast.outputs());
  REQUIRE(std::all_of(fast.o.begin(), fast.o.end(), [](float x) { return std::isfinite(x); }));
  require_close(fast.o, ref.o, 1e-3, describe(c, 77));
  require_close(fast.state, ref.state, 1e-3, describe(c, 77) + " state");
  seqmix::GatedLinearAttentionOptions options;
  options.algorithm = LinearAttentionAlgorithm::chunked;
  seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options);
  REQUIRE(std::all_of(fast.o.begin(), fast.o.end(), [](float x) { return std::isfinite(x); }));
  require_close(fast.o, ref.o, 1e-3, describe(c, 77) + " chunked");
}

TEST_CASE("gated_linear_attention: bad arguments are rejected before any output is written", "[gla]") {
  const GlaCase c{1, 10, 2, 4, 8, 8, GateKind::channel, -1.f, 0.f, false};
  GlaData data(c, 3);
  GlaResult out(c);
  out.o.fill(42.f);
  auto expect_error = [&](const seqmix::GatedLinearAttentionInputs& in, const seqmix::GatedLinearAttentionOutputs& o, const seqmix::GatedLinearAttentionOptions& opt,
                          const std::string& fragment) {
    try {
      seqmix::gated_linear_attention(in, o, opt);
      FAIL("no error; expected one mentioning " << fragment);
    } catch (const seqmix::ShapeError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
    for (float x : out.o) REQUIRE(x == 42.f);
  };
  seqmix::GatedLinearAttentionOptions options;
  // A positive log-gate.
  data.g(0, 3, 1, 5) = 0.25f;
  expect_error(data.inputs(), out.outputs(), options, "'g' must be a log-space decay <= 0");
  data.g(0, 3, 1, 5) = std::nanf("");
  expect_error(data.inputs(), out.outputs(), options, "'g'");
  data.g(0, 3, 1, 5) = -0.5f;
  // Wrong k shape, bad value-head count, missing gate, wrong output shape.
  Tensor<float, 4> k_bad({1, 10, 2, 9}), v_bad({1, 10, 3, 8}), o_bad({1, 10, 4, 7});
  seqmix::GatedLinearAttentionInputs in = data.inputs();
  in.k = k_bad.view();
  expect_error(in, out.outputs(), options, "'k' must have shape [B,T,H,K] = [1, 10, 2, 8], got [1, 10, 2, 9]");
  in = data.inputs();
  in.v = v_bad.view();
  expect_error(in, out.outputs(), options, "'v'");
  in = data.inputs();
  in.g = {};
  expect_error(in, out.outputs(), options, "'g' is required");
  expect_error(data.inputs(), {o_bad.view(), out.state.view()}, options, "'o' must have shape");
  // A scalar gate given as g_scalar with a positive value.
  Tensor<float, 3> gs({1, 10, 2});
  gs(0, 9, 1) = 1.f;
  in = data.inputs();
  in.g = {};
  in.g_scalar = gs.view();
  options.gate = GateKind::scalar;
  expect_error(in, out.outputs(), options, "'g_scalar' must be a log-space decay <= 0");
  options.gate = GateKind::channel;
  options.chunk_size = 0;
  expect_error(data.inputs(), out.outputs(), options, "chunk_size");
}

TEST_CASE("retention uses RetNet's per-head decay", "[gla]") {
  CHECK(seqmix::retnet_log_decay(0) == Approx(std::log(1.0 - 1.0 / 32)).epsilon(1e-6));
  CHECK(seqmix::retnet_log_decay(3) == Approx(std::log(1.0 - 1.0 / 256)).epsilon(1e-6));
  // retention() == gated_linear_attention with a scalar gate filled with those decays.
  const GlaCase c{1, 90, 3, 3, 16, 16, GateKind::scalar, 0.f, 0.f, false};
  GlaData data(c, 12);
  for (index_t t = 0; t < c.T; ++t)
    for (index_t h = 0; h < c.H; ++h) data.gs(0, t, h) = seqmix::retnet_log_decay(h);
  GlaResult a(c), b(c);
  seqmix::simple_gla(data.inputs(), a.outputs());
  seqmix::GatedLinearAttentionInputs in = data.inputs();
  in.g_scalar = {};
  seqmix::retention(in, b.outputs());
  require_close(b.o, a.o, 1e-5, "retention vs simple_gla");
}

// The recurrent prefill folds the decays of up to kTokenBlock tokens into q and k ("lazy decay
// windows", diagonal_decay/recurrent.hpp) and ends a window where a row's cumulative log-gate
// leaves +-30. Gate patterns that open, extend, close and refuse windows at every position: mild
// gates (windows span whole blocks), constant -7.5 (a window closes after its first group),
// constant -11 (no window opens), spikes of -20 and of -inf (a hard reset) among mild tokens,
// and gates exactly 0; odd K and V (scalar tails), T not a multiple of the block, B > 1 and
// an initial state, against the reference recurrence.
TEST_CASE("gated_linear_attention: recurrent lazy decay windows under strong and extreme gates", "[gla]") {
  const GlaCase c{2, 203, 2, 2, 37, 45, GateKind::channel, -0.1f, 0.f, false};
  auto pattern = [](int kind, index_t t, index_t col) -> float {
    switch (kind) {
      case 0: return -0.01f * static_cast<float>((t + col) % 7);
      case 1: return -7.5f;
      case 2: return -11.f;
      case 3: return (t % 13 == 5 && col % 3 == 0) ? -20.f : -0.05f;
      case 4: return (t % 11 == 6 && col % 5 == 1) ? -INFINITY : -0.02f;
      default: return 0.f;
    }
  };
  for (int kind = 0; kind < 6; ++kind) {
    GlaData data(c, 71 + kind);
    for (index_t b = 0; b < c.B; ++b)
      for (index_t t = 0; t < c.T; ++t)
        for (index_t h = 0; h < c.H; ++h)
          for (index_t col = 0; col < c.K; ++col) data.g(b, t, h, col) = pattern(kind, t + 3 * h + 5 * b, col);
    seqmix::GatedLinearAttentionOptions options;
    GlaResult ref(c), fast(c);
    seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs(), options);
    options.algorithm = LinearAttentionAlgorithm::recurrent;
    seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options);
    const std::string what = "gate pattern " + std::to_string(kind);
    require_close(fast.o, ref.o, kTol, what + " o");
    require_close(fast.state, ref.state, kTol, what + " final_state");
  }
}

// Scalar gates share the windows (one product per token, copied to every row); a long mild run
// keeps windows open across whole blocks at K = V = 64 (the 2-batch column tiles only).
TEST_CASE("gated_linear_attention: recurrent lazy decay windows with scalar gates", "[gla]") {
  for (float lo : {-1e-3f, -9.f}) {
    const GlaCase c{1, 517, 2, 2, 64, 64, GateKind::scalar, lo, 0.f, false};
    const GlaData data(c, 91);
    seqmix::GatedLinearAttentionOptions options;
    options.gate = GateKind::scalar;
    GlaResult ref(c), fast(c);
    seqmix::reference::gated_linear_attention(data.inputs(), ref.outputs(), options);
    options.algorithm = LinearAttentionAlgorithm::recurrent;
    seqmix::gated_linear_attention(data.inputs(), fast.outputs(), options);
    require_close(fast.o, ref.o, kTol, describe(c, 91) + " o");
    require_close(fast.state, ref.state, kTol, describe(c, 91) + " final_state");
  }
}

// The automatic choice (diagonal_decay/driver.hpp, choose_algorithm): each branch at the state
// sizes the linear_attention README's table states, at and just below both thresholds, and the
// value columns task_columns hands it when a head splits over two threads.
TEST_CASE("choose_algorithm: each branch is picked where the README states it", "[gla]") {
  namespace la = seqmix::detail::la;
  constexpr auto chunked = LinearAttentionAlgorithm::chunked, recurrent = LinearAttentionAlgorithm::recurrent;
  const auto choose = [](index_t T, index_t Kf, index_t V, bool dot) {
    return la::choose_algorithm(GateKind::channel, T, Kf, V, 64, dot);
  };
  // Shorter than one chunk: token by token whatever the state.
  CHECK(choose(63, 2048, 2048, false) == recurrent);
  CHECK(choose(63, 2048, 2048, true) == recurrent);
  // fp32 products: chunked from 768 x 768 floats (K = V = 768 and 1024), recurrent below (K = V =
  // 512, and the 2^19 floats of half a K = V = 1024 head).
  CHECK(choose(64, 768, 768, false) == chunked);
  CHECK(choose(64, 1024, 1024, false) == chunked);
  CHECK(choose(8192, 768, 767, false) == recurrent);
  CHECK(choose(8192, 512, 1024, false) == recurrent);
  CHECK(choose(8192, 512, 512, false) == recurrent);
  CHECK(choose(8192, 64, 64, false) == recurrent);
  // bf16 dot products: chunked from 2^18 floats where the target has them, else the fp32 rule.
  const LinearAttentionAlgorithm dot_large = seqmix::detail::kNativeBf16Dot ? chunked : recurrent;
  CHECK(choose(512, 512, 512, true) == dot_large);
  CHECK(choose(512, 256, 1024, true) == dot_large);
  CHECK(choose(512, 256, 1023, true) == recurrent);
  CHECK(choose(8192, 256, 256, true) == recurrent);
  CHECK(choose(512, 768, 768, true) == chunked);
  // The other gate kinds take the same thresholds.
  for (GateKind gate : {GateKind::scalar, GateKind::retnet, GateKind::none}) {
    CHECK(la::choose_algorithm(gate, 512, 768, 768, 64, false) == chunked);
    CHECK(la::choose_algorithm(gate, 512, 512, 512, 64, false) == recurrent);
  }
  // One head of V = 1024 on two threads splits into two tasks of 512 columns, which the rule
  // judges (1024 x 512 = 2^19 floats: recurrent in fp32, 1.12-1.17x faster than chunked on two
  // threads, Zen 4); two heads keep whole heads.
  const auto seqs = seqmix::SequenceMap::make("test", seqmix::SequenceBatch{}, 1, 512, false, 1);
  CHECK(la::task_columns(seqs, 1, 1024, st::two_thread_pool()) == 512);
  CHECK(la::task_columns(seqs, 2, 1024, st::two_thread_pool()) == 1024);
  CHECK(la::task_columns(seqs, 1, 1024, seqmix::serial_executor()) == 1024);
  CHECK(choose(512, 1024, la::task_columns(seqs, 1, 1024, st::two_thread_pool()), false) == recurrent);
}
