"""Recipes as data: the named presets of every way cifarlab trains, and the base they share.

    python -c "from cifarlab.recipes import list_recipes; print(list_recipes())"

A recipe is a frozen dataclass; its fields carry their help text and choices
(`opt(default, help)`), so the command line is generated from them (`cifarlab.cli.flags`)
and `config.json` is `{"recipe": kind, **fields}`. Each kind lives beside the code that turns
it into a `cifarlab.engine.TrainPlan`:

- `standard`: `cifarlab.train.StandardRecipe`, presets seed-baseline and seed-augmented,
  command `cifarlab train`;
- `finetune`: `cifarlab.transfer.FinetuneConfig`, command `cifarlab finetune`;
- `transfer`: `cifarlab.transfer.TransferConfig`, command `cifarlab transfer`;
- `fast`: `cifarlab.fast.FastConfig`, presets fast94 and quick, command `cifarlab fast-train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from cifarlab.constants import IMAGE_SIZE
from cifarlab.errors import CifarlabError
from cifarlab.io import StrPath

T = TypeVar("T")


class RecipeError(CifarlabError):
    """An unknown recipe, preset or setting, or a value out of range."""


def opt(default: T, help: str, **extra: Any) -> T:
    """A recipe field with its help text (and e.g. `choices=`, `flag=`) for the CLI."""
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults need default_factory")
    return dataclasses.field(default=default, metadata={"help": help, **extra})  # type: ignore[no-any-return]


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """Settings every recipe has: randomness, precision, threads, progress, data cache."""

    kind: ClassVar[str] = "recipe"

    seed: int = opt(0, "random seed; every random stream of the run derives from it")
    precision: str = opt(
        "auto",
        "auto: bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX), else fp32",
        choices=PRECISIONS,
    )
    threads: int | None = opt(None, "torch CPU threads (default: the CPUs this process may use)")
    progress: bool = opt(True, "progress bars (drawn only on a terminal)")
    cache_dir: str | None = opt(
        None, "prepared data cache (default: $CIFARLAB_CACHE or user cache)"
    )

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise RecipeError(
                f"unknown precision {self.precision!r}; pick one of {', '.join(PRECISIONS)}"
            )
        if self.threads is not None and self.threads < 0:
            raise RecipeError(f"threads must be >= 0 (0 = automatic), got {self.threads}")

    def to_config(self) -> dict[str, Any]:
        """What config.json holds: the kind and every resolved field."""
        return {"recipe": self.kind, **dataclasses.asdict(self)}


def from_fields(cls: type[T], raw: dict[str, Any], what: str) -> T:
    """`cls(**raw)` with a clear error for unknown names; lists become tuples where the
    field's default is a tuple (JSON has no tuples)."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RecipeError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    fixed = {
        k: tuple(v) if isinstance(v, list) and isinstance(known[k].default, tuple) else v
        for k, v in raw.items()
    }
    return cls(**fixed)


# ---- standard: the seed CNNs and any registered model (cifarlab.train)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
MONITORS = ("val_acc", "val_loss")

# The seed study trains augmented_cnn with the Keras pipeline; other models default to none.
DEFAULT_AUGMENT = {"augmented_cnn": "keras_aug"}


