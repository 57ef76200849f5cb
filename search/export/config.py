"""An export folder's ``config.json``, typed: how to rebuild and feed its models, and where they came from.

:class:`ExportConfig` is one trial's export (its weights files are in the folder);
:class:`EnsembleConfig` is an ensemble, whose members are folders inside it, each an export of
one trial. :func:`read_export_config` reads either, checking every key it reads (the folder
may come from anywhere: a shared drive, a download), and :meth:`ExportConfig.to_json` /
:meth:`EnsembleConfig.to_json` are the only writers of the file.

The JSON keeps the keys and values of every export written so far (``maskopt-export/1``); the
keys that only say where the model came from (study, trial, scores, versions) may be missing
in a hand-made export, and are then None. The ``onnx`` key (:class:`OnnxFile`) is there only when the
export holds an ONNX graph of its models (``export-best --onnx``, ``export-onnx``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maskopt.errors import ExportError, MaskoptError, shorten
from maskopt.files import write_atomically
from maskopt.search.data import labels as L

CONFIG_FILE = "config.json"
EXPORT_FORMAT = "maskopt-export/1"

# A real config is a few KB; the cap keeps a hostile file from using much memory.
_CONFIG_MAX_BYTES = 1 << 20
_MAX_CLASSES = 10_000
_MAX_MODELS = 64
_IMAGE_SIZES = (8, 1024)
_MAX_OFFSET = 100

INPUT_NAME = "images"
"""An export's ONNX graph's input: ``uint8 [batch, 3, image_size, image_size]``, RGB pixels."""

OUTPUT_NAMES = ("probs", "scores")
"""The graph's outputs, both ``float32 [batch, num_classes]``: the averaged class probabilities, and
``log(max(probs, 1e-7)) + class_offsets``, whose argmax is maskopt's predicted class."""

OPSETS = (13, 20)
"""The ONNX opsets maskopt writes: from 13, ONNX's Softmax is torch's (over one axis); 20 is the most
torch's TorchScript exporter writes."""


