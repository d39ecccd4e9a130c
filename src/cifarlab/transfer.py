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

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.constants import CLASSES
from cifarlab.errors import CifarlabError

log = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]  # uint8 (N, 32, 32, 3), int64 (N,)
TIMING_FILE = "timing.json"


class TransferError(CifarlabError):
    """Bad transfer-learning configuration or input."""


@dataclass(frozen=True)
class TransferConfig:
    """Head training on cached features; every field can be set from the CLI."""

    name: str = "mobilenet_v2_transfer"  # run folder name under runs_dir
    runs_dir: str = "runs"
    weights: str | None = None  # ImageNet .pth; None: $CIFARLAB_MOBILENET_WEIGHTS or hub cache
    cache_dir: str | None = None  # data cache (features go in its features/ folder)
    epochs: int = 30  # head epochs over the 40,000 cached training vectors
    batch_size: int = 256
    lr: float = 1e-3  # AdamW peak, cosine-decayed to 0 over `epochs`
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    flip: bool = True  # also cache mirrored training images: flip augmentation in feature space
    feature_dtype: str = "float32"  # backbone compute for the cache: float32 | bfloat16
    channels_last: bool = False  # torch backend only: memory format for extraction
    # onnxruntime ran the backbone 4.2x faster than torch on this CPU (516 vs 124 img/s; 2.8x
    # vs channels_last), features within 3.9e-5 (max abs diff); see
    # reports/bench/transfer_features.json. float32 only.
    feature_backend: str = "onnxruntime"  # onnxruntime | torch
    extract_batch_size: int = 250
    # Pixels the 32x32 images are resized to before the backbone: 96 is the seed study's;
    # torchvision's weights were trained at 224, so larger inputs give better frozen features
    # at (size/96)^2 times the extraction cost.
    image_size: int = 96
    seed: int = 0


@dataclass(frozen=True)
class FinetuneConfig:
    """End-to-end fine-tuning of a converged transfer run (backbone unfrozen)."""

    finetune_from: str = "runs/mobilenet_v2_transfer"
    name: str = "mobilenet_v2_finetune"
    runs_dir: str = "runs"
    cache_dir: str | None = None
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4  # small: the ImageNet features must not be destroyed in one epoch
    weight_decay: float = 1e-4
    augment: str = "none"  # engine augmentation preset (cifarlab.transforms)
    subset: int | None = None  # first N training images (val gets N // 4): the CPU budget knob
    trainable_from: int = 0  # first backbone block to train (0 = all 19; 14 = the 3x3-map blocks)
    seed: int = 0
    threads: int | None = None
    # channels_last ran MobileNetV2 1.5x faster than contiguous in torch on this CPU
    # (reports/bench/transfer_features.json); bf16 autocast was 5-11x slower (this CPU has
    # no native bf16), so it stays off.
    channels_last: bool = True
    progress: bool = True


# ---------------------------------------------------------------- small run-folder helpers


def _atomic_write(path: Path, text: str) -> None:
    from cifarlab.checkpoint import atomic_write_text  # unique temp name, fsync, rename

    atomic_write_text(path, text)


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
) -> np.ndarray:
    """Pooled backbone features `(N, 1280)` float32 of uint8 NHWC `images`.

    `session`: a prebuilt `_onnx_feature_session(model)` to reuse across calls."""
    import torch

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
            if (i // batch_size) % 20 == 0 or done == len(images):
                rate = done / (time.perf_counter() - t0)
                log.info(
                    "features %d/%d (%.0f img/s, eta %.0f s)",
                    done,
                    len(images),
                    rate,
                    (len(images) - done) / rate,
                )
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
    tmp = folder / f".{split}.tmp.npy"
    np.save(tmp, feats)
    os.replace(tmp, path)
    meta = {"n": len(images), "seconds": seconds, "shape": list(feats.shape), **(info or {})}
    _atomic_write(info_path, json.dumps(meta, indent=2))
    log.info("features for %s: %d images in %.1f s", split, len(images), seconds)
    return feats, seconds


# ---------------------------------------------------------------- head training


def _head_epoch_metrics(
    head: Any, feats: Any, labels: Any, batch_size: int = 2048
) -> tuple[float, float]:
    import torch
    from torch.nn import functional as F

    head.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(feats), batch_size):
            logits = head(feats[i : i + batch_size])
            y = labels[i : i + batch_size]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(feats), correct / len(feats)


