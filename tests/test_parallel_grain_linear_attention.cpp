// The diagonal-decay prefills (gated_linear_attention, rwkv6, linear_attention) on an executor
// that claims 64 threads: with fewer sequences x heads than threads each head splits into blocks
// of value columns (driver.hpp, split_columns). Outputs, final states and normalizers must match
// the reference, and the prefill's run must get the intended number of tasks, at ragged shapes:
// V odd or below two blocks, T off the chunk grid, packed batches, normalize, initial states.
#include <catch2/catch.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateKind;
using seqmix::index_t;
using seqmix::LinearAttentionAlgorithm;
using seqmix::Tensor;
namespace st = seqmix::testing;

enum class Op { gla, rwkv6, linear_attention };

struct SplitCase {
  Op op;
  index_t B, T, H, K, V;
  std::vector<std::int64_t> cu_seqlens;  // packed sequences (B = 1, T = total) when given
  LinearAttentionAlgorithm algorithm;
  index_t tasks;  // the prefill's tasks at 64 claimed threads: sequences x H x column blocks
  GateKind gate = GateKind::channel;  // gla only
  bool normalize = true;              // linear_attention only (elu1 features either way)
};

std::string describe(const SplitCase& c) {
  static const char* ops[] = {"gla", "rwkv6", "linear_attention"};
  static const char* algorithms[] = {"automatic", "chunked", "recurrent"};
  std::ostringstream s;
  s << ops[static_cast<int>(c.op)] << " B=" << c.B << " T=" << c.T << " H=" << c.H << " K=" << c.K << " V=" << c.V
    << " sequences=" << (c.cu_seqlens.empty() ? c.B : static_cast<index_t>(c.cu_seqlens.size()) - 1)
    << " algorithm=" << algorithms[static_cast<int>(c.algorithm)] << " gate=" << static_cast<int>(c.gate)
    << " normalize=" << c.normalize;
  return s.str();
}

// Inputs of one case (initial states included) and the outputs of one call.
struct SplitData {
  index_t N;  // sequences: states are [N, H, K, V]
  Tensor<float, 4> q, k, v, g, s0;
  Tensor<float, 3> gs, z0;
  Tensor<float, 2> u;
  SplitData(const SplitCase& c, std::uint64_t seed)
      : N(c.cu_seqlens.empty() ? c.B : static_cast<index_t>(c.cu_seqlens.size()) - 1),
        q(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.H, c.V}, seed + 3)),
        g({c.B, c.T, c.H, c.K}),
        s0(st::random_tensor<4>({N, c.H, c.K, c.V}, seed + 5)),
        gs({c.B, c.T, c.H}),
        z0({N, c.H, c.K}),
        u(st::random_tensor<2>({c.H, c.K}, seed + 6)) {
    st::fill_log_gate(g.view(), seed + 4, -1.f, 0.f);
    st::fill_log_gate(gs.view(), seed + 7, -0.5f, 0.f);
    for (index_t i = 0; i < z0.numel(); ++i) z0.data()[i] = 0.5f + 0.01f * static_cast<float>(i % 7);  // z > 0
  }
};

struct SplitResult {
  Tensor<float, 4> o, state;
  Tensor<float, 3> z;
  SplitResult(const SplitCase& c, index_t N) : o({c.B, c.T, c.H, c.V}), state({N, c.H, c.K, c.V}), z({N, c.H, c.K}) {}
};

