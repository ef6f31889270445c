// Helpers shared by the tools/golden_*.cpp conformance-case generators: a float64 array, its
// random fill, its .npy file and the case.json of the runner's format (tests/golden/README.md).
// Only seqmix's .npy writer is used, so the generators stay independent of the operators they check.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/io/npy.hpp"

namespace golden {

using seqmix::index_t;
namespace fs = std::filesystem;

/// The golden folder named by the program's only argument; prints the usage and exits otherwise.
inline fs::path root_argument(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <golden folder>\n", argv[0]);
    std::exit(2);
  }
  return argv[1];
}

/// A row-major float64 array with its shape.
struct Array {
  std::vector<index_t> shape;
  std::vector<double> v;
  double& at(index_t i) { return v[static_cast<std::size_t>(i)]; }
};

/// Uniform values in [lo, hi), rounded to float: the files hold fp32 and the float64 outputs are
/// then exact for the values the operators read.
inline Array random_array(std::vector<index_t> shape, std::mt19937_64& rng, double lo, double hi) {
  Array a{std::move(shape), {}};
  index_t n = 1;
  for (const index_t d : a.shape) n *= d;
  std::uniform_real_distribution<double> u(lo, hi);
  for (index_t i = 0; i < n; ++i) a.v.push_back(static_cast<double>(static_cast<float>(u(rng))));
  return a;
}

/// An array of the given shape filled with zeros.
inline Array zeros(std::vector<index_t> shape) {
  index_t n = 1;
  for (const index_t d : shape) n *= d;
  return {std::move(shape), std::vector<double>(static_cast<std::size_t>(n), 0.0)};
}

/// Writes `a` as fp32 into dir/<name>.npy.
inline void write(const fs::path& dir, const std::string& name, const Array& a) {
  std::vector<float> f(a.v.begin(), a.v.end());
  seqmix::write_npy((dir / (name + ".npy")).string(), a.shape, f.data());
}

/// A double with all 17 significant digits, as case.json parameters need to round-trip.
inline std::string exact(double x) {
  char text[64];
  std::snprintf(text, sizeof text, "%.17g", x);
  return text;
}

/// Creates dir and writes its case.json; params, inputs and outputs are the bodies of their JSON
/// objects (an empty params gives "{ }").
inline void write_case(const fs::path& dir, const std::string& op, const std::string& params,
                       const std::string& inputs, const std::string& outputs, const char* tol, const char* source) {
  fs::create_directories(dir);
  std::ofstream(dir / "case.json") << "{ \"op\": \"" << op << "\",\n  \"params\": { " << params
                                   << (params.empty() ? "" : " ") << "},\n  \"inputs\":  { " << inputs
                                   << " },\n  \"outputs\": { " << outputs << " },\n  \"tol\": " << tol
                                   << ",\n  \"source\": \"" << source << "\" }\n";
}

}  // namespace golden
