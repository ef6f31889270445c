// ssd (Mamba-2): the chunked and recurrent prefill and the decode step against the reference
// recurrence, over a shape table straddling the chunk size (T) and the SIMD width (P, N).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "seqmix/chunked/streaming.hpp"  // StreamTraits: the per-token views of a call
#include "seqmix/core/parallel.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix/ssm/ssd/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

// The chunked form reassociates sums over N and over a chunk's tokens and uses the vector exp;
// the worst error measured over this file's cases is 9e-7 relative to max(1, max|ref|)
// (AVX-512 and SSE2), chunk sizes up to 300 included.
constexpr double kTol = 5e-6;

// Which optional inputs a case gives (bit flags keep the table short).
enum Optional : unsigned { kD = 1, kZ = 2, kDtBias = 4, kState = 8, kSoftplus = 16, kAll = 31 };

struct SsdCase {
  index_t B, T, H, P, N, G;
  unsigned optional;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " H=" << H << " P=" << P << " N=" << N << " G=" << G
      << " D=" << bool(optional & kD) << " z=" << bool(optional & kZ) << " dt_bias=" << bool(optional & kDtBias)
      << " state=" << bool(optional & kState) << " softplus=" << bool(optional & kSoftplus) << " seed=" << seed;
    return s.str();
  }
};

// T in {1, 17, 64, 65, 300, 2048} (below, at and past whole chunks of the default 32 and of 64,
// ragged tails; T=1 also below the automatic switch to the chunked form at 16); P and N
// off the SIMD width (24, 80 = 5 AVX-512 vectors, 7 and 5 below one vector); G in {1, 2}; B in
// {1, 3}; the optional inputs cycle through all 32 combinations across the table.
std::vector<SsdCase> ssd_cases() {
  struct Head {
    index_t H, P, N, G;
  };
  const index_t Ts[] = {1, 17, 64, 65, 300, 2048};
  const Head heads[] = {{4, 24, 80, 2}, {2, 16, 16, 1}, {4, 7, 5, 2}, {3, 33, 20, 1}};
  std::vector<SsdCase> cases;
  std::uint64_t seed = 1;
  for (index_t T : Ts)
    for (const Head& s : heads) {
      const index_t B = (seed % 3 == 0) ? 3 : 1;
      if (T == 2048 && (B == 3 || s.P == 24) && st::small_test_scale()) continue;
      const unsigned optional = static_cast<unsigned>((seed * 7) % 32);
      cases.push_back({B, T, s.H, s.P, s.N, s.G, optional, seed});
      ++seed;
    }
  cases.push_back({3, 65, 4, 24, 80, 2, kAll, 90});
  cases.push_back({1, 65, 4, 24, 80, 1, 0, 91});
  // A model-sized head (Mamba-2: P = 64, N = 128), 4 heads per group, and every T up to the switch.
  cases.push_back({1, 300, 8, 64, 128, 2, kAll, 92});
  for (index_t T = 2; T <= 17; ++T) cases.push_back({1, T, 2, 16, 16, 1, kAll, 100 + static_cast<std::uint64_t>(T)});
  return cases;
}

struct SsdData {
  Tensor<float, 4> x, z, Bm, Cm, state;
  Tensor<float, 3> dt;
  Tensor<float, 1> A, D, dt_bias;

  explicit SsdData(const SsdCase& c)
      : x(st::random_tensor<4>({c.B, c.T, c.H, c.P}, c.seed * 20 + 1)),
        z(st::random_tensor<4>({c.B, c.T, c.H, c.P}, c.seed * 20 + 2, -3.f, 3.f)),
        Bm(st::random_tensor<4>({c.B, c.T, c.G, c.N}, c.seed * 20 + 3)),
        Cm(st::random_tensor<4>({c.B, c.T, c.G, c.N}, c.seed * 20 + 4)),
        state(st::random_tensor<4>({c.B, c.H, c.P, c.N}, c.seed * 20 + 5)),
        // dt > 0 without softplus; with it, dt + bias spans both sides of 0 (Mamba-2 initializes
        // dt_bias so that softplus lands in [0.001, 0.1]; wider here to exercise strong decays).
        dt((c.optional & kSoftplus) ? st::random_tensor<3>({c.B, c.T, c.H}, c.seed * 20 + 6, -4.f, 1.f)
                                    : st::random_tensor<3>({c.B, c.T, c.H}, c.seed * 20 + 6, 0.001f, 0.5f)),
        A(st::random_tensor<1>({c.H}, c.seed * 20 + 7, -4.f, -0.05f)),
        D(st::random_tensor<1>({c.H}, c.seed * 20 + 8)),
        dt_bias((c.optional & kSoftplus) ? st::random_tensor<1>({c.H}, c.seed * 20 + 9, -2.f, 2.f)
                                         : st::random_tensor<1>({c.H}, c.seed * 20 + 9, 0.f, 0.1f)) {}

