"""`maskopt report`: the page's numbers and sections, its edge cases, and that it renders in Chromium.

Most tests build a study through Optuna's ask/tell API with the trial attributes the objective
writes (fast); one runs a real tiny search. The browser tests load the page in headless Chromium
and check that every plot container holds plotly's SVG.
"""

from __future__ import annotations

import csv
import html
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from maskopt.cli import cli
from maskopt.errors import ExportError, StorageError
from maskopt.search.data.labels import NUM_CLASSES
from maskopt.search.export import SUBMISSION_FILE
from maskopt.search.report import report
from maskopt.search.space import load_space
from maskopt.search.study import record

ROOT = Path(__file__).resolve().parents[3]
DEMO_SPACE = ROOT / "spaces" / "tiny.yaml"
PLOTLY_BANNER = "plotly.js v"  # the first line of the bundle: it must be inlined exactly once


# --- building studies ---------------------------------------------------------------------------


def confusion_matrix(rng: np.random.Generator, n: int = NUM_CLASSES, per_class: int = 20, hit: float = 0.7) -> list:
    matrix = np.zeros((n, n), dtype=int)
    for i in range(n):
        for _ in range(per_class):
            j = i if rng.random() < hit else int(rng.integers(n))
            matrix[i, j] += 1
    return matrix.tolist()


def make_study(url: str, *, name: str = "demo", complete: int = 6, pruned: int = 4, failed: int = 1,
               confusion: bool = True, n_classes: int = NUM_CLASSES, layout: str = "competition",
               stopped_early: int = 0) -> optuna.Study:
    """A study shaped like one `maskopt search` writes, without training anything."""
    space = load_space(DEMO_SPACE, check_names=False)
    stored = space.to_dict()
    stored["study"].update(name=name, layout=layout)
    folds, epochs = space.study.folds, space.study.epochs
    # Parameters come from the real space through a throwaway in-memory study; each trial is
    # then written to the file in one transaction (add_trial), which keeps SQLite fast.
    sampling = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    study.set_user_attr(record.SPACE, stored)
    rng = np.random.default_rng(0)
    kinds = ["complete"] * complete + ["pruned"] * pruned + ["fail"] * failed + ["early"] * stopped_early
    rng.shuffle(kinds)
    start = datetime(2026, 1, 1, 9, 0)
    for kind in kinds:
        asked = sampling.ask()
        space.suggest(asked)
        quality = 0.4 + 0.5 * rng.random()
        n_folds = {"complete": folds, "pruned": 1, "fail": 1, "early": 2}[kind]
        fold_f1 = [round(float(np.clip(quality + rng.normal(0, 0.03), 0, 1)), 6) for _ in range(n_folds)]
        trained, intermediate = 0, {}
        for fold in range(n_folds):
            last_epoch = epochs if kind != "pruned" or fold < n_folds - 1 else 2
            for epoch in range(last_epoch):
                trained += 1
                running = np.mean(fold_f1[:fold] + [fold_f1[fold] * (0.6 + 0.4 * (epoch + 1) / epochs)])
                intermediate[fold * epochs + epoch] = float(running)
        seconds = round(30 + 60 * rng.random(), 3)
        attrs = {"fold_f1": fold_f1, "fold_accuracy": [min(1.0, f + 0.1) for f in fold_f1],
                 "best_epoch": [epochs] * n_folds, "epochs_trained": trained, "seconds": seconds,
                 "images_per_second": 650.0, "peak_memory_mb": 800.0, "param_count": 600_000, "device": "cpu"}
        if kind == "complete" and confusion:
            attrs["confusion"] = confusion_matrix(rng, n_classes)
        if kind == "pruned":
            attrs["prune_reason"] = "pruned at fold 1 epoch 2: running mean macro F1 0.3"
        if kind == "fail":
            attrs["fail_reason"] = "RuntimeError: CUDA out of memory"
        if kind == "early":
            attrs["pruned_after_folds"] = 2
        state = {"complete": TrialState.COMPLETE, "early": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
                 "fail": TrialState.FAIL}[kind]
        end = start + timedelta(seconds=seconds)
        trial = optuna.trial.create_trial(
            state=state, value=float(np.mean(fold_f1)) if state == TrialState.COMPLETE else None,
            params=asked.params, distributions=asked.distributions, user_attrs=attrs,
            intermediate_values=intermediate if kind != "fail" else {})
        trial.datetime_start, trial.datetime_complete = start, end
        study.add_trial(trial)
        sampling.tell(asked, state=TrialState.FAIL)
        start = end
    return study


