#!/usr/bin/env bash
# Build the API reference (Doxygen, from the public headers under include/seqmix/) into
# build/docs/html, installing doxygen first through scripts/install-deps.sh's `docs` component.
#
#   bash scripts/docs.sh                 # output in build/docs/html/index.html
#   SEQMIX_DOCS_DIR=/tmp/api bash scripts/docs.sh
#
# Fails on any doxygen warning (docs/Doxyfile sets WARN_AS_ERROR): an undocumented public
# function, class, member, enum value or option, or a broken reference in a comment.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

bash scripts/install-deps.sh docs

out=${SEQMIX_DOCS_DIR:-build/docs}
mkdir -p "$out"
# docs/Doxyfile's paths are relative to the repository root (the current directory); only the
# output folder is set here.
{
  cat docs/Doxyfile
  echo "OUTPUT_DIRECTORY = \"$out\""
} | doxygen -
echo "docs: API reference in $out/html/index.html"
