// Where a quantized block keeps each code: the operand order of the integer dot-product kernels
// (attention.hpp). Float blocks keep their plain layouts (keys channel-major, values token-major).
//
// Both layouts are made of 64-byte units of 16 lanes x 4 bytes, the shape one u8 x s8
// dot-product instruction consumes (each 32-bit lane sums 4 byte products):
//   keys   lane = token,   its 4 bytes = 4 consecutive channels (a "channel quad");
//   values lane = channel, its 4 bytes = 4 consecutive tokens   (a "token quad").
// int4 / int2 codes add planes inside a unit: a byte holds L = 8 / bits codes, plane p at bit
// p * bits, so one unit covers 16 * L lanes and a mask (and a shift) yields 16 lanes of bytes:
//   keys   unit u of channel quad cq: tokens [16 L u, 16 L (u + 1)), token j of the unit in lane
//          j % 16, plane j / 16;   units of one quad are contiguous, quads follow each other;
//   values unit u of token quad tq: channels [16 L u, 16 L (u + 1)), likewise; units of one
//          token quad are contiguous, token quads follow each other.
// Channels and tokens past the end hold code 0 (padding to whole quads and units).
#pragma once

#include <cstddef>
#include <cstdint>

#include "seqmix/core/tensor.hpp"

namespace seqmix::detail {

constexpr index_t kCodeUnitBytes = 64;

struct CodeSpot {
  std::size_t byte;
  int shift;
};

inline index_t codes_per_byte(int bits) noexcept { return 8 / bits; }
inline index_t lanes_per_unit(int bits) noexcept { return 16 * codes_per_byte(bits); }

// Keys: `slots` is a multiple of lanes_per_unit(bits).
inline index_t key_code_bytes(int bits, index_t Dk, index_t slots) noexcept {
  return (Dk + 3) / 4 * (slots / lanes_per_unit(bits)) * kCodeUnitBytes;
}
inline CodeSpot key_code_spot(int bits, index_t slots, index_t c, index_t t) noexcept {
  const index_t per_unit = lanes_per_unit(bits), j = t % per_unit;
  const index_t unit = (c / 4) * (slots / per_unit) + t / per_unit;
  return {static_cast<std::size_t>(unit * kCodeUnitBytes + (j % 16) * 4 + c % 4), static_cast<int>((j / 16) * bits)};
}

// Values: bytes of one token quad, and of n tokens.
inline index_t value_quad_bytes(int bits, index_t Dv) noexcept {
  return (Dv + lanes_per_unit(bits) - 1) / lanes_per_unit(bits) * kCodeUnitBytes;
}
inline index_t value_code_bytes(int bits, index_t Dv, index_t n) noexcept { return (n + 3) / 4 * value_quad_bytes(bits, Dv); }
inline CodeSpot value_code_spot(int bits, index_t Dv, index_t t, index_t c) noexcept {
  const index_t per_unit = lanes_per_unit(bits), j = c % per_unit;
  const index_t at = (t / 4) * value_quad_bytes(bits, Dv) + (c / per_unit) * kCodeUnitBytes;
  return {static_cast<std::size_t>(at + (j % 16) * 4 + t % 4), static_cast<int>((j / 16) * bits)};
}

inline int read_code(const std::uint8_t* base, CodeSpot s, int bits) noexcept {
  return (base[s.byte] >> s.shift) & ((1 << bits) - 1);
}
inline void write_code(std::uint8_t* base, CodeSpot s, int bits, int code) noexcept {
  const int mask = ((1 << bits) - 1) << s.shift;
  base[s.byte] = static_cast<std::uint8_t>((base[s.byte] & ~mask) | ((code << s.shift) & mask));
}

}  // namespace seqmix::detail
