// The random SSD problem of the 16-bit storage tests (test_ssd_half_io.cpp, test_ssd_bf16.cpp) for
// one half_io sweep case: x, Bm, Cm in three forms (HalfStored) and the fp32 rest of the inputs,
// so both files draw the same problem from the same seed. Case fields read as G = H, heads = HV,
// N = K, P = V.
#pragma once

#include <cstdint>
#include <vector>

#include "seqmix/core/tensor.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix_testing/half_io.hpp"
#include "seqmix_testing/random.hpp"

namespace seqmix::testing {

template <class Half>
struct SsdHalfIoProblem {
  std::vector<std::int32_t> cu;  // packed cases' boundaries (half_io_cu_seqlens)
  index_t B, rows;               // batch rows of the inputs; sequences (rows of the states)
  HalfStored<Half> x, Bm, Cm;
  Tensor<float, 3> dt, dt_raw;   // dt as given, and raw dt for softplus with dt_bias
  Tensor<float, 1> A, D, dt_bias;
  Tensor<float, 4> z, s0;

  SsdHalfIoProblem(const HalfIoCase& c, std::uint64_t seed)
      : cu(half_io_cu_seqlens(c.T)),
        B(c.packed ? 1 : c.B),
        rows(c.packed ? static_cast<index_t>(cu.size()) - 1 : c.B),
        x({B, c.T, c.HV, c.V}, seed),
        Bm({B, c.T, c.H, c.K}, seed + 1),
        Cm({B, c.T, c.H, c.K}, seed + 2),
        dt(random_tensor<3>({B, c.T, c.HV}, seed + 3, 0.001f, 0.5f)),
        dt_raw(random_tensor<3>({B, c.T, c.HV}, seed + 4, -4.f, 1.f)),
        A(random_tensor<1>({c.HV}, seed + 5, -4.f, -0.05f)),
        D(random_tensor<1>({c.HV}, seed + 6)),
        dt_bias(random_tensor<1>({c.HV}, seed + 7, -2.f, 2.f)),
        z(random_tensor<4>({B, c.T, c.HV, c.V}, seed + 8, -3.f, 3.f)),
        s0(random_tensor<4>({rows, c.HV, c.V, c.K}, seed + 9, -0.5f, 0.5f)) {}

  /// Every input but x, Bm and Cm: A, the initial states, dt (raw dt with D, z and dt_bias when
  /// `extras`, to run with dt_softplus) and the packed boundaries of a packed case.
  SsdInputs rest(bool extras, bool packed) const {
    SsdInputs in;
    in.A = A.cview(), in.initial_state = s0.cview();
    in.dt = extras ? dt_raw.cview() : dt.cview();
    if (extras) in.D = D.cview(), in.z = z.cview(), in.dt_bias = dt_bias.cview();
    if (packed) in.batch.cu_seqlens = cu;
    return in;
  }
};

}  // namespace seqmix::testing
