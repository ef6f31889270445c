// Hostile sizes against a sample of operators (issue 24): negative extents, element counts and
// strides that overflow index_t. Every operator validates its views through ArgCheck
// (core/error.hpp), so each such call must throw ShapeError before it writes any output; the
// outputs hold a sentinel before the call and are compared bit for bit afterwards.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/delta_rule/step.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;

constexpr float kSentinel = 7.25f;
constexpr index_t k2to40 = index_t{1} << 40;
constexpr index_t k2to61 = index_t{1} << 61;

// The outputs of one call, as flat float buffers that must come out of a refused call unchanged.
class Outputs {
 public:
  template <std::size_t Rank>
  Outputs& add(Tensor<float, Rank>& t) {
    t.fill(kSentinel);
    buffers_.push_back({t.data(), t.numel()});
    return *this;
  }
  bool untouched() const {
    for (const auto& [data, n] : buffers_)
      for (index_t i = 0; i < n; ++i)
        if (std::memcmp(&data[i], &kSentinel, sizeof(float)) != 0) return false;
    return true;
  }

 private:
  std::vector<std::pair<const float*, index_t>> buffers_;
};

// `call` must throw ShapeError (not any other exception, not return) and leave `outputs` as they were.
void expect_refused(const std::string& what, const Outputs& outputs, const std::function<void()>& call) {
  INFO(what);
  bool refused = false;
  try {
    call();
  } catch (const seqmix::ShapeError& e) {
    refused = true;
    INFO(e.what());
    CHECK(std::string(e.what()).find("seqmix::") == 0);
  }
  CHECK(refused);
  CHECK(outputs.untouched());
}

// A view of `t`'s data under another shape (and strides): the hostile part of each call.
template <std::size_t Rank>
ConstView<float, Rank> as(const Tensor<float, Rank>& t, const std::array<index_t, Rank>& shape) {
  return ConstView<float, Rank>(t.data(), shape);
}
template <std::size_t Rank>
ConstView<float, Rank> as(const Tensor<float, Rank>& t, const std::array<index_t, Rank>& shape,
                          const std::array<index_t, Rank>& strides) {
  return ConstView<float, Rank>(t.data(), shape, strides);
}
template <std::size_t Rank>
TensorView<float, Rank> as_out(Tensor<float, Rank>& t, const std::array<index_t, Rank>& shape) {
  return TensorView<float, Rank>(t.data(), shape);
}

}  // namespace

