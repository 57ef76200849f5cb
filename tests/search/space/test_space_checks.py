"""Space checks that keep a study from failing every trial: sampler and pruner options tried before
any storage is touched, sections that are not mappings, seeds, warm-up, batch size, repeated keys."""

from __future__ import annotations

import pytest

from maskopt.commands import search as search_command
from maskopt.errors import SpaceError
from maskopt.search.space import Choice, Component, Constant, Range, load_space, parse_space
from maskopt.search.space.schema import MAX_SEED
from maskopt.search.study.runner import MAX_WORKER_INDEX

# A searched range, so that a rehearsal's sampler has something to sample.
SEARCHED = {"lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "weight_decay": {"low": 0.0, "high": 0.1}}


def space_error(write_space, raw) -> str:
    path = write_space("bad.yaml", raw=raw)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}"), message
    return message


# --- sampler and pruner options ------------------------------------------------------------------


@pytest.mark.parametrize("name, option, value", [
    ("tpe", "gamma", 1),
    ("tpe", "weights", 1),
    ("tpe", "constraints_func", 1),
    ("gp", "constraints_func", "f"),
    ("gp", "independent_sampler", "random"),
    ("cmaes", "x0", {"lr": 0.01}),
])
def test_options_that_take_a_function_or_object_are_refused_with_the_options_a_file_can_give(
        write_space, space_dict, name, option, value):
    message = space_error(write_space, space_dict(study={"sampler": {"name": name, option: value}}))
    assert f"study.sampler.{option}: got {value!r}; expected an option of the {name} sampler: " in message
    assert "n_startup_trials" in message and f"{option}," not in message
    assert "(it takes a Python function or object, which a space file cannot give)" in message


def test_plain_options_load_and_yaml_text_exponents_are_numbers(write_space, space_dict):
    raw = space_dict(study={"sampler": {"name": "tpe", "multivariate": None, "n_ei_candidates": 48,
                                        "prior_weight": "1e-3"},
                            "pruner": {"name": "hyperband", "max_resource": "auto"}},
                     params=SEARCHED)
    space = load_space(write_space(raw=raw))
    assert space.study.sampler.kwargs() == {"multivariate": None, "n_ei_candidates": 48, "prior_weight": 1e-3}
    assert space.study.pruner.kwargs() == {"max_resource": "auto"}


@pytest.mark.parametrize("component, name, option, value, allowed", [
    ("sampler", "tpe", "n_startup_trials", -1, "a whole number of at least 0"),
    ("sampler", "gp", "n_startup_trials", -5, "a whole number of at least 0"),
    ("sampler", "tpe", "n_ei_candidates", 0, "a whole number from 1 to 10000"),
    ("sampler", "tpe", "n_ei_candidates", 10**6, "a whole number from 1 to 10000"),
    ("pruner", "median", "n_warmup_steps", -1, "a whole number of at least 0"),
    ("pruner", "median", "interval_steps", 0, "a whole number of at least 1"),
    ("pruner", "percentile", "n_startup_trials", -3, "a whole number of at least 0"),
    ("pruner", "hyperband", "reduction_factor", 1, "a whole number of at least 2"),
    ("pruner", "hyperband", "min_resource", 0, "a whole number of at least 1"),
    ("pruner", "hyperband", "bootstrap_count", -1, "a whole number of at least 0"),
    ("pruner", "successive_halving", "min_early_stopping_rate", -1, "a whole number of at least 0"),
    ("pruner", "wilcoxon", "n_startup_steps", -1, "a whole number of at least 0"),
])
def test_counts_out_of_their_range_are_refused_with_the_option_named(write_space, space_dict, component, name,
                                                                      option, value, allowed):
    message = space_error(write_space, space_dict(study={component: {"name": name, option: value}}))
    assert f"study.{component}.{option}: got {value}; expected {allowed} (the {name} {component}'s {option})" in message


def test_option_that_fails_only_when_the_sampler_samples_is_named(write_space, space_dict):
    # CMA-ES takes a population of 1 when built and fails on its first sample: every trial would fail.
    message = space_error(write_space, space_dict(study={"sampler": {"name": "cmaes", "popsize": 1,
                                                                     "n_startup_trials": 0}},
                                                  params=SEARCHED))
    assert "study.sampler: got {'name': 'cmaes', 'n_startup_trials': 0, 'popsize': 1}; expected options the " \
           "cmaes sampler accepts: with popsize: 1 it fails (AssertionError: " in message


def test_options_that_fail_only_together_are_shown_together(write_space, space_dict):
    message = space_error(write_space, space_dict(study={"sampler": {"name": "tpe", "group": True,
                                                                     "multivariate": False}}))
    assert "expected options the tpe sampler accepts: these options together make it fail (ValueError: " \
           "``group`` option can only be enabled when ``multivariate`` is enabled.)" in message
    # Hyperband checks these two only when it first prunes.
    message = space_error(write_space, space_dict(study={"epochs": 3, "pruner": {
        "name": "hyperband", "bootstrap_count": 1, "max_resource": "auto"}}))
    assert "study.pruner: got {'name': 'hyperband', 'bootstrap_count': 1, 'max_resource': 'auto'}" in message
    assert "these options together make it fail (ValueError: bootstrap_count > 0 and max_resource == 'auto'" in message


def test_a_text_where_a_pruner_takes_an_integer_or_auto_is_named(write_space, space_dict):
    message = space_error(write_space, space_dict(study={"pruner": {"name": "hyperband", "max_resource": "all"}}))
    assert "with max_resource: 'all' it fails (ValueError: The 'max_resource' should be integer or 'auto'." in message


