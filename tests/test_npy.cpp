// Tests of seqmix/io/npy.hpp: round trips, and one test per malformed file, each checking that
// the NpyError message names the file and the problem.
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "seqmix/core/tensor.hpp"
#include "seqmix/io/npy.hpp"

namespace {

namespace fs = std::filesystem;
using seqmix::index_t;
using seqmix::NpyError;

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("seqmix_npy_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Builds a .npy file by hand: magic, version, little-endian header length, dict + '\n', data.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1, int minor = 0) {
  std::string header = dict + "\n";
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += static_cast<char>(minor);
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  for (std::size_t b = 0; b < len_bytes; ++b) out += static_cast<char>((header.size() >> (8 * b)) & 0xFF);
  return out + header + data;
}

std::string float_bytes(const std::vector<float>& values) {
  std::string out(values.size() * 4, '\0');
  std::memcpy(&out[0], values.data(), out.size());  // the test hosts are little-endian
  return out;
}

}  // namespace

TEST_CASE("npy: float32 round trip keeps shape and values", "[npy]") {
  ScratchDir dir;
  // Odd extents so that nothing lines up with a power of two.
  seqmix::Tensor<float, 4> x({2, 3, 5, 7});
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  for (float& v : x) v = dist(rng);
  const std::string path = dir.file("x.npy");
  seqmix::write_npy(path, x);

  const seqmix::NpyArray back = seqmix::read_npy(path);
  CHECK(back.path == path);
  CHECK(back.dtype == "<f4");
  CHECK(back.shape == std::vector<index_t>{2, 3, 5, 7});
  REQUIRE(back.f32.size() == 210);
  CHECK(back.i32.empty());
  CHECK(std::memcmp(back.f32.data(), x.data(), 210 * sizeof(float)) == 0);

  const auto view = back.view_f32<4>("B,T,H,P", {2, 3, -1, 7});
  CHECK(view.shape() == x.shape());
  CHECK(view(1, 2, 4, 6) == x(1, 2, 4, 6));

  // The header follows numpy: version 1.0, 64-byte aligned preamble, ends in '\n'.
  const std::string raw = read_bytes(path);
  REQUIRE(raw.size() == 128 + 210 * 4);
  CHECK(raw.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) == 0);
  CHECK(raw[127] == '\n');
  CHECK(raw.find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 5, 7), }") == 10);
}

TEST_CASE("npy: a strided view is written in C order of the view", "[npy]") {
  ScratchDir dir;
  seqmix::Tensor<float, 2> m({3, 4});
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 4; ++j) m(i, j) = static_cast<float>(10 * i + j);
  // The transpose [4, 3] as a view with swapped strides.
  const seqmix::TensorView<const float, 2> t(m.data(), {4, 3}, {1, 4});
  const std::string path = dir.file("t.npy");
  seqmix::write_npy(path, t);
  const seqmix::NpyArray back = seqmix::read_npy(path);
  REQUIRE(back.shape == std::vector<index_t>{4, 3});
  for (index_t j = 0; j < 4; ++j)
    for (index_t i = 0; i < 3; ++i) CHECK(back.f32[static_cast<std::size_t>(j * 3 + i)] == m(i, j));
}

TEST_CASE("npy: int32, rank 1 and empty arrays round trip", "[npy]") {
  ScratchDir dir;
  const std::vector<std::int32_t> ints = {-7, 0, 1, 2147483647, -2147483647 - 1};
  const std::string path = dir.file("ints.npy");
  seqmix::write_npy(path, {5}, ints.data());
  CHECK(read_bytes(path).find("'shape': (5,)") != std::string::npos);
  const seqmix::NpyArray back = seqmix::read_npy(path);
  CHECK(back.dtype == "<i4");
  CHECK(back.i32 == ints);
  CHECK(back.view_i32<1>()(3) == 2147483647);

  const std::string empty_path = dir.file("empty.npy");
  seqmix::write_npy(empty_path, std::vector<index_t>{0, 4}, static_cast<const float*>(nullptr));
  const seqmix::NpyArray empty = seqmix::read_npy(empty_path);
  CHECK(empty.shape == std::vector<index_t>{0, 4});
  CHECK(empty.numel() == 0);
  CHECK(empty.view_f32<2>().numel() == 0);
}

TEST_CASE("npy: version 2.0 headers and '<f8' data", "[npy]") {
  ScratchDir dir;
  const std::string v2 = dir.file("v2.npy");
  write_bytes(v2, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
                            float_bytes({1.5f, -2.0f, 3.25f}), 2, 0));
  const seqmix::NpyArray a = seqmix::read_npy(v2);
  CHECK(a.f32 == std::vector<float>{1.5f, -2.0f, 3.25f});

  const double wide[2] = {0.1, -1e10};
  std::string data(16, '\0');
  std::memcpy(&data[0], wide, 16);
  const std::string f8 = dir.file("wide.npy");
  write_bytes(f8, npy_bytes("{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2,)}", data));
  REQUIRE_THROWS_AS(seqmix::read_npy(f8), NpyError);
  REQUIRE_THROWS_WITH(seqmix::read_npy(f8), Catch::Contains("wide.npy") && Catch::Contains("'<f8'"));
  const seqmix::NpyArray narrowed = seqmix::read_npy(f8, seqmix::NpyF64::narrow_to_f32);
  CHECK(narrowed.dtype == "<f8");
  CHECK(narrowed.f32 == std::vector<float>{0.1f, -1e10f});
  CHECK(narrowed.view_f32<1>()(0) == 0.1f);
}

