#!/usr/bin/env python3
"""The whole story on one machine: a Drover server, one enrolled agent with a
`files` installer for models, the edge-inference service on that device, a
rollout of detector 1.0.0 and then of 2.0.0, and the fleet's per-version
comparison of what the service reported.

    python3 demo.py [--seconds 8] [--keep]    # or ./run-demo.sh, which builds first

Binaries: $DROVER_BIN and $DROVER_AGENT_BIN, else target/debug. Everything
lives in a temporary directory (kept with --keep) on loopback ports the system
picks. Exits 0 when readings of both versions were stored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stack  # noqa: E402

BUNDLE = "detector"
METRICS = ("inference_ms", "confidence", "fallback")


def say(text: str) -> None:
    print(text, flush=True)


def versions_seen(server: stack.Server) -> Dict[str, dict]:
    try:
        groups = stack.fleet_metrics(server, "confidence", f"version:{BUNDLE}")["groups"]
    except stack.ApiError as e:
        if "no device has sent" in str(e):  # no model has made a decision yet
            return {}
        raise
    return {g["key"]: g for g in groups}


def table(server: stack.Server) -> List[str]:
    """Each metric's per-version mean, and how 2.0.0 compares with 1.0.0."""
    lines = [f"{'metric':<14}{'version':<10}{'devices':>8}{'mean':>10}"]
    changes = []
    for metric in METRICS:
        groups = stack.fleet_metrics(server, metric, f"version:{BUNDLE}")["groups"]
        means = {}
        for g in groups:
            means[g["key"]] = g["mean"]
            lines.append(f"{metric:<14}{g['key']:<10}{g['devices']:>8}{g['mean']:>10.4f}")
        if means.get("1.0.0"):
            change = (means.get("2.0.0", 0.0) - means["1.0.0"]) / means["1.0.0"] * 100
            changes.append(f"{metric} {change:+.0f}%")
    lines.append(f"2.0.0 against 1.0.0: {', '.join(changes)}")
    return lines


def run(work: Path, seconds: float) -> int:
    models = work / "models"
    service_py = HERE / "service.py"
    health = f"{sys.executable} {service_py} --check --models {models}"
    say(f"work directory: {work}")
    server = stack.Server(work, database_url=os.environ.get("DROVER_STACK_DATABASE_URL") or None)
    agent = stack.Agent(work, server, device_type="edge-box",
                        extra_toml=stack.files_installer("model", models, health))
    service = None
    try:
        server.start()
        say(f"1. drover serve: REST API on {server.http}, device API on {server.device}")
        agent.enroll().start()
        say(f"2. drover-agent enrolled as {agent.device_id} (type edge-box) and running;"
            f" models install under {models}")
        service_log = open(work / "service.log", "ab")
        service = subprocess.Popen(
            [sys.executable, str(service_py), "--models", str(models), "--state-dir",
             str(agent.state_dir), "--rate", "20"],
            stdout=service_log, stderr=service_log, stdin=subprocess.DEVNULL)
        service_log.close()
        say("3. edge-inference service started: no model yet, so the thresholds decide")
        time.sleep(seconds / 2)

        for step, version in ((4, "1.0.0"), (5, "2.0.0")):
            payload = (HERE / "models" / f"detector-{version}.json").read_bytes()
            bundle = server.bundle(BUNDLE, "model", version, "edge-box", {"model.json": payload})
            rollout = server.rollout(f"{BUNDLE} {version}", bundle, [agent.device_id])
            started = time.monotonic()
            done = server.wait_rollout(rollout)
            say(f"{step}. {BUNDLE} {version}: bundle signed, rollout {done['state']} in "
                f"{time.monotonic() - started:.1f} s (health check: the model loads)")
            stack.wait_for(f"readings made with {BUNDLE} {version}",
                           lambda: version in versions_seen(server), timeout=60, interval=0.5)
            say(f"   the service reloaded {BUNDLE}/current and reports readings made with {version}")
            time.sleep(seconds)

        service.send_signal(signal.SIGTERM)
        service.wait(timeout=15)
        service = None
        # Every reading the service handed over is published once the agent's spool drains.
        stack.wait_for("the agent's spool to drain", lambda: agent.status()["spool_depth"] == 0,
                       timeout=30, interval=0.5)
        say("")
        say(f"GET /api/v1/fleet/metrics?metric=...&group_by=version:{BUNDLE}")
        for line in table(server):
            say("   " + line)
        seen = versions_seen(server)
        say("")
        say("raw answer for confidence: " + json.dumps(
            stack.fleet_metrics(server, "confidence", f"version:{BUNDLE}"), sort_keys=True))
        missing = [v for v in ("1.0.0", "2.0.0") if v not in seen]
        if missing:
            say(f"FAILED: no readings stored for {', '.join(missing)}")
            return 1
        say("both model versions' readings are stored; compare them above")
        return 0
    except Exception:
        say("--- server log ---\n" + server.log())
        say("--- agent log ---\n" + agent.log())
        try:
            say("--- service log ---\n" + (work / "service.log").read_text()[-3000:])
        except OSError:
            pass
        raise
    finally:
        if service is not None:
            service.kill()
            service.wait()
        agent.stop()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="how long each model version runs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.keep:
        return run(Path(tempfile.mkdtemp(prefix="drover-edge-demo-")), args.seconds)
    with tempfile.TemporaryDirectory(prefix="drover-edge-demo-") as work:
        return run(Path(work), args.seconds)


if __name__ == "__main__":
    sys.exit(main())
