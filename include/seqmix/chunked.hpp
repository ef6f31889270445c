// Chunked recurrence and hybrid mixers (issue #8): streaming segments through any recurrent
// operator, mixers that combine a carried state with exact local attention (BASED, RAT,
// Infini-attention, Mega), attention as a scan (Aaren) and parallel Newton solves of nonlinear
// elementwise recurrences.
#pragma once

#include "seqmix/chunked/streaming.hpp"

#include "seqmix/chunked/based/fast.hpp"
#include "seqmix/chunked/based/reference.hpp"
#include "seqmix/chunked/based/step.hpp"
#include "seqmix/chunked/infini/fast.hpp"
#include "seqmix/chunked/infini/reference.hpp"
#include "seqmix/chunked/infini/step.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/chunked/rat/step.hpp"

#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/aaren/reference.hpp"
#include "seqmix/chunked/aaren/step.hpp"
#include "seqmix/chunked/mega/fast.hpp"
#include "seqmix/chunked/mega/reference.hpp"
#include "seqmix/chunked/mega/step.hpp"
#include "seqmix/chunked/newton/cells.hpp"
#include "seqmix/chunked/newton/fast.hpp"
#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix/chunked/newton/step.hpp"
