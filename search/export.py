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

import codecs
import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskopt.errors import DataError, ExportError, SpaceError, shorten
from maskopt.search import labels as L

CONFIG_FILE = "config.json"
EXPORT_FORMAT = "maskopt-export/1"
SUBMISSION_FILE = "submission.csv"
EXPORT_ATTR = "maskopt_export"


@dataclass(frozen=True)
class EnsembleReport:
    """What ``--ensemble K`` chose, measured on the pooled out-of-fold predictions."""

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
    epochs: int
    models: tuple[str, ...]
    submission: Path | None
    ensemble: EnsembleReport | None = None
    calibration: CalibrationReport | None = None


MAX_ENSEMBLE_CANDIDATES = 20
"""Ensemble selection looks at the study's best complete trials, at most this many."""


def export_best(
    *,
    storage_url: str | None,
    study_name: str | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    tta: bool = False,
    ensemble_folds: bool = False,
    ensemble: int = 1,
    calibrate: bool = False,
    artifact_dir: str | Path | None = None,
    force: bool = False,
    device: str = "auto",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ExportResult:
    """Retrain the study's best complete trial (or an ensemble of its best) and export it.

    Args:
        storage_url: The study storage (None: ``maskopt.db`` here).
        study_name: The study; may be omitted when the storage holds one study.
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
        artifact_dir: The artifact folder the search stored out-of-fold predictions in
            (default ``maskopt-artifacts``); read for ``ensemble`` and ``calibrate``.
        force: Replace an existing export folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch (default: the free cores).
        cache_dir: Decoded-image cache folder.
        progress: Show progress bars.

    Raises:
        ExportError: No such study, no complete trial, no stored out-of-fold predictions for
            ``ensemble`` or ``calibrate``, or the folder exists without ``force``.
    """
    from maskopt.search.data import prepare_data
    from maskopt.search.dataset import load_dataset
    from maskopt.search.objective import release_memory
    from maskopt.search.runner import SPACE_ATTR, check_study_name, setup_torch, top_trials
    from maskopt.search.space import parse_space
    from maskopt.storage import DEFAULT_ARTIFACT_DIR, load_existing_study, open_storage

    if ensemble < 1:
        raise ExportError(f"the ensemble size must be at least 1, got {ensemble}")
    storage = open_storage(storage_url, heartbeat_interval=None, create=False)  # a typo must not make a new file
    study = load_existing_study(storage=storage, study_name=study_name)
    if SPACE_ATTR not in study.user_attrs:
        raise ExportError(f"study {study.study_name!r} was not made by maskopt search (it has no stored search space)")
    candidates = top_trials(study, MAX_ENSEMBLE_CANDIDATES if ensemble > 1 else 1)
    if not candidates:
        states = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name] = states.get(t.state.name, 0) + 1
        counts = ", ".join(f"{n} {s.lower()}" for s, n in states.items()) or "no trials"
        raise ExportError(f"study {study.study_name!r} has no complete trial to export ({counts}); "
                          f"run more trials with maskopt search")
    best = candidates[0]
    if out is None:
        try:
            out = Path("exports") / check_study_name(study.study_name)
        except SpaceError as e:
            raise ExportError(f"{e} Or pass --out FOLDER for this study's export.") from None
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it, or --out another folder")
    if out.exists() and not (_is_export(out) or (out.is_dir() and not any(out.iterdir()))):
        raise ExportError(f"{out} exists and is not a maskopt export (no {CONFIG_FILE} of format {EXPORT_FORMAT!r}); "
                          f"it is left as it is. Pass --out another folder.")

    space = parse_space(study.user_attrs[SPACE_ATTR], source=f"study {study.study_name!r}", check_names=False)
    settings = space.study
    data_path = data if data is not None else settings.data
    if data_path is None:
        raise ExportError("the study records no dataset path; pass --data")
    dataset = load_dataset(data_path, layout=settings.layout, corrections=settings.corrections,
                           exclude_broken=settings.exclude_broken)
    space, _ = space.for_layout(dataset.layout)
    eval_set = _eval_set(Path(data_path), dataset.layout)  # checked before hours of retraining

    members, weights, ensemble_report, calibration = [best], [1.0], None, None
    if ensemble > 1 or calibrate:
        oofs = _stored_oofs(candidates, artifact_dir or DEFAULT_ARTIFACT_DIR, dataset, study.study_name)
        if ensemble > 1:
            members, weights, ensemble_report = _select_ensemble(candidates, oofs, ensemble, dataset.num_classes)
        if calibrate:
            by_number = {t.number: oof for t, oof in zip(candidates, oofs) if oof is not None}
            blend = sum(w * by_number[t.number].probs for t, w in zip(members, weights))
            calibration = _calibrate(blend, by_number[best.number], dataset.num_classes)

    member_params = [space.params_from(t.params) for t in members]
    prepared = prepare_data(dataset, image_sizes=sorted({p.image_size for p in member_params}), cache_dir=cache_dir,
                            exclude_broken=settings.exclude_broken, progress=progress)
    torch_device = setup_torch(device, threads)

    # Stage beside the export, so the final rename stays on one filesystem (the system temp folder
    # is often another one, where os.replace fails).
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if len(members) == 1:
            config = _export_trial(tmp, best, member_params[0], settings, prepared, torch_device, study.study_name,
                                   ensemble_folds=ensemble_folds, progress=progress)
        else:
            folders = []
            for trial, params in zip(members, member_params):
                folder = f"member-trial-{trial.number}"
                (tmp / folder).mkdir()
                member = _export_trial(tmp / folder, trial, params, settings, prepared, torch_device,
                                       study.study_name, ensemble_folds=ensemble_folds, progress=progress)
                (tmp / folder / CONFIG_FILE).write_text(json.dumps({**member, "tta": tta}, indent=2) + "\n")
                folders.append(folder)
            config = {"format": EXPORT_FORMAT, "num_classes": dataset.num_classes,
                      "class_names": list(dataset.class_names), "layout": dataset.layout,
                      "members": [{"folder": f, "weight": w, "trial": t.number}
                                  for f, w, t in zip(folders, weights, members)],
                      "study": study.study_name, "trial": best.number, "cv_macro_f1": best.value,
                      "ensemble": dataclasses.asdict(ensemble_report),
                      "dataset_fingerprint": dataset.fingerprint(), "versions": _versions()}
        config["tta"] = tta
        if calibration is not None:
            config["class_offsets"] = list(calibration.offsets)
            config["calibration"] = dataclasses.asdict(calibration)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        release_memory(torch_device)
        submission = None
        if eval_set is not None:
            ids, paths = eval_set
            predictions = predict_images(tmp, paths, device=torch_device, tta=tta, cache_dir=cache_dir, progress=progress)
            write_submission(tmp / SUBMISSION_FILE, ids, predictions, header=("ImageID", "ans"))
            submission = out / SUBMISSION_FILE
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _record_export(study, best, out, storage, config)
    models = tuple(config["models"]) if "models" in config else tuple(
        f"{m['folder']}/{name}" for m in config["members"]
        for name in json.loads((out / m["folder"] / CONFIG_FILE).read_text())["models"])
    return ExportResult(out, study.study_name, best.number, best.value, config.get("epochs", 0), models, submission,
                        ensemble_report, calibration)


