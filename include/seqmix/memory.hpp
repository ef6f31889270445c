// Memory layers (issue 22): product_key_memory, a large key-value memory read through product
// keys. Each operator's folder under seqmix/memory/ holds its reference and fast form.
#pragma once

#include "seqmix/memory/product_key/fast.hpp"
#include "seqmix/memory/product_key/reference.hpp"

// slot_memory (issue 22 item 3): S slots read by cross-attention and written with gates
// (Memformer-style input/forget, LM2 input/forget/output).
#include "seqmix/memory/slot/fast.hpp"
#include "seqmix/memory/slot/reference.hpp"
