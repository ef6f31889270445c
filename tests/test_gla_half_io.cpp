// gated_linear_attention / simple_gla on q/k/v stored as bf16 or f16 (GatedLinearAttentionInputsOf)
// against fp32 inputs (docs/operators.md, GLA):
//  - fp32 inputs holding the same rounded values, same options: the same arithmetic after each
//    row's load, so outputs and final states within 1e-6 normwise;
//  - fp32 inputs holding the unrounded originals: per (sequence, value head) normwise relative
//    error of outputs and final states within the documented bound (2^-6 for bf16 storage, also
//    with bf16 dot products; 2^-9 for f16 storage with fp32 products).
// Ragged shapes: T = 1, T not a multiple of the chunk, odd K and V, GQA, B > 1, an initial
// state, channel and scalar gates, packed sequences; chunked and recurrent forms; the reference.
// On a target without AVX512-BF16, Bf16Compute::dot falls back to fp32 and the same bounds hold.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

std::vector<st::HalfIoCase> gla_half_cases() {
  std::vector<st::HalfIoCase> cases = {
      {2, 1, 1, 1, 16, 16, 64, false},    // T = 1
      {2, 70, 2, 4, 33, 20, 64, false},   // ragged T, odd K, GQA
      {1, 129, 1, 2, 64, 48, 32, false},  // several chunks, ragged last one
      {1, 90, 2, 2, 24, 32, 16, true},    // packed sequences
  };
  if (!st::small_test_scale()) cases.push_back({1, 300, 1, 2, 128, 128, 64, false});
  return cases;
}

enum class GlaEntry { fast, reference };

template <class T>
st::HalfIoResult gla_half_run(GlaEntry e, const st::HalfIoCase& c, const Tensor<T, 4>& q, const Tensor<T, 4>& k,
                           const Tensor<T, 4>& v, seqmix::GatedLinearAttentionInputsOf<float> gates,
                           const seqmix::GatedLinearAttentionOptions& options, const seqmix::Executor& executor) {
  seqmix::GatedLinearAttentionInputsOf<T> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  in.g = gates.g, in.g_scalar = gates.g_scalar, in.initial_state = gates.initial_state, in.batch = gates.batch;
  const index_t N = gates.initial_state.size(0), B = q.size(0);
  st::HalfIoResult r{Tensor<float, 4>({B, c.T, c.HV, c.V}), Tensor<float, 4>({N, c.HV, c.K, c.V})};
  const seqmix::GatedLinearAttentionOutputs out{r.o.view(), r.s.view()};
  if (e == GlaEntry::reference)
    seqmix::reference::gated_linear_attention(in, out, options, executor);
  else
    seqmix::gated_linear_attention(in, out, options, executor);
  return r;
}

template <class H>
void gla_half_check(const st::HalfIoCase& c, std::uint64_t seed, const seqmix::Executor& executor) {
  using seqmix::GateKind;
  using seqmix::LinearAttentionAlgorithm;
  const std::vector<std::int32_t> cu = st::half_io_cu_seqlens(c.T);
  const index_t N = c.packed ? static_cast<index_t>(cu.size()) - 1 : c.B, B = c.packed ? 1 : c.B;
  const st::HalfStored<H> q({B, c.T, c.H, c.K}, seed), k({B, c.T, c.H, c.K}, seed + 1), v({B, c.T, c.HV, c.V}, seed + 2);
  Tensor<float, 4> g({B, c.T, c.HV, c.K});
  Tensor<float, 3> gs({B, c.T, c.HV});
  st::fill_log_gate(g.view(), seed + 3, -0.1f, 0.f);
  st::fill_log_gate(gs.view(), seed + 4, -0.1f, 0.f);
  const auto s0 = st::random_tensor<4>({N, c.HV, c.K, c.V}, seed + 5, -0.5f, 0.5f);
  const bool bf16 = std::is_same_v<H, seqmix::bf16>;
  const double bound = bf16 ? 1.0 / 64 : 1.0 / 512;
  for (const GateKind gate : {GateKind::channel, GateKind::scalar})
    for (const LinearAttentionAlgorithm algorithm : {LinearAttentionAlgorithm::chunked, LinearAttentionAlgorithm::recurrent})
      for (const seqmix::Bf16Compute compute : {seqmix::Bf16Compute::fp32, seqmix::Bf16Compute::dot})
        for (const GlaEntry e : {GlaEntry::fast, GlaEntry::reference}) {
          if (e == GlaEntry::reference && (algorithm != LinearAttentionAlgorithm::chunked || compute != seqmix::Bf16Compute::fp32))
            continue;  // the reference has no algorithm or compute choice
          if (compute == seqmix::Bf16Compute::dot && !bf16) continue;  // dot products are for bf16 storage
          seqmix::GatedLinearAttentionInputs gates;
          if (gate == GateKind::channel) gates.g = g.cview();
          if (gate == GateKind::scalar) gates.g_scalar = gs.cview();
          gates.initial_state = s0.cview();
          if (c.packed) gates.batch.cu_seqlens = cu;
          seqmix::GatedLinearAttentionOptions options;
          options.gate = gate, options.chunk_size = c.chunk, options.algorithm = algorithm, options.bf16_compute = compute;
          INFO(c.describe() << (gate == GateKind::channel ? " channel" : " scalar")
                            << (algorithm == LinearAttentionAlgorithm::chunked ? " chunked" : " recurrent")
                            << (compute == seqmix::Bf16Compute::dot ? " dot" : " fp32")
                            << (e == GlaEntry::reference ? " reference" : " fast") << " seed " << seed);
          st::check_half_io(gla_half_run(e, c, q.half, k.half, v.half, gates, options, executor),
                            gla_half_run(e, c, q.rounded, k.rounded, v.rounded, gates, options, executor),
                            gla_half_run(e, c, q.orig, k.orig, v.orig, gates, options, executor), bound);
        }
}

}  // namespace

