// Chunked-scan mixers of the chunked family: Mega (damped EMA + chunk-diagonal attention), Aaren
// (attention as a scan) and the parallel Newton solver of nonlinear recurrences. Every fast form
// against its plain-loop reference over ragged shapes, on 1 and 2 threads; prefill-then-steps
// equals one call; Newton equals the sequential loop and reports non-convergence; bad shapes name
// the argument.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/aaren/reference.hpp"
#include "seqmix/chunked/aaren/step.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/reference.hpp"
#include "seqmix/chunked/mega/step.hpp"
#include "seqmix/chunked/newton/fast.hpp"
#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix/chunked/newton/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

const seqmix::Executor& executor_for(int threads) {
  return threads == 1 ? seqmix::serial_executor() : static_cast<const seqmix::Executor&>(st::two_thread_pool());
}

// ---------------------------------------------------------------------------------------------
// Parallel Newton

template <class Cell>
struct NewtonData {
  std::vector<Tensor<float, 3>> streams;
  std::vector<Tensor<float, 1>> params;
  Tensor<float, 2> h0;
  NewtonData(index_t B, index_t T, index_t D, std::uint64_t seed) : h0(st::random_tensor<2>({B, D}, seed, -0.5f, 0.5f)) {
    for (int s = 0; s < Cell::kInputs; ++s) streams.push_back(st::random_tensor<3>({B, T, D}, seed + 1 + s, -1.f, 1.f));
    // Recurrent weights in [-1, 1]: nonlinear, contractive on average, as trained cells are.
    for (int s = 0; s < Cell::kParams; ++s) params.push_back(st::random_tensor<1>({D}, seed + 10 + s, -1.f, 1.f));
  }
  seqmix::NonlinearRecurrenceInputs<Cell> inputs(bool with_h0 = true) const {
    seqmix::NonlinearRecurrenceInputs<Cell> in;
    for (int s = 0; s < Cell::kInputs; ++s) in.inputs[s] = streams[s].cview();
    for (int s = 0; s < Cell::kParams; ++s) in.params[s] = params[s].cview();
    if (with_h0) in.h0 = h0.cview();
    return in;
  }
};

std::string describe_newton(const char* cell, index_t B, index_t T, index_t D, int threads, const char* split) {
  std::ostringstream s;
  s << cell << " B=" << B << " T=" << T << " D=" << D << " threads=" << threads << " split=" << split;
  return s.str();
}

template <class Cell>
void check_newton_against_sequential(index_t B, index_t T, index_t D) {
  const NewtonData<Cell> data(B, T, D, 100 + T + D);
  Tensor<float, 3> ref({B, T, D});
  Tensor<float, 2> ref_last({B, D});
  seqmix::reference::nonlinear_recurrence<Cell>(data.inputs(), {ref.view(), ref_last.view()});
  const seqmix::NewtonSplit splits[] = {seqmix::NewtonSplit::channels, seqmix::NewtonSplit::time};
  const char* split_names[] = {"channels", "time"};
  for (int threads : {1, 2})
    for (int s = 0; s < 2; ++s) {
      INFO(describe_newton(Cell::kName, B, T, D, threads, split_names[s]));
      Tensor<float, 3> h({B, T, D});
      Tensor<float, 2> last({B, D});
      seqmix::NonlinearRecurrenceNewtonOptions options;
      options.split = splits[s];
      options.max_iterations = 200;
      const seqmix::NewtonReport report =
          seqmix::nonlinear_recurrence_newton<Cell>(data.inputs(), {h.view(), last.view()}, options, executor_for(threads));
      INFO("iterations=" << report.iterations << " update=" << report.max_update << " residual=" << report.residual
                         << " message=" << report.message);
      REQUIRE(report.converged);
      REQUIRE(report.status == seqmix::NewtonStatus::converged);
      REQUIRE(report.residual <= 1e-5f);
      st::require_close("h", h.cview(), ref.cview(), 1e-5);
      st::require_close("h_last", last.cview(), ref_last.cview(), 1e-5);
    }
  // The fast sequential loop too.
  Tensor<float, 3> h({B, T, D});
  seqmix::nonlinear_recurrence<Cell>(data.inputs(), {h.view(), {}}, st::two_thread_pool());
  st::require_close("sequential h", h.cview(), ref.cview(), 1e-5);
}