// One call of the case's op: the reference, or the fast form on `executor`.
void run(const SplitCase& c, const SplitData& d, SplitResult& r, bool reference, const seqmix::Executor& executor) {
  seqmix::SequenceBatch batch;
  if (!c.cu_seqlens.empty()) batch.cu_seqlens = c.cu_seqlens;
  switch (c.op) {
    case Op::gla: {
      seqmix::GatedLinearAttentionInputs in;
      in.q = d.q.view(), in.k = d.k.view(), in.v = d.v.view(), in.initial_state = d.s0.view(), in.batch = batch;
      if (c.gate == GateKind::channel) in.g = d.g.view();
      if (c.gate == GateKind::scalar) in.g_scalar = d.gs.view();
      seqmix::GatedLinearAttentionOptions options;
      options.gate = c.gate, options.algorithm = c.algorithm, options.chunk_size = 16;
      if (reference)
        seqmix::reference::gated_linear_attention(in, {r.o.view(), r.state.view()}, options);
      else
        seqmix::gated_linear_attention(in, {r.o.view(), r.state.view()}, options, executor);
      return;
    }
    case Op::rwkv6: {
      const seqmix::Rwkv6Inputs in{d.q.view(), d.k.view(), d.v.view(), d.g.view(), d.u.view(), d.s0.view(), batch};
      seqmix::Rwkv6Options options;
      options.algorithm = c.algorithm, options.chunk_size = 16;
      if (reference)
        seqmix::reference::rwkv6(in, {r.o.view(), r.state.view()}, options);
      else
        seqmix::rwkv6(in, {r.o.view(), r.state.view()}, options, executor);
      return;
    }
    case Op::linear_attention: {
      seqmix::LinearAttentionInputs in{d.q.view(), d.k.view(), d.v.view(), d.s0.view(), {}, batch};
      if (c.normalize) in.initial_normalizer = d.z0.view();
      seqmix::LinearAttentionOptions options;
      options.feature_map = seqmix::FeatureMap::elu1, options.normalize = c.normalize;  // z > 0
      options.algorithm = c.algorithm, options.chunk_size = 16;
      seqmix::LinearAttentionOutputs out{r.o.view(), r.state.view(), {}};
      if (c.normalize) out.final_normalizer = r.z.view();
      if (reference)
        seqmix::reference::linear_attention(in, out, options);
      else
        seqmix::linear_attention(in, out, options, executor);
      return;
    }
  }
}

// chunk 16 throughout; T = 77 leaves a chunk of 13. Blocks are multiples of 16 columns and
// at most V / 16 of them, as even as whole quanta allow: V 37 -> 16 + 21, V 40 -> 16 + 24,
// V 33 -> 16 + 17, V 48 -> 3 x 16, V 20 -> one.
std::vector<SplitCase> split_table() {
  using A = LinearAttentionAlgorithm;
  return {
      {Op::gla, 1, 77, 2, 16, 37, {}, A::chunked, 2 * 2},
      {Op::gla, 1, 77, 2, 16, 37, {}, A::recurrent, 2 * 2},
      {Op::gla, 1, 77, 2, 32, 64, {}, A::recurrent, 2 * 4},
      {Op::gla, 1, 45, 1, 128, 128, {}, A::automatic, 8},  // the blocks' state picks recurrent
      {Op::gla, 2, 70, 3, 16, 48, {}, A::chunked, 2 * 3 * 3, GateKind::scalar},
      {Op::gla, 1, 77, 2, 16, 48, {}, A::chunked, 2 * 3, GateKind::none},
      {Op::gla, 1, 77, 2, 16, 20, {}, A::chunked, 2},  // too narrow to split
      {Op::gla, 1, 120, 2, 16, 64, {0, 50, 53, 120}, A::chunked, 3 * 2 * 4},
      {Op::gla, 1, 120, 2, 16, 64, {0, 50, 53, 120}, A::recurrent, 3 * 2 * 4},
      {Op::rwkv6, 1, 77, 2, 16, 40, {}, A::chunked, 2 * 2},
      {Op::rwkv6, 1, 77, 2, 16, 40, {}, A::recurrent, 2 * 2},
      {Op::linear_attention, 1, 77, 2, 16, 33, {}, A::chunked, 2 * 2},
      {Op::linear_attention, 1, 77, 2, 16, 33, {}, A::recurrent, 2 * 2},
      {Op::linear_attention, 1, 120, 2, 16, 64, {0, 70, 71, 120}, A::chunked, 3 * 2 * 4},
  };
}

constexpr double kTol = 2e-4;

