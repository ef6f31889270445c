// The mpi:: recurrent operators of state_passing.hpp (causal_conv1d, selective_scan,
// linear_attention, gated_linear_attention, rwkv6, delta_rule, gated_delta_rule / KDA, rwkv7)
// against one call of the operator over the whole sequences on this process: slices of unequal
// length (45, 1, 70, 9 tokens by rank: one of 1 token, some shorter than a 64-token chunk), B = 2,
// GQA where the operator has it, an initial state on rank 0, every rank's final state against the
// state the single call reaches after that rank's last token; exscan_matrix_slices on its own;
// refusals on every rank.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "seqmix/linear_attention/delta_rule/chunked.hpp"
#include "seqmix/mpi/state_passing.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;
namespace st = seqmix::testing;

int pass_rank() { return sm::detail::comm_rank(MPI_COMM_WORLD); }
int pass_ranks() { return sm::detail::comm_size(MPI_COMM_WORLD); }

// Which global tokens each rank holds: lengths from a repeating pattern.
struct PassSlices {
  std::vector<index_t> start, length;
  index_t total = 0;
  explicit PassSlices(std::vector<index_t> pattern) {
    for (int r = 0; r < pass_ranks(); ++r) {
      start.push_back(total);
      length.push_back(pattern[static_cast<std::size_t>(r) % pattern.size()]);
      total += length.back();
    }
  }
  index_t begin() const { return start[static_cast<std::size_t>(pass_rank())]; }
  index_t tokens() const { return length[static_cast<std::size_t>(pass_rank())]; }
  // Global end of this rank's slice (for the prefix run that gives its final state).
  index_t end() const { return begin() + tokens(); }
};

const std::vector<index_t> kPassPattern = {45, 1, 70, 9};

// This rank's rows [begin, begin + tokens) of x along dimension 1, as a tensor of their own.
template <std::size_t Rank>
Tensor<float, Rank> pass_rows(const Tensor<float, Rank>& x, index_t begin, index_t n) {
  auto shape = x.shape();
  shape[1] = n;
  Tensor<float, Rank> part(shape);
  seqmix::copy(x.cview().slice(1, begin, n), part.view());
  return part;
}

template <std::size_t Rank>
void pass_check(const char* what, const Tensor<float, Rank>& got, const Tensor<float, Rank>& want, double tol) {
  const auto c = st::compare(got.cview(), want.cview(), tol);
  INFO(what << " on rank " << pass_rank() << " of " << pass_ranks() << ": " << c.describe());
  CHECK(c.ok);
}

}  // namespace

TEST_CASE("mpi causal_conv1d equals one call, windows reaching back over short slices", "[mpi]") {
  for (const std::vector<index_t>& pattern : {kPassPattern, std::vector<index_t>{1, 2, 1, 6}}) {
    const PassSlices sl(pattern);
    const index_t B = 2, D = 6, W = 4;
    const auto x = st::random_tensor<3>({B, sl.total, D}, 31);
    const auto w = st::random_tensor<2>({D, W}, 32);
    const auto bias = st::random_tensor<1>({D}, 33);
    const auto s0 = st::random_tensor<3>({B, W - 1, D}, 34);
    seqmix::CausalConv1dOptions options;
    options.activation = seqmix::ConvActivation::silu;
    seqmix::CausalConv1dInputs whole{x.cview(), w.cview(), bias.cview(), s0.cview()};
    Tensor<float, 3> y_ref({B, sl.total, D}), fin_ref({B, W - 1, D});
    seqmix::causal_conv1d(whole, {y_ref.view()}, options);
    // The window after this rank's slice: the same call over the prefix up to its end.
    seqmix::CausalConv1dInputs prefix = whole;
    prefix.x = x.cview().slice(1, 0, sl.end());
    Tensor<float, 3> y_prefix({B, sl.end(), D});
    seqmix::causal_conv1d(prefix, {y_prefix.view(), fin_ref.view()}, options);

    const auto x_r = pass_rows(x, sl.begin(), sl.tokens());
    seqmix::CausalConv1dInputs local{x_r.cview(), w.cview(), bias.cview()};
    if (pass_rank() == 0) local.initial_state = s0.cview();
    Tensor<float, 3> y({B, sl.tokens(), D}), fin({B, W - 1, D});
    sm::StatePassStats stats;
    sm::causal_conv1d(MPI_COMM_WORLD, local, {y.view(), fin.view()}, options, seqmix::serial_executor(), &stats);
    pass_check("y", y, pass_rows(y_ref, sl.begin(), sl.tokens()), 1e-5);
    pass_check("final window", fin, fin_ref, 1e-6);
    CHECK(stats.bytes_needed == B * (W - 1) * D * 4);
  }
}

