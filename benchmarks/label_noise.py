"""Label issues: does ``maskopt label-issues`` find the persons whose labels were flipped, and do
its drafted corrections help?

Demo data with known label noise (``make_demo_data(label_noise=...)``: a share of the train
persons get the other gender, an age in another band, or two photos of different mask states
swapped; ``label_noise.csv`` lists each flip). A small search (spaces/tiny.yaml's sampler and
parameters, shrunk) stores every complete trial's out-of-fold predictions; the finder averages
those of the best trials and drafts per-person corrections. Counted:

- flagged persons (any suggestion, drafted or listed) against the noisy persons: precision and
  recall;
- drafted fixes against the flips the corrections format can fix (gender, incorrect <-> normal
  swaps): a fix counts as right when it is the one that undoes the flip;
- eval macro F1 (``eval/solution.csv`` is clean) of the best trial retrained on all data with
  the drafted corrections applied (a copy of the study whose space names the draft as
  ``study.corrections``) against without, and with the true fixable corrections for reference.

Figures only, no targets: on demo sizes the search's models are weak and the counts small.
"""

from __future__ import annotations

import csv
import dataclasses

import benchmarks as B

NAME = "labels"
TITLE = "label issues: flipped persons found, and eval F1 with the drafted corrections"


def _truth(data) -> dict[str, dict]:
    """Noisy persons by id: their flipped field, and the fix that undoes it (None if none exists)."""
    ids = {}
    with (data / "train" / "train.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            ids[row["path"]] = row["id"]
    truth: dict[str, dict] = {}
    path = data / "label_noise.csv"
    if not path.exists():
        return truth
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            person = ids[row["person"]]
            entry = truth.setdefault(person, {"field": row["field"], "stems": set(), "fix": None})
            if row["field"] == "gender":
                entry["fix"] = row["true"]
            elif row["field"] == "mask":
                entry["stems"] |= {row["true"], row["given"]}
                if entry["stems"] == {"incorrect_mask", "normal"}:
                    entry["fix"] = "swap_incorrect_normal"
    return truth


def _export_score(cfg: B.Config, url: str, study_name: str, data, corrections, tag: str) -> float:
    """Eval macro F1 of the best trial retrained with ``corrections`` (a copy of the study)."""
    import optuna

    from maskopt.search.export import export_best, score
    from maskopt.search.study import record

    name = f"{study_name}-{tag}"
    optuna.copy_study(from_study_name=study_name, from_storage=url, to_storage=url, to_study_name=name)
    copy = optuna.load_study(study_name=name, storage=url)
    space = record.StudyRecord.of(copy).space
    settings = dataclasses.replace(space.study, corrections=None if corrections is None else str(corrections))
    copy.set_user_attr(record.SPACE, dataclasses.replace(space, study=settings).to_dict())
    out = cfg.workdir / f"export-{tag}"
    result = export_best(storage=url, study=name, data=data, out=out, device="cpu", threads=cfg.threads,
                         cache_dir=cfg.workdir / "cache", quiet=True)
    return score(result.submission, data / "eval" / "solution.csv").macro_f1


def run(cfg: B.Config) -> B.Report:
    from maskopt.search.data.demo import make_demo_data
    from maskopt.search.report.label_issues import label_issues, write_corrections_draft
    from maskopt.search.space import Constant
    from maskopt.search.study.runner import run_search

    quick = cfg.quick
    persons, eval_persons = (40, 12) if quick else (160, 40)
    size, image_size = (48, 48) if quick else (64, 48)
    folds, epochs, trials, top = (3, 8, 2, 2) if quick else (3, 8, 6, 3)
    noise = 0.1
    data = cfg.workdir / f"noisy-{persons}p"
    make_demo_data(data, persons=persons, eval_persons=eval_persons, size=size, seed=cfg.seed, label_noise=noise,
                   quiet=True)
    truth = _truth(data)

    space = B.benchmark_space(folds=folds, epochs=epochs, image_size=image_size, data=str(data), name="labels")
    # The multi head (mask, gender, age) learns the 18 classes from few persons far better than one 18-way layer.
    space = dataclasses.replace(space, dims={**space.dims, "head": Constant("multi")})
    url = f"sqlite:///{cfg.workdir / 'labels.db'}"
    artifacts = cfg.workdir / "artifacts"
    with B.Timer() as search_time:
        run_search(space, trials=trials, storage=url, study="labels", seed=cfg.seed, device="cpu",
                   cache_dir=cfg.workdir / "cache", threads=cfg.threads, artifacts=artifacts, checkpoints=False,
                   heartbeat_interval=None, quiet=True)
    with B.Timer() as find_time:
        found = label_issues(storage=url, study="labels", artifacts=artifacts, top=top)
    cfg.log(f"search {search_time.seconds:.0f} s, finder {find_time.seconds:.1f} s: {found.total_issues} images "
            f"flagged, {len(found.corrections)} corrections drafted, OOF macro F1 {found.oof_macro_f1:.4f}")

    flagged = {s.person for s in found.suggestions}
    noisy = set(truth)
    drafted = found.corrections
    fixable = {p: t["fix"] for p, t in truth.items() if t["fix"] is not None}
    right = sum(fixable.get(p) == fix for p, fix in drafted.items())

    def share(a, b):
        return a / b if b else None

    draft = write_corrections_draft(found, cfg.workdir / "draft.csv", force=True)
    oracle = cfg.workdir / "true-fixes.csv"
    with oracle.open("w", newline="") as f:
        csv.writer(f).writerows([("id", "fix"), *fixable.items()])
    scores = {}
    for tag, corrections in (("plain", None), ("draft", draft), ("oracle", oracle)):
        scores[tag] = _export_score(cfg, url, "labels", data, corrections, tag)
        cfg.log(f"eval macro F1 {tag}: {scores[tag]:.4f}")

    report = B.Report(NAME, TITLE, settings={
        "persons": persons, "eval_persons": eval_persons, "photo_size": size, "image_size": image_size,
        "label_noise": noise, "noisy_persons": len(noisy), "fixable_noisy_persons": len(fixable), "folds": folds,
        "epochs": epochs, "trials": trials, "top": top, "threads": cfg.threads})
    report.add("flagged persons: precision", share(len(flagged & noisy), len(flagged)), None, "",
               note=f"{len(flagged & noisy)} of {len(flagged)} flagged persons are noisy")
    report.add("flagged persons: recall", share(len(flagged & noisy), len(noisy)), None, "",
               note=f"{len(flagged & noisy)} of {len(noisy)} noisy persons flagged")
    report.add("drafted fixes: precision", share(right, len(drafted)), None, "",
               note=f"{right} of {len(drafted)} drafted fixes undo a flip")
    report.add("drafted fixes: recall", share(right, len(fixable)), None, "",
               note=f"{right} of {len(fixable)} fixable flips drafted right")
    report.add("eval macro F1 with drafted corrections", scores["draft"], scores["plain"], "without",
               ratio=scores["draft"] - scores["plain"], ratio_label="with - without")
    report.add("eval macro F1 with the true fixes", scores["oracle"], scores["plain"], "without",
               ratio=scores["oracle"] - scores["plain"], ratio_label="true - without")
    report.add("OOF macro F1 of the averaged trials", found.oof_macro_f1, None, "")
    report.notes.append(f"{found.total_issues} of {found.images} images flagged by confident learning; "
                        f"trials averaged: {', '.join(map(str, found.trials))}; search {search_time.seconds:.0f} s")
    report.details = {"truth": {p: {**t, "stems": sorted(t["stems"])} for p, t in truth.items()},
                      "drafted": drafted,
                      "suggestions": [dataclasses.asdict(s) for s in found.suggestions],
                      "eval_macro_f1": scores}
    return report
