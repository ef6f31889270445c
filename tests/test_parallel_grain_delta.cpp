// The delta-rule prefills (gated_delta_rule with a scalar gate, KDA's channel gate, rwkv7) split
// each (sequence, head) into blocks of value columns when there are fewer of them than threads
// (delta_update::for_each_item); from 3 blocks on, the chunked form's V-independent chunk factors
// are computed once in a first pass (delta_update::run_delta_items). An executor that claims 64 threads (and runs serially) must
// get the intended task count and outputs, final states and token states equal to the
// reference's, at ragged shapes: V not a multiple of the block, T not a multiple of the chunk,
// packed ragged sequences, grouped heads, initial states; and, when the items fill the threads,
// tasks of several heads of one sequence that advance chunk by chunk together.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/linear_attention/value_columns.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaAlgorithm;
using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr double kTol = 2e-4;  // fp32 fast forms against the double reference, as the family's tests

struct GdrSplitCase {
  index_t B, T, HK, HV, K, V;
  DeltaGate gate;
  DeltaAlgorithm algorithm;
  std::vector<std::int32_t> cu_seqlens;  // empty: B dense rows; else B = 1 and these sequences
  bool token_states;
  int threads;
  index_t tasks;    // the prefill's (last) run: sequences x HV x value blocks
  index_t factors;  // the run before it, the chunk factors' pass: chunks of the chunked items; 0: none
};

std::string describe(const GdrSplitCase& c) {
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " HK=" << c.HK << " HV=" << c.HV << " K=" << c.K << " V=" << c.V
    << " gate=" << (c.gate == DeltaGate::scalar ? "scalar" : "channel") << " algorithm=" << static_cast<int>(c.algorithm)
    << " sequences=" << (c.cu_seqlens.empty() ? c.B : static_cast<index_t>(c.cu_seqlens.size()) - 1)
    << " threads=" << c.threads;
  return s.str();
}

// The run of the prefill itself: the last one (the gate check may run before it).
index_t prefill_tasks(const st::CountingExecutor& ex) { return ex.runs().empty() ? 0 : ex.runs().back().tasks; }

// The run before it: the first pass over (item, chunk) of delta_update::run_delta_items when the
// items split into value blocks and some run the fp32 chunked form; 0 when it is not there.
index_t factor_tasks(const st::CountingExecutor& ex, index_t expected) {
  const auto& runs = ex.runs();
  if (expected == 0 || runs.size() < 2) return 0;
  return runs[runs.size() - 2].tasks;
}

// Random inputs of a gated delta rule (or KDA: the channel gate) prefill: unit-norm q and k,
// beta in [0, 1], log-gates in [gate_lo, 0], an initial state per sequence.
struct GdrProblem {
  Tensor<float, 4> q, k, v, g, s0;
  Tensor<float, 3> beta, gs;
  seqmix::GatedDeltaRuleInputs in;
  index_t N;  // sequences

  GdrProblem(index_t B, index_t T, index_t HK, index_t HV, index_t K, index_t V, DeltaGate gate,
             const std::vector<std::int32_t>& cu_seqlens, std::uint64_t seed, float gate_lo)
      : q(st::random_tensor<4>({B, T, HK, K}, seed + 1)), k(st::random_tensor<4>({B, T, HK, K}, seed + 2)),
        v(st::random_tensor<4>({B, T, HV, V}, seed + 3)), beta(st::random_tensor<3>({B, T, HV}, seed + 4, 0.f, 1.f)),
        N(cu_seqlens.empty() ? B : static_cast<index_t>(cu_seqlens.size()) - 1) {
    st::normalize_rows(q);
    st::normalize_rows(k);
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view();
    if (gate == DeltaGate::channel) {
      g = Tensor<float, 4>({B, T, HV, K});
      st::fill_log_gate(g.view(), seed + 5, gate_lo, 0.f);
      in.g = g.view();
    } else {
      gs = Tensor<float, 3>({B, T, HV});
      st::fill_log_gate(gs.view(), seed + 5, gate_lo, 0.f);
      in.g_scalar = gs.view();
    }
    s0 = st::random_tensor<4>({N, HV, K, V}, seed + 6, -0.5f, 0.5f);
    in.initial_state = s0.view();
    if (!cu_seqlens.empty()) in.batch.cu_seqlens = cu_seqlens;
  }
};

}  // namespace

