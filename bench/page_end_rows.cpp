// seqmix-page-end-rows: why two heads of the diagonal-decay prefill's value-block tasks ran
// 1.25-1.4x slower than the other 30 at gla-1.3b T 512 (docs/parallel_grain.md, the
// diagonal-decay bullet). One thread, thread CPU time.
//
// GLA (channel gates), H = 32, K = V = 64, T = 512, one sequence: token rows of q, k, v, g and o
// are H * K floats = 8 KiB apart, a head's row 256 bytes (4 cache lines). Each head runs as the
// 64-thread split runs it: two tasks of 32 value columns, one after the other (the parallel-grain
// tool's serial order), each the recurrent kernel over 16-token blocks as run_recurrent_heads runs
// a one-head task. The 32 heads are cycled so that a head's rows have left L1 and L2 when it runs
// again (~20 MB of other heads' rows in between); per head and block, the median over the cycles
// (the first cycle warms up). Printed: the other heads' median and the ratio of heads 15, 31, 0
// and 16 to it (PAGE_END_ALL=1 in the environment: every head's time).
//
// Variants:
//   offset B     every array starts B bytes past a page boundary: 0 (heads 0 and 16 start a page,
//                15 and 31 end one), 64 (where a seqmix::Tensor of this size starts: glibc's
//                aligned_alloc of an mmapped block returns page + 64, so heads 15 and 31 cross a
//                page, their last line the next page's first), 192, 4032 (heads 0 and 16 cross);
//   4K / 2M      4 KiB pages, or 2 MiB pages (madvise on the probe's own buffers; the
//                AnonHugePages figure shows whether the kernel gave them);
//   ahead        with or without the library's look-ahead (run_recurrent's `ahead`: the next
//                block's rows requested into L2 through the tile passes);
//   one kind of row at 192 and the rest at 0: which rows matter.
// What it showed (2026-12-06, AMD EPYC Zen 5, loaded, load 6-10; docs/parallel_grain.md): the
// slow tasks are those whose rows include the first cache line of a 4 KiB page, whether the row
// crosses into that page or starts there (offset 0: heads 0 and 16), 1.1-1.5x; with 2 MiB pages
// as much (not the TLB), with and without the look-ahead (not a line left unrequested).
// Usage: seqmix-page-end-rows [cycles] (default 9).
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "seqmix/linear_attention/diagonal_decay/driver.hpp"
#include "seqmix_testing/cpu_clock.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
namespace la = seqmix::detail::la;

constexpr index_t H = 32, K = 64, V = 64, T = 512;
constexpr std::size_t kPage = 4096, kHuge = std::size_t{2} << 20;

// One [T, H, K] array at a chosen offset from a page (or huge page) boundary.
struct Array {
  void* base = nullptr;
  float* data = nullptr;
  Array(std::size_t offset, bool huge, float lo, float hi, unsigned seed) {
    const std::size_t bytes = static_cast<std::size_t>(T * H * K) * sizeof(float) + kHuge;
    base = std::aligned_alloc(kHuge, (bytes + kHuge - 1) / kHuge * kHuge);
#if defined(MADV_HUGEPAGE)
    if (huge) madvise(base, bytes, MADV_HUGEPAGE);
#endif
    data = reinterpret_cast<float*>(static_cast<char*>(base) + offset);
    std::srand(seed);
    for (index_t i = 0; i < T * H * K; ++i)
      data[i] = lo + (hi - lo) * static_cast<float>(std::rand()) / static_cast<float>(RAND_MAX);
  }
  ~Array() { std::free(base); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
};

struct Layout {
  Array q, k, v, g, o;
  Layout(std::size_t offset, bool huge) : Layout(offset, offset, offset, huge) {}
  // q and k at qk, the gates at g, v and o at vo.
  Layout(std::size_t qk, std::size_t gate, std::size_t vo, bool huge)
      : q(qk, huge, -1.f, 1.f, 1), k(qk, huge, -1.f, 1.f, 2), v(vo, huge, -1.f, 1.f, 3),
        g(gate, huge, -0.3f, 0.f, 4), o(vo, huge, 0.f, 0.f, 5) {}

