// The reverse option of the test-time-training memories (ttt_linear, ttt_mlp, titans): the
// reference and fast forms with options.reverse equal the forward operator on explicitly
// reversed copies (outputs reversed back; the final weights / memory are those after token 0), for
// ragged T including 1 and T not a multiple of the mini-batch or chunk, B > 1, grouped heads
// (titans), both titans algorithms and a non-l2 loss.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/rnn.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/direction.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

const index_t kMemDirLengths[] = {1, 2, 21, 70};

struct MemDirTtt {
  index_t B, T, H, K, M;
  Tensor<float, 4> q, k, v, w0, w1, w2;
  Tensor<float, 3> eta;
  Tensor<float, 2> gamma, beta;
  MemDirTtt(index_t B_, index_t T_, index_t H_, index_t K_, index_t M_, std::uint64_t seed)
      : B(B_), T(T_), H(H_), K(K_), M(M_), q(st::random_tensor<4>({B, T, H, K}, seed)),
        k(st::random_tensor<4>({B, T, H, K}, seed + 1)), v(st::random_tensor<4>({B, T, H, K}, seed + 2)),
        w0(st::random_tensor<4>({B, H, K, K}, seed + 3, -0.3f, 0.3f)),
        w1(st::random_tensor<4>({B, H, K, M}, seed + 4, -0.3f, 0.3f)),
        w2(st::random_tensor<4>({B, H, M, K}, seed + 5, -0.3f, 0.3f)),
        eta(st::random_tensor<3>({B, T, H}, seed + 6, 0.f, 1.f / static_cast<float>(K))),
        gamma(st::random_tensor<2>({H, K}, seed + 7, 0.5f, 1.5f)), beta(st::random_tensor<2>({H, K}, seed + 8, -0.2f, 0.2f)) {}
  MemDirTtt reversed() const {
    MemDirTtt r = *this;
    r.q = st::reversed_copy(q), r.k = st::reversed_copy(k), r.v = st::reversed_copy(v), r.eta = st::reversed_copy(eta);
    return r;
  }
  seqmix::TttLinearInputs linear() const {
    return {q.view(), k.view(), v.view(), eta.view(), gamma.view(), beta.view(), {}, w0.view()};
  }
  seqmix::TttMlpInputs mlp() const {
    return {q.view(), k.view(), v.view(), eta.view(), gamma.view(), beta.view(), {}, w1.view(), w2.view()};
  }
};

TEST_CASE("reverse ttt_linear and ttt_mlp equal them on reversed copies", "[direction][ttt]") {
  for (const index_t T : kMemDirLengths)
    for (const bool fast : {false, true}) {
      INFO("T=" << T << " fast=" << fast);
      const MemDirTtt data(2, T, 2, 6, 9, 300 + std::uint64_t(T));
      const MemDirTtt copies = data.reversed();
      seqmix::TttOptions options;
      options.mini_batch = 8;
      seqmix::TttOptions reverse = options;
      reverse.reverse = true;

      Tensor<float, 4> z({2, T, 2, 6}), z_ref({2, T, 2, 6}), w({2, 2, 6, 6}), w_ref({2, 2, 6, 6});
      if (fast) {
        seqmix::ttt_linear(data.linear(), {z.view(), w.view()}, reverse, st::two_thread_pool());
        seqmix::ttt_linear(copies.linear(), {z_ref.view(), w_ref.view()}, options);
      } else {
        seqmix::reference::ttt_linear(data.linear(), {z.view(), w.view()}, reverse);
        seqmix::reference::ttt_linear(copies.linear(), {z_ref.view(), w_ref.view()}, options);
      }
      st::require_close("linear z", z.cview(), seqmix::reversed_time_view(z_ref.cview()), 1e-5);
      st::require_close("linear final_w", w.cview(), w_ref.cview(), 1e-5);

      Tensor<float, 4> w1({2, 2, 6, 9}), w1_ref({2, 2, 6, 9}), w2({2, 2, 9, 6}), w2_ref({2, 2, 9, 6});
      if (fast) {
        seqmix::ttt_mlp(data.mlp(), {z.view(), w1.view(), w2.view()}, reverse, st::two_thread_pool());
        seqmix::ttt_mlp(copies.mlp(), {z_ref.view(), w1_ref.view(), w2_ref.view()}, options);
      } else {
        seqmix::reference::ttt_mlp(data.mlp(), {z.view(), w1.view(), w2.view()}, reverse);
        seqmix::reference::ttt_mlp(copies.mlp(), {z_ref.view(), w1_ref.view(), w2_ref.view()}, options);
      }
      st::require_close("mlp z", z.cview(), seqmix::reversed_time_view(z_ref.cview()), 1e-5);
      st::require_close("mlp final_w1", w1.cview(), w1_ref.cview(), 1e-5);
      st::require_close("mlp final_w2", w2.cview(), w2_ref.cview(), 1e-5);
    }
}