// Runs the fast form on `executor` and requires its outputs and states close to the reference's.
void require_matches_reference(const SplitCase& c, const SplitData& data, const SplitResult& ref,
                               const seqmix::Executor& executor, const std::string& what) {
  SplitResult fast(c, data.N);
  run(c, data, fast, false, executor);
  st::require_close((what + " o").c_str(), fast.o.view(), ref.o.view(), kTol);
  st::require_close((what + " final_state").c_str(), fast.state.view(), ref.state.view(), kTol);
  if (c.op == Op::linear_attention && c.normalize)
    st::require_close((what + " final_normalizer").c_str(), fast.z.view(), ref.z.view(), kTol);
}

}  // namespace

TEST_CASE("diagonal-decay prefills split value columns at 64 claimed threads and match the reference",
          "[gla][rwkv6][linear_attention][parallel_grain]") {
  std::uint64_t seed = 900;
  for (const SplitCase& c : split_table()) {
    seed += 10;
    const SplitData data(c, seed);
    SplitResult ref(c, data.N);
    run(c, data, ref, true, seqmix::serial_executor());
    // 3 and 63: odd claimed counts (63 splits as 64 does: every case's blocks are capped by V / 16;
    // 3 splits a lone sequence's heads in ceil(3 / heads) blocks or runs whole ones).
    for (const int threads : {2, 3, 63, 64}) {
      st::CountingExecutor executor(threads);
      const std::string what = describe(c) + " claimed threads=" + std::to_string(threads);
      INFO(what);
      require_matches_reference(c, data, ref, executor, what);
      REQUIRE(!executor.runs().empty());
      if (threads == 3) continue;  // outputs only: the task count depends on the form's grouping
      // At 2 threads: tasks of ceil(H / 2) whole heads of one sequence, as before the split; a
      // single head (one sequence) still splits in two.
      const index_t group = (c.H + 1) / 2;
      const index_t at_two = data.N * c.H < 2 ? 2 : data.N * ((c.H + group - 1) / group);
      REQUIRE(executor.runs().back().tasks == (threads == 2 ? at_two : c.tasks));
    }
  }
}

namespace {

// A recurrent prefill split in time (driver.hpp, time_split): at 64 claimed threads, `first`
// tasks of (item, segment) then `second` of (item, later segment, part); first = 0: no split (the
// prefill's last run has `second` tasks).
struct TimeCase {
  SplitCase c;
  index_t first, second;
};

// Segments are whole multiples of 16 tokens, at least 512 tokens each for the longest sequence:
// T 1100 -> 560 + 540, T 1600 with one item -> 544 + 544 + 512; parts of a later segment fill the
// threads, at most one per 64 tokens. The packed case's sequences (1300, 1, 699 tokens) split in
// 2, 1 and 2 segments (656 + 644, 352 + 347).
std::vector<TimeCase> time_table() {
  using A = LinearAttentionAlgorithm;
  return {
      {{Op::gla, 1, 1100, 2, 16, 37, {}, A::recurrent, 0}, 2 * 2, 2 * 8},
      {{Op::gla, 2, 1030, 1, 16, 48, {}, A::automatic, 0, GateKind::scalar}, 2 * 2, 2 * 8},
      {{Op::gla, 1, 1600, 1, 32, 64, {}, A::recurrent, 0, GateKind::none}, 3, 2 * 8},
      {{Op::gla, 1, 2000, 2, 16, 32, {0, 1300, 1301, 2000}, A::recurrent, 0}, 6 * 2, 6 * 10},
      {{Op::rwkv6, 1, 1100, 2, 16, 40, {}, A::recurrent, 0}, 2 * 2, 2 * 8},
      {{Op::linear_attention, 1, 1100, 2, 16, 33, {}, A::recurrent, 0, GateKind::channel, false}, 2 * 2, 2 * 8},
      // normalize divides o by q . z, which the correction would change: value-column blocks.
      {{Op::linear_attention, 1, 1100, 2, 16, 33, {}, A::recurrent, 0}, 0, 2 * 2},
      // Segments would be shorter than 512 tokens: value-column blocks.
      {{Op::gla, 1, 1000, 2, 16, 32, {}, A::recurrent, 0}, 0, 2 * 2},
  };
}

}  // namespace

