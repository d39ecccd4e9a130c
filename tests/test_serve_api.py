"""The HTTP API: every endpoint, every class of bad input, metrics and dynamic batching.

    .venv/bin/pytest tests/test_serve_api.py

Most tests serve the tiny generated ONNX model (`tiny_onnx.py`: hermetic, milliseconds); one
checks the bundled model through its metadata only, since which model is bundled changes.
Batching is checked on the batch sizes the server records, never on timings.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cifarlab.constants import CLASSES
from cifarlab.serve.app import BatchResponse, PredictResponse, create_app
from cifarlab.serve.batching import BatcherClosedError, MicroBatcher
from cifarlab.serve.imaging import load_image
from cifarlab.serve.predictor import BUNDLED_MODEL, ModelError, Predictor, softmax
from cifarlab.serve.settings import Settings
from tiny_onnx import write_tiny_model

# ---- fixtures and helpers --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def client(tiny_model: Path) -> Iterator[TestClient]:
    settings = Settings(model_path=tiny_model, max_file_bytes=200_000, max_pixels=4_000_000)
    with TestClient(create_app(settings)) as c:
        yield c


def png(colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def noise_png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def metric(client: TestClient, name: str, **labels: str) -> float:
    """Value of one sample in /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        sample, _, label_text = key.partition("{")
        got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if sample == name and got == want:
            return float(value)
    return 0.0