TEST_CASE("gla with bf16 q, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[gla][bf16]") {
  const seqmix::ThreadPool pool(2);
  std::uint64_t seed = 5100;
  for (const st::HalfIoCase& c : gla_half_cases()) gla_half_check<seqmix::bf16>(c, seed += 10, pool);
}

TEST_CASE("gla with f16 q, k and v: equal to fp32 inputs of the same values, within the bound of fp32",
          "[gla][f16]") {
  std::uint64_t seed = 5500;
  for (const st::HalfIoCase& c : gla_half_cases()) gla_half_check<seqmix::f16>(c, seed += 10, seqmix::serial_executor());
}

TEST_CASE("gla with bf16 q, k and v: simple_gla and reverse take them, a bad shape is refused before any write", "[gla][bf16]") {
  Tensor<seqmix::bf16, 4> q({1, 9, 2, 8}), k({1, 9, 2, 8}), v({1, 9, 3, 8});  // HV = 3 not a multiple of H = 2
  Tensor<float, 3> gs({1, 9, 3});
  st::fill_log_gate(gs.view(), 77, -0.1f, 0.f);
  Tensor<float, 4> o({1, 9, 3, 8});
  std::fill(o.data(), o.data() + o.numel(), 3.f);
  seqmix::GatedLinearAttentionInputsOf<seqmix::bf16> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.g_scalar = gs.cview();
  CHECK_THROWS_AS(seqmix::simple_gla(in, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::gated_linear_attention(in, {o.view()}), seqmix::ShapeError);
  CHECK_THROWS_AS(seqmix::reference::gated_linear_attention(in, {o.view()}), seqmix::ShapeError);
  REQUIRE(std::all_of(o.data(), o.data() + o.numel(), [](float x) { return x == 3.f; }));
  // A good shape: simple_gla on bf16 equals simple_gla on fp32 holding the same values.
  const st::HalfStored<seqmix::bf16> q2({1, 9, 2, 8}, 78), k2({1, 9, 2, 8}, 79), v2({1, 9, 2, 8}, 80);
  Tensor<float, 4> o16({1, 9, 2, 8}), o32({1, 9, 2, 8});
  Tensor<float, 3> gs2({1, 9, 2});
  st::fill_log_gate(gs2.view(), 81, -0.1f, 0.f);
  in.q = q2.half.cview(), in.k = k2.half.cview(), in.v = v2.half.cview(), in.g_scalar = gs2.cview();
  seqmix::simple_gla(in, {o16.view()});
  seqmix::GatedLinearAttentionInputs in32;
  in32.q = q2.rounded.cview(), in32.k = k2.rounded.cview(), in32.v = v2.rounded.cview(), in32.g_scalar = gs2.cview();
  seqmix::simple_gla(in32, {o32.view()});
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-6);
  // reverse: the reversed views of 16-bit inputs, as for fp32.
  seqmix::GatedLinearAttentionOptions reverse;
  reverse.gate = seqmix::GateKind::scalar, reverse.reverse = true;
  seqmix::gated_linear_attention(in, {o16.view()}, reverse);
  seqmix::gated_linear_attention(in32, {o32.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-6);
  seqmix::reference::gated_linear_attention(in, {o16.view()}, reverse);
  REQUIRE(st::per_head_relative_error(o16, o32, 2) <= 1e-5);
}