@dataclass(frozen=True)
class StandardRecipe(Recipe):
    """A registered model, an optimizer with a per-step schedule, an augmentation preset."""

    kind = "standard"

    model: str = opt("baseline_cnn", "registered model (see `cifarlab train --list-models`)")
    model_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra model argument KEY=VALUE (JSON value), repeatable",
            "kv": True,
            "flag": "model-kwarg",
        },
    )
    epochs: int = opt(20, "epochs")
    batch_size: int = opt(128, "global batch size, split evenly over distributed processes")
    lr: float = opt(1e-3, "peak learning rate (onecycle) or start learning rate (cosine)")
    optimizer: str = opt("adam", "sgd is nesterov with momentum 0.9", choices=OPTIMIZERS)
    weight_decay: float = opt(0.0, "weight decay")
    schedule: str = opt("onecycle", "learning-rate schedule, stepped per batch", choices=SCHEDULES)
    augment: str = opt("auto", "augmentation preset: none | keras_aug; auto: the model's own")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    patience: int = opt(0, "epochs without improvement before stopping; 0 = never")
    monitor: str = opt("val_acc", "metric that picks `best` (and early stopping)", choices=MONITORS)
    train_split: str = opt(
        "train",
        "train_full trains on all 50,000 (then validates on test)",
        choices=("train", "train_full"),
    )
    val_split: str = opt("val", "validation split", choices=("val", "test"))
    subset: int | None = opt(None, "first N training images (smoke runs); validation gets N // 4")
    eval_batch_size: int = opt(1000, "validation batch size")
    # +9% (baseline) and +26% (augmented) img/s on a 2-core AVX2 CPU (bench/train_speed.py).
    channels_last: bool = opt(True, "channels_last memory format")

    def __post_init__(self) -> None:
        if self.augment == "auto":  # resolved here so config.json names the preset used
            object.__setattr__(self, "augment", DEFAULT_AUGMENT.get(self.model, "none"))
        if self.train_split == "train_full" and self.val_split == "val":
            object.__setattr__(self, "val_split", "test")  # nothing held out: say it is test

    def validate(self) -> None:
        super().validate()
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
                raise RecipeError(msg)
        from cifarlab.transforms import get_preset

        get_preset(self.augment)  # unknown presets raise with the known names


SEED_PRESETS: dict[str, StandardRecipe] = {
    # The two CNNs of the original study, with the settings of the committed runs
    # (reports/runs/*/config.json).
    "seed-baseline": StandardRecipe(model="baseline_cnn", epochs=12, lr=2e-3),
    "seed-augmented": StandardRecipe(model="augmented_cnn", epochs=30, lr=3e-3),
}


# ---- transfer and fine-tuning (cifarlab.transfer)


