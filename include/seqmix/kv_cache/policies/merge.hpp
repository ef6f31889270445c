// Merging evicted entries into kept ones (an option of every policy: run it on any KeptSet).
//
// For one (batch row, KV head) with fp32 keys [N, Dk], values [N, Dv] and attention masses
// mass [N] (e.g. observation_scores), each evicted entry e goes to the kept entry t with the
// highest cosine similarity of keys (ties to the older kept entry; a zero key has similarity 0
// with everything). Every kept entry then becomes the mass-weighted mean of itself and the
// entries merged into it:
//   k_t <- (m_t k_t + sum_e m_e k_e) / (m_t + sum_e m_e),   same for v,   m_t <- m_t + sum_e m_e
// which is the pairwise rule (m_keep k_keep + m_ev k_ev) / (m_keep + m_ev) applied in any order.
// A kept entry whose total mass is 0 stays unchanged. The similarities are one GEMM of the
// normalised evicted keys against the normalised kept keys, in blocks of kMergeBlock rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/kv_cache/policies/common.hpp"

namespace seqmix::kv {

/// The rows of one head merge_evicted reads: every entry's key, value and attention mass.
struct MergeInputs {
  ConstView<float, 2> keys;    ///< [N, Dk]
  ConstView<float, 2> values;  ///< [N, Dv]
  ConstView<float, 1> mass;    ///< [N], >= 0
};

/// Where merge_evicted writes the kept rows after the evicted ones are merged into them.
struct MergeOutputs {
  TensorView<float, 2> keys;    ///< [n, Dk], n = kept.size(): row i is the merged kept[i]
  TensorView<float, 2> values;  ///< [n, Dv]
  TensorView<float, 1> mass;    ///< [n]
};

namespace detail {

// Evicted rows per similarity GEMM: 256 x n_kept floats of scratch (2 MB at n_kept = 2048).
constexpr index_t kMergeBlock = 256;

inline RowMajorMatrix<float> normalized_rows(const ConstView<float, 2>& x, const std::vector<index_t>& rows) {
  RowMajorMatrix<float> out(static_cast<index_t>(rows.size()), x.size(1));
  for (index_t i = 0; i < out.rows(); ++i) {
    double norm = 0.0;
    for (index_t c = 0; c < x.size(1); ++c) {
      const float v = x(rows[static_cast<std::size_t>(i)], c);
      out(i, c) = v;
      norm += double(v) * v;
    }
    if (norm > 0.0) out.row(i) /= static_cast<float>(std::sqrt(norm));
  }
  return out;
}

}  // namespace detail

/// Merges the entries of one head not listed in `kept` (strictly increasing indices < N) into
/// the kept ones; returns, for each evicted entry in increasing index order, the position in
/// `kept` it was merged into.
inline std::vector<index_t> merge_evicted(const MergeInputs& in, const std::vector<index_t>& kept,
                                          const MergeOutputs& out) {
  const ArgCheck check("kv::merge_evicted");
  check.shape("keys", in.keys, {-1, -1}, "N,Dk");
  const index_t N = in.keys.size(0), Dk = in.keys.size(1);
  check.shape("values", in.values, {N, -1}, "N,Dv");
  const index_t Dv = in.values.size(1);
  check.shape("mass", in.mass, {N}, "N");
  const index_t n = static_cast<index_t>(kept.size());
  for (index_t i = 0; i < n; ++i) {
    const index_t j = kept[static_cast<std::size_t>(i)];
    if (j < 0 || j >= N || (i > 0 && j <= kept[static_cast<std::size_t>(i - 1)]))
      check.fail("kept", "must hold strictly increasing indices in [0, " + std::to_string(N) + "), got " +
                             std::to_string(j) + " at position " + std::to_string(i));
  }
  check.that(n > 0 || N == 0, "kept", "is empty but there are " + std::to_string(N) + " entries to merge");
  for (index_t j = 0; j < N; ++j)
    if (!(in.mass(j) >= 0.f)) check.fail("mass", "must be >= 0, got " + std::to_string(in.mass(j)) + " at entry " + std::to_string(j));
  check.shape("out.keys", out.keys, {n, Dk}, "n,Dk").shape("out.values", out.values, {n, Dv}, "n,Dv");
  check.shape("out.mass", out.mass, {n}, "n");

  std::vector<index_t> evicted;
  evicted.reserve(static_cast<std::size_t>(N - n));
  for (index_t j = 0, next = 0; j < N; ++j) {
    if (next < n && kept[static_cast<std::size_t>(next)] == j)
      ++next;
    else
      evicted.push_back(j);
  }
  // Nearest kept entry of each evicted one.
  std::vector<index_t> target(evicted.size());
  const RowMajorMatrix<float> kept_n = detail::normalized_rows(in.keys, kept);
  for (std::size_t e0 = 0; e0 < evicted.size(); e0 += detail::kMergeBlock) {
    const std::vector<index_t> block(evicted.begin() + static_cast<std::ptrdiff_t>(e0),
                                     evicted.begin() + static_cast<std::ptrdiff_t>(std::min(evicted.size(), e0 + detail::kMergeBlock)));
    const RowMajorMatrix<float> ev_n = detail::normalized_rows(in.keys, block);
    const RowMajorMatrix<float> sim = ev_n * kept_n.transpose();
    for (index_t r = 0; r < sim.rows(); ++r) {
      index_t best = 0;
      for (index_t i = 1; i < n; ++i)
        if (sim(r, i) > sim(r, best)) best = i;
      target[e0 + static_cast<std::size_t>(r)] = best;
    }
  }
  // Mass-weighted sums, accumulated in double, then divided.
  std::vector<double> sk(static_cast<std::size_t>(n * Dk)), sv(static_cast<std::size_t>(n * Dv)),
      sm(static_cast<std::size_t>(n));
  const auto add = [&](index_t i, index_t j) {
    const double m = in.mass(j);
    sm[static_cast<std::size_t>(i)] += m;
    for (index_t c = 0; c < Dk; ++c) sk[static_cast<std::size_t>(i * Dk + c)] += m * in.keys(j, c);
    for (index_t c = 0; c < Dv; ++c) sv[static_cast<std::size_t>(i * Dv + c)] += m * in.values(j, c);
  };
  for (index_t i = 0; i < n; ++i) add(i, kept[static_cast<std::size_t>(i)]);
  for (std::size_t e = 0; e < evicted.size(); ++e) add(target[e], evicted[e]);
  for (index_t i = 0; i < n; ++i) {
    const index_t j = kept[static_cast<std::size_t>(i)];
    const double m = sm[static_cast<std::size_t>(i)];
    for (index_t c = 0; c < Dk; ++c)
      out.keys(i, c) = m > 0.0 ? static_cast<float>(sk[static_cast<std::size_t>(i * Dk + c)] / m) : in.keys(j, c);
    for (index_t c = 0; c < Dv; ++c)
      out.values(i, c) = m > 0.0 ? static_cast<float>(sv[static_cast<std::size_t>(i * Dv + c)] / m) : in.values(j, c);
    out.mass(i) = static_cast<float>(m);
  }
  return target;
}

/// Every (b, h) of a KeptSet at once. keys [B, N, H, Dk], values [B, N, H, Dv], mass [B, H, N];
/// outputs out_keys [B, C, H, Dk], out_values [B, C, H, Dv], out_mass [B, H, C] with
/// C >= kept.max_kept(); rows past a head's kept count are left untouched.
inline void merge_evicted(const ConstView<float, 4>& keys, const ConstView<float, 4>& values,
                          const ConstView<float, 3>& mass, const KeptSet& kept, const TensorView<float, 4>& out_keys,
                          const TensorView<float, 4>& out_values, const TensorView<float, 3>& out_mass,
                          const Executor& executor = serial_executor()) {
  const ArgCheck check("kv::merge_evicted");
  const index_t B = kept.batch(), N = kept.entries(), H = kept.heads();
  check.shape("keys", keys, {B, N, H, -1}, "B,N,H,Dk");
  check.shape("values", values, {B, N, H, -1}, "B,N,H,Dv");
  check.shape("mass", mass, {B, H, N}, "B,H,N");
  check.shape("out_keys", out_keys, {B, -1, H, keys.size(3)}, "B,C,H,Dk");
  const index_t C = out_keys.size(1);
  check.that(C >= kept.max_kept(), "out_keys",
             "has room for " + std::to_string(C) + " entries per head, the kept set needs " + std::to_string(kept.max_kept()));
  check.shape("out_values", out_values, {B, C, H, values.size(3)}, "B,C,H,Dv");
  check.shape("out_mass", out_mass, {B, H, C}, "B,H,C");
  parallel_for(executor, B * H, 1, [&](index_t begin, index_t end) {
    for (index_t bh = begin; bh < end; ++bh) {
      const index_t b = bh / H, h = bh % H;
      const index_t n = static_cast<index_t>(kept(b, h).size());
      MergeInputs in{keys[b].select(1, h), values[b].select(1, h), mass[b][h]};
      MergeOutputs out{out_keys[b].select(1, h).slice(0, 0, n), out_values[b].select(1, h).slice(0, 0, n),
                       out_mass[b][h].slice(0, 0, n)};
      merge_evicted(in, kept(b, h), out);
    }
  });
}

}  // namespace seqmix::kv
