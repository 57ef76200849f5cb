"""Backbones for the search: a timm model behind one interface that always returns logits.

``build_model`` turns a trial's model settings (backbone name, head, pretrained weights,
frozen stages, dropout) into a :class:`Classifier`. Whatever the backbone, its ``forward``
returns a plain ``[B, num_classes]`` tensor in train and eval mode, so the training loop
needs no per-family cases.

Example:
    >>> model = build_model("resnet18", num_classes=18, head="multi", freeze_depth=2)
    >>> model.freeze_depth, model.num_stages
    (2, 5)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from timm.layers import FrozenBatchNormAct2d
from timm.utils import freeze
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from maskopt.errors import MaskoptError
from maskopt.search.data.labels import NUM_CLASSES

HEADS = ("single", "multi")
"""``single``: one linear classifier over all classes; ``multi``: mask, gender and age heads."""

MULTI_HEADS = (("mask", 3), ("gender", 2), ("age", 3))
"""The multi head's parts and sizes, in the order of the class code ``mask * 6 + gender * 3 + age``."""

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
"""Suffixes accepted for a local weights file."""

# What timm.utils.freeze turns BatchNorm2d / BatchNormAct2d into.
_FROZEN_NORMS = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
# The HF cache files timm's hub loader reads when a config names no file (safetensors first).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
# huggingface_hub's own reading of its boolean environment variables.
_ENV_TRUE = {"1", "ON", "YES", "TRUE"}


def main_logits(output) -> torch.Tensor:
    """The main logits of a backbone's output.

    Inception-style models return their auxiliary outputs beside the logits in train mode
    (torchvision's ``InceptionOutputs(logits, aux_logits)``); loss and argmax need the
    logits alone.

    Args:
        output: A tensor, an object with a ``logits`` tensor, or a tuple / namedtuple whose
            first item is the logits.

    Returns:
        The logits tensor.

    Raises:
        MaskoptError: The output holds no recognisable logits.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise MaskoptError(
        f"the backbone returned {type(output).__name__}, which holds no logits; expected a tensor, "
        "an object with a `logits` tensor, or a tuple whose first item is the logits"
    )


def check_backbone(name: str) -> None:
    """Check that timm knows a backbone name (optionally with a pretrained tag).

    Args:
        name: A timm model name such as ``resnet18`` or ``resnet18.a1_in1k``.

    Raises:
        MaskoptError: timm has no such model or tag; the message names the closest ones.
    """
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f"closest timm names: {', '.join(close)}" if close else "`timm.list_models('pattern*')` lists them"
        raise MaskoptError(f"unknown backbone {name!r}; {hint}")
    if tag:
        tagged = timm.list_models(f"{arch}.*", include_tags=True)
        if name not in tagged:
            raise MaskoptError(
                f"backbone {arch!r} has no pretrained tag {tag!r}; its tags: {', '.join(tagged) or 'none'}"
            )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Total and trainable (``requires_grad``) parameter counts of a model.

    A frozen BatchNorm keeps its affine weights as buffers; they still count in the total,
    so the total does not depend on ``freeze_depth``.
    """
    params = list(model.parameters())
    frozen_norm = sum(
        m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, _FROZEN_NORMS)
    )
    return sum(p.numel() for p in params) + frozen_norm, sum(p.numel() for p in params if p.requires_grad)


