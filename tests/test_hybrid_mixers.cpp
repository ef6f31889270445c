// Hybrid mixers of the chunked family: BASED, RAT and Infini-attention. For each: the fast prefill
// against the reference over a ragged shape table (1 and 2 threads, with and without an initial
// state), prefill-then-steps equals one reference call, two prefill calls with state hand-off
// equal one call, and bad arguments raise a ShapeError naming the argument.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/reference.hpp"
#include "seqmix/chunked/infini/step.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/chunked/rat/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

constexpr double kTol = 2e-4;

// A [B,T,...] tensor's token range [t0, t0 + n) as a view.
template <std::size_t R>
seqmix::ConstView<float, R> tokens(const Tensor<float, R>& x, index_t t0, index_t n) {
  return x.view().slice(1, t0, n);
}
// Token t of a [B,T,H,D] tensor as a [B,H,D] step view.
inline seqmix::ConstView<float, 3> token(const Tensor<float, 4>& x, index_t t) { return x.view().select(1, t); }

template <std::size_t R>
Tensor<float, R> clone(const Tensor<float, R>& x) {
  Tensor<float, R> y(x.shape());
  std::copy(x.begin(), x.end(), y.begin());
  return y;
}

const seqmix::Executor& executor_for(int threads) {
  return threads == 1 ? seqmix::serial_executor() : static_cast<const seqmix::Executor&>(st::two_thread_pool());
}

// ---------------------------------------------------------------------------------------------
// BASED

struct BasedCase {
  index_t B, T, Hf, F, H, D, V, W;
  seqmix::BasedNormalization norm;
};

std::string describe(const BasedCase& c) {
  std::ostringstream s;
  s << "BASED B=" << c.B << " T=" << c.T << " Hf=" << c.Hf << " F=" << c.F << " H=" << c.H << " D=" << c.D
    << " V=" << c.V << " W=" << c.W << " norm=" << (c.norm == seqmix::BasedNormalization::none ? "none" : "sum");
  return s.str();
}

struct BasedData {
  BasedCase c;
  Tensor<float, 4> qf, kf, q, k, v;
  BasedData(const BasedCase& c_, std::uint64_t seed)
      : c(c_),
        qf(st::random_tensor<4>({c.B, c.T, c.Hf, c.F}, seed + 1)),
        kf(st::random_tensor<4>({c.B, c.T, c.Hf, c.F}, seed + 2)),
        q(st::random_tensor<4>({c.B, c.T, c.H, c.D}, seed + 3)),
        k(st::random_tensor<4>({c.B, c.T, c.H, c.D}, seed + 4)),
        v(st::random_tensor<4>({c.B, c.T, c.H, c.V}, seed + 5)) {}
  seqmix::BasedInputs inputs(index_t t0, index_t n) const {
    return {tokens(qf, t0, n), tokens(kf, t0, n), tokens(q, t0, n), tokens(k, t0, n), tokens(v, t0, n)};
  }
  seqmix::BasedOptions options() const {
    seqmix::BasedOptions o;
    o.window = c.W;
    o.normalization = c.norm;
    o.chunk_size = 8;  // small, so ragged chunk tails are exercised at small T
    return o;
  }
};

// Owning storage of a BasedState.
struct BasedStateBox {
  Tensor<float, 4> kv, wk, wv;
  Tensor<float, 3> z;
  index_t position = 0;
  BasedStateBox(const BasedCase& c, std::uint64_t seed, index_t position_)
      : kv(st::random_tensor<4>({c.B, c.H, 1 + c.F + c.F * c.F, c.V}, seed + 11, -0.1f, 0.1f)),
        wk(st::random_tensor<4>({c.B, c.W, c.H, c.D}, seed + 12)),
        wv(st::random_tensor<4>({c.B, c.W, c.H, c.V}, seed + 13)),
        position(position_) {
    if (c.norm == seqmix::BasedNormalization::feature_sum)
      z = st::random_tensor<3>({c.B, c.H, 1 + c.F + c.F * c.F}, seed + 14, 0.5f, 2.f);
    if (position == 0) kv.fill(0.f), z.fill(0.f);
  }
  BasedStateBox(const BasedStateBox& o)
      : kv(clone(o.kv)), wk(clone(o.wk)), wv(clone(o.wv)), z(clone(o.z)), position(o.position) {}
  seqmix::BasedState view() {
    seqmix::BasedState s;
    s.kv = kv.view(), s.window_k = wk.view(), s.window_v = wv.view(), s.position = position;
    if (z.numel()) s.normalizer = z.view();
    return s;
  }
  void take(const seqmix::BasedState& s) { position = s.position; }
};

