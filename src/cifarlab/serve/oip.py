"""Open Inference Protocol v2 (KServe v2, as spoken by Triton, MLServer, OpenVINO Model Server).

    python -c "import tritonclient.http as t; print(t.InferenceServerClient('127.0.0.1:8000')
        .get_model_metadata('fastnet'))"

REST endpoints beside cifarlab's own, through the same micro-batcher:

- `GET /v2/health/live`, `GET /v2/health/ready` (200 or 503, for Kubernetes probes);
- `GET /v2` (server name, version, extensions);
- `GET /v2/models/{name}`, `GET /v2/models/{name}/ready`, `POST /v2/models/{name}/infer` and
  the same under `/v2/models/{name}/versions/{version}/...`. `name` is the model's name as
  `/health` reports it and `version` its 12-digit content hash; other names give a 404.

An inference request has exactly one input, either

- `input`: FP32 `[N, 3, 32, 32]`, RGB scaled to 0-1 and normalised with the `mean`/`std` of the
  model metadata's `parameters` (layout NCHW), or
- `image`: BYTES `[N]`, each element an encoded image file (PNG, JPEG, ...), decoded exactly as
  `/predict` decodes uploads. In the JSON form each element is a base64 string; with the
  binary tensor extension (what `tritonclient` sends by default) the raw file bytes.

The one output `probabilities` is FP32 `[N, classes]`, in the order of the metadata's `classes`,
as JSON or as binary data when the request asks for it. N is at most `max_batch_files`. Errors
are JSON `{"error": "..."}` with a 4xx status, as the protocol specifies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from cifarlab import __version__
from cifarlab.constants import IMAGE_SIZE
from cifarlab.contract import INPUT_NAME, LAYOUT
from cifarlab.serve.imaging import ImageError
from cifarlab.serve.uploads import UploadError, read_body

if TYPE_CHECKING:
    from cifarlab.serve.app import Service
    from cifarlab.serve.predictor import Predictor

IMAGE_INPUT = "image"  # BYTES input: encoded image files
OUTPUT = "probabilities"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"
_FLOAT_JSON_BYTES = 32  # generous text size of one float in a JSON tensor


class OIPError(Exception):
    """A request the protocol answers with `{"error": message}` and `status_code`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


async def oip_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OIPError)
    return JSONResponse({"error": exc.message}, status_code=exc.status_code)


router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

_ERROR_SCHEMA: dict[str, Any] = {
    "application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no model of that name or version", "content": _ERROR_SCHEMA}
}
_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "the model is not loaded yet", "content": _ERROR_SCHEMA}
}


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _ready_predictor(request: Request) -> tuple[Service, Predictor]:
    service = _service(request)
    predictor = service.predictor
    if not service.ready or predictor is None:
        raise OIPError(503, "the model is not loaded yet; retry in a moment")
    return service, predictor


def _model(request: Request, name: str, version: str | None) -> tuple[Service, Predictor]:
    service, predictor = _ready_predictor(request)
    info = predictor.info
    if name != info.name or (version is not None and version != info.version):
        wanted = name if version is None else f"{name} version {version}"
        raise OIPError(
            404,
            f"unknown model {wanted!r}; this server serves {info.name!r} (version {info.version})",
        )
    return service, predictor


@router.get("/health/live", summary="Liveness (200 while the process answers)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready", summary="Readiness (200 once the model is loaded)", responses=_NOT_READY
)
async def ready(request: Request) -> dict[str, bool]:
    _ready_predictor(request)
    return {"ready": True}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "cifarlab", "version": __version__, "extensions": EXTENSIONS}


def _metadata(predictor: Predictor, max_batch: int) -> dict[str, Any]:
    info = predictor.info
    n_classes = len(info.classes)
    parameters = {
        "mean": list(info.mean),
        "std": list(info.std),
        "layout": LAYOUT,
        "scale": "RGB / 255, then (x - mean) / std per channel",
        "classes": list(info.classes),
        "max_batch_size": max_batch,
    }
    return {
        "name": info.name,
        "versions": [info.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": [-1, 3, info.input_size, info.input_size],
                "parameters": {"mean": parameters["mean"], "std": parameters["std"]},
            },
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, n_classes]}],
        "parameters": parameters,
    }


