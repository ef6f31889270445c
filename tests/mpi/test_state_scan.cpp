// mpi::ssd (slices from zero, MPI_Exscan of the transitions, correction) against one seqmix::ssd
// call over the whole sequences: unequal slices with a 1-token one and ones shorter than a chunk,
// B = 2, grouped B/C, z, D, dt_bias, an initial state, the final state; exscan_diagonal_slices on
// its own; refusals on every rank.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "seqmix/mpi/state_scan.hpp"
#include "seqmix/ssm/ssd/reference.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;
namespace st = seqmix::testing;

int scan_rank() { return sm::detail::comm_rank(MPI_COMM_WORLD); }
int scan_ranks() { return sm::detail::comm_size(MPI_COMM_WORLD); }

// Rows [start, start + n) of x along dimension 1, as a tensor of their own.
template <std::size_t Rank>
Tensor<float, Rank> scan_rows(const Tensor<float, Rank>& x, index_t start, index_t n) {
  auto shape = x.shape();
  shape[1] = n;
  Tensor<float, Rank> part(shape);
  seqmix::copy(x.cview().slice(1, start, n), part.view());
  return part;
}

}  // namespace

TEST_CASE("mpi ssd equals one ssd call over the whole sequence", "[mpi]") {
  const int rank = scan_rank(), ranks = scan_ranks();
  static const index_t pattern[4] = {45, 1, 70, 9};  // chunk_size 32: shorter, 1 token, longer
  std::vector<index_t> lengths, starts;
  index_t total = 0;
  for (int r = 0; r < ranks; ++r) starts.push_back(total), lengths.push_back(pattern[r % 4]), total += lengths.back();
  const index_t B = 2, H = 4, P = 8, G = 2, N = 16;
  const auto x = st::random_tensor<4>({B, total, H, P}, 21);
  const auto dt = st::random_tensor<3>({B, total, H}, 22, -2.f, 0.5f);
  const auto Bm = st::random_tensor<4>({B, total, G, N}, 23);
  const auto Cm = st::random_tensor<4>({B, total, G, N}, 24);
  const auto z = st::random_tensor<4>({B, total, H, P}, 25);
  const auto A = st::random_tensor<1>({H}, 26, -1.5f, -0.2f);
  const auto D = st::random_tensor<1>({H}, 27);
  const auto dt_bias = st::random_tensor<1>({H}, 28);
  const auto s0 = st::random_tensor<4>({B, H, P, N}, 29);
  seqmix::SsdOptions options;
  options.dt_softplus = true;

  seqmix::SsdInputs whole;
  whole.x = x.cview(), whole.dt = dt.cview(), whole.A = A.cview(), whole.Bm = Bm.cview(), whole.Cm = Cm.cview();
  whole.z = z.cview(), whole.D = D.cview(), whole.dt_bias = dt_bias.cview(), whole.initial_state = s0.cview();
  Tensor<float, 4> y_ref({B, total, H, P}), final_ref({B, H, P, N});
  seqmix::reference::ssd(whole, {y_ref.view(), final_ref.view()}, options);

  const index_t start = starts[static_cast<std::size_t>(rank)], T = lengths[static_cast<std::size_t>(rank)];
  const auto x_r = scan_rows(x, start, T), Bm_r = scan_rows(Bm, start, T), Cm_r = scan_rows(Cm, start, T);
  const auto z_r = scan_rows(z, start, T), y_want = scan_rows(y_ref, start, T);
  const auto dt_r = scan_rows(dt, start, T);
  seqmix::SsdInputs local = whole;
  local.x = x_r.cview(), local.dt = dt_r.cview(), local.Bm = Bm_r.cview(), local.Cm = Cm_r.cview();
  local.z = z_r.cview();
  if (rank != 0) local.initial_state = {};
  Tensor<float, 4> y({B, T, H, P}), final_state({B, H, P, N});
  sm::ssd(MPI_COMM_WORLD, local, {y.view(), final_state.view()}, options, st::two_thread_pool());

  INFO("rank " << rank << " of " << ranks << ", T_rank " << T);
  const auto cy = st::compare(y.cview(), y_want.cview(), 1e-4);
  CHECK(cy.ok);
  if (!cy.ok) UNSCOPED_INFO(cy.describe());
  if (rank == ranks - 1) {
    const auto cf = st::compare(final_state.cview(), final_ref.cview(), 1e-4);
    CHECK(cf.ok);
    if (!cf.ok) UNSCOPED_INFO(cf.describe());
  }
}