TEST_CASE("newton equals the sequential loop for the minGRU cell", "[chunked][newton]") {
  for (index_t T : {1, 17, 1024, 4096}) check_newton_against_sequential<seqmix::MinGruCell>(1, T, 16);
  check_newton_against_sequential<seqmix::MinGruCell>(2, 257, 37);
  check_newton_against_sequential<seqmix::MinGruCell>(3, 100, 130);
}

TEST_CASE("newton equals the sequential loop for the diagonal LSTM cell", "[chunked][newton]") {
  for (index_t T : {1, 17, 1024, 4096}) {
    if (T > 1024 && st::small_test_scale()) continue;  // 60 s under the sanitizers
    check_newton_against_sequential<seqmix::DiagLstmCell>(1, T, 16);
  }
  check_newton_against_sequential<seqmix::DiagLstmCell>(2, 300, 21);
}

TEST_CASE("newton reference iteration matches the fast one", "[chunked][newton]") {
  const index_t B = 2, T = 65, D = 19;
  const NewtonData<seqmix::MinGruCell> data(B, T, D, 7);
  Tensor<float, 3> ref({B, T, D}), h({B, T, D});
  const auto r_ref = seqmix::reference::nonlinear_recurrence_newton<seqmix::MinGruCell>(data.inputs(), {ref.view(), {}});
  const auto r = seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(data.inputs(), {h.view(), {}}, {}, st::two_thread_pool());
  REQUIRE(r_ref.converged);
  REQUIRE(r.converged);
  CHECK(std::abs(r.iterations - r_ref.iterations) <= 1);
  st::require_close("h", h.cview(), ref.cview(), 1e-5);
}

TEST_CASE("newton reports non-convergence and never returns a silent iterate", "[chunked][newton]") {
  const index_t B = 1, T = 512, D = 8;
  const NewtonData<seqmix::MinGruCell> data(B, T, D, 11);
  Tensor<float, 3> ref({B, T, D});
  seqmix::reference::nonlinear_recurrence<seqmix::MinGruCell>(data.inputs(), {ref.view(), {}});
  for (int threads : {1, 2})
    for (auto split : {seqmix::NewtonSplit::channels, seqmix::NewtonSplit::time}) {
      INFO("threads=" << threads << " split=" << static_cast<int>(split));
      seqmix::NonlinearRecurrenceNewtonOptions options;
      options.max_iterations = 2;
      options.split = split;
      Tensor<float, 3> h({B, T, D});
      Tensor<float, 2> last({B, D});
      auto report = seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(data.inputs(), {h.view(), last.view()}, options,
                                                                           executor_for(threads));
      CHECK_FALSE(report.converged);
      CHECK(report.status == seqmix::NewtonStatus::iteration_limit);
      CHECK(report.iterations == 2);
      CHECK(report.message.find("did not converge") != std::string::npos);
      CHECK_FALSE(report.used_fallback);
      CHECK(std::isnan(h(0, T - 1, 0)));
      CHECK(std::isnan(last(0, 0)));
      CHECK(std::isnan(report.residual));

      options.fallback = seqmix::NewtonFallback::sequential;
      report = seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(data.inputs(), {h.view(), {}}, options,
                                                                      executor_for(threads));
      CHECK_FALSE(report.converged);
      CHECK(report.used_fallback);
      CHECK(report.residual <= 1e-6f);
      st::require_close("fallback h", h.cview(), ref.cview(), 1e-5);
    }
}

TEST_CASE("newton reports NaN inputs as non-finite", "[chunked][newton]") {
  NewtonData<seqmix::MinGruCell> data(1, 64, 16, 3);
  data.streams[0](0, 30, 5) = std::nanf("");
  for (auto split : {seqmix::NewtonSplit::channels, seqmix::NewtonSplit::time}) {
    seqmix::NonlinearRecurrenceNewtonOptions options;
    options.split = split;
    Tensor<float, 3> h({1, 64, 16});
    const auto report = seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(data.inputs(), {h.view(), {}}, options,
                                                                                st::two_thread_pool());
    CHECK(report.status == seqmix::NewtonStatus::non_finite);
    CHECK(report.message.find("non-finite") != std::string::npos);
  }
}

