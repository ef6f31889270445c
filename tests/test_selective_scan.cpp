// selective_scan: the fast prefill and the decode step against the reference, over a shape table
// that straddles the SIMD width in both D (per group) and N.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

// Vector exp (about 1 ulp) against std::exp and reordered sums over N: a few ulp per token; the
// decays keep the state from amplifying them.
constexpr double kTol = 2e-5;

// Which optional inputs a case gives (bit flags keep the table short).
enum Optional : unsigned {
  kDskip = 1, kZ = 2, kDeltaBias = 4, kState = 8, kSoftplus = 16, kAll = 31,
};

struct ScanCase {
  index_t B, T, D, N, G;
  unsigned optional;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " N=" << N << " G=" << G << " Dskip=" << bool(optional & kDskip)
      << " z=" << bool(optional & kZ) << " delta_bias=" << bool(optional & kDeltaBias)
      << " state=" << bool(optional & kState) << " softplus=" << bool(optional & kSoftplus) << " seed=" << seed;
    return s.str();
  }
};

// T in {1, 17, 64, 65, 300, 2048}; N odd-sized (80 = 5 AVX-512 vectors, 5 and 8 below one);
// D per group below, at and above the SIMD width; G in {1, 2}; B in {1, 3}; each optional input
// on and off across the table.
std::vector<ScanCase> scan_cases() {
  struct DNG {
    index_t D, N, G;
  };
  const index_t Ts[] = {1, 17, 64, 65, 300, 2048};
  const DNG shapes[] = {{16, 16, 1}, {48, 80, 2}, {34, 8, 2}, {5, 5, 1}, {40, 16, 2}};
  std::vector<ScanCase> cases;
  std::uint64_t seed = 1;
  for (index_t T : Ts)
    for (const DNG& s : shapes) {
      if (T == 2048 && s.N == 80 && st::small_test_scale()) continue;
      const index_t B = (seed % 3 == 0) ? 3 : 1;
      const unsigned optional = static_cast<unsigned>((seed * 7) % 32);
      cases.push_back({B, T, s.D, s.N, s.G, optional, seed});
      ++seed;
    }
  // Everything on and everything off, at a ragged size.
  cases.push_back({3, 65, 48, 17, 2, kAll, 90});
  cases.push_back({1, 65, 48, 17, 1, 0, 91});
  return cases;
}

struct ScanData {
  Tensor<float, 3> u, delta, z, state;
  Tensor<float, 2> A;
  Tensor<float, 4> Bm, Cm;
  Tensor<float, 1> Dskip, delta_bias;

  explicit ScanData(const ScanCase& c)
      : u(st::random_tensor<3>({c.B, c.T, c.D}, c.seed * 20 + 1)),
        // dt > 0 without softplus; with it, delta + bias spans both sides of 0 and the x > 20 branch.
        delta((c.optional & kSoftplus) ? st::random_tensor<3>({c.B, c.T, c.D}, c.seed * 20 + 2, -5.f, 1.f)
                                       : st::random_tensor<3>({c.B, c.T, c.D}, c.seed * 20 + 2, 0.001f, 0.5f)),
        z(st::random_tensor<3>({c.B, c.T, c.D}, c.seed * 20 + 3, -3.f, 3.f)),
        state(st::random_tensor<3>({c.B, c.D, c.N}, c.seed * 20 + 4)),
        A(st::random_tensor<2>({c.D, c.N}, c.seed * 20 + 5, -4.f, -0.05f)),
        Bm(st::random_tensor<4>({c.B, c.T, c.G, c.N}, c.seed * 20 + 6)),
        Cm(st::random_tensor<4>({c.B, c.T, c.G, c.N}, c.seed * 20 + 7)),
        Dskip(st::random_tensor<1>({c.D}, c.seed * 20 + 8)),
        delta_bias((c.optional & kSoftplus) ? st::random_tensor<1>({c.D}, c.seed * 20 + 9, -2.f, 2.f)
                                            : st::random_tensor<1>({c.D}, c.seed * 20 + 9, 0.f, 0.1f)) {
    if (c.D > 0 && (c.optional & kSoftplus)) delta_bias(0) = 25.f;  // softplus identity branch
  }

  seqmix::SelectiveScanInputs inputs(const ScanCase& c) const {
    seqmix::SelectiveScanInputs in;
    in.u = u.view();
    in.delta = delta.view();
    in.A = A.view();
    in.Bm = Bm.view();
    in.Cm = Cm.view();
    if (c.optional & kDskip) in.Dskip = Dskip.view();
    if (c.optional & kZ) in.z = z.view();
    if (c.optional & kDeltaBias) in.delta_bias = delta_bias.view();
    if (c.optional & kState) in.initial_state = state.view();
    return in;
  }

  // Token t of the sequence as decode-step inputs.
  seqmix::SelectiveScanStepInputs step_inputs(const ScanCase& c, index_t t) const {
    const auto in = inputs(c);
    seqmix::SelectiveScanStepInputs s;
    s.u = in.u.select(1, t);
    s.delta = in.delta.select(1, t);
    s.A = in.A;
    s.Bm = in.Bm.select(1, t);
    s.Cm = in.Cm.select(1, t);
    s.Dskip = in.Dskip;
    if (in.z.has_value()) s.z = in.z.select(1, t);
    s.delta_bias = in.delta_bias;
    return s;
  }
};

