// seqmix-conformance runner for the 2-D scans (docs/operators.md section 19): cross_scan,
// cross_merge, grid_scan and cross_selective_scan, the fast forms (grid_scan on the channel and
// the wavefront splits, which must agree; cross_selective_scan on two threads) and the references.
#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "registry.hpp"
#include "seqmix/structured.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_cross_scan(const CaseData& c, bool fast) {
  const auto x = c.in<4>("x", "B,H,W,C");
  OutputMap out;
  const auto xs = c.make_output<4>(out, "xs");
  if (fast)
    seqmix::cross_scan(x, xs);
  else
    seqmix::reference::cross_scan(x, xs);
  return out;
}

OutputMap run_cross_merge(const CaseData& c, bool fast) {
  const auto ys = c.in<4>("ys", "B,4,H*W,C");
  OutputMap out;
  const auto y = c.make_output<4>(out, "y");
  if (fast)
    seqmix::cross_merge(ys, y);
  else
    seqmix::reference::cross_merge(ys, y);
  return out;
}

OutputMap run_grid_scan(const CaseData& c, bool fast) {
  const seqmix::GridScanInputs in{c.in<4>("a_left", "B,H,W,C"), c.in<4>("a_top", "B,H,W,C"), c.in<4>("x", "B,H,W,C")};
  OutputMap out;
  const auto h = c.make_output<4>(out, "h");
  if (!fast) {
    seqmix::reference::grid_scan(in, h);
    return out;
  }
  // The wavefront split on two threads, and the channel split, which must agree with it within
  // the case's tolerance (the same recurrence, cells in another order).
  seqmix::GridScanOptions options;
  options.split = seqmix::GridScanSplit::wavefront;
  const seqmix::ThreadPool pool(2);
  seqmix::grid_scan(in, h, options, pool);
  OutputMap other;
  options.split = seqmix::GridScanSplit::channels;
  seqmix::grid_scan(in, c.make_output<4>(other, "h"), options, pool);
  const std::vector<float>& a = out["h"];
  const std::vector<float>& b = other["h"];
  for (std::size_t j = 0; j < a.size(); ++j)
    if (!(std::abs(a[j] - b[j]) <= c.tol * std::max(1.f, std::abs(a[j]))))
      throw CaseError(c.id() + ": grid_scan's wavefront and channel splits differ at element " + std::to_string(j));
  return out;
}

// Direction k's inputs are u<k>, delta<k>, A<k>, Bm<k>, Cm<k> and the optional Dskip<k>, z<k>,
// delta_bias<k>; params delta_softplus (bool) and scales (four "full" / "coarse", default full).
OutputMap run_cross_selective_scan(const CaseData& c, bool fast) {
  std::array<seqmix::CrossScanDirectionInputs, 4> dirs;
  for (std::size_t k = 0; k < 4; ++k) {
    const std::string n = std::to_string(k);
    dirs[k] = {c.in<4>("u" + n, "B,Hk,Wk,D"), c.in<4>("delta" + n, "B,Hk,Wk,D"), c.in<2>("A" + n, "D,N"),
               c.in<5>("Bm" + n, "B,Hk,Wk,G,N"), c.in<5>("Cm" + n, "B,Hk,Wk,G,N"), c.opt_in<1>("Dskip" + n, "D"),
               c.opt_in<4>("z" + n, "B,Hk,Wk,D"), c.opt_in<1>("delta_bias" + n, "D")};
  }
  seqmix::CrossSelectiveScanOptions options;
  options.scan.delta_softplus = c.param_bool("delta_softplus", false);
  if (const Json* scales = c.param("scales")) {
    if (!scales->is_array() || scales->size() != 4)
      throw CaseError(c.id() + ": param 'scales' must be an array of four \"full\" / \"coarse\"");
    for (std::size_t k = 0; k < 4; ++k) {
      const Json& s = scales->at(k);
      if (!s.is_string() || (s.as_string() != "full" && s.as_string() != "coarse"))
        throw CaseError(c.id() + ": param 'scales' must be an array of four \"full\" / \"coarse\"");
      options.scales[k] = s.as_string() == "coarse" ? seqmix::GridScale::coarse : seqmix::GridScale::full;
    }
  }
  OutputMap out;
  const auto y = c.make_output<4>(out, "y");
  if (fast)
    seqmix::cross_selective_scan(dirs, y, options, seqmix::ThreadPool(2));
  else
    seqmix::reference::cross_selective_scan(dirs, y, options);
  return out;
}

const RegisterOp kCrossScan("cross_scan", [](const CaseData& c) { return run_cross_scan(c, true); },
                            [](const CaseData& c) { return run_cross_scan(c, false); });
const RegisterOp kCrossMerge("cross_merge", [](const CaseData& c) { return run_cross_merge(c, true); },
                             [](const CaseData& c) { return run_cross_merge(c, false); });
const RegisterOp kGridScan("grid_scan", [](const CaseData& c) { return run_grid_scan(c, true); },
                           [](const CaseData& c) { return run_grid_scan(c, false); });
const RegisterOp kCrossSelectiveScan("cross_selective_scan",
                                     [](const CaseData& c) { return run_cross_selective_scan(c, true); },
                                     [](const CaseData& c) { return run_cross_selective_scan(c, false); });

}  // namespace
