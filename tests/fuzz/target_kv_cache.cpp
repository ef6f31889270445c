// Fuzz target: KvCache. A configuration (formats, per-token / per-channel keys, groups, residual
// window, rollback depth, mixed precision; sometimes out of range) and a program of operations
// on it: append (default or explicit positions, near the position limit), truncate, reset,
// retain (eviction), compact, and kv_cache_attention against reference::kv_cache_attention.
// A shadow model keeps every head's positions: the cache must list exactly those after each
// operation, and a refused operation must leave them (and the bytes held) unchanged.
#include "fuzz.hpp"

#include <algorithm>

#include "seqmix/kv_cache.hpp"

namespace seqmix::fuzz {

namespace {

using Model = std::vector<std::vector<std::int64_t>>;  // positions per (b, h), b * H + h

void require_model(const KvCache& cache, const Model& model, const std::string& after) {
  const KvCacheConfig& c = cache.config();
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.kv_heads; ++h)
      require(cache.positions(b, h) == model[static_cast<std::size_t>(b * c.kv_heads + h)],
              "KvCache positions differ from the model after " + after);
}

// Runs a cache operation: a refusal (ShapeError) must leave the positions and bytes unchanged.
template <class Op>
bool cache_op(const char* name, KvCache& cache, const Model& model, Op&& op) {
  const std::size_t bytes = cache.bytes();
  try {
    op();
    return true;
  } catch (const ShapeError&) {
    require_model(cache, model, std::string("a refused ") + name);
    require(cache.bytes() == bytes, std::string("a refused ") + name + " changed bytes()");
    return false;
  } catch (const std::exception& e) {
    fail(std::string(name) + " threw a non-ShapeError exception: " + e.what());
  }
}

}  // namespace

