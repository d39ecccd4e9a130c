"""The standard recipe: a registered model trained on in-memory CIFAR-10 by the engine.

    cifarlab train --recipe seed-baseline
    cifarlab train --model baseline_cnn --epochs 20 --name baseline_cnn
    cifarlab train --resume runs/baseline_cnn
    torchrun --standalone --nproc-per-node=2 -m cifarlab train --model baseline_cnn --subset 2000

`StandardRecipe` holds every knob (the command line is generated from its fields); `train`
turns it into a `cifarlab.engine.TrainPlan` (model, optimizer, per-step scheduler hook, the
engine's `ArrayLoader` with an augmentation preset) and runs `engine.fit`. The seed CNNs of the
original study, MobileNetV2 fine-tuning (`cifarlab.transfer.finetune`) and any other
registered model train this way.

`data` is an optional preloaded `TrainData(x_train, y_train, x_val, y_val)` (numpy arrays or
tensors); without it `cifarlab.data.load_split` supplies `train_split`/`val_split`. uint8
`(N, 32, 32, 3)` inputs go through the augment preset and `transforms.to_model_input`; any
other input (e.g. cached float features) is fed to the model as float32 unchanged. Only
parameters with `requires_grad` are optimised (frozen backbones stay frozen).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cifarlab import engine
from cifarlab.constants import CLASSES
from cifarlab.engine import ArrayLoader, FitResult, SchedulerHook, TrainPlan, as_tensor
from cifarlab.io import StrPath
from cifarlab.recipes import SEED_PRESETS, StandardRecipe
from cifarlab.runs import RunDir
from cifarlab.transforms import get_preset

__all__ = ["SEED_PRESETS", "StandardRecipe", "TrainData", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainData:
    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any


def build_optimizer(params: list[nn.Parameter], r: StandardRecipe) -> torch.optim.Optimizer:
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(
        params, lr=r.lr, momentum=0.9, nesterov=True, weight_decay=r.weight_decay
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, r: StandardRecipe, steps_per_epoch: int
) -> Any:
    total = r.epochs * steps_per_epoch
    if r.schedule == "onecycle":
        if total < 3:  # OneCycleLR divides by its phase lengths; nothing to schedule anyway
            return None
        # Warm up over the first 25% of steps (at least 2), then cosine-anneal to
        # lr / (25 * 1e4).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=r.lr, total_steps=total, pct_start=min(0.5, max(0.25, 2 / total))
        )
    if r.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def load_data(r: StandardRecipe, data: TrainData | None) -> TrainData:
    if data is None:
        from cifarlab.data import load_split

        data = TrainData(
            *load_split(r.train_split, r.cache_dir), *load_split(r.val_split, r.cache_dir)
        )
    x_tr, y_tr, x_va, y_va = (
        as_tensor(a) for a in (data.x_train, data.y_train, data.x_val, data.y_val)
    )
    if r.subset is not None:
        n_val = max(1, r.subset // 4)
        x_tr, y_tr, x_va, y_va = x_tr[: r.subset], y_tr[: r.subset], x_va[:n_val], y_va[:n_val]
    return TrainData(x_tr, y_tr.long(), x_va, y_va.long())


def plan(r: StandardRecipe, model: nn.Module, data: TrainData, rt: engine.Runtime) -> TrainPlan:
    """The engine plan of a standard recipe for a built model and loaded data."""
    model = model.to(rt.dist.device)
    if r.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    loader = ArrayLoader(
        data.x_train,
        data.y_train,
        r.batch_size,
        r.seed,
        augment=get_preset(r.augment),
        channels_last=r.channels_last,
        dist=rt.dist,
    )
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], r)
    scheduler = build_scheduler(optimizer, r, loader.steps_per_epoch)
    return TrainPlan(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(label_smoothing=r.label_smoothing),
        train=loader,
        epochs=r.epochs,
        meta={
            "model": r.model,
            "model_kwargs": r.model_kwargs,
            "classes": list(CLASSES),
            "config": r.to_config(),
        },
        val=(data.x_val, data.y_val),
        hooks=[SchedulerHook(scheduler)] if scheduler is not None else [],
        monitor=r.monitor,
        patience=r.patience,
        eval_batch_size=r.eval_batch_size,
        channels_last=r.channels_last,
    )


def train(
    r: StandardRecipe,
    run_dir: StrPath | None,
    *,
    data: TrainData | None = None,
    model: nn.Module | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epoch: int | None = None,
    notes: dict[str, Any] | None = None,
    files: dict[str, Any] | None = None,
) -> FitResult:
    """Train `r` into `run_dir` (None: no run folder); `resume=True` continues it exactly.

    `model` is an optional prebuilt module; checkpoints still record `r.model` and
    `r.model_kwargs`, which must rebuild a module with the same state-dict keys for
    `checkpoint.load_model_from_run` to work. `notes` are extra config.json entries (e.g.
    `finetune_from`), `files` extra JSON files of the run folder (e.g. timing.json).
    """
    from cifarlab.models import get_model

    r.validate()
    with engine.runtime(r.precision, r.threads, r.progress) as rt:
        run = RunDir(run_dir) if run_dir is not None else None
        if run is not None and not resume:
            run.check_new(overwrite)  # before any work
        # Same initial weights whatever the process count or resume: seed, then build.
        engine.set_seed(r.seed)
        if model is None:
            model = get_model(r.model, **r.model_kwargs)
        p = plan(r, model, load_data(r, data), rt)
        if run is not None:
            config = {**r.to_config(), **(notes or {})}
            engine.open_run(run, config, rt, resume, overwrite, files)
        return engine.fit(p, run, rt, seed=r.seed, resume=resume, stop_after_epoch=stop_after_epoch)
