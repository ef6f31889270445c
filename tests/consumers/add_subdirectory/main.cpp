// The add_subdirectory consumer checks how a vendored seqmix is wired into a build (no tests,
// no -march=native passed on); one core header is enough for that. The installed-package
// consumer (../find_package) includes the whole umbrella, which checks every installed header.
#include <seqmix/core/tensor.hpp>

int main() {
  float d[6] = {};
  seqmix::TensorView<float, 2> v(d, {2, 3});
  return v.size(0) == 2 ? 0 : 1;
}
