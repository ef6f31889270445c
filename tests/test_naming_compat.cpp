// The naming scheme of docs/operators.md section 1 ("Names") and what it kept compiling: every
// name it replaced still compiles as a [[deprecated]] alias and gives exactly what the new name
// gives (docs/conventions.md, "Naming and deprecated names"), and positions / indices given as
// int32 or int64 give the same results.
#include <catch2/catch.hpp>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/attention/paged/reference.hpp"
#include "seqmix/attention/retrieval/retrieval.hpp"
#include "seqmix/chunked/aaren/fast.hpp"
#include "seqmix/chunked/aaren/reference.hpp"
#include "seqmix/chunked/newton/reference.hpp"
#include "seqmix/chunked/rat/fast.hpp"
#include "seqmix/chunked/rat/reference.hpp"
#include "seqmix/kv_cache/attention.hpp"
#include "seqmix/kv_cache/cache.hpp"
#include "seqmix/linear_attention/gla/chunked.hpp"
#include "seqmix/linear_attention/gla/reference.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

template <class T, std::size_t R>
void require_identical(const Tensor<T, R>& a, const Tensor<T, R>& b, const char* what) {
  INFO(what);
  REQUIRE(a.view().shape() == b.view().shape());
  index_t differ = 0;
  for (index_t i = 0; i < a.numel(); ++i) differ += a.data()[i] == b.data()[i] ? 0 : 1;
  REQUIRE(differ == 0);
}

template <class T, std::size_t R>
Tensor<T, R> zeros(const std::array<index_t, R>& shape) {
  Tensor<T, R> t(shape);
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = T(0);
  return t;
}

}  // namespace

// The deprecated names are used on purpose below; only here are their warnings silenced.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

TEST_CASE("renamed types are the same types under their old names", "[naming]") {
  STATIC_REQUIRE(std::is_same_v<seqmix::GlaInputs, seqmix::GatedLinearAttentionInputs>);
  STATIC_REQUIRE(std::is_same_v<seqmix::GlaOutputs, seqmix::GatedLinearAttentionOutputs>);
  STATIC_REQUIRE(std::is_same_v<seqmix::GlaStepInputs, seqmix::GatedLinearAttentionStepInputs>);
  STATIC_REQUIRE(std::is_same_v<seqmix::GlaStepOutputs, seqmix::GatedLinearAttentionStepOutputs>);
  STATIC_REQUIRE(std::is_same_v<seqmix::GlaOptions, seqmix::GatedLinearAttentionOptions>);
  STATIC_REQUIRE(std::is_same_v<seqmix::RetrievalOptions, seqmix::RetrievalAttentionOptions>);
  STATIC_REQUIRE(std::is_same_v<seqmix::NewtonOptions, seqmix::NonlinearRecurrenceNewtonOptions>);
  STATIC_REQUIRE(std::is_same_v<seqmix::BlockTable, seqmix::IndexTable>);

  // Code written against the old names still runs: a GLA prefill through GlaInputs / GlaOptions.
  const index_t B = 2, T = 9, H = 2, K = 8, V = 4;
  const auto q = st::random_tensor<4>({B, T, H, K}, 1), k = st::random_tensor<4>({B, T, H, K}, 2);
  const auto v = st::random_tensor<4>({B, T, H, V}, 3), g = st::random_tensor<4>({B, T, H, K}, 4, -1.f, 0.f);
  auto o_old = zeros<float, 4>({B, T, H, V}), o_new = zeros<float, 4>({B, T, H, V});
  seqmix::GlaInputs in_old;
  in_old.q = q.cview(), in_old.k = k.cview(), in_old.v = v.cview(), in_old.g = g.cview();
  seqmix::GlaOptions options_old;
  options_old.chunk_size = 4;
  seqmix::gated_linear_attention(in_old, seqmix::GlaOutputs{o_old.view(), {}, {}}, options_old);
  seqmix::GatedLinearAttentionInputs in_new = in_old;
  seqmix::GatedLinearAttentionOptions options_new = options_old;
  seqmix::gated_linear_attention(in_new, seqmix::GatedLinearAttentionOutputs{o_new.view(), {}, {}}, options_new);
  require_identical(o_old, o_new, "GlaInputs / GlaOptions");
}

