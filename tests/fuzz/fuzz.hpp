// The fuzzing harness shared by every target in tests/fuzz/ (issue 24, item 5).
//
// A target is `int fuzz_<family>(const std::uint8_t* data, std::size_t size)`: it decodes the
// bytes into one or a few operator calls (shapes, strides, options, batches, values with NaN /
// inf / extremes poked in, hostile extents) and checks each call against the contract:
//   - no crash and no sanitizer report (the build's job: -fsanitize=address,undefined);
//   - a refused call throws ShapeError (or the documented error type) and leaves every output
//     buffer bit for bit as it was; the fast form and the reference refuse the same calls;
//   - an accepted call gives the reference's outputs within tolerance (NaN where the reference
//     has NaN, the same infinity where it has one, for the families whose non-finite policy is
//     uniform, see docs/reliability.md).
// A violated check prints what was decoded and calls std::abort(), which libFuzzer reports as a
// crash (and the g++ driver, driver.cpp, reports with its seed and iteration).
//
// Bytes are consumed front to back; an exhausted input reads as zeros, so every byte string is a
// valid program and short inputs give the simplest calls.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/batch.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/parallel.hpp"
#include "seqmix/core/tensor.hpp"

namespace seqmix::fuzz {

// Called before abort() on a failed check (the driver saves the input there); may be null.
inline void (*&failure_hook())(const char*) {
  static void (*hook)(const char*) = nullptr;
  return hook;
}

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "seqmix fuzz check failed: %s\n", what.c_str());
  if (failure_hook()) failure_hook()(what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline void require(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

// Reads choices from the fuzzer's bytes.
class Decoder {
 public:
  Decoder(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | byte();
    return v;
  }
  // Uniform-ish in [lo, hi] (hi - lo < 2^16).
  index_t range(index_t lo, index_t hi) {
    const std::uint32_t r = static_cast<std::uint32_t>(byte()) | (static_cast<std::uint32_t>(byte()) << 8);
    return lo + static_cast<index_t>(r % static_cast<std::uint32_t>(hi - lo + 1));
  }
  // A small size in [lo, hi], biased towards the ends and the edges of 64-token tiles.
  index_t size(index_t lo, index_t hi) {
    const std::uint8_t kind = byte() % 8;
    if (kind == 0) return lo;
    if (kind == 1) return hi;
    if (kind == 2) {
      static constexpr index_t edges[] = {1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65};
      const index_t e = edges[byte() % 14];
      if (e >= lo && e <= hi) return e;
    }
    return range(lo, hi);
  }
  bool flag() { return (byte() & 1) != 0; }
  bool one_in(int n) { return byte() % n == 0; }
  template <class E>
  E pick(std::initializer_list<E> options) {
    return options.begin()[byte() % options.size()];
  }
  bool exhausted() const { return pos_ >= size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Magnitudes beyond which values count as extreme (see require_close).
constexpr double kExtreme = 1e6;

// The special values poked into inputs.
inline float special_value(std::uint8_t k) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  static constexpr float values[] = {0.f,     -0.f,   1e30f, -1e30f,  3e38f,   -3e38f, 1e-40f, -1e-40f,
                                     1e-30f,  100.f,  -100.f, 1e4f,   -1e4f,   88.f,   -88.f,  0.5f};
  switch (k % 20) {
    case 16: return std::numeric_limits<float>::quiet_NaN();
    case 17: return inf;
    case 18: return -inf;
    case 19: return std::numeric_limits<float>::max();
    default: return values[k % 16];
  }
}

// Deterministic values (splitmix64), so a few bytes describe a whole tensor.
class Values {
 public:
  explicit Values(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) * 0x1p-24f; }

 private:
  std::uint64_t state_;
};

// How hostile one call is.
enum class Mode : std::uint8_t {
  clean,     // valid shapes, finite moderate values: must succeed and match the reference
  specials,  // valid shapes, NaN / inf / extremes poked into the inputs
  shapes,    // one extent or option made invalid: must be refused (ShapeError), outputs untouched
  batch,     // the serving arguments (cu_seqlens, state_indices, ...) perturbed: either answer,
             // but the fast form and the reference agree, and a refusal touches nothing
};

// Whether the current call's inputs got a non-finite value or one beyond kExtreme in magnitude
// (set by fill, cleared by decode_mode).
inline bool& extreme_poked() {
  static bool poked = false;
  return poked;
}

// Whether one of them was a finite value beyond kExtreme (e.g. 3e38).
inline bool& huge_poked() {
  static bool poked = false;
  return poked;
}

inline Mode decode_mode(Decoder& in) {
  extreme_poked() = false;
  huge_poked() = false;
  const std::uint8_t b = in.byte() % 16;
  if (b < 7) return Mode::clean;
  if (b < 10) return Mode::specials;
  if (b < 13) return Mode::shapes;
  return Mode::batch;
}

inline const char* mode_name(Mode m) {
  switch (m) {
    case Mode::clean: return "clean";
    case Mode::specials: return "specials";
    case Mode::shapes: return "shapes";
    default: return "batch";
  }
}

// Mode::shapes: one argument of a call gets one wrong extent (negative, off by one or huge) while
// keeping its tensor's data and strides, so a call that is not refused reads or writes out of
// bounds (and the sanitizers say so). Arguments are numbered by the target; hit() says whether
// the chosen argument was present in the call (an absent optional one leaves the call valid).
class Hostile {
 public:
  Hostile(Decoder& in, Mode mode, int arguments)
      : victim_(mode == Mode::shapes ? static_cast<int>(in.byte() % arguments) : -1),
        dim_(in.byte()),
        kind_(in.byte()) {}

  // free_dim: an extent nothing else in the call pins (e.g. causal_conv1d's W without a state),
  // which can only be made invalid by making it negative.
  template <class T, std::size_t R>
  ConstView<T, R> in(int k, const Tensor<T, R>& t, int free_dim = -1) const {
    const bool only_negative = t.numel() == 0 || (free_dim >= 0 && dim_ % R == static_cast<std::size_t>(free_dim));
    return ConstView<T, R>(t.data(), shape(k, t.shape(), only_negative), t.view().strides());
  }
  template <class T, std::size_t R>
  TensorView<T, R> out(int k, Tensor<T, R>& t) const {
    return TensorView<T, R>(t.data(), shape(k, t.shape(), t.numel() == 0), t.view().strides());
  }
  bool hit() const { return hit_; }
  const std::string& describe() const { return what_; }
  // A wrong value for a scalar argument (e.g. a chunk size or window) when `k` is the victim.
  index_t scalar(int k, index_t good, index_t bad) const {
    if (k != victim_) return good;
    hit_ = true;
    what_ = "argument " + std::to_string(k) + ": " + std::to_string(good) + " -> " + std::to_string(bad);
    return bad;
  }

 private:
  template <std::size_t R>
  // An empty view counts as an absent optional argument whatever its extents, so an empty
  // tensor (like a free extent) only gets a negative extent, refused even then.
  std::array<index_t, R> shape(int k, std::array<index_t, R> s, bool empty) const {
    if (k != victim_) return s;
    hit_ = true;
    index_t& e = s[dim_ % R];
    const index_t good = e;
    switch (empty ? 0 : kind_ % 5) {
      case 0: e = -1; break;
      case 1: e = good + 1; break;
      case 2: e = good > 0 ? good - 1 : -7; break;
      case 3: e = index_t{1} << 40; break;
      default: e = std::numeric_limits<index_t>::min() / 4; break;
    }
    what_ = "argument " + std::to_string(k) + " extent " + std::to_string(dim_ % R) + ": " + std::to_string(good) +
            " -> " + std::to_string(e);
    return s;
  }

  int victim_;
  std::uint8_t dim_, kind_;
  mutable bool hit_ = false;
  mutable std::string what_;
};

// Fills a tensor with values in [lo, hi]; in Mode::specials, pokes a few special values too.
// Returns whether a non-finite value was poked.
template <class T, std::size_t R>
bool fill(Tensor<T, R>& t, Decoder& in, Mode mode, float lo, float hi) {
  Values values(in.u64());
  for (index_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(values.uniform(lo, hi));
  bool nonfinite = false;
  if (mode == Mode::specials && t.numel() > 0) {
    const int pokes = in.byte() % 4;
    for (int p = 0; p < pokes; ++p) {
      const index_t at = static_cast<index_t>(values.next() % static_cast<std::uint64_t>(t.numel()));
      const float v = special_value(in.byte());
      nonfinite = nonfinite || !std::isfinite(v);
      if (!(std::abs(v) <= kExtreme)) extreme_poked() = true;
      if (std::isfinite(v) && std::abs(v) > kExtreme) huge_poked() = true;
      if (std::getenv("SEQMIX_FUZZ_TRACE"))
        std::fprintf(stderr, "poke %g at %td of a tensor of %td\n", static_cast<double>(v), at, t.numel());
      t.data()[at] = static_cast<T>(v);
    }
  }
  return nonfinite;
}

// A copy of the output buffers before a call, to check that a refused call left them alone.
class Snapshot {
 public:
  template <class T, std::size_t R>
  Snapshot& add(const Tensor<T, R>& t) {
    const auto* p = reinterpret_cast<const unsigned char*>(t.data());
    buffers_.push_back({p, std::vector<unsigned char>(p, p + t.numel() * static_cast<index_t>(sizeof(T)))});
    return *this;
  }
  bool unchanged() const {
    for (const auto& [p, copy] : buffers_)
      if (!copy.empty() && std::memcmp(p, copy.data(), copy.size()) != 0) return false;
    return true;
  }

 private:
  std::vector<std::pair<const unsigned char*, std::vector<unsigned char>>> buffers_;
};

// Runs `call`; returns true if it returned, false if it threw ShapeError having left `snapshot`'s
// buffers unchanged. Any other exception, or a refusal that wrote, fails.
inline std::string& last_refusal() {
  static std::string message;
  return message;
}

template <class Call>
bool accepted(const std::string& what, const Snapshot& snapshot, Call&& call) {
  try {
    call();
    return true;
  } catch (const ShapeError& e) {
    last_refusal() = what + ": " + e.what();
    require(snapshot.unchanged(), what + ": refused (" + e.what() + ") after writing an output");
    require(std::string(e.what()).rfind("seqmix::", 0) == 0, what + ": error message without the op name: " + e.what());
    return false;
  } catch (const std::exception& e) {
    fail(what + ": threw a non-ShapeError exception: " + e.what());
  }
}

// The verdicts of the fast form and the reference on one call: both refuse a hostile call, and
// otherwise they agree (a call may be refused by both for a documented reason, e.g. an empty
// output counted as absent). Returns whether the outputs are to be compared.
// ref_hostile: whether the reference was given the hostile arguments too (a step is checked
// against a reference prefill built from the valid tensors).
inline bool verdicts_agree(const std::string& op, bool fast_ok, bool ref_ok, const Hostile& hostile,
                           bool ref_hostile = true) {
  if (hostile.hit()) {
    require(!fast_ok, op + " accepted a hostile argument: " + hostile.describe());
    require(!ref_ok || !ref_hostile, "reference " + op + " accepted a hostile argument: " + hostile.describe());
    return false;
  }
  require(fast_ok == ref_ok, op + (fast_ok ? ": only the reference refused: " : ": only the fast form refused: ") +
                                 last_refusal());
  return fast_ok;
}

// How require_close treats non-finite elements.
enum class NonFinite {
  ignore,  // not compared; and where an input got a non-finite or extreme value, no element is
           // (families whose non-finite policy is not uniform yet, docs/reliability.md)
  same_finiteness,  // the policy of docs/reliability.md: a finite reference element (up to
                    // kExtreme in Mode::specials) needs a finite output within the bound, a
                    // non-finite one a non-finite output (NaN or inf: IEEE decides which) or one
                    // beyond kExtreme. Not checked where an input got a finite value beyond
                    // kExtreme (huge_poked): whether a sum of products near FLT_MAX overflows
                    // depends on their order, and such a value times one in the denormal range
                    // (which the vector exp flushes to 0, std::exp keeps) differs by O(1).
  exact,  // a NaN in the reference needs a NaN, an infinity the same infinity, and a finite
          // reference element a finite output
};

// The largest finite magnitude of t (0 if none): the scale the targets' tolerances grow with.
template <class T, std::size_t R>
double max_finite_abs(const Tensor<T, R>& t) {
  double m = 0.0;
  for (index_t i = 0; i < t.numel(); ++i)
    if (std::isfinite(t.data()[i])) m = std::max(m, std::abs(static_cast<double>(t.data()[i])));
  return m;
}

// The smallest finite element of t, or 0 if none is below 0.
template <class T, std::size_t R>
double min_finite(const Tensor<T, R>& t) {
  double m = 0.0;
  for (index_t i = 0; i < t.numel(); ++i)
    if (std::isfinite(t.data()[i])) m = std::min(m, static_cast<double>(t.data()[i]));
  return m;
}

// The tolerance rule of the conformance vectors, max|out - ref| <= tol * max(1, max|ref|), over
// the finite reference elements, non-finite ones as `nonfinite` says.
//
// Values near FLT_MAX are not compared: float arithmetic there cannot match the reference (a
// reference element beyond kExtreme is skipped in Mode::specials).
template <class A, class B, std::size_t R>
void require_close(const std::string& what, const Tensor<A, R>& out, const Tensor<B, R>& ref, double tol,
                   NonFinite nonfinite, Mode mode = Mode::clean) {
  require(out.shape() == ref.shape(), what + ": shape mismatch");
  if (mode == Mode::specials && extreme_poked() && nonfinite == NonFinite::ignore) return;
  if (mode == Mode::specials && huge_poked() && nonfinite == NonFinite::same_finiteness) return;
  const double cap = mode == Mode::specials ? kExtreme : std::numeric_limits<double>::infinity();
  double max_ref = 0.0;
  for (index_t i = 0; i < ref.numel(); ++i) {
    const double r = static_cast<double>(ref.data()[i]);
    if (std::isfinite(r) && std::abs(r) <= cap) max_ref = std::max(max_ref, std::abs(r));
  }
  const double bound = tol * std::max(1.0, max_ref);
  for (index_t i = 0; i < ref.numel(); ++i) {
    const double o = static_cast<double>(out.data()[i]), r = static_cast<double>(ref.data()[i]);
    std::ostringstream msg;
    msg << what << ": element " << i << " of " << ref.numel() << ": out " << o << " ref " << r << " (bound " << bound
        << ")";
    if (nonfinite == NonFinite::same_finiteness) {
      if (!std::isfinite(r)) require(!(std::abs(o) <= kExtreme), msg.str());
      else if (std::abs(r) <= cap) require(std::abs(o - r) <= bound, msg.str());  // false for a NaN o
      continue;
    }
    if (!std::isfinite(r) || !std::isfinite(o)) {
      if (nonfinite == NonFinite::ignore) continue;
      if (std::isnan(r)) require(std::isnan(o), msg.str());
      else require(o == r, msg.str());
      continue;
    }
    if (std::abs(r) > cap) continue;
    require(std::abs(o - r) <= bound, msg.str());
  }
}

// strict_nonfinite: NonFinite::exact, else NonFinite::ignore.
template <class A, class B, std::size_t R>
void require_close(const std::string& what, const Tensor<A, R>& out, const Tensor<B, R>& ref, double tol,
                   bool strict_nonfinite, Mode mode = Mode::clean) {
  require_close(what, out, ref, tol, strict_nonfinite ? NonFinite::exact : NonFinite::ignore, mode);
}

// The serving arguments of a call (docs/operators.md section 9): dense rows or packed sequences,
// states per sequence or slots in a pool, has_initial_state flags; in Mode::batch one of them is
// perturbed (an offset moved, a slot repeated or out of range, a list of the wrong length).
struct Batch {
  index_t B = 1, T = 0;        // token tensors [B, T, ...]
  index_t N = 1;               // sequences
  index_t S = 1;               // rows of the state tensors (N, or the pool size)
  std::vector<std::int64_t> cu, slots;
  std::vector<std::int32_t> cu32, slots32;
  std::vector<std::uint8_t> initial;
  bool use32 = false;

  std::string describe() const {
    std::ostringstream s;
    auto list = [&](const char* name, const auto& v) {
      s << " " << name << " [";
      for (const auto& x : v) s << " " << +x;
      s << " ]";
    };
    s << "B " << B << " T " << T << " N " << N << " S " << S;
    list("cu_seqlens", cu), list("state_indices", slots), list("has_initial_state", initial);
    return s.str();
  }

  SequenceBatch view() const {
    SequenceBatch b;
    if (use32) {
      if (!cu.empty()) b.cu_seqlens = cu32;
      if (!slots.empty()) b.state_indices = slots32;
    } else {
      if (!cu.empty()) b.cu_seqlens = cu;
      if (!slots.empty()) b.state_indices = slots;
    }
    if (!initial.empty()) b.has_initial_state = initial;
    return b;
  }
};

// packed: whether cu_seqlens may be used (prefill; a step has T = 1 and no cu_seqlens).
inline Batch decode_batch(Decoder& in, Mode mode, index_t max_B, index_t max_T, bool packed) {
  Batch b;
  if (packed && in.flag()) {
    b.N = in.size(0, 5);
    b.cu.push_back(0);
    for (index_t n = 0; n < b.N; ++n) b.cu.push_back(b.cu.back() + in.size(0, max_T / 2));
    b.B = 1, b.T = b.cu.back();
  } else {
    b.B = b.N = in.size(1, max_B);
    b.T = packed ? in.size(0, max_T) : 1;
  }
  b.S = b.N;
  if (in.flag()) {  // slots in a pool with holes, some sequences padding (-1)
    b.S = b.N + in.size(0, 3);
    for (index_t s = 0; s < b.S; ++s) b.slots.push_back(s);
    for (index_t s = b.S - 1; s > 0; --s) std::swap(b.slots[static_cast<std::size_t>(s)], b.slots[in.byte() % (s + 1)]);
    b.slots.resize(static_cast<std::size_t>(b.N));
    for (auto& s : b.slots)
      if (in.one_in(5)) s = -1;
  }
  if (in.flag())
    for (index_t n = 0; n < b.N; ++n) b.initial.push_back(in.byte() & 1);
  if (mode == Mode::batch) {
    switch (in.byte() % 6) {
      case 0: if (!b.cu.empty()) b.cu[in.byte() % b.cu.size()] += in.flag() ? 1 : -1; break;
      case 1: if (b.slots.size() > 1) b.slots[1] = b.slots[0]; break;
      case 2: if (!b.slots.empty()) b.slots[in.byte() % b.slots.size()] = in.flag() ? b.S : -2; break;
      case 3: b.initial.push_back(1); break;
      case 4: if (!b.slots.empty()) b.slots.pop_back(); break;
      default: if (!b.cu.empty()) b.cu.back() += 1 + in.byte(); break;
    }
  }
  b.use32 = in.flag();
  if (std::getenv("SEQMIX_FUZZ_TRACE")) std::fprintf(stderr, "batch: %s\n", b.describe().c_str());
  b.cu32.assign(b.cu.begin(), b.cu.end());
  b.slots32.assign(b.slots.begin(), b.slots.end());
  return b;
}

// The executor of the fast form: serial, or a shared pool of two threads.
inline const Executor& executor(Decoder& in) {
  static const ThreadPool pool(2);
  return in.flag() ? static_cast<const Executor&>(pool) : serial_executor();
}

// One entry point per target.
int fuzz_scan(const std::uint8_t* data, std::size_t size);
int fuzz_ssm(const std::uint8_t* data, std::size_t size);
int fuzz_linear_attention(const std::uint8_t* data, std::size_t size);
int fuzz_attention(const std::uint8_t* data, std::size_t size);
int fuzz_kv_cache(const std::uint8_t* data, std::size_t size);
int fuzz_npy(const std::uint8_t* data, std::size_t size);
int fuzz_hybrid_serving(const std::uint8_t* data, std::size_t size);

}  // namespace seqmix::fuzz
