// ssm_kernel: the fast kernel against the double Vandermonde reference, the recurrent step
// against the convolution with the kernel (through long_conv), for real and complex diagonal A
// (S4D-Lin, S4D-Inv, S4D-Real), ZOH and bilinear; bad and unstable parameters refused.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/lti.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::SsmDiscretization;
using seqmix::SsmInit;
using seqmix::SsmStateSymmetry;
using seqmix::Tensor;
namespace st = seqmix::testing;

// S4D-style parameters: A from an initialization, B = 1 (+ noise), C random, dt log-uniform in
// [1e-3, 1e-1] as S4D samples it.
struct SsmData {
  Tensor<float, 2> A_real, A_imag, B_real, B_imag, C_real, C_imag;
  Tensor<float, 1> dt;
  bool complex;

  SsmData(index_t H, index_t N, SsmInit init, std::uint64_t seed)
      : A_real({H, N}), A_imag({H, N}),
        B_real(st::random_tensor<2>({H, N}, seed, 0.5f, 1.5f)),
        B_imag(st::random_tensor<2>({H, N}, seed + 1, -0.5f, 0.5f)),
        C_real(st::random_tensor<2>({H, N}, seed + 2)),
        C_imag(st::random_tensor<2>({H, N}, seed + 3)),
        dt({H}),
        complex(init != SsmInit::s4d_real) {
    seqmix::ssm_init_diagonal(init, A_real.view(), A_imag.view());
    const Tensor<float, 1> r = st::random_tensor<1>({H}, seed + 4, 0.f, 1.f);
    for (index_t h = 0; h < H; ++h) dt(h) = std::exp(std::log(1e-3f) + r(h) * (std::log(1e-1f) - std::log(1e-3f)));
  }

  seqmix::SsmParams params() const {
    seqmix::SsmParams p{A_real.view(), {}, B_real.view(), {}, C_real.view(), {}, dt.view()};
    if (complex) p.A_imag = A_imag.view(), p.B_imag = B_imag.view(), p.C_imag = C_imag.view();
    return p;
  }
};

struct KernelCase {
  index_t H, N, L;
  SsmInit init;
  SsmDiscretization disc;
  SsmStateSymmetry symmetry;

  std::string describe() const {
    std::ostringstream s;
    s << "H=" << H << " N=" << N << " L=" << L << " init=" << int(init) << " disc=" << int(disc)
      << " symmetry=" << int(symmetry);
    return s.str();
  }
};

TEST_CASE("ssm_kernel: fast kernel against the double Vandermonde loop", "[ssm_kernel]") {
  // H across the SIMD width, N across the 4-state group, L across the 256-step anchor block.
  const KernelCase cases[] = {
      {1, 1, 1, SsmInit::s4d_lin, SsmDiscretization::zoh, SsmStateSymmetry::none},
      {3, 4, 255, SsmInit::s4d_inv, SsmDiscretization::zoh, SsmStateSymmetry::conjugate_pairs},
      {16, 7, 257, SsmInit::s4d_lin, SsmDiscretization::bilinear, SsmStateSymmetry::conjugate_pairs},
      {17, 64, 600, SsmInit::s4d_inv, SsmDiscretization::bilinear, SsmStateSymmetry::none},
      {33, 16, 1000, SsmInit::s4d_real, SsmDiscretization::zoh, SsmStateSymmetry::none},
      {5, 32, 4097, SsmInit::s4d_lin, SsmDiscretization::zoh, SsmStateSymmetry::conjugate_pairs},
      {2, 8, 4097, SsmInit::s4d_real, SsmDiscretization::bilinear, SsmStateSymmetry::none},
  };
  std::uint64_t seed = 1;
  for (const KernelCase& c : cases) {
    INFO(c.describe());
    const SsmData data(c.H, c.N, c.init, seed += 10);
    const seqmix::SsmKernelOptions options{c.disc, c.symmetry};
    Tensor<float, 2> ref({c.L, c.H}), fast({c.L, c.H});
    seqmix::reference::ssm_kernel(data.params(), ref.view(), options);
    seqmix::ssm_kernel(data.params(), fast.view(), options, seed % 2 ? st::two_thread_pool() : seqmix::serial_executor());
    // Relative to sum_n |C B_bar|, the kernel's scale (its first rows).
    double scale = 0;
    for (index_t h = 0; h < c.H; ++h) scale = std::max(scale, double(std::abs(ref(0, h))));
    for (index_t l = 0; l < c.L; ++l)
      for (index_t h = 0; h < c.H; ++h) {
        INFO("l=" << l << " h=" << h);
        REQUIRE(std::abs(fast(l, h) - ref(l, h)) <= 2e-5 * std::max(1.0, scale) + 1e-6);
      }
  }
}

