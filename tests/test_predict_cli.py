"""`cifarlab predict IMAGE...` and the API's `/predict` give the same answer for the same file.

    .venv/bin/pytest tests/test_predict_cli.py

Both go through `cifarlab.serve.imaging.load_image` and the predictor's pure functions; these
tests pin that down on generated files of several formats, with a tiny generated ONNX model
(hermetic) and with the bundled model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cifarlab.cli import main
from cifarlab.serve.app import create_app
from cifarlab.serve.predictor import BUNDLED_MODEL
from cifarlab.serve.settings import Settings
from tiny_onnx import write_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Files of several formats and shapes; each decodes to a different 32x32 image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    photo = np.clip(
        np.linspace(0, 255, 600)[None, :, None] * np.array([0.3, 0.9, 0.5])
        + rng.normal(0, 20, (400, 600, 3)),
        0,
        255,
    ).astype(np.uint8)
    files = {
        "red.png": Image.new("RGB", (64, 64), (230, 30, 30)),
        "photo.jpg": Image.fromarray(photo),
        "blue.webp": Image.new("RGB", (50, 40), (20, 40, 220)),
        "leaf.gif": Image.new("RGB", (33, 47), (40, 200, 60)).convert("P"),
    }
    paths = []
    for name, im in files.items():
        path = folder / name
        im.save(path)
        paths.append(path)
    return paths


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


def api_predictions(model: Path, paths: list[Path]) -> list[dict]:
    with TestClient(create_app(Settings(model_path=model))) as client:
        answers = []
        for path in paths:
            response = client.post("/predict", files={"file": (path.name, path.read_bytes())})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers


def assert_same(cli: list[dict], api: list[dict], paths: list[Path]) -> None:
    assert [r["filename"] for r in cli] == [p.name for p in paths]
    for mine, theirs in zip(cli, api, strict=True):
        assert mine["predicted_class"] == theirs["predicted_class"]
        assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=1e-5)
        assert mine["probabilities"].keys() == theirs["probabilities"].keys()
        for name, p in mine["probabilities"].items():
            assert p == pytest.approx(theirs["probabilities"][name], abs=1e-5)


def test_cli_predict_json_matches_the_api(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, images: list[Path]
) -> None:
    code, out, _ = run_cli(capsys, *map(str, images), "--model", str(tiny_model), "--json")
    assert code == 0
    body = json.loads(out)
    assert body["model"] == "tiny-test"
    cli = body["results"]
    assert_same(cli, api_predictions(tiny_model, images), images)
    # The files really differ: the tiny model sends red, green and blue to different classes.
    assert {r["predicted_class"] for r in cli} >= {"automobile", "bird", "ship"}


def test_cli_predict_plain_output_names_each_file_and_class(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, images: list[Path]
) -> None:
    code, out, _ = run_cli(capsys, str(images[0]), str(images[2]), "--model", str(tiny_model))
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{images[0]}: automobile ")
    assert lines[1].startswith(f"{images[2]}: ship ")


def test_cli_predict_reports_bad_files_and_still_classifies_the_rest(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, images: list[Path], tmp_path: Path
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    code, out, err = run_cli(
        capsys, str(text), str(images[0]), str(missing), "--model", str(tiny_model), "--json"
    )
    assert code == 2
    results = json.loads(out)["results"]
    assert [r["filename"] for r in results] == ["notes.png", "red.png", "missing.jpg"]
    assert "not a recognised image" in results[0]["error"]
    assert results[1]["predicted_class"] == "automobile"
    assert "not found" in results[2]["error"]
    assert "notes.png" in err and "missing.jpg" in err


def test_cli_predict_unknown_model_file_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], images: list[Path], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, str(images[0]), "--model", str(tmp_path / "nope.onnx"))
    assert code == 2
    assert err.startswith("error: ") and "nope.onnx" in err and len(err.strip().splitlines()) == 1


def test_cli_predict_does_not_import_torch(tiny_model: Path, images: list[Path]) -> None:
    code = (
        "import sys; from cifarlab.cli import main; "
        f"rc = main(['predict', {str(images[0])!r}, '--model', {str(tiny_model)!r}]); "
        "assert 'torch' not in sys.modules, 'predict imported torch'; sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "automobile" in done.stdout


def test_bundled_model_cli_and_api_agree(
    capsys: pytest.CaptureFixture[str], images: list[Path]
) -> None:
    if not BUNDLED_MODEL.is_file():
        msg = f"bundled model {BUNDLED_MODEL.name} is not in the package yet"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    code, out, _ = run_cli(capsys, *map(str, images), "--json")  # no --model: the bundled one
    assert code == 0
    assert_same(json.loads(out)["results"], api_predictions(BUNDLED_MODEL, images), images)
