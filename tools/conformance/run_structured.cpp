// seqmix-conformance runner for the 2-D scans (docs/operators.md section 19): cross_scan,
// cross_merge and grid_scan, the fast forms (grid_scan on the channel and the wavefront splits,
// which must agree) and the references.
#include <algorithm>
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

const RegisterOp kCrossScan("cross_scan", [](const CaseData& c) { return run_cross_scan(c, true); },
                            [](const CaseData& c) { return run_cross_scan(c, false); });
const RegisterOp kCrossMerge("cross_merge", [](const CaseData& c) { return run_cross_merge(c, true); },
                             [](const CaseData& c) { return run_cross_merge(c, false); });
const RegisterOp kGridScan("grid_scan", [](const CaseData& c) { return run_grid_scan(c, true); },
                           [](const CaseData& c) { return run_grid_scan(c, false); });

}  // namespace
