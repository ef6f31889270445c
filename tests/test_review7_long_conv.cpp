// Review of long_conv direct's vector epilogue (direct.hpp long_conv_store_step: skip and bias
// expanded per channel tile, u read from the copied window, whole-vector stores only where y's
// channels are contiguous and the tile is full) at the views test_long_conv does not pass: y
// with its channels two floats apart or its rows padded, u with strided channels, skip and bias
// as strided views, channel counts that leave a ragged last tile, several batch rows handed to one
// task (the tile's skip and bias are kept across its batch rows), a causal state and a backward
// filter. Against reference::long_conv, serial and on a pool of 3 threads.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/core/parallel.hpp"
#include "seqmix/lti.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

enum class YLayout { contiguous, channel_stride2, row_padded };

struct Case {
  index_t B, T, D, L, Lb, G;
  bool skip, bias, state;
  YLayout layout;
  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " D=" << D << " L=" << L << " Lb=" << Lb << " G=" << G << " skip=" << skip
      << " bias=" << bias << " state=" << state << " layout=" << static_cast<int>(layout);
    return s.str();
  }
};

// D around the channel tile (4 vectors: 64 floats with AVX-512, 16 with SSE2): 70, 5, 129, 64.
const std::vector<Case> kCases = {
    {3, 130, 70, 5, 0, 70, true, true, true, YLayout::channel_stride2},
    {2, 67, 5, 3, 2, 5, true, false, false, YLayout::row_padded},
    {2, 100, 129, 9, 0, 1, false, true, true, YLayout::channel_stride2},
    {4, 65, 64, 16, 4, 16, true, true, false, YLayout::row_padded},
    {1, 7, 70, 12, 0, 70, true, true, true, YLayout::contiguous},
};

// A view of `shape` whose last dimension is `step` floats apart, over owned storage filled from seed.
template <std::size_t R>
struct Strided {
  std::vector<float> storage;
  TensorView<float, R> view;
};

Strided<3> strided_u(index_t B, index_t T, index_t D, std::uint64_t seed) {
  const Tensor<float, 3> dense = st::random_tensor<3>({B, T, 3 * D}, seed);
  Strided<3> s{std::vector<float>(dense.data(), dense.data() + dense.numel()), {}};
  s.view = TensorView<float, 3>(s.storage.data(), {B, T, D}, {T * 3 * D, 3 * D, 3});
  return s;
}

Strided<1> strided_channels(index_t D, std::uint64_t seed) {
  const Tensor<float, 1> dense = st::random_tensor<1>({2 * D}, seed);
  Strided<1> s{std::vector<float>(dense.data(), dense.data() + dense.numel()), {}};
  s.view = TensorView<float, 1>(s.storage.data(), {D}, {2});
  return s;
}

Strided<3> output_y(const Case& c) {
  const index_t row = c.layout == YLayout::contiguous ? c.D : c.layout == YLayout::channel_stride2 ? 2 * c.D : c.D + 3;
  Strided<3> s{std::vector<float>(static_cast<std::size_t>(c.B * c.T * row), std::numeric_limits<float>::quiet_NaN()), {}};
  s.view = TensorView<float, 3>(s.storage.data(), {c.B, c.T, c.D},
                                {c.T * row, row, c.layout == YLayout::channel_stride2 ? 2 : 1});
  return s;
}

}  // namespace

TEST_CASE("review7 long_conv direct matches the reference with strided y, u, skip and bias and ragged channel tiles",
          "[long_conv][review7]") {
  seqmix::ThreadPool pool(3);
  std::uint64_t seed = 9500;
  for (const Case& c : kCases) {
    seed += 10;
    INFO(c.describe() << " seed=" << seed);
    const Strided<3> u = strided_u(c.B, c.T, c.D, seed + 1);
    const Tensor<float, 2> h = st::random_tensor<2>({c.L, c.G}, seed + 2);
    const Tensor<float, 2> hb = st::random_tensor<2>({std::max<index_t>(c.Lb, 1), c.G}, seed + 3);
    const Strided<1> skip = strided_channels(c.D, seed + 4), bias = strided_channels(c.D, seed + 5);
    const Tensor<float, 3> state = st::random_tensor<3>({c.B, c.L - 1, c.D}, seed + 6);
    seqmix::LongConvInputs in;
    in.u = u.view, in.filter = h.view();
    if (c.Lb > 0) in.filter_backward = hb.view();
    if (c.skip) in.skip = skip.view;
    if (c.bias) in.bias = bias.view;
    if (c.state) in.initial_state = state.view();
    seqmix::LongConvOptions options;
    options.direction = c.Lb > 0 ? seqmix::LongConvDirection::bidirectional : seqmix::LongConvDirection::causal;
    options.method = seqmix::LongConvMethod::direct;

    Tensor<float, 3> ref({c.B, c.T, c.D});
    seqmix::reference::long_conv(in, {ref.view()}, options);
    for (const seqmix::Executor* executor : {&seqmix::serial_executor(), static_cast<const seqmix::Executor*>(&pool)}) {
      INFO("threads=" << executor->concurrency());
      const Strided<3> y = output_y(c);
      seqmix::long_conv(in, {y.view}, options, *executor);
      const auto cmp = st::compare(y.view.as_const(), ref.cview(), 1e-5);  // test_long_conv's direct tolerance
      INFO(cmp.describe());
      REQUIRE(cmp.ok);
    }
  }
}
