// Core scans: linear_scan (every split, chunking and thread count) against the sequential
// reference over a shape table straddling the SIMD width and the chunk sizes; associative_scan
// against a sequential fold for a commutative, a non-commutative (exact) and the online-softmax
// monoid; strided views, in-place use, state hand-off and argument errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::GateSpace;
using seqmix::index_t;
using seqmix::LinearScanOptions;
using seqmix::ScanSplit;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

// FMA against separate multiply-add and the vector exp (about 1 ulp) against std::exp: a few ulp
// per step, which the |a| <= 1 decays keep from growing.
constexpr double kTol = 2e-5;

const seqmix::ThreadPool& pool() {
  static const seqmix::ThreadPool instance(2);
  return instance;
}

const seqmix::Executor& executor_for(int threads) {
  return threads == 1 ? seqmix::serial_executor() : static_cast<const seqmix::Executor&>(pool());
}

// Which outputs a call asks for.
enum class Outputs { all_and_last, all, last };

struct LinearCase {
  index_t B, T, D;
  bool with_h0;
  GateSpace gate;
  Outputs outputs;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " h0=" << with_h0
      << " gate=" << (gate == GateSpace::log ? "log" : "direct") << " outputs="
      << (outputs == Outputs::all_and_last ? "all+last" : outputs == Outputs::all ? "all" : "last")
      << " seed=" << seed;
    return s.str();
  }
};

// T, D and B from the issue; T = 64 is a SIMD-width multiple and kMinTimeChunk / 8, 63 and 65
// straddle it, D = 16 is one AVX-512 vector, 17 one plus a tail. Every case runs with and without
// h0 in both gate spaces; the requested outputs rotate. The T = 100000 x D = 1024 corner runs only
// with B = 1 and two of the four h0 / gate combinations (a 400 MB tensor per operand).
std::vector<LinearCase> linear_cases() {
  std::vector<index_t> Ts = {1, 2, 63, 64, 65, 1000};
  if (!st::small_test_scale()) Ts.push_back(100000);
  const index_t Ds[] = {1, 3, 16, 17, 1024};
  const index_t Bs[] = {1, 3};
  std::vector<LinearCase> cases;
  std::uint64_t seed = 1;
  for (index_t T : Ts)
    for (index_t D : Ds)
      for (index_t B : Bs)
        for (int variant = 0; variant < 4; ++variant, ++seed) {
          const bool with_h0 = variant & 1;
          const GateSpace gate = (variant & 2) ? GateSpace::log : GateSpace::direct;
          if (T == 100000 && D == 1024 && (B > 1 || with_h0 == (gate == GateSpace::log))) continue;
          cases.push_back({B, T, D, with_h0, gate, static_cast<Outputs>(seed % 3), seed});
        }
  return cases;
}

// How a fast call is run: thread count, split and chunk size.
struct RunConfig {
  const char* name;
  int threads;
  ScanSplit split;
  index_t chunk_size;
  seqmix::OutputStores stores;
};

constexpr index_t kLargeCase = 10'000'000;

using seqmix::OutputStores;
const RunConfig kRuns[] = {
    {"1 thread, automatic", 1, ScanSplit::automatic, 0, OutputStores::automatic},
    {"2 threads, automatic", 2, ScanSplit::automatic, 0, OutputStores::automatic},
    {"2 threads, channels, streaming stores", 2, ScanSplit::channels, 0, OutputStores::streaming},
    {"2 threads, time", 2, ScanSplit::time, 0, OutputStores::cached},
    {"2 threads, time chunks of 37, streaming stores", 2, ScanSplit::time, 37, OutputStores::streaming},
    {"1 thread, time chunks of 64", 1, ScanSplit::time, 64, OutputStores::automatic},
};

// A contiguous tensor as one flat row: the shared fills seed one engine per innermost row, which
// for [3, 100000, 1] would cost more than the scans under test.
template <std::size_t Rank>
TensorView<float, 1> flat(Tensor<float, Rank>& t) {
  return t.view().template reshape<1>({t.numel()});
}

