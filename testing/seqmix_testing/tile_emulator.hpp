// A plain C++ model of the eight AMX tiles tile_gemm_bf16 uses (core/amx_gemm.hpp), so its walk
// (blocking, edge copies, strides, the final scale) is tested on machines without AMX. Each tile
// is 16 rows x 64 bytes; dot<C, A, B> is TDPBF16PS as the Intel SDM states it: for every fp32
// element (m, n) of C and pair word k, C[m][n] += A[m].bf16[2k] B[k].bf16[2n] +
// A[m].bf16[2k + 1] B[k].bf16[2n + 1], in fp32 (subnormals kept here: the tests use normal
// values, so this does not matter for them).
#pragma once

#include <cstdint>
#include <cstring>

#include "seqmix/core/tensor.hpp"

namespace seqmix::testing {

struct EmulatedTiles {
  struct Registers {
    alignas(64) std::uint8_t tile[8][16][64];
  };
  static Registers& registers() {
    thread_local Registers r;
    return r;
  }
  static float bf16_to_float(std::uint16_t h) {
    const std::uint32_t bits = std::uint32_t{h} << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static void configure() {}
  template <int T>
  static void zero() {
    std::memset(registers().tile[T], 0, sizeof registers().tile[T]);
  }
  template <int T>
  static void load(const void* p, index_t stride_bytes) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(registers().tile[T][r], static_cast<const std::uint8_t*>(p) + r * stride_bytes, 64);
  }
  template <int T>
  static void store(void* p, index_t stride_bytes) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<std::uint8_t*>(p) + r * stride_bytes, registers().tile[T][r], 64);
  }
  template <int Cd, int Ad, int Bd>
  static void dot() {
    Registers& t = registers();
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float c;
        std::memcpy(&c, &t.tile[Cd][m][4 * n], sizeof c);
        for (int k = 0; k < 16; ++k) {
          std::uint16_t a[2], b[2];
          std::memcpy(a, &t.tile[Ad][m][4 * k], sizeof a);
          std::memcpy(b, &t.tile[Bd][k][4 * n], sizeof b);
          c += bf16_to_float(a[0]) * bf16_to_float(b[0]) + bf16_to_float(a[1]) * bf16_to_float(b[1]);
        }
        std::memcpy(&t.tile[Cd][m][4 * n], &c, sizeof c);
      }
  }
};

}  // namespace seqmix::testing
