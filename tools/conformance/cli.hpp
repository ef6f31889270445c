// Command line of seqmix-conformance (main is in tools/seqmix_conformance.cpp).
//
//   seqmix-conformance <golden-dir> [--filter substring]
//
// Exit status: 0 when no case failed (not-implemented cases do not fail the run), 1 when a case
// failed, 2 on a usage error or when <golden-dir> is missing or holds no case.
#pragma once

#include <ostream>

namespace seqmix::conformance {

int cli_main(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace seqmix::conformance
