// Structured and directional scans, 2 threads.
//
//   structured/cross_selective_scan/<shape>   VMamba SS2D on a 64 x 64 patch grid (C = 192
//                                             channels, N = 16, one B/C group): the four scan
//                                             orders read as strided views, merged by sum
//   structured/materialized/<shape>           the baseline: cross_scan copies of u, delta, Bm
//                                             and Cm into [B,4,L,...], four selective_scan calls
//                                             on contiguous sequences, cross_merge
//   structured/cross_selective_scan_ms/<shape> MSVMamba scales {full, coarse x 3}
//   reverse/<op>/<dir>/<shape>                 the reverse option against forward on the same
//                                             inputs (issue 23 asks for at most 5% more):
//                                             selective_scan, ssd, linear_scan, rwkv7, lstm,
//                                             mlstm and matrix_scan; the chunked hybrids based,
//                                             rat, infini_attention, mega and memory_tokens;
//                                             long_conv (direct, FFT), hyena and h3; the LTI
//                                             mixers monarch_mix_causal, base_conv,
//                                             lightweight_conv, masked_mixer and the distilled
//                                             Hyena prefill
//   grid_scan/<split>/<shape>                  the 2-D linear recurrence, and its reference
//
// GFLOP/s of the selective scans counts 6 flops per (token, channel, state) update of the scan
// (decay multiply, dt*B*u, the state update, C*h) and leaves out the exp; grid_scan counts 4 per
// cell and channel; linear_scan's GB/s counts a, b read and h_all written once.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "seqmix/chunked.hpp"
#include "seqmix/core/scan.hpp"
#include "seqmix/lti.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/memory.hpp"
#include "seqmix/rnn.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix/structured.hpp"
#include "seqmix_testing/bench_counters.hpp"
#include "seqmix_testing/hyena_modes.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace st = seqmix::testing;

struct GridShape {
  const char* name;
  index_t B, H, W, D, N;
};
const GridShape kVmamba = {"vmamba_64x64_C192_N16", 1, 64, 64, 192, 16};

// One direction's grid inputs; u is shared by the four directions, as in VMamba.
struct BenchDirection {
  Tensor<float, 4> delta;
  Tensor<float, 5> Bm, Cm;
  Tensor<float, 2> A;
  Tensor<float, 1> Dskip;
  BenchDirection(const GridShape& s, index_t H, index_t W, std::uint64_t seed)
      : delta(st::random_tensor<4>({s.B, H, W, s.D}, seed, 0.f, 0.3f)),
        Bm(st::random_tensor<5>({s.B, H, W, 1, s.N}, seed + 1)), Cm(st::random_tensor<5>({s.B, H, W, 1, s.N}, seed + 2)),
        A(st::random_tensor<2>({s.D, s.N}, seed + 3, -2.f, -0.1f)), Dskip(st::random_tensor<1>({s.D}, seed + 4)) {}
  seqmix::CrossScanDirectionInputs inputs(const Tensor<float, 4>& u) const {
    return {u.cview(), delta.cview(), A.cview(), Bm.cview(), Cm.cview(), Dskip.cview()};
  }
};

double scan_flops(const GridShape& s, index_t tokens) { return 6.0 * static_cast<double>(s.B * tokens * s.D * s.N); }

