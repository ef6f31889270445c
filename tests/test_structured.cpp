// Structured scans: cross_scan / cross_merge against explicit permutation loops,
// cross_selective_scan (VMamba and MSVMamba scales) against selective_scan over materialized
// copies, and grid_scan's fast splits against its reference; square, non-square, 1 x N, N x 1
// and odd grids, B > 1.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "seqmix/structured.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

struct StructuredGrid {
  index_t H, W;
};
const StructuredGrid kStructuredGrids[] = {{4, 4}, {3, 5}, {5, 3}, {1, 7}, {7, 1}, {1, 1}, {5, 5}};

// The four scan orders written out as explicit loops, independently of grid.hpp: order[k][l] is
// the cell token l of direction k reads.
std::array<std::vector<std::pair<index_t, index_t>>, 4> structured_orders(index_t H, index_t W) {
  std::array<std::vector<std::pair<index_t, index_t>>, 4> order;
  for (index_t h = 0; h < H; ++h)
    for (index_t w = 0; w < W; ++w) order[0].push_back({h, w});
  for (index_t w = 0; w < W; ++w)
    for (index_t h = 0; h < H; ++h) order[1].push_back({h, w});
  order[2].assign(order[0].rbegin(), order[0].rend());
  order[3].assign(order[1].rbegin(), order[1].rend());
  return order;
}

// A [B,H,W,C] view whose rows are padded (stride_H > W * C): no scan order is one stride.
struct StructuredPadded {
  std::vector<float> storage;
  TensorView<float, 4> view;
  StructuredPadded(index_t B, index_t H, index_t W, index_t C, std::uint64_t seed) {
    const index_t row = W * C + 3;
    storage.resize(static_cast<std::size_t>(B * H * row));
    view = TensorView<float, 4>(storage.data(), {B, H, W, C}, {H * row, row, C, 1});
    st::fill_uniform(view, seed);
  }
};

}  // namespace

TEST_CASE("cross_scan and cross_merge follow the explicit permutations", "[structured][cross_scan]") {
  const index_t B = 2, C = 3;
  for (const StructuredGrid& g : kStructuredGrids) {
    INFO("H=" << g.H << " W=" << g.W);
    const index_t L = g.H * g.W;
    const auto order = structured_orders(g.H, g.W);
    const StructuredPadded padded(B, g.H, g.W, C, 7);
    const auto x = st::random_tensor<4>({B, g.H, g.W, C}, 1);
    for (int input = 0; input < 2; ++input) {  // contiguous, padded rows
      const seqmix::ConstView<float, 4> xv = input == 0 ? x.cview() : padded.view.as_const();
      Tensor<float, 4> want({B, 4, L, C});
      for (index_t b = 0; b < B; ++b)
        for (index_t k = 0; k < 4; ++k)
          for (index_t l = 0; l < L; ++l)
            for (index_t c = 0; c < C; ++c) {
              const auto cell = order[static_cast<std::size_t>(k)][static_cast<std::size_t>(l)];
              want(b, k, l, c) = xv(b, cell.first, cell.second, c);
            }
      Tensor<float, 4> fast({B, 4, L, C}), ref({B, 4, L, C});
      seqmix::cross_scan(xv, fast.view(), st::two_thread_pool());
      seqmix::reference::cross_scan(xv, ref.view());
      st::require_close("cross_scan", fast.view(), want.view(), 0.0);
      st::require_close("reference::cross_scan", ref.view(), want.view(), 0.0);

      // Merge: the sum over directions of the token that read each cell.
      Tensor<float, 4> merged_want({B, g.H, g.W, C});
      for (index_t b = 0; b < B; ++b)
        for (index_t k = 0; k < 4; ++k)
          for (index_t l = 0; l < L; ++l)
            for (index_t c = 0; c < C; ++c) {
              const auto cell = order[static_cast<std::size_t>(k)][static_cast<std::size_t>(l)];
              merged_want(b, cell.first, cell.second, c) += fast(b, k, l, c) * static_cast<float>(k + 1);
            }
      Tensor<float, 4> weighted({B, 4, L, C});
      for (index_t b = 0; b < B; ++b)
        for (index_t k = 0; k < 4; ++k)
          for (index_t l = 0; l < L; ++l)
            for (index_t c = 0; c < C; ++c) weighted(b, k, l, c) = fast(b, k, l, c) * static_cast<float>(k + 1);
      StructuredPadded merged(B, g.H, g.W, C, 9);
      Tensor<float, 4> merged_ref({B, g.H, g.W, C});
      seqmix::cross_merge(weighted.cview(), input == 0 ? TensorView<float, 4>(merged_ref.view()) : merged.view,
                          st::two_thread_pool());
      st::require_close("cross_merge", input == 0 ? TensorView<float, 4>(merged_ref.view()) : merged.view,
                        merged_want.view(), 1e-6);
      seqmix::reference::cross_merge(weighted.cview(), merged_ref.view());
      st::require_close("reference::cross_merge", merged_ref.view(), merged_want.view(), 1e-6);
    }
  }
}

