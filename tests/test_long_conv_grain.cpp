// long_conv's split for many threads (docs/parallel_grain.md, long_conv): a short filter's
// overlap-save segments against the reference (with a state, skip, bias, two batch rows and
// non-finite inputs near the segments' edges), the task counts an executor claiming 64 threads
// gets, the filter's finite check run as a parallel pass, and the cached FFT plans under
// concurrent callers.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sd = seqmix::detail;
namespace st = seqmix::testing;

// A causal call's arguments: u [B,T,D], filter [L,D] scaled by 1/sqrt(L), state, skip, bias.
struct Call {
  Tensor<float, 3> u, state;
  Tensor<float, 2> h;
  Tensor<float, 1> skip, bias;

  Call(index_t B, index_t T, index_t D, index_t L, std::uint64_t seed)
      : u(st::random_tensor<3>({B, T, D}, seed)),
        state(st::random_tensor<3>({B, L - 1, D}, seed + 1)),
        h(st::random_tensor<2>({L, D}, seed + 2, -1.f / std::sqrt(float(L)), 1.f / std::sqrt(float(L)))),
        skip(st::random_tensor<1>({D}, seed + 3)),
        bias(st::random_tensor<1>({D}, seed + 4)) {}

  seqmix::LongConvInputs inputs() const { return {u.view(), h.view(), {}, skip.view(), bias.view(), state.view()}; }
};

index_t pair_blocks(index_t D) { return (D + sd::kFftElement - 1) / sd::kFftElement; }

// The walks (tasks) long_conv_fft_run gives a whole-window call on `threads` threads without the
// split: its blocks (narrow or pairs) grouped by long_conv_fft_walk_blocks.
index_t walk_count(index_t D, int threads) {
  const index_t lanes = sd::long_conv_fft_block_lanes(D, threads), blocks = (D + lanes - 1) / lanes;
  const index_t per_walk = sd::long_conv_fft_walk_blocks(blocks, threads);
  return (blocks + per_walk - 1) / per_walk;
}

}  // namespace

TEST_CASE("long_conv: a short filter split for 64 threads runs in segments that match the reference", "[long_conv]") {
  // T = 2048, L = 64: segments of at least 8 (L-1) = 504 outputs, 3 of 683 (the last 682) on
  // 1024-point transforms instead of one 4096-point window. D = 100: a ragged last pair block.
  // Non-finite inputs: one in the last segment, one among the last rows of the first segment
  // (also the second segment's state rows), one in a state row of the call.
  const index_t B = 2, T = 2048, D = 100, L = 64;
  Call call(B, T, D, L, 7);
  call.u(1, 1500, 9) = std::numeric_limits<float>::quiet_NaN();
  call.u(0, 675, 40) = std::numeric_limits<float>::infinity();
  call.state(1, L - 3, 70) = -std::numeric_limits<float>::infinity();
  const sd::LongConvDims dims{B, T, D, L, 0, D};
  const sd::LongConvFftSegments segments = sd::long_conv_fft_segments(dims, true, 64);
  REQUIRE(segments.count == 3);
  CHECK(segments.length == 683);
  CHECK(segments.N == 1024);
  CHECK(sd::long_conv_fft_segments(dims, true, 2).count == 1);

  Tensor<float, 3> ref({B, T, D}), ref_state({B, L - 1, D});
  seqmix::reference::long_conv(call.inputs(), {ref.view(), ref_state.view()});
  for (int threads : {2, 64}) {
    INFO("threads " << threads);
    st::CountingExecutor ex(threads);
    Tensor<float, 3> y({B, T, D}), final_state({B, L - 1, D});
    seqmix::long_conv_fft(call.inputs(), {y.view(), final_state.view()}, {}, ex);
    // The runs: the FFT's tasks (the filter's check is one read on the caller at this size).
    REQUIRE(ex.runs().size() == 1);
    if (threads == 64) CHECK(ex.runs().front().tasks == pair_blocks(D) * 3);
    st::require_close("final_state", final_state.cview(), ref_state.cview(), 0.0);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) {
          // u[t0] reaches outputs t0 .. t0 + L - 1; state row L-3 is xs[-2], read by t < L - 2.
          const bool reached = (b == 1 && d == 9 && t >= 1500 && t < 1500 + L) ||
                               (b == 0 && d == 40 && t >= 675 && t < 675 + L) || (b == 1 && d == 70 && t < L - 2);
          INFO("b=" << b << " t=" << t << " d=" << d);
          REQUIRE(std::isfinite(y(b, t, d)) == !reached);
          if (!reached) REQUIRE(std::abs(y(b, t, d) - ref(b, t, d)) < 2e-5 * std::max(1.f, std::abs(ref(b, t, d))));
        }
  }
}

