// Fuzz target: the serving forms of the chunked hybrids, one operator per input chosen by its
// first byte (0 BASED, 1 RAT, 2 Infini-attention, 3 Mega; docs/operators.md sections 8 and 9).
//
// BASED (the hybrid of a taylor2 linear attention and a sliding-window softmax attention): the
// fast prefill (seqmix::based) and the decode step (seqmix::based_step) against reference::based:
// dense batches with or without a state at a position, and the serving forms (packed cu_seqlens,
// state slots in a pool with holes and padding rows, has_initial_state, per-slot positions), with
// hostile extents, window / chunk sizes and perturbed serving arguments. Accepted calls are
// compared under the non-finite policy of docs/reliability.md (NonFinite::same_finiteness) on o
// and on the whole state.
//
// RAT, Infini-attention and Mega: a pool of state slots, each holding the history of its own
// sequence (a fuzzed number of tokens prefilled by the fast form, NaN / inf allowed in them in
// Mode::specials), then one serving call (a prefill, dense or packed, or a decode step) of the
// fast form and of the reference on copies of the pool. Checks: the same verdict; a refusal leaves
// o, the pool and the positions bit for bit as they were; otherwise every running sequence's
// outputs, final state rows and position equal those of the reference run on that sequence alone
// (B = 1, from position 0 over its history, if it reads its slot, then its new tokens), padding
// rows of o and every slot no sequence owns stay bit for bit as they were.
#include "fuzz.hpp"

#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/step.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/step.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/step.hpp"

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

// ---- RAT, Infini-attention and Mega: a pool of histories, one serving call ----

// One sequence of a serving call as the batch arguments describe it, decoded here on their own
// (not through SequenceMap): its batch row and token range, its slot (-1: padding, or no state)
// and whether it continues its slot's history.
struct HsSequence {
  index_t row = 0, begin = 0, len = 0, slot = -1;
  bool runs = true, read = false;
};

// The sequences of a call; false if the serving arguments are invalid (every form must refuse).
bool hs_sequences(const Batch& bt, bool with_state, index_t S, std::vector<HsSequence>& seqs) {
  seqs.clear();
  const bool packed = !bt.cu.empty();
  const index_t N = packed ? static_cast<index_t>(bt.cu.size()) - 1 : bt.B;
  if (packed) {
    if (bt.B != 1 || bt.cu.front() != 0 || bt.cu.back() != bt.T) return false;
    for (std::size_t i = 1; i < bt.cu.size(); ++i)
      if (bt.cu[i] < bt.cu[i - 1]) return false;
  }
  if ((!bt.slots.empty() || !bt.initial.empty()) && !with_state) return false;
  if (!bt.slots.empty()) {
    if (static_cast<index_t>(bt.slots.size()) != N) return false;
    std::vector<bool> seen(static_cast<std::size_t>(S), false);
    for (const std::int64_t s : bt.slots) {
      if (s < -1 || s >= S) return false;
      if (s >= 0 && seen[static_cast<std::size_t>(s)]) return false;
      if (s >= 0) seen[static_cast<std::size_t>(s)] = true;
    }
  } else if (with_state && S != N) {
    return false;
  }
  if (!bt.initial.empty() && static_cast<index_t>(bt.initial.size()) != N) return false;
  for (index_t n = 0; n < N; ++n) {
    HsSequence q;
    q.row = packed ? 0 : n;
    q.begin = packed ? bt.cu[static_cast<std::size_t>(n)] : 0;
    q.len = packed ? bt.cu[static_cast<std::size_t>(n) + 1] - q.begin : bt.T;
    if (with_state) {
      q.slot = bt.slots.empty() ? n : bt.slots[static_cast<std::size_t>(n)];
      q.runs = q.slot >= 0;
      q.read = q.runs && (bt.initial.empty() || bt.initial[static_cast<std::size_t>(n)] != 0);
    }
    seqs.push_back(q);
  }
  return true;
}

// [1, h + len, A, E]: tokens [0, h) of slot `slot` of a history [S, Hmax, A, E], then tokens
// [begin, begin + len) of row `row` of a call's [B, T, A, E].
Tensor<float, 4> hs_concat(const Tensor<float, 4>& hist, index_t slot, index_t h, const Tensor<float, 4>& call,
                           index_t row, index_t begin, index_t len) {
  const index_t w = call.size(2) * call.size(3);
  Tensor<float, 4> r({1, h + len, call.size(2), call.size(3)});
  if (h > 0) std::copy(hist.data() + slot * hist.size(1) * w, hist.data() + (slot * hist.size(1) + h) * w, r.data());
  if (len > 0)
    std::copy(call.data() + (row * call.size(1) + begin) * w, call.data() + (row * call.size(1) + begin + len) * w,
              r.data() + h * w);
  return r;
}

// The same for rank-3 tokens [S, Hmax, D] / [B, T, D] (Mega's x).
Tensor<float, 3> hs_concat(const Tensor<float, 3>& hist, index_t slot, index_t h, const Tensor<float, 3>& call,
                           index_t row, index_t begin, index_t len) {
  const index_t w = call.size(2);
  Tensor<float, 3> r({1, h + len, w});
  if (h > 0) std::copy(hist.data() + slot * hist.size(1) * w, hist.data() + (slot * hist.size(1) + h) * w, r.data());
  if (len > 0)
    std::copy(call.data() + (row * call.size(1) + begin) * w, call.data() + (row * call.size(1) + begin + len) * w,
              r.data() + h * w);
  return r;
}

