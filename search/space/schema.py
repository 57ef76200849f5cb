"""Search spaces: a YAML file loaded once into frozen, validated objects.

A space file has two sections::

    study:                       # how the study runs
      name: demo
      folds: 3
      epochs: 4
      sampler: tpe               # or {name: tpe, n_startup_trials: 5}
      pruner: median             # or {name: hyperband, reduction_factor: 3}
    params:                      # what the study searches
      backbone: [resnet10t, mobilenetv3_small_050]   # a list: choices
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # a range (optional log, step)
      loss: ce                                        # a scalar: a constant

Every value is checked here, against the parameter's type and allowed values; nothing downstream
reads the raw YAML. An error names the file, the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm.optim
import yaml

from maskopt.errors import MaskoptError, SpaceError, shorten
from maskopt.search.data.dataset import LAYOUTS
from maskopt.search.data.labels import OFFICIAL_AGE_OLD
from maskopt.search.space.components import (
    MULTI_OBJECTIVE_SAMPLERS,
    OPTION_RANGES,
    PRUNERS,
    SAMPLERS,
    rehearse_pruner,
    rehearse_sampler,
)
from maskopt.search.train.losses import LOSSES
from maskopt.search.train.models import HEADS, check_backbone
from maskopt.search.train.params import TrainConfig, TrialParams
from maskopt.search.train.sampling import CLASS_SAMPLERS

# --- parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """What one searchable parameter may hold."""

    kind: type  # str, int or float
    default: Any
    doc: str
    choices: tuple | None = None  # the only values allowed, for str parameters
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    competition_only: bool = False


PARAMS: dict[str, ParamSpec] = {
    "backbone": ParamSpec(str, "resnet10t", "any timm model name"),
    "lr": ParamSpec(float, 1e-3, "peak learning rate", low=1e-8, high=10.0),
    "weight_decay": ParamSpec(float, 0.05, "decoupled weight decay", low=0.0, high=1.0),
    "batch_size": ParamSpec(int, 32, "training batch size; at least 2, as BatchNorm cannot train on one image",
                            low=2, high=4096),
    "freeze_depth": ParamSpec(int, 0, "leading backbone stages kept frozen (0 trains all)", low=0, high=16),
    "sampler": ParamSpec(str, "uniform", "training sampler", choices=tuple(CLASS_SAMPLERS)),
    "aug_strength": ParamSpec(float, 0.0, "augmentation strength (see search/train/augment.py)", low=0.0, high=1.0),
    "loss": ParamSpec(str, "ce", "training loss", choices=tuple(LOSSES)),
    "optimizer": ParamSpec(str, "adamw", "any timm optimizer name (adamw, sgd, lamb, ...)"),
    "image_size": ParamSpec(int, 64, "side of the square training images, pixels", low=16, high=1024),
    "age_old": ParamSpec(int, OFFICIAL_AGE_OLD, "age where the oldest band starts in training labels",
                         low=57, high=60, competition_only=True),
    "head": ParamSpec(str, "single", "one 18-way head, or three heads (mask, gender, age)",
                      choices=HEADS, competition_only=True),
}


@dataclass(frozen=True)
class Constant:
    value: Any


@dataclass(frozen=True)
class Choice:
    values: tuple


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None


Dimension = Constant | Choice | Range


# --- study settings -----------------------------------------------------------------------------

# numpy's and scikit-learn's random generators take seeds below 2**32.
MAX_SEED = 2**32 - 1
SEED_ALLOWED = f"a whole number from 0 to {MAX_SEED} (2**32 - 1): it seeds the sampler, the folds and training"
# Worker processes sharing one GPU: past a few they only queue for it, each holding its own copy of the images.
# What a study can optimise: macro F1 always (first), and optionally the CPU inference latency of
# the architecture at its image size (ms per image at batch 1, see search/train/latency.py).
OBJECTIVES = ("macro_f1", "latency")
MAX_WORKERS_PER_GPU = 16
WORKERS_PER_GPU_ALLOWED = f"a whole number from 1 to {MAX_WORKERS_PER_GPU}: the worker processes sharing each GPU"

@dataclass(frozen=True)
class Component:
    """A sampler or pruner: its name and the keyword options given to its constructor."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class StudySettings:
    name: str = "maskopt"
    data: str | None = None
    layout: str = "auto"
    folds: int = 5
    epochs: int = 10
    seed: int = 0
    sampler: Component = Component("tpe")
    pruner: Component = Component("median")
    pretrained: bool = False
    weights: str | None = None
    corrections: str | None = None
    exclude_broken: bool = False
    warmup_epochs: float = 1.0
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    workers_per_gpu: int = 1
    objectives: tuple[str, ...] = ("macro_f1",)
    max_latency_ms: float | None = None  # a trial whose latency at batch 1 exceeds it is infeasible

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def train_config(self, **changes) -> TrainConfig:
        """What training takes from these settings (``changes`` override, e.g. ``epochs``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**fields, **changes})


@dataclass(frozen=True)
class SearchSpace:
    """A validated space file: study settings plus one dimension per parameter."""

    study: StudySettings
    dims: dict[str, Dimension] = field(default_factory=dict)
    source: str = "<space>"

    def suggest(self, trial) -> TrialParams:
        """Ask ``trial`` for every searched parameter, in a fixed order, and fill in constants."""
        values = {}
        for name, dim in self.dims.items():
            spec = PARAMS[name]
            if isinstance(dim, Constant):
                values[name] = dim.value
            elif isinstance(dim, Choice):
                values[name] = trial.suggest_categorical(name, list(dim.values))
            elif spec.kind is int:
                values[name] = trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
            else:
                values[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
        return TrialParams(**values)

    def params_from(self, values: dict[str, Any]) -> TrialParams:
        """The ``TrialParams`` of a finished trial's parameters plus this space's constants."""
        merged = {n: d.value for n, d in self.dims.items() if isinstance(d, Constant)}
        merged.update({k: v for k, v in values.items() if k in PARAMS})
        return TrialParams(**merged)

    def for_layout(self, layout: str) -> tuple[SearchSpace, list[str]]:
        """The space to use on a dataset of ``layout``, with notes on what was fixed.

        Competition-only parameters (the age cut, three heads) are fixed to their neutral values
        on other layouts, so one space file serves any dataset.
        """
        if layout == "competition":
            return self, []
        dims, notes = dict(self.dims), []
        for name, spec in PARAMS.items():
            if spec.competition_only and dims[name] != Constant(spec.default):
                dims[name] = Constant(spec.default)
                notes.append(f"{name} is fixed to {spec.default!r}: it applies to the competition layout only")
        return dataclasses.replace(self, dims=dims), notes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, stored with the study so any machine can rebuild the space."""
        study = dataclasses.asdict(self.study)
        for key in ("sampler", "pruner"):
            component = getattr(self.study, key)
            study[key] = {"name": component.name, **component.kwargs()}
        study["objectives"] = list(self.study.objectives)
        return {"study": study, "params": {name: _dim_to_yaml(dim) for name, dim in self.dims.items()}}


