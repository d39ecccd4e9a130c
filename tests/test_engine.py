"""The one engine: precision/thread decisions, every recipe through it, exact resume after
SIGKILL, TensorBoard events, TTA evaluation and flags generated from the recipes.

.venv/bin/pytest tests/test_engine.py
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cifarlab import engine, fast, train, transfer
from cifarlab.checkpoint import load_checkpoint, model_state
from cifarlab.cli import build_parser, main
from cifarlab.cli.flags import overrides
from cifarlab.engine import EngineError, choose_precision, choose_threads
from cifarlab.recipes import (
    FastConfig,
    FinetuneConfig,
    StandardRecipe,
    TransferConfig,
    get_recipe,
    list_recipes,
    load_recipe,
)
from cifarlab.runs import read_metrics

SRC = Path(__file__).resolve().parents[1] / "src"


# ---- decisions from the hardware ------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "chosen"),
    [
        (set(), "fp32"),
        ({"avx2"}, "fp32"),  # AMD EPYC (Zen 2/3): no bf16 unit
        ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without BF16
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),  # AMD Zen 4
        ({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}, "bf16"),  # Xeon with AMX
        ({"amx_bf16"}, "bf16"),
    ],
)
def test_auto_precision_picks_bf16_exactly_when_the_cpu_has_native_bf16(
    flags: set[str], chosen: str
) -> None:
    choice = choose_precision("auto", flags)
    assert choice.value == chosen
    assert choice.reason.startswith("auto")
    if chosen == "bf16":
        assert any(f in choice.reason for f in ("avx512_bf16", "amx_bf16"))


def test_explicit_precision_wins_and_says_when_bf16_is_emulated() -> None:
    assert choose_precision("fp32", {"amx_bf16"}).value == "fp32"
    slow = choose_precision("bf16", {"avx2"})
    assert slow.value == "bf16" and "no native bf16" in slow.reason
    with pytest.raises(EngineError, match="auto, fp32, bf16"):
        choose_precision("fp16", {"avx2"})


def test_threads_split_the_usable_cpus_over_local_processes() -> None:
    assert choose_threads(None, 8, 1).value == 8
    assert choose_threads(0, 8, 2).value == 4
    assert choose_threads(None, 1, 4).value == 1
    assert choose_threads(None, 8, 1, omp="3").value == 3
    assert choose_threads(2, 8, 1, omp="3").value == 2
    requested = choose_threads(3, 8, 2)
    assert requested.value == 3 and "requested" in requested.reason
    with pytest.raises(EngineError):
        choose_threads(-1, 8)


# ---- data for every recipe ------------------------------------------------------------------


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable: the class decides the colour of a central square."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int64)
    images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    colours = np.random.default_rng(99).integers(0, 256, (10, 3)).astype(np.uint8)
    images[:, 8:24, 8:24, :] = colours[labels][:, None, None, :]
    return images, labels


COMMON: dict[str, Any] = {"threads": 1, "progress": False, "precision": "fp32"}


def _standard(run: Path, **kw: Any) -> Any:
    base = dict(model="augmented_cnn", epochs=3, batch_size=32, lr=3e-3)
    recipe = StandardRecipe(**{**base, **COMMON, **kw})
    x, y = _images(160)
    data = train.TrainData(x[:128], y[:128], x[128:], y[128:])
    return train.train(recipe, run, data=data, overwrite=True)


def _fast_cfg(**kw: Any) -> FastConfig:
    base = dict(
        epochs=3.0, low_res_epochs=1, batch_size=32, widths=(8, 16, 16), whiten_samples=64,
        eval_batch_size=64, lr=2.0, tta_level=1,
    )  # fmt: skip
    return fast.get_preset("quick", **{**base, **COMMON, **kw})


def _fast(run: Path, **kw: Any) -> Any:
    x, y = _images(256)
    return fast.train(_fast_cfg(**kw), (x, y), (x[:64], y[:64]), run)


def _transfer(run: Path, **kw: Any) -> Any:
    base = dict(epochs=3, batch_size=16, lr=3e-3, extract_batch_size=32)
    cfg = TransferConfig(
        name=run.name, runs_dir=str(run.parent), cache_dir=str(run.parent / "cache"),
        **{**base, **COMMON, **kw},
    )  # fmt: skip
    x, y = _images(80)
    return transfer.train_transfer(
        cfg, data={"train": (x[:64], y[:64]), "val": (x[64:], y[64:])}, pretrained=False
    )


def _finetune(run: Path, **kw: Any) -> Any:
    parent = run.parent / "parent"
    _transfer(parent, epochs=1, flip=False)
    x, y = _images(80)
    base = dict(epochs=2, batch_size=16, lr=1e-3, trainable_from=17, channels_last=False)
    cfg = FinetuneConfig(
        finetune_from=str(parent), name=run.name, runs_dir=str(run.parent),
        **{**base, **COMMON, **kw},
    )  # fmt: skip
    return transfer.finetune(cfg, data=train.TrainData(x[:64], y[:64], x[64:], y[64:]))


RECIPES: dict[str, Callable[..., Any]] = {
    "standard": _standard,
    "fast": _fast,
    "transfer": _transfer,
    "finetune": _finetune,
}


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_every_recipe_trains_through_the_one_engine(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = engine.train_one_epoch

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["epoch"])
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    run = tmp_path / kind
    RECIPES[kind](run)
    rows = read_metrics(run)
    assert calls[-len(rows) :] == [r["epoch"] for r in rows]  # every epoch ran in the engine
    losses = [r["train_loss"] for r in rows]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    env = json.loads((run / "env.json").read_text())
    assert env["precision"] == {"chosen": "fp32", "reason": "requested with --precision fp32"}
    assert env["torch_threads"]["chosen"] == 1
    _, meta = load_checkpoint(run / "last")
    assert meta["train_state"]["step"] > 0 and meta["config"]["recipe"] == load_recipe(run).kind
    _assert_tensorboard_scalars(run, len(rows))


def _assert_tensorboard_scalars(run: Path, epochs: int) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(run.glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run folder"
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert {"train/loss", "train/acc", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, epochs + 1))


# ---- exact resume -----------------------------------------------------------------------


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run / which)
    return model_state(tensors)


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(a)) == strip(read_metrics(b))


def test_transfer_resume_after_an_interrupted_run_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    x, y = _images(80)
    data = {"train": (x[:64], y[:64]), "val": (x[64:], y[64:])}
    cfg = TransferConfig(
        runs_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), epochs=3, batch_size=16,
        extract_batch_size=32, **COMMON,
    )  # fmt: skip
    transfer.train_transfer(dataclasses.replace(cfg, name="straight"), data, pretrained=False)
    split = dataclasses.replace(cfg, name="split")
    transfer.train_transfer(split, data, pretrained=False, stop_after_epoch=1)
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [1]
    saved = load_recipe(tmp_path / "split")
    assert saved == split
    transfer.train_transfer(split, data, pretrained=False, resume=True)
    _assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_cli_train_resume_continues_a_standard_run_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _images(160)
    data = train.TrainData(x[:128], y[:128], x[128:], y[128:])
    recipe = StandardRecipe(model="augmented_cnn", epochs=3, batch_size=32, lr=3e-3, **COMMON)
    train.train(recipe, tmp_path / "straight", data=data)
    train.train(recipe, tmp_path / "split", data=data, stop_after_epoch=2)
    # `cifarlab train --resume` reads the recipe from config.json; only the data is stubbed.
    monkeypatch.setattr(train, "load_data", lambda r, d: train.TrainData(*data.__dict__.values()))
    assert main(["train", "--resume", str(tmp_path / "split"), "--threads", "1"]) == 0
    _assert_same_run(tmp_path / "straight", tmp_path / "split")
    with pytest.raises(Exception, match="already holds a run"):
        train.train(recipe, tmp_path / "split", data=data)


def test_fast_train_killed_mid_epoch_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _images(256)
    straight = tmp_path / "straight"
    fast.train(_fast_cfg(), (x, y), (x[:64], y[:64]), straight)
    # A separate process trains the same recipe and kills itself with SIGKILL after step 12:
    # in the middle of epoch 2 (8 steps per epoch), after epoch 1's checkpoint.
    killed = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from cifarlab import fast
        from test_engine import _fast_cfg, _images

        real = fast.StepSchedule.before_step

        # every fast recipe schedules its lr, with or without lookahead
        def before_step(self, step):
            if step == 12:
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, step)

        fast.StepSchedule.before_step = before_step
        x, y = _images(256)
        fast.train(_fast_cfg(), (x, y), (x[:64], y[:64]), {str(killed)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [r["epoch"] for r in read_metrics(killed)] == [1]
    assert not (killed / "result.json").exists()
    # Resume through the command line, as a user would; the data loader is the only stand-in.
    monkeypatch.setattr(
        "cifarlab.cli.fast_cmds.load_fast_data", lambda *a: ((x, y), (x[:64], y[:64]))
    )
    assert main(["fast-train", "--resume", str(killed)]) == 0
    _assert_same_run(straight, killed)
    results = [json.loads((run / "result.json").read_text()) for run in (straight, killed)]
    keys = ("test_accuracy", "test_accuracy_no_tta", "test_accuracy_flip_tta", "train_images")
    assert [{k: r[k] for k in keys} for r in results[:1]] == [{k: results[1][k] for k in keys}]
    env = json.loads((killed / "env.json").read_text())
    assert env["resumes"][0]["from_epoch"] == 2


# ---- evaluation with TTA ------------------------------------------------------------------


def test_flip_tta_averages_the_mirrored_logits() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    )
    x, y = _images(20)
    model(torch.zeros(1, 3, 32, 32))
    res = engine.evaluate(model, x, y, batch_size=8, tta=2, return_logits=True)
    assert set(res.tta_acc) == {"none", "flip", "translate"}
    inp = engine.prepare_batch(torch.from_numpy(x))
    with torch.inference_mode():
        plain, mirrored = model(inp), model(inp.flip(3))
    torch.testing.assert_close(res.tta_logits["none"], plain)
    torch.testing.assert_close(res.tta_logits["flip"], 0.5 * (plain + mirrored))
    assert res.logits is res.tta_logits["translate"]
    assert res.acc == res.tta_acc["translate"]
    with pytest.raises(EngineError, match="tta"):
        engine.evaluate(model, np.zeros((4, 7), np.float32), y[:4], tta=1)


# ---- recipes as data, flags generated from them ---------------------------------------------


@pytest.mark.parametrize("cls", [StandardRecipe, FastConfig, TransferConfig, FinetuneConfig])
def test_every_recipe_field_has_help_and_a_generated_flag(cls: type) -> None:
    command = {
        StandardRecipe: "train",
        FastConfig: "fast-train",
        TransferConfig: "transfer",
        FinetuneConfig: "finetune",
    }[cls]
    parser = build_parser()
    sub = next(
        a
        for a in parser._subparsers._group_actions  # type: ignore[union-attr]
    ).choices[command]
    dests = {a.dest for a in sub._actions}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        if not (cls is FastConfig and f.name == "name"):
            assert f.name in dests, f"{command} has no flag for {f.name}"


def test_generated_flags_override_the_preset_with_typed_values() -> None:
    args = build_parser().parse_args(
        ["fast-train", "--preset", "quick", "--lr", "3", "--widths", "8", "16", "16",
         "--no-channels-last", "--precision", "bf16", "--epochs", "2.5"]
    )  # fmt: skip
    given = overrides(args, FastConfig)
    assert given == {
        "lr": 3.0, "widths": (8, 16, 16), "channels_last": False, "precision": "bf16",
        "epochs": 2.5,
    }  # fmt: skip
    cfg = fast.get_preset(args.preset, **given)
    preset = fast.PRESETS["quick"]
    assert cfg.batch_size == preset.batch_size and cfg.widths == (8, 16, 16)  # the rest: preset's
    args = build_parser().parse_args(["train", "--model-kwarg", "drop_fc=0.1", "--no-progress"])
    assert overrides(args, StandardRecipe) == {"model_kwargs": {"drop_fc": 0.1}, "progress": False}


def test_old_bf16_flag_is_an_alias_of_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[FastConfig] = []
    monkeypatch.setattr("cifarlab.cli.fast_cmds.load_fast_data", lambda *a: (None, None))
    fake = dict.fromkeys(
        ("test_accuracy", "test_accuracy_no_tta", "wall_seconds", "images_per_second",
         "gflops_per_second"), 0.0,
    )  # fmt: skip
    monkeypatch.setattr(fast, "train", lambda cfg, *a, **k: seen.append(cfg) or fake)
    argv = ["fast-train", "--preset", "quick", "--bf16", "--run-dir", str(tmp_path)]
    assert main(argv) == 0
    assert seen[0].precision == "bf16" and seen[0].name == "quick"


def test_named_recipes_cover_every_kind_and_unknown_names_list_them() -> None:
    names = list_recipes()
    assert {"seed-baseline", "seed-augmented", "transfer", "finetune", "fast94", "quick"} <= set(
        names
    )
    assert {type(get_recipe(n)).kind for n in names} == {"standard", "transfer", "finetune", "fast"}
    assert get_recipe("seed-augmented", epochs=2).model == "augmented_cnn"
    with pytest.raises(Exception, match="seed-baseline"):
        get_recipe("resnet")
    with pytest.raises(Exception, match="unknown standard settings"):
        get_recipe("seed-baseline", epocs=2)


def test_serving_commands_still_import_no_torch() -> None:
    code = "import sys; from cifarlab.cli import build_parser; build_parser(); "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_the_engine_calls_backward_to_train() -> None:
    import ast

    callers = set()
    for path in sorted((SRC / "cifarlab").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "backward":
                    callers.add(f"{path.stem}.{fn.name}")
    # FLOP counting and temperature fitting (a closure inside fit_temperature) aside.
    assert callers == {
        "engine.train_one_epoch",
        "fast.flops_per_image",
        "evaluate.fit_temperature",
        "evaluate.closure",
    }
