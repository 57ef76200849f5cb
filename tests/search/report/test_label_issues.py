"""`maskopt label-issues`: ranked suspect labels from stored out-of-fold predictions, drafted
corrections, and the report's "Suspect labels" section, through the real CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from maskopt.cli import cli
from maskopt.search.data import labels as L
from maskopt.search.data.dataset import load_dataset
from maskopt.search.report.label_issues import LabelIssueReport, _suggest, merged_corrections


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --- the shared main study (clean demo data) ----------------------------------------------------


def test_lists_ranked_issues_of_the_main_study(main_study):
    artifacts = main_study.root / "maskopt-artifacts"
    result = run("label-issues", "--storage", main_study.url, "--study", "main", "--artifacts", artifacts,
                 "--limit", "5")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert re.search(r"rank\s+image\s+person\s+given\s+predicted\s+confidence", result.output)
    assert "correction(s) drafted" in result.output

    result = run("label-issues", "--storage", main_study.url, "--study", "main", "--artifacts", artifacts,
                 "--top", "2", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert len(found["trials"]) == 2  # both complete trials stored OOF; the pruned one did not
    assert found["images"] == len(load_dataset(main_study.data))
    issues = found["issues"]
    assert found["total_issues"] == len(issues)  # no --limit: all of them
    assert [i["rank"] for i in issues] == list(range(1, len(issues) + 1))
    confidences = [i["self_confidence"] for i in issues]
    assert confidences == sorted(confidences)  # most suspect first
    names = L.class_names()
    for issue in issues:
        assert issue["image_id"].startswith("train/images/") and issue["given"] != issue["predicted"]
        assert issue["given_name"] == names[issue["given"]]


def test_no_stored_oof_is_a_clear_error(main_study, tmp_path):
    empty = tmp_path / "elsewhere"
    result = run("label-issues", "--storage", main_study.url, "--study", "main", "--artifacts", empty)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    assert "no stored out-of-fold predictions" in result.output and str(empty) in result.output
    assert "--artifacts" in result.output
    assert not empty.exists()  # looking did not create the folder


# --- a tiny noisy dataset ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, cache_dir, space_dict):
    """One 2-fold trial on 20 persons at 32 px, 6 of them with a flipped label."""
    from maskopt.search.data.demo import make_demo_data
    from maskopt.search.space import parse_space
    from maskopt.search.study.runner import run_search

    root = tmp_path_factory.mktemp("noisy")
    data = root / "noisy-data"
    make_demo_data(data, persons=20, eval_persons=2, size=32, seed=0, label_noise=0.3)
    url = f"sqlite:///{root / 'noisy.db'}"
    space = parse_space(space_dict(study={"name": "noisy", "data": str(data), "epochs": 4}, params={"head": "multi"}))
    run_search(space, trials=1, storage=url, device="cpu", cache_dir=cache_dir, threads=1,
               heartbeat_interval=None, quiet=True, artifacts=root / "artifacts", checkpoints=False)
    return root, data, url


def test_noisy_data_drafts_a_valid_corrections_file(noisy, tmp_path):
    root, data, url = noisy
    out = tmp_path / "draft.csv"
    result = run("label-issues", "--storage", url, "--artifacts", root / "artifacts", "--write-corrections", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "DRAFT" in result.output and str(out) in result.output
    assert out.read_text().splitlines()[0] == "id,fix"
    corrected = load_dataset(data, corrections=out)  # the format load_dataset reads
    assert len(corrected) == len(load_dataset(data))

    result = run("label-issues", "--storage", url, "--artifacts", root / "artifacts", "--json", "--limit", "3")
    found = json.loads(result.output)
    assert len(found["issues"]) == min(3, found["total_issues"]) and found["total_issues"] > 0
    rows = out.read_text().splitlines()[1:]
    assert sorted(rows) == sorted(f"{p},{f}" for p, f in found["corrections"].items())
    persons = set(load_dataset(data).groups)
    for s in found["suggestions"]:
        assert s["person"] in persons and s["kind"] in ("gender", "swap_incorrect_normal", "age", "mask")
        assert s["fix"] in (None, "male", "female", "swap_incorrect_normal")


def test_the_library_takes_the_command_names(noisy, tmp_path):
    """``label_issues`` of the Python face: the options of ``maskopt label-issues``, by the same names."""
    from maskopt.errors import LabelIssuesError
    from maskopt.search.report import label_issues

    root, data, url = noisy
    out = tmp_path / "draft.csv"
    found = label_issues(storage=url, artifacts=root / "artifacts", limit=2, write_corrections=out)
    assert found.study_name == "noisy" and found.data == data and len(found.issues) <= 2
    assert out.read_text().splitlines()[0] == "id,fix"
    with pytest.raises(LabelIssuesError, match="already exists and was left as it is; pass `force`"):
        label_issues(storage=url, artifacts=root / "artifacts", write_corrections=out)
    again = label_issues(storage=url, artifacts=root / "artifacts", limit=2, write_corrections=out, force=True)
    assert again == found


def test_an_existing_corrections_file_is_kept_without_force(noisy, tmp_path):
    root, _, url = noisy
    out = tmp_path / "mine.csv"
    out.write_text("id,fix\n000001,male\n")
    result = run("label-issues", "--storage", url, "--artifacts", root / "artifacts", "--write-corrections", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "already exists" in result.output and "--force" in result.output
    assert out.read_text() == "id,fix\n000001,male\n"
    assert not list(tmp_path.glob(".mine.csv.tmp*"))

    result = run("label-issues", "--storage", url, "--artifacts", root / "artifacts", "--write-corrections", out,
                 "--force")
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("id,fix")


def test_report_shows_suspect_thumbnails(noisy, tmp_path):
    root, _, url = noisy
    page = tmp_path / "report.html"
    result = run("report", "--storage", url, "--artifacts", root / "artifacts", "--out", page)
    assert result.exit_code == 0, result.output
    section = page.read_text().split('<section id="suspects">')[1].split("</section>")[0]
    thumbnails = section.count('src="data:image/jpeg;base64,')
    assert 0 < thumbnails <= 24 and thumbnails == section.count('<figure class="suspect"')
    assert "→" in section

    result = run("report", "--storage", url, "--artifacts", tmp_path / "none", "--out", page)
    assert result.exit_code == 0, result.output
    section = page.read_text().split('<section id="suspects">')[1].split("</section>")[0]
    assert "no stored out-of-fold predictions" in section and "data:image" not in section


# --- the per-person rules, on made-up probabilities ---------------------------------------------


def person_probs(mask_seen, gender_seen, age_seen, p=0.9):
    """Probabilities of 7 images that look like (mask_seen[i], gender_seen, age_seen) with probability p."""
    probs = np.full((7, L.NUM_CLASSES), (1 - p) / (L.NUM_CLASSES - 1))
    for i, m in enumerate(mask_seen):
        probs[i, L.encode(m, gender_seen, age_seen)] = p
    return probs


def test_person_rules_gender_swap_and_listed_kinds():
    masks = [L.MASK_OF_STEM[s] for s in L.STEMS]  # 5 worn, incorrect, normal
    swapped = masks[:5] + [2, 1]
    cases = {  # person: (given mask per image, given gender, given age, what the images look like)
        "gender": (masks, 0, 1, (masks, 1, 1)),
        "swap": (masks, 1, 0, (swapped, 1, 0)),
        "age": (masks, 0, 0, (masks, 0, 2)),
        "clean": (masks, 1, 1, (masks, 1, 1)),
        # Persons the model gets right, so that it recalls each gender and mask state well
        # enough for its fixes to be drafted (see the weak-model test below).
        **{f"ok-{g}{i}": (masks, g, 1, (masks, g, 1)) for g in (0, 1) for i in range(3)},
    }
    probs, labels, groups = [], [], []
    for person, (given_masks, gender, age, seen) in cases.items():
        probs.append(person_probs(*seen))
        labels += [int(L.encode(m, gender, age)) for m in given_masks]
        groups += [person] * 7
    probs, labels, groups = np.vstack(probs), np.asarray(labels), np.asarray(groups, dtype=object)
    flagged = probs.argmax(1) != labels
    suggestions = {(s.person, s.kind): s for s in _suggest(probs, labels, groups, flagged, {})}
    assert suggestions[("gender", "gender")].fix == "female"
    assert suggestions[("swap", "swap_incorrect_normal")].fix == "swap_incorrect_normal"
    assert suggestions[("age", "age")].fix is None  # listed, not drafted: no fix for ages
    assert not any(person == "clean" or person.startswith("ok-") for person, _ in suggestions)

    # The study's own corrections: a swap already applied and drafted again is undone; a second fix
    # for a person who already has another kind is listed, not drafted.
    again = {(s.person, s.kind): s for s in _suggest(probs, labels, groups, flagged, {"gender": "swap_incorrect_normal"})}
    assert again[("gender", "gender")].fix is None and "one fix per person" in again[("gender", "gender")].evidence
    report = LabelIssueReport("s", None, "competition", None, (0,), len(labels), 0.0, 0, (),
                              tuple(_suggest(probs, labels, groups, flagged, {"swap": "swap_incorrect_normal",
                                                                                "other": "male"})),
                              {"swap": "swap_incorrect_normal", "other": "male"})
    assert merged_corrections(report) == {"other": "male", "gender": "female"}


def test_a_model_that_cannot_tell_genders_apart_drafts_no_gender_fix():
    masks = [L.MASK_OF_STEM[s] for s in L.STEMS]
    # Every person looks female to the model, men included: their "fixes" would all be wrong.
    probs = np.vstack([person_probs(masks, 1, 1) for _ in range(6)])
    labels = np.asarray([int(L.encode(m, g, 1)) for g in (0, 0, 0, 1, 1, 1) for m in masks])
    groups = np.asarray([f"p{i}" for i in range(6) for _ in range(7)], dtype=object)
    suggestions = _suggest(probs, labels, groups, probs.argmax(1) != labels, {})
    assert [s.kind for s in suggestions] == ["gender"] * 3
    assert all(s.fix is None and "not drafted: the model recognises only 0%" in s.evidence for s in suggestions)
