// A continuous-batching serving loop over a small hybrid decoder, the way an inference engine
// drives seqmix: every iteration packs the work of all running requests into ONE call per
// operator, whatever mix of prompt chunks and decode tokens it holds.
//
//   h = embed(token)
//   h += attention(h)       GQA, K/V in a paged fp16 cache (paged_kv_append + paged_attention)
//   h += mamba2(h)          causal_conv1d + ssd, conv and SSM states in slot pools
//   h += gated_deltanet(h)  causal_conv1d + gated_delta_rule, states in slot pools
//   next token = argmax(h E^T)
//
// The engine side, all in this file: requests arrive at different iterations; a scheduler
// fills a token budget with one decode token per running request and chunks of waiting prompts
// (a long prompt is prefilled over several iterations while the others decode); each request
// owns one state slot (rows of the state pools, zero-initialised on first use through
// has_initial_state) and the KV pages of a block table; a finished request's slot and pages are
// reused by the next one. Once, a request runs a speculative verify of 4 draft tokens, keeps 2
// and rolls back: its recurrent states are taken from the per-token states of the verify call
// (token_states), its KV length is cut back (the rejected rows are overwritten later).
//
// At the end every request is run again alone (dense B = 1 calls over its whole token stream)
// and its logits are compared with the ones the engine produced; tokens/s of the loop is printed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <iterator>
#include <random>
#include <vector>

#include <Eigen/Core>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/core/batch.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"

