// The reverse option of the generic scans (core/direction.hpp): associative_scan (every monoid of
// core/scan/monoids.hpp, the non-commutative AffineMonoid included; serial, threaded and
// time-chunked, in place) and the elementwise nonlinear recurrence (nonlinear_recurrence,
// nonlinear_recurrence_newton and their references; channel and time splits) equal the forward
// operator on explicitly reversed copies, outputs reversed back, for T in {1, 2, 37, 1000}, B > 1
// and non-empty initial states. A reverse prefill of tokens T-1..k followed by steps for k-1..0
// equals one reverse call; packed batches and bad shapes are refused before anything is written.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/chunked/newton/cells.hpp"
#include "seqmix/chunked/newton/fast.hpp"
#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix/chunked/newton/step.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan/associative.hpp"
#include "seqmix/core/scan/monoids.hpp"
#include "seqmix/core/scan/reference.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

const index_t kScanDirLengths[] = {1, 2, 37, 1000};

// ---- associative_scan ------------------------------------------------------------------------

// How one associative_scan call runs: the reference, or the fast form on some executor / chunking.
struct ScanDirRun {
  const char* name;
  bool reference;
  bool threaded;
  index_t chunk_size;
  bool in_place;
};

const ScanDirRun kScanDirRuns[] = {
    {"reference", true, false, 0, false},       {"serial", false, false, 0, false},
    {"serial in place", false, false, 0, true}, {"threaded", false, true, 0, false},
    {"threaded chunk 64", false, true, 64, false}, {"threaded chunk 7 in place", false, true, 7, true},
};

// Runs `run` on `in` (forward or reverse) and returns the output.
template <class Monoid>
std::vector<typename Monoid::value_type> scan_dir_run(const Monoid& monoid, const std::vector<typename Monoid::value_type>& in,
                                                      const ScanDirRun& run, bool reverse) {
  using Value = typename Monoid::value_type;
  const index_t n = static_cast<index_t>(in.size());
  std::vector<Value> out = run.in_place ? in : std::vector<Value>(in.size());
  const ConstView<Value, 1> in_view(run.in_place ? out.data() : in.data(), {n});
  const TensorView<Value, 1> out_view(out.data(), {n});
  seqmix::AssociativeScanOptions options;
  options.chunk_size = run.chunk_size;
  options.reverse = reverse;
  const seqmix::Executor& ex = run.threaded ? st::two_thread_pool() : seqmix::serial_executor();
  if (run.reference)
    seqmix::reference::associative_scan(monoid, in_view, out_view, options, ex);
  else
    seqmix::associative_scan(monoid, in_view, out_view, options, ex);
  return out;
}

// The reverse call against the forward reference on the reversed copy (reversed back), compared
// element by element with `close(got, want)`.
template <class Monoid, class Close>
void scan_dir_check_monoid(const Monoid& monoid, const std::vector<typename Monoid::value_type>& in, Close&& close) {
  using Value = typename Monoid::value_type;
  const std::vector<Value> flipped(in.rbegin(), in.rend());
  std::vector<Value> want = scan_dir_run(monoid, flipped, kScanDirRuns[0], false);
  want = std::vector<Value>(want.rbegin(), want.rend());
  for (const ScanDirRun& run : kScanDirRuns) {
    INFO("run " << run.name << " n " << in.size());
    const std::vector<Value> got = scan_dir_run(monoid, in, run, true);
    for (std::size_t i = 0; i < in.size(); ++i) {
      INFO("element " << i);
      REQUIRE(close(got[i], want[i]));
    }
  }
}

bool scan_dir_near(double got, double want, double tol) { return std::abs(got - want) <= tol * std::max(1.0, std::abs(want)); }

TEST_CASE("associative_scan reverse equals the forward scan of a reversed copy, every shipped monoid",
          "[direction][scan]") {
  std::vector<index_t> lengths(std::begin(kScanDirLengths), std::end(kScanDirLengths));
  lengths.push_back(st::small_test_scale() ? 4500 : 9000);  // above the automatic parallel threshold
  std::uint64_t seed = 700;
  for (const index_t n : lengths) {
    const Tensor<float, 1> x = st::random_tensor<1>({n}, ++seed);
    const Tensor<float, 1> y = st::random_tensor<1>({n}, ++seed);
    const Tensor<float, 1> a = st::random_tensor<1>({n}, ++seed, 0.5f, 1.f);

    std::vector<float> sums(x.data(), x.data() + n);
    scan_dir_check_monoid(seqmix::SumMonoid<float>{}, sums,
                          [](float g, float w) { return scan_dir_near(g, w, 2e-4); });

    std::vector<seqmix::AffineMap<float>> maps(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) maps[i] = {a(i), x(i)};
    scan_dir_check_monoid(seqmix::AffineMonoid<float>{}, maps, [](const auto& g, const auto& w) {
      return scan_dir_near(g.a, w.a, 1e-4) && scan_dir_near(g.b, w.b, 1e-4);
    });

    std::vector<seqmix::OnlineSoftmaxState> softmax(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) softmax[i] = seqmix::OnlineSoftmaxState::leaf(4.f * x(i), y(i));
    scan_dir_check_monoid(seqmix::OnlineSoftmax{}, softmax, [](const auto& g, const auto& w) {
      return scan_dir_near(g.m, w.m, 1e-6) && scan_dir_near(g.mean(), w.mean(), 1e-4);
    });
  }
}

