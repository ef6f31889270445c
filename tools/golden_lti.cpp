// Writes the conformance cases of long_conv, ssm_kernel, ssm_dplr_kernel and s5 into <golden>/<op>/<case>/
// (tests/golden/README.md), computed by plain double-precision loops written here from the
// formulas of docs/operators.md section 11 (the convolution sum; S4D's discretization and
// Vandermonde kernel with every power formed by repeated multiplication; S5's recurrence). Nothing
// of seqmix is used but its .npy writer, so the vectors are independent of the operators they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_lti.cpp -o golden_lti
//   ./golden_lti tests/golden
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;
using cd = std::complex<double>;

const char* kSource =
    "tools/golden_lti.cpp: float64 loops of the formulas of docs/operators.md section 11 (convolution sum, "
    "S4D discretization and Vandermonde kernel by repeated multiplication, S5 recurrence), independent of "
    "seqmix's operators";

// ---- long_conv ------------------------------------------------------------------------------

struct ConvCase {
  std::string name;
  index_t B, T, D, L, G, Lb;  // Lb > 0: bidirectional
  bool skip, bias, state;
};

void long_conv_case(const fs::path& root, const ConvCase& c, std::mt19937_64& rng) {
  const double a = 1.0 / std::sqrt(static_cast<double>(c.L));
  Array u = random_array({c.B, c.T, c.D}, rng, -1, 1), h = random_array({c.L, c.G}, rng, -a, a);
  Array hb = random_array({std::max<index_t>(c.Lb, 1), c.G}, rng, -0.2, 0.2);
  Array skip = random_array({c.D}, rng, -1, 1), bias = random_array({c.D}, rng, -1, 1);
  Array s0 = random_array({c.B, c.L - 1, c.D}, rng, -1, 1);
  Array y = zeros({c.B, c.T, c.D}), fin = zeros({c.B, c.L - 1, c.D});
  const index_t S = c.L - 1, group = c.D / c.G;
  // xs row r (r from -S): the state rows, then u.
  const auto xs = [&](index_t b, index_t r, index_t d) {
    if (r >= 0) return u.at((b * c.T + r) * c.D + d);
    return c.state ? s0.at((b * S + S + r) * c.D + d) : 0.0;
  };
  for (index_t b = 0; b < c.B; ++b) {
    for (index_t t = 0; t < c.T; ++t)
      for (index_t d = 0; d < c.D; ++d) {
        double acc = (c.bias ? bias.at(d) : 0.0) + (c.skip ? skip.at(d) * u.at((b * c.T + t) * c.D + d) : 0.0);
        for (index_t s = 0; s < c.L && t - s >= -S; ++s) acc += h.at(s * c.G + d / group) * xs(b, t - s, d);
        for (index_t s = 0; s < c.Lb && t + s < c.T; ++s) acc += hb.at(s * c.G + d / group) * u.at((b * c.T + t + s) * c.D + d);
        y.at((b * c.T + t) * c.D + d) = acc;
      }
    for (index_t r = 0; r < S; ++r)
      for (index_t d = 0; d < c.D; ++d) fin.at((b * S + r) * c.D + d) = xs(b, c.T - S + r, d);
  }
  const fs::path dir = root / "long_conv" / c.name;
  fs::create_directories(dir);
  write(dir, "u", u), write(dir, "filter", h), write(dir, "y", y);
  std::string inputs = "\"u\": \"u.npy\", \"filter\": \"filter.npy\"", outputs = "\"y\": \"y.npy\"";
  if (c.Lb > 0) inputs += ", \"filter_backward\": \"filter_backward.npy\"", write(dir, "filter_backward", hb);
  if (c.skip) inputs += ", \"skip\": \"skip.npy\"", write(dir, "skip", skip);
  if (c.bias) inputs += ", \"bias\": \"bias.npy\"", write(dir, "bias", bias);
  if (c.state) inputs += ", \"initial_state\": \"initial_state.npy\"", write(dir, "initial_state", s0);
  if (c.Lb == 0) outputs += ", \"final_state\": \"final_state.npy\"", write(dir, "final_state", fin);
  write_case(dir, "long_conv", std::string("\"direction\": \"") + (c.Lb > 0 ? "bidirectional" : "causal") + "\"",
             inputs, outputs, "1e-05", kSource);
}