@dataclass(frozen=True)
class TransferConfig(Recipe):
    """Head training on cached features; every field can be set from the CLI."""

    kind = "transfer"

    name: str = opt("mobilenet_v2_transfer", "run folder name under --runs-dir")
    runs_dir: str = opt("runs", "folder that holds run folders")
    weights: str | None = opt(
        None, "ImageNet mobilenet_v2 .pth (default: $CIFARLAB_MOBILENET_WEIGHTS or hub cache)"
    )
    epochs: int = opt(30, "head epochs over the 40,000 cached training vectors")
    batch_size: int = opt(256, "head batch size")
    lr: float = opt(1e-3, "AdamW peak learning rate, cosine-decayed to 0 over the epochs")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    flip: bool = opt(True, "also cache mirrored training images: flip augmentation of features")
    feature_dtype: str = opt(
        "float32",
        "backbone compute for the cache (torch backend only)",
        choices=("float32", "bfloat16"),
    )
    channels_last: bool = opt(False, "torch backend: channels_last memory format for extraction")
    # onnxruntime ran the backbone 4.2x faster than torch on a 2-core AVX2 CPU (516 vs 124
    # img/s; 2.8x vs channels_last), features within 3.9e-5 (max abs diff); see
    # reports/bench/transfer_features.json. float32 only.
    feature_backend: str = opt(
        "onnxruntime",
        "engine for the one-off backbone pass over the images",
        choices=("onnxruntime", "torch"),
    )
    extract_batch_size: int = opt(250, "images per backbone pass when caching features")
    # 96 is the seed study's size; torchvision's weights were trained at 224, so larger inputs
    # give better frozen features at (size/96)^2 times the extraction cost.
    image_size: int = opt(96, "pixels the 32x32 images are resized to before the backbone")

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.batch_size < 1:
            raise RecipeError(
                f"epochs and batch size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not 32 <= self.image_size <= 512:
            raise RecipeError(
                f"--image-size must be 32..512 pixels (96 is the seed study's), "
                f"got {self.image_size}"
            )


@dataclass(frozen=True)
class FinetuneConfig(Recipe):
    """End-to-end fine-tuning of a converged transfer run (backbone unfrozen)."""

    kind = "finetune"

    finetune_from: str = opt("runs/mobilenet_v2_transfer", "transfer run to start from")
    name: str = opt("mobilenet_v2_finetune", "run folder name under --runs-dir")
    runs_dir: str = opt("runs", "folder that holds run folders")
    epochs: int = opt(1, "fine-tuning epochs")
    batch_size: int = opt(64, "batch size")
    lr: float = opt(1e-4, "small: the ImageNet features must not be destroyed in one epoch")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    augment: str = opt("none", "augmentation preset (cifarlab.transforms)")
    subset: int | None = opt(None, "first N training images (val gets N // 4): the CPU budget knob")
    trainable_from: int = opt(
        0, "first backbone block to train (0 = all 19; 14 = the 3x3-map blocks)"
    )
    # channels_last ran MobileNetV2 1.5x faster than contiguous in torch on a 2-core AVX2 CPU
    # (reports/bench/transfer_features.json).
    channels_last: bool = opt(True, "channels_last memory format")


# ---- fast: the speed-run recipe (cifarlab.fast)


class FastConfigError(RecipeError):
    """A preset name or override that does not make sense."""


@dataclass(frozen=True)
class FastConfig(Recipe):
    """One fast-training recipe. Learning rate and weight decay are per 1024 examples."""

    kind = "fast"

    name: str = opt("fast94", "preset this recipe started from (names the default run folder)")
    epochs: float = opt(11.0, "total epochs, may be fractional (the last epoch is cut short)")
    low_res: int = opt(24, "crop side during the cheap early phase")
    low_res_epochs: int = opt(0, "how many leading epochs use `low_res` crops")
    batch_size: int = opt(1024, "examples per step")
    lr: float = opt(11.5, "learning rate per 1024 examples, decoupled from momentum")
    momentum: float = opt(0.85, "Nesterov SGD momentum")
    weight_decay: float = opt(0.0153, "weight decay per 1024 examples")
    bias_scaler: float = opt(64.0, "BatchNorm biases learn this much faster than weights")
    label_smoothing: float = opt(0.2, "label smoothing of the cross-entropy")
    lr_start: float = opt(0.2, "schedule multipliers: start -> 1 at `lr_peak` -> `lr_end`")
    lr_peak: float = opt(0.23, "fraction of all steps at which the schedule peaks")
    lr_end: float = opt(0.07, "schedule multiplier at the last step")
    whiten_bias_epochs: int = opt(3, "the whitening bias trains this long, then freezes")
    lookahead_every: int = opt(5, "steps between lookahead pulls; 0 turns lookahead off")
    optimizer: str = opt(
        "sgd",
        "sgd: Nesterov SGD for every parameter (lr, momentum, weight_decay); muon: "
        "orthogonalised updates for the conv filters (cifarlab.muon), Nesterov SGD with "
        "momentum 0.85 for biases and head (bias_lr, head_lr, decay_per_example)",
        choices=("sgd", "muon"),
    )
    muon_lr: float = opt(0.24, "muon: filter step per update, in units of the fixed filter norm")
    muon_momentum: float = opt(0.6, "muon: Nesterov momentum of the filter updates")
    ns_steps: int = opt(3, "muon: Newton-Schulz iterations per orthogonalisation")
    bias_lr: float = opt(0.053, "muon: SGD lr of whitening and BatchNorm biases (summed loss)")
    head_lr: float = opt(0.67, "muon: SGD lr of the linear head (summed loss)")
    decay_per_example: float = opt(2e-6, "muon: weight decay per step = this x batch_size")
    head_unit_init: bool = opt(False, "rescale the head weights to std 1 (pair with logit_scale)")
    translate: int = opt(2, "pixels of random translation (reflect padding)")
    widths: tuple[int, int, int] = opt((64, 256, 256), "channels of the three conv groups")
    bn_momentum: float = opt(0.6, "fraction of the running statistics kept per step")
    logit_scale: float = opt(1 / 9, "logits are scaled by this (a temperature at init)")
    tta_level: int = opt(2, "0 none, 1 flip, 2 flip + 1-pixel translates", choices=(0, 1, 2))
    whiten_samples: int = opt(5000, "images used to estimate the patch covariance")
    channels_last: bool = opt(True, "channels_last memory format")
    eval_batch_size: int = opt(2000, "test evaluation batch size")
    # JPEG augmentation (off at 0): `jpeg_copies` re-encoded copies of the training set are
    # made once (Pillow, each image at its own random quality in `jpeg_quality`), and each
    # batch takes a `jpeg_fraction` share of its images from a random copy by an index gather,
    # so the loader's per-step cost does not change. The last `jpeg_clean_epochs` are clean.
    jpeg_copies: int = opt(0, "JPEG augmentation: re-encoded copies of the training set (0: off)")
    jpeg_quality: tuple[int, int] = opt(
        (30, 95), "inclusive Pillow quality range of the JPEG copies (LOW HIGH)"
    )
    jpeg_fraction: float = opt(0.5, "share of each batch taken from a JPEG copy")
    jpeg_clean_epochs: int = opt(0, "last epochs that train on clean images only")
    # Fraction of the training images held out (stratified, fixed seed) and used only to fit
    # the softmax temperature after training; 0 trains on all of them, as speed runs do.
    holdout: float = opt(0.0, "fraction of training images held out to fit the softmax temperature")

    def validate(self) -> None:
        super().validate()
        if self.epochs <= 0 or self.batch_size < 1:
            raise FastConfigError(f"preset {self.name!r}: epochs and batch_size must be > 0")
        if not 8 <= self.low_res <= IMAGE_SIZE:
            raise FastConfigError(f"preset {self.name!r}: low_res must be in 8..{IMAGE_SIZE}")
        if self.tta_level not in (0, 1, 2):
            raise FastConfigError(f"preset {self.name!r}: tta_level must be 0, 1 or 2")
        if not 0 < self.lr_peak < 1:
            raise FastConfigError(f"preset {self.name!r}: lr_peak must be between 0 and 1")
        if self.optimizer not in ("sgd", "muon"):
            raise FastConfigError(
                f"preset {self.name!r}: optimizer must be 'sgd' or 'muon', got {self.optimizer!r}"
            )
        if self.lookahead_every < 0:
            raise FastConfigError(f"preset {self.name!r}: lookahead_every must be >= 0")
        if self.jpeg_copies < 0 or not 0 <= self.jpeg_fraction <= 1:
            raise FastConfigError(
                f"preset {self.name!r}: jpeg_copies must be >= 0 and jpeg_fraction in 0..1"
            )
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 95:
            raise FastConfigError(
                f"preset {self.name!r}: jpeg_quality {self.jpeg_quality} must be two qualities "
                "with 1 <= low <= high <= 95"
            )
        if not 0 <= self.holdout < 0.5:
            raise FastConfigError(
                f"preset {self.name!r}: holdout is a fraction of the training set in [0, 0.5)"
            )

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "widths": list(self.widths),
            "bn_momentum": self.bn_momentum,
            "logit_scale": self.logit_scale,
        }


