"""Fuzz the API against its own OpenAPI schema with schemathesis (bounded, a few seconds).

    .venv/bin/pytest tests/test_serve_schema.py

Every operation in `/openapi.json` gets generated requests, schema-valid and not, sent to a
real server running the tiny model; the checks are schemathesis' full set: no 5xx, answers
that match the documented status codes, content types and response schemas, no schema-valid
request rejected, no invalid one accepted. The schema says an upload is an image
(`encoding.contentType` image/png, ...), so schema-valid uploads are generated as real PNG and
JPEG files of random sizes and colours (registered below); schemathesis' own random bytes are
used for the negative cases.

The Open Inference Protocol `infer` operations are excluded from "schema-valid request
accepted" only: whether a tensor is acceptable depends on its shape matching its data length
and datatype, which JSON Schema cannot express; `tests/test_serve_oip.py` sends valid tensors
with the official client. Every other check runs on them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import positive_data_acceptance

from cifarlab.serve.settings import Settings
from live_server import live_server
from tiny_onnx import write_tiny_model


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(1, 96))
    height = draw(st.integers(1, 96))
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return buf.getvalue()


for media_type in ("image/png", "image/jpeg"):
    schemathesis.openapi.media_type(media_type, image_files())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")
    with live_server(Settings(model_path=model, max_batch_files=4)) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(server + "/openapi.json")


def cases() -> list[tuple[str, schemathesis.GenerationMode]]:
    """Every documented operation with valid data; those with a body also with invalid data.

    (An operation whose only inputs are free-form path strings has no invalid requests.)
    """
    from fastapi.testclient import TestClient

    from cifarlab.serve.app import create_app

    paths = TestClient(create_app(Settings())).get("/openapi.json").json()["paths"]
    out = []
    for path, ops in paths.items():
        for method, spec in ops.items():
            out.append((f"{method.upper()} {path}", schemathesis.GenerationMode.POSITIVE))
            if "requestBody" in spec:
                out.append((f"{method.upper()} {path}", schemathesis.GenerationMode.NEGATIVE))
    return out


# schemathesis' pytest plugin does not load under pytest 9, so each operation gets a plain
# Hypothesis test built from its strategy.
@pytest.mark.parametrize(("operation", "mode"), cases(), ids=lambda v: getattr(v, "value", v))
def test_api_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema,
    server: str,
    operation: str,
    mode: schemathesis.GenerationMode,
) -> None:
    method, path = operation.split(" ", 1)
    (op,) = [
        r.ok()
        for r in api_schema.get_all_operations()
        if r.ok().method.upper() == method and r.ok().path == path
    ]
    excluded = [positive_data_acceptance] if path.endswith("/infer") else []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,  # the same examples every run: a failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=server, excluded_checks=excluded)

    check()


def test_the_schema_states_the_upload_limits(server: str) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(server + "/openapi.json") as r:
        paths = json.loads(r.read())["paths"]
    body = paths["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    files = body["schema"]["properties"]["files"]
    assert (files["minItems"], files["maxItems"]) == (1, 4)
    single = paths["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert single["schema"]["properties"]["file"]["minLength"] == 1
