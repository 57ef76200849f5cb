from collections import namedtuple

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from timm.layers import FrozenBatchNormAct2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from maskopt.errors import MaskoptError
from maskopt.search.data import labels
from maskopt.search.train.models import Classifier, build_model, check_backbone, count_parameters, main_logits

SIZE = 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _images(batch=2, size=SIZE):
    return torch.rand(batch, 3, size, size)


@pytest.mark.parametrize("backbone", ["resnet10t", "mobilenetv3_small_050"])
@pytest.mark.parametrize("head, num_classes", [("single", 5), ("multi", 18)])
def test_output_is_logits_tensor(backbone, head, num_classes):
    model = build_model(backbone, num_classes=num_classes, head=head)
    for train in (True, False):
        out = model.train(train)(_images())
        assert isinstance(out, torch.Tensor)
        assert out.shape == (2, num_classes)


def test_vit_output_and_stages():
    # test_vit has a fixed 160 px input (position embedding); its stages are the blocks.
    model = build_model("test_vit", num_classes=18, head="multi", freeze_depth=1)
    assert model(_images(size=160)).shape == (2, 18)
    assert model.num_stages == len(model.model.blocks)
    grads = {n: p.requires_grad for n, p in model.model.named_parameters()}
    assert not grads["cls_token"] and not grads["pos_embed"]
    assert not any(v for n, v in grads.items() if n.startswith(("patch_embed.", "blocks.0.")))
    assert all(v for n, v in grads.items() if n.startswith(("blocks.1.", "norm.")))


def test_multi_head_cross_entropy_is_sum_of_head_cross_entropies():
    model = build_model("resnet10t", num_classes=18, head="multi")
    x = _images(batch=6)
    y = torch.tensor([0, 5, 8, 11, 14, 17])
    out = model(x)
    # The 18 outputs are a normalised log-distribution.
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(6))

    features = model.model(x)
    mask, gender, age = (torch.as_tensor(part) for part in labels.decode(y.numpy()))
    expected = (
        F.cross_entropy(model.heads["mask"](features), mask)
        + F.cross_entropy(model.heads["gender"](features), gender)
        + F.cross_entropy(model.heads["age"](features), age)
    )
    torch.testing.assert_close(F.cross_entropy(out, y), expected)
    # Class m * 6 + g * 3 + a scores (mask m, gender g, age a), so argmaxes agree too.
    pred = torch.as_tensor(
        labels.encode(
            model.heads["mask"](features).argmax(1).numpy(),
            model.heads["gender"](features).argmax(1).numpy(),
            model.heads["age"](features).argmax(1).numpy(),
        )
    )
    assert torch.equal(out.argmax(1), pred)


def test_multi_head_needs_18_classes():
    with pytest.raises(MaskoptError, match="needs the 18 competition classes, got num_classes=5"):
        build_model("resnet10t", num_classes=5, head="multi")


def test_unknown_head():
    with pytest.raises(MaskoptError, match="unknown head 'triple'; choose one of single, multi"):
        build_model("resnet10t", num_classes=18, head="triple")


def _requires_grad(model):
    return {name: p.requires_grad for name, p in model.model.named_parameters()}


def _all(flags, prefixes, value):
    chosen = [v for name, v in flags.items() if name.startswith(prefixes)]
    return bool(chosen) and all(v is value for v in chosen)


# (backbone, depth asked, depth used, frozen module prefixes, trainable module prefixes)
FREEZE_CASES = [
    ("resnet10t", 0, 0, (), ("conv1.", "bn1.", "layer1.", "layer4.", "fc.")),
    ("resnet10t", 1, 1, ("conv1.", "bn1."), ("layer1.", "layer2.", "fc.")),
    ("resnet10t", 2, 2, ("conv1.", "bn1.", "layer1."), ("layer2.", "layer3.", "fc.")),
    ("resnet10t", 99, 5, ("conv1.", "layer1.", "layer4."), ("fc.",)),
    ("mobilenetv3_small_050", 1, 1, ("conv_stem.", "bn1."), ("blocks.0.", "conv_head.")),
    ("mobilenetv3_small_050", 2, 2, ("conv_stem.", "blocks.0."), ("blocks.1.", "blocks.5.")),
    ("mobilenetv3_small_050", 4, 4, ("blocks.0.", "blocks.3."), ("blocks.4.", "blocks.5.", "conv_head.")),
    ("mobilenetv3_small_050", 7, 5, ("conv_stem.", "blocks.5."), ("conv_head.", "classifier.")),
]


