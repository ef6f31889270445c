// Review of the dense prefill's tile changes (flash.hpp, merge.hpp: fp32 key rows transposed in
// place, per-row tile maxima 16 rows at a time, the masks-only logit rule skipped for rows that
// see a whole tile, the last tile's P V writing o directly) at the shapes the attention table
// does not reach: head sizes that are not whole vectors (8, 24, 33, 40, 72) beside ones that are,
// query and key counts around the 64-key tile and the 12-row register blocks, 3 query heads per
// KV head, sink tokens that cover whole tiles, query positions before every key (rows that see
// nothing), and o views the direct write must refuse (features strided) or serve (rows one float
// off alignment, a gap between heads). Every form against reference::attention; attention_flash
// also bit for bit equal on 1, 2, 3 and 7 threads (each task's rows do not depend on the executor).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

// How the operator's o is laid out in its storage.
enum class OLayout {
  contiguous,
  misaligned,       // contiguous, starting one float past the storage's (aligned) start
  head_gap,         // every head's row followed by Dv unused floats
  feature_stride2,  // features two floats apart: o's rows are not whole vectors
};

struct Case {
  index_t B, Tq, Tk, Hq, Hkv, Dk, Dv;
  bool causal;
  index_t window, sink_tokens;
  bool sink_logits;
  bool early_positions;  // positions i - 5: the first causal rows see no key
  OLayout layout;

  std::string describe() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " Hq=" << Hq << " Hkv=" << Hkv << " Dk=" << Dk << " Dv=" << Dv
      << " causal=" << causal << " window=" << window << " sink_tokens=" << sink_tokens << " sink_logits=" << sink_logits
      << " early_positions=" << early_positions << " layout=" << static_cast<int>(layout)
      << " simd=" << seqmix::simd::arch_name();
    return s.str();
  }
};

const OLayout kC = OLayout::contiguous, kMis = OLayout::misaligned, kGap = OLayout::head_gap,
              kStr = OLayout::feature_stride2;

// Tq / Tk around the 64-key tile (1, 5, 63, 64, 65, 130), rows per task around the register
// blocks (G 1, 3, 4), head sizes below, at and between whole vectors of 4, 8 and 16 floats.
const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      // B  Tq   Tk  Hq Hkv  Dk  Dv causal win sinks sinklog early layout
      {1, 65, 65, 3, 1, 8, 8, true, 0, 0, false, false, kC},
      {2, 63, 130, 6, 2, 24, 40, true, 0, 0, false, false, kMis},
      {1, 130, 130, 4, 4, 33, 17, true, 0, 0, true, false, kC},
      {1, 64, 64, 3, 1, 64, 48, true, 0, 0, false, false, kGap},
      {1, 130, 200, 4, 1, 72, 72, true, 0, 0, false, false, kStr},
      {1, 130, 130, 8, 2, 16, 80, false, 0, 0, true, false, kMis},
      {2, 5, 67, 3, 1, 128, 128, false, 0, 0, false, false, kC},
      {1, 1, 1, 3, 3, 40, 24, true, 0, 0, false, false, kMis},
      // Sinks that cover the first tile whole (and part of the second), a window narrower than it.
      {1, 300, 300, 4, 2, 64, 64, true, 50, 70, false, false, kC},
      {1, 200, 300, 3, 1, 48, 32, true, 64, 64, true, false, kGap},
      {1, 130, 330, 4, 4, 32, 64, false, 40, 128, false, false, kMis},
      // Rows at positions below 0 see no key: zeros and lse -inf, the direct write included.
      {2, 130, 130, 4, 1, 64, 64, true, 0, 0, false, true, kC},
      {1, 70, 70, 3, 1, 24, 48, true, 20, 3, true, true, kStr},
  };
  return table;
}

struct Inputs {
  Tensor<float, 4> q, k, v;
  Tensor<float, 1> sinks;
  Tensor<std::int32_t, 2> positions;
  seqmix::AttentionInputs<float> in;
  Inputs(const Case& c, std::uint64_t seed)
      : q(st::random_tensor<4>({c.B, c.Tq, c.Hq, c.Dk}, seed + 1)),
        k(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.Dk}, seed + 2)),
        v(st::random_tensor<4>({c.B, c.Tk, c.Hkv, c.Dv}, seed + 3)),
        sinks(st::random_tensor<1>({c.Hq}, seed + 4, -1.f, 2.f)),
        positions({c.B, c.Tq}) {
    in.q = q.view(), in.k = k.view(), in.v = v.view();
    if (c.sink_logits) in.sink_logits = sinks.view();
    if (c.early_positions) {
      for (index_t b = 0; b < c.B; ++b)
        for (index_t i = 0; i < c.Tq; ++i) positions(b, i) = static_cast<std::int32_t>(i - 5 + b);
      in.positions = positions.view();
    }
  }
};

