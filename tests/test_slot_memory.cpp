// slot_memory: the fast form and the segment step against the reference (loops in double) over
// both gate forms, heads, ragged segments, B > 1, 1 and 2 threads; a stream fed in pieces equals
// one call; bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include "seqmix/memory.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::SlotGate;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct SlotTestShape {
  index_t B, T, S, D, H, segment;
};

struct SlotTestData {
  Tensor<float, 3> x, memory;
  Tensor<float, 2> wi, wf, wo;
  Tensor<float, 1> bi, bf, bo;
  SlotTestData(const SlotTestShape& s, std::uint64_t seed)
      : x(st::random_tensor<3>({s.B, s.T, s.D}, seed, -1.5f, 1.5f)),
        memory(st::random_tensor<3>({s.B, s.S, s.D}, seed + 1)),
        wi(st::random_tensor<2>({s.D, s.D}, seed + 2, -0.3f, 0.3f)),
        wf(st::random_tensor<2>({s.D, s.D}, seed + 3, -0.3f, 0.3f)),
        wo(st::random_tensor<2>({s.D, s.D}, seed + 4, -0.3f, 0.3f)),
        bi(st::random_tensor<1>({s.D}, seed + 5)),
        bf(st::random_tensor<1>({s.D}, seed + 6)),
        bo(st::random_tensor<1>({s.D}, seed + 7)) {}
  seqmix::SlotMemoryWeights weights(SlotGate gate) const {
    seqmix::SlotMemoryWeights w{wi.cview(), bi.cview(), wf.cview(), bf.cview()};
    if (gate == SlotGate::lm2) w.w_output = wo.cview(), w.b_output = bo.cview();
    return w;
  }
};

}  // namespace

TEST_CASE("slot_memory and slot_memory_step equal the reference", "[slot_memory]") {
  const SlotTestShape shapes[] = {
      {1, 1, 1, 1, 1, 0},  {1, 9, 4, 8, 2, 4},    {2, 33, 5, 12, 3, 8},  {3, 40, 16, 32, 4, 0},
      {1, 70, 7, 20, 1, 33},  // last segment ragged (70 = 33 + 33 + 4)
      {2, 65, 33, 64, 8, 64},  // slot rows beyond one gate block of 32
  };
  std::uint64_t seed = 900;
  for (const auto& s : shapes)
    for (const SlotGate gate : {SlotGate::input_forget, SlotGate::lm2}) {
      CAPTURE(s.B, s.T, s.S, s.D, s.H, s.segment, static_cast<int>(gate), seed);
      const SlotTestData data(s, seed);
      seed += 10;
      seqmix::SlotMemoryOptions options;
      options.gate = gate, options.heads = s.H, options.segment = s.segment;
      const seqmix::SlotMemoryInputs in{data.x.cview(), data.memory.cview(), data.weights(gate)};
      Tensor<float, 3> y_ref({s.B, s.T, s.D}), y(y_ref.shape()), y2(y_ref.shape()), y3(y_ref.shape());
      Tensor<float, 3> m_ref({s.B, s.S, s.D}), m(m_ref.shape()), m2(m_ref.shape());
      seqmix::reference::slot_memory(in, {y_ref.view(), m_ref.view()}, options);
      seqmix::slot_memory(in, {y.view(), m.view()}, options);
      seqmix::slot_memory(in, {y2.view(), m2.view()}, options, st::two_thread_pool());
      st::require_close("y", y.cview(), y_ref.cview(), 2e-5);
      st::require_close("final_memory", m.cview(), m_ref.cview(), 2e-5);
      for (index_t i = 0; i < y.numel(); ++i) REQUIRE(y2.data()[i] == y.data()[i]);  // threads change nothing
      for (index_t i = 0; i < m.numel(); ++i) REQUIRE(m2.data()[i] == m.data()[i]);
      // The stream in two pieces cut on a segment boundary, the memory carried in place.
      const index_t seg = s.segment == 0 ? s.T : s.segment;
      const index_t cut = std::min(s.T, seg * ((s.T / seg + 1) / 2));
      Tensor<float, 3> state({s.B, s.S, s.D});
      for (index_t i = 0; i < state.numel(); ++i) state.data()[i] = data.memory.data()[i];
      auto step_options = options;
      if (s.segment == 0) step_options.segment = 0;  // one segment: the whole call
      if (s.segment == 0) {
        seqmix::slot_memory_step(data.x.cview(), state.view(), in.weights, y3.view(), step_options, st::two_thread_pool());
      } else {
        seqmix::slot_memory_step(data.x.cview().slice(1, 0, cut), state.view(), in.weights, y3.view().slice(1, 0, cut),
                                 step_options);
        seqmix::slot_memory_step(data.x.cview().slice(1, cut, s.T - cut), state.view(), in.weights,
                                 y3.view().slice(1, cut, s.T - cut), step_options, st::two_thread_pool());
      }
      st::require_close("step y", y3.cview(), y.cview(), 1e-6);
      st::require_close("step memory", state.cview(), m.cview(), 1e-6);
    }
}

