// mla: the expanded prefill and the absorbed decode against the naive expanded reference (in
// double) for head counts, latent / rotary sizes, fp32 / fp16 / bf16 latents, cache lengths
// around the block size, serial and two threads; and the ShapeErrors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "seqmix/attention/mla/mla.hpp"
#include "seqmix/attention/mla/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct MlaShape {
  index_t H, dn, dr, dc, dv;
};

// DeepSeek-V2-Lite's ratios shrunk (d_c = 512, d_r = 64, d_nope = d_v = 128), and odd sizes
// that are not multiples of the SIMD width.
const MlaShape kShapes[] = {{1, 16, 8, 32, 16}, {3, 24, 8, 40, 20}, {16, 32, 16, 128, 32}, {5, 8, 4, 17, 12}};

template <class C>
Tensor<C, 3> to_storage(const Tensor<float, 3>& x) {
  Tensor<C, 3> out(x.shape());
  for (index_t i = 0; i < x.numel(); ++i) out.data()[i] = static_cast<C>(x.data()[i]);
  return out;
}

struct Weights {
  Tensor<float, 3> kv_b;  // [H, d_nope + d_v, d_c], DeepSeek's kv_b_proj weight viewed per head
  seqmix::MlaWeights views(const MlaShape& s) const {
    const auto all = kv_b.view();
    return {all.slice(1, 0, s.dn), all.slice(1, s.dn, s.dv)};
  }
};

Weights make_weights(const MlaShape& s, std::uint64_t seed) {
  Weights w{st::random_tensor<3>({s.H, s.dn + s.dv, s.dc}, seed)};
  const float gain = 2.f / std::sqrt(static_cast<float>(s.dc));
  for (float& x : w.kv_b) x *= gain;
  return w;
}

const char* type_name(float*) { return "fp32"; }
const char* type_name(seqmix::f16*) { return "fp16"; }
const char* type_name(seqmix::bf16*) { return "bf16"; }

template <class C>
void check_prefill(const MlaShape& s, index_t B, index_t Tq, index_t Tk, bool causal) {
  const Weights w = make_weights(s, 11);
  const auto q_nope = st::random_tensor<4>({B, Tq, s.H, s.dn}, 1), q_rope = st::random_tensor<4>({B, Tq, s.H, s.dr}, 2);
  const auto c_kv = to_storage<C>(st::random_tensor<3>({B, Tk, s.dc}, 3));
  const auto k_rope = to_storage<C>(st::random_tensor<3>({B, Tk, s.dr}, 4));
  seqmix::MlaPrefillInputs<C> in{q_nope.view(), q_rope.view(), c_kv.view(), k_rope.view(), w.views(s)};
  Tensor<float, 4> o({B, Tq, s.H, s.dv}), ref({B, Tq, s.H, s.dv});
  Tensor<float, 3> lse({B, Tq, s.H}), ref_lse({B, Tq, s.H});
  seqmix::MlaOptions options;
  options.causal = causal;
  INFO(type_name(static_cast<C*>(nullptr)) << " H=" << s.H << " d_nope=" << s.dn << " d_r=" << s.dr << " d_c=" << s.dc
                                           << " d_v=" << s.dv << " B=" << B << " Tq=" << Tq << " Tk=" << Tk
                                           << " causal=" << causal);
  seqmix::reference::mla(in, {ref.view(), ref_lse.view()}, options);
  seqmix::mla_prefill(in, {o.view(), lse.view()}, options, st::two_thread_pool());
  st::require_close("prefill o", o.view(), ref.view(), 2e-5);
  st::require_close("prefill lse", lse.view(), ref_lse.view(), 2e-5);
}