TEST_CASE("newton with jacobian clamping and warm start converges to the same answer", "[chunked][newton]") {
  const index_t B = 1, T = 333, D = 20;
  const NewtonData<seqmix::DiagLstmCell> data(B, T, D, 5);
  Tensor<float, 3> ref({B, T, D}), h({B, T, D});
  seqmix::reference::nonlinear_recurrence<seqmix::DiagLstmCell>(data.inputs(), {ref.view(), {}});
  seqmix::NonlinearRecurrenceNewtonOptions options;
  options.jacobian_clamp = 0.5f;
  options.max_iterations = 400;
  auto report = seqmix::nonlinear_recurrence_newton<seqmix::DiagLstmCell>(data.inputs(), {h.view(), {}}, options, st::two_thread_pool());
  REQUIRE(report.converged);
  st::require_close("clamped", h.cview(), ref.cview(), 1e-5);
  options = {};
  options.warm_start = true;  // h already holds the solution: one update confirms it
  report = seqmix::nonlinear_recurrence_newton<seqmix::DiagLstmCell>(data.inputs(), {h.view(), {}}, options, st::two_thread_pool());
  REQUIRE(report.converged);
  CHECK(report.iterations <= 2);
  st::require_close("warm", h.cview(), ref.cview(), 1e-5);
}

TEST_CASE("newton prefill then steps equals one call", "[chunked][newton]") {
  const index_t B = 2, T = 40, D = 21, split = 29;
  const NewtonData<seqmix::MinGruCell> data(B, T, D, 9);
  Tensor<float, 3> ref({B, T, D});
  seqmix::reference::nonlinear_recurrence<seqmix::MinGruCell>(data.inputs(), {ref.view(), {}});
  auto prefix = data.inputs();
  for (auto& s : prefix.inputs) s = s.slice(1, 0, split);
  Tensor<float, 3> h({B, split, D});
  Tensor<float, 2> state({B, D});
  REQUIRE(seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(prefix, {h.view(), state.view()}).converged);
  for (index_t t = split; t < T; ++t) {
    seqmix::NonlinearRecurrenceStepInputs<seqmix::MinGruCell> step;
    for (int s = 0; s < 2; ++s) step.inputs[s] = data.streams[s].cview().select(1, t);
    for (int s = 0; s < 2; ++s) step.params[s] = data.params[s].cview();
    seqmix::nonlinear_recurrence_step<seqmix::MinGruCell>(step, state.view());
    st::require_close("step", state.cview(), ref.cview().select(1, t), 1e-5);
  }
}

TEST_CASE("newton bad shapes name the argument", "[chunked][newton][errors]") {
  const NewtonData<seqmix::MinGruCell> data(2, 10, 8, 1);
  Tensor<float, 3> h({2, 10, 8}), bad_h({2, 9, 8});
  Tensor<float, 3> bad_u({2, 10, 7});
  Tensor<float, 1> bad_w({5});
  Tensor<float, 2> bad_h0({1, 8});
  auto in = data.inputs();
  st::require_shape_error("h", [&] { seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(in, {bad_h.view(), {}}); });
  auto in_u = in;
  in_u.inputs[1] = bad_u.cview();
  st::require_shape_error("u", [&] { seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(in_u, {h.view(), {}}); });
  st::require_shape_error("u", [&] { seqmix::reference::nonlinear_recurrence<seqmix::MinGruCell>(in_u, {h.view(), {}}); });
  auto in_w = in;
  in_w.params[1] = bad_w.cview();
  st::require_shape_error("w", [&] { seqmix::nonlinear_recurrence<seqmix::MinGruCell>(in_w, {h.view(), {}}); });
  auto in_h0 = in;
  in_h0.h0 = bad_h0.cview();
  st::require_shape_error("h0", [&] { seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(in_h0, {h.view(), {}}); });
  seqmix::NonlinearRecurrenceNewtonOptions options;
  options.tol = -1.f;
  st::require_shape_error("options.tol", [&] { seqmix::nonlinear_recurrence_newton<seqmix::MinGruCell>(in, {h.view(), {}}, options); });
}

