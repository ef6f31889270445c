// The delta rules' automatic prefill choice (delta_update::choose_delta_algorithm): which form
// its operation counts pick at points of the measured crossover (asked for 16-lane vectors, the
// AVX-512 machines it was measured on; README.md "Which prefill runs"), and that an automatic
// call runs exactly the form the choice names, per sequence of a packed batch, for every gate,
// with fp32 and bf16 dot products, on one and two threads.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix_testing/testing.hpp"

namespace delta_choice_test {

using seqmix::DeltaAlgorithm;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::delta_update::DeltaShape;
namespace st = seqmix::testing;

constexpr DeltaAlgorithm kChunked = DeltaAlgorithm::chunked, kRecurrent = DeltaAlgorithm::recurrent;

enum class Gate { none, scalar, channel };

const char* gate_name(Gate g) { return g == Gate::none ? "none" : g == Gate::scalar ? "scalar" : "channel"; }

std::string describe(const DeltaShape& s) {
  std::ostringstream out;
  out << "T=" << s.tokens << " K=" << s.K << " V=" << s.V << " heads=" << s.heads << " chunk=" << s.chunk
      << " input_bytes=" << s.input_bytes << " channel_gate=" << s.channel_gate << " value_block=" << s.value_block;
  return out.str();
}

// The choice on 16 lanes for T over `tokens`, chunk 32.
void require_choice(index_t K, index_t V, index_t heads, const std::vector<index_t>& tokens, DeltaAlgorithm expected) {
  for (index_t T : tokens) {
    const DeltaShape shape{T, K, V, heads, 32};
    INFO(describe(shape));
    CHECK(seqmix::delta_update::choose_delta_algorithm(shape, 16) == expected);
  }
}

// The same bytes (not only equal values: -0 against +0 or a NaN's payload would differ).
template <std::size_t R>
bool same_bits(const Tensor<float, R>& a, const Tensor<float, R>& b) {
  return a.numel() == b.numel() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(float)) == 0;
}

}  // namespace delta_choice_test

