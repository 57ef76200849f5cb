"""Turn another library's checkpoint into a weights file that maskopt's loader reads.

``import_weights`` reads a state dict (a ``torch.save`` file, loaded with
``weights_only=True``, or a ``.safetensors`` file; a checkpoint dict wrapping it under
``state_dict_ema`` / ``model_ema`` / ``state_dict`` / ``model`` also works), maps its tensors
onto the timm model ``backbone`` and writes ``<out_dir>/<backbone>.safetensors``, the name
:func:`maskopt.search.train.models.build_model` looks for in a ``weights:`` folder.

Mapping: a source whose key names are the timm model's own maps by name. Any other source
(efficientnet_pytorch, torchvision, ...) maps tensor by tensor in order onto the timm model's
``state_dict()``; the count and every shape must agree, or nothing is written. BatchNorm
``num_batches_tracked`` buffers are skipped on both sides (efficientnet_pytorch files may lack
them) and taken from the timm model. The source's classifier is kept, so an ImageNet
checkpoint stays a faithful ImageNet model; ``build_model`` replaces a classifier whose class
count differs from the one asked for.

Example:
    >>> result = import_weights(Path("efficientnet-lite0.pth"), "tf_efficientnet_lite0", Path("weights"))
    >>> result.path, result.num_tensors, result.layout
    (PosixPath('weights/tf_efficientnet_lite0.safetensors'), 296, 'efficientnet_pytorch')
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from maskopt.errors import MaskoptError
from maskopt.files import write_atomically
from maskopt.search.train.models import check_backbone

LAYOUTS = ("timm", "efficientnet_pytorch", "torchvision", "unknown")
"""Source layouts ``import_weights`` reports; all but ``timm`` are mapped by position."""

# Checkpoint keys that wrap a state dict, in the order timm's load_state_dict prefers them.
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")

_NBT = "num_batches_tracked"


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_weights` wrote.

    Attributes:
        path: The written (or already identical) ``<out_dir>/<backbone>.safetensors``.
        num_tensors: Number of tensors in the file (``num_batches_tracked`` buffers included).
        layout: The source layout detected, one of :data:`LAYOUTS`.
        wrapper: The checkpoint key the state dict was found under, or None for a bare state dict.
        num_classes: Output count of the file's classifier (0 when it has none).
        unchanged: True when the file already held exactly these weights.
    """

    path: Path
    num_tensors: int
    layout: str
    wrapper: str | None
    num_classes: int
    unchanged: bool = False


def import_weights(src: str | Path, *, backbone: str, out: str | Path = "weights", force: bool = False) -> ImportResult:
    """Convert a checkpoint into ``<out_dir>/<backbone>.safetensors`` for timm model ``backbone``.

    Args:
        src: The checkpoint: a ``torch.save`` file holding only tensors (a state dict, or a
            dict wrapping one under ``state_dict_ema`` / ``model_ema`` / ``state_dict`` /
            ``model``), or a ``.safetensors`` file.
        backbone: The timm model name the weights are for (``tf_efficientnet_lite0``), optionally
            with a pretrained tag.
        out: Folder to write into; created when missing.
        force: Replace an existing file that holds other weights.

    Returns:
        The :class:`ImportResult`.

    Raises:
        MaskoptError: Unknown backbone; a missing, unreadable or code-carrying source; a
            source that does not fit the backbone (the message names the first mismatching
            position, both keys and shapes, and both counts); or an existing different
            output file without ``force``.
    """

    src = Path(src).expanduser()
    out_dir = Path(out).expanduser()
    check_backbone(backbone)
    source, wrapper = _read_source(src)
    target, head = _target(backbone)
    layout = _detect_layout(source, target)
    if layout == "timm":
        mapped = _map_by_name(source, target, head, src, backbone)
    elif src.name.endswith(".safetensors"):
        raise MaskoptError(
            f"checkpoint {src} ({layout} layout) does not use timm's key names for {backbone!r}, and a .safetensors "
            "file does not keep the order of its tensors, so they cannot be mapped by position; import the "
            "original torch.save file (.pth/.pt/.bin) instead"
        )
    else:
        mapped = _map_by_position(source, target, head, src, backbone, layout)
    weight = mapped.get(head[0]) if head else None
    num_classes = int(weight.shape[0]) if weight is not None else 0
    path, unchanged = _write(mapped, out_dir / f"{backbone}.safetensors", force=force,
                             metadata={"format": "pt", "backbone": backbone, "source_layout": layout})
    return ImportResult(path, len(mapped), layout, wrapper, num_classes, unchanged)


