// Context parallelism over MPI on one machine: each recurrent operator of seqmix::mpi over a
// sequence cut into equal contiguous slices, one per rank, and ring attention (causal) over
// zigzag slices, against the single-process operator on the same total tokens, and the bytes
// each rank sends against what the algorithm needs (one state per rank; W-1 input rows for
// causal_conv1d; the other ranks' K/V once for ring attention, whose line reports its local
// attention as "slice" and its unhidden communication as "exchange").
//
//   mpiexec -n 2 ./seqmix_bench_cp [--tokens 8192] [--reps 5] [--filter gla]
//   mpiexec -n 4 --oversubscribe ./seqmix_bench_cp
//
// Not a Google Benchmark program: its iteration counts are decided per process, and every
// distributed call is collective, so the ranks must run the same repetitions. Each line:
//   cp/<op>/<np>/<shape>  one process (rank 0 alone, the others asleep), the distributed call
//   (slowest rank, median of --reps), their ratio, bytes sent per rank and bytes needed.
// Every rank runs one thread (serial executor), so with P ranks on a P-core machine the ideal
// speed-up is P, less the slices' extra work (the identity run of the matrix transitions doubles
// a delta rule's slice) and the correction.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "seqmix/mpi.hpp"
#include "seqmix_testing/random.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;
namespace st = seqmix::testing;

struct CpConfig {
  index_t tokens = 8192;
  int reps = 5;
  std::string filter;
};

int cp_rank() { return sm::detail::comm_rank(MPI_COMM_WORLD); }
int cp_ranks() { return sm::detail::comm_size(MPI_COMM_WORLD); }