def show_value(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a hostile value cannot flood the message."""
    return shorten(repr(value), limit)


def read_capped(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refusing a file over ``limit`` bytes before reading it."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise ExportError(f"{path} is {size} bytes, too large for {what} (at most {limit})")
        return path.read_bytes()
    except OSError as e:
        raise ExportError(f"{path} cannot be read: {e.strerror or e}") from None


def _finite_number(value) -> bool:
    if type(value) not in (int, float):  # bool and strings excluded
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int of hundreds of digits
        return False


def _number(value) -> bool:
    return type(value) in (int, float)


def _share(value) -> bool:
    return _finite_number(value) and 0 <= value <= 1


def _write_json(model_dir: str | Path, data: dict) -> Path:
    """Write ``config.json`` atomically (see :func:`maskopt.files.write_atomically`)."""
    return write_atomically(Path(model_dir) / CONFIG_FILE, json.dumps(data, indent=2) + "\n", error=ExportError)


def _drop_none(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None}


def _list(value):
    return None if value is None else list(value)



# --- the ONNX graph's record ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OnnxPreprocessing:
    """What a deployer does to an image before the graph, for the export's config.

    The graph's input is pixels, not a normalised tensor: mean and std are applied inside it, each
    member with its own (so a deployer must not normalise; the member configs keep the values).

    Attributes:
        image_size: The side of the square input.
        resize: ``shorter_side_bilinear``: the shorter side resized to ``image_size``, bilinear.
            maskopt decodes with Pillow (``ImageOps.fit``); for JPEGs it first lets the decoder
            downscale by a power of two (``Image.draft``), so another decoder's pixels differ a
            little.
        crop: ``centre``: the centred ``image_size`` square of the resized image.
        channel_order, layout, input_dtype: ``RGB``, ``NCHW``, ``uint8`` (values 0..255).
        normalisation: ``in_graph``.
        input_name, outputs: The graph's input and output names.
    """

    image_size: int
    resize: str = "shorter_side_bilinear"
    crop: str = "centre"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    input_dtype: str = "uint8"
    normalisation: str = "in_graph"
    input_name: str = INPUT_NAME
    outputs: tuple[str, ...] = OUTPUT_NAMES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data, where: str, *, image_size: int) -> OnnxPreprocessing:
        """The checked record of a config's JSON object.

        Args:
            data: The parsed JSON value.
            where: Names it in messages (the file and key).
            image_size: The export's image size (already checked), which the record must repeat.

        Raises:
            ExportError: A key is missing, unknown, or holds another value than maskopt writes.
        """
        if not isinstance(data, dict):
            raise ExportError(f"{where} must be a JSON object, got {show_value(data)}")
        expected = cls(image_size=image_size).to_dict()
        unknown = sorted(set(data) - set(expected))
        if unknown:
            raise ExportError(f"{where}: unknown key(s) {show_value(unknown)}; known: {', '.join(expected)}")
        for key, value in expected.items():
            if type(data.get(key)) is not type(value) or data.get(key) != value:  # type: True is not 1
                what = "the export's image size" if key == "image_size" else "the only value this maskopt writes"
                raise ExportError(f"{where}: {key!r} must be {value!r} ({what}), got {show_value(data.get(key))}")
        return cls(image_size=image_size)


@dataclass(frozen=True)
class OnnxCheck:
    """PyTorch against onnxruntime on the same images.

    Attributes:
        images: How many images both ran on.
        max_abs_score_diff: Largest difference of the ``scores`` (log-probabilities plus offsets).
        top1_agreement: Share of images whose argmax agrees.
        torch_macro_f1, onnx_macro_f1: Macro F1 of each against the labels (None without labels).
        tolerance: The largest accepted ``max_abs_score_diff``.
        passed: ``max_abs_score_diff <= tolerance`` (False when onnxruntime returned NaN).
    """

    images: int
    max_abs_score_diff: float
    top1_agreement: float
    torch_macro_f1: float | None
    onnx_macro_f1: float | None
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data, where: str) -> OnnxCheck:
        """The checked record of a config's JSON object, one rule per field.

        Raises:
            ExportError: A key is missing or unknown, or holds a value no check produces.
        """
        rules = {
            "images": ("a whole number above 0", lambda v: type(v) is int and v > 0),
            "max_abs_score_diff": ("a number from 0", lambda v: _finite_number(v) and v >= 0),
            "top1_agreement": ("a number from 0 to 1", _share),
            "torch_macro_f1": ("a number from 0 to 1, or null", lambda v: v is None or _share(v)),
            "onnx_macro_f1": ("a number from 0 to 1, or null", lambda v: v is None or _share(v)),
            "tolerance": ("a number above 0", lambda v: _finite_number(v) and v > 0),
            "passed": ("true or false", lambda v: isinstance(v, bool)),
        }
        if not isinstance(data, dict):
            raise ExportError(f"{where} must be a JSON object, got {show_value(data)}")
        unknown = sorted(set(data) - set(rules))
        if unknown:
            raise ExportError(f"{where}: unknown key(s) {show_value(unknown)}; known: {', '.join(rules)}")
        for key, (expected, ok) in rules.items():
            if key not in data or not ok(data[key]):
                got = "it is missing" if key not in data else f"got {show_value(data[key])}"
                raise ExportError(f"{where}: {key!r} must be {expected}; {got}")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class OnnxFile:
    """The ONNX graph of an export's models: ``config.json``'s ``onnx`` key.

    Attributes:
        file: The ``.onnx`` file's name in the export folder.
        opset: The ONNX opset it was written with.
        preprocessing: What to feed it.
        check: How it compared with PyTorch when it was written.
    """

    file: str
    opset: int
    preprocessing: OnnxPreprocessing
    check: OnnxCheck

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "opset": self.opset, "preprocessing": self.preprocessing.to_dict(),
                "check": self.check.to_dict()}


# --- the two kinds of export -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """The config of one trial's export (``models`` are weights files in its folder).

    Attributes:
        backbone, head, num_classes: The model to build for each weights file.
        class_names: One per class, in class order.
        image_size, mean, std: How images are fed (resized square, normalised per channel).
        models: Weights files (``.safetensors``) in the folder; their probabilities are averaged.
        tta: Whether ``predict`` averages with the horizontally flipped image by default.
        layout: The dataset layout it was trained on.
        age_old_training, age_old_official: The age cut it was trained with, and the competition's.
        study, trial, params, cv_macro_f1, fold_macro_f1: Where it came from.
        epochs: Epochs retrained (a list, one per fold, for a fold ensemble).
        dataset_fingerprint, versions: The data and library versions it was trained with.
        class_offsets: Per-class offsets added to the log-probabilities (``--calibrate``).
        calibration: What the offsets are worth on out-of-fold predictions.
        onnx: The export's ONNX graph of its models, when it has one.
    """

    backbone: str
    head: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    models: tuple[str, ...]
    tta: bool
    layout: str | None = None
    age_old_training: int | None = None
    age_old_official: int | None = None
    study: str | None = None
    trial: int | None = None
    params: dict[str, Any] | None = None
    cv_macro_f1: float | None = None
    fold_macro_f1: tuple[float, ...] | None = None
    epochs: int | tuple[int, ...] | None = None
    dataset_fingerprint: str | None = None
    versions: dict[str, str] | None = None
    class_offsets: tuple[float, ...] | None = None
    calibration: dict[str, Any] | None = None
    onnx: OnnxFile | None = None
    format: str = EXPORT_FORMAT

    @classmethod
    def from_json(cls, model_dir: str | Path) -> ExportConfig:
        """The checked config of a one-trial export folder (an ensemble's is refused).

        Raises:
            ExportError: Naming ``config.json``, the key and the (shortened) value.
        """
        return _read(Path(model_dir), allow_members=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in the key order exports have always had (keys that are None left out)."""
        return _drop_none({
            "format": self.format, "backbone": self.backbone, "head": self.head, "num_classes": self.num_classes,
            "class_names": list(self.class_names), "layout": self.layout, "image_size": self.image_size,
            "mean": list(self.mean), "std": list(self.std), "age_old_training": self.age_old_training,
            "age_old_official": self.age_old_official, "models": list(self.models), "study": self.study,
            "trial": self.trial, "params": self.params, "cv_macro_f1": self.cv_macro_f1,
            "fold_macro_f1": _list(self.fold_macro_f1),
            "epochs": list(self.epochs) if isinstance(self.epochs, tuple) else self.epochs,
            "dataset_fingerprint": self.dataset_fingerprint, "versions": self.versions, "tta": self.tta,
            "class_offsets": _list(self.class_offsets), "calibration": self.calibration,
            "onnx": None if self.onnx is None else self.onnx.to_dict(),
        })

    def to_json(self, model_dir: str | Path) -> Path:
        """Write ``<model_dir>/config.json`` (atomically); the one writer of an export's config."""
        return _write_json(model_dir, self.to_dict())


@dataclass(frozen=True)
class MemberRef:
    """One member of an ensemble: a folder inside the ensemble's, holding a one-trial export."""

    folder: str
    weight: float
    trial: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({"folder": self.folder, "weight": self.weight, "trial": self.trial})


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig:
    """The config of an ensemble export: member folders whose probabilities are averaged by weight.

    Attributes:
        members: The member folders, their weights and trials.
        ensemble: What the selection chose and its out-of-fold scores (``EnsembleReport``).
        Other attributes: as in :class:`ExportConfig`; ``trial`` and ``cv_macro_f1`` are the
            study's best trial's.
    """

    num_classes: int
    class_names: tuple[str, ...]
    members: tuple[MemberRef, ...]
    tta: bool
    layout: str | None = None
    study: str | None = None
    trial: int | None = None
    cv_macro_f1: float | None = None
    ensemble: dict[str, Any] | None = None
    dataset_fingerprint: str | None = None
    versions: dict[str, str] | None = None
    class_offsets: tuple[float, ...] | None = None
    calibration: dict[str, Any] | None = None
    onnx: OnnxFile | None = None
    format: str = EXPORT_FORMAT

    @classmethod
    def from_json(cls, model_dir: str | Path) -> EnsembleConfig:
        """The checked config of an ensemble export folder, its members' configs checked too.

        Raises:
            ExportError: Naming ``config.json``, the key and the (shortened) value.
        """
        config = _read(Path(model_dir), allow_members=True)
        if not isinstance(config, EnsembleConfig):
            raise _Reader(Path(model_dir) / CONFIG_FILE, config.to_dict()).bad(
                "members", f"a list of 1..{_MAX_MODELS} objects with 'folder' and 'weight'")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in the key order exports have always had (keys that are None left out)."""
        return _drop_none({
            "format": self.format, "num_classes": self.num_classes, "class_names": list(self.class_names),
            "layout": self.layout, "members": [m.to_dict() for m in self.members], "study": self.study,
            "trial": self.trial, "cv_macro_f1": self.cv_macro_f1, "ensemble": self.ensemble,
            "dataset_fingerprint": self.dataset_fingerprint, "versions": self.versions, "tta": self.tta,
            "class_offsets": _list(self.class_offsets), "calibration": self.calibration,
            "onnx": None if self.onnx is None else self.onnx.to_dict(),
        })

    def to_json(self, model_dir: str | Path) -> Path:
        """Write ``<model_dir>/config.json`` (atomically); the one writer of an export's config."""
        return _write_json(model_dir, self.to_dict())


def read_export_config(model_dir: str | Path) -> ExportConfig | EnsembleConfig:
    """The checked ``config.json`` of an export folder: one trial's, or an ensemble's.

    Every key that prediction reads is checked here, before any model is built, because the
    folder may come from anywhere: types and ranges, a backbone timm knows, and weights files
    that are ``.safetensors`` files inside the folder (no absolute paths, no ``..``, no links
    out of it). An ensemble's config lists member folders, each an export of one trial, checked
    the same way. The keys that say where the model came from are checked when present.

    Raises:
        ExportError: Naming ``config.json``, the key and the (shortened) value.
    """
    return _read(Path(model_dir), allow_members=True)


def looks_like_export(folder: Path) -> bool:
    """True when ``folder`` holds a config.json of the export format: maskopt wrote it, so
    replacing the folder loses nothing else (the rest of the config need not be valid)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == EXPORT_FORMAT


# --- reading ---------------------------------------------------------------------------------------


class _Reader:
    """Checks of the keys of one parsed config.json, one per field, each with its message."""

    def __init__(self, path: Path, raw: dict):
        self.path = path
        self.raw = raw

    def bad(self, key: str, expected: str) -> ExportError:
        got = "it is missing" if key not in self.raw else f"got {show_value(self.raw.get(key))}"
        return ExportError(f"{self.path}: key {key!r} must be {expected}; {got}")

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw.get(key)
        if type(value) is not int or not low <= value <= high:  # bool is an int subclass: excluded
            raise self.bad(key, f"an integer {low}..{high}")
        return value

    # Required keys, read by prediction.

    def format(self) -> str:
        if self.raw.get("format") != EXPORT_FORMAT:
            raise self.bad("format", repr(EXPORT_FORMAT))
        return EXPORT_FORMAT

    def class_names(self, num_classes: int) -> tuple[str, ...]:
        names = self.raw.get("class_names")
        if (not isinstance(names, list) or len(names) != num_classes
                or not all(isinstance(n, str) and 0 < len(n) <= 1000 for n in names) or len(set(names)) != len(names)):
            raise self.bad("class_names", f"a list of {num_classes} distinct non-empty names, one per class")
        return tuple(names)

    def tta(self) -> bool:
        if not isinstance(self.raw.get("tta"), bool):
            raise self.bad("tta", "true or false")
        return self.raw["tta"]

    def class_offsets(self, num_classes: int) -> tuple[float, ...] | None:
        if "class_offsets" not in self.raw:
            return None
        offsets = self.raw["class_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != num_classes
                or not all(_finite_number(v) and abs(v) <= _MAX_OFFSET for v in offsets)):
            raise self.bad("class_offsets",
                           f"a list of {num_classes} numbers in -{_MAX_OFFSET}..{_MAX_OFFSET}, one per class")
        return tuple(offsets)

    def backbone(self) -> str:
        from maskopt.search.train.models import check_backbone

        backbone = self.raw.get("backbone")
        if not isinstance(backbone, str) or not 0 < len(backbone) <= 200:
            raise self.bad("backbone", "a timm model name")
        try:
            check_backbone(backbone)
        except MaskoptError as e:
            raise ExportError(f"{self.path}: key 'backbone': {e}") from None
        return backbone

    def head(self, num_classes: int) -> str:
        from maskopt.search.train.models import HEADS

        head = self.raw.get("head")
        if head not in HEADS:
            raise self.bad("head", " or ".join(repr(h) for h in HEADS))
        if head == "multi" and num_classes != L.NUM_CLASSES:
            raise self.bad("num_classes", f"{L.NUM_CLASSES} with head 'multi'")
        return head

    def normalisation(self, key: str) -> tuple[float, ...]:
        values = self.raw.get(key)
        if (not isinstance(values, list) or len(values) != 3
                or not all(_finite_number(v) for v in values)
                or (key == "std" and not all(v > 0 for v in values))):
            raise self.bad(key, "a list of 3 finite numbers" + (", all above 0" if key == "std" else ""))
        return tuple(values)

    def models(self, model_dir: Path) -> tuple[str, ...]:
        models = self.raw.get("models")
        if (not isinstance(models, list) or not 0 < len(models) <= _MAX_MODELS
                or not all(isinstance(m, str) for m in models)):
            raise self.bad("models", f"a list of 1..{_MAX_MODELS} weights file names")
        root = model_dir.resolve()
        for name in models:
            where = f"{self.path}: key 'models': {show_value(name)}"
            if not name.endswith(".safetensors"):
                raise ExportError(f"{where} is not a .safetensors file")
            if Path(name).is_absolute() or ".." in Path(name).parts or "\0" in name:  # NUL: no path can hold it
                raise ExportError(f"{where} must be a file name inside the export folder")
            file = (model_dir / name).resolve()
            if not file.is_relative_to(root):  # a symlink out of the folder
                raise ExportError(f"{where} leads outside the export folder, to {file}")
            if not file.is_file():
                raise ExportError(f"{where}: no such file in {model_dir}")
        return tuple(models)

    def members(self, model_dir: Path, class_names: tuple[str, ...]) -> tuple[tuple[MemberRef, ...], set[int]]:
        """An ensemble's ``members`` (folders inside the export, positive weights, matching classes),
        and the image sizes they take."""
        members = self.raw["members"]
        if (not isinstance(members, list) or not 0 < len(members) <= _MAX_MODELS
                or not all(isinstance(m, dict) for m in members)):
            raise self.bad("members", f"a list of 1..{_MAX_MODELS} objects with 'folder' and 'weight'")
        root = model_dir.resolve()
        refs, sizes = [], set()
        for m in members:
            folder, weight, trial = m.get("folder"), m.get("weight"), m.get("trial")
            where = f"{self.path}: key 'members': folder {show_value(folder)}"
            if (not isinstance(folder, str) or not folder or Path(folder).name != folder or folder in (".", "..")
                    or "\0" in folder):
                raise ExportError(f"{where} must be the name of a folder inside the export")
            if not (model_dir / folder).resolve().is_relative_to(root):
                raise ExportError(f"{where} leads outside the export folder")
            if not _finite_number(weight) or weight <= 0:
                raise ExportError(f"{where}: 'weight' must be a number above 0, got {show_value(weight)}")
            if trial is not None and type(trial) is not int:
                raise ExportError(f"{where}: 'trial' must be a trial number, got {show_value(trial)}")
            member = _read(model_dir / folder, allow_members=False)
            if member.class_names != class_names:
                raise ExportError(f"{where} has other classes than the ensemble's class_names")
            refs.append(MemberRef(folder, weight, trial))
            sizes.add(member.image_size)
        return tuple(refs), sizes

    def onnx(self, model_dir: Path, image_sizes: set[int]) -> OnnxFile | None:
        """The ``onnx`` key: a ``.onnx`` file in the folder, an opset maskopt writes, the records of
        its input and its check; None when absent (an export without a graph, or from before them)."""
        if "onnx" not in self.raw:
            return None
        raw = self.raw["onnx"]
        keys = ("file", "opset", "preprocessing", "check")
        if not isinstance(raw, dict):
            raise self.bad("onnx", f"a JSON object with {', '.join(map(repr, keys))}")
        where = f"{self.path}: key 'onnx'"
        unknown = sorted(set(raw) - set(keys))
        if unknown:
            raise ExportError(f"{where}: unknown key(s) {show_value(unknown)}; known: {', '.join(keys)}")
        name = raw.get("file")
        if not isinstance(name, str) or not name.endswith(".onnx") or Path(name).name != name or "\0" in name:
            raise ExportError(f"{where}: 'file' must be the name of a .onnx file inside the export folder, "
                              f"got {show_value(name)}")
        file = (model_dir / name).resolve()
        if not file.is_relative_to(model_dir.resolve()):  # a symlink out of the folder
            raise ExportError(f"{where}: 'file' {show_value(name)} leads outside the export folder, to {file}")
        if not file.is_file():
            raise ExportError(f"{where}: 'file' {show_value(name)} is missing or not a regular file in {model_dir}")
        opset = raw.get("opset")
        if type(opset) is not int or not OPSETS[0] <= opset <= OPSETS[1]:
            raise ExportError(f"{where}: 'opset' must be an integer {OPSETS[0]}..{OPSETS[1]}, got {show_value(opset)}")
        if len(image_sizes) != 1:
            raise ExportError(f"{where}: an ONNX graph takes one image size, and the members take "
                              f"{', '.join(map(str, sorted(image_sizes)))} px")
        preprocessing = OnnxPreprocessing.from_dict(raw.get("preprocessing"), f"{where}: 'preprocessing'",
                                                    image_size=min(image_sizes))
        return OnnxFile(file=name, opset=opset, preprocessing=preprocessing,
                        check=OnnxCheck.from_dict(raw.get("check"), f"{where}: 'check'"))

    # Keys that say where the model came from: None when missing (a hand-made export), checked when present.

    def optional(self, key: str, expected: str, ok) -> Any:
        value = self.raw.get(key)
        if value is None:
            return None
        if not ok(value):
            raise self.bad(key, expected)
        return value

    def text(self, key: str) -> str | None:
        return self.optional(key, "a string", lambda v: isinstance(v, str))

    def whole(self, key: str) -> int | None:
        return self.optional(key, "an integer", lambda v: type(v) is int)

    def number(self, key: str) -> float | None:
        return self.optional(key, "a number", _number)

    def numbers(self, key: str) -> tuple[float, ...] | None:
        value = self.optional(key, "a list of numbers", lambda v: isinstance(v, list) and all(map(_number, v)))
        return None if value is None else tuple(value)

    def mapping(self, key: str) -> dict | None:
        return self.optional(key, "a JSON object", lambda v: isinstance(v, dict))

    def versions(self) -> dict[str, str] | None:
        return self.optional("versions", "an object of library versions",
                             lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))

    def epochs(self) -> int | tuple[int, ...] | None:
        value = self.optional("epochs", "an integer, or a list of integers (one per fold)",
                              lambda v: type(v) is int or (isinstance(v, list) and all(type(x) is int for x in v)))
        return tuple(value) if isinstance(value, list) else value


def _read(model_dir: Path, *, allow_members: bool) -> ExportConfig | EnsembleConfig:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{model_dir} is not a maskopt export: {CONFIG_FILE} is missing")
    data = read_capped(path, _CONFIG_MAX_BYTES, "an export config")
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ExportError(f"{path} is not UTF-8 text; is this folder a maskopt export?") from None
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested JSON
        raise ExportError(f"{path} is not valid JSON ({shorten(str(e), 120)})") from None
    if not isinstance(raw, dict):
        raise ExportError(f"{path} must hold a JSON object, got {type(raw).__name__}")

    r = _Reader(path, raw)
    r.format()
    num_classes = r.integer("num_classes", 2, _MAX_CLASSES)
    class_names = r.class_names(num_classes)
    tta = r.tta()
    class_offsets = r.class_offsets(num_classes)
    shared = dict(num_classes=num_classes, class_names=class_names, tta=tta, class_offsets=class_offsets)
    if "members" in raw:
        if not allow_members:
            raise r.bad("members", "absent in an ensemble member's config (members do not nest)")
        members, sizes = r.members(model_dir, class_names)
        return EnsembleConfig(
            **shared, members=members, layout=r.text("layout"), study=r.text("study"), trial=r.whole("trial"),
            cv_macro_f1=r.number("cv_macro_f1"), ensemble=r.mapping("ensemble"),
            dataset_fingerprint=r.text("dataset_fingerprint"), versions=r.versions(),
            calibration=r.mapping("calibration"), onnx=r.onnx(model_dir, sizes))
    backbone = r.backbone()
    head = r.head(num_classes)
    image_size = r.integer("image_size", *_IMAGE_SIZES)
    mean, std = r.normalisation("mean"), r.normalisation("std")
    models = r.models(model_dir)
    return ExportConfig(
        **shared, backbone=backbone, head=head, image_size=image_size, mean=mean, std=std, models=models,
        layout=r.text("layout"), age_old_training=r.whole("age_old_training"),
        age_old_official=r.whole("age_old_official"), study=r.text("study"), trial=r.whole("trial"),
        params=r.mapping("params"), cv_macro_f1=r.number("cv_macro_f1"), fold_macro_f1=r.numbers("fold_macro_f1"),
        epochs=r.epochs(), dataset_fingerprint=r.text("dataset_fingerprint"), versions=r.versions(),
        calibration=r.mapping("calibration"), onnx=r.onnx(model_dir, {image_size}))
