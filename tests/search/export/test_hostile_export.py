"""Hostile input to ``maskopt score`` and ``maskopt predict``: a clean error, never a traceback.

The export here is made by hand (an untrained tiny model and its config), which takes a second,
instead of the search in ``main_study``; what is checked is the reading of the folder, not training.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskopt.cli import cli
from maskopt.search.data import labels as L

BACKBONE = "mobilenetv3_small_050"  # the tiny backbone of conftest.py


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, *fragments: str) -> None:
    """Exit 1 through the CLI's error path (SystemExit), a short message, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.startswith("Error: "), result.output
    assert "Traceback" not in result.output and len(result.output) < 1200, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


# --- score ----------------------------------------------------------------------------------------

IDS = ["a.jpg", "b.jpg", "c.jpg"]


@pytest.fixture
def solution(tmp_path) -> Path:
    path = tmp_path / "solution.csv"
    path.write_text("ImageID,ans\n" + "".join(f"{i},{k}\n" for i, k in zip(IDS, (0, 3, 17))))
    return path


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("ImageID,ans\na.jpg,0\nb.jpg,\u0663\nc.jpg,17\n", ["line 3: ans '\u0663' is not a class 0..17"]),
        ("ImageID,ans\na.jpg,0\nb.jpg,3\nc.jpg,\u00b2\n", ["line 4: ans '\u00b2' is not a class 0..17"]),
        ("ImageID,ans\na.jpg,+3\n", ["line 2: ans '+3' is not a class"]),
        ("ImageID,ans\na.jpg,0\nb.jpg," + "9" * 5000 + "\n", ["line 3: ans '999", "...", "is not a class"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ["line 1: not UTF-8 text"]),
        (b"ImageID,ans\na.jpg,0\nb.jpg,\xff\n", ["line 3: not UTF-8 text"]),
        ("ImageID,ans,ans\na.jpg,0,1\n", ["header names column 'ans' more than once"]),
        ("ImageID,ans,ImageID\na.jpg,0,x\n", ["header names column 'ImageID' more than once"]),
        ("ImageID,ans\n" + "x" * 200_000 + ",0\n", ["line 2: not a valid CSV row"]),
        ("", ["header must be 'ImageID,ans', got (empty file)"]),
    ],
    ids=["arabic-indic", "superscript", "sign", "long-value", "binary", "bad-byte", "dup-ans", "dup-id", "huge-field",
         "empty"],
)
def test_score_refuses_hostile_submissions(tmp_path, solution, content, fragments):
    sub = write(tmp_path / "sub.csv", content)
    result = invoke("score", sub, solution)
    assert_clean_error(result, str(sub), *fragments)


def test_score_refuses_a_hostile_solution_too(tmp_path, solution):
    sol = write(tmp_path / "sol.csv", "ImageID,ans\na.jpg,\u0663\n")
    result = invoke("score", solution, sol)
    assert_clean_error(result, f"{sol}, line 2: ans '\u0663'")


def test_score_accepts_a_utf8_bom(tmp_path, solution):
    sub = write(tmp_path / "sub.csv", b"\xef\xbb\xbf" + solution.read_bytes())
    result = invoke("score", sub, solution, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["count"] == 3 and scores["accuracy"] == 1.0


# --- predict --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    """A valid export of an untrained tiny model, as export-best writes it."""
    from safetensors.torch import save_model

    from maskopt.search.export import EXPORT_FORMAT
    from maskopt.search.train.models import build_model

    out = tmp_path_factory.mktemp("export") / "good"
    out.mkdir()
    save_model(build_model(BACKBONE, num_classes=L.NUM_CLASSES, head="multi"), str(out / "model.safetensors"))
    config = {"format": EXPORT_FORMAT, "backbone": BACKBONE, "head": "multi", "num_classes": L.NUM_CLASSES,
              "class_names": list(L.class_names()), "layout": "competition", "image_size": 32,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "models": ["model.safetensors"],
              "tta": False}
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def export(good_export, tmp_path) -> Path:
    """A copy of the good export for one test to spoil."""
    return Path(shutil.copytree(good_export, tmp_path / "export"))


def predict(export: Path, data: Path, cache_dir: Path, tmp_path: Path):
    return invoke("predict", "--model", export, "--data", data, "--out", tmp_path / "p.csv", "--device", "cpu",
                  "--cache-dir", cache_dir, "--quiet")


def test_the_hand_made_export_predicts(export, demo_data, cache_dir, tmp_path):
    result = predict(export, demo_data, cache_dir, tmp_path)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "p.csv").read_text().startswith("ImageID,ans\n")


