"""The Live page (/live) in headless Chromium with a fake camera fed from a generated clip
(``--use-file-for-fake-video-capture=clip.y4m``): heatmap frames arrive over /v1/stream and
change with the clip. No camera device is involved; the fake one plays the clip in a loop."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from serve import ServeSettings

from .test_serve_browser import chromium
from .test_serve_stream import stream_app

KEY = "live-page-key-0123456789"


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Frames (BGR, even sizes) as a YUV4MPEG2 clip: planar I420 after each FRAME line."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for bgr in frames:
            out.write(b"FRAME\n" + cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def clip_frames(n: int = 20, size=(160, 120)) -> list[np.ndarray]:
    """A bright square sweeping across a gradient, then back: every frame differs."""
    w, h = size
    out = []
    for k in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = np.linspace(20, 180, w, dtype=np.uint8)[None, :, None]
        x = int(5 + (w - 55) * (k if k < n // 2 else n - k) / (n // 2))
        img[25:95, x:x + 50] = (60, 230, 250)
        out.append(img)
    return out


def chromium_with_fake_camera(clip: Path):
    return chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-video-capture={clip}", "--autoplay-policy=no-user-gesture-required")


def heatmap_pixels(browser) -> np.ndarray:
    """The heatmap <img> as shown now, read back through a canvas (same-origin blob URL)."""
    url = browser.execute_script("""
        const img = document.getElementById('heatmap');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0);
        return c.toDataURL('image/png');""")
    data = base64.b64decode(url.split(",", 1)[1])
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img.astype(np.int16)


@pytest.mark.parametrize("key", [None, KEY], ids=["open", "with-key"])
def test_live_page_streams_heatmaps_that_follow_the_camera(fixed_model, tmp_path, key):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = write_y4m(tmp_path / "clip.y4m", clip_frames())
    settings = ServeSettings(model=fixed_model, workers=1, quiet=True, api_keys=(key,) if key else ())
    with stream_app(settings) as (ws_base, svc):
        base = ws_base.replace("ws://", "http://")
        assert httpx.get(base + "/live").status_code == 200  # the page itself is open; it asks for the key
        browser = chromium_with_fake_camera(clip)
        try:
            browser.get(base + "/live")
            if key:
                form = browser.find_element(By.ID, "key-form")
                WebDriverWait(browser, 20).until(lambda b: form.is_displayed())
                browser.find_element(By.ID, "api-key").send_keys(key + "\n")
                WebDriverWait(browser, 10).until(lambda b: not form.is_displayed())
                assert browser.execute_script("return sessionStorage.getItem('midas-onnx-key')") == key
                assert browser.execute_script("return localStorage.length") == 0 and browser.get_cookies() == []
            frames = lambda b: int(b.execute_script("return document.body.dataset.frames || 0"))  # noqa: E731
            WebDriverWait(browser, 60).until(lambda b: frames(b) >= 3, "no heatmaps arrived")
            size = browser.execute_script(
                "const i = document.getElementById('heatmap'); return [i.naturalWidth, i.naturalHeight]")
            assert size == [160, 120]
            first, count = heatmap_pixels(browser), frames(browser)
            WebDriverWait(browser, 60).until(lambda b: frames(b) >= count + 5)
            # the clip moves: some later heatmap must differ clearly from the first one read
            diffs = []
            for _ in range(6):
                diffs.append(float(np.abs(heatmap_pixels(browser) - first).mean()))
                if diffs[-1] > 3:
                    break
                count = frames(browser)
                WebDriverWait(browser, 30).until(lambda b: frames(b) > count)
            assert max(diffs) > 3, diffs
            fps = float(browser.find_element(By.ID, "fps").text)
            latency = browser.find_element(By.ID, "latency").text
            assert fps > 0 and latency.isdigit(), (fps, latency)
            assert browser.find_element(By.ID, "status").text == "live"
            shot = tmp_path / "live_page.png"
            assert browser.save_screenshot(str(shot))
        finally:
            browser.quit()
