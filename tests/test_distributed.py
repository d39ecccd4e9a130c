"""Data-parallel training: 2 gloo ranks equal one process at the same global batch.

.venv/bin/pytest tests/test_distributed.py
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cifarlab.engine import FitResult
from cifarlab.recipes import StandardRecipe
from cifarlab.train import TrainData, train

WORLD = 2


def _data() -> TrainData:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 96).astype(np.int64)
    x = rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    return TrainData(x[:64], y[:64], x[64:], y[64:])


def fit(cfg: tuple[StandardRecipe, Path], data: TrainData) -> FitResult:
    return train(cfg[0], cfg[1], data=data)


def _cfg(run_dir: Path) -> tuple[StandardRecipe, Path]:
    # Dropout off: each process draws its own masks, so only a deterministic forward can
    # match one process bit for bit. The augmentation stays on: its parameters are drawn for
    # the global batch. fp32 (bf16 off) and SGD keep the comparison tight.
    recipe = StandardRecipe(
        model="baseline_cnn",
        model_kwargs={"drop_conv": 0.0, "drop_fc": 0.0},
        augment="keras_aug",
        optimizer="sgd",
        lr=0.05,
        epochs=2,
        batch_size=16,
        progress=False,
        threads=1,
        precision="fp32",
    )
    return recipe, run_dir


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    result = fit(_cfg(Path(out) / "run"), data=_data())
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(Path(out) / f"rank{rank}.safetensors"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_at_the_same_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), f"ranks disagree on {k}"

    single = fit(_cfg(tmp_path / "single"), data=_data()).model.state_dict()
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], v, atol=1e-5, rtol=1e-4, msg=k)
    # Training moved the weights, so the equality above is not trivially true.
    init = fit(
        (replace(_cfg(tmp_path / "init")[0], epochs=1), tmp_path / "init"), data=_data()
    ).model.state_dict()
    assert any(not torch.equal(init[k], v) for k, v in single.items())

    # Only rank 0 wrote the run folder, with the full-set metrics of both ranks' shards.
    run = tmp_path / "run"
    assert (run / "last.safetensors").is_file() and (run / "metrics.csv").is_file()
    assert not any(p.name.startswith("rank") for p in run.iterdir())
    lines = (run / "metrics.csv").read_text().splitlines()
    single_lines = (tmp_path / "single" / "metrics.csv").read_text().splitlines()
    assert len(lines) == len(single_lines) == 3
    for a, b in zip(lines[1:], single_lines[1:], strict=True):
        va, vb = a.split(",")[4], b.split(",")[4]  # val_acc
        assert abs(float(va) - float(vb)) < 1e-6
