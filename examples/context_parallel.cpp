// Context parallelism over MPI: the prefill of one long sequence through a hybrid stack
// (Gated DeltaNet, then Mamba-2's SSD, then causal softmax attention, each with a residual)
// split by position over the ranks of MPI_COMM_WORLD, with seqmix::mpi:
//
//   h0 [1, T, H, P]                     each rank holds rows [start_r, start_r + T_r)
//   h1 = h0 + gated_delta_rule(q = k = v = h0, beta, g)   slices from zero, MPI_Exscan of [P,P] transitions
//   h2 = h1 + ssd(x = h1, dt, A, Bm, Cm, D)                slices from zero, MPI_Exscan, correction
//   h3 = h2 + ring_attention(q = k = v = h2, causal)       K/V blocks around the ring
//
// Gated DeltaNet carries its state with mpi::gated_delta_rule (all ranks at once: each runs its
// slice from zero plus the identity run that gives the slice's [P,P] transition and readout, one
// MPI_Exscan composes the transitions by matrix products, one GEMM per head corrects the outputs),
// Mamba-2 with mpi::ssd (the same with a diagonal transition: a GEMM per 64 tokens corrects the
// outputs), attention with
// mpi::ring_attention (all ranks at once, communication overlapped with the local tiles). Every per-token input (h0, beta, g, dt, Bm, Cm) is a hash of (seed, global
// position, index), so a rank builds its own slice without communication and the single-process
// run builds the same numbers.
//
// First the stack runs on a short sequence over every rank and on one process (MPI_COMM_SELF),
// and the largest difference is printed; then on the long sequence, printing per rank and layer
// the time, the bytes sent and, for attention, the communication the local work did not hide.
//
//   mpiexec -n 4 ./seqmix_example_context_parallel [--tokens 16384] [--check-tokens 1024]
//           [--heads 4] [--head-dim 64]
//
// 1M tokens (--tokens 1048576) is the size this is for on a cluster; causal attention over it
// costs ~T^2 H P flops, hours on the 2-core machines this project's CI runs on, hence the default.
// Build (CMake): -DSEQMIX_BUILD_MPI=ON, target seqmix_example_context_parallel.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "seqmix/attention/dense/flash.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/linear_attention/gated_delta_rule/chunked.hpp"
#include "seqmix/mpi.hpp"
#include "seqmix/ssm/ssd/chunked.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;

struct Config {
  index_t tokens = 16384, check_tokens = 1024, heads = 4, head_dim = 64, state_n = 64;
};

// A uniform number in [lo, hi) from (stream, position, index): splitmix64 of the three.
float hashed(std::uint64_t stream, index_t position, index_t index, float lo, float hi) {
  std::uint64_t z = stream * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(position) * 0xbf58476d1ce4e5b9ull +
                    static_cast<std::uint64_t>(index) * 0x94d049bb133111ebull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return lo + (hi - lo) * static_cast<float>(z >> 40) / static_cast<float>(1u << 24);
}

// Rows of x [1, T_r, ...] of this rank, entry (i, j) = hashed(stream, start + i, j).
template <std::size_t Rank>
Tensor<float, Rank> slice_input(const std::array<index_t, Rank>& shape, index_t start, std::uint64_t stream, float lo,
                                float hi) {
  Tensor<float, Rank> x(shape);
  const index_t per_row = shape[1] == 0 ? 0 : x.numel() / shape[1];
  for (index_t i = 0; i < shape[1]; ++i)
    for (index_t j = 0; j < per_row; ++j) x.data()[i * per_row + j] = hashed(stream, start + i, j, lo, hi);
  return x;
}

struct LayerTimes {
  double seconds[3] = {0, 0, 0};      // GDN, SSD, attention (this rank, wall)
  double bytes[3] = {0, 0, 0};        // sent by this rank
  double attention_wait = 0;          // ring_attention's exposed communication
  double gdn_exchange = 0;            // GDN: collective check + MPI_Exscan of the summaries
};

