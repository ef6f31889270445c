// The parallel grain of selective_scan's fast prefill (issue 19 item 5): with an executor that
// claims many threads (CountingExecutor: serial, so the split is exactly a pool's of that size),
// the items (sequence, lane group) of a last wave that fills at most half the threads run in
// ranges of state indices whose shares of y are summed. Checked here:
//  - outputs, final states and token states of that split against the reference at 64, 48 and 7
//    claimed threads, at ragged shapes (T = 1, D per group off the SIMD width, N odd, B > 1,
//    packed sequences with slots, initial state carried in place, reverse, every optional input);
//  - the task counts at the mamba-130m shape, and that 1 and 2 threads keep one block per thread;
//  - a split item on a real ThreadPool (shares written and summed on different threads), calls of
//    several lengths in a row.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/random.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// test_selective_scan's tolerance: vector exp against std::exp and sums over N in another order.
constexpr double kTol = 2e-5;

struct GrainCase {
  index_t B, T, D, N, G;
  bool all_optional;  // Dskip, z, delta_bias, initial state and softplus; else none of them
  bool reverse;
  int threads;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " N=" << N << " G=" << G << " optional=" << all_optional
      << " reverse=" << reverse << " threads=" << threads;
    return s.str();
  }
};

std::vector<GrainCase> grain_cases() {
  return {
      {1, 33, 1536, 16, 1, true, false, 64, 1},  // mamba-130m's D: 96 items, the last 32 in halves
      {1, 1, 1536, 16, 1, true, false, 64, 2},   // one token
      {1, 33, 1536, 16, 1, true, false, 48, 3},  // two full waves: nothing split
      {1, 40, 40, 16, 2, true, false, 64, 4},    // 20 channels per group: 16 + 4 lanes, 8 ranges each
      {3, 17, 48, 5, 1, true, false, 7, 5},      // B = 3: 9 items on 7 threads, N = 5 in ranges 0-2, 2-5
      {3, 65, 48, 16, 1, false, false, 7, 6},    // no optional input; 9 items on 7 threads, 2 in 3 ranges
      {1, 29, 48, 17, 1, true, true, 64, 7},     // reverse, odd N in 8 ranges
  };
}

struct ScanData {
  Tensor<float, 3> u, delta, z, state;
  Tensor<float, 2> A;
  Tensor<float, 4> Bm, Cm;
  Tensor<float, 1> Dskip, delta_bias;

  ScanData(index_t B, index_t T, index_t D, index_t N, index_t G, index_t rows, bool softplus, std::uint64_t seed)
      : u(st::random_tensor<3>({B, T, D}, seed * 20 + 1)),
        // Through softplus (with the optional inputs) delta spans both signs; without it dt > 0.
        delta(softplus ? st::random_tensor<3>({B, T, D}, seed * 20 + 2, -5.f, 1.f)
                       : st::random_tensor<3>({B, T, D}, seed * 20 + 2, 0.001f, 0.5f)),
        z(st::random_tensor<3>({B, T, D}, seed * 20 + 3, -3.f, 3.f)),
        state(st::random_tensor<3>({rows, D, N}, seed * 20 + 4)),
        A(st::random_tensor<2>({D, N}, seed * 20 + 5, -4.f, -0.05f)),
        Bm(st::random_tensor<4>({B, T, G, N}, seed * 20 + 6)),
        Cm(st::random_tensor<4>({B, T, G, N}, seed * 20 + 7)),
        Dskip(st::random_tensor<1>({D}, seed * 20 + 8)),
        delta_bias(st::random_tensor<1>({D}, seed * 20 + 9, -2.f, 2.f)) {}

  seqmix::SelectiveScanInputs inputs(bool all_optional) const {
    seqmix::SelectiveScanInputs in;
    in.u = u.view(), in.delta = delta.view(), in.A = A.view(), in.Bm = Bm.view(), in.Cm = Cm.view();
    if (all_optional) {
      in.Dskip = Dskip.view(), in.z = z.view(), in.delta_bias = delta_bias.view(), in.initial_state = state.view();
    }
    return in;
  }
};