TEST_CASE("delta rules: the automatic choice at the measured crossover points, 16 lanes", "[delta_rule][gated_delta_rule]") {
  using namespace delta_choice_test;
  const std::vector<index_t> all{4, 8, 16, 32, 64, 256, 1024, 2048};
  // K = V = 16 and 64: the recurrent kernel's one tile per row beats the chunk's fixed work at
  // every length while the sequence's rows (q, k, v, outputs of all heads) stay within
  // kCachedRowBytes, 32 MiB: 4 heads to T = 8192 at K = V = 64 (1 KB of fp32 rows per token and
  // head), 16 heads to 2048, 32 heads to 1024; beyond, each row from memory costs the recurrent
  // kernel's head-by-head walk more than the chunked form's extra flops (README.md, "The rows
  // asked for during the pass": recurrent / chunked 0.72-0.99 up to 32 MiB, 1.16-1.58 at 64 MiB).
  require_choice(16, 16, 16, all, kRecurrent);
  require_choice(64, 64, 4, all, kRecurrent);
  require_choice(64, 64, 4, {4096, 8192}, kRecurrent);
  require_choice(64, 64, 16, {4, 8, 16, 32, 64, 256, 512, 1024, 2048}, kRecurrent);
  require_choice(64, 64, 32, {4, 8, 16, 32, 64, 256, 512, 1024}, kRecurrent);
  require_choice(64, 64, 4, {8400, 16384}, kChunked);
  require_choice(64, 64, 16, {2100, 4096}, kChunked);
  require_choice(64, 64, 32, {1100, 2048, 4096}, kChunked);
  // The rows' bytes follow their storage and the gate: bf16 q, k, v (640 bytes per token and head
  // at K = V = 64) keep H32 T2048 (40 MiB) chunked but H32 T1024 (20 MiB) recurrent; KDA's
  // per-channel log-decays (1280 bytes with fp32 rows) take H16 T2048 (40 MiB) to the chunked form.
  CHECK(seqmix::delta_update::choose_delta_algorithm({2048, 64, 64, 32, 32, seqmix::Bf16Compute::fp32, 2}, 16) == kChunked);
  CHECK(seqmix::delta_update::choose_delta_algorithm({1024, 64, 64, 32, 32, seqmix::Bf16Compute::fp32, 2}, 16) == kRecurrent);
  CHECK(seqmix::delta_update::choose_delta_algorithm({2048, 64, 64, 16, 32, seqmix::Bf16Compute::fp32, 4, true}, 16) == kChunked);
  CHECK(seqmix::delta_update::choose_delta_algorithm({2048, 64, 64, 16, 32, seqmix::Bf16Compute::fp32, 4, false}, 16) == kRecurrent);
  // K = V = 32 and the mixed sizes K 64 V 128, K 128 V 64: near parity, the recurrent kernel
  // ahead while the rows stay cached.
  require_choice(32, 32, 16, {256, 1024}, kRecurrent);
  require_choice(64, 128, 16, {256}, kRecurrent);
  require_choice(128, 64, 16, {256}, kRecurrent);
  // K = V = 48: three 1-vector tiles per row, a third of a 4-vector tile each in the two-token
  // pass (kOneVectorTileSteps): the recurrent kernel wins while the rows stay cached (recurrent /
  // chunked 0.67-0.93 on Zen 5, 0.77-0.80 on Zen 4; README.md, "On Zen 4 (2026-12-08)").
  require_choice(48, 48, 16, {4, 12, 16, 32, 64, 256, 1024, 2048}, kRecurrent);
  // K = V = 96, 128: the recurrent kernel's tiles cost as much as at 64 or more, the chunked
  // form wins from a few tokens.
  require_choice(96, 96, 16, {8, 16, 32, 64, 256, 1024, 2048}, kChunked);
  require_choice(128, 128, 32, {8, 16, 32, 64, 256, 1024, 2048}, kChunked);
  require_choice(128, 128, 32, {1, 2}, kRecurrent);
  // bf16 dot products speed the chunked form's flops up (kBf16DotFlopsRatio) where the build has
  // them: K = V = 64 then goes chunked from 16 tokens; elsewhere the products stay fp32 and so does
  // the choice.
  const DeltaAlgorithm with_dot = seqmix::detail::kNativeBf16Dot ? kChunked : kRecurrent;
  for (index_t T : {16, 64, 256}) {
    const DeltaShape shape{T, 64, 64, 4, 32, seqmix::Bf16Compute::dot};
    INFO(describe(shape) << " bf16 dot");
    CHECK(seqmix::delta_update::choose_delta_algorithm(shape, 16) == with_dot);
  }
  CHECK(seqmix::delta_update::choose_delta_algorithm({4, 64, 64, 4, 32, seqmix::Bf16Compute::dot}, 16) == kRecurrent);
  // T = the largest index_t: no overflow, the long-sequence answer, rows beyond any cache
  // (K = V = 16 at 32 MiB of rows, 32 at 64 MiB: recurrent / chunked 1.28-1.57, one thread).
  const index_t huge = std::numeric_limits<index_t>::max();
  CHECK(seqmix::delta_update::choose_delta_algorithm({huge, 64, 64, 16, 32}, 16) == kChunked);
  CHECK(seqmix::delta_update::choose_delta_algorithm({huge, 128, 128, 16, 32}, 16) == kChunked);
  CHECK(seqmix::delta_update::choose_delta_algorithm({huge, 16, 16, 16, 32}, 16) == kChunked);
  CHECK(seqmix::delta_update::choose_delta_algorithm({0, 64, 64, 16, 32}, 16) == kRecurrent);
  // A stream pins the counts with its rows cached (chunked/streaming.hpp: each segment's call
  // reads only its own rows), so it picks what one call over a short sequence picks, at every
  // vector width: the SSE2 build's streams (width 4) once took the long-sequence answer while
  // the one call of test_streaming's 300 tokens ran recurrent.
  for (const index_t width : {4, 8, 16})
    for (const index_t kv : {16, 24, 32, 64, 128}) {
      const DeltaShape short_call{300, 16, kv, 4, 32};
      INFO("width " << width << " " << describe(short_call));
      CHECK(seqmix::delta_update::choose_stream_delta_algorithm(short_call, width) ==
            seqmix::delta_update::choose_delta_algorithm(short_call, width));
    }
}

