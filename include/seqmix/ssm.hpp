// Selective state-space operators (SPEC section 3): causal_conv1d, selective_scan (Mamba-1).
// Each operator's folder under seqmix/ssm/ holds its reference, fast prefill and decode step.
#pragma once

#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
