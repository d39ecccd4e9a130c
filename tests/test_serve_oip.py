"""Open Inference Protocol v2 (KServe v2) endpoints, spoken to by the official Triton client.

    .venv/bin/pytest tests/test_serve_oip.py

The server runs the tiny generated model on a real socket (`live_server`): `tritonclient`
sends binary tensors by default, so this exercises the protocol's binary extension too.
Answers are compared with `Predictor`, the same path `/predict` uses.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tritonclient import http as httpclient
from tritonclient.utils import InferenceServerException

from cifarlab.constants import CIFAR_MEAN, CIFAR_STD, CLASSES
from cifarlab.preprocess import normalize
from cifarlab.serve.app import create_app
from cifarlab.serve.imaging import load_image
from cifarlab.serve.predictor import Predictor, softmax
from cifarlab.serve.settings import Settings
from live_server import live_server
from tiny_onnx import write_tiny_model

MAX_FILES = 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def url(tiny_model: Path) -> Iterator[str]:
    with live_server(Settings(model_path=tiny_model, max_batch_files=MAX_FILES)) as u:
        yield u


@pytest.fixture(scope="module")
def triton(url: str) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    yield client
    client.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def expected(tiny_model: Path, x: np.ndarray) -> np.ndarray:
    return softmax(Predictor(tiny_model).infer(x)).astype(np.float32)


def test_health_and_server_metadata(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "cifarlab" and "binary_tensor_data" in meta["extensions"]
    assert triton.is_model_ready("tiny-test")
    assert not triton.is_model_ready("resnet50")


def test_model_metadata_exposes_shapes_and_preprocessing(triton: Any) -> None:
    meta = triton.get_model_metadata("tiny-test")
    assert meta["name"] == "tiny-test" and len(meta["versions"][0]) == 12
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["input"]["datatype"] == "FP32" and inputs["input"]["shape"] == [-1, 3, 32, 32]
    assert inputs["image"]["datatype"] == "BYTES"
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    params = meta["parameters"]
    assert params["mean"] == pytest.approx(CIFAR_MEAN) and params["std"] == pytest.approx(CIFAR_STD)
    assert params["layout"] == "NCHW" and params["classes"] == list(CLASSES)
    assert params["max_batch_size"] == MAX_FILES
    version = meta["versions"][0]
    assert triton.get_model_metadata("tiny-test", model_version=version)["name"] == "tiny-test"


def test_unknown_model_is_a_404_json_error(url: str, triton: Any) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'resnet50'"):
        triton.get_model_metadata("resnet50")
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.get_model_metadata("tiny-test", model_version="0" * 12)
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/v2/models/resnet50/ready")
    assert err.value.code == 404 and "tiny-test" in json.loads(err.value.read())["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensor_infer_matches_the_predictor(
    triton: Any,
    tiny_model: Path,
    binary: bool,
) -> None:
    x = normalize(images(3))
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton.infer("tiny-test", [inp], outputs=[out], request_id="req-7")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected(tiny_model, x), atol=1e-6)
    assert result.get_response()["id"] == "req-7"


def test_bytes_input_decodes_image_files_like_predict(triton: Any, tiny_model: Path) -> None:
    pixels = images(2, seed=1)
    files = np.array([png(p) for p in pixels], dtype=np.object_)
    inp = httpclient.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(files)
    result = triton.infer("tiny-test", [inp])  # no outputs named: binary answer
    want = expected(tiny_model, normalize(np.stack([load_image(f) for f in files])))
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-6)


def test_json_bytes_elements_are_base64(tiny_model: Path) -> None:
    data = png(images(1, seed=2)[0])
    body = {
        "id": "a",
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(data).decode()],
            }
        ],
    }
    with TestClient(create_app(Settings(model_path=tiny_model))) as c:
        r = c.post("/v2/models/tiny-test/infer", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [1, 10] and r.json()["id"] == "a"
        want = expected(tiny_model, normalize(load_image(data)[None]))
        np.testing.assert_allclose(np.reshape(out["data"], (1, 10)), want, atol=1e-6)
        bad = {**body, "inputs": [{**body["inputs"][0], "data": ["bm90IGFuIGltYWdl"]}]}
        r = c.post("/v2/models/tiny-test/infer", json=bad)
        assert r.status_code == 422 and "not a recognised image" in r.json()["error"]


@pytest.mark.parametrize(
    ("shape", "datatype", "n_values", "status", "words"),
    [
        ([2, 3, 32, 32], "FP32", 3 * 32 * 32, 400, "expected 24576"),  # data too short
        ([2, 3, 28, 28], "FP32", 2 * 3 * 28 * 28, 400, "must be FP32"),  # wrong shape
        ([2, 3, 32, 32], "INT32", 2 * 3 * 32 * 32, 400, "must be FP32"),  # wrong datatype
        ([MAX_FILES + 1, 3, 32, 32], "FP32", (MAX_FILES + 1) * 3072, 413, "more than the limit"),
        ([0, 3, 32, 32], "FP32", 0, 400, "at least 1"),
    ],
)
def test_bad_tensors_are_4xx_json_errors(
    triton: Any,
    shape: list[int],
    datatype: str,
    n_values: int,
    status: int,
    words: str,
) -> None:
    inp = httpclient.InferInput("input", shape, datatype)
    dtype = np.int32 if datatype == "INT32" else np.float32
    data = np.zeros(n_values, dtype)
    # Bypass the client's own shape check to send what a buggy client would.
    inp._raw_data = data.tobytes()
    inp._parameters["binary_data_size"] = len(inp._raw_data)
    with pytest.raises(InferenceServerException, match=words) as err:
        triton.infer("tiny-test", [inp])
    assert err.value.status() == str(status)


def test_malformed_requests_are_400(tiny_model: Path) -> None:
    with TestClient(create_app(Settings(model_path=tiny_model))) as c:
        for body in (b"not json", b"[]", b'{"inputs": []}', b'{"inputs": [{"name": "x"}]}'):
            r = c.post("/v2/models/tiny-test/infer", content=body)
            assert r.status_code == 400 and r.json()["error"], (body, r.text)
        nan = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                           "data": [float("nan")] * 3072}]}  # fmt: skip
        r = c.post("/v2/models/tiny-test/infer", content=json.dumps(nan))
        assert r.status_code == 400 and "NaN" in r.json()["error"]


def test_readiness_is_503_until_the_model_is_loaded(tiny_model: Path) -> None:
    bare = TestClient(create_app(Settings(model_path=tiny_model)))  # lifespan not run
    assert bare.get("/v2/health/live").status_code == 200
    r = bare.get("/v2/health/ready")
    assert r.status_code == 503 and "not loaded" in r.json()["error"]
