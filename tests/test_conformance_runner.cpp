// Tests of the seqmix-conformance machinery: the JSON reader, SPEC section 7's comparison rule,
// and run_all on a scratch golden folder with fake ops (passing, failing, throwing,
// not implemented, broken case).
#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../tools/conformance/json.hpp"
#include "../tools/conformance/registry.hpp"
#include "../tools/conformance/runner.hpp"
#include "seqmix/core/error.hpp"
#include "seqmix/io/npy.hpp"

namespace {

namespace fs = std::filesystem;
namespace sc = seqmix::conformance;
using sc::Json;
using sc::JsonError;
using seqmix::index_t;

class ScratchGolden {
 public:
  ScratchGolden() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    root_ = fs::temp_directory_path() /
            ("seqmix_conformance_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
    fs::create_directories(root_);
  }
  ~ScratchGolden() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  ScratchGolden(const ScratchGolden&) = delete;
  ScratchGolden& operator=(const ScratchGolden&) = delete;

  std::string root() const { return root_.string(); }

  // Writes <root>/<op>/<name>/ with case.json, x.npy (input) and y.npy (expected output).
  std::string add_case(const std::string& op, const std::string& name, const std::vector<float>& x,
                       const std::vector<float>& y, const std::string& params = "{}", double tol = 1e-4) {
    const fs::path dir = root_ / op / name;
    fs::create_directories(dir);
    const index_t n = static_cast<index_t>(x.size());
    seqmix::write_npy((dir / "x.npy").string(), {2, n / 2}, x.data());
    seqmix::write_npy((dir / "y.npy").string(), {2, n / 2}, y.data());
    std::ofstream json(dir / "case.json");
    json << "{ \"op\": \"" << op << "\",\n  \"params\": " << params
         << ",\n  \"inputs\": { \"x\": \"x.npy\" },\n  \"outputs\": { \"y\": \"y.npy\" },\n  \"tol\": " << tol
         << ",\n  \"source\": \"test\" }\n";
    return dir.string();
  }

 private:
  fs::path root_;
};

// y = factor * x, the fake op's definition; `error` is added to element [1, 2] when given.
sc::OutputMap scale_op(const sc::CaseData& c, float error) {
  const auto x = c.in<2>("x", "R,C");
  sc::OutputMap out;
  auto y = c.make_output<2>(out, "y");
  const float factor = static_cast<float>(c.param_double("factor", 1.0));
  for (index_t i = 0; i < x.size(0); ++i)
    for (index_t j = 0; j < x.size(1); ++j) y(i, j) = factor * x(i, j);
  if (error != 0.0f) y(1, 2) += error;
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

TEST_CASE("json: parses a case.json", "[conformance][json]") {
  const Json doc = Json::parse(R"({ "op": "gated_delta_rule",
    "params": { "scale": 0.08838834764831845, "gate": "scalar", "causal": true, "window": 48, "none": null },
    "inputs":  { "q": "q.npy", "k": "k.npy" },
    "outputs": { "o": "o.npy" },
    "tol": 1e-4, "list": [1, -2.5, 3E+2, 0, -0.0, [], {}] })");
  REQUIRE(doc.is_object());
  CHECK(doc.at("op").as_string() == "gated_delta_rule");
  const Json& params = doc.at("params");
  CHECK(params.at("scale").as_number() == 0.08838834764831845);
  CHECK(params.at("gate").as_string() == "scalar");
  CHECK(params.at("causal").as_bool());
  CHECK(params.at("window").as_number() == 48);
  CHECK(params.at("none").is_null());
  CHECK(params.find("absent") == nullptr);
  CHECK(doc.at("inputs").keys() == std::vector<std::string>{"q", "k"});  // file order is kept
  CHECK(doc.at("tol").as_number() == 1e-4);
  const Json& list = doc.at("list");
  REQUIRE(list.size() == 7);
  CHECK(list.at(1).as_number() == -2.5);
  CHECK(list.at(2).as_number() == 300.0);
  CHECK(std::signbit(list.at(4).as_number()));
  CHECK(list.at(5).is_array());
  CHECK(list.at(6).is_object());
  CHECK_THROWS_AS(doc.at("op").as_number(), JsonError);
  CHECK_THROWS_WITH(doc.at("missing"), Catch::Contains("missing key \"missing\""));
}

TEST_CASE("json: string escapes and Python's non-finite numbers", "[conformance][json]") {
  const Json doc = Json::parse(R"(["a\"b\\c\/d\b\f\n\r\t", "\u00e9\u20ac", "\ud83d\ude00", "\u0000x"])");
  CHECK(doc.at(0).as_string() == "a\"b\\c/d\b\f\n\r\t");
  CHECK(doc.at(1).as_string() == "\xC3\xA9\xE2\x82\xAC");
  CHECK(doc.at(2).as_string() == "\xF0\x9F\x98\x80");
  CHECK(doc.at(3).as_string() == std::string("\0x", 2));

