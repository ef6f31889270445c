// Runs the seqmix snippets of docs/porting.md (extracted by cmake/seqmix_docs_snippets.cmake into
// the build tree): each layer's prefill followed by decode steps must give what one prefill over
// every token gives, outputs and states. That checks the snippets' state hand-off, views and
// options, not only that they compile.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include <catch2/catch.hpp>

#include "porting_gated_deltanet.hpp"
#include "porting_gqa_attention.hpp"
#include "porting_mamba2.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;

template <std::size_t R>
void fill(Tensor<float, R>& t, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  for (float& x : t) x = u(rng);
}

// max |a - b| over two views of one shape.
template <class A, class B>
float max_diff(const A& a, const B& b) {
  REQUIRE(a.numel() == b.numel());
  float m = 0.f;
  const auto* pa = a.data();
  const auto* pb = b.data();
  for (index_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(static_cast<float>(pa[i]) - pb[i]));
  return m;
}

}  // namespace

TEST_CASE("porting.md Mamba-2 mixer: prefill then steps equals one prefill", "[docs]") {
  const index_t B = 2, T = 37, split = 33, H = 4, P = 16, N = 16, G = 2, W = 4, C = H * P + 2 * G * N;
  std::mt19937 rng(7);
  Tensor<float, 2> conv_weight({C, W});
  Tensor<float, 1> conv_bias({C}), A({H}), D({H}), dt_bias({H});
  fill(conv_weight, rng, -0.5f, 0.5f);
  fill(conv_bias, rng, -0.1f, 0.1f);
  fill(A, rng, -4.f, -1.f);
  fill(D, rng, 0.5f, 1.5f);
  fill(dt_bias, rng, -3.f, -1.f);
  Tensor<float, 3> xBC({B, T, C}), z({B, T, H * P}), dt({B, T, H});
  fill(xBC, rng, -1.f, 1.f);
  fill(z, rng, -1.f, 1.f);
  fill(dt, rng, -1.f, 1.f);
  const port::Mamba2Mixer mixer{H, P, N, G, conv_weight.cview(), conv_bias.cview(), A.cview(), D.cview(), dt_bias.cview()};
  seqmix::ThreadPool pool(2);

  Tensor<float, 3> y_full({B, T, H * P}), conv_full({B, W - 1, C});
  Tensor<float, 4> ssm_full({B, H, P, N});
  mixer.prefill(xBC.cview(), z.cview(), dt.cview(), y_full.view(), conv_full.view(), ssm_full.view(), pool);

  Tensor<float, 3> y({B, T, H * P}), conv({B, W - 1, C});
  Tensor<float, 4> ssm({B, H, P, N});
  mixer.prefill(xBC.cview().slice(1, 0, split), z.cview().slice(1, 0, split), dt.cview().slice(1, 0, split),
                y.view().slice(1, 0, split), conv.view(), ssm.view(), pool);
  for (index_t t = split; t < T; ++t)
    mixer.step(xBC.cview().select(1, t), z.cview().select(1, t), dt.cview().select(1, t), y.view().select(1, t),
               conv.view(), ssm.view(), pool);
  CHECK(max_diff(y.view(), y_full.view()) < 1e-4f);
  CHECK(max_diff(conv.view(), conv_full.view()) == 0.f);
  CHECK(max_diff(ssm.view(), ssm_full.view()) < 1e-4f);
}

TEST_CASE("porting.md Gated DeltaNet: prefill then steps equals one prefill", "[docs]") {
  const index_t B = 2, T = 70, split = 66, HK = 2, HV = 4, K = 32, V = 32;  // T > one chunk of 64
  std::mt19937 rng(11);
  Tensor<float, 1> A_log({HV}), dt_bias({HV});
  fill(A_log, rng, -1.f, 1.f);
  fill(dt_bias, rng, -1.f, 1.f);
  Tensor<float, 4> q({B, T, HK, K}), k({B, T, HK, K}), v({B, T, HV, V});
  Tensor<float, 3> a({B, T, HV}), b({B, T, HV});
  for (auto* t : {&q, &k, &v}) fill(*t, rng, -1.f, 1.f);
  fill(a, rng, -2.f, 2.f);
  fill(b, rng, -2.f, 2.f);
  const port::GatedDeltaNet layer{A_log.cview(), dt_bias.cview()};
  seqmix::ThreadPool pool(2);

  Tensor<float, 4> o_full({B, T, HV, V}), s_full({B, HV, K, V});
  layer.prefill(q.cview(), k.cview(), v.cview(), a.cview(), b.cview(), o_full.view(), s_full.view(), pool);

  Tensor<float, 4> o({B, T, HV, V}), s({B, HV, K, V});
  layer.prefill(q.cview().slice(1, 0, split), k.cview().slice(1, 0, split), v.cview().slice(1, 0, split),
                a.cview().slice(1, 0, split), b.cview().slice(1, 0, split), o.view().slice(1, 0, split), s.view(),
                pool);
  for (index_t t = split; t < T; ++t)
    layer.step(q.cview().select(1, t), k.cview().select(1, t), v.cview().select(1, t), a.cview().select(1, t),
               b.cview().select(1, t), o.view().select(1, t), s.view(), pool);
  CHECK(max_diff(o.view(), o_full.view()) < 1e-4f);
  CHECK(max_diff(s.view(), s_full.view()) < 1e-4f);
}

TEST_CASE("porting.md GQA attention: cached decode equals the prefill's last row", "[docs]") {
  const index_t B = 2, T = 20, Hq = 8, Hkv = 2, D = 32;
  std::mt19937 rng(13);
  Tensor<float, 4> q({B, T, Hq, D}), k({B, T, Hkv, D}), v({B, T, Hkv, D});
  for (auto* t : {&q, &k, &v}) fill(*t, rng, -1.f, 1.f);
  const port::GqaAttention layer;
  seqmix::ThreadPool pool(2);

  Tensor<float, 4> o_full({B, T, Hq, D});
  seqmix::KvCache unused = port::make_cache(B, Hkv, D);
  layer.prefill(q.cview(), k.cview(), v.cview(), o_full.view(), unused, pool);
  CHECK(unused.size(0, 0) == T);

  // The first T-1 tokens as a prompt, then the last one decoded against the fp16 cache.
  seqmix::KvCache cache = port::make_cache(B, Hkv, D);
  Tensor<float, 4> o({B, T, Hq, D});
  layer.prefill(q.cview().slice(1, 0, T - 1), k.cview().slice(1, 0, T - 1), v.cview().slice(1, 0, T - 1),
                o.view().slice(1, 0, T - 1), cache, pool);
  layer.step(q.cview().slice(1, T - 1, 1), k.cview().slice(1, T - 1, 1), v.cview().slice(1, T - 1, 1),
             o.view().slice(1, T - 1, 1), cache, pool);
  CHECK(max_diff(o.view(), o_full.view()) < 5e-3f);  // fp16 keys and values in the cache
}