seqmix::SelectiveScanOptions options_of(const ScanCase& c) {
  seqmix::SelectiveScanOptions options;
  options.delta_softplus = (c.optional & kSoftplus) != 0;
  return options;
}

template <std::size_t R>
void require_close(const char* what, const seqmix::ConstView<float, R>& out, const seqmix::ConstView<float, R>& ref,
                   double tol = kTol) {
  st::require_close(what, out, ref, tol);
}

const seqmix::ThreadPool& pool() { return st::two_thread_pool(); }

}  // namespace

TEST_CASE("selective_scan fast matches the reference over the shape table", "[selective_scan]") {
  for (const ScanCase& c : scan_cases()) {
    INFO(c.describe());
    const ScanData data(c);
    const auto in = data.inputs(c);
    Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.D, c.N});
    seqmix::reference::selective_scan(in, {y_ref.view(), s_ref.view()}, options_of(c));
    for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool())}) {
      INFO("threads=" << executor->concurrency());
      Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.D, c.N});
      seqmix::selective_scan(in, {y.view(), s.view()}, options_of(c), *executor);
      require_close<3>("y", y.view(), y_ref.view());
      require_close<3>("final_state", s.view(), s_ref.view());
    }
  }
}

TEST_CASE("selective_scan fast accepts strided views and no final state", "[selective_scan]") {
  const ScanCase c{2, 33, 24, 12, 2, kAll, 55};
  INFO(c.describe());
  const ScanData data(c);
  Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.D, c.N});
  seqmix::reference::selective_scan(data.inputs(c), {y_ref.view(), s_ref.view()}, options_of(c));
  // u, delta, z and y use every other channel of a wider buffer; Bm and Cm every other n.
  auto widen3 = [](const Tensor<float, 3>& src) {
    Tensor<float, 3> wide({src.size(0), src.size(1), 2 * src.size(2)});
    return wide;
  };
  auto strided3 = [](Tensor<float, 3>& wide) {
    return TensorView<float, 3>(wide.data(), {wide.size(0), wide.size(1), wide.size(2) / 2},
                                {wide.size(1) * wide.size(2), wide.size(2), 2});
  };
  auto strided4 = [](Tensor<float, 4>& wide) {
    return TensorView<float, 4>(wide.data(), {wide.size(0), wide.size(1), wide.size(2), wide.size(3) / 2},
                                {wide.size(1) * wide.size(2) * wide.size(3), wide.size(2) * wide.size(3),
                                 wide.size(3), 2});
  };
  Tensor<float, 3> uw = widen3(data.u), dw = widen3(data.delta), zw = widen3(data.z), yw = widen3(data.u),
                   sw = widen3(data.state);
  Tensor<float, 4> bw({c.B, c.T, c.G, 2 * c.N}), cw({c.B, c.T, c.G, 2 * c.N});
  const auto u = strided3(uw), delta = strided3(dw), z = strided3(zw), y = strided3(yw), s = strided3(sw);
  const auto Bm = strided4(bw), Cm = strided4(cw);
  seqmix::copy(data.u.view(), u);
  seqmix::copy(data.delta.view(), delta);
  seqmix::copy(data.z.view(), z);
  seqmix::copy(data.state.view(), s);
  seqmix::copy(data.Bm.view(), Bm);
  seqmix::copy(data.Cm.view(), Cm);
  auto in = data.inputs(c);
  in.u = u, in.delta = delta, in.z = z, in.Bm = Bm, in.Cm = Cm, in.initial_state = s;
  seqmix::selective_scan(in, {y, {}}, options_of(c), pool());
  require_close<3>("y", y.as_const(), y_ref.view());
  // Carrying the state in place through a strided view.
  seqmix::selective_scan(in, {y, s}, options_of(c), pool());
  require_close<3>("final_state", s.as_const(), s_ref.view());
}

