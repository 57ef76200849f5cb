"""Search spaces: every invalid case names the file, the key path, the value and what is allowed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from maskopt.cli import cli
from maskopt.errors import SpaceError
from maskopt.search.space import (
    PARAMS,
    Choice,
    Component,
    Constant,
    Range,
    TrialParams,
    load_space,
    parse_space,
)

ROOT = Path(__file__).resolve().parents[3]


def space_error(write_space, raw) -> str:
    """The message of the SpaceError that loading ``raw`` from a file raises."""
    path = write_space("bad.yaml", raw=raw)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # every message names the file first
    return message


# --- the spaces that ship ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo.yaml", "tiny.yaml", "full.yaml"])
def test_shipped_spaces_load(name):
    space = load_space(ROOT / "spaces" / name)
    assert space.source == str(ROOT / "spaces" / name)
    assert set(space.dims) == set(PARAMS)
    assert isinstance(space.dims["lr"], Range) and space.dims["lr"].log


def test_the_demo_is_a_pretrained_search_from_the_imported_weights():
    space = load_space(ROOT / "spaces" / "demo.yaml")
    assert space.study.pretrained and space.study.weights == "weights"  # what `make demo` imports
    assert space.dims["backbone"] == Constant("tf_efficientnet_lite0")
    assert space.study.name == "demo"


def test_tiny_space_reads_every_setting():
    space = load_space(ROOT / "spaces" / "tiny.yaml")
    assert isinstance(space.dims["backbone"], Choice)
    assert (space.study.name, space.study.folds, space.study.epochs) == ("tiny", 3, 4)
    assert space.study.pruner == Component("percentile", (("n_startup_trials", 3), ("n_warmup_steps", 2),
                                                          ("percentile", 25.0)))
    assert space.study.sampler == Component("tpe", (("n_startup_trials", 4),))
    assert space.study.warmup_epochs == 0.5 and space.study.pretrained is False
    assert space.dims["image_size"] == Constant(48)
    assert space.dims["age_old"] == Choice((58, 59, 60))
    assert space.dims["lr"] == Range(3.0e-4, 3.0e-2, log=True)


def test_full_space_reads_int_ranges_and_pruner_options():
    space = load_space(ROOT / "spaces" / "full.yaml")
    assert space.dims["freeze_depth"] == Range(0, 2)
    assert space.dims["age_old"] == Range(57, 60)
    assert space.study.pruner == Component("asha", (("reduction_factor", 4),))
    assert space.study.layout == "competition" and space.study.folds == 5


def test_stored_form_parses_back_to_the_same_space():
    # The study keeps to_dict(); export and later workers rebuild the space from it.
    for name in ("demo.yaml", "tiny.yaml", "full.yaml"):
        space = load_space(ROOT / "spaces" / name)
        again = parse_space(space.to_dict(), source="stored", check_names=False)
        assert again.study == space.study
        assert again.dims == space.dims


# --- valid forms ---------------------------------------------------------------------------------


def test_missing_params_take_their_defaults(write_space):
    space = load_space(write_space(raw={"study": {"name": "x"}, "params": {"lr": [0.1, 0.01]}}))
    assert space.dims["lr"] == Choice((0.1, 0.01))
    for name, spec in PARAMS.items():
        if name != "lr":
            assert space.dims[name] == Constant(spec.default)


def test_yaml_exponent_without_dot_is_a_number(write_space):
    # YAML 1.1 reads 1e-3 as the string "1e-3"; the space reads it as the number.
    path = write_space(raw="params:\n  lr: {low: 1e-4, high: 1e-2, log: true}\n  weight_decay: 1e-3\n")
    space = load_space(path)
    assert space.dims["lr"] == Range(1e-4, 1e-2, log=True)
    assert space.dims["weight_decay"] == Constant(1e-3)


def test_choices_mapping_and_int_step_range(write_space):
    space = load_space(write_space(raw={"params": {"loss": {"choices": ["ce", "focal"]},
                                                   "batch_size": {"low": 16, "high": 64, "step": 16}}}))
    assert space.dims["loss"] == Choice(("ce", "focal"))
    assert space.dims["batch_size"] == Range(16, 64, step=16)


def test_sampler_and_pruner_options(write_space):
    space = load_space(write_space(raw={"study": {"sampler": {"name": "random"},
                                                  "pruner": {"name": "percentile", "percentile": 40.0}}}))
    assert space.study.sampler == Component("random")
    assert space.study.pruner.kwargs() == {"percentile": 40.0}


def test_space_of_constants_pins_one_configuration(space_dict):
    space = parse_space(space_dict(params={"lr": 0.005, "batch_size": 8, "loss": "focal"}))
    assert all(isinstance(dim, Constant) for dim in space.dims.values())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(3):
        trial = study.ask()
        seen.append(space.suggest(trial))
        assert trial.params == {}  # nothing is searched
        study.tell(trial, 0.5)
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] == TrialParams(**{**space_dict()["params"], "lr": 0.005, "batch_size": 8, "loss": "focal"})


def test_suggest_draws_inside_the_ranges(space_dict):
    space = parse_space(space_dict(params={"lr": {"low": 1e-4, "high": 1e-1, "log": True},
                                           "batch_size": [8, 16], "freeze_depth": {"low": 0, "high": 2}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        params = space.suggest(study.ask())
        assert 1e-4 <= params.lr <= 1e-1
        assert params.batch_size in (8, 16)
        assert isinstance(params.freeze_depth, int) and 0 <= params.freeze_depth <= 2


def test_competition_only_params_are_fixed_with_a_note_on_other_layouts():
    space = load_space(ROOT / "spaces" / "tiny.yaml")
    assert space.for_layout("competition") == (space, [])
    for layout in ("folders", "csv"):
        fitted, notes = space.for_layout(layout)
        assert fitted.dims["age_old"] == Constant(60)
        assert fitted.dims["head"] == Constant("single")
        assert fitted.dims["lr"] == space.dims["lr"]
        assert len(notes) == 2
        assert any(n.startswith("age_old is fixed to 60") and "competition layout only" in n for n in notes)
        assert any(n.startswith("head is fixed to 'single'") for n in notes)


def test_competition_only_params_left_at_default_give_no_note(space_dict):
    space = parse_space(space_dict())
    fitted, notes = space.for_layout("folders")
    assert notes == [] and fitted.dims == space.dims


# --- invalid spaces ------------------------------------------------------------------------------


def test_unknown_key_suggests_the_close_one(write_space):
    message = space_error(write_space, {"params": {"lrr": 0.1}})
    assert "params.lrr: unknown key (did you mean 'lr'?)" in message
    assert "allowed keys here: backbone, lr, weight_decay" in message


def test_unknown_study_key(write_space):
    message = space_error(write_space, {"study": {"epoch": 3}})
    assert "study.epoch: unknown key (did you mean 'epochs'?)" in message
    assert "folds, epochs, seed" in message


def test_unknown_top_level_key(write_space):
    message = space_error(write_space, {"studdy": {}, "params": {}})
    assert "studdy: unknown key (did you mean 'study'?); allowed keys here: study, params" in message


@pytest.mark.parametrize(
    ("raw", "where", "value", "allowed"),
    [
        ({"params": {"batch_size": "big"}}, "params.batch_size", "'big'", "a whole number"),
        ({"params": {"batch_size": 32.5}}, "params.batch_size", "32.5", "a whole number"),
        ({"params": {"batch_size": True}}, "params.batch_size", "True", "a whole number"),
        ({"params": {"lr": "fast"}}, "params.lr", "'fast'", "a number"),
        ({"params": {"lr": {"low": 1e-3, "high": 0.1, "log": "yes"}}}, "params.lr.log", "'yes'", "true or false"),
        ({"study": {"epochs": "4"}}, "study.epochs", "'4'", "a whole number"),
        ({"study": {"pretrained": 1}}, "study.pretrained", "1", "true or false"),
        ({"params": {"loss": {"low": 1, "high": 2}}}, "params.loss", "{'low': 1, 'high': 2}", "a value or a list"),
        ({"params": {"loss": ["ce", "hinge"]}}, "params.loss[1]", "'hinge'", "one of ce, focal, label_smoothing"),
        ({"params": {"image_size": {"low": 8, "high": 64}}}, "params.image_size.low", "8", "a value in [16, 1024]"),
        ({"study": {"folds": 1}}, "study.folds", "1", "at least 2"),
        ({"study": {"layout": "flat"}}, "study.layout", "'flat'", "one of auto, competition, csv, folders"),
        ([1, 2], "(top level)", "[1, 2]", "a mapping"),
    ],
)
def test_wrong_type_or_value(write_space, raw, where, value, allowed):
    message = space_error(write_space, raw)
    assert f": {where}: got {value}; expected " in message
    assert allowed in message


def test_low_above_high(write_space):
    message = space_error(write_space, {"params": {"lr": {"low": 0.1, "high": 0.001}}})
    assert "params.lr: got {'low': 0.1, 'high': 0.001}" in message
    assert "low <= high, but got low=0.1, high=0.001" in message


def test_log_range_needs_positive_low(write_space):
    message = space_error(write_space, {"params": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}})
    assert "params.weight_decay.low: got 0.0; expected a value > 0 with log: true" in message


def test_log_and_step_together(write_space):
    message = space_error(write_space, {"params": {"lr": {"low": 0.001, "high": 0.1, "log": True, "step": 0.01}}})
    assert "params.lr" in message and "either log or step, not both" in message


@pytest.mark.parametrize("raw", [{"params": {"backbone": []}}, {"params": {"loss": {"choices": []}}}])
def test_empty_choices(write_space, raw):
    message = space_error(write_space, raw)
    assert re.search(r"params\.(backbone|loss): got .*; expected a non-empty list of choices", message)


def test_repeated_choices(write_space):
    message = space_error(write_space, {"params": {"batch_size": [16, 16]}})
    assert "params.batch_size: got [16, 16]; expected choices without repeats" in message


def test_unknown_backbone_suggests_close_names(write_space):
    message = space_error(write_space, {"params": {"backbone": ["resnet10t", "mobilenetv3_small_05"]}})
    assert "params.backbone: got 'mobilenetv3_small_05'; expected a timm backbone name" in message
    assert "closest timm names: " in message and "mobilenetv3_small_050" in message


def test_unknown_optimizer_suggests_close_names(write_space):
    message = space_error(write_space, {"params": {"optimizer": "adamm"}})
    assert "params.optimizer: got 'adamm'; expected a timm optimizer name (closest: " in message
    assert "adamw" in message


def test_names_are_not_checked_when_asked_not_to(space_dict):
    raw = space_dict(params={"backbone": "no_such_net"})
    assert parse_space(raw, check_names=False).dims["backbone"] == Constant("no_such_net")


@pytest.mark.parametrize(
    ("study", "where", "value"),
    [
        ({"sampler": "tpee"}, "study.sampler", "'tpee'"),
        ({"sampler": {"name": "grid"}}, "study.sampler.name", "'grid'"),
        ({"pruner": "medain"}, "study.pruner", "'medain'"),
        ({"pruner": {"name": "hyperbnd"}}, "study.pruner.name", "'hyperbnd'"),
    ],
)
def test_unknown_sampler_or_pruner(write_space, space_dict, study, where, value):
    message = space_error(write_space, space_dict(study=study))
    assert f"{where}: got {value}; expected one of " in message
    kind = where.split(".")[1]
    assert ("tpe, random, gp, qmc, cmaes" if kind == "sampler" else "median, percentile, hyperband") in message


def test_close_sampler_name_is_suggested(write_space, space_dict):
    assert "(did you mean 'tpe'?)" in space_error(write_space, space_dict(study={"sampler": "tpee"}))
    assert "(did you mean 'median'?)" in space_error(write_space, space_dict(study={"pruner": "medain"}))


def test_unknown_pruner_option(write_space, space_dict):
    message = space_error(write_space, space_dict(study={"pruner": {"name": "median", "n_startup": 3}}))
    assert "study.pruner.n_startup: got 3; expected an option of the median pruner: " in message
    assert "n_startup_trials, n_warmup_steps" in message


def test_unknown_sampler_option(write_space, space_dict):
    message = space_error(write_space, space_dict(study={"sampler": {"name": "tpe", "startup": 3}}))
    assert "study.sampler.startup: got 3; expected an option of the tpe sampler: " in message
    assert "n_startup_trials" in message


@pytest.mark.parametrize("component, key, value, expected", [
    ("sampler", "n_startup_trials", "4", "an integer"),  # TPE would take the string and fail mid-study
    ("sampler", "n_startup_trials", True, "an integer"),
    ("sampler", "constant_liar", "yes", "true or false"),
    ("pruner", "n_warmup_steps", 1.5, "an integer"),
])
def test_component_option_of_the_wrong_type(write_space, space_dict, component, key, value, expected):
    name = "tpe" if component == "sampler" else "median"
    message = space_error(write_space, space_dict(study={component: {"name": name, key: value}}))
    assert f"study.{component}.{key}: got {value!r}; expected {expected}" in message


def test_component_option_of_the_right_type_loads(write_space, space_dict):
    space = load_space(write_space(raw=space_dict(study={"pruner": {"name": "percentile", "percentile": 30}})))
    assert space.study.pruner.kwargs() == {"percentile": 30}  # an int where the default is a float


def test_pruner_option_value_its_constructor_refuses(write_space, space_dict):
    # Found when the pruner is built, which must happen before any storage is touched.
    message = space_error(write_space, space_dict(study={"pruner": {"name": "percentile", "percentile": 200.0}}))
    assert "study.pruner: got {'name': 'percentile', 'percentile': 200.0}" in message
    assert "Percentile must be between 0 and 100" in message


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(SpaceError, match=r"cannot read search space .*nope\.yaml"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("params: {lr: [0.1,\n")
    with pytest.raises(SpaceError, match=r"broken\.yaml is not valid YAML"):
        load_space(bad)


# --- an invalid space writes nothing ------------------------------------------------------------


INVALID_SPACES = {
    "unknown key": {"params": {"lrr": 0.1}},
    "low above high": {"params": {"lr": {"low": 0.1, "high": 0.001}}},
    "unknown backbone": {"params": {"backbone": "mobilenetv3_small_05"}},
    "unknown pruner option": {"study": {"pruner": {"name": "median", "n_startup": 3}}},
    "bad pruner value": {"study": {"pruner": {"name": "percentile", "percentile": 200.0}}},
}


@pytest.mark.parametrize("case", list(INVALID_SPACES))
def test_cli_invalid_space_writes_no_storage(write_space, space_dict, demo_data, tmp_path, case):
    raw = space_dict(study={**INVALID_SPACES[case].get("study", {}), "data": str(demo_data)},
                     params=INVALID_SPACES[case].get("params"))
    path = write_space("bad.yaml", raw=raw)
    db = tmp_path / "x.db"
    result = CliRunner().invoke(cli, ["search", "--space", str(path), "--storage", f"sqlite:///{db}",
                                      "--trials", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {path}: ")
    assert not db.exists()
    assert not (tmp_path / "cache").exists()  # not even the image cache


def test_cli_invalid_space_leaves_an_existing_storage_untouched(write_space, space_dict, tmp_path):
    from maskopt.storage import create_or_load_study, open_storage

    db = tmp_path / "x.db"
    create_or_load_study(storage=open_storage(f"sqlite:///{db}", heartbeat_interval=None), study_name="other")
    before = db.read_bytes()
    path = write_space("bad.yaml", raw=space_dict(study={"name": "new"}, params={"lr": {"low": 1, "high": 0.1}}))
    result = CliRunner().invoke(cli, ["search", "--space", str(path), "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 1 and "params.lr" in result.output
    assert db.read_bytes() == before
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["other"]


def test_cli_invalid_space_message_has_no_traceback(write_space, tmp_path):
    path = write_space("bad.yaml", raw={"study": {"sampler": "tpee"}, "params": {"backbone": "resnet10t"}})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASKOPT_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "maskopt", "search", "--space", str(path),
                           "--storage", "sqlite:///x.db"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"Error: {path}: study.sampler: got 'tpee'; expected one of ")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "x.db").exists()
    assert not (tmp_path / "maskopt.db").exists()


def test_weights_without_pretrained_are_refused_not_ignored(write_space, space_dict):
    message = space_error(write_space, space_dict(study={"weights": "weights/", "pretrained": False}))
    assert "study.weights: got 'weights/'; expected no weights unless study.pretrained is true" in message
    space = load_space(write_space(raw=space_dict(study={"weights": "weights/", "pretrained": True})))
    assert space.study.weights == "weights/"
