// The non-finite policy (issue 24 item 2, docs/reliability.md) for the LTI family (long_conv
// direct / FFT / step, ssm_kernel with its step, s5, hyena, h3) and the recurrent cells (lstm,
// gru, slstm, mlstm chunked / recurrent / step, ttt_linear, ttt_mlp, titans with the l2 loss and
// the Miras losses). The probe of tests/nonfinite_probe.hpp puts NaN, +inf and -inf into one
// element of each token input, at batch row 0 of B = 2, at tokens before, inside and at the end
// of a chunk: earlier tokens stay bit for bit what the same form gives without it (within FFT
// rounding where the FFT form recomputes a poked channel directly), later outputs and final
// states are non-finite exactly where the reference's are, and batch row 1 is bit for bit the
// clean run's. Fast forms run serially and on two threads; steps run token by token.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "nonfinite_probe.hpp"
#include "seqmix/lti/h3/fast.hpp"
#include "seqmix/lti/h3/reference.hpp"
#include "seqmix/lti/hyena/fast.hpp"
#include "seqmix/lti/hyena/reference.hpp"
#include "seqmix/lti/hyena/step.hpp"
#include "seqmix/lti/long_conv/fast.hpp"
#include "seqmix/lti/long_conv/reference.hpp"
#include "seqmix/lti/long_conv/step.hpp"
#include "seqmix/lti/s5/reference.hpp"
#include "seqmix/lti/s5/scan.hpp"
#include "seqmix/lti/s5/step.hpp"
#include "seqmix/lti/ssm_kernel/kernel.hpp"
#include "seqmix/lti/ssm_kernel/reference.hpp"
#include "seqmix/lti/ssm_kernel/step.hpp"
#include "seqmix/rnn/gru/fast.hpp"
#include "seqmix/rnn/gru/reference.hpp"
#include "seqmix/rnn/gru/step.hpp"
#include "seqmix/rnn/lstm/fast.hpp"
#include "seqmix/rnn/lstm/reference.hpp"
#include "seqmix/rnn/lstm/step.hpp"
#include "seqmix/rnn/mlstm/chunked.hpp"
#include "seqmix/rnn/mlstm/reference.hpp"
#include "seqmix/rnn/mlstm/step.hpp"
#include "seqmix/rnn/slstm/fast.hpp"
#include "seqmix/rnn/slstm/reference.hpp"
#include "seqmix/rnn/slstm/step.hpp"
#include "seqmix/rnn/titans/chunked.hpp"
#include "seqmix/rnn/titans/reference.hpp"
#include "seqmix/rnn/titans/step.hpp"
#include "seqmix/rnn/ttt/fast.hpp"
#include "seqmix/rnn/ttt/reference.hpp"
#include "seqmix/rnn/ttt/step.hpp"