TEST_CASE("attention refuses negative and overflowing extents before writing", "[hostile][attention]") {
  const index_t B = 1, Tq = 8, Tk = 16, H = 2, D = 8;
  Tensor<float, 4> q({B, Tq, H, D}), k({B, Tk, H, D}), v({B, Tk, H, D}), o({B, Tq, H, D});
  Tensor<float, 3> lse({B, Tq, H});
  seqmix::testing::fill_uniform(q.view(), 1);
  seqmix::testing::fill_uniform(k.view(), 2);
  seqmix::testing::fill_uniform(v.view(), 3);
  Outputs outputs;
  outputs.add(o).add(lse);

  using Inputs = seqmix::AttentionInputs<float>;
  using Run = std::function<void(const Inputs&, const seqmix::AttentionOutputs&)>;
  const std::pair<const char*, Run> forms[] = {
      {"attention", [](const Inputs& in, const seqmix::AttentionOutputs& out) { seqmix::attention(in, out); }},
      {"attention_flash", [](const Inputs& in, const seqmix::AttentionOutputs& out) { seqmix::attention_flash(in, out); }},
      {"attention_step", [](const Inputs& in, const seqmix::AttentionOutputs& out) { seqmix::attention_step(in, out); }},
      {"reference::attention",
       [](const Inputs& in, const seqmix::AttentionOutputs& out) { seqmix::reference::attention(in, out); }},
  };
  for (const auto& form : forms) {
    // Named members, not a structured binding: C++17 lambdas cannot capture a binding (clang refuses).
    const auto& name = form.first;
    const auto& run = form.second;
    INFO(name);
    auto good = [&] {
      Inputs in;
      in.q = q.view(), in.k = k.view(), in.v = v.view();
      return in;
    };
    const seqmix::AttentionOutputs out{o.view(), lse.view()};
    {
      Inputs in = good();  // Tk = -4 in k and v
      in.k = as(k, {B, -4, H, D}), in.v = as(v, {B, -4, H, D});
      expect_refused("Tk = -4", outputs, [&] { run(in, out); });
    }
    {
      Inputs in = good();  // Tq = -4 in q and o
      in.q = as(q, {B, -4, H, D});
      expect_refused("Tq = -4", outputs, [&] { run(in, {as_out(o, {B, -4, H, D}), as_out(lse, {B, -4, H})}); });
    }
    {
      Inputs in = good();  // negative head dimension
      in.q = as(q, {B, Tq, H, -D});
      expect_refused("Dk = -8", outputs, [&] { run(in, out); });
    }
    {
      Inputs in = good();  // B * Tk * H * D overflows: 2^40 keys of 2^30 heads
      in.k = as(k, {B, k2to40, index_t{1} << 30, D}, {0, 0, 0, 1});
      expect_refused("k with 2^73 elements", outputs, [&] { run(in, out); });
    }
    {
      Inputs in = good();  // a small key tensor whose token stride reaches beyond index_t
      in.v = as(v, {B, Tk, H, D}, {0, k2to61, D, 1});
      expect_refused("v with a 2^61 token stride", outputs, [&] { run(in, out); });
    }
    for (const std::int64_t extreme : {std::numeric_limits<std::int64_t>::max(), -(std::int64_t{1} << 62)}) {
      Tensor<std::int64_t, 2> positions({B, Tq});  // int64 positions where windows would overflow
      for (index_t i = 0; i < Tq; ++i) positions(0, i) = i;
      positions(0, Tq - 1) = extreme;
      Inputs in = good();
      in.positions = positions.view();
      seqmix::AttentionOptions options;
      options.window = 4;
      expect_refused("position " + std::to_string(extreme), outputs, [&] {
        if (std::string(name) == "reference::attention") seqmix::reference::attention(in, out, options);
        else if (std::string(name) == "attention_flash") seqmix::attention_flash(in, out, options);
        else if (std::string(name) == "attention_step") seqmix::attention_step(in, out, options);
        else seqmix::attention(in, out, options);
      });
    }
  }
}

TEST_CASE("delta_rule refuses negative and overflowing extents before writing", "[hostile][delta_rule]") {
  const index_t B = 1, T = 16, H = 2, K = 8, V = 8;
  Tensor<float, 4> q({B, T, H, K}), k({B, T, H, K}), v({B, T, H, V}), o({B, T, H, V});
  Tensor<float, 3> beta({B, T, H});
  Tensor<float, 4> state({B, H, K, V});
  beta.fill(0.5f);
  Outputs outputs;
  outputs.add(o).add(state);
  using Run = std::function<void(const seqmix::DeltaRuleInputs&, const seqmix::DeltaRuleOutputs&)>;
  const std::pair<const char*, Run> forms[] = {
      {"delta_rule", [](const auto& in, const auto& out) { seqmix::delta_rule(in, out); }},
      {"reference::delta_rule", [](const auto& in, const auto& out) { seqmix::reference::delta_rule(in, out); }},
  };
  for (const auto& form : forms) {
    // Named members, not a structured binding: C++17 lambdas cannot capture a binding (clang refuses).
    const auto& name = form.first;
    const auto& run = form.second;
    INFO(name);
    {
      seqmix::DeltaRuleInputs in;  // T = -3 everywhere
      in.q = as(q, {B, -3, H, K}), in.k = as(k, {B, -3, H, K}), in.v = as(v, {B, -3, H, V});
      in.beta = as(beta, {B, -3, H});
      expect_refused("T = -3", outputs, [&] { run(in, {as_out(o, {B, -3, H, V}), state.view(), {}}); });
    }
    {
      seqmix::DeltaRuleInputs in;  // K = -8 in q and k, the state [B,H,-8,V]
      in.q = as(q, {B, T, H, -K}), in.k = as(k, {B, T, H, -K}), in.v = v.view(), in.beta = beta.view();
      expect_refused("K = -8", outputs, [&] { run(in, {o.view(), as_out(state, {B, H, -K, V}), {}}); });
    }
    {
      seqmix::DeltaRuleInputs in;  // 2^40 tokens of 2^30 channels, broadcast from one element
      in.q = as(q, {B, k2to40, H, index_t{1} << 30}, {0, 0, 0, 0});
      in.k = in.q, in.v = as(v, {B, k2to40, H, V}, {0, 0, 0, 1}), in.beta = as(beta, {B, k2to40, H}, {0, 0, 0});
      expect_refused("T = 2^40", outputs, [&] { run(in, {o.view(), {}, {}}); });
    }
  }
  // The decode step with a negative batch.
  Tensor<float, 3> q1({B, H, K}), v1({B, H, V}), o1({B, H, V});
  Tensor<float, 2> beta1({B, H});
  Outputs step_outputs;
  step_outputs.add(o1).add(state);
  seqmix::DeltaRuleStepInputs in;
  in.q = as(q1, {-2, H, K}), in.k = in.q, in.v = as(v1, {-2, H, V}), in.beta = as(beta1, {-2, H});
  expect_refused("delta_rule_step, B = -2", step_outputs,
                 [&] { seqmix::delta_rule_step(in, {as_out(o1, {-2, H, V}), as_out(state, {-2, H, K, V})}); });
}

