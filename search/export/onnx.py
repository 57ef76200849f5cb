"""ONNX export of maskopt's models: one graph from uint8 pixels to maskopt's prediction, checked against PyTorch.

The graph does everything :func:`maskopt.search.export.predict.predict_images` does after decoding:

    images  uint8 [batch, 3, S, S], RGB pixels (decoded as maskopt decodes: see OnnxPreprocessing)
      -> per member: float, / 255, (x - mean) / std with the member's own mean and std,
         softmax of its output (the multi head's joint log-probabilities become probabilities),
         averaged with the mirrored image when ``tta``
      -> the weighted mean over members (weights normalised to sum 1)
    probs   float32 [batch, C]  the averaged probabilities (``predict_probs``)
    scores  float32 [batch, C]  log(max(probs, 1e-7)) + class_offsets; argmax = maskopt's class

So a deployer feeds resized uint8 pixels and never normalises: a fold ensemble (k models of one
trial, equal weights), a greedy ensemble of trials (their weights) and class offsets all sit in
the one file. Members must share one image size: a graph has one input. An ensemble of members
trained at different sizes is refused (:func:`one_image_size`); one file per size, averaged by the
caller, is future work.

An export folder gets its graph from :func:`export_graph` (``export-best --onnx``, ``export-onnx``):
``model.onnx`` beside the weights, verified against PyTorch, recorded under ``config.json``'s ``onnx``
key (:class:`~maskopt.search.export.config.OnnxFile`); ``predict --runtime onnx`` runs it.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). It needs
no package beyond torch, exports resnet10t, mobilenetv3_small_050, tf_efficientnet_lite0 and ViTs
in under a second each where the torch.export-based one (``dynamo=True``) took 4-12 s and needs
onnxscript and onnx_ir too, and both gave the same outputs (max difference 1e-7..3e-6). torch
calls it deprecated; should a release remove it, tests/search/export/test_onnx.py fails at once,
and the change is ``dynamo=True`` with ``dynamic_shapes`` here and onnxscript in the ``onnx``
extra. Operators it lacks (``aten::rms_norm`` at these opsets, for example) are refused with the
backbone's name and the exporter's message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskopt.errors import ExportError
from maskopt.files import write_atomically
from maskopt.search.export.config import (
    INPUT_NAME,
    OPSETS,
    OUTPUT_NAMES,
    EnsembleConfig,
    ExportConfig,
    OnnxCheck,
    OnnxFile,
    OnnxPreprocessing,
    read_export_config,
    show_value,
)
from maskopt.search.export.onnx_runtime import MAX_ONNX_BYTES, first_line, require, run_onnx
from maskopt.search.export.predict import load_export
from maskopt.search.train.loop import mean_std, predict_rows
from maskopt.search.train.metrics import macro_f1
from maskopt.search.train.models import Classifier

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
"""ONNX opset written by default: onnxruntime >= 1.13, TensorRT 8.6 and OpenVINO 2023 all run it, and
it has LayerNormalization, so ViTs export without decomposing it."""

TOLERANCE = 1e-3
"""Largest accepted difference between PyTorch's and onnxruntime's ``scores`` (log-probabilities).

Both run float32 CPU kernels that sum in other orders (oneDNN against MLAS, fused or not). Measured
on random weights: up to 3e-6 on the tiny test models, 2e-7 (resnet18), 1e-6 (mobilenetv3_large_100)
and 4e-5 (tf_efficientnet_lite0, 80 and 224 px); deep nets with trained, larger logits reach about
1e-4. A score is a log-probability, so its error is the probability's relative error; 1e-3 leaves
10x room above the worst of those and is far below anything a real difference between the graphs
(a missing normalisation, another weight, a dropped flip) produces. Top-1 agreement needs no rule of
its own: with every score within ``t``, the two argmaxes can differ only on an image whose top two
PyTorch scores are within ``2 t`` (a tie to float32 noise), so the check passes on the score
difference alone and reports the agreement beside it.
"""

PROB_FLOOR = 1e-7
"""Probabilities are clipped to this before the log, as ``predict_images`` does."""

ONNX_FILE = "model.onnx"
"""The graph's name in an export folder."""

