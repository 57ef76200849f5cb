"""Running an exported ONNX graph with onnxruntime on the CPU, after checking the file.

An export folder may come from anywhere (a shared drive, a download), so ``model.onnx`` is
checked before onnxruntime sees it: its size (at most protobuf's 2 GiB), that it parses and
passes ``onnx.checker``, that no tensor keeps its data in an external file (ONNX lets a tensor
name any path, ``../../etc/passwd`` included; maskopt never writes external data, so every such
reference is refused and no file but ``model.onnx`` is ever opened), and that its one input and
two outputs are the ones maskopt writes (see :mod:`maskopt.search.export.onnx`). The session is
then built from the checked bytes in memory, never from the path.

onnx and onnxruntime are the ``onnx`` extra (``pip install 'maskopt[onnx]'``); they are imported
when a function here is called.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskopt.errors import ExportError, shorten
from maskopt.files import printable
from maskopt.search.export.config import INPUT_NAME, OUTPUT_NAMES, read_capped, show_value

log = logging.getLogger(__name__)

MAX_ONNX_BYTES = (1 << 31) - 1
"""protobuf's limit on one message; larger models need external data, which maskopt never writes."""

_BATCH = 64


@dataclass(frozen=True)
class OnnxOutputs:
    """What an exported graph returns for a set of images, as ``float32 [N, num_classes]`` arrays."""

    probs: np.ndarray
    scores: np.ndarray