void require_same_based_state(BasedStateBox& a, BasedStateBox& b, const BasedCase& c) {
  REQUIRE(a.position == b.position);
  st::require_close("state.kv", a.kv.view(), b.kv.view(), kTol);
  if (a.z.numel()) st::require_close("state.normalizer", a.z.view(), b.z.view(), kTol);
  // Only the valid ring slots carry meaning.
  const index_t valid = std::min(a.position, c.W);
  st::require_close("state.window_k", a.wk.view().slice(1, 0, valid), b.wk.view().slice(1, 0, valid), kTol);
  st::require_close("state.window_v", a.wv.view().slice(1, 0, valid), b.wv.view().slice(1, 0, valid), kTol);
}

const std::vector<BasedCase>& based_cases() {
  using N = seqmix::BasedNormalization;
  static const std::vector<BasedCase> cases = {
      {1, 1, 1, 4, 1, 8, 8, 4, N::feature_sum},    {2, 13, 1, 3, 2, 5, 7, 4, N::feature_sum},
      {1, 37, 2, 4, 4, 16, 16, 8, N::feature_sum}, {2, 21, 2, 5, 2, 9, 3, 32, N::none},
      {1, 70, 1, 4, 3, 17, 16, 16, N::feature_sum}, {2, 9, 1, 2, 1, 4, 4, 1, N::none},
  };
  return cases;
}

TEST_CASE("based fast prefill matches the reference", "[based]") {
  std::uint64_t seed = 100;
  for (const BasedCase& c : based_cases())
    for (int threads : {1, 2})
      for (index_t position : {index_t{0}, index_t{3}, index_t{50}}) {
        INFO(describe(c) << " threads=" << threads << " initial position=" << position << " seed=" << seed);
        const BasedData data(c, seed);
        BasedStateBox s_ref(c, seed, position), s_fast(s_ref);
        Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), o_fast({c.B, c.T, c.H, c.V});
        auto sr = s_ref.view(), sf = s_fast.view();
        seqmix::reference::based(data.inputs(0, c.T), {o_ref.view()}, data.options(), &sr);
        seqmix::based(data.inputs(0, c.T), {o_fast.view()}, data.options(), &sf, executor_for(threads));
        s_ref.take(sr), s_fast.take(sf);
        st::require_close("o", o_fast.view(), o_ref.view(), kTol);
        require_same_based_state(s_fast, s_ref, c);
        // Without a state argument: the same as starting from an empty state.
        if (position == 0) {
          Tensor<float, 4> o_plain({c.B, c.T, c.H, c.V});
          seqmix::based(data.inputs(0, c.T), {o_plain.view()}, data.options(), nullptr, executor_for(threads));
          st::require_close("o (no state)", o_plain.view(), o_ref.view(), kTol);
        }
        ++seed;
      }
}