TEST_CASE("parallel grain delta: value-column splits tile V in even whole quanta", "[parallel_grain]") {
  // split_value_columns for every V up to 300, every item count up to 70 on 64 threads, and the
  // quanta and minimum widths of both callers (delta rules: vector width and 32; diagonal decay:
  // 16 and 16): the blocks are contiguous and cover V, all but the last are whole quanta, none
  // is narrower than min_width, and widths differ by at most a quantum plus the ragged part.
  int splits = 0;
  for (const auto& [quantum, min_width] : std::vector<std::pair<index_t, index_t>>{{4, 32}, {8, 32}, {16, 32}, {16, 16}})
    for (index_t items = 1; items <= 70; ++items)
      for (index_t V = 1; V <= 300; ++V, ++splits) {
        const seqmix::detail::ValueSplit split = seqmix::detail::split_value_columns(items, V, 64, quantum, min_width);
        bool ok = split.blocks >= 1;
        if (split.blocks > 1) ok = ok && split.blocks <= (64 + items - 1) / items && split.blocks <= V / min_width;
        index_t next = 0, narrowest = V, widest = 0;
        for (index_t i = 0; i < split.blocks; ++i) {
          const seqmix::detail::ValueColumns cols = split.block(i);
          ok = ok && cols.begin == next && (i + 1 == split.blocks || cols.width % quantum == 0);
          ok = ok && (split.blocks == 1 || cols.width >= min_width);
          narrowest = std::min(narrowest, cols.width), widest = std::max(widest, cols.width);
          next = cols.begin + cols.width;
        }
        ok = ok && next == V && split.width == widest && widest - narrowest < 2 * quantum;
        if (!ok)  // one assertion per failing split, not ~12 per split (84000 of them)
          FAIL_CHECK("quantum " << quantum << " min_width " << min_width << " items " << items << " V " << V
                                << ": " << split.blocks << " blocks, widest " << widest << ", narrowest " << narrowest);
      }
  CHECK(splits == 4 * 70 * 300);
}

