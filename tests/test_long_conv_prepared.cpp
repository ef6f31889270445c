// long_conv with a prepared filter spectrum (LongConvFilterSpectrum): prepared == unprepared ==
// reference over ragged shapes, both directions, states, shared heads and thread counts; one
// spectrum reused across calls of several T and batch sizes; a spectrum that does not serve the
// call refused before any write; hyena with prepared spectra per order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>
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

struct PreparedCase {
  index_t B, T, D, L, G, Lb;  // Lb > 0: bidirectional
  bool skip, state, reverse;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " L=" << L << " G=" << G << " Lb=" << Lb << " skip=" << skip
      << " state=" << state << " reverse=" << reverse << " seed=" << seed;
    return s.str();
  }
  LongConvDirection direction() const { return Lb > 0 ? LongConvDirection::bidirectional : LongConvDirection::causal; }
  seqmix::LongConvSpectrumShape spectrum_shape() const { return {D, T, direction(), state}; }
};

struct PreparedData {
  Tensor<float, 3> u, state;
  Tensor<float, 2> h, hb;
  Tensor<float, 1> skip, bias;

  explicit PreparedData(const PreparedCase& c)
      : u(st::random_tensor<3>({c.B, c.T, c.D}, c.seed)),
        state(st::random_tensor<3>({c.B, c.L - 1, c.D}, c.seed + 1)),
        h(st::random_tensor<2>({c.L, c.G}, c.seed + 2, -1.f / std::sqrt(float(c.L)), 1.f / std::sqrt(float(c.L)))),
        hb(st::random_tensor<2>({std::max<index_t>(c.Lb, 1), c.G}, c.seed + 3, -0.1f, 0.1f)),
        skip(st::random_tensor<1>({c.D}, c.seed + 4)),
        bias(st::random_tensor<1>({c.D}, c.seed + 5)) {}

  seqmix::LongConvInputs inputs(const PreparedCase& c) const {
    seqmix::LongConvInputs in{u.view(), h.view()};
    if (c.Lb > 0) in.filter_backward = hb.view();
    if (c.skip) in.skip = skip.view(), in.bias = bias.view();
    if (c.state) in.initial_state = state.view();
    return in;
  }
  seqmix::ConstView<float, 2> backward(const PreparedCase& c) const {
    return c.Lb > 0 ? hb.cview() : seqmix::ConstView<float, 2>();
  }
};

seqmix::LongConvOptions options_of(const PreparedCase& c, LongConvMethod method) {
  seqmix::LongConvOptions options{c.direction(), method};
  options.reverse = c.reverse;
  return options;
}

struct Result {
  Tensor<float, 3> y, final_state;
};

// spectrum null: the unprepared call (reference when use_reference).
Result run(const PreparedCase& c, const PreparedData& data, const seqmix::LongConvFilterSpectrum* spectrum,
           LongConvMethod method, bool use_reference, const seqmix::Executor& executor) {
  Result r{Tensor<float, 3>({c.B, c.T, c.D}), Tensor<float, 3>({c.B, c.L - 1, c.D})};
  seqmix::LongConvOutputs out{r.y.view()};
  if (c.Lb == 0) out.final_state = r.final_state.view();
  if (use_reference)
    seqmix::reference::long_conv(data.inputs(c), out, options_of(c, method));
  else if (spectrum == nullptr)
    seqmix::long_conv(data.inputs(c), out, options_of(c, method), executor);
  else
    seqmix::long_conv(data.inputs(c), *spectrum, out, options_of(c, method), executor);
  return r;
}

// Channel ranges [first, first + count) the wide-walk tests check against the reference: every
// channel, or under the sanitizers (small scale, where the reference's T L D multiply-adds cost
// as much as the calls) the first block's every lane, one channel (a different lane) of each
// middle block and the ragged last block whole. Channels are independent, and every block of a
// walk runs the same code at its own offset.
std::vector<std::pair<index_t, index_t>> checked_channels(index_t D) {
  const index_t E = seqmix::detail::kFftElement, blocks = (D + E - 1) / E;
  if (!st::small_test_scale() || blocks < 3) return {{0, D}};
  std::vector<std::pair<index_t, index_t>> ranges{{0, E}};
  for (index_t k = 1; k + 1 < blocks; ++k) ranges.push_back({k * E + (3 * k) % E, 1});
  ranges.push_back({(blocks - 1) * E, D - (blocks - 1) * E});
  return ranges;
}

