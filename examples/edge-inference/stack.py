"""A throwaway Drover on this machine: `drover serve` and `drover-agent run` with
fresh data and state directories and ephemeral ports, driven through the REST
API. The demo (demo.py) and the SDK's tests (sdk/python/tests) use it.

Binaries come from $DROVER_BIN and $DROVER_AGENT_BIN, else the workspace's
target/debug (build them with `cargo build -p drover-server -p drover-agent`).
Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def binary(env: str, name: str) -> str:
    """A workspace binary: $ENV when set, else target/debug/NAME."""
    path = os.environ.get(env) or str(REPO / "target" / "debug" / name)
    if not os.access(path, os.X_OK):
        raise SystemExit(
            f"{name} is not built at {path}: run `cargo build -p drover-server -p drover-agent` "
            f"or set {env}")
    return path


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Polls `check` until it answers something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _clean_env() -> Dict[str, str]:
    """This process's environment without DROVER_* (so a caller's settings never leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}


def _terminate(proc: "Optional[subprocess.Popen[bytes]]") -> None:
    """SIGTERM, as a service manager stops it; SIGKILL after 15 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ApiError(Exception):
    """A REST call that answered an error status."""


class Server:
    """`drover serve` on a fresh data directory, loopback, ports chosen by the system."""

    def __init__(self, workdir: Path, *, database_url: Optional[str] = None) -> None:
        self.bin = binary("DROVER_BIN", "drover")
        self.data_dir = workdir / "server"
        self.log_path = workdir / "server.log"
        self.env = _clean_env()
        self.env.update({
            "DROVER_DATA_DIR": str(self.data_dir),
            "DROVER_HTTP_LISTEN": "127.0.0.1:0",
            "DROVER_DEVICE_LISTEN": "127.0.0.1:0",
            "DROVER_MQTT_LISTEN": "127.0.0.1:0",
            "DROVER_PUBLIC_HOSTNAMES": "localhost,127.0.0.1",
            "DROVER_LOG": "warn",
        })
        if database_url:
            self.env["DROVER_DATABASE_URL"] = database_url
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.http = ""
        self.device = ""
        self.token = ""

    def start(self) -> "Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, "serve"], env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        ports_file = self.data_dir / "ports.json"

        def ports() -> Optional[Dict[str, str]]:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"drover serve exited ({self.proc.returncode}): {self.log()}")
            try:
                return json.loads(ports_file.read_text())
            except (OSError, ValueError):
                return None

        found = wait_for("the server's ports.json", ports, timeout=60)
        self.http = "http://" + found["http"]
        self.device = "https://127.0.0.1:" + found["device"].rsplit(":", 1)[1]
        wait_for("the server to be ready", self._ready, timeout=60)
        password = secrets.token_urlsafe(18)
        subprocess.run([self.bin, "user", "create", "--username", "demo", "--role", "operator",
                        "--password-stdin"], input=(password + "\n").encode(), env=self.env,
                       check=True, capture_output=True)
        login = self.api("POST", "/api/v1/auth/login", {"username": "demo", "password": password},
                         auth=False)
        self.token = login["token"]
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.http + "/readyz", timeout=2) as res:
                return res.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def api(self, method: str, path: str, body: Any = None, *, raw: Optional[bytes] = None,
            headers: Optional[Dict[str, str]] = None, auth: bool = True) -> Any:
        """One REST call; answers the decoded JSON (None for an empty body)."""
        data = raw
        all_headers = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        if auth:
            all_headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(self.http + path, data=data, method=method,
                                     headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                text = res.read()
        except urllib.error.HTTPError as e:
            raise ApiError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None
        return json.loads(text) if text else None

    def enrollment(self, device_type: str) -> Dict[str, str]:
        """A one-use enrollment token: its token, the CA hash and the device API URL."""
        answer = self.api("POST", "/api/v1/enrollment-tokens",
                          {"uses": 1, "device_types": [device_type]})
        ca_hash = re.search(r"--ca-hash (sha256:[0-9a-f]{64})", answer["join_command"])
        if ca_hash is None:
            raise RuntimeError(f"no --ca-hash in {answer['join_command']!r}")
        return {"token": answer["token"], "ca_hash": ca_hash.group(1), "server": self.device}

    def upload(self, name: str, data: bytes) -> str:
        """Uploads an artifact; answers its id."""
        return self.api("POST", "/api/v1/artifacts", raw=data,
                        headers={"X-Artifact-Name": name,
                                 "Content-Type": "application/octet-stream"})["id"]

    def bundle(self, name: str, kind: str, version: str, device_type: str,
               payloads: Dict[str, bytes]) -> str:
        """Uploads `payloads` and has the server build and sign a `files` bundle; answers its id."""
        artifacts = [self.upload(n, d) for n, d in payloads.items()]
        return self.api("POST", "/api/v1/bundles", {
            "name": name, "kind": kind, "version": version, "device_types": [device_type],
            "installer": "files", "artifacts": artifacts, "expires_in_days": 30,
        })["id"]

    def rollout(self, name: str, bundle_id: str, device_ids: List[str]) -> str:
        """Starts a one-phase rollout of `bundle_id` to `device_ids`; answers its id."""
        return self.api("POST", "/api/v1/rollouts", {
            "name": name, "bundle_id": bundle_id, "target": {"device_ids": device_ids},
            "phases": [{"percent": 100}], "failure_threshold_pct": 0, "max_in_flight": 10,
        })["id"]

    def wait_rollout(self, rollout_id: str, state: str = "completed",
                     timeout: float = 90) -> Dict[str, Any]:
        def check() -> Optional[Dict[str, Any]]:
            r = self.api("GET", f"/api/v1/rollouts/{rollout_id}")
            if r["state"] in ("halted", "aborted", "rolled_back") and r["state"] != state:
                devices = self.api("GET", f"/api/v1/rollouts/{rollout_id}/devices")
                raise RuntimeError(f"rollout {rollout_id} ended {r['state']}: {devices}")
            return r if r["state"] == state else None
        return wait_for(f"rollout {rollout_id} to be {state}", check, timeout=timeout, interval=0.5)

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None


class Agent:
    """`drover-agent` enrolled against a :class:`Server`, with a one-second heartbeat and
    extra agent.toml text (e.g. a `files` installer) appended."""

    def __init__(self, workdir: Path, server: Server, *, device_type: str = "edge",
                 extra_toml: str = "") -> None:
        self.bin = binary("DROVER_AGENT_BIN", "drover-agent")
        self.state_dir = workdir / "agent"
        self.log_path = workdir / "agent.log"
        self.socket = self.state_dir / "intake.sock"
        self.env = _clean_env()
        self.env["DROVER_AGENT_STATE_DIR"] = str(self.state_dir)
        self.server = server
        self.device_type = device_type
        self.extra_toml = extra_toml
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.device_id = ""

    def enroll(self) -> "Agent":
        e = self.server.enrollment(self.device_type)
        out = subprocess.run(
            [self.bin, "enroll", "--server", e["server"], "--token", e["token"], "--ca-hash",
             e["ca_hash"], "--device-type", self.device_type],
            env=self.env, capture_output=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise RuntimeError(f"drover-agent enroll failed: {out.stderr.decode(errors='replace')}")
        toml_path = self.state_dir / "agent.toml"
        toml = toml_path.read_text().replace("heartbeat_s = 30", "heartbeat_s = 1")
        toml_path.write_text(toml + "\n" + self.extra_toml)
        self.device_id = self.status()["device_id"]
        return self

    def status(self) -> Dict[str, Any]:
        out = subprocess.run([self.bin, "status", "--json"], env=self.env, capture_output=True,
                             stdin=subprocess.DEVNULL, check=True)
        return json.loads(out.stdout)

    def start(self) -> "Agent":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, "run"], env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()

        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"drover-agent run exited ({self.proc.returncode}): {self.log()}")
            return self.socket.exists()

        wait_for("the agent's intake socket", listening, timeout=30)
        return self

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def files_installer(kind: str, target: Path, health: str = "true") -> str:
    """agent.toml text for a `files` installer of `kind` into `target`, with a quick health
    check and a short commit window."""
    return (
        f"[installers.{kind}]\n"
        f"type = \"files\"\n"
        f"target = {json.dumps(str(target))}\n\n"
        f"[health]\n"
        f"command = {json.dumps(health)}\n"
        f"timeout_s = 5\n"
        f"commit_window_s = 10\n"
    )


def telemetry(server: Server, device_id: str, metric: str) -> List[Dict[str, Any]]:
    """A device's raw points of `metric` in the last hour."""
    q = urllib.parse.urlencode({"metric": metric})
    return server.api("GET", f"/api/v1/devices/{device_id}/telemetry?{q}")["points"]


def fleet_metrics(server: Server, metric: str, group_by: str) -> Dict[str, Any]:
    q = urllib.parse.urlencode({"metric": metric, "group_by": group_by})
    return server.api("GET", f"/api/v1/fleet/metrics?{q}")

