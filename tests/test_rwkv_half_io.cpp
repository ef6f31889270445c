// rwkv6 (prefill, step) on r/k/v stored as bf16 or f16 (Rwkv6InputsOf, Rwkv6StepInputsOf)
// against fp32 inputs (docs/operators.md section 4, half storage):
//  - fp32 inputs holding the same rounded values, same options: the same arithmetic after each
//    row's load, so outputs and final states within 1e-6 normwise;
//  - fp32 inputs holding the unrounded originals: per (sequence, value head) normwise relative
//    error of outputs and final states within the documented bound (2^-6 for bf16 storage, 2^-9
//    for f16 storage).
// A 16-bit prefill followed by 16-bit steps the same way, and against one 16-bit prefill over all
// the tokens. Ragged shapes: T = 1, T not a multiple of the chunk, odd K and V, GQA, B > 1, an
// initial state, packed sequences; chunked and recurrent forms; the reference.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

std::vector<st::HalfIoCase> rwkv_half_cases() {
  std::vector<st::HalfIoCase> cases = {
      {2, 1, 1, 1, 16, 16, 64, false},    // T = 1
      {2, 70, 2, 4, 33, 20, 64, false},   // ragged T, odd K, GQA, B = 2
      {1, 129, 1, 2, 64, 45, 32, false},  // several chunks, ragged last one, odd V
      {1, 90, 2, 2, 24, 32, 16, true},    // packed sequences
  };
  if (!st::small_test_scale()) cases.push_back({1, 300, 1, 2, 64, 64, 48, false});  // 48 does not divide 300
  return cases;
}

// The fp32-only arguments every run of one case shares: log-decays g [B,T,HV,K], bonus u [HV,K],
// initial states, the packed boundaries.
struct RwkvShared {
  seqmix::ConstView<float, 4> g, initial_state;
  seqmix::ConstView<float, 2> u;
  seqmix::SequenceBatch batch;
};

enum class RwkvEntry { fast, reference };

template <class T>
st::HalfIoResult rwkv6_half_run(RwkvEntry e, const Tensor<T, 4>& r, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                                const RwkvShared& shared, const seqmix::Rwkv6Options& options,
                                const seqmix::Executor& executor) {
  const index_t B = r.size(0), T_ = r.size(1);
  st::HalfIoResult res{Tensor<float, 4>({B, T_, v.size(2), v.size(3)}), Tensor<float, 4>(shared.initial_state.shape())};
  seqmix::Rwkv6InputsOf<T> in;
  in.r = r.cview(), in.k = k.cview(), in.v = v.cview(), in.g = shared.g, in.u = shared.u;
  in.initial_state = shared.initial_state, in.batch = shared.batch;
  const seqmix::Rwkv6Outputs out{res.o.view(), res.s.view()};
  if (e == RwkvEntry::reference)
    seqmix::reference::rwkv6(in, out, options, executor);
  else
    seqmix::rwkv6(in, out, options, executor);
  return res;
}

template <class H>
void rwkv6_half_check(const st::HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  using seqmix::LinearAttentionAlgorithm;
  const std::vector<std::int32_t> cu = st::half_io_cu_seqlens(c.T);
  const index_t N = c.packed ? static_cast<index_t>(cu.size()) - 1 : c.B, B = c.packed ? 1 : c.B;
  const st::HalfStored<H> r({B, c.T, c.H, c.K}, seed), k({B, c.T, c.H, c.K}, seed + 1), v({B, c.T, c.HV, c.V}, seed + 2);
  Tensor<float, 4> g({B, c.T, c.HV, c.K});
  st::fill_log_gate(g.view(), seed + 3, -0.1f, 0.f);
  const auto u = st::random_tensor<2>({c.HV, c.K}, seed + 4, -0.5f, 0.5f);
  const auto s0 = st::random_tensor<4>({N, c.HV, c.K, c.V}, seed + 5, -0.5f, 0.5f);
  RwkvShared shared{g.cview(), s0.cview(), u.cview(), {}};
  if (c.packed) shared.batch.cu_seqlens = cu;
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  for (const LinearAttentionAlgorithm algorithm : {LinearAttentionAlgorithm::chunked, LinearAttentionAlgorithm::recurrent})
    for (const RwkvEntry e : {RwkvEntry::fast, RwkvEntry::reference}) {
      if (e == RwkvEntry::reference && algorithm != LinearAttentionAlgorithm::chunked) continue;  // no algorithm choice
      seqmix::Rwkv6Options options;
      options.chunk_size = c.chunk, options.algorithm = algorithm;
      INFO(c.describe() << (algorithm == LinearAttentionAlgorithm::chunked ? " chunked" : " recurrent")
                        << (e == RwkvEntry::reference ? " reference" : " fast") << " seed " << seed);
      st::check_half_io(rwkv6_half_run(e, r.half, k.half, v.half, shared, options, executor),
                        rwkv6_half_run(e, r.rounded, k.rounded, v.rounded, shared, options, executor),
                        rwkv6_half_run(e, r.orig, k.orig, v.orig, shared, options, executor), bound);
    }
}

