// The smallest use of seqmix::mpi from an installed package: every rank holds 3 tokens of one
// sequence, mpi::linear_attention passes the state across the ranks, and each rank compares its
// outputs with one seqmix::linear_attention call over the whole sequence. Exit 1 on a mismatch.
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include <seqmix/mpi.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const seqmix::index_t T = 3, total = T * ranks, K = 4, V = 2;
  std::vector<float> q(static_cast<std::size_t>(total * K)), v(static_cast<std::size_t>(total * V));
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.7f * static_cast<float>(i));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::cos(0.3f * static_cast<float>(i));
  std::vector<float> whole(static_cast<std::size_t>(total * V)), mine(static_cast<std::size_t>(T * V));
  const seqmix::ConstView<float, 4> qa(q.data(), {1, total, 1, K}), va(v.data(), {1, total, 1, V});
  seqmix::linear_attention({qa, qa, va}, {seqmix::TensorView<float, 4>(whole.data(), {1, total, 1, V})});
  const auto rows = [&](const seqmix::ConstView<float, 4>& x) { return x.slice(1, rank * T, T); };
  seqmix::mpi::linear_attention(MPI_COMM_WORLD, {rows(qa), rows(qa), rows(va)},
                                {seqmix::TensorView<float, 4>(mine.data(), {1, T, 1, V})});
  double err = 0;
  for (seqmix::index_t i = 0; i < T * V; ++i)
    err = std::fmax(err, std::fabs(mine[static_cast<std::size_t>(i)] - whole[static_cast<std::size_t>(rank * T * V + i)]));
  double worst = 0;
  MPI_Allreduce(&err, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) std::printf("seqmix::mpi consumer: %d ranks, max |diff| %.3g\n", ranks, worst);
  MPI_Finalize();
  return worst <= 1e-5 ? 0 : 1;
}
