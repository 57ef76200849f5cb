"""The demo data generator: the competition's exact layout, its quirks, determinism, the CLI."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, UnidentifiedImageError

from maskopt.cli import cli
from maskopt.errors import DataError
from maskopt.search.data.dataset import load_dataset
from maskopt.search.data.demo import DemoDataSummary, make_demo_data
from maskopt.search.data.labels import GENDERS, MASK_OF_STEM, NUM_CLASSES, STEMS, age_band, decode, encode

PERSONS, EVAL_PERSONS, SIZE = 12, 4, 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoDataSummary:
    out = tmp_path_factory.mktemp("demo") / "data"
    return make_demo_data(out, persons=PERSONS, eval_persons=EVAL_PERSONS, size=SIZE)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        header, *rows = csv.reader(f)
    return header, rows


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("._"))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_summary_counts(demo):
    assert demo.persons == PERSONS and demo.eval_persons == EVAL_PERSONS
    assert demo.train_images == PERSONS * 7 and demo.eval_images == EVAL_PERSONS * 7
    assert len(demo.class_counts) == NUM_CLASSES and sum(demo.class_counts) == demo.train_images


def test_train_csv_has_string_ids_and_the_real_columns(demo):
    header, rows = read_csv(demo.out / "train" / "train.csv")
    assert header == ["id", "gender", "race", "age", "path"]
    assert len(rows) == PERSONS
    ids = [row[0] for row in rows]
    assert all(re.fullmatch(r"\d{6}(-\d)?", id_) for id_ in ids)
    assert all(id_.startswith("0") for id_ in ids), "leading zeros must survive"
    assert any("-" in id_ for id_ in ids), "at least one suffixed id"
    assert len(set(ids)) == PERSONS
    for id_, gender, race, age, path in rows:
        assert gender in GENDERS and race == "Asian" and 18 <= int(age) <= 60
        assert path == f"{id_}_{gender}_{race}_{age}"
    assert "60" in [row[3] for row in rows], "the oldest band is present"


def test_every_person_folder_holds_seven_square_photos(demo):
    _, rows = read_csv(demo.out / "train" / "train.csv")
    images_dir = demo.out / "train" / "images"
    assert sorted(p.name for p in images_dir.iterdir()) == sorted(row[4] for row in rows)
    for row in rows:
        photos = images_in(images_dir / row[4])
        assert sorted(p.stem for p in photos) == sorted(STEMS)
        for photo in photos:
            with Image.open(photo) as image:
                assert image.mode == "RGB" and image.size == (SIZE, SIZE)


def test_extensions_are_mixed_like_the_real_data(demo):
    folders = [images_in(folder) for folder in (demo.out / "train" / "images").iterdir()]
    extensions = Counter(p.suffix for photos in folders for p in photos)
    assert set(extensions) == {".jpg", ".png", ".jpeg"}
    assert extensions[".jpg"] > extensions[".png"] + extensions[".jpeg"]
    assert any({p.suffix for p in photos} == {".jpg", ".jpeg"} for photos in folders), "a folder mixes .jpg and .jpeg"


def test_apple_double_files_are_present_and_are_not_images(demo):
    train_dir = demo.out / "train"
    hidden = [train_dir / "._train.csv", train_dir / "._images"]
    hidden += [p for p in (train_dir / "images").glob("*/._*")]
    assert len(hidden) > 2, "some person folders carry ._ files"
    for path in hidden:
        with pytest.raises(UnidentifiedImageError):
            Image.open(path)
    for path in (train_dir / "images").glob("*/._*"):
        assert path.name[2:] in {p.name for p in images_in(path.parent)}


def test_eval_info_and_solution_are_aligned(demo):
    eval_dir = demo.out / "eval"
    info_header, info = read_csv(eval_dir / "info.csv")
    solution_header, solution = read_csv(eval_dir / "solution.csv")
    assert info_header == solution_header == ["ImageID", "ans"]
    assert len(info) == EVAL_PERSONS * 7
    assert [row[0] for row in info] == [row[0] for row in solution]
    assert {row[1] for row in info} == {"0"}
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", row[0]) for row in info)
    assert sorted(p.name for p in (eval_dir / "images").iterdir()) == sorted(row[0] for row in info)
    labels = np.array([int(row[1]) for row in solution])
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    mask, _, _ = decode(labels)
    assert Counter(mask.tolist()) == {0: 5 * EVAL_PERSONS, 1: EVAL_PERSONS, 2: EVAL_PERSONS}


def test_eval_rows_are_shuffled(demo):
    _, solution = read_csv(demo.out / "eval" / "solution.csv")
    masks = [int(decode(int(row[1]))[0]) for row in solution]
    assert masks != sorted(masks) and masks[:7] != [0, 0, 0, 0, 0, 1, 2]


def test_class_counts_follow_the_folder_names(demo):
    expected = np.zeros(NUM_CLASSES, dtype=int)
    for folder in (demo.out / "train" / "images").iterdir():
        _, gender, _, age = folder.name.rsplit("_", 3)
        for photo in images_in(folder):
            expected[encode(MASK_OF_STEM[photo.stem], GENDERS[gender], age_band(int(age)))] += 1
    assert tuple(expected) == demo.class_counts


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    options = dict(persons=10, eval_persons=2, size=24)
    first = tree_bytes(make_demo_data(tmp_path / "a", seed=3, **options).out)
    again = tree_bytes(make_demo_data(tmp_path / "b", seed=3, **options).out)
    other = tree_bytes(make_demo_data(tmp_path / "c", seed=4, **options).out)
    assert first == again
    assert first.keys() != other.keys()
    assert first["train/train.csv"] != other["train/train.csv"]


def test_few_persons_still_work(tmp_path):
    summary = make_demo_data(tmp_path / "tiny", persons=2, eval_persons=1, size=16)
    assert summary.train_images == 14 and summary.eval_images == 7


def test_refuses_a_non_empty_folder_and_accepts_an_empty_one(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        make_demo_data(occupied, persons=2, eval_persons=1, size=16)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    make_demo_data(empty, persons=2, eval_persons=1, size=16)
    assert (empty / "train" / "train.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "occupied"], "no staging folder is left"


@pytest.mark.parametrize("name, value, allowed", [
    ("persons", 1, "from 2 to 100000"), ("persons", 100_001, "from 2 to 100000"), ("persons", "10", "from 2"),
    ("eval_persons", 0, "from 1 to 100000"), ("eval_persons", 100_001, "from 1 to 100000"),
    ("size", 15, "from 16 to 1024"), ("size", 1025, "from 16 to 1024"), ("size", True, "from 16 to 1024"),
    ("seed", -1, "from 0 to 4294967295"), ("seed", 2**32, "from 0 to 4294967295"), ("seed", 1.0, "from 0"),
])
def test_rejects_arguments_out_of_range(tmp_path, name, value, allowed):
    with pytest.raises(DataError, match=rf"^`{name}` must be a whole number {allowed}.*, got {value!r}$"):
        make_demo_data(tmp_path / "data", **{name: value})
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_the_command_bounds_its_options_as_the_library_does():
    from maskopt.commands.data import make_demo_data as command
    from maskopt.search.data.demo import ARGUMENT_RANGES

    options = {p.name: p.type for p in command.params}
    assert {name: (options[name].min, options[name].max) for name in ARGUMENT_RANGES} == ARGUMENT_RANGES


def test_cli_writes_the_data_and_names_the_next_step(tmp_path):
    out = tmp_path / "demo-data"
    args = ["make-demo-data", str(out), "--persons", "10", "--eval-persons", "2", "--size", "24", "--seed", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"maskopt search --space spaces/demo.yaml --data {out}" in result.output
    assert "70 images" in result.output
    assert len(read_csv(out / "train" / "train.csv")[1]) == 10

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1
    assert "Error:" in again.output and "not an empty folder" in again.output


@pytest.mark.parametrize("option, value", [
    ("--persons", "1"), ("--size", "8"), ("--eval-persons", "0"), ("--persons", "100001"), ("--size", "1025"),
    ("--eval-persons", "100001"), ("--seed", "4294967296"), ("--seed", "-1"),
])
def test_cli_validates_options(tmp_path, option, value):
    result = CliRunner().invoke(cli, ["make-demo-data", str(tmp_path / "data"), option, value])
    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "data").exists()


# --- label noise ---------------------------------------------------------------------------

NOISY = dict(persons=30, eval_persons=2, size=16, seed=0)


@pytest.fixture(scope="module")
def noisy_and_clean(tmp_path_factory) -> tuple[DemoDataSummary, DemoDataSummary]:
    root = tmp_path_factory.mktemp("noise")
    return make_demo_data(root / "noisy", label_noise=0.2, **NOISY), make_demo_data(root / "clean", **NOISY)


def noise_rows(out: Path) -> list[list[str]]:
    header, rows = read_csv(out / "label_noise.csv")
    assert header == ["person", "field", "true", "given"]
    return rows


def folders_by_id(out: Path) -> dict[str, Path]:
    return {folder.name.split("_")[0]: folder for folder in (out / "train" / "images").iterdir()}


def photo(folder: Path, stem: str) -> bytes:
    (path,) = [p for p in images_in(folder) if p.stem == stem]
    return path.read_bytes()


def test_default_label_noise_changes_no_byte_and_writes_no_list(tmp_path):
    options = dict(persons=10, eval_persons=2, size=16, seed=2)
    plain = tree_bytes(make_demo_data(tmp_path / "plain", **options).out)
    zero = tree_bytes(make_demo_data(tmp_path / "zero", label_noise=0.0, **options).out)
    assert plain == zero
    assert "label_noise.csv" not in plain


def test_label_noise_flips_the_asked_share_of_train_persons(noisy_and_clean):
    noisy, _ = noisy_and_clean
    rows = noise_rows(noisy.out)
    persons = {row[0] for row in rows}
    assert len(persons) == noisy.noisy_persons == round(0.2 * NOISY["persons"]) == 6
    assert {row[1] for row in rows} == {"gender", "age", "mask"}, "seed 0 happens to draw every kind"
    for person, field, true, given in rows:
        assert true != given
        if field == "gender":
            assert {true, given} == {"male", "female"}
        elif field == "age":
            assert age_band(int(true)) != age_band(int(given)) and 18 <= int(given) <= 60
        else:
            assert true in STEMS and given in STEMS and MASK_OF_STEM[true] != MASK_OF_STEM[given]
    masks = [row for row in rows if row[1] == "mask"]
    # A swap is two rows, one per file, each the mirror of the other.
    assert sorted((p, t, g) for p, _, t, g in masks) == sorted((p, g, t) for p, _, t, g in masks)


def test_names_show_the_given_labels_and_photos_the_true_ones(noisy_and_clean):
    noisy, clean = noisy_and_clean
    noisy_folders, clean_folders = folders_by_id(noisy.out), folders_by_id(clean.out)
    _, train_rows = read_csv(noisy.out / "train" / "train.csv")
    recorded = {row[4]: row for row in train_rows}
    for person, field, true, given in noise_rows(noisy.out):
        id_, gender, _, age = person.split("_")
        folder, truth = noisy_folders[id_], clean_folders[id_]
        assert folder.name == person and recorded[person][1:4:2] == [gender, age]
        _, true_gender, _, true_age = truth.name.split("_")
        if field == "gender":
            assert (gender, true_gender, age) == (given, true, true_age)
        elif field == "age":
            assert (age, true_age, gender) == (given, true, true_gender)
        else:
            assert folder.name == truth.name
            # The file named `given` holds the photo drawn as `true`, byte for byte.
            assert photo(folder, given) == photo(truth, true) != photo(truth, given)
        if field != "mask":
            assert tree_bytes(folder) == tree_bytes(truth), "the photos stay as the true labels draw them"


def test_noise_stays_in_the_noisy_train_persons_and_eval_stays_clean(noisy_and_clean):
    noisy, clean = noisy_and_clean
    flipped = {row[0].split("_")[0] for row in noise_rows(noisy.out)}
    noisy_tree, clean_tree = tree_bytes(noisy.out), tree_bytes(clean.out)
    for key in ("eval/info.csv", "eval/solution.csv"):
        assert noisy_tree[key] == clean_tree[key]
    untouched = {k: v for k, v in clean_tree.items()
                 if k != "train/train.csv" and not (k.startswith("train/images/") and k.split("/")[2].split("_")[0] in flipped)}
    assert untouched and all(noisy_tree[k] == v for k, v in untouched.items())
    assert len([k for k in untouched if k.startswith("eval/images/")]) == 7 * NOISY["eval_persons"]
    _, noisy_rows = read_csv(noisy.out / "train" / "train.csv")
    _, clean_rows = read_csv(clean.out / "train" / "train.csv")
    changed = {a[0] for a, b in zip(noisy_rows, clean_rows) if a != b}
    assert changed == {row[0].split("_")[0] for row in noise_rows(noisy.out) if row[1] != "mask"}


def test_noisy_class_counts_follow_the_folder_names_and_the_data_loads(noisy_and_clean):
    noisy, clean = noisy_and_clean
    expected = np.zeros(NUM_CLASSES, dtype=int)
    for folder in (noisy.out / "train" / "images").iterdir():
        _, gender, _, age = folder.name.rsplit("_", 3)
        for path in images_in(folder):
            expected[encode(MASK_OF_STEM[path.stem], GENDERS[gender], age_band(int(age)))] += 1
    assert tuple(expected) == noisy.class_counts != clean.class_counts
    dataset = load_dataset(noisy.out)
    assert len(dataset.paths) == 7 * NOISY["persons"]


def test_same_seed_same_noise_and_a_smaller_share_flips_a_subset(tmp_path, noisy_and_clean):
    noisy, _ = noisy_and_clean
    again = make_demo_data(tmp_path / "again", label_noise=0.2, **NOISY)
    assert tree_bytes(again.out) == tree_bytes(noisy.out)
    fewer = make_demo_data(tmp_path / "fewer", label_noise=0.1, **NOISY)
    assert fewer.noisy_persons == 3
    assert set(map(tuple, noise_rows(fewer.out))) < set(map(tuple, noise_rows(noisy.out)))
    other = make_demo_data(tmp_path / "other", label_noise=0.2, **{**NOISY, "seed": 1})
    assert noise_rows(other.out) != noise_rows(noisy.out)


def test_a_tiny_share_of_few_persons_flips_nobody_but_lists_it(tmp_path):
    summary = make_demo_data(tmp_path / "tiny", persons=4, eval_persons=1, size=16, label_noise=0.1)
    assert summary.noisy_persons == 0 and noise_rows(summary.out) == []


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, math.nan, "0.2", None])
def test_rejects_a_label_noise_outside_zero_to_one(tmp_path, bad):
    with pytest.raises(DataError, match="label noise"):
        make_demo_data(tmp_path / "data", persons=2, eval_persons=1, size=16, label_noise=bad)
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_cli_label_noise(tmp_path):
    out = tmp_path / "noisy"
    args = ["make-demo-data", str(out), "--persons", "10", "--eval-persons", "1", "--size", "16", "--label-noise", "0.2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "label noise: 2 of 10 train persons" in result.output
    assert len(noise_rows(out)) >= 2


@pytest.mark.parametrize("value", ["1", "-0.5", "nan", "2"])
def test_cli_rejects_a_bad_label_noise_cleanly(tmp_path, value):
    result = CliRunner().invoke(cli, ["make-demo-data", str(tmp_path / "data"), "--label-noise", value])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "label noise" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "data").exists()
