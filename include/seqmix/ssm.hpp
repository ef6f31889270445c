// Selective state-space operators (SPEC section 3): causal_conv1d, selective_scan (Mamba-1) and
// ssd (Mamba-2); matrix_scan (dense block transitions, orthogonal ones from parameters);
// long_context (sliding-window state, DeciMamba pooling, LongMamba selective accumulation,
// state-collapse remedies). Each operator's folder under seqmix/ssm/ holds its reference, fast
// prefill and decode step.
#pragma once

#include "seqmix/ssm/serving.hpp"
#include "seqmix/ssm/causal_conv1d/fast.hpp"
#include "seqmix/ssm/causal_conv1d/reference.hpp"
#include "seqmix/ssm/causal_conv1d/step.hpp"
#include "seqmix/ssm/selective_scan/fast.hpp"
#include "seqmix/ssm/selective_scan/reference.hpp"
#include "seqmix/ssm/selective_scan/step.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix/ssm/ssd/step.hpp"
#include "seqmix/ssm/matrix_scan/conv_state.hpp"
#include "seqmix/ssm/matrix_scan/fast.hpp"
#include "seqmix/ssm/matrix_scan/orthogonal.hpp"
#include "seqmix/ssm/matrix_scan/reference.hpp"
#include "seqmix/ssm/matrix_scan/step.hpp"
#include "seqmix/ssm/long_context/reference.hpp"
#include "seqmix/ssm/long_context/selection.hpp"
#include "seqmix/ssm/long_context/window.hpp"
#include "seqmix/ssm/long_context/collapse_reference.hpp"
#include "seqmix/ssm/long_context/collapse.hpp"

// State passing across slices of a sequence (context parallelism): transition, compose, correction.
#include "seqmix/ssm/causal_conv1d/slice.hpp"
#include "seqmix/ssm/selective_scan/slice.hpp"
#include "seqmix/ssm/ssd/slice.hpp"
