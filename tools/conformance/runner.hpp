// The core of seqmix-conformance: find the golden cases, load them, run both forms of each op
// and apply SPEC section 7's rule to every output. Header-only so that tests can include it
// (tests/test_conformance_runner.cpp) without linking the program.
//
// Output, one line per case (in sorted <op>/<case> order), then the summary line:
//   PASS  ssd/b2_t64_h4_p16_n32_full  fast err 3.1e-07 ref err 2.0e-07 (tol 1e-04)
//   FAIL  ssd/b1_t100_h2_p32_n16  fast err 3.0e-02 in 'y' at [0, 17, 1, 3] (out 0.51 ref 0.48);
//         ref err 2.0e-07 (tol 1e-04)                                   <- one line in the output
//   FAIL  attention/decode_tk1000_sinks  fast threw: seqmix::attention: argument 'q' ...;
//         ref err 1.1e-07 (tol 1e-04)                                   <- one line in the output
//   FAIL  rwkv6/b2_t17_h2_k64  case error: .../k.npy: truncated data: ...
//   NOT IMPLEMENTED rwkv7/b2_t64_h2_k32
//   3 passed, 2 failed, 1 not implemented
// "err" is max|out - ref| / max(1, max|ref|), the worst over the case's outputs; the case passes
// when that is within tol for every output, for the fast and for the reference form.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "json.hpp"
#include "registry.hpp"
#include "seqmix/io/npy.hpp"

namespace seqmix::conformance {

// The golden folder is missing or holds no case: a usage error (exit status 2), not a failure.
class GoldenDirError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "%.<digits>e", e.g. format_sci(3.1e-7, 1) == "3.1e-07".
inline std::string format_sci(double value, int digits) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*e", digits, value);
  return buf;
}

// A tolerance as short as it stays exact: 1e-04, 5e-03, 2.5e-04.
inline std::string format_tol(double tol) {
  for (int digits = 0; digits < 16; ++digits) {
    const std::string text = format_sci(tol, digits);
    if (std::strtod(text.c_str(), nullptr) == tol) return text;
  }
  return format_sci(tol, 16);
}

// Flat C-order index -> "[i0, i1, ...]" for the given shape.
inline std::string index_string(const std::vector<index_t>& shape, index_t flat) {
  std::vector<index_t> idx(shape.size(), 0);
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (shape[d] > 0) {
      idx[d] = flat % shape[d];
      flat /= shape[d];
    }
  }
  std::ostringstream out;
  out << '[';
  for (std::size_t d = 0; d < idx.size(); ++d) out << (d ? ", " : "") << idx[d];
  out << ']';
  return out.str();
}

// The rule of SPEC section 7 applied to one output.
struct OutputComparison {
  std::string output;
  bool ok = false;
  std::string problem;       // set when the values could not be compared (missing, size, NaN)
  double max_abs_err = 0.0;  // max |out - ref|
  double max_abs_ref = 0.0;  // max |ref| over finite reference values
  double err = 0.0;          // max_abs_err / max(1, max_abs_ref), what gets printed
  index_t worst_index = -1;  // flat index of max_abs_err
  double worst_out = 0.0, worst_ref = 0.0;
};

// `out` may be nullptr (the runner did not produce this output).
inline OutputComparison compare_output(const std::string& output_name, const NpyArray& ref,
                                       const std::vector<float>* out, double tol) {
  OutputComparison c;
  c.output = output_name;
  const auto n = static_cast<std::size_t>(ref.numel());
  auto ref_at = [&](std::size_t i) -> double {
    return ref.is_int32() ? static_cast<double>(ref.i32[i]) : static_cast<double>(ref.f32[i]);
  };
  if (out == nullptr) {
    c.problem = "output '" + output_name + "' missing";
    return c;
  }
  if (out->size() != n) {
    c.problem = "output '" + output_name + "' has " + std::to_string(out->size()) + " elements, expected " +
                std::to_string(n) + " (shape " + ref.shape_string() + ")";
    return c;
  }
  std::size_t nan_count = 0, first_nan = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double o = (*out)[i], r = ref_at(i);
    if (std::isnan(o)) {
      if (nan_count++ == 0) first_nan = i;
      continue;
    }
    if (std::isfinite(r)) c.max_abs_ref = std::max(c.max_abs_ref, std::fabs(r));
    // Equal values (including equal infinities) differ by 0; a NaN reference matches nothing.
    const double diff = o == r ? 0.0 : std::isnan(r) ? std::numeric_limits<double>::infinity() : std::fabs(o - r);
    if (c.worst_index < 0 || diff > c.max_abs_err) {
      c.max_abs_err = diff;
      c.worst_index = static_cast<index_t>(i);
      c.worst_out = o;
      c.worst_ref = r;
    }
  }
  if (nan_count > 0) {
    c.problem = "output '" + output_name + "' contains NaN (" + std::to_string(nan_count) + " of " + std::to_string(n) +
                " elements, first at " + index_string(ref.shape, static_cast<index_t>(first_nan)) + ")";
    return c;
  }
  const double bound = std::max(1.0, c.max_abs_ref);
  c.err = c.max_abs_err / bound;
  c.ok = c.max_abs_err <= tol * bound;
  return c;
}

