"""Export: the network is upstream's, checkpoints load strictly and safely, the ONNX file
computes what PyTorch computes, and the CLI behaves."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from export.checkpoint import CheckpointError, build_model, load_state_dict
from export.model import MidasNetSmall
from export.onnx_export import ExportError, check_parity, export_onnx, parity_inputs
from midas_onnx.cli import main
from runtime import ModelInfo
from runtime.files import sha256_file
from runtime.model.model_description import MIDAS_SMALL
from runtime.model.preprocess import network_input
from runtime.model.session import create_session

from .conftest import FIXTURES, random_state_dict, write_foreign_onnx


def test_state_dict_layout_is_upstreams():
    """Every upstream key with its exact shape, nothing more (482 keys, 21,394,657 float values)."""
    if not (FIXTURES / "midas_small_state_dict_keys.json").is_file():
        pytest.skip("needs ../shared/fixtures")
    upstream = json.loads((FIXTURES / "midas_small_state_dict_keys.json").read_text())
    ours = MidasNetSmall().state_dict()
    assert [e["key"] for e in upstream] == list(ours)
    assert all(list(ours[e["key"]].shape) == e["shape"] for e in upstream)
    assert sum(v.numel() for v in ours.values() if v.is_floating_point()) == 21_394_657


def test_random_checkpoint_loads_strictly(random_checkpoint):
    model, sha = build_model(random_checkpoint)
    expected = random_state_dict(seed=1)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert sha == sha256_file(random_checkpoint)
    assert not model.training


def test_training_format_checkpoint_loads(tmp_path):
    """Upstream's own training checkpoints wrap the weights as {"model": ..., "optimizer": ...}."""
    path = tmp_path / "train.pt"
    torch.save({"model": random_state_dict(seed=2), "optimizer": {"lr": torch.tensor(1e-4)}}, path)
    model, _ = build_model(path)
    assert torch.equal(model.state_dict()["scratch.output_conv.4.bias"], random_state_dict(seed=2)["scratch.output_conv.4.bias"])


