"""The HTTP API: `create_app(settings)` builds a FastAPI app serving one ONNX model.

    cifarlab serve --port 8000    # then open http://127.0.0.1:8000/ui or /docs

Endpoints: `GET /` (liveness), `GET /health` (model and settings; 503 until the model is
loaded), `POST /predict` (multipart field `file`), `POST /predict/batch` (field `files`, 1 to
`max_batch_files`), `GET /metrics` (Prometheus), `GET /ui` (the web page), `GET /docs`.

Uploads are read with limits enforced while streaming (`uploads.py`), then decoded
(`imaging.load_image`) and classified off the event loop through the dynamic micro-batcher
(`batching.py`): small files are decoded in its inference thread with their batch, large ones
in a decode pool first. The inference thread is the only caller of ONNX Runtime. Every bad input
gets a 4xx JSON `{"detail": "..."}` that says what was wrong.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cifarlab import __version__
from cifarlab.constants import IMAGE_SIZE
from cifarlab.serve.batching import BatcherClosedError, MicroBatcher
from cifarlab.serve.explain import overlay_base64
from cifarlab.serve.imaging import ImageError, load_image
from cifarlab.serve.oip import OIPError, oip_error
from cifarlab.serve.oip import router as oip_router
from cifarlab.serve.predictor import Prediction, Predictor, preprocess
from cifarlab.serve.settings import Settings
from cifarlab.serve.uploads import Upload, UploadError, read_uploads

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
T = TypeVar("T")
# Uploads up to this size are decoded in the inference thread as part of their batch; larger
# ones (slow to decode) first in the decode pool, so they never delay other requests' batch.
INLINE_DECODE_BYTES = 64 * 1024


# ---- response models -------------------------------------------------------------------


class RootResponse(BaseModel):
    status: str = Field(description="'ok' once the model is loaded, else 'loading'")
    service: str = "cifarlab"
    version: str = __version__
    docs: str = "/docs"
    ui: str = "/ui"


class ModelDescription(BaseModel):
    name: str
    version: str = Field(description="first 12 hex digits of the ONNX file's sha256")
    sha256: str | None
    classes: list[str]
    input_size: int
    test_accuracy: float | None
    tta: bool
    created: str | None
    temperature: float | None = Field(
        default=None, description="the graph's logits are divided by this (held-out fit)"
    )
    robustness: dict[str, Any] | None = Field(
        default=None,
        description="clean, JPEG-75 and mean-corruption accuracy and ECE of this file, from "
        "reports/robustness.json via the side-car JSON",
    )


class BatchingDescription(BaseModel):
    max_batch_size: int
    max_wait_ms: float


class LimitsDescription(BaseModel):
    max_file_bytes: int
    max_pixels: int
    max_batch_files: int


class HealthResponse(BaseModel):
    status: str
    model: ModelDescription
    onnxruntime_version: str
    cifarlab_version: str
    uptime_seconds: float
    batching: BatchingDescription
    limits: LimitsDescription


class Explanation(BaseModel):
    overlay_png: str = Field(
        description="base64 PNG: the class activation map of the predicted class over the "
        "32x32 image the model saw (red = most evidence); relative within the image"
    )
    grid: list[int] = Field(description="height and width of the map before upsampling")


class PredictResponse(BaseModel):
    predicted_class: str
    confidence: float = Field(description="probability of the predicted class, 0-1")
    probabilities: dict[str, float] = Field(description="every class, in model order")
    filename: str | None = None
    model: str
    model_version: str
    latency_ms: float = Field(description="server time for this request, upload to answer")
    explanation: Explanation | None = Field(
        default=None,
        description="with ?explain=true and a model that has a class activation map output",
    )


class BatchItem(BaseModel):
    filename: str | None
    predicted_class: str
    confidence: float
    probabilities: dict[str, float]


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="one per uploaded file, in upload order")
    count: int
    model: str
    model_version: str
    latency_ms: float


class ErrorResponse(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "file or request too large"},
    422: {"model": ErrorResponse, "description": "not a usable image or upload"},
    503: {"model": ErrorResponse, "description": "model not loaded yet"},
}


IMAGE_MEDIA_TYPES = (
    "image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff, image/avif"
)


def _upload_body(field: str, many: bool) -> dict[str, Any]:
    """OpenAPI request body for an upload the endpoint parses itself (so /docs can send it)."""
    # What the server accepts, so that a schema-valid request is an acceptable one: a
    # non-empty image file; for batches 1 to `max_batch_files` of them (`create_app` fills in
    # the maximum from the settings).
    item = {
        "type": "string",
        "format": "binary",
        "minLength": 1,
        "description": "an image file: PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF",
    }
    prop: dict[str, Any] = {"type": "array", "items": item, "minItems": 1} if many else item
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {field: prop}, "required": [field]},
                    "encoding": {field: {"contentType": IMAGE_MEDIA_TYPES}},
                }
            },
        }
    }


# ---- metrics ---------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cifarlab_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cifarlab_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=(0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cifarlab_batch_size",
            "images per ONNX Runtime call (dynamic batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.images = Counter("cifarlab_images", "images classified", registry=self.registry)
        self.model_info = Info("cifarlab_model", "the served model", registry=self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        # Paths of routes that do not set scope["route"] (docs, openapi.json); any other
        # unrouted path is "unmatched", so random URLs cannot grow the label set.
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", None) or self._label(scope["path"])
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)

    def _label(self, path: str) -> str:
        if path in self.known_paths:
            return path
        return "/static" if path.startswith("/static/") else "unmatched"


class DrainMiddleware:
    """After an early error answer, read and drop the rest of the request body, bounded.

    The server answers 413 as soon as an upload passes a limit, long before the body has
    arrived. Clients that write the whole body before reading (Python's urllib, requests)
    would then get a connection reset instead of the answer if the server closed at once.
    So the answer is sent and flushed, the remaining body is read and discarded (at most
    `max_bytes`, at most `timeout_s`), and only then is the response completed. A body
    declared larger than `max_bytes` is not drained: that client gets the reset.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0 or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        body_done = False
        status = 0

        async def receive_tracked() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_then_drain(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and not body_done
                and status >= 400
                and status != 408  # a slow sender: waiting for its body again helps no one
                and _declared_length(scope) <= self.max_bytes
            ):
                await send({**message, "more_body": True})  # the answer goes out now
                await self._drain(receive)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app(scope, receive_tracked, send_then_drain)

    async def _drain(self, receive: Receive) -> None:
        drained = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while drained <= self.max_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            pass
        log.debug("stopped draining a refused request body after %d bytes", drained)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def _has_body(scope: Scope) -> bool:
    return _declared_length(scope) > 0 or _header(scope, b"transfer-encoding") is not None


def _declared_length(scope: Scope) -> int:
    raw = _header(scope, b"content-length")
    return int(raw) if raw is not None and raw.isdigit() else 0


# ---- the service -----------------------------------------------------------------------


def prepare_batch(items: list[np.ndarray]) -> np.ndarray:
    """uint8 `(32, 32, 3)` images and normalised float32 `(3, 32, 32)` tensors -> one batch.

    Decoded uploads arrive as uint8 and are normalised together (one vectorised pass); Open
    Inference Protocol clients send tensors that are already normalised.
    """
    if all(item.dtype == np.uint8 for item in items):
        return preprocess(np.stack(items))
    batch = np.empty((len(items), 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    images = [i for i, item in enumerate(items) if item.dtype == np.uint8]
    if images:
        batch[images] = preprocess(np.stack([items[i] for i in images]))
    for i, item in enumerate(items):
        if item.dtype != np.uint8:
            batch[i] = item
    return batch


class Service:
    """What the endpoints need: settings, the loaded predictor, the batcher, the metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.started = time.monotonic()
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher[Prediction] | None = None
        self._decoders: ThreadPoolExecutor | None = None
        # Every upload is decoded with the same pixel limit.
        self._load_image: Callable[[bytes], np.ndarray] = functools.partial(
            load_image, max_pixels=settings.max_pixels
        )

    @property
    def ready(self) -> bool:
        return self.predictor is not None and self.batcher is not None and self.batcher.running

    def _run_batch(self, batch: np.ndarray) -> list[Prediction]:
        assert self.predictor is not None
        results = self.predictor.predict_normalized(batch)
        self.metrics.images.inc(len(results))
        return results

    async def start(self, predictor: Predictor | None = None) -> None:
        s = self.settings
        if predictor is None:
            # Reading and optimising the graph takes a moment: keep the event loop free.
            predictor = await run_in_threadpool(Predictor, s.model_path, threads=s.ort_threads)
        info = predictor.info
        self.metrics.model_info.info(
            {
                "name": info.name,
                "version": info.version,
                "tta": str(info.tta).lower(),
                "test_accuracy": "" if info.test_accuracy is None else f"{info.test_accuracy}",
                "onnxruntime": ort.__version__,
            }
        )
        batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            on_batch=self.metrics.batch_size.observe,
            decode=self._load_image,
            prepare=prepare_batch,
        )
        await batcher.start()
        # A pool of our own: `run_in_executor` costs less per call than anyio's
        # `to_thread` (no capacity limiter or cancel scope), and decoding never waits behind
        # other blocking work of the framework.
        self._decoders = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="cifarlab-decode"
        )
        self.predictor, self.batcher = predictor, batcher
        log.info(
            "serving %s (version %s, test accuracy %s) from %s",
            info.name,
            info.version,
            info.test_accuracy,
            predictor.path,
        )

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.batcher = None
        self.predictor = None
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = None

    async def in_decoder(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._decoders, fn)

    async def uploads(self, request: Request, field_name: str, max_files: int) -> list[Upload]:
        try:
            # A client that trickles its body (slowloris) must not hold a request forever.
            async with asyncio.timeout(self.settings.upload_timeout_s):
                return await read_uploads(
                    request,
                    field_name=field_name,
                    max_files=max_files,
                    max_file_bytes=self.settings.max_file_bytes,
                )
        except TimeoutError:
            raise UploadError(
                408, f"the upload took longer than {self.settings.upload_timeout_s:g} s; resend it"
            ) from None

    async def decode(self, data: bytes) -> np.ndarray:
        return await self.in_decoder(functools.partial(self._load_image, data))

    async def decode_all(self, uploads: list[Upload]) -> list[np.ndarray]:
        """Decode several files in one worker-thread hop; errors name the file."""

        def work() -> list[np.ndarray]:
            images = []
            for i, upload in enumerate(uploads, start=1):
                try:
                    images.append(self._load_image(upload.data))
                except ImageError as exc:
                    name = f" {upload.filename!r}" if upload.filename else ""
                    raise ImageError(f"file {i}{name}: {exc}", exc.status_code) from None
            return images

        return await self.in_decoder(work)

    async def classify_file(self, data: bytes) -> Prediction:
        """Decode (off the event loop) and classify one uploaded file."""
        if len(data) <= INLINE_DECODE_BYTES:
            # Small files (a 32x32 PNG is ~3 kB) decode in the inference thread, as part of
            # their batch: it saves a thread hop per request under load.
            return await self.classify(data)
        return await self.classify(await self.decode(data))

    async def classify(self, image: np.ndarray | bytes) -> Prediction:
        if self.batcher is None:
            raise HTTPException(503, "the model is not loaded")
        try:
            return await self.batcher.submit(image)
        except BatcherClosedError:
            raise HTTPException(503, "the server is shutting down; retry shortly") from None


def ready_service(request: Request) -> Service:
    """The app's service, or 503 while the model is not loaded.

    Called at the top of each endpoint rather than declared as a FastAPI dependency: resolving
    a dependency took about 4% of the event loop under load (one py-spy profile).
    """
    service: Service = request.app.state.service
    if not service.ready:
        raise HTTPException(503, "the model is not loaded yet; retry in a moment")
    return service


def _json(model: BaseModel) -> Response:
    """Serialise a response model once, in pydantic's Rust core.

    Returning the model itself would make FastAPI validate it again against `response_model`
    and then serialise it: about 6% of the event loop under load (one py-spy profile). The
    declared `response_model` still documents the endpoint in /docs.
    """
    return Response(model.model_dump_json(), media_type="application/json")


# ---- routes ----------------------------------------------------------------------------

router = APIRouter()


@router.get("/", response_model=RootResponse, summary="Liveness check")
async def root(request: Request) -> RootResponse:
    service: Service = request.app.state.service
    return RootResponse(status="ok" if service.ready else "loading")


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: _ERRORS[503]},
    summary="Model, runtime and settings; 503 until the model is loaded",
)
async def health(request: Request) -> HealthResponse:
    service = ready_service(request)
    assert service.predictor is not None
    info = service.predictor.info
    s = service.settings
    return HealthResponse(
        status="ok",
        model=ModelDescription(
            name=info.name,
            version=info.version,
            sha256=info.sha256,
            classes=list(info.classes),
            input_size=info.input_size,
            test_accuracy=info.test_accuracy,
            tta=info.tta,
            created=info.created,
            temperature=info.temperature,
            robustness=info.robustness,
        ),
        onnxruntime_version=ort.__version__,
        cifarlab_version=__version__,
        uptime_seconds=round(time.monotonic() - service.started, 3),
        batching=BatchingDescription(max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms),
        limits=LimitsDescription(
            max_file_bytes=s.max_file_bytes,
            max_pixels=s.max_pixels,
            max_batch_files=s.max_batch_files,
        ),
    )


def _item(upload: Upload, result: Prediction) -> dict[str, Any]:
    """One file's answer: the fields /predict and each /predict/batch result share."""
    return {
        "filename": upload.filename or None,
        "predicted_class": result.predicted_class,
        "confidence": result.confidence,
        "probabilities": result.probabilities,
    }


def _latency_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_upload_body("file", many=False),
    summary="Classify one image (multipart field 'file')",
)
async def predict(
    request: Request,
    explain: bool = Query(
        False,
        description="also return the class activation map of the predicted class as a PNG "
        "overlay (models without a map output answer with explanation null)",
    ),
) -> Response:
    start = time.perf_counter()
    service = ready_service(request)
    assert service.predictor is not None  # ready_service checked it is loaded
    info = service.predictor.info  # the model answering this request, even if shut down later
    (upload,) = await service.uploads(request, "file", max_files=1)
    explanation = None
    if explain and service.predictor.has_cam:
        # The overlay needs the decoded image, so decode first, then classify the array.
        image = await service.decode(upload.data)
        result = await service.classify(image)
        if result.cam is not None:
            cam = result.cam
            png = await service.in_decoder(functools.partial(overlay_base64, image, cam))
            explanation = Explanation(overlay_png=png, grid=list(cam.shape))
    else:
        result = await service.classify_file(upload.data)
    return _json(
        PredictResponse(
            **_item(upload, result),
            model=info.name,
            model_version=info.version,
            latency_ms=_latency_ms(start),
            explanation=explanation,
        )
    )


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses=_ERRORS,
    openapi_extra=_upload_body("files", many=True),
    summary="Classify 1 to max_batch_files images (multipart field 'files')",
)
async def predict_batch(request: Request) -> Response:
    start = time.perf_counter()
    service = ready_service(request)
    assert service.predictor is not None  # ready_service checked it is loaded
    info = service.predictor.info
    uploads = await service.uploads(request, "files", max_files=service.settings.max_batch_files)
    images = await service.decode_all(uploads)
    # Submitted together, they reach the worker together and share one ONNX Runtime call
    # (with other requests' images, if any are queued).
    results = await asyncio.gather(*(service.classify(img) for img in images))
    return _json(
        BatchResponse(
            results=[BatchItem(**_item(u, r)) for u, r in zip(uploads, results, strict=True)],
            count=len(results),
            model=info.name,
            model_version=info.version,
            latency_ms=_latency_ms(start),
        )
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/ui", summary="The web page", response_class=FileResponse, include_in_schema=False)
async def ui() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return JSONResponse({"detail": "the web page is not installed"}, status_code=404)
    return FileResponse(page, media_type="text/html")


# ---- the app ---------------------------------------------------------------------------


async def _upload_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UploadError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


async def _image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)


async def _invalid_params(request: Request, exc: Exception) -> JSONResponse:
    # One string like every other error here, e.g. "query.explain: Input should be a valid
    # boolean", rather than FastAPI's list of objects.
    assert isinstance(exc, RequestValidationError)
    parts = [
        ".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg")) for e in exc.errors()
    ]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody is listening any more; answer something small instead of logging a 500.
    return JSONResponse({"detail": "the client disconnected during the upload"}, 400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; see the server log"}, 500)


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """Put this server's file-count limit into its OpenAPI schema (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            body = schema["paths"]["/predict/batch"]["post"]["requestBody"]
            files = body["content"]["multipart/form-data"]["schema"]["properties"]["files"]
            files["maxItems"] = settings.max_batch_files
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, predictor: Predictor | None = None) -> FastAPI:
    """A FastAPI app serving `settings.model_path` (or an already loaded `predictor`).

    The model is loaded once by the lifespan, so use the app as a context manager in tests
    (`with TestClient(create_app()) as client: ...`).
    """
    settings = settings or Settings()
    metrics_ = Metrics()
    service = Service(settings, metrics_)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start(predictor)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="cifarlab",
        version=__version__,
        description="CIFAR-10 image classification: upload an image, get the class.",
        lifespan=lifespan,
    )
    app.state.service = service
    _document_limits(app, settings)
    app.include_router(router)
    app.include_router(oip_router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(UploadError, _upload_error)
    app.add_exception_handler(OIPError, oip_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(RequestValidationError, _invalid_params)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
    known = frozenset(p for r in app.routes if "{" not in (p := getattr(r, "path", "{")))
    app.add_middleware(
        DrainMiddleware, max_bytes=settings.drain_max_bytes, timeout_s=settings.drain_timeout_s
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics_, known_paths=known)
    return app
