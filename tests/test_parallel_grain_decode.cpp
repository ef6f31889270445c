// Split-key decode combines its pieces in parallel (attention_step, kv_cache_attention), and a
// memory-bound linear_scan of few rows splits in time on many threads (docs/parallel_grain.md):
// with an executor that claims 64 threads (CountingExecutor, serial), with 2, and serially,
// each against the reference, at ragged shapes; and the task counts the splits intend.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/attention/dense/decode.hpp"
#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/kv_cache.hpp"
#include "seqmix_testing/counting_executor.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

namespace st = seqmix::testing;
using seqmix::index_t;
using seqmix::Tensor;

// The executors every case runs on: 64 claimed threads, 2 claimed threads, the calling thread.
struct Executors {
  st::CountingExecutor wide{64}, narrow{2};
  std::vector<const seqmix::Executor*> all() const { return {&wide, &narrow, &seqmix::serial_executor()}; }
};

std::string executor_name(const seqmix::Executor& ex) { return "concurrency " + std::to_string(ex.concurrency()); }

// Top-level run() sizes of the last call on `ex`, in call order.
std::vector<index_t> run_sizes(const st::CountingExecutor& ex) {
  std::vector<index_t> sizes;
  for (const st::RecordedRun& run : ex.runs())
    if (!run.nested) sizes.push_back(run.tasks);
  return sizes;
}

// ---- attention_step ----------------------------------------------------------------------------

struct DecodeShape {
  index_t B, Tq, Tk, Hq, Hkv, D;
  bool ragged_rows;  // causal with per-row query positions: batch rows see different key counts
  bool sink_logits;
};

template <class KV>
void check_attention_step(const DecodeShape& s, std::uint64_t seed, const char* kv_name) {
  const auto q = st::random_tensor<4>({s.B, s.Tq, s.Hq, s.D}, seed);
  const auto k32 = st::random_tensor<4>({s.B, s.Tk, s.Hkv, s.D}, seed + 1);
  const auto v32 = st::random_tensor<4>({s.B, s.Tk, s.Hkv, s.D}, seed + 2);
  const auto sinks = st::random_tensor<1>({s.Hq}, seed + 3, -1.f, 2.f);
  // The stored K/V, and the same values widened back for the reference.
  Tensor<KV, 4> k({s.B, s.Tk, s.Hkv, s.D}), v({s.B, s.Tk, s.Hkv, s.D});
  Tensor<float, 4> k_ref({s.B, s.Tk, s.Hkv, s.D}), v_ref({s.B, s.Tk, s.Hkv, s.D});
  seqmix::copy(k32.cview(), k.view());
  seqmix::copy(v32.cview(), v.view());
  seqmix::copy(k.cview(), k_ref.view());
  seqmix::copy(v.cview(), v_ref.view());
  Tensor<std::int32_t, 2> positions({s.B, s.Tq});
  for (index_t b = 0; b < s.B; ++b)  // row b sees about Tk * (b + 1) / B keys
    for (index_t i = 0; i < s.Tq; ++i) positions(b, i) = static_cast<std::int32_t>(s.Tk * (b + 1) / s.B - s.Tq + i);
  seqmix::AttentionOptions options;
  options.causal = s.ragged_rows;
  seqmix::AttentionInputs<KV> in;
  seqmix::AttentionInputs<float> ref_in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  ref_in.q = q.view(), ref_in.k = k_ref.view(), ref_in.v = v_ref.view();
  if (s.ragged_rows) in.positions = positions.view(), ref_in.positions = positions.view();
  if (s.sink_logits) in.sink_logits = sinks.view(), ref_in.sink_logits = sinks.view();
  Tensor<float, 4> o_ref({s.B, s.Tq, s.Hq, s.D}), o({s.B, s.Tq, s.Hq, s.D});
  Tensor<float, 3> lse_ref({s.B, s.Tq, s.Hq}), lse({s.B, s.Tq, s.Hq});
  seqmix::reference::attention(ref_in, {o_ref.view(), lse_ref.view()}, options);
  Executors executors;
  for (const seqmix::Executor* ex : executors.all()) {
    o.fill(-7.f), lse.fill(-7.f);
    seqmix::attention_step(in, {o.view(), lse.view()}, options, *ex);
    const auto co = st::compare(o.cview(), o_ref.cview(), 1e-4), cl = st::compare(lse.cview(), lse_ref.cview(), 1e-4);
    INFO(kv_name << " B=" << s.B << " Tq=" << s.Tq << " Tk=" << s.Tk << " Hq=" << s.Hq << " Hkv=" << s.Hkv
                 << " D=" << s.D << " ragged=" << s.ragged_rows << " seed=" << seed << ", " << executor_name(*ex)
                 << ": o " << co.describe() << ", lse " << cl.describe());
    CHECK(co.ok);
    CHECK(cl.ok);
  }
}

