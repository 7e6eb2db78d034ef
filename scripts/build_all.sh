#!/usr/bin/env bash
# Build a wheel and an sdist of every package under packages/ into one directory (default: dist/).
#
#   scripts/build_all.sh [OUT_DIR]
#
# Each package is built from its own directory with `hatch build` (hatchling backend, version from the
# package's __about__.py), so every distribution keeps its own name and version. Old wheels and sdists in
# OUT_DIR are removed first. Fails unless every package produced exactly one wheel and one sdist.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
rm -f "$out"/*.whl "$out"/*.tar.gz

packages=()
for pyproject in "$root"/packages/*/pyproject.toml; do
  packages+=("$(dirname "$pyproject")")
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for pkg in "${packages[@]}"; do
  echo "building $(basename "$pkg")"
  if ! (cd "$pkg" && hatch build -t wheel -t sdist "$out") >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
done

status=0
for pkg in "${packages[@]}"; do
  name="$(cd "$pkg" && hatch project metadata name 2>/dev/null)"
  stem="$(echo "$name" | tr '-' '_')"
  wheels=$(find "$out" -maxdepth 1 -name "${stem}-*-py3-none-any.whl" | wc -l)
  sdists=$(find "$out" -maxdepth 1 -name "${stem}-*.tar.gz" | wc -l)
  if [ "$wheels" -ne 1 ] || [ "$sdists" -ne 1 ]; then
    echo "error: $name: $wheels wheel(s) and $sdists sdist(s) in $out, expected one of each" >&2
    status=1
  fi
done
ls -1 "$out"
exit $status