TEST_CASE("associative_scan reverse with AffineMonoid is h_i = a_i h_(i+1) + b_i from a state before the last element",
          "[direction][scan]") {
  // The documented order: the element processed later (lower index) goes on the right of
  // combine, so the prefix out[i] applied to the state "before element n-1" is the backward
  // recurrence, and out[0] maps it to the state after element 0.
  for (const index_t n : kScanDirLengths) {
    const Tensor<float, 1> a = st::random_tensor<1>({n}, 800 + n, 0.5f, 1.f);
    const Tensor<float, 1> b = st::random_tensor<1>({n}, 900 + n);
    std::vector<seqmix::AffineMap<double>> maps(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) maps[i] = {a(i), b(i)};
    for (const bool threaded : {false, true}) {
      std::vector<seqmix::AffineMap<double>> out(maps.size());
      seqmix::AssociativeScanOptions options;
      options.reverse = true;
      options.chunk_size = threaded ? 5 : 0;
      seqmix::associative_scan(seqmix::AffineMonoid<double>{}, maps.data(), out.data(), n, options,
                               threaded ? st::two_thread_pool() : seqmix::serial_executor());
      const double h_init = 0.75;
      double h = h_init;
      for (index_t i = n - 1; i >= 0; --i) {
        h = a(i) * h + b(i);
        INFO("n " << n << " element " << i << " threaded " << threaded);
        REQUIRE(scan_dir_near(out[i].a * h_init + out[i].b, h, 1e-12));
      }
    }
  }
}

TEST_CASE("associative_scan reverse refuses a bad shape or chunk size before writing", "[direction][scan][errors]") {
  std::vector<float> in(8, 1.f), out(8, 7.f);
  seqmix::AssociativeScanOptions options;
  options.reverse = true;
  options.chunk_size = -1;
  st::require_shape_error("options.chunk_size", [&] {
    seqmix::associative_scan(seqmix::SumMonoid<float>{}, in.data(), out.data(), 8, options);
  });
  options.chunk_size = 0;
  st::require_shape_error("out", [&] {
    seqmix::associative_scan(seqmix::SumMonoid<float>{}, ConstView<float, 1>(in.data(), {8}),
                             TensorView<float, 1>(out.data(), {7}), options);
  });
  st::require_shape_error("out", [&] {
    seqmix::reference::associative_scan(seqmix::SumMonoid<float>{}, ConstView<float, 1>(in.data(), {8}),
                                        TensorView<float, 1>(out.data(), {7}), options);
  });
  for (const float v : out) REQUIRE(v == 7.f);
}

// ---- nonlinear recurrence ------------------------------------------------------------------

// The streams, parameters and initial state of one problem, and explicit reversed copies.
template <class Cell>
struct ScanDirRecurrence {
  index_t B, T, D;
  std::vector<Tensor<float, 3>> streams, flipped;
  std::vector<Tensor<float, 1>> params;
  Tensor<float, 2> h0;
  ScanDirRecurrence(index_t B_, index_t T_, index_t D_, std::uint64_t seed)
      : B(B_), T(T_), D(D_), h0(st::random_tensor<2>({B_, D_}, seed)) {
    for (int s = 0; s < Cell::kInputs; ++s) {
      streams.push_back(st::random_tensor<3>({B, T, D}, seed + 1 + s));
      flipped.emplace_back(std::array<index_t, 3>{B, T, D});
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t)
          for (index_t d = 0; d < D; ++d) flipped.back()(b, t, d) = streams.back()(b, T - 1 - t, d);
    }
    for (int s = 0; s < Cell::kParams; ++s) params.push_back(st::random_tensor<1>({D}, seed + 20 + s));
  }
  seqmix::NonlinearRecurrenceInputs<Cell> inputs(bool reversed_copy) const {
    seqmix::NonlinearRecurrenceInputs<Cell> in;
    for (int s = 0; s < Cell::kInputs; ++s) in.inputs[s] = (reversed_copy ? flipped : streams)[s].cview();
    for (int s = 0; s < Cell::kParams; ++s) in.params[s] = params[s].cview();
    in.h0 = h0.cview();
    return in;
  }
};