int fuzz_kv_cache(const std::uint8_t* data, std::size_t size) {
  Decoder in(data, size);
  KvCacheConfig config;
  config.batch = in.size(1, 3), config.kv_heads = in.size(1, 2);
  config.key_dim = in.size(1, 40), config.value_dim = in.size(1, 40);
  auto format = [&](bool value) {
    const std::uint8_t f = in.byte() % (value ? 6 : 5);
    return in.one_in(16) ? static_cast<KvFormat>(6 + in.byte() % 12) : static_cast<KvFormat>(f);
  };
  config.key_format = format(false), config.value_format = format(true);
  config.key_quant = in.flag() ? KeyQuant::per_channel : KeyQuant::per_token;
  config.group_size = in.pick<index_t>({0, 0, 1, 8, 16, 32, -1, 7});
  config.residual = in.pick<index_t>({0, 0, 4, 40});
  config.rollback = in.pick<index_t>({0, 0, 8, 70});
  if (in.one_in(5)) config.mixed = KvMixedPrecision{};
  if (in.one_in(20)) config.kv_heads = index_t{1} << 62;
  std::optional<KvCache> made;
  try {
    made.emplace(config);
  } catch (const ShapeError&) {
    return 0;  // a refused configuration
  } catch (const std::exception& e) {
    fail(std::string("KvCache construction threw a non-ShapeError exception: ") + e.what());
  }
  KvCache& cache = *made;
  const index_t B = config.batch, H = config.kv_heads, Dk = config.key_dim, Dv = config.value_dim;
  Model model(static_cast<std::size_t>(B * H));
  std::vector<std::int64_t> next(static_cast<std::size_t>(B), 0);
  const Executor& exec = executor(in);
  const int ops = 1 + in.byte() % 12;
  for (int op = 0; op < ops && !in.exhausted(); ++op) {
    const index_t b = in.range(0, B - 1), h = in.range(0, H - 1);
    auto& row = model[static_cast<std::size_t>(b * H + h)];
    switch (in.byte() % 7) {
      case 0:
      case 1: {  // append T tokens to every row
        const index_t T = in.size(0, 70);
        Tensor<float, 4> keys({B, T, H, Dk}), values({B, T, H, Dv});
        fill(keys, in, Mode::clean, -2.f, 2.f), fill(values, in, Mode::clean, -2.f, 2.f);
        Tensor<std::int64_t, 2> pos({B, T});
        const bool explicit_pos = in.flag();
        const std::uint8_t jump = in.byte() % 8;
        for (index_t r = 0; r < B; ++r) {
          std::int64_t p = next[static_cast<std::size_t>(r)];
          if (jump == 0) p = KvCache::kMaxPosition - T / 2;            // across the limit: refused
          else if (jump == 1) p = std::numeric_limits<std::int64_t>::max() - 1;
          else if (jump == 2) p += in.range(0, 1000);
          for (index_t t = 0; t < T; ++t)  // saturated: the harness must not overflow either
            pos(r, t) = p > std::numeric_limits<std::int64_t>::max() - t ? std::numeric_limits<std::int64_t>::max() : p + t;
          if (jump == 3 && T > 1) pos(r, T - 1) = pos(r, 0);            // not increasing: refused
        }
        const bool ok = cache_op("append", cache, model, [&] {
          cache.append(keys.view(), values.view(), explicit_pos ? pos.view() : ConstView<std::int64_t, 2>());
        });
        if (ok) {
          for (index_t r = 0; r < B; ++r) {
            for (index_t t = 0; t < T; ++t) {
              const std::int64_t p = explicit_pos ? pos(r, t) : next[static_cast<std::size_t>(r)] + t;
              for (index_t hh = 0; hh < H; ++hh) model[static_cast<std::size_t>(r * H + hh)].push_back(p);
            }
            if (T > 0) next[static_cast<std::size_t>(r)] = (explicit_pos ? pos(r, T - 1) : next[static_cast<std::size_t>(r)] + T - 1) + 1;
          }
        }
        break;
      }
      case 2: {  // truncate row b at a position
        const std::int64_t p = in.one_in(6) ? -1 : in.range(0, 200);
        if (cache_op("truncate", cache, model, [&] { cache.truncate(b, p); }) && p < next[static_cast<std::size_t>(b)]) {
          for (index_t hh = 0; hh < H; ++hh) {
            auto& r = model[static_cast<std::size_t>(b * H + hh)];
            r.erase(std::lower_bound(r.begin(), r.end(), p), r.end());
          }
          next[static_cast<std::size_t>(b)] = p;
        }
        break;
      }
      case 3:  // reset row b
        if (cache_op("reset", cache, model, [&] { cache.reset(b); })) {
          for (index_t hh = 0; hh < H; ++hh) model[static_cast<std::size_t>(b * H + hh)].clear();
          next[static_cast<std::size_t>(b)] = 0;
        }
        break;
      case 4: {  // retain (eviction) of (b, h)
        std::vector<index_t> kept;
        for (index_t e = 0; e < static_cast<index_t>(row.size()); ++e)
          if (in.flag()) kept.push_back(e);
        if (in.one_in(6)) kept.push_back(in.flag() ? static_cast<index_t>(row.size()) : -1);
        if (cache_op("retain", cache, model, [&] { cache.retain(b, h, kept); })) {
          std::vector<std::int64_t> r;
          for (index_t e : kept) r.push_back(row[static_cast<std::size_t>(e)]);
          row = r;
        }
        break;
      }
      case 5:
        cache_op("compact", cache, model, [&] { cache.compact(b, h); });
        break;
      default: {  // attention over the cache, fast against the reference
        const index_t Hq = H * in.size(1, 2), Tq = in.size(1, 3);
        Tensor<float, 4> q({B, Tq, Hq, Dk}), o_fast({B, Tq, Hq, Dv}), o_ref({B, Tq, Hq, Dv});
        Tensor<float, 3> l_fast({B, Tq, Hq}), l_ref({B, Tq, Hq});
        fill(q, in, Mode::clean, -2.f, 2.f);
        Tensor<std::int64_t, 2> qpos({B, Tq});
        for (index_t r = 0; r < B; ++r)
          for (index_t t = 0; t < Tq; ++t) qpos(r, t) = next[static_cast<std::size_t>(r)] + t;
        AttentionOptions options;
        options.causal = in.flag();
        options.window = in.one_in(3) ? in.size(1, 30) : 0;
        KvCacheAttentionInputs ki;
        ki.q = q.view(), ki.cache = &cache;
        if (in.flag()) ki.positions = qpos.view();
        o_fast.fill(-3.f), o_ref.fill(-3.f), l_fast.fill(-3.f), l_ref.fill(-3.f);
        Snapshot snap;
        snap.add(o_fast).add(l_fast);
        const bool fast_ok = accepted("kv_cache_attention", snap, [&] {
          kv_cache_attention(ki, {o_fast.view(), l_fast.view()}, options, exec);
        });
        const bool ref_ok = accepted("reference::kv_cache_attention", Snapshot(), [&] {
          reference::kv_cache_attention(ki, {o_ref.view(), l_ref.view()}, options);
        });
        require(fast_ok == ref_ok, "kv_cache_attention: the fast form and the reference disagree on refusing: " +
                                       last_refusal());
        if (fast_ok) {
          require_close("kv_cache_attention o", o_fast, o_ref, 1e-3, true);
          require_close("kv_cache_attention lse", l_fast, l_ref, 1e-3, true);
        }
        break;
      }
    }
    require_model(cache, model, "operation " + std::to_string(op));
  }
  return 0;
}

}  // namespace seqmix::fuzz
