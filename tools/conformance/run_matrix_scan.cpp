// seqmix-conformance runner for matrix_scan (docs/operators.md section 14): the fast prefill and
// the reference, every state and the last.
#include "registry.hpp"
#include "seqmix/ssm/matrix_scan/fast.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_matrix_scan(const CaseData& c, bool fast) {
  seqmix::MatrixScanInputs in;
  in.A = c.in<5>("A", "B,T,H,N,N");
  in.x = c.in<4>("x", "B,T,H,N");
  in.h0 = c.opt_in<3>("h0", "B,H,N");
  OutputMap out;
  const seqmix::MatrixScanOutputs outputs{c.make_output<4>(out, "h_all"), c.make_output<3>(out, "h_last")};
  if (fast)
    seqmix::matrix_scan(in, outputs);
  else
    seqmix::reference::matrix_scan(in, outputs);
  return out;
}

const RegisterOp kMatrixScan("matrix_scan", [](const CaseData& c) { return run_matrix_scan(c, true); },
                             [](const CaseData& c) { return run_matrix_scan(c, false); });

}  // namespace
