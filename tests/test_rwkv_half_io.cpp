// rwkv6 (prefill, step) on r/k/v and rwkv7 (prefill, step, slice) on r/k/v/a/b stored as bf16
// or f16 (Rwkv6InputsOf, Rwkv6StepInputsOf, Rwkv7InputsOf, Rwkv7StepInputsOf) against fp32
// inputs (docs/operators.md section 4, half storage):
//  - fp32 inputs holding the same rounded values, same options: the same arithmetic after each
//    row's load, so outputs and final states within 1e-6 normwise;
//  - fp32 inputs holding the unrounded originals: per (sequence, value head) normwise relative
//    error of outputs and final states within the documented bound (2^-6 for bf16 storage, 2^-9
//    for f16 storage).
// A 16-bit prefill followed by 16-bit steps the same way, and against one 16-bit prefill over all
// the tokens. Ragged shapes: T = 1, T not a multiple of the chunk, odd K and V, GQA, B > 1, an
// initial state, packed sequences; chunked and recurrent forms (rwkv7: recurrent only, no GQA);
// the reference. rwkv6_slice / rwkv6_slice_correct and the streaming wrapper (run_in_segments) of
// both on 16-bit inputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "seqmix/chunked/streaming.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix/linear_attention/rwkv6/slice.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/linear_attention/rwkv7/slice.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
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

// rwkv7's five 16-bit inputs: r, k, v random; a = -kappa (unit norm per row) and b = kappa * lr
// with lr in (0, 1), RWKV-7's own parameterization, which keeps the transition contractive.
// `rounded` / `orig` as in HalfStored.
template <class H>
struct Rwkv7Stored {
  st::HalfStored<H> r, k, v, a, b;
  Rwkv7Stored(index_t B, index_t T, index_t NH, index_t K, index_t V, std::uint64_t seed)
      : r({B, T, NH, K}, seed), k({B, T, NH, K}, seed + 1), v({B, T, NH, V}, seed + 2), a({B, T, NH, K}, seed + 3),
        b({B, T, NH, K}, seed + 4) {
    const auto lr = st::random_tensor<3>({B, T, NH}, seed + 5, 0.f, 1.f);
    for (index_t row = 0; row < B * T * NH; ++row) {
      float* x = a.orig.data() + row * K;  // kappa, drawn by a's HalfStored
      float norm = 0.f;
      for (index_t i = 0; i < K; ++i) norm += x[i] * x[i];
      const float inv = 1.f / std::sqrt(std::max(norm, 1e-12f));
      for (index_t i = 0; i < K; ++i) {
        b.orig.data()[row * K + i] = x[i] * inv * lr.data()[row];
        x[i] = -x[i] * inv;
      }
    }
    for (st::HalfStored<H>* x : {&a, &b}) {
      seqmix::convert(x->orig.data(), x->half.data(), x->orig.numel());
      seqmix::convert(x->half.data(), x->rounded.data(), x->orig.numel());
    }
  }
};

enum class Rwkv7Form { fast, reference };

// rwkv7 (or its reference) on one call's inputs; outputs and final states.
template <class T>
st::HalfIoResult rwkv7_half_run(Rwkv7Form form, const seqmix::Rwkv7InputsOf<T>& in, const seqmix::Executor& executor) {
  const index_t B = in.r.size(0), T_ = in.r.size(1), NH = in.r.size(2), K = in.r.size(3), V = in.v.size(3);
  const index_t N = in.initial_state.has_value() ? in.initial_state.size(0) : B;
  st::HalfIoResult res{Tensor<float, 4>({B, T_, NH, V}), Tensor<float, 4>({N, NH, K, V})};
  const seqmix::Rwkv7Outputs out{res.o.view(), res.s.view()};
  if (form == Rwkv7Form::reference)
    seqmix::reference::rwkv7(in, out, executor);
  else
    seqmix::rwkv7(in, out, executor);
  return res;
}

template <class T>
seqmix::Rwkv7InputsOf<T> rwkv7_inputs(const Tensor<T, 4>& r, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                                      const Tensor<T, 4>& a, const Tensor<T, 4>& b, const Tensor<float, 4>& g) {
  seqmix::Rwkv7InputsOf<T> in;
  in.r = r.cview(), in.k = k.cview(), in.v = v.cview(), in.a = a.cview(), in.b = b.cview(), in.g = g.cview();
  return in;
}