// ---------------------------------------------------------------------------------------------
// Aaren

struct AarenData {
  index_t B, T, H, Dk, Dv;
  Tensor<float, 2> query;
  Tensor<float, 4> k, v;
  Tensor<float, 2> m0, l0;
  Tensor<float, 3> acc0;
  AarenData(index_t B_, index_t T_, index_t H_, index_t Dk_, index_t Dv_, std::uint64_t seed)
      : B(B_), T(T_), H(H_), Dk(Dk_), Dv(Dv_),
        query(st::random_tensor<2>({H_, Dk_}, seed, -2.f, 2.f)),
        k(st::random_tensor<4>({B_, T_, H_, Dk_}, seed + 1, -2.f, 2.f)),
        v(st::random_tensor<4>({B_, T_, H_, Dv_}, seed + 2)),
        m0(st::random_tensor<2>({B_, H_}, seed + 3)),
        l0(st::random_tensor<2>({B_, H_}, seed + 4, 0.5f, 2.f)),
        acc0(st::random_tensor<3>({B_, H_, Dv_}, seed + 5)) {}
  seqmix::AarenInputs inputs(bool with_state) const {
    seqmix::AarenInputs in{query.cview(), k.cview(), v.cview(), {}, {}};
    if (with_state) in.initial_state = {m0.cview(), l0.cview(), acc0.cview()};
    return in;
  }
};

TEST_CASE("aaren fast and step match the prefix-by-prefix reference", "[chunked][aaren]") {
  struct Case { index_t B, T, H, Dk, Dv; };
  const Case cases[] = {{1, 1, 1, 4, 3}, {2, 37, 3, 17, 5}, {1, 300, 2, 64, 64}, {3, 129, 1, 8, 33}};
  for (const Case& c : cases)
    for (bool with_state : {false, true}) {
      const AarenData data(c.B, c.T, c.H, c.Dk, c.Dv, 40 + c.T);
      Tensor<float, 4> ref({c.B, c.T, c.H, c.Dv});
      Tensor<float, 2> rm({c.B, c.H}), rl({c.B, c.H});
      Tensor<float, 3> racc({c.B, c.H, c.Dv});
      seqmix::reference::aaren(data.inputs(with_state), {ref.view(), {rm.view(), rl.view(), racc.view()}, {}});
      for (int threads : {1, 2})
        for (auto split : {seqmix::AarenSplit::heads, seqmix::AarenSplit::time}) {
          INFO("B=" << c.B << " T=" << c.T << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " state=" << with_state
                    << " threads=" << threads << " split=" << static_cast<int>(split));
          seqmix::AarenOptions options;
          options.split = split;
          options.chunks = split == seqmix::AarenSplit::time ? 5 : 0;
          Tensor<float, 4> o({c.B, c.T, c.H, c.Dv});
          Tensor<float, 2> m({c.B, c.H}), l({c.B, c.H});
          Tensor<float, 3> acc({c.B, c.H, c.Dv});
          seqmix::aaren(data.inputs(with_state), {o.view(), {m.view(), l.view(), acc.view()}, {}}, options, executor_for(threads));
          st::require_close("o", o.cview(), ref.cview(), 1e-5);
          // The state is defined up to the common factor exp(m): compare acc / l and the max.
          st::require_close("m", m.cview(), rm.cview(), 1e-5);
          st::require_close("l", l.cview(), rl.cview(), 1e-4);
          st::require_close("acc", acc.cview(), racc.cview(), 1e-4);
        }
      // Prefill of part of the sequence, then steps.
      const index_t split_at = c.T / 2;
      seqmix::AarenInputs prefix = data.inputs(with_state);
      prefix.k = prefix.k.slice(1, 0, split_at), prefix.v = prefix.v.slice(1, 0, split_at);
      Tensor<float, 4> o({c.B, split_at, c.H, c.Dv});
      Tensor<float, 2> m({c.B, c.H}), l({c.B, c.H});
      Tensor<float, 3> acc({c.B, c.H, c.Dv}), ot({c.B, c.H, c.Dv});
      const seqmix::AarenState state{m.view(), l.view(), acc.view()};
      if (!with_state) seqmix::aaren_reset_state(state);
      seqmix::aaren(prefix, {o.view(), state, {}}, {}, st::two_thread_pool());
      for (index_t t = split_at; t < c.T; ++t) {
        seqmix::aaren_step({data.query.cview(), data.k.cview().select(1, t), data.v.cview().select(1, t), {}}, ot.view(), state);
        st::require_close("step o", ot.cview(), ref.cview().select(1, t), 1e-5);
      }
    }
}