namespace {

using namespace seqmix_nonfinite_probe;

constexpr index_t kLrB = 2;   // batch rows: the poke goes to row 0, row 1 must not move
constexpr index_t kLrT = 60;  // tokens; pokes at 0, 13 and 25 (inside chunks of 16) and T - 1

// Marks axis `axis` of a field as its batch axis: a poke into batch row 0 must leave every
// element of row 1 bit for bit as the clean run of the same form has it.
Field lr_batch(Field f, int axis = 0) {
  f.owner_axis = axis;
  f.owners.clear();
  for (index_t b = 0; b < f.shape[static_cast<std::size_t>(axis)]; ++b) f.owners.push_back(b);
  return f;
}
Field lr_param(std::string name, std::vector<index_t> shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return random_field(std::move(name), std::move(shape), seed, lo, hi, -1);
}

const seqmix::Executor& lr_executor(bool threads) {
  return threads ? static_cast<const seqmix::Executor&>(st::two_thread_pool()) : seqmix::serial_executor();
}

// Adds the serial and the two-thread run of a fast form.
template <typename F>
void lr_add_threaded(Op& op, const std::string& name, F run) {
  op.forms.push_back({name + " serial", [=](const Fields& in, Fields& out) { run(in, out, false); }});
  op.forms.push_back({name + " 2 threads", [=](const Fields& in, Fields& out) { run(in, out, true); }});
}

// ---- long_conv -----------------------------------------------------------------------------

// inputs: u [B,T,D], filter [L,D], skip [D], initial_state [B,L-1,D]; outputs y, final_state.
// fft: the FFT form recomputes a poked channel pair directly, so earlier outputs of that pair
// may move by rounding (Field::exact false).
Op lr_long_conv_op(seqmix::LongConvMethod method, index_t L) {
  const index_t B = kLrB, T = kLrT, D = 19;
  using seqmix::LongConvMethod;
  Op op;
  op.name = std::string("long_conv ") + (method == LongConvMethod::fft ? "fft" : "direct") + " L=" + std::to_string(L);
  op.inputs = {lr_batch(random_field("u", {B, T, D}, 201)), lr_param("filter", {L, D}, 202, -0.5f, 0.5f),
               lr_param("skip", {D}, 203), lr_batch(random_field("initial_state", {B, L - 1, D}, 204, -1.f, 1.f, -1))};
  op.inputs[0].exact = method != LongConvMethod::fft;
  op.inputs[3].state_pokes = {3 * D + 4};  // batch row 0, row 3 of the state: read by tokens 0 .. L - 5
  op.outputs = {lr_batch(zero_field("y", {B, T, D})), lr_batch(zero_field("final_state", {B, L - 1, D}, -1))};
  const auto args = [](const Fields& in) {
    return seqmix::LongConvInputs{in[0].in<3>(), in[1].in<2>(), {}, in[2].in<1>(), {}, in[3].in<3>()};
  };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::long_conv(args(in), {out[0].out<3>(), out[1].out<3>()});
  };
  lr_add_threaded(op, "long_conv", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::long_conv(args(in), {out[0].out<3>(), out[1].out<3>()}, {seqmix::LongConvDirection::causal, method},
                      lr_executor(threads));
  });
  if (method == LongConvMethod::direct)
    op.forms.push_back({"long_conv_step", [=](const Fields& in, Fields& out) {
                          out[1].data = in[3].data;
                          for (index_t t = 0; t < T; ++t)
                            seqmix::long_conv_step({in[0].in<3>().select(1, t), in[1].in<2>(), in[2].in<1>()},
                                                   {out[0].out<3>().select(1, t), out[1].out<3>()}, st::two_thread_pool());
                        }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// Bidirectional (non-causal) long_conv: a poke at token t reaches the outputs t - Lb + 1 .. t + L - 1;
// the outputs carry no token axis for the probe (no "earlier token" rule): they must be
// non-finite exactly where the reference's are, and batch row 1 must not move.
Op lr_long_conv_bidirectional_op(seqmix::LongConvMethod method) {
  const index_t B = kLrB, T = kLrT, D = 19, L = 9, Lb = 5;
  Op op;
  op.name = std::string("long_conv bidirectional ") + (method == seqmix::LongConvMethod::fft ? "fft" : "direct");
  op.inputs = {lr_batch(random_field("u", {B, T, D}, 211)), lr_param("filter", {L, D}, 212, -0.5f, 0.5f),
               lr_param("filter_backward", {Lb, D}, 213, -0.5f, 0.5f)};
  op.outputs = {lr_batch(zero_field("y", {B, T, D}, -1))};
  const auto args = [](const Fields& in) { return seqmix::LongConvInputs{in[0].in<3>(), in[1].in<2>(), in[2].in<2>()}; };
  const seqmix::LongConvOptions options{seqmix::LongConvDirection::bidirectional, method};
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::long_conv(args(in), {out[0].out<3>()}, options); };
  lr_add_threaded(op, "long_conv", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::long_conv(args(in), {out[0].out<3>()}, options, lr_executor(threads));
  });
  op.tokens = {0, 25, T - 1};
  return op;
}

// ---- ssm_kernel and ssm_step, s5 -------------------------------------------------------------

