"""Shared fixtures: checkpoints the tests write themselves, models exported once per session,
and real photos from scikit-image. Nothing here downloads anything."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def photos() -> dict[str, np.ndarray]:
    """scikit-image's bundled photos, RGB uint8 (grayscale 'camera' stays 2-D)."""
    import skimage.data

    return {
        "astronaut": skimage.data.astronaut(),  # 512x512x3
        "coffee": skimage.data.coffee(),  # 400x600x3
        "chelsea": skimage.data.chelsea(),  # 300x451x3
        "rocket": skimage.data.rocket(),  # 427x640x3
        "camera": skimage.data.camera(),  # 512x512 grayscale
    }


@pytest.fixture(scope="session")
def photo_set() -> dict[str, np.ndarray]:
    return photos()


def random_state_dict(seed: int):
    """A MiDaS_small state dict of He-scaled random weights in upstream key layout."""
    import torch

    from export.model import MidasNetSmall

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, ref in MidasNetSmall().state_dict().items():
        if not ref.is_floating_point():
            out[key] = torch.zeros_like(ref)
            continue
        z = torch.randn(ref.shape, generator=gen)
        if key.endswith("running_var"):
            z = z.abs() + 0.5
        elif key.endswith(("running_mean", "bias")):
            z = z * 0.1
        elif key.endswith(".weight") and ref.ndim == 1:
            z = 1.0 + 0.1 * z
        else:
            z = z * (2.0 / max(1, int(np.prod(ref.shape[1:])))) ** 0.5
        out[key] = z
    return out


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "random_midas_small.pt"
    torch.save(random_state_dict(seed=1), path)
    return path


@pytest.fixture(scope="session")
def recipe_checkpoint(tmp_path_factory) -> Path:
    """The shared golden recipe (upstream layout, numpy PCG64 seed 0), saved as a .pt file."""
    if not (FIXTURES / "golden_recipe.py").is_file():
        pytest.skip(f"needs the shared golden fixtures at {FIXTURES}")
    import torch

    sys.path.insert(0, str(FIXTURES))
    from golden_recipe import recipe_state_dict

    path = tmp_path_factory.mktemp("ckpt") / "recipe_seed0.pt"
    torch.save(recipe_state_dict(), path)
    return path


def _export(checkpoint: Path, out: Path, input_hw):
    from export.checkpoint import build_model
    from export.onnx_export import check_parity, export_onnx, parity_inputs

    model, sha = build_model(checkpoint)
    export_onnx(model, out, input_hw, sha)
    check_parity(out, model, parity_inputs(input_hw))
    return out


@pytest.fixture(scope="session")
def fixed_model(tmp_path_factory, random_checkpoint) -> Path:
    """256x256 fp32 export of the random checkpoint."""
    return _export(random_checkpoint, tmp_path_factory.mktemp("models") / "fixed.onnx", (256, 256))


@pytest.fixture(scope="session")
def dynamic_model(tmp_path_factory, recipe_checkpoint) -> Path:
    """Dynamic-size fp32 export of the golden recipe checkpoint."""
    return _export(recipe_checkpoint, tmp_path_factory.mktemp("models") / "dynamic.onnx", None)


@pytest.fixture(scope="session")
def real_checkpoint() -> Path:
    from export.checkpoint import find_real_weights

    path = find_real_weights()
    if path is None:
        pytest.skip("real MiDaS v2.1 small weights not present in ../shared/weights/ "
                    "or $MIDAS_SMALL_WEIGHTS (cannot be downloaded here)")
    return path


def write_crops(folder: Path, photos: dict, per_photo: int, seed: int) -> Path:
    """Random crops (some mirrored) of photos as JPEGs: calibration / evaluation sets."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, rgb in photos.items():
        img = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb
        for k in range(per_photo):
            h, w = img.shape[:2]
            ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[y:y + ch, x:x + cw]
            cv2.imwrite(str(folder / f"{name}_{k}.jpg"), crop[:, ::-1] if k % 2 else crop)
    return folder


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory, photo_set) -> Path:
    return write_crops(tmp_path_factory.mktemp("calib"), {k: photo_set[k] for k in ("astronaut", "coffee", "chelsea")}, 3, 0)


@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory, photo_set) -> Path:
    return write_crops(tmp_path_factory.mktemp("eval"), {k: photo_set[k] for k in ("rocket", "camera")}, 2, 1)


@pytest.fixture(scope="session")
def static_int8(tmp_path_factory, fixed_model, calib_dir, eval_dir):
    """(QuantizeResult, warnings raised) for static INT8 of the fixed random model."""
    import warnings

    from quantize import PRESETS, quantize_model

    out = tmp_path_factory.mktemp("q") / "fixed.int8.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = quantize_model(fixed_model, out, PRESETS["static"], calib_dir, eval_dir, threads=2, latency_runs=3)
    return result, [str(w.message) for w in caught]


@pytest.fixture(scope="session")
def dynamic_int8(tmp_path_factory, dynamic_model, calib_dir, eval_dir):
    """Static INT8 of the dynamic-size recipe model: calibrated on photos at their own shapes."""
    import warnings

    from quantize import PRESETS, quantize_model

    out = tmp_path_factory.mktemp("q") / "dynamic.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(dynamic_model, out, PRESETS["static"], calib_dir, eval_dir, threads=2, latency_runs=4)


def write_foreign_onnx(path: Path, op: str = "Identity", input_name: str = "x", output_name: str = "y",
                       shape: tuple[int, ...] = (1, 3, 32, 32)) -> Path:
    """A valid one-node ONNX model that is not a midas-onnx export."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node(op, [input_name], [output_name])], "g",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(shape))])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _engines() -> list[str]:
    """The inference engines installed here: every test that checks numbers runs on each
    (CI installs the ``openvino`` extra, so both run there)."""
    from runtime.model.openvino_session import available

    return ["onnxruntime"] + (["openvino"] if available() else [])


@pytest.fixture(params=_engines())
def engine(request) -> str:
    """Each installed inference engine in turn (``DepthHeatmapper(..., engine=engine)``)."""
    return request.param
