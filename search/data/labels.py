"""The competition's 18 classes: mask state x gender x age band.

class = mask * 6 + gender * 3 + age, with
mask: wear (mask1..mask5) = 0, incorrect = 1, not wear (normal) = 2;
gender: male = 0, female = 1; age: < 30 -> 0, 30 .. old-1 -> 1, >= old -> 2.
"""

from __future__ import annotations

import numpy as np

OFFICIAL_AGE_OLD = 60
"""Validation, export and scoring always use this cut, whatever the training labels used."""

STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
"""The seven file stems in every person folder, in a fixed order."""

MASK_OF_STEM = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
GENDERS = {"male": 0, "female": 1}
MASK_NAMES = ("wear", "incorrect", "not wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")
NUM_CLASSES = 18
MAX_AGE = 150
"""Ages above are refused as typos (an age of 5000 digits is no person's)."""


def age_band(age, old: int = OFFICIAL_AGE_OLD):
    """Age band 0, 1 or 2 for an age (scalar or array); ``old`` is the age at which band 2 begins."""
    age = np.asarray(age)
    band = np.where(age < 30, 0, np.where(age < old, 1, 2))
    return band if band.ndim else int(band)


def encode(mask, gender, band):
    """Class index (0..17) from mask state, gender and age band (scalars or arrays)."""
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(band)


def decode(label):
    """(mask, gender, age band) of class indices (scalars or arrays)."""
    label = np.asarray(label)
    return label // 6, (label // 3) % 2, label % 3


def class_names() -> tuple[str, ...]:
    """Readable names of the 18 classes, such as ``wear/female/30-59``."""
    return tuple(
        f"{MASK_NAMES[m]}/{GENDER_NAMES[g]}/{AGE_NAMES[a]}" for m in range(3) for g in range(2) for a in range(3)
    )
