// The op registry of seqmix-conformance: each operator family registers a "fast" and a
// "reference" runner under its SPEC op name, and the runner (runner.hpp) calls them for every
// golden case of that op.
//
// Adding a family: create tools/conformance/run_<family>.cpp and register at namespace scope:
//
//   #include "registry.hpp"
//   #include "seqmix/ssm/ssd.hpp"
//   namespace {
//   using namespace seqmix::conformance;
//   OutputMap run_ssd(const CaseData& c, bool fast) {
//     auto x = c.in<4>("x", "B,T,H,P");               // required input, rank-checked
//     auto D = c.opt_in<1>("D", "H");                  // empty view when the case has no D
//     const bool softplus = c.param_bool("dt_softplus", false);
//     OutputMap out;
//     auto y = c.make_output<4>(out, "y");              // shaped like the reference output
//     auto state = c.make_output<4>(out, "final_state");
//     ... call the fast or the reference form, writing into y and state ...
//     return out;
//   }
//   const RegisterOp kSsd("ssd", [](const CaseData& c) { return run_ssd(c, true); },
//                                [](const CaseData& c) { return run_ssd(c, false); });
//   }  // namespace
//
// Why the registration object is enough: the run_*.cpp files are compiled directly into the
// seqmix-conformance executable (tests/CMakeLists.txt globs tools/conformance/*.cpp), so their
// objects are always linked and their static initializers always run. Should they ever move into
// a static library, the linker would drop objects nobody references and the registrations with
// them; then use an OBJECT library or --whole-archive instead. The registry itself is a
// function-local static, so registering from another file's static initializer is safe whatever
// the initialization order of the files.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "json.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/core/tensor.hpp"
#include "seqmix/io/npy.hpp"

namespace seqmix::conformance {

// A problem with a case itself (missing input, wrong parameter type, bad case.json), as opposed
// to a wrong result. Its message starts with the case id ("ssd/b1_t100_h2_p32_n16: ...").
class CaseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Produced outputs by name: flat, C order, with the element count of the reference output.
using OutputMap = std::map<std::string, std::vector<float>>;

struct CaseData;
using RunFn = std::function<OutputMap(const CaseData&)>;

// One golden case, loaded: parsed case.json plus every input and reference output array.
struct CaseData {
  std::string op;    // "op" from case.json (the SPEC name the runners are registered under)
  std::string name;  // the case folder name, e.g. "b2_t64_h4_p16_n32_full"
  std::string dir;   // the case folder path
  Json params = Json::empty_object();
  std::map<std::string, NpyArray> inputs;   // by input name ("x", "dt", ...)
  std::map<std::string, NpyArray> outputs;  // reference outputs by name ("y", "final_state")
  double tol = 0.0;

  std::string id() const { return op + "/" + name; }

  // --- inputs -------------------------------------------------------------------------------
  // nullptr when the case does not give this (optional) input.
  const NpyArray* input(const std::string& input_name) const {
    const auto it = inputs.find(input_name);
    return it == inputs.end() ? nullptr : &it->second;
  }
  const NpyArray& require_input(const std::string& input_name) const {
    if (const NpyArray* array = input(input_name)) return *array;
    throw CaseError(id() + ": required input '" + input_name + "' is missing from case.json \"inputs\"");
  }
  // A required float input as a rank-R view; `dims` ("B,T,H,P") is used in the rank error.
  template <std::size_t R>
  TensorView<const float, R> in(const std::string& input_name, const std::string& dims = "") const {
    return require_input(input_name).view_f32<R>(dims);
  }
  // An optional float input: an empty view (data() == nullptr) when the case does not give it.
  template <std::size_t R>
  TensorView<const float, R> opt_in(const std::string& input_name, const std::string& dims = "") const {
    const NpyArray* array = input(input_name);
    return array ? array->view_f32<R>(dims) : TensorView<const float, R>();
  }

  // --- reference outputs --------------------------------------------------------------------
  const NpyArray& expected(const std::string& output_name) const {
    const auto it = outputs.find(output_name);
    if (it == outputs.end())
      throw CaseError(id() + ": output '" + output_name + "' is not among the case's \"outputs\"");
    return it->second;
  }
  // Allocates out[output_name] with the reference output's shape and returns a view on it. The
  // buffer starts as NaN, so an element the op forgets to write makes the case fail.
  template <std::size_t R>
  TensorView<float, R> make_output(OutputMap& out, const std::string& output_name) const {
    const NpyArray& ref = expected(output_name);
    if (ref.rank() != R)
      throw CaseError(id() + ": output '" + output_name + "' requested as rank " + std::to_string(R) +
                      ", the reference has shape " + ref.shape_string());
    std::array<index_t, R> shape{};
    for (std::size_t d = 0; d < R; ++d) shape[d] = ref.shape[d];
    std::vector<float>& buffer = out[output_name];
    buffer.assign(static_cast<std::size_t>(ref.numel()), std::numeric_limits<float>::quiet_NaN());
    return TensorView<float, R>(buffer.data(), shape);
  }

