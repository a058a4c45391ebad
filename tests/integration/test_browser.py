"""The web page in headless Chromium with a fake camera: WHIP out, WHEP back, controls through the HTTP API."""

from __future__ import annotations

import shutil

from playwright.sync_api import sync_playwright

from .conftest import Daemon

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--headless=new", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection",
]


def test_page_streams_the_camera_and_plays_the_generated_video(daemon: Daemon) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(daemon.base + "/")
            assert page.title() == "streamd"
            page.click("#start")
            page.wait_for_function("window.streamdStats.state === 'live' || window.streamdStats.error", timeout=60_000)
            assert page.evaluate("window.streamdStats.error") is None, page.text_content("#message")
            page.wait_for_function("window.streamdStats.framesReceived > 15", timeout=60_000)
            stream = page.evaluate("window.streamdStats.stream")
            assert stream and stream.startswith("s-")
            page.fill("#prompt", "a lighthouse at dusk")
            page.fill("#guidance", "2")
            page.click("#apply")
            page.wait_for_function("document.getElementById('message').textContent.includes('applied')",
                                   timeout=20_000)
            page.wait_for_function("window.streamdStats.latency !== null", timeout=20_000)
            assert float(page.text_content("#frames")) > 15
            assert daemon.metric("streamd_streams_live") == 1
            page.click("#stop")
            page.wait_for_function("window.streamdStats.state === 'idle'", timeout=10_000)
        finally:
            browser.close()