// A step's one token per row: [B, 1, A, E] as [B, A, E] (and [B, 1, D] as [B, D]).
Tensor<float, 3> hs_token(const Tensor<float, 4>& t) {
  Tensor<float, 3> r({t.size(0), t.size(2), t.size(3)});
  std::copy(t.data(), t.data() + r.numel(), r.data());
  return r;
}
Tensor<float, 2> hs_token(const Tensor<float, 3>& t) {
  Tensor<float, 2> r({t.size(0), t.size(2)});
  std::copy(t.data(), t.data() + r.numel(), r.data());
  return r;
}

// The first `count` elements of slot `slot`'s block of a pool tensor [S, ...], as a flat tensor.
template <class T, std::size_t R>
Tensor<float, 1> hs_prefix(const Tensor<T, R>& t, index_t slot, index_t count) {
  Tensor<float, 1> r({count});
  const index_t block = t.size(0) > 0 ? t.numel() / t.size(0) : 0;
  std::copy(t.data() + slot * block, t.data() + slot * block + count, r.data());
  return r;
}

// Whether slot `slot`'s block of `now` is bit for bit that of `before`.
template <class T, std::size_t R>
bool hs_slot_unchanged(const Tensor<T, R>& now, const Tensor<T, R>& before, index_t slot) {
  const index_t block = now.size(0) > 0 ? now.numel() / now.size(0) : 0;
  return block == 0 || std::memcmp(now.data() + slot * block, before.data() + slot * block,
                                   static_cast<std::size_t>(block) * sizeof(T)) == 0;
}

// The shared skeleton of the three: mode, form, batch, state and history lengths per slot.
struct HsPlan {
  Mode mode = Mode::clean;
  bool step = false, with_state = false, with_positions = false, valid = false, serving = false;
  Batch bt;
  index_t S = 0, common = 0, hmax = 1;
  std::vector<index_t> hist;  // tokens each slot has absorbed (common for all without positions)
  std::vector<HsSequence> seqs;
  std::vector<bool> owned;    // slots a running sequence writes
};

HsPlan hs_plan(Decoder& in, index_t max_T) {
  HsPlan p;
  p.mode = decode_mode(in);
  p.step = in.one_in(3);
  p.bt = decode_batch(in, p.mode, 3, max_T, !p.step);
  const bool serving = !p.bt.cu.empty() || !p.bt.slots.empty() || !p.bt.initial.empty();
  p.with_state = p.step || serving || in.flag();
  p.with_positions = p.with_state && (serving || in.one_in(3));
  p.S = p.with_state ? p.bt.S : 0;
  p.common = in.size(0, 30);
  for (index_t s = 0; s < p.S; ++s) p.hist.push_back(p.with_positions ? in.size(0, 30) : p.common);
  for (const index_t h : p.hist) p.hmax = std::max(p.hmax, h);
  p.valid = hs_sequences(p.bt, p.with_state, p.S, p.seqs);
  // A serving call needs state.positions, and an empty pool's positions view counts as absent
  // (an empty view is an absent optional argument): refused, except where positions are an
  // optional output (Mega's prefill, which clears this flag).
  p.serving = serving;
  if (serving && p.S == 0) p.valid = false;
  p.owned.assign(static_cast<std::size_t>(p.S), false);
  for (const HsSequence& q : p.seqs)
    if (q.slot >= 0) p.owned[static_cast<std::size_t>(q.slot)] = true;
  return p;
}

// The verdicts of a serving call: the fast form and the reference agree (or, where there is no
// reference of the form, the fast form refuses exactly the invalid calls); an accepted call has
// valid serving arguments; a valid clean call is accepted. Returns whether to compare outputs.
bool hs_verdicts(const std::string& op, const HsPlan& p, bool fast_ok, bool ref_ok, const Hostile& hostile) {
  if (std::getenv("SEQMIX_FUZZ_TRACE"))
    std::fprintf(stderr, "verdict: %s %s %s%s\n", op.c_str(), mode_name(p.mode), fast_ok ? "accepted" : "refused: ",
                 fast_ok ? "" : last_refusal().c_str());
  const std::string refusal = last_refusal();
  if (!verdicts_agree(op, fast_ok, ref_ok, hostile, !p.step)) {
    if (p.mode == Mode::clean && p.valid && !hostile.hit()) fail(op + " refused a valid call: " + refusal);
    return false;
  }
  require(p.valid, op + " accepted invalid serving arguments:" + p.bt.describe());
  return true;
}

// The per-slot positions after an accepted call (positions[slot] = the tokens it has absorbed)
// and every slot no running sequence owns left bit for bit as it was.
void hs_check_positions(const std::string& op, const HsPlan& p, const Tensor<std::int64_t, 1>& pos,
                        const Tensor<std::int64_t, 1>& before, bool restart) {
  if (!p.with_positions) return;
  for (index_t s = 0; s < p.S; ++s)
    if (!p.owned[static_cast<std::size_t>(s)])
      require(pos.data()[s] == before.data()[s], op + ": positions[" + std::to_string(s) + "] of a slot no sequence owns changed");
  for (const HsSequence& q : p.seqs) {
    if (q.slot < 0) continue;
    const index_t h = q.read && !restart ? p.hist[static_cast<std::size_t>(q.slot)] : 0;
    require(pos.data()[q.slot] == h + q.len, op + ": positions[" + std::to_string(q.slot) + "] is " +
                                                 std::to_string(pos.data()[q.slot]) + ", expected " + std::to_string(h + q.len));
  }
}

