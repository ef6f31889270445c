// Argument checks shared by the family's entry points. Internal.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <string>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail::la {

// Sizes of a family call: q/k heads H, value heads HV (a multiple of H), gate/bonus heads Hg.
struct Dims {
  index_t B, T, H, HV, K, Kf, V;
  index_t heads_per_qk() const { return HV / H; }
};

// q and k [B,T,H,K], v [B,T,HV,V] with H dividing HV. Names q as `q_name` (r for rwkv6).
inline Dims check_qkv(const ArgCheck& check, const char* q_name, const ConstView<float, 4>& q,
                      const ConstView<float, 4>& k, const ConstView<float, 4>& v) {
  check.shape(q_name, q, std::array<index_t, 4>{-1, -1, -1, -1}, "B,T,H,K");
  const index_t B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3);
  check.shape("k", k, std::array<index_t, 4>{B, T, H, K}, "B,T,H,K");
  check.shape("v", v, std::array<index_t, 4>{B, T, -1, -1}, "B,T,HV,V");
  const index_t HV = v.size(2);
  if (H <= 0 || K <= 0)
    check.fail(q_name, "must have at least one head and one key channel, got shape " + shape_to_string(q.shape()));
  check.divides(H, HV, "v", "... q/k heads; v's head count HV (dimension 2)");
  return {B, T, H, HV, K, K, v.size(3)};
}

// Same for a decode step: q, k [B,H,K], v [B,HV,V].
inline Dims check_qkv_step(const ArgCheck& check, const char* q_name, const ConstView<float, 3>& q,
                           const ConstView<float, 3>& k, const ConstView<float, 3>& v) {
  check.shape(q_name, q, std::array<index_t, 3>{-1, -1, -1}, "B,H,K");
  const index_t B = q.size(0), H = q.size(1), K = q.size(2);
  check.shape("k", k, std::array<index_t, 3>{B, H, K}, "B,H,K");
  check.shape("v", v, std::array<index_t, 3>{B, -1, -1}, "B,HV,V");
  if (H <= 0 || K <= 0)
    check.fail(q_name, "must have at least one head and one key channel, got shape " + shape_to_string(q.shape()));
  check.divides(H, v.size(1), "v", "... q/k heads; v's head count HV (dimension 1)");
  return {B, 1, H, v.size(1), K, K, v.size(2)};
}

// A per-head input (gate or bonus) may have H heads (shared like q/k) or HV (one per value head).
// The message is built only on failure: formatting it every call cost ~5% of a decode step.
template <class Shape>
void check_head_count(const ArgCheck& check, const char* argument, index_t heads, const Dims& d, const Shape& shape) {
  if (heads == d.H || heads == d.HV) return;
  check.fail(argument,
             "must have H = " + std::to_string(d.H) + " or HV = " + std::to_string(d.HV) + " heads, got shape " +
                 shape_to_string(shape));
}

// The head of an H- or HV-headed input that value head hv uses.
inline index_t head_for(index_t heads, index_t hv, const Dims& d) { return heads == d.HV ? hv : hv / d.heads_per_qk(); }

inline float check_scale(const ArgCheck& check, const std::optional<float>& scale, index_t K) {
  const float value = scale ? *scale : 1.f / std::sqrt(static_cast<float>(K));
  check.finite(value, "options.scale");
  return value;
}

inline void check_chunk(const ArgCheck& check, index_t chunk) {
  check.that(chunk >= 1 && chunk <= 4096, "options.chunk_size",
             "must be in [1, 4096], got " + std::to_string(chunk));
}

}  // namespace seqmix::detail::la
