// lightning_indexer: the fast form against the reference over a shape table (key counts around
// the 64-key tile, head counts around the 256-row query block), causal or not, strided views.
#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/lightning_indexer/fast.hpp"
#include "seqmix/attention/lightning_indexer/reference.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

struct IndexerCase {
  const char* name;
  index_t B, T, Tk, Hi, Di;
  bool causal, strided;
};

}  // namespace

TEST_CASE("lightning_indexer: fast form matches the reference", "[attention]") {
  const std::vector<IndexerCase> table = {
      {"tiny", 1, 1, 1, 1, 16, false, false},       {"ragged", 2, 17, 65, 4, 32, false, false},
      {"causal", 1, 64, 256, 8, 64, true, false},   {"causal-tq-gt-tk", 1, 70, 64, 4, 32, true, false},
      {"many-heads", 1, 40, 130, 64, 128, true, false}, {"strided", 2, 33, 100, 8, 80, false, true},
  };
  seqmix::ThreadPool pool(2);
  for (const IndexerCase& c : table) {
    const std::uint64_t seed = 500 + static_cast<std::uint64_t>(&c - table.data());
    INFO(c.name << ": B=" << c.B << " T=" << c.T << " Tk=" << c.Tk << " Hi=" << c.Hi << " Di=" << c.Di
                << " causal=" << c.causal << " strided=" << c.strided << " seed=" << seed);
    // Strided: q padded in its feature dimension, k read from every other token of a longer buffer.
    auto q_store = st::random_tensor<4>({c.B, c.T, c.Hi, c.Di + (c.strided ? 5 : 0)}, seed);
    auto k_store = st::random_tensor<3>({c.B, c.Tk * (c.strided ? 2 : 1), c.Di}, seed + 1);
    auto weights = st::random_tensor<3>({c.B, c.T, c.Hi}, seed + 2, 0.f, 1.f);
    seqmix::LightningIndexerInputs in;
    in.q = TensorView<const float, 4>(q_store.data(), {c.B, c.T, c.Hi, c.Di},
                                      {q_store.view().stride(0), q_store.view().stride(1), q_store.view().stride(2), 1});
    in.k = TensorView<const float, 3>(k_store.data(), {c.B, c.Tk, c.Di},
                                      {k_store.view().stride(0), k_store.view().stride(1) * (c.strided ? 2 : 1), 1});
    in.weights = weights.view();
    seqmix::LightningIndexerOptions options;
    options.causal = c.causal;
    Tensor<float, 3> ref({c.B, c.T, c.Tk}), fast({c.B, c.T, c.Tk});
    fast.fill(NAN);
    seqmix::reference::lightning_indexer(in, ref.view(), options);
    seqmix::lightning_indexer(in, fast.view(), options, pool);
    const auto cmp = st::compare(fast.cview(), ref.cview(), 1e-4);
    INFO(cmp.describe());
    CHECK(cmp.ok);
  }
}

TEST_CASE("lightning_indexer: bad arguments are rejected", "[attention]") {
  auto q = st::random_tensor<4>({1, 4, 2, 16}, 1);
  auto k = st::random_tensor<3>({1, 8, 12}, 2);
  auto w = st::random_tensor<3>({1, 4, 2}, 3);
  Tensor<float, 3> scores({1, 4, 8});
  seqmix::LightningIndexerInputs in;
  in.q = q.view(), in.k = k.view(), in.weights = w.view();
  CHECK_THROWS_WITH(seqmix::lightning_indexer(in, scores.view()), Catch::Contains("'k'") && Catch::Contains("[1, 8, 12]"));
}
