// The reverse option of the remaining recurrent operators (issue 23 item 1): s5 and the others
// listed in docs/operators.md section 19. The reference and fast forms with options.reverse equal
// the forward operator on explicitly reversed copies (outputs reversed back; final states, the
// states after token 0, equal), for T 1, 2, 37 (and above the chunk size where there is one), B 2.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/chunked.hpp"
#include "seqmix/linear_attention.hpp"
#include "seqmix/lti.hpp"
#include "seqmix/memory.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/direction.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const index_t kMoreDirLengths[] = {1, 2, 37};

TEST_CASE("reverse s5 equals s5 on reversed copies", "[direction][s5]") {
  const index_t H = 5, P = 6;
  Tensor<float, 1> L_re = st::random_tensor<1>({P}, 501, -1.f, -0.1f), L_im = st::random_tensor<1>({P}, 502, -3.f, 3.f);
  Tensor<float, 1> dt = st::random_tensor<1>({P}, 503, 0.01f, 0.2f), D = st::random_tensor<1>({H}, 504);
  Tensor<float, 2> B_re = st::random_tensor<2>({P, H}, 505, -0.4f, 0.4f), B_im = st::random_tensor<2>({P, H}, 506, -0.4f, 0.4f);
  Tensor<float, 2> C_re = st::random_tensor<2>({H, P}, 507, -0.4f, 0.4f), C_im = st::random_tensor<2>({H, P}, 508, -0.4f, 0.4f);
  const seqmix::S5Params params{L_re.view(), L_im.view(), B_re.view(), B_im.view(), C_re.view(), C_im.view(), dt.view(), D.view()};
  for (const index_t T : kMoreDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const Tensor<float, 3> u = st::random_tensor<3>({2, T, H}, 510 + std::uint64_t(T));
      const Tensor<float, 3> u_rev = st::reversed_copy(u);
      const Tensor<float, 2> s_re = st::random_tensor<2>({2, P}, 520), s_im = st::random_tensor<2>({2, P}, 521);
      seqmix::S5Options options;
      options.discretization = seqmix::SsmDiscretization::bilinear;
      seqmix::S5Options reverse = options;
      reverse.reverse = true;
      Tensor<float, 3> y({2, T, H}), y_ref({2, T, H});
      Tensor<float, 2> f_re({2, P}), f_im({2, P}), g_re({2, P}), g_im({2, P});
      const seqmix::S5Inputs got_in{u.view(), s_re.view(), s_im.view()}, want_in{u_rev.view(), s_re.view(), s_im.view()};
      if (fast) {
        seqmix::s5(params, got_in, {y.view(), f_re.view(), f_im.view()}, reverse, st::two_thread_pool());
        seqmix::s5(params, want_in, {y_ref.view(), g_re.view(), g_im.view()}, options);
      } else {
        seqmix::reference::s5(params, got_in, {y.view(), f_re.view(), f_im.view()}, reverse);
        seqmix::reference::s5(params, want_in, {y_ref.view(), g_re.view(), g_im.view()}, options);
      }
      st::require_close("s5 y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
      st::require_close("s5 final_state_real", f_re.cview(), g_re.cview(), 1e-5);
      st::require_close("s5 final_state_imag", f_im.cview(), g_im.cview(), 1e-5);
    }
}

TEST_CASE("reverse mom equals mom on reversed copies", "[direction][mom]") {
  // E 2 routes of M 3 memories, grouped heads (HK 1, HV 2); chunk 16 so T 37 spans three chunks.
  const index_t B = 2, E = 2, M = 3, HK = 1, HV = 2, K = 4, V = 3;
  for (const index_t T : kMoreDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const std::uint64_t seed = 600 + std::uint64_t(T);
      const Tensor<float, 4> q = st::random_tensor<4>({B, T, HK, K}, seed), beta = st::random_tensor<4>({B, T, E, HV}, seed + 1, 0.f, 1.f);
      const Tensor<float, 4> g = st::random_tensor<4>({B, T, E, HV}, seed + 2, -0.5f, 0.f);
      const Tensor<float, 5> k = st::random_tensor<5>({B, T, E, HK, K}, seed + 3, -0.6f, 0.6f);
      const Tensor<float, 5> v = st::random_tensor<5>({B, T, E, HV, V}, seed + 4);
      const Tensor<float, 5> s0 = st::random_tensor<5>({B, M, HV, K, V}, seed + 5);
      const Tensor<float, 3> weight = st::random_tensor<3>({B, T, E}, seed + 6, 0.f, 1.f);
      Tensor<std::int32_t, 3> route({B, T, E});
      std::mt19937_64 rng(seed + 7);
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t) {
          const std::int32_t first = static_cast<std::int32_t>(rng() % M);
          route.view()(b, t, 0) = first;
          route.view()(b, t, 1) = static_cast<std::int32_t>((first + 1 + static_cast<std::int32_t>(rng() % (M - 1))) % M);
        }
      Tensor<std::int32_t, 3> route_rev({B, T, E});
      for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < T; ++t)
          for (index_t e = 0; e < E; ++e) route_rev.view()(b, t, e) = route.view()(b, T - 1 - t, e);
      const Tensor<float, 4> q_r = st::reversed_copy(q), beta_r = st::reversed_copy(beta), g_r = st::reversed_copy(g);
      const Tensor<float, 5> k_r = st::reversed_copy(k), v_r = st::reversed_copy(v);
      const Tensor<float, 3> weight_r = st::reversed_copy(weight);
      seqmix::MomInputs in, in_r;
      in.q = q.view(), in.k = k.view(), in.v = v.view(), in.beta = beta.view(), in.g_scalar = g.view();
      in.memory = route.view(), in.weight = weight.view(), in.initial_state = s0.view();
      in_r.q = q_r.view(), in_r.k = k_r.view(), in_r.v = v_r.view(), in_r.beta = beta_r.view(), in_r.g_scalar = g_r.view();
      in_r.memory = route_rev.view(), in_r.weight = weight_r.view(), in_r.initial_state = s0.view();
      seqmix::MomOptions options;
      options.memories = M;
      options.memory.chunk_size = 16;
      seqmix::MomOptions reverse = options;
      reverse.memory.reverse = true;
      Tensor<float, 4> o({B, T, HV, V}), o_ref({B, T, HV, V});
      Tensor<float, 5> f({B, M, HV, K, V}), f_ref({B, M, HV, K, V});
      if (fast) {
        seqmix::mom(in, {o.view(), f.view()}, reverse, st::two_thread_pool());
        seqmix::mom(in_r, {o_ref.view(), f_ref.view()}, options);
      } else {
        seqmix::reference::mom(in, {o.view(), f.view()}, reverse);
        seqmix::reference::mom(in_r, {o_ref.view(), f_ref.view()}, options);
      }
      st::require_close("mom o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
      st::require_close("mom final_state", f.cview(), f_ref.cview(), 1e-5);
    }
}