  // Head h over all T tokens, value columns [0, width).
  la::HeadProblem head(index_t h, index_t width) const {
    const std::array<index_t, 2> rows{T, K}, strides{H * K, 1};
    la::HeadProblem p;
    p.q = seqmix::ConstView<float, 2>(q.data + h * K, rows, strides);
    p.k = seqmix::ConstView<float, 2>(k.data + h * K, rows, strides);
    p.v = seqmix::ConstView<float, 2>(v.data + h * V, {T, width}, strides);
    p.g = seqmix::ConstView<float, 2>(g.data + h * K, rows, strides);
    p.o = seqmix::TensorView<float, 2>(o.data + h * V, {T, width}, strides);
    p.scale = 0.125f;
    return p;
  }
};

enum class Ahead { none, lib };

// One value-block task of head p: 16-token blocks, each asking for the next block's rows (lib).
void run_task(const la::HeadProblem& p, la::RowMatrix& S, la::RecurrentWorkspace& ws, Ahead ahead) {
  S.setZero();
  for (index_t t0 = 0; t0 < T; t0 += la::kTokenBlock) {
    const la::HeadProblem block = la::slice_head(p, t0, la::kTokenBlock);
    const bool has_next = t0 + la::kTokenBlock < T;
    const la::HeadProblem next = has_next ? la::slice_head(p, t0 + la::kTokenBlock, la::kTokenBlock) : block;
    la::run_recurrent(block, S.data(), S.cols(), ws, ahead == Ahead::lib && has_next ? &next : nullptr);
  }
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

// Per head and value block, the median over the cycles.
struct Times {
  std::vector<double> block[2];  // [H] each
};

Times run_variant(const Layout& layout, Ahead ahead, int cycles) {
  constexpr index_t width = V / 2;
  la::RowMatrix S(K, la::state_row_stride(width));
  seqmix::AlignedVector<float> tokens;
  la::RecurrentWorkspace ws(K, K, width, la::kTokenBlock, &tokens);
  std::vector<double> us[2][H];
  for (int c = 0; c < cycles + 1; ++c)
    for (index_t h = 0; h < H; ++h)
      for (int b = 0; b < 2; ++b) {  // the tool's order: a head's two blocks one after the other
        const la::HeadProblem p = la::value_columns(layout.head(h, V), {b * width, width});
        const double t0 = seqmix::testing::thread_cpu_seconds();
        run_task(p, S, ws, ahead);
        const double t1 = seqmix::testing::thread_cpu_seconds();
        if (c > 0) us[b][h].push_back(1e6 * (t1 - t0));  // cycle 0 warms up
      }
  Times t;
  for (int b = 0; b < 2; ++b)
    for (index_t h = 0; h < H; ++h) t.block[b].push_back(median(us[b][h]));
  return t;
}

void print(const std::string& name, const Times& t) {
  for (int b = 0; b < 2; ++b) {
    const std::vector<double>& m = t.block[b];
    std::vector<double> others;
    for (index_t h = 0; h < H; ++h)
      if (h != 15 && h != 31) others.push_back(m[static_cast<std::size_t>(h)]);
    const double rest = median(others);
    std::printf("%-28s block %d: others %6.1f us, h15 %.2fx, h31 %.2fx, h0 %.2fx, h16 %.2fx\n", name.c_str(), b, rest,
                m[15] / rest, m[31] / rest, m[0] / rest, m[16] / rest);
    if (std::getenv("PAGE_END_ALL")) {
      for (index_t h = 0; h < H; ++h) std::printf(" %3.0f", m[static_cast<std::size_t>(h)]);
      std::printf("\n");
    }
  }
}

// AnonHugePages of the process (kB): whether madvise got the huge layout its 2 MiB pages.
long huge_kb() {
  std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
  std::fclose(f);
  return kb;
}

}  // namespace

int main(int argc, char** argv) {
  const int cycles = argc > 1 ? std::atoi(argv[1]) : 9;
  {
    seqmix::Tensor<float, 3> t({T, H, K});
    std::printf("a Tensor [%d, %d, %d] starts %zu bytes past a page\n", int(T), int(H), int(K),
                static_cast<std::size_t>(reinterpret_cast<std::uintptr_t>(t.data()) % kPage));
  }
  // Every array at one offset: 0 (heads 0 and 16 start a page), 64 (the Tensor's: heads 15 and 31
  // cross one, their last line the next page's first), 192 (their value columns 32.. in the next
  // page), 4032 (heads 0 and 16 cross one, first line in the previous page).
  for (const bool huge : {false, true})
    for (const std::size_t offset : {std::size_t{0}, std::size_t{64}, std::size_t{192}, std::size_t{4032}}) {
      const Layout layout(offset, huge);
      const std::string pages = huge ? " 2M pages (AnonHugePages " + std::to_string(huge_kb()) + " kB)" : " 4K pages";
      for (const Ahead ahead : {Ahead::lib, Ahead::none})
        print("offset " + std::to_string(offset) + pages + (ahead == Ahead::lib ? ", ahead" : ", no ahead"),
              run_variant(layout, ahead, cycles));
    }
  // One kind of row at a time at 192 (crossing at heads 15 and 31), the others at 0.
  for (const auto& [qk, gate, vo, name] : {std::tuple<std::size_t, std::size_t, std::size_t, const char*>{192, 0, 0, "q, k"},
                                          {0, 192, 0, "gates"},
                                          {0, 0, 192, "v, o"}}) {
    const Layout layout(qk, gate, vo, false);
    print(std::string(name) + " at 192, the rest at 0", run_variant(layout, Ahead::lib, cycles));
  }
  return 0;
}
