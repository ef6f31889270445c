// seqmix::mpi, the optional context-parallel component (docs/operators.md, context parallelism
// over MPI): operators over one sequence sliced by position across the ranks of an MPI
// communicator. Needs <mpi.h> and an MPI library (CMake target seqmix::mpi); never included by
// seqmix/seqmix.hpp, so the core library needs no MPI.
#pragma once

#include "seqmix/mpi/collective.hpp"
#include "seqmix/mpi/ring_attention.hpp"
#include "seqmix/mpi/state_relay.hpp"
#include "seqmix/mpi/state_passing.hpp"
#include "seqmix/mpi/state_scan.hpp"

/// \namespace seqmix::mpi
/// Context parallelism over MPI (the optional seqmix::mpi component): ContextSlices (which
/// positions each rank holds), ring_attention, relay_state (exact sequential state passing for
/// any recurrent operator), exscan_diagonal_slices, exscan_matrix_slices and the mpi:: recurrent
/// operators (ssd, selective_scan, linear_attention, gated_linear_attention, rwkv6, delta_rule,
/// gated_delta_rule, rwkv7: slice from zero, MPI_Exscan of the transitions, correction;
/// causal_conv1d: its W-1 halo sent to the ranks that read it), and the collective argument check that makes every
/// rank refuse a bad call together instead of leaving the others waiting.
