// Every KV-cache eviction / selection policy (see README.md in this folder).
#pragma once

#include "seqmix/kv_cache/policies/age_schedule.hpp"
#include "seqmix/kv_cache/policies/budget.hpp"
#include "seqmix/kv_cache/policies/cacheblend.hpp"
#include "seqmix/kv_cache/policies/common.hpp"
#include "seqmix/kv_cache/policies/eviction.hpp"
#include "seqmix/kv_cache/policies/head_budgets.hpp"
#include "seqmix/kv_cache/policies/head_types.hpp"
#include "seqmix/kv_cache/policies/merge.hpp"
#include "seqmix/kv_cache/policies/scores.hpp"
#include "seqmix/kv_cache/policies/scores_reference.hpp"
#include "seqmix/kv_cache/policies/think.hpp"
#include "seqmix/kv_cache/policies/token_scores.hpp"
