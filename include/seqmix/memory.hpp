// Memory layers (issue 22): product_key_memory, a large key-value memory read through product
// keys. Each operator's folder under seqmix/memory/ holds its reference and fast form.
#pragma once

#include "seqmix/memory/product_key/fast.hpp"
#include "seqmix/memory/product_key/reference.hpp"

// slot_memory (issue 22 item 3): S slots read by cross-attention and written with gates
// (Memformer-style input/forget, LM2 input/forget/output).
#include "seqmix/memory/slot/fast.hpp"
#include "seqmix/memory/slot/reference.hpp"

// memory_tokens (issue 22 item 2): a caller's layer run over segments with M memory tokens read
// and written (RMT), HMT-style recall as an option.
#include "seqmix/memory/memory_tokens/fast.hpp"
#include "seqmix/memory/memory_tokens/reference.hpp"

// compressive_memory (issue 22 item 2): attention over a FIFO memory and a compressed memory of
// its evicted entries (Compressive Transformer).
#include "seqmix/memory/compressive/fast.hpp"
#include "seqmix/memory/compressive/reference.hpp"
