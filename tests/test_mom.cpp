// mom (Mixture-of-Memories): the router against a naive top-k, the fast prefill and the step
// against the reference over a shape sweep (GQA, both gates, l2 norm, memories no token routes
// to, initial states), one memory equal to the gated delta rule, prefill then steps equal to one
// call, in-place states, a NaN kept in its memory, bad arguments refused before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/mom/fast.hpp"
#include "seqmix/linear_attention/mom/reference.hpp"
#include "seqmix/linear_attention/mom/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::DeltaGate;
using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct MomCase {
  index_t B, T, E, M, HK, HV, K, V;
  DeltaGate gate;
  bool l2, initial;
};

struct MomData {
  Tensor<float, 4> q, beta, g_scalar;
  Tensor<float, 5> k, v, g, s0;
  Tensor<std::int32_t, 3> memory;
  Tensor<float, 3> weight;
  MomData(const MomCase& c, std::uint64_t seed, index_t routed_memories = 0)
      : q(st::random_tensor<4>({c.B, c.T, c.HK, c.K}, seed)),
        beta(st::random_tensor<4>({c.B, c.T, c.E, c.HV}, seed + 1, 0.f, 1.f)),
        g_scalar(st::random_tensor<4>({c.B, c.T, c.E, c.HV}, seed + 2, -0.5f, 0.f)),
        k(st::random_tensor<5>({c.B, c.T, c.E, c.HK, c.K}, seed + 3, -0.6f, 0.6f)),
        v(st::random_tensor<5>({c.B, c.T, c.E, c.HV, c.V}, seed + 4)),
        g(st::random_tensor<5>({c.B, c.T, c.E, c.HV, c.K}, seed + 5, -0.5f, 0.f)),
        s0(st::random_tensor<5>({c.B, c.M, c.HV, c.K, c.V}, seed + 6)),
        memory({c.B, c.T, c.E}),
        weight(st::random_tensor<3>({c.B, c.T, c.E}, seed + 7, 0.f, 1.f)) {
    // Distinct memories per token, drawn from the first `routed` ids (the rest see no token).
    const index_t routed = routed_memories > 0 ? routed_memories : c.M;
    std::mt19937_64 rng(seed + 8);
    for (index_t b = 0; b < c.B; ++b)
      for (index_t t = 0; t < c.T; ++t) {
        std::vector<std::int32_t> ids(static_cast<std::size_t>(routed));
        for (index_t m = 0; m < routed; ++m) ids[static_cast<std::size_t>(m)] = static_cast<std::int32_t>(m);
        std::shuffle(ids.begin(), ids.end(), rng);
        for (index_t e = 0; e < c.E; ++e) memory.view()(b, t, e) = ids[static_cast<std::size_t>(e)];
      }
  }
  seqmix::MomInputs inputs(const MomCase& c) const {
    seqmix::MomInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view();
    if (c.gate == DeltaGate::scalar)
      in.g_scalar = g_scalar.view();
    else
      in.g = g.view();
    in.memory = memory.view(), in.weight = weight.view();
    if (c.initial) in.initial_state = s0.view();
    return in;
  }
};

seqmix::MomOptions mom_options(const MomCase& c) {
  seqmix::MomOptions o;
  o.memories = c.M;
  o.memory.gate = c.gate;
  o.memory.qk_norm = c.l2 ? seqmix::QkNorm::l2 : seqmix::QkNorm::none;
  o.memory.chunk_size = 16;
  return o;
}

// Token t of a [B,T,...] tensor as a [B,...] view.
template <std::size_t Rank>
seqmix::ConstView<float, Rank - 1> mom_token(const Tensor<float, Rank>& x, index_t t) {
  const auto view = x.view();
  std::array<index_t, Rank - 1> shape{}, strides{};
  shape[0] = view.size(0), strides[0] = view.stride(0);
  for (std::size_t r = 2; r < Rank; ++r) shape[r - 1] = view.size(r), strides[r - 1] = view.stride(r);
  return seqmix::ConstView<float, Rank - 1>(view.data() + t * view.stride(1), shape, strides);
}

}  // namespace

