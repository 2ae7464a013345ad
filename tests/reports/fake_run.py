"""Write fake but realistic run directories for the report tests and benchmarks/bench_report.py.

The trials are made up; their records are not: an Optuna journal (``cellsparse.rundir.open_storage``)
whose trials carry the user attributes the search sets, and trials.csv written from it by
``cellsparse.rundir.write_trials_csv``. Beside them: space.yaml and run.json (a space with made-up keys,
so written as plain YAML and JSON) and trials/<n>/{config,metrics,history}.json and looked_at.npz."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cellsparse import rundir

XSS = "<script>alert(1)</script>"
STRATEGIES = ("sparse_topk", "tnet_traversal", "span_pyramid", "dense_cnn", "dense_vit")
CLASS_NAMES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
MAX_FLOPS = 4.0e7
DIRECTIONS = {"accuracy": "maximize", "flops": "minimize", "params": "minimize", "latency_ms": "minimize"}
K_RULES = ["fixed", "loss_trend", "schedule", "ratio"]


def _space(name: str, objectives: Sequence[str], seed: int, trials: int, reference_point: Any) -> dict[str, Any]:
    return {
        "name": name,
        "seed": seed,
        "data": {"source": "synthetic", "path": None, "modality": "brightfield", "image_size": 28,
                 "train": 512, "val": 128, "test": 128, "classes": 8},
        "objectives": {o: DIRECTIONS[o] for o in objectives},
        "constraints": {"max_flops": MAX_FLOPS, "max_params": None, "max_latency_ms": None},
        "search": {"trials": trials, "sampler": {"name": "tpe", "seed": seed, "options": {"n_startup_trials": 10}},
                   "backend": "optuna", "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0},
                   "reference_point": reference_point},
        "training": {"epochs": 6, "batch_size": 64, "optimizer": "adamw"},
        "space": {
            "strategy": list(STRATEGIES),
            "shared": {"embed_dim": [32, 64, 96], "depth": {"low": 1, "high": 4}, "lr": {"low": 1e-4, "high": 3e-3,
                                                                                          "log": True}},
            "sparse_topk": {"k_init": {"low": 0.05, "high": 0.5}, "k_rule": K_RULES},
            "tnet_traversal": {"levels": {"low": 1, "high": 3}, "grid": [2, 3, 4]},
            "span_pyramid": {"patch": [2, 4], "keep": {"low": 0.1, "high": 0.8}, "k_rule": K_RULES},
            "dense_cnn": {"width": [16, 32, 64]},
            "dense_vit": {"patch": [4, 7]},
        },
    }


def _config(strategy: str, rng: np.random.Generator) -> dict[str, Any]:
    config: dict[str, Any] = {
        "strategy": strategy,
        "embed_dim": int(rng.choice([32, 64, 96])),
        "depth": int(rng.integers(1, 5)),
        "lr": float(10 ** rng.uniform(-4, math.log10(3e-3))),
    }
    if strategy == "sparse_topk":
        config.update(k_init=float(rng.uniform(0.05, 0.5)), k_rule=str(rng.choice(K_RULES)))
    elif strategy == "tnet_traversal":
        config.update(levels=int(rng.integers(1, 4)), grid=int(rng.choice([2, 3, 4])))
    elif strategy == "span_pyramid":
        config.update(patch=int(rng.choice([2, 4])), keep=float(rng.uniform(0.1, 0.8)), k_rule=str(rng.choice(K_RULES)))
    elif strategy == "dense_cnn":
        config.update(width=int(rng.choice([16, 32, 64])))
    else:
        config.update(patch=int(rng.choice([4, 7])))
    return config


def _distributions(config: dict[str, Any]) -> dict[str, Any]:
    table = {
        "strategy": CategoricalDistribution(list(STRATEGIES)),
        "embed_dim": CategoricalDistribution([32, 64, 96]),
        "depth": IntDistribution(1, 4),
        "lr": FloatDistribution(1e-4, 3e-3, log=True),
        "k_init": FloatDistribution(0.05, 0.5),
        "k_rule": CategoricalDistribution(K_RULES + [XSS]),
        "levels": IntDistribution(1, 3),
        "grid": CategoricalDistribution([2, 3, 4]),
        "patch": CategoricalDistribution([2, 4, 7]),
        "keep": FloatDistribution(0.1, 0.8),
        "width": CategoricalDistribution([16, 32, 64]),
    }
    return {k: table[k] for k in config}


def _figures(config: dict[str, Any], rng: np.random.Generator) -> dict[str, float]:
    """Plausible accuracy/FLOPs/params for a config: sparse designs are cheap, dense ones costly."""
    d, depth = config["embed_dim"], config["depth"]
    s = config["strategy"]
    if s == "sparse_topk":
        tokens = 784 * config["k_init"] * 0.6
        flops, fraction = 2 * 784 * 8 * 9 + depth * (12 * tokens * d * d + 2 * tokens * tokens * d), config["k_init"] * 0.6
    elif s == "tnet_traversal":
        regions = 1 + config["levels"] * 2
        flops, fraction = regions * (4e5 + 50 * d * d), min(1.0, 0.15 * regions / config["grid"])
    elif s == "span_pyramid":
        tokens = (28 // config["patch"]) ** 2 * config["keep"]
        flops, fraction = depth * tokens * (12 * d * d + 2 * 16 * d), config["keep"]
    elif s == "dense_cnn":
        flops, fraction = 2 * 784 * 9 * config["width"] ** 2 * depth, 1.0
    else:
        tokens = (28 // config["patch"]) ** 2
        flops, fraction = depth * (12 * tokens * d * d + 2 * tokens * tokens * d), 1.0
    accuracy = 0.55 + 0.08 * math.log10(max(flops, 1e4) / 1e4) + 0.03 * depth + rng.normal(0, 0.03)
    return {
        "accuracy": float(np.clip(accuracy, 0.2, 0.99)),
        "flops": float(flops),
        "params": float(depth * 12 * d * d + 8 * d),
        "latency_ms": float(flops / 2e7 + rng.uniform(0.2, 0.5)),
        "used_fraction": float(fraction),
    }


def _cell_images(n: int, size: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n RGB 'cells' (disk + darker nucleus) and a used map covering about ``fraction`` of each."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    images = np.empty((n, 3, size, size))
    used = np.zeros((n, size, size))
    for i in range(n):
        cy, cx = rng.uniform(0.4, 0.6, 2)
        r = np.hypot(yy - cy, xx - cx)
        body = np.clip((0.38 - r) * 12, 0, 1)
        nucleus = np.clip((0.16 - np.hypot(yy - cy - 0.05, xx - cx + 0.04)) * 14, 0, 1)
        tint = rng.uniform(0.5, 1.0, 3)
        images[i] = 0.92 - body[None] * 0.35 * tint[:, None, None] - nucleus[None] * 0.45 * tint[::-1, None, None]
        score = nucleus * 2 + body + rng.uniform(0, 0.3, (size, size))
        keep = max(1, int(round(fraction * size * size)))
        used[i].flat[np.argsort(score, axis=None)[-keep:]] = 1.0
    return np.clip(images, 0, 1), used


def _state(number: int, n_complete: int | None, complete_seen: int) -> str:
    if number % 12 == 3 or (n_complete is not None and complete_seen >= n_complete):
        return "FAIL"
    return "PRUNED" if number % 12 == 7 else "COMPLETE"


def _history(figures: dict[str, float], config: dict[str, Any], k_final: int | None, duration: float,
             epochs: int) -> list[dict[str, Any]]:
    return [{"epoch": e, "train_loss": float(2.0 * math.exp(-0.4 * e) + 0.1),
             "val_accuracy": float(figures["accuracy"] * (1 - 0.5 * math.exp(-0.7 * e))),
             "k": None if k_final is None else int(k_final * (1 + 0.8 * math.exp(-0.6 * e))),
             "flops": figures["flops"], "lr": config["lr"], "time_s": duration / epochs * (e + 1)}
            for e in range(epochs)]


def _looked_at(trial_dir: Path, figures: dict[str, float], rng: np.random.Generator, hostile: bool) -> None:
    images, used = _cell_images(6, 28, figures["used_fraction"], rng)
    names = list(CLASS_NAMES)
    if hostile:
        names[0] = XSS
    labels = rng.integers(0, len(names), 6)
    preds = np.where(rng.uniform(size=6) < figures["accuracy"], labels, (labels + 1) % len(names))
    np.savez_compressed(trial_dir / "looked_at.npz", images=images.astype(np.float32), used=used.astype(np.float32),
                        labels=labels, preds=preds, class_names=np.array(names))


def write_run(
    root: Path,
    name: str = "demo",
    n_trials: int = 12,
    *,
    seed: int = 0,
    objectives: Sequence[str] = ("accuracy", "flops"),
    n_complete: int | None = None,
    hostile: bool = False,
    reference_point: Any = None,
    journal: bool = True,
    epochs: int = 6,
    folder: str | None = None,
) -> Path:
    """Write ``root/<folder or name>`` as the runner would after ``n_trials`` trials and return it.

    Trials cycle through the five strategies; with 12 trials, 3 fails, 7 is pruned and 5 and 10 are
    over the FLOPs budget. ``n_complete`` caps the complete trials (the rest fail). ``hostile`` puts
    a script tag into the run name, a class name, a config value and an error message. Without
    ``journal`` the study lives in memory and only trials.csv records it.
    """
    rng = np.random.default_rng(seed)
    run_dir = root / (folder or ("run" if hostile else name))
    (run_dir / rundir.TRIALS_DIR).mkdir(parents=True, exist_ok=True)
    run_name = XSS if hostile else name
    space = _space(run_name, objectives, seed, n_trials, reference_point)
    (run_dir / rundir.SPACE_FILE).write_text(yaml.safe_dump(space, sort_keys=False), encoding="utf-8")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=run_name, storage=rundir.open_storage(run_dir) if journal else None,
                                directions=[DIRECTIONS[o] for o in objectives])
    t0 = dt.datetime(2025, 11, 20, 9, 0, 0, tzinfo=dt.timezone.utc)
    workers = [0.0, 0.0]
    complete_seen = 0
    for number in range(n_trials):
        strategy = STRATEGIES[number % len(STRATEGIES)]
        config = _config(strategy, rng)
        if hostile and "k_rule" in config:
            config["k_rule"] = XSS
        figures = _figures(config, rng)
        state = _state(number, n_complete, complete_seen)
        if number % 12 in (5, 10) and state == "COMPLETE":
            figures["flops"] = MAX_FLOPS * rng.uniform(1.2, 3.0)  # over the budget
        complete_seen += state == "COMPLETE"
        worker = int(np.argmin(workers))
        duration = float(rng.uniform(20, 90))
        start = t0 + dt.timedelta(seconds=workers[worker])
        workers[worker] += duration + 1.0
        trial_dir = rundir.trial_dir(run_dir, number)
        trial_dir.mkdir(exist_ok=True)
        (trial_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
        k_final = None if strategy.startswith("dense") else round(figures["used_fraction"] * 784)
        # The user attributes as runner.engine.execute and runner.engine.driver set them.
        attrs: dict[str, Any] = {rundir.ATTR_CONFIG: config, rundir.ATTR_STRATEGY: strategy,
                                 rundir.ATTR_CONSTRAINTS: {"max_flops": figures["flops"] - MAX_FLOPS}}
        if state == "COMPLETE":
            metrics = {"accuracy": figures["accuracy"], "flops": figures["flops"], "params": figures["params"],
                       "latency_ms": figures["latency_ms"], "test_accuracy": figures["accuracy"] - 0.01,
                       "k_final": k_final, "used_fraction": figures["used_fraction"]}
            (trial_dir / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
            attrs.update({rundir.ATTR_TEST_ACCURACY: metrics["test_accuracy"], rundir.ATTR_K_FINAL: k_final,
                          rundir.ATTR_PARAMS: int(figures["params"]), rundir.ATTR_DURATION: duration})
            _looked_at(trial_dir, figures, rng, hostile)
        elif state == "FAIL":
            attrs[rundir.ATTR_ERROR] = f"RuntimeError: CUDA out of memory {XSS if hostile else ''}".strip()
        else:  # pruned after 2 epochs, with the figures it had then
            attrs[rundir.ATTR_STOPPED_AT] = 2
            attrs.update({rundir.ATTR_LAST + o: figures[o] for o in objectives})
        if state != "FAIL":
            history = _history(figures, config, k_final, duration, epochs if state == "COMPLETE" else 2)
            (trial_dir / "history.json").write_text(json.dumps(history), encoding="utf-8")
        trial = optuna.trial.create_trial(
            params=config, distributions=_distributions(config), state=getattr(optuna.trial.TrialState, state),
            values=[figures[o] for o in objectives] if state == "COMPLETE" else None, user_attrs=attrs,
            constraints=attrs[rundir.ATTR_CONSTRAINTS])
        trial.datetime_start, trial.datetime_complete = start, start + dt.timedelta(seconds=duration)
        study.add_trial(trial)
    rundir.write_trials_csv(run_dir, study, list(objectives))
    info = {
        "name": run_name, "started_at": t0.isoformat(),
        "finished_at": (t0 + dt.timedelta(seconds=max(workers))).isoformat(), "wall_time_s": max(workers),
        "backend": "optuna", "sampler": "tpe", "seed": seed,
        "machine": {"hostname": "ci-runner" + (XSS if hostile else ""), "cpu": "x86_64, 2 cores", "gpu": None},
        "versions": {"python": "3.11.7", "torch": "2.13.0", "optuna": "5.0.0", "ray": "2.60.0"},
        "command": f"python -m runner.search --space search_space/cells.yaml --name {name}",
    }
    (run_dir / rundir.RUN_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return run_dir
