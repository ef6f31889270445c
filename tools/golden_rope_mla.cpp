// Writes the conformance cases of rope, mla_prefill, mla_decode and attention_positional (attention
// with a fused rope, a T5 / KERPLE / FIRE relative bias and head scales) into <golden>/<op>/<case>/
// (tests/golden/README.md), computed by plain double-precision loops written here from the
// formulas of docs/operators.md section 10, transformers' rope utilities and T5 bucketing, and
// the FIRE paper. Nothing of seqmix is
// used but its .npy writer, so the vectors are independent of the operators they check.
//
//   g++ -std=c++17 -O2 -I include tools/golden_rope_mla.cpp -o golden_rope_mla
//   ./golden_rope_mla tests/golden
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "golden_common.hpp"

namespace {

using namespace golden;
const double kPi = 3.14159265358979323846;

// Every input here is uniform in [-scale, scale).
Array random_array(std::vector<index_t> shape, std::mt19937_64& rng, double scale = 1.0) {
  return golden::random_array(std::move(shape), rng, -scale, scale);
}

// ---- rope ---------------------------------------------------------------------------------

struct Rope {
  std::string scheme, layout;
  int R = 0;
  double base = 10000, factor = 1, L0 = 0, M = 0, beta_fast = 32, beta_slow = 1, mscale = 0, mscale_all_dim = 0;
  double low = 1, high = 4;
  std::vector<double> short_factor, long_factor;
  double L = 0;  // sequence length the table serves
};

// transformers' _compute_*_parameters, restated.
void frequencies(const Rope& c, std::vector<double>& inv, double& m) {
  const int dim = c.R;
  inv.clear();
  m = 1.0;
  double base = c.base;
  if (c.scheme == "ntk") base = c.base * std::pow(c.factor, dim / (dim - 2.0));
  if (c.scheme == "dynamic_ntk" && c.L > c.L0)
    base = c.base * std::pow(c.factor * c.L / c.L0 - (c.factor - 1.0), dim / (dim - 2.0));
  for (int k = 0; k < dim; k += 2) inv.push_back(1.0 / std::pow(base, static_cast<double>(k) / dim));
  auto get_mscale = [](double s, double ms) { return s <= 1 ? 1.0 : 0.1 * ms * std::log(s) + 1.0; };
  if (c.scheme == "linear")
    for (auto& w : inv) w /= c.factor;
  if (c.scheme == "yarn") {
    auto corr = [&](double rot) { return dim * std::log(c.L0 / (rot * 2 * kPi)) / (2 * std::log(c.base)); };
    double lo = std::max(std::floor(corr(c.beta_fast)), 0.0), hi = std::min(std::ceil(corr(c.beta_slow)), dim - 1.0);
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < dim / 2; ++i) {
      const double ramp = std::min(1.0, std::max(0.0, (i - lo) / (hi - lo)));
      inv[i] = inv[i] / c.factor * ramp + inv[i] * (1 - ramp);
    }
    m = (c.mscale != 0 && c.mscale_all_dim != 0) ? get_mscale(c.factor, c.mscale) / get_mscale(c.factor, c.mscale_all_dim)
                                                 : get_mscale(c.factor, 1.0);
  }
  if (c.scheme == "llama3")
    for (auto& w : inv) {
      const double wl = 2 * kPi / w;
      if (wl > c.L0 / c.low) {
        w /= c.factor;
      } else if (wl >= c.L0 / c.high) {
        const double s = (c.L0 / wl - c.low) / (c.high - c.low);
        w = (1 - s) * w / c.factor + s * w;
      }
    }
  if (c.scheme == "longrope") {
    const auto& ext = c.L > c.L0 ? c.long_factor : c.short_factor;
    for (int i = 0; i < dim / 2; ++i) inv[i] /= ext[i];
    const double f = c.M / c.L0;
    m = f <= 1 ? 1.0 : std::sqrt(1 + std::log(f) / std::log(c.L0));
  }
}

