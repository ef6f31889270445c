// The q/k/v shape check of the recurrent operators that read queries, keys and values token-major
// (linear attention's family, Titans' memory): one rule for grouped heads, so every such operator
// accepts and refuses the same shapes. Internal.
#pragma once

#include <array>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

// Sizes of a call: q/k heads H, value heads HV (a multiple of H). B, T are the token tensors'
// first dims ([1, total_T] when packed). Kf is the feature dimension after a feature map (= K
// until a caller's map changes it).
struct QkvDims {
  index_t B, T, H, HV, K, Kf, V;
  index_t heads_per_qk() const { return HV / H; }
};

// q and k [B,T,H,K], v [B,T,HV,V] with H dividing HV. Names q as `q_name` (r for rwkv6). E: the
// element type of the views (float, or a 16-bit storage type).
template <class E>
QkvDims check_qkv(const ArgCheck& check, const char* q_name, const ConstView<E, 4>& q, const ConstView<E, 4>& k,
                  const ConstView<E, 4>& v) {
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

// Same for a decode step: q, k [B,H,K], v [B,HV,V] (E as above).
template <class E>
QkvDims check_qkv_step(const ArgCheck& check, const char* q_name, const ConstView<E, 3>& q, const ConstView<E, 3>& k,
                       const ConstView<E, 3>& v) {
  check.shape(q_name, q, std::array<index_t, 3>{-1, -1, -1}, "B,H,K");
  const index_t B = q.size(0), H = q.size(1), K = q.size(2);
  check.shape("k", k, std::array<index_t, 3>{B, H, K}, "B,H,K");
  check.shape("v", v, std::array<index_t, 3>{B, -1, -1}, "B,HV,V");
  if (H <= 0 || K <= 0)
    check.fail(q_name, "must have at least one head and one key channel, got shape " + shape_to_string(q.shape()));
  check.divides(H, v.size(1), "v", "... q/k heads; v's head count HV (dimension 1)");
  return {B, 1, H, v.size(1), K, K, v.size(2)};
}

}  // namespace seqmix::detail
