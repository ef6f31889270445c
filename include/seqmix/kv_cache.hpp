// KV cache and its compression (SPEC section 6): group quantization and packing, the per-layer
// cache object (fp32 / fp16 / bf16 / int8 / int4 / int2 storage, KIVI residual window, ZipCache
// mixed precision), decode attention reading the compressed cache directly, and the eviction
// policies.
#pragma once

#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix/kv_cache/paged.hpp"
#include "seqmix/kv_cache/mla_latent.hpp"
#include "seqmix/kv_cache/mla_cache.hpp"
#include "seqmix/kv_cache/quantize.hpp"

// Eviction policies (scores -> kept entries per head, budgets across heads and layers, head-type
// policies, ThinK channel pruning, merging of evicted entries) on plain tensors; KvCache::retain
// applies a kept set.
#include "seqmix/kv_cache/policies/all.hpp"

// Dynamic Memory Compression (issue 22): a per-head variable-length cache whose tokens are appended
// or merged into the last slot by the caller's decisions; prefill and decode attention over it.
#include "seqmix/kv_cache/dmc/fast.hpp"
#include "seqmix/kv_cache/dmc/reference.hpp"
#include "seqmix/kv_cache/dmc/step.hpp"
#include "seqmix/kv_cache/coded/fast.hpp"
#include "seqmix/kv_cache/coded/reference.hpp"