# Every key export-best writes, in its order, as exports made before config.py was written hold them.
TODAYS_CONFIG = {
    "format": "maskopt-export/1", "backbone": BACKBONE, "head": "multi", "num_classes": 18,
    "class_names": list(L.class_names()), "layout": "competition", "image_size": 32,
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "age_old_training": 58, "age_old_official": 60,
    "models": ["model.safetensors"], "study": "demo", "trial": 3,
    "params": {"backbone": BACKBONE, "lr": 0.0031, "weight_decay": 0.01, "batch_size": 16, "freeze_depth": 0,
               "sampler": "uniform", "aug_strength": 0.0, "loss": "ce", "optimizer": "adamw", "image_size": 32,
               "age_old": 58, "head": "multi"},
    "cv_macro_f1": 0.5123, "fold_macro_f1": [0.5, 0.5246], "epochs": 4, "dataset_fingerprint": "a1b2c3d4e5f60718",
    "versions": {"maskopt": "0.1.0", "timm": "1.0.9", "torch": "2.4.1", "optuna": "4.0.0"}, "tta": True,
    "class_offsets": [0.0] * 17 + [0.35],
    "calibration": {"offsets": [0.0] * 17 + [0.35], "oof_macro_f1": 0.51, "nested_oof_macro_f1": 0.52},
}


def test_an_export_in_todays_format_loads_round_trips_and_predicts(good_export, demo_data, cache_dir, tmp_path):
    from maskopt.search.export import ExportConfig, read_export_config

    folder = Path(shutil.copytree(good_export, tmp_path / "old"))
    text = json.dumps(TODAYS_CONFIG, indent=2) + "\n"  # how export-best has always written it
    (folder / "config.json").write_text(text)
    config = read_export_config(folder)
    assert isinstance(config, ExportConfig) and config == ExportConfig.from_json(folder)
    assert (config.image_size, config.age_old_training, config.trial, config.epochs) == (32, 58, 3, 4)
    assert config.models == ("model.safetensors",) and config.tta is True and config.class_offsets[17] == 0.35
    assert config.to_dict() == TODAYS_CONFIG and list(config.to_dict()) == list(TODAYS_CONFIG)
    config.to_json(tmp_path)
    assert (tmp_path / "config.json").read_text() == text
    result = predict(folder, demo_data, cache_dir, tmp_path)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "p.csv").read_text().startswith("ImageID,ans\n")


def test_an_ensemble_in_todays_format_loads_round_trips_and_predicts(good_export, demo_data, cache_dir, tmp_path):
    from maskopt.search.export import EnsembleConfig, MemberRef, read_export_config

    folder = tmp_path / "ensemble"
    folder.mkdir()
    member = {k: v for k, v in TODAYS_CONFIG.items() if k not in ("class_offsets", "calibration")}
    for trial in (3, 5):
        shutil.copytree(good_export, folder / f"member-trial-{trial}")
        (folder / f"member-trial-{trial}" / "config.json").write_text(
            json.dumps({**member, "trial": trial, "epochs": [3, 4]}, indent=2) + "\n")  # --ensemble-folds: a list
    ensemble = {
        "format": "maskopt-export/1", "num_classes": 18, "class_names": list(L.class_names()), "layout": "competition",
        "members": [{"folder": "member-trial-3", "weight": 0.6666666666666666, "trial": 3},
                    {"folder": "member-trial-5", "weight": 0.3333333333333333, "trial": 5}],
        "study": "demo", "trial": 3, "cv_macro_f1": 0.5123,
        "ensemble": {"trials": [3, 5], "weights": [0.6666666666666666, 0.3333333333333333], "oof_macro_f1": 0.55,
                     "best_single_oof_macro_f1": 0.53},
        "dataset_fingerprint": "a1b2c3d4e5f60718", "versions": TODAYS_CONFIG["versions"], "tta": False,
        "class_offsets": TODAYS_CONFIG["class_offsets"], "calibration": TODAYS_CONFIG["calibration"],
    }
    text = json.dumps(ensemble, indent=2) + "\n"
    (folder / "config.json").write_text(text)
    config = read_export_config(folder)
    assert isinstance(config, EnsembleConfig) and config == EnsembleConfig.from_json(folder)
    assert config.members == (MemberRef("member-trial-3", 0.6666666666666666, 3),
                              MemberRef("member-trial-5", 0.3333333333333333, 5))
    assert read_export_config(folder / "member-trial-5").epochs == (3, 4)
    assert config.to_dict() == ensemble
    config.to_json(tmp_path)
    assert (tmp_path / "config.json").read_text() == text
    result = predict(folder, demo_data, cache_dir, tmp_path)
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_a_member_folder_no_path_can_name_is_refused(tmp_path):
    from maskopt.errors import ExportError
    from maskopt.search.export import read_export_config

    config = {"format": "maskopt-export/1", "num_classes": 18, "class_names": list(L.class_names()), "tta": False,
              "members": [{"folder": "member\0trial-3", "weight": 1.0}]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"key 'members': folder 'member\\x00trial-3' must be the name of a folder "
                                          r"inside the export"):
        read_export_config(tmp_path)


