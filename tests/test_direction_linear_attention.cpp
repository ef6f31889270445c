// The reverse option of the linear-attention family (core/direction.hpp): linear_attention,
// gated_linear_attention (channel and scalar gates), rwkv6, delta_rule and gated_delta_rule
// (scalar gate and KDA's channel gate), reference and chunked / recurrent forms, each equal to
// the forward operator on explicitly reversed copies (outputs and per-token states reversed
// back; the final state is the state after token 0).
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <string>

#include "seqmix/core/direction.hpp"
#include "seqmix/linear_attention.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

template <std::size_t Rank>
Tensor<float, Rank> la_direction_reversed(const Tensor<float, Rank>& t) {
  Tensor<float, Rank> r(t.shape());
  seqmix::copy(seqmix::reversed_time_view(t.cview()), r.view());
  return r;
}

// Token inputs of every operator of the family, in one direction.
struct LaDirectionTokens {
  Tensor<float, 4> q, k, v, g;     // [B,T,H,K] / [B,T,H,V]; g: log-decays [B,T,H,K]
  Tensor<float, 3> beta, g_scalar;  // [B,T,H]
  LaDirectionTokens reversed() const {
    return {la_direction_reversed(q), la_direction_reversed(k), la_direction_reversed(v), la_direction_reversed(g),
            la_direction_reversed(beta), la_direction_reversed(g_scalar)};
  }
};

struct LaDirectionOut {
  Tensor<float, 4> o, final_state;
  Tensor<float, 5> token_states;
};

constexpr index_t kLaB = 2, kLaH = 2, kLaK = 8, kLaV = 8;

// Runs `call(tokens, outputs, reverse)` on the data reversed by the option and forward on reversed
// copies; requires the same outputs (o and token_states reversed back).
void la_direction_check(const char* what, index_t T,
                        const std::function<void(const LaDirectionTokens&, LaDirectionOut&, bool)>& call) {
  INFO(what << " T=" << T);
  const LaDirectionTokens tokens{st::random_tensor<4>({kLaB, T, kLaH, kLaK}, 1),
                                 st::random_tensor<4>({kLaB, T, kLaH, kLaK}, 2, -0.5f, 0.5f),
                                 st::random_tensor<4>({kLaB, T, kLaH, kLaV}, 3),
                                 st::random_tensor<4>({kLaB, T, kLaH, kLaK}, 4, -0.7f, 0.f),
                                 st::random_tensor<3>({kLaB, T, kLaH}, 5, 0.f, 1.f),
                                 st::random_tensor<3>({kLaB, T, kLaH}, 6, -0.7f, 0.f)};
  const LaDirectionTokens copies = tokens.reversed();
  // With token_states (the chunked forms may fall back to the recurrent one for them) and without.
  for (int keep_states = 0; keep_states < 2; ++keep_states) {
    INFO("token_states " << keep_states);
    auto outputs = [&] {
      return LaDirectionOut{Tensor<float, 4>({kLaB, T, kLaH, kLaV}), Tensor<float, 4>({kLaB, kLaH, kLaK, kLaV}),
                            keep_states ? Tensor<float, 5>({kLaB, T, kLaH, kLaK, kLaV}) : Tensor<float, 5>()};
    };
    LaDirectionOut got = outputs(), want = outputs();
    call(tokens, got, true);
    call(copies, want, false);
    constexpr double tol = 2e-5;
    st::require_close("o", got.o.view(), seqmix::reversed_time_view(want.o.view()), tol);
    st::require_close("final_state", got.final_state.view(), want.final_state.view(), tol);
    if (keep_states)
      st::require_close("token_states", got.token_states.view(), seqmix::reversed_time_view(want.token_states.view()), tol);
  }
}

}  // namespace