struct LinearData {
  Tensor<float, 3> a, b;
  Tensor<float, 2> h0;

  explicit LinearData(const LinearCase& c) : a({c.B, c.T, c.D}), b({c.B, c.T, c.D}), h0({c.B, c.D}) {
    // Direct gates span both signs; log gates are <= 0, some close to 0 (long memory).
    if (c.gate == GateSpace::log)
      st::fill_log_gate(flat(a), c.seed * 10 + 1, c.seed % 2 ? -1.f : -0.05f, 0.f);
    else
      st::fill_uniform(flat(a), c.seed * 10 + 1, -1.f, 1.f);
    st::fill_uniform(flat(b), c.seed * 10 + 2);
    if (c.with_h0) st::fill_uniform(flat(h0), c.seed * 10 + 3, -2.f, 2.f);
  }
  ConstView<float, 2> h0_view(const LinearCase& c) const { return c.with_h0 ? h0.view() : ConstView<float, 2>(); }
};

template <class Out, class Ref>
void check_close(const Out& out, const Ref& ref, const std::string& what) {
  const auto cmp = st::compare(out, ref, kTol);
  INFO(what << ": " << cmp.describe());
  CHECK(cmp.ok);
}

TEST_CASE("linear_scan matches the sequential reference", "[scan][linear_scan]") {
  for (const LinearCase& c : linear_cases()) {
    const LinearData data(c);
    // The all-states tensors only when the case asks for them (the last-only T = 100000 corner
    // allocated, zeroed and NaN-filled 400 MB it never read); one output pair per case, refilled
    // with NaN before each run (allocating and zeroing them per run cost as much as the scans).
    const bool want_all = c.outputs != Outputs::last, want_last = c.outputs != Outputs::all;
    const std::array<index_t, 3> all_shape{c.B, want_all ? c.T : 0, c.D};
    Tensor<float, 3> ref_all(all_shape), h_all(all_shape);
    Tensor<float, 2> ref_last({c.B, c.D}), h_last({c.B, c.D});
    const LinearScanOptions ref_options{c.gate};
    seqmix::reference::linear_scan(data.a.view(), data.b.view(), data.h0_view(c),
                                   want_all ? ref_all.view() : TensorView<float, 3>(), ref_last.view(), ref_options);
    for (const RunConfig& run : kRuns) {
      // The 100M-element corner runs only the automatic choices, 1 and 2 threads (time budget).
      if (c.B * c.T * c.D > kLargeCase && run.split != ScanSplit::automatic) continue;
      INFO(c.describe() << ", " << run.name);
      h_all.fill(std::numeric_limits<float>::quiet_NaN());  // an element never written shows up
      h_last.fill(std::numeric_limits<float>::quiet_NaN());
      const LinearScanOptions options{c.gate, run.split, run.chunk_size, run.stores};
      seqmix::linear_scan(data.a.view(), data.b.view(), data.h0_view(c),
                          want_all ? h_all.view() : TensorView<float, 3>(),
                          want_last ? h_last.view() : TensorView<float, 2>(), options, executor_for(run.threads));
      if (want_all) check_close(h_all.view(), ref_all.view(), "h_all");
      if (want_last) check_close(h_last.view(), ref_last.view(), "h_last");
    }
  }
}