TEST_CASE("delta rules: the automatic choice counts the value block each task runs", "[delta_rule][gated_delta_rule]") {
  using namespace delta_choice_test;
  using seqmix::delta_update::choose_delta_algorithm;
  // K = V = 128 in two blocks of 64 columns (one head on two threads): per block the recurrent
  // kernel's state is 32 KB and the chunked form repeats the chunk's K-side work, so the
  // recurrent kernel runs (measured 0.79-0.89 of the chunked form's time, README.md) where the
  // whole V picks the chunked form. Every vector width: 64 columns are whole 4-vector tiles at 4,
  // 8 and 16 lanes, and the counts scale alike.
  for (const index_t width : {4, 8, 16})
    for (const index_t T : {64, 256, 1024, 4096}) {
      DeltaShape shape{T, 128, 128, 1, 32};
      INFO("width " << width << " " << describe(shape));
      CHECK(choose_delta_algorithm(shape, width) == kChunked);
      shape.value_block = 64;
      CHECK(choose_delta_algorithm(shape, width) == kRecurrent);
      shape.value_block = 128;  // a block of all of V is no block
      CHECK(choose_delta_algorithm(shape, width) == kChunked);
      // A stream sets no block: it picks what a call over all of V picks.
      shape.value_block = 0;
      shape.tokens = 300;
      CHECK(seqmix::delta_update::choose_stream_delta_algorithm(shape, width) == choose_delta_algorithm(shape, width));
      shape.value_block = 64;
      CHECK(seqmix::delta_update::choose_stream_delta_algorithm(shape, width) == choose_delta_algorithm(shape, width));
    }
  // Blocks narrower than a 4-vector tile keep the counts of all of V (the 1-vector tiles' counts
  // are not refitted): K = V = 64 in blocks of 32 stays recurrent on 16 lanes, as all of V does.
  for (const index_t T : {64, 1024}) {
    const DeltaShape shape{T, 64, 64, 1, 32, seqmix::Bf16Compute::fp32, 4, false, 32};
    INFO(describe(shape));
    CHECK(seqmix::delta_update::counted_columns(shape, 16) == 64);
    CHECK(choose_delta_algorithm(shape, 16) == kRecurrent);
  }
  // The rows beyond the cache are all of V's (the call reads them all): K = V = 128 H32 T4096 in
  // blocks of 64 stays chunked.
  CHECK(choose_delta_algorithm({4096, 128, 128, 32, 32, seqmix::Bf16Compute::fp32, 4, false, 64}, 16) == kChunked);
  // The block the driver counts: two blocks run on their own; one block, the shared chunk
  // factors (3 blocks or more) and the sequence split count all of V.
  using seqmix::delta_update::choice_value_block;
  CHECK(choice_value_block(1, 128, 128, 2) == 64);
  CHECK(choice_value_block(32, 128, 128, 64) == 64);
  CHECK(choice_value_block(2, 128, 128, 2) == 0);
  CHECK(choice_value_block(1, 128, 128, 1) == 0);
  CHECK(choice_value_block(4, 128, 128, 16) == 0);
  CHECK(choice_value_block(1, 64, 64, 64) == 0);
}

