// seqmix: efficient sequence-mixing operators for CPUs. Including this header brings in the
// whole library; each concern also has its own header beneath it.
#pragma once

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/simd.hpp"
#include "seqmix/core/tensor.hpp"
