"""Retraining the best trial, exporting it, predicting with an export, scoring a submission.

An export folder holds everything needed to predict on any machine, with no access to the study:
``model.safetensors`` (or ``fold<k>.safetensors`` for a fold ensemble: weights that load without
executing code), ``config.json`` (how to rebuild and feed the model, where it came from) and, for
the competition layout, ``submission.csv``. Files are written into a temporary folder that is
renamed into place at the end, so a failed export never leaves a half-written folder.

Retraining rule: the best trial's parameters, on every training person with no hold-out, for the
mean over its folds of the epoch with the best validation F1 (rounded, at least 1), since that is
how long the model took to peak when it had slightly less data.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from safetensors.torch import save_model
from tqdm.auto import tqdm

from maskopt.errors import ExportError, SpaceError
from maskopt.search.data import labels as L
from maskopt.search.data.prepared import prepare_data
from maskopt.search.export.config import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EnsembleConfig,
    ExportConfig,
    MemberRef,
    looks_like_export,
)
from maskopt.search.export.predict import (
    SUBMISSION_FILE,
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
from maskopt.storage import DEFAULT_ARTIFACT_DIR


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
            ``calibrate``, or the folder exists without ``force``.
        DataError: The dataset cannot be read (or the study records none and ``data`` is not given).
    """

    if ensemble < 1:
        raise ExportError(f"the ensemble size must be at least 1, got {ensemble}")
    progress = not quiet
    record = StudyRecord.open(storage, study)
    space = record.space
    candidates = record.top(MAX_ENSEMBLE_CANDIDATES if ensemble > 1 else 1)
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
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass `force` to replace it, or `out` another folder")
    if out.exists() and not (looks_like_export(out) or (out.is_dir() and not any(out.iterdir()))):
        raise ExportError(f"{out} exists and is not a maskopt export (no {CONFIG_FILE} of format {EXPORT_FORMAT!r}); "
                          f"it is left as it is. Pass `out` another folder.")

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

    member_params = [space.params_from(t.params) for t in members]
    prepared = prepare_data(dataset, image_sizes=sorted({p.image_size for p in member_params}), cache_dir=cache_dir,
                            exclude_broken=settings.exclude_broken, progress=progress)
    with torch_session(device, threads) as torch_device:
        # Stage beside the export, so the final rename stays on one filesystem (the system temp
        # folder is often another one, where os.replace fails).
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
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
            submission = None
            if eval_set is not None:
                ids, paths = eval_set
                predictions = predict_images(tmp, paths, device=torch_device, tta=tta, cache_dir=cache_dir,
                                             progress=progress)
                write_submission(tmp / SUBMISSION_FILE, ids, predictions, header=("ImageID", "ans"))
                submission = out / SUBMISSION_FILE
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _record_export(record, best, out, tuple(models), tta)
    epochs = config.epochs if isinstance(config, ExportConfig) else 0
    return ExportResult(out, record.name, best.number, best.value, epochs, tuple(models), submission,
                        ensemble_report, calibration)


def _export_trial(folder: Path, trial: TrialRecord, params, settings, prepared, device, study_name: str, *,
                  ensemble_folds: bool, tta: bool, progress: bool) -> ExportConfig:
    """Retrain one trial, write its weights into ``folder`` and return its config (not yet written).

    Retraining uses the trial's original seeds (a retried trial's are its original's).
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
                                      seed=fold_seed(settings.seed, trial.origin, k), progress=bar)
            models.append((f"fold{k}.safetensors", model))
    else:
        with tqdm(total=epochs, desc=f"retraining trial {trial.number} on all data", unit="ep",
                  disable=not progress) as bar:
            model = train_full(params, images, train_labels, config=settings.train_config(), epochs=epochs,
                               num_classes=dataset.num_classes, device=device,
                               seed=fold_seed(settings.seed, trial.origin, settings.folds), progress=bar)
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


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an older export is removed only after that."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _record_export(record: StudyRecord, best: TrialRecord, out: Path, models: tuple[str, ...], tta: bool) -> None:
    """Note the export on the trial and the study, so optuna-dashboard shows it.

    ``models`` are the weights files under ``out`` (an ensemble's inside its member folders).
    """
    path = out.resolve()
    record.record_export(ExportRecord(best.number, path, best.value, models, tta),
                         f"## Exported\n\nThis trial was retrained and exported to `{path}` "
                         f"(models: {', '.join(models)}; TTA: {tta}).\n")


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("maskopt", "timm", "torch", "optuna")}
