"""Predicting with an export folder: its checked config, its models, averaged probabilities."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model

from maskopt.errors import DataError, ExportError, MaskoptError, shorten
from maskopt.search.data import labels as L
from maskopt.search.data.cache import load_images
from maskopt.search.data.dataset import (
    detect_layout,
    format_problems,
    load_dataset,
    load_eval,
)
from maskopt.search.study.runner import setup_torch
from maskopt.search.train.loop import predict_rows
from maskopt.search.train.models import HEADS, build_model, check_backbone

CONFIG_FILE = "config.json"
EXPORT_FORMAT = "maskopt-export/1"
SUBMISSION_FILE = "submission.csv"


def eval_set_of(data_path: Path, layout: str):
    """Competition eval ids and paths, or None for layouts without an eval folder."""

    if layout != "competition":
        return None
    eval_set = load_eval(data_path)
    return eval_set.image_ids, eval_set.paths


def load_export(model_dir: str | Path, device) -> tuple[dict, list]:
    """The config and models of a one-trial export folder (weights loaded without executing code).

    Raises:
        ExportError: The config is invalid (see :func:`read_config`) or a weights file does not
            load into the model it describes (truncated, not safetensors, other shapes).
    """


    config = read_config(model_dir, allow_members=False)
    models = []
    for name in config["models"]:
        path = Path(model_dir) / name
        model = build_model(config["backbone"], num_classes=config["num_classes"], head=config["head"])
        try:
            load_model(model, str(path))
        except Exception as e:  # safetensors and torch raise several types for a bad file; all mean the same
            raise ExportError(f"{path}: cannot load the weights ({shorten(str(e), 300)}); "
                              f"re-export with maskopt export-best") from None
        models.append(model.to(device, memory_format=torch.channels_last).eval())  # see TrainConfig.channels_last
    return config, models


# A real config is a few KB; the cap keeps a hostile file from using much memory.
_CONFIG_MAX_BYTES = 1 << 20
_MAX_CLASSES = 10_000
_MAX_MODELS = 64
_IMAGE_SIZES = (8, 1024)
_MAX_OFFSET = 100


def _check_members(config: dict, model_dir: Path, path: Path, bad) -> None:
    """An ensemble's ``members``: folders inside the export, positive weights, matching classes."""
    members = config["members"]
    if (not isinstance(members, list) or not 0 < len(members) <= _MAX_MODELS
            or not all(isinstance(m, dict) for m in members)):
        raise bad("members", f"a list of 1..{_MAX_MODELS} objects with 'folder' and 'weight'")
    root = model_dir.resolve()
    for m in members:
        folder, weight = m.get("folder"), m.get("weight")
        where = f"{path}: key 'members': folder {_show(folder)}"
        if not isinstance(folder, str) or not folder or Path(folder).name != folder or folder in (".", ".."):
            raise ExportError(f"{where} must be the name of a folder inside the export")
        if not (model_dir / folder).resolve().is_relative_to(root):
            raise ExportError(f"{where} leads outside the export folder")
        if not _finite_number(weight) or weight <= 0:
            raise ExportError(f"{where}: 'weight' must be a number above 0, got {_show(weight)}")
        member = read_config(model_dir / folder, allow_members=False)
        if member["class_names"] != config["class_names"]:
            raise ExportError(f"{where} has other classes than the ensemble's class_names")


