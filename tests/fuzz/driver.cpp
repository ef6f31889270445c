// seqmix-fuzz-driver: the fuzz targets without libFuzzer (any compiler, e.g. the g++ CI builds).
//
//   seqmix-fuzz-driver [--seconds S] [--iterations N] [--seed X] [--target NAME]
//       random programs: byte strings of random length drawn from a PRNG seeded with X (default
//       1), fed to each target (or NAME only) in turn, for S seconds in all or N inputs per target
//   seqmix-fuzz-driver --replay DIR [--target NAME]
//       every file DIR/<target>/* (a corpus: libFuzzer's findings kept as regressions)
//   seqmix-fuzz-driver --seed X --target NAME --iteration I [--save FILE]
//       exactly input I of that run (to reproduce a failure), optionally written to FILE
//
// A failed check aborts after printing the target, seed and iteration (or the corpus file); the
// input is written to fuzz-failure-<target>.bin in the working directory.
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz.hpp"

namespace {

using Target = int (*)(const std::uint8_t*, std::size_t);
struct NamedTarget {
  const char* name;
  Target run;
};
const NamedTarget kTargets[] = {
    {"scan", seqmix::fuzz::fuzz_scan},
    {"ssm", seqmix::fuzz::fuzz_ssm},
    {"linear_attention", seqmix::fuzz::fuzz_linear_attention},
    {"attention", seqmix::fuzz::fuzz_attention},
    {"kv_cache", seqmix::fuzz::fuzz_kv_cache},
    {"npy", seqmix::fuzz::fuzz_npy},
    {"hybrid_serving", seqmix::fuzz::fuzz_hybrid_serving},
};

// What the failure hook reports: the input being run and where it came from.
const char* g_target = "";
std::string g_origin;
std::vector<std::uint8_t> g_input;

void on_failure(const char*) {
  std::fprintf(stderr, "seqmix-fuzz-driver: target %s, %s (%zu bytes)\n", g_target, g_origin.c_str(), g_input.size());
  const std::string path = std::string("fuzz-failure-") + g_target + ".bin";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(g_input.data()),
                                              static_cast<std::streamsize>(g_input.size()));
  std::fprintf(stderr, "seqmix-fuzz-driver: input written to %s\n", path.c_str());
}

void run(const NamedTarget& t, std::vector<std::uint8_t> input, std::string origin) {
  g_target = t.name;
  g_origin = std::move(origin);
  g_input = std::move(input);
  t.run(g_input.data(), g_input.size());
}

// Input `iteration` of a random run: its own PRNG stream, so any one input is reproducible alone.
std::vector<std::uint8_t> random_input(std::uint64_t seed, std::size_t target, std::uint64_t iteration) {
  seqmix::fuzz::Values prng(seed * 0x100000001b3ull + target * 0x9e3779b9ull + iteration);
  const std::size_t length = 8 + prng.next() % (prng.next() % 4 == 0 ? 2048 : 256);
  std::vector<std::uint8_t> bytes(length);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(prng.next() >> 56);
  return bytes;
}

// A crash outside the checks (a signal): say which input it was, then die as before.
extern "C" void on_signal(int sig) {
  std::fprintf(stderr, "seqmix-fuzz-driver: signal %d in target %s, %s\n", sig, g_target, g_origin.c_str());
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int usage() {
  std::fprintf(stderr,
               "usage: seqmix-fuzz-driver [--seconds S] [--iterations N] [--seed X] [--target NAME] "
               "[--iteration I [--save FILE]] [--replay DIR]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 0;
  long long iterations = -1, single = -1;
  std::uint64_t seed = 1;
  std::string only, replay, save;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return usage();
    const char* value = argv[++i];
    if (arg == "--seconds") seconds = std::atof(value);
    else if (arg == "--iterations") iterations = std::atoll(value);
    else if (arg == "--seed") seed = std::strtoull(value, nullptr, 10);
    else if (arg == "--target") only = value;
    else if (arg == "--iteration") single = std::atoll(value);
    else if (arg == "--save") save = value;
    else if (arg == "--replay") replay = value;
    else return usage();
  }
  seqmix::fuzz::failure_hook() = on_failure;
  std::signal(SIGSEGV, on_signal);
  std::signal(SIGBUS, on_signal);
  std::signal(SIGFPE, on_signal);
  std::vector<std::size_t> chosen;
  for (std::size_t t = 0; t < std::size(kTargets); ++t)
    if (only.empty() || only == kTargets[t].name) chosen.push_back(t);
  if (chosen.empty()) {
    std::fprintf(stderr, "seqmix-fuzz-driver: no target named '%s'\n", only.c_str());
    return 2;
  }

  if (!replay.empty()) {
    namespace fs = std::filesystem;
    long long files = 0;
    for (std::size_t t : chosen) {
      const fs::path dir = fs::path(replay) / kTargets[t].name;
      if (!fs::is_directory(dir)) continue;
      std::vector<fs::path> paths;
      for (const auto& entry : fs::directory_iterator(dir))
        if (entry.is_regular_file()) paths.push_back(entry.path());
      std::sort(paths.begin(), paths.end());
      for (const fs::path& p : paths) {
        std::ifstream f(p, std::ios::binary);
        std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        run(kTargets[t], std::move(bytes), "corpus file " + p.string());
        ++files;
      }
    }
    std::printf("seqmix-fuzz-driver: replayed %lld corpus files from %s, all checks passed\n", files, replay.c_str());
    return files > 0 ? 0 : 1;
  }

  if (single >= 0) {
    if (chosen.size() != 1) return usage();
    std::vector<std::uint8_t> bytes = random_input(seed, chosen[0], static_cast<std::uint64_t>(single));
    if (!save.empty())
      std::ofstream(save, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                  static_cast<std::streamsize>(bytes.size()));
    run(kTargets[chosen[0]], std::move(bytes), "seed " + std::to_string(seed) + " iteration " + std::to_string(single));
    std::printf("seqmix-fuzz-driver: %s iteration %lld passed\n", kTargets[chosen[0]].name, single);
    return 0;
  }

  if (iterations < 0 && seconds <= 0) seconds = 5;
  const auto start = std::chrono::steady_clock::now();
  const double per_target = seconds / static_cast<double>(chosen.size());
  for (std::size_t k = 0; k < chosen.size(); ++k) {
    const std::size_t t = chosen[k];
    long long done = 0;
    const auto target_start = std::chrono::steady_clock::now();
    for (std::uint64_t it = 0;; ++it) {
      if (iterations >= 0 && static_cast<long long>(it) >= iterations) break;
      if (iterations < 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - target_start).count() >= per_target)
        break;
      run(kTargets[t], random_input(seed, t, it), "seed " + std::to_string(seed) + " iteration " + std::to_string(it));
      ++done;
    }
    std::printf("seqmix-fuzz-driver: %-16s %8lld random programs (seed %llu), all checks passed\n", kTargets[t].name,
                done, static_cast<unsigned long long>(seed));
  }
  std::printf("seqmix-fuzz-driver: %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}
