"""Hostile names in what maskopt reads back: nothing in the report runs, nothing printed drives the terminal.

One study, made directly with Optuna as another program (or a hostile user) could make it: parameter
names and values, class names (from the dataset's CSV labels, stored with the study), a trial's
failure reason and a CSV column name hold HTML that would run in a browser and control characters
that would drive a terminal. The report is rendered in headless Chromium; every command that prints
them runs through the real CLI.
"""

from __future__ import annotations

import csv
import html

import numpy as np
import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from PIL import Image
from test_report import chromium, containers, section, text_of

from maskopt.cli import cli
from maskopt.search.data.dataset import load_dataset
from maskopt.search.space import load_space
from maskopt.search.study import record
from maskopt.search.study.record import StudyRecord

IMG = "<img src=x onerror=alert(1)>"
BREAKOUT = "q\"><img src=x onerror=\"document.body.dataset.pwned='param'\">"  # leaves an unescaped attribute
SCRIPT = "</script><script>document.body.dataset.pwned='script'</script>"  # leaves an unescaped script
CLASS_HTML = "<img src=x onerror=\"document.body.dataset.pwned='class'\">"
CLASS_TERMINAL = "bell\x07clear\x1b[2Jend"  # rings the bell and clears the screen when printed raw
CHOICE = "choice\x1b[2J"  # a parameter name with a control sequence
PAYLOADS = (IMG, BREAKOUT, SCRIPT, CLASS_HTML)
CONTROL = ("\x1b", "\x07")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, space_dict):
    """A CSV dataset with hostile class and column names, and a study of 3 complete trials on it
    with hostile parameter names and values and a hostile export record.

    Returns (folder, url, space file, artifacts folder). The best trial stores out-of-fold
    predictions that doubt two images' labels, so ``label-issues`` and the report list them.
    """
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "images").mkdir()
    names = [CLASS_HTML, CLASS_TERMINAL + SCRIPT]
    rows = []
    for i in range(12):
        path = folder / "images" / f"{i}.png"
        Image.new("RGB", (32, 32), (20 * i, 100, 200)).save(path)
        rows.append({"path": f"images/{i}.png", "label": names[i % 2], "group": f"g{i}", "col\x1b[2J": "x"})
    data = folder / "data.csv"
    with data.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    space_path = folder / "space.yaml"
    space_path.write_text(yaml.safe_dump(space_dict(study={"name": "hostile", "data": str(data)})))
    dataset = load_dataset(data)
    space, _ = load_space(space_path).for_layout(dataset.layout)

    url = f"sqlite:///{folder / 'hostile.db'}"
    study = optuna.create_study(storage=url, study_name="hostile", direction="maximize")
    StudyRecord.of(study).bind_space(space)
    StudyRecord.of(study).set_dataset_facts(dataset.layout, dataset.class_names)
    study.set_user_attr(record.EXPORT, {"trial": 2, "path": f"/nowhere/{SCRIPT}", "cv_macro_f1": 0.65,
                                        "models": [CLASS_HTML], "tta": False})

    # Out-of-fold predictions: confident and right, but for two images whose label they contradict.
    artifacts = folder / "artifacts"
    artifacts.mkdir()
    labels = np.asarray(dataset.labels)
    probs = np.full((len(labels), 2), 0.05)
    probs[np.arange(len(labels)), labels] = 0.95
    probs[[0, 1]] = probs[[0, 1], ::-1]
    np.savez_compressed(artifacts / "oof-best.npz", probs=probs.astype(np.float16), labels=labels.astype(np.int16),
                        folds=(np.arange(len(labels)) % 2).astype(np.int16), dataset=np.array(dataset.fingerprint()))

    distributions = {IMG: FloatDistribution(0.0, 1.0), BREAKOUT: FloatDistribution(0.0, 1.0),
                     CHOICE: CategoricalDistribution([SCRIPT, "plain\x07"])}
    for i in range(3):
        attrs = {record.FOLD_F1: [0.5 + 0.1 * i, 0.6], record.BEST_EPOCH: [1, 1], record.SECONDS: 3.0 + i,
                 record.EPOCHS_TRAINED: 2, record.CONFUSION: [[5, 1], [1, 5]]}
        if i == 2:
            attrs[record.OOF_ARTIFACT] = "oof-best.npz"
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=0.55 + 0.05 * i, distributions=distributions, user_attrs=attrs,
            params={IMG: 0.1 + 0.3 * i, BREAKOUT: 0.9 - 0.3 * i, CHOICE: [SCRIPT, "plain\x07"][i % 2]},
            intermediate_values={0: 0.4 + 0.05 * i, 1: 0.5 + 0.05 * i}))

    failing = optuna.create_study(storage=url, study_name="failing", direction="maximize")
    StudyRecord.of(failing).bind_space(space)
    failing.add_trial(optuna.trial.create_trial(state=TrialState.FAIL,
                                                user_attrs={record.FAIL_REASON: f"boom {CLASS_TERMINAL}"}))
    optuna.create_study(storage=url, study_name="evil\x1b[2J\x07")
    return folder, url, space_path, artifacts


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_printable(output: str) -> None:
    for char in CONTROL:
        assert char not in output, f"raw {char!r} printed: {output!r}"
    assert "Traceback" not in output


