// Memory layers (issue 22): product_key_memory, a large key-value memory read through product
// keys. Each operator's folder under seqmix/memory/ holds its reference and fast form.
#pragma once

#include "seqmix/memory/product_key/fast.hpp"
#include "seqmix/memory/product_key/reference.hpp"
