"""``maskopt eda``: the dataset summary, its files, and the command's text and JSON output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_trees import write_competition

from maskopt.cli import cli
from maskopt.search.data import labels as L
from maskopt.search.data.dataset import load_dataset
from maskopt.search.data.demo import DemoDataSummary, make_demo_data
from maskopt.search.data.eda import summarise_dataset, write_eda_files

ROOT = Path(__file__).resolve().parents[3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoDataSummary:
    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", persons=12, eval_persons=4, size=32, seed=0)


def test_summary_of_demo_data(demo):
    dataset = load_dataset(demo.out)
    summary = summarise_dataset(dataset)
    assert summary.layout == "competition" and summary.groups == 12 and summary.images == 84
    assert summary.class_counts == list(demo.class_counts)  # what the generator says it wrote
    assert summary.class_names == list(L.class_names())
    nonzero = [c for c in demo.class_counts if c]
    assert summary.imbalance_ratio == round(max(nonzero) / min(nonzero), 2)
    assert summary.task_counts["mask"] == {"wear": 60, "incorrect": 12, "not wear": 12}
    for task in ("gender", "age"):
        assert sum(summary.task_counts[task].values()) == 84
    assert sum(summary.age_histogram.values()) == 12
    assert summary.image_sizes == {"32x32": 84}
    assert summary.extensions == {ext: sum(p.suffix == ext for p in dataset.paths) for ext in (".jpg", ".png", ".jpeg")}
    assert any("hidden file(s)" in note for note in summary.notes)
    assert json.loads(json.dumps(summary.to_dict()))["class_counts"] == summary.class_counts


def test_age_histogram_bins_and_ages_outside_them(tmp_path):
    people = [("1", "male", 17), ("2", "male", 18), ("3", "female", 58), ("4", "female", 59), ("5", "male", 60),
              ("6", "male", 72)]
    summary = summarise_dataset(load_dataset(write_competition(tmp_path, people)))
    hist = summary.age_histogram
    assert list(hist)[0] == "<18" and list(hist)[-1] == ">=61"
    assert hist["<18"] == 1 and hist["18-19"] == 1 and hist["58-59"] == 2 and hist["60"] == 1 and hist[">=61"] == 1
    assert sum(hist.values()) == 6, "every person counted once"
    assert summary.image_sizes == {"6x8": 42}


def test_summary_of_class_folders_and_unreadable_files(tmp_path):
    for name, size in (("a/1.png", (5, 5)), ("a/2.png", (5, 5)), ("b/3.png", (7, 4))):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "b" / "4.png").write_bytes(b"broken")
    summary = summarise_dataset(load_dataset(tmp_path))
    assert summary.layout == "folders" and summary.class_counts == [2, 2] and summary.groups == 4
    assert summary.task_counts == {} and summary.age_histogram == {}
    assert summary.image_sizes == {"5x5": 2, "7x4": 1, "unreadable": 1}
    assert summary.imbalance_ratio == 1.0
    assert any(n.startswith("1 image(s) cannot be opened") for n in summary.notes)


def test_write_eda_files(tmp_path, demo):
    dataset = load_dataset(demo.out)
    summary = summarise_dataset(dataset)
    written = write_eda_files(summary, dataset, tmp_path / "eda", samples_per_class=2)
    assert sorted(p.name for p in written) == ["age_histogram.png", "class_counts.png", "samples.png", "summary.json"]
    assert json.loads((tmp_path / "eda" / "summary.json").read_text()) == summary.to_dict()
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_write_eda_files_survives_unreadable_images(tmp_path):
    for name in ("x/1.png", "y/2.png"):
        (tmp_path / "data" / name).parent.mkdir(parents=True)
        Image.new("RGB", (6, 6), (200, 0, 0)).save(tmp_path / "data" / name)
    (tmp_path / "data" / "y" / "2.png").write_bytes(b"broken")
    dataset = load_dataset(tmp_path / "data")
    written = write_eda_files(summarise_dataset(dataset), dataset, tmp_path / "eda")
    assert sorted(p.name for p in written) == ["class_counts.png", "samples.png", "summary.json"]


# --- the command ----------------------------------------------------------------------------------


def test_eda_text_output(demo):
    result = CliRunner().invoke(cli, ["eda", str(demo.out), "--corrections", str(ROOT / "corrections" /
                                                                                   "mask-competition.csv")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "12 persons, 84 images, 18 classes" in out and "(competition layout)" in out
    for i, (name, count) in enumerate(zip(L.class_names(), demo.class_counts)):
        assert re.search(rf"\b{i}\s+{re.escape(name)}\s+{count}\b", out), name
    assert re.search(r"Imbalance ratio .*: \d+(\.\d+)?", out)
    assert re.search(r"mask\s+wear 60, incorrect 12, not wear 12", out)
    assert re.search(r"gender\s+male \d+, female \d+", out) and re.search(r"age\s+<30 \d+, 30-59 \d+, >=60 \d+", out)
    bars = re.findall(r"^\s+(\d+(?:-\d+)?)\s+(\d+) ?(#*)$", out, flags=re.M)
    assert len(bars) == 11 and sum(int(count) for _, count, _ in bars) == 12
    assert max(len(bar) for _, _, bar in bars) == 40
    assert all((int(count) > 0) == bool(bar) for _, count, bar in bars)
    assert "Image sizes: 32x32 (84)" in out and re.search(r"Extensions:\s+\.jpg \(\d+\)", out)
    assert "skipped" in out and "hidden file(s)" in out
    assert "swapped for 1 person(s): 000020" in out, "the shipped corrections name one demo id"
    assert all(len(line) <= 80 for line in out.splitlines() if str(demo.out) not in line), "fits 80 columns"


def test_eda_lists_problems_instead_of_failing(tmp_path):
    root = write_competition(tmp_path / "data", [("000001", "male", 25), ("000002", "female", 45), ("000003", "male", 31)])
    (root / "train" / "images" / "000002_female_Asian_45" / "normal.jpg").unlink()
    result = CliRunner().invoke(cli, ["eda", str(root)])
    assert result.exit_code == 0, result.output
    assert "2 persons, 14 images" in result.output
    flat = " ".join(result.output.split())  # notes wrap at 80 columns
    assert re.search(r"excluded 1 person\(s\) with problems: \S+000002_female_Asian_45: no image for 'normal'", flat)


def test_eda_json(demo):
    result = CliRunner().invoke(cli, ["eda", str(demo.out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["images"] == 84 and data["class_counts"] == list(demo.class_counts)
    assert data == summarise_dataset(load_dataset(demo.out)).to_dict()


def test_eda_out_mentions_the_files(tmp_path):
    for name in ("cat/1.png", "dog/2.png", "dog/3.png"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6)).save(tmp_path / "data" / name)
    result = CliRunner().invoke(cli, ["eda", str(tmp_path / "data"), "--out", str(tmp_path / "eda")])
    assert result.exit_code == 0, result.output
    assert "(folders layout)" in result.output and "3 groups, 3 images, 2 classes" in result.output
    assert re.search(r"0 cat\s+1", result.output) and re.search(r"1 dog\s+2", result.output)
    assert "Age (" not in result.output and "Per task" not in result.output
    assert "Wrote summary.json, class_counts.png, samples.png to" in result.output
    assert (tmp_path / "eda" / "samples.png").read_bytes()[:8] == PNG_MAGIC
    printed = json.loads(CliRunner().invoke(cli, ["eda", str(tmp_path / "data"), "--json"]).output)
    assert printed == json.loads((tmp_path / "eda" / "summary.json").read_text())


def test_eda_layout_option_overrides_detection(tmp_path):
    for name in ("cat/1.png", "dog/2.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label\ncat/1.png,x\ndog/2.png,y\n")
    runner = CliRunner()
    assert json.loads(runner.invoke(cli, ["eda", str(tmp_path), "--json"]).output)["layout"] == "csv"
    forced = json.loads(runner.invoke(cli, ["eda", str(tmp_path), "--json", "--layout", "folders"]).output)
    assert forced["layout"] == "folders" and forced["class_names"] == ["cat", "dog"]
    bad = runner.invoke(cli, ["eda", str(tmp_path), "--layout", "imagenet"])
    assert bad.exit_code == 2 and "'imagenet' is not one of" in bad.output


def test_eda_in_help():
    result = CliRunner().invoke(cli, ["eda", "--help"])
    assert result.exit_code == 0 and "maskopt eda demo-data" in result.output
    assert "eda" in CliRunner().invoke(cli, ["--help"]).output


def test_eda_images_match_numpy_counts(demo):
    dataset = load_dataset(demo.out)
    summary = summarise_dataset(dataset)
    assert summary.class_counts == np.bincount(dataset.labels, minlength=18).tolist()
