"""Heatmap and overlay files: the indexed PNG reads back as the 3-channel heatmap did, the
other formats are what their suffix says, and the block-wise levels equal the whole-map ones."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from runtime.outputs import png, postprocess
from runtime.outputs.render import (IMAGE_FORMATS, PNG_PARAMS, encode_heatmap, encode_png, output_suffixes,
                             render)

from .conftest import photos


def read_back(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def old_heatmap_png(depth: np.ndarray, colormap: int) -> bytes:
    """The heatmap as it was written before: a 3-channel BGR PNG of the whole-map levels."""
    lo, hi = float(depth.min()), float(depth.max())
    levels = np.clip((depth - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8) if hi > lo \
        else np.zeros(depth.shape, np.uint8)
    return encode_png(cv2.applyColorMap(levels, colormap), PNG_PARAMS["heatmap"])


@pytest.fixture(scope="module")
def depths() -> dict[str, np.ndarray]:
    """Depth-like maps from real photos: a smooth bicubic upscale of each photo's blurred
    luminance (what a network's output upscaled to the photo looks like), plus the
    luminance itself at full detail (every level used, sharp edges)."""
    out = {}
    for name, rgb in photos().items():
        gray = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(gray.astype(np.float32) / 255, (48, 36), interpolation=cv2.INTER_AREA)
        out[f"{name}_smooth"] = cv2.resize(small, (gray.shape[1] * 2, gray.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
        out[f"{name}_sharp"] = gray.astype(np.float32) * 0.37 + 5.0
    return out


@pytest.mark.parametrize("colormap", sorted(postprocess.COLORMAPS))
def test_indexed_png_reads_back_as_the_old_heatmap_for_every_colormap(depths, colormap):
    cid = postprocess.COLORMAPS[colormap]
    for name, depth in depths.items():
        data = encode_heatmap(depth, cid)
        assert data[25] == png.COLOR_TYPE_PALETTE  # IHDR colour type: indexed, not 3-channel
        assert np.array_equal(read_back(data), read_back(old_heatmap_png(depth, cid))), name


def test_flat_map_reads_back_as_one_colour():
    flat = np.full((31, 47), 2.5, np.float32)
    data = encode_heatmap(flat, cv2.COLORMAP_INFERNO)
    got = read_back(data)
    assert np.array_equal(got, read_back(old_heatmap_png(flat, cv2.COLORMAP_INFERNO)))
    assert (got == postprocess.palette(cv2.COLORMAP_INFERNO)[0, 0]).all()


def test_png_chunks_are_valid(depths):
    """Every chunk's CRC checks, the IDAT inflates to height rows of 1 + width bytes, and
    the rows undo the Up filter into the levels (what strict PNG readers check)."""
    depth = depths["coffee_smooth"]
    data = encode_heatmap(depth, cv2.COLORMAP_TURBO)
    assert data[:8] == png.SIGNATURE
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + n
    assert list(chunks) == [b"IHDR", b"PLTE", b"IDAT", b"IEND"]
    h, w = depth.shape
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, w + 1)
    assert (rows[:, 0] == png.FILTER_UP).all()
    assert np.array_equal(np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8), postprocess.to_uint8(depth))


def test_blocked_levels_equal_whole_map_levels(depths, monkeypatch):
    """Blocks of any height give the same levels and 16-bit values as one whole-map pass."""
    depth = depths["astronaut_smooth"]
    lo, hi = float(depth.min()), float(depth.max())
    want8 = np.clip((depth - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)
    want16 = np.clip((depth - lo) / (hi - lo) * 65535 + 0.5, 0, 65535).astype(np.uint16)
    for pixels in (1, depth.shape[1] * 7 + 3, 1 << 18, 1 << 24):
        monkeypatch.setattr(postprocess, "_BLOCK_PIXELS", pixels)
        assert np.array_equal(np.concatenate([b.copy() for b in postprocess.level_blocks(depth)]), want8)
        assert np.array_equal(postprocess.depth_png16(depth), want16)


def test_steady_range_levels_clip_like_colorize(depths):
    """A video's carried range (narrower than the frame) clips; the PNG matches colorize."""
    depth = depths["rocket_smooth"]
    lo, hi = np.percentile(depth, [20, 80])
    data = encode_heatmap(depth, cv2.COLORMAP_MAGMA, value_range=(float(lo), float(hi)))
    assert np.array_equal(read_back(data), postprocess.colorize(depth, cv2.COLORMAP_MAGMA, (float(lo), float(hi))))


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_lossy_formats_write_what_their_suffix_says(depths, fmt):
    depth = depths["chelsea_smooth"]
    data = encode_heatmap(depth, cv2.COLORMAP_INFERNO, fmt)
    magic = {"jpg": lambda b: b[:3] == b"\xff\xd8\xff", "webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"}
    assert magic[fmt](data)
    assert output_suffixes(None, True, fmt) == {"heatmap": f".heatmap.{fmt}", "overlay": f".overlay.{fmt}"}
    got = read_back(data).astype(np.int16)
    want = postprocess.colorize(depth, cv2.COLORMAP_INFERNO).astype(np.int16)
    assert got.shape == want.shape and np.abs(got - want).mean() < 3.0  # quality 90: close, not equal


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="choose from png, jpg, webp"):
        output_suffixes(None, False, "gif")
    assert set(IMAGE_FORMATS) == {"png", "jpg", "webp"}