def test_one_kind_of_config_is_not_read_as_the_other(good_export):
    from maskopt.errors import ExportError
    from maskopt.search.export import EnsembleConfig

    with pytest.raises(ExportError, match="key 'members' must be a list of 1..64 objects .*; it is missing"):
        EnsembleConfig.from_json(good_export)


def changed(**changes):
    """A change to config.json: keys set (None: removed)."""

    def change(config: dict) -> dict:
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        return config

    return change


CONFIG_CASES = {
    "no-format": (changed(format=None), "key 'format' must be 'maskopt-export/1'; it is missing"),
    "no-backbone": (changed(backbone=None), "key 'backbone' must be a timm model name; it is missing"),
    "backbone-int": (changed(backbone=123), "key 'backbone' must be a timm model name; got 123"),
    "backbone-list": (changed(backbone=["resnet18"]), "key 'backbone' must be a timm model name; got ['resnet18']"),
    "backbone-unknown": (changed(backbone="no_such_net"), "key 'backbone': unknown backbone 'no_such_net'"),
    "backbone-huge": (changed(backbone="x" * 100_000), "key 'backbone' must be a timm model name; got 'xxx"),
    "head": (changed(head="triple"), "key 'head' must be 'single' or 'multi'; got 'triple'"),
    "classes-huge": (changed(num_classes=10**9), "key 'num_classes' must be an integer 2..10000; got 1000000000"),
    "classes-bool": (changed(num_classes=True), "key 'num_classes' must be an integer"),
    "classes-multi": (changed(num_classes=5, class_names=list("abcde")), "key 'num_classes' must be 18 with head 'multi'; got 5"),
    "names-short": (changed(class_names=["a", "b"]), "key 'class_names' must be a list of 18 distinct"),
    "names-type": (changed(class_names="abc"), "key 'class_names' must be a list"),
    "names-dup": (changed(class_names=["a"] * 18), "key 'class_names' must be a list of 18 distinct"),
    "size-str": (changed(image_size="32"), "key 'image_size' must be an integer 8..1024; got '32'"),
    "size-zero": (changed(image_size=0), "key 'image_size' must be an integer 8..1024; got 0"),
    "size-huge": (changed(image_size=10**6), "key 'image_size' must be an integer 8..1024; got 1000000"),
    "size-float": (changed(image_size=32.0), "key 'image_size' must be an integer 8..1024; got 32.0"),
    "mean-two": (changed(mean=[0.5, 0.5]), "key 'mean' must be a list of 3 finite numbers; got [0.5, 0.5]"),
    "mean-str": (changed(mean=["a", "b", "c"]), "key 'mean' must be a list of 3 finite numbers"),
    "mean-nan": (changed(mean=[float("nan"), 0, 0]), "key 'mean' must be a list of 3 finite numbers; got [nan"),
    "mean-bigint": (changed(mean=[10**400, 0, 0]), "key 'mean' must be a list of 3 finite numbers"),
    "std-zero": (changed(std=[0, 1, 1]), "key 'std' must be a list of 3 finite numbers, all above 0"),
    "tta": (changed(tta="yes"), "key 'tta' must be true or false; got 'yes'"),
    "models-str": (changed(models="model.safetensors"), "key 'models' must be a list of 1..64 weights file names"),
    "models-empty": (changed(models=[]), "key 'models' must be a list of 1..64 weights file names; got []"),
    "models-many": (changed(models=["model.safetensors"] * 1000), "key 'models' must be a list of 1..64"),
    "models-absolute": (changed(models=["/etc/model.safetensors"]), "key 'models': '/etc/model.safetensors' must be "
                                                                     "a file name inside the export folder"),
    "models-dotdot": (changed(models=["../good/model.safetensors"]),
                      "key 'models': '../good/model.safetensors' must be a file name inside the export folder"),
    "models-deep-dotdot": (changed(models=["a/../../x.safetensors"]),
                           "key 'models': 'a/../../x.safetensors' must be a file name inside the export folder"),
    "models-pickle": (changed(models=["model.pth"]), "key 'models': 'model.pth' is not a .safetensors file"),
    "models-missing": (changed(models=["fold0.safetensors"]), "key 'models': 'fold0.safetensors': no such file in"),
    "models-null": (changed(models=[None]), "key 'models' must be a list of 1..64 weights file names; got [None]"),
    "models-nul-byte": (changed(models=["model\0.safetensors"]),
                        "key 'models': 'model\\x00.safetensors' must be a file name inside the export folder"),
    # Keys that say where the model came from: optional, but of their type when present.
    "trial-str": (changed(trial="3"), "key 'trial' must be an integer; got '3'"),
    "study-int": (changed(study=7), "key 'study' must be a string; got 7"),
    "epochs-str": (changed(epochs=["4"]), "key 'epochs' must be an integer, or a list of integers (one per fold)"),
    "params-list": (changed(params=[1]), "key 'params' must be a JSON object; got [1]"),
}