def _export_trial(folder: Path, trial, params, settings, prepared, device, study_name: str, *,
                  ensemble_folds: bool, progress: bool) -> dict:
    """Retrain one trial, write its weights into ``folder`` and return its config (not yet written).

    Retraining uses the trial's original seeds (a retried trial's are its original's).
    """
    from safetensors.torch import save_model
    from tqdm.auto import tqdm

    from maskopt.search.objective import fold_seed
    from maskopt.search.runner import trial_origin
    from maskopt.search.training import TrainingData, mean_std, train_fold, train_full

    dataset = prepared.dataset
    images = prepared.images(params.image_size, device)
    train_labels = dataset.training_labels(params.age_old)
    best_epochs = trial.user_attrs.get("best_epoch") or [settings.epochs]
    epochs = max(1, int(round(float(np.mean(best_epochs)))))
    origin = trial_origin(trial)
    models = []
    if ensemble_folds:
        folds = prepared.folds(n_folds=settings.folds, seed=settings.seed)
        for k, (train_idx, _) in enumerate(folds):
            fold_epochs = best_epochs[k] if k < len(best_epochs) else epochs
            fold_data = TrainingData(images, train_idx, train_labels[train_idx], train_idx[:0], train_labels[:0])
            with tqdm(total=fold_epochs, desc=f"trial {trial.number} fold {k + 1}", unit="ep",
                      disable=not progress) as bar:
                _, model = train_fold(params, fold_data, settings=_with_epochs(settings, fold_epochs),
                                      num_classes=dataset.num_classes, device=device,
                                      seed=fold_seed(settings.seed, origin, k), progress=bar)
            models.append((f"fold{k}.safetensors", model))
    else:
        with tqdm(total=epochs, desc=f"retraining trial {trial.number} on all data", unit="ep",
                  disable=not progress) as bar:
            model = train_full(params, images, train_labels, settings=settings, epochs=epochs,
                               num_classes=dataset.num_classes, device=device,
                               seed=fold_seed(settings.seed, origin, settings.folds), progress=bar)
        models.append(("model.safetensors", model))
    for name, model in models:
        save_model(model.cpu(), str(folder / name))
    mean, std = mean_std(models[0][1])
    return {
        "format": EXPORT_FORMAT,
        "backbone": params.backbone,
        "head": params.head,
        "num_classes": dataset.num_classes,
        "class_names": list(dataset.class_names),
        "layout": dataset.layout,
        "image_size": params.image_size,
        "mean": list(mean),
        "std": list(std),
        "age_old_training": params.age_old,
        "age_old_official": L.OFFICIAL_AGE_OLD,
        "models": [name for name, _ in models],
        "study": study_name,
        "trial": trial.number,
        "params": params.as_dict(),
        "cv_macro_f1": trial.value,
        "fold_macro_f1": trial.user_attrs.get("fold_f1"),
        "epochs": epochs if not ensemble_folds else best_epochs,
        "dataset_fingerprint": dataset.fingerprint(),
        "versions": _versions(),
    }


