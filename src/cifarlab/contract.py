"""The exported model's contract: what `cifarlab export` writes and `cifarlab serve` reads.

    python -c "from cifarlab.contract import ModelInfo; print(ModelInfo(name='x').to_props())"

One place for the names, shapes and preprocessing that both sides of an ONNX file must agree
on, so export (which needs torch) and serving (which must not import it) cannot drift:

- the graph input `input`: float32 `(N, 3, 32, 32)`, layout NCHW, RGB scaled to 0-1 and then
  normalised per channel with `mean`/`std` (`cifarlab.preprocess.normalize` does exactly this);
- the graph output `logits`: float32 `(N, classes)`;
- optionally a second output `cam`: float32 `(N, classes, h, w)`, the class activation map of
  every class on the network's last feature grid (see `docs/serving.md`); models without it
  serve the same, only without explanations;
- the description of the model (`ModelInfo`) as JSON strings in the file's `metadata_props`
  under keys prefixed `cifarlab.`.

Only the standard library and `cifarlab.constants`/`errors` are imported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD, CLASSES, IMAGE_SIZE
from cifarlab.errors import CifarlabError

log = logging.getLogger(__name__)

INPUT_NAME = "input"  # graph input, float32 (N, 3, 32, 32)
OUTPUT_NAME = "logits"  # graph output, float32 (N, classes)
CAM_OUTPUT_NAME = "cam"  # optional graph output, float32 (N, classes, h, w)
LAYOUT = "NCHW"
CHANNEL_ORDER = "RGB"
INPUT_SCALE = "uint8 RGB / 255, then (x - mean) / std per channel"
METADATA_PREFIX = "cifarlab."  # metadata_props keys are namespaced so other tools' keys never clash


class ModelError(CifarlabError):
    """The model file is missing, unreadable, or does not match the serving contract."""


@dataclass(frozen=True)
class ModelInfo:
    """What a served model is; stored as string `metadata_props` in the ONNX file."""

    name: str
    classes: tuple[str, ...] = CLASSES
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD
    input_size: int = IMAGE_SIZE
    test_accuracy: float | None = None
    tta: bool = False
    created: str | None = None
    training_command: str | None = None
    run: str | None = None
    exporter: str | None = None
    opset: int | None = None
    cifarlab_version: str | None = None
    # The graph's logits are already divided by this (fitted on held-out training images), so
    # its softmax is the calibrated probability; None: an uncalibrated graph.
    temperature: float | None = None
    # Clean / JPEG-75 / mean-corruption accuracy and ECE, measured after export by
    # `cifarlab robustness` and kept in the side-car JSON (a file cannot hold its own result).
    robustness: dict[str, Any] | None = field(default=None, compare=False)
    # Not stored in the file itself (it cannot contain its own hash): filled in on load.
    sha256: str | None = field(default=None, compare=False)

    @property
    def version(self) -> str:
        """A short content hash: two files with the same version are the same model."""
        return (self.sha256 or "unknown")[:12]

    def input_shape(self) -> tuple[str, int, int, int]:
        return ("N", 3, self.input_size, self.input_size)

    def to_props(self) -> dict[str, str]:
        """String key/values for ONNX `metadata_props` (JSON-encoded values)."""
        data = asdict(self)
        data.pop("sha256")
        data.pop("robustness")
        return {METADATA_PREFIX + k: json.dumps(v) for k, v in data.items() if v is not None}

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, default_name: str) -> ModelInfo:
        """Read `to_props` output back; keys that are absent keep their defaults."""
        values: dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(METADATA_PREFIX):
                continue
            try:
                values[key[len(METADATA_PREFIX) :]] = json.loads(raw)
            except json.JSONDecodeError:
                raise ModelError(
                    f"model metadata {key!r} is not valid JSON ({raw[:80]!r}); "
                    "re-export the model with `cifarlab export`"
                ) from None
        if not values:
            log.warning("the model has no cifarlab metadata; assuming CIFAR-10 classes and stats")
        known = {f for f in cls.__dataclass_fields__ if f not in ("sha256", "robustness")}
        unknown = sorted(set(values) - known)
        if unknown:
            log.warning("ignoring unknown model metadata keys: %s", ", ".join(unknown))
        kwargs = {k: v for k, v in values.items() if k in known}
        for key in ("classes", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        kwargs.setdefault("name", default_name)
        return cls(**kwargs)
