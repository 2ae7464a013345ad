"""YAML space file -> validated, frozen ``SearchSpace``.

Everything a user can get wrong in a space file is caught here, once, with one message naming the
file, the key path and what was expected (``cells.yaml: space.strategy.sparse_topk.k_fraction:
expected [low, high] with 0 < low < high <= 1, got [0.5, 0.1]``). Unknown keys are errors with the
nearest valid name, so a typo never silently drops a setting. The sections and their defaults are
documented in README.md ("The space file").
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from cellsparse.executor_info import declared_executors, executor_info
from cellsparse.objective_info import constraint_keys, declared_objectives, objective_info
from search_space.errors import SpecError
from search_space.k_rules import K_RULE_PARAMS
from search_space.params import Param, ParamFormError, check_against, parse_param
from search_space.resolution import INPUT_PARAMS, INPUT_SIZE_KEY, MAX_INPUT_SIZE, input_size_problem
from search_space.strategies import ParamSpec, get_strategy, strategy_names

#: How a space file may spell a direction, and the direction each spelling means.
DIRECTION_SPELLINGS = {"maximize": "maximize", "max": "maximize", "minimize": "minimize", "min": "minimize"}
SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")
SOURCES = ("synthetic", "npz", "folder")
MODALITIES = ("brightfield", "opd", "event")  # synthetic; real data also takes rgb | gray as a check
REAL_MODALITIES = ("brightfield", "rgb", "gray")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: ``training.precision``: fp32, or bf16 autocast of the training forward and loss. It applies only
#: to trials that run on a CUDA device with native bf16; elsewhere a trial trains in fp32, and its
#: metrics.json says which precision it trained in (``runner.engine.trial.effective_precision``).
PRECISIONS = ("fp32", "bf16")

#: Training settings every trial reads; any of them may be a searched parameter.
TRAINING_PARAMS: dict[str, ParamSpec] = {
    "epochs": ParamSpec("int", low=1, high=1000, doc="passes over the training split"),
    "batch_size": ParamSpec("int", low=1, high=4096, doc="images per optimiser step"),
    "lr": ParamSpec("float", low=0, high=1, low_open=True, doc="AdamW peak learning rate"),
    "weight_decay": ParamSpec("float", low=0, high=1, doc="AdamW decoupled weight decay"),
    "warmup_epochs": ParamSpec("float", low=0, high=100, doc="linear warm-up before the cosine decay"),
    "label_smoothing": ParamSpec("float", low=0, high=1, high_open=True, doc="cross-entropy label smoothing"),
    "precision": ParamSpec("choice", choices=PRECISIONS, doc="training forward/loss precision (bf16 on CUDA only)"),
}
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 6,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.0,
    "precision": "fp32",
}

_SECTIONS = ("name", "seed", "data", "objectives", "constraints", "training", "search", "deploy", "space")
_REQUIRED = ("objectives", "space")
MIN_IMAGE_SIZE = 16  # the smallest data.image_size a space accepts
_DATA_KEYS = ("source", "path", "modality", "image_size", "train", "val", "test", "difficulty", "augment", "class_names",
              "layout", "target_size", "distractors", "cue_scale")
LAYOUTS = ("cell", "field")  # synthetic: one cell filling part of the frame, or a small cell in a large field
_FIELD_DEFAULTS = {"image_size": 256, "target_size": 32, "cue_scale": 1.0}  # runner.data.fields' defaults
_SEARCH_KEYS = ("trials", "sampler", "backend", "max_concurrent", "resources", "reference_point", "timeout_s",
                "early_stopping")
EARLY_STOPPING_RULES = ("none", "asha", "moasha")
#: ``deploy.runtime``: what the ``throughput`` objective times a trial's model on (``runner.engine.deploy``):
#: the ``torch.export`` program as a .pt2 file runs it (compiled on CUDA), the ONNX file in onnxruntime,
#: or the eager module.
DEPLOY_RUNTIMES = ("pt2", "onnxruntime", "eager")
_DEPLOY_KEYS = ("runtime", "batch_size", "threads", "calibrate")
MAX_DEPLOY_BATCH = 4096
MAX_DEPLOY_THREADS = 256


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from and how they are shaped."""

    source: str = "synthetic"
    path: str | None = None
    modality: str = "brightfield"
    # The side images are resized to. None (npz and folder data whose file leaves it out) means the
    # images' own size, which the runner reads from the data (``SearchSpace.with_image_size``).
    image_size: int | None = 32
    train: int | None = 2000
    val: int | None = 500
    test: int | None = 500
    difficulty: float = 0.5
    augment: bool = True
    class_names: tuple[str, ...] | None = None
    layout: str = "cell"
    target_size: int | None = None
    distractors: int | None = None
    cue_scale: float | None = None

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``runner.data.load_dataset`` (all but ``seed``). The layout keys only
        when set, so runs from before they existed resolve to the same space.yaml (``--resume`` compares)."""
        layout = {key: getattr(self, key) for key in ("layout", "target_size", "distractors", "cue_scale")
                  if getattr(self, key) != getattr(DataSpec, key)}
        return {
            "source": self.source,
            "path": self.path,
            "modality": self.modality,
            "image_size": self.image_size,
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "difficulty": self.difficulty,
            "class_names": list(self.class_names) if self.class_names else None,
            **layout,
        }


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    direction: str  # "maximize" | "minimize"


@dataclass(frozen=True)
class Constraints:
    """Upper bounds on cost objectives, checked on each config before it trains: objective -> limit."""

    limits: Mapping[str, float] = field(default_factory=dict)

    def limit(self, objective: str) -> float | None:
        """The bound on ``objective``, or None when the space sets none."""
        return self.limits.get(objective)

    def to_yaml(self) -> dict[str, float]:
        """The constraints section as written: {'max_flops': 2e7, ...} (set bounds only)."""
        return {objective_info(name).constraint_key: value for name, value in self.limits.items()}


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """``search.early_stopping``: successive halving on the objectives after each rung epoch
    (``runner.engine.early_stopping`` says how a rung decides). ``none`` trains every trial to the end."""

    name: str = "none"
    grace_epochs: int = 1
    reduction_factor: float = 3.0
    min_trials: int | None = None  # None: ceil(reduction_factor)

    def to_yaml(self) -> str | dict[str, Any]:
        if self.name == "none":
            return "none"
        form: dict[str, Any] = {"name": self.name, "grace_epochs": self.grace_epochs, "reduction_factor": self.reduction_factor}
        if self.min_trials is not None:
            form["min_trials"] = self.min_trials
        return form


@dataclass(frozen=True)
class SearchSettings:
    trials: int = 20
    sampler: str = "tpe"
    sampler_seed: int | None = None
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "ray"
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    reference_point: Mapping[str, float] | None = None
    timeout_s: float | None = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass(frozen=True)
class DeploySpec:
    """``deploy``: where the chosen model will run, as the ``throughput`` objective times it: the
    runtime, the images per call and the intra-op threads (the CPU's; on CUDA the device's own)."""

    runtime: str = "pt2"
    batch_size: int = 64
    threads: int = 1  # a per-core figure, as export's timings: it holds on a machine other work shares
    calibrate: bool = False  # time a fixed reference beside each model and report the ratio (README, "Throughput")

    def to_yaml(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "batch_size": self.batch_size, "threads": self.threads,
                "calibrate": self.calibrate}


@dataclass(frozen=True)
class StrategySpace:
    """The searched and fixed parameters of one strategy (shared values already merged in)."""

    name: str
    params: Mapping[str, Param]
    own: tuple[str, ...] = ()  # keys set in the strategy's own block (they override shared ones)


@dataclass(frozen=True)
class ModelSpace:
    strategies: tuple[StrategySpace, ...]
    shared: Mapping[str, Param]

    @property
    def strategy_names(self) -> list[str]:
        return [s.name for s in self.strategies]


@dataclass(frozen=True)
class SearchSpace:
    """A validated space file. Build with :func:`load_space`; never mutate (use ``with_overrides``)."""

    name: str
    seed: int
    path: Path
    data: DataSpec
    objectives: tuple[ObjectiveSpec, ...]
    constraints: Constraints
    training: Mapping[str, Param]
    search: SearchSettings
    model: ModelSpace
    deploy: DeploySpec = field(default_factory=DeploySpec)

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def with_overrides(
        self,
        *,
        trials: int | None = None,
        backend: str | None = None,
        seed: int | None = None,
        max_concurrent: int | None = None,
        cpus_per_trial: float | None = None,
        gpus_per_trial: float | None = None,
    ) -> SearchSpace:
        """A copy with command-line overrides applied (``None`` keeps the file's value).

        A new ``seed`` also reseeds the sampler, so one flag fixes the whole run.
        """
        changes: dict[str, Any] = {}
        for key, value in {
            "trials": trials,
            "backend": backend,
            "max_concurrent": max_concurrent,
            "cpus_per_trial": cpus_per_trial,
            "gpus_per_trial": gpus_per_trial,
        }.items():
            if value is not None:
                changes[key] = value
        if seed is not None:
            changes["sampler_seed"] = seed
        search = replace(self.search, **changes)
        _check_search_settings(search, str(self.path))
        return replace(self, search=search, seed=self.seed if seed is None else seed)

    def with_image_size(self, size: int) -> SearchSpace:
        """A copy whose ``data.image_size`` is ``size``: how the runner fills in the images' own size
        where the space file leaves it out (npz and folder data). The size and every ``input_size``
        are checked against it as the file's own value would have been."""
        where = _Where(str(self.path))
        _check_image_size(where, int(size), found=f"but the images in {self.data.path} are")
        for strategy in self.model.strategies:
            for key, param in strategy.params.items():
                path = f"space.strategy.{strategy.name}.{key}" if key in strategy.own else f"space.shared.{key}"
                _check_input_size(where, path, key, param, int(size))
        return replace(self, data=replace(self.data, image_size=int(size)))

    def with_absolute_data_path(self) -> SearchSpace:
        """A copy whose relative ``data.path`` is made absolute (from the working directory it was
        given in), so the stored space.yaml and every Ray worker still find the data elsewhere."""
        if self.data.path and not os.path.isabs(self.data.path):
            return replace(self, data=replace(self.data, path=os.path.abspath(self.data.path)))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain data; ``load_space`` of its YAML gives an equal space."""
        data = {k: v for k, v in self.data.loader_kwargs().items()}
        data["augment"] = self.data.augment
        strategies: dict[str, Any] = {}
        for strategy in self.model.strategies:
            strategies[strategy.name] = {k: strategy.params[k].to_yaml() for k in strategy.own}
        search = self.search
        return {
            "name": self.name,
            "seed": self.seed,
            "data": data,
            "objectives": {o.name: o.direction for o in self.objectives},
            "constraints": self.constraints.to_yaml(),
            "training": {k: p.to_yaml() for k, p in self.training.items() if not _unwritten_default(k, p)},
            "search": {
                "trials": search.trials,
                "sampler": {"name": search.sampler, "seed": search.sampler_seed, "options": dict(search.sampler_options)},
                "backend": search.backend,
                "max_concurrent": search.max_concurrent,
                "resources": {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial},
                "reference_point": dict(search.reference_point) if search.reference_point else None,
                "timeout_s": search.timeout_s,
                # written only when on, so the space.yaml of runs made before the key stays as it was
                **({"early_stopping": search.early_stopping.to_yaml()} if search.early_stopping.name != "none" else {}),
            },
            # written only when set, so the space.yaml of runs made before the section stays as it was
            **({"deploy": self.deploy.to_yaml()} if self.deploy != DeploySpec() else {}),
            "space": {
                "shared": {k: p.to_yaml() for k, p in self.model.shared.items()},
                "strategy": strategies,
            },
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: Training keys written into the resolved space only when set to something other than their default,
#: so the space.yaml of runs made before the key existed still matches (``--resume`` compares them).
_WRITTEN_WHEN_SET = ("precision",)


def _unwritten_default(key: str, param: Param) -> bool:
    return key in _WRITTEN_WHEN_SET and param.kind == "fixed" and param.value == TRAINING_DEFAULTS[key]


# ---------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 reads `2.0e7` (no sign in the exponent) as a string; read it as the float users mean.
_StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Where:
    """Builds messages 'file: key.path: problem'."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key_path: str, problem: str) -> SpecError:
        return SpecError(f"{self.file}: {key_path}: {problem}" if key_path else f"{self.file}: {problem}")


def _nearest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid: {', '.join(valid)}"


def _check_keys(where: _Where, path: str, mapping: Mapping[str, Any], valid: list[str] | tuple[str, ...]) -> None:
    for key in mapping:
        if key not in valid:
            label = f"{path}.{key}" if path else str(key)
            raise where.fail(label, f"unknown key {key!r}{_nearest(key, list(valid))}")


def _mapping(where: _Where, path: str, value: Any, *, allow_none: bool = True) -> dict[str, Any]:
    if value is None and allow_none:
        return {}
    if not isinstance(value, dict):
        raise where.fail(path, f"expected a mapping of keys to values, got {type(value).__name__} {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise where.fail(path, f"expected string keys, got {key!r}")
    return value


def _finite(value: int | float) -> bool:
    return isinstance(value, int) or math.isfinite(value)  # an int is finite (and may be too big for a float)


def _number(where: _Where, path: str, value: Any, *, integer: bool = False, low: float | None = None,
            allow_none: bool = False, low_open: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if ok and integer:
        ok = isinstance(value, int) or float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = f" {'>' if low_open else '>='} {low:g}" if low is not None else ""
        raise where.fail(path, f"expected {kind}{bound}{' or null' if allow_none else ''}, got {value!r}")
    return int(value) if integer else float(value)


def _choice(where: _Where, path: str, value: Any, valid: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in valid:
        hint = _nearest(value, list(valid)) if isinstance(value, str) else f"; valid: {', '.join(valid)}"
        raise where.fail(path, f"unknown {what} {value!r}{hint}")
    return value


def _param(where: _Where, path: str, raw: Any, spec: ParamSpec) -> Param:
    try:
        param = parse_param(raw, spec)
    except ParamFormError as err:
        raise where.fail(path, str(err)) from None
    problem = check_against(param, spec)
    if problem:
        raise where.fail(path, problem)
    return param


# Limits on a space file (a real one is a few kilobytes, a dozen levels deep, a few hundred values):
# far above any real space, far below what would exhaust memory, the stack or the user's patience.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 100_000  # scalars and collections, with every alias counted as the values it stands for


def _check_limits(where: _Where, text: str) -> None:
    """SpecError when the YAML is nested too deep, or expands (aliases included) to too many values.

    Runs over the parser's events, which needs neither recursion nor the expanded document, so a
    deeply nested file or an alias bomb is refused in milliseconds, before anything is built."""
    stack: list[tuple[str | None, int]] = []  # per open collection: its anchor, the values it holds so far
    anchors: dict[str, int] = {}
    total = 0
    for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise where.fail("", f"nested more than {MAX_DEPTH} levels deep (line {event.start_mark.line + 1}); "
                                 "a space file needs a handful")
            stack.append((event.anchor, 1))
            size = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, held = stack.pop()
            if anchor is not None:
                anchors[anchor] = held
            if stack:
                stack[-1] = (stack[-1][0], stack[-1][1] + held)
            continue
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in stack):
                raise where.fail("", f"alias *{event.anchor} (line {event.start_mark.line + 1}) refers to a "
                                 "collection that contains it; recursive structures are not allowed")
            size = anchors.get(event.anchor, 1)  # an undefined alias is reported by the loader
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                anchors[event.anchor] = 1
        else:
            continue
        total += size
        if stack and not isinstance(event, yaml.CollectionStartEvent):
            stack[-1] = (stack[-1][0], stack[-1][1] + size)
        if total > MAX_VALUES:
            raise where.fail("", f"expands to more than {MAX_VALUES:,} values (aliases counted in full; line "
                             f"{event.start_mark.line + 1}); a space file needs a few hundred")


def _read_text(where: _Where, path: Path) -> str:
    """The file's text, reading at most MAX_FILE_BYTES + 1 bytes (a device or pipe may never end)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise where.fail("", f"cannot be read ({err.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise where.fail("", f"larger than {MAX_FILE_BYTES // 1024} KiB; a space file is a few kilobytes of YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise where.fail("", "not a text file; expected a YAML space file") from None


def _read_yaml(path: Path) -> Any:
    where = _Where(str(path))
    if not path.exists():
        raise SpecError(f"{path}: no such space file")
    if path.is_dir():
        raise SpecError(f"{path}: is a directory, expected a YAML space file")
    text = _read_text(where, path)
    try:
        _check_limits(where, text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as err:
        mark = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        if "duplicate key" in str(err.problem):
            raise where.fail("", f"{err.problem}{mark}") from None
        raise where.fail("", f"tags that construct Python objects are not allowed{mark}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where_text = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise where.fail("", f"not valid YAML{where_text}: {problem}") from None
    except ValueError as err:  # a value the constructors cannot convert (an integer of over 4300 digits)
        raise where.fail("", f"a value cannot be read: {str(err).split(';')[0]}") from None


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Read and validate a space file; raise ``SpecError`` naming the file and key on any mistake."""
    path = Path(path)
    raw = _read_yaml(path)
    return parse_space(raw, source=path)


def parse_space(raw: Any, *, source: Path) -> SearchSpace:
    """Validate already-parsed YAML data (``source`` is used in messages and kept as ``path``)."""
    where = _Where(str(source))
    if raw is None:
        raise where.fail("", "the file is empty; expected a mapping with at least 'objectives' and 'space'")
    if not isinstance(raw, dict):
        raise where.fail("", f"expected a mapping of sections at the top level, got {type(raw).__name__}")
    _check_keys(where, "", raw, _SECTIONS)
    for section in _REQUIRED:
        if section not in raw:
            raise where.fail(section, "missing section (required)")

    name = raw.get("name", source.stem)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise where.fail("name", f"expected 1-64 letters, digits, '_', '.' or '-' (it names the run directory), got {name!r}")
    seed = _number(where, "seed", raw.get("seed", 0), integer=True, low=0)
    if seed >= 2**32:
        raise where.fail("seed", f"expected an integer from 0 to 2**32 - 1 (numpy's seed range), got {seed}")

    data = _parse_data(where, _mapping(where, "data", raw.get("data")))
    objectives = _parse_objectives(where, raw.get("objectives"))
    constraints = _parse_constraints(where, _mapping(where, "constraints", raw.get("constraints")))
    training = _parse_training(where, _mapping(where, "training", raw.get("training")))
    search = _parse_search(where, _mapping(where, "search", raw.get("search")), objectives, seed)
    model = _parse_model(where, _mapping(where, "space", raw.get("space"), allow_none=False), data.image_size)
    deploy = _parse_deploy(where, _mapping(where, "deploy", raw.get("deploy")))
    return SearchSpace(name, seed, source, data, objectives, constraints, training, search, model, deploy)


def accepted_keys(strategy: str) -> dict[str, ParamSpec]:
    """Every key a strategy's block (or ``space.shared`` on its behalf) may set: its own parameters,
    the k-rule keys where it has a k, and ``input_size``."""
    info = get_strategy(strategy)
    return {**info.params, **(K_RULE_PARAMS if info.uses_k_rule else {}), **INPUT_PARAMS}


def _parse_data(where: _Where, raw: dict[str, Any]) -> DataSpec:
    _check_keys(where, "data", raw, _DATA_KEYS)
    source = _choice(where, "data.source", raw.get("source", "synthetic"), SOURCES, "data source")
    path = raw.get("path")
    if source == "synthetic":
        if path is not None:
            raise where.fail("data.path", "a synthetic source takes no path; set source: npz or folder to read files")
    else:
        if not isinstance(path, str) or not path.strip():
            raise where.fail("data.path", f"expected a file or folder path for source {source!r}, got {path!r}")
        path = _expand_path(where, path)
    modalities = MODALITIES if source == "synthetic" else REAL_MODALITIES
    modality = _choice(where, "data.modality", raw.get("modality", "brightfield"), modalities, f"modality for {source} data")
    image_size = raw.get("image_size")
    if image_size is None and source == "synthetic":
        image_size = _FIELD_DEFAULTS["image_size"] if raw.get("layout") == "field" else DataSpec.image_size
    if image_size is not None:
        image_size = _check_image_size(where, _number(where, "data.image_size", image_size, integer=True, low=MIN_IMAGE_SIZE))
    layout = _parse_layout(where, raw, source, modality, image_size)
    sizes: dict[str, int | None] = {}
    defaults = DataSpec()
    for split in ("train", "val", "test"):
        value = raw.get(split, getattr(defaults, split) if source == "synthetic" else None)
        sizes[split] = _number(where, f"data.{split}", value, integer=True, low=1, allow_none=source != "synthetic")
    difficulty = _number(where, "data.difficulty", raw.get("difficulty", 0.5), low=0)
    if difficulty > 1:
        raise where.fail("data.difficulty", f"expected a number from 0 to 1, got {difficulty}")
    augment = raw.get("augment", True)
    if not isinstance(augment, bool):
        raise where.fail("data.augment", f"expected true or false, got {augment!r}")
    class_names = raw.get("class_names")
    if class_names is not None:
        if not isinstance(class_names, list) or not class_names or not all(isinstance(c, str) for c in class_names):
            raise where.fail("data.class_names", f"expected a non-empty list of strings, got {class_names!r}")
        class_names = tuple(class_names)
    return DataSpec(source, path, modality, image_size, sizes["train"], sizes["val"], sizes["test"],
                    difficulty, augment, class_names, **layout)


def _parse_layout(where: _Where, raw: dict[str, Any], source: str, modality: str, image_size: int | None
                  ) -> dict[str, Any]:
    """``layout`` and its keys (synthetic data only): ``field`` puts a ``target_size``-px cell among
    ``distractors`` red cells in a frame of 64-512 px; ``cue_scale`` fixes texture widths in pixels."""
    keys = ("layout", "target_size", "distractors", "cue_scale")
    if source != "synthetic":
        for key in keys:
            if key in raw:
                raise where.fail(f"data.{key}", f"only synthetic data takes {key}; {source} images are what they are")
        return {}
    layout = _choice(where, "data.layout", raw.get("layout", "cell"), LAYOUTS, "layout")
    cue_scale = raw.get("cue_scale", _FIELD_DEFAULTS["cue_scale"] if layout == "field" else None)
    if cue_scale is not None:
        cue_scale = float(_number(where, "data.cue_scale", cue_scale, low=0.25))
        if cue_scale > 8:
            raise where.fail("data.cue_scale", f"expected a number from 0.25 to 8 (pixels per 32-px texture unit), "
                                               f"got {cue_scale}")
    if layout == "cell":
        for key in ("target_size", "distractors"):
            if key in raw:
                raise where.fail(f"data.{key}", f"only layout: field takes {key}; set data.layout: field")
        return {"cue_scale": cue_scale}
    if modality != "brightfield":
        raise where.fail("data.modality", f"layout: field is rendered in brightfield only, got {modality!r}")
    if image_size < 64:
        raise where.fail("data.image_size", f"layout: field needs frames of 64 to {MAX_INPUT_SIZE} px, got {image_size}")
    target = _number(where, "data.target_size", raw.get("target_size", _FIELD_DEFAULTS["target_size"]), integer=True, low=8)
    if target > image_size // 2:
        raise where.fail("data.target_size", f"expected at most half the frame ({image_size // 2} px), got {target}")
    distractors = raw.get("distractors")
    if distractors is not None:
        distractors = _number(where, "data.distractors", distractors, integer=True, low=0)
        if distractors > 1000:
            raise where.fail("data.distractors", f"expected at most 1000 red cells per frame, got {distractors}")
    return {"layout": layout, "target_size": int(target), "distractors": distractors, "cue_scale": cue_scale}


def _check_image_size(where: _Where, size: int, found: str = "got") -> int:
    if not MIN_IMAGE_SIZE <= size <= MAX_INPUT_SIZE:
        raise where.fail("data.image_size", f"expected an integer from {MIN_IMAGE_SIZE} to {MAX_INPUT_SIZE}, {found} "
                         f"{size}" + ("; set data.image_size to resize the images" if found != "got" else ""))
    return size


_ENV_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def _expand_path(where: _Where, path: str) -> str:
    """Expand ``~``, ``$VAR``, ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        value = os.environ.get(name)
        if value:
            return value
        if match.group(2) is not None:
            return match.group(2)
        raise where.fail("data.path", f"environment variable ${name} in {path!r} is not set (or write ${{{name}:-default}})")

    return os.path.expanduser(_ENV_VAR.sub(substitute, path))


def _objective_names() -> list[str]:
    return declared_objectives()


def _objective_direction(name: str) -> str:
    return objective_info(name).direction


def _parse_objectives(where: _Where, raw: Any) -> tuple[ObjectiveSpec, ...]:
    if isinstance(raw, list):
        raise where.fail("objectives", "expected a mapping of objective to direction, e.g. {accuracy: maximize, flops: minimize}")
    raw = _mapping(where, "objectives", raw, allow_none=False)
    valid = _objective_names()
    result = []
    for name, direction in raw.items():
        if name not in valid:
            raise where.fail(f"objectives.{name}", f"unknown objective {name!r}{_nearest(name, valid)}")
        if direction not in DIRECTION_SPELLINGS:
            raise where.fail(f"objectives.{name}", f"expected maximize or minimize, got {direction!r}")
        natural = _objective_direction(name)
        if DIRECTION_SPELLINGS[direction] != natural:
            raise where.fail(f"objectives.{name}", f"{name} is to be {natural[:-1]}ed (better that way); "
                             f"{direction!r} would search for the worst models; write {natural}")
        result.append(ObjectiveSpec(name, DIRECTION_SPELLINGS[direction]))
    if len(result) < 2:
        raise where.fail("objectives", f"expected at least two objectives (e.g. accuracy and flops), got {len(result)}")
    if "accuracy" not in raw:
        raise where.fail("objectives", "expected 'accuracy' among the objectives")
    return tuple(result)


def _parse_constraints(where: _Where, raw: dict[str, Any]) -> Constraints:
    keys = constraint_keys()
    _check_keys(where, "constraints", raw, list(keys))
    limits = {}
    for key, value in raw.items():
        limit = _number(where, f"constraints.{key}", value, low=0, low_open=True, allow_none=True)
        if limit is not None:
            limits[keys[key]] = limit
    return Constraints(limits)


def _parse_deploy(where: _Where, raw: dict[str, Any]) -> DeploySpec:
    _check_keys(where, "deploy", raw, _DEPLOY_KEYS)
    default = DeploySpec()
    runtime = _choice(where, "deploy.runtime", raw.get("runtime", default.runtime), DEPLOY_RUNTIMES, "runtime")
    batch = _number(where, "deploy.batch_size", raw.get("batch_size", default.batch_size), integer=True, low=1)
    if batch > MAX_DEPLOY_BATCH:
        raise where.fail("deploy.batch_size", f"expected an integer from 1 to {MAX_DEPLOY_BATCH}, got {batch}")
    threads = _number(where, "deploy.threads", raw.get("threads", default.threads), integer=True, low=1)
    if threads > MAX_DEPLOY_THREADS:
        raise where.fail("deploy.threads", f"expected an integer from 1 to {MAX_DEPLOY_THREADS}, got {threads}")
    calibrate = raw.get("calibrate", default.calibrate)
    if not isinstance(calibrate, bool):
        raise where.fail("deploy.calibrate", f"expected true or false, got {calibrate!r}")
    return DeploySpec(runtime, int(batch), int(threads), calibrate)


def _parse_training(where: _Where, raw: dict[str, Any]) -> dict[str, Param]:
    _check_keys(where, "training", raw, list(TRAINING_PARAMS))
    merged = {**TRAINING_DEFAULTS, **raw}
    return {k: _param(where, f"training.{k}", v, TRAINING_PARAMS[k]) for k, v in merged.items()}


def _sampler_option_names(sampler: str) -> list[str]:
    cls = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }[sampler]
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "seed")]


def _parse_search(where: _Where, raw: dict[str, Any], objectives: tuple[ObjectiveSpec, ...], seed: int) -> SearchSettings:
    _check_keys(where, "search", raw, _SEARCH_KEYS)
    trials = _number(where, "search.trials", raw.get("trials", 20), integer=True, low=1)
    sampler_raw = raw.get("sampler", "tpe")
    if isinstance(sampler_raw, str):
        sampler_raw = {"name": sampler_raw}
    sampler_raw = _mapping(where, "search.sampler", sampler_raw, allow_none=False)
    _check_keys(where, "search.sampler", sampler_raw, ("name", "seed", "options"))
    sampler = _choice(where, "search.sampler.name", sampler_raw.get("name", "tpe"), SAMPLERS, "sampler")
    sampler_seed = _number(where, "search.sampler.seed", sampler_raw.get("seed", seed), integer=True, low=0, allow_none=True)
    if sampler_seed is not None and sampler_seed >= 2**32:
        raise where.fail("search.sampler.seed", f"expected an integer from 0 to 2**32 - 1, got {sampler_seed}")
    options = _mapping(where, "search.sampler.options", sampler_raw.get("options"))
    valid_options = _sampler_option_names(sampler)
    _check_keys(where, "search.sampler.options", options, valid_options)
    backend = _choice(where, "search.backend", raw.get("backend", "ray"), tuple(declared_executors()), "backend")
    max_concurrent = _number(where, "search.max_concurrent", raw.get("max_concurrent", 2), integer=True, low=1)
    resources = _mapping(where, "search.resources", raw.get("resources"))
    _check_keys(where, "search.resources", resources, ("cpu", "gpu"))
    cpus = _number(where, "search.resources.cpu", resources.get("cpu", 1), low=0, low_open=True)
    gpus = _number(where, "search.resources.gpu", resources.get("gpu", 0), low=0)
    reference = raw.get("reference_point")
    if reference is not None:
        reference = _mapping(where, "search.reference_point", reference)
        names = [o.name for o in objectives]
        _check_keys(where, "search.reference_point", reference, names)
        missing = [n for n in names if n not in reference]
        if missing:
            raise where.fail("search.reference_point", f"expected a value for every objective, missing {missing}")
        reference = {n: _number(where, f"search.reference_point.{n}", reference[n]) for n in names}
    timeout = _number(where, "search.timeout_s", raw.get("timeout_s"), low=0, low_open=True, allow_none=True)
    early = _parse_early_stopping(where, raw.get("early_stopping", "none"))
    settings = SearchSettings(trials, sampler, sampler_seed, dict(options), backend, max_concurrent, cpus, gpus,
                              reference, timeout, early)
    _check_search_settings(settings, where.file)
    return settings


def _parse_early_stopping(where: _Where, raw: Any) -> EarlyStoppingConfig:
    path = "search.early_stopping"
    if raw is None or isinstance(raw, str):
        raw = {"name": "none" if raw is None else raw}
    raw = _mapping(where, path, raw, allow_none=False)
    _check_keys(where, path, raw, ("name", "grace_epochs", "reduction_factor", "min_trials"))
    name = _choice(where, f"{path}.name", raw.get("name", "none"), EARLY_STOPPING_RULES, "early stopping rule")
    grace = _number(where, f"{path}.grace_epochs", raw.get("grace_epochs", 1), integer=True, low=1)
    eta = _number(where, f"{path}.reduction_factor", raw.get("reduction_factor", 3), low=1, low_open=True)
    min_trials = _number(where, f"{path}.min_trials", raw.get("min_trials"), integer=True, low=1, allow_none=True)
    return EarlyStoppingConfig(name, int(grace), float(eta), None if min_trials is None else int(min_trials))


def _check_search_settings(settings: SearchSettings, file: str) -> None:
    where = _Where(file)
    for key, value, low in (("cpu", settings.cpus_per_trial, "> 0"), ("gpu", settings.gpus_per_trial, ">= 0")):
        if not isinstance(value, (int, float)) or not _finite(value) or not (value > 0 if key == "cpu" else value >= 0):
            raise where.fail(f"search.resources.{key}", f"expected a finite number {low}, got {value!r}")
    if settings.gpus_per_trial > 1 and not float(settings.gpus_per_trial).is_integer():
        raise where.fail("search.resources.gpu", f"expected a fraction up to 1 or a whole number, got {settings.gpus_per_trial}")
    if settings.backend not in declared_executors():
        raise where.fail("search.backend", f"expected one of {', '.join(declared_executors())}, got {settings.backend!r}")
    info = executor_info(settings.backend)
    if not info.concurrent and settings.max_concurrent > 1 and settings.gpus_per_trial:
        raise where.fail("search.backend", f"the {settings.backend} backend runs one trial at a time; use backend: ray "
                         "for GPU packing")


def _parse_model(where: _Where, raw: dict[str, Any], image_size: int | None) -> ModelSpace:
    _check_keys(where, "space", raw, ("strategy", "shared"))
    if "strategy" not in raw:
        raise where.fail("space.strategy", "missing: list the strategies to search, e.g. {sparse_topk: {}, dense_cnn: {}}")
    blocks = raw["strategy"]
    if isinstance(blocks, str):
        blocks = {blocks: None}
    if isinstance(blocks, list):
        if not all(isinstance(b, str) for b in blocks):
            raise where.fail("space.strategy", f"expected strategy names, got {blocks!r}")
        blocks = {b: None for b in blocks}
    blocks = _mapping(where, "space.strategy", blocks, allow_none=False)
    if not blocks:
        raise where.fail("space.strategy", f"expected at least one strategy; valid: {', '.join(strategy_names())}")
    valid_names = strategy_names()
    for name in blocks:
        if name not in valid_names:
            raise where.fail(f"space.strategy.{name}", f"unknown strategy {name!r}{_nearest(name, valid_names)}")

    shared_raw = _mapping(where, "space.shared", raw.get("shared"))
    shared: dict[str, Param] = {}
    for key, value in shared_raw.items():
        users = [n for n in blocks if key in accepted_keys(n)]
        if not users:
            every = sorted({k for n in blocks for k in accepted_keys(n)})
            raise where.fail(f"space.shared.{key}", f"no chosen strategy takes {key!r}{_nearest(key, every)}")
        shared[key] = _param(where, f"space.shared.{key}", value, accepted_keys(users[0])[key])
        _check_input_size(where, f"space.shared.{key}", key, shared[key], image_size)

    strategies = []
    for name, block in blocks.items():
        path = f"space.strategy.{name}"
        block = _mapping(where, path, block)
        valid = accepted_keys(name)
        _check_keys(where, path, block, list(valid))
        params = {k: p for k, p in shared.items() if k in valid}
        for key, value in block.items():
            params[key] = _param(where, f"{path}.{key}", value, valid[key])
            _check_input_size(where, f"{path}.{key}", key, params[key], image_size)
        _check_heads_divide(where, path, params, get_strategy(name).defaults)
        strategies.append(StrategySpace(name, params, tuple(block)))
    return ModelSpace(tuple(strategies), shared)


def _check_input_size(where: _Where, path: str, key: str, param: Param, image_size: int | None) -> None:
    """``input_size`` may only shrink the frame: every value it can take must be at most data.image_size
    (checked once the size is known: ``with_image_size`` where the data give it)."""
    if key != INPUT_SIZE_KEY or image_size is None:
        return
    for value in param.values_at_bounds():
        problem = input_size_problem(value, image_size)
        if problem:
            raise where.fail(path, f"expected {problem}, got {value!r}")


def _check_heads_divide(where: _Where, path: str, params: Mapping[str, Param], defaults: Mapping[str, Any]) -> None:
    """Every num_heads the space can give (listed, in a range, or the default) must divide every
    embed_dim it can give; an embed_dim range must hold a multiple of each. Sampling never changes a
    listed value to make them fit."""
    if "embed_dim" not in params and "num_heads" not in params:
        return
    if "embed_dim" not in defaults or "num_heads" not in defaults:
        return
    dim, heads = params.get("embed_dim"), params.get("num_heads")
    if heads is None:
        head_values, heads_text = [defaults["num_heads"]], "the default num_heads"
    elif heads.kind in ("fixed", "choice"):
        head_values, heads_text = list(heads.values_at_bounds()), "num_heads"
    else:
        head_values, heads_text = list(range(int(heads.low), int(heads.high) + 1, int(heads.step or 1))), "num_heads"
    key = f"{path}.num_heads" if heads is not None else f"{path}.embed_dim"
    if dim is not None and dim.kind not in ("fixed", "choice"):
        for h in head_values:
            if int(dim.high) // h * h < dim.low:
                raise where.fail(key, f"{heads_text} {h} has no multiple in the embed_dim range [{dim.low}, {dim.high}]")
        return
    dims = list(dim.values_at_bounds()) if dim is not None else [defaults["embed_dim"]]
    for d in dims:
        for h in head_values:
            if d % h:
                fix = "" if heads is not None else "; list num_heads too, or an embed_dim it divides"
                raise where.fail(key, f"expected every num_heads to divide every embed_dim, but {heads_text} {h} does "
                                 f"not divide {'the default embed_dim ' if dim is None else ''}{d}{fix}")