  seqmix::SsdInputs inputs(const SsdCase& c) const {
    seqmix::SsdInputs in;
    in.x = x.view();
    in.dt = dt.view();
    in.A = A.view();
    in.Bm = Bm.view();
    in.Cm = Cm.view();
    if (c.optional & kD) in.D = D.view();
    if (c.optional & kZ) in.z = z.view();
    if (c.optional & kDtBias) in.dt_bias = dt_bias.view();
    if (c.optional & kState) in.initial_state = state.view();
    return in;
  }

  // Tokens [t0, t0 + n) as prefill inputs (the state comes from the caller).
  seqmix::SsdInputs slice(const SsdCase& c, index_t t0, index_t n) const {
    seqmix::SsdInputs in = seqmix::StreamTraits<seqmix::SsdInputs>::slice(inputs(c), t0, n);
    in.initial_state = {};
    return in;
  }

  // Token t as decode-step inputs.
  seqmix::SsdStepInputs step_inputs(const SsdCase& c, index_t t) const {
    const seqmix::SsdInputs in = inputs(c);
    seqmix::SsdStepInputs s;
    s.x = in.x.select(1, t);
    s.dt = in.dt.select(1, t);
    s.A = in.A;
    s.Bm = in.Bm.select(1, t);
    s.Cm = in.Cm.select(1, t);
    s.D = in.D;
    if (in.z.has_value()) s.z = in.z.select(1, t);
    s.dt_bias = in.dt_bias;
    return s;
  }
};

seqmix::SsdOptions options_of(const SsdCase& c, seqmix::SsdAlgorithm algorithm = seqmix::SsdAlgorithm::automatic,
                              index_t chunk_size = seqmix::SsdOptions{}.chunk_size) {
  seqmix::SsdOptions options;
  options.dt_softplus = (c.optional & kSoftplus) != 0;
  options.algorithm = algorithm;
  options.chunk_size = chunk_size;
  return options;
}

template <std::size_t R>
void require_close(const char* what, const seqmix::ConstView<float, R>& out, const seqmix::ConstView<float, R>& ref,
                   double tol = kTol) {
  st::require_close(what, out, ref, tol);
}

const seqmix::ThreadPool& pool() { return st::two_thread_pool(); }

struct Reference {
  Tensor<float, 4> y, state;
  Reference(const SsdCase& c, const SsdData& data) : y({c.B, c.T, c.H, c.P}), state({c.B, c.H, c.P, c.N}) {
    seqmix::reference::ssd(data.inputs(c), {y.view(), state.view()}, options_of(c));
  }
};

const char* algorithm_name(seqmix::SsdAlgorithm a) {
  return a == seqmix::SsdAlgorithm::chunked ? "chunked" : a == seqmix::SsdAlgorithm::recurrent ? "recurrent" : "automatic";
}

}  // namespace

TEST_CASE("ssd fast forms match the reference over the shape table", "[ssd]") {
  using seqmix::SsdAlgorithm;
  for (const SsdCase& c : ssd_cases()) {
    INFO(c.describe());
    const SsdData data(c);
    const Reference ref(c, data);
    for (SsdAlgorithm algorithm : {SsdAlgorithm::automatic, SsdAlgorithm::chunked, SsdAlgorithm::recurrent}) {
      for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool())}) {
        INFO("algorithm=" << algorithm_name(algorithm) << " threads=" << executor->concurrency());
        Tensor<float, 4> y({c.B, c.T, c.H, c.P}), s({c.B, c.H, c.P, c.N});
        seqmix::ssd(data.inputs(c), {y.view(), s.view()}, options_of(c, algorithm), *executor);
        require_close<4>("y", y.view(), ref.y.view());
        require_close<4>("final_state", s.view(), ref.state.view());
      }
    }
  }
}

TEST_CASE("ssd chunk sizes 16, 32, 64, 128 (and odd ones) agree with the reference", "[ssd]") {
  const SsdCase cases[] = {{2, 300, 4, 24, 80, 2, kAll, 101}, {1, 129, 2, 16, 32, 1, kSoftplus | kState, 102}};
  for (const SsdCase& c : cases) {
    INFO(c.describe());
    const SsdData data(c);
    const Reference ref(c, data);
    for (index_t chunk : {16, 32, 64, 128, 1, 7, 1000}) {
      INFO("chunk_size=" << chunk);
      Tensor<float, 4> y({c.B, c.T, c.H, c.P}), s({c.B, c.H, c.P, c.N});
      seqmix::ssd(data.inputs(c), {y.view(), s.view()}, options_of(c, seqmix::SsdAlgorithm::chunked, chunk), pool());
      require_close<4>("y", y.view(), ref.y.view());
      require_close<4>("final_state", s.view(), ref.state.view());
    }
  }
}

