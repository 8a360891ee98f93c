"""Model descriptions: what each registered model says, how it travels in a file's metadata,
what old files mean, what malformed ones get, and the resize rules they carry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime import DepthHeatmapper, ModelError, ModelInfo
from runtime.model.model_description import (DA_V2_SMALL, DA_V2_SMALL_METRIC_OUTDOOR, MIDAS_SMALL, MODELS,
                                       ModelDescription, describe)
from runtime.model.preprocess import network_size


def test_every_description_round_trips_through_json():
    assert list(MODELS) == ["midas-small", "da-v2-small", "da-v2-small-metric-indoor", "da-v2-small-metric-outdoor"]
    for description in MODELS.values():
        assert ModelDescription.from_json(description.to_json()) == description
        info = ModelInfo.from_props(ModelInfo(input_hw=None, description=description).to_props())
        assert info.description == description and info.name == description.name
        assert info.mean == description.input.mean and info.std == description.input.std


def test_descriptions_say_what_upstream_does():
    """The facts the runtime acts on, per model (upstream's code at the pinned commits)."""
    assert (MIDAS_SMALL.input.resize, MIDAS_SMALL.input.size, MIDAS_SMALL.input.multiple_of) == ("upper_bound", 256, 32)
    assert MIDAS_SMALL.output.resize == "bicubic" and MIDAS_SMALL.output.kind == "relative_inverse_depth"
    for description in (DA_V2_SMALL, DA_V2_SMALL_METRIC_OUTDOOR):
        rule = description.input
        assert (rule.resize, rule.size, rule.multiple_of, rule.interpolation) == ("lower_bound", 518, 14, "cubic")
        assert rule.mean == (0.485, 0.456, 0.406) and rule.std == (0.229, 0.224, 0.225) and rule.arithmetic == "float64"
        assert description.output.resize == "bilinear_align_corners"
        assert description.checkpoint.hub_repo.startswith("depth-anything/") and description.commercial_use
    assert DA_V2_SMALL_METRIC_OUTDOOR.output.metric and DA_V2_SMALL_METRIC_OUTDOOR.output.max_depth == 80.0
    assert MODELS["da-v2-small-metric-indoor"].output.max_depth == 20.0
    with pytest.raises(ValueError, match="unknown model 'da-v2-large'; choose from midas-small, da-v2-small"):
        describe("da-v2-large")


def test_a_file_without_a_description_is_midas_small():
    """Files exported before descriptions existed keep working: MiDaS small, with the
    mean/std they recorded."""
    props = ModelInfo(input_hw=None).to_props()
    del props["midas_onnx.description"]
    props["midas_onnx.mean"] = "[0.5, 0.5, 0.5]"
    info = ModelInfo.from_props(props)
    assert info.description.id == "midas-small" and info.dynamic
    assert info.description.input == ModelInfo(mean=(0.5, 0.5, 0.5)).description.input
    assert info.mean == (0.5, 0.5, 0.5) and info.std == MIDAS_SMALL.input.std


def test_an_old_model_file_still_runs_as_midas_small(dynamic_model, tmp_path, photo_set):
    """A real export with its description removed (what earlier releases wrote) predicts
    exactly what the same file with the description does."""
    import onnx

    proto = onnx.load(str(dynamic_model))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != "midas_onnx.description"]
    assert len(kept) == len(proto.metadata_props) - 1
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    old_hm, new_hm = DepthHeatmapper(old, threads=2), DepthHeatmapper(dynamic_model, threads=2)
    assert old_hm.info.description == MIDAS_SMALL == new_hm.info.description
    photo = photo_set["coffee"]
    np.testing.assert_array_equal(old_hm.predict(photo, order="rgb").depth, new_hm.predict(photo, order="rgb").depth)


def _props_with(data: dict) -> dict:
    props = ModelInfo(input_hw=None, description=DA_V2_SMALL).to_props()
    props["midas_onnx.description"] = json.dumps(data) if not isinstance(data, str) else data
    return props


def _changed(**paths) -> dict:
    data = json.loads(DA_V2_SMALL.to_json())
    for path, value in paths.items():
        *parents, leaf = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return data


@pytest.mark.parametrize("data, message", [
    (_changed(output__kind="disparity"), "output.kind is 'disparity'; this release knows relative_inverse_depth, metric_depth"),
    (_changed(input__resize="minimal"), "input.resize is 'minimal'"),
    (_changed(input__std=[0.2, 0.0, 0.2]), r"mean \(0.485, 0.456, 0.406\), std \(0.2, 0.0, 0.2\)"),
    (_changed(input__size="518"), "input size '518' / multiple_of 14 must be positive integers"),
    (_changed(output__kind="metric_depth"), "a metric output needs unit 'm' and a positive max_depth"),
    (_changed(input=KeyError), "malformed model description: .*missing 1 required positional argument: 'input'"),
    (_changed(checkpoint__keys=KeyError), "malformed model description: .*'keys'"),
    ("{not json", "malformed model description: Expecting property name"),
    ("[1, 2]", "malformed model description: not a JSON object"),
])
def test_malformed_description_is_refused_by_name(data, message):
    with pytest.raises(ModelError, match=f"^m.onnx has malformed midas-onnx metadata: .*{message}"):
        ModelInfo.from_props(_props_with(data), "m.onnx")


def test_fields_from_newer_releases_are_ignored():
    data = _changed(phase_two={"anything": 1})
    data["input"]["future_rule"] = "x"
    assert ModelInfo.from_props(_props_with(data)).description == DA_V2_SMALL


@pytest.mark.parametrize("description, photo, network", [
    (DA_V2_SMALL, (480, 640), (518, 686)),  # upstream's own sizes for the golden photos
    (DA_V2_SMALL, (400, 600), (518, 784)),
    (DA_V2_SMALL, (427, 640), (518, 770)),
    (DA_V2_SMALL, (960, 1280), (518, 686)),
    (DA_V2_SMALL, (640, 480), (686, 518)),
    (DA_V2_SMALL, (1080, 1920), (518, 924)),
    (DA_V2_SMALL, (20, 30), (518, 784)),  # small photos are enlarged, as upstream does
    (DA_V2_SMALL, (500, 1600), (490, 1554)),  # past 3:1 the long side is held at 3 x 518
    (DA_V2_SMALL, (100, 40000), (14, 1554)),
    (DA_V2_SMALL.with_input_size(364), (480, 640), (364, 490)),
    (DA_V2_SMALL.with_input_size(252), (960, 1280), (252, 336)),
    (MIDAS_SMALL, (480, 640), (192, 256)),
    (MIDAS_SMALL.with_input_size(384), (480, 640), (288, 384)),
])
def test_network_sizes_follow_the_rule(description, photo, network):
    assert network_size(*photo, ModelInfo(input_hw=None, description=description)) == network
