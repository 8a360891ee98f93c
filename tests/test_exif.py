"""EXIF camera tags for point-cloud intrinsics: read from real files Pillow writes (JPEG, PNG,
WebP, TIFF; both byte orders), the intrinsics they give, their place before ``--fov`` in
``heatmap --save-ply`` (named in the PLY header), and hostile EXIF (cut short anywhere,
offsets that loop or point outside, huge counts, endless segments): bounded work, never an
exception."""

from __future__ import annotations

import io
import math
import struct

import cv2
import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from runtime.inputs import exif
from runtime.inputs.exif import MAX_STEPS, Camera, camera
from runtime.outputs.pointcloud import Intrinsics

from .test_engine import cli

EXIF_IFD = 0x8769


def exif_bytes(orientation: int | None = None, **tags) -> bytes:
    """An APP1-style EXIF block (``Exif\\0\\0`` + big-endian TIFF) made by Pillow. ``tags``:
    focal_length (mm), focal_35mm, plane_x / plane_y (pixels per unit), unit, width, height."""
    data = Image.Exif()
    if orientation is not None:
        data[0x0112] = orientation
    ifd = data.get_ifd(EXIF_IFD)
    codes = {"focal_length": 0x920A, "focal_35mm": 0xA405, "plane_x": 0xA20E, "plane_y": 0xA20F, "unit": 0xA210,
             "width": 0xA002, "height": 0xA003}
    for name, value in tags.items():
        ifd[codes[name]] = IFDRational(value) if isinstance(value, float) else value
    return data.tobytes()


def with_exif(jpeg: bytes, orientation: int | None = None, **tags) -> bytes:
    """``jpeg`` with an APP1 EXIF segment right after its start marker, as cameras write it."""
    block = exif_bytes(orientation, **tags)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block + jpeg[2:]


def small_image(width: int = 80, height: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))


TAGS = {"focal_length": 4.2, "focal_35mm": 26, "plane_x": 571.5, "plane_y": 600.0, "unit": 4, "width": 80,
        "height": 60}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_real_files_in_every_container(fmt):
    """Every container Pillow writes EXIF into; the tags read here equal Pillow's own reading."""
    buf = io.BytesIO()
    small_image().save(buf, fmt, exif=exif_bytes(orientation=6, **TAGS))
    got = camera(buf.getvalue())
    assert got == Camera(focal_length_mm=4.2, focal_35mm=26.0, focal_plane_x=571.5, focal_plane_y=600.0,
                         focal_plane_unit_mm=1.0, pixel_width=80, pixel_height=60, orientation=6)
    with Image.open(io.BytesIO(buf.getvalue())) as image:  # a well-kept reader says the same
        ifd = image.getexif().get_ifd(EXIF_IFD) or image.getexif()
        assert float(ifd[0x920A]) == got.focal_length_mm and ifd[0xA405] == got.focal_35mm
        assert image.getexif()[0x0112] == got.orientation
    block = exif.exif_block(buf.getvalue())
    assert block[:2] == (b"II" if fmt == "TIFF" else b"MM")  # both byte orders are read


def test_intrinsics_from_the_35mm_equivalent_hold_for_any_size():
    """26 mm equivalent: the diagonal angle of view of 35 mm film (36x24) at 26 mm, whatever
    the photo's pixel count or aspect."""
    film = 2 * math.degrees(math.atan(math.hypot(36, 24) / 2 / 26))
    for w, h in [(400, 300), (4032, 3024), (300, 400), (1920, 1080)]:
        cam = Intrinsics.from_exif(Camera(focal_35mm=26.0), w, h)
        assert cam.fx == cam.fy and (cam.cx, cam.cy) == ((w - 1) / 2, (h - 1) / 2)
        assert 2 * math.degrees(math.atan(math.hypot(w, h) / 2 / cam.fx)) == pytest.approx(film)
        assert "FocalLengthIn35mmFilm 26 mm" in cam.source


def test_intrinsics_from_the_focal_plane_scaled_and_turned():
    """Real focal length x sensor pixels per mm, for the EXIF pixel size; a photo resized to
    half has half the focal length in pixels, and one turned upright swaps x and y."""
    cam = Camera(focal_length_mm=4.2, focal_plane_x=500.0, focal_plane_y=600.0, focal_plane_unit_mm=1.0,
                 pixel_width=4000, pixel_height=3000)
    full = Intrinsics.from_exif(cam, 4000, 3000)
    assert (full.fx, full.fy) == pytest.approx((2100.0, 2520.0))
    half = Intrinsics.from_exif(cam, 2000, 1500)
    assert (half.fx, half.fy) == pytest.approx((1050.0, 1260.0))
    upright = Intrinsics.from_exif(cam, 3000, 4000)  # orientation 6: decoded 3000 wide
    assert (upright.fx, upright.fy) == pytest.approx((2520.0, 2100.0))
    inches = Intrinsics.from_exif(Camera(focal_length_mm=50.0, focal_plane_x=2540.0, focal_plane_y=2540.0,
                                         focal_plane_unit_mm=25.4), 6000, 4000)  # 100 pixels per mm
    assert inches.fx == pytest.approx(5000.0)
    # unbelievable: under a degree across (a microscope, or a broken tag)
    assert Intrinsics.from_exif(Camera(focal_length_mm=4.2, focal_plane_x=1e6, focal_plane_y=1e6,
                                       focal_plane_unit_mm=1.0), 400, 300) is None
    assert Intrinsics.from_exif(Camera(orientation=6), 400, 300) is None


