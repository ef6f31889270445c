// Review of the delta rules' per-sequence prefill choice (delta_update::choose_delta_algorithm by
// operation counts): with it, one packed call mixes the chunked WY form and the recurrent kernel
// (short sequences recurrent, long ones chunked at K 48 V 33; K = V = 16 recurrent throughout;
// the choice at K 32 V 40 near parity), and on many threads the chunked items split into value
// blocks after a shared factor pass while the recurrent ones do not. test_delta_algorithm_choice
// checks that the call runs the form the choice names; this checks the mixed calls against the
// reference (grouped value heads, state slots with a sequence starting from zeros, both gates,
// chunk 16 and 32) on executors claiming 1, 3 and 64 threads and on a real pool of 3.
#include <catch2/catch.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaAlgorithm;
using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct Case {
  index_t HK, HV, K, V, chunk;
  DeltaGate gate;
  std::vector<std::int64_t> cu_seqlens;
  bool mixes;  // the choice on 16 lanes (AVX-512) runs some sequences chunked and some recurrent
  std::string describe() const {
    std::ostringstream s;
    s << "HK=" << HK << " HV=" << HV << " K=" << K << " V=" << V << " chunk=" << chunk
      << " gate=" << (gate == DeltaGate::scalar ? "scalar" : "channel") << " cu_seqlens=";
    for (const auto x : cu_seqlens) s << x << ' ';
    return s.str();
  }
};

// Sequences of 1, 3, 7, 40 and 300 tokens in mixed order: the choice flips between them at K 48.
std::vector<Case> cases() {
  const std::vector<std::int64_t> mixed = {0, 300, 301, 304, 344, 351, 651};
  return {
      {1, 2, 48, 33, 32, DeltaGate::scalar, mixed, true},
      {1, 2, 48, 33, 16, DeltaGate::channel, mixed, true},
      {2, 2, 16, 16, 32, DeltaGate::scalar, mixed, false},
      {1, 1, 32, 40, 32, DeltaGate::channel, {0, 7, 300, 301}, false},
      {2, 4, 64, 64, 32, DeltaGate::scalar, {0, 1, 129, 136}, false},
  };
}

constexpr double kTol = 2e-4;

void check_case(const Case& c, std::uint64_t seed) {
  const index_t T = c.cu_seqlens.back(), N = static_cast<index_t>(c.cu_seqlens.size()) - 1;
  if (c.mixes) {  // the point of the case: both forms in one call (where the build has 16 lanes)
    bool chunked = false, recurrent = false;
    for (index_t n = 0; n < N; ++n) {
      const index_t tokens = c.cu_seqlens[n + 1] - c.cu_seqlens[n];
      const auto form = seqmix::delta_update::choose_delta_algorithm({tokens, c.K, c.V, c.HV, c.chunk}, 16);
      (form == DeltaAlgorithm::chunked ? chunked : recurrent) = true;
    }
    INFO(c.describe());
    REQUIRE((chunked && recurrent));
  }
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, c.HK, c.K}, seed + 1);
  const Tensor<float, 4> k = st::random_tensor<4>({1, T, c.HK, c.K}, seed + 2);
  const Tensor<float, 4> v = st::random_tensor<4>({1, T, c.HV, c.V}, seed + 3);
  const Tensor<float, 3> beta = st::random_tensor<3>({1, T, c.HV}, seed + 4, 0.1f, 0.9f);
  Tensor<float, 3> gs({1, T, c.HV});
  Tensor<float, 4> g({1, T, c.HV, c.K});
  st::fill_log_gate(gs.view(), seed + 5, -0.5f, 0.f);
  st::fill_log_gate(g.view(), seed + 6, -0.5f, 0.f);
  // A pool of N + 1 slots, sequence n at slot N - n; every other sequence starts from zeros.
  std::vector<std::int64_t> slots;
  std::vector<std::uint8_t> has_initial;
  for (index_t n = 0; n < N; ++n) slots.push_back(N - n), has_initial.push_back(n % 2 == 0 ? 1 : 0);
  const Tensor<float, 4> s0 = st::random_tensor<4>({N + 1, c.HV, c.K, c.V}, seed + 7, -0.2f, 0.2f);

  seqmix::GatedDeltaRuleInputs in;
  in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.initial_state = s0.view();
  if (c.gate == DeltaGate::scalar) in.g_scalar = gs.view();
  else in.g = g.view();
  in.batch.cu_seqlens = c.cu_seqlens, in.batch.state_indices = slots, in.batch.has_initial_state = has_initial;
  seqmix::GatedDeltaRuleOptions options;
  options.gate = c.gate, options.qk_norm = seqmix::QkNorm::l2, options.chunk_size = c.chunk;
  options.algorithm = DeltaAlgorithm::automatic;

  Tensor<float, 4> ref_o({1, T, c.HV, c.V}), ref_state = s0;
  seqmix::reference::gated_delta_rule(in, {ref_o.view(), ref_state.view()}, options);

  st::CountingExecutor c1(1), c3(3), c64(64);
  seqmix::ThreadPool p3(3);
  const std::vector<std::pair<const char*, const seqmix::Executor*>> executors = {
      {"claims 1", &c1}, {"claims 3", &c3}, {"claims 64", &c64}, {"pool 3", &p3}};
  for (const auto& [name, executor] : executors) {
    INFO(c.describe() << " seed=" << seed << " executor " << name);
    Tensor<float, 4> o({1, T, c.HV, c.V}), state = s0;
    seqmix::gated_delta_rule(in, {o.view(), state.view()}, options, *executor);
    const auto co = st::compare(o.cview(), ref_o.cview(), kTol);
    INFO("o: " << co.describe());
    REQUIRE(co.ok);
    const auto cs = st::compare(state.cview(), ref_state.cview(), kTol);
    INFO("final state: " << cs.describe());
    REQUIRE(cs.ok);
  }
}

}  // namespace

TEST_CASE("review7 packed delta-rule calls mixing the chunked and recurrent forms match the reference on 1 to 64 threads",
          "[gated_delta_rule][parallel_grain][review7]") {
  std::uint64_t seed = 9100;
  for (const Case& c : cases()) check_case(c, seed += 10);
}
