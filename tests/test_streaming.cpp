// Streaming segments: every recurrent operator fed in segments equals one call over the whole
// input, bit for bit when the segments are multiples of the chunk size and within tolerance for
// any other segmentation; misuse of a stream is reported.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "seqmix/chunked/streaming.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/random.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

template <class T, std::size_t R>
bool bit_equal(const Tensor<T, R>& a, const Tensor<T, R>& b) {
  return a.numel() == b.numel() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(T)) == 0;
}

// The output struct of one call: o / y, and the final state (LinearAttentionOutputs also has a
// final normalizer, left empty).
template <class Outputs, class O, class S>
Outputs outputs_of(const O& o, const S& s) {
  if constexpr (std::is_same_v<Outputs, seqmix::LinearAttentionOutputs>)
    return {o, s, {}};
  else
    return {o, s};
}

// Runs `in` once, then through run_in_segments for several segment lengths, and compares the
// outputs and the final state. Lengths that are multiples of `chunk` must match exactly.
template <class Inputs, std::size_t OR>
void check_segmentations(const std::string& label, const Inputs& in, const std::array<index_t, OR>& o_shape,
                         const typename seqmix::StreamTraits<Inputs>::Options& options, index_t chunk) {
  using Traits = seqmix::StreamTraits<Inputs>;
  using Outputs = typename Traits::Outputs;
  const auto state_shape = Traits::state_shape(in, options);
  constexpr std::size_t SR = std::tuple_size<decltype(state_shape)>::value;
  const auto& pool = st::two_thread_pool();

  Tensor<float, OR> o_one(o_shape);
  Tensor<float, SR> s_one(state_shape);
  Traits::run(in, outputs_of<Outputs>(o_one.view(), s_one.view()), options, pool);

  const index_t T = Traits::tokens(in);
  for (const index_t segment : {chunk, 2 * chunk, index_t{1}, index_t{37}, T}) {
    Tensor<float, OR> o_seg(o_shape);
    Tensor<float, SR> s_seg(state_shape);
    seqmix::run_in_segments(in, outputs_of<Outputs>(o_seg.view(), s_seg.view()), options, segment, pool);
    INFO(label << " T=" << T << " segment_length=" << segment);
    if (segment % chunk == 0) {
      CHECK(bit_equal(o_seg, o_one));
      CHECK(bit_equal(s_seg, s_one));
    } else {
      st::require_close("o", o_seg.cview(), o_one.cview(), 2e-4);
      st::require_close("final_state", s_seg.cview(), s_one.cview(), 2e-4);
    }
  }
}

constexpr index_t kT = 300;  // not a multiple of any chunk size

Tensor<float, 4> unit_rows(const std::array<index_t, 4>& shape, std::uint64_t seed) {
  Tensor<float, 4> x = st::random_tensor<4>(shape, seed);
  const index_t n = shape[3];
  for (index_t row = 0; row < x.numel() / n; ++row) {
    float* p = x.data() + row * n;
    double sum = 0;
    for (index_t i = 0; i < n; ++i) sum += double(p[i]) * p[i];
    for (index_t i = 0; i < n; ++i) p[i] = static_cast<float>(p[i] / std::sqrt(sum + 1e-6));
  }
  return x;
}

}  // namespace

