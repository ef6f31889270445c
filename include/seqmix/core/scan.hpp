// Core scans (SPEC section 2): the linear recurrence h_t = a_t h_{t-1} + b_t and the generic
// associative scan over a monoid, each with its readable reference. The SSM and linear-attention
// families build on these.
//
//   scan/reference.hpp    options, validation, reference::linear_scan, reference::associative_scan
//   scan/linear.hpp       linear_scan: SIMD across channels, parallel over channels or time chunks
//   scan/associative.hpp  associative_scan: chunked parallel inclusive scan
//   scan/monoids.hpp      the Monoid requirements; SumMonoid, AffineMonoid, OnlineSoftmax
#pragma once

#include "seqmix/core/scan/associative.hpp"
#include "seqmix/core/scan/linear.hpp"
#include "seqmix/core/scan/monoids.hpp"
#include "seqmix/core/scan/reference.hpp"