TEST_CASE("ssm_kernel: the recurrent step equals the convolution with the kernel", "[ssm_kernel]") {
  const index_t B = 2, T = 300, H = 19, N = 16;
  for (SsmInit init : {SsmInit::s4d_lin, SsmInit::s4d_inv, SsmInit::s4d_real})
    for (SsmDiscretization disc : {SsmDiscretization::zoh, SsmDiscretization::bilinear}) {
      INFO("init=" << int(init) << " disc=" << int(disc));
      const SsmData data(H, N, init, 5 + int(init));
      const seqmix::SsmKernelOptions options{disc, SsmStateSymmetry::conjugate_pairs};
      const Tensor<float, 3> u = st::random_tensor<3>({B, T, H}, 9);
      const Tensor<float, 1> skip = st::random_tensor<1>({H}, 10);
      // Prefill: kernel, then the long convolution (FFT) with skip.
      Tensor<float, 2> kernel({T, H});
      seqmix::ssm_kernel(data.params(), kernel.view(), options);
      Tensor<float, 3> y_conv({B, T, H});
      seqmix::long_conv({u.view(), kernel.view(), {}, skip.view()}, {y_conv.view()},
                        {seqmix::LongConvDirection::causal, seqmix::LongConvMethod::fft});
      // Decode: the recurrence from a zero state.
      Tensor<float, 2> Ar({H, N}), Ai({H, N}), Br({H, N}), Bi({H, N});
      seqmix::ssm_discretize(data.params(), {Ar.view(), Ai.view(), Br.view(), Bi.view()}, options);
      Tensor<float, 3> xr({B, H, N}), xi({B, H, N}), y_rec({B, T, H});
      const seqmix::SsmParams p = data.params();
      for (index_t t = 0; t < T; ++t)
        seqmix::ssm_step({u.view().select(1, t), Ar.view(), Ai.view(), Br.view(), Bi.view(), p.C_real, p.C_imag,
                          skip.view()},
                         {y_rec.view().select(1, t), xr.view(), xi.view()}, options, st::two_thread_pool());
      st::require_close("y", y_rec.cview(), y_conv.cview(), 5e-5);
    }
}

TEST_CASE("ssm_kernel: unstable, non-finite and misshapen parameters are refused before any write",
          "[ssm_kernel]") {
  const index_t H = 4, N = 8, L = 16;
  SsmData data(H, N, SsmInit::s4d_lin, 3);
  Tensor<float, 2> kernel({L, H});
  kernel.fill(7.f);
  const auto refused = [&](const char* argument) {
    st::require_shape_error(argument, [&] { seqmix::ssm_kernel(data.params(), kernel.view()); });
    st::require_shape_error(argument, [&] { seqmix::reference::ssm_kernel(data.params(), kernel.view()); });
    for (float v : kernel) REQUIRE(v == 7.f);
  };
  data.A_real(2, 3) = 0.f;  // on the imaginary axis: Re(lambda) >= 0
  refused("A_real");
  data.A_real(2, 3) = 0.1f;
  refused("A_real");
  data.A_real(2, 3) = std::numeric_limits<float>::quiet_NaN();
  refused("A_real");
  data.A_real(2, 3) = -0.5f;
  data.C_imag(1, 1) = std::numeric_limits<float>::infinity();
  refused("C_imag");
  data.C_imag(1, 1) = 0.f;
  data.dt(0) = 0.f;
  refused("dt");
  data.dt(0) = 0.01f;
  Tensor<float, 2> wrong({L, H + 1});
  st::require_shape_error("kernel", [&] { seqmix::ssm_kernel(data.params(), wrong.view()); });
  Tensor<float, 2> B_wrong({H, N + 1});
  seqmix::SsmParams p = data.params();
  p.B_real = B_wrong.view();
  st::require_shape_error("B_real", [&] { seqmix::ssm_kernel(p, kernel.view()); });
  st::require_shape_error("options.discretization", [&] {
    seqmix::ssm_kernel(data.params(), kernel.view(), {static_cast<SsmDiscretization>(5), SsmStateSymmetry::none});
  });
  for (float v : kernel) REQUIRE(v == 7.f);
  // The step: a state of the wrong size, and y overlapping the input.
  Tensor<float, 2> Ar({H, N}), Ai({H, N}), Br({H, N}), Bi({H, N}), u({1, H}), y({1, H});
  Tensor<float, 3> xr({1, H, N}), xi({1, H, N + 1});
  st::require_shape_error("state_imag", [&] {
    seqmix::ssm_step({u.view(), Ar.view(), Ai.view(), Br.view(), Bi.view(), data.C_real.view()},
                     {y.view(), xr.view(), xi.view()});
  });
  Tensor<float, 3> xi_ok({1, H, N});
  st::require_shape_error("y", [&] {
    seqmix::ssm_step({u.view(), Ar.view(), Ai.view(), Br.view(), Bi.view(), data.C_real.view()},
                     {u.view(), xr.view(), xi_ok.view()});
  });
}

}  // namespace
