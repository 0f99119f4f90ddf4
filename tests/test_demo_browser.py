"""The demo page in a real browser: `python -m modeling_pat.demo --model random:san-tiny` driven by Playwright.

Playwright drives the system's Chromium (no browser download). `.ci/run` installs Chromium from the system's package
manager when it runs as CI (CI=true, root); elsewhere this test uses a Chromium already on the machine (or the one
named by PAT_CHROMIUM) and skips, saying why, when there is none. Under CI a missing browser fails the test instead.
A screenshot of every state goes to the test's temporary folder.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).parent / "fixtures" / "samples" / "chelsea.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIME_LIMIT_S = 120


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    """Skip where the browser tooling is simply not installed; under CI that is a broken set-up, so fail."""
    if _in_ci():
        pytest.fail(f"{reason} (CI: .ci/run should have installed it)")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    """The browser to drive; checked before the demo starts, so that a skip costs nothing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    named = os.environ.get("PAT_CHROMIUM")
    found = named or next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    if not found:
        _unavailable("no Chromium on this machine (install it, e.g. `apt-get install chromium`, or set PAT_CHROMIUM)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture
def demo_url(tmp_path, chromium):
    """(URL, start time) of the demo with a tiny random model on a free localhost port, for one test."""
    started = time.monotonic()
    port = _free_port()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        HF_HUB_OFFLINE="1",
    )
    log = tmp_path / "demo.log"
    command = [sys.executable, "-m", "modeling_pat.demo", "--model", "random:san-tiny", "--device", "cpu"]
    command += ["--samples", str(SAMPLE.parent)]
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, process, log)
        yield url, started
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.timeout(4 * TIME_LIMIT_S)  # a hung browser or server fails the test instead of the whole run
def test_demo_in_browser(chromium, demo_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, started = demo_url
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        # as root (CI) Chromium needs --no-sandbox; containers often have a tiny /dev/shm
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(60_000)
        page.goto(url)
        expect(page.locator("#run")).to_be_visible()
        page.screenshot(path=shots / "1_loaded.png")

        # upload a sample, name three classes, run: the overlay and the table of classes come back
        page.locator("#image input[type=file]").set_input_files(SAMPLE)
        expect(page.locator("#image img")).to_be_visible()
        page.locator("#labels textarea").fill("cat, sofa, floor")
        page.screenshot(path=shots / "2_inputs.png")
        page.locator("#run").click()
        expect(page.locator("#status")).to_contain_text("Found")
        expect(page.locator("#overlay img")).to_be_visible()
        legend = page.locator("#legend")
        expect(legend).to_contain_text("pixel share")
        expect(legend).to_contain_text(re.compile(r"\d%"))  # a class's pixel share
        rows = legend.inner_text()
        assert any(name in rows for name in ("cat", "sofa", "floor")), rows
        # the two downloads are served: an 8-bit label PNG and the JSON summary naming the classes
        label_link = page.locator("#label-file a[href$='chelsea_labels.png']")
        json_link = page.locator("#json-file a[href$='chelsea.json']")
        expect(label_link).to_have_count(1)
        expect(json_link).to_have_count(1)
        assert _download(label_link.get_attribute("href")).startswith(b"\x89PNG\r\n\x1a\n")
        assert json.loads(_download(json_link.get_attribute("href")))["labels"] == ["cat", "sofa", "floor"]
        page.screenshot(path=shots / "3_segmented.png", full_page=True)

        # click a point of the photo (the overlay's left part): the best proposal's label and mask
        overlay = page.locator("#overlay img")
        box = overlay.bounding_box()
        overlay.click(position={"x": box["width"] * 0.2, "y": box["height"] * 0.5})
        answer = page.locator("#region-answer")
        expect(answer).to_contain_text("At (")
        assert any(name in answer.inner_text() for name in ("cat", "sofa", "floor", "No mask proposal"))
        expect(page.locator("#region-image img")).to_be_visible()
        page.screenshot(path=shots / "4_region.png", full_page=True)

        # a duplicate class name: a message in the page, no stack trace
        page.locator("#labels textarea").fill("cat, sofa, Cat")
        page.locator("#run").click()
        status = page.locator("#status")
        expect(status).to_contain_text("names the same class twice")
        expect(page.locator("#region-answer")).not_to_contain_text("At (")  # the last run's answer is cleared
        expect(page.locator("#overlay img")).to_have_count(0)
        assert "Traceback" not in page.content()
        page.screenshot(path=shots / "5_duplicate_label.png", full_page=True)
        browser.close()
    assert sorted(path.name for path in shots.iterdir()) == [
        "1_loaded.png", "2_inputs.png", "3_segmented.png", "4_region.png", "5_duplicate_label.png"
    ]
    assert time.monotonic() - started < TIME_LIMIT_S  # server start included
