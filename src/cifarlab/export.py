"""Export a trained run to a self-describing ONNX file and check it against PyTorch.

    cifarlab export runs/fast94 --out src/cifarlab/serve/models/default.onnx --tta

The ONNX graph takes float32 `(N, 3, 32, 32)` normalised like `cifarlab.preprocess.normalize`
(dynamic batch axis, opset 18) and returns logits `(N, 10)`. With `tta=True` the graph is a
wrapper that averages the logits of each image and its horizontal mirror, so serving gets
flip test-time augmentation without any code of its own.

The description of the model (`cifarlab.serve.predictor.ModelInfo`: class names, mean/std,
input size, model name, test accuracy, training command, date) goes into the file's
`metadata_props`, and again, with the file's sha256 and the parity result, into a side-car
JSON beside it (`default.onnx` -> `default.json`). Nothing is written unless the export passes
the parity check (max |logit difference| <= 1e-3 and the same top-1 on >= 99.9% of the test
images); both files are written to a temporary name first and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab import __version__
from cifarlab.constants import CIFAR_MEAN, CIFAR_STD, CLASSES, IMAGE_SIZE
from cifarlab.contract import (
    CAM_OUTPUT_NAME,
    INPUT_NAME,
    INPUT_SCALE,
    LAYOUT,
    OUTPUT_NAME,
    ModelInfo,
)
from cifarlab.errors import CifarlabError
from cifarlab.io import give_default_mode, sha256_file, write_json_atomic
from cifarlab.preprocess import normalize

log = logging.getLogger(__name__)

OPSET = 18  # the dynamo exporter's native opset; onnxruntime >= 1.16 runs it
PARITY_MAX_ABS_DIFF = 1e-3  # fp32 logits
PARITY_MIN_TOP1_AGREEMENT = 0.999


class ExportError(CifarlabError):
    """The run cannot be exported, or the exported graph disagrees with PyTorch."""


class FlipTTA(nn.Module):
    """Mean of the outputs of an image batch and of its horizontal mirror.

    Wraps a plain model (logits) or a `WithCam` (logits, maps): the mirror's maps are flipped
    back so that both passes' maps line up with the input image.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        # (B, 3, H, W): dim 3 is the width, so this is a left-right mirror.
        a, b = self.model(x), self.model(torch.flip(x, dims=[3]))
        if isinstance(a, tuple):
            return (a[0] + b[0]) / 2, (a[1] + torch.flip(b[1], dims=[3])) / 2
        return (a + b) / 2


class WithCam(nn.Module):
    """Logits plus class activation maps `(B, classes, h, w)` from one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model: Any = self.model  # any model with the three pieces `supports_cam` checks
        features = model.forward_features(x)  # (B, C, h, w)
        return model.forward_head(features), model.forward_cam(features)


def supports_cam(model: nn.Module) -> bool:
    """Models whose head is global pooling + linear expose `forward_cam` (fastnet does)."""
    return all(
        callable(getattr(model, name, None))
        for name in ("forward_features", "forward_head", "forward_cam")
    )


class TemperatureScaled(nn.Module):
    """`model(x) / temperature`: calibrated logits baked into the exported graph."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ExportError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def run_temperature(meta: dict[str, Any], tta: bool) -> float:
    """The temperature a run fitted on its held-out images for this TTA view.

    `cifarlab fast-train --holdout F` stores one per view in the checkpoint's metrics.
    """
    temps = (meta.get("metrics") or {}).get("temperature")
    view = "flip" if tta else "none"
    if not isinstance(temps, dict) or not isinstance(temps.get(view), int | float):
        raise ExportError(
            "this run has no temperature fitted on held-out data; train it with "
            "`cifarlab fast-train --holdout 0.05`, or pass --temperature VALUE"
        )
    return float(temps[view])


@dataclass(frozen=True)
class ParityReport:
    n_images: int
    max_abs_diff: float
    top1_agreement: float
    passed: bool


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    info: ModelInfo
    parity: ParityReport | None


