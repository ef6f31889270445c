// The non-finite probe shared by tests/test_nonfinite*.cpp (issue 24 item 2, docs/reliability.md):
// an op is a list of named fields with a token axis, a reference and its fast forms; probe() puts
// NaN, +inf and -inf into one element of each probed input and checks the policy (see
// tests/test_nonfinite.cpp's header comment). A named namespace and inline functions, so that a
// unity build including this header from several test files sees one definition.
#pragma once

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix_testing/testing.hpp"

namespace seqmix_nonfinite_probe {

using seqmix::ConstView;
using seqmix::index_t;
using seqmix::TensorView;
namespace st = seqmix::testing;

// One argument or result of an op: a row-major array whose axis `token_axis` counts tokens
// (-1: no token axis, e.g. a final state, which depends on every token).
struct Field {
  std::string name;
  std::vector<index_t> shape;
  int token_axis = 1;
  std::vector<float> data;
  // A gate may change the rounding of earlier tokens of a chunk (the chunked forms pick their
  // decay anchors from the whole chunk); earlier tokens then stay finite and within rounding.
  bool exact = true;
  // Elements of a state (token_axis -1: an initial state read by every token) that the probe
  // pokes too; outputs must then be non-finite exactly where the reference's are.
  std::vector<index_t> state_pokes = {};
  // Serving probes (tests/test_nonfinite_serving.cpp): the sequence each index along owner_axis
  // belongs to (owner_axis -1: not tracked; an owner -1: no sequence, e.g. a pool slot nobody
  // uses). A poke into one sequence's element must leave every element of another owner bit for
  // bit as the clean run of the same form has it.
  int owner_axis = -1;
  std::vector<index_t> owners = {};

  index_t numel() const {
    index_t n = 1;
    for (index_t s : shape) n *= s;
    return n;
  }
  index_t stride(int axis) const {
    index_t s = 1;
    for (std::size_t d = static_cast<std::size_t>(axis) + 1; d < shape.size(); ++d) s *= shape[d];
    return s;
  }
  // kNoOwner where owners are not tracked.
  static constexpr index_t kNoOwner = -2;
  index_t owner_of(index_t flat) const {
    return owner_axis < 0 ? kNoOwner : owners[static_cast<std::size_t>((flat / stride(owner_axis)) % shape[owner_axis])];
  }
  index_t token_of(index_t flat) const { return token_axis < 0 ? -1 : (flat / stride(token_axis)) % shape[token_axis]; }
  // The element poked at token t: batch row 0, token t, the middle of the last axis (a key index
  // for an attention mask, which may then be masked out by the causal rule), 0 elsewhere.
  index_t poke_index(index_t t) const {
    index_t i = t * stride(token_axis);
    if (static_cast<std::size_t>(token_axis) + 1 < shape.size()) i += shape.back() / 2;
    return i;
  }
  template <std::size_t R>
  ConstView<float, R> in() const {
    REQUIRE(shape.size() == R);
    std::array<index_t, R> s{};
    for (std::size_t d = 0; d < R; ++d) s[d] = shape[d];
    return ConstView<float, R>(data.data(), s);
  }
  template <std::size_t R>
  TensorView<float, R> out() {
    REQUIRE(shape.size() == R);
    std::array<index_t, R> s{};
    for (std::size_t d = 0; d < R; ++d) s[d] = shape[d];
    return TensorView<float, R>(data.data(), s);
  }
};

inline Field random_field(std::string name, std::vector<index_t> shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f,
                   int token_axis = 1) {
  Field f{std::move(name), std::move(shape), token_axis, {}};
  f.data.resize(static_cast<std::size_t>(f.numel()));
  st::fill_uniform(TensorView<float, 1>(f.data.data(), {f.numel()}), seed, lo, hi);
  return f;
}
inline Field zero_field(std::string name, std::vector<index_t> shape, int token_axis = 1) {
  Field f{std::move(name), std::move(shape), token_axis, {}};
  f.data.assign(static_cast<std::size_t>(f.numel()), 0.f);
  return f;
}

using Fields = std::vector<Field>;
using Run = std::function<void(const Fields& in, Fields& out)>;

struct Op {
  std::string name;
  Fields inputs;        // token-indexed inputs are probed; token_axis -1 ones are parameters
  Fields outputs;       // zeroed templates
  Run reference;
  std::vector<std::pair<std::string, Run>> forms;
  std::vector<index_t> tokens;  // where to poke
};

inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0 || (std::isnan(a) && std::isnan(b)); }

