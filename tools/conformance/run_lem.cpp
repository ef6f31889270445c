// seqmix-conformance runner for lem (docs/operators.md section 12): the fast prefill (also
// checked token by token through lem_step against the case outputs) and the reference.
#include <algorithm>
#include <cmath>
#include <string>

#include "registry.hpp"
#include "seqmix/rnn.hpp"

namespace {

using namespace seqmix::conformance;

OutputMap run_lem(const CaseData& c, bool fast) {
  seqmix::LemInputs in;
  in.x = c.in<3>("x", "B,T,I");
  in.w_ih = c.opt_in<2>("w_ih", "4H,I");
  in.w_hh = c.in<2>("w_hh", "3H,H");
  in.w_z = c.in<2>("w_z", "H,H");
  in.b_ih = c.opt_in<1>("b_ih", "4H");
  in.b_hh = c.opt_in<1>("b_hh", "3H");
  in.b_z = c.opt_in<1>("b_z", "H");
  in.initial_state = c.opt_in<3>("initial_state", "B,2,H");
  seqmix::LemOptions options;
  options.dt = static_cast<float>(c.param_double("dt", 1.0));
  OutputMap out;
  seqmix::RnnOutputs outputs{c.make_output<3>(out, "y")};
  if (c.outputs.count("final_state")) outputs.final_state = c.make_output<3>(out, "final_state");
  if (!fast) {
    seqmix::reference::lem(in, outputs, options);
    return out;
  }
  seqmix::lem(in, outputs, options);
  // The decode step over the same tokens must agree with the prefill within the case's tol.
  const seqmix::index_t B = in.x.size(0), T = in.x.size(1), H = in.w_hh.size(1);
  seqmix::Tensor<float, 3> state({B, 2, H});
  state.fill(0.f);
  if (in.initial_state.has_value()) seqmix::copy(in.initial_state, state.view());
  seqmix::Tensor<float, 2> y({B, H});
  for (seqmix::index_t t = 0; t < T; ++t) {
    seqmix::LemStepInputs si;
    si.x = in.x.select(1, t), si.w_ih = in.w_ih, si.w_hh = in.w_hh, si.w_z = in.w_z;
    si.b_ih = in.b_ih, si.b_hh = in.b_hh, si.b_z = in.b_z;
    seqmix::lem_step(si, {y.view(), state.view()}, options);
    for (seqmix::index_t b = 0; b < B; ++b)
      for (seqmix::index_t j = 0; j < H; ++j)
        if (!(std::abs(y(b, j) - outputs.y(b, t, j)) <= c.tol * std::max(1.f, std::abs(outputs.y(b, t, j)))))
          throw CaseError(c.id() + ": lem_step differs from the prefill at token " + std::to_string(t));
  }
  return out;
}

const RegisterOp kLem("lem", [](const CaseData& c) { return run_lem(c, true); },
                      [](const CaseData& c) { return run_lem(c, false); });

}  // namespace