def _output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def _to_onnx(model: nn.Module, path: Path, output_names: list[str]) -> str:
    """Trace `model` into `path` with a dynamic batch axis; returns the exporter used."""
    example = (torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE),)
    # The torch.export-based exporter gives clean graphs and is torch's future; the
    # TorchScript one is the fallback for models torch.export cannot capture.
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=output_names,
            )
        return "dynamo"
    except Exception as exc:
        log.warning("torch.export-based ONNX export failed (%s); using TorchScript export", exc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *output_names]},
            input_names=[INPUT_NAME],
            output_names=output_names,
        )
    return "torchscript"


def graph_module(model: nn.Module, *, tta: bool, cam: bool) -> nn.Module:
    """The module that is exported: the model, with its maps if `cam`, mirrored if `tta`."""
    inner = WithCam(model) if cam else model
    return FlipTTA(inner) if tta else inner


def export_model(
    model: nn.Module, out: Path, info: ModelInfo, *, tta: bool = False, cam: bool | None = None
) -> str:
    """Write `model` (wrapped in `FlipTTA` if `tta`) to ONNX at `out` with `info` as metadata.

    `cam` adds the class-activation-map output (default: whenever the model supports it).
    Writes `out` directly; `export_run` calls it on a temporary path. Returns the exporter used.
    """
    import onnx

    cam = supports_cam(model) if cam is None else cam
    if cam and not supports_cam(model):
        raise ExportError(
            f"{type(model).__name__} has no forward_cam (a global-pool + linear head): export "
            "it without class activation maps"
        )
    graph_model = graph_module(model, tta=tta, cam=cam)
    graph_model.eval()
    outputs = [OUTPUT_NAME, CAM_OUTPUT_NAME] if cam else [OUTPUT_NAME]
    exporter = _to_onnx(graph_model, out, outputs)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    info = ModelInfo(**{**asdict(info), "tta": tta, "exporter": exporter, "opset": OPSET})
    # The dynamo exporter annotates every node with the Python stack that produced it: source
    # paths of the exporting machine that a published model must not carry.
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    del proto.metadata_props[:]
    for key, value in info.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "cifarlab"
    proto.producer_version = __version__
    onnx.save(proto, str(out))
    return exporter


