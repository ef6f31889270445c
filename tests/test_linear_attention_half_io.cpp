// linear_attention and linear_attention_step on q/k/v stored as bf16 or f16
// (LinearAttentionInputsOf / LinearAttentionStepInputsOf) against fp32 inputs (docs/operators.md
// section 4, half storage):
//  - fp32 inputs holding the same rounded values, same options: the same arithmetic after each
//    row's load, so outputs, final states and normalizers within 1e-6 normwise;
//  - fp32 inputs holding the unrounded originals: per (sequence, value head) normwise relative
//    error within 2^-6 (bf16) / 2^-9 (f16).
// Ragged shapes: T = 1, T not a multiple of the chunk, odd K and V, GQA, B > 1, initial states,
// packed sequences; feature maps identity / elu1 (normalized) / taylor2 (normalized), a JRT
// prefix; chunked and recurrent forms; the reference; steps; reverse.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

std::vector<st::HalfIoCase> la_half_cases() {
  std::vector<st::HalfIoCase> cases = {
      {2, 1, 1, 1, 16, 16, 64, false},    // T = 1
      {2, 65, 2, 4, 33, 20, 64, false},   // one token past a chunk, odd K, GQA
      {1, 129, 1, 2, 24, 47, 32, false},  // several chunks, ragged last one, odd V
      {1, 90, 2, 2, 24, 32, 16, true},    // packed sequences
  };
  if (!st::small_test_scale()) cases.push_back({1, 1000, 1, 2, 128, 128, 48, false});
  return cases;
}

// A feature map with its normalize flag and JRT prefix: one configuration of the sweep.
struct LaMap {
  seqmix::FeatureMap phi;
  bool normalize;
  index_t prefix;
  const char* name;
};

enum class LaEntry { fast, reference };

// One run: outputs, final states and (normalized runs) the final normalizers as [N,HV,Kf,1].
struct LaRun {
  st::HalfIoResult r;
  Tensor<float, 4> z;
};

template <class T>
LaRun la_half_run(LaEntry e, const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                  const seqmix::LinearAttentionInputs& states, const seqmix::LinearAttentionOptions& options,
                  const seqmix::Executor& executor) {
  seqmix::LinearAttentionInputsOf<T> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  in.initial_state = states.initial_state, in.initial_normalizer = states.initial_normalizer, in.batch = states.batch;
  const index_t N = states.initial_state.size(0), HV = v.size(2), Kf = states.initial_state.size(2);
  LaRun run{{Tensor<float, 4>({q.size(0), q.size(1), HV, v.size(3)}), Tensor<float, 4>({N, HV, Kf, v.size(3)})},
            Tensor<float, 4>({N, HV, Kf, 1})};
  seqmix::LinearAttentionOutputs out{run.r.o.view(), run.r.s.view()};
  if (options.normalize) out.final_normalizer = seqmix::TensorView<float, 3>(run.z.data(), {N, HV, Kf});
  if (e == LaEntry::reference)
    seqmix::reference::linear_attention(in, out, options, executor);
  else
    seqmix::linear_attention(in, out, options, executor);
  return run;
}

void la_check_runs(const LaRun& half, const LaRun& same, const LaRun& orig, double bound) {
  st::check_half_io(half.r, same.r, orig.r, bound);
  CHECK(st::per_head_relative_error(half.z, same.z, 1) <= 1e-6);
  CHECK(st::per_head_relative_error(half.z, orig.z, 1) <= bound);
}

template <class H>
void la_half_check(const st::HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  using seqmix::FeatureMap;
  using seqmix::LinearAttentionAlgorithm;
  const std::vector<std::int32_t> cu = st::half_io_cu_seqlens(c.T);
  const index_t N = c.packed ? static_cast<index_t>(cu.size()) - 1 : c.B, B = c.packed ? 1 : c.B;
  const st::HalfStored<H> q({B, c.T, c.H, c.K}, seed), k({B, c.T, c.H, c.K}, seed + 1), v({B, c.T, c.HV, c.V}, seed + 2);
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  std::vector<LaMap> maps = {{FeatureMap::identity, false, 0, "identity"},
                             {FeatureMap::elu1, true, 0, "elu1 normalized"},
                             {FeatureMap::identity, false, std::min<index_t>(c.T, 5), "identity prefix"}};
  if (c.K <= 24) maps.push_back({FeatureMap::taylor2, true, 0, "taylor2 normalized"});
  for (const LaMap& m : maps) {
    const index_t Kf = seqmix::feature_dim(m.phi, c.K);
    const auto s0 = st::random_tensor<4>({N, c.HV, Kf, c.V}, seed + 3, -0.5f, 0.5f);
    // Positive normalizers: the maps above give phi(k) > 0, so z stays away from 0.
    const auto z0 = st::random_tensor<3>({N, c.HV, Kf}, seed + 4, 0.5f, 1.f);
    for (const LinearAttentionAlgorithm algorithm : {LinearAttentionAlgorithm::chunked, LinearAttentionAlgorithm::recurrent})
      for (const LaEntry e : {LaEntry::fast, LaEntry::reference}) {
        if (e == LaEntry::reference && algorithm != LinearAttentionAlgorithm::chunked) continue;  // no algorithm choice
        seqmix::LinearAttentionInputs states;
        states.initial_state = s0.cview();
        if (m.normalize) states.initial_normalizer = z0.cview();
        if (c.packed) states.batch.cu_seqlens = cu;
        seqmix::LinearAttentionOptions options;
        options.feature_map = m.phi, options.normalize = m.normalize, options.prefix_len = m.prefix;
        options.chunk_size = c.chunk, options.algorithm = algorithm;
        INFO(c.describe() << " " << m.name
                          << (algorithm == LinearAttentionAlgorithm::chunked ? " chunked" : " recurrent")
                          << (e == LaEntry::reference ? " reference" : " fast") << " seed " << seed);
        la_check_runs(la_half_run(e, q.half, k.half, v.half, states, options, executor),
                      la_half_run(e, q.rounded, k.rounded, v.rounded, states, options, executor),
                      la_half_run(e, q.orig, k.orig, v.orig, states, options, executor), bound);
      }
  }
}