// rwkv6 over tokens [0, T1) as one prefill, then tokens [T1, T) one rwkv6_step each, with r/k/v
// of storage type T; dense batch, states from s0. Returns all outputs and the final state.
template <class T>
st::HalfIoResult rwkv6_prefill_then_steps(index_t T1, const Tensor<T, 4>& r, const Tensor<T, 4>& k,
                                          const Tensor<T, 4>& v, const RwkvShared& shared) {
  const index_t B = r.size(0), T_ = r.size(1);
  st::HalfIoResult res{Tensor<float, 4>({B, T_, v.size(2), v.size(3)}), Tensor<float, 4>(shared.initial_state.shape())};
  seqmix::Rwkv6InputsOf<T> in;
  in.r = r.cview().slice(1, 0, T1), in.k = k.cview().slice(1, 0, T1), in.v = v.cview().slice(1, 0, T1);
  in.g = shared.g.slice(1, 0, T1), in.u = shared.u, in.initial_state = shared.initial_state;
  seqmix::Rwkv6Options options;
  options.chunk_size = 16;
  seqmix::rwkv6(in, {res.o.view().slice(1, 0, T1), res.s.view()}, options);
  for (index_t t = T1; t < T_; ++t) {
    const seqmix::Rwkv6StepInputsOf<T> step{r.cview().select(1, t), k.cview().select(1, t), v.cview().select(1, t),
                                            shared.g.select(1, t), shared.u};
    seqmix::rwkv6_step(step, {res.o.view().select(1, t), res.s.view()}, options);
  }
  return res;
}

template <class H>
void rwkv6_step_half_check(std::uint64_t seed) {
  const index_t B = 3, T = 57, HK = 2, HV = 4, K = 33, V = 20, T1 = 37;
  const st::HalfStored<H> r({B, T, HK, K}, seed), k({B, T, HK, K}, seed + 1), v({B, T, HV, V}, seed + 2);
  Tensor<float, 4> g({B, T, HV, K});
  st::fill_log_gate(g.view(), seed + 3, -0.1f, 0.f);
  const auto u = st::random_tensor<2>({HV, K}, seed + 4, -0.5f, 0.5f);
  const auto s0 = st::random_tensor<4>({B, HV, K, V}, seed + 5, -0.5f, 0.5f);
  const RwkvShared shared{g.cview(), s0.cview(), u.cview(), {}};
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  INFO("rwkv6 prefill of 37 tokens then 20 steps, B=3 HK=2 HV=4 K=33 V=20 seed " << seed);
  const st::HalfIoResult half = rwkv6_prefill_then_steps(T1, r.half, k.half, v.half, shared);
  st::check_half_io(half, rwkv6_prefill_then_steps(T1, r.rounded, k.rounded, v.rounded, shared),
                    rwkv6_prefill_then_steps(T1, r.orig, k.orig, v.orig, shared), bound);
  // One 16-bit prefill over all the tokens (chunked: another summation order, so a tolerance).
  seqmix::Rwkv6Options options;
  options.chunk_size = 16;
  const st::HalfIoResult one = rwkv6_half_run(RwkvEntry::fast, r.half, k.half, v.half, shared, options,
                                              seqmix::serial_executor());
  CHECK(st::per_head_relative_error(half.o, one.o, 2) <= 1e-5);
  CHECK(st::per_head_relative_error(half.s, one.s, 1) <= 1e-5);
}

}  // namespace