TEST_CASE("based prefill then steps and split calls equal one call", "[based]") {
  std::uint64_t seed = 200;
  for (const BasedCase& c : based_cases()) {
    INFO(describe(c) << " seed=" << seed);
    const BasedData data(c, seed);
    BasedStateBox s_ref(c, seed, 0);
    Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V});
    auto sr = s_ref.view();
    seqmix::reference::based(data.inputs(0, c.T), {o_ref.view()}, data.options(), &sr);
    s_ref.take(sr);

    const index_t split = c.T / 2 + 1 > c.T ? c.T : c.T / 2 + 1;
    // Prefill [0, split), then one step per remaining token.
    BasedStateBox s_step(c, seed, 0);
    Tensor<float, 4> o_step({c.B, c.T, c.H, c.V});
    auto ss = s_step.view();
    seqmix::based(data.inputs(0, split), {o_step.view().slice(1, 0, split)}, data.options(), &ss,
                  st::two_thread_pool());
    for (index_t t = split; t < c.T; ++t)
      seqmix::based_step({token(data.qf, t), token(data.kf, t), token(data.q, t), token(data.k, t), token(data.v, t)},
                         {o_step.view().select(1, t)}, ss, data.options());
    s_step.take(ss);
    st::require_close("o (prefill + steps)", o_step.view(), o_ref.view(), kTol);
    require_same_based_state(s_step, s_ref, c);

    // Two prefill calls [0, split) and [split, T).
    BasedStateBox s_two(c, seed, 0);
    Tensor<float, 4> o_two({c.B, c.T, c.H, c.V});
    auto s2 = s_two.view();
    seqmix::based(data.inputs(0, split), {o_two.view().slice(1, 0, split)}, data.options(), &s2);
    seqmix::based(data.inputs(split, c.T - split), {o_two.view().slice(1, split, c.T - split)}, data.options(), &s2);
    s_two.take(s2);
    st::require_close("o (two calls)", o_two.view(), o_ref.view(), kTol);
    require_same_based_state(s_two, s_ref, c);
    ++seed;
  }
}

TEST_CASE("based rejects bad arguments naming them", "[based][errors]") {
  const BasedCase c{2, 5, 2, 4, 4, 8, 8, 4, seqmix::BasedNormalization::feature_sum};
  const BasedData data(c, 1);
  Tensor<float, 4> o({c.B, c.T, c.H, c.V}), bad_o({c.B, c.T, c.H, c.V + 1});
  Tensor<float, 4> bad_k({c.B, c.T, c.H, c.D + 1}), bad_qf({c.B, c.T, 3, c.F});
  st::require_shape_error("o", [&] { seqmix::based(data.inputs(0, c.T), {bad_o.view()}, data.options()); });
  st::require_shape_error("k", [&] {
    auto in = data.inputs(0, c.T);
    in.k = bad_k.view();
    seqmix::based(in, {o.view()}, data.options());
  });
  st::require_shape_error("q_feat", [&] {
    auto in = data.inputs(0, c.T);
    in.q_feat = bad_qf.view(), in.k_feat = bad_qf.view();
    seqmix::based(in, {o.view()}, data.options());
  });
  st::require_shape_error("options.window", [&] {
    auto opt = data.options();
    opt.window = 0;
    seqmix::based(data.inputs(0, c.T), {o.view()}, opt);
  });
  BasedStateBox box(c, 1, 0);
  auto s = box.view();
  Tensor<float, 4> bad_ring({c.B, c.W + 1, c.H, c.D});
  s.window_k = bad_ring.view();
  st::require_shape_error("state.window_k", [&] { seqmix::based(data.inputs(0, c.T), {o.view()}, data.options(), &s); });
  s = box.view();
  s.normalizer = {};
  st::require_shape_error("state.normalizer", [&] {
    seqmix::based_step({token(data.qf, 0), token(data.kf, 0), token(data.q, 0), token(data.k, 0), token(data.v, 0)},
                       {o.view().select(1, 0)}, s, data.options());
  });
}

// ---------------------------------------------------------------------------------------------
// Infini-attention

struct InfiniCase {
  index_t B, T, H, Hkv, K, V, S;
  seqmix::InfiniMemoryUpdate update;
};

std::string describe(const InfiniCase& c) {
  std::ostringstream s;
  s << "Infini B=" << c.B << " T=" << c.T << " H=" << c.H << " Hkv=" << c.Hkv << " K=" << c.K << " V=" << c.V
    << " S=" << c.S << " update=" << (c.update == seqmix::InfiniMemoryUpdate::delta ? "delta" : "linear");
  return s.str();
}

struct InfiniData {
  InfiniCase c;
  Tensor<float, 4> q, k, v;
  Tensor<float, 1> beta;
  InfiniData(const InfiniCase& c_, std::uint64_t seed)
      : c(c_),
        q(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.Hkv, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.Hkv, c.V}, seed + 3)),
        beta(st::random_tensor<1>({c.H}, seed + 4, -2.f, 2.f)) {}
  seqmix::InfiniAttentionInputs inputs(index_t t0, index_t n) const {
    return {tokens(q, t0, n), tokens(k, t0, n), tokens(v, t0, n), beta.view()};
  }
  seqmix::InfiniAttentionStepInputs step(index_t t) const { return {token(q, t), token(k, t), token(v, t), beta.view()}; }
  seqmix::InfiniAttentionOptions options() const {
    seqmix::InfiniAttentionOptions o;
    o.segment = c.S;
    o.update = c.update;
    return o;
  }
};