// One table of malformed files: name, bytes, and what the message must say.
TEST_CASE("npy: malformed files give an NpyError naming the file and the problem", "[npy]") {
  ScratchDir dir;
  const std::string good_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string six_floats = float_bytes({1, 2, 3, 4, 5, 6});
  struct Bad {
    const char* file;
    std::string bytes;
    std::vector<const char*> says;
  };
  const std::vector<Bad> table = {
      {"bad_magic.npy", "PK\x03\x04 this is a zip file", {"bad magic"}},
      {"tiny.npy", "\x93NU", {"bad magic", "file size 3 bytes"}},
      {"version.npy", npy_bytes(good_dict, six_floats, 4, 0), {"unsupported .npy format version 4.0"}},
      {"float16.npy",
       npy_bytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", six_floats),
       {"unsupported dtype '<f2'"}},
      {"int64.npy",
       npy_bytes("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", six_floats),
       {"unsupported dtype '<i8'"}},
      {"record.npy",
       npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", six_floats),
       {"unsupported dtype", "structured"}},
      {"bigendian.npy",
       npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", six_floats),
       {"'>f4'", "big-endian"}},
      {"fortran.npy", npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", six_floats), {"Fortran"}},
      {"truncated.npy", npy_bytes(good_dict, six_floats.substr(0, 20)), {"truncated data", "needs 24 bytes", "has 20"}},
      {"trailing.npy", npy_bytes(good_dict, six_floats + "xxxx"), {"needs 24 bytes", "has 28", "trailing"}},
      {"no_shape.npy",
       npy_bytes("{'descr': '<f4', 'fortran_order': False, }", six_floats),
       {"malformed header dict", "missing key 'shape'"}},
      {"garbage_dict.npy",
       npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) oops}", six_floats),
       {"malformed header dict"}},
      {"not_a_dict.npy", npy_bytes("descr=<f4", six_floats), {"malformed header dict"}},
      {"negative.npy",
       npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }", six_floats),
       {"malformed header dict", "non-negative"}},
      {"short_header.npy", std::string("\x93NUMPY\x01\x00\xff\x00{'descr'", 17), {"truncated header"}},
  };
  for (const Bad& bad : table) {
    INFO("file " << bad.file);
    const std::string path = dir.file(bad.file);
    write_bytes(path, bad.bytes);
    std::string message;
    try {
      seqmix::read_npy(path);
    } catch (const NpyError& e) {
      message = e.what();
      CHECK(e.path() == path);
    }
    INFO("message: " << message);
    REQUIRE(!message.empty());
    CHECK(message.find(bad.file) != std::string::npos);
    for (const char* phrase : bad.says) CHECK(message.find(phrase) != std::string::npos);
  }
}

TEST_CASE("npy: a missing file names the file", "[npy]") {
  ScratchDir dir;
  REQUIRE_THROWS_WITH(seqmix::read_npy(dir.file("absent.npy")),
                      Catch::Contains("absent.npy") && Catch::Contains("cannot open"));
}

TEST_CASE("npy: view_f32 rejects a rank, shape or dtype the op does not expect", "[npy]") {
  ScratchDir dir;
  const std::vector<float> six = {1, 2, 3, 4, 5, 6};
  const std::string path = dir.file("x.npy");
  seqmix::write_npy(path, {2, 3}, six.data());
  const seqmix::NpyArray x = seqmix::read_npy(path);

  REQUIRE_THROWS_AS(x.view_f32<4>("B,T,H,P"), NpyError);
  REQUIRE_THROWS_WITH(x.view_f32<4>("B,T,H,P"),
                      Catch::Contains("x.npy") && Catch::Contains("expected rank 4 [B,T,H,P], got shape [2, 3]"));
  REQUIRE_THROWS_WITH(x.view_f32<2>("T,D", {2, 4}),
                      Catch::Contains("x.npy") && Catch::Contains("expected shape [T,D] = [2, 4], got [2, 3]"));
  REQUIRE_THROWS_WITH(x.view_i32<2>(), Catch::Contains("x.npy") && Catch::Contains("expected int32"));
  CHECK(x.view_f32<2>("T,D", {-1, 3})(1, 2) == 6.0f);
}

TEST_CASE("npy: write errors name the file", "[npy]") {
  ScratchDir dir;
  const float one = 1.0f;
  REQUIRE_THROWS_WITH(seqmix::write_npy(dir.file("no_such_folder/x.npy"), {1}, &one),
                      Catch::Contains("no_such_folder/x.npy") && Catch::Contains("cannot open for writing"));
  REQUIRE_THROWS_WITH(seqmix::write_npy(dir.file("null.npy"), {2}, static_cast<const float*>(nullptr)),
                      Catch::Contains("null.npy") && Catch::Contains("null data"));
}
