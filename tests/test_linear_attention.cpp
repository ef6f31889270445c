// linear_attention: feature maps, normalize and JRT prefix, fast forms against the reference
// over a shape table; split runs with steps; chunk sizes; bad arguments.
#include <catch2/catch.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "seqmix/linear_attention/linear_attention/chunked.hpp"
#include "seqmix/linear_attention/linear_attention/reference.hpp"
#include "seqmix/linear_attention/linear_attention/step.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::FeatureMap;
using seqmix::index_t;
using seqmix::LinearAttentionAlgorithm;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct LaCase {
  index_t B, T, H, HV, K, V;
  FeatureMap phi;
  bool normalize;
  index_t prefix_len;
};

std::string describe(const LaCase& c, std::uint64_t seed) {
  static const char* maps[] = {"identity", "elu1", "relu", "taylor2"};
  std::ostringstream s;
  s << "B=" << c.B << " T=" << c.T << " H=" << c.H << " HV=" << c.HV << " K=" << c.K << " V=" << c.V
    << " phi=" << maps[static_cast<int>(c.phi)] << " normalize=" << c.normalize << " prefix=" << c.prefix_len
    << " seed=" << seed;
  return s.str();
}

struct LaData {
  Tensor<float, 4> q, k, v, s0;
  Tensor<float, 3> z0;
  LaData(const LaCase& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.T, c.H, c.K}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.T, c.HV, c.V}, seed + 3)),
        s0(st::random_tensor<4>({c.B, c.HV, seqmix::feature_dim(c.phi, c.K), c.V}, seed + 4)),
        z0(st::random_tensor<3>({c.B, c.HV, seqmix::feature_dim(c.phi, c.K)}, seed + 5, 0.5f, 2.f)) {}
  seqmix::LinearAttentionInputs inputs(const LaCase& c) const {
    seqmix::LinearAttentionInputs in;
    in.q = q.view(), in.k = k.view(), in.v = v.view(), in.initial_state = s0.view();
    if (c.normalize) in.initial_normalizer = z0.view();
    return in;
  }
};

struct LaResult {
  Tensor<float, 4> o, state;
  Tensor<float, 3> z;
  explicit LaResult(const LaCase& c)
      : o({c.B, c.T, c.HV, c.V}), state({c.B, c.HV, seqmix::feature_dim(c.phi, c.K), c.V}),
        z({c.B, c.HV, seqmix::feature_dim(c.phi, c.K)}) {}
  seqmix::LinearAttentionOutputs outputs(const LaCase& c) {
    return {o.view(), state.view(), c.normalize ? z.view() : seqmix::TensorView<float, 3>()};
  }
};

seqmix::LinearAttentionOptions options_for(const LaCase& c) {
  seqmix::LinearAttentionOptions options;
  options.feature_map = c.phi;
  options.normalize = c.normalize;
  options.prefix_len = c.prefix_len;
  return options;
}

template <std::size_t R>
void require_close(const Tensor<float, R>& out, const Tensor<float, R>& ref, double tol, const std::string& what) {
  st::require_close(what.c_str(), out.view(), ref.view(), tol);
}

