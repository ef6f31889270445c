// seqmix-conformance runners for the recurrent cells (docs/operators.md section 12): lstm, gru
// and slstm (fast prefill and reference) and mlstm (chunked prefill, recurrent prefill and the
// reference; the runner's "fast" slot takes the chunked form).
#include "registry.hpp"
#include "seqmix/rnn.hpp"

namespace {

using namespace seqmix::conformance;

enum class Cell { lstm, gru, slstm };

OutputMap run_cell(const CaseData& c, Cell cell, bool fast) {
  seqmix::RnnInputs in;
  in.x = c.in<3>("x", "B,T,I");
  in.w_ih = c.opt_in<2>("w_ih", "G*H,I");
  in.w_hh = c.in<2>("w_hh", "G*H,H/heads");
  in.b_ih = c.opt_in<1>("b_ih", "G*H");
  in.b_hh = c.opt_in<1>("b_hh", "G*H");
  in.initial_state = c.opt_in<3>("initial_state", "B,S,H");
  seqmix::RnnOptions options;
  options.heads = c.param_int("heads", 1);
  OutputMap out;
  seqmix::RnnOutputs outputs{c.make_output<3>(out, "y")};
  if (c.outputs.count("final_state")) outputs.final_state = c.make_output<3>(out, "final_state");
  switch (cell) {
    case Cell::lstm: fast ? seqmix::lstm(in, outputs, options) : seqmix::reference::lstm(in, outputs, options); break;
    case Cell::gru: fast ? seqmix::gru(in, outputs, options) : seqmix::reference::gru(in, outputs, options); break;
    case Cell::slstm: fast ? seqmix::slstm(in, outputs, options) : seqmix::reference::slstm(in, outputs, options); break;
  }
  return out;
}

OutputMap run_mlstm(const CaseData& c, bool fast) {
  seqmix::MlstmInputs in;
  in.q = c.in<4>("q", "B,T,NH,DK");
  in.k = c.in<4>("k", "B,T,NH,DK");
  in.v = c.in<4>("v", "B,T,NH,DV");
  in.i = c.in<3>("i", "B,T,NH");
  in.f = c.in<3>("f", "B,T,NH");
  in.initial_c = c.opt_in<4>("initial_c", "B,NH,DK,DV");
  in.initial_n = c.opt_in<3>("initial_n", "B,NH,DK");
  in.initial_m = c.opt_in<2>("initial_m", "B,NH");
  seqmix::MlstmOptions options;
  if (const auto scale = c.param_opt_double("scale")) options.scale = static_cast<float>(*scale);
  options.eps = static_cast<float>(c.param_double("eps", 1e-6));
  OutputMap out;
  const seqmix::MlstmOutputs outputs{c.make_output<4>(out, "h")};
  if (fast) {
    seqmix::mlstm(in, outputs, options);
    // The recurrent prefill must agree too: checked against the chunked result's case outputs.
    OutputMap rec;
    options.algorithm = seqmix::MlstmAlgorithm::recurrent;
    seqmix::mlstm(in, {c.make_output<4>(rec, "h")}, options);
    const double tol = c.tol;
    const std::vector<float>& a = out["h"];
    const std::vector<float>& b = rec["h"];
    for (std::size_t j = 0; j < a.size(); ++j)
      if (!(std::abs(a[j] - b[j]) <= tol * std::max(1.f, std::abs(a[j]))))
        throw CaseError(c.id() + ": the recurrent prefill differs from the chunked one at element " + std::to_string(j));
  } else {
    seqmix::reference::mlstm(in, outputs, options);
  }
  return out;
}

const RegisterOp kLstm("lstm", [](const CaseData& c) { return run_cell(c, Cell::lstm, true); },
                       [](const CaseData& c) { return run_cell(c, Cell::lstm, false); });
const RegisterOp kGru("gru", [](const CaseData& c) { return run_cell(c, Cell::gru, true); },
                      [](const CaseData& c) { return run_cell(c, Cell::gru, false); });
const RegisterOp kSlstm("slstm", [](const CaseData& c) { return run_cell(c, Cell::slstm, true); },
                        [](const CaseData& c) { return run_cell(c, Cell::slstm, false); });
const RegisterOp kMlstm("mlstm", [](const CaseData& c) { return run_mlstm(c, true); },
                        [](const CaseData& c) { return run_mlstm(c, false); });

}  // namespace
