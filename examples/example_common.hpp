// Helpers shared by the examples' command lines and needle-in-haystack workloads
// (sparse_attention_zoo.cpp, kv_report.cpp). Part of the examples, not of the library: a
// header beside them, so examples/CMakeLists.txt (one program per .cpp) does not build it.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "seqmix/core/tensor.hpp"

namespace seqmix_examples {

using seqmix::index_t;

// A "--flag [value]" command line: while (args.next()) { if (args.is("--n")) x = args.value(); ...
// else args.unknown(); }. A flag missing its value, or an unknown flag, prints the usage and exits
// with status 2 (--help / -h: status 0).
class Args {
 public:
  Args(int argc, char** argv, void (*usage)()) : argc_(argc), argv_(argv), usage_(usage) {}
  bool next() {
    if (++at_ >= argc_) return false;
    flag_ = argv_[at_];
    return true;
  }
  bool is(const char* name) const { return flag_ == name; }
  long value() {
    if (at_ + 1 >= argc_) {
      usage_();
      std::exit(2);
    }
    return std::atol(argv_[++at_]);
  }
  // The flag's value as text (usage and exit 2 when it is missing).
  std::string text() {
    if (at_ + 1 >= argc_) {
      usage_();
      std::exit(2);
    }
    return argv_[++at_];
  }
  [[noreturn]] void unknown() const {
    usage_();
    std::exit(flag_ == "--help" || flag_ == "-h" ? 0 : 2);
  }

 private:
  int argc_;
  char** argv_;
  void (*usage_)();
  int at_ = 0;
  std::string flag_;
};

// The needle query of both workloads: q[c * q_stride] = gain sqrt(D) k_c / |k|^2 + noise(), so
// that after attention's 1 / sqrt(D) scale the logit of k is gain (plus the noise's share).
template <class Noise>
void aim_at_key(const float* k, index_t k_stride, index_t D, double gain, float* q, index_t q_stride, Noise&& noise) {
  double norm2 = 0.0;
  for (index_t c = 0; c < D; ++c) norm2 += static_cast<double>(k[c * k_stride]) * k[c * k_stride];
  const double g = gain * std::sqrt(static_cast<double>(D)) / norm2;
  for (index_t c = 0; c < D; ++c) q[c * q_stride] = static_cast<float>(g * k[c * k_stride]) + noise();
}

// Whether an output row points at the needle's value: cos(o, v) > threshold, o_at(c) and v_at(c)
// giving the D channels. A zero row points nowhere.
template <class OAt, class VAt>
bool points_at(index_t D, const OAt& o_at, const VAt& v_at, double threshold) {
  double dot = 0.0, on = 0.0, vn = 0.0;
  for (index_t c = 0; c < D; ++c) {
    const double o = o_at(c), v = v_at(c);
    dot += o * v, on += o * o, vn += v * v;
  }
  return on > 0.0 && vn > 0.0 && dot > threshold * std::sqrt(on * vn);
}

}  // namespace seqmix_examples
