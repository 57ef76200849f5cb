"""Retraining the best trial, exporting it, predicting with an export, scoring a submission.

An export folder holds everything needed to predict on any machine, with no access to the study:
``model.safetensors`` (or ``fold<k>.safetensors`` for a fold ensemble: weights that load without
executing code), ``config.json`` (how to rebuild and feed the model, where it came from) and, for
the competition layout, ``submission.csv``; with ``onnx``, ``model.onnx`` (every model, the flip and the
class offsets in one ONNX graph, verified against PyTorch). Files are written into a temporary folder beside it
and moved into place at the end (:func:`_move_into_place`), so a failed export never leaves a
half-written folder, and files in the folder that the export did not write are kept.

Retraining rule: the best trial's parameters, on every training person with no hold-out, for the
mean over its folds of the epoch with the best validation F1 (rounded, at least 1), since that is
how long the model took to peak when it had slightly less data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import save_model
from tqdm.auto import tqdm

from maskopt.errors import DataError, ExportError, SpaceError, StorageError
from maskopt.files import check_target, printable, write_failed
from maskopt.search.data import labels as L
from maskopt.search.data.dataset import detect_layout, load_dataset
from maskopt.search.data.prepared import prepare_data
from maskopt.search.export.config import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EnsembleConfig,
    ExportConfig,
    MemberRef,
    OnnxFile,
    looks_like_export,
    read_export_config,
)
from maskopt.search.export.onnx import (
    ONNX_FILE,
    check_onnx_export,
    export_graph,
    graph_image_size,
    verification_rows,
)
from maskopt.search.export.predict import (
    SUBMISSION_FILE,
    decoded_images,
    eval_set_of,
    predict_images,
    write_submission,
)
from maskopt.search.space import check_study_name
from maskopt.search.study.oof import (
    caruana_ensemble,
    fit_class_offsets,
    load_oof,
    nested_offset_gain,
)
from maskopt.search.study.record import ExportRecord, StudyRecord, TrialRecord
from maskopt.search.study.seeds import fold_seed
from maskopt.search.train.loop import (
    TrainingData,
    mean_std,
    train_fold,
    train_full,
)
from maskopt.search.train.resources import release_memory, torch_session
from maskopt.storage import DEFAULT_ARTIFACT_DIR, require_writable


@dataclass(frozen=True)
class EnsembleReport:
    """What ``ensemble=K`` chose, measured on the pooled out-of-fold predictions."""

    trials: tuple[int, ...]  # member trials, in the order of their folders
    weights: tuple[float, ...]
    oof_macro_f1: float  # of the weighted ensemble
    best_single_oof_macro_f1: float  # of the best trial alone, same rows


@dataclass(frozen=True)
class CalibrationReport:
    """Per-class offsets on log-probabilities, and what they are worth on out-of-fold predictions."""

    offsets: tuple[float, ...]
    oof_macro_f1: float  # without offsets
    nested_oof_macro_f1: float  # with offsets fitted on the other folds: an honest estimate


@dataclass(frozen=True)
class ExportResult:
    out: Path
    study_name: str
    trial_number: int
    cv_score: float
    epochs: int | tuple[int, ...]
    models: tuple[str, ...]
    submission: Path | None
    ensemble: EnsembleReport | None = None
    calibration: CalibrationReport | None = None
    onnx: OnnxFile | None = None  # the ONNX graph and its check against PyTorch, with ``onnx``


@dataclass(frozen=True)
class OnnxExportResult:
    """What ``export_onnx_folder`` added to an export."""

    out: Path  # the export folder
    onnx: OnnxFile  # the graph's file and its check against PyTorch
    verified_on: str  # which images the check ran on, in words


logger = logging.getLogger(__name__)

MAX_ENSEMBLE_CANDIDATES = 20
"""Ensemble selection looks at the study's best complete trials, at most this many."""