def ranked_trials(study: optuna.Study) -> list:
    """Complete trials that ran every fold: the ones the report ranks."""
    return [t for t in study.trials if t.state == TrialState.COMPLETE and "pruned_after_folds" not in t.user_attrs]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A study with complete, pruned, failed and stopped-early trials, and its report."""
    folder = tmp_path_factory.mktemp("report")
    url = sqlite_url(folder / "study.db")
    study = make_study(url, complete=8, pruned=5, failed=1, stopped_early=1)
    out = report(storage=url, out=folder / "report.html")
    return study, out, out.read_text()


# --- reading pages ------------------------------------------------------------------------------


class PlotContainers(HTMLParser):
    """Plot containers (`data-plot`) of a page, and whether each holds plotly's SVG."""

    def __init__(self):
        super().__init__()
        self.plots: dict[str, bool] = {}
        self._open: list[tuple[str, int]] = []  # (key, div depth at which it opened)
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            self._depth += 1
            if "data-plot" in attrs:
                self._open.append((attrs["data-plot"], self._depth))
                self.plots[attrs["data-plot"]] = False
        if tag == "svg" and "main-svg" in (attrs.get("class") or "").split() and self._open:
            self.plots[self._open[-1][0]] = True

    def handle_endtag(self, tag):
        if tag == "div":
            if self._open and self._open[-1][1] == self._depth:
                self._open.pop()
            self._depth -= 1


def containers(page: str) -> dict[str, bool]:
    parser = PlotContainers()
    parser.feed(page)
    return parser.plots


