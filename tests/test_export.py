"""ONNX export: parity with PyTorch, metadata, the TTA wrapper, and the `cifarlab export` CLI.

    .venv/bin/pytest tests/test_export.py

Registry models are exported with random weights (parity does not need training); the parity
check on 1,000 real test images uses the `cifar_source` fixture, prepared into a temp cache.
A trained run is exported too: a short real run trained by the test itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cifarlab import export as export_mod
from cifarlab.checkpoint import save_checkpoint
from cifarlab.cli import main
from cifarlab.constants import CIFAR_MEAN, CLASSES
from cifarlab.contract import ModelInfo
from cifarlab.export import ExportError, FlipTTA, export_run, export_with_parity
from cifarlab.io import sha256_file
from cifarlab.models import get_model
from cifarlab.preprocess import normalize
from cifarlab.serve.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """Small but not mirror-symmetric, so the TTA average differs from a single pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def ort_logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": normalize(images)})[0]


@pytest.fixture(scope="module")
def baseline_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = get_model("baseline_cnn").eval()
    out = tmp_path_factory.mktemp("export") / "baseline.onnx"
    info = ModelInfo(name="baseline_cnn", test_accuracy=0.5, training_command="cifarlab train")
    result = export_with_parity(model, out, info, images=random_images(64))
    assert result.parity is not None and result.parity.passed
    return out, model


def test_export_has_a_dynamic_batch_axis_and_matches_pytorch(
    baseline_export: tuple[Path, nn.Module],
) -> None:
    path, model = baseline_export
    for n in (1, 7, 33):
        images = random_images(n, seed=n)
        got = ort_logits(path, images)
        with torch.inference_mode():
            want = model(torch.from_numpy(normalize(images))).numpy()
        assert got.shape == (n, 10)
        assert np.abs(got - want).max() <= 1e-3


def test_export_writes_metadata_into_the_onnx_file(baseline_export: tuple[Path, nn.Module]) -> None:
    path, _ = baseline_export
    proto = onnx.load(str(path))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["cifarlab.name"] == "baseline_cnn"
    assert props["cifarlab.classes"] == list(CLASSES)
    assert props["cifarlab.mean"] == pytest.approx(list(CIFAR_MEAN))
    assert props["cifarlab.input_size"] == 32
    assert props["cifarlab.test_accuracy"] == 0.5
    assert props["cifarlab.training_command"] == "cifarlab train"
    assert props["cifarlab.tta"] is False
    # ... and the serving side reads the same description back.
    info = Predictor(path).info
    assert info.name == "baseline_cnn" and info.classes == CLASSES and info.test_accuracy == 0.5


def test_export_leaves_no_source_paths_in_the_file(baseline_export: tuple[Path, nn.Module]) -> None:
    path, _ = baseline_export
    proto = onnx.load(str(path))
    assert all(len(node.metadata_props) == 0 for node in proto.graph.node)
    assert str(REPO).encode() not in path.read_bytes()


def test_export_writes_a_side_car_json_with_the_file_hash(
    baseline_export: tuple[Path, nn.Module],
) -> None:
    path, _ = baseline_export
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == sha256_file(path)
    assert record["onnx_file"] == path.name
    assert record["classes"] == list(CLASSES)
    assert record["input"]["shape"] == ["N", 3, 32, 32]
    assert record["parity"]["n_images"] == 64 and record["parity"]["passed"] is True
    assert record["created"] is None or "T" in record["created"]
    # No temporary files are left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == ["baseline.json", "baseline.onnx"]


def test_tta_graph_equals_the_mean_of_both_passes(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TinyNet().eval()
    plain = export_with_parity(model, tmp_path / "plain.onnx", ModelInfo(name="tiny")).onnx_path
    tta = export_with_parity(
        model, tmp_path / "tta.onnx", ModelInfo(name="tiny"), tta=True, images=random_images(32)
    )
    assert tta.info.tta and Predictor(tta.onnx_path).info.tta
    images = random_images(16, seed=3)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])  # (N, H, W, C): flip the width
    by_hand = (ort_logits(plain, images) + ort_logits(plain, mirrored)) / 2
    got = ort_logits(tta.onnx_path, images)
    np.testing.assert_allclose(got, by_hand, atol=1e-5)
    assert np.abs(got - ort_logits(plain, images)).max() > 1e-3  # TTA really changed something
    with torch.inference_mode():
        x = torch.from_numpy(normalize(images))
        np.testing.assert_allclose(got, FlipTTA(model)(x).numpy(), atol=1e-5)


def test_failed_parity_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_mod, "PARITY_MAX_ABS_DIFF", -1.0)  # nothing can pass
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_with_parity(TinyNet().eval(), out, ModelInfo(name="t"), images=random_images(8))
    assert list(tmp_path.iterdir()) == []


def _fake_run(tmp_path: Path) -> Path:
    """A run folder as `cifarlab train` and `cifarlab evaluate` leave it (random weights)."""
    run = tmp_path / "runs" / "tiny_run"
    run.mkdir(parents=True)
    torch.manual_seed(2)
    meta = {
        "model": "baseline_cnn",
        "model_kwargs": {},
        "classes": list(CLASSES),
        "epoch": 3,
        "metrics": {"val_acc": 0.4},
        "config": {},
    }
    save_checkpoint(run / "best", get_model("baseline_cnn"), meta)
    (run / "eval.json").write_text(json.dumps({"which": "best", "test_accuracy": 0.4321}))
    argv = ["cifarlab", "train", "--model", "baseline_cnn"]  # as `cifarlab train` records it
    (run / "env.json").write_text(json.dumps({"command": argv}))
    return run