TEST_CASE("linear_scan accepts strided views", "[scan][linear_scan]") {
  // a and b are every other channel of a [B,T,2D] tensor, h_all the middle D channels of a
  // [B,T,D+8] tensor, h0 and h_last transposed [D,B] storage.
  const index_t B = 2, T = 700, D = 19;
  for (int threads : {1, 2})
    for (ScanSplit split : {ScanSplit::channels, ScanSplit::time})
      for (GateSpace gate : {GateSpace::direct, GateSpace::log}) {
        const auto stores = threads == 1 ? seqmix::OutputStores::streaming : seqmix::OutputStores::cached;
        INFO("threads=" << threads << " split=" << int(split) << " gate=" << int(gate) << " stores=" << int(stores));
        Tensor<float, 3> a_wide = st::random_tensor<3>({B, T, 2 * D}, 11, -1.f, gate == GateSpace::log ? 0.f : 1.f);
        Tensor<float, 3> b_wide = st::random_tensor<3>({B, T, 2 * D}, 12);
        Tensor<float, 2> h0_t = st::random_tensor<2>({D, B}, 13);
        const ConstView<float, 3> a(a_wide.data(), {B, T, D}, {T * 2 * D, 2 * D, 2});
        const ConstView<float, 3> b(b_wide.data() + 1, {B, T, D}, {T * 2 * D, 2 * D, 2});
        const ConstView<float, 2> h0(h0_t.data(), {B, D}, {1, B});
        Tensor<float, 3> h_wide({B, T, D + 8});
        Tensor<float, 2> last_t({D, B});
        const TensorView<float, 3> h_all(h_wide.data() + 4, {B, T, D}, {T * (D + 8), D + 8, 1});
        const TensorView<float, 2> h_last(last_t.data(), {B, D}, {1, B});
        Tensor<float, 3> ref_all({B, T, D});
        Tensor<float, 2> ref_last({B, D});
        seqmix::reference::linear_scan(a, b, h0, ref_all.view(), ref_last.view(), {gate});
        seqmix::linear_scan(a, b, h0, h_all, h_last, {gate, split, 0, stores}, executor_for(threads));
        check_close(h_all, ref_all.view(), "h_all");
        check_close(h_last, ref_last.view(), "h_last");
        // The padding around h_all is untouched.
        for (index_t t = 0; t < T; ++t) CHECK(h_wide(1, t, 3) == 0.f);
      }
}

TEST_CASE("linear_scan runs in place and hands its state over", "[scan][linear_scan]") {
  const index_t B = 3, T = 4000, D = 40;
  const Tensor<float, 3> a = st::random_tensor<3>({B, T, D}, 21, -1.f, 0.f);
  const Tensor<float, 3> b = st::random_tensor<3>({B, T, D}, 22);
  const Tensor<float, 2> h0 = st::random_tensor<2>({B, D}, 23);
  Tensor<float, 3> ref_all({B, T, D});
  Tensor<float, 2> ref_last({B, D});
  const LinearScanOptions log_gates{GateSpace::log};
  seqmix::reference::linear_scan(a.view(), b.view(), h0.view(), ref_all.view(), ref_last.view(), log_gates);
  for (int threads : {1, 2})
    for (ScanSplit split : {ScanSplit::channels, ScanSplit::time}) {
      INFO("threads=" << threads << " split=" << int(split));
      const LinearScanOptions options{GateSpace::log, split, 0};
      // h_all over b, then h_last over h0.
      Tensor<float, 3> inout = b;
      Tensor<float, 2> state = h0;
      seqmix::linear_scan(a.view(), inout.view(), state.view(), inout.view(), state.view(), options,
                          executor_for(threads));
      check_close(inout.view(), ref_all.view(), "h_all in place of b");
      check_close(state.view(), ref_last.view(), "h_last in place of h0");
      // h_all over a.
      Tensor<float, 3> gates = a;
      seqmix::linear_scan(gates.view(), b.view(), h0.view(), gates.view(), {}, options, executor_for(threads));
      check_close(gates.view(), ref_all.view(), "h_all in place of a");
      // Three pieces with the state handed over equal one call.
      Tensor<float, 2> carry = h0;
      Tensor<float, 3> pieces({B, T, D});
      for (auto [t0, len] : {std::pair<index_t, index_t>{0, 1}, {1, 2500}, {2501, T - 2501}}) {
        seqmix::linear_scan(a.view().slice(1, t0, len), b.view().slice(1, t0, len), carry.view(),
                            pieces.view().slice(1, t0, len), carry.view(), options, executor_for(threads));
      }
      check_close(pieces.view(), ref_all.view(), "h_all in three pieces");
      check_close(carry.view(), ref_last.view(), "h_last in three pieces");
    }
}