VERIFY_IMAGES = 100
"""An export's graph is verified on up to this many images: more than one batch of 64 and not a
multiple of it, so both the batch boundary and the graph's dynamic batch size are exercised."""


@dataclass(frozen=True)
class GraphMember:
    """One model in an exported graph.

    Attributes:
        model: A maskopt :class:`Classifier` (from ``build_model`` or ``load_export``), on the CPU.
        image_size: The side of the square images it was trained on.
        weight: Its share of the average, above 0 (normalised over the members).
    """

    model: Classifier
    image_size: int
    weight: float = 1.0


def graph_members(model_dir: str | Path) -> list[GraphMember]:
    """The models of an export folder as graph members, on the CPU, weighted as ``predict_probs`` averages them.

    An ensemble member's weight is shared equally by its models (a fold ensemble's k models each
    get ``weight / k``); one trial's export gives each of its models ``1 / len(models)``.

    Raises:
        ExportError: The folder is not a valid export (see ``read_export_config``).
    """
    model_dir = Path(model_dir)
    config = read_export_config(model_dir)
    if isinstance(config, EnsembleConfig):
        total = sum(m.weight for m in config.members)
        folders = [(model_dir / m.folder, m.weight / total) for m in config.members]
    else:
        folders = [(model_dir, 1.0)]
    members = []
    for folder, weight in folders:
        member, models = load_export(folder, torch.device("cpu"))
        members += [GraphMember(model, member.image_size, weight / len(models)) for model in models]
    return members


def export_onnx(model: Classifier, path: str | Path, *, image_size: int, tta: bool = False,
                class_offsets: Sequence[float] | None = None, opset: int | None = None) -> Path:
    """Export one model to an ONNX graph (see the module's docstring for its input and outputs).

    Args:
        model: A maskopt :class:`Classifier` on the CPU (single or multi head); its train/eval
            modes are restored after.
        path: The ``.onnx`` file to write (atomically: nothing is left at ``path`` on failure).
        image_size: The side of the square images it was trained on.
        tta: Average each image with its mirror image inside the graph.
        class_offsets: Per-class offsets added to the log-probabilities (``--calibrate``).
        opset: The ONNX opset (default :data:`DEFAULT_OPSET`).

    Returns:
        ``path``.

    Raises:
        ExportError: The exporter cannot handle the backbone (named, with the exporter's message),
            the model does not run at ``image_size``, or the graph would pass 2 GiB.
    """
    return export_onnx_ensemble([GraphMember(model, image_size)], path, tta=tta, class_offsets=class_offsets,
                                opset=opset)