enum class ScanDirForm { reference, sequential, newton_reference, newton_channels, newton_time };

const char* scan_dir_form_name(ScanDirForm form) {
  switch (form) {
    case ScanDirForm::reference: return "reference";
    case ScanDirForm::sequential: return "sequential";
    case ScanDirForm::newton_reference: return "newton reference";
    case ScanDirForm::newton_channels: return "newton channels";
    case ScanDirForm::newton_time: return "newton time";
  }
  return "";
}

// One call of `form` in the direction `reverse`; Newton must converge.
template <class Cell>
void scan_dir_solve(ScanDirForm form, const seqmix::NonlinearRecurrenceInputs<Cell>& in,
                    const seqmix::NonlinearRecurrenceOutputs& out, bool reverse, bool threaded) {
  const seqmix::Executor& ex = threaded ? st::two_thread_pool() : seqmix::serial_executor();
  seqmix::NonlinearRecurrenceOptions plain;
  plain.reverse = reverse;
  seqmix::NonlinearRecurrenceNewtonOptions newton;
  newton.reverse = reverse;
  newton.max_iterations = 2000;
  newton.split = form == ScanDirForm::newton_time ? seqmix::NewtonSplit::time : seqmix::NewtonSplit::channels;
  seqmix::NewtonReport report;
  report.converged = true;
  switch (form) {
    case ScanDirForm::reference: seqmix::reference::nonlinear_recurrence(in, out, plain, ex); break;
    case ScanDirForm::sequential: seqmix::nonlinear_recurrence(in, out, plain, ex); break;
    case ScanDirForm::newton_reference: report = seqmix::reference::nonlinear_recurrence_newton(in, out, newton, ex); break;
    case ScanDirForm::newton_channels:
    case ScanDirForm::newton_time: report = seqmix::nonlinear_recurrence_newton(in, out, newton, ex); break;
  }
  INFO(report.message);
  REQUIRE(report.converged);
}

template <class Cell>
void scan_dir_check_recurrence(index_t B, index_t T, index_t D, std::uint64_t seed) {
  const ScanDirRecurrence<Cell> data(B, T, D, seed);
  // The forward sequential reference on the reversed copy, reversed back: the expected result.
  Tensor<float, 3> h_flipped({B, T, D});
  Tensor<float, 2> last_want({B, D});
  seqmix::reference::nonlinear_recurrence(data.inputs(true), {h_flipped.view(), last_want.view()});
  const Tensor<float, 3> h_want = [&] {
    Tensor<float, 3> r({B, T, D});
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t d = 0; d < D; ++d) r(b, t, d) = h_flipped(b, T - 1 - t, d);
    return r;
  }();
  const ScanDirForm forms[] = {ScanDirForm::reference, ScanDirForm::sequential, ScanDirForm::newton_reference,
                               ScanDirForm::newton_channels, ScanDirForm::newton_time};
  for (const ScanDirForm form : forms) {
    if (form == ScanDirForm::newton_reference && T > 37 && st::small_test_scale()) continue;
    for (const bool threaded : {false, true}) {
      INFO(Cell::kName << " form " << scan_dir_form_name(form) << " threaded " << threaded << " B " << B << " T " << T
                       << " D " << D);
      Tensor<float, 3> h({B, T, D});
      Tensor<float, 2> last({B, D});
      scan_dir_solve(form, data.inputs(false), {h.view(), last.view()}, true, threaded);
      // Relative to max|h|. The fast forms contract into FMAs where the reference does not, and
      // over T = 1000 steps of a nonlinear cell those roundings grow to about 1e-5 (g++ -O2
      // -march=native, diag_lstm: 1.2e-5); a wrong direction gives errors of order 1.
      const double tol = 5e-5;
      st::require_close("h", h.cview(), h_want.cview(), tol);
      st::require_close("h_last", last.cview(), last_want.cview(), tol);
    }
  }
}

TEST_CASE("nonlinear_recurrence and nonlinear_recurrence_newton reverse equal the forward recurrence of reversed copies",
          "[direction][newton]") {
  std::uint64_t seed = 1000;
  for (const index_t T : kScanDirLengths) {
    scan_dir_check_recurrence<seqmix::MinGruCell>(3, T, 37, seed += 50);
    scan_dir_check_recurrence<seqmix::DiagLstmCell>(2, T, 19, seed += 50);
  }
}

