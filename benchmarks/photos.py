"""Sample photos from scikit-image's bundled data (no downloads), for demos and benchmarks.

    python -m benchmarks.photos samples/            # the photos at their own sizes
    python -m benchmarks.photos bench/ --size 640x480 --count 500   # width x height
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")


def load(names: tuple[str, ...] = NAMES) -> dict[str, np.ndarray]:
    """name -> RGB uint8 (grayscale as HxW). Needs scikit-image (the ``test`` extra)."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("sample photos need scikit-image: pip install 'midas-onnx[test]'") from None
    out = {}
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            out[name] = loader()
        except Exception:  # a few skimage datasets are fetched on first use; skip those offline
            continue
    return out


def write(folder: Path, size: tuple[int, int] | None = None, count: int | None = None) -> list[Path]:
    """Write the photos as JPEGs; ``size`` (width, height) resizes, ``count`` cycles through them."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    photos = [(n, p) for n, p in load().items() if p.ndim == 3 or size is None]
    count = count or len(photos)
    written = []
    for i in range(count):
        name, rgb = photos[i % len(photos)]
        img = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb
        if size is not None:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        path = folder / (f"{i:05d}_{name}.jpg" if count > len(photos) else f"{name}.jpg")
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", help="WIDTHxHEIGHT, e.g. 640x480")
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    paths = write(args.folder, size, args.count)  # type: ignore[arg-type]
    print(f"wrote {len(paths)} photos to {args.folder}")


if __name__ == "__main__":
    main()