TEST_CASE("diagonal-decay recurrent prefills split long heads in time above two threads and match the reference",
          "[gla][rwkv6][linear_attention][parallel_grain]") {
  std::uint64_t seed = 2900;
  for (const TimeCase& t : time_table()) {
    const SplitCase& c = t.c;
    seed += 10;
    const SplitData data(c, seed);
    SplitResult ref(c, data.N);
    run(c, data, ref, true, seqmix::serial_executor());
    // 3 and 7: odd claimed counts (one item splits in 3 segments at 3 threads, two in 2); 48 and
    // 63 split as 64 does here, the segments capped by T / 512.
    for (const int threads : {2, 3, 7, 48, 63, 64}) {
      st::CountingExecutor executor(threads);
      const std::string what = describe(c) + " claimed threads=" + std::to_string(threads);
      INFO(what);
      require_matches_reference(c, data, ref, executor, what);
      const auto& runs = executor.runs();
      REQUIRE(!runs.empty());
      if (threads == 2) {  // unchanged: tasks of ceil(H / 2) whole heads, a lone head in two blocks
        const index_t group = (c.H + 1) / 2;
        REQUIRE(runs.back().tasks == (data.N * c.H < 2 ? 2 : data.N * ((c.H + group - 1) / group)));
      }
      if (threads != 64) continue;
      REQUIRE(runs.back().tasks == t.second);
      if (t.first == 0) continue;
      REQUIRE(runs.size() >= 2);
      REQUIRE(runs[runs.size() - 2].tasks == t.first);
    }
  }
}

TEST_CASE("the time split runs in the memory it keeps, and linear_attention_release_thread_scratch frees it",
          "[gla][parallel_grain]") {
  using seqmix::detail::la::SegmentCorrectionKeep;
  using seqmix::detail::la::SegmentStatesKeep;
  const SplitCase c{Op::gla, 1, 1100, 2, 16, 32, {}, LinearAttentionAlgorithm::recurrent, 0};
  const SplitData data(c, 3100);
  SplitResult ref(c, data.N);
  run(c, data, ref, true, seqmix::serial_executor());
  // What each round saw, asserted after the join: Catch2's assertions are not for other threads.
  struct Round {
    SplitResult fast;
    bool same_memory = false, states_kept = false, correction_kept = false;
    bool states_freed = false, correction_freed = false;
  };
  std::vector<Round> rounds;
  std::thread([&] {  // a thread of its own: nothing kept before, nothing left for the other cases
    const st::CountingExecutor executor(64);  // runs every task on this thread
    for (int round = 0; round < 2; ++round) {
      Round r{SplitResult(c, data.N)};
      run(c, data, r.fast, false, executor);
      const float* kept = SegmentStatesKeep::slot().local.data();
      run(c, data, r.fast, false, executor);
      r.same_memory = SegmentStatesKeep::slot().local.data() == kept;  // the same memory, not a new one
      r.states_kept = SegmentStatesKeep::slot().bytes() > 0;
      r.correction_kept = SegmentCorrectionKeep::slot().bytes() > 0;
      seqmix::linear_attention_release_thread_scratch();
      r.states_freed = SegmentStatesKeep::slot().bytes() == 0;
      r.correction_freed = SegmentCorrectionKeep::slot().bytes() == 0;
      rounds.push_back(std::move(r));
    }
  }).join();
  REQUIRE(rounds.size() == 2);
  for (const Round& r : rounds) {
    st::require_close("o", r.fast.o.view(), ref.o.view(), kTol);
    CHECK(r.same_memory);
    CHECK(r.states_kept);
    CHECK(r.correction_kept);
    CHECK(r.states_freed);
    CHECK(r.correction_freed);
  }
}
