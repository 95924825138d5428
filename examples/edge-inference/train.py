"""Trains the example's two model versions on simulated readings and writes them
to models/ (the files the demo uploads; they are checked in, so nothing is
trained or downloaded when the demo runs):

- detector 1.0.0: logistic regression (one sigmoid layer). The true boundary
  is a ring, so it is unsure near it and the service often falls back.
- detector 2.0.0: 8 ReLU units and a sigmoid output: confident and right more
  often, a few microseconds slower per inference.

Pure Python, deterministic: `python3 train.py` rewrites the same files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from detector import MEAN, SCALE, Layer, Model, Sensor, is_faulty

HERE = Path(__file__).resolve().parent


def data(n: int, seed: int):
    sensor = Sensor(seed)
    out = []
    for _ in range(n):
        t, v = sensor.read()
        x = [(t - MEAN[0]) / SCALE[0], (v - MEAN[1]) / SCALE[1]]
        out.append((x, 1.0 if is_faulty(t, v) else 0.0))
    return out


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def train(hidden: int, samples, epochs: int, rate: float, seed: int) -> Model:
    rng = random.Random(seed)
    if hidden == 0:
        w2 = [rng.gauss(0, 0.1) for _ in range(2)]
        b2 = 0.0
        for _ in range(epochs):
            rng.shuffle(samples)
            for x, y in samples:
                g = sigmoid(w2[0] * x[0] + w2[1] * x[1] + b2) - y
                w2 = [w2[i] - rate * g * x[i] for i in range(2)]
                b2 -= rate * g
        layers = [Layer([w2], [b2], "sigmoid")]
    else:
        w1 = [[rng.gauss(0, 1.0) for _ in range(2)] for _ in range(hidden)]
        b1 = [rng.gauss(0, 0.5) for _ in range(hidden)]
        w2 = [rng.gauss(0, 0.5) for _ in range(hidden)]
        b2 = 0.0
        for _ in range(epochs):
            rng.shuffle(samples)
            for x, y in samples:
                z1 = [w1[j][0] * x[0] + w1[j][1] * x[1] + b1[j] for j in range(hidden)]
                h = [z if z > 0 else 0.0 for z in z1]
                g = sigmoid(sum(w2[j] * h[j] for j in range(hidden)) + b2) - y
                for j in range(hidden):
                    gh = g * w2[j] if z1[j] > 0 else 0.0
                    w2[j] -= rate * g * h[j]
                    w1[j][0] -= rate * gh * x[0]
                    w1[j][1] -= rate * gh * x[1]
                    b1[j] -= rate * gh
                b2 -= rate * g
        layers = [Layer(w1, b1, "relu"), Layer([w2], [b2], "sigmoid")]
    return Model("detector", "", list(MEAN), list(SCALE), layers)


def accuracy(model: Model, samples) -> float:
    return sum((model.predict([x[0] * SCALE[0] + MEAN[0], x[1] * SCALE[1] + MEAN[1]]) >= 0.5)
               == (y == 1.0) for x, y in samples) / len(samples)


def main() -> None:
    train_set, test_set = data(2000, 11), data(1000, 12)
    for version, hidden, epochs in (("1.0.0", 0, 20), ("2.0.0", 8, 60)):
        model = train(hidden, list(train_set), epochs, 0.05, 7)
        doc = model.to_json()
        doc["version"] = version
        path = HERE / "models" / f"detector-{version}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{path.name}: accuracy {accuracy(model, test_set):.3f} on simulated readings")


if __name__ == "__main__":
    main()
