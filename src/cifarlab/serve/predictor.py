"""Inference on an exported ONNX model: preprocess -> infer -> postprocess, no torch.

    python -c "from cifarlab.serve.predictor import Predictor; print(Predictor.load().info)"

The same functions serve the API (`cifarlab serve`, through the micro-batcher) and the CLI
(`cifarlab predict`): `Predictor.predict_arrays(images)` takes uint8 RGB `(N, 32, 32, 3)` as
`cifarlab.serve.imaging.load_image` returns them, normalises them with
`cifarlab.preprocess.normalize` (the training evaluation path) and returns one `Prediction`
per image. The model's description (`ModelInfo`) lives in the ONNX file's `metadata_props`,
written by `cifarlab export`, so a model file is self-describing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD, CLASSES, IMAGE_SIZE
from cifarlab.errors import CifarlabError
from cifarlab.preprocess import normalize

log = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"
INPUT_NAME = "input"  # the name `cifarlab export` gives the graph input
_PREFIX = "cifarlab."  # metadata_props keys are namespaced so other tools' keys never clash


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

    def to_props(self) -> dict[str, str]:
        """String key/values for ONNX `metadata_props` (JSON-encoded values)."""
        data = asdict(self)
        data.pop("sha256")
        data.pop("robustness")
        return {_PREFIX + k: json.dumps(v) for k, v in data.items() if v is not None}

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, default_name: str) -> ModelInfo:
        """Read `to_props` output back; keys that are absent keep their defaults."""
        values: dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(_PREFIX):
                continue
            try:
                values[key[len(_PREFIX) :]] = json.loads(raw)
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


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top class, its probability and all class probabilities."""

    predicted_class: str
    class_index: int
    confidence: float
    probabilities: dict[str, float]


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 `(N, 32, 32, 3)` RGB -> float32 `(N, 3, 32, 32)`, exactly as in evaluation."""
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected images of shape (N, 32, 32, 3), got {images.shape}")
    return normalize(images)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def postprocess(logits: np.ndarray, classes: tuple[str, ...]) -> list[Prediction]:
    """Logits `(N, C)` -> one `Prediction` per row."""
    probs = softmax(logits)
    out = []
    for row in probs:
        top = int(row.argmax())
        out.append(
            Prediction(
                predicted_class=classes[top],
                class_index=top,
                confidence=float(row[top]),
                probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
            )
        )
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar_robustness(path: Path, sha256: str) -> dict[str, Any] | None:
    """The `robustness` summary of the side-car JSON, if it describes this very file."""
    side = path.with_suffix(".json")
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    summary = data.get("robustness") if isinstance(data, dict) else None
    if not isinstance(summary, dict) or data.get("sha256") != sha256:
        return None
    return summary


class Predictor:
    """An ONNX Runtime session plus the model's metadata; safe to call from one thread."""

    def __init__(self, model_path: Path | str = BUNDLED_MODEL, *, threads: int = 0) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(
                f"model file {path} not found; export one with "
                "`cifarlab export RUN --out PATH.onnx` or point CIFARLAB_MODEL_PATH / "
                "--model at an existing .onnx file"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One request batch runs at a time; all parallelism is inside the operators.
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        # Worker threads spin while a call runs (waking a sleeping thread for every operator
        # made a single-image call 1.5x slower) and stop spinning when it returns: by default
        # they keep spinning afterwards, burning the core that the event loop needs to parse
        # the next requests. Measured by bench/ort_spin.py (reports/bench/ort_spin.json).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(
                f"cannot load ONNX model {path}: {exc}; re-export it with `cifarlab export`"
            ) from None
        self.path = path
        props = self.session.get_modelmeta().custom_metadata_map
        info = ModelInfo.from_props(props, default_name=path.stem)
        sha = file_sha256(path)
        self.info = ModelInfo(
            **{**asdict(info), "sha256": sha, "robustness": _sidecar_robustness(path, sha)}
        )
        self._check_contract()

    @classmethod
    def load(cls, model_path: Path | str | None = None, *, threads: int = 0) -> Predictor:
        return cls(BUNDLED_MODEL if model_path is None else model_path, threads=threads)

    def _check_contract(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"model {self.path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "expected one input (N, 3, 32, 32) and one logits output (N, classes)"
            )
        shape = inputs[0].shape
        if inputs[0].type != "tensor(float)" or list(shape[1:]) != [3, IMAGE_SIZE, IMAGE_SIZE]:
            raise ModelError(
                f"model {self.path} takes {inputs[0].type} {shape}; expected float32 "
                "(N, 3, 32, 32). Export it with `cifarlab export`"
            )
        self._input_name = inputs[0].name
        out_shape = outputs[0].shape
        n_out = out_shape[-1] if len(out_shape) == 2 else None
        if isinstance(n_out, int) and n_out != len(self.info.classes):
            raise ModelError(
                f"model {self.path} outputs {n_out} logits but its metadata lists "
                f"{len(self.info.classes)} classes; re-export it with `cifarlab export`"
            )
        # Serving normalises with the CIFAR-10 constants (`cifarlab.preprocess`), so a model
        # trained with other statistics would silently get wrong inputs: refuse it instead.
        checks = (("mean", self.info.mean, CIFAR_MEAN), ("std", self.info.std, CIFAR_STD))
        for label, got, want in checks:
            if len(got) != 3 or not np.allclose(got, want, atol=1e-4):
                raise ModelError(
                    f"model {self.path} expects input {label} {list(got)}, but serving "
                    f"normalises with the CIFAR-10 {label} {list(want)}; export a model "
                    "trained on cifarlab's preprocessing"
                )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 `(N, 3, 32, 32)` -> logits `(N, classes)`."""
        (logits,) = self.session.run(None, {self._input_name: batch})
        return np.asarray(logits)

    def predict_arrays(self, images: np.ndarray) -> list[Prediction]:
        """uint8 RGB `(N, 32, 32, 3)` -> one `Prediction` per image, in order."""
        if len(images) == 0:
            return []
        return postprocess(self.infer(preprocess(images)), self.info.classes)
