#!/usr/bin/env bash
# Bundle verification benchmark: `drover-agent verify` of a .drover file with one SIZE payload,
# against `openssl dgst -sha256` of the same file, both from a warm page cache, best of RUNS.
# Prints wall time, throughput and peak RSS (/usr/bin/time -v) for each; see docs/BENCHMARKS.md.
#
#   agent/scripts/bench-verify.sh [DIR] [SIZE] [RUNS]     # defaults: /var/tmp/drover-bench-verify 1G 5
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-/var/tmp/drover-bench-verify}
size=${2:-1G}
runs=${3:-5}
target=${CARGO_TARGET_DIR:-target}

cargo build --profile agent -p drover-agent
cargo build --release -p drover-agent --example make-bundle
"$target/release/examples/make-bundle" --out "$dir" --size "$size" >/dev/null
bundle="$dir/bundle.drover"
bytes=$(stat -c %s "$bundle")
cat "$bundle" >/dev/null # warm the page cache: both tools read from memory

# measure NAME CMD...: best wall time of $runs runs, and the peak RSS of that run.
measure() {
  local name=$1 best_s="" best_rss=""
  shift
  for _ in $(seq "$runs"); do
    /usr/bin/time -v -o "$dir/time.txt" "$@" >/dev/null
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/time.txt" |
      awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
    if [ -z "$best_s" ] || awk -v a="$wall" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
      best_s=$wall
      best_rss=$rss
    fi
  done
  awk -v n="$name" -v s="$best_s" -v r="$best_rss" -v b="$bytes" \
    'BEGIN { printf "| %s | %.2f | %.0f | %.1f |\n", n, s, b / s / 1048576, r / 1024 }'
}

echo "file: $bundle ($bytes bytes), best of $runs runs"
echo "| command | wall s | MiB/s | peak RSS MiB |"
echo "|---|---:|---:|---:|"
measure "openssl dgst -sha256" openssl dgst -sha256 "$bundle"
measure "drover-agent verify --root-key" "$target/agent/drover-agent" verify --root-key "$dir/root.pub" "$bundle"
rm -f "$dir/time.txt"