# --- the HTML report ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(hostile):
    folder, url, _, artifacts = hostile
    out = folder / "report.html"
    result = run("report", "--storage", url, "--study", "hostile", "--artifacts", artifacts, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_report_escapes_every_stored_string(page):
    text = page.read_text()
    for payload in PAYLOADS:
        assert payload not in text, f"{payload!r} is in the page unescaped"
    visible = text_of(text)
    assert IMG in visible and BREAKOUT in visible, "parameter names are shown, as text"
    assert CLASS_HTML in section(text, "best") and CLASS_HTML in section(text, "suspects")
    assert SCRIPT in section(text, "export") and CLASS_HTML in section(text, "export")
    plots = containers(text)
    assert {"history", "importance", "parallel", "intermediate", f"slice-{IMG}", f"slice-{BREAKOUT}"} <= set(plots)


@pytest.mark.browser
def test_report_runs_no_stored_script_in_chromium(page, tmp_path):
    result = chromium(page, tmp_path, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "data-pwned" not in dom, "a payload from the study ran"
    assert '<img src="x"' not in dom, "a payload from the study became an element"
    assert html.escape(IMG, quote=False) in dom, "the parameter name is drawn as text"
    empty = [key for key, has_svg in containers(dom).items() if not has_svg]
    assert not empty, f"plots that did not draw: {empty}"


# --- what the commands print ---------------------------------------------------------------------


def test_label_issues_escapes_class_and_image_names(hostile):
    _, url, _, artifacts = hostile
    result = run("label-issues", "--storage", url, "--study", "hostile", "--artifacts", artifacts)
    assert result.exit_code == 0, result.output
    assert_printable(result.output)
    assert "bell\\x07clear\\x1b[2Jend" in result.output


def test_studies_escapes_study_names(hostile):
    _, url, _, _ = hostile
    result = run("studies", "--storage", url)
    assert result.exit_code == 0, result.output
    assert_printable(result.output)
    assert "evil\\x1b[2J\\x07" in result.output


def test_search_escapes_notes_and_the_summary(hostile, cache_dir):
    _, url, space, _ = hostile
    result = run("search", "--space", space, "--storage", url, "--trials", 3, "--no-export", "--cache-dir", cache_dir)
    assert result.exit_code == 0, result.output
    assert_printable(result.output)
    assert "col\\x1b[2J" in result.output, "the note on the CSV's unread column"
    assert "choice\\x1b[2J=plain\\x07" in result.output, "the top trials' parameters"


def test_search_escapes_failure_reasons(hostile, cache_dir):
    _, url, space, _ = hostile
    result = run("search", "--space", space, "--storage", url, "--study", "failing", "--trials", 1, "--no-export",
                 "--cache-dir", cache_dir, "--quiet")
    assert result.exit_code == 1
    assert_printable(result.output)
    assert "boom bell\\x07clear\\x1b[2Jend" in result.output


def test_error_messages_escape_what_they_quote(hostile, tmp_path):
    _, url, _, _ = hostile
    result = run("report", "--storage", url, "--study", "hostile", "--solution", tmp_path / "no\x1b[2J.csv",
                 "--out", tmp_path / "r.html")
    assert result.exit_code == 1 and result.output.startswith("Error: solution file")
    assert_printable(result.output)
    assert "no\\x1b[2J.csv" in result.output