// The verdict on one form (fast or reference) over all of a case's outputs.
struct FormResult {
  bool ok = false;
  double err = 0.0;          // worst normalized error over the outputs that could be compared
  std::string worst_output;  // the output that decided a failure (or had the worst error)
  std::string text;          // "fast err 3.1e-07" or the reason for the failure
};

inline FormResult check_outputs(const char* form, const CaseData& data, const OutputMap& produced) {
  FormResult result;
  result.ok = true;
  const OutputComparison* worst = nullptr;
  std::vector<OutputComparison> comparisons;
  comparisons.reserve(data.outputs.size());
  for (const auto& [output_name, ref] : data.outputs) {
    const auto it = produced.find(output_name);
    comparisons.push_back(compare_output(output_name, ref, it == produced.end() ? nullptr : &it->second, data.tol));
  }
  // A comparison problem beats a tolerance failure beats a pass; among equals, the larger err.
  auto rank = [](const OutputComparison& c) { return !c.problem.empty() ? 2 : !c.ok ? 1 : 0; };
  for (const OutputComparison& c : comparisons) {
    if (!c.ok) result.ok = false;
    if (c.problem.empty()) result.err = std::max(result.err, c.err);
    if (!worst || rank(c) > rank(*worst) || (rank(c) == rank(*worst) && c.err > worst->err)) worst = &c;
  }
  if (worst) result.worst_output = worst->output;
  if (worst && !worst->problem.empty()) {
    const auto failing =
        std::count_if(comparisons.begin(), comparisons.end(), [](const OutputComparison& c) { return !c.ok; });
    result.text = std::string(form) + ": " + worst->problem;
    if (failing > 1) result.text += " (and " + std::to_string(failing - 1) + " more failing output(s))";
  } else if (worst && !worst->ok) {
    const NpyArray& ref = data.outputs.at(worst->output);
    std::ostringstream text;
    text << form << " err " << format_sci(worst->err, 1) << " in '" << worst->output << "' at "
         << index_string(ref.shape, worst->worst_index) << " (out " << worst->worst_out << " ref " << worst->worst_ref
         << ")";
    result.text = text.str();
  } else {
    result.text = std::string(form) + " err " + format_sci(result.err, 1);
  }
  return result;
}

// Runs one form; an exception (seqmix::ShapeError, NpyError, CaseError, ...) is a failure.
inline FormResult run_form(const char* form, const RunFn& fn, const CaseData& data) {
  try {
    return check_outputs(form, data, fn(data));
  } catch (const std::exception& e) {
    FormResult result;
    result.text = std::string(form) + " threw: " + e.what();
    return result;
  } catch (...) {
    FormResult result;
    result.text = std::string(form) + " threw an exception that is not a std::exception";
    return result;
  }
}

// Where one case lives: <golden>/<op_folder>/<case_folder>/case.json.
struct CaseLocation {
  std::string op_folder;
  std::string case_folder;
  std::string dir;
  std::string id() const { return op_folder + "/" + case_folder; }
};

// All cases under the golden folder, sorted by op folder, then case folder. Folders without a
// case.json (and names starting with '.') are skipped.
inline std::vector<CaseLocation> find_cases(const std::string& golden_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(golden_dir, ec))
    throw GoldenDirError("golden folder '" + golden_dir + "' does not exist or is not a folder");
  auto sorted_subfolders = [&](const fs::path& parent) {
    std::vector<std::string> names;
    std::error_code list_ec;
    for (fs::directory_iterator it(parent, list_ec), end; !list_ec && it != end; it.increment(list_ec)) {
      std::error_code type_ec;
      const std::string name = it->path().filename().string();
      if (!name.empty() && name[0] != '.' && it->is_directory(type_ec)) names.push_back(name);
    }
    if (list_ec) throw GoldenDirError("cannot list folder '" + parent.string() + "': " + list_ec.message());
    std::sort(names.begin(), names.end());
    return names;
  };
  std::vector<CaseLocation> cases;
  for (const std::string& op : sorted_subfolders(golden_dir)) {
    const fs::path op_dir = fs::path(golden_dir) / op;
    for (const std::string& name : sorted_subfolders(op_dir)) {
      const fs::path case_dir = op_dir / name;
      std::error_code file_ec;
      if (fs::is_regular_file(case_dir / "case.json", file_ec)) cases.push_back({op, name, case_dir.string()});
    }
  }
  return cases;
}