TEST_CASE("linear_scan with T = 0 returns h0", "[scan][linear_scan]") {
  const Tensor<float, 3> empty({2, 0, 5});
  const Tensor<float, 2> h0 = st::random_tensor<2>({2, 5}, 31);
  Tensor<float, 2> last({2, 5});
  Tensor<float, 3> all({2, 0, 5});
  seqmix::linear_scan(empty.view(), empty.view(), h0.view(), all.view(), last.view());
  CHECK(st::compare(last.view(), h0.view(), 0.0).ok);
  seqmix::linear_scan(empty.view(), empty.view(), {}, {}, last.view(), {}, pool());
  for (float v : last) CHECK(v == 0.f);
}

TEST_CASE("linear_scan rejects bad arguments before writing", "[scan][linear_scan]") {
  const Tensor<float, 3> a({2, 8, 4}), b({2, 8, 4}), b_short({2, 7, 4});
  const Tensor<float, 2> h0_bad({2, 5});
  Tensor<float, 3> h_all({2, 8, 4});
  Tensor<float, 2> h_last_bad({3, 4});
  h_all.fill(7.f);
  auto expect_error = [&](auto&& call, const char* argument, const char* shapes) {
    try {
      call();
      FAIL("no error for argument " << argument);
    } catch (const seqmix::ShapeError& e) {
      INFO(e.what());
      CHECK(e.argument() == argument);
      CHECK(std::string(e.what()).find(shapes) != std::string::npos);
    }
    for (float v : h_all) REQUIRE(v == 7.f);
  };
  expect_error([&] { seqmix::linear_scan(a.view(), b_short.view(), {}, h_all.view(), {}); }, "b",
               "[2, 8, 4], got [2, 7, 4]");
  expect_error([&] { seqmix::linear_scan(a.view(), b.view(), h0_bad.view(), h_all.view(), {}); }, "h0",
               "[2, 4], got [2, 5]");
  expect_error([&] { seqmix::linear_scan(a.view(), b.view(), {}, h_all.view(), h_last_bad.view()); }, "h_last",
               "[2, 4], got [3, 4]");
  expect_error([&] { seqmix::linear_scan(a.view(), b.view(), {}, {}, {}); }, "h_all", "both empty");
  expect_error(
      [&] {
        seqmix::linear_scan(a.view(), b.view(), {}, h_all.view(), {}, {GateSpace::direct, ScanSplit::time, -1});
      },
      "options.chunk_size", "got -1");
  const ConstView<float, 3> null_b(nullptr, {2, 8, 4});
  expect_error([&] { seqmix::linear_scan(a.view(), null_b, {}, h_all.view(), {}); }, "b", "null data pointer");
  // h_all sharing b's pointer with other strides (a partial overlap).
  const TensorView<float, 3> shifted(const_cast<float*>(b.data()), {2, 8, 4}, {32, 1, 8});
  expect_error([&] { seqmix::linear_scan(a.view(), b.view(), {}, shifted, {}); }, "h_all", "identical view");
  // Partial overlaps with other pointers: h_all one token behind a (each write would land on an
  // element of a still to be read), h_last inside h_all, h_last over part of h0.
  Tensor<float, 3> storage({2, 9, 4});
  const TensorView<float, 3> a_in(storage.data() + 4, {2, 8, 4}, {36, 4, 1});
  const TensorView<float, 3> behind(storage.data(), {2, 8, 4}, {36, 4, 1});
  expect_error([&] { seqmix::linear_scan(a_in, b.view(), {}, behind, {}); }, "h_all", "overlaps argument 'a'");
  expect_error([&] { seqmix::linear_scan(a.view(), b.view(), {}, h_all.view(), TensorView<float, 2>(h_all.data() + 8, {2, 4})); },
               "h_last", "overlaps argument 'h_all'");
  Tensor<float, 2> h0({3, 4});
  expect_error([&] { seqmix::linear_scan(a.view(), b.view(), h0.view().slice(0, 0, 2), h_all.view(),
                                         TensorView<float, 2>(h0.data() + 4, {2, 4})); },
               "h_last", "overlaps argument 'h0'");
  // The identical view is in place and allowed: h_last = h0.
  CHECK_NOTHROW(seqmix::linear_scan(a.view(), b.view(), h0.view().slice(0, 0, 2), {}, h0.view().slice(0, 0, 2)));
}

