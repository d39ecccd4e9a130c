"""Evaluate a trained run on the test split: accuracy, loss, gap, per-class metrics, calibration.

    cifarlab evaluate runs/baseline_cnn --which best

Writes `eval.json` and `confusion_matrix.png` into the run folder. Definitions
(docs/evaluation.md has the long form):

- overfitting gap: train accuracy minus validation accuracy at the epoch of the evaluated
  checkpoint, both read from the run's `metrics.csv`.
- ECE: expected calibration error with 15 equal-width confidence bins,
  sum_b |B_b|/N * |acc(B_b) - conf(B_b)|.
- temperature scaling: one scalar T > 0 fitted on the validation split by LBFGS on the NLL of
  `logits / T`; ECE and NLL are reported on the test split before and after.
- inference images/s: test-set forward passes, batch `batch_size`, through onnxruntime (the
  serving engine; `backend="torch"` for eager PyTorch) with torch's thread count; it includes
  nothing but the model (data is already normalised).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.constants import CLASSES
from cifarlab.errors import CifarlabError
from cifarlab.preprocess import normalize
from cifarlab.runinfo import hardware_line

log = logging.getLogger(__name__)

ECE_BINS = 15
EVAL_FILE = "eval.json"
CONFUSION_FILE = "confusion_matrix.png"

Split = tuple[np.ndarray, np.ndarray]  # uint8 (N, 32, 32, 3), int64 (N,)


class EvaluationError(CifarlabError):
    """A run folder or its files cannot be evaluated as they are."""


# ---------------------------------------------------------------- metrics on arrays (numpy)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # stable: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of `logits` (N, C) against integer `labels` (N,)."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE over `n_bins` equal-width bins of top-1 confidence in (0, 1]."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin b holds confidences in (b/n, (b+1)/n]; confidence is always > 0 for softmax outputs.
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of `logits / T` (LBFGS over log T, so T stays > 0)."""
    import torch

    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    if not math.isfinite(t):
        raise EvaluationError("temperature scaling diverged; the validation logits are not finite")
    return t


def per_class_metrics(
    labels: np.ndarray, preds: np.ndarray, classes: tuple[str, ...] | list[str] = CLASSES
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class (scikit-learn; 0 where undefined)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        labels, preds, labels=list(range(len(classes))), zero_division=0
    )
    return {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(classes)
    }


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Counts (true class rows, predicted class columns)."""
    from sklearn.metrics import confusion_matrix

    return np.asarray(confusion_matrix(labels, preds, labels=list(range(n_classes))))


def save_confusion_figure(
    cm: np.ndarray, path: Path, classes: tuple[str, ...] | list[str] = CLASSES, title: str = ""
) -> Path:
    """Row-normalised confusion matrix heat map with counts, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: figures only go to files
    import matplotlib.pyplot as plt

    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix (test, row-normalised; numbers are counts)")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- run folder helpers


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Rows of `metrics.csv` as floats (epoch included)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise EvaluationError(
            f"{path} is missing; is {run_dir} a finished training run? "
            "Train one with `cifarlab train` or `cifarlab transfer`."
        )
    with open(path, newline="") as fh:
        rows = [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(fh)
        ]
    if not rows:
        raise EvaluationError(f"{path} has no epochs; the run stopped before its first epoch.")
    return rows