PRESETS: dict[str, FastConfig] = {
    # The yardstick of issue 10, not a recipe to beat others with: airbench94 as published
    # (FastConfig's defaults are its hyperparameters), 9.9 epochs at 32 px, its TTA.
    # `bench/fast_training.py` times its step on the machine at hand.
    "airbench94": FastConfig(name="airbench94", epochs=9.9, low_res_epochs=0),
    # Target: mean >= 94.0% with TTA in at most 0.55 of the reference's time. The
    # airbench94 net with the orthogonalised-update optimiser (cifarlab.muon) as public
    # airbench94_muon does it: 8 epochs at batch 2000 instead of 9.9 at 1024, linear decay to
    # zero, no lookahead, unit-std head read out at 1/256. Measured seeds: the benchmark
    # JSON (reports/bench/fast_training_fast94.json), rendered in docs/fast-training.md.
    "fast94": FastConfig(
        name="fast94",
        epochs=8.0,
        low_res_epochs=0,
        batch_size=2000,
        optimizer="muon",
        lookahead_every=0,
        lr_start=1.0,  # schedule: flat for the first 1% of steps, then linear to zero
        lr_peak=0.01,
        lr_end=0.0,
        logit_scale=1 / 256,  # 1 / width of the last group, with unit-std head weights
        head_unit_init=True,
        eval_batch_size=2000,
    ),
    # Target: mean >= 90% in at most 0.15 of the reference's time. A quarter-width net
    # (0.2 GFLOP per training image instead of 0.71), the same optimiser, 4 epochs of which
    # the first at 24 px; batch 1000 for twice the steps of batch 2000, with a smaller filter
    # step to match (reports/bench/fast_training_quick.json).
    "quick": FastConfig(
        name="quick",
        epochs=4.0,
        low_res_epochs=1,
        widths=(32, 128, 128),
        batch_size=1000,
        whiten_bias_epochs=2,
        optimizer="muon",
        muon_lr=0.2,
        lookahead_every=0,
        lr_start=1.0,
        lr_peak=0.01,
        lr_end=0.0,
        logit_scale=1 / 128,
        head_unit_init=True,
    ),
}