// The S4D kernel as long_conv's filter (reference: reference::ssm_kernel + reference::long_conv;
// fast: ssm_kernel + long_conv on 2 threads) against the recurrence ssm_step, token by token.
Op lr_ssm_kernel_op(bool fft) {
  const index_t B = kLrB, T = kLrT, H = 5, N = 8;
  Op op;
  op.name = fft ? "ssm_kernel + long_conv fft" : "ssm_kernel + long_conv direct, ssm_step";
  op.inputs = {lr_batch(random_field("u", {B, T, H}, 221)), lr_param("A_real", {H, N}, 222), lr_param("A_imag", {H, N}, 223),
               lr_param("B_real", {H, N}, 224, 0.5f, 1.5f), lr_param("B_imag", {H, N}, 225, -0.5f, 0.5f),
               lr_param("C_real", {H, N}, 226), lr_param("C_imag", {H, N}, 227), lr_param("dt", {H}, 228, 0.01f, 0.1f),
               lr_param("skip", {H}, 229)};
  seqmix::ssm_init_diagonal(seqmix::SsmInit::s4d_lin, op.inputs[1].out<2>(), op.inputs[2].out<2>());
  op.outputs = {lr_batch(zero_field("y", {B, T, H}))};
  const seqmix::SsmKernelOptions options{seqmix::SsmDiscretization::zoh, seqmix::SsmStateSymmetry::conjugate_pairs};
  const auto params = [](const Fields& in) {
    return seqmix::SsmParams{in[1].in<2>(), in[2].in<2>(), in[3].in<2>(), in[4].in<2>(),
                             in[5].in<2>(), in[6].in<2>(), in[7].in<1>()};
  };
  op.reference = [=](const Fields& in, Fields& out) {
    std::vector<float> kernel(static_cast<std::size_t>(T * H));
    const TensorView<float, 2> k(kernel.data(), {T, H});
    seqmix::reference::ssm_kernel(params(in), k, options);
    seqmix::reference::long_conv({in[0].in<3>(), k, {}, in[8].in<1>()}, {out[0].out<3>()});
  };
  {
    const auto method = fft ? seqmix::LongConvMethod::fft : seqmix::LongConvMethod::direct;
    op.forms.push_back({op.name, [=](const Fields& in, Fields& out) {
                          std::vector<float> kernel(static_cast<std::size_t>(T * H));
                          const TensorView<float, 2> k(kernel.data(), {T, H});
                          seqmix::ssm_kernel(params(in), k, options, st::two_thread_pool());
                          seqmix::long_conv({in[0].in<3>(), k, {}, in[8].in<1>()}, {out[0].out<3>()},
                                            {seqmix::LongConvDirection::causal, method}, st::two_thread_pool());
                        }});
  }
  if (!fft)
    op.forms.push_back({"ssm_step", [=](const Fields& in, Fields& out) {
                        std::vector<float> bar(static_cast<std::size_t>(4 * H * N)), state(static_cast<std::size_t>(2 * B * H * N));
                        const TensorView<float, 2> Ar(bar.data(), {H, N}), Ai(bar.data() + H * N, {H, N}),
                            Br(bar.data() + 2 * H * N, {H, N}), Bi(bar.data() + 3 * H * N, {H, N});
                        seqmix::ssm_discretize(params(in), {Ar, Ai, Br, Bi}, options);
                        const TensorView<float, 3> xr(state.data(), {B, H, N}), xi(state.data() + B * H * N, {B, H, N});
                        for (index_t t = 0; t < T; ++t)
                          seqmix::ssm_step({in[0].in<3>().select(1, t), Ar, Ai, Br, Bi, in[5].in<2>(), in[6].in<2>(), in[8].in<1>()},
                                           {out[0].out<3>().select(1, t), xr, xi}, options, st::two_thread_pool());
                      }});
  // The FFT form recomputes a poked channel pair directly: rounding only before the poke.
  op.inputs[0].exact = !fft;
  op.tokens = {0, 25, T - 1};
  return op;
}

Op lr_s5_op() {
  const index_t B = kLrB, T = kLrT, H = 6, P = 8;
  Op op;
  op.name = "s5";
  op.inputs = {lr_batch(random_field("u", {B, T, H}, 231)),       lr_param("Lambda_real", {P}, 232, -1.f, -0.1f),
               lr_param("Lambda_imag", {P}, 233, -3.f, 3.f),       lr_param("B_real", {P, H}, 234),
               lr_param("B_imag", {P, H}, 235),                    lr_param("C_real", {H, P}, 236),
               lr_param("C_imag", {H, P}, 237),                    lr_param("dt", {P}, 238, 0.01f, 0.1f),
               lr_param("D", {H}, 239),
               lr_batch(random_field("initial_state_real", {B, P}, 240, -1.f, 1.f, -1)),
               lr_batch(random_field("initial_state_imag", {B, P}, 241, -1.f, 1.f, -1))};
  op.inputs[9].state_pokes = {3};
  op.inputs[10].state_pokes = {5};
  op.outputs = {lr_batch(zero_field("y", {B, T, H})), lr_batch(zero_field("final_state_real", {B, P}, -1)),
                lr_batch(zero_field("final_state_imag", {B, P}, -1))};
  const auto params = [](const Fields& in) {
    return seqmix::S5Params{in[1].in<1>(), in[2].in<1>(), in[3].in<2>(), in[4].in<2>(),
                            in[5].in<2>(), in[6].in<2>(), in[7].in<1>(), in[8].in<1>()};
  };
  const auto args = [](const Fields& in) { return seqmix::S5Inputs{in[0].in<3>(), in[9].in<2>(), in[10].in<2>()}; };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::s5(params(in), args(in), {out[0].out<3>(), out[1].out<2>(), out[2].out<2>()});
  };
  lr_add_threaded(op, "s5", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::s5(params(in), args(in), {out[0].out<3>(), out[1].out<2>(), out[2].out<2>()}, {}, lr_executor(threads));
  });
  op.forms.push_back({"s5_step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[9].data, out[2].data = in[10].data;
                        for (index_t t = 0; t < T; ++t)
                          seqmix::s5_step(params(in), {in[0].in<3>().select(1, t)},
                                          {out[0].out<3>().select(1, t), out[1].out<2>(), out[2].out<2>()}, {},
                                          st::two_thread_pool());
                      }});
  op.tokens = {0, 25, T - 1};
  return op;
}

