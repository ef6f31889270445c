// Review of the diagonal-decay recurrent prefill's time split (driver.hpp run_recurrent_segments,
// segments.hpp) at what test_parallel_grain_linear_attention does not reach: value heads grouped
// on fewer q/k heads (HV = 2H) with the gate per q/k head or per value head, bf16 and f16 q/k/v
// (the correction widens q rows itself), the reverse direction (token views walked backwards),
// state slots with has_initial_state false, a final state written over its initial state (in
// place), no initial state at all, o views with a gap between heads or strided features (the
// correction's scalar add), gates down to -8 per token (the log-decay summed over a segment
// underflows in exp) and rwkv6's exclusive readout with per-value-head bonuses. Each against the
// reference, on executors claiming 3, 7, 63 and 64 threads (CountingExecutor, serial) and on real
// pools of 3 and 4 threads (the two passes' tasks concurrent: build with -fsanitize=thread).
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::GateKind;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

enum class Storage { f32, bf16, f16 };
enum class OLayout { contiguous, head_gap, feature_stride2 };
enum class States { none, given, in_place, slots };

struct Case {
  Storage storage;
  index_t B, T, H, HV, Hg, K, V;
  std::vector<std::int64_t> cu_seqlens;  // packed (B = 1) when given
  GateKind gate;
  bool reverse;
  States states;
  OLayout layout;
  float gate_low;  // log-gates drawn from [gate_low, 0]

  index_t sequences() const { return cu_seqlens.empty() ? B : static_cast<index_t>(cu_seqlens.size()) - 1; }
  std::string describe() const {
    std::ostringstream s;
    s << "storage=" << static_cast<int>(storage) << " B=" << B << " T=" << T << " H=" << H << " HV=" << HV
      << " Hg=" << Hg << " K=" << K << " V=" << V << " sequences=" << sequences() << " gate=" << static_cast<int>(gate)
      << " reverse=" << reverse << " states=" << static_cast<int>(states) << " layout=" << static_cast<int>(layout)
      << " gate_low=" << gate_low;
    return s.str();
  }
};

// Every case splits its heads in time at 3 claimed threads and more: items (sequences x HV) fewer
// than the threads, the longest sequence at least 2 x 512 tokens, K V <= 2^16, recurrent form.
std::vector<Case> gla_cases() {
  const auto C = GateKind::channel, S = GateKind::scalar;
  return {
      {Storage::f32, 1, 1100, 1, 2, 1, 16, 24, {}, C, false, States::none, OLayout::head_gap, -1.f},
      {Storage::bf16, 1, 1600, 1, 1, 1, 32, 20, {}, S, false, States::in_place, OLayout::contiguous, -0.5f},
      {Storage::f16, 1, 1100, 1, 2, 2, 16, 17, {}, C, false, States::given, OLayout::feature_stride2, -1.f},
      {Storage::f32, 2, 1030, 1, 1, 1, 16, 16, {}, C, true, States::given, OLayout::head_gap, -1.f},
      {Storage::f32, 1, 2301, 1, 1, 1, 16, 33, {0, 1200, 1201, 2301}, C, false, States::slots,
       OLayout::feature_stride2, -8.f},
      {Storage::bf16, 1, 1700, 1, 1, 1, 24, 40, {0, 5, 1700}, S, false, States::slots, OLayout::contiguous, -1.f},
  };
}

template <class E>
Tensor<E, 4> stored_as(const Tensor<float, 4>& x) {
  Tensor<E, 4> y({x.size(0), x.size(1), x.size(2), x.size(3)});
  for (index_t i = 0; i < x.numel(); ++i) y.data()[i] = E(x.data()[i]);
  return y;
}

// o in its layout, NaN-filled so that an element the call leaves unwritten shows.
struct OView {
  std::vector<float> storage;
  TensorView<float, 4> o;
  OView(index_t B, index_t T, index_t HV, index_t V, OLayout layout) {
    const index_t head = layout == OLayout::contiguous ? V : 2 * V;
    storage.assign(static_cast<std::size_t>(B * T * HV * head), std::numeric_limits<float>::quiet_NaN());
    o = TensorView<float, 4>(storage.data(), {B, T, HV, V},
                             {T * HV * head, HV * head, head, layout == OLayout::feature_stride2 ? 2 : 1});
  }
};