TEST_CASE("long_conv: narrow blocks with the filter packed beside the input match the reference", "[long_conv]") {
  // As many threads as narrow blocks (3 with AVX-512, so no split: long_conv_fft_split_pieces), a filter
  // as long as the input (no segments): narrow blocks, each transforming its
  // input (real parts) and filter (imaginary parts) at once. D = 40: a ragged last narrow block;
  // two batch rows (the filter reloaded per row), a state, skip and bias, a shared-head filter,
  // and a NaN input (its channel recomputed by the direct form in that row only).
  const index_t B = 2, T = 200, D = 40, L = 230;
  for (const index_t G : {D, index_t{5}}) {
    INFO("G " << G);
    Call call(B, T, D, L, 21);
    const Tensor<float, 2> h = st::random_tensor<2>({L, G}, 25, -0.07f, 0.07f);
    call.u(1, 120, 33) = std::numeric_limits<float>::quiet_NaN();
    seqmix::LongConvInputs in = call.inputs();
    in.filter = h.view();
    const int threads = static_cast<int>((D + seqmix::simd::kWidth - 1) / seqmix::simd::kWidth);
    REQUIRE(sd::long_conv_fft_segments({B, T, D, L, 0, G}, true, threads).count == 1);
    REQUIRE(sd::long_conv_fft_block_lanes(D, threads) == seqmix::simd::kWidth);
    REQUIRE(sd::long_conv_fft_split_pieces(B, pair_blocks(D), walk_count(D, threads), 512, threads) == 0);
    Tensor<float, 3> ref({B, T, D}), y({B, T, D});
    seqmix::reference::long_conv(in, {ref.view()});
    st::CountingExecutor ex(threads);
    seqmix::long_conv_fft(in, {y.view()}, {}, ex);
    CHECK(ex.runs().back().tasks == (D + seqmix::simd::kWidth - 1) / seqmix::simd::kWidth);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) {
          const bool reached = b == 1 && d == 33 && t >= 120;
          INFO("b=" << b << " t=" << t << " d=" << d);
          REQUIRE(std::isfinite(y(b, t, d)) == !reached);
          if (!reached) REQUIRE(std::abs(y(b, t, d) - ref(b, t, d)) < 2e-5 * std::max(1.f, std::abs(ref(b, t, d))));
        }
  }
}

// The runs a split call ends with (long_conv_fft_split_run): pieces, parts, parts, pieces per
// signal, each run capped at 4 tasks per thread by parallel_for.
std::vector<index_t> split_runs(index_t signals, index_t pieces, int threads) {
  const auto capped = [&](index_t n) { return std::min<index_t>(n, 4 * index_t{threads}); };
  const index_t parts = sd::kLongConvSplitParts;
  return {capped(signals * pieces), capped(signals * parts), capped(signals * parts), capped(signals * pieces)};
}

std::vector<index_t> last_runs(const st::CountingExecutor& ex, std::size_t count) {
  std::vector<index_t> sizes;
  for (std::size_t i = ex.runs().size() >= count ? ex.runs().size() - count : 0; i < ex.runs().size(); ++i)
    sizes.push_back(ex.runs()[i].tasks);
  return sizes;
}

