// The fast prefill of rwkv7: the recurrent form, vectorized over V and multi-threaded over
// (batch, head), each head split into blocks of value columns when there are fewer (batch, head)
// items than threads (delta_update::for_each_item: p = S^T a and the update are per column). It is the delta family's fused token kernel (delta_update/recurrent.hpp) in
// its rwkv7 mode: sweep 1 reads p = S^T a, sweep 2 writes S = diag(w) S + b p^T + k v^T and
// accumulates o = S^T r while the column tile is in L1.
//
// Why recurrent and not chunked: a chunked form of the diagonal-plus-rank-one transition needs
// the WY solve with a per-channel decay (pairwise exp(gamma_i - gamma_j) per channel, as KDA's
// strong-decay path) plus two extra [C,K] x [K,V] products for the a- and b-terms. For RWKV-7's
// K = V = 64 the state of a head is 16 KB and stays in L1, where this kernel runs at about 5
// vector ops per state element per token; the chunked form would do roughly 3x the flops in
// GEMMs of that small size. So the recurrent form is the fast path here (measured figures in
// delta_update/README.md).
#pragma once

#include <cstddef>
#include <optional>
#include <type_traits>

#include "seqmix/core/half.hpp"
#include "seqmix/linear_attention/delta_update/driver.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"

