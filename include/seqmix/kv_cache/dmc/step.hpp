// dmc, decode step: one token per batch row merged into or appended to the cache, then every
// query head of the group attends over the head's slots. No heap allocation after the first step:
// the scaled queries, accumulators and score tile of a task live in a scratch the cache keeps
// (B*Hkv rows of dmc_group_scratch floats, sized by the first step, or by one with a larger GQA
// group; a task uses the row of its first (b, KV head)). Same kernels as the prefill (fast.hpp),
// in the same order, so a prefill followed by steps gives the bits of one prefill.
#pragma once

#include "seqmix/kv_cache/dmc/fast.hpp"

namespace seqmix {

/// One DMC decode step (docs/operators.md section 6, dmc): q [B,Hq,Dk], k [B,Hkv,Dk],
/// v [B,Hkv,Dv], alpha and omega [B,Hkv], o [B,Hq,Dv]. Equals dmc_attention with T = 1;
/// validated the same way (ShapeError before o or the cache is written), including a full cache.
/// Threaded over (b, KV head); makes no heap allocation once a step with this group size has run.
inline void dmc_decode_step(const DmcStepInputs& in, DmcCache& cache, const TensorView<float, 3>& o,
                            const DmcOptions& options = {}, const Executor& executor = serial_executor()) {
  static const ArgCheck check("dmc_decode_step");  // static: its name is not allocated per call
  const DmcInputs one = detail::dmc_step_as_prefill(in);
  const auto d = detail::validate_dmc(check, one, cache, detail::dmc_one_token(o), options);
  const index_t row = detail::dmc_group_scratch(d.group, d.Dk, d.Dv);
  detail::DmcCacheAccess::reserve_scratch(cache, row);
  parallel_for(executor, d.B * d.Hkv, 1, [&](index_t begin, index_t end) {
    float* scratch = detail::DmcCacheAccess::scratch(cache, begin * row);
    for (index_t task = begin; task < end; ++task) {
      const index_t b = task / d.Hkv, h = task % d.Hkv;
      detail::dmc_update(cache, b, h, in.k.ptr(b, h, index_t{0}), in.k.stride(2), in.v.ptr(b, h, index_t{0}),
                         in.v.stride(2), in.alpha(b, h), in.omega(b, h));
      const index_t n = cache.size(b, h);
      const float* last_k = detail::DmcCacheAccess::key(cache, b, h, n - 1);
      const float* last_v = detail::DmcCacheAccess::value(cache, b, h, n - 1);
      detail::dmc_attend_group(cache, b, h, n - 1, last_k, last_v, in.q.ptr(b, h * d.group, index_t{0}), in.q.stride(1),
                               in.q.stride(2), d.group, d.scale, scratch,
                               [&](index_t g, index_t c, float x) { o(b, h * d.group + g, c) = x; });
    }
  });
  for (index_t b = 0; b < d.B; ++b) detail::DmcCacheAccess::tokens(cache, b) += 1;
}

}  // namespace seqmix
