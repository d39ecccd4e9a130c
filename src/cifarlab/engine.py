"""The training engine: one `train_one_epoch`, one `evaluate`, one `fit` for every recipe.

    cifarlab train --model baseline_cnn --epochs 20         # recipes/standard.py
    cifarlab fast-train --preset quick                       # recipes/fast.py
    cifarlab transfer --weights mobilenet_v2-b0353104.pth    # recipes/transfer.py

A recipe (`cifarlab.recipes`) is a frozen dataclass plus a function that turns it into a
`TrainPlan`: the model, optimizer, loss, a batch source and a few `Hook`s (a learning-rate
schedule, lookahead, freezing a layer after some epochs). `fit` runs the plan: epochs of
`train_one_epoch`, `evaluate` on the validation data, `metrics.csv` + TensorBoard rows,
best/last checkpoints with the resume state, early stopping, and exact resume. Nothing else in
`cifarlab` calls `.backward()` to train a model.

Precision and threads come from the hardware (`choose_precision`, `choose_threads`): bf16
autocast where the CPU computes bf16 natively (AVX512-BF16 or AMX), fp32 elsewhere; the choice
and its reason go into the log and `env.json`.

Exact resume: batch order, augmentation and dropout of epoch `e` derive from `(seed, e)`;
`last.*` holds the weights, optimizer, hook states (schedulers, lookahead), RNG states and the
step counter, so a run killed at any point and resumed ends with the same weights as an
uninterrupted one (tests/test_engine.py kills one with SIGKILL mid-epoch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import distributed, runinfo
from cifarlab.checkpoint import CheckpointError, extra_state, model_state
from cifarlab.distributed import DistInfo
from cifarlab.errors import CifarlabError
from cifarlab.runs import RunDir, env_info
from cifarlab.transforms import KerasAugment, normalize_float, to_float_nchw, to_model_input

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (as in /proc/cpuinfo) that mean bf16 matrix math runs natively, not emulated.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
TTA_LEVELS = ("none", "flip", "translate")


class EngineError(CifarlabError):
    """A training request the engine cannot run as given."""


# ---- precision, threads, seeds -------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A setting the engine decided, with the reason recorded in env.json and the log."""

    value: Any
    reason: str


def choose_precision(requested: str, cpu_flags: Collection[str]) -> Choice:
    """`fp32` or `bf16` for `--precision requested` on a CPU with `cpu_flags` (pure).

    `auto` picks bf16 autocast exactly when the CPU has a native bf16 unit (AVX512-BF16 or
    AMX-BF16); without one bf16 is emulated, an order of magnitude slower than fp32 on the
    AVX2 CPU of reports/bench/train_speed.json (docs/training.md).
    """
    if requested not in PRECISIONS:
        raise EngineError(f"unknown precision {requested!r}; pick one of {', '.join(PRECISIONS)}")
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags]
    if requested == "fp32":
        return Choice("fp32", "requested with --precision fp32")
    if requested == "bf16":
        why = f"native: {', '.join(native)}" if native else "no native bf16 here: expect it slow"
        return Choice("bf16", f"requested with --precision bf16 ({why})")
    if native:
        return Choice("bf16", f"auto: the CPU has native bf16 ({', '.join(native)})")
    return Choice("fp32", "auto: the CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag)")


