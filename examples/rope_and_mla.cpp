// Rotary embeddings and multi-head latent attention on model-shaped layers:
//
//  1. A Llama-3.1-8B attention layer (32 query heads, 8 KV heads of 128, RoPE with Llama-3
//     scaling built from the HF config keys): the prompt's keys are rotated once as they enter a
//     4096-token fp16 cache, then one decode step rotates its query at position 4096 and attends.
//  2. A DeepSeek-V2-Lite-shaped MLA layer (16 heads, kv_lora_rank 512, qk_rope_head_dim 64,
//     qk_nope_head_dim = v_head_dim = 128, YaRN RoPE interleaved): prefill in the expanded form,
//     then decode steps in the absorbed form reading only the fp16 latent cache.
// Each path is checked against the naive one (reference::rope + reference::attention /
// reference::mla in double) and the cache bytes per token and layer are printed; the MLA cache
// also as int8 latents in pages (mla_latent_append / mla_latent_decode).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "seqmix/seqmix.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;

template <class T, std::size_t R>
void fill(Tensor<T, R>& t, std::uint64_t seed, float scale = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (auto& x : t) x = static_cast<T>(u(rng));
}

template <class A, class B>
double max_rel_error(const A& out, const B& ref) {
  double err = 0, mag = 1e-30;
  for (index_t i = 0; i < out.numel(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(out.data()[i]) - static_cast<double>(ref.data()[i])));
    mag = std::max(mag, std::abs(static_cast<double>(ref.data()[i])));
  }
  return err / mag;
}

void llama3_layer(const seqmix::Executor& pool) {
  const index_t Tk = 4096, Hq = 32, Hkv = 8, D = 128;
  seqmix::HfRopeKeys keys;  // config.json of Llama-3.1-8B
  keys.head_dim = D;
  keys.rope_theta = 500000.0;
  keys.max_position_embeddings = 131072;
  keys.rope_type = "llama3";
  keys.factor = 8.0;
  keys.low_freq_factor = 1.0;
  keys.high_freq_factor = 4.0;
  keys.original_max_position_embeddings = 8192;
  const seqmix::RopeTable table(seqmix::rope_config_from_hf(keys), 8192);

  // Prompt keys rotated once at positions 0..Tk-1, stored fp16; the new query at position Tk.
  Tensor<float, 4> k({1, Tk, Hkv, D}), k_rot({1, Tk, Hkv, D}), v({1, Tk, Hkv, D}), q({1, 1, Hq, D}),
      q_rot({1, 1, Hq, D});
  fill(k, 1), fill(v, 2), fill(q, 3);
  seqmix::rope(table, {k.view(), {}}, {k_rot.view()}, pool);
  const std::vector<std::int64_t> step_position = {Tk};
  seqmix::rope(table, {q.view(), step_position}, {q_rot.view()}, pool);
  Tensor<seqmix::f16, 4> k_cache({1, Tk, Hkv, D}), v_cache({1, Tk, Hkv, D});
  for (index_t i = 0; i < k.numel(); ++i)
    k_cache.data()[i] = seqmix::f16(k_rot.data()[i]), v_cache.data()[i] = seqmix::f16(v.data()[i]);
  Tensor<float, 4> o({1, 1, Hq, D}), o_ref({1, 1, Hq, D});
  seqmix::AttentionInputs<seqmix::f16> in;
  in.q = q_rot.view(), in.k = k_cache.view(), in.v = v_cache.view();
  seqmix::attention(in, {o.view(), {}}, {}, pool);

  // The same step with the rope fused (issue 15 item 2): q goes in unrotated and is rotated at
  // its position in the kernel's q tile; the cache holds rotated keys (rope_rotated_keys = Tk), as
  // KvCache::append or paged_kv_append with the table would have stored them.
  Tensor<std::int64_t, 2> query_position({1, 1});
  query_position(0, 0) = Tk;
  seqmix::AttentionInputs<seqmix::f16> fused = in;
  fused.q = q.view(), fused.positions = query_position.view();
  fused.rope = &table, fused.rope_rotated_keys = Tk;
  Tensor<float, 4> o_fused({1, 1, Hq, D});
  seqmix::attention(fused, {o_fused.view(), {}}, {}, pool);

  // Naive: rotate in double from the frequencies, attend over the same fp16 values.
  Tensor<float, 4> k_naive({1, Tk, Hkv, D}), q_naive({1, 1, Hq, D});
  seqmix::reference::rope(table, {k.view(), {}}, {k_naive.view()});
  seqmix::reference::rope(table, {q.view(), step_position}, {q_naive.view()});
  Tensor<seqmix::f16, 4> k_naive16({1, Tk, Hkv, D});
  for (index_t i = 0; i < k.numel(); ++i) k_naive16.data()[i] = seqmix::f16(k_naive.data()[i]);
  seqmix::AttentionInputs<seqmix::f16> ref_in;
  ref_in.q = q_naive.view(), ref_in.k = k_naive16.view(), ref_in.v = v_cache.view();
  seqmix::reference::attention(ref_in, {o_ref.view(), {}});
  std::printf("Llama-3.1-8B layer, decode at position %ld over a %ld-token fp16 cache (llama3 RoPE, factor 8)\n",
              static_cast<long>(Tk), static_cast<long>(Tk));
  std::printf("  rotated keys: max rel. diff %.2e against the double loop\n", max_rel_error(k_rot, k_naive));
  std::printf("  decode output: max rel. diff %.2e against reference rope + attention\n", max_rel_error(o, o_ref));
  std::printf("  decode with the rope fused (q rotated in the kernel): max rel. diff %.2e\n", max_rel_error(o_fused, o_ref));
  std::printf("  GQA cache: %ld bytes per token and layer (K and V, %ld heads of %ld, fp16)\n",
              static_cast<long>(2 * Hkv * D * 2), static_cast<long>(Hkv), static_cast<long>(D));
}