// ---- hyena, h3 -------------------------------------------------------------------------------

// Order N = 2 with a state: inputs v [B,T,D], x [N,B,T,D], filter [N,L,D], skip [N,D],
// initial_state [N,B,L-1,D].
Op lr_hyena_op(seqmix::LongConvMethod method) {
  const index_t B = kLrB, T = kLrT, D = 11, N = 2, L = 12;
  const bool fft = method == seqmix::LongConvMethod::fft;
  Op op;
  op.name = std::string("hyena ") + (fft ? "fft" : "direct");
  op.inputs = {lr_batch(random_field("v", {B, T, D}, 251)), lr_batch(random_field("x", {N, B, T, D}, 252, -1.f, 1.f, 2), 1),
               lr_param("filter", {N, L, D}, 253, -0.5f, 0.5f), lr_param("skip", {N, D}, 254),
               lr_batch(random_field("initial_state", {N, B, L - 1, D}, 255, -1.f, 1.f, -1), 1)};
  op.inputs[0].exact = op.inputs[1].exact = !fft;
  op.inputs[4].state_pokes = {5 * D + 2, (B * (L - 1) + 7) * D + 3};  // order 0 row 5, order 1 row 7 (batch row 0)
  op.outputs = {lr_batch(zero_field("y", {B, T, D})), lr_batch(zero_field("final_state", {N, B, L - 1, D}, -1), 1)};
  const auto args = [](const Fields& in) {
    return seqmix::HyenaInputs{in[0].in<3>(), in[1].in<4>(), in[2].in<3>(), in[3].in<2>(), in[4].in<4>()};
  };
  op.reference = [=](const Fields& in, Fields& out) {
    seqmix::reference::hyena(args(in), {out[0].out<3>(), {}, out[1].out<4>()});
  };
  lr_add_threaded(op, "hyena", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::hyena(args(in), {out[0].out<3>(), {}, out[1].out<4>()}, {method}, lr_executor(threads));
  });
  if (!fft)
    op.forms.push_back({"hyena_step", [=](const Fields& in, Fields& out) {
                          out[1].data = in[4].data;
                          for (index_t t = 0; t < T; ++t)
                            seqmix::hyena_step({in[0].in<3>().select(1, t), in[1].in<4>().select(2, t), in[2].in<3>(), in[3].in<2>()},
                                               {out[0].out<3>().select(1, t), out[1].out<4>()}, st::two_thread_pool());
                        }});
  op.tokens = {0, 25, T - 1};
  return op;
}

Op lr_h3_op(seqmix::LongConvMethod method) {
  const index_t B = kLrB, T = kLrT, H = 2, P = 5, Ls = 4, L = 20;
  const bool fft = method == seqmix::LongConvMethod::fft;
  Op op;
  op.name = std::string("h3 ") + (fft ? "fft" : "direct");
  op.inputs = {lr_batch(random_field("q", {B, T, H, P}, 261)), lr_batch(random_field("k", {B, T, H, P}, 262)),
               lr_batch(random_field("v", {B, T, H, P}, 263)), lr_param("shift_filter", {Ls, H * P}, 264, -0.5f, 0.5f),
               lr_param("diag_filter", {L, H * P}, 265, -0.5f, 0.5f)};
  for (std::size_t f = 0; f < 3; ++f) op.inputs[f].exact = !fft;
  op.outputs = {lr_batch(zero_field("y", {B, T, H, P}))};
  const auto args = [](const Fields& in) {
    return seqmix::H3Inputs{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<2>(), in[4].in<2>()};
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::h3(args(in), {out[0].out<4>()}); };
  lr_add_threaded(op, "h3", [=](const Fields& in, Fields& out, bool threads) {
    seqmix::h3(args(in), {out[0].out<4>()}, {method}, lr_executor(threads));
  });
  op.tokens = {0, 25, T - 1};
  return op;
}