std::vector<LaCase> la_table() {
  std::vector<LaCase> cases = {
      {1, 1, 1, 1, 16, 16, FeatureMap::identity, false, 0},
      {3, 17, 4, 4, 16, 64, FeatureMap::identity, false, 0},
      {1, 64, 1, 1, 64, 80, FeatureMap::relu, false, 0},
      {3, 65, 4, 8, 80, 16, FeatureMap::elu1, true, 0},
      {1, 300, 4, 4, 128, 64, FeatureMap::identity, false, 0},
      {1, 300, 1, 1, 16, 128, FeatureMap::taylor2, true, 0},
      {3, 65, 1, 1, 16, 16, FeatureMap::taylor2, false, 0},
      {1, 2048, 1, 1, 64, 64, FeatureMap::elu1, true, 0},
      {1, 2048, 2, 2, 128, 128, FeatureMap::identity, false, 0},
      {3, 300, 4, 4, 64, 16, FeatureMap::elu1, true, 100},
      {1, 65, 1, 1, 16, 80, FeatureMap::relu, false, 65},
      {1, 17, 4, 4, 16, 16, FeatureMap::taylor2, true, 3},
      // Padded recurrent state rows (state_row_stride): V + 1 = 512 -> 528 floats; 1024 -> 1040
      // with a JRT prefix.
      {2, 37, 1, 1, 8, 511, FeatureMap::elu1, true, 0},
      {1, 40, 1, 1, 8, 1024, FeatureMap::identity, false, 13},
  };
  if (st::small_test_scale()) cases.erase(cases.begin() + 8);
  return cases;
}

}  // namespace

TEST_CASE("linear_attention: fast forms match the reference over the shape table", "[linear_attention]") {
  std::uint64_t seed = 300;
  for (const LaCase& c : la_table()) {
    seed += 10;
    const LaData data(c, seed);
    seqmix::LinearAttentionOptions options = options_for(c);
    LaResult ref(c);
    seqmix::reference::linear_attention(data.inputs(c), ref.outputs(c), options);
    for (auto algorithm : {LinearAttentionAlgorithm::automatic, LinearAttentionAlgorithm::chunked,
                           LinearAttentionAlgorithm::recurrent}) {
      options.algorithm = algorithm;
      LaResult fast(c);
      seqmix::linear_attention(data.inputs(c), fast.outputs(c), options);
      const std::string what = describe(c, seed) + " algorithm=" + std::to_string(static_cast<int>(algorithm));
      require_close(fast.o, ref.o, 2e-4, what + " o");
      require_close(fast.state, ref.state, 2e-4, what + " final_state");
      if (c.normalize) require_close(fast.z, ref.z, 2e-4, what + " final_normalizer");
    }
  }
}

// The prefills keep memory per thread across calls (diagonal_decay/driver.hpp: the recurrent
// form's states and token operands, RecurrentPrefillScratch; the chunked form's workspace and group
// states, ChunkedPrefillScratch): calls with and without the normalizer (V + 1 columns, another
// row stride and chunk matrices), with and without a JRT prefix (one head at a time), growing and
// shrinking, one thread and two, then the same after linear_attention_release_thread_scratch;
// each against the reference.
TEST_CASE("linear_attention: calls after the prefills' kept memory changes shape", "[linear_attention]") {
  const LaCase cases[] = {{1, 90, 2, 2, 33, 511, FeatureMap::elu1, true, 0},
                          {2, 19, 2, 4, 9, 17, FeatureMap::identity, false, 0},
                          {1, 70, 1, 1, 16, 1024, FeatureMap::relu, true, 0},
                          {1, 81, 2, 2, 24, 40, FeatureMap::elu1, true, 13},
                          {3, 21, 3, 3, 64, 64, FeatureMap::identity, false, 0},
                          {2, 75, 1, 2, 8, 100, FeatureMap::identity, false, 70}};
  seqmix::ThreadPool pool(2);
  for (int round = 0; round < 2; ++round) {
    for (const LinearAttentionAlgorithm algorithm :
         {LinearAttentionAlgorithm::recurrent, LinearAttentionAlgorithm::chunked}) {
      for (const LaCase& c : cases)
        for (const bool two_threads : {false, true}) {
          const LaData data(c, 90);
          seqmix::LinearAttentionOptions options = options_for(c);
          LaResult ref(c), fast(c);
          seqmix::reference::linear_attention(data.inputs(c), ref.outputs(c), options);
          options.algorithm = algorithm;
          if (two_threads)
            seqmix::linear_attention(data.inputs(c), fast.outputs(c), options, pool);
          else
            seqmix::linear_attention(data.inputs(c), fast.outputs(c), options);
          const std::string what = describe(c, 90) + (two_threads ? " two threads" : " one thread") +
                                   (algorithm == LinearAttentionAlgorithm::chunked ? " chunked" : " recurrent") +
                                   " round " + std::to_string(round);
          require_close(fast.o, ref.o, 2e-4, what + " o");
          require_close(fast.state, ref.state, 2e-4, what + " final_state");
          if (c.normalize) require_close(fast.z, ref.z, 2e-4, what + " final_normalizer");
        }
    }
    seqmix::linear_attention_release_thread_scratch();
  }
}