TEST_CASE("parallel grain delta: value-column blocks of gated_delta_rule and KDA match the reference",
          "[parallel_grain][gated_delta_rule]") {
  // The split (linear_attention/value_columns.hpp): about ceil(threads / items) blocks but at
  // most floor(V / 32) (delta_update::kMinValueBlock), in whole vectors of simd::kWidth columns
  // as even as they can be, the last one ragged; whole when V < 64. So with 6 items on 64
  // threads V = 75 gives 2 blocks (32 + 43 on AVX-512, 36 + 39 on SSE2) and V = 97 gives 3
  // (32 + 32 + 33 on both: the count does not depend on the vector width here); V = 33 stays
  // whole; with 32 items and 64 threads V = 128 gives 2 blocks of 64.
  const std::vector<GdrSplitCase> cases = {
      {2, 150, 1, 3, 64, 75, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, false, 64, 2 * 3 * 2, 0},
      {2, 150, 1, 3, 64, 75, DeltaGate::scalar, DeltaAlgorithm::recurrent, {}, true, 64, 2 * 3 * 2, 0},
      {1, 205, 1, 2, 32, 97, DeltaGate::channel, DeltaAlgorithm::automatic, {0, 70, 75, 205}, false, 64, 3 * 2 * 3, 0},
      {1, 205, 2, 4, 48, 33, DeltaGate::scalar, DeltaAlgorithm::automatic, {0, 130, 135, 205}, false, 64, 3 * 4 * 1, 0},
      {1, 70, 2, 32, 16, 128, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, false, 64, 32 * 2, 0},
      {1, 70, 2, 32, 16, 128, DeltaGate::channel, DeltaAlgorithm::automatic, {}, false, 64, 32 * 2, 0},
      {2, 70, 1, 2, 16, 80, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, false, 2, 2 * 2, 0},  // items = threads
      // From 3 blocks on the chunk factors are shared (delta_update::kShareFactorsMinBlocks; with
      // 2 blocks above, not), one record per (item, chunk) of the default 32 tokens: KDA's
      // chunked form over packed sequences of 130, 70 and 5 tokens (5 + 3 + 1 chunks per head);
      // the gdn-h4 grain, 4 heads of 5 chunks (4 x 32 + 22 tokens) in 4 blocks each; a 1-token
      // sequence that stays recurrent beside chunked ones (5 + 3 chunks per head). K = 128: the
      // automatic choice (delta_update::choose_delta_algorithm) takes the chunked form for the
      // 70 and more tokens and the recurrent kernel for 1 token at 4, 8 and 16 floats per vector.
      {1, 205, 1, 2, 32, 97, DeltaGate::channel, DeltaAlgorithm::chunked, {0, 70, 75, 205}, false, 64, 3 * 2 * 3, 9 * 2},
      {1, 150, 4, 4, 128, 128, DeltaGate::scalar, DeltaAlgorithm::automatic, {}, false, 64, 4 * 4, 4 * 5},
      {1, 201, 2, 2, 128, 96, DeltaGate::scalar, DeltaAlgorithm::automatic, {0, 130, 131, 201}, false, 64, 3 * 2 * 3, 8 * 2},
      // Items that fill the threads run in tasks of ceil(HV / threads) heads of one sequence
      // advancing chunk by chunk together (delta_update::run_item_groups), at most as many as
      // keep their states in 512 KB: HV = 5 on 2 threads, tasks of 3 and 2 heads; on 4 threads
      // tasks of 2, 2 and 1 (B = 2); one thread, all heads of each packed sequence in one task
      // (the chunked form asked for: the automatic choice depends on the vector width here);
      // K = V = 128, 8 heads at most (8 + 2); KDA's chunked form;
      // token states (recurrent: one head per task as before).
      {1, 150, 1, 5, 32, 40, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, false, 2, 2, 0},
      {2, 100, 1, 5, 32, 40, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, false, 4, 2 * 3, 0},
      {1, 205, 2, 4, 48, 33, DeltaGate::scalar, DeltaAlgorithm::chunked, {0, 130, 135, 205}, false, 1, 3, 0},
      {1, 70, 1, 10, 128, 128, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, false, 1, 2, 0},
      {1, 205, 1, 3, 32, 40, DeltaGate::channel, DeltaAlgorithm::chunked, {0, 70, 75, 205}, false, 2, 3 * 2, 0},
      {2, 150, 1, 3, 64, 75, DeltaGate::scalar, DeltaAlgorithm::chunked, {}, true, 1, 2 * 3, 0},
  };
  std::uint64_t seed = 900;
  for (const GdrSplitCase& c : cases) {
    seed += 10;
    const std::string what = describe(c);
    INFO(what);
    const GdrProblem problem(c.B, c.T, c.HK, c.HV, c.K, c.V, c.gate, c.cu_seqlens, seed, -1.f);
    const seqmix::GatedDeltaRuleInputs& in = problem.in;
    const index_t N = problem.N;
    seqmix::GatedDeltaRuleOptions options;
    options.gate = c.gate;
    options.algorithm = c.algorithm;

    struct Result {
      Tensor<float, 4> o, state;
      Tensor<float, 5> tokens;
    };
    const auto run = [&](bool reference, const seqmix::Executor& ex) {
      Result r{Tensor<float, 4>({c.B, c.T, c.HV, c.V}), Tensor<float, 4>({N, c.HV, c.K, c.V}), Tensor<float, 5>()};
      seqmix::GatedDeltaRuleOutputs out{r.o.view(), r.state.view()};
      if (c.token_states) {
        r.tokens = Tensor<float, 5>({c.B, c.T, c.HV, c.K, c.V});
        out.token_states = r.tokens.view();
      }
      if (reference)
        seqmix::reference::gated_delta_rule(in, out, options);
      else
        seqmix::gated_delta_rule(in, out, options, ex);
      return r;
    };
    const Result ref = run(true, seqmix::serial_executor());
    st::CountingExecutor ex(c.threads);
    const Result fast = run(false, ex);
    CHECK(prefill_tasks(ex) == c.tasks);
    CHECK(factor_tasks(ex, c.factors) == c.factors);
    st::require_close("o", fast.o.view(), ref.o.view(), kTol);
    st::require_close("final_state", fast.state.view(), ref.state.view(), kTol);
    if (c.token_states) st::require_close("token_states", fast.tokens.view(), ref.tokens.view(), kTol);
  }
}