// ---- discretization shared by ssm_kernel and s5 ----------------------------------------------

void discretize(cd lambda, double dt, bool zoh, cd* A_bar, cd* factor) {
  if (zoh) {
    *A_bar = std::exp(dt * lambda);
    *factor = (*A_bar - 1.0) / lambda;
  } else {
    *A_bar = (1.0 + dt * lambda / 2.0) / (1.0 - dt * lambda / 2.0);
    *factor = dt / (1.0 - dt * lambda / 2.0);
  }
}

Array log_uniform_dt(index_t n, std::mt19937_64& rng) {
  Array dt = random_array({n}, rng, std::log(1e-3), std::log(1e-1));
  for (double& v : dt.v) v = static_cast<double>(static_cast<float>(std::exp(v)));
  return dt;
}

// ---- ssm_kernel -----------------------------------------------------------------------------

struct KernelCase {
  std::string name;
  index_t H, N, L;
  bool zoh, pairs, complex;
};

void ssm_kernel_case(const fs::path& root, const KernelCase& c, std::mt19937_64& rng) {
  // S4D-Lin eigenvalues with a random real part (complex), or S4D-Real ones (real).
  Array A_re = zeros({c.H, c.N}), A_im = zeros({c.H, c.N});
  for (index_t h = 0; h < c.H; ++h)
    for (index_t n = 0; n < c.N; ++n) {
      A_re.at(h * c.N + n) = c.complex ? -0.5 : -double(n + 1);
      A_im.at(h * c.N + n) = c.complex ? static_cast<double>(static_cast<float>(3.14159265358979 * n)) : 0.0;
    }
  Array B_re = random_array({c.H, c.N}, rng, 0.5, 1.5), B_im = random_array({c.H, c.N}, rng, -0.5, 0.5);
  Array C_re = random_array({c.H, c.N}, rng, -1, 1), C_im = random_array({c.H, c.N}, rng, -1, 1);
  Array dt = log_uniform_dt(c.H, rng);
  Array kernel = zeros({c.L, c.H});
  for (index_t h = 0; h < c.H; ++h)
    for (index_t n = 0; n < c.N; ++n) {
      const index_t i = h * c.N + n;
      const cd lambda(A_re.at(i), c.complex ? A_im.at(i) : 0.0);
      cd A_bar, factor;
      discretize(lambda, dt.at(h), c.zoh, &A_bar, &factor);
      const cd w = cd(C_re.at(i), c.complex ? C_im.at(i) : 0.0) * factor * cd(B_re.at(i), c.complex ? B_im.at(i) : 0.0);
      cd power = 1.0;
      for (index_t l = 0; l < c.L; ++l, power *= A_bar) kernel.at(l * c.H + h) += (c.pairs ? 2.0 : 1.0) * (w * power).real();
    }
  const fs::path dir = root / "ssm_kernel" / c.name;
  fs::create_directories(dir);
  write(dir, "A_real", A_re), write(dir, "B_real", B_re), write(dir, "C_real", C_re), write(dir, "dt", dt);
  write(dir, "kernel", kernel);
  std::string inputs = "\"A_real\": \"A_real.npy\", \"B_real\": \"B_real.npy\", \"C_real\": \"C_real.npy\", \"dt\": \"dt.npy\"";
  if (c.complex) {
    write(dir, "A_imag", A_im), write(dir, "B_imag", B_im), write(dir, "C_imag", C_im);
    inputs += ", \"A_imag\": \"A_imag.npy\", \"B_imag\": \"B_imag.npy\", \"C_imag\": \"C_imag.npy\"";
  }
  write_case(dir, "ssm_kernel",
             std::string("\"discretization\": \"") + (c.zoh ? "zoh" : "bilinear") + "\", \"symmetry\": \"" +
                 (c.pairs ? "conjugate_pairs" : "none") + "\"",
             inputs, "\"kernel\": \"kernel.npy\"", "1e-04", kSource);
}

// ---- s5 -------------------------------------------------------------------------------------

struct S5Case {
  std::string name;
  index_t B, T, H, P;
  bool zoh, pairs, state;
  bool timestep;  // a per-token step [B,T]: token t discretized at dt[p] * timestep[b,t]
};

