// TensorView / Tensor / copy / Eigen interop: views agree with manual offset arithmetic.

// GCC 12's AVX-512 intrinsics, used by Eigen's GEMM kernels, self-initialise an "undefined"
// register and then warn about it (GCC bug 105593, fixed in GCC 13). The warning is attributed to
// the intrinsics header, so it is silenced only for the headers included here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "seqmix/core/eigen.hpp"
#include "seqmix/core/tensor.hpp"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;

using Shape4 = std::array<index_t, 4>;
constexpr Shape4 kShape{2, 3, 4, 5};

// A [2,3,4,5] buffer whose element at flat offset o holds o, so a view's value is its offset.
std::vector<float> iota_buffer(index_t n) {
  std::vector<float> buffer(static_cast<std::size_t>(n));
  std::iota(buffer.begin(), buffer.end(), 0.f);
  return buffer;
}

index_t offset_of(const Shape4& idx) {
  return ((idx[0] * kShape[1] + idx[1]) * kShape[2] + idx[2]) * kShape[3] + idx[3];
}

// Calls f(index) for every index of a rank-3 or rank-4 shape.
template <std::size_t Rank, class F>
void for_each_index(const std::array<index_t, Rank>& shape, F&& f) {
  std::array<index_t, Rank> idx{};
  index_t total = 1;
  for (index_t extent : shape) total *= extent;
  for (index_t flat = 0; flat < total; ++flat) {
    index_t rest = flat;
    for (std::size_t d = Rank; d-- > 0;) {
      idx[d] = rest % shape[d];
      rest /= shape[d];
    }
    f(idx);
  }
}

template <class T>
T& at(const TensorView<T, 3>& v, const std::array<index_t, 3>& i) { return v(i[0], i[1], i[2]); }
template <class T>
T& at(const TensorView<T, 4>& v, const Shape4& i) { return v(i[0], i[1], i[2], i[3]); }

}  // namespace

TEST_CASE("contiguous and strided construction", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  CHECK(v.shape() == kShape);
  CHECK(v.strides() == Shape4{60, 20, 5, 1});
  CHECK(v.numel() == 120);
  CHECK(v.size(2) == 4);
  CHECK(v.stride(1) == 20);
  CHECK(v.is_contiguous());
  CHECK(v.is_last_dim_contiguous());
  CHECK(v.has_value());
  for_each_index(kShape, [&](const Shape4& i) { REQUIRE(at(v, i) == static_cast<float>(offset_of(i))); });

  // The same buffer as a [5,4,3,2] "transposed" view: element [a,b,c,d] is at a + 5b + 20c + 60d.
  const TensorView<float, 4> t(buffer.data(), {5, 4, 3, 2}, {1, 5, 20, 60});
  CHECK_FALSE(t.is_contiguous());
  CHECK_FALSE(t.is_last_dim_contiguous());
  for_each_index(t.shape(), [&](const Shape4& i) {
    REQUIRE(at(t, i) == static_cast<float>(offset_of({i[3], i[2], i[1], i[0]})));
  });

  const TensorView<float, 2> broadcast(buffer.data() + 7, {3, 4}, {0, 1});  // stride 0 repeats a row
  CHECK(broadcast(2, 3) == 10.f);
  CHECK(broadcast(0, 3) == broadcast(2, 3));

  const TensorView<float, 3> empty;
  CHECK(empty.data() == nullptr);
  CHECK(empty.numel() == 0);
  CHECK(empty.empty());
  CHECK_FALSE(empty.has_value());
}

