// Fuzz target: BASED (the hybrid of a taylor2 linear attention and a sliding-window softmax
// attention, docs/operators.md section 8). The fast prefill (seqmix::based) and the decode step
// (seqmix::based_step) against reference::based: dense batches with or without a state at a
// position, and the serving forms (packed cu_seqlens, state slots in a pool with holes and
// padding rows, has_initial_state, per-slot positions), with hostile extents, window / chunk
// sizes and perturbed serving arguments. Accepted calls are compared under the non-finite policy
// of docs/reliability.md (NonFinite::same_finiteness) on o and on the whole state.
#include "fuzz.hpp"

#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"

namespace seqmix::fuzz {

namespace {

constexpr double kBasedTol = 2e-4;

// The state pool of one form: kv [S,H,Kf,V], normalizer [S,H,Kf], rings [S,W,H,D|V], positions [S].
struct BasedPool {
  Tensor<float, 4> kv, wk, wv;
  Tensor<float, 3> z;
  Tensor<std::int64_t, 1> pos;
  BasedPool(index_t S, index_t H, index_t Kf, index_t W, index_t D, index_t V)
      : kv({S, H, Kf, V}), wk({S, W, H, D}), wv({S, W, H, V}), z({S, H, Kf}), pos({S}) {}
  BasedState state(bool normalize, bool positions, index_t position) {
    BasedState s;
    s.kv = kv.view(), s.window_k = wk.view(), s.window_v = wv.view(), s.position = position;
    if (normalize) s.normalizer = z.view();
    if (positions) s.positions = pos.view();
    return s;
  }
};

// A NaN or inf into one element of a state tensor (Mode::specials). Finite pokes are left to the
// token inputs: a finite value in the normalizer can move the linear branch's denominator onto 0,
// where any two evaluations part (ill-conditioned, not a fault).
template <std::size_t R>
void based_poke(Tensor<float, R>& t, Decoder& in) {
  if (t.numel() == 0) return;
  const index_t at = in.range(0, std::min<index_t>(t.numel() - 1, 65535));
  const float v = special_value(static_cast<std::uint8_t>(16 + in.byte() % 3));
  extreme_poked() = true;
  t.data()[at] = v;
}

void based_call(Decoder& in) {
  const Mode mode = decode_mode(in);
  const bool step = in.one_in(3);
  const Batch bt = decode_batch(in, mode, 3, 70, !step);
  const index_t Hf = in.size(1, 2), H = Hf * in.size(1, 2), F = in.size(1, 5), Kf = 1 + F + F * F;
  const index_t D = in.size(1, 12), V = in.size(1, 12);
  BasedOptions options;
  options.window = in.size(1, 20);
  options.chunk_size = in.size(1, 20);
  options.normalization = in.flag() ? BasedNormalization::feature_sum : BasedNormalization::none;
  const bool normalize = options.normalization == BasedNormalization::feature_sum;
  if (in.one_in(4)) options.linear_scale = static_cast<float>(in.range(1, 40)) / 16.f;
  if (in.one_in(4)) options.window_scale = static_cast<float>(in.range(1, 40)) / 16.f;
  // A state: always with serving arguments that need one (slots, has_initial_state), else
  // sometimes; per-slot positions whenever a batch is given, sometimes without one.
  const bool serving = !bt.cu.empty() || !bt.slots.empty() || !bt.initial.empty();
  const bool with_state = step || serving || in.flag();
  const bool with_positions = with_state && (serving || in.one_in(3));
  const index_t S = with_state ? bt.S : 0;
  const index_t position = in.range(0, 40);

  Tensor<float, 4> qf({bt.B, bt.T, Hf, F}), kf({bt.B, bt.T, Hf, F}), q({bt.B, bt.T, H, D}), k({bt.B, bt.T, H, D});
  Tensor<float, 4> v({bt.B, bt.T, H, V});
  fill(qf, in, mode, -1.f, 1.f), fill(kf, in, mode, -1.f, 1.f), fill(q, in, mode, -2.f, 2.f);
  fill(k, in, mode, -2.f, 2.f), fill(v, in, mode, -1.f, 1.f);

  // The initial state pool: the fast prefill of T0 clean tokens from zero on every row (so the
  // normalizer holds sums of taylor2 features and the linear branch's denominator stays away
  // from 0, as in real use), the rings filled, then per-slot positions and a few pokes.
  BasedPool fast(S, H, Kf, options.window, D, V), ref(S, H, Kf, options.window, D, V);
  if (with_state && S > 0) {
    const index_t T0 = in.size(1, 24);
    Tensor<float, 4> pq({S, T0, Hf, F}), pk({S, T0, Hf, F}), wq({S, T0, H, D}), wk({S, T0, H, D}), pv({S, T0, H, V});
    Tensor<float, 4> po({S, T0, H, V});
    fill(pq, in, Mode::clean, -1.f, 1.f), fill(pk, in, Mode::clean, -1.f, 1.f), fill(wq, in, Mode::clean, -2.f, 2.f);
    fill(wk, in, Mode::clean, -2.f, 2.f), fill(pv, in, Mode::clean, -1.f, 1.f);
    fast.kv.fill(0.f), fast.z.fill(0.f), fast.wk.fill(0.f), fast.wv.fill(0.f);
    BasedState s0 = fast.state(normalize, false, 0);
    BasedOptions o0 = options;
    o0.linear_scale.reset(), o0.window_scale.reset();
    based({pq.view(), pk.view(), wq.view(), wk.view(), pv.view(), {}}, {po.view()}, o0, &s0);
    for (index_t s = 0; s < S; ++s) fast.pos.data()[s] = in.range(0, 40);
    if (mode == Mode::specials) {
      const int pokes = in.byte() % 3;
      for (int p = 0; p < pokes; ++p) {
        switch (in.byte() % 4) {
          case 0: based_poke(fast.kv, in); break;
          case 1: if (normalize) based_poke(fast.z, in); break;
          case 2: based_poke(fast.wk, in); break;
          default: based_poke(fast.wv, in); break;
        }
      }
    }
    ref.kv = fast.kv, ref.z = fast.z, ref.wk = fast.wk, ref.wv = fast.wv, ref.pos = fast.pos;
  }

  // Arguments: q_feat 0, k_feat 1, q 2, k 3, v 4, o 5, state.kv 6, window 7, chunk_size 8.
  Hostile hostile(in, mode, 9);
  options.window = hostile.scalar(7, options.window, in.flag() ? 0 : -3);
  options.chunk_size = hostile.scalar(8, options.chunk_size, in.flag() ? 0 : 5000);
  // A hostile window no longer matches the rings' W: refused either way.
  const Executor& exec = executor(in);
  BasedState sf = fast.state(normalize, with_positions, position), sr = ref.state(normalize, with_positions, position);
  if (with_state) sf.kv = hostile.out(6, fast.kv), sr.kv = hostile.out(6, ref.kv);
  Tensor<float, 4> o_fast({bt.B, bt.T, H, V}), o_ref({bt.B, bt.T, H, V});
  o_fast.fill(-3.f), o_ref.fill(-3.f);
  Snapshot snap;
  snap.add(o_fast).add(fast.kv).add(fast.z).add(fast.wk).add(fast.wv).add(fast.pos);
  const char* name = step ? "based_step" : "based";
  bool fast_ok, ref_ok;
  if (step) {
    // One token per row: [B,...] copies of token 0 of each row, which the hostile extents hit;
    // the reference is a prefill of that one token ([B,1,...] views of the same valid copies)
    // from the same state rows.
    const auto token = [&](const Tensor<float, 4>& t) {
      Tensor<float, 3> r({t.size(0), t.size(2), t.size(3)});
      std::copy(t.data(), t.data() + r.numel(), r.data());
      return r;
    };
    const auto as4 = [](const Tensor<float, 3>& t) {
      return ConstView<float, 4>(t.data(), {t.size(0), 1, t.size(1), t.size(2)});
    };
    const Tensor<float, 3> qf1 = token(qf), kf1 = token(kf), q1 = token(q), k1 = token(k), v1 = token(v);
    Tensor<float, 3> o1({bt.B, H, V});
    o1.fill(-3.f);
    Snapshot snap1 = snap;
    snap1.add(o1);
    const BasedStepInputs si{hostile.in(0, qf1), hostile.in(1, kf1), hostile.in(2, q1), hostile.in(3, k1), hostile.in(4, v1),
                             bt.view()};
    fast_ok = accepted(name, snap1, [&] { based_step(si, {hostile.out(5, o1)}, sf, options, exec); });
    std::copy(o1.data(), o1.data() + o1.numel(), o_fast.data());
    const BasedInputs ri{as4(qf1), as4(kf1), as4(q1), as4(k1), as4(v1), bt.view()};
    ref_ok = accepted("reference::based", Snapshot(), [&] {
      reference::based(ri, {TensorView<float, 4>(o_ref.data(), {bt.B, 1, H, V})}, options, &sr);
    });
  } else {
    BasedInputs bi{hostile.in(0, qf), hostile.in(1, kf), hostile.in(2, q), hostile.in(3, k), hostile.in(4, v), bt.view()};
    fast_ok = accepted(name, snap, [&] { based(bi, {hostile.out(5, o_fast)}, options, with_state ? &sf : nullptr, exec); });
    ref_ok = accepted("reference::based", Snapshot(),
                      [&] { reference::based(bi, {hostile.out(5, o_ref)}, options, with_state ? &sr : nullptr); });
  }
  if (!verdicts_agree(name, fast_ok, ref_ok, hostile, !step)) return;
  if (with_state && !with_positions) require(sf.position == sr.position, std::string(name) + ": state.position differs");
  for (index_t s = 0; s < S; ++s)
    require(fast.pos.data()[s] == ref.pos.data()[s], std::string(name) + ": state.positions[" + std::to_string(s) + "] differs");

  // The window branch: a key whose weight underflows in fp32 takes no part (docs/reliability.md),
  // so where its logits may part by more than exp's range a non-finite reference element may be
  // finite; only the reference's finite elements bind then. The fp32 rounding of a logit s is
  // |s| * 2^-24, which exp turns into a relative weight error of that size.
  const double wscale = options.window_scale ? static_cast<double>(*options.window_scale) : 1.0 / std::sqrt(double(D));
  const double history_k = max_finite_abs(fast.wk);
  const double logit = wscale * max_finite_abs(q) * std::max(max_finite_abs(k), history_k) * static_cast<double>(D);
  if (!(2.0 * logit < 80.0)) {
    for (index_t i = 0; i < o_ref.numel(); ++i)
      if (!std::isfinite(o_ref.data()[i])) o_ref.data()[i] = o_fast.data()[i];
  }
  // The linear branch under `none` grows with the tokens and the scale; under feature_sum it is a
  // weighted average of v. Its fp32 sums of T0 + T taylor2 products keep a relative error of a
  // few ulps times the feature count.
  const double tol = kBasedTol + 16.0 * logit * std::numeric_limits<float>::epsilon() +
                     static_cast<double>(Kf) * 64.0 * std::numeric_limits<float>::epsilon();
  require_close(std::string(name) + " o", o_fast, o_ref, tol, NonFinite::same_finiteness, mode);
  if (!with_state) return;
  require_close(std::string(name) + " state.kv", fast.kv, ref.kv, tol, NonFinite::same_finiteness, mode);
  if (normalize) require_close(std::string(name) + " state.normalizer", fast.z, ref.z, tol, NonFinite::same_finiteness, mode);
  // The rings hold copies of the tokens: equal bit for bit (NaN for NaN).
  require_close(std::string(name) + " state.window_k", fast.wk, ref.wk, 0.0, NonFinite::exact, mode);
  require_close(std::string(name) + " state.window_v", fast.wv, ref.wv, 0.0, NonFinite::exact, mode);
}

}  // namespace

int fuzz_based(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  based_call(in);
  return 0;
}

}  // namespace seqmix::fuzz