TEST_CASE("mpi selective_scan equals one call over the whole sequence", "[mpi]") {
  const PassSlices sl(kPassPattern);
  const index_t B = 2, D = 8, N = 4, G = 2;
  const auto u = st::random_tensor<3>({B, sl.total, D}, 41);
  const auto delta = st::random_tensor<3>({B, sl.total, D}, 42, -2.f, 0.5f);
  const auto A = st::random_tensor<2>({D, N}, 43, -1.5f, -0.2f);
  const auto Bm = st::random_tensor<4>({B, sl.total, G, N}, 44);
  const auto Cm = st::random_tensor<4>({B, sl.total, G, N}, 45);
  const auto Dskip = st::random_tensor<1>({D}, 46);
  const auto z = st::random_tensor<3>({B, sl.total, D}, 47);
  const auto bias = st::random_tensor<1>({D}, 48);
  const auto s0 = st::random_tensor<3>({B, D, N}, 49);
  seqmix::SelectiveScanOptions options;
  options.delta_softplus = true;
  seqmix::SelectiveScanInputs whole{u.cview(), delta.cview(), A.cview(), Bm.cview(), Cm.cview(),
                                    Dskip.cview(), z.cview(), bias.cview(), s0.cview()};
  Tensor<float, 3> y_ref({B, sl.total, D}), fin_ref({B, D, N});
  seqmix::selective_scan(whole, {y_ref.view()}, options);
  seqmix::SelectiveScanInputs prefix = whole;
  prefix.u = u.cview().slice(1, 0, sl.end()), prefix.delta = delta.cview().slice(1, 0, sl.end());
  prefix.Bm = Bm.cview().slice(1, 0, sl.end()), prefix.Cm = Cm.cview().slice(1, 0, sl.end());
  prefix.z = z.cview().slice(1, 0, sl.end());
  Tensor<float, 3> y_prefix({B, sl.end(), D});
  seqmix::selective_scan(prefix, {y_prefix.view(), fin_ref.view()}, options);

  const index_t b0 = sl.begin(), T = sl.tokens();
  const auto u_r = pass_rows(u, b0, T), d_r = pass_rows(delta, b0, T), z_r = pass_rows(z, b0, T);
  const auto Bm_r = pass_rows(Bm, b0, T), Cm_r = pass_rows(Cm, b0, T);
  seqmix::SelectiveScanInputs local{u_r.cview(), d_r.cview(), A.cview(), Bm_r.cview(), Cm_r.cview(),
                                    Dskip.cview(), z_r.cview(), bias.cview()};
  if (pass_rank() == 0) local.initial_state = s0.cview();
  Tensor<float, 3> y({B, T, D}), fin({B, D, N});
  sm::selective_scan(MPI_COMM_WORLD, local, {y.view(), fin.view()}, options);
  pass_check("y", y, pass_rows(y_ref, b0, T), 1e-4);
  pass_check("final state", fin, fin_ref, 1e-4);
}