TEST_CASE("mom_route picks the top-k logits and softmax-weights them", "[mom]") {
  Tensor<float, 3> logits({1, 3, 5});
  const float rows[3][5] = {{0.1f, 2.f, -1.f, 2.f, 0.5f}, {3.f, 1.f, 1.f, 1.f, 0.f}, {0.f, NAN, 1.f, 0.f, 0.f}};
  for (index_t t = 0; t < 3; ++t)
    for (index_t m = 0; m < 5; ++m) logits.view()(0, t, m) = rows[t][m];
  Tensor<std::int32_t, 3> memory({1, 3, 2});
  Tensor<float, 3> weight({1, 3, 2});
  seqmix::mom_route(logits.view(), memory.view(), weight.view());
  REQUIRE(memory.view()(0, 0, 0) == 1);  // tie 2 vs 2: the lower id first
  REQUIRE(memory.view()(0, 0, 1) == 3);
  REQUIRE(weight.view()(0, 0, 0) == Approx(0.5f));
  REQUIRE(memory.view()(0, 1, 0) == 0);
  REQUIRE(memory.view()(0, 1, 1) == 1);
  REQUIRE(weight.view()(0, 1, 0) == Approx(std::exp(3.0) / (std::exp(3.0) + std::exp(1.0))));
  REQUIRE(memory.view()(0, 2, 0) == 1);  // NaN is always selected ...
  REQUIRE(std::isnan(weight.view()(0, 2, 0)));  // ... and its weights stay NaN
  Tensor<std::int32_t, 3> too_many({1, 3, 6});
  Tensor<float, 3> w6({1, 3, 6});
  st::require_shape_error("memory", [&] { seqmix::mom_route(logits.view(), too_many.view(), w6.view()); });
}

TEST_CASE("mom fast prefill and reference agree over a shape sweep", "[mom]") {
  seqmix::ThreadPool pool(2);
  const std::vector<MomCase> cases = {
      {1, 1, 1, 1, 1, 1, 8, 4, DeltaGate::scalar, false, false},
      {2, 17, 2, 3, 1, 2, 8, 5, DeltaGate::scalar, true, true},
      {1, 70, 3, 4, 2, 2, 16, 8, DeltaGate::channel, true, true},
      {2, 40, 1, 5, 1, 3, 12, 7, DeltaGate::scalar, false, true},
      {1, 33, 2, 2, 1, 1, 8, 8, DeltaGate::channel, false, false},
  };
  std::uint64_t seed = 10;
  for (const MomCase& c : cases) {
    // The fourth case routes to 3 of its 5 memories: two keep their initial state.
    const MomData data(c, seed += 20, c.M == 5 ? 3 : 0);
    INFO("B=" << c.B << " T=" << c.T << " E=" << c.E << " M=" << c.M << " HV=" << c.HV << " K=" << c.K);
    const seqmix::MomOptions options = mom_options(c);
    Tensor<float, 4> ref_o({c.B, c.T, c.HV, c.V});
    Tensor<float, 5> ref_s({c.B, c.M, c.HV, c.K, c.V});
    seqmix::reference::mom(data.inputs(c), {ref_o.view(), ref_s.view()}, options);
    for (const seqmix::Executor* executor : {static_cast<const seqmix::Executor*>(&seqmix::serial_executor()),
                                             static_cast<const seqmix::Executor*>(&pool)}) {
      Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
      Tensor<float, 5> s({c.B, c.M, c.HV, c.K, c.V});
      seqmix::mom(data.inputs(c), {o.view(), s.view()}, options, *executor);
      st::require_close("o", o.view(), ref_o.view(), 2e-5);
      st::require_close("final_state", s.view(), ref_s.view(), 2e-5);
    }
    if (c.M == 5 && c.initial) {
      for (index_t m = 3; m < 5; ++m) REQUIRE(ref_s.view()(0, m, 0, 1, 2) == data.s0.view()(0, m, 0, 1, 2));
      // In place (final_state = initial_state), unrouted memories included.
      Tensor<float, 5> state = data.s0;
      seqmix::MomInputs in = data.inputs(c);
      in.initial_state = state.view();
      Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
      seqmix::mom(in, {o.view(), state.view()}, options, pool);
      st::require_close("in-place o", o.view(), ref_o.view(), 2e-5);
      st::require_close("in-place state", state.view(), ref_s.view(), 2e-5);
    }
  }
}