// o (in its layout) and lse of one call, NaN-filled so that an element left unwritten shows.
struct Outputs {
  std::vector<float> storage;
  TensorView<float, 4> o;
  Tensor<float, 3> lse;
  Outputs(const Case& c, OLayout layout) : lse({c.B, c.Tq, c.Hq}) {
    const index_t head = layout == OLayout::contiguous || layout == OLayout::misaligned ? c.Dv : 2 * c.Dv;
    storage.assign(static_cast<std::size_t>(c.B * c.Tq * c.Hq * head + 16), std::numeric_limits<float>::quiet_NaN());
    float* base = storage.data() + (layout == OLayout::misaligned ? 1 : 0);
    const index_t feature = layout == OLayout::feature_stride2 ? 2 : 1;
    o = TensorView<float, 4>(base, {c.B, c.Tq, c.Hq, c.Dv}, {c.Tq * c.Hq * head, c.Hq * head, head, feature});
    lse.fill(std::numeric_limits<float>::quiet_NaN());
  }
  seqmix::AttentionOutputs outputs() { return {o, lse.view()}; }
};

seqmix::AttentionOptions options_of(const Case& c) {
  seqmix::AttentionOptions o;
  o.causal = c.causal, o.window = c.window, o.sink_tokens = c.sink_tokens;
  return o;
}

// The max-abs rule of the other attention tests. A wrong mask or a row scaled by another row's
// factor moves o by the size of the values (~0.1 and more), far above it.
constexpr double kTol = 1e-4;

void require_matches(const char* form, const Outputs& got, const Outputs& ref) {
  const auto co = st::compare(got.o.as_const(), ref.o.as_const(), kTol);
  INFO(form << " o: " << co.describe());
  REQUIRE(co.ok);
  // lse is -inf for a row without a visible key: compared exactly there, by tolerance elsewhere.
  for (index_t i = 0; i < ref.lse.numel(); ++i) {
    const float r = ref.lse.data()[i], g = got.lse.data()[i];
    INFO(form << " lse at flat index " << i << ": " << g << " against " << r);
    if (std::isinf(r))
      REQUIRE(g == r);
    else
      REQUIRE(std::abs(static_cast<double>(g) - r) <= kTol * std::max(1.0, std::abs(static_cast<double>(r))));
  }
}