TEST_CASE("parallel grain delta: the chunk-parallel form of gated_delta_rule and KDA matches the reference",
          "[parallel_grain][gated_delta_rule]") {
  // When items x value blocks leave most threads idle (delta_update::chunk_segments), each
  // chunked item's chunks are cut into segments of whole chunks of at least kMinSegmentTokens
  // (256) tokens: 8 chunks of the default 32, 4 of 64, 1 of 300 (min_segment_chunks), equal ones
  // unless the first segment runs in narrow value blocks (16 columns, where they are twice the
  // blocks and fit beside a later segment's tasks), when it is longer by 1 / 0.7 (plan_segments):
  // a factor pass over (item, chunk), pass A over (item, segment, block), longest segments
  // first, and pass C over (item, part of the chunks after the first segment, value block). Ragged T
  // (not a multiple of chunk x segments), B > 1, initial states; one packed sequence too short to
  // split beside one that splits.
  struct Case {
    index_t B, T, H, K, V;
    DeltaGate gate;
    std::vector<std::int32_t> cu_seqlens;
    std::vector<index_t> runs;  // task counts of the prefill's runs, in order
    index_t chunk = 32;         // options.chunk_size (32: the default)
  };
  // Pass C cuts the chunks after each item's first segment into parts (plan_parts): at most
  // 64 / (split items x value blocks), as few as give the least maximum cost, a chunk's
  // correction costing 1 and an advance of a state through a segment K / chunk.
  // B=2 H=2 K=64 V=96: 4 items of 3 value blocks (32 columns), 6 narrow ones and 2 key blocks;
  // 16 threads per item hold 6 narrow + 2 x (3 + 2) tasks; 741 tokens are 24 chunks, whose two
  // later segments of 24 x 1 / (1 / 0.7 + 2) = 7 chunks would be under 8: equal segments
  // (8 + 8 + 8, the last ragged), the first in blocks of 32. Pass A: 3 + 2 x (3 + 2) = 13 tasks
  // per item; pass C: 3 blocks x 4 parts of the 5 allowed (64 / 12; advance 2: chunks 8-13,
  // 14-17 with the advance into the third segment, 18-21 after it, 22-23 with the final state: 6
  // each). The same at chunk 64 (12 chunks, 4 + 4 + 4; advance 1): the same segments and parts,
  // half the factor tasks; at chunk 300 (3 chunks, segments of at least 1): 1 + 1 + 1 with the
  // first in narrow blocks, pass A 6 + 2 x 5 per item, pass C 2 parts, one chunk each.
  // The gdn-h4 grain (H=4 K=V=128, 4 blocks of 32 each side, 8 narrow ones, advance 4): 16
  // threads per item, 8 narrow + 8 tasks; 19 chunks: 11 + 8, pass C 4 blocks x 3 parts (5, 2,
  // 1 chunk and the final state: 5 each); 32 chunks (1000 tokens, the last ragged): 19 + 13,
  // pass C 4 blocks x 4 parts (5, 5, 2, 1 chunk and the final state).
  // Packed 600 + 200 tokens on 2 heads: 4 items of 3 blocks; the long sequence's heads split in
  // 2 segments (19 chunks, 3 segments would be 6 chunks, under 256 tokens, each), the short
  // one's (7 chunks) not; pass C 3 blocks x 4 parts (chunks 9-11, 12-14, 15-17 and 18 with the
  // final state, advance 2: 3 each) of the 10 allowed (64 / 6).
  const std::vector<Case> cases = {
      {2, 741, 2, 64, 96, DeltaGate::scalar, {}, {4 * 24, 4 * 13, 4 * 3 * 4}},
      {2, 741, 2, 64, 96, DeltaGate::scalar, {}, {4 * 12, 4 * 13, 4 * 3 * 4}, 64},
      {2, 741, 2, 64, 96, DeltaGate::scalar, {}, {4 * 3, 4 * 16, 4 * 3 * 2}, 300},
      {1, 600, 4, 128, 128, DeltaGate::scalar, {}, {4 * 19, 4 * 16, 4 * 4 * 3}},
      {1, 1000, 4, 128, 128, DeltaGate::scalar, {}, {4 * 32, 4 * 16, 4 * 4 * 4}},
      {1, 800, 2, 64, 96, DeltaGate::channel, {0, 600, 800}, {2 * 19 + 2 * 7, 2 * 8 + 2 * 3, 2 * 3 * 4}},
  };
  std::uint64_t seed = 1500;
  for (const Case& c : cases) {
    seed += 10;
    std::ostringstream what;
    what << "B=" << c.B << " T=" << c.T << " H=" << c.H << " K=" << c.K << " V=" << c.V
         << " gate=" << (c.gate == DeltaGate::scalar ? "scalar" : "channel") << " sequences=" << c.cu_seqlens.size()
         << " chunk=" << c.chunk;
    INFO(what.str());
    // Weak decays (log-gates in [-0.05, 0]) so that the initial state still shows in late tokens.
    const GdrProblem problem(c.B, c.T, c.H, c.H, c.K, c.V, c.gate, c.cu_seqlens, seed, -0.05f);
    const seqmix::GatedDeltaRuleInputs& in = problem.in;
    const index_t N = problem.N;
    seqmix::GatedDeltaRuleOptions options;
    options.gate = c.gate;
    options.algorithm = DeltaAlgorithm::chunked;
    options.chunk_size = c.chunk;
    Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), s_ref({N, c.H, c.K, c.V}), o({c.B, c.T, c.H, c.V}),
        s({N, c.H, c.K, c.V});
    seqmix::reference::gated_delta_rule(in, {o_ref.view(), s_ref.view()}, options);
    st::CountingExecutor ex(64);
    seqmix::gated_delta_rule(in, {o.view(), s.view()}, options, ex);
    std::vector<index_t> runs;  // the prefill's: the last ones (the channel gate's check runs first)
    for (const auto& run : ex.runs()) runs.push_back(run.tasks);
    runs.erase(runs.begin(), runs.end() - std::min(runs.size(), c.runs.size()));
    CHECK(runs == c.runs);
    st::require_close("o", o.view(), o_ref.view(), kTol);
    st::require_close("final_state", s.view(), s_ref.view(), kTol);
  }
}

