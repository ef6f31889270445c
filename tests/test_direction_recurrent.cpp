// The reverse option of rwkv7, the recurrent cells (lstm, gru, slstm), mlstm and matrix_scan
// (core/direction.hpp): the reference and fast forms with options.reverse equal the forward
// operator on explicitly reversed copies (outputs reversed back; the final state is the state
// after token 0), for ragged T including 1, B > 1 and odd sizes; bidirectional() with the sum
// equals the forward plus the reversed-copy result; packed rwkv7 batches and bad shapes are
// refused before anything is written.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "seqmix/core/direction.hpp"
#include "seqmix/linear_attention/rwkv7/recurrent.hpp"
#include "seqmix/linear_attention/rwkv7/reference.hpp"
#include "seqmix/rnn.hpp"
#include "seqmix/ssm.hpp"
#include "seqmix_testing/catch_checks.hpp"
#include "seqmix_testing/direction.hpp"
#include "seqmix_testing/testing.hpp"

namespace {

using seqmix::index_t;
using seqmix::Tensor;
using seqmix::TensorView;
namespace st = seqmix::testing;

template <std::size_t Rank>
void rec_dir_fill(Tensor<float, Rank>& t, float value) {
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = value;
}

template <std::size_t Rank>
void rec_dir_require_all(const Tensor<float, Rank>& t, float value) {
  for (index_t i = 0; i < t.numel(); ++i) REQUIRE(t.data()[i] == value);
}

const index_t kRecDirLengths[] = {1, 2, 37, 130};

// ---- rwkv7 ---------------------------------------------------------------------------------

// RWKV-7's contractive parameterization (a = -kappa_hat, b = kappa_hat * lr), as test_rwkv7.
struct RecDirRwkv7 {
  index_t B, T, H, K, V;
  Tensor<float, 4> r, k, v, a, b, g, s0;
  RecDirRwkv7(index_t B_, index_t T_, index_t H_, index_t K_, index_t V_, std::uint64_t seed)
      : B(B_), T(T_), H(H_), K(K_), V(V_), r(st::random_tensor<4>({B, T, H, K}, seed + 1)),
        k(st::random_tensor<4>({B, T, H, K}, seed + 2)), v(st::random_tensor<4>({B, T, H, V}, seed + 3)),
        a({B, T, H, K}), b({B, T, H, K}), g({B, T, H, K}),
        s0(st::random_tensor<4>({B, H, K, V}, seed + 5, -0.5f, 0.5f)) {
    const Tensor<float, 4> kappa = st::random_tensor<4>({B, T, H, K}, seed + 6);
    const Tensor<float, 3> lr = st::random_tensor<3>({B, T, H}, seed + 7, 0.f, 1.f);
    for (index_t row = 0; row < kappa.numel() / K; ++row) {
      const float* x = kappa.data() + row * K;
      float sum = 0.f;
      for (index_t i = 0; i < K; ++i) sum += x[i] * x[i];
      const float inv = 1.f / std::sqrt(sum + 1e-6f);
      for (index_t i = 0; i < K; ++i) {
        a.data()[row * K + i] = -x[i] * inv;
        b.data()[row * K + i] = x[i] * inv * lr.data()[row];
      }
    }
    st::fill_log_gate(g.view(), seed + 4, -1.f, 0.f);
  }
  RecDirRwkv7 reversed() const {
    RecDirRwkv7 c = *this;
    c.r = st::reversed_copy(r), c.k = st::reversed_copy(k), c.v = st::reversed_copy(v);
    c.a = st::reversed_copy(a), c.b = st::reversed_copy(b), c.g = st::reversed_copy(g);
    return c;
  }
  seqmix::Rwkv7Inputs inputs() const { return {r.view(), k.view(), v.view(), a.view(), b.view(), g.view(), s0.view()}; }
};

// ---- recurrent cells -----------------------------------------------------------------------

enum class RecDirCell { lstm, gru, slstm };

index_t rec_dir_gates(RecDirCell c) { return c == RecDirCell::gru ? 3 : 4; }
index_t rec_dir_states(RecDirCell c) { return c == RecDirCell::lstm ? 2 : c == RecDirCell::gru ? 1 : 4; }
const char* rec_dir_name(RecDirCell c) {
  return c == RecDirCell::lstm ? "lstm" : c == RecDirCell::gru ? "gru" : "slstm";
}

void rec_dir_run_cell(RecDirCell c, bool fast, const seqmix::RnnInputs& in, const seqmix::RnnOutputs& out,
                      const seqmix::RnnOptions& o, const seqmix::Executor& ex) {
  switch (c) {
    case RecDirCell::lstm: return fast ? seqmix::lstm(in, out, o, ex) : seqmix::reference::lstm(in, out, o);
    case RecDirCell::gru: return fast ? seqmix::gru(in, out, o, ex) : seqmix::reference::gru(in, out, o);
    case RecDirCell::slstm: return fast ? seqmix::slstm(in, out, o, ex) : seqmix::reference::slstm(in, out, o);
  }
}

struct RecDirCellData {
  RecDirCell cell;
  index_t B, T, I, H;
  Tensor<float, 3> x, s0;
  Tensor<float, 2> w_ih, w_hh;
  Tensor<float, 1> b_ih, b_hh;
  RecDirCellData(RecDirCell c, index_t B_, index_t T_, index_t I_, index_t H_, std::uint64_t seed)
      : cell(c), B(B_), T(T_), I(I_), H(H_) {
    const index_t G = rec_dir_gates(c), S = rec_dir_states(c);
    const float bound = 1.f / std::sqrt(static_cast<float>(H));
    x = st::random_tensor<3>({B, T, I}, seed);
    w_ih = st::random_tensor<2>({G * H, I}, seed + 1, -bound, bound);
    w_hh = st::random_tensor<2>({G * H, H}, seed + 2, -bound, bound);
    b_ih = st::random_tensor<1>({G * H}, seed + 3, -bound, bound);
    b_hh = st::random_tensor<1>({G * H}, seed + 4, -bound, bound);
    s0 = st::random_tensor<3>({B, S, H}, seed + 5, -0.5f, 0.5f);
    if (c == RecDirCell::slstm)  // a positive normalizer
      for (index_t b = 0; b < B; ++b)
        for (index_t j = 0; j < H; ++j) s0(b, 2, j) = 0.5f + std::abs(s0(b, 2, j)) * 3;
  }
  seqmix::RnnInputs inputs(const Tensor<float, 3>& xs) const {
    seqmix::RnnInputs in;
    in.x = xs.cview(), in.w_ih = w_ih.cview(), in.w_hh = w_hh.cview(), in.b_ih = b_ih.cview(), in.b_hh = b_hh.cview();
    in.initial_state = s0.cview();
    return in;
  }
};

// ---- mlstm ---------------------------------------------------------------------------------

struct RecDirMlstm {
  index_t B, T, NH, DK, DV;
  Tensor<float, 4> q, k, v, c0;
  Tensor<float, 3> i, f, n0;
  Tensor<float, 2> m0;
  RecDirMlstm(index_t B_, index_t T_, index_t NH_, index_t DK_, index_t DV_, std::uint64_t seed)
      : B(B_), T(T_), NH(NH_), DK(DK_), DV(DV_), q(st::random_tensor<4>({B, T, NH, DK}, seed)),
        k(st::random_tensor<4>({B, T, NH, DK}, seed + 1)), v(st::random_tensor<4>({B, T, NH, DV}, seed + 2)),
        c0(st::random_tensor<4>({B, NH, DK, DV}, seed + 5)), i(st::random_tensor<3>({B, T, NH}, seed + 3, -4.f, 4.f)),
        f(st::random_tensor<3>({B, T, NH}, seed + 4, -2.f, 6.f)), n0(st::random_tensor<3>({B, NH, DK}, seed + 6, 0.f, 2.f)),
        m0(st::random_tensor<2>({B, NH}, seed + 7, -2.f, 2.f)) {}
  RecDirMlstm reversed() const {
    RecDirMlstm c = *this;
    c.q = st::reversed_copy(q), c.k = st::reversed_copy(k), c.v = st::reversed_copy(v);
    c.i = st::reversed_copy(i), c.f = st::reversed_copy(f);
    return c;
  }
  seqmix::MlstmInputs inputs() const {
    seqmix::MlstmInputs in;
    in.q = q.cview(), in.k = k.cview(), in.v = v.cview(), in.i = i.cview(), in.f = f.cview();
    in.initial_c = c0.cview(), in.initial_n = n0.cview(), in.initial_m = m0.cview();
    return in;
  }
};

// ---- matrix_scan ---------------------------------------------------------------------------

// A contracting system, as test_matrix_scan: A = 0.5 I + U(-0.5, 0.5) / N.
struct RecDirMatrix {
  Tensor<float, 5> A;
  Tensor<float, 4> x;
  Tensor<float, 3> h0;
  RecDirMatrix(index_t B, index_t T, index_t H, index_t N, std::uint64_t seed)
      : A(st::random_tensor<5>({B, T, H, N, N}, seed, -0.5f / float(N), 0.5f / float(N))),
        x(st::random_tensor<4>({B, T, H, N}, seed + 1)), h0(st::random_tensor<3>({B, H, N}, seed + 2)) {
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t)
        for (index_t h = 0; h < H; ++h)
          for (index_t i = 0; i < N; ++i) A(b, t, h, i, i) += 0.5f;
  }
  RecDirMatrix reversed() const {
    RecDirMatrix c = *this;
    c.A = st::reversed_copy(A), c.x = st::reversed_copy(x);
    return c;
  }
  seqmix::MatrixScanInputs inputs() const { return {A.cview(), x.cview(), h0.cview()}; }
};

}  // namespace

