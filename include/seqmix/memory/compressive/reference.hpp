// compressive_memory: attention over a FIFO memory of past keys / values and a second-level
// memory of compressed evicted entries (Compressive Transformer, Rae et al. 2020; issue 22 item
// 2). README.md has the definition and the differences from the paper.
//
// This header holds the options, the argument structs, the stream state, their validation and
// the readable definition (seqmix::reference::compressive_memory: loops in double, from an empty
// memory). The fast form and the streaming step are in fast.hpp.
//
//   q [B,T,Hq,dk], k [B,T,Hkv,dk], v [B,T,Hkv,dv]; query head g reads KV head g / (Hq / Hkv).
//   Per (batch row, KV head) a memory (FIFO, capacity n_m = options.memory) and a compressed
//   memory (FIFO, capacity n_cm = options.compressed), both empty at the start. The tokens are cut
//   into segments of `segment` tokens (0: one segment). For each segment:
//     attend   token t reads [compressed ; memory ; the segment's keys up to t] with softmax
//              attention, scale * q.k
//     usage    (most_used only) each memory and segment entry adds the attention weights it
//              got from every query of the segment and every query head of its group
//     append   the segment's keys / values (and usage) to the memory
//     evict    the oldest floor((size - n_m) / c) * c entries of the memory, c = options.rate,
//              so the memory keeps between n_m and n_m + c - 1 entries
//     compress each group of c evicted entries (oldest first) into one:
//              mean     the mean of the c keys and of the c values
//              max      their element-wise maximum
//              conv     k' = sum_i Wk[h,i] k_i, v' = sum_i Wv[h,i] v_i (a strided convolution of
//                       kernel and stride c with the caller's weights, Wk [Hkv,c,dk,dk])
//              most_used the entry of the group with the largest usage (the earliest on ties)
//              appended to the compressed memory, whose oldest entries beyond n_cm are dropped.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// How compressive_memory compresses c evicted entries into one (docs/operators.md section 13).
enum class Compression {
  /// Mean pooling of the c keys and of the c values.
  mean,
  /// Element-wise max pooling.
  max,
  /// Strided convolution (kernel and stride c) with the caller's weights conv_key / conv_value.
  conv,
  /// Keeps the entry of the group with the largest accumulated attention (usage).
  most_used,
};

/// Options of compressive_memory and compressive_memory_step.
struct CompressiveMemoryOptions {
  /// The compression function (Compression).
  Compression compression = Compression::mean;
  /// Tokens per segment (the memories are updated once per segment); 0: all T in one.
  index_t segment = 0;
  /// n_m: entries the memory keeps (it may hold up to n_m + rate - 1, see the definition).
  index_t memory = 0;
  /// n_cm: entries the compressed memory keeps (0: evicted entries are dropped).
  index_t compressed = 0;
  /// c: evicted entries per compressed entry (>= 1).
  index_t rate = 1;
  /// Multiplies q.k; 0 means 1 / sqrt(dk).
  float scale = 0.f;
  /// Run from the last token to the first (core/direction.hpp): q, k, v and o are reached through
  /// reversed views, not copied, so segments are cut from token T-1 and the memories hold later
  /// tokens. compressive_memory_step ignores it.
  bool reverse = false;
};

/// Convolution weights of Compression::conv: entry e of the compressed key is
/// sum_i sum_f conv_key[h,i,e,f] k_i[f] over the group's entries i (oldest first).
struct CompressiveMemoryWeights {
  ConstView<float, 4> conv_key = {};    ///< [Hkv,c,dk,dk], Compression::conv only (required there)
  ConstView<float, 4> conv_value = {};  ///< [Hkv,c,dv,dv], Compression::conv only (required there)
};

/// Inputs of compressive_memory.
struct CompressiveMemoryInputs {
  ConstView<float, 4> q;  ///< [B,T,Hq,dk]
  ConstView<float, 4> k;  ///< [B,T,Hkv,dk], Hkv divides Hq
  ConstView<float, 4> v;  ///< [B,T,Hkv,dv]
  /// The convolution weights (Compression::conv only).
  CompressiveMemoryWeights weights = {};
};

/// Outputs of compressive_memory: o must not overlap an input.
struct CompressiveMemoryOutputs {
  TensorView<float, 4> o;  ///< [B,T,Hq,dv]
};