class Classifier(nn.Module):
    """A timm backbone whose ``forward`` always returns ``[B, num_classes]`` logits.

    With ``head="single"`` the timm model carries its own classifier. With ``head="multi"``
    (the 18 competition classes) the timm model returns pooled features and three linear
    heads score mask (3), gender (2) and age (3). The output is then the joint
    log-probability of the 18 classes,
    ``out[:, m * 6 + g * 3 + a] = log_softmax(mask)[m] + log_softmax(gender)[g] + log_softmax(age)[a]``.
    These 18 values already form a normalised log-distribution, so ``log_softmax`` leaves
    them unchanged and plain ``F.cross_entropy(out, y)`` equals the sum of the three heads'
    cross-entropies; ``out.argmax(1)`` combines the three heads' argmaxes. (Label smoothing
    on the 18 classes is not the same as smoothing each head.)

    Attributes:
        model: The timm model.
        heads: The multi head's ``mask`` / ``gender`` / ``age`` linear layers, or None.
        head: ``"single"`` or ``"multi"``.
        num_classes: Width of the output.
        num_stages: Number of stages (entries of timm's ``feature_info``) that can be frozen.
        freeze_depth: Number of leading stages actually frozen (the request clamped to
            ``num_stages``).
    """

    def __init__(self, model: nn.Module, *, num_classes: int, head: str = "single", freeze_depth: int = 0):
        """Wrap a timm model.

        Args:
            model: A timm model built with ``num_classes`` outputs for the single head, or
                with ``num_classes=0`` (pooled features) for the multi head.
            num_classes: Number of classes of the output.
            head: ``"single"`` or ``"multi"`` (only with 18 classes).
            freeze_depth: Number of leading stages to freeze; see :func:`build_model`.

        Raises:
            MaskoptError: Invalid head, class count or depth, or a depth above 0 for a model
                without stages.
        """
        super().__init__()
        _check_head(head, num_classes)
        self.model = model
        self.head = head
        self.num_classes = num_classes
        self.heads = None
        if head == "multi":
            # mobilenetv3 and friends put a conv/MLP after pooling: its width, not num_features.
            width = getattr(model, "head_hidden_size", None) or model.num_features
            self.heads = nn.ModuleDict({name: nn.Linear(width, size) for name, size in MULTI_HEADS})
        stages = _stage_modules(model)
        self.num_stages = len(stages)
        self.freeze_depth = _freeze_stages(model, stages, freeze_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (joint log-probabilities for the multi head)."""
        out = main_logits(self.model(x))
        if self.heads is None:
            return out
        mask, gender, age = (F.log_softmax(self.heads[name](out), dim=1) for name, _ in MULTI_HEADS)
        # Row-major flattening of [B, 3, 2, 3] puts (m, g, a) at m * 6 + g * 3 + a.
        return (mask[:, :, None, None] + gender[:, None, :, None] + age[:, None, None, :]).flatten(1)


def build_model(
    backbone: str,
    *,
    num_classes: int,
    head: str = "single",
    pretrained: bool = False,
    weights: str | Path | None = None,
    freeze_depth: int = 0,
    drop_rate: float = 0.0,
) -> Classifier:
    """Build a classifier on a timm backbone.

    Pretrained weights come from ``weights`` when given: a file (``.safetensors``, ``.pth``,
    ``.pt``, ``.bin``; a checkpoint dict with ``state_dict`` / ``model`` / EMA weights also
    works) or a folder holding ``<backbone>.safetensors|.pth|.bin`` or
    ``<backbone>/model.safetensors|pytorch_model.bin``. Every backbone weight must match the
    file (a file for another architecture is an error, not a silent partial load). The file's
    classifier is kept when it has ``num_classes`` outputs and dropped (freshly initialised)
    otherwise. Without ``weights`` timm downloads them from the Hugging Face hub; when the
    ``HF_HUB_OFFLINE`` environment variable is set, only the local HF cache is searched.

    ``freeze_depth=k`` freezes the first ``k`` stages of timm's ``feature_info`` with
    everything before them (the stem; a ViT's cls token and position embedding). Stages
    differ by family: resnet has stem, layer1..layer4; mobilenetv3 stem, then blocks 0, 1,
    3, 5; efficientnet blocks 0, 1, 2, 4, 6 (the stem goes with the first); convnext
    stages 0..3; vit each block. Frozen BatchNorm layers become ``FrozenBatchNorm2d``, so
    they keep their statistics in train mode. ``k`` above the number of stages freezes
    them all; what follows the last stage (a final norm or conv head) and the classifier
    still train.

    Args:
        backbone: A timm model name, optionally with a pretrained tag (``resnet18.a1_in1k``).
        num_classes: Number of classes of the output.
        head: ``"single"`` or ``"multi"`` (mask / gender / age heads; needs 18 classes).
        pretrained: Start from pretrained weights.
        weights: Local weights file or folder; ignored unless ``pretrained``.
        freeze_depth: Number of leading stages to freeze (0 trains everything).
        drop_rate: Dropout before the classifier (timm's ``drop_rate``).

    Returns:
        The classifier, in train mode.

    Raises:
        MaskoptError: Unknown backbone (the message names the closest timm names), invalid
            settings, missing or unfitting weights, or weights that cannot be downloaded.

    Example:
        >>> model = build_model("resnet18", num_classes=18, pretrained=True, weights="weights/")
    """
    check_backbone(backbone)
    _check_head(head, num_classes)
    if not 0.0 <= drop_rate < 1.0:
        raise MaskoptError(f"drop_rate must lie in [0, 1), got {drop_rate}")
    if freeze_depth < 0:
        raise MaskoptError(f"freeze_depth must be >= 0, got {freeze_depth}")
    timm_classes = 0 if head == "multi" else num_classes
    if not pretrained:
        model = timm.create_model(backbone, num_classes=timm_classes, drop_rate=drop_rate)
    elif weights is not None:
        model = _create_from_file(
            backbone, _weights_file(backbone, Path(weights)), num_classes=timm_classes, drop_rate=drop_rate
        )
    else:
        model = _create_from_hub(backbone, num_classes=timm_classes, drop_rate=drop_rate)
    return Classifier(model, num_classes=num_classes, head=head, freeze_depth=freeze_depth)


def _check_head(head: str, num_classes: int) -> None:
    if head not in HEADS:
        raise MaskoptError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if num_classes < 1:
        raise MaskoptError(f"num_classes must be >= 1, got {num_classes}")
    if head == "multi" and num_classes != NUM_CLASSES:
        raise MaskoptError(
            f"head 'multi' (mask / gender / age) needs the {NUM_CLASSES} competition classes, "
            f"got num_classes={num_classes}"
        )


def _stage_modules(model: nn.Module) -> list[str]:
    return [info["module"] for info in getattr(model, "feature_info", None) or []]


def _freeze_stages(model: nn.Module, stages: list[str], depth: int) -> int:
    """Freeze the first ``depth`` stages and everything before them; return the depth used."""
    if depth < 0:
        raise MaskoptError(f"freeze_depth must be >= 0, got {depth}")
    if depth == 0:
        return 0
    if not stages:
        raise MaskoptError(
            f"freeze_depth={depth} needs a backbone with stages (timm feature_info); "
            f"{type(model).__name__} has none, so use freeze_depth 0"
        )
    depth = min(depth, len(stages))
    freeze(model, _modules_through(model, stages[depth - 1]))
    # Tensors held by the model itself (a ViT's cls_token, pos_embed) feed the stem;
    # timm's group_matcher counts them as stem too.
    for param in model.parameters(recurse=False):
        param.requires_grad_(False)
    return depth


def _modules_through(root: nn.Module, target: str) -> list[str]:
    """Names of the modules that precede ``target`` (a dotted path) in registration order, and ``target``.

    A feature_info entry may sit inside a container (``blocks.3``, ``stem.conv3``): at each
    level every earlier sibling is taken whole, then the walk goes down into the next part.
    """
    names, prefix, parent = [], "", root
    for part in target.split("."):
        children = [name for name, _ in parent.named_children()]
        if part not in children:
            raise MaskoptError(f"timm feature_info names module {target!r}, which {type(root).__name__} lacks")
        names += [prefix + name for name in children[: children.index(part)]]
        prefix += part + "."
        parent = getattr(parent, part)
    return names + [target]


def _weights_file(backbone: str, path: Path) -> Path:
    path = path.expanduser()
    if path.is_dir():
        candidates = [path / f"{backbone}{suffix}" for suffix in (".safetensors", ".pth", ".bin")]
        candidates += [path / backbone / "model.safetensors", path / backbone / "pytorch_model.bin"]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c.relative_to(path)) for c in candidates)
        raise MaskoptError(f"no weights for backbone {backbone!r} in folder {path}; looked for {looked}")
    if not path.is_file():
        raise MaskoptError(f"weights file {path} does not exist")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise MaskoptError(f"weights file {path} must end with one of {', '.join(WEIGHT_SUFFIXES)}")
    return path


def _create_from_file(backbone: str, path: Path, *, num_classes: int, drop_rate: float) -> nn.Module:
    try:
        state_dict = timm.models.load_state_dict(str(path))
    except Exception as e:  # torch, pickle and safetensors each raise their own types
        raise MaskoptError(f"cannot read weights file {path}: {e}") from e
    # timm drops the classifier only when num_classes differs from its *config's* count, and
    # then loads non-strictly, so a file for another architecture would load partly and
    # silently. Building the model with the file's own head count makes timm load strictly;
    # the head is replaced afterwards if its size is not the one asked for.
    file_classes = _file_num_classes(backbone, state_dict)
    overlay = dict(file=str(path), state_dict=state_dict, num_classes=file_classes, label_offset=0)
    try:
        model = timm.create_model(
            backbone, pretrained=True, num_classes=file_classes, drop_rate=drop_rate, pretrained_cfg_overlay=overlay
        )
    except RuntimeError as e:
        raise MaskoptError(f"weights file {path} does not fit backbone {backbone!r}: {_shorten(e)}") from e
    # The config would otherwise keep a second reference to every loaded tensor alive.
    model.pretrained_cfg.pop("state_dict", None)
    if file_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


def _file_num_classes(backbone: str, state_dict: dict) -> int:
    cfg = timm.models.get_pretrained_cfg(backbone)
    classifier = cfg.classifier if cfg else None
    for name in (classifier,) if isinstance(classifier, str) else classifier or ():
        weight = state_dict.get(f"{name}.weight")
        if weight is not None:
            return weight.shape[0]
    return 0


def _create_from_hub(backbone: str, *, num_classes: int, drop_rate: float) -> nn.Module:
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise MaskoptError(
            f"timm has no pretrained weights for backbone {backbone!r}; set pretrained: false, "
            "or give a local file in the space's `weights:`"
        )
    if _hub_offline():
        # Offline, timm's hub path fails fast but its URL fallback waits on the network: read the cache here.
        cached = _hub_cached_file(cfg.hf_hub_id, cfg.hf_hub_filename)
        if cached is None:
            raise MaskoptError(
                f"pretrained weights for backbone {backbone!r} cannot be downloaded: HF_HUB_OFFLINE is set and "
                f"they are not in the Hugging Face cache. Give a local file in the space's `weights:` (a "
                f"{'/'.join(WEIGHT_SUFFIXES)} file, or a folder holding {backbone}.safetensors), "
                "or set pretrained: false"
            )
        return _create_from_file(backbone, Path(cached), num_classes=num_classes, drop_rate=drop_rate)
    try:
        return timm.create_model(backbone, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
    except OSError as e:  # connection, HTTP and hub errors all derive from OSError
        raise MaskoptError(
            f"cannot download pretrained weights for backbone {backbone!r} ({e}); without network, "
            "download the file elsewhere and give its path in the space's `weights:`"
        ) from e
    except RuntimeError as e:
        raise MaskoptError(f"cannot load pretrained weights for backbone {backbone!r}: {_shorten(e)}") from e


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _ENV_TRUE


def _hub_cached_file(hub_id: str | None, filename: str | None) -> str | None:
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    for name in (filename,) if filename else _HUB_FILES:
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _shorten(error: Exception, limit: int = 600) -> str:
    # torch lists every missing key; a wrong file can name hundreds.
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."