@pytest.mark.parametrize(("change", "message"), CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_predict_refuses_a_hostile_config(export, demo_data, cache_dir, tmp_path, change, message):
    path = export / "config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    result = predict(export, demo_data, cache_dir, tmp_path)
    assert_clean_error(result, f"{path}: {message}")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe{\x00}\x00", "is not UTF-8 text"),
        (b"[1, 2, 3]", "must hold a JSON object, got list"),
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
        (b"1" * 5000, "is not valid JSON"),  # over Python's int digit limit
        (b" " * (2 << 20), "too large for an export config"),
    ],
    ids=["syntax", "binary", "list", "deep", "long-int", "huge"],
)
def test_predict_refuses_a_config_that_is_not_a_json_object(export, demo_data, cache_dir, tmp_path, content, message):
    (export / "config.json").write_bytes(content)
    result = predict(export, demo_data, cache_dir, tmp_path)
    assert_clean_error(result, f"{export / 'config.json'}", message)


def test_predict_refuses_weights_linked_from_outside_the_export(export, good_export, demo_data, cache_dir, tmp_path):
    (export / "model.safetensors").unlink()
    os.symlink(good_export / "model.safetensors", export / "model.safetensors")
    result = predict(export, demo_data, cache_dir, tmp_path)
    assert_clean_error(result, "key 'models': 'model.safetensors' leads outside the export folder")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda data: data[: len(data) // 2], "cannot load the weights"),
        (lambda data: data[:7], "cannot load the weights"),
        (lambda data: b"\x80\x02}q\x00." * 10, "cannot load the weights"),  # a pickle, not safetensors
        (lambda data: b"", "cannot load the weights"),
    ],
    ids=["half", "header-cut", "pickle", "empty"],
)
def test_predict_reports_a_broken_weights_file(export, demo_data, cache_dir, tmp_path, spoil, message):
    weights = export / "model.safetensors"
    weights.write_bytes(spoil(weights.read_bytes()))
    result = predict(export, demo_data, cache_dir, tmp_path)
    assert_clean_error(result, f"{weights}: {message}", "re-export with maskopt export-best")
    assert not (tmp_path / "p.csv").exists()


def test_predict_reports_weights_of_another_model(export, demo_data, cache_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(export / "model.safetensors"))
    result = predict(export, demo_data, cache_dir, tmp_path)
    assert_clean_error(result, f"{export / 'model.safetensors'}: cannot load the weights")