def _show(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a hostile value cannot flood the message."""
    return shorten(repr(value), limit)


def _read_capped(path: Path, limit: int, what: str) -> bytes:
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


def read_config(model_dir: str | Path, *, allow_members: bool = True) -> dict:
    """The checked ``config.json`` of an export folder.

    Every key that prediction reads is checked here, before any model is built, because the
    folder may come from anywhere: types and ranges, a backbone timm knows, and weights files
    that are ``.safetensors`` files inside the folder (no absolute paths, no ``..``, no links
    out of it). An ensemble's config lists member folders, each an export of one trial, checked
    the same way.

    Raises:
        ExportError: Naming ``config.json``, the key and the (shortened) value.
    """
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{model_dir} is not a maskopt export: {CONFIG_FILE} is missing")
    data = _read_capped(path, _CONFIG_MAX_BYTES, "an export config")
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ExportError(f"{path} is not UTF-8 text; is this folder a maskopt export?") from None
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested JSON
        raise ExportError(f"{path} is not valid JSON ({shorten(str(e), 120)})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path} must hold a JSON object, got {type(config).__name__}")

    def bad(key: str, expected: str):
        value = config.get(key)
        got = "it is missing" if key not in config else f"got {_show(value)}"
        return ExportError(f"{path}: key {key!r} must be {expected}; {got}")

    def integer(key: str, low: int, high: int) -> int:
        value = config.get(key)
        if type(value) is not int or not low <= value <= high:  # bool is an int subclass: excluded
            raise bad(key, f"an integer {low}..{high}")
        return value

    if config.get("format") != EXPORT_FORMAT:
        raise bad("format", repr(EXPORT_FORMAT))
    num_classes = integer("num_classes", 2, _MAX_CLASSES)
    names = config.get("class_names")
    if (not isinstance(names, list) or len(names) != num_classes
            or not all(isinstance(n, str) and 0 < len(n) <= 1000 for n in names) or len(set(names)) != len(names)):
        raise bad("class_names", f"a list of {num_classes} distinct non-empty names, one per class")
    if not isinstance(config.get("tta"), bool):
        raise bad("tta", "true or false")
    if "class_offsets" in config:
        offsets = config["class_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != num_classes
                or not all(_finite_number(v) and abs(v) <= _MAX_OFFSET for v in offsets)):
            raise bad("class_offsets", f"a list of {num_classes} numbers in -{_MAX_OFFSET}..{_MAX_OFFSET}, one per class")
    if "members" in config:
        if allow_members:
            _check_members(config, model_dir, path, bad)
            return config
        raise bad("members", "absent in an ensemble member's config (members do not nest)")
    backbone = config.get("backbone")
    if not isinstance(backbone, str) or not 0 < len(backbone) <= 200:
        raise bad("backbone", "a timm model name")

    try:
        check_backbone(backbone)
    except MaskoptError as e:
        raise ExportError(f"{path}: key 'backbone': {e}") from None
    if config.get("head") not in HEADS:
        raise bad("head", " or ".join(repr(h) for h in HEADS))
    if config["head"] == "multi" and num_classes != L.NUM_CLASSES:
        raise bad("num_classes", f"{L.NUM_CLASSES} with head 'multi'")
    integer("image_size", *_IMAGE_SIZES)
    for key in ("mean", "std"):
        values = config.get(key)
        if (not isinstance(values, list) or len(values) != 3
                or not all(_finite_number(v) for v in values)
                or (key == "std" and not all(v > 0 for v in values))):
            raise bad(key, "a list of 3 finite numbers" + (", all above 0" if key == "std" else ""))
    models = config.get("models")
    if (not isinstance(models, list) or not 0 < len(models) <= _MAX_MODELS
            or not all(isinstance(m, str) for m in models)):
        raise bad("models", f"a list of 1..{_MAX_MODELS} weights file names")
    root = model_dir.resolve()
    for name in models:
        where = f"{path}: key 'models': {_show(name)}"
        if not name.endswith(".safetensors"):
            raise ExportError(f"{where} is not a .safetensors file")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ExportError(f"{where} must be a file name inside the export folder")
        file = (model_dir / name).resolve()
        if not file.is_relative_to(root):  # a symlink out of the folder
            raise ExportError(f"{where} leads outside the export folder, to {file}")
        if not file.is_file():
            raise ExportError(f"{where}: no such file in {model_dir}")
    return config


def predict_images(model_dir: str | Path, paths, *, device, tta: bool | None = None,
                   cache_dir: str | Path | None = None, progress: bool = False) -> np.ndarray:
    """Class index per image: the export's averaged probabilities, plus its class offsets if any."""
    config = read_config(model_dir)
    tta = config["tta"] if tta is None else tta
    probs = predict_probs(model_dir, paths, device=device, tta=tta, cache_dir=cache_dir, progress=progress)
    scores = np.log(np.clip(probs, 1e-7, None))
    if "class_offsets" in config:
        scores = scores + np.asarray(config["class_offsets"])
    return scores.argmax(1)


def predict_probs(model_dir: str | Path, paths, *, device, tta: bool, cache_dir: str | Path | None = None,
                  progress: bool = False) -> np.ndarray:
    """Class probabilities per image: the mean over an export's models, weighted over an ensemble's members."""
    config = read_config(model_dir)
    if "members" in config:
        total = sum(m["weight"] for m in config["members"])
        return sum(m["weight"] / total * predict_probs(Path(model_dir) / m["folder"], paths, device=device, tta=tta,
                                                       cache_dir=cache_dir, progress=progress)
                   for m in config["members"])


    config, models = load_export(model_dir, device)
    cache = load_images(paths, image_size=config["image_size"], cache_dir=cache_dir, progress=progress)
    if cache.bad:
        listed = [f"{paths[i]}: {reason}" for i, reason in sorted(cache.bad.items())]
        raise DataError(format_problems(f"{len(listed)} image(s) to predict cannot be read", listed))
    images = torch.from_numpy(np.array(cache.images))  # a writable copy of the read-only memory map
    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1)
    rows = np.arange(len(paths))
    probs = sum(predict_rows(m, images, rows, device, mean, std, batch_size=64, flip=tta, channels_last=True)
                for m in models)
    return (probs / len(models)).numpy()


def predict(*, model_dir: str | Path, data: str | Path, out: str | Path | None = None, device: str = "auto",
            threads: int | None = None, tta: bool | None = None, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Write predictions of an export for a dataset.

    For the competition layout: ``ImageID,ans`` for every row of ``eval/info.csv``, in order.
    For a class-folder or CSV dataset: ``path,label`` for each of its images, with class names.

    Returns:
        The file written (default ``<model_dir>/predictions.csv``).
    """

    data = Path(data)
    config = read_config(model_dir)  # checked before the device is set up or any data is read
    torch_device = setup_torch(device, threads)
    out = Path(out) if out is not None else Path(model_dir) / "predictions.csv"
    if detect_layout(data) == "competition":
        ids, paths = eval_set_of(data, "competition")
        predictions = predict_images(model_dir, paths, device=torch_device, tta=tta, cache_dir=cache_dir, progress=progress)
        write_submission(out, ids, predictions, header=("ImageID", "ans"))
    else:
        dataset = load_dataset(data)
        predictions = predict_images(model_dir, dataset.paths, device=torch_device, tta=tta, cache_dir=cache_dir,
                                     progress=progress)
        ids = dataset.relative_paths()
        names = [config["class_names"][i] for i in predictions]
        write_submission(out, ids, names, header=("path", "label"))
    return out


def write_submission(path: Path, ids, values, *, header: tuple[str, str]) -> None:
    """Write a two-column CSV atomically (a temporary file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(zip(ids, (int(v) if isinstance(v, (int, np.integer)) else v for v in values)))
    os.replace(tmp, path)


# --- scoring ------------------------------------------------------------------------------------