def train_transfer(
    cfg: TransferConfig, data: Mapping[str, Split] | None = None, pretrained: bool = True
) -> Path:
    """Train `mobilenet_v2_transfer`'s head on cached features; returns the run folder.

    `data` maps "train" and "val" to (images, labels) (default: `cifarlab.data.load_split`).
    `pretrained=False` builds a randomly initialised backbone (tests only)."""
    import torch
    from torch.nn import functional as F

    from cifarlab.checkpoint import save_checkpoint, write_metrics_csv
    from cifarlab.models import get_model
    from cifarlab.models.mobilenet import WEIGHTS_SHA256, count_params
    from cifarlab.train import env_info, set_seed

    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise TransferError(
            f"epochs and batch size must be >= 1, got {cfg.epochs}, {cfg.batch_size}"
        )
    if not 32 <= cfg.image_size <= 512:
        raise TransferError(
            f"--image-size must be 32..512 pixels (96 is the seed study's), got {cfg.image_size}"
        )
    # Build first: a missing or wrong weights file must fail before any run folder exists.
    set_seed(cfg.seed)  # Python, numpy and torch, as `cifarlab train` does
    model = get_model(
        "mobilenet_v2_transfer",
        pretrained=pretrained,
        weights=cfg.weights,
        input_size=cfg.image_size,
    )
    run = Path(cfg.runs_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    env = env_info()
    _atomic_write(
        run / "config.json", json.dumps({"model": "mobilenet_v2_transfer", **asdict(cfg)}, indent=2)
    )
    _atomic_write(run / "env.json", json.dumps(env, indent=2))

    # A random backbone gets its own cache key so it never mixes with real features.
    weights_key = WEIGHTS_SHA256 if pretrained else f"random-seed{cfg.seed}"
    folder = feature_dir(cfg.cache_dir, weights_key, cfg.feature_dtype, cfg.image_size)
    if data is None:
        from cifarlab.data import load_split

        data = {s: load_split(s, cache_dir=cfg.cache_dir) for s in ("train", "val")}
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
        )

    how = {"dtype": cfg.feature_dtype, "backend": cfg.feature_backend}
    ftrain, feat_seconds = cached_features("train", train_x, folder, compute, how)
    fval, s = cached_features("val", val_x, folder, compute, how)
    feat_seconds += s
    train_views = [torch.from_numpy(ftrain)]
    if cfg.flip:
        mirrored = np.ascontiguousarray(train_x[:, :, ::-1])  # mirror along width (NHWC)
        fflip, s = cached_features("train_flip", mirrored, folder, compute, how)
        feat_seconds += s
        train_views.append(torch.from_numpy(fflip))
    views = torch.stack(train_views)  # (V, N, 1280)
    ytrain = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    fval_t = torch.from_numpy(fval)
    yval = torch.as_tensor(np.asarray(val_y), dtype=torch.long)

    head = model.head
    params = [p for p in head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(ytrain) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.lr,
        total_steps=cfg.epochs * steps_per_epoch,
        pct_start=0.1,  # short warm-up, then cosine decay
        anneal_strategy="cos",
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict[str, float]] = []
    best_acc, best_state, best_epoch = -1.0, None, 0
    n = len(ytrain)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        head.train()
        perm = torch.randperm(n, generator=gen)
        view = torch.randint(len(views), (n,), generator=gen)
        loss_sum, correct = 0.0, 0
        lr = opt.param_groups[0]["lr"]
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x = views[view[idx], idx]
            y = ytrain[idx]
            logits = head(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        val_loss, val_acc = _head_epoch_metrics(head, fval_t, yval)
        row = {
            "epoch": epoch,
            # Running train metrics with dropout on, as Keras reports them (and the engine).
            "train_loss": loss_sum / n,
            "train_acc": correct / n,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        write_metrics_csv(run / "metrics.csv", rows)
        log.info(
            "epoch %d/%d train %.4f/%.4f val %.4f/%.4f",
            epoch,
            cfg.epochs,
            row["train_loss"],
            row["train_acc"],
            val_loss,
            val_acc,
        )
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}

    total, trainable = count_params(model)
    meta_base = {
        "model": "mobilenet_v2_transfer",
        # The checkpoint holds the whole network, so rebuilding needs no ImageNet file.
        "model_kwargs": {"pretrained": False, "input_size": cfg.image_size},
        "classes": list(CLASSES),
        "config": {"model": "mobilenet_v2_transfer", **asdict(cfg)},
        "params_total": total,
        "params_trainable": trainable,
        "backbone_weights_sha256": WEIGHTS_SHA256 if pretrained else None,
    }
    last = rows[-1]
    save_checkpoint(run / "last", model, {**meta_base, "epoch": last["epoch"], "metrics": last})
    assert best_state is not None
    head.load_state_dict(best_state)
    save_checkpoint(
        run / "best", model, {**meta_base, "epoch": best_epoch, "metrics": rows[best_epoch - 1]}
    )
    head_seconds = sum(r["seconds"] for r in rows)
    _atomic_write(
        run / TIMING_FILE,
        json.dumps(
            {
                # Feature extraction is part of what training this model costs, even when a
                # later run reuses the cache: the recorded extraction time is charged every time.
                "feature_extraction_seconds": feat_seconds,
                "head_seconds": head_seconds,
                "extra_seconds": feat_seconds,
                "feature_dtype": cfg.feature_dtype,
                "feature_cache": str(folder.name),
            },
            indent=2,
        ),
    )
    log.info(
        "best epoch %d val acc %.4f; params %d total, %d trainable; features %.0f s, head %.0f s",
        best_epoch,
        best_acc,
        total,
        trainable,
        feat_seconds,
        head_seconds,
    )
    return run


def finetune(cfg: FinetuneConfig, data: Any = None) -> Path:
    """Unfreeze the backbone of a converged transfer run and train end to end with `fit`.

    The new run records model `mobilenet_v2_finetune` (rebuilt without the ImageNet file: the
    checkpoint holds every weight) and `finetune_from`, and its `timing.json` charges the
    parent run's training time, so the report shows what the fine-tuned model cost in all."""
    from cifarlab.checkpoint import load_model_from_run
    from cifarlab.models import get_model
    from cifarlab.train import TrainConfig, fit

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
    tcfg = TrainConfig(
        model="mobilenet_v2_finetune",
        model_kwargs=kwargs,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer="adamw",
        weight_decay=cfg.weight_decay,
        schedule="cosine",  # no warm-up: the head is already converged
        augment=cfg.augment,
        seed=cfg.seed,
        run_dir=str(Path(cfg.runs_dir) / cfg.name),
        subset=cfg.subset,
        cache_dir=cfg.cache_dir,
        threads=cfg.threads,
        channels_last=cfg.channels_last,
        progress=cfg.progress,
    )
    result = fit(tcfg, data=data, model=model, overwrite=True)
    run = Path(tcfg.run_dir)
    parent_seconds = train_seconds(parent)
    config = json.loads((run / "config.json").read_text())
    config["finetune_from"] = str(parent)
    _atomic_write(run / "config.json", json.dumps(config, indent=2))
    _atomic_write(
        run / TIMING_FILE,
        json.dumps(
            {
                "finetune_from": str(parent),
                "parent_seconds": parent_seconds,
                "extra_seconds": parent_seconds,
                "finetune_seconds": result.train_seconds,
            },
            indent=2,
        ),
    )
    return run


def train_seconds(run_dir: str | os.PathLike[str]) -> float:
    """Wall time that produced a run: its epochs (metrics.csv) plus `timing.json` extras
    (feature extraction for transfer runs, the parent run for fine-tuned ones)."""
    run = Path(run_dir)
    total = 0.0
    metrics = run / "metrics.csv"
    if metrics.is_file():
        with open(metrics, newline="") as fh:
            total += sum(float(r["seconds"]) for r in csv.DictReader(fh) if r.get("seconds"))
    timing = run / TIMING_FILE
    if timing.is_file():
        total += float(json.loads(timing.read_text()).get("extra_seconds", 0.0))
    return total