// The reference's y on channels [first, first + count) of a case whose filters are per channel
// (G = D) or shared (G = 1).
Tensor<float, 3> reference_y(const PreparedCase& c, const PreparedData& data, index_t first, index_t count) {
  seqmix::LongConvInputs in = data.inputs(c);
  in.u = in.u.slice(2, first, count);
  if (c.G == c.D) {
    in.filter = in.filter.slice(1, first, count);
    if (in.filter_backward.has_value()) in.filter_backward = in.filter_backward.slice(1, first, count);
  }
  if (in.skip.has_value()) in.skip = in.skip.slice(0, first, count);
  if (in.bias.has_value()) in.bias = in.bias.slice(0, first, count);
  if (in.initial_state.has_value()) in.initial_state = in.initial_state.slice(2, first, count);
  Tensor<float, 3> y({c.B, c.T, count});
  seqmix::reference::long_conv(in, {y.view()}, options_of(c, LongConvMethod::automatic));
  return y;
}

// Each of `got` (name, y) against the reference on checked_channels.
void require_reference_y(const PreparedCase& c, const PreparedData& data,
                         std::initializer_list<std::pair<const char*, const Tensor<float, 3>*>> got) {
  for (const auto& [first, count] : checked_channels(c.D)) {
    INFO("channels " << first << " .. " << first + count - 1);
    const Tensor<float, 3> ref = reference_y(c, data, first, count);
    for (const auto& [name, y] : got) st::require_close(name, y->cview().slice(2, first, count), ref.cview(), 2e-5);
  }
}

// T = 1, T not a power of two, L < T, L = T, L > T with a state, odd D, D < 16, B > 1, shared
// heads, bidirectional, reverse.
const PreparedCase kCases[] = {
    {1, 1, 5, 1, 5, 0, true, false, false, 1},       {2, 100, 17, 100, 17, 0, true, false, false, 2},
    {1, 300, 12, 40, 12, 0, false, true, false, 3},  {2, 129, 64, 129, 16, 65, true, false, false, 4},
    {1, 77, 33, 200, 33, 0, true, true, false, 5},   {1, 1000, 31, 1000, 31, 50, false, false, false, 6},
    {3, 257, 48, 257, 48, 0, true, true, true, 7},   {1, 200, 37, 150, 37, 90, true, false, true, 8},
    {1, 3000, 20, 3000, 20, 0, false, false, false, 9}};

TEST_CASE("long_conv prepared: equals the unprepared form and the reference", "[long_conv]") {
  for (const PreparedCase& c : kCases) {
    INFO(c.describe());
    const PreparedData data(c);
    const Result ref = run(c, data, nullptr, LongConvMethod::automatic, true, seqmix::serial_executor());
    const Result plain = run(c, data, nullptr, LongConvMethod::fft, false, seqmix::serial_executor());
    const seqmix::LongConvFilterSpectrum spectrum(data.h.cview(), data.backward(c), c.spectrum_shape(),
                                                  st::two_thread_pool());
    CHECK(spectrum.min_tokens() <= c.T);
    CHECK(spectrum.max_tokens() == c.T);
    for (int threads : {1, 2, 64})
      for (LongConvMethod method : {LongConvMethod::fft, LongConvMethod::automatic}) {
        INFO("threads " << threads << " method " << int(method));
        st::CountingExecutor ex(threads);
        const Result got = run(c, data, &spectrum, method, false, ex);
        st::require_close("y", got.y.cview(), ref.y.cview(), 2e-5);
        st::require_close("y", got.y.cview(), plain.y.cview(), 2e-5);
        if (c.Lb == 0) st::require_close("final_state", got.final_state.cview(), ref.final_state.cview(), 0.0);
        // At 64 threads the FFT form walks narrow blocks (one per task) when they fit: their
        // spectra come from the prepared pair spectra.
        const index_t W = seqmix::simd::kWidth, narrow = (c.D + W - 1) / W, full = (c.D + 2 * W - 1) / (2 * W);
        if (threads == 64 && method == LongConvMethod::fft && narrow > full && narrow <= 64)
          CHECK(ex.runs().back().tasks == narrow);
      }
  }
}

