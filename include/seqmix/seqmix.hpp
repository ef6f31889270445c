// seqmix: efficient sequence-mixing operators for CPUs. Including this header brings in the
// whole library; each family also has its own umbrella header (seqmix/ssm.hpp, ...), and each
// concern its own header beneath that.
#pragma once

#include "seqmix/core/batch.hpp"
#include "seqmix/core/eigen.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"

#include "seqmix/attention.hpp"
#include "seqmix/chunked.hpp"
#include "seqmix/io/npy.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix/linear_attention.hpp"
#include "seqmix/ssm.hpp"