void s5_case(const fs::path& root, const S5Case& c, std::mt19937_64& rng) {
  const double bh = 1.0 / std::sqrt(double(c.H)), cp = 1.0 / std::sqrt(double(c.P));
  Array L_re = random_array({c.P}, rng, -1, -0.1), L_im = random_array({c.P}, rng, -3, 3);
  Array B_re = random_array({c.P, c.H}, rng, -bh, bh), B_im = random_array({c.P, c.H}, rng, -bh, bh);
  Array C_re = random_array({c.H, c.P}, rng, -cp, cp), C_im = random_array({c.H, c.P}, rng, -cp, cp);
  Array dt = log_uniform_dt(c.P, rng), D = random_array({c.H}, rng, -1, 1);
  Array u = random_array({c.B, c.T, c.H}, rng, -1, 1);
  Array s_re = random_array({c.B, c.P}, rng, -1, 1), s_im = random_array({c.B, c.P}, rng, -1, 1);
  Array y = zeros({c.B, c.T, c.H}), f_re = zeros({c.B, c.P}), f_im = zeros({c.B, c.P});
  // Per-token steps log-uniform in [0.1, 10], drawn last so the cases without them keep their values.
  Array ts = c.timestep ? random_array({c.B, c.T}, rng, std::log(0.1), std::log(10.0)) : zeros({c.B, c.T});
  for (double& v : ts.v) v = c.timestep ? static_cast<double>(static_cast<float>(std::exp(v))) : 1.0;
  std::vector<cd> A_bar(c.P), factor(c.P);
  for (index_t b = 0; b < c.B; ++b) {
    std::vector<cd> x(c.P);
    for (index_t p = 0; p < c.P; ++p) x[p] = c.state ? cd(s_re.at(b * c.P + p), s_im.at(b * c.P + p)) : 0.0;
    for (index_t t = 0; t < c.T; ++t) {
      for (index_t p = 0; p < c.P; ++p)
        discretize(cd(L_re.at(p), L_im.at(p)), dt.at(p) * ts.at(b * c.T + t), c.zoh, &A_bar[p], &factor[p]);
      for (index_t p = 0; p < c.P; ++p) {
        cd bu = 0.0;
        for (index_t h = 0; h < c.H; ++h) bu += cd(B_re.at(p * c.H + h), B_im.at(p * c.H + h)) * u.at((b * c.T + t) * c.H + h);
        x[p] = A_bar[p] * x[p] + factor[p] * bu;
      }
      for (index_t h = 0; h < c.H; ++h) {
        double acc = 0;
        for (index_t p = 0; p < c.P; ++p) acc += (cd(C_re.at(h * c.P + p), C_im.at(h * c.P + p)) * x[p]).real();
        y.at((b * c.T + t) * c.H + h) = (c.pairs ? 2.0 : 1.0) * acc + D.at(h) * u.at((b * c.T + t) * c.H + h);
      }
    }
    for (index_t p = 0; p < c.P; ++p) f_re.at(b * c.P + p) = x[p].real(), f_im.at(b * c.P + p) = x[p].imag();
  }
  const fs::path dir = root / "s5" / c.name;
  fs::create_directories(dir);
  write(dir, "u", u), write(dir, "Lambda_real", L_re), write(dir, "Lambda_imag", L_im), write(dir, "B_real", B_re);
  write(dir, "B_imag", B_im), write(dir, "C_real", C_re), write(dir, "C_imag", C_im), write(dir, "dt", dt);
  write(dir, "D", D), write(dir, "y", y), write(dir, "final_state_real", f_re), write(dir, "final_state_imag", f_im);
  std::string inputs =
      "\"u\": \"u.npy\", \"Lambda_real\": \"Lambda_real.npy\", \"Lambda_imag\": \"Lambda_imag.npy\", \"B_real\": "
      "\"B_real.npy\", \"B_imag\": \"B_imag.npy\", \"C_real\": \"C_real.npy\", \"C_imag\": \"C_imag.npy\", \"dt\": "
      "\"dt.npy\", \"D\": \"D.npy\"";
  if (c.state) {
    write(dir, "initial_state_real", s_re), write(dir, "initial_state_imag", s_im);
    inputs += ", \"initial_state_real\": \"initial_state_real.npy\", \"initial_state_imag\": \"initial_state_imag.npy\"";
  }
  if (c.timestep) {
    write(dir, "timestep", ts);
    inputs += ", \"timestep\": \"timestep.npy\"";
  }
  write_case(dir, "s5",
             std::string("\"discretization\": \"") + (c.zoh ? "zoh" : "bilinear") + "\", \"symmetry\": \"" +
                 (c.pairs ? "conjugate_pairs" : "none") + "\"",
             inputs,
             "\"y\": \"y.npy\", \"final_state_real\": \"final_state_real.npy\", \"final_state_imag\": "
             "\"final_state_imag.npy\"",
             "1e-04", kSource);
}