@router.get("/models/{name}", summary="Model metadata", responses=_NOT_FOUND)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _metadata_for(request, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata", responses=_NOT_FOUND)
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _metadata_for(request, name, version)


def _metadata_for(request: Request, name: str, version: str | None) -> dict[str, Any]:
    service, predictor = _model(request, name, version)
    return _metadata(predictor, service.settings.max_batch_files)


@router.get("/models/{name}/ready", summary="Model readiness", responses=_NOT_FOUND)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    _model(request, name, None)
    return {"name": name, "ready": True}


@router.get(
    "/models/{name}/versions/{version}/ready", summary="Model readiness", responses=_NOT_FOUND
)
async def model_version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    _model(request, name, version)
    return {"name": name, "ready": True}


_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string", "enum": [INPUT_NAME, IMAGE_INPUT]},
                                    "shape": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"type": "integer", "minimum": 0},
                                    },
                                    "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string", "enum": [OUTPUT]}},
                            },
                        },
                    },
                }
            }
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request or tensor", "content": _ERROR_SCHEMA},
    404: _NOT_FOUND[404],
    413: {"description": "too many images or too large a body", "content": _ERROR_SCHEMA},
    422: {"description": "an element of `image` is not a usable image", "content": _ERROR_SCHEMA},
}