struct InfiniStateBox {
  Tensor<float, 4> m, sk, sv;
  Tensor<float, 3> z;
  index_t position = 0;
  // A random resumable state: memory as if `position` tokens were absorbed.
  InfiniStateBox(const InfiniCase& c, std::uint64_t seed, index_t position_)
      : m(st::random_tensor<4>({c.B, c.Hkv, c.K, c.V}, seed + 11)),
        sk(st::random_tensor<4>({c.B, c.S, c.Hkv, c.K}, seed + 12)),
        sv(st::random_tensor<4>({c.B, c.S, c.Hkv, c.V}, seed + 13)),
        z(st::random_tensor<3>({c.B, c.Hkv, c.K}, seed + 14, 1.f, 4.f)),
        position(position_) {
    if (position < c.S) m.fill(0.f), z.fill(0.f);
  }
  InfiniStateBox(const InfiniStateBox& o) : m(clone(o.m)), sk(clone(o.sk)), sv(clone(o.sv)), z(clone(o.z)), position(o.position) {}
  seqmix::InfiniAttentionState view() { return {m.view(), z.view(), sk.view(), sv.view(), position}; }
  void take(const seqmix::InfiniAttentionState& s) { position = s.position; }
};

void require_same_infini_state(InfiniStateBox& a, InfiniStateBox& b, const InfiniCase& c) {
  REQUIRE(a.position == b.position);
  st::require_close("state.memory", a.m.view(), b.m.view(), kTol);
  st::require_close("state.normalizer", a.z.view(), b.z.view(), kTol);
  const index_t filled = a.position % c.S;
  st::require_close("state.segment_k", a.sk.view().slice(1, 0, filled), b.sk.view().slice(1, 0, filled), kTol);
  st::require_close("state.segment_v", a.sv.view().slice(1, 0, filled), b.sv.view().slice(1, 0, filled), kTol);
}

const std::vector<InfiniCase>& infini_cases() {
  using U = seqmix::InfiniMemoryUpdate;
  static const std::vector<InfiniCase> cases = {
      {1, 1, 1, 1, 4, 4, 4, U::linear},     {2, 13, 2, 1, 5, 7, 4, U::delta},   {1, 37, 4, 2, 16, 16, 8, U::linear},
      {2, 40, 2, 2, 9, 3, 16, U::delta},    {1, 70, 3, 3, 17, 16, 32, U::delta}, {2, 9, 1, 1, 2, 4, 1, U::linear},
      {1, 100, 4, 1, 8, 8, 100, U::delta},
  };
  return cases;
}

TEST_CASE("infini attention fast prefill matches the reference", "[infini]") {
  std::uint64_t seed = 300;
  for (const InfiniCase& c : infini_cases())
    for (int threads : {1, 2})
      for (index_t position : {index_t{0}, index_t{3}, c.S + 2}) {
        INFO(describe(c) << " threads=" << threads << " initial position=" << position << " seed=" << seed);
        const InfiniData data(c, seed);
        InfiniStateBox s_ref(c, seed, position), s_fast(s_ref);
        Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V}), o_fast({c.B, c.T, c.H, c.V});
        auto sr = s_ref.view(), sf = s_fast.view();
        seqmix::reference::infini_attention(data.inputs(0, c.T), {o_ref.view()}, data.options(), &sr);
        seqmix::infini_attention(data.inputs(0, c.T), {o_fast.view()}, data.options(), &sf, executor_for(threads));
        s_ref.take(sr), s_fast.take(sf);
        st::require_close("o", o_fast.view(), o_ref.view(), kTol);
        require_same_infini_state(s_fast, s_ref, c);
        if (position == 0) {
          Tensor<float, 4> o_plain({c.B, c.T, c.H, c.V});
          seqmix::infini_attention(data.inputs(0, c.T), {o_plain.view()}, data.options(), nullptr, executor_for(threads));
          st::require_close("o (no state)", o_plain.view(), o_ref.view(), kTol);
        }
        ++seed;
      }
}