  const Json special = Json::parse("[NaN, Infinity, -Infinity, 1e400, -1e400, 1e-400]");
  CHECK(std::isnan(special.at(0).as_number()));
  CHECK(special.at(1).as_number() == std::numeric_limits<double>::infinity());
  CHECK(special.at(2).as_number() == -std::numeric_limits<double>::infinity());
  CHECK(special.at(3).as_number() == std::numeric_limits<double>::infinity());
  CHECK(special.at(4).as_number() == -std::numeric_limits<double>::infinity());
  CHECK(special.at(5).as_number() == 0.0);

  // dump() reads back to the same document.
  const Json again = Json::parse(doc.dump());
  CHECK(again.dump() == doc.dump());
}

TEST_CASE("json: malformed documents give line:column errors", "[conformance][json]") {
  struct Bad {
    const char* text;
    const char* says;
  };
  const std::vector<Bad> table = {
      {"", "empty document"},
      {"{\"a\": 1,}", "expected a string key"},
      {"{\"a\": 1 \"b\": 2}", "expected ',' or '}'"},
      {"[1, 2", "expected ',' or ']'"},
      {"{\"a\" 1}", "expected ':'"},
      {"\"abc", "unterminated string"},
      {"\"a\\qb\"", "invalid escape"},
      {"\"\\u12G4\"", "invalid hex digit"},
      {"\"\\ud83d\"", "low surrogate"},
      {"\"a\nb\"", "control character"},
      {"012", "leading zeros"},
      {"1.", "digits after the decimal point"},
      {"-", "expected digits"},
      {"tru", "expected a value"},
      {"{\"a\": 1, \"a\": 2}", "duplicate key \"a\""},
      {"{} {}", "unexpected text after"},
  };
  for (const Bad& bad : table) {
    INFO("document: " << bad.text);
    CHECK_THROWS_WITH(Json::parse(bad.text, "case.json"), Catch::Contains("case.json:") && Catch::Contains(bad.says));
  }
  CHECK_THROWS_WITH(Json::parse("{\n  \"op\": ,\n}", "c.json"), Catch::StartsWith("c.json:2:9:"));
  // Hostile nesting is an error, not a stack overflow.
  CHECK_THROWS_WITH(Json::parse(std::string(100000, '[')), Catch::Contains("nesting deeper"));
}

// ---------------------------------------------------------------------------------------------
// The comparison rule: max|out - ref| <= tol * max(1, max|ref|)
// ---------------------------------------------------------------------------------------------

TEST_CASE("conformance: the tolerance scales with max(1, max|ref|)", "[conformance]") {
  seqmix::NpyArray ref;
  ref.dtype = "<f4";
  ref.shape = {2, 2};
  ref.f32 = {10.0f, -2.0f, 0.5f, 0.0f};  // max|ref| = 10: bound 10 * tol
  const double tol = 1e-3;

  std::vector<float> out = ref.f32;
  out[3] = 0.0099f;  // |diff| 0.0099 <= 0.01
  auto c = sc::compare_output("y", ref, &out, tol);
  CHECK(c.ok);
  CHECK(c.problem.empty());
  CHECK(c.err == Approx(0.00099).epsilon(1e-4));

  out[3] = 0.0101f;  // beyond 0.01
  c = sc::compare_output("y", ref, &out, tol);
  CHECK_FALSE(c.ok);
  CHECK(c.worst_index == 3);

  // With max|ref| < 1 the bound is tol itself.
  ref.f32 = {0.5f, -0.25f, 0.0f, 0.0f};
  out = ref.f32;
  out[1] += 0.0009f;
  CHECK(sc::compare_output("y", ref, &out, tol).ok);
  out[1] += 0.0002f;
  CHECK_FALSE(sc::compare_output("y", ref, &out, tol).ok);

  // Missing output, wrong element count, NaN: failures with a reason.
  c = sc::compare_output("y", ref, nullptr, tol);
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.problem, Catch::Contains("'y' missing"));
  std::vector<float> short_out(3, 0.0f);
  c = sc::compare_output("y", ref, &short_out, tol);
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.problem, Catch::Contains("3 elements, expected 4"));
  out = ref.f32;
  out[2] = std::numeric_limits<float>::quiet_NaN();
  c = sc::compare_output("y", ref, &out, tol);
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.problem, Catch::Contains("NaN") && Catch::Contains("[1, 0]"));
  out[2] = std::numeric_limits<float>::infinity();
  CHECK_FALSE(sc::compare_output("y", ref, &out, tol).ok);
}