template <class... Pools>
void hs_check_free_slots(const std::string& op, const HsPlan& p, const std::pair<const Pools&, const Pools&>&... pools) {
  for (index_t s = 0; s < p.S; ++s)
    if (!p.owned[static_cast<std::size_t>(s)])
      require((hs_slot_unchanged(pools.first, pools.second, s) && ...),
              op + ": state slot " + std::to_string(s) + ", which no sequence owns, changed");
}

// Where logits may part by more than fp32's exp range, a key whose weight underflows takes no
// part (docs/reliability.md): only the reference's finite elements bind.
template <std::size_t R>
void hs_finite_only(Tensor<float, R>& ref, const Tensor<float, R>& out) {
  for (index_t i = 0; i < ref.numel(); ++i)
    if (!std::isfinite(ref.data()[i])) ref.data()[i] = out.data()[i];
}

void rat_serving(Decoder& in) {
  HsPlan p = hs_plan(in, 40);
  const Batch& bt = p.bt;
  const index_t Hkv = in.size(1, 2), H = Hkv * in.size(1, 2), D = in.size(1, 12);
  RatOptions options;
  options.chunk_size = in.size(1, 12);
  if (in.one_in(4)) options.scale = static_cast<float>(in.range(1, 40)) / 16.f;
  const index_t L = options.chunk_size, S = p.S, Hm = p.hmax;
  // The summary capacity: sometimes one short of the longest sequence's need (refused).
  const index_t C = std::max<index_t>(0, (Hm + bt.T) / L - (in.one_in(8) ? 1 : 0));
  for (const HsSequence& sq : p.seqs)
    if (sq.slot >= 0 && ((sq.read ? p.hist[static_cast<std::size_t>(sq.slot)] : 0) + sq.len) / L > C) p.valid = false;
  // Histories (the g of a history is clean: a refused gate would leave the slot unprefilled).
  Tensor<float, 4> hq({S, Hm, H, D}), hk({S, Hm, Hkv, D}), hv({S, Hm, Hkv, D}), hg({S, Hm, Hkv, D});
  fill(hq, in, p.mode, -2.f, 2.f), fill(hk, in, p.mode, -2.f, 2.f), fill(hv, in, p.mode, -1.f, 1.f);
  fill(hg, in, Mode::clean, -3.f, 0.f);
  // The pool: stale values everywhere, then each slot's history prefilled by the fast form.
  Tensor<float, 4> ck({S, C, Hkv, D}), cv({S, C, Hkv, D});
  Tensor<float, 3> kr({S, Hkv, D}), vr({S, Hkv, D});
  Tensor<std::int64_t, 1> pos({S});
  fill(ck, in, Mode::clean, -5.f, 5.f), fill(cv, in, Mode::clean, -5.f, 5.f);
  fill(kr, in, Mode::clean, -5.f, 5.f), fill(vr, in, Mode::clean, -5.f, 5.f);
  for (index_t s = 0; s < S; ++s) {
    const index_t h = p.hist[static_cast<std::size_t>(s)];
    pos.data()[s] = h;
    if (h == 0 || h / L > C) continue;  // (a slot past the capacity keeps stale rows: refused below)
    RatState one{ck.view().slice(0, s, 1), cv.view().slice(0, s, 1), kr.view().slice(0, s, 1), vr.view().slice(0, s, 1), 0, {}};
    Tensor<float, 4> o1({1, h, H, D});
    const auto hist = [&](const Tensor<float, 4>& t) { return t.view().slice(0, s, 1).slice(1, 0, h); };
    rat(RatInputs{hist(hq), hist(hk), hist(hv), hist(hg), {}}, {o1.view()}, options, &one);
  }
  const Tensor<float, 4> ck0 = ck, cv0 = cv;
  const Tensor<float, 3> kr0 = kr, vr0 = vr;
  const Tensor<std::int64_t, 1> pos0 = pos;
  Tensor<float, 4> rck = ck, rcv = cv;
  Tensor<float, 3> rkr = kr, rvr = vr;
  Tensor<std::int64_t, 1> rpos = pos;

  Tensor<float, 4> q({bt.B, bt.T, H, D}), k({bt.B, bt.T, Hkv, D}), v({bt.B, bt.T, Hkv, D}), g({bt.B, bt.T, Hkv, D});
  fill(q, in, p.mode, -2.f, 2.f), fill(k, in, p.mode, -2.f, 2.f), fill(v, in, p.mode, -1.f, 1.f);
  fill(g, in, p.mode, -3.f, 0.f);  // a NaN or positive gate is refused by every form
  // Arguments: q 0, k 1, v 2, g 3, o 4, state.k_run 5, chunk_size 6.
  Hostile hostile(in, p.mode, 7);
  options.chunk_size = hostile.scalar(6, options.chunk_size, in.flag() ? 0 : -3);
  const Executor& exec = executor(in);
  const auto state_of = [&](Tensor<float, 4>& c_k, Tensor<float, 4>& c_v, Tensor<float, 3>& k_run, Tensor<float, 3>& v_run,
                            Tensor<std::int64_t, 1>& positions) {
    // (the hostile extent only where the state is passed: an unused argument is no hit)
    return RatState{c_k.view(), c_v.view(), p.with_state ? hostile.out(5, k_run) : k_run.view(), v_run.view(), p.common,
                    p.with_positions ? positions.view() : TensorView<std::int64_t, 1>()};
  };
  RatState sf = state_of(ck, cv, kr, vr, pos), sr = state_of(rck, rcv, rkr, rvr, rpos);
  Tensor<float, 4> o_fast({bt.B, bt.T, H, D}), o_ref({bt.B, bt.T, H, D});
  o_fast.fill(-3.f), o_ref.fill(-3.f);
  const Tensor<float, 4> o0 = o_fast;
  Snapshot snap;
  snap.add(o_fast).add(ck).add(cv).add(kr).add(vr).add(pos);
  const char* name = p.step ? "rat_step" : "rat";
  bool fast_ok, ref_ok;
  if (p.step) {
    const Tensor<float, 3> q1 = hs_token(q), k1 = hs_token(k), v1 = hs_token(v), g1 = hs_token(g);
    Tensor<float, 3> o1({bt.B, H, D});
    o1.fill(-3.f);
    Snapshot snap1 = snap;
    snap1.add(o1);
    const RatStepInputs si{hostile.in(0, q1), hostile.in(1, k1), hostile.in(2, v1), hostile.in(3, g1), bt.view()};
    fast_ok = accepted(name, snap1, [&] { rat_step(si, {hostile.out(4, o1)}, sf, options, exec); });
    std::copy(o1.data(), o1.data() + o1.numel(), o_fast.data());
    ref_ok = accepted("reference::rat", Snapshot(), [&] {
      reference::rat({q.view(), k.view(), v.view(), g.view(), bt.view()}, {o_ref.view()}, options, &sr);
    });
  } else {
    const RatInputs ri{hostile.in(0, q), hostile.in(1, k), hostile.in(2, v), hostile.in(3, g), bt.view()};
    fast_ok = accepted(name, snap, [&] { rat(ri, {hostile.out(4, o_fast)}, options, p.with_state ? &sf : nullptr, exec); });
    ref_ok = accepted("reference::rat", Snapshot(),
                      [&] { reference::rat(ri, {hostile.out(4, o_ref)}, options, p.with_state ? &sr : nullptr); });
  }
  if (!hs_verdicts(name, p, fast_ok, ref_ok, hostile)) return;
  if (p.with_state && !p.with_positions) require(sf.position == p.common + bt.T, std::string(name) + ": state.position");
  hs_check_positions(name, p, pos, pos0, false);
  hs_check_free_slots(name, p, std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(ck, ck0),
                      std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(cv, cv0));
  hs_check_free_slots(name, p, std::pair<const Tensor<float, 3>&, const Tensor<float, 3>&>(kr, kr0),
                      std::pair<const Tensor<float, 3>&, const Tensor<float, 3>&>(vr, vr0));

  const double scale = options.scale ? static_cast<double>(*options.scale) : 1.0 / std::sqrt(double(D));
  const double logit = scale * std::max(max_finite_abs(q), max_finite_abs(hq)) *
                       std::max(max_finite_abs(k), max_finite_abs(hk)) * static_cast<double>(D);
  const double tol = kBasedTol + 16.0 * logit * std::numeric_limits<float>::epsilon();
  // Each running sequence alone through the reference, from position 0 over its history.
  Tensor<float, 4> o_exp = o0;
  for (const HsSequence& sq : p.seqs) {
    if (!sq.runs) continue;
    const index_t h = sq.read ? p.hist[static_cast<std::size_t>(sq.slot)] : 0, n = h + sq.len;
    const Tensor<float, 4> q1 = hs_concat(hq, sq.slot, h, q, sq.row, sq.begin, sq.len);
    const Tensor<float, 4> k1 = hs_concat(hk, sq.slot, h, k, sq.row, sq.begin, sq.len);
    const Tensor<float, 4> v1 = hs_concat(hv, sq.slot, h, v, sq.row, sq.begin, sq.len);
    const Tensor<float, 4> g1 = hs_concat(hg, sq.slot, h, g, sq.row, sq.begin, sq.len);
    Tensor<float, 4> o1({1, n, H, D});
    Tensor<float, 4> ck1({1, C, Hkv, D}), cv1({1, C, Hkv, D});
    Tensor<float, 3> kr1({1, Hkv, D}), vr1({1, Hkv, D});
    if (sq.slot >= 0) {  // the slot's rows as they were (a fresh start reads none of them)
      std::copy(ck0.data() + sq.slot * ck1.numel(), ck0.data() + (sq.slot + 1) * ck1.numel(), ck1.data());
      std::copy(cv0.data() + sq.slot * cv1.numel(), cv0.data() + (sq.slot + 1) * cv1.numel(), cv1.data());
      std::copy(kr0.data() + sq.slot * kr1.numel(), kr0.data() + (sq.slot + 1) * kr1.numel(), kr1.data());
      std::copy(vr0.data() + sq.slot * vr1.numel(), vr0.data() + (sq.slot + 1) * vr1.numel(), vr1.data());
    }
    RatState one{ck1.view(), cv1.view(), kr1.view(), vr1.view(), 0, {}};
    reference::rat({q1.view(), k1.view(), v1.view(), g1.view(), {}}, {o1.view()}, options, sq.slot >= 0 ? &one : nullptr);
    const index_t w = H * D;
    std::copy(o1.data() + h * w, o1.data() + n * w, o_exp.data() + (sq.row * bt.T + sq.begin) * w);
    if (sq.slot < 0) continue;
    const std::string at = std::string(name) + " slot " + std::to_string(sq.slot);
    const index_t summaries = n / L * Hkv * D;
    require_close(at + " state.chunk_k", hs_prefix(ck, sq.slot, summaries), hs_prefix(ck1, 0, summaries), tol,
                  NonFinite::same_finiteness, p.mode);
    require_close(at + " state.chunk_v", hs_prefix(cv, sq.slot, summaries), hs_prefix(cv1, 0, summaries), tol,
                  NonFinite::same_finiteness, p.mode);
    if (n > 0) {
      require_close(at + " state.k_run", hs_prefix(kr, sq.slot, Hkv * D), hs_prefix(kr1, 0, Hkv * D), tol,
                    NonFinite::same_finiteness, p.mode);
      require_close(at + " state.v_run", hs_prefix(vr, sq.slot, Hkv * D), hs_prefix(vr1, 0, Hkv * D), tol,
                    NonFinite::same_finiteness, p.mode);
    }
  }
  if (!(2.0 * logit < 80.0)) hs_finite_only(o_exp, o_fast);
  require_close(std::string(name) + " o", o_fast, o_exp, tol, NonFinite::same_finiteness, p.mode);
}