void deepseek_mla_layer(const seqmix::Executor& pool) {
  const index_t H = 16, dn = 128, dr = 64, dc = 512, dv = 128, T = 192, steps = 3;
  seqmix::HfRopeKeys keys;  // DeepSeek-V2-Lite
  keys.head_dim = dr;
  keys.rope_theta = 10000.0;
  keys.max_position_embeddings = 163840;
  keys.rope_type = "yarn";
  keys.factor = 40.0;
  keys.beta_fast = 32.0;
  keys.beta_slow = 1.0;
  keys.mscale = 0.707;
  keys.mscale_all_dim = 0.707;
  keys.original_max_position_embeddings = 4096;
  keys.interleaved = true;
  const seqmix::RopeTable table(seqmix::rope_config_from_hf(keys), 4096);
  // DeepSeek's softmax scale: 1/sqrt(d_nope + d_r) times mscale(factor, mscale_all_dim)^2.
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  seqmix::MlaOptions options;
  options.scale = static_cast<float>(m * m / std::sqrt(static_cast<double>(dn + dr)));

  const index_t Tmax = T + steps;
  Tensor<float, 3> w({H, dn + dv, dc});  // kv_b_proj viewed per head
  fill(w, 4, 1.f / std::sqrt(static_cast<float>(dc)));
  const seqmix::MlaWeights weights{w.view().slice(1, 0, dn), w.view().slice(1, dn, dv)};
  Tensor<float, 3> c_kv({1, Tmax, dc}), k_rope_raw({1, Tmax, dr}), k_rope({1, Tmax, dr});
  fill(c_kv, 5), fill(k_rope_raw, 6);
  // The shared rotary key is one head: rotate [1, Tmax, 1, d_r] once, as it enters the cache.
  const seqmix::ConstView<float, 4> kr_in(k_rope_raw.data(), {1, Tmax, 1, dr});
  seqmix::rope(table, {kr_in, {}}, {seqmix::TensorView<float, 4>(k_rope.data(), {1, Tmax, 1, dr})}, pool);
  Tensor<seqmix::f16, 3> c_cache({1, Tmax, dc}), r_cache({1, Tmax, dr});
  for (index_t i = 0; i < c_kv.numel(); ++i) c_cache.data()[i] = seqmix::f16(c_kv.data()[i]);
  for (index_t i = 0; i < k_rope.numel(); ++i) r_cache.data()[i] = seqmix::f16(k_rope.data()[i]);

  // Prefill the prompt (expanded form) and compare with the naive expanded reference.
  Tensor<float, 4> q_nope({1, T, H, dn}), q_rope_raw({1, T, H, dr}), q_rope({1, T, H, dr});
  fill(q_nope, 7), fill(q_rope_raw, 8);
  seqmix::rope(table, {q_rope_raw.view(), {}}, {q_rope.view()}, pool);
  const seqmix::MlaPrefillInputs<seqmix::f16> prefill{q_nope.view(), q_rope.view(), c_cache.view().slice(1, 0, T),
                                                      r_cache.view().slice(1, 0, T), weights};
  Tensor<float, 4> o({1, T, H, dv}), o_ref({1, T, H, dv});
  seqmix::mla_prefill(prefill, {o.view(), {}}, options, pool);
  seqmix::reference::mla(prefill, {o_ref.view(), {}}, options);
  std::printf("DeepSeek-V2-Lite-shaped MLA layer (H=%ld, d_c=%ld, d_r=%ld, YaRN factor 40), fp16 latent cache\n",
              static_cast<long>(H), static_cast<long>(dc), static_cast<long>(dr));
  std::printf("  prefill of %ld tokens, expanded form: max rel. diff %.2e against the naive reference\n",
              static_cast<long>(T), max_rel_error(o, o_ref));

  // Decode steps, absorbed form, each against the naive expanded attention over the same cache.
  double worst = 0;
  for (index_t s = 0; s < steps; ++s) {
    const index_t L = T + s + 1;  // the step's own latent is already cached
    Tensor<float, 3> qn({1, H, dn}), qr_raw({1, H, dr}), qr({1, H, dr});
    fill(qn, 20 + s), fill(qr_raw, 30 + s);
    const std::vector<std::int64_t> pos = {L - 1};
    seqmix::rope(table, {seqmix::ConstView<float, 4>(qr_raw.data(), {1, 1, H, dr}), pos},
                 {seqmix::TensorView<float, 4>(qr.data(), {1, 1, H, dr})}, pool);
    const std::vector<std::int64_t> lens = {L};
    const seqmix::MlaDecodeInputs<seqmix::f16> dec{qn.view(), qr.view(), c_cache.view(), r_cache.view(), lens, weights};
    Tensor<float, 3> od({1, H, dv});
    seqmix::mla_decode(dec, {od.view(), {}}, options, pool);
    const seqmix::MlaPrefillInputs<seqmix::f16> naive{seqmix::ConstView<float, 4>(qn.data(), {1, 1, H, dn}),
                                                      seqmix::ConstView<float, 4>(qr.data(), {1, 1, H, dr}),
                                                      c_cache.view().slice(1, 0, L), r_cache.view().slice(1, 0, L),
                                                      weights};
    Tensor<float, 4> od_ref({1, 1, H, dv});
    seqmix::reference::mla(naive, {od_ref.view(), {}}, options);
    worst = std::max(worst, max_rel_error(od, od_ref));
  }
  std::printf("  %ld decode steps, absorbed form: max rel. diff %.2e against the naive expanded attention\n",
              static_cast<long>(steps), worst);
  std::printf("  latent cache: %ld bytes per token and layer (c_kv %ld + k_rope %ld, fp16)\n",
              static_cast<long>((dc + dr) * 2), static_cast<long>(dc), static_cast<long>(dr));
  std::printf("  expanded K/V for the same heads would be %ld bytes per token\n",
              static_cast<long>(H * (dn + dr + dv) * 2));

  // The same cache as int8 latents in 64-token pages (per-token min-max groups of the KvCache
  // quantizers), filled by one append that rotates the raw rotary keys as it stores them, and the
  // last decode step over it against the naive expanded attention over the fp32 latents.
  const index_t bs = 64, pages = (Tmax + bs - 1) / bs;
  Tensor<std::uint8_t, 3> codes({pages, bs, dc});
  Tensor<float, 4> params({pages, bs, 1, 2});
  Tensor<seqmix::f16, 3> kr_pages({pages, bs, dr});
  Tensor<std::int32_t, 2> table_ids({1, pages});
  for (index_t i = 0; i < pages; ++i) table_ids(0, i) = static_cast<std::int32_t>(pages - 1 - i);
  const seqmix::MlaQuantizedLatents<seqmix::f16> q8{seqmix::KvFormat::int8, 0, codes.view(), params.view(),
                                                    kr_pages.view(), dc};
  seqmix::MlaLatentAppendInputs append;
  const std::vector<std::int64_t> none = {0}, all = {Tmax};
  append.c_kv = c_kv.view(), append.k_rope = k_rope_raw.view(), append.block_table = table_ids.cview();
  append.cache_seqlens = none, append.rope = &table;
  seqmix::mla_latent_append(append, q8, pool);
  Tensor<float, 3> qn({1, H, dn}), qr_raw({1, H, dr}), qr({1, H, dr});
  fill(qn, 20 + steps - 1), fill(qr_raw, 30 + steps - 1);
  const std::vector<std::int64_t> last = {Tmax - 1};
  seqmix::rope(table, {seqmix::ConstView<float, 4>(qr_raw.data(), {1, 1, H, dr}), last},
               {seqmix::TensorView<float, 4>(qr.data(), {1, 1, H, dr})}, pool);
  const seqmix::MlaLatentDecodeInputs<seqmix::f16> dq{qn.view(), qr.view(), q8, table_ids.cview(), all, weights};
  Tensor<float, 3> o8({1, H, dv});
  seqmix::mla_latent_decode(dq, {o8.view(), {}}, options, pool);
  const seqmix::MlaPrefillInputs<float> naive32{seqmix::ConstView<float, 4>(qn.data(), {1, 1, H, dn}),
                                                seqmix::ConstView<float, 4>(qr.data(), {1, 1, H, dr}), c_kv.view(),
                                                k_rope.view(), weights};
  Tensor<float, 4> o32({1, 1, H, dv});
  seqmix::reference::mla(naive32, {o32.view(), {}}, options);
  std::printf("  int8 latents in 64-token pages: %ld bytes per token and layer, decode max rel. diff %.2e against\n"
              "  the naive expanded attention over fp32 latents\n",
              static_cast<long>(seqmix::mla_latent_bytes_per_token(seqmix::KvFormat::int8, dc, 0, dr)),
              max_rel_error(o8, o32));
}

}  // namespace

int main() {
  const seqmix::ThreadPool pool(2);
  llama3_layer(pool);
  deepseek_mla_layer(pool);
  return 0;
}