// Runs `run`, reporting whether it refused the arguments with a ShapeError.
inline bool refused(const Run& run, const Fields& in, Fields& out) {
  try {
    run(in, out);
  } catch (const seqmix::ShapeError&) {
    return true;
  }
  return false;
}

// Compares one probed run against the clean runs; returns a description of the first violation.
// poked_owner: the sequence that got the poke (Field::kNoOwner: not a serving probe).
inline std::string violations(const Fields& clean, const Fields& bad, const Fields& ref_bad, index_t t, bool check_ref,
                       bool exact, index_t poked_owner = Field::kNoOwner) {
  std::ostringstream s;
  index_t count = 0;
  for (std::size_t f = 0; f < bad.size(); ++f) {
    const Field& b = bad[f];
    for (index_t i = 0; i < b.numel(); ++i) {
      const index_t tok = b.token_of(i);
      const float x = b.data[i], r = ref_bad[f].data[i];
      std::string why;
      const index_t owner = b.owner_of(i);
      if (poked_owner != Field::kNoOwner && owner != Field::kNoOwner && owner != poked_owner) {
        if (!same_bits(x, clean[f].data[i])) why = "another sequence's element changed";
      } else if (tok >= 0 && tok < t) {
        const float c = clean[f].data[i];
        if (exact ? !same_bits(x, c) : !(std::fabs(x - c) <= 1e-4f * (1.f + std::fabs(c))))
          why = "earlier token changed";
      } else if (!check_ref && std::isfinite(x) != std::isfinite(r)) {
        why = std::isfinite(x) ? "finite where the reference is not" : "non-finite where the reference is finite";
      }
      if (why.empty()) continue;
      if (count++ == 0)
        s << b.name << "[" << i << "] (token " << tok << "): " << why << ", got " << x << ", clean " << clean[f].data[i]
          << ", reference " << r;
    }
  }
  if (count) s << " (" << count << " elements)";
  return s.str();
}

// Returns the number of probed runs of fast forms (each checked against the reference).
inline index_t probe(const Op& op) {
  const float values[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
  Fields ref_clean = op.outputs;
  op.reference(op.inputs, ref_clean);
  std::vector<Fields> clean(op.forms.size(), op.outputs);
  for (std::size_t k = 0; k < op.forms.size(); ++k) op.forms[k].second(op.inputs, clean[k]);
  index_t probes = 0;
  for (std::size_t f = 0; f < op.inputs.size(); ++f) {
    const bool state = op.inputs[f].token_axis < 0;
    // A state poke counts as token 0: no earlier token to keep.
    const std::vector<index_t> at = state ? op.inputs[f].state_pokes : op.tokens;
    for (std::size_t n = 0; n < at.size(); ++n) {
      const index_t t = state ? 0 : at[n];
      for (float value : values) {
        Fields in = op.inputs;
        const index_t poked = state ? at[n] : in[f].poke_index(t);
        in[f].data[poked] = value;
        const index_t owner = in[f].owner_of(poked);
        std::ostringstream what;
        what << op.name << ": " << value << " in " << in[f].name;
        if (state) what << " element " << at[n];
        else what << " at token " << t;
        if (owner != Field::kNoOwner) what << " (sequence " << owner << ")";
        INFO(what.str());
        Fields ref_bad = op.outputs;
        const bool ref_refused = refused(op.reference, in, ref_bad);
        if (!ref_refused) {
          INFO("reference");
          CHECK(violations(ref_clean, ref_bad, ref_bad, t, true, in[f].exact, owner) == "");
        }
        for (std::size_t k = 0; k < op.forms.size(); ++k) {
          INFO(op.forms[k].first);
          Fields bad = op.outputs;
          const bool fast_refused = refused(op.forms[k].second, in, bad);
          CHECK(fast_refused == ref_refused);
          if (fast_refused || ref_refused) continue;
          CHECK(violations(clean[k], bad, ref_bad, t, false, in[f].exact, owner) == "");
          ++probes;
        }
      }
    }
  }
  CHECK(probes > 0);
  return probes;
}

inline constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

}  // namespace seqmix_nonfinite_probe
