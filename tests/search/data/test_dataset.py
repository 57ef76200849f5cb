"""Reading datasets: the competition layout with its quirks, every bad input, corrections, the CSV
and class-folder layouts, and the unreadable images that prepare_data finds."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskopt.cli import cli
from maskopt.errors import DataError
from maskopt.search.data import labels as L
from maskopt.search.data.dataset import detect_layout, load_dataset, load_eval
from maskopt.search.data.demo import make_demo_data
from maskopt.search.data.prepared import prepare_data

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_CORRECTIONS = ROOT / "corrections" / "mask-competition.csv"
HEADER = "id,gender,race,age,path"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(out, persons=12, eval_persons=4, size=32, seed=0)
    return out


def save_image(path: Path, size=(8, 8), colour=(120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}.get(path.suffix.lower(), "PNG")
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def person_folder(images: Path, folder: str, ext: str | dict[str, str] = "jpg") -> Path:
    for stem in L.STEMS:
        suffix = ext if isinstance(ext, str) else ext.get(stem, "jpg")
        save_image(images / folder / f"{stem}.{suffix}")
    return images / folder


def competition(root: Path, people=(("000001", "male", 25), ("000002", "female", 45)), rows=None) -> Path:
    """A competition tree; ``rows`` (CSV lines after the header) overrides what train.csv lists."""
    images = root / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for person, gender, age in people:
        folder = f"{person}_{gender}_Asian_{age}"
        person_folder(images, folder)
        lines.append(f"{person},{gender},Asian,{age},{folder}")
    (root / "train" / "train.csv").write_text("\n".join([HEADER] + (lines if rows is None else rows)) + "\n")
    return root


# --- the competition layout ---------------------------------------------------------------------


def test_demo_data_loads_with_labels_from_train_csv(demo):
    dataset = load_dataset(demo)
    with (demo / "train" / "train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert dataset.layout == "competition" and len(dataset) == 7 * len(rows) == 84
    assert dataset.num_classes == 18 and dataset.class_names == L.class_names()
    for row in rows:
        members = np.flatnonzero(dataset.groups == row["id"])
        assert sorted(dataset.paths[i].stem for i in members) == sorted(L.STEMS)
        for i in members:
            path = dataset.paths[i]
            assert path.parent.name == row["path"] and not path.name.startswith(".")
            expected = L.encode(L.MASK_OF_STEM[path.stem], L.GENDERS[row["gender"]], L.age_band(int(row["age"])))
            assert dataset.labels[i] == expected
            assert dataset.ages[i] == int(row["age"])


def test_demo_data_quirks_survive_loading(demo):
    dataset = load_dataset(demo)
    ids = set(dataset.groups)
    assert all(isinstance(g, str) and re.fullmatch(r"\d{6}(-\d)?", g) for g in ids)
    assert any("-" in g for g in ids), "a suffixed id such as 000025-1"
    assert {p.suffix for p in dataset.paths} == {".jpg", ".jpeg", ".png"}
    train = demo / "train"
    hidden = [p for p in train.rglob("._*")]
    assert hidden, "the demo data has macOS ._ files"
    assert not set(hidden) & set(dataset.paths)
    assert any(f"skipped {len(hidden)} hidden file(s)" in note for note in dataset.notes)


def test_files_match_by_stem_whatever_the_extension_and_case(tmp_path):
    images = tmp_path / "train" / "images"
    exts = {"mask1": "JPG", "mask2": "jpeg", "mask3": "PNG", "incorrect_mask": "Jpeg", "normal": "png"}
    person_folder(images, "000600-1_male_Asian_33", exts)
    person_folder(images, "000007_female_Asian_60")
    save_image(images / "000600-1_male_Asian_33" / "._mask1.JPG")  # AppleDouble twin, not an image
    (images / "000600-1_male_Asian_33" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "train.csv").write_text(
        f"{HEADER}\n000600-1,male,Asian,33,000600-1_male_Asian_33\n000007,female,Asian,60,000007_female_Asian_60\n")

    dataset = load_dataset(tmp_path)
    assert len(dataset) == 14
    assert list(dataset.groups[:7]) == ["000600-1"] * 7 and list(dataset.groups[7:]) == ["000007"] * 7
    names = {p.name for p in dataset.paths[:7]}
    assert {"mask1.JPG", "mask2.jpeg", "mask3.PNG", "incorrect_mask.Jpeg", "normal.png"} <= names
    assert dataset.labels[7:].tolist() == [5, 5, 5, 5, 5, 11, 17]  # female, 60: the oldest band
    assert any("skipped 1 hidden file(s)" in note for note in dataset.notes)


def test_ids_stay_strings_with_leading_zeros(tmp_path):
    competition(tmp_path, people=[("000123", "male", 20), ("001774-2", "female", 30), ("9", "male", 40)])
    groups = load_dataset(tmp_path).groups
    assert groups.dtype == object
    assert sorted(set(groups)) == ["000123", "001774-2", "9"]


# --- bad input ------------------------------------------------------------------------------------


def test_missing_train_csv(tmp_path):
    person_folder(tmp_path / "train" / "images", "000001_male_Asian_20")
    person_folder(tmp_path / "eval" / "images", "x")
    # Auto-detection must not read train/ and eval/ as two classes of a class-folder tree.
    assert detect_layout(tmp_path) == "competition"
    with pytest.raises(DataError, match=r"train\.csv is missing; check the path.*id,gender,race,age,path"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"train\.csv is missing"):
        load_dataset(tmp_path, layout="competition")


def test_train_csv_lacking_a_column(tmp_path):
    competition(tmp_path)
    (tmp_path / "train" / "train.csv").write_text("id,gender,race,path\n000001,male,Asian,000001_male_Asian_25\n")
    with pytest.raises(DataError, match=r"train\.csv lacks column\(s\) age; its header is id,gender,race,path, "
                                         r"expected id,gender,race,age,path"):
        load_dataset(tmp_path)


def test_train_csv_with_a_short_row(tmp_path):
    competition(tmp_path, rows=["000001,male,Asian,25,000001_male_Asian_25", "000002,female,Asian"])
    with pytest.raises(DataError, match=r"train\.csv, line 3: 3 field\(s\), expected 5"):
        load_dataset(tmp_path)


def test_train_csv_that_is_not_utf8(tmp_path):
    competition(tmp_path)
    (tmp_path / "train" / "train.csv").write_bytes(HEADER.encode() + b"\n00000\xff,male,Asian,25,x\n")
    with pytest.raises(DataError, match=r"train\.csv cannot be read as a UTF-8 CSV file"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("000009,male,Asian,25,000009_nowhere", r"line 4: image folder .*000009_nowhere does not exist"),
        ("000002,M,Asian,45,000002_female_Asian_45", r"line 4: unknown gender 'M' \(allowed: male, female\)"),
        ("000002,female,Asian,45.5,000002_female_Asian_45", r"line 4: age '45\.5' is not a whole number"),
        ("000002,female,Asian,,000002_female_Asian_45", r"line 4: age '' is not a whole number"),
        ("000002,female,Asian,²,000002_female_Asian_45", r"line 4: age '²' is not a whole number"),
    ],
)
def test_bad_rows_name_file_line_and_value(tmp_path, row, message):
    people = [("000001", "male", 25), ("000002", "female", 45), ("000003", "female", 19)]
    good = [f"{p},{g},Asian,{a},{p}_{g}_Asian_{a}" for p, g, a in people]
    competition(tmp_path, people, rows=[good[0], good[2], row])
    with pytest.raises(DataError, match=r"1 problem\(s\) in .*train\.csv") as info:
        load_dataset(tmp_path)
    assert re.search(message, str(info.value))
    assert "exclude_broken: true" in str(info.value), "says how to go on without the broken persons"


def test_person_folder_missing_a_stem(tmp_path):
    competition(tmp_path)
    folder = tmp_path / "train" / "images" / "000002_female_Asian_45"
    (folder / "normal.jpg").unlink()
    with pytest.raises(DataError, match=r"000002_female_Asian_45: no image for 'normal' \(expected normal\.jpg, "
                                         r"\.jpeg or \.png\)"):
        load_dataset(tmp_path)


def test_person_folder_with_two_files_for_one_stem(tmp_path):
    competition(tmp_path)
    folder = tmp_path / "train" / "images" / "000001_male_Asian_25"
    save_image(folder / "mask1.png")
    with pytest.raises(DataError, match=r"000001_male_Asian_25: 2 files for 'mask1' \(mask1\.jpg, mask1\.png\); "
                                         r"keep one"):
        load_dataset(tmp_path)


def test_every_problem_is_listed_at_once(tmp_path):
    competition(tmp_path, people=[("000001", "male", 25), ("000002", "female", 45), ("000003", "male", 33)])
    (tmp_path / "train" / "images" / "000001_male_Asian_25" / "mask3.jpg").unlink()
    text = (tmp_path / "train" / "train.csv").read_text().replace("000002,female", "000002,f")
    (tmp_path / "train" / "train.csv").write_text(text)
    with pytest.raises(DataError, match=r"2 problem\(s\)") as info:
        load_dataset(tmp_path)
    assert "no image for 'mask3'" in str(info.value) and "unknown gender 'f'" in str(info.value)


def test_exclude_broken_leaves_broken_persons_out_with_a_note(tmp_path):
    competition(tmp_path, people=[("000001", "male", 25), ("000002", "female", 45), ("000003", "male", 33)])
    save_image(tmp_path / "train" / "images" / "000002_female_Asian_45" / "mask1.png")
    dataset = load_dataset(tmp_path, exclude_broken=True)
    assert sorted(set(dataset.groups)) == ["000001", "000003"] and len(dataset) == 14
    assert any(n.startswith("excluded 1 person(s) with problems") and "2 files for 'mask1'" in n for n in dataset.notes)


def test_exclude_broken_still_fails_when_nothing_would_be_left(tmp_path):
    competition(tmp_path, rows=["000001,man,Asian,25,000001_male_Asian_25"])
    with pytest.raises(DataError, match=r"unknown gender 'man'(.|\n)*excluding them would leave nothing"):
        load_dataset(tmp_path, exclude_broken=True)


def test_empty_dataset(tmp_path):
    competition(tmp_path, rows=[])
    with pytest.raises(DataError, match=r"holds no images: .*train\.csv lists no persons"):
        load_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no images: expected ROOT/<class>/<image>"):
        load_dataset(tmp_path / "empty")


def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match=r"dataset not found: .*nowhere does not exist"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"unknown layout 'imagenet'; use one of: auto, competition, csv, folders"):
        load_dataset(tmp_path, layout="imagenet")


def test_load_eval_reads_info_csv_in_order(demo):
    eval_set = load_eval(demo)
    with (demo / "eval" / "info.csv").open(newline="") as f:
        ids = [row["ImageID"] for row in csv.DictReader(f)]
    assert list(eval_set.image_ids) == ids and len(ids) == 28
    assert all(p.is_file() and p.name == i for p, i in zip(eval_set.paths, ids))


def test_load_eval_lists_every_missing_image(tmp_path):
    images = tmp_path / "eval" / "images"
    save_image(images / "a.jpg")
    (tmp_path / "eval" / "info.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,0\nc.jpg,0\n")
    with pytest.raises(DataError, match=r"2 eval image\(s\) named in .*info\.csv are missing") as info:
        load_eval(tmp_path)
    assert re.search(r"line 3: .*b\.jpg is missing", str(info.value))
    assert re.search(r"line 4: .*c\.jpg is missing", str(info.value))
    (tmp_path / "eval" / "info.csv").unlink()
    with pytest.raises(DataError, match=r"info\.csv is missing"):
        load_eval(tmp_path)


# --- corrections ----------------------------------------------------------------------------------


def test_corrections_are_applied_and_reported(tmp_path):
    competition(tmp_path, people=[("006359", "female", 25), ("001498-1", "male", 45), ("000020", "male", 33),
                                  ("000001", "female", 20)])
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("id,fix\n006359,male\n001498-1,female\n000020,swap_incorrect_normal\n999999,male\n")
    plain = load_dataset(tmp_path)
    fixed = load_dataset(tmp_path, corrections=fixes)

    def parts(dataset, person):
        members = np.flatnonzero(dataset.groups == person)
        return {dataset.paths[i].stem: tuple(int(x) for x in L.decode(dataset.labels[i])) for i in members}

    assert {g for _, g, _ in parts(fixed, "006359").values()} == {0}  # now male
    assert {g for _, g, _ in parts(fixed, "001498-1").values()} == {1}  # now female
    swapped = parts(fixed, "000020")
    assert swapped["incorrect_mask"][0] == 2 and swapped["normal"][0] == 1 and swapped["mask1"][0] == 0
    assert parts(fixed, "000001") == parts(plain, "000001")
    assert fixed.fingerprint() != plain.fingerprint()
    notes = "\n".join(fixed.notes)
    assert "gender set to male for 1 person(s): 006359" in notes
    assert "gender set to female for 1 person(s): 001498-1" in notes
    assert "incorrect_mask/normal swapped for 1 person(s): 000020" in notes
    assert "1 id(s) not in this dataset, ignored: 999999" in notes


def test_shipped_corrections_file_on_demo_data(demo):
    dataset = load_dataset(demo, corrections=SHIPPED_CORRECTIONS)
    members = np.flatnonzero(dataset.groups == "000020")  # the demo data holds one listed id
    masks = {dataset.paths[i].stem: int(L.decode(dataset.labels[i])[0]) for i in members}
    assert masks["incorrect_mask"] == 2 and masks["normal"] == 1
    assert any("swapped for 1 person(s): 000020" in n for n in dataset.notes)


def test_unknown_correction_is_an_error(tmp_path):
    competition(tmp_path)
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("id,fix\n000001,male\n000002,old\n")
    with pytest.raises(DataError, match=r"fixes\.csv, line 3: unknown fix 'old' \(allowed: male, female, "
                                         r"swap_incorrect_normal\)"):
        load_dataset(tmp_path, corrections=fixes)
    with pytest.raises(DataError, match=r"nofile\.csv is missing"):
        load_dataset(tmp_path, corrections=tmp_path / "nofile.csv")


def test_corrections_apply_to_the_competition_layout_only(tmp_path):
    for name in ("a", "b"):
        save_image(tmp_path / name / "1.png")
    with pytest.raises(DataError, match=r"competition layout only, but .* is a folders dataset"):
        load_dataset(tmp_path, corrections=SHIPPED_CORRECTIONS)


# --- the CSV and class-folder layouts -------------------------------------------------------------


def test_csv_layout_with_groups(tmp_path):
    for name in ("a.png", "b.png", "c.jpg", "sub/d.png"):
        save_image(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label,group\na.png,cat10,p1\nb.png,cat2,p1\nc.jpg,cat2,p2\n"
                                         "sub/d.png,cat10,\n")
    assert detect_layout(tmp_path) == "csv" and detect_layout(tmp_path / "labels.csv") == "csv"
    for source in (tmp_path, tmp_path / "labels.csv"):
        dataset = load_dataset(source)
        assert dataset.layout == "csv" and dataset.class_names == ("cat2", "cat10")
        assert dataset.labels.tolist() == [1, 0, 0, 1]
        assert dataset.groups.tolist()[:3] == ["p1", "p1", "p2"]
        assert dataset.groups[3] == str(tmp_path / "sub" / "d.png"), "an empty group is the image itself"
        assert dataset.ages is None and dataset.paths[3] == tmp_path / "sub" / "d.png"


def test_csv_layout_without_group_makes_each_image_its_own_group(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save_image(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb.png,x\nc.png,y\n")
    dataset = load_dataset(tmp_path)
    assert len(set(dataset.groups)) == 3


def test_csv_layout_lists_every_missing_image(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\nb.png,y\nc.png,y\na.png,\n")
    with pytest.raises(DataError, match=r"3 problem\(s\) in .*labels\.csv") as info:
        load_dataset(tmp_path)
    text = str(info.value)
    assert re.search(r"line 3: image .*b\.png does not exist", text)
    assert re.search(r"line 4: image .*c\.png does not exist", text)
    assert "line 5: the label is empty" in text
    assert "relative to the CSV file's folder" in text


def test_csv_layout_errors(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"labels\.csv lacks column\(s\) path"):
        load_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(DataError, match=r"holds a single class \('x'\); a classifier needs at least two"):
        load_dataset(tmp_path)
    (tmp_path / "other.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"expected exactly one CSV file in .*, found 2; pass the CSV file itself"):
        load_dataset(tmp_path, layout="csv")


def test_class_folders_skip_hidden_and_non_image_files(tmp_path):
    for name in ("class10/a.jpg", "class2/b.PNG", "class2/nested/c.jpeg", "class1/d.bmp", "class1/e.webp"):
        save_image(tmp_path / name)
    save_image(tmp_path / "class2" / "._b.PNG")
    save_image(tmp_path / ".hidden_class" / "x.png")
    (tmp_path / "class10" / "readme.txt").write_text("not an image")
    (tmp_path / "class10" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / "stray.png").write_bytes(b"")  # a file at the top is no class

    assert detect_layout(tmp_path) == "folders"
    dataset = load_dataset(tmp_path)
    assert dataset.layout == "folders"
    assert dataset.class_names == ("class1", "class2", "class10"), "natural order: 2 before 10"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in dataset.paths) == [
        "class1/d.bmp", "class1/e.webp", "class10/a.jpg", "class2/b.PNG", "class2/nested/c.jpeg"]
    by_name = {p.name: dataset.class_names[y] for p, y in zip(dataset.paths, dataset.labels)}
    assert by_name == {"d.bmp": "class1", "e.webp": "class1", "a.jpg": "class10", "b.PNG": "class2",
                       "c.jpeg": "class2"}
    assert len(set(dataset.groups)) == len(dataset)


def test_numeric_class_folders_sort_as_numbers(tmp_path):
    for name in ("10", "2", "1"):
        save_image(tmp_path / name / "a.png")
    assert load_dataset(tmp_path).class_names == ("1", "2", "10")


def test_class_folder_tree_with_one_class(tmp_path):
    save_image(tmp_path / "only" / "a.png")
    save_image(tmp_path / "only" / "b.png")
    with pytest.raises(DataError, match=r"holds a single class \('only'\).*ROOT/<class>/<image>"):
        load_dataset(tmp_path)


def test_explicit_layout_overrides_detection(tmp_path):
    for name in ("cats/a.png", "dogs/b.png"):
        save_image(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,label\ncats/a.png,x\ndogs/b.png,y\n")
    assert detect_layout(tmp_path) == "csv"
    assert load_dataset(tmp_path).class_names == ("x", "y")
    assert load_dataset(tmp_path, layout="folders").class_names == ("cats", "dogs")
    with pytest.raises(DataError, match=r"train\.csv is missing"):
        load_dataset(tmp_path, layout="competition")


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    for name in ("a/1.png", "b/2.png"):
        save_image(tmp_path / name)
    first = load_dataset(tmp_path).fingerprint()
    assert load_dataset(tmp_path).fingerprint() == first
    save_image(tmp_path / "b" / "3.png")
    assert load_dataset(tmp_path).fingerprint() != first


# --- unreadable images (found while decoding) -----------------------------------------------------


def test_prepare_data_lists_every_corrupt_image(tmp_path):
    competition(tmp_path, people=[("000001", "male", 25), ("000002", "female", 45), ("000003", "male", 33)])
    images = tmp_path / "train" / "images"
    (images / "000001_male_Asian_25" / "mask2.jpg").write_bytes(b"this is not a jpeg")
    good = (images / "000003_male_Asian_33" / "normal.jpg").read_bytes()
    (images / "000003_male_Asian_33" / "normal.jpg").write_bytes(good[: len(good) // 3])  # truncated
    dataset = load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be read") as info:
        prepare_data(dataset, image_sizes=[8], cache_dir=tmp_path / "cache")
    text = str(info.value)
    assert "000001_male_Asian_25/mask2.jpg" in text and "000003_male_Asian_33/normal.jpg" in text
    assert "exclude_broken: true" in text


def test_prepare_data_exclude_broken_drops_their_persons(tmp_path):
    competition(tmp_path, people=[("000001", "male", 25), ("000002", "female", 45), ("000003", "male", 33)])
    (tmp_path / "train" / "images" / "000002_female_Asian_45" / "mask4.jpg").write_bytes(b"\0" * 10)
    dataset = load_dataset(tmp_path)
    prepared = prepare_data(dataset, image_sizes=[8], cache_dir=tmp_path / "cache", exclude_broken=True)
    assert sorted(set(prepared.dataset.groups)) == ["000001", "000003"] and len(prepared.dataset) == 14
    note = prepared.dataset.notes[-1]
    assert re.search(r"excluded 1 group\(s\), 7 image\(s\): unreadable images: .*mask4\.jpg", note)
    images = prepared.images(8).numpy()
    assert images.shape == (14, 3, 8, 8)
    # Rows follow the remaining paths: the first person's pixels come first, then the third's.
    kept = [dataset.paths.index(p) for p in prepared.dataset.paths]
    np.testing.assert_array_equal(prepared.rows, kept)
    folds = prepared.folds(n_folds=2, seed=0)
    assert sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(14))


def test_prepare_data_when_every_image_is_unreadable(tmp_path):
    for name in ("a/1.png", "b/2.png"):
        (tmp_path / name).parent.mkdir(parents=True)
        (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(DataError, match=r"every image was excluded as unreadable"):
        prepare_data(load_dataset(tmp_path), image_sizes=[8], cache_dir=tmp_path / "cache", exclude_broken=True)


# --- through the CLI: a clean error, no traceback -------------------------------------------------


def _break(tmp_path: Path, case: str) -> list[str]:
    if case == "no train.csv":
        competition(tmp_path)
        (tmp_path / "train" / "train.csv").unlink()
        return [str(tmp_path)]
    if case == "missing column":
        competition(tmp_path)
        (tmp_path / "train" / "train.csv").write_text("id,gender,race,path\n")
        return [str(tmp_path)]
    if case == "unknown fix":
        competition(tmp_path)
        (tmp_path / "fix.csv").write_text("id,fix\n000001,older\n")
        return [str(tmp_path), "--corrections", str(tmp_path / "fix.csv")]
    if case == "empty":
        competition(tmp_path, rows=[])
        return [str(tmp_path)]
    if case == "one class":
        save_image(tmp_path / "a" / "1.png")
        return [str(tmp_path)]
    if case == "csv missing image":
        save_image(tmp_path / "a.png")
        (tmp_path / "l.csv").write_text("path,label\na.png,x\nb.png,y\n")
        return [str(tmp_path)]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no train.csv", r"train\.csv is missing"),
        ("missing column", r"lacks column\(s\) age"),
        ("unknown fix", r"fix\.csv, line 2: unknown fix 'older'"),
        ("empty", r"holds no images"),
        ("one class", r"holds a single class"),
        ("csv missing image", r"l\.csv, line 3: image .*b\.png does not exist"),
    ],
)
def test_cli_reports_data_errors_cleanly(tmp_path, case, message):
    result = CliRunner().invoke(cli, ["eda", *_break(tmp_path, case)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")
    assert re.search(message, result.output)
    assert "Traceback" not in result.output and not isinstance(result.exception, DataError)