namespace {

// One direction's grid inputs; `transposed` stores them [B,W,H,...] and views them as
// [B,H,W,...], so column orders are one stride and row orders are not.
struct StructuredDirection {
  index_t B, H, W, D, N, G;
  Tensor<float, 4> u, delta, z;
  Tensor<float, 5> Bm, Cm;
  Tensor<float, 2> A;
  Tensor<float, 1> Dskip;
  bool transposed;
  StructuredDirection(index_t b, index_t h, index_t w, index_t d, index_t n, index_t g, std::uint64_t seed, bool t)
      : B(b), H(h), W(w), D(d), N(n), G(g), u(shape4(d, t)), delta(shape4(d, t)), z(shape4(d, t)),
        Bm(std::array<index_t, 5>{b, t ? w : h, t ? h : w, g, n}), Cm(std::array<index_t, 5>{b, t ? w : h, t ? h : w, g, n}),
        A(st::random_tensor<2>({d, n}, seed, -1.5f, -0.2f)), Dskip(st::random_tensor<1>({d}, seed + 1)), transposed(t) {
    st::fill_uniform(u.view(), seed + 2);
    st::fill_uniform(delta.view(), seed + 3, 0.f, 0.4f);
    st::fill_uniform(z.view(), seed + 4);
    st::fill_uniform(Bm.view(), seed + 5);
    st::fill_uniform(Cm.view(), seed + 6);
  }
  std::array<index_t, 4> shape4(index_t d, bool t) const { return {B, t ? W : H, t ? H : W, d}; }
  template <std::size_t R>
  seqmix::ConstView<float, R> grid(const Tensor<float, R>& t) const {
    auto v = t.cview();
    if (!transposed) return v;
    auto shape = v.shape();
    auto strides = v.strides();
    std::swap(shape[1], shape[2]);
    std::swap(strides[1], strides[2]);
    return seqmix::ConstView<float, R>(v.data(), shape, strides);
  }
  seqmix::CrossScanDirectionInputs inputs() const {
    return {grid(u), grid(delta), A.cview(), grid(Bm), grid(Cm), Dskip.cview(), grid(z), {}};
  }

  // selective_scan over copies gathered in the explicit order, scattered back to a grid.
  Tensor<float, 4> expected(std::size_t k) const {
    const auto order = structured_orders(H, W)[k];
    const index_t L = H * W;
    Tensor<float, 3> su({B, L, D}), sd({B, L, D}), sz({B, L, D}), sy({B, L, D});
    Tensor<float, 4> sB({B, L, G, N}), sC({B, L, G, N});
    const auto gu = grid(u), gd = grid(delta), gz = grid(z);
    const auto gB = grid(Bm), gC = grid(Cm);
    for (index_t b = 0; b < B; ++b)
      for (index_t l = 0; l < L; ++l) {
        const auto c = order[static_cast<std::size_t>(l)];
        for (index_t d = 0; d < D; ++d)
          su(b, l, d) = gu(b, c.first, c.second, d), sd(b, l, d) = gd(b, c.first, c.second, d),
                 sz(b, l, d) = gz(b, c.first, c.second, d);
        for (index_t gg = 0; gg < G; ++gg)
          for (index_t n = 0; n < N; ++n)
            sB(b, l, gg, n) = gB(b, c.first, c.second, gg, n), sC(b, l, gg, n) = gC(b, c.first, c.second, gg, n);
      }
    seqmix::SelectiveScanOptions options;
    options.delta_softplus = true;
    seqmix::reference::selective_scan({su.cview(), sd.cview(), A.cview(), sB.cview(), sC.cview(), Dskip.cview(), sz.cview()},
                                      {sy.view()}, options);
    Tensor<float, 4> out({B, H, W, D});
    for (index_t b = 0; b < B; ++b)
      for (index_t l = 0; l < L; ++l)
        for (index_t d = 0; d < D; ++d) {
          const auto c = order[static_cast<std::size_t>(l)];
          out(b, c.first, c.second, d) = sy(b, l, d);
        }
    return out;
  }
};

}  // namespace