TEST_CASE("mom with one memory and weight 1 is the gated delta rule", "[mom]") {
  const MomCase c{2, 37, 1, 1, 1, 2, 8, 6, DeltaGate::scalar, true, true};
  MomData data(c, 3);
  for (index_t i = 0; i < data.weight.view().numel(); ++i) data.weight.data()[i] = 1.f;
  Tensor<float, 4> o({c.B, c.T, c.HV, c.V}), want({c.B, c.T, c.HV, c.V});
  seqmix::mom(data.inputs(c), {o.view()}, mom_options(c));
  seqmix::GatedDeltaRuleInputs in;
  auto drop_axis = [](const auto& x, std::size_t axis) {  // drops an axis of extent 1
    using View = std::decay_t<decltype(x.view())>;
    constexpr std::size_t R = View::rank;
    std::array<index_t, R - 1> shape{}, strides{};
    for (std::size_t r = 0, j = 0; r < R; ++r)
      if (r != axis) shape[j] = x.view().size(r), strides[j++] = x.view().stride(r);
    return seqmix::ConstView<float, R - 1>(x.data(), shape, strides);
  };
  in.q = data.q.view(), in.k = drop_axis(data.k, 2), in.v = drop_axis(data.v, 2), in.beta = drop_axis(data.beta, 2);
  in.g_scalar = drop_axis(data.g_scalar, 2);
  in.initial_state = drop_axis(data.s0, 1);  // [B,M=1,...] -> [B,...]
  seqmix::gated_delta_rule(in, {want.view()}, mom_options(c).memory);
  st::require_close("o", o.view(), want.view(), 1e-6);
}

TEST_CASE("mom prefill then steps equals one call, states in place", "[mom]") {
  for (DeltaGate gate : {DeltaGate::scalar, DeltaGate::channel}) {
    const MomCase c{2, 30, 2, 3, 1, 2, 8, 4, gate, true, true};
    const MomData data(c, 50);
    const seqmix::MomOptions options = mom_options(c);
    Tensor<float, 4> want({c.B, c.T, c.HV, c.V});
    Tensor<float, 5> want_s({c.B, c.M, c.HV, c.K, c.V});
    seqmix::mom(data.inputs(c), {want.view(), want_s.view()}, options);
    // Prefill 25 tokens into the state in place (final_state = initial_state), then 5 steps.
    const index_t P = 25;
    Tensor<float, 5> state = data.s0;
    seqmix::MomInputs head = data.inputs(c);
    head.q = head.q.slice(1, 0, P), head.k = head.k.slice(1, 0, P), head.v = head.v.slice(1, 0, P);
    head.beta = head.beta.slice(1, 0, P), head.memory = head.memory.slice(1, 0, P), head.weight = head.weight.slice(1, 0, P);
    if (gate == DeltaGate::scalar)
      head.g_scalar = head.g_scalar.slice(1, 0, P);
    else
      head.g = head.g.slice(1, 0, P);
    head.initial_state = state.view();
    Tensor<float, 4> o({c.B, P, c.HV, c.V});
    seqmix::mom(head, {o.view(), state.view()}, options);
    st::require_close("prefill o", o.view(), seqmix::ConstView<float, 4>(want.view().slice(1, 0, P)), 2e-5);
    for (index_t t = P; t < c.T; ++t) {
      seqmix::MomStepInputs in;
      in.q = mom_token(data.q, t), in.k = mom_token(data.k, t), in.v = mom_token(data.v, t), in.beta = mom_token(data.beta, t);
      if (gate == DeltaGate::scalar)
        in.g_scalar = mom_token(data.g_scalar, t);
      else
        in.g = mom_token(data.g, t);
      const auto mv = data.memory.view();
      const auto wv = data.weight.view();
      in.memory = seqmix::ConstView<std::int32_t, 2>(mv.data() + t * mv.stride(1), {c.B, c.E}, {mv.stride(0), mv.stride(2)});
      in.weight = seqmix::ConstView<float, 2>(wv.data() + t * wv.stride(1), {c.B, c.E}, {wv.stride(0), wv.stride(2)});
      Tensor<float, 3> step_o({c.B, c.HV, c.V});
      seqmix::mom_step(in, {step_o.view(), state.view()}, options);
      for (index_t b = 0; b < c.B; ++b)
        for (index_t hv = 0; hv < c.HV; ++hv)
          for (index_t j = 0; j < c.V; ++j) REQUIRE(step_o.view()(b, hv, j) == Approx(want.view()(b, t, hv, j)).margin(2e-5));
    }
    st::require_close("state", state.view(), want_s.view(), 2e-5);
  }
}