@router.post(
    "/models/{name}/infer",
    summary="Inference (Open Inference Protocol v2)",
    openapi_extra=_INFER_DOC,
    responses=_INFER_RESPONSES,
)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference (Open Inference Protocol v2)",
    openapi_extra=_INFER_DOC,
    responses=_INFER_RESPONSES,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    service, predictor = _model(request, name, version)
    info = predictor.info
    s = service.settings
    n_max = s.max_batch_files
    limit = n_max * (s.max_file_bytes + 64) + 3 * IMAGE_SIZE**2 * n_max * _FLOAT_JSON_BYTES
    try:
        body = await read_body(request, limit=limit, what="inference request")
    except UploadError as exc:
        raise OIPError(exc.status_code, exc.detail) from None
    header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
    req = _parse_json(header)
    tensor = _single_input(req)
    images = _decode_input(tensor, binary, n_max)
    binary_out = _wants_binary(req)

    try:
        if isinstance(images, np.ndarray):
            results = await asyncio.gather(*(service.classify(x) for x in images))
        else:
            results = await asyncio.gather(*(service.classify_file(b) for b in images))
    except ImageError as exc:
        raise OIPError(exc.status_code, f"input {IMAGE_INPUT!r}: {exc}") from None
    probs = np.asarray([list(r.probabilities.values()) for r in results], dtype=np.float32)

    out: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
    response: dict[str, Any] = {"model_name": info.name, "model_version": info.version}
    if "id" in req:
        response["id"] = req["id"]
    if not binary_out:
        out["data"] = probs.ravel().tolist()
        response["outputs"] = [out]
        return Response(json.dumps(response), media_type="application/json")
    raw = probs.astype("<f4").tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    response["outputs"] = [out]
    head = json.dumps(response).encode()
    return Response(
        head + raw,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise OIPError(
            400,
            f"Inference-Header-Content-Length {header_length!r} is not a length within the "
            f"{len(body)}-byte body",
        )
    n = int(header_length)
    return body[:n], body[n:]


def _parse_json(header: bytes) -> dict[str, Any]:
    try:
        req = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OIPError(400, f"the request is not valid JSON ({exc})") from None
    if not isinstance(req, dict):
        raise OIPError(400, "the request must be a JSON object with an 'inputs' list")
    return req


def _single_input(req: dict[str, Any]) -> dict[str, Any]:
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise OIPError(
            400,
            f"send exactly one input: {INPUT_NAME!r} (FP32 [N, 3, 32, 32], normalised) or "
            f"{IMAGE_INPUT!r} (BYTES [N], encoded image files)",
        )
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise OIPError(400, "'outputs' must be a list of objects")
        unknown = [o.get("name") for o in outputs if o.get("name") != OUTPUT]
        if unknown:
            raise OIPError(400, f"unknown output(s) {unknown}; the model has {OUTPUT!r}")
    return inputs[0]


def _wants_binary(req: dict[str, Any]) -> bool:
    params = req.get("parameters") or {}
    wanted = isinstance(params, dict) and params.get("binary_data_output") is True
    for o in req.get("outputs") or []:
        p = o.get("parameters") or {}
        if isinstance(p, dict) and "binary_data" in p:
            wanted = p["binary_data"] is True
    return wanted


def _decode_input(tensor: dict[str, Any], binary: bytes, n_max: int) -> np.ndarray | list[bytes]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise OIPError(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None and (not isinstance(size, int) or size != len(binary)):
        raise OIPError(
            400,
            f"input {name!r}: binary_data_size {size!r} does not match the {len(binary)} bytes "
            "after the JSON header",
        )
    if size is None and binary:
        raise OIPError(400, f"input {name!r}: binary data sent but no binary_data_size given")
    if size is None and "data" not in tensor:
        raise OIPError(400, f"input {name!r} has no 'data' and no binary_data_size")
    n = shape[0] if shape else 0
    if n < 1:
        raise OIPError(400, f"input {name!r}: the batch dimension must be at least 1, got {shape}")
    if n > n_max:
        raise OIPError(413, f"input {name!r}: {n} images, more than the limit of {n_max}")

    if name == INPUT_NAME:
        want = [n, 3, IMAGE_SIZE, IMAGE_SIZE]
        if datatype != "FP32" or shape != want:
            raise OIPError(
                400,
                f"input {INPUT_NAME!r} must be FP32 {want} (normalised RGB, NCHW); "
                f"got {datatype} {shape}",
            )
        count = n * 3 * IMAGE_SIZE * IMAGE_SIZE
        if size is not None:
            if size != count * 4:
                raise OIPError(
                    400, f"input {name!r}: {size} bytes of binary data, expected {count * 4}"
                )
            flat = np.frombuffer(binary, dtype="<f4").astype(np.float32)
        else:
            flat = _json_floats(tensor["data"], count)
        if not np.isfinite(flat).all():
            raise OIPError(400, f"input {name!r} contains NaN or infinite values")
        return flat.reshape(want)

    if name == IMAGE_INPUT:
        if datatype != "BYTES" or len(shape) != 1:
            raise OIPError(400, f"input {IMAGE_INPUT!r} must be BYTES [N]; got {datatype} {shape}")
        files = _binary_bytes(binary, n) if size is not None else _json_bytes(tensor["data"], n)
        return files
    raise OIPError(
        400, f"unknown input {name!r}; send {INPUT_NAME!r} (FP32) or {IMAGE_INPUT!r} (BYTES)"
    )


def _json_floats(data: Any, count: int) -> np.ndarray:
    try:
        flat = np.asarray(data, dtype=np.float32).ravel()
    except (TypeError, ValueError):
        raise OIPError(400, "input data must be numbers (flat or nested lists)") from None
    if flat.size != count:
        raise OIPError(400, f"input data has {flat.size} values, expected {count}")
    return flat


def _json_bytes(data: Any, n: int) -> list[bytes]:
    flat = data if isinstance(data, list) else [data]
    if len(flat) == 1 and isinstance(flat[0], list):
        flat = flat[0]
    if len(flat) != n or not all(isinstance(x, str) for x in flat):
        raise OIPError(400, f"input {IMAGE_INPUT!r}: expected {n} base64 strings")
    try:
        return [base64.b64decode(x, validate=True) for x in flat]
    except (binascii.Error, ValueError):
        raise OIPError(
            400, f"input {IMAGE_INPUT!r}: JSON elements must be base64-encoded image files"
        ) from None


def _binary_bytes(binary: bytes, n: int) -> list[bytes]:
    """BYTES in the binary extension: each element a 4-byte little-endian length, then data."""
    files: list[bytes] = []
    pos = 0
    while pos < len(binary):
        if pos + 4 > len(binary):
            raise OIPError(400, f"input {IMAGE_INPUT!r}: truncated element length")
        (length,) = struct.unpack_from("<I", binary, pos)
        pos += 4
        if pos + length > len(binary):
            raise OIPError(400, f"input {IMAGE_INPUT!r}: element {len(files)} is truncated")
        files.append(binary[pos : pos + length])
        pos += length
    if len(files) != n:
        raise OIPError(400, f"input {IMAGE_INPUT!r}: {len(files)} elements, shape says {n}")
    return files