TEST_CASE("slot_memory bad arguments are refused before any write", "[slot_memory]") {
  const SlotTestShape s{2, 10, 4, 12, 3, 4};
  const SlotTestData data(s, 950);
  Tensor<float, 3> y({s.B, s.T, s.D}), m({s.B, s.S, s.D});
  const auto expect_refused = [&](const char* argument, const seqmix::SlotMemoryInputs& in, const seqmix::SlotMemoryOptions& o) {
    for (auto& e : y) e = 7.f;
    for (auto& e : m) e = 7.f;
    st::require_shape_error(argument, [&] { seqmix::slot_memory(in, {y.view(), m.view()}, o); });
    st::require_shape_error(argument, [&] { seqmix::reference::slot_memory(in, {y.view(), m.view()}, o); });
    for (const float e : y) REQUIRE(e == 7.f);
    for (const float e : m) REQUIRE(e == 7.f);
  };
  seqmix::SlotMemoryOptions options;
  options.heads = 3;
  const seqmix::SlotMemoryInputs good{data.x.cview(), data.memory.cview(), data.weights(SlotGate::input_forget)};
  {
    auto o = options;
    o.heads = 5;  // does not divide D = 12
    expect_refused("heads", good, o);
    o.heads = 3, o.segment = -1;
    expect_refused("segment", good, o);
    o.segment = 0, o.scale = std::numeric_limits<float>::infinity();
    expect_refused("scale", good, o);
    o.scale = 0.f, o.gate = static_cast<SlotGate>(7);
    expect_refused("gate", good, o);
    o.gate = SlotGate::lm2;  // without output-gate weights
    expect_refused("w_output", good, o);
  }
  {
    auto in = good;
    in.weights = data.weights(SlotGate::lm2);  // output weights with the input_forget form
    expect_refused("w_output", in, options);
    const auto w_bad = st::random_tensor<2>({s.D, s.D + 1}, 1);
    in = good;
    in.weights.w_forget = w_bad.cview();
    expect_refused("w_forget", in, options);
    const auto mem_bad = st::random_tensor<3>({s.B + 1, s.S, s.D}, 2);
    in = good;
    in.memory = mem_bad.cview();
    expect_refused("memory", in, options);
  }
  // The step: memory aliasing x, and y of the wrong length; memory untouched.
  Tensor<float, 3> state({s.B, s.S, s.D});
  for (auto& e : state) e = 3.f;
  Tensor<float, 3> y_short({s.B, s.T - 1, s.D});
  st::require_shape_error("y", [&] {
    seqmix::slot_memory_step(data.x.cview(), state.view(), good.weights, y_short.view(), options);
  });
  for (const float e : state) REQUIRE(e == 3.f);
  Tensor<float, 3> shared({s.B, s.T, s.D});
  st::require_shape_error("memory", [&] {
    seqmix::slot_memory_step(shared.cview(), seqmix::TensorView<float, 3>(shared.data(), {s.B, s.S, s.D}), good.weights,
                             y.view(), options);
  });
}