// The state pool of a case: slots (5 rows, sequences at 3, 0, 1), or one row per sequence.
struct StatePlan {
  std::vector<std::int64_t> slots;
  std::vector<std::uint8_t> has_initial;
  index_t rows;
  StatePlan(const Case& c) : rows(c.sequences()) {
    if (c.states != States::slots) return;
    rows = 5;
    const std::int64_t order[] = {3, 0, 1};
    for (index_t n = 0; n < c.sequences(); ++n) {
      slots.push_back(order[n % 3]);
      has_initial.push_back(n % 2 == 0 ? 1 : 0);  // the second sequence starts from zeros
    }
  }
};

constexpr double kTol = 2e-4;  // as test_parallel_grain_linear_attention, against the double reference

template <class E>
void check_gla_case(const Case& c, std::uint64_t seed) {
  const Tensor<float, 4> q32 = st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1);
  const Tensor<float, 4> k32 = st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2);
  const Tensor<float, 4> v32 = st::random_tensor<4>({c.B, c.T, c.HV, c.V}, seed + 3);
  const Tensor<E, 4> q = stored_as<E>(q32), k = stored_as<E>(k32), v = stored_as<E>(v32);
  Tensor<float, 4> g({c.B, c.T, c.Hg, c.K});
  Tensor<float, 3> gs({c.B, c.T, c.Hg});
  st::fill_log_gate(g.view(), seed + 4, c.gate_low, 0.f);
  st::fill_log_gate(gs.view(), seed + 5, c.gate_low, 0.f);
  const StatePlan plan(c);
  const Tensor<float, 4> s0 = st::random_tensor<4>({plan.rows, c.HV, c.K, c.V}, seed + 6);

  seqmix::GatedLinearAttentionInputsOf<E> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  if (c.gate == GateKind::channel) in.g = g.view();
  if (c.gate == GateKind::scalar) in.g_scalar = gs.view();
  if (!c.cu_seqlens.empty()) in.batch.cu_seqlens = c.cu_seqlens;
  if (c.states == States::slots) in.batch.state_indices = plan.slots, in.batch.has_initial_state = plan.has_initial;
  seqmix::GatedLinearAttentionOptions options;
  options.gate = c.gate, options.reverse = c.reverse;
  options.algorithm = seqmix::LinearAttentionAlgorithm::recurrent;

  // The reference: o contiguous, the final state in its own tensor (started as s0: slots no
  // sequence names keep their rows).
  OView ref_o(c.B, c.T, c.HV, c.V, OLayout::contiguous);
  Tensor<float, 4> ref_state = s0;
  seqmix::GatedLinearAttentionInputsOf<E> ref_in = in;
  if (c.states != States::none) ref_in.initial_state = s0.view();
  seqmix::reference::gated_linear_attention<E>(ref_in, {ref_o.o, ref_state.view()}, options);

  st::CountingExecutor c3(3), c7(7), c63(63), c64(64);
  seqmix::ThreadPool p3(3), p4(4);
  const std::vector<std::pair<const char*, const seqmix::Executor*>> executors = {
      {"claims 3", &c3}, {"claims 7", &c7}, {"claims 63", &c63}, {"claims 64", &c64}, {"pool 3", &p3}, {"pool 4", &p4}};
  for (const auto& [name, executor] : executors) {
    INFO(c.describe() << " seed=" << seed << " executor " << name);
    OView o(c.B, c.T, c.HV, c.V, c.layout);
    Tensor<float, 4> initial = s0, state = s0;
    seqmix::GatedLinearAttentionInputsOf<E> run_in = in;
    if (c.states != States::none) run_in.initial_state = initial.view();
    // In place: the final state is written over the initial state it was read from.
    const TensorView<float, 4> final_state = c.states == States::in_place ? initial.view() : state.view();
    seqmix::gated_linear_attention(run_in, {o.o, final_state}, options, *executor);
    const auto co = st::compare(o.o.as_const(), ref_o.o.as_const(), kTol);
    INFO("o: " << co.describe());
    REQUIRE(co.ok);
    const auto cs = st::compare(final_state.as_const(), ref_state.cview(), kTol);
    INFO("final state: " << cs.describe());
    REQUIRE(cs.ok);
  }
  // The split ran: at 64 claimed threads the last two runs are the passes, first one per (item,
  // segment), then one per (item, later segment, part).
  const auto& runs = c64.runs();
  REQUIRE(runs.size() >= 2);
  REQUIRE(runs[runs.size() - 2].tasks < runs.back().tasks);
}

}  // namespace