// --- associative_scan ---------------------------------------------------------------------------

std::vector<index_t> associative_lengths() {
  std::vector<index_t> ns = {0, 1, 2, 63, 64, 65, 1000};
  if (!st::small_test_scale()) ns.push_back(100000);
  return ns;
}

struct AssociativeRun {
  const char* name;
  int threads;
  index_t chunk_size;
};

const AssociativeRun kAssociativeRuns[] = {
    {"1 thread", 1, 0}, {"2 threads", 2, 0}, {"2 threads, chunks of 7", 2, 7}, {"1 thread, chunks of 64", 1, 64}};

template <class Monoid, class Check>
void sweep_associative(const Monoid& monoid, const std::vector<typename Monoid::value_type>& in, Check check) {
  using Value = typename Monoid::value_type;
  std::vector<Value> expected(in.size());
  const index_t n = static_cast<index_t>(in.size());
  seqmix::reference::associative_scan(monoid, ConstView<Value, 1>(in.data(), {n}),
                                      TensorView<Value, 1>(expected.data(), {n}));
  for (const AssociativeRun& run : kAssociativeRuns) {
    INFO("n=" << n << ", " << run.name);
    std::vector<Value> out(in.size(), monoid.identity());
    seqmix::associative_scan(monoid, in.data(), out.data(), n, {run.chunk_size}, executor_for(run.threads));
    check(out, expected);
    std::vector<Value> inout = in;  // in place
    seqmix::associative_scan(monoid, inout.data(), inout.data(), n, {run.chunk_size}, executor_for(run.threads));
    check(inout, expected);
  }
}

TEST_CASE("associative_scan: prefix sums", "[scan][associative_scan]") {
  for (index_t n : associative_lengths()) {
    std::vector<float> in(static_cast<std::size_t>(n));
    st::fill_uniform(TensorView<float, 1>(in.data(), {n}), 41 + n);
    sweep_associative(seqmix::SumMonoid<float>{}, in, [](const auto& out, const auto& expected) {
      const index_t n = static_cast<index_t>(out.size());
      // Regrouped float sums: compare relative to the scale of the partial sums.
      const auto cmp = st::compare(ConstView<float, 1>(out.data(), {n}), ConstView<float, 1>(expected.data(), {n}),
                                   1e-5);
      INFO(cmp.describe());
      CHECK(cmp.ok);
    });
  }
}

TEST_CASE("associative_scan: affine maps compose in order (exact, not commutative)", "[scan][associative_scan]") {
  // Affine maps modulo 2^32: associative and exact, so any regrouping must give identical bits,
  // while swapping two operands would not.
  using Map = seqmix::AffineMap<std::uint32_t>;
  for (index_t n : associative_lengths()) {
    std::vector<Map> in(static_cast<std::size_t>(n));
    std::uint64_t x = 88172645463325252ull + static_cast<std::uint64_t>(n);
    for (Map& m : in) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      m = {static_cast<std::uint32_t>(x) | 1u, static_cast<std::uint32_t>(x >> 32)};
    }
    sweep_associative(seqmix::AffineMonoid<std::uint32_t>{}, in, [](const auto& out, const auto& expected) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        if (out[i].a != expected[i].a || out[i].b != expected[i].b) {
          FAIL_CHECK("mismatch at index " << i);
          return;
        }
      }
    });
  }
  const seqmix::AffineMonoid<std::uint32_t> monoid;
  const Map f{3, 1}, g{5, 4};
  CHECK(monoid.combine(f, g).b != monoid.combine(g, f).b);  // the test monoid is not commutative
}