TEST_CASE("parallel grain decode: attention_step with 64 claimed threads matches the reference", "[parallel_grain]") {
  const DecodeShape shapes[] = {
      {1, 1, 5000, 8, 2, 64, false, false},   // Tk not a multiple of the tile, many pieces of one row
      {3, 1, 3001, 8, 2, 64, true, true},     // rows of 1000, 2000 and 3000 keys, sink logits
      {2, 2, 1500, 6, 3, 72, true, false},    // two draft tokens, G 2, a head size with a tail
      {4, 1, 700, 4, 4, 32, false, false},    // MHA, a few tiles per row
      {2, 1, 40, 8, 1, 64, true, false},      // one tile: a single piece, nothing to combine
  };
  std::uint64_t seed = 100;
  for (const DecodeShape& s : shapes) {
    check_attention_step<float>(s, seed, "f32");
    check_attention_step<seqmix::f16>(s, seed + 10, "f16");
    check_attention_step<seqmix::bf16>(s, seed + 20, "bf16");
    seed += 100;
  }
}

// Llama-3-8B's decode layout at a shorter Tk: 64 claimed threads give the key pieces one run and
// the combine a second one over the 32 output rows; 2 threads keep the combine on the caller.
TEST_CASE("parallel grain decode: attention_step splits keys and combines rows in parallel", "[parallel_grain]") {
  const index_t Tk = 4096, Hq = 32, Hkv = 8, D = 128;
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 7);
  const auto k = st::random_tensor<4>({1, Tk, Hkv, D}, 8), v = st::random_tensor<4>({1, Tk, Hkv, D}, 9);
  seqmix::AttentionInputs<float> in;
  in.q = q.view(), in.k = k.view(), in.v = v.view();
  Tensor<float, 4> o({1, 1, Hq, D}), o_ref({1, 1, Hq, D});
  seqmix::reference::attention(in, {o_ref.view(), {}});
  st::CountingExecutor wide(64), narrow(2);
  seqmix::attention_step(in, {o.view(), {}}, {}, wide);
  CHECK(st::compare(o.cview(), o_ref.cview(), 1e-4).ok);
  // 128 tiles of 32 keys, pieces of at least 4 tiles: 32 pieces (64 wanted, one per thread); the
  // combine of 32 rows x 32 pieces x 128 floats in tasks of 4 rows.
  CHECK(run_sizes(wide) == std::vector<index_t>{32, 8});
  seqmix::attention_step(in, {o.view(), {}}, {}, narrow);
  CHECK(st::compare(o.cview(), o_ref.cview(), 1e-4).ok);
  CHECK(run_sizes(narrow) == std::vector<index_t>{8});  // 4 pieces per thread; the combine inline
}

// ---- kv_cache_attention ------------------------------------------------------------------------

struct CacheShape {
  index_t B, Tq, T, Hq, Hkv, D;
  seqmix::KvFormat format;
  const char* name;
};

