// Monoids for seqmix::associative_scan, and the requirements a user-supplied one must meet.
//
// A Monoid is a small copyable object with
//   using value_type = ...;                               // copyable, default-constructible
//   value_type identity() const;                          // combine(identity(), x) == x == combine(x, identity())
//   value_type combine(const value_type& left, const value_type& right) const;
// where `left` covers earlier positions than `right`, and combine is associative (it need not be
// commutative). combine must be safe to call from several threads at once (no mutable state).
// With floating-point values the chunked parallel scan regroups the combines, so results match
// the sequential fold up to rounding.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace seqmix {

/// Plain sum (prefix sums).
template <class T>
struct SumMonoid {
  /// The Monoid interface (header comment): element type, identity, associative combine.
  ///@{
  using value_type = T;
  value_type identity() const { return T(0); }
  value_type combine(const value_type& left, const value_type& right) const { return left + right; }
  ///@}
};

/// The first-order linear recurrence as a monoid: the element (a, b) is the map h -> a*h + b, and
/// combine(left, right) applies left first, then right:
///   (a2, b2) o (a1, b1) = (a2*a1, a2*b1 + b2).
/// Scanning it and applying the prefix to h0 gives linear_scan's h_t; it is not commutative.
template <class T>
struct AffineMap {
  ///@{
  /// The map h -> a * h + b.
  T a, b;
  ///@}
};

template <class T>
/// The monoid of AffineMap under composition (see AffineMap).
struct AffineMonoid {
  /// The Monoid interface (header comment): element type, identity, associative combine.
  ///@{
  using value_type = AffineMap<T>;
  value_type identity() const { return {T(1), T(0)}; }
  value_type combine(const value_type& left, const value_type& right) const {
    return {right.a * left.a, right.a * left.b + right.b};
  }
  ///@}
};

/// Online softmax over scalar values: the state of sum_i softmax(s)_i * v_i over a set of
/// positions, kept as (max logit m, l = sum exp(s_i - m), acc = sum exp(s_i - m) * v_i), so that
/// merging two sets only rescales by exp(m_old - m_new). The softmax-weighted mean is acc / l.
/// Attention (SPEC section 5) uses the same algebra with a vector acc; this scalar form is the
/// example and the test of the generic scan.
struct OnlineSoftmaxState {
  float m;    ///< running max logit; -inf for the empty set
  float l;    ///< sum of exp(s - m)
  float acc;  ///< sum of exp(s - m) * v

  /// The state of one position with logit `s` and value `v`.
  static OnlineSoftmaxState leaf(float s, float v) { return {s, 1.f, v}; }
  /// The softmax-weighted mean acc / l (NaN for the empty set).
  float mean() const { return acc / l; }
};

/// The monoid of OnlineSoftmaxState: combining two sets rescales both to their larger max.
struct OnlineSoftmax {
  /// The Monoid interface (header comment): element type, identity, associative combine.
  ///@{
  using value_type = OnlineSoftmaxState;
  value_type identity() const { return {-std::numeric_limits<float>::infinity(), 0.f, 0.f}; }
  value_type combine(const value_type& left, const value_type& right) const {
    const float m = std::fmax(left.m, right.m);
    // Both sides empty (or holding only NaN weights, l NaN at m = -inf, which must stay NaN):
    // adding avoids exp(-inf - -inf) = NaN and gives the identity for two empty sides.
    if (m == -std::numeric_limits<float>::infinity()) return {m, left.l + right.l, left.acc + right.acc};
    const float wl = std::exp(left.m - m), wr = std::exp(right.m - m);  // exp(-inf) = 0 for an empty side
    return {m, left.l * wl + right.l * wr, left.acc * wl + right.acc * wr};
  }
  ///@}
};

}  // namespace seqmix