TEST_CASE("aaren bad shapes name the argument", "[chunked][aaren][errors]") {
  const AarenData data(2, 8, 3, 4, 5, 1);
  Tensor<float, 4> o({2, 8, 3, 5}), bad_o({2, 8, 3, 4});
  Tensor<float, 2> bad_q({2, 4}), bad_m({2, 2});
  st::require_shape_error("o", [&] { seqmix::aaren(data.inputs(false), {bad_o.view(), {}, {}}); });
  auto in = data.inputs(false);
  in.query = bad_q.cview();
  st::require_shape_error("query", [&] { seqmix::aaren(in, {o.view(), {}, {}}); });
  st::require_shape_error("query", [&] { seqmix::reference::aaren(in, {o.view(), {}, {}}); });
  in = data.inputs(true);
  in.initial_state.m = bad_m.cview();
  st::require_shape_error("initial_state.m", [&] { seqmix::aaren(in, {o.view(), {}, {}}); });
}

// ---------------------------------------------------------------------------------------------
// Mega

struct MegaData {
  index_t B, T, D, N, H, Dv;
  Tensor<float, 3> x, s0;
  Tensor<float, 4> v;
  Tensor<float, 2> alpha, delta, beta, eta;
  Tensor<float, 1> qs, qb, ks, kb;
  MegaData(index_t B_, index_t T_, index_t D_, index_t N_, index_t H_, index_t Dv_, std::uint64_t seed)
      : B(B_), T(T_), D(D_), N(N_), H(H_), Dv(Dv_),
        x(st::random_tensor<3>({B_, T_, D_}, seed)), s0(st::random_tensor<3>({B_, D_, N_}, seed + 1)),
        v(st::random_tensor<4>({B_, T_, H_, Dv_}, seed + 2)),
        alpha(st::random_tensor<2>({D_, N_}, seed + 3, -3.f, 3.f)), delta(st::random_tensor<2>({D_, N_}, seed + 4, -3.f, 3.f)),
        beta(st::random_tensor<2>({D_, N_}, seed + 5)), eta(st::random_tensor<2>({D_, N_}, seed + 6)),
        qs(st::random_tensor<1>({D_}, seed + 7, 0.f, 2.f)), qb(st::random_tensor<1>({D_}, seed + 8)),
        ks(st::random_tensor<1>({D_}, seed + 9, 0.f, 2.f)), kb(st::random_tensor<1>({D_}, seed + 10)) {}
  seqmix::MegaParams params() const {
    return {alpha.cview(), delta.cview(), beta.cview(), eta.cview(), qs.cview(), qb.cview(), ks.cview(), kb.cview()};
  }
  seqmix::MegaInputs inputs(bool with_state) const {
    seqmix::MegaInputs in{x.cview(), v.cview(), params(), {}};
    if (with_state) in.initial_state = s0.cview();
    return in;
  }
};