TEST_CASE("mpi exscan_diagonal_slices composes in rank order", "[mpi]") {
  const int rank = scan_rank();
  // Rank r: decay log(0.5) per row, local state r + 1: the prefix of ranks < r is
  // sum_{j<r} 0.5^(r-1-j) (j + 1) in every entry.
  Tensor<float, 1> decay({3});
  Tensor<float, 2> state({3, 2}), initial({3, 2});
  decay.fill(std::log(0.5f));
  state.fill(static_cast<float>(rank + 1));
  sm::exscan_diagonal_slices<1, 2>(MPI_COMM_WORLD, decay.cview(), state.cview(), initial.view());
  double want = 0;
  for (int j = 0; j < rank; ++j) want = 0.5 * want + (j + 1);
  for (const float v : initial) CHECK(v == Approx(want).epsilon(1e-6));
}

TEST_CASE("mpi ssd refuses bad calls on every rank", "[mpi]") {
  const int rank = scan_rank(), ranks = scan_ranks();
  const index_t B = 1, H = 2, P = 4, N = 8, T = 5;
  const auto x = st::random_tensor<4>({B, T, H, P}, 1);
  const auto dt = st::random_tensor<3>({B, T, H}, 2);
  const auto Bm = st::random_tensor<4>({B, T, 1, N}, 3);
  const auto A = st::random_tensor<1>({H}, 4, -1.f, -0.1f);
  const auto s0 = st::random_tensor<4>({B, H, P, N}, 5);
  seqmix::SsdInputs in;
  in.x = x.cview(), in.dt = dt.cview(), in.A = A.cview(), in.Bm = Bm.cview(), in.Cm = Bm.cview();
  Tensor<float, 4> y({B, T, H, P});
  y.fill(3.f);
  const auto untouched = [&] {
    for (const float v : y) if (v != 3.f) return false;
    return true;
  };
  SECTION("an initial state on a rank other than 0") {
    seqmix::SsdInputs bad = in;
    if (rank == ranks - 1) bad.initial_state = s0.cview();
    CHECK_THROWS_WITH(sm::ssd(MPI_COMM_WORLD, bad, {y.view()}),
                      Catch::Contains("initial_state") && Catch::Contains("rank " + std::to_string(ranks - 1)));
  }
  SECTION("a rank without tokens") {
    const auto x0 = st::random_tensor<4>({B, 0, H, P}, 1);
    const auto dt0 = st::random_tensor<3>({B, 0, H}, 2);
    const auto Bm0 = st::random_tensor<4>({B, 0, 1, N}, 3);
    Tensor<float, 4> y0({B, 0, H, P});
    seqmix::SsdInputs bad = in;
    seqmix::SsdOutputs out{y.view()};
    if (rank == 0) bad.x = x0.cview(), bad.dt = dt0.cview(), bad.Bm = Bm0.cview(), bad.Cm = Bm0.cview(), out.y = y0.view();
    CHECK_THROWS_WITH(sm::ssd(MPI_COMM_WORLD, bad, out), Catch::Contains("no tokens"));
  }
  SECTION("ranks disagree on the state size") {
    const auto Bm4 = st::random_tensor<4>({B, T, 1, 4}, 3);
    seqmix::SsdInputs bad = in;
    if (rank == 1 % ranks) bad.Bm = Bm4.cview(), bad.Cm = Bm4.cview();
    CHECK_THROWS_WITH(sm::ssd(MPI_COMM_WORLD, bad, {y.view()}), Catch::Contains("differs between ranks"));
  }
  CHECK(untouched());
}
