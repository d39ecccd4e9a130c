"""The fast recipe: from-scratch training on CPU with the `fast94` and `quick` presets.

    cifarlab fast-train --preset quick --seed 0
    cifarlab fast-train --resume runs/quick-s0

A recipe in the spirit of the public speed-run literature (David Page's "How to train your
ResNet", Keller Jordan's airbench, tysam-code's hlb-cifar10), written for a small CPU:

- data: the 50,000 official training images held in memory as one uint8 tensor; each batch is
  cropped (random translate of a reflect-padded copy) and flipped with one gather, then
  normalised; no per-sample Python work and no DataLoader workers competing for the 2 cores;
- alternating flips: every image is flipped in exactly every other epoch instead of at random;
- net: `cifarlab.models.fastnet` with a frozen patch-whitening first layer set from the data,
  identity-initialised convs and BatchNorm with frozen scales;
- cheaper early phase: the first epochs train on smaller random crops (the net is fully
  convolutional), the last ones at full 32x32;
- optimiser: Nesterov SGD with a warmup-then-decay (triangular) schedule, label smoothing,
  lookahead weight averaging whose pull grows towards the end;
- evaluation: test-time augmentation (flip, then flip plus 1-pixel translates).

Speed-run practice trains on all 50,000 official training images and reports the official
test set; we do the same, hold out nothing, and leave the val columns of `metrics.csv` empty.
The test accuracy goes into the checkpoint metadata and `result.json`.

Everything above is data and hooks for the one engine (`cifarlab.engine.fit`): the loader is a
`BatchSource`, the schedule, lookahead and whitening-bias freeze are `Hook`s, the
low-resolution phase is the loader's size per epoch, and the loss is a summed cross-entropy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import engine
from cifarlab.constants import CIFAR_MEAN_255, CIFAR_STD_255, CLASSES, IMAGE_SIZE
from cifarlab.engine import Hook, TrainPlan, derive_seed
from cifarlab.io import StrPath
from cifarlab.models import get_model
from cifarlab.models.fastnet import FastNet
from cifarlab.muon import Muon
from cifarlab.recipes import PRESETS, FastConfig, FastConfigError, get_preset
from cifarlab.runs import RESULT_FILE, RunDir

log = logging.getLogger(__name__)

__all__ = ["PRESETS", "FastConfig", "FastConfigError", "get_preset", "train"]


# --------------------------------------------------------------------------------------------
# Data: uint8 in memory, vectorised crop + flip per batch


class GpuStyleLoader:
    """Batches of normalised float crops from one in-memory uint8 tensor.

    Each epoch draws a permutation and per-image crop offsets; a single advanced-indexing
    gather then produces crop, flip and the NHWC (channels_last) layout at once. With
    `jpeg_copies` (K, N, 32, 32, 3), a `jpeg_fraction` share of each epoch's images comes from
    a random JPEG copy (clean from epoch `jpeg_clean_from` on), chosen in the same gather.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        translate: int,
        seed: int,
        channels_last: bool = True,
        low_res: int = IMAGE_SIZE,
        low_res_epochs: int = 0,
        jpeg_copies: np.ndarray | None = None,
        jpeg_fraction: float = 0.0,
        jpeg_clean_from: int | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"expected uint8 (N, 32, 32, 3) images, got {images.shape}")
        if len(images) < batch_size:
            raise FastConfigError(
                f"batch_size {batch_size} is larger than the {len(images)} training images; "
                "lower it with a smaller preset or more data"
            )
        n = len(images)
        # Clean images first, then each JPEG copy (K, N, 32, 32, 3): copy k of image i sits at
        # row k * N + i, so choosing a copy per image is part of the same gather.
        self.n_copies = 0 if jpeg_copies is None else len(jpeg_copies)
        if jpeg_copies is not None:
            if jpeg_copies.shape[1:] != images.shape:
                raise ValueError(f"JPEG copies {jpeg_copies.shape} do not match {images.shape}")
            images = np.concatenate([images[None], jpeg_copies]).reshape(-1, *images.shape[1:])
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (M, 3, 32, 32)
        if translate:
            # Reflect padding on uint8 is not implemented in torch; pad once in float, in
            # chunks so the float copy never holds the whole set (50,000 images: 0.8 GB).
            x = torch.cat(
                [
                    F.pad(c.float(), (translate,) * 4, mode="reflect").to(torch.uint8)
                    for c in x.split(4096)
                ]
            )
        self.padded = x.permute(0, 2, 3, 1).contiguous()  # (N, 32+2t, 32+2t, 3) uint8
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.translate = translate
        self.seed = seed
        self.channels_last = channels_last
        self.low_res, self.low_res_epochs = low_res, low_res_epochs
        self.jpeg_fraction, self.jpeg_clean_from = jpeg_fraction, jpeg_clean_from
        flip_gen = torch.Generator().manual_seed(derive_seed(seed, "flip"))
        self.flip_base = torch.rand(n, generator=flip_gen) < 0.5
        self.mean = torch.tensor(CIFAR_MEAN_255).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(CIFAR_STD_255).view(1, 3, 1, 1)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.batch_size  # drop the ragged last batch

    def size(self, epoch: int) -> int:
        """Crop side in `epoch` (1-based): `low_res` for the first `low_res_epochs`."""
        return self.low_res if epoch <= self.low_res_epochs else IMAGE_SIZE

    def fraction(self, epoch: int) -> float:
        """Share of `epoch`'s images served from a JPEG copy."""
        clean = self.jpeg_clean_from is not None and epoch >= self.jpeg_clean_from
        return 0.0 if clean else self.jpeg_fraction

    def epoch(
        self, epoch: int, size: int | None = None, jpeg_fraction: float | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `epoch` (1-based); its randomness derives from `(seed, epoch)` alone,
        so a resumed run draws exactly what an uninterrupted one does."""
        size = size or self.size(epoch)
        fraction = self.fraction(epoch) if jpeg_fraction is None else jpeg_fraction
        n = len(self.labels)
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "crops"))
        order = torch.randperm(n, generator=g)
        row = torch.arange(n)  # row of each image in `padded`: clean unless a copy is chosen
        if self.n_copies and fraction > 0:
            use = torch.rand(n, generator=g) < fraction
            copy = torch.randint(1, self.n_copies + 1, (n,), generator=g)
            row = torch.where(use, copy * n + row, row)
        # Alternating flips: a fixed random half in odd epochs, the other half in even ones.
        flip = self.flip_base ^ bool((epoch - 1) % 2)
        span = IMAGE_SIZE + 2 * self.translate - size  # possible offsets per axis
        oy = torch.randint(0, span + 1, (n,), generator=g)
        ox = torch.randint(0, span + 1, (n,), generator=g)
        ar = torch.arange(size)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            rows = oy[idx, None] + ar  # (B, s)
            fwd = ox[idx, None] + ar
            bwd = ox[idx, None] + (size - 1 - ar)
            cols = torch.where(flip[idx, None], bwd, fwd)  # (B, s), reversed = flipped
            src = row[idx, None, None]
            crop = self.padded[src, rows[:, :, None], cols[:, None, :]]  # (B, s, s, 3)
            yield self._to_float(crop), self.labels[idx]

    def _to_float(self, crop_nhwc: torch.Tensor) -> torch.Tensor:
        x = crop_nhwc.permute(0, 3, 1, 2).float()  # (B, 3, s, s), NHWC in memory
        x = (x - self.mean) * self.inv_std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


def to_input(images: np.ndarray, channels_last: bool = True) -> torch.Tensor:
    """uint8 `(N, 32, 32, 3)` -> normalised float `(N, 3, 32, 32)` (as `preprocess.normalize`)."""
    from cifarlab.preprocess import normalize

    x = torch.from_numpy(normalize(images))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --------------------------------------------------------------------------------------------
# Optimisation pieces


def lr_schedule(total_steps: int, start: float, peak: float, end: float) -> np.ndarray:
    """Multiplier per step 0..total_steps: linear `start` -> 1 at `peak` -> `end`."""
    xp = [0, max(1, int(peak * total_steps)), max(2, total_steps)]
    return np.interp(np.arange(total_steps + 1), xp, [start, 1.0, end])


def _optimizer(model: FastNet, cfg: FastConfig) -> torch.optim.Optimizer:
    """The optimiser of `cfg.optimizer`; the schedule scales each group's `base_lr`."""
    return _muon_optimizer(model, cfg) if cfg.optimizer == "muon" else _sgd_optimizer(model, cfg)


def _muon_optimizer(model: FastNet, cfg: FastConfig) -> Muon:
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    filters = [p for _, p in named if p.ndim == 4]
    biases = [p for _, p in named if p.ndim == 1]  # whitening and BatchNorm biases
    head = [p for k, p in named if k.startswith("head.")]
    if len(filters) + len(biases) + len(head) != len(named):
        raise RuntimeError("fastnet has parameters the muon recipe does not place")
    wd = cfg.decay_per_example * cfg.batch_size  # decay per step, taken as lr x (wd / lr)
    sgd = {"orthogonal": False, "momentum": 0.85}
    # The filters first: metrics.csv reports the lr of group 0.
    groups = [
        {"params": filters, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum},
        {"params": biases, "lr": cfg.bias_lr, "weight_decay": wd / cfg.bias_lr, **sgd},
        {"params": head, "lr": cfg.head_lr, "weight_decay": wd / cfg.head_lr, **sgd},
    ]
    opt = Muon(groups, lr=cfg.muon_lr, ns_steps=cfg.ns_steps)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def _sgd_optimizer(model: FastNet, cfg: FastConfig) -> torch.optim.SGD:
    # With momentum m the step size of a constant gradient grows by 1/(1-m); dividing by it
    # (and by 1024 because the loss is a sum) keeps `cfg.lr` comparable across momenta.
    kilostep_scale = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr / kilostep_scale
    wd = cfg.weight_decay * cfg.batch_size / kilostep_scale
    lr_bias = lr * cfg.bias_scaler
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    norm_biases = [p for k, p in named if ".norm" in k]
    others = [p for k, p in named if ".norm" not in k]
    # weight_decay is divided by lr so that the decay per step (lr * wd) is the same
    # decoupled amount in both groups and follows the schedule.
    # The main group first: metrics.csv reports the lr of group 0.
    groups = [
        {"params": others, "lr": lr, "weight_decay": wd / lr, "base_lr": lr},
        {"params": norm_biases, "lr": lr_bias, "weight_decay": wd / lr_bias, "base_lr": lr_bias},
    ]
    return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=True)


