#!/bin/sh
# Fleet metrics at 100,000 devices (docs/BENCHMARKS.md, "Fleet metrics"):
# migrates a fresh SQLite store with the release server, seeds it once with
# fleet-metrics-seed.sql (about 3 minutes, 2.3 GB), starts the server and
# times GET /api/v1/fleet/metrics from outside with curl, N requests per case
# after one warm-up, one at a time. Prints a Markdown table: p50, p95 and max
# in milliseconds. Needs sqlite3, curl and python3.
#
#   cargo build --release -p drover-server
#   tests/bench/scripts/fleet-metrics.sh [DATA_DIR]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../../../target/release/drover}
DIR=${1:-/var/tmp/drover-bench-fleet-metrics}
N=${N:-30}
if [ ! -f "$DIR/seeded" ]; then
  rm -rf "$DIR"; mkdir -p "$DIR"
  DROVER_DATA_DIR="$DIR" "$BIN" migrate > /dev/null
  start=$(date +%s)
  sqlite3 "$DIR/drover.db" < "$HERE/fleet-metrics-seed.sql" | grep -v '^wal$'  # the journal_mode answer
  echo "seeded in $(( $(date +%s) - start )) s"
  touch "$DIR/seeded"
fi
rm -f "$DIR/ports.json"
DROVER_DATA_DIR="$DIR" DROVER_HTTP_LISTEN=127.0.0.1:0 DROVER_DEVICE_LISTEN=127.0.0.1:0 DROVER_MQTT_LISTEN=127.0.0.1:0 \
  DROVER_LOG=warn "$BIN" serve > "$DIR/stdout.log" 2> "$DIR/stderr.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
while [ ! -s "$DIR/ports.json" ]; do sleep 0.2; done
HTTP=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['http'])" "$DIR/ports.json")
# The first start prints the admin's one-time password; keep it for later runs.
PASS=$(sed -n 's/.*one-time password: *\([^ ]*\).*/\1/p' "$DIR/stdout.log" | head -1)
if [ -n "$PASS" ]; then echo "$PASS" > "$DIR/admin-password"; fi
PASS=$(cat "$DIR/admin-password")
JWT=$(curl -sf -H 'content-type: application/json' -d "{\"username\":\"admin\",\"password\":\"$PASS\"}" \
  "http://$HTTP/api/v1/auth/login" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
now=$(date +%s)
echo "| window | group_by | groups | device means | read in | p50 ms | p95 ms | max ms |"
echo "|---|---|---:|---:|---|---:|---:|---:|"
for case in "1h version:detector" "1h device_type" "1h tag:site" "24h version:detector" "24h device_type" \
            "7d version:detector" "7d tag:site"; do
  set -- $case
  case $1 in 1h) span=3600;; 24h) span=86400;; 7d) span=604800;; esac
  url="http://$HTTP/api/v1/fleet/metrics?metric=inference_ms&group_by=$2&from=$(( (now - span) * 1000 ))&to=$(( now * 1000 ))"
  curl -sf -H "authorization: Bearer $JWT" "$url" > "$DIR/last.json"
  times=""
  i=0
  while [ "$i" -lt "$N" ]; do
    times="$times $(curl -sf -o /dev/null -w '%{time_total}' -H "authorization: Bearer $JWT" "$url")"
    i=$((i + 1))
  done
  python3 - "$DIR/last.json" "$1" "$2" $times <<'PY'
import json, math, sys
body = json.load(open(sys.argv[1]))
xs = sorted(float(x) * 1000 for x in sys.argv[4:])
rank = lambda p: xs[max(1, math.ceil(p / 100 * len(xs))) - 1]
groups = body.get("groups", [])
means = sum(g.get("devices", 0) for g in groups)
print("| %s | `%s` | %d | %d | %s | %.0f | %.0f | %.0f |" % (
    sys.argv[2], sys.argv[3], len(groups), means, body.get("resolution"), rank(50), rank(95), xs[-1]))
PY
done