TEST_CASE("linear_scan refuses negative and overflowing extents before writing", "[hostile][scan]") {
  const index_t B = 2, T = 8, D = 4;
  Tensor<float, 3> a({B, T, D}), b({B, T, D}), h_all({B, T, D});
  Tensor<float, 2> h_last({B, D});
  Outputs outputs;
  outputs.add(h_all).add(h_last);
  using Run = std::function<void(ConstView<float, 3>, ConstView<float, 3>, TensorView<float, 3>, TensorView<float, 2>)>;
  const std::pair<const char*, Run> forms[] = {
      {"linear_scan", [](auto a_, auto b_, auto all, auto last) { seqmix::linear_scan(a_, b_, {}, all, last); }},
      {"linear_scan, time split",
       [](auto a_, auto b_, auto all, auto last) {
         seqmix::linear_scan(a_, b_, {}, all, last, {seqmix::GateSpace::direct, seqmix::ScanSplit::time, 2},
                             seqmix::testing::two_thread_pool());
       }},
      {"reference::linear_scan",
       [](auto a_, auto b_, auto all, auto last) { seqmix::reference::linear_scan(a_, b_, {}, all, last); }},
  };
  for (const auto& form : forms) {
    // Named members, not a structured binding: C++17 lambdas cannot capture a binding (clang refuses).
    const auto& name = form.first;
    const auto& run = form.second;
    INFO(name);
    expect_refused("T = -3", outputs, [&] { run(as(a, {B, -3, D}), as(b, {B, -3, D}), as_out(h_all, {B, -3, D}), h_last.view()); });
    expect_refused("D = -4 (h_last only)", outputs,
                   [&] { run(as(a, {B, T, -D}), as(b, {B, T, -D}), {}, as_out(h_last, {B, -D})); });
    expect_refused("T = 2^62", outputs, [&] {
      run(as(a, {B, index_t{1} << 62, D}, {0, 0, 1}), as(b, {B, index_t{1} << 62, D}, {0, 0, 1}), {}, h_last.view());
    });
    expect_refused("b with a 2^61 batch stride", outputs,
                   [&] { run(a.view(), as(b, {B, T, D}, {k2to61, D, 1}), h_all.view(), h_last.view()); });
  }
}

TEST_CASE("causal_conv1d refuses negative extents and an output aliasing its input", "[hostile][causal_conv1d]") {
  const index_t B = 1, T = 16, D = 8, W = 4;
  Tensor<float, 3> x({B, T, D}), y({B, T, D});
  Tensor<float, 2> weight({D, W});
  Outputs outputs;
  outputs.add(y);
  using Run = std::function<void(const seqmix::CausalConv1dInputs&, const seqmix::CausalConv1dOutputs&)>;
  const std::pair<const char*, Run> forms[] = {
      {"causal_conv1d", [](const auto& in, const auto& out) { seqmix::causal_conv1d(in, out); }},
      {"reference::causal_conv1d", [](const auto& in, const auto& out) { seqmix::reference::causal_conv1d(in, out); }},
  };
  for (const auto& form : forms) {
    // Named members, not a structured binding: C++17 lambdas cannot capture a binding (clang refuses).
    const auto& name = form.first;
    const auto& run = form.second;
    INFO(name);
    seqmix::CausalConv1dInputs in;
    in.x = as(x, {B, -3, D}), in.weight = weight.view();
    expect_refused("T = -3", outputs, [&] { run(in, {as_out(y, {B, -3, D}), {}, {}}); });
    in.x = x.view(), in.weight = as(weight, {D, -1});
    expect_refused("W = -1", outputs, [&] { run(in, {y.view(), {}, {}}); });
    in.weight = weight.view();
    in.x = as(y, {B, T, D});  // y == x
    expect_refused("y aliasing x", outputs, [&] { run(in, {y.view(), {}, {}}); });
  }
}