TEST_CASE("long_conv prepared: walks of fewer blocks while a block's signal fits in cache", "[long_conv]") {
  // long_conv_prepared_walk_blocks: at most 2 MiB of signals per walk while one block's (N E
  // floats) fits in 4 MiB, else 4 blocks; the calls below run walks of 1 or 2 blocks (AVX-512:
  // N = 8192 two, 16384 one) over a ragged last block, two batch rows, skip and bias, a state.
  namespace sd = seqmix::detail;
  const index_t E = sd::kFftElement;
  for (index_t N = 8; N <= (index_t{1} << 20); N *= 2) {
    INFO("N = " << N);
    const index_t block = N * E * static_cast<index_t>(sizeof(float)), most = sd::long_conv_prepared_walk_blocks(N);
    CHECK(most >= 1);
    CHECK(most <= sd::kLongConvFftWalkBlocks);
    if (block > 2 * sd::kLongConvFftWalkCacheBytes) CHECK(most == sd::kLongConvFftWalkBlocks);
    if (block <= 2 * sd::kLongConvFftWalkCacheBytes && most > 1) CHECK(most * block <= sd::kLongConvFftWalkCacheBytes);
  }
  const bool small = st::small_test_scale();
  for (const PreparedCase& c : {PreparedCase{2, small ? 2100 : 4500, 3 * E + 5, 40, 3 * E + 5, 0, true, true, false, 21},
                                PreparedCase{1, 9000, 2 * E + 3, 9, 2 * E + 3, 0, false, false, true, 22}}) {
    INFO(c.describe());
    const PreparedData data(c);
    const Result ref = run(c, data, nullptr, LongConvMethod::automatic, true, seqmix::serial_executor());
    const seqmix::LongConvFilterSpectrum spectrum(data.h.cview(), data.backward(c), c.spectrum_shape());
    const index_t blocks = (c.D + E - 1) / E;
    const index_t per = sd::long_conv_fft_walk_blocks(blocks, 1, sd::long_conv_prepared_walk_blocks(spectrum.fft_length()));
    st::CountingExecutor ex(1);
    const Result got = run(c, data, &spectrum, LongConvMethod::fft, false, ex);
    st::require_close("y", got.y.cview(), ref.y.cview(), 2e-5);
    st::require_close("final_state", got.final_state.cview(), ref.final_state.cview(), 0.0);
    REQUIRE_FALSE(ex.runs().empty());  // two walks or more: parallel_for hands them to the executor
    CHECK(ex.runs().back().tasks == std::min<index_t>((blocks + per - 1) / per, 4));
  }
}

TEST_CASE("long_conv prepared: wide walks once a block's signal stays in no cache", "[long_conv]") {
  // long_conv_prepared_walk_width: above twice kLongConvFftWalkCacheBytes per block, walks of up
  // to kLongConvFftWideWalkBytes, none longer than a thread's share, blocks spread evenly; below, the
  // cache-sized walks as before.
  namespace sd = seqmix::detail;
  const index_t E = sd::kFftElement;
  const index_t wide_N = st::long_conv_first_wide_N();
  st::check_wide_walk_widths(
      [](index_t blocks, int threads, index_t N) { return sd::long_conv_prepared_walk_width(blocks, threads, N); },
      [](index_t blocks, int threads, index_t N) {
        return sd::long_conv_fft_walk_blocks(blocks, threads, sd::long_conv_prepared_walk_blocks(N));
      },
      1);  // signals only: the spectrum is the caller's
  // Calls on wide walks (6 blocks of the first wide N in one walk on one thread, 3 per walk on two,
  // more than the 4 of a cache-sized walk): ragged last block, skip and bias, a state, two batch rows.
  const index_t T = wide_N / 2 + 100;
  for (const PreparedCase& c : {PreparedCase{1, T, 5 * E + 3, 8, 5 * E + 3, 0, true, false, false, 31},
                                PreparedCase{2, T + 50, 5 * E + 3, 5, 5 * E + 3, 0, true, true, false, 32}}) {
    INFO(c.describe());
    const PreparedData data(c);
    const seqmix::LongConvFilterSpectrum spectrum(data.h.cview(), data.backward(c), c.spectrum_shape());
    REQUIRE(spectrum.fft_length() == wide_N);
    REQUIRE(sd::long_conv_prepared_walk_width(6, 1, wide_N) == 6);
    const Result got = run(c, data, &spectrum, LongConvMethod::fft, false, seqmix::serial_executor());
    // The final state: the last L - 1 inputs, whatever the form (no reference needed).
    for (index_t b = 0; b < c.B; ++b)
      for (index_t s = 0; s + 1 < c.L; ++s)
        for (index_t d = 0; d < c.D; ++d) REQUIRE(got.final_state(b, s, d) == data.u(b, c.T - c.L + 1 + s, d));
    const Result two = run(c, data, &spectrum, LongConvMethod::fft, false, st::two_thread_pool());
    require_reference_y(c, data, {{"y", &got.y}, {"y (two threads)", &two.y}});
    // The calling thread keeps the walks' scratch until it is released; a call after the
    // release makes it again and gives the same result.
    sd::LongConvFftScratchPool& pool = sd::LongConvFftScratchPool::local();
    CHECK(pool.held_floats() >= static_cast<std::size_t>(6 * wide_N * E));
    seqmix::long_conv_release_thread_scratch();
    CHECK(pool.held_floats() == 0);
    const Result again = run(c, data, &spectrum, LongConvMethod::fft, false, seqmix::serial_executor());
    st::require_close("y (after the release)", again.y.cview(), got.y.cview(), 0.0);
  }
}

