// Fuzz target: softmax attention. Dense attention through every form (seqmix::attention, which
// picks decode for Tq <= 4, attention_flash, attention_step) with causal / window / sinks /
// softcap / ALiBi / sink logits / mask / positions / packed cu_seqlens, against
// reference::attention; paged attention over a fuzzed block table (pages shuffled, shared,
// out of range) against reference::paged_attention; and (one input in twelve) the attention-based
// hybrids RAT, Infini-attention and Mega and topk_attention against their references under the
// non-finite policy.
#include "fuzz.hpp"

#include <functional>

#include "seqmix/attention.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/rat/fast.hpp"

namespace seqmix::fuzz {

namespace {

constexpr double kTol = 2e-4;

// The fast forms round each logit to fp32, an error of up to |s| * 2^-24 that exp turns into a
// relative weight error of that size (the reference works in double): with values like 1e4
// poked into q or k, logits of 1e4 part the forms by ~1e-3 (paged_attention, libFuzzer seed 1).
// The tolerance grows with the largest logit the call can form (dot bound plus mask / sink).
double logit_tolerance(const Tensor<float, 4>& q, const Tensor<float, 4>& k, index_t Dk, double extra = 0.0) {
  const double largest = max_finite_abs(q) * max_finite_abs(k) * std::sqrt(static_cast<double>(std::max<index_t>(Dk, 1))) + extra;
  return kTol + 16.0 * largest * std::numeric_limits<float>::epsilon();
}

void dense(Decoder& in) {
  const Mode mode = decode_mode(in);
  const bool packed = in.one_in(4);
  const Batch bt = decode_batch(in, mode == Mode::batch ? Mode::clean : mode, 3, 80, true);
  index_t B = bt.B, Tq = in.size(0, 70), Tk = in.size(0, 90);
  if (packed) B = bt.B, Tq = Tk = bt.T;
  const index_t Hkv = in.size(1, 2), Hq = Hkv * in.size(1, 3), Dk = in.size(1, 24), Dv = in.size(1, 24);
  AttentionOptions options;
  options.causal = in.flag();
  options.window = in.one_in(3) ? in.size(1, 40) : 0;
  options.sink_tokens = in.one_in(3) ? in.size(0, 4) : 0;
  options.softcap = in.one_in(4) ? 30.f : 0.f;
  const bool with_mask = !packed && in.one_in(4), with_alibi = in.one_in(4), with_sink = in.one_in(4);
  const bool with_pos = !packed && in.one_in(4), with_lse = in.flag();
  Tensor<float, 4> q({B, Tq, Hq, Dk}), k({B, Tk, Hkv, Dk}), v({B, Tk, Hkv, Dv});
  Tensor<float, 3> mask({B, Tq, Tk});
  Tensor<float, 1> alibi({Hq}), sink({Hq});
  Tensor<std::int32_t, 2> pos({B, Tq});
  fill(q, in, mode, -2.f, 2.f), fill(k, in, mode, -2.f, 2.f), fill(v, in, mode, -1.f, 1.f);
  fill(mask, in, mode, -3.f, 1.f), fill(alibi, in, Mode::clean, 0.f, 0.5f), fill(sink, in, mode, -2.f, 2.f);
  for (index_t i = 0; i < pos.numel(); ++i) pos.data()[i] = static_cast<std::int32_t>(in.range(0, Tk + 2));
  for (index_t i = 0; i < mask.numel(); ++i)
    if (mask.data()[i] < -2.5f) mask.data()[i] = -std::numeric_limits<float>::infinity();
  Hostile hostile(in, mode, 9);
  options.window = hostile.scalar(7, options.window, -1);
  options.softcap = static_cast<float>(hostile.scalar(8, static_cast<index_t>(options.softcap), -2));
  AttentionInputs<float> ai;
  ai.q = hostile.in(0, q), ai.k = hostile.in(1, k), ai.v = hostile.in(2, v);
  if (with_mask) ai.mask = hostile.in(3, mask);
  if (with_alibi) ai.alibi_slopes = hostile.in(4, alibi);
  if (with_sink) ai.sink_logits = hostile.in(5, sink);
  if (with_pos) ai.positions = pos.view();
  if (packed) ai.batch = bt.view();
  Tensor<float, 4> o_fast({B, Tq, Hq, Dv}), o_ref({B, Tq, Hq, Dv});
  Tensor<float, 3> l_fast({B, Tq, Hq}), l_ref({B, Tq, Hq});
  o_fast.fill(-3.f), o_ref.fill(-3.f), l_fast.fill(-3.f), l_ref.fill(-3.f);
  const int form = in.byte() % 3;
  const Executor& exec = executor(in);
  Snapshot snap;
  snap.add(o_fast).add(l_fast);
  const AttentionOutputs of{hostile.out(6, o_fast), with_lse ? l_fast.view() : TensorView<float, 3>()};
  const bool fast_ok = accepted("attention", snap, [&] {
    if (form == 0) attention(ai, of, options, exec);
    else if (form == 1) attention_flash(ai, of, options, exec);
    else attention_step(ai, of, options, exec);
  });
  const bool ref_ok = accepted("reference::attention", Snapshot(), [&] {
    reference::attention(ai, {hostile.out(6, o_ref), with_lse ? l_ref.view() : TensorView<float, 3>()}, options);
  });
  if (!verdicts_agree("attention", fast_ok, ref_ok, hostile)) return;
  const double tol = logit_tolerance(q, k, Dk, (with_mask ? max_finite_abs(mask) : 0.0) + (with_sink ? max_finite_abs(sink) : 0.0));
  require_close("attention o", o_fast, o_ref, tol, false, mode);
  if (with_lse) require_close("attention lse", l_fast, l_ref, tol, false, mode);
}

void paged(Decoder& in) {
  const Mode mode = decode_mode(in);
  const index_t N = in.size(1, 4), block = in.pick<index_t>({1, 3, 16, 64}), max_blocks = in.size(1, 6);
  const index_t blocks = in.size(1, 12), Hkv = in.size(1, 2), Hq = Hkv * in.size(1, 3);
  const index_t Dk = in.size(1, 20), Dv = in.size(1, 20), Tq = in.size(1, 4);
  Tensor<float, 4> kp({blocks, block, Hkv, Dk}), vp({blocks, block, Hkv, Dv}), q({N, Tq, Hq, Dk});
  fill(kp, in, mode, -2.f, 2.f), fill(vp, in, mode, -1.f, 1.f), fill(q, in, mode, -2.f, 2.f);
  Tensor<std::int32_t, 2> table({N, max_blocks});
  std::vector<std::int64_t> seqlens(static_cast<std::size_t>(N));
  for (index_t i = 0; i < table.numel(); ++i) table.data()[i] = static_cast<std::int32_t>(in.range(0, blocks - 1));
  for (auto& L : seqlens) L = in.range(Tq, std::max(Tq, max_blocks * block));
  if (mode == Mode::batch) {  // an out-of-range page, or a sequence longer than its pages
    if (in.flag()) table.data()[in.byte() % table.numel()] = static_cast<std::int32_t>(in.flag() ? blocks : -1);
    else seqlens[in.byte() % seqlens.size()] = max_blocks * block + 1;
  }
  PagedAttentionOptions options;
  options.causal = in.flag() || in.flag();
  options.window = in.one_in(3) ? in.size(1, 50) : 0;
  Hostile hostile(in, mode, 4);
  PagedAttentionInputs<float> pi;
  pi.q = hostile.in(0, q), pi.k_pages = hostile.in(1, kp), pi.v_pages = hostile.in(2, vp);
  pi.block_table = table.view(), pi.cache_seqlens = seqlens;
  Tensor<float, 4> o_fast({N, Tq, Hq, Dv}), o_ref({N, Tq, Hq, Dv});
  Tensor<float, 3> l_fast({N, Tq, Hq}), l_ref({N, Tq, Hq});
  o_fast.fill(-3.f), o_ref.fill(-3.f), l_fast.fill(-3.f), l_ref.fill(-3.f);
  Snapshot snap;
  snap.add(o_fast).add(l_fast);
  const Executor& exec = executor(in);
  const bool fast_ok = accepted("paged_attention", snap, [&] {
    paged_attention(pi, {hostile.out(3, o_fast), l_fast.view()}, options, exec);
  });
  const bool ref_ok = accepted("reference::paged_attention", Snapshot(), [&] {
    reference::paged_attention(pi, {hostile.out(3, o_ref), l_ref.view()}, options);
  });
  if (!verdicts_agree("paged_attention", fast_ok, ref_ok, hostile)) return;
  const double tol = logit_tolerance(q, kp, Dk);
  require_close("paged_attention o", o_fast, o_ref, tol, false, mode);
  require_close("paged_attention lse", l_fast, l_ref, tol, false, mode);
}

// RAT, Infini-attention, Mega or topk_attention on one fuzzed call (no state, dense batch):
// refused alike, or equal to the reference within tolerance and finite wherever it is finite.
void hybrid(Decoder& in) {
  Mode mode = decode_mode(in);
  if (mode == Mode::batch) mode = Mode::clean;  // no serving arguments here
  const int op = in.byte() % 4;
  const index_t B = in.size(1, 2), T = in.size(0, 48), Hkv = in.size(1, 2), H = Hkv * in.size(1, 2);
  const index_t D = in.size(1, 12), chunk = in.size(1, 12);
  Tensor<float, 4> q({B, T, H, D}), k({B, T, Hkv, D}), v({B, T, Hkv, D}), g({B, T, Hkv, D});
  fill(q, in, mode, -2.f, 2.f), fill(k, in, mode, -2.f, 2.f), fill(v, in, mode, -1.f, 1.f);
  fill(g, in, mode, -3.f, 0.f);  // RAT's gates: a NaN / +inf one is refused by both forms
  Tensor<float, 1> beta({H});
  fill(beta, in, Mode::clean, -2.f, 2.f);
  Tensor<std::int32_t, 4> indices({B, T, Hkv, 6});  // topk: up to 6 increasing keys <= i, -1 after
  for (index_t r = 0; r < B * T * Hkv; ++r) {
    const index_t i = r / Hkv % T;
    index_t e = 0;
    for (index_t j = 0; j <= i && e < 6; ++j)
      if (in.one_in(3) || j == i) indices.data()[r * 6 + e++] = static_cast<std::int32_t>(j);
    for (; e < 6; ++e) indices.data()[r * 6 + e] = -1;
  }
  Tensor<float, 3> x({B, T, H * D});  // Mega: H heads of D channels, values [B,T,H,D]
  Tensor<float, 4> mv({B, T, H, D});
  Tensor<float, 2> mp({4 * H * D, 2});  // alpha, delta logits, beta, eta: [D,N] each, N = 2
  Tensor<float, 1> affine({4 * H * D});
  fill(x, in, mode, -1.f, 1.f), fill(mv, in, mode, -1.f, 1.f), fill(mp, in, Mode::clean, -2.f, 2.f);
  fill(affine, in, Mode::clean, -1.f, 1.f);
  Hostile hostile(in, mode, 4);  // q (Mega: x), k, v, o
  Tensor<float, 4> o_fast({B, T, H, D}), o_ref({B, T, H, D});
  o_fast.fill(-3.f), o_ref.fill(-3.f);
  Snapshot snap;
  snap.add(o_fast);
  const Executor& exec = executor(in);
  const char* name = "rat";
  std::function<void(Tensor<float, 4>&, bool)> run;  // (o, reference); views made inside, so
                                                     // that only the arguments used count as hit
  if (op == 0) {
    RatOptions ro;
    ro.chunk_size = chunk;
    run = [&, ro](Tensor<float, 4>& o, bool ref) {
      const RatInputs ri{hostile.in(0, q), hostile.in(1, k), hostile.in(2, v), g.view(), {}};
      if (ref) reference::rat(ri, {hostile.out(3, o)}, ro);
      else rat(ri, {hostile.out(3, o)}, ro, nullptr, exec);
    };
  } else if (op == 1) {
    name = "infini_attention";
    InfiniAttentionOptions io;
    io.segment = chunk;
    io.update = in.flag() ? InfiniMemoryUpdate::delta : InfiniMemoryUpdate::linear;
    run = [&, io](Tensor<float, 4>& o, bool ref) {
      const InfiniAttentionInputs ii{hostile.in(0, q), hostile.in(1, k), hostile.in(2, v), beta.view(), {}};
      if (ref) reference::infini_attention(ii, {hostile.out(3, o)}, io);
      else infini_attention(ii, {hostile.out(3, o)}, io, nullptr, exec);
    };
  } else if (op == 2) {
    name = "mega";
    MegaOptions mo;
    mo.chunk_size = chunk;
    run = [&, mo](Tensor<float, 4>& o, bool ref) {
      const index_t C = H * D;
      const auto logits = [&](index_t r) { return ConstView<float, 2>(mp.data() + r * C * 2, {C, 2}); };
      const auto aff = [&](index_t r) { return ConstView<float, 1>(affine.data() + r * C, {C}); };
      MegaInputs mi;
      mi.x = hostile.in(0, x), mi.v = hostile.in(2, mv);
      mi.params = {logits(0), logits(1), logits(2), logits(3), aff(0), aff(1), aff(2), aff(3)};
      MegaOutputs mout;
      mout.o = hostile.out(3, o);
      if (ref) reference::mega(mi, mout, mo);
      else mega(mi, mout, mo, exec);
    };
  } else {
    name = "topk_attention";
    run = [&](Tensor<float, 4>& o, bool ref) {
      TopkAttentionInputs<float> ti;
      ti.q = hostile.in(0, q), ti.k = hostile.in(1, k), ti.v = hostile.in(2, v), ti.indices = indices.view();
      if (ref) reference::topk_attention(ti, {hostile.out(3, o), {}});
      else topk_attention(ti, {hostile.out(3, o), {}}, {}, exec);
    };
  }
  const bool fast_ok = accepted(name, snap, [&] { run(o_fast, false); });
  const bool ref_ok = accepted(std::string("reference::") + name, Snapshot(), [&] { run(o_ref, true); });
  if (!verdicts_agree(name, fast_ok, ref_ok, hostile)) return;
  // A key whose weight underflows in the form's precision takes no part (docs/reliability.md):
  // where the double reference gives an inf / NaN value a weight of 1e-50, fp32 gives it 0 and
  // stays finite. Where logits may part by more than fp32's exp range (about 87; Mega's q and k
  // come out of its EMA), only the reference's finite elements bind.
  const double logit_bound = 2.0 * max_finite_abs(q) * max_finite_abs(k) * std::sqrt(static_cast<double>(D));
  if (op == 2 || !(logit_bound < 80.0))
    for (index_t i = 0; i < o_ref.numel(); ++i)
      if (!std::isfinite(o_ref.data()[i])) o_ref.data()[i] = o_fast.data()[i];
  // Infini-attention's compressive memory is fp32 state: a key or query below about -87.3 has a
  // subnormal sigma = exp(x), held with a few bits (none below -103.3), while the double
  // reference keeps the full ratio M / z. There only the rule (same finiteness) and the bound
  // of a retrieval, a weighted average of values, are checked.
  double tol = logit_tolerance(q, k, D);
  if (op == 1 && (min_finite(q) < -87.3 || min_finite(k) < -87.3)) tol = std::max(tol, 2.0 * max_finite_abs(v) + 1.0);
  require_close(std::string(name) + " o", o_fast, o_ref, tol, NonFinite::same_finiteness, mode);
}

}  // namespace

int fuzz_attention(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  const std::uint8_t form = in.byte();
  if (form % 3 == 0) paged(in);
  else if (form % 12 == 1) hybrid(in);  // (the corpus's inputs kept their meaning)
  else dense(in);
  return 0;
}

}  // namespace seqmix::fuzz
