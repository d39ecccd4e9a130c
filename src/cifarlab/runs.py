"""The run folder: one type that owns every file a training run writes, and how it is resumed.

    ls runs/baseline_cnn   # config.json env.json metrics.csv best.* last.* events.out.tfevents.*

`RunDir` is used by every recipe through the engine (`cifarlab.engine.fit`), and read by
evaluation and the report, so training and reporting agree on file names and timings without
importing each other:

- `config.json`: `{"recipe": <kind>, **resolved recipe fields}`, written once at the start;
- `env.json`: versions, hardware (with the CPU flags that decide fp32/bf16 speed), git commit,
  command, and the precision and thread count the engine chose with its reason; every resume
  appends an entry under `resumes`;
- `metrics.csv`: one row per epoch in one format (`write_metrics_csv`), and the same scalars as
  TensorBoard event files beside it (`tensorboard --logdir runs` shows every run);
- `best.*` / `last.*`: checkpoints (`cifarlab.checkpoint`), `last` with the resume state;
- `timing.json` (optional): seconds a run cost outside its epochs (feature extraction, parent
  run), so `train_seconds` charges them; `result.json` (optional): a recipe's final summary.

No torch at import time: the report reads run folders without it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifarlab import runinfo
from cifarlab.errors import CifarlabError
from cifarlab.io import StrPath, atomic_write_text, write_json_atomic

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.csv"
RESULT_FILE = "result.json"
TIMING_FILE = "timing.json"
EVAL_FILE = "eval.json"
CONFUSION_FILE = "confusion_matrix.png"
CHECKPOINTS = ("best", "last")
METRICS_HEADER = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


class RunError(CifarlabError):
    """A run folder that cannot be started or resumed as asked."""


class RunDir:
    """One training run's folder; every file name is decided here."""

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path)
        self._writer: Any = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def stem(self, which: str) -> Path:
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
        return self.path / which

    def has_run(self) -> bool:
        return (self.path / "last.json").exists()

    # ---- starting and resuming

    def check_new(self, overwrite: bool) -> None:
        """Refuse to start over an existing run unless `overwrite`."""
        if self.has_run() and not overwrite:
            raise RunError(
                f"run folder {self.path} already holds a run; resume it with "
                f"`--resume {self.path}`, pick another --name/--run-dir, or pass --overwrite"
            )

    def start(self, config: Mapping[str, Any], env: Mapping[str, Any], overwrite: bool) -> None:
        """Create the folder for a new run; an existing run is kept unless `overwrite`."""
        self.check_new(overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        stale = [f"{w}.{ext}" for w in CHECKPOINTS for ext in ("json", "safetensors")]
        for name in (*stale, RESULT_FILE, TIMING_FILE):
            self.file(name).unlink(missing_ok=True)
        for events in self.path.glob("events.out.tfevents.*"):
            events.unlink()
        self.forget_evaluation()
        write_json_atomic(self.file(CONFIG_FILE), dict(config))
        write_json_atomic(self.file(ENV_FILE), dict(env))
        self.write_metrics([])

    def check_resumable(self) -> None:
        if not self.path.is_dir():
            raise RunError(
                f"run folder {self.path} does not exist; check the path or start a new run"
            )
        if not (self.path / "last.json").is_file():
            raise RunError(
                f"cannot resume: {self.path / 'last.json'} not found; resume a run folder "
                "written by cifarlab training (it saves last.* after every epoch)"
            )

    def record_resume(self, env: Mapping[str, Any], from_epoch: int) -> None:
        path = self.file(ENV_FILE)
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved.setdefault("resumes", []).append({**env, "from_epoch": from_epoch})
        write_json_atomic(path, saved)

    def forget_evaluation(self) -> None:
        # An evaluation describes checkpoints that training is about to replace; left in
        # place, report and export would pair it with the new weights.
        for name in (EVAL_FILE, CONFUSION_FILE):
            self.file(name).unlink(missing_ok=True)

    def read_config(self) -> dict[str, Any]:
        path = self.file(CONFIG_FILE)
        if not self.path.is_dir():
            raise RunError(f"run folder {self.path} does not exist; check the path")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(
                f"{path} not found: {self.path} is not a cifarlab run folder; start a new run"
            ) from None
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is not valid JSON ({exc}); the run is damaged") from None
        if not isinstance(raw, dict):
            raise RunError(f"{path} does not hold a JSON object; the run is damaged")
        return raw

    # ---- per-epoch output

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        write_metrics_csv(self.file(METRICS_FILE), rows)

    def log_scalars(self, row: Mapping[str, Any], purge_step: int | None = None) -> None:
        """The epoch's numbers as TensorBoard scalars (`train/loss`, `val/acc`, `lr`...)."""
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # metrics.csv still has every number
                log.warning("no TensorBoard events: `pip install tensorboard` to get them")
                self._writer = False
                return
            # purge_step: a resumed run drops events of epochs it is about to redo.
            self._writer = SummaryWriter(log_dir=str(self.path), purge_step=purge_step)
        if self._writer is False:
            return
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or value is None or value == "":
                continue
            tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key
            self._writer.add_scalar(tag, float(value), epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.file(name), data)

    # ---- checkpoints

    def save(
        self,
        which: str,
        model: Any,
        meta: Mapping[str, Any],
        extra_tensors: Mapping[str, Any] | None = None,
    ) -> None:
        from cifarlab.checkpoint import save_checkpoint

        save_checkpoint(self.stem(which), model, meta, extra_tensors)

    def load(self, which: str) -> tuple[dict[str, Any], dict[str, Any]]:
        from cifarlab.checkpoint import load_checkpoint

        return load_checkpoint(self.stem(which))

    # ---- what the report reads

    def read_metrics(self) -> list[dict[str, float]]:
        return read_metrics(self.path)

    def train_seconds(self) -> float:
        return train_seconds(self.path)


def write_metrics_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """A run folder's `metrics.csv`, one row per epoch, in the format every recipe shares.

    Integer epochs, six significant digits, seconds to 0.01, and an empty cell for what a
    recipe does not measure (fast-train holds out no validation split). Written atomically.
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


def read_metrics(run_dir: StrPath) -> list[dict[str, float]]:
    """Rows of `metrics.csv` as floats (empty cells left out); [] when there is no file."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(fh)
        ]


def train_seconds(run_dir: StrPath) -> float:
    """Wall time that produced a run: its epochs (metrics.csv) plus `timing.json` extras
    (feature extraction for transfer runs, the parent run for fine-tuned ones)."""
    run = Path(run_dir)
    total = sum(r.get("seconds", 0.0) for r in read_metrics(run))
    timing = run / TIMING_FILE
    if timing.is_file():
        total += float(json.loads(timing.read_text()).get("extra_seconds", 0.0))
    return total


def program_name() -> str:
    name = Path(sys.argv[0]).name
    # `python -m cifarlab` (and torchrun -m) report the package's __main__.py.
    return "python -m cifarlab" if name == "__main__.py" else name


def env_info(**chosen: Any) -> dict[str, Any]:
    """Versions, hardware, git commit and command line for `env.json`, plus what the engine
    chose (`precision`, `threads`, `world_size`... passed as keywords)."""
    import numpy as np
    import torch
    import torchvision

    from cifarlab import __version__

    return {
        "cifarlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        **runinfo.hardware(),  # cpu, cores, platform and the AVX-512/bf16 flags
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_sha": runinfo.git_sha(),
        "command": [program_name(), *sys.argv[1:]],
        "start_time": datetime.now(UTC).isoformat(timespec="seconds"),
        **chosen,
    }
