// Positional schemes (docs/operators.md section 10): rotary embeddings with every frequency
// scaling of the field, on [B, T, H, D] views at explicit positions. This family sits below
// attention and the KV cache, which take a RopeTable to rotate on the fly.
#pragma once

#include "seqmix/positional/rope/config.hpp"
#include "seqmix/positional/rope/fast.hpp"
#include "seqmix/positional/rope/reference.hpp"
#include "seqmix/positional/rope/table.hpp"
