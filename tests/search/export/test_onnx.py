"""ONNX export: the graph predicts what maskopt's PyTorch path predicts, and a bad file is a clean error.

Models are untrained tiny timm backbones built by ``build_model`` (equivalence does not depend on
training); images are random uint8 pixels, or real PNG files decoded by maskopt's cache where
the comparison is with ``predict_images`` itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskopt.errors import ExportError
from maskopt.search.data import labels as L
from maskopt.search.export.onnx import (
    TOLERANCE,
    GraphMember,
    OnnxPreprocessing,
    check_or_refuse,
    export_onnx,
    export_onnx_ensemble,
    graph_members,
    verify_onnx,
)
from maskopt.search.export.onnx_runtime import run_onnx
from maskopt.search.train.models import build_model

onnx = pytest.importorskip("onnx", reason="the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")


def pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def model(backbone: str, *, num_classes: int = L.NUM_CLASSES, head: str = "single", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(backbone, num_classes=num_classes, head=head)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- one model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "head", "image_size"), [
    ("resnet10t", "single", 32),
    ("mobilenetv3_small_050", "single", 32),
    ("mobilenetv3_small_050", "multi", 32),
    ("test_vit", "multi", 160),  # timm's smallest ViT; its position embedding fixes the size
])
def test_one_model_matches_pytorch_at_any_batch_size(tmp_path, backbone, head, image_size):
    net = model(backbone, head=head)
    path = export_onnx(net, tmp_path / "model.onnx", image_size=image_size)
    assert path == tmp_path / "model.onnx" and files_in(tmp_path) == ["model.onnx"]
    images = pixels(5, image_size)

    check = verify_onnx(net, path, images)
    assert check.passed and check.images == 5 and check.top1_agreement == 1.0, check
    assert 0 <= check.max_abs_score_diff <= TOLERANCE and check.torch_macro_f1 is None

    five = run_onnx(path, images, num_classes=L.NUM_CLASSES)
    one = run_onnx(path, images[3:4], num_classes=L.NUM_CLASSES)  # exported with a batch of 2
    assert five.probs.shape == (5, L.NUM_CLASSES) and one.probs.shape == (1, L.NUM_CLASSES)
    np.testing.assert_allclose(one.scores, five.scores[3:4], atol=1e-5)
    np.testing.assert_allclose(five.probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(five.scores, np.log(np.clip(five.probs, 1e-7, None)), atol=1e-5)


def test_export_leaves_the_models_train_mode_as_it_was(tmp_path):
    net = model("resnet10t")  # build_model returns it in train mode
    net.model.fc.eval()
    export_onnx(net, tmp_path / "model.onnx", image_size=32)
    assert net.training and not net.model.fc.training and net.model.conv1.training


def test_a_backbone_the_exporter_cannot_handle_is_refused_by_name(tmp_path, capfd):
    old = export_onnx(model("resnet10t"), tmp_path / "model.onnx", image_size=32).read_bytes()
    capfd.readouterr()
    with pytest.raises(ExportError, match=r"backbone 'test_vit4' cannot be exported to ONNX by torch .*'s exporter "
                                          r"at opset 17: Exporting the operator 'aten::rms_norm'.*Export without ONNX"):
        export_onnx(model("test_vit4"), tmp_path / "model.onnx", image_size=160)
    # The exporter would write the whole TorchScript graph (~100 KB) to stdout; nothing half-written is left.
    assert capfd.readouterr().out == ""
    assert files_in(tmp_path) == ["model.onnx"] and (tmp_path / "model.onnx").read_bytes() == old


def test_a_model_that_does_not_take_the_image_size_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"backbone 'vit_tiny_patch16_224' does not run on 64 px images "
                                          r"\(Input height \(64\) doesn't match model \(224\)"):
        export_onnx(model("vit_tiny_patch16_224"), tmp_path / "model.onnx", image_size=64)
    assert files_in(tmp_path) == []


def test_a_vit_off_its_native_size_is_refused_by_the_exporter(tmp_path):
    # test_vit resamples its position embedding for other sizes, with an operator the exporter lacks.
    with pytest.raises(ExportError, match=r"backbone 'test_vit' cannot be exported .*'aten::_upsample_bicubic2d_aa'"):
        export_onnx(model("test_vit"), tmp_path / "model.onnx", image_size=64)


def test_an_unsupported_opset_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"ONNX opset 9 is not supported; choose 13\.\.20 \(default 17\)"):
        export_onnx(model("resnet10t"), tmp_path / "model.onnx", image_size=32, opset=9)


# --- ensembles, offsets, TTA -------------------------------------------------------------------------


def write_export(folder: Path, backbone: str, head: str, n_models: int, *, seed: int, image_size: int = 32,
                 **extra) -> None:
    """A one-trial export folder as export-best writes it, of untrained models."""
    from safetensors.torch import save_model

    from maskopt.search.train.loop import mean_std

    folder.mkdir(parents=True)
    names = [f"fold{k}.safetensors" for k in range(n_models)]
    for k, name in enumerate(names):
        net = model(backbone, head=head, seed=seed + k)
        save_model(net, str(folder / name))
    mean, std = mean_std(net)
    config = {"format": "maskopt-export/1", "backbone": backbone, "head": head, "num_classes": L.NUM_CLASSES,
              "class_names": list(L.class_names()), "image_size": image_size, "mean": list(mean), "std": list(std),
              "models": names, "tta": False, **extra}
    (folder / "config.json").write_text(json.dumps(config))


OFFSETS = [0.0] * 15 + [1.5, -0.7, 2.5]


@pytest.fixture(scope="module")
def ensemble_export(tmp_path_factory) -> Path:
    """An ensemble of a 2-fold multi-head mobilenet trial (weight 2) and a one-model resnet trial (weight 1),
    with TTA and class offsets, and eight photos of assorted sizes to predict."""
    root = tmp_path_factory.mktemp("onnx-ensemble")
    folder = root / "export"
    write_export(folder / "member-trial-3", "mobilenetv3_small_050", "multi", 2, seed=1)
    write_export(folder / "member-trial-5", "resnet10t", "single", 1, seed=7)
    config = {"format": "maskopt-export/1", "num_classes": L.NUM_CLASSES, "class_names": list(L.class_names()),
              "members": [{"folder": "member-trial-3", "weight": 2.0}, {"folder": "member-trial-5", "weight": 1.0}],
              "tta": True, "class_offsets": OFFSETS}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(3)
    for k, (w, h) in enumerate([(40, 52), (52, 40), (32, 32), (64, 48), (37, 90), (90, 37), (33, 34), (48, 48)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"photo{k}.png")
    return folder


def test_an_ensemble_with_tta_and_offsets_predicts_what_predict_images_predicts(ensemble_export, tmp_path):
    from maskopt.search.data.cache import load_images
    from maskopt.search.export.predict import predict_images

    members = graph_members(ensemble_export)
    assert [m.weight for m in members] == pytest.approx([1 / 3, 1 / 3, 1 / 3])  # 2/3 shared by two folds
    path = export_onnx_ensemble(members, tmp_path / "model.onnx", tta=True, class_offsets=OFFSETS)

    photos = sorted(ensemble_export.parent.glob("photo*.png"))
    expected = predict_images(ensemble_export, photos, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    images = np.array(load_images(photos, image_size=32, cache_dir=tmp_path / "cache").images)
    scores = run_onnx(path, images, num_classes=L.NUM_CLASSES).scores
    np.testing.assert_array_equal(scores.argmax(1), expected)
    assert set(expected) & {15, 16, 17}, "the offsets should move some predictions to the offset classes"

    labels = np.arange(len(photos)) % L.NUM_CLASSES
    check = verify_onnx(members, path, images, tta=True, class_offsets=OFFSETS, labels=labels)
    assert check.passed and check.top1_agreement == 1.0 and check.torch_macro_f1 == check.onnx_macro_f1
    assert check_or_refuse(check) is check


def test_verify_catches_a_graph_that_differs_from_pytorch(ensemble_export, tmp_path):
    members = graph_members(ensemble_export)
    path = export_onnx_ensemble(members, tmp_path / "model.onnx", tta=True, class_offsets=OFFSETS)
    images = pixels(6, 32)
    check = verify_onnx(members, path, images, tta=False, class_offsets=OFFSETS, labels=np.arange(6))
    assert not check.passed and check.max_abs_score_diff > TOLERANCE
    with pytest.raises(ExportError, match=r"the ONNX graph does not match PyTorch on 6 images: scores differ by up to "
                                          r"[0-9.e-]+ \(tolerance 0\.001\), top-1 agreement [0-9.]+%; macro F1 "):
        check_or_refuse(check)
    other = [GraphMember(model("resnet10t", seed=99), 32)]  # other weights, same architecture
    assert not verify_onnx(other, path, images, tta=True, class_offsets=OFFSETS).passed


def test_members_of_different_image_sizes_are_refused(tmp_path):
    members = [GraphMember(model("resnet10t"), 32), GraphMember(model("resnet10t", seed=1), 48)]
    with pytest.raises(ExportError, match=r"the models take images of 32, 48 px; one ONNX graph has one input size\. "
                                          r"Export the models of each size to a file of its own"):
        export_onnx_ensemble(members, tmp_path / "model.onnx")
    assert files_in(tmp_path) == []


def test_offsets_of_the_wrong_width_are_refused(tmp_path):
    with pytest.raises(ExportError, match=r"class_offsets must be 18 finite numbers, one per class"):
        export_onnx(model("resnet10t"), tmp_path / "model.onnx", image_size=32, class_offsets=[0.0, 1.0])


# --- the preprocessing record ------------------------------------------------------------------------


def test_the_preprocessing_record_round_trips_through_json():
    record = OnnxPreprocessing(image_size=80)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["resize"] == "shorter_side_bilinear" and data["normalisation"] == "in_graph"
    assert data["outputs"] == ["probs", "scores"]
    assert OnnxPreprocessing.from_dict(data, "config.json: key 'onnx'", image_size=80) == record


@pytest.mark.parametrize(("change", "message"), [
    ({"layout": "NHWC"}, r"config.json: 'layout' must be 'NCHW' \(the only value this maskopt writes\), got 'NHWC'"),
    ({"image_size": 96}, r"config.json: 'image_size' must be 80 \(the export's image size\), got 96"),
    ({"image_size": 80.0}, r"'image_size' must be 80 \(the export's image size\), got 80\.0"),
    ({"outputs": ["scores", "probs"]}, r"'outputs' must be \['probs', 'scores'\]"),
    ({"mean": [0.5] * 3}, r"config.json: unknown key\(s\) \['mean'\]; known: image_size, resize"),
])
def test_the_preprocessing_record_refuses_what_maskopt_does_not_write(change, message):
    with pytest.raises(ExportError, match=message):
        OnnxPreprocessing.from_dict({**OnnxPreprocessing(image_size=80).to_dict(), **change}, "config.json",
                                    image_size=80)


# --- hostile files -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory) -> Path:
    """A valid 5-class graph at 32 px, for the tests to spoil copies of."""
    folder = tmp_path_factory.mktemp("onnx-good")
    return export_onnx(model("resnet10t", num_classes=5), folder / "model.onnx", image_size=32)


def tiny_graph(input_type: int, input_shape: list) -> bytes:
    """A graph that passes onnx.checker but has another input than maskopt writes."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["images"], [name], to=TensorProto.FLOAT) for name in ("probs", "scores")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 5]) for n in ("probs", "scores")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", input_type, input_shape)], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def external_data(good: bytes, *, in_node: bool = False) -> bytes:
    """The graph with one tensor (a weight, or a Constant node's value) pointing at a file out of the folder."""
    from onnx import TensorProto

    proto = onnx.load_model_from_string(good)
    constants = [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    tensor = constants[0] if in_node else proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    return proto.SerializeToString()


def spoilers():
    from onnx import TensorProto

    return [
        ("truncated", lambda good: good[: len(good) // 2], r"model.onnx is not an ONNX model \(Error parsing message"),
        ("random bytes", lambda good: np.random.default_rng(0).bytes(4096), r"model.onnx is not an ONNX model \("),
        ("empty", lambda good: b"", r"model.onnx is not a valid ONNX model \(The model does not have an ir_version"),
        ("rank 3 input", lambda good: tiny_graph(TensorProto.UINT8, ["batch", 3, 32]),
         (r"must have one input 'images' of uint8 \[batch, 3, 32, 32\] \(a dynamic batch\); its input is uint8 "
          r"\['batch', 3, 32\]")),
        ("float input", lambda good: tiny_graph(TensorProto.FLOAT, ["batch", 3, 32, 32]), r"its input is float32 \["),
        ("fixed batch", lambda good: tiny_graph(TensorProto.UINT8, [1, 3, 32, 32]), r"its input is uint8 \[1, 3,"),
        ("external data", external_data,
         r"tensor '.+' keeps its data in another file \('\.\./\.\./etc/passwd'\); maskopt writes self-contained"),
        ("external data in a node", lambda good: external_data(good, in_node=True),
         r"keeps its data in another file \('\.\./\.\./etc/passwd'\)"),
    ]


@pytest.mark.parametrize(("spoil", "message"), [(s, m) for _, s, m in spoilers()], ids=[n for n, _, _ in spoilers()])
def test_a_hostile_onnx_file_is_a_clean_error(good_onnx, tmp_path, spoil, message):
    path = tmp_path / "model.onnx"
    path.write_bytes(spoil(good_onnx.read_bytes()))
    with pytest.raises(ExportError, match=message):
        run_onnx(path, pixels(2, 32), num_classes=5)


def test_a_graph_of_another_width_is_refused(good_onnx):
    with pytest.raises(ExportError, match=r"output 'probs' must be float32 \[batch, 18\] \(one score per class of the "
                                          r"export\), got float32 \['batch', 5\]"):
        run_onnx(good_onnx, pixels(2, 32), num_classes=18)


def test_images_of_another_size_or_type_are_refused(good_onnx):
    with pytest.raises(ExportError, match=r"one input 'images' of uint8 \[batch, 3, 48, 48\]"):
        run_onnx(good_onnx, pixels(2, 48), num_classes=5)
    with pytest.raises(ExportError, match=r"must be uint8 \[N, 3, S, S\] pixels, got float32 \[2, 3, 32, 32\]"):
        run_onnx(good_onnx, pixels(2, 32).astype(np.float32), num_classes=5)


def test_a_missing_file_or_a_fifo_is_refused(tmp_path):
    with pytest.raises(ExportError, match=r"model.onnx is missing or not a regular file"):
        run_onnx(tmp_path / "model.onnx", pixels(2, 32), num_classes=5)
    os.mkfifo(tmp_path / "model.onnx")  # reading it would wait forever
    with pytest.raises(ExportError, match=r"model.onnx is missing or not a regular file"):
        run_onnx(tmp_path / "model.onnx", pixels(2, 32), num_classes=5)


def test_a_link_out_of_the_folder_is_refused(good_onnx, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    os.symlink(good_onnx, folder / "model.onnx")
    with pytest.raises(ExportError, match=r"model.onnx leads outside its folder, to .*model.onnx"):
        run_onnx(folder / "model.onnx", pixels(2, 32), num_classes=5)


def test_export_refuses_a_target_that_is_not_a_regular_file(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(ExportError, match=r"model.onnx is a folder, not a regular file, and was left as it is; "
                                          r"give `path` the path of a regular file"):
        export_onnx(model("resnet10t"), tmp_path / "model.onnx", image_size=32)
    assert files_in(tmp_path) == ["model.onnx"] and not any((tmp_path / "model.onnx").iterdir())
