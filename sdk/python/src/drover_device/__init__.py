"""drover-device: how Python programs on a Drover-managed device talk to its agent.

::

    from drover_device import Client

    client = Client()                       # STATE_DIR/intake.sock of the local agent
    client.loaded_model("detector", "1.2.0")
    client.send(temp_c=48.2, inference_ms=12.5)
    client.event("fallback")                # the reading event.fallback = 1
    with client.hold_updates(seconds=600):  # no installs or reboots meanwhile
        run_critical_job()

Standard library only; never blocks for long nor raises because the agent is away.
"""

from __future__ import annotations

from .client import DEFAULT_STATE_DIR, Client, Hold, Stats, now_ms
from .releases import Release, current_release

__all__ = [
    "DEFAULT_STATE_DIR",
    "Client",
    "Hold",
    "Release",
    "Stats",
    "current_release",
    "now_ms",
]

__version__ = "0.1.0"