TEST_CASE("reverse linear attention family equals the forward operators on reversed copies",
          "[direction][linear_attention]") {
  const auto state0 = st::random_tensor<4>({kLaB, kLaH, kLaK, kLaV}, 9);
  for (index_t T : {1, 37}) {
    for (int form = 0; form < 3; ++form) {  // reference, chunked, recurrent
      const std::string name = form == 0 ? "reference" : form == 1 ? "chunked" : "recurrent";
      const auto la_alg = form == 2 ? seqmix::LinearAttentionAlgorithm::recurrent : seqmix::LinearAttentionAlgorithm::chunked;
      const auto delta_alg = form == 2 ? seqmix::DeltaAlgorithm::recurrent : seqmix::DeltaAlgorithm::chunked;
      const seqmix::Executor& ex = st::two_thread_pool();

      la_direction_check(("linear_attention " + name).c_str(), T, [&](const LaDirectionTokens& x, LaDirectionOut& o, bool rev) {
        seqmix::LinearAttentionOptions opt;
        opt.reverse = rev, opt.chunk_size = 16, opt.algorithm = la_alg;
        const seqmix::LinearAttentionInputs in{x.q.cview(), x.k.cview(), x.v.cview(), state0.cview()};
        const seqmix::LinearAttentionOutputs out{o.o.view(), o.final_state.view(), {}, o.token_states.view()};
        form == 0 ? seqmix::reference::linear_attention(in, out, opt) : seqmix::linear_attention(in, out, opt, ex);
      });
      for (auto gate : {seqmix::GateKind::channel, seqmix::GateKind::scalar}) {
        la_direction_check(("gla " + name).c_str(), T, [&](const LaDirectionTokens& x, LaDirectionOut& o, bool rev) {
          seqmix::GatedLinearAttentionOptions opt;
          opt.reverse = rev, opt.chunk_size = 16, opt.algorithm = la_alg, opt.gate = gate;
          seqmix::GatedLinearAttentionInputs in{x.q.cview(), x.k.cview(), x.v.cview()};
          if (gate == seqmix::GateKind::channel) in.g = x.g.cview();
          else in.g_scalar = x.g_scalar.cview();
          in.initial_state = state0.cview();
          const seqmix::GatedLinearAttentionOutputs out{o.o.view(), o.final_state.view(), o.token_states.view()};
          form == 0 ? seqmix::reference::gated_linear_attention(in, out, opt) : seqmix::gated_linear_attention(in, out, opt, ex);
        });
      }
      const auto bonus = st::random_tensor<2>({kLaH, kLaK}, 10);
      la_direction_check(("rwkv6 " + name).c_str(), T, [&](const LaDirectionTokens& x, LaDirectionOut& o, bool rev) {
        seqmix::Rwkv6Options opt;
        opt.reverse = rev, opt.chunk_size = 16, opt.algorithm = la_alg;
        const seqmix::Rwkv6Inputs in{x.q.cview(), x.k.cview(), x.v.cview(), x.g.cview(), bonus.cview(), state0.cview()};
        const seqmix::Rwkv6Outputs out{o.o.view(), o.final_state.view(), o.token_states.view()};
        form == 0 ? seqmix::reference::rwkv6(in, out, opt) : seqmix::rwkv6(in, out, opt, ex);
      });
      la_direction_check(("delta_rule " + name).c_str(), T, [&](const LaDirectionTokens& x, LaDirectionOut& o, bool rev) {
        seqmix::DeltaRuleOptions opt;
        opt.reverse = rev, opt.chunk_size = 16, opt.algorithm = delta_alg;
        const seqmix::DeltaRuleInputs in{x.q.cview(), x.k.cview(), x.v.cview(), x.beta.cview(), state0.cview()};
        const seqmix::DeltaRuleOutputs out{o.o.view(), o.final_state.view(), o.token_states.view()};
        form == 0 ? seqmix::reference::delta_rule(in, out, opt) : seqmix::delta_rule(in, out, opt, ex);
      });
      for (auto gate : {seqmix::DeltaGate::scalar, seqmix::DeltaGate::channel}) {
        la_direction_check(("gated_delta_rule " + name).c_str(), T, [&](const LaDirectionTokens& x, LaDirectionOut& o, bool rev) {
          seqmix::GatedDeltaRuleOptions opt;
          opt.reverse = rev, opt.chunk_size = 16, opt.algorithm = delta_alg, opt.gate = gate;
          seqmix::GatedDeltaRuleInputs in{x.q.cview(), x.k.cview(), x.v.cview(), x.beta.cview()};
          if (gate == seqmix::DeltaGate::scalar) in.g_scalar = x.g_scalar.cview();
          else in.g = x.g.cview();
          in.initial_state = state0.cview();
          const seqmix::GatedDeltaRuleOutputs out{o.o.view(), o.final_state.view(), o.token_states.view()};
          form == 0 ? seqmix::reference::gated_delta_rule(in, out, opt) : seqmix::gated_delta_rule(in, out, opt, ex);
        });
      }
    }
  }
}