TEST_CASE("long_conv prepared: wide walks share one upper half when the window fits the lower half",
          "[long_conv]") {
  // long_conv_walk_layout: a prepared wide walk that streams and whose window and outputs lie
  // below N/2 keeps only the lower halves per block, the upper half one buffer for all blocks,
  // and stores with non-temporal stores (the gather's signals, the scatter's y: rows of y not
  // aligned to the vector at D = 5 E + 3, so both store paths run). Causal (T + L - 1 = N/2 + 1)
  // and bidirectional (T + Lb - 1 = N/2 + 1), ragged last block, skip and bias, two batch rows in
  // the second. Short filters: the reference's T (L + Lb) D multiply-adds were two thirds of the
  // test under the sanitizers with L = Lb = 30.
  namespace sd = seqmix::detail;
  const index_t E = sd::kFftElement;
  const index_t wide_N = st::long_conv_first_wide_N();
  const index_t T = wide_N / 2 - 4;
  for (const PreparedCase& c : {PreparedCase{1, T, 5 * E + 3, 6, 5 * E + 3, 0, true, false, false, 33},
                                PreparedCase{2, T, 5 * E + 3, 4, 5 * E + 3, 6, true, false, false, 34}}) {
    INFO(c.describe());
    const PreparedData data(c);
    const seqmix::LongConvFilterSpectrum spectrum(data.h.cview(), data.backward(c), c.spectrum_shape());
    REQUIRE(spectrum.fft_length() == wide_N);
    REQUIRE(sd::long_conv_prepared_walk_width(6, 1, wide_N) == 6);
    const sd::LongConvWalk one_thread{0, 6, c.D, E};
    const sd::LongConvWalkLayout layout = sd::long_conv_walk_layout(one_thread, wide_N, c.T, true);
    REQUIRE(layout.stream);
    REQUIRE(layout.halves);
    CHECK(layout.floats(one_thread, wide_N) < static_cast<std::size_t>(6 * wide_N * E));
    // Not with a window past N/2, nor for walks that transform their filters in the signals.
    CHECK_FALSE(sd::long_conv_walk_layout(one_thread, wide_N, wide_N / 2 + 1, true).halves);
    CHECK_FALSE(sd::long_conv_walk_layout(one_thread, wide_N, c.T, false).halves);
    const Result got = run(c, data, &spectrum, LongConvMethod::fft, false, seqmix::serial_executor());
    const Result two = run(c, data, &spectrum, LongConvMethod::fft, false, st::two_thread_pool());
    const Result plain = run(c, data, nullptr, LongConvMethod::fft, false, seqmix::serial_executor());
    require_reference_y(c, data, {{"y", &got.y}, {"y (two threads)", &two.y}, {"y (without a spectrum)", &plain.y}});
  }
  seqmix::long_conv_release_thread_scratch();
}