TEST_CASE("parallel grain delta: the chunk-parallel plan covers every chunk within its limits",
          "[parallel_grain][gated_delta_rule]") {
  // plan_segments: segments start at 0, increase, and each later one has at least min_chunks;
  // a longer first segment only with narrow blocks (first_cost < 1). plan_parts: the parts
  // start at the first later chunk, increase, end at the last chunk, and are at most `parts`.
  using seqmix::delta_update::SegmentShape;
  for (index_t chunks : {16, 19, 24, 32, 33, 40, 64, 257}) {
    for (index_t per_item : {11, 16, 32, 64}) {
      for (const SegmentShape& shape : {SegmentShape{per_item, 8, 0.7, 4, 4}, SegmentShape{per_item, 4, 1.0, 4, 4},
                                        SegmentShape{per_item, 6, 0.7, 3, 2}}) {
        INFO("chunks=" << chunks << " per_item=" << per_item << " first_blocks=" << shape.first_blocks);
        const index_t min_chunks = 8;
        std::vector<index_t> starts;
        const bool longer = seqmix::delta_update::plan_segments(chunks, min_chunks, shape, starts);
        REQUIRE(!starts.empty());
        CHECK(starts[0] == 0);
        CHECK((!longer || shape.first_cost < 1.0));
        const index_t n = static_cast<index_t>(starts.size());
        CHECK(shape.first_blocks + (n - 1) * (shape.blocks + shape.key_blocks) <= std::max(per_item, shape.first_blocks));
        for (index_t s = 1; s < n; ++s) {
          CHECK(starts[static_cast<std::size_t>(s)] > starts[static_cast<std::size_t>(s - 1)]);
          const index_t end = s + 1 < n ? starts[static_cast<std::size_t>(s + 1)] : chunks;
          CHECK(end - starts[static_cast<std::size_t>(s)] >= min_chunks);
        }
        if (n < 2) continue;
        for (index_t parts : {1, 3, 4, 16}) {
          std::vector<index_t> part;
          seqmix::delta_update::plan_parts(starts.data(), n, chunks, parts, 4.0, part);
          REQUIRE(part.size() >= 2);
          CHECK(static_cast<index_t>(part.size()) - 1 <= parts);
          CHECK(part.front() == starts[1]);
          CHECK(part.back() == chunks);
          for (std::size_t e = 1; e < part.size(); ++e) CHECK(part[e] > part[e - 1]);
        }
      }
    }
  }
}