namespace delta_choice_test {

// A packed gated (or ungated) prefill of sequences `lengths` with HK = 1, HV heads.
struct PackedCase {
  std::vector<index_t> lengths;
  index_t HV, K, V;
  Gate gate;
  index_t total() const {
    index_t t = 0;
    for (index_t n : lengths) t += n;
    return t;
  }
};

struct PackedData {
  Tensor<float, 4> q, k, v, g, s0;
  Tensor<float, 3> beta, gs;
  std::vector<std::int64_t> cu;
  PackedData(const PackedCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({1, c.total(), 1, c.K}, seed + 1)), k(st::random_tensor<4>({1, c.total(), 1, c.K}, seed + 2)),
        v(st::random_tensor<4>({1, c.total(), c.HV, c.V}, seed + 3)),
        g(st::random_tensor<4>({1, c.total(), c.HV, c.K}, seed + 4, -0.5f, 0.f)),
        s0(st::random_tensor<4>({static_cast<index_t>(c.lengths.size()), c.HV, c.K, c.V}, seed + 5, -0.5f, 0.5f)),
        beta(st::random_tensor<3>({1, c.total(), c.HV}, seed + 6, 0.f, 1.f)),
        gs(st::random_tensor<3>({1, c.total(), c.HV}, seed + 7, -0.5f, 0.f)) {
    st::normalize_rows(q);
    st::normalize_rows(k);
    cu.push_back(0);
    for (index_t n : c.lengths) cu.push_back(cu.back() + n);
  }
};

struct PackedResult {
  Tensor<float, 4> o, state;
  explicit PackedResult(const PackedCase& c)
      : o({1, c.total(), c.HV, c.V}), state({static_cast<index_t>(c.lengths.size()), c.HV, c.K, c.V}) {}
};

// Runs tokens [t0, t0 + n) as the packed sequences `cu` (offsets from t0) with `algorithm`, their
// states in rows [row0, row0 + cu.size() - 1).
void run_packed(const PackedCase& c, const PackedData& d, const std::vector<std::int64_t>& cu, index_t t0, index_t n,
                index_t row0, DeltaAlgorithm algorithm, seqmix::Bf16Compute compute, const seqmix::Executor& ex,
                PackedResult& r) {
  const index_t rows = static_cast<index_t>(cu.size()) - 1;
  const auto o = r.o.view().slice(1, t0, n);
  const auto state = r.state.view().slice(0, row0, rows);
  const auto s0 = d.s0.cview().slice(0, row0, rows);
  if (c.gate == Gate::none) {
    seqmix::DeltaRuleInputs in;
    in.q = d.q.cview().slice(1, t0, n), in.k = d.k.cview().slice(1, t0, n), in.v = d.v.cview().slice(1, t0, n);
    in.beta = d.beta.cview().slice(1, t0, n), in.initial_state = s0;
    in.batch.cu_seqlens = cu;
    seqmix::DeltaRuleOptions options;
    options.algorithm = algorithm, options.bf16_compute = compute;
    seqmix::delta_rule(in, {o, state}, options, ex);
    return;
  }
  seqmix::GatedDeltaRuleInputs in;
  in.q = d.q.cview().slice(1, t0, n), in.k = d.k.cview().slice(1, t0, n), in.v = d.v.cview().slice(1, t0, n);
  in.beta = d.beta.cview().slice(1, t0, n), in.initial_state = s0;
  in.batch.cu_seqlens = cu;
  seqmix::GatedDeltaRuleOptions options;
  options.algorithm = algorithm, options.bf16_compute = compute;
  if (c.gate == Gate::channel) {
    options.gate = seqmix::DeltaGate::channel;
    in.g = d.g.cview().slice(1, t0, n);
  } else {
    in.g_scalar = d.gs.cview().slice(1, t0, n);
  }
  seqmix::gated_delta_rule(in, {o, state}, options, ex);
}

}  // namespace delta_choice_test