TEST_CASE("reverse rwkv7 equals rwkv7 on reversed copies", "[direction][rwkv7]") {
  for (const index_t T : kRecDirLengths)
    for (int fast = 0; fast < 2; ++fast)
      for (int keep_states = 0; keep_states < 2; ++keep_states) {
        INFO("T=" << T << " fast=" << fast << " token_states=" << keep_states);
        const RecDirRwkv7 data(2, T, 2, 8, 5, 40 + std::uint64_t(T));
        const RecDirRwkv7 copies = data.reversed();
        Tensor<float, 4> o({2, T, 2, 5}), o_ref({2, T, 2, 5}), fs({2, 2, 8, 5}), fs_ref({2, 2, 8, 5});
        Tensor<float, 5> ts, ts_ref;
        if (keep_states) ts = Tensor<float, 5>({2, T, 2, 8, 5}), ts_ref = Tensor<float, 5>({2, T, 2, 8, 5});
        seqmix::Rwkv7Options reverse;
        reverse.reverse = true;
        if (fast) {
          seqmix::rwkv7(data.inputs(), {o.view(), fs.view(), ts.view()}, reverse);
          seqmix::rwkv7(copies.inputs(), {o_ref.view(), fs_ref.view(), ts_ref.view()});
        } else {
          seqmix::reference::rwkv7(data.inputs(), {o.view(), fs.view(), ts.view()}, reverse);
          seqmix::reference::rwkv7(copies.inputs(), {o_ref.view(), fs_ref.view(), ts_ref.view()});
        }
        st::require_close("o", o.cview(), seqmix::reversed_time_view(o_ref.cview()), 2e-5);
        st::require_close("final_state", fs.cview(), fs_ref.cview(), 2e-5);
        if (keep_states)
          st::require_close("token_states", ts.cview(), seqmix::reversed_time_view(ts_ref.cview()), 2e-5);
        // reverse = false through the options overload is the plain call.
        Tensor<float, 4> o_fwd({2, T, 2, 5}), o_plain({2, T, 2, 5});
        seqmix::rwkv7(data.inputs(), {o_fwd.view()}, seqmix::Rwkv7Options{});
        seqmix::rwkv7(data.inputs(), {o_plain.view()});
        st::require_close("o forward", o_fwd.cview(), o_plain.cview(), 0.0);
      }
}