  // --- params (absent -> the default, which callers take from SPEC) ------------------------
  const Json* param(const std::string& param_name) const { return params.find(param_name); }
  bool has_param(const std::string& param_name) const { return param(param_name) != nullptr; }

  bool param_bool(const std::string& param_name, bool fallback) const {
    const Json* p = param(param_name);
    if (!p) return fallback;
    if (!p->is_bool()) bad_param(param_name, "true or false", *p);
    return p->as_bool();
  }
  double param_double(const std::string& param_name, double fallback) const {
    const std::optional<double> value = param_opt_double(param_name);
    return value ? *value : fallback;
  }
  // For a parameter whose default depends on the shapes (e.g. scale = 1/sqrt(K)).
  std::optional<double> param_opt_double(const std::string& param_name) const {
    const Json* p = param(param_name);
    if (!p) return std::nullopt;
    if (!p->is_number()) bad_param(param_name, "a number", *p);
    return p->as_number();
  }
  index_t param_int(const std::string& param_name, index_t fallback) const {
    const Json* p = param(param_name);
    if (!p) return fallback;
    if (!p->is_number()) bad_param(param_name, "an integer", *p);
    const double value = p->as_number();
    // 2^53: beyond it doubles no longer hold every integer.
    if (value != std::floor(value) || std::fabs(value) > 9007199254740992.0) bad_param(param_name, "an integer", *p);
    return static_cast<index_t>(value);
  }
  std::string param_string(const std::string& param_name, const std::string& fallback) const {
    const Json* p = param(param_name);
    if (!p) return fallback;
    if (!p->is_string()) bad_param(param_name, "a string", *p);
    return p->as_string();
  }

 private:
  [[noreturn]] void bad_param(const std::string& param_name, const char* wanted, const Json& got) const {
    throw CaseError(id() + ": param '" + param_name + "' must be " + wanted + ", got " + got.dump());
  }
};

// The two forms of one op. Both are required: a case passes only when both match the reference
// outputs, and the fast form is always compared against the golden data, never against the
// reference form.
struct OpRunner {
  RunFn fast;
  RunFn reference;
};

class Registry {
 public:
  // Throws std::invalid_argument for an empty op name, a missing form, or a second registration
  // of the same op (two files claiming one op is a build mistake).
  void add(const std::string& op, OpRunner runner) {
    if (op.empty()) throw std::invalid_argument("seqmix-conformance: register_op: empty op name");
    if (!runner.fast || !runner.reference)
      throw std::invalid_argument("seqmix-conformance: register_op(\"" + op + "\"): both the fast and the " +
                                  "reference runner must be given");
    if (!runners_.emplace(op, std::move(runner)).second)
      throw std::invalid_argument("seqmix-conformance: op \"" + op + "\" is registered twice");
  }
  const OpRunner* find(const std::string& op) const {
    const auto it = runners_.find(op);
    return it == runners_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> ops() const {
    std::vector<std::string> names;
    for (const auto& entry : runners_) names.push_back(entry.first);
    return names;
  }
  std::size_t size() const noexcept { return runners_.size(); }

 private:
  std::map<std::string, OpRunner> runners_;
};

// The registry the seqmix-conformance program uses.
inline Registry& global_registry() {
  static Registry registry;
  return registry;
}

inline void register_op(const std::string& op, OpRunner runner) { global_registry().add(op, std::move(runner)); }

// Static registration: `const RegisterOp kName("op", fast, reference);` at namespace scope in a
// run_<family>.cpp. A registration error cannot be thrown out of a static initializer, so it is
// printed and the program stops before running any case.
struct RegisterOp {
  RegisterOp(const std::string& op, RunFn fast, RunFn reference) noexcept {
    try {
      register_op(op, OpRunner{std::move(fast), std::move(reference)});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      std::fflush(stderr);
      std::abort();
    }
  }
};

}  // namespace seqmix::conformance
