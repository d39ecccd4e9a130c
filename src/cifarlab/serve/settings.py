"""Serving settings, from keyword arguments, `CIFARLAB_*` environment variables or defaults.

    CIFARLAB_PORT=9000 CIFARLAB_MAX_WAIT_MS=1 cifarlab serve

Every field can be set with the upper-cased name and the `CIFARLAB_` prefix, for example
`CIFARLAB_MODEL_PATH`, `CIFARLAB_MAX_FILE_BYTES` or `CIFARLAB_ORT_THREADS`; the `cifarlab
serve` flags override the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cifarlab.serve.imaging import DEFAULT_MAX_PIXELS
from cifarlab.serve.predictor import BUNDLED_MODEL


class Settings(BaseSettings):
    """How the API listens, which model it serves and how much input it accepts."""

    model_config = SettingsConfigDict(
        env_prefix="CIFARLAB_", frozen=True, extra="forbid", protected_namespaces=()
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model_path: Path = Field(
        default=BUNDLED_MODEL, description="ONNX file; metadata is read from it"
    )
    # Per uploaded file, counted while the request body streams in.
    max_file_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # Declared width x height, checked from the image header before any pixel is decoded.
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    max_batch_files: int = Field(default=32, ge=1, description="files per /predict/batch request")
    # Dynamic batching: at most this many images per ONNX Runtime call ...
    max_batch_size: int = Field(default=32, ge=1)
    # ... and at most this long (milliseconds) spent waiting for more requests to join a
    # batch, only while more are arriving; a lone request never waits. 0 = never wait.
    max_wait_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    # Longest time a client may take to send its upload (slow senders get 408).
    upload_timeout_s: float = Field(default=30.0, gt=0)
    # After refusing a request early (413, 422, ...), read and drop at most this much more
    # of its body, for at most this long, so that clients which send the whole body before
    # reading (urllib, requests) read the error instead of a connection reset. 0 = never.
    drain_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    drain_timeout_s: float = Field(default=5.0, ge=0)
    # ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose (one per core).
    ort_threads: int = Field(default=0, ge=0)
