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
  // 64 threads, a filter as long as the input (no segments): narrow blocks, each transforming its
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
    REQUIRE(sd::long_conv_fft_segments({B, T, D, L, 0, G}, true, 64).count == 1);
    REQUIRE(sd::long_conv_fft_block_lanes(D, 64) == seqmix::simd::kWidth);
    Tensor<float, 3> ref({B, T, D}), y({B, T, D});
    seqmix::reference::long_conv(in, {ref.view()});
    st::CountingExecutor ex(64);
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