TEST_CASE("conformance: formatting helpers", "[conformance]") {
  CHECK(sc::format_tol(1e-4) == "1e-04");
  CHECK(sc::format_tol(0.005) == "5e-03");
  CHECK(sc::format_tol(2.5e-4) == "2.5e-04");
  CHECK(sc::format_sci(3.14e-7, 1) == "3.1e-07");
  CHECK(sc::index_string({2, 3, 4}, 23) == "[1, 2, 3]");
}

// ---------------------------------------------------------------------------------------------
// run_all on a scratch golden folder
// ---------------------------------------------------------------------------------------------

TEST_CASE("conformance: run_all reports pass, fail, not implemented and the summary", "[conformance]") {
  ScratchGolden golden;
  const std::vector<float> x = {1, 2, 3, -4, 5, 6};
  const std::vector<float> y = {2, 4, 6, -8, 10, 12};  // factor 2
  golden.add_case("fake_scale", "b2_ok", x, y, R"({ "factor": 2.0 })");
  golden.add_case("fake_scale", "b2_wrong_reference", x, x, R"({ "factor": 2.0 })");
  golden.add_case("fake_fast_off", "b2_off_by_0.05", x, y, R"({ "factor": 2.0 })");
  golden.add_case("fake_throws", "b2_shape_error", x, y, R"({ "factor": 2.0 })");
  golden.add_case("fake_unregistered", "b2_anything", x, y);
  const std::string broken = golden.add_case("fake_scale", "b2_truncated_input", x, y, R"({ "factor": 2.0 })");
  fs::resize_file(fs::path(broken) / "x.npy", 128 + 12);  // header + 3 of 6 floats

  sc::Registry registry;
  registry.add("fake_scale", {[](const sc::CaseData& c) { return scale_op(c, 0.0f); },
                              [](const sc::CaseData& c) { return scale_op(c, 0.0f); }});
  registry.add("fake_fast_off", {[](const sc::CaseData& c) { return scale_op(c, 0.05f); },
                                 [](const sc::CaseData& c) { return scale_op(c, 0.0f); }});
  registry.add("fake_throws", {[](const sc::CaseData&) -> sc::OutputMap {
                                 throw seqmix::ShapeError("fake_throws", "x", "must have shape [2, 3], got [3, 2]");
                               },
                               [](const sc::CaseData& c) { return scale_op(c, 0.0f); }});
  registry.add("fake_no_cases", {[](const sc::CaseData& c) { return scale_op(c, 0.0f); },
                                 [](const sc::CaseData& c) { return scale_op(c, 0.0f); }});

  std::ostringstream out;
  const sc::Summary summary = sc::run_all(golden.root(), "", out, registry);
  INFO(out.str());
  CHECK(summary.passed == 1);
  CHECK(summary.failed == 4);
  CHECK(summary.not_implemented == 1);
  CHECK(summary.line() == "1 passed, 4 failed, 1 not implemented");
  CHECK(summary.exit_status() == 1);
  CHECK(summary.ops_without_cases == std::vector<std::string>{"fake_no_cases"});

  std::vector<std::string> lines;
  std::istringstream in(out.str());
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 7);
  // Sorted by op folder, then case folder.
  // |diff| 0.05 at [1, 2], max|ref| 12: err 0.05 / 12.
  CHECK_THAT(lines[0], Catch::StartsWith("FAIL  fake_fast_off/b2_off_by_0.05  fast err 4.2e-03 in 'y' at [1, 2] "
                                         "(out 12.05 ref 12)"));
  CHECK_THAT(lines[0], Catch::Contains("; ref err 0.0e+00 (tol 1e-04)"));
  CHECK(lines[1] == "PASS  fake_scale/b2_ok  fast err 0.0e+00 ref err 0.0e+00 (tol 1e-04)");
  CHECK_THAT(lines[2],
             Catch::StartsWith("FAIL  fake_scale/b2_truncated_input  case error: ") &&
                 Catch::Contains("x.npy: truncated data: shape [2, 3] of '<f4' needs 24 bytes, the file has 12"));
  // The reference output is x, not 2x: both forms fail, worst at [1, 2] (12 vs 6, max|ref| 6).
  CHECK(lines[3] ==
        "FAIL  fake_scale/b2_wrong_reference  fast err 1.0e+00 in 'y' at [1, 2] (out 12 ref 6); "
        "ref err 1.0e+00 in 'y' at [1, 2] (out 12 ref 6) (tol 1e-04)");
  CHECK_THAT(lines[4],
             Catch::StartsWith("FAIL  fake_throws/b2_shape_error  fast threw: seqmix::fake_throws: "
                               "argument 'x' must have shape [2, 3], got [3, 2]; ref err 0.0e+00 (tol 1e-04)"));
  CHECK(lines[5] == "NOT IMPLEMENTED fake_unregistered/b2_anything");
  CHECK(lines[6] == "1 passed, 4 failed, 1 not implemented");

  SECTION("the filter selects by <op>/<case> substring") {
    std::ostringstream filtered;
    const sc::Summary only = sc::run_all(golden.root(), "scale/b2_ok", filtered, registry);
    CHECK(only.cases.size() == 1);
    CHECK(filtered.str() ==
          "PASS  fake_scale/b2_ok  fast err 0.0e+00 ref err 0.0e+00 (tol 1e-04)\n1 passed, 0 failed\n");
    CHECK(only.exit_status() == 0);
  }
  SECTION("a summary without not-implemented cases omits that part") {
    std::ostringstream none;
    const sc::Summary nothing = sc::run_all(golden.root(), "no such case", none, registry);
    CHECK(none.str() == "0 passed, 0 failed\n");
    CHECK(nothing.exit_status() == 0);
  }
  SECTION("not implemented alone is not a failure") {
    std::ostringstream ni;
    const sc::Summary s = sc::run_all(golden.root(), "fake_unregistered", ni, registry);
    CHECK(s.line() == "0 passed, 0 failed, 1 not implemented");
    CHECK(s.exit_status() == 0);
  }
}