TEST_CASE("associative_scan: affine monoid reproduces linear_scan", "[scan][associative_scan]") {
  const index_t T = 5000;
  const Tensor<float, 3> a = st::random_tensor<3>({1, T, 1}, 51, -1.f, 1.f);
  const Tensor<float, 3> b = st::random_tensor<3>({1, T, 1}, 52);
  Tensor<float, 3> ref({1, T, 1});
  seqmix::reference::linear_scan(a.view(), b.view(), {}, ref.view(), {});
  std::vector<seqmix::AffineMap<float>> maps(T);
  for (index_t t = 0; t < T; ++t) maps[t] = {a(0, t, 0), b(0, t, 0)};
  seqmix::associative_scan(seqmix::AffineMonoid<float>{}, maps.data(), maps.data(), T, pool());
  Tensor<float, 3> out({1, T, 1});
  for (index_t t = 0; t < T; ++t) out(0, t, 0) = maps[t].b;  // applied to h0 = 0
  check_close(out.view(), ref.view(), "affine scan");
}

TEST_CASE("associative_scan: online softmax equals the direct prefix softmax", "[scan][associative_scan]") {
  for (index_t n : associative_lengths()) {
    std::vector<float> logits(static_cast<std::size_t>(n)), values(static_cast<std::size_t>(n));
    st::fill_uniform(TensorView<float, 1>(logits.data(), {n}), 61 + n, -8.f, 8.f);
    st::fill_uniform(TensorView<float, 1>(values.data(), {n}), 62 + n);
    // Direct: prefix sums of exp(s) and exp(s) * v in double; |s| <= 8 keeps exp(s) in range.
    std::vector<double> direct(static_cast<std::size_t>(n));
    double num = 0, den = 0;
    for (index_t i = 0; i < n; ++i) {
      den += std::exp(double(logits[i]));
      num += std::exp(double(logits[i])) * values[i];
      direct[i] = num / den;
    }
    std::vector<seqmix::OnlineSoftmaxState> in(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) in[i] = seqmix::OnlineSoftmaxState::leaf(logits[i], values[i]);
    sweep_associative(seqmix::OnlineSoftmax{}, in, [&](const auto& out, const auto&) {
      double worst = 0;
      for (std::size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::abs(out[i].mean() - direct[i]));
      INFO("max |online - direct| = " << worst);
      CHECK(worst <= 1e-4);
    });
  }
  const seqmix::OnlineSoftmax monoid;
  const auto empty = monoid.combine(monoid.identity(), monoid.identity());
  CHECK(empty.l == 0.f);
  CHECK(!std::isnan(empty.acc));
}

TEST_CASE("associative_scan rejects bad arguments", "[scan][associative_scan]") {
  std::vector<float> v(4);
  CHECK_THROWS_AS(seqmix::associative_scan(seqmix::SumMonoid<float>{}, v.data(), v.data(), -1), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::associative_scan(seqmix::SumMonoid<float>{}, nullptr, v.data(), 4), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::associative_scan(seqmix::SumMonoid<float>{}, v.data(), v.data(), 4, {-2}),
                  seqmix::ShapeError);
}

}  // namespace

