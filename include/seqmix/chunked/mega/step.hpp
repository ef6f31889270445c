// Mega decode step: one token per batch row. State: the EMA state [B,D,N] and the keys / values
// of the current chunk [B,c,H,*]; `position` is the token's index in the sequence (the same for
// every batch row), so slot position % c of the cache receives this token's k and v and the query
// attends to slots [0, slot]. A step at slot 0 starts a new chunk (earlier slots are ignored).
// Prefill with final_state / k_cache / v_cache, then steps from position T, equals one call.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "seqmix/chunked/mega/fast.hpp"

namespace seqmix {

struct MegaStepInputs {
  ConstView<float, 2> x;  // [B,D]
  ConstView<float, 3> v;  // [B,H,Dv]
  MegaParams params;
  index_t position = 0;
};

struct MegaDecodeState {
  TensorView<float, 3> ema;      // [B,D,N]
  TensorView<float, 4> k_cache;  // [B,c,H,Dk]
  TensorView<float, 4> v_cache;  // [B,c,H,Dv]
};

// o [B,H,Dv].
inline void mega_step(const MegaStepInputs& in, const TensorView<float, 3>& o, const MegaDecodeState& state,
                      const MegaOptions& options = {}, const Executor& executor = serial_executor()) {
  using namespace detail::mega;
  (void)executor;  // one token: B*D*N FMAs plus c*D attention MACs, below a thread hand-off
  const ArgCheck check("mega_step");
  check.shape("x", in.x, std::array<index_t, 2>{-1, -1}, "B,D");
  const index_t B = in.x.size(0), D = in.x.size(1);
  check.shape("params.alpha_logit", in.params.alpha_logit, std::array<index_t, 2>{D, -1}, "D,N");
  const index_t N = in.params.alpha_logit.size(1);
  check_params(check, in.params, D, N);
  check.shape("v", in.v, std::array<index_t, 3>{B, -1, -1}, "B,H,Dv");
  const index_t H = in.v.size(1), Dv = in.v.size(2);
  if (D > 0 || H > 0) check.divides(H, D, "v", "heads (dimension 1), which must divide the channels D of x");
  check.that(options.chunk_size >= 1, "options.chunk_size", "must be >= 1");
  check.that(in.position >= 0, "position", "must be >= 0, got " + std::to_string(in.position));
  const index_t c = options.chunk_size, Dk = H > 0 ? D / H : 0;
  check.shape("o", o, std::array<index_t, 3>{B, H, Dv}, "B,H,Dv");
  check.shape("state.ema", state.ema, std::array<index_t, 3>{B, D, N}, "B,D,N");
  check.shape("state.k_cache", state.k_cache, std::array<index_t, 4>{B, c, H, Dk}, "B,c,H,Dk");
  check.shape("state.v_cache", state.v_cache, std::array<index_t, 4>{B, c, H, Dv}, "B,c,H,Dv");
  const float scale = scale_of(options, Dk);
  const Coefficients coef = coefficients(in.params, D, N);
  const index_t slot = in.position % c;
  std::vector<float> st(static_cast<std::size_t>(N * D)), xr(static_cast<std::size_t>(D)), q(xr.size()), k(xr.size()),
      w(static_cast<std::size_t>(slot + 1));
  for (index_t b = 0; b < B; ++b) {
    for (index_t d = 0; d < D; ++d) {
      xr[d] = in.x(b, d);
      for (index_t j = 0; j < N; ++j) st[j * D + d] = state.ema(b, d, j);
    }
    ema_token(coef, 0, D, xr.data(), st.data(), nullptr, q.data(), k.data());
    for (index_t d = 0; d < D; ++d)
      for (index_t j = 0; j < N; ++j) state.ema(b, d, j) = st[j * D + d];
    for (index_t h = 0; h < H; ++h) {
      for (index_t i = 0; i < Dk; ++i) state.k_cache(b, slot, h, i) = k[h * Dk + i];
      for (index_t e = 0; e < Dv; ++e) state.v_cache(b, slot, h, e) = in.v(b, h, e);
      float m = -std::numeric_limits<float>::infinity(), den = 0.f;
      for (index_t s = 0; s <= slot; ++s) {
        float dot = 0.f;
        for (index_t i = 0; i < Dk; ++i) dot += q[h * Dk + i] * state.k_cache(b, s, h, i);
        w[s] = scale * dot;
        m = std::max(m, w[s]);
      }
      for (index_t s = 0; s <= slot; ++s) den += (w[s] = std::exp(w[s] - m));
      for (index_t e = 0; e < Dv; ++e) {
        float acc = 0.f;
        for (index_t s = 0; s <= slot; ++s) acc += w[s] * state.v_cache(b, s, h, e);
        o(b, h, e) = acc / den;
      }
    }
  }
}

}  // namespace seqmix