# --- reading -----------------------------------------------------------------------------------


def _read_source(src: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if not src.exists():
        raise MaskoptError(f"checkpoint {src} does not exist; give the path of a .pth/.pt/.bin/.safetensors file")
    if not src.is_file():
        raise MaskoptError(f"checkpoint {src} is not a file; give the path of a .pth/.pt/.bin/.safetensors file")
    if src.name.endswith(".safetensors"):

        try:
            return _plain_state_dict(load_file(str(src), device="cpu"), src, None), None
        except (SafetensorError, OSError, ValueError) as e:
            raise MaskoptError(f"cannot read safetensors file {src}: {_first_line(e)}") from e
    try:
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise MaskoptError(
                f"checkpoint {src} holds more than weights (it needs the Python object {found.group(1)}); maskopt "
                "reads only tensors and never runs code from a file (torch.load weights_only=True). If you trust "
                "the file, load it yourself with torch.load(path, weights_only=False) and torch.save only its "
                "state dict (a dict of tensors)"
            ) from e
        raise MaskoptError(
            f"cannot read checkpoint {src} ({_unpickling_detail(e)}); expected a complete torch.save or "
            ".safetensors file"
        ) from e
    except Exception as e:  # a damaged or foreign file makes torch's unpickler raise almost anything
        raise MaskoptError(
            f"cannot read checkpoint {src} ({type(e).__name__}: {_first_line(e)}); expected a complete torch.save "
            "or .safetensors file"
        ) from e
    if not isinstance(checkpoint, dict):
        raise MaskoptError(
            f"checkpoint {src} holds a {type(checkpoint).__name__}, not a state dict; save "
            "model.state_dict() (a dict of tensors)"
        )
    wrapper = next((key for key in WRAPPER_KEYS if isinstance(checkpoint.get(key), dict)), None)
    return _plain_state_dict(checkpoint[wrapper] if wrapper else checkpoint, src, wrapper), wrapper


def _plain_state_dict(state: dict, src: Path, wrapper: str | None) -> dict[str, torch.Tensor]:
    where = f"{src}[{wrapper!r}]" if wrapper else str(src)
    if not state:
        raise MaskoptError(f"checkpoint {where} holds no tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            keys = ", ".join(map(repr, list(state)[:6]))
            raise MaskoptError(
                f"checkpoint {where}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict "
                f"(or one under {'/'.join(WRAPPER_KEYS)}); its first keys: {keys}"
            )
    keys = list(state)
    # DataParallel / DistributedDataParallel prefix every key with "module.".
    if all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _unpickling_detail(error: Exception) -> str:
    """torch's own reason for a failed weights-only load, without its advice to turn weights_only off."""
    _, marker, rest = str(error).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    return lines[0] if marker and lines else _first_line(error)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- mapping -----------------------------------------------------------------------------------


def _target(backbone: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The timm model's state dict (with its default head) and its classifier's tensor names."""

    model = timm.create_model(backbone, pretrained=False)
    target = model.state_dict()
    names = model.pretrained_cfg.get("classifier")
    names = (names,) if isinstance(names, str) else names or ()
    return target, [f"{n}.{p}" for n in names for p in ("weight", "bias") if f"{n}.{p}" in target]


def _detect_layout(source: dict, target: dict) -> str:
    if _counted(source) == _counted(target):
        return "timm"
    keys = list(source)
    if any(k.startswith("_conv_stem.") for k in keys) and any(k.startswith("_blocks.") for k in keys):
        return "efficientnet_pytorch"
    # torchvision's sequential families (efficientnet, mobilenet, convnext, regnet trunk, vgg,
    # densenet) keep their trunk under features.*, its ViT under encoder.layers.*.
    if any(k.startswith("features.") for k in keys) or any(k.startswith("encoder.layers.") for k in keys):
        return "torchvision"
    return "unknown"


def _counted(state: dict) -> list[str]:
    return sorted(k for k in state if not k.endswith(_NBT))


def _map_by_name(source: dict, target: dict, head: list[str], src: Path, backbone: str) -> dict[str, torch.Tensor]:
    keys = [k for k in target if not k.endswith(_NBT)]
    wrong = [k for k in keys if source[k].shape != target[k].shape]
    # A fine-tuned source may carry a classifier of another width: the rest must still fit.
    if wrong and not (all(k in head for k in wrong) and _head_consistent(source, keys, keys, head)):
        key = wrong[0]
        raise MaskoptError(
            f"checkpoint {src} has timm's key names for {backbone!r} but not its shapes: {key!r} is "
            f"{_shape(source[key])} in the file and {_shape(target[key])} in the model ({len(wrong)} of "
            f"{len(keys)} tensors differ); the file is for another variant of the architecture, so pass the "
            "`backbone` it was trained as"
        )
    return {key: (value.clone() if key.endswith(_NBT) else source[key]) for key, value in target.items()}


def _map_by_position(source: dict, target: dict, head: list[str], src: Path, backbone: str,
                     layout: str) -> dict[str, torch.Tensor]:
    src_keys = [k for k in source if not k.endswith(_NBT)]
    dst_keys = [k for k in target if not k.endswith(_NBT)]
    mismatches = _mismatches(source, src_keys, target, dst_keys)
    # A fine-tuned source may carry a classifier of another width: the rest must still fit.
    if (mismatches and len(src_keys) == len(dst_keys) and all(dst_keys[i] in head for i in mismatches)
            and _head_consistent(source, src_keys, dst_keys, head)):
        mismatches = []
    if mismatches or len(src_keys) != len(dst_keys):
        first = mismatches[0] if mismatches else None
        raise MaskoptError(_mismatch_message(source, src_keys, target, dst_keys, first, src, backbone, layout))
    mapped = {}
    by_target = dict(zip(dst_keys, src_keys))
    for key, value in target.items():
        mapped[key] = value.clone() if key.endswith(_NBT) else source[by_target[key]]
    return mapped


def _mismatches(source, src_keys, target, dst_keys) -> list[int]:
    return [i for i, (s, d) in enumerate(zip(src_keys, dst_keys)) if source[s].shape != target[d].shape]


def _head_consistent(source, src_keys, dst_keys, head) -> bool:
    """The source's classifier tensors (at the head's positions) agree on one class count."""
    sizes = set()
    for key in head:
        value = source[src_keys[dst_keys.index(key)]]
        if value.ndim == 0:
            return False
        sizes.add(value.shape[0])
    return len(sizes) == 1


def _mismatch_message(source, src_keys, target, dst_keys, mismatch, src, backbone, layout) -> str:
    counts = (f"the file has {len(src_keys)} tensors and {backbone!r} has {len(dst_keys)} "
              f"(not counting {_NBT} buffers)")
    if mismatch is not None:
        s, d = src_keys[mismatch], dst_keys[mismatch]
        where = (f"at position {mismatch} the file's {s!r} is {_shape(source[s])} but {backbone!r} expects "
                 f"{d!r} with {_shape(target[d])}")
    else:
        n = min(len(src_keys), len(dst_keys))
        if len(src_keys) < len(dst_keys):
            d = dst_keys[n]
            where = f"the file ends at position {n}, where {backbone!r} expects {d!r} with {_shape(target[d])}"
        else:
            s = src_keys[n]
            where = (f"{backbone!r} ends at position {n}, where the file still has {s!r} with "
                     f"{_shape(source[s])}")
    return (f"checkpoint {src} ({layout} layout) does not fit backbone {backbone!r}: {where}; {counts}. "
            "Nothing was written: a partial match would be a different model. Pass the `backbone` the "
            "checkpoint was trained as")


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, tensor.shape)) + "]"


# --- writing -----------------------------------------------------------------------------------


def _write(state: dict[str, torch.Tensor], path: Path, *, force: bool, metadata: dict) -> tuple[Path, bool]:

    out_dir = path.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise MaskoptError(f"output folder {out_dir} is a file; give a folder for `out`")
    if path.is_dir():
        raise MaskoptError(f"{path} is a folder; move it away or pick another `out`")
    # safetensors refuses tensors that share storage (tied or sliced weights): give each its own.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    if path.exists():
        if _same_weights(path, tensors):
            return path, True
        if not force:
            raise MaskoptError(f"{path} already exists and holds other weights; pass `force` to replace it")
    write_atomically(path, save(tensors, metadata=metadata))
    return path, False


def _same_weights(path: Path, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the safetensors file ``path`` holds exactly ``tensors`` (its bytes may differ: metadata order)."""

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if set(f.keys()) != set(tensors):
                return False
            for key, value in tensors.items():
                old = f.get_tensor(key)
                if old.dtype != value.dtype or old.shape != value.shape or not torch.equal(old, value):
                    return False
    except (SafetensorError, OSError, ValueError):
        return False  # not a readable safetensors file: certainly not these weights
    return True