def overfitting_gap(
    rows: list[dict[str, float]], epoch: int
) -> tuple[float | None, float | None, float | None]:
    """(gap, train_acc, val_acc) at `epoch` (the last row if that epoch is not logged).

    Runs that hold out no validation data (the fast speed-run trains on all 50,000) leave the
    val columns empty; their gap is None rather than a made-up number."""
    by_epoch = {int(r["epoch"]): r for r in rows}
    row = by_epoch.get(int(epoch), rows[-1])
    train, val = row.get("train_acc"), row.get("val_acc")
    gap = train - val if train is not None and val is not None else None
    return gap, train, val


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented JSON via `checkpoint.atomic_write_text` (report.py uses it)."""
    from cifarlab.checkpoint import atomic_write_text  # unique temp name, fsync, rename

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def onnx_session(model: Any) -> Any:
    """An onnxruntime session running `model` (exported to a temporary ONNX file).

    Serving runs models through onnxruntime, and it is several times faster than eager torch
    on small CPUs for depthwise-conv nets such as MobileNetV2, so evaluation uses it too.
    This throwaway session uses the TorchScript exporter, not `cifarlab.export`'s
    torch.export-based one that writes the served file: 0.2 s against 8.5 s for baseline_cnn,
    timed once here; nothing of it is published."""
    import tempfile
    import warnings

    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model.eval(),
                (torch.zeros(2, 3, 32, 32),),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["x"],
                output_names=["out"],
                dynamic_axes={"x": {0: "batch"}, "out": {0: "batch"}},
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict_logits(
    model: Any, images: np.ndarray, batch_size: int = 256, session: Any = None
) -> tuple[np.ndarray, float]:
    """Logits for uint8 NHWC `images` through the shared preprocessing; (logits, seconds).

    With `session` (from `onnx_session(model)`) onnxruntime computes them, else torch.
    Seconds cover only the forward passes, so images/s measures the model, not numpy."""
    import torch

    x = normalize(images)
    model.eval()
    out: list[np.ndarray] = []
    seconds = 0.0
    with torch.inference_mode():

        def run(xb: np.ndarray) -> np.ndarray:
            if session is not None:
                return np.asarray(session.run(None, {"x": xb})[0])
            return model(torch.from_numpy(xb)).float().numpy()

        run(x[:2])  # warm-up: first-call allocations are not throughput
        for i in range(0, len(x), batch_size):
            t0 = time.perf_counter()
            logits = run(x[i : i + batch_size])
            seconds += time.perf_counter() - t0
            out.append(logits)
    return np.concatenate(out), seconds


# ---------------------------------------------------------------- the command


def evaluate_run(
    run_dir: str | os.PathLike[str],
    which: str = "best",
    data: Mapping[str, Split] | None = None,
    batch_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    backend: str = "onnxruntime",
) -> dict[str, Any]:
    """Evaluate checkpoint `which` of `run_dir` on test (temperature fitted on val).

    `data` maps "val" and "test" to (images, labels); by default they come from
    `cifarlab.data.load_split`. Returns the dict written to `eval.json`."""
    import torch

    from cifarlab.checkpoint import load_model_from_run
    from cifarlab.models.mobilenet import count_params

    run = Path(run_dir)
    if not run.is_dir():
        raise EvaluationError(
            f"run folder {run} does not exist; pass a folder under runs/ (see `ls runs`)."
        )
    if which not in ("best", "last"):
        raise EvaluationError(f"--which must be 'best' or 'last', got {which!r}")
    model, meta = load_model_from_run(run, which=which)
    classes = list(meta.get("classes") or CLASSES)
    if data is None:
        from cifarlab.data import load_split

        data = {s: load_split(s, cache_dir=cache_dir) for s in ("val", "test")}

    test_x, test_y = data["test"]
    val_x, val_y = data["val"]
    session = None
    if backend == "onnxruntime":
        try:
            session = onnx_session(model)
        except Exception as exc:  # a model the exporter cannot trace is still evaluated
            log.warning("ONNX export failed (%s); evaluating with torch", exc)
            backend = "torch"
    elif backend != "torch":
        raise EvaluationError(f"--backend must be onnxruntime or torch, got {backend!r}")
    test_logits, seconds = predict_logits(model, test_x, batch_size, session)
    val_logits, _ = predict_logits(model, val_x, batch_size, session)
    test_y = np.asarray(test_y, dtype=np.int64)
    val_y = np.asarray(val_y, dtype=np.int64)

    preds = test_logits.argmax(axis=1)
    temperature = fit_temperature(val_logits, val_y)
    rows = read_metrics(run)
    epoch = int(meta.get("epoch", rows[-1]["epoch"]))
    gap, train_acc, val_acc = overfitting_gap(rows, epoch)
    cm = confusion(test_y, preds, len(classes))
    total, trainable = count_params(model)

    result: dict[str, Any] = {
        "run": run.name,
        "model": meta.get("model"),
        "which": which,
        "epoch": epoch,
        "n_test": len(test_y),
        "test_accuracy": float((preds == test_y).mean()),
        "test_loss": nll(test_logits, test_y),
        "overfitting_gap": gap,
        "train_accuracy_at_epoch": train_acc,
        "val_accuracy_at_epoch": val_acc,
        "ece": expected_calibration_error(softmax(test_logits), test_y),
        "temperature": temperature,
        "ece_after_temperature": expected_calibration_error(
            softmax(test_logits / temperature), test_y
        ),
        "test_loss_after_temperature": nll(test_logits / temperature, test_y),
        "val_ece": expected_calibration_error(softmax(val_logits), val_y),
        "val_ece_after_temperature": expected_calibration_error(
            softmax(val_logits / temperature), val_y
        ),
        "ece_bins": ECE_BINS,
        "params_total": int(total),
        "params_trainable": int(trainable),
        "inference_images_per_second": float(len(test_y) / seconds) if seconds > 0 else None,
        "inference_batch_size": batch_size,
        "inference_backend": backend,
        "inference_threads": torch.get_num_threads(),
        "per_class": per_class_metrics(test_y, preds, classes),
        "confusion_matrix": cm.tolist(),
        "classes": classes,
        "hardware": hardware_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save_confusion_figure(
        cm, run / CONFUSION_FILE, classes, title=f"{run.name}: test confusion matrix"
    )
    write_json_atomic(run / EVAL_FILE, result)
    log.info(
        "%s: test acc %.4f, loss %.4f, ECE %.4f -> %.4f (T=%.3f)",
        run.name,
        result["test_accuracy"],
        result["test_loss"],
        result["ece"],
        result["ece_after_temperature"],
        temperature,
    )
    return result