TEST_CASE("mom keeps a NaN entry in the memory it updates", "[mom][nonfinite]") {
  const MomCase c{1, 40, 1, 2, 1, 1, 8, 4, DeltaGate::scalar, false, false};
  MomData data(c, 70);
  for (index_t t = 0; t < c.T; ++t) data.memory.view()(0, t, 0) = static_cast<std::int32_t>(t % 2);
  Tensor<float, 4> clean({c.B, c.T, c.HV, c.V}), dirty({c.B, c.T, c.HV, c.V});
  seqmix::mom(data.inputs(c), {clean.view()}, mom_options(c));
  data.k.view()(0, 20, 0, 0, 3) = NAN;  // token 20 updates memory 0
  seqmix::mom(data.inputs(c), {dirty.view()}, mom_options(c));
  for (index_t t = 0; t < c.T; ++t)
    for (index_t j = 0; j < c.V; ++j) {
      INFO("t " << t);
      const float x = dirty.view()(0, t, 0, j);
      if (t < 20 || t % 2 == 1)
        REQUIRE(std::memcmp(&x, &clean.view()(0, t, 0, j), sizeof(float)) == 0);
      else
        REQUIRE(std::isnan(x));
    }
}

TEST_CASE("mom refuses bad arguments before writing", "[mom][validation]") {
  const MomCase c{1, 5, 2, 3, 1, 1, 8, 4, DeltaGate::scalar, false, true};
  MomData data(c, 90);
  Tensor<float, 4> o({c.B, c.T, c.HV, c.V});
  Tensor<float, 5> s({c.B, c.M, c.HV, c.K, c.V});
  for (index_t i = 0; i < o.numel(); ++i) o.data()[i] = 7.f;
  for (index_t i = 0; i < s.numel(); ++i) s.data()[i] = 7.f;
  auto run = [&](const seqmix::MomInputs& in, const seqmix::MomOptions& options) { seqmix::mom(in, {o.view(), s.view()}, options); };
  seqmix::MomOptions options = mom_options(c);
  data.memory.view()(0, 2, 1) = 3;  // M = 3
  st::require_shape_error("memory", [&] { run(data.inputs(c), options); });
  data.memory.view()(0, 2, 1) = data.memory.view()(0, 2, 0);  // twice in one token
  st::require_shape_error("memory", [&] { run(data.inputs(c), options); });
  data.memory.view()(0, 2, 1) = (data.memory.view()(0, 2, 0) + 1) % 3;
  data.g_scalar.view()(0, 1, 0, 0) = 0.5f;  // a growing gate
  st::require_shape_error("g_scalar", [&] { run(data.inputs(c), options); });
  data.g_scalar.view()(0, 1, 0, 0) = -0.5f;
  data.beta.view()(0, 3, 1, 0) = NAN;
  st::require_shape_error("beta", [&] { run(data.inputs(c), options); });
  data.beta.view()(0, 3, 1, 0) = 0.5f;
  seqmix::MomOptions four = options;
  four.memories = 4;  // the states have M = 3
  st::require_shape_error("initial_state", [&] { run(data.inputs(c), four); });
  seqmix::MomInputs no_gate = data.inputs(c);
  no_gate.g_scalar = {};
  st::require_shape_error("g_scalar", [&] { run(no_gate, options); });
  for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
  for (index_t i = 0; i < s.numel(); ++i) REQUIRE(s.data()[i] == 7.f);
  run(data.inputs(c), options);  // the repaired call runs
}
