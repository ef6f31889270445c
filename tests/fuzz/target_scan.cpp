// Fuzz target: linear_scan (every split, chunk size, gate space, in-place form) against
// reference::linear_scan, and associative_scan over the affine monoid against a sequential fold.
// linear_scan's non-finite policy is uniform (docs/reliability.md), so NaN / inf are compared
// strictly.
#include "fuzz.hpp"

#include "seqmix/core/scan.hpp"

namespace seqmix::fuzz {

namespace {

void linear(Decoder& in) {
  const Mode mode = decode_mode(in);
  const index_t B = in.size(0, 3), T = in.size(0, 300), D = in.size(0, 24);
  LinearScanOptions options;
  options.gate_space = in.pick({GateSpace::direct, GateSpace::log});
  options.split = in.pick({ScanSplit::automatic, ScanSplit::channels, ScanSplit::time});
  options.chunk_size = in.pick<index_t>({0, 0, 1, 7, 37, 64});
  options.stores = in.pick({OutputStores::automatic, OutputStores::cached, OutputStores::streaming});
  const bool with_h0 = in.flag(), with_all = in.flag() || in.flag(), with_last = !with_all || in.flag();
  const bool in_place = with_all && in.one_in(4);  // h_all is the very view of a

  Tensor<float, 3> a({B, T, D}), b({B, T, D});
  Tensor<float, 2> h0({B, D});
  if (options.gate_space == GateSpace::log) fill(a, in, mode, -2.f, 0.1f);
  else fill(a, in, mode, -1.05f, 1.05f);
  fill(b, in, mode, -1.f, 1.f);
  fill(h0, in, mode, -1.f, 1.f);

  Hostile hostile(in, mode, 6);
  options.chunk_size = hostile.scalar(5, options.chunk_size, -1 - options.chunk_size);
  Tensor<float, 3> all_fast({B, T, D}), all_ref({B, T, D}), a_fast = a;
  Tensor<float, 2> last_fast({B, D}), last_ref({B, D});
  all_fast.fill(-5.f), last_fast.fill(-5.f), all_ref.fill(-5.f), last_ref.fill(-5.f);

  Tensor<float, 3>& all_target = in_place ? a_fast : all_fast;
  const ConstView<float, 2> h0_view = with_h0 ? hostile.in(2, h0) : ConstView<float, 2>();
  Snapshot snap;
  snap.add(all_target).add(last_fast);
  const Executor& exec = executor(in);
  const bool fast_ok = accepted("linear_scan", snap, [&] {
    linear_scan(hostile.in(0, a_fast), hostile.in(1, b), h0_view,
                with_all ? hostile.out(3, all_target) : TensorView<float, 3>(),
                with_last ? hostile.out(4, last_fast) : TensorView<float, 2>(), options, exec);
  });
  const bool ref_ok = accepted("reference::linear_scan", Snapshot(), [&] {
    reference::linear_scan(hostile.in(0, a), hostile.in(1, b), with_h0 ? hostile.in(2, h0) : ConstView<float, 2>(),
                           with_all ? hostile.out(3, all_ref) : TensorView<float, 3>(),
                           with_last ? hostile.out(4, last_ref) : TensorView<float, 2>(), options);
  });
  if (!verdicts_agree("linear_scan", fast_ok, ref_ok, hostile)) return;
  const double tol = options.gate_space == GateSpace::log ? 1e-3 : 1e-4;
  // A growing recurrence that cancels keeps only absolute accuracy in the time split
  // (docs/reliability.md), so the bound scales with the largest |h|, as require_close does.
  if (with_all) require_close("linear_scan h_all", all_target, all_ref, tol, true, mode);
  if (with_last) require_close("linear_scan h_last", last_fast, last_ref, tol, true, mode);
}

void associative(Decoder& in) {
  const index_t n = in.size(0, 400);
  AssociativeScanOptions options;
  options.chunk_size = in.pick<index_t>({0, 1, 5, 64});
  Tensor<float, 1> a({n}), b({n});
  fill(a, in, Mode::clean, -1.f, 1.f);
  fill(b, in, Mode::clean, -1.f, 1.f);
  using Affine = AffineMonoid<float>;
  std::vector<Affine::value_type> items(static_cast<std::size_t>(n)), out(items.size());
  for (index_t i = 0; i < n; ++i) items[static_cast<std::size_t>(i)] = {a.data()[i], b.data()[i]};
  const ConstView<Affine::value_type, 1> in_view(items.data(), {n});
  const TensorView<Affine::value_type, 1> out_view(out.data(), {n});
  associative_scan(Affine{}, in_view, out_view, options, executor(in));
  double h = 0.0;
  for (index_t i = 0; i < n; ++i) {
    h = a.data()[i] * h + b.data()[i];
    const auto& o = out[static_cast<std::size_t>(i)];
    const double got = o.b;  // the prefix map applied to h_{-1} = 0
    require(std::abs(got - h) <= 1e-3 * std::max(1.0, std::abs(h)),
            "associative_scan affine prefix " + std::to_string(i) + ": " + std::to_string(got) + " vs " +
                std::to_string(h));
  }
}

}  // namespace

int fuzz_scan(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  const int calls = 1 + in.byte() % 2;
  for (int c = 0; c < calls; ++c) {
    if (in.byte() % 5 == 0) associative(in);
    else linear(in);
  }
  return 0;
}

}  // namespace seqmix::fuzz
