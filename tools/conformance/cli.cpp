// seqmix-conformance's argument handling and exit codes; the work is done by run_all
// (runner.hpp). This is an ordinary .cpp compiled into the program, like the run_<family>.cpp
// files that register the ops.
#include "cli.hpp"

#include <exception>
#include <string>

#include "runner.hpp"

namespace seqmix::conformance {

namespace {

constexpr int kExitUsage = 2;

void print_usage(std::ostream& stream, const char* program) {
  stream << "usage: " << program << " <golden-dir> [--filter substring]\n"
         << "Runs the fast and the reference form of every registered op on the golden cases\n"
         << "<golden-dir>/<op>/<case>/case.json whose \"<op>/<case>\" contains the filter.\n"
         << "Exit status: 0 no failure, 1 a case failed, 2 usage error or no golden cases.\n";
}

}  // namespace

int cli_main(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  const char* program = argc > 0 && argv[0] ? argv[0] : "seqmix-conformance";
  std::string golden_dir, filter;
  bool have_dir = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      print_usage(out, program);
      return 0;
    }
    if (arg == "--filter") {
      if (i + 1 >= argc) {
        err << program << ": --filter needs a substring\n";
        print_usage(err, program);
        return kExitUsage;
      }
      filter = argv[++i];
    } else if (arg.rfind("--filter=", 0) == 0) {
      filter = arg.substr(9);
    } else if (!arg.empty() && arg[0] == '-') {
      err << program << ": unknown option '" << arg << "'\n";
      print_usage(err, program);
      return kExitUsage;
    } else if (have_dir) {
      err << program << ": more than one golden folder given ('" << golden_dir << "' and '" << arg << "')\n";
      print_usage(err, program);
      return kExitUsage;
    } else {
      golden_dir = arg;
      have_dir = true;
    }
  }
  if (!have_dir) {
    print_usage(err, program);
    return kExitUsage;
  }

  try {
    const Summary summary = run_all(golden_dir, filter, out);
    if (!filter.empty() && summary.cases.empty())
      err << program << ": note: no case matches the filter '" << filter << "'\n";
    for (const std::string& op : summary.ops_without_cases)
      err << program << ": note: op '" << op << "' is registered but has no folder in '" << golden_dir << "'\n";
    return summary.exit_status();
  } catch (const GoldenDirError& e) {
    err << program << ": " << e.what() << '\n';
    return kExitUsage;
  }
}

}  // namespace seqmix::conformance