TEST_CASE("conformance: missing outputs, NaN outputs and bad params fail the case", "[conformance]") {
  ScratchGolden golden;
  const std::vector<float> x = {1, 2, 3, 4};
  golden.add_case("fake_partial", "c1", x, x);
  golden.add_case("fake_unwritten", "c1", x, x);
  golden.add_case("fake_param_type", "c1", x, x, R"({ "factor": "two" })");

  sc::Registry registry;
  const sc::RunFn identity = [](const sc::CaseData& c) { return scale_op(c, 0.0f); };
  registry.add("fake_partial", {[](const sc::CaseData&) { return sc::OutputMap{{"z", {1.0f}}}; }, identity});
  // make_output fills with NaN, so an element the op never writes is caught.
  registry.add("fake_unwritten", {[](const sc::CaseData& c) {
                                    sc::OutputMap out;
                                    auto y = c.make_output<2>(out, "y");
                                    y(0, 0) = 1.0f;
                                    return out;
                                  },
                                  identity});
  registry.add("fake_param_type", {identity, identity});

  std::ostringstream out;
  const sc::Summary summary = sc::run_all(golden.root(), "", out, registry);
  INFO(out.str());
  CHECK(summary.line() == "0 passed, 3 failed");
  REQUIRE(summary.cases.size() == 3);
  CHECK_THAT(summary.cases[0].line, Catch::Contains("fake_param_type/c1  fast threw: fake_param_type/c1: param "
                                                    "'factor' must be a number, got \"two\""));
  CHECK_THAT(summary.cases[1].line, Catch::Contains("fast: output 'y' missing; ref err 0.0e+00"));
  CHECK_THAT(summary.cases[2].line,
             Catch::Contains("fast: output 'y' contains NaN (3 of 4 elements, first at [0, 1])"));
}

