// Fuzz target: the linear-attention family. Gated linear attention in its four gate kinds
// (channel GLA, scalar simple GLA, RetNet retention, ungated), the delta rule, the gated delta
// rule (scalar and channel gates, optional q/k l2 norm) and RWKV-7: prefill (chunked or recurrent,
// chunk sizes around the 64-token tile) against the reference with packed sequences / state
// slots, and every decode step against the reference prefill of one token.
#include "fuzz.hpp"

#include "seqmix/linear_attention.hpp"

namespace seqmix::fuzz {

namespace {

constexpr double kTol = 1e-3;

struct Dims {
  Batch bt;
  index_t H = 1, HV = 1, K = 1, V = 1;
};

Dims decode_dims(Decoder& in, Mode mode, bool step, index_t max_T) {
  Dims d;
  d.bt = decode_batch(in, mode, 3, max_T, !step);
  d.H = in.size(1, 2), d.HV = d.H * in.size(1, 2), d.K = in.size(1, 20), d.V = in.size(1, 20);
  if (std::getenv("SEQMIX_FUZZ_TRACE"))
    std::fprintf(stderr, "H %td HV %td K %td V %td mode %s\n", d.H, d.HV, d.K, d.V, mode_name(mode));
  return d;
}

// A [B,T,...] tensor's token 0 as a step input [B,...] (the step tests use T = 1).
template <std::size_t R>
ConstView<float, R - 1> token0(const Tensor<float, R>& t) {
  std::array<index_t, R - 1> shape{}, strides{};
  const auto full = t.view().strides();
  shape[0] = t.shape()[0], strides[0] = full[0];
  for (std::size_t i = 2; i < R; ++i) shape[i - 1] = t.shape()[i], strides[i - 1] = full[i];
  return ConstView<float, R - 1>(t.data(), shape, strides);
}

// Runs the fast form and the reference on their own output / pool copies and compares them.
// `fast` and `ref` take (o, state pool or empty) and call the operator.
template <class Fast, class Ref>
void compare_forms(const char* op, const Dims& d, Mode mode, bool step, bool with_state, const Tensor<float, 4>& pool_init,
                   const Hostile& hostile, Fast&& fast, Ref&& ref) {
  Tensor<float, 4> o_fast({d.bt.B, d.bt.T, d.HV, d.V}), o_ref({d.bt.B, d.bt.T, d.HV, d.V});
  o_fast.fill(-3.f), o_ref.fill(-3.f);
  Tensor<float, 4> pool_fast = pool_init, pool_ref = pool_init;
  Snapshot snap;
  snap.add(o_fast).add(pool_fast);
  const bool fast_ok = accepted(op, snap, [&] { fast(o_fast, with_state ? pool_fast.view() : TensorView<float, 4>()); });
  const bool ref_ok = accepted(op, Snapshot(), [&] { ref(o_ref, with_state ? pool_ref.view() : TensorView<float, 4>()); });
  if (!verdicts_agree(op, fast_ok, ref_ok, hostile, !step)) return;
  // The chunked forms do not follow one non-finite policy yet (docs/reliability.md), so NaN / inf
  // elements are compared only where both sides are finite.
  require_close(std::string(op) + " o", o_fast, o_ref, kTol, false, mode);
  require_close(std::string(op) + " state", pool_fast, pool_ref, kTol, false, mode);
}

void gla(Decoder& in, bool step) {
  const Mode mode = decode_mode(in);
  const Dims d = decode_dims(in, mode, step, 150);
  GatedLinearAttentionOptions options;
  options.gate = in.pick({GateKind::channel, GateKind::scalar, GateKind::retnet, GateKind::none});
  options.chunk_size = in.pick<index_t>({1, 7, 16, 63, 64, 65, 256});
  options.algorithm = in.pick({LinearAttentionAlgorithm::automatic, LinearAttentionAlgorithm::chunked,
                               LinearAttentionAlgorithm::recurrent});
  const index_t Hg = in.flag() ? d.H : d.HV;
  const bool with_state = step || in.flag();
  const float gate_lo = in.pick({-0.2f, -3.f, -20.f});
  Tensor<float, 4> q({d.bt.B, d.bt.T, d.H, d.K}), k({d.bt.B, d.bt.T, d.H, d.K}), v({d.bt.B, d.bt.T, d.HV, d.V});
  Tensor<float, 4> g({d.bt.B, d.bt.T, Hg, d.K});
  Tensor<float, 3> gs({d.bt.B, d.bt.T, Hg});
  Tensor<float, 4> pool({d.bt.S, d.HV, d.K, d.V});
  fill(q, in, mode, -1.f, 1.f);
  fill(k, in, mode, -1.f, 1.f);
  fill(v, in, mode, -1.f, 1.f);
  fill(g, in, Mode::clean, gate_lo, 0.f), fill(gs, in, Mode::clean, gate_lo, 0.f);
  fill(pool, in, mode, -1.f, 1.f);
  Hostile hostile(in, mode, 6);
  if (!step) options.chunk_size = hostile.scalar(5, options.chunk_size, in.flag() ? 0 : 4097);
  const Executor& exec = executor(in);
  const bool channel = options.gate == GateKind::channel, scalar = options.gate == GateKind::scalar;
  if (step) {
    GatedLinearAttentionStepInputs si;
    si.q = token0(q), si.k = token0(k), si.v = token0(v), si.batch = d.bt.view();
    if (channel) si.g = token0(g);
    if (scalar) si.g_scalar = token0(gs);
    GatedLinearAttentionInputs ri;
    ri.q = q.view(), ri.k = k.view(), ri.v = v.view(), ri.batch = d.bt.view();
    if (channel) ri.g = g.view();
    if (scalar) ri.g_scalar = gs.view();
    compare_forms("gla_step", d, mode, true, true, pool, hostile,
        [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
          gated_linear_attention_step(si, {TensorView<float, 3>(o.data(), {d.bt.B, d.HV, d.V}), state}, options, exec);
        },
        [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
          ri.initial_state = state;
          reference::gated_linear_attention(ri, {o.view(), state}, options);
        });
    return;
  }
  GatedLinearAttentionInputs fi;
  fi.q = hostile.in(0, q), fi.k = hostile.in(1, k), fi.v = hostile.in(2, v), fi.batch = d.bt.view();
  if (channel) fi.g = hostile.in(3, g);
  if (scalar) fi.g_scalar = hostile.in(4, gs);
  compare_forms("gated_linear_attention", d, mode, false, with_state, pool, hostile,
      [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
        GatedLinearAttentionInputs i = fi;
        i.initial_state = state;
        gated_linear_attention(i, {o.view(), state}, options, exec);
      },
      [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
        GatedLinearAttentionInputs i = fi;
        i.initial_state = state;
        reference::gated_linear_attention(i, {o.view(), state}, options);
      });
}

void delta(Decoder& in, bool step) {
  const Mode mode = decode_mode(in);
  const Dims d = decode_dims(in, mode, step, 150);
  const bool gated = in.flag();
  GatedDeltaRuleOptions options;
  options.gate = in.pick({DeltaGate::scalar, DeltaGate::channel});
  options.qk_norm = in.pick({QkNorm::none, QkNorm::l2});
  options.chunk_size = in.pick<index_t>({1, 7, 16, 63, 64, 65});
  options.algorithm = in.pick({DeltaAlgorithm::automatic, DeltaAlgorithm::chunked, DeltaAlgorithm::recurrent});
  const bool with_state = step || in.flag();
  Tensor<float, 4> q({d.bt.B, d.bt.T, d.H, d.K}), k({d.bt.B, d.bt.T, d.H, d.K}), v({d.bt.B, d.bt.T, d.HV, d.V});
  Tensor<float, 4> g({d.bt.B, d.bt.T, d.HV, d.K});
  Tensor<float, 3> beta({d.bt.B, d.bt.T, d.HV}), gs({d.bt.B, d.bt.T, d.HV});
  Tensor<float, 4> pool({d.bt.S, d.HV, d.K, d.V});
  fill(q, in, mode, -1.f, 1.f);
  // Without the l2 norm, keys of norm <= 1 keep the delta rule contractive (beta in (0, 1)).
  const float kr = options.qk_norm == QkNorm::l2 ? 1.f : 1.f / std::sqrt(static_cast<float>(d.K));
  fill(k, in, mode, -kr, kr);
  fill(v, in, mode, -1.f, 1.f);
  fill(beta, in, Mode::clean, 0.f, 1.f), fill(g, in, Mode::clean, -3.f, 0.f), fill(gs, in, Mode::clean, -3.f, 0.f);
  fill(pool, in, mode, -1.f, 1.f);
  Hostile hostile(in, mode, 7);
  if (!step) options.chunk_size = hostile.scalar(6, options.chunk_size, 0);
  const Executor& exec = executor(in);
  const bool channel = options.gate == DeltaGate::channel;
  if (step) {
    GatedDeltaRuleStepInputs si;
    si.q = token0(q), si.k = token0(k), si.v = token0(v), si.beta = token0(beta), si.batch = d.bt.view();
    if (channel) si.g = token0(g);
    else si.g_scalar = token0(gs);
    DeltaRuleStepInputs ui;
    ui.q = si.q, ui.k = si.k, ui.v = si.v, ui.beta = si.beta, ui.batch = si.batch;
    DeltaRuleOptions uo;
    uo.qk_norm = options.qk_norm;
    compare_forms(gated ? "gated_delta_rule_step" : "delta_rule_step", d, mode, true, true, pool, hostile,
        [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
          const TensorView<float, 3> o1(o.data(), {d.bt.B, d.HV, d.V});
          if (gated) gated_delta_rule_step(si, {o1, state}, options, exec);
          else delta_rule_step(ui, {o1, state}, uo, exec);
        },
        [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
          GatedDeltaRuleInputs ri;
          ri.q = q.view(), ri.k = k.view(), ri.v = v.view(), ri.beta = beta.view(), ri.batch = d.bt.view();
          if (channel) ri.g = g.view();
          else ri.g_scalar = gs.view();
          ri.initial_state = state;
          if (gated) {
            reference::gated_delta_rule(ri, {o.view(), state}, options);
          } else {
            DeltaRuleInputs di;
            di.q = ri.q, di.k = ri.k, di.v = ri.v, di.beta = ri.beta, di.batch = ri.batch, di.initial_state = state;
            reference::delta_rule(di, {o.view(), state}, uo);
          }
        });
    return;
  }
  GatedDeltaRuleInputs fi;
  fi.q = hostile.in(0, q), fi.k = hostile.in(1, k), fi.v = hostile.in(2, v), fi.beta = hostile.in(3, beta);
  fi.batch = d.bt.view();
  if (gated && channel) fi.g = hostile.in(4, g);
  if (gated && !channel) fi.g_scalar = hostile.in(5, gs);
  DeltaRuleOptions uo;
  uo.qk_norm = options.qk_norm, uo.chunk_size = options.chunk_size;
  uo.algorithm = options.algorithm;
  auto ungated = [&](TensorView<float, 4> state) {
    DeltaRuleInputs di;
    di.q = fi.q, di.k = fi.k, di.v = fi.v, di.beta = fi.beta, di.batch = fi.batch, di.initial_state = state;
    return di;
  };
  compare_forms(gated ? "gated_delta_rule" : "delta_rule", d, mode, false, with_state, pool, hostile,
      [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
        GatedDeltaRuleInputs i = fi;
        i.initial_state = state;
        if (gated) gated_delta_rule(i, {o.view(), state}, options, exec);
        else delta_rule(ungated(state), {o.view(), state}, uo, exec);
      },
      [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
        GatedDeltaRuleInputs i = fi;
        i.initial_state = state;
        if (gated) reference::gated_delta_rule(i, {o.view(), state}, options);
        else reference::delta_rule(ungated(state), {o.view(), state}, uo);
      });
}

void rwkv(Decoder& in, bool step) {
  const Mode mode = decode_mode(in);
  Dims d = decode_dims(in, mode, step, 100);
  d.HV = d.H, d.V = in.size(1, 16);
  const bool with_state = step || in.flag();
  const std::array<index_t, 4> kshape{d.bt.B, d.bt.T, d.H, d.K};
  Tensor<float, 4> r(kshape), k(kshape), a(kshape), b(kshape), g(kshape), v({d.bt.B, d.bt.T, d.H, d.V});
  Tensor<float, 4> pool({d.bt.S, d.H, d.K, d.V});
  // RWKV-7's a = -kappa_hat, b = kappa_hat * a_lr with a unit kappa_hat: scaled so that the
  // transition stays a contraction.
  const float kr = 1.f / std::sqrt(static_cast<float>(d.K));
  fill(r, in, mode, -1.f, 1.f);
  fill(k, in, mode, -kr, kr);
  fill(v, in, mode, -1.f, 1.f);
  fill(a, in, Mode::clean, -kr, kr), fill(b, in, Mode::clean, -kr, kr), fill(g, in, Mode::clean, -2.f, 0.f);
  fill(pool, in, mode, -1.f, 1.f);
  Hostile hostile(in, mode, 6);
  const Executor& exec = executor(in);
  if (step) {
    Rwkv7StepInputs si;
    si.r = token0(r), si.k = token0(k), si.v = token0(v), si.a = token0(a), si.b = token0(b), si.g = token0(g);
    si.batch = d.bt.view();
    compare_forms("rwkv7_step", d, mode, true, true, pool, hostile,
        [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
          rwkv7_step(si, {TensorView<float, 3>(o.data(), {d.bt.B, d.H, d.V}), state}, exec);
        },
        [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
          Rwkv7Inputs ri;
          ri.r = r.view(), ri.k = k.view(), ri.v = v.view(), ri.a = a.view(), ri.b = b.view(), ri.g = g.view();
          ri.batch = d.bt.view(), ri.initial_state = state;
          reference::rwkv7(ri, {o.view(), state});
        });
    return;
  }
  Rwkv7Inputs fi;
  fi.r = hostile.in(0, r), fi.k = hostile.in(1, k), fi.v = hostile.in(2, v), fi.a = hostile.in(3, a);
  fi.b = hostile.in(4, b), fi.g = hostile.in(5, g), fi.batch = d.bt.view();
  compare_forms("rwkv7", d, mode, false, with_state, pool, hostile,
      [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
        Rwkv7Inputs i = fi;
        i.initial_state = state;
        rwkv7(i, {o.view(), state}, exec);
      },
      [&](Tensor<float, 4>& o, TensorView<float, 4> state) {
        Rwkv7Inputs i = fi;
        i.initial_state = state;
        reference::rwkv7(i, {o.view(), state});
      });
}

}  // namespace

int fuzz_linear_attention(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  const std::uint8_t which = in.byte();
  const bool step = which & 1;
  switch ((which >> 1) % 3) {
    case 0: gla(in, step); break;
    case 1: delta(in, step); break;
    default: rwkv(in, step); break;
  }
  return 0;
}

}  // namespace seqmix::fuzz