def assert_json_error(response, status: int, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word.lower() in detail.lower(), detail
    return detail


# ---- endpoints -------------------------------------------------------------------------


def test_root_is_a_json_liveness_check(client: TestClient) -> None:
    body = client.get("/").json()
    assert body["status"] == "ok" and body["service"] == "cifarlab"


def test_health_describes_the_model_runtime_and_settings(
    client: TestClient, tiny_model: Path
) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["model"]["name"] == "tiny-test"
    assert body["model"]["classes"] == list(CLASSES)
    assert len(body["model"]["version"]) == 12
    assert body["model"]["sha256"].startswith(body["model"]["version"])
    assert body["onnxruntime_version"]
    assert body["uptime_seconds"] >= 0
    assert body["batching"] == {"max_batch_size": 32, "max_wait_ms": 2.0}
    assert body["limits"]["max_file_bytes"] == 200_000
    assert body["limits"]["max_batch_files"] == 32


def test_health_is_503_until_the_model_is_loaded(tiny_model: Path) -> None:
    # Without the context manager the lifespan never runs, so nothing is loaded.
    app = create_app(Settings(model_path=tiny_model))
    bare = TestClient(app)
    assert_json_error(bare.get("/health"), 503, "not loaded")
    assert_json_error(bare.post("/predict", files={"file": ("a.png", png())}), 503)
    assert bare.get("/").json()["status"] == "loading"
    with TestClient(app) as loaded:
        assert loaded.get("/health").status_code == 200


def test_predict_returns_the_class_confidence_and_all_probabilities(
    client: TestClient, tiny_model: Path
) -> None:
    data = png((20, 20, 230))
    r = client.post("/predict", files={"file": ("blue.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body["probabilities"]) == list(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["predicted_class"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == body["probabilities"][body["predicted_class"]]
    assert body["predicted_class"] == "ship"  # the tiny model maps blue to ship
    assert body["filename"] == "blue.png" and body["model"] == "tiny-test"
    assert r.headers["content-type"] == "application/json"
    assert PredictResponse.model_validate(body).model_dump() == body  # the documented schema
    # Exactly the library path: decode, normalise, infer, softmax.
    expected = Predictor(tiny_model).predict_arrays(load_image(data)[None])[0]
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-9)


def test_predict_batch_keeps_upload_order_and_filenames(client: TestClient) -> None:
    files = [("files", (f"img{i}.png", noise_png(i), "image/png")) for i in range(5)]
    files.append(("files", ("red.png", png((230, 20, 20)), "image/png")))
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 6
    assert [x["filename"] for x in body["results"]] == [f"img{i}.png" for i in range(5)] + [
        "red.png"
    ]
    assert body["results"][-1]["predicted_class"] == "automobile"  # tiny model: red
    assert BatchResponse.model_validate(body).model_dump() == body
    for i, item in enumerate(body["results"][:5]):
        single = client.post("/predict", files={"file": ("x.png", noise_png(i))}).json()
        assert item["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


def test_predict_batch_accepts_exactly_the_limit(client: TestClient) -> None:
    files = [("files", (f"{i}.png", png((i * 7, 0, 0)), "image/png")) for i in range(32)]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200 and r.json()["count"] == 32


def test_predict_batch_rejects_more_than_32_files(client: TestClient) -> None:
    files = [("files", (f"{i}.png", png(), "image/png")) for i in range(33)]
    assert_json_error(client.post("/predict/batch", files=files), 413, "at most 32")


def test_predict_batch_names_the_bad_file(client: TestClient) -> None:
    files = [("files", ("ok.png", png())), ("files", ("notes.txt", b"hello there"))]
    assert_json_error(client.post("/predict/batch", files=files), 422, "file 2", "notes.txt")


def test_metrics_is_prometheus_text(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in (
        "cifarlab_requests_total",
        "cifarlab_request_duration_seconds_bucket",
        "cifarlab_batch_size_bucket",
        "cifarlab_model_info",
    ):
        assert name in r.text
    assert 'name="tiny-test"' in r.text


def test_ui_serves_the_web_page(client: TestClient) -> None:
    r = client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()


def test_docs_and_openapi_describe_the_upload_fields(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    single = paths["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    batch = paths["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert single["schema"]["required"] == ["file"]
    assert batch["schema"]["properties"]["files"]["type"] == "array"
    # Answers are serialised by hand (one pass), but /docs still shows their schema.
    for path, schema in (("/predict", "PredictResponse"), ("/predict/batch", "BatchResponse")):
        ok = paths[path]["post"]["responses"]["200"]["content"]["application/json"]
        assert ok["schema"]["$ref"] == f"#/components/schemas/{schema}"


def test_unknown_path_is_json_404(client: TestClient) -> None:
    r = client.get("/no/such/page")
    assert r.status_code == 404 and "detail" in r.json()


# ---- hostile and wrong input -----------------------------------------------------------


def test_oversized_file_is_413_while_streaming(client: TestClient) -> None:
    big = b"\x89PNG" + bytes(300_000)  # limit in this client: 200,000 bytes
    assert_json_error(client.post("/predict", files={"file": ("big.png", big)}), 413, "limit")


HEAD = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'


def call_raw(app, receive) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """POST /predict as raw ASGI with a custom `receive` (TestClient would buffer the body)."""
    sent: list[dict] = []  # type: ignore[type-arg]

    async def send(message: dict) -> None:  # type: ignore[type-arg]
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    asyncio.run(main())
    return sent


def test_oversized_file_is_413_without_reading_the_whole_body(tiny_model: Path) -> None:
    """The limit is enforced on the stream: reading stops right after the limit."""
    app = create_app(Settings(model_path=tiny_model, max_file_bytes=100_000))
    chunks_read = 0

    async def receive() -> dict:  # type: ignore[type-arg]
        nonlocal chunks_read
        chunks_read += 1
        body = HEAD if chunks_read == 1 else bytes(65536)
        return {"type": "http.request", "body": body, "more_body": chunks_read < 1000}  # 64 MB

    sent = call_raw(app, receive)
    assert sent[0]["status"] == 413
    assert b"larger than the limit" in sent[1]["body"]
    assert chunks_read <= 4  # 100 kB limit = 2 chunks of 64 kB (+ head), not 1000


def test_endless_body_after_the_file_is_cut_off(tiny_model: Path) -> None:
    """A chunked body with no Content-Length still has a total cap (here: junk after the end)."""
    app = create_app(Settings(model_path=tiny_model, max_file_bytes=100_000))
    chunks_read = 0

    async def receive() -> dict:  # type: ignore[type-arg]
        nonlocal chunks_read
        chunks_read += 1
        body = HEAD + png() + b"\r\n--b--\r\n" if chunks_read == 1 else bytes(65536)
        return {"type": "http.request", "body": body, "more_body": chunks_read < 10_000}

    sent = call_raw(app, receive)
    assert sent[0]["status"] == 413
    assert chunks_read < 40  # about 1.4 MB for one 100 kB file, not 650 MB


def test_slow_upload_times_out_with_408(tiny_model: Path) -> None:
    app = create_app(Settings(model_path=tiny_model, upload_timeout_s=0.2))
    chunks_read = 0

    async def receive() -> dict:  # type: ignore[type-arg]
        nonlocal chunks_read
        chunks_read += 1
        if chunks_read > 1:
            await asyncio.sleep(0.1)  # a byte every 100 ms: would take minutes
        return {
            "type": "http.request",
            "body": HEAD if chunks_read == 1 else b"x",
            "more_body": True,
        }

    sent = call_raw(app, receive)
    assert sent[0]["status"] == 408
    assert b"longer than 0.2 s" in sent[1]["body"]


def test_client_that_disconnects_mid_upload_is_not_a_server_error(tiny_model: Path) -> None:
    app = create_app(Settings(model_path=tiny_model))
    chunks_read = 0

    async def receive() -> dict:  # type: ignore[type-arg]
        nonlocal chunks_read
        chunks_read += 1
        if chunks_read == 1:
            return {"type": "http.request", "body": HEAD, "more_body": True}
        return {"type": "http.disconnect"}

    sent = call_raw(app, receive)
    assert sent[0]["status"] == 400


def test_declared_content_length_over_the_limit_is_413(client: TestClient) -> None:
    r = client.post(
        "/predict",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": "9" * 12},
    )
    assert r.status_code == 413


def test_default_file_limit_is_10_mb(tiny_model: Path) -> None:
    with TestClient(create_app(Settings(model_path=tiny_model))) as c:
        big = b"\xff\xd8\xff" + bytes(10 * 1024 * 1024)
        assert_json_error(c.post("/predict", files={"file": ("big.jpg", big)}), 413, "10 MB")


def test_decompression_bomb_is_refused(client: TestClient) -> None:
    # 81 megapixels declared in 100 bytes: under Pillow's own bomb limits (so Pillow would
    # start decoding it), over this client's 4 MP limit. Only the header-only check in
    # load_image refuses it, before any pixel is decoded.
    bomb = png_header_only(9000, 9000)
    r = client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == (
        "the image is 9000x9000 = 81,000,000 pixels, more than the limit of 4,000,000; "
        "downscale it before sending"
    )
    # Far larger declarations are already stopped by Pillow when it opens the file.
    huge = png_header_only(100_000, 100_000)  # 10 gigapixels
    r = client.post("/predict", files={"file": ("huge.png", huge, "image/png")})
    assert_json_error(r, 413, "too large to decode safely", "4,000,000 pixels")


def test_image_over_the_pixel_limit_is_413(client: TestClient) -> None:
    # 3000 x 2000 = 6 MP, over this client's 4 MP limit, yet a tiny file.
    data = png((0, 0, 0), size=(3000, 2000))
    assert len(data) < 200_000
    assert_json_error(client.post("/predict", files={"file": ("wide.png", data)}), 413, "pixels")


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("empty.png", b"", ("empty",)),
        ("notes.txt", b"this is not an image at all", ("not a recognised image",)),
        ("random.bin", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), ()),
    ],
)
def test_non_image_and_empty_files_are_422(
    client: TestClient, name: str, data: bytes, words: tuple[str, ...]
) -> None:
    assert_json_error(client.post("/predict", files={"file": (name, data)}), 422, *words)


def test_truncated_image_is_422(client: TestClient) -> None:
    data = noise_png(1, size=64)
    r = client.post("/predict", files={"file": ("cut.png", data[: len(data) // 2])})
    assert_json_error(r, 422)


def test_wrong_field_name_is_422_and_names_the_right_one(client: TestClient) -> None:
    r = client.post("/predict", files={"image": ("a.png", png())})
    assert_json_error(r, 422, "'image'", "'file'")
    r = client.post("/predict/batch", files={"file": ("a.png", png())})
    assert_json_error(r, 422, "'files'")


def test_form_without_a_file_is_422(client: TestClient) -> None:
    r = client.post("/predict", files={"comment": (None, "hello")})
    assert_json_error(r, 422, "no file")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content": b"\x89PNG...", "headers": {"content-type": "image/png"}},
        {"json": {"file": "cat.png"}},
        {"data": {"file": "cat.png"}},  # urlencoded form
        {},
    ],
    ids=["raw-png", "json", "urlencoded", "no-body"],
)
def test_wrong_content_type_is_422(client: TestClient, kwargs: dict) -> None:  # type: ignore[type-arg]
    assert_json_error(client.post("/predict", **kwargs), 422, "multipart/form-data")


def test_multipart_without_boundary_is_422(client: TestClient) -> None:
    r = client.post("/predict", content=b"x", headers={"content-type": "multipart/form-data"})
    assert_json_error(r, 422, "boundary")


def test_truncated_multipart_body_is_422(client: TestClient) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png()
    r = client.post(
        "/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_json_error(r, 422, "ended early")


def test_two_files_to_predict_is_413_and_points_to_batch(client: TestClient) -> None:
    files = [("file", ("a.png", png())), ("file", ("b.png", png()))]
    assert_json_error(client.post("/predict", files=files), 413, "/predict/batch")


def test_wrong_method_is_405(client: TestClient) -> None:
    assert client.get("/predict").status_code == 405


def test_server_stays_healthy_after_hostile_input_and_counts_it(client: TestClient) -> None:
    before_422 = metric(
        client, "cifarlab_requests_total", method="POST", route="/predict", status="422"
    )
    before_413 = metric(
        client, "cifarlab_requests_total", method="POST", route="/predict", status="413"
    )
    before_ok = metric(
        client, "cifarlab_requests_total", method="POST", route="/predict", status="200"
    )
    for _ in range(3):
        client.post("/predict", files={"file": ("x", b"garbage")})
        client.post("/predict", files={"file": ("bomb.png", png_header_only(90_000, 90_000))})
    assert client.get("/health").status_code == 200
    assert client.post("/predict", files={"file": ("a.png", png())}).status_code == 200
    after = lambda status: metric(  # noqa: E731
        client, "cifarlab_requests_total", method="POST", route="/predict", status=status
    )
    assert after("422") - before_422 == 3
    assert after("413") - before_413 == 3
    assert after("200") - before_ok == 1
    assert metric(client, "cifarlab_request_duration_seconds_count", route="/predict") > 0


# ---- dynamic batching ------------------------------------------------------------------


def test_batch_endpoint_uses_one_model_call(client: TestClient) -> None:
    calls = metric(client, "cifarlab_batch_size_count")
    images = metric(client, "cifarlab_images_total")
    files = [("files", (f"{i}.png", noise_png(i), "image/png")) for i in range(8)]
    assert client.post("/predict/batch", files=files).status_code == 200
    assert metric(client, "cifarlab_batch_size_count") - calls == 1
    assert metric(client, "cifarlab_images_total") - images == 8


def test_concurrent_requests_share_model_calls(tiny_model: Path) -> None:
    """While one call is in ONNX Runtime, the requests that arrive wait and go together."""
    settings = Settings(model_path=tiny_model, max_wait_ms=50)
    app = create_app(settings)
    sizes: list[int] = []
    with TestClient(app) as c:
        service = app.state.service
        real = service.predictor.predict_normalized

        def slow(images: np.ndarray):  # type: ignore[no-untyped-def]
            sizes.append(len(images))
            time.sleep(0.2)  # a slow model, so that requests pile up behind it
            return real(images)

        service.predictor.predict_normalized = slow
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: c.post("/predict", files={"file": ("a.png", noise_png(i))}),
                    range(16),
                )
            )
    assert all(r.status_code == 200 for r in codes)
    assert sum(sizes) == 16
    assert max(sizes) > 1, sizes  # some requests were grouped
    assert len(sizes) < 16


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_batcher_never_delays_a_lone_request() -> None:
    sizes: list[int] = []

    async def main() -> list[int]:
        # A one-minute max wait: if a lone request waited for company, this would time out.
        b = MicroBatcher(
            lambda x: list(x.sum(axis=(1, 2, 3))), max_wait_ms=60_000, on_batch=sizes.append
        )
        await b.start()
        try:
            got = [
                int(await asyncio.wait_for(b.submit(np.full((2, 2, 3), i, np.uint8)), 5))
                for i in range(3)
            ]
        finally:
            await b.stop()
        return got

    assert run(main()) == [0, 12, 24]
    assert sizes == [1, 1, 1]


def test_batcher_groups_requests_queued_together_up_to_the_max() -> None:
    sizes: list[int] = []

    async def main() -> list[int]:
        b = MicroBatcher(
            lambda x: [int(v) for v in x[:, 0, 0, 0]],
            max_batch_size=4,
            max_wait_ms=0,
            on_batch=sizes.append,
        )
        await b.start()
        try:
            imgs = [np.full((1, 1, 3), i, np.uint8) for i in range(10)]
            return list(await asyncio.gather(*(b.submit(im) for im in imgs)))
        finally:
            await b.stop()

    assert run(main()) == list(range(10))  # every caller gets its own result
    assert sizes == [4, 4, 2]


def test_batcher_waits_for_more_only_while_requests_keep_arriving() -> None:
    sizes: list[int] = []

    async def main() -> None:
        b = MicroBatcher(
            lambda x: list(range(len(x))), max_batch_size=8, max_wait_ms=2000, on_batch=sizes.append
        )
        await b.start()
        try:
            first = [
                asyncio.ensure_future(b.submit(np.zeros((1, 1, 3), np.uint8))) for _ in range(2)
            ]
            await asyncio.sleep(0.05)  # the worker now holds 2 and waits for more
            late = [
                asyncio.ensure_future(b.submit(np.zeros((1, 1, 3), np.uint8))) for _ in range(6)
            ]
            await asyncio.wait_for(asyncio.gather(*first, *late), 5)  # full batch: no more waiting
        finally:
            await b.stop()

    run(main())
    assert sizes == [8]


def test_batcher_reports_errors_to_callers_and_keeps_serving() -> None:
    async def main() -> int:
        calls = 0

        def flaky(x: np.ndarray) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("boom")
            return [1] * len(x)

        b = MicroBatcher(flaky)
        await b.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await b.submit(np.zeros((1, 1, 3), np.uint8))
            return int(await b.submit(np.zeros((1, 1, 3), np.uint8)))
        finally:
            await b.stop()

    assert run(main()) == 1


def test_batcher_stop_fails_waiting_requests() -> None:
    """stop() fails waiting requests at once and waits for the running batch off the loop.

    The batch only finishes when the test, on the event loop, releases it *after* checking
    that the request has failed; were stop() to block the loop while waiting for the
    inference thread, that release could never happen and the batch reports it was not
    released (the wait's timeout is only a safety net against hanging forever).
    """

    async def main() -> None:
        entered, release = threading.Event(), threading.Event()
        released: list[bool] = []

        def run_batch(x: np.ndarray) -> list[int]:
            entered.set()
            released.append(release.wait(60))
            return [0] * len(x)

        b = MicroBatcher(run_batch)
        await b.start()
        pending = asyncio.ensure_future(b.submit(np.zeros((1, 1, 3), np.uint8)))
        assert await asyncio.to_thread(entered.wait, 60)
        stopping = asyncio.ensure_future(b.stop())
        with pytest.raises(BatcherClosedError):
            await pending
        assert not stopping.done()  # still waiting for the batch in the inference thread
        release.set()
        await stopping
        assert released == [True]
        with pytest.raises(BatcherClosedError):
            await b.submit(np.zeros((1, 1, 3), np.uint8))

    run(main())


# ---- settings, model loading, the bundled model ----------------------------------------


def test_settings_come_from_cifarlab_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CIFARLAB_MAX_BATCH_FILES", "4")
    monkeypatch.setenv("CIFARLAB_MAX_WAIT_MS", "0")
    monkeypatch.setenv("CIFARLAB_MODEL_PATH", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("CIFARLAB_CACHE", str(tmp_path))  # other areas' variables are ignored
    s = Settings()
    assert (s.max_batch_files, s.max_wait_ms, s.model_path) == (4, 0.0, tmp_path / "m.onnx")
    assert Settings(max_batch_files=7).max_batch_files == 7  # arguments win
    assert Settings.model_fields["max_file_bytes"].default == 10 * 1024 * 1024


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"not found.*cifarlab export"):
        Predictor(tmp_path / "nope.onnx")


def test_model_that_is_not_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        Predictor(bad)


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0)


def test_bundled_model_is_self_describing_and_serves() -> None:
    assert BUNDLED_MODEL.is_file(), "export a model to src/cifarlab/serve/models/default.onnx"
    info = Predictor(BUNDLED_MODEL).info
    assert info.classes == CLASSES and info.input_size == 32
    side = BUNDLED_MODEL.with_suffix(".json")
    assert side.is_file()
    import json

    record = json.loads(side.read_text())
    assert record["sha256"] == info.sha256  # the side-car describes this very file
    assert record["name"] == info.name
    with TestClient(create_app(Settings())) as c:
        health = c.get("/health").json()
        assert health["model"]["name"] == info.name
        r = c.post("/predict", files={"file": ("a.png", noise_png(5))})
        assert r.status_code == 200 and r.json()["predicted_class"] in CLASSES


def test_serving_needs_no_torch(tiny_model: Path) -> None:
    """`cifarlab serve`'s imports and a full request, with torch made unimportable."""
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import io
import os
from PIL import Image
from fastapi.testclient import TestClient
import cifarlab.cli
from cifarlab.serve.app import create_app
from cifarlab.serve.settings import Settings
buf = io.BytesIO(); Image.new("RGB", (8, 8), (0, 0, 255)).save(buf, "PNG")
with TestClient(create_app(Settings(model_path={str(tiny_model)!r}))) as c:
    r = c.post("/predict", files={{"file": ("b.png", buf.getvalue())}})
    assert r.status_code == 200, r.text
    print(r.json()["predicted_class"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ship"


def test_a_model_failure_is_a_json_500_and_the_server_keeps_serving(tiny_model: Path) -> None:
    app = create_app(Settings(model_path=tiny_model))
    with TestClient(app, raise_server_exceptions=False) as c:
        service = app.state.service
        real = service.predictor.predict_normalized
        service.predictor.predict_normalized = lambda images: 1 / 0
        r = c.post("/predict", files={"file": ("a.png", png())})
        assert r.status_code == 500 and r.json()["detail"].startswith("internal error")
        service.predictor.predict_normalized = real
        assert c.post("/predict", files={"file": ("a.png", png())}).status_code == 200


# ---- the `cifarlab serve` command ------------------------------------------------------


def test_cli_serve_with_a_missing_model_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cifarlab.cli import main

    assert main(["serve", "--model", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["serve", "--port", "70000", "--model", str(tmp_path / "x.onnx")]) == 2
    assert "invalid serving settings" in capsys.readouterr().err


def test_cli_serve_answers_over_http(tiny_model: Path) -> None:
    import json
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "cifarlab", "serve", "--port", str(port)]
    env = {**os.environ, "CIFARLAB_MODEL_PATH": str(tiny_model)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert health["model"]["name"] == "tiny-test"  # the env var chose the model
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_batcher_decodes_bytes_in_its_thread_and_a_bad_file_fails_alone() -> None:
    def decode(data: bytes) -> np.ndarray:
        if data == b"bad":
            raise ValueError("not an image")
        return np.full((1, 1, 3), len(data), np.uint8)

    async def main() -> list[object]:
        b = MicroBatcher(lambda x: [int(v) for v in x[:, 0, 0, 0]], decode=decode)
        await b.start()
        try:
            items = [b"ab", b"bad", np.full((1, 1, 3), 7, np.uint8), b"abcd"]
            return await asyncio.gather(*(b.submit(i) for i in items), return_exceptions=True)
        finally:
            await b.stop()

    got = run(main())
    assert got[0] == 2 and got[2] == 7 and got[3] == 4
    assert isinstance(got[1], ValueError)


def test_small_and_large_uploads_give_the_same_answer(tiny_model: Path) -> None:
    """Small files decode in the inference thread, large ones in the decode pool first."""
    big = io.BytesIO()
    pixels = np.random.default_rng(4).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(big, "PNG")
    assert len(big.getvalue()) > 64 * 1024
    small = io.BytesIO()
    Image.fromarray(load_image(big.getvalue())).save(small, "PNG")
    with TestClient(create_app(Settings(model_path=tiny_model))) as c:
        a = c.post("/predict", files={"file": ("big.png", big.getvalue())}).json()
        b = c.post("/predict", files={"file": ("small.png", small.getvalue())}).json()
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-9)


def _urllib_upload(url: str, size: int) -> tuple[int, dict[str, str]]:
    """POST a `size`-byte multipart upload with urllib (which writes the body before reading)."""
    import json
    import urllib.error
    import urllib.request

    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    body = head + b"\x89PNG" + bytes(size) + b"\r\n--b--\r\n"
    req = urllib.request.Request(
        url + "/predict", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_urllib_client_reads_the_413_for_a_12_mb_upload(tiny_model: Path) -> None:
    from live_server import live_server

    settings = Settings(model_path=tiny_model, max_file_bytes=1_000_000)
    with live_server(settings) as url:
        for _ in range(3):  # and the server keeps answering afterwards
            status, body = _urllib_upload(url, 12 * 1024 * 1024)
            assert status == 413
            assert "more than the" in body["detail"]
        assert _urllib_upload(url, 100)[0] == 422  # a small (broken) PNG still gets its answer


def test_413_drain_is_bounded_in_bytes(tiny_model: Path) -> None:
    """Past `drain_max_bytes` the server stops reading: that client sees the connection drop."""
    from live_server import live_server

    settings = Settings(model_path=tiny_model, max_file_bytes=1_000_000, drain_max_bytes=4_000_000)
    with live_server(settings) as url:
        with pytest.raises(OSError):  # urllib: connection reset or broken pipe, no answer
            _urllib_upload(url, 40 * 1024 * 1024)
        assert _urllib_upload(url, 3 * 1024 * 1024)[0] == 413  # within the bound: answered


# ---- class activation maps (/predict?explain=true) ---------------------------------------


def half_blue_png() -> bytes:
    """Left half pure blue (the tiny model's 'ship' colour), right half mid grey."""
    pixels = np.full((32, 32, 3), 128, np.uint8)
    pixels[:, :16] = (0, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_explain_returns_an_overlay_where_the_evidence_is(tmp_path: Path) -> None:
    import base64

    model = write_tiny_model(tmp_path / "cam.onnx", cam=True)
    assert Predictor(model).has_cam
    with TestClient(create_app(Settings(model_path=model))) as c:
        plain = c.post("/predict", files={"file": ("a.png", half_blue_png())}).json()
        r = c.post("/predict?explain=true", files={"file": ("a.png", half_blue_png())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predicted_class"] == plain["predicted_class"] == "ship"
    assert body["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-6)
    assert plain["explanation"] is None  # only on request
    assert body["explanation"]["grid"] == [8, 8]
    overlay = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay_png"])))
    )
    assert overlay.shape == (128, 128, 3)
    # The ship evidence sits in the blue half: the hottest colour (red) is blended over the
    # left, the coldest (blue) over the right.
    from cifarlab.serve.explain import ALPHA

    hot, cold = np.array([220, 30, 30]), np.array([40, 60, 200])
    left = (1 - ALPHA) * np.array([0, 0, 255]) + ALPHA * hot
    right = (1 - ALPHA) * np.array([128, 128, 128]) + ALPHA * cold
    assert np.abs(overlay[:, :40].reshape(-1, 3) - left).max() <= 2
    assert np.abs(overlay[:, 88:].reshape(-1, 3) - right).max() <= 2


def test_explain_on_a_model_without_a_map_answers_without_one(client: TestClient) -> None:
    r = client.post("/predict?explain=true", files={"file": ("a.png", png())})
    assert r.status_code == 200 and r.json()["explanation"] is None


def test_the_bundled_model_serves_with_or_without_a_map() -> None:
    predictor = Predictor.load()
    with TestClient(create_app(Settings(), predictor=predictor)) as c:
        body = c.post("/predict?explain=true", files={"file": ("a.png", half_blue_png())}).json()
    assert body["predicted_class"] in CLASSES
    if predictor.has_cam:
        assert len(body["explanation"]["grid"]) == 2
    else:
        assert body["explanation"] is None


def test_bound_malloc_fixes_the_mmap_threshold_where_glibc_is_the_allocator() -> None:
    import platform

    from cifarlab.serve.memory import bound_malloc

    accepted = bound_malloc()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert accepted
    else:
        assert accepted is False
