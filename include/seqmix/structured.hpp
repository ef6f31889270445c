// Structured scans (issue 23): recurrences over 2-D grids. cross_scan / cross_merge (VMamba's
// four scan orders as strided views), cross_selective_scan (SS2D and MSVMamba's multi-scale
// variant, on ssm's selective_scan) and grid_scan (the 2-D linear recurrence, wavefront-parallel).
// Directions of 1-D scans (reverse, bidirectional) are in core/direction.hpp.
#pragma once

#include "seqmix/structured/cross_scan/fast.hpp"
#include "seqmix/structured/cross_scan/grid.hpp"
#include "seqmix/structured/cross_scan/reference.hpp"
#include "seqmix/structured/cross_scan/selective.hpp"
#include "seqmix/structured/grid_scan/reference.hpp"
#include "seqmix/structured/grid_scan/wavefront.hpp"