TEST_CASE("parallel grain delta: delta_rule's value blocks share their chunk factors", "[parallel_grain][delta_rule]") {
  // No gate: the factors are the plain (K;Q) rows and scores. 3 heads of 4 chunks of the default
  // 32 tokens (3 x 32 + 4) on 64 threads: a first pass of 3 x 4 tasks, then 3 x 3 value blocks
  // (V = 96).
  const index_t B = 1, T = 100, H = 3, K = 32, V = 96;
  Tensor<float, 4> q = st::random_tensor<4>({B, T, H, K}, 1301);
  Tensor<float, 4> k = st::random_tensor<4>({B, T, H, K}, 1302);
  const Tensor<float, 4> v = st::random_tensor<4>({B, T, H, V}, 1303);
  const Tensor<float, 3> beta = st::random_tensor<3>({B, T, H}, 1304, 0.f, 1.f);
  st::normalize_rows(q);
  st::normalize_rows(k);
  const Tensor<float, 4> s0 = st::random_tensor<4>({B, H, K, V}, 1305, -0.5f, 0.5f);
  seqmix::DeltaRuleOptions options;
  options.algorithm = DeltaAlgorithm::chunked;
  const seqmix::DeltaRuleInputs in{q.view(), k.view(), v.view(), beta.view(), s0.view()};
  Tensor<float, 4> o_ref({B, T, H, V}), s_ref({B, H, K, V}), o({B, T, H, V}), s({B, H, K, V});
  seqmix::reference::delta_rule(in, {o_ref.view(), s_ref.view()}, options);
  st::CountingExecutor ex(64);
  seqmix::delta_rule(in, {o.view(), s.view()}, options, ex);
  CHECK(prefill_tasks(ex) == H * 3);
  CHECK(factor_tasks(ex, H * 4) == H * 4);
  st::require_close("o", o.view(), o_ref.view(), kTol);
  st::require_close("final_state", s.view(), s_ref.view(), kTol);
}

TEST_CASE("parallel grain delta: value-column blocks of rwkv7 match the reference", "[parallel_grain][rwkv7]") {
  struct Case {
    index_t B, T, H, K, V;
    int threads;
    index_t tasks;
  };
  const Case cases[] = {
      {2, 70, 3, 32, 67, 64, 2 * 3 * 2},  // floor(67 / 32) = 2 blocks (48 + 19 on AVX-512)
      {1, 40, 32, 16, 64, 64, 32 * 2},    // the rwkv-h32-k64 grain: 2 blocks of 32
      {1, 40, 4, 16, 40, 4, 4},           // items = threads: no split
  };
  std::uint64_t seed = 1200;
  for (const Case& c : cases) {
    seed += 10;
    std::ostringstream what;
    what << "B=" << c.B << " T=" << c.T << " H=" << c.H << " K=" << c.K << " V=" << c.V << " threads=" << c.threads;
    INFO(what.str());
    // A contractive transition as RWKV-7 parameterizes it: a = -kappa (unit norm), b = kappa * lr.
    const Tensor<float, 4> r = st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1);
    const Tensor<float, 4> k = st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2);
    const Tensor<float, 4> v = st::random_tensor<4>({c.B, c.T, c.H, c.V}, seed + 3);
    Tensor<float, 4> kappa = st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 4);
    st::normalize_rows(kappa);
    const Tensor<float, 3> lr = st::random_tensor<3>({c.B, c.T, c.H}, seed + 5, 0.f, 1.f);
    Tensor<float, 4> a({c.B, c.T, c.H, c.K}), b({c.B, c.T, c.H, c.K}), g({c.B, c.T, c.H, c.K});
    for (index_t i = 0; i < kappa.numel(); ++i) {
      a.data()[i] = -kappa.data()[i];
      b.data()[i] = kappa.data()[i] * lr.data()[i / c.K];
    }
    st::fill_log_gate(g.view(), seed + 6, -1.f, 0.f);
    const Tensor<float, 4> s0 = st::random_tensor<4>({c.B, c.H, c.K, c.V}, seed + 7, -0.5f, 0.5f);
    const seqmix::Rwkv7Inputs in{r.view(), k.view(), v.view(), a.view(), b.view(), g.view(), s0.view()};

    Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), s_ref({c.B, c.H, c.K, c.V});
    Tensor<float, 5> t_ref({c.B, c.T, c.H, c.K, c.V});
    seqmix::reference::rwkv7(in, {o_ref.view(), s_ref.view(), t_ref.view()});
    Tensor<float, 4> o({c.B, c.T, c.H, c.V}), s({c.B, c.H, c.K, c.V});
    Tensor<float, 5> t({c.B, c.T, c.H, c.K, c.V});
    st::CountingExecutor ex(c.threads);
    seqmix::rwkv7(in, {o.view(), s.view(), t.view()}, ex);
    CHECK(prefill_tasks(ex) == c.tasks);
    st::require_close("o", o.view(), o_ref.view(), kTol);
    st::require_close("final_state", s.view(), s_ref.view(), kTol);
    st::require_close("token_states", t.view(), t_ref.view(), kTol);
  }
}