template <class H>
void rwkv7_half_check(const st::HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  const std::vector<std::int32_t> cu = st::half_io_cu_seqlens(c.T);
  const index_t N = c.packed ? static_cast<index_t>(cu.size()) - 1 : c.B, B = c.packed ? 1 : c.B, NH = c.HV;
  const Rwkv7Stored<H> x(B, c.T, NH, c.K, c.V, seed);
  Tensor<float, 4> g({B, c.T, NH, c.K});
  st::fill_log_gate(g.view(), seed + 6, -0.1f, 0.f);
  const auto s0 = st::random_tensor<4>({N, NH, c.K, c.V}, seed + 7, -0.5f, 0.5f);
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  for (const Rwkv7Form form : {Rwkv7Form::fast, Rwkv7Form::reference}) {
    INFO(c.describe() << " (H = HV) rwkv7 " << (form == Rwkv7Form::reference ? "reference" : "fast") << " seed " << seed);
    auto half = rwkv7_inputs(x.r.half, x.k.half, x.v.half, x.a.half, x.b.half, g);
    auto same = rwkv7_inputs(x.r.rounded, x.k.rounded, x.v.rounded, x.a.rounded, x.b.rounded, g);
    auto orig = rwkv7_inputs(x.r.orig, x.k.orig, x.v.orig, x.a.orig, x.b.orig, g);
    half.initial_state = same.initial_state = orig.initial_state = s0.cview();
    if (c.packed) half.batch.cu_seqlens = same.batch.cu_seqlens = orig.batch.cu_seqlens = cu;
    st::check_half_io(rwkv7_half_run(form, half, executor), rwkv7_half_run(form, same, executor),
                      rwkv7_half_run(form, orig, executor), bound);
  }
}

// rwkv7 over tokens [0, T1) as one prefill, then [T1, T) one rwkv7_step each; states from s0.
template <class T>
st::HalfIoResult rwkv7_prefill_then_steps(index_t T1, const seqmix::Rwkv7InputsOf<T>& in) {
  const index_t B = in.r.size(0), T_ = in.r.size(1), NH = in.r.size(2), K = in.r.size(3), V = in.v.size(3);
  st::HalfIoResult res{Tensor<float, 4>({B, T_, NH, V}), Tensor<float, 4>({B, NH, K, V})};
  seqmix::Rwkv7InputsOf<T> head = in;
  head.r = in.r.slice(1, 0, T1), head.k = in.k.slice(1, 0, T1), head.v = in.v.slice(1, 0, T1);
  head.a = in.a.slice(1, 0, T1), head.b = in.b.slice(1, 0, T1), head.g = in.g.slice(1, 0, T1);
  seqmix::rwkv7(head, {res.o.view().slice(1, 0, T1), res.s.view()});
  for (index_t t = T1; t < T_; ++t) {
    const seqmix::Rwkv7StepInputsOf<T> step{in.r.select(1, t), in.k.select(1, t), in.v.select(1, t),
                                            in.a.select(1, t), in.b.select(1, t), in.g.select(1, t)};
    seqmix::rwkv7_step(step, {res.o.view().select(1, t), res.s.view()});
  }
  return res;
}

template <class H>
void rwkv7_step_half_check(std::uint64_t seed) {
  const index_t B = 3, T = 57, NH = 2, K = 33, V = 20, T1 = 37;
  const Rwkv7Stored<H> x(B, T, NH, K, V, seed);
  Tensor<float, 4> g({B, T, NH, K});
  st::fill_log_gate(g.view(), seed + 6, -0.1f, 0.f);
  const auto s0 = st::random_tensor<4>({B, NH, K, V}, seed + 7, -0.5f, 0.5f);
  auto half = rwkv7_inputs(x.r.half, x.k.half, x.v.half, x.a.half, x.b.half, g);
  auto same = rwkv7_inputs(x.r.rounded, x.k.rounded, x.v.rounded, x.a.rounded, x.b.rounded, g);
  auto orig = rwkv7_inputs(x.r.orig, x.k.orig, x.v.orig, x.a.orig, x.b.orig, g);
  half.initial_state = same.initial_state = orig.initial_state = s0.cview();
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  INFO("rwkv7 prefill of 37 tokens then 20 steps, B=3 H=2 K=33 V=20 seed " << seed);
  const st::HalfIoResult stepped = rwkv7_prefill_then_steps(T1, half);
  st::check_half_io(stepped, rwkv7_prefill_then_steps(T1, same), rwkv7_prefill_then_steps(T1, orig), bound);
  const st::HalfIoResult one = rwkv7_half_run(Rwkv7Form::fast, half, seqmix::serial_executor());
  CHECK(st::per_head_relative_error(stepped.o, one.o, 2) <= 1e-5);
  CHECK(st::per_head_relative_error(stepped.s, one.s, 1) <= 1e-5);
}

}  // namespace

