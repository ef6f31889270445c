#!/usr/bin/env bash
# Install seqmix's build dependencies from Debian's apt repositories.
#
#   bash scripts/install-deps.sh            # the build dependencies
#   bash scripts/install-deps.sh docs       # ... and doxygen, for the API reference (scripts/docs.sh)
#   bash scripts/install-deps.sh report     # ... and python3-matplotlib, for scripts/bench_report.sh
#   bash scripts/install-deps.sh fuzz       # ... and clang (libFuzzer), for scripts/fuzz.sh
#   bash scripts/install-deps.sh clang      # ... and clang, the second compiler (CI's sanitizer build)
#   bash scripts/install-deps.sh mpi        # ... and Open MPI, for seqmix::mpi (context parallelism)
#
# Optional components are opt-in so that CI and users who never build the API reference do not
# download doxygen.
#
# Idempotent: when every package is already installed it changes nothing and needs no network.
# Runs apt-get as root, through sudo when not root. On a system without dpkg (not Debian or
# Ubuntu) it only prints what to install and leaves the rest to CMake's error messages.
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libxsimd-dev catch2 libbenchmark-dev)

for component in "$@"; do
  case "$component" in
    docs) packages+=(doxygen) ;;
    fuzz) packages+=(clang) ;;  # libFuzzer and its sanitizer runtimes, for scripts/fuzz.sh
    clang) packages+=(clang) ;;
    report) packages+=(python3 python3-matplotlib) ;;
    mpi) packages+=(openmpi-bin libopenmpi-dev) ;;  # mpirun and mpi.h, for include/seqmix/mpi/
    *)
      echo "install-deps: unknown component '$component' (known: docs, report, fuzz, clang, mpi)" >&2
      exit 2
      ;;
  esac
done

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: no dpkg on this system; install the equivalents of: ${packages[*]}" >&2
  exit 0
fi

missing=()
for package in "${packages[@]}"; do
  # db:Status-Status is "installed" only for a fully installed package (not for one removed
  # with its configuration files left behind, which `dpkg -s` still reports with status 0).
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$package")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all dependencies present (${packages[*]})"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
  echo "install-deps: missing ${missing[*]}; run this script as root or install sudo" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
# apt-get update can fail on a transient mirror error; try a few times before giving up.
for attempt in 1 2 3; do
  if "${as_root[@]}" apt-get update -q; then
    break
  fi
  if [[ $attempt -eq 3 ]]; then
    echo "install-deps: apt-get update failed three times" >&2
    exit 1
  fi
  sleep 5
done
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
echo "install-deps: done"
