// The sparse and approximate attention zoo (issue 18 item 9): every sparse / approximate attention
// of seqmix on one long input, beside dense attention, printing for each method its time, the
// keys each query touches and the error of its output against dense attention.
//
// Decoders (causal, T tokens, Hq query heads over Hkv KV heads of size D): dense flash attention,
// top-k attention with the exact and the Quest selectors (a decode-time method: run for the
// evaluated queries only), block_sparse_attention (Longformer / BigBird local + global blocks),
// moba, nsa, combiner, hyper_attention, landmark_attention, infllm, routing_attention and
// lsh_attention (shared QK, so against its own shared-QK dense baseline). Encoders (non-causal, the first Te tokens): dense,
// linformer, nystrom_attention.
//
// Two inputs:
//   random   q, k, v uniform in [-1, 1). Dense attention over random keys is a near-uniform
//            average (|o| ~ |v| / sqrt(T)), the hard case for every approximation: errors relative
//            to |o_dense| of order 1 are expected there, so the table also gives rms(o - o_dense)
//            / rms(v), the measure in which the approximations' guarantees are stated.
//   needle   the same plus one planted key k* at position T / 4 + 37 (Te / 4 for the encoders) with
//            value v* = (2, ..., 2), and the evaluated queries aimed at it:
//            q = gain sqrt(D) k* / |k*|^2 + noise, so k*'s logit is gain = 12 and dense attention
//            puts almost all of its mass on it (o ~ v*). "found" counts the evaluated (query,
//            head) rows whose output has cosine > 0.9 with v*.
// Errors and "found" are measured on the last `queries` rows (the rows a decode would produce);
// every prefill method computes all T rows and is timed for that (one call: wall time, and the
// process's CPU time, the figure to compare when the machine was shared). Keys per query is the mean
// over all queries of the keys each one's softmax covers (for top-k: over the evaluated rows).
//
// Sizes: the default run is small so that `run_examples` (scripts/main.sh) stays short:
// T = 2048, Te = 1024, Hq = 8, Hkv = 2, D = 128. --full runs the shape: T = 32768,
// Hq = 32, Hkv = 8, D = 128, Te = 8192 (several minutes on 2 cores: dense causal attention alone
// is about 8.8 TFLOP). --tokens, --encoder-tokens, --hq, --hkv, --d, --queries, --threads, --seed
// override single settings.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "seqmix/attention.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "example_common.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;

struct Settings {
  index_t T = 2048, Te = 1024, hq = 8, hkv = 2, d = 128, queries = 64;
  int threads = 2;
  unsigned seed = 1;
  float gain = 12.f;
};

void usage() {
  std::printf("usage: seqmix_example_sparse_attention_zoo [--full] [--tokens T] [--encoder-tokens Te] [--hq H]\n"
              "                                           [--hkv H] [--d D] [--queries Q] [--threads N] [--seed S]\n");
}

Settings parse(int argc, char** argv) {
  Settings s;
  seqmix_examples::Args args(argc, argv, usage);
  while (args.next()) {
    if (args.is("--full")) s.T = 32768, s.Te = 8192, s.hq = 32, s.hkv = 8, s.d = 128;
    else if (args.is("--tokens")) s.T = args.value();
    else if (args.is("--encoder-tokens")) s.Te = args.value();
    else if (args.is("--hq")) s.hq = args.value();
    else if (args.is("--hkv")) s.hkv = args.value();
    else if (args.is("--d")) s.d = args.value();
    else if (args.is("--queries")) s.queries = args.value();
    else if (args.is("--threads")) s.threads = static_cast<int>(args.value());
    else if (args.is("--seed")) s.seed = static_cast<unsigned>(args.value());
    else args.unknown();
  }
  if (s.hkv < 1 || s.hq % s.hkv != 0 || s.d < 1 || s.threads < 1 || s.queries < 1 || s.Te < 256 || s.T < 1024 ||
      s.Te > s.T || s.queries > s.Te / 4 || s.Te % 64 != 0) {
    std::fprintf(stderr, "sparse_attention_zoo: need hkv | hq, T >= 1024, 256 <= Te <= T, Te a multiple of 64, "
                         "1 <= queries <= Te / 4\n");
    std::exit(2);
  }
  return s;
}