TEST_CASE("reverse lstm gru and slstm equal the cells on reversed copies", "[direction][rnn]") {
  seqmix::ThreadPool pool(2);
  const RecDirCell cells[] = {RecDirCell::lstm, RecDirCell::gru, RecDirCell::slstm};
  for (const RecDirCell cell : cells)
    for (const index_t T : kRecDirLengths)
      for (int fast = 0; fast < 2; ++fast) {
        INFO(rec_dir_name(cell) << " T=" << T << " fast=" << fast);
        const index_t B = 3, I = 7, H = 33, S = rec_dir_states(cell);
        const RecDirCellData data(cell, B, T, I, H, 70 + std::uint64_t(T));
        const Tensor<float, 3> x_rev = st::reversed_copy(data.x);
        Tensor<float, 3> y({B, T, H}), y_ref({B, T, H}), fs({B, S, H}), fs_ref({B, S, H});
        seqmix::RnnOptions reverse;
        reverse.reverse = true;
        const seqmix::Executor& ex = fast ? static_cast<const seqmix::Executor&>(pool) : seqmix::serial_executor();
        rec_dir_run_cell(cell, fast, data.inputs(data.x), {y.view(), fs.view()}, reverse, ex);
        rec_dir_run_cell(cell, fast, data.inputs(x_rev), {y_ref.view(), fs_ref.view()}, {}, ex);
        st::require_close("y", y.cview(), seqmix::reversed_time_view(y_ref.cview()), 1e-5);
        st::require_close("final_state", fs.cview(), fs_ref.cview(), 1e-5);
      }
}