TEST_CASE("parallel grain decode: kv_cache_attention with 64 claimed threads matches the reference", "[parallel_grain]") {
  using seqmix::KvFormat;
  const CacheShape shapes[] = {
      {3, 1, 2100, 8, 2, 64, KvFormat::f16, "f16"},    // rows truncated to 2100, 1400 and 700 entries
      {2, 2, 1337, 8, 2, 64, KvFormat::bf16, "bf16"},  // two draft tokens, a residual-free ragged tail
      {2, 1, 1800, 4, 1, 64, KvFormat::int8, "int8"},  // int8 codes: the integer kernels
      {1, 1, 600, 4, 4, 48, KvFormat::f16, "f16 D 48"},
  };
  std::uint64_t seed = 500;
  for (const CacheShape& s : shapes) {
    seqmix::KvCacheConfig cfg;
    cfg.batch = s.B, cfg.kv_heads = s.Hkv, cfg.key_dim = s.D, cfg.value_dim = s.D;
    cfg.key_format = s.format, cfg.value_format = s.format;
    seqmix::KvCache cache(cfg);
    const auto k = st::random_tensor<4>({s.B, s.T, s.Hkv, s.D}, seed), v = st::random_tensor<4>({s.B, s.T, s.Hkv, s.D}, seed + 1);
    cache.append(k.view(), v.view());
    for (index_t b = 1; b < s.B; ++b) cache.truncate(b, s.T * (s.B - b) / s.B);  // ragged rows
    const auto q = st::random_tensor<4>({s.B, s.Tq, s.Hq, s.D}, seed + 2, -2.f, 2.f);
    const auto sinks = st::random_tensor<1>({s.Hq}, seed + 3);
    seqmix::KvCacheAttentionInputs in;
    in.q = q.view(), in.cache = &cache, in.sink_logits = sinks.view();
    seqmix::AttentionOptions options;
    options.causal = true;
    Tensor<float, 4> o_ref({s.B, s.Tq, s.Hq, s.D}), o({s.B, s.Tq, s.Hq, s.D});
    Tensor<float, 3> lse_ref({s.B, s.Tq, s.Hq}), lse({s.B, s.Tq, s.Hq});
    seqmix::reference::kv_cache_attention(in, {o_ref.view(), lse_ref.view()}, options);
    Executors executors;
    for (const seqmix::Executor* ex : executors.all()) {
      o.fill(-7.f), lse.fill(-7.f);
      seqmix::kv_cache_attention(in, {o.view(), lse.view()}, options, *ex);
      const auto co = st::compare(o.cview(), o_ref.cview(), 1e-4), cl = st::compare(lse.cview(), lse_ref.cview(), 1e-4);
      INFO(s.name << " B=" << s.B << " Tq=" << s.Tq << " T=" << s.T << " Hq=" << s.Hq << " Hkv=" << s.Hkv << ", "
                  << executor_name(*ex) << ": o " << co.describe() << ", lse " << cl.describe());
      CHECK(co.ok);
      CHECK(cl.ok);
    }
    seed += 10;
  }
}

// Llama-3-8B's layout, fp16, 8192 tokens: 256 blocks per head; at 64 claimed threads one piece
// per thread (8 per head) and the combine of the 32 output rows in two tasks of 16.
TEST_CASE("parallel grain decode: kv_cache_attention splits blocks and combines rows in parallel", "[parallel_grain]") {
  const index_t T = 8192, Hq = 32, Hkv = 8, D = 128;
  seqmix::KvCacheConfig cfg;
  cfg.batch = 1, cfg.kv_heads = Hkv, cfg.key_dim = D, cfg.value_dim = D;
  cfg.key_format = seqmix::KvFormat::f16, cfg.value_format = seqmix::KvFormat::f16;
  seqmix::KvCache cache(cfg);
  const auto k = st::random_tensor<4>({1, T, Hkv, D}, 11), v = st::random_tensor<4>({1, T, Hkv, D}, 12);
  cache.append(k.view(), v.view());
  const auto q = st::random_tensor<4>({1, 1, Hq, D}, 13);
  seqmix::KvCacheAttentionInputs in;
  in.q = q.view(), in.cache = &cache;
  Tensor<float, 4> o({1, 1, Hq, D}), o_ref({1, 1, Hq, D});
  seqmix::reference::kv_cache_attention(in, {o_ref.view(), {}});
  st::CountingExecutor wide(64), narrow(2);
  seqmix::kv_cache_attention(in, {o.view(), {}}, {}, wide);
  CHECK(st::compare(o.cview(), o_ref.cview(), 1e-4).ok);
  CHECK(run_sizes(wide) == std::vector<index_t>{64, 2});
  seqmix::kv_cache_attention(in, {o.view(), {}}, {}, narrow);
  CHECK(st::compare(o.cview(), o_ref.cview(), 1e-4).ok);
  CHECK(run_sizes(narrow) == std::vector<index_t>{8});  // 32 pieces in 8 blocks; the combine inline
}

