"""The built-in calibration set: real photos that come with the ``quantize`` extra.

``midas-onnx quantize --int8`` with no ``--calibration`` calibrates on these, so the fast
model can be made offline with nothing else. They are scikit-image's bundled samples (a
dependency of the extra; nothing is downloaded), chosen for a clear licence (public domain
or CC0, or "no known copyright restrictions", as scikit-image's ``skimage.data`` docstrings
state) and for variety: people, animals, objects and outdoor scenes, grayscale and colour,
textures, astronomy and microscopy. Each photo gives several crops at the aspect ratios
people send (4:3, 3:2, 16:9, square and portrait), some mirrored, so a dynamic-size model
sees every network shape those produce during calibration.

Why they suffice for a first model: static INT8 calibration estimates each activation's
range, which depends on image statistics (brightness, contrast, texture, edges) far more
than on what is shown; these cover dark and bright, flat and busy, gray and saturated.
Photos like the ones a user will run on are still better, and the command says so.
"""

from __future__ import annotations

import numpy as np

# skimage.data function -> licence, as its docstring states it.
PHOTOS: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "camera": "CC0 (Lav Varshney)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
    "retina": "CC0 (Mikael Häggström)",
    "cell": "CC0 (Paul Müller et al.)",
    "brick": "CC0 (cc0textures)",
    "gravel": "CC0 (cc0textures)",
    "grass": "CC0 (linolafett)",
}
# Width / height of the crops, cycled through per photo: landscape, square and portrait.
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)
CROPS_PER_PHOTO = 4
DESCRIPTION = (f"built-in: {CROPS_PER_PHOTO} crops each of {len(PHOTOS)} scikit-image sample photos "
               "(public domain / CC0), 6 aspect ratios")
# Source photos whose crops are never calibrated on, only evaluated: whole photos, so no
# held-out crop shares its photo with a calibration crop. One of each kind with a relative
# of its kind left in calibration: a grayscale photo (coins), a colour object photo (rocket),
# a texture (brick, grass) and microscopy (retina, cell), the kind full INT8 does worst on.
HELD_OUT = ("camera", "coffee", "gravel", "immunohistochemistry")


def load() -> list[tuple[str, np.ndarray]]:
    """(name, RGB or gray uint8 array) for every crop, deterministic (seeded); a crop's name is
    ``<photo>_<k>``, so ``source`` finds the photo it was cut from."""
    try:
        import skimage.data
    except ImportError:
        from runtime.errors import MidasOnnxError

        raise MidasOnnxError(
            "the built-in calibration photos come from scikit-image, which is not installed: "
            "pip install 'midas-onnx[quantize]', or pass --calibration DIR with your own photos"
        ) from None
    rng = np.random.default_rng(0)
    out: list[tuple[str, np.ndarray]] = []
    for n, name in enumerate(PHOTOS):
        photo = getattr(skimage.data, name)()
        for k in range(CROPS_PER_PHOTO):
            aspect = ASPECTS[(n + k) % len(ASPECTS)]
            crop = _crop(photo, aspect, rng)
            out.append((f"{name}_{k}", crop[:, ::-1] if k % 2 else crop))
    return out


def _crop(photo: np.ndarray, aspect: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 60-100% of the largest window of ``aspect`` (width / height)."""
    h, w = photo.shape[:2]
    ch, cw = (h, int(h * aspect)) if h * aspect <= w else (int(w / aspect), w)
    scale = rng.uniform(0.6, 1.0)
    ch, cw = max(32, int(ch * scale)), max(32, int(cw * scale))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(photo[y:y + ch, x:x + cw])


def source(crop_name: str) -> str:
    """The scikit-image photo a crop was cut from (``"immunohistochemistry_2"`` -> ``"immunohistochemistry"``)."""
    return crop_name.rsplit("_", 1)[0]
