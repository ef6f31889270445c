// The AMX tile GEMM (core/amx_gemm.hpp): its walk over C, K and the edges, run on the emulated
// tiles on every machine and on the instructions where the CPU has them and Linux grants the tile
// state; gemm_bf16 (whichever kernel it dispatches to) against the same reference.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "seqmix/core/amx_gemm.hpp"
#include "seqmix/core/bf16_gemm.hpp"
#include "seqmix_testing/tile_emulator.hpp"

namespace {

using seqmix::index_t;

float bf16_value(std::uint16_t h) { return seqmix::testing::EmulatedTiles::bf16_to_float(h); }

// A bf16 in [-1, 1) (a float's upper half: truncation is enough for test data).
std::uint16_t random_bf16(std::mt19937& rng) {
  const float x = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<std::uint16_t>(bits >> 16);
}

// One GEMM problem in gemm_bf16's layout, with leading dimensions wider than the matrices and C's
// padding filled with a sentinel the kernel must leave alone.
struct TileProblem {
  index_t M, N, K, lda, ldb, ldc;
  bool scaled;
  std::vector<std::uint32_t> A, B;
  std::vector<float> C0, scale;
  static constexpr float kSentinel = 12345.f;

  TileProblem(index_t m, index_t n, index_t k, bool with_scale, std::uint32_t seed)
      : M(m), N(n), K(k), lda(k + 3), ldb(n + 16), ldc(n + 5), scaled(with_scale) {
    std::mt19937 rng(seed);
    const auto pair = [&] { return std::uint32_t{random_bf16(rng)} | std::uint32_t{random_bf16(rng)} << 16; };
    A.resize(static_cast<std::size_t>(M * lda));
    B.resize(static_cast<std::size_t>(K * ldb));
    for (auto& w : A) w = pair();
    for (auto& w : B) w = pair();
    C0.assign(static_cast<std::size_t>(M * ldc), kSentinel);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (index_t r = 0; r < M; ++r)
      for (index_t c = 0; c < N; ++c) C0[r * ldc + c] = u(rng);
    if (scaled)
      for (index_t r = 0; r < M; ++r) scale.push_back(std::uniform_real_distribution<float>(0.f, 1.f)(rng));
  }

  // (value, magnitude): C[r][c] in double and the sum of its terms' magnitudes.
  std::pair<double, double> expected(index_t r, index_t c) const {
    double sum = scaled ? double(scale[r]) * C0[r * ldc + c] : 0.0;
    double size = std::fabs(sum);
    for (index_t k = 0; k < K; ++k) {
      const std::uint32_t a = A[r * lda + k], b = B[k * ldb + c];
      for (int half = 0; half < 2; ++half) {
        const double t = double(bf16_value(static_cast<std::uint16_t>(a >> (16 * half)))) *
                         bf16_value(static_cast<std::uint16_t>(b >> (16 * half)));
        sum += t, size += std::fabs(t);
      }
    }
    return {sum, size};
  }

  template <class Gemm>
  void check(Gemm&& gemm) const {
    std::vector<float> C = C0;
    gemm(A.data(), lda, B.data(), ldb, C.data(), ldc, M, N, K, scaled ? scale.data() : nullptr);
    for (index_t r = 0; r < M; ++r) {
      for (index_t c = 0; c < N; ++c) {
        const auto [want, size] = expected(r, c);
        INFO("M " << M << " N " << N << " K " << K << " scaled " << scaled << " at " << r << ", " << c);
        REQUIRE(std::fabs(C[r * ldc + c] - want) <= 2e-6 * (size + 1e-3));
      }
      for (index_t c = N; c < ldc; ++c) REQUIRE(C[r * ldc + c] == kSentinel);
    }
  }
};

template <class Gemm>
void sweep(Gemm&& gemm) {
  std::uint32_t seed = 1;
  for (const index_t M : {1, 5, 16, 17, 31, 32, 33, 47, 64})
    for (const index_t N : {16, 32, 48, 80})
      for (const index_t K : {1, 3, 15, 16, 17, 32, 40})
        for (const bool scaled : {false, true}) TileProblem(M, N, K, scaled, seed++).check(gemm);
}

}  // namespace

TEST_CASE("amx tile gemm walk on emulated tiles matches the reference over ragged M N K") {
  sweep([](auto&&... args) { seqmix::detail::tile_gemm_bf16<seqmix::testing::EmulatedTiles>(args...); });
}

TEST_CASE("gemm_bf16 as dispatched and its vdpbf16ps kernel match the reference over ragged M N K") {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  sweep([](auto&&... args) { seqmix::detail::gemm_bf16(args...); });
  sweep([](auto&&... args) { seqmix::detail::gemm_bf16_dot(args...); });
#else
  WARN("no AVX512-BF16 in this build: gemm_bf16 is not compiled, its callers keep fp32 kernels");
#endif
}

TEST_CASE("amx tile gemm on the instructions matches the reference where the machine has AMX") {
#if defined(SEQMIX_AMX_BF16)
  if (seqmix::detail::amx_tiles_ready()) {
    sweep([](auto&&... args) { seqmix::detail::tile_gemm_bf16<seqmix::detail::AmxTiles>(args...); });
    return;
  }
  WARN("built for AMX, but Linux refused the tile state: gemm_bf16 keeps vdpbf16ps");
#else
  WARN("this build has no AMX tiles (-march without AMX-TILE / AMX-BF16): the emulated walk above stands in");
#endif
  CHECK_FALSE(seqmix::detail::amx_tiles_ready());
}
