#!/bin/sh
# What the fleet metrics tiers cost ingest, end to end (docs/BENCHMARKS.md,
# "Fleet metrics"): the release server and `drover-agent simulate` (DEVICES
# devices, RATE readings a second each, four metrics a reading, each reading
# its own message as the agent sends them), measured over WINDOW seconds once
# every device runs: server CPU seconds per 1000 readings stored.
# VARIANT=without drops the triggers that keep the tiers after migrating, for
# the comparison. Needs sqlite3, curl and python3.
#
#   cargo build --release -p drover-server
#   cargo build --profile agent -p drover-agent
#   VARIANT=without tests/bench/scripts/fleet-metrics-ingest.sh
#   VARIANT=with tests/bench/scripts/fleet-metrics-ingest.sh
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/../../../target/release/drover}
AGENT=${AGENT:-$HERE/../../../target/agent/drover-agent}
VARIANT=${VARIANT:-with}; DEVICES=${DEVICES:-2000}; RATE=${RATE:-0.5}; WINDOW=${WINDOW:-60}
DIR=${DIR:-/var/tmp/drover-bench-fleet-ingest}/$VARIANT
rm -rf "$DIR"; mkdir -p "$DIR"
DROVER_DATA_DIR="$DIR/data" "$BIN" migrate > /dev/null
if [ "$VARIANT" = without ]; then
  sqlite3 "$DIR/data/drover.db" "DROP TRIGGER telemetry_rollups_tiers_insert; DROP TRIGGER telemetry_rollups_tiers_update;
    DROP TRIGGER telemetry_rollups_tiers_rekey; DROP TRIGGER telemetry_rollups_tiers_delete;"
fi
DROVER_DATA_DIR="$DIR/data" DROVER_HTTP_LISTEN=127.0.0.1:0 DROVER_DEVICE_LISTEN=127.0.0.1:0 DROVER_MQTT_LISTEN=127.0.0.1:0 \
  DROVER_ENROLL_RATE_PER_MINUTE=1000000 DROVER_LOG=warn "$BIN" serve > "$DIR/stdout.log" 2> "$DIR/stderr.log" &
SPID=$!
trap 'kill -TERM $SPID 2>/dev/null; wait 2>/dev/null' EXIT
while [ ! -s "$DIR/data/ports.json" ]; do sleep 0.2; done
sleep 1
port() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$DIR/data/ports.json" "$1"; }
HTTP=$(port http); DEV=$(port device)
PASS=$(sed -n 's/.*one-time password: *\([^ ]*\).*/\1/p' "$DIR/stdout.log" | head -1)
JWT=$(curl -sf -H 'content-type: application/json' -d "{\"username\":\"admin\",\"password\":\"$PASS\"}" \
  "http://$HTTP/api/v1/auth/login" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
TOK=$(curl -sf -H "authorization: Bearer $JWT" -H 'content-type: application/json' \
  -d "{\"uses\":$DEVICES,\"expires_in\":\"24h\"}" "http://$HTTP/api/v1/enrollment-tokens")
TOKEN=$(echo "$TOK" | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
HASH=$(echo "$TOK" | python3 -c 'import json, re, sys; print(re.search(r"sha256:[0-9a-f]+", json.load(sys.stdin)["join_command"]).group(0))')
DROVER_AGENT_TOKEN="$TOKEN" "$AGENT" --state-dir "$DIR/agent" simulate --server "https://$DEV" \
  --ca-hash "$HASH" --devices "$DEVICES" --rate "$RATE" --enroll-rate 100 > "$DIR/sim.log" 2>&1 &
APID=$!
trap 'kill -TERM $APID 2>/dev/null; sleep 3; kill -TERM $SPID 2>/dev/null; wait 2>/dev/null' EXIT
stored() { curl -sf "http://$HTTP/metrics" | sed -n 's/^drover_telemetry_readings_stored_total \([0-9]*\)$/\1/p'; }
cpu() { awk '{print $14 + $15}' "/proc/$SPID/stat"; }
# Every device enrolled and sending, then a minute more, so rollup rows of the minute exist.
sleep $(( DEVICES / 40 + 60 ))
r0=$(stored); c0=$(cpu); t0=$(date +%s.%N)
sleep "$WINDOW"
r1=$(stored); c1=$(cpu); t1=$(date +%s.%N)
python3 - "$VARIANT" "$r0" "$r1" "$c0" "$c1" "$t0" "$t1" <<'PY'
import os, sys
v = sys.argv[1]
r0, r1, c0, c1 = (int(x) for x in sys.argv[2:6])
t0, t1 = float(sys.argv[6]), float(sys.argv[7])
secs, cpu, n = t1 - t0, (c1 - c0) / os.sysconf("SC_CLK_TCK"), r1 - r0
print(f"{v}: {n} readings in {secs:.1f} s = {n / secs:.0f}/s; server CPU {cpu:.1f} s "
      f"= {100 * cpu / secs:.0f} % of a core; {1000 * cpu / n * 1000:.0f} ms CPU per 1000 readings")
PY
