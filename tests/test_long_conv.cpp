// long_conv: the direct, FFT and automatic prefill and the decode step against the reference
// (double accumulation), over a table of T, filter lengths, channel counts, head sharing and
// directions; segments and steps against one call; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/long_conv_walks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::LongConvDirection;
using seqmix::LongConvMethod;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct LongCase {
  index_t B, T, D, L, G, Lb;  // Lb > 0: bidirectional
  bool skip, bias, state;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " L=" << L << " G=" << G << " Lb=" << Lb << " skip=" << skip
      << " bias=" << bias << " state=" << state << " seed=" << seed;
    return s.str();
  }
};

// The arguments of one case; filters scaled by 1/sqrt(L) so outputs stay O(1) at every length.
struct LongData {
  Tensor<float, 3> u, state;
  Tensor<float, 2> h, hb;
  Tensor<float, 1> skip, bias;

  explicit LongData(const LongCase& c)
      : u(st::random_tensor<3>({c.B, c.T, c.D}, c.seed)),
        state(st::random_tensor<3>({c.B, c.L - 1, c.D}, c.seed + 1)),
        h(st::random_tensor<2>({c.L, c.G}, c.seed + 2, -1.f / std::sqrt(float(c.L)), 1.f / std::sqrt(float(c.L)))),
        hb(st::random_tensor<2>({std::max<index_t>(c.Lb, 1), c.G}, c.seed + 3, -0.1f, 0.1f)),
        skip(st::random_tensor<1>({c.D}, c.seed + 4)),
        bias(st::random_tensor<1>({c.D}, c.seed + 5)) {}

  seqmix::LongConvInputs inputs(const LongCase& c) const {
    seqmix::LongConvInputs in{u.view(), h.view()};
    if (c.Lb > 0) in.filter_backward = hb.view();
    if (c.skip) in.skip = skip.view();
    if (c.bias) in.bias = bias.view();
    if (c.state) in.initial_state = state.view();
    return in;
  }
};

seqmix::LongConvOptions options_of(const LongCase& c, LongConvMethod method) {
  return {c.Lb > 0 ? LongConvDirection::bidirectional : LongConvDirection::causal, method};
}

// T from the list; filter lengths 1, short, about T/2, T and past T; channels sampled in
// 1..1024 across the SIMD width and the 64-channel tile; every option on and off across the table.
std::vector<LongCase> long_cases() {
  std::vector<LongCase> cases;
  std::uint64_t seed = 1;
  // Under the sanitizers (small scale) the longest T is 2800, not 4097: the reference's T L D
  // multiply-adds dominated the test there. The L = T / 2, T and T + 5 transforms still exceed
  // the 4096-element FFT block and split into parts (T + taps - 1 = 4199 and 5599 round up to
  // N = 8192, as 4097's 6144 and 8193 rounded up to 8192 and 16384: one pass above the block
  // either way), and T is still a ragged number of 64-token direct tiles.
  const bool small = st::small_test_scale();
  const index_t Ts[] = {1, 7, 64, 1000, small ? 2800 : 4097};
  const index_t Ds[] = {1, 5, 16, 17, 64, 100};
  for (index_t T : Ts) {
    const index_t Ls[] = {1, 3, std::max<index_t>(1, T / 2), T, T + 5};
    for (index_t L : Ls) {
      // The reference costs T L D / 2: the longest sequences get few channels.
      const index_t D = T > 1000 ? std::min<index_t>(Ds[seed % 6], 5) : Ds[seed % 6];
      const index_t G = (seed % 4 == 1 && D % 4 == 0) ? D / 4 : (seed % 4 == 3 ? 1 : D);
      const bool bidir = seed % 3 == 2;
      const index_t Lb = bidir ? std::max<index_t>(1, (L + 1) / 2) : 0;
      const index_t B = seed % 5 == 0 ? 2 : 1;
      cases.push_back({B, T, D, L, G, Lb, bool(seed & 1), bool(seed & 2), !bidir && bool(seed & 4), seed});
      ++seed;
    }
  }
  // The widest channel count; 150 tokens under the sanitizers keep 1024 channels (16 tiles of 64),
  // a ragged last direct tile (2 x 64 + 22) and a full-length filter with a state.
  const index_t wide_T = small ? 150 : 300;
  cases.push_back({1, wide_T, 1024, wide_T, 1024, 0, true, true, true, 99});
  cases.push_back({2, 129, 768, 129, 12, 65, true, false, false, 100});  // heads of 64 channels, both ways
  return cases;
}