TEST_CASE("attention_decode is attention_step", "[naming][attention]") {
  const index_t B = 2, Tq = 2, Tk = 70, Hq = 4, Hkv = 2, D = 16;
  const auto q = st::random_tensor<4>({B, Tq, Hq, D}, 5), k = st::random_tensor<4>({B, Tk, Hkv, D}, 6);
  const auto v = st::random_tensor<4>({B, Tk, Hkv, D}, 7);
  seqmix::AttentionInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
  seqmix::AttentionOptions options;
  options.causal = true;
  auto o_old = zeros<float, 4>({B, Tq, Hq, D}), o_new = zeros<float, 4>({B, Tq, Hq, D});
  auto l_old = zeros<float, 3>({B, Tq, Hq}), l_new = zeros<float, 3>({B, Tq, Hq});
  seqmix::attention_decode(in, seqmix::AttentionOutputs{o_old.view(), l_old.view()}, options);
  seqmix::attention_step(in, seqmix::AttentionOutputs{o_new.view(), l_new.view()}, options);
  require_identical(o_old, o_new, "o");
  require_identical(l_old, l_new, "lse");
  // The automatic switch inside attention takes the same kernel for Tq <= 4, and its errors
  // name the step form.
  auto o_auto = zeros<float, 4>({B, Tq, Hq, D});
  seqmix::attention(in, seqmix::AttentionOutputs{o_auto.view(), {}}, options);
  require_identical(o_auto, o_new, "attention (Tq <= 4)");
  auto bad = zeros<float, 4>({B, Tq, Hq, D + 1});
  try {
    seqmix::attention(in, seqmix::AttentionOutputs{bad.view(), {}}, options);
    FAIL("no ShapeError for a wrong o");
  } catch (const seqmix::ShapeError& e) {
    REQUIRE(std::string(e.op()) == "attention_step");
    REQUIRE(std::string(e.argument()) == "o");
  }
}

TEST_CASE("AarenInputs::initial still sets the initial state", "[naming][chunked]") {
  const index_t B = 2, T = 11, H = 3, Dk = 8, Dv = 5;
  const auto query = st::random_tensor<2>({H, Dk}, 8);
  const auto k = st::random_tensor<4>({B, T, H, Dk}, 9);
  const auto v = st::random_tensor<4>({B, T, H, Dv}, 10);
  const auto m0 = st::random_tensor<2>({B, H}, 11), l0 = st::random_tensor<2>({B, H}, 12, 0.5f, 2.f);
  const auto acc0 = st::random_tensor<3>({B, H, Dv}, 13);
  const seqmix::AarenConstState state{m0.cview(), l0.cview(), acc0.cview()};
  seqmix::AarenInputs in_old{query.cview(), k.cview(), v.cview(), {}};
  in_old.initial = state;
  seqmix::AarenInputs in_new{query.cview(), k.cview(), v.cview(), state};
  auto o_old = zeros<float, 4>({B, T, H, Dv}), o_new = zeros<float, 4>({B, T, H, Dv});
  auto o_none = zeros<float, 4>({B, T, H, Dv});
  seqmix::aaren(in_old, {o_old.view(), {}});
  seqmix::aaren(in_new, {o_new.view(), {}});
  seqmix::aaren(seqmix::AarenInputs{query.cview(), k.cview(), v.cview(), {}}, {o_none.view(), {}});
  require_identical(o_old, o_new, "aaren");
  REQUIRE(o_old.data()[0] != o_none.data()[0]);  // the state was read, not dropped
  auto r_old = zeros<float, 4>({B, T, H, Dv}), r_new = zeros<float, 4>({B, T, H, Dv});
  seqmix::reference::aaren(in_old, {r_old.view(), {}});
  seqmix::reference::aaren(in_new, {r_new.view(), {}});
  require_identical(r_old, r_new, "reference::aaren");
}

TEST_CASE("RatOptions::chunk still sets the chunk length", "[naming][chunked]") {
  const index_t B = 1, T = 23, H = 2, Hkv = 1, D = 8;
  const auto q = st::random_tensor<4>({B, T, H, D}, 14), k = st::random_tensor<4>({B, T, Hkv, D}, 15);
  const auto v = st::random_tensor<4>({B, T, Hkv, D}, 16), g = st::random_tensor<4>({B, T, Hkv, D}, 17, -1.f, 0.f);
  const seqmix::RatInputs in{q.cview(), k.cview(), v.cview(), g.cview()};
  seqmix::RatOptions old_options;
  old_options.chunk = 5;
  seqmix::RatOptions new_options;
  new_options.chunk_size = 5;
  auto o_old = zeros<float, 4>({B, T, H, D}), o_new = zeros<float, 4>({B, T, H, D});
  auto o_default = zeros<float, 4>({B, T, H, D});
  seqmix::rat(in, {o_old.view()}, old_options);
  seqmix::rat(in, {o_new.view()}, new_options);
  seqmix::rat(in, {o_default.view()}, seqmix::RatOptions{});
  require_identical(o_old, o_new, "rat");
  index_t differ = 0;  // chunk 5 is not the default 16: the old member was honoured
  for (index_t i = 0; i < o_old.numel(); ++i) differ += o_old.data()[i] != o_default.data()[i] ? 1 : 0;
  REQUIRE(differ > 0);
  seqmix::RatOptions bad;
  bad.chunk = 0;
  st::require_shape_error("options.chunk_size", [&] { seqmix::rat(in, {o_old.view()}, bad); });
}

