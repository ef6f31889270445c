// ssd and ssd_step on x, Bm and Cm stored as bf16 or f16 (SsdInputsOf / SsdStepInputsOf) against
// fp32 inputs (docs/operators.md section 4, half storage):
//  - fp32 inputs holding the same rounded values, same options: the same arithmetic after each
//    row's load, so outputs and final states within 1e-6 normwise;
//  - fp32 inputs holding the unrounded originals: per (sequence, head) normwise relative error
//    within 2^-6 (bf16) / 2^-9 (f16).
// Ragged shapes: T = 1, T not a multiple of the chunk, odd P and N, several heads per group, B > 1,
// initial states, packed sequences; with and without D, z, dt_bias and softplus; chunked and
// recurrent forms; the reference; steps; reverse. HalfIoCase's fields read as SSD's: H = groups
// G, HV = heads H, K = state size N, V = head size P.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix/ssm/ssd/step.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/ssd_half_io.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

std::vector<st::HalfIoCase> ssd_half_cases() {
  std::vector<st::HalfIoCase> cases = {
      {2, 1, 1, 1, 16, 16, 32, false},    // T = 1
      {2, 65, 2, 4, 33, 20, 32, false},   // one token past two chunks, odd N, 2 heads per group
      {1, 129, 1, 2, 24, 47, 16, false},  // several chunks, ragged last one, odd P
      {1, 90, 2, 2, 24, 32, 16, true},    // packed sequences
  };
  if (!st::small_test_scale()) cases.push_back({1, 1000, 1, 2, 128, 64, 48, false});
  return cases;
}

enum class SsdEntry { fast, reference };

// The fp32 inputs of a case (everything but x, Bm, Cm) and its options.
struct SsdRest {
  seqmix::SsdInputs in;
  seqmix::SsdOptions options;
};

template <class T>
st::HalfIoResult ssd_half_run(SsdEntry e, const Tensor<T, 4>& x, const Tensor<T, 4>& Bm, const Tensor<T, 4>& Cm,
                              const SsdRest& rest, const seqmix::Executor& executor) {
  seqmix::SsdInputsOf<T> in;
  in.x = x.cview(), in.Bm = Bm.cview(), in.Cm = Cm.cview();
  in.dt = rest.in.dt, in.A = rest.in.A, in.D = rest.in.D, in.z = rest.in.z, in.dt_bias = rest.in.dt_bias;
  in.initial_state = rest.in.initial_state, in.batch = rest.in.batch;
  const index_t N = rest.in.initial_state.size(0), H = x.size(2), P = x.size(3), Ns = Bm.size(3);
  st::HalfIoResult r{Tensor<float, 4>({x.size(0), x.size(1), H, P}), Tensor<float, 4>({N, H, P, Ns})};
  const seqmix::SsdOutputs out{r.o.view(), r.s.view()};
  if (e == SsdEntry::reference)
    seqmix::reference::ssd(in, out, rest.options, executor);
  else
    seqmix::ssd(in, out, rest.options, executor);
  return r;
}

template <class H>
void ssd_half_check(const st::HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  const st::SsdHalfIoProblem<H> problem(c, seed);
  const auto& x = problem.x;
  const auto& Bm = problem.Bm;
  const auto& Cm = problem.Cm;
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  for (const bool extras : {false, true})
    for (const seqmix::SsdAlgorithm algorithm : {seqmix::SsdAlgorithm::chunked, seqmix::SsdAlgorithm::recurrent})
      for (const SsdEntry e : {SsdEntry::fast, SsdEntry::reference}) {
        if (e == SsdEntry::reference && algorithm != seqmix::SsdAlgorithm::chunked) continue;  // no algorithm choice
        SsdRest rest;
        rest.in = problem.rest(extras, c.packed);
        rest.options.dt_softplus = extras, rest.options.chunk_size = c.chunk, rest.options.algorithm = algorithm;
        INFO(c.describe() << " (G=H, H=HV, N=K, P=V)" << (extras ? " D, z, dt_bias, softplus" : " plain")
                          << (algorithm == seqmix::SsdAlgorithm::chunked ? " chunked" : " recurrent")
                          << (e == SsdEntry::reference ? " reference" : " fast") << " seed " << seed);
        st::check_half_io(ssd_half_run(e, x.half, Bm.half, Cm.half, rest, executor),
                          ssd_half_run(e, x.rounded, Bm.rounded, Cm.rounded, rest, executor),
                          ssd_half_run(e, x.orig, Bm.orig, Cm.orig, rest, executor), bound);
      }
}

// Steps over the tokens of x from a random state: outputs [B,steps,H,P] and the final state.
template <class T>
st::HalfIoResult ssd_step_run(const Tensor<T, 4>& x, const Tensor<T, 4>& Bm, const Tensor<T, 4>& Cm,
                              const seqmix::SsdInputs& rest, const Tensor<float, 4>& s0) {
  const index_t B = x.size(0), steps = x.size(1), H = x.size(2), P = x.size(3);
  st::HalfIoResult r{Tensor<float, 4>({B, steps, H, P}), s0};
  Tensor<float, 3> y({B, H, P});
  seqmix::SsdOptions options;
  options.dt_softplus = true;
  for (index_t t = 0; t < steps; ++t) {
    seqmix::SsdStepInputsOf<T> in;
    in.x = x.cview().select(1, t), in.Bm = Bm.cview().select(1, t), in.Cm = Cm.cview().select(1, t);
    in.dt = rest.dt.select(1, t), in.A = rest.A, in.D = rest.D, in.z = rest.z.select(1, t), in.dt_bias = rest.dt_bias;
    seqmix::ssd_step(in, {y.view(), r.s.view()}, options);
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; ++h)
        for (index_t p = 0; p < P; ++p) r.o(b, t, h, p) = y(b, h, p);
  }
  return r;
}