// Deterministic uniform [-1, 1) fill.
void fill_uniform(Tensor<float, 4>& t, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (index_t e = 0; e < t.numel(); ++e) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    t.data()[e] = static_cast<float>(static_cast<double>(x >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
}

struct Input {
  Tensor<float, 4> q, k, v;
};

// Plants the needle at key position p (every KV head) and aims the queries [q0, q0 + n) at it.
void plant_needle(Input& in, index_t p, index_t q0, index_t n, const Settings& s, std::uint64_t seed) {
  std::uint64_t x = seed * 0xD1B54A32D192ED03ull + 7;
  const auto noise = [&] {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return static_cast<float>((static_cast<double>(x >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 0.5);
  };
  const index_t G = s.hq / s.hkv;
  for (index_t hk = 0; hk < s.hkv; ++hk) {
    for (index_t c = 0; c < s.d; ++c) in.v(0, p, hk, c) = 2.f;
    for (index_t i = q0; i < q0 + n; ++i)
      for (index_t g = 0; g < G; ++g)
        seqmix_examples::aim_at_key(&in.k(0, p, hk, 0), 1, s.d, s.gain, &in.q(0, i, hk * G + g, 0), 1, noise);
  }
}

// The evaluated rows [T - Q, T) of an output.
Tensor<float, 4> last_rows(const Tensor<float, 4>& o, index_t Q) {
  const index_t T = o.size(0 + 1), H = o.size(2), D = o.size(3);
  Tensor<float, 4> r({1, Q, H, D});
  for (index_t i = 0; i < Q; ++i)
    for (index_t h = 0; h < H; ++h)
      for (index_t c = 0; c < D; ++c) r(0, i, h, c) = o(0, T - Q + i, h, c);
  return r;
}

struct Timing {
  double wall_ms, cpu_ms;
};

struct Row {
  std::string method, kind;
  Timing ms;
  double keys, err_o, err_v;
  index_t found, rows;
};

Row measure(const std::string& method, const std::string& kind, Timing ms, double keys, const Tensor<float, 4>& got,
            const Tensor<float, 4>& want, const Tensor<float, 4>& v) {
  double diff = 0, norm = 0, vv = 0;
  index_t found = 0;
  const index_t Q = got.size(1), H = got.size(2), D = got.size(3);
  for (index_t i = 0; i < Q; ++i)
    for (index_t h = 0; h < H; ++h) {
      for (index_t c = 0; c < D; ++c) {
        const double a = got(0, i, h, c), b = want(0, i, h, c);
        diff += (a - b) * (a - b), norm += b * b;
      }
      if (seqmix_examples::points_at(D, [&](index_t c) { return got(0, i, h, c); }, [](index_t) { return 2.0; }, 0.9))
        ++found;
    }
  for (index_t e = 0; e < v.numel(); ++e) vv += static_cast<double>(v.data()[e]) * v.data()[e];
  const double rms_v = std::sqrt(vv / static_cast<double>(v.numel()));
  return {method, kind, ms, keys, std::sqrt(diff / norm), std::sqrt(diff / static_cast<double>(got.numel())) / rms_v,
          found, Q * H};
}

double process_cpu_ms() { return 1e3 * static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

// Wall time, and the process's CPU time: on a machine shared with other work the wall time of a
// 2-thread call stretches with the load, its CPU time much less, so the CPU column keeps the
// methods comparable when the run was not alone on the machine.
template <class F>
Timing time_ms(F&& f) {
  const double c0 = process_cpu_ms();
  const auto t0 = std::chrono::steady_clock::now();
  f();
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return {wall, process_cpu_ms() - c0};
}

std::vector<Row> run(Input& in, const Settings& s, const seqmix::ThreadPool& pool) {
  std::vector<Row> rows;
  const index_t T = s.T, Q = s.queries, G = s.hq / s.hkv;
  Tensor<float, 4> o({1, T, s.hq, s.d});
  seqmix::AttentionInputs<float> dense;
  dense.q = in.q.cview(), dense.k = in.k.cview(), dense.v = in.v.cview();
  seqmix::AttentionOptions causal;
  causal.causal = true;
  const seqmix::AttentionOutputs out{o.view(), {}};
  const double Td = static_cast<double>(T);

  // Dense causal attention: the baseline.
  const Timing dense_ms = time_ms([&] { seqmix::attention(dense, out, causal, pool); });
  const Tensor<float, 4> want = last_rows(o, Q);
  rows.push_back(measure("attention (dense, causal)", "decoder", dense_ms, (Td + 1) / 2, want, want, in.v));

  // Top-k attention over the evaluated queries (decode-time selection + gather).
  {
    const seqmix::ConstView<float, 4> q_last = in.q.cview().slice(1, T - Q, Q);
    const index_t top_k = std::min<index_t>(2048, T / 8), quest_block = 16;
    for (const bool quest : {false, true}) {
      seqmix::TopkOptions topt;
      topt.k = top_k, topt.recent = 64, topt.sink_tokens = 4, topt.block = quest ? quest_block : 1;
      const index_t N = (T + topt.block - 1) / topt.block, capacity = seqmix::topk_capacity(topt);
      Tensor<std::int32_t, 4> indices({1, Q, s.hkv, capacity});
      Tensor<float, 4> o_last({1, Q, s.hq, s.d});
      Timing ms = time_ms([&] {
        Tensor<float, 4> scores({1, Q, s.hkv, N});
        if (quest) {
          Tensor<float, 4> mn({1, N, s.hkv, s.d}), mx({1, N, s.hkv, s.d});
          seqmix::block_key_summaries(in.k.cview(), quest_block, {}, mn.view(), mx.view(), pool);
          seqmix::topk_scores_quest(q_last, mn.cview(), mx.cview(), scores.view(), pool);
        } else {
          seqmix::topk_scores_exact(q_last, in.k.cview(), scores.view(), pool);
        }
        seqmix::select_topk(scores.cview(), T, indices.view(), topt, {}, pool);
        seqmix::TopkAttentionInputs<float> tin{q_last, in.k.cview(), in.v.cview(), indices.cview()};
        seqmix::topk_attention(tin, {o_last.view(), {}}, {}, pool);
      });
      double used = 0;
      for (index_t e = 0; e < indices.numel(); ++e) used += indices.data()[e] >= 0 ? 1 : 0;
      rows.push_back(measure(quest ? "topk_attention (Quest blocks of 16, k = " + std::to_string(top_k) + ")"
                                   : "topk_attention (exact scores, k = " + std::to_string(top_k) + ")",
                             "decoder, last rows", ms, used / static_cast<double>(Q * s.hkv), o_last, want, in.v));
    }
  }

  // Block-sparse: Longformer / BigBird local + global blocks of 64.
  {
    seqmix::BlockGrid grid;
    grid.Tq = T, grid.Tk = T, grid.block_q = 64, grid.block_k = 64;
    seqmix::LocalGlobalPattern lg;
    lg.window_blocks = 4, lg.global_blocks = 1, lg.random_blocks = 2, lg.seed = s.seed;
    const seqmix::BlockPattern pattern = seqmix::local_global_pattern(grid, lg);
    const Timing ms = time_ms([&] { seqmix::block_sparse_attention(dense, pattern.layout(), out, causal, pool); });
    double keys = 0;
    const index_t Nq = static_cast<index_t>(pattern.offsets.size()) - 1;
    for (index_t qb = 0; qb < Nq; ++qb)
      for (index_t i = qb * 64; i < std::min((qb + 1) * 64, T); ++i)
        for (std::int32_t e = pattern.offsets[static_cast<std::size_t>(qb)]; e < pattern.offsets[static_cast<std::size_t>(qb + 1)]; ++e) {
          const index_t j0 = static_cast<index_t>(pattern.indices[static_cast<std::size_t>(e)]) * 64;
          keys += static_cast<double>(std::max<index_t>(0, std::min(j0 + 64, i + 1) - j0));
        }
    rows.push_back(measure("block_sparse_attention (local 4 + global 1 + random 2 blocks of 64)", "decoder", ms, keys / Td,
                           last_rows(o, Q), want, in.v));
  }

  // moba: blocks of 512 (T / 8 if smaller), own block + 3.
  {
    seqmix::MobaOptions mo;
    mo.block_size = std::min<index_t>(512, T / 8), mo.top_k = 3;
    seqmix::MobaInputs<float> min{in.q.cview(), in.k.cview(), in.v.cview(), {}};
    const Timing ms = time_ms([&] { seqmix::moba(min, out, mo, pool); });
    double keys = 0;
    for (index_t i = 0; i < T; ++i)
      keys += static_cast<double>(i % mo.block_size + 1 + std::min(mo.top_k, i / mo.block_size) * mo.block_size);
    rows.push_back(measure("moba (block " + std::to_string(mo.block_size) + ", top_k 3)", "decoder", ms, keys / Td,
                           last_rows(o, Q), want, in.v));
  }

  // nsa: the paper's settings, equal gates.
  {
    seqmix::NsaOptions no;
    Tensor<float, 4> gates({1, T, s.hq, 3});
    gates.fill(1.f / 3.f);
    seqmix::NsaInputs<float> nin{in.q.cview(), in.k.cview(), in.v.cview(), gates.cview(), {}, {}};
    const Timing ms = time_ms([&] { seqmix::nsa(nin, o.view(), no, pool); });
    double keys = 0;
    for (index_t i = 0; i < T; ++i) {
      const index_t visible = i + 1 < no.compress_block ? 0 : (i + 1 - no.compress_block) / no.compress_stride + 1;
      keys += static_cast<double>(visible + std::min(no.top_n * no.select_block, i + 1) + std::min(no.window, i + 1));
    }
    rows.push_back(measure("nsa (l 32, d 16, l' 64, top_n 16, window 512, gates 1/3)", "decoder", ms, keys / Td,
                           last_rows(o, Q), want, in.v));
  }

  // combiner: blocks of about sqrt(T), block means as summaries.
  {
    seqmix::CombinerOptions co;
    co.block_size = static_cast<index_t>(std::sqrt(Td));
    const Timing ms = time_ms([&] {
      seqmix::combiner(seqmix::CombinerInputs{in.q.cview(), in.k.cview(), in.v.cview(), {}, {}}, out, co, pool);
    });
    double keys = 0;
    for (index_t i = 0; i < T; ++i) keys += static_cast<double>(i % co.block_size + 1 + i / co.block_size);
    rows.push_back(measure("combiner (block " + std::to_string(co.block_size) + ")", "decoder", ms, keys / Td,
                           last_rows(o, Q), want, in.v));
  }

  // hyper_attention: blocks of 256, 256 sampled columns, exact below 1024 (T / 4 if smaller).
  {
    seqmix::HyperAttentionOptions ho;
    ho.block_size = 256, ho.sample_size = 256, ho.min_seq_len = std::min<index_t>(1024, T / 4), ho.seed = s.seed;
    const Timing ms = time_ms([&] {
      seqmix::hyper_attention(seqmix::HyperAttentionInputs<float>{in.q.cview(), in.k.cview(), in.v.cview()}, out, ho, pool);
    });
    std::vector<seqmix::detail::HyperPart> leaves, parts;
    seqmix::detail::hyper_causal_plan(0, T, ho.min_seq_len, leaves, parts);
    double keys = 0;
    for (const auto& l : leaves) keys += 0.5 * static_cast<double>(l.nq) * static_cast<double>(l.nq + 1);
    for (const auto& p : parts)
      keys += static_cast<double>(p.nq) *
              static_cast<double>(p.nq <= ho.min_seq_len ? p.nk : std::min(p.nk, ho.block_size) + ho.sample_size);
    rows.push_back(measure("hyper_attention (block 256, 256 samples, min_seq_len " + std::to_string(ho.min_seq_len) + ")",
                           "decoder", ms, keys / Td, last_rows(o, Q), want, in.v));
  }
  // landmark: blocks of 64 with their mean keys as landmarks, the top 4 earlier blocks retrieved
  // by landmark logit (the paper's inference-time retrieval).
  {
    seqmix::LandmarkOptions lo;
    lo.block_size = 64, lo.top_k = 4;
    seqmix::LandmarkInputs<float> lin;
    lin.q = in.q.cview(), lin.k = in.k.cview(), lin.v = in.v.cview();
    const Timing ms = time_ms([&] { seqmix::landmark_attention(lin, out, lo, pool); });
    double keys = 0;  // own block up to the query, the retrieved blocks, and every earlier landmark scored
    for (index_t i = 0; i < T; ++i)
      keys += static_cast<double>(i % lo.block_size + 1 + std::min(lo.top_k, i / lo.block_size) * lo.block_size +
                                  i / lo.block_size);
    rows.push_back(measure("landmark_attention (block 64, top_k 4, mean-key landmarks)", "decoder", ms, keys / Td,
                           last_rows(o, Q), want, in.v));
  }

  // infllm: 128 initial tokens, a local window of T / 8 (4096 at most), memory blocks of 128
  // with 4 representative keys, top 4 blocks; one call over the whole prompt.
  {
    seqmix::InfllmOptions io;
    io.block_size = 128, io.representatives = 4, io.top_k = 4, io.init_tokens = 128;
    io.local_window = std::min<index_t>(4096, T / 8);
    seqmix::InfllmMemory memory(1, s.hq, s.hkv, s.d, io);
    seqmix::InfllmInputs<float> iin{in.q.cview(), in.k.cview(), in.v.cview()};
    const Timing ms = time_ms([&] { seqmix::infllm_attention(memory, iin, out, pool); });
    double keys = 0;  // initial + retrieved + local keys, and the representatives scored
    for (index_t pos = 0; pos < T; ++pos) {
      const index_t M = std::max<index_t>(0, (pos + 1 - io.local_window - io.init_tokens) / io.block_size);
      const index_t local_start = io.init_tokens + M * io.block_size;
      keys += static_cast<double>(std::min(io.init_tokens, pos + 1) + std::min(io.top_k, M) * io.block_size +
                                  std::max<index_t>(0, pos + 1 - local_start) + M * io.representatives);
    }
    rows.push_back(measure("infllm (init 128, window " + std::to_string(io.local_window) + ", blocks 128, r 4, top_k 4)",
                           "decoder", ms, keys / Td, last_rows(o, Q), want, in.v));
  }
  // routing_attention: sqrt(T) / 2 clusters of w = 2 T / C tokens per query head, centroids the
  // unit keys at evenly spaced positions (a k-means start; a model would learn them by the EMA).
  {
    const index_t C = std::max<index_t>(1, static_cast<index_t>(std::sqrt(Td)) / 2);
    seqmix::RoutingOptions ro;
    ro.cluster_size = std::min<index_t>(T, 2 * ((T + C - 1) / C));
    Tensor<float, 3> centroids({s.hq, C, s.d});
    for (index_t h = 0; h < s.hq; ++h)
      for (index_t c = 0; c < C; ++c) {
        const index_t j = (2 * c + 1) * T / (2 * C);
        double n2 = 0;
        for (index_t e = 0; e < s.d; ++e) n2 += static_cast<double>(in.k(0, j, h / G, e)) * in.k(0, j, h / G, e);
        for (index_t e = 0; e < s.d; ++e) centroids(h, c, e) = static_cast<float>(in.k(0, j, h / G, e) / std::sqrt(n2));
      }
    const Timing ms = time_ms([&] {
      seqmix::routing_attention(seqmix::RoutingInputs{in.q.cview(), in.k.cview(), in.v.cview(), centroids.cview()}, out, ro,
                                pool);
    });
    // Each cluster: w queries over the members before them, about w / 2 keys each, C w pairs of
    // (query, cluster) spread over the T queries.
    const double keys = static_cast<double>(C) * static_cast<double>(ro.cluster_size) * (ro.cluster_size / 2.0) / Td;
    rows.push_back(measure("routing_attention (" + std::to_string(C) + " clusters of " + std::to_string(ro.cluster_size) +
                               "; keys / query approximate)",
                           "decoder", ms, keys, last_rows(o, Q), want, in.v));
  }

  // lsh_attention: Reformer's shared-QK attention (the keys are the normalized queries, no GQA),
  // so its baseline is dense causal attention over those keys with v repeated to the query heads
  // (it differs from that only by Reformer's rule that a query does not attend to itself unless
  // alone). The needle of the other rows is in k, which shared QK does not read: no "found".
  {
    Tensor<float, 4> kn({1, T, s.hq, s.d}), vr({1, T, s.hq, s.d});
    for (index_t j = 0; j < T; ++j)
      for (index_t h = 0; h < s.hq; ++h) {
        double n2 = 0;
        for (index_t e = 0; e < s.d; ++e) n2 += static_cast<double>(in.q(0, j, h, e)) * in.q(0, j, h, e);
        for (index_t e = 0; e < s.d; ++e) {
          kn(0, j, h, e) = n2 > 0 ? static_cast<float>(in.q(0, j, h, e) / std::sqrt(n2)) : 0.f;
          vr(0, j, h, e) = in.v(0, j, h / G, e);
        }
      }
    seqmix::AttentionInputs<float> shared;
    shared.q = in.q.cview(), shared.k = kn.cview(), shared.v = vr.cview();
    const Timing bms = time_ms([&] { seqmix::attention(shared, out, causal, pool); });
    const Tensor<float, 4> want_shared = last_rows(o, Q);
    seqmix::LshOptions lo;
    lo.n_buckets = 64, lo.n_rounds = 4, lo.chunk_len = 64, lo.seed = s.seed;
    const Timing ms = time_ms([&] { seqmix::lsh_attention(seqmix::LshInputs{in.q.cview(), vr.cview(), {}}, out, lo, pool); });
    Row base = measure("attention (dense, causal, shared QK: lsh_attention's baseline)", "decoder", bms, (Td + 1) / 2,
                       want_shared, want_shared, vr);
    Row lsh = measure("lsh_attention (64 buckets, 4 rounds, chunks of 64; vs the shared-QK baseline; keys / query at most)",
                      "decoder", ms, static_cast<double>(lo.n_rounds * 2 * lo.chunk_len), last_rows(o, Q), want_shared, vr);
    base.found = lsh.found = -1;
    rows.push_back(base);
    rows.push_back(lsh);
  }

  // Encoders: the first Te tokens, non-causal.
  {
    const index_t Te = s.Te;
    const double Ted = static_cast<double>(Te);
    seqmix::AttentionInputs<float> enc;
    enc.q = in.q.cview().slice(1, 0, Te), enc.k = in.k.cview().slice(1, 0, Te), enc.v = in.v.cview().slice(1, 0, Te);
    Tensor<float, 4> oe({1, Te, s.hq, s.d});
    const Tensor<float, 4> ve = [&] {
      Tensor<float, 4> t({1, Te, s.hkv, s.d});
      for (index_t e = 0; e < t.numel(); ++e) t.data()[e] = in.v.data()[e];
      return t;
    }();
    const Timing dms = time_ms([&] { seqmix::attention(enc, {oe.view(), {}}, {}, pool); });
    const Tensor<float, 4> want_e = last_rows(oe, Q);
    rows.push_back(measure("attention (dense, non-causal)", "encoder", dms, Ted, want_e, want_e, ve));
    const index_t kp = std::min<index_t>(256, Te / 4);
    Tensor<float, 2> e({kp, Te});
    {
      // The paper's JL projection: entries of variance 1 / kp.
      std::uint64_t x = s.seed * 0x2545F4914F6CDD1Dull + 3;
      const double a = std::sqrt(3.0 / static_cast<double>(kp));
      for (index_t i = 0; i < e.numel(); ++i) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        e.data()[i] = static_cast<float>((static_cast<double>(x >> 11) * 0x1.0p-53 * 2.0 - 1.0) * a);
      }
    }
    const Timing lms = time_ms([&] {
      seqmix::linformer(seqmix::LinformerInputs{enc.q, enc.k, enc.v, e.cview(), e.cview()}, {oe.view(), {}}, {}, pool);
    });
    rows.push_back(measure("linformer (kp " + std::to_string(kp) + ", random E = F)", "encoder", lms, static_cast<double>(kp),
                           last_rows(oe, Q), want_e, ve));
    seqmix::NystromOptions no;
    no.landmarks = 64;
    const Timing nms = time_ms([&] {
      seqmix::nystrom_attention(seqmix::NystromInputs{enc.q, enc.k, enc.v, {}}, oe.view(), no, pool);
    });
    rows.push_back(measure("nystrom_attention (64 landmarks, 6 iterations)", "encoder", nms, 2.0 * 64, last_rows(oe, Q),
                           want_e, ve));
  }
  return rows;
}

void print(const char* title, const std::vector<Row>& rows, bool needle) {
  std::printf("\n### %s\n\n", title);
  std::printf("| method | kind | wall ms | cpu ms | keys / query | err vs dense (rel. to o) | rms err / rms v |%s\n",
              needle ? " needle found |" : "");
  std::printf("|---|---|---:|---:|---:|---:|---:|%s\n", needle ? "---:|" : "");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %.1f | %.1f | %.0f | %.3g | %.3g |", r.method.c_str(), r.kind.c_str(), r.ms.wall_ms, r.ms.cpu_ms, r.keys, r.err_o, r.err_v);
    if (needle && r.found < 0) std::printf(" n/a |");
    else if (needle) std::printf(" %lld / %lld |", static_cast<long long>(r.found), static_cast<long long>(r.rows));
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Settings s = parse(argc, argv);
  // Line-buffered: a --full run takes minutes, and its rows should appear as they come in a log.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const seqmix::ThreadPool pool(s.threads);
  std::printf("## sparse / approximate attention zoo\n\nDecoders: T = %lld, Hq = %lld, Hkv = %lld, D = %lld (causal); "
              "encoders: Te = %lld (non-causal). Errors over the last %lld queries, %d threads.\n",
              static_cast<long long>(s.T), static_cast<long long>(s.hq), static_cast<long long>(s.hkv),
              static_cast<long long>(s.d), static_cast<long long>(s.Te), static_cast<long long>(s.queries), s.threads);
  Input in{Tensor<float, 4>({1, s.T, s.hq, s.d}), Tensor<float, 4>({1, s.T, s.hkv, s.d}), Tensor<float, 4>({1, s.T, s.hkv, s.d})};
  fill_uniform(in.q, s.seed * 3 + 1), fill_uniform(in.k, s.seed * 3 + 2), fill_uniform(in.v, s.seed * 3 + 3);
  print("random q, k, v", run(in, s, pool), false);
  // The needle: in the decoders' haystack at T / 4 + 37 for the last rows (inside a block of every
  // block size used here, not at its start: at a block start it would be one of infllm's
  // representative keys by construction, see below), and at Te / 4 for the encoders' last rows
  // (the first Te tokens).
  plant_needle(in, s.T / 4 + 37, s.T - s.queries, s.queries, s, s.seed + 11);
  plant_needle(in, s.Te / 4, s.Te - s.queries, s.queries, s, s.seed + 12);
  print("needle in a haystack", run(in, s, pool), true);
  return 0;
}