TEST_CASE("delta rules: an automatic call runs the chosen form of each sequence bit for bit", "[delta_rule][gated_delta_rule]") {
  using namespace delta_choice_test;
  // Each packed batch mixes sequences the choice sends different ways at this build's vector
  // width (short ones recurrent, long ones chunked where K favours it): the automatic call must
  // equal, byte for byte, each sequence run alone with the form choose_delta_algorithm names.
  seqmix::ThreadPool pool(2);
  const std::vector<PackedCase> cases = {
      {{3, 100, 1, 37}, 2, 48, 48, Gate::scalar},
      {{5, 70, 33}, 3, 16, 16, Gate::channel},
      {{2, 90, 9}, 2, 128, 128, Gate::none},
      {{65, 4, 31}, 2, 64, 64, Gate::scalar},
      {{40, 7}, 1, 96, 40, Gate::channel},
      // K = V = 64, 16 heads: 2100 tokens pass kCachedRowBytes (32.8 MiB of rows: chunked), 300
      // stay within it (4.7 MiB: recurrent).
      {{2100, 300}, 16, 64, 64, Gate::scalar},
  };
  std::uint64_t seed = 300;
  for (const PackedCase& c : cases)
    for (auto compute : {seqmix::Bf16Compute::fp32, seqmix::Bf16Compute::dot})
      for (const seqmix::Executor* ex : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)}) {
        const PackedData d(c, ++seed);
        PackedResult automatic(c), alone(c);
        run_packed(c, d, d.cu, 0, c.total(), 0, DeltaAlgorithm::automatic, compute, *ex, automatic);
        index_t t0 = 0;
        for (std::size_t i = 0; i < c.lengths.size(); ++i) {
          const index_t n = c.lengths[i];
          const DeltaShape shape{n, c.K, c.V, c.HV, 32, compute, 4, c.gate == Gate::channel};
          const DeltaAlgorithm chosen = seqmix::delta_update::choose_delta_algorithm(shape);
          run_packed(c, d, {0, n}, t0, n, static_cast<index_t>(i), chosen, compute, *ex, alone);
          t0 += n;
        }
        INFO("K=" << c.K << " V=" << c.V << " HV=" << c.HV << " gate=" << gate_name(c.gate)
                  << " bf16_compute=" << static_cast<int>(compute) << " threads=" << ex->concurrency() << " seed=" << seed);
        CHECK(same_bits(automatic.o, alone.o));
        CHECK(same_bits(automatic.state, alone.state));
      }
}

TEST_CASE("delta rules: an automatic call in value blocks runs the form chosen on the block", "[delta_rule][gated_delta_rule]") {
  using namespace delta_choice_test;
  // One head of K = V = 128: on two threads the call runs two blocks of 64 columns and the
  // recurrent kernel; on one thread all of V and the chunked form. Each automatic call must equal
  // its forced form bit for bit.
  seqmix::ThreadPool pool(2);
  std::uint64_t seed = 700;
  for (const Gate gate : {Gate::none, Gate::scalar, Gate::channel})
    for (const seqmix::Executor* ex : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)}) {
      const PackedCase c{{200}, 1, 128, 128, gate};
      const PackedData d(c, ++seed);
      const index_t block = seqmix::delta_update::choice_value_block(1, c.K, c.V, ex->concurrency());
      DeltaShape shape{200, c.K, c.V, c.HV, 32, seqmix::Bf16Compute::fp32, 4, gate == Gate::channel, block};
      const DeltaAlgorithm chosen = seqmix::delta_update::choose_delta_algorithm(shape);
      INFO("gate=" << gate_name(gate) << " threads=" << ex->concurrency() << " block=" << block << " seed=" << seed);
      if (seqmix::simd::kWidth == 16) CHECK(chosen == (ex->concurrency() == 2 ? kRecurrent : kChunked));
      PackedResult automatic(c), forced(c);
      run_packed(c, d, d.cu, 0, c.total(), 0, DeltaAlgorithm::automatic, seqmix::Bf16Compute::fp32, *ex, automatic);
      run_packed(c, d, d.cu, 0, c.total(), 0, chosen, seqmix::Bf16Compute::fp32, *ex, forced);
      CHECK(same_bits(automatic.o, forced.o));
      CHECK(same_bits(automatic.state, forced.state));
    }
}