TEST_CASE("review7 diagonal-decay time split matches the reference with grouped heads, half storage, reverse, slots and strided o",
          "[gla][linear_attention][parallel_grain][review7]") {
  std::uint64_t seed = 8100;
  for (const Case& c : gla_cases()) {
    seed += 10;
    switch (c.storage) {
      case Storage::f32: check_gla_case<float>(c, seed); break;
      case Storage::bf16: check_gla_case<seqmix::bf16>(c, seed); break;
      case Storage::f16: check_gla_case<seqmix::f16>(c, seed); break;
    }
  }
}

TEST_CASE("review7 rwkv6 time split with per-value-head gates and bonuses matches the reference",
          "[rwkv6][linear_attention][parallel_grain][review7]") {
  // H 1 q/k head, HV 2 value heads, gate and bonus per value head; T 1500: 3 segments at 3+ threads.
  const index_t B = 1, T = 1500, H = 1, HV = 2, K = 16, V = 24;
  const std::uint64_t seed = 8900;
  const Tensor<float, 4> r = st::random_tensor<4>({B, T, H, K}, seed + 1), k = st::random_tensor<4>({B, T, H, K}, seed + 2),
                         v = st::random_tensor<4>({B, T, HV, V}, seed + 3);
  Tensor<float, 4> g({B, T, HV, K});
  st::fill_log_gate(g.view(), seed + 4, -2.f, 0.f);
  const Tensor<float, 2> u = st::random_tensor<2>({HV, K}, seed + 5);
  const Tensor<float, 4> s0 = st::random_tensor<4>({B, HV, K, V}, seed + 6);
  const seqmix::Rwkv6Inputs in{r.view(), k.view(), v.view(), g.view(), u.view(), s0.view(), {}};
  seqmix::Rwkv6Options options;
  options.algorithm = seqmix::LinearAttentionAlgorithm::recurrent;
  for (const bool reverse : {false, true}) {
    options.reverse = reverse;
    OView ref_o(B, T, HV, V, OLayout::contiguous);
    Tensor<float, 4> ref_state({B, HV, K, V});
    seqmix::reference::rwkv6(in, {ref_o.o, ref_state.view()}, options);
    st::CountingExecutor c3(3), c64(64);
    seqmix::ThreadPool p3(3);
    for (const seqmix::Executor* executor : {static_cast<const seqmix::Executor*>(&c3), static_cast<const seqmix::Executor*>(&c64),
                                             static_cast<const seqmix::Executor*>(&p3)}) {
      INFO("reverse=" << reverse << " threads=" << executor->concurrency());
      OView o(B, T, HV, V, OLayout::head_gap);
      Tensor<float, 4> state({B, HV, K, V});
      seqmix::rwkv6(in, {o.o, state.view()}, options, *executor);
      const auto co = st::compare(o.o.as_const(), ref_o.o.as_const(), kTol);
      INFO("o: " << co.describe());
      REQUIRE(co.ok);
      const auto cs = st::compare(state.cview(), ref_state.cview(), kTol);
      INFO("final state: " << cs.describe());
      REQUIRE(cs.ok);
    }
    REQUIRE(c64.runs().size() >= 2);
  }
}