// Decode: B sequences with different cached lengths against the reference run per sequence on
// its own rows (one query at the end of its cache, no mask needed), and against the expanded
// prefill with Tq = 1. The double reference and the expanded prefill run once per row; the decode
// runs on every executor given and each result is checked against them.
template <class C>
void check_decode(const MlaShape& s, const std::vector<std::int64_t>& lengths,
                  const std::vector<const seqmix::Executor*>& executors) {
  const index_t B = static_cast<index_t>(lengths.size());
  index_t Tmax = 1;
  for (const auto L : lengths) Tmax = std::max<index_t>(Tmax, L);
  const Weights w = make_weights(s, 21);
  const auto q_nope = st::random_tensor<3>({B, s.H, s.dn}, 5), q_rope = st::random_tensor<3>({B, s.H, s.dr}, 6);
  const auto c_kv = to_storage<C>(st::random_tensor<3>({B, Tmax, s.dc}, 7));
  const auto k_rope = to_storage<C>(st::random_tensor<3>({B, Tmax, s.dr}, 8));
  seqmix::MlaDecodeInputs<C> in{q_nope.view(), q_rope.view(), c_kv.view(), k_rope.view(), lengths, w.views(s)};
  std::vector<Tensor<float, 3>> os;
  std::vector<Tensor<float, 2>> lses;
  for (const seqmix::Executor* executor : executors) {
    os.emplace_back(std::array<index_t, 3>{B, s.H, s.dv});
    lses.emplace_back(std::array<index_t, 2>{B, s.H});
    seqmix::mla_decode(in, {os.back().view(), lses.back().view()}, {}, *executor);
  }
  for (index_t b = 0; b < B; ++b) {
    const index_t L = lengths[static_cast<std::size_t>(b)];
    INFO(type_name(static_cast<C*>(nullptr)) << " H=" << s.H << " d_c=" << s.dc << " d_r=" << s.dr << " row " << b
                                             << " of " << B << ", cached " << L);
    if (L == 0) {
      for (std::size_t x = 0; x < executors.size(); ++x) {
        INFO("executor " << x << " of " << executors.size());
        const seqmix::ConstView<float, 3> got(os[x].view().ptr(b), {1, s.H, s.dv});
        const seqmix::ConstView<float, 2> got_lse(lses[x].view().ptr(b), {1, s.H});
        for (index_t h = 0; h < s.H; ++h) REQUIRE(got_lse(0, h) == -std::numeric_limits<float>::infinity());
        for (index_t h = 0; h < s.H; ++h)
          for (index_t e = 0; e < s.dv; ++e) REQUIRE(got(0, h, e) == 0.f);
      }
      continue;
    }
    const seqmix::ConstView<float, 4> qn(q_nope.view().ptr(b), {1, 1, s.H, s.dn});
    const seqmix::ConstView<float, 4> qr(q_rope.view().ptr(b), {1, 1, s.H, s.dr});
    const auto cb = c_kv.view().slice(0, b, 1).slice(1, 0, L), rb = k_rope.view().slice(0, b, 1).slice(1, 0, L);
    seqmix::MlaPrefillInputs<C> one{qn, qr, cb, rb, w.views(s)};
    Tensor<float, 4> ref({1, 1, s.H, s.dv}), expanded({1, 1, s.H, s.dv});
    Tensor<float, 3> ref_lse({1, 1, s.H});
    seqmix::reference::mla(one, {ref.view(), ref_lse.view()});
    seqmix::mla_prefill(one, {expanded.view(), {}});
    for (std::size_t x = 0; x < executors.size(); ++x) {
      INFO("executor " << x << " of " << executors.size());
      const seqmix::ConstView<float, 4> got(os[x].view().ptr(b), {1, 1, s.H, s.dv});
      const seqmix::ConstView<float, 3> got_lse(lses[x].view().ptr(b), {1, 1, s.H});
      st::require_close("absorbed decode o", got, ref.cview(), 2e-5);
      st::require_close("absorbed decode lse", got_lse, ref_lse.cview(), 2e-5);
      st::require_close("absorbed vs expanded", got, expanded.cview(), 2e-5);
    }
  }
}

}  // namespace

TEST_CASE("mla_prefill expanded equals the naive reference", "[mla]") {
  for (const MlaShape& s : kShapes) {
    check_prefill<float>(s, 2, 9, 9, true);
    check_prefill<float>(s, 1, 5, 70, true);  // a chunk after a cached prefix
    check_prefill<float>(s, 1, 6, 11, false);
    check_prefill<seqmix::f16>(s, 1, 7, 7, true);
    check_prefill<seqmix::bf16>(s, 1, 3, 20, true);
  }
}