TEST_CASE("infini attention prefill then steps and split calls equal one call", "[infini]") {
  std::uint64_t seed = 400;
  for (const InfiniCase& c : infini_cases()) {
    INFO(describe(c) << " seed=" << seed);
    const InfiniData data(c, seed);
    InfiniStateBox s_ref(c, seed, 0);
    Tensor<float, 4> o_ref({c.B, c.T, c.H, c.V});
    auto sr = s_ref.view();
    seqmix::reference::infini_attention(data.inputs(0, c.T), {o_ref.view()}, data.options(), &sr);
    s_ref.take(sr);
    const index_t split = std::min(c.T, c.T / 2 + 1);

    InfiniStateBox s_step(c, seed, 0);
    Tensor<float, 4> o_step({c.B, c.T, c.H, c.V});
    auto ss = s_step.view();
    seqmix::infini_attention(data.inputs(0, split), {o_step.view().slice(1, 0, split)}, data.options(), &ss,
                             st::two_thread_pool());
    for (index_t t = split; t < c.T; ++t)
      seqmix::infini_attention_step(data.step(t), {o_step.view().select(1, t)}, ss, data.options(), st::two_thread_pool());
    s_step.take(ss);
    st::require_close("o (prefill + steps)", o_step.view(), o_ref.view(), kTol);
    require_same_infini_state(s_step, s_ref, c);

    InfiniStateBox s_two(c, seed, 0);
    Tensor<float, 4> o_two({c.B, c.T, c.H, c.V});
    auto s2 = s_two.view();
    seqmix::infini_attention(data.inputs(0, split), {o_two.view().slice(1, 0, split)}, data.options(), &s2);
    seqmix::infini_attention(data.inputs(split, c.T - split), {o_two.view().slice(1, split, c.T - split)},
                             data.options(), &s2);
    s_two.take(s2);
    st::require_close("o (two calls)", o_two.view(), o_ref.view(), kTol);
    require_same_infini_state(s_two, s_ref, c);
    ++seed;
  }
}

TEST_CASE("infini attention rejects bad arguments naming them", "[infini][errors]") {
  const InfiniCase c{2, 5, 4, 2, 8, 8, 4, seqmix::InfiniMemoryUpdate::linear};
  const InfiniData data(c, 1);
  Tensor<float, 4> o({c.B, c.T, c.H, c.V}), bad_k({c.B, c.T, c.Hkv, c.K + 1}), bad_o({c.B, c.T, c.H, 1});
  Tensor<float, 1> bad_beta({c.H + 1});
  st::require_shape_error("k", [&] {
    auto in = data.inputs(0, c.T);
    in.k = bad_k.view();
    seqmix::infini_attention(in, {o.view()}, data.options());
  });
  st::require_shape_error("o", [&] { seqmix::infini_attention(data.inputs(0, c.T), {bad_o.view()}, data.options()); });
  st::require_shape_error("beta", [&] {
    auto in = data.inputs(0, c.T);
    in.beta = bad_beta.view();
    seqmix::infini_attention(in, {o.view()}, data.options());
  });
  st::require_shape_error("options.segment", [&] {
    auto opt = data.options();
    opt.segment = 0;
    seqmix::infini_attention(data.inputs(0, c.T), {o.view()}, opt);
  });
  InfiniStateBox box(c, 1, 0);
  auto s = box.view();
  Tensor<float, 4> bad_seg({c.B, c.S - 1, c.Hkv, c.K});
  s.segment_k = bad_seg.view();
  st::require_shape_error("state.segment_k", [&] {
    seqmix::infini_attention_step(data.step(0), {o.view().select(1, 0)}, s, data.options());
  });
}

// ---------------------------------------------------------------------------------------------
// RAT

struct RatCase {
  index_t B, T, H, Hkv, D, L;
  float gate_lo;  // log gates drawn from [gate_lo, 0]
};

std::string describe(const RatCase& c) {
  std::ostringstream s;
  s << "RAT B=" << c.B << " T=" << c.T << " H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D << " L=" << c.L
    << " g in [" << c.gate_lo << ", 0]";
  return s.str();
}