namespace {

// q, k [B,T,H,K], v [B,T,HV,V] and a log-decay gate [B,T,HV,K] for the attention-like operators.
struct PassQkv {
  index_t B = 2, H = 2, HV = 4, K = 16, V = 8;
  PassSlices sl{kPassPattern};
  Tensor<float, 4> q, k, v, g, s0;
  Tensor<float, 3> beta, g_scalar;
  explicit PassQkv(std::uint64_t seed, bool gqa = true) {
    if (!gqa) H = HV;
    q = st::random_tensor<4>({B, sl.total, H, K}, seed + 1);
    k = st::random_tensor<4>({B, sl.total, H, K}, seed + 2, -0.5f, 0.5f);
    v = st::random_tensor<4>({B, sl.total, HV, V}, seed + 3);
    g = st::random_tensor<4>({B, sl.total, HV, K}, seed + 4, -0.3f, -0.01f);
    g_scalar = st::random_tensor<3>({B, sl.total, HV}, seed + 5, -0.3f, -0.01f);
    beta = st::random_tensor<3>({B, sl.total, HV}, seed + 6, 0.1f, 0.9f);
    s0 = st::random_tensor<4>({B, HV, K, V}, seed + 7);
  }
  template <std::size_t R>
  Tensor<float, R> mine(const Tensor<float, R>& x) const {
    return pass_rows(x, sl.begin(), sl.tokens());
  }
  template <std::size_t R>
  seqmix::ConstView<float, R> upto(const Tensor<float, R>& x) const {
    return x.cview().slice(1, 0, sl.end());
  }
};

// Runs `single(prefix_end, o, fin)` over global tokens [0, prefix_end) and `distributed(o, fin)`
// on this rank's slice, and compares the outputs and this rank's final state.
template <class Single, class Distributed>
void pass_compare_qkv(const PassQkv& p, index_t Kstate, Single&& single, Distributed&& distributed, double tol) {
  Tensor<float, 4> o_ref({p.B, p.sl.total, p.HV, p.V}), fin_ref({p.B, p.HV, Kstate, p.V});
  Tensor<float, 4> o_prefix({p.B, p.sl.end(), p.HV, p.V});
  single(p.sl.total, o_ref.view(), seqmix::TensorView<float, 4>());
  single(p.sl.end(), o_prefix.view(), fin_ref.view());
  Tensor<float, 4> o({p.B, p.sl.tokens(), p.HV, p.V}), fin({p.B, p.HV, Kstate, p.V});
  distributed(o.view(), fin.view());
  pass_check("o", o, pass_rows(o_ref, p.sl.begin(), p.sl.tokens()), tol);
  pass_check("final state", fin, fin_ref, tol);
}

}  // namespace

TEST_CASE("mpi linear_attention equals one call, GQA and an initial state", "[mpi]") {
  const PassQkv p(50);
  const auto q = p.mine(p.q), k = p.mine(p.k), v = p.mine(p.v);
  pass_compare_qkv(
      p, p.K,
      [&](index_t end, const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::LinearAttentionInputs in{p.q.cview().slice(1, 0, end), p.k.cview().slice(1, 0, end),
                                         p.v.cview().slice(1, 0, end), p.s0.cview()};
        seqmix::linear_attention(in, {o, fin});
      },
      [&](const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::LinearAttentionInputs in{q.cview(), k.cview(), v.cview()};
        if (pass_rank() == 0) in.initial_state = p.s0.cview();
        sm::linear_attention(MPI_COMM_WORLD, in, {o, fin});
      },
      1e-4);
}

TEST_CASE("mpi gated_linear_attention equals one call, channel and scalar gates", "[mpi]") {
  const PassQkv p(60);
  const auto q = p.mine(p.q), k = p.mine(p.k), v = p.mine(p.v), g = p.mine(p.g);
  const auto gs = p.mine(p.g_scalar);
  for (const auto gate : {seqmix::GateKind::channel, seqmix::GateKind::scalar}) {
    INFO("gate " << static_cast<int>(gate));
    seqmix::GatedLinearAttentionOptions options;
    options.gate = gate;
    const bool channel = gate == seqmix::GateKind::channel;
    // GQA: the gate has HV heads here (Hg = HV).
    pass_compare_qkv(
        p, p.K,
        [&](index_t end, const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
          seqmix::GatedLinearAttentionInputs in{p.q.cview().slice(1, 0, end), p.k.cview().slice(1, 0, end),
                                                p.v.cview().slice(1, 0, end)};
          if (channel) in.g = p.g.cview().slice(1, 0, end);
          else in.g_scalar = p.g_scalar.cview().slice(1, 0, end);
          in.initial_state = p.s0.cview();
          seqmix::gated_linear_attention(in, {o, fin}, options);
        },
        [&](const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
          seqmix::GatedLinearAttentionInputs in{q.cview(), k.cview(), v.cview()};
          if (channel) in.g = g.cview();
          else in.g_scalar = gs.cview();
          if (pass_rank() == 0) in.initial_state = p.s0.cview();
          sm::gated_linear_attention(MPI_COMM_WORLD, in, {o, fin}, options);
        },
        1e-4);
  }
}