TEST_CASE("reverse mlstm equals mlstm on reversed copies, chunked and recurrent", "[direction][mlstm]") {
  const seqmix::MlstmAlgorithm algorithms[] = {seqmix::MlstmAlgorithm::chunked, seqmix::MlstmAlgorithm::recurrent};
  for (const index_t T : kRecDirLengths)
    for (int form = 0; form < 3; ++form) {
      INFO("T=" << T << " form=" << form << " (0 reference, 1 chunked, 2 recurrent)");
      const RecDirMlstm data(2, T, 2, 8, 6, 90 + std::uint64_t(T));
      const RecDirMlstm copies = data.reversed();
      Tensor<float, 4> h({2, T, 2, 6}), h_ref({2, T, 2, 6}), c({2, 2, 8, 6}), c_ref({2, 2, 8, 6});
      Tensor<float, 3> n({2, 2, 8}), n_ref({2, 2, 8});
      Tensor<float, 2> m({2, 2}), m_ref({2, 2});
      seqmix::MlstmOptions options;
      options.chunk_size = 16;
      if (form > 0) options.algorithm = algorithms[form - 1];
      seqmix::MlstmOptions reverse = options;
      reverse.reverse = true;
      const seqmix::MlstmOutputs got{h.view(), c.view(), n.view(), m.view()};
      const seqmix::MlstmOutputs want{h_ref.view(), c_ref.view(), n_ref.view(), m_ref.view()};
      if (form == 0) {
        seqmix::reference::mlstm(data.inputs(), got, reverse);
        seqmix::reference::mlstm(copies.inputs(), want, options);
      } else {
        seqmix::mlstm(data.inputs(), got, reverse);
        seqmix::mlstm(copies.inputs(), want, options);
      }
      st::require_close("h", h.cview(), seqmix::reversed_time_view(h_ref.cview()), 1e-5);
      st::require_close("final_c", c.cview(), c_ref.cview(), 1e-5);
      st::require_close("final_n", n.cview(), n_ref.cview(), 1e-5);
      st::require_close("final_m", m.cview(), m_ref.cview(), 1e-5);
    }
}

TEST_CASE("reverse matrix_scan equals the scan of reversed copies on both splits", "[direction][matrix_scan]") {
  seqmix::ThreadPool pool(2);
  const index_t blocks[] = {1, 3, 4, 16};
  for (const index_t N : blocks)
    for (const index_t T : kRecDirLengths)
      for (int form = 0; form < 3; ++form) {
        INFO("N=" << N << " T=" << T << " form=" << form << " (0 reference, 1 heads, 2 time)");
        const index_t B = 2, H = 3;
        const RecDirMatrix data(B, T, H, N, 110 + std::uint64_t(N * T));
        const RecDirMatrix copies = data.reversed();
        Tensor<float, 4> h_all({B, T, H, N}), ref_all({B, T, H, N});
        Tensor<float, 3> h_last({B, H, N}), ref_last({B, H, N});
        seqmix::MatrixScanOptions options;
        if (form == 2) options.split = seqmix::MatrixScanSplit::time, options.chunk_size = 16;
        seqmix::MatrixScanOptions reverse = options;
        reverse.reverse = true;
        if (form == 0) {
          seqmix::reference::matrix_scan(data.inputs(), {h_all.view(), h_last.view()}, reverse);
          seqmix::reference::matrix_scan(copies.inputs(), {ref_all.view(), ref_last.view()}, options);
        } else {
          seqmix::matrix_scan(data.inputs(), {h_all.view(), h_last.view()}, reverse, pool);
          seqmix::matrix_scan(copies.inputs(), {ref_all.view(), ref_last.view()}, options, pool);
        }
        st::require_close("h_all", h_all.cview(), seqmix::reversed_time_view(ref_all.cview()), 1e-5);
        st::require_close("h_last", h_last.cview(), ref_last.cview(), 1e-5);
      }
}