TEST_CASE("cross_selective_scan equals four selective scans over permuted copies", "[structured][cross_scan]") {
  const index_t B = 2, D = 20, N = 8, G = 2;
  for (const StructuredGrid& g : kStructuredGrids) {
    for (int transposed = 0; transposed < 2; ++transposed) {
      INFO("H=" << g.H << " W=" << g.W << " transposed inputs=" << transposed);
      std::vector<StructuredDirection> dirs;
      for (std::uint64_t k = 0; k < 4; ++k) dirs.emplace_back(B, g.H, g.W, D, N, G, 100 + 10 * k, transposed != 0);
      Tensor<float, 4> want({B, g.H, g.W, D});
      for (std::size_t k = 0; k < 4; ++k) seqmix::detail::accumulate_into<4>(dirs[k].expected(k).cview(), want.view());
      const std::array<seqmix::CrossScanDirectionInputs, 4> in{dirs[0].inputs(), dirs[1].inputs(), dirs[2].inputs(),
                                                               dirs[3].inputs()};
      seqmix::CrossSelectiveScanOptions options;
      options.scan.delta_softplus = true;
      Tensor<float, 4> y({B, g.H, g.W, D}), y_ref({B, g.H, g.W, D});
      seqmix::cross_selective_scan(in, y.view(), options, st::two_thread_pool());
      seqmix::reference::cross_selective_scan(in, y_ref.view(), options);
      st::require_close("cross_selective_scan", y.view(), want.view(), 2e-5);
      st::require_close("reference::cross_selective_scan", y_ref.view(), want.view(), 2e-5);
    }
  }
}

TEST_CASE("multi-scale cross_selective_scan upsamples the coarse directions", "[structured][cross_scan]") {
  const index_t B = 1, D = 16, N = 4, G = 1;
  for (const StructuredGrid& g : {StructuredGrid{6, 8}, StructuredGrid{5, 7}, StructuredGrid{1, 5}}) {
    INFO("H=" << g.H << " W=" << g.W);
    const index_t Hc = (g.H + 1) / 2, Wc = (g.W + 1) / 2;
    const StructuredDirection full(B, g.H, g.W, D, N, G, 300, false);
    std::vector<StructuredDirection> coarse;
    for (std::uint64_t k = 1; k < 4; ++k) coarse.emplace_back(B, Hc, Wc, D, N, G, 300 + 10 * k, false);
    Tensor<float, 4> want = full.expected(0);
    for (std::size_t k = 1; k < 4; ++k) {
      const Tensor<float, 4> yk = coarse[k - 1].expected(k);
      for (index_t h = 0; h < g.H; ++h)
        for (index_t w = 0; w < g.W; ++w)
          for (index_t d = 0; d < D; ++d) want(0, h, w, d) += yk(0, h / 2, w / 2, d);
    }
    seqmix::CrossSelectiveScanOptions options;
    options.scan.delta_softplus = true;
    options.scales = {seqmix::GridScale::full, seqmix::GridScale::coarse, seqmix::GridScale::coarse,
                      seqmix::GridScale::coarse};
    Tensor<float, 4> y({B, g.H, g.W, D});
    seqmix::cross_selective_scan({full.inputs(), coarse[0].inputs(), coarse[1].inputs(), coarse[2].inputs()}, y.view(),
                                 options, st::two_thread_pool());
    st::require_close("multi-scale", y.view(), want.view(), 2e-5);
  }
}

TEST_CASE("downsample2x_mean averages the 2x2 windows present", "[structured][cross_scan]") {
  const auto x = st::random_tensor<4>({2, 5, 3, 2}, 11);
  Tensor<float, 4> out({2, 3, 2, 2});
  seqmix::downsample2x_mean(x.cview(), out.view());
  CHECK(out(1, 0, 0, 1) == Approx((x(1, 0, 0, 1) + x(1, 0, 1, 1) + x(1, 1, 0, 1) + x(1, 1, 1, 1)) / 4).epsilon(1e-6));
  CHECK(out(0, 2, 1, 0) == Approx(x(0, 4, 2, 0)).epsilon(1e-6));                       // corner: one cell
  CHECK(out(0, 2, 0, 1) == Approx((x(0, 4, 0, 1) + x(0, 4, 1, 1)) / 2).epsilon(1e-6));  // bottom edge: two
}