void infini_serving(Decoder& in) {
  HsPlan p = hs_plan(in, 40);
  const Batch& bt = p.bt;
  const index_t Hkv = in.size(1, 2), H = Hkv * in.size(1, 2), K = in.size(1, 12), V = in.size(1, 12);
  InfiniAttentionOptions options;
  options.segment = in.size(1, 12);
  options.update = in.flag() ? InfiniMemoryUpdate::delta : InfiniMemoryUpdate::linear;
  if (in.one_in(4)) options.scale = static_cast<float>(in.range(1, 40)) / 16.f;
  const index_t Sg = options.segment, S = p.S, Hm = p.hmax;
  Tensor<float, 4> hq({S, Hm, H, K}), hk({S, Hm, Hkv, K}), hv({S, Hm, Hkv, V});
  fill(hq, in, p.mode, -2.f, 2.f), fill(hk, in, p.mode, -2.f, 2.f), fill(hv, in, p.mode, -1.f, 1.f);
  Tensor<float, 1> beta({H});
  fill(beta, in, Mode::clean, -2.f, 2.f);
  // The pool: empty memories, stale segment buffers, then each slot's history prefilled.
  Tensor<float, 4> mem({S, Hkv, K, V}), sk({S, Sg, Hkv, K}), sv({S, Sg, Hkv, V});
  Tensor<float, 3> z({S, Hkv, K});
  Tensor<std::int64_t, 1> pos({S});
  fill(sk, in, Mode::clean, -5.f, 5.f), fill(sv, in, Mode::clean, -5.f, 5.f);
  const auto row_state = [&](index_t s) {
    return InfiniAttentionState{mem.view().slice(0, s, 1), z.view().slice(0, s, 1), sk.view().slice(0, s, 1),
                                sv.view().slice(0, s, 1), 0, {}};
  };
  for (index_t s = 0; s < S; ++s) {
    const index_t h = p.hist[static_cast<std::size_t>(s)];
    pos.data()[s] = h;
    if (h == 0) continue;
    InfiniAttentionState one = row_state(s);
    Tensor<float, 4> o1({1, h, H, V});
    const auto hist = [&](const Tensor<float, 4>& t) { return t.view().slice(0, s, 1).slice(1, 0, h); };
    infini_attention({hist(hq), hist(hk), hist(hv), beta.view(), {}}, {o1.view()}, options, &one);
  }
  const Tensor<float, 4> mem0 = mem, sk0 = sk, sv0 = sv;
  const Tensor<float, 3> z0 = z;
  const Tensor<std::int64_t, 1> pos0 = pos;
  Tensor<float, 4> rmem = mem, rsk = sk, rsv = sv;
  Tensor<float, 3> rz = z;
  Tensor<std::int64_t, 1> rpos = pos;

  Tensor<float, 4> q({bt.B, bt.T, H, K}), k({bt.B, bt.T, Hkv, K}), v({bt.B, bt.T, Hkv, V});
  fill(q, in, p.mode, -2.f, 2.f), fill(k, in, p.mode, -2.f, 2.f), fill(v, in, p.mode, -1.f, 1.f);
  // Arguments: q 0, k 1, v 2, beta 3, o 4, state.memory 5, segment 6.
  Hostile hostile(in, p.mode, 7);
  options.segment = hostile.scalar(6, options.segment, in.flag() ? 0 : -2);
  const Executor& exec = executor(in);
  const auto state_of = [&](Tensor<float, 4>& m, Tensor<float, 3>& zz, Tensor<float, 4>& seg_k, Tensor<float, 4>& seg_v,
                            Tensor<std::int64_t, 1>& positions) {
    return InfiniAttentionState{p.with_state ? hostile.out(5, m) : m.view(), zz.view(), seg_k.view(), seg_v.view(), p.common,
                                p.with_positions ? positions.view() : TensorView<std::int64_t, 1>()};
  };
  InfiniAttentionState sf = state_of(mem, z, sk, sv, pos), sr = state_of(rmem, rz, rsk, rsv, rpos);
  Tensor<float, 4> o_fast({bt.B, bt.T, H, V}), o_ref({bt.B, bt.T, H, V});
  o_fast.fill(-3.f), o_ref.fill(-3.f);
  const Tensor<float, 4> o0 = o_fast;
  Snapshot snap;
  snap.add(o_fast).add(mem).add(z).add(sk).add(sv).add(pos);
  const char* name = p.step ? "infini_attention_step" : "infini_attention";
  bool fast_ok, ref_ok;
  if (p.step) {
    const Tensor<float, 3> q1 = hs_token(q), k1 = hs_token(k), v1 = hs_token(v);
    Tensor<float, 3> o1({bt.B, H, V});
    o1.fill(-3.f);
    Snapshot snap1 = snap;
    snap1.add(o1);
    const InfiniAttentionStepInputs si{hostile.in(0, q1), hostile.in(1, k1), hostile.in(2, v1), hostile.in(3, beta),
                                       bt.view()};
    fast_ok = accepted(name, snap1, [&] { infini_attention_step(si, {hostile.out(4, o1)}, sf, options, exec); });
    std::copy(o1.data(), o1.data() + o1.numel(), o_fast.data());
    ref_ok = accepted("reference::infini_attention", Snapshot(), [&] {
      reference::infini_attention({q.view(), k.view(), v.view(), beta.view(), bt.view()}, {o_ref.view()}, options, &sr);
    });
  } else {
    const InfiniAttentionInputs ii{hostile.in(0, q), hostile.in(1, k), hostile.in(2, v), hostile.in(3, beta), bt.view()};
    fast_ok = accepted(name, snap, [&] {
      infini_attention(ii, {hostile.out(4, o_fast)}, options, p.with_state ? &sf : nullptr, exec);
    });
    ref_ok = accepted("reference::infini_attention", Snapshot(), [&] {
      reference::infini_attention(ii, {hostile.out(4, o_ref)}, options, p.with_state ? &sr : nullptr);
    });
  }
  if (!hs_verdicts(name, p, fast_ok, ref_ok, hostile)) return;
  if (p.with_state && !p.with_positions) require(sf.position == p.common + bt.T, std::string(name) + ": state.position");
  hs_check_positions(name, p, pos, pos0, false);
  hs_check_free_slots(name, p, std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(mem, mem0),
                      std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(sk, sk0),
                      std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(sv, sv0));
  hs_check_free_slots(name, p, std::pair<const Tensor<float, 3>&, const Tensor<float, 3>&>(z, z0));

  // The tolerances of the attention target's Infini-attention case (target_attention.cpp).
  const double mq = std::max(max_finite_abs(q), max_finite_abs(hq)), mk = std::max(max_finite_abs(k), max_finite_abs(hk));
  const double logit = 2.0 * mq * mk * std::sqrt(static_cast<double>(K));
  double tol = kBasedTol + 16.0 * logit * std::numeric_limits<float>::epsilon();
  const bool subnormal_sigma = std::min(min_finite(q), min_finite(hq)) < -87.3 || std::min(min_finite(k), min_finite(hk)) < -87.3;
  if (subnormal_sigma) tol = std::max(tol, 2.0 * std::max(max_finite_abs(v), max_finite_abs(hv)) + 1.0);
  Tensor<float, 4> o_exp = o0;
  for (const HsSequence& sq : p.seqs) {
    if (!sq.runs) continue;
    const index_t h = sq.read ? p.hist[static_cast<std::size_t>(sq.slot)] : 0, n = h + sq.len;
    const Tensor<float, 4> q1 = hs_concat(hq, sq.slot, h, q, sq.row, sq.begin, sq.len);
    const Tensor<float, 4> k1 = hs_concat(hk, sq.slot, h, k, sq.row, sq.begin, sq.len);
    const Tensor<float, 4> v1 = hs_concat(hv, sq.slot, h, v, sq.row, sq.begin, sq.len);
    Tensor<float, 4> o1({1, n, H, V});
    Tensor<float, 4> m1({1, Hkv, K, V}), sk1({1, Sg, Hkv, K}), sv1({1, Sg, Hkv, V});
    Tensor<float, 3> z1({1, Hkv, K});
    if (sq.slot >= 0) {  // stale segment rows (not read at position 0), an empty memory
      std::copy(sk0.data() + sq.slot * sk1.numel(), sk0.data() + (sq.slot + 1) * sk1.numel(), sk1.data());
      std::copy(sv0.data() + sq.slot * sv1.numel(), sv0.data() + (sq.slot + 1) * sv1.numel(), sv1.data());
    }
    InfiniAttentionState one{m1.view(), z1.view(), sk1.view(), sv1.view(), 0, {}};
    reference::infini_attention({q1.view(), k1.view(), v1.view(), beta.view(), {}}, {o1.view()}, options,
                                sq.slot >= 0 ? &one : nullptr);
    const index_t w = H * V;
    std::copy(o1.data() + h * w, o1.data() + n * w, o_exp.data() + (sq.row * bt.T + sq.begin) * w);
    if (sq.slot < 0) continue;
    const std::string at = std::string(name) + " slot " + std::to_string(sq.slot);
    // The memory is checked where no sigma is subnormal (the fp32 memory keeps a few bits there).
    if (!subnormal_sigma) {
      require_close(at + " state.memory", hs_prefix(mem, sq.slot, m1.numel()), hs_prefix(m1, 0, m1.numel()), tol,
                    NonFinite::same_finiteness, p.mode);
      require_close(at + " state.normalizer", hs_prefix(z, sq.slot, z1.numel()), hs_prefix(z1, 0, z1.numel()), tol,
                    NonFinite::same_finiteness, p.mode);
    }
    // The unfinished segment's rows hold copies of the tokens: bit for bit.
    require_close(at + " state.segment_k", hs_prefix(sk, sq.slot, n % Sg * Hkv * K), hs_prefix(sk1, 0, n % Sg * Hkv * K),
                  0.0, NonFinite::exact, p.mode);
    require_close(at + " state.segment_v", hs_prefix(sv, sq.slot, n % Sg * Hkv * V), hs_prefix(sv1, 0, n % Sg * Hkv * V),
                  0.0, NonFinite::exact, p.mode);
  }
  if (!(logit < 80.0)) hs_finite_only(o_exp, o_fast);
  require_close(std::string(name) + " o", o_fast, o_exp, tol, NonFinite::same_finiteness, p.mode);
}

