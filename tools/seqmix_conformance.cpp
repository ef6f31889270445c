// seqmix-conformance: checks every registered operator against the conformance vectors in
// golden/ (SPEC section 7).
//
//   seqmix-conformance <golden-dir> [--filter substring]
//
// The program is this file plus tools/conformance/*.cpp: cli.cpp (arguments, exit codes) and one
// run_<family>.cpp per operator family, each registering its op runners with a static
// RegisterOp object (see tools/conformance/registry.hpp). The runner logic itself is header-only
// in tools/conformance/runner.hpp so that tests can include it.
#include <iostream>

#include "conformance/cli.hpp"

int main(int argc, char** argv) { return seqmix::conformance::cli_main(argc, argv, std::cout, std::cerr); }