TEST_CASE("long_conv: a long filter split into passes for many threads matches the reference", "[long_conv]") {
  // Whole windows (no segments) split at 64, 48 and 7 claimed threads: blocks of pairs cut into
  // pieces and parts (long_conv_fft_split_run). Ragged D (a last block of 4 or 8 channels) and T,
  // L above, equal to and below T, a state, skip and bias, two batch rows (the filter spectrum
  // made by row 0's tasks), a shared-head filter, and a NaN input (its pair recomputed by the
  // direct form in that row only).
  struct Shape {
    index_t B, T, D, L, G;
    bool state;
  };
  const Shape shapes[] = {{2, 300, 100, 300, 100, true}, {1, 1000, 40, 700, 40, false},
                          {2, 77, 40, 130, 5, false}, {1, 513, 100, 513, 4, true}};
  for (const Shape& shape : shapes) {
    const index_t B = shape.B, T = shape.T, D = shape.D, L = shape.L;
    Call call(B, T, D, L, 31);
    const Tensor<float, 2> h = st::random_tensor<2>({L, shape.G}, 33, -1.f / std::sqrt(float(L)), 1.f / std::sqrt(float(L)));
    call.u(B - 1, T / 2, D - 3) = std::numeric_limits<float>::quiet_NaN();
    seqmix::LongConvInputs in = call.inputs();
    in.filter = h.view();
    if (!shape.state) in.initial_state = {};
    Tensor<float, 3> ref({B, T, D});
    seqmix::reference::long_conv(in, {ref.view()});
    const sd::LongConvDims dims{B, T, D, L, 0, shape.G};
    for (int threads : {64, 48, 7}) {
      INFO("B " << B << " T " << T << " D " << D << " L " << L << " G " << shape.G << " threads " << threads);
      REQUIRE(sd::long_conv_fft_segments(dims, shape.state, threads).count == 1);
      const index_t signals = B * pair_blocks(D), N = sd::long_conv_fft_length(dims, shape.state);
      // The walks the split replaces; at 7 threads D = 100 has 7 narrow blocks (AVX-512) or 13
      // blocks of pairs (SSE2), which fill them: no split there.
      const index_t walks = walk_count(D, threads);
      const index_t pieces = sd::long_conv_fft_split_pieces(B, pair_blocks(D), walks, N, threads);
      CHECK((pieces > 0) == (threads > 7 || D == 40));
      st::CountingExecutor ex(threads);
      Tensor<float, 3> y({B, T, D});
      seqmix::long_conv_fft(in, {y.view()}, {}, ex);
      if (pieces > 0)
        CHECK(last_runs(ex, 4) == split_runs(signals, pieces, threads));
      else
        CHECK(ex.runs().back().tasks == walks);
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t)
          for (index_t d = 0; d < D; ++d) {
            const bool reached = b == B - 1 && d == D - 3 && t >= T / 2;
            INFO("b=" << b << " t=" << t << " d=" << d);
            REQUIRE(std::isfinite(y(b, t, d)) == !reached);
            if (!reached) REQUIRE(std::abs(y(b, t, d) - ref(b, t, d)) < 2e-5 * std::max(1.f, std::abs(ref(b, t, d))));
          }
    }
  }
}

TEST_CASE("long_conv: a bidirectional call at many threads keeps its walks and matches the reference", "[long_conv]") {
  // The split is causal only (the backward taps are folded into the filter spectrum of a walk).
  const index_t T = 300, D = 100, L = 300, Lb = 120;
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, D}, 41);
  const Tensor<float, 2> h = st::random_tensor<2>({L, D}, 42, -0.05f, 0.05f);
  const Tensor<float, 2> hb = st::random_tensor<2>({Lb, D}, 43, -0.05f, 0.05f);
  seqmix::LongConvOptions options;
  options.direction = seqmix::LongConvDirection::bidirectional;
  seqmix::LongConvInputs in{u.view(), h.view(), hb.view()};
  Tensor<float, 3> ref({1, T, D}), y({1, T, D});
  seqmix::reference::long_conv(in, {ref.view()}, options);
  st::CountingExecutor ex(64);
  seqmix::long_conv_fft(in, {y.view()}, options, ex);
  CHECK(ex.runs().back().tasks == (D + seqmix::simd::kWidth - 1) / seqmix::simd::kWidth);
  st::require_close("y", y.cview(), ref.cview(), 2e-5);
}

TEST_CASE("long_conv: the model shape's short filter splits into at least 64 tasks only past two threads", "[long_conv]") {
  // D = 768, T = 4096, L = 64 (tools/parallel_grain's row): no reference at this size, the plan only.
  const sd::LongConvDims dims{1, 4096, 768, 64, 0, 768};
  for (int threads : {1, 2}) CHECK(sd::long_conv_fft_segments(dims, false, threads).count == 1);
  const sd::LongConvFftSegments wide = sd::long_conv_fft_segments(dims, false, 64);
  CHECK(wide.count > 1);
  CHECK(pair_blocks(768) * wide.count >= 64);
  CHECK(wide.N < sd::long_conv_fft_length(dims, false));
  // A filter as long as the input, or a bidirectional call, keeps the whole window.
  CHECK(sd::long_conv_fft_segments({1, 4096, 768, 4096, 0, 768}, false, 64).count == 1);
  CHECK(sd::long_conv_fft_segments({1, 4096, 768, 64, 64, 768}, false, 64).count == 1);
}