TEST_CASE("mpi rwkv6 equals one call over the whole sequence", "[mpi]") {
  const PassQkv p(70, /*gqa=*/false);
  const auto u = st::random_tensor<2>({p.HV, p.K}, 78);
  const auto r = p.mine(p.q), k = p.mine(p.k), v = p.mine(p.v), g = p.mine(p.g);
  pass_compare_qkv(
      p, p.K,
      [&](index_t end, const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::Rwkv6Inputs in{p.q.cview().slice(1, 0, end), p.k.cview().slice(1, 0, end),
                               p.v.cview().slice(1, 0, end), p.g.cview().slice(1, 0, end), u.cview(), p.s0.cview()};
        seqmix::rwkv6(in, {o, fin});
      },
      [&](const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::Rwkv6Inputs in{r.cview(), k.cview(), v.cview(), g.cview(), u.cview()};
        if (pass_rank() == 0) in.initial_state = p.s0.cview();
        sm::rwkv6(MPI_COMM_WORLD, in, {o, fin});
      },
      1e-4);
}

TEST_CASE("mpi gated_delta_rule and KDA equal one call, GQA and an initial state", "[mpi]") {
  const PassQkv p(80);
  const auto q = p.mine(p.q), k = p.mine(p.k), v = p.mine(p.v), g = p.mine(p.g);
  const auto gs = p.mine(p.g_scalar);
  const auto beta = p.mine(p.beta);
  for (const auto gate : {seqmix::DeltaGate::scalar, seqmix::DeltaGate::channel}) {
    INFO("gate " << static_cast<int>(gate));
    seqmix::GatedDeltaRuleOptions options;
    options.gate = gate;
    options.qk_norm = seqmix::QkNorm::l2;
    const bool channel = gate == seqmix::DeltaGate::channel;
    pass_compare_qkv(
        p, p.K,
        [&](index_t end, const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
          seqmix::GatedDeltaRuleInputs in{p.q.cview().slice(1, 0, end), p.k.cview().slice(1, 0, end),
                                          p.v.cview().slice(1, 0, end), p.beta.cview().slice(1, 0, end)};
          if (channel) in.g = p.g.cview().slice(1, 0, end);
          else in.g_scalar = p.g_scalar.cview().slice(1, 0, end);
          in.initial_state = p.s0.cview();
          seqmix::gated_delta_rule(in, {o, fin}, options);
        },
        [&](const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
          seqmix::GatedDeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview()};
          if (channel) in.g = g.cview();
          else in.g_scalar = gs.cview();
          if (pass_rank() == 0) in.initial_state = p.s0.cview();
          sm::gated_delta_rule(MPI_COMM_WORLD, in, {o, fin}, options, st::two_thread_pool());
        },
        1e-4);
  }
}

TEST_CASE("mpi delta_rule equals one call over the whole sequence", "[mpi]") {
  const PassQkv p(90);
  const auto q = p.mine(p.q), k = p.mine(p.k), v = p.mine(p.v);
  const auto beta = p.mine(p.beta);
  seqmix::DeltaRuleOptions options;
  options.qk_norm = seqmix::QkNorm::l2;
  pass_compare_qkv(
      p, p.K,
      [&](index_t end, const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::DeltaRuleInputs in{p.q.cview().slice(1, 0, end), p.k.cview().slice(1, 0, end),
                                   p.v.cview().slice(1, 0, end), p.beta.cview().slice(1, 0, end), p.s0.cview()};
        seqmix::delta_rule(in, {o, fin}, options);
      },
      [&](const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::DeltaRuleInputs in{q.cview(), k.cview(), v.cview(), beta.cview()};
        if (pass_rank() == 0) in.initial_state = p.s0.cview();
        sm::delta_rule(MPI_COMM_WORLD, in, {o, fin}, options);
      },
      1e-4);
}