// Parses case.json and loads every input and output array. Throws CaseError, JsonError or
// NpyError, with a message that names the case or the file.
inline CaseData load_case(const CaseLocation& where) {
  namespace fs = std::filesystem;
  const std::string json_path = (fs::path(where.dir) / "case.json").string();
  const Json doc = Json::parse_file(json_path);
  auto fail = [&](const std::string& problem) -> CaseError { return CaseError(json_path + ": " + problem); };
  if (!doc.is_object()) throw fail(std::string("expected a JSON object, got ") + doc.type_name());

  CaseData data;
  data.name = where.case_folder;
  data.dir = where.dir;
  const Json* op = doc.find("op");
  if (!op || !op->is_string()) throw fail("\"op\" must be a string");
  data.op = op->as_string();
  if (data.op != where.op_folder)
    throw fail("\"op\" is \"" + data.op + "\" but the case is in folder '" + where.op_folder + "'");

  if (const Json* params = doc.find("params"); params && !params->is_null()) {
    if (!params->is_object()) throw fail(std::string("\"params\" must be an object, got ") + params->type_name());
    data.params = *params;
  }

  const Json* tol = doc.find("tol");
  if (!tol || !tol->is_number() || !(tol->as_number() > 0) || !std::isfinite(tol->as_number()))
    throw fail("\"tol\" must be a positive number");
  data.tol = tol->as_number();

  auto load_arrays = [&](const char* key, std::map<std::string, NpyArray>& into, bool required) {
    const Json* files = doc.find(key);
    if (!files) {
      if (required) throw fail(std::string("missing \"") + key + "\"");
      return;
    }
    if (!files->is_object()) throw fail(std::string("\"") + key + "\" must be an object of file names");
    for (std::size_t i = 0; i < files->size(); ++i) {
      const std::string& array_name = files->keys()[i];
      const Json& file = files->items()[i];
      if (!file.is_string()) throw fail(std::string("\"") + key + "\"." + array_name + " must be a file name string");
      const fs::path path = fs::path(where.dir) / file.as_string();
      into.emplace(array_name, read_npy(path.string(), NpyF64::narrow_to_f32));
    }
  };
  load_arrays("inputs", data.inputs, true);
  load_arrays("outputs", data.outputs, true);
  if (data.outputs.empty()) throw fail("\"outputs\" is empty: nothing to compare");
  return data;
}

enum class CaseStatus { passed, failed, not_implemented };

struct CaseResult {
  std::string id;
  CaseStatus status = CaseStatus::failed;
  std::string line;  // the printed line, without newline
};

inline CaseResult run_case(const CaseLocation& where, const Registry& registry) {
  CaseResult result;
  result.id = where.id();
  CaseData data;
  try {
    data = load_case(where);
  } catch (const std::exception& e) {
    result.line = "FAIL  " + result.id + "  case error: " + e.what();
    return result;
  }
  const OpRunner* runner = registry.find(data.op);
  if (!runner) {
    result.status = CaseStatus::not_implemented;
    result.line = "NOT IMPLEMENTED " + result.id;
    return result;
  }
  const FormResult fast = run_form("fast", runner->fast, data);
  const FormResult ref = run_form("ref", runner->reference, data);
  const bool ok = fast.ok && ref.ok;
  result.status = ok ? CaseStatus::passed : CaseStatus::failed;
  result.line = std::string(ok ? "PASS  " : "FAIL  ") + result.id + "  " + fast.text + (ok ? " " : "; ") + ref.text +
                " (tol " + format_tol(data.tol) + ")";
  return result;
}

struct Summary {
  int passed = 0;
  int failed = 0;
  int not_implemented = 0;
  std::vector<CaseResult> cases;               // the cases that matched the filter, in order
  std::vector<std::string> ops_without_cases;  // registered ops with no folder in the golden dir

  // "N passed, M failed" plus ", K not implemented" when K > 0.
  std::string line() const {
    std::string text = std::to_string(passed) + " passed, " + std::to_string(failed) + " failed";
    if (not_implemented > 0) text += ", " + std::to_string(not_implemented) + " not implemented";
    return text;
  }
  int exit_status() const { return failed > 0 ? 1 : 0; }
};

// Runs every case whose "<op>/<case>" contains `filter` (all when empty), printing one line per
// case and the summary line to `out`. Throws GoldenDirError when the folder is missing or holds
// no case at all.
inline Summary run_all(const std::string& golden_dir, const std::string& filter, std::ostream& out,
                       const Registry& registry = global_registry()) {
  const std::vector<CaseLocation> all = find_cases(golden_dir);
  if (all.empty()) throw GoldenDirError("no case found under '" + golden_dir + "' (expected <op>/<case>/case.json)");
  Summary summary;
  for (const std::string& op : registry.ops()) {
    const bool has_case = std::any_of(all.begin(), all.end(), [&](const CaseLocation& c) { return c.op_folder == op; });
    if (!has_case) summary.ops_without_cases.push_back(op);
  }
  for (const CaseLocation& where : all) {
    if (!filter.empty() && where.id().find(filter) == std::string::npos) continue;
    CaseResult result = run_case(where, registry);
    out << result.line << '\n' << std::flush;
    switch (result.status) {
      case CaseStatus::passed:
        ++summary.passed;
        break;
      case CaseStatus::failed:
        ++summary.failed;
        break;
      case CaseStatus::not_implemented:
        ++summary.not_implemented;
        break;
    }
    summary.cases.push_back(std::move(result));
  }
  out << summary.line() << '\n' << std::flush;
  return summary;
}

}  // namespace seqmix::conformance