def export_onnx_ensemble(members: Sequence[GraphMember], path: str | Path, *, tta: bool = False,
                         class_offsets: Sequence[float] | None = None, opset: int | None = None) -> Path:
    """Export models as one ONNX graph that averages their probabilities by weight.

    A fold ensemble is its k models with equal weights; a greedy ensemble of trials gives each
    trial's models its weight divided by their count, as ``predict_probs`` averages them.

    Args:
        members: The models, their image size (one for all) and weights.
        path, tta, class_offsets, opset: As :func:`export_onnx`.

    Returns:
        ``path``.

    Raises:
        ExportError: Members of different image sizes or classes, and as :func:`export_onnx`.

    Example:
        >>> members = [GraphMember(m, 80, 1.0) for m in fold_models]
        >>> export_onnx_ensemble(members, "exports/demo/model.onnx", tta=True)
    """
    path = Path(path)
    opset = _checked_opset(opset)
    graph = _Graph(members, tta=tta, class_offsets=class_offsets)
    size = sum(t.numel() * t.element_size() for t in (*graph.parameters(), *graph.buffers()))
    if size > MAX_ONNX_BYTES * 0.95:
        raise ExportError(f"the models hold {size / 2**30:.1f} GiB of weights, more than one ONNX file holds "
                          f"(2 GiB; maskopt writes no external data): export the members one file each")
    images = torch.randint(0, 256, (2, 3, graph.image_size, graph.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with _eval_mode(graph):
        try:
            with torch.inference_mode():
                graph(images)
        except Exception as e:  # whatever the backbone raises for this input (a ViT's fixed size, ...)
            raise ExportError(f"backbone {graph.backbones} does not run on {graph.image_size} px images "
                              f"({first_line(e)})") from None
        buffer = io.BytesIO()  # in memory: a failed export leaves no file, and never writes external data
        try:
            with _exporter_quiet():
                torch.onnx.export(graph, (images,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                  dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)})
        except Exception as e:  # UnsupportedOperatorError, RuntimeError, ...: a model the exporter cannot handle
            raise ExportError(f"backbone {graph.backbones} cannot be exported to ONNX by torch "
                              f"{torch.__version__}'s exporter at opset {opset}: {first_line(e)}. "
                              f"Export without ONNX, or choose another backbone") from None
    write_atomically(path, buffer.getvalue(), error=ExportError, option="path")
    log.debug("wrote %s (%.1f MB, opset %d)", path, buffer.tell() / 1e6, opset)
    return path


def verify_onnx(members: Classifier | Sequence[GraphMember], onnx_path: str | Path, images: np.ndarray, *,
                tta: bool = False, class_offsets: Sequence[float] | None = None, labels=None,
                tolerance: float = TOLERANCE, threads: int | None = None) -> OnnxCheck:
    """Run the PyTorch models as maskopt predicts and the ONNX graph on the same images, and compare.

    The PyTorch side is maskopt's own path (``predict_rows``: channels-last, each member's
    normalisation, softmax, the mirror image with ``tta``), averaged and offset as
    ``predict_images`` does; the ONNX side is onnxruntime on the CPU through :func:`run_onnx`,
    with its checks of the file.

    Args:
        members: One model, or the graph's members (as exported).
        onnx_path: The exported file.
        images: ``uint8 [N, 3, S, S]`` pixels at the members' image size.
        tta, class_offsets: As exported.
        labels: The images' classes, for both sides' macro F1 (optional).
        tolerance: The largest accepted score difference (see :data:`TOLERANCE`).
        threads: onnxruntime's threads (default: as many as torch uses now).

    Raises:
        ExportError: The file fails its checks (see :func:`onnx_session`).
    """
    images = np.asarray(images)
    if isinstance(members, nn.Module):
        members = [GraphMember(members, images.shape[-1])]
    graph = _Graph(members, tta=tta, class_offsets=class_offsets)  # checks the members as export did
    size = graph.image_size
    if images.dtype != np.uint8 or images.shape[1:] != (3, size, size) or len(images) == 0:
        raise ExportError(f"verifying needs uint8 [N, 3, {size}, {size}] pixels, N at least 1; "
                          f"got {images.dtype} {list(images.shape)}")
    torch_scores = _torch_scores(graph, images)
    onnx_scores = run_onnx(onnx_path, images, num_classes=graph.num_classes, threads=threads).scores
    diff = float(np.max(np.abs(torch_scores - onnx_scores)))
    torch_top, onnx_top = torch_scores.argmax(1), onnx_scores.argmax(1)
    torch_f1 = onnx_f1 = None
    if labels is not None:
        torch_f1 = macro_f1(np.asarray(labels), torch_top, n_classes=graph.num_classes)
        onnx_f1 = macro_f1(np.asarray(labels), onnx_top, n_classes=graph.num_classes)
    return OnnxCheck(images=len(images), max_abs_score_diff=diff, top1_agreement=float(np.mean(torch_top == onnx_top)),
                     torch_macro_f1=torch_f1, onnx_macro_f1=onnx_f1, tolerance=tolerance,
                     passed=bool(diff <= tolerance))  # NaN fails


def check_or_refuse(check: OnnxCheck) -> OnnxCheck:
    """``check`` when it passed.

    Raises:
        ExportError: With the numbers, when the graph's scores are farther from PyTorch's than the tolerance.
    """
    if check.passed:
        return check
    f1 = (f"; macro F1 {check.torch_macro_f1:.4f} with PyTorch, {check.onnx_macro_f1:.4f} with ONNX"
          if check.torch_macro_f1 is not None else "")
    raise ExportError(
        f"the ONNX graph does not match PyTorch on {check.images} images: scores differ by up to "
        f"{check.max_abs_score_diff:.3g} (tolerance {check.tolerance:g}), top-1 agreement "
        f"{check.top1_agreement:.1%}{f1}. Export without ONNX; the PyTorch export predicts as before")


# --- an export folder's graph ------------------------------------------------------------------------


def check_onnx_export(image_sizes, *, opset: int | None) -> None:
    """Refuse, before any work, an ONNX export that cannot succeed: the packages missing, an
    unsupported opset, or models of several image sizes (see :func:`one_image_size`)."""
    require("onnx")
    require("onnxruntime")
    _checked_opset(opset)
    one_image_size(image_sizes)


def one_image_size(image_sizes) -> int:
    """The one image size of an export's models, which its ONNX graph takes.

    Raises:
        ExportError: An ensemble of members trained at several sizes.
    """
    sizes = sorted(set(image_sizes))
    if len(sizes) > 1:
        raise ExportError(f"the ensemble's members take images of {', '.join(map(str, sizes))} px, and an ONNX "
                          f"graph has one input size: maskopt cannot write an ONNX graph of it yet (one file per "
                          f"image size is future work). Such an ensemble predicts with the torch runtime only")
    return sizes[0]


def graph_image_size(model_dir: str | Path) -> int:
    """The image size an export folder's ONNX graph takes (from the configs; no model is loaded).

    Raises:
        ExportError: The folder is not a valid export, or its members take several sizes.
    """
    config = read_export_config(model_dir)
    if isinstance(config, EnsembleConfig):
        return one_image_size(ExportConfig.from_json(Path(model_dir) / m.folder).image_size for m in config.members)
    return config.image_size


def verification_rows(count: int) -> np.ndarray:
    """Up to :data:`VERIFY_IMAGES` of ``count`` images, spread evenly over them (so over classes and persons)."""
    return np.unique(np.linspace(0, count - 1, min(count, VERIFY_IMAGES)).round().astype(int))


def export_graph(model_dir: str | Path, path: str | Path, images: np.ndarray, *, labels=None,
                 opset: int | None = None) -> OnnxFile:
    """Export an export folder's models as one graph, verify it against PyTorch, and describe it.

    The graph holds the folder's models, their weights, its ``tta`` and its class offsets, as
    ``predict`` uses them (see :func:`graph_members`).

    Args:
        model_dir: The export folder, its config.json written.
        path: The ``.onnx`` file to write (its name is the record's ``file``).
        images: ``uint8 [N, 3, S, S]`` pixels at the graph's image size, to verify it on.
        labels: Their classes (optional), for both sides' macro F1.
        opset: The ONNX opset (default :data:`DEFAULT_OPSET`).

    Returns:
        The record for the config's ``onnx`` key.

    Raises:
        ExportError: The export fails (see :func:`export_onnx_ensemble`), or the graph's scores
            differ from PyTorch's by more than the tolerance (see :func:`check_or_refuse`).
    """
    config = read_export_config(model_dir)
    members = graph_members(model_dir)
    export_onnx_ensemble(members, path, tta=config.tta, class_offsets=config.class_offsets, opset=opset)
    check = check_or_refuse(verify_onnx(members, path, images, tta=config.tta, class_offsets=config.class_offsets,
                                        labels=labels))
    log.debug("verified %s on %d images: scores within %.3g of PyTorch's", path, check.images,
              check.max_abs_score_diff)
    return OnnxFile(file=Path(path).name, opset=_checked_opset(opset),
                    preprocessing=OnnxPreprocessing(image_size=members[0].image_size), check=check)


# --- the graph ---------------------------------------------------------------------------------------


def _checked_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else opset
    if type(opset) is not int or not OPSETS[0] <= opset <= OPSETS[1]:
        raise ExportError(f"ONNX opset {show_value(opset)} is not supported; choose {OPSETS[0]}..{OPSETS[1]} "
                          f"(default {DEFAULT_OPSET})")
    return opset



class _Graph(nn.Module):
    """uint8 pixels -> (probs, scores) for checked members: the module that is exported."""

    def __init__(self, members: Sequence[GraphMember], *, tta: bool, class_offsets: Sequence[float] | None):
        super().__init__()
        members = list(members)
        if not members:
            raise ExportError("an ONNX graph needs at least one model")
        for m in members:
            if not isinstance(m.model, Classifier):
                raise TypeError(f"a GraphMember's model must be a maskopt Classifier, not {type(m.model).__name__}")
            if any(t.device.type != "cpu" for t in m.model.parameters()):
                raise ExportError("ONNX export runs on the CPU: move the models there first (model.cpu())")
        sizes = sorted({m.image_size for m in members})
        if len(sizes) > 1:
            raise ExportError(f"the models take images of {', '.join(map(str, sizes))} px; one ONNX graph has one "
                              f"input size. Export the models of each size to a file of its own")
        widths = sorted({m.model.num_classes for m in members})
        if len(widths) > 1:
            raise ExportError(f"the models have {', '.join(map(str, widths))} classes; an ensemble's must agree")
        if not all(np.isfinite(m.weight) and m.weight > 0 for m in members):
            raise ExportError(f"member weights must be numbers above 0, got {[m.weight for m in members]}")
        if class_offsets is not None and (len(class_offsets) != widths[0] or not np.all(np.isfinite(class_offsets))):
            raise ExportError(f"class_offsets must be {widths[0]} finite numbers, one per class; "
                              f"got {show_value(list(class_offsets))}")
        self.image_size, self.num_classes, self.tta = sizes[0], widths[0], tta
        self.backbones = ", ".join(dict.fromkeys(repr(_backbone(m.model)) for m in members))
        self.models = nn.ModuleList(m.model for m in members)
        total = sum(m.weight for m in members)
        self.register_buffer("weights", torch.tensor([m.weight / total for m in members]))
        norms = [mean_std(m.model) for m in members]
        self.register_buffer("mean", torch.tensor([mean for mean, _ in norms]).view(-1, 1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([std for _, std in norms]).view(-1, 1, 3, 1, 1))
        offsets = torch.zeros(self.num_classes) if class_offsets is None else torch.tensor(class_offsets)
        self.register_buffer("offsets", offsets.float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float() / 255  # as prepare_batch: / 255, then - mean, then / std
        probs = 0
        for k, model in enumerate(self.models):
            member_x = (x - self.mean[k]) / self.std[k]
            p = model(member_x).float().softmax(1)
            if self.tta:
                p = (p + model(member_x.flip(3)).float().softmax(1)) / 2
            probs = probs + self.weights[k] * p
        return probs, probs.clamp_min(PROB_FLOOR).log() + self.offsets


def _torch_scores(graph: _Graph, images: np.ndarray) -> np.ndarray:
    """maskopt's own prediction: ``predict_rows`` per member, averaged, logged and offset as ``predict_images``."""
    pixels = torch.from_numpy(np.array(images, dtype=np.uint8))
    rows = np.arange(len(pixels))
    probs = 0
    with _eval_mode(graph):
        for k, model in enumerate(graph.models):
            probs = probs + graph.weights[k].item() * predict_rows(
                model, pixels, rows, torch.device("cpu"), graph.mean[k], graph.std[k], batch_size=64,
                flip=graph.tta, channels_last=True).numpy()
    return np.log(np.clip(probs, PROB_FLOOR, None)) + graph.offsets.numpy()


def _backbone(model: Classifier) -> str:
    cfg = getattr(model.model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model.model).__name__


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside; every submodule's own train/eval flag restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """Keep the TorchScript exporter's noise off the command line.

    It warns that it is deprecated on every call, and (torch 2.14) leaves its native log switched
    on, so on an unsupported operator it writes the whole TorchScript graph, some 100 KB, to the
    process's stdout from C++. The stdout file descriptor goes to /dev/null for the call; the
    exception carries the message that matters.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the exporter's own, for this call
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
