"""The pixel limit holds from the header, before any decode, for every format decode accepts."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from benchmarks.hostile_load import png_bomb  # the 99 MP file, made row by row
from runtime import ImageError, ImageTooLarge
from runtime import images
from runtime.image_header import header_size

W, H = 53, 37
FORMATS = [".jpg", ".png", ".gif", ".bmp", ".tif", ".webp", ".ppm", ".pgm", ".pbm", ".pam", ".pfm", ".sr",
           ".hdr", ".jp2", ".avif"]


def encoded(ext: str, params=()) -> bytes:
    img = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    if ext in (".pgm", ".pbm"):
        img = img[:, :, 0]
    if ext in (".pfm", ".hdr"):
        img = img.astype(np.float32) / 255
    return cv2.imencode(ext, img, list(params))[1].tobytes()


@pytest.fixture()
def no_decoder(monkeypatch):
    """Fails the test if anything reaches OpenCV's decoder."""
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(images.cv2, "imdecode", refuse)


@pytest.mark.parametrize("ext", FORMATS)
def test_every_accepted_format_is_sized_from_its_header(ext):
    data = encoded(ext)
    assert header_size(data)[1:] == (W, H)
    assert images.decode(data, "x", max_pixels=W * H).shape[:2] == (H, W)


@pytest.mark.parametrize("ext", FORMATS)
def test_one_pixel_over_the_limit_is_refused_before_decoding(ext, no_decoder):
    with pytest.raises(ImageTooLarge, match=rf"declares {W}x{H} \({W * H:,} pixels\).*before decoding"):
        images.decode(encoded(ext), "x", max_pixels=W * H - 1)


@pytest.mark.parametrize("params", [(cv2.IMWRITE_WEBP_QUALITY, 101)], ids=["webp-lossless"])
def test_webp_lossless_header(params):
    data = encoded(".webp", params)
    assert bytes(data[12:16]) == b"VP8L" and header_size(data)[1:] == (W, H)


def test_unknown_or_cut_headers_never_reach_the_decoder(no_decoder):
    with pytest.raises(ImageError, match="unknown format; accepted: JPEG, PNG"):
        images.decode(b"GARBAGE" * 10, "junk")
    for ext in (".png", ".tif", ".bmp", ".webp", ".jp2", ".avif"):
        with pytest.raises(ImageError, match="not a decodable image"):
            images.decode(encoded(ext)[:14], "cut" + ext)


def test_a_99_megapixel_png_bomb_costs_milliseconds_and_no_memory(fixed_model):
    """The issue's file: 578 KB declaring 9000x11000, 16-bit. Before, refused only after a
    4.45 s decode that took peak RSS up by 1.1 GB."""
    from runtime import DepthHeatmapper

    bomb = png_bomb()
    assert len(bomb) < 1_000_000
    hm = DepthHeatmapper(fixed_model, max_pixels=20_000_000)

    def hwm() -> int:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before, t = hwm(), time.perf_counter()
    for _ in range(5):
        with pytest.raises(ImageTooLarge, match=r"9000x11000 \(99,000,000 pixels\)"):
            hm.predict(bomb)
    elapsed = (time.perf_counter() - t) / 5
    assert elapsed < 0.05, elapsed
    assert hwm() - before < 16 * 1024 * 1024