TEST_CASE("long_conv prepared: one spectrum serves several T and batch sizes", "[long_conv]") {
  const index_t D = 20, L = 300, Tmax = 1000;
  const PreparedCase made{1, Tmax, D, L, D, 0, true, false, false, 11};
  const PreparedData filters(made);
  const seqmix::LongConvFilterSpectrum spectrum(filters.h.cview(), {}, made.spectrum_shape());
  // N = 2048 >= T + 300 - 1 from T = 726 on (1024 below).
  REQUIRE(spectrum.fft_length() == 2048);
  REQUIRE(spectrum.min_tokens() == 726);
  for (index_t B : {1, 3})
    for (index_t T : {726, 901, 1000}) {
      PreparedCase c = made;
      c.B = B, c.T = T, c.seed = static_cast<std::uint64_t>(20 + B * T);
      INFO(c.describe());
      PreparedData data(c);
      data.h = filters.h;  // the filter the spectrum was made from
      const Result ref = run(c, data, nullptr, LongConvMethod::automatic, true, seqmix::serial_executor());
      for (int call = 0; call < 2; ++call) {
        const Result got =
            run(c, data, &spectrum, LongConvMethod::fft, false, call ? st::two_thread_pool() : seqmix::serial_executor());
        st::require_close("y", got.y.cview(), ref.y.cview(), 2e-5);
      }
    }
}

TEST_CASE("long_conv prepared: a spectrum that does not serve the call is refused before any write",
          "[long_conv]") {
  const index_t B = 2, T = 100, D = 16, L = 100;
  const Tensor<float, 3> u = st::random_tensor<3>({B, T, D}, 1), state = st::random_tensor<3>({B, L - 1, D}, 5);
  const Tensor<float, 3> u_long = st::random_tensor<3>({B, 2 * T, D}, 1), u_short = st::random_tensor<3>({B, 30, D}, 1);
  const Tensor<float, 3> u_wide = st::random_tensor<3>({B, T, 2 * D}, 1);
  const Tensor<float, 2> h = st::random_tensor<2>({L, D}, 2, -0.1f, 0.1f), h_short = st::random_tensor<2>({L - 1, D}, 3);
  const Tensor<float, 2> h_heads = st::random_tensor<2>({L, D / 4}, 4), h_wide = st::random_tensor<2>({L, 2 * D}, 2);
  Tensor<float, 3> y({B, T, D}), y_long({B, 2 * T, D}), y_short({B, 30, D}), y_wide({B, T, 2 * D});
  const seqmix::LongConvFilterSpectrum spectrum(h.cview(), {}, {D, T});
  const seqmix::LongConvFilterSpectrum bidirectional(h.cview(), h.cview(), {D, T, LongConvDirection::bidirectional});
  const seqmix::LongConvFilterSpectrum stateful(h.cview(), {}, {D, T, LongConvDirection::causal, true});
  const seqmix::LongConvFilterSpectrum empty;
  for (Tensor<float, 3>* out : {&y, &y_long, &y_short, &y_wide}) out->fill(7.f);
  const auto untouched = [&] {
    for (const Tensor<float, 3>* out : {&y, &y_long, &y_short, &y_wide})
      for (float v : *out) REQUIRE(v == 7.f);
  };
  for (LongConvMethod m : {LongConvMethod::automatic, LongConvMethod::direct, LongConvMethod::fft}) {
    const seqmix::LongConvOptions causal{LongConvDirection::causal, m}, both{LongConvDirection::bidirectional, m};
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u.view(), h.view()}, empty, {y.view()}, causal); });
    st::require_shape_error("spectrum",
                            [&] { seqmix::long_conv({u_wide.view(), h_wide.view()}, spectrum, {y_wide.view()}, causal); });
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u.view(), h_short.view()}, spectrum, {y.view()}, causal); });
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u.view(), h_heads.view()}, spectrum, {y.view()}, causal); });
    st::require_shape_error("spectrum",
                            [&] { seqmix::long_conv({u.view(), h.view(), h.view()}, spectrum, {y.view()}, both); });
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u.view(), h.view()}, bidirectional, {y.view()}, causal); });
    st::require_shape_error("spectrum", [&] {
      seqmix::long_conv({u.view(), h.view(), {}, {}, {}, state.cview()}, spectrum, {y.view()}, causal);
    });
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u.view(), h.view()}, stateful, {y.view()}, causal); });
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u_long.view(), h.view()}, spectrum, {y_long.view()}, causal); });
    st::require_shape_error("spectrum", [&] { seqmix::long_conv({u_short.view(), h.view()}, spectrum, {y_short.view()}, causal); });
    // The call's own checks still come first.
    st::require_shape_error("y", [&] { seqmix::long_conv({u.view(), h.view()}, spectrum, {y_long.view()}, causal); });
    untouched();
  }
  // Making one validates the filters like a call.
  Tensor<float, 2> bad = h;
  bad(7, 3) = std::nanf("");
  st::require_shape_error("filter", [&] { seqmix::LongConvFilterSpectrum(bad.cview(), {}, {D, T}); });
  st::require_shape_error("filter", [&] { seqmix::LongConvFilterSpectrum(h_heads.cview(), {}, {D + 1, T}); });
  st::require_shape_error("filter_backward", [&] { seqmix::LongConvFilterSpectrum(h.cview(), h.cview(), {D, T}); });
  st::require_shape_error("shape.max_tokens", [&] { seqmix::LongConvFilterSpectrum(h.cview(), {}, {D, 0}); });
}

