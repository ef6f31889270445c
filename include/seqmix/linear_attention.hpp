// Linear-attention family (SPEC section 4): feature_map (DPFP, positive random features,
// Hedgehog), linear_attention (feature maps, normalize, JRT
// prefix), gated_linear_attention (GLA, simple GLA, RetNet retention, ungated) and rwkv6. Each
// operator's folder under seqmix/linear_attention/ holds its reference, chunked prefill and step.
#pragma once

#include "seqmix/linear_attention/feature_maps/fast.hpp"
#include "seqmix/linear_attention/feature_maps/random.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/normalized_decay.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix/linear_attention/gla/step.hpp"
#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"
#include "seqmix/linear_attention/rwkv6/chunked.hpp"
#include "seqmix/linear_attention/rwkv6/reference.hpp"
#include "seqmix/linear_attention/rwkv6/step.hpp"

// State passing across slices of a sequence (context parallelism): transition, compose, correction.
#include "seqmix/linear_attention/gla/slice.hpp"
#include "seqmix/linear_attention/linear_attention/slice.hpp"
#include "seqmix/linear_attention/rwkv6/slice.hpp"
#include "seqmix/linear_attention/gated_delta_rule/slice.hpp"
#include "seqmix/linear_attention/rwkv7/slice.hpp"

// Delta-rule members of the family: DeltaNet, Gated DeltaNet / KDA, RWKV-7.
#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/linear_attention/delta_rule/reference.hpp"
#include "seqmix/linear_attention/delta_rule/step.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/linear_attention/gated_delta_rule/reference.hpp"
#include "seqmix/linear_attention/gated_delta_rule/step.hpp"
#include "seqmix/linear_attention/mom/fast.hpp"
#include "seqmix/linear_attention/mom/reference.hpp"
#include "seqmix/linear_attention/mom/step.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/linear_attention/rwkv7/step.hpp"
