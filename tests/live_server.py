"""Run the API on a real socket in a background thread, for clients that need one.

    with live_server(Settings(model_path=path)) as url: urllib.request.urlopen(url + "/health")

TestClient talks ASGI directly; `tritonclient`, urllib's raw socket behaviour and load tools
need uvicorn itself, so these tests start it on a free local port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from cifarlab.serve.app import create_app
from cifarlab.serve.settings import Settings


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start within 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