class _Result:
    """The parts of a DepthResult that ``render`` reads."""

    def __init__(self, depth, image, colormap):
        self.depth, self.image, self.colormap = depth, image, colormap

    def overlay(self, alpha=postprocess.DEFAULT_ALPHA):
        return postprocess.overlay(self.image, postprocess.colorize(self.depth, self.colormap), alpha)

    def depth_png16(self):
        return postprocess.depth_png16(self.depth)


def test_render_keeps_overlay_and_16_bit_depth(depths):
    depth = depths["coffee_smooth"]
    image = cv2.resize(photos()["coffee"][:, :, ::-1], depth.shape[::-1])
    result = _Result(depth, image, cv2.COLORMAP_INFERNO)
    overlay = cv2.imdecode(np.frombuffer(render(result, "overlay"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(overlay, result.overlay())
    assert render(result, "overlay", "jpg")[:3] == b"\xff\xd8\xff"
    depth16 = cv2.imdecode(np.frombuffer(render(result, "depth"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert depth16.dtype == np.uint16 and np.array_equal(depth16, postprocess.depth_png16(depth))


def test_large_photo_heatmap_file_equals_the_old_path(tmp_path, dynamic_model):
    """A 4032x3024 JPEG through predict and render: the PNG reads back as the whole-map
    levels of the same depth through the colormap, encoded as before."""
    from benchmarks.large_photo import write_photo
    from runtime import DepthHeatmapper

    photo = tmp_path / "phone.jpg"
    h, w = write_photo(photo, 12.2)
    hm = DepthHeatmapper(dynamic_model, threads=2, colormap="turbo")
    result = hm.predict(photo)
    assert result.depth.shape == (h, w)
    got = read_back(render(result, "heatmap"))
    assert np.array_equal(got, read_back(old_heatmap_png(result.depth, cv2.COLORMAP_TURBO)))
    assert np.array_equal(got, result.heatmap)


def test_large_photo_heatmap_file_needs_no_full_size_bgr(tmp_path, dynamic_model):
    """Peak memory of predict + the heatmap PNG on a 20 MP photo stays within the decoded
    photo, the float depth, 1 byte a pixel for the file and a constant: the BGR heatmap
    (3 bytes a pixel) is never made."""
    from benchmarks.large_photo import FILE_BYTES_PER_PIXEL, measure, write_photo

    photo = tmp_path / "large.jpg"
    h, w = write_photo(photo, 20.0)
    result = measure(dynamic_model, photo, threads=2, output="file")
    assert result["shape"] == [h, w]
    assert result["peak_above_baseline_bytes"] <= result["bound_bytes"], result
    # tighter than the bound's constant: a BGR heatmap (3 bytes a pixel, 57 MB) cannot hide
    assert result["peak_above_baseline_bytes"] <= h * w * FILE_BYTES_PER_PIXEL + 16 * 2**20, result
