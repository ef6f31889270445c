// seqmix: efficient sequence-mixing operators for CPUs. Including this header brings in the
// whole library; each family also has its own umbrella header (seqmix/ssm.hpp, ...), and each
// concern its own header beneath that.
#pragma once

#include "seqmix/core/batch.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/direction.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/slice_state.hpp"
#include "seqmix/core/tensor.hpp"

#include "seqmix/attention.hpp"
#include "seqmix/chunked.hpp"
#include "seqmix/io/npy.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix/linear_attention.hpp"
#include "seqmix/memory.hpp"
#include "seqmix/lti.hpp"
#include "seqmix/positional.hpp"
#include "seqmix/rnn.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix/structured.hpp"

/// \namespace seqmix
/// The public API: every operator's fast prefill `seqmix::<op>` and decode step
/// `seqmix::<op>_step`, their argument structs (`<Op>Inputs`, `<Op>Outputs`, `<Op>Options`), the
/// tensor views they take, the executors, KvCache and the serving descriptors. Definitions,
/// layouts and defaults: docs/operators.md.
///
/// Shared rules: layouts are token-major ([B, T, H, D]) over caller memory (TensorView, any
/// strides); optional arguments are empty views; every entry point validates all of its
/// arguments and throws ShapeError, naming the operator and the argument, before it writes any
/// output or state; the Executor argument (serial_executor() by default) changes how the work
/// is split, not the results (beyond rounding where a split regroups sums).
///
/// \namespace seqmix::reference
/// The readable definition of every operator (`seqmix::reference::<op>`): plain per-token loops
/// with the same arguments and validation as the fast form, which the tests compare against.