@pytest.mark.parametrize("backbone, depth, used, frozen, trainable", FREEZE_CASES)
def test_freeze_depth(backbone, depth, used, frozen, trainable):
    model = build_model(backbone, num_classes=18, freeze_depth=depth)
    assert model.freeze_depth == used
    assert model.num_stages == 5
    flags = _requires_grad(model)
    if frozen:
        assert _all(flags, frozen, False)
    assert _all(flags, trainable, True)


def test_frozen_stages_keep_batchnorm_statistics_and_later_stages_train():
    model = build_model("resnet10t", num_classes=18, freeze_depth=2).train()
    assert isinstance(model.model.bn1, FrozenBatchNorm2d)
    assert isinstance(model.model.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(model.model.layer2[0].bn1, nn.BatchNorm2d)
    before = {name: b.clone() for name, b in model.named_buffers() if "running_mean" in name}

    loss = F.cross_entropy(model(_images(batch=4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()

    after = dict(model.named_buffers())
    for name, value in before.items():
        changed = not torch.equal(value, after[name])
        assert changed == name.startswith(("model.layer2.", "model.layer3.", "model.layer4.")), name
    for name, param in model.named_parameters():
        trains = name.startswith(("model.layer2.", "model.layer3.", "model.layer4.", "model.fc."))
        assert (param.grad is not None) == trains, name


def test_mobilenet_frozen_batchnorm_act():
    model = build_model("mobilenetv3_small_050", num_classes=18, freeze_depth=1)
    assert isinstance(model.model.bn1, FrozenBatchNormAct2d)
    assert not isinstance(model.model.blocks[0][0].bn1, FrozenBatchNormAct2d)


def test_multi_head_freezes_inside_backbone():
    model = build_model("resnet10t", num_classes=18, head="multi", freeze_depth=99)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"heads"}


def test_count_parameters_total_ignores_freezing():
    open_total, open_trainable = count_parameters(build_model("resnet10t", num_classes=18))
    total, trainable = count_parameters(build_model("resnet10t", num_classes=18, freeze_depth=99))
    assert open_total == open_trainable == total
    assert trainable == 512 * 18 + 18


def test_negative_freeze_depth():
    with pytest.raises(MaskoptError, match="freeze_depth must be >= 0, got -1"):
        build_model("resnet10t", num_classes=18, freeze_depth=-1)


InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


class FakeInception(nn.Module):
    """Like torchvision's inception_v3: a namedtuple with aux logits in train mode."""

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)
        self.aux = nn.Linear(3, num_classes)

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        if self.training:
            return InceptionOutputs(self.fc(pooled), self.aux(pooled))
        return self.fc(pooled)


@pytest.mark.parametrize("train", [True, False])
def test_inception_style_output_gives_main_logits(train):
    model = Classifier(FakeInception(4), num_classes=4).train(train)
    x = _images()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    torch.testing.assert_close(out, model.model.fc(x.mean(dim=(2, 3))))


def test_main_logits_forms():
    logits = torch.zeros(2, 3)
    assert main_logits(logits) is logits
    assert main_logits((logits, torch.ones(2, 3))) is logits
    assert main_logits(type("Output", (), {"logits": logits})()) is logits
    with pytest.raises(MaskoptError, match="returned dict, which holds no logits"):
        main_logits({"x": logits})


def test_freeze_needs_stages():
    with pytest.raises(MaskoptError, match="FakeInception has none, so use freeze_depth 0"):
        Classifier(FakeInception(4), num_classes=4, freeze_depth=1)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(MaskoptError, match=r"unknown backbone 'resnet19'; closest timm names: resnet18"):
        build_model("resnet19", num_classes=18)


def test_check_backbone():
    check_backbone("resnet18")
    check_backbone("resnet18.a1_in1k")
    with pytest.raises(MaskoptError, match="closest timm names: .*efficientnet_b0"):
        check_backbone("efficientnetb0")
    with pytest.raises(MaskoptError, match="'resnet18' has no pretrained tag 'nonsense'; its tags: .*resnet18.a1_in1k"):
        check_backbone("resnet18.nonsense")


def _save(state_dict, path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return path


def _assert_backbone_equal(model, source_state, skip=("fc.",)):
    loaded = model.model.state_dict()
    checked = 0
    for name, value in source_state.items():
        if name.startswith(skip) or name.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path, suffix):
    source = timm.create_model("resnet10t").state_dict()  # 1000-class head, like ImageNet weights
    path = _save(source, tmp_path / f"resnet10t{suffix}")
    model = build_model("resnet10t", num_classes=18, pretrained=True, weights=path)
    _assert_backbone_equal(model, source)
    assert model.model.fc.weight.shape == (18, 512)


def test_local_weights_checkpoint_dict_and_multi_head(tmp_path):
    source = timm.create_model("resnet10t").state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": source, "epoch": 3}, path)
    model = build_model("resnet10t", num_classes=18, head="multi", pretrained=True, weights=path)
    _assert_backbone_equal(model, source)


def test_local_weights_head_of_same_size_is_kept(tmp_path):
    source = timm.create_model("resnet10t", num_classes=18).state_dict()
    path = _save(source, tmp_path / "resnet10t.safetensors")
    model = build_model("resnet10t", num_classes=18, pretrained=True, weights=path)
    _assert_backbone_equal(model, source, skip=())


def test_local_weights_of_another_architecture(tmp_path):
    path = _save(timm.create_model("test_resnet").state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(MaskoptError, match=r"other.safetensors does not fit backbone 'resnet10t': .*size mismatch"):
        build_model("resnet10t", num_classes=18, pretrained=True, weights=path)


@pytest.mark.parametrize("layout", ["resnet10t.pth", "resnet10t.safetensors", "resnet10t/model.safetensors"])
def test_weights_folder_lookup(tmp_path, layout):
    source = timm.create_model("resnet10t").state_dict()
    (tmp_path / layout).parent.mkdir(exist_ok=True)
    _save(source, tmp_path / layout)
    model = build_model("resnet10t", num_classes=18, pretrained=True, weights=tmp_path)
    _assert_backbone_equal(model, source)


def test_weights_folder_without_file(tmp_path):
    looked = (
        "resnet10t.safetensors, resnet10t.pth, resnet10t.bin, resnet10t/model.safetensors, resnet10t/pytorch_model.bin"
    )
    with pytest.raises(MaskoptError, match=rf"no weights for backbone 'resnet10t' in folder .*looked for {looked}"):
        build_model("resnet10t", num_classes=18, pretrained=True, weights=tmp_path)


def test_weights_file_missing_or_wrong_suffix(tmp_path):
    with pytest.raises(MaskoptError, match=r"weights file .*nope.pth does not exist"):
        build_model("resnet10t", num_classes=18, pretrained=True, weights=tmp_path / "nope.pth")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(MaskoptError, match=r"must end with one of .safetensors, .pth, .pt, .bin"):
        build_model("resnet10t", num_classes=18, pretrained=True, weights=tmp_path / "weights.txt")
    (tmp_path / "broken.pth").write_text("not a checkpoint")
    with pytest.raises(MaskoptError, match=r"cannot read weights file .*broken.pth"):
        build_model("resnet10t", num_classes=18, pretrained=True, weights=tmp_path / "broken.pth")


def test_weights_ignored_without_pretrained(tmp_path):
    build_model("resnet10t", num_classes=18, weights=tmp_path / "nope.pth")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE set and an empty Hugging Face cache in tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def test_pretrained_offline_without_weights_fails(offline_hub):
    with pytest.raises(MaskoptError, match=r"cannot be downloaded: HF_HUB_OFFLINE is set .*`weights:`"):
        build_model("resnet10t", num_classes=18, pretrained=True)


def test_pretrained_offline_reads_hugging_face_cache(offline_hub):
    hub_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    repo = offline_hub / ("models--" + hub_id.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    source = timm.create_model("test_resnet").state_dict()
    _save(source, repo / "snapshots" / revision / "model.safetensors")

    model = build_model("test_resnet", num_classes=18, pretrained=True)
    _assert_backbone_equal(model, source, skip=("fc.",))


def test_invalid_drop_rate():
    with pytest.raises(MaskoptError, match=r"drop_rate must lie in \[0, 1\), got 1.5"):
        build_model("resnet10t", num_classes=18, drop_rate=1.5)


def test_local_weights_with_missing_backbone_keys(tmp_path):
    # timm alone would load this non-strictly and leave layer4 random without a word.
    source = {k: v for k, v in timm.create_model("resnet10t").state_dict().items() if not k.startswith("layer4.")}
    path = _save(source, tmp_path / "partial.pth")
    with pytest.raises(
        MaskoptError, match=r"partial.pth does not fit backbone 'resnet10t': .*Missing key\(s\).*layer4"
    ):
        build_model("resnet10t", num_classes=18, pretrained=True, weights=path)