TEST_CASE("mpi rwkv7 equals one call over the whole sequence", "[mpi]") {
  const PassQkv p(100, /*gqa=*/false);
  // a = -kappa, b = kappa * alpha with a unit kappa: the usual RWKV-7 in-context learning rate.
  Tensor<float, 4> a = st::random_tensor<4>({p.B, p.sl.total, p.HV, p.K}, 108), b({p.B, p.sl.total, p.HV, p.K});
  const auto alpha = st::random_tensor<4>({p.B, p.sl.total, p.HV, p.K}, 109, 0.f, 1.f);
  for (index_t bb = 0; bb < p.B; ++bb)
    for (index_t t = 0; t < p.sl.total; ++t)
      for (index_t h = 0; h < p.HV; ++h) {
        double n = 0;
        for (index_t c = 0; c < p.K; ++c) n += double(a(bb, t, h, c)) * a(bb, t, h, c);
        for (index_t c = 0; c < p.K; ++c) {
          a(bb, t, h, c) = static_cast<float>(a(bb, t, h, c) / std::sqrt(n));
          b(bb, t, h, c) = -a(bb, t, h, c) * alpha(bb, t, h, c);
        }
      }
  const auto r = p.mine(p.q), k = p.mine(p.k), v = p.mine(p.v), g = p.mine(p.g), a_r = p.mine(a), b_r = p.mine(b);
  pass_compare_qkv(
      p, p.K,
      [&](index_t end, const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::Rwkv7Inputs in{p.q.cview().slice(1, 0, end), p.k.cview().slice(1, 0, end), p.v.cview().slice(1, 0, end),
                               a.cview().slice(1, 0, end),   b.cview().slice(1, 0, end),   p.g.cview().slice(1, 0, end),
                               p.s0.cview()};
        seqmix::rwkv7(in, {o, fin});
      },
      [&](const seqmix::TensorView<float, 4>& o, const seqmix::TensorView<float, 4>& fin) {
        seqmix::Rwkv7Inputs in{r.cview(), k.cview(), v.cview(), a_r.cview(), b_r.cview(), g.cview()};
        if (pass_rank() == 0) in.initial_state = p.s0.cview();
        sm::rwkv7(MPI_COMM_WORLD, in, {o, fin});
      },
      1e-4);
}

TEST_CASE("mpi exscan_matrix_slices composes in rank order", "[mpi]") {
  const int rank = pass_rank();
  // Rank r: transition 0.5 I and local state r + 1, so the prefix of ranks < r is
  // sum_{j<r} 0.5^(r-1-j) (j + 1) in every entry; a second check with a non-diagonal transition
  // against compose_matrix_slices applied in order on every rank.
  const index_t B = 1, H = 2, K = 3, V = 2;
  Tensor<float, 4> T({B, H, K, K}), S({B, H, K, V}), initial({B, H, K, V});
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < K; ++i) T(0, h, i, i) = 0.5f;
  S.fill(static_cast<float>(rank + 1));
  sm::exscan_matrix_slices(MPI_COMM_WORLD, T.cview(), S.cview(), initial.view());
  double want = 0;
  for (int j = 0; j < rank; ++j) want = 0.5 * want + (j + 1);
  for (const float v : initial) CHECK(v == Approx(want).epsilon(1e-6));

  // Non-commuting transitions: rank j's is a random matrix of seed j.
  const auto mine_T = st::random_tensor<4>({B, H, K, K}, 200 + static_cast<std::uint64_t>(rank));
  const auto mine_S = st::random_tensor<4>({B, H, K, V}, 300 + static_cast<std::uint64_t>(rank));
  sm::exscan_matrix_slices(MPI_COMM_WORLD, mine_T.cview(), mine_S.cview(), initial.view());
  Tensor<float, 4> prefix({B, H, K, V});
  for (int j = 0; j < rank; ++j) {
    const auto Tj = st::random_tensor<4>({B, H, K, K}, 200 + static_cast<std::uint64_t>(j));
    const auto Sj = st::random_tensor<4>({B, H, K, V}, 300 + static_cast<std::uint64_t>(j));
    seqmix::compose_matrix_slices({}, prefix.cview(), Tj.cview(), Sj.cview(), {}, prefix.view());
  }
  pass_check("prefix", initial, prefix, 1e-5);
}

