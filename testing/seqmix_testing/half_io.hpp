// Shared pieces of the 16-bit q/k/v storage tests of the linear-attention family and SSD
// (test_gla_half_io.cpp, test_delta_rule_half_io.cpp, test_linear_attention_half_io.cpp,
// test_ssd_half_io.cpp): the case shape, the packed-sequence boundaries and a random tensor kept
// in three forms.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "seqmix/core/half.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix_testing/compare.hpp"
#include "seqmix_testing/random.hpp"

namespace seqmix::testing {

// One shape of a half-storage sweep: B rows (or one packed row when `packed`), T tokens, H query /
// key heads, HV value heads, head sizes K and V, the chunk size of the chunked form.
struct HalfIoCase {
  index_t B, T, H, HV, K, V, chunk;
  bool packed;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " H=" << H << " HV=" << HV << " K=" << K << " V=" << V << " chunk=" << chunk
      << (packed ? " packed" : "");
    return s.str();
  }
};

// cu_seqlens cutting T tokens into sequences of growing length 1, 7, 25, ... (the last one cut
// short), so a packed case mixes one-token and multi-chunk sequences.
inline std::vector<std::int32_t> half_io_cu_seqlens(index_t T) {
  std::vector<std::int32_t> cu = {0};
  for (index_t len = 1; cu.back() < T; len = len * 3 + 4)
    cu.push_back(static_cast<std::int32_t>(std::min<index_t>(cu.back() + len, T)));
  return cu;
}

// A random fp32 tensor in [-1, 1], its 16-bit rounding and that rounding widened back to fp32:
// `rounded` is what a kernel reading `half` must reproduce exactly, `orig` what it approximates.
template <class Half>
struct HalfStored {
  Tensor<float, 4> orig, rounded;
  Tensor<Half, 4> half;
  HalfStored(const typename Tensor<float, 4>::shape_type& shape, std::uint64_t seed)
      : orig(shape), rounded(shape), half(shape) {
    fill_uniform(orig.view(), seed, -1.f, 1.f);
    convert(orig.data(), half.data(), orig.numel());
    convert(half.data(), rounded.data(), orig.numel());
  }
};

// One run's outputs o [B,T,HV,V] and final states s [N,HV,K,V].
struct HalfIoResult {
  Tensor<float, 4> o, s;
};

// The two checks of a half-storage run, per (sequence, head): equal to the fp32 run on the same
// rounded values (`same`) within 1e-6, and within `bound` of the run on the unrounded originals.
inline void check_half_io(const HalfIoResult& half, const HalfIoResult& same, const HalfIoResult& orig, double bound) {
  CHECK(per_head_relative_error(half.o, same.o, 2) <= 1e-6);
  CHECK(per_head_relative_error(half.s, same.s, 1) <= 1e-6);
  const double eo = per_head_relative_error(half.o, orig.o, 2);
  const double es = per_head_relative_error(half.s, orig.s, 1);
  INFO("against fp32 originals: output rel err " << eo << ", state rel err " << es);
  CHECK(eo <= bound);
  CHECK(es <= bound);
}

}  // namespace seqmix::testing