struct MemDirTitans {
  index_t B, T, HK, HV, K, V;
  Tensor<float, 4> q, k, v, m0, s0;
  Tensor<float, 3> alpha, eta, theta;
  MemDirTitans(index_t B_, index_t T_, index_t HK_, index_t HV_, index_t K_, index_t V_, std::uint64_t seed)
      : B(B_), T(T_), HK(HK_), HV(HV_), K(K_), V(V_), q(st::random_tensor<4>({B, T, HK, K}, seed)),
        k(st::random_tensor<4>({B, T, HK, K}, seed + 1)), v(st::random_tensor<4>({B, T, HV, V}, seed + 2)),
        m0(st::random_tensor<4>({B, HV, K, V}, seed + 3, -0.5f, 0.5f)),
        s0(st::random_tensor<4>({B, HV, K, V}, seed + 4, -0.1f, 0.1f)),
        alpha(st::random_tensor<3>({B, T, HV}, seed + 5, 0.f, 0.2f)), eta(st::random_tensor<3>({B, T, HV}, seed + 6, 0.f, 0.95f)),
        theta(st::random_tensor<3>({B, T, HV}, seed + 7, 0.f, 0.5f)) {}
  MemDirTitans reversed() const {
    MemDirTitans r = *this;
    r.q = st::reversed_copy(q), r.k = st::reversed_copy(k), r.v = st::reversed_copy(v);
    r.alpha = st::reversed_copy(alpha), r.eta = st::reversed_copy(eta), r.theta = st::reversed_copy(theta);
    return r;
  }
  seqmix::TitansInputs inputs() const {
    return {q.view(), k.view(), v.view(), alpha.view(), eta.view(), theta.view(), m0.view(), s0.view()};
  }
};

TEST_CASE("reverse titans equals titans on reversed copies", "[direction][titans]") {
  for (const index_t T : kMemDirLengths)
    for (int form = 0; form < 4; ++form) {
      INFO("T=" << T << " form=" << form << " (0 reference, 1 chunked, 2 recurrent, 3 huber loss)");
      const MemDirTitans data(2, T, 1, 2, 5, 4, 400 + std::uint64_t(T));
      const MemDirTitans copies = data.reversed();
      seqmix::TitansOptions options;
      options.chunk_size = 16;
      if (form == 2) options.algorithm = seqmix::TitansAlgorithm::recurrent;
      if (form == 3) options.loss = seqmix::TitansLoss::huber;
      seqmix::TitansOptions reverse = options;
      reverse.reverse = true;
      Tensor<float, 4> y({2, T, 2, 4}), y_ref({2, T, 2, 4}), m({2, 2, 5, 4}), m_ref({2, 2, 5, 4}), s({2, 2, 5, 4}),
          s_ref({2, 2, 5, 4});
      const seqmix::TitansOutputs got{y.view(), m.view(), s.view()};
      const seqmix::TitansOutputs want{y_ref.view(), m_ref.view(), s_ref.view()};
      if (form == 0) {
        seqmix::reference::titans(data.inputs(), got, reverse);
        seqmix::reference::titans(copies.inputs(), want, options);
      } else {
        seqmix::titans(data.inputs(), got, reverse, st::two_thread_pool());
        seqmix::titans(copies.inputs(), want, options);
      }
      st::require_close("y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
      st::require_close("final_memory", m.cview(), m_ref.cview(), 1e-5);
      st::require_close("final_momentum", s.cview(), s_ref.cview(), 1e-5);
    }
}

}  // namespace
