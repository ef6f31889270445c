// Softmax attention (SPEC section 5): dense flash-style prefill (also packed / varlen) and
// split-KV decode (fp32, fp16 or bf16 K/V), attention_merge, and the lightning indexer.
#pragma once

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/lightning_indexer/reference.hpp"

// Multi-head latent attention (DeepSeek): expanded prefill, absorbed decode over the latent cache.
#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/attention/mla/paged.hpp"
#include "seqmix/attention/mla/reference.hpp"

// Paged KV cache (vLLM block pool): paged_attention over pages, paged_kv_append into them.
#include "seqmix/attention/paged/append.hpp"
#include "seqmix/attention/paged/paged.hpp"
#include "seqmix/attention/paged/reference.hpp"

// Sparse forms: block-sparse attention with its pattern builders, top-k attention with its
// selectors, and retrieval attention over an external key/value memory.
#include "seqmix/attention/block_sparse/fast.hpp"
#include "seqmix/attention/block_sparse/patterns.hpp"
#include "seqmix/attention/block_sparse/reference.hpp"
#include "seqmix/attention/retrieval/retrieval.hpp"
#include "seqmix/attention/topk/fast.hpp"
#include "seqmix/attention/topk/reference.hpp"
#include "seqmix/attention/topk/selectors.hpp"

// Content-based sparse attention: MoBA (mixture of block attention), NSA (native sparse
// attention), on the kernel for gathered queries over one key block.
#include "seqmix/attention/block_sparse/gathered.hpp"
#include "seqmix/attention/moba/fast.hpp"
#include "seqmix/attention/moba/reference.hpp"
#include "seqmix/attention/moba/step.hpp"
#include "seqmix/attention/nsa/fast.hpp"
#include "seqmix/attention/nsa/reference.hpp"
#include "seqmix/attention/nsa/step.hpp"
#include "seqmix/attention/landmark/fast.hpp"
#include "seqmix/attention/landmark/reference.hpp"
#include "seqmix/attention/landmark/step.hpp"
#include "seqmix/attention/infllm/fast.hpp"
#include "seqmix/attention/infllm/reference.hpp"

// Approximate attention: linformer (learned sequence projections), nystrom_attention (Nystrom
// landmarks, iterative pseudo-inverse), combiner (causal local blocks + block summaries).
#include "seqmix/attention/approx/fast.hpp"
#include "seqmix/attention/approx/reference.hpp"

// HyperAttention: sortLSH heavy blocks plus sampled columns, with the causal recursion.
#include "seqmix/attention/hyper/fast.hpp"
#include "seqmix/attention/hyper/reference.hpp"

// Reformer's LSH attention (shared QK, angular hashing, sorted chunks, rounds merged by lse).
#include "seqmix/attention/lsh/fast.hpp"
#include "seqmix/attention/lsh/reference.hpp"

// Routing Transformer's routing attention (balanced clusters by online k-means centroids).
#include "seqmix/attention/routing/fast.hpp"
#include "seqmix/attention/routing/reference.hpp"
