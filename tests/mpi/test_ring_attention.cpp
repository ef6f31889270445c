// mpi::ring_attention against the single-process reference::attention on the whole sequence, for
// contiguous slices of unequal length (a 1-token and an empty slice among them) and zigzag
// slices; causal, window + sinks, ALiBi, softcap, sink logits, GQA, fp16 K/V; and the collective
// refusals (every rank throws the same ShapeError, nothing written, no hang).
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "seqmix/attention/dense/reference.hpp"
#include "seqmix/core/half.hpp"
#include "seqmix/mpi/ring_attention.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
namespace sm = seqmix::mpi;
namespace st = seqmix::testing;

int ring_rank() { return sm::detail::comm_rank(MPI_COMM_WORLD); }
int ring_ranks() { return sm::detail::comm_size(MPI_COMM_WORLD); }

// Slice lengths of rank r for the contiguous cases: unequal, with a 1-token and (from 3 ranks on)
// an empty slice, and one shorter than the flash kernel's 64-key tile.
std::vector<index_t> ring_lengths(int ranks, int pattern) {
  static const index_t patterns[2][4] = {{37, 1, 70, 0}, {130, 5, 1, 64}};
  std::vector<index_t> n;
  for (int r = 0; r < ranks; ++r) n.push_back(patterns[pattern][r % 4] + (r >= 4 ? 3 : 0));
  return n;
}

struct RingCase {
  const char* name;
  int layout;  // 0: contiguous pattern 0, 1: contiguous pattern 1, 2: zigzag
  index_t zigzag_total, B, Hq, Hkv, Dk, Dv;
  bool causal;
  index_t window, sinks;
  float softcap;
  bool alibi, sink_logits;
};

sm::ContextSlices ring_slices(const RingCase& c, int ranks) {
  if (c.layout == 2) return sm::ContextSlices::zigzag(c.zigzag_total, ranks);
  return sm::ContextSlices::contiguous(ring_lengths(ranks, c.layout));
}

// Rows of x [B, T, H, D] at the global positions rank r holds, as a [B, T_r, H, D] tensor.
template <class T>
Tensor<T, 4> ring_gather(const Tensor<T, 4>& x, const sm::ContextSlices& s, int r) {
  Tensor<T, 4> local({x.size(0), s.tokens(r), x.size(2), x.size(3)});
  for (index_t b = 0; b < x.size(0); ++b)
    for (index_t i = 0; i < s.tokens(r); ++i)
      for (index_t h = 0; h < x.size(2); ++h)
        for (index_t c = 0; c < x.size(3); ++c) local(b, i, h, c) = x(b, s.position(r, i), h, c);
  return local;
}

template <class KV>
void ring_check(const RingCase& c) {
  const int rank = ring_rank(), ranks = ring_ranks();
  const sm::ContextSlices slices = ring_slices(c, ranks);
  const index_t T = slices.total();
  INFO(c.name << " ranks=" << ranks << " T=" << T << " rank=" << rank << " T_rank=" << slices.tokens(rank));
  // The whole sequence, the same on every rank (same seeds).
  const auto q = st::random_tensor<4>({c.B, T, c.Hq, c.Dk}, 11);
  const auto k32 = st::random_tensor<4>({c.B, T, c.Hkv, c.Dk}, 12);
  const auto v32 = st::random_tensor<4>({c.B, T, c.Hkv, c.Dv}, 13);
  Tensor<KV, 4> k(k32.shape()), v(v32.shape());
  for (index_t i = 0; i < k.numel(); ++i) k.data()[i] = static_cast<KV>(k32.data()[i]);
  for (index_t i = 0; i < v.numel(); ++i) v.data()[i] = static_cast<KV>(v32.data()[i]);
  const auto slopes = st::random_tensor<1>({c.Hq}, 14, 0.01f, 0.2f);
  const auto sinks = st::random_tensor<1>({c.Hq}, 15);

  seqmix::AttentionOptions options;
  options.causal = c.causal;
  options.window = c.window;
  options.sink_tokens = c.sinks;
  options.softcap = c.softcap;
  seqmix::AttentionInputs<KV> whole;
  whole.q = q.cview(), whole.k = k.cview(), whole.v = v.cview();
  if (c.alibi) whole.alibi_slopes = slopes.cview();
  if (c.sink_logits) whole.sink_logits = sinks.cview();
  Tensor<float, 4> o_ref({c.B, T, c.Hq, c.Dv});
  Tensor<float, 3> lse_ref({c.B, T, c.Hq});
  seqmix::reference::attention(whole, {o_ref.view(), lse_ref.view()}, options);

  const auto q_r = ring_gather(q, slices, rank);
  const auto k_r = ring_gather(k, slices, rank);
  const auto v_r = ring_gather(v, slices, rank);
  const auto o_want = ring_gather(o_ref, slices, rank);
  Tensor<float, 4> lse4({c.B, T, c.Hq, 1});
  for (index_t i = 0; i < lse_ref.numel(); ++i) lse4.data()[i] = lse_ref.data()[i];
  const auto lse_want = ring_gather(lse4, slices, rank);

  seqmix::AttentionInputs<KV> local = whole;
  local.q = q_r.cview(), local.k = k_r.cview(), local.v = v_r.cview();
  Tensor<float, 4> o({c.B, slices.tokens(rank), c.Hq, c.Dv});
  Tensor<float, 3> lse({c.B, slices.tokens(rank), c.Hq});
  sm::RingAttentionStats stats;
  sm::ring_attention(MPI_COMM_WORLD, slices, local, {o.view(), lse.view()}, options, st::two_thread_pool(), &stats);

  const double tol = std::is_same_v<KV, float> ? 2e-5 : 1e-4;  // f16 K/V: both sides read the same halves
  const auto co = st::compare(o.cview(), o_want.cview(), tol);
  CHECK(co.ok);
  if (!co.ok) UNSCOPED_INFO(co.describe());
  const seqmix::ConstView<float, 4> lse_got(lse.data(), {c.B, slices.tokens(rank), c.Hq, 1});
  const auto cl = st::compare(lse_got, lse_want.cview(), tol);
  CHECK(cl.ok);
  // K/V once around the ring: every other rank's block, sent and received once.
  std::int64_t others = 0;
  for (int r = 0; r < ranks; ++r)
    if (r != rank) others += c.B * slices.tokens(r) * c.Hkv * (c.Dk + c.Dv) * static_cast<std::int64_t>(sizeof(KV));
  CHECK(stats.bytes_received == others);
}

}  // namespace