template <class H>
void ssd_step_check(std::uint64_t seed) {
  const index_t B = 2, steps = 40, G = 2, Hh = 4, Ns = 17, P = 12;
  const st::HalfStored<H> x({B, steps, Hh, P}, seed), Bm({B, steps, G, Ns}, seed + 1), Cm({B, steps, G, Ns}, seed + 2);
  const auto dt = st::random_tensor<3>({B, steps, Hh}, seed + 3, -4.f, 1.f);
  const auto A = st::random_tensor<1>({Hh}, seed + 4, -4.f, -0.05f);
  const auto D = st::random_tensor<1>({Hh}, seed + 5);
  const auto dt_bias = st::random_tensor<1>({Hh}, seed + 6, -2.f, 2.f);
  const auto z = st::random_tensor<4>({B, steps, Hh, P}, seed + 7, -3.f, 3.f);
  const auto s0 = st::random_tensor<4>({B, Hh, P, Ns}, seed + 8, -0.5f, 0.5f);
  seqmix::SsdInputs rest;
  rest.dt = dt.cview(), rest.A = A.cview(), rest.D = D.cview(), rest.z = z.cview(), rest.dt_bias = dt_bias.cview();
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  INFO("ssd_step over 40 tokens, seed " << seed);
  st::check_half_io(ssd_step_run(x.half, Bm.half, Cm.half, rest, s0),
                    ssd_step_run(x.rounded, Bm.rounded, Cm.rounded, rest, s0),
                    ssd_step_run(x.orig, Bm.orig, Cm.orig, rest, s0), bound);
}

}  // namespace

TEST_CASE("ssd with bf16 x, Bm and Cm: equal to fp32 inputs of the same values, within the bound of fp32",
          "[ssd][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 7100;
  for (const st::HalfIoCase& c : ssd_half_cases()) ssd_half_check<seqmix::bf16>(c, seed += 20, pool);
  ssd_step_check<seqmix::bf16>(7190);
}

TEST_CASE("ssd with f16 x, Bm and Cm: equal to fp32 inputs of the same values, within the bound of fp32",
          "[ssd][f16]") {
  std::uint64_t seed = 7500;
  for (const st::HalfIoCase& c : ssd_half_cases()) ssd_half_check<seqmix::f16>(c, seed += 20, seqmix::serial_executor());
  ssd_step_check<seqmix::f16>(7590);
}

TEST_CASE("ssd with bf16 x, Bm and Cm: reverse takes them, a bad shape is refused before any write", "[ssd][bf16]") {
  Tensor<seqmix::bf16, 4> x({1, 9, 3, 8}), Bm({1, 9, 2, 8}), Cm({1, 9, 2, 8});  // H = 3 not a multiple of G = 2
  const auto dt = st::random_tensor<3>({1, 9, 3}, 76, 0.01f, 0.5f);
  const auto A = st::random_tensor<1>({3}, 77, -2.f, -0.1f);
  Tensor<float, 4> y({1, 9, 3, 8});
  std::fill(y.data(), y.data() + y.numel(), 3.f);
  seqmix::SsdInputsOf<seqmix::bf16> in;
  in.x = x.cview(), in.Bm = Bm.cview(), in.Cm = Cm.cview(), in.dt = dt.cview(), in.A = A.cview();
  CHECK_THROWS_AS(seqmix::ssd(in, {y.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::ssd(in, {y.view()}), seqmix::ShapeError);
  REQUIRE(std::all_of(y.data(), y.data() + y.numel(), [](float v) { return v == 3.f; }));
  // reverse on the reversed views of 16-bit inputs, as for fp32 inputs of the same values.
  const st::HalfStored<seqmix::bf16> x2({1, 9, 2, 8}, 78), B2({1, 9, 1, 8}, 79), C2({1, 9, 1, 8}, 80);
  const auto dt2 = st::random_tensor<3>({1, 9, 2}, 81, 0.01f, 0.5f);
  const auto A2 = st::random_tensor<1>({2}, 82, -2.f, -0.1f);
  Tensor<float, 4> y16({1, 9, 2, 8}), y32({1, 9, 2, 8});
  in.x = x2.half.cview(), in.Bm = B2.half.cview(), in.Cm = C2.half.cview(), in.dt = dt2.cview(), in.A = A2.cview();
  seqmix::SsdInputs in32;
  in32.x = x2.rounded.cview(), in32.Bm = B2.rounded.cview(), in32.Cm = C2.rounded.cview();
  in32.dt = dt2.cview(), in32.A = A2.cview();
  seqmix::SsdOptions reverse;
  reverse.reverse = true;
  seqmix::ssd(in, {y16.view()}, reverse);
  seqmix::ssd(in32, {y32.view()}, reverse);
  REQUIRE(st::per_head_relative_error(y16, y32, 2) <= 1e-6);
  seqmix::reference::ssd(in, {y16.view()}, reverse);
  REQUIRE(st::per_head_relative_error(y16, y32, 2) <= 1e-5);
}
