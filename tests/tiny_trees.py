"""Tiny hand-made datasets in the competition layout, for tests that need exact persons."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from maskopt.search.data import labels as L


def write_competition(root: Path, people, *, ext: str = ".jpg", size: tuple[int, int] = (6, 8)) -> Path:
    """``root/train`` with one folder of seven blank images per ``(id, gender, age)``."""
    images = root / "train" / "images"
    rows = ["id,gender,race,age,path"]
    for person, gender, age in people:
        folder = f"{person}_{gender}_Asian_{age}"
        rows.append(f"{person},{gender},Asian,{age},{folder}")
        (images / folder).mkdir(parents=True)
        for stem in L.STEMS:
            Image.new("RGB", size).save(images / folder / f"{stem}{ext}")
    (root / "train" / "train.csv").write_text("\n".join(rows) + "\n")
    return root