namespace detail {

struct CompressiveDims {
  index_t B, T, Hq, Hkv, G, dk, dv, L, n_m, n_cm, c;
  float scale;
};

// A reverse call (options.reverse) as the forward call on reversed views of q, k, v and o.
inline std::pair<CompressiveMemoryInputs, CompressiveMemoryOutputs> compressive_reversed_call(CompressiveMemoryInputs in,
                                                                                             CompressiveMemoryOutputs out) {
  reverse_time_of(in.q, in.k, in.v, out.o);
  return {in, out};
}

inline CompressiveDims validate_compressive_memory(const ArgCheck& check, const CompressiveMemoryInputs& in,
                                                   const CompressiveMemoryOutputs& out,
                                                   const CompressiveMemoryOptions& options) {
  check.shape("q", in.q, {-1, -1, -1, -1}, "B,T,Hq,dk");
  CompressiveDims d{};
  d.B = in.q.size(0), d.T = in.q.size(1), d.Hq = in.q.size(2), d.dk = in.q.size(3);
  check.shape("k", in.k, {d.B, d.T, -1, d.dk}, "B,T,Hkv,dk");
  d.Hkv = in.k.size(2);
  check.that(d.Hq >= 1, "q", "needs at least one head");
  check.divides(d.Hkv, d.Hq, "k", "KV heads");
  check.shape("v", in.v, {d.B, d.T, d.Hkv, -1}, "B,T,Hkv,dv");
  d.dv = in.v.size(3);
  check.that(d.dk >= 1 && d.dv >= 1, "q", "needs dk >= 1 and dv >= 1");
  d.G = d.Hq / d.Hkv;
  check.enum_value("compression", options.compression, 4);
  check.that(options.segment >= 0, "segment", "must be >= 0, got " + std::to_string(options.segment));
  d.L = options.segment == 0 ? std::max<index_t>(d.T, 1) : options.segment;
  check.that(options.memory >= 0, "memory", "must be >= 0, got " + std::to_string(options.memory));
  check.that(options.compressed >= 0, "compressed", "must be >= 0, got " + std::to_string(options.compressed));
  check.that(options.rate >= 1, "rate", "must be >= 1, got " + std::to_string(options.rate));
  d.n_m = options.memory, d.n_cm = options.compressed, d.c = options.rate;
  check.product("memory", d.n_m + d.c, std::max(d.dk, d.dv));
  check.product("compressed", d.n_cm + 1, std::max(d.dk, d.dv));
  check.finite(options.scale, "scale");
  d.scale = options.scale == 0.f ? 1.f / std::sqrt(static_cast<float>(d.dk)) : options.scale;
  const auto& w = in.weights;
  if (options.compression == Compression::conv) {
    check.shape("conv_key", w.conv_key, {d.Hkv, d.c, d.dk, d.dk}, "Hkv,c,dk,dk");
    check.shape("conv_value", w.conv_value, {d.Hkv, d.c, d.dv, d.dv}, "Hkv,c,dv,dv");
  } else {
    check.that(!w.conv_key.has_value() && !w.conv_value.has_value(), "conv_key",
               "is only used by Compression::conv");
  }
  check.shape("o", out.o, {d.B, d.T, d.Hq, d.dv}, "B,T,Hq,dv");
  check.no_overlap("o", out.o, "q", in.q).no_overlap("o", out.o, "k", in.k).no_overlap("o", out.o, "v", in.v)
      .no_overlap("o", out.o, "conv_key", w.conv_key).no_overlap("o", out.o, "conv_value", w.conv_value);
  return d;
}

}  // namespace detail