TEST_CASE("bidirectional sums forward and reverse of lstm and matrix_scan", "[direction][rnn][matrix_scan]") {
  const index_t B = 2, T = 29, I = 5, H = 9;
  const RecDirCellData cell(RecDirCell::lstm, B, T, I, H, 501);
  Tensor<float, 3> y({B, T, H}), fwd({B, T, H}), bwd({B, T, H});
  auto run_lstm = [&](bool reverse, TensorView<float, 3> out) {
    seqmix::RnnOptions o;
    o.reverse = reverse;
    seqmix::lstm(cell.inputs(cell.x), {out}, o);
  };
  seqmix::bidirectional<3>(run_lstm, y.view());
  seqmix::lstm(cell.inputs(cell.x), {fwd.view()});
  seqmix::lstm(cell.inputs(st::reversed_copy(cell.x)), {bwd.view()});
  const Tensor<float, 3> bwd_back = st::reversed_copy(bwd);
  for (index_t i = 0; i < fwd.numel(); ++i) fwd.data()[i] += bwd_back.data()[i];
  st::require_close("lstm y", y.cview(), fwd.cview(), 1e-5);

  const RecDirMatrix m(B, T, 2, 4, 502);
  Tensor<float, 4> h({B, T, 2, 4}), hf({B, T, 2, 4}), hb({B, T, 2, 4});
  auto run_scan = [&](bool reverse, TensorView<float, 4> out) {
    seqmix::MatrixScanOptions o;
    o.reverse = reverse;
    seqmix::matrix_scan(m.inputs(), {out}, o);
  };
  seqmix::bidirectional<4>(run_scan, h.view());
  seqmix::matrix_scan(m.inputs(), {hf.view()});
  seqmix::matrix_scan(m.reversed().inputs(), {hb.view()});
  const Tensor<float, 4> hb_back = st::reversed_copy(hb);
  for (index_t i = 0; i < hf.numel(); ++i) hf.data()[i] += hb_back.data()[i];
  st::require_close("matrix_scan h", h.cview(), hf.cview(), 1e-5);
}

TEST_CASE("reverse calls refuse packed rwkv7 batches and bad shapes before writing", "[direction][errors]") {
  // rwkv7: packed sequences cannot run reversed.
  const RecDirRwkv7 data(1, 12, 1, 4, 4, 601);
  const std::vector<std::int32_t> cu{0, 5, 12};
  seqmix::Rwkv7Inputs in = data.inputs();
  in.initial_state = {};
  in.batch.cu_seqlens = cu;
  Tensor<float, 4> o({1, 12, 1, 4});
  rec_dir_fill(o, 7.f);
  seqmix::Rwkv7Options reverse;
  reverse.reverse = true;
  st::require_shape_error("options.reverse", [&] { seqmix::rwkv7(in, {o.view()}, reverse); });
  st::require_shape_error("options.reverse", [&] { seqmix::reference::rwkv7(in, {o.view()}, reverse); });
  rec_dir_require_all(o, 7.f);

  // A wrong y, h or h_all shape is refused with reverse set, nothing written.
  const RecDirCellData cell(RecDirCell::gru, 1, 6, 3, 4, 602);
  Tensor<float, 3> y_bad({1, 5, 4});
  rec_dir_fill(y_bad, 7.f);
  seqmix::RnnOptions rnn_reverse;
  rnn_reverse.reverse = true;
  st::require_shape_error("y", [&] { seqmix::gru(cell.inputs(cell.x), {y_bad.view()}, rnn_reverse); });
  st::require_shape_error("y", [&] { seqmix::reference::gru(cell.inputs(cell.x), {y_bad.view()}, rnn_reverse); });
  rec_dir_require_all(y_bad, 7.f);

  const RecDirMlstm ml(1, 6, 1, 4, 4, 603);
  Tensor<float, 4> h_bad({1, 6, 1, 5});
  rec_dir_fill(h_bad, 7.f);
  seqmix::MlstmOptions ml_reverse;
  ml_reverse.reverse = true;
  st::require_shape_error("h", [&] { seqmix::mlstm(ml.inputs(), {h_bad.view()}, ml_reverse); });
  st::require_shape_error("h", [&] { seqmix::reference::mlstm(ml.inputs(), {h_bad.view()}, ml_reverse); });
  rec_dir_require_all(h_bad, 7.f);

  const RecDirMatrix ms(1, 6, 1, 3, 604);
  Tensor<float, 4> hall_bad({1, 6, 1, 2});
  rec_dir_fill(hall_bad, 7.f);
  seqmix::MatrixScanOptions ms_reverse;
  ms_reverse.reverse = true;
  st::require_shape_error("h_all", [&] { seqmix::matrix_scan(ms.inputs(), {hall_bad.view()}, ms_reverse); });
  st::require_shape_error("h_all",
                          [&] { seqmix::reference::matrix_scan(ms.inputs(), {hall_bad.view()}, ms_reverse); });
  rec_dir_require_all(hall_bad, 7.f);
}
