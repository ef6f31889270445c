// fnet: FNet's token mixing (Lee-Thorp et al. 2021, issue 16 item 6): the real part of the 2-D
// discrete Fourier transform of each batch row, over the features and then over the tokens.
//
//   y[b,t,d] = Re( sum_{s<T} sum_{e<D} x[b,s,e] exp(-2 pi i (t s / T + d e / D)) )
//            = sum_{s,e} x[b,s,e] cos(2 pi (t s / T + d e / D))          (x real)
//
// Every output token reads every input token: the operator is non-causal and has no decode
// step. This header holds the argument structs, their validation and the readable definition
// (seqmix::reference::fnet: the double sums in double precision); the fast form (FFTs) is in
// fast.hpp.
#pragma once

#include <cmath>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix {

/// fnet's input (docs/operators.md, "fnet").
struct FnetInputs {
  ConstView<float, 3> x;  ///< [B,T,D], any strides
};

/// fnet's output: y must not overlap x.
struct FnetOutputs {
  TensorView<float, 3> y;  ///< [B,T,D]: the real part of each batch row's 2-D DFT
};

namespace detail {

struct FnetDims {
  index_t B, T, D;
};

// Shapes and overlap, before anything is written (shared by both forms).
inline FnetDims validate_fnet(const char* op, const FnetInputs& in, const FnetOutputs& out) {
  const ArgCheck check(op);
  check.shape("x", in.x, {-1, -1, -1}, "B,T,D");
  const index_t B = in.x.size(0), T = in.x.size(1), D = in.x.size(2);
  check.shape("y", out.y, {B, T, D}, "B,T,D");
  check.no_overlap("y", out.y, "x", in.x);
  return {B, T, D};
}

// cos(2 pi k / n) and sin(2 pi k / n) for k < n, in double.
inline void fnet_unit_circle(index_t n, std::vector<double>& c, std::vector<double>& s) {
  const double pi = 3.14159265358979323846;
  c.resize(static_cast<std::size_t>(n));
  s.resize(static_cast<std::size_t>(n));
  for (index_t k = 0; k < n; ++k) {
    c[static_cast<std::size_t>(k)] = std::cos(2.0 * pi * double(k) / double(n));
    s[static_cast<std::size_t>(k)] = std::sin(2.0 * pi * double(k) / double(n));
  }
}

}  // namespace detail

namespace reference {

/// The definition: per batch row the DFT over the features (O(T D^2)), then the real part of the
/// DFT over the tokens (O(T^2 D)), both as loops over the DFT sums in double, exponents reduced
/// modulo the length (exact twiddles). Single-threaded, `executor` accepted for a uniform
/// signature. Validates first.
inline void fnet(const FnetInputs& in, const FnetOutputs& out, const Executor& executor = serial_executor()) {
  (void)executor;
  const auto dims = detail::validate_fnet("reference::fnet", in, out);
  const index_t T = dims.T, D = dims.D;
  std::vector<double> ct, st, cd, sd;
  detail::fnet_unit_circle(T, ct, st);
  detail::fnet_unit_circle(D, cd, sd);
  // f[s,d] = sum_e x[s,e] exp(-2 pi i d e / D) = fr - i fi (fi stored with its sign flipped).
  std::vector<double> fr(static_cast<std::size_t>(T * D)), fi(fr.size());
  for (index_t b = 0; b < dims.B; ++b) {
    for (index_t s = 0; s < T; ++s)
      for (index_t d = 0; d < D; ++d) {
        double re = 0.0, im = 0.0;
        for (index_t e = 0; e < D; ++e) {
          const std::size_t k = static_cast<std::size_t>((d * e) % D);
          re += double(in.x(b, s, e)) * cd[k];
          im += double(in.x(b, s, e)) * sd[k];
        }
        fr[static_cast<std::size_t>(s * D + d)] = re;
        fi[static_cast<std::size_t>(s * D + d)] = im;
      }
    // Re(sum_s f[s,d] exp(-2 pi i t s / T)) = sum_s fr cos - fi sin (with f = fr - i fi).
    for (index_t t = 0; t < T; ++t)
      for (index_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (index_t s = 0; s < T; ++s) {
          const std::size_t k = static_cast<std::size_t>((t * s) % T);
          acc += fr[static_cast<std::size_t>(s * D + d)] * ct[k] - fi[static_cast<std::size_t>(s * D + d)] * st[k];
        }
        out.y(b, t, d) = static_cast<float>(acc);
      }
  }
}

}  // namespace reference
}  // namespace seqmix