// ---- ssm_dplr_kernel ------------------------------------------------------------------------
// A = diag(Lambda) - P Q^* (Q = P when the case has no Q) built densely. Bilinear: A_bar =
// (I - dt/2 A)^-1 (I + dt/2 A) and B_bar = (I - dt/2 A)^-1 dt B by Gauss-Jordan elimination. ZOH:
// A_bar = exp(dt A) and B_bar = int_0^dt exp(s A) ds B, read off exp(dt [[A, B], [0, 0]]) (Van
// Loan), the exponential by a Taylor series with scaling and squaring written here (not Eigen's
// MatrixFunctions, which seqmix uses). Then kernel[l] = Re(C A_bar^l B_bar) with the powers
// applied one matrix-vector product at a time.

struct DplrCase {
  std::string name;
  index_t H, G, N, r, L;
  bool explicit_q;
  bool zoh = false;  // ZOH also draws dt log-uniform in [0.05, 1] (larger steps: exp(dt A) far from I)
};

// exp(M) of a dense n x n complex matrix (row-major): M / 2^s with ||M / 2^s||_1 <= 1/2, the
// Taylor series to 40 terms (the remainder is below 2^-40 / 40!, far under double rounding), then
// s squarings.
std::vector<cd> dense_expm(std::vector<cd> M, index_t n) {
  double norm = 0.0;
  for (index_t k = 0; k < n; ++k) {
    double col = 0.0;
    for (index_t i = 0; i < n; ++i) col += std::abs(M[i * n + k]);
    norm = std::max(norm, col);
  }
  int squarings = 0;
  while (norm > 0.5) norm /= 2.0, ++squarings;
  const double scale = std::ldexp(1.0, -squarings);
  for (cd& v : M) v *= scale;
  const auto product = [n](const std::vector<cd>& X, const std::vector<cd>& Y) {
    std::vector<cd> Z(static_cast<std::size_t>(n * n), 0.0);
    for (index_t i = 0; i < n; ++i)
      for (index_t k = 0; k < n; ++k)
        for (index_t j = 0; j < n; ++j) Z[i * n + j] += X[i * n + k] * Y[k * n + j];
    return Z;
  };
  std::vector<cd> sum(static_cast<std::size_t>(n * n), 0.0), term(static_cast<std::size_t>(n * n), 0.0);
  for (index_t i = 0; i < n; ++i) sum[i * n + i] = term[i * n + i] = 1.0;
  for (int k = 1; k <= 40; ++k) {  // term = M^k / k!
    term = product(term, M);
    for (std::size_t i = 0; i < term.size(); ++i) term[i] /= double(k), sum[i] += term[i];
  }
  for (int s = 0; s < squarings; ++s) sum = product(sum, sum);
  return sum;
}

// Solves M X = Y (n x n, `cols` right-hand sides, row-major) in place, partial pivoting.
void dplr_gauss_jordan(std::vector<cd>& M, std::vector<cd>& Y, index_t n, index_t cols) {
  for (index_t k = 0; k < n; ++k) {
    index_t p = k;
    for (index_t i = k + 1; i < n; ++i)
      if (std::abs(M[i * n + k]) > std::abs(M[p * n + k])) p = i;
    for (index_t j = 0; j < n; ++j) std::swap(M[k * n + j], M[p * n + j]);
    for (index_t j = 0; j < cols; ++j) std::swap(Y[k * cols + j], Y[p * cols + j]);
    const cd pivot = M[k * n + k];
    for (index_t j = 0; j < n; ++j) M[k * n + j] /= pivot;
    for (index_t j = 0; j < cols; ++j) Y[k * cols + j] /= pivot;
    for (index_t i = 0; i < n; ++i)
      if (i != k) {
        const cd f = M[i * n + k];
        for (index_t j = 0; j < n; ++j) M[i * n + j] -= f * M[k * n + j];
        for (index_t j = 0; j < cols; ++j) Y[i * cols + j] -= f * Y[k * cols + j];
      }
  }
}