namespace {

// One element of a fast result against the sequential reference where values may overflow:
// NaN where the reference is NaN, the same infinity where it is infinite, else within kTol
// relative (the values may be near FLT_MAX).
bool agrees_with_sequential(float got, float ref) {
  if (std::isnan(ref)) return std::isnan(got);
  if (std::isinf(ref)) return got == ref;
  return std::isfinite(got) && std::fabs(static_cast<double>(got) - ref) <= kTol * (1.0 + std::fabs(static_cast<double>(ref)));
}

// Element counts by class, printed on failure.
struct Census {
  index_t nan = 0, inf = 0, finite = 0, mismatches = 0;
  index_t first_mismatch = -1;
};

Census compare_sequential(const float* got, const float* ref, index_t n) {
  Census c;
  for (index_t i = 0; i < n; ++i) {
    if (std::isnan(ref[i])) ++c.nan; else if (std::isinf(ref[i])) ++c.inf; else ++c.finite;
    if (!agrees_with_sequential(got[i], ref[i])) {
      if (c.mismatches++ == 0) c.first_mismatch = i;
    }
  }
  return c;
}

// Every run of kRuns (time splits with automatic chunks and chunks of 37 and 64, channel splits)
// against the reference on inputs whose recurrence overflows; both outputs, and h_last alone
// (the time split then has no rescan).
void check_overflowing_scan(const Tensor<float, 3>& a, const Tensor<float, 3>& b, ConstView<float, 2> h0,
                            GateSpace gate, const std::string& what) {
  const index_t B = a.size(0), T = a.size(1), D = a.size(2);
  Tensor<float, 3> ref_all({B, T, D});
  Tensor<float, 2> ref_last({B, D});
  seqmix::reference::linear_scan(a.view(), b.view(), h0, ref_all.view(), ref_last.view(), LinearScanOptions{gate});
  for (const RunConfig& run : kRuns)
    for (const bool want_all : {true, false}) {
      INFO(what << ", B=" << B << " T=" << T << " D=" << D << ", " << run.name << (want_all ? ", h_all + h_last" : ", h_last only"));
      Tensor<float, 3> h_all({B, T, D});
      Tensor<float, 2> h_last({B, D});
      seqmix::linear_scan(a.view(), b.view(), h0, want_all ? h_all.view() : TensorView<float, 3>(), h_last.view(),
                          LinearScanOptions{gate, run.split, run.chunk_size, run.stores}, executor_for(run.threads));
      if (want_all) {
        const Census all = compare_sequential(h_all.data(), ref_all.data(), h_all.numel());
        INFO("h_all: reference has " << all.nan << " NaN, " << all.inf << " inf, " << all.finite << " finite; "
                                     << all.mismatches << " mismatches, first at flat index " << all.first_mismatch);
        CHECK(all.mismatches == 0);
      }
      const Census last = compare_sequential(h_last.data(), ref_last.data(), h_last.numel());
      INFO("h_last: " << last.mismatches << " mismatches, first at " << last.first_mismatch);
      CHECK(last.mismatches == 0);
    }
}

}  // namespace

TEST_CASE("time-split linear_scan agrees with the sequential form where the recurrence overflows", "[scan][linear_scan][nonfinite]") {
  const index_t T = 4096;
  for (const index_t D : {index_t{3}, index_t{16}, index_t{17}}) {
    Tensor<float, 3> a({2, T, D}), b({2, T, D});
    st::fill_uniform(flat(b), 7 + static_cast<std::uint64_t>(D));
    // a = -1.5: |h| grows by half each token and overflows to alternating infinities near token
    // 220; the product of a chunk's gates overflows for any chunk longer than that.
    a.fill(-1.5f);
    check_overflowing_scan(a, b, {}, GateSpace::direct, "a = -1.5");
    // log a = +1: a = e, overflow near token 88.
    a.fill(1.f);
    check_overflowing_scan(a, b, {}, GateSpace::log, "log a = +1");
    // Growth then decay: h reaches about 1e34 and comes back, all finite (a = 1.3 for 300
    // tokens, then 0.75), on a large h0 in half the channels. b > 0 here: a growing recurrence
    // with terms of both signs cancels, and the regrouped form's rounding then shows relative
    // to the cancelled result far beyond kTol, legitimately.
    Tensor<float, 3> b_positive({2, T, D});
    st::fill_uniform(flat(b_positive), 9 + static_cast<std::uint64_t>(D), 0.5f, 1.f);
    Tensor<float, 2> h0({2, D});
    for (index_t d = 0; d < D; ++d) h0(0, d) = d % 2 ? 1e3f : 0.f, h0(1, d) = 1.f;
    for (index_t n = 0; n < 2; ++n)
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) a(n, t, d) = (t + 40 * n) % 700 < 300 ? 1.3f : 0.75f;
    check_overflowing_scan(a, b_positive, h0.view(), GateSpace::direct, "growth then decay");
    // A prefix product that overflows mid-chunk and is zeroed by a later gate: the recurrence
    // reaches inf, then 0 * inf = NaN, while the chunk's product is 0 and its local scan finite.
    // Chunks of 37 and 64 (and the automatic ones) put these tokens inside a chunk, after its start.
    for (index_t n = 0; n < 2; ++n)
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) a(n, t, d) = t >= 2410 && t < 2420 ? 1e5f : (t == 2420 ? 0.f : 1.f);
    for (index_t d = 0; d < D; ++d) h0(0, d) = 1e10f, h0(1, d) = d % 2 ? 1e-30f : 1e10f;
    check_overflowing_scan(a, b, h0.view(), GateSpace::direct, "overflow then a zero gate");
  }
}