// The stack over this rank's contiguous slice of a `total`-token sequence split over comm.
Tensor<float, 4> run_stack(MPI_Comm comm, index_t total, const Config& c, const seqmix::Executor& pool,
                           LayerTimes& times) {
  const int rank = sm::detail::comm_rank(comm), ranks = sm::detail::comm_size(comm);
  std::vector<index_t> lengths;
  for (int r = 0; r < ranks; ++r) lengths.push_back(total * (r + 1) / ranks - total * r / ranks);
  const sm::ContextSlices slices = sm::ContextSlices::contiguous(lengths);
  const index_t T = slices.tokens(rank), start = slices.segments(rank)[0].begin;
  const index_t H = c.heads, P = c.head_dim, N = c.state_n;
  const auto now = [] { return MPI_Wtime(); };

  Tensor<float, 4> h = slice_input<4>({1, T, H, P}, start, 1, -1.f, 1.f);

  // Gated DeltaNet: q = k = v = h (q, k l2-normalized in the kernel), beta in (0, 1), g < 0.
  {
    const auto beta = slice_input<3>({1, T, H}, start, 2, 0.1f, 0.9f);
    const auto g = slice_input<3>({1, T, H}, start, 3, -0.2f, -0.01f);
    Tensor<float, 4> o({1, T, H, P});
    seqmix::GatedDeltaRuleOptions options;
    options.qk_norm = seqmix::QkNorm::l2;
    seqmix::GatedDeltaRuleInputs in;
    in.q = h.cview(), in.k = h.cview(), in.v = h.cview(), in.beta = beta.cview(), in.g_scalar = g.cview();
    sm::StatePassStats pass;
    const double t0 = now();
    sm::gated_delta_rule(comm, in, {o.view()}, options, pool, &pass);  // slice, MPI_Exscan, correction
    times.seconds[0] = now() - t0;
    times.bytes[0] = ranks > 1 ? static_cast<double>(pass.bytes_sent) : 0.0;
    times.gdn_exchange = pass.exchange_seconds;
    for (index_t i = 0; i < h.numel(); ++i) h.data()[i] += o.data()[i];
  }
  // Mamba-2 SSD: x = h, one group of B/C, A < 0, skip D.
  {
    const auto dt = slice_input<3>({1, T, H}, start, 4, -3.f, -1.f);
    const auto Bm = slice_input<4>({1, T, 1, N}, start, 5, -0.5f, 0.5f);
    const auto Cm = slice_input<4>({1, T, 1, N}, start, 6, -0.5f, 0.5f);
    Tensor<float, 1> A({H}), D({H});
    for (index_t i = 0; i < H; ++i) A(i) = -1.f - 0.5f * static_cast<float>(i), D(i) = 0.5f;
    Tensor<float, 4> y({1, T, H, P});
    seqmix::SsdOptions options;
    options.dt_softplus = true;
    seqmix::SsdInputs in;
    in.x = h.cview(), in.dt = dt.cview(), in.A = A.cview(), in.Bm = Bm.cview(), in.Cm = Cm.cview(), in.D = D.cview();
    const double t0 = now();
    sm::ssd(comm, in, {y.view()}, options, pool);  // all ranks at once: slice, MPI_Exscan, correction
    times.seconds[1] = now() - t0;
    // Each Exscan round moves one [1,H] decay + [1,H,P,N] state summary (log2 P rounds or fewer).
    times.bytes[1] = ranks > 1 ? 4.0 * static_cast<double>(H + H * P * N) : 0.0;
    for (index_t i = 0; i < h.numel(); ++i) h.data()[i] += y.data()[i];
  }
  // Causal attention over the whole sequence: q = k = v = h.
  {
    Tensor<float, 4> o({1, T, H, P});
    seqmix::AttentionInputs<float> in;
    in.q = h.cview(), in.k = h.cview(), in.v = h.cview();
    seqmix::AttentionOptions options;
    options.causal = true;
    sm::RingAttentionStats stats;
    const double t0 = now();
    sm::ring_attention(comm, slices, in, {o.view()}, options, pool, &stats);
    times.seconds[2] = now() - t0, times.bytes[2] = static_cast<double>(stats.bytes_sent);
    times.attention_wait = stats.wait_seconds;
    for (index_t i = 0; i < h.numel(); ++i) h.data()[i] += o.data()[i];
  }
  return h;
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const index_t value = std::atoll(argv[i + 1]);
    if (flag == "--tokens") c.tokens = value;
    else if (flag == "--check-tokens") c.check_tokens = value;
    else if (flag == "--heads") c.heads = value;
    else if (flag == "--head-dim") c.head_dim = value;
    else std::fprintf(stderr, "unknown flag %s (ignored)\n", flag.c_str());
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const Config c = parse(argc, argv);
  const int rank = sm::detail::comm_rank(MPI_COMM_WORLD), ranks = sm::detail::comm_size(MPI_COMM_WORLD);
  const seqmix::Executor& pool = seqmix::serial_executor();  // one core per rank
  int status = 0;

  // 1. The short sequence: distributed against one process. Every rank runs the single-process
  //    stack (MPI_COMM_SELF) and compares its own rows.
  {
    LayerTimes ignored;
    const Tensor<float, 4> mine = run_stack(MPI_COMM_WORLD, c.check_tokens, c, pool, ignored);
    const Tensor<float, 4> whole = run_stack(MPI_COMM_SELF, c.check_tokens, c, pool, ignored);
    const index_t start = c.check_tokens * rank / ranks, per_row = c.heads * c.head_dim;
    double err = 0, scale = 0;
    for (index_t i = 0; i < mine.numel(); ++i) {
      err = std::max(err, static_cast<double>(std::abs(mine.data()[i] - whole.data()[start * per_row + i])));
      scale = std::max(scale, static_cast<double>(std::abs(whole.data()[start * per_row + i])));
    }
    double worst[2] = {err, scale}, all[2];
    MPI_Allreduce(worst, all, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    const bool ok = all[0] <= 1e-4 * std::max(1.0, all[1]);
    if (rank == 0)
      std::printf("check: %lld tokens over %d ranks vs one process: max |diff| = %.3g (max |h3| = %.3g) -> %s\n",
                  static_cast<long long>(c.check_tokens), ranks, all[0], all[1], ok ? "ok" : "MISMATCH");
    if (!ok) status = 1;
  }

  // 2. The long sequence, timed.
  LayerTimes times;
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  run_stack(MPI_COMM_WORLD, c.tokens, c, pool, times);
  const double total = MPI_Wtime() - t0;
  double row[9] = {times.seconds[0], times.seconds[1], times.seconds[2], times.bytes[0], times.bytes[1],
                   times.bytes[2], times.attention_wait, times.gdn_exchange, total};
  std::vector<double> rows(static_cast<std::size_t>(9 * ranks));
  MPI_Gather(row, 9, MPI_DOUBLE, rows.data(), 9, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf("\nprefill of %lld tokens, H=%lld P=%lld, %d ranks (contiguous slices of ~%lld tokens)\n",
                static_cast<long long>(c.tokens), static_cast<long long>(c.heads), static_cast<long long>(c.head_dim),
                ranks, static_cast<long long>(c.tokens / ranks));
    std::printf("rank  gdn s  ssd s  attn s  total s  gdn+ssd state MB sent  attn K/V MB sent  attn exposed comm s  gdn exchange s\n");
    for (int r = 0; r < ranks; ++r) {
      const double* x = rows.data() + 9 * r;
      std::printf("%4d %6.3f %6.3f %7.3f %8.3f %22.3f %17.2f %20.4f %17.3f\n", r, x[0], x[1], x[2], x[8],
                  (x[3] + x[4]) / 1e6, x[5] / 1e6, x[6], x[7]);
    }
    std::printf("attention overlap: the ring hides its transfers except the 'exposed comm' column. GDN and SSD\n"
                "run every rank's slice at once and exchange one summary per rank (GDN: a [P,P] transition and\n"
                "a [P,P] state per head; 'gdn exchange' is the wait in the check and the MPI_Exscan, which\n"
                "includes waiting for slower ranks). On separate machines the bytes cross the network.\n");
  }
  MPI_Finalize();
  return status;
}