TEST_CASE("streaming: linear attention and GLA in segments equal one call", "[streaming]") {
  const index_t B = 2, H = 2, HV = 4, K = 16, V = 24;
  const Tensor<float, 4> q = st::random_tensor<4>({B, kT, H, K}, 1), k = st::random_tensor<4>({B, kT, H, K}, 2);
  const Tensor<float, 4> v = st::random_tensor<4>({B, kT, HV, V}, 3);
  const Tensor<float, 4> s0 = st::random_tensor<4>({B, HV, K, V}, 4, -0.5f, 0.5f);

  SECTION("linear_attention elu1, normalized") {
    seqmix::LinearAttentionOptions o;
    o.feature_map = seqmix::FeatureMap::elu1;
    o.normalize = true;
    seqmix::LinearAttentionInputs in{q.cview(), k.cview(), v.cview(), {}, {}};
    check_segmentations("linear_attention", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
  SECTION("GLA channel gate with an initial state") {
    Tensor<float, 4> g({B, kT, H, K});
    st::fill_log_gate(g.view(), 5, -2.f, 0.f);
    seqmix::GatedLinearAttentionInputs in{q.cview(), k.cview(), v.cview(), g.cview(), {}, s0.cview()};
    seqmix::GatedLinearAttentionOptions o;
    check_segmentations("gla", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
  SECTION("simple GLA, chunked algorithm forced") {
    Tensor<float, 3> g({B, kT, HV});
    st::fill_log_gate(g.view(), 6, -1.f, 0.f);
    seqmix::GatedLinearAttentionInputs in{q.cview(), k.cview(), v.cview(), {}, g.cview(), {}};
    seqmix::GatedLinearAttentionOptions o;
    o.gate = seqmix::GateKind::scalar;
    o.algorithm = seqmix::LinearAttentionAlgorithm::chunked;
    o.chunk_size = 32;
    check_segmentations("simple_gla chunked", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
  SECTION("rwkv6") {
    Tensor<float, 4> g({B, kT, H, K});
    st::fill_log_gate(g.view(), 7, -3.f, 0.f);
    const Tensor<float, 2> u = st::random_tensor<2>({H, K}, 8);
    seqmix::Rwkv6Inputs in{q.cview(), k.cview(), v.cview(), g.cview(), u.cview(), s0.cview()};
    seqmix::Rwkv6Options o;
    check_segmentations("rwkv6", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
}

TEST_CASE("streaming: delta-rule family in segments equals one call", "[streaming]") {
  const index_t B = 2, H = 2, HV = 4, K = 16, V = 24;
  const Tensor<float, 4> q = st::random_tensor<4>({B, kT, H, K}, 11), k = unit_rows({B, kT, H, K}, 12);
  const Tensor<float, 4> v = st::random_tensor<4>({B, kT, HV, V}, 13);
  const Tensor<float, 3> beta = st::random_tensor<3>({B, kT, HV}, 14, 0.f, 1.f);
  const Tensor<float, 4> s0 = st::random_tensor<4>({B, HV, K, V}, 15, -0.5f, 0.5f);

  SECTION("delta_rule") {
    seqmix::DeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview(), s0.cview()};
    seqmix::DeltaRuleOptions o;
    check_segmentations("delta_rule", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
  SECTION("gated_delta_rule, scalar gate, chunked algorithm forced") {
    Tensor<float, 3> g({B, kT, HV});
    st::fill_log_gate(g.view(), 16, -1.f, 0.f);
    seqmix::GatedDeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview(), g.cview(), {}, {}};
    seqmix::GatedDeltaRuleOptions o;
    o.algorithm = seqmix::DeltaAlgorithm::chunked;
    check_segmentations("gated_delta_rule chunked", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
  SECTION("KDA (channel gate)") {
    Tensor<float, 4> g({B, kT, HV, K});
    st::fill_log_gate(g.view(), 17, -1.f, 0.f);
    seqmix::GatedDeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview(), {}, g.cview(), s0.cview()};
    seqmix::GatedDeltaRuleOptions o;
    o.gate = seqmix::DeltaGate::channel;
    check_segmentations("kda", in, std::array<index_t, 4>{B, kT, HV, V}, o, o.chunk_size);
  }
  SECTION("rwkv7") {
    const index_t Hr = 2;
    const Tensor<float, 4> r = st::random_tensor<4>({B, kT, Hr, K}, 18), kr = st::random_tensor<4>({B, kT, Hr, K}, 19);
    const Tensor<float, 4> vr = st::random_tensor<4>({B, kT, Hr, V}, 20);
    // RWKV-7's contractive parameterization: a = -kappa (unit rows), b = kappa * lr.
    const Tensor<float, 4> kappa = unit_rows({B, kT, Hr, K}, 21);
    Tensor<float, 4> a({B, kT, Hr, K}), b({B, kT, Hr, K}), g({B, kT, Hr, K});
    for (index_t i = 0; i < kappa.numel(); ++i) {
      a.data()[i] = -kappa.data()[i];
      b.data()[i] = 0.5f * kappa.data()[i];
    }
    st::fill_log_gate(g.view(), 22, -1.f, 0.f);
    seqmix::Rwkv7Inputs in{r.cview(), kr.cview(), vr.cview(), a.cview(), b.cview(), g.cview(), {}};
    check_segmentations("rwkv7", in, std::array<index_t, 4>{B, kT, Hr, V}, seqmix::Rwkv7StreamOptions{}, 1);
  }
}

// One head on two threads splits its value columns into two blocks of 64 at K = V = 128, where the
// automatic choice counts a block (recurrent) and all of V would count as chunked: a stream must
// pin the form the one call takes on that executor, or its segments differ from it in the last
// bits (chunked/streaming.hpp, detail::stream::delta_shape).
TEST_CASE("streaming: a delta-rule stream of one head in value blocks equals one call", "[streaming]") {
  const index_t B = 1, H = 1, K = 128, V = 128, T = 200;
  const Tensor<float, 4> q = st::random_tensor<4>({B, T, H, K}, 61), k = unit_rows({B, T, H, K}, 62);
  const Tensor<float, 4> v = st::random_tensor<4>({B, T, H, V}, 63);
  const Tensor<float, 3> beta = st::random_tensor<3>({B, T, H}, 64, 0.f, 1.f);
  Tensor<float, 3> g({B, T, H});
  st::fill_log_gate(g.view(), 65, -1.f, 0.f);
  SECTION("gated_delta_rule, automatic") {
    seqmix::GatedDeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview(), g.cview(), {}, {}};
    seqmix::GatedDeltaRuleOptions o;
    check_segmentations("gated_delta_rule H1", in, std::array<index_t, 4>{B, T, H, V}, o, o.chunk_size);
  }
  SECTION("delta_rule, automatic") {
    seqmix::DeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview(), {}};
    seqmix::DeltaRuleOptions o;
    check_segmentations("delta_rule H1", in, std::array<index_t, 4>{B, T, H, V}, o, o.chunk_size);
  }
}

TEST_CASE("streaming: conv1d, selective scan and SSD in segments equal one call", "[streaming]") {
  const index_t B = 2, D = 40, N = 8, G = 2;
  SECTION("causal_conv1d carries its window, including segments shorter than the window") {
    const Tensor<float, 3> x = st::random_tensor<3>({B, kT, D}, 31);
    const Tensor<float, 2> w = st::random_tensor<2>({D, 4}, 32);
    const Tensor<float, 1> bias = st::random_tensor<1>({D}, 33);
    seqmix::CausalConv1dInputs in{x.cview(), w.cview(), bias.cview(), {}};
    seqmix::CausalConv1dOptions o;
    o.activation = seqmix::ConvActivation::silu;
    check_segmentations("causal_conv1d", in, std::array<index_t, 3>{B, kT, D}, o, 1);
  }
  SECTION("selective_scan") {
    const Tensor<float, 3> u = st::random_tensor<3>({B, kT, D}, 34), delta = st::random_tensor<3>({B, kT, D}, 35);
    const Tensor<float, 2> A = st::random_tensor<2>({D, N}, 36, -2.f, -0.1f);
    const Tensor<float, 4> Bm = st::random_tensor<4>({B, kT, G, N}, 37), Cm = st::random_tensor<4>({B, kT, G, N}, 38);
    const Tensor<float, 1> Dskip = st::random_tensor<1>({D}, 39);
    const Tensor<float, 3> z = st::random_tensor<3>({B, kT, D}, 40);
    seqmix::SelectiveScanInputs in{u.cview(), delta.cview(), A.cview(), Bm.cview(), Cm.cview(),
                                   Dskip.cview(), z.cview(), {}, {}};
    seqmix::SelectiveScanOptions o;
    o.delta_softplus = true;
    check_segmentations("selective_scan", in, std::array<index_t, 3>{B, kT, D}, o, 1);
  }
  SECTION("ssd") {
    const index_t H = 4, P = 16;
    const Tensor<float, 4> x = st::random_tensor<4>({B, kT, H, P}, 41);
    const Tensor<float, 3> dt = st::random_tensor<3>({B, kT, H}, 42);
    const Tensor<float, 1> A = st::random_tensor<1>({H}, 43, -2.f, -0.1f);
    const Tensor<float, 4> Bm = st::random_tensor<4>({B, kT, G, N}, 44), Cm = st::random_tensor<4>({B, kT, G, N}, 45);
    const Tensor<float, 4> s0 = st::random_tensor<4>({B, H, P, N}, 46, -0.5f, 0.5f);
    seqmix::SsdInputs in{x.cview(), dt.cview(), A.cview(), Bm.cview(), Cm.cview(), {}, {}, {}, s0.cview()};
    seqmix::SsdOptions o;
    o.dt_softplus = true;
    check_segmentations("ssd", in, std::array<index_t, 4>{B, kT, H, P}, o, o.chunk_size);
  }
}

TEST_CASE("streaming: a stream fed segment by segment keeps only its state", "[streaming]") {
  const index_t B = 1, H = 2, K = 16, V = 16, T = 1000;
  const Tensor<float, 4> q = st::random_tensor<4>({B, T, H, K}, 51), k = st::random_tensor<4>({B, T, H, K}, 52);
  const Tensor<float, 4> v = st::random_tensor<4>({B, T, H, V}, 53);
  Tensor<float, 4> g({B, T, H, K});
  st::fill_log_gate(g.view(), 54, -1.f, 0.f);
  const seqmix::GatedLinearAttentionInputs all{q.cview(), k.cview(), v.cview(), g.cview(), {}, {}};
  Tensor<float, 4> o_one({B, T, H, V}), s_one({B, H, K, V});
  seqmix::gated_linear_attention(all, {o_one.view(), s_one.view()});

  seqmix::RecurrentStream<seqmix::GatedLinearAttentionInputs> stream;
  Tensor<float, 4> o_seg({B, T, H, V});
  using Traits = seqmix::StreamTraits<seqmix::GatedLinearAttentionInputs>;
  index_t t0 = 0;
  for (const index_t n : {64, 1, 1, 200, 7, 128, 599}) {  // sums to T
    stream.feed(Traits::slice(all, t0, n), Traits::slice(seqmix::GatedLinearAttentionOutputs{o_seg.view(), {}}, t0, n));
    t0 += n;
  }
  REQUIRE(t0 == T);
  CHECK(stream.tokens_seen() == T);
  st::require_close("o", o_seg.cview(), o_one.cview(), 2e-4);
  st::require_close("state", stream.state().s.cview(), s_one.cview(), 2e-4);

  SECTION("later segments may not bring or ask for a state") {
    Tensor<float, 4> s({B, H, K, V}), o({B, 4, H, V});
    seqmix::GatedLinearAttentionInputs seg = Traits::slice(all, 0, 4);
    seg.initial_state = s.cview();
    CHECK_THROWS_WITH(stream.feed(seg, {o.view(), {}}), Catch::Contains("initial_state"));
    CHECK_THROWS_WITH(stream.feed(Traits::slice(all, 0, 4), {o.view(), s.view()}), Catch::Contains("final_state"));
  }
  SECTION("a segment of another shape is rejected with both state shapes; reset starts over") {
    const Tensor<float, 4> q2 = st::random_tensor<4>({B, 4, H, 8}, 55), k2 = st::random_tensor<4>({B, 4, H, 8}, 56);
    Tensor<float, 4> g2({B, 4, H, 8}), o2({B, 4, H, V});
    st::fill_log_gate(g2.view(), 57, -1.f, 0.f);
    const seqmix::GatedLinearAttentionInputs other{q2.cview(), k2.cview(), Traits::slice(all, 0, 4).v, g2.cview(), {}, {}};
    CHECK_THROWS_WITH(stream.feed(other, {o2.view(), {}}), Catch::Contains("[1,2,8,16]") && Catch::Contains("[1,2,16,16]"));
    stream.reset();
    CHECK_NOTHROW(stream.feed(other, {o2.view(), {}}));
    CHECK(stream.tokens_seen() == 4);
  }
  SECTION("a serving batch is refused: a stream carries one dense batch") {
    Tensor<float, 4> o({B, 4, H, V});
    const std::vector<std::int32_t> cu = {0, 1, 4}, slots = {0};
    seqmix::GatedLinearAttentionInputs packed = Traits::slice(all, 0, 4);
    packed.batch.cu_seqlens = cu;
    CHECK_THROWS_WITH(stream.feed(packed, {o.view(), {}}), Catch::Contains("'batch'"));
    seqmix::GatedLinearAttentionInputs slotted = Traits::slice(all, 0, 4);
    slotted.batch.state_indices = slots;
    seqmix::RecurrentStream<seqmix::GatedLinearAttentionInputs> fresh;
    CHECK_THROWS_WITH(fresh.feed(slotted, {o.view(), {}}), Catch::Contains("'batch'"));
    CHECK_FALSE(fresh.started());
  }
  SECTION("run_in_segments rejects a segment length below 1") {
    Tensor<float, 4> o({B, T, H, V});
    CHECK_THROWS_WITH(seqmix::run_in_segments(all, seqmix::GatedLinearAttentionOutputs{o.view(), {}}, seqmix::GatedLinearAttentionOptions{}, 0),
                      Catch::Contains("segment_length"));
  }
}