TEST_CASE("mpi ring_attention equals single-process attention", "[mpi]") {
  // name                      layout zz   B  Hq Hkv Dk  Dv  causal win sinks cap  alibi  sinklog
  const std::vector<RingCase> cases = {
      {"contiguous-causal-gqa", 0, 0, 2, 4, 2, 32, 32, true, 0, 0, 0.f, false, false},
      {"contiguous-full", 1, 0, 1, 2, 2, 16, 24, false, 0, 0, 0.f, false, true},
      {"contiguous-window-sinks", 1, 0, 1, 4, 1, 32, 32, true, 40, 3, 0.f, false, false},
      {"contiguous-noncausal-window-alibi", 0, 0, 1, 4, 4, 16, 16, false, 9, 0, 0.f, true, false},
      {"zigzag-causal-gqa", 2, 203, 1, 8, 2, 32, 32, true, 0, 0, 0.f, false, false},
      {"zigzag-causal-window-softcap", 2, 150, 2, 4, 4, 16, 16, true, 30, 2, 5.f, true, true},
      {"zigzag-tiny", 2, 5, 1, 2, 1, 8, 8, true, 0, 0, 0.f, false, false},
  };
  for (const RingCase& c : cases) {
    SECTION(c.name) { ring_check<float>(c); }
  }
  SECTION("fp16 K/V") { ring_check<seqmix::f16>(cases[0]); }
}

TEST_CASE("mpi ring_attention refuses bad calls on every rank", "[mpi]") {
  const int rank = ring_rank(), ranks = ring_ranks();
  const sm::ContextSlices slices = sm::ContextSlices::contiguous(ring_lengths(ranks, 0));
  const index_t T = slices.tokens(rank);
  const auto q = st::random_tensor<4>({1, T, 4, 16}, 1);
  const auto k = st::random_tensor<4>({1, T, 2, 16}, 2);
  Tensor<float, 4> o({1, T, 4, 16});
  o.fill(7.f);
  seqmix::AttentionInputs<float> in;
  in.q = q.cview(), in.k = k.cview(), in.v = k.cview();
  const auto untouched = [&] {
    for (const float x : o) if (x != 7.f) return false;
    return true;
  };
  const auto refused = [&](const char* argument, const std::string& fragment, auto&& call) {
    try {
      call();
      FAIL_CHECK("no ShapeError");
    } catch (const seqmix::ShapeError& e) {
      INFO(e.what());
      CHECK(e.argument() == argument);
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
    CHECK(untouched());
  };

  SECTION("one rank's q has the wrong number of rows") {
    const auto q_bad = st::random_tensor<4>({1, T + 1, 4, 16}, 1);
    seqmix::AttentionInputs<float> bad = in;
    if (rank == ranks - 1) bad.q = q_bad.cview();
    refused("q", "on rank " + std::to_string(ranks - 1), [&] { sm::ring_attention(MPI_COMM_WORLD, slices, bad, {o.view()}); });
  }
  SECTION("ranks disagree on the query heads") {
    const auto q8 = st::random_tensor<4>({1, T, 2, 16}, 1);
    Tensor<float, 4> o8({1, T, 2, 16});
    seqmix::AttentionInputs<float> bad = in;
    seqmix::AttentionOutputs out{o.view()};
    if (rank == 1) bad.q = q8.cview(), out.o = o8.view();
    refused("q (query heads, dimension 2)", "differs between ranks",
            [&] { sm::ring_attention(MPI_COMM_WORLD, slices, bad, out); });
  }
  SECTION("ranks disagree on the options") {
    seqmix::AttentionOptions options;
    options.causal = rank == 0;
    refused("options", "rank 0 has", [&] { sm::ring_attention(MPI_COMM_WORLD, slices, in, {o.view()}, options); });
  }
  SECTION("slices for another number of ranks") {
    const auto wrong = sm::ContextSlices::contiguous(std::vector<index_t>(static_cast<std::size_t>(ranks + 1), T));
    refused("slices", "the communicator has", [&] { sm::ring_attention(MPI_COMM_WORLD, wrong, in, {o.view()}); });
  }
  SECTION("a mask") {
    const auto mask = st::random_tensor<3>({1, T, T}, 3);
    seqmix::AttentionInputs<float> bad = in;
    bad.mask = mask.cview();
    refused("mask", "not supported", [&] { sm::ring_attention(MPI_COMM_WORLD, slices, bad, {o.view()}); });
  }
  SECTION("a FIRE relative bias (its normalizer reads the absolute position)") {
    seqmix::AttentionInputs<float> bad = in;
    bad.relative_bias.kind = seqmix::RelativeBiasKind::fire;
    refused("relative_bias.kind", "only biases of pos - j", [&] { sm::ring_attention(MPI_COMM_WORLD, slices, bad, {o.view()}); });
  }
  SECTION("the communicator still works afterwards") {
    int one = 1, sum = 0;
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(sum == ranks);
  }
}
