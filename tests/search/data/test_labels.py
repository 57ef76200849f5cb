"""The 18-class label formula, its inverse, the age cut and the training labels of a shifted cut."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image
from tiny_trees import write_competition

from maskopt.search.data import labels as L
from maskopt.search.data.dataset import load_dataset

# The competition's table, written out by hand rather than derived from the formula under test.
EXPECTED_CLASS = {
    ("wear", "male", "<30"): 0, ("wear", "male", "30-59"): 1, ("wear", "male", ">=60"): 2,
    ("wear", "female", "<30"): 3, ("wear", "female", "30-59"): 4, ("wear", "female", ">=60"): 5,
    ("incorrect", "male", "<30"): 6, ("incorrect", "male", "30-59"): 7, ("incorrect", "male", ">=60"): 8,
    ("incorrect", "female", "<30"): 9, ("incorrect", "female", "30-59"): 10, ("incorrect", "female", ">=60"): 11,
    ("not wear", "male", "<30"): 12, ("not wear", "male", "30-59"): 13, ("not wear", "male", ">=60"): 14,
    ("not wear", "female", "<30"): 15, ("not wear", "female", "30-59"): 16, ("not wear", "female", ">=60"): 17,
}


@pytest.mark.parametrize(("mask", "gender", "band"), list(itertools.product(range(3), range(2), range(3))))
def test_encode_decode_all_18_combinations(mask, gender, band):
    label = int(L.encode(mask, gender, band))
    assert label == EXPECTED_CLASS[(L.MASK_NAMES[mask], L.GENDER_NAMES[gender], L.AGE_NAMES[band])]
    assert tuple(int(x) for x in L.decode(label)) == (mask, gender, band)
    assert L.class_names()[label] == f"{L.MASK_NAMES[mask]}/{L.GENDER_NAMES[gender]}/{L.AGE_NAMES[band]}"


def test_encode_and_decode_work_on_arrays():
    labels = np.arange(L.NUM_CLASSES)
    mask, gender, band = L.decode(labels)
    np.testing.assert_array_equal(L.encode(mask, gender, band), labels)
    assert len(set(L.class_names())) == L.NUM_CLASSES


@pytest.mark.parametrize(("age", "band"), [(18, 0), (29, 0), (30, 1), (57, 1), (58, 1), (59, 1), (60, 2), (75, 2)])
def test_age_band_official_cut(age, band):
    assert L.age_band(age) == band
    assert isinstance(L.age_band(age), int)


@pytest.mark.parametrize(("age", "band"), [(29, 0), (30, 1), (57, 1), (58, 2), (59, 2), (60, 2)])
def test_age_band_shifted_cut(age, band):
    assert L.age_band(age, old=58) == band


def test_stems_and_mask_states():
    assert L.STEMS == ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
    assert [L.MASK_OF_STEM[s] for s in L.STEMS] == [0, 0, 0, 0, 0, 1, 2]
    assert L.GENDERS == {"male": 0, "female": 1}


def test_shifted_cut_changes_training_labels_only_for_ages_58_and_59(tmp_path):
    people = [("000001", "male", 29), ("000002", "female", 57), ("000003", "male", 58),
              ("000004", "female", 59), ("000005", "male", 60)]
    dataset = load_dataset(write_competition(tmp_path, people, ext=".png", size=(4, 4)))
    official = dataset.training_labels()
    shifted = dataset.training_labels(58)

    np.testing.assert_array_equal(official, dataset.labels)
    changed = official != shifted
    np.testing.assert_array_equal(changed, np.isin(dataset.ages, [58, 59]))
    # Only the age band moves: 30-59 -> >=60 at the new cut; mask and gender stay.
    np.testing.assert_array_equal(L.decode(official[changed])[2], 1)
    np.testing.assert_array_equal(L.decode(shifted[changed])[2], 2)
    np.testing.assert_array_equal(L.decode(official)[:2], L.decode(shifted)[:2])
    # The official labels themselves (validation and scoring) keep the cut at 60.
    assert set(L.decode(dataset.labels[dataset.ages == 59])[2]) == {1}
    assert set(L.decode(dataset.labels[dataset.ages == 60])[2]) == {2}


def test_training_labels_of_other_layouts_ignore_the_cut(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
    dataset = load_dataset(tmp_path)
    np.testing.assert_array_equal(dataset.training_labels(58), dataset.labels)