void cross_views(benchmark::State& state, const GridShape& s, bool multi_scale) {
  const index_t Hc = (s.H + 1) / 2, Wc = (s.W + 1) / 2;
  const Tensor<float, 4> u = st::random_tensor<4>({s.B, s.H, s.W, s.D}, 1);
  const Tensor<float, 4> u_coarse = st::random_tensor<4>({s.B, Hc, Wc, s.D}, 2);
  std::vector<BenchDirection> dirs;
  for (std::uint64_t k = 0; k < 4; ++k) {
    const bool coarse = multi_scale && k > 0;
    dirs.emplace_back(s, coarse ? Hc : s.H, coarse ? Wc : s.W, 10 + 10 * k);
  }
  seqmix::CrossSelectiveScanOptions options;
  if (multi_scale)
    options.scales = {seqmix::GridScale::full, seqmix::GridScale::coarse, seqmix::GridScale::coarse,
                      seqmix::GridScale::coarse};
  const std::array<seqmix::CrossScanDirectionInputs, 4> in{
      dirs[0].inputs(u), dirs[1].inputs(multi_scale ? u_coarse : u), dirs[2].inputs(multi_scale ? u_coarse : u),
      dirs[3].inputs(multi_scale ? u_coarse : u)};
  Tensor<float, 4> y({s.B, s.H, s.W, s.D});
  for (auto _ : state) {
    seqmix::cross_selective_scan(in, y.view(), options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const index_t tokens = multi_scale ? s.H * s.W + 3 * Hc * Wc : 4 * s.H * s.W;
  st::report_gflops(state, scan_flops(s, tokens));
}

// [B,H,W,...] -> [B,4,L,...] through cross_scan on a [B,H,W,prod(rest)] view of a contiguous map.
template <std::size_t R>
void bench_cross_scan(const Tensor<float, R>& x, Tensor<float, R>& xs) {
  index_t rest = 1;
  for (std::size_t d = 3; d < R; ++d) rest *= x.shape()[d];
  const index_t B = x.shape()[0], H = x.shape()[1], W = x.shape()[2];
  seqmix::cross_scan(seqmix::ConstView<float, 4>(x.data(), {B, H, W, rest}),
                     seqmix::TensorView<float, 4>(xs.data(), {B, 4, H * W, rest}), st::two_thread_pool());
}

void cross_materialized(benchmark::State& state, const GridShape& s) {
  const index_t L = s.H * s.W;
  const Tensor<float, 4> u = st::random_tensor<4>({s.B, s.H, s.W, s.D}, 1);
  std::vector<BenchDirection> dirs;
  for (std::uint64_t k = 0; k < 4; ++k) dirs.emplace_back(s, s.H, s.W, 10 + 10 * k);
  Tensor<float, 4> us({s.B, 4, L, s.D}), ys({s.B, 4, L, s.D}), y({s.B, s.H, s.W, s.D});
  std::vector<Tensor<float, 4>> ds(4, Tensor<float, 4>({s.B, 4, L, s.D}));
  std::vector<Tensor<float, 5>> bs(4, Tensor<float, 5>({s.B, 4, L, 1, s.N})), cs(4, Tensor<float, 5>({s.B, 4, L, 1, s.N}));
  for (auto _ : state) {
    bench_cross_scan(u, us);
    for (std::size_t k = 0; k < 4; ++k) {
      // Each direction's projections, materialized in scan order (only direction k's copy is used).
      bench_cross_scan(dirs[k].delta, ds[k]);
      bench_cross_scan(dirs[k].Bm, bs[k]);
      bench_cross_scan(dirs[k].Cm, cs[k]);
      const auto kk = static_cast<index_t>(k);
      seqmix::selective_scan({us.cview().select(1, kk), ds[k].cview().select(1, kk), dirs[k].A.cview(),
                              bs[k].cview().select(1, kk), cs[k].cview().select(1, kk), dirs[k].Dskip.cview()},
                             {ys.view().select(1, kk)}, {}, st::two_thread_pool());
    }
    seqmix::cross_merge(ys.cview(), y.view(), st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, scan_flops(s, 4 * L));
}

// reverse vs forward: selective_scan (Mamba-130M channels), ssd (Mamba-2 780M heads) and the
// memory-bound linear_scan.
void reverse_selective(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, D = 1536, N = 16;
  const auto u = st::random_tensor<3>({B, T, D}, 1), delta = st::random_tensor<3>({B, T, D}, 2, 0.f, 0.3f);
  const auto A = st::random_tensor<2>({D, N}, 3, -2.f, -0.1f);
  const auto Bm = st::random_tensor<4>({B, T, 1, N}, 4), Cm = st::random_tensor<4>({B, T, 1, N}, 5);
  Tensor<float, 3> y({B, T, D});
  seqmix::SelectiveScanOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::selective_scan({u.cview(), delta.cview(), A.cview(), Bm.cview(), Cm.cview()}, {y.view()}, options,
                           st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 6.0 * static_cast<double>(B * T * D * N));
}

void reverse_ssd(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, H = 48, P = 64, N = 128;
  const auto x = st::random_tensor<4>({B, T, H, P}, 1);
  const auto dt = st::random_tensor<3>({B, T, H}, 2, -2.f, 0.f);
  const auto A = st::random_tensor<1>({H}, 3, -1.f, -0.1f);
  const auto Bm = st::random_tensor<4>({B, T, 1, N}, 4), Cm = st::random_tensor<4>({B, T, 1, N}, 5);
  Tensor<float, 4> y({B, T, H, P});
  seqmix::SsdOptions options;
  options.reverse = reverse;
  options.dt_softplus = true;
  for (auto _ : state) {
    seqmix::ssd({x.cview(), dt.cview(), A.cview(), Bm.cview(), Cm.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  // The chunked form: about 2P(N + L) + 2PN flops per token and head at chunk L = 32.
  st::report_gflops(state, static_cast<double>(B * T * H) * (2.0 * P * (N + 32) + 2.0 * P * N));
}

void reverse_linear(benchmark::State& state, bool reverse) {
  const index_t B = 2, T = 16384, D = 256;
  const auto a = st::random_tensor<3>({B, T, D}, 1, 0.5f, 1.f), b = st::random_tensor<3>({B, T, D}, 2);
  Tensor<float, 3> h({B, T, D});
  seqmix::LinearScanOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::linear_scan(a.cview(), b.cview(), {}, h.view(), {}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  st::report_gbytes(state, 3.0 * static_cast<double>(B * T * D) * sizeof(float));
}

// rwkv7 at RWKV-7's head size (K = V = 64), the recurrent fast form.
void reverse_rwkv7(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, H = 8, K = 64;
  const auto r = st::random_tensor<4>({B, T, H, K}, 1), k = st::random_tensor<4>({B, T, H, K}, 2, -0.1f, 0.1f);
  const auto v = st::random_tensor<4>({B, T, H, K}, 3), a = st::random_tensor<4>({B, T, H, K}, 4, -0.1f, 0.f);
  const auto b = st::random_tensor<4>({B, T, H, K}, 5, 0.f, 0.1f), g = st::random_tensor<4>({B, T, H, K}, 6, -1.f, 0.f);
  Tensor<float, 4> o({B, T, H, K});
  seqmix::Rwkv7Options options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::rwkv7({r.cview(), k.cview(), v.cview(), a.cview(), b.cview(), g.cview()}, {o.view()}, options,
                  st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  // About 5 flops per state element per token (decay, the two rank-one terms, the readout).
  st::report_gflops(state, 5.0 * static_cast<double>(B * T * H * K * K));
}

// lstm with the input projection (I = H = 512, B = 4): GEMMs on 2 threads, then the recurrence.
void reverse_lstm(benchmark::State& state, bool reverse) {
  const index_t B = 4, T = 1024, I = 512, H = 512;
  const auto x = st::random_tensor<3>({B, T, I}, 1);
  const auto w_ih = st::random_tensor<2>({4 * H, I}, 2, -0.04f, 0.04f), w_hh = st::random_tensor<2>({4 * H, H}, 3, -0.04f, 0.04f);
  Tensor<float, 3> y({B, T, H});
  seqmix::RnnOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::RnnInputs in;
    in.x = x.cview(), in.w_ih = w_ih.cview(), in.w_hh = w_hh.cview();
    seqmix::lstm(in, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 2.0 * static_cast<double>(B * T) * 4.0 * H * (I + H));
}

void reverse_mlstm(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, NH = 8, D = 64;
  const auto q = st::random_tensor<4>({B, T, NH, D}, 1), k = st::random_tensor<4>({B, T, NH, D}, 2);
  const auto v = st::random_tensor<4>({B, T, NH, D}, 3);
  const auto i = st::random_tensor<3>({B, T, NH}, 4, -4.f, 4.f), f = st::random_tensor<3>({B, T, NH}, 5, -2.f, 6.f);
  Tensor<float, 4> h({B, T, NH, D});
  seqmix::MlstmOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::MlstmInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.i = i.cview(), in.f = f.cview();
    seqmix::mlstm(in, {h.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 4.0 * static_cast<double>(B * T * NH * D * D));
}

// matrix_scan with 4 x 4 blocks over 65536 tokens, 8 heads (the heads split on 2 threads).
void reverse_matrix(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 65536, H = 8, N = 4;
  const auto A = st::random_tensor<5>({B, T, H, N, N}, 1, -0.25f, 0.25f);
  const auto x = st::random_tensor<4>({B, T, H, N}, 2);
  Tensor<float, 4> h({B, T, H, N});
  seqmix::MatrixScanOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::matrix_scan({A.cview(), x.cview()}, {h.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 2.0 * static_cast<double>(B * T * H) * (N * N + N));
}

// The chunked hybrids at their papers' head sizes, B = 1, 8 heads, 2 threads, no state.
void reverse_based(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, H = 8, F = 16, D = 64;
  const auto qf = st::random_tensor<4>({B, T, H, F}, 1, -0.5f, 0.5f), kf = st::random_tensor<4>({B, T, H, F}, 2, -0.5f, 0.5f);
  const auto q = st::random_tensor<4>({B, T, H, D}, 3), k = st::random_tensor<4>({B, T, H, D}, 4);
  const auto v = st::random_tensor<4>({B, T, H, D}, 5);
  Tensor<float, 4> o({B, T, H, D});
  seqmix::BasedOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::based({qf.cview(), kf.cview(), q.cview(), k.cview(), v.cview()}, {o.view()}, options, nullptr,
                  st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
}

void reverse_rat(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 4096, H = 8, D = 64;
  const auto q = st::random_tensor<4>({B, T, H, D}, 1), k = st::random_tensor<4>({B, T, H, D}, 2);
  const auto v = st::random_tensor<4>({B, T, H, D}, 3), g = st::random_tensor<4>({B, T, H, D}, 4, -2.f, 0.f);
  Tensor<float, 4> o({B, T, H, D});
  seqmix::RatOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::rat({q.cview(), k.cview(), v.cview(), g.cview()}, {o.view()}, options, nullptr, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
}

void reverse_infini(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 4096, H = 8, K = 64;
  const auto q = st::random_tensor<4>({B, T, H, K}, 1), k = st::random_tensor<4>({B, T, H, K}, 2);
  const auto v = st::random_tensor<4>({B, T, H, K}, 3);
  const auto beta = st::random_tensor<1>({H}, 4);
  Tensor<float, 4> o({B, T, H, K});
  seqmix::InfiniAttentionOptions options;
  options.segment = 1024, options.reverse = reverse;
  for (auto _ : state) {
    seqmix::infini_attention({q.cview(), k.cview(), v.cview(), beta.cview()}, {o.view()}, options, nullptr,
                             st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
}

// Mega-base-like: D 512 channels, N 16, 2 heads of 256, values 512 wide split alike, chunk 128.
void reverse_mega(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 4096, D = 512, N = 16, H = 2, Dv = 256;
  const auto x = st::random_tensor<3>({B, T, D}, 1);
  const auto v = st::random_tensor<4>({B, T, H, Dv}, 2);
  const auto alpha = st::random_tensor<2>({D, N}, 3), delta = st::random_tensor<2>({D, N}, 4);
  const auto beta = st::random_tensor<2>({D, N}, 5), eta = st::random_tensor<2>({D, N}, 6, -0.2f, 0.2f);
  const auto qs = st::random_tensor<1>({D}, 7, -0.2f, 0.2f), qb = st::random_tensor<1>({D}, 8);
  const auto ks = st::random_tensor<1>({D}, 9, -0.2f, 0.2f), kb = st::random_tensor<1>({D}, 10);
  const seqmix::MegaParams params{alpha.cview(), delta.cview(), beta.cview(), eta.cview(),
                                  qs.cview(),    qb.cview(),    ks.cview(),   kb.cview()};
  Tensor<float, 4> o({B, T, H, Dv});
  seqmix::MegaOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::mega({x.cview(), v.cview(), params}, {o.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
}

// memory_tokens with a cheap elementwise layer (a decaying running sum over the layer's tokens),
// so the operator's own copies, not the layer, dominate: B 4, T 8192, D 512, M 16, segment 512.
void reverse_memory_tokens(benchmark::State& state, bool reverse) {
  const index_t B = 4, T = 8192, D = 512, M = 16;
  const auto x = st::random_tensor<3>({B, T, D}, 1), memory = st::random_tensor<3>({B, M, D}, 2);
  Tensor<float, 3> y({B, T, D}), final_memory({B, M, D});
  // Row pointers (memory_tokens hands the layer contiguous tensors): per-element multi-index
  // access made this layer 10x the copies and hid their cost.
  auto layer = [](const seqmix::ConstView<float, 3>& in, const seqmix::TensorView<float, 3>& out) {
    const index_t n = in.size(1), width = in.size(2);
    for (index_t b = 0; b < in.size(0); ++b) {
      const float* src = in.ptr(b);
      float* dst = out.ptr(b);
      std::copy(src, src + width, dst);
      for (index_t j = 1; j < n; ++j)
        for (index_t c = 0; c < width; ++c) dst[j * width + c] = 0.9f * dst[(j - 1) * width + c] + src[j * width + c];
    }
  };
  seqmix::MemoryTokensOptions options;
  options.segment = 512, options.reverse = reverse;
  for (auto _ : state) {
    seqmix::memory_tokens({x.cview(), memory.cview()}, {y.view(), final_memory.view()}, layer, options,
                          st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

// The long convolutions, reverse vs forward: long_conv direct (L 64) and FFT (L = T), an
// order-2 Hyena with T-long filters, H3 with a T-long diagonal kernel.
void reverse_long_conv(benchmark::State& state, bool reverse, seqmix::LongConvMethod method) {
  const index_t B = 1, T = 4096, D = 768, L = method == seqmix::LongConvMethod::direct ? 64 : T;
  const auto u = st::random_tensor<3>({B, T, D}, 1);
  const auto h = st::random_tensor<2>({L, D}, 2, -0.02f, 0.02f);
  const auto skip = st::random_tensor<1>({D}, 3);
  Tensor<float, 3> y({B, T, D});
  seqmix::LongConvOptions options;
  options.method = method, options.reverse = reverse;
  for (auto _ : state) {
    seqmix::long_conv({u.cview(), h.cview(), {}, skip.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void reverse_hyena(benchmark::State& state, bool reverse) {
  const index_t N = 2, B = 1, T = 4096, D = 768;
  const auto v = st::random_tensor<3>({B, T, D}, 1);
  const auto x = st::random_tensor<4>({N, B, T, D}, 2);
  const auto filter = st::random_tensor<3>({N, T, D}, 3, -0.02f, 0.02f);
  Tensor<float, 3> y({B, T, D}), scratch({B, T, D});
  seqmix::HyenaOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::hyena({v.cview(), x.cview(), filter.cview()}, {y.view(), scratch.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void reverse_h3(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, H = 8, P = 16;
  const auto q = st::random_tensor<4>({B, T, H, P}, 1), k = st::random_tensor<4>({B, T, H, P}, 2);
  const auto v = st::random_tensor<4>({B, T, H, P}, 3);
  const auto shift = st::random_tensor<2>({4, H * P}, 4), diag = st::random_tensor<2>({T, H * P}, 5, -0.02f, 0.02f);
  Tensor<float, 4> y({B, T, H, P});
  seqmix::H3Options options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::h3({q.cview(), k.cview(), v.cview(), shift.cview(), diag.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

// The LTI mixers of section 11 with a causal form, reverse vs forward.
void reverse_monarch(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 4096, D = 768;
  const auto x = st::random_tensor<3>({B, T, D}, 1);
  const auto h = st::random_tensor<2>({T, D}, 2, -0.02f, 0.02f);
  Tensor<float, 3> y({B, T, D});
  seqmix::MonarchMixCausalOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::monarch_mix_causal({x.cview(), h.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void reverse_base_conv(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 4096, D = 768;
  const auto u = st::random_tensor<3>({B, T, D}, 1);
  const auto w1 = st::random_tensor<2>({D, D}, 2, -0.03f, 0.03f), w2 = st::random_tensor<2>({D, D}, 3, -0.03f, 0.03f);
  const auto h = st::random_tensor<2>({T, D}, 4, -0.02f, 0.02f);
  Tensor<float, 3> y({B, T, D});
  seqmix::BaseConvOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::base_conv({u.cview(), w1.cview(), w2.cview(), h.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void reverse_lightweight(benchmark::State& state, bool reverse) {
  const index_t B = 4, T = 4096, D = 512, H = 16, K = 31;
  const auto x = st::random_tensor<3>({B, T, D}, 1);
  const auto w = st::random_tensor<2>({H, K}, 2);
  Tensor<float, 3> y({B, T, D});
  seqmix::LocalConvOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::lightweight_conv({x.cview(), w.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void reverse_masked_mixer(benchmark::State& state, bool reverse) {
  const index_t B = 1, T = 2048, D = 768, G = 12;
  const auto x = st::random_tensor<3>({B, T, D}, 1);
  const auto w = st::random_tensor<3>({G, T, T}, 2, -0.02f, 0.02f);
  Tensor<float, 3> y({B, T, D});
  seqmix::MaskedMixerOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::masked_mixer({x.cview(), w.cview()}, {y.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void reverse_hyena_handoff(benchmark::State& state, bool reverse) {
  const index_t N = 2, B = 1, T = 4096, D = 768, M = 16;
  const auto v = st::random_tensor<3>({B, T, D}, 1);
  const auto x = st::random_tensor<4>({N, B, T, D}, 2);
  const auto filter = st::random_tensor<3>({N, T, D}, 3, -0.02f, 0.02f);
  const st::HyenaModes modes(N, D, M, 4);
  Tensor<float, 3> y({B, T, D}), scratch({B, T, D});
  Tensor<float, 4> sr({N, B, D, M}), si({N, B, D, M});
  seqmix::HyenaOptions options;
  options.reverse = reverse;
  for (auto _ : state) {
    seqmix::hyena_distilled_prefill({v.cview(), x.cview(), filter.cview()}, modes.filters(),
                                    {y.view(), sr.view(), si.view(), scratch.view()}, options, st::two_thread_pool());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}

void grid(benchmark::State& state, int form) {
  const GridShape& s = kVmamba;
  const auto al = st::random_tensor<4>({s.B, s.H, s.W, s.D}, 1, 0.f, 0.5f);
  const auto at = st::random_tensor<4>({s.B, s.H, s.W, s.D}, 2, 0.f, 0.5f);
  const auto x = st::random_tensor<4>({s.B, s.H, s.W, s.D}, 3);
  Tensor<float, 4> h({s.B, s.H, s.W, s.D});
  seqmix::GridScanOptions options;
  options.split = form == 1 ? seqmix::GridScanSplit::wavefront : seqmix::GridScanSplit::channels;
  for (auto _ : state) {
    if (form == 2)
      seqmix::reference::grid_scan({al.cview(), at.cview(), x.cview()}, h.view());
    else
      seqmix::grid_scan({al.cview(), at.cview(), x.cview()}, h.view(), options, st::two_thread_pool());
    benchmark::DoNotOptimize(h.data());
    benchmark::ClobberMemory();
  }
  st::report_gflops(state, 4.0 * static_cast<double>(s.B * s.H * s.W * s.D));
}

void register_all() {
  auto add = [](const std::string& name, auto body) {
    benchmark::RegisterBenchmark(name.c_str(), body)->UseRealTime()->Unit(benchmark::kMicrosecond);
  };
  const std::string shape = kVmamba.name;
  add("structured/cross_selective_scan/" + shape, [](benchmark::State& s) { cross_views(s, kVmamba, false); });
  add("structured/materialized/" + shape, [](benchmark::State& s) { cross_materialized(s, kVmamba); });
  add("structured/cross_selective_scan_ms/" + shape, [](benchmark::State& s) { cross_views(s, kVmamba, true); });
  for (bool reverse : {false, true}) {
    const std::string dir = reverse ? "/reverse/" : "/forward/";
    add("reverse/selective_scan" + dir + "mamba-130m_T2048", [reverse](benchmark::State& s) { reverse_selective(s, reverse); });
    add("reverse/ssd" + dir + "mamba2-780m_T2048", [reverse](benchmark::State& s) { reverse_ssd(s, reverse); });
    add("reverse/linear_scan" + dir + "B2_T16384_D256", [reverse](benchmark::State& s) { reverse_linear(s, reverse); });
    add("reverse/rwkv7" + dir + "B1_T2048_H8_K64", [reverse](benchmark::State& s) { reverse_rwkv7(s, reverse); });
    add("reverse/lstm" + dir + "B4_T1024_I512_H512", [reverse](benchmark::State& s) { reverse_lstm(s, reverse); });
    add("reverse/mlstm" + dir + "B1_T2048_NH8_D64", [reverse](benchmark::State& s) { reverse_mlstm(s, reverse); });
    add("reverse/matrix_scan" + dir + "B1_T65536_H8_N4", [reverse](benchmark::State& s) { reverse_matrix(s, reverse); });
    add("reverse/based" + dir + "B1_T2048_H8_F16_D64_W64", [reverse](benchmark::State& s) { reverse_based(s, reverse); });
    add("reverse/rat" + dir + "B1_T4096_H8_D64_L16", [reverse](benchmark::State& s) { reverse_rat(s, reverse); });
    add("reverse/infini_attention" + dir + "B1_T4096_H8_K64_S1024",
        [reverse](benchmark::State& s) { reverse_infini(s, reverse); });
    add("reverse/mega" + dir + "B1_T4096_D512_N16_H2_c128", [reverse](benchmark::State& s) { reverse_mega(s, reverse); });
    add("reverse/memory_tokens" + dir + "B4_T8192_D512_M16_seg512",
        [reverse](benchmark::State& s) { reverse_memory_tokens(s, reverse); });
    add("reverse/long_conv_direct" + dir + "B1_T4096_D768_L64",
        [reverse](benchmark::State& s) { reverse_long_conv(s, reverse, seqmix::LongConvMethod::direct); });
    add("reverse/long_conv_fft" + dir + "B1_T4096_D768_L4096",
        [reverse](benchmark::State& s) { reverse_long_conv(s, reverse, seqmix::LongConvMethod::fft); });
    add("reverse/hyena" + dir + "N2_B1_T4096_D768_L4096", [reverse](benchmark::State& s) { reverse_hyena(s, reverse); });
    add("reverse/h3" + dir + "B1_T2048_H8_P16_L2048", [reverse](benchmark::State& s) { reverse_h3(s, reverse); });
    add("reverse/monarch_mix_causal" + dir + "B1_T4096_D768", [reverse](benchmark::State& s) { reverse_monarch(s, reverse); });
    add("reverse/base_conv" + dir + "B1_T4096_D768_L4096", [reverse](benchmark::State& s) { reverse_base_conv(s, reverse); });
    add("reverse/lightweight_conv" + dir + "B4_T4096_D512_H16_K31",
        [reverse](benchmark::State& s) { reverse_lightweight(s, reverse); });
    add("reverse/masked_mixer" + dir + "B1_T2048_D768_G12", [reverse](benchmark::State& s) { reverse_masked_mixer(s, reverse); });
    add("reverse/hyena_distilled_prefill" + dir + "N2_B1_T4096_D768_M16",
        [reverse](benchmark::State& s) { reverse_hyena_handoff(s, reverse); });
  }
  add("grid_scan/channels/" + shape, [](benchmark::State& s) { grid(s, 0); });
  add("grid_scan/wavefront/" + shape, [](benchmark::State& s) { grid(s, 1); });
  add("grid_scan/reference/" + shape, [](benchmark::State& s) { grid(s, 2); });
}

const bool registered = (register_all(), true);

}  // namespace
