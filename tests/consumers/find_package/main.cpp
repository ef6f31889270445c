#include <seqmix/seqmix.hpp>

int main() {
  float d[6] = {};
  seqmix::TensorView<float, 2> v(d, {2, 3});
  return v.size(0) == 2 ? 0 : 1;
}