// The chunked form's products run on register tiles of 1-5 vectors of P and 1-8 rows
// (ssm/ssd/gemm.hpp): P spans every panel split at AVX-512 width (48 = 3 vectors, 80 = 5,
// 96 = 4 + 2, 112 = 4 + 3, 144 = 4 + 5, 23 = 1 + a scalar tail) and at SSE2 / AVX2 widths, N
// (the state product's rows) a multiple of no tile height, chunks off the vector width (the
// decay mask's padded rows) with a ragged last chunk.
TEST_CASE("ssd chunked register tiles: every panel width and ragged rows against the reference", "[ssd]") {
  const index_t Ps[] = {48, 80, 96, 112, 144, 23};
  std::uint64_t seed = 150;
  for (index_t P : Ps)
    for (index_t chunk : {33, 64}) {
      const SsdCase c{1, 101, 2, P, 37, 1, kAll, seed++};
      INFO(c.describe() << " chunk_size=" << chunk);
      const SsdData data(c);
      const Reference ref(c, data);
      Tensor<float, 4> y({c.B, c.T, c.H, c.P}), s({c.B, c.H, c.P, c.N});
      seqmix::ssd(data.inputs(c), {y.view(), s.view()}, options_of(c, seqmix::SsdAlgorithm::chunked, chunk),
                  seqmix::serial_executor());
      require_close<4>("y", y.view(), ref.y.view());
      require_close<4>("final_state", s.view(), ref.state.view());
    }
}

// The chunked form keeps its C B^T tiles (calling thread) and each parallel block's chunk scratch
// per thread across calls (SsdCbKeep, SsdTaskKeep in ssm/ssd/chunked.hpp). Calls whose shapes
// grow and shrink (tiles, chunk size, P, N), one thread and two, a NaN in between, then
// ssd_release_thread_scratch: each against the reference, and bit for bit a call on a fresh
// thread (nothing kept).
TEST_CASE("ssd chunked: the kept per-thread memory survives shape changes and is released", "[ssd]") {
  using seqmix::detail::SsdCbKeep;
  using seqmix::detail::SsdTaskKeep;
  struct Shaped {
    SsdCase c;
    index_t chunk;
  };
  const Shaped cases[] = {{{1, 300, 4, 24, 80, 2, kAll, 120}, 64},
                          {{2, 65, 2, 16, 16, 1, kSoftplus | kState, 121}, 32},
                          {{1, 1000, 3, 33, 20, 1, kAll, 122}, 32},
                          {{1, 70, 8, 64, 128, 2, kD | kZ, 123}, 128}};
  struct Result {
    Tensor<float, 4> y, state;
  };
  const auto run = [](const Shaped& s, const SsdData& data, const seqmix::Executor& executor) {
    const SsdCase& c = s.c;
    Result out{Tensor<float, 4>({c.B, c.T, c.H, c.P}), Tensor<float, 4>({c.B, c.H, c.P, c.N})};
    seqmix::ssd(data.inputs(c), {out.y.view(), out.state.view()}, options_of(c, seqmix::SsdAlgorithm::chunked, s.chunk),
                executor);
    return out;
  };
  std::thread([&] {  // a thread of its own: nothing kept before, nothing left for the other cases
    for (int round = 0; round < 2; ++round) {
      for (const Shaped& s : cases) {
        INFO(s.c.describe() << " chunk_size=" << s.chunk << " round " << round);
        const SsdData data(s.c);
        const Reference ref(s.c, data);
        Result fresh;
        std::thread([&] { fresh = run(s, data, seqmix::serial_executor()); }).join();
        for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool())}) {
          INFO("threads=" << executor->concurrency());
          const Result out = run(s, data, *executor);
          require_close<4>("y", out.y.view(), ref.y.view());
          require_close<4>("final_state", out.state.view(), ref.state.view());
          if (executor->concurrency() == 1) {
            require_close<4>("y against a fresh thread", out.y.view(), fresh.y.view(), 0.0);
            require_close<4>("final_state against a fresh thread", out.state.view(), fresh.state.view(), 0.0);
          }
        }
      }
      {  // a second call of the same shape runs in the kept memory (Eigen's matrices are not
         // allocated by operator new: the allocation-counting tests cannot see them)
        const SsdData data(cases[3].c);
        run(cases[3], data, seqmix::serial_executor());
        const float* tiles = SsdCbKeep::slot().data.get();
        const float* lhs = SsdTaskKeep::slot().chunk->lhs.data();
        const float* rhs = SsdTaskKeep::slot().chunk->rhs.data();
        run(cases[3], data, seqmix::serial_executor());
        CHECK(SsdCbKeep::slot().data.get() == tiles);
        CHECK(SsdTaskKeep::slot().chunk->lhs.data() == lhs);
        CHECK(SsdTaskKeep::slot().chunk->rhs.data() == rhs);
      }
      if (round == 0) {  // NaN left in the kept memory must not reach the second round
        SsdData poisoned(cases[0].c);
        poisoned.x.view()(0, 5, 1, 3) = std::nanf("");
        poisoned.Bm.view()(0, 7, 0, 2) = std::nanf("");
        const Result out = run(cases[0], poisoned, seqmix::serial_executor());
        CHECK(std::isnan(out.y.view()(0, 7, 1, 3)));
      }
      CHECK(SsdCbKeep::slot().bytes() > 0);
      CHECK(SsdTaskKeep::slot().bytes() > 0);
      seqmix::ssd_release_thread_scratch();
      CHECK(SsdCbKeep::slot().bytes() == 0);
      CHECK(SsdTaskKeep::slot().bytes() == 0);
    }
  }).join();
}

