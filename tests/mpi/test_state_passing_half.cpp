// The distributed GLA and Gated DeltaNet (include/seqmix/mpi/state_passing.hpp) on q/k/v stored as
// bf16: each rank holds views of its own slice of the 16-bit tensors; the outputs and final
// states equal one single-process call on the same bf16 inputs (another summation order, so a
// tolerance as the fp32 tests use).
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/mpi/state_passing.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;
namespace st = seqmix::testing;

// This rank's token range when rank r holds 30 + 7 r tokens.
struct HalfPassSlice {
  index_t begin = 0, tokens = 0, total = 0;
  HalfPassSlice() {
    const int rank = sm::detail::comm_rank(MPI_COMM_WORLD), ranks = sm::detail::comm_size(MPI_COMM_WORLD);
    for (int r = 0; r < ranks; ++r) {
      if (r == rank) begin = total, tokens = 30 + 7 * r;
      total += 30 + 7 * r;
    }
  }
};

}  // namespace

TEST_CASE("mpi gla and gated delta rule with bf16 q, k and v equal one bf16 call", "[mpi][bf16]") {
  const HalfPassSlice sl;
  const index_t B = 2, H = 1, HV = 2, K = 16, V = 12, T = sl.total;
  const st::HalfStored<seqmix::bf16> q({B, T, H, K}, 91), k({B, T, H, K}, 92), v({B, T, HV, V}, 93);
  Tensor<float, 4> g({B, T, HV, K});
  Tensor<float, 3> gs({B, T, HV});
  st::fill_log_gate(g.view(), 94, -0.1f, 0.f);
  st::fill_log_gate(gs.view(), 95, -0.1f, 0.f);
  const auto beta = st::random_tensor<3>({B, T, HV}, 96, 0.f, 1.f);
  const auto s0 = st::random_tensor<4>({B, HV, K, V}, 97, -0.5f, 0.5f);
  const auto mine = [&](const auto& x) { return x.cview().slice(1, sl.begin, sl.tokens); };
  Tensor<float, 4> o_ref({B, T, HV, V}), f_ref({B, HV, K, V}), o({B, sl.tokens, HV, V}), f({B, HV, K, V});
  const auto check_rank = [&](const char* what) {
    Tensor<float, 4> o_part({B, sl.tokens, HV, V});
    seqmix::copy(o_ref.cview().slice(1, sl.begin, sl.tokens), o_part.view());
    INFO(what << " on rank " << sm::detail::comm_rank(MPI_COMM_WORLD));
    CHECK(st::per_head_relative_error(o, o_part, 2) <= 1e-4);
    // The last rank's final state is the sequences' final state.
    if (sl.begin + sl.tokens == T) CHECK(st::per_head_relative_error(f, f_ref, 1) <= 1e-4);
  };
  {
    seqmix::GatedLinearAttentionInputsOf<seqmix::bf16> whole;
    whole.q = q.half.cview(), whole.k = k.half.cview(), whole.v = v.half.cview(), whole.g = g.cview();
    whole.initial_state = s0.cview();
    seqmix::gated_linear_attention(whole, {o_ref.view(), f_ref.view()});
    seqmix::GatedLinearAttentionInputsOf<seqmix::bf16> local;
    local.q = mine(q.half), local.k = mine(k.half), local.v = mine(v.half), local.g = mine(g);
    if (sl.begin == 0) local.initial_state = s0.cview();
    sm::gated_linear_attention(MPI_COMM_WORLD, local, {o.view(), f.view()});
    check_rank("gated_linear_attention");
  }
  {
    seqmix::GatedDeltaRuleOptions options;
    options.qk_norm = seqmix::QkNorm::l2;
    seqmix::GatedDeltaRuleInputsOf<seqmix::bf16> whole;
    whole.q = q.half.cview(), whole.k = k.half.cview(), whole.v = v.half.cview(), whole.beta = beta.cview();
    whole.g_scalar = gs.cview(), whole.initial_state = s0.cview();
    seqmix::gated_delta_rule(whole, {o_ref.view(), f_ref.view()}, options);
    seqmix::GatedDeltaRuleInputsOf<seqmix::bf16> local;
    local.q = mine(q.half), local.k = mine(k.half), local.v = mine(v.half), local.beta = mine(beta);
    local.g_scalar = mine(gs);
    if (sl.begin == 0) local.initial_state = s0.cview();
    sm::gated_delta_rule(MPI_COMM_WORLD, local, {o.view(), f.view()}, options);
    check_rank("gated_delta_rule");
  }
}
