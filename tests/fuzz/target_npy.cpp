// Fuzz target: the .npy reader of the conformance vectors (seqmix/io/npy.hpp). Arbitrary bytes,
// or a well-formed header with fuzzed fields followed by fuzzed data, are written to a file and
// read back: the reader either throws NpyError or returns an array whose element count matches
// its shape, which then survives a write / read round trip unchanged.
#include "fuzz.hpp"

#include <cstdio>
#include <fstream>
#include <string>

#include <unistd.h>

#include "seqmix/io/npy.hpp"

namespace seqmix::fuzz {

namespace {

std::string scratch_path(const char* tag) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/seqmix-fuzz-npy-" + std::to_string(getpid()) + tag + ".npy";
}

// A header that is right in form, with fields chosen by the input.
std::string structured(Decoder& in) {
  std::string descr = in.pick<const char*>({"<f4", "<i4", "<f8", ">f4", "<f2", "|u1", "f4", ""});
  std::string shape = "(";
  const int rank = in.byte() % 5;
  for (int d = 0; d < rank; ++d) {
    const std::uint8_t kind = in.byte() % 8;
    if (kind == 0) shape += "-1";
    else if (kind == 1) shape += "99999999999999999999";
    else if (kind == 2) shape += "4611686018427387904";
    else shape += std::to_string(in.byte() % 6);
    shape += in.one_in(4) ? "" : ", ";
  }
  shape += ")";
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + (in.flag() ? "False" : "True") +
                     ", 'shape': " + shape + ", }";
  if (in.one_in(4)) dict.resize(dict.size() - in.byte() % dict.size());
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string file("\x93NUMPY", 6);
  const int major = in.one_in(6) ? in.byte() % 5 : 1;
  file += static_cast<char>(major), file += static_cast<char>(in.one_in(8) ? 1 : 0);
  const std::size_t len = dict.size() + (in.one_in(8) ? in.byte() : 0);
  file += static_cast<char>(len & 0xff), file += static_cast<char>(len >> 8);
  if (major != 1) file += std::string(2, '\0');
  file += dict;
  const std::size_t data = in.byte() * 4u + (in.one_in(4) ? in.byte() % 4 : 0);
  for (std::size_t i = 0; i < data; ++i) file += static_cast<char>(in.byte());
  return file;
}

}  // namespace

int fuzz_npy(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  const bool raw = size > 0 && data[0] % 3 == 0;
  const std::string bytes = raw ? std::string(reinterpret_cast<const char*>(data + 1), size - 1) : structured(in);
  const std::string path = scratch_path("");
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  NpyArray array;
  bool read = false;
  try {
    array = read_npy(path, in.flag() ? NpyF64::narrow_to_f32 : NpyF64::reject);
    read = true;
  } catch (const NpyError& e) {
    require(std::string(e.what()).rfind(path, 0) == 0, std::string("NpyError without the file name: ") + e.what());
  } catch (const std::exception& e) {
    fail(std::string("read_npy threw a non-NpyError exception: ") + e.what());
  }
  std::remove(path.c_str());
  if (!read) return 0;
  const std::size_t stored = array.is_int32() ? array.i32.size() : array.f32.size();
  require(stored == static_cast<std::size_t>(array.numel()), "read_npy: element count differs from the shape");
  // Round trip: what was read is written and read again unchanged.
  const std::string again = scratch_path("-again");
  write_npy(again, array);
  const NpyArray back = read_npy(again);
  std::remove(again.c_str());
  require(back.shape == array.shape, "npy round trip changed the shape");
  require(back.i32 == array.i32, "npy round trip changed int32 data");
  require(back.f32.size() == array.f32.size() &&
              (array.f32.empty() ||  // memcmp must not see the null data of an empty vector
               std::memcmp(back.f32.data(), array.f32.data(), array.f32.size() * sizeof(float)) == 0),
          "npy round trip changed float data");
  return 0;
}

}  // namespace seqmix::fuzz