void mega_serving(Decoder& in) {
  HsPlan p = hs_plan(in, 40);
  const Batch& bt = p.bt;
  const index_t H = in.size(1, 3), Dk = in.size(1, 8), D = H * Dk, Dv = in.size(1, 10), N = in.size(1, 4);
  MegaOptions options;
  options.chunk_size = in.size(1, 12);
  if (in.one_in(4)) options.scale = static_cast<float>(in.range(1, 40)) / 16.f;
  const index_t c = options.chunk_size, S = p.S, Hm = p.hmax;
  // Parameters (clean): alpha, delta logits, beta, eta [D,N]; q / k scale and bias [D].
  Tensor<float, 2> pa({D, N}), pd({D, N}), pb({D, N}), pe({D, N});
  Tensor<float, 1> qs({D}), qb({D}), ks({D}), kb({D});
  fill(pa, in, Mode::clean, -3.f, 3.f), fill(pd, in, Mode::clean, -3.f, 3.f), fill(pb, in, Mode::clean, -1.f, 1.f);
  fill(pe, in, Mode::clean, -1.f, 1.f), fill(qs, in, Mode::clean, -2.f, 2.f), fill(qb, in, Mode::clean, -1.f, 1.f);
  fill(ks, in, Mode::clean, -2.f, 2.f), fill(kb, in, Mode::clean, -1.f, 1.f);
  const MegaParams params{pa.view(), pd.view(), pb.view(), pe.view(), qs.view(), qb.view(), ks.view(), kb.view()};
  Tensor<float, 3> hx({S, Hm, D});
  Tensor<float, 4> hv({S, Hm, H, Dv});
  fill(hx, in, p.mode, -1.f, 1.f), fill(hv, in, p.mode, -1.f, 1.f);
  // The pool: zero EMA states, stale caches, then each slot's history prefilled.
  Tensor<float, 3> ema({S, D, N});
  Tensor<float, 4> kc({S, c, H, Dk}), vc({S, c, H, Dv});
  Tensor<std::int64_t, 1> pos({S});
  fill(kc, in, Mode::clean, -5.f, 5.f), fill(vc, in, Mode::clean, -5.f, 5.f);
  for (index_t s = 0; s < S; ++s) {
    const index_t h = p.hist[static_cast<std::size_t>(s)];
    pos.data()[s] = h;
    if (h == 0) continue;
    Tensor<float, 4> o1({1, h, H, Dv});
    const MegaInputs mi{hx.view().slice(0, s, 1).slice(1, 0, h), hv.view().slice(0, s, 1).slice(1, 0, h), params, {}, {}};
    mega(mi, MegaOutputs{o1.view(), {}, ema.view().slice(0, s, 1), kc.view().slice(0, s, 1), vc.view().slice(0, s, 1), {}},
         options);
  }
  const Tensor<float, 3> ema0 = ema;
  const Tensor<float, 4> kc0 = kc, vc0 = vc;
  const Tensor<std::int64_t, 1> pos0 = pos;
  Tensor<float, 3> rema = ema;
  Tensor<float, 4> rkc = kc, rvc = vc;
  Tensor<std::int64_t, 1> rpos = pos;

  Tensor<float, 3> x({bt.B, bt.T, D});
  Tensor<float, 4> v({bt.B, bt.T, H, Dv});
  fill(x, in, p.mode, -1.f, 1.f), fill(v, in, p.mode, -1.f, 1.f);
  // Arguments: x 0, v 1, o 2, the EMA state pool 3, chunk_size 4.
  Hostile hostile(in, p.mode, 5);
  options.chunk_size = hostile.scalar(4, options.chunk_size, in.flag() ? 0 : -3);
  const Executor& exec = executor(in);
  const auto positions_of = [&](Tensor<std::int64_t, 1>& t) {
    return p.with_positions ? t.view() : TensorView<std::int64_t, 1>();
  };
  Tensor<float, 4> o_fast({bt.B, bt.T, H, Dv}), o_ref({bt.B, bt.T, H, Dv});
  o_fast.fill(-3.f), o_ref.fill(-3.f);
  const Tensor<float, 4> o0 = o_fast;
  Snapshot snap;
  snap.add(o_fast).add(ema).add(kc).add(vc).add(pos);
  const char* name = p.step ? "mega_step" : "mega";
  if (!p.step && p.serving && p.S == 0) p.valid = hs_sequences(bt, p.with_state, p.S, p.seqs);
  bool fast_ok, ref_ok;
  if (p.step) {
    // No reference step: the fast step refuses exactly the invalid calls, and is checked against
    // the reference prefill of each row's history and token below.
    const Tensor<float, 2> x1 = hs_token(x);
    const Tensor<float, 3> v1 = hs_token(v);
    Tensor<float, 3> o1({bt.B, H, Dv});
    o1.fill(-3.f);
    Snapshot snap1 = snap;
    snap1.add(o1);
    const MegaStepInputs si{hostile.in(0, x1), hostile.in(1, v1), params, p.common, bt.view()};
    fast_ok = accepted(name, snap1, [&] {
      mega_step(si, hostile.out(2, o1), MegaDecodeState{hostile.out(3, ema), kc.view(), vc.view(), positions_of(pos)},
                options, exec);
    });
    std::copy(o1.data(), o1.data() + o1.numel(), o_fast.data());
    ref_ok = p.valid && !hostile.hit();
    if (!ref_ok) last_refusal() = "(the call is invalid)";
    require(fast_ok == ref_ok || hostile.hit(),
            std::string(name) + (fast_ok ? " accepted an invalid call:" + bt.describe() : " refused a valid call: " + last_refusal()));
  } else {
    const auto run = [&](Tensor<float, 4>& o, Tensor<float, 3>& e, Tensor<float, 4>& k_c, Tensor<float, 4>& v_c,
                         Tensor<std::int64_t, 1>& positions, bool ref) {
      MegaInputs mi{hostile.in(0, x), hostile.in(1, v), params, {}, bt.view()};
      MegaOutputs mo{hostile.out(2, o), {}, {}, {}, {}, positions_of(positions)};
      if (p.with_state) {
        const TensorView<float, 3> pool = hostile.out(3, e);
        mi.initial_state = pool.as_const();
        mo.final_state = pool, mo.k_cache = k_c.view(), mo.v_cache = v_c.view();
      }
      if (ref) reference::mega(mi, mo, options);
      else mega(mi, mo, options, exec);
    };
    fast_ok = accepted(name, snap, [&] { run(o_fast, ema, kc, vc, pos, false); });
    ref_ok = accepted("reference::mega", Snapshot(), [&] { run(o_ref, rema, rkc, rvc, rpos, true); });
  }
  if (!hs_verdicts(name, p, fast_ok, ref_ok, hostile)) return;
  // A prefill starts each sequence's chunk grid at its first token (its slot's EMA state is its
  // only history); a step continues the slot's history.
  hs_check_positions(name, p, pos, pos0, !p.step);
  hs_check_free_slots(name, p, std::pair<const Tensor<float, 3>&, const Tensor<float, 3>&>(ema, ema0));
  hs_check_free_slots(name, p, std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(kc, kc0),
                      std::pair<const Tensor<float, 4>&, const Tensor<float, 4>&>(vc, vc0));

  Tensor<float, 4> o_exp = o0;
  double logit = 0.0;
  std::vector<std::pair<std::string, std::pair<Tensor<float, 1>, Tensor<float, 1>>>> states;
  for (const HsSequence& sq : p.seqs) {
    if (!sq.runs) continue;
    const index_t h = p.step && sq.read ? p.hist[static_cast<std::size_t>(sq.slot)] : 0, n = h + sq.len;
    const Tensor<float, 3> x1 = hs_concat(hx, sq.slot, h, x, sq.row, sq.begin, sq.len);
    const Tensor<float, 4> v1 = hs_concat(hv, sq.slot, h, v, sq.row, sq.begin, sq.len);
    Tensor<float, 4> o1({1, n, H, Dv}), kc1({1, c, H, Dk}), vc1({1, c, H, Dv});
    Tensor<float, 3> y1({1, n, D}), init1({1, D, N}), fin1({1, D, N});
    const bool from_pool = !p.step && sq.read;  // a prefill continues the slot's EMA state
    if (from_pool) std::copy(ema0.data() + sq.slot * init1.numel(), ema0.data() + (sq.slot + 1) * init1.numel(), init1.data());
    reference::mega(MegaInputs{x1.view(), v1.view(), params, from_pool ? init1.cview() : ConstView<float, 3>(), {}},
                    MegaOutputs{o1.view(), y1.view(), fin1.view(), kc1.view(), vc1.view(), {}}, options);
    const double my = max_finite_abs(y1);
    const double mq = max_finite_abs(qs) * my + max_finite_abs(qb), mk = max_finite_abs(ks) * my + max_finite_abs(kb);
    const double sc = options.scale ? static_cast<double>(*options.scale) : 1.0 / std::sqrt(double(Dk));
    logit = std::max(logit, sc * mq * mk * static_cast<double>(Dk));
    const index_t w = H * Dv;
    std::copy(o1.data() + h * w, o1.data() + n * w, o_exp.data() + (sq.row * bt.T + sq.begin) * w);
    if (sq.slot < 0) continue;
    const std::string at = std::string(name) + " slot " + std::to_string(sq.slot);
    states.push_back({at + " ema state", {hs_prefix(ema, sq.slot, fin1.numel()), hs_prefix(fin1, 0, fin1.numel())}});
    const index_t rows = n % c;
    states.push_back({at + " k_cache", {hs_prefix(kc, sq.slot, rows * H * Dk), hs_prefix(kc1, 0, rows * H * Dk)}});
    // The value cache holds copies of the tokens: bit for bit below.
    states.push_back({at + " v_cache", {hs_prefix(vc, sq.slot, rows * H * Dv), hs_prefix(vc1, 0, rows * H * Dv)}});
  }
  const double tol = kBasedTol + 16.0 * logit * std::numeric_limits<float>::epsilon();
  for (auto& [what, pair] : states) {
    const bool copies = what.size() >= 7 && what.compare(what.size() - 7, 7, "v_cache") == 0;
    require_close(what, pair.first, pair.second, copies ? 0.0 : tol, copies ? NonFinite::exact : NonFinite::same_finiteness,
                  p.mode);
  }
  if (!(2.0 * logit < 80.0)) hs_finite_only(o_exp, o_fast);
  require_close(std::string(name) + " o", o_fast, o_exp, tol, NonFinite::same_finiteness, p.mode);
}

}  // namespace

int fuzz_hybrid_serving(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  switch (in.byte() % 4) {
    case 0: based_call(in); break;
    case 1: rat_serving(in); break;
    case 2: infini_serving(in); break;
    default: mega_serving(in); break;
  }
  return 0;
}

}  // namespace seqmix::fuzz
