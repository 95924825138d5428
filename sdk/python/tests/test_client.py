"""The SDK against a real agent (and the server behind it): readings are
acknowledged once durable and arrive on the server, stamped with the model
versions the program reported; the agent's absence is buffered, bounded and
flushed; update holds defer a real install until released."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

import stack
from drover_device import Client, current_release, now_ms


def points(server: stack.Server, agent: stack.Agent, metric: str, n: int) -> list:
    return stack.wait_for(
        f"{n} points of {metric} on the server",
        lambda: (lambda p: p if len(p) >= n else None)(stack.telemetry(server, agent.device_id, metric)),
        timeout=30)


def test_a_reading_is_acknowledged_when_durable_and_arrives_on_the_server(server, agent):
    with Client(agent.state_dir) as client:
        seq = client.send(temp_c=48.2, inference_ms=12.5)
        assert isinstance(seq, int) and seq >= 1
        assert client.send({"cpu.load-1m": 0.5}) == seq + 1
        assert client.stats.sent == 2 and client.stats.buffered == 0
    [p] = points(server, agent, "inference_ms", 1)
    assert p["value"] == 12.5
    [p] = points(server, agent, "cpu.load-1m", 1)
    assert p["value"] == 0.5


def test_readings_carry_the_model_version_the_program_loaded(server, agent, unique):
    metric = f"score_{unique}"
    with Client(agent.state_dir) as client:
        client.send({metric: 1.0})
        client.loaded_model("detector", "3.1.4")
        assert client.models == {"detector": "3.1.4"}
        client.send({metric: 5.0})
        client.send({metric: 7.0})
    points(server, agent, metric, 3)

    def groups() -> dict:
        g = stack.fleet_metrics(server, metric, "version:detector")["groups"]
        return {x["key"]: x for x in g} if sum(x["devices"] for x in g) >= 2 else {}

    by_version = stack.wait_for("the per-version groups", groups, timeout=30)
    assert by_version["3.1.4"]["mean"] == 6.0
    assert by_version["(none)"]["mean"] == 1.0


def test_an_event_is_a_reading_named_event_dot_name(server, agent):
    with Client(agent.state_dir) as client:
        assert client.event("overheat", temp_c=91.0) is not None
        assert client.event("fallback", 3) is not None
    assert points(server, agent, "event.overheat", 1)[0]["value"] == 1
    assert points(server, agent, "event.fallback", 1)[0]["value"] == 3
    assert points(server, agent, "temp_c", 1)[0]["value"] == 91.0


def test_readings_wait_while_the_agent_is_down_and_arrive_in_order_after(server, agent, caplog):
    caplog.set_level(logging.WARNING, logger="drover_device")
    with Client(agent.state_dir, timeout=1.0, retry_interval=0.2) as client:
        assert client.send(step=0) is not None
        agent.stop()
        started = time.monotonic()
        stamps = []
        for i in range(1, 6):
            stamps.append(now_ms())
            assert client.send(step=i) is None
        assert time.monotonic() - started < 1.0, "sending while the agent is down never blocks"
        stats = client.stats
        assert (stats.sent, stats.buffered, stats.dropped, stats.connected) == (1, 5, 0, False)
        down = [r for r in caplog.records if "not answering" in r.getMessage()]
        assert len(down) == 1, "one clear warning per outage, not one per reading"
        assert str(agent.socket) in down[0].getMessage()

        agent.start()
        # The background thread flushes without another send.
        stack.wait_for("the buffer to drain", lambda: client.stats.buffered == 0, timeout=20)
        assert client.stats.sent == 6 and client.stats.connected
        assert any("answers again" in r.getMessage() for r in caplog.records)
    got = points(server, agent, "step", 6)
    assert [p["value"] for p in got] == [0, 1, 2, 3, 4, 5]
    # Buffered readings keep the time they were taken, not the time they were flushed.
    assert [p["ts"] for p in got[1:]] == pytest.approx(stamps, abs=5)


def test_a_full_buffer_drops_the_oldest_and_counts_them(server, agent, caplog):
    caplog.set_level(logging.WARNING, logger="drover_device")
    agent.stop()
    client = Client(agent.state_dir, buffer_size=3, background=False)
    for i in range(1, 6):
        assert client.send(kept=i) is None
    stats = client.stats
    assert (stats.buffered, stats.dropped) == (3, 2)
    assert sum("buffer is full" in r.getMessage() for r in caplog.records) == 1
    agent.start()
    # Without the thread, the next send (or flush) empties the buffer first.
    assert client.send(kept=6) is not None
    assert client.stats.buffered == 0 and client.stats.sent == 4
    client.close()
    assert [p["value"] for p in points(server, agent, "kept", 4)] == [3, 4, 5, 6]


def test_nothing_raises_when_no_agent_ever_ran(tmp_path):
    client = Client(socket_path=tmp_path / "none.sock", background=False)
    assert client.send(x=1) is None
    assert client.event("boot") is None
    hold = client.defer_updates(now_ms() + 60_000)
    assert not hold.granted and "not answering" in (hold.error or "")
    with client.hold_updates(seconds=5) as hold:
        assert not hold.granted
    assert client.flush() == 2
    client.close()


@pytest.mark.parametrize("bad", [
    {}, {"temp c": 1}, {"": 1}, {"t": float("nan")}, {"t": float("inf")}, {"t": "hot"},
    {"t": True}, {"t\n": 1}, {"x" * 65: 1}, {f"m{i}": 1 for i in range(65)},
])
def test_a_malformed_reading_raises_value_error_at_the_call(bad, tmp_path):
    client = Client(socket_path=tmp_path / "none.sock", background=False)
    with pytest.raises(ValueError):
        client.send(bad)
    assert client.stats.buffered == 0


@pytest.mark.parametrize("name,version", [
    ("detector", "2"), ("detector", "v1.0.0"), ("../x", "1.0.0"), ("", "1.0.0"), (".", "1.0.0"),
])
def test_a_malformed_model_version_raises_value_error(name, version, tmp_path):
    with pytest.raises(ValueError):
        Client(socket_path=tmp_path / "none.sock").loaded_model(name, version)


def test_the_agent_refusing_a_line_is_counted_not_raised(agent, caplog):
    caplog.set_level(logging.WARNING, logger="drover_device")
    with Client(agent.state_dir) as client:
        # A timestamp two years off passes the SDK's checks; the agent refuses it.
        assert client.send(x=1, ts=now_ms() - 2 * 366 * 24 * 3600 * 1000) is None
        assert client.stats.rejected == 1 and client.stats.buffered == 0
        assert client.send(x=2) is not None
    assert any("more than a year away" in r.getMessage() for r in caplog.records)


def test_hold_updates_defers_a_real_install_until_the_block_ends(server, agent, unique):
    name = f"detector-{unique}"
    models: Path = agent.models  # type: ignore[attr-defined]
    bundle = server.bundle(name, "model", "1.0.0", agent.device_type,
                           {"model.json": b'{"weights": [1, 2]}'})
    with Client(agent.state_dir) as client:
        with client.hold_updates(seconds=300) as hold:
            assert hold.granted and hold.until is not None and hold.until > now_ms() + 200_000
            rollout = server.rollout(f"held {unique}", bundle, [agent.device_id])
            stack.wait_for("the update to be deferred",
                           lambda: agent.status()["update_state"] == "deferred", timeout=60)
            time.sleep(1.0)
            assert agent.status()["update_state"] == "deferred"
            assert current_release(models, name) is None, "nothing installed during the hold"
        # Leaving the block released the hold: the install goes on long before 300 s.
        released = time.monotonic()
        server.wait_rollout(rollout, timeout=60)
        assert time.monotonic() - released < 60
    release = current_release(models, name)
    assert release is not None and release.version == "1.0.0"
    assert (release.path / "model.json").read_bytes() == b'{"weights": [1, 2]}'
    assert agent.status()["update_state"] == "succeeded"


def test_the_agent_caps_a_hold_at_max_defer_s(agent):
    with Client(agent.state_dir) as client:
        asked = now_ms() + 10 * 24 * 3600 * 1000
        hold = client.defer_updates(asked)
        assert hold.granted and hold.until is not None
        assert hold.until <= now_ms() + 3600 * 1000 + 1000  # max_defer_s = 3600 by default
        assert client.release_updates().granted is False  # a hold ending now holds nothing