class StepSchedule(Hook):
    """Sets every group's lr to its `base_lr` times the multiplier of the coming step."""

    name = "lr_schedule"

    def __init__(self, optimizer: torch.optim.Optimizer, multipliers: np.ndarray) -> None:
        self.optimizer, self.multipliers = optimizer, multipliers

    def before_step(self, step: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.multipliers[step]


class Lookahead(Hook):
    """Slow weights pulled towards the fast ones every `every` steps by `alpha[step]`; the fast
    ones then restart from them. Training ends on the slow (averaged) weights."""

    name = "lookahead"

    def __init__(self, model: nn.Module, every: int, alpha: np.ndarray) -> None:
        self.model, self.every, self.alpha = model, every, alpha
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, decay: float) -> None:
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                self.slow[k].lerp_(v, 1.0 - decay)
                v.copy_(self.slow[k])

    def after_step(self, steps_done: int) -> None:
        if steps_done % self.every == 0:
            self.update(float(self.alpha[steps_done]))

    def on_train_end(self) -> None:
        self.update(1.0)  # finish on the averaged weights

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return dict(self.slow), None

    def load_state(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        for k, v in tensors.items():
            self.slow[k].copy_(v)


class WhitenBiasFreeze(Hook):
    """The whitening layer's bias trains for the first `epochs` epochs, then freezes."""

    name = "whiten_bias"

    def __init__(self, model: FastNet, epochs: int) -> None:
        self.bias, self.epochs = model.whiten.bias, epochs

    def on_epoch_start(self, epoch: int) -> None:
        if self.bias is not None:
            self.bias.requires_grad_(epoch <= self.epochs)


# --------------------------------------------------------------------------------------------
# FLOPs, training, results


def flops_per_image(cfg: FastConfig, size: int = IMAGE_SIZE) -> float:
    """Forward + backward FLOPs of one training image at crop `size` (counted, not guessed)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = get_model("fastnet", **cfg.model_kwargs())
    x = torch.randn(2, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def plan(cfg: FastConfig, train_data: tuple[np.ndarray, np.ndarray]) -> TrainPlan:
    """The engine plan of a fast recipe (model whitened from the data, loader, hooks)."""
    images, labels = train_data
    model = get_model("fastnet", **cfg.model_kwargs())
    assert isinstance(model, FastNet)
    model.init_whitening(to_input(images[: cfg.whiten_samples], channels_last=False))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    copies = None
    if cfg.jpeg_copies:
        from cifarlab.jpeg import random_copies

        t_jpeg = time.perf_counter()
        copies = random_copies(images, cfg.jpeg_copies, cfg.jpeg_quality, cfg.seed)
        log.info("%d JPEG copies in %.1fs", cfg.jpeg_copies, time.perf_counter() - t_jpeg)
    loader = GpuStyleLoader(
        images,
        labels,
        cfg.batch_size,
        cfg.translate,
        cfg.seed,
        cfg.channels_last,
        low_res=cfg.low_res,
        low_res_epochs=cfg.low_res_epochs,
        jpeg_copies=copies,
        jpeg_fraction=cfg.jpeg_fraction,
        # The last `jpeg_clean_epochs` epochs train on clean images only.
        jpeg_clean_from=math.ceil(cfg.epochs) - cfg.jpeg_clean_epochs + 1,
    )
    if cfg.head_unit_init:
        with torch.no_grad():
            model.head.weight.div_(model.head.weight.std())
    del copies  # the loader holds its own padded copy
    optimizer = _optimizer(model, cfg)
    total_steps = math.ceil(loader.steps_per_epoch * cfg.epochs)
    # The lookahead pull starts negligible and grows cubically to 0.95**5 per pull.
    alpha = 0.95**cfg.lookahead_every * (np.arange(total_steps + 1) / total_steps) ** 3
    hooks: list[Hook] = [
        StepSchedule(optimizer, lr_schedule(total_steps, cfg.lr_start, cfg.lr_peak, cfg.lr_end)),
        WhitenBiasFreeze(model, cfg.whiten_bias_epochs),
    ]
    if cfg.lookahead_every:
        hooks.append(Lookahead(model, cfg.lookahead_every, alpha))
    return TrainPlan(
        model=model,
        optimizer=optimizer,
        # Summed, not averaged: `lr` and `weight_decay` are per 1024 examples (`_optimizer`).
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="sum"),
        train=loader,
        epochs=math.ceil(cfg.epochs),
        max_steps=total_steps,
        meta={
            "model": "fastnet",
            "model_kwargs": cfg.model_kwargs(),
            "classes": list(CLASSES),
            "config": cfg.to_config(),
            # The reported accuracy uses TTA; exporters should wrap the same augmentation.
            "tta_level": cfg.tta_level,
            "split": {"train": "train_full (50,000)", "eval": "test (10,000)"},
        },
        hooks=hooks,
        eval_batch_size=cfg.eval_batch_size,
        channels_last=cfg.channels_last,
    )


def accuracy(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == torch.from_numpy(np.asarray(labels))).float().mean())


def train(
    cfg: FastConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
    run_dir: StrPath | None = None,
    *,
    resume: bool = False,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train `cfg` on `train_data`, evaluate on `test_data` with TTA, fill `run_dir` if given.

    Returns the result dict also written to `run_dir/result.json` (empty when
    `stop_after_epoch` ended the call before the last epoch). `wall_seconds` covers model
    build, whitening, training and the final evaluation (data already in memory). With
    `cfg.holdout`, that share of `train_data` (stratified) only fits the softmax temperature.
    """
    cfg.validate()
    t_start = time.perf_counter()
    train_data, held = _split_holdout(cfg, train_data)
    with engine.runtime(cfg.precision, cfg.threads, cfg.progress) as rt:
        run = RunDir(run_dir) if run_dir is not None else None
        engine.set_seed(cfg.seed)
        p = plan(cfg, train_data)
        if held is not None:
            p.meta["split"] = {
                "train": f"train_full minus the holdout ({len(train_data[1]):,} images)",
                "holdout": f"{len(held[1]):,} images (stratified, temperature only)",
                "eval": "test (10,000)",
            }
        if run is not None:
            # Reruns of a preset replace the old run folder (the benchmark's habit).
            engine.open_run(run, cfg.to_config(), rt, resume, overwrite=True)
        fitted = engine.fit(
            p, run, rt, seed=cfg.seed, resume=resume, stop_after_epoch=stop_after_epoch
        )
        if len(fitted.history) < p.epochs:
            return {}
        t_eval = time.perf_counter()
        metrics: dict[str, Any] = {
            "train_loss": fitted.history[-1]["train_loss"],
            "train_acc": fitted.history[-1]["train_acc"],
        }
        test = _evaluate(cfg, p, rt, test_data, metrics) if test_data is not None else None
        scored = (test, test_data[1]) if test is not None and test_data is not None else None
        temperatures = _calibrate(cfg, p, rt, held, scored, metrics) if held is not None else {}
        eval_seconds = time.perf_counter() - t_eval
        result = _result(cfg, fitted, metrics, p, time.perf_counter() - t_start, eval_seconds)
        result.update(
            holdout_images=0 if held is None else len(held[1]),
            temperature=temperatures or None,
            test_ece={k: v for k, v in metrics.items() if k.startswith("test_ece")} or None,
            threads=torch.get_num_threads(),
            precision=rt.precision.value,
        )
        if run is not None:
            # No held-out set picks a "best" epoch: best is the final weights; its metadata
            # (the engine's schema) gains the test metrics.
            _, meta = run.load("best")
            run.save("best", p.model, {**meta, "metrics": {**meta["metrics"], **metrics}})
            run.write_json(RESULT_FILE, result)
        return result


def _split_holdout(
    cfg: FastConfig, data: tuple[np.ndarray, np.ndarray]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """(training images, held-out images or None): `cfg.holdout` of each class held out."""
    if cfg.holdout <= 0:
        return data, None
    from cifarlab.data import stratified_split

    images, labels = data
    keep, out = stratified_split(labels, val_fraction=cfg.holdout)
    return (images[keep], labels[keep]), (images[out], labels[out])


def _evaluate(
    cfg: FastConfig,
    p: TrainPlan,
    rt: engine.Runtime,
    test_data: tuple[np.ndarray, np.ndarray],
    metrics: dict[str, Any],
) -> engine.EvalResult:
    """Test accuracy at every TTA level up to the preset's, into `metrics`."""
    ev = engine.evaluate(
        p.model,
        *test_data,
        batch_size=cfg.eval_batch_size,
        bf16=rt.bf16,
        channels_last=cfg.channels_last,
        tta=cfg.tta_level,
        return_logits=cfg.holdout > 0,  # the calibration needs them
        progress=cfg.progress,
    )
    names = {"none": "test_acc_no_tta", "flip": "test_acc_flip", "translate": "test_acc_translate"}
    metrics.update({names[k]: v for k, v in ev.tta_acc.items()})
    # `test_acc` in the checkpoint is the flip-TTA number, which `cifarlab export --tta`
    # reproduces in the ONNX graph.
    metrics["test_acc"] = metrics.get("test_acc_flip", metrics["test_acc_no_tta"])
    return ev


def _calibrate(
    cfg: FastConfig,
    p: TrainPlan,
    rt: engine.Runtime,
    held: tuple[np.ndarray, np.ndarray],
    test: tuple[engine.EvalResult, np.ndarray] | None,
    metrics: dict[str, Any],
) -> dict[str, float]:
    """Softmax temperatures fitted on the held-out training images only, never on the test
    set; one per TTA view (none, flip) because averaging mirrored logits changes their scale.
    Test ECE before and after goes into `metrics`."""
    from cifarlab.evaluate import expected_calibration_error, fit_temperature
    from cifarlab.io import softmax

    ev = engine.evaluate(
        p.model,
        *held,
        batch_size=cfg.eval_batch_size,
        bf16=rt.bf16,
        channels_last=cfg.channels_last,
        tta=1,
        return_logits=True,
    )
    temperatures = {v: fit_temperature(lg.numpy(), held[1]) for v, lg in ev.tta_logits.items()}
    metrics.update({f"holdout_acc_{v}": acc for v, acc in ev.tta_acc.items()})
    metrics["temperature"] = temperatures
    if test is not None:
        scored, labels = test
        for view in ("none", "flip"):
            if view not in scored.tta_logits:
                continue
            z = scored.tta_logits[view].numpy()
            key = "no_tta" if view == "none" else view
            metrics[f"test_ece_{key}"] = expected_calibration_error(softmax(z), labels)
            metrics[f"test_ece_{key}_after_temperature"] = expected_calibration_error(
                softmax(z / temperatures[view]), labels
            )
    return temperatures


def _result(
    cfg: FastConfig,
    fitted: engine.FitResult,
    metrics: dict[str, Any],
    p: TrainPlan,
    wall: float,
    eval_seconds: float,
) -> dict[str, Any]:
    steps_per_epoch = p.train.steps_per_epoch
    total_steps = p.max_steps or steps_per_epoch * p.epochs
    sizes = [IMAGE_SIZE if e > cfg.low_res_epochs else cfg.low_res for e in range(1, p.epochs + 1)]
    flops = {s: flops_per_image(cfg, s) for s in set(sizes)}
    total_flops = 0.0
    for e, size in enumerate(sizes):
        steps = min(steps_per_epoch, total_steps - e * steps_per_epoch)
        total_flops += steps * cfg.batch_size * flops[size]
    n_seen = total_steps * cfg.batch_size
    train_seconds = fitted.train_seconds
    tta_key = {0: "test_acc_no_tta", 1: "test_acc_flip", 2: "test_acc_translate"}[cfg.tta_level]
    return {
        "preset": cfg.name,
        "seed": cfg.seed,
        "test_accuracy": metrics.get(tta_key),
        "test_accuracy_no_tta": metrics.get("test_acc_no_tta"),
        "test_accuracy_flip_tta": metrics.get("test_acc_flip"),
        "tta_level": cfg.tta_level,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "setup_seconds": round(wall - train_seconds - eval_seconds, 2),
        "train_images": n_seen,
        "images_per_second": round(n_seen / max(train_seconds, 1e-9), 1),
        "train_gflop": round(total_flops / 1e9, 1),
        "gflops_per_second": round(total_flops / 1e9 / max(train_seconds, 1e-9), 1),
        "flops_per_image": {str(k): v for k, v in sorted(flops.items())},
    }