void rope_case(const fs::path& root, const std::string& name, const Rope& c, index_t B, index_t T, index_t H,
               index_t D, const std::vector<double>& pos, index_t table_positions, std::mt19937_64& rng) {
  std::vector<double> inv;
  double m = 1;
  frequencies(c, inv, m);
  const Array x = random_array({B, T, H, D}, rng);
  Array out{x.shape, x.v}, positions{{B * T}, pos};
  for (index_t bt = 0; bt < B * T; ++bt)
    for (index_t h = 0; h < H; ++h)
      for (int i = 0; i < c.R / 2; ++i) {
        const index_t a = c.layout == "interleaved" ? 2 * i : i, o = c.layout == "interleaved" ? 2 * i + 1 : i + c.R / 2;
        const index_t base = (bt * H + h) * D;
        const double th = pos[bt] * inv[i];
        out.v[base + a] = m * (x.v[base + a] * std::cos(th) - x.v[base + o] * std::sin(th));
        out.v[base + o] = m * (x.v[base + o] * std::cos(th) + x.v[base + a] * std::sin(th));
      }
  const fs::path dir = root / "rope" / name;
  char params[1024];
  std::snprintf(params, sizeof params,
                "\"scheme\": \"%s\", \"layout\": \"%s\", \"rotary_dim\": %d, \"base\": %.17g, \"factor\": %.17g, "
                "\"original_max_position_embeddings\": %.0f, \"max_position_embeddings\": %.0f, \"beta_fast\": %.17g, "
                "\"beta_slow\": %.17g, \"mscale\": %.17g, \"mscale_all_dim\": %.17g, \"low_freq_factor\": %.17g, "
                "\"high_freq_factor\": %.17g, \"table_positions\": %ld, \"sequence_length\": %.0f",
                c.scheme.c_str(), c.layout.c_str(), c.R, c.base, c.factor, c.L0, c.M, c.beta_fast, c.beta_slow,
                c.mscale, c.mscale_all_dim, c.low, c.high, static_cast<long>(table_positions), c.L);
  const bool factors = !c.short_factor.empty();
  write_case(dir, "rope", params,
             std::string("\"x\": \"x.npy\", \"positions\": \"positions.npy\"") +
                 (factors ? ", \"short_factor\": \"short_factor.npy\", \"long_factor\": \"long_factor.npy\"" : ""),
             "\"out\": \"out.npy\"", "1e-05",
             "tools/golden_rope_mla.cpp: float64 loop of the formulas of docs/operators.md section 10 (transformers' "
             "rope parameters restated), independent of seqmix's operators");
  write(dir, "x", x);
  write(dir, "positions", positions);
  write(dir, "out", out);
  if (factors) {
    write(dir, "short_factor", Array{{static_cast<index_t>(c.short_factor.size())}, c.short_factor});
    write(dir, "long_factor", Array{{static_cast<index_t>(c.long_factor.size())}, c.long_factor});
  }
}

// ---- mla ----------------------------------------------------------------------------------

