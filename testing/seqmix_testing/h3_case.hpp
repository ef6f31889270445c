// One h3 test shape (test_h3.cpp, test_h3_prepared.cpp): batch, tokens, heads, head size, the
// shift and diagonal filter lengths, and the seed of its random data.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

#include "seqmix/core/tensor.hpp"

namespace seqmix::testing {

struct H3Case {
  index_t B, T, H, P, Ls, L;
  std::uint64_t seed;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " H=" << H << " P=" << P << " Ls=" << Ls << " L=" << L << " seed=" << seed;
    return s.str();
  }
};

}  // namespace seqmix::testing
