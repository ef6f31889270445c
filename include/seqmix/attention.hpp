// Softmax attention (SPEC section 5): dense flash-style prefill and split-KV decode,
// attention_merge, and the lightning indexer.
#pragma once

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/merge.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/lightning_indexer/reference.hpp"