// One query row (H heads) against keys [0, visible) of latents c [.., dc], rotary keys r [.., dr].
void mla_row(const double* qn, const double* qr, const double* c, const double* r, const Array& wuk, const Array& wuv,
             index_t H, index_t dn, index_t dr, index_t dc, index_t dv, index_t visible, double scale, double* o,
             double* lse) {
  for (index_t h = 0; h < H; ++h) {
    std::vector<double> s(visible);
    double mx = -INFINITY;
    for (index_t j = 0; j < visible; ++j) {
      double acc = 0;
      for (index_t e = 0; e < dn; ++e) {
        double k = 0;
        for (index_t a = 0; a < dc; ++a) k += wuk.v[(h * dn + e) * dc + a] * c[j * dc + a];
        acc += qn[h * dn + e] * k;
      }
      for (index_t e = 0; e < dr; ++e) acc += qr[h * dr + e] * r[j * dr + e];
      s[j] = scale * acc;
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    for (index_t j = 0; j < visible; ++j) sum += std::exp(s[j] - mx);
    for (index_t e = 0; e < dv; ++e) {
      double acc = 0;
      for (index_t j = 0; j < visible; ++j) {
        double v = 0;
        for (index_t a = 0; a < dc; ++a) v += wuv.v[(h * dv + e) * dc + a] * c[j * dc + a];
        acc += std::exp(s[j] - mx) * v;
      }
      o[h * dv + e] = acc / sum;
    }
    lse[h] = mx + std::log(sum);
  }
}

const char* kMlaSource =
    "tools/golden_rope_mla.cpp: float64 loop of the expanded MLA formula of docs/operators.md section 10 (keys and "
    "values expanded per head), independent of seqmix's operators";


void mla_prefill_case(const fs::path& root, std::mt19937_64& rng) {
  const index_t B = 1, Tq = 5, Tk = 12, H = 4, dn = 16, dr = 8, dc = 32, dv = 12;
  const double scale = 0.2;
  const Array qn = random_array({B, Tq, H, dn}, rng), qr = random_array({B, Tq, H, dr}, rng);
  const Array c = random_array({B, Tk, dc}, rng), r = random_array({B, Tk, dr}, rng);
  const Array wuk = random_array({H, dn, dc}, rng, 0.3), wuv = random_array({H, dv, dc}, rng, 0.3);
  Array o{{B, Tq, H, dv}, std::vector<double>(B * Tq * H * dv)}, lse{{B, Tq, H}, std::vector<double>(B * Tq * H)};
  for (index_t i = 0; i < Tq; ++i)
    mla_row(&qn.v[i * H * dn], &qr.v[i * H * dr], c.v.data(), r.v.data(), wuk, wuv, H, dn, dr, dc, dv, Tk - Tq + i + 1,
            scale, &o.v[i * H * dv], &lse.v[i * H]);
  const fs::path dir = root / "mla_prefill" / "causal_chunk_after_prefix_h4";
  write_case(dir, "mla_prefill", "\"scale\": 0.2, \"causal\": true",
             "\"q_nope\": \"q_nope.npy\", \"q_rope\": \"q_rope.npy\", \"c_kv\": \"c_kv.npy\", \"k_rope\": \"k_rope.npy\", "
             "\"w_uk\": \"w_uk.npy\", \"w_uv\": \"w_uv.npy\"",
             "\"o\": \"o.npy\", \"lse\": \"lse.npy\"", "1e-05", kMlaSource);
  for (const auto& [name, a] : {std::pair<const char*, const Array*>{"q_nope", &qn}, {"q_rope", &qr}, {"c_kv", &c},
                                {"k_rope", &r}, {"w_uk", &wuk}, {"w_uv", &wuv}, {"o", &o}, {"lse", &lse}})
    write(dir, name, *a);
}

void mla_decode_case(const fs::path& root, std::mt19937_64& rng) {
  const index_t B = 2, Tmax = 70, H = 8, dn = 16, dr = 8, dc = 48, dv = 16;
  const std::vector<double> lens = {70, 33};
  const double scale = 1.0 / std::sqrt(static_cast<double>(dn + dr));
  const Array qn = random_array({B, H, dn}, rng), qr = random_array({B, H, dr}, rng);
  const Array c = random_array({B, Tmax, dc}, rng), r = random_array({B, Tmax, dr}, rng);
  const Array wuk = random_array({H, dn, dc}, rng, 0.3), wuv = random_array({H, dv, dc}, rng, 0.3);
  Array o{{B, H, dv}, std::vector<double>(B * H * dv)}, lse{{B, H}, std::vector<double>(B * H)};
  for (index_t b = 0; b < B; ++b)
    mla_row(&qn.v[b * H * dn], &qr.v[b * H * dr], &c.v[b * Tmax * dc], &r.v[b * Tmax * dr], wuk, wuv, H, dn, dr, dc, dv,
            static_cast<index_t>(lens[b]), scale, &o.v[b * H * dv], &lse.v[b * H]);
  const fs::path dir = root / "mla_decode" / "two_rows_h8_dc48";
  write_case(dir, "mla_decode", "",
             "\"q_nope\": \"q_nope.npy\", \"q_rope\": \"q_rope.npy\", \"c_kv\": \"c_kv.npy\", \"k_rope\": \"k_rope.npy\", "
             "\"cache_seqlens\": \"cache_seqlens.npy\", \"w_uk\": \"w_uk.npy\", \"w_uv\": \"w_uv.npy\"",
             "\"o\": \"o.npy\", \"lse\": \"lse.npy\"", "1e-05", kMlaSource);
  const Array seqlens{{B}, lens};
  for (const auto& [name, a] : {std::pair<const char*, const Array*>{"q_nope", &qn}, {"q_rope", &qr}, {"c_kv", &c},
                                {"k_rope", &r}, {"cache_seqlens", &seqlens}, {"w_uk", &wuk}, {"w_uv", &wuv},
                                {"o", &o}, {"lse", &lse}})
    write(dir, name, *a);
}

// ---- attention_positional ----------------------------------------------------------------

// One case of attention with positional terms: q rotated at its position Tk - Tq + i, keys
// j >= rotated_keys at j (the rest taken as stored rotated), then softmax attention with
// scale * head_scale[h] and the relative bias added to each logit.
struct Positional {
  std::string name, bias = "none";  // bias: none, t5, kerple_log, kerple_power, fire
  index_t B = 1, Tq = 1, Tk = 1, Hq = 1, Hkv = 1, D = 8;
  double scale = 0;  // 0: 1/sqrt(D)
  bool causal = true, head_scales = false;
  bool rope = false;
  Rope rope_config;
  index_t table_positions = 0, rotated_keys = 0;
  index_t buckets = 8, max_distance = 16;
  bool bidirectional = false;
  index_t W = 4;
  double fire_c = 0.1, fire_L = 512;
};

// transformers' T5Attention._relative_position_bucket for relative position rel = j - pos.
index_t t5_bucket_plain(index_t rel, bool bidirectional, index_t buckets, index_t max_distance) {
  index_t out = 0, n = buckets, distance;
  if (bidirectional) {
    n /= 2;
    if (rel > 0) out += n;
    distance = rel < 0 ? -rel : rel;
  } else {
    distance = rel < 0 ? -rel : 0;
  }
  const index_t exact = n / 2;
  if (distance < exact) return out + distance;
  const double large = exact + std::log(static_cast<double>(distance) / exact) /
                                   std::log(static_cast<double>(max_distance) / exact) * (n - exact);
  return out + std::min<index_t>(static_cast<index_t>(large), n - 1);
}

void positional_case(const fs::path& root, const Positional& c, std::mt19937_64& rng) {
  const Array q = random_array({c.B, c.Tq, c.Hq, c.D}, rng), k = random_array({c.B, c.Tk, c.Hkv, c.D}, rng, 2.0);
  const Array v = random_array({c.B, c.Tk, c.Hkv, c.D}, rng);
  const Array table = random_array({c.Hq, c.buckets}, rng, 3.0);
  const Array r1 = golden::random_array({c.Hq}, rng, 0.05, 1.5), r2 = golden::random_array({c.Hq}, rng, 0.1, 1.9);
  const Array w1 = random_array({c.Hq, c.W}, rng, 4.0), b1 = random_array({c.Hq, c.W}, rng);
  const Array w2 = random_array({c.Hq, c.W}, rng), b2 = random_array({c.Hq}, rng);
  const Array hs = golden::random_array({c.Hq}, rng, 0.5, 2.0);
  std::vector<double> inv;
  double m = 1;
  if (c.rope) frequencies(c.rope_config, inv, m);
  const int R = c.rope ? c.rope_config.R : 0;
  const bool interleaved = c.rope && c.rope_config.layout == "interleaved";
  const auto rotate = [&](std::vector<double>& x, double p) {
    for (int i = 0; i < R / 2; ++i) {
      const index_t a = interleaved ? 2 * i : i, o = interleaved ? 2 * i + 1 : i + R / 2;
      const double th = p * inv[i], xa = x[a], xo = x[o];
      x[a] = m * (xa * std::cos(th) - xo * std::sin(th));
      x[o] = m * (xo * std::cos(th) + xa * std::sin(th));
    }
  };
  const auto bias = [&](index_t h, index_t pos, index_t j) -> double {
    const double d = std::abs(static_cast<double>(pos - j));
    if (c.bias == "t5") return table.v[h * c.buckets + t5_bucket_plain(j - pos, c.bidirectional, c.buckets, c.max_distance)];
    if (c.bias == "kerple_log") return -r1.v[h] * std::log(1 + r2.v[h] * d);
    if (c.bias == "kerple_power") return -r1.v[h] * std::pow(d, r2.v[h]);
    if (c.bias == "fire") {
      const double x = std::log(1 + c.fire_c * d) / (std::log(1 + c.fire_c * std::max<double>(pos, c.fire_L)) + 1e-6);
      double out = b2.v[h];
      for (index_t e = 0; e < c.W; ++e) out += w2.v[h * c.W + e] * std::max(0.0, w1.v[h * c.W + e] * x + b1.v[h * c.W + e]);
      return out;
    }
    return 0.0;
  };
  const double scale = c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.D));
  const index_t G = c.Hq / c.Hkv;
  Array o{{c.B, c.Tq, c.Hq, c.D}, std::vector<double>(c.B * c.Tq * c.Hq * c.D)};
  Array lse{{c.B, c.Tq, c.Hq}, std::vector<double>(c.B * c.Tq * c.Hq)};
  for (index_t b = 0; b < c.B; ++b) {
    std::vector<std::vector<double>> keys;  // [j * Hkv + hk], rotated where the kernel rotates them
    for (index_t j = 0; j < c.Tk; ++j)
      for (index_t hk = 0; hk < c.Hkv; ++hk) {
        std::vector<double> x(&k.v[((b * c.Tk + j) * c.Hkv + hk) * c.D], &k.v[((b * c.Tk + j) * c.Hkv + hk + 1) * c.D]);
        if (c.rope && j >= c.rotated_keys) rotate(x, static_cast<double>(j));
        keys.push_back(x);
      }
    for (index_t i = 0; i < c.Tq; ++i)
      for (index_t h = 0; h < c.Hq; ++h) {
        const index_t pos = c.Tk - c.Tq + i, hk = h / G;
        std::vector<double> x(&q.v[((b * c.Tq + i) * c.Hq + h) * c.D], &q.v[((b * c.Tq + i) * c.Hq + h + 1) * c.D]);
        if (c.rope) rotate(x, static_cast<double>(pos));
        std::vector<double> s;
        double mx = -INFINITY;
        const index_t visible = c.causal ? pos + 1 : c.Tk;
        for (index_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (index_t e = 0; e < c.D; ++e) dot += x[e] * keys[j * c.Hkv + hk][e];
          s.push_back(dot * scale * (c.head_scales ? hs.v[h] : 1.0) + bias(h, pos, j));
          mx = std::max(mx, s.back());
        }
        double sum = 0;
        for (const double sj : s) sum += std::exp(sj - mx);
        for (index_t e = 0; e < c.D; ++e) {
          double acc = 0;
          for (index_t j = 0; j < visible; ++j) acc += std::exp(s[j] - mx) * v.v[((b * c.Tk + j) * c.Hkv + hk) * c.D + e];
          o.v[((b * c.Tq + i) * c.Hq + h) * c.D + e] = acc / sum;
        }
        lse.v[(b * c.Tq + i) * c.Hq + h] = mx + std::log(sum);
      }
  }
  std::string params = "\"causal\": " + std::string(c.causal ? "true" : "false") + ", \"bias\": \"" + c.bias + "\"";
  if (c.scale > 0) params += ", \"scale\": " + exact(c.scale);
  std::string inputs = "\"q\": \"q.npy\", \"k\": \"k.npy\", \"v\": \"v.npy\"";
  std::vector<std::pair<std::string, const Array*>> files{{"q", &q}, {"k", &k}, {"v", &v}, {"o", &o}, {"lse", &lse}};
  if (c.rope) {
    const Rope& r = c.rope_config;
    params += ", \"rope\": true, \"scheme\": \"" + r.scheme + "\", \"layout\": \"" + r.layout +
              "\", \"rotary_dim\": " + std::to_string(r.R) + ", \"base\": " + exact(r.base) + ", \"factor\": " +
              exact(r.factor) + ", \"original_max_position_embeddings\": " + exact(r.L0) + ", \"mscale\": " +
              exact(r.mscale) + ", \"mscale_all_dim\": " + exact(r.mscale_all_dim) + ", \"table_positions\": " +
              std::to_string(c.table_positions) + ", \"sequence_length\": " + exact(r.L) +
              ", \"rope_rotated_keys\": " + std::to_string(c.rotated_keys);
  }
  const auto add = [&](const char* name, const Array& a) {
    inputs += std::string(", \"") + name + "\": \"" + name + ".npy\"";
    files.push_back({name, &a});
  };
  if (c.bias == "t5") {
    params += ", \"bidirectional\": " + std::string(c.bidirectional ? "true" : "false") +
              ", \"max_distance\": " + std::to_string(c.max_distance);
    add("t5_table", table);
  }
  if (c.bias == "kerple_log" || c.bias == "kerple_power") add("r1", r1), add("r2", r2);
  if (c.bias == "fire") {
    params += ", \"fire_c\": " + exact(c.fire_c) + ", \"fire_threshold\": " + exact(c.fire_L);
    add("fire_w1", w1), add("fire_b1", b1), add("fire_w2", w2), add("fire_b2", b2);
  }
  if (c.head_scales) add("head_scales", hs);
  const fs::path dir = root / "attention_positional" / c.name;
  write_case(dir, "attention_positional", params, inputs, "\"o\": \"o.npy\", \"lse\": \"lse.npy\"", "1e-05",
             "tools/golden_rope_mla.cpp: float64 loop of attention with the rope, T5 bucket, KERPLE and FIRE formulas "
             "of docs/operators.md section 10 restated, independent of seqmix's operators");
  for (const auto& [name, a] : files) write(dir, name, *a);
}