def _stored_oofs(candidates, artifact_dir, dataset, study_name: str) -> list:
    """The stored OOF predictions of each candidate (None where missing or of other data).

    Raises:
        ExportError: The best trial has none: without them there is nothing to select or fit on.
    """
    from maskopt.search.oof import load_oof

    fingerprint = dataset.fingerprint()
    oofs = []
    for trial in candidates:
        oof = load_oof(trial, artifact_dir)
        oofs.append(oof if oof is not None and oof.dataset == fingerprint and len(oof.probs) == len(dataset) else None)
    if oofs[0] is None:
        raise ExportError(
            f"trial {candidates[0].number} of study {study_name!r} has no stored out-of-fold predictions for this "
            f"dataset in {artifact_dir}/ (a search stores them in its --artifacts folder; an older search, another "
            f"folder, or other data has none). Pass --artifacts FOLDER, or export without --ensemble/--calibrate")
    return oofs


def _select_ensemble(candidates, oofs, size: int, num_classes: int):
    """Caruana selection among the candidates with OOF; returns (member trials, weights, report)."""
    from maskopt.search.oof import caruana_ensemble

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
    from maskopt.search.oof import fit_class_offsets, nested_offset_gain

    log_probs = np.log(np.clip(blend, 1e-7, None))
    gain = nested_offset_gain(log_probs, best_oof.labels, best_oof.folds, n_classes=num_classes)
    offsets = fit_class_offsets(log_probs, best_oof.labels, n_classes=num_classes)
    return CalibrationReport(tuple(float(o) for o in offsets), gain.uncalibrated, gain.nested)


def _with_epochs(settings, epochs: int):
    return dataclasses.replace(settings, epochs=epochs)


def _eval_set(data_path: Path, layout: str):
    """Competition eval ids and paths, or None for layouts without an eval folder."""
    from maskopt.search.dataset import load_eval

    if layout != "competition":
        return None
    eval_set = load_eval(data_path)
    return eval_set.image_ids, eval_set.paths