def choose_threads(
    requested: int | None, usable_cpus: int, local_processes: int = 1, omp: str | None = None
) -> Choice:
    """Torch intra-op threads (pure): as requested, else `$OMP_NUM_THREADS` (`omp`), else the
    usable CPUs split over the processes of this machine (torchrun), at least 1."""
    if requested is not None and requested < 0:
        raise EngineError(f"threads must be >= 0 (0 = automatic), got {requested}")
    if requested:
        return Choice(requested, "requested with --threads")
    if omp and omp.strip().isdigit() and int(omp) > 0:
        return Choice(int(omp), "from $OMP_NUM_THREADS")
    n = max(1, usable_cpus // max(1, local_processes))
    return Choice(n, f"auto: {usable_cpus} usable CPUs / {local_processes} process(es)")


def cpu_flags() -> set[str]:
    """The CPU flags `runinfo.hardware()` reports (as booleans or a `flags` list)."""
    hw = runinfo.hardware()
    flags = {k for k, v in hw.items() if v is True}
    listed = hw.get("flags")
    if isinstance(listed, list | tuple | set):
        flags |= {str(f) for f in listed}
    return flags


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (the engine also derives per-epoch seeds from it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple such as (seed, epoch, "order"): independent streams."""
    ints = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Runtime:
    """What the engine decided for this process: precision, threads, distribution, progress."""

    precision: Choice
    threads: Choice
    dist: DistInfo = field(default_factory=DistInfo)
    progress: bool = True

    @property
    def bf16(self) -> bool:
        return bool(self.precision.value == "bf16")

    def env(self) -> dict[str, Any]:
        """The env.json record of the run, including the choices and their reasons."""
        return env_info(
            precision={"chosen": self.precision.value, "reason": self.precision.reason},
            torch_threads={"chosen": self.threads.value, "reason": self.threads.reason},
            world_size=self.dist.world_size,
        )


@contextlib.contextmanager
def runtime(precision: str, threads: int | None, progress: bool = True) -> Iterator[Runtime]:
    """Join a torchrun process group if launched by one, decide precision and threads."""
    started_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.setup()
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        rt = Runtime(
            precision=choose_precision(precision, cpu_flags()),
            threads=choose_threads(
                threads, usable_cpus(), local, os.environ.get("OMP_NUM_THREADS")
            ),
            dist=info,
            progress=progress,
        )
        torch.set_num_threads(int(rt.threads.value))
        if info.is_main:
            log.info("precision %s (%s)", rt.precision.value, rt.precision.reason)
            log.info("threads %d (%s)", rt.threads.value, rt.threads.reason)
        yield rt
    finally:
        if started_group:
            distributed.teardown(info)


def open_run(
    run: RunDir,
    config: Mapping[str, Any],
    rt: Runtime,
    resume: bool,
    overwrite: bool,
    files: Mapping[str, Any] | None = None,
) -> None:
    """Start `run` (config.json, env.json, empty metrics.csv, and `files` as JSON, e.g.
    timing.json) or check it can be resumed."""
    if resume:
        run.check_resumable()
    elif rt.dist.is_main:
        run.start(config, rt.env(), overwrite)
        for name, content in (files or {}).items():
            run.write_json(name, content)
    distributed.barrier(rt.dist)


# ---- batches ----------------------------------------------------------------------------


class BatchSource(Protocol):
    """What `train_one_epoch` iterates: model-ready `(x, y)` batches of one epoch."""

    @property
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def as_tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def is_images(x: torch.Tensor) -> bool:
    return x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3


def prepare_batch(
    xb: torch.Tensor,
    augment: KerasAugment | None = None,
    params: torch.Tensor | None = None,
    channels_last: bool = False,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Raw batch -> model input: uint8 images are augmented (train) and normalised."""
    if is_images(xb):
        if augment is None or params is None:
            x = to_model_input(xb.to(device))  # the eval path, tested equal to preprocess
        else:
            x = normalize_float(augment.apply(to_float_nchw(xb.to(device)), params))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    return xb.to(device, torch.float32)


class ArrayLoader:
    """Batches of an in-memory dataset (uint8 images or float features) in a `(seed, epoch)`
    permutation, augmented with a `cifarlab.transforms` preset, sharded over processes.

    `drop_last` (needed when distributed) drops the ragged last batch so every step has the
    same size on every rank.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        seed: int,
        augment: KerasAugment | None = None,
        channels_last: bool = False,
        dist: DistInfo | None = None,
        drop_last: bool = True,
    ) -> None:
        self.x, self.y = as_tensor(x), as_tensor(y).long()
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.channels_last, self.dist = channels_last, dist or DistInfo()
        self.drop_last = drop_last or self.dist.enabled
        if self.steps_per_epoch == 0:
            raise EngineError(
                f"batch size {batch_size} is larger than the {len(self.y)} training samples; "
                "lower --batch-size or use more data"
            )
        distributed.check_batch(batch_size, self.dist)

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.y), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = len(self.y), self.batch_size
        order_gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(n, generator=order_gen)
        aug_gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "augment"))
        for step in range(self.steps_per_epoch):
            global_idx = order[step * b : (step + 1) * b]
            # Parameters for the whole global batch on every rank, then this rank's slice.
            params = None
            if self.augment is not None:
                params = self.augment.sample_params(len(global_idx), aug_gen)
                params = distributed.shard(params, self.dist)
            idx = distributed.shard(global_idx, self.dist)
            xb = prepare_batch(self.x[idx], self.augment, params, self.channels_last)
            yield xb, self.y[idx]


# ---- hooks ------------------------------------------------------------------------------


class Hook:
    """Recipe-specific behaviour at fixed points of the loop; every method is optional.

    `step` is the global optimizer step (0-based before, 1-based count after a step);
    `epoch` is 1-based. A hook with state implements `state()`/`load_state()` so resume is
    exact; `name` keys that state in the checkpoint.
    """

    name = "hook"

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of `epoch` (also on the first epoch after a resume)."""

    def before_step(self, step: int) -> None:
        """Before optimizer step number `step` (0-based)."""

    def after_step(self, steps_done: int) -> None:
        """After the optimizer step; `steps_done` counts every step so far."""

    def on_train_end(self) -> None:
        """After the last training step, before the last checkpoint and evaluation."""

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return {}, None

    def load_state(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        """Restore what `state()` returned."""


class SchedulerHook(Hook):
    """A `torch.optim.lr_scheduler` stepped after every optimizer step."""

    name = "scheduler"

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def after_step(self, steps_done: int) -> None:
        self.scheduler.step()

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return {}, self.scheduler.state_dict()

    def load_state(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        if saved is not None:
            self.scheduler.load_state_dict(saved)


# ---- one epoch, one evaluation ------------------------------------------------------------


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float
    lr: float
    steps_done: int


@dataclass(frozen=True)
class EvalResult:
    loss: float
    acc: float
    n: int
    logits: torch.Tensor | None = None  # of level `tta`, with return_logits
    tta_acc: dict[str, float] = field(default_factory=dict)  # accuracy per TTA level
    tta_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # with return_logits


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "img") -> Any:
    """A tqdm bar on a terminal; nothing at all when stderr is a file or a pipe."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=not (enabled and sys.stderr.isatty()),
        mininterval=0.5,
        leave=False,
        dynamic_ncols=True,
    )


def autocast(bf16: bool, device: torch.device | str = "cpu") -> Any:
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch: int,
    steps: int,
    hooks: Sequence[Hook] = (),
    start_step: int = 0,
    max_steps: int | None = None,
    bf16: bool = False,
    dist_info: DistInfo | None = None,
    progress: bool = False,
) -> EpochStats:
    """One pass over `batches` (`steps` of them): forward under autocast, loss, backward, step.

    `criterion` is an `nn.CrossEntropyLoss`-like module whose `reduction` ("mean" or "sum")
    says how its value relates to the batch. Stops early once `max_steps` global steps are
    done (fractional last epochs). Train loss/accuracy are running values over the epoch.
    """
    info = dist_info or DistInfo()
    device = next(model.parameters()).device
    per_sample = getattr(criterion, "reduction", "mean") == "sum"
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    count, step = 0, start_step
    start = time.perf_counter()
    bar = progress_bar(steps, f"epoch {epoch}", progress and info.is_main, unit="step")
    for x, y in batches:
        if max_steps is not None and step >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for h in hooks:
            h.before_step(step)
        with autocast(bf16, device):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        for h in hooks:
            h.after_step(step)
        b = y.shape[0]
        with torch.no_grad():
            loss_sum += loss.detach() if per_sample else loss.detach() * b
            correct += (logits.detach().argmax(1) == y).sum()
        count += b
        bar.update(1)
        if bar.n % 10 == 0:
            ips = count * info.world_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{float(loss_sum) / count:.3f}", ips=f"{ips:.0f}", refresh=False)
    bar.close()
    total_loss, total_correct, total = distributed.all_reduce_sum(
        [float(loss_sum), float(correct), float(count)], info
    )
    return EpochStats(
        loss=total_loss / max(total, 1),
        acc=total_correct / max(total, 1),
        images=int(total),
        seconds=time.perf_counter() - start,
        lr=float(optimizer.param_groups[0]["lr"]),
        steps_done=step,
    )


def _tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> list[torch.Tensor]:
    """Logits at every TTA level up to `level`, each reusing the one before:
    none; flip = mean with the mirrored image; translate = half flip plus a quarter each of the
    (flip-averaged) 1-pixel shifts up-left and down-right (reflect-padded)."""
    plain = model(x).float()
    out = [plain]
    if level >= 1:
        out.append(0.5 * (plain + model(x.flip(3)).float()))
    if level >= 2:
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
        p = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = []
        for s in (p[:, :, :-2, :-2], p[:, :, 2:, 2:]):
            s = s.contiguous(memory_format=fmt or torch.contiguous_format)
            shifted.append(0.5 * (model(s) + model(s.flip(3))).float())
        out.append(0.5 * out[1] + 0.25 * (shifted[0] + shifted[1]))
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    batch_size: int = 1000,
    bf16: bool = False,
    channels_last: bool = False,
    tta: int = 0,
    dist_info: DistInfo | None = None,
    return_logits: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Mean cross-entropy and accuracy of `model` on `x`/`y` (raw uint8 images or features).

    `tta` (images only): 0 none, 1 flip, 2 flip + 1-pixel translates; loss, accuracy and
    logits are those of level `tta`, `tta_acc` has the accuracy of every level up to it.
    Distributed: rank r scores samples r, r + world, ... and the sums are all-reduced, so
    every rank gets the full-set numbers; `return_logits` is single-process only.
    """
    info = dist_info or DistInfo()
    x, y = as_tensor(x), as_tensor(y).long()
    if return_logits and info.enabled:
        raise ValueError("return_logits needs a single process")
    if tta not in (0, 1, 2) or (tta and not is_images(x)):
        raise EngineError(f"tta must be 0, 1 or 2 and needs images, got {tta} on {x.dtype}")
    model = _unwrap(model)
    model.eval()
    device = next(model.parameters()).device
    idx_all = torch.arange(info.rank, x.shape[0], info.world_size)
    loss_sum, correct = 0.0, [0.0] * (tta + 1)
    outs: list[list[torch.Tensor]] = [[] for _ in range(tta + 1)]
    bar = progress_bar(idx_all.numel(), "evaluate", progress and info.is_main)
    for start in range(0, idx_all.numel(), batch_size):
        idx = idx_all[start : start + batch_size]
        xb = prepare_batch(x[idx], channels_last=channels_last, device=device)
        yb = y[idx].to(device)
        with autocast(bf16, device):
            levels = _tta_logits(model, xb, tta)
        for i, logits in enumerate(levels):
            correct[i] += (logits.argmax(1) == yb).sum().item()
        loss_sum += F.cross_entropy(levels[-1], yb, reduction="sum").item()
        if return_logits:
            for out, logits in zip(outs, levels, strict=True):
                out.append(logits.cpu())
        bar.update(len(idx))
    bar.close()
    *sums, n = distributed.all_reduce_sum([loss_sum, *correct, float(idx_all.numel())], info)
    if n == 0:
        raise EngineError("cannot evaluate on an empty set")
    accs = {TTA_LEVELS[i]: c / n for i, c in enumerate(sums[1:])}
    by_level = {TTA_LEVELS[i]: torch.cat(o) for i, o in enumerate(outs)} if return_logits else {}
    return EvalResult(
        loss=sums[0] / n,
        acc=accs[TTA_LEVELS[tta]],
        n=int(n),
        logits=by_level.get(TTA_LEVELS[tta]),
        tta_acc=accs,
        tta_logits=by_level,
    )


# ---- the whole run ----------------------------------------------------------------------


@dataclass
class TrainPlan:
    """Everything `fit` needs, built by a recipe.

    `model` is the module whose parameters train (unwrapped; `fit` adds DDP);
    `checkpoint_model` is what best/last hold (default `model`; the transfer recipe trains a
    head but checkpoints the whole network). `val` is `(x, y)` evaluated after every epoch;
    without it the val columns stay empty and every epoch counts as the best so far.
    `meta` is the recipe's part of the checkpoint metadata (model, model_kwargs, config...).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    train: BatchSource
    epochs: int
    meta: dict[str, Any]
    max_steps: int | None = None
    val: tuple[Any, Any] | None = None
    hooks: Sequence[Hook] = ()
    monitor: str = "val_acc"  # val_acc (higher is better) | val_loss
    patience: int = 0  # epochs without improvement before stopping; 0 = never
    eval_batch_size: int = 1000
    channels_last: bool = False
    checkpoint_model: nn.Module | None = None


@dataclass
class FitResult:
    run_dir: Any
    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    best: dict[str, Any]
    stopped_early: bool
    train_seconds: float


@dataclass
class _Progress:
    """The loop's own state, saved in last.json and restored on resume."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    bad_epochs: int = 0
    stopped_early: bool = False
    step: int = 0
    train_seconds: float = 0.0

    def improved(self, value: float | None, monitor: str) -> bool:
        if value is None or self.best_value is None:
            return True
        return value > self.best_value if monitor == "val_acc" else value < self.best_value


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


def _resume_state(plan: TrainPlan, run: RunDir) -> _Progress:
    """Load last.* into the plan's model, optimizer and hooks; return the loop state."""
    tensors, meta = run.load("last")
    state = meta.get("train_state")
    if not state:
        raise CheckpointError(f"{run.stem('last')}.json holds no resume state; retrain")
    target = plan.checkpoint_model or plan.model
    target.load_state_dict(model_state(tensors))
    extras = extra_state(tensors)
    _load_optimizer_state(plan.optimizer, extras, state["optimizer"])
    for h in plan.hooks:
        prefix = f"hook/{h.name}/"
        mine = {k[len(prefix) :]: v for k, v in extras.items() if k.startswith(prefix)}
        h.load_state(mine, state.get("hooks", {}).get(h.name))
    _load_rng_state(extras, state.get("rng", {}))
    return _Progress(
        history=list(state["history"]),
        best_value=state["best_value"],
        best_epoch=state["best_epoch"],
        best_metrics=state["best_metrics"],
        bad_epochs=state["bad_epochs"],
        stopped_early=bool(state.get("stopped_early")),
        step=int(state.get("step", 0)),
        train_seconds=float(meta.get("train_seconds", 0.0)),
    )


def _save_epoch(
    plan: TrainPlan, run: RunDir, prog: _Progress, row: dict[str, Any], best: bool
) -> None:
    model = plan.checkpoint_model or plan.model
    params = list(model.parameters())
    meta = {
        **plan.meta,
        "epoch": row["epoch"],
        "metrics": row,
        "best_epoch": prog.best_epoch,
        "train_seconds": prog.train_seconds,
        "params": {
            "total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        },
        "saved": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # best first: a crash between the two leaves last.* one epoch behind, which resume repeats.
    if best:
        run.save("best", model, meta)
    opt_tensors, opt_json = _optimizer_state(plan.optimizer)
    rng_tensors, rng_json = _rng_state()
    extras = {**opt_tensors, **rng_tensors}
    hook_json: dict[str, Any] = {}
    for h in plan.hooks:
        tensors, plain = h.state()
        extras.update({f"hook/{h.name}/{k}": v for k, v in tensors.items()})
        hook_json[h.name] = plain
    train_state = {
        "optimizer": opt_json,
        "hooks": hook_json,
        "rng": rng_json,
        "history": prog.history,
        "best_value": prog.best_value,
        "best_epoch": prog.best_epoch,
        "best_metrics": prog.best_metrics,
        "bad_epochs": prog.bad_epochs,
        "stopped_early": prog.stopped_early,
        "step": prog.step,
    }
    run.save("last", model, {**meta, "train_state": train_state}, extra_tensors=extras)
    run.write_metrics(prog.history)


def _wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    if info.device.startswith("cuda"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.local_rank] if info.device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _epoch_row(
    plan: TrainPlan, tr: EpochStats, va: EvalResult | None, epoch: int, seconds: float
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": tr.loss,
        "train_acc": tr.acc,
        "val_loss": va.loss if va is not None else None,
        "val_acc": va.acc if va is not None else None,
        "lr": tr.lr,
        "seconds": seconds,
    }


def _run_epoch(
    plan: TrainPlan, train_model: nn.Module, rt: Runtime, prog: _Progress, epoch: int, seed: int
) -> dict[str, Any]:
    """Train and validate one epoch; returns its metrics row."""
    t0 = time.perf_counter()
    # Dropout masks: per (seed, epoch, rank), so resume and process count do not change them.
    torch.manual_seed(derive_seed(seed, epoch, "dropout", rt.dist.rank))
    for h in plan.hooks:
        h.on_epoch_start(epoch)
    tr = train_one_epoch(
        train_model,
        plan.optimizer,
        plan.criterion,
        plan.train.epoch(epoch),
        epoch=epoch,
        steps=plan.train.steps_per_epoch,
        hooks=plan.hooks,
        start_step=prog.step,
        max_steps=plan.max_steps,
        bf16=rt.bf16,
        dist_info=rt.dist,
        progress=rt.progress,
    )
    prog.step = tr.steps_done
    if epoch == plan.epochs:
        for h in plan.hooks:
            h.on_train_end()
    va = None
    if plan.val is not None:
        va = evaluate(
            plan.model,
            *plan.val,
            batch_size=plan.eval_batch_size,
            bf16=rt.bf16,
            channels_last=plan.channels_last,
            dist_info=rt.dist,
            progress=rt.progress,
        )
    seconds = time.perf_counter() - t0
    row = _epoch_row(plan, tr, va, epoch, seconds)
    log.log(
        logging.INFO if rt.dist.is_main else logging.DEBUG,
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %s acc %s  lr %.2e  %.0f img/s  %.1fs",
        epoch,
        plan.epochs,
        tr.loss,
        tr.acc,
        "-" if va is None else f"{va.loss:.4f}",
        "-" if va is None else f"{va.acc:.4f}",
        tr.lr,
        tr.images / max(tr.seconds, 1e-9),
        seconds,
    )
    return row


def fit(
    plan: TrainPlan,
    run: RunDir | None,
    rt: Runtime,
    *,
    seed: int,
    resume: bool = False,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Run `plan` for its epochs, writing `run` (rank 0 only; `run=None` writes nothing).

    `resume=True` continues from `run`'s last.*. `stop_after_epoch` ends this call after that
    epoch as if interrupted (time-boxed runs, tests); the run stays resumable.
    """
    prog = _Progress()
    if resume:
        if run is None:
            raise EngineError("resume needs a run folder")
        prog = _resume_state(plan, run)
    start_epoch = len(prog.history) + 1
    if prog.stopped_early:
        start_epoch = plan.epochs + 1  # an early-stopped run is finished
    if run is not None and rt.dist.is_main and start_epoch <= plan.epochs:
        run.forget_evaluation()
        if resume:
            run.record_resume(rt.env(), start_epoch)
            log.info("resuming %s from epoch %d", run.path, start_epoch)
    train_model = _wrap(plan.model, rt.dist)
    last = min(plan.epochs, stop_after_epoch if stop_after_epoch is not None else plan.epochs)
    for epoch in range(start_epoch, last + 1):
        row = _run_epoch(plan, train_model, rt, prog, epoch, seed)
        prog.train_seconds += row["seconds"]
        prog.history.append(row)
        value = row["val_acc"] if plan.monitor == "val_acc" else row["val_loss"]
        improved = prog.improved(value, plan.monitor)
        if improved:
            prog.best_value, prog.best_epoch, prog.best_metrics = value, epoch, dict(row)
            prog.bad_epochs = 0
        else:
            prog.bad_epochs += 1
        prog.stopped_early = plan.patience > 0 and prog.bad_epochs >= plan.patience
        if run is not None and rt.dist.is_main:
            _save_epoch(plan, run, prog, row, improved)
            run.log_scalars(row, purge_step=start_epoch)
        if prog.stopped_early:
            log.info("early stop: no %s improvement for %d epochs", plan.monitor, prog.bad_epochs)
            break
    if run is not None:
        run.close()
    distributed.barrier(rt.dist)
    return FitResult(
        run_dir=run.path if run is not None else None,
        model=(plan.checkpoint_model or plan.model).eval(),
        history=prog.history,
        best_epoch=prog.best_epoch,
        best=prog.best_metrics,
        stopped_early=prog.stopped_early,
        train_seconds=prog.train_seconds,
    )