TEST_CASE("select along every dimension matches manual offsets", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  for (std::size_t dim = 0; dim < 4; ++dim) {
    for (index_t i = 0; i < kShape[dim]; ++i) {
      CAPTURE(dim, i);
      const TensorView<float, 3> s = v.select(dim, i);
      for_each_index(s.shape(), [&](const std::array<index_t, 3>& j) {
        Shape4 full{};
        for (std::size_t d = 0, o = 0; d < 4; ++d) full[d] = d == dim ? i : j[o++];
        REQUIRE(at(s, j) == static_cast<float>(offset_of(full)));
      });
      // Rank 3 -> 2 -> 1 keeps agreeing with the offsets.
      const TensorView<float, 1> row = s.select(0, 0).select(0, 0);
      CHECK(row.numel() == s.size(2));
    }
  }
  for (index_t i = 0; i < kShape[0]; ++i) {
    CHECK(v[i].data() == v.select(0, i).data());
    CHECK(v[i].shape() == v.select(0, i).shape());
    CHECK(v[i][2][3](4) == static_cast<float>(offset_of({i, 2, 3, 4})));
  }
  CHECK(*v.ptr(1, 2) == static_cast<float>(offset_of({1, 2, 0, 0})));
  CHECK_THROWS_AS(v.select(4, 0), std::out_of_range);  // dimension checks are always on
}

TEST_CASE("slice along every dimension matches manual offsets", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  for (std::size_t dim = 0; dim < 4; ++dim) {
    for (index_t start = 0; start < kShape[dim]; ++start) {
      for (index_t length = 0; start + length <= kShape[dim]; ++length) {
        CAPTURE(dim, start, length);
        const TensorView<float, 4> s = v.slice(dim, start, length);
        REQUIRE(s.size(dim) == length);
        REQUIRE(s.strides() == v.strides());
        for_each_index(s.shape(), [&](const Shape4& j) {
          Shape4 full = j;
          full[dim] += start;
          REQUIRE(at(s, j) == static_cast<float>(offset_of(full)));
        });
      }
    }
    CHECK_THROWS_AS(v.slice(dim, 1, kShape[dim]), std::out_of_range);
    CHECK_THROWS_AS(v.slice(dim, -1, 1), std::out_of_range);
  }
  CHECK_THROWS_AS(v.slice(4, 0, 1), std::out_of_range);
}

TEST_CASE("contiguity queries", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);

  CHECK(v.slice(0, 1, 1).is_contiguous());  // leading slices stay dense
  CHECK(v[1].is_contiguous());
  CHECK(v[1][2].is_contiguous());

  const auto last = v.slice(3, 1, 3);  // part of each row
  CHECK_FALSE(last.is_contiguous());
  CHECK(last.is_last_dim_contiguous());

  const auto middle = v.select(1, 2);  // [2,4,5] with a gap between the two batches
  CHECK_FALSE(middle.is_contiguous());
  CHECK(middle.is_last_dim_contiguous());
  CHECK(v.slice(2, 0, 2).is_last_dim_contiguous());
  CHECK_FALSE(v.slice(2, 0, 2).is_contiguous());

  const auto column = v.select(3, 1);  // [2,3,4] with stride 5 along the last dim
  CHECK_FALSE(column.is_contiguous());
  CHECK_FALSE(column.is_last_dim_contiguous());

  // Extents of 1 do not break contiguity whatever their stride.
  CHECK(v.slice(1, 1, 1).slice(0, 0, 1).is_contiguous());
  CHECK(column.slice(2, 3, 1).is_last_dim_contiguous());
}

TEST_CASE("reshape", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  const TensorView<float, 2> flat = v.reshape(std::array<index_t, 2>{6, 20});
  CHECK(flat.data() == v.data());
  CHECK(flat(4, 7) == 87.f);
  CHECK(v[1].reshape(std::array<index_t, 1>{60})(59) == 119.f);
  CHECK_THROWS_AS(v.reshape(std::array<index_t, 2>{7, 20}), std::invalid_argument);
  CHECK_THROWS_AS(v.slice(3, 0, 4).reshape(std::array<index_t, 1>{96}), std::invalid_argument);
  CHECK_THROWS_AS(v.select(1, 0).reshape(std::array<index_t, 2>{2, 20}), std::invalid_argument);
}

TEST_CASE("const conversion", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  const seqmix::ConstView<float, 4> c = v;  // implicit, mutable -> read-only
  CHECK(c.data() == v.data());
  CHECK(c.strides() == v.strides());
  const auto ac = v.slice(2, 1, 2).as_const();
  static_assert(std::is_same_v<decltype(ac), const TensorView<const float, 4>>);
  CHECK(ac(1, 2, 1, 4) == static_cast<float>(offset_of({1, 2, 2, 4})));
  static_assert(!std::is_convertible_v<seqmix::ConstView<float, 2>, TensorView<float, 2>>,
                "read-only views must not convert back to mutable ones");
  static_assert(std::is_convertible_v<Tensor<float, 2>&, TensorView<float, 2>>);
}