struct RatData {
  RatCase c;
  Tensor<float, 4> q, k, v, g;
  RatData(const RatCase& c_, std::uint64_t seed)
      : c(c_),
        q(st::random_tensor<4>({c.B, c.T, c.H, c.D}, seed + 1, -2.f, 2.f)),
        k(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 2, -2.f, 2.f)),
        v(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 3)),
        g(st::random_tensor<4>({c.B, c.T, c.Hkv, c.D}, seed + 4, c.gate_lo, 0.f)) {}
  seqmix::RatInputs inputs(index_t t0, index_t n) const {
    return {tokens(q, t0, n), tokens(k, t0, n), tokens(v, t0, n), tokens(g, t0, n)};
  }
  seqmix::RatStepInputs step(index_t t) const { return {token(q, t), token(k, t), token(v, t), token(g, t)}; }
  seqmix::RatOptions options() const {
    seqmix::RatOptions o;
    o.chunk_size = c.L;
    return o;
  }
};

struct RatStateBox {
  Tensor<float, 4> ck, cv;
  Tensor<float, 3> kr, vr;
  index_t position = 0;
  // A random resumable state at `position`, with room for `extra` more tokens.
  RatStateBox(const RatCase& c, std::uint64_t seed, index_t position_, index_t extra)
      : ck(st::random_tensor<4>({c.B, (position_ + extra) / c.L + 1, c.Hkv, c.D}, seed + 11)),
        cv(st::random_tensor<4>({c.B, (position_ + extra) / c.L + 1, c.Hkv, c.D}, seed + 12)),
        kr(st::random_tensor<3>({c.B, c.Hkv, c.D}, seed + 13)),
        vr(st::random_tensor<3>({c.B, c.Hkv, c.D}, seed + 14)),
        position(position_) {}
  RatStateBox(const RatStateBox& o) : ck(clone(o.ck)), cv(clone(o.cv)), kr(clone(o.kr)), vr(clone(o.vr)), position(o.position) {}
  seqmix::RatState view() { return {ck.view(), cv.view(), kr.view(), vr.view(), position}; }
  void take(const seqmix::RatState& s) { position = s.position; }
};

void require_same_rat_state(RatStateBox& a, RatStateBox& b, const RatCase& c) {
  REQUIRE(a.position == b.position);
  const index_t chunks = a.position / c.L;
  st::require_close("state.chunk_k", a.ck.view().slice(1, 0, chunks), b.ck.view().slice(1, 0, chunks), kTol);
  st::require_close("state.chunk_v", a.cv.view().slice(1, 0, chunks), b.cv.view().slice(1, 0, chunks), kTol);
  st::require_close("state.k_run", a.kr.view(), b.kr.view(), kTol);
  st::require_close("state.v_run", a.vr.view(), b.vr.view(), kTol);
}

const std::vector<RatCase>& rat_cases() {
  static const std::vector<RatCase> cases = {
      {1, 1, 1, 1, 4, 4, -1.f},   {2, 13, 2, 1, 5, 4, -1.f},  {1, 37, 4, 2, 16, 8, -3.f}, {2, 40, 2, 2, 9, 16, -0.1f},
      {1, 70, 3, 3, 17, 5, -2.f}, {2, 9, 1, 1, 2, 1, -1.f},   {1, 300, 4, 4, 8, 3, -1.f},
  };
  return cases;
}

TEST_CASE("rat fast prefill matches the reference", "[rat]") {
  std::uint64_t seed = 500;
  for (const RatCase& c : rat_cases())
    for (int threads : {1, 2})
      for (index_t position : {index_t{0}, index_t{2}, 3 * c.L, 3 * c.L + 1}) {
        INFO(describe(c) << " threads=" << threads << " initial position=" << position << " seed=" << seed);
        const RatData data(c, seed);
        RatStateBox s_ref(c, seed, position, c.T), s_fast(s_ref);
        Tensor<float, 4> o_ref({c.B, c.T, c.H, c.D}), o_fast({c.B, c.T, c.H, c.D});
        auto sr = s_ref.view(), sf = s_fast.view();
        seqmix::reference::rat(data.inputs(0, c.T), {o_ref.view()}, data.options(), &sr);
        seqmix::rat(data.inputs(0, c.T), {o_fast.view()}, data.options(), &sf, executor_for(threads));
        s_ref.take(sr), s_fast.take(sf);
        st::require_close("o", o_fast.view(), o_ref.view(), kTol);
        require_same_rat_state(s_fast, s_ref, c);
        if (position == 0) {
          Tensor<float, 4> o_plain({c.B, c.T, c.H, c.D});
          seqmix::rat(data.inputs(0, c.T), {o_plain.view()}, data.options(), nullptr, executor_for(threads));
          st::require_close("o (no state)", o_plain.view(), o_ref.view(), kTol);
        }
        ++seed;
      }
}

