#!/usr/bin/env bash
# Builds the server and the agent, then runs the edge-inference story (demo.py):
# server, agent, service, detector 1.0.0 then 2.0.0, and the per-version comparison.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --quiet -p drover-server -p drover-agent
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export DROVER_BIN="${DROVER_BIN:-$target/debug/drover}"
export DROVER_AGENT_BIN="${DROVER_AGENT_BIN:-$target/debug/drover-agent}"
exec python3 demo.py "$@"
