"""The edge-inference example's service (examples/edge-inference) with a real
agent: it loads the committed release, reloads when `current` moves, keeps its
model when a release does not load, and its health check makes the agent
revert such a release."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import detector
import service
import stack
from drover_device import Client

EXAMPLE = stack.REPO / "examples" / "edge-inference"


def release(models: Path, version: str, body: bytes) -> None:
    """Installs a release by hand, as the files installer lays it out, and points `current` at it."""
    path = models / "detector" / "releases" / version
    path.mkdir(parents=True)
    (path / "model.json").write_bytes(body)
    link = models / "detector" / "current"
    tmp = models / "detector" / ".current.tmp"
    os.symlink(f"releases/{version}", tmp)
    os.replace(tmp, link)


def model(version: str) -> bytes:
    return (EXAMPLE / "models" / f"detector-{version}.json").read_bytes()


def test_the_service_reloads_and_keeps_its_model_when_a_release_does_not_load(server, agent, tmp_path):
    models = tmp_path / "hand"
    with Client(agent.state_dir) as client:
        d = service.Detector(models, client)
        d.refresh()
        assert d.model is None and client.models == {}
        release(models, "1.0.0", model("1.0.0"))
        d.refresh()
        assert d.model is not None and d.model.version == "1.0.0"
        assert client.models == {"detector": "1.0.0"}
        release(models, "2.0.0", b'{"format": "something else"}')
        d.refresh()
        assert d.model.version == "1.0.0", "a model that does not load never replaces one that does"
        assert client.models == {"detector": "1.0.0"}
        release(models, "2.0.1", model("2.0.0"))
        d.refresh()
        assert client.models == {"detector": "2.0.1"}
    loaded = stack.wait_for("two model_loaded events", lambda: (
        lambda p: p if len(p) >= 2 else None)(stack.telemetry(server, agent.device_id, "event.model_loaded")))
    assert len(loaded) == 2
    assert stack.telemetry(server, agent.device_id, "event.model_rejected")


def test_the_models_disagree_where_the_boundary_is_curved():
    v1 = detector.load(EXAMPLE / "models" / "detector-1.0.0.json")
    v2 = detector.load(EXAMPLE / "models" / "detector-2.0.0.json")
    sensor = detector.Sensor(99)
    right = {1: 0, 2: 0}
    sure = {1: 0, 2: 0}
    for _ in range(2000):
        t, v = sensor.read()
        truth = detector.is_faulty(t, v)
        for n, m in ((1, v1), (2, v2)):
            p = m.predict([t, v])
            right[n] += (p >= 0.5) == truth
            sure[n] += max(p, 1 - p) >= 0.8
    assert right[2] > 0.9 * 2000 and right[2] > right[1]
    assert sure[2] > 3 * sure[1]


def test_a_malformed_model_file_is_refused_naming_the_problem(tmp_path):
    bad = tmp_path / "m.json"
    cases = {
        b"not json": "cannot read",
        b'{"format": "x"}': "is not a drover-example-mlp/1 model",
        b'{"format": "drover-example-mlp/1", "features": ["a"]}': "expects features",
        b'{"format": "drover-example-mlp/1", "features": ["temp_c", "vibration_mm_s"], "name": "d",'
        b' "version": "1.0.0", "mean": [0, 0], "scale": [1, 1], "layers": [{"weights": [[1, 2]],'
        b' "bias": [0], "activation": "relu"}]}': "one sigmoid output",
    }
    for body, problem in cases.items():
        bad.write_bytes(body)
        try:
            detector.load(bad)
        except detector.ModelError as e:
            assert problem in str(e), (body, e)
        else:
            raise AssertionError(f"{body!r} loaded")


def test_the_health_check_makes_the_agent_revert_a_release_whose_model_does_not_load(server, tmp_path, unique):
    models = tmp_path / "models"
    health = f"{sys.executable} {EXAMPLE / 'service.py'} --check --models {models}"
    agent = stack.Agent(tmp_path, server, extra_toml=stack.files_installer("model", models, health))
    agent.enroll().start()
    try:
        name_ok = server.bundle("detector", "model", f"1.0.0-{unique}", agent.device_type,
                                {"model.json": model("1.0.0")})
        server.wait_rollout(server.rollout(f"good {unique}", name_ok, [agent.device_id]))
        broken = server.bundle("detector", "model", f"1.0.1-{unique}", agent.device_type,
                               {"model.json": b'{"format": "oops"}'})
        rollout = server.rollout(f"broken {unique}", broken, [agent.device_id])
        server.wait_rollout(rollout, state="halted")
        [device] = server.api("GET", f"/api/v1/rollouts/{rollout}/devices")["items"]
        assert device["state"] == "reverted", device
        current = os.readlink(models / "detector" / "current")
        assert current == f"releases/1.0.0-{unique}"
        out = subprocess.run([sys.executable, str(EXAMPLE / "service.py"), "--check", "--models",
                              str(models)], capture_output=True, text=True)
        assert out.returncode == 0 and f"1.0.0-{unique} loads" in out.stdout
    finally:
        agent.stop()
