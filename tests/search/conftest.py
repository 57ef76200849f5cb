"""Fixtures for the search, space and export tests: one tiny demo dataset, tiny spaces, one cache.

Everything here is sized for a shared 2-core CPU: 20 persons at 32 px, the smallest backbone
(mobilenetv3_small_050 trains a 32 px batch about twice as fast as resnet10t with one thread),
2 folds and few epochs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

BACKBONE = "mobilenetv3_small_050"

# The params of a tiny trial; tests override what they search.
TINY_PARAMS = {
    "backbone": BACKBONE,
    "lr": 0.01,
    "weight_decay": 0.01,
    "batch_size": 16,
    "freeze_depth": 0,
    "sampler": "uniform",
    "aug_strength": 0.0,
    "loss": "ce",
    "optimizer": "adamw",
    "image_size": 32,
    "age_old": 60,
    "head": "single",
}
TINY_STUDY = {
    "name": "tiny",
    "folds": 2,
    "epochs": 1,
    "seed": 0,
    "sampler": "tpe",
    "pruner": "none",
    "warmup_epochs": 0.0,
    "amp": False,
}


def tiny_space_dict(*, study: dict | None = None, params: dict | None = None) -> dict:
    """A space as a dict: ``TINY_STUDY`` / ``TINY_PARAMS`` updated with ``study`` / ``params``."""
    return {"study": {**TINY_STUDY, **(study or {})}, "params": {**TINY_PARAMS, **(params or {})}}


@pytest.fixture(scope="session")
def space_dict():
    """``space_dict(study=..., params=...) -> dict``: the tiny space with some keys changed."""
    return tiny_space_dict


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo dataset every test here reads (and none may change): 20 + 6 persons at 32 px."""
    from maskopt.search.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("demo") / "demo-data"
    make_demo_data(out, persons=20, eval_persons=6, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-image cache for the session, so each size is decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def write_space(tmp_path):
    """``write_space(name="space.yaml", study=..., params=..., raw=None) -> Path``.

    Writes a tiny space (updated with ``study`` and ``params``) as YAML, or ``raw`` as given
    (a dict dumped to YAML, or a string written as is).
    """

    def write(name: str = "space.yaml", *, study: dict | None = None, params: dict | None = None, raw=None) -> Path:
        path = tmp_path / name
        if raw is None:
            raw = tiny_space_dict(study=study, params=params)
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


# --- one finished study, shared by the search and export tests ----------------------------------

MAIN_ENQUEUED = (
    {"lr": 0.01, "loss": "ce"},
    {"lr": 0.01, "loss": "label_smoothing"},
    {"lr": 1e-8, "loss": "ce"},  # cannot learn: the median pruner stops it at its first report
)


@dataclass(frozen=True)
class MainStudy:
    """What ``maskopt search`` left: a 3-trial study (2 complete, 1 pruned) and its export."""

    root: Path  # the folder the command ran in
    space_path: Path
    db: Path
    url: str
    data: Path
    cache_dir: Path
    export: Path  # exports/main, written by the search when it reached its total
    output: str


@pytest.fixture(scope="session")
def main_study(tmp_path_factory, demo_data, cache_dir) -> MainStudy:
    """``maskopt search`` of a 3-trial, 2-fold, 6-epoch study on the demo data, with its export.

    Two trials that learn (the multi head learns the 18 classes from 20 persons far better than
    one 18-way layer) and one with lr 1e-8, enqueued in this order so that the run is
    deterministic: the median pruner needs 2 complete trials before it compares.
    """
    from click.testing import CliRunner

    from maskopt.cli import cli
    from maskopt.storage import create_or_load_study, open_storage

    root = tmp_path_factory.mktemp("main")
    raw = tiny_space_dict(
        study={"name": "main", "data": str(demo_data), "epochs": 6,
               "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}},
        params={"lr": {"low": 1e-8, "high": 0.1, "log": True}, "loss": ["ce", "label_smoothing"], "head": "multi"},
    )
    space_path = root / "main.yaml"
    space_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    db = root / "main.db"
    url = f"sqlite:///{db}"
    study = create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name="main")
    for params in MAIN_ENQUEUED:
        study.enqueue_trial(params)

    previous = os.getcwd()
    os.chdir(root)  # the search exports to exports/<study> under the current folder
    try:
        result = CliRunner().invoke(cli, ["search", "--space", str(space_path), "--storage", url, "--trials", "3",
                                          "--device", "cpu", "--cache-dir", str(cache_dir), "--quiet"])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return MainStudy(root, space_path, db, url, demo_data, cache_dir, root / "exports" / "main", result.output)
