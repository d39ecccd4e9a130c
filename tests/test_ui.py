"""The `/ui` page in a real browser: upload images, read the predicted class, compare with the API.

    .venv/bin/pytest tests/test_ui.py

Runs the app under uvicorn on a free 127.0.0.1 port in a thread and drives Debian's Chromium
headless through Playwright (never `playwright install`, which downloads a browser). Without
`/usr/bin/chromium` the tests skip with the reason, except in CI, where they fail. The
screenshot goes to the test's temporary folder, never into the repository.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from cifarlab.serve.app import create_app
from cifarlab.serve.settings import Settings
from tiny_onnx import write_tiny_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _require_browser() -> None:
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} not found (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app under uvicorn, serving a tiny generated model; yields its base URL."""
    _require_browser()
    model = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")
    port = _free_port()
    config = uvicorn.Config(
        create_app(Settings(model_path=model)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        srv.should_exit = True
        pytest.fail(f"uvicorn did not become healthy on {base} within 30 s")
    yield base
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, server: str) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})  # type: ignore[attr-defined]
    pg = context.new_page()
    pg.goto(f"{server}/ui")
    yield pg
    context.close()


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> Path:
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _api_class(server: str, path: Path) -> str:
    response = httpx.post(
        f"{server}/predict", files={"file": (path.name, path.read_bytes())}, timeout=30
    )
    assert response.status_code == 200, response.text
    return str(response.json()["predicted_class"])


def test_ui_upload_shows_the_same_class_as_the_api(page, server: str, tmp_path: Path) -> None:
    photo = _image(tmp_path / "red-car.jpg", (210, 40, 40))
    expected = _api_class(server, photo)

    page.set_input_files("#file", str(photo))
    card = page.locator("[data-testid=prediction][data-class]")
    card.wait_for(timeout=15_000)

    assert card.get_attribute("data-class") == expected
    assert (page.locator("[data-testid=prediction] .top").text_content() or "").startswith(expected)
    # One bar per class, the predicted one highlighted and first.
    bars = card.locator(".bars li")
    assert bars.count() == 10
    assert bars.first.get_attribute("class") == "best"
    assert expected in (bars.first.get_attribute("aria-label") or "")
    assert page.locator("#model").inner_text().startswith("Model: tiny-test")
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as img:  # a real rendering of the page, not an empty file
        assert img.format == "PNG" and img.width >= 320 and img.height >= 200
        assert len(set(img.convert("L").getdata())) > 10


def test_ui_several_files_use_the_batch_endpoint(page, server: str, tmp_path: Path) -> None:
    files = [
        _image(tmp_path / "a.png", (220, 30, 30)),
        _image(tmp_path / "b.png", (30, 200, 40)),
        _image(tmp_path / "c.png", (30, 40, 220)),
    ]
    with page.expect_request(lambda r: r.url.endswith("/predict/batch")):
        page.set_input_files("#file", [str(f) for f in files])
    page.locator("#status").filter(has_text="Classified 3 of 3").wait_for(timeout=15_000)

    # The newest selection is on top, in the order chosen.
    cards = page.locator("[data-testid=prediction]")
    assert cards.count() == 3
    assert [cards.nth(i).locator(".name").inner_text() for i in range(3)] == [
        "a.png",
        "b.png",
        "c.png",
    ]
    shown = [cards.nth(i).get_attribute("data-class") for i in range(3)]
    assert shown == [_api_class(server, f) for f in files]
    assert len(set(shown)) == 3


def test_ui_shows_api_errors_clearly(page, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is not an image")

    page.set_input_files("#file", str(bogus))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=15_000)

    assert "422" in error.inner_text()
    assert "not a recognised image" in error.inner_text()
    assert page.locator("[data-testid=prediction] .err").inner_text() == error.inner_text()
    assert page.locator("[data-testid=prediction]").get_attribute("data-class") is None


def test_ui_bad_file_in_a_batch_does_not_block_the_good_ones(
    page, server: str, tmp_path: Path
) -> None:
    bogus = tmp_path / "broken.jpg"
    bogus.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = _image(tmp_path / "sea.png", (30, 40, 220))

    page.set_input_files("#file", [str(bogus), str(good)])
    page.locator("#status").filter(has_text="Classified 1 of 2").wait_for(timeout=15_000)

    cards = page.locator("[data-testid=prediction]")
    assert cards.nth(0).get_attribute("data-class") is None
    assert "broken.jpg" in page.locator("#error").inner_text()
    assert "422" in cards.nth(0).locator(".err").inner_text()
    assert cards.nth(1).get_attribute("data-class") == _api_class(server, good)


def test_ui_heatmap_toggle_shows_the_class_activation_map(browser, tmp_path: Path) -> None:
    from live_server import live_server

    model = write_tiny_model(tmp_path / "cam.onnx", cam=True)
    with live_server(Settings(model_path=model)) as url:
        context = browser.new_context(viewport={"width": 1100, "height": 800})
        page = context.new_page()
        page.goto(f"{url}/ui")
        heat = page.locator("[data-testid=heatmap]")
        preview = page.locator("[data-testid=prediction] img.preview")

        page.check("#explain")
        page.set_input_files("#file", str(_image(tmp_path / "blue.png", (30, 30, 220))))
        page.locator("[data-testid=prediction][data-class]").wait_for(timeout=15_000)
        assert heat.count() == 1 and heat.is_visible() and not preview.is_visible()
        src = heat.get_attribute("src") or ""
        assert src.startswith("data:image/png;base64,")
        assert (
            page.evaluate("() => document.querySelector('[data-testid=heatmap]').naturalWidth")
            == 128
        )
        page.screenshot(path=str(tmp_path / "heatmap.png"), full_page=True)

        page.uncheck("#explain")  # the toggle hides the map and shows the photo again
        assert not heat.is_visible() and preview.is_visible()
        page.check("#explain")
        assert heat.is_visible()
        context.close()