def _is_export(folder: Path) -> bool:
    """True when ``folder`` holds an export that maskopt wrote, so replacing it loses nothing else."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == EXPORT_FORMAT


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


def _record_export(study, best, out: Path, storage, config: dict) -> None:
    """Note the export on the trial and the study, so optuna-dashboard shows it."""
    import optuna
    from optuna_dashboard import save_note

    record = {"trial": best.number, "path": str(out.resolve()), "cv_macro_f1": best.value,
              "models": config["models"], "tta": config["tta"]}
    study.set_user_attr(EXPORT_ATTR, record)
    # A finished trial's attributes are read-only; dashboard notes live in study attributes.
    save_note(optuna.Trial(study, best._trial_id),
              f"## Exported\n\nThis trial was retrained and exported to `{record['path']}` "
              f"(models: {', '.join(config['models'])}; TTA: {config['tta']}).\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("maskopt", "timm", "torch", "optuna")}


# --- prediction ---------------------------------------------------------------------------------


def load_export(model_dir: str | Path, device) -> tuple[dict, list]:
    """The config and models of a one-trial export folder (weights loaded without executing code).

    Raises:
        ExportError: The config is invalid (see :func:`read_config`) or a weights file does not
            load into the model it describes (truncated, not safetensors, other shapes).
    """
    from safetensors.torch import load_model

    from maskopt.search.models import build_model

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
        models.append(model.to(device).eval())
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
    from maskopt.errors import MaskoptError
    from maskopt.search.models import HEADS, check_backbone

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
    import torch

    from maskopt.search.cache import load_images
    from maskopt.search.dataset import format_problems
    from maskopt.search.training import predict_rows

    config, models = load_export(model_dir, device)
    cache = load_images(paths, image_size=config["image_size"], cache_dir=cache_dir, progress=progress)
    if cache.bad:
        listed = [f"{paths[i]}: {reason}" for i, reason in sorted(cache.bad.items())]
        raise DataError(format_problems(f"{len(listed)} image(s) to predict cannot be read", listed))
    images = torch.from_numpy(np.array(cache.images))  # a writable copy of the read-only memory map
    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1)
    rows = np.arange(len(paths))
    probs = sum(predict_rows(m, images, rows, device, mean, std, batch_size=64, flip=tta) for m in models)
    return (probs / len(models)).numpy()


def predict(*, model_dir: str | Path, data: str | Path, out: str | Path | None = None, device: str = "auto",
            threads: int | None = None, tta: bool | None = None, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Write predictions of an export for a dataset.

    For the competition layout: ``ImageID,ans`` for every row of ``eval/info.csv``, in order.
    For a class-folder or CSV dataset: ``path,label`` for each of its images, with class names.

    Returns:
        The file written (default ``<model_dir>/predictions.csv``).
    """
    from maskopt.search.dataset import detect_layout, load_dataset
    from maskopt.search.runner import setup_torch

    data = Path(data)
    config = read_config(model_dir)  # checked before the device is set up or any data is read
    torch_device = setup_torch(device, threads)
    out = Path(out) if out is not None else Path(model_dir) / "predictions.csv"
    if detect_layout(data) == "competition":
        ids, paths = _eval_set(data, "competition")
        predictions = predict_images(model_dir, paths, device=torch_device, tta=tta, cache_dir=cache_dir, progress=progress)
        write_submission(out, ids, predictions, header=("ImageID", "ans"))
    else:
        dataset = load_dataset(data)
        predictions = predict_images(model_dir, dataset.paths, device=torch_device, tta=tta, cache_dir=cache_dir,
                                     progress=progress)
        base = dataset.root if dataset.root.is_dir() else dataset.root.parent
        ids = [p.relative_to(base).as_posix() for p in dataset.paths]
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


@dataclass(frozen=True)
class Score:
    """Scores of a submission against a solution.

    Attributes:
        macro_f1: Mean of the per-class F1 over the classes in truth or prediction (the
            competition metric, scikit-learn's f1_score with average="macro").
        accuracy: Fraction of exact matches.
        task_f1: Macro F1 of each task: mask (3 classes), gender (2), age (3).
        confusion: 18x18 counts, rows true class, columns predicted.
        count: Rows scored.
    """

    macro_f1: float
    accuracy: float
    task_f1: dict[str, float]
    confusion: list[list[int]]
    count: int

    def to_dict(self) -> dict:
        return {"macro_f1": self.macro_f1, "accuracy": self.accuracy, "task_f1": self.task_f1,
                "count": self.count, "confusion": self.confusion}