// ---- linear_scan -------------------------------------------------------------------------------

struct ScanShape {
  index_t B, T, D;
  seqmix::GateSpace gate;
  bool with_h0;
};

// Scans of more than 16 MB with fewer rows than threads: one task per row up to 7 threads, the
// chunked time split from 8 on (64 claimed: 64 reductions, the carries over blocks of 16
// channels, 64 rescans).
TEST_CASE("parallel grain decode: a memory-bound linear_scan splits in time on many threads", "[parallel_grain]") {
  const ScanShape shapes[] = {
      {1, 32768, 160, seqmix::GateSpace::direct, false},  // 63 MB: T = 64 x kMinTimeChunk
      {3, 40001, 40, seqmix::GateSpace::log, true},       // ragged T, D not a multiple of 16, h0
  };
  std::uint64_t seed = 900;
  for (const ScanShape& s : shapes) {
    Tensor<float, 3> a({s.B, s.T, s.D}), b({s.B, s.T, s.D});
    if (s.gate == seqmix::GateSpace::log)
      st::fill_log_gate(a.view().reshape<1>({a.numel()}), seed, -0.5f, 0.f);
    else
      st::fill_uniform(a.view().reshape<1>({a.numel()}), seed, -1.f, 1.f);
    st::fill_uniform(b.view().reshape<1>({b.numel()}), seed + 1);
    const auto h0 = st::random_tensor<2>({s.B, s.D}, seed + 2);
    const seqmix::ConstView<float, 2> h0_view = s.with_h0 ? h0.view() : seqmix::ConstView<float, 2>();
    Tensor<float, 3> all_ref({s.B, s.T, s.D}), all({s.B, s.T, s.D});
    Tensor<float, 2> last_ref({s.B, s.D}), last({s.B, s.D});
    seqmix::LinearScanOptions options;
    options.gate_space = s.gate;
    seqmix::reference::linear_scan(a.view(), b.view(), h0_view, all_ref.view(), last_ref.view(), options);
    Executors executors;
    for (const seqmix::Executor* ex : executors.all()) {
      all.fill(-7.f), last.fill(-7.f);
      seqmix::linear_scan(a.view(), b.view(), h0_view, all.view(), last.view(), options, *ex);
      const auto ca = st::compare(all.cview(), all_ref.cview(), 2e-5), cl = st::compare(last.cview(), last_ref.cview(), 2e-5);
      INFO("B=" << s.B << " T=" << s.T << " D=" << s.D << ", " << executor_name(*ex) << ": h_all " << ca.describe()
                << ", h_last " << cl.describe());
      CHECK(ca.ok);
      CHECK(cl.ok);
    }
    CHECK(run_sizes(executors.narrow) == std::vector<index_t>{s.B});  // one row per task
    const index_t carry_blocks = (s.B * s.D + 15) / 16;
    CHECK(run_sizes(executors.wide) == std::vector<index_t>{64, carry_blocks, 64});
    seed += 10;
  }
}

}  // namespace
