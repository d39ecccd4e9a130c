"""Temperature baked into the exported graph: the fitted value, and PyTorch-equal probabilities.

.venv/bin/pytest -q tests/test_calibrated_export.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cifarlab import fast
from cifarlab.checkpoint import load_model_from_run
from cifarlab.export import ExportError, export_run
from cifarlab.serve.predictor import Predictor, preprocess
from test_fast import _tiny_cfg  # one tiny fast recipe for the tests


def _tiny_run(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 320).astype(np.int64)
    images = rng.integers(0, 60, (320, 32, 32, 3)).astype(np.uint8)
    images[:, 8:24, 8:24, :] = rng.integers(0, 256, (10, 3))[labels][:, None, None, :]
    cfg = _tiny_cfg(epochs=2.0, holdout=0.25, seed=0)
    fast.train(cfg, (images, labels), None, run_dir=tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def real_images(cifar_source: Path) -> np.ndarray:
    from cifarlab.data import parse_records

    images, _ = parse_records((cifar_source / "test_batch.bin").read_bytes(), "test_batch.bin")
    return images[:500]


@pytest.mark.real_data
@pytest.mark.parametrize("tta", [False, True])
def test_graph_temperature_is_the_fitted_one_and_probabilities_match_pytorch(
    tmp_path: Path, real_images: np.ndarray, tta: bool
) -> None:
    run = _tiny_run(tmp_path)
    model, meta = load_model_from_run(run)
    fitted = meta["metrics"]["temperature"]["flip" if tta else "none"]
    out = tmp_path / "m.onnx"
    result = export_run(run, out, tta=tta, temperature="auto", images=real_images)
    assert result.parity is not None and result.parity.passed
    predictor = Predictor(out)
    assert predictor.info.temperature == pytest.approx(fitted, rel=1e-12)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert float(props["cifarlab.temperature"]) == pytest.approx(fitted, rel=1e-12)
    x = preprocess(real_images)
    got = torch.softmax(torch.from_numpy(predictor.infer(x)), 1)
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        logits = model(xt)
        if tta:
            logits = (logits + model(xt.flip(3))) / 2
        want = torch.softmax(logits / fitted, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The temperature changes the probabilities (it is not a no-op) but never the top-1.
    assert not torch.allclose(want, torch.softmax(logits, 1), atol=1e-3)


def test_temperature_auto_needs_a_holdout_fit(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path)
    meta_path = run / "best.json"
    import json

    meta = json.loads(meta_path.read_text())
    meta["metrics"].pop("temperature")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="--holdout"):
        export_run(run, tmp_path / "m.onnx", temperature="auto", parity_images=0)
    with pytest.raises(ExportError, match="number"):
        export_run(run, tmp_path / "m.onnx", temperature="warm", parity_images=0)