void ssm_dplr_case(const fs::path& root, const DplrCase& c, std::mt19937_64& rng) {
  const index_t H = c.H, G = c.G, N = c.N, r = c.r;
  Array L_re = random_array({G, N}, rng, -1.0, -0.3), L_im = random_array({G, N}, rng, -8.0, 8.0);
  Array P_re = random_array({G, r, N}, rng, -0.4, 0.4), P_im = random_array({G, r, N}, rng, -0.4, 0.4);
  // Q = (0.6 + 0.3i) P rounded to float: A + A^* = 2 Re(Lambda) - 1.2 P P^* stays negative definite.
  Array Q_re = zeros({G, r, N}), Q_im = zeros({G, r, N});
  for (std::size_t i = 0; i < P_re.v.size(); ++i) {
    const cd q = cd(0.6, 0.3) * cd(P_re.v[i], P_im.v[i]);
    Q_re.v[i] = static_cast<float>(q.real()), Q_im.v[i] = static_cast<float>(q.imag());
  }
  if (!c.explicit_q) Q_re = P_re, Q_im = P_im;
  Array B_re = random_array({H, N}, rng, -1, 1), B_im = random_array({H, N}, rng, -1, 1);
  Array C_re = random_array({H, N}, rng, -1, 1), C_im = random_array({H, N}, rng, -1, 1);
  Array dt = log_uniform_dt(H, rng);
  if (c.zoh) {
    dt = random_array({H}, rng, std::log(0.05), std::log(1.0));
    for (double& v : dt.v) v = static_cast<double>(static_cast<float>(std::exp(v)));
  }
  Array kernel = zeros({c.L, H});
  for (index_t h = 0; h < H; ++h) {
    const index_t g = h / (H / G);
    const double step = dt.at(h);
    // Y [N][N+1] ends up as [A_bar | B_bar] under either discretization.
    std::vector<cd> M(N * N), Y(N * (N + 1)), block((N + 1) * (N + 1), 0.0);
    for (index_t n = 0; n < N; ++n) {
      for (index_t k = 0; k < N; ++k) {
        cd a = n == k ? cd(L_re.at(g * N + n), L_im.at(g * N + n)) : cd(0.0);
        for (index_t j = 0; j < r; ++j) {
          const index_t pn = (g * r + j) * N + n, qk = (g * r + j) * N + k;
          a -= cd(P_re.at(pn), P_im.at(pn)) * std::conj(cd(Q_re.at(qk), Q_im.at(qk)));
        }
        M[n * N + k] = (n == k ? 1.0 : 0.0) - step / 2 * a;
        Y[n * (N + 1) + k] = (n == k ? 1.0 : 0.0) + step / 2 * a;
        block[n * (N + 1) + k] = step * a;
      }
      Y[n * (N + 1) + N] = step * cd(B_re.at(h * N + n), B_im.at(h * N + n));
      block[n * (N + 1) + N] = step * cd(B_re.at(h * N + n), B_im.at(h * N + n));
    }
    if (c.zoh) {  // the first N rows of the (N+1) x (N+1) exponential are [A_bar | B_bar]
      const std::vector<cd> e = dense_expm(block, N + 1);
      Y.assign(e.begin(), e.begin() + N * (N + 1));
    } else {
      dplr_gauss_jordan(M, Y, N, N + 1);
    }
    std::vector<cd> v(N), next(N);
    for (index_t n = 0; n < N; ++n) v[n] = Y[n * (N + 1) + N];
    for (index_t l = 0; l < c.L; ++l) {
      cd y = 0.0;
      for (index_t n = 0; n < N; ++n) y += cd(C_re.at(h * N + n), C_im.at(h * N + n)) * v[n];
      kernel.at(l * H + h) = y.real();
      for (index_t n = 0; n < N; ++n) {
        next[n] = 0.0;
        for (index_t k = 0; k < N; ++k) next[n] += Y[n * (N + 1) + k] * v[k];
      }
      v.swap(next);
    }
  }
  const fs::path dir = root / "ssm_dplr_kernel" / c.name;
  fs::create_directories(dir);
  write(dir, "Lambda_real", L_re), write(dir, "Lambda_imag", L_im), write(dir, "P_real", P_re);
  write(dir, "P_imag", P_im), write(dir, "B_real", B_re), write(dir, "B_imag", B_im), write(dir, "C_real", C_re);
  write(dir, "C_imag", C_im), write(dir, "dt", dt), write(dir, "kernel", kernel);
  std::string inputs =
      "\"Lambda_real\": \"Lambda_real.npy\", \"Lambda_imag\": \"Lambda_imag.npy\", \"P_real\": \"P_real.npy\", "
      "\"P_imag\": \"P_imag.npy\", \"B_real\": \"B_real.npy\", \"B_imag\": \"B_imag.npy\", \"C_real\": \"C_real.npy\", "
      "\"C_imag\": \"C_imag.npy\", \"dt\": \"dt.npy\"";
  if (c.explicit_q) {
    write(dir, "Q_real", Q_re), write(dir, "Q_imag", Q_im);
    inputs += ", \"Q_real\": \"Q_real.npy\", \"Q_imag\": \"Q_imag.npy\"";
  }
  const std::string params = std::string("\"discretization\": \"") + (c.zoh ? "zoh" : "bilinear") +
                             "\", \"symmetry\": \"none\"";
  const char* source =
      c.zoh ? "tools/golden_lti.cpp: float64 loops (dense A = Lambda - P Q^*, ZOH by a Taylor / scaling-and-squaring "
              "exponential of dt [[A, B], [0, 0]], kernel by repeated matrix-vector products), independent of "
              "seqmix's operators"
            : "tools/golden_lti.cpp: float64 loops (dense A = Lambda - P Q^*, bilinear by Gauss-Jordan, "
              "kernel by repeated matrix-vector products), independent of seqmix's operators";
  write_case(dir, "ssm_dplr_kernel", params, inputs, "\"kernel\": \"kernel.npy\"", "1e-04", source);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(20261216);
  long_conv_case(root, {"b2_t50_d6_l50_skip_bias_state", 2, 50, 6, 50, 6, 0, true, true, true}, rng);
  long_conv_case(root, {"b1_t33_d6_l20_heads2", 1, 33, 6, 20, 2, 0, false, true, false}, rng);
  long_conv_case(root, {"b1_t30_d5_l70_longer_than_t", 1, 30, 5, 70, 5, 0, true, false, false}, rng);
  long_conv_case(root, {"b2_t40_d5_l40_bidirectional_lb15", 2, 40, 5, 40, 5, 15, true, true, false}, rng);
  ssm_kernel_case(root, {"h3_n8_l300_zoh_pairs_s4dlin", 3, 8, 300, true, true, true}, rng);
  ssm_kernel_case(root, {"h2_n4_l100_bilinear_real", 2, 4, 100, false, false, false}, rng);
  s5_case(root, {"b2_t40_h6_p5_zoh_pairs_state", 2, 40, 6, 5, true, true, true, false}, rng);
  s5_case(root, {"b1_t25_h4_p3_bilinear", 1, 25, 4, 3, false, false, false, false}, rng);
  // Their own generator, so the cases above keep their values.
  std::mt19937_64 dplr_rng(20261602);
  ssm_dplr_case(root, {"h3_g1_n8_r1_l200", 3, 1, 8, 1, 200, false}, dplr_rng);
  ssm_dplr_case(root, {"h4_g2_n6_r2_l77_explicit_q", 4, 2, 6, 2, 77, true}, dplr_rng);
  std::mt19937_64 s5_timestep_rng(20261605);
  s5_case(root, {"b2_t33_h5_p4_zoh_timestep_state", 2, 33, 5, 4, true, true, true, true}, s5_timestep_rng);
  s5_case(root, {"b1_t20_h3_p3_bilinear_timestep", 1, 20, 3, 3, false, false, false, true}, s5_timestep_rng);
  std::mt19937_64 dplr_zoh_rng(20261616);
  ssm_dplr_case(root, {"h3_g1_n8_r1_l150_zoh", 3, 1, 8, 1, 150, false, true}, dplr_zoh_rng);
  ssm_dplr_case(root, {"h4_g2_n6_r2_l90_zoh_explicit_q", 4, 2, 6, 2, 90, true, true}, dplr_zoh_rng);
  return 0;
}