// What the plan gives for `items` on `threads` (parallel_for's blocks when nothing is split).
index_t planned_tasks(index_t items, index_t N, int threads) {
  const seqmix::detail::ScanSplit plan = seqmix::detail::scan_split(items, N, threads);
  return plan.split > 0 ? plan.whole + plan.split * plan.parts : std::min<index_t>(items, 4 * threads);
}

// The tasks of each top-level run() of one call.
std::vector<index_t> run_sizes(const st::CountingExecutor& ex) {
  std::vector<index_t> sizes;
  for (const st::RecordedRun& run : ex.runs())
    if (!run.nested) sizes.push_back(run.tasks);
  return sizes;
}

}  // namespace

TEST_CASE("selective_scan at many claimed threads: state-index ranges match the reference",
          "[selective_scan][parallel_grain]") {
  for (const GrainCase& c : grain_cases()) {
    INFO(c.describe());
    const ScanData data(c.B, c.T, c.D, c.N, c.G, c.B, c.all_optional, c.seed);
    const auto in = data.inputs(c.all_optional);
    seqmix::SelectiveScanOptions options;
    options.delta_softplus = c.all_optional;
    options.reverse = c.reverse;
    Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.D, c.N});
    Tensor<float, 4> ts_ref({c.B, c.T, c.D, c.N});
    seqmix::reference::selective_scan(in, {y_ref.view(), s_ref.view(), ts_ref.view()}, options);
    const st::CountingExecutor ex(c.threads);
    Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.D, c.N});
    Tensor<float, 4> ts({c.B, c.T, c.D, c.N});
    seqmix::selective_scan(in, {y.view(), s.view(), ts.view()}, options, ex);
    st::require_close("y", y.view(), y_ref.view(), kTol);
    st::require_close("final_state", s.view(), s_ref.view(), kTol);
    st::require_close("token_states", ts.view(), ts_ref.view(), kTol);
    if (!c.all_optional) continue;
    // The state carried in place: final_state is initial_state's buffer (every range reads its
    // own indices before writing them).
    Tensor<float, 3> carried = data.state;
    auto in_place = in;
    in_place.initial_state = carried.view();
    seqmix::selective_scan(in_place, {y.view(), carried.view()}, options, ex);
    st::require_close("y, state in place", y.view(), y_ref.view(), kTol);
    st::require_close("final_state in place", carried.view(), s_ref.view(), kTol);
  }
}

TEST_CASE("selective_scan at 64 claimed threads: packed sequences with slots match the reference",
          "[selective_scan][parallel_grain]") {
  // Sequences of 30, 1, 12 and 7 tokens, 3 lane groups each (D 48): 12 items on 64 threads, all
  // in ranges; the longest sequence first, so shares of several lengths share the scratch.
  const index_t D = 48, N = 16, G = 1, S = 6;
  const std::vector<std::int64_t> cu = {0, 30, 31, 43, 50};
  const std::vector<std::int32_t> slots = {4, 0, 2, 5};
  const std::vector<std::uint8_t> init = {1, 0, 1, 1};
  const index_t total = cu.back();
  const ScanData data(1, total, D, N, G, S, true, 11);
  auto in = data.inputs(true);
  in.batch.cu_seqlens = cu;
  in.batch.state_indices = slots;
  in.batch.has_initial_state = init;
  seqmix::SelectiveScanOptions options;
  options.delta_softplus = true;
  Tensor<float, 3> y_ref({1, total, D}), pool_ref = data.state;
  auto in_ref = in;
  in_ref.initial_state = pool_ref.view();
  seqmix::reference::selective_scan(in_ref, {y_ref.view(), pool_ref.view()}, options);
  Tensor<float, 3> y({1, total, D}), pool = data.state;
  in.initial_state = pool.view();
  const st::CountingExecutor ex(64);
  seqmix::selective_scan(in, {y.view(), pool.view()}, options, ex);
  st::require_close("y", y.view(), y_ref.view(), kTol);
  st::require_close("state pool", pool.view(), pool_ref.view(), kTol);
  // With AVX-512, 12 items on 64 threads: 5 ranges each.
  const index_t items = 4 * ((D + seqmix::simd::kWidth - 1) / seqmix::simd::kWidth);
  CHECK(run_sizes(ex) == std::vector<index_t>{seqmix::simd::kWidth == 16 ? 12 * 5 : planned_tasks(items, N, 64)});
}