def require(package: str):
    """Import ``onnx`` or ``onnxruntime``, or say how to install them."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ExportError(f"ONNX export needs the {package} package, which is not installed: "
                          f"pip install 'maskopt[onnx]'") from None


def onnx_session(path: str | Path, *, num_classes: int, image_size: int, threads: int | None = None):
    """An onnxruntime CPU session of a checked maskopt ONNX file.

    Args:
        path: The ``.onnx`` file (inside its export folder).
        num_classes: The width both outputs must have (the export config's ``num_classes``).
        image_size: The side of the square input the graph must take.
        threads: onnxruntime's intra-op threads (default: as many as torch uses now).

    Raises:
        ExportError: The file is too large, not ONNX, refers to external data, has another input
            or outputs than maskopt writes, or onnxruntime cannot load it; the message names the
            file and what is wrong.
    """
    ort = require("onnxruntime")
    data = _checked_bytes(Path(path), num_classes=num_classes, image_size=image_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings would reach the command line's stderr
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / ... types
        raise ExportError(f"{printable(path)}: onnxruntime cannot load it ({first_line(e)}); "
                          f"re-export it with maskopt") from None


def run_onnx(path: str | Path, images: np.ndarray, *, num_classes: int, threads: int | None = None) -> OnnxOutputs:
    """Both outputs of a checked maskopt ONNX file for ``images``, in batches of 64.

    Args:
        path: The ``.onnx`` file.
        images: ``uint8 [N, 3, S, S]`` pixels, decoded as maskopt decodes them (shorter side
            resized to ``S``, bilinear, centre crop; see ``search/data/cache.py``).
        num_classes: The width the outputs must have.
        threads: onnxruntime's intra-op threads (default: as many as torch uses now).

    Raises:
        ExportError: As :func:`onnx_session`; also when ``images`` are not ``uint8 [N, 3, S, S]``
            or the graph fails on them.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ExportError(f"images for an ONNX graph must be uint8 [N, 3, S, S] pixels, "
                          f"got {images.dtype} {list(images.shape)}")
    session = onnx_session(path, num_classes=num_classes, image_size=images.shape[2], threads=threads)
    probs, scores = [], []
    for start in range(0, len(images), _BATCH):
        batch = np.ascontiguousarray(images[start:start + _BATCH])
        try:
            p, s = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        except Exception as e:  # onnxruntime's runtime errors
            raise ExportError(f"{printable(path)}: onnxruntime failed on a batch of {len(batch)} images "
                              f"({first_line(e)}); re-export it with maskopt") from None
        if p.shape != (len(batch), num_classes) or s.shape != p.shape:
            raise ExportError(f"{printable(path)}: the graph returned {list(p.shape)} and {list(s.shape)} for "
                              f"{len(batch)} images, expected [{len(batch)}, {num_classes}] each")
        probs.append(p)
        scores.append(s)
    empty = np.zeros((0, num_classes), np.float32)
    return OnnxOutputs(np.concatenate(probs) if probs else empty, np.concatenate(scores) if scores else empty)


# --- the file's checks ------------------------------------------------------------------------------


def _checked_bytes(path: Path, *, num_classes: int, image_size: int) -> bytes:
    """The bytes of ``path`` once every check has passed; nothing outside its folder is opened."""
    onnx = require("onnx")
    if not path.resolve().is_relative_to(path.parent.resolve()):  # a link out of the folder
        raise ExportError(f"{printable(path)} leads outside its folder, to {printable(path.resolve())}; "
                          f"an export holds its own files")
    if not path.is_file():  # a FIFO or device would block or never end
        raise ExportError(f"{printable(path)} is missing or not a regular file; re-export it with maskopt")
    data = read_capped(path, MAX_ONNX_BYTES, "an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ExportError(f"{printable(path)} is not an ONNX model ({first_line(e)}); "
                          f"re-export it with maskopt") from None
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            raise ExportError(
                f"{printable(path)}: tensor {show_value(tensor.name)} keeps its data in another file "
                f"({show_value(location)}); maskopt writes self-contained ONNX files and reads no other file. "
                f"Re-export it with maskopt")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError, and whatever a malformed graph makes the checker raise
        raise ExportError(f"{printable(path)} is not a valid ONNX model ({first_line(e)}); "
                          f"re-export it with maskopt") from None
    _check_signature(path, model.graph, num_classes=num_classes, image_size=image_size)
    return data


def _tensors(model):
    """Every tensor a model holds: initializers and node attributes, in subgraphs and functions too."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node):
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []):
            yield from (sparse.values, sparse.indices)
        for sparse in attribute.sparse_tensors:
            yield from (sparse.values, sparse.indices)
        for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            yield from _graph_tensors(graph)


def _check_signature(path: Path, graph, *, num_classes: int, image_size: int) -> None:
    """One input ``images`` ``uint8 [batch, 3, S, S]``; outputs ``probs`` and ``scores``, ``float32 [batch, C]``."""
    onnx = require("onnx")
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]  # older IR versions list weights as inputs
    want_input = f"one input {INPUT_NAME!r} of uint8 [batch, 3, {image_size}, {image_size}]"
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ExportError(f"{printable(path)}: the graph must have {want_input}; it has inputs "
                          f"{show_value([i.name for i in inputs])}")
    elem, dims = _tensor_type(inputs[0])
    if elem != onnx.TensorProto.UINT8 or len(dims) != 4 or dims[1:] != [3, image_size, image_size] \
            or isinstance(dims[0], int):
        raise ExportError(f"{printable(path)}: the graph must have {want_input} (a dynamic batch); its input is "
                          f"{_type_name(onnx, elem)} {dims}")
    outputs = {o.name: o for o in graph.output}
    for name in OUTPUT_NAMES:
        if name not in outputs:
            raise ExportError(f"{printable(path)}: the graph has no output {name!r} "
                              f"(it has {show_value(sorted(outputs))}); re-export it with maskopt")
        elem, dims = _tensor_type(outputs[name])
        if elem != onnx.TensorProto.FLOAT or len(dims) != 2 or dims[1] != num_classes:
            raise ExportError(f"{printable(path)}: output {name!r} must be float32 [batch, {num_classes}] "
                              f"(one score per class of the export), got {_type_name(onnx, elem)} {dims}")


def _tensor_type(value_info) -> tuple[int, list]:
    """Element type and dims (an int, or the dim's name, or None) of a graph input or output."""
    tensor = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return tensor.elem_type, dims


def _type_name(onnx, elem: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, ValueError, TypeError):  # undefined, or no numpy equivalent
        return f"ONNX type {elem}"


def first_line(error: Exception) -> str:
    """The first non-empty line of an error's message, shortened: exporters and runtimes write pages."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return printable(shorten(lines[0] if lines else type(error).__name__, 200))