TEST_CASE("copy between differently strided views", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  // Destination stored transposed ([5,4,3,2] memory order) but viewed as [2,3,4,5].
  std::vector<float> out(120, -1.f);
  const TensorView<float, 4> dst(out.data(), kShape, {1, 2, 6, 24});
  seqmix::copy(v.as_const(), dst);
  for_each_index(kShape, [&](const Shape4& i) { REQUIRE(at(dst, i) == at(v, i)); });

  // A strided slice into a dense tensor.
  Tensor<float, 4> dense({2, 2, 4, 3});
  seqmix::copy(v.slice(1, 1, 2).slice(3, 2, 3).as_const(), dense.view());
  for_each_index(dense.shape(), [&](const Shape4& i) {
    REQUIRE(dense(i[0], i[1], i[2], i[3]) == static_cast<float>(offset_of({i[0], i[1] + 1, i[2], i[3] + 2})));
  });

  Tensor<double, 4> wide(kShape);  // converting copy
  seqmix::copy(v.as_const(), wide.view());
  CHECK(wide(1, 2, 3, 4) == 119.0);

  Tensor<float, 4> wrong({2, 3, 4, 4});
  CHECK_THROWS_AS(seqmix::copy(v.as_const(), wrong.view()), std::invalid_argument);
}

#ifndef NDEBUG
// Release builds skip element bounds checks by design (they sit in inner loops).
TEST_CASE("bounds-checked element access in debug builds", "[tensor]") {
  std::vector<float> buffer = iota_buffer(120);
  const TensorView<float, 4> v(buffer.data(), kShape);
  CHECK_THROWS_AS(v(2, 0, 0, 0), std::out_of_range);
  CHECK_THROWS_AS(v(0, 0, 0, 5), std::out_of_range);
  CHECK_THROWS_AS(v(0, -1, 0, 0), std::out_of_range);
  CHECK_THROWS_AS(v[2], std::out_of_range);
  CHECK_THROWS_AS(v.select(2, 4), std::out_of_range);
  CHECK_THROWS_AS(v.ptr(0, 3), std::out_of_range);
  CHECK_THROWS_WITH(v(0, 0, 9, 0), Catch::Contains("index 9") && Catch::Contains("dimension 2"));
  CHECK_NOTHROW(v(1, 2, 3, 4));
}
#endif

TEST_CASE("Eigen interop through strided views", "[tensor][eigen]") {
  // A [T=5, H=3, D=4] tensor; [T,D] rows of one head and [T,H] columns of one feature are strided.
  Tensor<float, 3> x({5, 3, 4});
  for (index_t t = 0; t < 5; ++t)
    for (index_t h = 0; h < 3; ++h)
      for (index_t d = 0; d < 4; ++d) x(t, h, d) = static_cast<float>(100 * t + 10 * h + d);

  const TensorView<float, 2> head = x.view().select(1, 2);  // [5,4], strides (12, 1)
  auto m = seqmix::as_matrix(head);
  CHECK(m.rows() == 5);
  CHECK(m.cols() == 4);
  for (index_t t = 0; t < 5; ++t)
    for (index_t d = 0; d < 4; ++d) REQUIRE(m(t, d) == x(t, 2, d));

  const TensorView<float, 2> feature = x.view().select(2, 3);  // [5,3], strides (12, 4)
  auto f = seqmix::as_matrix(feature);
  f(4, 1) = -1.f;  // writes go to the right element
  CHECK(x(4, 1, 3) == -1.f);
  CHECK(x(4, 1, 2) == 412.f);
  f(4, 1) = 413.f;

  // GEMM through maps of strided views: out[t, s] = sum_d head[t, d] * other[s, d].
  const seqmix::ConstView<float, 2> other = x.cview().select(1, 0).slice(0, 1, 3);  // [3,4]
  Tensor<float, 3> out_storage({5, 2, 3});
  const TensorView<float, 2> out = out_storage.view().select(1, 1);  // strided destination
  seqmix::as_matrix(out).noalias() = seqmix::as_matrix(head.as_const()) * seqmix::as_matrix(other).transpose();
  for (index_t t = 0; t < 5; ++t) {
    for (index_t s = 0; s < 3; ++s) {
      double expected = 0;
      for (index_t d = 0; d < 4; ++d) expected += static_cast<double>(head(t, d)) * other(s, d);
      CAPTURE(t, s);
      REQUIRE(out(t, s) == Approx(expected).epsilon(1e-6));
      REQUIRE(out_storage(t, 0, s) == 0.f);  // the other slice is untouched
    }
  }

  seqmix::RowMajorMatrix<float> rm(3, 4);
  rm.setZero();
  const TensorView<float, 2> rv = seqmix::as_view(rm);
  CHECK(rv.shape() == std::array<index_t, 2>{3, 4});
  CHECK(rv.is_contiguous());
  rv(2, 1) = 5.f;
  CHECK(rm(2, 1) == 5.f);
  rm(0, 3) = 7.f;
  CHECK(rv(0, 3) == 7.f);
}