TEST_CASE("selective_scan prefill(T1) + prefill(T2) + steps equals one call", "[selective_scan]") {
  const ScanCase cases[] = {
      {2, 40, 32, 16, 1, kAll, 101},
      {1, 23, 48, 80, 2, kSoftplus | kZ, 102},
      {3, 30, 34, 8, 2, kDskip | kDeltaBias, 103},
      {1, 12, 1536, 16, 1, kAll, 104},  // large enough for the threaded step
  };
  for (const ScanCase& c : cases) {
    const index_t steps = 4, T1 = c.T / 3, T2 = c.T - T1 - steps;
    INFO(c.describe() << " T1=" << T1 << " T2=" << T2 << " steps=" << steps);
    const ScanData data(c);
    const auto options = options_of(c);
    Tensor<float, 3> y_ref({c.B, c.T, c.D}), s_ref({c.B, c.D, c.N});
    seqmix::reference::selective_scan(data.inputs(c), {y_ref.view(), s_ref.view()}, options);

    // The state is carried in place: final_state is the same view as initial_state.
    Tensor<float, 3> state({c.B, c.D, c.N}), y({c.B, c.T, c.D});
    if (c.optional & kState) seqmix::copy(data.state.view(), state.view());
    auto run_prefill = [&](index_t t0, index_t len) {
      auto in = data.inputs(c);
      in.u = in.u.slice(1, t0, len);
      in.delta = in.delta.slice(1, t0, len);
      in.Bm = in.Bm.slice(1, t0, len);
      in.Cm = in.Cm.slice(1, t0, len);
      if (in.z.has_value()) in.z = in.z.slice(1, t0, len);
      in.initial_state = state.view();
      seqmix::selective_scan(in, {y.view().slice(1, t0, len), state.view()}, options, pool());
    };
    run_prefill(0, T1);
    run_prefill(T1, T2);
    for (index_t t = T1 + T2; t < c.T; ++t)
      seqmix::selective_scan_step(data.step_inputs(c, t), {y.view().select(1, t), state.view()}, options, pool());
    require_close<3>("y", y.view(), y_ref.view());
    require_close<3>("final_state", state.view(), s_ref.view());
  }
}

TEST_CASE("selective_scan_step matches a one-token reference call", "[selective_scan]") {
  const ScanCase cases[] = {
      {1, 1, 1536, 16, 1, kAll, 201}, {3, 1, 48, 80, 2, kSoftplus | kState, 202},
      {2, 1, 34, 5, 2, kAll, 203},    {1, 1, 16, 17, 1, kDskip | kZ | kState, 204},
  };
  for (const ScanCase& c : cases) {
    INFO(c.describe());
    const ScanData data(c);
    Tensor<float, 3> y_ref({c.B, 1, c.D}), s_ref({c.B, c.D, c.N});
    seqmix::reference::selective_scan(data.inputs(c), {y_ref.view(), s_ref.view()}, options_of(c));
    Tensor<float, 3> state({c.B, c.D, c.N});
    if (c.optional & kState) seqmix::copy(data.state.view(), state.view());
    Tensor<float, 3> y({c.B, 1, c.D});
    seqmix::selective_scan_step(data.step_inputs(c, 0), {y.view().select(1, 0), state.view()}, options_of(c),
                                pool());
    require_close<3>("y", y.view(), y_ref.view());
    require_close<3>("state", state.view(), s_ref.view());
  }
}

TEST_CASE("selective_scan rejects bad arguments before writing", "[selective_scan]") {
  const ScanCase c{2, 8, 12, 4, 2, kAll, 301};
  const ScanData data(c);
  Tensor<float, 3> y({c.B, c.T, c.D}), s({c.B, c.D, c.N});
  y.fill(7.f);
  auto expect_error = [&](const seqmix::SelectiveScanInputs& in, const seqmix::SelectiveScanOutputs& out, const char* argument) {
    st::require_shape_error(argument, [&] { seqmix::selective_scan(in, out); });
    st::require_shape_error(argument, [&] { seqmix::reference::selective_scan(in, out); });
    for (float v : y) REQUIRE(v == 7.f);  // nothing written before the check failed
  };
  const auto good = data.inputs(c);
  Tensor<float, 4> bm_groups({c.B, c.T, 5, c.N}), cm_bad({c.B, c.T, c.G, c.N + 1});
  Tensor<float, 2> a_bad({c.D + 1, c.N}), a_nan({c.D, c.N});
  a_nan.fill(-1.f);
  a_nan(3, 2) = std::numeric_limits<float>::quiet_NaN();
  Tensor<float, 3> delta_bad({c.B, c.T - 1, c.D}), state_bad({c.B, c.N, c.D});
  Tensor<float, 1> skip_bad({c.D + 1});
  auto in = good;
  in.Bm = bm_groups.view();
  expect_error(in, {y.view(), s.view()}, "Bm");  // 5 groups do not divide D = 12
  in = good;
  in.Cm = cm_bad.view();
  expect_error(in, {y.view(), s.view()}, "Cm");
  in = good;
  in.A = a_bad.view();
  expect_error(in, {y.view(), s.view()}, "A");
  in = good;
  in.A = a_nan.view();
  expect_error(in, {y.view(), s.view()}, "A");
  in = good;
  in.delta = delta_bad.view();
  expect_error(in, {y.view(), s.view()}, "delta");
  in = good;
  in.Dskip = skip_bad.view();
  expect_error(in, {y.view(), s.view()}, "Dskip");
  in = good;
  in.initial_state = state_bad.view();
  expect_error(in, {y.view(), s.view()}, "initial_state");
  expect_error(good, {y.view(), state_bad.view()}, "final_state");

  Tensor<float, 2> y1({c.B, c.D});
  CHECK_THROWS_AS(seqmix::selective_scan_step(data.step_inputs(c, 0), {y1.view(), state_bad.view()}),
                  seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::selective_scan_step(data.step_inputs(c, 0), {y1.view(), {}}), seqmix::ShapeError);
}
