#!/usr/bin/env bash
# Build the API reference (Doxygen, from the public headers under include/seqmix/) into
# build/docs/html, installing doxygen first through scripts/install-deps.sh's `docs` component.
#
#   bash scripts/docs.sh                 # output in build/docs/html/index.html
#   SEQMIX_DOCS_DIR=/tmp/api bash scripts/docs.sh
#
# Fails on any doxygen warning (docs/Doxyfile sets WARN_AS_ERROR): an undocumented public
# function, class, member or option, or a broken reference in a comment; and on an undocumented
# enum value (docs/Doxyfile.enumvalues.awk over the XML output: doxygen 1.9.4 does not check them).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh docs

out=${SEQMIX_DOCS_DIR:-build/docs}
mkdir -p "$out"
rm -rf "$out/xml"  # doxygen never deletes the page of an entity that is gone
# docs/Doxyfile's paths are relative to the repository root (the current directory); only the
# output folder is set here.
# Both checks run, so one build lists every problem.
status=0
{
  cat docs/Doxyfile
  echo "OUTPUT_DIRECTORY = \"$out\""
} | doxygen - || status=1
awk -f docs/Doxyfile.enumvalues.awk "$out"/xml/*.xml || status=1
if [[ $status -ne 0 ]]; then
  echo "docs: failed (the problems are listed above)" >&2
  exit 1
fi
echo "docs: API reference in $out/html/index.html"