TEST_CASE("nonlinear_recurrence reverse prefill of tokens T-1..k then steps for k-1..0 equals one reverse call",
          "[direction][newton][step]") {
  using Cell = seqmix::MinGruCell;
  const index_t B = 2, T = 37, D = 21, k = 15;
  const ScanDirRecurrence<Cell> data(B, T, D, 1500);
  Tensor<float, 3> h_full({B, T, D});
  Tensor<float, 2> last_full({B, D});
  seqmix::NonlinearRecurrenceOptions reverse;
  reverse.reverse = true;
  seqmix::nonlinear_recurrence(data.inputs(false), {h_full.view(), last_full.view()}, reverse);

  for (const bool newton : {false, true}) {
    INFO("prefill with " << (newton ? "nonlinear_recurrence_newton" : "nonlinear_recurrence"));
    seqmix::NonlinearRecurrenceInputs<Cell> tail = data.inputs(false);
    for (auto& stream : tail.inputs) stream = stream.slice(1, k, T - k);
    Tensor<float, 3> h_tail({B, T - k, D});
    Tensor<float, 2> state({B, D});
    if (newton) {
      seqmix::NonlinearRecurrenceNewtonOptions options;
      options.reverse = true;
      options.max_iterations = 1000;
      REQUIRE(seqmix::nonlinear_recurrence_newton(tail, {h_tail.view(), state.view()}, options).converged);
    } else {
      seqmix::nonlinear_recurrence(tail, {h_tail.view(), state.view()}, reverse);
    }
    st::require_close("state after token k", state.cview(), h_full.cview().select(1, k), 2e-5);
    for (index_t t = k - 1; t >= 0; --t) {
      seqmix::NonlinearRecurrenceStepInputs<Cell> step;
      for (int s = 0; s < Cell::kInputs; ++s) step.inputs[s] = data.streams[s].cview().select(1, t);
      for (int s = 0; s < Cell::kParams; ++s) step.params[s] = data.params[s].cview();
      seqmix::nonlinear_recurrence_step(step, state.view());
      INFO("step for token " << t);
      st::require_close("state", state.cview(), h_full.cview().select(1, t), 2e-5);
    }
    st::require_close("final state", state.cview(), last_full.cview(), 2e-5);
  }
}

TEST_CASE("nonlinear_recurrence reverse refuses packed batches and bad shapes before writing",
          "[direction][newton][errors]") {
  using Cell = seqmix::MinGruCell;
  const ScanDirRecurrence<Cell> data(1, 12, 5, 1600);
  const std::vector<std::int32_t> cu{0, 5, 12};
  seqmix::NonlinearRecurrenceInputs<Cell> packed = data.inputs(false);
  packed.h0 = {};
  packed.batch.cu_seqlens = cu;
  Tensor<float, 3> h({1, 12, 5});
  for (index_t i = 0; i < h.numel(); ++i) h.data()[i] = 7.f;
  seqmix::NonlinearRecurrenceOptions plain;
  plain.reverse = true;
  seqmix::NonlinearRecurrenceNewtonOptions newton;
  newton.reverse = true;
  const seqmix::NonlinearRecurrenceOutputs out{h.view()};
  st::require_shape_error("options.reverse", [&] { seqmix::nonlinear_recurrence(packed, out, plain); });
  st::require_shape_error("options.reverse", [&] { seqmix::reference::nonlinear_recurrence(packed, out, plain); });
  st::require_shape_error("options.reverse", [&] { seqmix::nonlinear_recurrence_newton(packed, out, newton); });
  st::require_shape_error("options.reverse",
                          [&] { seqmix::reference::nonlinear_recurrence_newton(packed, out, newton); });

  // A wrong h shape (T = 11 for 12 tokens) is refused with reverse set.
  Tensor<float, 3> h_bad({1, 11, 5});
  for (index_t i = 0; i < h_bad.numel(); ++i) h_bad.data()[i] = 7.f;
  const seqmix::NonlinearRecurrenceInputs<Cell> dense = data.inputs(false);
  const seqmix::NonlinearRecurrenceOutputs bad{h_bad.view()};
  st::require_shape_error("h", [&] { seqmix::nonlinear_recurrence(dense, bad, plain); });
  st::require_shape_error("h", [&] { seqmix::nonlinear_recurrence_newton(dense, bad, newton); });
  st::require_shape_error("h", [&] { seqmix::reference::nonlinear_recurrence_newton(dense, bad, newton); });
  for (index_t i = 0; i < h.numel(); ++i) REQUIRE(h.data()[i] == 7.f);
  for (index_t i = 0; i < h_bad.numel(); ++i) REQUIRE(h_bad.data()[i] == 7.f);
}

}  // namespace