TEST_CASE("selective_scan prefill task counts at the mamba-130m shape", "[selective_scan][parallel_grain]") {
  const index_t T = 8, D = 1536, N = 16;
  const ScanData data(1, T, D, N, 1, 1, true, 21);
  const auto in = data.inputs(true);
  Tensor<float, 3> y({1, T, D}), s({1, D, N});
  auto tasks_at = [&](int threads) {
    const st::CountingExecutor ex(threads);
    seqmix::selective_scan(in, {y.view(), s.view()}, {}, ex);
    return run_sizes(ex);
  };
  // With AVX-512, 96 lane groups: on 64 threads the first 64 whole, the last 32 in two halves of N (128
  // tasks, two full waves); 48 threads take two full waves whole; 1 and 2 threads keep
  // parallel_for's blocks (4 per thread).
  const index_t items = D / seqmix::simd::kWidth;  // lane groups: 96 with AVX-512
  CHECK(tasks_at(64) == std::vector<index_t>{seqmix::simd::kWidth == 16 ? 128 : planned_tasks(items, N, 64)});
  CHECK(tasks_at(48) == std::vector<index_t>{seqmix::simd::kWidth == 16 ? 96 : planned_tasks(items, N, 48)});
  CHECK(tasks_at(2) == std::vector<index_t>{8});
  CHECK(tasks_at(1) == std::vector<index_t>{4});
  // The plan itself at the edges: a last wave over half the threads is left whole, N below 4
  // cannot split, and many waves keep parallel_for's blocks.
  CHECK(seqmix::detail::scan_split(64 + 33, 16, 64).parts == 1);
  CHECK(seqmix::detail::scan_split(5, 3, 64).parts == 1);
  CHECK(seqmix::detail::scan_split(4 * 64 + 1, 16, 64).parts == 1);
  const auto plan = seqmix::detail::scan_split(9, 5, 7);
  CHECK(plan.whole == 7);
  CHECK(plan.split == 2);
  CHECK(plan.parts == 2);
}

TEST_CASE("selective_scan on a real 4-thread pool: split items summed across threads match the reference",
          "[selective_scan][parallel_grain]") {
  // 5 lane groups on 4 threads: the last wave's one item runs in 4 ranges of N on the pool's
  // threads, so the shares and the last range's sum cross threads (what the CountingExecutor
  // cases cannot show; this case is the one to build with TSan). Calls of several lengths in a
  // row reuse the caller's kept share scratch.
  const index_t D = 5 * seqmix::simd::kWidth, N = 16;
  REQUIRE(seqmix::detail::scan_split(5, N, 4).parts == 4);
  const seqmix::ThreadPool pool(4);
  std::uint64_t seed = 31;
  for (index_t T : {37, 3, 64, 1, 37}) {
    INFO("T=" << T);
    const ScanData data(1, T, D, N, 1, 1, true, seed++);
    const auto in = data.inputs(true);
    seqmix::SelectiveScanOptions options;
    options.delta_softplus = true;
    Tensor<float, 3> y_ref({1, T, D}), s_ref({1, D, N}), y({1, T, D}), s({1, D, N});
    seqmix::reference::selective_scan(in, {y_ref.view(), s_ref.view()}, options);
    for (int repeat = 0; repeat < 3; ++repeat) {
      seqmix::selective_scan(in, {y.view(), s.view()}, options, pool);
      st::require_close("y", y.view(), y_ref.view(), kTol);
      st::require_close("final_state", s.view(), s_ref.view(), kTol);
    }
  }
}