@pytest.mark.parametrize("sampler", [{"name": "tpe", "multivariate": False}, {"name": "random"},
                                     {"name": "qmc", "scramble": True}, {"name": "cmaes", "popsize": 4},
                                     {"name": "gp", "deterministic_objective": True}])
def test_every_sampler_with_sound_options_passes_its_rehearsal(space_dict, sampler):
    space = parse_space(space_dict(study={"sampler": sampler}, params=SEARCHED), check_names=False)
    assert space.study.sampler.name == sampler["name"]


@pytest.mark.parametrize("pruner", ["median", "percentile", "hyperband", "successive_halving", "wilcoxon", "none"])
@pytest.mark.parametrize("folds, epochs", [(2, 1), (5, 20)])
def test_every_pruner_with_the_defaults_passes_its_rehearsal(space_dict, pruner, folds, epochs):
    space = parse_space(space_dict(study={"pruner": pruner, "folds": folds, "epochs": epochs}), check_names=False)
    assert space.study.pruner == Component(pruner)


# --- sections, seed, warm-up, batch size ----------------------------------------------------------


@pytest.mark.parametrize("section, value", [("study", []), ("params", []), ("study", 0), ("params", ""),
                                            ("study", False)])
def test_a_section_that_is_not_a_mapping_is_refused_not_taken_as_the_defaults(write_space, space_dict, section,
                                                                              value):
    message = space_error(write_space, {**space_dict(), section: value})
    assert f": {section}: got {value!r}; expected a mapping of keys to values (for all the defaults, leave " \
           f"{section}: out or write {section}: {{}})" in message


def test_a_left_out_or_empty_section_holds_the_defaults(write_space):
    for text in ("params:\n  batch_size: 8\n", "study:\nparams:\n  batch_size: 8\n",
                 "study: {}\nparams:\n  batch_size: 8\n"):
        space = load_space(write_space(raw=text), check_names=False)
        assert space.study.name == "maskopt" and space.dims["batch_size"] == Constant(8)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**30])
def test_seed_out_of_range_is_refused_as_the_study_seed(write_space, space_dict, seed):
    message = space_error(write_space, space_dict(study={"seed": seed}))
    assert f"study.seed: got {seed}; expected a whole number from 0 to 4294967295 (2**32 - 1): it seeds the " \
           "sampler, the folds and training" in message
    assert "sampler accepts" not in message


def test_the_largest_seed_loads(write_space, space_dict):
    assert load_space(write_space(raw=space_dict(study={"seed": MAX_SEED}))).study.seed == 2**32 - 1


@pytest.mark.parametrize("warmup", [1e308, 4.5])
def test_warmup_longer_than_the_epochs_is_refused(write_space, space_dict, warmup):
    message = space_error(write_space, space_dict(study={"epochs": 4, "warmup_epochs": warmup}))
    assert f"study.warmup_epochs: got {warmup!r}; expected 0 to study.epochs (4): a longer warm-up would never " \
           "reach the peak learning rate" in message


def test_warmup_as_long_as_the_epochs_loads(write_space, space_dict):
    assert load_space(write_space(raw=space_dict(study={"epochs": 4, "warmup_epochs": 4}))).study.warmup_epochs == 4


@pytest.mark.parametrize("batch_size, where", [(1, "params.batch_size"), ([1, 16], "params.batch_size[0]"),
                                               ({"low": 1, "high": 16}, "params.batch_size.low")])
def test_batch_size_of_one_is_refused_with_the_reason(write_space, space_dict, batch_size, where):
    message = space_error(write_space, space_dict(params={"batch_size": batch_size}))
    assert f"{where}: got 1; expected a value in [2, 4096] (training batch size; at least 2, as BatchNorm " \
           "cannot train on one image)" in message


def test_batch_sizes_from_two_load(write_space, space_dict):
    space = load_space(write_space(raw=space_dict(params={"batch_size": [2, 16]})))
    assert space.dims["batch_size"] == Choice((2, 16))
    space = load_space(write_space(raw=space_dict(params={"batch_size": {"low": 2, "high": 16}})))
    assert space.dims["batch_size"] == Range(2, 16)


# --- keys given twice ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, first, again", [
    ("params:\n  lr: 0.1\n  loss: ce\n  lr: 0.2\n", "'lr'", 2, 4),
    ("study:\n  name: a\nparams: {}\nstudy:\n  name: b\n", "'study'", 1, 4),
    ("study:\n  sampler: {name: tpe, n_startup_trials: 3,\n            n_startup_trials: 5}\n", "'n_startup_trials'",
     2, 3),
    ("params: {loss: ce, loss: focal}\n", "'loss'", 1, 1),
])
def test_a_key_given_twice_is_refused_with_both_lines(write_space, text, key, first, again):
    message = space_error(write_space, text)
    assert message.endswith(f", line {again}: the key {key} is given twice in one mapping (first on line {first}); "
                            "YAML would keep only the last value: remove one of them")


def test_the_same_key_in_different_mappings_is_no_repeat(write_space):
    text = "study:\n  sampler: {name: tpe}\n  pruner: {name: median}\nparams:\n  sampler: uniform\n"
    space = load_space(write_space(raw=text), check_names=False)
    assert space.study.pruner == Component("median") and space.dims["sampler"] == Constant("uniform")


# --- the command line's copies of the library's bounds -------------------------------------------


def test_the_search_command_bounds_seed_and_worker_index_as_the_library_does():
    options = {p.name: p.type for p in search_command.search.params}
    assert (options["seed"].min, options["seed"].max) == (0, MAX_SEED)
    assert (options["worker_index"].min, options["worker_index"].max) == (0, MAX_WORKER_INDEX)