// ---- lstm, gru, slstm --------------------------------------------------------------------------

// Cell with G gates, S state vectors: x [B,T,I] through w_ih, an initial state [B,S,H].
enum class LrCell { lstm, gru, slstm };

Op lr_rnn_op(LrCell cell, index_t heads) {
  const index_t B = kLrB, T = kLrT, I = 7, H = 8;
  const index_t G = cell == LrCell::gru ? 3 : 4, S = cell == LrCell::lstm ? 2 : cell == LrCell::gru ? 1 : 4;
  const char* names[] = {"lstm", "gru", "slstm"};
  Op op;
  op.name = std::string(names[static_cast<int>(cell)]) + " heads=" + std::to_string(heads);
  op.inputs = {lr_batch(random_field("x", {B, T, I}, 271)), lr_param("w_ih", {G * H, I}, 272, -0.4f, 0.4f),
               lr_param("w_hh", {G * H, H / heads}, 273, -0.4f, 0.4f), lr_param("b_ih", {G * H}, 274, -0.2f, 0.2f),
               lr_param("b_hh", {G * H}, 275, -0.2f, 0.2f), lr_batch(random_field("initial_state", {B, S, H}, 276, -0.5f, 0.5f, -1))};
  if (cell == LrCell::slstm) {  // n > 0 (a normalizer), m any
    for (index_t b = 0; b < B; ++b)
      for (index_t j = 0; j < H; ++j) op.inputs[5].data[static_cast<std::size_t>((b * S + 2) * H + j)] += 1.f;
  }
  op.inputs[5].state_pokes = {H / 2, (S - 1) * H + 1};  // h[3] and the last state vector's [1]
  op.outputs = {lr_batch(zero_field("y", {B, T, H})), lr_batch(zero_field("final_state", {B, S, H}, -1))};
  seqmix::RnnOptions options;
  options.heads = heads;
  const auto args = [](const Fields& in) {
    return seqmix::RnnInputs{in[0].in<3>(), in[1].in<2>(), in[2].in<2>(), in[3].in<1>(), in[4].in<1>(), in[5].in<3>()};
  };
  const auto prefill = [=](const Fields& in, Fields& out, int form, bool threads) {
    const seqmix::RnnInputs a = args(in);
    const seqmix::RnnOutputs o{out[0].out<3>(), out[1].out<3>()};
    if (form == 0) {
      if (cell == LrCell::lstm) seqmix::reference::lstm(a, o, options);
      if (cell == LrCell::gru) seqmix::reference::gru(a, o, options);
      if (cell == LrCell::slstm) seqmix::reference::slstm(a, o, options);
    } else {
      if (cell == LrCell::lstm) seqmix::lstm(a, o, options, lr_executor(threads));
      if (cell == LrCell::gru) seqmix::gru(a, o, options, lr_executor(threads));
      if (cell == LrCell::slstm) seqmix::slstm(a, o, options, lr_executor(threads));
    }
  };
  op.reference = [=](const Fields& in, Fields& out) { prefill(in, out, 0, false); };
  lr_add_threaded(op, "fast", [=](const Fields& in, Fields& out, bool threads) { prefill(in, out, 1, threads); });
  op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[5].data;
                        for (index_t t = 0; t < T; ++t) {
                          const seqmix::RnnStepInputs a{in[0].in<3>().select(1, t), in[1].in<2>(), in[2].in<2>(), in[3].in<1>(),
                                                        in[4].in<1>()};
                          const seqmix::RnnStepOutputs o{out[0].out<3>().select(1, t), out[1].out<3>()};
                          if (cell == LrCell::lstm) seqmix::lstm_step(a, o, options, st::two_thread_pool());
                          if (cell == LrCell::gru) seqmix::gru_step(a, o, options, st::two_thread_pool());
                          if (cell == LrCell::slstm) seqmix::slstm_step(a, o, options, st::two_thread_pool());
                        }
                      }});
  op.tokens = {0, 25, T - 1};
  return op;
}

// ---- mlstm -------------------------------------------------------------------------------------