def ply_header(path) -> str:
    from plyfile import PlyData

    return "\n".join(PlyData.read(str(path)).comments)


def test_heatmap_point_clouds_take_exif_before_fov(tmp_path, fixed_model, photo_set):
    """``--intrinsics`` wins, then the photo's EXIF, then ``--fov`` (default 60); the PLY
    header says which. A phone photo stored 80x60 and turned upright by its orientation tag
    gets its focal lengths turned with it."""
    plain = cv2.imencode(".jpg", cv2.resize(photo_set["coffee"][:, :, ::-1], (80, 60)))[1].tobytes()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "phone.jpg").write_bytes(with_exif(plain, orientation=6, focal_length=4.2, plane_x=500.0, plane_y=600.0,
                                                 unit=4, width=80, height=60))
    (folder / "plain.jpg").write_bytes(plain)
    (folder / "absurd.jpg").write_bytes(with_exif(plain, focal_length=4.2, plane_x=1e6, plane_y=1e6, unit=4))
    assert cv2.imread(str(folder / "phone.jpg")).shape[:2] == (80, 60)  # OpenCV turned it upright
    out = tmp_path / "out"
    r = cli("heatmap", folder, "-o", out, "--model", fixed_model, "--save-ply", "--ply-step", "8", "--fov", "70")
    assert r.exit_code == 0, r.output
    phone = ply_header(out / "phone.jpg.ply")
    assert "intrinsics fx=2520 fy=2100 cx=29.5 cy=39.5 step=8" in phone  # x was the sensor's y
    assert "intrinsics source: EXIF FocalLength 4.2 mm with FocalPlaneX/YResolution 500/600 pixels per 1 mm" in phone
    assert "intrinsics source: horizontal field of view 70 degrees (--fov: no usable focal length in the photo's EXIF)" \
        in ply_header(out / "plain.jpg.ply")
    assert "(--fov: no usable focal length" in ply_header(out / "absurd.jpg.ply")
    given = cli("heatmap", folder / "phone.jpg", "-o", tmp_path / "given", "--model", fixed_model, "--save-ply",
                "--intrinsics", "100,110,30,40")
    assert given.exit_code == 0, given.output
    header = ply_header(tmp_path / "given" / "phone.jpg.ply")
    assert "intrinsics fx=100 fy=110 cx=30 cy=40" in header and "intrinsics source: --intrinsics" in header
    default = cli("heatmap", folder / "plain.jpg", "-o", tmp_path / "default", "--model", fixed_model, "--save-ply")
    assert "field of view 60 degrees (the default: no usable" in ply_header(tmp_path / "default" / "plain.jpg.ply")
    assert default.exit_code == 0


# -- hostile EXIF ---------------------------------------------------------------------------------
def tiff(entries: list[tuple[int, int, int, bytes]], order: str = ">", first: int = 8, extra: bytes = b"",
         count: int | None = None) -> bytes:
    """A TIFF block: header, one IFD at ``first`` of (tag, type, count, 4 value bytes), then ``extra``."""
    head = (b"MM" if order == ">" else b"II") + struct.pack(order + "HI", 42, first)
    ifd = struct.pack(order + "H", len(entries) if count is None else count)
    ifd += b"".join(struct.pack(order + "HHI", t, k, c) + v for t, k, c, v in entries) + b"\0\0\0\0"
    return head + b"\0" * (first - 8) + ifd + extra


def app1(block: bytes) -> bytes:
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(block) + 8) + b"Exif\0\0" + block + b"\xff\xd9"


def short(value: int) -> bytes:
    return struct.pack(">HH", value, 0)


def test_cut_short_anywhere_is_never_an_error(photo_set):
    data = with_exif(cv2.imencode(".jpg", photo_set["coffee"][:40, :40])[1].tobytes(), orientation=3, **TAGS)
    whole = camera(data)
    assert whole.focal_35mm == 26.0
    for end in range(len(data)):
        got = camera(data[:end])  # None, or what lies before the cut
        assert got is None or isinstance(got, Camera)