// Steps over `steps` tokens from a random state: outputs [1,steps,HV,V] and the final state.
template <class T>
st::HalfIoResult la_step_run(const Tensor<T, 4>& q, const Tensor<T, 4>& k, const Tensor<T, 4>& v,
                             const Tensor<float, 4>& s0, const Tensor<float, 3>& z0,
                             const seqmix::LinearAttentionOptions& options) {
  const index_t B = q.size(0), steps = q.size(1), HV = v.size(2), V = v.size(3);
  st::HalfIoResult r{Tensor<float, 4>({B, steps, HV, V}), s0};
  Tensor<float, 3> z = z0, o({B, HV, V});
  for (index_t t = 0; t < steps; ++t) {
    seqmix::LinearAttentionStepInputsOf<T> in;
    in.q = q.cview().select(1, t), in.k = k.cview().select(1, t), in.v = v.cview().select(1, t);
    seqmix::LinearAttentionStepOutputs out{o.view(), r.s.view()};
    if (options.normalize) out.normalizer = z.view();
    seqmix::linear_attention_step(in, out, options);
    for (index_t b = 0; b < B; ++b)
      for (index_t hv = 0; hv < HV; ++hv)
        for (index_t c = 0; c < V; ++c) r.o(b, t, hv, c) = o(b, hv, c);
  }
  return r;
}

template <class H>
void la_step_check(std::uint64_t seed) {
  using seqmix::FeatureMap;
  const index_t B = 2, steps = 40, Hq = 2, HV = 4, K = 17, V = 12;
  const st::HalfStored<H> q({B, steps, Hq, K}, seed), k({B, steps, Hq, K}, seed + 1), v({B, steps, HV, V}, seed + 2);
  const double bound = std::is_same_v<H, seqmix::bf16> ? 1.0 / 64 : 1.0 / 512;
  for (const FeatureMap phi : {FeatureMap::identity, FeatureMap::elu1}) {
    seqmix::LinearAttentionOptions options;
    options.feature_map = phi, options.normalize = phi == FeatureMap::elu1;
    const auto s0 = st::random_tensor<4>({B, HV, K, V}, seed + 3, -0.5f, 0.5f);
    const auto z0 = st::random_tensor<3>({B, HV, K}, seed + 4, 0.5f, 1.f);
    INFO((phi == FeatureMap::identity ? "identity" : "elu1 normalized") << " steps, seed " << seed);
    st::check_half_io(la_step_run(q.half, k.half, v.half, s0, z0, options),
                      la_step_run(q.rounded, k.rounded, v.rounded, s0, z0, options),
                      la_step_run(q.orig, k.orig, v.orig, s0, z0, options), bound);
  }
}

}  // namespace

TEST_CASE("linear_attention with bf16 q, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[linear_attention][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 6100;
  for (const st::HalfIoCase& c : la_half_cases()) la_half_check<seqmix::bf16>(c, seed += 10, pool);
  la_step_check<seqmix::bf16>(6180);
}

TEST_CASE("linear_attention with f16 q, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[linear_attention][f16]") {
  std::uint64_t seed = 6500;
  for (const st::HalfIoCase& c : la_half_cases()) la_half_check<seqmix::f16>(c, seed += 10, seqmix::serial_executor());
  la_step_check<seqmix::f16>(6580);
}

TEST_CASE("linear_attention with bf16 q, k and v: reverse takes them, a bad shape is refused before any write",
          "[linear_attention][bf16]") {
  Tensor<seqmix::bf16, 4> q({1, 9, 2, 8}), k({1, 9, 2, 8}), v({1, 9, 3, 8});  // HV = 3 not a multiple of H = 2
  Tensor<float, 4> o({1, 9, 3, 8});
  std::fill(o.data(), o.data() + o.numel(), 3.f);
  seqmix::LinearAttentionInputsOf<seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  CHECK_THROWS_AS(seqmix::linear_attention(in, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::linear_attention(in, {o.view()}), seqmix::ShapeError);
  REQUIRE(std::all_of(o.data(), o.data() + o.numel(), [](float x) { return x == 3.f; }));
  // reverse on the reversed views of 16-bit inputs, as for fp32 inputs of the same values.
  const st::HalfStored<seqmix::bf16> q2({1, 9, 2, 8}, 78), k2({1, 9, 2, 8}, 79), v2({1, 9, 2, 8}, 80);
  Tensor<float, 4> o16({1, 9, 2, 8}), o32({1, 9, 2, 8});
  in.q = q2.half.cview(), in.k = k2.half.cview(), in.v = v2.half.cview();
  seqmix::LinearAttentionInputs in32;
  in32.q = q2.rounded.cview(), in32.k = k2.rounded.cview(), in32.v = v2.rounded.cview();
  seqmix::LinearAttentionOptions reverse;
  reverse.feature_map = seqmix::FeatureMap::elu1, reverse.normalize = true, reverse.reverse = true;
  seqmix::linear_attention(in, {o16.view()}, reverse);
  seqmix::linear_attention(in32, {o32.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-6);
  seqmix::reference::linear_attention(in, {o16.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-5);
}