TEST_CASE("parallel grain delta: head groups hand each head's state in and out", "[parallel_grain][gated_delta_rule]") {
  // Tasks of several heads of one sequence (delta_update::run_item_groups: HV = 6 on 2 threads,
  // 2 tasks of 3 heads per sequence) swap each head's state through one scratch: every way a
  // state can come in and go out must still reach the right head and sequence. Packed sequences
  // of 130, 5, 70 and 65 tokens, the chunked form asked for (the automatic choice at K 32 V 40
  // depends on the vector width); the variants: no initial state, no final state,
  // final_state the initial_state view (in place), pool slots with a padding sequence and a
  // fresh one (in place); and a reverse call (dense: 2 rows of 135 tokens).
  const index_t HV = 6, K = 32, V = 40;
  const std::vector<std::int32_t> cu = {0, 130, 135, 205, 270};
  const std::vector<std::int32_t> slots = {2, -1, 0, 3};  // a pool of 4 rows; row 1 untouched
  const std::vector<std::uint8_t> has_initial = {1, 1, 0, 1};
  const char* names[] = {"no initial state", "no final state", "in place", "slots", "reverse"};
  std::uint64_t seed = 1700;
  for (int variant = 0; variant < 5; ++variant) {
    INFO(names[variant]);
    seed += 10;
    const bool reverse = variant == 4;
    const index_t B = reverse ? 2 : 1, T = reverse ? 135 : 270, N = reverse ? 2 : 4;
    const std::vector<std::int32_t> dense, &packed = reverse ? dense : cu;  // the batch wraps it, not a copy
    GdrProblem problem(B, T, 2, HV, K, V, DeltaGate::scalar, packed, seed, -1.f);
    seqmix::GatedDeltaRuleInputs in = problem.in;
    seqmix::GatedDeltaRuleOptions options;
    options.chunk_size = 32;
    options.reverse = reverse;
    options.algorithm = DeltaAlgorithm::chunked;
    if (variant == 0) in.initial_state = {};
    if (variant == 3) in.batch.state_indices = slots, in.batch.has_initial_state = has_initial;
    const bool in_place = variant == 2 || variant == 3, has_final = variant != 1;
    Tensor<float, 4> o_ref({B, T, HV, V}), o({B, T, HV, V});
    Tensor<float, 4> s_ref = in_place ? problem.s0 : Tensor<float, 4>({N, HV, K, V});
    Tensor<float, 4> s = in_place ? problem.s0 : Tensor<float, 4>({N, HV, K, V});
    seqmix::GatedDeltaRuleInputs ref_in = in;
    if (in_place) ref_in.initial_state = s_ref.view(), in.initial_state = s.view();
    seqmix::GatedDeltaRuleOutputs ref_out{o_ref.view()}, out{o.view()};
    if (has_final) ref_out.final_state = s_ref.view(), out.final_state = s.view();
    seqmix::reference::gated_delta_rule(ref_in, ref_out, options);
    st::CountingExecutor ex(2);
    seqmix::gated_delta_rule(in, out, options, ex);
    CHECK(prefill_tasks(ex) == (variant == 3 ? 3 : N) * 2);  // running sequences x 2 groups
    st::require_close("o", o.view(), o_ref.view(), kTol);
    if (has_final) st::require_close("final_state", s.view(), s_ref.view(), kTol);
  }
}