namespace reference {

/// compressive_memory by its definition, in double, from empty memories: per batch row and KV
/// head, the memories as lists of rows, the attention and the compression as loops. For tests.
/// Validation as compressive_memory.
inline void compressive_memory(const CompressiveMemoryInputs& in, const CompressiveMemoryOutputs& out,
                               const CompressiveMemoryOptions& options = {}) {
  if (options.reverse) {
    const auto rev = detail::compressive_reversed_call(in, out);
    return compressive_memory(rev.first, rev.second, detail::forward_options(options));
  }
  const ArgCheck check("reference::compressive_memory");
  const auto d = detail::validate_compressive_memory(check, in, out, options);
  using Row = std::vector<double>;
  for (index_t b = 0; b < d.B; ++b)
    for (index_t h = 0; h < d.Hkv; ++h) {
      std::vector<Row> mk, mv, ck, cv;  // memory and compressed memory, oldest first
      std::vector<double> usage;        // of the memory's entries
      for (index_t t0 = 0; t0 < d.T; t0 += d.L) {
        const index_t len = std::min(d.L, d.T - t0);
        // The keys a token reads: compressed, memory, then the segment's.
        std::vector<Row> keys = ck, values = cv;
        keys.insert(keys.end(), mk.begin(), mk.end());
        values.insert(values.end(), mv.begin(), mv.end());
        const index_t past = static_cast<index_t>(keys.size()), n_c = static_cast<index_t>(ck.size());
        for (index_t j = 0; j < len; ++j) {
          Row key(static_cast<std::size_t>(d.dk)), value(static_cast<std::size_t>(d.dv));
          for (index_t e = 0; e < d.dk; ++e) key[e] = in.k(b, t0 + j, h, e);
          for (index_t e = 0; e < d.dv; ++e) value[e] = in.v(b, t0 + j, h, e);
          keys.push_back(key), values.push_back(value);
        }
        std::vector<double> got(keys.size(), 0.0);  // attention weight each entry received
        for (index_t g = h * d.G; g < (h + 1) * d.G; ++g)
          for (index_t j = 0; j < len; ++j) {
            const index_t visible = past + j + 1;
            std::vector<double> p(static_cast<std::size_t>(visible));
            double top = -INFINITY, total = 0;
            for (index_t i = 0; i < visible; ++i) {
              double dot = 0;
              for (index_t e = 0; e < d.dk; ++e) dot += static_cast<double>(in.q(b, t0 + j, g, e)) * keys[i][e];
              p[i] = d.scale * dot;
              top = std::fmax(top, p[i]);
            }
            for (auto& e : p) total += e = std::exp(e - top);
            for (index_t e = 0; e < d.dv; ++e) {
              double sum = 0;
              for (index_t i = 0; i < visible; ++i) sum += p[i] / total * values[i][e];
              out.o(b, t0 + j, g, e) = static_cast<float>(sum);
            }
            for (index_t i = 0; i < visible; ++i) got[i] += p[i] / total;
          }
        for (index_t i = n_c; i < static_cast<index_t>(got.size()); ++i) {
          const index_t m = i - n_c;
          if (m < static_cast<index_t>(usage.size())) usage[m] += got[i];
          else usage.push_back(got[i]);
        }
        mk.assign(keys.begin() + n_c, keys.end());
        mv.assign(values.begin() + n_c, values.end());
        const index_t size = static_cast<index_t>(mk.size());
        const index_t evict = size > d.n_m ? (size - d.n_m) / d.c * d.c : 0;
        for (index_t g0 = 0; g0 < evict; g0 += d.c) {
          Row key(static_cast<std::size_t>(d.dk), 0.0), value(static_cast<std::size_t>(d.dv), 0.0);
          if (options.compression == Compression::most_used) {
            index_t best = g0;
            for (index_t i = g0 + 1; i < g0 + d.c; ++i)
              if (usage[i] > usage[best]) best = i;
            key = mk[best], value = mv[best];
          } else if (options.compression == Compression::conv) {
            for (index_t i = 0; i < d.c; ++i) {
              for (index_t e = 0; e < d.dk; ++e)
                for (index_t f = 0; f < d.dk; ++f) key[e] += static_cast<double>(in.weights.conv_key(h, i, e, f)) * mk[g0 + i][f];
              for (index_t e = 0; e < d.dv; ++e)
                for (index_t f = 0; f < d.dv; ++f)
                  value[e] += static_cast<double>(in.weights.conv_value(h, i, e, f)) * mv[g0 + i][f];
            }
          } else {
            const bool is_max = options.compression == Compression::max;
            key = mk[g0], value = mv[g0];
            for (index_t i = g0 + 1; i < g0 + d.c; ++i) {
              for (index_t e = 0; e < d.dk; ++e) key[e] = is_max ? std::fmax(key[e], mk[i][e]) : key[e] + mk[i][e];
              for (index_t e = 0; e < d.dv; ++e) value[e] = is_max ? std::fmax(value[e], mv[i][e]) : value[e] + mv[i][e];
            }
            if (!is_max) {
              for (auto& e : key) e /= static_cast<double>(d.c);
              for (auto& e : value) e /= static_cast<double>(d.c);
            }
          }
          ck.push_back(key), cv.push_back(value);
        }
        mk.erase(mk.begin(), mk.begin() + evict), mv.erase(mv.begin(), mv.begin() + evict);
        usage.erase(usage.begin(), usage.begin() + evict);
        const index_t drop = std::max<index_t>(0, static_cast<index_t>(ck.size()) - d.n_cm);
        ck.erase(ck.begin(), ck.begin() + drop), cv.erase(cv.begin(), cv.begin() + drop);
      }
    }
}

}  // namespace reference
}  // namespace seqmix