TEST_CASE("rat prefill then steps and split calls equal one call", "[rat]") {
  std::uint64_t seed = 600;
  for (const RatCase& c : rat_cases()) {
    INFO(describe(c) << " seed=" << seed);
    const RatData data(c, seed);
    RatStateBox s_ref(c, seed, 0, c.T);
    Tensor<float, 4> o_ref({c.B, c.T, c.H, c.D});
    auto sr = s_ref.view();
    seqmix::reference::rat(data.inputs(0, c.T), {o_ref.view()}, data.options(), &sr);
    s_ref.take(sr);
    const index_t split = std::min(c.T, c.T / 2 + 1);

    RatStateBox s_step(c, seed, 0, c.T);
    Tensor<float, 4> o_step({c.B, c.T, c.H, c.D});
    auto ss = s_step.view();
    seqmix::rat(data.inputs(0, split), {o_step.view().slice(1, 0, split)}, data.options(), &ss, st::two_thread_pool());
    for (index_t t = split; t < c.T; ++t)
      seqmix::rat_step(data.step(t), {o_step.view().select(1, t)}, ss, data.options(), st::two_thread_pool());
    s_step.take(ss);
    st::require_close("o (prefill + steps)", o_step.view(), o_ref.view(), kTol);
    require_same_rat_state(s_step, s_ref, c);

    RatStateBox s_two(c, seed, 0, c.T);
    Tensor<float, 4> o_two({c.B, c.T, c.H, c.D});
    auto s2 = s_two.view();
    seqmix::rat(data.inputs(0, split), {o_two.view().slice(1, 0, split)}, data.options(), &s2);
    seqmix::rat(data.inputs(split, c.T - split), {o_two.view().slice(1, split, c.T - split)}, data.options(), &s2);
    s_two.take(s2);
    st::require_close("o (two calls)", o_two.view(), o_ref.view(), kTol);
    require_same_rat_state(s_two, s_ref, c);
    ++seed;
  }
}

TEST_CASE("rat rejects bad arguments naming them", "[rat][errors]") {
  const RatCase c{2, 8, 4, 2, 8, 4, -1.f};
  const RatData data(c, 1);
  Tensor<float, 4> o({c.B, c.T, c.H, c.D}), bad_v({c.B, c.T, c.Hkv, c.D + 1}), positive_g({c.B, c.T, c.Hkv, c.D});
  positive_g.fill(0.5f);
  st::require_shape_error("v", [&] {
    auto in = data.inputs(0, c.T);
    in.v = bad_v.view();
    seqmix::rat(in, {o.view()}, data.options());
  });
  st::require_shape_error("g", [&] {
    auto in = data.inputs(0, c.T);
    in.g = positive_g.view();
    seqmix::rat(in, {o.view()}, data.options());
  });
  st::require_shape_error("options.chunk_size", [&] {
    auto opt = data.options();
    opt.chunk_size = 0;
    seqmix::rat(data.inputs(0, c.T), {o.view()}, opt);
  });
  // A cache too small for the chunk summaries this call produces.
  RatStateBox small(c, 1, 0, 0);  // room for 1 summary, 2 needed
  auto s = small.view();
  st::require_shape_error("state.chunk_k", [&] { seqmix::rat(data.inputs(0, c.T), {o.view()}, data.options(), &s); });
  s.position = 3;  // the step that ends chunk 0 is fine, position 7 would need chunk slot 1
  s.position = 2 * c.L - 1;
  st::require_shape_error("state.chunk_k", [&] { seqmix::rat_step(data.step(0), {o.view().select(1, 0)}, s, data.options()); });
}

}  // namespace