TEST_CASE("long_conv: the model shape's long filter splits into passes of 192 tasks only past two threads", "[long_conv]") {
  // D = 768, T = L = 4096 (tools/parallel_grain's row), AVX-512: 24 blocks of pairs, 8 pieces
  // and 8 parts each at 64 threads (SSE2: 96 blocks of pairs, which fill 64 threads: no split);
  // one and two threads keep their walks (6 tasks of 4 blocks at two with AVX-512).
  const index_t T = 4096, D = 768, N = 8192;
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, D}, 51);
  const Tensor<float, 2> h = st::random_tensor<2>({T, D}, 52, -0.02f, 0.02f);
  Tensor<float, 3> y({1, T, D});
  const index_t pieces = sd::long_conv_fft_split_pieces(1, pair_blocks(D), walk_count(D, 64), N, 64);
  if (seqmix::simd::kWidth == 16) CHECK(pieces == 8);
  for (int threads : {1, 2}) CHECK(sd::long_conv_fft_split_pieces(1, pair_blocks(D), walk_count(D, threads), N, threads) == 0);
  st::CountingExecutor wide(64), two(2);
  seqmix::long_conv_fft({u.view(), h.view()}, {y.view()}, {}, wide);
  if (pieces > 0)
    CHECK(last_runs(wide, 4) == split_runs(pair_blocks(D), pieces, 64));
  else
    CHECK(wide.runs().back().tasks == walk_count(D, 64));
  seqmix::long_conv_fft({u.view(), h.view()}, {y.view()}, {}, two);
  CHECK(two.runs().back().tasks == std::min<index_t>(walk_count(D, 2), 8));
}

TEST_CASE("long_conv: the split stays under its scratch cap and falls back to the walks above it", "[long_conv]") {
  // The split holds every signal at once, (2B + 1) x blocks x N x E floats: 72 MiB at D = 768,
  // T = L = 4096 with AVX-512, 1.1 GiB at T = L = 65536 (N = 131072), growing with B. Above
  // kLongConvSplitMaxScratchBytes the walks run (plan only: no call at these sizes).
  const index_t E = sd::kFftElement, D = 768, blocks = pair_blocks(D);
  const auto bytes = [&](index_t B, index_t N) { return sd::long_conv_fft_split_scratch_floats(B, blocks, N) * sizeof(float); };
  CHECK(bytes(1, 8192) == static_cast<std::size_t>((3 * blocks * 8192 + blocks) * E) * sizeof(float));
  CHECK(bytes(1, 131072) > sd::kLongConvSplitMaxScratchBytes);
  CHECK(sd::long_conv_fft_split_pieces(1, blocks, walk_count(D, 64), 131072, 64) == 0);
  // Batch rows at T = 4096 (48 narrow walks with AVX-512): split while the scratch fits.
  for (index_t B = 1; B <= 64; ++B) {
    INFO("B " << B);
    CHECK((sd::long_conv_fft_split_pieces(B, blocks, 48, 8192, 64) > 0) == (bytes(B, 8192) <= sd::kLongConvSplitMaxScratchBytes));
  }
  if (seqmix::simd::kWidth == 16) {
    CHECK(sd::long_conv_fft_split_pieces(4, blocks, 48, 8192, 64) > 0);  // 216 MiB
    CHECK(sd::long_conv_fft_split_pieces(5, blocks, 48, 8192, 64) == 0);  // 264 MiB
  }
}

TEST_CASE("long_conv: the filter's finite check runs in row ranges and still names the element", "[long_conv]") {
  // L = 300, D = 256: ranges of 64 rows (64 KiB) at 64 threads, 5 of them; at 2 threads one read
  // on the caller (no run before the convolution's).
  const index_t T = 40, D = 256, L = 300;
  const Tensor<float, 3> u = st::random_tensor<3>({1, T, D}, 3);
  const Tensor<float, 2> h = st::random_tensor<2>({L, D}, 4, -0.05f, 0.05f);
  Tensor<float, 3> y({1, T, D});
  for (int threads : {2, 64}) {
    INFO("threads " << threads);
    st::CountingExecutor ex(threads);
    seqmix::long_conv({u.view(), h.view()}, {y.view()}, {}, ex);
    REQUIRE(!ex.runs().empty());
    if (threads == 64) CHECK(ex.runs().front().tasks == 5);
    if (threads == 2) CHECK(ex.runs().size() == 1);
    for (const index_t row : {index_t{0}, index_t{130}, L - 1}) {
      INFO("row " << row);
      Tensor<float, 2> bad = h;
      bad(row, 17) = std::numeric_limits<float>::infinity();
      y.fill(7.f);
      try {
        seqmix::long_conv({u.view(), bad.view()}, {y.view()}, {}, ex);
        FAIL("no error thrown");
      } catch (const seqmix::ShapeError& e) {
        CHECK(e.argument() == std::string("filter"));
        CHECK(std::string(e.what()).find("[" + std::to_string(row) + ", 17]") != std::string::npos);
      }
      for (float v : y) REQUIRE(v == 7.f);
    }
  }
}

