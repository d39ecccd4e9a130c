"""Self-describing checkpoints: weights in safetensors, everything else in JSON.

    python -c "from cifarlab.checkpoint import load_model_from_run; help(load_model_from_run)"

A checkpoint is a pair of files next to each other, `<stem>.safetensors` and `<stem>.json`:

- `<stem>.safetensors`: the model's `state_dict` under its own keys, plus optional extra
  tensors (optimizer moments, RNG state) under the `extra/` prefix, so a model can be rebuilt
  from the plain keys alone (`model_state(tensors)`).
- `<stem>.json`: metadata, at least `format`, `model`, `model_kwargs`, `classes`, `epoch`,
  `metrics` (dict) and `config` (dict), plus the sha256 of the weights file so that a
  half-written or swapped pair is caught on load.

Both files are written to a temporary name and renamed, weights first: a crash leaves either
the old pair or a JSON whose hash no longer matches (reported as a clear error), never a
silently mixed checkpoint. Nothing here unpickles anything.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.errors import CifarlabError

log = logging.getLogger(__name__)

FORMAT = "cifarlab-checkpoint/1"
EXTRA_PREFIX = "extra/"
REQUIRED_META = ("model", "model_kwargs", "classes", "epoch", "metrics", "config")


class CheckpointError(CifarlabError):
    """A checkpoint or run folder is missing, truncated, corrupt or of an unknown format."""


def _paths(stem: Path | str) -> tuple[Path, Path]:
    stem = Path(stem)
    # Accept "best", "best.json" or "best.safetensors" alike.
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def give_default_mode(path: Path | str) -> None:
    """Give `path` the mode `open()` would have created it with (0666 minus the umask).

    `tempfile.mkstemp` creates private 0600 files; files renamed into place from one should
    be readable like any other (e.g. the serving container reads models as a non-root user).
    """
    os.chmod(path, 0o666 & ~_process_umask())


@functools.cache
def _process_umask() -> int:
    # Reading the umask means setting it; do that once, not on every write, so other threads
    # creating files have (at most) one instant in which the umask is 0.
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        give_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and a rename (used for run-folder files)."""
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented JSON (with a final newline) via `atomic_write_text`."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    stem: Path | str,
    model: nn.Module,
    meta: Mapping[str, Any],
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write `<stem>.safetensors` and `<stem>.json` atomically.

    `meta` must hold the keys of `REQUIRED_META` and be JSON-serialisable; `format` and
    `weights_sha256` are filled in here. `extra_tensors` are stored under `extra/<key>`.
    """
    from safetensors.torch import save

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    # DDP / torch.compile wrappers keep the real model in `.module` / `._orig_mod`.
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    tensors: dict[str, torch.Tensor] = {
        k: v.detach().cpu().contiguous().clone() for k, v in inner.state_dict().items()
    }
    for k, v in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + k] = v.detach().cpu().contiguous().clone()
    blob = save(tensors)
    full_meta = {"format": FORMAT, **meta, "weights_sha256": _sha256(blob)}
    try:
        text = json.dumps(full_meta, indent=2, sort_keys=False, allow_nan=True)
    except TypeError as exc:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
    weights_path, meta_path = _paths(stem)
    _atomic_write_bytes(weights_path, blob)
    _atomic_write_bytes(meta_path, text.encode("utf-8"))
    log.debug("saved checkpoint %s (%d tensors)", weights_path, len(tensors))


def load_checkpoint(stem: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint pair -> (all tensors, metadata); any damage is a `CheckpointError`."""
    from safetensors.torch import load

    weights_path, meta_path = _paths(stem)
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint file {p} not found; pass a run folder that holds best.* or "
                "last.* (created by `cifarlab train`), or retrain the model"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint metadata {meta_path} is not valid JSON ({exc}); the file is corrupt "
            "or truncated: retrain, or resume from the other checkpoint (best/last)"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{meta_path} has format {found!r}, expected {FORMAT!r}; it was not written by "
            "this version of cifarlab: retrain with `cifarlab train`"
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata {meta_path} lacks {missing}; retrain")
    blob = weights_path.read_bytes()
    want = meta.get("weights_sha256")
    if want and _sha256(blob) != want:
        raise CheckpointError(
            f"{weights_path} does not match the sha256 recorded in {meta_path}: the weights "
            "are corrupt, truncated or from another run; retrain or use the other checkpoint"
        )
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(
            f"cannot read weights {weights_path} ({exc}); the file is corrupt or truncated: "
            "retrain or use the other checkpoint"
        ) from None
    return tensors, meta


def model_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own `state_dict` entries (everything not under `extra/`)."""
    return {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}


def extra_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The extra tensors saved with `extra_tensors=`, prefix removed."""
    n = len(EXTRA_PREFIX)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}


def build_model(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> nn.Module:
    """Rebuild the registered model named in `meta` and load its weights (eval mode)."""
    from cifarlab.models import get_model

    model = get_model(meta["model"], **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(model_state(tensors), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not fit model {meta['model']!r}: {exc}".splitlines()[0]
            + "; the checkpoint belongs to another model or version: retrain"
        ) from None
    return model.eval()


def load_model_from_run(
    run_dir: Path | str, which: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a training run from its `best` or `last` checkpoint alone."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run folder {run_dir} does not exist; train first "
            f"(`cifarlab train --model NAME --name {run_dir.name}`) or pass an existing run"
        )
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    tensors, meta = load_checkpoint(run_dir / which)
    return build_model(tensors, meta), meta


# ---- metrics.csv -------------------------------------------------------------------------

METRICS_HEADER = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def write_metrics_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """A run folder's `metrics.csv`, one row per epoch, in the format every trainer shares.

    Integer epochs, six significant digits, seconds to 0.01, and an empty cell for what a
    trainer does not measure (fast-train holds out no validation split). Written atomically.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRICS_HEADER)
    for row in rows:
        writer.writerow([_metrics_cell(key, row.get(key)) for key in METRICS_HEADER])
    atomic_write_text(path, buf.getvalue())


def _metrics_cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if key == "epoch":
        return str(int(value))
    if key == "seconds":
        return f"{float(value):.2f}"
    return f"{float(value):.6g}"
