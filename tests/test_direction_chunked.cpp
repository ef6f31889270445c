// The reverse option of the chunked hybrids and memory_tokens (issue 23 item 1): based, rat,
// infini_attention, mega and memory_tokens, and of sliding_window_scan. The reference and fast
// forms with options.reverse equal the forward operator on explicitly reversed copies (outputs
// reversed back; the states after the call, which are the states after token 0, equal), from a
// non-empty initial state where the operator takes one, for T 1, 2, 37 (above the chunk / segment
// / window sizes), B 2, grouped heads. bidirectional's sum equals the sum of the two directions;
// packed batches are refused with options.reverse before any write.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "seqmix/chunked.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/memory.hpp"
#include "seqmix/ssm/long_context/window.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/direction.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

template <std::size_t Rank>
void chunked_dir_fill(Tensor<float, Rank>& t, float value) {
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = value;
}

template <std::size_t Rank>
bool chunked_dir_all_equal(const Tensor<float, Rank>& t, float value) {
  for (index_t i = 0; i < t.numel(); ++i)
    if (t.data()[i] != value) return false;
  return true;
}

const index_t kChunkedDirLengths[] = {1, 2, 37};

// BASED: F 3 (Kf 13), Hf 1 of H 2, window 5, chunk 8; the initial state has absorbed 7 tokens.
struct BasedDirCase {
  index_t B = 2, T, Hf = 1, F = 3, Kf = 13, H = 2, D = 4, V = 3, W = 5;
  Tensor<float, 4> qf, kf, q, k, v;
  Tensor<float, 4> kv0, wk0, wv0;
  Tensor<float, 3> z0;
  BasedDirCase(index_t T_, std::uint64_t seed) : T(T_) {
    qf = st::random_tensor<4>({B, T, Hf, F}, seed, -0.5f, 0.5f), kf = st::random_tensor<4>({B, T, Hf, F}, seed + 1, -0.5f, 0.5f);
    q = st::random_tensor<4>({B, T, H, D}, seed + 2), k = st::random_tensor<4>({B, T, H, D}, seed + 3);
    v = st::random_tensor<4>({B, T, H, V}, seed + 4);
    kv0 = st::random_tensor<4>({B, H, Kf, V}, seed + 5), z0 = st::random_tensor<3>({B, H, Kf}, seed + 6, 0.5f, 1.5f);
    wk0 = st::random_tensor<4>({B, W, H, D}, seed + 7), wv0 = st::random_tensor<4>({B, W, H, V}, seed + 8);
  }
};