def test_looping_and_outside_offsets_are_bounded():
    # the Exif IFD pointer points back at IFD0 itself: read once
    loop = tiff([(0x0112, 3, 1, short(8)), (EXIF_IFD, 4, 1, struct.pack(">I", 8))])
    assert camera(app1(loop)) == Camera(orientation=8, focal_plane_unit_mm=25.4)
    # IFD0 -> Exif IFD -> IFD0 again (a second Exif pointer): two IFDs read, never more
    exif_at = 8 + 2 + 2 * 12 + 4
    inner = struct.pack(">H", 2) + struct.pack(">HHI", 0xA405, 3, 1) + short(28) + \
        struct.pack(">HHI", EXIF_IFD, 4, 1) + struct.pack(">I", 8) + b"\0\0\0\0"
    cycle = tiff([(0x0112, 3, 1, short(1)), (EXIF_IFD, 4, 1, struct.pack(">I", exif_at))], extra=inner)
    assert camera(app1(cycle)).focal_35mm == 28.0
    for pointer in (0, 3, 10**9, 2**32 - 1):  # IFDs and values outside the block: not read
        far = tiff([(0x0112, 3, 1, short(6)), (EXIF_IFD, 4, 1, struct.pack(">I", pointer)),
                    (0x920A, 5, 1, struct.pack(">I", pointer))])
        assert camera(app1(far)) == Camera(orientation=6, focal_plane_unit_mm=25.4)
    assert camera(app1(b"MM\0*" + struct.pack(">I", 2**32 - 1) + b"\0" * 64)) is None  # IFD0 past the end


def test_huge_counts_and_bad_values_are_left_out():
    # 65535 entries declared, one present: only what fits in the block is read
    assert camera(app1(tiff([(0x0112, 3, 1, short(5))], count=65535))).orientation == 5
    rational_at = 8 + 2 + 3 * 12 + 4
    cases = [
        (0xA405, 3, 2**32 - 1, short(26)),  # a huge value count: not one value, not read
        (0x920A, 5, 1, struct.pack(">I", rational_at)),  # 4.2 / 0: no value
        (0xA002, 4, 1, struct.pack(">I", 0)),  # zero pixels: not usable
    ]
    got = camera(app1(tiff(cases, extra=struct.pack(">II", 42, 0))))
    assert got.focal_35mm is None and got.focal_length_mm is None and got.pixel_width is None
    assert camera(app1(tiff([(0xA405, 4, 1, struct.pack(">I", 26))]))) is None  # a LONG where a SHORT is due


def test_every_walk_stops_at_its_step_budget(monkeypatch):
    """Endless segments, chunks or IFD entries: at most ``MAX_STEPS`` of them, all levels
    together; EXIF beyond them is not found (cost bounded by the budget, not by the file)."""
    taken = []
    real = exif._Steps.take
    monkeypatch.setattr(exif._Steps, "take", lambda self: (taken.append(1), real(self)))
    block = exif_bytes(focal_35mm=26)
    segment = b"\xff\xe2\x00\x02"  # an empty APP2
    for count, found in [(MAX_STEPS - 10, True), (MAX_STEPS, False), (60000, False)]:
        taken.clear()
        data = b"\xff\xd8" + segment * count + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block
        assert (camera(data) is not None) == found
        assert len(taken) <= MAX_STEPS + 1
    taken.clear()
    chunks = b"\x89PNG\r\n\x1a\n" + (struct.pack(">I", 0) + b"tEXt" + b"\0\0\0\0") * 20000
    assert camera(chunks + struct.pack(">I", len(block)) + b"eXIf" + block) is None and len(taken) <= MAX_STEPS + 1
    taken.clear()
    many = tiff([(0x9000 + k, 7, 4, b"0230") for k in range(5000)])  # 5000 entries of unwanted tags
    assert camera(app1(many)) is None and len(taken) <= MAX_STEPS + 1


def test_random_damage_never_raises(photo_set):
    data = bytearray(with_exif(cv2.imencode(".jpg", photo_set["coffee"][:40, :40])[1].tobytes(), orientation=6,
                               **TAGS))
    rng = np.random.default_rng(7)
    exif_end = 4 + len(exif_bytes(6, **TAGS)) + 4
    for _ in range(3000):
        damaged = bytearray(data)
        for at in rng.integers(0, exif_end, rng.integers(1, 6)):
            damaged[at] = rng.integers(0, 256)
        got = camera(bytes(damaged))
        assert got is None or isinstance(got, Camera)
    for blob in (b"", b"\xff\xd8", b"II*\0", b"MM\0*\xff\xff\xff\xff", b"RIFF\0\0\0\0WEBP", bytes(rng.bytes(4096))):
        assert camera(blob) is None or isinstance(camera(blob), Camera)


def test_only_the_head_of_a_file_is_read(tmp_path):
    """EXIF after the first ``HEAD_BYTES`` is not looked for; a missing file is no EXIF."""
    block = exif_bytes(focal_35mm=26)
    app2 = b"\xff\xe2\xff\xff" + b"\0" * 65533  # APP2 segments of 64 KB each
    path = tmp_path / "late.jpg"
    path.write_bytes(b"\xff\xd8" + app2 * 5 + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block)
    assert len(exif.read_head(path)) == exif.HEAD_BYTES and camera(exif.read_head(path)) is None
    assert exif.read_head(tmp_path / "absent.jpg") == b"" and camera(b"") is None