TEST_CASE("linear_attention: chunk sizes and threads agree", "[linear_attention]") {
  const LaCase c{2, 200, 2, 2, 32, 48, FeatureMap::elu1, true, 0};
  const LaData data(c, 5);
  LaResult ref(c);
  seqmix::reference::linear_attention(data.inputs(c), ref.outputs(c), options_for(c));
  seqmix::ThreadPool pool(2);
  for (index_t chunk : {1, 7, 64, 200, 256}) {
    seqmix::LinearAttentionOptions options = options_for(c);
    options.chunk_size = chunk;
    options.algorithm = LinearAttentionAlgorithm::chunked;
    LaResult fast(c);
    seqmix::linear_attention(data.inputs(c), fast.outputs(c), options, pool);
    require_close(fast.o, ref.o, 1e-4, describe(c, 5) + " chunk=" + std::to_string(chunk));
  }
}

TEST_CASE("linear_attention: normalized recurrent prefill on padded state rows, split over two threads",
          "[linear_attention]") {
  // One head of V = 1024 on two threads: two value blocks of 512 columns, each with its own z
  // column (513 wide: rows state_row_stride(513) = 528 floats apart).
  const LaCase c{1, 40, 1, 1, 8, 1024, FeatureMap::elu1, true, 0};
  const LaData data(c, 77);
  seqmix::LinearAttentionOptions options = options_for(c);
  LaResult ref(c);
  seqmix::reference::linear_attention(data.inputs(c), ref.outputs(c), options);
  seqmix::ThreadPool pool(2);
  options.algorithm = LinearAttentionAlgorithm::recurrent;
  LaResult fast(c);
  seqmix::linear_attention(data.inputs(c), fast.outputs(c), options, pool);
  require_close(fast.o, ref.o, 2e-4, describe(c, 77) + " o");
  require_close(fast.state, ref.state, 2e-4, describe(c, 77) + " final_state");
  require_close(fast.z, ref.z, 2e-4, describe(c, 77) + " final_normalizer");
}

TEST_CASE("linear_attention: one call equals prefill + prefill + steps", "[linear_attention]") {
  for (FeatureMap phi : {FeatureMap::identity, FeatureMap::elu1, FeatureMap::taylor2}) {
    const LaCase c{2, 90, 1, 2, 16, 24, phi, phi != FeatureMap::identity, 0};
    const LaData data(c, 41);
    const seqmix::LinearAttentionOptions options = options_for(c);
    LaResult full(c);
    seqmix::linear_attention(data.inputs(c), full.outputs(c), options);
    LaResult split(c);
    seqmix::copy(data.s0.cview(), split.state.view());
    seqmix::copy(data.z0.cview(), split.z.view());
    auto piece = [&](index_t t0, index_t n) {
      seqmix::LinearAttentionInputs in = data.inputs(c);
      in.q = in.q.slice(1, t0, n), in.k = in.k.slice(1, t0, n), in.v = in.v.slice(1, t0, n);
      in.initial_state = split.state.cview();
      if (c.normalize) in.initial_normalizer = split.z.cview();
      seqmix::LinearAttentionOutputs out = split.outputs(c);
      out.o = out.o.slice(1, t0, n);
      seqmix::linear_attention(in, out, options);
    };
    piece(0, 64);
    piece(64, 17);
    for (index_t t = 81; t < c.T; ++t) {
      const seqmix::LinearAttentionStepInputs in{data.q.view().select(1, t), data.k.view().select(1, t),
                                                 data.v.view().select(1, t)};
      seqmix::linear_attention_step(
          in, {split.o.view().select(1, t), split.state.view(), c.normalize ? split.z.view() : seqmix::TensorView<float, 3>()},
          options);
    }
    require_close(split.o, full.o, 1e-5, describe(c, 41) + " o");
    require_close(split.state, full.state, 1e-5, describe(c, 41) + " state");
  }
}