TEST_CASE("rwkv6 with bf16 r, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[rwkv6][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 7100;
  for (const st::HalfIoCase& c : rwkv_half_cases()) rwkv6_half_check<seqmix::bf16>(c, seed += 10, pool);
}

TEST_CASE("rwkv6 with f16 r, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[rwkv6][f16]") {
  std::uint64_t seed = 7300;
  for (const st::HalfIoCase& c : rwkv_half_cases()) rwkv6_half_check<seqmix::f16>(c, seed += 10, seqmix::serial_executor());
}

TEST_CASE("rwkv6 prefill then steps with bf16 or f16 r, k and v: equal to fp32 of the same values and to one prefill",
          "[rwkv6][bf16][f16]") {
  rwkv6_step_half_check<seqmix::bf16>(7500);
  rwkv6_step_half_check<seqmix::f16>(7550);
}

TEST_CASE("rwkv6 with bf16 r, k and v: a bad shape is refused before any write, reverse takes them", "[rwkv6][bf16]") {
  Tensor<seqmix::bf16, 4> r({1, 9, 2, 8}), k({1, 9, 2, 8}), v({1, 9, 3, 8});  // HV = 3 not a multiple of H = 2
  Tensor<float, 4> g({1, 9, 3, 8});
  st::fill_log_gate(g.view(), 7700, -0.1f, 0.f);
  Tensor<float, 2> u({3, 8});
  Tensor<float, 4> o({1, 9, 3, 8});
  Tensor<float, 4> state({1, 3, 8, 8});
  std::fill(o.data(), o.data() + o.numel(), 3.f);
  std::fill(state.data(), state.data() + state.numel(), 3.f);
  seqmix::Rwkv6InputsOf<seqmix::bf16> in;
  in.r = r.cview(), in.k = k.cview(), in.v = v.cview(), in.g = g.cview(), in.u = u.cview();
  CHECK_THROWS_AS(seqmix::rwkv6(in, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::rwkv6(in, {o.view()}), seqmix::ShapeError);
  const seqmix::Rwkv6StepInputsOf<seqmix::bf16> step{r.cview().select(1, 0), k.cview().select(1, 0),
                                                     v.cview().select(1, 0), g.cview().select(1, 0), u.cview()};
  CHECK_THROWS_AS(seqmix::rwkv6_step(step, {o.view().select(1, 0), state.view()}), seqmix::ShapeError);
  REQUIRE(std::all_of(o.data(), o.data() + o.numel(), [](float x) { return x == 3.f; }));
  REQUIRE(std::all_of(state.data(), state.data() + state.numel(), [](float x) { return x == 3.f; }));
  // reverse: the reversed views of 16-bit inputs, as for fp32.
  const st::HalfStored<seqmix::bf16> r2({1, 9, 2, 8}, 7701), k2({1, 9, 2, 8}, 7702), v2({1, 9, 2, 8}, 7703);
  Tensor<float, 4> g2({1, 9, 2, 8});
  st::fill_log_gate(g2.view(), 7704, -0.1f, 0.f);
  const auto u2 = st::random_tensor<2>({2, 8}, 7705, -0.5f, 0.5f);
  Tensor<float, 4> o16({1, 9, 2, 8}), o32({1, 9, 2, 8});
  in.r = r2.half.cview(), in.k = k2.half.cview(), in.v = v2.half.cview(), in.g = g2.cview(), in.u = u2.cview();
  seqmix::Rwkv6Inputs in32;
  in32.r = r2.rounded.cview(), in32.k = k2.rounded.cview(), in32.v = v2.rounded.cview(), in32.g = g2.cview();
  in32.u = u2.cview();
  seqmix::Rwkv6Options reverse;
  reverse.reverse = true;
  seqmix::rwkv6(in, {o16.view()}, reverse);
  seqmix::rwkv6(in32, {o32.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-6);
  seqmix::reference::rwkv6(in, {o16.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-5);
}