TEST_CASE("ssd one call equals prefill(T1) + prefill(T2) + decode steps", "[ssd]") {
  struct Split {
    SsdCase c;
    index_t T1, T2;  // the remaining T - T1 - T2 tokens go through ssd_step
  };
  const Split splits[] = {
      {{1, 300, 4, 24, 80, 2, kAll, 201}, 100, 150},
      {{3, 150, 4, 24, 80, 1, kD | kZ | kSoftplus, 202}, 65, 64},
      {{2, 40, 3, 33, 20, 1, kState | kDtBias, 203}, 17, 1},
      {{1, 20, 2, 16, 16, 1, kAll, 204}, 0, 5},
  };
  for (const Split& split : splits) {
    const SsdCase& c = split.c;
    INFO(c.describe() << " T1=" << split.T1 << " T2=" << split.T2);
    const SsdData data(c);
    const Reference ref(c, data);
    Tensor<float, 4> y({c.B, c.T, c.H, c.P});
    // The state is carried in place through one tensor: final_state aliases initial_state.
    Tensor<float, 4> state({c.B, c.H, c.P, c.N});
    if (c.optional & kState) seqmix::copy(data.state.cview(), state.view());
    index_t t = 0;
    for (index_t n : {split.T1, split.T2}) {
      seqmix::SsdInputs in = data.slice(c, t, n);
      in.initial_state = state.view();
      seqmix::ssd(in, {y.view().slice(1, t, n), state.view()}, options_of(c), pool());
      t += n;
    }
    for (; t < c.T; ++t)
      seqmix::ssd_step(data.step_inputs(c, t), {y.view().select(1, t), state.view()}, options_of(c), pool());
    require_close<4>("y", y.view(), ref.y.view());
    require_close<4>("final_state", state.view(), ref.state.view());
  }
}