// Waits for the other ranks without spinning (Open MPI's blocking barrier polls, which would
// take a core from rank 0's single-process run on a small machine).
void cp_sleepy_barrier() {
  MPI_Request request;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  int done = 0;
  while (!done) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

double cp_median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// This rank's equal share [begin, begin + n) of `total` tokens.
index_t cp_begin(index_t total) { return total * cp_rank() / cp_ranks(); }
index_t cp_tokens(index_t total) { return total * (cp_rank() + 1) / cp_ranks() - cp_begin(total); }

template <std::size_t R>
seqmix::ConstView<float, R> cp_mine(const Tensor<float, R>& x, index_t total) {
  return x.cview().slice(1, cp_begin(total), cp_tokens(total));
}

// One operator: `single()` runs it over the whole sequence on this process, `distributed(stats)`
// runs the mpi:: call on this rank's slice and fills its StatePassStats.
struct CpCase {
  std::string op, shape;
  std::function<void()> single;
  std::function<void(sm::StatePassStats&)> distributed;
};

void cp_run(const CpCase& c, const CpConfig& cfg) {
  const int rank = cp_rank(), ranks = cp_ranks();
  using clock = std::chrono::steady_clock;
  std::vector<double> single, dist;
  for (int rep = 0; rep < cfg.reps; ++rep) {  // rank 0 alone
    cp_sleepy_barrier();
    if (rank == 0) {
      const auto t = clock::now();
      c.single();
      single.push_back(std::chrono::duration<double>(clock::now() - t).count());
    }
  }
  sm::StatePassStats stats;
  c.distributed(stats);  // warm-up
  for (int rep = 0; rep < cfg.reps; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t = clock::now();
    c.distributed(stats);
    double mine = std::chrono::duration<double>(clock::now() - t).count(), slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    dist.push_back(slowest);
  }
  // The slowest rank's bytes and phases (of the last repetition).
  double mine[4] = {static_cast<double>(stats.bytes_sent), stats.slice_seconds, stats.exchange_seconds,
                    stats.correct_seconds},
         worst[4] = {};
  MPI_Reduce(mine, worst, 4, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  const double max_sent = worst[0];
  if (rank != 0) return;
  const double s = cp_median(single), d = cp_median(dist);
  std::printf("%-48s one process %9.2f ms  distributed %9.2f ms  speed-up %5.2f  sent/rank %9.1f kB"
              "  needed %9.1f kB  (slice %.1f, exchange %.1f, correction %.1f ms)\n",
              ("cp/" + c.op + "/" + std::to_string(ranks) + "/" + c.shape).c_str(), 1e3 * s, 1e3 * d, s / d, max_sent / 1e3,
              static_cast<double>(stats.bytes_needed) / 1e3, 1e3 * worst[1], 1e3 * worst[2], 1e3 * worst[3]);
  std::fflush(stdout);
}

std::vector<CpCase> cp_cases(const CpConfig& cfg) {
  const index_t T = cfg.tokens, B = 1, H = 4, K = 64, V = 64;
  const std::string qkv = "B1_H4_K64_V64_T" + std::to_string(T);
  std::vector<CpCase> cases;
  // Inputs shared by the attention-like operators, the whole sequence on every rank.
  auto q = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, H, K}, 1));
  auto k = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, H, K}, 2, -0.5f, 0.5f));
  auto v = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, H, V}, 3));
  auto g = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, H, K}, 4, -0.1f, -0.001f));
  auto gs = std::make_shared<Tensor<float, 3>>(st::random_tensor<3>({B, T, H}, 5, -0.1f, -0.001f));
  auto beta = std::make_shared<Tensor<float, 3>>(st::random_tensor<3>({B, T, H}, 6, 0.1f, 0.9f));
  auto u = std::make_shared<Tensor<float, 2>>(st::random_tensor<2>({H, K}, 7));
  auto o_all = std::make_shared<Tensor<float, 4>>(std::array<index_t, 4>{B, T, H, V});
  const index_t n = cp_tokens(T);
  auto o_mine = std::make_shared<Tensor<float, 4>>(std::array<index_t, 4>{B, n, H, V});

  {  // causal_conv1d: Mamba's W = 4 over D = 1024 channels
    const index_t D = 1024, W = 4;
    auto x = std::make_shared<Tensor<float, 3>>(st::random_tensor<3>({B, T, D}, 11));
    auto w = std::make_shared<Tensor<float, 2>>(st::random_tensor<2>({D, W}, 12));
    auto y = std::make_shared<Tensor<float, 3>>(std::array<index_t, 3>{B, T, D});
    auto y_mine = std::make_shared<Tensor<float, 3>>(std::array<index_t, 3>{B, n, D});
    cases.push_back({"causal_conv1d", "B1_D1024_W4_T" + std::to_string(T),
                     [=] { seqmix::causal_conv1d({x->cview(), w->cview()}, {y->view()}); },
                     [=](sm::StatePassStats& s) {
                       sm::causal_conv1d(MPI_COMM_WORLD, {cp_mine(*x, T), w->cview()}, {y_mine->view()}, {}, seqmix::serial_executor(), &s);
                     }});
  }
  {  // selective_scan: D = 512 channels, N = 16
    const index_t D = 512, N = 16;
    auto x = std::make_shared<Tensor<float, 3>>(st::random_tensor<3>({B, T, D}, 21));
    auto dt = std::make_shared<Tensor<float, 3>>(st::random_tensor<3>({B, T, D}, 22, -3.f, 0.f));
    auto A = std::make_shared<Tensor<float, 2>>(st::random_tensor<2>({D, N}, 23, -1.f, -0.1f));
    auto Bm = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, 1, N}, 24));
    auto y = std::make_shared<Tensor<float, 3>>(std::array<index_t, 3>{B, T, D});
    auto y_mine = std::make_shared<Tensor<float, 3>>(std::array<index_t, 3>{B, n, D});
    seqmix::SelectiveScanOptions options;
    options.delta_softplus = true;
    cases.push_back({"selective_scan", "B1_D512_N16_T" + std::to_string(T),
                     [=] {
                       seqmix::selective_scan({x->cview(), dt->cview(), A->cview(), Bm->cview(), Bm->cview()},
                                              {y->view()}, options);
                     },
                     [=](sm::StatePassStats& s) {
                       sm::selective_scan(MPI_COMM_WORLD,
                                          {cp_mine(*x, T), cp_mine(*dt, T), A->cview(), cp_mine(*Bm, T), cp_mine(*Bm, T)},
                                          {y_mine->view()}, options, seqmix::serial_executor(), &s);
                     }});
  }
  {  // ssd (Mamba-2): H = 4 heads of P = 64, one group of N = 64
    const index_t N = 64;  // x is the [B,T,H,64] value tensor, so P = 64
    auto dt = std::make_shared<Tensor<float, 3>>(st::random_tensor<3>({B, T, H}, 41, -3.f, 0.f));
    auto A = std::make_shared<Tensor<float, 1>>(st::random_tensor<1>({H}, 42, -1.f, -0.1f));
    auto Bm = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, 1, N}, 43));
    seqmix::SsdOptions options;
    options.dt_softplus = true;
    cases.push_back({"ssd", "B1_H4_P64_N64_T" + std::to_string(T),
                     [=] {
                       seqmix::SsdInputs in;
                       in.x = v->cview(), in.dt = dt->cview(), in.A = A->cview(), in.Bm = Bm->cview(), in.Cm = Bm->cview();
                       seqmix::ssd(in, {o_all->view()}, options);
                     },
                     [=](sm::StatePassStats& s) {
                       seqmix::SsdInputs in;
                       in.x = cp_mine(*v, T), in.dt = cp_mine(*dt, T), in.A = A->cview(), in.Bm = cp_mine(*Bm, T);
                       in.Cm = cp_mine(*Bm, T);
                       sm::ssd(MPI_COMM_WORLD, in, {o_mine->view()}, options, seqmix::serial_executor(), &s);
                     }});
  }
  cases.push_back({"linear_attention", qkv,
                   [=] { seqmix::linear_attention({q->cview(), k->cview(), v->cview()}, {o_all->view()}); },
                   [=](sm::StatePassStats& s) {
                     sm::linear_attention(MPI_COMM_WORLD, {cp_mine(*q, T), cp_mine(*k, T), cp_mine(*v, T)},
                                          {o_mine->view()}, {}, seqmix::serial_executor(), &s);
                   }});
  cases.push_back({"gla", qkv,
                   [=] {
                     seqmix::gated_linear_attention({q->cview(), k->cview(), v->cview(), g->cview()}, {o_all->view()});
                   },
                   [=](sm::StatePassStats& s) {
                     sm::gated_linear_attention(MPI_COMM_WORLD,
                                                {cp_mine(*q, T), cp_mine(*k, T), cp_mine(*v, T), cp_mine(*g, T)},
                                                {o_mine->view()}, {}, seqmix::serial_executor(), &s);
                   }});
  cases.push_back({"rwkv6", qkv,
                   [=] {
                     seqmix::rwkv6({q->cview(), k->cview(), v->cview(), g->cview(), u->cview()}, {o_all->view()});
                   },
                   [=](sm::StatePassStats& s) {
                     sm::rwkv6(MPI_COMM_WORLD,
                               {cp_mine(*q, T), cp_mine(*k, T), cp_mine(*v, T), cp_mine(*g, T), u->cview()},
                               {o_mine->view()}, {}, seqmix::serial_executor(), &s);
                   }});
  seqmix::DeltaRuleOptions delta_options;
  delta_options.qk_norm = seqmix::QkNorm::l2;
  cases.push_back({"delta_rule", qkv,
                   [=] {
                     seqmix::delta_rule({q->cview(), k->cview(), v->cview(), beta->cview()}, {o_all->view()},
                                        delta_options);
                   },
                   [=](sm::StatePassStats& s) {
                     sm::delta_rule(MPI_COMM_WORLD,
                                    {cp_mine(*q, T), cp_mine(*k, T), cp_mine(*v, T), cp_mine(*beta, T)},
                                    {o_mine->view()}, delta_options, seqmix::serial_executor(), &s);
                   }});
  seqmix::GatedDeltaRuleOptions gdn_options;
  gdn_options.qk_norm = seqmix::QkNorm::l2;
  cases.push_back({"gated_delta_rule", qkv,
                   [=] {
                     seqmix::GatedDeltaRuleInputs in{q->cview(), k->cview(), v->cview(), beta->cview(), gs->cview()};
                     seqmix::gated_delta_rule(in, {o_all->view()}, gdn_options);
                   },
                   [=](sm::StatePassStats& s) {
                     seqmix::GatedDeltaRuleInputs in{cp_mine(*q, T), cp_mine(*k, T), cp_mine(*v, T),
                                                     cp_mine(*beta, T), cp_mine(*gs, T)};
                     sm::gated_delta_rule(MPI_COMM_WORLD, in, {o_mine->view()}, gdn_options, seqmix::serial_executor(), &s);
                   }});
  {  // rwkv7: small a, b (the rank-one term of diag(w) + b a^T), so the state stays bounded
    auto a = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, H, K}, 31, -0.1f, 0.1f));
    auto bb = std::make_shared<Tensor<float, 4>>(st::random_tensor<4>({B, T, H, K}, 32, -0.1f, 0.1f));
    cases.push_back({"rwkv7", qkv,
                     [=] {
                       seqmix::rwkv7({q->cview(), k->cview(), v->cview(), a->cview(), bb->cview(), g->cview()},
                                     {o_all->view()});
                     },
                     [=](sm::StatePassStats& s) {
                       sm::rwkv7(MPI_COMM_WORLD,
                                 {cp_mine(*q, T), cp_mine(*k, T), cp_mine(*v, T), cp_mine(*a, T), cp_mine(*bb, T),
                                  cp_mine(*g, T)},
                                 {o_mine->view()}, seqmix::serial_executor(), &s);
                     }});
  }
  {  // ring_attention, causal, on zigzag slices (each rank holds chunks r and 2P-1-r): the K/V
     // blocks travel once around the ring; needed = the other ranks' K/V, once.
    const int ranks = cp_ranks(), rank = cp_rank();
    const auto slices = std::make_shared<sm::ContextSlices>(sm::ContextSlices::zigzag(T, ranks));
    const index_t mine = slices->tokens(rank);
    auto gather = [&](const Tensor<float, 4>& x) {
      auto local = std::make_shared<Tensor<float, 4>>(std::array<index_t, 4>{B, mine, H, x.size(3)});
      for (const sm::SliceSegment& seg : slices->segments(rank))
        for (index_t t = 0; t < seg.length; ++t)
          for (index_t h = 0; h < H; ++h)
            for (index_t c = 0; c < x.size(3); ++c) local->view()(0, seg.local + t, h, c) = x.cview()(0, seg.begin + t, h, c);
      return local;
    };
    auto ql = gather(*q), kl = gather(*k), vl = gather(*v);
    auto ol = std::make_shared<Tensor<float, 4>>(std::array<index_t, 4>{B, mine, H, V});
    seqmix::AttentionOptions causal;
    causal.causal = true;
    const std::int64_t needed = static_cast<std::int64_t>(T - mine) * H * (K + V) * static_cast<std::int64_t>(sizeof(float));
    cases.push_back({"ring_attention", "causal_zigzag_" + qkv,
                     [=] { seqmix::attention(seqmix::AttentionInputs<float>{q->cview(), k->cview(), v->cview()}, {o_all->view()}, causal); },
                     [=](sm::StatePassStats& s) {
                       sm::RingAttentionStats rs;
                       sm::ring_attention(MPI_COMM_WORLD, *slices, seqmix::AttentionInputs<float>{ql->cview(), kl->cview(), vl->cview()},
                                          {ol->view()}, causal, seqmix::serial_executor(), &rs);
                       s.bytes_sent = rs.bytes_sent, s.bytes_needed = needed;
                       s.slice_seconds = rs.compute_seconds, s.exchange_seconds = rs.wait_seconds, s.correct_seconds = 0;
                     }});
  }
  return cases;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  CpConfig cfg;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--tokens") cfg.tokens = std::atoll(argv[i + 1]);
    else if (flag == "--reps") cfg.reps = std::max(1, std::atoi(argv[i + 1]));
    else if (flag == "--filter") cfg.filter = argv[i + 1];
  }
  if (cp_rank() == 0)
    std::printf("context parallelism over MPI: %d ranks, one thread each, %lld tokens, median of %d\n", cp_ranks(),
                static_cast<long long>(cfg.tokens), cfg.reps);
  for (const CpCase& c : cp_cases(cfg))
    if (cfg.filter.empty() || c.op.find(cfg.filter) != std::string::npos) cp_run(c, cfg);
  MPI_Finalize();
  return 0;
}