@torch.inference_mode()
def check_parity(
    onnx_path: Path,
    model: nn.Module,
    images: np.ndarray,
    *,
    tta: bool = False,
    batch_size: int = 250,
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on uint8 images, preprocessed as serving does.

    Passes when max |logit difference| <= 1e-3 and top-1 agrees on >= 99.9% of images. The
    class activation maps, when the graph has them, must agree within the same tolerance.
    """
    import onnxruntime as ort

    if len(images) == 0:
        raise ValueError("parity check needs at least one image")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    cam = CAM_OUTPUT_NAME in {o.name for o in session.get_outputs()}
    reference = graph_module(model, tta=tta, cam=cam)
    reference.eval()
    max_diff, agree = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size])  # the serving preprocessing
        got = session.run([OUTPUT_NAME, CAM_OUTPUT_NAME] if cam else [OUTPUT_NAME], {INPUT_NAME: x})
        want = reference(torch.from_numpy(x))
        want = [w.float().numpy() for w in (want if isinstance(want, tuple) else (want,))]
        for g, w in zip(got, want, strict=True):
            max_diff = max(max_diff, float(np.abs(np.asarray(g) - w).max()))
        agree += int((got[0].argmax(1) == want[0].argmax(1)).sum())
    top1 = agree / len(images)
    passed = max_diff <= PARITY_MAX_ABS_DIFF and top1 >= PARITY_MIN_TOP1_AGREEMENT
    return ParityReport(len(images), max_diff, top1, passed)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _test_accuracy(run_dir: Path, meta: dict[str, Any], which: str) -> float | None:
    """From the run's eval.json (of the same checkpoint), else the checkpoint's metrics."""
    evaluation = _read_json(run_dir / "eval.json")
    if evaluation.get("which", which) == which and "test_accuracy" in evaluation:
        return float(evaluation["test_accuracy"])
    metrics = meta.get("metrics") or {}
    for key in ("test_accuracy", "test_acc"):
        if isinstance(metrics.get(key), int | float):
            return float(metrics[key])
    return None


def _command_text(command: Any) -> str | None:
    """env.json stores the command line as a string or an argv list."""
    if isinstance(command, list):
        return shlex.join(str(a) for a in command)
    return str(command) if command else None


def _parity_images(n: int, cache_dir: Path | None) -> np.ndarray | None:
    from cifarlab.data import load_split

    try:
        images, _ = load_split("test", cache_dir=cache_dir)
    except CifarlabError as exc:
        log.warning("skipping the parity check: no prepared test split (%s)", exc)
        return None
    return images[:n]


def export_run(
    run_dir: Path | str,
    out: Path | str,
    *,
    which: str = "best",
    tta: bool = False,
    parity_images: int = 1000,
    cache_dir: Path | None = None,
    images: np.ndarray | None = None,
    temperature: float | str | None = None,
) -> ExportResult:
    """Export checkpoint `which` of `run_dir` to `out` (.onnx) plus its side-car JSON.

    The parity check runs on the first `parity_images` test images (`images` overrides them;
    0 skips the check). A failed check raises `ExportError` and writes nothing.
    `temperature` ("auto": the run's held-out fit, or a number) divides the graph's logits.
    """
    from cifarlab.checkpoint import load_model_from_run

    run_dir, out = Path(run_dir), Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out {out} must end in .onnx (the side-car JSON goes beside it)")
    model, meta = load_model_from_run(run_dir, which=which)
    if temperature == "auto":
        temperature = run_temperature(meta, tta)
    if temperature is not None:
        try:
            temperature = float(temperature)
        except ValueError:
            raise ExportError(
                f"--temperature {temperature!r} is neither 'auto' nor a number"
            ) from None
        model = TemperatureScaled(model, temperature)
    classes = tuple(meta.get("classes") or CLASSES)
    env = _read_json(run_dir / "env.json")
    info = ModelInfo(
        name=str(meta.get("model", run_dir.name)),
        classes=classes,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        input_size=IMAGE_SIZE,
        test_accuracy=_test_accuracy(run_dir, meta, which),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        training_command=_command_text(env.get("command")),
        run=f"{run_dir.name}/{which}",
        cifarlab_version=__version__,
        temperature=temperature,
    )
    if images is None and parity_images > 0:
        images = _parity_images(parity_images, cache_dir)
    return export_with_parity(model, out, info, tta=tta, images=images)


def export_with_parity(
    model: nn.Module,
    out: Path,
    info: ModelInfo,
    *,
    tta: bool = False,
    images: np.ndarray | None = None,
) -> ExportResult:
    """Export, check parity on `images` (if any), then move the ONNX and side-car into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        exporter = export_model(model, tmp, info, tta=tta)
        parity = None
        if images is not None and len(images) > 0:
            parity = check_parity(tmp, model, images, tta=tta)
            log.info(
                "parity on %d images: max |logit diff| %.2e, top-1 agreement %.4f",
                parity.n_images,
                parity.max_abs_diff,
                parity.top1_agreement,
            )
            if not parity.passed:
                raise ExportError(
                    f"the ONNX graph disagrees with PyTorch on {parity.n_images} images: max "
                    f"|logit diff| {parity.max_abs_diff:.2e} (limit {PARITY_MAX_ABS_DIFF}), "
                    f"top-1 agreement {parity.top1_agreement:.4f} (limit "
                    f"{PARITY_MIN_TOP1_AGREEMENT}); nothing was written to {out}"
                )
        sha = sha256_file(tmp)
        give_default_mode(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    info = ModelInfo(
        **{**asdict(info), "tta": tta, "exporter": exporter, "opset": OPSET, "sha256": sha}
    )
    side = sidecar_path(out)
    record = {
        **asdict(info),
        "onnx_file": out.name,
        "onnx_bytes": out.stat().st_size,
        "input": {"name": INPUT_NAME, "shape": list(info.input_shape()), "layout": LAYOUT},
        "outputs": _output_names(out),
        "input_scale": INPUT_SCALE,
        "parity": None if parity is None else asdict(parity),
        # Program name without its folder: no machine-specific paths in a committed file.
        "export_command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        if sys.argv and sys.argv[0]
        else None,
    }
    write_json_atomic(side, record)
    log.info("wrote %s (sha256 %s) and %s", out, sha[:12], side)
    return ExportResult(out, side, info, parity)