def _dim_to_yaml(dim: Dimension):
    if isinstance(dim, Constant):
        return dim.value
    if isinstance(dim, Choice):
        return list(dim.values)
    out = {"low": dim.low, "high": dim.high}
    if dim.log:
        out["log"] = True
    if dim.step is not None:
        out["step"] = dim.step
    return out


# --- loading ------------------------------------------------------------------------------------


def load_space(path: str | Path, *, check_names: bool = True) -> SearchSpace:
    """Read and validate a space file.

    Args:
        path: The YAML file.
        check_names: Check backbone and optimizer names against timm's registries.

    Raises:
        SpaceError: The file is missing, not YAML, or invalid; the message names the file, key
            path, value and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpaceError(f"cannot read search space {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path} is not a UTF-8 text file ({e.reason} at byte {e.start}); "
                         "save it as UTF-8 YAML") from e
    try:
        raw = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        raise SpaceError(f"{path}, {e}") from e
    except yaml.YAMLError as e:
        raise SpaceError(f"{path} is not valid YAML: {shorten(str(e), 400)}") from e
    except ValueError as e:  # a constructor refused a scalar: a 5000-digit int, a date like 2024-13-45
        raise SpaceError(f"{path} holds a value YAML cannot read: {shorten(str(e), 200)}") from e
    except RecursionError as e:  # thousands of nested [[[...]]]: no space is that deep
        raise SpaceError(f"{path} nests lists or mappings too deeply to be a search space") from e
    return parse_space(raw, source=str(path), check_names=check_names)


class _NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses aliases (``*name``) and keys given twice in one mapping.

    Aliases let a few lines expand to billions of values ("billion laughs"), and every check and
    error message below walks the expanded values. A search space is short enough to write out,
    so refusing aliases costs nothing. Anchors alone (``&name``) are harmless and still load.
    A key given twice would silently lose its first value to the last.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: found the alias *{shorten(event.anchor)}; YAML "
                           "aliases (*name) and merge keys (<<: *name) are not supported in a search space "
                           "(a few lines of them can expand to billions of values): write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first_lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # a merge key (<<) is not a key of its own
                continue
            key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
            try:
                repeated = key in first_lines
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if repeated:
                raise _Refused(f"line {line}: the key {_shown(key)} is given twice in one mapping (first on line "
                               f"{first_lines[key]}); YAML would keep only the last value: remove one of them")
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


class _Refused(yaml.YAMLError):
    """Raised by ``_NoAliasLoader`` on the first alias or repeated key."""


# Every value shown in an error goes through _shown: a hostile or mistaken file may hold a huge
# value, and the message must stay readable (and cheap to build: reprlib stops early).
MAX_SHOWN = 80


class _Repr(reprlib.Repr):
    def repr_dict(self, x, level):
        # reprlib sorts keys; keep the file's order, as a plain repr (and the user's eye) does.
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in list(x.items())[:self.maxdict]]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother = MAX_SHOWN, MAX_SHOWN



def _shown(value) -> str:
    """A repr of ``value`` of at most ``MAX_SHOWN`` characters, for error messages."""
    return shorten(_REPR.repr(value))


def parse_space(raw: Any, *, source: str = "<space>", check_names: bool = True, stored: bool = False) -> SearchSpace:
    """Validate an already-parsed space (a dict with ``study`` and ``params``).

    ``stored``: a space read back from a study, which was checked in full when the study was made.
    Its names are not looked up in timm again and its sampler and pruner not rehearsed: a newer
    timm or Optuna must not lock an earlier study out of its report and export.
    """
    check_names = check_names and not stored
    v = _Validator(source)
    raw = v.mapping(raw, "", allowed=("study", "params"))
    study = _parse_study(v, _section(v, raw, "study"))
    params_raw = v.mapping(_section(v, raw, "params"), "params", allowed=tuple(PARAMS))
    dims = {name: _parse_dim(v, name, params_raw[name]) if name in params_raw else Constant(PARAMS[name].default)
            for name in PARAMS}
    if check_names:
        _check_registry_names(v, dims)
    space = SearchSpace(study=study, dims=dims, source=source)
    if not stored:
        _rehearse_components(v, space)
    return space


def _section(v: _Validator, raw: dict, key: str) -> dict:
    """A top-level section; left out or empty (``study:`` with nothing under it), it holds the defaults."""
    section = raw.get(key)
    if section is None:
        return {}
    if not isinstance(section, dict):
        v.fail(key, section, f"a mapping of keys to values (for all the defaults, leave {key}: out or write "
                             f"{key}: {{}})")
    return section


def _parse_study(v: _Validator, raw) -> StudySettings:
    fields = {f.name: f for f in dataclasses.fields(StudySettings)}
    raw = v.mapping(raw, "study", allowed=tuple(fields))
    defaults = StudySettings()
    values = {}
    for key, value in raw.items():
        where = f"study.{key}"
        default = getattr(defaults, key)
        if key in ("sampler", "pruner"):
            values[key] = _parse_component(v, where, value, tuple(SAMPLERS if key == "sampler" else PRUNERS), key)
        elif key in ("data", "weights", "corrections"):
            values[key] = None if value is None else v.typed(value, str, where)
        elif key == "layout":
            values[key] = v.one_of(value, LAYOUTS, where)
        elif key == "objectives":
            values[key] = _parse_objectives(v, value)
        elif key == "max_latency_ms":
            values[key] = None if value is None else v.typed(value, float, where)
        else:
            values[key] = v.typed(value, type(default), where)
    settings = dataclasses.replace(defaults, **values)
    if settings.folds < 2:
        v.fail("study.folds", settings.folds, "at least 2")
    if settings.epochs < 1:
        v.fail("study.epochs", settings.epochs, "at least 1")
    if not 0 <= settings.seed <= MAX_SEED:
        v.fail("study.seed", settings.seed, SEED_ALLOWED)
    if not 0 <= settings.warmup_epochs <= settings.epochs:
        v.fail("study.warmup_epochs", settings.warmup_epochs,
               f"0 to study.epochs ({settings.epochs}): a longer warm-up would never reach the peak learning rate")
    if not settings.name.strip():
        v.fail("study.name", settings.name, "a non-empty name")
    if settings.max_latency_ms is not None and settings.max_latency_ms <= 0:
        v.fail("study.max_latency_ms", settings.max_latency_ms, "milliseconds per image above 0")
    if settings.multi_objective and settings.pruner.name != "none":
        # Optuna's pruners compare one value per step; a trial with two objectives reports none.
        v.fail("study.pruner", settings.pruner.name, "none with several objectives (pruners compare one value; "
               "set pruner: none, or keep one objective and bound latency with study.max_latency_ms)")
    if settings.multi_objective and settings.sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
        v.fail("study.sampler", settings.sampler.name,
               f"a sampler for several objectives: {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
    if not 1 <= settings.workers_per_gpu <= MAX_WORKERS_PER_GPU:
        v.fail("study.workers_per_gpu", settings.workers_per_gpu, WORKERS_PER_GPU_ALLOWED)
    if settings.weights is not None and not settings.pretrained:
        # Weights are read only for a pretrained start: without it they would be silently ignored.
        v.fail("study.weights", settings.weights, "no weights unless study.pretrained is true (set pretrained: true "
               "to start from them, or remove weights)")
    return settings


def _parse_objectives(v: _Validator, value) -> tuple[str, ...]:
    where = "study.objectives"
    if not isinstance(value, list) or not value:
        v.fail(where, value, "a list of objectives, macro_f1 first: [macro_f1] or [macro_f1, latency]")
    names = tuple(v.one_of(name, OBJECTIVES, f"{where}[{i}]") for i, name in enumerate(value))
    if names[0] != "macro_f1" or len(set(names)) != len(names):
        v.fail(where, value, "macro_f1 first, each objective once: [macro_f1] or [macro_f1, latency]")
    return names


def check_seed(seed: int) -> int:
    """``seed`` if it can seed a study, else a SpaceError saying what is allowed (for a `seed` given
    outside the space file; the space's study.seed is checked when the space is read)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SpaceError(f"`seed`: got {_shown(seed)}; expected {SEED_ALLOWED}")
    return seed


def check_workers_per_gpu(value: int) -> int:
    """``value`` if it can be a `workers_per_gpu`, else a SpaceError saying what is allowed (for one
    given outside the space file; the space's study.workers_per_gpu is checked when the space is read)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS_PER_GPU:
        raise SpaceError(f"`workers_per_gpu`: got {_shown(value)}; expected {WORKERS_PER_GPU_ALLOWED}")
    return value


# A study's name is also its export folder's (exports/<name>): no separators, no "..", no hidden names.
STUDY_NAME_PATTERN = re.compile(r"[^\W][\w.-]{0,99}")


def check_study_name(name: str) -> str:
    """``name`` if it can name a folder under exports/, else a SpaceError saying what is allowed."""
    if not STUDY_NAME_PATTERN.fullmatch(name):
        raise SpaceError(
            f"study name {shorten(name)!r} cannot be used: it also names the export folder exports/<name>, so it "
            f"may hold only letters, digits, '_', '.' and '-', start with a letter or digit, and have at most 100 "
            f"characters. Give another `study` name or study.name in the space.")
    return name


def _rehearse_components(v: _Validator, space: SearchSpace) -> None:
    """Build the sampler and pruner and let each run a few trials of this space in memory (see
    ``rehearse_sampler``), so that options they refuse, when built or only when they first sample or
    prune, are reported here with the option's name, before any storage is touched."""
    for key in ("sampler", "pruner"):
        component = getattr(space.study, key)
        error = _rehearsal_error(space, key, component)
        if error is None:
            continue
        culprit = "these options together make it fail"
        for option, value in component.options:  # name the option that fails alone, if one does
            if _rehearsal_error(space, key, Component(component.name, ((option, value),))) is not None:
                culprit = f"with {option}: {_shown(value)} it fails"
                break
        v.fail(f"study.{key}", {"name": component.name, **component.kwargs()},
               f"options the {component.name} {key} accepts: {culprit} "
               f"({type(error).__name__}: {shorten(str(error), 200)})")


def _rehearsal_error(space: SearchSpace, key: str, component: Component) -> Exception | None:
    """What the rehearsal of ``component`` as the space's sampler or pruner (``key``) raised, if anything."""
    settings = space.study
    try:
        if key == "sampler":
            rehearse_sampler(component, seed=settings.seed, suggest=space.suggest)
        else:
            rehearse_pruner(dataclasses.replace(settings, pruner=component))
    except Exception as e:  # noqa: BLE001 - whatever Optuna raises, the space's options caused it
        return e
    return None


def _parse_component(v: _Validator, where: str, value, names: tuple[str, ...], kind: str) -> Component:
    if isinstance(value, str):
        name, options = value, {}
    else:
        options = dict(v.mapping(value, where))
        if "name" not in options:
            v.fail(where, value, f"a {kind} name, or a mapping with 'name' and its options")
        name = options.pop("name")
    name = v.one_of(name, names, where if isinstance(value, str) else f"{where}.name")
    accepted = _component_options(kind, name)
    for key, value in options.items():
        if key not in accepted:
            cannot = " (it takes a Python function or object, which a space file cannot give)" \
                if key in _component_parameters(kind, name) else ""
            v.fail(f"{where}.{key}", value,
                   f"an option of the {name} {kind}: {', '.join(accepted) or '(none)'}{cannot}")
        options[key] = _check_option(v, f"{where}.{key}", key, value, accepted[key], f"the {name} {kind}'s {key}")
    return Component(name, tuple(sorted(options.items())))


# What a space file can give, by the type names of a sampler's or pruner's option.
_PLAIN_KINDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _component_options(kind: str, name: str) -> dict[str, list[str]]:
    """The options of a sampler or pruner that a space file can give, with the type names each takes.

    Those declared as plain values only (numbers, true or false, strings, or None); options that
    take a function or an object (TPE's gamma and weights, constraints_func, x0) are left out.
    """
    options = {}
    for option, parameter in _component_parameters(kind, name).items():
        annotation = parameter.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        types = [t.strip() for t in text.split("|")]
        plain = [t for t in types if t != "None"]
        if plain and set(plain) <= set(_PLAIN_KINDS):
            options[option] = types
    return options


def _component_parameters(kind: str, name: str) -> dict[str, inspect.Parameter]:
    """Every keyword a sampler's or pruner's constructor takes (the seed is the study's, set elsewhere)."""
    cls = (SAMPLERS if kind == "sampler" else PRUNERS)[name]
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items() if n not in ("self", "seed", "args", "kwargs")}