TEST_CASE("Tensor ownership, alignment and initialisation", "[tensor]") {
  for (index_t n : {1, 3, 17, 64, 1000}) {
    CAPTURE(n);
    Tensor<float, 2> t({n, 3});
    REQUIRE(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
    for (float value : t) REQUIRE(value == 0.f);
    Tensor<double, 1> d({n});
    REQUIRE(reinterpret_cast<std::uintptr_t>(d.data()) % 64 == 0);
  }
  Tensor<float, 3> t({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.view().is_contiguous());
  t.fill(2.5f);
  CHECK(t(1, 2, 3) == 2.5f);
  const Tensor<float, 3>& ct = t;
  CHECK(ct.view()(0, 0, 0) == 2.5f);
  CHECK_THROWS_AS((Tensor<float, 2>({-1, 3})), std::invalid_argument);
  Tensor<float, 2> none({0, 5});
  CHECK(none.numel() == 0);
  CHECK(none.view().empty());
}

namespace {

// An empty view reshaped to [2^62, 4], whose count wraps to the empty view's 0.
void none_view_reshape_overflows() {
  Tensor<float, 2> none({0, 5});
  (void)none.view().reshape(std::array<index_t, 2>{index_t{1} << 62, 4});
}

}  // namespace

TEST_CASE("Tensor and reshape refuse shapes that overflow before allocating", "[tensor][hostile]") {
  constexpr index_t k2to62 = index_t{1} << 62;
  // 4 * 2^62 wraps to 0 elements; 2^62 floats are 2^64 bytes.
  CHECK_THROWS_AS((Tensor<float, 2>({k2to62, 4})), seqmix::ShapeError);
  CHECK_THROWS_WITH((Tensor<float, 1>({k2to62})), Catch::Contains("seqmix::Tensor") && Catch::Contains("bytes"));
  CHECK_THROWS_AS((Tensor<float, 3>({index_t{1} << 32, index_t{1} << 32, 3})), seqmix::ShapeError);
  CHECK_THROWS_WITH((Tensor<float, 2>({3, -2})), Catch::Contains("negative extent"));
  // A zero extent is an empty tensor whatever the other extents are.
  CHECK(Tensor<float, 2>({0, k2to62}).numel() == 0);

  Tensor<float, 2> t({2, 3});
  // -2 * -3 = 6 and 2^62 * 4 wrapping to 0 must not pass as element counts.
  CHECK_THROWS_AS(t.view().reshape(std::array<index_t, 2>{-2, -3}), seqmix::ShapeError);
  CHECK_THROWS_AS(none_view_reshape_overflows(), seqmix::ShapeError);
  CHECK_NOTHROW(t.view().reshape(std::array<index_t, 1>{6}));

  // The allocator refuses byte counts that wrap.
  seqmix::AlignedAllocator<double> allocator;
  CHECK_THROWS_AS(allocator.allocate(std::numeric_limits<std::size_t>::max() / 4), std::bad_array_new_length);
}