TEST_CASE("ssd accepts strided views everywhere", "[ssd]") {
  const SsdCase c{2, 70, 4, 12, 20, 2, kAll, 301};
  INFO(c.describe());
  const SsdData data(c);
  const Reference ref(c, data);
  // Every [.., last] tensor lives in every other element of a buffer twice as wide.
  auto strided = [](Tensor<float, 4>& wide) {
    const auto& s = wide.shape();
    return TensorView<float, 4>(wide.data(), {s[0], s[1], s[2], s[3] / 2}, {s[1] * s[2] * s[3], s[2] * s[3], s[3], 2});
  };
  auto widened = [](const Tensor<float, 4>& t) {
    return Tensor<float, 4>({t.size(0), t.size(1), t.size(2), 2 * t.size(3)});
  };
  Tensor<float, 4> xw = widened(data.x), zw = widened(data.z), bw = widened(data.Bm), cw = widened(data.Cm),
                   sw = widened(data.state), yw = widened(data.x);
  const auto x = strided(xw), z = strided(zw), Bm = strided(bw), Cm = strided(cw), s = strided(sw), y = strided(yw);
  seqmix::copy(data.x.cview(), x);
  seqmix::copy(data.z.cview(), z);
  seqmix::copy(data.Bm.cview(), Bm);
  seqmix::copy(data.Cm.cview(), Cm);
  for (seqmix::SsdAlgorithm algorithm : {seqmix::SsdAlgorithm::chunked, seqmix::SsdAlgorithm::recurrent}) {
    INFO("algorithm=" << algorithm_name(algorithm));
    seqmix::copy(data.state.cview(), s);
    seqmix::SsdInputs in = data.inputs(c);
    in.x = x, in.z = z, in.Bm = Bm, in.Cm = Cm, in.initial_state = s;
    seqmix::ssd(in, {y, s}, options_of(c, algorithm), pool());
    require_close<4>("y", y.as_const(), ref.y.view());
    require_close<4>("final_state", s.as_const(), ref.state.view());
  }
  // Decode steps on a state with a strided N dimension.
  Tensor<float, 4> step_ref_y({c.B, 1, c.H, c.P}), step_ref_s({c.B, c.H, c.P, c.N});
  seqmix::SsdInputs one = data.slice(c, 0, 1);
  one.initial_state = data.state.view();
  seqmix::reference::ssd(one, {step_ref_y.view(), step_ref_s.view()}, options_of(c));
  seqmix::copy(data.state.cview(), s);
  Tensor<float, 3> y1({c.B, c.H, c.P});
  seqmix::ssd_step(data.step_inputs(c, 0), {y1.view(), s}, options_of(c));
  require_close<3>("step y", y1.view(), step_ref_y.view().select(1, 0));
  require_close<4>("step state", s.as_const(), step_ref_s.view());
}

TEST_CASE("ssd rejects bad arguments before writing outputs", "[ssd]") {
  const SsdCase c{2, 10, 4, 8, 16, 2, kAll, 401};
  const SsdData data(c);
  Tensor<float, 4> y({c.B, c.T, c.H, c.P}), s({c.B, c.H, c.P, c.N});
  y.fill(7.f);
  auto expect_error = [&](const seqmix::SsdInputs& in, const seqmix::SsdOutputs& out, const char* argument,
                          seqmix::SsdOptions options = {}) {
    st::require_shape_error(argument, [&] { seqmix::ssd(in, out, options); });
    st::require_shape_error(argument, [&] { seqmix::reference::ssd(in, out, options); });
    CHECK(y(0, 0, 0, 0) == 7.f);  // nothing written before the check failed
  };
  const seqmix::SsdOutputs out{y.view(), s.view()};
  seqmix::SsdInputs in = data.inputs(c);
  in.dt = data.dt.view().slice(1, 0, c.T - 1);
  expect_error(in, out, "dt");
  Tensor<float, 4> B3({c.B, c.T, 3, c.N});
  in = data.inputs(c), in.Bm = B3.view();
  expect_error(in, out, "Bm");  // 3 groups do not divide 4 heads
  in = data.inputs(c), in.Cm = data.Cm.view().slice(3, 0, c.N - 1);
  expect_error(in, out, "Cm");
  Tensor<float, 1> A_pos({c.H});
  A_pos.fill(0.5f);
  in = data.inputs(c), in.A = A_pos.view();
  expect_error(in, out, "A");
  in = data.inputs(c), in.D = data.D.view().slice(0, 0, 2);
  expect_error(in, out, "D");
  in = data.inputs(c);
  expect_error(in, {y.view(), s.view().slice(3, 0, 3)}, "final_state");
  seqmix::SsdOptions bad_chunk;
  bad_chunk.chunk_size = 0;
  expect_error(data.inputs(c), out, "options.chunk_size", bad_chunk);

  // The step: a state of the wrong shape is named.
  Tensor<float, 3> y1({c.B, c.H, c.P});
  st::require_shape_error("state", [&] { seqmix::ssd_step(data.step_inputs(c, 0), {y1.view(), s.view().slice(2, 0, 1)}); });
}

TEST_CASE("ssd handles T = 0 and passes the state through", "[ssd]") {
  const SsdCase c{2, 0, 2, 8, 16, 1, kState, 501};
  const SsdData data(c);
  Tensor<float, 4> y({c.B, 0, c.H, c.P}), s({c.B, c.H, c.P, c.N});
  for (seqmix::SsdAlgorithm algorithm : {seqmix::SsdAlgorithm::chunked, seqmix::SsdAlgorithm::recurrent}) {
    s.fill(0.f);
    seqmix::ssd(data.inputs(c), {y.view(), s.view()}, options_of(c, algorithm));
    require_close<4>("final_state", s.view(), data.state.view(), 0.0);
  }
}