TEST_CASE("mpi recurrent operators refuse bad calls on every rank", "[mpi]") {
  const int rank = pass_rank(), ranks = pass_ranks();
  const index_t B = 1, H = 2, K = 4, V = 4, T = 5;
  const auto q = st::random_tensor<4>({B, T, H, K}, 1), v = st::random_tensor<4>({B, T, H, V}, 2);
  const auto v8 = st::random_tensor<4>({B, T, H, 8}, 2);
  const auto g = st::random_tensor<4>({B, T, H, K}, 3, -0.2f, 0.f);
  const auto beta = st::random_tensor<3>({B, T, H}, 4, 0.1f, 0.9f);
  const auto g_scalar = st::random_tensor<3>({B, T, H}, 12, -0.2f, 0.f);
  const auto s0 = st::random_tensor<4>({B, H, K, V}, 5);
  Tensor<float, 4> o({B, T, H, V}), o8({B, T, H, 8});
  o.fill(3.f);
  const auto untouched = [&] {
    for (const float x : o) if (x != 3.f) return false;
    return true;
  };
  SECTION("gated_delta_rule: ranks disagree on the value size") {
    seqmix::GatedDeltaRuleInputs in{q.cview(), q.cview(), v.cview(), beta.cview()};
    in.g_scalar = g_scalar.cview();
    seqmix::GatedDeltaRuleOutputs out{o.view()};
    if (rank == ranks - 1) in.v = v8.cview(), out.o = o8.view();
    CHECK_THROWS_WITH(sm::gated_delta_rule(MPI_COMM_WORLD, in, out), Catch::Contains("differs between ranks"));
  }
  SECTION("gated_linear_attention: an initial state on a rank other than 0") {
    seqmix::GatedLinearAttentionInputs in{q.cview(), q.cview(), v.cview(), g.cview()};
    if (rank == ranks - 1) in.initial_state = s0.cview();
    CHECK_THROWS_WITH(sm::gated_linear_attention(MPI_COMM_WORLD, in, {o.view()}),
                      Catch::Contains("initial_state") && Catch::Contains("rank " + std::to_string(ranks - 1)));
  }
  SECTION("rwkv7: a rank without tokens") {
    const auto q0 = st::random_tensor<4>({B, 0, H, K}, 1);
    Tensor<float, 4> o0({B, 0, H, V});
    seqmix::Rwkv7Inputs in{q.cview(), q.cview(), v.cview(), q.cview(), q.cview(), g.cview()};
    seqmix::Rwkv7Outputs out{o.view()};
    if (rank == 1 % ranks)
      in = seqmix::Rwkv7Inputs{q0.cview(), q0.cview(), q0.cview(), q0.cview(), q0.cview(), q0.cview()},
      out.o = o0.view();
    CHECK_THROWS_WITH(sm::rwkv7(MPI_COMM_WORLD, in, out), Catch::Contains("no tokens"));
  }
  SECTION("causal_conv1d: ranks disagree on the kernel width") {
    const auto x = st::random_tensor<3>({B, T, 4}, 6);
    const auto w4 = st::random_tensor<2>({4, 4}, 7), w3 = st::random_tensor<2>({4, 3}, 8);
    Tensor<float, 3> y({B, T, 4});
    y.fill(3.f);
    seqmix::CausalConv1dInputs in{x.cview(), rank == 0 ? w3.cview() : w4.cview()};
    CHECK_THROWS_WITH(sm::causal_conv1d(MPI_COMM_WORLD, in, {y.view()}), Catch::Contains("differs between ranks"));
    for (const float x2 : y) CHECK(x2 == 3.f);
  }
  SECTION("selective_scan: token_states") {
    const auto u = st::random_tensor<3>({B, T, 4}, 9);
    const auto A = st::random_tensor<2>({4, 2}, 10, -1.f, -0.1f);
    const auto Bm = st::random_tensor<4>({B, T, 1, 2}, 11);
    Tensor<float, 3> y({B, T, 4});
    Tensor<float, 4> ts({B, T, 4, 2});
    seqmix::SelectiveScanInputs in{u.cview(), u.cview(), A.cview(), Bm.cview(), Bm.cview()};
    seqmix::SelectiveScanOutputs out{y.view()};
    if (rank == 0) out.token_states = ts.view();
    CHECK_THROWS_WITH(sm::selective_scan(MPI_COMM_WORLD, in, out), Catch::Contains("token_states"));
  }
  CHECK(untouched());
}