TEST_CASE("long_conv: FFT plans built by concurrent first callers are one and correct", "[long_conv]") {
  // Four threads ask for lengths no other test uses, in different orders (ThreadSanitizer: the
  // cache's first builds), then two threads run FFT calls at once against the reference.
  const std::vector<index_t> lengths = {1 << 19, 1 << 18};
  std::vector<const sd::FftTwiddles*> seen(4 * lengths.size());
  std::vector<std::thread> threads;
  for (std::size_t k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (std::size_t i = 0; i < lengths.size(); ++i) {
        const std::size_t j = (i + k) % lengths.size();
        seen[k * lengths.size() + j] = &sd::fft_twiddles(lengths[j]);
      }
    });
  for (auto& t : threads) t.join();
  for (std::size_t j = 0; j < lengths.size(); ++j) {
    const sd::FftTwiddles& tw = *seen[j];
    CHECK(tw.N == lengths[j]);
    for (std::size_t k = 1; k < 4; ++k) CHECK(seen[k * lengths.size() + j] == &tw);
    const index_t q = tw.N / 8;  // w^(N/8) = (1 - i) / sqrt 2
    CHECK(std::abs(tw.re[static_cast<std::size_t>(q)] - float(std::sqrt(0.5))) < 1e-6);
    CHECK(std::abs(tw.im[static_cast<std::size_t>(q)] + float(std::sqrt(0.5))) < 1e-6);
  }

  const index_t T = 700, D = 40;
  const Call a(1, T, D, T, 11), b(1, T, D, 60, 12);
  Tensor<float, 3> ref_a({1, T, D}), ref_b({1, T, D}), y_a({1, T, D}), y_b({1, T, D});
  seqmix::reference::long_conv({a.u.view(), a.h.view()}, {ref_a.view()});
  seqmix::reference::long_conv({b.u.view(), b.h.view()}, {ref_b.view()});
  std::thread first([&] {
    seqmix::ThreadPool pool(2);
    seqmix::long_conv_fft({a.u.view(), a.h.view()}, {y_a.view()}, {}, pool);
  });
  std::thread second([&] {
    st::CountingExecutor wide(64);
    seqmix::long_conv_fft({b.u.view(), b.h.view()}, {y_b.view()}, {}, wide);
  });
  first.join(), second.join();
  st::require_close("y (T = L)", y_a.cview(), ref_a.cview(), 2e-5);
  st::require_close("y (short filter)", y_b.cview(), ref_b.cview(), 2e-5);
}

TEST_CASE("long_conv: the split form on a pool of four threads matches the reference", "[long_conv]") {
  // Real workers (ThreadSanitizer: the passes' tasks write disjoint pieces and parts): D = 12 has
  // fewer walks than 4 threads with AVX-512 (one block) and SSE2 (3 narrow blocks), so the call
  // splits.
  const index_t T = 700, D = 12;
  const Call call(2, T, D, T, 61);
  const seqmix::LongConvInputs in{call.u.view(), call.h.view()};
  REQUIRE(sd::long_conv_fft_split_pieces(2, pair_blocks(D), walk_count(D, 4), 2048, 4) > 0);
  Tensor<float, 3> ref({2, T, D}), y({2, T, D});
  seqmix::reference::long_conv(in, {ref.view()});
  seqmix::ThreadPool pool(4);
  for (int repeat = 0; repeat < 2; ++repeat) {
    y.fill(0.f);
    seqmix::long_conv_fft(in, {y.view()}, {}, pool);
    st::require_close("y", y.cview(), ref.cview(), 2e-5);
  }
}