def export_best(
    *,
    storage: str | None = None,
    study: str | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    tta: bool = False,
    ensemble_folds: bool = False,
    ensemble: int = 1,
    calibrate: bool = False,
    onnx: bool = False,
    onnx_opset: int | None = None,
    max_latency_ms: float | None = None,
    artifacts: str | Path | None = DEFAULT_ARTIFACT_DIR,
    force: bool = False,
    device: str = "auto",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Retrain the study's best complete trial (or an ensemble of its best) and export it.

    Args:
        storage: The study storage (None: ``maskopt.db`` here).
        study: The study's name; may be omitted when the storage holds one study.
        data: Dataset path (default: the one the study was run on).
        out: Export folder (default ``exports/<study>``).
        tta: Average predictions with the horizontally flipped image.
        ensemble_folds: Train the k fold models of each exported trial on their folds and
            average their probabilities, instead of one model on all data.
        ensemble: Greedy ensemble selection with replacement (Caruana et al. 2004) of up to
            this many picks among the best trials, on their stored out-of-fold probabilities;
            every member is retrained and exported, and ``predict`` averages them by weight.
            1: the best trial alone.
        calibrate: Fit per-class offsets on the out-of-fold log-probabilities that maximise
            macro F1, store them in the export and apply them in ``predict``.
        onnx: Also write ``model.onnx``: the export's models, flip and class offsets as one ONNX graph
            from uint8 pixels to scores (``predict`` runs it with ``runtime="onnx"``), verified against
            PyTorch on up to 100 training images; a graph that differs is refused, and nothing of the
            new export is written. Needs members of one image size.
        onnx_opset: The ONNX opset of the graph (13..20; default 17).
        max_latency_ms: Export the most accurate trial whose recorded CPU latency (ms per image at
            batch 1, one thread) is within this budget; an ensemble picks among those only.
        artifacts: The artifact folder the search stored out-of-fold predictions in
            (None: ``maskopt-artifacts``); read for ``ensemble`` and ``calibrate``.
        force: Replace an existing export folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch (default: the free cores); torch's setting is restored after.
        cache_dir: Decoded-image cache folder.
        quiet: No progress bars.

    Raises:
        StorageError: No such storage or study.
        NotAMaskoptStudy: The study stores no search space (``maskopt search`` did not make it).
        ExportError: No complete trial, no stored out-of-fold predictions for ``ensemble`` or
            ``calibrate``, the folder exists without ``force``, or ``onnx`` cannot be written or
            does not match PyTorch (see :func:`~maskopt.search.export.onnx.export_graph`).
        DataError: The dataset cannot be read (or the study records none and ``data`` is not given).
    """

    if ensemble < 1:
        raise ExportError(f"the ensemble size must be at least 1, got {ensemble}")
    if onnx_opset is not None and not onnx:
        raise ExportError("`onnx_opset` is the opset of the ONNX graph that `onnx` writes: pass `onnx` too, "
                          "or leave out `onnx_opset`")
    progress = not quiet
    record = StudyRecord.open(storage, study)
    space = record.space
    if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
        raise ExportError(f"`max_latency_ms` must be a number of milliseconds above 0, got {max_latency_ms}")
    candidates = record.top(MAX_ENSEMBLE_CANDIDATES if ensemble > 1 else 1) if max_latency_ms is None else \
        _within_budget(record, max_latency_ms)[:MAX_ENSEMBLE_CANDIDATES if ensemble > 1 else 1]
    if not candidates:
        states = {}
        for t in record.trials():
            states[t.state.name] = states.get(t.state.name, 0) + 1
        counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items()) or "no trials"
        raise ExportError(f"study {record.name!r} has no complete trial to export ({counts}); "
                          f"run more trials with maskopt search")
    best = candidates[0]
    if out is None:
        try:
            out = Path("exports") / check_study_name(record.name)
        except SpaceError as e:
            raise ExportError(f"{e} Or pass `out` FOLDER for this study's export.") from None
    out = Path(out)
    _check_out(out, force)
    require_writable(storage)  # the export notes itself there when done: a read-only file fails now, not then

    settings = space.study
    dataset = record.dataset(data)
    space, _ = space.for_layout(dataset.layout)
    data_path = Path(data if data is not None else settings.data)
    eval_set = eval_set_of(data_path, dataset.layout)  # checked before hours of retraining

    members, weights, ensemble_report, calibration = [best], [1.0], None, None
    if ensemble > 1 or calibrate:
        oofs = _stored_oofs(candidates, artifacts or DEFAULT_ARTIFACT_DIR, dataset, record.name)
        if ensemble > 1:
            members, weights, ensemble_report = _select_ensemble(candidates, oofs, ensemble, dataset.num_classes)
        if calibrate:
            by_number = {t.number: oof for t, oof in zip(candidates, oofs) if oof is not None}
            blend = sum(w * by_number[t.number].probs for t, w in zip(members, weights))
            calibration = _calibrate(blend, by_number[best.number], dataset.num_classes)

    for t in members:  # how long to retrain each: refused before any data is decoded
        if t.best_epoch is None or any(e > settings.epochs for e in t.best_epoch):
            raise ExportError(
                f"trial {t.number} of study {record.name!r} records no usable best epoch per fold (`best_epoch` must "
                f"list whole numbers from 1 to the study's {settings.epochs} epochs), so how long to retrain it is "
                f"unknown: the storage holds what maskopt search never writes. Restore the study from a backup, or "
                f"run the search again under a new study name")
    member_params = [space.params_from(t.params) for t in members]
    if onnx:  # refused before any data is decoded or trained on
        check_onnx_export([p.image_size for p in member_params], opset=onnx_opset)
    prepared = prepare_data(dataset, image_sizes=sorted({p.image_size for p in member_params}), cache_dir=cache_dir,
                            exclude_broken=settings.exclude_broken, progress=progress)
    with torch_session(device, threads) as torch_device:
        tmp = _staging_folder(out)
        try:
            if len(members) == 1:
                config = _export_trial(tmp, best, member_params[0], settings, prepared, torch_device, record.name,
                                       ensemble_folds=ensemble_folds, tta=tta, progress=progress)
                models = config.models
            else:
                refs, models = [], []
                for trial, params, weight in zip(members, member_params, weights):
                    folder = f"member-trial-{trial.number}"
                    (tmp / folder).mkdir()
                    member = _export_trial(tmp / folder, trial, params, settings, prepared, torch_device,
                                           record.name, ensemble_folds=ensemble_folds, tta=tta, progress=progress)
                    member.to_json(tmp / folder)
                    refs.append(MemberRef(folder, weight, trial.number))
                    models += [f"{folder}/{name}" for name in member.models]
                config = EnsembleConfig(
                    num_classes=dataset.num_classes, class_names=tuple(dataset.class_names), layout=dataset.layout,
                    members=tuple(refs), study=record.name, trial=best.number, cv_macro_f1=best.value,
                    ensemble=dataclasses.asdict(ensemble_report), dataset_fingerprint=dataset.fingerprint(),
                    versions=_versions(), tta=tta)
            if calibration is not None:
                config = dataclasses.replace(config, class_offsets=calibration.offsets,
                                             calibration=dataclasses.asdict(calibration))
            config.to_json(tmp)
            release_memory(torch_device)
            if onnx:  # verified on training images, with their labels
                rows = verification_rows(len(prepared.dataset))
                images = prepared.images(member_params[0].image_size, torch_device)[rows].cpu().numpy()
                graph = export_graph(tmp, tmp / ONNX_FILE, images, labels=prepared.dataset.labels[rows],
                                     opset=onnx_opset)
                config = dataclasses.replace(config, onnx=graph)
                config.to_json(tmp)
            submission = None
            if eval_set is not None:
                ids, paths = eval_set
                predictions = predict_images(tmp, paths, device=torch_device, tta=tta, cache_dir=cache_dir,
                                             progress=progress)
                write_submission(tmp / SUBMISSION_FILE, ids, predictions, header=("ImageID", "ans"))
                submission = out / SUBMISSION_FILE
            _move_into_place(tmp, out, force=force)
        except (OSError, SafetensorError) as e:  # a full disk, a read-only folder
            raise write_failed(out, e, error=ExportError) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _record_export(record, best, out, tuple(models), tta)
    epochs = config.epochs if isinstance(config, ExportConfig) else 0
    return ExportResult(out, record.name, best.number, best.value, epochs, tuple(models), submission,
                        ensemble_report, calibration, config.onnx)


def export_onnx_folder(
    model_dir: str | Path,
    *,
    data: str | Path | None = None,
    opset: int | None = None,
    force: bool = False,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
) -> OnnxExportResult:
    """Add an ONNX graph of an existing export's models to its folder, verified against PyTorch.

    ``model.onnx`` holds the export's models, its flip (``tta``) and its class offsets, as
    ``export_best(onnx=True)`` writes it, and config.json records it (``onnx``); ``predict`` runs it
    with ``runtime="onnx"``. The graph is checked on up to 100 of the images of ``data`` before
    anything in the folder changes: the eval images of a competition folder, else the images of a
    class-folder or CSV dataset (with their labels, for macro F1, when its classes are among the export's).
    An export records no path to its dataset, so ``data`` names them. The graph and the config
    move in under the lock exports to the folder take; a graph that differs from PyTorch changes
    nothing.

    Args:
        model_dir: The export folder (from ``export_best``).
        data: The images to verify the graph on (see above).
        opset: The ONNX opset (13..20; default 17).
        force: Replace the export's ONNX graph when it has one.
        threads: CPU threads for torch and onnxruntime (default: the free cores).
        cache_dir: Decoded-image cache folder.
        quiet: No progress bars.

    Returns:
        The folder, the graph's record (with its check) and what it was verified on.

    Raises:
        ExportError: ``model_dir`` is not a valid export, has a graph already (without ``force``)
            or a ``model.onnx`` its config does not list, holds an ensemble of several image sizes,
            ``data`` is not given, or the graph cannot be written or does not match PyTorch.
        DataError: ``data`` cannot be read, holds no image, or an image is unreadable.

    Example:
        >>> export_onnx_folder("exports/demo", data="demo-data")  # doctest: +SKIP
    """
    model_dir = Path(model_dir)
    config = read_export_config(model_dir)
    if config.onnx is not None and not force:
        raise ExportError(f"{printable(model_dir)} has an ONNX graph already ({printable(config.onnx.file)}); "
                          f"pass `force` to replace it")
    _check_onnx_target(model_dir, config)
    image_size = graph_image_size(model_dir)
    check_onnx_export([image_size], opset=opset)
    if data is None:
        raise ExportError("nothing to verify the ONNX graph on: an export does not record where its dataset is. "
                          "Give `data`: the dataset it was trained on (a competition folder's eval images are "
                          "used), or a class-folder or CSV dataset of images like those it will predict")
    images, labels, verified_on = _verification_images(Path(data), config, image_size, cache_dir, progress=not quiet)
    with torch_session("cpu", threads):
        staging = _staging_folder(model_dir / ONNX_FILE)
        try:
            graph = export_graph(model_dir, staging / ONNX_FILE, images, labels=labels, opset=opset)
            place = model_dir.resolve()
            with _locked(place.parent / f".{place.name}.lock"):  # exports to the folder move in one at a time
                if read_export_config(model_dir) != config:
                    raise ExportError(f"{printable(model_dir)} was replaced while its ONNX graph was made "
                                      f"(another export wrote it); nothing was changed. Run the command again")
                _check_onnx_target(model_dir, config)
                _move_graph_in(staging, model_dir, dataclasses.replace(config, onnx=graph))
        except OSError as e:  # a full disk, a read-only folder
            raise write_failed(model_dir / ONNX_FILE, e, error=ExportError, option="model_dir") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return OnnxExportResult(model_dir, graph, verified_on)


def _move_graph_in(staging: Path, model_dir: Path, config) -> None:
    """Move ``staging/model.onnx`` into ``model_dir`` (the old graph, if any, into ``staging``), then
    write ``config``, which lists it; on any failure, every move is undone."""
    target = model_dir / ONNX_FILE
    moves = [(target, staging / f"old-{ONNX_FILE}")] if os.path.lexists(target) else []
    moves.append((staging / ONNX_FILE, target))
    done = []
    try:
        for src, dst in moves:
            os.rename(src, dst)
            done.append((src, dst))
        config.to_json(model_dir)
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        raise


def _check_onnx_target(model_dir: Path, config) -> None:
    """Refuse a ``model.onnx`` that the export's config does not list (a user's file), or that is not a regular file."""
    listed = config.onnx is not None and config.onnx.file == ONNX_FILE
    if os.path.lexists(model_dir / ONNX_FILE) and not listed:
        raise ExportError(f"{printable(model_dir)} holds {ONNX_FILE}, which the export there did not write (its "
                          f"{CONFIG_FILE} does not list it); it is left as it is, and no graph was written. "
                          f"Move it away")
    check_target(model_dir / ONNX_FILE, error=ExportError, option="model_dir")


def _verification_images(data: Path, config, image_size: int, cache_dir, *, progress: bool):
    """Up to 100 images of ``data`` to verify a graph on, their labels (or None) and a description."""
    if detect_layout(data) == "competition":
        _, paths = eval_set_of(data, "competition")
        labels, what = None, "eval images"
    else:
        dataset = load_dataset(data)
        paths, what, labels = dataset.paths, "images", None
        index = {name: k for k, name in enumerate(config.class_names)}
        if set(dataset.class_names) <= set(index):  # labels of the export's classes, by name
            labels = np.array([index[dataset.class_names[k]] for k in dataset.labels])
    if not len(paths):
        raise DataError(f"{printable(data)} holds no image to verify the ONNX graph on; give `data` a dataset "
                        f"with images")
    rows = verification_rows(len(paths))
    images = decoded_images([paths[i] for i in rows], image_size=image_size, cache_dir=cache_dir, progress=progress)
    described = f"{len(rows)} of the {len(paths)} {what} of {printable(data)}"
    if labels is None:
        return images, None, described
    return images, labels[rows], described + " (labelled)"


def _within_budget(record: StudyRecord, max_latency_ms: float) -> list[TrialRecord]:
    """The complete trials whose CPU latency is within ``max_latency_ms``, best first.

    Raises:
        ExportError: None is, saying how fast the fastest one is.
    """
    complete = record.top(len(record.study.trials))
    timed = [t for t in complete if t.latency and 1 in t.latency.ms_per_image]
    within = [t for t in timed if t.latency.ms_per_image[1] <= max_latency_ms]
    if complete and not within:
        if not timed:
            raise ExportError(f"no complete trial of study {record.name!r} has a recorded CPU latency (trials made "
                              f"before maskopt recorded it); leave out `max_latency_ms`")
        fastest = min(timed, key=lambda t: t.latency.ms_per_image[1])
        raise ExportError(f"no complete trial of study {record.name!r} is within `max_latency_ms` {max_latency_ms:g}: "
                          f"the fastest, trial {fastest.number}, takes {fastest.latency.ms_per_image[1]:.3g} ms per "
                          f"image (macro F1 {fastest.value:.4f})")
    return within


def _export_trial(folder: Path, trial: TrialRecord, params, settings, prepared, device, study_name: str, *,
                  ensemble_folds: bool, tta: bool, progress: bool) -> ExportConfig:
    """Retrain one trial, write its weights into ``folder`` and return its config (not yet written).

    Retraining uses the configuration's seeds (``seeds.fold_seed``), as its trial trained.
    """

    dataset = prepared.dataset
    images = prepared.images(params.image_size, device)
    train_labels = dataset.training_labels(params.age_old)
    best_epochs = list(trial.best_epoch) or [settings.epochs]
    epochs = max(1, int(round(float(np.mean(best_epochs)))))
    models = []
    if ensemble_folds:
        folds = prepared.folds(n_folds=settings.folds, seed=settings.seed)
        for k, (train_idx, _) in enumerate(folds):
            fold_epochs = best_epochs[k] if k < len(best_epochs) else epochs
            fold_data = TrainingData(images, train_idx, train_labels[train_idx], train_idx[:0], train_labels[:0])
            with tqdm(total=fold_epochs, desc=f"trial {trial.number} fold {k + 1}", unit="ep",
                      disable=not progress) as bar:
                _, model = train_fold(params, fold_data, config=settings.train_config(epochs=fold_epochs),
                                      num_classes=dataset.num_classes, device=device,
                                      seed=fold_seed(settings.seed, params, k), progress=bar)
            models.append((f"fold{k}.safetensors", model))
    else:
        with tqdm(total=epochs, desc=f"retraining trial {trial.number} on all data", unit="ep",
                  disable=not progress) as bar:
            model = train_full(params, images, train_labels, config=settings.train_config(), epochs=epochs,
                               num_classes=dataset.num_classes, device=device,
                               seed=fold_seed(settings.seed, params, settings.folds), progress=bar)
        models.append(("model.safetensors", model))
    for name, model in models:
        save_model(model.cpu(), str(folder / name))
    mean, std = mean_std(models[0][1])
    return ExportConfig(
        backbone=params.backbone,
        head=params.head,
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        layout=dataset.layout,
        image_size=params.image_size,
        mean=tuple(mean),
        std=tuple(std),
        age_old_training=params.age_old,
        age_old_official=L.OFFICIAL_AGE_OLD,
        models=tuple(name for name, _ in models),
        study=study_name,
        trial=trial.number,
        params=params.as_dict(),
        cv_macro_f1=trial.value,
        fold_macro_f1=trial.fold_f1,
        epochs=epochs if not ensemble_folds else tuple(best_epochs),
        dataset_fingerprint=dataset.fingerprint(),
        versions=_versions(),
        tta=tta,
    )


def _stored_oofs(candidates, artifact_dir, dataset, study_name: str) -> list:
    """The stored OOF predictions of each candidate (None where missing or of other data).

    Raises:
        ExportError: The best trial has none: without them there is nothing to select or fit on.
    """

    oofs = [load_oof(trial, artifact_dir, dataset) for trial in candidates]
    if oofs[0] is None:
        raise ExportError(
            f"trial {candidates[0].number} of study {study_name!r} has no stored out-of-fold predictions for this "
            f"dataset in {artifact_dir}/ (a search stores them in its `artifacts` folder; an older search, another "
            f"folder, or other data has none). Pass `artifacts` FOLDER, or export without `ensemble`/`calibrate`")
    return oofs


def _select_ensemble(candidates, oofs, size: int, num_classes: int):
    """Caruana selection among the candidates with OOF; returns (member trials, weights, report)."""

    usable = [(t, oof) for t, oof in zip(candidates, oofs) if oof is not None]
    labels = usable[0][1].labels
    selection = caruana_ensemble([oof.probs for _, oof in usable], labels, size=size, n_classes=num_classes)
    members = [usable[m][0] for m in selection.members]  # in rank order: candidates are best first
    weights = list(selection.weights)
    report = EnsembleReport(tuple(t.number for t in members), tuple(weights), selection.f1,
                            selection.single_f1s[0])
    return members, weights, report


def _calibrate(blend: np.ndarray, best_oof, num_classes: int) -> CalibrationReport:
    """Offsets fitted on all OOF rows; their gain estimated by fitting on the other folds."""

    log_probs = np.log(np.clip(blend, 1e-7, None))
    gain = nested_offset_gain(log_probs, best_oof.labels, best_oof.folds, n_classes=num_classes)
    offsets = fit_class_offsets(log_probs, best_oof.labels, n_classes=num_classes)
    return CalibrationReport(tuple(float(o) for o in offsets), gain.uncalibrated, gain.nested)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` without ``force``, and one that holds no maskopt export."""
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass `force` to replace it, or `out` another folder")
    if out.exists() and not (looks_like_export(out) or (out.is_dir() and not any(out.iterdir()))):
        raise ExportError(f"{out} exists and is not a maskopt export (no {CONFIG_FILE} of format {EXPORT_FORMAT!r}); "
                          f"it is left as it is. Pass `out` another folder.")


def _staging_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` (beside the folder a link points to) to write the export
    into: the moves into place then stay on one filesystem, where a rename is atomic."""
    place = out.resolve()
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{place.name}.", dir=place.parent))
    except OSError as e:
        raise write_failed(out, e, error=ExportError) from None


def _move_into_place(tmp: Path, out: Path, *, force: bool) -> None:
    """Move the export staged in ``tmp`` into ``out``, replacing only what the export there wrote.

    Exports to one folder move in one at a time, under a lock beside it (:func:`_locked`), and each
    checks ``out`` again under it: another may have written it meanwhile. A new ``out``
    is ``tmp`` renamed. Otherwise the old export's own files (its config.json first, its models or
    member folders, its model.onnx, its submission.csv) are moved into a holding folder, then the new files in
    (config.json last), and the holding folder is removed. Every step is a rename on one
    filesystem: no data is copied, no space is needed. In between, ``out`` has no config.json,
    so it never reads as an export with files of two; a failed step undoes the steps done (a
    process killed among the renames leaves the old files in the hidden holding folder beside
    ``out``, and ``out`` without a config.json, which the next export refuses). Any other file in
    ``out`` (``predict``'s predictions.csv, a user's notes) is never touched.

    Raises:
        ExportError: ``out`` changed meanwhile (see :func:`_check_out`), or holds a file by a name
            the new export uses that the export there did not write.
    """
    place = out.resolve()
    with _locked(place.parent / f".{place.name}.lock"):
        _check_out(out, force)
        if not os.path.lexists(place):
            os.rename(tmp, place)
            return
        old = _own_entries(place)
        new = sorted(os.listdir(tmp), key=lambda name: (name == CONFIG_FILE, name))
        foreign = [name for name in new if name not in old and os.path.lexists(place / name)]
        if foreign:
            raise ExportError(f"{out} holds {', '.join(printable(n) for n in foreign)}, which the export there did "
                              f"not write (its {CONFIG_FILE} does not list it) and the new export would replace; "
                              f"it is left as it is, and the new export was not written. Move it away, or pass "
                              f"`out` another folder")
        held = Path(tempfile.mkdtemp(prefix=f".{place.name}.old-", dir=place.parent))
        moves = [(place / name, held / name) for name in old if os.path.lexists(place / name)]
        moves += [(tmp / name, place / name) for name in new]
        done = []
        try:
            for src, dst in moves:
                os.rename(src, dst)
                done.append((src, dst))
        except BaseException:
            for src, dst in reversed(done):
                os.rename(dst, src)
            os.rmdir(held)
            raise
        shutil.rmtree(held, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path``, which exists only while it is held.

    A process that waited on a lock file that its holder removed finds another file, or none, at
    the name, and locks anew: only the lock on the file at the name counts.
    """
    while True:
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            try:
                current = os.path.samestat(os.fstat(lock.fileno()), os.stat(path))
            except FileNotFoundError:
                current = False
            if current:
                try:
                    yield
                finally:
                    os.unlink(path)  # while still held: the next holder makes a new one
                return


def _own_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that its export wrote, config.json first (for an export whose
    config cannot be read: config.json and submission.csv)."""
    try:
        config = read_export_config(folder)
    except ExportError:
        return [CONFIG_FILE, SUBMISSION_FILE]
    files = [m.folder for m in config.members] if isinstance(config, EnsembleConfig) else list(config.models)
    if config.onnx is not None:
        files.append(config.onnx.file)
    return list(dict.fromkeys([CONFIG_FILE, *(Path(name).parts[0] for name in files), SUBMISSION_FILE]))


def _record_export(record: StudyRecord, best: TrialRecord, out: Path, models: tuple[str, ...], tta: bool) -> None:
    """Note the export on the trial and the study, so optuna-dashboard shows it.

    ``models`` are the weights files under ``out`` (an ensemble's inside its member folders).
    The export is complete by then: a storage that cannot take the note (its disk filled up
    meanwhile; a read-only one is refused before any work) costs the note only, with a warning.
    """
    path = out.resolve()
    try:
        record.record_export(ExportRecord(best.number, path, best.value, models, tta),
                             f"## Exported\n\nThis trial was retrained and exported to `{path}` "
                             f"(models: {', '.join(models)}; TTA: {tta}).\n")
    except StorageError as e:
        logger.warning(f"the export in {out} is complete, but the study does not note it (the dashboard and "
                       f"`maskopt report` will not show it): {e}")


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("maskopt", "timm", "torch", "optuna")}