def test_cli_export_reads_the_run_eval_and_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _fake_run(tmp_path)
    out = tmp_path / "models" / "m.onnx"
    code = main(["export", str(run), "--out", str(out), "--tta", "--parity-images", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy 0.4321" in printed
    assert "parity check skipped (--parity-images 0)" in printed
    info = Predictor(out).info
    assert info.name == "baseline_cnn" and info.tta
    assert info.test_accuracy == pytest.approx(0.4321)
    assert info.training_command == "cifarlab train --model baseline_cnn"
    assert info.run == "tiny_run/best"
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == info.sha256 and record["parity"] is None
    for written in (out, out.with_suffix(".json")):  # readable by a non-root server
        assert written.stat().st_mode & 0o044 == 0o044


def test_cli_export_of_a_missing_run_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    code = main(["export", str(tmp_path), "--out", str(tmp_path / "m.txt")])
    assert code == 2


# ---- parity on real test images -------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(cifar_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache prepared here from the real files (about a second), never the user's cache."""
    from cifarlab import data

    cache = tmp_path_factory.mktemp("cache")
    data.prepare(cifar_source, cache, progress=False)
    return cache


@pytest.fixture(scope="module")
def real_test_images(real_cache: Path) -> np.ndarray:
    from cifarlab import data

    images, _ = data.load_split("test", real_cache)
    return images[:1000]


@pytest.mark.real_data
def test_parity_on_1000_real_test_images(real_test_images: np.ndarray, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_model("baseline_cnn").eval()
    result = export_with_parity(
        model, tmp_path / "m.onnx", ModelInfo(name="baseline_cnn"), images=real_test_images
    )
    parity = result.parity
    assert parity is not None and parity.n_images == 1000
    assert parity.max_abs_diff <= 1e-3 and parity.top1_agreement >= 0.999
    # An independent check of the same claim, straight through onnxruntime.
    with torch.inference_mode():
        want = model(torch.from_numpy(normalize(real_test_images))).numpy()
    got = ort_logits(result.onnx_path, real_test_images)
    assert np.abs(got - want).max() <= 1e-3
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999


@pytest.mark.real_data
def test_fastnet_exports_with_tta_and_parity_on_real_images(
    real_test_images: np.ndarray, tmp_path: Path
) -> None:
    # The bundled model's family. 200 images keep the test quick: this net is ~40x the
    # baseline's compute, and `cifarlab export` itself checks 1,000 by default.
    torch.manual_seed(0)
    result = export_with_parity(
        get_model("fastnet").eval(),
        tmp_path / "fastnet.onnx",
        ModelInfo(name="fastnet"),
        tta=True,
        images=real_test_images[:200],
    )
    assert result.parity is not None and result.parity.passed, result.parity


def _trained_run(cache: Path, tmp_path: Path) -> Path:
    """A short real run trained here: the test never depends on what happens to be in runs/."""
    run = tmp_path / "runs" / "short"
    args = ["train", "--model", "baseline_cnn", "--subset", "512", "--epochs", "1"]
    args += ["--batch-size", "64", "--run-dir", str(run), "--cache-dir", str(cache)]
    assert main([*args, "--no-progress"]) == 0
    return run


@pytest.mark.real_data
def test_trained_run_exports_with_parity_on_1000_real_images(
    real_test_images: np.ndarray, real_cache: Path, tmp_path: Path
) -> None:
    run = _trained_run(real_cache, tmp_path)
    result = export_run(run, tmp_path / "trained.onnx", images=real_test_images)
    assert result.parity is not None and result.parity.passed, result.parity


def test_fastnet_exports_class_activation_maps_that_match_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = get_model("fastnet", widths=(16, 32, 32)).eval()
    out = tmp_path / "cam.onnx"
    result = export_with_parity(
        model, out, ModelInfo(name="fastnet"), tta=True, images=random_images(16)
    )
    assert result.parity is not None and result.parity.passed  # logits and maps both compared
    outputs = {o.name: o.shape for o in ort.InferenceSession(str(out)).get_outputs()}
    assert outputs["cam"][1:] == [10, 3, 3]  # (N, classes, h, w) on a 32x32 input
    assert json.loads(out.with_suffix(".json").read_text())["outputs"] == ["logits", "cam"]
    images = random_images(4, seed=5)
    predictor = Predictor(out)
    assert predictor.has_cam
    preds = predictor.predict_arrays(images)
    _, cams = predictor.run(normalize(images))
    for p, cam in zip(preds, cams, strict=True):
        assert p.cam is not None and p.cam.shape == (3, 3)
        np.testing.assert_array_equal(p.cam, cam[p.class_index])
    # The plain model without TTA: the map is the head applied at each cell of the grid.
    with torch.inference_mode():
        x = torch.from_numpy(normalize(images))
        feats = model.forward_features(x)
        by_hand = torch.einsum("bchw,kc->bkhw", feats, model.head.weight) * model.logit_scale
        np.testing.assert_allclose(model.forward_cam(feats).numpy(), by_hand.numpy(), atol=1e-5)


def test_models_without_a_cam_head_export_only_logits(tmp_path: Path) -> None:
    model = TinyNet().eval()
    result = export_with_parity(model, tmp_path / "t.onnx", ModelInfo(name="tiny"))
    names = [o.name for o in ort.InferenceSession(str(result.onnx_path)).get_outputs()]
    assert names == ["logits"] and not Predictor(result.onnx_path).has_cam
    with pytest.raises(ExportError, match="forward_cam"):
        export_mod.export_model(model, tmp_path / "x.onnx", ModelInfo(name="tiny"), cam=True)
