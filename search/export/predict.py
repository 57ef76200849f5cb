"""Predicting with an export folder: its checked config, its models, averaged probabilities.

Two runtimes: ``torch`` builds the export's PyTorch models; ``onnx`` runs the export's ONNX graph
(``model.onnx``: every model, the flip and the class offsets inside) on onnxruntime's CPU
provider, with no PyTorch model built. Both predict the same classes (the graph is verified
against PyTorch when it is written).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model

from maskopt.errors import DataError, ExportError, shorten
from maskopt.files import check_target, printable, write_atomically
from maskopt.search.data.cache import load_images
from maskopt.search.data.dataset import (
    detect_layout,
    format_problems,
    load_dataset,
    load_eval,
)
from maskopt.search.export.config import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EnsembleConfig,
    ExportConfig,
    read_export_config,
)
from maskopt.search.export.onnx_runtime import run_onnx
from maskopt.search.train.loop import predict_rows
from maskopt.search.train.models import build_model
from maskopt.search.train.resources import torch_session

SUBMISSION_FILE = "submission.csv"

RUNTIMES = ("torch", "onnx")
"""What ``predict`` runs an export on: its PyTorch models, or its ONNX graph on onnxruntime."""

__all__ = ["CONFIG_FILE", "EXPORT_FORMAT", "RUNTIMES", "SUBMISSION_FILE", "decoded_images", "eval_set_of",
           "load_export", "predict", "predict_images", "predict_probs", "write_submission"]


def eval_set_of(data_path: Path, layout: str):
    """Competition eval ids and paths, or None for layouts without an eval folder."""

    if layout != "competition":
        return None
    eval_set = load_eval(data_path)
    return eval_set.image_ids, eval_set.paths


def load_export(model_dir: str | Path, device) -> tuple[ExportConfig, list]:
    """The config and models of a one-trial export folder (weights loaded without executing code).

    Raises:
        ExportError: The config is invalid (see :func:`read_export_config`) or a weights file does
            not load into the model it describes (truncated, not safetensors, other shapes).
    """

    config = ExportConfig.from_json(model_dir)
    models = []
    for name in config.models:
        path = Path(model_dir) / name
        model = build_model(config.backbone, num_classes=config.num_classes, head=config.head)
        try:
            load_model(model, str(path))
        except Exception as e:  # safetensors and torch raise several types for a bad file; all mean the same
            raise ExportError(f"{path}: cannot load the weights ({shorten(str(e), 300)}); "
                              f"re-export with maskopt export-best") from None
        models.append(model.to(device, memory_format=torch.channels_last).eval())  # see TrainConfig.channels_last
    return config, models


def decoded_images(paths, *, image_size: int, cache_dir: str | Path | None = None,
                   progress: bool = False) -> np.ndarray:
    """``uint8 [N, 3, S, S]`` pixels of ``paths``, decoded as training decoded them (a writable copy).

    Raises:
        DataError: An image is missing or unreadable (every one is listed).
    """
    cache = load_images(paths, image_size=image_size, cache_dir=cache_dir, progress=progress)
    if cache.bad:
        listed = [f"{paths[i]}: {reason}" for i, reason in sorted(cache.bad.items())]
        raise DataError(format_problems(f"{len(listed)} image(s) to predict cannot be read", listed))
    return np.array(cache.images)  # a writable copy of the read-only memory map


def predict_images(model_dir: str | Path, paths, *, device, tta: bool | None = None,
                   cache_dir: str | Path | None = None, progress: bool = False, runtime: str = "torch") -> np.ndarray:
    """Class index per image: the export's averaged probabilities, plus its class offsets if any.

    With ``runtime="onnx"`` the export's ONNX graph computes them (its ``tta`` is the one it was
    exported with; ``device`` is not used), and no PyTorch model is built.
    """
    config = read_export_config(model_dir)
    if runtime == "onnx":
        graph = _onnx_of(model_dir, config, tta)
        images = decoded_images(paths, image_size=graph.preprocessing.image_size, cache_dir=cache_dir,
                                progress=progress)
        return run_onnx(Path(model_dir) / graph.file, images, num_classes=config.num_classes).scores.argmax(1)
    tta = config.tta if tta is None else tta
    probs = predict_probs(model_dir, paths, device=device, tta=tta, cache_dir=cache_dir, progress=progress)
    scores = np.log(np.clip(probs, 1e-7, None))
    if config.class_offsets is not None:
        scores = scores + np.asarray(config.class_offsets)
    return scores.argmax(1)


def predict_probs(model_dir: str | Path, paths, *, device, tta: bool, cache_dir: str | Path | None = None,
                  progress: bool = False) -> np.ndarray:
    """Class probabilities per image: the mean over an export's models, weighted over an ensemble's members."""
    config = read_export_config(model_dir)
    if isinstance(config, EnsembleConfig):
        total = sum(m.weight for m in config.members)
        return sum(m.weight / total * predict_probs(Path(model_dir) / m.folder, paths, device=device, tta=tta,
                                                    cache_dir=cache_dir, progress=progress)
                   for m in config.members)

    config, models = load_export(model_dir, device)
    images = torch.from_numpy(decoded_images(paths, image_size=config.image_size, cache_dir=cache_dir,
                                             progress=progress))
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    rows = np.arange(len(paths))
    probs = sum(predict_rows(m, images, rows, device, mean, std, batch_size=64, flip=tta, channels_last=True)
                for m in models)
    return (probs / len(models)).numpy()


def predict(*, model: str | Path, data: str | Path, out: str | Path | None = None, tta: bool | None = None,
            runtime: str = "torch", device: str = "auto", threads: int | None = None,
            cache_dir: str | Path | None = None, quiet: bool = False) -> Path:
    """Write predictions of an export for a dataset.

    For the competition layout: ``ImageID,ans`` for every row of ``eval/info.csv``, in order.
    For a class-folder or CSV dataset: ``path,label`` for each of its images, with class names.

    Args:
        model: An export folder (from ``export_best``).
        data: Competition data folder (its ``eval/`` is predicted), or a class-folder / CSV dataset.
        out: The CSV to write (default ``<model>/predictions.csv``).
        tta: Average with the horizontally flipped image (default: as exported; with ``runtime="onnx"``,
            only as exported: the flip is inside the graph).
        runtime: ``torch`` (the export's PyTorch models) or ``onnx`` (its ONNX graph, on onnxruntime's
            CPU provider; add one to an export with ``export_onnx_folder``).
        device: ``auto``, ``cpu`` or ``cuda`` (the ``torch`` runtime's).
        threads: CPU threads for torch or onnxruntime (default: the free cores); torch's setting is
            restored after.
        cache_dir: Decoded-image cache folder.
        quiet: No progress bars.

    Returns:
        The file written.

    Raises:
        ExportError: ``model`` is not a valid export (see :func:`read_export_config`), or ``out`` is not
            a regular file (a symlink, a device, a folder: it is left as it is) or cannot be written;
            with ``runtime="onnx"``, the export has no ONNX graph, or its file fails its checks
            (see :func:`~maskopt.search.export.onnx_runtime.onnx_session`).
        DataError: ``data`` cannot be read, or an image to predict is missing or unreadable.
    """

    model, data = Path(model), Path(data)
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown `runtime` {shorten(repr(runtime))}; choose {' or '.join(RUNTIMES)}")
    config = read_export_config(model)  # checked before the device is set up or any data is read
    if runtime == "onnx":
        _onnx_of(model, config, tta)
        if device == "cuda":
            raise ExportError("`runtime` onnx runs on the CPU (onnxruntime's CPU provider); leave out `device`, "
                              "or predict with `runtime` torch on the GPU")
    out = Path(out) if out is not None else model / "predictions.csv"
    check_target(out, error=ExportError)  # before the images are read and predicted
    with torch_session("cpu" if runtime == "onnx" else device, threads) as torch_device:
        if detect_layout(data) == "competition":
            ids, paths = eval_set_of(data, "competition")
            predictions = predict_images(model, paths, device=torch_device, tta=tta, cache_dir=cache_dir,
                                         progress=not quiet, runtime=runtime)
            write_submission(out, ids, predictions, header=("ImageID", "ans"))
        else:
            dataset = load_dataset(data)
            predictions = predict_images(model, dataset.paths, device=torch_device, tta=tta, cache_dir=cache_dir,
                                         progress=not quiet, runtime=runtime)
            names = [config.class_names[i] for i in predictions]
            write_submission(out, dataset.relative_paths(), names, header=("path", "label"))
    return out


def _onnx_of(model_dir, config, tta: bool | None):
    """The export's ONNX graph record, for the ``onnx`` runtime.

    Raises:
        ExportError: The export has none, or ``tta`` asks for another flip than the graph holds.
    """
    if config.onnx is None:
        raise ExportError(f"{printable(model_dir)} has no ONNX graph (no 'onnx' in its {CONFIG_FILE}): add one with "
                          f"maskopt export-onnx, or predict with `runtime` torch")
    if tta is not None and tta != config.tta:
        raise ExportError(f"the ONNX graph of {printable(model_dir)} was exported with tta={config.tta}, which is "
                          f"inside the graph: leave out `tta`, or predict with `runtime` torch")
    return config.onnx


def write_submission(path: Path, ids, values, *, header: tuple[str, str]) -> None:
    """Write a two-column CSV atomically (see :func:`maskopt.files.write_atomically`)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(zip(ids, (int(v) if isinstance(v, (int, np.integer)) else v for v in values)))
    write_atomically(path, text.getvalue(), error=ExportError)