#pragma GCC diagnostic pop

TEST_CASE("attention positions: int32 and int64 give the same result", "[naming][attention]") {
  const index_t B = 2, Tq = 6, Tk = 40, H = 2, D = 8;
  const auto q = st::random_tensor<4>({B, Tq, H, D}, 18), k = st::random_tensor<4>({B, Tk, H, D}, 19);
  const auto v = st::random_tensor<4>({B, Tk, H, D}, 20);
  Tensor<std::int32_t, 2> p32({B, Tq});
  Tensor<std::int64_t, 2> p64({B, Tq});
  for (index_t b = 0; b < B; ++b)
    for (index_t i = 0; i < Tq; ++i) p32(b, i) = static_cast<std::int32_t>(3 + 5 * i + b), p64(b, i) = p32(b, i);
  seqmix::AttentionOptions options;
  options.causal = true;
  for (const bool step : {false, true}) {
    seqmix::AttentionInputs<float> in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview();
    auto o32 = zeros<float, 4>({B, Tq, H, D}), o64 = zeros<float, 4>({B, Tq, H, D});
    auto ref = zeros<float, 4>({B, Tq, H, D});
    in.positions = p32.cview();
    step ? seqmix::attention_step(in, {o32.view(), {}}, options) : seqmix::attention(in, {o32.view(), {}}, options);
    seqmix::reference::attention(in, {ref.view(), {}}, options);
    in.positions = p64.view();
    step ? seqmix::attention_step(in, {o64.view(), {}}, options) : seqmix::attention(in, {o64.view(), {}}, options);
    require_identical(o32, o64, step ? "attention_step" : "attention");
    REQUIRE(st::compare(o32.cview(), ref.cview(), 1e-5).ok);
  }
  // A wrong shape is refused for either width, naming the argument.
  Tensor<std::int64_t, 2> short64({B, Tq - 1});
  seqmix::AttentionInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.positions = short64.view();
  auto o = zeros<float, 4>({B, Tq, H, D});
  const auto before = o;
  st::require_shape_error("positions", [&] { seqmix::attention(in, {o.view(), {}}, options); });
  require_identical(o, before, "o after a refused call");
}

TEST_CASE("KV cache positions: int32 and int64 give the same cache and attention", "[naming][kv_cache]") {
  const index_t B = 1, T = 7, H = 2, D = 8, Tq = 2;
  seqmix::KvCacheConfig config;
  config.batch = B, config.kv_heads = H, config.key_dim = D, config.value_dim = D;
  config.key_format = seqmix::KvFormat::f32, config.value_format = seqmix::KvFormat::f32;
  const auto k = st::random_tensor<4>({B, T, H, D}, 21), v = st::random_tensor<4>({B, T, H, D}, 22);
  Tensor<std::int32_t, 2> p32({B, T});
  Tensor<std::int64_t, 2> p64({B, T});
  for (index_t t = 0; t < T; ++t) p32(0, t) = static_cast<std::int32_t>(2 * t + 1), p64(0, t) = p32(0, t);
  seqmix::KvCache c32(config), c64(config);
  c32.append(k.cview(), v.cview(), p32.cview());
  c64.append(k.cview(), v.cview(), p64.cview());
  for (index_t h = 0; h < H; ++h) REQUIRE(c32.positions(0, h) == c64.positions(0, h));
  REQUIRE(c32.positions(0, 0).back() == 2 * (T - 1) + 1);

  const auto q = st::random_tensor<4>({B, Tq, H, D}, 23);
  Tensor<std::int32_t, 2> q32({B, Tq});
  Tensor<std::int64_t, 2> q64({B, Tq});
  q32(0, 0) = 6, q32(0, 1) = 13, q64(0, 0) = 6, q64(0, 1) = 13;
  seqmix::AttentionOptions options;
  options.causal = true;
  auto o32 = zeros<float, 4>({B, Tq, H, D}), o64 = zeros<float, 4>({B, Tq, H, D});
  seqmix::KvCacheAttentionInputs in;
  in.q = q.cview(), in.cache = &c32, in.positions = q32.cview();
  seqmix::kv_cache_attention(in, {o32.view(), {}}, options);
  in.cache = &c64, in.positions = q64.cview();
  seqmix::kv_cache_attention(in, {o64.view(), {}}, options);
  require_identical(o32, o64, "kv_cache_attention");
}