def test_wrong_checkpoint_names_the_keys(tmp_path):
    state = random_state_dict(seed=3)
    del state["scratch.output_conv.4.weight"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["scratch.layer1_rn.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_model(path)
    msg = str(err.value)
    assert f"{path} is not a MiDaS v2.1 small checkpoint: 1 missing keys (scratch.output_conv.4.weight); " in msg
    assert "1 unexpected keys (decoder.extra.weight)" in msg
    assert "scratch.layer1_rn.weight (1, 2, 3, 3) != (64, 32, 3, 3)" in msg


def test_other_model_checkpoint_is_refused(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"482 missing keys .*2 unexpected keys \(weight, bias\)"):
        build_model(path)


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint", b"PK\x03\x04broken zip"])
def test_non_checkpoint_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a loadable PyTorch checkpoint"):
        load_state_dict(path)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_payload_is_never_executed(tmp_path, capsys):
    """weights_only=True: a checkpoint carrying code is refused without running it."""
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_model(tmp_path / "nope.pt")


def _golden():
    if not (FIXTURES / "midas_small_golden_recipe_seed0.npz").is_file():
        pytest.skip("needs ../shared/fixtures")
    return np.load(FIXTURES / "midas_small_golden_recipe_seed0.npz")


@pytest.mark.parametrize("pair", [("input_256", "output_256"), ("input_256x384", "output_256x384")])
def test_pytorch_matches_upstream_golden(recipe_checkpoint, pair):
    """Upstream isl-org/MiDaS computed these outputs with the same checkpoint: float32
    rounding is the only difference allowed (measured 2.3e-5 and 3.8e-5 of the range)."""
    golden = _golden()
    model, _ = build_model(recipe_checkpoint)
    with torch.no_grad():
        out = model(torch.from_numpy(golden[pair[0]])).numpy()
    want = golden[pair[1]]
    assert out.shape == want.shape
    assert np.abs(out - want).max() / np.ptp(want) < 1e-4


@pytest.mark.parametrize("pair", [("input_256", "output_256"), ("input_256x384", "output_256x384")])
def test_onnx_matches_upstream_golden(dynamic_model, pair):
    golden = _golden()
    session = create_session(dynamic_model)
    out = session.run(None, {"image": golden[pair[0]]})[0]
    want = golden[pair[1]]
    assert out.shape == want.shape
    assert np.abs(out - want).max() / np.ptp(want) < 1e-4


def test_fixed_export_parity_on_photos(fixed_model, random_checkpoint, photo_set):
    model, _ = build_model(random_checkpoint)
    info = ModelInfo(input_hw=(256, 256))
    inputs = [network_input(img, info, "rgb") for img in photo_set.values()]
    results = check_parity(fixed_model, model, inputs + [np.concatenate(inputs[:3])])
    assert [r.shape for r in results][-1] == (3, 3, 256, 256)
    assert max(r.max_rel for r in results) < 1e-4


def test_dynamic_export_parity_on_photos_and_sizes(dynamic_model, recipe_checkpoint, photo_set):
    """Photos at their own aspect ratio (upstream resize) and random inputs of several sizes."""
    model, _ = build_model(recipe_checkpoint)
    info = ModelInfo(input_hw=None)
    inputs = [network_input(img, info, "rgb") for img in photo_set.values()]
    inputs.append(network_input(photo_set["coffee"][:, :260], info, "rgb"))  # a portrait crop
    assert {x.shape[2:] for x in inputs} >= {(256, 256), (160, 256), (256, 160)}
    rng = np.random.default_rng(7)
    inputs += [rng.standard_normal((1, 3, h, w)).astype(np.float32) for h, w in [(128, 448), (384, 96), (64, 64)]]
    results = check_parity(dynamic_model, model, inputs)
    assert len(results) == 9
    assert max(r.max_rel for r in results) < 1e-4


def test_parity_check_fails_on_a_different_model(fixed_model, recipe_checkpoint):
    other, _ = build_model(recipe_checkpoint)
    with pytest.raises(ExportError, match="does not match PyTorch"):
        check_parity(fixed_model, other, parity_inputs((256, 256)))


def test_metadata_round_trip(fixed_model, dynamic_model, random_checkpoint, recipe_checkpoint):
    import onnx

    for path, ckpt, size in [(fixed_model, random_checkpoint, (256, 256)), (dynamic_model, recipe_checkpoint, None)]:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        info = ModelInfo.from_props(props)
        assert info.input_hw == size
        assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
        assert info.checkpoint_sha256 == sha256_file(ckpt)
        assert info.precision == "fp32"
        assert info.description == MIDAS_SMALL  # the whole description travels in the file
        assert info.extra["weights_licence"] == MIDAS_SMALL.licence
        versions = json.loads(info.extra["export_versions"])
        assert versions["torch"] == torch.__version__ and versions["opset"] == "17"


def test_export_refuses_to_overwrite(tmp_path, random_checkpoint):
    model, sha = build_model(random_checkpoint)
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"user data")
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_onnx(model, target, (256, 256), sha)
    assert target.read_bytes() == b"user data"


def test_cli_export_other_size_then_info(tmp_path, random_checkpoint):
    out = tmp_path / "m320x448.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(random_checkpoint), "-o", str(out), "--size", "320x448"])
    assert result.exit_code == 0, result.output
    assert "input 1x3x320x448: max abs" in result.output and "verified" in result.output
    assert not list(tmp_path.glob("*.unverified")) and not list(tmp_path.glob("*.tmp"))
    session = create_session(out)
    assert session.get_inputs()[0].shape == ["batch", 3, 320, 448]

    again = CliRunner().invoke(main, ["export", "--checkpoint", str(random_checkpoint), "-o", str(out), "--size", "320x448"])
    assert again.exit_code == 1 and "exists; pass --force" in again.output

    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert f"sha256:    {sha256_file(out)}" in info.output
    assert "input_size: 320x448" in info.output
    assert f"checkpoint_sha256: {sha256_file(random_checkpoint)}" in info.output
    as_json = json.loads(CliRunner().invoke(main, ["info", "--json", str(out)]).output)
    assert as_json["outputs"][0] == {"name": "depth", "shape": ["batch", 320, 448], "type": "tensor(float)"}


@pytest.mark.parametrize("args, message", [
    (["--size", "250x256"], "multiples of 32"),
    (["--size", "big"], "size must be HxW"),
    (["--hub", "--checkpoint", "x.pt"], "alternatives"),
    (["--dynamic", "--size", "256x256"], "alternatives"),
    (["--input-size", "300"], "input size must be a positive multiple of 32, got 300"),
    (["--input-size", "384", "--size", "256x256"], "--input-size is for dynamic models"),
    (["--model", "da-v2-small", "--size", "256x256"], "multiples of 14, got 256x256"),
    (["--model", "da-v2-small", "--hub"], "--hub builds MiDaS small only"),
    (["--model", "da-v2-base"], "'da-v2-base' is not one of 'midas-small', 'da-v2-small'"),
])
def test_cli_export_bad_options(tmp_path, args, message):
    result = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "m.onnx"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_export_bad_checkpoint_is_one_clean_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(bad), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.output.startswith("checkpoint:")
    assert result.output.strip().splitlines()[-1] == (
        f"error: {bad} is not a loadable PyTorch checkpoint: it is neither a zip archive nor a pickle, "
        "so not a file torch.save wrote")
    assert "weights_only=False" not in result.output  # torch's own advice, never to be followed here
    assert not (tmp_path / "m.onnx").exists()


def test_info_on_foreign_and_broken_files(tmp_path):
    foreign = write_foreign_onnx(tmp_path / "foreign.onnx", shape=(1,))
    result = CliRunner().invoke(main, ["info", str(foreign)])
    assert result.exit_code == 0 and "not exported by this toolkit" in result.output

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    result = CliRunner().invoke(main, ["info", str(junk)])
    assert result.exit_code == 1 and "is not a usable ONNX model" in result.output


def test_real_checkpoint_strict_load_and_export(real_checkpoint, tmp_path, photo_set):
    """With the official weights: strict load, export parity, and a sensible depth map."""
    model, _ = build_model(real_checkpoint)
    out = export_onnx(model, tmp_path / "real.onnx", (256, 256), sha256_file(real_checkpoint))
    info = ModelInfo(input_hw=(256, 256))
    inputs = [network_input(img, info, "rgb") for img in photo_set.values()]
    assert max(r.max_rel for r in check_parity(out, model, inputs)) < 1e-4
    from runtime import DepthHeatmapper

    # skimage's rocket: the launch tower and rocket in front stand nearer than the sky.
    depth = DepthHeatmapper(out).predict(photo_set["rocket"], order="rgb").depth
    assert depth[-40:, :].mean() > depth[:40, :].mean()


@pytest.mark.parametrize("hw", [(256, 256), (192, 256), (256, 160), (64, 96), (32, 448)])
def test_static_pads_compute_what_tf_same_padding_computes(hw):
    """Each strided conv's pads are constants on sides that are multiples of 32: the network
    with them equals the one with timm's run-time Conv2dSame, to the bit."""
    from timm.layers import Conv2dSame

    from export.model import StaticSameConv2d

    torch.manual_seed(0)
    ours = MidasNetSmall().eval()
    timm_net = MidasNetSmall().eval()
    timm_net.load_state_dict(ours.state_dict())
    swapped = 0
    for name, module in list(timm_net.named_modules()):
        if isinstance(module, StaticSameConv2d):
            same = Conv2dSame(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                              module.dilation, module.groups, module.bias is not None)
            same.weight, same.bias = module.weight, module.bias
            parent, _, attr = name.rpartition(".")
            setattr(timm_net.get_submodule(parent), attr, same)
            swapped += 1
    assert swapped == 5  # the stem and the four stride-2 depthwise convs
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert torch.equal(ours(x), timm_net(x))


def test_network_refuses_sizes_that_are_not_multiples_of_32():
    with pytest.raises(ValueError, match=r"multiples of 32, got \(250, 256\)"):
        MidasNetSmall().eval()(torch.zeros(1, 3, 250, 256))


def test_default_export_is_dynamic_and_reproduces_the_upstream_pipeline(tmp_path, recipe_checkpoint, fixed_model):
    """`midas-onnx export` with no size: the aspect-keeping model, as compact as a fixed one
    (no run-time pad arithmetic), and photo -> depth as upstream's whole pipeline gives it."""
    import onnx

    from runtime import DepthHeatmapper

    out = tmp_path / "default.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(recipe_checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "exporting midas-small dynamic model" in result.output and "input 1x3x128x192" in result.output
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert "Shape" not in ops and "Pad" not in ops  # pads folded into the convs
    assert len(ops) == len(onnx.load(str(fixed_model)).graph.node)
    hm = DepthHeatmapper(out, threads=2)
    assert hm.info.dynamic
    golden_path = FIXTURES / "midas_small_pipeline_golden_seed0.npz"
    if not golden_path.is_file():
        pytest.skip("needs ../shared/fixtures")
    golden = np.load(golden_path)
    for i in range(3):
        want = golden[f"depth_{i}"]
        depth = hm.predict(golden[f"rgb_{i}"], order="rgb").depth
        assert np.abs(depth - want).max() / np.ptp(want) < 1e-4


@pytest.mark.parametrize("target, error, message", [
    ("torch.onnx.export", RuntimeError("Unsupported: ONNX export of operator foo\n  at some C++ frame\n  more"),
     "error: torch.onnx.export failed: RuntimeError: Unsupported: ONNX export of operator foo"),
    ("onnxslim.slim", ValueError("\n  graph has a cycle\nsecond line"), "error: onnxslim failed: ValueError: graph has a cycle"),
    ("onnx.checker.check_model", RuntimeError("Field 'shape' of 'type' is required\n==> Context: Bad node spec"),
     "error: the onnx checker failed: RuntimeError: Field 'shape' of 'type' is required"),
])
def test_cli_export_stage_failures_are_one_line(tmp_path, random_checkpoint, monkeypatch, target, error, message):
    """Whatever the exporter, onnxslim or the checker raise (pages of C++ frames or graph
    dumps), the user sees one line naming the stage, and no file is left behind."""
    import importlib

    module, _, attr = target.rpartition(".")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(importlib.import_module(module), attr, fail)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(random_checkpoint), "-o", str(out), "--size", "64x64"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == message
    assert "Traceback" not in result.output and "more" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_export_parity_run_failure_is_one_line(tmp_path, random_checkpoint, monkeypatch):
    """An exported graph that onnxruntime cannot run at a checked shape (say, a size frozen
    in the trace) ends the export in one line, and nothing is written."""
    import runtime.model.session

    real = runtime.model.session.create_session

    class Refusing:
        def __init__(self, session):
            self.session = session

        def get_outputs(self):
            return self.session.get_outputs()

        def run(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input\nIndex: 2")

    monkeypatch.setattr(runtime.model.session, "create_session", lambda *a, **k: Refusing(real(*a, **k)))
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(random_checkpoint), "-o", str(out), "--size", "64x64"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: onnxruntime on input (1, 3, 64, 64) failed: RuntimeError: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "
        "Got invalid dimensions for input")
    assert "Traceback" not in result.output and sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_export_input_size_is_the_files_default(tmp_path, random_checkpoint):
    """`--input-size` writes the resize target into the file's description: the runtime
    aims at it by default and can still choose another."""
    from runtime import DepthHeatmapper

    out = tmp_path / "m384.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(random_checkpoint), "-o", str(out), "--input-size", "384"])
    assert result.exit_code == 0, result.output
    assert "input 1x3x384x384" in result.output  # the check's square is the file's size
    photo = np.zeros((480, 640, 3), np.uint8)
    hm = DepthHeatmapper(out)
    assert hm.info.description.input.size == 384
    assert hm.preprocess(photo).shape == (1, 3, 288, 384)
    assert DepthHeatmapper(out, input_size=256).preprocess(photo).shape == (1, 3, 192, 256)