// Outputs of one form: y and the final state (causal calls).
struct Result {
  Tensor<float, 3> y, final_state;
};

Result run(const LongCase& c, const LongData& data, LongConvMethod method, bool use_reference,
           const seqmix::Executor& executor) {
  Result r{Tensor<float, 3>({c.B, c.T, c.D}), Tensor<float, 3>({c.B, c.L - 1, c.D})};
  seqmix::LongConvOutputs out{r.y.view()};
  if (c.Lb == 0) out.final_state = r.final_state.view();
  if (use_reference)
    seqmix::reference::long_conv(data.inputs(c), out, options_of(c, method));
  else
    seqmix::long_conv(data.inputs(c), out, options_of(c, method), executor);
  return r;
}

TEST_CASE("long_conv: direct, FFT and automatic forms match the reference", "[long_conv]") {
  for (const LongCase& c : long_cases()) {
    INFO(c.describe());
    const LongData data(c);
    const Result ref = run(c, data, LongConvMethod::automatic, true, seqmix::serial_executor());
    const struct {
      LongConvMethod method;
      double tol;
    } forms[] = {{LongConvMethod::direct, 1e-5}, {LongConvMethod::fft, 2e-5}, {LongConvMethod::automatic, 2e-5}};
    for (const auto& form : forms) {
      INFO("method " << int(form.method));
      const Result got = run(c, data, form.method, false, c.seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
      st::require_close("y", got.y.cview(), ref.y.cview(), form.tol);
      if (c.Lb == 0) st::require_close("final_state", got.final_state.cview(), ref.final_state.cview(), 0.0);
    }
  }
}

TEST_CASE("long_conv: the cost model picks direct for short filters and FFT for long ones", "[long_conv]") {
  const auto method = [](index_t T, index_t L) {
    Tensor<float, 3> u({1, T, 16}), y({1, T, 16});
    Tensor<float, 2> h({L, 16});
    return seqmix::long_conv_method({u.view(), h.view()}, {y.view()});
  };
  // The forms meet near L = 16 at T = 4096 (docs/operators.md, long_conv, "Crossover").
  CHECK(method(4096, 4) == LongConvMethod::direct);
  CHECK(method(4096, 8) == LongConvMethod::direct);
  CHECK(method(4096, 32) == LongConvMethod::fft);
  CHECK(method(4096, 1024) == LongConvMethod::fft);
  CHECK(method(1024, 1024) == LongConvMethod::fft);
  CHECK(method(16384, 16384) == LongConvMethod::fft);
  CHECK(method(65536, 65536) == LongConvMethod::fft);
}

TEST_CASE("long_conv: segments with the state carried equal one call", "[long_conv]") {
  const index_t B = 2, T = 700, D = 33, L = 250;
  const LongCase whole{B, T, D, L, D, 0, true, true, true, 7};
  const LongData data(whole);
  const Result ref = run(whole, data, LongConvMethod::automatic, true, seqmix::serial_executor());
  for (LongConvMethod method : {LongConvMethod::direct, LongConvMethod::fft, LongConvMethod::automatic}) {
    INFO("method " << int(method));
    // Pieces shorter and longer than L, then single steps; the state is carried in place.
    Tensor<float, 3> state = data.state, y({B, T, D});
    const index_t cuts[] = {0, 100, 101, 400, 690, T};
    for (std::size_t i = 0; i + 1 < std::size(cuts); ++i) {
      const index_t t0 = cuts[i], n = cuts[i + 1] - t0;
      seqmix::LongConvInputs in{data.u.view().slice(1, t0, n), data.h.view()};
      in.skip = data.skip.view(), in.bias = data.bias.view(), in.initial_state = state.view();
      if (n < 20) {  // the last piece token by token through the step
        for (index_t t = t0; t < t0 + n; ++t)
          seqmix::long_conv_step({data.u.view().select(1, t), data.h.view(), data.skip.view(), data.bias.view()},
                                 {y.view().select(1, t), state.view()}, st::two_thread_pool());
        continue;
      }
      seqmix::long_conv(in, {y.view().slice(1, t0, n), state.view()}, {LongConvDirection::causal, method},
                        st::two_thread_pool());
    }
    st::require_close("y", y.cview(), ref.y.cview(), 2e-5);
    st::require_close("final_state", state.cview(), ref.final_state.cview(), 0.0);
  }
}

TEST_CASE("long_conv: steps from an empty state equal one call, shared heads", "[long_conv]") {
  const index_t B = 3, T = 40, D = 48, L = 64, G = 3;
  const LongCase c{B, T, D, L, G, 0, true, false, false, 11};
  const LongData data(c);
  const Result ref = run(c, data, LongConvMethod::automatic, true, seqmix::serial_executor());
  Tensor<float, 3> state({B, L - 1, D}), y({B, T, D});
  for (index_t t = 0; t < T; ++t)
    seqmix::long_conv_step({data.u.view().select(1, t), data.h.view(), data.skip.view()},
                           {y.view().select(1, t), state.view()});
  st::require_close("y", y.cview(), ref.y.cview(), 1e-5);
  st::require_close("state", state.cview(), ref.final_state.cview(), 0.0);
}

TEST_CASE("long_conv: steps over whole channel blocks equal one call, L = 1 to 64", "[long_conv]") {
  // Two whole blocks of the step's channel lanes and a ragged one: the whole blocks keep their
  // accumulators in registers (long_conv_step_full_block), the ragged one takes the general loop.
  const index_t B = 2, T = 24, D = 2 * seqmix::detail::kLongConvStepLanes + 3;
  for (const index_t L : {1, 2, 7, 64}) {
    INFO("L=" << L);
    const LongCase c{B, T, D, L, D, 0, true, true, false, 13 + static_cast<std::uint64_t>(L)};
    const LongData data(c);
    const Result ref = run(c, data, LongConvMethod::automatic, true, seqmix::serial_executor());
    Tensor<float, 3> state({B, L - 1, D}), y({B, T, D});
    for (index_t t = 0; t < T; ++t)
      seqmix::long_conv_step({data.u.view().select(1, t), data.h.view(), data.skip.view(), data.bias.view()},
                             {y.view().select(1, t), state.view()}, t % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    st::require_close("y", y.cview(), ref.y.cview(), 1e-5);
    st::require_close("state", state.cview(), ref.final_state.cview(), 0.0);
  }
}

TEST_CASE("long_conv: T = 65536 by FFT against the direct form", "[long_conv]") {
  if (st::small_test_scale()) return;  // the sanitizer build skips the largest shape only
  const LongCase c{1, 65536, 16, 300, 16, 0, false, false, false, 21};
  const LongData data(c);
  const Result direct = run(c, data, LongConvMethod::direct, false, st::two_thread_pool());
  const Result fft = run(c, data, LongConvMethod::fft, false, st::two_thread_pool());
  st::require_close("y", fft.y.cview(), direct.y.cview(), 2e-5);
  // And a few outputs against a double sum written here.
  for (index_t t : {index_t{0}, index_t{299}, index_t{40000}, index_t{65535}})
    for (index_t d : {index_t{0}, index_t{15}}) {
      double acc = 0;
      for (index_t s = 0; s < c.L && s <= t; ++s) acc += double(data.h(s, d)) * data.u(0, t - s, d);
      CHECK(std::abs(fft.y(0, t, d) - acc) < 1e-5);
    }
}

TEST_CASE("long_conv: wide walks without a prepared spectrum once a block's signal stays in no cache",
          "[long_conv]") {
  // long_conv_plain_walk_width: above twice kLongConvFftWalkCacheBytes per block, walks whose
  // signals and filter spectra hold at most kLongConvFftWideWalkBytes, none longer than a thread's
  // share, blocks spread evenly; below, the walks of up to 4 blocks as before.
  namespace sd = seqmix::detail;
  const index_t E = sd::kFftElement;
  const index_t wide_N = st::long_conv_first_wide_N();
  st::check_wide_walk_widths(
      [](index_t blocks, int threads, index_t N) { return sd::long_conv_plain_walk_width(blocks, threads, N); },
      [](index_t blocks, int threads, index_t) { return sd::long_conv_fft_walk_blocks(blocks, threads); },
      2);  // signals and filter spectra
  // Calls on wide walks (6 blocks of the first wide N in one walk on one thread, 3 per walk on two,
  // more than the 4 of the walks below): a ragged last block, skip and bias, a state, a filter
  // shared by all channels, two batch rows.
  const index_t T = wide_N / 2 + 100;
  REQUIRE(sd::long_conv_plain_walk_width(6, 1, wide_N) == 6);
  for (const LongCase& c : {LongCase{1, T, 5 * E + 3, 8, 5 * E + 3, 0, true, false, true, 51},
                            LongCase{2, T + 50, 5 * E + 3, 5, 1, 0, true, true, false, 52}}) {
    INFO(c.describe());
    const LongData data(c);
    const seqmix::detail::LongConvDims dims{c.B, c.T, c.D, c.L, c.Lb, c.G};
    REQUIRE(sd::long_conv_fft_length(dims, c.state) == wide_N);
    const Result ref = run(c, data, LongConvMethod::automatic, true, seqmix::serial_executor());
    const Result one = run(c, data, LongConvMethod::fft, false, seqmix::serial_executor());
    st::require_close("y", one.y.cview(), ref.y.cview(), 2e-5);
    if (c.state) st::require_close("final_state", one.final_state.cview(), ref.final_state.cview(), 0.0);
    const Result two = run(c, data, LongConvMethod::fft, false, st::two_thread_pool());
    st::require_close("y (two threads)", two.y.cview(), ref.y.cview(), 2e-5);
  }
  seqmix::long_conv_release_thread_scratch();  // 96 MiB of wide walks: not for the next cases
}

TEST_CASE("long_conv: one batch row split by rows and blocks equals the walks, bit for bit", "[long_conv]") {
  // long_conv_fft_rows_run (long_conv_fft_splits_rows: one batch row, causal, window and taps in
  // the transform's lower half, blocks of 2 MiB and more): rows of u and h split over the threads,
  // each block's filters transformed next to its signal, rows of y split again. The same
  // butterflies as the walks (what two batch rows run), so each row of a two-row call of the same
  // inputs is equal bit for bit; a few outputs against double sums. 10 blocks (a ragged last one)
  // on one thread and on two, at the shortest transform that splits: blocks of exactly
  // kLongConvFftWalkCacheBytes (N = 65536 on SSE2, 16384 with AVX-512; a quarter of the first
  // wide N, which the walk-width tests need and this path does not).
  namespace sd = seqmix::detail;
  const index_t E = sd::kFftElement;
  const index_t N = sd::kLongConvFftWalkCacheBytes / (E * static_cast<index_t>(sizeof(float)));
  const index_t T = N / 2, D = 9 * E + 5;
  for (const LongCase& c : {LongCase{1, T, D, T, D, 0, true, true, false, 61},        // L = T
                            LongCase{1, T - 37, D, 1000, 1, 0, false, false, false, 62}}) {  // one filter
    INFO(c.describe());
    const LongData data(c);
    const seqmix::detail::LongConvDims dims{c.B, c.T, c.D, c.L, c.Lb, c.G};
    REQUIRE(sd::long_conv_fft_length(dims, false) == N);
    REQUIRE(sd::long_conv_fuses_filters(data.inputs(c), N));
    REQUIRE(sd::long_conv_fft_splits_rows(data.inputs(c), N, E, 2, false));
    // The two-row call: u's row twice (spectra made once for both rows, kept whole).
    LongCase twice = c;
    twice.B = 2;
    LongData rows(twice);
    for (index_t b = 0; b < 2; ++b)
      for (index_t t = 0; t < c.T; ++t)
        for (index_t d = 0; d < c.D; ++d) rows.u(b, t, d) = data.u(0, t, d);
    rows.h = data.h, rows.skip = data.skip, rows.bias = data.bias;
    REQUIRE_FALSE(sd::long_conv_fuses_filters(rows.inputs(twice), N));
    const Result apart = run(twice, rows, LongConvMethod::fft, false, seqmix::serial_executor());
    const seqmix::Executor& two_threads = st::two_thread_pool();
    for (const seqmix::Executor* executor : {&seqmix::serial_executor(), &two_threads}) {
      const Result fused = run(c, data, LongConvMethod::fft, false, *executor);
      for (index_t b = 0; b < 2; ++b)
        st::require_close("y against the spectra made apart", fused.y.cview(), apart.y.cview().slice(0, b, 1), 0.0);
      for (index_t t : {index_t{0}, index_t{1}, c.T / 3, c.T - 1})
        for (index_t d : {index_t{0}, E - 1, E + 2, D - 1}) {
          double acc = c.bias ? data.bias(d) : 0.0;
          if (c.skip) acc += double(data.skip(d)) * data.u(0, t, d);
          for (index_t s = 0; s <= std::min(t, c.L - 1); ++s)
            acc += double(data.h(s, d / (c.D / c.G))) * data.u(0, t - s, d);
          INFO("t = " << t << ", d = " << d);
          CHECK(std::abs(fused.y(0, t, d) - acc) < 2e-5);
        }
    }
    if (c.L == c.T) continue;
    // A NaN input on two threads: its channel's outputs from it on for L
    // steps are NaN, every other output stays as without it (the pair's channels by the direct form).
    const Result clean = run(c, data, LongConvMethod::fft, false, two_threads);
    LongData spoiled(c);
    spoiled.u = data.u, spoiled.h = data.h;
    const index_t t_nan = c.T / 2, d_nan = E + 3;
    spoiled.u(0, t_nan, d_nan) = std::numeric_limits<float>::quiet_NaN();
    const Result with_nan = run(c, spoiled, LongConvMethod::fft, false, two_threads);
    index_t nans = 0, off = 0;
    for (index_t t = 0; t < c.T; ++t)
      for (index_t d = 0; d < c.D; ++d) {
        const float v = with_nan.y(0, t, d);
        const bool reached = d == d_nan && t >= t_nan && t < t_nan + c.L;
        nans += std::isnan(v) ? 1 : 0;
        off += reached != std::isnan(v) || (!reached && std::abs(v - clean.y(0, t, d)) > 2e-5) ? 1 : 0;
      }
    CHECK(nans == c.L);
    CHECK(off == 0);
  }
  seqmix::long_conv_release_thread_scratch();  // ~25 MiB of scratch: not for the next cases
}

TEST_CASE("long_conv: the FFT scratch a thread keeps falls under its cap once a long call's is stale",
          "[long_conv]") {
  namespace sd = seqmix::detail;
  constexpr index_t E = sd::kFftElement;
  constexpr std::size_t cap = sd::kLongConvScratchKeepBytes;
  sd::LongConvFftScratchPool& pool = sd::LongConvFftScratchPool::local();
  const auto kept_bytes = [&] { return pool.held_floats() * sizeof(float); };
  seqmix::long_conv_release_thread_scratch();  // what earlier cases kept
  // A short call (skip, bias, a state, two batch rows) before and after the long one.
  const LongCase small{2, 300, 37, 200, 37, 0, true, true, true, 41};
  const LongData small_data(small);
  const Result before = run(small, small_data, LongConvMethod::fft, false, seqmix::serial_executor());
  // The long call: one thread walks its 5 blocks of pairs at once (a wide walk,
  // long_conv_plain_walk_width), a signal and a filter spectrum per block, N floats of E each: N
  // the shortest at which 4 blocks' scratch passes the cap (131072 with AVX-512), T + min(L, T) - 1 = N.
  index_t N = 4;
  while (static_cast<std::size_t>(8 * N * E) * sizeof(float) <= cap) N *= 2;
  const LongCase big{1, N / 2 + 1, 4 * E + 1, 2, 4 * E + 1, 0, false, false, false, 42};
  INFO("long call " << big.describe() << ", cap " << cap << " bytes");
  const LongData big_data(big);
  run(big, big_data, LongConvMethod::fft, false, seqmix::serial_executor());
  const std::size_t after_big = kept_bytes();
  REQUIRE(after_big > cap);
  // Repeated, it reuses its scratch: nothing more is kept.
  run(big, big_data, LongConvMethod::fft, false, seqmix::serial_executor());
  CHECK(kept_bytes() == after_big);
  // Short calls take scratch of their own size, so the long call's ages: kept while it is
  // recent, freed by the first call that finds it stale.
  for (std::uint64_t i = 0; i < sd::kLongConvScratchStaleCalls; ++i) {
    const Result again = run(small, small_data, LongConvMethod::fft, false, seqmix::serial_executor());
    INFO("short call " << i);
    st::require_close("y", again.y.cview(), before.y.cview(), 0.0);
  }
  CHECK(kept_bytes() > cap);
  const Result last = run(small, small_data, LongConvMethod::fft, false, seqmix::serial_executor());
  CHECK(kept_bytes() <= cap);
  CHECK(kept_bytes() > 0);  // the short call's own scratch stays
  st::require_close("y (after the long call's scratch was freed)", last.y.cview(), before.y.cview(), 0.0);
  st::require_close("final_state", last.final_state.cview(), before.final_state.cview(), 0.0);
}

TEST_CASE("long_conv: a small scratch untaken for 17 calls stays beside a large recent one",
          "[long_conv]") {
  // Only stale scratch counts against the bound: h3_run at P = 64 makes 16 diagonal calls
  // between two shift calls, and a bound on all kept bytes freed the shift's scratch each time.
  namespace sd = seqmix::detail;
  constexpr index_t E = sd::kFftElement;
  sd::LongConvFftScratchPool& pool = sd::LongConvFftScratchPool::local();
  const auto kept_bytes = [&] { return pool.held_floats() * sizeof(float); };
  seqmix::long_conv_release_thread_scratch();
  // A scratch over the bound (one walk of 4 blocks, as in the case above), then a short call's,
  // which leaves the large one alone and makes its own.
  index_t N = 4;
  while (static_cast<std::size_t>(8 * N * E) * sizeof(float) <= sd::kLongConvScratchKeepBytes) N *= 2;
  const LongCase big{1, N / 2 + 1, 4 * E, 2, 4 * E, 0, false, false, false, 44};
  const LongData big_data(big);
  run(big, big_data, LongConvMethod::fft, false, seqmix::serial_executor());
  const LongCase small{1, 300, 37, 200, 37, 0, true, true, false, 43};
  const LongData small_data(small);
  const Result before = run(small, small_data, LongConvMethod::fft, false, seqmix::serial_executor());
  const std::size_t both = kept_bytes();
  REQUIRE(pool.held_scratches() == 2);
  REQUIRE(both > sd::kLongConvScratchKeepBytes);
  // The large one stays recent; the small one goes stale (17 calls untaken) but under the bound.
  // The calls between take the large scratch without the large call's cost: one walk of 5 blocks
  // at half its transform length needs 5/8 of its signals, over the half below which take()
  // leaves a scratch past the bound to the calls it was made for (the counts below show it was
  // taken, not made anew or grown); 0.6 of the large call's transforms each.
  const LongCase aging{1, N / 4 + 1, 5 * E, 2, 5 * E, 0, false, false, false, 45};
  const LongData aging_data(aging);
  for (std::uint64_t i = 0; i <= sd::kLongConvScratchStaleCalls; ++i)
    run(aging, aging_data, LongConvMethod::fft, false, seqmix::serial_executor());
  CHECK(pool.held_scratches() == 2);
  CHECK(kept_bytes() == both);
  const Result again = run(small, small_data, LongConvMethod::fft, false, seqmix::serial_executor());
  CHECK(pool.held_scratches() == 2);  // it took its own scratch back; nothing new was made
  CHECK(kept_bytes() == both);
  st::require_close("y", again.y.cview(), before.y.cview(), 0.0);
  seqmix::long_conv_release_thread_scratch();
}

TEST_CASE("long_conv: a non-finite input reaches only the outputs that read it", "[long_conv]") {
  const LongCase c{1, 200, 20, 200, 20, 0, false, false, false, 31};
  LongData data(c);
  data.u(0, 120, 3) = std::numeric_limits<float>::quiet_NaN();
  data.u(0, 50, 17) = std::numeric_limits<float>::infinity();
  const Result ref = run(c, data, LongConvMethod::automatic, true, seqmix::serial_executor());
  for (LongConvMethod method : {LongConvMethod::direct, LongConvMethod::fft}) {
    const Result got = run(c, data, method, false, seqmix::serial_executor());
    for (index_t t = 0; t < c.T; ++t)
      for (index_t d = 0; d < c.D; ++d) {
        const bool reached = (d == 3 && t >= 120) || (d == 17 && t >= 50);
        INFO("method " << int(method) << " t=" << t << " d=" << d);
        REQUIRE(std::isfinite(got.y(0, t, d)) == !reached);
        if (!reached) REQUIRE(std::abs(got.y(0, t, d) - ref.y(0, t, d)) < 1e-5);
      }
  }
}

TEST_CASE("long_conv: bad arguments are refused before any write", "[long_conv]") {
  const index_t B = 2, T = 16, D = 8, L = 5;
  Tensor<float, 3> u = st::random_tensor<3>({B, T, D}, 1), y({B, T, D}), state({B, L - 1, D});
  Tensor<float, 2> h = st::random_tensor<2>({L, D}, 2), h3({L, 3}), empty({0, D});
  Tensor<float, 3> wrong_y({B, T + 1, D}), wrong_state({B, L, D});
  y.fill(7.f);
  const auto untouched = [&] {
    for (float v : y) REQUIRE(v == 7.f);
  };
  for (LongConvMethod m : {LongConvMethod::automatic, LongConvMethod::direct, LongConvMethod::fft}) {
    const seqmix::LongConvOptions opt{LongConvDirection::causal, m};
    st::require_shape_error("filter", [&] { seqmix::long_conv({u.view(), h3.view()}, {y.view()}, opt); });
    st::require_shape_error("filter", [&] { seqmix::long_conv({u.view(), empty.view()}, {y.view()}, opt); });
    st::require_shape_error("y", [&] { seqmix::long_conv({u.view(), h.view()}, {wrong_y.view()}, opt); });
    st::require_shape_error("final_state",
                            [&] { seqmix::long_conv({u.view(), h.view()}, {y.view(), wrong_state.view()}, opt); });
    st::require_shape_error("filter_backward",
                            [&] { seqmix::long_conv({u.view(), h.view(), h.view()}, {y.view()}, opt); });
    st::require_shape_error("filter_backward", [&] {
      seqmix::long_conv({u.view(), h.view()}, {y.view()}, {LongConvDirection::bidirectional, m});
    });
    st::require_shape_error("initial_state", [&] {
      seqmix::long_conv({u.view(), h.view(), h.view(), {}, {}, state.view()}, {y.view()},
                        {LongConvDirection::bidirectional, m});
    });
    st::require_shape_error("y", [&] { seqmix::long_conv({u.view(), h.view()}, {u.view()}, opt); });
    Tensor<float, 2> bad = h;
    bad(3, 5) = std::numeric_limits<float>::quiet_NaN();
    st::require_shape_error("filter", [&] { seqmix::long_conv({u.view(), bad.view()}, {y.view()}, opt); });
    bad(3, 5) = std::numeric_limits<float>::infinity();
    st::require_shape_error("filter", [&] { seqmix::long_conv({u.view(), bad.view()}, {y.view()}, opt); });
    untouched();
  }
  st::require_shape_error("options.method",
                          [&] { seqmix::long_conv({u.view(), h.view()}, {y.view()}, {{}, static_cast<LongConvMethod>(7)}); });
  // The step.
  Tensor<float, 2> y1({B, D}), u1 = st::random_tensor<2>({B, D}, 3);
  y1.fill(7.f);
  st::require_shape_error("state", [&] { seqmix::long_conv_step({u1.view(), h.view()}, {y1.view(), wrong_state.view()}); });
  st::require_shape_error("filter", [&] { seqmix::long_conv_step({u1.view(), h3.view()}, {y1.view(), state.view()}); });
  Tensor<float, 2> bad = h;
  bad(0, 0) = std::numeric_limits<float>::quiet_NaN();
  st::require_shape_error("filter", [&] { seqmix::long_conv_step({u1.view(), bad.view()}, {y1.view(), state.view()}); });
  for (float v : y1) REQUIRE(v == 7.f);
  for (float v : state) REQUIRE(v == 0.f);
}

}  // namespace

TEST_CASE("long_conv: the FFT form split for 64 threads matches the reference", "[long_conv]") {
  // More than two threads and too few full blocks: narrow blocks (simd::kWidth channels, one per
  // lane), ragged and odd channel counts, fewer channels than a vector, shared heads, both
  // directions, a state, two batch rows, and an N of 16384 (transforms above the cache block).
  // The last case's transform is N = 16384 (T + L - 1 = 8999 rounded up, no state). Under the
  // sanitizers its reference's T L D / 2 multiply-adds dominated the test, so there it is a long
  // input with a short filter of the same N (T + L - 1 = 8299 rounds up to 16384 too), the same
  // 20 channels (so the same narrow and full block counts) and options.
  const bool small = st::small_test_scale();
  const LongCase cases[] = {{1, 300, 100, 300, 100, 0, true, true, true, 41},
                            {2, 200, 37, 200, 37, 90, false, true, false, 42},
                            {1, 100, 12, 100, 12, 0, true, false, true, 43},
                            {1, 150, 64, 150, 16, 0, false, false, true, 44},
                            {1, 64, 768, 64, 768, 0, true, true, false, 45},
                            {1, small ? 8200 : 6000, 20, small ? 100 : 3000, 20, 0, false, true, false, 46}};
  for (const LongCase& c : cases) {
    INFO(c.describe());
    const LongData data(c);
    const Result ref = run(c, data, LongConvMethod::automatic, true, seqmix::serial_executor());
    for (int threads : {1, 2, 64}) {
      INFO("threads " << threads);
      st::CountingExecutor ex(threads);
      const Result got = run(c, data, LongConvMethod::fft, false, ex);
      st::require_close("y", got.y.cview(), ref.y.cview(), 2e-5);
      if (c.Lb == 0) st::require_close("final_state", got.final_state.cview(), ref.final_state.cview(), 0.0);
      // At 64 threads, when narrow blocks would fit: a causal call splits its full blocks into
      // passes, the last of pieces per block (test_long_conv_grain.cpp), a bidirectional one
      // walks a narrow block per task; one task per full block and segment when a short filter's
      // segments finish sooner (test_long_conv_grain.cpp); at two threads
      // the full blocks' walks of up to 4 blocks as before (parallel_for makes at most 4 tasks
      // per thread). The last run is the FFT's (a filter's check may run before it).
      const index_t W = seqmix::simd::kWidth, narrow = (c.D + W - 1) / W, full = (c.D + 2 * W - 1) / (2 * W);
      const index_t tasks = ex.runs().empty() ? 1 : ex.runs().back().tasks;
      const seqmix::detail::LongConvDims dims{c.B, c.T, c.D, c.L, c.Lb, c.G};
      const index_t segments = seqmix::detail::long_conv_fft_segments(dims, c.state, threads).count;
      if (threads == 64 && segments > 1) CHECK(tasks == full * segments);
      if (threads == 64 && segments == 1 && narrow > full && narrow <= 64) {
        const index_t N = seqmix::detail::long_conv_fft_length(dims, c.state);
        const index_t pieces = c.Lb == 0 ? seqmix::detail::long_conv_fft_split_pieces(c.B, full, narrow, N, 64) : 0;
        CHECK(tasks == (pieces > 0 ? std::min<index_t>(c.B * full * pieces, 256) : narrow));
      }
      if (threads == 2 && c.D == 768)
        CHECK(tasks == std::min<index_t>(768 / (2 * W) / seqmix::detail::kLongConvFftWalkBlocks, 8));
    }
  }
}

TEST_CASE("long_conv: a non-finite filter element is refused wherever it sits in a row", "[long_conv]") {
  // The finite check reads contiguous rows a vector at a time: elements in the vectors, in the
  // scalar tail past them, and a view whose rows lie further apart than their length.
  const index_t T = 20, D = 37, L = 9;
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, D}, 5);
  const Tensor<float, 2> h = st::random_tensor<2>({L, D}, 6), wide = st::random_tensor<2>({L, 2 * D}, 7);
  Tensor<float, 3> y({1, T, D});
  seqmix::long_conv({u.view(), h.view()}, {y.view()});
  seqmix::long_conv({u.view(), wide.view().slice(1, 0, D)}, {y.view()});
  for (const index_t column : {index_t{0}, index_t{17}, D - 1})
    for (const float value : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()}) {
      INFO("column " << column << " value " << value);
      Tensor<float, 2> bad = h;
      bad(L - 1, column) = value;
      st::require_shape_error("filter", [&] { seqmix::long_conv({u.view(), bad.view()}, {y.view()}); });
    }
}