TEST_CASE("mega fast and step match the reference", "[chunked][mega]") {
  struct Case { index_t B, T, D, N, H, Dv, c; };
  const Case cases[] = {{1, 1, 4, 2, 1, 3, 4}, {2, 45, 24, 3, 3, 5, 16}, {1, 200, 70, 16, 2, 16, 64}, {2, 33, 9, 1, 3, 7, 1}};
  for (const Case& c : cases)
    for (bool with_state : {false, true}) {
      const MegaData data(c.B, c.T, c.D, c.N, c.H, c.Dv, 60 + c.T);
      seqmix::MegaOptions options;
      options.chunk_size = c.c;
      const index_t Dk = c.D / c.H;
      Tensor<float, 4> ref({c.B, c.T, c.H, c.Dv}), rk({c.B, c.c, c.H, Dk}), rv({c.B, c.c, c.H, c.Dv});
      Tensor<float, 3> rema({c.B, c.T, c.D}), rstate({c.B, c.D, c.N});
      seqmix::reference::mega(data.inputs(with_state), {ref.view(), rema.view(), rstate.view(), rk.view(), rv.view()}, options);
      for (int threads : {1, 2}) {
        INFO("B=" << c.B << " T=" << c.T << " D=" << c.D << " N=" << c.N << " H=" << c.H << " c=" << c.c
                  << " state=" << with_state << " threads=" << threads);
        Tensor<float, 4> o({c.B, c.T, c.H, c.Dv});
        Tensor<float, 3> ema({c.B, c.T, c.D}), state({c.B, c.D, c.N});
        seqmix::mega(data.inputs(with_state), {o.view(), ema.view(), state.view(), {}, {}}, options, executor_for(threads));
        st::require_close("o", o.cview(), ref.cview(), 1e-4);
        st::require_close("ema", ema.cview(), rema.cview(), 1e-5);
        st::require_close("final_state", state.cview(), rstate.cview(), 1e-5);
      }
      // Prefill then steps (the prefill ends inside a chunk when T/2 is not a multiple of c).
      const index_t split_at = c.T / 2;
      seqmix::MegaInputs prefix = data.inputs(with_state);
      prefix.x = prefix.x.slice(1, 0, split_at), prefix.v = prefix.v.slice(1, 0, split_at);
      Tensor<float, 4> o({c.B, split_at, c.H, c.Dv}), kc({c.B, c.c, c.H, Dk}), vc({c.B, c.c, c.H, c.Dv});
      Tensor<float, 3> state({c.B, c.D, c.N}), ot({c.B, c.H, c.Dv});
      seqmix::mega(prefix, {o.view(), {}, state.view(), kc.view(), vc.view()}, options, st::two_thread_pool());
      for (index_t t = split_at; t < c.T; ++t) {
        seqmix::MegaStepInputs step{data.x.cview().select(1, t), data.v.cview().select(1, t), data.params(), t};
        seqmix::mega_step(step, ot.view(), {state.view(), kc.view(), vc.view()}, options);
        st::require_close("step o", ot.cview(), ref.cview().select(1, t), 1e-4);
      }
    }
}

TEST_CASE("mega bad shapes name the argument", "[chunked][mega][errors]") {
  const MegaData data(2, 10, 12, 3, 3, 4, 1);
  Tensor<float, 4> o({2, 10, 3, 4}), bad_o({2, 10, 3, 5}), bad_v({2, 10, 5, 4});
  Tensor<float, 2> bad_eta({12, 2});
  st::require_shape_error("o", [&] { seqmix::mega(data.inputs(false), {bad_o.view(), {}, {}, {}, {}}); });
  auto in = data.inputs(false);
  in.params.eta = bad_eta.cview();
  st::require_shape_error("params.eta", [&] { seqmix::mega(in, {o.view(), {}, {}, {}, {}}); });
  st::require_shape_error("params.eta", [&] { seqmix::reference::mega(in, {o.view(), {}, {}, {}, {}}); });
  in = data.inputs(false);
  in.v = bad_v.cview();
  st::require_shape_error("v", [&] { seqmix::mega(in, {o.view(), {}, {}, {}, {}}); });
  seqmix::MegaOptions options;
  options.chunk_size = 0;
  st::require_shape_error("options.chunk_size", [&] { seqmix::mega(data.inputs(false), {o.view(), {}, {}, {}, {}}, options); });
}

}  // namespace