TEST_CASE("hyena with prepared filter spectra equals the reference", "[long_conv]") {
  // Order 2 and 3, T not a power of two, L < T and L = T, odd D, a state, reverse, B = 2.
  const struct {
    index_t N, B, T, D, L;
    bool state, reverse;
  } cases[] = {{2, 2, 300, 37, 300, false, false}, {3, 1, 129, 16, 40, true, false}, {2, 1, 77, 9, 77, false, true}};
  for (const auto& c : cases) {
    INFO("N=" << c.N << " B=" << c.B << " T=" << c.T << " D=" << c.D << " L=" << c.L << " state=" << c.state
              << " reverse=" << c.reverse);
    const Tensor<float, 3> v = st::random_tensor<3>({c.B, c.T, c.D}, 1);
    const Tensor<float, 4> x = st::random_tensor<4>({c.N, c.B, c.T, c.D}, 2);
    const float scale = 1.f / std::sqrt(float(c.L));
    const Tensor<float, 3> h = st::random_tensor<3>({c.N, c.L, c.D}, 3, -scale, scale);
    const Tensor<float, 2> skip = st::random_tensor<2>({c.N, c.D}, 4);
    const Tensor<float, 4> state = st::random_tensor<4>({c.N, c.B, c.L - 1, c.D}, 5);
    seqmix::HyenaInputs in{v.view(), x.view(), h.view(), skip.view()};
    if (c.state) in.initial_state = state.view();
    seqmix::HyenaOptions options;
    options.reverse = c.reverse;
    Tensor<float, 3> ref({c.B, c.T, c.D}), got({c.B, c.T, c.D});
    seqmix::reference::hyena(in, {ref.view()}, options);
    const std::vector<seqmix::LongConvFilterSpectrum> spectra =
        seqmix::hyena_filter_spectra(h.view(), {c.D, c.T, LongConvDirection::causal, c.state});
    for (int threads : {1, 64}) {
      st::CountingExecutor ex(threads);
      seqmix::hyena(in, spectra, {got.view()}, options, ex);
      st::require_close("y", got.cview(), ref.cview(), 5e-5);
    }
    // Spectra for another T, or too few, are refused before y is written.
    const std::vector<seqmix::LongConvFilterSpectrum> other =
        seqmix::hyena_filter_spectra(h.view(), {c.D, 4 * c.T, LongConvDirection::causal, c.state});
    got.fill(7.f);
    st::require_shape_error("spectra[0]", [&] { seqmix::hyena(in, other, {got.view()}, options); });
    const std::vector<seqmix::LongConvFilterSpectrum> fewer(spectra.begin(), spectra.end() - 1);
    st::require_shape_error("spectra", [&] { seqmix::hyena(in, fewer, {got.view()}, options); });
    for (float value : got) REQUIRE(value == 7.f);
  }
}

}  // namespace