def score_submission(submission: str | Path, solution: str | Path) -> Score:
    """Score a competition submission (``ImageID,ans``) against a solution file.

    Raises:
        ExportError: Missing files, wrong headers, values outside 0..17, or ids that differ
            from the solution's (in count or order).
    """
    from sklearn.metrics import confusion_matrix, f1_score

    from maskopt.search.training import macro_f1

    sub_ids, predicted = _read_answers(Path(submission))
    sol_ids, truth = _read_answers(Path(solution))
    if len(sub_ids) != len(sol_ids):
        raise ExportError(f"{submission} has {len(sub_ids)} rows but {solution} has {len(sol_ids)}; "
                          f"a submission needs one row per eval image, in info.csv order")
    for line, (a, b) in enumerate(zip(sub_ids, sol_ids), start=2):
        if a != b:
            raise ExportError(f"{submission}, line {line}: ImageID {_show(a)} where {solution} has {_show(b)}; "
                              f"keep the rows in info.csv order")
    y_true, y_pred = np.asarray(truth), np.asarray(predicted)
    parts_true, parts_pred = L.decode(y_true), L.decode(y_pred)
    task_f1 = {task: float(f1_score(t, p, average="macro", zero_division=0))
               for task, t, p in zip(("mask", "gender", "age"), parts_true, parts_pred)}
    return Score(
        macro_f1=macro_f1(y_true, y_pred),
        accuracy=float(np.mean(y_true == y_pred)),
        task_f1=task_f1,
        confusion=confusion_matrix(y_true, y_pred, labels=list(range(L.NUM_CLASSES))).tolist(),
        count=len(y_true),
    )


# A submission of the 12,600 eval images is under 1 MB; the cap keeps memory small whatever the file.
_ANSWERS_MAX_BYTES = 64 << 20
_ASCII_CLASS = re.compile(r"[0-9]{1,2}")  # int() also takes '٣' and str.isdigit() takes '²': ASCII only


def _read_answers(path: Path) -> tuple[list[str], list[int]]:
    """The ImageID and ans columns of a submission or solution (UTF-8, with or without a BOM).

    Raises:
        ExportError: Naming the file, the line and the (shortened) value.
    """
    if not path.is_file():
        raise ExportError(f"{path} is missing")
    data = _read_capped(path, _ANSWERS_MAX_BYTES, "a submission")
    if data.startswith(codecs.BOM_UTF8):  # spreadsheet programs write one; same as encoding 'utf-8-sig'
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ExportError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r}); "
                          f"a submission is a CSV file 'ImageID,ans'") from None
    ids, answers = [], []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        names = [h.strip() for h in header or []]
        if names[:2] != ["ImageID", "ans"]:
            got = shorten(",".join(names), 80) or "(empty file)"
            raise ExportError(f"{path}: header must be 'ImageID,ans', got {got}")
        duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
        if duplicated:  # which of the two columns would be read is a guess: refuse
            raise ExportError(f"{path}: header names column {_show(duplicated[0])} more than once; "
                              f"header must be 'ImageID,ans'")
        for line, row in enumerate(reader, start=2):
            if len(row) < 2:
                raise ExportError(f"{path}, line {line}: expected 'ImageID,ans', got {_show(','.join(row))}")
            value = row[1].strip()
            if not _ASCII_CLASS.fullmatch(value) or int(value) >= L.NUM_CLASSES:
                raise ExportError(f"{path}, line {line}: ans {_show(value)} is not a class 0..{L.NUM_CLASSES - 1}")
            ids.append(row[0].strip())
            answers.append(int(value))
    except csv.Error as e:  # e.g. a field over csv's size limit
        raise ExportError(f"{path}, line {reader.line_num}: not a valid CSV row ({e})") from None
    return ids, answers