Op lr_mlstm_op() {
  const index_t B = kLrB, T = kLrT, NH = 2, DK = 5, DV = 6;
  Op op;
  op.name = "mlstm";
  op.inputs = {lr_batch(random_field("q", {B, T, NH, DK}, 281)), lr_batch(random_field("k", {B, T, NH, DK}, 282)),
               lr_batch(random_field("v", {B, T, NH, DV}, 283)), lr_batch(random_field("i", {B, T, NH}, 284, -2.f, 2.f)),
               lr_batch(random_field("f", {B, T, NH}, 285, 0.f, 4.f)),
               lr_batch(random_field("initial_c", {B, NH, DK, DV}, 286, -0.5f, 0.5f, -1)),
               lr_batch(random_field("initial_n", {B, NH, DK}, 287, 0.f, 1.f, -1)),
               lr_batch(random_field("initial_m", {B, NH}, 288, -1.f, 1.f, -1))};
  op.inputs[5].state_pokes = {(1 * DK + 2) * DV + 3};
  op.inputs[6].state_pokes = {3};
  op.inputs[7].state_pokes = {1};
  op.outputs = {lr_batch(zero_field("h", {B, T, NH, DV})), lr_batch(zero_field("final_c", {B, NH, DK, DV}, -1)),
                lr_batch(zero_field("final_n", {B, NH, DK}, -1)), lr_batch(zero_field("final_m", {B, NH}, -1))};
  const auto args = [](const Fields& in) {
    return seqmix::MlstmInputs{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<3>(),
                               in[4].in<3>(), in[5].in<4>(), in[6].in<3>(), in[7].in<2>()};
  };
  const auto outs = [](Fields& out) {
    return seqmix::MlstmOutputs{out[0].out<4>(), out[1].out<4>(), out[2].out<3>(), out[3].out<2>()};
  };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::mlstm(args(in), outs(out)); };
  for (auto algorithm : {seqmix::MlstmAlgorithm::chunked, seqmix::MlstmAlgorithm::recurrent}) {
    seqmix::MlstmOptions options;
    options.chunk_size = 16;
    options.algorithm = algorithm;
    lr_add_threaded(op, algorithm == seqmix::MlstmAlgorithm::chunked ? "chunked" : "recurrent",
                    [=](const Fields& in, Fields& out, bool threads) { seqmix::mlstm(args(in), outs(out), options, lr_executor(threads)); });
  }
  op.forms.push_back({"mlstm_step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[5].data, out[2].data = in[6].data, out[3].data = in[7].data;
                        for (index_t t = 0; t < T; ++t)
                          seqmix::mlstm_step({in[0].in<4>().select(1, t), in[1].in<4>().select(1, t), in[2].in<4>().select(1, t),
                                              in[3].in<3>().select(1, t), in[4].in<3>().select(1, t)},
                                             {out[0].out<4>().select(1, t), out[1].out<4>(), out[2].out<3>(), out[3].out<2>()}, {},
                                             st::two_thread_pool());
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// ---- titans ------------------------------------------------------------------------------------

// HK = 1 key head shared by HV = 2 value heads; gates in range (non-finite ones are refused).
Op lr_titans_op(seqmix::TitansLoss loss) {
  const index_t B = kLrB, T = kLrT, HK = 1, HV = 2, K = 5, V = 6;
  const char* names[] = {"l2", "l1", "l3", "huber"};
  Op op;
  op.name = std::string("titans ") + names[static_cast<int>(loss)];
  op.inputs = {lr_batch(random_field("q", {B, T, HK, K}, 291)), lr_batch(random_field("k", {B, T, HK, K}, 292)),
               lr_batch(random_field("v", {B, T, HV, V}, 293)), lr_batch(random_field("alpha", {B, T, HV}, 294, 0.f, 0.2f)),
               lr_batch(random_field("eta", {B, T, HV}, 295, 0.f, 0.9f)), lr_batch(random_field("theta", {B, T, HV}, 296, 0.f, 0.2f)),
               lr_batch(random_field("initial_memory", {B, HV, K, V}, 297, -0.5f, 0.5f, -1)),
               lr_batch(random_field("initial_momentum", {B, HV, K, V}, 298, -0.1f, 0.1f, -1))};
  op.inputs[6].state_pokes = {(1 * K + 3) * V + 2};
  op.inputs[7].state_pokes = {(0 * K + 1) * V + 4};
  op.outputs = {lr_batch(zero_field("y", {B, T, HV, V})), lr_batch(zero_field("final_memory", {B, HV, K, V}, -1)),
                lr_batch(zero_field("final_momentum", {B, HV, K, V}, -1))};
  seqmix::TitansOptions base;
  base.loss = loss;
  base.chunk_size = 16;
  const auto args = [](const Fields& in) {
    return seqmix::TitansInputs{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<3>(),
                                in[4].in<3>(), in[5].in<3>(), in[6].in<4>(), in[7].in<4>()};
  };
  const auto outs = [](Fields& out) { return seqmix::TitansOutputs{out[0].out<4>(), out[1].out<4>(), out[2].out<4>()}; };
  op.reference = [=](const Fields& in, Fields& out) { seqmix::reference::titans(args(in), outs(out), base); };
  for (auto algorithm : {seqmix::TitansAlgorithm::chunked, seqmix::TitansAlgorithm::recurrent}) {
    if (loss != seqmix::TitansLoss::l2 && algorithm == seqmix::TitansAlgorithm::chunked) continue;  // recurrent only
    seqmix::TitansOptions options = base;
    options.algorithm = algorithm;
    lr_add_threaded(op, algorithm == seqmix::TitansAlgorithm::chunked ? "chunked" : "recurrent",
                    [=](const Fields& in, Fields& out, bool threads) { seqmix::titans(args(in), outs(out), options, lr_executor(threads)); });
  }
  op.forms.push_back({"titans_step", [=](const Fields& in, Fields& out) {
                        out[1].data = in[6].data, out[2].data = in[7].data;
                        for (index_t t = 0; t < T; ++t)
                          seqmix::titans_step({in[0].in<4>().select(1, t), in[1].in<4>().select(1, t), in[2].in<4>().select(1, t),
                                               in[3].in<3>().select(1, t), in[4].in<3>().select(1, t), in[5].in<3>().select(1, t)},
                                              {out[0].out<4>().select(1, t), out[1].out<4>(), out[2].out<4>()}, base,
                                              st::two_thread_pool());
                      }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

// ---- ttt_linear, ttt_mlp ------------------------------------------------------------------------

// mini_batch 8 (tokens 13 and 25 inside a mini-batch): reference and fast; mini_batch 1: the
// step as well (the step is a mini-batch of one).
Op lr_ttt_op(bool mlp, index_t mini_batch) {
  const index_t B = kLrB, T = kLrT, H = 2, K = 6, M = 8;
  Op op;
  op.name = std::string(mlp ? "ttt_mlp" : "ttt_linear") + " mini_batch=" + std::to_string(mini_batch);
  op.inputs = {lr_batch(random_field("q", {B, T, H, K}, 301)), lr_batch(random_field("k", {B, T, H, K}, 302)),
               lr_batch(random_field("v", {B, T, H, K}, 303)), lr_batch(random_field("eta", {B, T, H}, 304, 0.f, 0.1f)),
               lr_param("ln_weight", {H, K}, 305, 0.5f, 1.5f), lr_param("ln_bias", {H, K}, 306, -0.2f, 0.2f)};
  if (mlp) {
    op.inputs.push_back(lr_batch(random_field("initial_w1", {B, H, K, M}, 307, -0.3f, 0.3f, -1)));
    op.inputs.push_back(lr_batch(random_field("initial_w2", {B, H, M, K}, 308, -0.3f, 0.3f, -1)));
    op.inputs[7].state_pokes = {(1 * M + 3) * K + 2};
  } else {
    op.inputs.push_back(lr_batch(random_field("initial_w", {B, H, K, K}, 307, -0.3f, 0.3f, -1)));
  }
  op.inputs[6].state_pokes = {(0 * K + 2) * (mlp ? M : K) + 3};
  op.outputs = {lr_batch(zero_field("z", {B, T, H, K}))};
  if (mlp)
    op.outputs.push_back(lr_batch(zero_field("final_w1", {B, H, K, M}, -1))),
        op.outputs.push_back(lr_batch(zero_field("final_w2", {B, H, M, K}, -1)));
  else
    op.outputs.push_back(lr_batch(zero_field("final_w", {B, H, K, K}, -1)));
  seqmix::TttOptions options;
  options.mini_batch = mini_batch;
  const auto run = [=](const Fields& in, Fields& out, int form, bool threads) {
    if (mlp) {
      const seqmix::TttMlpInputs a{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<3>(), in[4].in<2>(),
                                   in[5].in<2>(), {},            in[6].in<4>(), in[7].in<4>()};
      const seqmix::TttMlpOutputs o{out[0].out<4>(), out[1].out<4>(), out[2].out<4>()};
      if (form == 0) seqmix::reference::ttt_mlp(a, o, options);
      else seqmix::ttt_mlp(a, o, options, lr_executor(threads));
    } else {
      const seqmix::TttLinearInputs a{in[0].in<4>(), in[1].in<4>(), in[2].in<4>(), in[3].in<3>(), in[4].in<2>(),
                                      in[5].in<2>(), {},            in[6].in<4>()};
      const seqmix::TttLinearOutputs o{out[0].out<4>(), out[1].out<4>()};
      if (form == 0) seqmix::reference::ttt_linear(a, o, options);
      else seqmix::ttt_linear(a, o, options, lr_executor(threads));
    }
  };
  op.reference = [=](const Fields& in, Fields& out) { run(in, out, 0, false); };
  lr_add_threaded(op, "fast", [=](const Fields& in, Fields& out, bool threads) { run(in, out, 1, threads); });
  if (mini_batch == 1)
    op.forms.push_back({"step", [=](const Fields& in, Fields& out) {
                          out[1].data = in[6].data;
                          if (mlp) out[2].data = in[7].data;
                          for (index_t t = 0; t < T; ++t) {
                            const seqmix::TttStepInputs a{in[0].in<4>().select(1, t), in[1].in<4>().select(1, t),
                                                          in[2].in<4>().select(1, t), in[3].in<3>().select(1, t),
                                                          in[4].in<2>(),              in[5].in<2>()};
                            if (mlp)
                              seqmix::ttt_mlp_step(a, {out[0].out<4>().select(1, t), out[1].out<4>(), out[2].out<4>()}, options,
                                                   st::two_thread_pool());
                            else
                              seqmix::ttt_linear_step(a, {out[0].out<4>().select(1, t), out[1].out<4>()}, options,
                                                      st::two_thread_pool());
                          }
                        }});
  op.tokens = {0, 13, 25, T - 1};
  return op;
}

}  // namespace

TEST_CASE("non-finite inputs: long_conv direct and step, causal", "[nonfinite][lti][long_conv]") {
  probe(lr_long_conv_op(seqmix::LongConvMethod::direct, 9));
}

TEST_CASE("non-finite inputs: long_conv fft, causal, earlier outputs within rounding", "[nonfinite][lti][long_conv]") {
  probe(lr_long_conv_op(seqmix::LongConvMethod::fft, 33));
}

TEST_CASE("non-finite inputs: long_conv bidirectional, direct and fft", "[nonfinite][lti][long_conv]") {
  probe(lr_long_conv_bidirectional_op(seqmix::LongConvMethod::direct));
  probe(lr_long_conv_bidirectional_op(seqmix::LongConvMethod::fft));
}

TEST_CASE("non-finite inputs: ssm_kernel convolution and ssm_step", "[nonfinite][lti][ssm_kernel]") {
  probe(lr_ssm_kernel_op(false));
  probe(lr_ssm_kernel_op(true));
}

TEST_CASE("non-finite inputs: s5 scan and step", "[nonfinite][lti][s5]") { probe(lr_s5_op()); }

TEST_CASE("non-finite inputs: hyena direct, fft and step", "[nonfinite][lti][hyena]") {
  probe(lr_hyena_op(seqmix::LongConvMethod::direct));
  probe(lr_hyena_op(seqmix::LongConvMethod::fft));
}

TEST_CASE("non-finite inputs: h3 direct and fft", "[nonfinite][lti][h3]") {
  probe(lr_h3_op(seqmix::LongConvMethod::direct));
  probe(lr_h3_op(seqmix::LongConvMethod::fft));
}

TEST_CASE("non-finite inputs: lstm, gru, slstm fast and step", "[nonfinite][rnn]") {
  for (LrCell cell : {LrCell::lstm, LrCell::gru, LrCell::slstm}) {
    probe(lr_rnn_op(cell, 1));
    probe(lr_rnn_op(cell, 2));
  }
}

TEST_CASE("non-finite inputs: mlstm chunked, recurrent and step", "[nonfinite][rnn][mlstm]") { probe(lr_mlstm_op()); }

TEST_CASE("non-finite inputs: titans chunked, recurrent, step and the Miras losses", "[nonfinite][rnn][titans]") {
  for (auto loss : {seqmix::TitansLoss::l2, seqmix::TitansLoss::l1, seqmix::TitansLoss::l3, seqmix::TitansLoss::huber})
    probe(lr_titans_op(loss));
}

TEST_CASE("non-finite inputs: ttt_linear and ttt_mlp fast and step", "[nonfinite][rnn][ttt]") {
  for (bool mlp : {false, true}) {
    probe(lr_ttt_op(mlp, 8));
    probe(lr_ttt_op(mlp, 1));
  }
}