TEST_CASE("reverse aaren equals aaren on reversed copies", "[direction][aaren]") {
  // Forms: 0 reference, 1 fast by heads, 2 fast time split (3 chunks) ; token_states and an
  // initial state everywhere. A packed batch is refused before any write.
  const index_t B = 2, H = 2, Dk = 5, Dv = 3;
  const Tensor<float, 2> query = st::random_tensor<2>({H, Dk}, 700);
  const Tensor<float, 2> m0 = st::random_tensor<2>({B, H}, 701), l0 = st::random_tensor<2>({B, H}, 702, 0.5f, 2.f);
  const Tensor<float, 3> acc0 = st::random_tensor<3>({B, H, Dv}, 703);
  for (const index_t T : kMoreDirLengths)
    for (int form = 0; form < 3; ++form) {
      INFO("T=" << T << " form=" << form);
      const Tensor<float, 4> k = st::random_tensor<4>({B, T, H, Dk}, 710 + std::uint64_t(T));
      const Tensor<float, 4> v = st::random_tensor<4>({B, T, H, Dv}, 720 + std::uint64_t(T));
      const Tensor<float, 4> k_r = st::reversed_copy(k), v_r = st::reversed_copy(v);
      seqmix::AarenOptions options;
      if (form == 2) options.split = seqmix::AarenSplit::time, options.chunks = 3;
      seqmix::AarenOptions reverse = options;
      reverse.reverse = true;
      Tensor<float, 4> o({B, T, H, Dv}), o_ref({B, T, H, Dv}), ta({B, T, H, Dv}), ta_ref({B, T, H, Dv});
      Tensor<float, 3> tm({B, T, H}), tm_ref({B, T, H}), tl({B, T, H}), tl_ref({B, T, H});
      Tensor<float, 2> fm({B, H}), fm_ref({B, H}), fl({B, H}), fl_ref({B, H});
      Tensor<float, 3> fa({B, H, Dv}), fa_ref({B, H, Dv});
      const seqmix::AarenConstState initial{m0.view(), l0.view(), acc0.view()};
      seqmix::AarenInputs in{query.view(), k.view(), v.view(), initial};
      seqmix::AarenInputs in_r{query.view(), k_r.view(), v_r.view(), initial};
      seqmix::AarenOutputs out{o.view(), {fm.view(), fl.view(), fa.view()}, {tm.view(), tl.view(), ta.view()}};
      seqmix::AarenOutputs out_r{o_ref.view(), {fm_ref.view(), fl_ref.view(), fa_ref.view()},
                                 {tm_ref.view(), tl_ref.view(), ta_ref.view()}};
      if (form == 2) {
        // The time split serves calls without token_states only.
        out.token_states = {}, out_r.token_states = {};
      }
      if (form == 0) {
        seqmix::reference::aaren(in, out, reverse);
        seqmix::reference::aaren(in_r, out_r, options);
      } else {
        seqmix::aaren(in, out, reverse, st::two_thread_pool());
        seqmix::aaren(in_r, out_r, options);
      }
      st::require_close("aaren o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
      st::require_close("aaren final m", fm.cview(), fm_ref.cview(), 1e-5);
      st::require_close("aaren final l", fl.cview(), fl_ref.cview(), 1e-5);
      st::require_close("aaren final acc", fa.cview(), fa_ref.cview(), 1e-5);
      if (form != 2) {
        st::require_close("aaren token m", tm.cview(), seqmix::reversed_time_view(tm_ref.cview()), 1e-5);
        st::require_close("aaren token l", tl.cview(), seqmix::reversed_time_view(tl_ref.cview()), 1e-5);
        st::require_close("aaren token acc", ta.cview(), seqmix::reversed_time_view(ta_ref.cview()), 1e-5);
      }
    }
}

TEST_CASE("reverse aaren refuses a packed batch before any write", "[direction][aaren][validation]") {
  const Tensor<float, 2> query = st::random_tensor<2>({1, 4}, 730);
  const Tensor<float, 4> k = st::random_tensor<4>({1, 5, 1, 4}, 731), v = st::random_tensor<4>({1, 5, 1, 2}, 732);
  Tensor<float, 4> o({1, 5, 1, 2});
  for (index_t i = 0; i < o.numel(); ++i) o.data()[i] = 7.f;
  const std::vector<std::int64_t> cu{0, 2, 5};
  seqmix::AarenInputs in{query.view(), k.view(), v.view()};
  in.batch.cu_seqlens = seqmix::ConstView<std::int64_t, 1>(cu.data(), {3});
  seqmix::AarenOptions reverse;
  reverse.reverse = true;
  st::require_shape_error("options.reverse", [&] { seqmix::aaren(in, {o.view()}, reverse); });
  st::require_shape_error("options.reverse", [&] { seqmix::reference::aaren(in, {o.view()}, reverse); });
  for (index_t i = 0; i < o.numel(); ++i) REQUIRE(o.data()[i] == 7.f);
}

TEST_CASE("reverse slot_memory equals slot_memory on reversed copies", "[direction][slot_memory]") {
  // Segments of 16 (T 37: three segments, the last ragged), 2 heads, both gate forms.
  const index_t B = 2, S = 3, D = 6;
  const Tensor<float, 3> memory = st::random_tensor<3>({B, S, D}, 800);
  const Tensor<float, 2> wi = st::random_tensor<2>({D, D}, 801, -0.4f, 0.4f), wf = st::random_tensor<2>({D, D}, 802, -0.4f, 0.4f);
  const Tensor<float, 2> wo = st::random_tensor<2>({D, D}, 803, -0.4f, 0.4f);
  const Tensor<float, 1> bi = st::random_tensor<1>({D}, 804), bf = st::random_tensor<1>({D}, 805), bo = st::random_tensor<1>({D}, 806);
  for (const index_t T : kMoreDirLengths)
    for (const bool fast : {false, true})
      for (const seqmix::SlotGate gate : {seqmix::SlotGate::input_forget, seqmix::SlotGate::lm2}) {
        INFO("T=" << T << " fast=" << fast << " gate=" << int(gate));
        const Tensor<float, 3> x = st::random_tensor<3>({B, T, D}, 810 + std::uint64_t(T));
        const Tensor<float, 3> x_r = st::reversed_copy(x);
        seqmix::SlotMemoryWeights w{wi.view(), bi.view(), wf.view(), bf.view()};
        if (gate == seqmix::SlotGate::lm2) w.w_output = wo.view(), w.b_output = bo.view();
        seqmix::SlotMemoryOptions options;
        options.gate = gate, options.heads = 2, options.segment = 16;
        seqmix::SlotMemoryOptions reverse = options;
        reverse.reverse = true;
        Tensor<float, 3> y({B, T, D}), y_ref({B, T, D}), f({B, S, D}), f_ref({B, S, D});
        if (fast) {
          seqmix::slot_memory({x.view(), memory.view(), w}, {y.view(), f.view()}, reverse, st::two_thread_pool());
          seqmix::slot_memory({x_r.view(), memory.view(), w}, {y_ref.view(), f_ref.view()}, options);
        } else {
          seqmix::reference::slot_memory({x.view(), memory.view(), w}, {y.view(), f.view()}, reverse);
          seqmix::reference::slot_memory({x_r.view(), memory.view(), w}, {y_ref.view(), f_ref.view()}, options);
        }
        st::require_close("slot y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
        st::require_close("slot final_memory", f.cview(), f_ref.cview(), 1e-5);
      }
}

TEST_CASE("reverse compressive_memory equals it on reversed copies", "[direction][compressive_memory]") {
  // Segments of 8 (T 37: five), memory 6, compressed 4 at rate 2, grouped heads (Hq 2, Hkv 1).
  const index_t B = 2, Hq = 2, Hkv = 1, dk = 4, dv = 3;
  for (const index_t T : kMoreDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const Tensor<float, 4> q = st::random_tensor<4>({B, T, Hq, dk}, 900 + std::uint64_t(T));
      const Tensor<float, 4> k = st::random_tensor<4>({B, T, Hkv, dk}, 910 + std::uint64_t(T));
      const Tensor<float, 4> v = st::random_tensor<4>({B, T, Hkv, dv}, 920 + std::uint64_t(T));
      const Tensor<float, 4> q_r = st::reversed_copy(q), k_r = st::reversed_copy(k), v_r = st::reversed_copy(v);
      seqmix::CompressiveMemoryOptions options;
      options.segment = 8, options.memory = 6, options.compressed = 4, options.rate = 2;
      seqmix::CompressiveMemoryOptions reverse = options;
      reverse.reverse = true;
      Tensor<float, 4> o({B, T, Hq, dv}), o_ref({B, T, Hq, dv});
      if (fast) {
        seqmix::compressive_memory({q.view(), k.view(), v.view()}, {o.view()}, reverse, st::two_thread_pool());
        seqmix::compressive_memory({q_r.view(), k_r.view(), v_r.view()}, {o_ref.view()}, options);
      } else {
        seqmix::reference::compressive_memory({q.view(), k.view(), v.view()}, {o.view()}, reverse);
        seqmix::reference::compressive_memory({q_r.view(), k_r.view(), v_r.view()}, {o_ref.view()}, options);
      }
      st::require_close("compressive o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 1e-5);
    }
}

}  // namespace
