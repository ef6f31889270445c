// ssd's chunked prefill on bf16 x, Bm, Cm with SsdOptions::bf16_compute = dot (the output product
// on AVX512-BF16 dot products, ssm/ssd/bf16_products.hpp) against
//  - the same bf16 inputs with fp32 products (Bf16Compute::fp32): per (sequence, head) normwise
//    relative error of outputs and final states within kDotBound, the bf16 rounding of the
//    product's operands (decay-scaled C, masked C B^T, the state's read-out, dt * x);
//  - the fp32 originals through the reference: within 2^-6, the bound of bf16 storage.
// Where the target has no AVX512-BF16 (the SSE2 build) or P is not a multiple of 16 the option
// falls back to fp32 products, which the first check then sees as equal.
// Ragged shapes: T = 1, T not a multiple of the chunk, odd N, several heads per group, B > 1,
// packed sequences, initial states, with and without D / z / dt_bias / softplus, 2 threads.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/ssd_half_io.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

// Four bf16 roundings of 2^-9 each (two operands, of products of rounded values); the measured
// worst over this file's cases is in docs/operators.md section 3.
constexpr double kDotBound = 1.0 / 128;

// HalfIoCase's fields read as SSD's: H = groups G, HV = heads H, K = state size N, V = head size P.
std::vector<st::HalfIoCase> ssd_bf16_cases() {
  std::vector<st::HalfIoCase> cases = {
      {2, 1, 1, 2, 16, 16, 32, false},     // T = 1
      {2, 65, 2, 4, 33, 32, 32, false},    // one token past two chunks, odd N, 2 heads per group
      {1, 129, 1, 2, 24, 48, 16, false},   // several chunks, ragged last one
      {1, 90, 2, 2, 24, 32, 16, true},     // packed sequences
      {1, 100, 1, 2, 20, 80, 48, false},   // P = 80, chunk off the vector width
      {1, 70, 1, 2, 17, 24, 32, false},    // P not a multiple of 16: fp32 products
  };
  if (!st::small_test_scale()) cases.push_back({1, 600, 1, 4, 128, 64, 32, false});  // a Mamba-2 head
  return cases;
}

st::HalfIoResult run(const seqmix::SsdInputsOf<seqmix::bf16>& in16, const seqmix::SsdInputs* in32,
                     const seqmix::SsdOptions& options, index_t rows, bool reference) {
  const index_t B = in16.x.size(0), T = in16.x.size(1), H = in16.x.size(2), P = in16.x.size(3), N = in16.Bm.size(3);
  st::HalfIoResult r{Tensor<float, 4>({B, T, H, P}), Tensor<float, 4>({rows, H, P, N})};
  const seqmix::SsdOutputs out{r.o.view(), r.s.view()};
  if (reference)
    seqmix::reference::ssd(*in32, out, options);
  else
    seqmix::ssd(in16, out, options, st::two_thread_pool());
  return r;
}

void check_case(const st::HalfIoCase& c, std::uint64_t seed) {
  const st::SsdHalfIoProblem<seqmix::bf16> problem(c, seed);
  const auto& x = problem.x;
  const auto& Bm = problem.Bm;
  const auto& Cm = problem.Cm;
  const index_t P = c.V, rows = problem.rows;
  for (const bool extras : {false, true}) {
    seqmix::SsdInputs in32 = problem.rest(extras, c.packed);
    in32.x = x.orig.cview(), in32.Bm = Bm.orig.cview(), in32.Cm = Cm.orig.cview();
    seqmix::SsdInputsOf<seqmix::bf16> in16;
    in16.x = x.half.cview(), in16.Bm = Bm.half.cview(), in16.Cm = Cm.half.cview();
    in16.dt = in32.dt, in16.A = in32.A, in16.D = in32.D, in16.z = in32.z, in16.dt_bias = in32.dt_bias;
    in16.initial_state = in32.initial_state, in16.batch = in32.batch;
    seqmix::SsdOptions options;
    options.dt_softplus = extras, options.chunk_size = c.chunk, options.algorithm = seqmix::SsdAlgorithm::chunked;
    const st::HalfIoResult fp32 = run(in16, nullptr, options, rows, false);
    const st::HalfIoResult orig = run(in16, &in32, options, rows, true);
    options.bf16_compute = seqmix::Bf16Compute::dot;
    const st::HalfIoResult dot = run(in16, nullptr, options, rows, false);
    const double eo = st::per_head_relative_error(dot.o, fp32.o, 2), es = st::per_head_relative_error(dot.s, fp32.s, 1);
    const double ro = st::per_head_relative_error(dot.o, orig.o, 2), rs = st::per_head_relative_error(dot.s, orig.s, 1);
    INFO(c.describe() << " (G=H, H=HV, N=K, P=V)" << (extras ? " D, z, dt_bias, softplus" : " plain") << " seed "
                      << seed << ": against fp32 products y " << eo << " state " << es
                      << ", against the fp32 originals y " << ro << " state " << rs);
    CHECK(eo <= kDotBound);
    CHECK(es <= kDotBound);
    CHECK(ro <= 1.0 / 64);
    CHECK(rs <= 1.0 / 64);
    if (!seqmix::detail::ssd_bf16_products_fit(P)) CHECK(eo == 0.0);  // the fallback is the fp32 path
  }
}

}  // namespace

TEST_CASE("ssd bf16 dot-product output product: within its bound of fp32 products over ragged shapes",
          "[ssd][bf16]") {
  std::uint64_t seed = 7100;
  for (const st::HalfIoCase& c : ssd_bf16_cases()) {
    check_case(c, seed);
    seed += 20;
  }
}

TEST_CASE("ssd options.bf16_compute out of range is refused before any write", "[ssd][bf16]") {
  const st::HalfStored<seqmix::bf16> x({1, 8, 2, 16}, 1), Bm({1, 8, 1, 8}, 2), Cm({1, 8, 1, 8}, 3);
  const auto dt = st::random_tensor<3>({1, 8, 2}, 4, 0.01f, 0.5f);
  const auto A = st::random_tensor<1>({2}, 5, -2.f, -0.5f);
  seqmix::SsdInputsOf<seqmix::bf16> in;
  in.x = x.half.cview(), in.Bm = Bm.half.cview(), in.Cm = Cm.half.cview(), in.dt = dt.cview(), in.A = A.cview();
  Tensor<float, 4> y({1, 8, 2, 16});
  y.fill(7.f);
  seqmix::SsdOptions options;
  options.bf16_compute = static_cast<seqmix::Bf16Compute>(5);
  st::require_shape_error("options.bf16_compute", [&] { seqmix::ssd(in, {y.view()}, options); });
  CHECK(y(0, 0, 0, 0) == 7.f);
}
