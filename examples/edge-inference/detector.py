"""The example's model and sensor: a tiny multilayer perceptron in its own JSON
format, evaluated in pure Python, and a simulated machine whose temperature
and vibration say whether it is faulty.

Model file (``model.json``, the bundle's one payload)::

    {"format": "drover-example-mlp/1", "name": "detector", "version": "2.0.0",
     "features": ["temp_c", "vibration_mm_s"],
     "mean": [55.0, 1.0], "scale": [15.0, 0.5],
     "layers": [{"weights": [[...], ...], "bias": [...], "activation": "relu"},
                {"weights": [[...]], "bias": [...], "activation": "sigmoid"}]}

Each layer maps its input vector x to activation(W·x + b), W given row by row
(one row per output); the last layer has one sigmoid output, the probability
that the machine is faulty.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

FORMAT = "drover-example-mlp/1"
FEATURES = ["temp_c", "vibration_mm_s"]
ACTIVATIONS = ("relu", "sigmoid", "linear")


class ModelError(Exception):
    """A model file that cannot be used (the service keeps the model it has)."""


@dataclass(frozen=True)
class Layer:
    weights: List[List[float]]
    bias: List[float]
    activation: str


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    mean: List[float]
    scale: List[float]
    layers: List[Layer]

    def predict(self, features: Sequence[float]) -> float:
        """Probability that the machine is faulty."""
        x = [(v - m) / s for v, m, s in zip(features, self.mean, self.scale)]
        for layer in self.layers:
            out = []
            for row, b in zip(layer.weights, layer.bias):
                z = b
                for w, v in zip(row, x):
                    z += w * v
                out.append(_activate(layer.activation, z))
            x = out
        return x[0]

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "name": self.name, "version": self.version, "features": FEATURES,
            "mean": self.mean, "scale": self.scale,
            "layers": [{"weights": [[round(w, 6) for w in row] for row in l.weights],
                        "bias": [round(b, 6) for b in l.bias], "activation": l.activation}
                       for l in self.layers],
        }


def _activate(kind: str, z: float) -> float:
    if kind == "relu":
        return z if z > 0 else 0.0
    if kind == "sigmoid":
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0
    return z


def load(path: Path) -> Model:
    """Reads and checks a model file; raises :class:`ModelError` naming the problem."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path} is not a {FORMAT} model")
    if doc.get("features") != FEATURES:
        raise ModelError(f"{path} expects features {doc.get('features')}, not {FEATURES}")
    try:
        layers = [Layer([[float(w) for w in row] for row in l["weights"]],
                        [float(b) for b in l["bias"]], str(l["activation"]))
                  for l in doc["layers"]]
        model = Model(str(doc["name"]), str(doc["version"]), [float(v) for v in doc["mean"]],
                      [float(v) for v in doc["scale"]], layers)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path} is malformed: {e!r}") from None
    width = len(FEATURES)
    for i, layer in enumerate(model.layers):
        if layer.activation not in ACTIVATIONS:
            raise ModelError(f"{path}: layer {i} has unknown activation {layer.activation!r}")
        if not layer.weights or len(layer.weights) != len(layer.bias) \
                or any(len(row) != width for row in layer.weights):
            raise ModelError(f"{path}: layer {i} does not fit an input of {width}")
        width = len(layer.weights)
    if width != 1 or not model.layers or model.layers[-1].activation != "sigmoid":
        raise ModelError(f"{path}: the last layer must be one sigmoid output")
    if len(model.mean) != len(FEATURES) or any(s <= 0 for s in model.scale) \
            or len(model.scale) != len(FEATURES):
        raise ModelError(f"{path}: mean and scale must give one value per feature (scale > 0)")
    return model


# -- the simulated machine ------------------------------------------------------

MEAN = [55.0, 1.0]
SCALE = [15.0, 0.5]


def is_faulty(temp_c: float, vibration: float) -> bool:
    """The machine's true state: far from its normal operating point in either way."""
    a = (temp_c - MEAN[0]) / SCALE[0]
    b = (vibration - MEAN[1]) / SCALE[1]
    return a * a + b * b > 2.5


class Sensor:
    """A simulated machine: readings around its operating point, now and then far off."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)

    def read(self) -> Tuple[float, float]:
        spread = 1.6 if self.rng.random() < 0.3 else 1.0
        temp = self.rng.gauss(MEAN[0], SCALE[0] * spread)
        vibration = max(0.0, self.rng.gauss(MEAN[1], SCALE[1] * spread))
        return temp, vibration


def rule(temp_c: float, vibration: float) -> bool:
    """The fallback the service used before any model: fixed thresholds."""
    return temp_c > 80.0 or vibration > 1.9 or temp_c < 30.0