TEST_CASE("rwkv7 with bf16 r, k, v, a and b: equal to fp32 inputs of the same values, within the bound of fp32",
          "[rwkv7][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 7800;
  for (const st::HalfIoCase& c : rwkv_half_cases()) rwkv7_half_check<seqmix::bf16>(c, seed += 10, pool);
}

TEST_CASE("rwkv7 with f16 r, k, v, a and b: equal to fp32 inputs of the same values, within the bound of fp32",
          "[rwkv7][f16]") {
  std::uint64_t seed = 7900;
  for (const st::HalfIoCase& c : rwkv_half_cases()) rwkv7_half_check<seqmix::f16>(c, seed += 10, seqmix::serial_executor());
}

TEST_CASE("rwkv7 prefill then steps with bf16 or f16 inputs: equal to fp32 of the same values and to one prefill",
          "[rwkv7][bf16][f16]") {
  rwkv7_step_half_check<seqmix::bf16>(8000);
  rwkv7_step_half_check<seqmix::f16>(8050);
}

TEST_CASE("rwkv7_slice with bf16 inputs: outputs, state, readout and transition equal to fp32 of the same values",
          "[rwkv7][bf16]") {
  const index_t B = 2, T = 45, NH = 2, K = 24, V = 20;
  const Rwkv7Stored<seqmix::bf16> x(B, T, NH, K, V, 8060);
  Tensor<float, 4> g({B, T, NH, K});
  st::fill_log_gate(g.view(), 8066, -0.1f, 0.f);
  const auto run = [&](const seqmix::Rwkv7InputsOf<seqmix::bf16>* half, const seqmix::Rwkv7Inputs* same) {
    std::vector<Tensor<float, 4>> r = {Tensor<float, 4>({B, T, NH, V}), Tensor<float, 4>({B, NH, K, V}),
                                       Tensor<float, 4>({B, T, NH, K}), Tensor<float, 4>({B, NH, K, K})};
    const seqmix::Rwkv7Outputs out{r[0].view(), r[1].view()};
    if (half) seqmix::rwkv7_slice(*half, out, r[2].view(), r[3].view());
    if (same) seqmix::rwkv7_slice(*same, out, r[2].view(), r[3].view());
    return r;
  };
  const auto in16 = rwkv7_inputs(x.r.half, x.k.half, x.v.half, x.a.half, x.b.half, g);
  const auto in32 = rwkv7_inputs(x.r.rounded, x.k.rounded, x.v.rounded, x.a.rounded, x.b.rounded, g);
  const std::vector<Tensor<float, 4>> half = run(&in16, nullptr), same = run(nullptr, &in32);
  CHECK(st::per_head_relative_error(half[0], same[0], 2) <= 1e-6);
  CHECK(st::per_head_relative_error(half[1], same[1], 1) <= 1e-6);
  CHECK(st::per_head_relative_error(half[2], same[2], 2) <= 1e-6);
  CHECK(st::per_head_relative_error(half[3], same[3], 1) <= 1e-6);
}

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