def text_of(page: str) -> str:
    """The page's visible text, roughly: tags and the inlined script and style removed."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, flags=re.S)
    assert match, f"no section {key!r}"
    return text_of(match.group(1))


# --- the page -----------------------------------------------------------------------------------


def test_page_is_self_contained(full):
    _, _, page = full
    assert page.count(PLOTLY_BANNER) == 1, "plotly.js must be inlined exactly once"
    assert not re.search(r"<script[^>]+\bsrc=", page), "no external scripts"
    assert not re.search(r"<link\b", page), "no external stylesheets"
    assert "cdn.plot.ly/plotly" not in page.split(PLOTLY_BANNER)[0], "no CDN before the bundle"


def test_page_has_every_plot_and_section(full):
    _, _, page = full
    plots = containers(page)
    for key in ("history", "importance", "parallel", "intermediate"):
        assert key in plots, f"no {key} plot; containers: {sorted(plots)}"
    assert {k for k in plots if k.startswith("slice-")} == {
        "slice-backbone", "slice-lr", "slice-weight_decay", "slice-batch_size", "slice-sampler",
        "slice-aug_strength", "slice-loss", "slice-age_old", "slice-head"}
    for key in ("history", "importance", "parallel", "slice", "intermediate", "top", "best", "export"):
        assert f'<section id="{key}">' in page


def test_glance_numbers(full):
    study, _, page = full
    text = text_of(page.split('<section id="history">')[0])
    assert "15 trials" not in text and re.search(r"Trials 15\b", text)
    assert all(chip in text for chip in ("9 complete", "5 pruned", "1 fail", "1 stopped early"))
    best = max(ranked_trials(study), key=lambda t: t.value)
    assert f"Best macro F1 {best.value:.4f} trial {best.number}" in text
    folds = best.user_attrs["fold_f1"]
    assert f"± {np.std(folds):.4f} over 3 folds" in text and f"min {min(folds):.4f}" in text
    # compute saved: complete and pruned trials, against folds * epochs each (3 x 4 in tiny.yaml)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    trained = sum(t.user_attrs["epochs_trained"] for t in finished)
    full_run = len(finished) * 3 * 4
    assert f"{1 - trained / full_run:.0%}" in text
    assert f"{trained:,} epochs trained, of the {full_run:,} that running all {len(finished)} finished trials" in text
    seconds = sum(t.user_attrs["seconds"] for t in study.trials)
    assert "Time spent" in text and f"{int(round(seconds)) // 60} min" in text


def test_top_table_ranks_complete_trials_with_their_folds_and_params(full):
    study, _, page = full
    text = section(page, "top")
    ranked = sorted(ranked_trials(study), key=lambda t: t.value, reverse=True)
    assert "fold 1 fold 2 fold 3" in text and "backbone" in text and "weight_decay" in text
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", page.split('<section id="top">')[1].split("</section>")[0])
    assert [int(trial) for _, trial in rows] == [t.number for t in ranked][:10]
    best = ranked[0]
    assert all(f"{f:.4f}" in text for f in best.user_attrs["fold_f1"])


def test_best_trial_confusion_and_task_matrices(full):
    study, _, page = full
    text = section(page, "best")
    best = max(ranked_trials(study), key=lambda t: t.value)
    matrix = np.asarray(best.user_attrs["confusion"])
    assert "wear/male/<30" in text and "not wear/female/>=60" in text
    # mask task: blocks of 6 classes summed
    mask = np.zeros((3, 3), dtype=int)
    for i in range(18):
        for j in range(18):
            mask[i // 6, j // 6] += matrix[i, j]
    tp = np.diag(mask)
    f1 = np.mean(2 * tp / (mask.sum(0) + mask.sum(1)))
    assert f"mask F1 {f1:.4f}" in text
    assert "gender F1" in text and "age F1" in text
    assert f"({int(matrix.sum()):,} images)" in text


def test_export_section_scores_the_submission(tmp_path):
    url = sqlite_url(tmp_path / "study.db")
    study = make_study(url, complete=3, pruned=0, failed=0)
    export = tmp_path / "exports" / "demo"
    export.mkdir(parents=True)
    truth = [i % NUM_CLASSES for i in range(40)]
    predicted = [t if i % 4 else (t + 1) % NUM_CLASSES for i, t in enumerate(truth)]
    for path, answers in ((export / SUBMISSION_FILE, predicted), (tmp_path / "solution.csv", truth)):
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([("ImageID", "ans"), *((f"img{i}.jpg", a) for i, a in enumerate(answers))])
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    study.set_user_attr(record.EXPORT, record.ExportRecord(best.number, export, best.value, ("model.safetensors",),
                                                           tta=True).to_attr())
    page = report(storage=url, out=tmp_path / "r.html", solution=tmp_path / "solution.csv").read_text()
    text = section(page, "export")
    assert str(export) in text and "model.safetensors" in text and "flip" in text
    assert "score on solution macro F1" in text and "accuracy 0.7500" in text and "40 images" in text

    with pytest.raises(ExportError, match="solution file .*nope.csv does not exist"):
        report(storage=url, out=tmp_path / "r2.html", solution=tmp_path / "nope.csv")
    assert not (tmp_path / "r2.html").exists()


def test_no_export_says_so(full):
    _, _, page = full
    assert "No model has been exported from this study yet" in section(page, "export")


# --- studies with little in them ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """One complete trial (no confusion attr) and two pruned ones, reported through the CLI."""
    folder = tmp_path_factory.mktemp("sparse")
    url = sqlite_url(folder / "s.db")
    make_study(url, name="sparse", complete=1, pruned=2, failed=0, confusion=False)
    target = folder / "sub" / "sparse.html"
    result = CliRunner().invoke(cli, ["report", "--storage", url, "--study", "sparse", "--out", str(target)])
    return result, target


def test_cli_writes_the_report(sparse):
    result, target = sparse
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {target}\n"
    assert target.is_file() and PLOTLY_BANNER in target.read_text()


def test_one_complete_trial_skips_importances(sparse):
    _, target = sparse
    page = target.read_text()
    assert "importance" not in containers(page)
    assert "needs at least 2 complete trials; the study has 1" in section(page, "importance")
    assert {"history", "parallel", "intermediate"} <= set(containers(page))


def test_no_confusion_attr(sparse):
    _, target = sparse
    assert "has no out-of-fold predictions recorded" in section(target.read_text(), "best")


def test_all_pruned_study(tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    make_study(url, complete=0, pruned=4, failed=0)
    page = report(storage=url, out=tmp_path / "r.html").read_text()
    assert set(containers(page)) == {"intermediate"}, "only the intermediate values exist without a complete trial"
    for key in ("history", "importance", "parallel", "slice"):
        assert "every finished trial was pruned" in section(page, key)
    assert "nothing to rank" in section(page, "top")
    assert "No complete trial yet" in section(page, "best")
    assert re.search(r"Best macro F1 – no trial has finished every fold yet", text_of(page))


def test_other_class_count_shows_only_the_full_matrix(tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    make_study(url, complete=2, pruned=0, failed=0, n_classes=4, layout="folders")
    page = report(storage=url, out=tmp_path / "r.html").read_text()
    text = section(page, "best")
    assert "All classes" in text and "class 3" in text
    assert "mask F1" not in text and "gender" not in text


def test_empty_study(tmp_path):
    url = sqlite_url(tmp_path / "s.db")
    optuna.create_study(storage=url, study_name="empty")
    page = report(storage=url, out=tmp_path / "r.html").read_text()
    assert containers(page) == {}
    assert "no maskopt search space stored" in text_of(page)


# --- the command --------------------------------------------------------------------------------


def test_cli_errors(tmp_path):
    missing = tmp_path / "missing.db"
    result = CliRunner().invoke(cli, ["report", "--storage", sqlite_url(missing)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "Traceback" not in result.output
    assert not missing.exists(), "a report must not create an empty database"

    url = sqlite_url(tmp_path / "s.db")
    make_study(url, complete=1, pruned=0, failed=0, name="a")
    result = CliRunner().invoke(cli, ["report", "--storage", url, "--study", "b", "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 1
    assert "No study 'b'" in result.output and "Studies there: a" in result.output
    with pytest.raises(StorageError, match="No study 'b'"):
        report(storage=url, study="b", out=tmp_path / "r.html")
    two = optuna.create_study(storage=url, study_name="two", directions=["maximize", "minimize"])
    two.optimize(lambda trial: (trial.suggest_float("x", 0, 1), 1.0), n_trials=2)
    page = report(storage=url, study="two", out=tmp_path / "two.html").read_text()  # macro F1 is the first value
    assert 'data-plot="history"' in page


# --- in a browser -------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not on PATH; `make test` installs it "
                    "(scripts/install-chromium: apt-get install -y chromium)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                           *args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)


@pytest.mark.browser
def test_plots_render_in_chromium(full, tmp_path):
    """Every plot container holds plotly's SVG once Chromium has run the page's scripts."""
    _, out, page = full
    before = containers(page)
    assert before and not any(before.values()), "the file holds no SVG: the browser draws it"
    shot = tmp_path / "report.png"  # one run dumps the DOM and takes a screenshot
    result = chromium(out, tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1280,2400",
                      "--hide-scrollbars")
    assert result.returncode == 0, result.stderr[-2000:]
    after = containers(result.stdout)
    assert after.keys() == before.keys()
    empty = [key for key, has_svg in after.items() if not has_svg]
    assert not empty, f"plot containers without plotly SVG after rendering: {empty}"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").resize((64, 120)).getcolors(64 * 120)
        assert colours is None or len(colours) > 20, "the screenshot is (nearly) blank"


# --- a real search ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_study(tmp_path_factory, demo_data, cache_dir, space_dict):
    """A real search of 3 tiny trials on the shared demo data (see conftest.py)."""
    import yaml

    from maskopt.search.study.runner import run_search

    folder = tmp_path_factory.mktemp("real")
    space = folder / "tiny.yaml"
    space.write_text(yaml.safe_dump(space_dict(params={"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
                                                       "loss": ["ce", "label_smoothing"]})))
    url = sqlite_url(folder / "study.db")
    run_search(load_space(space), trials=3, storage=url, data=demo_data, device="cpu", cache_dir=cache_dir,
               threads=1, heartbeat_interval=None, quiet=True)
    return url


def test_report_of_a_real_search(real_study, demo_data, tmp_path):
    from maskopt.search.data.dataset import load_dataset

    out = report(storage=real_study, out=tmp_path / "real.html")
    page = out.read_text()
    text = text_of(page)
    assert re.search(r"Trials 3\b", text) and "3 complete" in text
    assert "2 folds × 1 epoch" in text and "this study has no pruner" in text
    assert "0%" in text and "6 epochs trained, of the 6" in text  # no pruner: nothing saved
    images = len(load_dataset(demo_data))  # every training image has one out-of-fold prediction
    assert "mask F1" in section(page, "best") and f"({images:,} images)" in section(page, "best")
    assert set(containers(page)) == {"history", "importance", "parallel", "intermediate", "slice-lr", "slice-loss",
                                     "pareto"}