TEST_CASE("conformance: case.json problems are reported as case errors", "[conformance]") {
  ScratchGolden golden;
  const std::vector<float> x = {1, 2};
  const std::string dir = golden.add_case("fake_op", "wrong_folder", x, x);
  std::ofstream(fs::path(dir) / "case.json")
      << R"({ "op": "other_op", "inputs": {}, "outputs": { "y": "y.npy" }, "tol": 1e-4 })";
  const std::string dir2 = golden.add_case("fake_op", "bad_json", x, x);
  std::ofstream(fs::path(dir2) / "case.json") << "{ \"op\": \"fake_op\", ";
  const std::string dir3 = golden.add_case("fake_op", "no_tol", x, x);
  std::ofstream(fs::path(dir3) / "case.json") << R"({ "op": "fake_op", "inputs": {}, "outputs": { "y": "y.npy" } })";

  sc::Registry registry;
  std::ostringstream out;
  const sc::Summary summary = sc::run_all(golden.root(), "", out, registry);
  INFO(out.str());
  CHECK(summary.line() == "0 passed, 3 failed");
  REQUIRE(summary.cases.size() == 3);
  CHECK_THAT(summary.cases[0].line,
             Catch::Contains("fake_op/bad_json  case error: ") && Catch::Contains("case.json:1:"));
  CHECK_THAT(summary.cases[1].line, Catch::Contains("\"tol\" must be a positive number"));
  CHECK_THAT(summary.cases[2].line, Catch::Contains("\"op\" is \"other_op\" but the case is in folder 'fake_op'"));
}

TEST_CASE("conformance: a missing or empty golden folder is a GoldenDirError", "[conformance]") {
  ScratchGolden golden;
  std::ostringstream out;
  CHECK_THROWS_AS(sc::run_all(golden.root() + "/absent", "", out, sc::Registry{}), sc::GoldenDirError);
  CHECK_THROWS_WITH(sc::run_all(golden.root(), "", out, sc::Registry{}), Catch::Contains("no case found"));
}

TEST_CASE("conformance: registration rules", "[conformance]") {
  sc::Registry registry;
  const sc::RunFn identity = [](const sc::CaseData& c) { return scale_op(c, 0.0f); };
  registry.add("op_a", {identity, identity});
  CHECK_THROWS_WITH(registry.add("op_a", {identity, identity}), Catch::Contains("registered twice"));
  CHECK_THROWS_WITH(registry.add("op_b", {identity, nullptr}), Catch::Contains("both the fast and the reference"));
  CHECK(registry.find("op_a") != nullptr);
  CHECK(registry.find("op_b") == nullptr);

  // The static-registration helper fills the global registry.
  static const sc::RegisterOp registered("test_only_registered_op", identity, identity);
  CHECK(sc::global_registry().find("test_only_registered_op") != nullptr);
}

TEST_CASE("conformance: CaseData parameter helpers", "[conformance]") {
  sc::CaseData c;
  c.op = "fake";
  c.name = "case";
  c.params = Json::parse(R"({ "causal": true, "window": 48, "scale": 0.125, "gate": "scalar", "half": 2.5 })");
  CHECK(c.param_bool("causal", false));
  CHECK_FALSE(c.param_bool("absent", false));
  CHECK(c.param_int("window", 0) == 48);
  CHECK(c.param_int("absent", -1) == -1);
  CHECK(c.param_double("scale", 1.0) == 0.125);
  CHECK_FALSE(c.param_opt_double("absent").has_value());
  CHECK(c.param_string("gate", "channel") == "scalar");
  CHECK_THROWS_WITH(c.param_int("half", 0), Catch::Contains("fake/case: param 'half' must be an integer, got 2.5"));
  CHECK_THROWS_WITH(c.param_bool("window", false), Catch::Contains("param 'window' must be true or false"));
  CHECK_THROWS_AS(c.require_input("x"), sc::CaseError);
  CHECK(c.input("x") == nullptr);
  CHECK(c.opt_in<2>("x").data() == nullptr);
}