void positional_cases(const fs::path& root) {
  std::mt19937_64 rng(1515);  // its own stream: the cases above regenerate byte for byte
  Positional prefill;
  prefill.name = "rope_llama3_prefill_causal_gqa2";
  prefill.Tq = prefill.Tk = 21, prefill.Hq = 4, prefill.Hkv = 2, prefill.D = 16, prefill.rope = true;
  prefill.rope_config.scheme = "llama3", prefill.rope_config.layout = "half_split", prefill.rope_config.R = 16;
  prefill.rope_config.base = 500000, prefill.rope_config.factor = 8, prefill.rope_config.L0 = 64;
  prefill.rope_config.L = 4096, prefill.table_positions = 4096;
  positional_case(root, prefill, rng);

  Positional decode;
  decode.name = "rope_yarn_decode_partial_rotated_cache";
  decode.B = 2, decode.Tq = 1, decode.Tk = 40, decode.Hq = 4, decode.Hkv = 1, decode.D = 16, decode.rope = true;
  decode.rope_config.scheme = "yarn", decode.rope_config.layout = "interleaved", decode.rope_config.R = 8;
  decode.rope_config.factor = 4, decode.rope_config.L0 = 32, decode.rope_config.L = 1024, decode.table_positions = 1024;
  decode.rotated_keys = 30;  // keys 0..29 stored rotated, 30..39 rotated in the kernel
  positional_case(root, decode, rng);

  Positional t5;
  t5.name = "t5_bidirectional_encoder";
  t5.Tq = t5.Tk = 13, t5.Hq = 2, t5.Hkv = 2, t5.D = 8, t5.bias = "t5", t5.causal = false, t5.bidirectional = true;
  t5.buckets = 8, t5.max_distance = 6, t5.scale = 1;
  positional_case(root, t5, rng);

  Positional kerple;
  kerple.name = "kerple_log_causal_head_scales";
  kerple.Tq = kerple.Tk = 20, kerple.Hq = 2, kerple.Hkv = 1, kerple.D = 8, kerple.bias = "kerple_log";
  kerple.head_scales = true;
  positional_case(root, kerple, rng);

  Positional power;
  power.name = "kerple_power_decode_b2";
  power.B = 2, power.Tq = 2, power.Tk = 30, power.Hq = 4, power.Hkv = 2, power.D = 8, power.bias = "kerple_power";
  positional_case(root, power, rng);

  Positional fire;
  fire.name = "fire_causal_across_threshold";
  fire.Tq = 20, fire.Tk = 24, fire.Hq = 2, fire.Hkv = 1, fire.D = 8, fire.bias = "fire", fire.W = 4;
  fire.fire_c = 0.25, fire.fire_L = 12;  // rows on both sides of L
  positional_case(root, fire, rng);
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path root = root_argument(argc, argv);
  std::mt19937_64 rng(15);

  Rope llama;
  llama.scheme = "llama3", llama.layout = "half_split", llama.R = 32, llama.base = 500000, llama.factor = 8;
  llama.L0 = 8192, llama.low = 1, llama.high = 4, llama.L = 131072;
  rope_case(root, "llama3_half_split_partial_r32_d48", llama, 1, 6, 3, 48, {0, 1, 8191, 8192, 100000, 131071}, 131072,
            rng);

  Rope yarn;
  yarn.scheme = "yarn", yarn.layout = "interleaved", yarn.R = 8, yarn.factor = 40, yarn.L0 = 4096;
  yarn.mscale = 0.707, yarn.mscale_all_dim = 1.0, yarn.L = 1048576;
  rope_case(root, "yarn_interleaved_r8_positions_to_2e20", yarn, 2, 3, 2, 8,
            {0, 4095, 65536, 1000000, 1048575, 777777}, 1048576, rng);

  Rope longrope;
  longrope.scheme = "longrope", longrope.layout = "half_split", longrope.R = 16, longrope.L0 = 4096;
  longrope.M = 131072, longrope.L = 8192;
  for (int i = 0; i < 8; ++i) longrope.short_factor.push_back(1.0 + 0.125 * i), longrope.long_factor.push_back(1.0 + 3.0 * i);
  rope_case(root, "longrope_long_factors_r16", longrope, 1, 4, 2, 16, {0, 17, 4096, 8191}, 8192, rng);

  Rope dyn;
  dyn.scheme = "dynamic_ntk", dyn.layout = "interleaved", dyn.R = 12, dyn.factor = 2, dyn.L0 = 256, dyn.L = 1024;
  rope_case(root, "dynamic_ntk_interleaved_partial_r12_d20", dyn, 1, 5, 3, 20, {0, 3, 255, 256, 1023}, 1024, rng);

  mla_prefill_case(root, rng);
  mla_decode_case(root, rng);
  positional_cases(root);
  std::printf("wrote rope, mla_prefill, mla_decode and attention_positional cases under %s\n", root.string().c_str());
  return 0;
}
