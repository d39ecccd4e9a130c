"""Inference on an exported ONNX model: preprocess -> infer -> postprocess, no torch.

    python -c "from cifarlab.serve.predictor import Predictor; print(Predictor.load().info)"

The same functions serve the API (`cifarlab serve`, through the micro-batcher) and the CLI
(`cifarlab predict`): `Predictor.predict_arrays(images)` takes uint8 RGB `(N, 32, 32, 3)` as
`cifarlab.serve.imaging.load_image` returns them, normalises them with
`cifarlab.preprocess.normalize` (the training evaluation path) and returns one `Prediction`
per image. The model's description (`cifarlab.contract.ModelInfo`) lives in the ONNX file's
`metadata_props`, written by `cifarlab export`, so a model file is self-describing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD, IMAGE_SIZE
from cifarlab.contract import (
    CAM_OUTPUT_NAME,
    OUTPUT_NAME,
    ModelError,
    ModelInfo,
)
from cifarlab.io import sha256_file
from cifarlab.preprocess import normalize

log = logging.getLogger(__name__)

BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"
__all__ = ["BUNDLED_MODEL", "ModelError", "ModelInfo", "Prediction", "Predictor", "softmax"]


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top class, its probability and all class probabilities."""

    predicted_class: str
    class_index: int
    confidence: float
    probabilities: dict[str, float]
    # The predicted class's activation map `(h, w)` on the model's last feature grid, when the
    # graph has a `cam` output (see `cifarlab.contract`); None otherwise.
    cam: np.ndarray | None = field(default=None, compare=False, repr=False)


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


def postprocess(
    logits: np.ndarray, classes: tuple[str, ...], cams: np.ndarray | None = None
) -> list[Prediction]:
    """Logits `(N, C)` (and class activation maps `(N, C, h, w)`) -> one `Prediction` per row."""
    probs = softmax(logits)
    out = []
    for i, row in enumerate(probs):
        top = int(row.argmax())
        out.append(
            Prediction(
                predicted_class=classes[top],
                class_index=top,
                confidence=float(row[top]),
                probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
                cam=None if cams is None else cams[i, top].copy(),
            )
        )
    return out


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
        sha = sha256_file(path)
        self.info = ModelInfo(
            **{**asdict(info), "sha256": sha, "robustness": _sidecar_robustness(path, sha)}
        )
        self._check_contract()

    @classmethod
    def load(cls, model_path: Path | str | None = None, *, threads: int = 0) -> Predictor:
        return cls(BUNDLED_MODEL if model_path is None else model_path, threads=threads)

    def _check_contract(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [o.name for o in outputs]
        if len(inputs) != 1 or not (
            len(outputs) == 1 or sorted(names) == sorted([OUTPUT_NAME, CAM_OUTPUT_NAME])
        ):
            raise ModelError(
                f"model {self.path} has {len(inputs)} inputs and outputs {names}; expected "
                f"one input (N, 3, 32, 32) and a logits output (N, classes), optionally with "
                f"a {CAM_OUTPUT_NAME!r} output. Export it with `cifarlab export`"
            )
        shape = inputs[0].shape
        if inputs[0].type != "tensor(float)" or list(shape[1:]) != [3, IMAGE_SIZE, IMAGE_SIZE]:
            raise ModelError(
                f"model {self.path} takes {inputs[0].type} {shape}; expected float32 "
                "(N, 3, 32, 32). Export it with `cifarlab export`"
            )
        self._input_name = inputs[0].name
        logits = outputs[0] if len(outputs) == 1 else outputs[names.index(OUTPUT_NAME)]
        # Ask for the map only when the graph has one; its cost is one 1x1 projection of the
        # last feature grid, tiny next to the network.
        self._outputs = [logits.name] + ([CAM_OUTPUT_NAME] if len(outputs) == 2 else [])
        out_shape = logits.shape
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

    @property
    def has_cam(self) -> bool:
        """Whether the graph returns class activation maps (`/predict?explain=true`)."""
        return len(self._outputs) == 2

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalised float32 `(N, 3, 32, 32)` -> logits `(N, classes)` and the maps, if any."""
        got = self.session.run(self._outputs, {self._input_name: batch})
        return np.asarray(got[0]), (np.asarray(got[1]) if len(got) == 2 else None)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 `(N, 3, 32, 32)` -> logits `(N, classes)`."""
        return self.run(batch)[0]

    def predict_normalized(self, batch: np.ndarray) -> list[Prediction]:
        """Normalised float32 `(N, 3, 32, 32)` -> one `Prediction` per image, in order."""
        if len(batch) == 0:
            return []
        logits, cams = self.run(batch)
        return postprocess(logits, self.info.classes, cams)

    def predict_arrays(self, images: np.ndarray) -> list[Prediction]:
        """uint8 RGB `(N, 32, 32, 3)` -> one `Prediction` per image, in order."""
        return self.predict_normalized(preprocess(images))
