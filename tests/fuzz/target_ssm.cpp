// Fuzz target: the selective state-space family. causal_conv1d, selective_scan (Mamba-1) and ssd
// (Mamba-2), prefill against the reference with packed sequences / state slots /
// has_initial_state, and each decode step against the reference prefill of one token (the
// step's state pool updated in place by both).
#include "fuzz.hpp"

#include "seqmix/ssm.hpp"

namespace seqmix::fuzz {

namespace {

constexpr double kTol = 2e-4;

// The state pool and outputs of one form: the fast form's and the reference's copies.
template <std::size_t R>
struct Pair {
  Tensor<float, R> fast, ref;
  explicit Pair(const std::array<index_t, R>& shape, float init = -3.f) : fast(shape), ref(shape) {
    fast.fill(init), ref.fill(init);
  }
};

template <std::size_t R>
void fill_pool(Pair<R>& p, Decoder& in, Mode mode) {
  fill(p.fast, in, mode, -1.f, 1.f);
  p.ref = p.fast;
}

void conv(Decoder& in, bool step) {
  const Mode mode = decode_mode(in);
  const Batch bt = decode_batch(in, mode, 3, 80, !step);
  const index_t D = in.size(1, 40), W = in.size(1, 5);
  CausalConv1dOptions options;
  options.activation = in.pick({ConvActivation::none, ConvActivation::silu});
  const bool with_bias = in.flag(), with_state = step || in.flag();
  Tensor<float, 3> x({bt.B, bt.T, D});
  Tensor<float, 2> weight({D, W});
  Tensor<float, 1> bias({D});
  fill(x, in, mode, -2.f, 2.f), fill(weight, in, mode, -1.f, 1.f), fill(bias, in, mode, -0.5f, 0.5f);
  Pair<3> pool({bt.S, W - 1, D});
  fill_pool(pool, in, mode);
  Hostile hostile(in, mode, 4);
  const Executor& exec = executor(in);
  const ConstView<float, 1> bias_view = with_bias ? hostile.in(2, bias) : ConstView<float, 1>();
  if (step) {
    Pair<2> y({bt.B, D});
    CausalConv1dStepInputs si;
    Tensor<float, 2> x1({bt.B, D});
    std::copy(x.data(), x.data() + x1.numel(), x1.data());
    si.x = hostile.in(0, x1), si.weight = hostile.in(1, weight, W > 1 ? -1 : 1), si.bias = bias_view, si.batch = bt.view();
    Snapshot snap;
    snap.add(y.fast).add(pool.fast);
    const bool fast_ok = accepted("causal_conv1d_step", snap, [&] {
      causal_conv1d_step(si, {hostile.out(3, y.fast), pool.fast.view()}, options, exec);
    });
    CausalConv1dInputs ri;
    ri.x = ConstView<float, 3>(x1.data(), {bt.B, 1, D}), ri.weight = si.weight, ri.bias = bias_view;
    ri.initial_state = pool.ref.view(), ri.batch = bt.view();
    CausalConv1dOutputs ro;
    ro.y = TensorView<float, 3>(y.ref.data(), {bt.B, 1, D}), ro.final_state = pool.ref.view();
    const bool ref_ok = accepted("reference::causal_conv1d", Snapshot(), [&] { reference::causal_conv1d(ri, ro, options); });
    if (!verdicts_agree("causal_conv1d_step", fast_ok, ref_ok, hostile, false)) return;
    require_close("causal_conv1d_step y", y.fast, y.ref, kTol, false, mode);
    require_close("causal_conv1d_step conv_state", pool.fast, pool.ref, kTol, false, mode);
    return;
  }
  Pair<3> y({bt.B, bt.T, D});
  // W is pinned by the state's W - 1 rows only where there is a state: an empty pool (no
  // sequences) counts as absent, like any empty view.
  CausalConv1dInputs fi;
  fi.x = hostile.in(0, x), fi.weight = hostile.in(1, weight, with_state && W > 1 && bt.S > 0 ? -1 : 1), fi.bias = bias_view;
  fi.batch = bt.view();
  CausalConv1dInputs ri = fi;
  if (with_state) fi.initial_state = pool.fast.view(), ri.initial_state = pool.ref.view();
  Snapshot snap;
  snap.add(y.fast).add(pool.fast);
  const bool fast_ok = accepted("causal_conv1d", snap, [&] {
    causal_conv1d(fi, {hostile.out(3, y.fast), with_state ? pool.fast.view() : TensorView<float, 3>()}, options, exec);
  });
  const bool ref_ok = accepted("reference::causal_conv1d", Snapshot(), [&] {
    reference::causal_conv1d(ri, {hostile.out(3, y.ref), with_state ? pool.ref.view() : TensorView<float, 3>()}, options);
  });
  if (!verdicts_agree("causal_conv1d", fast_ok, ref_ok, hostile)) return;
  require_close("causal_conv1d y", y.fast, y.ref, kTol, false, mode);
  require_close("causal_conv1d final_state", pool.fast, pool.ref, kTol, false, mode);
}

void mamba1(Decoder& in, bool step) {
  const Mode mode = decode_mode(in);
  const Batch bt = decode_batch(in, mode, 3, 80, !step);
  const index_t G = in.size(1, 3), D = G * in.size(1, 12), N = in.size(1, 17);
  SelectiveScanOptions options;
  options.delta_softplus = in.flag();
  const bool with_skip = in.flag(), with_z = in.flag(), with_bias = in.flag(), with_state = step || in.flag();
  Tensor<float, 3> u({bt.B, bt.T, D}), delta({bt.B, bt.T, D}), z({bt.B, bt.T, D});
  Tensor<float, 2> A({D, N});
  Tensor<float, 4> Bm({bt.B, bt.T, G, N}), Cm({bt.B, bt.T, G, N});
  Tensor<float, 1> skip({D}), dbias({D});
  fill(u, in, mode, -1.f, 1.f), fill(delta, in, mode, options.delta_softplus ? -4.f : 0.f, 0.5f);
  fill(z, in, mode, -2.f, 2.f), fill(A, in, Mode::clean, -2.f, -0.05f);  // A must be finite
  fill(Bm, in, mode, -1.f, 1.f), fill(Cm, in, mode, -1.f, 1.f);
  fill(skip, in, mode, -1.f, 1.f), fill(dbias, in, mode, options.delta_softplus ? -0.5f : 0.f, 0.5f);
  Pair<3> pool({bt.S, D, N});
  fill_pool(pool, in, mode);
  Hostile hostile(in, mode, 9);
  const Executor& exec = executor(in);
  const auto opt1 = [&](bool on, int k, const Tensor<float, 1>& t) { return on ? hostile.in(k, t) : ConstView<float, 1>(); };
  if (step) {
    Pair<2> y({bt.B, D});
    auto row = [&](const Tensor<float, 3>& t) { return ConstView<float, 2>(t.data(), {bt.B, D}, {bt.T * D, 1}); };
    auto row4 = [&](const Tensor<float, 4>& t) { return ConstView<float, 3>(t.data(), {bt.B, G, N}, {bt.T * G * N, N, 1}); };
    SelectiveScanStepInputs si;
    si.u = row(u), si.delta = row(delta), si.A = hostile.in(0, A), si.Bm = row4(Bm), si.Cm = row4(Cm);
    si.Dskip = opt1(with_skip, 1, skip), si.z = with_z ? row(z) : ConstView<float, 2>(), si.delta_bias = opt1(with_bias, 2, dbias);
    si.batch = bt.view();
    Snapshot snap;
    snap.add(y.fast).add(pool.fast);
    const bool fast_ok = accepted("selective_scan_step", snap, [&] {
      selective_scan_step(si, {hostile.out(3, y.fast), pool.fast.view()}, options, exec);
    });
    SelectiveScanInputs ri;
    ri.u = u.view(), ri.delta = delta.view(), ri.A = si.A, ri.Bm = Bm.view(), ri.Cm = Cm.view(), ri.Dskip = si.Dskip;
    ri.z = with_z ? z.view() : ConstView<float, 3>(), ri.delta_bias = si.delta_bias, ri.initial_state = pool.ref.view();
    ri.batch = bt.view();
    const bool ref_ok = accepted("reference::selective_scan", Snapshot(), [&] {
      reference::selective_scan(ri, {TensorView<float, 3>(y.ref.data(), {bt.B, 1, D}), pool.ref.view()}, options);
    });
    if (!verdicts_agree("selective_scan_step", fast_ok, ref_ok, hostile, false)) return;
    require_close("selective_scan_step y", y.fast, y.ref, kTol, false, mode);
    require_close("selective_scan_step state", pool.fast, pool.ref, kTol, false, mode);
    return;
  }
  Pair<3> y({bt.B, bt.T, D});
  SelectiveScanInputs fi;
  fi.u = hostile.in(3, u), fi.delta = hostile.in(4, delta), fi.A = hostile.in(0, A), fi.Bm = hostile.in(5, Bm);
  fi.Cm = hostile.in(6, Cm), fi.Dskip = opt1(with_skip, 1, skip), fi.z = with_z ? hostile.in(7, z) : ConstView<float, 3>();
  fi.delta_bias = opt1(with_bias, 2, dbias), fi.batch = bt.view();
  SelectiveScanInputs ri = fi;
  if (with_state) fi.initial_state = pool.fast.view(), ri.initial_state = pool.ref.view();
  Snapshot snap;
  snap.add(y.fast).add(pool.fast);
  const bool fast_ok = accepted("selective_scan", snap, [&] {
    selective_scan(fi, {hostile.out(8, y.fast), with_state ? pool.fast.view() : TensorView<float, 3>()}, options, exec);
  });
  const bool ref_ok = accepted("reference::selective_scan", Snapshot(), [&] {
    reference::selective_scan(ri, {hostile.out(8, y.ref), with_state ? pool.ref.view() : TensorView<float, 3>()}, options);
  });
  if (!verdicts_agree("selective_scan", fast_ok, ref_ok, hostile)) return;
  require_close("selective_scan y", y.fast, y.ref, kTol, false, mode);
  require_close("selective_scan final_state", pool.fast, pool.ref, kTol, false, mode);
}

void mamba2(Decoder& in, bool step) {
  const Mode mode = decode_mode(in);
  const Batch bt = decode_batch(in, mode, 3, 100, !step);
  const index_t G = in.size(1, 2), H = G * in.size(1, 3), P = in.size(1, 9), N = in.size(1, 17);
  SsdOptions options;
  options.dt_softplus = in.flag();
  options.chunk_size = in.pick<index_t>({1, 5, 16, 32, 64});
  options.algorithm = in.pick({SsdAlgorithm::automatic, SsdAlgorithm::chunked, SsdAlgorithm::recurrent});
  const bool with_skip = in.flag(), with_z = in.flag(), with_bias = in.flag(), with_state = step || in.flag();
  Tensor<float, 4> x({bt.B, bt.T, H, P}), z({bt.B, bt.T, H, P}), Bm({bt.B, bt.T, G, N}), Cm({bt.B, bt.T, G, N});
  Tensor<float, 3> dt({bt.B, bt.T, H});
  Tensor<float, 1> A({H}), skip({H}), dbias({H});
  fill(x, in, mode, -1.f, 1.f), fill(z, in, mode, -2.f, 2.f), fill(Bm, in, mode, -1.f, 1.f), fill(Cm, in, mode, -1.f, 1.f);
  // Without softplus, dt + dt_bias may be slightly negative: the state then grows (by up to
  // e^0.3 a token), which the chunked form once got wrong (corpus ssd-chunked-negative-dt,
  // ssd-chunked-growing-state). Not more: a state growing for long is ill-conditioned (its
  // output cancels far above itself, and any two float evaluations, the reference's included,
  // part by more than the tolerance: 0.2% at e^0.7 a token over 89 tokens).
  fill(dt, in, mode, options.dt_softplus ? -4.f : -0.05f, 0.5f);
  fill(A, in, Mode::clean, -3.f, 0.f), fill(skip, in, mode, -1.f, 1.f);
  fill(dbias, in, mode, options.dt_softplus ? -0.5f : -0.05f, 0.5f);
  Pair<4> pool({bt.S, H, P, N});
  fill_pool(pool, in, mode);
  Hostile hostile(in, mode, 10);
  if (!step) options.chunk_size = hostile.scalar(9, options.chunk_size, -options.chunk_size);
  const Executor& exec = executor(in);
  const auto opt1 = [&](bool on, int k, const Tensor<float, 1>& t) { return on ? hostile.in(k, t) : ConstView<float, 1>(); };
  if (step) {
    Pair<3> y({bt.B, H, P});
    auto row4 = [&](const Tensor<float, 4>& t) {
      const auto s = t.shape();
      return ConstView<float, 3>(t.data(), {bt.B, s[2], s[3]}, {bt.T * s[2] * s[3], s[3], 1});
    };
    SsdStepInputs si;
    si.x = row4(x), si.dt = ConstView<float, 2>(dt.data(), {bt.B, H}, {bt.T * H, 1}), si.A = hostile.in(0, A);
    si.Bm = row4(Bm), si.Cm = row4(Cm), si.D = opt1(with_skip, 1, skip), si.z = with_z ? row4(z) : ConstView<float, 3>();
    si.dt_bias = opt1(with_bias, 2, dbias), si.batch = bt.view();
    Snapshot snap;
    snap.add(y.fast).add(pool.fast);
    const bool fast_ok = accepted("ssd_step", snap, [&] { ssd_step(si, {hostile.out(3, y.fast), pool.fast.view()}, options, exec); });
    SsdInputs ri;
    ri.x = x.view(), ri.dt = dt.view(), ri.A = si.A, ri.Bm = Bm.view(), ri.Cm = Cm.view(), ri.D = si.D;
    ri.z = with_z ? z.view() : ConstView<float, 4>(), ri.dt_bias = si.dt_bias, ri.initial_state = pool.ref.view();
    ri.batch = bt.view();
    const bool ref_ok = accepted("reference::ssd", Snapshot(), [&] {
      reference::ssd(ri, {TensorView<float, 4>(y.ref.data(), {bt.B, 1, H, P}), pool.ref.view()}, options);
    });
    if (!verdicts_agree("ssd_step", fast_ok, ref_ok, hostile, false)) return;
    require_close("ssd_step y", y.fast, y.ref, kTol, NonFinite::same_finiteness, mode);
    require_close("ssd_step state", pool.fast, pool.ref, kTol, NonFinite::same_finiteness, mode);
    return;
  }
  Pair<4> y({bt.B, bt.T, H, P});
  SsdInputs fi;
  fi.x = hostile.in(3, x), fi.dt = hostile.in(4, dt), fi.A = hostile.in(0, A), fi.Bm = hostile.in(5, Bm);
  fi.Cm = hostile.in(6, Cm), fi.D = opt1(with_skip, 1, skip), fi.z = with_z ? hostile.in(7, z) : ConstView<float, 4>();
  fi.dt_bias = opt1(with_bias, 2, dbias), fi.batch = bt.view();
  SsdInputs ri = fi;
  if (with_state) fi.initial_state = pool.fast.view(), ri.initial_state = pool.ref.view();
  Snapshot snap;
  snap.add(y.fast).add(pool.fast);
  const bool fast_ok = accepted("ssd", snap, [&] {
    ssd(fi, {hostile.out(8, y.fast), with_state ? pool.fast.view() : TensorView<float, 4>()}, options, exec);
  });
  const bool ref_ok = accepted("reference::ssd", Snapshot(), [&] {
    reference::ssd(ri, {hostile.out(8, y.ref), with_state ? pool.ref.view() : TensorView<float, 4>()}, options);
  });
  if (!verdicts_agree("ssd", fast_ok, ref_ok, hostile)) return;
  require_close("ssd y", y.fast, y.ref, kTol, NonFinite::same_finiteness, mode);
  require_close("ssd final_state", pool.fast, pool.ref, kTol, NonFinite::same_finiteness, mode);
}

}  // namespace

int fuzz_ssm(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  switch (in.byte() % 6) {
    case 0: conv(in, false); break;
    case 1: conv(in, true); break;
    case 2: mamba1(in, false); break;
    case 3: mamba1(in, true); break;
    case 4: mamba2(in, false); break;
    default: mamba2(in, true); break;
  }
  return 0;
}

}  // namespace seqmix::fuzz