TEST_CASE("mla_decode absorbed equals expanded attention for head counts, latent and rotary sizes", "[mla]") {
  const std::vector<std::int64_t> lengths = {1, 64, 65, 0, 200, 7};
  for (const MlaShape& s : kShapes) {
    check_decode<float>(s, lengths, {&seqmix::serial_executor(), &st::two_thread_pool()});
    check_decode<seqmix::f16>(s, {130, 3}, {&st::two_thread_pool()});
    check_decode<seqmix::bf16>(s, {129}, {&st::two_thread_pool()});
  }
  // One sequence spread over many spans (the split-and-merge path), DeepSeek-like head count.
  // mla_decode cuts each sequence into ceil(2 * threads / B) spans of whole 64-token blocks, at
  // most one span per block: at two threads B = 1 gives 4 spans once the cache has 4 blocks
  // (> 192 tokens), B = 2 gives 2. The small scale's 300 (4 full blocks and a 44-token tail, so
  // spans of 1, 1, 1 and 2 blocks) still merges 4 spans; the reference's cost grows with it.
  const index_t long_cache = st::small_test_scale() ? 300 : 3000;
  check_decode<seqmix::f16>({128, 32, 16, 64, 32}, {long_cache}, {&st::two_thread_pool()});
  const seqmix::ThreadPool pool(2);
  check_decode<float>({16, 16, 8, 32, 16}, {long_cache, 1000}, {&pool});
}

TEST_CASE("mla refuses bad arguments before writing", "[mla]") {
  const MlaShape s{4, 16, 8, 32, 16};
  const Weights w = make_weights(s, 1);
  const auto q_nope = st::random_tensor<3>({2, s.H, s.dn}, 5), q_rope = st::random_tensor<3>({2, s.H, s.dr}, 6);
  const auto c_kv = st::random_tensor<3>({2, 10, s.dc}, 7), k_rope = st::random_tensor<3>({2, 10, s.dr}, 8);
  Tensor<float, 3> o({2, s.H, s.dv});
  o.fill(3.f);
  const Tensor<float, 3> before = o;
  std::vector<std::int32_t> lengths = {4, 11};  // 11 > Tmax
  seqmix::MlaDecodeInputs<float> in{q_nope.view(), q_rope.view(), c_kv.view(), k_rope.view(), lengths, w.views(s)};
  st::require_shape_error("cache_seqlens", [&] { seqmix::mla_decode(in, {o.view(), {}}); });
  lengths = {4, 10};
  in.cache_seqlens = lengths;
  auto bad = in;
  bad.weights.w_uk = w.kv_b.view().slice(1, 0, s.dn - 1);
  st::require_shape_error("w_uk", [&] { seqmix::mla_decode(bad, {o.view(), {}}); });
  bad = in;
  const auto short_rope = st::random_tensor<3>({2, 10, s.dr + 2}, 9);
  bad.k_rope = short_rope.view();
  st::require_shape_error("k_rope", [&] { seqmix::mla_decode(bad, {o.view(), {}}); });
  Tensor<float, 3> wrong({2, s.H, s.dv + 1});
  st::require_shape_error("o", [&] { seqmix::mla_decode(in, {wrong.view(), {}}); });
  const seqmix::TensorView<float, 2> lse_in_o(o.data(), {2, s.H});
  st::require_shape_error("lse", [&] { seqmix::mla_decode(in, {o.view(), lse_in_o}); });
  REQUIRE(st::compare(o.view(), before.view(), 0.0).ok);

  // Prefill: more queries than keys under the causal rule.
  const auto qn4 = st::random_tensor<4>({1, 12, s.H, s.dn}, 1), qr4 = st::random_tensor<4>({1, 12, s.H, s.dr}, 2);
  Tensor<float, 4> o4({1, 12, s.H, s.dv});
  seqmix::MlaPrefillInputs<float> pin{qn4.view(), qr4.view(), c_kv.view().slice(0, 0, 1), k_rope.view().slice(0, 0, 1),
                                      w.views(s)};
  st::require_shape_error("c_kv", [&] { seqmix::mla_prefill(pin, {o4.view(), {}}); });
}