namespace seqmix {

namespace delta_update {

// Row (i, h) of a [B,H,K]-shaped view as fp32: a contiguous fp32 row in place, a strided one
// copied and a 16-bit one (bf16, f16) widened into `scratch`.
template <class E>
const float* rwkv7_row(const ConstView<E, 3>& x, index_t i, index_t h, float* scratch) {
  const ConstView<E, 1> row = x[i][h];
  if constexpr (std::is_same_v<E, float>) {
    if (row.is_last_dim_contiguous()) return row.data();
    copy_row(row, scratch);
  } else {
    if (row.is_last_dim_contiguous()) {
      convert(row.data(), scratch, row.size(0));
    } else {
      for (index_t c = 0; c < row.size(0); ++c) scratch[c] = row(c).to_float();
    }
  }
  return scratch;
}

// The operands of token (b, t, h) of a [B,T,H,K] / [B,T,H,V] call or (b, h) of a step; fp32
// rows with a contiguous last dimension are used in place, 16-bit rows widened into `ws`.
template <class E>
TokenOperands load_rwkv7_token(const ConstView<E, 3>& r, const ConstView<E, 3>& k, const ConstView<E, 3>& v,
                               const ConstView<E, 3>& a, const ConstView<E, 3>& b, const ConstView<float, 3>& g,
                               index_t i, index_t h, TokenWorkspace& ws) {
  const auto row = [&](const ConstView<E, 3>& x, float* scratch) { return rwkv7_row(x, i, h, scratch); };
  TokenOperands x;
  x.q = row(r, ws.q());
  x.k = row(k, ws.k());
  x.v = row(v, ws.v());
  x.alpha = row(a, ws.alpha());
  x.b = row(b, ws.b());
  copy_row(g[i][h], ws.w());
  exp_rows(ws.w(), ws.w(), g.size(2));
  x.w = ws.w();
  x.w_stride = 1;
  return x;
}

// Requests the rows of token (i, h) of the six inputs into L1, a few tokens ahead of their use.
// Token rows lie H*K floats apart, so consecutive tokens of a head cross a 4 KB page every few
// tokens, where the hardware prefetchers stop; a reverse call (core/direction.hpp) walks the rows
// downwards, which they follow worse still.
template <class E>
void prefetch_rwkv7_row(const ConstView<E, 3>& x, index_t i, index_t h) {
  const ConstView<E, 1> row = x[i][h];
  if (!row.is_last_dim_contiguous()) return;
  const char* p = reinterpret_cast<const char*>(row.data());
  const std::size_t bytes = static_cast<std::size_t>(row.size(0)) * sizeof(E);
  for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
}

template <class E>
void prefetch_rwkv7_token(const ConstView<E, 3>& r, const ConstView<E, 3>& k, const ConstView<E, 3>& v,
                          const ConstView<E, 3>& a, const ConstView<E, 3>& b, const ConstView<float, 3>& g, index_t i,
                          index_t h) {
  for (const ConstView<E, 3>* x : {&r, &k, &v, &a, &b}) prefetch_rwkv7_row(*x, i, h);
  prefetch_rwkv7_row(g, i, h);
}

}  // namespace delta_update

namespace detail {

// The prefill on r/k/v/a/b stored as T (float, bf16, f16): each token's rows are widened into
// the kernel's scratch as it loads them, everything after that is the fp32 computation.
template <class T>
void rwkv7_prefill(const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out, const Executor& executor) {
  using namespace delta_update;
  static const ArgCheck check("rwkv7");
  const Rwkv7Problem pr = validate_rwkv7(check, in, out, executor);
  const Dims& d = pr.d;
  for_each_item(executor, pr.map, d.H, d.K, d.V, [&](index_t n, index_t h, ValueColumns cols, ItemScratch& ws) {
    const SequenceSpan span = pr.map[n];
    const auto one = rwkv7_sequence(in, out, span);
    const Rwkv7InputsOf<T>& x = one.first;
    const Rwkv7Outputs& y = one.second;
    const index_t c0 = cols.begin, V = cols.width;  // this task's value columns
    load_item_state(x.initial_state.has_value() ? x.initial_state[0][h].slice(1, c0, V) : ConstView<float, 2>(), ws.S);
    const auto r = x.r[0], k = x.k[0], v = x.v[0].slice(2, c0, V), a = x.a[0], b = x.b[0];
    const ConstView<float, 3> g = x.g[0];
    const auto o = y.o[0].slice(2, c0, V);
    constexpr index_t kAhead = 2;  // tokens between a row's prefetch and its use
    for (index_t t = 0; t < span.tokens; ++t) {
      if (t + kAhead < span.tokens) prefetch_rwkv7_token(r, k, v, a, b, g, t + kAhead, h);
      const TokenOperands tok = load_rwkv7_token(r, k, v, a, b, g, t, h, *ws.tok);
      const auto o_t = o[t][h];
      float* dst = o_t.is_last_dim_contiguous() ? o_t.data() : ws.tok->o();
      advance_token(Update::rwkv7, ws.S.data(), V, d.K, V, tok, dst);
      if (dst != o_t.data())
        for (index_t c = 0; c < V; ++c) o_t(c) = dst[c];
      if (y.token_states.has_value())
        store_item_state(y.token_states[0][t][h].slice(1, c0, V), ws.S.data(), d.K, V);
    }
    if (y.final_state.has_value()) store_item_state(y.final_state[0][h].slice(1, c0, V), ws.S.data(), d.K, V);
  });
}

template <class T>
void rwkv7_prefill(const Rwkv7InputsOf<T>& in, const Rwkv7Outputs& out, const Rwkv7Options& options,
                   const Executor& executor) {
  if (!options.reverse) return rwkv7_prefill(in, out, executor);
  const auto rev = reversed_call("rwkv7", in, out);
  rwkv7_prefill(rev.first, rev.second, executor);
}

}  // namespace detail

/// RWKV-7 prefill. final_state may be the initial_state view (updated in place). One item per
/// (sequence, head, block of value columns), longest sequences first; each thread keeps one [K,V] state and a few rows
/// across calls (delta_update/sequences.hpp). token_states, when given, get S after every token.
inline void rwkv7(const Rwkv7Inputs& in, const Rwkv7Outputs& out, const Executor& executor = serial_executor()) {
  detail::rwkv7_prefill(in, out, executor);
}

/// rwkv7 with options: options.reverse runs from the last token to the first on reversed views
/// (core/direction.hpp), at the forward kernel's speed.
inline void rwkv7(const Rwkv7Inputs& in, const Rwkv7Outputs& out, const Rwkv7Options& options,
                  const Executor& executor = serial_executor()) {
  detail::rwkv7_prefill(in, out, options, executor);
}

/// The same on r/k/v/a/b stored as seqmix::bf16 or seqmix::f16 (g, states and outputs fp32):
/// each token's rows are widened into the kernel's scratch, never the whole tensor.
/// docs/operators.md (RWKV-7) gives the accuracy against fp32 inputs.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void rwkv7(const Rwkv7InputsOf<H>& in, const Rwkv7Outputs& out, const Executor& executor = serial_executor()) {
  detail::rwkv7_prefill(in, out, executor);
}

/// rwkv7 with options on 16-bit r/k/v/a/b.
template <class H, class = std::enable_if_t<std::is_same_v<H, bf16> || std::is_same_v<H, f16>>>
void rwkv7(const Rwkv7InputsOf<H>& in, const Rwkv7Outputs& out, const Rwkv7Options& options,
           const Executor& executor = serial_executor()) {
  detail::rwkv7_prefill(in, out, options, executor);
}

}  // namespace seqmix