// The step's row walk from 256 columns (recurrent_rows, diagonal_decay/recurrent.hpp) without
// decay, with and without the normalizer (its z column takes the one-column path): rows 4 and
// 8 KiB apart, scalar tails, a remainder row (K odd), B = 2, grouped heads. A prefill of 11
// tokens then 6 steps against one reference call.
TEST_CASE("linear_attention: decode steps on wide states match the reference", "[linear_attention]") {
  for (const index_t V : {256, 1023, 1024, 1040, 2048})
    for (const bool normalize : {false, true}) {
      const LaCase c{2, 17, 1, 2, 9, V, normalize ? FeatureMap::elu1 : FeatureMap::identity, normalize, 0};
      const LaData data(c, 79);
      const seqmix::LinearAttentionOptions options = options_for(c);
      LaResult ref(c), fast(c);
      seqmix::reference::linear_attention(data.inputs(c), ref.outputs(c), options);
      constexpr index_t kPrefill = 11;
      seqmix::LinearAttentionInputs head = data.inputs(c);
      head.q = head.q.slice(1, 0, kPrefill), head.k = head.k.slice(1, 0, kPrefill), head.v = head.v.slice(1, 0, kPrefill);
      seqmix::LinearAttentionOutputs out = fast.outputs(c);
      out.o = out.o.slice(1, 0, kPrefill);
      seqmix::linear_attention(head, out, options);
      for (index_t t = kPrefill; t < c.T; ++t) {
        const seqmix::LinearAttentionStepInputs in{data.q.view().select(1, t), data.k.view().select(1, t),
                                                   data.v.view().select(1, t)};
        seqmix::linear_attention_step(
            in, {fast.o.view().select(1, t), fast.state.view(), normalize ? fast.z.view() : seqmix::TensorView<float, 3>()},
            options);
      }
      require_close(fast.o, ref.o, 2e-4, describe(c, 79) + " o");
      require_close(fast.state, ref.state, 2e-4, describe(c, 79) + " state");
      if (normalize) require_close(fast.z, ref.z, 2e-4, describe(c, 79) + " normalizer");
    }
}

TEST_CASE("linear_attention: bad arguments are rejected", "[linear_attention]") {
  const LaCase c{1, 10, 2, 2, 8, 8, FeatureMap::taylor2, false, 0};
  const LaData data(c, 1);
  LaResult out(c);
  Tensor<float, 4> small_state({1, 2, 8, 8});
  seqmix::LinearAttentionOptions options = options_for(c);
  seqmix::LinearAttentionOutputs outputs = out.outputs(c);
  outputs.final_state = small_state.view();
  CHECK_THROWS_WITH(seqmix::linear_attention(data.inputs(c), outputs, options),
                    Catch::Contains("'final_state' must have shape [S,HV,Kf,V] = [1, 2, 73, 8]"));
  options.prefix_len = 11;
  CHECK_THROWS_WITH(seqmix::linear_attention(data.inputs(c), out.outputs(c), options), Catch::Contains("prefix_len"));
  options.prefix_len = 0;
  LaResult out_n(c);
  CHECK_THROWS_WITH(seqmix::linear_attention(data.inputs(c), {out_n.o.view(), {}, out_n.z.view()}, options),
                    Catch::Contains("only used with options.normalize"));
}