TEST_CASE("grid_scan: fast splits equal the reference, a hand-checked grid", "[structured][grid_scan]") {
  {
    // All coefficients and inputs 1: h[i,j] = 1 + h[i-1,j] + h[i,j-1], so h[1,1] = 5, h[2,2] = 19.
    Tensor<float, 4> ones({1, 3, 3, 1}), h({1, 3, 3, 1});
    for (index_t i = 0; i < 9; ++i) ones.data()[i] = 1.f;
    seqmix::reference::grid_scan({ones.cview(), ones.cview(), ones.cview()}, h.view());
    CHECK(h(0, 0, 2, 0) == 3.f);
    CHECK(h(0, 1, 1, 0) == 5.f);
    CHECK(h(0, 2, 2, 0) == 19.f);
  }
  for (const StructuredGrid& g : kStructuredGrids)
    for (index_t C : {3, 37})
      for (index_t B : {1, 2}) {
        INFO("H=" << g.H << " W=" << g.W << " C=" << C << " B=" << B);
        const auto al = st::random_tensor<4>({B, g.H, g.W, C}, 21, 0.f, 0.6f);
        const auto at = st::random_tensor<4>({B, g.H, g.W, C}, 22, 0.f, 0.6f);
        const auto x = st::random_tensor<4>({B, g.H, g.W, C}, 23);
        Tensor<float, 4> want({B, g.H, g.W, C});
        seqmix::reference::grid_scan({al.cview(), at.cview(), x.cview()}, want.view());
        for (auto split : {seqmix::GridScanSplit::automatic, seqmix::GridScanSplit::channels,
                           seqmix::GridScanSplit::wavefront}) {
          seqmix::GridScanOptions options;
          options.split = split;
          Tensor<float, 4> h({B, g.H, g.W, C});
          seqmix::grid_scan({al.cview(), at.cview(), x.cview()}, h.view(), options, st::two_thread_pool());
          st::require_close("grid_scan", h.view(), want.view(), 1e-5);
        }
        // Padded rows (strided views) through the scalar path.
        StructuredPadded hp(B, g.H, g.W, C, 5);
        seqmix::grid_scan({al.cview(), at.cview(), x.cview()}, hp.view, {}, st::two_thread_pool());
        st::require_close("grid_scan, padded h", hp.view, want.view(), 1e-5);
      }
}

TEST_CASE("structured scans refuse bad shapes before writing", "[structured][errors]") {
  const auto x = st::random_tensor<4>({1, 3, 4, 2}, 31);
  Tensor<float, 4> xs({1, 4, 11, 2}), y({1, 3, 4, 2});
  for (index_t i = 0; i < y.view().numel(); ++i) y.data()[i] = 7.f;
  st::require_shape_error("xs", [&] { seqmix::cross_scan(x.cview(), xs.view()); });
  st::require_shape_error("ys", [&] { seqmix::cross_merge(xs.cview(), y.view()); });
  st::require_shape_error("a_top", [&] {
    seqmix::grid_scan({x.cview(), x.cview().slice(1, 0, 2), x.cview()}, y.view());
  });
  StructuredDirection ok(1, 3, 4, 8, 4, 1, 41, false), bad(1, 3, 4, 8, 4, 1, 51, false);
  Tensor<float, 4> y8({1, 3, 4, 8});
  for (index_t i = 0; i < y8.view().numel(); ++i) y8.data()[i] = 7.f;
  auto in = std::array<seqmix::CrossScanDirectionInputs, 4>{ok.inputs(), ok.inputs(), ok.inputs(), bad.inputs()};
  in[3].Dskip = in[3].Dskip.slice(0, 0, 5);  // wrong length, seen only by selective_scan's checks
  st::require_shape_error("directions[3].Dskip", [&] { seqmix::cross_selective_scan(in, y8.view()); });
  in[3] = ok.inputs();
  seqmix::CrossSelectiveScanOptions coarse;
  coarse.scales[2] = seqmix::GridScale::coarse;  // full-size inputs where a coarse map is due
  st::require_shape_error("directions[2].u", [&] { seqmix::cross_selective_scan(in, y8.view(), coarse); });
  for (index_t i = 0; i < y.view().numel(); ++i) REQUIRE(y.data()[i] == 7.f);
  for (index_t i = 0; i < y8.view().numel(); ++i) REQUIRE(y8.data()[i] == 7.f);
}