def _check_option(v: _Validator, where: str, option: str, value, types: list[str], what: str):
    """``value`` if it is of one of ``types`` and in the option's ``OPTION_RANGES``; YAML's 1e-3 is a number."""
    if value is None and "None" in types:
        return value
    if "float" in types and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not any(_is_kind(value, t) for t in types):
        v.fail(where, value, f"{' or '.join(_PLAIN_KINDS[t] for t in types if t != 'None')} ({what})")
    low, high = OPTION_RANGES.get(option, (None, None))
    if low is not None and _is_kind(value, "int") and not (low <= value and (high is None or value <= high)):
        v.fail(where, value, (f"a whole number from {low} to {high}" if high else f"a whole number of at least {low}")
               + f" ({what})")
    return value


def _is_kind(value, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return _is_kind(value, "int") or isinstance(value, float) and math.isfinite(value)
    return isinstance(value, str)


def _parse_dim(v: _Validator, name: str, raw) -> Dimension:
    spec = PARAMS[name]
    where = f"params.{name}"
    if isinstance(raw, list) or (isinstance(raw, dict) and "choices" in raw):
        values = raw if isinstance(raw, list) else v.mapping(raw, where, allowed=("choices",))["choices"]
        if not isinstance(values, list) or not values:
            v.fail(where, raw, "a non-empty list of choices")
        checked = tuple(_check_value(v, spec, item, f"{where}[{i}]") for i, item in enumerate(values))
        if len(set(checked)) != len(checked):
            v.fail(where, values, "choices without repeats")
        return Choice(checked)
    if isinstance(raw, dict):
        if spec.kind is str:
            v.fail(where, raw, f"a value or a list of choices ({spec.doc})")
        raw = v.mapping(raw, where, allowed=("low", "high", "log", "step"))
        for key in ("low", "high"):
            if key not in raw:
                v.fail(where, raw, "a range with both 'low' and 'high'")
        low = _check_value(v, spec, raw["low"], f"{where}.low")
        high = _check_value(v, spec, raw["high"], f"{where}.high")
        log = v.typed(raw.get("log", False), bool, f"{where}.log")
        step = None if raw.get("step") is None else v.typed(raw["step"], spec.kind, f"{where}.step")
        if low > high:
            v.fail(where, raw, f"low <= high, but got low={low}, high={high}")
        if log and low <= 0:
            v.fail(f"{where}.low", low, "a value > 0 with log: true")
        if log and step is not None:
            v.fail(where, raw, "either log or step, not both")
        if step is not None and step <= 0:
            v.fail(f"{where}.step", step, "a positive step")
        return Range(low, high, log, step)
    return Constant(_check_value(v, spec, raw, where))


def _check_value(v: _Validator, spec: ParamSpec, value, where: str):
    value = v.typed(value, spec.kind, where)
    if spec.choices is not None and value not in spec.choices:
        v.one_of(value, spec.choices, where)
    if spec.low is not None and not spec.low <= value <= spec.high:
        v.fail(where, value, f"a value in [{spec.low}, {spec.high}] ({spec.doc})")
    return value


def _check_registry_names(v: _Validator, dims: dict[str, Dimension]) -> None:
    """Backbone and optimizer names must be ones timm knows."""
    for value in discrete_values(dims["backbone"]):
        if len(value) > 200:  # no timm name is this long; skip the slow closest-name search
            v.fail("params.backbone", value, "a timm backbone name")
        try:
            check_backbone(value)
        except MaskoptError as e:
            v.fail("params.backbone", value, f"a timm backbone name ({shorten(str(e), 200)})")
    optimizers = timm.optim.list_optimizers()
    for value in discrete_values(dims["optimizer"]):
        if value not in optimizers:
            close = difflib.get_close_matches(value, optimizers, n=5, cutoff=0.6) if len(value) <= 200 else []
            v.fail("params.optimizer", value, f"a timm optimizer name ({'closest: ' + ', '.join(close) if close else 'see timm.optim.list_optimizers()'})")


def discrete_values(dim: Dimension) -> tuple:
    """The values a constant or a choice can take; empty for a range."""
    if isinstance(dim, Constant):
        return (dim.value,)
    return dim.values if isinstance(dim, Choice) else ()


class _Validator:
    """Checks raw YAML values and raises ``SpaceError`` naming file, key path and value."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, value, allowed: str):
        raise SpaceError(f"{self.source}: {where or '(top level)'}: got {_shown(value)}; expected {allowed}")

    def mapping(self, value, where: str, allowed: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            self.fail(where, value, "a mapping of keys to values")
        for key in value:
            if allowed is not None and key not in allowed:
                key = shorten(str(key))  # shown in the message; a key may be any length
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                path = f"{where}.{key}" if where else key
                raise SpaceError(
                    f"{self.source}: {path}: unknown key{hint}; allowed keys here: {', '.join(allowed)}"
                )
        return value

    def typed(self, value, kind: type, where: str):
        if kind is float:
            # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as the number it plainly is.
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    self.fail(where, value, "a number")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.fail(where, value, "a finite number")
            return float(value)
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(where, value, "a whole number")
            return value
        if kind is bool:
            if not isinstance(value, bool):
                self.fail(where, value, "true or false")
            return value
        if not isinstance(value, kind):
            self.fail(where, value, f"a {kind.__name__}")
        return value

    def one_of(self, value, allowed: tuple, where: str):
        if value not in allowed:
            close = difflib.get_close_matches(value[:MAX_SHOWN] if isinstance(value, str) else _shown(value),
                                              [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(where, value, f"one of {', '.join(map(str, allowed))}{hint}")
        return value
