"""The space-file language: valid files load, and every malformation gets one precise message."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from search_space.errors import SpecError
from search_space.spec import load_space

BASE = {
    "name": "tiny",
    "seed": 3,
    "data": {"source": "synthetic", "modality": "brightfield", "image_size": 28, "train": 64, "val": 32, "test": 32},
    "objectives": {"accuracy": "maximize", "flops": "minimize"},
    "constraints": {"max_flops": 5.0e7},
    "training": {"epochs": 2, "batch_size": 32, "lr": {"log": [3.0e-4, 3.0e-3]}},
    "search": {"trials": 4, "sampler": {"name": "tpe", "seed": 1}, "backend": "optuna",
               "reference_point": {"accuracy": 0.0, "flops": 5.0e7}},
    "space": {
        "shared": {"embed_dim": [32, 64], "num_heads": [2, 4], "depth": {"int": [1, 2]}},
        "strategy": {
            "sparse_topk": {"k_fraction": {"float": [0.05, 0.4]}, "k_rule": ["fixed", "loss_trend"]},
            "dense_cnn": {"width": [8, 16]},
        },
    },
}


def write(tmp_path: Path, data, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def mutated(path_keys: str, value) -> dict:
    """BASE with the value at dotted ``path_keys`` replaced (or deleted when value is DELETE)."""
    data = copy.deepcopy(BASE)
    *parents, last = path_keys.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def test_valid_file_loads_with_defaults(tmp_path):
    space = load_space(write(tmp_path, BASE))
    assert space.name == "tiny" and space.seed == 3
    assert space.objective_names == ["accuracy", "flops"]
    assert space.directions == ["maximize", "minimize"]
    assert space.model.strategy_names == ["sparse_topk", "dense_cnn"]
    assert space.training["epochs"].value == 2
    assert space.training["weight_decay"].kind == "fixed"  # filled from defaults
    assert space.search.sampler_seed == 1 and space.search.backend == "optuna"
    assert space.data.augment is True


def test_resolved_yaml_round_trips(tmp_path):
    space = load_space(write(tmp_path, BASE))
    again = load_space(write(tmp_path, space.to_yaml(), "resolved.yaml"))
    assert again.to_dict() == space.to_dict()


def test_precision_defaults_to_fp32_and_is_written_only_when_set(tmp_path):
    space = load_space(write(tmp_path, BASE))
    assert space.training["precision"].value == "fp32"
    assert "precision" not in space.to_dict()["training"]  # a run made before the key resolves the same
    for value in ("bf16", ["fp32", "bf16"]):
        space = load_space(write(tmp_path, mutated("training.precision", value)))
        assert space.to_dict()["training"]["precision"] == value
        again = load_space(write(tmp_path, space.to_yaml(), "resolved.yaml"))
        assert again.to_dict() == space.to_dict()


def test_overrides_apply_and_reseed(tmp_path):
    space = load_space(write(tmp_path, BASE)).with_overrides(trials=9, seed=11, backend="ray")
    assert space.search.trials == 9 and space.search.sampler_seed == 11 and space.seed == 11
    assert space.search.backend == "ray"


def test_env_var_in_data_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLS_NPZ", "/data/cells.npz")
    data = mutated("data", {"source": "npz", "path": "${CELLS_NPZ}"})
    assert load_space(write(tmp_path, data)).data.path == "/data/cells.npz"


def test_shipped_spaces_load():
    root = Path(__file__).resolve().parents[2] / "search_space"
    files = sorted(root.glob("*.yaml"))
    assert files, "no space files shipped"
    for file in files:
        load_space(file)


# (mutation, expected key path in the message, expected fragment of the message)
MALFORMED = [
    (mutated("space.strategy.sparse_topk.k_fraction", {"float": [0.5, 0.1]}),
     "space.strategy.sparse_topk.k_fraction", "expected [low, high] with 0 < low < high <= 1, got [0.5, 0.1]"),
    (mutated("space.strategy.sparse_topk.k_fraction", {"float": [0.5, 1.5]}),
     "space.strategy.sparse_topk.k_fraction", "0 < low < high <= 1"),
    (mutated("space.strategy.sparse_topk.k_fractoin", 0.2), "space.strategy.sparse_topk.k_fractoin", "did you mean 'k_fraction'"),
    (mutated("space.strategy.sparse_topkk", {}), "space.strategy.sparse_topkk", "did you mean 'sparse_topk'"),
    (mutated("space.strategy", {}), "space.strategy", "at least one strategy"),
    (mutated("space.strategy", DELETE), "space.strategy", "missing"),
    (mutated("space", DELETE), "space", "missing section"),
    (mutated("objectives", DELETE), "objectives", "missing section"),
    (mutated("objectives", {"accuracy": "maximize"}), "objectives", "at least two objectives"),
    (mutated("objectives.flopz", "minimize"), "objectives.flopz", "did you mean 'flops'"),
    (mutated("objectives.flops", "smaller"), "objectives.flops", "expected maximize or minimize"),
    (mutated("objectives.accuracy", "minimize"), "objectives.accuracy", "accuracy is to be maximized"),
    (mutated("objectives.flops", "max"), "objectives.flops", "'max' would search for the worst models; write minimize"),
    (mutated("search.sampler", "tpee"), "search.sampler.name", "did you mean 'tpe'"),
    (mutated("search.sampler", {"name": "nsga2", "options": {"population": 8}}),
     "search.sampler.options.population", "did you mean 'population_size'"),
    (mutated("search.backend", "dask"), "search.backend", "unknown backend"),
    (mutated("search.trials", 0), "search.trials", "expected an integer >= 1, got 0"),
    (mutated("search.trials", "many"), "search.trials", "expected an integer"),
    (mutated("search.reference_point", {"accuracy": 0.0}), "search.reference_point", "missing ['flops']"),
    (mutated("search.resources", {"cpu": 0}), "search.resources.cpu", "expected a finite number > 0"),
    (mutated("search.resources", {"cpu": float("inf")}), "search.resources.cpu", "expected a finite number > 0, got inf"),
    (mutated("search.resources", {"gpu": float("nan")}), "search.resources.gpu", "expected a finite number >= 0, got nan"),
    (mutated("search.reference_point", {"accuracy": float("nan"), "flops": 1e7}), "search.reference_point.accuracy",
     "expected a finite number, got nan"),
    (mutated("search.reference_point", {"accuracy": 0.0, "flops": float("inf")}), "search.reference_point.flops",
     "expected a finite number, got inf"),
    (mutated("search.timeout_s", float("inf")), "search.timeout_s", "expected a finite number > 0 or null, got inf"),
    (mutated("constraints.max_flops", float("inf")), "constraints.max_flops", "expected a finite number > 0 or null"),
    (mutated("data.difficulty", float("nan")), "data.difficulty", "expected a finite number >= 0, got nan"),
    (mutated("seed", 2**64), "seed", "expected an integer from 0 to 2**32 - 1"),
    (mutated("training.epochs", {"float": [1, 3]}), "training.epochs", "integer range"),
    (mutated("training.lr", {"log": [0.0, 1.0e-3]}), "training.lr", "0 < low"),
    (mutated("training.lr", []), "training.lr", "non-empty list"),
    (mutated("training.momentum", 0.9), "training.momentum", "unknown key"),
    (mutated("training.precision", "fp16"), "training.precision", "expected one of ['fp32', 'bf16'], got 'fp16'"),
    (mutated("training.precision", ["fp32", "BF16"]), "training.precision",
     "expected every choice to be one of ['fp32', 'bf16'], got 'BF16'"),
    (mutated("training.precision", {"float": [16, 32]}), "training.precision", "expected one of ['fp32', 'bf16']"),
    (mutated("training.precison", "bf16"), "training.precison", "did you mean 'precision'"),
    (mutated("training.batch_size", {"int": [16, 64], "steps": 2}), "training.batch_size", "expected a range like"),
    (mutated("space.shared.num_heads", [3]), "num_heads", "3 does not divide 32"),
    # never a silently changed embed_dim: a default or a range of num_heads must divide the listed embed_dims
    (mutated("space", {"strategy": {"dense_vit": {"embed_dim": [50]}}}), "space.strategy.dense_vit.embed_dim",
     "the default num_heads 4 does not divide 50"),
    (mutated("space", {"strategy": {"dense_vit": {"embed_dim": [16], "num_heads": {"int": [2, 5]}}}}),
     "space.strategy.dense_vit.num_heads", "num_heads 3 does not divide 16"),
    (mutated("space", {"strategy": {"dense_vit": {"num_heads": [5]}}}), "space.strategy.dense_vit.num_heads",
     "num_heads 5 does not divide the default embed_dim 64"),
    (mutated("space", {"strategy": {"dense_vit": {"embed_dim": {"int": [33, 35]}, "num_heads": [4]}}}),
     "space.strategy.dense_vit.num_heads", "num_heads 4 has no multiple in the embed_dim range [33, 35]"),
    (mutated("space.shared.depth", {"int": [1, 2.5]}), "space.shared.depth", "integer bounds"),
    (mutated("space.shared.widht", 16), "space.shared.widht", "no chosen strategy takes 'widht'"),
    (mutated("space.strategy.dense_cnn.width", "wide"), "space.strategy.dense_cnn.width", "expected an integer"),
    (mutated("space.strategy.sparse_topk.k_rule", ["fixed", "sometimes"]), "space.strategy.sparse_topk.k_rule",
     "'sometimes'"),
    (mutated("data.source", "s3"), "data.source", "unknown data source"),
    (mutated("data.source", "npz"), "data.path", "expected a file or folder path"),
    (mutated("data.path", "/tmp/x.npz"), "data.path", "synthetic source takes no path"),
    (mutated("data.image_size", 1024), "data.image_size", "from 16 to 512"),
    (mutated("data.modality", "fluorescence"), "data.modality", "unknown modality"),
    (mutated("data.augment", "yes please"), "data.augment", "true or false"),
    (mutated("constraints.max_flops", -1), "constraints.max_flops", "expected a finite number > 0"),
    (mutated("constraints.flops", 1e6), "constraints.flops", "did you mean 'max_flops'"),
    (mutated("name", "../escape"), "name", "names the run directory"),
    (mutated("seed", -4), "seed", "expected an integer >= 0"),
    (mutated("extra", 1), "extra", "unknown key"),
    (mutated("deploy", {"runtime": "onnx"}), "deploy.runtime", "unknown runtime 'onnx'; did you mean 'onnxruntime'?"),
    (mutated("deploy", {"runtime": "tensorrt"}), "deploy.runtime", "valid: pt2, onnxruntime, eager"),
    (mutated("deploy", {"batch_size": 0}), "deploy.batch_size", "expected an integer >= 1, got 0"),
    (mutated("deploy", {"batch_size": 10**6}), "deploy.batch_size", "expected an integer from 1 to 4096"),
    (mutated("deploy", {"threads": 1.5}), "deploy.threads", "expected an integer >= 1, got 1.5"),
    (mutated("deploy", {"calibrate": "yes"}), "deploy.calibrate", "expected true or false, got 'yes'"),
    (mutated("deploy", {"thread": 2}), "deploy.thread", "did you mean 'threads'"),
    (mutated("deploy", ["pt2"]), "deploy", "expected a mapping"),
    (mutated("constraints.max_throughput", 100), "constraints.max_throughput", "did you mean 'min_throughput'"),
    (mutated("constraints.min_flops", 100), "constraints.min_flops", "did you mean 'max_flops'"),
    (mutated("constraints.min_throughput", 0), "constraints.min_throughput", "expected a finite number > 0"),
]


def test_deploy_defaults_and_is_written_only_when_set(tmp_path):
    space = load_space(write(tmp_path, BASE))
    assert (space.deploy.runtime, space.deploy.batch_size, space.deploy.threads) == ("pt2", 64, 1)
    assert "deploy" not in space.to_dict()  # runs made before the section resume unchanged
    data = {**copy.deepcopy(BASE), "deploy": {"runtime": "onnxruntime", "batch_size": 16}}
    data["objectives"]["throughput"] = "maximize"
    data["search"]["reference_point"]["throughput"] = 10.0
    data["constraints"]["min_throughput"] = 100
    space = load_space(write(tmp_path, data))
    assert space.deploy.runtime == "onnxruntime" and space.deploy.threads == 1
    assert space.constraints.limit("throughput") == 100
    again = load_space(write(tmp_path, yaml.safe_load(space.to_yaml()), "again.yaml"))
    assert again.deploy == space.deploy and again.constraints == space.constraints


@pytest.mark.parametrize(("data", "key_path", "fragment"), MALFORMED, ids=[m[1] + ":" + m[2][:20] for m in MALFORMED])
def test_malformed_space_names_file_key_and_expectation(tmp_path, data, key_path, fragment):
    path = write(tmp_path, data, "cells.yaml")
    with pytest.raises(SpecError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert key_path in message, message
    assert fragment in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("- just\n- a list\n", "expected a mapping of sections"),
        ("name: [unclosed\n", "not valid YAML at line"),
        ("\tname: tabs\n", "not valid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "tags that construct Python objects are not allowed"),
        ("name: a\nname: b\n", "duplicate key 'name'"),
    ],
)
def test_not_a_space_file(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match="^" + str(path).replace(".", r"\.")) as info:
        load_space(path)
    assert fragment in str(info.value)


OVERSIZED = {
    "alias bomb": ("expands to more than 100,000 values", lambda: "anchors:\n" + "".join(
        f"  {line}\n" for line in _alias_bomb_levels()) + "objectives: *a8\n"),
    "deep nesting": ("nested more than 64 levels deep", lambda: "objectives:\n" + "".join(
        " " * i + "- \n" for i in range(1, 200))),
    "deep flow nesting": ("", lambda: "objectives: " + "[" * 5000 + "]" * 5000 + "\n"),
    "long list": ("expands to more than 100,000 values", lambda: "objectives: [" + ",".join(["0"] * 150_000) + "]\n"),
    "huge file": ("larger than 1024 KiB", lambda: "# " + "x" * (2 << 20) + "\n"),
    "recursive alias": ("recursive structures are not allowed", lambda: "objectives: &a {x: *a}\n"),
    "5000-digit integer": ("a value cannot be read", lambda: "seed: " + "1" * 5000 + "\n"),
}


def _alias_bomb_levels() -> list[str]:
    """Nine levels of nine aliases: 9**9 (387 million) strings once expanded."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return levels


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_oversized_files_are_refused_quickly_in_one_line(tmp_path, case):
    """Alias bombs, deep nesting, huge lists and files: refused before anything is built, in < 1 s."""
    import time

    fragment, make = OVERSIZED[case]
    path = write(tmp_path, make())
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_space(path)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_an_endless_device_is_refused(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    with pytest.raises(SpecError, match="larger than 1024 KiB"):
        load_space("/dev/zero")


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(SpecError, match="no such space file"):
        load_space(tmp_path / "absent.yaml")
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(SpecError, match="model.yaml"):
        load_space(binary)
    with pytest.raises(SpecError, match="is a directory"):
        load_space(tmp_path)


def test_env_var_default_and_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("CELLS_NPZ", raising=False)
    data = mutated("data", {"source": "npz", "path": "${CELLS_NPZ:-cells/default.npz}"})
    assert load_space(write(tmp_path, data)).data.path == "cells/default.npz"
    data = mutated("data", {"source": "npz", "path": "$CELLS_NPZ/x.npz"})
    with pytest.raises(SpecError, match=r"data\.path: environment variable \$CELLS_NPZ"):
        load_space(write(tmp_path, data))