def get_preset(name: str, **overrides: Any) -> FastConfig:
    """The named preset with `overrides` applied (unknown names list the known ones)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise FastConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None
    fields = {f.name for f in dataclasses.fields(FastConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise FastConfigError(f"unknown fast-training settings {unknown}; known: {sorted(fields)}")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg


def _kinds() -> dict[str, type[Recipe]]:
    return {c.kind: c for c in (StandardRecipe, FinetuneConfig, TransferConfig, FastConfig)}


def _presets() -> dict[str, Callable[[], Recipe]]:
    named: dict[str, Callable[[], Recipe]] = {}
    for table in (SEED_PRESETS, PRESETS):
        for name, preset in table.items():
            named[name] = lambda p=preset: p  # type: ignore[misc]
    named["transfer"] = TransferConfig
    named["finetune"] = FinetuneConfig
    return named


def list_recipes() -> list[str]:
    return sorted(_presets())


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The named preset with `overrides` applied and validated."""
    presets = _presets()
    if name not in presets:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(presets))}")
    base = presets[name]()
    recipe = dataclasses.replace(base, **_checked(type(base), overrides))
    recipe.validate()
    return recipe


def _checked(cls: type[Recipe], overrides: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise RecipeError(f"unknown {cls.kind} settings {unknown}; known: {sorted(known)}")
    return overrides


def load_recipe(run_dir: StrPath, drop: Sequence[str] = ()) -> Recipe:
    """The recipe saved in a run folder's config.json (for `--resume`).

    Keys that are not fields of the recipe (e.g. `finetune_from` notes) are ignored; a
    config.json without `recipe` predates the engine and is read as a standard recipe.
    """
    from cifarlab.runs import RunDir

    raw = RunDir(run_dir).read_config()
    kind = raw.pop("recipe", "standard")
    kinds = _kinds()
    if kind not in kinds:
        raise RecipeError(f"{run_dir}/config.json names unknown recipe kind {kind!r}")
    cls = kinds[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    kept = {k: v for k, v in raw.items() if k in known and k not in drop}
    return from_fields(cls, kept, kind)