TEST_CASE("option enums out of range are refused before writing", "[hostile][options]") {
  // An enum read from a config as a raw integer: every family checks its option enums with
  // check_enum, so 7 is a ShapeError naming the option, not a silent GateKind::none.
  const index_t B = 1, T = 8, H = 2, K = 8, V = 8;
  Tensor<float, 4> q({B, T, H, K}), k({B, T, H, K}), v({B, T, H, V}), o({B, T, H, V}), g({B, T, H, K});
  Tensor<float, 3> gs({B, T, H}), beta({B, T, H});
  seqmix::testing::fill_uniform(q.view(), 1);
  seqmix::testing::fill_uniform(k.view(), 2);
  seqmix::testing::fill_uniform(v.view(), 3);
  g.fill(-0.1f), gs.fill(-0.1f), beta.fill(0.5f);
  Outputs outputs;
  outputs.add(o);
  auto bad = [](auto value) { return static_cast<decltype(value)>(7); };
  {
    seqmix::GatedLinearAttentionInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.g = g.view();
    seqmix::GatedLinearAttentionOptions options;
    options.gate = bad(options.gate);
    expect_refused("GatedLinearAttentionOptions::gate = 7", outputs, [&] { seqmix::gated_linear_attention(in, {o.view(), {}, {}}, options); });
    expect_refused("reference, GatedLinearAttentionOptions::gate = 7", outputs,
                   [&] { seqmix::reference::gated_linear_attention(in, {o.view(), {}, {}}, options); });
    options = {};
    options.algorithm = bad(options.algorithm);
    expect_refused("GatedLinearAttentionOptions::algorithm = 7", outputs, [&] { seqmix::gated_linear_attention(in, {o.view(), {}, {}}, options); });
  }
  {
    seqmix::LinearAttentionInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    seqmix::LinearAttentionOptions options;
    options.feature_map = bad(options.feature_map);
    expect_refused("LinearAttentionOptions::feature_map = 7", outputs,
                   [&] { seqmix::linear_attention(in, {o.view(), {}, {}, {}}, options); });
  }
  {
    seqmix::GatedDeltaRuleInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.g_scalar = gs.view();
    for (int which = 0; which < 3; ++which) {
      seqmix::GatedDeltaRuleOptions options;
      if (which == 0) options.gate = bad(options.gate);
      if (which == 1) options.qk_norm = bad(options.qk_norm);
      if (which == 2) options.algorithm = bad(options.algorithm);
      expect_refused("GatedDeltaRuleOptions enum " + std::to_string(which) + " = 7", outputs,
                     [&] { seqmix::gated_delta_rule(in, {o.view(), {}, {}}, options); });
    }
  }
  {
    const index_t P = 8, N = 8;
    Tensor<float, 4> x({B, T, H, P}), Bm({B, T, 1, N}), y({B, T, H, P});
    Tensor<float, 3> dt({B, T, H});
    Tensor<float, 1> A({H});
    x.fill(0.5f), Bm.fill(0.5f), dt.fill(0.1f), A.fill(-1.f);
    Outputs ys;
    ys.add(y);
    seqmix::SsdInputs in;
    in.x = x.view(), in.dt = dt.view(), in.A = A.view(), in.Bm = Bm.view(), in.Cm = Bm.view();
    seqmix::SsdOptions options;
    options.algorithm = bad(options.algorithm);
    expect_refused("SsdOptions::algorithm = 7", ys, [&] { seqmix::ssd(in, {y.view(), {}, {}}, options); });
  }
}
