"""The training engine: plain functions, one run folder per run, exact resume, data parallel.

    cifarlab train --model baseline_cnn --epochs 20 --name baseline_cnn
    cifarlab train --resume runs/baseline_cnn
    torchrun --standalone --nproc-per-node=2 -m cifarlab train --model baseline_cnn --subset 2000

Public API (other trainers, e.g. the transfer head or the fast net, reuse these):

- `TrainConfig`: frozen dataclass with every knob; written resolved to `config.json`.
- `set_seed(seed)`: seeds Python, numpy and torch.
- `train_one_epoch(model, optimizer, x, y, *, batch_size, epoch, seed, scheduler=None,
  augment=None, ...) -> EpochStats`: one pass over `x`/`y` in a permutation derived from
  `(seed, epoch)`; the scheduler is stepped per batch.
- `evaluate(model, x, y, *, batch_size=512, ..., return_logits=False) -> EvalResult`:
  mean cross-entropy loss and accuracy under `torch.inference_mode()`.
- `fit(cfg, *, data=None, model=None, resume=False, overwrite=False, stop_after_epoch=None)
  -> FitResult`: the whole run. `data` is an optional preloaded `TrainData(x_train, y_train,
  x_val, y_val)` (numpy arrays or tensors); without it `cifarlab.data.load_split` supplies
  `cfg.train_split`/`cfg.val_split`. uint8 `(N, 32, 32, 3)` inputs go through the augment
  preset and `transforms.to_model_input`; any other input (e.g. cached float features) is fed
  to the model as float32 unchanged. `model` is an optional prebuilt module; checkpoints
  still record `cfg.model`/`cfg.model_kwargs`, which must rebuild a module with the same
  state-dict keys for `checkpoint.load_model_from_run` to work. Only parameters with
  `requires_grad` are optimised (frozen backbones stay frozen).
- `load_config(run_dir) -> TrainConfig`, `fit(load_config(run), resume=True)` continues a
  run from `last.*` exactly: weights, optimizer, scheduler, RNG and early-stopping state.

Run folder (`runs/<name>/`): `config.json`, `env.json`, `metrics.csv`
(`epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds`), `best.*` (best monitored value;
default validation accuracy) and `last.*` (every epoch, with the resume state).

Exactness: the batch order, the augmentation parameters and the dropout masks of epoch `e`
come from seeds derived from `(seed, e)`, so a resumed run, or a run split over processes,
draws the same numbers as one uninterrupted process. The global RNG states at the end of
the checkpointed epoch are stored as well and restored on resume.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab import distributed, runinfo
from cifarlab.checkpoint import (
    CheckpointError,
    extra_state,
    load_checkpoint,
    model_state,
    save_checkpoint,
    write_metrics_csv,
)
from cifarlab.constants import CLASSES
from cifarlab.distributed import DistInfo
from cifarlab.errors import CifarlabError
from cifarlab.evaluate import CONFUSION_FILE, EVAL_FILE
from cifarlab.io import atomic_write_text
from cifarlab.transforms import (
    KerasAugment,
    get_preset,
    normalize_float,
    to_float_nchw,
    to_model_input,
)

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MONITORS = ("val_acc", "val_loss")


class TrainError(CifarlabError):
    """A training request that cannot run as given (bad option, existing run folder...)."""


# The seed study trains augmented_cnn with the Keras pipeline; other models default to none.
DEFAULT_AUGMENT = {"augmented_cnn": "keras_aug"}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "baseline_cnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128  # global: split evenly over distributed processes
    lr: float = 1e-3  # peak lr for onecycle, start lr for cosine
    optimizer: str = "adam"  # adam | adamw | sgd (nesterov, momentum 0.9)
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # onecycle | cosine | constant, stepped per batch
    augment: str = "auto"  # preset name in cifarlab.transforms; "auto": the model's own
    label_smoothing: float = 0.0
    seed: int = 0
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    monitor: str = "val_acc"  # val_acc (higher is better) | val_loss; picks `best` too
    run_dir: str = "runs/run"
    train_split: str = "train"  # "train_full" trains on all 50,000 (then val is not held out)
    val_split: str = "val"
    subset: int | None = None  # first N training images (smoke runs); val gets N // 4
    eval_batch_size: int = 1000
    threads: int | None = None  # torch intra-op threads; None = torch's default
    bf16: bool = False  # bf16 autocast: ~15x slower on this AVX2-only CPU (no native bf16)
    channels_last: bool = True  # +9% (baseline) and +26% (augmented) img/s here, see docs
    cache_dir: str | None = None  # data cache (default: cifarlab.data.default_cache_dir())
    progress: bool = True

    def __post_init__(self) -> None:
        if self.augment == "auto":  # resolved here so config.json names the preset used
            object.__setattr__(self, "augment", DEFAULT_AUGMENT.get(self.model, "none"))

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}; pick one of {', '.join(OPTIMIZERS)}",
            ),
            (
                self.schedule in SCHEDULES,
                f"unknown schedule {self.schedule!r}; pick one of {', '.join(SCHEDULES)}",
            ),
            (
                self.monitor in MONITORS,
                f"unknown monitor {self.monitor!r}; pick one of {', '.join(MONITORS)}",
            ),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.subset is None or self.subset >= 1, f"subset must be >= 1, got {self.subset}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainError(msg)
        get_preset(self.augment)  # unknown presets raise with the known names


def load_config(run_dir: Path | str) -> TrainConfig:
    """The resolved config saved in a run folder (for `--resume`)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise CheckpointError(
            f"run folder {run_dir} does not exist; check the path or start a new run with "
            "`cifarlab train --model NAME`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} not found: {run_dir} is not a cifarlab run folder; start a new run instead"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the run is damaged") from None
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class TrainData:
    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float
    lr: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    acc: float
    n: int
    logits: torch.Tensor | None = None


@dataclass
class FitResult:
    run_dir: Path
    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]
    stopped_early: bool
    train_seconds: float


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (the engine also derives per-epoch seeds from it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple such as (seed, epoch, "order"): independent streams."""
    ints = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _as_tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def _is_images(x: torch.Tensor) -> bool:
    return x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3


def prepare_batch(
    xb: torch.Tensor,
    augment: KerasAugment | None = None,
    params: torch.Tensor | None = None,
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Raw batch -> model input: uint8 images are augmented (train) and normalised."""
    if _is_images(xb):
        if augment is None or params is None:
            x = to_model_input(xb.to(device))  # the eval path, tested equal to preprocess
        else:
            x = normalize_float(augment.apply(to_float_nchw(xb.to(device)), params))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    return xb.to(device, torch.float32)


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    # A log file (nohup) gets a line every 30 s instead of a carriage-return storm.
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        unit_scale=True,
        disable=not enabled,
        mininterval=0.5 if interactive else 30.0,
        leave=interactive,
        dynamic_ncols=True,
    )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Any,
    y: Any,
    *,
    batch_size: int,
    epoch: int,
    seed: int,
    scheduler: Any = None,
    augment: KerasAugment | None = None,
    loss_fn: nn.Module | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
    progress: bool = False,
) -> EpochStats:
    """One epoch over the full-batch steps of a `(seed, epoch)` permutation.

    `batch_size` is global; in a distributed run each rank takes its slice of every batch.
    The last partial batch is dropped so every step has the same size on every rank.
    """
    info = dist_info or DistInfo()
    x, y = _as_tensor(x), _as_tensor(y)
    n = x.shape[0]
    steps = n // batch_size
    if steps == 0:
        raise TrainError(f"batch size {batch_size} is larger than the {n} training samples")
    distributed.check_batch(batch_size, info)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = next(model.parameters()).device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
    aug_gen = torch.Generator().manual_seed(derive_seed(seed, epoch, "augment"))
    # Dropout masks: per rank, so processes do not drop the same units for their slices.
    torch.manual_seed(derive_seed(seed, epoch, "dropout", info.rank))
    model.train()
    loss_sum = correct = count = 0.0
    start = time.perf_counter()
    bar = _progress(steps * batch_size, f"epoch {epoch}", progress and info.is_main)
    for step in range(steps):
        global_idx = order[step * batch_size : (step + 1) * batch_size]
        # Parameters for the whole global batch on every rank, then this rank's slice.
        params = augment.sample_params(batch_size, aug_gen) if augment is not None else None
        idx = distributed.shard(global_idx, info)
        if params is not None and info.enabled:
            params = distributed.shard(params, info)
        xb = prepare_batch(x[idx], augment, params, channels_last, device)
        yb = y[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        loss = loss_fn(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        b = yb.shape[0]
        loss_sum += loss.item() * b
        correct += (logits.argmax(1) == yb).sum().item()
        count += b
        bar.update(b * info.world_size)
        if step % 10 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss_sum / count:.3f}",
                acc=f"{correct / count:.3f}",
                ips=f"{count * info.world_size / max(elapsed, 1e-9):.0f}",
                refresh=False,
            )
    bar.close()
    loss_sum, correct, count = distributed.all_reduce_sum([loss_sum, correct, count], info)
    return EpochStats(
        loss=loss_sum / count,
        acc=correct / count,
        images=int(count),
        seconds=time.perf_counter() - start,
        lr=float(optimizer.param_groups[0]["lr"]),
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    batch_size: int = 1000,
    bf16: bool = False,
    channels_last: bool = False,
    dist_info: DistInfo | None = None,
    return_logits: bool = False,
) -> EvalResult:
    """Mean cross-entropy and accuracy of `model` on `x`/`y` (raw uint8 images or features).

    Distributed: rank r scores samples r, r + world, ... and the sums are all-reduced, so
    every rank gets the exact full-set numbers; `return_logits` is single-process only.
    """
    info = dist_info or DistInfo()
    x, y = _as_tensor(x), _as_tensor(y)
    if return_logits and info.enabled:
        raise ValueError("return_logits needs a single process")
    model = _unwrap(model)
    model.eval()
    device = next(model.parameters()).device
    idx_all = torch.arange(info.rank, x.shape[0], info.world_size)
    loss_sum = correct = 0.0
    outs: list[torch.Tensor] = []
    for start in range(0, idx_all.numel(), batch_size):
        idx = idx_all[start : start + batch_size]
        xb = prepare_batch(x[idx], channels_last=channels_last, device=device)
        yb = y[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        if return_logits:
            outs.append(logits.cpu())
    loss_sum, correct, n = distributed.all_reduce_sum(
        [loss_sum, correct, float(idx_all.numel())], info
    )
    if n == 0:
        raise TrainError("cannot evaluate on an empty set")
    return EvalResult(
        loss=loss_sum / n,
        acc=correct / n,
        n=int(n),
        logits=torch.cat(outs) if return_logits else None,
    )


# ---- optimizer / scheduler / RNG state as safetensors + JSON ---------------------------------


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> Any:
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        if total < 3:  # OneCycleLR divides by its phase lengths; nothing to schedule anyway
            return None
        # Warm up over the first 25% of steps (at least 2), then cosine-anneal to
        # lr / (25 * 1e4).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=min(0.5, max(0.25, 2 / total))
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = v
            else:
                plain.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _load_optimizer_state(
    opt: torch.optim.Optimizer, extras: Mapping[str, torch.Tensor], saved: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in extras.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, d in saved["state"].items():
        state.setdefault(int(pid), {}).update(d)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    return {"rng/torch": torch.get_rng_state()}, {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _load_rng_state(extras: Mapping[str, torch.Tensor], saved: Mapping[str, Any]) -> None:
    if "rng/torch" in extras:
        torch.set_rng_state(extras["rng/torch"])
    if "numpy" in saved:
        kind, keys, pos, has_gauss, cached = saved["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in saved:
        version, internal, gauss = saved["python"]
        random.setstate((version, tuple(internal), gauss))


# ---- run folder --------------------------------------------------------------------------------


def _program_name() -> str:
    name = Path(sys.argv[0]).name
    # `python -m cifarlab` (and torchrun -m) report the package's __main__.py.
    return "python -m cifarlab" if name == "__main__.py" else name


def env_info(info: DistInfo | None = None) -> dict[str, Any]:
    """Versions, hardware, git sha and command line, saved as `env.json` in the run folder."""
    import torchvision

    from cifarlab import __version__

    info = info or DistInfo()
    return {
        "cifarlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        **runinfo.hardware(),  # cpu, cores, platform and the AVX-512/bf16 flags
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "world_size": info.world_size,
        "git_sha": runinfo.git_sha(),
        "command": [_program_name(), *sys.argv[1:]],
        "start_time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_acc" else value < best


def _load_data(cfg: TrainConfig, data: TrainData | None) -> TrainData:
    if data is None:
        from cifarlab.data import load_split

        data = TrainData(
            *load_split(cfg.train_split, cfg.cache_dir), *load_split(cfg.val_split, cfg.cache_dir)
        )
    x_tr, y_tr, x_va, y_va = (
        _as_tensor(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val)
    )
    if cfg.subset is not None:
        n_val = max(1, cfg.subset // 4)
        x_tr, y_tr, x_va, y_va = x_tr[: cfg.subset], y_tr[: cfg.subset], x_va[:n_val], y_va[:n_val]
    return TrainData(x_tr, y_tr.long(), x_va, y_va.long())


def _params(model: nn.Module) -> dict[str, int]:
    ps = list(model.parameters())
    return {
        "total": sum(p.numel() for p in ps),
        "trainable": sum(p.numel() for p in ps if p.requires_grad),
    }


def fit(
    cfg: TrainConfig,
    *,
    data: TrainData | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Train `cfg.model` for `cfg.epochs`, writing the run folder `cfg.run_dir` (rank 0 only).

    `resume=True` continues from `<run_dir>/last.*`. `stop_after_epoch` ends this call after
    that epoch as if interrupted (time-boxed runs, resume tests); the run stays resumable.
    """
    cfg.validate()
    started_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.setup()
    try:
        return _fit(cfg, info, data, model, resume, overwrite, stop_after_epoch)
    finally:
        if started_group:
            distributed.teardown(info)


def _fit(
    cfg: TrainConfig,
    info: DistInfo,
    data: TrainData | None,
    model: nn.Module | None,
    resume: bool,
    overwrite: bool,
    stop_after_epoch: int | None,
) -> FitResult:
    from cifarlab.models import get_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    if resume:
        if not (run_dir / "last.json").is_file():
            raise CheckpointError(
                f"cannot resume: {run_dir / 'last.json'} not found; resume a run folder "
                "written by `cifarlab train` (it saves last.* after every epoch)"
            )
    elif (run_dir / "last.json").exists() and not overwrite:
        raise TrainError(
            f"run folder {run_dir} already holds a run; resume it with `--resume {run_dir}`, "
            "pick another --name, or pass --overwrite"
        )

    # Same initial weights whatever the process count or resume: seed, then build.
    set_seed(cfg.seed)
    if model is None:
        model = get_model(cfg.model, **cfg.model_kwargs)
    inner = model.to(info.device)
    if cfg.channels_last:
        inner = inner.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    tdata = _load_data(cfg, data)
    steps_per_epoch = tdata.x_train.shape[0] // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainError(
            f"batch size {cfg.batch_size} is larger than the {tdata.x_train.shape[0]} "
            "training samples; lower --batch-size or raise --subset"
        )
    distributed.check_batch(cfg.batch_size, info)
    optimizer = build_optimizer([p for p in inner.parameters() if p.requires_grad], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    augment = get_preset(cfg.augment)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    history: list[dict[str, float]] = []
    best_value: float | None = None
    best_epoch = 0
    best_metrics: dict[str, float] = {}
    bad_epochs = 0
    train_seconds = 0.0
    start_epoch = 1
    stopped_early = False
    if resume:
        tensors, meta = load_checkpoint(run_dir / "last")
        state = meta.get("train_state")
        if not state:
            raise CheckpointError(f"{run_dir / 'last.json'} holds no resume state; retrain")
        inner.load_state_dict(model_state(tensors))
        extras = extra_state(tensors)
        _load_optimizer_state(optimizer, extras, state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        _load_rng_state(extras, state.get("rng", {}))
        history = list(state["history"])
        best_value, best_epoch = state["best_value"], state["best_epoch"]
        best_metrics, bad_epochs = state["best_metrics"], state["bad_epochs"]
        train_seconds = float(meta.get("train_seconds", 0.0))
        start_epoch = int(meta["epoch"]) + 1
        stopped_early = bool(state.get("stopped_early"))
        if stopped_early:
            start_epoch = cfg.epochs + 1  # an early-stopped run is finished
        log.info("resuming %s from epoch %d", run_dir, start_epoch)
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("best.json", "best.safetensors", "last.json", "last.safetensors"):
            (run_dir / stale).unlink(missing_ok=True)
    if info.is_main and start_epoch <= cfg.epochs:
        # An evaluation describes checkpoints that this training is about to replace; left in
        # place, report and export would pair it with the new weights.
        for stale in (EVAL_FILE, CONFUSION_FILE):
            (run_dir / stale).unlink(missing_ok=True)
    if not resume and info.is_main:
        _write_json(run_dir / "config.json", asdict(cfg))
        _write_json(run_dir / "env.json", env_info(info))
        write_metrics_csv(run_dir / "metrics.csv", [])
    if resume and info.is_main:
        env_path = run_dir / "env.json"
        env = json.loads(env_path.read_text()) if env_path.is_file() else {}
        env.setdefault("resumes", []).append({**env_info(info), "from_epoch": start_epoch})
        _write_json(env_path, env)

    train_model: nn.Module = inner
    if info.enabled:
        if info.device.startswith("cuda"):
            inner = nn.SyncBatchNorm.convert_sync_batchnorm(inner)
        train_model = nn.parallel.DistributedDataParallel(
            inner, device_ids=[info.local_rank] if info.device.startswith("cuda") else None
        )

    base_meta = {
        "model": cfg.model,
        "model_kwargs": cfg.model_kwargs,
        "classes": list(CLASSES),
        "config": asdict(cfg),
        "params": _params(inner),
    }
    last_epoch = stop_after_epoch if stop_after_epoch is not None else cfg.epochs
    for epoch in range(start_epoch, min(cfg.epochs, last_epoch) + 1):
        t0 = time.perf_counter()
        tr = train_one_epoch(
            train_model,
            optimizer,
            tdata.x_train,
            tdata.y_train,
            batch_size=cfg.batch_size,
            epoch=epoch,
            seed=cfg.seed,
            scheduler=scheduler,
            augment=augment,
            loss_fn=loss_fn,
            bf16=cfg.bf16,
            channels_last=cfg.channels_last,
            dist_info=info,
            progress=cfg.progress,
        )
        va = evaluate(
            inner,
            tdata.x_val,
            tdata.y_val,
            batch_size=cfg.eval_batch_size,
            bf16=cfg.bf16,
            channels_last=cfg.channels_last,
            dist_info=info,
        )
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        row = {
            "epoch": epoch,
            "train_loss": tr.loss,
            "train_acc": tr.acc,
            "val_loss": va.loss,
            "val_acc": va.acc,
            "lr": tr.lr,
            "seconds": seconds,
        }
        history.append(row)
        value = va.acc if cfg.monitor == "val_acc" else va.loss
        improved = _improved(value, best_value, cfg.monitor)
        if improved:
            best_value, best_epoch, best_metrics, bad_epochs = value, epoch, dict(row), 0
        else:
            bad_epochs += 1
        stop = cfg.patience > 0 and bad_epochs >= cfg.patience
        log.log(
            logging.INFO if info.is_main else logging.DEBUG,
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2e  "
            "%.0f img/s  %.1fs%s",
            epoch,
            cfg.epochs,
            tr.loss,
            tr.acc,
            va.loss,
            va.acc,
            tr.lr,
            tr.images / max(tr.seconds, 1e-9),
            seconds,
            "  (best)" if improved else "",
        )
        if info.is_main:
            meta = {
                **base_meta,
                "epoch": epoch,
                "metrics": row,
                "best_epoch": best_epoch,
                "train_seconds": train_seconds,
                "saved": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            opt_tensors, opt_json = _optimizer_state(optimizer)
            rng_tensors, rng_json = _rng_state()
            # best first: a crash between the two leaves last.* one epoch behind, which
            # resume simply repeats.
            if improved:
                save_checkpoint(run_dir / "best", inner, meta)
            train_state = {
                "optimizer": opt_json,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_json,
                "history": history,
                "best_value": best_value,
                "best_epoch": best_epoch,
                "best_metrics": best_metrics,
                "bad_epochs": bad_epochs,
                "stopped_early": stop,
            }
            save_checkpoint(
                run_dir / "last",
                inner,
                {**meta, "train_state": train_state},
                extra_tensors={**opt_tensors, **rng_tensors},
            )
            write_metrics_csv(run_dir / "metrics.csv", history)
        if stop:
            log.info("early stop: no %s improvement for %d epochs", cfg.monitor, bad_epochs)
            stopped_early = True
            break
    distributed.barrier(info)
    return FitResult(
        run_dir=run_dir,
        model=inner.eval(),
        history=history,
        best_epoch=best_epoch,
        best=best_metrics,
        stopped_early=stopped_early,
        train_seconds=train_seconds,
    )
