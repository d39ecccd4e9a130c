"""MobileNetV2 transfer learning: cache the frozen backbone's features once, train the head on them.

    cifarlab transfer --weights ../shared/weights/mobilenet_v2-b0353104.pth
    cifarlab transfer --finetune-from runs/mobilenet_v2_transfer --finetune-epochs 1

The backbone of `mobilenet_v2_transfer` is frozen (weights and BatchNorm statistics), so its
pooled 1280-d features of every image are a fixed function of the image. `train_transfer`
computes them once per split and stores them as `.npy` under
`<data cache>/features/mobilenet_v2-<weights sha>-<image size>px-<dtype>/`, then trains the
165K-parameter head on the cached vectors, which takes seconds per epoch instead of a backbone
pass per step.
Horizontal-flip augmentation is kept by also caching the features of the mirrored training
images and picking one of the two per image and epoch.

The result is an ordinary run folder (config.json, env.json, metrics.csv, best/last
checkpoints of the *whole* model), so `cifarlab evaluate`, `export` and serving treat it like any
other run. `finetune` starts from such a run, unfreezes the backbone and trains end to end for a
few epochs at a small learning rate through the engine's `fit`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.constants import CLASSES
from cifarlab.io import atomic_path, write_json_atomic
from cifarlab.recipes import FinetuneConfig, RecipeError, TransferConfig
from cifarlab.runs import TIMING_FILE, RunDir

log = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "TransferConfig", "finetune", "train_transfer"]

Split = tuple[np.ndarray, np.ndarray]  # uint8 (N, 32, 32, 3), int64 (N,)


class TransferError(RecipeError):
    """Bad transfer-learning configuration or input."""


# ---------------------------------------------------------------- feature cache


def feature_dir(
    cache_dir: str | os.PathLike[str] | None, weights_sha: str, dtype: str, image_size: int = 96
) -> Path:
    """Folder of cached features for one backbone (weights sha), input size and compute dtype."""
    from cifarlab.data import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "features" / f"mobilenet_v2-{weights_sha[:16]}-{image_size}px-{dtype}"


def _onnx_feature_session(model: Any) -> Any:
    """An onnxruntime session computing `model.forward_features` (pooled `(B, 1280)`)."""
    import torch

    from cifarlab.evaluate import onnx_session

    class Features(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_features(x)  # (B, 1280)

    return onnx_session(Features(model))


def extract_features(
    model: Any,
    images: np.ndarray,
    batch_size: int = 250,
    dtype: str = "float32",
    channels_last: bool = False,
    backend: str = "torch",
    session: Any = None,
    progress: bool = False,
) -> np.ndarray:
    """Pooled backbone features `(N, 1280)` float32 of uint8 NHWC `images`.

    `session`: a prebuilt `_onnx_feature_session(model)` to reuse across calls."""
    import torch

    from cifarlab.engine import progress_bar
    from cifarlab.models.mobilenet import FEATURE_DIM
    from cifarlab.preprocess import normalize

    if dtype not in ("float32", "bfloat16"):
        raise TransferError(f"feature dtype must be float32 or bfloat16, got {dtype!r}")
    if backend not in ("torch", "onnxruntime"):
        raise TransferError(f"feature backend must be torch or onnxruntime, got {backend!r}")
    if backend == "onnxruntime" and dtype != "float32":
        raise TransferError("the onnxruntime feature backend computes float32 only; use torch")
    model.eval()
    if backend == "onnxruntime" and session is None:
        session = _onnx_feature_session(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if session is None:
        model.to(memory_format=fmt)
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
    t0 = time.perf_counter()
    bar = progress_bar(len(images), "features", progress)
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = normalize(images[i : i + batch_size])
            if session is not None:
                out[i : i + len(x)] = session.run(None, {"x": x})[0]
            else:
                xt = torch.from_numpy(x).contiguous(memory_format=fmt)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    out[i : i + len(x)] = model.forward_features(xt).float().numpy()
            done = i + len(x)
            bar.update(len(x))
            if (i // batch_size) % 20 == 0 or done == len(images):
                rate = done / (time.perf_counter() - t0)
                log.info(
                    "features %d/%d (%.0f img/s, eta %.0f s)",
                    done,
                    len(images),
                    rate,
                    (len(images) - done) / rate,
                )
    bar.close()
    return out


def cached_features(
    split: str,
    images: np.ndarray,
    folder: Path,
    compute: Callable[[np.ndarray], np.ndarray],
    info: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, float]:
    """Features of `images` from `folder/<split>.npy`, else `compute(images)`, stored atomically.

    Returns (features, seconds the computation took when it was done, as recorded)."""
    from cifarlab.models.mobilenet import FEATURE_DIM

    path = folder / f"{split}.npy"
    info_path = folder / f"{split}.json"
    if path.is_file() and info_path.is_file():
        feats = np.load(path, allow_pickle=False)
        recorded = json.loads(info_path.read_text())
        if feats.shape == (len(images), FEATURE_DIM) and recorded.get("n") == len(images):
            log.info("features for %s from cache %s", split, path)
            return feats, float(recorded.get("seconds", 0.0))
        log.warning("cached features %s do not match %d images; recomputing", path, len(images))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    feats = compute(images)
    seconds = time.perf_counter() - t0
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, feats)
    meta = {"n": len(images), "seconds": seconds, "shape": list(feats.shape), **(info or {})}
    write_json_atomic(info_path, meta)
    log.info("features for %s: %d images in %.1f s", split, len(images), seconds)
    return feats, seconds


# ---------------------------------------------------------------- head training


class FeatureViewLoader:
    """Head-training batches from cached features: a `(seed, epoch)` permutation, and per
    image one of the cached views (plain or mirrored), so flips survive the cache. The
    ragged last batch is kept."""

    def __init__(self, views: Any, labels: Any, batch_size: int, seed: int) -> None:
        self.views, self.labels = views, labels  # (V, N, 1280) float32, (N,) int64
        self.batch_size, self.seed = batch_size, seed

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        import torch

        from cifarlab.engine import derive_seed

        n = len(self.labels)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "head"))
        perm = torch.randperm(n, generator=gen)
        view = torch.randint(len(self.views), (n,), generator=gen)
        for i in range(0, n, self.batch_size):
            idx = perm[i : i + self.batch_size]
            yield self.views[view[idx], idx], self.labels[idx]


def _features(
    cfg: TransferConfig, model: Any, data: Mapping[str, Split], folder: Path
) -> tuple[Any, Any, Any, Any, float]:
    """(train views (V, N, 1280), train labels, val features, val labels, extraction seconds)
    from the cache, computing what is missing."""
    import torch

    (train_x, train_y), (val_x, val_y) = data["train"], data["val"]
    sessions: list[Any] = []  # built on the first cache miss, then reused for every split

    def compute(images: np.ndarray) -> np.ndarray:
        if cfg.feature_backend == "onnxruntime" and not sessions:
            sessions.append(_onnx_feature_session(model))
        return extract_features(
            model,
            images,
            cfg.extract_batch_size,
            cfg.feature_dtype,
            cfg.channels_last,
            cfg.feature_backend,
            session=sessions[0] if sessions else None,
            progress=cfg.progress,
        )

    how = {"dtype": cfg.feature_dtype, "backend": cfg.feature_backend}
    ftrain, seconds = cached_features("train", train_x, folder, compute, how)
    fval, s = cached_features("val", val_x, folder, compute, how)
    seconds += s
    views = [torch.from_numpy(ftrain)]
    if cfg.flip:
        mirrored = np.ascontiguousarray(train_x[:, :, ::-1])  # mirror along width (NHWC)
        fflip, s = cached_features("train_flip", mirrored, folder, compute, how)
        seconds += s
        views.append(torch.from_numpy(fflip))
    as_long = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return torch.stack(views), as_long(train_y), torch.from_numpy(fval), as_long(val_y), seconds


def train_transfer(
    cfg: TransferConfig,
    data: Mapping[str, Split] | None = None,
    pretrained: bool = True,
    resume: bool = False,
    stop_after_epoch: int | None = None,
) -> Path:
    """Train `mobilenet_v2_transfer`'s head on cached features; returns the run folder.

    `data` maps "train" and "val" to (images, labels) (default: `cifarlab.data.load_split`).
    `pretrained=False` builds a randomly initialised backbone (tests only)."""
    import torch
    from torch import nn

    from cifarlab import engine
    from cifarlab.models import get_model
    from cifarlab.models.mobilenet import WEIGHTS_SHA256

    cfg.validate()
    with engine.runtime(cfg.precision, cfg.threads, cfg.progress) as rt:
        # Build first: a missing or wrong weights file must fail before any run folder exists.
        engine.set_seed(cfg.seed)  # Python, numpy and torch, as every recipe does
        model = get_model(
            "mobilenet_v2_transfer",
            pretrained=pretrained,
            weights=cfg.weights,
            input_size=cfg.image_size,
        )
        run = RunDir(Path(cfg.runs_dir) / cfg.name)
        config = {"model": "mobilenet_v2_transfer", **cfg.to_config()}
        engine.open_run(run, config, rt, resume, overwrite=True)
        # A random backbone gets its own cache key so it never mixes with real features.
        weights_key = WEIGHTS_SHA256 if pretrained else f"random-seed{cfg.seed}"
        folder = feature_dir(cfg.cache_dir, weights_key, cfg.feature_dtype, cfg.image_size)
        if data is None:
            from cifarlab.data import load_split

            data = {s: load_split(s, cache_dir=cfg.cache_dir) for s in ("train", "val")}
        views, ytrain, fval, yval, feat_seconds = _features(cfg, model, data, folder)
        loader = FeatureViewLoader(views, ytrain, cfg.batch_size, cfg.seed)
        opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=cfg.epochs * loader.steps_per_epoch,
            pct_start=0.1,  # short warm-up, then cosine decay
            anneal_strategy="cos",
        )
        plan = engine.TrainPlan(
            model=model.head,
            checkpoint_model=model,  # the whole network, so rebuilding needs no ImageNet file
            optimizer=opt,
            criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            train=loader,
            epochs=cfg.epochs,
            meta={
                "model": "mobilenet_v2_transfer",
                "model_kwargs": {"pretrained": False, "input_size": cfg.image_size},
                "classes": list(CLASSES),
                "config": config,
                "backbone_weights_sha256": WEIGHTS_SHA256 if pretrained else None,
            },
            val=(fval, yval),
            hooks=[engine.SchedulerHook(sched)],
            eval_batch_size=2048,
        )
        # Feature extraction is part of what training this model costs, even when a later
        # run reuses the cache: the recorded extraction time is charged every time.
        run.write_json(
            TIMING_FILE,
            {
                "feature_extraction_seconds": feat_seconds,
                "extra_seconds": feat_seconds,
                "feature_dtype": cfg.feature_dtype,
                "feature_cache": str(folder.name),
            },
        )
        result = engine.fit(
            plan, run, rt, seed=cfg.seed, resume=resume, stop_after_epoch=stop_after_epoch
        )
    log.info(
        "best epoch %d val acc %.4f; features %.0f s, head %.0f s",
        result.best_epoch,
        result.best.get("val_acc", float("nan")),
        feat_seconds,
        result.train_seconds,
    )
    return run.path


def finetune(
    cfg: FinetuneConfig, data: Any = None, resume: bool = False, stop_after_epoch: int | None = None
) -> Path:
    """Unfreeze the backbone of a converged transfer run and train it end to end.

    The standard recipe on a model initialised from the parent run: the new run records model
    `mobilenet_v2_finetune` (rebuilt without the ImageNet file: the checkpoint holds every
    weight) and `finetune_from`, and its `timing.json` charges the parent run's training time,
    so the report shows what the fine-tuned model cost in all."""
    from cifarlab.checkpoint import load_model_from_run
    from cifarlab.models import get_model
    from cifarlab.recipes import StandardRecipe
    from cifarlab.runs import train_seconds
    from cifarlab.train import train

    parent = Path(cfg.finetune_from)
    head_model, parent_meta = load_model_from_run(parent, which="best")
    if parent_meta.get("model") not in ("mobilenet_v2_transfer", "mobilenet_v2_finetune"):
        raise TransferError(
            f"--finetune-from {parent} holds a {parent_meta.get('model')!r} run; pass a "
            "mobilenet_v2_transfer run (train one with `cifarlab transfer`)"
        )
    kwargs = {
        "pretrained": False,
        "trainable_from": cfg.trainable_from,
        # Fine-tune at the parent's input size (runs from before the field existed used 96).
        "input_size": int(parent_meta.get("model_kwargs", {}).get("input_size", 96)),
    }
    model = get_model("mobilenet_v2_finetune", **kwargs)
    model.load_state_dict(head_model.state_dict())
    # Every setting both recipes have carries over; fine-tuning fixes the optimizer.
    shared = {f.name for f in fields(StandardRecipe)} & {f.name for f in fields(FinetuneConfig)}
    recipe = StandardRecipe(
        model="mobilenet_v2_finetune",
        model_kwargs=kwargs,
        optimizer="adamw",
        schedule="cosine",  # no warm-up: the head is already converged
        **{name: getattr(cfg, name) for name in shared},
    )
    parent_seconds = train_seconds(parent)
    run_dir = Path(cfg.runs_dir) / cfg.name
    train(
        recipe,
        run_dir,
        data=data,
        model=model,
        resume=resume,
        overwrite=True,
        stop_after_epoch=stop_after_epoch,
        notes={"finetune_from": str(parent)},
        files={
            TIMING_FILE: {
                "finetune_from": str(parent),
                "parent_seconds": parent_seconds,
                "extra_seconds": parent_seconds,
            }
        },
    )
    return run_dir