bool same_bits(const Outputs& a, const Outputs& b) {
  return a.storage.size() == b.storage.size() &&
         std::memcmp(a.storage.data(), b.storage.data(), a.storage.size() * sizeof(float)) == 0 &&
         std::memcmp(a.lse.data(), b.lse.data(), static_cast<std::size_t>(a.lse.numel()) * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("review7 dense prefill matches the reference at ragged head sizes, sink tiles, unseeing rows and o layouts",
          "[attention][review7]") {
  seqmix::ThreadPool pool2(2), pool3(3), pool7(7);
  std::uint64_t seed = 7000;
  for (const Case& c : cases()) {
    seed += 10;
    INFO(c.describe() << " seed=" << seed);
    const Inputs data(c, seed);
    const auto options = options_of(c);
    Outputs ref(c, OLayout::contiguous);
    seqmix::reference::attention(data.in, ref.outputs(), options);

    Outputs serial(c, c.layout);
    seqmix::attention_flash(data.in, serial.outputs(), options);
    require_matches("attention_flash serial", serial, ref);
    for (const seqmix::Executor* executor : {static_cast<const seqmix::Executor*>(&pool2), static_cast<const seqmix::Executor*>(&pool3),
                                             static_cast<const seqmix::Executor*>(&pool7)}) {
      Outputs threaded(c, c.layout);
      seqmix::attention_flash(data.in, threaded.outputs(), options, *executor);
      INFO("threads=" << executor->concurrency());
      REQUIRE(same_bits(threaded, serial));
    }
    Outputs entry(c, c.layout);
    seqmix::attention(data.in, entry.outputs(), options, pool3);  // the split-KV decode for Tq <= 4
    require_matches("attention pool 3", entry, ref);
  }
}

TEST_CASE("review7 packed prefill with one-token and tile-edge sequences matches the reference", "[attention][review7]") {
  // Sequences of 1, 64, 65, 1, 3 and 130 tokens: tasks of one row, a whole tile, one past it.
  const std::vector<std::int64_t> cu = {0, 1, 65, 130, 131, 134, 264};
  const index_t T = cu.back();
  struct Packed {
    index_t Hq, Hkv, Dk, Dv, window, sinks;
    OLayout layout;
  };
  const std::vector<Packed> shapes = {{3, 1, 40, 24, 0, 0, kMis}, {4, 2, 64, 64, 30, 66, kC}, {6, 2, 17, 33, 0, 0, kStr}};
  seqmix::ThreadPool pool(3);
  std::uint64_t seed = 7500;
  for (const Packed& s : shapes) {
    seed += 10;
    const Case c{1, T, T, s.Hq, s.Hkv, s.Dk, s.Dv, true, s.window, s.sinks, false, false, s.layout};
    INFO(c.describe() << " packed seed=" << seed);
    Inputs data(c, seed);
    data.in.batch.cu_seqlens = cu;
    const auto options = options_of(c);
    Outputs ref(c, OLayout::contiguous), serial(c, c.layout), threaded(c, c.layout);
    seqmix::reference::attention(data.in, ref.outputs(), options);
    seqmix::attention(data.in, serial.outputs(), options);
    require_matches("attention packed serial", serial, ref);
    seqmix::attention(data.in, threaded.outputs(), options, pool);
    REQUIRE(same_bits(threaded, serial));
  }
}

namespace {

// o or lse equal where both are NaN or both the same infinity, within kTol elsewhere: a non-finite
// key, value or query must reach exactly the rows the reference reaches.
template <std::size_t R>
void require_same_nonfinite(const char* what, const Tensor<float, R>& got, const Tensor<float, R>& ref) {
  index_t first = -1;  // the first element that differs
  for (index_t i = 0; i < ref.numel() && first < 0; ++i) {
    const float g = got.data()[i], r = ref.data()[i];
    const bool same = (std::isnan(g) && std::isnan(r)) || g == r ||
                      (std::isfinite(g) && std::isfinite(r) && std::abs(static_cast<double>(g) - r) <= kTol);
    if (!same) first = i;
  }
  INFO(what << " differs first at flat index " << first << ": "
            << (first < 0 ? 0.f : got.data()[first]) << " against " << (first < 0 ? 0.f : ref.data()[first]));
  REQUIRE(first < 0);
}

}  // namespace

TEST_CASE("review7 dense prefill spreads a non-finite key, value or query at tile edges as the reference does",
          "[attention][review7]") {
  // Causal alone (a masks-only rule: rows below the diagonal skip it) and with a window and sinks;
  // the bad element at the first, a 16-row block's and a tile's edges, and the last key.
  const index_t B = 1, T = 130, Hq = 4, Hkv = 1, D = 64;
  enum Where { key, value, query };
  for (const index_t window : {index_t{0}, index_t{40}})
    for (const index_t at : {0, 15, 16, 63, 64, 129})
      for (const Where where : {key, value, query})
        for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
          INFO("window=" << window << " at=" << at << " where=" << where << " value=" << bad);
          Tensor<float, 4> q = st::random_tensor<4>({B, T, Hq, D}, 7801), k = st::random_tensor<4>({B, T, Hkv, D}, 7802),
                           v = st::random_tensor<4>({B, T, Hkv, D}, 7803);
          if (where == query) q(0, at, 1, 7) = bad;
          else (where == key ? k : v)(0, at, 0, 7) = bad;
          seqmix::AttentionInputs<float> in;
          in.q = q.view(), in.k = k.view(), in.v = v.view();
          seqmix::AttentionOptions options;
          options.causal = true, options.window = window, options.sink_tokens = window > 0 ? 16 : 0;
          Tensor<float, 4> o_ref({B, T, Hq, D}), o({B, T, Hq, D});
          Tensor<float, 3> lse_ref({B, T, Hq}), lse({B, T, Hq});
          seqmix::reference::attention(in, {o_ref.view(), lse_ref.view()}, options);
          seqmix::attention_flash(in, {o.view(), lse.view()}, options);
          require_same_nonfinite("o", o, o_ref);
          require_same_nonfinite("lse", lse, lse_ref);
        }
}