TEST_CASE("a non-finite input reaches only its own channel's later states", "[scan][linear_scan][nonfinite]") {
  const index_t B = 2, T = 3000, D = 17, t_bad = 1500, d_bad = 5;
  Tensor<float, 3> a({B, T, D}), b({B, T, D});
  st::fill_uniform(flat(a), 31, -1.f, 1.f);
  st::fill_uniform(flat(b), 32);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Poison {
    const char* name;
    bool in_a;
    float value;
  };
  const Poison poisons[] = {{"NaN in b", false, nan}, {"inf in b", false, inf}, {"NaN in a", true, nan}, {"inf in a", true, inf}};
  for (const Poison& poison : poisons)
    for (const RunConfig& run : kRuns) {
      INFO(poison.name << " at token " << t_bad << ", channel " << d_bad << ", " << run.name);
      const LinearScanOptions options{GateSpace::direct, run.split, run.chunk_size, run.stores};
      Tensor<float, 3> clean_all({B, T, D});
      seqmix::linear_scan(a.view(), b.view(), {}, clean_all.view(), {}, options, executor_for(run.threads));
      Tensor<float, 3> a2 = a, b2 = b;
      (poison.in_a ? a2 : b2)(1, t_bad, d_bad) = poison.value;
      Tensor<float, 3> h_all({B, T, D}), ref_all({B, T, D});
      seqmix::linear_scan(a2.view(), b2.view(), {}, h_all.view(), {}, options, executor_for(run.threads));
      seqmix::reference::linear_scan(a2.view(), b2.view(), {}, ref_all.view(), {});
      index_t changed_elsewhere = 0, nonfinite_before = 0, mismatches = 0, nonfinite_after = 0;
      for (index_t n = 0; n < B; ++n)
        for (index_t t = 0; t < T; ++t)
          for (index_t d = 0; d < D; ++d) {
            const bool poisoned = n == 1 && d == d_bad && t >= t_bad;
            if (!poisoned && std::memcmp(&h_all(n, t, d), &clean_all(n, t, d), sizeof(float)) != 0) ++changed_elsewhere;
            if (n == 1 && d == d_bad && t < t_bad && !std::isfinite(h_all(n, t, d))) ++nonfinite_before;
            if (poisoned && !std::isfinite(h_all(n, t, d))) ++nonfinite_after;
            if (!agrees_with_sequential(h_all(n, t, d), ref_all(n, t, d))) ++mismatches;
          }
      CHECK(changed_elsewhere == 0);  // earlier tokens and other channels: bit for bit the clean run
      CHECK(nonfinite_before == 0);
      CHECK(nonfinite_after > 0);
      CHECK(mismatches == 0);
    }
}