namespace {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
using Matrix = seqmix::RowMajorMatrix<float>;

// ---------------------------------------------------------------------------------------------
// Model sizes (a small hybrid; every head count and width is a real model's, scaled down).
constexpr index_t kModel = 128, kVocab = 97;
constexpr index_t kQHeads = 4, kKvHeads = 2, kHeadDim = 32;            // GQA attention
constexpr index_t kSsmHeads = 4, kSsmHeadDim = 32, kSsmState = 16;      // Mamba-2
constexpr index_t kSsmConv = kSsmHeads * kSsmHeadDim + 2 * kSsmState;  // x | B | C channels
constexpr index_t kQkHeads = 2, kValueHeads = 4, kKey = 32, kValue = 32;  // Gated DeltaNet
constexpr index_t kGdnConv = 2 * kQkHeads * kKey + kValueHeads * kValue;  // q | k | v channels
constexpr index_t kConvTaps = 4;

// Engine sizes: 4 state slots, 96 KV pages of 16 tokens (24 per request: 384 tokens), 64 tokens
// per iteration.
constexpr index_t kSlots = 4, kPageSize = 16, kMaxPages = 24, kPages = kSlots * kMaxPages, kTokenBudget = 64;

float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

Matrix random_matrix(std::mt19937& rng, index_t rows, index_t cols, float scale) {
  std::normal_distribution<float> normal(0.f, scale);
  Matrix m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

Tensor<float, 2> random_tensor(std::mt19937& rng, index_t rows, index_t cols, float scale) {
  std::normal_distribution<float> normal(0.f, scale);
  Tensor<float, 2> t({rows, cols});
  for (float& x : t) x = normal(rng);
  return t;
}

struct Weights {
  Matrix embed;                 // [vocab, d]
  Matrix wq, wk, wv, wo;        // attention
  Matrix ssm_in, ssm_out;       // [d, conv + H], [H*P, d]
  Tensor<float, 2> ssm_conv;    // [conv, W]
  Tensor<float, 1> ssm_A, ssm_dt_bias;
  Matrix gdn_in, gdn_gates, gdn_out;  // [d, conv], [d, 2*HV] (beta | a), [HV*V, d]
  Tensor<float, 2> gdn_conv;          // [conv, W]

  explicit Weights(unsigned seed) : ssm_A({kSsmHeads}), ssm_dt_bias({kSsmHeads}) {
    std::mt19937 rng(seed);
    const float s = 1.f / std::sqrt(static_cast<float>(kModel));
    embed = random_matrix(rng, kVocab, kModel, 1.f);
    wq = random_matrix(rng, kModel, kQHeads * kHeadDim, s);
    wk = random_matrix(rng, kModel, kKvHeads * kHeadDim, s);
    wv = random_matrix(rng, kModel, kKvHeads * kHeadDim, s);
    wo = random_matrix(rng, kQHeads * kHeadDim, kModel, 0.5f / std::sqrt(static_cast<float>(kQHeads * kHeadDim)));
    ssm_in = random_matrix(rng, kModel, kSsmConv + kSsmHeads, s);
    ssm_out = random_matrix(rng, kSsmHeads * kSsmHeadDim, kModel, 0.5f / std::sqrt(float(kSsmHeads * kSsmHeadDim)));
    ssm_conv = random_tensor(rng, kSsmConv, kConvTaps, 0.5f);
    for (index_t h = 0; h < kSsmHeads; ++h) ssm_A(h) = -1.f - static_cast<float>(h), ssm_dt_bias(h) = -2.f;
    gdn_in = random_matrix(rng, kModel, kGdnConv, s);
    gdn_gates = random_matrix(rng, kModel, 2 * kValueHeads, s);
    gdn_out = random_matrix(rng, kValueHeads * kValue, kModel, 0.5f / std::sqrt(float(kValueHeads * kValue)));
    gdn_conv = random_tensor(rng, kGdnConv, kConvTaps, 0.5f);
  }
};

// ---------------------------------------------------------------------------------------------
// One call's sequences: packed rows [cu[n], cu[n+1]) of every [1, total, ...] tensor.
struct Batch {
  std::vector<std::int64_t> cu{0};
  std::vector<std::int64_t> slots;           // state slot of each sequence
  std::vector<std::uint8_t> has_state;       // 0: the slot starts from zeros (a new request)
  std::vector<std::int64_t> kv_before;       // cached tokens before this call
  std::vector<std::int64_t> kv_after;        // ... and after it
  std::vector<std::int32_t> block_table;     // [N, kMaxPages]
  index_t sequences() const { return static_cast<index_t>(slots.size()); }
  index_t tokens() const { return cu.back(); }

  seqmix::SequenceBatch serving() const {
    seqmix::SequenceBatch b;
    b.cu_seqlens = cu;
    b.state_indices = slots;
    b.has_initial_state = has_state;
    return b;
  }
};

// Where a layer keeps per-token states when the call verifies draft tokens (else empty).
struct TokenStates {
  Tensor<float, 4> ssm_conv, gdn_conv;  // [1, total, W-1, conv]
  Tensor<float, 5> ssm, gdn;            // [1, total, H, P, N], [1, total, HV, K, V]
  bool requested = false;
};

// The engine's memory: state pools indexed by slot, and the KV page pool.
struct Pools {
  Tensor<float, 3> ssm_conv{{kSlots, kConvTaps - 1, kSsmConv}};
  Tensor<float, 4> ssm{{kSlots, kSsmHeads, kSsmHeadDim, kSsmState}};
  Tensor<float, 3> gdn_conv{{kSlots, kConvTaps - 1, kGdnConv}};
  Tensor<float, 4> gdn{{kSlots, kValueHeads, kKey, kValue}};
  Tensor<seqmix::f16, 4> k_pages{{kPages, kPageSize, kKvHeads, kHeadDim}};
  Tensor<seqmix::f16, 4> v_pages{{kPages, kPageSize, kKvHeads, kHeadDim}};
};

template <std::size_t R>
ConstView<float, R + 1> split_heads(const ConstView<float, R>& v, index_t begin, index_t heads, index_t dim) {
  std::array<index_t, R + 1> shape{}, strides{};
  for (std::size_t d = 0; d + 1 < R; ++d) shape[d] = v.size(d), strides[d] = v.stride(d);
  shape[R - 1] = heads, strides[R - 1] = dim * v.stride(R - 1);
  shape[R] = dim, strides[R] = v.stride(R - 1);
  return ConstView<float, R + 1>(v.data() + begin * v.stride(R - 1), shape, strides);
}

ConstView<float, 3> as_tokens(const Matrix& m) { return ConstView<float, 3>(m.data(), {1, m.rows(), m.cols()}); }

// ---------------------------------------------------------------------------------------------
// The three mixers over one packed batch. Each returns its contribution to the residual.

Matrix attention_layer(const Weights& w, const Matrix& h, const Batch& batch, Pools& pools,
                       const seqmix::Executor& executor) {
  const index_t T = h.rows(), N = batch.sequences();
  const Matrix q = h * w.wq, k = h * w.wk, v = h * w.wv;
  const ConstView<std::int32_t, 2> table(batch.block_table.data(), {N, kMaxPages});
  // New K/V into the pages, at positions kv_before[n] ...
  seqmix::PagedKvAppendInputs<float> append;
  append.k = ConstView<float, 4>(k.data(), {1, T, kKvHeads, kHeadDim});
  append.v = ConstView<float, 4>(v.data(), {1, T, kKvHeads, kHeadDim});
  append.block_table = table;
  append.cache_seqlens = batch.kv_before;
  append.cu_seqlens = batch.cu;
  seqmix::paged_kv_append(append, seqmix::PagedKvPool<seqmix::f16>{pools.k_pages.view(), pools.v_pages.view()},
                          executor);
  // ... then each sequence's queries attend to its whole cache, bottom-right causal.
  seqmix::PagedAttentionInputs<seqmix::f16> in;
  in.q = ConstView<float, 4>(q.data(), {1, T, kQHeads, kHeadDim});
  in.k_pages = pools.k_pages.view();
  in.v_pages = pools.v_pages.view();
  in.block_table = table;
  in.cache_seqlens = batch.kv_after;
  in.cu_seqlens_q = batch.cu;
  Matrix o(T, kQHeads * kHeadDim);
  seqmix::paged_attention(in, {TensorView<float, 4>(o.data(), {1, T, kQHeads, kHeadDim}), {}}, {}, executor);
  return o * w.wo;
}

Matrix mamba2_layer(const Weights& w, const Matrix& h, const seqmix::SequenceBatch& serving, Pools& pools,
                    TokenStates& ts, const seqmix::Executor& executor) {
  const index_t T = h.rows();
  const Matrix in = h * w.ssm_in;  // x | B | C | dt
  Matrix xbc(T, kSsmConv);
  seqmix::CausalConv1dInputs conv_in;
  conv_in.x = ConstView<float, 3>(in.data(), {1, T, kSsmConv}, {T * in.cols(), in.cols(), 1});
  conv_in.weight = w.ssm_conv.view();
  conv_in.initial_state = pools.ssm_conv.view();
  conv_in.batch = serving;
  seqmix::CausalConv1dOutputs conv_out;
  conv_out.y = TensorView<float, 3>(xbc.data(), {1, T, kSsmConv});
  conv_out.final_state = pools.ssm_conv.view();
  if (ts.requested) conv_out.token_states = ts.ssm_conv.view();
  seqmix::causal_conv1d(conv_in, conv_out, {seqmix::ConvActivation::silu});

  const ConstView<float, 3> xbc_view = as_tokens(xbc);
  seqmix::SsdInputs s;
  s.x = split_heads<3>(xbc_view, 0, kSsmHeads, kSsmHeadDim);
  s.Bm = split_heads<3>(xbc_view, kSsmHeads * kSsmHeadDim, 1, kSsmState);
  s.Cm = split_heads<3>(xbc_view, kSsmHeads * kSsmHeadDim + kSsmState, 1, kSsmState);
  s.dt = ConstView<float, 3>(in.data() + kSsmConv, {1, T, kSsmHeads}, {T * in.cols(), in.cols(), 1});
  s.A = w.ssm_A.view();
  s.dt_bias = w.ssm_dt_bias.view();
  s.initial_state = pools.ssm.view();
  s.batch = serving;
  Matrix y(T, kSsmHeads * kSsmHeadDim);
  seqmix::SsdOutputs out;
  out.y = TensorView<float, 4>(y.data(), {1, T, kSsmHeads, kSsmHeadDim});
  out.final_state = pools.ssm.view();
  if (ts.requested) out.token_states = ts.ssm.view();
  seqmix::SsdOptions options;
  options.dt_softplus = true;  // mamba_ssm's dt_softplus=True
  seqmix::ssd(s, out, options, executor);
  return y * w.ssm_out;
}

Matrix gated_deltanet_layer(const Weights& w, const Matrix& h, const seqmix::SequenceBatch& serving, Pools& pools,
                            TokenStates& ts, const seqmix::Executor& executor) {
  const index_t T = h.rows();
  const Matrix in = h * w.gdn_in, gates = h * w.gdn_gates;
  Matrix qkv(T, kGdnConv);
  seqmix::CausalConv1dInputs conv_in;
  conv_in.x = as_tokens(in);
  conv_in.weight = w.gdn_conv.view();
  conv_in.initial_state = pools.gdn_conv.view();
  conv_in.batch = serving;
  seqmix::CausalConv1dOutputs conv_out;
  conv_out.y = TensorView<float, 3>(qkv.data(), {1, T, kGdnConv});
  conv_out.final_state = pools.gdn_conv.view();
  if (ts.requested) conv_out.token_states = ts.gdn_conv.view();
  seqmix::causal_conv1d(conv_in, conv_out, {seqmix::ConvActivation::silu});

  Tensor<float, 3> beta({1, T, kValueHeads}), g({1, T, kValueHeads});
  for (index_t t = 0; t < T; ++t)
    for (index_t hv = 0; hv < kValueHeads; ++hv) {
      beta(0, t, hv) = sigmoid(gates(t, hv));
      g(0, t, hv) = -softplus(gates(t, kValueHeads + hv) - 1.f);
    }
  const ConstView<float, 3> qkv_view = as_tokens(qkv);
  seqmix::GatedDeltaRuleInputs d;
  d.q = split_heads<3>(qkv_view, 0, kQkHeads, kKey);
  d.k = split_heads<3>(qkv_view, kQkHeads * kKey, kQkHeads, kKey);
  d.v = split_heads<3>(qkv_view, 2 * kQkHeads * kKey, kValueHeads, kValue);
  d.beta = beta.view();
  d.g_scalar = g.view();
  d.initial_state = pools.gdn.view();
  d.batch = serving;
  Matrix o(T, kValueHeads * kValue);
  seqmix::GatedDeltaRuleOutputs out;
  out.o = TensorView<float, 4>(o.data(), {1, T, kValueHeads, kValue});
  out.final_state = pools.gdn.view();
  if (ts.requested) out.token_states = ts.gdn.view();
  seqmix::GatedDeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2;
  seqmix::gated_delta_rule(d, out, options, executor);
  return o * w.gdn_out;
}

// The whole stack over one packed batch: logits [total, vocab].
Matrix forward(const Weights& w, const std::vector<int>& tokens, const Batch& batch, Pools& pools, TokenStates& ts,
               const seqmix::Executor& executor) {
  Matrix h(static_cast<index_t>(tokens.size()), kModel);
  for (std::size_t t = 0; t < tokens.size(); ++t) h.row(static_cast<index_t>(t)) = w.embed.row(tokens[t]);
  const seqmix::SequenceBatch serving = batch.serving();
  h += attention_layer(w, h, batch, pools, executor);
  h += mamba2_layer(w, h, serving, pools, ts, executor);
  h += gated_deltanet_layer(w, h, serving, pools, ts, executor);
  return h * w.embed.transpose();
}

int argmax(const Matrix& logits, index_t row) {
  index_t best = 0;
  logits.row(row).maxCoeff(&best);
  return static_cast<int>(best);
}

// ---------------------------------------------------------------------------------------------
// The engine's bookkeeping.
struct Request {
  int id;
  index_t arrival;                 // iteration at which it arrives
  std::vector<int> tokens;         // prompt, then every accepted token
  index_t prompt_length;
  index_t max_new_tokens;
  index_t processed = 0;           // tokens whose K/V and states are in the engine
  index_t slot = -1;
  std::vector<std::int32_t> pages; // its KV pages, in order
  bool verify_pending = false;     // run a speculative verify at its next decode
  std::vector<std::pair<index_t, std::vector<float>>> logits;  // (position, logits) produced
  bool done() const { return static_cast<index_t>(tokens.size()) - prompt_length >= max_new_tokens; }
};

class Engine {
 public:
  Engine(const Weights& w, const seqmix::Executor& executor) : w_(w), executor_(executor) {
    for (index_t s = kSlots; s-- > 0;) free_slots_.push_back(s);
    for (index_t p = kPages; p-- > 0;) free_pages_.push_back(static_cast<std::int32_t>(p));
  }

  void submit(Request r) { waiting_.push_back(std::move(r)); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  std::vector<Request>& finished() { return finished_; }
  index_t tokens_processed() const { return tokens_processed_; }
  index_t slot_reuses() const { return slot_reuses_; }
  index_t mixed_iterations() const { return mixed_iterations_; }
  index_t verifies() const { return verifies_; }

  // One iteration: admit arrivals, schedule, one forward call, sample, retire.
  void step(index_t iteration) {
    admit(iteration);
    Batch batch;
    std::vector<int> tokens;
    std::vector<Request*> members;
    std::vector<index_t> counts;
    std::vector<bool> verifying;
    index_t budget = kTokenBudget;
    bool decodes = false, prefills = false, verify = false;
    for (Request& r : running_) {
      const index_t remaining = static_cast<index_t>(r.tokens.size()) - r.processed;
      if (remaining <= 0 || budget <= 0) continue;
      index_t count = std::min(remaining, budget);
      std::vector<int> feed(r.tokens.begin() + r.processed, r.tokens.begin() + r.processed + count);
      const bool verify_now = remaining == 1 && r.verify_pending && budget >= 4;
      if (verify_now) {
        // Speculative verify: the greedy token plus 3 drafts (a draft model would propose them).
        for (int d = 1; d <= 3; ++d) feed.push_back((feed.back() * 7 + d) % static_cast<int>(kVocab));
        count = 4;
        verify = true;
      }
      (remaining > 1 ? prefills : decodes) = true;
      // Pages for the tokens this call appends.
      const index_t needed = (r.processed + count + kPageSize - 1) / kPageSize;
      while (static_cast<index_t>(r.pages.size()) < needed) {
        r.pages.push_back(free_pages_.back());
        free_pages_.pop_back();
      }
      batch.cu.push_back(batch.cu.back() + count);
      batch.slots.push_back(r.slot);
      batch.has_state.push_back(r.processed > 0 ? 1 : 0);
      batch.kv_before.push_back(r.processed);
      batch.kv_after.push_back(r.processed + count);
      for (index_t p = 0; p < kMaxPages; ++p)
        batch.block_table.push_back(p < static_cast<index_t>(r.pages.size()) ? r.pages[static_cast<std::size_t>(p)] : 0);
      tokens.insert(tokens.end(), feed.begin(), feed.end());
      members.push_back(&r);
      counts.push_back(count);
      verifying.push_back(verify_now);
      budget -= count;
    }
    if (members.empty()) return;
    if (decodes && prefills) ++mixed_iterations_;

    TokenStates ts;
    if (verify) {
      const index_t T = batch.tokens();
      ts.requested = true;
      ts.ssm_conv = Tensor<float, 4>({1, T, kConvTaps - 1, kSsmConv});
      ts.gdn_conv = Tensor<float, 4>({1, T, kConvTaps - 1, kGdnConv});
      ts.ssm = Tensor<float, 5>({1, T, kSsmHeads, kSsmHeadDim, kSsmState});
      ts.gdn = Tensor<float, 5>({1, T, kValueHeads, kKey, kValue});
    }
    const Matrix logits = forward(w_, tokens, batch, pools_, ts, executor_);
    tokens_processed_ += batch.tokens();

    for (std::size_t i = 0; i < members.size(); ++i) {
      Request& r = *members[i];
      const index_t first = batch.cu[i], count = counts[i];
      const bool is_verify = verifying[i];
      if (is_verify) {
        // Keep the greedy token and the first draft; roll everything else back.
        constexpr index_t kAccepted = 2;
        r.tokens.push_back(tokens[static_cast<std::size_t>(first + 1)]);
        for (index_t t = 0; t < kAccepted; ++t)
          r.logits.emplace_back(r.processed + t, row(logits, first + t));
        restore_states(ts, first + kAccepted - 1, r.slot);
        r.processed += kAccepted;  // the KV length: rows past it are stale and get overwritten
        r.verify_pending = false;
        ++verifies_;
      } else {
        r.processed += count;
        if (r.processed < static_cast<index_t>(r.tokens.size())) continue;  // prompt not finished yet
        r.logits.emplace_back(r.processed - 1, row(logits, first + count - 1));
      }
      r.tokens.push_back(argmax(logits, first + (is_verify ? 1 : count - 1)));
    }
    retire();
  }

  void request_verify(int id) {
    for (Request& r : running_)
      if (r.id == id) r.verify_pending = true;
  }

 private:
  static std::vector<float> row(const Matrix& m, index_t r) {
    return std::vector<float>(m.row(r).data(), m.row(r).data() + m.cols());
  }

  // After a verify: the slot's states become the ones after the last accepted token.
  void restore_states(const TokenStates& ts, index_t token, index_t slot) {
    auto copy_row = [](const float* src, float* dst, index_t n) { std::copy(src, src + n, dst); };
    copy_row(ts.ssm_conv.view().ptr(0, token), pools_.ssm_conv.view().ptr(slot), (kConvTaps - 1) * kSsmConv);
    copy_row(ts.gdn_conv.view().ptr(0, token), pools_.gdn_conv.view().ptr(slot), (kConvTaps - 1) * kGdnConv);
    copy_row(ts.ssm.view().ptr(0, token), pools_.ssm.view().ptr(slot), kSsmHeads * kSsmHeadDim * kSsmState);
    copy_row(ts.gdn.view().ptr(0, token), pools_.gdn.view().ptr(slot), kValueHeads * kKey * kValue);
  }

  void admit(index_t iteration) {
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (it->arrival > iteration || free_slots_.empty()) {
        ++it;
        continue;
      }
      it->slot = free_slots_.back();
      free_slots_.pop_back();
      if (slot_used_[static_cast<std::size_t>(it->slot)]) ++slot_reuses_;
      slot_used_[static_cast<std::size_t>(it->slot)] = true;
      running_.push_back(std::move(*it));
      it = waiting_.erase(it);
    }
  }

  void retire() {
    for (auto it = running_.begin(); it != running_.end();) {
      if (!it->done()) {
        ++it;
        continue;
      }
      it->tokens.pop_back();  // sampled but never fed: not part of the checked stream
      free_slots_.push_back(it->slot);
      for (std::int32_t p : it->pages) free_pages_.push_back(p);
      it->pages.clear();
      finished_.push_back(std::move(*it));
      it = running_.erase(it);
    }
  }

  const Weights& w_;
  const seqmix::Executor& executor_;
  Pools pools_;
  std::deque<Request> waiting_;
  std::deque<Request> running_;
  std::vector<Request> finished_;
  std::vector<index_t> free_slots_;
  std::vector<std::int32_t> free_pages_;
  std::vector<bool> slot_used_ = std::vector<bool>(kSlots, false);
  index_t tokens_processed_ = 0, slot_reuses_ = 0, mixed_iterations_ = 0, verifies_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The check: one request alone, dense B = 1 calls over its whole stream (fresh states, fp16 K/V
// like the pages), logits at every position.
Matrix run_alone(const Weights& w, const std::vector<int>& tokens, const seqmix::Executor& executor) {
  const index_t T = static_cast<index_t>(tokens.size());
  Matrix h(T, kModel);
  for (index_t t = 0; t < T; ++t) h.row(t) = w.embed.row(tokens[static_cast<std::size_t>(t)]);

  {  // attention
    const Matrix q = h * w.wq, k = h * w.wk, v = h * w.wv;
    Tensor<seqmix::f16, 4> k16({1, T, kKvHeads, kHeadDim}), v16({1, T, kKvHeads, kHeadDim});
    for (index_t i = 0; i < k.size(); ++i) k16.data()[i] = seqmix::f16(k.data()[i]), v16.data()[i] = seqmix::f16(v.data()[i]);
    seqmix::AttentionInputs<seqmix::f16> in;
    in.q = ConstView<float, 4>(q.data(), {1, T, kQHeads, kHeadDim});
    in.k = k16.view();
    in.v = v16.view();
    Matrix o(T, kQHeads * kHeadDim);
    seqmix::AttentionOptions options;
    options.causal = true;
    seqmix::attention(in, {TensorView<float, 4>(o.data(), {1, T, kQHeads, kHeadDim}), {}}, options, executor);
    h += o * w.wo;
  }
  // The recurrent layers: the engine's own layer functions on a one-sequence pool, without
  // cu_seqlens or slots: the plain dense B = 1 calls.
  TokenStates none;
  const seqmix::SequenceBatch dense;
  Pools single;
  Tensor<float, 3> ssm_conv({1, kConvTaps - 1, kSsmConv}), gdn_conv({1, kConvTaps - 1, kGdnConv});
  Tensor<float, 4> ssm({1, kSsmHeads, kSsmHeadDim, kSsmState}), gdn({1, kValueHeads, kKey, kValue});
  single.ssm_conv = ssm_conv, single.gdn_conv = gdn_conv, single.ssm = ssm, single.gdn = gdn;
  h += mamba2_layer(w, h, dense, single, none, executor);
  h += gated_deltanet_layer(w, h, dense, single, none, executor);
  return h * w.embed.transpose();
}

}  // namespace

int main() {
  const Weights weights(11);
  seqmix::ThreadPool pool(2);
  Engine engine(weights, pool);

  // Requests: (arrival iteration, prompt length, new tokens). Seven requests for four slots, so
  // slots are reused; the 300-token prompt is prefilled in chunks while others decode.
  const index_t plan[][3] = {{0, 45, 12}, {0, 300, 8}, {1, 7, 20}, {3, 129, 5}, {5, 1, 10}, {6, 64, 6}, {9, 23, 9}};
  std::mt19937 rng(5);
  int id = 0;
  for (const auto& p : plan) {
    Request r;
    r.id = id++;
    r.arrival = p[0];
    r.prompt_length = p[1];
    r.max_new_tokens = p[2];
    for (index_t t = 0; t < p[1]; ++t) r.tokens.push_back(static_cast<int>(rng() % kVocab));
    engine.submit(std::move(r));
  }

  const auto start = std::chrono::steady_clock::now();
  index_t iteration = 0;
  for (; !engine.idle() && iteration < 1000; ++iteration) {
    if (iteration == 8) engine.request_verify(2);
    engine.step(iteration);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Every request against running it alone.
  double worst = 0;
  index_t checked = 0, mismatched_tokens = 0;
  for (const Request& r : engine.finished()) {
    const Matrix alone = run_alone(weights, r.tokens, pool);
    for (const auto& [position, logits] : r.logits) {
      const Eigen::Map<const Eigen::RowVectorXf> engine_row(logits.data(), kVocab);
      const float scale = std::max(1.f, alone.row(position).cwiseAbs().maxCoeff());
      worst = std::max<double>(worst, (engine_row - alone.row(position)).cwiseAbs().maxCoeff() / scale);
      ++checked;
      index_t best_engine = 0, best_alone = 0;
      engine_row.maxCoeff(&best_engine);
      alone.row(position).maxCoeff(&best_alone);
      if (best_engine != best_alone) ++mismatched_tokens;
    }
  }
  std::printf("continuous_batching: %zu requests, %td iterations (%td mixing prefill chunks with decodes), "
              "%td slot reuses, %td verify of 4 draft tokens keeping 2\n",
              engine.finished().size(), iteration, engine.mixed_iterations(), engine.slot_reuses(), engine.verifies());
  std::printf("  %td tokens in %.3f s: %.0f tokens/s (2 threads, %s)\n", engine.tokens_processed(), seconds,
              static_cast<double>(engine.tokens_processed()) / seconds, seqmix::simd::arch_name());
  std::printf("  %td logit rows against each request run alone: max |diff| / max(1, max|logit|) = %.2e, "
              "%td argmax mismatches\n",
              checked, worst, mismatched_tokens);
  const bool ok = engine.finished().size() == std::size(plan) && engine.verifies() == 1 && worst < 2e-3 &&
                  mismatched_tokens == 0;
  std::printf("  %s\n", ok ? "OK: every sequence matches running it alone" : "MISMATCH");
  return ok ? 0 : 1;
}
