#!/usr/bin/env python3
"""An edge-inference service like the ones Drover's users run on their devices.

It reads a (simulated) sensor, asks the model that the agent's `files`
installer committed (`MODELS/detector/current/model.json`) whether the machine
is faulty, and falls back to fixed thresholds when the model is unsure (or
before any model is installed). Every decision is reported to the local
agent through the drover-device SDK: `inference_ms`, `confidence`, `decision`
(1 faulty, 0 fine), `fallback` (1 when the thresholds decided), and the
sensor's `temp_c` and `vibration_mm_s`, each stamped with the model version
that made it. It notices a rollout (or a revert) by reading the `current`
link once a second and loads the new release; a model that does not load is
reported as the event `event.model_rejected` and the old one keeps running.

    python3 service.py --models /opt/models --state-dir /var/lib/drover-agent
    python3 service.py --models /opt/models --check   # the agent's health check

Standard library only (plus the SDK in sdk/python).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
try:
    import drover_device
except ImportError:  # running from a checkout without `pip install sdk/python`
    sys.path.insert(0, str(HERE.parents[1] / "sdk" / "python" / "src"))
    import drover_device

from detector import Model, ModelError, Sensor, load, rule  # noqa: E402

log = logging.getLogger("edge-inference")
BUNDLE = "detector"
PAYLOAD = "model.json"


class Detector:
    """The model of the current release, reloaded when the release changes."""

    def __init__(self, models: Path, client: drover_device.Client) -> None:
        self.models = models
        self.client = client
        self.model: Optional[Model] = None
        self.release: Optional[str] = None

    def refresh(self) -> None:
        release = drover_device.current_release(self.models, BUNDLE)
        version = release.version if release else None
        if version == self.release:
            return
        self.release = version
        if release is None:
            return
        try:
            model = load(release.path / PAYLOAD)
        except ModelError as e:
            log.error("keeping %s: %s", self.model.version if self.model else "the thresholds", e)
            self.client.event("model_rejected")
            return
        self.model = model
        # The readings from now on name the version that really produced them.
        self.client.loaded_model(BUNDLE, release.version)
        self.client.event("model_loaded")
        log.info("loaded %s %s from %s", BUNDLE, release.version, release.path)


def check(models: Path) -> int:
    """The health check: the committed release's model loads and answers."""
    release = drover_device.current_release(models, BUNDLE)
    if release is None:
        print(f"no {BUNDLE} release under {models}", file=sys.stderr)
        return 1
    try:
        p = load(release.path / PAYLOAD).predict([55.0, 1.0])
    except ModelError as e:
        print(e, file=sys.stderr)
        return 1
    if not 0.0 <= p <= 1.0:
        print(f"{BUNDLE} {release.version} answers {p}, not a probability", file=sys.stderr)
        return 1
    print(f"{BUNDLE} {release.version} loads and answers")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True,
                        help="the files installer's target for kind model")
    parser.add_argument("--state-dir", help="the agent's state directory (intake.sock)")
    parser.add_argument("--rate", type=float, default=10.0, help="readings per second")
    parser.add_argument("--min-confidence", type=float, default=0.8,
                        help="below this the thresholds decide")
    parser.add_argument("--seed", type=int, default=1, help="the simulated sensor's seed")
    parser.add_argument("--check", action="store_true", help="health check: load and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.check:
        return check(args.models)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    sensor = Sensor(args.seed)
    with drover_device.Client(args.state_dir) as client:
        detector = Detector(args.models, client)
        next_refresh = 0.0
        while not stop:
            now = time.monotonic()
            if now >= next_refresh:
                detector.refresh()
                next_refresh = now + 1.0
            temp, vibration = sensor.read()
            reading = {"temp_c": round(temp, 2), "vibration_mm_s": round(vibration, 3)}
            model = detector.model
            fallback = True
            if model is not None:
                started = time.perf_counter()
                p = model.predict([temp, vibration])
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                confidence = max(p, 1.0 - p)
                reading.update(inference_ms=round(elapsed_ms, 4), confidence=round(confidence, 4))
                if confidence >= args.min_confidence:
                    faulty, fallback = p >= 0.5, False
            if fallback:
                faulty = rule(temp, vibration)
            reading.update(decision=int(faulty), fallback=int(fallback))
            client.send(reading)
            time.sleep(1.0 / args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