TEST_CASE("parallel grain delta: bad beta and gate elements throw before any output or state is written",
          "[parallel_grain][gated_delta_rule]") {
  // The fast prefill leaves the elements of beta and the gate to delta_update::run_delta_items
  // (ElementChecks::caller): checked before the first task that writes, or, with a chunk-factor
  // pass, by each factor task on its chunk and then by the call's own checks when a task found a
  // bad element or the pass did not cover every token (a padding sequence). Either way the error
  // must name the element the reference names, and o and final_state must be as they were. At 64
  // claimed threads: B=1 T=300 H=2 K=64 V=96 has a factor pass (2 items of 3 value blocks, one
  // segment of 10 chunks); T=600 also splits in segments (19 chunks, 2 segments); the packed call
  // with a padding sequence (slot -1) runs only the second sequence's items. At 2 threads the
  // same calls run whole items (no factor pass).
  struct Case {
    index_t T, H;
    DeltaGate gate;
    std::vector<std::int32_t> cu_seqlens, slots;  // empty: dense B = 1; slots: state_indices
    const char* bad;                              // "beta", "g" or "g_scalar"
    index_t t, h, c;                              // the bad element (c: the gate's key channel)
    float value;
  };
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Case> cases = {
      {300, 2, DeltaGate::scalar, {}, {}, "beta", 299, 1, 0, inf},       // the last, ragged chunk
      {300, 2, DeltaGate::scalar, {}, {}, "g_scalar", 150, 0, 0, 0.5f},  // a positive log-gate
      {600, 2, DeltaGate::channel, {}, {}, "g", 599, 1, 63, nan},
      {600, 2, DeltaGate::channel, {}, {}, "beta", 0, 0, 0, nan},
      {600, 2, DeltaGate::scalar, {0, 200, 600}, {-1, 1}, "beta", 10, 1, 0, -inf},       // in the padding sequence
      {600, 2, DeltaGate::channel, {0, 200, 600}, {-1, 1}, "g", 300, 0, 5, 1e-3f},      // in the running one
  };
  const index_t K = 64, V = 96;
  std::uint64_t seed = 1700;
  for (const Case& c : cases)
    for (int threads : {2, 64}) {
      seed += 10;
      INFO("T=" << c.T << " H=" << c.H << " gate=" << (c.gate == DeltaGate::scalar ? "scalar" : "channel")
                << " sequences=" << c.cu_seqlens.size() << " bad " << c.bad << " at t=" << c.t << " h=" << c.h
                << " c=" << c.c << " threads=" << threads);
      GdrProblem problem(1, c.T, c.H, c.H, K, V, c.gate, c.cu_seqlens, seed, -0.05f);
      if (std::string(c.bad) == "beta") problem.beta(0, c.t, c.h) = c.value;
      if (std::string(c.bad) == "g_scalar") problem.gs(0, c.t, c.h) = c.value;
      if (std::string(c.bad) == "g") problem.g(0, c.t, c.h, c.c) = c.value;
      seqmix::GatedDeltaRuleInputs in = problem.in;
      if (!c.slots.empty()) in.batch.state_indices = c.slots;
      seqmix::GatedDeltaRuleOptions options;
      options.gate = c.gate;
      options.algorithm = DeltaAlgorithm::chunked;  // the factor pass needs chunked items (SSE2 would pick recurrent)
      Tensor<float, 4> o({1, c.T, c.H, V}), s({problem.N, c.H, K, V});
      std::string reference_error;
      try {
        seqmix::reference::gated_delta_rule(in, {o.view(), s.view()}, options);
      } catch (const seqmix::ShapeError& e) {
        reference_error = e.what();
      }
      REQUIRE(reference_error.find(std::string("argument '") + c.bad + "'") != std::string::npos);
      o.fill(42.f);
      s.fill(7.f);
      st::CountingExecutor ex(threads);
      try {
        seqmix::gated_delta_rule(in, {o.view(), s.view()}, options, ex);
        FAIL("no error");
      } catch (const seqmix::ShapeError& e) {
        const std::string what = e.what();
        CHECK(e.argument() == c.bad);
        // The same element named as the reference names it (the op's name differs).
        CHECK(what.substr(what.find("argument '")) == reference_error.substr(reference_error.find("argument '")));
      }
      CHECK(std::all_of(o.begin(), o.end(), [](float x) { return x == 42.f; }));
      CHECK(std::all_of(s.begin(), s.end(), [](float x) { return x == 7.f; }));
      if (threads == 64 && c.cu_seqlens.empty()) {
        // The check rode on the factor pass (2 items x chunks of 32); after it only the gate's own
        // check ran, to name the element (a channel gate's check is a parallel pass).
        REQUIRE(!ex.runs().empty());
        CHECK(ex.runs().front().tasks == 2 * ((c.T + 31) / 32));
        CHECK(ex.runs().size() == (std::string(c.bad) == "g" ? 2u : 1u));
      }
    }
}