TEST_CASE("reverse based equals based on reversed copies", "[direction][based]") {
  for (const index_t T : kChunkedDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const BasedDirCase c(T, 1000 + std::uint64_t(T));
      const auto qf_r = st::reversed_copy(c.qf), kf_r = st::reversed_copy(c.kf), q_r = st::reversed_copy(c.q);
      const auto k_r = st::reversed_copy(c.k), v_r = st::reversed_copy(c.v);
      seqmix::BasedOptions options;
      options.window = c.W, options.chunk_size = 8;
      seqmix::BasedOptions reverse = options;
      reverse.reverse = true;
      auto kv = st::clone(c.kv0), kv_ref = st::clone(c.kv0);
      auto z = st::clone(c.z0), z_ref = st::clone(c.z0);
      auto wk = st::clone(c.wk0), wk_ref = st::clone(c.wk0);
      auto wv = st::clone(c.wv0), wv_ref = st::clone(c.wv0);
      seqmix::BasedState s{kv.view(), z.view(), wk.view(), wv.view(), 7};
      seqmix::BasedState s_ref{kv_ref.view(), z_ref.view(), wk_ref.view(), wv_ref.view(), 7};
      Tensor<float, 4> o({c.B, T, c.H, c.V}), o_ref({c.B, T, c.H, c.V});
      const seqmix::BasedInputs got{c.qf.view(), c.kf.view(), c.q.view(), c.k.view(), c.v.view()};
      const seqmix::BasedInputs want{qf_r.view(), kf_r.view(), q_r.view(), k_r.view(), v_r.view()};
      if (fast) {
        seqmix::based(got, {o.view()}, reverse, &s, st::two_thread_pool());
        seqmix::based(want, {o_ref.view()}, options, &s_ref);
      } else {
        seqmix::reference::based(got, {o.view()}, reverse, &s);
        seqmix::reference::based(want, {o_ref.view()}, options, &s_ref);
      }
      st::require_close("based o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
      st::require_close("based state.kv", kv.cview(), kv_ref.cview(), 1e-5);
      st::require_close("based state.normalizer", z.cview(), z_ref.cview(), 1e-5);
      st::require_close("based state.window_k", wk.cview(), wk_ref.cview(), 0.0);
      st::require_close("based state.window_v", wv.cview(), wv_ref.cview(), 0.0);
      REQUIRE(s.position == 7 + T);
    }
}

TEST_CASE("reverse rat equals rat on reversed copies", "[direction][rat]") {
  // Chunks of 8, Hkv 1 of H 2; the initial state has absorbed 10 tokens (one summary, 2 running).
  const index_t B = 2, H = 2, Hkv = 1, D = 4, L = 8, pos0 = 10;
  for (const index_t T : kChunkedDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const std::uint64_t seed = 1100 + std::uint64_t(T);
      const index_t C = (pos0 + T) / L + 1;
      const Tensor<float, 4> q = st::random_tensor<4>({B, T, H, D}, seed), k = st::random_tensor<4>({B, T, Hkv, D}, seed + 1);
      const Tensor<float, 4> v = st::random_tensor<4>({B, T, Hkv, D}, seed + 2);
      const Tensor<float, 4> g = st::random_tensor<4>({B, T, Hkv, D}, seed + 3, -2.f, 0.f);
      const auto q_r = st::reversed_copy(q), k_r = st::reversed_copy(k), v_r = st::reversed_copy(v);
      const auto g_r = st::reversed_copy(g);
      const Tensor<float, 4> ck0 = st::random_tensor<4>({B, C, Hkv, D}, seed + 4), cv0 = st::random_tensor<4>({B, C, Hkv, D}, seed + 5);
      const Tensor<float, 3> kr0 = st::random_tensor<3>({B, Hkv, D}, seed + 6), vr0 = st::random_tensor<3>({B, Hkv, D}, seed + 7);
      auto ck = st::clone(ck0), ck_ref = st::clone(ck0), cv = st::clone(cv0), cv_ref = st::clone(cv0);
      auto kr = st::clone(kr0), kr_ref = st::clone(kr0), vr = st::clone(vr0), vr_ref = st::clone(vr0);
      seqmix::RatState s{ck.view(), cv.view(), kr.view(), vr.view(), pos0};
      seqmix::RatState s_ref{ck_ref.view(), cv_ref.view(), kr_ref.view(), vr_ref.view(), pos0};
      seqmix::RatOptions options;
      options.chunk_size = L;
      seqmix::RatOptions reverse = options;
      reverse.reverse = true;
      Tensor<float, 4> o({B, T, H, D}), o_ref({B, T, H, D});
      const seqmix::RatInputs got{q.view(), k.view(), v.view(), g.view()}, want{q_r.view(), k_r.view(), v_r.view(), g_r.view()};
      if (fast) {
        seqmix::rat(got, {o.view()}, reverse, &s, st::two_thread_pool());
        seqmix::rat(want, {o_ref.view()}, options, &s_ref);
      } else {
        seqmix::reference::rat(got, {o.view()}, reverse, &s);
        seqmix::reference::rat(want, {o_ref.view()}, options, &s_ref);
      }
      st::require_close("rat o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
      st::require_close("rat state.chunk_k", ck.cview(), ck_ref.cview(), 1e-6);
      st::require_close("rat state.chunk_v", cv.cview(), cv_ref.cview(), 1e-6);
      st::require_close("rat state.k_run", kr.cview(), kr_ref.cview(), 1e-6);
      st::require_close("rat state.v_run", vr.cview(), vr_ref.cview(), 1e-6);
      REQUIRE(s.position == pos0 + T);
    }
}

TEST_CASE("reverse infini_attention equals it on reversed copies", "[direction][infini]") {
  // Segments of 8, Hkv 1 of H 2, both memory updates; the initial state has absorbed 5 tokens.
  const index_t B = 2, H = 2, Hkv = 1, K = 4, V = 3, S = 8, pos0 = 5;
  const Tensor<float, 1> beta = st::random_tensor<1>({H}, 1190);
  for (const index_t T : kChunkedDirLengths)
    for (const bool fast : {false, true})
      for (const auto update : {seqmix::InfiniMemoryUpdate::linear, seqmix::InfiniMemoryUpdate::delta}) {
        INFO("T=" << T << " fast=" << fast << " update=" << int(update));
        const std::uint64_t seed = 1200 + std::uint64_t(T);
        const Tensor<float, 4> q = st::random_tensor<4>({B, T, H, K}, seed), k = st::random_tensor<4>({B, T, Hkv, K}, seed + 1);
        const Tensor<float, 4> v = st::random_tensor<4>({B, T, Hkv, V}, seed + 2);
        const auto q_r = st::reversed_copy(q), k_r = st::reversed_copy(k), v_r = st::reversed_copy(v);
        const Tensor<float, 4> m0 = st::random_tensor<4>({B, Hkv, K, V}, seed + 3);
        const Tensor<float, 3> z0 = st::random_tensor<3>({B, Hkv, K}, seed + 4, 0.5f, 2.f);
        const Tensor<float, 4> sk0 = st::random_tensor<4>({B, S, Hkv, K}, seed + 5), sv0 = st::random_tensor<4>({B, S, Hkv, V}, seed + 6);
        auto m = st::clone(m0), m_ref = st::clone(m0);
        auto z = st::clone(z0), z_ref = st::clone(z0);
        auto sk = st::clone(sk0), sk_ref = st::clone(sk0), sv = st::clone(sv0), sv_ref = st::clone(sv0);
        seqmix::InfiniAttentionState s{m.view(), z.view(), sk.view(), sv.view(), pos0};
        seqmix::InfiniAttentionState s_ref{m_ref.view(), z_ref.view(), sk_ref.view(), sv_ref.view(), pos0};
        seqmix::InfiniAttentionOptions options;
        options.segment = S, options.update = update;
        seqmix::InfiniAttentionOptions reverse = options;
        reverse.reverse = true;
        Tensor<float, 4> o({B, T, H, V}), o_ref({B, T, H, V});
        const seqmix::InfiniAttentionInputs got{q.view(), k.view(), v.view(), beta.view()};
        const seqmix::InfiniAttentionInputs want{q_r.view(), k_r.view(), v_r.view(), beta.view()};
        if (fast) {
          seqmix::infini_attention(got, {o.view()}, reverse, &s, st::two_thread_pool());
          seqmix::infini_attention(want, {o_ref.view()}, options, &s_ref);
        } else {
          seqmix::reference::infini_attention(got, {o.view()}, reverse, &s);
          seqmix::reference::infini_attention(want, {o_ref.view()}, options, &s_ref);
        }
        st::require_close("infini o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
        st::require_close("infini state.memory", m.cview(), m_ref.cview(), 1e-5);
        st::require_close("infini state.normalizer", z.cview(), z_ref.cview(), 1e-5);
        st::require_close("infini state.segment_k", sk.cview(), sk_ref.cview(), 0.0);
        st::require_close("infini state.segment_v", sv.cview(), sv_ref.cview(), 0.0);
        REQUIRE(s.position == pos0 + T);
      }
}

// Mega: D 6 channels in H 2 heads (Dk 3), N 3, Dv 4, chunk 8.
struct MegaDirParams {
  static constexpr index_t D = 6, N = 3, H = 2, Dk = 3, Dv = 4, c = 8;
  Tensor<float, 2> alpha = st::random_tensor<2>({D, N}, 1300), delta = st::random_tensor<2>({D, N}, 1301);
  Tensor<float, 2> beta = st::random_tensor<2>({D, N}, 1302), eta = st::random_tensor<2>({D, N}, 1303, -0.5f, 0.5f);
  Tensor<float, 1> qs = st::random_tensor<1>({D}, 1304), qb = st::random_tensor<1>({D}, 1305);
  Tensor<float, 1> ks = st::random_tensor<1>({D}, 1306), kb = st::random_tensor<1>({D}, 1307);
  seqmix::MegaParams view() const {
    return {alpha.view(), delta.view(), beta.view(), eta.view(), qs.view(), qb.view(), ks.view(), kb.view()};
  }
};

TEST_CASE("reverse mega equals mega on reversed copies", "[direction][mega]") {
  using P = MegaDirParams;
  const P p;
  const index_t B = 2;
  for (const index_t T : kChunkedDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const std::uint64_t seed = 1310 + std::uint64_t(T);
      const Tensor<float, 3> x = st::random_tensor<3>({B, T, P::D}, seed);
      const Tensor<float, 4> v = st::random_tensor<4>({B, T, P::H, P::Dv}, seed + 1);
      const Tensor<float, 3> h0 = st::random_tensor<3>({B, P::D, P::N}, seed + 2);
      const auto x_r = st::reversed_copy(x);
      const auto v_r = st::reversed_copy(v);
      seqmix::MegaOptions options;
      options.chunk_size = P::c;
      seqmix::MegaOptions reverse = options;
      reverse.reverse = true;
      Tensor<float, 4> o({B, T, P::H, P::Dv}), o_ref({B, T, P::H, P::Dv});
      Tensor<float, 3> ema({B, T, P::D}), ema_ref({B, T, P::D}), f({B, P::D, P::N}), f_ref({B, P::D, P::N});
      Tensor<float, 4> kc({B, P::c, P::H, P::Dk}), kc_ref({B, P::c, P::H, P::Dk});
      Tensor<float, 4> vc({B, P::c, P::H, P::Dv}), vc_ref({B, P::c, P::H, P::Dv});
      chunked_dir_fill(kc, 0.f), chunked_dir_fill(kc_ref, 0.f), chunked_dir_fill(vc, 0.f), chunked_dir_fill(vc_ref, 0.f);
      const seqmix::MegaInputs got{x.view(), v.view(), p.view(), h0.view()};
      const seqmix::MegaInputs want{x_r.view(), v_r.view(), p.view(), h0.view()};
      const seqmix::MegaOutputs got_out{o.view(), ema.view(), f.view(), kc.view(), vc.view()};
      const seqmix::MegaOutputs want_out{o_ref.view(), ema_ref.view(), f_ref.view(), kc_ref.view(), vc_ref.view()};
      if (fast) {
        seqmix::mega(got, got_out, reverse, st::two_thread_pool());
        seqmix::mega(want, want_out, options);
      } else {
        seqmix::reference::mega(got, got_out, reverse);
        seqmix::reference::mega(want, want_out, options);
      }
      st::require_close("mega o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
      st::require_close("mega ema", ema.cview(), seqmix::reversed_time_view(ema_ref.cview()), 1e-5);
      st::require_close("mega final_state", f.cview(), f_ref.cview(), 1e-5);
      st::require_close("mega k_cache", kc.cview(), kc_ref.cview(), 1e-5);
      st::require_close("mega v_cache", vc.cview(), vc_ref.cview(), 0.0);
    }
}

// A causal layer for memory_tokens: state s = read[0], then per segment token s = 0.8 s + tanh(x)
// (out = s); the first write token gets s + the mean of the read tokens, the others pass through.
struct ChunkedDirMemLayer {
  index_t M;
  void operator()(const seqmix::ConstView<float, 3>& in, const seqmix::TensorView<float, 3>& out) const {
    const index_t n = in.size(1), D = in.size(2), len = n - 2 * M;
    for (index_t b = 0; b < in.size(0); ++b)
      for (index_t c = 0; c < D; ++c) {
        float s = in(b, 0, c), mean = 0.f;
        for (index_t m = 0; m < M; ++m) out(b, m, c) = in(b, m, c), mean += in(b, m, c) / static_cast<float>(M);
        for (index_t j = 0; j < len; ++j) out(b, M + j, c) = s = 0.8f * s + std::tanh(in(b, M + j, c));
        for (index_t m = 0; m < M; ++m) out(b, M + len + m, c) = m == 0 ? s + mean : in(b, M + len + m, c);
      }
  }
};

TEST_CASE("reverse memory_tokens equals it on reversed copies", "[direction][memory_tokens]") {
  // Segments of 8 (T 37: five, the last ragged), M 2, recall off and over the last 2 memories.
  const index_t B = 2, M = 2, D = 5;
  const Tensor<float, 3> memory = st::random_tensor<3>({B, M, D}, 1400);
  const ChunkedDirMemLayer layer_fn{M};
  for (const index_t T : kChunkedDirLengths)
    for (const bool fast : {false, true})
      for (const index_t recall : {index_t(0), index_t(2)}) {
        INFO("T=" << T << " fast=" << fast << " recall=" << recall);
        const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, 1410 + std::uint64_t(T));
        const auto x_r = st::reversed_copy(x);
        seqmix::MemoryTokensOptions options;
        options.segment = 8, options.recall = recall;
        seqmix::MemoryTokensOptions reverse = options;
        reverse.reverse = true;
        Tensor<float, 3> y({B, T, D}), y_ref({B, T, D}), f({B, M, D}), f_ref({B, M, D});
        if (fast) {
          seqmix::memory_tokens({x.view(), memory.view()}, {y.view(), f.view()}, layer_fn, reverse, st::two_thread_pool());
          seqmix::memory_tokens({x_r.view(), memory.view()}, {y_ref.view(), f_ref.view()}, layer_fn, options);
        } else {
          seqmix::reference::memory_tokens({x.view(), memory.view()}, {y.view(), f.view()}, layer_fn, reverse);
          seqmix::reference::memory_tokens({x_r.view(), memory.view()}, {y_ref.view(), f_ref.view()}, layer_fn, options);
        }
        st::require_close("memory_tokens y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
        st::require_close("memory_tokens final_memory", f.cview(), f_ref.cview(), 1e-5);
      }
}

TEST_CASE("reverse sliding_window_scan equals it on reversed copies", "[direction][sliding_window]") {
  // Window 5 (T 37: ragged blocks), direct and log gates, B 2, D 3.
  const index_t B = 2, D = 3;
  for (const index_t T : kChunkedDirLengths)
    for (const bool fast : {false, true})
      for (const auto gate : {seqmix::GateSpace::direct, seqmix::GateSpace::log}) {
        INFO("T=" << T << " fast=" << fast << " gate=" << int(gate));
        const Tensor<float, 3> a = gate == seqmix::GateSpace::log ? st::random_tensor<3>({B, T, D}, 1700, -1.f, 0.f)
                                                                  : st::random_tensor<3>({B, T, D}, 1700, 0.2f, 1.f);
        const Tensor<float, 3> b = st::random_tensor<3>({B, T, D}, 1701 + std::uint64_t(T));
        const auto a_r = st::reversed_copy(a), b_r = st::reversed_copy(b);
        seqmix::SlidingWindowOptions options;
        options.window = 5, options.gate_space = gate;
        seqmix::SlidingWindowOptions reverse = options;
        reverse.reverse = true;
        Tensor<float, 3> w({B, T, D}), w_ref({B, T, D});
        if (fast) {
          seqmix::sliding_window_scan(a.cview(), b.cview(), w.view(), reverse, st::two_thread_pool());
          seqmix::sliding_window_scan(a_r.cview(), b_r.cview(), w_ref.view(), options);
        } else {
          seqmix::reference::sliding_window_scan(a.cview(), b.cview(), w.view(), reverse);
          seqmix::reference::sliding_window_scan(a_r.cview(), b_r.cview(), w_ref.view(), options);
        }
        st::require_close("sliding_window w", w.cview(), seqmix::reversed_time_view(w_ref.cview()), 1e-6);
      }
}

TEST_CASE("bidirectional sums forward and reverse of based and mega", "[direction][based][mega]") {
  const index_t T = 37;
  const BasedDirCase c(T, 1500);
  seqmix::BasedOptions options;
  options.window = c.W, options.chunk_size = 8;
  const seqmix::BasedInputs in{c.qf.view(), c.kf.view(), c.q.view(), c.k.view(), c.v.view()};
  Tensor<float, 4> both({c.B, T, c.H, c.V}), fwd({c.B, T, c.H, c.V}), rev({c.B, T, c.H, c.V});
  seqmix::bidirectional<4>(
      [&](bool reverse, const seqmix::TensorView<float, 4>& y) {
        seqmix::BasedOptions o = options;
        o.reverse = reverse;
        seqmix::based(in, {y}, o, nullptr, st::two_thread_pool());
      },
      both.view());
  seqmix::based(in, {fwd.view()}, options);
  seqmix::BasedOptions reverse = options;
  reverse.reverse = true;
  seqmix::based(in, {rev.view()}, reverse);
  seqmix::detail::accumulate_into<4>(rev.cview(), fwd.view());
  st::require_close("based bidirectional", both.cview(), fwd.cview(), 1e-5);

  using P = MegaDirParams;
  const P p;
  const Tensor<float, 3> x = st::random_tensor<3>({2, T, P::D}, 1510);
  const Tensor<float, 4> v = st::random_tensor<4>({2, T, P::H, P::Dv}, 1511);
  const seqmix::MegaInputs min{x.view(), v.view(), p.view()};
  seqmix::MegaOptions moptions;
  moptions.chunk_size = P::c;
  Tensor<float, 4> mboth({2, T, P::H, P::Dv}), mf({2, T, P::H, P::Dv}), mr({2, T, P::H, P::Dv});
  seqmix::bidirectional<4>(
      [&](bool reverse, const seqmix::TensorView<float, 4>& y) {
        seqmix::MegaOptions o = moptions;
        o.reverse = reverse;
        seqmix::mega(min, {y}, o, st::two_thread_pool());
      },
      mboth.view());
  seqmix::mega(min, {mf.view()}, moptions);
  seqmix::MegaOptions mreverse = moptions;
  mreverse.reverse = true;
  seqmix::mega(min, {mr.view()}, mreverse);
  seqmix::detail::accumulate_into<4>(mr.cview(), mf.view());
  st::require_close("mega bidirectional", mboth.cview(), mf.cview(), 1e-5);
}

TEST_CASE("reverse hybrids refuse packed batches before any write", "[direction][errors]") {
  // Two packed sequences of 2 and 3 tokens: [1, 5, ...] with cu_seqlens {0, 2, 5}.
  const std::vector<std::int64_t> cu{0, 2, 5};
  seqmix::SequenceBatch packed;
  packed.cu_seqlens = seqmix::ConstView<std::int64_t, 1>(cu.data(), {3});
  const index_t T = 5;
  const BasedDirCase c(T, 1600);
  Tensor<float, 4> o({1, T, 2, 4});
  chunked_dir_fill(o, 7.f);
  {
    Tensor<float, 4> ob({1, T, c.H, c.V});
    chunked_dir_fill(ob, 7.f);
    seqmix::BasedInputs in{c.qf.view().slice(0, 0, 1), c.kf.view().slice(0, 0, 1), c.q.view().slice(0, 0, 1),
                           c.k.view().slice(0, 0, 1), c.v.view().slice(0, 0, 1)};
    in.batch = packed;
    seqmix::BasedOptions reverse;
    reverse.reverse = true;
    st::require_shape_error("options.reverse", [&] { seqmix::based(in, {ob.view()}, reverse); });
    st::require_shape_error("options.reverse", [&] { seqmix::reference::based(in, {ob.view()}, reverse); });
    REQUIRE(chunked_dir_all_equal(ob, 7.f));
  }
  const Tensor<float, 4> q = st::random_tensor<4>({1, T, 2, 4}, 1601), k = st::random_tensor<4>({1, T, 1, 4}, 1602);
  const Tensor<float, 4> v = st::random_tensor<4>({1, T, 1, 4}, 1603), g = st::random_tensor<4>({1, T, 1, 4}, 1604, -1.f, 0.f);
  {
    seqmix::RatInputs in{q.view(), k.view(), v.view(), g.view()};
    in.batch = packed;
    seqmix::RatOptions reverse;
    reverse.chunk_size = 2, reverse.reverse = true;
    st::require_shape_error("options.reverse", [&] { seqmix::rat(in, {o.view()}, reverse); });
    st::require_shape_error("options.reverse", [&] { seqmix::reference::rat(in, {o.view()}, reverse); });
  }
  {
    const Tensor<float, 1> beta = st::random_tensor<1>({2}, 1605);
    seqmix::InfiniAttentionInputs in{q.view(), k.view(), v.view(), beta.view()};
    in.batch = packed;
    seqmix::InfiniAttentionOptions reverse;
    reverse.segment = 2, reverse.reverse = true;
    st::require_shape_error("options.reverse", [&] { seqmix::infini_attention(in, {o.view()}, reverse); });
    st::require_shape_error("options.reverse", [&] { seqmix::reference::infini_attention(in, {o.view()}, reverse); });
  }
  {
    using P = MegaDirParams;
    const P p;
    const Tensor<float, 3> x = st::random_tensor<3>({1, T, P::D}, 1606);
    const Tensor<float, 4> mv = st::random_tensor<4>({1, T, P::H, P::Dv}, 1607);
    Tensor<float, 4> om({1, T, P::H, P::Dv});
    chunked_dir_fill(om, 7.f);
    seqmix::MegaInputs in{x.view(), mv.view(), p.view()};
    in.batch = packed;
    seqmix::MegaOptions reverse;
    reverse.reverse = true;
    st::require_shape_error("options.reverse", [&] { seqmix::mega(in, {om.view()}, reverse); });
    st::require_shape_error("options.reverse", [&] { seqmix::reference::mega(in, {om.view()}, reverse); });
    REQUIRE(chunked_dir_all_equal(om, 7.f));
  }
  REQUIRE(chunked_dir_all_equal(o, 7.f));
}

}  // namespace