TEST_CASE("rwkv6_slice and rwkv6_slice_correct with bf16 r, k and v: equal to fp32 inputs of the same values",
          "[rwkv6][bf16]") {
  const index_t B = 2, T = 45, H = 1, HV = 2, K = 24, V = 20;
  const st::HalfStored<seqmix::bf16> r({B, T, H, K}, 8600), k({B, T, H, K}, 8601), v({B, T, HV, V}, 8602);
  Tensor<float, 4> g({B, T, HV, K});
  st::fill_log_gate(g.view(), 8603, -0.1f, 0.f);
  const auto u = st::random_tensor<2>({HV, K}, 8604, -0.5f, 0.5f);
  const auto s0 = st::random_tensor<4>({B, HV, K, V}, 8605, -0.5f, 0.5f);
  // The slice from zero, then its correction from s0: outputs, final state and transition.
  const auto run = [&](const auto& rr, const auto& kk, const auto& vv) {
    using E = std::decay_t<decltype(*rr.data())>;  // the storage type
    seqmix::Rwkv6InputsOf<E> in;
    in.r = rr.cview(), in.k = kk.cview(), in.v = vv.cview(), in.g = g.cview(), in.u = u.cview();
    std::vector<Tensor<float, 4>> res = {Tensor<float, 4>({B, T, HV, V}), Tensor<float, 4>({B, HV, K, V}),
                                         Tensor<float, 4>({B, HV, K, V})};
    Tensor<float, 3> decay({B, HV, K});
    seqmix::rwkv6_slice(in, {res[0].view(), res[1].view()}, decay.view());
    std::copy(decay.data(), decay.data() + decay.numel(), res[2].data());  // the transition, for the check
    in.initial_state = s0.cview();
    seqmix::rwkv6_slice_correct(in, {res[0].view(), res[1].view()});
    return res;
  };
  const std::vector<Tensor<float, 4>> half = run(r.half, k.half, v.half), same = run(r.rounded, k.rounded, v.rounded);
  CHECK(st::per_head_relative_error(half[0], same[0], 2) <= 1e-6);
  CHECK(st::per_head_relative_error(half[1], same[1], 1) <= 1e-6);
  CHECK(st::per_head_relative_error(half[2], same[2], 1) <= 1e-6);
  // The corrected slice is one rwkv6 call from s0.
  seqmix::Rwkv6InputsOf<seqmix::bf16> in;
  in.r = r.half.cview(), in.k = k.half.cview(), in.v = v.half.cview(), in.g = g.cview(), in.u = u.cview();
  in.initial_state = s0.cview();
  Tensor<float, 4> o({B, T, HV, V}), f({B, HV, K, V});
  seqmix::rwkv6(in, {o.view(), f.view()});
  CHECK(st::per_head_relative_error(half[0], o, 2) <= 1e-5);
  CHECK(st::per_head_relative_error(half[1], f, 1) <= 1e-5);
}

TEST_CASE("streaming rwkv6 and rwkv7 with bf16 inputs: segments equal one call", "[rwkv6][rwkv7][streaming][bf16]") {
  const index_t B = 2, T = 83, NH = 2, K = 24, V = 20;
  const Rwkv7Stored<seqmix::bf16> x(B, T, NH, K, V, 8700);
  Tensor<float, 4> g({B, T, NH, K});
  st::fill_log_gate(g.view(), 8706, -0.1f, 0.f);
  const auto u = st::random_tensor<2>({NH, K}, 8707, -0.5f, 0.5f);
  const auto s0 = st::random_tensor<4>({B, NH, K, V}, 8708, -0.5f, 0.5f);
  for (const index_t segment : {16, 29}) {
    INFO("run_in_segments, segments of " << segment << " tokens");
    st::HalfIoResult seg{Tensor<float, 4>({B, T, NH, V}), Tensor<float, 4>({B, NH, K, V})};
    st::HalfIoResult one{Tensor<float, 4>({B, T, NH, V}), Tensor<float, 4>({B, NH, K, V})};
    seqmix::Rwkv6InputsOf<seqmix::bf16> r6;
    r6.r = x.r.half.cview(), r6.k = x.k.half.cview(), r6.v = x.v.half.cview(), r6.g = g.cview(), r6.u = u.cview();
    r6.initial_state = s0.cview();
    seqmix::Rwkv6Options options;
    options.chunk_size = 16, options.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
    seqmix::run_in_segments(r6, {seg.o.view(), seg.s.view()}, options, segment);
    seqmix::rwkv6(r6, {one.o.view(), one.s.view()}, options);
    CHECK(st::per_head_relative_error(seg.o, one.o, 2) <= 1e-5);
    CHECK(st::per_head_relative_error(seg.s, one.s, 1) <= 1e-5);
    auto r7 = rwkv7_inputs(x.r.half, x.k.half, x.v.half, x.a.half, x.b.half, g);
    r7.initial_state = s0.cview();
    seqmix::run_in_segments(r7, {seg.o.view(), seg.s.view()}, seqmix::Rwkv7StreamOptions{}, segment);
    seqmix::rwkv7(r7, {one.o.view(), one.s.view()});
    CHECK(st::per_head_relative_error(seg.o, one.o, 2) <= 1e-5);
    CHECK(st::per_head_relative_error(seg.s, one.s, 1) <= 1e-5);
  }
}
